package cli

import (
	"bytes"
	"testing"
)

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"version"}, ExitOK},
		{[]string{"frobnicate"}, ExitUsage},
		{[]string{"version", "--bogus"}, ExitUsage},
		{[]string{"version", "extra"}, ExitUsage},
	} {
		var out, errb bytes.Buffer
		if got := Main(tc.args, Streams{Out: &out, Err: &errb}); got != tc.want {
			t.Errorf("opencustody %v: exit %d, want %d (stderr %q)", tc.args, got, tc.want, errb.String())
		}
	}
}
