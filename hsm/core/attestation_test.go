package core

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// vendorCA is a device vendor's attestation hierarchy: a root the
// operator configures and a factory CA that issues device certificates.
type vendorCA struct {
	name          string
	root, factory *signed.SoftwareKey
	factoryCert   []byte
}

func newVendorCA(t *testing.T, name string) *vendorCA {
	t.Helper()
	key := func() *signed.SoftwareKey {
		k, err := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ECDSA_P256, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	v := &vendorCA{name: name, root: key(), factory: key()}
	c := &signed.AttestationCertificate{Kind: signed.KindAuthority, SubjectAlgorithm: v.factory.Algorithm(),
		SubjectKey: v.factory.PublicKey(), SubjectName: name + " factory CA"}
	if err := c.Sign(v.root); err != nil {
		t.Fatal(err)
	}
	v.factoryCert = c.Marshal()
	return v
}

func (v *vendorCA) Root() signed.Root {
	return signed.Root{Name: v.name + " root", Algorithm: v.root.Algorithm(), PublicKey: v.root.PublicKey()}
}

// attest gives d a chain from the factory, as at manufacture.
func (v *vendorCA) attest(t *testing.T, d *testDevice) *testDevice {
	t.Helper()
	c := &signed.AttestationCertificate{Kind: signed.KindDevice, SubjectAlgorithm: d.identity.Algorithm(),
		SubjectKey: d.identity.PublicKey(), SubjectName: "Test Vault"}
	if err := c.Sign(v.factory); err != nil {
		t.Fatal(err)
	}
	d.chain = [][]byte{c.Marshal(), v.factoryCert}
	return d
}

func newAttestingCore(t *testing.T, roots ...signed.Root) (*Core, *memDevices) {
	t.Helper()
	id, err := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ECDSA_P256, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	st := newMemDevices()
	c, err := New(Config{Identity: id, Devices: st, Ceremony: true, AttestationRoots: roots})
	if err != nil {
		t.Fatal(err)
	}
	return c, st
}

// pairFully runs a whole pairing in which both people confirm, with the
// bridge relaying features (normally d.features()).
func pairFully(t *testing.T, c *Core, d *testDevice, features *pb.Features) (*DeviceRecord, []Event, error) {
	t.Helper()
	l := c.Attach(features)
	out, err := l.StartPairing(context.Background(), "alice", RoleApprover)
	events, err := pump(t, l, d, out, err)
	if err != nil {
		return nil, events, err
	}
	events = append(events, d.decide(t, l)...)
	out, err = l.OperatorDecision(context.Background(), true)
	more, err := pump(t, l, d, out, err)
	events = append(events, more...)
	if err != nil {
		return nil, events, err
	}
	done, ok := find[PairingDone](events)
	if !ok {
		t.Fatalf("no PairingDone: %v", events)
	}
	return done.Device, events, nil
}

func TestPairingWithAttestation(t *testing.T) {
	vendor := newVendorCA(t, "Example Devices")
	c, st := newAttestingCore(t, newVendorCA(t, "Other Devices").Root(), vendor.Root())
	d := vendor.attest(t, newTestDevice(t))
	rec, _, err := pairFully(t, c, d, d.features())
	if err != nil {
		t.Fatal(err)
	}
	want := DeviceAttestation{Root: "Example Devices root", RootFingerprint: vendor.Root().Fingerprint(), Subject: "Test Vault"}
	if rec.Attestation == nil || *rec.Attestation != want {
		t.Fatalf("attestation %+v, want %+v", rec.Attestation, want)
	}
	stored, err := st.GetDevice(context.Background(), rec.ID)
	if err != nil || stored.Attestation == nil || *stored.Attestation != want {
		t.Fatalf("stored %+v, %v", stored, err)
	}
	if d.pinned == nil {
		t.Fatal("device did not pin the HSM key")
	}
}

func TestPairingRefusedWithoutTrustedAttestation(t *testing.T) {
	vendor, other := newVendorCA(t, "Example Devices"), newVendorCA(t, "Other Devices")
	for _, tc := range []struct {
		name string
		// setup returns the device that connects and the Features the
		// bridge relays for it.
		setup func(t *testing.T) (*testDevice, *pb.Features)
	}{
		{"no chain", func(t *testing.T) (*testDevice, *pb.Features) {
			d := newTestDevice(t)
			return d, d.features()
		}},
		{"chain from another root", func(t *testing.T) (*testDevice, *pb.Features) {
			d := other.attest(t, newTestDevice(t))
			return d, d.features()
		}},
		{"development chain", func(t *testing.T) (*testDevice, *pb.Features) {
			d := newTestDevice(t)
			chain, err := signed.DevelopmentAttestation(d.identity.Algorithm(), d.identity.PublicKey(), "OpenCustody Emulator")
			if err != nil {
				t.Fatal(err)
			}
			d.chain = chain
			return d, d.features()
		}},
		{"valid chain copied from another device", func(t *testing.T) (*testDevice, *pb.Features) {
			genuine := vendor.attest(t, newTestDevice(t))
			d := newTestDevice(t)
			d.chain = genuine.chain
			return d, d.features()
		}},
		{"another device's key and chain claimed", func(t *testing.T) (*testDevice, *pb.Features) {
			// The bridge claims the genuine device's key and chain for
			// the id of the device that connects: only the proved key
			// counts.
			genuine := vendor.attest(t, newTestDevice(t))
			d := newTestDevice(t)
			f := d.features()
			f.IdentityAlgorithm, f.IdentityPublicKey, f.Attestation = genuine.identity.Algorithm(), genuine.identity.PublicKey(), genuine.chain
			return d, f
		}},
		{"tampered device certificate", func(t *testing.T) (*testDevice, *pb.Features) {
			d := vendor.attest(t, newTestDevice(t))
			d.chain[0] = bytes.Replace(d.chain[0], []byte("Test Vault"), []byte("Test Vaulu"), 1)
			return d, d.features()
		}},
		{"tampered factory certificate", func(t *testing.T) (*testDevice, *pb.Features) {
			d := vendor.attest(t, newTestDevice(t))
			cert := bytes.Clone(d.chain[1])
			cert[len(cert)-3] ^= 1
			d.chain[1] = cert
			return d, d.features()
		}},
		{"factory certificate missing", func(t *testing.T) (*testDevice, *pb.Features) {
			d := vendor.attest(t, newTestDevice(t))
			d.chain = d.chain[:1]
			return d, d.features()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, st := newAttestingCore(t, vendor.Root())
			d, f := tc.setup(t)
			l := c.Attach(f)
			out, err := l.StartPairing(context.Background(), "alice", RoleApprover)
			events, err := pump(t, l, d, out, err)
			id := signed.DeviceID(d.identity.PublicKey())
			if !errors.Is(err, signed.ErrAttestation) || !strings.Contains(err.Error(), "device "+id+" has no attestation from a trusted root") {
				t.Fatalf("got %v, want the device refused for its attestation", err)
			}
			if _, ok := find[PairingFailed](events); !ok {
				t.Fatalf("no PairingFailed: %v", events)
			}
			if _, ok := find[PairingCode](events); ok {
				t.Fatal("a pairing code was shown for an unattested device")
			}
			if up, _ := l.Secure(); up {
				t.Fatal("channel open to an unattested device")
			}
			if _, err := st.GetDevice(context.Background(), id); !errors.Is(err, ErrDeviceNotFound) {
				t.Fatalf("unattested device stored: %v", err)
			}
			if d.pinned != nil {
				t.Fatal("device pinned")
			}
		})
	}
}

// The development root (the emulator's) is trusted only when configured.
func TestDevelopmentRootOnlyWhenConfigured(t *testing.T) {
	emulator := func(t *testing.T) *testDevice {
		d := newTestDevice(t)
		chain, err := signed.DevelopmentAttestation(d.identity.Algorithm(), d.identity.PublicKey(), "OpenCustody Emulator")
		if err != nil {
			t.Fatal(err)
		}
		d.chain = chain
		return d
	}
	t.Run("configured", func(t *testing.T) {
		c, _ := newAttestingCore(t, signed.DevelopmentRoot())
		d := emulator(t)
		rec, _, err := pairFully(t, c, d, d.features())
		if err != nil {
			t.Fatal(err)
		}
		if a := rec.Attestation; a == nil || !a.Development || a.Root != signed.DevelopmentRootName || a.Subject != "OpenCustody Emulator" {
			t.Fatalf("attestation %+v", a)
		}
	})
	t.Run("other root configured", func(t *testing.T) {
		c, _ := newAttestingCore(t, newVendorCA(t, "Example Devices").Root())
		d := emulator(t)
		_, _, err := pairFully(t, c, d, d.features())
		if !errors.Is(err, signed.ErrAttestation) || !strings.Contains(err.Error(), "development root") {
			t.Fatalf("got %v, want the development chain refused", err)
		}
	})
	t.Run("attestation not required", func(t *testing.T) {
		c, _ := newAttestingCore(t)
		for _, d := range []*testDevice{emulator(t), newTestDevice(t)} {
			rec, _, err := pairFully(t, c, d, d.features())
			if err != nil {
				t.Fatal(err)
			}
			if rec.Attestation != nil {
				t.Fatalf("attestation %+v recorded without roots configured", rec.Attestation)
			}
		}
	})
}

// A paired device's channel does not depend on attestation: roots are a
// condition of pairing, and a relay that strips the chain later cannot
// lock a paired device out.
func TestPairedDeviceOpensWithoutChain(t *testing.T) {
	vendor := newVendorCA(t, "Example Devices")
	c, _ := newAttestingCore(t, vendor.Root())
	d := vendor.attest(t, newTestDevice(t))
	if _, _, err := pairFully(t, c, d, d.features()); err != nil {
		t.Fatal(err)
	}
	f := d.features()
	f.Attestation = nil
	l := c.Attach(f)
	out, err := l.Open(context.Background())
	events, err := pump(t, l, d, out, err)
	if up, ok := find[ChannelUp](events); err != nil || !ok || up.Device == nil {
		t.Fatalf("channel to a paired device: %v, %v", events, err)
	}
}
