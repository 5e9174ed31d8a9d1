package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opencustodynet/opencustody/device"
	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

// States of a device in [DeviceStatus].
const (
	// StateOpening: found, being opened (channel allocation, GetFeatures).
	StateOpening = "opening"
	// StateOpen: open and relayed; announced to hsmd whenever the bridge
	// is connected.
	StateOpen = "open"
	// StateFailed: could not be opened, or was detached; it is opened
	// again after a backoff while it can still be found.
	StateFailed = "failed"
	// StateGone: no longer found.
	StateGone = "gone"
)

// Reasons a device is detached: the reason in DeviceDetached and the
// metric label.
const (
	// ReasonGone: discovery no longer finds it (unplugged, or the
	// emulator stopped answering its liveness probe).
	ReasonGone = "gone"
	// ReasonTransport: reading or writing the device failed.
	ReasonTransport = "transport failed"
	// ReasonChannelLost: the device no longer knows the bridge's channel
	// (it restarted, or another host made it forget the channel).
	ReasonChannelLost = "channel lost"
	// ReasonFlood: one side sent frames faster than the other took them.
	ReasonFlood = "flooded"
	// ReasonShutdown: the bridge is stopping.
	ReasonShutdown = "bridge stopping"
)

// goneFor is how long a device that is no longer found stays in the status.
const goneFor = time.Hour

// detachError is why a device was detached.
type detachError struct {
	reason string
	err    error
}

func (e *detachError) Error() string { return e.err.Error() }
func (e *detachError) Unwrap() error { return e.err }

var errShutdown = &detachError{reason: ReasonShutdown, err: errors.New("bridge: shutting down")}

// detachReason returns the reason of a device context's cause.
func detachReason(cause error) string {
	var de *detachError
	if errors.As(cause, &de) {
		return de.reason
	}
	return ReasonTransport
}

// inFrame is a frame from hsmd for a device, tagged with the stream it
// came on: frames of a stream that ended are not delivered.
type inFrame struct {
	sess *session
	env  []byte
}

// relayedDevice is a device the bridge found.
type relayedDevice struct {
	// Counters, updated without the lock.
	toDevice, toHSMD, dropped atomic.Uint64
	queuedToHSMD              atomic.Int64

	// Guarded by Bridge.mu.
	info      device.Info
	state     string
	since     time.Time
	lastErr   string
	features  []byte // the encoded Features envelope announced to hsmd
	claimedID string
	model     string
	attaches  int
	misses    int       // liveness probes unanswered in a row, while open
	failures  int       // failed opens in a row, for the backoff
	retryAt   time.Time // not opened again before
	active    bool      // a supervisor runs
	cancel    context.CancelCauseFunc
	in        chan inFrame // frames from hsmd; set while open
	announced *session     // the stream on which it was announced
}

// scanLoop looks for devices until ctx ends.
func (b *Bridge) scanLoop(ctx context.Context) {
	t := time.NewTicker(b.cfg.ScanInterval)
	defer t.Stop()
	for {
		b.scan(ctx)
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// scan runs one discovery and starts, or stops, the devices' supervisors.
func (b *Bridge) scan(ctx context.Context) {
	found, err := b.cfg.Discover(ctx)
	if err != nil {
		if ctx.Err() == nil {
			b.log.Warn("device discovery failed", "err", err)
			b.mu.Lock()
			b.scanErr = err.Error()
			b.mu.Unlock()
		}
		return
	}
	seen := make(map[string]bool, len(found.Devices))
	for _, info := range found.Devices {
		seen[info.ID] = true
	}
	lost := b.confirmLost(ctx, seen)
	now := b.cfg.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.scanErr = ""
	b.usb = &found.USB
	for _, info := range found.Devices {
		d := b.devices[info.ID]
		if d == nil {
			if len(b.devices) >= MaxDevices {
				b.pruneLocked(now, true)
				if len(b.devices) >= MaxDevices {
					b.log.Warn("too many devices; device ignored", "device", info.ID, "limit", MaxDevices)
					continue
				}
			}
			d = &relayedDevice{info: info, state: StateGone, since: now}
			b.devices[info.ID] = d
			b.log.Info("device found", "device", info.ID, "kind", info.Kind, "path", info.Path)
		}
		if d.active || now.Before(d.retryAt) {
			continue
		}
		d.info = info
		b.startLocked(ctx, d, now)
	}
	for id, d := range b.devices {
		if seen[id] {
			continue
		}
		if d.active {
			if err, ok := lost[id]; ok {
				d.cancel(&detachError{reason: ReasonGone, err: err})
			}
		} else if d.state == StateFailed {
			d.state, d.since = StateGone, now
			d.retryAt = time.Time{}
		}
	}
	b.pruneLocked(now, false)
}

// Confirming that an open emulator is gone.
const (
	// confirmTimeout bounds the second liveness probe.
	confirmTimeout = 2 * time.Second
	// missesBeforeGone is how many scans in a row an open emulator may
	// leave its liveness probe unanswered before it counts as gone, when
	// its port does not refuse the probe outright.
	missesBeforeGone = 3
)

// confirmLost decides which open devices that discovery missed are gone,
// with why. A USB device missing from the enumeration is gone. An open
// emulator is probed again: a stopped emulator's port refuses the probe at
// once and it is gone; one that answers is not; one that stays silent
// (a busy machine, say) is gone only after missesBeforeGone scans in a
// row. This keeps a momentary delay from detaching a device while its
// user is approving.
func (b *Bridge) confirmLost(ctx context.Context, seen map[string]bool) map[string]error {
	type check struct {
		d    *relayedDevice
		id   string
		addr string
	}
	lost := map[string]error{}
	var checks []check
	b.mu.Lock()
	for id, d := range b.devices {
		if seen[id] {
			d.misses = 0
			continue
		}
		if !d.active {
			continue
		}
		addr, udp := strings.CutPrefix(d.info.Path, "udp://")
		if d.info.Kind != device.KindEmulator || !udp {
			lost[id] = fmt.Errorf("bridge: device %s is no longer found", id)
			continue
		}
		checks = append(checks, check{d, id, addr})
	}
	b.mu.Unlock()

	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, confirmTimeout)
			defer cancel()
			errs[i] = device.ProbeUDP(pctx, c.addr)
		})
	}
	wg.Wait()

	b.mu.Lock()
	defer b.mu.Unlock()
	for i, c := range checks {
		switch err := errs[i]; {
		case err == nil:
			c.d.misses = 0
			seen[c.id] = true
		case errors.Is(err, syscall.ECONNREFUSED):
			lost[c.id] = fmt.Errorf("bridge: device %s is no longer found: nothing listens at %s", c.id, c.addr)
		default:
			c.d.misses++
			b.log.Debug("emulator did not answer its liveness probe", "device", c.id, "misses", c.d.misses, "err", err)
			if c.d.misses >= missesBeforeGone {
				lost[c.id] = fmt.Errorf("bridge: device %s is no longer found: %d liveness probes in a row unanswered", c.id, c.d.misses)
			} else {
				seen[c.id] = true
			}
		}
	}
	return lost
}

