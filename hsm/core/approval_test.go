package core

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// approval signs, as device name, an answer to prompt p.
func (w *world) approval(name string, p *signed.Prompt, dec signed.Decision, counter uint64, tamper func(*signed.Approval)) []byte {
	w.t.Helper()
	d := w.dev[name]
	a := &signed.Approval{Nonce: p.Nonce, Decision: dec, Counter: counter, DeviceID: d.id()}
	copy(a.PromptDigest[:], p.Digest())
	if tamper != nil {
		tamper(a)
	}
	if err := a.Sign(d.identity); err != nil {
		w.t.Fatal(err)
	}
	return a.Marshal()
}

// promptFor is the prompt of sub for device name.
func (w *world) promptFor(sub *Submitted, name string) *signed.Prompt {
	w.t.Helper()
	for _, p := range sub.Prompts {
		if p.DeviceID == w.dev[name].id() {
			return p
		}
	}
	w.t.Fatalf("no prompt for %s", name)
	return nil
}

func (w *world) answer(requestID, via string, approval []byte) (*AnswerResult, error) {
	return w.core.Answer(context.Background(), Answer{RequestID: requestID, Device: w.dev[via].id(), Approval: approval})
}

func withdrawn(w *world, requestID string) []string {
	var out []string
	for _, f := range w.failed {
		if f.RequestID == requestID && f.Withdrawn && f.Code == pb.FailureCode_FAILURE_ACTION_CANCELLED {
			out = append(out, f.RequestID)
		}
	}
	return out
}

func TestApprovalQuorumMet(t *testing.T) {
	w := newWorld(t)
	sub := w.submit(w.transfer("q"))
	if len(sub.Prompts) != 3 {
		t.Fatalf("%d prompts, want one per approver device", len(sub.Prompts))
	}
	w.deliver(sub)
	w.press("alice", signed.Approve)
	if r := w.request(sub.Request.ID); r.State != RequestPending {
		t.Fatalf("state %s after one approval of two", r.State)
	}
	w.press("bob", signed.Approve)

	for _, n := range []string{"alice", "bob", "carol"} {
		if len(w.dev[n].shown) != 1 || len(w.dev[n].refused) != 0 {
			t.Fatalf("%s: shown %d prompts, refused %v", n, len(w.dev[n].shown), w.dev[n].refused)
		}
	}
	for i, a := range w.answers {
		if a.err != nil {
			t.Fatalf("answer %d from %s: %v", i, a.device, a.err)
		}
	}
	r := w.request(sub.Request.ID)
	if r.State != RequestSigned || !slices.Equal(r.ApprovedBy(), []string{"alice", "bob"}) || len(r.RejectedBy()) != 0 {
		t.Fatalf("request %s: state %s, approved by %v", r.ID, r.State, r.ApprovedBy())
	}
	var tx wire.MsgTx
	if err := tx.Deserialize(bytes.NewReader(r.SignedTx)); err != nil || tx.TxHash().String() != r.TxID {
		t.Fatalf("signed transaction: %v (txid %s, request %s)", err, tx.TxHash(), r.TxID)
	}
	if len(tx.TxIn) != 2 || len(tx.TxIn[0].Witness) != 2 || len(tx.TxIn[0].Witness[1]) != 33 {
		t.Fatalf("witness: %v", tx.TxIn[0].Witness)
	}
	if !bytes.HasPrefix(r.SignedPSBT, []byte("psbt\xff")) {
		t.Fatal("no signed PSBT")
	}
	if got := w.custody.signatures(); got != 2 {
		t.Fatalf("%d HSM signatures, want one per input", got)
	}
	// Carol's prompt was withdrawn once the quorum was met.
	if len(withdrawn(w, r.ID)) != 1 || w.dev["carol"].showing != nil {
		t.Fatalf("carol's prompt not withdrawn: %+v", w.failed)
	}
	if w.counter("alice") != 1 || w.counter("bob") != 1 || w.counter("carol") != 0 {
		t.Fatal("counters not stored")
	}
	// Signed at most once: a late approval changes nothing.
	if _, err := w.answer(r.ID, "carol", w.approval("carol", w.promptFor(sub, "carol"), signed.Approve, 1, nil)); !errors.Is(err, ErrRequestClosed) {
		t.Fatalf("late approval: %v", err)
	}
	if _, err := w.core.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w.custody.signatures() != 2 || w.request(r.ID).State != RequestSigned {
		t.Fatal("signed again")
	}
}

