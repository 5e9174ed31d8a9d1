package core

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/hsm/policy"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// ErrPolicyRefused: the wallet's policy does not allow the transfer
// (above its tiers, outside its allow-list, over a velocity limit).
var ErrPolicyRefused = errors.New("core: refused by the wallet's policy")

// Policy returns the wallet's policy: the document last set, or the
// default policy of its approvers and quorum ([policy.Default]).
func (w *WalletRecord) Policy() (*policy.Policy, error) {
	if len(w.PolicyDoc) == 0 {
		return policy.Default(w.Approvers, w.Quorum), nil
	}
	p, err := policy.Parse(w.PolicyDoc)
	if err != nil {
		return nil, fmt.Errorf("core: wallet %s: stored policy: %w", w.Name, err)
	}
	return p, nil
}

// CurrentPolicyVersion is the version of the wallet's policy: 1 for the
// policy it was created with, one more for each change.
func (w *WalletRecord) CurrentPolicyVersion() uint64 { return max(w.PolicyVersion, 1) }

// setPolicy stores p in w: its canonical document, the approvers it
// names and, when it is one group's quorum, that quorum.
func (w *WalletRecord) setPolicy(p *policy.Policy, version uint64) {
	w.PolicyDoc, w.PolicyVersion = p.Marshal(), version
	w.Approvers, w.Quorum = p.Users(), 0
	if p.Require != nil && p.Require.Group != "" && len(p.Groups) == 1 {
		w.Approvers, w.Quorum = slices.Clone(p.Groups[p.Require.Group].Members), p.Groups[p.Require.Group].Quorum
	}
}

// requestPolicyVersion is the policy version a request was submitted
// under (records from before policies name none: version 1).
func (r *RequestRecord) requestPolicyVersion() uint64 { return max(r.PolicyVersion, 1) }

// availableUsers are the users with a paired, unrevoked device.
func availableUsers(devices []*DeviceRecord) []string {
	us := []string{}
	seen := make(map[string]bool, len(devices))
	for _, d := range devices {
		if d.State == DevicePaired && !seen[d.User] {
			seen[d.User] = true
			us = append(us, d.User)
		}
	}
	return us
}

// evaluate decides on request r under p with the given answers.
func (c *Core) evaluate(ctx context.Context, p *policy.Policy, r *RequestRecord, answers []policy.Answer, available []string) (policy.Decision, error) {
	sum, err := r.ParsedSummary()
	if err != nil {
		return policy.Decision{}, fmt.Errorf("core: request %s: stored summary: %w", r.ID, err)
	}
	var hist []policy.Spend
	if len(p.Velocity) > 0 {
		if hist, err = c.history(ctx, r.Wallet, r.ID); err != nil {
			return policy.Decision{}, err
		}
	}
	return p.Evaluate(policy.Input{
		Transfer: sum, Initiator: r.Initiator, History: hist, Answers: answers,
		Available: available, Now: c.cfg.Now(),
	}), nil
}

// storedAnswers are a request's accepted answers as the policy reads
// them (the signing step recounts from the signatures instead).
func storedAnswers(r *RequestRecord) []policy.Answer {
	out := make([]policy.Answer, 0, len(r.Answers))
	for _, a := range r.Answers {
		out = append(out, policy.Answer{User: a.User, Approve: a.Decision == signed.Approve, At: a.At})
	}
	return out
}

// Explanation is what the policy says of a request or transfer, for
// people: the decision, and the policy version it was evaluated under.
type Explanation struct {
	Decision      policy.Decision
	PolicyVersion uint64
	// Summary is the transfer as the core derived it.
	Summary *bitcoin.Summary
}

