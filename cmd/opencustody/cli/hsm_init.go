package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/softhsm"
)

// Files that `hsm init --softhsm` creates in the data directory.
const (
	hsmSoftHSMDir        = "softhsm"    // softhsm2.conf and tokens/
	hsmPINFile           = "hsm-pin"    // the token's user PIN, mode 0600
	hsmSOPINFile         = "hsm-so-pin" // its Security Officer PIN, mode 0600
	hsmDefaultTokenLabel = "opencustody"
)

type hsmInitResult struct {
	Created     bool     `json:"created_softhsm_token"`
	Token       string   `json:"token"`
	Serial      string   `json:"serial"`
	Module      string   `json:"module"`
	URI         string   `json:"uri"`
	TokenDir    string   `json:"token_dir,omitempty"`
	PINFile     string   `json:"pin_file,omitempty"`
	SOPINFile   string   `json:"so_pin_file,omitempty"`
	Config      string   `json:"config"`
	IdentityKey string   `json:"identity_key"`
	Algorithm   string   `json:"identity_algorithm"`
	RecordKey   string   `json:"record_key"`
	Generated   []string `json:"generated"`
	Fingerprint string   `json:"identity_fingerprint"`
}

func newHSMInitCommand(g *globals, f *hsmFlags) *cobra.Command {
	var (
		useSoftHSM bool
		label      string
		algName    string
	)
	c := &cobra.Command{
		Use:   "init",
		Short: "Set up the HSM token: create the identity and record keys, write hsm.json",
		Long: `init prepares a token for OpenCustody and records it in the data directory.

With --softhsm it first creates a SoftHSM2 token inside the data directory
(softhsm/, with its own softhsm2.conf), with a generated user PIN in hsm-pin
and Security Officer PIN in hsm-so-pin, both mode 0600. Without --softhsm it
uses an existing token, named with --uri or --module/--token/--pin-file/--pin-env.

It then generates, inside the HSM, the identity key that signs prompts and
credentials (ECDSA P-256, or Ed25519 with --identity-algorithm ed25519) and the
record key that authenticates what is stored outside the HSM (HMAC-SHA256),
unless the token already has them, writes hsm.json, and prints the identity
fingerprint (firmware-spec/channel.md §2). Approval devices show it when they
pair; write it down.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			alg, err := hsm.ParseAlgorithm(algName)
			if err != nil || hsm.RoleOf(alg) != hsm.RoleIdentity {
				return withCode(ExitUsage, fmt.Errorf("--identity-algorithm %q: want %s or %s", algName, hsm.ECDSAP256, hsm.Ed25519))
			}
			if useSoftHSM && (f.uri != "" || f.token != "" || f.serial != "" || f.pinFile != "" || f.pinEnv != "") {
				return withCode(ExitUsage, errors.New("--softhsm creates its own token: give only --module with it, if anything"))
			}
			if !useSoftHSM && !f.given() {
				return withCode(ExitUsage, errors.New("name the token (--uri, or --module and --token with --pin-file or --pin-env), or create a SoftHSM2 token with --softhsm"))
			}
			dir, err := hsmDataDir(g)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			if tc, err := hsm.ReadTokenConfig(dir); err == nil {
				return fmt.Errorf("the data directory %s is already set up for token %s (%s): to start over, use another --data directory", dir, tc.URI, filepath.Join(dir, hsm.TokenConfigFile))
			} else if !errors.Is(err, hsm.ErrNoTokenConfig) {
				return err
			}
			res := &hsmInitResult{Config: filepath.Join(dir, hsm.TokenConfigFile), IdentityKey: hsm.IdentityKeyLabel, RecordKey: hsm.RecordKeyLabel, Algorithm: string(alg)}
			tc := &hsm.TokenConfig{IdentityKey: hsm.IdentityKeyLabel, RecordKey: hsm.RecordKeyLabel}
			if useSoftHSM {
				if err := createSoftHSMToken(dir, f.module, label, tc, res); err != nil {
					return err
				}
			} else if tc.URI, err = f.apply(""); err != nil {
				return err
			}
			return hsmInitToken(c.Context(), g, tc, alg, res)
		},
	}
	c.Flags().BoolVar(&useSoftHSM, "softhsm", false, "create a SoftHSM2 token in the data directory")
	c.Flags().StringVar(&label, "label", hsmDefaultTokenLabel, "label of the SoftHSM2 token to create")
	c.Flags().StringVar(&algName, "identity-algorithm", string(hsm.ECDSAP256), "identity key algorithm: ecdsa-p256 or ed25519")
	addJSONFlag(c, g)
	return c
}

// createSoftHSMToken makes a SoftHSM2 token in dir/softhsm with fresh PINs in
// files, and points tc at it.
func createSoftHSMToken(dir, module, label string, tc *hsm.TokenConfig, res *hsmInitResult) error {
	if module == "" {
		var err error
		if module, err = softhsm.ModulePath(); err != nil {
			return withCode(ExitUnavailable, err)
		}
	}
	conf, err := softhsm.WriteConfig(filepath.Join(dir, hsmSoftHSMDir))
	if err != nil {
		return err
	}
	if err := softhsm.Use(conf); err != nil {
		return err
	}
	pin, so := softhsm.NewPIN(), softhsm.NewPIN()
	pinPath, soPath := filepath.Join(dir, hsmPINFile), filepath.Join(dir, hsmSOPINFile)
	for _, p := range []struct{ path, pin string }{{pinPath, pin}, {soPath, so}} {
		if err := hsmWriteSecret(p.path, p.pin); err != nil {
			return err
		}
	}
	tok, err := softhsm.CreateToken(softhsm.CreateTokenRequest{ModulePath: module, Label: label, SOPIN: so, UserPIN: pin})
	if err != nil {
		return withCode(ExitUnavailable, err)
	}
	tc.URI = tok.URI("file:" + pinPath)
	tc.SoftHSM2Conf = conf
	res.Created = true
	res.TokenDir = filepath.Join(dir, hsmSoftHSMDir, "tokens")
	res.PINFile, res.SOPINFile = pinPath, soPath
	return nil
}

// hsmWriteSecret creates path with mode 0600 holding secret and a newline;
// it refuses to overwrite.
func hsmWriteSecret(path, secret string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s already exists: it may hold the PIN of an earlier token; move it away first", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.WriteString(secret + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// hsmInitToken opens the token, makes the identity and record keys if missing,
// writes hsm.json and reports.
func hsmInitToken(ctx context.Context, g *globals, tc *hsm.TokenConfig, alg hsm.Algorithm, res *hsmInitResult) error {
	s, err := tc.Open(ctx, hsm.Config{PINPrompt: hsmPINPrompt(g), Logger: hsmLogger(g)})
	if err != nil {
		return hsmExit(err)
	}
	defer s.Close()
	info := s.Info()
	res.Token, res.Serial, res.Module = info.Label, info.Serial, info.ModulePath
	res.URI = tc.URI

	have := map[string]hsm.KeyInfo{}
	keys, err := s.ListKeys(ctx)
	if err != nil {
		return err
	}
	for _, k := range keys {
		have[k.Label] = k
	}
	res.Generated = []string{}
	if k, ok := have[tc.IdentityKey]; !ok {
		if _, err := s.GenerateKey(ctx, hsm.GenerateKeyRequest{Label: tc.IdentityKey, Algorithm: alg}); err != nil {
			return err
		}
		res.Generated = append(res.Generated, tc.IdentityKey)
	} else if k.Role != hsm.RoleIdentity {
		return fmt.Errorf("token %q already has a key %q, but it is a %s key, not an identity key", info.Label, tc.IdentityKey, k.Role)
	} else {
		res.Algorithm = string(k.Algorithm)
	}
	if k, ok := have[tc.RecordKey]; !ok {
		if _, err := s.GenerateKey(ctx, hsm.GenerateKeyRequest{Label: tc.RecordKey, Algorithm: hsm.HMACSHA256}); err != nil {
			return err
		}
		res.Generated = append(res.Generated, tc.RecordKey)
	} else if k.Role != hsm.RoleRecords {
		return fmt.Errorf("token %q already has a key %q, but it is a %s key, not a record key", info.Label, tc.RecordKey, k.Role)
	}
	pub, err := s.PublicKey(ctx, tc.IdentityKey)
	if err != nil {
		return err
	}
	fp, err := pub.Fingerprint()
	if err != nil {
		return err
	}
	res.Fingerprint = fp.String()
	tc.IdentityFingerprint = fp.Hex()
	dir := filepath.Dir(res.Config)
	if err := hsm.WriteTokenConfig(dir, tc); err != nil {
		return err
	}

	if g.json {
		return writeJSON(g.streams.Out, res)
	}
	w := g.streams.Out
	if res.Created {
		fmt.Fprintf(w, "Created SoftHSM2 token %q (serial %s) in %s\n", res.Token, res.Serial, res.TokenDir)
		fmt.Fprintf(w, "User PIN in %s, Security Officer PIN in %s (both mode 0600).\n", res.PINFile, res.SOPINFile)
		fmt.Fprintf(w, "Whoever can read the user PIN file can use the keys: keep it, and a backup of %s, safe.\n", filepath.Dir(res.TokenDir))
	} else {
		fmt.Fprintf(w, "Using token %q (serial %s) of %s\n", res.Token, res.Serial, res.Module)
	}
	for _, l := range []string{tc.IdentityKey, tc.RecordKey} {
		verb := "Found"
		for _, gl := range res.Generated {
			if gl == l {
				verb = "Generated"
			}
		}
		kind := "identity key"
		if l == tc.RecordKey {
			kind = "record key"
		}
		fmt.Fprintf(w, "%s %s %q in the HSM\n", verb, kind, l)
	}
	fmt.Fprintf(w, "Wrote %s\n\n", res.Config)
	fmt.Fprintf(w, "HSM identity fingerprint (%s; approval devices show it when they pair):\n  %s\n", res.Algorithm, res.Fingerprint)
	return nil
}