// TestRefusedAnswerWriteReleasesNothing: the HSM signs the deciding
// answer's transaction before that answer is stored; when the database
// refuses the write, Answer fails, nothing of the answer is stored (no
// counter, no approval, no spend, no signed transaction), and the same
// approval, delivered again once the database takes writes, is counted
// once and signs the request.
func TestRefusedAnswerWriteReleasesNothing(t *testing.T) {
	w := newWorld(t)
	sub := w.submit(w.transfer("r"))
	if _, err := w.answer(sub.Request.ID, "alice", w.approval("alice", w.promptFor(sub, "alice"), signed.Approve, 1, nil)); err != nil {
		t.Fatal(err)
	}
	bob := w.approval("bob", w.promptFor(sub, "bob"), signed.Approve, 1, nil)
	refused := errors.New("database refuses writes")
	*w.requests.refuseAnswers = refused
	if _, err := w.answer(sub.Request.ID, "bob", bob); !errors.Is(err, refused) {
		t.Fatalf("answer while the database refuses it: %v", err)
	}
	r := w.request(sub.Request.ID)
	if r.State != RequestPending || len(r.Answers) != 1 || r.SignedTx != nil || r.SignedPSBT != nil {
		t.Fatalf("after the refused write: state %s, %d answers, %d bytes signed", r.State, len(r.Answers), len(r.SignedTx))
	}
	if w.counter("bob") != 0 || len(ledgerIDs(t, w)) != 0 {
		t.Fatalf("after the refused write: bob's counter %d, ledger %v", w.counter("bob"), ledgerIDs(t, w))
	}
	*w.requests.refuseAnswers = nil
	if _, err := w.answer(sub.Request.ID, "bob", bob); err != nil {
		t.Fatal(err)
	}
	r = w.request(sub.Request.ID)
	if r.State != RequestSigned || r.SignedTx == nil || w.counter("bob") != 1 || !slices.Equal(ledgerIDs(t, w), []string{r.ID}) {
		t.Fatalf("after the write was taken: state %s, bob's counter %d, ledger %v", r.State, w.counter("bob"), ledgerIDs(t, w))
	}
	if _, err := w.answer(sub.Request.ID, "bob", bob); err == nil {
		t.Fatal("the same approval counted twice")
	}
}

