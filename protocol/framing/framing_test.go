package framing_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/protocol/framing"
)

var knownCommands = []framing.Command{
	framing.CmdPing, framing.CmdMsg, framing.CmdInit, framing.CmdCancel, framing.CmdKeepalive, framing.CmdError,
}

func TestMaxMessageSize(t *testing.T) {
	if framing.MaxMessageSize != 7609 || framing.InitDataSize != 57 || framing.ContDataSize != 59 {
		t.Fatalf("sizes changed: max %d, init %d, cont %d", framing.MaxMessageSize, framing.InitDataSize, framing.ContDataSize)
	}
}

func TestFragmentReportCount(t *testing.T) {
	for _, c := range []struct{ n, reports int }{
		{0, 1}, {1, 1}, {57, 1}, {58, 2}, {116, 2}, {117, 3}, {175, 3}, {176, 4},
		{framing.MaxMessageSize - 1, 129}, {framing.MaxMessageSize, 129},
	} {
		reports, err := framing.Fragment(1, framing.CmdMsg, make([]byte, c.n))
		if err != nil {
			t.Fatalf("%d bytes: %v", c.n, err)
		}
		if len(reports) != c.reports {
			t.Errorf("%d bytes: %d reports, want %d", c.n, len(reports), c.reports)
		}
		for i, r := range reports {
			if len(r) != framing.ReportSize {
				t.Errorf("%d bytes: report %d is %d bytes", c.n, i, len(r))
			}
			if i > 0 && r[4] != byte(i-1) {
				t.Errorf("%d bytes: report %d has sequence %d", c.n, i, r[4])
			}
		}
	}
}

func TestFragmentRefuses(t *testing.T) {
	for _, c := range []struct {
		cid  uint32
		cmd  framing.Command
		n    int
		want error
	}{
		{1, framing.CmdMsg, framing.MaxMessageSize + 1, framing.ErrMessageTooLong},
		{framing.ReservedCID, framing.CmdMsg, 0, framing.ErrReservedChannel},
		{1, 0x03, 0, framing.ErrUnknownCommand},
		{1, 0x80, 0, framing.ErrUnknownCommand},
		{framing.BroadcastCID, framing.CmdCancel, 0, framing.ErrBroadcastMisuse},
		{framing.BroadcastCID, framing.CmdKeepalive, 1, framing.ErrBroadcastMisuse},
	} {
		if r, err := framing.Fragment(c.cid, c.cmd, make([]byte, c.n)); !errors.Is(err, c.want) || r != nil {
			t.Errorf("Fragment(%08x, %v, %d bytes): %d reports, %v; want %v", c.cid, c.cmd, c.n, len(r), err, c.want)
		}
	}
	for _, cmd := range []framing.Command{framing.CmdInit, framing.CmdError} {
		if _, err := framing.Fragment(framing.BroadcastCID, cmd, []byte{1}); err != nil {
			t.Errorf("%v on the broadcast channel: %v", cmd, err)
		}
	}
}

func TestCommand(t *testing.T) {
	names := map[string]bool{}
	for _, c := range knownCommands {
		if !c.Known() || byte(c)&0x80 == 0 {
			t.Errorf("%v: Known %v, wire value %#02x", c, c.Known(), byte(c))
		}
		if names[c.String()] || strings.HasPrefix(c.String(), "CMD(") {
			t.Errorf("%#02x: name %q", byte(c), c.String())
		}
		names[c.String()] = true
	}
	if framing.Command(0x82).Known() || framing.Command(0x82).String() != "CMD(0x82)" {
		t.Errorf("0x82: Known %v, String %q", framing.Command(0x82).Known(), framing.Command(0x82).String())
	}
}

// TestRoundTrip is the property test: for random messages, Fragment and a
// Reassembler are inverses, also when many messages follow one another on
// one Reassembler.
func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var r framing.Reassembler
	now := t0
	for i := range 2000 {
		n := rng.IntN(framing.MaxMessageSize + 1)
		if i%4 == 0 {
			n = rng.IntN(3 * framing.ContDataSize) // dwell on the boundaries
		}
		data := make([]byte, n)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		cid := rng.Uint32()
		if cid == framing.ReservedCID || cid == framing.BroadcastCID {
			cid = 7
		}
		cmd := knownCommands[rng.IntN(len(knownCommands))]
		reports, err := framing.Fragment(cid, cmd, data)
		if err != nil {
			t.Fatalf("Fragment(%d bytes): %v", n, err)
		}
		for k, rep := range reports {
			now = now.Add(time.Duration(rng.IntN(int(framing.DefaultTimeout/time.Millisecond)+1)) * time.Millisecond)
			m, err := r.Push(rep, now)
			if err != nil {
				t.Fatalf("message %d (%d bytes), report %d: %v", i, n, k, err)
			}
			if k < len(reports)-1 {
				if m != nil {
					t.Fatalf("message %d: complete after report %d of %d", i, k, len(reports))
				}
				continue
			}
			if m == nil {
				t.Fatalf("message %d (%d bytes): not complete after its last report", i, n)
			}
			checkMessage(t, m, cid, cmd, data)
		}
	}
}

