package channel

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flynn/noise"

	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

var now = time.Unix(1_800_000_000, 0)

type end struct {
	identity *signed.SoftwareKey
	static   noise.DHKey
	cred     *signed.Credential
}

func newEnd(t *testing.T, role signed.Role, alg pb.Algorithm, notBefore, notAfter time.Time) *end {
	t.Helper()
	id, err := signed.GenerateSoftwareKey(alg, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return mkEnd(t, role, id, notBefore, notAfter)
}

func newCore(t *testing.T) *end {
	return newEnd(t, signed.RoleCore, pb.Algorithm_ALGORITHM_ECDSA_P256, now.Add(-time.Hour), now.Add(time.Hour))
}

func newDevice(t *testing.T) *end {
	return newEnd(t, signed.RoleDevice, pb.Algorithm_ALGORITHM_ED25519, time.Unix(0, 0), signed.Forever)
}

func pinned(key []byte) func(*signed.Credential) error {
	return func(c *signed.Credential) error {
		if !bytes.Equal(c.IdentityKey, key) {
			return errors.New("identity key is not the pinned one")
		}
		return nil
	}
}

func (e *end) config(role signed.Role, accept func(*signed.Credential) error) Config {
	return Config{Role: role, Static: e.static, Credential: e.cred, ProtocolVersion: 1,
		Accept: accept, Now: func() time.Time { return now }}
}

// relay lets a test see and alter each handshake message in transit.
type relay func(i int, msg []byte) []byte

func handshake(t *testing.T, coreCfg, devCfg Config, r relay) (core, dev *Session, err error) {
	t.Helper()
	if r == nil {
		r = func(_ int, m []byte) []byte { return m }
	}
	ch, err := NewHandshake(coreCfg)
	if err != nil {
		t.Fatal(err)
	}
	dh, err := NewHandshake(devCfg)
	if err != nil {
		t.Fatal(err)
	}
	m1, err := ch.Start()
	if err != nil {
		return nil, nil, err
	}
	m2, err := dh.Respond(r(1, m1))
	if err != nil {
		return nil, nil, err
	}
	m3, core, err := ch.Finish(r(2, m2))
	if err != nil {
		return nil, nil, err
	}
	dev, err = dh.Complete(r(3, m3))
	if err != nil {
		return nil, nil, err
	}
	return core, dev, nil
}

func pair(t *testing.T) (*end, *end, *Session, *Session) {
	t.Helper()
	c, d := newCore(t), newDevice(t)
	cs, ds, err := handshake(t, c.config(signed.RoleCore, pinned(d.identity.PublicKey())),
		d.config(signed.RoleDevice, pinned(c.identity.PublicKey())), nil)
	if err != nil {
		t.Fatal(err)
	}
	return c, d, cs, ds
}

func TestHandshakeAndTransport(t *testing.T) {
	c, d, cs, ds := pair(t)
	if !bytes.Equal(cs.HandshakeHash(), ds.HandshakeHash()) {
		t.Fatal("handshake hashes differ")
	}
	if !bytes.Equal(cs.Peer().IdentityKey, d.identity.PublicKey()) || !bytes.Equal(ds.Peer().IdentityKey, c.identity.PublicKey()) {
		t.Fatal("peers are not the expected identities")
	}
	for i := range 3 {
		msg := []byte(strings.Repeat("prompt ", i+1))
		ct, err := cs.Seal(msg)
		if err != nil {
			t.Fatal(err)
		}
		pt, err := ds.Open(ct)
		if err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("core→device %d: %q %v", i, pt, err)
		}
		ct, err = ds.Seal(msg)
		if err != nil {
			t.Fatal(err)
		}
		if pt, err = cs.Open(ct); err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("device→core %d: %q %v", i, pt, err)
		}
	}
}

// The relay sees neither identity key nor any plaintext.
func TestRelaySeesNoPlaintext(t *testing.T) {
	c, d := newCore(t), newDevice(t)
	var seen [][]byte
	cs, ds, err := handshake(t, c.config(signed.RoleCore, nil), d.config(signed.RoleDevice, nil),
		func(_ int, m []byte) []byte { seen = append(seen, bytes.Clone(m)); return m })
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("send 12.5 BTC to bc1qsecretdestination")
	ct, _ := cs.Seal(secret)
	seen = append(seen, ct)
	if _, err := ds.Open(ct); err != nil {
		t.Fatal(err)
	}
	for i, m := range seen {
		for name, needle := range map[string][]byte{
			"core identity key":   c.identity.PublicKey(),
			"device identity key": d.identity.PublicKey(),
			"device static key":   d.static.Public,
			"core static key":     c.static.Public,
			"plaintext":           secret[:16],
		} {
			if bytes.Contains(m, needle) {
				t.Errorf("relayed message %d contains the %s", i, name)
			}
		}
	}
}