// ExplainRequest evaluates a request under its wallet's policy, with its
// answers so far, without changing anything.
func (c *Core) ExplainRequest(ctx context.Context, id string) (*Explanation, error) {
	r, err := c.Request(ctx, id)
	if err != nil {
		return nil, err
	}
	w, err := c.cfg.Wallets.GetWallet(ctx, r.Wallet)
	if err != nil {
		return nil, err
	}
	if w.CurrentPolicyVersion() != r.requestPolicyVersion() {
		return nil, fmt.Errorf("core: request %s was submitted under policy version %d; the wallet's is now %d", r.ID, r.requestPolicyVersion(), w.CurrentPolicyVersion())
	}
	p, err := w.Policy()
	if err != nil {
		return nil, err
	}
	d, err := c.evaluate(ctx, p, r, storedAnswers(r), nil)
	if err != nil {
		return nil, err
	}
	sum, _ := r.ParsedSummary()
	return &Explanation{Decision: d, PolicyVersion: r.requestPolicyVersion(), Summary: sum}, nil
}

// ExplainTransfer says which rule of the wallet's policy applies to a
// PSBT and what it needs, as [Core.Submit] would evaluate it, without
// storing, prompting or signing anything. The PSBT is checked as Submit
// checks it.
func (c *Core) ExplainTransfer(ctx context.Context, req SubmitRequest) (*Explanation, error) {
	if err := c.approvalPath(); err != nil {
		return nil, err
	}
	w, sum, canonical, err := c.analyse(ctx, req)
	if err != nil {
		return nil, err
	}
	p, err := w.Policy()
	if err != nil {
		return nil, err
	}
	devices, err := c.cfg.Devices.ListDevices(ctx)
	if err != nil {
		return nil, err
	}
	r := &RequestRecord{ID: "explain", Wallet: w.Name, Summary: canonical, Initiator: req.Initiator}
	d, err := c.evaluate(ctx, p, r, nil, availableUsers(devices))
	if err != nil {
		return nil, err
	}
	return &Explanation{Decision: d, PolicyVersion: w.CurrentPolicyVersion(), Summary: sum}, nil
}

// PolicyChange is the payload of a [ChangePolicy] change: the wallet's
// new policy (its canonical document) and the version it replaces. A
// change is applied only over that version, so two changes proposed
// against the same version cannot both apply.
type PolicyChange struct {
	BaseVersion uint64          `json:"base_version"`
	Policy      json.RawMessage `json:"policy"`
}

// ProposePolicy proposes replacing a wallet's policy with doc (YAML or
// JSON): a [ChangePolicy] change over the wallet's current version, which
// the admins see as a diff against the current policy.
func (c *Core) ProposePolicy(ctx context.Context, wallet string, doc []byte, initiator string) (*Proposed, error) {
	if err := c.approvalPath(); err != nil {
		return nil, err
	}
	p, err := policy.Parse(doc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrChangeRefused, err)
	}
	w, err := c.cfg.Wallets.GetWallet(ctx, wallet)
	if err != nil {
		return nil, err
	}
	payload, err := json.Marshal(PolicyChange{BaseVersion: w.CurrentPolicyVersion(), Policy: p.Marshal()})
	if err != nil {
		return nil, err
	}
	return c.ProposeChange(ctx, ProposeChangeRequest{Kind: ChangePolicy, Subject: wallet, Payload: payload, Initiator: initiator})
}

// policyHandler is the core's handler of [ChangePolicy].
type policyHandler struct{ c *Core }

func (h policyHandler) parse(ctx context.Context, subject string, payload []byte) (*WalletRecord, *policy.Policy, *PolicyChange, error) {
	if h.c.cfg.Wallets == nil {
		return nil, nil, nil, ErrNoApprovalPath
	}
	var pc PolicyChange
	if err := json.Unmarshal(payload, &pc); err != nil {
		return nil, nil, nil, fmt.Errorf("policy change: %w", err)
	}
	p, err := policy.Parse(pc.Policy)
	if err != nil {
		return nil, nil, nil, err
	}
	w, err := h.c.cfg.Wallets.GetWallet(ctx, subject)
	if err != nil {
		return nil, nil, nil, err
	}
	if pc.BaseVersion != w.CurrentPolicyVersion() {
		return nil, nil, nil, fmt.Errorf("the change replaces policy version %d, and the wallet's is now %d: propose it again", pc.BaseVersion, w.CurrentPolicyVersion())
	}
	if err := p.CheckNetwork(w.Network); err != nil {
		return nil, nil, nil, err
	}
	return w, p, &pc, nil
}

