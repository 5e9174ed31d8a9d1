package core

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

func newTestCore(t *testing.T, ceremony bool) (*Core, *memDevices) {
	t.Helper()
	id, err := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ECDSA_P256, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	st := newMemDevices()
	c, err := New(Config{Identity: id, Devices: st, Ceremony: ceremony})
	if err != nil {
		t.Fatal(err)
	}
	return c, st
}

func find[T Event](events []Event) (T, bool) {
	for _, e := range events {
		if v, ok := e.(T); ok {
			return v, true
		}
	}
	var zero T
	return zero, false
}

// pairUntilCode runs a pairing up to the code on both sides.
func pairUntilCode(t *testing.T, c *Core, d *testDevice) (*Link, PairingCode) {
	t.Helper()
	l := c.Attach(d.features())
	out, err := l.StartPairing(context.Background(), "alice", RoleAdmin)
	events, err := pump(t, l, d, out, err)
	if err != nil {
		t.Fatal(err)
	}
	code, ok := find[PairingCode](events)
	if !ok {
		t.Fatalf("no code; events %v", events)
	}
	return l, code
}

func (d *testDevice) decide(t *testing.T, l *Link) []Event {
	t.Helper()
	out, err := l.Handle(context.Background(), d.sealed(&pb.PairingDecision{Confirmed: d.confirm}))
	events, err := pump(t, l, d, out, err)
	if err != nil && d.confirm {
		t.Fatal(err)
	}
	return events
}

func TestPairing(t *testing.T) {
	c, st := newTestCore(t, true)
	d := newTestDevice(t)
	l, code := pairUntilCode(t, c, d)
	if code.Code != d.code || len(code.Code) != 6 {
		t.Fatalf("operator sees %q, device shows %q", code.Code, d.code)
	}
	if code.HSMFingerprint != d.hsmFinger || code.HSMFingerprint != c.HSMFingerprint() {
		t.Fatalf("HSM fingerprints: core %q, operator %q, device %q", c.HSMFingerprint(), code.HSMFingerprint, d.hsmFinger)
	}
	// The device's user confirms first; nothing is stored until the
	// operator confirms too.
	d.decide(t, l)
	if _, err := st.GetDevice(context.Background(), d.features().DeviceId); !errors.Is(err, ErrDeviceNotFound) {
		t.Fatal("pairing stored before the operator confirmed")
	}
	out, err := l.OperatorDecision(context.Background(), true)
	events, err := pump(t, l, d, out, err)
	if err != nil {
		t.Fatal(err)
	}
	done, ok := find[PairingDone](events)
	if !ok {
		t.Fatalf("no PairingDone: %v", events)
	}
	if done.Device.User != "alice" || done.Device.Role != RoleAdmin || done.Device.State != DevicePaired {
		t.Fatalf("record %+v", done.Device)
	}
	if d.pinned == nil {
		t.Fatal("device did not pin the HSM key")
	}
	rec, err := st.GetDevice(context.Background(), d.features().DeviceId)
	if err != nil || rec.Fingerprint() != code.DeviceFingerprint {
		t.Fatalf("stored %+v, %v", rec, err)
	}

	// A new link to the paired device opens a full channel.
	l2 := c.Attach(d.features())
	out, err = l2.Open(context.Background())
	events, err = pump(t, l2, d, out, err)
	if err != nil {
		t.Fatal(err)
	}
	up, ok := find[ChannelUp](events)
	if !ok || up.Device == nil || up.Device.ID != rec.ID {
		t.Fatalf("channel to paired device: %v", events)
	}
	// Pairing the same device again is refused.
	if _, err := c.Attach(d.features()).StartPairing(context.Background(), "bob", RoleApprover); !errors.Is(err, ErrAlreadyPaired) {
		t.Fatalf("re-pairing: %v", err)
	}
}

