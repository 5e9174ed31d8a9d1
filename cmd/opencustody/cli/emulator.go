package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/opencustodynet/opencustody/emulator"
)

func init() { commands = append(commands, newEmulatorCommand) }

func newEmulatorCommand(g *globals) *cobra.Command {
	var (
		port, debugPort      int
		production, headless bool
		verbose              bool
		stateDir, seed       string
		algorithm, label     string
		quirk                string
		webAddr, recordDir   string
	)
	c := &cobra.Command{
		Use:   "emulator",
		Short: "Run a software approval device (screen, buttons, persistent state, debug link)",
		Long: `emulator runs a software approval device that speaks the firmware-spec
protocol: 64-byte reports, one per UDP datagram, on 127.0.0.1:PORT. Hosts find
it with the liveness ping ("opencustody devices --emulators PORT").

Without --headless it draws its screen in this terminal and takes keys:
←/→ page, Enter or y confirm, n or Esc reject, q quit. With --headless it
draws nothing and runs until interrupted.

Unless --production is given, a debug link (HTTP + JSON, for tests) listens on
127.0.0.1:DEBUG-PORT (default PORT+1): GET /v1/screen, POST /v1/press,
GET /v1/screenshot, PUT /v1/rules; see firmware-spec/device.md.

The device's state lives in --state DIR (default DATA/emulator/PORT): its
identity and channel keys, counter and label, the HSM it is paired with, and
the freshness mark of that HSM's channel credentials. --seed makes the keys and channel ids deterministic, for
tests only.

--web 127.0.0.1:PORT serves a web page with the live screen and its buttons
(loopback addresses only; presses need the page's per-run token). --record
DIR writes one PNG per screen change into DIR (000001.png, …).

--quirk NAME makes the emulator break one rule of the specification on
purpose, to see the conformance suite catch it ('opencustody conformance');
names: ` + quirkNames() + `.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			q, err := emulator.ParseQuirk(quirk)
			if err != nil {
				return withCode(ExitUsage, err)
			}
			if webAddr != "" {
				if _, err := emulator.ParseWebAddr(webAddr); err != nil {
					return withCode(ExitUsage, err)
				}
			}
			if port < 0 || port > 65535 {
				return withCode(ExitUsage, fmt.Errorf("--port %d: want 0-65535", port))
			}
			if !c.Flags().Changed("debug-port") && port != 0 {
				debugPort = port + 1
			}
			if stateDir == "" {
				dir, err := g.DataDir()
				if err != nil {
					return err
				}
				if port == 0 {
					return withCode(ExitUsage, fmt.Errorf("--port 0 needs --state DIR"))
				}
				stateDir = filepath.Join(dir, "emulator", strconv.Itoa(port))
			}
			var tty *os.File
			if !headless {
				f, ok := g.streams.In.(*os.File)
				if !ok || !term.IsTerminal(int(f.Fd())) {
					return withCode(ExitUsage, fmt.Errorf("the interactive emulator needs a terminal on standard input; use --headless"))
				}
				tty = f
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			logOut := g.streams.Err
			if tty != nil {
				// The screen owns the terminal: logs go to a file.
				if err := os.MkdirAll(stateDir, 0o700); err != nil {
					return err
				}
				f, err := os.OpenFile(filepath.Join(stateDir, "emulator.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
				if err != nil {
					return err
				}
				defer f.Close()
				logOut = f
			}
			opts := emulator.Options{
				StateDir:  stateDir,
				Port:      port,
				DebugLink: !production,
				DebugPort: debugPort,
				Algorithm: algorithm,
				Label:     label,
				Quirk:     q,
				WebAddr:   webAddr,
				RecordDir: recordDir,
				Logger:    slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: level})),
			}
			if seed != "" {
				opts.Rand = emulator.SeededRand(seed)
			}
			emu, err := emulator.Start(opts)
			if err != nil {
				return err
			}
			defer emu.Close()
			status := fmt.Sprintf("emulator emu-%d: udp %s, device %s, state %s", emu.Addr().Port, emu.Addr(), emu.Store().Identity().DeviceID(), stateDir)
			if u := emu.WebURL(); u != "" {
				status += "\nweb view " + u
			}
			if recordDir != "" {
				status += "\nrecording screens to " + recordDir
			}
			if q != emulator.QuirkNone {
				status += "\nquirk " + string(q) + ": this emulator breaks the specification on purpose"
			}
			if u := emu.DebugURL(); u != "" {
				status += "\ndebug link " + u
			} else {
				status += "\nno debug link (--production)"
			}
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if tty == nil {
				fmt.Fprintln(g.streams.Err, status)
				<-ctx.Done()
				return nil
			}
			return runTerminal(ctx, tty, g.streams.Out, emu.Device(), status)
		},
	}
	f := c.Flags()
	f.IntVar(&port, "port", emulator.DefaultPort, "UDP port for reports (0: any free port)")
	f.IntVar(&debugPort, "debug-port", 0, "TCP port of the debug link (default PORT+1)")
	f.BoolVar(&production, "production", false, "run without the debug link, as a real device")
	f.BoolVar(&headless, "headless", false, "draw no screen; run until interrupted")
	f.StringVar(&stateDir, "state", "", "state directory (default DATA/emulator/PORT)")
	f.StringVar(&seed, "seed", "", "derive keys and randomness from this seed (tests only)")
	f.StringVar(&algorithm, "algorithm", "", "identity key algorithm of a new state: p256 (default), ed25519 or secp256k1")
	f.StringVar(&label, "label", "", "label of a new state")
	f.StringVar(&webAddr, "web", "", "serve the live screen and buttons on this loopback address (127.0.0.1:PORT)")
	f.StringVar(&recordDir, "record", "", "write one PNG per screen change into this directory")
	f.StringVar(&quirk, "quirk", "", "break one rule of the specification on purpose (see --help)")
	f.BoolVarP(&verbose, "verbose", "v", false, "log at debug level")
	return c
}

// runTerminal puts tty in raw mode and runs the screen until the user
// quits or ctx ends.
func runTerminal(ctx context.Context, tty *os.File, out io.Writer, dev *emulator.Device, status string) error {
	old, err := term.MakeRaw(int(tty.Fd()))
	if err != nil {
		return fmt.Errorf("terminal raw mode: %w", err)
	}
	defer term.Restore(int(tty.Fd()), old)
	t := &emulator.Terminal{Device: dev, In: tty, Out: out, Status: status}
	err = t.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func quirkNames() string {
	names := make([]string, len(emulator.Quirks))
	for i, q := range emulator.Quirks {
		names[i] = string(q)
	}
	return strings.Join(names, ", ")
}
