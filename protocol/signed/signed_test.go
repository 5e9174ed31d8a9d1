package signed

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcec/v2"
	btcecdsa "github.com/btcsuite/btcd/btcec/v2/ecdsa"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

var algorithms = []pb.Algorithm{
	pb.Algorithm_ALGORITHM_ED25519,
	pb.Algorithm_ALGORITHM_ECDSA_P256,
	pb.Algorithm_ALGORITHM_ECDSA_SECP256K1,
}

func TestSoftwareKeySignVerify(t *testing.T) {
	for _, alg := range algorithms {
		t.Run(alg.String(), func(t *testing.T) {
			k, err := GenerateSoftwareKey(alg, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			d := sha256.Sum256([]byte("statement"))
			sig, err := k.SignDigest(d[:])
			if err != nil {
				t.Fatal(err)
			}
			if err := Verify(alg, k.PublicKey(), d[:], sig); err != nil {
				t.Fatalf("valid signature refused: %v", err)
			}
			other := sha256.Sum256([]byte("other"))
			if err := Verify(alg, k.PublicKey(), other[:], sig); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("signature over another digest: got %v, want ErrBadSignature", err)
			}
			bad := bytes.Clone(sig)
			bad[len(bad)-1] ^= 1
			if err := Verify(alg, k.PublicKey(), d[:], bad); err == nil {
				t.Fatal("altered signature accepted")
			}
			if _, err := k.SignDigest(d[:31]); err == nil {
				t.Fatal("31-byte digest signed")
			}
			// The private encoding round-trips to the same key.
			k2, err := SoftwareKeyFromBytes(alg, k.Bytes())
			if err != nil || !bytes.Equal(k2.PublicKey(), k.PublicKey()) {
				t.Fatalf("key did not round-trip: %v", err)
			}
		})
	}
}

func TestVerifyRejectsHighS(t *testing.T) {
	priv, err := btcec.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	sig := btcecdsa.Sign(priv, d[:])
	low := sig.Serialize()
	if err := Verify(pb.Algorithm_ALGORITHM_ECDSA_SECP256K1, priv.PubKey().SerializeCompressed(), d[:], low); err != nil {
		t.Fatalf("low-S signature refused: %v", err)
	}
	// Build the high-S twin: same r, s' = N - s. It verifies mathematically
	// but is a malleated encoding and must be refused.
	r, s := parseDER(t, low)
	s.Sub(btcec.S256().N, s)
	high := encodeDER(r, s)
	if err := Verify(pb.Algorithm_ALGORITHM_ECDSA_SECP256K1, priv.PubKey().SerializeCompressed(), d[:], high); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("high-S signature: got %v, want ErrBadSignature", err)
	}
}

func parseDER(t *testing.T, der []byte) (r, s *big.Int) {
	t.Helper()
	// 30 len 02 rlen r 02 slen s
	rl := int(der[3])
	r = new(big.Int).SetBytes(der[4 : 4+rl])
	sl := int(der[5+rl])
	s = new(big.Int).SetBytes(der[6+rl : 6+rl+sl])
	return r, s
}

func encodeDER(r, s *big.Int) []byte {
	enc := func(x *big.Int) []byte {
		b := x.Bytes()
		if b[0]&0x80 != 0 {
			b = append([]byte{0}, b...)
		}
		return append([]byte{2, byte(len(b))}, b...)
	}
	body := append(enc(r), enc(s)...)
	return append([]byte{0x30, byte(len(body))}, body...)
}

func TestVerifyRejectsBadKeys(t *testing.T) {
	d := sha256.Sum256(nil)
	for _, tc := range []struct {
		alg pb.Algorithm
		pub []byte
	}{
		{pb.Algorithm_ALGORITHM_ED25519, make([]byte, 31)},
		{pb.Algorithm_ALGORITHM_ECDSA_P256, make([]byte, 65)},
		{pb.Algorithm_ALGORITHM_ECDSA_P256, append([]byte{5}, make([]byte, 32)...)},
		{pb.Algorithm_ALGORITHM_ECDSA_SECP256K1, make([]byte, 33)},
	} {
		if err := Verify(tc.alg, tc.pub, d[:], []byte{1}); !errors.Is(err, ErrBadPublicKey) {
			t.Errorf("%v key %x: got %v, want ErrBadPublicKey", tc.alg, tc.pub, err)
		}
	}
	if err := Verify(pb.Algorithm(99), nil, d[:], nil); !errors.Is(err, ErrUnknownAlgorithm) {
		t.Errorf("unknown algorithm: got %v", err)
	}
}