func TestMessageDoesNotAliasReports(t *testing.T) {
	for _, n := range []int{10, 200} {
		data := bytes.Repeat([]byte{0xaa}, n)
		reports, _ := framing.Fragment(5, framing.CmdMsg, data)
		var r framing.Reassembler
		var m *framing.Message
		for _, rep := range reports {
			m, _ = r.Push(rep, t0)
		}
		for _, rep := range reports {
			clear(rep)
		}
		if !bytes.Equal(m.Data, data) {
			t.Errorf("%d bytes: message changed with the reports it came from", n)
		}
	}
}

func TestTimeout(t *testing.T) {
	reports, _ := framing.Fragment(9, framing.CmdMsg, make([]byte, 100))
	t.Run("zero means default", func(t *testing.T) {
		var r framing.Reassembler
		r.Push(reports[0], t0)
		if fe := r.Expire(t0.Add(framing.DefaultTimeout)); fe != nil {
			t.Fatalf("expired at exactly the timeout: %v", fe)
		}
		fe := r.Expire(t0.Add(framing.DefaultTimeout + time.Nanosecond))
		if fe == nil || !errors.Is(fe, framing.ErrTimeout) || fe.CID != 9 || fe.Code != framing.ErrCodeMsgTimeout {
			t.Fatalf("Expire after the timeout: %v", fe)
		}
		if fe := r.Expire(t0.Add(time.Hour)); fe != nil {
			t.Fatalf("expired twice: %v", fe)
		}
	})
	t.Run("custom", func(t *testing.T) {
		r := framing.Reassembler{Timeout: 10 * time.Millisecond}
		r.Push(reports[0], t0)
		if _, err := r.Push(reports[1], t0.Add(11*time.Millisecond)); !errors.Is(err, framing.ErrTimeout) {
			t.Fatalf("got %v, want a timeout", err)
		}
	})
	t.Run("clock going backwards", func(t *testing.T) {
		var r framing.Reassembler
		r.Push(reports[0], t0)
		if m, err := r.Push(reports[1], t0.Add(-time.Hour)); err != nil || m == nil {
			t.Fatalf("got %v, %v; want the message", m, err)
		}
	})
	t.Run("idle", func(t *testing.T) {
		var r framing.Reassembler
		if fe := r.Expire(t0); fe != nil {
			t.Fatalf("idle reassembler expired: %v", fe)
		}
	})
}

func TestInProgressIdle(t *testing.T) {
	var r framing.Reassembler
	reports, _ := framing.Fragment(0x11223344, framing.CmdMsg, make([]byte, 60))
	for _, rep := range reports {
		r.Push(rep, t0)
	}
	if cid, ok := r.InProgress(); ok || cid != 0 {
		t.Errorf("after a complete message: InProgress() = %08x, %v", cid, ok)
	}
}

func TestErrorReport(t *testing.T) {
	if r := framing.ErrorReport(framing.ReservedCID, framing.ErrCodeInvalidLen); r != nil {
		t.Errorf("ErrorReport on the reserved channel: %x, want nil", r)
	}
	r := framing.ErrorReport(0xdeadbeef, framing.ErrCodeChannelBusy)
	want := append([]byte{0xde, 0xad, 0xbe, 0xef, 0xbf, 0x00, 0x01, 0x06}, make([]byte, 56)...)
	if !bytes.Equal(r, want) {
		t.Errorf("ErrorReport:\n got %x\nwant %x", r, want)
	}
}

func TestFrameError(t *testing.T) {
	var r framing.Reassembler
	_, err := r.Push(make([]byte, 63), t0)
	var fe *framing.FrameError
	if !errors.As(err, &fe) || !errors.Is(err, framing.ErrReportSize) {
		t.Fatalf("got %v", err)
	}
	if !strings.HasPrefix(err.Error(), "framing: ") || !strings.Contains(err.Error(), "channel 00000000") {
		t.Errorf("error text %q", err.Error())
	}
}

func TestInitResponseRoundTrip(t *testing.T) {
	p := framing.InitResponse{Nonce: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}, CID: 0x01020304,
		FramingVersion: framing.FramingVersion, Major: 4, Minor: 5, Patch: 6}
	b := p.Marshal()
	if len(b) != framing.InitResponseSize {
		t.Fatalf("encoded response is %d bytes, want %d", len(b), framing.InitResponseSize)
	}
	got, err := framing.ParseInitResponse(b)
	if err != nil || got != p {
		t.Fatalf("got %+v, %v; want %+v", got, err, p)
	}
}
