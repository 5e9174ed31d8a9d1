package bridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/apiclient"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

const (
	// helloTimeout bounds the wait for CoreHello.
	helloTimeout = 30 * time.Second
	// closeTimeout bounds a clean shutdown's wait for hsmd to end the
	// stream, and for the devices to detach.
	closeTimeout = 5 * time.Second
	// maxCoreMessage bounds what hsmd may send in one message: an envelope
	// and a ref, with room for the encoding.
	maxCoreMessage = protocol.MaxEnvelopeSize + 1024
	// maxQueued bounds the messages waiting for hsmd, all devices together
	// (at most about 30 MiB of envelopes).
	maxQueued = 4096
)

// errHSMDStalled ends a stream whose queue overflowed.
var errHSMDStalled = fmt.Errorf("bridge: hsmd has not taken the last %d messages; dropping the stream", maxQueued)

// session is one relay stream to hsmd.
type session struct {
	out *outQueue
}

// hsmdLoop keeps a relay stream to hsmd until ctx ends.
func (b *Bridge) hsmdLoop(ctx context.Context, conn grpc.ClientConnInterface, client apipb.RelayClient, devicesDone <-chan struct{}) {
	failures := 0
	for attempt := 1; ; attempt++ {
		if rc, ok := conn.(interface{ ResetConnectBackoff() }); ok {
			rc.ResetConnectBackoff()
		}
		b.log.Info("connecting to hsmd", "hsmd", b.address, "attempt", attempt)
		up, err := b.runSession(ctx, client, devicesDone)
		if ctx.Err() != nil {
			return
		}
		now := b.cfg.Now()
		if !up.IsZero() {
			attempt = 0
			if now.Sub(up) >= b.cfg.Backoff.Healthy {
				failures = 0
			}
		}
		failures++
		delay := b.cfg.Backoff.Delay(failures, random)
		b.metrics.connectFails.Inc()
		b.mu.Lock()
		b.hsmd.FailedAttempts = failures
		b.hsmd.LastError = err.Error()
		b.hsmd.NextAttempt = now.Add(delay)
		b.mu.Unlock()
		if up.IsZero() {
			b.log.Warn("cannot reach hsmd", "hsmd", b.address, "err", err, "retry_in", delay.Round(time.Millisecond))
		} else {
			b.log.Warn("lost hsmd", "hsmd", b.address, "err", err, "retry_in", delay.Round(time.Millisecond))
		}
		if !sleep(ctx, delay) {
			return
		}
	}
}

