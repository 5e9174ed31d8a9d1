package hsmd_test

import (
	"sync"
	"testing"

	"github.com/opencustodynet/opencustody/emulator/debuglink"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// A backlog of requests, each approved at once on every device: a device
// answers its next prompt while hsmd still checks its last answer, so its
// answers reach the core back to back. Every request must be signed. When
// hsmd checked a device's answers in parallel, a later answer (a higher
// counter) could be accepted first and the earlier ones refused as stale,
// leaving their requests pending for good.
func TestE2EBacklogOfRequestsAllSigned(t *testing.T) {
	w := newWorld(t, 3)
	users := []string{"alice", "bob", "carol"}
	addrs := w.approverWallet("treasury", 2, users...)
	for _, e := range w.emus {
		if err := e.dl.SetRules(w.ctx, []debuglink.Rule{{Pattern: ".", Action: "confirm"}}); err != nil {
			t.Fatal(err)
		}
	}
	cust := apipb.NewCustodyClient(w.hsmd.dial(t, "operator"))
	const requests = 60
	ids := make(chan string, requests)
	var wg sync.WaitGroup
	for c := range 3 {
		wg.Go(func() {
			for i := c; i < requests; i += 3 {
				r, err := cust.Submit(w.ctx, &apipb.SubmitRequest{Wallet: "treasury", Initiator: "operator", Psbt: benchPSBT(t, addrs)})
				if err != nil {
					t.Error(err)
					return
				}
				ids <- r.GetId()
			}
		})
	}
	wg.Wait()
	close(ids)
	if t.Failed() {
		t.FailNow()
	}
	for id := range ids {
		r := w.waitRequestState(w.hsmd, id, "signed", func(r *apipb.Request) bool {
			return r.GetState() == apipb.RequestState_REQUEST_STATE_SIGNED
		})
		if len(r.GetApprovedBy()) != 2 {
			t.Errorf("request %s signed with approvals of %v", id, r.GetApprovedBy())
		}
	}
}
