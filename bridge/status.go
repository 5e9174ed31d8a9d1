package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/opencustodynet/opencustody/device"
)

// Status is a snapshot of a bridge, as [Bridge.Status] returns it and the
// status endpoint serves it (JSON, GET /status).
type Status struct {
	Name    string     `json:"name"`
	Version string     `json:"version,omitempty"`
	Started time.Time  `json:"started"`
	HSMD    HSMDStatus `json:"hsmd"`
	// Devices lists the devices found, by id.
	Devices []DeviceStatus `json:"devices"`
	// USB is what the last scan saw on USB (nil before the first scan).
	USB *device.USBStatus `json:"usb,omitempty"`
	// ScanError is why the last scan failed, if it did.
	ScanError string `json:"scan_error,omitempty"`
}

// HSMDStatus describes the relay stream to hsmd.
type HSMDStatus struct {
	Address   string `json:"address"`
	Connected bool   `json:"connected"`
	// Since is when the stream came up, or went down (or the bridge
	// started, if it never came up).
	Since time.Time `json:"since"`
	// HSMFingerprint is the HSM identity fingerprint hsmd announced.
	HSMFingerprint string `json:"hsm_fingerprint,omitempty"`
	// Connections counts streams established; Reconnects those after the
	// first.
	Connections int `json:"connections"`
	Reconnects  int `json:"reconnects"`
	// FailedAttempts counts failures since the stream was last up;
	// LastError is the latest and NextAttempt when the bridge tries again.
	FailedAttempts int       `json:"failed_attempts,omitempty"`
	LastError      string    `json:"last_error,omitempty"`
	NextAttempt    time.Time `json:"next_attempt,omitzero"`
}

// DeviceStatus describes one device.
type DeviceStatus struct {
	// ID is the discovery id, which is also the ref hsmd knows it by.
	ID   string `json:"id"`
	Kind string `json:"kind"`
	Path string `json:"path"`
	// State is StateOpening, StateOpen, StateFailed or StateGone.
	State string    `json:"state"`
	Since time.Time `json:"since"`
	// Attached is true while the device is announced to hsmd on the
	// current stream.
	Attached bool `json:"attached"`
	// DeviceID and Model are what the device claimed in its features.
	DeviceID string `json:"device_id,omitempty"`
	Model    string `json:"model,omitempty"`
	// Attaches counts the times it was opened.
	Attaches int `json:"attaches"`
	// Frames relayed each way, and frames dropped (see the log for why).
	FramesToDevice uint64 `json:"frames_to_device"`
	FramesToHSMD   uint64 `json:"frames_to_hsmd"`
	FramesDropped  uint64 `json:"frames_dropped"`
	// QueuedToDevice and QueuedToHSMD are frames waiting now.
	QueuedToDevice int `json:"queued_to_device"`
	QueuedToHSMD   int `json:"queued_to_hsmd"`
	// LastError is why it was last detached or could not be opened.
	LastError string `json:"last_error,omitempty"`
	// RetryAt is when a failed device is opened again, if still found.
	RetryAt time.Time `json:"retry_at,omitzero"`
}

// Status returns a snapshot of the bridge.
func (b *Bridge) Status() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := Status{
		Name: b.cfg.Name, Version: b.cfg.Version, Started: b.started,
		HSMD: b.hsmd, ScanError: b.scanErr, Devices: []DeviceStatus{},
	}
	if b.usb != nil {
		u := *b.usb
		st.USB = &u
	}
	for _, d := range b.devices {
		ds := DeviceStatus{
			ID: d.info.ID, Kind: d.info.Kind, Path: d.info.Path,
			State: d.state, Since: d.since,
			Attached: d.announced != nil && d.announced == b.sess,
			DeviceID: d.claimedID, Model: d.model, Attaches: d.attaches,
			FramesToDevice: d.toDevice.Load(), FramesToHSMD: d.toHSMD.Load(), FramesDropped: d.dropped.Load(),
			QueuedToDevice: len(d.in), QueuedToHSMD: int(d.queuedToHSMD.Load()),
			LastError: d.lastErr,
		}
		if d.state == StateFailed {
			ds.RetryAt = d.retryAt
		}
		st.Devices = append(st.Devices, ds)
	}
	sort.Slice(st.Devices, func(i, j int) bool { return st.Devices[i].ID < st.Devices[j].ID })
	return st
}

// StatusHandler serves [Bridge.Status] as JSON on GET /status.
func (b *Bridge) StatusHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(b.Status())
	})
	return mux
}

// MetricsHandler serves the Prometheus metrics of the bridge's registry
// (the private one, or [Config].Registerer if it is also a Gatherer).
func (b *Bridge) MetricsHandler() http.Handler {
	if b.gatherer == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(b.gatherer, promhttp.HandlerOpts{})
}

// ErrNoBridge is wrapped by [FetchStatus] when nothing answers at the
// address.
var ErrNoBridge = errors.New("bridge: no bridge answers")

// FetchStatus asks the bridge whose status endpoint is at addr
// (host:port) for its [Status].
func FetchStatus(ctx context.Context, addr string) (*Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return nil, fmt.Errorf("bridge: status address %q: %w", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w", ErrNoBridge, addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("bridge: status from %s: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bridge: status from %s: %s: %s", addr, resp.Status, strings.TrimSpace(string(body)))
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("bridge: status from %s is not a bridge's: %w", addr, err)
	}
	return &st, nil
}
