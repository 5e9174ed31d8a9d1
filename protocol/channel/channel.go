// Package channel is the end-to-end secure channel between the custody core
// and an approval device: Noise_XX_25519_ChaChaPoly_SHA256
// (github.com/flynn/noise), with each side's Noise static key bound to its
// identity key by a [signed.Credential].
//
// # Handshake
//
// The core initiates, the device responds; the bridge only carries the
// three messages:
//
//	-> e                          Start        (core)
//	<- e, ee, s, es  [device credential]   Respond (device)
//	-> s, se         [core credential]     Finish  (core), Complete (device)
//
// The prologue holds [PrologueLabel] and the protocol version, so two ends
// that speak different versions fail the handshake instead of
// downgrading. Each side checks the peer's credential: its role, that it
// binds the static key the peer proved in the handshake, its signature,
// its validity ([Config.CheckTime]), and finally the caller's own decision
// ([Config.Accept]: pinned HSM key, paired and unrevoked device).
//
// # Transport
//
// A [Session] encrypts with implicit, strictly increasing nonces. A
// ciphertext that fails to open — altered, truncated, replayed, reordered
// or following a dropped one — closes the session for good: every later
// call fails with [ErrClosed], and the two ends must run a new handshake.
package channel

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/flynn/noise"

	"github.com/opencustodynet/opencustody/protocol/signed"
)

// PrologueLabel starts the Noise prologue.
const PrologueLabel = "OpenCustody channel v1"

// Suite is the Noise cipher suite.
var Suite = noise.NewCipherSuite(noise.DH25519, noise.CipherChaChaPoly, noise.HashSHA256)

var (
	// ErrHandshake means the handshake failed: a message did not decrypt
	// or parse, or the peer's credential was refused.
	ErrHandshake = errors.New("channel: handshake failed")
	// ErrClosed means the session was closed by an earlier failure.
	ErrClosed = errors.New("channel: session closed after a failure; a new handshake is needed")
	// ErrOpen means a transport message failed to decrypt.
	ErrOpen = errors.New("channel: message failed authentication")
)

// Config configures one end of a channel.
type Config struct {
	// Role is RoleCore (initiator) or RoleDevice (responder).
	Role signed.Role
	// Static is this end's Noise static key pair.
	Static noise.DHKey
	// Credential binds Static's public key to this end's identity key.
	Credential *signed.Credential
	// ProtocolVersion goes into the prologue; both ends must agree.
	ProtocolVersion uint32
	// CheckTime decides whether the peer's credential is fresh. Nil means
	// valid at Now (see [signed.Credential.ValidAt]). A device without a
	// clock supplies its own rule.
	CheckTime func(peer *signed.Credential) error
	// Accept is the caller's decision on a peer whose credential verified:
	// the pinned HSM key on a device, a paired and unrevoked device on the
	// core. Nil accepts any verified peer (only for pairing a new device).
	Accept func(peer *signed.Credential) error
	// Now and Rand default to time.Now and crypto/rand.
	Now  func() time.Time
	Rand io.Reader
}

// GenerateStatic makes a Noise static key pair from rand (crypto/rand if nil).
func GenerateStatic(r io.Reader) (noise.DHKey, error) {
	if r == nil {
		r = rand.Reader
	}
	return noise.DH25519.GenerateKeypair(r)
}

func prologue(version uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte(PrologueLabel), version)
}

// Handshake is one end of a handshake in progress. Use it once.
type Handshake struct {
	cfg  Config
	hs   *noise.HandshakeState
	peer *signed.Credential
}

// NewHandshake starts a handshake for cfg.
func NewHandshake(cfg Config) (*Handshake, error) {
	if cfg.Role != signed.RoleCore && cfg.Role != signed.RoleDevice {
		return nil, fmt.Errorf("channel: unknown role %v", cfg.Role)
	}
	if cfg.Credential == nil || cfg.Credential.Role != cfg.Role || !bytes.Equal(cfg.Credential.StaticKey[:], cfg.Static.Public) {
		return nil, fmt.Errorf("channel: own credential does not bind this %v static key", cfg.Role)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:   Suite,
		Random:        cfg.Rand,
		Pattern:       noise.HandshakeXX,
		Initiator:     cfg.Role == signed.RoleCore,
		Prologue:      prologue(cfg.ProtocolVersion),
		StaticKeypair: cfg.Static,
	})
	if err != nil {
		return nil, fmt.Errorf("channel: %w", err)
	}
	return &Handshake{cfg: cfg, hs: hs}, nil
}

func (h *Handshake) fail(step string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrHandshake, step, err)
}

// Start writes the core's first message.
func (h *Handshake) Start() ([]byte, error) {
	if h.cfg.Role != signed.RoleCore || h.hs.MessageIndex() != 0 {
		return nil, fmt.Errorf("channel: Start is the core's first step")
	}
	msg, _, _, err := h.hs.WriteMessage(nil, nil)
	return msg, err
}

