package emulator

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
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

// FuzzChannelMessages opens a secure channel between a fresh device and a
// core — a pairing session if unpaired, a full channel if paired with the
// core — then lets the fuzzer choose the envelopes the core sends through
// it (sealed, tampered or in plain) and what the user and the relay do
// between them. It checks that the device never panics, that every report
// it sends is well formed, that every SecureMessage it sends opens under
// the core's session in order and carries a valid envelope, that it pins
// the core only after its user confirmed the pairing screen, and that it
// signs a prompt's answer only when its user pressed confirm or reject,
// with a valid signature and a counter that only grows. Seeds are
// pairings and prompts, complete and cut short.
func FuzzChannelMessages(f *testing.F) {
	template, _, err := OpenStore(StoreRequest{Dir: f.TempDir(), Algorithm: AlgEd25519, Rand: SeededRand("fuzz channel")})
	if err != nil {
		f.Fatal(err)
	}
	state, err := os.ReadFile(template.path())
	if err != nil {
		f.Fatal(err)
	}
	hsm := newCoreKey(f, "hsm", issuedAt, expiresAt)

	pack := func(ms ...proto.Message) []byte {
		var b []byte
		for _, m := range ms {
			e := encode(f, m)
			b = binary.BigEndian.AppendUint16(b, uint16(len(e)))
			b = append(b, e...)
		}
		return b
	}
	request := &pb.PairingRequest{User: "alice", Role: pb.PairingRole_PAIRING_ROLE_ADMIN}
	challenge := &pb.PairingChallenge{Challenge: bytes.Repeat([]byte{7}, 32)}
	pairing := []proto.Message{request, challenge, &pb.PairingConfirm{}, &pb.ButtonAck{}, &pb.PairingFinish{}, &pb.GetFeatures{}}
	f.Add(false, pack(pairing...), []byte{0, 0, 0, fuzzConfirm, 0, 0})
	f.Add(false, pack(pairing...), []byte{0, 0, 0, fuzzReject, 0, 0})
	f.Add(false, pack(pairing...), []byte{0, 0, 0, fuzzCancelCmd, 0, 0})
	f.Add(false, pack(pairing...), []byte{0, fuzzTamper, 0, 0, 0, 0})
	f.Add(false, pack(pairing...), []byte{0, 0, fuzzPlain, 0, 0, 0})
	f.Add(false, pack(request, &pb.Cancel{}, challenge, &pb.Ping{Message: "x", ButtonProtection: true}, &pb.ButtonAck{}), []byte{0, 0, 0, 0, fuzzConfirm})
	f.Add(false, pack(&pb.HandshakeInit{Noise: make([]byte, 32)}, request), []byte{fuzzPlain, 0})
	prompt := &signed.Prompt{Kind: signed.PromptTransaction, RequestID: "fuzz", DeviceID: template.Identity().DeviceID(),
		NotAfter: time.Unix(expiresAt, 0), Title: "Approve transfer", Fields: []signed.Field{{Label: "Send", Value: "1 BTC"}, {Label: "To", Value: "sb1q"}}}
	if err := prompt.Sign(hsm.id); err != nil {
		f.Fatal(err)
	}
	promptRequest := &pb.PromptRequest{Prompt: prompt.Marshal()}
	f.Add(true, pack(promptRequest, &pb.ButtonAck{}, promptRequest, &pb.ButtonAck{}, &pb.GetFeatures{}), []byte{0, fuzzConfirm, 0, fuzzReject, 0})
	f.Add(true, pack(promptRequest, &pb.ButtonAck{}, &pb.Cancel{}, promptRequest), []byte{0, fuzzTick, 0, fuzzCancelCmd})
	f.Add(true, pack(promptRequest, &pb.ButtonAck{}, request), []byte{0, fuzzTamper, 0})

	f.Fuzz(func(t *testing.T, paired bool, data, actions []byte) {
		dir := memoryDir(t)
		if err := os.WriteFile(filepath.Join(dir, StateFile), state, 0o600); err != nil {
			t.Fatal(err)
		}
		store, _, err := OpenStore(StoreRequest{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if paired {
			pin := &Pin{Algorithm: hsm.id.Algorithm(), PublicKey: hsm.id.PublicKey(), User: "alice", Role: pb.PairingRole_PAIRING_ROLE_ADMIN}
			if err := store.SetPin(pin, time.Unix(0, 0)); err != nil {
				t.Fatal(err)
			}
		}
		h := &harness{t: t, host: &recorder{}, now: time.Unix(1700000000, 0)}
		if h.d, err = New(Config{Store: store, Rand: SeededRand("fuzz device"), Now: h.clock}); err != nil {
			t.Fatal(err)
		}
		h.allocate()
		c := newTestCore(t, hsm, "fuzz")
		openChannel(t, h, c)

		var sent []proto.Message // what the device sent, opened
		decided := 0             // presses of confirm or reject that acted
		var counter uint64       // of the last signed answer
		id := store.Identity()
		check := func(reports [][]byte) {
			for _, m := range messages(t, reports) {
				if m.Cmd != framing.CmdMsg {
					continue
				}
				env, err := protocol.DecodeEnvelope(m.Data)
				if err != nil {
					t.Fatalf("device sent a bad envelope: %v", err)
				}
				msg := protocol.Unwrap(env)
				if sm, ok := msg.(*pb.SecureMessage); ok {
					pt, err := c.sess.Open(sm.GetCiphertext())
					if err != nil {
						t.Fatalf("device sent a SecureMessage the core cannot open: %v", err)
					}
					inner, err := protocol.DecodeEnvelope(pt)
					if err != nil {
						t.Fatalf("device sealed a bad envelope: %v", err)
					}
					msg = protocol.Unwrap(inner)
				}
				if pa, ok := msg.(*pb.PromptAnswer); ok {
					a, err := signed.ParseApproval(pa.GetApproval())
					if err != nil || a.Verify(id.Algorithm, id.PublicKey()) != nil || a.Counter <= counter || a.DeviceID != id.DeviceID() {
						t.Fatalf("device sent a bad answer %+v (%v)", a, err)
					}
					counter = a.Counter
					decided--
					if decided < 0 {
						t.Fatal("device signed an answer its user did not give")
					}
				}
				sent = append(sent, msg)
			}
		}
		for i := 0; len(data) >= 2; i++ {
			n := min(int(binary.BigEndian.Uint16(data)), len(data)-2, protocol.MaxEnvelopeSize-64)
			inner := data[2 : 2+n]
			data = data[2+n:]
			var a byte
			if i < len(actions) {
				a = actions[i]
			}
			var env []byte
			switch a {
			case fuzzPlain:
				env = inner
			case fuzzTamper:
				ct, _ := c.sess.Seal(inner)
				if len(ct) > 0 {
					ct[len(ct)-1] ^= 1
				}
				env = encode(t, &pb.SecureMessage{Ciphertext: ct})
			default:
				ct, err := c.sess.Seal(inner)
				if err != nil {
					t.Fatal(err)
				}
				env = encode(t, &pb.SecureMessage{Ciphertext: ct})
			}
			reports, err := framing.Fragment(h.cid, framing.CmdMsg, env)
			if err != nil {
				continue
			}
			for _, r := range reports {
				h.d.HandleReport(h.host, r)
			}
			switch a {
			case fuzzConfirm, fuzzReject, fuzzNext, fuzzPrev:
				b := []Button{ButtonConfirm, ButtonReject, ButtonNext, ButtonPrev}[a-fuzzConfirm]
				if h.d.Press(b) == nil && (b == ButtonConfirm || b == ButtonReject) {
					decided++
				}
			case fuzzCancelCmd:
				rs, _ := framing.Fragment(h.cid, framing.CmdCancel, nil)
				h.d.HandleReport(h.host, rs[0])
			case fuzzTick:
				h.advance(time.Second)
				h.d.Tick()
			}
			check(h.host.take())
		}
		if pin := store.Pin(); pin != nil && !paired {
			confirmed := false
			for _, m := range sent {
				if d, ok := m.(*pb.PairingDecision); ok && d.GetConfirmed() {
					confirmed = true
				}
			}
			if !confirmed || !bytes.Equal(pin.PublicKey, hsm.id.PublicKey()) {
				t.Fatalf("device pinned %x without its user confirming the pairing of this core", pin.PublicKey)
			}
		}
		v, _ := h.d.View()
		if v.Page.Index < 0 || v.Page.Index >= v.Page.Count || len(v.Page.Lines) != BodyRows {
			t.Fatalf("bad view %+v", v)
		}
	})
}

// Actions of FuzzChannelMessages, after each envelope.
const (
	fuzzNothing   byte = iota
	fuzzPlain          // send the envelope in plain instead of sealed
	fuzzTamper         // seal it, then flip a bit
	fuzzConfirm        // press confirm after it
	fuzzReject         // press reject
	fuzzNext           // press next
	fuzzPrev           // press prev
	fuzzCancelCmd      // send the CANCEL command after it
	fuzzTick           // let a second pass
)

// memoryDir returns a temporary directory in memory (/dev/shm) where there
// is one, so that the state's fsyncs do not slow fuzzing down; otherwise
// an ordinary one.
func memoryDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/dev/shm", "opencustody-fuzz-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
