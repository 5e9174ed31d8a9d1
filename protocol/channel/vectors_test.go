package channel

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"testing"
	"time"

	"github.com/flynn/noise"

	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

var update = flag.Bool("update", false, "rewrite firmware-spec/vectors/handshake.json")

const handshakeFile = "../../firmware-spec/vectors/handshake.json"

// handshakeVectors is firmware-spec/vectors/handshake.json.
type handshakeVectors struct {
	Description string            `json:"description"`
	Conventions []string          `json:"conventions"`
	Handshakes  []handshakeVector `json:"handshakes"`
}

type handshakeParty struct {
	IdentityAlgorithm  string `json:"identity_algorithm"`
	IdentityPrivateKey string `json:"identity_private_key"`
	IdentityPublicKey  string `json:"identity_public_key"`
	Fingerprint        string `json:"fingerprint"`
	DeviceID           string `json:"device_id,omitempty"`
	StaticPrivateKey   string `json:"static_private_key"`
	StaticPublicKey    string `json:"static_public_key"`
	EphemeralPrivate   string `json:"ephemeral_private_key"`
	EphemeralPublic    string `json:"ephemeral_public_key"`
	Credential         string `json:"credential"`
}

type transportVector struct {
	Direction  string `json:"direction"`
	Nonce      uint64 `json:"nonce"`
	Plaintext  string `json:"plaintext"`
	Comment    string `json:"comment"`
	Ciphertext string `json:"ciphertext"`
}

type handshakeVector struct {
	Name          string            `json:"name"`
	Protocol      string            `json:"protocol"`
	Prologue      string            `json:"prologue"`
	Core          handshakeParty    `json:"core"`
	Device        handshakeParty    `json:"device"`
	Message1      string            `json:"message_1"`
	Message2      string            `json:"message_2"`
	Message3      string            `json:"message_3"`
	HandshakeHash string            `json:"handshake_hash"`
	Transport     []transportVector `json:"transport"`
}

// seeded returns 32 bytes derived from name: the vectors' private keys.
func seeded(name string) []byte {
	d := sha256.Sum256([]byte("OpenCustody handshake vector " + name))
	return d[:]
}

