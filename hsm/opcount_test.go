package hsm

import (
	"crypto/sha256"
	"testing"
)

// TestOperationsCounts signs, MACs and checks MACs through a store and
// reads back exactly the work done, by algorithm; a failed operation is
// not counted.
func TestOperationsCounts(t *testing.T) {
	s := openInternal(t)
	mustGenerate(t, s, "k1", ECDSASecp256k1, false)
	mustGenerate(t, s, "p256", ECDSAP256, false)
	mustGenerate(t, s, "mac", HMACSHA256, false)
	before := s.Operations()
	digest := sha256.Sum256([]byte("count me"))
	for _, k := range []string{"k1", "k1", "p256"} {
		if _, err := s.Sign(t.Context(), SignRequest{Key: k, Digest: digest[:]}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Sign(t.Context(), SignRequest{Key: "k1", Digest: digest[:5]}); err == nil {
		t.Fatal("a 5-byte digest was signed")
	}
	mac, err := s.MAC(t.Context(), MACRequest{Key: "mac", Data: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.VerifyMAC(t.Context(), VerifyMACRequest{Key: "mac", Data: []byte("x"), MAC: mac}); err != nil {
		t.Fatal(err)
	}
	d := s.Operations().Sub(before)
	if d.Sign[ECDSASecp256k1] != 2 || d.Sign[ECDSAP256] != 1 || len(d.Sign) != 2 || d.MAC != 1 || d.VerifyMAC != 1 {
		t.Fatalf("counted %+v, want 2 secp256k1 and 1 P-256 signatures, 1 MAC, 1 MAC check", d)
	}
}
