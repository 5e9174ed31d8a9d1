package core

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/opencustodynet/opencustody/protocol/signed"
)

// noteHandler is a change kind for tests: the payload is a note shown on
// screen; applying it appends the note to applied. Without apply, the
// daemon carries the change out.
type noteHandler struct {
	applied []string
	fail    error
}

func (h *noteHandler) Describe(_ context.Context, subject string, payload []byte) ([]signed.Field, error) {
	if len(payload) == 0 {
		return nil, errors.New("empty note")
	}
	return []signed.Field{{Label: "Note", Value: string(payload)}}, nil
}

type applyingNoteHandler struct{ *noteHandler }

func (h applyingNoteHandler) Apply(_ context.Context, ch *ChangeRecord) (string, error) {
	if h.fail != nil {
		return "", h.fail
	}
	h.applied = append(h.applied, string(ch.Payload))
	return "noted " + string(ch.Payload), nil
}

// adminWorld is the approval world with three admins (root1..3) and an
// admin quorum of 2.
func adminWorld(t *testing.T) (*world, *noteHandler) {
	t.Helper()
	w := newWorld(t)
	for _, n := range []string{"root1", "root2", "root3"} {
		w.pairAs(n, n, RoleAdmin)
		w.connect(n)
	}
	if err := w.changes.PutGovernance(context.Background(), &GovernanceRecord{AdminQuorum: 2}); err != nil {
		t.Fatal(err)
	}
	h := &noteHandler{}
	w.handlers["note"] = applyingNoteHandler{h}
	w.handlers["daemon-note"] = h
	return w, h
}

func (w *world) propose(kind ChangeKind, note, initiator string) *Proposed {
	w.t.Helper()
	p, err := w.core.ProposeChange(context.Background(), ProposeChangeRequest{Kind: kind, Subject: "s", Payload: []byte(note), Initiator: initiator})
	if err != nil {
		w.t.Fatal(err)
	}
	w.deliverPrompts(p.Prompts)
	return p
}

func (w *world) deliverPrompts(ps []*signed.Prompt) {
	w.t.Helper()
	for _, p := range ps {
		n := w.name(p.DeviceID)
		if w.links[n] == nil {
			continue
		}
		out, err := w.links[n].SendPrompt(context.Background(), p)
		w.pump(n, w.links[n], out, err)
	}
}

func (w *world) change(id string) *ChangeRecord {
	w.t.Helper()
	ch, err := w.core.Change(context.Background(), id)
	if err != nil {
		w.t.Fatal(err)
	}
	return ch
}

func promptedUsers(ch *ChangeRecord) []string {
	var us []string
	for _, p := range ch.Prompts {
		us = append(us, p.User)
	}
	slices.Sort(us)
	return us
}

func TestAdminChangeApprovedAndApplied(t *testing.T) {
	w, h := adminWorld(t)
	p := w.propose("note", "hello", "root1")
	ch := p.Change
	// Only admins are asked, and not the initiator.
	if got := promptedUsers(ch); !slices.Equal(got, []string{"root2", "root3"}) {
		t.Fatalf("prompted %v", got)
	}
	sp := p.Prompts[0]
	if sp.Kind != signed.PromptAdmin || sp.Title != ChangeTitle {
		t.Fatalf("prompt %+v", sp)
	}
	var shown []string
	for _, f := range sp.Fields {
		shown = append(shown, f.Label+": "+f.Value)
	}
	for _, want := range []string{"Change: " + ch.ID, "Kind: note", "Note: hello", "Proposed by: root1"} {
		if !slices.Contains(shown, want) {
			t.Errorf("prompt lacks %q: %v", want, shown)
		}
	}
	w.press("root2", signed.Approve)
	if got := w.change(ch.ID); got.State != ChangePending || len(h.applied) != 0 {
		t.Fatalf("after one approval: %s, applied %v", got.State, h.applied)
	}
	w.press("root3", signed.Approve)
	got := w.change(ch.ID)
	if got.State != ChangeApplied || got.Result != "noted hello" || !slices.Equal(h.applied, []string{"hello"}) {
		t.Fatalf("after two approvals: %s %q %q, applied %v", got.State, got.Result, got.Error, h.applied)
	}
	if res := w.lastAnswer().res; res == nil || res.Change == nil || res.Request != nil {
		t.Fatalf("answer result %+v", res)
	}
	// Tick does not apply it again.
	if _, err := w.core.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(h.applied) != 1 {
		t.Fatalf("applied %v", h.applied)
	}
}

func TestAdminChangeRejectedByOneAdmin(t *testing.T) {
	w, h := adminWorld(t)
	ch := w.propose("note", "hello", "root1").Change
	w.press("root2", signed.Reject)
	got := w.change(ch.ID)
	if got.State != ChangeRejected || len(h.applied) != 0 || !slices.Equal(got.RejectedBy(), []string{"root2"}) {
		t.Fatalf("%s, applied %v", got.State, h.applied)
	}
	// root3's prompt was withdrawn.
	if w.dev["root3"].showing != nil {
		t.Fatal("root3 still shows the prompt")
	}
}

