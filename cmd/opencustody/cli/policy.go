package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/policy"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

func init() { commands = append(commands, newPolicyCommand, newChangeCommand) }

func newPolicyCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "policy",
		Short: "Show, test and change wallet policies",
		Long: `A wallet's policy says who must approve which transfers: approver groups with
m-of-n quorums combined with all, any and sequential steps, amount tiers, an
allow-list, velocity limits, prompt expiry, a time lock and single veto. The
document is YAML or JSON (see hsm/policy's documentation); hsmd evaluates it
inside its trusted core.

Changing a policy is an admin change: 'policy set' proposes it, every admin's
device (the proposer's excepted) shows the diff, and the admin quorum must
approve it there. Once applied, the wallet's pending requests are withdrawn
and must be submitted again.`,
	}
	c.AddCommand(newPolicyShowCommand(g), newPolicySetCommand(g), newPolicyDiffCommand(g), newPolicyTestCommand(g))
	return c
}

// policyJSON is a wallet's policy for --json output.
type policyJSON struct {
	Wallet   string          `json:"wallet"`
	Version  uint64          `json:"version"`
	Document json.RawMessage `json:"document"`
	Lines    []string        `json:"lines"`
}

func getPolicy(ctx context.Context, g *globals, f *hsmdFlags, wallet string) (*apipb.Policy, error) {
	var p *apipb.Policy
	err := g.withCustody(ctx, f, 30*time.Second, func(ctx context.Context, cl apipb.CustodyClient) (err error) {
		p, err = cl.GetPolicy(ctx, &apipb.GetPolicyRequest{Wallet: wallet})
		return err
	})
	return p, err
}

func newPolicyShowCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "show WALLET",
		Short: "Show a wallet's policy, one fact per line (--json: the document)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			p, err := getPolicy(c.Context(), g, &f, args[0])
			if err != nil {
				return err
			}
			if g.json {
				return writeJSON(g.streams.Out, policyJSON{Wallet: p.GetWallet(), Version: p.GetVersion(), Document: p.GetDocument(), Lines: p.GetLines()})
			}
			fmt.Fprintf(g.streams.Out, "wallet %s, policy version %d\n", p.GetWallet(), p.GetVersion())
			for _, l := range p.GetLines() {
				fmt.Fprintln(g.streams.Out, "  "+l)
			}
			return nil
		},
	}
	addHSMDFlags(c, &f)
	addJSONFlag(c, g)
	return c
}

// readPolicyFile reads and checks a policy document, naming the file in
// errors.
func readPolicyFile(g *globals, path string) ([]byte, *policy.Policy, error) {
	var r io.Reader = g.streams.In
	if path != "-" {
		fh, err := os.Open(path)
		if err != nil {
			return nil, nil, withCode(ExitUsage, err)
		}
		defer fh.Close()
		r = fh
	}
	b, err := io.ReadAll(io.LimitReader(r, policy.MaxDocumentSize+1))
	if err != nil {
		return nil, nil, err
	}
	p, err := policy.Parse(b)
	if err != nil {
		return nil, nil, withCode(ExitUsage, fmt.Errorf("%s: %w", path, err))
	}
	return b, p, nil
}

func newPolicyDiffCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "diff WALLET FILE",
		Short: "Compare a policy document with the wallet's policy, changing nothing",
		Long: `diff checks FILE as hsmd would and prints, line by line, what it removes (-)
and adds (+) to the wallet's current policy: what the admins' devices would show
for 'policy set'. It exits 0 whether or not there are differences.`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			_, next, err := readPolicyFile(g, args[1])
			if err != nil {
				return err
			}
			cur, err := getPolicy(c.Context(), g, &f, args[0])
			if err != nil {
				return err
			}
			old, err := policy.Parse(cur.GetDocument())
			if err != nil {
				return fmt.Errorf("hsmd's policy of %s: %w", args[0], err)
			}
			diff := policy.Diff(old, next)
			if g.json {
				lines := make([]string, 0, len(diff))
				for _, d := range diff {
					lines = append(lines, d.String())
				}
				return writeJSON(g.streams.Out, map[string]any{"wallet": args[0], "from_version": cur.GetVersion(), "diff": lines})
			}
			if len(diff) == 0 {
				fmt.Fprintf(g.streams.Out, "no change to wallet %s's policy (version %d)\n", args[0], cur.GetVersion())
				return nil
			}
			fmt.Fprintf(g.streams.Out, "wallet %s, policy version %d -> %d:\n", args[0], cur.GetVersion(), cur.GetVersion()+1)
			for _, d := range diff {
				fmt.Fprintln(g.streams.Out, d.String())
			}
			return nil
		},
	}
	addHSMDFlags(c, &f)
	addJSONFlag(c, g)
	return c
}

