package pairing

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"testing"
)

// TestSpecVectors checks the pairing vectors in firmware-spec/.
func TestSpecVectors(t *testing.T) {
	raw, err := os.ReadFile("../../firmware-spec/vectors/channel.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Pairing []struct {
			HandshakeHash string `json:"handshake_hash"`
			Secret        string `json:"secret"`
			Challenge     string `json:"challenge"`
			Commitment    string `json:"commitment"`
			Code          string `json:"code"`
		} `json:"pairing"`
	}
	if err := json.Unmarshal(raw, &file); err != nil || len(file.Pairing) == 0 {
		t.Fatalf("vectors: %v", err)
	}
	un := func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	for _, v := range file.Pairing {
		hh, secret := un(v.HandshakeHash), un(v.Secret)
		if got := hex.EncodeToString(Commitment(hh, secret)); got != v.Commitment {
			t.Errorf("commitment %s, want %s", got, v.Commitment)
		}
		if got := Code(hh, secret, un(v.Challenge)); got != v.Code {
			t.Errorf("code %s, want %s", got, v.Code)
		}
	}
}

// The vector firmware-spec/ documents; firmware authors check their
// implementation against it.
func TestVector(t *testing.T) {
	hh := bytes.Repeat([]byte{0x11}, 32)
	secret := bytes.Repeat([]byte{0x22}, 32)
	challenge := bytes.Repeat([]byte{0x33}, 32)
	if got, want := hex.EncodeToString(Commitment(hh, secret)), vectorCommitment; got != want {
		t.Errorf("commitment %s, want %s", got, want)
	}
	if got := Code(hh, secret, challenge); got != vectorCode {
		t.Errorf("code %s, want %s", got, vectorCode)
	}
}

const (
	vectorCommitment = "d86f3d3619ce342e714b1762fb944da7a7e5de96b9b7deda4e80dbeb3a61cc19"
	vectorCode       = "453945"
)

func TestCheckReveal(t *testing.T) {
	hh := bytes.Repeat([]byte{1}, 32)
	secret := bytes.Repeat([]byte{2}, 32)
	c := Commitment(hh, secret)
	if err := CheckReveal(hh, c, secret); err != nil {
		t.Fatal(err)
	}
	other := bytes.Repeat([]byte{3}, 32)
	if err := CheckReveal(hh, c, other); !errors.Is(err, ErrCommitment) {
		t.Fatalf("other secret: %v", err)
	}
	if err := CheckReveal(bytes.Repeat([]byte{9}, 32), c, secret); !errors.Is(err, ErrCommitment) {
		t.Fatalf("other handshake: %v", err)
	}
	if err := CheckReveal(hh, c, secret[:31]); err == nil {
		t.Fatal("short secret accepted")
	}
}

// Different handshakes (a relay in the middle) give different codes for the
// same secret and challenge, and codes are spread over all six digits.
func TestCodeDependsOnEveryInput(t *testing.T) {
	base := func() [][]byte {
		return [][]byte{bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32)}
	}
	in := base()
	ref := Code(in[0], in[1], in[2])
	for i := range 3 {
		in := base()
		in[i][0] ^= 1
		if Code(in[0], in[1], in[2]) == ref {
			t.Errorf("changing input %d kept the code", i)
		}
	}
	seen := map[string]bool{}
	for i := range 1000 {
		hh := bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 16)
		c := Code(hh, in[1], in[2])
		if len(c) != 6 {
			t.Fatalf("code %q is not six digits", c)
		}
		seen[c] = true
	}
	if len(seen) < 990 {
		t.Fatalf("only %d distinct codes in 1000", len(seen))
	}
	if Display("012345") != "012 345" {
		t.Fatal(Display("012345"))
	}
}
