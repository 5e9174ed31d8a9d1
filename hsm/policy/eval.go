package policy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/btcsuite/btcd/btcutil"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
)

// Spend is a signed transfer of the wallet, for velocity limits: when it
// was signed and what it sent (the outputs that are not change).
type Spend struct {
	At     time.Time
	Amount btcutil.Amount
}

// Answer is an approver's verified answer, in the order answers came.
type Answer struct {
	User    string
	Approve bool
	At      time.Time
}

// Input is everything an evaluation looks at. Nothing else is read: the
// same input gives the same decision.
type Input struct {
	// Transfer is the transaction's summary, as package bitcoin derived
	// it from the transaction and the wallet.
	Transfer *bitcoin.Summary
	// Initiator is the user who submitted the transfer: their answers do
	// not count, and they are not asked.
	Initiator string
	// History is the wallet's signed transfers (other than this one).
	History []Spend
	// Answers are the verified answers so far, in order.
	Answers []Answer
	// Available, when not nil, are the users who can answer at all (who
	// have a paired device): a rule that needs others cannot be met.
	Available []string
	Now       time.Time
}

// Outcome is what the policy says of a transfer.
type Outcome int

const (
	// Pending: the rule is not met yet, and still can be.
	Pending Outcome = iota
	// Approved: the rule is met; the HSM may sign from SignAfter on.
	Approved
	// Rejected: an approver's rejection stopped it, or the rule can no
	// longer be met.
	Rejected
	// Refused: the policy does not allow the transfer at all (above the
	// tiers, outside the allow-list, over a velocity limit).
	Refused
)

func (o Outcome) String() string {
	switch o {
	case Pending:
		return "pending"
	case Approved:
		return "approved"
	case Rejected:
		return "rejected"
	case Refused:
		return "refused"
	}
	return fmt.Sprintf("outcome(%d)", int(o))
}

// Decision is an evaluation's outcome and why.
type Decision struct {
	Outcome Outcome
	// Rule names what applies: the tier, and the allow-list's rule for
	// destinations outside it.
	Rule string
	// Needs says what the rule requires, in words.
	Needs string
	// Missing says what is still missing, one line per group not met.
	Missing []string
	// Reason says why a transfer is refused or rejected.
	Reason string
	// Explanation is every line of the evaluation, for people.
	Explanation []string
	// Ask are the users whose approval can count now: prompt them.
	// Eligible are all users whose approval can count at some step.
	Ask, Eligible []string
	// MetAt is when the rule was met (the answer that met it); SignAfter
	// is MetAt plus the time lock.
	MetAt, SignAfter time.Time
}

// Ready reports whether the HSM may sign at now.
func (d *Decision) Ready(now time.Time) bool {
	return d.Outcome == Approved && !now.Before(d.SignAfter)
}

func (d *Decision) explain(format string, args ...any) {
	d.Explanation = append(d.Explanation, fmt.Sprintf(format, args...))
}

