package device

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

// DefaultSilenceTimeout is how long a [Client] waits without hearing
// anything from the device before it gives up on a request. A device that
// waits for its user sends a keepalive at least every second, so silence
// this long means the device is gone or hung.
const DefaultSilenceTimeout = 5 * time.Second

// ErrNoAnswer means the device went silent for longer than the client's
// silence timeout.
var ErrNoAnswer = errors.New("device: no answer")

// FailureError is a Failure the device answered.
type FailureError struct {
	// Device names the device, as in [ClientOptions].Name.
	Device  string
	Code    pb.FailureCode
	Message string
}

func (e *FailureError) Error() string {
	code := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(e.Code.String(), "FAILURE_"), "_", " "))
	if e.Message == "" {
		return fmt.Sprintf("device %s: %s", e.Device, code)
	}
	return fmt.Sprintf("device %s: %s: %s", e.Device, code, e.Message)
}

// ReportError is a framing error the device reported in a CmdError report.
type ReportError struct {
	Device string
	Code   framing.ErrorCode
}

func (e *ReportError) Error() string {
	return fmt.Sprintf("device %s: reported framing error 0x%02x", e.Device, byte(e.Code))
}

// ClientOptions configures a [Client].
type ClientOptions struct {
	// Name names the device in errors, e.g. the id from [Discover]
	// (default: the transport's path).
	Name string
	// OnButton, if set, is called when the device asks for its user
	// (ButtonRequest), before the client answers ButtonAck; a caller can
	// tell its user to look at the device. If it returns an error, the
	// client cancels the request and returns that error.
	OnButton func(ctx context.Context, req *pb.ButtonRequest) error
	// SilenceTimeout is how long to wait without any report from the
	// device, keepalives included (default [DefaultSilenceTimeout]).
	SilenceTimeout time.Duration
	// Rand is the source of the channel-allocation nonce (default
	// crypto/rand).
	Rand io.Reader
	// Logger receives debug logs (default: discard).
	Logger *slog.Logger
}

// Client speaks the device protocol to one device over a [Transport]: it
// allocates a channel, sends requests, answers ButtonRequests, follows
// keepalives and turns Failures into [*FailureError]s.
//
// One request runs at a time (concurrent calls wait); [Client.Cancel] may
// be called from another goroutine while a request waits for the user.
type Client struct {
	t       Transport
	name    string
	opts    ClientOptions
	silence time.Duration
	log     *slog.Logger
	init    framing.InitResponse
	cid     uint32

	reports chan []byte   // reports read from t; closed when reading fails
	readErr error         // why reports was closed; written before the close
	stop    chan struct{} // closed by Close
	once    sync.Once
	readWG  sync.WaitGroup

	writeMu sync.Mutex // serialises writes to t

	callMu sync.Mutex // one request at a time; guards the fields below
	reasm  framing.Reassembler
	// stale is set when a request was abandoned: the device may still send
	// its answer, so the next request first resynchronises the channel.
	stale bool
}

