package framing

import (
	"fmt"
	"time"
)

// DefaultTimeout is how long a [Reassembler] waits between two reports of
// one message before it gives the message up.
const DefaultTimeout = 3 * time.Second

// Reassembler rebuilds messages from reports received in order on one
// transport. It handles one message at a time, as a device does: while a
// message is in progress, reports for other channels are refused with
// [ErrWrongChannel] (code [ErrCodeChannelBusy]) and the message in progress
// is kept. Reports of the wrong size or on [ReservedCID] are refused and
// also leave it alone. Any other error drops the message in progress.
//
// The zero value is ready to use. A Reassembler is not safe for concurrent
// use.
type Reassembler struct {
	// Timeout is the longest gap allowed between two reports of one
	// message; zero means DefaultTimeout.
	Timeout time.Duration

	busy    bool
	cid     uint32
	cmd     Command
	want    int
	buf     []byte
	nextSeq uint8
	last    time.Time
}

// InProgress reports whether a message is partly received, and on which
// channel. It does not check the timeout; see [Reassembler.Expire].
func (r *Reassembler) InProgress() (cid uint32, ok bool) {
	if !r.busy {
		return 0, false
	}
	return r.cid, true
}

func (r *Reassembler) timeout() time.Duration {
	if r.Timeout > 0 {
		return r.Timeout
	}
	return DefaultTimeout
}

func (r *Reassembler) reset() {
	r.busy = false
	r.cid = 0
	r.buf = nil
}

// Expire drops the message in progress if more than the timeout has passed
// between its last report and now, and returns the [ErrTimeout] error to
// report on its channel. It returns nil when nothing expired. A receiver
// calls it from a timer, so that the sender of an abandoned message hears
// about it without sending anything more.
func (r *Reassembler) Expire(now time.Time) *FrameError {
	if !r.busy || now.Sub(r.last) <= r.timeout() {
		return nil
	}
	cid := r.cid
	r.reset()
	return frameErr(ErrTimeout, cid, ErrCodeMsgTimeout)
}

// Push feeds one report received at now. It returns the message when the
// report completes one, (nil, nil) when more reports are needed, and a
// [*FrameError] when the report breaks a rule; it never returns both a
// message and an error.
//
// Push first drops a message in progress that has expired (see
// [Reassembler.Expire]). A CONT report for that message then fails with
// [ErrTimeout]; any other report is handled as if no message were in
// progress, so a stalled sender cannot make the next sender's message
// vanish.
func (r *Reassembler) Push(raw []byte, now time.Time) (*Message, error) {
	expired, _ := r.InProgress()
	timedOut := r.Expire(now) != nil
	rep, err := parseReport(raw)
	if err != nil {
		return nil, err
	}
	if rep.cid == ReservedCID {
		return nil, frameErr(ErrReservedChannel, rep.cid, ErrCodeInvalidChannel)
	}
	if !rep.isInit {
		if timedOut && rep.cid == expired {
			return nil, frameErr(ErrTimeout, rep.cid, ErrCodeMsgTimeout)
		}
		return r.pushCont(rep, now)
	}
	switch {
	case r.busy && rep.cid != r.cid:
		return nil, frameErr(ErrWrongChannel, rep.cid, ErrCodeChannelBusy)
	case r.busy:
		return nil, r.fail(rep.cid, fmt.Errorf("%w: %v while %v is in progress", ErrInterleaved, rep.cmd, r.cmd), ErrCodeInvalidSeq)
	case !rep.cmd.Known():
		return nil, frameErr(fmt.Errorf("%w: %v", ErrUnknownCommand, rep.cmd), rep.cid, ErrCodeInvalidCmd)
	case !rep.cmd.allowedOn(rep.cid):
		return nil, frameErr(fmt.Errorf("%w: %v", ErrBroadcastMisuse, rep.cmd), rep.cid, ErrCodeInvalidChannel)
	case int(rep.bcnt) > MaxMessageSize:
		return nil, frameErr(fmt.Errorf("%w: %d bytes, limit %d", ErrMessageTooLong, rep.bcnt, MaxMessageSize), rep.cid, ErrCodeInvalidLen)
	}
	if int(rep.bcnt) <= InitDataSize {
		data := append([]byte(nil), rep.payload[:rep.bcnt]...)
		return &Message{CID: rep.cid, Cmd: rep.cmd, Data: data}, nil
	}
	r.busy, r.cid, r.cmd, r.want, r.nextSeq, r.last = true, rep.cid, rep.cmd, int(rep.bcnt), 0, now
	r.buf = append(make([]byte, 0, r.want), rep.payload...)
	return nil, nil
}

func (r *Reassembler) pushCont(rep report, now time.Time) (*Message, error) {
	switch {
	case !r.busy:
		return nil, frameErr(fmt.Errorf("%w: sequence %d", ErrUnexpectedCont, rep.seq), rep.cid, ErrCodeInvalidSeq)
	case rep.cid != r.cid:
		return nil, frameErr(ErrWrongChannel, rep.cid, ErrCodeChannelBusy)
	case rep.seq != r.nextSeq:
		return nil, r.fail(rep.cid, fmt.Errorf("%w: got %d, want %d", ErrWrongSequence, rep.seq, r.nextSeq), ErrCodeInvalidSeq)
	}
	n := min(r.want-len(r.buf), len(rep.payload))
	r.buf = append(r.buf, rep.payload[:n]...)
	r.nextSeq++
	r.last = now
	if len(r.buf) < r.want {
		return nil, nil
	}
	m := &Message{CID: r.cid, Cmd: r.cmd, Data: r.buf}
	r.reset()
	return m, nil
}

// fail drops the message in progress and returns the error for cid.
func (r *Reassembler) fail(cid uint32, err error, code ErrorCode) *FrameError {
	r.reset()
	return frameErr(err, cid, code)
}