// Evaluate decides on a transfer under the policy. It is pure: it reads
// only p and in.
//
// In order: the transfer's amount (the outputs that are not change)
// selects the tier (above every tier: refused); each destination that is
// not change must be in the allow-list (else refused, or the allow-list's
// unlisted_require rule applies as well); the amount plus what the
// wallet's signed transfers sent within each velocity window must stay
// within its max (else refused). Then the answers: the initiator's do not
// count; a rejection by anyone who may approve rejects the transfer under
// single veto, and otherwise the transfer is rejected once the rule
// cannot be met by those who have not rejected; the rule met makes it
// approved, signable after the time lock.
func (p *Policy) Evaluate(in Input) Decision {
	var d Decision
	s := in.Transfer
	if s == nil {
		d.Outcome, d.Reason = Refused, "no transfer"
		return d
	}
	sent := s.SentTotal

	// Tier.
	var rule Rule
	if p.Require != nil {
		rule, d.Rule = *p.Require, "require"
	} else {
		found := false
		for i, t := range p.Tiers {
			if t.UpTo == nil || sent <= btcutil.Amount(*t.UpTo) {
				rule, found = t.Require, true
				switch {
				case t.UpTo == nil && i == 0:
					d.Rule = fmt.Sprintf("tier %s (any amount)", t.Name)
				case t.UpTo == nil:
					d.Rule = fmt.Sprintf("tier %s (above %s)", t.Name, p.Tiers[i-1].UpTo)
				default:
					d.Rule = fmt.Sprintf("tier %s (up to %s)", t.Name, t.UpTo)
				}
				break
			}
		}
		if !found {
			d.Outcome = Refused
			d.Reason = fmt.Sprintf("it sends %s, above the largest tier (%s, up to %s)", formatSat(int64(sent)), p.Tiers[len(p.Tiers)-1].Name, p.Tiers[len(p.Tiers)-1].UpTo)
			d.explain("refused: %s", d.Reason)
			return d
		}
	}
	d.explain("%s applies to %s sent", d.Rule, formatSat(int64(sent)))

	// Allow-list.
	if al := p.AllowList; al != nil {
		var unlisted []string
		for _, o := range s.Outputs {
			if o.Change {
				continue
			}
			if name, ok := allowName(al, o.Address); ok {
				d.explain("destination %s is allow-listed as %s", o.Address, name)
				continue
			}
			if !slices.Contains(unlisted, o.Address) {
				unlisted = append(unlisted, o.Address)
			}
		}
		if len(unlisted) > 0 {
			if al.UnlistedRequire == nil {
				d.Outcome = Refused
				d.Reason = fmt.Sprintf("destination %s is not in the allow-list", strings.Join(unlisted, ", "))
				d.explain("refused: %s", d.Reason)
				return d
			}
			rule = Rule{All: []Rule{rule, *al.UnlistedRequire}}
			d.Rule += ", and allow_list.unlisted_require for " + strings.Join(unlisted, ", ")
			d.explain("destination %s is not allow-listed: %s is needed as well", strings.Join(unlisted, ", "), al.UnlistedRequire)
		}
	}

	// Velocity.
	for _, v := range p.Velocity {
		since := in.Now.Add(-v.Window.D())
		var spent int64
		for _, h := range in.History {
			if h.At.After(since) && !h.At.After(in.Now) {
				spent = sum(spent, int64(h.Amount))
			}
		}
		total := sum(spent, int64(sent))
		if total > int64(v.Max) {
			d.Outcome = Refused
			d.Reason = fmt.Sprintf("velocity limit: %s signed in the last %s plus this %s is %s, above %s",
				formatSat(spent), v.Window.D(), formatSat(int64(sent)), formatSat(total), v.Max)
			d.explain("refused: %s", d.Reason)
			return d
		}
		d.explain("velocity: %s of %s used in the last %s, this transfer included", formatSat(total), v.Max, v.Window.D())
	}

	d.Needs = p.describe(rule)
	d.explain("needs %s", d.Needs)

	// Answers: the first of each user counts, never the initiator's, and
	// only from users the rule can use.
	eligible := p.members(rule)
	d.Eligible = without(eligible, in.Initiator)
	var approvals []Answer
	var rejected []string
	seen := map[string]bool{}
	for _, a := range in.Answers {
		if seen[a.User] || a.User == in.Initiator || !slices.Contains(eligible, a.User) {
			continue
		}
		seen[a.User] = true
		if a.Approve {
			approvals = append(approvals, a)
		} else {
			rejected = append(rejected, a.User)
		}
	}
	if len(rejected) > 0 && p.SingleVetoOn() {
		d.Outcome = Rejected
		d.Reason = "rejected by " + strings.Join(rejected, ", ") + " (single veto)"
		d.explain("%s", d.Reason)
		return d
	}
	if at, ok := p.met(rule, approvals, 0); ok {
		d.Outcome = Approved
		d.MetAt = approvals[at].At
		d.SignAfter = d.MetAt.Add(p.TimeLock.D())
		d.explain("met when %s approved at %s", approvals[at].User, d.MetAt.UTC().Format(time.RFC3339))
		if p.TimeLock != 0 {
			d.explain("time lock: signed from %s", d.SignAfter.UTC().Format(time.RFC3339))
		}
		return d
	}
	// Can it still be met, by everyone who may yet answer approving?
	hope := slices.Clone(approvals)
	for _, u := range d.Eligible {
		if !seen[u] && (in.Available == nil || slices.Contains(in.Available, u)) {
			hope = append(hope, Answer{User: u, Approve: true})
		}
	}
	if _, ok := p.met(rule, hope, 0); !ok {
		d.Outcome = Rejected
		switch {
		case len(rejected) > 0:
			d.Reason = fmt.Sprintf("rejected by %s: %s can no longer be met", strings.Join(rejected, ", "), d.Needs)
		case len(in.Answers) == 0 && in.Available != nil:
			d.Reason = fmt.Sprintf("%s cannot be met by the users with a paired device other than the initiator %s", d.Needs, in.Initiator)
		default:
			d.Reason = fmt.Sprintf("%s cannot be met without the initiator %s", d.Needs, in.Initiator)
		}
		d.explain("%s", d.Reason)
		return d
	}
	d.Outcome = Pending
	d.Missing = p.missing(rule, approvals, 0, seen)
	d.Ask = slices.DeleteFunc(p.ask(rule, approvals, 0), func(u string) bool { return seen[u] || u == in.Initiator })
	for _, m := range d.Missing {
		d.explain("missing: %s", m)
	}
	return d
}

func allowName(al *AllowList, addr string) (string, bool) {
	for _, name := range sortedKeys(al.Addresses) {
		if al.Addresses[name] == addr {
			return name, true
		}
	}
	return "", false
}

func without(us []string, u string) []string {
	return slices.DeleteFunc(slices.Clone(us), func(x string) bool { return x == u })
}

