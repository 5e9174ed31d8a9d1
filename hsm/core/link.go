package core

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/channel"
	"github.com/opencustodynet/opencustody/protocol/pairing"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// Event tells the operator-facing side what happened on a link.
type Event interface{ event() }

// ChannelUp: the secure channel is established. Device is nil while the
// channel exists only to pair an unknown device.
type ChannelUp struct{ Device *DeviceRecord }

// ChannelDown: the channel failed or was closed; Err says why.
type ChannelDown struct{ Err error }

// PairingCode: the code the operator must compare with the device's screen.
type PairingCode struct{ Code, HSMFingerprint, DeviceFingerprint string }

// PairingDeviceDecision: the device's user answered the code screen.
type PairingDeviceDecision struct{ Confirmed bool }

// PairingDone: the pairing is stored and the device pinned the HSM key.
type PairingDone struct{ Device *DeviceRecord }

// PairingFailed: the pairing ended without a pairing; Err says why.
type PairingFailed struct{ Err error }

// PairingProposed: outside ceremony mode, both people confirmed the code
// and the device pinned the HSM key, but the pairing is an admin change:
// Device is the record that the admin quorum's approval will store, and
// Change the proposed change, whose prompts the caller delivers. Until it
// is applied, the device gets no channel.
type PairingProposed struct {
	Device *DeviceRecord
	Change *Proposed
}

// PromptShown: the device accepted a prompt and waits for its user.
type PromptShown struct{ RequestID string }

// ApprovalReceived: the device answered a prompt with a signed approval or
// rejection. Nothing in it is verified yet, except that it came through
// the channel of Answer.Device: pass it to [Core.Answer].
type ApprovalReceived struct{ Answer Answer }

// PromptFailed: the device answered a prompt with Failure: it refused the
// prompt, or the core withdrew it (Withdrawn). The prompt's request is
// unchanged; a prompt that was not withdrawn is sent again when the
// channel next comes up.
type PromptFailed struct {
	RequestID string
	Code      pb.FailureCode
	Message   string
	Withdrawn bool
}

func (ChannelUp) event()             {}
func (ChannelDown) event()           {}
func (PairingCode) event()           {}
func (PairingDeviceDecision) event() {}
func (PairingDone) event()           {}
func (PairingFailed) event()         {}
func (PairingProposed) event()       {}
func (PromptShown) event()           {}
func (ApprovalReceived) event()      {}
func (PromptFailed) event()          {}

// Output is what a link call produced: envelopes for the device, in order,
// and events for the operator side.
type Output struct {
	ToDevice [][]byte
	Events   []Event
}

func (o *Output) send(b []byte) { o.ToDevice = append(o.ToDevice, b) }
func (o *Output) emit(e Event)  { o.Events = append(o.Events, e) }
func (o *Output) merge(p *Output) {
	o.ToDevice = append(o.ToDevice, p.ToDevice...)
	o.Events = append(o.Events, p.Events...)
}

// Errors a link reports. Every error from [Link.Handle] also closes the
// channel (fail closed).
var (
	ErrNotCeremony     = errors.New("core: direct pairing is allowed only in ceremony mode (start hsmd with --ceremony at the HSM console)")
	ErrAlreadyPaired   = errors.New("core: device is already paired")
	ErrRevoked         = errors.New("core: device is revoked")
	ErrNotPaired       = errors.New("core: device is not paired")
	ErrUnexpected      = errors.New("core: unexpected message from device")
	ErrPairingRejected = errors.New("core: pairing rejected")
	ErrBusy            = errors.New("core: another operation is in progress on this device")
	ErrNoChannel       = errors.New("core: no secure channel to the paired device")
)

type linkState int

const (
	linkIdle      linkState = iota // no channel
	linkHandshake                  // HandshakeInit sent, waiting for HandshakeResponse
	linkFinishing                  // HandshakeFinish sent, waiting for Success
	linkOpen                       // channel established
)

type pairStep int

const (
	pairAwaitChannel    pairStep = iota // handshake in progress
	pairAwaitCommitment                 // PairingRequest sent
	pairAwaitReveal                     // PairingChallenge sent
	pairAwaitButton                     // code known, PairingConfirm sent
	pairAwaitDecisions                  // ButtonAck sent; waiting for both people
	pairAwaitFinishAck                  // record stored, PairingFinish sent
)

