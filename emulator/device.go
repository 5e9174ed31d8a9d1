package emulator

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

var cryptoRand io.Reader = rand.Reader

// Identification of the emulator in Features and in the INIT response.
const (
	Vendor          = "OpenCustody"
	Model           = "Emulator"
	FirmwareVersion = "0.1.0"
	fwMajor         = 0
	fwMinor         = 1
	fwPatch         = 0
	// AttestationSubject is the subject name of the emulator's device
	// certificate, issued under the development attestation root
	// (firmware-spec/attestation.md §5).
	AttestationSubject = Vendor + " " + Model
)

// MaxChannels is how many channels the device keeps allocated; allocating
// one more forgets the oldest (and aborts its pending operation).
const MaxChannels = 16

// DefaultKeepaliveInterval is how often the device sends a keepalive while
// it waits for the user.
const DefaultKeepaliveInterval = 500 * time.Millisecond

// ErrButtonUnavailable means the pressed button does nothing on the current
// screen.
var ErrButtonUnavailable = errors.New("emulator: button not available on this screen")

// Host is the peer a report came from, as the carriage knows it; the
// device answers a channel through the Host that allocated it.
type Host interface {
	// Send delivers one 64-byte report to the peer. The device calls it
	// with its lock held, in the order reports must go out: Send must not
	// block for long and must not call the Device. Delivery errors are the
	// carriage's to log; the device, like hardware, does not retry.
	Send(report []byte)
}

// Config configures a [Device].
type Config struct {
	// Store is the device's persistent state. Required.
	Store *Store
	// Rand is the source of channel ids (default crypto/rand).
	Rand io.Reader
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives operational logs; screen contents and message
	// payloads are logged only at debug level (default: discard).
	Logger *slog.Logger
	// KeepaliveInterval is how often the device sends a keepalive while it
	// waits for the user (default [DefaultKeepaliveInterval]).
	KeepaliveInterval time.Duration
	// Quirk makes the device break one rule of the specification on
	// purpose, to test the conformance suite; [QuirkNone] for a correct
	// device.
	Quirk Quirk
}

// Rule is an automation rule: when a prompt whose text (see [View].Text)
// matches Pattern is shown, the device acts as if the user pressed Action
// (confirm after paging through every page, or reject). The first matching
// rule wins. Rules exist for tests, through the debug link.
type Rule struct {
	Pattern *regexp.Regexp
	Action  Button
}

// opState is where a pending operation stands.
type opState int

const (
	// opWaitAck: the device sent ButtonRequest and waits for ButtonAck.
	opWaitAck opState = iota
	// opWaitUser: the prompt is on the screen and the device waits for a
	// button.
	opWaitUser
)

// opResult is how an operation ended.
type opResult int

const (
	opConfirmed opResult = iota // the user confirmed
	opRejected                  // the user rejected
	opAbandoned                 // cancelled, or dropped by the protocol
)

// operation is a request waiting for the host's ButtonAck or the user.
type operation struct {
	cid    uint32
	state  opState
	title  string // for logs
	pages  []Page
	page   int
	fields map[string]string // the values the screen shows, for the debug link
	// secure is the channel the request came through, nil for a plain
	// request; answers go back the same way.
	secure  *secureChannel
	confirm proto.Message // the answer when the user confirms
	reject  proto.Message // the answer when the user rejects
	// decide, if set, makes the answer when the user confirms or
	// rejects, instead of confirm and reject.
	decide func(opResult) proto.Message
	// end, if set, learns how the operation ended, before its answer is
	// sent.
	end      func(opResult)
	lastSent time.Time // of the last report on cid, for keepalives
}

// hostChannel is an allocated framing channel.
type hostChannel struct {
	host Host
}

