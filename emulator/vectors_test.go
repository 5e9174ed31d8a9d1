package emulator

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

var update = flag.Bool("update", false, "rewrite firmware-spec/vectors/device_*.json from the definitions in vectors_test.go")

const vectorDir = "../firmware-spec/vectors"

// The file layout of firmware-spec/vectors/device_*.json; see
// firmware-spec/device.md, "Test vectors".
type vectorFile struct {
	Description string       `json:"description"`
	Conventions []string     `json:"conventions"`
	Version     uint32       `json:"version"`
	Transcripts []transcript `json:"transcripts"`
}

type transcript struct {
	Name    string       `json:"name"`
	Comment string       `json:"comment,omitempty"`
	Device  vectorDevice `json:"device"`
	Steps   []step       `json:"steps"`
}

type vectorDevice struct {
	Seed      string `json:"seed"`
	Algorithm string `json:"algorithm"`
}

type step struct {
	// Exactly one of Host, Command and Press.
	Host    *envelopeHex `json:"host,omitempty"`
	Command string       `json:"command,omitempty"`
	Press   string       `json:"press,omitempty"`
	// Channel is the index of the allocated channel used (default 0).
	Channel int           `json:"channel,omitempty"`
	Device  []envelopeHex `json:"device"`
	Screen  *vectorScreen `json:"screen,omitempty"`
}

type envelopeHex struct {
	Hex     string          `json:"hex"`
	Message json.RawMessage `json:"message,omitempty"`
	// Inner is what a SecureMessage carries, for reading.
	Inner json.RawMessage `json:"inner,omitempty"`
}

type vectorScreen struct {
	Kind    string   `json:"kind"`
	Title   string   `json:"title"`
	Lines   []string `json:"lines"`
	Page    int      `json:"page"`
	Pages   int      `json:"pages"`
	Buttons []Button `json:"buttons"`
}

var conventions = []string{
	"Each transcript starts from a fresh device whose state is created from device.seed and device.algorithm (the emulator's --seed and --algorithm); the host first allocates two channels (0 and 1) with INIT on the broadcast channel.",
	"A step is one of: host, an envelope the host sends as one MSG on channel `channel` (default 0); command: \"cancel\", a CANCEL command on that channel; press, the user pressing a button on the device.",
	"device lists, in order, the envelopes the device sends as MSG in answer to the step (KEEPALIVE reports are not listed). hex is normative; message is the envelope in the proto3 JSON mapping with device.proto field names, for reading only.",
	"screen, when present, is what the device shows after the step: kind (home or prompt), title, the body lines of the current page, page (from 1) of pages, and the buttons that act on it.",
	"In device_channel.json the host is a custody core (firmware-spec/channel.md). Its identity keys are Ed25519 keys whose seed is SHA-256(\"OpenCustody test core \" || name), with name \"hsm\" or \"another hsm\"; its credentials are valid from not_before 1800000000 to not_after 1800086400 unless a step's comment says otherwise. The device is an Ed25519 emulator, so that its credential, and hence every byte it sends, is deterministic; its ephemeral keys and pairing secrets come from the same seeded stream as its keys and channel ids. inner, on a SecureMessage, is the envelope it carries in the same JSON mapping, for reading only. A firmware cannot reproduce these bytes (its keys differ); it can replay the emulator's side with its own keys and compare the messages and screens.",
}

// Definitions of the transcripts. Encodings are produced with
// protocol.EncodeEnvelope except where a step needs a raw encoding.
type defStep struct {
	msg     proto.Message
	raw     []byte
	command string
	press   Button
	channel int
	// core, in channel transcripts, makes the host envelope from the
	// core's state and the device's earlier answers; inner is what a
	// SecureMessage carries.
	core func(g *vectorGen) (host []byte, inner proto.Message)
}

// vectorGen is the core's side while a channel transcript is generated.
type vectorGen struct {
	t        *testing.T
	core     *testCore
	inits    int             // handshakes so far, to vary the core's ephemeral keys
	last     []proto.Message // the device's answers to the previous step
	deviceID string          // the device's id, for prompts
}

