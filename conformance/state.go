package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// state is what the tests of one run share: the link to the device, the
// suite's channel on it, the suite's HSM identities and what the device
// said and signed so far.
type state struct {
	cfg      Config
	link     *link
	cid      uint32 // the suite's main channel
	init     framing.InitResponse
	features *pb.Features
	screen   ScreenReader // nil on hardware

	hsm   *hsm // the HSM the suite pairs the device with
	other *hsm // another HSM, which a paired device must refuse
	t0    time.Time
	cred  *credential // hsm's current credential, valid from t0-1h
	sess  *session    // the secure channel, nil when none is known to be open

	lastCounter uint64 // the highest counter the device signed
	answered    []byte // a prompt the device answered, for the replay test
	lastErr     error
}

func newState(ctx context.Context, cfg Config) (*state, error) {
	s := &state{cfg: cfg, t0: cfg.Now().Truncate(time.Second)}
	if sr, ok := cfg.Operator.(ScreenReader); ok {
		s.screen = sr
	}
	var err error
	if s.hsm, err = newHSM(cfg.Rand); err != nil {
		return nil, err
	}
	if s.other, err = newHSM(cfg.Rand); err != nil {
		return nil, err
	}
	if s.cred, err = s.hsm.newCredential(cfg.Rand, s.t0.Add(-time.Hour), s.t0.Add(24*time.Hour)); err != nil {
		return nil, err
	}
	if err := s.connect(ctx); err != nil {
		return nil, err
	}
	t := &T{state: s, ctx: ctx}
	a, err := t.call(s.cid, &pb.GetFeatures{})
	if err != nil {
		s.close()
		return nil, fmt.Errorf("conformance: GetFeatures: %w", err)
	}
	f, ok := a.(*pb.Features)
	if !ok {
		s.close()
		return nil, fmt.Errorf("conformance: GetFeatures answered %s", messageText(a))
	}
	s.features = f
	return s, nil
}

// connect opens the transport and allocates the main channel.
func (s *state) connect(ctx context.Context) error {
	tr, err := s.cfg.Open(ctx)
	if err != nil {
		return fmt.Errorf("conformance: open the device: %w", err)
	}
	s.link = newLink(tr)
	t := &T{state: s, ctx: ctx}
	cid, init, err := t.alloc()
	if err != nil {
		s.link.close()
		return fmt.Errorf("conformance: allocate a channel: %w", err)
	}
	s.cid, s.init = cid, init
	return nil
}

func (s *state) close() {
	if s.link != nil {
		s.link.close()
	}
}

// runTest runs tc, then brings the device back to a known state: the
// suite's channel resynchronised (which abandons a request left pending)
// and no secure channel assumed.
func (s *state) runTest(ctx context.Context, tc Test) error {
	t := &T{state: s, ctx: ctx}
	err := tc.run(t)
	s.lastErr = err
	if rerr := t.recover(); rerr != nil && err == nil {
		err = fmt.Errorf("after the test, the device did not resynchronise its channel: %w", rerr)
	}
	s.sess = nil
	return err
}

// T is what a test works with.
type T struct {
	*state
	ctx context.Context
}

// recover resynchronises the suite's channel (framing.md §4), allocating
// a new one if the device forgot it, and drops whatever the device sent
// meanwhile.
func (t *T) recover() error {
	var last error
	for range 5 {
		var q framing.InitRequest
		if _, err := io.ReadFull(t.cfg.Rand, q.Nonce[:]); err != nil {
			return err
		}
		if err := t.link.send(t.cid, framing.CmdInit, q.Marshal()); err != nil {
			return err
		}
		deadline := time.Now().Add(t.cfg.AnswerTimeout)
		for {
			m, err := t.link.next(t.ctx, max(time.Until(deadline), 0))
			if err != nil {
				return err
			}
			if m.CID != t.cid {
				continue
			}
			if m.Cmd == framing.CmdInit {
				if r, err := framing.ParseInitResponse(m.Data); err == nil && r.Nonce == q.Nonce {
					return nil
				}
				continue
			}
			if m.Cmd == framing.CmdError && len(m.Data) == 1 {
				if framing.ErrorCode(m.Data[0]) == framing.ErrCodeInvalidChannel {
					cid, init, err := t.alloc()
					if err != nil {
						return err
					}
					t.state.cid, t.state.init = cid, init
					return nil
				}
				last = fmt.Errorf("resynchronising: %s", describe(m))
				break // try again: the device refused this INIT
			}
		}
	}
	return last
}

