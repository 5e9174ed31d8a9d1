package hsmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/apiclient"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

// Limits on what one bridge may make hsmd hold.
const (
	maxDevicesPerBridge = 1024
	maxRefLength        = 256
	helloTimeout        = 10 * time.Second
	// sendQueue holds a burst of a handshake for each device a bridge
	// may announce, twice over, so that an honest bridge announcing all
	// its devices at once is not taken for one that stopped reading.
	sendQueue = 2 * maxDevicesPerBridge
)

// bridgeConn is one bridge's relay stream.
type bridgeConn struct {
	name, remote string
	out          chan *apipb.CoreMessage // drained by the stream's sender
	done         chan struct{}           // closed when the stream ends
	// stalled is closed when out was full: the bridge is not reading its
	// stream, and hsmd ends it.
	stalled     chan struct{}
	stalledOnce sync.Once

	// refs is touched only by the stream's receive loop.
	refs map[string]*deviceConn
}

// send queues m for the bridge; it gives up when the stream has ended. It
// never waits for the bridge: callers hold a device's lock that other
// bridges' work needs (prompts, listings, revocations), so a bridge that
// lets sendQueue messages pile up — one that stopped reading, or cannot
// keep up — has its stream ended instead, and reconnects if it is honest.
func (b *bridgeConn) send(m *apipb.CoreMessage) {
	select {
	case b.out <- m:
	case <-b.done:
	default:
		b.stalledOnce.Do(func() { close(b.stalled) })
	}
}

// deviceConn is a device announced by a bridge, with the core's link to it.
type deviceConn struct {
	s      *Server
	bridge *bridgeConn
	ref    string
	id     string // claimed device id

	// mu serialises every call on link and guards the fields below. Lock
	// order: Server.mu may be taken while holding mu, never the reverse.
	mu       sync.Mutex
	link     *core.Link
	up       bool            // the secure channel is established
	watcher  chan core.Event // the pairing call waiting for events, if any
	retry    time.Duration
	timer    *time.Timer
	detached bool
	// delivered holds the requests whose stored prompt deliverPending
	// handed to this link.
	delivered map[string]bool
}

var errDetached = errors.New("hsmd: device is no longer attached")

// call runs f on the link and delivers its output, one call at a time.
func (d *deviceConn) call(f func(*core.Link) (core.Output, error)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.detached {
		return errDetached
	}
	out, err := f(d.link)
	d.deliver(out)
	return err
}

// deliver sends the core's envelopes to the bridge and handles its events.
// d.mu is held.
func (d *deviceConn) deliver(out core.Output) {
	for _, b := range out.ToDevice {
		d.s.metrics.frames.WithLabelValues("to_device").Inc()
		d.bridge.send(&apipb.CoreMessage{Msg: &apipb.CoreMessage_Frame{Frame: &apipb.DeviceFrame{Ref: d.ref, Envelope: b}}})
	}
	for _, e := range out.Events {
		d.event(e)
	}
}

// event reacts to one core event. d.mu is held.
func (d *deviceConn) event(e core.Event) {
	log := d.s.log.With("device", d.id, "bridge", d.bridge.name)
	switch e := e.(type) {
	case core.ChannelUp:
		if !d.up { // after a pairing, the link opens a new channel over the pairing one
			d.s.metrics.channels.Inc()
		}
		d.up, d.retry = true, 0
		if e.Device != nil {
			log.Info("secure channel established", "user", e.Device.User)
			id := e.Device.ID
			d.s.background(func(ctx context.Context) { d.s.sendPending(ctx, d, id) })
		} else {
			log.Info("secure channel established for pairing")
		}
	case core.ChannelDown:
		if d.up {
			d.s.metrics.channels.Dec()
		}
		d.up = false
		d.s.metrics.channelFails.Inc()
		log.Warn("secure channel closed", "err", e.Err)
		d.scheduleReopen()
	case core.PairingCode:
		log.Info("pairing code ready for the operator")
	case core.PairingDeviceDecision:
		log.Info("device user answered the pairing screen", "confirmed", e.Confirmed)
	case core.PairingDone:
		d.s.metrics.pairings.WithLabelValues("paired").Inc()
		log.Info("device paired", "user", e.Device.User, "role", e.Device.Role, "fingerprint", e.Device.Fingerprint())
		d.s.recordLater(audit.KindPairing, e.Device.ID, fmt.Sprintf("paired: user %s, role %s, fingerprint %s", e.Device.User, e.Device.Role, e.Device.Fingerprint()))
	case core.PairingProposed:
		d.s.metrics.pairings.WithLabelValues("proposed").Inc()
		log.Info("pairing proposed to the admins", "user", e.Device.User, "role", e.Device.Role, "fingerprint", e.Device.Fingerprint(), "change", e.Change.Change.ID)
		prop := e.Change
		d.s.background(func(ctx context.Context) { d.s.proposed(ctx, prop) })
	case core.PairingFailed:
		d.s.metrics.pairings.WithLabelValues("failed").Inc()
		log.Warn("pairing failed", "err", e.Err)
		d.s.recordLater(audit.KindPairing, d.id, fmt.Sprintf("failed: %v", e.Err))
	case core.PromptShown:
		log.Info("device shows a prompt", "request", e.RequestID)
		d.s.recordLater(audit.KindPrompt, e.RequestID, "shown on device "+d.id)
	case core.ApprovalReceived:
		d.s.queueAnswer(e.Answer)
	case core.PromptFailed:
		if e.Withdrawn {
			log.Info("prompt withdrawn from the device", "request", e.RequestID)
			break
		}
		log.Warn("device did not take a prompt", "request", e.RequestID, "code", e.Code.String(), "message", e.Message)
		if e.Code == pb.FailureCode_FAILURE_BUSY && d.link != nil {
			if up, rec := d.link.Secure(); up && rec != nil {
				id, delay := rec.ID, d.s.cfg.RetryDelay
				d.s.background(func(ctx context.Context) {
					select {
					case <-time.After(delay):
						d.s.sendPending(ctx, d, id)
					case <-ctx.Done():
					}
				})
			}
		}
	}
	if d.watcher != nil {
		select {
		case d.watcher <- e:
		default:
			log.Warn("pairing call is not keeping up; event dropped", "event", fmt.Sprintf("%T", e))
		}
	}
}

