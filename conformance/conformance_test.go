package conformance_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/conformance"
	"github.com/opencustodynet/opencustody/device"
	"github.com/opencustodynet/opencustody/emulator"
	"github.com/opencustodynet/opencustody/emulator/debuglink"
)

// quirkFailures is what each quirk of the emulator must make the suite
// report as not passed: failed, or skipped because a test it needs
// failed. Every other test must pass.
var quirkFailures = map[emulator.Quirk][]string{
	emulator.QuirkNone:              nil,
	emulator.QuirkAcceptUnsigned:    {"prompt/unsigned", "prompt/wrong-signer", "prompt/altered"},
	emulator.QuirkAcceptOtherDevice: {"prompt/wrong-device"},
	emulator.QuirkIgnoreExpiry:      {"prompt/expired"},
	emulator.QuirkAcceptReplayed:    {"prompt/replayed", "state/answered-persist"},
	emulator.QuirkReuseCounter: {"prompt/approve", "prompt/reject", "prompt/replayed", "prompt/confirm-last-page",
		"state/power-cycle", "state/answered-persist"},
	emulator.QuirkNoPersistence:  {"state/power-cycle", "state/answered-persist"},
	emulator.QuirkIgnoreSequence: {"framing/wrong-sequence"},
	emulator.QuirkBadErrorCodes: {"framing/init-bad-length", "framing/too-long", "framing/unknown-command",
		"framing/unexpected-cont", "framing/wrong-sequence", "framing/interleaved", "framing/wrong-channel",
		"framing/broadcast-misuse", "framing/unallocated-channel", "framing/timeout"},
	emulator.QuirkNoTimeout:      {"framing/timeout"},
	emulator.QuirkIgnoreCancel:   {"device/cancel-command"},
	emulator.QuirkNoKeepalive:    {"device/keepalive"},
	emulator.QuirkAcceptAnyHSM:   {"channel/other-hsm"},
	emulator.QuirkAcceptStale:    {"channel/stale-credential"},
	emulator.QuirkConfirmAnyPage: {"prompt/confirm-last-page"},
}

func runAgainst(t *testing.T, q emulator.Quirk) *conformance.Report {
	t.Helper()
	emu, err := emulator.Start(emulator.Options{StateDir: t.TempDir(), DebugLink: true, Quirk: q})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := conformance.Run(ctx, conformance.Config{
		Open:     func(context.Context) (device.Transport, error) { return device.DialUDP(emu.Addr().String()) },
		Operator: conformance.DebugLinkOperator{Client: debuglink.New(emu.DebugURL())},
	})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestEmulatorPasses runs the suite against the correct emulator: every
// test passes.
func TestEmulatorPasses(t *testing.T) {
	rep := runAgainst(t, emulator.QuirkNone)
	for _, r := range rep.Results {
		if r.Status != conformance.Pass {
			t.Errorf("%s (%s): %s: %s", r.ID, r.Section, r.Status, r.Detail)
		}
	}
	if len(rep.Results) != len(conformance.Tests()) || rep.Passed != len(conformance.Tests()) {
		t.Errorf("passed %d of %d tests", rep.Passed, len(conformance.Tests()))
	}
}

// TestQuirks runs the suite against each quirk of the emulator and checks
// that exactly the tests the quirk breaks do not pass, so that each of
// those tests can fail.
func TestQuirks(t *testing.T) {
	for _, q := range emulator.Quirks {
		if _, ok := quirkFailures[q]; !ok {
			t.Errorf("quirk %s has no entry in quirkFailures", q)
		}
	}
	ids := map[string]bool{}
	for _, tc := range conformance.Tests() {
		ids[tc.ID] = true
	}
	for q, want := range quirkFailures {
		for _, id := range want {
			if !ids[id] {
				t.Errorf("quirk %s: expects unknown test %s", q, id)
			}
		}
		if q == emulator.QuirkNone {
			continue
		}
		t.Run(string(q), func(t *testing.T) {
			t.Parallel()
			rep := runAgainst(t, q)
			got := rep.Failures()
			want := slices.Clone(want)
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				for _, r := range rep.Results {
					if r.Status != conformance.Pass {
						t.Logf("%s: %s: %s", r.ID, r.Status, r.Detail)
					}
				}
				t.Errorf("not passed:\n got %v\nwant %v", got, want)
			}
		})
	}
}

