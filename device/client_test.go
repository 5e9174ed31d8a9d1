package device_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/png"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/device"
	"github.com/opencustodynet/opencustody/emulator"
	"github.com/opencustodynet/opencustody/emulator/debuglink"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

// childEnv makes the test binary run an emulator (see TestMain).
const childEnv = "OPENCUSTODY_DEVICE_TEST_EMULATOR_STATE"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		runChildEmulator(dir)
		return
	}
	os.Exit(m.Run())
}

// runChildEmulator runs an emulator until killed, after printing its UDP
// port and debug link URL.
func runChildEmulator(dir string) {
	e, err := emulator.Start(emulator.Options{StateDir: dir, DebugLink: true})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println(e.Addr().Port, e.DebugURL())
	select {}
}

// testContext is a generous bound so that a broken test fails instead of
// hanging; no assertion depends on it.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func startEmulator(t *testing.T, seed string) *emulator.Emulator {
	t.Helper()
	e, err := emulator.Start(emulator.Options{StateDir: t.TempDir(), DebugLink: true, Rand: emulator.SeededRand(seed)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func connect(t *testing.T, addr string, opts device.ClientOptions) *device.Client {
	t.Helper()
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := device.NewClient(testContext(t), tr, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func failureCode(err error) pb.FailureCode {
	var fe *device.FailureError
	if errors.As(err, &fe) {
		return fe.Code
	}
	return -1
}

func TestFeaturesAndPingOverUDP(t *testing.T) {
	e := startEmulator(t, "features")
	ctx := testContext(t)
	c := connect(t, e.Addr().String(), device.ClientOptions{Name: "emu-test"})
	f, err := c.Features(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(f, e.Device().Features()) || f.DeviceId != e.Store().Identity().DeviceID() || !f.Emulator {
		t.Errorf("features %v", f)
	}
	if init := c.Init(); init.FramingVersion != 1 || init.CID != c.Channel() {
		t.Errorf("init response %+v", init)
	}
	for _, msg := range []string{"", "hello", strings.Repeat("long ", 1000)} {
		got, err := c.Ping(ctx, device.PingRequest{Message: msg})
		if err != nil || got != msg {
			t.Errorf("ping %d bytes: %v", len(msg), err)
		}
	}
}

func TestButtonFlowThroughDebugLink(t *testing.T) {
	e := startEmulator(t, "buttons")
	ctx := testContext(t)
	var asked atomic.Int32
	c := connect(t, e.Addr().String(), device.ClientOptions{
		OnButton: func(ctx context.Context, req *pb.ButtonRequest) error {
			if req.Code != pb.ButtonRequestCode_BUTTON_REQUEST_CONFIRM_ACTION {
				t.Errorf("button request %v", req.Code)
			}
			asked.Add(1)
			return nil
		},
	})
	dl := debuglink.New(e.DebugURL())
	message := strings.Repeat("Please confirm this ping on the device. ", 5)

	done := make(chan error, 1)
	go func() {
		_, err := c.Ping(ctx, device.PingRequest{Message: message, ButtonProtection: true})
		done <- err
	}()
	s, err := dl.WaitFor(ctx, func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindPrompt })
	if err != nil {
		t.Fatal(err)
	}
	if s.Title != "Confirm ping" || s.Page != 1 || s.Pages < 2 || s.Has(debuglink.Confirm) || !s.Has(debuglink.Next) || len(s.Lines) != emulator.BodyRows {
		t.Errorf("prompt screen %+v", s)
	}
	if n := strings.Count(strings.ReplaceAll(s.Text, "\n", " "), "Please confirm this ping on the device."); n != 5 {
		t.Errorf("screen text %q holds the message %d times, want 5", s.Text, n)
	}
	if _, err := dl.Press(ctx, debuglink.Confirm); err == nil {
		t.Error("confirm on the first page was accepted")
	} else if de := new(debuglink.Error); !errors.As(err, &de) || de.Status != 409 {
		t.Errorf("confirm on the first page: %v", err)
	}
	png1, err := dl.Screenshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(png1))
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != emulator.ScreenshotWidth || b.Dy() != emulator.ScreenshotHeight {
		t.Errorf("screenshot is %dx%d, want %dx%d", b.Dx(), b.Dy(), emulator.ScreenshotWidth, emulator.ScreenshotHeight)
	}
	if os.Getenv("OPENCUSTODY_SCREENSHOT") != "" {
		os.WriteFile(os.Getenv("OPENCUSTODY_SCREENSHOT"), png1, 0o644)
	}
	if s, err = dl.ConfirmAll(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Kind != debuglink.KindHome {
		t.Errorf("after confirm: %q screen", s.Kind)
	}
	if err := <-done; err != nil {
		t.Fatalf("confirmed ping: %v", err)
	}
	if asked.Load() != 1 {
		t.Errorf("OnButton called %d times", asked.Load())
	}

	// Rejected.
	go func() {
		_, err := c.Ping(ctx, device.PingRequest{Message: "no", ButtonProtection: true})
		done <- err
	}()
	if _, err := dl.WaitFor(ctx, func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindPrompt }); err != nil {
		t.Fatal(err)
	}
	if _, err := dl.Press(ctx, debuglink.Reject); err != nil {
		t.Fatal(err)
	}
	if err := <-done; failureCode(err) != pb.FailureCode_FAILURE_ACTION_REJECTED || !strings.Contains(err.Error(), "device ") {
		t.Errorf("rejected ping: %v", err)
	}
}

func TestCancel(t *testing.T) {
	e := startEmulator(t, "cancel")
	ctx := testContext(t)
	c := connect(t, e.Addr().String(), device.ClientOptions{})
	dl := debuglink.New(e.DebugURL())
	waitPrompt := func() {
		t.Helper()
		if _, err := dl.WaitFor(ctx, func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindPrompt }); err != nil {
			t.Fatal(err)
		}
	}

	done := make(chan error, 1)
	go func() {
		_, err := c.Ping(ctx, device.PingRequest{Message: "cancel me", ButtonProtection: true})
		done <- err
	}()
	waitPrompt()
	if err := c.Cancel(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; failureCode(err) != pb.FailureCode_FAILURE_ACTION_CANCELLED {
		t.Fatalf("cancelled ping: %v", err)
	}
	if s, _ := dl.Screen(ctx); s.Kind != debuglink.KindHome {
		t.Errorf("after cancel: %q screen", s.Kind)
	}

	// A context ending while the device waits cancels the request, and
	// the next request still works.
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		_, err := c.Ping(cctx, device.PingRequest{Message: "abandon me", ButtonProtection: true})
		done <- err
	}()
	waitPrompt()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned ping: %v", err)
	}
	if _, err := c.Features(ctx); err != nil {
		t.Fatalf("features after an abandoned request: %v", err)
	}
	if s, _ := dl.Screen(ctx); s.Kind != debuglink.KindHome {
		t.Errorf("after abandon: %q screen", s.Kind)
	}
}

func TestRulesThroughDebugLink(t *testing.T) {
	e := startEmulator(t, "rules")
	ctx := testContext(t)
	c := connect(t, e.Addr().String(), device.ClientOptions{})
	dl := debuglink.New(e.DebugURL())
	rules := []debuglink.Rule{{Pattern: "(?i)refuse", Action: "reject"}, {Pattern: "Confirm ping", Action: "confirm"}}
	if err := dl.SetRules(ctx, rules); err != nil {
		t.Fatal(err)
	}
	if got, err := dl.Rules(ctx); err != nil || len(got) != 2 || got[0] != rules[0] {
		t.Errorf("rules %v %v", got, err)
	}
	if _, err := c.Ping(ctx, device.PingRequest{Message: strings.Repeat("auto ", 100), ButtonProtection: true}); err != nil {
		t.Errorf("auto-confirmed ping: %v", err)
	}
	if _, err := c.Ping(ctx, device.PingRequest{Message: "Refuse this", ButtonProtection: true}); failureCode(err) != pb.FailureCode_FAILURE_ACTION_REJECTED {
		t.Errorf("auto-rejected ping: %v", err)
	}
	if err := dl.SetRules(ctx, []debuglink.Rule{{Pattern: "(", Action: "confirm"}}); err == nil {
		t.Error("a bad pattern was accepted")
	}
	if err := dl.SetRules(ctx, []debuglink.Rule{{Pattern: "x", Action: "next"}}); err == nil {
		t.Error("a bad action was accepted")
	}
	if err := dl.SetRules(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

func TestSeveralEmulatorsAndDiscovery(t *testing.T) {
	ctx := testContext(t)
	var ports []int
	ids := map[string]bool{}
	for i := range 3 {
		e := startEmulator(t, fmt.Sprint("several ", i))
		ports = append(ports, e.Addr().Port)
		ids[e.Store().Identity().DeviceID()] = true
		c := connect(t, e.Addr().String(), device.ClientOptions{})
		if f, err := c.Features(ctx); err != nil || f.DeviceId != e.Store().Identity().DeviceID() {
			t.Errorf("emulator %d: %v %v", i, f, err)
		}
	}
	if len(ids) != 3 {
		t.Errorf("emulators share identities: %v", ids)
	}
	dead := freeUDPPort(t)
	d, err := device.Discover(ctx, device.DiscoverRequest{EmulatorPorts: append([]int{dead}, ports...)})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, info := range d.Devices {
		if info.Kind == device.KindEmulator {
			got = append(got, info.ID)
			if r, err := device.Resolve(ctx, info.ID); err != nil || r != info {
				t.Errorf("Resolve(%s) = %+v, %v", info.ID, r, err)
			}
			if r, err := device.Resolve(ctx, info.Path); err != nil || r != info {
				t.Errorf("Resolve(%s) = %+v, %v", info.Path, r, err)
			}
		}
	}
	want := []string{"emu-" + strconv.Itoa(ports[0]), "emu-" + strconv.Itoa(ports[1]), "emu-" + strconv.Itoa(ports[2])}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("discovered %v, want %v", got, want)
	}
	if d.USB.Devices == 0 && d.USB.Note == "" {
		t.Error("no USB devices and no note saying why")
	}
	if err := device.ProbeUDP(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(dead))); err == nil {
		t.Error("probe of a dead port succeeded")
	}
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// TestGarbageDatagrams sends the emulator datagrams of every size with
// random content, and reports that break the framing rules, then checks
// that it still serves a client.
func TestGarbageDatagrams(t *testing.T) {
	e := startEmulator(t, "garbage")
	ctx := testContext(t)
	// A long silence timeout is also a long retry budget for CHANNEL_BUSY,
	// which the garbage causes until the device's reassembly timeout.
	generous := device.ClientOptions{SilenceTimeout: 30 * time.Second}
	c := connect(t, e.Addr().String(), generous)
	conn, err := net.DialUDP("udp", nil, e.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		n := i % 130
		if i%3 == 0 {
			n = 64
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rnd.Uint32())
		}
		if n >= 5 && i%2 == 0 {
			// Aim at the client's channel so the reassembler is busy.
			cid := c.Channel()
			b[0], b[1], b[2], b[3] = byte(cid>>24), byte(cid>>16), byte(cid>>8), byte(cid)
		}
		conn.Write(b)
	}
	conn.Write([]byte(device.LivenessPing[:4]))
	// The liveness ping still works, and so does the protocol (a message
	// the garbage left half-way may need the reassembly timeout first).
	if err := device.ProbeUDP(ctx, e.Addr().String()); err != nil {
		t.Fatalf("probe after garbage: %v", err)
	}
	c2 := connect(t, e.Addr().String(), generous)
	if _, err := c2.Features(ctx); err != nil {
		t.Fatalf("features after garbage: %v", err)
	}
	if _, err := c.Features(ctx); err != nil {
		t.Fatalf("features on the garbled channel: %v", err)
	}
}

// TestClientSurvivesGarbage answers a client with garbage: every request
// must end with an error, never a panic or a hang.
func TestClientSurvivesGarbage(t *testing.T) {
	ctx := testContext(t)
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// A fake device that allocates a channel properly, then answers every
	// report with random datagrams, some of them on the right channel.
	go func() {
		rnd := rand.New(rand.NewPCG(3, 4))
		buf := make([]byte, 2048)
		for {
			n, addr, err := srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if n == 64 && buf[4] == 0x86 && buf[0] == 0xff {
				resp := make([]byte, 64)
				copy(resp, []byte{0xff, 0xff, 0xff, 0xff, 0x86, 0, 17})
				copy(resp[7:15], buf[7:15])
				copy(resp[15:], []byte{0, 0, 0, 7, 1, 0, 1, 0, 0})
				srv.WriteToUDP(resp, addr)
				continue
			}
			for i := range 20 {
				b := make([]byte, []int{64, 64, 64, 3, 65, 0}[i%6])
				for j := range b {
					b[j] = byte(rnd.Uint32())
				}
				if len(b) == 64 && i%2 == 0 {
					copy(b, []byte{0, 0, 0, 7})
				}
				srv.WriteToUDP(b, addr)
			}
		}
	}()
	c := connect(t, srv.LocalAddr().String(), device.ClientOptions{SilenceTimeout: 300 * time.Millisecond})
	for range 10 {
		if _, err := c.Features(ctx); err == nil {
			t.Fatal("garbage was taken for features")
		}
	}
}

// TestEmulatorKilled kills an emulator process with SIGKILL while the
// client waits for its user: the client must fail with a clear error once
// the device has been silent for the silence timeout, not hang.
func TestEmulatorKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a subprocess")
	}
	ctx := testContext(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		t.Fatal("child emulator said nothing")
	}
	var port int
	var debugURL string
	if _, err := fmt.Sscan(sc.Text(), &port, &debugURL); err != nil {
		t.Fatalf("child emulator said %q", sc.Text())
	}
	c := connect(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), device.ClientOptions{SilenceTimeout: 2 * time.Second})
	if _, err := c.Features(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Ping(ctx, device.PingRequest{Message: "about to die", ButtonProtection: true})
		done <- err
	}()
	dl := debuglink.New(debugURL)
	if _, err := dl.WaitFor(ctx, func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindPrompt }); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Kill()
	err = <-done
	if !errors.Is(err, device.ErrNoAnswer) {
		t.Fatalf("ping to a killed emulator: %v, want ErrNoAnswer", err)
	}
	// The next request fails too, without hanging: either silence, or
	// the socket error the kernel reports for the dead port.
	if _, err := c.Features(ctx); err == nil {
		t.Fatal("features from a killed emulator")
	}
}

