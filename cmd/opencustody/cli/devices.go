package cli

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/device"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

func init() { commands = append(commands, newDevicesCommand, newDeviceCommand) }

func newDevicesCommand(g *globals) *cobra.Command {
	var ports string
	var wait time.Duration
	c := &cobra.Command{
		Use:   "devices",
		Short: "List approval devices on USB and emulators on loopback",
		Long: `devices lists the approval devices plugged in over USB and the emulators
that answer the liveness ping on the given UDP ports of 127.0.0.1.

--emulators takes ports and ranges: 21424,21426-21430 (default 21424, the
emulator's default port). --wait keeps looking until a device shows up or
the time is over, for scripts that have just started an emulator.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ps, err := parsePorts(ports)
			if err != nil {
				return withCode(ExitUsage, fmt.Errorf("--emulators: %v", err))
			}
			ctx, cancel := context.WithTimeout(c.Context(), wait+10*time.Second)
			defer cancel()
			until := time.Now().Add(wait)
			var d *device.Discovery
			for {
				if d, err = device.Discover(ctx, device.DiscoverRequest{EmulatorPorts: ps}); err != nil {
					return withCode(ExitUnavailable, err)
				}
				if len(d.Devices) > 0 || !time.Now().Before(until) {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if g.json {
				return writeJSON(g.streams.Out, d)
			}
			if len(d.Devices) == 0 {
				fmt.Fprintf(g.streams.Out, "no devices found (emulator ports probed: %s)\n", ports)
			} else {
				tw := tabwriter.NewWriter(g.streams.Out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tKIND\tPATH\tPRODUCT")
				for _, i := range d.Devices {
					product := strings.TrimSpace(i.Manufacturer + " " + i.Product)
					if i.Kind == device.KindEmulator {
						product = "OpenCustody emulator"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", i.ID, i.Kind, i.Path, product)
				}
				tw.Flush()
			}
			if note := d.USB.Note; note != "" {
				fmt.Fprintf(g.streams.Err, "note: %s\n", note)
			}
			return nil
		},
	}
	c.Flags().StringVar(&ports, "emulators", strconv.Itoa(device.DefaultEmulatorPort), "UDP ports to probe for emulators: a list of ports and ranges, or \"none\"")
	c.Flags().DurationVar(&wait, "wait", 0, "keep looking this long until at least one device answers")
	addJSONFlag(c, g)
	c.AddCommand(custodyDeviceCommands(g)...)
	return c
}

// parsePorts parses "21424,21426-21430" (or "none").
func parsePorts(s string) ([]int, error) {
	ports := []int{}
	if s == "none" || s == "" {
		return ports, nil
	}
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 1 || b > 65535 || b < a {
			return nil, fmt.Errorf("bad port or range %q", part)
		}
		if b-a > 1024 {
			return nil, fmt.Errorf("range %q is wider than 1024 ports", part)
		}
		for p := a; p <= b; p++ {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

func newDeviceCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "device",
		Short: "Talk to one approval device",
	}
	c.AddCommand(newDeviceInfoCommand(g), newDevicePingCommand(g))
	return c
}

// openDevice resolves id and allocates a channel on the device.
func openDevice(ctx context.Context, id string, opts device.ClientOptions) (*device.Client, device.Info, error) {
	info, err := device.Resolve(ctx, id)
	if err != nil {
		return nil, info, withCode(ExitUnavailable, err)
	}
	if info.Kind == device.KindEmulator {
		if err := device.ProbeUDP(ctx, strings.TrimPrefix(info.Path, "udp://")); err != nil {
			return nil, info, withCode(ExitUnavailable, fmt.Errorf("device %s: %w (is the emulator running?)", info.ID, err))
		}
	}
	t, err := device.Open(info.Path)
	if err != nil {
		return nil, info, withCode(ExitUnavailable, err)
	}
	opts.Name = info.ID
	cl, err := device.NewClient(ctx, t, opts)
	if err != nil {
		return nil, info, withCode(ExitUnavailable, err)
	}
	return cl, info, nil
}

// deviceError maps a request's error to an exit code: a user's refusal is
// 4, a device that is gone is 3.
func deviceError(err error) error {
	var fe *device.FailureError
	if errors.As(err, &fe) {
		switch fe.Code {
		case pb.FailureCode_FAILURE_ACTION_REJECTED, pb.FailureCode_FAILURE_ACTION_CANCELLED:
			return withCode(ExitRefused, err)
		}
		return err
	}
	var re *device.ReportError
	if errors.As(err, &re) {
		return err
	}
	return withCode(ExitUnavailable, err)
}

func newDevicePingCommand(g *globals) *cobra.Command {
	var confirm bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "ping ID [MESSAGE]",
		Short: "Ping a device; with --confirm its user must confirm the message on the screen",
		Long: `ping sends MESSAGE (default "ping") and prints the device's echo. With
--confirm the device shows the message and waits for its user: confirm and the
echo is printed, reject and ping exits 4.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			msg := "ping"
			if len(args) == 2 {
				msg = args[1]
			}
			ctx, cancel := context.WithTimeout(c.Context(), timeout)
			defer cancel()
			cl, info, err := openDevice(ctx, args[0], device.ClientOptions{
				OnButton: func(context.Context, *pb.ButtonRequest) error {
					fmt.Fprintln(g.streams.Err, "confirm on the device…")
					return nil
				},
			})
			if err != nil {
				return err
			}
			defer cl.Close()
			echo, err := cl.Ping(ctx, device.PingRequest{Message: msg, ButtonProtection: confirm})
			if err != nil {
				return deviceError(err)
			}
			if g.json {
				return writeJSON(g.streams.Out, map[string]string{"id": info.ID, "message": echo})
			}
			fmt.Fprintln(g.streams.Out, echo)
			return nil
		},
	}
	c.Flags().BoolVar(&confirm, "confirm", false, "ask the device's user to confirm")
	c.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "give up after this long")
	addJSONFlag(c, g)
	return c
}