// alloc allocates a channel (framing.md §4).
func (t *T) alloc() (uint32, framing.InitResponse, error) {
	var q framing.InitRequest
	if _, err := io.ReadFull(t.cfg.Rand, q.Nonce[:]); err != nil {
		return 0, framing.InitResponse{}, err
	}
	if err := t.link.send(framing.BroadcastCID, framing.CmdInit, q.Marshal()); err != nil {
		return 0, framing.InitResponse{}, err
	}
	deadline := time.Now().Add(t.cfg.AnswerTimeout)
	for {
		m, err := t.link.next(t.ctx, max(time.Until(deadline), 0))
		if err != nil {
			return 0, framing.InitResponse{}, fmt.Errorf("INIT on the broadcast channel: %w", err)
		}
		if m.CID != framing.BroadcastCID {
			continue
		}
		if m.Cmd != framing.CmdInit {
			return 0, framing.InitResponse{}, fmt.Errorf("INIT on the broadcast channel answered %s", describe(m))
		}
		r, err := framing.ParseInitResponse(m.Data)
		if err != nil {
			return 0, framing.InitResponse{}, fmt.Errorf("INIT response: %w", err)
		}
		if r.Nonce != q.Nonce {
			continue
		}
		if r.CID == framing.ReservedCID || r.CID == framing.BroadcastCID {
			return 0, framing.InitResponse{}, fmt.Errorf("INIT response allocates the reserved channel %08x", r.CID)
		}
		if r.FramingVersion != framing.FramingVersion {
			return 0, framing.InitResponse{}, fmt.Errorf("INIT response has framing version %d, want %d", r.FramingVersion, framing.FramingVersion)
		}
		return r.CID, r, nil
	}
}

// await returns the next message on cid, dropping other channels'
// messages and, unless keepalives, KEEPALIVEs.
func (t *T) await(cid uint32, wait time.Duration, keepalives bool) (*framing.Message, error) {
	deadline := time.Now().Add(wait)
	for {
		m, err := t.link.next(t.ctx, max(time.Until(deadline), 0))
		if errors.Is(err, errNoAnswer) {
			return nil, fmt.Errorf("%w within %s", errNoAnswer, wait)
		}
		if err != nil {
			return nil, err
		}
		if m.CID != cid || (m.Cmd == framing.CmdKeepalive && !keepalives) {
			continue
		}
		return m, nil
	}
}

// expectError waits for ERROR code on cid.
func (t *T) expectError(cid uint32, code framing.ErrorCode, why string) error {
	m, err := t.await(cid, t.cfg.AnswerTimeout, false)
	if err != nil {
		return fmt.Errorf("%s: want ERROR %02x on channel %08x: %w", why, byte(code), cid, err)
	}
	if m.Cmd != framing.CmdError || len(m.Data) != 1 || m.Data[0] != byte(code) {
		return fmt.Errorf("%s: want ERROR %02x on channel %08x, got %s", why, byte(code), cid, describe(m))
	}
	return nil
}

// expectSilence sends a PING with unique data on the suite's channel and checks
// that the echo is the first thing the device sends: whatever the test did
// before got no answer.
func (t *T) expectSilence(why string) error {
	data := make([]byte, 16)
	if _, err := io.ReadFull(t.cfg.Rand, data); err != nil {
		return err
	}
	if err := t.link.send(t.cid, framing.CmdPing, data); err != nil {
		return err
	}
	m, err := t.link.next(t.ctx, t.cfg.AnswerTimeout)
	if err != nil {
		return fmt.Errorf("PING after %s: %w", why, err)
	}
	if m.CID != t.cid || m.Cmd != framing.CmdPing || string(m.Data) != string(data) {
		return fmt.Errorf("%s must not be answered; the device sent %s", why, describe(m))
	}
	return nil
}

// sendMsg sends m in an envelope on cid.
func (t *T) sendMsg(cid uint32, m proto.Message) error {
	b, err := protocol.EncodeEnvelope(m)
	if err != nil {
		return err
	}
	return t.link.send(cid, framing.CmdMsg, b)
}

// answer waits for the next envelope on cid (keepalives skipped).
func (t *T) answer(cid uint32, wait time.Duration) (proto.Message, error) {
	m, err := t.await(cid, wait, false)
	if err != nil {
		return nil, err
	}
	if m.Cmd != framing.CmdMsg {
		return nil, fmt.Errorf("the device answered %s, want a MSG", describe(m))
	}
	env, err := protocol.DecodeEnvelope(m.Data)
	if err != nil {
		return nil, fmt.Errorf("the device answered an invalid envelope (framing.md §7): %w", err)
	}
	a := protocol.Unwrap(env)
	if a == nil {
		return nil, errors.New("the device answered an empty envelope")
	}
	return a, nil
}

