package hsmd_test

// End-to-end tests of the approval bridge's device side: a real hsmd in
// ceremony mode with the approval path (SoftHSM2 token with the identity,
// record and custody keys, SQLite records, TLS), a real bridge relaying to
// it, and emulators over UDP on loopback, driven through their debug
// links. The bridge's Open hook puts a tap on every device
// transport: it records every report both ways and, when a test arms it,
// plays a hostile relay.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/wire"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	relaybridge "github.com/opencustodynet/opencustody/bridge"
	"github.com/opencustodynet/opencustody/device"
	"github.com/opencustodynet/opencustody/emulator"
	"github.com/opencustodynet/opencustody/emulator/debuglink"
	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pairing"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// e2eContext bounds a test so that a broken one fails instead of hanging;
// no assertion depends on how long anything takes.
func e2eContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// until polls cond until it returns nil or ctx ends, and fails the test
// with cond's last error then.
func until(t *testing.T, ctx context.Context, what string, cond func() error) {
	t.Helper()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v (%v)", what, err, ctx.Err())
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// emu is an emulator with its debug link, restartable on the same port and
// state directory.
type emu struct {
	t    *testing.T
	dir  string
	port int
	*emulator.Emulator
	dl *debuglink.Client
	id string // device id
}

func startEmu(t *testing.T, dir string, port int) *emu {
	t.Helper()
	e := &emu{t: t, dir: dir, port: port}
	e.start()
	t.Cleanup(func() { e.Close() })
	return e
}

func (e *emu) start() {
	e.t.Helper()
	var err error
	for tries := 0; ; tries++ {
		e.Emulator, err = emulator.Start(emulator.Options{StateDir: e.dir, Port: e.port, DebugLink: true})
		if err == nil {
			break
		}
		if tries == 100 {
			e.t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // the port of a closed emulator may linger
	}
	e.port = e.Addr().Port
	e.dl = debuglink.New(e.DebugURL())
	e.id = e.Store().Identity().DeviceID()
}

// cycle powers the emulator off until h sees it gone, and on again on the
// same port and state: the same device unplugged and plugged in again.
func (w *world) cycle(h *env, e *emu) {
	w.t.Helper()
	e.Close()
	w.waitGone(h, e)
	e.start()
}

// waitGone waits until h no longer sees e connected (an unpaired device is
// then no longer listed at all).
func (w *world) waitGone(h *env, e *emu) {
	w.t.Helper()
	until(w.t, w.ctx, fmt.Sprintf("device %s gone", e.id), func() error {
		ds, err := w.devices(h)
		if err != nil {
			return err
		}
		if ds[e.id].GetConnected() {
			return errors.New("still connected")
		}
		return nil
	})
}

// pin is the HSM key the emulator pinned (its state on disk, as loaded at
// its start and written since).
func (e *emu) pin() *emulator.Pin { return e.Store().Pin() }

// world is one hsmd, one bridge relaying to it, and emulators.
type world struct {
	t    *testing.T
	ctx  context.Context
	hsmd *env
	op   apipb.OperatorClient
	taps *taps
	emus []*emu
	br   *runningBridge

	ops map[*env]apipb.OperatorClient // one connection per hsmd
}

// operator is an operator's client of h.
func (w *world) operator(h *env) apipb.OperatorClient {
	if w.ops[h] == nil {
		w.ops[h] = apipb.NewOperatorClient(h.dial(w.t, "operator"))
	}
	return w.ops[h]
}

func newWorld(t *testing.T, emulators int) *world {
	t.Helper()
	w := &world{t: t, ctx: e2eContext(t), hsmd: startWith(t, true, true), taps: newTaps(t), ops: map[*env]apipb.OperatorClient{}}
	w.op = w.operator(w.hsmd)
	for range emulators {
		w.emus = append(w.emus, startEmu(t, t.TempDir(), 0))
	}
	w.br = w.startBridge(w.hsmd)
	w.waitAttached(w.hsmd, w.emus...)
	return w
}

// runningBridge is a bridge whose Run goroutine the test stops.
type runningBridge struct {
	cancel context.CancelFunc
	done   chan error
}

// startBridge starts a bridge relaying the world's emulators to h.
func (w *world) startBridge(h *env) *runningBridge {
	w.t.Helper()
	return w.startBridgeFor(h, w.emus...)
}

// startBridgeFor starts a bridge relaying emulators es to h.
func (w *world) startBridgeFor(h *env, es ...*emu) *runningBridge {
	w.t.Helper()
	var ports []int
	for _, e := range es {
		ports = append(ports, e.port)
	}
	b, err := relaybridge.New(relaybridge.Config{
		Conn: h.dial(w.t, "bridge"), Name: "desk-e2e", Version: "test",
		EmulatorPorts: ports, SkipUSB: true,
		ScanInterval: 100 * time.Millisecond,
		// A stopped emulator's port refuses the probe at once; the long
		// timeout only keeps a loaded machine from losing a running one.
		ProbeTimeout: 5 * time.Second,
		Backoff:      relaybridge.Backoff{Min: 50 * time.Millisecond, Max: 500 * time.Millisecond},
		Logger:       slog.New(slog.DiscardHandler),
		Open:         w.taps.open,
	})
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningBridge{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- b.Run(ctx) }()
	w.t.Cleanup(r.stop)
	return r
}

func (r *runningBridge) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	<-r.done
}

// devices lists h's devices by id.
func (w *world) devices(h *env) (map[string]*apipb.Device, error) {
	res, err := w.operator(h).ListDevices(w.ctx, &apipb.ListDevicesRequest{})
	if err != nil {
		return nil, err
	}
	out := map[string]*apipb.Device{}
	for _, d := range res.GetDevices() {
		out[d.GetId()] = d
	}
	return out, nil
}

// waitDevice polls h's listing of e until cond accepts it.
func (w *world) waitDevice(h *env, e *emu, what string, cond func(*apipb.Device) error) {
	w.t.Helper()
	until(w.t, w.ctx, fmt.Sprintf("device %s: %s", e.id, what), func() error {
		ds, err := w.devices(h)
		if err != nil {
			return err
		}
		d := ds[e.id]
		if d == nil {
			return errors.New("not listed")
		}
		return cond(d)
	})
}

func (w *world) waitAttached(h *env, es ...*emu) {
	w.t.Helper()
	for _, e := range es {
		w.waitDevice(h, e, "attached", func(d *apipb.Device) error {
			if !d.GetConnected() {
				return errors.New("not connected")
			}
			return nil
		})
	}
}

// waitChannel waits until h lists e as paired with its channel up (or
// down, for up false).
func (w *world) waitChannel(h *env, e *emu, up bool) {
	w.t.Helper()
	w.waitDevice(h, e, fmt.Sprintf("channel up = %v", up), func(d *apipb.Device) error {
		if d.GetState() != apipb.DeviceState_DEVICE_STATE_PAIRED || !d.GetConnected() || d.GetChannel() != up {
			return fmt.Errorf("listed %v", d)
		}
		return nil
	})
}

// pairRun is an operator's pairing call in progress.
type pairRun struct {
	stream apipb.Operator_PairClient
	code   *apipb.PairCode
}

// startPair starts pairing e for user and waits for the code.
func (w *world) startPair(h *env, e *emu, user string, role apipb.Role) (*pairRun, error) {
	stream, err := w.operator(h).Pair(w.ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&apipb.PairClientMessage{Msg: &apipb.PairClientMessage_Start{Start: &apipb.PairStart{DeviceId: e.id, User: user, Role: role}}}); err != nil {
		return nil, err
	}
	m, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	if m.GetCode() == nil {
		return nil, fmt.Errorf("first answer %v, want the code", m)
	}
	return &pairRun{stream: stream, code: m.GetCode()}, nil
}

// decide sends the operator's decision and returns the pairing's result.
func (p *pairRun) decide(confirmed bool) (*apipb.PairResult, error) {
	if err := p.stream.Send(&apipb.PairClientMessage{Msg: &apipb.PairClientMessage_Decision{Decision: &apipb.PairDecision{Confirmed: confirmed}}}); err != nil {
		return nil, err
	}
	m, err := p.stream.Recv()
	if err != nil {
		return nil, err
	}
	return m.GetResult(), nil
}

// pairingScreen waits for e's pairing screen.
func (w *world) pairingScreen(e *emu) *debuglink.Screen {
	w.t.Helper()
	s, err := e.dl.WaitFor(w.ctx, func(s *debuglink.Screen) bool {
		return s.Kind == debuglink.KindPrompt && s.Title == "Pair with HSM"
	})
	if err != nil {
		w.t.Fatalf("device %s: no pairing screen: %v", e.id, err)
	}
	return s
}

// pair pairs e with h as an honest operator and user do: the code and the
// HSM fingerprint on the device are checked against what hsmd says, the
// user confirms, then the operator.
func (w *world) pair(h *env, e *emu, user string, role apipb.Role) *apipb.PairResult {
	w.t.Helper()
	p, err := w.startPair(h, e, user, role)
	if err != nil {
		w.t.Fatalf("pair %s: %v", e.id, err)
	}
	s := w.pairingScreen(e)
	hsmFP := signed.Fingerprint(h.identity.Algorithm(), h.identity.PublicKey())
	if got := s.Fields[emulator.FieldCode]; got != pairing.Display(p.code.GetCode()) {
		w.t.Fatalf("device %s shows code %q, hsmd says %q", e.id, got, p.code.GetCode())
	}
	if s.Fields[emulator.FieldHSMFingerprint] != hsmFP || p.code.GetHsmFingerprint() != hsmFP {
		w.t.Fatalf("HSM fingerprint: device %q, hsmd %q, HSM key %q", s.Fields[emulator.FieldHSMFingerprint], p.code.GetHsmFingerprint(), hsmFP)
	}
	if !strings.Contains(s.Text, "Code: "+pairing.Display(p.code.GetCode())) || !strings.Contains(s.Text, "User: "+user) {
		w.t.Fatalf("pairing screen:\n%s", s.Text)
	}
	if _, err := e.dl.ConfirmAll(w.ctx); err != nil {
		w.t.Fatal(err)
	}
	res, err := p.decide(true)
	if err != nil {
		w.t.Fatalf("pair %s: %v", e.id, err)
	}
	if res.GetDevice().GetId() != e.id || res.GetDevice().GetUser() != user || res.GetDevice().GetRole() != role {
		w.t.Fatalf("paired %v", res.GetDevice())
	}
	return res
}

// wantNothingPaired checks that e pinned nothing and that h stored no
// pairing of it.
func (w *world) wantNothingPaired(h *env, e *emu) {
	w.t.Helper()
	if p := e.pin(); p != nil {
		w.t.Fatalf("device %s pinned %s", e.id, p.Fingerprint())
	}
	ds, err := w.devices(h)
	if err != nil {
		w.t.Fatal(err)
	}
	if d := ds[e.id]; d != nil && d.GetState() != apipb.DeviceState_DEVICE_STATE_UNPAIRED {
		w.t.Fatalf("hsmd stored %v", d)
	}
}

// wantCode checks that a call failed with code and a message holding part.
func wantCode(t *testing.T, err error, code codes.Code, part string) {
	t.Helper()
	if err == nil || status.Code(err) != code || !strings.Contains(err.Error(), part) {
		t.Fatalf("got %v, want %v with %q", err, code, part)
	}
}

// channelFailures reads hsmd's count of secure channels that failed closed
// (core ChannelDown events).
func channelFailures(t *testing.T, h *env) int {
	t.Helper()
	rec := httptest.NewRecorder()
	h.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for l := range strings.SplitSeq(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(l, "opencustody_hsmd_channel_failures_total "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int(n)
		}
	}
	t.Fatal("no channel failure metric")
	return 0
}

// --- Wallets and requests ---

// approverWallet pairs the world's emulators with hsmd as the approvers
// users, in order, waits for their secure channels, and creates the
// wallet name that quorum of them must approve for, returning its
// addresses.
func (w *world) approverWallet(name string, quorum uint32, users ...string) []*apipb.WalletAddress {
	w.t.Helper()
	for i, e := range w.emus {
		w.pair(w.hsmd, e, users[i], apipb.Role_ROLE_APPROVER)
	}
	for _, e := range w.emus {
		w.waitChannel(w.hsmd, e, true)
	}
	return w.wallet(w.hsmd, name, users, quorum)
}

// wallet creates a simnet wallet on h with the approvers and quorum, and
// two addresses; it returns the addresses.
func (w *world) wallet(h *env, name string, approvers []string, quorum uint32) []*apipb.WalletAddress {
	w.t.Helper()
	cust := apipb.NewCustodyClient(h.dial(w.t, "operator"))
	if _, err := cust.CreateWallet(w.ctx, &apipb.CreateWalletRequest{Name: name, Network: "simnet", Approvers: approvers, Quorum: quorum}); err != nil {
		w.t.Fatal(err)
	}
	var addrs []*apipb.WalletAddress
	for range 2 {
		a, err := cust.NewAddress(w.ctx, &apipb.NewAddressRequest{Wallet: name})
		if err != nil {
			w.t.Fatal(err)
		}
		addrs = append(addrs, a.GetAddress())
	}
	return addrs
}

// submit submits a PSBT that spends a coin of the wallet's first address
// (from a made-up transaction: nothing here is broadcast) to a foreign
// address, with change to its second address.
func (w *world) submit(h *env, wallet string, addrs []*apipb.WalletAddress, value int64) *apipb.Request {
	w.t.Helper()
	prev := wire.NewMsgTx(2)
	var coin chainhash.Hash
	rand.Read(coin[:])
	prev.AddTxIn(wire.NewTxIn(wire.NewOutPoint(&coin, 0), nil, nil))
	prev.AddTxOut(wire.NewTxOut(value, p2wpkh(addrs[0].GetPublicKey())))
	req, err := apipb.NewCustodyClient(h.dial(w.t, "operator")).Submit(w.ctx, &apipb.SubmitRequest{Wallet: wallet, Initiator: "operator", Psbt: spend(w.t, prev, 0, p2wpkh(addrs[1].GetPublicKey()))})
	if err != nil {
		w.t.Fatal(err)
	}
	return req
}

// waitRequestState polls h's request until ok accepts it.
func (w *world) waitRequestState(h *env, id string, what string, ok func(*apipb.Request) bool) *apipb.Request {
	w.t.Helper()
	var r *apipb.Request
	until(w.t, w.ctx, "request "+id+": "+what, func() error {
		var err error
		if r, err = apipb.NewCustodyClient(h.dial(w.t, "operator")).GetRequest(w.ctx, &apipb.GetRequestRequest{Id: id}); err != nil {
			return err
		}
		if !ok(r) {
			return fmt.Errorf("state %v, approved by %v, rejected by %v", r.GetState(), r.GetApprovedBy(), r.GetRejectedBy())
		}
		return nil
	})
	return r
}

// waitSignedTx waits for request id to be signed and returns it with its
// signed transaction, decoded.
func (w *world) waitSignedTx(h *env, id string) (*apipb.Request, *wire.MsgTx) {
	w.t.Helper()
	r := w.waitRequestState(h, id, "signed", func(r *apipb.Request) bool {
		return r.GetState() == apipb.RequestState_REQUEST_STATE_SIGNED
	})
	var tx wire.MsgTx
	if err := tx.Deserialize(bytes.NewReader(r.GetSignedTx())); err != nil {
		w.t.Fatal(err)
	}
	return r, &tx
}

// promptScreen waits for e to show the prompt of request id.
func (w *world) promptScreen(e *emu, id string) *debuglink.Screen {
	w.t.Helper()
	s, err := e.dl.WaitFor(w.ctx, func(s *debuglink.Screen) bool {
		return s.Kind == debuglink.KindPrompt && s.Fields[emulator.FieldRequestID] == id
	})
	if err != nil {
		w.t.Fatalf("device %s: no prompt for %s: %v", e.id, id, err)
	}
	return s
}

// --- The tap: recording and hostile relaying ---

// direction of a report through the relay.
type direction int

const (
	toDevice direction = iota
	toHost
)

func (d direction) String() string { return [...]string{"to device", "to host"}[d] }

// attack sees each whole MSG message through a tap while it is armed and
// returns the messages to pass on instead (none to drop it); done disarms
// it. It runs in the relay's goroutines: it must not block for long.
type attack func(dir direction, env []byte) (out [][]byte, done bool)

// taps wraps every transport the bridge opens, by discovery id.
type taps struct {
	t  *testing.T
	mu sync.Mutex // guards everything below
	// reports is every report relayed, per device and direction, in order.
	reports map[string]map[direction][][]byte
	attacks map[string]attack
	opened  map[string]*tap // the transport open now, per device
}

func newTaps(t *testing.T) *taps {
	return &taps{t: t, reports: map[string]map[direction][][]byte{}, attacks: map[string]attack{}, opened: map[string]*tap{}}
}

// open is the bridge's Open hook.
func (ts *taps) open(info device.Info) (device.Transport, error) {
	tr, err := device.Open(info.Path)
	if err != nil {
		return nil, err
	}
	tp := &tap{Transport: tr, ts: ts, id: info.ID}
	ts.mu.Lock()
	ts.opened[info.ID] = tp
	ts.mu.Unlock()
	return tp, nil
}

// arm sets the attack on the device whose discovery id is id.
func (ts *taps) arm(id string, a attack) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.attacks[id] = a
}