func TestApprovalQuorumNotMet(t *testing.T) {
	w := newWorld(t)
	w.dev["alice"].decision = signed.Approve
	sub := w.submit(w.transfer("n"))
	w.deliver(sub)
	r := w.request(sub.Request.ID)
	if r.State != RequestPending || !slices.Equal(r.ApprovedBy(), []string{"alice"}) {
		t.Fatalf("state %s, approved by %v", r.State, r.ApprovedBy())
	}
	if w.custody.signatures() != 0 {
		t.Fatal("signed with one approval of two")
	}
	// Nobody else answers: the request expires. Reads show it at once;
	// Tick stores it and withdraws the prompts still shown.
	w.clock.advance(DefaultPromptExpiry + time.Second)
	if r := w.request(sub.Request.ID); r.State != RequestExpired {
		t.Fatalf("read after expiry: %s", r.State)
	}
	withdraw, err := w.core.Tick(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(withdraw) != 2 {
		t.Fatalf("withdraw %v, want bob's and carol's", withdraw)
	}
	w.withdraw(withdraw)
	stored, _ := w.requests.GetRequest(context.Background(), sub.Request.ID)
	if stored.State != RequestExpired || len(withdrawn(w, sub.Request.ID)) != 2 {
		t.Fatalf("stored %s; withdrawn %v", stored.State, w.failed)
	}
}

func TestApprovalRejection(t *testing.T) {
	for _, tc := range []struct {
		name  string
		order []string // who presses, in order; bob rejects, the others approve
	}{
		{"after an approval", []string{"alice", "bob"}},
		{"first", []string{"bob", "alice"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			sub := w.submit(w.transfer("r"))
			w.deliver(sub)
			for _, n := range tc.order {
				if w.dev[n].showing == nil {
					break // withdrawn
				}
				dec := signed.Approve
				if n == "bob" {
					dec = signed.Reject
				}
				w.press(n, dec)
			}
			r := w.request(sub.Request.ID)
			if r.State != RequestRejected || !slices.Equal(r.RejectedBy(), []string{"bob"}) {
				t.Fatalf("state %s, rejected by %v", r.State, r.RejectedBy())
			}
			if w.custody.signatures() != 0 || r.SignedTx != nil {
				t.Fatal("signed after a rejection")
			}
			if w.counter("bob") != 1 {
				t.Fatal("the rejection's counter was not stored: a rejection is a signed answer too")
			}
			// Everyone still shown the prompt had it withdrawn, and no
			// approval counts any more.
			for _, n := range []string{"alice", "carol"} {
				if w.dev[n].showing != nil {
					t.Errorf("%s still shows the prompt", n)
				}
			}
			_, err := w.answer(r.ID, "carol", w.approval("carol", w.promptFor(sub, "carol"), signed.Approve, 9, nil))
			if !errors.Is(err, ErrRequestClosed) {
				t.Fatalf("approval after the rejection: %v", err)
			}
		})
	}
}

func TestApprovalExpiredPrompt(t *testing.T) {
	w := newWorld(t)
	sub := w.submit(w.transfer("e"))
	w.deliver(sub)
	w.clock.advance(DefaultPromptExpiry + time.Second)
	w.press("alice", signed.Approve)
	a := w.lastAnswer()
	if !errors.Is(a.err, ErrExpired) {
		t.Fatalf("approval after expiry: %v", a.err)
	}
	if w.counter("alice") != 0 {
		t.Fatal("an expired answer consumed the counter")
	}
	if r := w.request(sub.Request.ID); r.State != RequestExpired || len(r.Answers) != 0 {
		t.Fatalf("state %s, %d answers", r.State, len(r.Answers))
	}
	// The others' prompts were withdrawn with the expiry.
	if len(withdrawn(w, sub.Request.ID)) != 2 {
		t.Fatalf("withdrawn: %+v", w.failed)
	}
	// Exactly at the expiry time an answer still counts.
	w2 := newWorld(t)
	sub2 := w2.submit(w2.transfer("e2"))
	w2.deliver(sub2)
	w2.clock.advance(DefaultPromptExpiry)
	w2.press("alice", signed.Approve)
	if err := w2.lastAnswer().err; err != nil {
		t.Fatalf("answer at the expiry time: %v", err)
	}
}

func TestApprovalFromUnpairedOrRevokedDevice(t *testing.T) {
	t.Run("unpaired", func(t *testing.T) {
		w := newWorld(t)
		sub := w.submit(w.transfer("u"))
		// A device the core never paired signs an answer to alice's
		// prompt, naming itself.
		stranger := newTestDevice(t)
		w.dev["stranger"] = stranger
		p := w.promptFor(sub, "alice")
		_, err := w.answer(sub.Request.ID, "stranger", w.approval("stranger", p, signed.Approve, 1, nil))
		if !errors.Is(err, ErrNotPaired) {
			t.Fatalf("unpaired device: %v", err)
		}
		// Naming alice's device instead, its signature fails.
		_, err = w.answer(sub.Request.ID, "alice", w.approval("stranger", p, signed.Approve, 1, func(a *signed.Approval) { a.DeviceID = w.dev["alice"].id() }))
		if !errors.Is(err, ErrBadApproval) {
			t.Fatalf("unpaired device posing as alice's: %v", err)
		}
		if r := w.request(sub.Request.ID); len(r.Answers) != 0 {
			t.Fatal("an answer was counted")
		}
	})
	t.Run("revoked", func(t *testing.T) {
		w := newWorld(t)
		w.dev["alice"].decision = signed.Approve
		sub := w.submit(w.transfer("v"))
		w.deliver(sub)
		if _, err := w.core.Revoke(context.Background(), w.dev["bob"].id()); err != nil {
			t.Fatal(err)
		}
		// Bob's device still shows the prompt (its link is still up in
		// this test; hsmd closes it) and approves.
		w.press("bob", signed.Approve)
		if err := w.lastAnswer().err; !errors.Is(err, ErrRevoked) {
			t.Fatalf("revoked device's approval: %v", err)
		}
		if r := w.request(sub.Request.ID); r.State != RequestPending || len(r.ApprovedBy()) != 1 {
			t.Fatalf("state %s, approved by %v", r.State, r.ApprovedBy())
		}
		if w.custody.signatures() != 0 || w.counter("bob") != 0 {
			t.Fatal("a revoked device's approval had an effect")
		}
	})
}

func TestApprovalForAnotherPrompt(t *testing.T) {
	w := newWorld(t)
	sub1 := w.submit(w.transfer("p1"))
	sub2 := w.submit(w.transfer("p2"))
	p1, p2 := w.promptFor(sub1, "alice"), w.promptFor(sub2, "alice")
	for name, tamper := range map[string]func(*signed.Approval){
		"another request's prompt": func(a *signed.Approval) { copy(a.PromptDigest[:], p2.Digest()); a.Nonce = p2.Nonce },
		"another digest":           func(a *signed.Approval) { copy(a.PromptDigest[:], p2.Digest()) },
		"another nonce":            func(a *signed.Approval) { a.Nonce = p2.Nonce },
		"bob's prompt": func(a *signed.Approval) {
			bp := w.promptFor(sub1, "bob")
			copy(a.PromptDigest[:], bp.Digest())
			a.Nonce = bp.Nonce
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := w.answer(sub1.Request.ID, "alice", w.approval("alice", p1, signed.Approve, 1, tamper))
			if !errors.Is(err, ErrPromptMismatch) {
				t.Fatalf("got %v, want ErrPromptMismatch", err)
			}
		})
	}
	// The same, through the channel: the device answers the prompt it was
	// shown with an approval of another.
	w.dev["alice"].decision = signed.Approve
	w.dev["alice"].tamper = func(a *signed.Approval) { copy(a.PromptDigest[:], p2.Digest()); a.Nonce = p2.Nonce }
	w.deliver(&Submitted{Request: sub1.Request, Prompts: []*signed.Prompt{p1}})
	if err := w.lastAnswer().err; !errors.Is(err, ErrPromptMismatch) {
		t.Fatalf("through the channel: %v", err)
	}
	if r := w.request(sub1.Request.ID); len(r.Answers) != 0 || w.counter("alice") != 0 {
		t.Fatal("a mismatched approval was counted")
	}
}