// call sends m in plain on cid and returns the answer.
func (t *T) call(cid uint32, m proto.Message) (proto.Message, error) {
	if err := t.sendMsg(cid, m); err != nil {
		return nil, err
	}
	return t.answer(cid, t.cfg.AnswerTimeout)
}

// getFeatures sends GetFeatures in plain on cid and returns the Features
// answered; what names the call in errors.
func (t *T) getFeatures(cid uint32, what string) (*pb.Features, error) {
	a, err := t.call(cid, &pb.GetFeatures{})
	if err != nil {
		return nil, err
	}
	return wantType[*pb.Features](what, a)
}

// callRaw sends data as a MSG on cid and returns the answer.
func (t *T) callRaw(cid uint32, data []byte) (proto.Message, error) {
	if err := t.link.send(cid, framing.CmdMsg, data); err != nil {
		return nil, err
	}
	return t.answer(cid, t.cfg.AnswerTimeout)
}

// wantFailure checks that a is a Failure with code.
func wantFailure(what string, a proto.Message, code pb.FailureCode) error {
	f, ok := a.(*pb.Failure)
	if !ok || f.GetCode() != code {
		return fmt.Errorf("%s: want Failure{%v}, got %s", what, code, messageText(a))
	}
	return nil
}

// wantType checks that a is an M.
func wantType[M proto.Message](what string, a proto.Message) (M, error) {
	m, ok := a.(M)
	if !ok {
		var zero M
		return zero, fmt.Errorf("%s: want %s, got %s", what, messageText(zero), messageText(a))
	}
	return m, nil
}

// handshake runs a handshake with cred on the suite's channel: payload1
// goes in the first Noise message and credBytes in the third (nil: the
// credential itself). It returns the device's last answer (Success or a
// Failure) and the session, which is only usable after Success.
func (t *T) handshake(cred *credential, payload1, credBytes []byte) (proto.Message, *session, error) {
	h, err := newHandshake(t.cfg.Rand, cred)
	if err != nil {
		return nil, nil, err
	}
	msg1, err := h.start(payload1)
	if err != nil {
		return nil, nil, err
	}
	a, err := t.call(t.cid, &pb.HandshakeInit{Noise: msg1})
	if err != nil {
		return nil, nil, fmt.Errorf("HandshakeInit: %w", err)
	}
	r, ok := a.(*pb.HandshakeResponse)
	if !ok {
		return a, nil, nil
	}
	if err := h.respond(r.GetNoise(), t.features); err != nil {
		return nil, nil, err
	}
	if credBytes == nil {
		credBytes = cred.raw
	}
	msg3, sess, err := h.finish(credBytes)
	if err != nil {
		return nil, nil, err
	}
	a, err = t.call(t.cid, &pb.HandshakeFinish{Noise: msg3})
	if err != nil {
		return nil, nil, fmt.Errorf("HandshakeFinish: %w", err)
	}
	return a, sess, nil
}

// openChannel runs a handshake with cred that must succeed, and keeps the
// session.
func (t *T) openChannel(cred *credential) error {
	a, sess, err := t.handshake(cred, nil, nil)
	if err != nil {
		return err
	}
	if _, err := wantType[*pb.Success]("handshake", a); err != nil {
		return err
	}
	t.sess = sess
	return nil
}

// seal returns m sealed as a SecureMessage envelope's message.
func (t *T) seal(m proto.Message) (*pb.SecureMessage, error) {
	b, err := protocol.EncodeEnvelope(m)
	if err != nil {
		return nil, err
	}
	ct, err := t.sess.seal(b)
	if err != nil {
		return nil, err
	}
	return &pb.SecureMessage{Ciphertext: ct}, nil
}

// openAnswer opens a's SecureMessage; sealed is false for an answer sent
// in plain, which is returned as it is.
func (t *T) openAnswer(a proto.Message) (m proto.Message, sealed bool, err error) {
	sm, ok := a.(*pb.SecureMessage)
	if !ok {
		return a, false, nil
	}
	pt, err := t.sess.open(sm.GetCiphertext())
	if err != nil {
		return nil, true, fmt.Errorf("the device's SecureMessage does not decrypt: %w", err)
	}
	env, err := protocol.DecodeEnvelope(pt)
	if err != nil {
		return nil, true, fmt.Errorf("the device sealed an invalid envelope: %w", err)
	}
	return protocol.Unwrap(env), true, nil
}

// secure sends m through the secure channel and returns the answer,
// which must come through the channel.
func (t *T) secure(m proto.Message) (proto.Message, error) {
	sm, err := t.seal(m)
	if err != nil {
		return nil, err
	}
	a, err := t.call(t.cid, sm)
	if err != nil {
		return nil, err
	}
	return t.inside(a)
}

