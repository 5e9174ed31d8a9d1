package cli

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// logFlags are the daemons' logging flags.
type logFlags struct {
	format string
	level  string
}

func addLogFlags(c *cobra.Command, f *logFlags) {
	c.Flags().StringVar(&f.format, "log-format", "", "log format: text or json (default text on a terminal, json otherwise)")
	c.Flags().StringVar(&f.level, "log-level", "info", "log level: debug, info, warn or error")
}

// newLogger makes the daemons' logger: text on a terminal, JSON otherwise
// (or as format says). Daemons never log keys, PINs, tokens or plaintext
// prompts; frames are counted, never dumped.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, withCode(ExitUsage, fmt.Errorf("--log-level %q: use debug, info, warn or error", level))
	}
	if format == "" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, withCode(ExitUsage, fmt.Errorf("--log-format %q: use text or json", format))
}