// scheduleReopen retries the channel of a paired device after a backoff.
// Open is a no-op for an unpaired device and fails for a revoked one, so
// the retry stops by itself. d.mu is held.
func (d *deviceConn) scheduleReopen() {
	if d.detached || d.watcher != nil || d.timer != nil {
		return
	}
	if d.retry == 0 {
		d.retry = d.s.cfg.RetryDelay
	} else {
		d.retry = min(2*d.retry, time.Minute)
	}
	d.timer = time.AfterFunc(d.retry, func() {
		d.mu.Lock()
		d.timer = nil
		d.mu.Unlock()
		if err := d.call(func(l *core.Link) (core.Output, error) { return l.Open(context.Background()) }); err != nil && !errors.Is(err, errDetached) {
			d.s.log.Warn("cannot reopen secure channel", "device", d.id, "err", err)
		}
	})
}

// detach ends the device's link: the bridge said it went away, or the
// bridge itself did.
func (d *deviceConn) detach(reason string) {
	d.mu.Lock()
	if d.detached {
		d.mu.Unlock()
		return
	}
	out := d.link.Abort(fmt.Errorf("device detached: %s", reason))
	d.deliver(out)
	d.detached = true
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if d.up {
		d.s.metrics.channels.Dec()
		d.up = false
	}
	d.mu.Unlock()

	d.s.mu.Lock()
	if d.s.devices[d.id] == d {
		delete(d.s.devices, d.id)
	}
	d.s.mu.Unlock()
	d.s.metrics.devices.Dec()
}

// device returns the attached device with a claimed id.
func (s *Server) device(id string) *deviceConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.devices[id]
}

type relayService struct {
	apipb.UnimplementedRelayServer
	s *Server
}