// Core steps of channel transcripts.
func coreInit(name string, notBefore, notAfter int64) defStep {
	return defStep{core: func(g *vectorGen) ([]byte, proto.Message) {
		g.inits++
		g.core = newTestCore(g.t, newCoreKey(g.t, name, notBefore, notAfter), fmt.Sprintf("vectors %s %d", name, g.inits))
		return g.core.init(), nil
	}}
}

func coreFinish() defStep {
	return defStep{core: func(g *vectorGen) ([]byte, proto.Message) {
		if len(g.last) != 1 {
			g.t.Fatalf("device answered %v to HandshakeInit", g.last)
		}
		return g.core.finish(g.last[0]), nil
	}}
}

func sealed(m proto.Message) defStep {
	return defStep{core: func(g *vectorGen) ([]byte, proto.Message) { return g.core.seal(m), m }}
}

func sealedFlipped(m proto.Message) defStep {
	return defStep{core: func(g *vectorGen) ([]byte, proto.Message) {
		e, _ := protocol.DecodeEnvelope(g.core.seal(m))
		ct := append([]byte(nil), e.GetSecure().GetCiphertext()...)
		ct[0] ^= 0x80
		return encode(g.t, &pb.SecureMessage{Ciphertext: ct}), m
	}}
}

// sealedPrompt sends a transfer prompt signed by the core's identity key,
// for the device (or for the device id forDevice, if not empty), with a
// nonce of the byte nonce repeated.
func sealedPrompt(requestID string, nonce byte, forDevice string) defStep {
	return defStep{core: func(g *vectorGen) ([]byte, proto.Message) {
		p := &signed.Prompt{Kind: signed.PromptTransaction, RequestID: requestID, DeviceID: g.deviceID,
			NotAfter: time.Unix(expiresAt, 0), Title: "Approve transfer",
			Fields: []signed.Field{
				{Label: "Wallet", Value: "treasury"}, {Label: "Request", Value: requestID}, {Label: "Network", Value: "simnet"},
				{Label: "Send", Value: "1.20000000 BTC (120,000,000 sat)"}, {Label: "To", Value: "sb1qaq3h7f4zkf7rxg4a3q32ruv9999da2dfha5fg6"},
				{Label: "Fee", Value: "0.00010000 BTC (10,000 sat)"}, {Label: "Fee rate", Value: "47.846 sat/vB"},
				{Label: "Expires", Value: "2027-01-16 08:00:00 UTC"},
			},
			Payload: []byte("a transaction summary"),
		}
		if forDevice != "" {
			p.DeviceID = forDevice
		}
		for i := range p.Nonce {
			p.Nonce[i] = nonce
		}
		if err := p.Sign(g.core.key.id); err != nil {
			g.t.Fatal(err)
		}
		m := &pb.PromptRequest{Prompt: p.Marshal()}
		return g.core.seal(m), m
	}}
}

var (
	vecRequest   = &pb.PairingRequest{User: "alice", Role: pb.PairingRole_PAIRING_ROLE_ADMIN}
	vecChallenge = &pb.PairingChallenge{Challenge: bytes.Repeat([]byte{0x33}, 32)}
)

// pairingSteps open a pairing session with the core "hsm" and run the
// pairing up to the pairing screen.
func pairingSteps() []defStep {
	return []defStep{
		coreInit("hsm", issuedAt, expiresAt),
		coreFinish(),
		sealed(vecRequest),
		sealed(vecChallenge),
		sealed(&pb.PairingConfirm{}),
		sealed(&pb.ButtonAck{}),
	}
}

type defTranscript struct {
	name, comment, alg string
	steps              []defStep
}

func rawEnvelope(env *pb.Envelope) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(env)
	if err != nil {
		panic(err)
	}
	return b
}

var longPing = "Approve this ping. It is long on purpose so that it needs two pages on a screen of 21 columns and 6 body rows, which the user reads one after the other."

