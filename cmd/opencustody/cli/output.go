package cli

import (
	"encoding/json"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// addJSONFlag adds --json to a command whose output is data.
func addJSONFlag(c *cobra.Command, g *globals) {
	c.Flags().BoolVar(&g.json, "json", false, "print the result as JSON")
}

// writeJSON prints v as indented JSON followed by a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// isUsageError reports whether err is one of cobra's argument or command
// errors, which cobra returns as plain errors.
func isUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least", "requires at most", "invalid argument"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}
