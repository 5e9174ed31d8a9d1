package emulator

import (
	"bytes"
	"errors"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

// recorder is a Host that keeps what the device sends.
type recorder struct {
	mu  sync.Mutex
	out [][]byte
}

func (r *recorder) Send(b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out = append(r.out, append([]byte(nil), b...))
}

func (r *recorder) take() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.out
	r.out = nil
	return out
}

// harness drives a Device at the report level with a fake clock.
type harness struct {
	t    testing.TB
	d    *Device
	host *recorder
	cid  uint32
	mu   sync.Mutex
	now  time.Time
}

func newHarness(t testing.TB, seed string) *harness {
	t.Helper()
	rnd := SeededRand(seed)
	s, _, err := OpenStore(StoreRequest{Dir: t.TempDir(), Rand: rnd})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, host: &recorder{}, now: time.Unix(1700000000, 0)}
	h.d, err = New(Config{Store: s, Rand: rnd, Now: h.clock})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) clock() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.now
}

func (h *harness) advance(d time.Duration) {
	h.mu.Lock()
	h.now = h.now.Add(d)
	h.mu.Unlock()
}

// messages reassembles reports the device sent.
func messages(t testing.TB, reports [][]byte) []*framing.Message {
	t.Helper()
	var r framing.Reassembler
	var out []*framing.Message
	for _, rep := range reports {
		if len(rep) != framing.ReportSize {
			t.Fatalf("device sent a %d-byte report", len(rep))
		}
		m, err := r.Push(rep, time.Unix(0, 0))
		if err != nil {
			t.Fatalf("device sent a malformed report: %v", err)
		}
		if m != nil {
			out = append(out, m)
		}
	}
	if _, busy := r.InProgress(); busy {
		t.Fatal("device sent an incomplete message")
	}
	return out
}

// send fragments data as cmd on cid, feeds the reports to the device and
// returns the messages it answered.
func (h *harness) send(cid uint32, cmd framing.Command, data []byte) []*framing.Message {
	h.t.Helper()
	reports, err := framing.Fragment(cid, cmd, data)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, r := range reports {
		h.d.HandleReport(h.host, r)
	}
	return messages(h.t, h.host.take())
}

func (h *harness) allocate() uint32 {
	h.t.Helper()
	q := framing.InitRequest{Nonce: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}}
	ms := h.send(framing.BroadcastCID, framing.CmdInit, q.Marshal())
	if len(ms) != 1 || ms[0].Cmd != framing.CmdInit || ms[0].CID != framing.BroadcastCID {
		h.t.Fatalf("INIT answer: %+v", ms)
	}
	resp, err := framing.ParseInitResponse(ms[0].Data)
	if err != nil || resp.Nonce != q.Nonce {
		h.t.Fatalf("INIT answer: %+v %v", resp, err)
	}
	h.cid = resp.CID
	return resp.CID
}

// call sends an encoded envelope on the harness's channel and decodes the
// envelopes answered.
func (h *harness) callRaw(env []byte) []proto.Message {
	h.t.Helper()
	var out []proto.Message
	for _, m := range h.send(h.cid, framing.CmdMsg, env) {
		if m.Cmd != framing.CmdMsg || m.CID != h.cid {
			h.t.Fatalf("answer %v on %08x, want MSG on %08x", m.Cmd, m.CID, h.cid)
		}
		e, err := protocol.DecodeEnvelope(m.Data)
		if err != nil {
			h.t.Fatalf("device sent a bad envelope: %v", err)
		}
		out = append(out, protocol.Unwrap(e))
	}
	return out
}

func (h *harness) call(msg proto.Message) []proto.Message {
	h.t.Helper()
	b, err := protocol.EncodeEnvelope(msg)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.callRaw(b)
}

func wantFailure(t *testing.T, got []proto.Message, code pb.FailureCode) {
	t.Helper()
	if len(got) != 1 {
		t.Fatalf("got %d answers %v, want one Failure %v", len(got), got, code)
	}
	f, ok := got[0].(*pb.Failure)
	if !ok || f.Code != code {
		t.Fatalf("got %v, want Failure %v", got[0], code)
	}
}

func wantOne[T proto.Message](t *testing.T, got []proto.Message) T {
	t.Helper()
	var zero T
	if len(got) != 1 {
		t.Fatalf("got %d answers %v, want one %T", len(got), got, zero)
	}
	m, ok := got[0].(T)
	if !ok {
		t.Fatalf("got %v, want %T", got[0], zero)
	}
	return m
}

