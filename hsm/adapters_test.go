package hsm_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// The identity key in SoftHSM2 signs channel credentials that the protocol's
// verifier accepts, for each identity algorithm.
func TestIdentitySigner(t *testing.T) {
	s, _ := open(t)
	for _, alg := range []hsm.Algorithm{hsm.ECDSAP256, hsm.Ed25519} {
		label := "identity-" + string(alg)
		generate(t, s, label, alg, false)
		id, err := hsm.NewIdentitySigner(t.Context(), s, label)
		if err != nil {
			t.Fatal(err)
		}
		c := &signed.Credential{Role: signed.RoleCore, NotBefore: time.Unix(1, 0), NotAfter: signed.Forever}
		if err := c.Sign(id); err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if err := c.VerifySignature(); err != nil {
			t.Fatalf("%s: HSM-signed credential refused: %v", alg, err)
		}
		info, _ := s.PublicKey(t.Context(), label)
		fp, _ := info.Fingerprint()
		if fp.String() != signed.Fingerprint(id.Algorithm(), id.PublicKey()) {
			t.Fatalf("%s: fingerprint %s, protocol %s", alg, fp, signed.Fingerprint(id.Algorithm(), id.PublicKey()))
		}
		d := sha256.Sum256(nil)
		if _, err := id.SignDigest(d[:31]); err == nil {
			t.Fatalf("%s: 31-byte digest signed", alg)
		}
	}
	generate(t, s, "custody", hsm.ECDSASecp256k1, false)
	if _, err := hsm.NewIdentitySigner(t.Context(), s, "custody"); err == nil {
		t.Fatal("a custody key accepted as the identity key")
	}
}

// Records authenticated by the HSM record key: a genuine record reads back,
// a forged MAC is reported as tampering (records.ErrIntegrity).
func TestRecordAuthenticator(t *testing.T) {
	s, _ := open(t)
	generate(t, s, "records", hsm.HMACSHA256, false)
	auth := hsm.RecordAuthenticator{A: s, Key: "records"}
	db, err := records.OpenSQLite(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st := records.New(db, auth)
	ctx := context.Background()
	if _, err := st.Create(ctx, "device", "a", []byte(`{"user":"alice"}`)); err != nil {
		t.Fatal(err)
	}
	r, err := st.Get(ctx, "device", "a")
	if err != nil || string(r.Body) != `{"user":"alice"}` {
		t.Fatalf("read back: %v", err)
	}
	// A row written with another key's MAC, as a hostile database would.
	forged := r
	forged.MAC = make([]byte, len(r.MAC))
	if err := auth.VerifyMAC(mustMACInput(t, forged), forged.MAC); !errors.Is(err, records.ErrBadMAC) {
		t.Fatalf("forged MAC: %v, want ErrBadMAC", err)
	}
	if err := db.Swap(ctx, records.Row(r), records.Row(forged)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, "device", "a"); !errors.Is(err, records.ErrIntegrity) {
		t.Fatalf("forged record: %v, want ErrIntegrity", err)
	}
}

func mustMACInput(t *testing.T, r records.Record) []byte {
	t.Helper()
	b, err := records.MACInput(r.Kind, r.Key, r.Version, r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
