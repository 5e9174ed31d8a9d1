package conformance

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/flynn/noise"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/channel"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// hsm is a custody core's identity key, kept in software: the suite plays
// the core, so it needs an HSM identity the device can pin. It is an
// Ed25519 key made fresh for each run.
type hsm struct {
	key *signed.SoftwareKey
}

func newHSM(rand io.Reader) (*hsm, error) {
	k, err := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ED25519, rand)
	if err != nil {
		return nil, err
	}
	return &hsm{key: k}, nil
}

func (h *hsm) fingerprint() string { return signed.Fingerprint(h.key.Algorithm(), h.key.PublicKey()) }

// credential is a core channel key and the credential that binds it to an
// identity key.
type credential struct {
	static noise.DHKey
	cred   *signed.Credential
	raw    []byte // the encoded credential sent in the handshake
}

// newCredential makes a channel key and a credential signed by h, valid
// from notBefore to notAfter.
func (h *hsm) newCredential(rand io.Reader, notBefore, notAfter time.Time) (*credential, error) {
	st, err := channel.GenerateStatic(rand)
	if err != nil {
		return nil, err
	}
	c := &signed.Credential{Role: signed.RoleCore, NotBefore: notBefore, NotAfter: notAfter}
	copy(c.StaticKey[:], st.Public)
	if err := c.Sign(h.key); err != nil {
		return nil, err
	}
	return &credential{static: st, cred: c, raw: c.Marshal()}, nil
}

// handshake is the core's (initiator's) end of a Noise XX handshake, kept
// at the level of flynn/noise so that tests can send what a correct core
// never would: a payload in the first message, a credential that does not
// verify.
type handshake struct {
	hs         *noise.HandshakeState
	cred       *credential
	deviceCred *signed.Credential
}

func newHandshake(rand io.Reader, c *credential) (*handshake, error) {
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:   channel.Suite,
		Random:        rand,
		Pattern:       noise.HandshakeXX,
		Initiator:     true,
		Prologue:      binary.BigEndian.AppendUint32([]byte(channel.PrologueLabel), protocol.Version),
		StaticKeypair: c.static,
	})
	if err != nil {
		return nil, err
	}
	return &handshake{hs: hs, cred: c}, nil
}

// start writes message 1 with payload (empty for a correct core).
func (h *handshake) start(payload []byte) ([]byte, error) {
	msg, _, _, err := h.hs.WriteMessage(nil, payload)
	return msg, err
}

// respond reads message 2 and checks the device's credential as a core
// does (channel.md §3.3, checks 1–3), against the identity key the device
// stated in Features.
func (h *handshake) respond(msg2 []byte, f *pb.Features) error {
	payload, _, _, err := h.hs.ReadMessage(nil, msg2)
	if err != nil {
		return fmt.Errorf("HandshakeResponse is not a valid Noise message: %w", err)
	}
	c, err := signed.ParseCredential(payload)
	if err != nil {
		return fmt.Errorf("the device credential does not parse: %w", err)
	}
	switch {
	case c.Role != signed.RoleDevice:
		return fmt.Errorf("the device credential has role %v, want device", c.Role)
	case !bytes.Equal(c.StaticKey[:], h.hs.PeerStatic()):
		return errors.New("the device credential binds another static key than the one in the handshake")
	case c.Algorithm != f.GetIdentityAlgorithm() || !bytes.Equal(c.IdentityKey, f.GetIdentityPublicKey()):
		return errors.New("the device credential is signed by another identity key than the one in Features")
	}
	if err := c.VerifySignature(); err != nil {
		return fmt.Errorf("the device credential's signature: %w", err)
	}
	h.deviceCred = c
	return nil
}

// finish writes message 3 carrying credential bytes (h.cred.raw for a
// correct core) and returns the session.
func (h *handshake) finish(credential []byte) ([]byte, *session, error) {
	msg, cs1, cs2, err := h.hs.WriteMessage(nil, credential)
	if err != nil {
		return nil, nil, err
	}
	return msg, &session{send: cs1, recv: cs2, hash: h.hs.ChannelBinding()}, nil
}

// session is the core's end of an established channel: cs1 encrypts
// core → device, cs2 device → core (channel.md §5).
type session struct {
	send, recv *noise.CipherState
	hash       []byte
}

func (s *session) seal(pt []byte) ([]byte, error) { return s.send.Encrypt(nil, nil, pt) }

func (s *session) open(ct []byte) ([]byte, error) { return s.recv.Decrypt(nil, nil, ct) }