func testCredential(t *testing.T, alg pb.Algorithm) (*Credential, *SoftwareKey) {
	t.Helper()
	k, err := GenerateSoftwareKey(alg, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c := &Credential{Role: RoleCore, NotBefore: time.Unix(1000, 0), NotAfter: time.Unix(2000, 0)}
	copy(c.StaticKey[:], bytes.Repeat([]byte{7}, 32))
	if err := c.Sign(k); err != nil {
		t.Fatal(err)
	}
	return c, k
}

func TestCredentialRoundTrip(t *testing.T) {
	for _, alg := range algorithms {
		c, _ := testCredential(t, alg)
		got, err := ParseCredential(c.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Statement(), c.Statement()) || !bytes.Equal(got.Signature, c.Signature) {
			t.Fatalf("%v: credential did not round-trip", alg)
		}
		if err := got.VerifySignature(); err != nil {
			t.Fatalf("%v: %v", alg, err)
		}
		if err := got.ValidAt(time.Unix(1500, 0)); err != nil {
			t.Fatal(err)
		}
		for _, at := range []int64{999, 2001} {
			if err := got.ValidAt(time.Unix(at, 0)); !errors.Is(err, ErrCredentialExpired) {
				t.Fatalf("valid at %d: got %v", at, err)
			}
		}
	}
}

func TestCredentialTamperedFieldsRefused(t *testing.T) {
	c, _ := testCredential(t, pb.Algorithm_ALGORITHM_ECDSA_P256)
	for name, mutate := range map[string]func(*Credential){
		"role":      func(c *Credential) { c.Role = RoleDevice },
		"static":    func(c *Credential) { c.StaticKey[0] ^= 1 },
		"notAfter":  func(c *Credential) { c.NotAfter = c.NotAfter.Add(time.Hour) },
		"notBefore": func(c *Credential) { c.NotBefore = c.NotBefore.Add(-time.Hour) },
	} {
		cp := *c
		mutate(&cp)
		if err := cp.VerifySignature(); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s changed: got %v, want ErrBadSignature", name, err)
		}
	}
}

func TestForeverCredential(t *testing.T) {
	c, _ := testCredential(t, pb.Algorithm_ALGORITHM_ED25519)
	c.NotBefore, c.NotAfter = time.Unix(0, 0), Forever
	got, err := ParseCredential(c.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if !got.NotAfter.Equal(Forever) || got.ValidAt(time.Now().Add(100*365*24*time.Hour)) != nil {
		t.Fatalf("forever credential: not after %v", got.NotAfter)
	}
}

func TestParseCredentialMalformed(t *testing.T) {
	c, _ := testCredential(t, pb.Algorithm_ALGORITHM_ED25519)
	good := c.Marshal()
	for name, b := range map[string][]byte{
		"empty":     nil,
		"truncated": good[:len(good)-1],
		"trailing":  append(bytes.Clone(good), 0),
		"label":     func() []byte { b := bytes.Clone(good); b[3] ^= 1; return b }(),
	} {
		if _, err := ParseCredential(b); !errors.Is(err, ErrMalformedCredential) {
			t.Errorf("%s: got %v, want ErrMalformedCredential", name, err)
		}
	}
}

func FuzzParseCredential(f *testing.F) {
	for _, alg := range algorithms {
		k, _ := SoftwareKeyFromBytes(alg, bytes.Repeat([]byte{3}, 32))
		c := &Credential{Role: RoleDevice, NotAfter: Forever}
		if err := c.Sign(k); err != nil {
			f.Fatal(err)
		}
		f.Add(c.Marshal())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCredential(b)
		if err != nil {
			if c != nil {
				t.Fatal("error with a credential")
			}
			return
		}
		// Whatever parses re-encodes to the same bytes.
		if !bytes.Equal(c.Marshal(), b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", c.Marshal(), b)
		}
		_ = c.VerifySignature()
	})
}

func TestFingerprint(t *testing.T) {
	a := Fingerprint(pb.Algorithm_ALGORITHM_ED25519, make([]byte, 32))
	b := Fingerprint(pb.Algorithm_ALGORITHM_ECDSA_P256, make([]byte, 32))
	if a == b || len(a) != 39 {
		t.Fatalf("fingerprints %q %q", a, b)
	}
}