func (ts *taps) armed(id string) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.attacks[id] != nil
}

func (ts *taps) record(id string, dir direction, r []byte) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.reports[id] == nil {
		ts.reports[id] = map[direction][][]byte{}
	}
	ts.reports[id][dir] = append(ts.reports[id][dir], bytes.Clone(r))
}

// settle waits until no report has passed through id's tap, either way,
// for quiet: the echoes of one attack (a late Failure, a Cancel) must not
// land in the next one.
func (ts *taps) settle(t *testing.T, id string, quiet time.Duration) {
	t.Helper()
	count := func() int { return len(ts.recorded(id, toDevice)) + len(ts.recorded(id, toHost)) }
	deadline := time.Now().Add(30 * time.Second)
	last, since := count(), time.Now()
	for time.Since(since) < quiet {
		if time.Now().After(deadline) {
			t.Fatalf("device %s: the relay never went quiet", id)
		}
		time.Sleep(quiet / 10)
		if n := count(); n != last {
			last, since = n, time.Now()
		}
	}
}

// recorded returns the reports relayed for id in dir so far.
func (ts *taps) recorded(id string, dir direction) [][]byte {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([][]byte(nil), ts.reports[id][dir]...)
}

// messages reassembles the MSG messages relayed for id in dir and decodes
// their envelopes.
func (ts *taps) messages(id string, dir direction) []proto.Message {
	var r framing.Reassembler
	var out []proto.Message
	for _, rep := range ts.recorded(id, dir) {
		m, err := r.Push(rep, time.Unix(0, 0))
		if err != nil || m == nil || m.Cmd != framing.CmdMsg {
			continue
		}
		env, err := protocol.DecodeEnvelope(m.Data)
		if err != nil {
			continue
		}
		out = append(out, protocol.Unwrap(env))
	}
	return out
}

