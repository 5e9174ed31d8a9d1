package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/hsm"
)

func newHSMKeygenCommand(g *globals, f *hsmFlags) *cobra.Command {
	var (
		label      string
		algName    string
		backupable bool
	)
	c := &cobra.Command{
		Use:   "keygen --label LABEL [--backupable]",
		Short: "Generate a custody key (secp256k1) inside the HSM",
		Long: `keygen generates a key inside the HSM and prints its public key. By default it is
a custody key: ECDSA on secp256k1, sensitive and never extractable.

--backupable makes a custody key that can leave the HSM wrapped, and in no
other form, for an HSM-to-HSM backup: it is sensitive, extractable, and marked
wrap-with-trusted, so only a wrapping key the Security Officer trusts can take
it out. Decide now: a key cannot be made backup-able later.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if label == "" {
				return withCode(ExitUsage, errors.New("--label is required"))
			}
			alg, err := hsm.ParseAlgorithm(algName)
			if err != nil {
				return withCode(ExitUsage, err)
			}
			s, _, err := openHSM(c.Context(), g, f)
			if err != nil {
				return err
			}
			defer s.Close()
			info, err := s.GenerateKey(c.Context(), hsm.GenerateKeyRequest{Label: label, Algorithm: alg, Backupable: backupable})
			if errors.Is(err, hsm.ErrMechanismNotSupported) {
				return withCode(ExitRefused, err)
			}
			if err != nil {
				return err
			}
			k := toHSMKey(*info)
			if g.json {
				return writeJSON(g.streams.Out, k)
			}
			w := g.streams.Out
			fmt.Fprintf(w, "Generated %s key %q (%s) in the HSM\n", k.Role, k.Label, k.Algorithm)
			fmt.Fprintf(w, "id          %s\nuri         %s\n", k.ID, k.URI)
			if k.PublicKey != "" {
				fmt.Fprintf(w, "public key  %s\n", k.PublicKey)
			}
			if k.Backupable {
				fmt.Fprintln(w, "backup      wrap-only: extractable only wrapped under a key the Security Officer trusts")
			} else {
				fmt.Fprintln(w, "backup      no: never extractable")
			}
			return nil
		},
	}
	c.Flags().StringVar(&label, "label", "", "label of the new key (required, unique on the token)")
	c.Flags().StringVar(&algName, "algorithm", string(hsm.ECDSASecp256k1), "key algorithm: ecdsa-secp256k1 (custody), ecdsa-p256 or ed25519 (identity), hmac-sha256 (records)")
	c.Flags().BoolVar(&backupable, "backupable", false, "let the key leave the HSM wrapped, for an HSM-to-HSM backup (custody keys only)")
	addJSONFlag(c, g)
	return c
}
