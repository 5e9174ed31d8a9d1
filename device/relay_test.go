package device

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/emulator"
	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

// relayTestContext bounds a test so that a broken one fails instead of
// hanging; no assertion depends on it.
func relayTestContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func relayEmulator(t *testing.T, seed string) *emulator.Emulator {
	t.Helper()
	e, err := emulator.Start(emulator.Options{
		StateDir: t.TempDir(), Rand: emulator.SeededRand(seed),
		// Frequent keepalives, so that Receive meets some while it waits.
		KeepaliveInterval: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// relaySilence is the relay tests' client silence timeout.
const relaySilence = 500 * time.Millisecond

func relayClient(t *testing.T, ctx context.Context, tr Transport) *Client {
	t.Helper()
	// A silence timeout far shorter than the user's wait below (Receive
	// must not apply it), yet long enough for the calls that do apply it
	// on a loaded machine.
	c, err := NewClient(ctx, tr, ClientOptions{Name: "relay-test", SilenceTimeout: relaySilence})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func encode(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := protocol.EncodeEnvelope(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func receiveMessage(t *testing.T, ctx context.Context, c *Client) proto.Message {
	t.Helper()
	b, err := c.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	env, err := protocol.DecodeEnvelope(b)
	if err != nil {
		t.Fatal(err)
	}
	return protocol.Unwrap(env)
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

func TestRelaySendReceive(t *testing.T) {
	ctx := relayTestContext(t)
	e := relayEmulator(t, "relay")
	tr, err := DialUDP(e.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := relayClient(t, ctx, tr)

	// A Call before relaying is allowed.
	f, err := c.Features(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// A plain request and its answer.
	if err := c.Send(ctx, encode(t, &pb.GetFeatures{})); err != nil {
		t.Fatal(err)
	}
	if got, ok := receiveMessage(t, ctx, c).(*pb.Features); !ok || !proto.Equal(got, f) {
		t.Fatalf("GetFeatures answered %v", got)
	}

	// A request that waits for the user: the relay, not the client,
	// answers the ButtonRequest, and the answer comes when the user acts,
	// after keepalives and well past the client's silence timeout.
	if err := c.Send(ctx, encode(t, &pb.Ping{Message: "relayed", ButtonProtection: true})); err != nil {
		t.Fatal(err)
	}
	if _, ok := receiveMessage(t, ctx, c).(*pb.ButtonRequest); !ok {
		t.Fatal("no ButtonRequest")
	}
	if err := c.Send(ctx, encode(t, &pb.ButtonAck{})); err != nil {
		t.Fatal(err)
	}
	answer := make(chan proto.Message, 1)
	go func() {
		b, err := c.Receive(ctx)
		if err != nil {
			t.Error(err)
			answer <- nil
			return
		}
		env, err := protocol.DecodeEnvelope(b)
		if err != nil {
			t.Error(err)
			answer <- nil
			return
		}
		answer <- protocol.Unwrap(env)
	}()
	waitScreen(t, ctx, e.Device(), "prompt")
	time.Sleep(3 * relaySilence) // the user takes longer than the silence timeout
	if err := e.Device().Press(emulator.ButtonConfirm); err != nil {
		t.Fatal(err)
	}
	if got, ok := (<-answer).(*pb.Success); !ok || got.Message != "relayed" {
		t.Fatalf("confirmed ping answered %v", got)
	}

	// A Cancel the relay passes on ends the wait; the device's answer to
	// it comes back like any other message.
	if err := c.Send(ctx, encode(t, &pb.Ping{Message: "cancel me", ButtonProtection: true})); err != nil {
		t.Fatal(err)
	}
	if _, ok := receiveMessage(t, ctx, c).(*pb.ButtonRequest); !ok {
		t.Fatal("no ButtonRequest")
	}
	if err := c.Send(ctx, encode(t, &pb.ButtonAck{})); err != nil {
		t.Fatal(err)
	}
	waitScreen(t, ctx, e.Device(), "prompt")
	if err := c.Send(ctx, encode(t, &pb.Cancel{})); err != nil {
		t.Fatal(err)
	}
	if got, ok := receiveMessage(t, ctx, c).(*pb.Failure); !ok || got.Code != pb.FailureCode_FAILURE_ACTION_CANCELLED {
		t.Fatalf("cancelled ping answered %v", got)
	}

	// Limits and endings.
	if err := c.Send(ctx, make([]byte, protocol.MaxEnvelopeSize+1)); err == nil {
		t.Error("Send took an oversized envelope")
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Receive(done); !errors.Is(err, context.Canceled) {
		t.Errorf("Receive with an ended context: %v", err)
	}
	if err := c.Send(done, encode(t, &pb.GetFeatures{})); !errors.Is(err, context.Canceled) {
		t.Errorf("Send with an ended context: %v", err)
	}
	c.Close()
	if _, err := c.Receive(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Receive after Close: %v", err)
	}
}

// TestRelayReportErrors drives the client from a scripted device on a pipe:
// framing errors and malformed messages are reported, and reading goes on.
func TestRelayReportErrors(t *testing.T) {
	ctx := relayTestContext(t)
	host, dev := Pipe()
	const cid = 0x01020304
	go func() {
		// Answer the channel allocation, then send what the test needs.
		buf := make([]byte, framing.ReportSize)
		var reasm framing.Reassembler
		for {
			n, err := dev.Read(buf)
			if err != nil {
				return
			}
			m, err := reasm.Push(buf[:n], time.Now())
			if err != nil || m == nil || m.Cmd != framing.CmdInit {
				continue
			}
			q, err := framing.ParseInitRequest(m.Data)
			if err != nil {
				return
			}
			resp := framing.InitResponse{Nonce: q.Nonce, CID: cid, FramingVersion: framing.FramingVersion}
			send := func(cid uint32, cmd framing.Command, data []byte) {
				reports, err := framing.Fragment(cid, cmd, data)
				if err != nil {
					panic(err)
				}
				for _, r := range reports {
					dev.Write(r)
				}
			}
			send(framing.BroadcastCID, framing.CmdInit, resp.Marshal())
			send(cid, framing.CmdKeepalive, []byte{byte(framing.KeepaliveUserNeeded)})
			send(cid, framing.CmdError, []byte{byte(framing.ErrCodeInvalidChannel)})
			send(cid+1, framing.CmdMsg, []byte("another host's"))
			// A CONT report with no INIT before it.
			long, _ := framing.Fragment(cid, framing.CmdMsg, make([]byte, 100))
			dev.Write(long[1])
			send(cid, framing.CmdMsg, []byte("after"))
		}
	}()
	c := relayClient(t, ctx, host)
	_, err := c.Receive(ctx)
	var re *ReportError
	if !errors.As(err, &re) || re.Code != framing.ErrCodeInvalidChannel {
		t.Fatalf("first Receive: %v, want a report error", err)
	}
	if _, err := c.Receive(ctx); !errors.Is(err, ErrMalformedMessage) {
		t.Fatalf("second Receive: %v, want a malformed message", err)
	}
	b, err := c.Receive(ctx)
	if err != nil || string(b) != "after" {
		t.Fatalf("third Receive: %q, %v", b, err)
	}
	dev.Close()
	if _, err := c.Receive(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Receive after the device end closed: %v", err)
	}
}
