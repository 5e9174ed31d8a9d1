package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/pairing"
)

func init() { commands = append(commands, newPairCommand) }

type pairResult struct {
	Device         *deviceJSON `json:"device"`
	Code           string      `json:"code"`
	HSMFingerprint string      `json:"hsm_fingerprint"`
	// ChangeID, outside ceremony mode: the admin change that pairs the
	// device once the admin quorum approved it.
	ChangeID string `json:"change_id,omitempty"`
}

func newPairCommand(g *globals) *cobra.Command {
	var (
		f                  hsmdFlags
		deviceID, user     string
		roleName, expected string
	)
	c := &cobra.Command{
		Use:   "pair --device ID --user NAME --role approver|admin",
		Short: "Pair an approval device with a user (key ceremony)",
		Long: `pair binds a device, attached to hsmd through a bridge, to a user and role.

The device shows the HSM fingerprint and a six-digit code; this command shows
the code hsmd computed. Confirm here only if the device shows the same code and
the HSM fingerprint printed by 'opencustody hsm init', then confirm on the
device. Pass --code to compare non-interactively with a code read from the
device. Nothing is stored or pinned unless both sides confirm.

ID is the device id in 'opencustody devices list'. Direct pairing is allowed
only while hsmd runs with --ceremony (the key ceremony at the HSM console).
Afterwards, with an admin quorum set at the ceremony, the same steps propose the
pairing as an admin change (its id is printed): the device is paired once the
admin quorum approved on their devices, which show its fingerprint. If they
reject it, reset the device before pairing it again.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if deviceID == "" || user == "" {
				return withCode(ExitUsage, errors.New("pair needs --device and --user"))
			}
			role, err := parseAPIRole(roleName)
			if err != nil {
				return err
			}
			conn, err := g.dialHSMD(&f, hsmd.OperatorTokenFile)
			if err != nil {
				return err
			}
			defer conn.Close()
			res, err := runPairing(c.Context(), g, apipb.NewOperatorClient(conn), &apipb.PairStart{DeviceId: deviceID, User: user, Role: role}, expected)
			if err != nil {
				return rpcError(err)
			}
			if g.json {
				return writeJSON(g.streams.Out, res)
			}
			if res.ChangeID != "" {
				fmt.Fprintln(g.streams.Out, res.ChangeID)
				fmt.Fprintf(g.streams.Err, "pairing proposed as admin change %s: device %s becomes %s's %s device once the admin quorum approves on their devices, which show fingerprint %s; follow it with 'opencustody change show %s'\n",
					res.ChangeID, res.Device.ID, res.Device.User, res.Device.Role, res.Device.Fingerprint, res.ChangeID)
				return nil
			}
			fmt.Fprintf(g.streams.Out, "paired: device %s is %s's %s device (fingerprint %s)\n", res.Device.ID, res.Device.User, res.Device.Role, res.Device.Fingerprint)
			return nil
		},
	}
	addHSMDFlags(c, &f)
	c.Flags().StringVar(&deviceID, "device", "", "id of the device to pair (see 'opencustody devices list')")
	c.Flags().StringVar(&user, "user", "", "the person the device belongs to")
	c.Flags().StringVar(&roleName, "role", "approver", "approver or admin")
	c.Flags().StringVar(&expected, "code", "", "the code the device shows; compared instead of asking")
	addJSONFlag(c, g)
	return c
}

func parseAPIRole(s string) (apipb.Role, error) {
	switch s {
	case "approver":
		return apipb.Role_ROLE_APPROVER, nil
	case "admin":
		return apipb.Role_ROLE_ADMIN, nil
	}
	return 0, withCode(ExitUsage, fmt.Errorf("--role %q: use approver or admin", s))
}

// runPairing drives the Pair stream: start, show the code, send the
// operator's decision, wait for the result.
func runPairing(ctx context.Context, g *globals, cl apipb.OperatorClient, start *apipb.PairStart, expected string) (*pairResult, error) {
	stream, err := cl.Pair(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&apipb.PairClientMessage{Msg: &apipb.PairClientMessage_Start{Start: start}}); err != nil {
		return nil, err
	}
	fmt.Fprintf(g.streams.Err, "pairing device %s with %s; waiting for the device…\n", start.DeviceId, start.User)
	m, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	code := m.GetCode()
	if code == nil {
		return nil, errors.New("hsmd did not send a pairing code")
	}
	fmt.Fprintf(g.streams.Err, "\n  code on the device:      %s\n  HSM fingerprint:         %s\n  device fingerprint:      %s\n\n",
		pairing.Display(code.GetCode()), code.GetHsmFingerprint(), code.GetDeviceFingerprint())
	var ok bool
	if expected != "" {
		ok = strings.ReplaceAll(expected, " ", "") == code.GetCode()
		if !ok {
			fmt.Fprintf(g.streams.Err, "the device's code %s differs from hsmd's %s: rejecting\n", expected, pairing.Display(code.GetCode()))
		}
	} else {
		ok, err = askYesNo(g.streams, "Does the device show this code and HSM fingerprint? [y/N] ")
		if err != nil {
			return nil, err
		}
	}
	if err := stream.Send(&apipb.PairClientMessage{Msg: &apipb.PairClientMessage_Decision{Decision: &apipb.PairDecision{Confirmed: ok}}}); err != nil {
		return nil, err
	}
	if ok {
		fmt.Fprintln(g.streams.Err, "now confirm on the device…")
	}
	m, err = stream.Recv()
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, withCode(ExitRefused, errors.New("pairing rejected: the codes differ"))
	}
	r := m.GetResult()
	if r == nil {
		return nil, errors.New("hsmd did not send a pairing result")
	}
	return &pairResult{Device: newDeviceJSON(r.GetDevice()), Code: code.GetCode(), HSMFingerprint: code.GetHsmFingerprint(), ChangeID: r.GetChangeId()}, nil
}

func askYesNo(s Streams, prompt string) (bool, error) {
	fmt.Fprint(s.Err, prompt)
	line, err := bufio.NewReader(s.In).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	if errors.Is(err, io.EOF) && line == "" {
		return false, withCode(ExitUsage, errors.New("no answer on standard input; pass --code to compare non-interactively"))
	}
	a := strings.ToLower(strings.TrimSpace(line))
	return a == "y" || a == "yes", nil
}