type promptStep int

const (
	promptAwaitButton promptStep = iota // PromptRequest sent
	promptAwaitAnswer                   // ButtonAck sent; the device's user decides
)

// promptRun is the prompt the device has.
type promptRun struct {
	prompt    *signed.Prompt
	step      promptStep
	withdrawn bool // Cancel sent; the device's Failure is expected
}

type pairingRun struct {
	user       string
	role       Role
	step       pairStep
	commitment []byte
	challenge  []byte
	device     *bool // the device user's decision, once known
	operator   *bool // the operator's decision, once known
	// attestation is what the handshake verified, when roots are configured.
	attestation *DeviceAttestation
	record      *DeviceRecord
	// viaAdmins: outside ceremony mode, the pairing becomes an admin
	// change (proposed) instead of a stored record.
	viaAdmins bool
	proposed  *Proposed
}

// Link is the core's end of one device attached through a bridge. Calls on
// one link must not overlap.
type Link struct {
	core    *Core
	claimed *pb.Features

	// ctx is the context of the call in progress: the handshake's accept
	// check runs inside a later Handle call and must use that call's.
	ctx    context.Context
	state  linkState
	hs     *channel.Handshake
	sess   *channel.Session
	device *DeviceRecord // the paired record the device proved, when open
	pair   *pairingRun
	// pairingSession: the channel was opened to pair, so the device has
	// not accepted the core as its pinned HSM in it.
	pairingSession bool

	// The device handles one request at a time: active is the prompt it
	// has, queued the prompts waiting their turn.
	active *promptRun
	queued []*signed.Prompt
}

// Attach starts a link for a device whose plain Features a bridge relayed.
// Nothing in features is trusted until the device proves its identity key.
func (c *Core) Attach(features *pb.Features) *Link {
	return &Link{core: c, claimed: proto.CloneOf(features)}
}

// ClaimedID is the device id the bridge announced.
func (l *Link) ClaimedID() string { return l.claimed.GetDeviceId() }

// Claimed is the Features the bridge relayed, unverified.
func (l *Link) Claimed() *pb.Features { return l.claimed }

// Secure reports whether the channel is up, and to which paired device
// (nil while pairing an unknown device).
func (l *Link) Secure() (up bool, device *DeviceRecord) { return l.state == linkOpen, l.device }

// Open starts the secure channel if the claimed device is paired and not
// revoked; otherwise it does nothing and the device stays unpaired.
func (l *Link) Open(ctx context.Context) (Output, error) {
	l.ctx = ctx
	if l.state != linkIdle {
		return Output{}, nil
	}
	return l.openPaired(ctx)
}

func (l *Link) openPaired(ctx context.Context) (Output, error) {
	rec, err := l.core.cfg.Devices.GetDevice(ctx, l.ClaimedID())
	if errors.Is(err, ErrDeviceNotFound) {
		return Output{}, nil
	}
	if err != nil {
		return Output{}, err
	}
	if rec.State != DevicePaired {
		return Output{}, fmt.Errorf("%w: device %s", ErrRevoked, rec.ID)
	}
	return l.startHandshake(nil)
}

// StartPairing pairs the device with user in role: it opens a channel in
// pairing mode and asks the device to pair. The code arrives as a
// [PairingCode] event.
func (l *Link) StartPairing(ctx context.Context, user string, role Role) (Output, error) {
	l.ctx = ctx
	viaAdmins := false
	if !l.core.Ceremony() {
		if _, err := l.core.Governance(ctx); err != nil {
			return Output{}, fmt.Errorf("%w; outside it, pairing needs an admin quorum (%v)", ErrNotCeremony, err)
		}
		viaAdmins = true
	}
	if user == "" {
		return Output{}, errors.New("core: pairing needs a user name")
	}
	if _, err := ParseRole(string(role)); err != nil {
		return Output{}, err
	}
	if l.pair != nil {
		return Output{}, ErrBusy
	}
	switch rec, err := l.core.cfg.Devices.GetDevice(ctx, l.ClaimedID()); {
	case err == nil && rec.State == DeviceRevoked:
		return Output{}, fmt.Errorf("%w: device %s cannot be paired again; reset it to get a new identity", ErrRevoked, rec.ID)
	case err == nil:
		return Output{}, fmt.Errorf("%w: device %s belongs to %s", ErrAlreadyPaired, rec.ID, rec.User)
	case !errors.Is(err, ErrDeviceNotFound):
		return Output{}, err
	}
	if err := checkUserName("user", user); err != nil {
		return Output{}, err
	}
	run := &pairingRun{user: user, role: role, viaAdmins: viaAdmins}
	if l.state == linkOpen {
		return Output{}, ErrBusy
	}
	l.pair = run
	l.state, l.hs, l.sess = linkIdle, nil, nil
	return l.startHandshake(run)
}