func TestApprovalReplayed(t *testing.T) {
	w := newWorld(t)
	sub1 := w.submit(w.transfer("r1"))
	sub2 := w.submit(w.transfer("r2"))
	p1, p2 := w.promptFor(sub1, "alice"), w.promptFor(sub2, "alice")
	first := w.approval("alice", p1, signed.Approve, 5, nil)
	if _, err := w.answer(sub1.Request.ID, "alice", first); err != nil {
		t.Fatal(err)
	}
	if w.counter("alice") != 5 {
		t.Fatalf("counter %d stored, want 5", w.counter("alice"))
	}
	for _, tc := range []struct {
		name    string
		request string
		raw     []byte
		want    error
	}{
		{"same approval again", sub1.Request.ID, first, ErrAlreadyAnswered},
		{"same approval for another request", sub2.Request.ID, first, ErrPromptMismatch},
		{"equal counter", sub2.Request.ID, w.approval("alice", p2, signed.Approve, 5, nil), ErrReplay},
		{"lower counter", sub2.Request.ID, w.approval("alice", p2, signed.Approve, 4, nil), ErrReplay},
		{"zero counter", sub2.Request.ID, w.approval("alice", p2, signed.Reject, 0, nil), ErrReplay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := w.answer(tc.request, "alice", tc.raw); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if r := w.request(sub2.Request.ID); len(r.Answers) != 0 {
		t.Fatal("a replayed approval was counted")
	}
	// A fresh counter is accepted.
	if _, err := w.answer(sub2.Request.ID, "alice", w.approval("alice", p2, signed.Approve, 6, nil)); err != nil {
		t.Fatal(err)
	}
	// Through the channel: a device whose counter went back (a restored
	// backup) is refused.
	sub3 := w.submit(w.transfer("r3"))
	w.dev["alice"].counter = 2
	w.dev["alice"].decision = signed.Approve
	w.deliver(&Submitted{Prompts: []*signed.Prompt{w.promptFor(sub3, "alice")}})
	if err := w.lastAnswer().err; !errors.Is(err, ErrReplay) {
		t.Fatalf("stale device counter: %v", err)
	}
}

func TestApprovalFromDeviceAForDeviceBsPrompt(t *testing.T) {
	w := newWorld(t)
	sub := w.submit(w.transfer("ab"))
	id := sub.Request.ID
	pa, pb := w.promptFor(sub, "alice"), w.promptFor(sub, "bob")
	bobs := w.approval("bob", pb, signed.Approve, 1, nil)
	for _, tc := range []struct {
		name string
		via  string
		raw  []byte
		want error
	}{
		// A relay moves bob's genuine approval onto alice's channel.
		{"bob's approval on alice's channel", "alice", bobs, ErrWrongDevice},
		// Alice's device signs an approval naming bob's device.
		{"alice signs as bob, on her channel", "alice", w.approval("alice", pb, signed.Approve, 1, func(a *signed.Approval) { a.DeviceID = w.dev["bob"].id() }), ErrWrongDevice},
		{"alice signs as bob, on bob's channel", "bob", w.approval("alice", pb, signed.Approve, 1, func(a *signed.Approval) { a.DeviceID = w.dev["bob"].id() }), ErrBadApproval},
		// Alice's device approves bob's prompt as itself.
		{"alice approves bob's prompt", "alice", w.approval("alice", pb, signed.Approve, 1, nil), ErrPromptMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := w.answer(id, tc.via, tc.raw); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if r := w.request(id); len(r.Answers) != 0 || w.counter("alice") != 0 || w.counter("bob") != 0 {
		t.Fatal("a swapped approval had an effect")
	}
	// Their own answers still work afterwards.
	if _, err := w.answer(id, "alice", w.approval("alice", pa, signed.Approve, 1, nil)); err != nil {
		t.Fatal(err)
	}
	if res, err := w.answer(id, "bob", bobs); err != nil || res.Request.State != RequestSigned {
		t.Fatalf("bob's own approval: %v", err)
	}
}

func TestApprovalBadSignature(t *testing.T) {
	w := newWorld(t)
	sub := w.submit(w.transfer("s"))
	p := w.promptFor(sub, "alice")
	good := w.approval("alice", p, signed.Approve, 1, nil)
	for name, raw := range map[string][]byte{
		"flipped signature bit": func() []byte { b := bytes.Clone(good); b[len(b)-5] ^= 1; return b }(),
		"flipped decision": func() []byte {
			b := bytes.Clone(good)
			b[2+len(signed.ApprovalLabel)+64] = byte(signed.Reject)
			return b
		}(),
		"garbage": {1, 2, 3},
		"empty":   nil,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := w.answer(sub.Request.ID, "alice", raw); !errors.Is(err, ErrBadApproval) {
				t.Fatalf("got %v, want ErrBadApproval", err)
			}
		})
	}
	// Signed by another key of the same algorithm.
	w.dev["alice"].signWith = newTestDevice(t).identity
	w.dev["alice"].decision = signed.Approve
	w.deliver(sub)
	if err := w.lastAnswer().err; !errors.Is(err, ErrBadApproval) {
		t.Fatalf("signed by another key: %v", err)
	}
}

// A user with several devices counts once: the first answer is the
// user's, and the user's other prompts are withdrawn.
func TestApprovalCountsUsersNotDevices(t *testing.T) {
	w := newWorld(t, "alice", "alice2", "bob")
	sub := w.submit(w.transfer("u"))
	if len(sub.Prompts) != 3 {
		t.Fatalf("%d prompts, want one per device", len(sub.Prompts))
	}
	w.deliver(sub)
	w.press("alice2", signed.Approve)
	if w.dev["alice"].showing != nil {
		t.Fatal("alice's other device still shows the prompt")
	}
	if w.dev["bob"].showing == nil {
		t.Fatal("bob's prompt was withdrawn")
	}
	// Alice's first device answering anyway does not count twice.
	_, err := w.answer(sub.Request.ID, "alice", w.approval("alice", w.promptFor(sub, "alice"), signed.Approve, 1, nil))
	if !errors.Is(err, ErrAlreadyAnswered) {
		t.Fatalf("second device of the same user: %v", err)
	}
	if r := w.request(sub.Request.ID); r.State != RequestPending {
		t.Fatalf("one user met a quorum of two: %s", r.State)
	}
	w.press("bob", signed.Approve)
	if r := w.request(sub.Request.ID); r.State != RequestSigned || !slices.Equal(r.ApprovedBy(), []string{"alice", "bob"}) {
		t.Fatalf("state %s, approved by %v", r.State, r.ApprovedBy())
	}
}

// An approver whose device connects after the request was submitted gets
// the prompt then; a prompt answered is not sent again.
func TestPendingPromptsForLateDevice(t *testing.T) {
	w := newWorld(t)
	delete(w.links, "carol") // carol's device is not connected
	sub := w.submit(w.transfer("late"))
	w.dev["alice"].decision = signed.Approve
	w.deliver(sub)
	ctx := context.Background()
	w.connect("carol")
	ps, err := w.core.PendingPrompts(ctx, w.dev["carol"].id())
	if err != nil || len(ps) != 1 {
		t.Fatalf("carol's pending prompts: %v, %v", ps, err)
	}
	// The same prompt, issued afresh: another nonce, signed again.
	first := w.promptFor(sub, "carol")
	again := *ps[0]
	if again.Nonce == first.Nonce {
		t.Fatal("the prompt was sent again with the nonce it was first issued with")
	}
	again.Nonce, again.Signature = first.Nonce, first.Signature
	if !bytes.Equal(again.Marshal(), first.Marshal()) {
		t.Fatalf("the prompt issued again differs from the first in more than its nonce")
	}
	if err := ps[0].Verify(w.identity.Algorithm(), w.identity.PublicKey()); err != nil {
		t.Fatal(err)
	}
	if ps, _ := w.core.PendingPrompts(ctx, w.dev["alice"].id()); len(ps) != 0 {
		t.Fatalf("alice answered, yet has %d pending prompts", len(ps))
	}
	w.dev["carol"].decision = signed.Approve
	w.deliver(&Submitted{Prompts: ps})
	if r := w.request(sub.Request.ID); r.State != RequestSigned {
		t.Fatalf("state %s", r.State)
	}
	if ps, _ := w.core.PendingPrompts(ctx, w.dev["bob"].id()); len(ps) != 0 {
		t.Fatal("a signed request's prompt is pending")
	}
}

func TestSubmitRefuses(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	foreign := packet(t, []*wire.MsgTx{coin("x", 100_000_000, foreignScript("someone"))}, []*wire.TxOut{wire.NewTxOut(90_000_000, foreignScript("dest"))})
	for name, psbt := range map[string][]byte{
		"someone else's coin": foreign,
		"garbage":             []byte("cHNidP8 not a psbt"),
		"empty":               nil,
		"outputs above inputs": packet(t, w.coins("big"), []*wire.TxOut{
			wire.NewTxOut(200_000_000, foreignScript("dest"))}),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := w.core.Submit(ctx, SubmitRequest{Wallet: "treasury", Initiator: "operator", PSBT: psbt}); !errors.Is(err, ErrTransactionRefused) {
				t.Fatalf("got %v, want ErrTransactionRefused", err)
			}
		})
	}
	if _, err := w.core.Submit(ctx, SubmitRequest{Wallet: "nope", Initiator: "operator", PSBT: w.transfer("a")}); !errors.Is(err, ErrWalletNotFound) {
		t.Fatalf("unknown wallet: %v", err)
	}
	if _, err := w.core.CreateWallet(ctx, CreateWalletRequest{Name: "empty", Network: 5, Approvers: []string{"alice"}, Quorum: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.core.Submit(ctx, SubmitRequest{Wallet: "empty", Initiator: "operator", PSBT: w.transfer("a")}); !errors.Is(err, ErrTransactionRefused) || !strings.Contains(err.Error(), "no address") {
		t.Fatalf("wallet without address: %v", err)
	}
	// With two of three approvers revoked, a quorum of two cannot be met.
	for _, n := range []string{"bob", "carol"} {
		if _, err := w.core.Revoke(ctx, w.dev[n].id()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.core.Submit(ctx, SubmitRequest{Wallet: "treasury", Initiator: "operator", PSBT: w.transfer("a")}); !errors.Is(err, ErrQuorumUnreachable) || !strings.Contains(err.Error(), "only 1 of its approvers") {
		t.Fatalf("quorum out of reach: %v", err)
	}
	if rs, _ := w.core.Requests(ctx); len(rs) != 0 {
		t.Fatalf("%d requests stored from refused submissions", len(rs))
	}
}

func TestWalletCreation(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	for name, req := range map[string]CreateWalletRequest{
		"bad name":          {Name: "tre asury", Network: 5, Approvers: []string{"alice"}, Quorum: 1},
		"long name":         {Name: strings.Repeat("a", MaxWalletName+1), Network: 5, Approvers: []string{"alice"}, Quorum: 1},
		"unknown network":   {Name: "w", Network: 99, Approvers: []string{"alice"}, Quorum: 1},
		"no approvers":      {Name: "w", Network: 5, Quorum: 1},
		"quorum zero":       {Name: "w", Network: 5, Approvers: []string{"alice"}, Quorum: 0},
		"quorum too high":   {Name: "w", Network: 5, Approvers: []string{"alice", "bob"}, Quorum: 3},
		"approver twice":    {Name: "w", Network: 5, Approvers: []string{"alice", "alice"}, Quorum: 1},
		"unpaired approver": {Name: "w", Network: 5, Approvers: []string{"alice", "dave"}, Quorum: 1},
	} {
		if _, err := w.core.CreateWallet(ctx, req); !errors.Is(err, ErrInvalidWallet) {
			t.Errorf("%s: %v, want ErrInvalidWallet", name, err)
		}
	}
	if _, err := w.core.CreateWallet(ctx, CreateWalletRequest{Name: "treasury", Network: 5, Approvers: []string{"alice"}, Quorum: 1}); !errors.Is(err, ErrWalletExists) {
		t.Fatalf("existing name: %v", err)
	}
	// Addresses: P2WPKH on the wallet's network, one new HSM key each; a
	// label already on the token is skipped.
	if _, err := w.custody.GenerateKey(ctx, hsmKeyRequest("opencustody-treasury-2")); err != nil {
		t.Fatal(err)
	}
	wr, k, err := w.core.NewAddress(ctx, "treasury")
	if err != nil {
		t.Fatal(err)
	}
	if k.Index != 2 || len(wr.Keys) != 3 || k.Ref != "pkcs11:object=opencustody-treasury-3" {
		t.Fatalf("key %+v", k)
	}
	addr, err := k.Address(wr.Network)
	if err != nil || !strings.HasPrefix(addr, "sb1q") {
		t.Fatalf("address %q, %v", addr, err)
	}
	stored, _ := w.core.Wallet(ctx, "treasury")
	if len(stored.Keys) != 3 || !bytes.Equal(stored.Keys[2].PublicKey, k.PublicKey) {
		t.Fatal("new key not stored")
	}
	// A backup-able wallet has backup-able keys; the others never do.
	if len(w.custody.backupable) != 0 {
		t.Fatalf("keys made backup-able for a wallet that is not: %v", w.custody.backupable)
	}
	if _, err := w.core.CreateWallet(ctx, CreateWalletRequest{Name: "reserve", Network: 5, Approvers: []string{"alice"}, Quorum: 1, Backupable: true}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.core.NewAddress(ctx, "reserve"); err != nil {
		t.Fatal(err)
	}
	if r, _ := w.core.Wallet(ctx, "reserve"); !r.Backupable || !slices.Equal(w.custody.backupable, []string{"opencustody-reserve-0"}) {
		t.Fatalf("backup-able wallet: stored %v, keys made backup-able %v", r.Backupable, w.custody.backupable)
	}
	if ws, err := w.core.Wallets(ctx); err != nil || len(ws) != 2 {
		t.Fatalf("wallets: %d, %v", len(ws), err)
	}
}

// A core without wallet and request stores refuses the approval path.
func TestNoApprovalPath(t *testing.T) {
	c, _ := newTestCore(t, false)
	ctx := context.Background()
	if _, err := c.Submit(ctx, SubmitRequest{Wallet: "w", Initiator: "operator"}); !errors.Is(err, ErrNoApprovalPath) {
		t.Fatal(err)
	}
	if _, err := c.Answer(ctx, Answer{}); !errors.Is(err, ErrNoApprovalPath) {
		t.Fatal(err)
	}
	if _, err := c.Wallets(ctx); !errors.Is(err, ErrNoApprovalPath) {
		t.Fatal(err)
	}
}

// A signing cut short (the daemon stopping) leaves the request approved;
// the next Tick signs it, once.
func TestInterruptedSigningResumes(t *testing.T) {
	w := newWorld(t)
	sub := w.submit(w.transfer("i"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := w.answer(sub.Request.ID, "alice", w.approval("alice", w.promptFor(sub, "alice"), signed.Approve, 1, nil)); err != nil {
		t.Fatal(err)
	}
	_, err := w.core.Answer(ctx, Answer{RequestID: sub.Request.ID, Device: w.dev["bob"].id(),
		Approval: w.approval("bob", w.promptFor(sub, "bob"), signed.Approve, 1, nil)})
	if err == nil || !strings.Contains(err.Error(), "stays approved") {
		t.Fatalf("interrupted signing: %v", err)
	}
	if r := w.request(sub.Request.ID); r.State != RequestApproved {
		t.Fatalf("state %s after an interrupted signing", r.State)
	}
	if _, err := w.core.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r := w.request(sub.Request.ID); r.State != RequestSigned || r.SignedTx == nil {
		t.Fatalf("state %s after Tick", r.State)
	}
	if w.custody.signatures() != 2 {
		t.Fatalf("%d signatures", w.custody.signatures())
	}
}

// Whatever bytes a relay or a device sends as an answer, the core never
// panics, and accepts only alice's own signature over her prompt.
func FuzzAnswer(f *testing.F) {
	w := newWorld(f)
	sub := w.submit(w.transfer("fuzz"))
	p := w.promptFor(sub, "alice")
	f.Add(w.approval("alice", p, signed.Approve, 1, nil))
	f.Add(w.approval("alice", p, signed.Reject, 2, nil))
	f.Add(w.approval("bob", w.promptFor(sub, "bob"), signed.Approve, 1, nil))
	f.Add([]byte{})
	alice := w.dev["alice"]
	initial := w.snapshot()
	f.Fuzz(func(t *testing.T, b []byte) {
		w.restore(initial)
		res, err := w.core.Answer(context.Background(), Answer{RequestID: sub.Request.ID, Device: alice.id(), Approval: b})
		if err != nil {
			if res != nil {
				t.Fatalf("a refused answer came with a result: %v", err)
			}
			return
		}
		a, perr := signed.ParseApproval(b)
		if perr != nil || a.Verify(alice.identity.Algorithm(), alice.identity.PublicKey()) != nil ||
			!bytes.Equal(a.PromptDigest[:], p.Digest()) || a.Nonce != p.Nonce || a.DeviceID != alice.id() {
			t.Fatalf("accepted an answer that is not alice's for her prompt: %x", b)
		}
	})
}

// A request stored as approved without the approvals to prove it — a core
// bug, or a store that lies — is never signed: the signing step counts
// verified approvals itself.
func TestSigningRecountsApprovals(t *testing.T) {
	for name, forge := range map[string]func(r *RequestRecord){
		"state only": func(r *RequestRecord) {},
		"answer copied to another user": func(r *RequestRecord) {
			a := r.Answers[0]
			a.User, a.DeviceID = "bob", promptedDevice(r, "bob")
			r.Answers = append(r.Answers, a)
		},
	} {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			sub := w.submit(w.transfer("x"))
			if _, err := w.answer(sub.Request.ID, "alice", w.approval("alice", w.promptFor(sub, "alice"), signed.Approve, 1, nil)); err != nil {
				t.Fatal(err)
			}
			r := w.request(sub.Request.ID)
			forge(r)
			r.State = RequestApproved
			if err := w.requests.UpdateRequest(context.Background(), r); err != nil {
				t.Fatal(err)
			}
			_, _ = w.core.Tick(context.Background())
			got := w.request(sub.Request.ID)
			if got.State != RequestFailed || !strings.Contains(got.Error, "not enough verified approvals") {
				t.Fatalf("state %s (%s), want failed for want of approvals", got.State, got.Error)
			}
			if n := w.custody.signatures(); n != 0 {
				t.Fatalf("%d signatures", n)
			}
		})
	}
}

// promptedDevice returns the device id the request prompted for user.
func promptedDevice(r *RequestRecord, user string) string {
	for _, p := range r.Prompts {
		if p.User == user {
			return p.DeviceID
		}
	}
	return ""
}
