package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/bridge"
	"github.com/opencustodynet/opencustody/device"
	"github.com/opencustodynet/opencustody/emulator"
	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// Devices found by the bridge show up in hsmd's device list: attached,
// unpaired, with the fingerprint of their identity key.
func TestDevicesAreAnnouncedToHSMD(t *testing.T) {
	ctx := testContext(t)
	h := newHSMD(t)
	e1 := startEmulator(t, t.TempDir(), 0)
	e2 := startEmulator(t, t.TempDir(), 0)
	_, log := newLogs(t)
	cfg := fastConfig(log, e1.Addr().Port, e2.Addr().Port)
	cfg.HSMD = h.bridgeOptions()
	b := runBridge(t, cfg)

	want := map[string]string{} // device id → fingerprint
	for _, e := range []*emulator.Emulator{e1, e2} {
		id := e.Store().Identity()
		want[id.DeviceID()] = signed.Fingerprint(id.Algorithm, id.PublicKey())
	}
	eventually(t, ctx, "hsmd lists both emulators", func() bool { return len(h.connected(ctx)) == 2 })
	for id, d := range h.connected(ctx) {
		if want[id] == "" || d.GetFingerprint() != want[id] || d.GetState() != apipb.DeviceState_DEVICE_STATE_UNPAIRED ||
			d.GetBridge() != "desk-test" || !d.GetEmulator() {
			t.Errorf("hsmd lists %v", d)
		}
	}

	st := b.Status()
	if !st.HSMD.Connected || st.HSMD.HSMFingerprint != h.core.HSMFingerprint() || st.HSMD.Connections != 1 || st.HSMD.Address != h.addr {
		t.Errorf("hsmd status %+v", st.HSMD)
	}
	if len(st.Devices) != 2 {
		t.Fatalf("status lists %d devices", len(st.Devices))
	}
	for _, d := range st.Devices {
		if d.State != bridge.StateOpen || !d.Attached || want[d.DeviceID] == "" || d.Kind != device.KindEmulator || d.Attaches != 1 {
			t.Errorf("device status %+v", d)
		}
	}
}

// The bridge reconnects to an hsmd that went away and came back on the
// same address, and announces its devices again.
func TestReconnectsToHSMD(t *testing.T) {
	ctx := testContext(t)
	h := newHSMD(t)
	e := startEmulator(t, t.TempDir(), 0)
	id := e.Store().Identity().DeviceID()
	logs, log := newLogs(t)
	cfg := fastConfig(log, e.Addr().Port)
	cfg.HSMD = h.bridgeOptions()
	b := runBridge(t, cfg)
	eventually(t, ctx, "hsmd lists the emulator", func() bool { return h.connected(ctx)[id] != nil })

	h.stop()
	eventually(t, ctx, "the bridge notices hsmd is gone", func() bool { return !b.Status().HSMD.Connected })
	ref := fmt.Sprintf("emu-%d", e.Addr().Port)
	if d, _ := b.device(ref); d.State != bridge.StateOpen || d.Attached {
		t.Errorf("while hsmd is away, the device is %+v", d)
	}
	eventually(t, ctx, "a failed attempt", func() bool { return b.Status().HSMD.FailedAttempts > 1 })

	h.start()
	eventually(t, ctx, "hsmd lists the emulator again", func() bool { return h.connected(ctx)[id] != nil })
	st := b.Status()
	if !st.HSMD.Connected || st.HSMD.Connections != 2 || st.HSMD.Reconnects != 1 || st.HSMD.FailedAttempts != 0 {
		t.Errorf("after reconnecting, hsmd status %+v", st.HSMD)
	}
	if d, _ := b.device(ref); !d.Attached || d.Attaches != 1 {
		t.Errorf("after reconnecting, the device is %+v (it should be announced again, not reopened)", d)
	}
	if n := strings.Count(logs.String(), "connecting to hsmd"); n < 3 {
		t.Errorf("%d connection attempts logged, want every one", n)
	}
}

