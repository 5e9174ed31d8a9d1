package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/bridge"
	"github.com/opencustodynet/opencustody/device"
	"github.com/opencustodynet/opencustody/hsm/hsmd"
)

func init() { commands = append(commands, newBridgeCommand) }

func newBridgeCommand(g *globals) *cobra.Command {
	var (
		hf           hsmdFlags
		lf           logFlags
		name         string
		ports        string
		noUSB        bool
		statusAddr   string
		metricsAddr  string
		scanInterval time.Duration
	)
	c := &cobra.Command{
		Use:   "bridge",
		Short: "Relay approval devices on this machine to hsmd (untrusted; holds no key that matters)",
		Long: `bridge runs next to the approval devices, on an approver's desk. It finds
devices on USB and emulators on the given UDP ports of 127.0.0.1, dials hsmd
(nothing listens on this machine but the local status endpoint), announces the
devices, and relays their frames both ways. It reconnects on its own, with a
growing delay, when hsmd or a device goes away, and announces devices again
when they come back.

The bridge is outside the trust boundary: what it relays is either public
(the devices' features) or ciphertext of the channel between each device and
the custody core. It logs frame sizes, never contents.

It dials hsmd with the bridge token (default DATA/hsmd/bridge.token) and the
pinned certificate fingerprint hsmd printed (--hsmd-cert).

--emulators takes ports and ranges (21424,21426-21430) or "none".

A status endpoint serves GET /status (JSON) on --status, a loopback address
(default ` + bridge.DefaultStatusAddress + `; "off" turns it off); read it with
'opencustody bridge status'. Prometheus metrics are off unless --metrics gives
a loopback address; it may be the status address, to serve both on one port.
SIGTERM or SIGINT stops the bridge cleanly: devices are detached, the stream to
hsmd is closed.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(c.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			log, err := newLogger(g.streams.Err, lf.format, lf.level)
			if err != nil {
				return err
			}
			ps, err := parsePorts(ports)
			if err != nil {
				return withCode(ExitUsage, fmt.Errorf("--emulators: %v", err))
			}
			if scanInterval <= 0 {
				return withCode(ExitUsage, fmt.Errorf("--scan-interval %s: want a positive duration", scanInterval))
			}
			// The local endpoints first: a bad or busy address is
			// reported before anything else happens.
			endpoints, err := listenLocal(statusAddr, metricsAddr)
			if err != nil {
				return err
			}
			defer func() {
				for _, e := range endpoints {
					e.close()
				}
			}()
			conn, err := g.dialHSMD(&hf, hsmd.BridgeTokenFile)
			if err != nil {
				return err
			}
			defer conn.Close()

			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			b, err := bridge.New(bridge.Config{
				Conn: conn, Name: name, Version: Version,
				EmulatorPorts: ps, SkipUSB: noUSB, ScanInterval: scanInterval,
				Logger: log, Registerer: reg,
			})
			if err != nil {
				return err
			}
			for _, e := range endpoints {
				e.serve(b, log)
			}
			return b.Run(ctx)
		},
	}
	addHSMDFlags(c, &hf)
	addLogFlags(c, &lf)
	f := c.Flags()
	f.StringVar(&name, "name", "", "the bridge's name in hsmd's status and logs (default: the host name)")
	f.StringVar(&ports, "emulators", strconv.Itoa(device.DefaultEmulatorPort), "UDP ports to probe for emulators: a list of ports and ranges, or \"none\"")
	f.BoolVar(&noUSB, "no-usb", false, "do not look for USB devices")
	f.StringVar(&statusAddr, "status", bridge.DefaultStatusAddress, "loopback address of the status endpoint, or \"off\"")
	f.StringVar(&metricsAddr, "metrics", "", "loopback address to serve Prometheus metrics on (/metrics); off by default")
	f.DurationVar(&scanInterval, "scan-interval", bridge.DefaultScanInterval, "how often to look for devices (and notice that one went away)")
	c.AddCommand(newBridgeStatusCommand(g))
	return c
}

// localEndpoint is one loopback listener serving the status endpoint, the
// metrics, or both.
type localEndpoint struct {
	status, metrics bool
	l               net.Listener
	srv             *http.Server
}

// listenLocal listens for the status and metrics endpoints ("" or "off"
// for none), on one listener when the addresses are the same.
func listenLocal(statusAddr, metricsAddr string) ([]*localEndpoint, error) {
	off := func(a string) string {
		if a == "off" {
			return ""
		}
		return a
	}
	statusAddr, metricsAddr = off(statusAddr), off(metricsAddr)
	var out []*localEndpoint
	listen := func(flag, addr string) (*localEndpoint, error) {
		l, err := listenLoopback(addr)
		if err != nil {
			for _, e := range out {
				e.l.Close()
			}
			var oe *net.OpError
			if errors.As(err, &oe) {
				return nil, withCode(ExitUnavailable, fmt.Errorf("--%s: %w", flag, err))
			}
			return nil, withCode(ExitUsage, fmt.Errorf("--%s: %w", flag, err))
		}
		e := &localEndpoint{l: l}
		out = append(out, e)
		return e, nil
	}
	if statusAddr != "" {
		e, err := listen("status", statusAddr)
		if err != nil {
			return nil, err
		}
		e.status = true
	}
	if metricsAddr != "" {
		if metricsAddr == statusAddr {
			out[0].metrics = true
		} else {
			e, err := listen("metrics", metricsAddr)
			if err != nil {
				return nil, err
			}
			e.metrics = true
		}
	}
	return out, nil
}

// serve starts serving b's endpoints.
func (e *localEndpoint) serve(b *bridge.Bridge, log *slog.Logger) {
	mux := http.NewServeMux()
	var what []string
	if e.status {
		mux.Handle("/status", b.StatusHandler())
		what = append(what, "status (GET /status)")
	}
	if e.metrics {
		mux.Handle("/metrics", b.MetricsHandler())
		what = append(what, "metrics (GET /metrics)")
	}
	e.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := e.srv.Serve(e.l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("local endpoint stopped", "address", e.l.Addr().String(), "err", err)
		}
	}()
	log.Info("serving "+strings.Join(what, " and "), "address", e.l.Addr().String())
}

// close stops serving, letting requests in progress finish briefly.
func (e *localEndpoint) close() {
	if e.srv == nil {
		e.l.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e.srv.Shutdown(ctx)
}

func newBridgeStatusCommand(g *globals) *cobra.Command {
	var (
		addr    string
		timeout time.Duration
	)
	c := &cobra.Command{
		Use:   "status",
		Short: "Show a running bridge's connection to hsmd and its devices",
		Long: `status reads the status endpoint of the bridge running on this machine
(--status, default ` + bridge.DefaultStatusAddress + `): whether it is connected to hsmd,
how often it reconnected, and each device it found with the frames relayed.
It exits 3 when no bridge answers.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(c.Context(), timeout)
			defer cancel()
			st, err := bridge.FetchStatus(ctx, addr)
			if err != nil {
				if errors.Is(err, bridge.ErrNoBridge) {
					return withCode(ExitUnavailable, fmt.Errorf("%w (is 'opencustody bridge' running, with this --status address?)", err))
				}
				return withCode(ExitUnavailable, err)
			}
			if g.json {
				return writeJSON(g.streams.Out, st)
			}
			return printBridgeStatus(g, st)
		},
	}
	c.Flags().StringVar(&addr, "status", bridge.DefaultStatusAddress, "address of the bridge's status endpoint")
	c.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "give up after this long")
	addJSONFlag(c, g)
	return c
}