func newPolicySetCommand(g *globals) *cobra.Command {
	var (
		f         hsmdFlags
		initiator string
	)
	c := &cobra.Command{
		Use:   "set WALLET FILE [--initiator USER]",
		Short: "Propose a new policy for a wallet: an admin change; prints its id",
		Long: `set sends FILE (YAML or JSON; "-" reads standard input) to hsmd as a proposed
change of the wallet's policy and prints the change's id. Nothing changes until
the admin quorum approves it on their devices, which show the diff; follow it
with 'opencustody change show ID'. The initiator (default $OPENCUSTODY_USER,
then the login name) may not approve their own change.`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			doc, _, err := readPolicyFile(g, args[1])
			if err != nil {
				return err
			}
			if initiator == "" {
				initiator = defaultInitiator()
			}
			var ch *apipb.Change
			err = g.withCustody(c.Context(), &f, 30*time.Second, func(ctx context.Context, cl apipb.CustodyClient) (err error) {
				ch, err = cl.ProposePolicy(ctx, &apipb.ProposePolicyRequest{Wallet: args[0], Document: doc, Initiator: initiator})
				return err
			})
			if err != nil {
				return err
			}
			j := newChangeJSON(ch)
			if g.json {
				return writeJSON(g.streams.Out, j)
			}
			fmt.Fprintln(g.streams.Out, j.ID)
			fmt.Fprintf(g.streams.Err, "change %s proposed: %d of %s must approve on their devices before %s\n",
				j.ID, j.Quorum, strings.Join(j.Admins, ", "), j.ExpiresAt)
			return nil
		},
	}
	addHSMDFlags(c, &f)
	c.Flags().StringVar(&initiator, "initiator", "", "the user who proposes the change (default $OPENCUSTODY_USER, then the login name)")
	addJSONFlag(c, g)
	return c
}

// decisionJSON is what the policy says of a PSBT, for --json output.
type decisionJSON struct {
	Outcome       string       `json:"outcome"`
	Rule          string       `json:"rule,omitempty"`
	Needs         string       `json:"needs,omitempty"`
	Missing       []string     `json:"missing,omitempty"`
	Reason        string       `json:"reason,omitempty"`
	Ask           []string     `json:"ask,omitempty"`
	Eligible      []string     `json:"eligible,omitempty"`
	PolicyVersion uint64       `json:"policy_version"`
	Explanation   []string     `json:"explanation"`
	TxID          string       `json:"txid"`
	Outputs       []outputJSON `json:"outputs"`
}

