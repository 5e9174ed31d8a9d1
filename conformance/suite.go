package conformance

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencustodynet/opencustody/device"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

// Defaults of [Config].
const (
	// DefaultAnswerTimeout is how long the suite waits for an answer that
	// a device sends without its user: a correct device answers in
	// milliseconds, so this is only how long a test takes to fail.
	DefaultAnswerTimeout = 10 * time.Second
	// DefaultUserTimeout is how long the suite waits for the device's user
	// to press a button.
	DefaultUserTimeout = 3 * time.Minute
)

// Config configures [Run].
type Config struct {
	// Open opens the transport to the device. It is called once at the
	// start and again after each power cycle. Required.
	Open func(ctx context.Context) (device.Transport, error)
	// Operator presses the device's buttons (and power-cycles it).
	// Required: a [DebugLinkOperator] for an emulator, a
	// [TerminalOperator] for hardware.
	Operator Operator
	// Rand is the randomness of the suite's keys, nonces and channel
	// allocations (default crypto/rand).
	Rand io.Reader
	// Now is the clock the suite's credentials and prompts are dated by
	// (default time.Now). Devices have no clock; only the order matters.
	Now func() time.Time
	// AnswerTimeout and UserTimeout, see [DefaultAnswerTimeout] and
	// [DefaultUserTimeout].
	AnswerTimeout time.Duration
	UserTimeout   time.Duration
	// Progress, if set, is called after each test with its result.
	Progress func(Result)
	// Only, if not empty, runs only the tests with these ids and the
	// tests they need (pairing, say); the report lists only those.
	Only []string
}

// Status is a test's outcome.
type Status string

const (
	Pass Status = "pass"
	Fail Status = "fail"
	// Skip: the test did not run, because a test it depends on failed or
	// the operator cannot do what it needs (read the screen).
	Skip Status = "skip"
)

// Result is one test's outcome.
type Result struct {
	ID      string `json:"id"`
	Section string `json:"section"`
	Title   string `json:"title"`
	Status  Status `json:"status"`
	// Detail says why a test failed or was skipped.
	Detail string `json:"detail,omitempty"`
	// Duration is how long the test ran, for people reading the report.
	Duration time.Duration `json:"duration_ns"`
}

// Report is the outcome of a run.
type Report struct {
	// Device describes the device as its Features said.
	Device  DeviceInfo `json:"device"`
	Results []Result   `json:"results"`
	Passed  int        `json:"passed"`
	Failed  int        `json:"failed"`
	Skipped int        `json:"skipped"`
}

// DeviceInfo is what the device said of itself.
type DeviceInfo struct {
	Vendor          string `json:"vendor"`
	Model           string `json:"model"`
	FirmwareVersion string `json:"firmware_version"`
	DeviceID        string `json:"device_id"`
	Emulator        bool   `json:"emulator"`
}

// OK reports whether every test that ran passed and none was skipped.
func (r *Report) OK() bool { return r.Failed == 0 && r.Skipped == 0 }

// Failures returns the ids of the tests that did not pass (failed or
// skipped).
func (r *Report) Failures() []string {
	var ids []string
	for _, x := range r.Results {
		if x.Status != Pass {
			ids = append(ids, x.ID)
		}
	}
	return ids
}

// Test is one requirement of firmware-spec/ checked against a device.
type Test struct {
	// ID is stable, "area/name".
	ID string
	// Section names the part of firmware-spec/ the test checks.
	Section string
	Title   string
	// Needs lists the tests that must have passed first (pairing, say).
	Needs []string
	// Person: the test needs the device's user to press a button.
	Person bool
	// Screen: the test reads the screen (debug link only).
	Screen bool
	run    func(*T) error
}

// Tests returns the suite's tests, in the order they run.
func Tests() []Test {
	var ts []Test
	for _, group := range [][]Test{framingTests, envelopeTests, deviceTests, channelTests, pairingTests, promptTests, stateTests} {
		ts = append(ts, group...)
	}
	return ts
}

