package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/opencustodynet/opencustody/protocol/apipb"
)

func TestChangeRendering(t *testing.T) {
	ch := &apipb.Change{
		Id: "chg-00112233", Kind: "policy", Subject: "treasury", State: "pending", Initiator: "root1",
		Admins: []string{"root2", "root3"}, Quorum: 2, ApprovedBy: []string{"root2"},
		Fields: []*apipb.ChangeField{{Label: "Removed", Value: "groups.ops.quorum: 2 of 3"}, {Label: "Added", Value: "groups.ops.quorum: 3 of 3"}},
	}
	var out bytes.Buffer
	if err := printChange(&out, newChangeJSON(ch)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"change    chg-00112233 (policy treasury)", "pending: approved by root2; 2 of root2, root3 needed",
		"  Removed: groups.ops.quorum: 2 of 3", "  Added: groups.ops.quorum: 3 of 3"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("lacks %q:\n%s", want, out.String())
		}
	}
	ch.State, ch.Result = "applied", "wallet treasury: policy version 2"
	if p := newChangeJSON(ch).progress(); p != "applied: wallet treasury: policy version 2" {
		t.Fatal(p)
	}
}

func TestRequestRenderingUnderPolicy(t *testing.T) {
	r := testRequest(apipb.RequestState_REQUEST_STATE_PENDING)
	r.Quorum, r.Initiator, r.PolicyVersion, r.Rule = 0, "olivia", 2, "tier large (above 1.00000000 BTC)"
	r.ApprovedBy = []string{"alice"}
	r.PolicyNeeds, r.PolicyMissing = "2 of ops (alice, bob, carol), then 1 of execs (dave)", []string{"ops: 1 more of bob, carol (approved: alice)", "then step 2 of 2"}
	var out bytes.Buffer
	if err := printRequest(&out, newRequestJSON(r)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"initiator olivia", "policy    version 2, tier large", "needs     2 of ops", "missing ops: 1 more of bob, carol (approved: alice); then step 2 of 2"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("lacks %q:\n%s", want, out.String())
		}
	}
	w := testRequest(apipb.RequestState_REQUEST_STATE_WITHDRAWN)
	w.Error = "the wallet's policy changed"
	if p := newRequestJSON(w).progress(); p != "withdrawn: the wallet's policy changed" {
		t.Fatal(p)
	}
	a := testRequest(apipb.RequestState_REQUEST_STATE_APPROVED)
	a.ApprovedBy, a.SignAfter = []string{"alice", "bob"}, 1_800_003_600
	if p := newRequestJSON(a).progress(); !strings.Contains(p, "time-locked: signed from 2027-01-15T09:00:00Z") {
		t.Fatal(p)
	}
}
