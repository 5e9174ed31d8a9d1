package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/protocol"
)

// Version is the release version, set at link time with
// -ldflags "-X github.com/opencustodynet/opencustody/cmd/opencustody/cli.Version=v1.2.3".
var Version = "dev"

func init() { commands = append(commands, newVersionCommand) }

type versionInfo struct {
	Version         string `json:"version"`
	ProtocolVersion uint32 `json:"protocol_version"`
	GoVersion       string `json:"go_version"`
	Commit          string `json:"commit,omitempty"`
}

func newVersionCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "version",
		Short: "Print the version of opencustody and of the device protocol it speaks",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			v := versionInfo{Version: Version, ProtocolVersion: protocol.Version, GoVersion: runtime.Version()}
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						v.Commit = s.Value
					}
				}
			}
			if g.json {
				return writeJSON(g.streams.Out, v)
			}
			fmt.Fprintf(g.streams.Out, "opencustody %s (device protocol %d, %s)\n", v.Version, v.ProtocolVersion, v.GoVersion)
			return nil
		},
	}
	addJSONFlag(c, g)
	return c
}
