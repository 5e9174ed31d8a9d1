package core

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/flynn/noise"
	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/channel"
	"github.com/opencustodynet/opencustody/protocol/pairing"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// memDevices is an in-memory DeviceStore for the core's unit tests; the
// authenticated SQL store has its own tests, and hsmd's tests use it.
type memDevices struct {
	mu sync.Mutex
	m  map[string]DeviceRecord
}

func newMemDevices() *memDevices { return &memDevices{m: map[string]DeviceRecord{}} }

func (s *memDevices) GetDevice(_ context.Context, id string) (*DeviceRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.m[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrDeviceNotFound, id)
	}
	return &d, nil
}

func (s *memDevices) CurrentDevices(ctx context.Context) ([]*DeviceRecord, error) {
	return s.ListDevices(ctx)
}

func (s *memDevices) ListDevices(context.Context) ([]*DeviceRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*DeviceRecord
	for _, d := range s.m {
		out = append(out, &d)
	}
	return out, nil
}

func (s *memDevices) CreateDevice(_ context.Context, d *DeviceRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[d.ID]; ok {
		return errors.New("exists")
	}
	d.Version = 1
	s.m[d.ID] = *d
	return nil
}

func (s *memDevices) UpdateDevice(_ context.Context, d *DeviceRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.m[d.ID]; !ok || cur.Version != d.Version {
		return errors.New("conflict")
	}
	d.Version++
	s.m[d.ID] = *d
	return nil
}

// testDevice plays the device side of the channel and pairing protocol.
type testDevice struct {
	t        testing.TB
	identity *signed.SoftwareKey
	static   noise.DHKey
	cred     *signed.Credential
	pinned   []byte           // HSM identity key, once paired
	confirm  bool             // the user's answer to the pairing screen
	chain    [][]byte         // attestation chain presented in Features, if any
	now      func() time.Time // the device's clock for credentials; nil: time.Now

	hs        *channel.Handshake
	sess      *channel.Session
	secret    []byte
	code      string
	hsmFinger string

	// Prompts. decision is what the user does with the next prompt (0:
	// nothing yet; see press); counter is the device's approval counter.
	// tamper changes an approval before it is signed, and signWith signs
	// it instead of the identity key.
	decision signed.Decision
	counter  uint64
	tamper   func(*signed.Approval)
	signWith signed.Signer
	showing  *signed.Prompt   // verified, shown, waiting for the user
	shown    []*signed.Prompt // every prompt shown
	refused  []error          // why prompts were refused
	answers  [][]byte         // every approval sent
}

func newTestDevice(t testing.TB) *testDevice { return newTestDeviceFrom(t, rand.Reader) }

// newTestDeviceFrom makes a device whose keys come from r.
func newTestDeviceFrom(t testing.TB, r io.Reader) *testDevice {
	t.Helper()
	id, err := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ECDSA_P256, r)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := channel.GenerateStatic(r)
	cred := &signed.Credential{Role: signed.RoleDevice, NotBefore: time.Unix(0, 0), NotAfter: signed.Forever}
	copy(cred.StaticKey[:], st.Public)
	if err := cred.Sign(id); err != nil {
		t.Fatal(err)
	}
	return &testDevice{t: t, identity: id, static: st, cred: cred, confirm: true}
}

func (d *testDevice) id() string { return signed.DeviceID(d.identity.PublicKey()) }

// checkPrompt does what firmware-spec/approval.md asks of a device: the
// prompt must parse, be signed by the HSM key pinned and proved in this
// channel, and name this device.
func (d *testDevice) checkPrompt(b []byte) (*signed.Prompt, error) {
	p, err := signed.ParsePrompt(b)
	if err != nil {
		return nil, err
	}
	peer := d.sess.Peer()
	if d.pinned == nil || !bytes.Equal(peer.IdentityKey, d.pinned) {
		return nil, errors.New("prompt outside a channel to the pinned HSM")
	}
	if err := p.Verify(peer.Algorithm, peer.IdentityKey); err != nil {
		return nil, err
	}
	if p.DeviceID != d.id() {
		return nil, fmt.Errorf("prompt for device %s", p.DeviceID)
	}
	return p, nil
}

// press has the user decide on the prompt shown, and returns the device's
// answer (nil if nothing is shown).
func (d *testDevice) press(dec signed.Decision) []byte {
	p := d.showing
	if p == nil {
		return nil
	}
	d.showing = nil
	d.counter++ // and persisted, before the answer leaves
	a := &signed.Approval{Nonce: p.Nonce, Decision: dec, Counter: d.counter, DeviceID: d.id()}
	copy(a.PromptDigest[:], p.Digest())
	if d.tamper != nil {
		d.tamper(a)
	}
	var signer signed.Signer = d.identity
	if d.signWith != nil {
		signer = d.signWith
	}
	if err := a.Sign(signer); err != nil {
		d.t.Fatal(err)
	}
	d.answers = append(d.answers, a.Marshal())
	return d.sealed(&pb.PromptAnswer{Approval: a.Marshal()})
}