// tap is one device transport seen by the bridge.
type tap struct {
	device.Transport
	ts *taps
	id string

	wmu  sync.Mutex // guards wrsm and writes to the device
	wrsm framing.Reassembler

	rmu     sync.Mutex // guards rrsm and pending (Read is one goroutine)
	rrsm    framing.Reassembler
	pending [][]byte
}

// pass runs an armed attack on a report: whole messages are handed to it,
// reports of an incomplete message are held. It returns the reports to
// send on.
func (tp *tap) pass(dir direction, rsm *framing.Reassembler, r []byte) [][]byte {
	tp.ts.mu.Lock()
	a := tp.ts.attacks[tp.id]
	tp.ts.mu.Unlock()
	_, busy := rsm.InProgress()
	if a == nil && !busy {
		return [][]byte{r}
	}
	if r[4]&0x80 != 0 && framing.Command(r[4]) != framing.CmdMsg && !busy {
		return [][]byte{r} // not a message: INIT, CANCEL, keepalive, ERROR
	}
	m, err := rsm.Push(r, time.Now())
	if err != nil {
		return [][]byte{r}
	}
	if m == nil {
		return nil // held until the message is whole
	}
	envs := [][]byte{m.Data}
	if a != nil {
		var done bool
		envs, done = a(dir, m.Data)
		if done {
			tp.ts.mu.Lock()
			tp.ts.attacks[tp.id] = nil
			tp.ts.mu.Unlock()
		}
	}
	var out [][]byte
	for _, e := range envs {
		rs, err := framing.Fragment(m.CID, m.Cmd, e)
		if err != nil {
			tp.ts.t.Errorf("tap: %v", err)
			continue
		}
		out = append(out, rs...)
	}
	return out
}