func TestChannelsAndPing(t *testing.T) {
	h := newHarness(t, "channels")
	a := h.allocate()
	b := h.allocate()
	if a == b || a == framing.BroadcastCID || a == framing.ReservedCID {
		t.Fatalf("channels %08x %08x", a, b)
	}
	ms := h.send(a, framing.CmdPing, []byte("echo me"))
	if len(ms) != 1 || ms[0].Cmd != framing.CmdPing || ms[0].CID != a || string(ms[0].Data) != "echo me" {
		t.Fatalf("CmdPing answer %+v", ms)
	}
	big := bytes.Repeat([]byte{0xa5}, 1000)
	ms = h.send(b, framing.CmdPing, big)
	if len(ms) != 1 || !bytes.Equal(ms[0].Data, big) {
		t.Fatal("long CmdPing not echoed")
	}
	// An unallocated channel is refused.
	ms = h.send(0x01020304, framing.CmdPing, []byte("x"))
	if len(ms) != 1 || ms[0].Cmd != framing.CmdError || ms[0].Data[0] != byte(framing.ErrCodeInvalidChannel) {
		t.Fatalf("unallocated channel: %+v", ms)
	}
	// INIT on an allocated channel keeps it.
	q := framing.InitRequest{Nonce: [8]byte{9}}
	ms = h.send(a, framing.CmdInit, q.Marshal())
	resp, err := framing.ParseInitResponse(ms[0].Data)
	if err != nil || ms[0].CID != a || resp.CID != a || resp.Nonce != q.Nonce {
		t.Fatalf("resync: %+v %v", ms, err)
	}
	// Device-to-host commands are ignored, never answered.
	if ms = h.send(a, framing.CmdKeepalive, []byte{1}); len(ms) != 0 {
		t.Fatalf("host keepalive answered: %+v", ms)
	}
	if ms = h.send(a, framing.CmdError, []byte{1}); len(ms) != 0 {
		t.Fatalf("host error answered: %+v", ms)
	}
	// A bad INIT payload.
	ms = h.send(framing.BroadcastCID, framing.CmdInit, []byte{1, 2, 3})
	if len(ms) != 1 || ms[0].Cmd != framing.CmdError || ms[0].Data[0] != byte(framing.ErrCodeInvalidPar) {
		t.Fatalf("short INIT: %+v", ms)
	}
}

func TestChannelEviction(t *testing.T) {
	h := newHarness(t, "evict")
	first := h.allocate()
	for range MaxChannels {
		h.allocate()
	}
	ms := h.send(first, framing.CmdPing, []byte("x"))
	if len(ms) != 1 || ms[0].Cmd != framing.CmdError {
		t.Fatalf("evicted channel still answers: %+v", ms)
	}
}

func TestFramingErrors(t *testing.T) {
	h := newHarness(t, "framing")
	cid := h.allocate()
	report := func(b ...byte) []byte {
		r := make([]byte, framing.ReportSize)
		copy(r, b)
		return r
	}
	c := []byte{byte(cid >> 24), byte(cid >> 16), byte(cid >> 8), byte(cid)}
	for _, tc := range []struct {
		name   string
		report []byte
		code   framing.ErrorCode
	}{
		{"unknown command", report(append(c, 0x99, 0, 0)...), framing.ErrCodeInvalidCmd},
		{"orphan continuation", report(append(c, 0x00)...), framing.ErrCodeInvalidSeq},
		{"too long", report(append(c, byte(framing.CmdMsg), 0xff, 0xff)...), framing.ErrCodeInvalidLen},
		{"broadcast misuse", report(0xff, 0xff, 0xff, 0xff, byte(framing.CmdMsg), 0, 0), framing.ErrCodeInvalidChannel},
	} {
		h.d.HandleReport(h.host, tc.report)
		out := h.host.take()
		if len(out) != 1 || framing.Command(out[0][4]) != framing.CmdError || out[0][7] != byte(tc.code) {
			t.Errorf("%s: answered %x, want CmdError %02x", tc.name, out, tc.code)
		}
	}
	// Wrong sizes and the reserved channel are never answered.
	h.d.HandleReport(h.host, report(0, 0, 0, 0, byte(framing.CmdPing), 0, 0))
	if out := h.host.take(); len(out) != 0 {
		t.Errorf("reserved channel answered %x", out)
	}
	for _, n := range []int{0, 1, 4, 63, 65, 200} {
		h.d.HandleReport(h.host, make([]byte, n))
		if out := h.host.take(); len(out) != 0 {
			t.Errorf("%d-byte report answered %x", n, out)
		}
	}
	// A message left half-way times out.
	reports, _ := framing.Fragment(cid, framing.CmdPing, make([]byte, 100))
	h.d.HandleReport(h.host, reports[0])
	h.advance(framing.DefaultTimeout + time.Second)
	h.d.Tick()
	out := h.host.take()
	if len(out) != 1 || out[0][7] != byte(framing.ErrCodeMsgTimeout) {
		t.Errorf("timeout answered %x", out)
	}
	// And the device works afterwards.
	wantOne[*pb.Features](t, h.call(&pb.GetFeatures{}))
}