// pruneLocked forgets devices gone for a while (all gone ones if force).
// b.mu is held.
func (b *Bridge) pruneLocked(now time.Time, force bool) {
	for id, d := range b.devices {
		if !d.active && d.state == StateGone && (force || now.Sub(d.since) > goneFor) {
			delete(b.devices, id)
		}
	}
}

// startLocked starts d's supervisor. b.mu is held.
func (b *Bridge) startLocked(ctx context.Context, d *relayedDevice, now time.Time) {
	// The device's context ends only through cancel, with a cause: Run
	// cancels it with errShutdown after its own context ended.
	dctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	d.active, d.cancel = true, cancel
	d.state, d.since = StateOpening, now
	info := d.info
	b.devWG.Go(func() { b.supervise(dctx, cancel, d, info) })
}

// supervise opens a device, relays it until its context ends, and closes
// it.
func (b *Bridge) supervise(ctx context.Context, cancel context.CancelCauseFunc, d *relayedDevice, info device.Info) {
	log := b.log.With("device", info.ID)
	c, f, features, err := b.open(ctx, info)
	if err != nil {
		cause := context.Cause(ctx)
		b.mu.Lock()
		d.active, d.cancel = false, nil
		d.since = b.cfg.Now()
		switch detachReason(cause) {
		case ReasonShutdown:
			d.state = StateGone
		case ReasonGone:
			d.state, d.lastErr = StateGone, cause.Error()
		default:
			d.failures++
			delay := b.cfg.Backoff.Delay(d.failures, random)
			d.state, d.lastErr, d.retryAt = StateFailed, err.Error(), d.since.Add(delay)
			b.metrics.deviceOpenFail.Inc()
			log.Warn("cannot open device", "err", err, "retry_in", delay.Round(time.Millisecond))
		}
		b.mu.Unlock()
		return
	}
	in := make(chan inFrame, b.cfg.MaxQueue)
	b.mu.Lock()
	d.state, d.since, d.lastErr = StateOpen, b.cfg.Now(), ""
	d.features, d.claimedID, d.model = features, f.GetDeviceId(), f.GetModel()
	d.retryAt = time.Time{}
	d.attaches++
	opened := d.since
	d.in = in
	if b.sess != nil {
		b.announceLocked(d, b.sess)
	}
	b.mu.Unlock()
	b.metrics.devices.Inc()
	log.Info("device open", "device_id", f.GetDeviceId(), "model", f.GetModel(), "emulator", f.GetEmulator(), "path", info.Path)

	var wg sync.WaitGroup
	wg.Go(func() { b.readDevice(ctx, cancel, d, c, log) })
	wg.Go(func() { b.writeDevice(ctx, cancel, d, c, in) })
	<-ctx.Done()
	cause := context.Cause(ctx)
	c.Close()
	wg.Wait()

	reason := detachReason(cause)
	b.metrics.devices.Dec()
	b.metrics.detaches.WithLabelValues(reason).Inc()
	b.mu.Lock()
	b.detachLocked(d, reason)
	d.active, d.cancel, d.in = false, nil, nil
	d.since = b.cfg.Now()
	switch reason {
	case ReasonGone:
		d.state, d.lastErr = StateGone, cause.Error()
	case ReasonShutdown:
		d.state = StateGone
	default:
		// Open again at the next scan that finds it, after a short
		// pause for a device that keeps failing.
		d.state, d.lastErr = StateFailed, cause.Error()
		if d.since.Sub(opened) >= b.cfg.Backoff.Healthy {
			d.failures = 0
		}
		d.failures++
		d.retryAt = d.since.Add(b.cfg.Backoff.Delay(d.failures, random))
	}
	b.mu.Unlock()
	if reason == ReasonShutdown {
		log.Info("device closed", "reason", reason)
	} else {
		log.Warn("device detached", "reason", reason, "err", cause)
	}
}