// Device is the emulator's device logic: framing, channels, messages,
// screen and buttons. It does no I/O of its own: reports come in through
// [Device.HandleReport], button presses through [Device.Press], time
// through [Device.Tick], and everything the device sends goes out through
// the [Host] of the channel. [Start] carries it over UDP and
// [Device.ServeReports] over any report stream, such as an in-process pipe.
//
// A Device is safe for concurrent use.
type Device struct {
	store     *Store
	rand      io.Reader
	now       func() time.Time
	log       *slog.Logger
	keepalive time.Duration
	quirk     Quirk
	features  *pb.Features // immutable

	// mu guards everything below. Host.Send is called with mu held so
	// reports leave in decision order. Lock order: mu, then the Store's.
	mu       sync.Mutex
	reasm    framing.Reassembler
	channels map[uint32]*hostChannel
	order    []uint32 // allocation order of channels, oldest first
	qseq     byte     // QuirkIgnoreSequence: the SEQ the reassembler expects
	op       *operation
	sc       *secureChannel // the secure channel, at most one (nil: none)
	rules    []Rule
	view     View
	changed  chan struct{} // closed and replaced when view changes
	logViews bool          // keep every view in viewLog (screen recording)
	viewLog  []View        // views shown since the recorder last took them
}

// New creates a device from cfg and shows its home screen.
func New(cfg Config) (*Device, error) {
	if cfg.Store == nil {
		return nil, errors.New("emulator: Config needs a Store")
	}
	d := &Device{
		store:     cfg.Store,
		rand:      cfg.Rand,
		now:       cfg.Now,
		log:       cfg.Logger,
		keepalive: cfg.KeepaliveInterval,
		quirk:     cfg.Quirk,
		channels:  map[uint32]*hostChannel{},
		changed:   make(chan struct{}),
	}
	if d.rand == nil {
		d.rand = cryptoRand
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.keepalive <= 0 {
		d.keepalive = DefaultKeepaliveInterval
	}
	if d.quirk == QuirkNoPersistence {
		cfg.Store.noPersist = true
	}
	id := cfg.Store.Identity()
	chain, err := signed.DevelopmentAttestation(id.Algorithm, id.PublicKey(), AttestationSubject)
	if err != nil {
		return nil, fmt.Errorf("emulator: attestation: %w", err)
	}
	d.features = &pb.Features{
		Vendor:             Vendor,
		Model:              Model,
		FirmwareVersion:    FirmwareVersion,
		ProtocolVersionMin: protocol.Version,
		ProtocolVersionMax: protocol.Version,
		DeviceId:           id.DeviceID(),
		IdentityAlgorithm:  id.Algorithm,
		IdentityPublicKey:  id.PublicKey(),
		Label:              cfg.Store.Label(),
		Emulator:           true,
		Attestation:        chain,
	}
	d.mu.Lock()
	d.showHome()
	d.mu.Unlock()
	return d, nil
}

// Features returns what the device answers to GetFeatures.
func (d *Device) Features() *pb.Features { return proto.Clone(d.features).(*pb.Features) }

// HandleReport processes one report received from host. Reports that are
// not exactly 64 bytes cannot occur on USB and are dropped.
func (d *Device) HandleReport(host Host, report []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(report) != framing.ReportSize {
		d.log.Debug("device: dropped report of wrong size", "size", len(report))
		return
	}
	// A channel's answers go to whoever last sent a report on it.
	if ch, ok := d.channels[binary.BigEndian.Uint32(report)]; ok {
		ch.host = host
	}
	now := d.now()
	switch d.quirk {
	case QuirkNoTimeout:
		now = time.Time{} // every report arrives at the same instant
	case QuirkIgnoreSequence:
		if cid, ok := d.reasm.InProgress(); ok && report[4]&0x80 == 0 && cid == binary.BigEndian.Uint32(report) {
			report[4] = d.qseq
		}
	}
	msg, err := d.reasm.Push(report, now)
	if d.quirk == QuirkIgnoreSequence {
		if report[4]&0x80 != 0 {
			d.qseq = 0
		} else {
			d.qseq = report[4] + 1
		}
	}
	if err != nil {
		var fe *framing.FrameError
		if !errors.As(err, &fe) {
			fe = &framing.FrameError{Err: err, Code: framing.ErrCodeOther}
		}
		d.log.Debug("device: framing error", "cid", fe.CID, "code", fe.Code, "err", fe.Err)
		to := host
		if ch, ok := d.channels[fe.CID]; ok && errors.Is(fe, framing.ErrTimeout) {
			to = ch.host
		}
		d.sendError(to, fe.CID, fe.Code)
		return
	}
	if msg == nil {
		return
	}
	d.dispatch(host, msg)
}

// Tick lets time pass: it expires a message whose reports stopped coming
// (answering CmdError MSG_TIMEOUT) and sends keepalives while the device
// waits for the user. The carriage calls it periodically, at least as
// often as the keepalive interval.
func (d *Device) Tick() {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	if d.quirk == QuirkNoTimeout {
		// nothing expires
	} else if fe := d.reasm.Expire(now); fe != nil {
		if ch, ok := d.channels[fe.CID]; ok {
			d.sendError(ch.host, fe.CID, fe.Code)
		}
	}
	if op := d.op; op != nil && op.state == opWaitUser && now.Sub(op.lastSent) >= d.keepalive && d.quirk != QuirkNoKeepalive {
		d.sendCmd(op.cid, framing.CmdKeepalive, []byte{byte(framing.KeepaliveUserNeeded)})
	}
}

func (d *Device) dispatch(host Host, msg *framing.Message) {
	if msg.Cmd == framing.CmdInit {
		d.handleInit(host, msg)
		return
	}
	if _, ok := d.channels[msg.CID]; !ok {
		d.log.Debug("device: message on unallocated channel", "cid", msg.CID, "cmd", msg.Cmd)
		d.sendError(host, msg.CID, framing.ErrCodeInvalidChannel)
		return
	}
	switch msg.Cmd {
	case framing.CmdPing:
		d.sendCmd(msg.CID, framing.CmdPing, msg.Data)
	case framing.CmdCancel:
		if d.op != nil && d.op.cid == msg.CID && d.quirk != QuirkIgnoreCancel {
			d.cancelOp(pb.FailureCode_FAILURE_ACTION_CANCELLED, "cancelled by the host")
		}
	case framing.CmdMsg:
		d.handleEnvelope(msg.CID, msg.Data)
	default:
		// CmdKeepalive and CmdError travel from device to host; a device
		// never answers them, so that two peers cannot loop on errors.
	}
}

// sendError sends a CmdError report, unless cid is one that is never
// answered.
func (d *Device) sendError(to Host, cid uint32, code framing.ErrorCode) {
	if d.quirk == QuirkBadErrorCodes {
		code = framing.ErrCodeOther
	}
	if r := framing.ErrorReport(cid, code); r != nil {
		to.Send(r)
	}
}

func (d *Device) handleInit(host Host, msg *framing.Message) {
	q, err := framing.ParseInitRequest(msg.Data)
	if err != nil {
		d.sendError(host, msg.CID, framing.ErrCodeInvalidPar)
		return
	}
	resp := framing.InitResponse{Nonce: q.Nonce, FramingVersion: framing.FramingVersion, Major: fwMajor, Minor: fwMinor, Patch: fwPatch}
	if msg.CID != framing.BroadcastCID {
		// INIT on an allocated channel resynchronises it: whatever was
		// pending there is dropped.
		if _, ok := d.channels[msg.CID]; !ok {
			d.sendError(host, msg.CID, framing.ErrCodeInvalidChannel)
			return
		}
		if d.op != nil && d.op.cid == msg.CID {
			d.abortOp()
		}
		resp.CID = msg.CID
		d.sendCmd(msg.CID, framing.CmdInit, resp.Marshal())
		return
	}
	cid, err := d.newCID()
	if err != nil {
		d.log.Error("device: allocate channel", "err", err)
		d.sendError(host, msg.CID, framing.ErrCodeOther)
		return
	}
	if len(d.order) >= MaxChannels {
		old := d.order[0]
		d.order = d.order[1:]
		delete(d.channels, old)
		if d.op != nil && d.op.cid == old {
			d.abortOp()
		}
	}
	d.channels[cid] = &hostChannel{host: host}
	d.order = append(d.order, cid)
	d.log.Debug("device: channel allocated", "cid", fmt.Sprintf("%08x", cid))
	resp.CID = cid
	reports, _ := framing.Fragment(framing.BroadcastCID, framing.CmdInit, resp.Marshal())
	for _, r := range reports {
		host.Send(r)
	}
}

func (d *Device) newCID() (uint32, error) {
	var b [4]byte
	for range 64 {
		if _, err := io.ReadFull(d.rand, b[:]); err != nil {
			return 0, err
		}
		cid := binary.BigEndian.Uint32(b[:])
		if _, used := d.channels[cid]; cid != framing.ReservedCID && cid != framing.BroadcastCID && !used {
			return cid, nil
		}
	}
	return 0, errors.New("no free channel id")
}

func (d *Device) handleEnvelope(cid uint32, data []byte) {
	env, err := protocol.DecodeEnvelope(data)
	if err != nil {
		d.refuseEnvelope(cid, nil, err)
		return
	}
	m := protocol.Unwrap(env)
	sm, ok := m.(*pb.SecureMessage)
	if !ok {
		d.handleMessage(cid, nil, m)
		return
	}
	if op := d.op; op != nil && op.cid != cid {
		// Another channel's request holds the user. The message is not
		// opened, so the channel's peer learns it was refused.
		d.sendFailure(cid, pb.FailureCode_FAILURE_BUSY, "device is busy with another request")
		return
	}
	sc := d.sc
	if sc == nil || sc.sess == nil {
		if d.op != nil {
			d.abortOp()
		}
		d.sendFailure(cid, pb.FailureCode_FAILURE_CHANNEL, "no secure channel; the core must run a handshake")
		return
	}
	pt, err := sc.sess.Open(sm.GetCiphertext())
	if err != nil {
		d.log.Warn("device: secure message failed authentication; channel closed", "cid", fmt.Sprintf("%08x", cid))
		d.closeChannel()
		d.sendFailure(cid, pb.FailureCode_FAILURE_CHANNEL, "secure message failed authentication; the channel is closed")
		return
	}
	inner, err := protocol.DecodeEnvelope(pt)
	if err != nil {
		d.refuseEnvelope(cid, sc, err)
		return
	}
	d.handleMessage(cid, sc, protocol.Unwrap(inner))
}

// refuseEnvelope answers an envelope that failed to decode (framing.md §7),
// abandoning the request pending on cid.
func (d *Device) refuseEnvelope(cid uint32, sc *secureChannel, err error) {
	code := pb.FailureCode_FAILURE_DATA_ERROR
	text := "malformed envelope"
	switch {
	case errors.Is(err, protocol.ErrUnsupportedVersion):
		code, text = pb.FailureCode_FAILURE_UNSUPPORTED_VERSION, fmt.Sprintf("unsupported protocol version; this device speaks %d", protocol.Version)
	case errors.Is(err, protocol.ErrEmptyEnvelope):
		text = "envelope carries no message this version knows"
	}
	d.log.Debug("device: bad envelope", "cid", cid, "secure", sc != nil, "err", err)
	if d.op != nil && d.op.cid == cid {
		d.abortOp()
	}
	d.answer(cid, sc, &pb.Failure{Code: code, Message: text})
}

// handleMessage acts on one message received on cid, in plain (sc nil) or
// through the secure channel sc; answers go back the same way.
func (d *Device) handleMessage(cid uint32, sc *secureChannel, m proto.Message) {
	if op := d.op; op != nil {
		if op.cid != cid {
			// Another channel has an operation waiting for the user.
			switch m.(type) {
			case *pb.GetFeatures:
				d.answer(cid, sc, d.features)
			case *pb.Cancel:
			default:
				d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_BUSY, Message: "device is busy with another request"})
			}
			return
		}
		switch m := m.(type) {
		case *pb.Cancel:
			d.cancelOp(pb.FailureCode_FAILURE_ACTION_CANCELLED, "cancelled by the host")
			return
		case *pb.ButtonAck:
			if op.state == opWaitAck && op.secure == sc {
				op.state = opWaitUser
				op.lastSent = d.now()
				d.showPrompt()
				d.applyRules()
				return
			}
		case *pb.HandshakeInit:
			if sc == nil {
				// A new handshake discards the channel, and with it
				// the request that waits on this framing channel.
				d.abortOp()
				d.startHandshake(cid, m)
				return
			}
		}
		d.abortOp()
		d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE, Message: fmt.Sprintf("unexpected %s while waiting for the user", messageName(m))})
		return
	}
	if sc != nil && !sc.pinned && !pairingMessage(m) {
		d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_NOT_PAIRED, Message: fmt.Sprintf("%s refused: this channel is for pairing only", messageName(m))})
		return
	}
	switch m := m.(type) {
	case *pb.GetFeatures:
		d.answer(cid, sc, d.features)
	case *pb.Ping:
		if !m.ButtonProtection {
			d.answer(cid, sc, &pb.Success{Message: m.Message})
			return
		}
		pages, err := Layout(Document{Title: "Confirm ping", Body: m.Message})
		if err != nil {
			d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_DATA_ERROR, Message: "ping message cannot be shown: " + strings.TrimPrefix(err.Error(), "emulator: ")})
			return
		}
		d.op = &operation{cid: cid, state: opWaitAck, title: "ping", pages: pages, secure: sc,
			confirm: &pb.Success{Message: m.Message},
			reject:  &pb.Failure{Code: pb.FailureCode_FAILURE_ACTION_REJECTED, Message: "rejected on the device"}}
		d.log.Info("device: waiting for the user", "cid", fmt.Sprintf("%08x", cid), "request", "ping")
		d.answer(cid, sc, &pb.ButtonRequest{Code: pb.ButtonRequestCode_BUTTON_REQUEST_CONFIRM_ACTION})
	case *pb.Cancel:
		// Nothing waits for the user: ignored, but a pairing that
		// waits for PairingFinish ends (the operator rejected).
		if sc != nil && sc.pair != nil {
			d.endPairing(sc, "cancelled by the core")
		}
	case *pb.HandshakeInit:
		if sc != nil {
			d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE, Message: "HandshakeInit inside the channel"})
			return
		}
		d.startHandshake(cid, m)
	case *pb.HandshakeFinish:
		if sc != nil {
			d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE, Message: "HandshakeFinish inside the channel"})
			return
		}
		d.finishHandshake(cid, m)
	case *pb.PromptRequest:
		if sc == nil {
			d.sendFailure(cid, pb.FailureCode_FAILURE_NOT_PAIRED, "PromptRequest is valid only inside the secure channel")
			return
		}
		d.handlePrompt(cid, sc, m)
	case *pb.PairingRequest, *pb.PairingChallenge, *pb.PairingConfirm, *pb.PairingFinish:
		if sc == nil {
			d.sendFailure(cid, pb.FailureCode_FAILURE_NOT_PAIRED, fmt.Sprintf("%s is valid only inside the secure channel", messageName(m)))
			return
		}
		d.handlePairing(cid, sc, m)
	default:
		if sc != nil && sc.pair != nil {
			// A ButtonAck with no ButtonRequest, say: out of order.
			d.endPairing(sc, "message out of order")
		}
		d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE, Message: fmt.Sprintf("unexpected %s", messageName(m))})
	}
}

