package framing_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/firmware-spec/vectors"
	"github.com/opencustodynet/opencustody/protocol/framing"
)

// errorIDs maps the stable error ids used in firmware-spec/vectors to the
// package's sentinels.
var errorIDs = map[string]error{
	"report_size":      framing.ErrReportSize,
	"reserved_channel": framing.ErrReservedChannel,
	"broadcast_misuse": framing.ErrBroadcastMisuse,
	"unknown_command":  framing.ErrUnknownCommand,
	"too_long":         framing.ErrMessageTooLong,
	"unexpected_cont":  framing.ErrUnexpectedCont,
	"wrong_channel":    framing.ErrWrongChannel,
	"wrong_sequence":   framing.ErrWrongSequence,
	"interleaved":      framing.ErrInterleaved,
	"timeout":          framing.ErrTimeout,
	"bad_init":         framing.ErrBadInit,
}

// t0 is an arbitrary origin for the vectors' millisecond times.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func at(ms int64) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func loadFraming(tb testing.TB) *vectors.Framing {
	tb.Helper()
	v, err := vectors.LoadFraming()
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

func sentinel(tb testing.TB, id string) error {
	tb.Helper()
	err, ok := errorIDs[id]
	if !ok {
		tb.Fatalf("vector names unknown error id %q", id)
	}
	return err
}

func TestVectorConstants(t *testing.T) {
	v := loadFraming(t)
	if v.ReportSize != framing.ReportSize || v.InitDataSize != framing.InitDataSize ||
		v.ContDataSize != framing.ContDataSize || v.MaxMessageSize != framing.MaxMessageSize {
		t.Errorf("sizes in framing.json (%d, %d, %d, %d) differ from the package's (%d, %d, %d, %d)",
			v.ReportSize, v.InitDataSize, v.ContDataSize, v.MaxMessageSize,
			framing.ReportSize, framing.InitDataSize, framing.ContDataSize, framing.MaxMessageSize)
	}
	if got := time.Duration(v.TimeoutMS) * time.Millisecond; got != framing.DefaultTimeout {
		t.Errorf("timeout_ms is %v, DefaultTimeout is %v", got, framing.DefaultTimeout)
	}
}

func TestVectorMessages(t *testing.T) {
	for _, m := range loadFraming(t).Messages {
		t.Run(m.Name, func(t *testing.T) {
			reports, err := framing.Fragment(uint32(m.CID), framing.Command(m.Cmd), m.Data)
			if err != nil {
				t.Fatalf("Fragment: %v", err)
			}
			if len(reports) != len(m.Reports) {
				t.Fatalf("Fragment gave %d reports, vector has %d", len(reports), len(m.Reports))
			}
			for i := range reports {
				if !bytes.Equal(reports[i], m.Reports[i]) {
					t.Errorf("report %d:\n got %x\nwant %x", i, reports[i], []byte(m.Reports[i]))
				}
			}
			var r framing.Reassembler
			for i, rep := range m.Reports {
				msg, err := r.Push(rep, at(int64(i)))
				if err != nil {
					t.Fatalf("report %d: %v", i, err)
				}
				last := i == len(m.Reports)-1
				if (msg != nil) != last {
					t.Fatalf("report %d: message %v, want one only after the last report", i, msg)
				}
				if last {
					checkMessage(t, msg, uint32(m.CID), framing.Command(m.Cmd), m.Data)
				}
				if _, busy := r.InProgress(); busy == last {
					t.Errorf("report %d: InProgress %v", i, busy)
				}
			}
		})
	}
}

func checkMessage(t *testing.T, got *framing.Message, cid uint32, cmd framing.Command, data []byte) {
	t.Helper()
	if got.CID != cid || got.Cmd != cmd || !bytes.Equal(got.Data, data) {
		t.Errorf("message: got %08x %v %d bytes %x, want %08x %v %d bytes %x",
			got.CID, got.Cmd, len(got.Data), got.Data, cid, cmd, len(data), data)
	}
}

