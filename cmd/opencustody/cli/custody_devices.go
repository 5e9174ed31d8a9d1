package cli

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// deviceJSON is a device as hsmd knows it, for --json output.
type deviceJSON struct {
	ID          string `json:"id"`
	State       string `json:"state"`
	User        string `json:"user,omitempty"`
	Role        string `json:"role,omitempty"`
	Fingerprint string `json:"fingerprint"`
	Connected   bool   `json:"connected"`
	Bridge      string `json:"bridge,omitempty"`
	Channel     bool   `json:"channel"`
	Emulator    bool   `json:"emulator,omitempty"`
	Model       string `json:"model,omitempty"`
	PairedAt    string `json:"paired_at,omitempty"`
	RevokedAt   string `json:"revoked_at,omitempty"`
	// AttestedBy names the attestation root and the certified model.
	AttestedBy *attestationJSON `json:"attested_by,omitempty"`
}

type attestationJSON struct {
	Root            string `json:"root"`
	RootFingerprint string `json:"root_fingerprint"`
	Subject         string `json:"subject"`
}

func newDeviceJSON(d *apipb.Device) *deviceJSON {
	j := &deviceJSON{
		ID: d.GetId(), Fingerprint: d.GetFingerprint(), User: d.GetUser(),
		Connected: d.GetConnected(), Bridge: d.GetBridge(), Channel: d.GetChannel(),
		Emulator: d.GetEmulator(), Model: d.GetModel(),
	}
	switch d.GetState() {
	case apipb.DeviceState_DEVICE_STATE_PAIRED:
		j.State = "paired"
	case apipb.DeviceState_DEVICE_STATE_REVOKED:
		j.State = "revoked"
	default:
		j.State = "unpaired"
	}
	switch d.GetRole() {
	case apipb.Role_ROLE_ADMIN:
		j.Role = "admin"
	case apipb.Role_ROLE_APPROVER:
		j.Role = "approver"
	}
	if d.GetPairedAt() > 0 {
		j.PairedAt = time.Unix(d.GetPairedAt(), 0).UTC().Format(time.RFC3339)
	}
	if d.GetRevokedAt() > 0 {
		j.RevokedAt = time.Unix(d.GetRevokedAt(), 0).UTC().Format(time.RFC3339)
	}
	if d.GetAttestationRoot() != "" {
		j.AttestedBy = &attestationJSON{d.GetAttestationRoot(), d.GetAttestationRootFingerprint(), d.GetAttestationSubject()}
	}
	return j
}

// custodyDeviceCommands are the subcommands of `devices` that ask hsmd.
func custodyDeviceCommands(g *globals) []*cobra.Command {
	return []*cobra.Command{newDevicesListCommand(g), newDevicesRevokeCommand(g)}
}

func newDevicesListCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "List the devices hsmd knows: paired, revoked, and attached but unpaired",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var res *apipb.ListDevicesResponse
			err := g.withOperator(c.Context(), &f, 30*time.Second, func(ctx context.Context, op apipb.OperatorClient) (err error) {
				res, err = op.ListDevices(ctx, &apipb.ListDevicesRequest{})
				return err
			})
			if err != nil {
				return err
			}
			devs := make([]*deviceJSON, 0, len(res.GetDevices()))
			for _, d := range res.GetDevices() {
				devs = append(devs, newDeviceJSON(d))
			}
			if g.json {
				return writeJSON(g.streams.Out, devs)
			}
			if len(devs) == 0 {
				fmt.Fprintln(g.streams.Out, "no devices: none paired, and no bridge has announced any")
				return nil
			}
			tw := tabwriter.NewWriter(g.streams.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tUSER\tROLE\tCONNECTED\tCHANNEL\tATTESTED BY\tFINGERPRINT")
			for _, d := range devs {
				att := "-"
				if d.AttestedBy != nil {
					att = d.AttestedBy.Root
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.State, dash(d.User), dash(d.Role), yesNo(d.Connected), yesNo(d.Channel), att, d.Fingerprint)
			}
			return tw.Flush()
		},
	}
	addHSMDFlags(c, &f)
	addJSONFlag(c, g)
	return c
}

func newDevicesRevokeCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a paired device: its channel and approvals are refused from now on",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var res *apipb.RevokeDeviceResponse
			err := g.withOperator(c.Context(), &f, 30*time.Second, func(ctx context.Context, op apipb.OperatorClient) (err error) {
				res, err = op.RevokeDevice(ctx, &apipb.RevokeDeviceRequest{DeviceId: args[0]})
				return err
			})
			if err != nil {
				return err
			}
			d := newDeviceJSON(res.GetDevice())
			if g.json {
				return writeJSON(g.streams.Out, d)
			}
			fmt.Fprintf(g.streams.Out, "revoked: device %s (%s)\n", d.ID, d.User)
			return nil
		},
	}
	addHSMDFlags(c, &f)
	addJSONFlag(c, g)
	return c
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