// An emulator that stops is detached (its liveness probe fails), and
// attached again when it comes back. One that discovery misses but that
// still answers stays attached.
func TestEmulatorGoesAndComesBack(t *testing.T) {
	ctx := testContext(t)
	h := newHSMD(t)
	dir := t.TempDir()
	e := startEmulator(t, dir, 0)
	port, id := e.Addr().Port, e.Store().Identity().DeviceID()
	ref := fmt.Sprintf("emu-%d", port)
	_, log := newLogs(t)
	cfg := fastConfig(log, port)
	cfg.HSMD = h.bridgeOptions()
	var missed atomic.Bool
	var scans atomic.Int64
	cfg.Discover = func(ctx context.Context) (*device.Discovery, error) {
		scans.Add(1)
		if missed.Load() {
			return &device.Discovery{Devices: []device.Info{}}, nil
		}
		return device.Discover(ctx, device.DiscoverRequest{EmulatorPorts: []int{port}, SkipUSB: true, ProbeTimeout: cfg.ProbeTimeout})
	}
	b := runBridge(t, cfg)
	eventually(t, ctx, "hsmd lists the emulator", func() bool { return h.connected(ctx)[id] != nil })

	// Discovery misses it for a while (a probe lost on a busy machine,
	// say), but it answers the bridge's own probe: it stays.
	missed.Store(true)
	n := scans.Load()
	eventually(t, ctx, "more scans", func() bool { return scans.Load() >= n+5 })
	missed.Store(false)
	if d, _ := b.device(ref); d.State != bridge.StateOpen || !d.Attached || d.Attaches != 1 {
		t.Errorf("emulator missed by discovery: %+v", d)
	}

	e.Close()
	eventually(t, ctx, "hsmd no longer lists the emulator", func() bool { return h.connected(ctx)[id] == nil })
	d, _ := b.device(ref)
	if d.State != bridge.StateGone || d.Attached || !strings.Contains(d.LastError, "no longer found") {
		t.Errorf("stopped emulator: %+v", d)
	}

	startEmulator(t, dir, port)
	eventually(t, ctx, "hsmd lists the emulator again", func() bool { return h.connected(ctx)[id] != nil })
	if d, _ := b.device(ref); d.State != bridge.StateOpen || !d.Attached || d.Attaches != 2 || d.LastError != "" {
		t.Errorf("restarted emulator: %+v", d)
	}
}

// Frames go both ways as they come: a request's answer, an answer that
// waits for the device's user, the answer to a Cancel. Frame contents are
// never logged. A clean shutdown detaches the devices and closes the
// stream.
func TestRelaysFramesBothWays(t *testing.T) {
	ctx := testContext(t)
	f := startFakeHSMD(t)
	dir := t.TempDir()
	e := startEmulator(t, dir, 0)
	port := e.Addr().Port
	ref := fmt.Sprintf("emu-%d", port)
	logs, log := newLogs(t)
	cfg := fastConfig(log, port)
	cfg.Conn = f.conn(t)
	b := runBridge(t, cfg)

	hello := f.expect(t, ctx, "BridgeHello", func(m *apipb.BridgeMessage) bool { return m.GetHello() != nil }).GetHello()
	if hello.GetBridgeName() != "desk-test" || hello.GetVersion() != "test" {
		t.Errorf("hello %v", hello)
	}
	att := f.expect(t, ctx, "DeviceAttached", func(m *apipb.BridgeMessage) bool { return m.GetAttached() != nil }).GetAttached()
	if att.GetRef() != ref || att.GetTransport() != "udp" || att.GetPath() != fmt.Sprintf("udp://127.0.0.1:%d", port) {
		t.Errorf("attached %v", att)
	}
	env, err := protocol.DecodeEnvelope(att.GetFeatures())
	if err != nil || env.GetFeatures_().GetDeviceId() != e.Store().Identity().DeviceID() {
		t.Fatalf("announced features %v, %v", env, err)
	}

	// A plain request and its answer.
	f.send(t, ctx, ref, encode(t, &pb.GetFeatures{}))
	if m, ok := f.expectFrame(t, ctx, ref).(*pb.Features); !ok || m.GetDeviceId() != e.Store().Identity().DeviceID() {
		t.Fatalf("GetFeatures answered %v", m)
	}

	// A request that waits for the user: hsmd, not the bridge, answers
	// the ButtonRequest, and the final answer comes when the user acts.
	const marker = "relay-marker-5ca1ab1e"
	f.send(t, ctx, ref, encode(t, &pb.Ping{Message: marker, ButtonProtection: true}))
	if m, ok := f.expectFrame(t, ctx, ref).(*pb.ButtonRequest); !ok {
		t.Fatalf("button-protected ping answered %v", m)
	}
	f.send(t, ctx, ref, encode(t, &pb.ButtonAck{}))
	waitScreen(t, ctx, e.Device(), "prompt")
	if err := e.Device().Press(emulator.ButtonConfirm); err != nil {
		t.Fatal(err)
	}
	if m, ok := f.expectFrame(t, ctx, ref).(*pb.Success); !ok || m.GetMessage() != marker {
		t.Fatalf("confirmed ping answered %v", m)
	}

	// A Cancel (in the channel, the bridge could not tell it from any
	// other message) ends a wait; its answer is relayed like any other.
	f.send(t, ctx, ref, encode(t, &pb.Ping{Message: "cancelled", ButtonProtection: true}))
	f.expectFrame(t, ctx, ref)
	f.send(t, ctx, ref, encode(t, &pb.ButtonAck{}))
	waitScreen(t, ctx, e.Device(), "prompt")
	f.send(t, ctx, ref, encode(t, &pb.Cancel{}))
	if m, ok := f.expectFrame(t, ctx, ref).(*pb.Failure); !ok || m.GetCode() != pb.FailureCode_FAILURE_ACTION_CANCELLED {
		t.Fatalf("cancelled ping answered %v", m)
	}

	// A frame for a device the bridge does not have is dropped; the
	// stream goes on.
	f.send(t, ctx, "no-such-device", encode(t, &pb.GetFeatures{}))
	f.send(t, ctx, ref, encode(t, &pb.GetFeatures{}))
	f.expectFrame(t, ctx, ref)
	eventually(t, ctx, "frame counters", func() bool {
		d, _ := b.device(ref)
		return d.FramesToDevice == 7 && d.FramesToHSMD == 6
	})

	if strings.Contains(logs.String(), marker) {
		t.Error("the logs hold a frame's contents")
	}

	// The emulator stops: DeviceDetached.
	e.Close()
	det := f.expect(t, ctx, "DeviceDetached", func(m *apipb.BridgeMessage) bool { return m.GetDetached() != nil }).GetDetached()
	if det.GetRef() != ref || det.GetReason() != bridge.ReasonGone {
		t.Errorf("detached %v", det)
	}

	// It comes back; then the bridge stops cleanly.
	startEmulator(t, dir, port)
	f.expect(t, ctx, "DeviceAttached again", func(m *apipb.BridgeMessage) bool { return m.GetAttached().GetRef() == ref })
	b.stop()
	det = f.expect(t, ctx, "DeviceDetached on shutdown", func(m *apipb.BridgeMessage) bool { return m.GetDetached() != nil }).GetDetached()
	if det.GetRef() != ref || det.GetReason() != bridge.ReasonShutdown {
		t.Errorf("detached on shutdown %v", det)
	}
	select {
	case err := <-f.ended:
		if !errors.Is(err, io.EOF) {
			t.Errorf("stream ended with %v, want the bridge closing its side", err)
		}
	case <-ctx.Done():
		t.Fatal("the stream did not end")
	}
}