// runSession runs one relay stream until it breaks or ctx ends. up is when
// it was established (zero if it never was).
func (b *Bridge) runSession(ctx context.Context, client apipb.RelayClient, devicesDone <-chan struct{}) (up time.Time, err error) {
	// The stream outlives ctx by a clean shutdown's length.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stream, err := client.Connect(sctx, grpc.MaxCallRecvMsgSize(maxCoreMessage))
	if err != nil {
		return time.Time{}, hsmdError(err)
	}
	if err := stream.Send(&apipb.BridgeMessage{Msg: &apipb.BridgeMessage_Hello{Hello: &apipb.BridgeHello{
		BridgeName: b.cfg.Name, Version: b.cfg.Version,
	}}}); err != nil {
		return time.Time{}, hsmdError(recvStatus(stream, err))
	}

	recv, recvErr := apiclient.RecvLoop(sctx, stream.Recv)

	// CoreHello first.
	hello := time.NewTimer(helloTimeout)
	defer hello.Stop()
	var fingerprint string
	select {
	case m := <-recv:
		h := m.GetHello()
		if h == nil {
			return time.Time{}, errors.New("bridge: hsmd did not start with CoreHello")
		}
		fingerprint = h.GetHsmFingerprint()
	case err := <-recvErr:
		return time.Time{}, hsmdError(err)
	case <-hello.C:
		return time.Time{}, errors.New("bridge: no CoreHello from hsmd in time")
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	}

	s := &session{out: newOutQueue(maxQueued)}
	sendDone := make(chan error, 1)
	go func() { sendDone <- b.sendLoop(sctx, stream, s.out) }()
	defer func() {
		cancel()
		<-sendDone
	}()

	up = b.cfg.Now()
	b.mu.Lock()
	b.sess = s
	b.hsmd.Connected, b.hsmd.Since, b.hsmd.HSMFingerprint = true, up, fingerprint
	b.hsmd.FailedAttempts, b.hsmd.LastError, b.hsmd.NextAttempt = 0, "", time.Time{}
	if b.hsmd.Connections > 0 {
		b.hsmd.Reconnects++
	}
	b.hsmd.Connections++
	announced := 0
	for _, d := range b.devices {
		if d.state == StateOpen {
			b.announceLocked(d, s)
			announced++
		}
	}
	b.mu.Unlock()
	b.metrics.connected.Set(1)
	b.metrics.connections.Inc()
	b.log.Info("connected to hsmd", "hsmd", b.address, "hsm_fingerprint", fingerprint, "devices", announced)

	for {
		select {
		case m := <-recv:
			if err := b.fromHSMD(s, m); err != nil {
				b.endSession()
				return up, err
			}
		case err := <-recvErr:
			b.endSession()
			return up, hsmdError(err)
		case <-s.out.full:
			b.endSession()
			return up, errHSMDStalled
		case err := <-sendDone:
			sendDone <- err // for the deferred wait
			b.endSession()
			if err == nil {
				// The queue closed because it overflowed.
				return up, errHSMDStalled
			}
			if errors.Is(err, io.EOF) {
				// The stream has ended; its status comes to Recv.
				t := time.NewTimer(closeTimeout)
				select {
				case err = <-recvErr:
				case <-t.C:
				}
				t.Stop()
			}
			return up, hsmdError(err)
		case <-ctx.Done():
			b.closeSession(s, recv, recvErr, sendDone, devicesDone)
			return up, nil
		}
	}
}

// endSession marks the relay stream down, after it broke.
func (b *Bridge) endSession() {
	b.mu.Lock()
	s := b.sess
	b.sess = nil
	b.hsmd.Connected, b.hsmd.Since = false, b.cfg.Now()
	b.mu.Unlock()
	b.metrics.connected.Set(0)
	if s != nil {
		s.out.drain()
	}
}

// closeSession ends the relay stream cleanly when the bridge stops: it
// lets the devices detach on it, sends what is queued, closes the sending
// side and waits for hsmd to end the stream, each for at most
// closeTimeout. sendDone is left holding the sender's result.
func (b *Bridge) closeSession(s *session, recv <-chan *apipb.CoreMessage, recvErr <-chan error, sendDone chan error, devicesDone <-chan struct{}) {
	t := time.NewTimer(closeTimeout)
	defer t.Stop()
	select {
	case <-devicesDone:
	case <-t.C:
	}
	b.mu.Lock()
	b.sess = nil
	b.hsmd.Connected, b.hsmd.Since = false, b.cfg.Now()
	b.mu.Unlock()
	b.metrics.connected.Set(0)
	s.out.close()

	t.Stop()
	t = time.NewTimer(closeTimeout)
	for {
		select {
		case <-recv:
		case <-recvErr:
			b.log.Info("disconnected from hsmd", "hsmd", b.address)
			return
		case err := <-sendDone:
			sendDone <- err
			if err != nil {
				return // hsmd will not see our side close
			}
			sendDone = nil // sent all and closed; wait for hsmd
		case <-t.C:
			b.log.Warn("hsmd did not close the relay stream in time", "hsmd", b.address)
			return
		}
	}
}