// startHandshake sends HandshakeInit. For a pairing run, the device must
// prove the identity key whose id the bridge announced and, when
// attestation roots are configured, present a chain for that proved key;
// otherwise it must prove the key of its unrevoked pairing record.
func (l *Link) startHandshake(run *pairingRun) (Output, error) {
	accept := func(peer *signed.Credential) error {
		id := signed.DeviceID(peer.IdentityKey)
		rec, err := l.core.cfg.Devices.GetDevice(l.ctx, id)
		if run != nil {
			if id != l.ClaimedID() {
				return fmt.Errorf("device proved identity %s, but %s was selected for pairing", id, l.ClaimedID())
			}
			if err == nil {
				return fmt.Errorf("%w: device %s", ErrAlreadyPaired, id)
			}
			if !errors.Is(err, ErrDeviceNotFound) {
				return err
			}
			return l.checkAttestation(run, id, peer)
		}
		if id != l.ClaimedID() {
			// Another paired device than the one announced: a relay
			// must not get it a channel under a name not its own.
			return fmt.Errorf("device proved identity %s, but was announced as %s", id, l.ClaimedID())
		}
		if err != nil {
			return err
		}
		if rec.State != DevicePaired {
			return fmt.Errorf("%w: device %s", ErrRevoked, id)
		}
		if !bytes.Equal(rec.IdentityKey, peer.IdentityKey) || rec.Algorithm != peer.Algorithm {
			return fmt.Errorf("device %s proved another identity key than the paired one", id)
		}
		l.device = rec
		return nil
	}
	cfg, err := l.core.channelConfig(accept)
	if err != nil {
		return Output{}, err
	}
	hs, err := channel.NewHandshake(cfg)
	if err != nil {
		return Output{}, err
	}
	msg, err := hs.Start()
	if err != nil {
		return Output{}, err
	}
	l.hs, l.state, l.pairingSession = hs, linkHandshake, run != nil
	var out Output
	return out, l.plain(&out, &pb.HandshakeInit{Noise: msg})
}

// checkAttestation verifies the chain the device presented in its
// Features against the identity key it proved (never the key it claimed:
// the chain, like all of Features, came through the bridge) and records
// the result for the pairing record.
func (l *Link) checkAttestation(run *pairingRun, id string, peer *signed.Credential) error {
	roots := l.core.cfg.AttestationRoots
	if len(roots) == 0 {
		return nil
	}
	a, err := signed.VerifyAttestation(l.claimed.GetAttestation(), peer.Algorithm, peer.IdentityKey, roots)
	if err != nil {
		return fmt.Errorf("device %s has no attestation from a trusted root: %w", id, err)
	}
	run.attestation = &DeviceAttestation{
		Root: a.Root.Name, RootFingerprint: a.Root.Fingerprint(), Development: a.Root.IsDevelopment(), Subject: a.Subject,
	}
	return nil
}

// plain encodes an envelope sent outside the channel.
func (l *Link) plain(out *Output, m proto.Message) error {
	b, err := protocol.EncodeEnvelope(m)
	if err != nil {
		return err
	}
	out.send(b)
	return nil
}

// seal encrypts m for the device and wraps it in a SecureMessage.
func (l *Link) seal(out *Output, m proto.Message) error {
	inner, err := protocol.EncodeEnvelope(m)
	if err != nil {
		return err
	}
	ct, err := l.sess.Seal(inner)
	if err != nil {
		return err
	}
	return l.plain(out, &pb.SecureMessage{Ciphertext: ct})
}

// Handle processes one envelope from the device. An error closes the
// channel; the returned output then carries the ChannelDown (and
// PairingFailed) events.
func (l *Link) Handle(ctx context.Context, raw []byte) (Output, error) {
	l.ctx = ctx
	out, err := l.handle(ctx, raw)
	if err != nil {
		var down Output
		l.fail(&down, err)
		return down, fmt.Errorf("core: device %s: %w", l.ClaimedID(), err)
	}
	return out, nil
}

