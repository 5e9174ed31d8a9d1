package cli

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

func init() { commands = append(commands, newRequestCommand) }

// requestJSON is a request as hsmd knows it, for --json output.
type requestJSON struct {
	ID         string        `json:"id"`
	Wallet     string        `json:"wallet"`
	State      string        `json:"state"`
	Quorum     uint32        `json:"quorum"`
	Approvers  []string      `json:"approvers"`
	ApprovedBy []string      `json:"approved_by"`
	RejectedBy []string      `json:"rejected_by"`
	Network    string        `json:"network"`
	TxID       string        `json:"txid"`
	Inputs     uint32        `json:"inputs"`
	Outputs    []outputJSON  `json:"outputs"`
	FeeSat     int64         `json:"fee_sat"`
	FeeRate    string        `json:"fee_rate"`
	VSize      int64         `json:"vsize"`
	LockTime   uint32        `json:"lock_time,omitempty"`
	CreatedAt  string        `json:"created_at"`
	ExpiresAt  string        `json:"expires_at"`
	FinishedAt string        `json:"finished_at,omitempty"`
	Prompts    []promptJSON  `json:"prompts"`
	Answers    []answerJSON  `json:"answers"`
	Error      string        `json:"error,omitempty"`
	Signed     *signedTxJSON `json:"signed,omitempty"`
	Summary    string        `json:"summary_canonical"`
	Initiator  string        `json:"initiator,omitempty"`
	// The policy version it was submitted under, the rule that applies,
	// and while pending what it needs and still misses.
	PolicyVersion uint64   `json:"policy_version"`
	Rule          string   `json:"rule,omitempty"`
	Needs         string   `json:"needs,omitempty"`
	Missing       []string `json:"missing,omitempty"`
	SignAfter     string   `json:"sign_after,omitempty"`
}

type outputJSON struct {
	Address   string `json:"address"`
	AmountSat int64  `json:"amount_sat"`
	Amount    string `json:"amount"`
	Change    bool   `json:"change,omitempty"`
	Dust      bool   `json:"dust,omitempty"`
}

type promptJSON struct {
	DeviceID string `json:"device_id"`
	User     string `json:"user"`
	Answered bool   `json:"answered"`
}

type answerJSON struct {
	DeviceID string `json:"device_id"`
	User     string `json:"user"`
	Decision string `json:"decision"`
	Counter  uint64 `json:"counter"`
	At       string `json:"at"`
}

// signedTxJSON is a signed request's result: the transaction in hex (for
// sendrawtransaction) and the finalized PSBT in base64.
type signedTxJSON struct {
	TxID string `json:"txid"`
	Tx   string `json:"tx"`
	PSBT string `json:"psbt"`
}

var requestStates = map[apipb.RequestState]string{
	apipb.RequestState_REQUEST_STATE_PENDING:   string(core.RequestPending),
	apipb.RequestState_REQUEST_STATE_APPROVED:  string(core.RequestApproved),
	apipb.RequestState_REQUEST_STATE_SIGNED:    string(core.RequestSigned),
	apipb.RequestState_REQUEST_STATE_REJECTED:  string(core.RequestRejected),
	apipb.RequestState_REQUEST_STATE_EXPIRED:   string(core.RequestExpired),
	apipb.RequestState_REQUEST_STATE_FAILED:    string(core.RequestFailed),
	apipb.RequestState_REQUEST_STATE_WITHDRAWN: string(core.RequestWithdrawn),
}

