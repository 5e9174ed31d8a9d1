package emulator

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/opencustodynet/opencustody/protocol/framing"
)

// UDP carriage (firmware-spec/device.md, "Emulator transport").
const (
	// DefaultPort is the emulator's default UDP port; the debug link
	// listens on the next port by default.
	DefaultPort = 21424
	// LivenessPing is the 8-byte datagram a host sends to learn whether an
	// emulator listens on a port; the emulator answers [LivenessPong].
	// Neither is a valid report, so they cannot be confused with one.
	LivenessPing = "PINGPING"
	// LivenessPong is the answer to [LivenessPing].
	LivenessPong = "PONGPONG"
)

// tickInterval is how often the carriage calls [Device.Tick].
const tickInterval = 100 * time.Millisecond

// Options configures [Start].
type Options struct {
	// StateDir holds the device's persistent state. Required.
	StateDir string
	// Host is the loopback address to listen on (default 127.0.0.1); other
	// addresses are refused, since anyone who reaches the socket can drive
	// the device.
	Host string
	// Port is the UDP port for reports; 0 picks a free port (see
	// [Emulator.Addr]).
	Port int
	// DebugLink enables the debug link, an HTTP server on DebugPort. A
	// production device has no debug link.
	DebugLink bool
	// DebugPort is the debug link's TCP port; 0 picks a free port (see
	// [Emulator.DebugURL]).
	DebugPort int
	// Algorithm and Label apply when the state is created (see
	// [StoreRequest]).
	Algorithm string
	Label     string
	// Rand is the randomness for keys and channel ids (default
	// crypto/rand); see [SeededRand].
	Rand io.Reader
	// Logger receives operational logs (default: discard).
	Logger *slog.Logger
	// KeepaliveInterval, see [Config].
	KeepaliveInterval time.Duration
	// Quirk, see [Config]: a device that breaks one rule on purpose.
	Quirk Quirk
	// WebAddr, if set, serves the web view (the live screen and its
	// buttons, for people) on this loopback address, "127.0.0.1:PORT";
	// other addresses are refused. See [WebHandler] and [Emulator.WebURL].
	WebAddr string
	// RecordDir, if set, receives one PNG per screen change, named by the
	// screen's sequence number (000001.png, …). The directory is created.
	RecordDir string
}

// SeededRand returns a deterministic random stream derived from seed, for
// tests and test vectors only: every emulator started with the same seed
// and a fresh state directory has the same identity key and hands out the
// same channel ids.
func SeededRand(seed string) io.Reader {
	return rand.NewChaCha8(sha256.Sum256([]byte("opencustody emulator seed v1\x00" + seed)))
}

// Emulator is a running software device: a [Device] carried over UDP on
// loopback, with an optional debug link.
type Emulator struct {
	dev   *Device
	store *Store
	conn  *net.UDPConn
	debug *http.Server
	dln   net.Listener
	web   *http.Server
	wln   net.Listener
	token string // the web view's per-run token
	log   *slog.Logger

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// Start opens (or creates) the state in opts.StateDir and starts serving.
// Several emulators run side by side on different ports and state
// directories.
func Start(opts Options) (*Emulator, error) {
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rnd := opts.Rand
	if rnd == nil {
		rnd = cryptoRand
	}
	store, created, err := OpenStore(StoreRequest{Dir: opts.StateDir, Algorithm: opts.Algorithm, Label: opts.Label, Rand: rnd})
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("emulator: new device state", "dir", opts.StateDir, "algorithm", store.Algorithm(), "device_id", store.Identity().DeviceID())
	}
	dev, err := New(Config{Store: store, Rand: rnd, Logger: log, KeepaliveInterval: opts.KeepaliveInterval, Quirk: opts.Quirk})
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(opts.Host)
	if ip == nil || !ip.IsLoopback() {
		// Anyone who can reach the socket can drive the device.
		return nil, fmt.Errorf("emulator: host %q is not a loopback address", opts.Host)
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: opts.Port})
	if err != nil {
		return nil, fmt.Errorf("emulator: listen on udp port %d: %w", opts.Port, err)
	}
	// A larger receive buffer makes drops under bursts rarer; the kernel
	// may cap it, which is fine.
	_ = conn.SetReadBuffer(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	e := &Emulator{dev: dev, store: store, conn: conn, log: log, cancel: cancel}
	if opts.DebugLink {
		ln, err := net.Listen("tcp", net.JoinHostPort(opts.Host, strconv.Itoa(opts.DebugPort)))
		if err != nil {
			cancel()
			conn.Close()
			return nil, fmt.Errorf("emulator: debug link: listen on tcp port %d: %w", opts.DebugPort, err)
		}
		e.dln = ln
		e.debug = &http.Server{Handler: DebugHandler(dev), ReadHeaderTimeout: 10 * time.Second}
		e.wg.Go(func() {
			if err := e.debug.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("emulator: debug link stopped", "err", err)
			}
		})
	}
	if opts.RecordDir != "" {
		if err := os.MkdirAll(opts.RecordDir, 0o755); err != nil {
			e.closeEarly()
			return nil, fmt.Errorf("emulator: record directory: %w", err)
		}
		dev.startViewLog()
		e.wg.Go(func() { dev.recordScreens(opts.RecordDir, ctx.Done()) })
	}
	if opts.WebAddr != "" {
		ap, err := ParseWebAddr(opts.WebAddr)
		if err != nil {
			e.closeEarly()
			return nil, err
		}
		ln, err := net.Listen("tcp", ap.String())
		if err != nil {
			e.closeEarly()
			return nil, fmt.Errorf("emulator: web view: %w", err)
		}
		if e.token, err = newWebToken(); err != nil {
			ln.Close()
			e.closeEarly()
			return nil, err
		}
		e.wln = ln
		e.web = &http.Server{Handler: WebHandler(dev, e.token, webHosts(ln)), ReadHeaderTimeout: 10 * time.Second}
		e.wg.Go(func() {
			if err := e.web.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("emulator: web view stopped", "err", err)
			}
		})
	}
	e.wg.Go(func() { e.readLoop() })
	e.wg.Go(func() { dev.tickLoop(ctx) })
	log.Info("emulator: listening", "udp", conn.LocalAddr().String(), "debug_link", e.DebugURL())
	return e, nil
}