func printBridgeStatus(g *globals, st *bridge.Status) error {
	w := g.streams.Out
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return time.Since(t).Round(time.Second).String() + " ago"
	}
	fmt.Fprintf(w, "bridge %s", st.Name)
	if st.Version != "" {
		fmt.Fprintf(w, " (%s)", st.Version)
	}
	fmt.Fprintf(w, ", started %s\n", ago(st.Started))
	h := st.HSMD
	if h.Connected {
		fmt.Fprintf(w, "hsmd %s: connected since %s, HSM fingerprint %s, %d reconnects\n", h.Address, ago(h.Since), h.HSMFingerprint, h.Reconnects)
	} else {
		fmt.Fprintf(w, "hsmd %s: not connected (since %s", h.Address, ago(h.Since))
		if h.FailedAttempts > 0 {
			fmt.Fprintf(w, ", %d failed attempts, next in %s", h.FailedAttempts, max(0, time.Until(h.NextAttempt)).Round(100*time.Millisecond))
		}
		fmt.Fprintln(w, ")")
		if h.LastError != "" {
			fmt.Fprintf(w, "  last error: %s\n", h.LastError)
		}
	}
	if len(st.Devices) == 0 {
		fmt.Fprintln(w, "no devices found")
	} else {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKIND\tSTATE\tATTACHED\tDEVICE ID\tTO DEVICE\tTO HSMD\tDROPPED\tLAST ERROR")
		for _, d := range st.Devices {
			attached := "no"
			if d.Attached {
				attached = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", d.ID, d.Kind, d.State, attached, firstOf(d.DeviceID, "-"),
				d.FramesToDevice, d.FramesToHSMD, d.FramesDropped, strings.ReplaceAll(firstOf(d.LastError, "-"), "\t", " "))
		}
		tw.Flush()
	}
	if st.USB != nil && st.USB.Note != "" {
		fmt.Fprintf(w, "usb: %s\n", st.USB.Note)
	}
	if st.ScanError != "" {
		fmt.Fprintf(w, "last scan failed: %s\n", st.ScanError)
	}
	return nil
}