func messageName(m proto.Message) string {
	return string(m.ProtoReflect().Descriptor().Name())
}

// Press acts on a button press. It returns [ErrButtonUnavailable] if the
// button does nothing on the current screen.
func (d *Device) Press(b Button) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.press(b)
}

func (d *Device) press(b Button) error {
	op := d.op
	if op == nil || op.state != opWaitUser || !hasButton(d.view.Buttons, b) {
		return fmt.Errorf("%w: %s", ErrButtonUnavailable, b)
	}
	switch b {
	case ButtonNext:
		op.page++
		d.showPrompt()
	case ButtonPrev:
		op.page--
		d.showPrompt()
	case ButtonConfirm:
		d.log.Info("device: user confirmed", "cid", fmt.Sprintf("%08x", op.cid), "request", op.title)
		d.finishOp(opConfirmed, op.confirm)
	case ButtonReject:
		d.log.Info("device: user rejected", "cid", fmt.Sprintf("%08x", op.cid), "request", op.title)
		d.finishOp(opRejected, op.reject)
	}
	return nil
}

// finishOp ends the pending operation with result and sends answer on its
// channel, the way its request came.
func (d *Device) finishOp(result opResult, answer proto.Message) {
	op := d.op
	d.op = nil
	if op.end != nil {
		op.end(result)
	}
	if op.decide != nil && result != opAbandoned {
		answer = op.decide(result)
	}
	d.showHome()
	d.answer(op.cid, op.secure, answer)
}

