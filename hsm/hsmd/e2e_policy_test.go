package hsmd_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/opencustodynet/opencustody/emulator/debuglink"
	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// e2ePolicy: transfers up to 0.3 BTC need alice and bob; larger ones
// need them and then dave.
const e2ePolicy = `version: 1
groups:
  ops: {members: [alice, bob], quorum: 2}
  execs: {members: [dave], quorum: 1}
tiers:
  - {name: small, up_to: 0.3 BTC, require: ops}
  - {name: large, require: {steps: [ops, execs]}}
`

// screenText is a screen's whole document on one line.
func screenText(s *debuglink.Screen) string {
	return strings.Join(strings.Fields(s.Text), " ")
}

// confirm confirms the prompt of request id on e.
func (w *world) confirm(e *emu, id string) {
	w.t.Helper()
	w.promptScreen(e, id)
	if _, err := e.dl.ConfirmAll(w.ctx); err != nil {
		w.t.Fatal(err)
	}
}

// A wallet's policy evaluated end to end, on emulators through the bridge:
// a small transfer needs the two operators, a large one the operators and
// then the executive (whose device is asked only once they approved), one
// rejection stops a transfer; then a policy change that the admins approve
// on their own devices, which show its diff, and a transfer evaluated
// under the new policy.
func TestE2EPolicyTiersVetoAndAdminQuorum(t *testing.T) {
	w := newWorld(t, 3)
	alice, bob, dave := w.emus[0], w.emus[1], w.emus[2]
	// alice and bob are admins as well as operators; dave approves.
	w.pair(w.hsmd, alice, "alice", apipb.Role_ROLE_ADMIN)
	w.pair(w.hsmd, bob, "bob", apipb.Role_ROLE_ADMIN)
	w.pair(w.hsmd, dave, "dave", apipb.Role_ROLE_APPROVER)
	for _, e := range w.emus {
		w.waitChannel(w.hsmd, e, true)
	}
	if _, err := w.hsmd.core.SetAdminQuorum(w.ctx, 2); err != nil {
		t.Fatal(err)
	}
	cust := apipb.NewCustodyClient(w.hsmd.dial(t, "operator"))
	if _, err := cust.CreateWallet(w.ctx, &apipb.CreateWalletRequest{Name: "treasury", Network: "simnet", Policy: []byte(e2ePolicy)}); err != nil {
		t.Fatal(err)
	}
	var addrs []*apipb.WalletAddress
	for range 2 {
		a, err := cust.NewAddress(w.ctx, &apipb.NewAddressRequest{Wallet: "treasury"})
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, a.GetAddress())
	}
	signedState := func(r *apipb.Request) bool { return r.GetState() == apipb.RequestState_REQUEST_STATE_SIGNED }

	// Small tier: alice and bob; dave is not asked.
	small := w.submit(w.hsmd, "treasury", addrs, 50_000_000) // sends 0.25 BTC
	if small.GetRule() != "tier small (up to 0.30000000 BTC)" || small.GetPolicyVersion() != 1 {
		t.Fatalf("small: rule %q, version %d", small.GetRule(), small.GetPolicyVersion())
	}
	for _, p := range small.GetPrompts() {
		if p.GetUser() == "dave" {
			t.Fatal("dave was asked for a small transfer")
		}
	}
	w.confirm(alice, small.GetId())
	r := w.waitRequestState(w.hsmd, small.GetId(), "alice's approval counted", func(r *apipb.Request) bool { return len(r.GetApprovedBy()) == 1 })
	if r.GetState() != apipb.RequestState_REQUEST_STATE_PENDING || !strings.Contains(strings.Join(r.GetPolicyMissing(), ";"), "ops: 1 more of bob") {
		t.Fatalf("after alice alone: %v, missing %v", r.GetState(), r.GetPolicyMissing())
	}
	w.confirm(bob, small.GetId())
	w.waitRequestState(w.hsmd, small.GetId(), "signed", signedState)

	// Large tier: alice and bob first, then dave.
	large := w.submit(w.hsmd, "treasury", addrs, 100_000_000) // sends 0.5 BTC
	if !strings.HasPrefix(large.GetRule(), "tier large") || len(large.GetPrompts()) != 2 {
		t.Fatalf("large: rule %q, prompts %v", large.GetRule(), large.GetPrompts())
	}
	w.confirm(alice, large.GetId())
	w.confirm(bob, large.GetId())
	r = w.waitRequestState(w.hsmd, large.GetId(), "dave asked", func(r *apipb.Request) bool { return len(r.GetPrompts()) == 3 })
	if r.GetState() != apipb.RequestState_REQUEST_STATE_PENDING || !strings.Contains(strings.Join(r.GetPolicyMissing(), ";"), "execs: 1 more of dave") {
		t.Fatalf("after ops: %v, missing %v", r.GetState(), r.GetPolicyMissing())
	}
	w.confirm(dave, large.GetId())
	w.waitRequestState(w.hsmd, large.GetId(), "signed", signedState)

	// Veto: bob rejects on his device; alice's prompt is withdrawn.
	vetoed := w.submit(w.hsmd, "treasury", addrs, 40_000_000)
	w.promptScreen(alice, vetoed.GetId())
	w.promptScreen(bob, vetoed.GetId())
	if _, err := bob.dl.Press(w.ctx, debuglink.Reject); err != nil {
		t.Fatal(err)
	}
	r = w.waitRequestState(w.hsmd, vetoed.GetId(), "rejected", func(r *apipb.Request) bool {
		return r.GetState() == apipb.RequestState_REQUEST_STATE_REJECTED
	})
	if !strings.Contains(r.GetError(), "rejected by bob (single veto)") || len(r.GetSignedTx()) != 0 {
		t.Fatalf("vetoed: %v", r)
	}
	if _, err := alice.dl.WaitFor(w.ctx, func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindHome }); err != nil {
		t.Fatal(err)
	}

	// The admin quorum: a new policy (small up to 0.1 BTC) proposed by
	// an operator; both admins' devices show the diff and approve.
	newPolicy := strings.Replace(e2ePolicy, "up_to: 0.3 BTC", "up_to: 0.1 BTC", 1)
	ch, err := cust.ProposePolicy(w.ctx, &apipb.ProposePolicyRequest{Wallet: "treasury", Document: []byte(newPolicy), Initiator: "olivia"})
	if err != nil {
		t.Fatal(err)
	}
	if ch.GetState() != "pending" || ch.GetQuorum() != 2 || strings.Join(ch.GetAdmins(), ",") != "alice,bob" {
		t.Fatalf("change %v", ch)
	}
	for _, e := range []*emu{alice, bob} {
		s := w.promptScreen(e, ch.GetId())
		text := screenText(s)
		for _, want := range []string{"Approve change", "Kind: policy", "Subject: treasury", "Policy: version 1 -> 2",
			"Removed: tiers[0].small: up to 0.30000000 BTC: ops", "Added: tiers[0].small: up to 0.10000000 BTC: ops", "Proposed by: olivia"} {
			if !strings.Contains(text, want) {
				t.Errorf("device %s: the change's screen lacks %q:\n%s", e.id, want, s.Text)
			}
		}
	}
	// Nothing changes before the quorum.
	if _, err := alice.dl.ConfirmAll(w.ctx); err != nil {
		t.Fatal(err)
	}
	w.waitChange(ch.GetId(), func(c *apipb.Change) bool { return len(c.GetApprovedBy()) == 1 })
	if p, err := cust.GetPolicy(w.ctx, &apipb.GetPolicyRequest{Wallet: "treasury"}); err != nil || p.GetVersion() != 1 {
		t.Fatalf("policy before the quorum: %v %v", p, err)
	}
	if _, err := bob.dl.ConfirmAll(w.ctx); err != nil {
		t.Fatal(err)
	}
	done := w.waitChange(ch.GetId(), func(c *apipb.Change) bool { return c.GetState() == "applied" })
	if !strings.Contains(done.GetResult(), "policy version 2") {
		t.Fatalf("applied: %v", done)
	}
	p, err := cust.GetPolicy(w.ctx, &apipb.GetPolicyRequest{Wallet: "treasury"})
	if err != nil || p.GetVersion() != 2 || !strings.Contains(strings.Join(p.GetLines(), "\n"), "tiers[0].small: up to 0.10000000 BTC: ops") {
		t.Fatalf("policy after: %v %v", p, err)
	}
	// The audit log has the proposal, both approvals and the outcome
	// (and the prompts shown, whose entries are written concurrently).
	kinds := w.hsmd.auditKinds(t, ch.GetId())
	if len(kinds) < 4 || kinds[0] != audit.KindPolicy || kinds[len(kinds)-1] != audit.KindPolicy || count(kinds, audit.KindApproval) != 2 {
		t.Fatalf("audit of the change: %v", kinds)
	}

	// 0.25 BTC is now large: alice and bob are not enough.
	after := w.submit(w.hsmd, "treasury", addrs, 50_000_000)
	if !strings.HasPrefix(after.GetRule(), "tier large") || after.GetPolicyVersion() != 2 {
		t.Fatalf("after: rule %q, version %d", after.GetRule(), after.GetPolicyVersion())
	}
	w.confirm(alice, after.GetId())
	w.confirm(bob, after.GetId())
	w.waitRequestState(w.hsmd, after.GetId(), "dave asked", func(r *apipb.Request) bool { return len(r.GetPrompts()) == 3 })
	if r, _ := cust.GetRequest(w.ctx, &apipb.GetRequestRequest{Id: after.GetId()}); r.GetState() != apipb.RequestState_REQUEST_STATE_PENDING {
		t.Fatalf("signed on the old policy's quorum: %v", r.GetState())
	}
	w.confirm(dave, after.GetId())
	w.waitRequestState(w.hsmd, after.GetId(), "signed", signedState)
	// hsmd audits the signature just after it stores the signed request.
	until(t, w.ctx, "the signature audited", func() error {
		if kinds := w.hsmd.auditKinds(t, after.GetId()); !strings.Contains(strings.Join(kinds, ","), audit.KindSignature) {
			return fmt.Errorf("audit: %v", kinds)
		}
		return nil
	})
}