func TestVectorUnsendable(t *testing.T) {
	for _, u := range loadFraming(t).Unsendable {
		t.Run(u.Name, func(t *testing.T) {
			reports, err := framing.Fragment(uint32(u.CID), framing.Command(u.Cmd), u.Data)
			if want := sentinel(t, u.Error); !errors.Is(err, want) {
				t.Fatalf("Fragment: got %v, want %v", err, want)
			}
			if reports != nil {
				t.Errorf("Fragment returned reports with its error")
			}
		})
	}
}

func TestVectorInit(t *testing.T) {
	v := loadFraming(t)
	for _, q := range v.Init.Requests {
		t.Run(q.Name, func(t *testing.T) {
			var req framing.InitRequest
			copy(req.Nonce[:], q.Nonce)
			if got := req.Marshal(); !bytes.Equal(got, q.Payload) {
				t.Errorf("Marshal: got %x, want %x", got, []byte(q.Payload))
			}
			got, err := framing.ParseInitRequest(q.Payload)
			if err != nil || got != req {
				t.Errorf("ParseInitRequest: got %+v, %v; want %+v", got, err, req)
			}
			data := reassemble(t, q.Reports, framing.BroadcastCID, framing.CmdInit)
			if !bytes.Equal(data, q.Payload) {
				t.Errorf("reports carry %x, want %x", data, []byte(q.Payload))
			}
			checkFragment(t, framing.BroadcastCID, framing.CmdInit, q.Payload, q.Reports)
		})
	}
	for _, p := range v.Init.Responses {
		t.Run(p.Name, func(t *testing.T) {
			resp := framing.InitResponse{CID: uint32(p.CID), FramingVersion: p.FramingVersion,
				Major: p.Major, Minor: p.Minor, Patch: p.Patch, Capabilities: p.Capabilities}
			copy(resp.Nonce[:], p.Nonce)
			if got := resp.Marshal(); !bytes.Equal(got, p.Payload) {
				t.Errorf("Marshal: got %x, want %x", got, []byte(p.Payload))
			}
			got, err := framing.ParseInitResponse(p.Payload)
			if err != nil || got != resp {
				t.Errorf("ParseInitResponse: got %+v, %v; want %+v", got, err, resp)
			}
			data := reassemble(t, p.Reports, framing.BroadcastCID, framing.CmdInit)
			if !bytes.Equal(data, p.Payload) {
				t.Errorf("reports carry %x, want %x", data, []byte(p.Payload))
			}
			checkFragment(t, framing.BroadcastCID, framing.CmdInit, p.Payload, p.Reports)
		})
	}
	for _, bad := range v.Init.Invalid {
		t.Run(bad.Name, func(t *testing.T) {
			var err error
			switch bad.Kind {
			case "request":
				var q framing.InitRequest
				q, err = framing.ParseInitRequest(bad.Payload)
				if q != (framing.InitRequest{}) {
					t.Errorf("non-zero request %+v with the error", q)
				}
			case "response":
				var p framing.InitResponse
				p, err = framing.ParseInitResponse(bad.Payload)
				if p != (framing.InitResponse{}) {
					t.Errorf("non-zero response %+v with the error", p)
				}
			default:
				t.Fatalf("unknown kind %q", bad.Kind)
			}
			checkFrameError(t, err, sentinel(t, bad.Error), framing.BroadcastCID, framing.ErrorCode(bad.Code))
		})
	}
}

func checkFragment(t *testing.T, cid uint32, cmd framing.Command, data []byte, want []vectors.Hex) {
	t.Helper()
	got, err := framing.Fragment(cid, cmd, data)
	if err != nil {
		t.Fatalf("Fragment: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("Fragment: %d reports, want %d", len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("Fragment report %d:\n got %x\nwant %x", i, got[i], []byte(want[i]))
		}
	}
}

