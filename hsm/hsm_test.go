package hsm_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcec/v2"
	btcecdsa "github.com/btcsuite/btcd/btcec/v2/ecdsa"
	"github.com/miekg/pkcs11"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/p11uri"
	"github.com/opencustodynet/opencustody/hsm/softhsm/softhsmtest"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

func TestMain(m *testing.M) { softhsmtest.Main(m) }

// open returns a store on a fresh token, closed when the test ends.
func open(t *testing.T) (*hsm.PKCS11Store, *softhsmtest.Token) {
	t.Helper()
	tok := softhsmtest.NewTestToken(t)
	s, err := hsm.Open(t.Context(), hsm.Config{URI: tok.URI})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, tok
}

func generate(t *testing.T, s hsm.KeyManager, label string, alg hsm.Algorithm, backupable bool) *hsm.KeyInfo {
	t.Helper()
	info, err := s.GenerateKey(t.Context(), hsm.GenerateKeyRequest{Label: label, Algorithm: alg, Backupable: backupable})
	if err != nil {
		t.Fatalf("GenerateKey %s %s: %v", label, alg, err)
	}
	return info
}

func digest(s string) []byte {
	d := sha256.Sum256([]byte(s))
	return d[:]
}

// verify checks sig over d with Go's own verifier for the algorithm.
func verify(t *testing.T, pub *hsm.PublicKey, d []byte, sig *hsm.Signature) {
	t.Helper()
	switch k := pub.Key.(type) {
	case *ecdsa.PublicKey:
		der, err := sig.DER()
		if err != nil {
			t.Fatal(err)
		}
		if !ecdsa.VerifyASN1(k, d, der) || !ecdsa.Verify(k, d, sig.R, sig.S) {
			t.Fatalf("crypto/ecdsa rejects the P-256 signature")
		}
	case ed25519.PublicKey:
		if !ed25519.Verify(k, d, sig.Bytes()) {
			t.Fatalf("crypto/ed25519 rejects the signature")
		}
		if _, err := sig.DER(); err == nil {
			t.Errorf("Ed25519 signature has a DER form")
		}
	case *btcec.PublicKey:
		der, err := sig.DER()
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := btcecdsa.ParseDERSignature(der) // strict DER, as Bitcoin
		if err != nil {
			t.Fatalf("btcec rejects the DER: %v", err)
		}
		if !parsed.Verify(d, k) {
			t.Fatalf("btcec rejects the secp256k1 signature")
		}
	default:
		t.Fatalf("public key of type %T", pub.Key)
	}
}

func TestSignVerifyEachAlgorithm(t *testing.T) {
	s, _ := open(t)
	for _, alg := range []hsm.Algorithm{hsm.ECDSASecp256k1, hsm.ECDSAP256, hsm.Ed25519} {
		t.Run(string(alg), func(t *testing.T) {
			info := generate(t, s, "key-"+string(alg), alg, false)
			if info.Algorithm != alg || info.PublicKey == nil || info.Role != hsm.RoleOf(alg) {
				t.Fatalf("GenerateKey returned %+v", info)
			}
			pub, err := s.PublicKey(t.Context(), info.Label)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pub.Bytes(), info.PublicKey.Bytes()) {
				t.Errorf("PublicKey and KeyInfo.PublicKey differ")
			}
			for i := range 5 {
				d := digest(fmt.Sprint("message ", i))
				sig, err := s.Sign(t.Context(), hsm.SignRequest{Key: info.Label, Digest: d})
				if err != nil {
					t.Fatalf("Sign: %v", err)
				}
				if sig.Algorithm != alg || len(sig.Bytes()) != 64 {
					t.Fatalf("signature %v of %d bytes", sig.Algorithm, len(sig.Bytes()))
				}
				verify(t, pub, d, sig)
				// A signature must not verify for another digest.
				other := digest("other")
				switch k := pub.Key.(type) {
				case *ecdsa.PublicKey:
					if ecdsa.Verify(k, other, sig.R, sig.S) {
						t.Fatal("signature verifies for another digest")
					}
				case ed25519.PublicKey:
					if ed25519.Verify(k, other, sig.Bytes()) {
						t.Fatal("signature verifies for another digest")
					}
				}
			}
			// The key is found by its URI as well as by its label.
			d := digest("by uri")
			sig, err := s.Sign(t.Context(), hsm.SignRequest{Key: info.URI, Digest: d})
			if err != nil {
				t.Fatalf("Sign by URI %s: %v", info.URI, err)
			}
			verify(t, pub, d, sig)
		})
	}
}

