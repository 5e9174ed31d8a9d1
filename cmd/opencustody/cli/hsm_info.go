package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/hsm"
)

type hsmInfoResult struct {
	Module              string         `json:"module"`
	Library             string         `json:"library"`
	LibraryVersion      string         `json:"library_version"`
	Token               string         `json:"token"`
	Serial              string         `json:"serial"`
	Manufacturer        string         `json:"manufacturer"`
	Model               string         `json:"model"`
	Slot                uint           `json:"slot"`
	URI                 string         `json:"uri"`
	Mechanisms          []hsmMechanism `json:"mechanisms"`
	IdentityKey         string         `json:"identity_key,omitempty"`
	IdentityAlgorithm   string         `json:"identity_algorithm,omitempty"`
	IdentityFingerprint string         `json:"identity_fingerprint,omitempty"`
	Problems            []string       `json:"problems,omitempty"`
}

type hsmMechanism struct {
	Name      string `json:"name"`
	For       string `json:"for"`
	Supported bool   `json:"supported"`
}

func newHSMInfoCommand(g *globals, f *hsmFlags) *cobra.Command {
	c := &cobra.Command{
		Use:   "info",
		Short: "Show the PKCS#11 module, the token, the mechanisms OpenCustody needs, and the identity fingerprint",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx := c.Context()
			s, tc, err := openHSM(ctx, g, f)
			if err != nil {
				return err
			}
			defer s.Close()
			ti := s.Info()
			res := hsmInfoResult{
				Module: ti.ModulePath, Library: ti.LibraryDescription, LibraryVersion: ti.LibraryVersion,
				Token: ti.Label, Serial: ti.Serial, Manufacturer: ti.Manufacturer, Model: ti.Model, Slot: ti.SlotID, URI: ti.URI,
			}
			for _, m := range s.Mechanisms() {
				res.Mechanisms = append(res.Mechanisms, hsmMechanism{Name: m.Name, For: m.For, Supported: m.Supported})
				if !m.Supported {
					res.Problems = append(res.Problems, fmt.Sprintf("the token lacks %s (%s)", m.Name, m.For))
				}
			}
			if tc.IdentityKey != "" {
				res.IdentityKey = tc.IdentityKey
				pub, err := s.PublicKey(ctx, tc.IdentityKey)
				switch {
				case err != nil:
					res.Problems = append(res.Problems, fmt.Sprintf("identity key %q: %v", tc.IdentityKey, err))
				default:
					fp, err := pub.Fingerprint()
					if err != nil {
						return err
					}
					res.IdentityAlgorithm = string(pub.Algorithm)
					res.IdentityFingerprint = fp.String()
					if tc.IdentityFingerprint != "" && tc.IdentityFingerprint != fp.Hex() {
						res.Problems = append(res.Problems, fmt.Sprintf("the identity key's fingerprint is not the one hsm init recorded in %s: the key was replaced", hsm.TokenConfigFile))
					}
				}
			}
			if g.json {
				return writeJSON(g.streams.Out, res)
			}
			w := g.streams.Out
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "module\t%s (%s %s)\n", res.Module, res.Library, res.LibraryVersion)
			fmt.Fprintf(tw, "token\t%q, serial %s, slot %d\n", res.Token, res.Serial, res.Slot)
			fmt.Fprintf(tw, "manufacturer\t%s, model %s\n", res.Manufacturer, res.Model)
			fmt.Fprintf(tw, "uri\t%s\n", res.URI)
			tw.Flush()
			fmt.Fprintln(w, "\nmechanisms OpenCustody uses:")
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			for _, m := range res.Mechanisms {
				fmt.Fprintf(tw, "  %s\t%s\t%s\n", m.Name, hsmYesNo(m.Supported), m.For)
			}
			tw.Flush()
			if res.IdentityFingerprint != "" {
				fmt.Fprintf(w, "\nidentity key %q (%s) fingerprint:\n  %s\n", res.IdentityKey, res.IdentityAlgorithm, res.IdentityFingerprint)
			}
			for _, p := range res.Problems {
				fmt.Fprintf(g.streams.Err, "warning: %s\n", p)
			}
			return nil
		},
	}
	addJSONFlag(c, g)
	return c
}

func hsmYesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