func (l *Link) handle(ctx context.Context, raw []byte) (Output, error) {
	var out Output
	env, err := protocol.DecodeEnvelope(raw)
	if err != nil {
		return out, err
	}
	switch m := protocol.Unwrap(env).(type) {
	case *pb.HandshakeResponse:
		if l.state != linkHandshake {
			return out, fmt.Errorf("%w: HandshakeResponse", ErrUnexpected)
		}
		msg3, sess, err := l.hs.Finish(m.GetNoise())
		if err != nil {
			return out, err
		}
		l.sess, l.state = sess, linkFinishing
		return out, l.plain(&out, &pb.HandshakeFinish{Noise: msg3})
	case *pb.Success:
		if l.state != linkFinishing {
			return out, fmt.Errorf("%w: Success", ErrUnexpected)
		}
		l.state, l.hs = linkOpen, nil
		out.emit(ChannelUp{Device: l.device})
		if l.pair != nil {
			l.pair.step = pairAwaitCommitment
			err := l.seal(&out, &pb.PairingRequest{User: l.pair.user, Role: pairingRole(l.pair.role)})
			return out, err
		}
		return out, nil
	case *pb.Failure:
		return out, fmt.Errorf("device refused: %v: %s", m.GetCode(), m.GetMessage())
	case *pb.SecureMessage:
		if l.state == linkHandshake || l.state == linkFinishing {
			// Sealed under the previous channel before the device saw
			// this handshake (its answer to a Cancel, say): unreadable
			// now, and dropped rather than failing the new channel.
			return out, nil
		}
		if l.state != linkOpen {
			return out, fmt.Errorf("%w: SecureMessage before the channel is open", ErrUnexpected)
		}
		pt, err := l.sess.Open(m.GetCiphertext())
		if err != nil {
			return out, err
		}
		inner, err := protocol.DecodeEnvelope(pt)
		if err != nil {
			return out, err
		}
		return out, l.handleSecure(ctx, &out, protocol.Unwrap(inner))
	default:
		return out, fmt.Errorf("%w: %T", ErrUnexpected, m)
	}
}

