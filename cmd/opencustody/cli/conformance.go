package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/conformance"
	"github.com/opencustodynet/opencustody/device"
	"github.com/opencustodynet/opencustody/emulator/debuglink"
)

func init() { commands = append(commands, newConformanceCommand) }

func newConformanceCommand(g *globals) *cobra.Command {
	var (
		id, debugURL string
		manual, list bool
		only         []string
		timeout      time.Duration
	)
	c := &cobra.Command{
		Use:   "conformance --device ID",
		Short: "Run the firmware-spec conformance suite against a device or an emulator",
		Long: `conformance checks, test by test, that a device implements firmware-spec/:
framing, channel allocation, errors, envelopes, the secure channel and its
credentials, pairing, prompts (unsigned, wrongly signed, altered, expired,
replayed and other devices' prompts must be refused), approvals and their
counters, cancel, keepalives, timeouts and persistent state. Each result names
the section of the specification it checks. See firmware-spec/conformance.md.

The suite plays the custody core with its own software HSM identity, and
pairs the device with it: the device must be unpaired (reset it, or start
the emulator with a new --state directory). It leaves the device paired with
an HSM that no longer exists.

ID is a device from 'opencustody devices' (emu-PORT, or hid-…). For an
emulator the suite presses buttons through its debug link (default
http://127.0.0.1:PORT+1, or --debug-link); with --manual, or for a USB
device, it asks you to press them and, once, to unplug and replug the device.

Exits 0 when every test passed, 1 when one failed or was skipped.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if list {
				for _, tc := range conformance.Tests() {
					fmt.Fprintf(g.streams.Out, "%-28s %-34s %s\n", tc.ID, tc.Section, tc.Title)
				}
				return nil
			}
			if id == "" {
				return withCode(ExitUsage, errors.New("--device ID is required (see 'opencustody devices')"))
			}
			ctx, cancel := context.WithTimeout(c.Context(), timeout)
			defer cancel()
			info, err := device.Resolve(ctx, id)
			if err != nil {
				return withCode(ExitUnavailable, err)
			}
			var op conformance.Operator = &conformance.TerminalOperator{In: g.streams.In, Out: g.streams.Err}
			if info.Kind == device.KindEmulator {
				addr := strings.TrimPrefix(info.Path, "udp://")
				if err := device.ProbeUDP(ctx, addr); err != nil {
					return withCode(ExitUnavailable, fmt.Errorf("device %s: %w (is the emulator running?)", info.ID, err))
				}
				if !manual {
					if debugURL == "" {
						host, port, _ := net.SplitHostPort(addr)
						p, _ := strconv.Atoi(port)
						debugURL = "http://" + net.JoinHostPort(host, strconv.Itoa(p+1))
					}
					dl := debuglink.New(debugURL)
					if _, err := dl.Screen(ctx); err != nil {
						return withCode(ExitUnavailable, fmt.Errorf("device %s: no debug link at %s (%v); give --debug-link URL, or --manual to press the buttons yourself", info.ID, debugURL, err))
					}
					op = conformance.DebugLinkOperator{Client: dl}
				}
			}
			cfg := conformance.Config{
				Open: func(ctx context.Context) (device.Transport, error) {
					// After a power cycle a USB device may have a new path.
					in, err := device.Resolve(ctx, id)
					if err != nil {
						return nil, err
					}
					return device.Open(in.Path)
				},
				Operator: op,
				Only:     only,
			}
			if !g.json {
				fmt.Fprintf(g.streams.Out, "conformance: %s (%s)\n", info.ID, info.Path)
				cfg.Progress = func(r conformance.Result) {
					fmt.Fprintf(g.streams.Out, "%-4s %s: %s (%s)\n", strings.ToUpper(string(r.Status)), r.ID, r.Title, r.Section)
					if r.Detail != "" && r.Status != conformance.Pass {
						fmt.Fprintf(g.streams.Out, "     %s\n", r.Detail)
					}
				}
			}
			rep, err := conformance.Run(ctx, cfg)
			if err != nil && rep == nil {
				if errors.Is(err, conformance.ErrDevicePaired) {
					return withCode(ExitRefused, err)
				}
				return withCode(ExitUnavailable, err)
			}
			if g.json {
				if werr := writeJSON(g.streams.Out, rep); werr != nil {
					return werr
				}
			} else {
				fmt.Fprintf(g.streams.Out, "%s %s %s: %d passed, %d failed, %d skipped\n",
					rep.Device.Vendor, rep.Device.Model, rep.Device.FirmwareVersion, rep.Passed, rep.Failed, rep.Skipped)
			}
			if err != nil {
				return withCode(ExitRefused, err)
			}
			if !rep.OK() {
				return withCode(ExitFailure, fmt.Errorf("conformance: %d of %d tests did not pass", rep.Failed+rep.Skipped, len(rep.Results)))
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&id, "device", "", "the device: an id from 'opencustody devices' (emu-PORT, hid-…)")
	f.StringVar(&debugURL, "debug-link", "", "an emulator's debug link (default http://127.0.0.1:PORT+1)")
	f.BoolVar(&manual, "manual", false, "ask a person to press the buttons, even on an emulator")
	f.StringSliceVar(&only, "only", nil, "run only these test ids (and what they need)")
	f.BoolVar(&list, "list", false, "list the tests and exit")
	f.DurationVar(&timeout, "timeout", 30*time.Minute, "give up after this long")
	addJSONFlag(c, g)
	return c
}