func TestMessages(t *testing.T) {
	h := newHarness(t, "messages")
	h.allocate()
	f := wantOne[*pb.Features](t, h.call(&pb.GetFeatures{}))
	if f.DeviceId != h.d.store.Identity().DeviceID() || !f.Emulator || f.ProtocolVersionMax != protocol.Version || f.IdentityAlgorithm != pb.Algorithm_ALGORITHM_ECDSA_P256 {
		t.Errorf("features %v", f)
	}
	if s := wantOne[*pb.Success](t, h.call(&pb.Ping{Message: "hi"})); s.Message != "hi" {
		t.Errorf("ping answer %q", s.Message)
	}
	// Cancel with nothing pending is ignored.
	if got := h.call(&pb.Cancel{}); len(got) != 0 {
		t.Errorf("idle Cancel answered %v", got)
	}
	wantFailure(t, h.call(&pb.ButtonAck{}), pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)
	wantFailure(t, h.call(&pb.Success{}), pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)
	wantFailure(t, h.call(&pb.Ping{Message: "caf\u00e9", ButtonProtection: true}), pb.FailureCode_FAILURE_DATA_ERROR)

	// Envelope-level errors.
	v2, _ := proto.Marshal(&pb.Envelope{Version: 2, Msg: &pb.Envelope_GetFeatures{GetFeatures: &pb.GetFeatures{}}})
	wantFailure(t, h.callRaw(v2), pb.FailureCode_FAILURE_UNSUPPORTED_VERSION)
	empty, _ := proto.Marshal(&pb.Envelope{Version: protocol.Version})
	wantFailure(t, h.callRaw(empty), pb.FailureCode_FAILURE_DATA_ERROR)
	// Field 99, a message from a future version.
	unknown := append(append([]byte(nil), empty...), 0x9a, 0x06, 0x00)
	wantFailure(t, h.callRaw(unknown), pb.FailureCode_FAILURE_DATA_ERROR)
	wantFailure(t, h.callRaw([]byte{0xff, 0xff, 0xff}), pb.FailureCode_FAILURE_DATA_ERROR)
}

