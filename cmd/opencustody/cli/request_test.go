package cli

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/opencustodynet/opencustody/protocol/apipb"
)

func testRequest(state apipb.RequestState) *apipb.Request {
	return &apipb.Request{
		Id: "5f2d0c9a3e71b846", Wallet: "treasury", State: state, Quorum: 2, Approvers: []string{"alice", "bob", "carol"},
		CreatedAt: 1_800_000_000, ExpiresAt: 1_800_001_800,
		Summary: &apipb.TransferSummary{
			Txid: "aa" + strings.Repeat("0", 62), Network: "simnet", Inputs: 2, Fee: 10_000, Vsize: 209, FeeRateSatPerKvb: 47_846,
			Outputs: []*apipb.TransferOutput{
				{Amount: 120_000_000, Address: "sb1qdest"},
				{Amount: 29_990_000, Address: "sb1qchange", Change: true},
			},
		},
		Prompts: []*apipb.RequestPrompt{{DeviceId: "d1", User: "alice", Answered: true}, {DeviceId: "d2", User: "bob"}, {DeviceId: "d3", User: "carol"}},
	}
}

func TestRequestRendering(t *testing.T) {
	pending := testRequest(apipb.RequestState_REQUEST_STATE_PENDING)
	pending.ApprovedBy = []string{"alice"}
	pending.Answers = []*apipb.RequestAnswer{{DeviceId: "d1", User: "alice", Approved: true, Counter: 3, At: 1_800_000_100}}
	var out bytes.Buffer
	if err := printRequest(&out, newRequestJSON(pending)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`(?m)^request +5f2d0c9a3e71b846 \(wallet treasury, simnet\)$`,
		`(?m)^state +pending: approved by alice; 1 more needed$`,
		`(?m)^send +1\.20000000 BTC \(120,000,000 sat\) to sb1qdest$`,
		`(?m)^change +0\.29990000 BTC \(29,990,000 sat\) to sb1qchange$`,
		`(?m)^fee +0\.00010000 BTC \(10,000 sat\), 47\.846 sat/vB$`,
		`(?m)^approvers +alice \(approved\), bob \(no answer\), carol \(no answer\); quorum 2$`,
		`(?m)^expires +2027-01-15T08:30:00Z$`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("output lacks %s:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "request result") {
		t.Error("a pending request offers its result")
	}

	signed := testRequest(apipb.RequestState_REQUEST_STATE_SIGNED)
	signed.ApprovedBy = []string{"alice", "bob"}
	signed.SignedTx, signed.SignedPsbt = []byte{0x02, 0x00}, []byte("psbt\xff")
	j := newRequestJSON(signed)
	if j.Signed == nil || j.Signed.Tx != "0200" || j.Signed.PSBT != "cHNidP8=" || j.progress() != "signed: approved by alice, bob" {
		t.Fatalf("signed: %+v, %q", j.Signed, j.progress())
	}
	rejected := testRequest(apipb.RequestState_REQUEST_STATE_REJECTED)
	rejected.RejectedBy = []string{"bob"}
	if p := newRequestJSON(rejected).progress(); p != "rejected by bob" {
		t.Fatalf("rejected: %q", p)
	}

	// JSON: lists are never null, states are words.
	b, err := json.Marshal(newRequestJSON(testRequest(apipb.RequestState_REQUEST_STATE_EXPIRED)))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"state":"expired"`, `"approved_by":[]`, `"rejected_by":[]`, `"answers":[]`, `"fee_rate":"47.846 sat/vB"`, `"amount":"1.20000000 BTC (120,000,000 sat)"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s: %s", want, b)
		}
	}
	if strings.Contains(string(b), `"signed"`) {
		t.Error("an unsigned request has a signed result")
	}
}

func TestWalletRendering(t *testing.T) {
	w := &apipb.Wallet{Name: "treasury", Network: "simnet", Approvers: []string{"alice", "bob"}, Quorum: 2, CreatedAt: 1_800_000_000}
	var out bytes.Buffer
	if err := printWallet(&out, newWalletJSON(w)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "approvers: alice, bob; quorum 2 of 2") || !strings.Contains(out.String(), "opencustody wallet address treasury") {
		t.Fatalf("output:\n%s", out.String())
	}
	w.Addresses = []*apipb.WalletAddress{{Index: 0, Address: "sb1qfirst", PublicKey: []byte{2, 1}, KeyRef: "pkcs11:object=opencustody-treasury-0"}}
	out.Reset()
	if err := printWallet(&out, newWalletJSON(w)); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^  0 +sb1qfirst +pkcs11:object=opencustody-treasury-0$`).MatchString(out.String()) {
		t.Fatalf("output:\n%s", out.String())
	}
	if a := newWalletJSON(w).Addresses[0]; a.PublicKey != "0201" {
		t.Fatalf("address %+v", a)
	}
}
