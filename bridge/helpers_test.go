package bridge_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/bridge"
	"github.com/opencustodynet/opencustody/emulator"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/apiclient"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// testContext bounds a test so that a broken one fails instead of hanging;
// no assertion depends on it.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds or ctx ends.
func eventually(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// logBuffer collects a bridge's logs for assertions and shows them when
// the test fails.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func newLogs(t *testing.T) (*logBuffer, *slog.Logger) {
	l := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bridge logs:\n%s", l.String())
		}
	})
	return l, slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fastConfig is a bridge configuration that scans and retries often.
func fastConfig(log *slog.Logger, ports ...int) bridge.Config {
	return bridge.Config{
		Name: "desk-test", Version: "test",
		EmulatorPorts: ports, SkipUSB: true,
		ScanInterval: 100 * time.Millisecond,
		// A probe of a stopped emulator fails at once (the port is
		// closed); a long timeout only keeps a loaded machine from
		// losing a running one.
		ProbeTimeout: 5 * time.Second,
		Backoff:      bridge.Backoff{Min: 50 * time.Millisecond, Max: 500 * time.Millisecond},
		Logger:       log,
	}
}

// runningBridge is a bridge whose Run goroutine the test stops.
type runningBridge struct {
	*bridge.Bridge
	t      *testing.T
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func runBridge(t *testing.T, cfg bridge.Config) *runningBridge {
	t.Helper()
	b, err := bridge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningBridge{Bridge: b, t: t, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- b.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

// stop ends Run and checks that it returned cleanly.
func (r *runningBridge) stop() {
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				r.t.Errorf("Run: %v", err)
			}
		case <-time.After(time.Minute):
			r.t.Error("Run did not return after its context ended")
		}
	})
}

func (r *runningBridge) device(id string) (bridge.DeviceStatus, bool) {
	for _, d := range r.Status().Devices {
		if d.ID == id {
			return d, true
		}
	}
	return bridge.DeviceStatus{}, false
}

// hsmdEnv is a real hsmd on loopback: a core with a software identity key
// and authenticated SQLite records, TLS with a pinned certificate, tokens.
// It can be stopped and started again on the same address, with the same
// certificate and tokens.
type hsmdEnv struct {
	t    *testing.T
	core *core.Core
	dir  string
	addr string
	srv  *hsmd.Server
	done chan error
}

func newHSMD(t *testing.T) *hsmdEnv {
	t.Helper()
	key, err := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ECDSA_P256, nil)
	if err != nil {
		t.Fatal(err)
	}
	db, err := records.OpenSQLite(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	auth, err := records.NewSoftHMAC(bytes.Repeat([]byte{0x5a}, 32))
	if err != nil {
		t.Fatal(err)
	}
	cr, err := core.New(core.Config{Identity: key, Devices: hsmd.DeviceStore{Records: records.New(db, auth)}})
	if err != nil {
		t.Fatal(err)
	}
	e := &hsmdEnv{t: t, core: cr, dir: filepath.Join(t.TempDir(), "hsmd"), addr: "127.0.0.1:0"}
	e.start()
	t.Cleanup(e.stop)
	return e
}

