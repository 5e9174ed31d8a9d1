package core

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// The device handles one prompt at a time: the link queues the others and
// sends the next once the device answered.
func TestLinkQueuesPrompts(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	sub1, sub2 := w.submit(w.transfer("a")), w.submit(w.transfer("b"))
	l, d := w.links["alice"], w.dev["alice"]
	p1, p2 := w.promptFor(sub1, "alice"), w.promptFor(sub2, "alice")
	w.deliver(&Submitted{Prompts: []*signed.Prompt{p1, p2}})
	if len(d.shown) != 1 || d.shown[0].RequestID != sub1.Request.ID {
		t.Fatalf("device shown %d prompts at once", len(d.shown))
	}
	// Delivering a prompt again (a reconnect, a retry) does nothing.
	for _, p := range []*signed.Prompt{p1, p2} {
		if out, err := l.SendPrompt(ctx, p); err != nil || len(out.ToDevice) != 0 {
			t.Fatalf("duplicate prompt: %v, %d messages", err, len(out.ToDevice))
		}
	}
	w.press("alice", signed.Approve)
	if err := w.lastAnswer().err; err != nil {
		t.Fatal(err)
	}
	if len(d.shown) != 2 || d.shown[1].RequestID != sub2.Request.ID {
		t.Fatalf("second prompt not sent after the first answer: %d shown", len(d.shown))
	}
	// A prompt for another device is refused and the channel stays up.
	if _, err := l.SendPrompt(ctx, w.promptFor(sub1, "bob")); err == nil {
		t.Fatal("link sent bob's prompt to alice's device")
	}
	if up, _ := l.Secure(); !up {
		t.Fatal("channel closed")
	}
}

func TestLinkDropsExpiredAndWithdrawnQueuedPrompts(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	sub1 := w.submit(w.transfer("a"))
	w.clock.advance(time.Minute)
	sub2 := w.submit(w.transfer("b"))
	sub3 := w.submit(w.transfer("c"))
	l, d := w.links["alice"], w.dev["alice"]
	w.deliver(&Submitted{Prompts: []*signed.Prompt{w.promptFor(sub1, "alice"), w.promptFor(sub2, "alice"), w.promptFor(sub3, "alice")}})
	out, err := l.WithdrawPrompt(ctx, sub3.Request.ID) // queued: dropped, nothing sent
	if err != nil || len(out.ToDevice) != 0 {
		t.Fatalf("withdrawing a queued prompt: %v, %d messages", err, len(out.ToDevice))
	}
	// sub1's prompt is shown; by the time alice answers, sub2's queued
	// prompt... is still valid, but sub1 has expired.
	w.clock.advance(DefaultPromptExpiry - 30*time.Second)
	w.press("alice", signed.Approve)
	if !errors.Is(w.lastAnswer().err, ErrExpired) {
		t.Fatalf("answer to an expired prompt: %v", w.lastAnswer().err)
	}
	if len(d.shown) != 2 || d.shown[1].RequestID != sub2.Request.ID {
		t.Fatalf("shown %d", len(d.shown))
	}
	// Queue sub3 again behind sub2, then let it expire in the queue.
	if _, err := l.SendPrompt(ctx, w.promptFor(sub3, "alice")); err != nil {
		t.Fatal(err)
	}
	w.clock.advance(2 * time.Minute)
	w.press("alice", signed.Reject)
	if len(d.shown) != 2 {
		t.Fatal("an expired queued prompt was sent")
	}
}

// The core withdraws a prompt just as the device asks for its user: the
// device's ButtonRequest crosses the Cancel. The link must not acknowledge
// it (the device, back to idle, would answer the ButtonAck too), and
// reports the device's Failure as the withdrawn prompt's.
func TestLinkWithdrawCrossesButtonRequest(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	sub := w.submit(w.transfer("x"))
	l, d := w.links["alice"], w.dev["alice"]
	out, err := l.SendPrompt(ctx, w.promptFor(sub, "alice"))
	if err != nil || len(out.ToDevice) != 1 {
		t.Fatalf("send: %v", err)
	}
	buttonRequest := d.handle(out.ToDevice[0])
	out, err = l.WithdrawPrompt(ctx, sub.Request.ID)
	if err != nil || len(out.ToDevice) != 1 {
		t.Fatalf("withdraw: %v", err)
	}
	failure := d.handle(out.ToDevice[0])
	out, err = l.Handle(ctx, buttonRequest)
	if err != nil || len(out.ToDevice) != 0 || len(out.Events) != 0 {
		t.Fatalf("ButtonRequest after the withdrawal: %v, %d messages, events %v", err, len(out.ToDevice), out.Events)
	}
	out, err = l.Handle(ctx, failure)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := find[PromptFailed](out.Events)
	if !ok || !f.Withdrawn || f.Code != pb.FailureCode_FAILURE_ACTION_CANCELLED || f.RequestID != sub.Request.ID {
		t.Fatalf("events %v", out.Events)
	}
	if up, _ := l.Secure(); !up {
		t.Fatal("channel closed")
	}
}