func TestTamperedHandshakeFails(t *testing.T) {
	for msg := 1; msg <= 3; msg++ {
		c, d := newCore(t), newDevice(t)
		_, _, err := handshake(t, c.config(signed.RoleCore, nil), d.config(signed.RoleDevice, nil),
			func(i int, m []byte) []byte {
				if i == msg {
					m = bytes.Clone(m)
					m[len(m)/2] ^= 0x40
				}
				return m
			})
		if !errors.Is(err, ErrHandshake) {
			t.Errorf("bit flip in message %d: got %v, want ErrHandshake", msg, err)
		}
	}
}

func TestTransportFailsClosed(t *testing.T) {
	for name, attack := range map[string]func(cs, ds *Session) error{
		"bit flip": func(cs, ds *Session) error {
			ct, _ := cs.Seal([]byte("approve"))
			ct[0] ^= 1
			_, err := ds.Open(ct)
			return err
		},
		"truncate": func(cs, ds *Session) error {
			ct, _ := cs.Seal([]byte("approve"))
			_, err := ds.Open(ct[:len(ct)-1])
			return err
		},
		"replay": func(cs, ds *Session) error {
			ct, _ := cs.Seal([]byte("approve"))
			if _, err := ds.Open(ct); err != nil {
				return nil // the first delivery must succeed
			}
			_, err := ds.Open(ct)
			return err
		},
		"reorder": func(cs, ds *Session) error {
			a, _ := cs.Seal([]byte("one"))
			b, _ := cs.Seal([]byte("two"))
			_, err := ds.Open(b)
			_ = a
			return err
		},
		"drop": func(cs, ds *Session) error {
			_, _ = cs.Seal([]byte("dropped"))
			b, _ := cs.Seal([]byte("next"))
			_, err := ds.Open(b)
			return err
		},
		"reflect": func(cs, ds *Session) error {
			ct, _ := cs.Seal([]byte("approve"))
			_, err := cs.Open(ct) // sent back to its author
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, cs, ds := pair(t)
			err := attack(cs, ds)
			if !errors.Is(err, ErrOpen) {
				t.Fatalf("got %v, want ErrOpen", err)
			}
			// The session stays closed even for a genuine message.
			var victim *Session
			if name == "reflect" {
				victim = cs
			} else {
				victim = ds
			}
			fresh, _ := cs.Seal([]byte("genuine"))
			if _, err := victim.Open(fresh); !errors.Is(err, ErrClosed) {
				t.Fatalf("after failure: got %v, want ErrClosed", err)
			}
		})
	}
}

func TestSwapBetweenDevices(t *testing.T) {
	_, _, cs1, ds1 := pair(t)
	_, _, cs2, ds2 := pair(t)
	ct1, _ := cs1.Seal([]byte("prompt for device 1"))
	if _, err := ds2.Open(ct1); !errors.Is(err, ErrOpen) {
		t.Fatalf("device 2 opened device 1's prompt: %v", err)
	}
	ct2, _ := ds2.Seal([]byte("approval from device 2"))
	if _, err := cs1.Open(ct2); !errors.Is(err, ErrOpen) {
		t.Fatalf("core session 1 accepted device 2's approval: %v", err)
	}
	_, _ = cs2, ds1
}

func TestDeviceRefusesUnpinnedCore(t *testing.T) {
	realHSM, fakeHSM, d := newCore(t), newCore(t), newDevice(t)
	_, _, err := handshake(t, fakeHSM.config(signed.RoleCore, nil),
		d.config(signed.RoleDevice, pinned(realHSM.identity.PublicKey())), nil)
	if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "pinned") {
		t.Fatalf("got %v, want a pinning failure", err)
	}
}

func TestCoreRefusesUnacceptedDevice(t *testing.T) {
	c, d := newCore(t), newDevice(t)
	revoked := func(*signed.Credential) error { return errors.New("device revoked") }
	_, _, err := handshake(t, c.config(signed.RoleCore, revoked), d.config(signed.RoleDevice, nil), nil)
	if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("got %v, want the device refused", err)
	}
}

