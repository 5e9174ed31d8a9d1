package device

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
)

// ErrMalformedMessage is wrapped by [Client.Receive] when the device's
// reports do not make up a valid message (a report out of sequence, say).
// The message is lost; the channel may still work.
var ErrMalformedMessage = errors.New("device: malformed message from the device")

// Send writes envelope, an encoded Envelope, to the device as one message
// (CmdMsg) on the client's channel. It does not wait for an answer and does
// not look inside the envelope.
//
// Send and [Client.Receive] are the two halves of a message pipe, for a
// relay (the bridge) that carries envelopes between the custody core and a
// device without reading them: most are Noise ciphertext it cannot open,
// so it cannot use [Client.Call], which pairs each request with one answer
// and answers ButtonRequests itself (the core does that, inside the
// channel). Send writes whatever the core sent; Receive returns each
// message the device sends, whenever it sends it, including an answer that
// comes minutes later because the device waited for its user.
//
// Send and Receive are exclusive with Call: once a client relays, it must
// not be used for Call (a Call would take the relay's messages as its own
// answers, and Receive holds Call off while it waits). Call before is
// fine, for example [Client.Features] to learn what to announce, provided
// it succeeded: a Call abandoned half-way leaves an answer in flight that
// Receive would return.
//
// Send fails if the envelope is larger than [protocol.MaxEnvelopeSize] or
// the transport fails. ctx is checked before writing; a write in progress
// is not interruptible, but [Client.Close] ends it.
//
// Send may be called while another goroutine waits in [Client.Receive].
func (c *Client) Send(ctx context.Context, envelope []byte) error {
	if len(envelope) > protocol.MaxEnvelopeSize {
		return fmt.Errorf("device %s: message of %d bytes exceeds the limit of %d", c.name, len(envelope), protocol.MaxEnvelopeSize)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("device %s: %w", c.name, context.Cause(ctx))
	}
	return c.write(c.cid, framing.CmdMsg, envelope)
}

// Receive returns the payload of the next message (CmdMsg) the device sends
// on the client's channel: an encoded Envelope, not decoded and not checked.
// It waits as long as it takes (devices wait for their users), until ctx
// ends or the transport fails; keepalives and reports on other channels
// are skipped.
//
// Errors: a CmdError from the device is a [*ReportError]; reports that do
// not make up a valid message wrap [ErrMalformedMessage]; after either, the
// next Receive goes on reading. A transport that failed or was closed is
// reported as an error wrapping the transport's error (for a closed client,
// [ErrClosed]); after it, Receive fails again at once.
//
// One goroutine at a time may call Receive.
func (c *Client) Receive(ctx context.Context) ([]byte, error) {
	c.callMu.Lock()
	defer c.callMu.Unlock()
	for {
		var r []byte
		select {
		case rep, ok := <-c.reports:
			if !ok {
				return nil, fmt.Errorf("device %s: connection lost: %w", c.name, c.readErr)
			}
			r = rep
		case <-ctx.Done():
			return nil, fmt.Errorf("device %s: %w", c.name, context.Cause(ctx))
		}
		if reportCID(r) != c.cid {
			continue // another host's channel
		}
		m, err := c.reasm.Push(r, time.Now())
		if err != nil {
			return nil, fmt.Errorf("device %s: %w: %w", c.name, ErrMalformedMessage, err)
		}
		if m == nil {
			continue
		}
		switch m.Cmd {
		case framing.CmdMsg:
			return m.Data, nil
		case framing.CmdError:
			code := framing.ErrCodeOther
			if len(m.Data) == 1 {
				code = framing.ErrorCode(m.Data[0])
			}
			return nil, &ReportError{Device: c.name, Code: code}
		default:
			// Keepalives, and late answers to channel commands (CmdInit,
			// CmdPing) of an earlier Call: not messages.
			continue
		}
	}
}