func hasButton(bs []Button, b Button) bool {
	for _, x := range bs {
		if x == b {
			return true
		}
	}
	return false
}

// SetRules replaces the automation rules. They apply to prompts shown from
// now on and to the prompt on the screen.
func (d *Device) SetRules(rules []Rule) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rules = append([]Rule(nil), rules...)
	d.applyRules()
}

// Rules returns the automation rules.
func (d *Device) Rules() []Rule {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Rule(nil), d.rules...)
}

// applyRules acts on the prompt on the screen if a rule matches it.
func (d *Device) applyRules() {
	op := d.op
	if op == nil || op.state != opWaitUser {
		return
	}
	for _, r := range d.rules {
		if !r.Pattern.MatchString(d.view.Text) {
			continue
		}
		d.log.Debug("device: automation rule matched", "pattern", r.Pattern.String(), "action", r.Action)
		if r.Action == ButtonConfirm {
			for op.page < len(op.pages)-1 {
				_ = d.press(ButtonNext)
			}
		}
		_ = d.press(r.Action)
		return
	}
}

// cancelOp ends the pending operation with a Failure to its channel.
func (d *Device) cancelOp(code pb.FailureCode, text string) {
	d.finishOp(opAbandoned, &pb.Failure{Code: code, Message: text})
}