func (d *testDevice) features() *pb.Features {
	return &pb.Features{DeviceId: signed.DeviceID(d.identity.PublicKey()), Model: "test",
		IdentityAlgorithm: d.identity.Algorithm(), IdentityPublicKey: d.identity.PublicKey(), Attestation: d.chain}
}

func (d *testDevice) encode(m proto.Message) []byte {
	b, err := protocol.EncodeEnvelope(m)
	if err != nil {
		d.t.Fatal(err)
	}
	return b
}

func (d *testDevice) sealed(m proto.Message) []byte {
	ct, err := d.sess.Seal(d.encode(m))
	if err != nil {
		d.t.Fatal(err)
	}
	return d.encode(&pb.SecureMessage{Ciphertext: ct})
}

// handle answers one envelope from the core; nil means no answer yet.
func (d *testDevice) handle(raw []byte) []byte {
	env, err := protocol.DecodeEnvelope(raw)
	if err != nil {
		d.t.Fatalf("device: %v", err)
	}
	switch m := protocol.Unwrap(env).(type) {
	case *pb.HandshakeInit:
		d.hs, _ = channel.NewHandshake(channel.Config{Role: signed.RoleDevice, Static: d.static, Credential: d.cred,
			ProtocolVersion: protocol.Version, Now: d.now, Accept: func(c *signed.Credential) error {
				if d.pinned != nil && !bytes.Equal(c.IdentityKey, d.pinned) {
					return errors.New("not the pinned HSM")
				}
				return nil
			}})
		msg2, err := d.hs.Respond(m.GetNoise())
		if err != nil {
			return d.encode(&pb.Failure{Code: pb.FailureCode_FAILURE_CHANNEL, Message: err.Error()})
		}
		return d.encode(&pb.HandshakeResponse{Noise: msg2})
	case *pb.HandshakeFinish:
		s, err := d.hs.Complete(m.GetNoise())
		if err != nil {
			return d.encode(&pb.Failure{Code: pb.FailureCode_FAILURE_CHANNEL, Message: err.Error()})
		}
		d.sess = s
		return d.encode(&pb.Success{})
	case *pb.SecureMessage:
		pt, err := d.sess.Open(m.GetCiphertext())
		if err != nil {
			return d.encode(&pb.Failure{Code: pb.FailureCode_FAILURE_CHANNEL, Message: err.Error()})
		}
		inner, err := protocol.DecodeEnvelope(pt)
		if err != nil {
			d.t.Fatal(err)
		}
		switch im := protocol.Unwrap(inner).(type) {
		case *pb.PairingRequest:
			d.secret = make([]byte, 32)
			_, _ = rand.Read(d.secret)
			return d.sealed(&pb.PairingCommitment{Commitment: pairing.Commitment(d.sess.HandshakeHash(), d.secret)})
		case *pb.PairingChallenge:
			d.code = pairing.Code(d.sess.HandshakeHash(), d.secret, im.GetChallenge())
			p := d.sess.Peer()
			d.hsmFinger = signed.Fingerprint(p.Algorithm, p.IdentityKey)
			return d.sealed(&pb.PairingReveal{Secret: d.secret})
		case *pb.PairingConfirm:
			return d.sealed(&pb.ButtonRequest{Code: pb.ButtonRequestCode_BUTTON_REQUEST_PAIRING})
		case *pb.ButtonAck:
			if d.showing != nil && d.decision != 0 {
				return d.press(d.decision)
			}
			return nil // the user decides later (decide, press)
		case *pb.Cancel:
			if d.showing == nil && d.pinned != nil {
				return nil // nothing pending: ignored, as device.md says
			}
			d.showing = nil
			return d.sealed(&pb.Failure{Code: pb.FailureCode_FAILURE_ACTION_CANCELLED})
		case *pb.PromptRequest:
			p, err := d.checkPrompt(im.GetPrompt())
			if err != nil {
				d.refused = append(d.refused, err)
				return d.sealed(&pb.Failure{Code: pb.FailureCode_FAILURE_DATA_ERROR, Message: err.Error()})
			}
			d.showing = p
			d.shown = append(d.shown, p)
			return d.sealed(&pb.ButtonRequest{Code: pb.ButtonRequestCode_BUTTON_REQUEST_APPROVAL})
		case *pb.PairingFinish:
			d.pinned = d.sess.Peer().IdentityKey
			return d.sealed(&pb.Success{})
		case *pb.Failure:
			return nil
		default:
			d.t.Fatalf("device: unexpected %T", im)
		}
	default:
		d.t.Fatalf("device: unexpected %T", m)
	}
	return nil
}

// pump delivers out to the device and its answers back to the link until
// nothing is left, and returns every event.
func pump(t testing.TB, l *Link, d *testDevice, out Output, err error) ([]Event, error) {
	t.Helper()
	events := out.Events
	queue := out.ToDevice
	for err == nil && len(queue) > 0 {
		ans := d.handle(queue[0])
		queue = queue[1:]
		if ans == nil {
			continue
		}
		var o Output
		o, err = l.Handle(context.Background(), ans)
		events = append(events, o.Events...)
		queue = append(queue, o.ToDevice...)
	}
	return events, err
}