// sendLoop sends the queue's messages until the queue closes (then it
// closes the sending side) or sending fails.
func (b *Bridge) sendLoop(ctx context.Context, stream apipb.Relay_ConnectClient, q *outQueue) error {
	for {
		items, more := q.take(ctx)
		for i, it := range items {
			err := stream.Send(it.msg)
			it.release()
			if err != nil {
				for _, rest := range items[i+1:] {
					rest.release()
				}
				return err
			}
			if f := it.msg.GetFrame(); f != nil {
				b.metrics.frames.WithLabelValues(toHSMD).Inc()
				b.metrics.frameBytes.WithLabelValues(toHSMD).Add(float64(len(f.GetEnvelope())))
				it.from.toHSMD.Add(1)
			}
		}
		if !more {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return stream.CloseSend()
		}
	}
}

// fromHSMD handles one message from hsmd. Only a protocol violation ends
// the stream; a frame that cannot be delivered is dropped.
func (b *Bridge) fromHSMD(s *session, m *apipb.CoreMessage) error {
	f := m.GetFrame()
	if f == nil {
		return fmt.Errorf("bridge: unexpected %T from hsmd", m.GetMsg())
	}
	env := f.GetEnvelope()
	if len(env) == 0 || len(env) > protocol.MaxEnvelopeSize {
		b.metrics.framesDropped.WithLabelValues("bad_size").Inc()
		b.log.Warn("frame from hsmd of a size no device takes; dropped", "device", f.GetRef(), "bytes", len(env))
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	d := b.devices[f.GetRef()]
	if d == nil || d.announced != s {
		b.metrics.framesDropped.WithLabelValues("unknown_device").Inc()
		b.log.Debug("frame from hsmd for a device not attached; dropped", "device", f.GetRef(), "bytes", len(env))
		return nil
	}
	select {
	case d.in <- inFrame{sess: s, env: env}:
	default:
		b.metrics.framesDropped.WithLabelValues("flood").Inc()
		d.cancel(&detachError{reason: ReasonFlood, err: fmt.Errorf("bridge: device %s: hsmd sent more than %d frames the device has not taken", d.info.ID, cap(d.in))})
	}
	return nil
}

// announceLocked sends d's DeviceAttached on s. b.mu is held.
func (b *Bridge) announceLocked(d *relayedDevice, s *session) {
	d.announced = s
	s.out.push(outItem{msg: &apipb.BridgeMessage{Msg: &apipb.BridgeMessage_Attached{Attached: &apipb.DeviceAttached{
		Ref: d.info.ID, Transport: transportName(d.info.Kind), Path: d.info.Path, Features: d.features,
	}}}})
}

// detachLocked sends d's DeviceDetached if d was announced on the current
// stream. b.mu is held.
func (b *Bridge) detachLocked(d *relayedDevice, reason string) {
	if d.announced != nil && d.announced == b.sess {
		b.sess.out.push(outItem{msg: &apipb.BridgeMessage{Msg: &apipb.BridgeMessage_Detached{Detached: &apipb.DeviceDetached{
			Ref: d.info.ID, Reason: reason,
		}}}})
	}
	d.announced = nil
}

// frameMessage is a DeviceFrame for hsmd.
func frameMessage(ref string, env []byte) *apipb.BridgeMessage {
	return &apipb.BridgeMessage{Msg: &apipb.BridgeMessage_Frame{Frame: &apipb.DeviceFrame{Ref: ref, Envelope: env}}}
}

// recvStatus returns the stream's final status when err is the io.EOF
// that Send returns once the stream has ended.
func recvStatus(stream apipb.Relay_ConnectClient, err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := stream.Recv(); rerr != nil {
			return rerr
		}
	}
	return err
}

// hsmdError words a stream error for logs and status.
func hsmdError(err error) error {
	if errors.Is(err, io.EOF) {
		return errors.New("bridge: hsmd closed the relay stream")
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Unavailable:
		return fmt.Errorf("bridge: hsmd unavailable: %s", st.Message())
	case codes.Unauthenticated, codes.PermissionDenied:
		return fmt.Errorf("bridge: hsmd refused the bridge token: %s", st.Message())
	}
	return fmt.Errorf("bridge: relay stream: %s: %s", st.Code(), st.Message())
}
