package emulator

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// newPrompt makes a transfer prompt for device id, signed by hsm.
func newPrompt(t *testing.T, hsm *coreKey, id, requestID string, fields int) *signed.Prompt {
	t.Helper()
	p := &signed.Prompt{Kind: signed.PromptTransaction, RequestID: requestID, DeviceID: id,
		NotAfter: time.Unix(expiresAt, 0), Title: "Approve transfer", Payload: []byte("summary")}
	rand.Read(p.Nonce[:])
	for i := range fields {
		p.Fields = append(p.Fields, signed.Field{Label: "Send", Value: strings.Repeat("0.1", i+1) + " BTC"})
	}
	if err := p.Sign(hsm.id); err != nil {
		t.Fatal(err)
	}
	return p
}

// pairedDevice is a device paired with hsm and a full channel to it.
func pairedDevice(t *testing.T, seed string, hsm *coreKey) (*harness, *testCore) {
	t.Helper()
	h, _ := newChannelHarness(t, seed)
	pair(t, h, newTestCore(t, hsm, seed+" pairing"))
	c := newTestCore(t, hsm, seed)
	openChannel(t, h, c)
	return h, c
}

// answer opens a PromptAnswer and checks its signature by the device.
func answerOf(t *testing.T, h *harness, ms []proto.Message) *signed.Approval {
	t.Helper()
	pa := wantOne[*pb.PromptAnswer](t, ms)
	a, err := signed.ParseApproval(pa.GetApproval())
	if err != nil {
		t.Fatal(err)
	}
	id := h.d.store.Identity()
	if err := a.Verify(id.Algorithm, id.PublicKey()); err != nil {
		t.Fatal(err)
	}
	return a
}