func (l *Link) handleSecure(ctx context.Context, out *Output, m proto.Message) error {
	p := l.pair
	switch m := m.(type) {
	case *pb.PairingCommitment:
		if p == nil || p.step != pairAwaitCommitment {
			return fmt.Errorf("%w: PairingCommitment", ErrUnexpected)
		}
		if len(m.GetCommitment()) != 32 {
			return fmt.Errorf("pairing commitment is %d bytes, want 32", len(m.GetCommitment()))
		}
		p.commitment = m.GetCommitment()
		p.challenge = make([]byte, pairing.ChallengeSize)
		if _, err := io.ReadFull(l.core.cfg.Rand, p.challenge); err != nil {
			return err
		}
		p.step = pairAwaitReveal
		return l.seal(out, &pb.PairingChallenge{Challenge: p.challenge})
	case *pb.PairingReveal:
		if p == nil || p.step != pairAwaitReveal {
			return fmt.Errorf("%w: PairingReveal", ErrUnexpected)
		}
		hh := l.sess.HandshakeHash()
		if err := pairing.CheckReveal(hh, p.commitment, m.GetSecret()); err != nil {
			return err
		}
		peer := l.sess.Peer()
		p.step = pairAwaitButton
		out.emit(PairingCode{
			Code:              pairing.Code(hh, m.GetSecret(), p.challenge),
			HSMFingerprint:    l.core.HSMFingerprint(),
			DeviceFingerprint: signed.Fingerprint(peer.Algorithm, peer.IdentityKey),
		})
		return l.seal(out, &pb.PairingConfirm{})
	case *pb.ButtonRequest:
		if p != nil && p.step == pairAwaitButton {
			p.step = pairAwaitDecisions
			return l.seal(out, &pb.ButtonAck{})
		}
		run := l.active
		if p != nil || run == nil || run.step != promptAwaitButton || m.GetCode() != pb.ButtonRequestCode_BUTTON_REQUEST_APPROVAL {
			return fmt.Errorf("%w: ButtonRequest %v", ErrUnexpected, m.GetCode())
		}
		if run.withdrawn {
			// The device asked before it saw the Cancel; it answers
			// the Cancel with Failure. Acknowledging now would make the
			// device answer a second time.
			return nil
		}
		run.step = promptAwaitAnswer
		out.emit(PromptShown{RequestID: run.prompt.RequestID})
		return l.seal(out, &pb.ButtonAck{})
	case *pb.PromptAnswer:
		run := l.active
		if run == nil || run.step != promptAwaitAnswer {
			return fmt.Errorf("%w: PromptAnswer", ErrUnexpected)
		}
		l.active = nil
		out.emit(ApprovalReceived{Answer: Answer{RequestID: run.prompt.RequestID, Device: l.device.ID, Approval: m.GetApproval()}})
		return l.nextPrompt(out)
	case *pb.PairingDecision:
		if p == nil || p.step != pairAwaitDecisions || p.device != nil {
			return fmt.Errorf("%w: PairingDecision", ErrUnexpected)
		}
		c := m.GetConfirmed()
		p.device = &c
		out.emit(PairingDeviceDecision{Confirmed: c})
		return l.maybeFinishPairing(ctx, out)
	case *pb.Success:
		if p == nil || p.step != pairAwaitFinishAck {
			return fmt.Errorf("%w: Success", ErrUnexpected)
		}
		if p.viaAdmins {
			// Not paired until the admins approve: no channel now.
			l.pair = nil
			out.emit(PairingProposed{Device: p.record, Change: p.proposed})
			l.sess.Close()
			l.state, l.sess = linkIdle, nil
			return nil
		}
		l.device, l.pair = p.record, nil
		out.emit(PairingDone{Device: p.record})
		// The device pinned the HSM key only now: open a new channel, in
		// which it accepts the core as its pinned HSM (and so prompts).
		l.sess.Close()
		l.state, l.sess = linkIdle, nil
		o, err := l.openPaired(ctx)
		out.merge(&o)
		return err
	case *pb.Failure:
		if run := l.active; p == nil && run != nil {
			l.active = nil
			out.emit(PromptFailed{RequestID: run.prompt.RequestID, Code: m.GetCode(), Message: m.GetMessage(), Withdrawn: run.withdrawn})
			return l.nextPrompt(out)
		}
		return fmt.Errorf("device refused: %v: %s", m.GetCode(), m.GetMessage())
	default:
		return fmt.Errorf("%w: %T in the channel", ErrUnexpected, m)
	}
}

// OperatorDecision records whether the operator saw the same code on the
// device.
func (l *Link) OperatorDecision(ctx context.Context, confirmed bool) (Output, error) {
	l.ctx = ctx
	p := l.pair
	if p == nil || (p.step != pairAwaitButton && p.step != pairAwaitDecisions) || p.operator != nil {
		return Output{}, errors.New("core: no pairing is waiting for the operator")
	}
	p.operator = &confirmed
	var out Output
	if err := l.maybeFinishPairing(ctx, &out); err != nil {
		var down Output
		l.fail(&down, err)
		out.merge(&down)
		return out, err
	}
	return out, nil
}

// maybeFinishPairing stores the pairing once both people confirmed, and
// fails it as soon as either rejected.
func (l *Link) maybeFinishPairing(ctx context.Context, out *Output) error {
	p := l.pair
	switch {
	case p.device != nil && !*p.device:
		return fmt.Errorf("%w on the device", ErrPairingRejected)
	case p.operator != nil && !*p.operator:
		_ = l.seal(out, &pb.Cancel{})
		return fmt.Errorf("%w by the operator", ErrPairingRejected)
	case p.device == nil || p.operator == nil:
		return nil
	}
	peer := l.sess.Peer()
	rec := &DeviceRecord{
		ID:          signed.DeviceID(peer.IdentityKey),
		Algorithm:   peer.Algorithm,
		IdentityKey: peer.IdentityKey,
		User:        p.user,
		Role:        p.role,
		State:       DevicePaired,
		Model:       l.claimed.GetModel(),
		Emulator:    l.claimed.GetEmulator(),
		Attestation: p.attestation,
		PairedAt:    l.core.cfg.Now().UTC(),
	}
	if p.viaAdmins {
		payload, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		prop, err := l.core.ProposeChange(ctx, ProposeChangeRequest{Kind: ChangePairing, Subject: rec.ID, Payload: payload, Initiator: rec.User})
		if err != nil {
			return fmt.Errorf("propose the pairing to the admins: %w", err)
		}
		p.proposed = prop
	} else if err := l.core.cfg.Devices.CreateDevice(ctx, rec); err != nil {
		return fmt.Errorf("store pairing: %w", err)
	}
	p.record, p.step = rec, pairAwaitFinishAck
	return l.seal(out, &pb.PairingFinish{})
}

