package emulator

import (
	"crypto/sha256"
	"io"
	"testing"
	"time"

	"github.com/flynn/noise"
	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/channel"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// coreKey is a custody core's identity key (the "HSM" key, here an
// Ed25519 key derived from a name, so that signatures are deterministic)
// with one channel key and its credential.
type coreKey struct {
	id     *signed.SoftwareKey
	static noise.DHKey
	cred   *signed.Credential
}

// newCoreKey makes the identity key named name and a credential valid from
// notBefore to notAfter (Unix seconds).
func newCoreKey(t testing.TB, name string, notBefore, notAfter int64) *coreKey {
	t.Helper()
	seed := sha256.Sum256([]byte("OpenCustody test core " + name))
	id, err := signed.SoftwareKeyFromBytes(pb.Algorithm_ALGORITHM_ED25519, seed[:])
	if err != nil {
		t.Fatal(err)
	}
	return id2core(t, id, name, notBefore, notAfter)
}

// coreKeyFrom makes a core with the identity key of algorithm alg whose
// private bytes are raw, as the vectors give them.
func coreKeyFrom(t testing.TB, alg pb.Algorithm, raw []byte, notBefore, notAfter int64) *coreKey {
	t.Helper()
	id, err := signed.SoftwareKeyFromBytes(alg, raw)
	if err != nil {
		t.Fatal(err)
	}
	return id2core(t, id, "from bytes", notBefore, notAfter)
}

// withCredential returns the same identity key with another channel key
// and credential.
func (k *coreKey) withCredential(t testing.TB, notBefore, notAfter int64) *coreKey {
	return id2core(t, k.id, "renewed", notBefore, notAfter)
}

func id2core(t testing.TB, id *signed.SoftwareKey, name string, notBefore, notAfter int64) *coreKey {
	t.Helper()
	st, err := channel.GenerateStatic(SeededRand("test core static " + name + time.Unix(notBefore, 0).String()))
	if err != nil {
		t.Fatal(err)
	}
	cred := &signed.Credential{Role: signed.RoleCore, NotBefore: time.Unix(notBefore, 0), NotAfter: time.Unix(notAfter, 0)}
	copy(cred.StaticKey[:], st.Public)
	if err := cred.Sign(id); err != nil {
		t.Fatal(err)
	}
	return &coreKey{id: id, static: st, cred: cred}
}

func (k *coreKey) fingerprint() string { return signed.Fingerprint(k.id.Algorithm(), k.id.PublicKey()) }

// testCore plays the custody core's end of the channel with
// protocol/channel: it makes the envelopes a core sends and opens the
// device's sealed answers. It checks nothing about the device beyond what
// the handshake checks; the tests do.
type testCore struct {
	t    testing.TB
	key  *coreKey
	rand io.Reader
	hs   *channel.Handshake
	sess *channel.Session
}

func newTestCore(t testing.TB, key *coreKey, seed string) *testCore {
	return &testCore{t: t, key: key, rand: SeededRand("test core " + seed)}
}

func encode(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := protocol.EncodeEnvelope(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// init starts a handshake and returns the HandshakeInit envelope.
func (c *testCore) init() []byte {
	c.t.Helper()
	hs, err := channel.NewHandshake(channel.Config{
		Role: signed.RoleCore, Static: c.key.static, Credential: c.key.cred,
		ProtocolVersion: protocol.Version, Rand: c.rand,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	msg1, err := hs.Start()
	if err != nil {
		c.t.Fatal(err)
	}
	c.hs, c.sess = hs, nil
	return encode(c.t, &pb.HandshakeInit{Noise: msg1})
}

// finish reads the device's HandshakeResponse envelope and returns the
// HandshakeFinish envelope; the core's session is then ready.
func (c *testCore) finish(response proto.Message) []byte {
	c.t.Helper()
	r, ok := response.(*pb.HandshakeResponse)
	if !ok {
		c.t.Fatalf("device answered %v, want HandshakeResponse", response)
	}
	msg3, sess, err := c.hs.Finish(r.GetNoise())
	if err != nil {
		c.t.Fatal(err)
	}
	c.hs, c.sess = nil, sess
	return encode(c.t, &pb.HandshakeFinish{Noise: msg3})
}

// seal returns m as a SecureMessage envelope.
func (c *testCore) seal(m proto.Message) []byte {
	c.t.Helper()
	ct, err := c.sess.Seal(encode(c.t, m))
	if err != nil {
		c.t.Fatal(err)
	}
	return encode(c.t, &pb.SecureMessage{Ciphertext: ct})
}

// open decrypts a SecureMessage from the device; other messages are
// returned as they are.
func (c *testCore) open(m proto.Message) proto.Message {
	c.t.Helper()
	sm, ok := m.(*pb.SecureMessage)
	if !ok {
		return m
	}
	pt, err := c.sess.Open(sm.GetCiphertext())
	if err != nil {
		c.t.Fatalf("core cannot open the device's message: %v", err)
	}
	env, err := protocol.DecodeEnvelope(pt)
	if err != nil {
		c.t.Fatalf("device sealed a bad envelope: %v", err)
	}
	return protocol.Unwrap(env)
}

// handshake runs the whole handshake through h and returns the device's
// answer to HandshakeFinish.
func (c *testCore) handshake(h *harness) []proto.Message {
	c.t.Helper()
	resp := h.callRaw(c.init())
	if len(resp) != 1 {
		c.t.Fatalf("HandshakeInit answered %v", resp)
	}
	if f, ok := resp[0].(*pb.Failure); ok {
		return []proto.Message{f}
	}
	return h.callRaw(c.finish(resp[0]))
}

// call seals m, sends it through h and opens the answers.
func (c *testCore) call(h *harness, m proto.Message) []proto.Message {
	c.t.Helper()
	return c.openAll(h.callRaw(c.seal(m)))
}

func (c *testCore) openAll(ms []proto.Message) []proto.Message {
	c.t.Helper()
	var out []proto.Message
	for _, m := range ms {
		out = append(out, c.open(m))
	}
	return out
}