// errSkip makes a test report itself as skipped.
type errSkip struct{ why string }

func (e errSkip) Error() string { return e.why }

// ErrDevicePaired means the device is paired with another HSM already; the
// suite needs an unpaired device, since it pairs the device with its own
// HSM identity.
var ErrDevicePaired = errors.New("conformance: the device is paired already; reset it (or give the emulator a new --state directory) and run again")

// Run runs every test against the device and returns the report. It
// returns an error only when the suite cannot run at all (the device
// cannot be opened, does not allocate a channel or answer GetFeatures).
// The device must be unpaired: the suite pairs it with its own HSM
// identity.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Open == nil || cfg.Operator == nil {
		return nil, errors.New("conformance: Config needs Open and Operator")
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.AnswerTimeout <= 0 {
		cfg.AnswerTimeout = DefaultAnswerTimeout
	}
	if cfg.UserTimeout <= 0 {
		cfg.UserTimeout = DefaultUserTimeout
	}
	s, err := newState(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer s.close()
	rep := &Report{Device: DeviceInfo{
		Vendor: s.features.GetVendor(), Model: s.features.GetModel(), FirmwareVersion: s.features.GetFirmwareVersion(),
		DeviceID: s.features.GetDeviceId(), Emulator: s.features.GetEmulator(),
	}}
	passed := map[string]bool{}
	only := map[string]bool{}
	for _, id := range cfg.Only {
		only[id] = true
	}
	for _, tc := range Tests() {
		if len(only) > 0 && !only[tc.ID] && !neededBySelected(tc.ID, only) {
			continue
		}
		res := Result{ID: tc.ID, Section: tc.Section, Title: tc.Title}
		start := time.Now()
		switch missing := missingNeeds(tc, passed); {
		case missing != "":
			res.Status, res.Detail = Skip, "needs "+missing+", which did not pass"
		case tc.Screen && s.screen == nil:
			res.Status, res.Detail = Skip, "needs to read the screen (emulator debug link)"
		default:
			err := s.runTest(ctx, tc)
			var sk errSkip
			switch {
			case err == nil:
				res.Status = Pass
				passed[tc.ID] = true
			case errors.As(err, &sk):
				res.Status, res.Detail = Skip, sk.why
			default:
				res.Status, res.Detail = Fail, err.Error()
			}
		}
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		res.Duration = time.Since(start)
		switch res.Status {
		case Pass:
			rep.Passed++
		case Fail:
			rep.Failed++
		default:
			rep.Skipped++
		}
		rep.Results = append(rep.Results, res)
		if cfg.Progress != nil {
			cfg.Progress(res)
		}
		if tc.ID == "channel/handshake" && errors.Is(s.lastErr, ErrDevicePaired) {
			return rep, ErrDevicePaired
		}
	}
	return rep, nil
}

func missingNeeds(tc Test, passed map[string]bool) string {
	for _, n := range tc.Needs {
		if !passed[n] {
			return n
		}
	}
	return ""
}

// neededBySelected reports whether a selected test needs id, directly or
// through others.
func neededBySelected(id string, only map[string]bool) bool {
	byID := map[string]Test{}
	for _, tc := range Tests() {
		byID[tc.ID] = tc
	}
	var needs func(string, int) bool
	needs = func(x string, depth int) bool {
		if depth > 16 {
			return false
		}
		for _, n := range byID[x].Needs {
			if n == id || needs(n, depth+1) {
				return true
			}
		}
		return false
	}
	for x := range only {
		if needs(x, 0) {
			return true
		}
	}
	return false
}

// features of a device, checked once at the start.
func checkFeatures(f *pb.Features) error {
	if f.GetProtocolVersionMin() > 1 || f.GetProtocolVersionMax() < 1 {
		return fmt.Errorf("the Features say protocol versions %d to %d, which excludes 1", f.GetProtocolVersionMin(), f.GetProtocolVersionMax())
	}
	return nil
}