func TestPairingNeedsCeremony(t *testing.T) {
	c, _ := newTestCore(t, false)
	if _, err := c.Attach(newTestDevice(t).features()).StartPairing(context.Background(), "alice", RoleAdmin); !errors.Is(err, ErrNotCeremony) {
		t.Fatalf("got %v, want ErrNotCeremony", err)
	}
}

func TestPairingRejected(t *testing.T) {
	for _, who := range []string{"device", "operator"} {
		t.Run(who, func(t *testing.T) {
			c, st := newTestCore(t, true)
			d := newTestDevice(t)
			l, _ := pairUntilCode(t, c, d)
			var events []Event
			if who == "device" {
				d.confirm = false
				events = d.decide(t, l)
			} else {
				out, err := l.OperatorDecision(context.Background(), false)
				if !errors.Is(err, ErrPairingRejected) {
					t.Fatalf("operator reject: %v", err)
				}
				events = out.Events
			}
			if _, ok := find[PairingFailed](events); !ok {
				t.Fatalf("no PairingFailed: %v", events)
			}
			if _, ok := find[ChannelDown](events); !ok {
				t.Fatalf("channel not closed: %v", events)
			}
			if _, err := st.GetDevice(context.Background(), d.features().DeviceId); !errors.Is(err, ErrDeviceNotFound) {
				t.Fatal("rejected pairing stored")
			}
			if d.pinned != nil {
				t.Fatal("device pinned after a rejected pairing")
			}
		})
	}
}

// A relay that announces one device but connects another: the core pairs
// only the device whose identity was selected.
func TestPairingRefusesSubstitutedDevice(t *testing.T) {
	c, _ := newTestCore(t, true)
	selected, substitute := newTestDevice(t), newTestDevice(t)
	l := c.Attach(selected.features())
	out, err := l.StartPairing(context.Background(), "alice", RoleAdmin)
	_, err = pump(t, l, substitute, out, err)
	if err == nil || !strings.Contains(err.Error(), "was selected for pairing") {
		t.Fatalf("got %v, want the substituted device refused", err)
	}
}

// A relay in the middle of a pairing runs one handshake with the core (as
// a device) and one with the device (as a core). The device shows the
// relay's HSM fingerprint, and the two codes differ.
func TestPairingManInTheMiddleShowsDifferentCodes(t *testing.T) {
	realCore, _ := newTestCore(t, true)
	relayCore, _ := newTestCore(t, true) // the relay's own "HSM"
	device := newTestDevice(t)
	relayDevice := newTestDevice(t) // the relay's own device identity

	// Core ↔ relay (posing as a device the operator selected).
	l1, opCode := pairUntilCode(t, realCore, relayDevice)
	// Relay (posing as the core) ↔ the real device.
	_, _ = pairUntilCode(t, relayCore, device)
	if opCode.Code == device.code {
		t.Fatalf("codes match through a relay (1 in 10^6 chance): %s", opCode.Code)
	}
	if device.hsmFinger == realCore.HSMFingerprint() {
		t.Fatal("device shows the real HSM fingerprint through a relay")
	}
	// The operator sees different codes and rejects: nothing is stored.
	if _, err := l1.OperatorDecision(context.Background(), false); !errors.Is(err, ErrPairingRejected) {
		t.Fatal(err)
	}
}

func TestRevokedDeviceRefused(t *testing.T) {
	c, st := newTestCore(t, true)
	d := newTestDevice(t)
	l, _ := pairUntilCode(t, c, d)
	d.decide(t, l)
	out, err := l.OperatorDecision(context.Background(), true)
	if _, err := pump(t, l, d, out, err); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Revoke(context.Background(), d.features().DeviceId); err != nil {
		t.Fatal(err)
	}
	rec, _ := st.GetDevice(context.Background(), d.features().DeviceId)
	if rec.State != DeviceRevoked || rec.RevokedAt.IsZero() {
		t.Fatalf("record after revoke: %+v", rec)
	}
	if _, err := c.Attach(d.features()).Open(context.Background()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("open revoked: %v", err)
	}
	if _, err := c.Attach(d.features()).StartPairing(context.Background(), "mallory", RoleAdmin); !errors.Is(err, ErrRevoked) {
		t.Fatalf("re-pair revoked: %v", err)
	}
}

