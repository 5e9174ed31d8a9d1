package device

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/karalabe/hid"

	"github.com/opencustodynet/opencustody/protocol/framing"
)

// USB identification of an approval device (firmware-spec/device.md,
// "USB"). The vendor and product ids are a test id from the pid.codes test
// range (VID 0x1209, PIDs 0x0001-0x000F are for testing), not allocated to
// this project: a device that ships needs its own ids.
const (
	USBVendorID  uint16 = 0x1209
	USBProductID uint16 = 0x0007
	// HIDUsagePage is the vendor-defined usage page of the device's HID
	// interface, and HIDUsage its usage.
	HIDUsagePage uint16 = 0xff00
	HIDUsage     uint16 = 0x01
	// HIDInterface is the USB interface number of the HID interface. On
	// Linux (libusb backend) hidapi reports no usage page, so the interface
	// number is matched instead.
	HIDInterface = 0
)

// hidReadPoll is how long one HID read waits, in milliseconds, before the
// transport checks whether it was closed. hidapi's handle must not be
// closed while a read is in flight, so reads poll.
const hidReadPoll = 100

// isApprovalDevice reports whether an enumerated HID interface is the
// protocol interface of an approval device.
func isApprovalDevice(info hid.DeviceInfo) bool {
	if info.VendorID != USBVendorID || info.ProductID != USBProductID {
		return false
	}
	return info.UsagePage == HIDUsagePage || (info.UsagePage == 0 && info.Interface == HIDInterface)
}

// enumerateHID lists the approval devices on USB.
func enumerateHID() ([]hid.DeviceInfo, error) {
	if !hid.Supported() {
		return nil, nil
	}
	all, err := hid.Enumerate(USBVendorID, USBProductID)
	if err != nil {
		return nil, fmt.Errorf("device: enumerate USB HID devices: %w", err)
	}
	var out []hid.DeviceInfo
	for _, info := range all {
		if isApprovalDevice(info) {
			out = append(out, info)
		}
	}
	return out, nil
}

// hidID is the stable id of a USB device: from its serial number when it
// has one (stable across ports), else from its hidapi path (stable while
// it stays in the same port).
func hidID(info hid.DeviceInfo) string {
	key := "path:" + info.Path
	if info.Serial != "" {
		key = "serial:" + info.Serial
	}
	h := sha256.Sum256([]byte(key))
	return "hid-" + hex.EncodeToString(h[:4])
}

// hidTransport adapts a hidapi handle. The device uses no numbered
// reports: hidapi wants a leading report id 0 on writes (which it strips)
// and returns bare 64-byte reports on reads.
type hidTransport struct {
	dev  hid.Device
	path string

	readMu sync.Mutex // held during each hidapi read; Close takes it before closing the handle
	closed atomic.Bool
}

// newHIDTransport wraps an open hidapi device.
func newHIDTransport(dev hid.Device, path string) *hidTransport {
	return &hidTransport{dev: dev, path: path}
}

// OpenHID opens the USB approval device at the hidapi path.
func OpenHID(path string) (Transport, error) {
	infos, err := enumerateHID()
	if err != nil {
		return nil, err
	}
	for _, info := range infos {
		if info.Path == path {
			dev, err := info.Open()
			if err != nil {
				return nil, fmt.Errorf("device: open USB device %s: %w", path, err)
			}
			return newHIDTransport(dev, path), nil
		}
	}
	return nil, fmt.Errorf("device: no approval device at USB path %s", path)
}

func (h *hidTransport) Read(p []byte) (int, error) {
	if len(p) < framing.ReportSize {
		return 0, fmt.Errorf("device: read buffer of %d bytes, want %d", len(p), framing.ReportSize)
	}
	buf := make([]byte, framing.ReportSize+1)
	for {
		h.readMu.Lock()
		if h.closed.Load() {
			h.readMu.Unlock()
			return 0, fmt.Errorf("device: USB device %s: %w", h.path, ErrClosed)
		}
		n, err := h.dev.ReadTimeout(buf, hidReadPoll)
		h.readMu.Unlock()
		if err != nil {
			return 0, fmt.Errorf("device: USB device %s: %w", h.path, err)
		}
		if n == framing.ReportSize {
			return copy(p, buf[:n]), nil
		}
		// n == 0: the poll timed out. Other sizes are not reports.
	}
}

func (h *hidTransport) Write(p []byte) (int, error) {
	if err := checkReport(p); err != nil {
		return 0, err
	}
	if h.closed.Load() {
		return 0, fmt.Errorf("device: USB device %s: %w", h.path, ErrClosed)
	}
	out := p
	if runtime.GOOS != "windows" {
		// karalabe/hid adds the report id itself only on Windows.
		out = append([]byte{0}, p...)
	}
	n, err := h.dev.Write(out)
	if err != nil {
		return 0, fmt.Errorf("device: USB device %s: %w", h.path, err)
	}
	if n < len(out) {
		return 0, fmt.Errorf("device: USB device %s: short write of %d bytes", h.path, n)
	}
	return len(p), nil
}

func (h *hidTransport) String() string { return h.path }

func (h *hidTransport) Close() error {
	if h.closed.Swap(true) {
		return nil
	}
	h.readMu.Lock()
	defer h.readMu.Unlock()
	return h.dev.Close()
}