// Respond reads the core's first message and writes the device's answer,
// which carries the device credential.
func (h *Handshake) Respond(msg1 []byte) ([]byte, error) {
	if h.cfg.Role != signed.RoleDevice || h.hs.MessageIndex() != 0 {
		return nil, fmt.Errorf("channel: Respond is the device's first step")
	}
	payload, _, _, err := h.hs.ReadMessage(nil, msg1)
	if err != nil {
		return nil, h.fail("read message 1", err)
	}
	if len(payload) != 0 {
		return nil, h.fail("read message 1", errors.New("unexpected payload"))
	}
	msg2, _, _, err := h.hs.WriteMessage(nil, h.cfg.Credential.Marshal())
	return msg2, err
}

// Finish reads the device's answer, checks its credential, and writes the
// core's last message. The session is ready when it returns.
func (h *Handshake) Finish(msg2 []byte) ([]byte, *Session, error) {
	if h.cfg.Role != signed.RoleCore || h.hs.MessageIndex() != 1 {
		return nil, nil, fmt.Errorf("channel: Finish is the core's second step")
	}
	payload, _, _, err := h.hs.ReadMessage(nil, msg2)
	if err != nil {
		return nil, nil, h.fail("read message 2", err)
	}
	if err := h.checkPeer(payload, signed.RoleDevice); err != nil {
		return nil, nil, h.fail("device credential", err)
	}
	msg3, cs1, cs2, err := h.hs.WriteMessage(nil, h.cfg.Credential.Marshal())
	if err != nil {
		return nil, nil, h.fail("write message 3", err)
	}
	return msg3, h.session(cs1, cs2), nil
}

// Complete reads the core's last message and checks its credential. The
// session is ready when it returns.
func (h *Handshake) Complete(msg3 []byte) (*Session, error) {
	if h.cfg.Role != signed.RoleDevice || h.hs.MessageIndex() != 2 {
		return nil, fmt.Errorf("channel: Complete is the device's second step")
	}
	payload, cs1, cs2, err := h.hs.ReadMessage(nil, msg3)
	if err != nil {
		return nil, h.fail("read message 3", err)
	}
	if err := h.checkPeer(payload, signed.RoleCore); err != nil {
		return nil, h.fail("core credential", err)
	}
	return h.session(cs1, cs2), nil
}

func (h *Handshake) checkPeer(payload []byte, want signed.Role) error {
	c, err := signed.ParseCredential(payload)
	if err != nil {
		return err
	}
	if c.Role != want {
		return fmt.Errorf("credential is for the %v, want the %v", c.Role, want)
	}
	if !bytes.Equal(c.StaticKey[:], h.hs.PeerStatic()) {
		return errors.New("credential binds another static key than the one in the handshake")
	}
	if err := c.VerifySignature(); err != nil {
		return err
	}
	check := h.cfg.CheckTime
	if check == nil {
		check = func(c *signed.Credential) error { return c.ValidAt(h.cfg.Now()) }
	}
	if err := check(c); err != nil {
		return err
	}
	if h.cfg.Accept != nil {
		if err := h.cfg.Accept(c); err != nil {
			return err
		}
	}
	h.peer = c
	return nil
}

func (h *Handshake) session(cs1, cs2 *noise.CipherState) *Session {
	s := &Session{peer: h.peer, hash: h.hs.ChannelBinding()}
	// cs1 encrypts initiator → responder, cs2 the other way.
	if h.cfg.Role == signed.RoleCore {
		s.send, s.recv = cs1, cs2
	} else {
		s.send, s.recv = cs2, cs1
	}
	return s
}

// Session is an established channel. It is safe for concurrent use.
type Session struct {
	peer *signed.Credential
	hash []byte

	mu         sync.Mutex // guards send, recv, err
	send, recv *noise.CipherState
	err        error // set once on the first failure; then every call fails
}

// Peer returns the peer's verified credential.
func (s *Session) Peer() *signed.Credential { return s.peer }

// HandshakeHash returns the Noise handshake hash, which both ends share and
// which identifies this session (it seeds the pairing code).
func (s *Session) HandshakeHash() []byte { return append([]byte(nil), s.hash...) }

// Seal encrypts one message for the peer.
func (s *Session) Seal(plaintext []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	out, err := s.send.Encrypt(nil, nil, plaintext)
	if err != nil {
		s.err = fmt.Errorf("%w: %v", ErrClosed, err)
		return nil, s.err
	}
	return out, nil
}

// Open decrypts the next message from the peer. Any failure closes the
// session: messages must arrive exactly once and in order.
func (s *Session) Open(ciphertext []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	n := s.recv.Nonce()
	out, err := s.recv.Decrypt(nil, nil, ciphertext)
	if err != nil {
		s.err = ErrClosed
		return nil, fmt.Errorf("%w (expected message %d): %w", ErrOpen, n, ErrClosed)
	}
	return out, nil
}

// Close ends the session; later calls fail with [ErrClosed].
func (s *Session) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = ErrClosed
	}
}