// abortOp drops the pending operation without answering it.
func (d *Device) abortOp() {
	op := d.op
	d.op = nil
	if op.end != nil {
		op.end(opAbandoned)
	}
	d.showHome()
}

func (d *Device) sendFailure(cid uint32, code pb.FailureCode, text string) {
	d.send(cid, &pb.Failure{Code: code, Message: text})
}

// answer sends m on cid: sealed in the secure channel sc, or in plain if
// sc is nil. A channel closed meanwhile swallows the answer: its peer
// must run a new handshake anyway.
func (d *Device) answer(cid uint32, sc *secureChannel, m proto.Message) {
	if sc == nil {
		d.send(cid, m)
		return
	}
	inner, err := protocol.EncodeEnvelope(m)
	if err != nil {
		d.log.Error("device: encode answer", "err", err)
		return
	}
	if sc != d.sc || sc.sess == nil {
		d.log.Debug("device: answer for a closed secure channel dropped", "cid", cid)
		return
	}
	ct, err := sc.sess.Seal(inner)
	if err != nil {
		d.log.Debug("device: seal answer", "err", err)
		return
	}
	d.send(cid, &pb.SecureMessage{Ciphertext: ct})
}

// send encodes m in an envelope and sends it on cid as CmdMsg.
func (d *Device) send(cid uint32, m proto.Message) {
	b, err := protocol.EncodeEnvelope(m)
	if err != nil {
		d.log.Error("device: encode answer", "err", err)
		return
	}
	d.sendCmd(cid, framing.CmdMsg, b)
}