func party(t *testing.T, role signed.Role, name string, notBefore, notAfter time.Time) (*signed.SoftwareKey, noise.DHKey, noise.DHKey, *signed.Credential) {
	t.Helper()
	id, err := signed.SoftwareKeyFromBytes(pb.Algorithm_ALGORITHM_ED25519, seeded(name+" identity"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := GenerateStatic(bytes.NewReader(seeded(name + " static")))
	if err != nil {
		t.Fatal(err)
	}
	eph, err := noise.DH25519.GenerateKeypair(bytes.NewReader(seeded(name + " ephemeral")))
	if err != nil {
		t.Fatal(err)
	}
	c := &signed.Credential{Role: role, NotBefore: notBefore, NotAfter: notAfter}
	copy(c.StaticKey[:], st.Public)
	if err := c.Sign(id); err != nil {
		t.Fatal(err)
	}
	return id, st, eph, c
}

func describeParty(id *signed.SoftwareKey, st, eph noise.DHKey, c *signed.Credential, device bool) handshakeParty {
	p := handshakeParty{
		IdentityAlgorithm:  id.Algorithm().String(),
		IdentityPrivateKey: hex.EncodeToString(id.Bytes()),
		IdentityPublicKey:  hex.EncodeToString(id.PublicKey()),
		Fingerprint:        signed.Fingerprint(id.Algorithm(), id.PublicKey()),
		StaticPrivateKey:   hex.EncodeToString(st.Private),
		StaticPublicKey:    hex.EncodeToString(st.Public),
		EphemeralPrivate:   hex.EncodeToString(eph.Private),
		EphemeralPublic:    hex.EncodeToString(eph.Public),
		Credential:         hex.EncodeToString(c.Marshal()),
	}
	if device {
		p.DeviceID = signed.DeviceID(id.PublicKey())
	}
	return p
}

// makeHandshakeVectors runs a handshake and a few transport messages
// between this package's two ends, with the ephemeral keys fed through
// their Rand, and records every byte.
func makeHandshakeVectors(t *testing.T) *handshakeVectors {
	t.Helper()
	cid, cst, ceph, ccred := party(t, signed.RoleCore, "core", time.Unix(1_800_000_000, 0), time.Unix(1_800_086_400, 0))
	did, dst, deph, dcred := party(t, signed.RoleDevice, "device", time.Unix(0, 0), signed.Forever)
	at := time.Unix(1_800_000_100, 0)
	core, err := NewHandshake(Config{Role: signed.RoleCore, Static: cst, Credential: ccred, ProtocolVersion: 1,
		Rand: bytes.NewReader(ceph.Private), Now: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	dev, err := NewHandshake(Config{Role: signed.RoleDevice, Static: dst, Credential: dcred, ProtocolVersion: 1,
		Rand: bytes.NewReader(deph.Private), CheckTime: func(*signed.Credential) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	m1, err := core.Start()
	if err != nil {
		t.Fatal(err)
	}
	m2, err := dev.Respond(m1)
	if err != nil {
		t.Fatal(err)
	}
	m3, cs, err := core.Finish(m2)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := dev.Complete(m3)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cs.HandshakeHash(), ds.HandshakeHash()) {
		t.Fatal("the two ends disagree on the handshake hash")
	}
	v := handshakeVector{
		Name:          "Ed25519 core and device identities, protocol version 1",
		Protocol:      "Noise_XX_25519_ChaChaPoly_SHA256",
		Prologue:      hex.EncodeToString(prologue(1)),
		Core:          describeParty(cid, cst, ceph, ccred, false),
		Device:        describeParty(did, dst, deph, dcred, true),
		Message1:      hex.EncodeToString(m1),
		Message2:      hex.EncodeToString(m2),
		Message3:      hex.EncodeToString(m3),
		HandshakeHash: hex.EncodeToString(cs.HandshakeHash()),
	}
	// Envelopes: GetFeatures (08 01 52 00), Success{} (08 01 62 00 is
	// Ping; Success is field 13: 08 01 6a 00), Ping{"hi"}.
	steps := []struct {
		dir       string
		from, to  *Session
		pt        string
		comment   string
		nonceFrom *uint64
	}{
		{dir: "core_to_device", from: cs, to: ds, pt: "08015200", comment: "Envelope{version 1, GetFeatures}"},
		{dir: "device_to_core", from: ds, to: cs, pt: "08016a00", comment: "Envelope{version 1, Success}"},
		{dir: "core_to_device", from: cs, to: ds, pt: "080162040a026869", comment: "Envelope{version 1, Ping{message \"hi\"}}"},
	}
	nonces := map[string]uint64{}
	for _, s := range steps {
		pt, _ := hex.DecodeString(s.pt)
		ct, err := s.from.Seal(pt)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.to.Open(ct)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("%s: open: %v", s.dir, err)
		}
		v.Transport = append(v.Transport, transportVector{Direction: s.dir, Nonce: nonces[s.dir], Plaintext: s.pt, Comment: s.comment, Ciphertext: hex.EncodeToString(ct)})
		nonces[s.dir]++
	}
	return &handshakeVectors{
		Description: "A complete secure-channel handshake (firmware-spec/channel.md §3, §4) and transport messages (§5), with every private key given, so that a firmware can reproduce each byte. Generated by TestHandshakeVectors in protocol/channel (go test ./protocol/channel -run TestHandshakeVectors -update).",
		Conventions: []string{
			"All byte strings are lowercase hex. Private keys: Ed25519 identity keys are RFC 8032 seeds (32 bytes); X25519 static and ephemeral keys are the 32-byte scalars as flynn/noise and RFC 7748 take them (clamped when used).",
			"The core is the Noise initiator. message_1 is the Noise message of HandshakeInit (empty payload), message_2 of HandshakeResponse (payload: the device credential, encrypted), message_3 of HandshakeFinish (payload: the core credential, encrypted). Each goes in the noise field of its envelope.",
			"handshake_hash is Noise's h after message 3: the session's id, which pairing uses (channel.md §6).",
			"transport lists SecureMessage ciphertexts in the order sent: ChaCha20-Poly1305 with the CipherState of the direction (core_to_device is the first CipherState Split returns), the nonce counting messages in that direction from 0, empty associated data. plaintext is the encoded inner envelope.",
			"fingerprint is channel.md §2's fingerprint of the identity key; device_id is the device id of the device's identity key.",
			"The core's credential is valid from 1800000000 to 1800086400; the device's from 0 to never (2^64-1 on the wire).",
		},
		Handshakes: []handshakeVector{v},
	}
}

// TestHandshakeVectors checks firmware-spec/vectors/handshake.json against
// this package: the same keys give the same bytes. With -update it
// rewrites the file.
func TestHandshakeVectors(t *testing.T) {
	want := makeHandshakeVectors(t)
	b, err := json.MarshalIndent(want, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, '\n')
	if *update {
		if err := os.WriteFile(handshakeFile, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(handshakeFile)
	if err != nil {
		t.Fatalf("%v (run go test ./protocol/channel -run TestHandshakeVectors -update)", err)
	}
	if !bytes.Equal(got, b) {
		t.Fatalf("%s differs from what this package produces (after a deliberate change: -update)", handshakeFile)
	}
	// The file alone, replayed with plain flynn/noise: message 2 and 3
	// decrypt to the credentials, and the transport opens.
	var f handshakeVectors
	if err := json.Unmarshal(got, &f); err != nil {
		t.Fatal(err)
	}
	h := f.Handshakes[0]
	hx := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	dev, err := noise.NewHandshakeState(noise.Config{
		CipherSuite: Suite, Pattern: noise.HandshakeXX, Prologue: hx(h.Prologue),
		StaticKeypair: noise.DHKey{Private: hx(h.Device.StaticPrivateKey), Public: hx(h.Device.StaticPublicKey)},
		// flynn/noise draws the ephemeral key from Random.
		Random: bytes.NewReader(hx(h.Device.EphemeralPrivate)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := dev.ReadMessage(nil, hx(h.Message1)); err != nil {
		t.Fatal(err)
	}
	m2, _, _, err := dev.WriteMessage(nil, hx(h.Device.Credential))
	if err != nil || !bytes.Equal(m2, hx(h.Message2)) {
		t.Fatalf("message 2 from the file's keys differs (%v)", err)
	}
	cred, c1, _, err := dev.ReadMessage(nil, hx(h.Message3))
	if err != nil || !bytes.Equal(cred, hx(h.Core.Credential)) {
		t.Fatalf("message 3 does not carry the core credential (%v)", err)
	}
	if !bytes.Equal(dev.ChannelBinding(), hx(h.HandshakeHash)) {
		t.Fatal("handshake hash differs")
	}
	pt, err := c1.Decrypt(nil, nil, hx(h.Transport[0].Ciphertext))
	if err != nil || !bytes.Equal(pt, hx(h.Transport[0].Plaintext)) {
		t.Fatalf("transport 0 does not open (%v)", err)
	}
}