// Connect serves one bridge.
func (r *relayService) Connect(stream apipb.Relay_ConnectServer) error {
	s := r.s
	ctx := stream.Context()
	hello, err := recvHello(stream)
	if err != nil {
		return err
	}
	b := &bridgeConn{
		name: hello.GetBridgeName(), out: make(chan *apipb.CoreMessage, sendQueue),
		done: make(chan struct{}), stalled: make(chan struct{}), refs: map[string]*deviceConn{},
	}
	if p, ok := peer.FromContext(ctx); ok {
		b.remote = p.Addr.String()
	}
	log := s.log.With("bridge", b.name, "remote", b.remote)
	s.mu.Lock()
	s.bridges[b] = struct{}{}
	s.mu.Unlock()
	s.metrics.bridges.Inc()
	log.Info("bridge connected", "version", hello.GetVersion())

	sendErr := make(chan error, 1)
	go func() {
		for {
			select {
			case m := <-b.out:
				if err := stream.Send(m); err != nil {
					sendErr <- err
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() {
		close(b.done)
		for _, d := range b.refs {
			d.detach("bridge disconnected")
		}
		s.mu.Lock()
		delete(s.bridges, b)
		s.mu.Unlock()
		s.metrics.bridges.Dec()
		log.Info("bridge disconnected")
	}()
	b.send(&apipb.CoreMessage{Msg: &apipb.CoreMessage_Hello{Hello: &apipb.CoreHello{HsmFingerprint: s.cfg.Core.HSMFingerprint()}}})

	recv, recvErr := apiclient.RecvLoop(ctx, stream.Recv)
	for {
		select {
		case m := <-recv:
			if err := r.handle(ctx, b, m, log); err != nil {
				return err
			}
		case err := <-recvErr:
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil // the bridge closed its side, or went away
			}
			return err
		case err := <-sendErr:
			return err
		case <-b.stalled:
			log.Warn("bridge is not reading its stream; disconnected", "queued", sendQueue)
			return status.Errorf(codes.ResourceExhausted, "hsmd: the bridge left %d messages unread; disconnected", sendQueue)
		case <-s.stopping:
			return status.Error(codes.Unavailable, "hsmd: shutting down")
		case <-ctx.Done():
			return nil
		}
	}
}

func recvHello(stream apipb.Relay_ConnectServer) (*apipb.BridgeHello, error) {
	type result struct {
		m   *apipb.BridgeMessage
		err error
	}
	ch := make(chan result, 1)
	go func() { m, err := stream.Recv(); ch <- result{m, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		if r.m.GetHello() == nil {
			return nil, status.Error(codes.InvalidArgument, "hsmd: a bridge must start with BridgeHello")
		}
		return r.m.GetHello(), nil
	case <-time.After(helloTimeout):
		return nil, status.Error(codes.DeadlineExceeded, "hsmd: no BridgeHello in time")
	}
}

// handle processes one message of a bridge. Errors end the bridge's stream;
// a device's misbehaviour only fails that device's channel.
func (r *relayService) handle(ctx context.Context, b *bridgeConn, m *apipb.BridgeMessage, log *slog.Logger) error {
	s := r.s
	switch m := m.Msg.(type) {
	case *apipb.BridgeMessage_Attached:
		a := m.Attached
		if a.GetRef() == "" || len(a.GetRef()) > maxRefLength {
			return status.Error(codes.InvalidArgument, "hsmd: device ref must be 1 to 256 bytes")
		}
		if _, dup := b.refs[a.GetRef()]; dup {
			return status.Errorf(codes.InvalidArgument, "hsmd: device ref %q announced twice", a.GetRef())
		}
		if len(b.refs) >= maxDevicesPerBridge {
			return status.Errorf(codes.ResourceExhausted, "hsmd: a bridge may announce at most %d devices", maxDevicesPerBridge)
		}
		env, err := protocol.DecodeEnvelope(a.GetFeatures())
		if err != nil || env.GetFeatures_() == nil {
			log.Warn("device announced without valid Features; ignored", "ref", a.GetRef(), "err", err)
			return nil
		}
		f := env.GetFeatures_()
		d := &deviceConn{s: s, bridge: b, ref: a.GetRef(), id: f.GetDeviceId(), link: s.cfg.Core.Attach(f)}
		b.refs[d.ref] = d
		s.mu.Lock()
		old := s.devices[d.id]
		s.devices[d.id] = d
		s.mu.Unlock()
		s.metrics.devices.Inc()
		if old != nil {
			log.Warn("device announced again; the earlier announcement is dropped", "device", d.id, "earlier_bridge", old.bridge.name)
			old.detach("announced again")
		}
		log.Info("device attached", "device", d.id, "transport", a.GetTransport(), "path", a.GetPath(), "model", f.GetModel())
		if err := d.call(func(l *core.Link) (core.Output, error) { return l.Open(ctx) }); err != nil {
			log.Warn("no secure channel for device", "device", d.id, "err", err)
		}
	case *apipb.BridgeMessage_Detached:
		if d := b.refs[m.Detached.GetRef()]; d != nil {
			delete(b.refs, d.ref)
			log.Info("device detached", "device", d.id, "reason", m.Detached.GetReason())
			d.detach(m.Detached.GetReason())
		}
	case *apipb.BridgeMessage_Frame:
		d := b.refs[m.Frame.GetRef()]
		if d == nil {
			log.Debug("frame for an unknown device ref; dropped", "ref", m.Frame.GetRef())
			return nil
		}
		s.metrics.frames.WithLabelValues("from_device").Inc()
		if err := d.call(func(l *core.Link) (core.Output, error) {
			out, err := l.Handle(ctx, m.Frame.GetEnvelope())
			if err != nil && channelWentDown(out) {
				s.auditChannelFailure(d.id, err)
			}
			return out, err
		}); err != nil {
			log.Debug("device frame refused", "device", d.id, "err", err)
		}
	case *apipb.BridgeMessage_Hello:
		return status.Error(codes.InvalidArgument, "hsmd: BridgeHello sent twice")
	default:
		return status.Error(codes.InvalidArgument, "hsmd: empty bridge message")
	}
	return nil
}

// bridgeStatuses describes the connected bridges.
func (s *Server) bridgeStatuses() []*apipb.BridgeStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	count := map[*bridgeConn]int32{}
	for _, d := range s.devices {
		count[d.bridge]++
	}
	var out []*apipb.BridgeStatus
	for b := range s.bridges {
		out = append(out, &apipb.BridgeStatus{Name: b.name, RemoteAddress: b.remote, Devices: count[b]})
	}
	return out
}

// attached is a snapshot of the devices bridges announced, by claimed id.
func (s *Server) attached() map[string]*deviceConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]*deviceConn, len(s.devices))
	for id, d := range s.devices {
		out[id] = d
	}
	return out
}
