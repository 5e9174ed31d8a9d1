package device

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/karalabe/hid"
)

// Kinds of device.
const (
	KindUSB      = "usb"
	KindEmulator = "emulator"
)

// DefaultEmulatorPort is the emulator's default UDP port, probed by
// [Discover] when no ports are given.
const DefaultEmulatorPort = 21424

// Info describes a device found by [Discover].
type Info struct {
	// ID is stable and short: "emu-PORT" for an emulator on the loopback
	// address, "emu-HOST-PORT" on another address, "hid-" and 8 hex digits
	// for a USB device (from its serial number, or its USB path if it has
	// none).
	ID string `json:"id"`
	// Kind is [KindUSB] or [KindEmulator].
	Kind string `json:"kind"`
	// Path opens the device with [Open]: "udp://HOST:PORT" for an
	// emulator, hidapi's path for a USB device.
	Path string `json:"path"`
	// USB descriptor strings, empty for emulators.
	Manufacturer string `json:"manufacturer,omitempty"`
	Product      string `json:"product,omitempty"`
	Serial       string `json:"serial,omitempty"`
}

// USBStatus says what USB discovery could see.
type USBStatus struct {
	// Supported is false when this build has no USB HID support (built
	// without cgo, or an unsupported OS).
	Supported bool `json:"supported"`
	// Devices is the number of approval devices found on USB.
	Devices int `json:"devices"`
	// Error is why enumeration failed, if it did.
	Error string `json:"error,omitempty"`
	// Note explains an empty or failed result to a person (see
	// [USBStatus.Explain]); empty when devices were found.
	Note string `json:"note,omitempty"`
}

// Explain returns the note for s: on a machine without USB, hidapi finds
// nothing and reports no error, exactly as on a machine with USB and no
// device plugged in, so an empty result says both.
func (s USBStatus) Explain() string {
	switch {
	case !s.Supported:
		return "this build has no USB HID support (it was built without cgo); only emulators can be found"
	case s.Error != "":
		return "USB enumeration failed: " + s.Error
	case s.Devices == 0:
		return "no approval device on USB, or no USB on this machine at all (the two cannot be told apart here)"
	}
	return ""
}

// DiscoverRequest says where to look for devices.
type DiscoverRequest struct {
	// EmulatorHost is the address emulators listen on (default
	// 127.0.0.1).
	EmulatorHost string
	// EmulatorPorts are probed with the liveness ping. Nil means
	// [DefaultEmulatorPort]; an empty non-nil slice probes none.
	EmulatorPorts []int
	// SkipUSB skips USB enumeration.
	SkipUSB bool
	// ProbeTimeout bounds each emulator probe (default
	// [DefaultProbeTimeout]).
	ProbeTimeout time.Duration
}

// Discovery is the result of [Discover].
type Discovery struct {
	// Devices lists USB devices first, then emulators in port order.
	Devices []Info    `json:"devices"`
	USB     USBStatus `json:"usb"`
}