var vectorDefs = map[string][]defTranscript{
	"device_features.json": {
		{name: "features_p256", alg: AlgP256, comment: "GetFeatures on a device with an ECDSA P-256 identity key.", steps: []defStep{{msg: &pb.GetFeatures{}}}},
		{name: "features_ed25519", alg: AlgEd25519, comment: "GetFeatures on a device with an Ed25519 identity key.", steps: []defStep{{msg: &pb.GetFeatures{}}}},
		{name: "features_secp256k1", alg: AlgSecp256k1, comment: "GetFeatures on a device with an ECDSA secp256k1 identity key.", steps: []defStep{{msg: &pb.GetFeatures{}}}},
	},
	"device_ping.json": {
		{name: "ping", alg: AlgP256, comment: "A Ping without button protection is answered at once.", steps: []defStep{
			{msg: &pb.Ping{Message: "hello"}},
			{msg: &pb.Ping{}},
		}},
		{name: "ping_confirmed", alg: AlgP256, comment: "A protected Ping: ButtonRequest, ButtonAck, the prompt over two pages, confirm on the last page.", steps: []defStep{
			{msg: &pb.Ping{Message: longPing, ButtonProtection: true}},
			{msg: &pb.ButtonAck{}},
			{press: ButtonNext},
			{press: ButtonPrev},
			{press: ButtonNext},
			{press: ButtonConfirm},
		}},
		{name: "ping_rejected", alg: AlgP256, comment: "The user rejects a protected Ping.", steps: []defStep{
			{msg: &pb.Ping{Message: "reject me", ButtonProtection: true}},
			{msg: &pb.ButtonAck{}},
			{press: ButtonReject},
		}},
		{name: "ping_cancelled_before_ack", alg: AlgP256, comment: "The host sends Cancel instead of ButtonAck.", steps: []defStep{
			{msg: &pb.Ping{Message: "cancel me", ButtonProtection: true}},
			{msg: &pb.Cancel{}},
		}},
		{name: "ping_cancelled_on_screen", alg: AlgP256, comment: "The host sends the CANCEL command while the prompt is on the screen.", steps: []defStep{
			{msg: &pb.Ping{Message: "cancel me", ButtonProtection: true}},
			{msg: &pb.ButtonAck{}},
			{command: "cancel"},
		}},
		{name: "busy", alg: AlgP256, comment: "While channel 0 waits for the user, channel 1 gets Features but is refused anything else.", steps: []defStep{
			{msg: &pb.Ping{Message: "wait", ButtonProtection: true}},
			{msg: &pb.ButtonAck{}},
			{msg: &pb.GetFeatures{}, channel: 1},
			{msg: &pb.Ping{Message: "me too"}, channel: 1},
			{msg: &pb.Cancel{}, channel: 1},
			{press: ButtonConfirm},
		}},
		{name: "unexpected_during_prompt", alg: AlgP256, comment: "A message other than ButtonAck or Cancel while an operation waits aborts it.", steps: []defStep{
			{msg: &pb.Ping{Message: "wait", ButtonProtection: true}},
			{msg: &pb.GetFeatures{}},
			{msg: &pb.ButtonAck{}},
		}},
	},
	"device_errors.json": {
		{name: "envelope_errors", alg: AlgP256, comment: "Envelopes the device refuses, and messages it does not expect from a host.", steps: []defStep{
			{raw: rawEnvelope(&pb.Envelope{Version: 2, Msg: &pb.Envelope_GetFeatures{GetFeatures: &pb.GetFeatures{}}})},
			{raw: rawEnvelope(&pb.Envelope{Msg: &pb.Envelope_GetFeatures{GetFeatures: &pb.GetFeatures{}}})},
			{raw: rawEnvelope(&pb.Envelope{Version: 1})},
			{raw: []byte{0x08, 0x01, 0x9a, 0x06, 0x00}},
			{raw: []byte{0x08, 0x01, 0x52}},
			{msg: &pb.ButtonAck{}},
			{msg: &pb.Cancel{}},
			{msg: &pb.Success{Message: "from the host"}},
			{msg: &pb.Failure{Code: pb.FailureCode_FAILURE_PROCESS_ERROR}},
			{msg: &pb.ButtonRequest{}},
			{msg: &pb.Features{}},
			{msg: &pb.Ping{Message: "caf\u00e9", ButtonProtection: true}},
		}},
	},
}

