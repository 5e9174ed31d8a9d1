package framing_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/opencustodynet/opencustody/protocol/framing"
)

// codes is the ErrorCode each sentinel always carries.
var codes = map[error]framing.ErrorCode{
	framing.ErrReportSize:      framing.ErrCodeInvalidLen,
	framing.ErrReservedChannel: framing.ErrCodeInvalidChannel,
	framing.ErrBroadcastMisuse: framing.ErrCodeInvalidChannel,
	framing.ErrUnknownCommand:  framing.ErrCodeInvalidCmd,
	framing.ErrMessageTooLong:  framing.ErrCodeInvalidLen,
	framing.ErrUnexpectedCont:  framing.ErrCodeInvalidSeq,
	framing.ErrWrongChannel:    framing.ErrCodeChannelBusy,
	framing.ErrWrongSequence:   framing.ErrCodeInvalidSeq,
	framing.ErrInterleaved:     framing.ErrCodeInvalidSeq,
	framing.ErrTimeout:         framing.ErrCodeMsgTimeout,
	framing.ErrBadInit:         framing.ErrCodeInvalidPar,
}

// keeps reports whether an error leaves the message in progress alone.
func keeps(err error) bool {
	return errors.Is(err, framing.ErrReportSize) || errors.Is(err, framing.ErrReservedChannel) ||
		errors.Is(err, framing.ErrWrongChannel)
}

// Fuzz input for FuzzReassembler is a series of steps:
//
//	flags (1) | delay ms (2, big endian) | report
//
// where flags bit 0 makes the step a timer check (no report) and bit 1
// makes the report a uint8-length-prefixed byte string instead of exactly
// 64 bytes. An incomplete last step is ignored.
const (
	stepExpire   = 1 << 0
	stepOddSized = 1 << 1
)

type step struct {
	expire bool
	delay  time.Duration
	report []byte
}

func parseSteps(data []byte) []step {
	var steps []step
	s := cryptobyte.String(data)
	for !s.Empty() {
		var flags uint8
		var delay uint16
		var st step
		if !s.ReadUint8(&flags) || !s.ReadUint16(&delay) {
			break
		}
		st.delay = time.Duration(delay) * time.Millisecond
		switch {
		case flags&stepExpire != 0:
			st.expire = true
		case flags&stepOddSized != 0:
			var rep cryptobyte.String
			if !s.ReadUint8LengthPrefixed(&rep) {
				return steps
			}
			st.report = rep
		default:
			if !s.ReadBytes(&st.report, framing.ReportSize) {
				return steps
			}
		}
		steps = append(steps, st)
	}
	return steps
}

func encodeSteps(steps []step) []byte {
	var b cryptobyte.Builder
	for _, st := range steps {
		switch {
		case st.expire:
			b.AddUint8(stepExpire)
			b.AddUint16(uint16(st.delay / time.Millisecond))
		case len(st.report) != framing.ReportSize:
			b.AddUint8(stepOddSized)
			b.AddUint16(uint16(st.delay / time.Millisecond))
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(st.report) })
		default:
			b.AddUint8(0)
			b.AddUint16(uint16(st.delay / time.Millisecond))
			b.AddBytes(st.report)
		}
	}
	return b.BytesOrPanic()
}

func FuzzReassembler(f *testing.F) {
	v := loadFraming(f)
	for _, s := range v.Sequences {
		var steps []step
		prev := int64(0)
		for _, st := range s.Steps {
			steps = append(steps, step{expire: st.Expire, delay: time.Duration(st.AtMS-prev) * time.Millisecond, report: st.Report})
			prev = st.AtMS
		}
		f.Add(encodeSteps(steps))
	}
	for _, m := range v.Messages {
		var steps []step
		for _, r := range m.Reports {
			steps = append(steps, step{delay: time.Millisecond, report: r})
		}
		f.Add(encodeSteps(steps))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r framing.Reassembler
		now := t0
		// lastProgress is when the message in progress last advanced, to
		// tell whether Push will find it expired.
		var lastProgress time.Time
		for i, st := range parseSteps(data) {
			now = now.Add(st.delay)
			cidBefore, busyBefore := r.InProgress()
			expired := busyBefore && now.Sub(lastProgress) > framing.DefaultTimeout
			var m *framing.Message
			var err error
			if st.expire {
				if fe := r.Expire(now); fe != nil {
					err = fe
				}
				if (err != nil) != expired {
					t.Fatalf("step %d: Expire returned %v, model says expired=%v", i, err, expired)
				}
			} else {
				m, err = r.Push(st.report, now)
			}
			cid, busy := r.InProgress()
			if err != nil {
				if m != nil {
					t.Fatalf("step %d: message and error %v together", i, err)
				}
				checkError(t, i, err)
				switch {
				case expired && !st.expire:
					// Push dropped the expired message first; what
					// follows is as if it were idle.
				case keeps(err):
					if busy != busyBefore || cid != cidBefore {
						t.Fatalf("step %d: %v changed the message in progress from %08x/%v to %08x/%v", i, err, cidBefore, busyBefore, cid, busy)
					}
				case busy:
					t.Fatalf("step %d: %v left a message in progress on %08x", i, err, cid)
				}
				if errors.Is(err, framing.ErrTimeout) && (!expired || cidBefore != err.(*framing.FrameError).CID) {
					t.Fatalf("step %d: timeout on %v without an expired message there", i, err)
				}
				continue
			}
			if !st.expire && m == nil {
				if !busy {
					t.Fatalf("step %d: report accepted with no message and none in progress", i)
				}
				lastProgress = now
			}
			if busy && busyBefore && !expired && cid != cidBefore {
				t.Fatalf("step %d: channel in progress changed from %08x to %08x without an error", i, cidBefore, cid)
			}
			if m == nil {
				continue
			}
			if busy {
				t.Fatalf("step %d: message returned with another in progress", i)
			}
			if busyBefore && !expired && m.CID != cidBefore {
				t.Fatalf("step %d: message on %08x completed while %08x was in progress", i, m.CID, cidBefore)
			}
			checkRefragment(t, m)
		}
	})
}