func TestPublicKeyForms(t *testing.T) {
	s, _ := open(t)
	k1 := generate(t, s, "k1", hsm.ECDSASecp256k1, false).PublicKey
	if b := k1.Bytes(); len(b) != 33 || (b[0] != 2 && b[0] != 3) {
		t.Errorf("secp256k1 Bytes is not a compressed point: %x", b)
	}
	if _, err := btcec.ParsePubKey(k1.Bytes()); err != nil {
		t.Errorf("btcec cannot parse the compressed key: %v", err)
	}
	if k1.Key.(*btcec.PublicKey).ToECDSA() == nil {
		t.Error("no ecdsa form")
	}
	p256 := generate(t, s, "p256", hsm.ECDSAP256, false).PublicKey
	if b := p256.Bytes(); len(b) != 65 || b[0] != 4 {
		t.Errorf("P-256 Bytes is not an uncompressed point: %x", b)
	}
	ed := generate(t, s, "ed", hsm.Ed25519, false).PublicKey
	if len(ed.Bytes()) != 32 {
		t.Errorf("Ed25519 Bytes is %d bytes", len(ed.Bytes()))
	}
	// The fingerprint is the device protocol's: what a device computes
	// from the key in the core's channel credential and shows at pairing.
	for _, pub := range []*hsm.PublicKey{p256, ed} {
		alg, wire, err := pub.Protocol()
		if err != nil {
			t.Fatal(err)
		}
		fp, err := pub.Fingerprint()
		if err != nil {
			t.Fatal(err)
		}
		if fp.String() != signed.Fingerprint(alg, wire) {
			t.Errorf("%s fingerprint %s differs from the protocol's %s", pub.Algorithm, fp, signed.Fingerprint(alg, wire))
		}
		if s := fp.String(); len(s) != 32+7 || strings.Count(s, " ") != 7 || strings.ReplaceAll(s, " ", "") != fp.Hex() {
			t.Errorf("fingerprint string %q", s)
		}
	}
	// secp256k1's SPKI parses as an EC key with the secp256k1 OID.
	der, err := k1.SPKI()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(der, []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a}) || !bytes.HasSuffix(der, k1.Key.(*btcec.PublicKey).SerializeUncompressed()) {
		t.Errorf("secp256k1 SPKI %x", der)
	}
}

// TestLowS signs many times: SoftHSM2 returns high S about half the time, and
// every signature the store returns must have low S.
func TestLowS(t *testing.T) {
	s, _ := open(t)
	info := generate(t, s, "custody", hsm.ECDSASecp256k1, false)
	pub := info.PublicKey.Key.(*btcec.PublicKey)
	halfN := new(big.Int).Rsh(btcec.S256().N, 1)
	const n = 256
	for i := range n {
		d := digest(fmt.Sprint("tx ", i))
		sig, err := s.Sign(t.Context(), hsm.SignRequest{Key: "custody", Digest: d})
		if err != nil {
			t.Fatal(err)
		}
		if sig.S.Cmp(halfN) > 0 {
			t.Fatalf("signature %d has high S", i)
		}
		der, err := sig.DER()
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := btcecdsa.ParseDERSignature(der)
		if err != nil || !parsed.Verify(d, pub) {
			t.Fatalf("signature %d does not verify (%v)", i, err)
		}
	}
}

func TestDigestLength(t *testing.T) {
	s, _ := open(t)
	for _, alg := range []hsm.Algorithm{hsm.ECDSASecp256k1, hsm.ECDSAP256, hsm.Ed25519} {
		generate(t, s, string(alg), alg, false)
		for _, n := range []int{0, 20, 31, 33, 64} {
			_, err := s.Sign(t.Context(), hsm.SignRequest{Key: string(alg), Digest: make([]byte, n)})
			if err == nil {
				t.Fatalf("%s: a %d-byte digest was signed", alg, n)
			}
			if want := fmt.Sprintf("digest is %d bytes, want exactly 32", n); !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %q does not say %q", alg, err, want)
			}
		}
	}
}