// Abort ends a pairing in progress (operator gone, timeout) and closes the
// channel.
func (l *Link) Abort(reason error) Output {
	var out Output
	if l.pair != nil && l.sess != nil && l.state == linkOpen {
		_ = l.seal(&out, &pb.Cancel{})
	}
	l.fail(&out, reason)
	return out
}

func (l *Link) fail(out *Output, err error) {
	if l.pair != nil {
		out.emit(PairingFailed{Err: err})
		l.pair = nil
	}
	if l.state != linkIdle {
		out.emit(ChannelDown{Err: err})
	}
	if l.sess != nil {
		l.sess.Close()
	}
	l.state, l.hs, l.sess, l.device = linkIdle, nil, nil, nil
	l.active, l.queued = nil, nil
}

// SendPrompt queues a prompt for the device, and sends it once the device
// is free (it handles one request at a time); the answer arrives as an
// [ApprovalReceived] event. It needs a channel to the paired device opened
// by [Link.Open] (or after its pairing). A prompt for another device is
// refused; a prompt for a request the link already has queued or in
// progress is ignored, so the caller may deliver a prompt again. A queued
// prompt that expires before its turn is dropped.
func (l *Link) SendPrompt(ctx context.Context, p *signed.Prompt) (Output, error) {
	l.ctx = ctx
	if l.state != linkOpen || l.device == nil || l.pairingSession {
		return Output{}, fmt.Errorf("%w: device %s", ErrNoChannel, l.ClaimedID())
	}
	if p.DeviceID != l.device.ID {
		return Output{}, fmt.Errorf("core: prompt of request %s is for device %s, not %s", p.RequestID, p.DeviceID, l.device.ID)
	}
	same := func(q *signed.Prompt) bool { return q.RequestID == p.RequestID }
	if (l.active != nil && same(l.active.prompt)) || slices.ContainsFunc(l.queued, same) {
		return Output{}, nil
	}
	l.queued = append(l.queued, p)
	var out Output
	if err := l.nextPrompt(&out); err != nil {
		return l.failed(out, err)
	}
	return out, nil
}

// WithdrawPrompt withdraws the prompt of a request: dropped if queued, and
// cancelled on the device if the device has it (the device then answers
// Failure, reported as [PromptFailed] with Withdrawn set). An answer the
// device sent before the cancel arrived is still reported.
func (l *Link) WithdrawPrompt(ctx context.Context, requestID string) (Output, error) {
	l.ctx = ctx
	l.queued = slices.DeleteFunc(l.queued, func(q *signed.Prompt) bool { return q.RequestID == requestID })
	var out Output
	run := l.active
	if run == nil || run.prompt.RequestID != requestID || run.withdrawn || l.state != linkOpen {
		return out, nil
	}
	run.withdrawn = true
	if err := l.seal(&out, &pb.Cancel{}); err != nil {
		return l.failed(out, err)
	}
	return out, nil
}

// nextPrompt sends the next queued prompt if the device is free.
func (l *Link) nextPrompt(out *Output) error {
	now := l.core.cfg.Now()
	for l.active == nil && len(l.queued) > 0 {
		p := l.queued[0]
		l.queued = l.queued[1:]
		if now.After(p.NotAfter) {
			continue
		}
		l.active = &promptRun{prompt: p}
		return l.seal(out, &pb.PromptRequest{Prompt: p.Marshal()})
	}
	return nil
}

// failed closes the channel after err, keeping what out already holds.
func (l *Link) failed(out Output, err error) (Output, error) {
	var down Output
	l.fail(&down, err)
	out.merge(&down)
	return out, fmt.Errorf("core: device %s: %w", l.ClaimedID(), err)
}

func pairingRole(r Role) pb.PairingRole {
	if r == RoleAdmin {
		return pb.PairingRole_PAIRING_ROLE_ADMIN
	}
	return pb.PairingRole_PAIRING_ROLE_APPROVER
}
