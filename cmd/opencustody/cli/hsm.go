package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/p11uri"
)

func init() { commands = append(commands, newHSMCommand) }

// hsmFlags name a token on the command line, with the meaning of the
// attributes of an RFC 7512 URI. Flags override the same attributes of --uri;
// with none of them, commands use the data directory's hsm.json.
type hsmFlags struct {
	uri, module, token, serial, pinFile, pinEnv string
}

func (f *hsmFlags) register(c *cobra.Command) {
	fs := c.PersistentFlags()
	fs.StringVar(&f.uri, "uri", "", "the token's pkcs11: URI (RFC 7512), e.g. 'pkcs11:token=opencustody?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/path/pin'")
	fs.StringVar(&f.module, "module", "", "PKCS#11 module (library) path; the URI's module-path")
	fs.StringVar(&f.token, "token", "", "token label; the URI's token")
	fs.StringVar(&f.serial, "serial", "", "token serial number; the URI's serial")
	fs.StringVar(&f.pinFile, "pin-file", "", "read the user PIN from the first line of this file; the URI's pin-source=file:")
	fs.StringVar(&f.pinEnv, "pin-env", "", "read the user PIN from this environment variable; the URI's pin-source=env:")
}

// given reports whether any token flag was set.
func (f *hsmFlags) given() bool {
	return f.uri != "" || f.module != "" || f.token != "" || f.serial != "" || f.pinFile != "" || f.pinEnv != ""
}

// apply builds a token URI from base (possibly empty) and the flags.
func (f *hsmFlags) apply(base string) (string, error) {
	u := &p11uri.URI{}
	if f.uri != "" {
		base = f.uri
	}
	if base != "" {
		var err error
		if u, err = p11uri.Parse(base); err != nil {
			return "", withCode(ExitUsage, err)
		}
	}
	if f.module != "" {
		u.ModulePath = f.module
	}
	if f.token != "" {
		u.Token = f.token
		if f.serial == "" {
			u.Serial = "" // a new label with an old serial would match nothing
		}
	}
	if f.serial != "" {
		u.Serial = f.serial
	}
	if f.pinFile != "" && f.pinEnv != "" {
		return "", withCode(ExitUsage, errors.New("--pin-file and --pin-env both name the PIN; give one"))
	}
	if f.pinFile != "" {
		abs, err := filepath.Abs(f.pinFile)
		if err != nil {
			return "", err
		}
		u.PINSource, u.PINValue = "file:"+abs, ""
	}
	if f.pinEnv != "" {
		u.PINSource, u.PINValue = "env:"+f.pinEnv, ""
	}
	return u.String(), nil
}

func newHSMCommand(g *globals) *cobra.Command {
	f := &hsmFlags{}
	c := &cobra.Command{
		Use:   "hsm",
		Short: "Set up the HSM token and inspect its keys",
		Long: `hsm sets up the HSM token that holds OpenCustody's keys, and shows what is on it.

Keys are generated inside the HSM and never leave it in plain form. The token
is reached through PKCS#11; SoftHSM2, a software token, is the embedded
default for development and demos (hsm init --softhsm).

Commands other than init find the token through the data directory's hsm.json,
written by hsm init, unless told otherwise with --uri or the flags that set
its parts (--module, --token, --serial, --pin-file, --pin-env). The PIN comes
from the URI's pin-source (a file or an environment variable) or, at a
terminal, from a prompt that does not echo.`,
		Args: cobra.NoArgs,
	}
	f.register(c)
	c.AddCommand(newHSMInitCommand(g, f), newHSMInfoCommand(g, f), newHSMKeysCommand(g, f), newHSMKeygenCommand(g, f))
	return c
}

// hsmDataDir returns the data directory as an absolute path.
func hsmDataDir(g *globals) (string, error) {
	d, err := g.DataDir()
	if err != nil {
		return "", err
	}
	return filepath.Abs(d)
}

// openHSM opens the token named by the flags, or else by hsm.json. The
// returned config is nil when the flags named the token and there is no
// hsm.json.
func openHSM(ctx context.Context, g *globals, f *hsmFlags) (*hsm.PKCS11Store, *hsm.TokenConfig, error) {
	dir, err := hsmDataDir(g)
	if err != nil {
		return nil, nil, err
	}
	tc, err := hsm.ReadTokenConfig(dir)
	if err != nil && (!errors.Is(err, hsm.ErrNoTokenConfig) || !f.given()) {
		return nil, nil, err
	}
	if tc == nil {
		tc = &hsm.TokenConfig{IdentityKey: hsm.IdentityKeyLabel, RecordKey: hsm.RecordKeyLabel}
	}
	if f.given() {
		if tc.URI, err = f.apply(tc.URI); err != nil {
			return nil, nil, err
		}
	}
	s, err := tc.Open(ctx, hsm.Config{URI: tc.URI, PINPrompt: hsmPINPrompt(g), Logger: hsmLogger(g)})
	if err != nil {
		return nil, nil, hsmExit(err)
	}
	return s, tc, nil
}

// hsmExit gives an hsm error its exit code: 3 if the module or token cannot
// be reached, 4 if the token refused the PIN.
func hsmExit(err error) error {
	switch {
	case errors.Is(err, hsm.ErrModule), errors.Is(err, hsm.ErrTokenNotFound):
		return withCode(ExitUnavailable, err)
	case errors.Is(err, hsm.ErrPINIncorrect):
		return withCode(ExitRefused, err)
	}
	return err
}

// hsmPINPrompt asks for the PIN on the terminal without echo, or returns
// nil when standard input is not a terminal.
func hsmPINPrompt(g *globals) hsm.PINPrompt {
	in, ok := g.streams.In.(*os.File)
	if !ok || !term.IsTerminal(int(in.Fd())) {
		return nil
	}
	return func(_ context.Context, token string) (string, error) {
		fmt.Fprintf(g.streams.Err, "PIN for token %q: ", token)
		pin, err := term.ReadPassword(int(in.Fd()))
		fmt.Fprintln(g.streams.Err)
		if err != nil {
			return "", err
		}
		return string(pin), nil
	}
}

// hsmLogger logs warnings and errors to standard error, without timestamps.
func hsmLogger(g *globals) *slog.Logger {
	return slog.New(slog.NewTextHandler(g.streams.Err, &slog.HandlerOptions{
		Level: slog.LevelWarn,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
}
