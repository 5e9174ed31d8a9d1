package cli

import (
	"encoding/hex"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/hsm"
)

// hsmKey is a key as `hsm keys --json` and `hsm keygen --json` print it.
type hsmKey struct {
	Label            string `json:"label"`
	ID               string `json:"id"`
	URI              string `json:"uri"`
	Role             string `json:"role"`
	Algorithm        string `json:"algorithm"`
	KeyType          string `json:"key_type"`
	Curve            string `json:"curve,omitempty"`
	Sensitive        bool   `json:"sensitive"`
	AlwaysSensitive  bool   `json:"always_sensitive"`
	Extractable      bool   `json:"extractable"`
	NeverExtractable bool   `json:"never_extractable"`
	WrapWithTrusted  bool   `json:"wrap_with_trusted"`
	Backupable       bool   `json:"backupable"`
	PublicKey        string `json:"public_key,omitempty"`
	Fingerprint      string `json:"fingerprint,omitempty"`
}

func toHSMKey(k hsm.KeyInfo) hsmKey {
	out := hsmKey{
		Label: k.Label, ID: hex.EncodeToString(k.ID), URI: k.URI, Role: string(k.Role), Algorithm: string(k.Algorithm),
		KeyType: k.KeyType, Curve: k.Curve, Sensitive: k.Sensitive, AlwaysSensitive: k.AlwaysSensitive,
		Extractable: k.Extractable, NeverExtractable: k.NeverExtractable, WrapWithTrusted: k.WrapWithTrusted, Backupable: k.Backupable,
	}
	if k.PublicKey != nil {
		out.PublicKey = hex.EncodeToString(k.PublicKey.Bytes())
		if fp, err := k.PublicKey.Fingerprint(); err == nil {
			out.Fingerprint = fp.String()
		}
	}
	return out
}

func newHSMKeysCommand(g *globals, f *hsmFlags) *cobra.Command {
	c := &cobra.Command{
		Use:   "keys",
		Short: "List the keys on the token with their protection attributes",
		Long: `keys lists every private and secret key on the token: label, ID, role,
algorithm, and the PKCS#11 attributes that protect it. Every key OpenCustody
makes is sensitive (its value can never be read). Custody keys made with
hsm keygen --backupable are extractable by wrapping only, under a key the
Security Officer trusts, for moving them to another HSM; all other keys are
never extractable. The BACKUP column says which are which.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			s, _, err := openHSM(c.Context(), g, f)
			if err != nil {
				return err
			}
			defer s.Close()
			keys, err := s.ListKeys(c.Context())
			if err != nil {
				return err
			}
			out := make([]hsmKey, 0, len(keys))
			for _, k := range keys {
				out = append(out, toHSMKey(k))
			}
			if g.json {
				return writeJSON(g.streams.Out, out)
			}
			if len(out) == 0 {
				fmt.Fprintf(g.streams.Out, "no keys on token %q\n", s.Info().Label)
				return nil
			}
			tw := tabwriter.NewWriter(g.streams.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LABEL\tID\tROLE\tALGORITHM\tSENSITIVE\tALWAYS-SENSITIVE\tEXTRACTABLE\tNEVER-EXTRACTABLE\tBACKUP")
			for _, k := range out {
				backup := "no"
				if k.Backupable {
					backup = "wrap-only"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Label, k.ID, k.Role, k.Algorithm,
					hsmYesNo(k.Sensitive), hsmYesNo(k.AlwaysSensitive), hsmYesNo(k.Extractable), hsmYesNo(k.NeverExtractable), backup)
			}
			return tw.Flush()
		},
	}
	addJSONFlag(c, g)
	return c
}
