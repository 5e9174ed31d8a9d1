package bridge

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/opencustodynet/opencustody/device"
	"github.com/opencustodynet/opencustody/protocol/apiclient"
)

// Defaults for [Config].
const (
	// DefaultScanInterval is how often the bridge looks for devices.
	DefaultScanInterval = 2 * time.Second
	// DefaultOpenTimeout bounds opening a device: channel allocation and
	// GetFeatures.
	DefaultOpenTimeout = 10 * time.Second
	// DefaultMaxQueue is how many frames may wait per device and direction.
	DefaultMaxQueue = 64
	// DefaultStatusAddress is where the CLI serves the status endpoint.
	DefaultStatusAddress = "127.0.0.1:7421"
)

// MaxDevices is the most devices one bridge relays at once; hsmd accepts
// as many from one bridge.
const MaxDevices = 1024

// Config configures a [Bridge]. The zero value of every field but HSMD (or
// Conn) means its default.
type Config struct {
	// HSMD says how to reach hsmd: its address, the fingerprint of its
	// certificate, and the bridge token.
	HSMD apiclient.Options
	// Conn, if set, is used instead of dialing HSMD: a connection the
	// caller made (with [apiclient.Dial]) and closes. When it has a
	// ResetConnectBackoff method (as *grpc.ClientConn does), the bridge
	// calls it before each attempt, so that its own backoff, not the
	// connection's, decides when to retry.
	Conn grpc.ClientConnInterface

	// Name is the bridge's name in hsmd's logs and status (default: the
	// host name).
	Name string
	// Version is the software version told to hsmd.
	Version string

	// EmulatorHost is the address emulators listen on (default
	// 127.0.0.1).
	EmulatorHost string
	// EmulatorPorts are probed for emulators on every scan. Nil means
	// [device.DefaultEmulatorPort]; an empty non-nil slice probes none.
	EmulatorPorts []int
	// SkipUSB turns USB HID discovery off.
	SkipUSB bool
	// ScanInterval is how often devices are looked for; it is also how
	// soon an emulator that stopped is noticed (default
	// [DefaultScanInterval]).
	ScanInterval time.Duration
	// ProbeTimeout bounds each emulator's liveness probe (default
	// [device.DefaultProbeTimeout]).
	ProbeTimeout time.Duration
	// OpenTimeout bounds opening a device (default [DefaultOpenTimeout]).
	OpenTimeout time.Duration

	// Backoff paces reconnections to hsmd and reopening devices that
	// failed.
	Backoff Backoff
	// MaxQueue is how many frames may wait for one device, and how many of
	// one device's frames may wait for hsmd (default [DefaultMaxQueue]). A
	// device whose queue overflows is dropped: either side is then sending
	// faster than the other takes, and buffering more would only grow
	// memory.
	MaxQueue int

	// Logger receives the bridge's logs (default slog.Default()). Frame
	// contents are never logged, only their sizes.
	Logger *slog.Logger
	// Registerer receives the metrics; nil means a private registry.
	Registerer prometheus.Registerer
	// Now is the clock for status times (default time.Now).
	Now func() time.Time

	// Discover, if set, replaces device discovery (the default runs
	// [device.Discover] with EmulatorHost, EmulatorPorts, SkipUSB and
	// ProbeTimeout). It is for embedding the bridge and for tests.
	Discover func(ctx context.Context) (*device.Discovery, error)
	// Open, if set, replaces [device.Open] for discovered devices.
	Open func(info device.Info) (device.Transport, error)
}

// Backoff is an exponential backoff with jitter: after the n-th failure in
// a row the bridge waits a random time between half and all of
// min(Min·2ⁿ⁻¹, Max).
type Backoff struct {
	// Min is the first delay (default 500 ms).
	Min time.Duration
	// Max caps the delay (default 30 s).
	Max time.Duration
	// Healthy is how long a connection to hsmd must have lasted for its
	// loss to count as a first failure again (default 1 minute).
	Healthy time.Duration
}

func (b Backoff) withDefaults() Backoff {
	if b.Min <= 0 {
		b.Min = 500 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 30 * time.Second
	}
	if b.Max < b.Min {
		b.Max = b.Min
	}
	if b.Healthy <= 0 {
		b.Healthy = time.Minute
	}
	return b
}

// Delay returns the wait after the n-th failure in a row (n ≥ 1); random
// returns a number in [0, 1).
func (b Backoff) Delay(n int, random func() float64) time.Duration {
	b = b.withDefaults()
	d := b.Min
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return d/2 + time.Duration(random()*float64(d/2))
}

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name, _ = os.Hostname()
		if c.Name == "" {
			c.Name = "bridge"
		}
	}
	if c.ScanInterval <= 0 {
		c.ScanInterval = DefaultScanInterval
	}
	if c.OpenTimeout <= 0 {
		c.OpenTimeout = DefaultOpenTimeout
	}
	if c.MaxQueue <= 0 {
		c.MaxQueue = DefaultMaxQueue
	}
	c.Backoff = c.Backoff.withDefaults()
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Open == nil {
		c.Open = func(info device.Info) (device.Transport, error) { return device.Open(info.Path) }
	}
	if c.Discover == nil {
		req := device.DiscoverRequest{
			EmulatorHost: c.EmulatorHost, EmulatorPorts: c.EmulatorPorts,
			SkipUSB: c.SkipUSB, ProbeTimeout: c.ProbeTimeout,
		}
		c.Discover = func(ctx context.Context) (*device.Discovery, error) { return device.Discover(ctx, req) }
	}
	return c
}