// Describe shows the new version and the policy's diff, one line per
// field: "Removed" or "Added", and the line of [policy.Policy.Lines].
func (h policyHandler) Describe(ctx context.Context, subject string, payload []byte) ([]signed.Field, error) {
	w, p, pc, err := h.parse(ctx, subject, payload)
	if err != nil {
		return nil, err
	}
	devices, err := h.c.cfg.Devices.ListDevices(ctx)
	if err != nil {
		return nil, err
	}
	for _, u := range p.Users() {
		if len(pairedDevicesOf(devices, u)) == 0 {
			return nil, fmt.Errorf("user %s has no paired device: pair one first", u)
		}
	}
	old, err := w.Policy()
	if err != nil {
		return nil, err
	}
	diff := policy.Diff(old, p)
	if len(diff) == 0 {
		return nil, errors.New("the new policy is the current one")
	}
	fields := []signed.Field{{Label: "Policy", Value: fmt.Sprintf("version %d -> %d", pc.BaseVersion, pc.BaseVersion+1)}}
	for _, l := range diff {
		label := "Removed"
		if l.Added {
			label = "Added"
		}
		fields = append(fields, signed.Field{Label: label, Value: l.Line})
	}
	return append(fields, signed.Field{Label: "Pending", Value: "requests of the wallet are withdrawn"}), nil
}

// Apply sets the wallet's policy, if the wallet is still at the version
// the change replaces, and withdraws the wallet's pending requests.
func (h policyHandler) Apply(ctx context.Context, ch *ChangeRecord) (string, error) {
	w, p, pc, err := h.parse(ctx, ch.Subject, ch.Payload)
	if err != nil {
		return "", err
	}
	w.setPolicy(p, pc.BaseVersion+1)
	if err := h.c.cfg.Wallets.UpdateWallet(ctx, w); err != nil {
		return "", fmt.Errorf("store the wallet's new policy: %w", err)
	}
	n, err := h.c.withdrawPending(ctx, w.Name, fmt.Sprintf("the wallet's policy changed from version %d to %d (change %s) while it was pending: submit it again", pc.BaseVersion, pc.BaseVersion+1, ch.ID))
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("wallet %s: policy version %d; %d pending requests withdrawn", w.Name, pc.BaseVersion+1, n), nil
}

// withdrawPending closes the wallet's pending and time-locked requests
// as withdrawn, and queues their open prompts for withdrawal from the
// devices (reqMu is held).
func (c *Core) withdrawPending(ctx context.Context, wallet, why string) (int, error) {
	rs, err := c.cfg.Requests.ListRequests(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range rs {
		if r.Wallet != wallet || (r.State != RequestPending && r.State != RequestApproved) {
			continue
		}
		c.withdrawQueue = append(c.withdrawQueue, openPrompts(r.ID, r.Prompts, r.Answers)...)
		r.State, r.FinishedAt, r.Error = RequestWithdrawn, c.cfg.Now().UTC(), why
		if err := c.cfg.Requests.UpdateRequest(ctx, r); err != nil {
			return n, fmt.Errorf("withdraw request %s: %w", r.ID, err)
		}
		n++
	}
	return n, nil
}

// takeWithdrawals returns and clears the prompts queued for withdrawal
// (reqMu is held).
func (c *Core) takeWithdrawals() []PromptRef {
	q := c.withdrawQueue
	c.withdrawQueue = nil
	return q
}

// signAfterText formats a time lock's end for errors.
func signAfterText(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") }