// members lists the users of every group r names, sorted.
func (p *Policy) members(r Rule) []string {
	var us []string
	var walk func(r Rule)
	walk = func(r Rule) {
		if r.Group != "" {
			for _, m := range p.Groups[r.Group].Members {
				if !slices.Contains(us, m) {
					us = append(us, m)
				}
			}
		}
		for _, l := range [][]Rule{r.All, r.Any, r.Steps} {
			for _, c := range l {
				walk(c)
			}
		}
	}
	walk(r)
	slices.Sort(us)
	return us
}

// met reports whether r is met by approvals[from:], and the index of the
// approval that met it.
func (p *Policy) met(r Rule, approvals []Answer, from int) (int, bool) {
	switch {
	case r.Group != "":
		g := p.Groups[r.Group]
		n := 0
		for i := from; i < len(approvals); i++ {
			if slices.Contains(g.Members, approvals[i].User) {
				n++
				if n >= g.Quorum {
					return i, true
				}
			}
		}
		return 0, false
	case r.All != nil:
		last := from
		for _, c := range r.All {
			at, ok := p.met(c, approvals, from)
			if !ok {
				return 0, false
			}
			last = max(last, at)
		}
		return last, true
	case r.Any != nil:
		first, found := 0, false
		for _, c := range r.Any {
			if at, ok := p.met(c, approvals, from); ok && (!found || at < first) {
				first, found = at, true
			}
		}
		return first, found
	case r.Steps != nil:
		at, cur := 0, from
		for _, c := range r.Steps {
			var ok bool
			if at, ok = p.met(c, approvals, cur); !ok {
				return 0, false
			}
			cur = at + 1
		}
		return at, true
	}
	return 0, false
}

// ask lists the users whose approval would count towards r now.
func (p *Policy) ask(r Rule, approvals []Answer, from int) []string {
	if _, ok := p.met(r, approvals, from); ok {
		return nil
	}
	var out []string
	add := func(us []string) {
		for _, u := range us {
			if !slices.Contains(out, u) && !slices.ContainsFunc(approvals[from:], func(a Answer) bool { return a.User == u }) {
				out = append(out, u)
			}
		}
	}
	switch {
	case r.Group != "":
		add(p.Groups[r.Group].Members)
	case r.All != nil || r.Any != nil:
		for _, c := range append(slices.Clone(r.All), r.Any...) {
			add(p.ask(c, approvals, from))
		}
	case r.Steps != nil:
		cur := from
		for _, c := range r.Steps {
			at, ok := p.met(c, approvals, cur)
			if !ok {
				add(p.ask(c, approvals, cur))
				break
			}
			cur = at + 1
		}
	}
	slices.Sort(out)
	return out
}

// missing says, per group not met, what it still needs.
// Users in answered have answered already and are not waited for.
func (p *Policy) missing(r Rule, approvals []Answer, from int, answered map[string]bool) []string {
	if _, ok := p.met(r, approvals, from); ok {
		return nil
	}
	switch {
	case r.Group != "":
		g := p.Groups[r.Group]
		var have, waiting []string
		for _, m := range g.Members {
			if slices.ContainsFunc(approvals[from:], func(a Answer) bool { return a.User == m }) {
				have = append(have, m)
			} else if !answered[m] {
				waiting = append(waiting, m)
			}
		}
		return []string{fmt.Sprintf("%s: %d more of %s (approved: %s)", r.Group, g.Quorum-len(have), orNone(waiting), orNone(have))}
	case r.All != nil:
		var out []string
		for _, c := range r.All {
			out = append(out, p.missing(c, approvals, from, answered)...)
		}
		return out
	case r.Any != nil:
		var parts []string
		for _, c := range r.Any {
			parts = append(parts, strings.Join(p.missing(c, approvals, from, answered), "; "))
		}
		return []string{"one of: " + strings.Join(parts, " | ")}
	case r.Steps != nil:
		cur := from
		for i, c := range r.Steps {
			at, ok := p.met(c, approvals, cur)
			if !ok {
				out := p.missing(c, approvals, cur, answered)
				if i+1 < len(r.Steps) {
					out = append(out, fmt.Sprintf("then step %d of %d", i+2, len(r.Steps)))
				}
				return out
			}
			cur = at + 1
		}
	}
	return nil
}

func orNone(us []string) string {
	if len(us) == 0 {
		return "none"
	}
	return strings.Join(us, ", ")
}

// describe writes a rule in words: "2 of ops (alice, bob, carol)", with
// "and", "or" and ", then" for all, any and steps.
func (p *Policy) describe(r Rule) string {
	join := func(l []Rule, sep string) string {
		parts := make([]string, len(l))
		for i, c := range l {
			parts[i] = p.describe(c)
			if c.Group == "" && len(l) > 1 {
				parts[i] = "(" + parts[i] + ")"
			}
		}
		return strings.Join(parts, sep)
	}
	switch {
	case r.Group != "":
		g := p.Groups[r.Group]
		return fmt.Sprintf("%d of %s (%s)", g.Quorum, r.Group, strings.Join(g.Members, ", "))
	case r.All != nil:
		return join(r.All, " and ")
	case r.Any != nil:
		return join(r.Any, " or ")
	case r.Steps != nil:
		return join(r.Steps, ", then ")
	}
	return "nothing"
}