func (e *hsmdEnv) start() {
	e.t.Helper()
	srv, err := hsmd.New(hsmd.Config{Core: e.core, Dir: e.dir, Version: "test", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		e.t.Fatal(err)
	}
	var l net.Listener
	for tries := 0; ; tries++ {
		if l, err = net.Listen("tcp", e.addr); err == nil {
			break
		}
		if tries == 100 {
			e.t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // the old listener's socket may linger
	}
	e.addr = l.Addr().String()
	e.srv, e.done = srv, make(chan error, 1)
	go func() { e.done <- srv.Serve(context.Background(), l) }()
}

func (e *hsmdEnv) stop() {
	if e.srv == nil {
		return
	}
	e.srv.Stop()
	if err := <-e.done; err != nil {
		e.t.Errorf("hsmd Serve: %v", err)
	}
	e.srv = nil
}

func (e *hsmdEnv) options(tokenPath string) apiclient.Options {
	e.t.Helper()
	token, err := hsmd.ReadToken(tokenPath)
	if err != nil {
		e.t.Fatal(err)
	}
	return apiclient.Options{Address: e.addr, CertFingerprint: e.srv.CertFingerprint(), Token: token}
}

// bridgeOptions are what a bridge needs to dial this hsmd.
func (e *hsmdEnv) bridgeOptions() apiclient.Options {
	bt, _ := e.srv.TokenPaths()
	return e.options(bt)
}

// devices lists hsmd's devices through the operator API; nil while hsmd
// cannot answer.
func (e *hsmdEnv) devices(ctx context.Context) []*apipb.Device {
	if e.srv == nil {
		return nil
	}
	_, ot := e.srv.TokenPaths()
	conn, err := apiclient.Dial(e.options(ot))
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	res, err := apipb.NewOperatorClient(conn).ListDevices(ctx, &apipb.ListDevicesRequest{})
	if err != nil {
		return nil
	}
	return res.GetDevices()
}

// connected returns the devices hsmd sees connected, by id.
func (e *hsmdEnv) connected(ctx context.Context) map[string]*apipb.Device {
	out := map[string]*apipb.Device{}
	for _, d := range e.devices(ctx) {
		if d.GetConnected() {
			out[d.GetId()] = d
		}
	}
	return out
}

// startEmulator starts an emulator with its state in dir on a UDP port of
// loopback (0: any free port).
func startEmulator(t *testing.T, dir string, port int) *emulator.Emulator {
	t.Helper()
	var e *emulator.Emulator
	var err error
	for tries := 0; ; tries++ {
		if e, err = emulator.Start(emulator.Options{StateDir: dir, Port: port}); err == nil {
			break
		}
		if tries == 50 {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // a restarted emulator's port may linger
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// fakeHSMD is a Relay server that lets a test play hsmd: it records what
// the bridge sends and sends what the test gives it. It stops reading the
// stream while paused, as a stalled hsmd would.
type fakeHSMD struct {
	apipb.UnimplementedRelayServer
	addr       string
	fromBridge chan *apipb.BridgeMessage
	toBridge   chan *apipb.CoreMessage
	ended      chan error // the stream's receive error when it ends

	mu     sync.Mutex
	resume chan struct{} // closed while not paused
}

func startFakeHSMD(t *testing.T) *fakeHSMD {
	t.Helper()
	f := &fakeHSMD{
		fromBridge: make(chan *apipb.BridgeMessage, 4096),
		toBridge:   make(chan *apipb.CoreMessage),
		ended:      make(chan error, 16),
		resume:     make(chan struct{}),
	}
	close(f.resume)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	srv := grpc.NewServer()
	apipb.RegisterRelayServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return f
}

// conn is a client connection to the fake, for Config.Conn.
func (f *fakeHSMD) conn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (f *fakeHSMD) pause() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resume = make(chan struct{})
}

func (f *fakeHSMD) unpause() {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.resume)
}

func (f *fakeHSMD) waitUnpaused(ctx context.Context) {
	f.mu.Lock()
	ch := f.resume
	f.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

func (f *fakeHSMD) Connect(s apipb.Relay_ConnectServer) error {
	ctx := s.Context()
	hello, err := s.Recv()
	if err != nil {
		return err
	}
	f.fromBridge <- hello
	if err := s.Send(&apipb.CoreMessage{Msg: &apipb.CoreMessage_Hello{Hello: &apipb.CoreHello{HsmFingerprint: "fake"}}}); err != nil {
		return err
	}
	recvErr := make(chan error, 1)
	go func() {
		for {
			f.waitUnpaused(ctx)
			m, err := s.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case f.fromBridge <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case m := <-f.toBridge:
			if err := s.Send(m); err != nil {
				return err
			}
		case err := <-recvErr:
			f.ended <- err
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// send gives hsmd's frame for ref to the bridge.
func (f *fakeHSMD) send(t *testing.T, ctx context.Context, ref string, env []byte) {
	t.Helper()
	select {
	case f.toBridge <- &apipb.CoreMessage{Msg: &apipb.CoreMessage_Frame{Frame: &apipb.DeviceFrame{Ref: ref, Envelope: env}}}:
	case <-ctx.Done():
		t.Fatalf("sending a frame to the bridge: %v", ctx.Err())
	}
}

// expect returns the next message from the bridge that match accepts,
// skipping others.
func (f *fakeHSMD) expect(t *testing.T, ctx context.Context, what string, match func(*apipb.BridgeMessage) bool) *apipb.BridgeMessage {
	t.Helper()
	for {
		select {
		case m := <-f.fromBridge:
			if match(m) {
				return m
			}
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		}
	}
}

// poll returns the first message from the bridge that match accepts among
// those already received, or nil; it skips the others.
func (f *fakeHSMD) poll(match func(*apipb.BridgeMessage) bool) *apipb.BridgeMessage {
	for {
		select {
		case m := <-f.fromBridge:
			if match(m) {
				return m
			}
		default:
			return nil
		}
	}
}

// expectFrame returns the message in the next frame from ref.
func (f *fakeHSMD) expectFrame(t *testing.T, ctx context.Context, ref string) proto.Message {
	t.Helper()
	m := f.expect(t, ctx, "a frame from "+ref, func(m *apipb.BridgeMessage) bool { return m.GetFrame().GetRef() == ref })
	env, err := protocol.DecodeEnvelope(m.GetFrame().GetEnvelope())
	if err != nil {
		t.Fatalf("frame from %s: %v", ref, err)
	}
	return protocol.Unwrap(env)
}

func encode(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := protocol.EncodeEnvelope(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitScreen waits until the emulator shows a screen of kind.
func waitScreen(t *testing.T, ctx context.Context, d *emulator.Device, kind string) {
	t.Helper()
	for {
		v, changed := d.View()
		if v.Kind == kind {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("no %s screen: %v", kind, ctx.Err())
		}
	}
}
