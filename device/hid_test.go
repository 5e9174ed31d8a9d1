package device

import (
	"bytes"
	"errors"
	"runtime"
	"sync"
	"testing"

	"github.com/karalabe/hid"
)

// fakeHID is a hidapi device that returns queued reads, with timeouts in
// between, and records writes.
type fakeHID struct {
	hid.Device
	mu     sync.Mutex
	reads  [][]byte
	writes [][]byte
	closed bool
}

func (f *fakeHID) ReadTimeout(b []byte, timeout int) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		panic("read on a closed hidapi handle")
	}
	if len(f.reads) == 0 {
		return 0, nil // timed out
	}
	r := f.reads[0]
	f.reads = f.reads[1:]
	return copy(b, r), nil
}

func (f *fakeHID) Write(b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = append(f.writes, append([]byte(nil), b...))
	return len(b), nil
}

func (f *fakeHID) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func TestHIDTransport(t *testing.T) {
	report := bytes.Repeat([]byte{7}, 64)
	f := &fakeHID{reads: [][]byte{nil, make([]byte, 10), report}}
	tr := newHIDTransport(f, "1-2:1.0")
	buf := make([]byte, 64)
	if n, err := tr.Read(buf); err != nil || n != 64 || !bytes.Equal(buf, report) {
		t.Fatalf("read %d %v", n, err)
	}
	if _, err := tr.Write(report); err != nil {
		t.Fatal(err)
	}
	want := report
	if runtime.GOOS != "windows" {
		want = append([]byte{0}, report...)
	}
	if !bytes.Equal(f.writes[0], want) {
		t.Errorf("wrote %x, want %x", f.writes[0], want)
	}
	if _, err := tr.Write(report[:63]); err == nil {
		t.Error("a 63-byte report was written")
	}
	// Close while a read polls: the read ends, and the handle is closed
	// only once no read is in flight.
	done := make(chan error, 1)
	go func() {
		_, err := tr.Read(buf)
		done <- err
	}()
	tr.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("read across close: %v", err)
	}
	if _, err := tr.Write(report); !errors.Is(err, ErrClosed) {
		t.Errorf("write after close: %v", err)
	}
}

func TestHIDMatching(t *testing.T) {
	base := hid.DeviceInfo{VendorID: USBVendorID, ProductID: USBProductID, Path: "1-2:1.0"}
	for _, tc := range []struct {
		name string
		edit func(*hid.DeviceInfo)
		want bool
	}{
		{"linux, interface 0", func(i *hid.DeviceInfo) {}, true},
		{"linux, other interface", func(i *hid.DeviceInfo) { i.Interface = 1 }, false},
		{"usage page", func(i *hid.DeviceInfo) { i.UsagePage, i.Interface = HIDUsagePage, 3 }, true},
		{"other usage page", func(i *hid.DeviceInfo) { i.UsagePage = 0xf1d0 }, false},
		{"other vendor", func(i *hid.DeviceInfo) { i.VendorID = 0x2b24 }, false},
		{"other product", func(i *hid.DeviceInfo) { i.ProductID = 1 }, false},
	} {
		info := base
		tc.edit(&info)
		if got := isApprovalDevice(info); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	a := hidID(base)
	withSerial := base
	withSerial.Serial = "OC0001"
	moved := withSerial
	moved.Path = "1-3:1.0"
	if a == hidID(withSerial) || hidID(withSerial) != hidID(moved) || len(a) != len("hid-")+8 {
		t.Errorf("ids: %s %s %s", a, hidID(withSerial), hidID(moved))
	}
}

func TestResolve(t *testing.T) {
	for id, want := range map[string]string{
		"emu-21424":             "udp://127.0.0.1:21424",
		"udp://127.0.0.1:21500": "udp://127.0.0.1:21500",
		"udp://[::1]:21500":     "udp://[::1]:21500",
	} {
		info, err := Resolve(t.Context(), id)
		if err != nil || info.Path != want || info.Kind != KindEmulator {
			t.Errorf("Resolve(%s) = %+v, %v", id, info, err)
		}
	}
	for _, id := range []string{"emu-0", "emu-99999", "udp://nohost", "hid-00000000"} {
		if _, err := Resolve(t.Context(), id); err == nil {
			t.Errorf("Resolve(%s) succeeded", id)
		}
	}
}