// TestEmulatorClosedMidMessage stops an in-process emulator after it has
// received the first report of a long message.
func TestEmulatorClosedMidMessage(t *testing.T) {
	e := startEmulator(t, "closed")
	ctx := testContext(t)
	c := connect(t, e.Addr().String(), device.ClientOptions{SilenceTimeout: time.Second})
	e.Close()
	_, err := c.Ping(ctx, device.PingRequest{Message: strings.Repeat("x", 5000)})
	if err == nil {
		t.Fatal("ping to a closed emulator succeeded")
	}
	if !errors.Is(err, device.ErrNoAnswer) && !strings.Contains(err.Error(), "refused") {
		t.Errorf("ping to a closed emulator: %v", err)
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	ctx := testContext(t)
	dir := t.TempDir()
	var ids []string
	for range 2 {
		e, err := emulator.Start(emulator.Options{StateDir: dir, Algorithm: emulator.AlgEd25519, Label: "restart"})
		if err != nil {
			t.Fatal(err)
		}
		c := connect(t, e.Addr().String(), device.ClientOptions{})
		f, err := c.Features(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if f.IdentityAlgorithm != pb.Algorithm_ALGORITHM_ED25519 || f.Label != "restart" {
			t.Errorf("features %v", f)
		}
		ids = append(ids, f.DeviceId+" "+fmt.Sprintf("%x", f.IdentityPublicKey))
		c.Close()
		e.Close()
	}
	if ids[0] != ids[1] {
		t.Errorf("identity changed across a restart: %v", ids)
	}
}

func TestPipeTransport(t *testing.T) {
	ctx := testContext(t)
	store, _, err := emulator.OpenStore(emulator.StoreRequest{Dir: t.TempDir(), Rand: emulator.SeededRand("pipe")})
	if err != nil {
		t.Fatal(err)
	}
	d, err := emulator.New(emulator.Config{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	host, dev := device.Pipe()
	served := make(chan error, 1)
	go func() { served <- d.ServeReports(dev) }()
	c, err := device.NewClient(ctx, host, device.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if f, err := c.Features(ctx); err != nil || f.DeviceId != store.Identity().DeviceID() {
		t.Fatalf("features over a pipe: %v %v", f, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Ping(ctx, device.PingRequest{Message: "pipe", ButtonProtection: true})
		done <- err
	}()
	for {
		v, changed := d.View()
		if v.Kind == "prompt" {
			break
		}
		<-changed
	}
	if err := d.Press(emulator.ButtonConfirm); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-served; err != nil {
		t.Errorf("ServeReports after close: %v", err)
	}
	if _, err := host.Write(make([]byte, 64)); !errors.Is(err, device.ErrClosed) {
		t.Errorf("write after close: %v", err)
	}
	if _, err := dev.Read(make([]byte, 64)); !errors.Is(err, device.ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
	h2, _ := device.Pipe()
	if _, err := h2.Write(make([]byte, 63)); err == nil {
		t.Error("a 63-byte report was written")
	}
}

// TestConcurrentHosts has several hosts, each with its own socket and
// channel, send long messages to one emulator at once: the device takes one
// message at a time, refuses the others with CHANNEL_BUSY, and the clients
// retry until every request is answered on the right channel.
func TestConcurrentHosts(t *testing.T) {
	e := startEmulator(t, "concurrent")
	ctx := testContext(t)
	errs := make(chan error, 4)
	for i := range 4 {
		c := connect(t, e.Addr().String(), device.ClientOptions{SilenceTimeout: 30 * time.Second})
		go func() {
			for j := range 20 {
				msg := fmt.Sprintf("host %d request %d %s", i, j, strings.Repeat("x", 300))
				got, err := c.Ping(ctx, device.PingRequest{Message: msg})
				if err != nil {
					errs <- err
					return
				}
				if got != msg {
					errs <- fmt.Errorf("host %d got %q", i, got)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