// A device that claims a paired device's id but proves another key.
func TestImpostorOfPairedDeviceRefused(t *testing.T) {
	c, _ := newTestCore(t, true)
	d := newTestDevice(t)
	l, _ := pairUntilCode(t, c, d)
	d.decide(t, l)
	out, err := l.OperatorDecision(context.Background(), true)
	if _, err := pump(t, l, d, out, err); err != nil {
		t.Fatal(err)
	}
	impostor := newTestDevice(t)
	impostor.pinned = d.pinned
	l2 := c.Attach(d.features()) // the bridge claims the paired device
	out, err = l2.Open(context.Background())
	if _, err := pump(t, l2, impostor, out, err); err == nil {
		t.Fatal("impostor got a channel")
	}
	if up, _ := l2.Secure(); up {
		t.Fatal("link is secure after an impostor")
	}
}

func TestTamperedSecureMessageClosesChannel(t *testing.T) {
	c, _ := newTestCore(t, true)
	d := newTestDevice(t)
	l, _ := pairUntilCode(t, c, d)
	msg := d.sealed(&pb.PairingDecision{Confirmed: true})
	msg[len(msg)-3] ^= 1
	out, err := l.Handle(context.Background(), msg)
	if err == nil {
		t.Fatal("tampered message accepted")
	}
	if _, ok := find[ChannelDown](out.Events); !ok {
		t.Fatalf("no ChannelDown: %v", out.Events)
	}
	if _, ok := find[PairingFailed](out.Events); !ok {
		t.Fatalf("no PairingFailed: %v", out.Events)
	}
}

func TestUnexpectedMessagesRefused(t *testing.T) {
	c, _ := newTestCore(t, true)
	d := newTestDevice(t)
	for name, m := range map[string][]byte{
		"success before handshake": d.encode(&pb.Success{}),
		"secure before channel":    d.encode(&pb.SecureMessage{Ciphertext: []byte{1, 2, 3}}),
		"response before init":     d.encode(&pb.HandshakeResponse{Noise: []byte{1}}),
		"garbage":                  {0xff, 0xff},
	} {
		if _, err := c.Attach(d.features()).Handle(context.Background(), m); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestCredentialIsSignedByHSMAndReused(t *testing.T) {
	c, _ := newTestCore(t, true)
	_, cred1, err := c.credential()
	if err != nil {
		t.Fatal(err)
	}
	if err := cred1.VerifySignature(); err != nil {
		t.Fatal(err)
	}
	_, cred2, _ := c.credential()
	if cred1 != cred2 {
		t.Fatal("credential re-made while still fresh")
	}
}

// The device's answer to a Cancel, sealed under the old channel, can
// arrive after the core started the next handshake: it is dropped, and
// the new pairing goes on.
func TestStaleSecureMessageDuringHandshakeIsDropped(t *testing.T) {
	c, _ := newTestCore(t, true)
	d := newTestDevice(t)
	l, _ := pairUntilCode(t, c, d)
	out, err := l.OperatorDecision(context.Background(), false)
	if !errors.Is(err, ErrPairingRejected) || len(out.ToDevice) != 1 {
		t.Fatalf("operator reject: %v, %d messages", err, len(out.ToDevice))
	}
	stale := d.handle(out.ToDevice[0]) // Failure{FAILURE_ACTION_CANCELLED}, sealed
	out, err = l.StartPairing(context.Background(), "alice", RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	if o, err := l.Handle(context.Background(), stale); err != nil || len(o.ToDevice) != 0 || len(o.Events) != 0 {
		t.Fatalf("stale message during the handshake: %v, %v", err, o)
	}
	events, err := pump(t, l, d, out, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := find[PairingCode](events); !ok {
		t.Fatalf("second pairing did not reach the code: %v", events)
	}
}
