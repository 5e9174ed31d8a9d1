package signed

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

func testPrompt() *Prompt {
	p := &Prompt{
		Kind: PromptTransaction, RequestID: "req-0001", DeviceID: "3097e2dee2cb4a34",
		NotAfter: time.Unix(1_800_000_600, 0), Title: "Approve transfer",
		Fields:  []Field{{"Wallet", "treasury"}, {"Send", "0.50000000 BTC"}, {"To", "sb1qexampleexampleexample"}, {"Fee", "0.00001410 BTC (10.000 sat/vB)"}},
		Payload: []byte{1, 2, 3},
	}
	copy(p.Nonce[:], bytes.Repeat([]byte{0x77}, NonceSize))
	return p
}

func TestPromptSignParseVerify(t *testing.T) {
	hsmKey, _ := SoftwareKeyFromBytes(pb.Algorithm_ALGORITHM_ECDSA_P256, bytes.Repeat([]byte{0x42}, 32))
	p := testPrompt()
	if err := p.Sign(hsmKey); err != nil {
		t.Fatal(err)
	}
	got, err := ParsePrompt(p.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Statement(), p.Statement()) || !bytes.Equal(got.Marshal(), p.Marshal()) {
		t.Fatal("prompt did not round-trip")
	}
	if err := got.Verify(hsmKey.Algorithm(), hsmKey.PublicKey()); err != nil {
		t.Fatal(err)
	}
	// Another HSM's key, or any changed field, fails verification.
	other, _ := SoftwareKeyFromBytes(pb.Algorithm_ALGORITHM_ECDSA_P256, bytes.Repeat([]byte{0x43}, 32))
	if err := got.Verify(other.Algorithm(), other.PublicKey()); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("another HSM key: %v", err)
	}
	for name, mutate := range map[string]func(*Prompt){
		"device":  func(p *Prompt) { p.DeviceID = "0000000000000000" },
		"amount":  func(p *Prompt) { p.Fields[1].Value = "5.00000000 BTC" },
		"address": func(p *Prompt) { p.Fields[2].Value = "sb1qattackerattacker" },
		"payload": func(p *Prompt) { p.Payload[0] ^= 1 },
		"expiry":  func(p *Prompt) { p.NotAfter = p.NotAfter.Add(time.Hour) },
		"nonce":   func(p *Prompt) { p.Nonce[0] ^= 1 },
		"kind":    func(p *Prompt) { p.Kind = PromptAdmin },
	} {
		cp, _ := ParsePrompt(p.Marshal())
		mutate(cp)
		if err := cp.Verify(hsmKey.Algorithm(), hsmKey.PublicKey()); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s changed: %v", name, err)
		}
	}
}

func TestPromptLimits(t *testing.T) {
	k, _ := GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ED25519, nil)
	for name, mutate := range map[string]func(*Prompt){
		"no title":        func(p *Prompt) { p.Title = "" },
		"long title":      func(p *Prompt) { p.Title = strings.Repeat("x", MaxPromptTitle+1) },
		"control in text": func(p *Prompt) { p.Fields[0].Value = "tre\nasury" },
		"bad utf8":        func(p *Prompt) { p.Fields[0].Value = "\xff" },
		"no fields":       func(p *Prompt) { p.Fields = nil },
		"empty label":     func(p *Prompt) { p.Fields[0].Label = "" },
		"big payload":     func(p *Prompt) { p.Payload = make([]byte, MaxPromptPayload+1) },
		"kind":            func(p *Prompt) { p.Kind = 9 },
		"no device":       func(p *Prompt) { p.DeviceID = "" },
	} {
		p := testPrompt()
		mutate(p)
		if err := p.Sign(k); !errors.Is(err, ErrMalformedPrompt) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestApprovalSignParseVerify(t *testing.T) {
	dev, _ := SoftwareKeyFromBytes(pb.Algorithm_ALGORITHM_ECDSA_SECP256K1, bytes.Repeat([]byte{0x42}, 32))
	p := testPrompt()
	a := &Approval{Nonce: p.Nonce, Decision: Approve, Counter: 7, DeviceID: p.DeviceID}
	copy(a.PromptDigest[:], p.Digest())
	if err := a.Sign(dev); err != nil {
		t.Fatal(err)
	}
	got, err := ParseApproval(a.Marshal())
	if err != nil || !bytes.Equal(got.Marshal(), a.Marshal()) {
		t.Fatalf("approval did not round-trip: %v", err)
	}
	if err := got.Verify(dev.Algorithm(), dev.PublicKey()); err != nil {
		t.Fatal(err)
	}
	// A rejection is not an approval: flipping the decision breaks the signature.
	got.Decision = Reject
	if err := got.Verify(dev.Algorithm(), dev.PublicKey()); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("flipped decision: %v", err)
	}
	got.Decision, got.Counter = Approve, 8
	if err := got.Verify(dev.Algorithm(), dev.PublicKey()); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("changed counter: %v", err)
	}
	if _, err := ParseApproval(append(a.Marshal(), 0)); !errors.Is(err, ErrMalformedPrompt) {
		t.Fatalf("trailing byte: %v", err)
	}
	bad := &Approval{Decision: 3, DeviceID: "x"}
	if err := bad.Sign(dev); !errors.Is(err, ErrMalformedPrompt) {
		t.Fatalf("unknown decision: %v", err)
	}
}

func FuzzParsePrompt(f *testing.F) {
	k, _ := SoftwareKeyFromBytes(pb.Algorithm_ALGORITHM_ED25519, bytes.Repeat([]byte{1}, 32))
	p := testPrompt()
	if err := p.Sign(k); err != nil {
		f.Fatal(err)
	}
	f.Add(p.Marshal())
	a := &Approval{Decision: Approve, DeviceID: "d"}
	_ = a.Sign(k)
	f.Add(a.Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := ParsePrompt(b); err == nil {
			if !bytes.Equal(p.Marshal(), b) {
				t.Fatal("prompt re-encodes differently")
			}
			_ = p.Verify(k.Algorithm(), k.PublicKey())
		} else if p != nil {
			t.Fatal("error with a prompt")
		}
		if a, err := ParseApproval(b); err == nil {
			if !bytes.Equal(a.Marshal(), b) {
				t.Fatal("approval re-encodes differently")
			}
		} else if a != nil {
			t.Fatal("error with an approval")
		}
	})
}