func init() {
	vectorDefs["device_channel.json"] = []defTranscript{
		{name: "handshake_and_pairing", alg: AlgEd25519, comment: "An unpaired device: handshake (a pairing session, which refuses GetFeatures), pairing confirmed on the device, PairingFinish. The pairing session still carries pairing messages only; the next handshake, with the pinned HSM, gives a channel that carries everything.", steps: append(append(
			[]defStep{coreInit("hsm", issuedAt, expiresAt), coreFinish(), sealed(&pb.GetFeatures{})},
			pairingSteps()[2:]...),
			defStep{press: ButtonConfirm},
			sealed(&pb.PairingFinish{}),
			sealed(&pb.Ping{Message: "inside"}),
			coreInit("hsm", issuedAt, expiresAt), coreFinish(),
			sealed(&pb.Ping{Message: "inside"}),
		)},
		{name: "pairing_rejected", alg: AlgEd25519, comment: "The user rejects the pairing screen; PairingFinish is then out of order and nothing is pinned.", steps: append(pairingSteps(),
			defStep{press: ButtonReject},
			sealed(&pb.PairingFinish{}),
		)},
		{name: "pairing_cancelled", alg: AlgEd25519, comment: "The core cancels while the pairing screen is shown (its operator rejected the code).", steps: append(pairingSteps(),
			sealed(&pb.Cancel{}),
		)},
		{name: "pairing_out_of_order", alg: AlgEd25519, comment: "A pairing message out of order ends the pairing; it must start over.", steps: []defStep{
			coreInit("hsm", issuedAt, expiresAt), coreFinish(),
			sealed(vecRequest),
			sealed(&pb.PairingConfirm{}),
			sealed(vecChallenge),
		}},
		{name: "paired_device_refuses_other_cores", alg: AlgEd25519, comment: "Once paired, the device accepts a newer credential of the pinned HSM (valid from 1800864000 to 1800950400), refuses another HSM (whose credential is as new), and refuses the pinned HSM's first credential, which expired (not_after 1800086400) before the newest one it saw was issued (not_before 1800864000).", steps: append(pairingSteps(),
			defStep{press: ButtonConfirm},
			sealed(&pb.PairingFinish{}),
			coreInit("hsm", issuedAt+10*day, issuedAt+11*day), coreFinish(),
			sealed(&pb.GetFeatures{}),
			coreInit("another hsm", issuedAt+10*day, issuedAt+11*day), coreFinish(),
			coreInit("hsm", issuedAt, expiresAt), coreFinish(),
		)},
		{name: "prompts", alg: AlgEd25519, comment: "A paired device: a prompt in the pairing session is refused; in the next channel, a prompt approved on its last page (the counter becomes 1), a prompt rejected (counter 2, signed too), a prompt cancelled by the core, and prompts refused without a ButtonRequest: for another device, and in plain.", steps: append(pairingSteps(),
			defStep{press: ButtonConfirm},
			sealed(&pb.PairingFinish{}),
			sealedPrompt("5f2d0c9a3e71b846", 0x6e, ""),
			coreInit("hsm", issuedAt, expiresAt), coreFinish(),
			sealedPrompt("5f2d0c9a3e71b846", 0x6e, ""),
			sealed(&pb.ButtonAck{}),
			defStep{press: ButtonNext},
			defStep{press: ButtonNext},
			defStep{press: ButtonConfirm},
			sealedPrompt("0c9a3e71b8465f2d", 0x6f, ""),
			sealed(&pb.ButtonAck{}),
			defStep{press: ButtonReject},
			sealedPrompt("71b8465f2d0c9a3e", 0x70, ""),
			sealed(&pb.ButtonAck{}),
			sealed(&pb.Cancel{}),
			sealedPrompt("71b8465f2d0c9a3e", 0x70, "0011223344556677"),
			defStep{msg: &pb.PromptRequest{Prompt: []byte{0, 1, 2}}},
		)},
		{name: "channel_failures", alg: AlgEd25519, comment: "Channel messages in plain, a SecureMessage without a channel, and a SecureMessage whose ciphertext was altered, which closes the channel.", steps: []defStep{
			{msg: vecRequest},
			{msg: &pb.SecureMessage{Ciphertext: make([]byte, 32)}},
			{msg: &pb.HandshakeFinish{Noise: make([]byte, 48)}},
			coreInit("hsm", issuedAt, expiresAt), coreFinish(),
			sealedFlipped(vecRequest),
			sealed(vecRequest),
		}},
	}
	vectorDescriptions["device_channel.json"] = "OpenCustody device vectors, protocol version 1: the secure channel and pairing (firmware-spec/channel.md). See firmware-spec/device.md."
}

