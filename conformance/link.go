package conformance

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/device"
	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

// errNoAnswer means the device sent nothing (that the test waited for)
// before the deadline.
var errNoAnswer = errors.New("no answer from the device")

// link is the suite's raw end of the transport: it writes reports exactly
// as a test builds them, and rebuilds the device's messages per channel,
// so that tests see every report the device sends, errors and keepalives
// included.
type link struct {
	t       device.Transport
	reports chan []byte   // reports from the device; closed when reading fails
	readErr error         // why reports was closed; written before the close
	done    chan struct{} // closed by close
	once    sync.Once
	reasm   map[uint32]*framing.Reassembler
}

func newLink(t device.Transport) *link {
	l := &link{t: t, reports: make(chan []byte, 1024), done: make(chan struct{}), reasm: map[uint32]*framing.Reassembler{}}
	go func() {
		defer close(l.reports)
		for {
			buf := make([]byte, framing.ReportSize)
			n, err := t.Read(buf)
			if err != nil {
				l.readErr = err
				return
			}
			select {
			case l.reports <- buf[:n]:
			case <-l.done:
				l.readErr = device.ErrClosed
				return
			}
		}
	}()
	return l
}

func (l *link) close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.t.Close()
	})
	return err
}

// write sends one raw report.
func (l *link) write(r []byte) error {
	if _, err := l.t.Write(r); err != nil {
		return fmt.Errorf("send report: %w", err)
	}
	return nil
}

// send fragments data as cmd on cid and sends it.
func (l *link) send(cid uint32, cmd framing.Command, data []byte) error {
	rs, err := framing.Fragment(cid, cmd, data)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if err := l.write(r); err != nil {
			return err
		}
	}
	return nil
}

// next returns the next complete message the device sent on any channel,
// waiting up to wait.
func (l *link) next(ctx context.Context, wait time.Duration) (*framing.Message, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case r, ok := <-l.reports:
			if !ok {
				return nil, fmt.Errorf("connection to the device lost: %w", l.readErr)
			}
			if len(r) != framing.ReportSize {
				return nil, fmt.Errorf("the device sent a report of %d bytes, want %d (framing.md §1)", len(r), framing.ReportSize)
			}
			cid := binary.BigEndian.Uint32(r)
			ra := l.reasm[cid]
			if ra == nil {
				ra = &framing.Reassembler{}
				l.reasm[cid] = ra
			}
			m, err := ra.Push(r, time.Now())
			if err != nil {
				return nil, fmt.Errorf("the device sent a report that breaks framing.md §5: %w", err)
			}
			if m != nil {
				return m, nil
			}
		case <-timer.C:
			return nil, errNoAnswer
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// describe names a message for failure reports.
func describe(m *framing.Message) string {
	switch m.Cmd {
	case framing.CmdError:
		if len(m.Data) == 1 {
			return fmt.Sprintf("ERROR %02x on channel %08x", m.Data[0], m.CID)
		}
	case framing.CmdKeepalive:
		return fmt.Sprintf("KEEPALIVE on channel %08x", m.CID)
	case framing.CmdMsg:
		env, err := protocol.DecodeEnvelope(m.Data)
		if err != nil {
			return fmt.Sprintf("MSG on channel %08x that is not a valid envelope (%v)", m.CID, err)
		}
		return fmt.Sprintf("%s on channel %08x", messageText(protocol.Unwrap(env)), m.CID)
	}
	return fmt.Sprintf("%v (%d bytes) on channel %08x", m.Cmd, len(m.Data), m.CID)
}

// messageText names a message, with the code of a Failure or a
// ButtonRequest.
func messageText(m proto.Message) string {
	switch m := m.(type) {
	case nil:
		return "nothing"
	case *pb.Failure:
		return fmt.Sprintf("Failure{%v}", m.GetCode())
	case *pb.ButtonRequest:
		return fmt.Sprintf("ButtonRequest{%v}", m.GetCode())
	}
	return string(m.ProtoReflect().Descriptor().Name())
}

// initReport builds an INIT report with an arbitrary BCNT.
func initReport(cid uint32, cmd byte, bcnt int, data []byte) []byte {
	r := make([]byte, framing.ReportSize)
	binary.BigEndian.PutUint32(r, cid)
	r[4] = cmd
	binary.BigEndian.PutUint16(r[5:], uint16(bcnt))
	copy(r[7:], data)
	return r
}

// contReport builds a CONT report.
func contReport(cid uint32, seq byte, data []byte) []byte {
	r := make([]byte, framing.ReportSize)
	binary.BigEndian.PutUint32(r, cid)
	r[4] = seq
	copy(r[5:], data)
	return r
}