// waitChange polls an admin change until ok accepts it.
func (w *world) waitChange(id string, ok func(*apipb.Change) bool) *apipb.Change {
	w.t.Helper()
	var c *apipb.Change
	until(w.t, w.ctx, "change "+id, func() error {
		var err error
		if c, err = w.op.GetChange(w.ctx, &apipb.GetChangeRequest{Id: id}); err != nil {
			return err
		}
		if !ok(c) {
			return fmt.Errorf("state %s, approved by %v", c.GetState(), c.GetApprovedBy())
		}
		return nil
	})
	return c
}

// After the key ceremony, a new device is paired through the admin
// quorum: the operator and the device's user confirm the code as before,
// then the admins' devices show the new device's fingerprint, and only
// once they approved is it paired and given a channel.
func TestE2EPairingThroughAdmins(t *testing.T) {
	w := newWorld(t, 3)
	alice, bob, carol := w.emus[0], w.emus[1], w.emus[2]
	w.pair(w.hsmd, alice, "alice", apipb.Role_ROLE_ADMIN)
	w.pair(w.hsmd, bob, "bob", apipb.Role_ROLE_ADMIN)
	w.waitChannel(w.hsmd, alice, true)
	w.waitChannel(w.hsmd, bob, true)
	if _, err := w.hsmd.core.SetAdminQuorum(w.ctx, 2); err != nil {
		t.Fatal(err)
	}
	w.hsmd.core.EndCeremony()
	if _, err := w.hsmd.core.SetAdminQuorum(w.ctx, 1); err == nil {
		t.Fatal("the admin quorum was changed after the ceremony")
	}

	p, err := w.startPair(w.hsmd, carol, "carol", apipb.Role_ROLE_APPROVER)
	if err != nil {
		t.Fatal(err)
	}
	w.pairingScreen(carol)
	if _, err := carol.dl.ConfirmAll(w.ctx); err != nil {
		t.Fatal(err)
	}
	res, err := p.decide(true)
	if err != nil {
		t.Fatal(err)
	}
	id := res.GetChangeId()
	if id == "" || res.GetDevice().GetState() != apipb.DeviceState_DEVICE_STATE_UNPAIRED {
		t.Fatalf("pair result %v", res)
	}
	if ds, _ := w.devices(w.hsmd); ds[carol.id].GetState() != apipb.DeviceState_DEVICE_STATE_UNPAIRED {
		t.Fatalf("carol listed %v before the admins approved", ds[carol.id])
	}
	for _, e := range []*emu{alice, bob} {
		text := screenText(w.promptScreen(e, id))
		for _, want := range []string{"Kind: pairing", "Fingerprint: " + p.code.GetDeviceFingerprint(), "User: carol", "Role: approver"} {
			if !strings.Contains(text, want) {
				t.Errorf("device %s: the pairing's screen lacks %q:\n%s", e.id, want, text)
			}
		}
		if _, err := e.dl.ConfirmAll(w.ctx); err != nil {
			t.Fatal(err)
		}
	}
	w.waitChange(id, func(c *apipb.Change) bool { return c.GetState() == "applied" })
	w.waitChannel(w.hsmd, carol, true)
	// The outcome's audit entry is written just after the change is
	// stored as applied.
	eventually(t, func() error {
		if kinds := w.hsmd.auditKinds(t, id); len(kinds) < 4 || kinds[0] != audit.KindPairing || kinds[len(kinds)-1] != audit.KindPairing {
			return fmt.Errorf("audit of the pairing: %v", kinds)
		}
		return nil
	})
}
