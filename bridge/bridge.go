package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/opencustodynet/opencustody/device"
	"github.com/opencustodynet/opencustody/protocol/apiclient"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// Bridge relays devices to hsmd. Make one with [New] and run it with
// [Bridge.Run]; [Bridge.Status] and the handlers may be used at any time.
type Bridge struct {
	cfg      Config
	log      *slog.Logger
	metrics  *metrics
	gatherer prometheus.Gatherer
	started  time.Time
	address  string // hsmd's, for status and logs

	devWG sync.WaitGroup // the devices' supervisors

	// mu guards the fields below and the fields of every relayedDevice
	// marked so. It is never held during I/O: pushing to a session's
	// outQueue and handing a frame to a device's channel never block.
	// Lock order: mu, then outQueue.mu.
	mu      sync.Mutex
	running bool
	devices map[string]*relayedDevice // by discovery id, which is the ref hsmd knows
	sess    *session                  // the relay stream, nil while disconnected
	hsmd    HSMDStatus
	usb     *device.USBStatus
	scanErr string
}

// New checks cfg and returns a bridge. Nothing is dialed or opened before
// [Bridge.Run].
func New(cfg Config) (*Bridge, error) {
	if cfg.Conn == nil {
		if cfg.HSMD.Address == "" || cfg.HSMD.Token == "" {
			return nil, errors.New("bridge: hsmd address and bridge token are required")
		}
		if _, err := apiclient.TLSConfig(cfg.HSMD.CertFingerprint); err != nil {
			return nil, fmt.Errorf("bridge: %w", err)
		}
	}
	cfg = cfg.withDefaults()
	b := &Bridge{
		cfg: cfg, log: cfg.Logger, started: cfg.Now(),
		address: cfg.HSMD.Address,
		devices: map[string]*relayedDevice{},
	}
	if cc, ok := cfg.Conn.(interface{ Target() string }); ok && b.address == "" {
		b.address = cc.Target()
	}
	b.hsmd = HSMDStatus{Address: b.address, Since: b.started}
	reg := cfg.Registerer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, b.gatherer = r, r
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		b.gatherer = g
	}
	b.metrics = newMetrics(reg)
	return b, nil
}

// Run relays until ctx ends, then shuts down cleanly: it tells hsmd that
// every device is detached, closes the relay stream and the devices, and
// returns nil. It returns an error only if it cannot start. Run may be
// called once.
//
// While it runs, the bridge keeps one relay stream to hsmd, reconnecting
// with [Config].Backoff when it breaks, and looks for devices every
// [Config].ScanInterval: it opens each new device, asks for its features,
// announces it to hsmd (again after every reconnection), relays its frames
// both ways, and detaches it when it disappears, fails or floods; a device
// that comes back is attached again.
func (b *Bridge) Run(ctx context.Context) error {
	b.mu.Lock()
	if b.running {
		b.mu.Unlock()
		return errors.New("bridge: Run called twice")
	}
	b.running = true
	b.mu.Unlock()

	conn := b.cfg.Conn
	if conn == nil {
		cc, err := apiclient.Dial(b.cfg.HSMD)
		if err != nil {
			return fmt.Errorf("bridge: %w", err)
		}
		defer cc.Close()
		conn = cc
	}
	client := apipb.NewRelayClient(conn)
	b.log.Info("bridge starting", "name", b.cfg.Name, "hsmd", b.address)

	devicesDone := make(chan struct{})
	hsmdDone := make(chan struct{})
	go func() {
		defer close(hsmdDone)
		b.hsmdLoop(ctx, conn, client, devicesDone)
	}()
	b.scanLoop(ctx)

	// Shutting down: devices first, so that their DeviceDetached reach
	// hsmd on the stream that is still open; then the stream.
	b.mu.Lock()
	for _, d := range b.devices {
		if d.cancel != nil {
			d.cancel(errShutdown)
		}
	}
	b.mu.Unlock()
	b.devWG.Wait()
	close(devicesDone)
	<-hsmdDone
	b.log.Info("bridge stopped")
	return nil
}

// random is the jitter source of backoffs.
func random() float64 { return rand.Float64() }

// sleep waits for d or until ctx ends, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