func TestMAC(t *testing.T) {
	s, _ := open(t)
	info := generate(t, s, hsm.RecordKeyLabel, hsm.HMACSHA256, false)
	if info.Role != hsm.RoleRecords || info.PublicKey != nil || !info.Sensitive || info.Extractable {
		t.Fatalf("record key %+v", info)
	}
	ctx := t.Context()
	data := []byte("pairing record: device 3f2a, quorum 2-of-3")
	mac, err := s.MAC(ctx, hsm.MACRequest{Key: hsm.RecordKeyLabel, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	if len(mac) != 32 {
		t.Fatalf("MAC is %d bytes", len(mac))
	}
	again, err := s.MAC(ctx, hsm.MACRequest{Key: hsm.RecordKeyLabel, Data: data})
	if err != nil || !bytes.Equal(mac, again) {
		t.Fatalf("MAC is not deterministic: %v", err)
	}
	if err := s.VerifyMAC(ctx, hsm.VerifyMACRequest{Key: hsm.RecordKeyLabel, Data: data, MAC: mac}); err != nil {
		t.Fatalf("VerifyMAC of a good MAC: %v", err)
	}
	empty, err := s.MAC(ctx, hsm.MACRequest{Key: hsm.RecordKeyLabel})
	if err != nil || len(empty) != 32 || bytes.Equal(empty, mac) {
		t.Fatalf("MAC of no data: %x, %v", empty, err)
	}
	bad := bytes.Clone(mac)
	bad[31] ^= 1
	for name, req := range map[string]hsm.VerifyMACRequest{
		"flipped bit":  {Key: hsm.RecordKeyLabel, Data: data, MAC: bad},
		"other data":   {Key: hsm.RecordKeyLabel, Data: append(bytes.Clone(data), '!'), MAC: mac},
		"short MAC":    {Key: hsm.RecordKeyLabel, Data: data, MAC: mac[:16]},
		"empty MAC":    {Key: hsm.RecordKeyLabel, Data: data},
		"long MAC":     {Key: hsm.RecordKeyLabel, Data: data, MAC: append(bytes.Clone(mac), 0)},
		"another's ID": {Key: hsm.RecordKeyLabel, Data: []byte("x"), MAC: mac},
	} {
		err := s.VerifyMAC(ctx, req)
		if !errors.Is(err, hsm.ErrMACInvalid) {
			t.Errorf("%s: VerifyMAC = %v, want ErrMACInvalid", name, err)
		}
	}
	// A MAC key does not sign, and a signing key does not MAC.
	generate(t, s, "identity", hsm.ECDSAP256, false)
	if _, err := s.Sign(ctx, hsm.SignRequest{Key: hsm.RecordKeyLabel, Digest: digest("x")}); !errors.Is(err, hsm.ErrKeyNotFound) || !strings.Contains(err.Error(), "not a signing key") {
		t.Errorf("Sign with the record key: %v", err)
	}
	if _, err := s.MAC(ctx, hsm.MACRequest{Key: "identity", Data: data}); !errors.Is(err, hsm.ErrKeyNotFound) || !strings.Contains(err.Error(), "not a MAC key") {
		t.Errorf("MAC with the identity key: %v", err)
	}
}

func TestListKeys(t *testing.T) {
	s, _ := open(t)
	generate(t, s, hsm.IdentityKeyLabel, hsm.ECDSAP256, false)
	generate(t, s, hsm.RecordKeyLabel, hsm.HMACSHA256, false)
	generate(t, s, "custody-1", hsm.ECDSASecp256k1, false)
	generate(t, s, "custody-backup", hsm.ECDSASecp256k1, true)
	generate(t, s, "ed-identity", hsm.Ed25519, false)
	keys, err := s.ListKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	byLabel := map[string]hsm.KeyInfo{}
	var labels []string
	for _, k := range keys {
		byLabel[k.Label] = k
		labels = append(labels, k.Label)
	}
	if got := strings.Join(labels, ","); got != "custody-1,custody-backup,ed-identity,opencustody-identity,opencustody-records" {
		t.Fatalf("ListKeys labels %s", got)
	}
	for _, tc := range []struct {
		label       string
		role        hsm.Role
		keyType     string
		curve       string
		extractable bool
	}{
		{hsm.IdentityKeyLabel, hsm.RoleIdentity, "EC", "P-256", false},
		{hsm.RecordKeyLabel, hsm.RoleRecords, "GENERIC_SECRET", "", false},
		{"custody-1", hsm.RoleCustody, "EC", "secp256k1", false},
		{"custody-backup", hsm.RoleCustody, "EC", "secp256k1", true},
		{"ed-identity", hsm.RoleIdentity, "EC_EDWARDS", "Ed25519", false},
	} {
		k := byLabel[tc.label]
		if k.Role != tc.role || k.KeyType != tc.keyType || k.Curve != tc.curve || len(k.ID) != 8 {
			t.Errorf("%s: role %s type %s curve %q id %x", tc.label, k.Role, k.KeyType, k.Curve, k.ID)
		}
		if !k.Sensitive || !k.AlwaysSensitive {
			t.Errorf("%s is not (always) sensitive", tc.label)
		}
		if k.Extractable != tc.extractable || k.NeverExtractable == tc.extractable || k.Backupable != tc.extractable || k.WrapWithTrusted != tc.extractable {
			t.Errorf("%s: extractable %v never-extractable %v backupable %v wrap-with-trusted %v, want backup-able %v",
				tc.label, k.Extractable, k.NeverExtractable, k.Backupable, k.WrapWithTrusted, tc.extractable)
		}
		if (k.PublicKey == nil) != (tc.role == hsm.RoleRecords) {
			t.Errorf("%s: public key %v", tc.label, k.PublicKey)
		}
		u, err := p11uri.Parse(k.URI)
		if err != nil || u.Object != tc.label || !bytes.Equal(u.ID, k.ID) {
			t.Errorf("%s: URI %s (%v)", tc.label, k.URI, err)
		}
	}
}

func TestGenerateKeyRefusals(t *testing.T) {
	s, _ := open(t)
	ctx := t.Context()
	generate(t, s, "taken", hsm.ECDSASecp256k1, false)
	_, err := s.GenerateKey(ctx, hsm.GenerateKeyRequest{Label: "taken", Algorithm: hsm.ECDSAP256})
	if !errors.Is(err, hsm.ErrKeyExists) || !strings.Contains(err.Error(), `"taken"`) {
		t.Errorf("duplicate label: %v", err)
	}
	for name, req := range map[string]hsm.GenerateKeyRequest{
		"no label":            {Algorithm: hsm.ECDSAP256},
		"URI label":           {Label: "pkcs11:object=x", Algorithm: hsm.ECDSAP256},
		"unknown algorithm":   {Label: "x", Algorithm: "rsa-2048"},
		"backup-able P-256":   {Label: "x", Algorithm: hsm.ECDSAP256, Backupable: true},
		"backup-able records": {Label: "x", Algorithm: hsm.HMACSHA256, Backupable: true},
	} {
		if _, err := s.GenerateKey(ctx, req); err == nil || !strings.HasPrefix(err.Error(), "hsm: ") {
			t.Errorf("%s: GenerateKey = %v, want an hsm: error", name, err)
		}
	}
}

func TestKeyNotFound(t *testing.T) {
	s, tok := open(t)
	ctx := t.Context()
	_, err := s.Sign(ctx, hsm.SignRequest{Key: "no-such-key", Digest: digest("x")})
	if !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("Sign with a missing key: %v", err)
	}
	for _, want := range []string{`"no-such-key"`, fmt.Sprintf("%q", tok.Label), "key not found", "hsm keys"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if _, err := s.PublicKey(ctx, "pkcs11:object=no-such-key"); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Errorf("PublicKey of a missing key: %v", err)
	}
	if err := s.VerifyMAC(ctx, hsm.VerifyMACRequest{Key: "no-such-key"}); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Errorf("VerifyMAC with a missing key: %v", err)
	}
	if _, err := s.Sign(ctx, hsm.SignRequest{Key: "pkcs11:type=cert;object=x", Digest: digest("x")}); err == nil {
		t.Errorf("a cert URI was accepted as a key")
	}
}

