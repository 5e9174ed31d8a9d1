// Package cli is the opencustody command line: one file per command, each a
// thin client of a library package or of a daemon's typed API.
//
// # Output
//
// Commands write through [Streams], never to os.Stdout directly, so tests run
// them in-process (see the testscript files in testdata/script). Commands
// whose output is data accept --json and then print exactly one JSON value.
//
// # Exit codes
//
// The exit codes are stable and part of the interface; scripts may branch on
// them:
//
//	0  success
//	1  the command failed (the message says why and what to do)
//	2  usage error: unknown command, bad flag or argument
//	3  a daemon, token or device could not be reached
//	4  refused: a user, the policy or the HSM declined
//	5  integrity failure: a signature, MAC or hash chain did not verify
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
)

// Exit codes returned by [Main]. See the package documentation.
const (
	ExitOK          = 0
	ExitFailure     = 1
	ExitUsage       = 2
	ExitUnavailable = 3
	ExitRefused     = 4
	ExitIntegrity   = 5
)

// Streams are the standard streams a command reads and writes.
type Streams struct {
	In  io.Reader
	Out io.Writer
	Err io.Writer
}

// ExitError carries an exit code with an error. Commands return one (usually
// through [withCode]) when the failure is not a plain [ExitFailure].
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// withCode attaches an exit code to err. A nil err stays nil.
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &ExitError{Code: code, Err: err}
}

// globals are the flags every command shares.
type globals struct {
	streams Streams
	dataDir string
	json    bool
}

// DataDir resolves the data directory: the --data flag, then
// OPENCUSTODY_DATA, then a per-user default.
func (g *globals) DataDir() (string, error) {
	if g.dataDir != "" {
		return g.dataDir, nil
	}
	if d := os.Getenv("OPENCUSTODY_DATA"); d != "" {
		return d, nil
	}
	base, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no data directory: pass --data DIR or set OPENCUSTODY_DATA (%w)", err)
	}
	return filepath.Join(base, "opencustody"), nil
}

// NewRootCommand builds the whole command tree writing to s.
func NewRootCommand(s Streams) *cobra.Command {
	g := &globals{streams: s}
	root := &cobra.Command{
		Use:   "opencustody",
		Short: "OpenCustody: HSM custody keys that sign only what approvers confirmed on their devices",
		Long: `opencustody is the single binary of OpenCustody's approval bridge.

Custody keys live in an HSM; nothing is signed unless the right people approved
it on the screen of a hardware approval device. The subcommands run the custody
core (hsmd), the untrusted relay next to the devices (bridge), a software
approval device (emulator), and the operator's tools.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(s.In)
	root.SetOut(s.Out)
	root.SetErr(s.Err)
	root.PersistentFlags().StringVar(&g.dataDir, "data", "", "data directory (default $OPENCUSTODY_DATA, then the per-user config directory)")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return withCode(ExitUsage, fmt.Errorf("%w (run '%s --help' for usage)", err, c.CommandPath()))
	})
	for _, add := range commands {
		root.AddCommand(add(g))
	}
	return root
}

// commands lists the constructors of the top-level commands; each command's
// file appends itself in an init function.
var commands []func(*globals) *cobra.Command

// Main runs the CLI with args and returns the process exit code.
func Main(args []string, s Streams) int {
	root := NewRootCommand(s)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(s.Err, "opencustody: %v\n", err)
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	if isUsageError(err) {
		return ExitUsage
	}
	return ExitFailure
}