// sendCmd sends data as cmd on cid to the channel's host.
func (d *Device) sendCmd(cid uint32, cmd framing.Command, data []byte) {
	ch, ok := d.channels[cid]
	if !ok {
		return
	}
	reports, err := framing.Fragment(cid, cmd, data)
	if err != nil {
		d.log.Error("device: fragment answer", "err", err)
		return
	}
	for _, r := range reports {
		ch.host.Send(r)
	}
	if d.op != nil && d.op.cid == cid {
		d.op.lastSent = d.now()
	}
}

// View returns what the screen shows now, and a channel that is closed
// when it changes.
func (d *Device) View() (View, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v := d.view
	v.Buttons = append([]Button(nil), v.Buttons...)
	v.Page.Lines = append([]string(nil), v.Page.Lines...)
	return v, d.changed
}

func (d *Device) setView(kind string, pages []Page, page int, buttons []Button, fields map[string]string) {
	d.view = View{Seq: d.view.Seq + 1, Kind: kind, Page: pages[page], Buttons: buttons, Text: documentText(pages), Fields: fields}
	if d.logViews {
		d.viewLog = append(d.viewLog, d.view)
	}
	close(d.changed)
	d.changed = make(chan struct{})
}

// showHome shows the home screen: the label, the device id and, once
// paired, the HSM and the user it is paired for.
func (d *Device) showHome() {
	label := printable(d.store.Label())
	id := d.store.Identity().DeviceID()
	fields := map[string]string{FieldDeviceID: id}
	body := label + "\n\nID " + id + "\nReady"
	if p := d.store.Pin(); p != nil {
		fp, role := p.Fingerprint(), roleName(p.Role)
		body = label + "\nID " + id + "\nPaired with HSM\n" + fp + "\nas " + printable(p.User) + " (" + role + ")"
		fields[FieldHSMFingerprint], fields[FieldUser], fields[FieldRole] = fp, p.User, role
	}
	pages, err := Layout(Document{Title: "OpenCustody", Body: body})
	if err != nil {
		pages, _ = Layout(Document{Title: "OpenCustody"})
	}
	d.setView(KindHome, pages, 0, nil, fields)
}