func parseRequestState(s string) (apipb.RequestState, error) {
	if s == "" {
		return apipb.RequestState_REQUEST_STATE_UNSPECIFIED, nil
	}
	for k, v := range requestStates {
		if v == s {
			return k, nil
		}
	}
	return 0, withCode(ExitUsage, fmt.Errorf("--state %q: use pending, approved, signed, rejected, expired, failed or withdrawn", s))
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func newRequestJSON(r *apipb.Request) *requestJSON {
	s := r.GetSummary()
	j := &requestJSON{
		ID: r.GetId(), Wallet: r.GetWallet(), State: requestStates[r.GetState()], Quorum: r.GetQuorum(),
		Approvers: orEmpty(r.GetApprovers()), ApprovedBy: orEmpty(r.GetApprovedBy()), RejectedBy: orEmpty(r.GetRejectedBy()),
		Network: s.GetNetwork(), TxID: s.GetTxid(), Inputs: s.GetInputs(), FeeSat: s.GetFee(),
		FeeRate: bitcoin.FeeRate(s.GetFeeRateSatPerKvb()).String(), VSize: s.GetVsize(), LockTime: s.GetLockTime(),
		CreatedAt: unixTime(r.GetCreatedAt()), ExpiresAt: unixTime(r.GetExpiresAt()), FinishedAt: unixTime(r.GetFinishedAt()),
		Outputs: []outputJSON{}, Prompts: []promptJSON{}, Answers: []answerJSON{}, Error: r.GetError(),
		Summary:   hex.EncodeToString(r.GetSummaryCanonical()),
		Initiator: r.GetInitiator(), PolicyVersion: r.GetPolicyVersion(), Rule: r.GetRule(),
		Needs: r.GetPolicyNeeds(), Missing: r.GetPolicyMissing(), SignAfter: unixTime(r.GetSignAfter()),
	}
	if j.State == "" {
		j.State = "unknown"
	}
	for _, o := range s.GetOutputs() {
		j.Outputs = append(j.Outputs, outputJSON{Address: o.GetAddress(), AmountSat: o.GetAmount(),
			Amount: core.FormatAmount(btcutil.Amount(o.GetAmount())), Change: o.GetChange(), Dust: o.GetDust()})
	}
	for _, p := range r.GetPrompts() {
		j.Prompts = append(j.Prompts, promptJSON{DeviceID: p.GetDeviceId(), User: p.GetUser(), Answered: p.GetAnswered()})
	}
	for _, a := range r.GetAnswers() {
		d := "reject"
		if a.GetApproved() {
			d = "approve"
		}
		j.Answers = append(j.Answers, answerJSON{DeviceID: a.GetDeviceId(), User: a.GetUser(), Decision: d, Counter: a.GetCounter(), At: unixTime(a.GetAt())})
	}
	if len(r.GetSignedTx()) > 0 {
		j.Signed = &signedTxJSON{TxID: s.GetTxid(), Tx: hex.EncodeToString(r.GetSignedTx()), PSBT: base64.StdEncoding.EncodeToString(r.GetSignedPsbt())}
	}
	return j
}

// progress says where a request stands, in words.
func (j *requestJSON) progress() string {
	switch j.State {
	case string(core.RequestPending):
		if len(j.Missing) > 0 {
			return fmt.Sprintf("pending: approved by %s; missing %s", dash(strings.Join(j.ApprovedBy, ", ")), strings.Join(j.Missing, "; "))
		}
		need := int(j.Quorum) - len(j.ApprovedBy)
		if len(j.ApprovedBy) == 0 {
			return fmt.Sprintf("pending: no approval yet, %d needed", need)
		}
		return fmt.Sprintf("pending: approved by %s; %d more needed", strings.Join(j.ApprovedBy, ", "), need)
	case string(core.RequestRejected):
		return "rejected by " + strings.Join(j.RejectedBy, ", ")
	case string(core.RequestApproved):
		if j.SignAfter != "" {
			return fmt.Sprintf("approved by %s; time-locked: signed from %s", strings.Join(j.ApprovedBy, ", "), j.SignAfter)
		}
		return fmt.Sprintf("%s: approved by %s", j.State, strings.Join(j.ApprovedBy, ", "))
	case string(core.RequestWithdrawn):
		return "withdrawn: " + j.Error
	case string(core.RequestSigned):
		return fmt.Sprintf("%s: approved by %s", j.State, strings.Join(j.ApprovedBy, ", "))
	case string(core.RequestFailed):
		return "failed: " + j.Error
	}
	return j.State
}

// printRequest writes a request for people.
func printRequest(w io.Writer, j *requestJSON) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprintf(tw, "request\t%s (wallet %s, %s)\n", j.ID, j.Wallet, j.Network)
	fmt.Fprintf(tw, "state\t%s\n", j.progress())
	fmt.Fprintf(tw, "txid\t%s\n", j.TxID)
	if j.Initiator != "" {
		fmt.Fprintf(tw, "initiator\t%s\n", j.Initiator)
	}
	if j.Rule != "" {
		fmt.Fprintf(tw, "policy\tversion %d, %s\n", j.PolicyVersion, j.Rule)
	}
	if j.Needs != "" {
		fmt.Fprintf(tw, "needs\t%s\n", j.Needs)
	}
	for _, o := range j.Outputs {
		what := "send"
		if o.Change {
			what = "change"
		}
		dust := ""
		if o.Dust {
			dust = " (dust)"
		}
		fmt.Fprintf(tw, "%s\t%s to %s%s\n", what, o.Amount, o.Address, dust)
	}
	fmt.Fprintf(tw, "fee\t%s, %s\n", core.FormatAmount(btcutil.Amount(j.FeeSat)), j.FeeRate)
	fmt.Fprintf(tw, "created\t%s\n", j.CreatedAt)
	fmt.Fprintf(tw, "expires\t%s\n", j.ExpiresAt)
	if j.FinishedAt != "" {
		fmt.Fprintf(tw, "finished\t%s\n", j.FinishedAt)
	}
	answered := map[string]string{}
	for _, a := range j.Answers {
		answered[a.User] = a.Decision + "d"
	}
	var who []string
	for _, u := range j.Approvers {
		st := answered[u]
		if st == "" {
			st = "no answer"
		}
		who = append(who, fmt.Sprintf("%s (%s)", u, st))
	}
	if j.Quorum > 0 {
		fmt.Fprintf(tw, "approvers\t%s; quorum %d\n", strings.Join(who, ", "), j.Quorum)
	} else {
		fmt.Fprintf(tw, "approvers\t%s\n", strings.Join(who, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if j.Signed != nil {
		fmt.Fprintf(w, "signed: 'opencustody request result %s' prints the transaction\n", j.ID)
	}
	return nil
}

func newRequestCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "request",
		Short: "Submit transactions for approval, and follow them to the signed result",
		Long: `A request asks hsmd to have a transaction (a PSBT) approved and signed. hsmd
checks that the wallet can sign it and derives what approvers are shown from the
transaction itself; each approver's device shows a prompt signed by the HSM. When
a quorum of approvers has approved on their devices, the HSM signs the wallet's
inputs; one rejection stops the request.`,
	}
	c.AddCommand(newRequestSubmitCommand(g), newRequestListCommand(g), newRequestShowCommand(g), newRequestResultCommand(g))
	return c
}

func newRequestSubmitCommand(g *globals) *cobra.Command {
	var (
		f                 hsmdFlags
		wallet, initiator string
	)
	c := &cobra.Command{
		Use:   "submit FILE.psbt --wallet NAME [--initiator USER]",
		Short: "Submit a PSBT for approval; prints the request id",
		Long: `submit sends a PSBT (BIP-174, binary or base64; "-" reads standard input) to
hsmd for the wallet's approvers. It prints the request id; 'opencustody request
show ID' follows it. Every input must be a coin of the wallet, with its previous
transaction: hsmd refuses anything it cannot prove.

--initiator names the user on whose behalf the request is submitted (by default
$OPENCUSTODY_USER, then the login name): that user gets no prompt, and their
approval would not count. hsmd cannot verify it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if wallet == "" {
				return withCode(ExitUsage, errors.New("request submit needs --wallet"))
			}
			if initiator == "" {
				initiator = defaultInitiator()
			}
			if initiator == "" {
				return withCode(ExitUsage, errors.New("request submit needs --initiator (no login name to default to)"))
			}
			psbt, err := readPSBT(g, args[0])
			if err != nil {
				return err
			}
			var r *apipb.Request
			err = g.withCustody(c.Context(), &f, time.Minute, func(ctx context.Context, cl apipb.CustodyClient) (err error) {
				r, err = cl.Submit(ctx, &apipb.SubmitRequest{Wallet: wallet, Initiator: initiator, Psbt: psbt})
				return err
			})
			if err != nil {
				return err
			}
			j := newRequestJSON(r)
			if g.json {
				return writeJSON(g.streams.Out, j)
			}
			fmt.Fprintln(g.streams.Out, j.ID)
			fmt.Fprintf(g.streams.Err, "request %s submitted: %d of %s must approve on their devices (%d prompts) before %s\n",
				j.ID, j.Quorum, strings.Join(j.Approvers, ", "), len(j.Prompts), j.ExpiresAt)
			return nil
		},
	}
	addHSMDFlags(c, &f)
	c.Flags().StringVar(&wallet, "wallet", "", "the wallet whose keys sign")
	c.Flags().StringVar(&initiator, "initiator", "", "the user who initiates the request (default $OPENCUSTODY_USER, then the login name)")
	addJSONFlag(c, g)
	return c
}

// defaultInitiator is $OPENCUSTODY_USER, else the login name.
func defaultInitiator() string {
	if u := os.Getenv("OPENCUSTODY_USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}

// readPSBT reads a PSBT file, or standard input for "-", up to the size
// hsmd takes.
func readPSBT(g *globals, path string) ([]byte, error) {
	var r io.Reader = g.streams.In
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, withCode(ExitUsage, err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, bitcoin.MaxPSBTSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > bitcoin.MaxPSBTSize {
		return nil, withCode(ExitUsage, fmt.Errorf("%s: more than %d bytes; hsmd refuses PSBTs that large", path, bitcoin.MaxPSBTSize))
	}
	return b, nil
}

func newRequestListCommand(g *globals) *cobra.Command {
	var (
		f             hsmdFlags
		wallet, state string
	)
	c := &cobra.Command{
		Use:   "list",
		Short: "List requests, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			st, err := parseRequestState(state)
			if err != nil {
				return err
			}
			var res *apipb.ListRequestsResponse
			err = g.withCustody(c.Context(), &f, 30*time.Second, func(ctx context.Context, cl apipb.CustodyClient) (err error) {
				res, err = cl.ListRequests(ctx, &apipb.ListRequestsRequest{Wallet: wallet, State: st})
				return err
			})
			if err != nil {
				return err
			}
			rs := make([]*requestJSON, 0, len(res.GetRequests()))
			for _, r := range res.GetRequests() {
				rs = append(rs, newRequestJSON(r))
			}
			if g.json {
				return writeJSON(g.streams.Out, rs)
			}
			if len(rs) == 0 {
				fmt.Fprintln(g.streams.Out, "no requests")
				return nil
			}
			tw := tabwriter.NewWriter(g.streams.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tWALLET\tSTATE\tAPPROVED BY\tREJECTED BY\tSENT\tCREATED")
			for _, r := range rs {
				var sent int64
				for _, o := range r.Outputs {
					if !o.Change {
						sent += o.AmountSat
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Wallet, r.State, dash(strings.Join(r.ApprovedBy, ",")),
					dash(strings.Join(r.RejectedBy, ",")), btcutil.Amount(sent).Format(btcutil.AmountBTC), r.CreatedAt)
			}
			return tw.Flush()
		},
	}
	addHSMDFlags(c, &f)
	c.Flags().StringVar(&wallet, "wallet", "", "only this wallet's requests")
	c.Flags().StringVar(&state, "state", "", "only requests in this state: pending, approved, signed, rejected, expired or failed")
	addJSONFlag(c, g)
	return c
}

func getRequest(ctx context.Context, g *globals, f *hsmdFlags, id string) (*requestJSON, error) {
	var r *apipb.Request
	err := g.withCustody(ctx, f, 30*time.Second, func(ctx context.Context, cl apipb.CustodyClient) (err error) {
		r, err = cl.GetRequest(ctx, &apipb.GetRequestRequest{Id: id})
		return err
	})
	if err != nil {
		return nil, err
	}
	return newRequestJSON(r), nil
}

func newRequestShowCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "show ID",
		Short: "Show a request: what it sends, who approved or rejected, its state",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			j, err := getRequest(c.Context(), g, &f, args[0])
			if err != nil {
				return err
			}
			if g.json {
				return writeJSON(g.streams.Out, j)
			}
			return printRequest(g.streams.Out, j)
		},
	}
	addHSMDFlags(c, &f)
	addJSONFlag(c, g)
	return c
}

func newRequestResultCommand(g *globals) *cobra.Command {
	var (
		f        hsmdFlags
		psbt, tx bool
	)
	c := &cobra.Command{
		Use:   "result ID [--tx|--psbt]",
		Short: "Print a signed request's transaction (hex) or finalized PSBT (base64)",
		Long: `result prints the signed transaction in hex, ready for sendrawtransaction
(--tx, the default), or the finalized PSBT in base64 (--psbt). A request that is
not signed exits 1 (pending, expired, failed) or 4 (rejected by an approver),
saying where it stands.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if psbt && tx {
				return withCode(ExitUsage, errors.New("--tx and --psbt exclude each other"))
			}
			j, err := getRequest(c.Context(), g, &f, args[0])
			if err != nil {
				return err
			}
			if j.Signed == nil {
				err := fmt.Errorf("request %s is not signed: %s", j.ID, j.progress())
				if j.State == string(core.RequestRejected) {
					return withCode(ExitRefused, err)
				}
				return err
			}
			switch {
			case g.json:
				return writeJSON(g.streams.Out, j.Signed)
			case psbt:
				fmt.Fprintln(g.streams.Out, j.Signed.PSBT)
			default:
				fmt.Fprintln(g.streams.Out, j.Signed.Tx)
			}
			return nil
		},
	}
	addHSMDFlags(c, &f)
	c.Flags().BoolVar(&tx, "tx", false, "print the final transaction in hex (the default)")
	c.Flags().BoolVar(&psbt, "psbt", false, "print the finalized PSBT in base64")
	addJSONFlag(c, g)
	return c
}