func (tp *tap) Write(p []byte) (int, error) {
	tp.wmu.Lock()
	defer tp.wmu.Unlock()
	tp.ts.record(tp.id, toDevice, p)
	for _, r := range tp.pass(toDevice, &tp.wrsm, p) {
		if _, err := tp.Transport.Write(r); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// inject writes a report of the relay's own to the device.
func (tp *tap) inject(cid uint32, cmd framing.Command, data []byte) error {
	tp.wmu.Lock()
	defer tp.wmu.Unlock()
	rs, err := framing.Fragment(cid, cmd, data)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if _, err := tp.Transport.Write(r); err != nil {
			return err
		}
	}
	return nil
}

func (tp *tap) Read(p []byte) (int, error) {
	tp.rmu.Lock()
	defer tp.rmu.Unlock()
	buf := make([]byte, framing.ReportSize)
	for len(tp.pending) == 0 {
		n, err := tp.Transport.Read(buf)
		if err != nil {
			return n, err
		}
		tp.ts.record(tp.id, toHost, buf[:n])
		tp.pending = tp.pass(toHost, &tp.rrsm, bytes.Clone(buf[:n]))
	}
	n := copy(p, tp.pending[0])
	tp.pending = tp.pending[1:]
	return n, nil
}

// current is the tap of id's open transport.
func (ts *taps) current(id string) *tap {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.opened[id]
}

// decode decodes an envelope; nil if it does not decode.
func decode(env []byte) proto.Message {
	e, err := protocol.DecodeEnvelope(env)
	if err != nil {
		return nil
	}
	return protocol.Unwrap(e)
}

func encodeEnv(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := protocol.EncodeEnvelope(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// flipped returns a SecureMessage envelope with one bit of its ciphertext
// flipped.
func flipped(t *testing.T, env []byte) []byte {
	sm := decode(env).(*pb.SecureMessage)
	ct := bytes.Clone(sm.GetCiphertext())
	ct[len(ct)/2] ^= 0x04
	return encodeEnv(t, &pb.SecureMessage{Ciphertext: ct})
}

func isSecure(env []byte) bool { _, ok := decode(env).(*pb.SecureMessage); return ok }

// relayed counts the envelopes of type T relayed in plain for id in dir.
func relayed[T proto.Message](ts *taps, id string, dir direction) int {
	n := 0
	for _, m := range ts.messages(id, dir) {
		if _, ok := m.(T); ok {
			n++
		}
	}
	return n
}

// presentAs is a relay that answers the bridge's GetFeatures with another
// device's Features, presenting the device under that device's name.
func presentAs(features []byte) attack {
	return func(dir direction, env []byte) ([][]byte, bool) {
		if _, ok := decode(env).(*pb.Features); ok && dir == toHost {
			return [][]byte{features}, false
		}
		return [][]byte{env}, false
	}
}

// failures returns the plain Failure codes id's device sent.
func (ts *taps) failures(id string) []pb.FailureCode {
	var out []pb.FailureCode
	for _, m := range ts.messages(id, toHost) {
		if f, ok := m.(*pb.Failure); ok {
			out = append(out, f.GetCode())
		}
	}
	return out
}

func count[T comparable](xs []T, x T) int {
	n := 0
	for _, y := range xs {
		if y == x {
			n++
		}
	}
	return n
}

// discoveryID is the bridge's name for an emulator.
func (e *emu) discoveryID() string { return "emu-" + strconv.Itoa(e.port) }

// --- Tests ---

// Three emulators are paired through the bridge with the operator's
// pairing call: each device shows the code hsmd gives the operator and
// hsmd's HSM fingerprint; after confirmation all three are listed paired
// with a channel up, and each emulator pinned hsmd's HSM key with its user
// and role.
func TestE2EPairThreeDevices(t *testing.T) {
	w := newWorld(t, 3)
	users := []string{"alice", "bob", "carol"}
	roles := []apipb.Role{apipb.Role_ROLE_ADMIN, apipb.Role_ROLE_ADMIN, apipb.Role_ROLE_APPROVER}
	for i, e := range w.emus {
		w.pair(w.hsmd, e, users[i], roles[i])
	}
	for i, e := range w.emus {
		w.waitChannel(w.hsmd, e, true)
		p := e.pin()
		if p == nil || !bytes.Equal(p.PublicKey, w.hsmd.identity.PublicKey()) || p.User != users[i] {
			t.Fatalf("device %s pinned %+v", e.id, p)
		}
		s, err := e.dl.Screen(w.ctx)
		if err != nil || s.Kind != debuglink.KindHome || s.Fields[emulator.FieldUser] != users[i] ||
			s.Fields[emulator.FieldHSMFingerprint] != signed.Fingerprint(w.hsmd.identity.Algorithm(), w.hsmd.identity.PublicKey()) {
			t.Fatalf("home screen of %s: %+v %v", e.id, s, err)
		}
	}
	ds, err := w.devices(w.hsmd)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range w.emus {
		d := ds[e.id]
		if d.GetUser() != users[i] || d.GetRole() != roles[i] || d.GetFingerprint() != e.Store().Identity().Fingerprint() || !d.GetEmulator() {
			t.Errorf("listed %v", d)
		}
	}
	// A paired device cannot be paired again.
	_, err = w.startPair(w.hsmd, w.emus[0], "mallory", apipb.Role_ROLE_ADMIN)
	wantCode(t, err, codes.FailedPrecondition, "already paired")
}

// What the relay carries while three devices pair, reconnect and approve a
// transfer is ciphertext, apart from what is public.
//
// Checked in every report relayed, both ways, as raw bytes: the user names,
// the role names, each pairing code (as six ASCII digits and as shown,
// "123 456"), the HSM fingerprint (as shown and as 32 hex digits), the HSM
// identity public key and its 16 fingerprint bytes, and of the transfer:
// the wallet name, the request id, the destination and change addresses,
// the amount as shown, the prompt's title, and the transaction id (as hex
// and as raw bytes in either order) never appear. And every envelope
// relayed in plain is one of those that must be plain — GetFeatures and
// Features (public: the device's key, id, model, label and attestation),
// the three handshake messages, and the Success that ends a handshake —
// while everything else (pairing, prompts, answers, cancels) is a
// SecureMessage: so no pairing secret, challenge, commitment or decision,
// no prompt and no approval crosses in plain.
func TestE2ERelaySeesOnlyCiphertext(t *testing.T) {
	w := newWorld(t, 3)
	users := []string{"alice-wallet-admin", "bob-second-admin", "carol-approver-x"}
	var codesSeen []string
	for i, e := range w.emus {
		p, err := w.startPair(w.hsmd, e, users[i], apipb.Role(1+i%2))
		if err != nil {
			t.Fatal(err)
		}
		codesSeen = append(codesSeen, p.code.GetCode())
		w.pairingScreen(e)
		if _, err := e.dl.ConfirmAll(w.ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := p.decide(true); err != nil {
			t.Fatal(err)
		}
	}
	// A few more messages: every channel reopens after the bridge restarts.
	for _, e := range w.emus {
		w.waitChannel(w.hsmd, e, true)
	}
	w.br.stop()
	for _, e := range w.emus {
		w.waitGone(w.hsmd, e)
	}
	w.br = w.startBridge(w.hsmd)
	for _, e := range w.emus {
		w.waitChannel(w.hsmd, e, true)
	}
	// A transfer: prompts to all three, two approve, the third prompt is
	// withdrawn.
	addrs := w.wallet(w.hsmd, "cold-storage-7", users, 2)
	req := w.submit(w.hsmd, "cold-storage-7", addrs, 12_345_678_900)
	for _, e := range w.emus {
		// Sanity: the device does show what the relay must not see.
		if s := w.promptScreen(e, req.GetId()); !strings.Contains(s.Text, "61.72839450 BTC") {
			t.Fatalf("prompt:\n%s", s.Text)
		}
	}
	for _, e := range w.emus[:2] {
		if _, err := e.dl.ConfirmAll(w.ctx); err != nil {
			t.Fatal(err)
		}
	}
	w.waitRequestState(w.hsmd, req.GetId(), "signed", func(r *apipb.Request) bool {
		return r.GetState() == apipb.RequestState_REQUEST_STATE_SIGNED
	})
	if _, err := w.emus[2].dl.WaitFor(w.ctx, func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindHome }); err != nil {
		t.Fatal(err)
	}

	fp := signed.FingerprintBytes(w.hsmd.identity.Algorithm(), w.hsmd.identity.PublicKey())
	secrets := map[string][]byte{
		"role admin":          []byte("admin"),
		"role approver":       []byte("approver"),
		"HSM fingerprint":     []byte(signed.FormatFingerprint(fp)),
		"HSM fingerprint hex": []byte(hex.EncodeToString(fp[:])),
		"HSM fingerprint raw": fp[:],
		"HSM public key":      w.hsmd.identity.PublicKey(),
	}
	for _, u := range users {
		secrets["user "+u] = []byte(u)
	}
	for _, c := range codesSeen {
		secrets["code "+c] = []byte(c)
		secrets["code shown "+c] = []byte(pairing.Display(c))
	}
	secrets["wallet name"] = []byte("cold-storage-7")
	secrets["request id"] = []byte(req.GetId())
	secrets["prompt title"] = []byte("Approve transfer")
	secrets["amount"] = []byte("61.72839450 BTC")
	secrets["txid"] = []byte(req.GetSummary().GetTxid())
	txid, err := chainhash.NewHashFromStr(req.GetSummary().GetTxid())
	if err != nil {
		t.Fatal(err)
	}
	secrets["txid bytes"] = txid[:]
	reversed := slices.Clone(txid[:])
	slices.Reverse(reversed)
	secrets["txid bytes reversed"] = reversed
	for i, o := range req.GetSummary().GetOutputs() {
		secrets[fmt.Sprintf("address %d", i)] = []byte(o.GetAddress())
	}
	plainOK := func(m proto.Message) bool {
		switch m.(type) {
		case *pb.GetFeatures, *pb.Features, *pb.HandshakeInit, *pb.HandshakeResponse, *pb.HandshakeFinish, *pb.Success, *pb.SecureMessage:
			return true
		}
		return false
	}
	// The last replies (the third device's to its prompt's withdrawal)
	// may still be on their way through the relay.
	eventually(t, func() error {
		for _, e := range w.emus {
			secure := 0
			for _, dir := range []direction{toDevice, toHost} {
				for _, m := range w.taps.messages(e.discoveryID(), dir) {
					if _, ok := m.(*pb.SecureMessage); ok {
						secure++
					}
				}
			}
			if secure < 12 {
				return fmt.Errorf("device %s: %d SecureMessages relayed so far", e.id, secure)
			}
		}
		return nil
	})
	for _, e := range w.emus {
		id := e.discoveryID()
		var all []byte
		secure := 0
		for _, dir := range []direction{toDevice, toHost} {
			for _, r := range w.taps.recorded(id, dir) {
				all = append(all, r...)
			}
			for _, m := range w.taps.messages(id, dir) {
				if !plainOK(m) {
					t.Errorf("device %s: %T relayed in plain %s", e.id, m, dir)
				}
				if _, ok := m.(*pb.SecureMessage); ok {
					secure++
				}
			}
		}
		if secure < 12 {
			t.Errorf("device %s: only %d SecureMessages relayed; the test saw no pairing or prompt", e.id, secure)
		}
		for what, b := range secrets {
			if bytes.Contains(all, b) {
				t.Errorf("device %s: the relay saw the %s", e.id, what)
			}
		}
		// Sanity: the recording does hold what is public.
		if !bytes.Contains(all, e.Store().Identity().PublicKey()) {
			t.Errorf("device %s: the recording lacks the public Features", e.id)
		}
	}
}

// A hostile relay that alters, replays, reorders or swaps messages makes
// the channel fail closed — the device answers FAILURE_CHANNEL, or hsmd's
// core closes the channel (its ChannelDown count rises) — and stores or
// pins nothing; honest traffic works afterwards, and a paired device's
// channel comes back by itself.
func TestE2EHostileRelay(t *testing.T) {
	w := newWorld(t, 2)
	a, b := w.emus[0], w.emus[1]

	// attackPairing arms attack on e, runs a pairing that must fail with
	// the given code and message part, and checks nothing was stored.
	attackPairing := func(e *emu, atk attack, part string) {
		t.Helper()
		w.taps.settle(t, e.discoveryID(), 300*time.Millisecond)
		before := channelFailures(t, w.hsmd)
		w.taps.arm(e.discoveryID(), atk)
		p, err := w.startPair(w.hsmd, e, "victim", apipb.Role_ROLE_ADMIN)
		if err == nil {
			_, err = p.stream.Recv()
		}
		wantCode(t, err, codes.Aborted, part)
		// The pairing call ends on the core's PairingFailed event; the
		// ChannelDown that follows it is counted a moment later.
		until(t, w.ctx, "hsmd counting the channel failure", func() error {
			if channelFailures(t, w.hsmd) <= before {
				return errors.New("no channel failure counted")
			}
			return nil
		})
		w.taps.arm(e.discoveryID(), nil)
		w.wantNothingPaired(w.hsmd, e)
		if s, err := e.dl.Screen(w.ctx); err != nil || s.Kind != debuglink.KindHome {
			t.Fatalf("screen after the attack: %+v %v", s, err)
		}
	}

	t.Run("bit flipped toward the device", func(t *testing.T) {
		failed := count(w.taps.failures(a.discoveryID()), pb.FailureCode_FAILURE_CHANNEL)
		attackPairing(a, func(dir direction, env []byte) ([][]byte, bool) {
			if dir == toDevice && isSecure(env) {
				return [][]byte{flipped(t, env)}, true
			}
			return [][]byte{env}, false
		}, "FAILURE_CHANNEL")
		if count(w.taps.failures(a.discoveryID()), pb.FailureCode_FAILURE_CHANNEL) != failed+1 {
			t.Error("the device did not answer FAILURE_CHANNEL")
		}
	})
	t.Run("bit flipped toward hsmd", func(t *testing.T) {
		attackPairing(a, func(dir direction, env []byte) ([][]byte, bool) {
			if dir == toHost && isSecure(env) {
				return [][]byte{flipped(t, env)}, true
			}
			return [][]byte{env}, false
		}, "failed authentication")
	})
	t.Run("replayed toward the device", func(t *testing.T) {
		// The first SecureMessage (PairingRequest) is delivered twice.
		failed := count(w.taps.failures(a.discoveryID()), pb.FailureCode_FAILURE_CHANNEL)
		attackPairing(a, func(dir direction, env []byte) ([][]byte, bool) {
			if dir == toDevice && isSecure(env) {
				return [][]byte{env, env}, true
			}
			return [][]byte{env}, false
		}, "FAILURE_CHANNEL")
		if count(w.taps.failures(a.discoveryID()), pb.FailureCode_FAILURE_CHANNEL) <= failed {
			t.Error("the device did not answer FAILURE_CHANNEL to the replay")
		}
	})
	t.Run("replayed toward hsmd", func(t *testing.T) {
		// The device's PairingCommitment is delivered twice.
		attackPairing(a, func(dir direction, env []byte) ([][]byte, bool) {
			if dir == toHost && isSecure(env) {
				return [][]byte{env, env}, true
			}
			return [][]byte{env}, false
		}, "failed authentication")
	})
	t.Run("reordered toward hsmd", func(t *testing.T) {
		// The relay holds the device's third sealed message (its
		// ButtonRequest), sends CANCEL so that the device seals a
		// fourth (Failure{FAILURE_ACTION_CANCELLED}), and delivers the
		// two in reverse order.
		var held []byte
		n := 0
		attackPairing(a, func(dir direction, env []byte) ([][]byte, bool) {
			if dir != toHost || !isSecure(env) {
				return [][]byte{env}, false
			}
			n++
			switch n {
			case 3:
				held = env
				tp := w.taps.current(a.discoveryID())
				cid := binaryCID(w.taps.recorded(a.discoveryID(), toHost))
				go tp.inject(cid, framing.CmdCancel, nil)
				return nil, false
			case 4:
				return [][]byte{env, held}, true
			}
			return [][]byte{env}, false
		}, "failed authentication")
	})
	t.Run("swapped between two devices", func(t *testing.T) {
		// Both devices pair at once; the relay delivers each one's first
		// sealed message (PairingRequest) to the other.
		sw := newSwapper()
		for i, e := range []*emu{a, b} {
			w.taps.arm(e.discoveryID(), func(dir direction, env []byte) ([][]byte, bool) {
				if dir == toDevice && isSecure(env) {
					return [][]byte{sw.swap(i, env)}, true
				}
				return [][]byte{env}, false
			})
		}
		errs := make(chan error, 2)
		for _, e := range []*emu{a, b} {
			go func() {
				p, err := w.startPair(w.hsmd, e, "swapped", apipb.Role_ROLE_APPROVER)
				if err == nil {
					_, err = p.stream.Recv()
				}
				errs <- err
			}()
		}
		for range 2 {
			wantCode(t, <-errs, codes.Aborted, "FAILURE_CHANNEL")
		}
		w.wantNothingPaired(w.hsmd, a)
		w.wantNothingPaired(w.hsmd, b)
	})

	// Honest traffic works after all that.
	w.pair(w.hsmd, a, "alice", apipb.Role_ROLE_ADMIN)
	w.pair(w.hsmd, b, "bob", apipb.Role_ROLE_APPROVER)
	w.waitChannel(w.hsmd, a, true)
	w.waitChannel(w.hsmd, b, true)

	// Paired devices: the relay spoils each handshake once; the channel
	// fails closed and comes back by itself (hsmd retries).
	for name, atk := range map[string]func() attack{
		"HandshakeFinish altered": func() attack {
			return func(dir direction, env []byte) ([][]byte, bool) {
				if hf, ok := decode(env).(*pb.HandshakeFinish); ok && dir == toDevice {
					noise := bytes.Clone(hf.GetNoise())
					noise[len(noise)-1] ^= 1
					return [][]byte{encodeEnv(t, &pb.HandshakeFinish{Noise: noise})}, true
				}
				return [][]byte{env}, false
			}
		},
		"HandshakeResponse replayed from an earlier handshake": func() attack {
			var old []byte
			for _, m := range w.taps.messages(a.discoveryID(), toHost) {
				if _, ok := m.(*pb.HandshakeResponse); ok {
					old = encodeEnv(t, m)
				}
			}
			return func(dir direction, env []byte) ([][]byte, bool) {
				if _, ok := decode(env).(*pb.HandshakeResponse); ok && dir == toHost {
					return [][]byte{old}, true
				}
				return [][]byte{env}, false
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			before := channelFailures(t, w.hsmd)
			w.taps.arm(a.discoveryID(), atk())
			// The bridge restarts: hsmd opens a new channel to each
			// device, and the relay spoils a's.
			w.br.stop()
			w.waitGone(w.hsmd, a)
			w.br = w.startBridge(w.hsmd)
			until(t, w.ctx, "attack done", func() error {
				if w.taps.armed(a.discoveryID()) {
					return errors.New("the relay has not attacked yet")
				}
				return nil
			})
			w.waitChannel(w.hsmd, a, true)
			w.waitChannel(w.hsmd, b, true)
			if channelFailures(t, w.hsmd) <= before {
				t.Error("hsmd counted no channel failure")
			}
		})
	}
	t.Run("prompt altered, answer replayed", func(t *testing.T) {
		// a's PromptRequest is altered on the way: a refuses it and its
		// channel closes; hsmd reopens it and delivers the prompt again.
		// b's PromptAnswer is delivered twice: hsmd takes the first and
		// closes the channel on the second.
		before := channelFailures(t, w.hsmd)
		w.taps.arm(a.discoveryID(), func(dir direction, env []byte) ([][]byte, bool) {
			if dir == toDevice && isSecure(env) {
				return [][]byte{flipped(t, env)}, true
			}
			return [][]byte{env}, false
		})
		n := 0
		w.taps.arm(b.discoveryID(), func(dir direction, env []byte) ([][]byte, bool) {
			if dir == toHost && isSecure(env) {
				if n++; n == 2 {
					return [][]byte{env, env}, true
				}
			}
			return [][]byte{env}, false
		})
		addrs := w.wallet(w.hsmd, "treasury", []string{"alice", "bob"}, 2)
		req := w.submit(w.hsmd, "treasury", addrs, 40_000_000)
		for _, e := range []*emu{a, b} {
			w.promptScreen(e, req.GetId())
			if _, err := e.dl.ConfirmAll(w.ctx); err != nil {
				t.Fatal(err)
			}
		}
		r := w.waitRequestState(w.hsmd, req.GetId(), "signed", func(r *apipb.Request) bool {
			return r.GetState() == apipb.RequestState_REQUEST_STATE_SIGNED
		})
		if len(r.GetAnswers()) != 2 || r.GetAnswers()[0].GetUser() == r.GetAnswers()[1].GetUser() {
			t.Fatalf("answers %v", r.GetAnswers())
		}
		if count(w.taps.failures(a.discoveryID()), pb.FailureCode_FAILURE_CHANNEL) == 0 {
			t.Error("a did not refuse the altered prompt")
		}
		if n := channelFailures(t, w.hsmd) - before; n < 2 {
			t.Errorf("hsmd counted %d channel failures, want one per device", n)
		}
		w.waitChannel(w.hsmd, a, true)
		w.waitChannel(w.hsmd, b, true)
	})
	t.Run("HandshakeInit swapped between two paired devices", func(t *testing.T) {
		before := channelFailures(t, w.hsmd)
		sw := newSwapper()
		w.br.stop()
		for i, e := range []*emu{a, b} {
			w.waitGone(w.hsmd, e)
			w.taps.arm(e.discoveryID(), func(dir direction, env []byte) ([][]byte, bool) {
				if _, ok := decode(env).(*pb.HandshakeInit); ok && dir == toDevice {
					return [][]byte{sw.swap(i, env)}, true
				}
				return [][]byte{env}, false
			})
		}
		w.br = w.startBridge(w.hsmd)
		w.waitChannel(w.hsmd, a, true)
		w.waitChannel(w.hsmd, b, true)
		if n := channelFailures(t, w.hsmd) - before; n < 2 {
			t.Errorf("hsmd counted %d channel failures, want one per device", n)
		}
	})
}

// binaryCID is the channel of the last reports relayed.
func binaryCID(reports [][]byte) uint32 {
	r := reports[len(reports)-1]
	return uint32(r[0])<<24 | uint32(r[1])<<16 | uint32(r[2])<<8 | uint32(r[3])
}

// swapper exchanges one message between two devices' relays: each side
// gives its own and gets the other's.
type swapper struct {
	ch [2]chan []byte
}

func newSwapper() *swapper {
	return &swapper{ch: [2]chan []byte{make(chan []byte, 1), make(chan []byte, 1)}}
}

func (s *swapper) swap(side int, env []byte) []byte {
	s.ch[side] <- env
	select {
	case other := <-s.ch[1-side]:
		return other
	case <-time.After(time.Minute):
		return env
	}
}

// A device paired with one HSM refuses another hsmd's core: a second hsmd
// with another SoftHSM2 token cannot pair it, nor — with a device record
// forged in its own database — open a channel to it; the device answers
// FAILURE_CHANNEL, the channel never comes up, its pin is untouched, and
// the other hsmd's prompt never reaches it: no sealed message at all is
// relayed to the device, and it signs nothing.
func TestE2EDeviceRefusesAnotherHSM(t *testing.T) {
	w := newWorld(t, 1)
	e := w.emus[0]
	w.pair(w.hsmd, e, "alice", apipb.Role_ROLE_ADMIN)
	w.waitChannel(w.hsmd, e, true)

	other := startWith(t, true, true)
	w.br.stop()
	sealedToDevice := func() int { return relayed[*pb.SecureMessage](w.taps, e.discoveryID(), toDevice) }
	sealedBefore := sealedToDevice()
	w.br = w.startBridge(other)
	w.waitAttached(other, e)
	failed := count(w.taps.failures(e.discoveryID()), pb.FailureCode_FAILURE_CHANNEL)

	// The other hsmd's operator tries to pair it.
	_, err := w.startPair(other, e, "mallory", apipb.Role_ROLE_ADMIN)
	wantCode(t, err, codes.Aborted, "FAILURE_CHANNEL")
	if n := count(w.taps.failures(e.discoveryID()), pb.FailureCode_FAILURE_CHANNEL); n != failed+1 {
		t.Fatalf("device answered FAILURE_CHANNEL %d times, want once", n-failed)
	}
	ds, err := w.devices(other)
	if err != nil {
		t.Fatal(err)
	}
	if d := ds[e.id]; d.GetState() != apipb.DeviceState_DEVICE_STATE_UNPAIRED || d.GetChannel() {
		t.Fatalf("the other hsmd lists %v", d)
	}

	// With a record of the device in its own database, the other hsmd
	// opens channels by itself; the device refuses each.
	id := e.Store().Identity()
	rec := &core.DeviceRecord{ID: e.id, Algorithm: id.Algorithm, IdentityKey: id.PublicKey(), User: "mallory", Role: core.RoleAdmin, State: core.DevicePaired, PairedAt: time.Now()}
	if err := other.devices.CreateDevice(w.ctx, rec); err != nil {
		t.Fatal(err)
	}
	// And a request that mallory is to approve on it.
	addrs := w.wallet(other, "stolen", []string{"mallory"}, 1)
	req := w.submit(other, "stolen", addrs, 90_000_000)
	w.br.stop()
	w.br = w.startBridge(other)
	before := channelFailures(t, other)
	until(t, w.ctx, "two refused handshakes", func() error {
		ds, err := w.devices(other)
		if err != nil {
			return err
		}
		if ds[e.id].GetChannel() {
			t.Fatalf("channel up between the device and another HSM")
		}
		if n := count(w.taps.failures(e.discoveryID()), pb.FailureCode_FAILURE_CHANNEL) - failed - 1; n < 2 {
			return fmt.Errorf("%d refusals", n)
		}
		return nil
	})
	// The refusals reach hsmd's core a moment after the tap saw them.
	until(t, w.ctx, "the other hsmd counting each refusal as a channel failure", func() error {
		if n := channelFailures(t, other) - before; n < 2 {
			return fmt.Errorf("%d channel failures counted", n)
		}
		return nil
	})
	if p := e.pin(); p == nil || !bytes.Equal(p.PublicKey, w.hsmd.identity.PublicKey()) || p.User != "alice" {
		t.Fatalf("pin after the other HSM tried: %+v", p)
	}
	// The prompt never reached the device.
	r := w.waitRequestState(other, req.GetId(), "pending", func(r *apipb.Request) bool {
		return r.GetState() == apipb.RequestState_REQUEST_STATE_PENDING
	})
	if len(r.GetPrompts()) != 1 || r.GetPrompts()[0].GetAnswered() || len(r.GetAnswers()) != 0 {
		t.Fatalf("request on the other hsmd %v", r)
	}
	if n := sealedToDevice() - sealedBefore; n != 0 {
		t.Fatalf("%d sealed messages relayed to the device from the other hsmd", n)
	}
	if c := e.Store().Counter(); c != 0 {
		t.Fatalf("device counter %d: it signed something", c)
	}
	if s, err := e.dl.Screen(w.ctx); err != nil || s.Kind != debuglink.KindHome {
		t.Fatalf("screen %+v %v", s, err)
	}

	// Back with its own hsmd, the channel comes up.
	w.br.stop()
	w.br = w.startBridge(w.hsmd)
	w.waitChannel(w.hsmd, e, true)
}

// The core opens no channel to a device that is not paired, even one that
// a hostile relay presents as a paired device, and none to a revoked one:
// revocation takes the channel down for good.
func TestE2ECoreRefusesUnpairedAndRevokedDevices(t *testing.T) {
	w := newWorld(t, 3)
	paired, impostor, revoked := w.emus[0], w.emus[1], w.emus[2]

	// An unpaired device gets no handshake at all.
	w.waitDevice(w.hsmd, impostor, "listed unpaired", func(d *apipb.Device) error {
		if d.GetState() != apipb.DeviceState_DEVICE_STATE_UNPAIRED || d.GetChannel() {
			return fmt.Errorf("listed %v", d)
		}
		return nil
	})
	w.pair(w.hsmd, paired, "alice", apipb.Role_ROLE_ADMIN)
	w.pair(w.hsmd, revoked, "carol", apipb.Role_ROLE_APPROVER)
	w.waitChannel(w.hsmd, revoked, true)
	for _, m := range w.taps.messages(impostor.discoveryID(), toDevice) {
		if _, ok := m.(*pb.GetFeatures); !ok {
			t.Fatalf("hsmd sent %T to an unpaired device", m)
		}
	}

	// The relay presents the unpaired device as the paired one: its
	// Features answer is replaced by the paired device's. hsmd tries the
	// channel, the device proves its own key, and the core refuses it.
	features := encodeEnv(t, paired.Device().Features())
	paired.Close()
	w.waitGone(w.hsmd, paired)
	before := channelFailures(t, w.hsmd)
	w.taps.arm(impostor.discoveryID(), presentAs(features))
	// Unplug and plug in the impostor so that the bridge asks for its
	// Features again.
	w.cycle(w.hsmd, impostor)
	until(t, w.ctx, "two refused handshakes", func() error {
		ds, err := w.devices(w.hsmd)
		if err != nil {
			return err
		}
		if d := ds[paired.id]; d.GetChannel() {
			t.Fatalf("channel up with an impostor: %v", d)
		}
		if n := channelFailures(t, w.hsmd) - before; n < 2 {
			return fmt.Errorf("%d channel failures", n)
		}
		return nil
	})
	if impostor.pin() != nil {
		t.Fatal("the impostor pinned")
	}
	w.taps.arm(impostor.discoveryID(), nil)

	// Revocation takes the channel down, and it stays down: hsmd does not
	// try again, even when the device comes back.
	if _, err := w.op.RevokeDevice(w.ctx, &apipb.RevokeDeviceRequest{DeviceId: revoked.id}); err != nil {
		t.Fatal(err)
	}
	w.waitDevice(w.hsmd, revoked, "revoked, channel down", func(d *apipb.Device) error {
		if d.GetState() != apipb.DeviceState_DEVICE_STATE_REVOKED || d.GetChannel() {
			return fmt.Errorf("listed %v", d)
		}
		return nil
	})
	inits := func() int { return relayed[*pb.HandshakeInit](w.taps, revoked.discoveryID(), toDevice) }
	sent := inits()
	w.cycle(w.hsmd, revoked)
	w.waitDevice(w.hsmd, revoked, "back after restart", func(d *apipb.Device) error {
		if !d.GetConnected() {
			return errors.New("not connected")
		}
		return nil
	})
	// Past hsmd's first retry delay (1 s): still no handshake.
	time.Sleep(1500 * time.Millisecond)
	ds, err := w.devices(w.hsmd)
	if err != nil {
		t.Fatal(err)
	}
	if d := ds[revoked.id]; d.GetChannel() || d.GetState() != apipb.DeviceState_DEVICE_STATE_REVOKED {
		t.Fatalf("revoked device listed %v", d)
	}
	if n := inits(); n != sent {
		t.Fatalf("hsmd sent %d handshakes to a revoked device", n-sent)
	}
	// And it cannot be paired again.
	_, err = w.startPair(w.hsmd, revoked, "carol", apipb.Role_ROLE_APPROVER)
	wantCode(t, err, codes.FailedPrecondition, "revoked")

	// The audit log holds the pairing and the revocation, in order.
	until(t, w.ctx, "audit entries", func() error {
		if got := w.hsmd.auditKinds(t, revoked.id); !slices.Equal(got, []string{audit.KindPairing, audit.KindRevocation}) {
			return fmt.Errorf("audit entries for the revoked device: %v", got)
		}
		return nil
	})
}

// A pairing that either person rejects stores nothing and pins nothing,
// and the pairing call ends with Aborted.
func TestE2EPairingRejected(t *testing.T) {
	w := newWorld(t, 1)
	e := w.emus[0]

	// The operator sees another code: the device is told to cancel.
	p, err := w.startPair(w.hsmd, e, "alice", apipb.Role_ROLE_ADMIN)
	if err != nil {
		t.Fatal(err)
	}
	w.pairingScreen(e)
	_, err = p.decide(false)
	wantCode(t, err, codes.Aborted, "rejected by the operator")
	if _, err := e.dl.WaitFor(w.ctx, func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindHome }); err != nil {
		t.Fatal(err)
	}
	w.wantNothingPaired(w.hsmd, e)

	// The user sees another code and rejects on the device.
	p, err = w.startPair(w.hsmd, e, "alice", apipb.Role_ROLE_ADMIN)
	if err != nil {
		t.Fatal(err)
	}
	w.pairingScreen(e)
	if _, err := e.dl.Press(w.ctx, debuglink.Reject); err != nil {
		t.Fatal(err)
	}
	_, err = p.stream.Recv()
	wantCode(t, err, codes.Aborted, "rejected on the device")
	w.wantNothingPaired(w.hsmd, e)

	// The user confirms but the operator rejects: still nothing.
	p, err = w.startPair(w.hsmd, e, "alice", apipb.Role_ROLE_ADMIN)
	if err != nil {
		t.Fatal(err)
	}
	w.pairingScreen(e)
	if _, err := e.dl.ConfirmAll(w.ctx); err != nil {
		t.Fatal(err)
	}
	_, err = p.decide(false)
	wantCode(t, err, codes.Aborted, "rejected by the operator")
	w.wantNothingPaired(w.hsmd, e)

	// Both confirm: paired.
	w.pair(w.hsmd, e, "alice", apipb.Role_ROLE_ADMIN)
	w.waitChannel(w.hsmd, e, true)
}

// Restarts recover without the operator: an emulator restarted on its
// state (same identity, same pin) is attached again by the bridge and
// hsmd reopens its channel; so after the bridge restarts.
func TestE2ERestartsRecover(t *testing.T) {
	w := newWorld(t, 2)
	for i, e := range w.emus {
		w.pair(w.hsmd, e, []string{"alice", "bob"}[i], apipb.Role_ROLE_ADMIN)
		w.waitChannel(w.hsmd, e, true)
	}
	e := w.emus[0]
	id := e.id
	w.cycle(w.hsmd, e)
	if e.id != id || e.pin() == nil {
		t.Fatalf("restarted emulator is %s, pin %v", e.id, e.pin())
	}
	w.waitChannel(w.hsmd, e, true)

	w.br.stop()
	for _, e := range w.emus {
		w.waitGone(w.hsmd, e)
	}
	w.br = w.startBridge(w.hsmd)
	for _, e := range w.emus {
		w.waitChannel(w.hsmd, e, true)
	}
}

// A relay that presents one paired device as another (its Features
// replaced by the other's) gets no channel: the device proves its own
// identity, which is not the one announced.
func TestE2EPairedDeviceUnderAnotherNameRefused(t *testing.T) {
	w := newWorld(t, 2)
	a, b := w.emus[0], w.emus[1]
	w.pair(w.hsmd, a, "alice", apipb.Role_ROLE_ADMIN)
	w.pair(w.hsmd, b, "bob", apipb.Role_ROLE_ADMIN)
	w.waitChannel(w.hsmd, a, true)
	features := encodeEnv(t, a.Device().Features())
	a.Close()
	w.waitGone(w.hsmd, a)
	w.taps.arm(b.discoveryID(), presentAs(features))
	before := channelFailures(t, w.hsmd)
	w.cycle(w.hsmd, b)
	until(t, w.ctx, "two refused handshakes", func() error {
		ds, err := w.devices(w.hsmd)
		if err != nil {
			return err
		}
		if d := ds[a.id]; d.GetChannel() {
			t.Fatalf("channel up with device %s announced as %s: %v", b.id, a.id, d)
		}
		if n := channelFailures(t, w.hsmd) - before; n < 2 {
			return fmt.Errorf("%d channel failures", n)
		}
		return nil
	})
}

// A transfer is approved on the emulators' screens through the bridge:
// each paired device shows the prompt hsmd built from the PSBT, two of
// three users confirm on the last page, and the request is signed; the
// third device's prompt is withdrawn. A second request is rejected on a
// device, which stops it.
func TestE2EApprovalThroughBridge(t *testing.T) {
	w := newWorld(t, 3)
	users := []string{"alice", "bob", "carol"}
	addrs := w.approverWallet("treasury", 2, users...)
	req := w.submit(w.hsmd, "treasury", addrs, 50_000_000)
	var foreign string
	for _, o := range req.GetSummary().GetOutputs() {
		if !o.GetChange() {
			foreign = o.GetAddress()
		}
	}
	for _, e := range w.emus {
		s := w.promptScreen(e, req.GetId())
		for _, want := range []string{"Wallet: treasury", "Request: " + req.GetId(), "0.25000000 BTC"} {
			if !strings.Contains(strings.ReplaceAll(s.Text, "\n", " "), want) {
				t.Errorf("device %s: prompt lacks %q:\n%s", e.id, want, s.Text)
			}
		}
		if !strings.Contains(strings.ReplaceAll(s.Text, "\n", ""), foreign) {
			t.Errorf("device %s: prompt lacks the destination %s:\n%s", e.id, foreign, s.Text)
		}
	}
	for _, e := range w.emus[:2] {
		if _, err := e.dl.ConfirmAll(w.ctx); err != nil {
			t.Fatal(err)
		}
	}
	r := w.waitRequestState(w.hsmd, req.GetId(), "signed", func(r *apipb.Request) bool {
		return r.GetState() == apipb.RequestState_REQUEST_STATE_SIGNED
	})
	if len(r.GetSignedTx()) == 0 || len(r.GetAnswers()) != 2 {
		t.Fatalf("signed request %v", r)
	}
	for _, a := range r.GetAnswers() {
		if !a.GetApproved() || a.GetCounter() != 1 {
			t.Errorf("answer %v", a)
		}
	}
	// Carol's prompt is withdrawn: her screen goes home, nothing signed.
	if _, err := w.emus[2].dl.WaitFor(w.ctx, func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindHome }); err != nil {
		t.Fatal(err)
	}
	if c := w.emus[2].Store().Counter(); c != 0 {
		t.Fatalf("carol's device counter %d", c)
	}

	// One rejection stops a request.
	req2 := w.submit(w.hsmd, "treasury", addrs, 70_000_000)
	w.promptScreen(w.emus[2], req2.GetId())
	if _, err := w.emus[2].dl.Press(w.ctx, debuglink.Reject); err != nil {
		t.Fatal(err)
	}
	r2 := w.waitRequestState(w.hsmd, req2.GetId(), "rejected", func(r *apipb.Request) bool {
		return r.GetState() == apipb.RequestState_REQUEST_STATE_REJECTED
	})
	if len(r2.GetSignedTx()) != 0 || len(r2.GetRejectedBy()) != 1 || r2.GetRejectedBy()[0] != "carol" {
		t.Fatalf("rejected request %v", r2)
	}
	for _, e := range w.emus[:2] {
		if _, err := e.dl.WaitFor(w.ctx, func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindHome }); err != nil {
			t.Fatal(err)
		}
	}
}
