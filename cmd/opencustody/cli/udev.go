package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/device"
)

func init() { commands = append(commands, newUdevRulesCommand) }

// UdevRulesFile is the file name the rules are installed as.
const UdevRulesFile = "51-opencustody.rules"

// UdevRules returns the udev rules that let members of plugdev (and the
// user at the seat, via uaccess) open approval devices without root.
func UdevRules() string {
	vid, pid := fmt.Sprintf("%04x", device.USBVendorID), fmt.Sprintf("%04x", device.USBProductID)
	return fmt.Sprintf(`# udev rules for OpenCustody approval devices (USB %[1]s:%[2]s).
# Install: opencustody udev-rules --install   (or copy to /etc/udev/rules.d/%[3]s,
# then: udevadm control --reload-rules && udevadm trigger)
# USB %[1]s:%[2]s is a test id from the pid.codes test range; devices that ship use their own.
SUBSYSTEM=="usb", ATTR{idVendor}=="%[1]s", ATTR{idProduct}=="%[2]s", MODE="0660", GROUP="plugdev", TAG+="uaccess", TAG+="udev-acl"
KERNEL=="hidraw*", ATTRS{idVendor}=="%[1]s", ATTRS{idProduct}=="%[2]s", MODE="0660", GROUP="plugdev", TAG+="uaccess", TAG+="udev-acl"
`, vid, pid, UdevRulesFile)
}

func newUdevRulesCommand(g *globals) *cobra.Command {
	var (
		install bool
		dir     string
	)
	c := &cobra.Command{
		Use:   "udev-rules",
		Short: "Print (or install) the udev rules that give users access to approval devices on Linux",
		Long: `udev-rules prints the udev rules for the approval device's USB ids. With
--install it writes them to DIR/` + UdevRulesFile + ` (needs root) and asks udev to
reload its rules, so that a bridge run by a member of plugdev can open the
devices.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if !install {
				_, err := fmt.Fprint(g.streams.Out, UdevRules())
				return err
			}
			path := filepath.Join(dir, UdevRulesFile)
			if err := os.WriteFile(path, []byte(UdevRules()), 0o644); err != nil {
				if errors.Is(err, os.ErrPermission) {
					return withCode(ExitRefused, fmt.Errorf("write %s: %w (run as root, e.g. with sudo)", path, err))
				}
				return err
			}
			fmt.Fprintf(g.streams.Out, "wrote %s\n", path)
			if _, err := exec.LookPath("udevadm"); err != nil {
				fmt.Fprintln(g.streams.Err, "udevadm not found: reload udev's rules yourself, or replug the device")
				return nil
			}
			for _, args := range [][]string{{"control", "--reload-rules"}, {"trigger"}} {
				if out, err := exec.Command("udevadm", args...).CombinedOutput(); err != nil {
					fmt.Fprintf(g.streams.Err, "udevadm %v: %v: %s\n", args, err, out)
				}
			}
			return nil
		},
	}
	c.Flags().BoolVar(&install, "install", false, "write the rules and reload udev")
	c.Flags().StringVar(&dir, "dir", "/etc/udev/rules.d", "where --install writes the rules")
	return c
}