var vectorDescriptions = map[string]string{
	"device_features.json": "OpenCustody device vectors, protocol version 1: GetFeatures. See firmware-spec/device.md.",
	"device_ping.json":     "OpenCustody device vectors, protocol version 1: Ping, buttons, Cancel, busy. See firmware-spec/device.md.",
	"device_errors.json":   "OpenCustody device vectors, protocol version 1: refused envelopes and unexpected messages. See firmware-spec/device.md.",
}

// vectorRun drives one fresh device through a transcript's steps.
type vectorRun struct {
	t   *testing.T
	h   *harness
	chs []*harness
}

func newVectorRun(t *testing.T, dev vectorDevice) *vectorRun {
	rnd := SeededRand(dev.Seed)
	s, _, err := OpenStore(StoreRequest{Dir: t.TempDir(), Algorithm: dev.Algorithm, Rand: rnd})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, host: &recorder{}}
	h.d, err = New(Config{Store: s, Rand: rnd, Now: h.clock})
	if err != nil {
		t.Fatal(err)
	}
	r := &vectorRun{t: t, h: h}
	for range 2 {
		c := &harness{t: t, d: h.d, host: h.host}
		c.allocate()
		r.chs = append(r.chs, c)
	}
	return r
}

// do performs one step and returns the envelopes answered and the screen.
func (r *vectorRun) do(host []byte, command string, press Button, channel int) ([][]byte, vectorScreen) {
	c := r.chs[channel]
	var ms []*framing.Message
	switch {
	case host != nil:
		ms = c.send(c.cid, framing.CmdMsg, host)
	case command == "cancel":
		ms = c.send(c.cid, framing.CmdCancel, nil)
	case press != "":
		if err := r.h.d.Press(press); err != nil {
			r.t.Fatalf("press %s: %v", press, err)
		}
		ms = messages(r.t, r.h.host.take())
	default:
		r.t.Fatal("empty step")
	}
	var out [][]byte
	for _, m := range ms {
		if m.Cmd == framing.CmdMsg {
			out = append(out, m.Data)
		}
	}
	v, _ := r.h.d.View()
	return out, vectorScreen{Kind: v.Kind, Title: v.Page.Title, Lines: v.Page.Lines, Page: v.Page.Index + 1, Pages: v.Page.Count, Buttons: append([]Button{}, v.Buttons...)}
}

func envelopeJSON(t *testing.T, b []byte) envelopeHex {
	e := envelopeHex{Hex: hex.EncodeToString(b)}
	var env pb.Envelope
	if proto.Unmarshal(b, &env) == nil {
		j, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(&env)
		if err != nil {
			t.Fatal(err)
		}
		// protojson's spacing is deliberately unstable: normalise it.
		var v any
		json.Unmarshal(j, &v)
		e.Message, _ = json.Marshal(v)
	}
	return e
}