// NewClient allocates a channel on the device behind t and returns a
// client for it. The client owns t: [Client.Close] closes it, and so does
// a failed NewClient.
func NewClient(ctx context.Context, t Transport, opts ClientOptions) (*Client, error) {
	c := &Client{
		t:       t,
		name:    opts.Name,
		opts:    opts,
		silence: opts.SilenceTimeout,
		log:     opts.Logger,
		reports: make(chan []byte, 256),
		stop:    make(chan struct{}),
	}
	if c.name == "" {
		c.name = "(unnamed)"
		if s, ok := t.(fmt.Stringer); ok {
			c.name = s.String()
		}
	}
	if c.silence <= 0 {
		c.silence = DefaultSilenceTimeout
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.opts.Rand == nil {
		c.opts.Rand = rand.Reader
	}
	c.readWG.Go(c.readLoop)
	resp, err := c.allocate(ctx, framing.BroadcastCID)
	if err != nil {
		c.Close()
		return nil, err
	}
	c.init, c.cid = resp, resp.CID
	c.log.Debug("device: channel allocated", "device", c.name, "cid", fmt.Sprintf("%08x", c.cid))
	return c, nil
}

// Name returns the name used in errors.
func (c *Client) Name() string { return c.name }

// Channel returns the allocated channel id.
func (c *Client) Channel() uint32 { return c.cid }

// Init returns the device's answer to channel allocation (framing and
// firmware versions).
func (c *Client) Init() framing.InitResponse { return c.init }

// Close closes the transport. A request in progress fails.
func (c *Client) Close() error {
	var err error
	c.once.Do(func() {
		close(c.stop)
		err = c.t.Close()
		c.readWG.Wait()
	})
	return err
}

func (c *Client) readLoop() {
	defer close(c.reports)
	for {
		buf := make([]byte, framing.ReportSize)
		n, err := c.t.Read(buf)
		if err != nil {
			c.readErr = err
			return
		}
		select {
		case c.reports <- buf[:n]:
		case <-c.stop:
			c.readErr = fmt.Errorf("device %s: client closed: %w", c.name, ErrClosed)
			return
		}
	}
}

// next returns the next report from the device, waiting until ctx ends or
// the device stays silent for the silence timeout.
func (c *Client) next(ctx context.Context, silence *time.Timer) ([]byte, error) {
	select {
	case r, ok := <-c.reports:
		if !ok {
			return nil, fmt.Errorf("device %s: connection lost: %w", c.name, c.readErr)
		}
		silence.Reset(c.silence)
		return r, nil
	case <-silence.C:
		return nil, fmt.Errorf("%w from %s for %s (device gone or hung?)", ErrNoAnswer, c.name, c.silence)
	case <-ctx.Done():
		return nil, fmt.Errorf("device %s: %w", c.name, context.Cause(ctx))
	}
}

func (c *Client) write(cid uint32, cmd framing.Command, data []byte) error {
	reports, err := framing.Fragment(cid, cmd, data)
	if err != nil {
		return fmt.Errorf("device %s: %w", c.name, err)
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	for _, r := range reports {
		if _, err := c.t.Write(r); err != nil {
			return fmt.Errorf("device %s: send: %w", c.name, err)
		}
	}
	return nil
}

// allocate sends CmdInit on cid (broadcast to allocate a channel, or the
// client's own to resynchronise it) and waits for the answer with the same
// nonce, discarding every other report.
func (c *Client) allocate(ctx context.Context, cid uint32) (framing.InitResponse, error) {
	var q framing.InitRequest
	if _, err := io.ReadFull(c.opts.Rand, q.Nonce[:]); err != nil {
		return framing.InitResponse{}, fmt.Errorf("device %s: nonce: %w", c.name, err)
	}
	busyUntil := time.Now().Add(c.silence)
send:
	if err := c.write(cid, framing.CmdInit, q.Marshal()); err != nil {
		return framing.InitResponse{}, err
	}
	silence := time.NewTimer(c.silence)
	defer silence.Stop()
	var reasm framing.Reassembler
	for {
		r, err := c.next(ctx, silence)
		if err != nil {
			return framing.InitResponse{}, err
		}
		m, err := reasm.Push(r, time.Now())
		if err != nil || m == nil || m.CID != cid {
			continue
		}
		if m.Cmd == framing.CmdError && len(m.Data) == 1 {
			code := framing.ErrorCode(m.Data[0])
			if code == framing.ErrCodeChannelBusy && time.Now().Before(busyUntil) {
				// Another host's message is being received: retry.
				if err := c.settle(ctx); err != nil {
					return framing.InitResponse{}, err
				}
				goto send
			}
			return framing.InitResponse{}, &ReportError{Device: c.name, Code: code}
		}
		if m.Cmd != framing.CmdInit {
			continue
		}
		resp, err := framing.ParseInitResponse(m.Data)
		if err != nil {
			return framing.InitResponse{}, fmt.Errorf("device %s: channel allocation: %w", c.name, err)
		}
		if resp.Nonce != q.Nonce {
			continue // an answer to another host's request
		}
		if cid != framing.BroadcastCID && resp.CID != cid {
			return framing.InitResponse{}, fmt.Errorf("device %s: resynchronising channel %08x moved it to %08x", c.name, cid, resp.CID)
		}
		return resp, nil
	}
}

// Call sends msg (a message the envelope carries, such as *pb.GetFeatures)
// and returns the device's answer. On the way it answers ButtonRequests
// (see [ClientOptions].OnButton) and follows keepalives. A Failure answer
// is returned as a [*FailureError], a CmdError as a [*ReportError]. A
// request the device refuses with CHANNEL_BUSY (it is receiving another
// host's message) is sent again, for up to the silence timeout. If ctx
// ends first, the request is cancelled on the device and ctx's error is
// returned (wrapped).
func (c *Client) Call(ctx context.Context, msg proto.Message) (proto.Message, error) {
	data, err := protocol.EncodeEnvelope(msg)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", c.name, err)
	}
	c.callMu.Lock()
	defer c.callMu.Unlock()
	if c.stale {
		if _, err := c.allocate(ctx, c.cid); err != nil {
			return nil, err
		}
		c.stale, c.reasm = false, framing.Reassembler{}
	}
	busyUntil := time.Now().Add(c.silence)
	for {
		if err := c.write(c.cid, framing.CmdMsg, data); err != nil {
			c.stale = true
			return nil, err
		}
		answer, err := c.await(ctx)
		var re *ReportError
		if errors.As(err, &re) && re.Code == framing.ErrCodeChannelBusy && time.Now().Before(busyUntil) {
			// The device is receiving another host's message and refused
			// ours; retry once that is done.
			if err := c.settle(ctx); err != nil {
				return nil, err
			}
			continue
		}
		return c.finish(answer, err)
	}
}

// busyRetryDelay is how long a request refused with CHANNEL_BUSY waits
// before it is sent again.
const busyRetryDelay = 100 * time.Millisecond

// settle waits busyRetryDelay, then discards the reports received so far:
// the device's errors for the rest of a refused message.
func (c *Client) settle(ctx context.Context) error {
	t := time.NewTimer(busyRetryDelay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return fmt.Errorf("device %s: %w", c.name, context.Cause(ctx))
	}
	c.reasm = framing.Reassembler{}
	for {
		select {
		case _, ok := <-c.reports:
			if !ok {
				return fmt.Errorf("device %s: connection lost: %w", c.name, c.readErr)
			}
		default:
			return nil
		}
	}
}

// finish turns the outcome of a request into Call's result.
func (c *Client) finish(answer proto.Message, err error) (proto.Message, error) {
	if err != nil {
		var fe *FailureError
		var re *ReportError
		if !errors.As(err, &fe) && !errors.As(err, &re) {
			// The request was abandoned half-way: cancel it, and
			// resynchronise before the next one.
			c.stale = true
			_ = c.write(c.cid, framing.CmdCancel, nil)
		}
		return nil, err
	}
	return answer, nil
}

// await reads until the answer to the request in flight.
func (c *Client) await(ctx context.Context) (proto.Message, error) {
	silence := time.NewTimer(c.silence)
	defer silence.Stop()
	for {
		r, err := c.next(ctx, silence)
		if err != nil {
			return nil, err
		}
		if cid := reportCID(r); cid != c.cid {
			continue // another host's channel
		}
		m, err := c.reasm.Push(r, time.Now())
		if err != nil {
			return nil, fmt.Errorf("device %s: malformed answer: %w", c.name, err)
		}
		if m == nil {
			continue
		}
		switch m.Cmd {
		case framing.CmdKeepalive:
			continue
		case framing.CmdError:
			code := framing.ErrCodeOther
			if len(m.Data) == 1 {
				code = framing.ErrorCode(m.Data[0])
			}
			return nil, &ReportError{Device: c.name, Code: code}
		case framing.CmdMsg:
		default:
			return nil, fmt.Errorf("device %s: unexpected %v answer", c.name, m.Cmd)
		}
		env, err := protocol.DecodeEnvelope(m.Data)
		if err != nil {
			return nil, fmt.Errorf("device %s: bad answer: %w", c.name, err)
		}
		switch a := protocol.Unwrap(env).(type) {
		case *pb.Failure:
			return nil, &FailureError{Device: c.name, Code: a.Code, Message: a.Message}
		case *pb.ButtonRequest:
			if c.opts.OnButton != nil {
				if err := c.opts.OnButton(ctx, a); err != nil {
					return nil, err
				}
			}
			ack, _ := protocol.EncodeEnvelope(&pb.ButtonAck{})
			if err := c.write(c.cid, framing.CmdMsg, ack); err != nil {
				return nil, err
			}
			silence.Reset(c.silence)
		default:
			return a, nil
		}
	}
}

// reportCID returns the channel id at the start of a report.
func reportCID(r []byte) uint32 {
	if len(r) < 4 {
		return framing.ReservedCID
	}
	return uint32(r[0])<<24 | uint32(r[1])<<16 | uint32(r[2])<<8 | uint32(r[3])
}

// Cancel asks the device to abort the request in progress on this
// client's channel; that request then fails with a [*FailureError] of code
// FAILURE_ACTION_CANCELLED. With nothing in progress the device ignores it.
func (c *Client) Cancel() error {
	return c.write(c.cid, framing.CmdCancel, nil)
}

// Features asks the device to describe itself.
func (c *Client) Features(ctx context.Context) (*pb.Features, error) {
	a, err := c.Call(ctx, &pb.GetFeatures{})
	if err != nil {
		return nil, err
	}
	f, ok := a.(*pb.Features)
	if !ok {
		return nil, fmt.Errorf("device %s: answered GetFeatures with %T", c.name, a)
	}
	return f, nil
}

// PingRequest is a Ping: the device echoes Message, after its user
// confirms it on the screen if ButtonProtection is set.
type PingRequest struct {
	Message          string
	ButtonProtection bool
}

// Ping sends a Ping and returns the echoed message. A user's refusal
// fails with a [*FailureError] of code FAILURE_ACTION_REJECTED.
func (c *Client) Ping(ctx context.Context, req PingRequest) (string, error) {
	a, err := c.Call(ctx, &pb.Ping{Message: req.Message, ButtonProtection: req.ButtonProtection})
	if err != nil {
		return "", err
	}
	s, ok := a.(*pb.Success)
	if !ok {
		return "", fmt.Errorf("device %s: answered Ping with %T", c.name, a)
	}
	if s.Message != req.Message {
		return "", fmt.Errorf("device %s: ping echoed %q, sent %q", c.name, s.Message, req.Message)
	}
	return s.Message, nil
}