func (d *Device) showPrompt() {
	op := d.op
	var bs []Button
	if op.page > 0 {
		bs = append(bs, ButtonPrev)
	}
	if op.page < len(op.pages)-1 {
		bs = append(bs, ButtonNext)
	}
	bs = append(bs, ButtonReject)
	if op.page == len(op.pages)-1 || d.quirk == QuirkConfirmAnyPage {
		bs = append(bs, ButtonConfirm)
	}
	d.setView(KindPrompt, op.pages, op.page, bs, op.fields)
}

// printable replaces what the screen cannot show with '?'.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
}

// PowerCycle simulates unplugging the device and plugging it back in: the
// state is read again from its directory (what was not written is lost),
// every channel, the secure channel and a pending request are forgotten
// without an answer, and the home screen is shown. The debug link serves
// it so that a conformance suite can check what the device persists.
func (d *Device) PowerCycle() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, _, err := OpenStore(StoreRequest{Dir: d.store.dir})
	if err != nil {
		return err
	}
	s.noPersist = d.store.noPersist
	d.log.Info("device: power cycle")
	d.store = s
	d.reasm = framing.Reassembler{}
	d.channels = map[uint32]*hostChannel{}
	d.order = nil
	d.op = nil
	if d.sc != nil && d.sc.sess != nil {
		d.sc.sess.Close()
	}
	d.sc = nil
	d.showHome()
	return nil
}