// reassemble pushes reports into a fresh Reassembler and returns the data
// of the one message they carry.
func reassemble(t *testing.T, reports []vectors.Hex, cid uint32, cmd framing.Command) []byte {
	t.Helper()
	var r framing.Reassembler
	for i, rep := range reports {
		m, err := r.Push(rep, t0)
		if err != nil {
			t.Fatalf("report %d: %v", i, err)
		}
		if m != nil {
			if i != len(reports)-1 {
				t.Fatalf("message complete after report %d of %d", i, len(reports))
			}
			if m.CID != cid || m.Cmd != cmd {
				t.Fatalf("message on %08x %v, want %08x %v", m.CID, m.Cmd, cid, cmd)
			}
			return m.Data
		}
	}
	t.Fatal("reports did not complete a message")
	return nil
}

func checkFrameError(t *testing.T, err, want error, cid uint32, code framing.ErrorCode) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
	var fe *framing.FrameError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v is not a *FrameError", err)
	}
	if fe.CID != cid || fe.Code != code {
		t.Errorf("FrameError on %08x code %#02x, want %08x code %#02x", fe.CID, fe.Code, cid, code)
	}
}

func TestVectorErrorReports(t *testing.T) {
	for _, e := range loadFraming(t).ErrorReports {
		got := framing.ErrorReport(uint32(e.CID), framing.ErrorCode(e.Code))
		if !bytes.Equal(got, e.Report) {
			t.Errorf("ErrorReport(%08x, %02x):\n got %x\nwant %x", uint32(e.CID), byte(e.Code), got, []byte(e.Report))
		}
		var r framing.Reassembler
		m, err := r.Push(e.Report, t0)
		if err != nil {
			t.Errorf("ErrorReport(%08x, %02x) does not reassemble: %v", uint32(e.CID), byte(e.Code), err)
			continue
		}
		checkMessage(t, m, uint32(e.CID), framing.CmdError, []byte{byte(e.Code)})
	}
}

func TestVectorSequences(t *testing.T) {
	v := loadFraming(t)
	for _, s := range v.Sequences {
		t.Run(s.Name, func(t *testing.T) {
			r := framing.Reassembler{Timeout: time.Duration(v.TimeoutMS) * time.Millisecond}
			for i, st := range s.Steps {
				var msg *framing.Message
				var err error
				if st.Expire {
					if fe := r.Expire(at(st.AtMS)); fe != nil {
						err = fe
					}
				} else {
					msg, err = r.Push(st.Report, at(st.AtMS))
				}
				switch st.Result {
				case vectors.ResultNone:
					if msg != nil || err != nil {
						t.Fatalf("step %d: got message %v, error %v; want neither", i, msg, err)
					}
				case vectors.ResultMessage:
					if err != nil || msg == nil {
						t.Fatalf("step %d: got message %v, error %v; want a message", i, msg, err)
					}
					checkMessage(t, msg, uint32(st.Message.CID), framing.Command(st.Message.Cmd), st.Message.Data)
				case vectors.ResultError:
					if msg != nil {
						t.Fatalf("step %d: message %v returned with an error", i, msg)
					}
					checkFrameError(t, err, sentinel(t, st.Error), uint32(st.ErrorCID), framing.ErrorCode(st.Code))
				default:
					t.Fatalf("step %d: unknown result %q", i, st.Result)
				}
				cid, busy := r.InProgress()
				if busy != st.InProgress.Valid || cid != st.InProgress.CID {
					t.Fatalf("step %d: InProgress() = %08x, %v; want %08x, %v", i, cid, busy, st.InProgress.CID, st.InProgress.Valid)
				}
			}
		})
	}
}

// TestVectorCoverage checks that every error id has at least one vector,
// so that firmware authors have an example of each rule.
func TestVectorCoverage(t *testing.T) {
	v := loadFraming(t)
	seen := map[string]bool{}
	for _, s := range v.Sequences {
		for _, st := range s.Steps {
			seen[st.Error] = true
		}
	}
	for _, bad := range v.Init.Invalid {
		seen[bad.Error] = true
	}
	for id := range errorIDs {
		if !seen[id] {
			t.Errorf("no vector expects error %q", id)
		}
	}
}