func TestWrongPIN(t *testing.T) {
	tok := softhsmtest.NewTestToken(t)
	wrong := "wrong-" + tok.PIN
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(wrong), 0o600); err != nil {
		t.Fatal(err)
	}
	u, _ := p11uri.Parse(tok.URI)
	u.PINSource = "file:" + pinFile
	_, err := hsm.Open(t.Context(), hsm.Config{URI: u.String()})
	if !errors.Is(err, hsm.ErrPINIncorrect) {
		t.Fatalf("Open with a wrong PIN: %v", err)
	}
	var p11 pkcs11.Error
	if !errors.As(err, &p11) || p11 != pkcs11.CKR_PIN_INCORRECT {
		t.Errorf("error does not wrap CKR_PIN_INCORRECT: %v", err)
	}
	msg := err.Error()
	if strings.Contains(msg, wrong) || strings.Contains(msg, tok.PIN) {
		t.Fatalf("the error shows the PIN: %q", msg)
	}
	for _, want := range []string{tok.Label, pinFile, "PIN incorrect"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}

	// The PIN from an environment variable, right and wrong.
	u.PINSource = "env:OPENCUSTODY_TEST_PIN"
	t.Setenv("OPENCUSTODY_TEST_PIN", wrong)
	if _, err := hsm.Open(t.Context(), hsm.Config{URI: u.String()}); !errors.Is(err, hsm.ErrPINIncorrect) || !strings.Contains(err.Error(), "OPENCUSTODY_TEST_PIN") {
		t.Errorf("wrong PIN from the environment: %v", err)
	}
	t.Setenv("OPENCUSTODY_TEST_PIN", tok.PIN)
	s, err := hsm.Open(t.Context(), hsm.Config{URI: u.String()})
	if err != nil {
		t.Fatalf("right PIN from the environment: %v", err)
	}
	s.Close()

	// No PIN source at all, and a prompt.
	u.PINSource = ""
	if _, err := hsm.Open(t.Context(), hsm.Config{URI: u.String()}); err == nil || !strings.Contains(err.Error(), "no PIN") {
		t.Errorf("no PIN: %v", err)
	}
	asked := ""
	s, err = hsm.Open(t.Context(), hsm.Config{URI: u.String(), PINPrompt: func(_ context.Context, token string) (string, error) {
		asked = token
		return tok.PIN, nil
	}})
	if err != nil || asked != tok.Label {
		t.Fatalf("PIN from the prompt: %v (asked for %q)", err, asked)
	}
	s.Close()
}