var update = flag.Bool("update", false, "rewrite the generated part of firmware-spec/conformance.md")

// TestConformanceDoc checks that firmware-spec/conformance.md lists every
// test as it is; -update rewrites the list.
func TestConformanceDoc(t *testing.T) {
	const file = "../firmware-spec/conformance.md"
	const begin = "<!-- BEGIN GENERATED: go test ./conformance -run TestConformanceDoc -update -->\n"
	const end = "<!-- END GENERATED -->\n"
	var b strings.Builder
	b.WriteString("| test | section | checks | needs |\n|---|---|---|---|\n")
	for _, tc := range conformance.Tests() {
		var needs []string
		if tc.Person {
			needs = append(needs, "person")
		}
		if tc.Screen {
			needs = append(needs, "screen")
		}
		needs = append(needs, tc.Needs...)
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", tc.ID, tc.Section, tc.Title, strings.Join(needs, ", "))
	}
	doc, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("%s: generated-part markers missing", file)
	}
	if s[i+len(begin):j] == b.String() {
		return
	}
	if !*update {
		t.Fatalf("%s does not list the tests as they are (run go test ./conformance -run TestConformanceDoc -update)", file)
	}
	if err := os.WriteFile(file, []byte(s[:i+len(begin)]+b.String()+s[j:]), 0o644); err != nil {
		t.Fatal(err)
	}
}

// person plays the user of a device for a TerminalOperator: it reads the
// instructions the suite prints and carries them out through the debug
// link, as someone at the device would.
type person struct {
	t     *testing.T
	dl    *debuglink.Client
	enter io.Writer // the operator's In
}

func (p *person) Write(b []byte) (int, error) {
	s := string(b)
	op := conformance.DebugLinkOperator{Client: p.dl}
	ctx := context.Background()
	switch {
	case strings.Contains(s, "press CONFIRM"):
		go func() {
			if err := op.Press(ctx, s, conformance.Confirm); err != nil {
				p.t.Errorf("pressing confirm: %v", err)
			}
		}()
	case strings.Contains(s, "Press REJECT"):
		go func() {
			if err := op.Press(ctx, s, conformance.Reject); err != nil {
				p.t.Errorf("pressing reject: %v", err)
			}
		}()
	case strings.Contains(s, "unplug the device"):
		go func() {
			if err := op.PowerCycle(ctx); err != nil {
				p.t.Errorf("power cycle: %v", err)
			}
			io.WriteString(p.enter, "\n")
		}()
	default:
		p.t.Errorf("the suite printed an instruction nobody understands: %q", s)
	}
	return len(b), nil
}

// TestTerminalOperator runs the suite as on hardware: a person reads the
// instructions on the terminal and presses the buttons. Everything passes
// but the test that must read the screen, which is skipped.
func TestTerminalOperator(t *testing.T) {
	emu, err := emulator.Start(emulator.Options{StateDir: t.TempDir(), DebugLink: true})
	if err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	in, enter := io.Pipe()
	defer enter.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := conformance.Run(ctx, conformance.Config{
		Open:     func(context.Context) (device.Transport, error) { return device.DialUDP(emu.Addr().String()) },
		Operator: &conformance.TerminalOperator{In: in, Out: &person{t: t, dl: debuglink.New(emu.DebugURL()), enter: enter}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Results {
		want := conformance.Pass
		if r.ID == "prompt/confirm-last-page" {
			want = conformance.Skip
		}
		if r.Status != want {
			t.Errorf("%s: %s (%s), want %s", r.ID, r.Status, r.Detail, want)
		}
	}
}
