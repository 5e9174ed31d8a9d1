package hsm

import (
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/opencustodynet/opencustody/hsm/softhsm/softhsmtest"
)

func openInternal(tb testing.TB) *PKCS11Store {
	tb.Helper()
	tok := softhsmtest.NewTestToken(tb)
	s, err := Open(tb.Context(), Config{URI: tok.URI})
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func mustGenerate(tb testing.TB, s *PKCS11Store, label string, alg Algorithm, backupable bool) {
	tb.Helper()
	if _, err := s.GenerateKey(tb.Context(), GenerateKeyRequest{Label: label, Algorithm: alg, Backupable: backupable}); err != nil {
		tb.Fatalf("GenerateKey %s: %v", label, err)
	}
}

// TestKeyValueIsSensitive reads CKA_VALUE of every kind of key directly
// through PKCS#11: the HSM must refuse, for backup-able keys too, and must
// refuse to make a key extractable or not sensitive later.
func TestKeyValueIsSensitive(t *testing.T) {
	s := openInternal(t)
	keys := map[string]Algorithm{"k1": ECDSASecp256k1, "p256": ECDSAP256, "ed": Ed25519, "mac": HMACSHA256}
	for label, alg := range keys {
		mustGenerate(t, s, label, alg, false)
	}
	mustGenerate(t, s, "k1-backup", ECDSASecp256k1, true)
	keys["k1-backup"] = ECDSASecp256k1

	sh, err := s.p.OpenSession(s.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer s.p.CloseSession(sh)
	for label := range keys {
		k, _, err := s.lookup(t.Context(), label)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.p.GetAttributeValue(sh, k.handle, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if rv(err) != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
			t.Errorf("%s: reading CKA_VALUE gave %v, want CKR_ATTRIBUTE_SENSITIVE", label, err)
		}
		attrs := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false)}
		if label != "k1-backup" { // already extractable
			attrs = append(attrs, pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true))
		}
		for _, a := range attrs {
			if err := s.p.SetAttributeValue(sh, k.handle, []*pkcs11.Attribute{a}); err == nil {
				t.Errorf("%s: the HSM let attribute 0x%x change", label, a.Type)
			}
		}
	}
}