// A device that refuses a prompt answers Failure: reported, and the
// channel stays up for the next one.
func TestLinkPromptRefusedByDevice(t *testing.T) {
	w := newWorld(t)
	sub := w.submit(w.transfer("r"))
	d := w.dev["alice"]
	d.pinned = []byte("another HSM") // the device no longer trusts this core's key
	w.deliver(&Submitted{Prompts: []*signed.Prompt{w.promptFor(sub, "alice")}})
	if len(d.refused) != 1 || len(w.failed) != 1 || w.failed[0].Code != pb.FailureCode_FAILURE_DATA_ERROR || w.failed[0].Withdrawn {
		t.Fatalf("refused %v, failed %+v", d.refused, w.failed)
	}
	if up, _ := w.links["alice"].Secure(); !up {
		t.Fatal("channel closed")
	}
}

// Messages out of the prompt exchange's order close the channel.
func TestLinkPromptProtocolViolations(t *testing.T) {
	for name, msg := range map[string]func(d *testDevice) []byte{
		"ButtonRequest with another code": func(d *testDevice) []byte {
			return d.sealed(&pb.ButtonRequest{Code: pb.ButtonRequestCode_BUTTON_REQUEST_CONFIRM_ACTION})
		},
		"PromptAnswer before ButtonRequest": func(d *testDevice) []byte {
			return d.sealed(&pb.PromptAnswer{Approval: []byte{1}})
		},
	} {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			sub := w.submit(w.transfer("v"))
			l, d := w.links["alice"], w.dev["alice"]
			if _, err := l.SendPrompt(context.Background(), w.promptFor(sub, "alice")); err != nil {
				t.Fatal(err)
			}
			// The device answers the PromptRequest out of order.
			out, err := l.Handle(context.Background(), msg(d))
			if !errors.Is(err, ErrUnexpected) {
				t.Fatalf("got %v, want ErrUnexpected", err)
			}
			if _, ok := find[ChannelDown](out.Events); !ok {
				t.Fatalf("channel not closed: %v", out.Events)
			}
		})
	}
	// A PromptAnswer with no prompt out is refused too.
	w := newWorld(t)
	if _, err := w.links["bob"].Handle(context.Background(), w.dev["bob"].sealed(&pb.PromptAnswer{Approval: []byte{1}})); !errors.Is(err, ErrUnexpected) {
		t.Fatalf("unsolicited answer: %v", err)
	}
}

// A device paired in this link's channel gets prompts only once the link
// opened a new channel in which the device accepts the pinned core.
func TestPromptsAfterPairing(t *testing.T) {
	w := newWorld(t)
	w.core.ceremony.Store(true)
	ctx := context.Background()
	d := newTestDevice(t)
	d.now = w.clock.Now
	l := w.core.Attach(d.features())
	out, err := l.StartPairing(ctx, "dave", RoleApprover)
	if _, err := pump(t, l, d, out, err); err != nil {
		t.Fatal(err)
	}
	p := &signed.Prompt{Kind: signed.PromptTransaction, RequestID: "r1", DeviceID: d.id(), NotAfter: w.clock.Now().Add(time.Minute),
		Title: TransferTitle, Fields: []signed.Field{{Label: "Wallet", Value: "x"}}}
	if err := p.Sign(w.identity); err != nil {
		t.Fatal(err)
	}
	if _, err := l.SendPrompt(ctx, p); !errors.Is(err, ErrNoChannel) {
		t.Fatalf("prompt in a pairing session: %v", err)
	}
	events := d.decide(t, l)
	out, err = l.OperatorDecision(ctx, true)
	more, err := pump(t, l, d, out, err)
	if err != nil {
		t.Fatal(err)
	}
	events = append(events, more...)
	if _, ok := find[PairingDone](events); !ok {
		t.Fatalf("not paired: %v", events)
	}
	if up, ok := find[ChannelUp](more); !ok || up.Device == nil || up.Device.User != "dave" {
		t.Fatalf("no full channel after pairing: %v", more)
	}
	out, err = l.SendPrompt(ctx, p)
	if _, err := pump(t, l, d, out, err); err != nil {
		t.Fatal(err)
	}
	if len(d.shown) != 1 || len(d.refused) != 0 {
		t.Fatalf("after pairing: shown %d, refused %v", len(d.shown), d.refused)
	}
}
