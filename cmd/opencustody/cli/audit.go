package cli

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/protocol/apipb"
)

func init() { commands = append(commands, newAuditCommand) }

// withAudit calls the Audit API (see callHSMD).
func (g *globals) withAudit(ctx context.Context, f *hsmdFlags, timeout time.Duration, call func(context.Context, apipb.AuditClient) error) error {
	return callHSMD(ctx, g, f, timeout, apipb.NewAuditClient, call)
}

// auditEntryJSON is an audit entry, for --json output and export.
type auditEntryJSON struct {
	Type    string `json:"type"` // "entry"
	Seq     uint64 `json:"seq"`
	Time    string `json:"time"`
	Kind    string `json:"kind"`
	Subject string `json:"subject"`
	Detail  string `json:"detail"`
	Prev    string `json:"prev"`
	Hash    string `json:"hash"`
}

// auditCheckpointJSON is a signed checkpoint, for export.
type auditCheckpointJSON struct {
	Type      string `json:"type"` // "checkpoint"
	Seq       uint64 `json:"seq"`
	Hash      string `json:"hash"`
	Time      string `json:"time"`
	Algorithm int32  `json:"algorithm"`
	PublicKey string `json:"public_key"`
	Signature string `json:"signature"`
}

func auditTime(ns int64) string { return time.Unix(0, ns).UTC().Format(time.RFC3339Nano) }

func newAuditEntryJSON(e *apipb.AuditEntry) *auditEntryJSON {
	return &auditEntryJSON{Type: "entry", Seq: e.GetSeq(), Time: auditTime(e.GetTimeUnixNano()), Kind: e.GetKind(),
		Subject: e.GetSubject(), Detail: e.GetDetail(), Prev: hex.EncodeToString(e.GetPrev()), Hash: hex.EncodeToString(e.GetHash())}
}

func newAuditCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "audit",
		Short: "Show, verify and export hsmd's audit log",
		Long: `audit reads hsmd's audit log: every security event (pairing, revocation,
request, prompt, approval, rejection, signature, failed login on hsmd's
APIs) as an entry of a hash chain, with checkpoints signed by the HSM
identity key.

'audit verify' recomputes the chain and checks the checkpoints and the
record store's manifests, and exits with status 5 if it finds a problem,
naming each one's position: an edited, planted or deleted entry, the newest
included. A copy of the whole database from an earlier moment looks like a
shorter genuine log to an hsmd started on it without its pin file: keep
'audit export' copies elsewhere to compare.`,
	}
	c.AddCommand(newAuditShowCommand(g), newAuditVerifyCommand(g), newAuditExportCommand(g))
	return c
}

func listAudit(c *cobra.Command, g *globals, f *hsmdFlags) (*apipb.ListAuditResponse, error) {
	var res *apipb.ListAuditResponse
	err := g.withAudit(c.Context(), f, 60*time.Second, func(ctx context.Context, a apipb.AuditClient) (err error) {
		res, err = a.ListAudit(ctx, &apipb.ListAuditRequest{})
		return err
	})
	return res, err
}

func newAuditShowCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "show",
		Short: "List the audit log's entries",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			res, err := listAudit(c, g, &f)
			if err != nil {
				return err
			}
			entries := make([]*auditEntryJSON, 0, len(res.GetEntries()))
			for _, e := range res.GetEntries() {
				entries = append(entries, newAuditEntryJSON(e))
			}
			if g.json {
				return writeJSON(g.streams.Out, entries)
			}
			if len(entries) == 0 {
				fmt.Fprintln(g.streams.Out, "the audit log is empty")
				return nil
			}
			tw := tabwriter.NewWriter(g.streams.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tSUBJECT\tDETAIL")
			for _, e := range entries {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", e.Seq, e.Time, e.Kind, e.Subject, e.Detail)
			}
			return tw.Flush()
		},
	}
	addHSMDFlags(c, &f)
	addJSONFlag(c, g)
	return c
}

func newAuditVerifyCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "verify",
		Short: "Recompute the audit chain and check its signed checkpoints",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var res *apipb.VerifyAuditResponse
			err := g.withAudit(c.Context(), &f, 5*time.Minute, func(ctx context.Context, a apipb.AuditClient) (err error) {
				res, err = a.VerifyAudit(ctx, &apipb.VerifyAuditRequest{})
				return err
			})
			if err != nil {
				return err
			}
			type problem struct {
				Seq        uint64 `json:"seq"`
				Checkpoint bool   `json:"checkpoint,omitempty"`
				What       string `json:"what"`
			}
			problems := make([]problem, 0, len(res.GetProblems()))
			for _, p := range res.GetProblems() {
				problems = append(problems, problem{p.GetSeq(), p.GetCheckpoint(), p.GetWhat()})
			}
			if g.json {
				if err := writeJSON(g.streams.Out, map[string]any{
					"entries": res.GetEntries(), "last_seq": res.GetLastSeq(), "checkpoints": res.GetCheckpoints(),
					"last_checkpoint": res.GetLastCheckpoint(), "problems": problems,
				}); err != nil {
					return err
				}
			} else {
				for _, p := range problems {
					what := "entry"
					if p.Checkpoint {
						what = "checkpoint"
					}
					fmt.Fprintf(g.streams.Out, "%s %d: %s\n", what, p.Seq, p.What)
				}
				fmt.Fprintf(g.streams.Out, "%d entries (last %d), %d checkpoints; signed up to entry %d\n",
					res.GetEntries(), res.GetLastSeq(), res.GetCheckpoints(), res.GetLastCheckpoint())
				if n := res.GetLastSeq() - min(res.GetLastSeq(), res.GetLastCheckpoint()); n > 0 && len(problems) == 0 {
					fmt.Fprintf(g.streams.Out, "note: the last %d entries are after the latest checkpoint; their removal would not be detected\n", n)
				}
			}
			if len(problems) > 0 {
				return withCode(ExitIntegrity, fmt.Errorf("audit log fails verification: %d problems, the first at %s %d", len(problems), map[bool]string{false: "entry", true: "checkpoint"}[problems[0].Checkpoint], problems[0].Seq))
			}
			return nil
		},
	}
	addHSMDFlags(c, &f)
	addJSONFlag(c, g)
	return c
}

func newAuditExportCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "export",
		Short: "Write every audit entry and checkpoint to stdout as JSON lines",
		Long: `export writes the audit log as JSON lines: each entry ("type": "entry")
and each signed checkpoint ("type": "checkpoint"), in order. Keeping an
export elsewhere preserves the latest checkpoint where the database cannot
reach it.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			res, err := listAudit(c, g, &f)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(g.streams.Out)
			for _, e := range res.GetEntries() {
				if err := enc.Encode(newAuditEntryJSON(e)); err != nil {
					return err
				}
			}
			for _, cp := range res.GetCheckpoints() {
				j := &auditCheckpointJSON{Type: "checkpoint", Seq: cp.GetSeq(), Hash: hex.EncodeToString(cp.GetHash()), Time: auditTime(cp.GetTimeUnixNano()),
					Algorithm: cp.GetAlgorithm(), PublicKey: hex.EncodeToString(cp.GetPublicKey()), Signature: hex.EncodeToString(cp.GetSignature())}
				if err := enc.Encode(j); err != nil {
					return err
				}
			}
			return nil
		},
	}
	addHSMDFlags(c, &f)
	return c
}
