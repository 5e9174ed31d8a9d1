package policy

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcutil"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// transfer sends amounts to destinations (alternating address, amount),
// with 0.1 BTC change.
func transfer(dests ...any) *bitcoin.Summary {
	s := &bitcoin.Summary{Network: bitcoin.Simnet}
	for i := 0; i+1 < len(dests); i += 2 {
		a := btcutil.Amount(dests[i+1].(int))
		s.Outputs = append(s.Outputs, bitcoin.Output{Address: dests[i].(string), Amount: a})
		s.SentTotal += a
	}
	s.Outputs = append(s.Outputs, bitcoin.Output{Address: "sb1qchange", Amount: 10_000_000, Change: true})
	return s
}

// answers: "alice" approves, "-bob" rejects, one minute apart.
func answers(us ...string) []Answer {
	var out []Answer
	for i, u := range us {
		a := Answer{User: strings.TrimPrefix(u, "-"), Approve: !strings.HasPrefix(u, "-"), At: t0.Add(time.Duration(i+1) * time.Minute)}
		out = append(out, a)
	}
	return out
}

const btc = 100_000_000

func TestEvaluate(t *testing.T) {
	full := load(t, "full.yaml")
	anyp := load(t, "any.yaml")
	def := Default([]string{"alice", "bob", "carol"}, 2)
	small := transfer(cold, btc/2)
	large := transfer(cold, 3*btc)
	for _, tc := range []struct {
		name      string
		p         *Policy
		in        Input
		want      Outcome
		rule      string // part of Decision.Rule
		says      string // part of Reason, or of Missing joined
		ask       []string
		signAfter time.Duration // from t0, when approved
	}{
		// m of n.
		{name: "default: one of two", p: def, in: Input{Transfer: small, Answers: answers("alice")}, want: Pending, says: "approvers: 1 more of bob, carol", ask: []string{"bob", "carol"}},
		{name: "default: two of two", p: def, in: Input{Transfer: small, Answers: answers("alice", "carol")}, want: Approved, signAfter: 2 * time.Minute},
		{name: "a user counts once", p: def, in: Input{Transfer: small, Answers: answers("alice", "alice")}, want: Pending},
		{name: "outsiders do not count", p: def, in: Input{Transfer: small, Answers: answers("alice", "mallory")}, want: Pending},
		// Tiers.
		{name: "small tier: ops", p: full, in: Input{Transfer: small, Answers: answers("alice", "bob")}, want: Approved, rule: "tier small (up to 1.00000000 BTC)", signAfter: 2*time.Minute + time.Hour},
		{name: "tier bound is inclusive", p: full, in: Input{Transfer: transfer(cold, btc), Answers: answers("alice", "bob")}, want: Approved, rule: "tier small"},
		{name: "large tier: ops is not enough", p: full, in: Input{Transfer: large, Answers: answers("alice", "bob")}, want: Pending, rule: "tier large (above 1.00000000 BTC)", says: "execs: 1 more of dave, erin", ask: []string{"dave", "erin"}},
		{name: "large tier: ops then execs", p: full, in: Input{Transfer: large, Answers: answers("alice", "bob", "dave")}, want: Approved, signAfter: 3*time.Minute + time.Hour},
		{name: "steps: execs before ops does not count", p: full, in: Input{Transfer: large, Answers: answers("dave", "alice", "bob")}, want: Pending, says: "execs: 1 more of erin"},
		{name: "steps: first step asked first", p: full, in: Input{Transfer: large}, want: Pending, ask: []string{"alice", "bob", "carol"}, says: "then step 2 of 2"},
		{name: "above the largest tier", p: onlySmallTier(full), in: Input{Transfer: large}, want: Refused, says: "above the largest tier (small, up to 1.00000000 BTC)"},
		// Any.
		{name: "any: a met", p: anyp, in: Input{Transfer: transfer(cold, 1000), Answers: answers("alice", "bob")}, want: Approved},
		{name: "any: b and a", p: anyp, in: Input{Transfer: transfer(cold, 1000), Answers: answers("carol", "alice")}, want: Pending, says: "one of:"},
		// Allow-list.
		{name: "allow-listed destination", p: full, in: Input{Transfer: small, Answers: answers("alice", "bob")}, want: Approved},
		{name: "unlisted needs execs too", p: full, in: Input{Transfer: transfer(other, btc/2), Answers: answers("alice", "bob")}, want: Pending, rule: "unlisted_require for " + other, says: "execs: 1 more"},
		{name: "unlisted with execs", p: full, in: Input{Transfer: transfer(other, btc/2), Answers: answers("alice", "erin", "bob")}, want: Approved},
		{name: "unlisted refused", p: refuseUnlisted(full), in: Input{Transfer: transfer(cold, 1000, other, 1000)}, want: Refused, says: "destination " + other + " is not in the allow-list"},
		{name: "change is not a destination", p: refuseUnlisted(full), in: Input{Transfer: transfer(cold, 1000), Answers: answers("alice", "bob")}, want: Approved},
		// Velocity.
		{name: "within the daily limit", p: full, in: Input{Transfer: small, History: []Spend{{At: t0.Add(-23 * time.Hour), Amount: 4 * btc}}, Answers: answers("alice", "bob"), Now: t0}, want: Approved},
		{name: "over the daily limit", p: full, in: Input{Transfer: transfer(cold, btc), History: []Spend{{At: t0.Add(-23 * time.Hour), Amount: 4*btc + 1}}, Now: t0}, want: Refused, says: "velocity limit: 4.00000001 BTC signed in the last 24h0m0s plus this 1.00000000 BTC is 5.00000001 BTC, above 5.00000000 BTC"},
		{name: "old spends leave the window", p: full, in: Input{Transfer: transfer(cold, btc), History: []Spend{{At: t0.Add(-25 * time.Hour), Amount: 4 * btc}}, Now: t0}, want: Pending},
		// Veto.
		{name: "single veto", p: def, in: Input{Transfer: small, Answers: answers("alice", "-bob")}, want: Rejected, says: "rejected by bob (single veto)"},
		{name: "veto beats a met quorum later", p: def, in: Input{Transfer: small, Answers: answers("-carol", "alice", "bob")}, want: Rejected},
		{name: "a rejection by an outsider is no veto", p: def, in: Input{Transfer: small, Answers: answers("-mallory", "alice")}, want: Pending},
		{name: "no single veto: rule still reachable", p: noVeto(def), in: Input{Transfer: small, Answers: answers("-bob", "alice")}, want: Pending, ask: []string{"carol"}},
		{name: "no single veto: unreachable", p: noVeto(def), in: Input{Transfer: small, Answers: answers("-bob", "-carol")}, want: Rejected, says: "can no longer be met"},
		// Initiator.
		{name: "initiator's approval does not count", p: def, in: Input{Transfer: small, Initiator: "alice", Answers: answers("alice", "bob")}, want: Pending, ask: []string{"carol"}},
		{name: "initiator is not asked", p: def, in: Input{Transfer: small, Initiator: "bob"}, want: Pending, ask: []string{"alice", "carol"}},
		{name: "others approve the initiator's", p: def, in: Input{Transfer: small, Initiator: "alice", Answers: answers("bob", "carol")}, want: Approved},
		{name: "unreachable without the initiator", p: Default([]string{"alice", "bob"}, 2), in: Input{Transfer: small, Initiator: "alice"}, want: Rejected, says: "cannot be met without the initiator alice"},
		{name: "unreachable without devices", p: def, in: Input{Transfer: small, Available: []string{"alice"}}, want: Rejected, says: "users with a paired device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.p.Evaluate(tc.in)
			text := d.Reason + " | " + strings.Join(d.Missing, "; ")
			if d.Outcome != tc.want || !strings.Contains(d.Rule, tc.rule) || !strings.Contains(text, tc.says) {
				t.Fatalf("got %s, rule %q, %q\nwant %s, rule %q, %q\n%s", d.Outcome, d.Rule, text, tc.want, tc.rule, tc.says, strings.Join(d.Explanation, "\n"))
			}
			if tc.ask != nil && !slices.Equal(d.Ask, tc.ask) {
				t.Fatalf("ask %v, want %v", d.Ask, tc.ask)
			}
			if tc.want == Approved {
				if tc.signAfter != 0 && !d.SignAfter.Equal(t0.Add(tc.signAfter)) {
					t.Fatalf("sign after %s, want %s", d.SignAfter, t0.Add(tc.signAfter))
				}
				if d.Ready(d.SignAfter.Add(-time.Second)) || !d.Ready(d.SignAfter) {
					t.Fatal("Ready ignores the time lock")
				}
			}
			if len(d.Explanation) == 0 {
				t.Fatal("no explanation")
			}
		})
	}
}

func onlySmallTier(p *Policy) *Policy {
	q := *p
	q.Tiers = q.Tiers[:1]
	return &q
}

func refuseUnlisted(p *Policy) *Policy {
	q := *p
	al := *p.AllowList
	al.UnlistedRequire = nil
	q.AllowList = &al
	return &q
}

func noVeto(p *Policy) *Policy {
	q := *p
	f := false
	q.SingleVeto = &f
	return &q
}

func TestEvaluateNeeds(t *testing.T) {
	d := load(t, "full.yaml").Evaluate(Input{Transfer: transfer(other, 3*btc), Now: t0})
	want := "(2 of ops (alice, bob, carol), then 1 of execs (dave, erin)) and 1 of execs (dave, erin)"
	if d.Needs != want {
		t.Fatalf("needs %q\nwant  %q", d.Needs, want)
	}
	if !slices.Equal(d.Eligible, []string{"alice", "bob", "carol", "dave", "erin"}) {
		t.Fatalf("eligible %v", d.Eligible)
	}
}