func TestPromptApprovedAndRejected(t *testing.T) {
	hsm := newCoreKey(t, "hsm", issuedAt, expiresAt)
	h, c := pairedDevice(t, "prompt", hsm)
	id := h.d.store.Identity().DeviceID()

	p := newPrompt(t, hsm, id, "req-1", 12)
	br := wantOne[*pb.ButtonRequest](t, c.call(h, &pb.PromptRequest{Prompt: p.Marshal()}))
	if br.GetCode() != pb.ButtonRequestCode_BUTTON_REQUEST_APPROVAL {
		t.Fatalf("button request %v", br.GetCode())
	}
	if got := c.call(h, &pb.ButtonAck{}); len(got) != 0 {
		t.Fatalf("ButtonAck answered %v", got)
	}
	v, _ := h.d.View()
	want, _ := Layout(PromptDocument(p))
	if v.Kind != KindPrompt || v.Page.Title != "Approve transfer" || v.Text != documentText(want) || v.Fields[FieldRequestID] != "req-1" {
		t.Fatalf("prompt screen %+v", v)
	}
	if len(want) < 2 {
		t.Fatal("the test prompt should need two pages")
	}
	// Confirm only on the last page.
	if err := h.d.Press(ButtonConfirm); err == nil {
		t.Fatal("confirmed on the first page")
	}
	for range len(want) - 1 {
		if err := h.d.Press(ButtonNext); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.d.Press(ButtonConfirm); err != nil {
		t.Fatal(err)
	}
	a := answerOf(t, h, c.openAll(messagesToProto(t, h.host.take())))
	if a.Decision != signed.Approve || a.Counter != 1 || a.DeviceID != id || a.Nonce != p.Nonce || !bytes.Equal(a.PromptDigest[:], p.Digest()) {
		t.Fatalf("approval %+v", a)
	}
	if h.d.store.Counter() != 1 {
		t.Fatalf("counter %d on disk", h.d.store.Counter())
	}

	// A rejection is signed too, with the next counter.
	p2 := newPrompt(t, hsm, id, "req-2", 1)
	wantOne[*pb.ButtonRequest](t, c.call(h, &pb.PromptRequest{Prompt: p2.Marshal()}))
	c.call(h, &pb.ButtonAck{})
	if err := h.d.Press(ButtonReject); err != nil {
		t.Fatal(err)
	}
	a = answerOf(t, h, c.openAll(messagesToProto(t, h.host.take())))
	if a.Decision != signed.Reject || a.Counter != 2 || a.Nonce != p2.Nonce {
		t.Fatalf("rejection %+v", a)
	}

	// Cancelled, before or after ButtonAck: nothing signed, the counter
	// unchanged.
	p3 := newPrompt(t, hsm, id, "req-3", 1)
	wantOne[*pb.ButtonRequest](t, c.call(h, &pb.PromptRequest{Prompt: p3.Marshal()}))
	wantFailure(t, c.call(h, &pb.Cancel{}), pb.FailureCode_FAILURE_ACTION_CANCELLED)
	wantOne[*pb.ButtonRequest](t, c.call(h, &pb.PromptRequest{Prompt: p3.Marshal()}))
	c.call(h, &pb.ButtonAck{})
	wantFailure(t, c.openAll(messagesToProto(t, h.send(h.cid, framing.CmdCancel, nil))), pb.FailureCode_FAILURE_ACTION_CANCELLED)
	if h.d.store.Counter() != 2 {
		t.Fatalf("counter %d after cancelled prompts", h.d.store.Counter())
	}
	if v, _ := h.d.View(); v.Kind != KindHome {
		t.Fatalf("screen %q after cancel", v.Kind)
	}

	// The counter survives a restart.
	dir := h.d.store.dir
	h.reopen(dir)
	if h.d.store.Counter() != 2 {
		t.Fatalf("counter %d after restart", h.d.store.Counter())
	}
}

func TestPromptRefused(t *testing.T) {
	hsm := newCoreKey(t, "hsm", issuedAt, expiresAt)
	h, c := pairedDevice(t, "refused", hsm)
	id := h.d.store.Identity().DeviceID()
	good := newPrompt(t, hsm, id, "r", 1)

	other := newPrompt(t, newCoreKey(t, "another hsm", issuedAt, expiresAt), id, "r", 1)
	wrongDevice := newPrompt(t, hsm, "0011223344556677", "r", 1)
	altered := *good
	altered.Fields = []signed.Field{{Label: "Send", Value: "9.9 BTC"}}
	tooLongTitle := newPrompt(t, hsm, id, "r", 1)
	tooLongTitle.Title = strings.Repeat("T", Columns+1)
	tooLongTitle.Sign(hsm.id)
	expired := newPrompt(t, hsm, id, "r", 1)
	expired.NotAfter = time.Unix(issuedAt-1, 0)
	expired.Sign(hsm.id)
	for name, raw := range map[string][]byte{
		"malformed":     good.Marshal()[:40],
		"another HSM":   other.Marshal(),
		"altered":       altered.Marshal(),
		"wrong device":  wrongDevice.Marshal(),
		"not showable":  tooLongTitle.Marshal(),
		"expired":       expired.Marshal(),
		"trailing byte": append(good.Marshal(), 0),
	} {
		wantFailure(t, c.call(h, &pb.PromptRequest{Prompt: raw}), pb.FailureCode_FAILURE_DATA_ERROR)
		if v, _ := h.d.View(); v.Kind != KindHome {
			t.Fatalf("%s: shown", name)
		}
	}
	if h.d.store.Counter() != 0 {
		t.Fatal("counter moved for refused prompts")
	}

	// Outside a full channel: refused as not paired.
	wantFailure(t, h.call(&pb.PromptRequest{Prompt: good.Marshal()}), pb.FailureCode_FAILURE_NOT_PAIRED)
	u, _ := newChannelHarness(t, "unpaired")
	uc := newTestCore(t, hsm, "unpaired")
	openChannel(t, u, uc)
	wantFailure(t, uc.call(u, &pb.PromptRequest{Prompt: good.Marshal()}), pb.FailureCode_FAILURE_NOT_PAIRED)
}

// approvalVectors is the part of firmware-spec/vectors/approval.json the
// device side replays.
type approvalVectors struct {
	Approvals []struct {
		Name     string `json:"name"`
		Prompt   string `json:"prompt"`
		DeviceID string `json:"device_id"`
		Key      struct {
			Algorithm  string `json:"algorithm"`
			PrivateKey string `json:"private_key"`
		} `json:"device_key"`
		Counter       uint64 `json:"counter"`
		Decision      int    `json:"decision"`
		Deterministic bool   `json:"deterministic"`
		Encoded       string `json:"encoded"`
	} `json:"approvals"`
	Prompts []struct {
		Name    string                                 `json:"name"`
		HSMKey  struct{ Algorithm, PrivateKey string } `json:"hsm_key"`
		Encoded string                                 `json:"encoded"`
	} `json:"prompts"`
	DeviceChecks []struct {
		Name      string `json:"name"`
		DeviceID  string `json:"device_id"`
		PinnedAlg string `json:"pinned_hsm_algorithm"`
		PinnedKey string `json:"pinned_hsm_key"`
		Prompt    string `json:"prompt"`
		Result    string `json:"result"`
	} `json:"device_checks"`
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// vectorDevice makes a device whose identity key is the secp256k1 key of
// the approval vectors (0x44 repeated), paired with the vectors' Ed25519
// HSM key (0x48 repeated), with a full channel to it.
func approvalVectorDevice(t *testing.T) (*harness, *testCore) {
	t.Helper()
	dir := t.TempDir()
	rnd := io.MultiReader(bytes.NewReader(bytes.Repeat([]byte{0x44}, 32)), SeededRand("approval vectors"))
	s, _, err := OpenStore(StoreRequest{Dir: dir, Algorithm: AlgSecp256k1, Rand: rnd})
	if err != nil {
		t.Fatal(err)
	}
	hsm := coreKeyFrom(t, pb.Algorithm_ALGORITHM_ED25519, bytes.Repeat([]byte{0x48}, 32), issuedAt-day, expiresAt)
	if err := s.SetPin(&Pin{Algorithm: hsm.id.Algorithm(), PublicKey: hsm.id.PublicKey(), User: "alice", Role: pb.PairingRole_PAIRING_ROLE_ADMIN}, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, host: &recorder{}, now: time.Unix(1700000000, 0)}
	if h.d, err = New(Config{Store: s, Rand: SeededRand("approval vectors device"), Now: h.clock}); err != nil {
		t.Fatal(err)
	}
	h.allocate()
	c := newTestCore(t, hsm, "approval vectors")
	openChannel(t, h, c)
	return h, c
}

// TestApprovalVectors replays firmware-spec/vectors/approval.json on the
// device side: each prompt of device_checks is shown or refused as the
// vector says, and the secp256k1 device's approval and rejection are
// reproduced byte for byte.
func TestApprovalVectors(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(vectorDir, "approval.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v approvalVectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	h, c := approvalVectorDevice(t)
	if len(v.DeviceChecks) == 0 {
		t.Fatal("no device checks")
	}
	for _, dc := range v.DeviceChecks {
		if dc.DeviceID != h.d.store.Identity().DeviceID() || !bytes.Equal(mustHex(t, dc.PinnedKey), h.d.store.Pin().PublicKey) {
			t.Fatalf("%s: vector device %s / HSM %s is not the test's", dc.Name, dc.DeviceID, dc.PinnedKey)
		}
		got := c.call(h, &pb.PromptRequest{Prompt: mustHex(t, dc.Prompt)})
		if dc.Result == "show" {
			wantOne[*pb.ButtonRequest](t, got)
			wantFailure(t, c.call(h, &pb.Cancel{}), pb.FailureCode_FAILURE_ACTION_CANCELLED)
			continue
		}
		if len(got) != 1 {
			t.Fatalf("%s: answered %v", dc.Name, got)
		}
		if f, ok := got[0].(*pb.Failure); !ok || f.GetCode() != pb.FailureCode_FAILURE_DATA_ERROR {
			t.Errorf("%s: answered %v, want Failure{FAILURE_DATA_ERROR} (%s)", dc.Name, got[0], dc.Result)
		}
	}

	prompts := map[string][]byte{}
	for _, p := range v.Prompts {
		prompts[p.Name] = mustHex(t, p.Encoded)
	}
	n := 0
	for _, a := range v.Approvals {
		if a.DeviceID != h.d.store.Identity().DeviceID() {
			continue
		}
		if !a.Deterministic || a.Counter != h.d.store.Counter()+1 {
			t.Fatalf("%s: counter %d, device at %d", a.Name, a.Counter, h.d.store.Counter())
		}
		// The device refuses a prompt it answered before; the vectors
		// answer one prompt twice, so the test forgets the first answer.
		h.d.store.mu.Lock()
		h.d.store.state.Answered = nil
		h.d.store.mu.Unlock()
		wantOne[*pb.ButtonRequest](t, c.call(h, &pb.PromptRequest{Prompt: prompts[a.Prompt]}))
		c.call(h, &pb.ButtonAck{})
		if err := h.d.applyVectorDecision(a.Decision); err != nil {
			t.Fatal(err)
		}
		pa := wantOne[*pb.PromptAnswer](t, c.openAll(messagesToProto(t, h.host.take())))
		if got := hex.EncodeToString(pa.GetApproval()); got != a.Encoded {
			t.Errorf("%s:\n got %s\nwant %s", a.Name, got, a.Encoded)
		}
		n++
	}
	if n != 2 {
		t.Fatalf("reproduced %d approvals, want 2", n)
	}
}

// applyVectorDecision presses through the prompt and confirms (decision
// 1) or rejects (2).
func (d *Device) applyVectorDecision(decision int) error {
	if decision == 2 {
		return d.Press(ButtonReject)
	}
	for {
		if err := d.Press(ButtonNext); err != nil {
			break
		}
	}
	return d.Press(ButtonConfirm)
}