func TestMissingModule(t *testing.T) {
	tok := softhsmtest.NewTestToken(t)
	u, _ := p11uri.Parse(tok.URI)

	u.ModulePath = "/nonexistent/libpkcs11.so"
	_, err := hsm.Open(t.Context(), hsm.Config{URI: u.String()})
	if !errors.Is(err, hsm.ErrModule) {
		t.Fatalf("missing module: %v", err)
	}
	for _, want := range []string{"/nonexistent/libpkcs11.so", "no such file", "make setup"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}

	notLib := filepath.Join(t.TempDir(), "libnot.so")
	os.WriteFile(notLib, []byte("not a library"), 0o644)
	u.ModulePath = notLib
	_, err = hsm.Open(t.Context(), hsm.Config{URI: u.String()})
	if !errors.Is(err, hsm.ErrModule) || !strings.Contains(err.Error(), "not a loadable PKCS#11 library") || !strings.Contains(err.Error(), notLib) {
		t.Errorf("not a library: %v", err)
	}

	u.ModulePath = ""
	_, err = hsm.Open(t.Context(), hsm.Config{URI: u.String()})
	if !errors.Is(err, hsm.ErrModule) || !strings.Contains(err.Error(), "module-path") {
		t.Errorf("no module path: %v", err)
	}
}