func TestButtonFlow(t *testing.T) {
	h := newHarness(t, "buttons")
	h.allocate()
	long := strings.Repeat("confirm this long ping message ", 10)
	ping := &pb.Ping{Message: long, ButtonProtection: true}

	// Confirm after paging through.
	br := wantOne[*pb.ButtonRequest](t, h.call(ping))
	if br.Code != pb.ButtonRequestCode_BUTTON_REQUEST_CONFIRM_ACTION {
		t.Errorf("button request code %v", br.Code)
	}
	if v, _ := h.d.View(); v.Kind != "prompt" && v.Kind != "home" {
		t.Fatalf("kind %q", v.Kind)
	} else if v.Kind == "prompt" {
		t.Fatal("prompt shown before ButtonAck")
	}
	if err := h.d.Press(ButtonConfirm); !errors.Is(err, ErrButtonUnavailable) {
		t.Errorf("press before ButtonAck: %v", err)
	}
	if got := h.call(&pb.ButtonAck{}); len(got) != 0 {
		t.Fatalf("ButtonAck answered %v", got)
	}
	v, _ := h.d.View()
	if v.Kind != "prompt" || v.Page.Title != "Confirm ping" || v.Page.Count < 2 || hasButton(v.Buttons, ButtonConfirm) {
		t.Fatalf("prompt view %+v", v)
	}
	if err := h.d.Press(ButtonConfirm); !errors.Is(err, ErrButtonUnavailable) {
		t.Errorf("confirm on the first page: %v", err)
	}
	// Keepalives while waiting for the user.
	h.advance(time.Second)
	h.d.Tick()
	ka := messages(t, h.host.take())
	if len(ka) != 1 || ka[0].Cmd != framing.CmdKeepalive || ka[0].Data[0] != byte(framing.KeepaliveUserNeeded) {
		t.Fatalf("keepalive %+v", ka)
	}
	// Another channel is told the device is busy, but gets Features.
	other := &harness{t: t, d: h.d, host: &recorder{}}
	other.allocate()
	wantFailure(t, other.call(&pb.Ping{Message: "x"}), pb.FailureCode_FAILURE_BUSY)
	wantOne[*pb.Features](t, other.call(&pb.GetFeatures{}))
	for range v.Page.Count - 1 {
		if err := h.d.Press(ButtonNext); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.d.Press(ButtonPrev); err != nil {
		t.Fatal(err)
	}
	h.d.Press(ButtonNext)
	if err := h.d.Press(ButtonConfirm); err != nil {
		t.Fatal(err)
	}
	if s := wantOne[*pb.Success](t, messagesToProto(t, h.host.take())); s.Message != long {
		t.Errorf("confirmed ping answered %q", s.Message)
	}
	if v, _ := h.d.View(); v.Kind != "home" {
		t.Errorf("after confirm: %q screen", v.Kind)
	}

	// Reject.
	wantOne[*pb.ButtonRequest](t, h.call(ping))
	h.call(&pb.ButtonAck{})
	if err := h.d.Press(ButtonReject); err != nil {
		t.Fatal(err)
	}
	wantFailure(t, messagesToProto(t, h.host.take()), pb.FailureCode_FAILURE_ACTION_REJECTED)

	// Cancel, by message and by CmdCancel, in both waiting states.
	wantOne[*pb.ButtonRequest](t, h.call(ping))
	wantFailure(t, h.call(&pb.Cancel{}), pb.FailureCode_FAILURE_ACTION_CANCELLED)
	wantOne[*pb.ButtonRequest](t, h.call(ping))
	h.call(&pb.ButtonAck{})
	wantFailure(t, messagesToProto(t, h.send(h.cid, framing.CmdCancel, nil)), pb.FailureCode_FAILURE_ACTION_CANCELLED)
	if v, _ := h.d.View(); v.Kind != "home" {
		t.Errorf("after cancel: %q screen", v.Kind)
	}

	// An unexpected message aborts the operation.
	wantOne[*pb.ButtonRequest](t, h.call(ping))
	wantFailure(t, h.call(&pb.GetFeatures{}), pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)
	wantFailure(t, h.call(&pb.ButtonAck{}), pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)
}

func messagesToProto(t *testing.T, in any) []proto.Message {
	t.Helper()
	var ms []*framing.Message
	switch in := in.(type) {
	case [][]byte:
		ms = messages(t, in)
	case []*framing.Message:
		ms = in
	}
	var out []proto.Message
	for _, m := range ms {
		if m.Cmd != framing.CmdMsg {
			continue
		}
		e, err := protocol.DecodeEnvelope(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, protocol.Unwrap(e))
	}
	return out
}

func TestRules(t *testing.T) {
	h := newHarness(t, "rules")
	h.allocate()
	h.d.SetRules([]Rule{
		{Pattern: regexp.MustCompile(`(?m)^refuse`), Action: ButtonReject},
		{Pattern: regexp.MustCompile(`Confirm ping`), Action: ButtonConfirm},
	})
	long := strings.Repeat("many words on several pages ", 12)
	h.call(&pb.Ping{Message: long, ButtonProtection: true})
	if s := wantOne[*pb.Success](t, h.call(&pb.ButtonAck{})); s.Message != long {
		t.Errorf("auto-confirmed %q", s.Message)
	}
	h.call(&pb.Ping{Message: "refuse me", ButtonProtection: true})
	wantFailure(t, h.call(&pb.ButtonAck{}), pb.FailureCode_FAILURE_ACTION_REJECTED)
	// Rules set while a prompt is shown act on it.
	h.d.SetRules(nil)
	h.call(&pb.Ping{Message: "later", ButtonProtection: true})
	if out := h.call(&pb.ButtonAck{}); len(out) != 0 {
		t.Fatalf("answered with no rules: %v", out)
	}
	h.d.SetRules([]Rule{{Pattern: regexp.MustCompile(`later`), Action: ButtonConfirm}})
	wantOne[*pb.Success](t, messagesToProto(t, h.host.take()))
}