// checkError checks that err is a *FrameError wrapping exactly one
// sentinel, with that sentinel's code.
func checkError(t *testing.T, step int, err error) {
	t.Helper()
	var fe *framing.FrameError
	if !errors.As(err, &fe) {
		t.Fatalf("step %d: %v is not a *FrameError", step, err)
	}
	var matched []error
	for s := range codes {
		if errors.Is(err, s) {
			matched = append(matched, s)
		}
	}
	if len(matched) != 1 {
		t.Fatalf("step %d: %v matches %d sentinels", step, err, len(matched))
	}
	if want := codes[matched[0]]; fe.Code != want {
		t.Fatalf("step %d: %v has code %#02x, want %#02x", step, err, fe.Code, want)
	}
}

// checkRefragment checks a message is valid to send, and that its reports
// reassemble to the same message.
func checkRefragment(t *testing.T, m *framing.Message) {
	t.Helper()
	reports, err := framing.Fragment(m.CID, m.Cmd, m.Data)
	if err != nil {
		t.Fatalf("reassembled message %08x %v (%d bytes) cannot be sent: %v", m.CID, m.Cmd, len(m.Data), err)
	}
	var r framing.Reassembler
	for i, rep := range reports {
		got, err := r.Push(rep, t0)
		if err != nil {
			t.Fatalf("refragmented report %d: %v", i, err)
		}
		if (got != nil) != (i == len(reports)-1) {
			t.Fatalf("refragmented report %d of %d: message %v", i, len(reports), got)
		}
		if got != nil && (got.CID != m.CID || got.Cmd != m.Cmd || !bytes.Equal(got.Data, m.Data)) {
			t.Fatalf("round trip changed the message: %08x %v %x -> %08x %v %x", m.CID, m.Cmd, m.Data, got.CID, got.Cmd, got.Data)
		}
	}
}

func FuzzFragmentRoundTrip(f *testing.F) {
	for _, m := range loadFraming(f).Messages {
		f.Add(uint32(m.CID), byte(m.Cmd), []byte(m.Data))
	}
	f.Add(uint32(0), byte(framing.CmdMsg), []byte{1})
	f.Add(framing.BroadcastCID, byte(framing.CmdPing), []byte{})
	f.Add(uint32(1), byte(0x82), []byte{})
	f.Fuzz(func(t *testing.T, cid uint32, cmd byte, data []byte) {
		reports, err := framing.Fragment(cid, framing.Command(cmd), data)
		valid := len(data) <= framing.MaxMessageSize && cid != framing.ReservedCID && framing.Command(cmd).Known() &&
			(cid != framing.BroadcastCID || framing.Command(cmd) == framing.CmdInit || framing.Command(cmd) == framing.CmdError)
		if (err == nil) != valid {
			t.Fatalf("Fragment(%08x, %#02x, %d bytes): error %v, valid %v", cid, cmd, len(data), err, valid)
		}
		if err != nil {
			if reports != nil {
				t.Fatal("reports returned with an error")
			}
			return
		}
		var header [7]byte
		binary.BigEndian.PutUint32(header[:], cid)
		header[4] = cmd
		binary.BigEndian.PutUint16(header[5:], uint16(len(data)))
		if !bytes.HasPrefix(reports[0], header[:]) {
			t.Fatalf("INIT header %x, want %x", reports[0][:7], header)
		}
		for _, rep := range reports {
			if len(rep) != framing.ReportSize {
				t.Fatalf("report of %d bytes", len(rep))
			}
		}
		checkRefragment(t, &framing.Message{CID: cid, Cmd: framing.Command(cmd), Data: data})
	})
}

func FuzzParseInit(f *testing.F) {
	v := loadFraming(f)
	for _, q := range v.Init.Requests {
		f.Add([]byte(q.Payload))
	}
	for _, p := range v.Init.Responses {
		f.Add([]byte(p.Payload))
	}
	for _, bad := range v.Init.Invalid {
		f.Add([]byte(bad.Payload))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		q, err := framing.ParseInitRequest(data)
		if err != nil {
			if q != (framing.InitRequest{}) || !errors.Is(err, framing.ErrBadInit) {
				t.Fatalf("request: %+v with error %v", q, err)
			}
			checkError(t, 0, err)
		} else if !bytes.Equal(q.Marshal(), data) {
			t.Fatalf("request %x re-encodes to %x", data, q.Marshal())
		}
		p, err := framing.ParseInitResponse(data)
		if err != nil {
			if p != (framing.InitResponse{}) || !errors.Is(err, framing.ErrBadInit) {
				t.Fatalf("response: %+v with error %v", p, err)
			}
			checkError(t, 0, err)
			return
		}
		if !bytes.Equal(p.Marshal(), data) {
			t.Fatalf("response %x re-encodes to %x", data, p.Marshal())
		}
		if p.CID == framing.ReservedCID || p.CID == framing.BroadcastCID {
			t.Fatalf("response allocates channel %08x", p.CID)
		}
	})
}