func generateVectors(t *testing.T, file string) vectorFile {
	vf := vectorFile{Description: vectorDescriptions[file], Conventions: conventions, Version: protocol.Version}
	for _, d := range vectorDefs[file] {
		tr := transcript{Name: d.name, Comment: d.comment, Device: vectorDevice{Seed: "opencustody device vectors", Algorithm: d.alg}}
		r := newVectorRun(t, tr.Device)
		g := &vectorGen{t: t, deviceID: r.h.d.store.Identity().DeviceID()}
		for _, s := range d.steps {
			st := step{Channel: s.channel, Command: s.command, Press: string(s.press)}
			host := s.raw
			var inner proto.Message
			if s.msg != nil {
				var err error
				if host, err = protocol.EncodeEnvelope(s.msg); err != nil {
					t.Fatal(err)
				}
			}
			if s.core != nil {
				host, inner = s.core(g)
			}
			if host != nil {
				e := envelopeJSON(t, host)
				if inner != nil {
					e.Inner = envelopeJSON(t, encode(t, inner)).Message
				}
				st.Host = &e
			}
			out, scr := r.do(host, s.command, s.press, s.channel)
			st.Device = []envelopeHex{}
			g.last = nil
			for _, o := range out {
				e := envelopeJSON(t, o)
				env, err := protocol.DecodeEnvelope(o)
				if err != nil {
					t.Fatal(err)
				}
				m := protocol.Unwrap(env)
				if _, ok := m.(*pb.SecureMessage); ok && g.core != nil && g.core.sess != nil {
					e.Inner = envelopeJSON(t, encode(t, g.core.open(m))).Message
				}
				g.last = append(g.last, m)
				st.Device = append(st.Device, e)
			}
			st.Screen = &scr
			tr.Steps = append(tr.Steps, st)
		}
		vf.Transcripts = append(vf.Transcripts, tr)
	}
	return vf
}

func loadVectors(t testing.TB) map[string]vectorFile {
	files, err := filepath.Glob(filepath.Join(vectorDir, "device_*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no device vectors in %s: %v", vectorDir, err)
	}
	out := map[string]vectorFile{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var vf vectorFile
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&vf); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[filepath.Base(f)] = vf
	}
	return out
}

// TestDeviceVectors replays every transcript of
// firmware-spec/vectors/device_*.json against a fresh device and checks
// each answer byte for byte and each screen. With -update it rewrites the
// files from vectorDefs first.
func TestDeviceVectors(t *testing.T) {
	if *update {
		for file := range vectorDefs {
			vf := generateVectors(t, file)
			b, err := json.MarshalIndent(vf, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(vectorDir, file), append(b, '\n'), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	all := loadVectors(t)
	for file := range vectorDefs {
		if _, ok := all[file]; !ok {
			t.Errorf("%s is missing (run go test -run TestDeviceVectors -update)", file)
		}
	}
	for file, vf := range all {
		if vf.Version != protocol.Version {
			t.Errorf("%s: version %d", file, vf.Version)
		}
		for _, tr := range vf.Transcripts {
			t.Run(strings.TrimSuffix(file, ".json")+"/"+tr.Name, func(t *testing.T) {
				r := newVectorRun(t, tr.Device)
				for i, s := range tr.Steps {
					var host []byte
					if s.Host != nil {
						var err error
						if host, err = hex.DecodeString(s.Host.Hex); err != nil {
							t.Fatalf("step %d: host hex: %v", i, err)
						}
					}
					out, scr := r.do(host, s.Command, Button(s.Press), s.Channel)
					var got, want []string
					for _, o := range out {
						got = append(got, hex.EncodeToString(o))
					}
					for _, d := range s.Device {
						want = append(want, d.Hex)
					}
					if !reflect.DeepEqual(got, want) {
						t.Errorf("step %d: device answered %q, vector says %q", i, got, want)
					}
					if s.Screen != nil && !reflect.DeepEqual(scr, *s.Screen) {
						t.Errorf("step %d: screen %+v, vector says %+v", i, scr, *s.Screen)
					}
				}
			})
		}
	}
}
