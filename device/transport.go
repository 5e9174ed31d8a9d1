package device

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/opencustodynet/opencustody/protocol/framing"
)

// Transport carries whole 64-byte reports between the host and one device.
// The HID, UDP and in-process transports are interchangeable; nothing above
// a Transport sees a HID handle or a socket.
//
// Write sends exactly one report: len(p) must be [framing.ReportSize], or
// Write fails without sending. Read blocks until one report arrives, copies
// it into p (which must hold [framing.ReportSize] bytes) and returns its
// length; a transport drops whatever is not a whole report (a stray
// datagram, say), so Read never returns a partial one. Close releases the
// device and makes a blocked Read return; after Close, Read and Write
// return an error wrapping [ErrClosed].
//
// A Transport must allow one goroutine in Read while another calls Write or
// Close.
type Transport interface {
	Read(p []byte) (int, error)
	Write(p []byte) (int, error)
	Close() error
}

// ErrClosed is returned (wrapped) by a transport after Close. It is
// net.ErrClosed, so code written for sockets recognises it too.
var ErrClosed = net.ErrClosed

// checkReport validates the argument of a transport's Write.
func checkReport(p []byte) error {
	if len(p) != framing.ReportSize {
		return fmt.Errorf("device: report is %d bytes, want %d", len(p), framing.ReportSize)
	}
	return nil
}

// Pipe returns the two ends of an in-process transport: reports written to
// one end are read from the other, in order. Closing either end closes
// both. Each direction buffers a few hundred reports; Write blocks beyond
// that until the other side reads. It is how tests run a device in the same
// process:
//
//	host, dev := device.Pipe()
//	go emulatorDevice.ServeReports(dev)
//	c, err := device.NewClient(ctx, host, device.ClientOptions{})
func Pipe() (host, dev Transport) {
	ab := make(chan []byte, 512)
	ba := make(chan []byte, 512)
	done := &pipeDone{ch: make(chan struct{})}
	return &pipeEnd{in: ba, out: ab, done: done}, &pipeEnd{in: ab, out: ba, done: done}
}

type pipeDone struct {
	once sync.Once
	ch   chan struct{}
}

type pipeEnd struct {
	in   <-chan []byte
	out  chan<- []byte
	done *pipeDone
}

func (p *pipeEnd) Read(b []byte) (int, error) {
	select {
	case <-p.done.ch:
		return 0, fmt.Errorf("device: pipe: %w", ErrClosed)
	default:
	}
	select {
	case r := <-p.in:
		if len(b) < len(r) {
			return 0, fmt.Errorf("device: pipe: read buffer of %d bytes, want %d", len(b), len(r))
		}
		return copy(b, r), nil
	case <-p.done.ch:
		return 0, fmt.Errorf("device: pipe: %w", ErrClosed)
	}
}

func (p *pipeEnd) Write(b []byte) (int, error) {
	if err := checkReport(b); err != nil {
		return 0, err
	}
	select {
	case <-p.done.ch:
		return 0, fmt.Errorf("device: pipe: %w", ErrClosed)
	default:
	}
	select {
	case p.out <- append([]byte(nil), b...):
		return len(b), nil
	case <-p.done.ch:
		return 0, fmt.Errorf("device: pipe: %w", ErrClosed)
	}
}

func (p *pipeEnd) String() string { return "pipe" }

func (p *pipeEnd) Close() error {
	p.done.once.Do(func() { close(p.done.ch) })
	return nil
}

// UDP carriage of the emulator (firmware-spec/device.md, "Emulator
// transport"): one report per datagram, and an 8-byte liveness ping.
const (
	// LivenessPing is sent to learn whether an emulator listens on a port.
	LivenessPing = "PINGPING"
	// LivenessPong is the emulator's answer.
	LivenessPong = "PONGPONG"
)

// udpTransport is a connected UDP socket to one emulator.
type udpTransport struct {
	conn *net.UDPConn
	addr string
}

// DialUDP returns a transport to the emulator listening at addr
// ("127.0.0.1:21424"). Nothing is sent; use [ProbeUDP] to check that an
// emulator answers.
func DialUDP(addr string) (Transport, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("device: emulator address %q: %w", addr, err)
	}
	conn, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		return nil, fmt.Errorf("device: emulator at %s: %w", addr, err)
	}
	return &udpTransport{conn: conn, addr: addr}, nil
}

func (u *udpTransport) Read(p []byte) (int, error) {
	if len(p) < framing.ReportSize {
		return 0, fmt.Errorf("device: read buffer of %d bytes, want %d", len(p), framing.ReportSize)
	}
	buf := make([]byte, 2048)
	for {
		n, err := u.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return 0, fmt.Errorf("device: emulator at %s: %w", u.addr, ErrClosed)
			}
			return 0, fmt.Errorf("device: emulator at %s: %w", u.addr, err)
		}
		if n == framing.ReportSize {
			return copy(p, buf[:n]), nil
		}
		// Not a report (a late liveness answer, or garbage): dropped.
	}
}

func (u *udpTransport) Write(p []byte) (int, error) {
	if err := checkReport(p); err != nil {
		return 0, err
	}
	n, err := u.conn.Write(p)
	if err != nil {
		if errors.Is(err, net.ErrClosed) {
			return 0, fmt.Errorf("device: emulator at %s: %w", u.addr, ErrClosed)
		}
		return n, fmt.Errorf("device: emulator at %s: %w", u.addr, err)
	}
	return n, nil
}

func (u *udpTransport) Close() error { return u.conn.Close() }

func (u *udpTransport) String() string { return "udp://" + u.addr }

// DefaultProbeTimeout is how long [ProbeUDP] waits for an answer when the
// context has no deadline.
const DefaultProbeTimeout = 500 * time.Millisecond