// An attacker with its own static key cannot borrow a genuine credential:
// the credential binds another static key than the one it proves.
func TestBorrowedCredentialRefused(t *testing.T) {
	c, genuine := newCore(t), newDevice(t)
	attacker := newDevice(t)
	attacker.cred = genuine.cred // genuine device's credential, attacker's static key
	cfg := attacker.config(signed.RoleDevice, nil)
	// NewHandshake refuses a mismatched own credential; build the
	// handshake state by hand as an attacker would.
	cfg.Credential = attacker.cred
	hs, err := noise.NewHandshakeState(noise.Config{CipherSuite: Suite, Random: rand.Reader, Pattern: noise.HandshakeXX,
		Prologue: prologue(1), StaticKeypair: attacker.static})
	if err != nil {
		t.Fatal(err)
	}
	ch, _ := NewHandshake(c.config(signed.RoleCore, nil))
	m1, _ := ch.Start()
	if _, _, _, err := hs.ReadMessage(nil, m1); err != nil {
		t.Fatal(err)
	}
	m2, _, _, _ := hs.WriteMessage(nil, genuine.cred.Marshal())
	if _, _, err := ch.Finish(m2); !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "another static key") {
		t.Fatalf("got %v, want a static key binding failure", err)
	}
}

func TestExpiredCoreCredentialRefused(t *testing.T) {
	stale := newEnd(t, signed.RoleCore, pb.Algorithm_ALGORITHM_ECDSA_P256, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	d := newDevice(t)
	_, _, err := handshake(t, stale.config(signed.RoleCore, nil), d.config(signed.RoleDevice, nil), nil)
	if !errors.Is(err, signed.ErrCredentialExpired) {
		t.Fatalf("got %v, want ErrCredentialExpired", err)
	}
}

func TestWrongRoleCredentialRefused(t *testing.T) {
	c := newCore(t)
	// A "device" that presents a core credential.
	impostor := mkEnd(t, signed.RoleCore, c.identity, now.Add(-time.Hour), now.Add(time.Hour))
	cfg := impostor.config(signed.RoleDevice, nil)
	if _, err := NewHandshake(cfg); err == nil {
		t.Fatal("NewHandshake accepted a core credential for a device")
	}
}

func TestVersionMismatchFails(t *testing.T) {
	c, d := newCore(t), newDevice(t)
	dc := d.config(signed.RoleDevice, nil)
	dc.ProtocolVersion = 2
	if _, _, err := handshake(t, c.config(signed.RoleCore, nil), dc, nil); !errors.Is(err, ErrHandshake) {
		t.Fatalf("got %v, want ErrHandshake", err)
	}
}

func TestStepsOutOfOrder(t *testing.T) {
	c, d := newCore(t), newDevice(t)
	ch, _ := NewHandshake(c.config(signed.RoleCore, nil))
	dh, _ := NewHandshake(d.config(signed.RoleDevice, nil))
	if _, err := dh.Start(); err == nil {
		t.Error("device ran Start")
	}
	if _, err := ch.Respond(nil); err == nil {
		t.Error("core ran Respond")
	}
	if _, _, err := ch.Finish(nil); err == nil {
		t.Error("core ran Finish before Start")
	}
	if _, err := dh.Complete(nil); err == nil {
		t.Error("device ran Complete before Respond")
	}
}

func FuzzDeviceRespond(f *testing.F) {
	c := newCoreF(f)
	h, _ := NewHandshake(c.config(signed.RoleCore, nil))
	m1, _ := h.Start()
	f.Add(m1)
	f.Add([]byte{})
	d := newDeviceF(f)
	f.Fuzz(func(t *testing.T, msg []byte) {
		dh, err := NewHandshake(d.config(signed.RoleDevice, nil))
		if err != nil {
			t.Fatal(err)
		}
		out, err := dh.Respond(msg)
		if err != nil && out != nil {
			t.Fatal("error with output")
		}
		if _, err := dh.Complete(msg); err == nil {
			t.Fatal("arbitrary bytes completed a handshake")
		}
	})
}

func newCoreF(f *testing.F) *end {
	id, _ := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ECDSA_P256, rand.Reader)
	return mkEnd(f, signed.RoleCore, id, now.Add(-time.Hour), now.Add(time.Hour))
}

func newDeviceF(f *testing.F) *end {
	id, _ := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ED25519, rand.Reader)
	return mkEnd(f, signed.RoleDevice, id, time.Unix(0, 0), signed.Forever)
}

func mkEnd(tb testing.TB, role signed.Role, id *signed.SoftwareKey, nb, na time.Time) *end {
	tb.Helper()
	st, err := GenerateStatic(nil)
	if err != nil {
		tb.Fatal(err)
	}
	c := &signed.Credential{Role: role, NotBefore: nb, NotAfter: na}
	copy(c.StaticKey[:], st.Public)
	if err := c.Sign(id); err != nil {
		tb.Fatal(err)
	}
	return &end{identity: id, static: st, cred: c}
}