type deviceInfoJSON struct {
	ID                 string `json:"id"`
	Kind               string `json:"kind"`
	Path               string `json:"path"`
	Vendor             string `json:"vendor"`
	Model              string `json:"model"`
	FirmwareVersion    string `json:"firmware_version"`
	ProtocolVersionMin uint32 `json:"protocol_version_min"`
	ProtocolVersionMax uint32 `json:"protocol_version_max"`
	DeviceID           string `json:"device_id"`
	IdentityAlgorithm  string `json:"identity_algorithm"`
	IdentityPublicKey  string `json:"identity_public_key"`
	Label              string `json:"label"`
	Emulator           bool   `json:"emulator"`
}

func algorithmText(a pb.Algorithm) string {
	switch a {
	case pb.Algorithm_ALGORITHM_ED25519:
		return "ed25519"
	case pb.Algorithm_ALGORITHM_ECDSA_P256:
		return "ecdsa-p256"
	case pb.Algorithm_ALGORITHM_ECDSA_SECP256K1:
		return "ecdsa-secp256k1"
	}
	return a.String()
}

func newDeviceInfoCommand(g *globals) *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "info ID",
		Short: "Print a device's features: model, firmware, protocol versions, identity key",
		Long: `info asks the device for its features. ID is an id or path from
"opencustody devices": emu-PORT for an emulator on 127.0.0.1, udp://HOST:PORT,
or hid-XXXXXXXX for a USB device.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(c.Context(), timeout)
			defer cancel()
			cl, info, err := openDevice(ctx, args[0], device.ClientOptions{})
			if err != nil {
				return err
			}
			defer cl.Close()
			f, err := cl.Features(ctx)
			if err != nil {
				return deviceError(err)
			}
			out := deviceInfoJSON{
				ID: info.ID, Kind: info.Kind, Path: info.Path,
				Vendor: f.Vendor, Model: f.Model, FirmwareVersion: f.FirmwareVersion,
				ProtocolVersionMin: f.ProtocolVersionMin, ProtocolVersionMax: f.ProtocolVersionMax,
				DeviceID: f.DeviceId, IdentityAlgorithm: algorithmText(f.IdentityAlgorithm),
				IdentityPublicKey: hex.EncodeToString(f.IdentityPublicKey), Label: f.Label, Emulator: f.Emulator,
			}
			if g.json {
				return writeJSON(g.streams.Out, out)
			}
			tw := tabwriter.NewWriter(g.streams.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "id:\t%s (%s, %s)\n", out.ID, out.Kind, out.Path)
			fmt.Fprintf(tw, "model:\t%s %s\n", out.Vendor, out.Model)
			if out.Emulator {
				fmt.Fprintf(tw, "emulator:\tyes (a software device: never use it for real funds)\n")
			}
			fmt.Fprintf(tw, "firmware:\t%s\n", out.FirmwareVersion)
			fmt.Fprintf(tw, "protocol:\t%d-%d\n", out.ProtocolVersionMin, out.ProtocolVersionMax)
			fmt.Fprintf(tw, "device id:\t%s\n", out.DeviceID)
			fmt.Fprintf(tw, "label:\t%s\n", out.Label)
			fmt.Fprintf(tw, "identity key:\t%s %s\n", out.IdentityAlgorithm, out.IdentityPublicKey)
			return tw.Flush()
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "give up after this long")
	addJSONFlag(c, g)
	return c
}