// scriptedDevice plays a device on one end of a pipe: it allocates a
// channel and answers GetFeatures, then runs then (which may stop reading
// or send messages of its own).
func scriptedDevice(t *testing.T, dev device.Transport, then func(send func(data []byte) error)) {
	const cid = 0x0c0ffee0
	send := func(cid uint32, cmd framing.Command, data []byte) error {
		reports, err := framing.Fragment(cid, cmd, data)
		if err != nil {
			return err
		}
		for _, r := range reports {
			if _, err := dev.Write(r); err != nil {
				return err
			}
		}
		return nil
	}
	features := encode(t, &pb.Features{Vendor: "test", Model: "scripted", DeviceId: "00112233deadbeef", ProtocolVersionMin: protocol.Version, ProtocolVersionMax: protocol.Version})
	go func() {
		buf := make([]byte, framing.ReportSize)
		var reasm framing.Reassembler
		for {
			n, err := dev.Read(buf)
			if err != nil {
				return
			}
			m, err := reasm.Push(buf[:n], time.Now())
			if err != nil || m == nil {
				continue
			}
			switch m.Cmd {
			case framing.CmdInit:
				q, err := framing.ParseInitRequest(m.Data)
				if err != nil {
					return
				}
				resp := framing.InitResponse{Nonce: q.Nonce, CID: cid, FramingVersion: framing.FramingVersion}
				send(framing.BroadcastCID, framing.CmdInit, resp.Marshal())
			case framing.CmdMsg:
				send(cid, framing.CmdMsg, features)
				then(func(data []byte) error { return send(cid, framing.CmdMsg, data) })
				return
			}
		}
	}()
}

// pipeDevices makes the bridge find one scripted device, "pipe-1", while
// present is true.
func pipeDevices(t *testing.T, cfg *bridge.Config, present *atomic.Bool, then func(send func([]byte) error)) {
	cfg.Discover = func(ctx context.Context) (*device.Discovery, error) {
		d := &device.Discovery{}
		if present.Load() {
			d.Devices = []device.Info{{ID: "pipe-1", Kind: device.KindEmulator, Path: "pipe"}}
		}
		return d, nil
	}
	cfg.Open = func(device.Info) (device.Transport, error) {
		host, dev := device.Pipe()
		scriptedDevice(t, dev, then)
		return host, nil
	}
}