// Device returns the emulated device.
func (e *Emulator) Device() *Device { return e.dev }

// Store returns the device's persistent state.
func (e *Emulator) Store() *Store { return e.store }

// Addr returns the UDP address the emulator listens on.
func (e *Emulator) Addr() *net.UDPAddr { return e.conn.LocalAddr().(*net.UDPAddr) }

// DebugURL returns the debug link's base URL, "http://127.0.0.1:PORT", or
// "" when the debug link is disabled.
func (e *Emulator) DebugURL() string {
	if e.dln == nil {
		return ""
	}
	return "http://" + e.dln.Addr().String()
}

// WebURL returns the web view's URL, "http://127.0.0.1:PORT/", or "" when
// it is not served.
func (e *Emulator) WebURL() string {
	if e.wln == nil {
		return ""
	}
	return "http://" + e.wln.Addr().String() + "/"
}

// closeEarly undoes a Start that failed half-way.
func (e *Emulator) closeEarly() { e.Close() }

// Close stops the emulator and waits for its goroutines. The state is
// always on disk already.
func (e *Emulator) Close() error {
	e.once.Do(func() {
		e.cancel()
		e.conn.Close()
		if e.debug != nil {
			e.debug.Close()
		}
		if e.web != nil {
			e.web.Close()
		}
		e.wg.Wait()
	})
	return nil
}

// udpHost is a UDP peer.
type udpHost struct {
	conn *net.UDPConn
	addr *net.UDPAddr
	log  *slog.Logger
}

func (h udpHost) Send(report []byte) {
	if _, err := h.conn.WriteToUDP(report, h.addr); err != nil {
		h.log.Debug("emulator: send report", "to", h.addr.String(), "err", err)
	}
}

func (e *Emulator) readLoop() {
	buf := make([]byte, 2048)
	for {
		n, addr, err := e.conn.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Errors such as ICMP unreachable from a departed peer are
			// not fatal for a datagram socket.
			e.log.Debug("emulator: read datagram", "err", err)
			continue
		}
		switch {
		case n == len(LivenessPing) && string(buf[:n]) == LivenessPing:
			if _, err := e.conn.WriteToUDP([]byte(LivenessPong), addr); err != nil {
				e.log.Debug("emulator: answer liveness ping", "err", err)
			}
		case n == framing.ReportSize:
			e.dev.HandleReport(udpHost{e.conn, addr, e.log}, append([]byte(nil), buf[:n]...))
		default:
			e.log.Debug("emulator: dropped datagram", "size", n, "from", addr.String())
		}
	}
}

// tickLoop calls Tick until ctx ends.
func (d *Device) tickLoop(ctx context.Context) {
	t := time.NewTicker(tickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.Tick()
		}
	}
}

// writerHost sends reports to an io.Writer.
type writerHost struct {
	w   io.Writer
	log *slog.Logger
}

func (h writerHost) Send(report []byte) {
	if _, err := h.w.Write(report); err != nil {
		h.log.Debug("emulator: send report", "err", err)
	}
}

// ServeReports runs the device over one stream of whole reports, such as
// one end of an in-process pipe (device.Pipe): every Read must return one
// report, every answer is one Write. It returns when Read fails: nil for
// io.EOF or a closed stream, the error otherwise. Close the stream to stop
// it.
func (d *Device) ServeReports(rw io.ReadWriter) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // runs before wg.Wait
	wg.Go(func() { d.tickLoop(ctx) })
	host := writerHost{rw, d.log}
	buf := make([]byte, framing.ReportSize)
	for {
		n, err := rw.Read(buf)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) {
				return nil
			}
			return err
		}
		d.HandleReport(host, append([]byte(nil), buf[:n]...))
	}
}