// Discover lists the approval devices on USB and the emulators answering
// on the given ports. Emulators that do not answer are left out. It fails
// only if ctx ends.
func Discover(ctx context.Context, req DiscoverRequest) (*Discovery, error) {
	d := &Discovery{Devices: []Info{}, USB: USBStatus{Supported: hid.Supported()}}
	if !req.SkipUSB && d.USB.Supported {
		infos, err := enumerateHID()
		if err != nil {
			d.USB.Error = err.Error()
		}
		for _, info := range infos {
			d.Devices = append(d.Devices, Info{
				ID: hidID(info), Kind: KindUSB, Path: info.Path,
				Manufacturer: info.Manufacturer, Product: info.Product, Serial: info.Serial,
			})
		}
		d.USB.Devices = len(infos)
	}
	if !req.SkipUSB {
		d.USB.Note = d.USB.Explain()
	}
	host := req.EmulatorHost
	if host == "" {
		host = "127.0.0.1"
	}
	ports := req.EmulatorPorts
	if ports == nil {
		ports = []int{DefaultEmulatorPort}
	}
	found := make([]bool, len(ports))
	var wg sync.WaitGroup
	for i, port := range ports {
		wg.Go(func() {
			pctx := ctx
			if req.ProbeTimeout > 0 {
				var cancel context.CancelFunc
				pctx, cancel = context.WithTimeout(ctx, req.ProbeTimeout)
				defer cancel()
			}
			found[i] = ProbeUDP(pctx, net.JoinHostPort(host, strconv.Itoa(port))) == nil
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("device: discovery: %w", err)
	}
	for i, port := range ports {
		if found[i] {
			d.Devices = append(d.Devices, emulatorInfo(host, port))
		}
	}
	return d, nil
}

func emulatorInfo(host string, port int) Info {
	id := "emu-" + strconv.Itoa(port)
	if host != "127.0.0.1" {
		id = "emu-" + strings.NewReplacer(":", "_", ".", "_").Replace(host) + "-" + strconv.Itoa(port)
	}
	return Info{ID: id, Kind: KindEmulator, Path: "udp://" + net.JoinHostPort(host, strconv.Itoa(port))}
}

// ProbeUDP checks that an emulator answers the liveness ping at addr
// ("127.0.0.1:21424"): it sends [LivenessPing], repeated every 100 ms as
// datagrams may be lost, until [LivenessPong] comes back or ctx ends
// ([DefaultProbeTimeout] if ctx has no deadline).
func ProbeUDP(ctx context.Context, addr string) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultProbeTimeout)
		defer cancel()
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return fmt.Errorf("device: emulator address %q: %w", addr, err)
	}
	conn, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		return fmt.Errorf("device: emulator at %s: %w", addr, err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	noAnswer := func(err error) error {
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			return fmt.Errorf("device: no emulator answers at %s", addr)
		case errors.Is(err, syscall.ECONNREFUSED):
			return fmt.Errorf("device: no emulator answers at %s (nothing listens on the port)", addr)
		}
		return fmt.Errorf("device: no emulator answers at %s: %w", addr, err)
	}
	// Datagrams can be lost (a busy emulator's socket buffer overflows):
	// the ping is repeated until an answer or the deadline.
	buf := make([]byte, 64)
	for {
		if _, err := conn.Write([]byte(LivenessPing)); err != nil {
			return noAnswer(err)
		}
		next := time.Now().Add(probeRepeat)
		if deadline.Before(next) {
			next = deadline
		}
		conn.SetReadDeadline(next)
		for {
			n, err := conn.Read(buf)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil && time.Now().Before(deadline) {
				break // send again
			}
			if err != nil {
				return noAnswer(err)
			}
			if string(buf[:n]) == LivenessPong {
				return nil
			}
		}
	}
}

// probeRepeat is how often [ProbeUDP] repeats its ping.
const probeRepeat = 100 * time.Millisecond

// Open opens the transport for a path from [Info]: "udp://HOST:PORT" for an
// emulator, a hidapi path for a USB device.
func Open(path string) (Transport, error) {
	if addr, ok := strings.CutPrefix(path, "udp://"); ok {
		return DialUDP(addr)
	}
	return OpenHID(path)
}

// Resolve finds the device named by id, which is an [Info].ID or Path
// from [Discover]. Emulator ids ("emu-21424") and paths ("udp://…") resolve
// without probing; USB ids need an enumeration.
func Resolve(ctx context.Context, id string) (Info, error) {
	if port, ok := strings.CutPrefix(id, "emu-"); ok && !strings.Contains(port, "-") {
		p, err := strconv.Atoi(port)
		if err == nil && p > 0 && p < 65536 {
			return emulatorInfo("127.0.0.1", p), nil
		}
	}
	if addr, ok := strings.CutPrefix(id, "udp://"); ok {
		host, port, err := net.SplitHostPort(addr)
		p, perr := strconv.Atoi(port)
		if err != nil || perr != nil || p <= 0 || p > 65535 {
			return Info{}, fmt.Errorf("device: bad emulator path %q (want udp://HOST:PORT)", id)
		}
		return emulatorInfo(host, p), nil
	}
	d, err := Discover(ctx, DiscoverRequest{EmulatorPorts: []int{}})
	if err != nil {
		return Info{}, err
	}
	for _, info := range d.Devices {
		if info.ID == id || info.Path == id {
			return info, nil
		}
	}
	if note := d.USB.Note; note != "" {
		return Info{}, fmt.Errorf("device %s: not found: %s", id, note)
	}
	return Info{}, fmt.Errorf("device %s: not found", id)
}