// TestReloginAfterLostLogin drops the login and then every session behind
// the store's back: signing must log in again, find the key again and work.
func TestReloginAfterLostLogin(t *testing.T) {
	tok := softhsmtest.NewTestToken(t)
	var logs strings.Builder
	var logMu sync.Mutex
	s, err := Open(t.Context(), Config{URI: tok.URI, Logger: slog.New(slog.NewTextHandler(&lockedWriter{mu: &logMu, w: &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer func() {
		logMu.Lock()
		defer logMu.Unlock()
		if !strings.Contains(logs.String(), "logging in again") {
			t.Errorf("the re-login was not logged:\n%s", logs.String())
		}
		if strings.Contains(logs.String(), tok.PIN) {
			t.Errorf("the log holds the PIN:\n%s", logs.String())
		}
	}()
	mustGenerate(t, s, "k", ECDSAP256, false)
	d := sha256.Sum256([]byte("x"))
	sign := func(when string) {
		t.Helper()
		if _, err := s.Sign(t.Context(), SignRequest{Key: "k", Digest: d[:]}); err != nil {
			t.Fatalf("Sign %s: %v", when, err)
		}
	}
	sign("before")
	gen := s.gen

	s.loginMu.Lock()
	err = s.p.Logout(s.anchor)
	s.loginMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	sign("after C_Logout")
	if s.gen != gen+1 {
		t.Errorf("login generation %d, want %d", s.gen, gen+1)
	}

	if err := s.p.CloseAllSessions(s.slot); err != nil {
		t.Fatal(err)
	}
	sign("after C_CloseAllSessions")
	if s.gen != gen+2 {
		t.Errorf("login generation %d, want %d", s.gen, gen+2)
	}
	// MACs and listings recover the same way.
	mustGenerate(t, s, "mac", HMACSHA256, false)
	s.p.CloseAllSessions(s.slot)
	if _, err := s.ListKeys(t.Context()); err != nil {
		t.Errorf("ListKeys after C_CloseAllSessions: %v", err)
	}
	s.p.CloseAllSessions(s.slot)
	if _, err := s.MAC(t.Context(), MACRequest{Key: "mac", Data: []byte("x")}); err != nil {
		t.Errorf("MAC after C_CloseAllSessions: %v", err)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestMechanismNotSupported pretends the token lacks EdDSA.
func TestMechanismNotSupported(t *testing.T) {
	s := openInternal(t)
	mustGenerate(t, s, "ed", Ed25519, false)
	delete(s.mechs, ckmEdDSA)
	delete(s.mechs, ckmECEdwardsKeyPairGen)
	clear(s.keys)

	_, err := s.GenerateKey(t.Context(), GenerateKeyRequest{Label: "ed2", Algorithm: Ed25519})
	if !errors.Is(err, ErrMechanismNotSupported) || !strings.Contains(err.Error(), "CKM_EC_EDWARDS_KEY_PAIR_GEN") || !strings.Contains(err.Error(), s.info.Label) {
		t.Errorf("GenerateKey without the mechanism: %v", err)
	}
	d := sha256.Sum256([]byte("x"))
	_, err = s.Sign(t.Context(), SignRequest{Key: "ed", Digest: d[:]})
	if !errors.Is(err, ErrMechanismNotSupported) || !strings.Contains(err.Error(), "CKM_EDDSA") || !strings.Contains(err.Error(), `"ed"`) {
		t.Errorf("Sign without the mechanism: %v", err)
	}
	// The public key can still be read.
	if _, err := s.PublicKey(t.Context(), "ed"); err != nil {
		t.Errorf("PublicKey without the signing mechanism: %v", err)
	}
	// A module error meaning the same is recognised too.
	if err := mechanismError(pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID)); !errors.Is(err, ErrMechanismNotSupported) {
		t.Errorf("CKR_MECHANISM_INVALID is not ErrMechanismNotSupported: %v", err)
	}
}

// Benchmarks: the store's signing rate next to the plainest use of the
// module, one session with SignInit+Sign in a loop.

var (
	benchOnce  sync.Once
	benchStore *PKCS11Store
	benchErr   error
)

var benchAlgs = []Algorithm{ECDSASecp256k1, ECDSAP256, Ed25519}

func benchSetup(b *testing.B) *PKCS11Store {
	benchOnce.Do(func() {
		tok := softhsmtest.NewTestToken(b)
		benchStore, benchErr = Open(b.Context(), Config{URI: tok.URI})
		if benchErr != nil {
			return
		}
		for _, alg := range benchAlgs {
			if _, err := benchStore.GenerateKey(b.Context(), GenerateKeyRequest{Label: string(alg), Algorithm: alg}); err != nil {
				benchErr = err
				return
			}
		}
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchStore
}

// direct is the baseline: one session of its own and the key's handle,
// found once.
type direct struct {
	s  *PKCS11Store
	sh pkcs11.SessionHandle
	k  *key
}

func newDirect(b *testing.B, s *PKCS11Store, label string) *direct {
	k, _, err := s.lookup(b.Context(), label)
	if err != nil {
		b.Fatal(err)
	}
	sh, err := s.p.OpenSession(s.slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.p.CloseSession(sh) })
	return &direct{s: s, sh: sh, k: k}
}

func (d *direct) sign(b *testing.B, digest []byte) {
	if err := d.s.p.SignInit(d.sh, d.k.mech, d.k.handle); err != nil {
		b.Fatal(err)
	}
	if _, err := d.s.p.Sign(d.sh, digest); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkSign reports signatures per second for each algorithm, through
// the store and directly.
func BenchmarkSign(b *testing.B) {
	s := benchSetup(b)
	digest := sha256.Sum256([]byte("benchmark"))
	for _, alg := range benchAlgs {
		b.Run(string(alg), func(b *testing.B) {
			b.Run("store", func(b *testing.B) {
				req := SignRequest{Key: string(alg), Digest: digest[:]}
				for b.Loop() {
					if _, err := s.Sign(b.Context(), req); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
			})
			b.Run("direct", func(b *testing.B) {
				d := newDirect(b, s, string(alg))
				for b.Loop() {
					d.sign(b, digest[:])
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
			})
		})
	}
}

// BenchmarkSignOverhead alternates a store signature and a direct one, so
// both see the same machine load, and reports the store's time over the
// direct time as "overhead-ratio" (1.00 is no overhead).
func BenchmarkSignOverhead(b *testing.B) {
	s := benchSetup(b)
	digest := sha256.Sum256([]byte("benchmark"))
	for _, alg := range benchAlgs {
		b.Run(string(alg), func(b *testing.B) {
			d := newDirect(b, s, string(alg))
			req := SignRequest{Key: string(alg), Digest: digest[:]}
			var viaStore, viaDirect time.Duration
			for b.Loop() {
				t0 := time.Now()
				if _, err := s.Sign(b.Context(), req); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				d.sign(b, digest[:])
				t2 := time.Now()
				viaStore += t1.Sub(t0)
				viaDirect += t2.Sub(t1)
			}
			b.ReportMetric(float64(viaStore)/float64(viaDirect), "overhead-ratio")
			b.ReportMetric(float64(viaStore.Nanoseconds())/float64(b.N), "store-ns/sign")
			b.ReportMetric(float64(viaDirect.Nanoseconds())/float64(b.N), "direct-ns/sign")
		})
	}
}