func newPolicyTestCommand(g *globals) *cobra.Command {
	var (
		f         hsmdFlags
		initiator string
	)
	c := &cobra.Command{
		Use:   "test WALLET FILE.psbt [--initiator USER]",
		Short: "Explain which rule applies to a PSBT and what it needs, without signing",
		Long: `test asks hsmd to evaluate a PSBT under the wallet's policy exactly as a
submission would, and prints the rule that applies, what it needs, whom the
devices would ask first, and each step of the evaluation. Nothing is stored,
prompted or signed. It exits 4 when the policy refuses the transfer or its rule
cannot be met.`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			psbt, err := readPSBT(g, args[1])
			if err != nil {
				return err
			}
			if initiator == "" {
				initiator = defaultInitiator()
			}
			var d *apipb.PolicyDecision
			err = g.withCustody(c.Context(), &f, 30*time.Second, func(ctx context.Context, cl apipb.CustodyClient) (err error) {
				d, err = cl.TestPolicy(ctx, &apipb.TestPolicyRequest{Wallet: args[0], Psbt: psbt, Initiator: initiator})
				return err
			})
			if err != nil {
				return err
			}
			j := decisionJSON{
				Outcome: d.GetOutcome(), Rule: d.GetRule(), Needs: d.GetNeeds(), Missing: d.GetMissing(), Reason: d.GetReason(),
				Ask: d.GetAsk(), Eligible: d.GetEligible(), PolicyVersion: d.GetPolicyVersion(), Explanation: orEmpty(d.GetExplanation()),
				TxID: d.GetSummary().GetTxid(), Outputs: []outputJSON{},
			}
			for _, o := range d.GetSummary().GetOutputs() {
				j.Outputs = append(j.Outputs, outputJSON{Address: o.GetAddress(), AmountSat: o.GetAmount(),
					Amount: core.FormatAmount(btcutil.Amount(o.GetAmount())), Change: o.GetChange(), Dust: o.GetDust()})
			}
			if g.json {
				if err := writeJSON(g.streams.Out, j); err != nil {
					return err
				}
			} else {
				printDecision(g.streams.Out, args[0], &j)
			}
			if j.Outcome == "refused" || j.Outcome == "rejected" {
				return withCode(ExitRefused, fmt.Errorf("the policy of %s would refuse it: %s", args[0], j.Reason))
			}
			return nil
		},
	}
	addHSMDFlags(c, &f)
	c.Flags().StringVar(&initiator, "initiator", "", "the user who would submit it (default $OPENCUSTODY_USER, then the login name)")
	addJSONFlag(c, g)
	return c
}

func printDecision(w io.Writer, wallet string, j *decisionJSON) {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprintf(tw, "wallet\t%s, policy version %d\n", wallet, j.PolicyVersion)
	fmt.Fprintf(tw, "outcome\t%s\n", j.Outcome)
	if j.Rule != "" {
		fmt.Fprintf(tw, "rule\t%s\n", j.Rule)
	}
	if j.Needs != "" {
		fmt.Fprintf(tw, "needs\t%s\n", j.Needs)
	}
	if j.Reason != "" {
		fmt.Fprintf(tw, "reason\t%s\n", j.Reason)
	}
	if len(j.Ask) > 0 {
		fmt.Fprintf(tw, "asks first\t%s\n", strings.Join(j.Ask, ", "))
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "evaluation:")
	for _, l := range j.Explanation {
		fmt.Fprintln(w, "  "+l)
	}
}

// changeJSON is an admin change, for --json output.
type changeJSON struct {
	ID         string   `json:"id"`
	Kind       string   `json:"kind"`
	Subject    string   `json:"subject"`
	State      string   `json:"state"`
	Initiator  string   `json:"initiator"`
	Admins     []string `json:"admins"`
	Quorum     uint32   `json:"quorum"`
	ApprovedBy []string `json:"approved_by"`
	RejectedBy []string `json:"rejected_by"`
	Shown      []string `json:"shown"`
	CreatedAt  string   `json:"created_at"`
	ExpiresAt  string   `json:"expires_at"`
	FinishedAt string   `json:"finished_at,omitempty"`
	Result     string   `json:"result,omitempty"`
	Error      string   `json:"error,omitempty"`
}

func newChangeJSON(ch *apipb.Change) *changeJSON {
	j := &changeJSON{
		ID: ch.GetId(), Kind: ch.GetKind(), Subject: ch.GetSubject(), State: ch.GetState(), Initiator: ch.GetInitiator(),
		Admins: orEmpty(ch.GetAdmins()), Quorum: ch.GetQuorum(), ApprovedBy: orEmpty(ch.GetApprovedBy()), RejectedBy: orEmpty(ch.GetRejectedBy()),
		Shown: []string{}, CreatedAt: unixTime(ch.GetCreatedAt()), ExpiresAt: unixTime(ch.GetExpiresAt()), FinishedAt: unixTime(ch.GetFinishedAt()),
		Result: ch.GetResult(), Error: ch.GetError(),
	}
	for _, f := range ch.GetFields() {
		j.Shown = append(j.Shown, f.GetLabel()+": "+f.GetValue())
	}
	return j
}

