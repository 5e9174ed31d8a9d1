package core

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/hsm/policy"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// policyWorld is the approval world with dave (an executive) as well, and
// the treasury wallet's policy set to doc.
func policyWorld(t *testing.T, doc string) *world {
	t.Helper()
	w := newWorld(t, "alice", "bob", "carol", "dave")
	w.setPolicy(doc)
	return w
}

// setPolicy stores doc as the wallet's policy, as an applied change would.
func (w *world) setPolicy(doc string) {
	w.t.Helper()
	p, err := policy.Parse([]byte(doc))
	if err != nil {
		w.t.Fatal(err)
	}
	ctx := context.Background()
	wr, err := w.core.cfg.Wallets.GetWallet(ctx, "treasury")
	if err != nil {
		w.t.Fatal(err)
	}
	wr.setPolicy(p, wr.CurrentPolicyVersion()+1)
	if err := w.core.cfg.Wallets.UpdateWallet(ctx, wr); err != nil {
		w.t.Fatal(err)
	}
}

// transferOf pays amount out of the wallet's two coins (1.5 BTC), the
// rest less 10,000 sat of fee back as change.
func (w *world) transferOf(tag string, amount int64) []byte {
	return packet(w.t, w.coins(tag), []*wire.TxOut{
		wire.NewTxOut(amount, foreignScript("destination")),
		wire.NewTxOut(150_000_000-amount-10_000, bitcoin.Key{PublicKey: w.wallet.Keys[1].PublicKey}.PkScript()),
	})
}

func (w *world) submitAs(initiator string, psbt []byte) (*Submitted, error) {
	sub, err := w.core.Submit(context.Background(), SubmitRequest{Wallet: "treasury", Initiator: initiator, PSBT: psbt})
	if err == nil {
		w.deliver(sub)
	}
	return sub, err
}

const tiered = `version: 1
groups:
  ops: {members: [alice, bob, carol], quorum: 2}
  execs: {members: [dave], quorum: 1}
tiers:
  - {name: small, up_to: 1 BTC, require: ops}
  - {name: large, require: {steps: [ops, execs]}}
`

func prompted(r *RequestRecord) []string {
	var us []string
	for _, p := range r.Prompts {
		if !slices.Contains(us, p.User) {
			us = append(us, p.User)
		}
	}
	slices.Sort(us)
	return us
}

