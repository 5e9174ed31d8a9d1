package signed

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

type credentialVector struct {
	Algorithm     string   `json:"algorithm"`
	PrivateKey    hexBytes `json:"private_key"`
	PublicKey     hexBytes `json:"identity_public_key"`
	Role          uint8    `json:"role"`
	StaticKey     hexBytes `json:"static_key"`
	NotBefore     int64    `json:"not_before"`
	NotAfter      int64    `json:"not_after"`
	Statement     hexBytes `json:"statement"`
	Digest        hexBytes `json:"digest"`
	Signature     hexBytes `json:"signature"`
	Deterministic bool     `json:"deterministic"`
	Encoded       hexBytes `json:"encoded"`
	Fingerprint   string   `json:"fingerprint"`
	DeviceID      string   `json:"device_id"`
}

// TestCredentialVectors checks the committed firmware-spec vectors, so the
// spec and this code cannot drift.
func TestCredentialVectors(t *testing.T) {
	raw, err := os.ReadFile("../../firmware-spec/vectors/channel.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Credentials []credentialVector `json:"credentials"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Credentials) != 3 {
		t.Fatalf("%d credential vectors, want one per algorithm", len(file.Credentials))
	}
	for _, v := range file.Credentials {
		t.Run(v.Algorithm, func(t *testing.T) {
			alg := pb.Algorithm(pb.Algorithm_value[v.Algorithm])
			k, err := SoftwareKeyFromBytes(alg, v.PrivateKey)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(k.PublicKey(), v.PublicKey) {
				t.Fatalf("public key %x, vector %x", k.PublicKey(), v.PublicKey)
			}
			c := &Credential{Role: Role(v.Role), NotBefore: time.Unix(v.NotBefore, 0), NotAfter: time.Unix(v.NotAfter, 0),
				Algorithm: alg, IdentityKey: v.PublicKey}
			copy(c.StaticKey[:], v.StaticKey)
			if !bytes.Equal(c.Statement(), v.Statement) {
				t.Fatalf("statement\n got %x\nwant %x", c.Statement(), v.Statement)
			}
			if d := sha256.Sum256(v.Statement); !bytes.Equal(d[:], v.Digest) || !bytes.Equal(c.Digest(), v.Digest) {
				t.Fatal("digest differs")
			}
			if err := Verify(alg, v.PublicKey, v.Digest, v.Signature); err != nil {
				t.Fatalf("vector signature: %v", err)
			}
			if v.Deterministic {
				sig, err := k.SignDigest(v.Digest)
				if err != nil || !bytes.Equal(sig, v.Signature) {
					t.Fatalf("signature\n got %x\nwant %x", sig, v.Signature)
				}
			}
			c.Signature = v.Signature
			if !bytes.Equal(c.Marshal(), v.Encoded) {
				t.Fatal("encoding differs")
			}
			parsed, err := ParseCredential(v.Encoded)
			if err != nil || parsed.VerifySignature() != nil {
				t.Fatalf("parse: %v", err)
			}
			if Fingerprint(alg, v.PublicKey) != v.Fingerprint || DeviceID(v.PublicKey) != v.DeviceID {
				t.Fatal("fingerprint or device id differs")
			}
		})
	}
}