func TestTokenNotFound(t *testing.T) {
	tok := softhsmtest.NewTestToken(t)
	u, _ := p11uri.Parse(tok.URI)
	u.Token, u.Serial = "no-such-token", ""
	_, err := hsm.Open(t.Context(), hsm.Config{URI: u.String()})
	if !errors.Is(err, hsm.ErrTokenNotFound) {
		t.Fatalf("missing token: %v", err)
	}
	// The message lists the tokens that do exist, this test's among them.
	for _, want := range []string{"no-such-token", fmt.Sprintf("%q (serial %s", tok.Label, tok.Serial), "SOFTHSM2_CONF"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// The right label with a wrong serial does not match either.
	u.Token, u.Serial = tok.Label, "0000000000000000"
	if _, err := hsm.Open(t.Context(), hsm.Config{URI: u.String()}); !errors.Is(err, hsm.ErrTokenNotFound) {
		t.Errorf("wrong serial: %v", err)
	}
}

// TestConcurrentSign signs from many goroutines at once on every algorithm;
// run under -race it also checks the session pool and the key cache.
func TestConcurrentSign(t *testing.T) {
	tok := softhsmtest.NewTestToken(t)
	s, err := hsm.Open(t.Context(), hsm.Config{URI: tok.URI, Sessions: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	algs := []hsm.Algorithm{hsm.ECDSASecp256k1, hsm.ECDSAP256, hsm.Ed25519}
	pubs := map[hsm.Algorithm]*hsm.PublicKey{}
	for _, alg := range algs {
		pubs[alg] = generate(t, s, string(alg), alg, false).PublicKey
	}
	generate(t, s, "mac", hsm.HMACSHA256, false)
	const goroutines, each = 16, 20
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				alg := algs[(g+i)%len(algs)]
				d := digest(fmt.Sprint(g, "/", i))
				sig, err := s.Sign(t.Context(), hsm.SignRequest{Key: string(alg), Digest: d})
				if err != nil {
					errs <- err
					continue
				}
				var ok bool
				switch k := pubs[alg].Key.(type) {
				case *ecdsa.PublicKey:
					ok = ecdsa.Verify(k, d, sig.R, sig.S)
				case ed25519.PublicKey:
					ok = ed25519.Verify(k, d, sig.Bytes())
				case *btcec.PublicKey:
					ok = ecdsa.Verify(k.ToECDSA(), d, sig.R, sig.S)
				}
				if !ok {
					errs <- fmt.Errorf("goroutine %d: %s signature %d does not verify", g, alg, i)
				}
				if i%5 == 0 {
					mac, err := s.MAC(t.Context(), hsm.MACRequest{Key: "mac", Data: d})
					if err == nil {
						err = s.VerifyMAC(t.Context(), hsm.VerifyMACRequest{Key: "mac", Data: d, MAC: mac})
					}
					if err != nil {
						errs <- err
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestCryptoSigner(t *testing.T) {
	s, _ := open(t)
	ctx := t.Context()
	generate(t, s, "p256", hsm.ECDSAP256, false)
	generate(t, s, "ed", hsm.Ed25519, false)
	generate(t, s, "k1", hsm.ECDSASecp256k1, false)

	// crypto/x509 signs a certificate through the HSM.
	signer, err := hsm.NewCryptoSigner(ctx, s, "p256")
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "opencustody hsm"},
		NotBefore: time.Unix(1700000000, 0), NotAfter: time.Unix(1800000000, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		t.Fatalf("self-signed certificate does not verify: %v", err)
	}

	// Ed25519: pure, over 32 bytes.
	ed, err := hsm.NewCryptoSigner(ctx, s, "ed")
	if err != nil {
		t.Fatal(err)
	}
	d := digest("prompt")
	sig, err := ed.Sign(nil, d, crypto.Hash(0))
	if err != nil || !ed25519.Verify(ed.Public().(ed25519.PublicKey), d, sig) {
		t.Fatalf("Ed25519 crypto.Signer: %v", err)
	}
	if _, err := ed.Sign(nil, d, crypto.SHA256); err == nil {
		t.Error("Ed25519 signer accepted a hash")
	}

	// secp256k1: DER with low S.
	k1, err := hsm.NewCryptoSigner(ctx, s, "k1")
	if err != nil {
		t.Fatal(err)
	}
	sig, err = k1.Sign(nil, d, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := btcecdsa.ParseDERSignature(sig)
	if err != nil || !parsed.Verify(d, k1.Public().(*btcec.PublicKey)) {
		t.Fatalf("secp256k1 crypto.Signer signature: %v", err)
	}
	if _, err := k1.Sign(nil, make([]byte, 48), crypto.SHA384); err == nil {
		t.Error("a SHA-384 digest was accepted")
	}
	if _, err := hsm.NewCryptoSigner(ctx, s, "missing"); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Errorf("NewCryptoSigner of a missing key: %v", err)
	}
}

func TestClose(t *testing.T) {
	tok := softhsmtest.NewTestToken(t)
	s, err := hsm.Open(t.Context(), hsm.Config{URI: tok.URI})
	if err != nil {
		t.Fatal(err)
	}
	generate(t, s, "k", hsm.ECDSAP256, false)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.Sign(t.Context(), hsm.SignRequest{Key: "k", Digest: digest("x")}); !errors.Is(err, hsm.ErrClosed) {
		t.Errorf("Sign after Close: %v", err)
	}
	// The token opens again, and its key is still there.
	s, err = hsm.Open(t.Context(), hsm.Config{URI: tok.URI})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Sign(t.Context(), hsm.SignRequest{Key: "k", Digest: digest("x")}); err != nil {
		t.Errorf("Sign after reopening: %v", err)
	}
}

// TestPKCS11ToolSeesProtection asks OpenSC's pkcs11-tool, a separate program
// reading the same token, how the keys are protected: every private and
// secret key sensitive and never extractable, except the backup-able custody
// key, which is sensitive and extractable (by wrapping only).
func TestPKCS11ToolSeesProtection(t *testing.T) {
	tool, err := exec.LookPath("pkcs11-tool")
	if err != nil {
		t.Fatalf("pkcs11-tool (OpenSC) is not installed: run `make setup`")
	}
	s, tok := open(t)
	generate(t, s, hsm.IdentityKeyLabel, hsm.ECDSAP256, false)
	generate(t, s, "ed-identity", hsm.Ed25519, false)
	generate(t, s, hsm.RecordKeyLabel, hsm.HMACSHA256, false)
	generate(t, s, "custody-1", hsm.ECDSASecp256k1, false)
	generate(t, s, "custody-backup", hsm.ECDSASecp256k1, true)

	cmd := exec.CommandContext(t.Context(), tool, "--module", tok.ModulePath, "--token-label", tok.Label,
		"--list-objects", "--login", "--pin", tok.PIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.Conf)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	access := parsePKCS11ToolAccess(string(out))
	want := map[string]string{
		hsm.IdentityKeyLabel: "never",
		"ed-identity":        "never",
		hsm.RecordKeyLabel:   "never",
		"custody-1":          "never",
		"custody-backup":     "wrap-only",
	}
	if len(access) != len(want) {
		t.Errorf("pkcs11-tool lists %d private and secret keys, want %d:\n%s", len(access), len(want), out)
	}
	for label, kind := range want {
		a, ok := access[label]
		if !ok {
			t.Errorf("pkcs11-tool does not list %q:\n%s", label, out)
			continue
		}
		if !a["sensitive"] || !a["always sensitive"] {
			t.Errorf("%s: pkcs11-tool says Access: %v, want sensitive and always sensitive", label, a)
		}
		switch kind {
		case "never":
			if !a["never extractable"] || a["extractable"] {
				t.Errorf("%s: pkcs11-tool says Access: %v, want never extractable", label, a)
			}
		case "wrap-only":
			if a["never extractable"] || !a["extractable"] {
				t.Errorf("%s: pkcs11-tool says Access: %v, want extractable, not never extractable", label, a)
			}
		}
	}
}

// parsePKCS11ToolAccess reads pkcs11-tool --list-objects output: for every
// private and secret key object, its label and the flags of its "Access:"
// line.
func parsePKCS11ToolAccess(out string) map[string]map[string]bool {
	res := map[string]map[string]bool{}
	inKey, label := false, ""
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\r\n")
		if !strings.HasPrefix(line, " ") {
			inKey = strings.HasPrefix(line, "Private Key Object") || strings.HasPrefix(line, "Secret Key Object")
			label = ""
			continue
		}
		if !inKey {
			continue
		}
		name, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch name {
		case "label":
			label = value
		case "Access":
			flags := map[string]bool{}
			for f := range strings.SplitSeq(value, ",") {
				flags[strings.TrimSpace(f)] = true
			}
			res[label] = flags
		}
	}
	return res
}