// Each case submits a transfer under a policy, has users answer in order
// ("-bob" rejects), and checks the outcome.
func TestPolicyInTheCore(t *testing.T) {
	for _, tc := range []struct {
		name      string
		doc       string
		initiator string
		amount    int64
		answers   []string
		refused   error // Submit's error
		want      RequestState
		prompted  []string // users prompted in the end
		says      string   // in the request's Error
	}{
		{name: "small tier: two of ops", doc: tiered, amount: 50_000_000, answers: []string{"alice", "bob"}, want: RequestSigned, prompted: []string{"alice", "bob", "carol"}},
		{name: "large tier: ops is not enough", doc: tiered, amount: 120_000_000, answers: []string{"alice", "bob"}, want: RequestPending, prompted: []string{"alice", "bob", "carol", "dave"}},
		{name: "large tier: ops then execs", doc: tiered, amount: 120_000_000, answers: []string{"alice", "bob", "dave"}, want: RequestSigned},
		{name: "large tier: execs asked only after ops", doc: tiered, amount: 120_000_000, answers: []string{"alice"}, want: RequestPending, prompted: []string{"alice", "bob", "carol"}},
		{name: "single veto", doc: tiered, amount: 50_000_000, answers: []string{"alice", "-carol"}, want: RequestRejected, says: "rejected by carol (single veto)"},
		{name: "veto off: one rejection is not enough", doc: tiered + "single_veto: false\n", amount: 50_000_000, answers: []string{"-carol", "alice", "bob"}, want: RequestSigned},
		{name: "veto off: unreachable", doc: tiered + "single_veto: false\n", amount: 50_000_000, answers: []string{"-carol", "-bob"}, want: RequestRejected, says: "can no longer be met"},
		{name: "initiator is not asked", doc: tiered, initiator: "alice", amount: 50_000_000, answers: []string{"bob", "carol"}, want: RequestSigned, prompted: []string{"bob", "carol"}},
		{name: "initiator alone cannot meet it", doc: tiered, initiator: "alice", amount: 50_000_000, answers: []string{"bob"}, want: RequestPending},
		{name: "above the tiers", doc: strings.Replace(tiered, "  - {name: large, require: {steps: [ops, execs]}}\n", "", 1), amount: 120_000_000, refused: ErrPolicyRefused},
		{name: "allow-list refuses", doc: tiered + "allow_list:\n  addresses: {cold: " + coldAddress + "}\n", amount: 50_000_000, refused: ErrPolicyRefused},
		{name: "allow-list: unlisted needs execs", doc: tiered + "allow_list:\n  addresses: {cold: " + coldAddress + "}\n  unlisted_require: execs\n", amount: 50_000_000, answers: []string{"alice", "bob", "dave"}, want: RequestSigned, prompted: []string{"alice", "bob", "carol", "dave"}},
		{name: "velocity: over at once", doc: tiered + "velocity: [{window: 24h, max: 0.4 BTC}]\n", amount: 50_000_000, refused: ErrPolicyRefused},
		{name: "unreachable without the initiator", doc: "version: 1\ngroups: {g: {members: [alice, bob], quorum: 2}}\nrequire: g\n", initiator: "bob", amount: 1000, refused: ErrQuorumUnreachable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := policyWorld(t, tc.doc)
			if tc.initiator == "" {
				tc.initiator = "operator"
			}
			sub, err := w.submitAs(tc.initiator, w.transferOf(tc.name, tc.amount))
			if tc.refused != nil {
				if !errors.Is(err, tc.refused) {
					t.Fatalf("got %v, want %v", err, tc.refused)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range tc.answers {
				dec := signed.Approve
				if strings.HasPrefix(a, "-") {
					a, dec = a[1:], signed.Reject
				}
				w.press(a, dec)
				if out := w.lastAnswer(); out.err != nil {
					t.Fatalf("%s: %v", a, out.err)
				}
			}
			r := w.request(sub.Request.ID)
			if r.State != tc.want || !strings.Contains(r.Error, tc.says) {
				t.Fatalf("state %s (%s), want %s (%s)", r.State, r.Error, tc.want, tc.says)
			}
			if tc.prompted != nil && !slices.Equal(prompted(r), tc.prompted) {
				t.Fatalf("prompted %v, want %v", prompted(r), tc.prompted)
			}
			if r.State == RequestSigned && w.custody.signatures() != 2 {
				t.Fatalf("%d signatures", w.custody.signatures())
			}
			if r.State != RequestSigned && w.custody.signatures() != 0 {
				t.Fatalf("%d signatures", w.custody.signatures())
			}
		})
	}
}

// coldAddress is an allow-listed simnet address no test pays.
const coldAddress = "sb1qqaq2zjfs68nqhlwlywlvj3e33a383dy322z64n"

func TestPolicyVelocityCountsSignedTransfers(t *testing.T) {
	w := policyWorld(t, tiered+"velocity: [{window: 24h, max: 1 BTC}]\n")
	sub, err := w.submitAs("operator", w.transferOf("v1", 60_000_000))
	if err != nil {
		t.Fatal(err)
	}
	// A second one fits while the first is not signed...
	sub2, err := w.submitAs("operator", w.transferOf("v2", 60_000_000))
	if err != nil {
		t.Fatal(err)
	}
	w.press("alice", signed.Approve)
	w.press("bob", signed.Approve)
	if r := w.request(sub.Request.ID); r.State != RequestSigned {
		t.Fatalf("first: %s %s", r.State, r.Error)
	}
	// ...but not once it is: the next answer finds it over the limit.
	w.press("alice", signed.Approve)
	if r := w.request(sub2.Request.ID); r.State != RequestFailed || !strings.Contains(r.Error, "velocity limit") {
		t.Fatalf("second: %s %s", r.State, r.Error)
	}
	if _, err := w.submitAs("operator", w.transferOf("v3", 50_000_000)); !errors.Is(err, ErrPolicyRefused) || !strings.Contains(err.Error(), "0.60000000 BTC signed in the last 24h0m0s") {
		t.Fatalf("third: %v", err)
	}
	// A day later the window is clear.
	w.clock.advance(24*time.Hour + time.Second)
	if _, err := w.submitAs("operator", w.transferOf("v4", 50_000_000)); err != nil {
		t.Fatal(err)
	}
}

func TestPolicyTimeLock(t *testing.T) {
	w := policyWorld(t, tiered+"time_lock: 1h\nexpiry: 2h\n")
	ctx := context.Background()
	sub, err := w.submitAs("operator", w.transferOf("lock", 50_000_000))
	if err != nil {
		t.Fatal(err)
	}
	if got := sub.Request.ExpiresAt.Sub(sub.Request.CreatedAt.Truncate(time.Second)); got != 2*time.Hour {
		t.Fatalf("expiry %s, want the policy's 2h", got)
	}
	w.press("alice", signed.Approve)
	w.press("bob", signed.Approve)
	r := w.request(sub.Request.ID)
	if r.State != RequestApproved || !r.SignAfter.Equal(w.clock.Now().Add(time.Hour)) || w.custody.signatures() != 0 {
		t.Fatalf("state %s, sign after %s", r.State, r.SignAfter)
	}
	w.clock.advance(59 * time.Minute)
	if _, err := w.core.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if r := w.request(sub.Request.ID); r.State != RequestApproved || w.custody.signatures() != 0 {
		t.Fatalf("signed inside the time lock: %s", r.State)
	}
	// Even a forced signing refuses inside the lock.
	if err := w.core.checkApprovals(ctx, r, mustWallet(t, w)); !errors.Is(err, ErrNotApproved) || !strings.Contains(err.Error(), "time-locked") {
		t.Fatalf("recount inside the lock: %v", err)
	}
	w.clock.advance(time.Minute)
	if _, err := w.core.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if r := w.request(sub.Request.ID); r.State != RequestSigned {
		t.Fatalf("after the lock: %s %s", r.State, r.Error)
	}
}

func mustWallet(t *testing.T, w *world) *WalletRecord {
	wr, err := w.core.Wallet(context.Background(), "treasury")
	if err != nil {
		t.Fatal(err)
	}
	return wr
}

// The recount before signing uses the policy: a request stored as
// approved with ops' approvals only, under a tier that also needs execs,
// is not signed.
func TestPolicyRecountBeforeSigning(t *testing.T) {
	w := policyWorld(t, tiered)
	ctx := context.Background()
	sub, err := w.submitAs("operator", w.transferOf("forged", 120_000_000))
	if err != nil {
		t.Fatal(err)
	}
	w.press("alice", signed.Approve)
	w.press("bob", signed.Approve)
	r := w.request(sub.Request.ID)
	r.State = RequestApproved
	if err := w.requests.UpdateRequest(ctx, r); err != nil {
		t.Fatal(err)
	}
	_, _ = w.core.Tick(ctx)
	if r := w.request(sub.Request.ID); r.State != RequestFailed || !strings.Contains(r.Error, "execs: 1 more of dave") || w.custody.signatures() != 0 {
		t.Fatalf("state %s (%s)", r.State, r.Error)
	}
}

func TestExplainTransfer(t *testing.T) {
	w := policyWorld(t, tiered)
	ctx := context.Background()
	ex, err := w.core.ExplainTransfer(ctx, SubmitRequest{Wallet: "treasury", Initiator: "bob", PSBT: w.transferOf("x", 120_000_000)})
	if err != nil {
		t.Fatal(err)
	}
	d := ex.Decision
	if d.Outcome != policy.Pending || !strings.Contains(d.Rule, "tier large") || d.Needs != "2 of ops (alice, bob, carol), then 1 of execs (dave)" ||
		!slices.Equal(d.Ask, []string{"alice", "carol"}) || ex.PolicyVersion != 2 {
		t.Fatalf("%+v", ex)
	}
	if rs, _ := w.core.Requests(ctx); len(rs) != 0 || w.custody.signatures() != 0 {
		t.Fatal("explaining stored or signed something")
	}
	// The same refusal as Submit's.
	w.setPolicy(strings.Replace(tiered, "  - {name: large, require: {steps: [ops, execs]}}\n", "", 1))
	ex, err = w.core.ExplainTransfer(ctx, SubmitRequest{Wallet: "treasury", Initiator: "bob", PSBT: w.transferOf("x", 120_000_000)})
	if err != nil || ex.Decision.Outcome != policy.Refused {
		t.Fatalf("%+v %v", ex, err)
	}
}

// A policy change goes through the admin quorum: the admins' screens show
// the diff; once applied, the wallet's pending requests are withdrawn
// (their prompts too), and new transfers follow the new policy.
func TestPolicyChangeThroughAdmins(t *testing.T) {
	w, _ := adminWorld(t)
	ctx := context.Background()
	pending := w.submit(w.transfer("before"))
	w.deliver(pending)
	w.press("alice", signed.Approve)

	strict := "version: 1\ngroups:\n  approvers: {members: [alice, bob, carol], quorum: 3}\nrequire: approvers\n"
	prop, err := w.core.ProposePolicy(ctx, "treasury", []byte(strict), "root1")
	if err != nil {
		t.Fatal(err)
	}
	var shown []string
	for _, f := range prop.Prompts[0].Fields {
		shown = append(shown, f.Label+": "+f.Value)
	}
	for _, want := range []string{"Kind: policy", "Subject: treasury", "Policy: version 1 -> 2",
		"Removed: groups.approvers.quorum: 2 of 3", "Added: groups.approvers.quorum: 3 of 3", "Proposed by: root1"} {
		if !slices.Contains(shown, want) {
			t.Errorf("admin prompt lacks %q:\n%s", want, strings.Join(shown, "\n"))
		}
	}
	// Proposing the current policy again, or over a stale version, is refused.
	if _, err := w.core.ProposePolicy(ctx, "treasury", policy.Default([]string{"alice", "bob", "carol"}, 2).Marshal(), "root1"); !errors.Is(err, ErrChangeRefused) {
		t.Fatalf("no-op change: %v", err)
	}
	w.deliverPrompts(prop.Prompts)
	w.press("root2", signed.Approve)
	if wr := mustWallet(t, w); wr.CurrentPolicyVersion() != 1 {
		t.Fatal("applied before the admin quorum")
	}
	w.press("root3", signed.Approve)
	ch := w.change(prop.Change.ID)
	if ch.State != ChangeApplied || !strings.Contains(ch.Result, "policy version 2; 1 pending requests withdrawn") {
		t.Fatalf("change %s %q %q", ch.State, ch.Result, ch.Error)
	}
	wr := mustWallet(t, w)
	if wr.CurrentPolicyVersion() != 2 || wr.Quorum != 3 {
		t.Fatalf("wallet %+v", wr)
	}
	r := w.request(pending.Request.ID)
	if r.State != RequestWithdrawn || !strings.Contains(r.Error, "policy changed from version 1 to 2") {
		t.Fatalf("pending request: %s %s", r.State, r.Error)
	}
	// bob's and carol's prompts were withdrawn from their devices.
	if w.dev["bob"].showing != nil || w.dev["carol"].showing != nil {
		t.Fatal("a withdrawn request's prompt is still shown")
	}
	// An answer to the withdrawn request is refused.
	if _, err := w.answer(pending.Request.ID, "bob", w.approval("bob", w.promptFor(pending, "bob"), signed.Approve, 5, nil)); !errors.Is(err, ErrRequestClosed) {
		t.Fatalf("answer to a withdrawn request: %v", err)
	}
	// The new policy needs all three.
	sub := w.submit(w.transfer("after"))
	w.deliver(sub)
	if sub.Request.PolicyVersion != 2 {
		t.Fatalf("submitted under version %d", sub.Request.PolicyVersion)
	}
	w.press("alice", signed.Approve)
	w.press("bob", signed.Approve)
	if r := w.request(sub.Request.ID); r.State != RequestPending {
		t.Fatalf("two of three met the new quorum of 3: %s", r.State)
	}
	w.press("carol", signed.Approve)
	if r := w.request(sub.Request.ID); r.State != RequestSigned {
		t.Fatalf("%s %s", r.State, r.Error)
	}
	// The old change cannot be applied again over version 2.
	if _, err := (policyHandler{w.core}).Apply(ctx, ch); err == nil || !strings.Contains(err.Error(), "replaces policy version 1") {
		t.Fatalf("reapplied: %v", err)
	}
}

func TestCreateWalletWithPolicy(t *testing.T) {
	w := newWorld(t, "alice", "bob", "carol", "dave")
	ctx := context.Background()
	wr, err := w.core.CreateWallet(ctx, CreateWalletRequest{Name: "ops", Network: bitcoin.Simnet, Policy: []byte(tiered)})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(wr.Approvers, []string{"alice", "bob", "carol", "dave"}) || wr.CurrentPolicyVersion() != 1 {
		t.Fatalf("%+v", wr)
	}
	for name, req := range map[string]CreateWalletRequest{
		"both":          {Name: "x", Network: bitcoin.Simnet, Policy: []byte(tiered), Approvers: []string{"alice"}, Quorum: 1},
		"bad policy":    {Name: "x", Network: bitcoin.Simnet, Policy: []byte("version: 1\n")},
		"wrong network": {Name: "x", Network: bitcoin.Mainnet, Policy: []byte(tiered + "allow_list:\n  addresses: {cold: " + coldAddress + "}\n")},
		"unpaired user": {Name: "x", Network: bitcoin.Simnet, Policy: []byte(strings.Replace(tiered, "[dave]", "[erin]", 1))},
	} {
		if _, err := w.core.CreateWallet(ctx, req); !errors.Is(err, ErrInvalidWallet) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