// sendSecure sends m through the secure channel without waiting for an
// answer, as a ButtonAck is sent.
func (t *T) sendSecure(m proto.Message) error {
	sm, err := t.seal(m)
	if err != nil {
		return err
	}
	return t.sendMsg(t.cid, sm)
}

// refusedInChannel opens a secure channel with the suite's credential,
// sends m through it and checks that it is answered Failure{code}.
func (t *T) refusedInChannel(what string, m proto.Message, code pb.FailureCode) error {
	if err := t.openChannel(t.cred); err != nil {
		return err
	}
	a, err := t.secure(m)
	if err != nil {
		return err
	}
	return wantFailure(what, a, code)
}

// secureAnswer waits up to wait for the next answer, which must come
// through the secure channel.
func (t *T) secureAnswer(wait time.Duration) (proto.Message, error) {
	a, err := t.answer(t.cid, wait)
	if err != nil {
		return nil, err
	}
	return t.inside(a)
}

func (t *T) inside(a proto.Message) (proto.Message, error) {
	m, sealed, err := t.openAnswer(a)
	if err != nil {
		return nil, err
	}
	if !sealed {
		return nil, fmt.Errorf("the device answered %s in plain, want it inside the secure channel", messageText(a))
	}
	return m, nil
}

// pressSecure asks the operator to press button on what, then waits for the
// answer through the secure channel.
func (t *T) pressSecure(what, button string) (proto.Message, error) {
	ctx, cancel := context.WithTimeout(t.ctx, t.cfg.UserTimeout)
	defer cancel()
	if err := t.cfg.Operator.Press(ctx, what, button); err != nil {
		return nil, err
	}
	return t.secureAnswer(t.cfg.UserTimeout)
}

// newPrompt returns a valid transfer prompt for the device, signed by the
// suite's HSM after edit (if any) changed it.
func (t *T) newPrompt(title string, fields int, edit func(*signed.Prompt)) (*signed.Prompt, error) {
	p := &signed.Prompt{
		Kind:      signed.PromptTransaction,
		RequestID: "conformance-" + fmt.Sprint(time.Now().UnixNano()%1_000_000),
		DeviceID:  t.features.GetDeviceId(),
		NotAfter:  t.t0.Add(time.Hour),
		Title:     title,
		Payload:   []byte("conformance"),
	}
	if _, err := io.ReadFull(t.cfg.Rand, p.Nonce[:]); err != nil {
		return nil, err
	}
	p.Fields = append(p.Fields, signed.Field{Label: "Request", Value: p.RequestID})
	for i := 1; i < fields; i++ {
		p.Fields = append(p.Fields, signed.Field{Label: fmt.Sprintf("Line %d", i), Value: "conformance test field"})
	}
	if edit != nil {
		edit(p)
	}
	if err := p.Sign(t.hsm.key); err != nil {
		return nil, err
	}
	return p, nil
}

// checkApproval checks an answer to p: it parses, the device's identity
// key signed it, it names p's digest and nonce, the decision and this
// device, and its counter is above every counter seen before.
func (t *T) checkApproval(a proto.Message, p *signed.Prompt, want signed.Decision) error {
	pa, err := wantType[*pb.PromptAnswer]("the answer", a)
	if err != nil {
		return err
	}
	ap, err := signed.ParseApproval(pa.GetApproval())
	if err != nil {
		return fmt.Errorf("the approval does not parse (approval.md §3.2): %w", err)
	}
	if err := ap.Verify(t.features.GetIdentityAlgorithm(), t.features.GetIdentityPublicKey()); err != nil {
		return fmt.Errorf("the approval's signature does not verify under the device identity key (approval.md §3.1): %w", err)
	}
	switch {
	case string(ap.PromptDigest[:]) != string(p.Digest()):
		return errors.New("the approval names another prompt digest")
	case ap.Nonce != p.Nonce:
		return errors.New("the approval carries another nonce than the prompt's")
	case ap.Decision != want:
		return fmt.Errorf("the approval's decision is %v, want %v", ap.Decision, want)
	case ap.DeviceID != t.features.GetDeviceId():
		return fmt.Errorf("the approval names device %q, want %q", ap.DeviceID, t.features.GetDeviceId())
	case ap.Counter <= t.lastCounter:
		return fmt.Errorf("the approval's counter is %d, not above the last one the device signed (%d): a counter value is used once (device.md §3)", ap.Counter, t.lastCounter)
	}
	t.lastCounter = ap.Counter
	return nil
}