// hsmd sending a device frames faster than it takes them gets the device
// dropped once its queue is full; nothing grows without bound.
func TestHSMDFloodingADeviceIsDropped(t *testing.T) {
	ctx := testContext(t)
	f := startFakeHSMD(t)
	logs, log := newLogs(t)
	cfg := fastConfig(log)
	cfg.Conn = f.conn(t)
	cfg.MaxQueue = 8
	cfg.Backoff.Min = time.Hour // no reopening during the test
	var present atomic.Bool
	present.Store(true)
	// The device stops reading after GetFeatures.
	pipeDevices(t, &cfg, &present, func(func([]byte) error) {})
	b := runBridge(t, cfg)
	f.expect(t, ctx, "DeviceAttached", func(m *apipb.BridgeMessage) bool { return m.GetAttached().GetRef() == "pipe-1" })

	frame := encode(t, &pb.GetFeatures{})
	sent := 0
	var det *apipb.DeviceDetached
	for det == nil {
		f.send(t, ctx, "pipe-1", frame)
		sent++
		if d, _ := b.device("pipe-1"); d.QueuedToDevice > cfg.MaxQueue {
			t.Fatalf("%d frames queued for the device, limit %d", d.QueuedToDevice, cfg.MaxQueue)
		}
		det = f.poll(func(m *apipb.BridgeMessage) bool { return m.GetDetached() != nil }).GetDetached()
	}
	present.Store(false)
	if det.GetRef() != "pipe-1" || det.GetReason() != bridge.ReasonFlood {
		t.Errorf("detached %v", det)
	}
	d, _ := b.device("pipe-1")
	if d.State == bridge.StateOpen || !strings.Contains(d.LastError, "hsmd sent more than 8 frames") {
		t.Errorf("flooded device %+v", d)
	}
	if !strings.Contains(logs.String(), "reason=flooded") {
		t.Error("no log says why the device was dropped")
	}
	t.Logf("dropped after %d frames", sent)
}

// A device sending frames faster than hsmd takes them is dropped once its
// queue is full; nothing grows without bound.
func TestDeviceFloodingHSMDIsDropped(t *testing.T) {
	ctx := testContext(t)
	f := startFakeHSMD(t)
	f.pause() // hsmd stops reading after the hello
	logs, log := newLogs(t)
	cfg := fastConfig(log)
	cfg.Conn = f.conn(t)
	cfg.MaxQueue = 8
	cfg.Backoff.Min = time.Hour
	var present atomic.Bool
	present.Store(true)
	junk := make([]byte, 2000) // not an envelope: the bridge does not look
	pipeDevices(t, &cfg, &present, func(send func([]byte) error) {
		for send(junk) == nil {
		}
	})
	b := runBridge(t, cfg)
	eventually(t, ctx, "the device is dropped", func() bool {
		d, _ := b.device("pipe-1")
		if d.QueuedToHSMD > cfg.MaxQueue {
			t.Fatalf("%d frames queued for hsmd, limit %d", d.QueuedToHSMD, cfg.MaxQueue)
		}
		return d.State == bridge.StateFailed
	})
	present.Store(false)
	d, _ := b.device("pipe-1")
	if !strings.Contains(d.LastError, "sent more than 8 frames hsmd has not taken") {
		t.Errorf("flooding device %+v", d)
	}
	if !strings.Contains(logs.String(), "reason=flooded") {
		t.Error("no log says why the device was dropped")
	}
	// hsmd reads again: the device's frames, then DeviceDetached.
	f.unpause()
	det := f.expect(t, ctx, "DeviceDetached", func(m *apipb.BridgeMessage) bool { return m.GetDetached() != nil }).GetDetached()
	if det.GetRef() != "pipe-1" || det.GetReason() != bridge.ReasonFlood {
		t.Errorf("detached %v", det)
	}
}

func TestBackoff(t *testing.T) {
	b := bridge.Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	low := func() float64 { return 0 }
	high := func() float64 { return 0.999999 }
	for _, tc := range []struct {
		n    int
		want time.Duration // before jitter
	}{{1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {4, 800 * time.Millisecond}, {5, time.Second}, {100, time.Second}} {
		if got := b.Delay(tc.n, low); got != tc.want/2 {
			t.Errorf("Delay(%d) with the least jitter = %s, want %s", tc.n, got, tc.want/2)
		}
		if got := b.Delay(tc.n, high); got > tc.want || got < tc.want*99/100 {
			t.Errorf("Delay(%d) with the most jitter = %s, want about %s", tc.n, got, tc.want)
		}
	}
	if got := (bridge.Backoff{}).Delay(1, high); got > 500*time.Millisecond || got < 490*time.Millisecond {
		t.Errorf("default first delay %s", got)
	}
}

func TestNewChecksConfig(t *testing.T) {
	if _, err := bridge.New(bridge.Config{}); err == nil {
		t.Error("New accepted no hsmd")
	}
	if _, err := bridge.New(bridge.Config{HSMD: apiOptions("127.0.0.1:1", "not-a-fingerprint")}); err == nil {
		t.Error("New accepted a bad certificate fingerprint")
	}
}
