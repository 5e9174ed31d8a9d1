package emulator

import (
	"encoding/hex"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
)

// fuzzActions maps an action byte to what happens after a report.
var fuzzActions = []Button{"", "", ButtonConfirm, ButtonReject, ButtonNext, ButtonPrev}

// FuzzDeviceReports feeds arbitrary reports to a fresh device, with button
// presses and clock ticks between them, and checks that the device never
// panics and that everything it sends is well formed: 64-byte reports that
// a host reassembles without error, carrying valid envelopes. Seeds come
// from the device vectors.
func FuzzDeviceReports(f *testing.F) {
	store, _, err := OpenStore(StoreRequest{Dir: f.TempDir(), Rand: SeededRand("fuzz")})
	if err != nil {
		f.Fatal(err)
	}
	newDevice := func(now func() time.Time) *Device {
		d, err := New(Config{Store: store, Rand: SeededRand("fuzz channels"), Now: now})
		if err != nil {
			f.Fatal(err)
		}
		return d
	}
	// The channel the first INIT allocates, to aim the seeds at it.
	probe := &harness{t: f, d: newDevice(time.Now), host: &recorder{}}
	cid := probe.allocate()
	initReq := framing.InitRequest{Nonce: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}}
	initReports, _ := framing.Fragment(framing.BroadcastCID, framing.CmdInit, initReq.Marshal())

	for _, vf := range loadVectors(f) {
		for _, tr := range vf.Transcripts {
			reports := append([]byte(nil), initReports[0]...)
			actions := []byte{0}
			for _, s := range tr.Steps {
				switch {
				case s.Host != nil:
					b, _ := hex.DecodeString(s.Host.Hex)
					rs, _ := framing.Fragment(cid, framing.CmdMsg, b)
					for _, r := range rs {
						reports = append(reports, r...)
						actions = append(actions, 0)
					}
				case s.Command == "cancel":
					rs, _ := framing.Fragment(cid, framing.CmdCancel, nil)
					reports = append(reports, rs[0]...)
					actions = append(actions, 0)
				case s.Press != "":
					for i, b := range fuzzActions {
						if string(b) == s.Press && i >= 2 {
							actions[len(actions)-1] = byte(i)
						}
					}
				}
			}
			f.Add(reports, actions)
		}
	}
	f.Add(make([]byte, 63), []byte{1})
	f.Add(append(initReports[0], 0xff, 0xff, 0xff, 0xff, 0x83, 0x1d, 0xb9), []byte{0, 1})

	f.Fuzz(func(t *testing.T, data, actions []byte) {
		now := time.Unix(1700000000, 0)
		d := newDevice(func() time.Time { return now })
		host := &recorder{}
		for i := 0; len(data) > 0; i++ {
			n := min(len(data), framing.ReportSize)
			d.HandleReport(host, data[:n])
			data = data[n:]
			if i < len(actions) {
				// 0: nothing; 1: let a message in progress expire; 2-5: a
				// button; more: a short tick.
				switch a := actions[i]; {
				case a == 0:
				case a == 1:
					now = now.Add(framing.DefaultTimeout + time.Second)
					d.Tick()
				case int(a) < len(fuzzActions):
					d.Press(fuzzActions[a])
				default:
					now = now.Add(time.Duration(a) * 10 * time.Millisecond)
					d.Tick()
				}
			}
		}
		var r framing.Reassembler
		for _, rep := range host.take() {
			if len(rep) != framing.ReportSize {
				t.Fatalf("device sent a %d-byte report", len(rep))
			}
			m, err := r.Push(rep, now)
			if err != nil {
				t.Fatalf("device sent a report a host refuses: %v (%x)", err, rep)
			}
			if m != nil && m.Cmd == framing.CmdMsg {
				if _, err := protocol.DecodeEnvelope(m.Data); err != nil {
					t.Fatalf("device sent a bad envelope: %v", err)
				}
			}
		}
		v, _ := d.View()
		if v.Page.Index < 0 || v.Page.Index >= v.Page.Count || len(v.Page.Lines) != BodyRows {
			t.Fatalf("bad view %+v", v)
		}
	})
}
