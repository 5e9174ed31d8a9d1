package hsmd_test

import (
	"errors"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// An approval lost on its way to hsmd (the relay dropped it; the channel
// then went down) is asked for again once the device is back: hsmd issues
// the prompt afresh, under a new nonce, since a device refuses a prompt
// it has already answered. The request then completes on the device's
// second answer, counted once.
func TestE2ELostAnswerIsAskedAgain(t *testing.T) {
	w := newWorld(t, 3)
	users := []string{"alice", "bob", "carol"}
	addrs := w.approverWallet("treasury", 2, users...)
	alice := w.emus[0]

	// The relay passes alice's ButtonRequest and drops what follows it
	// from her device: her answer.
	secure := 0
	w.taps.arm(alice.discoveryID(), func(dir direction, env []byte) ([][]byte, bool) {
		if dir != toHost || !isSecure(env) {
			return [][]byte{env}, false
		}
		secure++
		if secure == 1 {
			return [][]byte{env}, false
		}
		return nil, true
	})
	req := w.submit(w.hsmd, "treasury", addrs, 50_000_000)
	first := w.promptScreen(alice, req.GetId())
	if _, err := alice.dl.ConfirmAll(w.ctx); err != nil {
		t.Fatal(err)
	}
	until(t, w.ctx, "alice's answer dropped", func() error {
		if w.taps.armed(alice.discoveryID()) {
			return errors.New("not yet")
		}
		return nil
	})
	w.taps.settle(t, alice.discoveryID(), 300*time.Millisecond)
	if c := alice.Store().Counter(); c != 1 {
		t.Fatalf("alice's device counter %d, want 1 (it answered)", c)
	}
	if r := w.waitRequestState(w.hsmd, req.GetId(), "pending", func(r *apipb.Request) bool {
		return r.GetState() == apipb.RequestState_REQUEST_STATE_PENDING
	}); len(r.GetAnswers()) != 0 {
		t.Fatalf("hsmd counted %v", r.GetAnswers())
	}

	// Her device goes off and on: the channel is new, the prompt too.
	w.cycle(w.hsmd, alice)
	w.waitChannel(w.hsmd, alice, true)
	again := w.promptScreen(alice, req.GetId())
	if again.Text != first.Text {
		t.Fatalf("the prompt shown again differs:\n%s\nfirst:\n%s", again.Text, first.Text)
	}
	if _, err := alice.dl.ConfirmAll(w.ctx); err != nil {
		t.Fatal(err)
	}
	w.waitRequestState(w.hsmd, req.GetId(), "alice's approval counted", func(r *apipb.Request) bool {
		return len(r.GetApprovedBy()) == 1 && r.GetApprovedBy()[0] == "alice"
	})
	w.promptScreen(w.emus[1], req.GetId())
	if _, err := w.emus[1].dl.ConfirmAll(w.ctx); err != nil {
		t.Fatal(err)
	}
	r := w.waitRequestState(w.hsmd, req.GetId(), "signed", func(r *apipb.Request) bool {
		return r.GetState() == apipb.RequestState_REQUEST_STATE_SIGNED
	})
	if len(r.GetAnswers()) != 2 || r.GetAnswers()[0].GetCounter() != 2 {
		t.Fatalf("answers %v: want alice's second answer (counter 2), then bob's", r.GetAnswers())
	}
}