func TestAdminChangeRefusals(t *testing.T) {
	w, _ := adminWorld(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		req  ProposeChangeRequest
		want error
		text string
	}{
		{"unknown kind", ProposeChangeRequest{Kind: "nope", Subject: "s", Payload: []byte("x"), Initiator: "root1"}, ErrChangeRefused, `unknown change kind "nope"`},
		{"handler refuses", ProposeChangeRequest{Kind: "note", Subject: "s", Initiator: "root1"}, ErrChangeRefused, "empty note"},
		{"no initiator", ProposeChangeRequest{Kind: "note", Subject: "s", Payload: []byte("x")}, ErrChangeRefused, "initiator"},
		{"no subject", ProposeChangeRequest{Kind: "note", Payload: []byte("x"), Initiator: "root1"}, ErrChangeRefused, "subject"},
		{"too long to show", ProposeChangeRequest{Kind: "note", Subject: "s", Payload: []byte(strings.Repeat("x", 300)), Initiator: "root1"}, ErrChangeRefused, "cannot be shown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := w.core.ProposeChange(ctx, tc.req)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("got %v, want %v with %q", err, tc.want, tc.text)
			}
		})
	}
	// With a quorum of 3, an initiating admin leaves only 2 to approve.
	if err := w.changes.PutGovernance(ctx, &GovernanceRecord{AdminQuorum: 3, Version: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.core.ProposeChange(ctx, ProposeChangeRequest{Kind: "note", Subject: "s", Payload: []byte("x"), Initiator: "root1"}); !errors.Is(err, ErrQuorumUnreachable) {
		t.Fatalf("got %v", err)
	}
	// An operator who is no admin may propose: all three admins are asked.
	p, err := w.core.ProposeChange(ctx, ProposeChangeRequest{Kind: "note", Subject: "s", Payload: []byte("x"), Initiator: "alice"})
	if err != nil || len(p.Change.Admins) != 3 {
		t.Fatalf("%v %v", p, err)
	}

	// Without a governance record, no change.
	w2 := newWorld(t)
	w2.handlers["note"] = &noteHandler{}
	if _, err := w2.core.ProposeChange(ctx, ProposeChangeRequest{Kind: "note", Subject: "s", Payload: []byte("x"), Initiator: "alice"}); !errors.Is(err, ErrNoGovernance) {
		t.Fatalf("got %v", err)
	}
	// The admin quorum is set only at the ceremony.
	if _, err := w2.core.SetAdminQuorum(ctx, 2); !errors.Is(err, ErrNotCeremony) {
		t.Fatalf("got %v", err)
	}
}

func TestAdminChangeCarriedOutByTheDaemon(t *testing.T) {
	w, h := adminWorld(t)
	ctx := context.Background()
	ch := w.propose("daemon-note", "export", "alice").Change
	if _, err := w.core.ApprovedChange(ctx, ch.ID); !errors.Is(err, ErrNotApproved) {
		t.Fatalf("pending change: %v", err)
	}
	w.press("root1", signed.Approve)
	w.press("root3", signed.Approve)
	if got := w.change(ch.ID); got.State != ChangeApproved || len(h.applied) != 0 {
		t.Fatalf("%s", got.State)
	}
	if _, err := w.core.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := w.core.ApprovedChange(ctx, ch.ID); err != nil {
		t.Fatal(err)
	}
	got, err := w.core.CompleteChange(ctx, ch.ID, "exported to X", nil)
	if err != nil || got.State != ChangeApplied || got.Result != "exported to X" {
		t.Fatalf("%v %v", got, err)
	}
	if _, err := w.core.CompleteChange(ctx, ch.ID, "again", nil); !errors.Is(err, ErrRequestClosed) {
		t.Fatalf("completed twice: %v", err)
	}
	// A change the core applies is not the daemon's to complete.
	ch2 := w.propose("note", "n", "alice").Change
	w.press("root1", signed.Approve)
	if _, err := w.core.CompleteChange(ctx, ch2.ID, "x", nil); err == nil {
		t.Fatal("completed a pending change")
	}
}

func TestAdminChangeRecountBeforeApplying(t *testing.T) {
	w, h := adminWorld(t)
	ctx := context.Background()
	ch := w.propose("note", "forged", "alice").Change
	// A hostile store marks it approved with one genuine approval and a
	// second one copied under another admin's name.
	w.press("root1", signed.Approve)
	st, err := w.changes.GetChange(ctx, ch.ID)
	if err != nil {
		t.Fatal(err)
	}
	fake := st.Answers[0]
	fake.User, fake.DeviceID = "root2", w.dev["root2"].id()
	st.Answers = append(st.Answers, fake)
	st.State = ChangeApproved
	if err := w.changes.UpdateChange(ctx, st); err != nil {
		t.Fatal(err)
	}
	if _, err := w.core.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	got := w.change(ch.ID)
	if got.State != ChangeFailed || !strings.Contains(got.Error, "1 of the 2 admin approvals") || len(h.applied) != 0 {
		t.Fatalf("%s %q applied %v", got.State, got.Error, h.applied)
	}
}

func TestAdminChangeExpiresAndRefusesApprovers(t *testing.T) {
	w, _ := adminWorld(t)
	ctx := context.Background()
	ch := w.propose("note", "late", "alice").Change
	if slices.Contains(promptedUsers(ch), "bob") {
		t.Fatal("an approver who is no admin was asked")
	}
	w.clock.advance(DefaultPromptExpiry + 1)
	refs, err := w.core.Tick(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := w.change(ch.ID); got.State != ChangeExpired || len(refs) != 3 {
		t.Fatalf("%s, withdraw %v", got.State, refs)
	}
	w.withdraw(refs)
	if n := len(w.failed); n == 0 {
		t.Fatal(fmt.Sprint("no prompt withdrawn: ", w.failed))
	}
}

// Outside ceremony mode, a pairing is an admin change: both people confirm
// the code, the device pins the HSM, and the record is stored only once
// the admin quorum approved on their devices, which show the new device's
// fingerprint. Until then the device gets no channel.
func TestPairingThroughAdmins(t *testing.T) {
	for _, reject := range []bool{false, true} {
		t.Run(fmt.Sprintf("reject=%v", reject), func(t *testing.T) {
			w, _ := adminWorld(t)
			ctx := context.Background()
			d := newTestDevice(t)
			d.now = w.clock.Now
			l := w.core.Attach(d.features())
			out, err := l.StartPairing(ctx, "erin", RoleApprover)
			events, err := pump(t, l, d, out, err)
			if err != nil {
				t.Fatal(err)
			}
			code, ok := find[PairingCode](events)
			if !ok {
				t.Fatalf("no code: %v", events)
			}
			d.decide(t, l)
			out, err = l.OperatorDecision(ctx, true)
			events, err = pump(t, l, d, out, err)
			if err != nil {
				t.Fatal(err)
			}
			prop, ok := find[PairingProposed](events)
			if !ok || prop.Change == nil {
				t.Fatalf("no PairingProposed: %v", events)
			}
			if _, ok := find[PairingDone](events); ok {
				t.Fatal("paired without the admins")
			}
			if _, err := w.devices.GetDevice(ctx, d.id()); !errors.Is(err, ErrDeviceNotFound) {
				t.Fatalf("stored before the admins approved: %v", err)
			}
			ch := prop.Change.Change
			if ch.Kind != ChangePairing || ch.Initiator != "erin" || len(ch.Admins) != 3 {
				t.Fatalf("change %+v", ch)
			}
			var shown []string
			for _, f := range prop.Change.Prompts[0].Fields {
				shown = append(shown, f.Label+": "+f.Value)
			}
			for _, want := range []string{"Fingerprint: " + code.DeviceFingerprint, "User: erin", "Role: approver", "Kind: pairing"} {
				if !slices.Contains(shown, want) {
					t.Errorf("admin prompt lacks %q: %v", want, shown)
				}
			}
			// No channel for the device yet.
			l2 := w.core.Attach(d.features())
			out, err = l2.Open(ctx)
			if events, _ := pump(t, l2, d, out, err); len(events) != 0 {
				t.Fatalf("a device awaiting the admins got %v", events)
			}
			w.deliverPrompts(prop.Change.Prompts)
			if reject {
				w.press("root1", signed.Reject)
				if got := w.change(ch.ID); got.State != ChangeRejected {
					t.Fatalf("%s", got.State)
				}
				if _, err := w.devices.GetDevice(ctx, d.id()); !errors.Is(err, ErrDeviceNotFound) {
					t.Fatal("stored a rejected pairing")
				}
				return
			}
			w.press("root1", signed.Approve)
			w.press("root2", signed.Approve)
			got := w.change(ch.ID)
			if got.State != ChangeApplied || !strings.Contains(got.Result, "paired to erin as approver") {
				t.Fatalf("%s %q %q", got.State, got.Result, got.Error)
			}
			rec, err := w.devices.GetDevice(ctx, d.id())
			if err != nil || rec.User != "erin" || rec.State != DevicePaired || rec.Fingerprint() != code.DeviceFingerprint {
				t.Fatalf("%+v %v", rec, err)
			}
			l3 := w.core.Attach(d.features())
			out, err = l3.Open(ctx)
			events, err = pump(t, l3, d, out, err)
			if _, ok := find[ChannelUp](events); !ok || err != nil {
				t.Fatalf("no channel after the admins approved: %v %v", events, err)
			}
		})
	}
}

// The change statement is the one firmware-spec/approval.md §6.1 defines.
func TestChangeStatementLayout(t *testing.T) {
	payload := []byte(`{"base_version":1}`)
	h := sha256.Sum256(payload)
	want := []byte("OpenCustody change v1\x00")
	want = append(want, 12)
	want = append(want, "chg-00112233"...)
	want = append(want, 6)
	want = append(want, "policy"...)
	want = append(want, 0, 8)
	want = append(want, "treasury"...)
	want = append(want, 5)
	want = append(want, "alice"...)
	want = append(want, h[:]...)
	if got := ChangeStatement("chg-00112233", ChangePolicy, "treasury", "alice", payload); !bytes.Equal(got, want) {
		t.Fatalf("statement\n%x\nwant\n%x", got, want)
	}
}