// open opens info's transport, allocates a channel and asks for features,
// which it also returns encoded as an envelope for DeviceAttached.
func (b *Bridge) open(ctx context.Context, info device.Info) (*device.Client, *pb.Features, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.OpenTimeout)
	defer cancel()
	t, err := b.cfg.Open(info)
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := device.NewClient(ctx, t, device.ClientOptions{Name: info.ID, Logger: b.log})
	if err != nil {
		return nil, nil, nil, err
	}
	f, err := c.Features(ctx)
	if err == nil {
		var features []byte
		if features, err = protocol.EncodeEnvelope(f); err == nil {
			return c, f, features, nil
		}
		err = fmt.Errorf("bridge: device %s: features: %w", info.ID, err)
	}
	c.Close()
	return nil, nil, nil, err
}

// readDevice forwards the device's messages to hsmd until ctx ends or the
// device fails; it cancels the device's context with the failure.
func (b *Bridge) readDevice(ctx context.Context, cancel context.CancelCauseFunc, d *relayedDevice, c *device.Client, log *slog.Logger) {
	for {
		env, err := c.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var re *device.ReportError
			switch {
			case errors.As(err, &re) && re.Code == framing.ErrCodeInvalidChannel:
				cancel(&detachError{reason: ReasonChannelLost, err: err})
				return
			case errors.As(err, &re), errors.Is(err, device.ErrMalformedMessage):
				// A message was lost on the way; the channel still
				// works, and the secure channel above notices the loss.
				log.Warn("device framing error; a message was lost", "err", err)
				d.dropped.Add(1)
				b.metrics.framesDropped.WithLabelValues("framing").Inc()
				continue
			default:
				cancel(&detachError{reason: ReasonTransport, err: err})
				return
			}
		}
		if err := b.toHSMD(d, env); err != nil {
			cancel(err)
			return
		}
	}
}

// toHSMD queues one of d's messages for hsmd. It fails when d has too
// many waiting already.
func (b *Bridge) toHSMD(d *relayedDevice, env []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.sess
	if s == nil || d.announced != s {
		// hsmd is not connected: the message answers a request of a
		// stream that ended, and the core's link it belonged to is gone.
		d.dropped.Add(1)
		b.metrics.framesDropped.WithLabelValues("no_hsmd").Inc()
		b.log.Debug("device message while hsmd is not connected; dropped", "device", d.info.ID, "bytes", len(env))
		return nil
	}
	if n := d.queuedToHSMD.Load(); n >= int64(b.cfg.MaxQueue) {
		d.dropped.Add(1)
		b.metrics.framesDropped.WithLabelValues("flood").Inc()
		return &detachError{reason: ReasonFlood, err: fmt.Errorf("bridge: device %s sent more than %d frames hsmd has not taken", d.info.ID, n)}
	}
	d.queuedToHSMD.Add(1)
	s.out.push(outItem{from: d, msg: frameMessage(d.info.ID, env)})
	return nil
}

// writeDevice writes hsmd's frames to the device until ctx ends or
// writing fails.
func (b *Bridge) writeDevice(ctx context.Context, cancel context.CancelCauseFunc, d *relayedDevice, c *device.Client, in <-chan inFrame) {
	for {
		select {
		case f := <-in:
			b.mu.Lock()
			current := f.sess == b.sess
			b.mu.Unlock()
			if !current {
				d.dropped.Add(1)
				b.metrics.framesDropped.WithLabelValues("stale").Inc()
				continue
			}
			if err := c.Send(ctx, f.env); err != nil {
				cancel(&detachError{reason: ReasonTransport, err: err})
				return
			}
			d.toDevice.Add(1)
			b.metrics.frames.WithLabelValues(toDevice).Inc()
			b.metrics.frameBytes.WithLabelValues(toDevice).Add(float64(len(f.env)))
		case <-ctx.Done():
			return
		}
	}
}

// transportName is the DeviceAttached transport of a device kind.
func transportName(kind string) string {
	if kind == device.KindUSB {
		return "hid"
	}
	return "udp"
}