func (j *changeJSON) progress() string {
	switch j.State {
	case string(core.ChangePending):
		return fmt.Sprintf("pending: approved by %s; %d of %s needed", dash(strings.Join(j.ApprovedBy, ", ")), j.Quorum, strings.Join(j.Admins, ", "))
	case string(core.ChangeRejected):
		return "rejected by " + strings.Join(j.RejectedBy, ", ")
	case string(core.ChangeApplied):
		return "applied: " + j.Result
	case string(core.ChangeFailed):
		return "failed: " + j.Error
	case string(core.ChangeApproved):
		return "approved by " + strings.Join(j.ApprovedBy, ", ") + "; being carried out"
	}
	return j.State
}

func printChange(w io.Writer, j *changeJSON) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprintf(tw, "change\t%s (%s %s)\n", j.ID, j.Kind, j.Subject)
	fmt.Fprintf(tw, "state\t%s\n", j.progress())
	fmt.Fprintf(tw, "initiator\t%s\n", j.Initiator)
	fmt.Fprintf(tw, "created\t%s\n", j.CreatedAt)
	fmt.Fprintf(tw, "expires\t%s\n", j.ExpiresAt)
	if j.FinishedAt != "" {
		fmt.Fprintf(tw, "finished\t%s\n", j.FinishedAt)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "the admins' devices show:")
	for _, s := range j.Shown {
		fmt.Fprintln(w, "  "+s)
	}
	return nil
}

func newChangeCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "change",
		Short: "Follow admin changes (new policies and other changes the admin quorum approves)",
		Long: `An admin change (such as 'policy set') is carried out only once the admin
quorum approved it on their devices. The quorum is set at the key ceremony
('opencustody hsmd --ceremony --admin-quorum N'); the admins are the users with a
paired device of role admin, the change's initiator excepted.`,
	}
	c.AddCommand(newChangeShowCommand(g), newChangeListCommand(g))
	return c
}

func newChangeShowCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "show ID",
		Short: "Show an admin change: what the admins see, who approved, its state",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var ch *apipb.Change
			err := g.withOperator(c.Context(), &f, 30*time.Second, func(ctx context.Context, cl apipb.OperatorClient) (err error) {
				ch, err = cl.GetChange(ctx, &apipb.GetChangeRequest{Id: args[0]})
				return err
			})
			if err != nil {
				return err
			}
			j := newChangeJSON(ch)
			if g.json {
				return writeJSON(g.streams.Out, j)
			}
			return printChange(g.streams.Out, j)
		},
	}
	addHSMDFlags(c, &f)
	addJSONFlag(c, g)
	return c
}

func newChangeListCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "List admin changes, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var res *apipb.ListChangesResponse
			err := g.withOperator(c.Context(), &f, 30*time.Second, func(ctx context.Context, cl apipb.OperatorClient) (err error) {
				res, err = cl.ListChanges(ctx, &apipb.ListChangesRequest{})
				return err
			})
			if err != nil {
				return err
			}
			js := make([]*changeJSON, 0, len(res.GetChanges()))
			for _, ch := range res.GetChanges() {
				js = append(js, newChangeJSON(ch))
			}
			if g.json {
				return writeJSON(g.streams.Out, js)
			}
			if len(js) == 0 {
				fmt.Fprintln(g.streams.Out, "no admin changes")
				return nil
			}
			tw := tabwriter.NewWriter(g.streams.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tSUBJECT\tSTATE\tINITIATOR\tAPPROVED BY\tCREATED")
			for _, j := range js {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, j.Kind, j.Subject, j.State, j.Initiator, dash(strings.Join(j.ApprovedBy, ",")), j.CreatedAt)
			}
			return tw.Flush()
		},
	}
	addHSMDFlags(c, &f)
	addJSONFlag(c, g)
	return c
}

// errNoPolicyFile is returned when wallet create gets --policy and
// --approvers together.
var errNoPolicyFile = errors.New("wallet create takes --policy FILE, or --approvers and --quorum, not both")
