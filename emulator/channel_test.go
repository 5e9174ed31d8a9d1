package emulator

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pairing"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// Credential times of the test cores, Unix seconds.
const (
	day       = 86400
	issuedAt  = 1_800_000_000
	expiresAt = issuedAt + day
)

// openChannel runs a handshake with c and fails the test unless the
// device accepted it.
func openChannel(t *testing.T, h *harness, c *testCore) {
	t.Helper()
	wantOne[*pb.Success](t, c.handshake(h))
}

// pairingCode runs a pairing up to the pairing screen: PairingRequest,
// PairingChallenge, PairingConfirm and ButtonAck. It checks the
// commitment and returns the code the core computes.
func pairingCode(t *testing.T, h *harness, c *testCore, user string, role pb.PairingRole) string {
	t.Helper()
	com := wantOne[*pb.PairingCommitment](t, c.call(h, &pb.PairingRequest{User: user, Role: role}))
	challenge := bytes.Repeat([]byte{0x33}, pairing.ChallengeSize)
	rev := wantOne[*pb.PairingReveal](t, c.call(h, &pb.PairingChallenge{Challenge: challenge}))
	hh := c.sess.HandshakeHash()
	if err := pairing.CheckReveal(hh, com.GetCommitment(), rev.GetSecret()); err != nil {
		t.Fatalf("reveal does not match the commitment: %v", err)
	}
	br := wantOne[*pb.ButtonRequest](t, c.call(h, &pb.PairingConfirm{}))
	if br.GetCode() != pb.ButtonRequestCode_BUTTON_REQUEST_PAIRING {
		t.Fatalf("button request %v", br.GetCode())
	}
	if v, _ := h.d.View(); v.Kind != KindHome {
		t.Fatal("pairing screen shown before ButtonAck")
	}
	if got := c.call(h, &pb.ButtonAck{}); len(got) != 0 {
		t.Fatalf("ButtonAck answered %v", got)
	}
	return pairing.Code(hh, rev.GetSecret(), challenge)
}

// pair pairs the device of h with c for alice, an admin.
func pair(t *testing.T, h *harness, c *testCore) {
	t.Helper()
	openChannel(t, h, c)
	pairingCode(t, h, c, "alice", pb.PairingRole_PAIRING_ROLE_ADMIN)
	if err := h.d.Press(ButtonConfirm); err != nil {
		t.Fatal(err)
	}
	if d := wantOne[*pb.PairingDecision](t, c.openAll(messagesToProto(t, h.host.take()))); !d.GetConfirmed() {
		t.Fatal("confirmed on the device, decision says no")
	}
	wantOne[*pb.Success](t, c.call(h, &pb.PairingFinish{}))
}

// reopen restarts the device of h on the same state directory, as after a
// power cycle.
func (h *harness) reopen(dir string) {
	h.t.Helper()
	s, created, err := OpenStore(StoreRequest{Dir: dir})
	if err != nil || created {
		h.t.Fatalf("reopen state: %v (created %v)", err, created)
	}
	h.d, err = New(Config{Store: s, Rand: SeededRand("after restart"), Now: h.clock})
	if err != nil {
		h.t.Fatal(err)
	}
	h.allocate()
}

func newChannelHarness(t *testing.T, seed string) (*harness, string) {
	t.Helper()
	dir := t.TempDir()
	rnd := SeededRand(seed)
	s, _, err := OpenStore(StoreRequest{Dir: dir, Rand: rnd})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, host: &recorder{}, now: time.Unix(1700000000, 0)}
	if h.d, err = New(Config{Store: s, Rand: rnd, Now: h.clock}); err != nil {
		t.Fatal(err)
	}
	h.allocate()
	return h, dir
}

func TestPairingHappyPathAndRestart(t *testing.T) {
	h, dir := newChannelHarness(t, "pair")
	hsm := newCoreKey(t, "hsm", issuedAt, expiresAt)
	c := newTestCore(t, hsm, "1")
	openChannel(t, h, c)
	if p := c.sess.Peer(); !bytes.Equal(p.IdentityKey, h.d.store.Identity().PublicKey()) || p.Role != signed.RoleDevice ||
		p.NotBefore.Unix() != 0 || !p.NotAfter.Equal(signed.Forever) {
		t.Fatalf("device credential %+v", p)
	}
	// An unpaired device's channel carries pairing messages only.
	wantFailure(t, c.call(h, &pb.GetFeatures{}), pb.FailureCode_FAILURE_NOT_PAIRED)
	wantFailure(t, c.call(h, &pb.Ping{Message: "hi"}), pb.FailureCode_FAILURE_NOT_PAIRED)

	code := pairingCode(t, h, c, "alice", pb.PairingRole_PAIRING_ROLE_ADMIN)
	v, _ := h.d.View()
	if v.Kind != KindPrompt || v.Page.Title != "Pair with HSM" || v.Fields[FieldCode] != pairing.Display(code) ||
		v.Fields[FieldHSMFingerprint] != hsm.fingerprint() || v.Fields[FieldUser] != "alice" || v.Fields[FieldRole] != "admin" {
		t.Fatalf("pairing screen %+v", v)
	}
	for _, want := range []string{"Code: " + pairing.Display(code), "User: alice", "Role: admin", hsm.fingerprint()[:19]} {
		if !strings.Contains(v.Text, want) {
			t.Errorf("pairing screen lacks %q:\n%s", want, v.Text)
		}
	}
	if !hasButton(v.Buttons, ButtonConfirm) || !hasButton(v.Buttons, ButtonReject) {
		t.Errorf("pairing screen buttons %v", v.Buttons)
	}
	// Keepalives while the user compares the codes.
	h.advance(time.Second)
	h.d.Tick()
	if ka := messages(t, h.host.take()); len(ka) != 1 || ka[0].Cmd != framing.CmdKeepalive {
		t.Fatalf("keepalive %+v", ka)
	}
	if err := h.d.Press(ButtonConfirm); err != nil {
		t.Fatal(err)
	}
	if d := wantOne[*pb.PairingDecision](t, c.openAll(messagesToProto(t, h.host.take()))); !d.GetConfirmed() {
		t.Fatal("decision not confirmed")
	}
	if h.d.store.Pin() != nil {
		t.Fatal("pinned before PairingFinish")
	}
	wantOne[*pb.Success](t, c.call(h, &pb.PairingFinish{}))
	pin := h.d.store.Pin()
	if pin == nil || !bytes.Equal(pin.PublicKey, hsm.id.PublicKey()) || pin.User != "alice" || pin.Role != pb.PairingRole_PAIRING_ROLE_ADMIN {
		t.Fatalf("pin %+v", pin)
	}
	if n := h.d.store.Newest().Unix(); n != issuedAt {
		t.Errorf("newest %d, want %d", n, issuedAt)
	}
	v, _ = h.d.View()
	if v.Kind != KindHome || !strings.Contains(v.Text, "Paired with HSM") || !strings.Contains(v.Text, "as alice (admin)") ||
		v.Fields[FieldHSMFingerprint] != hsm.fingerprint() || v.Fields[FieldUser] != "alice" {
		t.Fatalf("home screen after pairing %+v", v)
	}
	// The pairing session stays one; a new handshake gives a full
	// channel.
	wantFailure(t, c.call(h, &pb.GetFeatures{}), pb.FailureCode_FAILURE_NOT_PAIRED)
	wantFailure(t, c.call(h, &pb.PairingRequest{User: "mallory", Role: pb.PairingRole_PAIRING_ROLE_ADMIN}), pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)
	c = newTestCore(t, hsm, "1b")
	openChannel(t, h, c)
	f := wantOne[*pb.Features](t, c.call(h, &pb.GetFeatures{}))
	if !proto.Equal(f, h.d.Features()) {
		t.Errorf("features inside the channel %v", f)
	}
	wantFailure(t, c.call(h, &pb.PairingRequest{User: "mallory", Role: pb.PairingRole_PAIRING_ROLE_ADMIN}), pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)

	// After a restart the pin is still there: the same HSM gets a full
	// channel, another one is refused.
	h.reopen(dir)
	if p := h.d.store.Pin(); p == nil || p.User != "alice" {
		t.Fatalf("pin after restart %+v", p)
	}
	if v, _ := h.d.View(); !strings.Contains(v.Text, "Paired with HSM") {
		t.Errorf("home after restart:\n%s", v.Text)
	}
	c = newTestCore(t, hsm, "2")
	openChannel(t, h, c)
	wantOne[*pb.Features](t, c.call(h, &pb.GetFeatures{}))
	other := newTestCore(t, newCoreKey(t, "another hsm", issuedAt, expiresAt), "3")
	wantFailure(t, other.handshake(h), pb.FailureCode_FAILURE_CHANNEL)
	// Refused, it left no channel behind (the earlier one was discarded
	// by its HandshakeInit).
	wantFailure(t, h.callRaw(c.seal(&pb.GetFeatures{})), pb.FailureCode_FAILURE_CHANNEL)
	if p := h.d.store.Pin(); p == nil || !bytes.Equal(p.PublicKey, hsm.id.PublicKey()) {
		t.Fatal("refused core changed the pin")
	}
}

func TestStaleCredentialRefused(t *testing.T) {
	h, dir := newChannelHarness(t, "stale")
	hsm := newCoreKey(t, "hsm", issuedAt, expiresAt)
	pair(t, h, newTestCore(t, hsm, "1"))

	// A newer credential of the pinned HSM is accepted and remembered.
	newer := hsm.withCredential(t, issuedAt+10*day, issuedAt+11*day)
	openChannel(t, h, newTestCore(t, newer, "2"))
	if n := h.d.store.Newest().Unix(); n != issuedAt+10*day {
		t.Fatalf("newest %d", n)
	}
	// The first one expired before the newer one was issued: stale, also
	// after a restart.
	h.reopen(dir)
	wantFailure(t, newTestCore(t, hsm, "3").handshake(h), pb.FailureCode_FAILURE_CHANNEL)
	// One that is still valid when the newest was issued is fine.
	overlapping := hsm.withCredential(t, issuedAt+9*day, issuedAt+10*day)
	openChannel(t, h, newTestCore(t, overlapping, "4"))
	if n := h.d.store.Newest().Unix(); n != issuedAt+10*day {
		t.Fatalf("newest went back to %d", n)
	}
}

func TestTamperedReplayedAndReorderedMessagesCloseTheChannel(t *testing.T) {
	h, _ := newChannelHarness(t, "tamper")
	hsm := newCoreKey(t, "hsm", issuedAt, expiresAt)
	pair(t, h, newTestCore(t, hsm, "0"))

	flip := func(env []byte) []byte {
		e, _ := protocol.DecodeEnvelope(env)
		ct := bytes.Clone(e.GetSecure().GetCiphertext())
		ct[len(ct)/2] ^= 0x01
		return encode(t, &pb.SecureMessage{Ciphertext: ct})
	}
	for name, attack := range map[string]func(c *testCore) [][]byte{
		"bit flipped": func(c *testCore) [][]byte { return [][]byte{flip(c.seal(&pb.GetFeatures{}))} },
		"replayed": func(c *testCore) [][]byte {
			m := c.seal(&pb.GetFeatures{})
			return [][]byte{m, m}
		},
		"reordered": func(c *testCore) [][]byte {
			a, b := c.seal(&pb.GetFeatures{}), c.seal(&pb.Ping{Message: "second"})
			return [][]byte{b, a}
		},
		"dropped": func(c *testCore) [][]byte {
			c.seal(&pb.GetFeatures{})
			return [][]byte{c.seal(&pb.GetFeatures{})}
		},
		"truncated": func(c *testCore) [][]byte {
			e, _ := protocol.DecodeEnvelope(c.seal(&pb.GetFeatures{}))
			ct := e.GetSecure().GetCiphertext()
			return [][]byte{encode(t, &pb.SecureMessage{Ciphertext: ct[:len(ct)-1]})}
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := newTestCore(t, hsm, name)
			openChannel(t, h, c)
			msgs := attack(c)
			var last []proto.Message
			for _, m := range msgs {
				last = h.callRaw(m)
			}
			// The failing message is answered in plain.
			wantFailure(t, last, pb.FailureCode_FAILURE_CHANNEL)
			// The channel is gone: even a genuine message is refused.
			wantFailure(t, h.callRaw(c.seal(&pb.GetFeatures{})), pb.FailureCode_FAILURE_CHANNEL)
			// A new handshake works.
			c2 := newTestCore(t, hsm, name+" again")
			openChannel(t, h, c2)
			wantOne[*pb.Features](t, c2.call(h, &pb.GetFeatures{}))
		})
	}
}

func TestNewHandshakeDiscardsTheChannel(t *testing.T) {
	h, _ := newChannelHarness(t, "rehandshake")
	hsm := newCoreKey(t, "hsm", issuedAt, expiresAt)
	c1 := newTestCore(t, hsm, "1")
	pair(t, h, c1)
	c2 := newTestCore(t, hsm, "2")
	openChannel(t, h, c2)
	wantOne[*pb.Features](t, c2.call(h, &pb.GetFeatures{}))
	// The first session's messages do not open in the second.
	wantFailure(t, h.callRaw(c1.seal(&pb.GetFeatures{})), pb.FailureCode_FAILURE_CHANNEL)
	// A handshake half-way is discarded too, and HandshakeFinish without
	// HandshakeInit is refused.
	c3 := newTestCore(t, hsm, "3")
	resp := h.callRaw(c3.init())
	c4 := newTestCore(t, hsm, "4")
	openChannel(t, h, c4)
	wantFailure(t, h.callRaw(c3.finish(resp[0])), pb.FailureCode_FAILURE_CHANNEL)
	// A HandshakeInit the device cannot read gets FAILURE_CHANNEL.
	wantFailure(t, h.call(&pb.HandshakeInit{Noise: []byte{1, 2, 3}}), pb.FailureCode_FAILURE_CHANNEL)
}

func TestChannelMessagesRefusedInPlain(t *testing.T) {
	h, _ := newChannelHarness(t, "plain")
	for _, m := range []proto.Message{
		&pb.PairingRequest{User: "alice", Role: pb.PairingRole_PAIRING_ROLE_ADMIN},
		&pb.PairingChallenge{Challenge: make([]byte, 32)},
		&pb.PairingConfirm{},
		&pb.PairingFinish{},
	} {
		wantFailure(t, h.call(m), pb.FailureCode_FAILURE_NOT_PAIRED)
	}
	wantFailure(t, h.call(&pb.SecureMessage{Ciphertext: make([]byte, 40)}), pb.FailureCode_FAILURE_CHANNEL)
	wantFailure(t, h.call(&pb.HandshakeFinish{Noise: make([]byte, 64)}), pb.FailureCode_FAILURE_CHANNEL)
	wantFailure(t, h.call(&pb.HandshakeResponse{Noise: make([]byte, 64)}), pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)
	if h.d.store.Pin() != nil {
		t.Fatal("pinned")
	}
}

func TestPairingRejectedOrCancelled(t *testing.T) {
	hsm := newCoreKey(t, "hsm", issuedAt, expiresAt)
	for _, tc := range []struct {
		name string
		// act ends the pairing screen; it returns the device's answers,
		// opened.
		act  func(t *testing.T, h *harness, c *testCore) []proto.Message
		want func(t *testing.T, got []proto.Message)
	}{
		{"rejected on the device", func(t *testing.T, h *harness, c *testCore) []proto.Message {
			if err := h.d.Press(ButtonReject); err != nil {
				t.Fatal(err)
			}
			return c.openAll(messagesToProto(t, h.host.take()))
		}, func(t *testing.T, got []proto.Message) {
			if d := wantOne[*pb.PairingDecision](t, got); d.GetConfirmed() {
				t.Fatal("rejected, decision says yes")
			}
		}},
		{"Cancel from the core", func(t *testing.T, h *harness, c *testCore) []proto.Message {
			return c.call(h, &pb.Cancel{})
		}, func(t *testing.T, got []proto.Message) { wantFailure(t, got, pb.FailureCode_FAILURE_ACTION_CANCELLED) }},
		{"CANCEL command from the relay", func(t *testing.T, h *harness, c *testCore) []proto.Message {
			return c.openAll(messagesToProto(t, h.send(h.cid, framing.CmdCancel, nil)))
		}, func(t *testing.T, got []proto.Message) { wantFailure(t, got, pb.FailureCode_FAILURE_ACTION_CANCELLED) }},
		{"operator rejects after the device confirmed", func(t *testing.T, h *harness, c *testCore) []proto.Message {
			if err := h.d.Press(ButtonConfirm); err != nil {
				t.Fatal(err)
			}
			wantOne[*pb.PairingDecision](t, c.openAll(messagesToProto(t, h.host.take())))
			return c.call(h, &pb.Cancel{})
		}, func(t *testing.T, got []proto.Message) {
			if len(got) != 0 {
				t.Fatalf("Cancel with nothing waiting answered %v", got)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := newChannelHarness(t, tc.name)
			c := newTestCore(t, hsm, tc.name)
			openChannel(t, h, c)
			pairingCode(t, h, c, "bob", pb.PairingRole_PAIRING_ROLE_APPROVER)
			tc.want(t, tc.act(t, h, c))
			if v, _ := h.d.View(); v.Kind != KindHome || strings.Contains(v.Text, "Paired") {
				t.Errorf("screen after the pairing ended:\n%s", v.Text)
			}
			// The pairing is over: PairingFinish is out of order.
			wantFailure(t, c.call(h, &pb.PairingFinish{}), pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)
			if h.d.store.Pin() != nil {
				t.Fatal("pinned without a confirmed pairing")
			}
			// The device can pair afterwards.
			c2 := newTestCore(t, hsm, tc.name+" again")
			pair(t, h, c2)
		})
	}
}

func TestPairingOutOfOrder(t *testing.T) {
	hsm := newCoreKey(t, "hsm", issuedAt, expiresAt)
	request := &pb.PairingRequest{User: "carol", Role: pb.PairingRole_PAIRING_ROLE_APPROVER}
	challenge := &pb.PairingChallenge{Challenge: make([]byte, 32)}
	for name, steps := range map[string][]proto.Message{
		"challenge first":         {challenge},
		"confirm first":           {&pb.PairingConfirm{}},
		"finish first":            {&pb.PairingFinish{}},
		"two requests":            {request, request},
		"confirm before reveal":   {request, &pb.PairingConfirm{}},
		"finish before confirm":   {request, challenge, &pb.PairingFinish{}},
		"finish before the user":  {request, challenge, &pb.PairingConfirm{}, &pb.PairingFinish{}},
		"second challenge":        {request, challenge, challenge},
		"ButtonAck before screen": {request, &pb.ButtonAck{}},
	} {
		t.Run(name, func(t *testing.T) {
			h, _ := newChannelHarness(t, name)
			c := newTestCore(t, hsm, name)
			openChannel(t, h, c)
			var got []proto.Message
			for _, m := range steps {
				got = c.call(h, m)
			}
			wantFailure(t, got, pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)
			// The pairing ended: it must start over.
			wantFailure(t, c.call(h, challenge), pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)
			if v, _ := h.d.View(); v.Kind != KindHome {
				t.Errorf("screen %q", v.Kind)
			}
			if h.d.store.Pin() != nil {
				t.Fatal("pinned")
			}
		})
	}
	// Invalid values are refused without starting or while ending a
	// pairing.
	h, _ := newChannelHarness(t, "values")
	c := newTestCore(t, hsm, "values")
	openChannel(t, h, c)
	for _, m := range []*pb.PairingRequest{
		{User: "", Role: pb.PairingRole_PAIRING_ROLE_ADMIN},
		{User: "alice"},
		{User: "caf\u00e9", Role: pb.PairingRole_PAIRING_ROLE_ADMIN},
		{User: strings.Repeat("a", MaxUserLength+1), Role: pb.PairingRole_PAIRING_ROLE_ADMIN},
	} {
		wantFailure(t, c.call(h, m), pb.FailureCode_FAILURE_DATA_ERROR)
	}
	wantOne[*pb.PairingCommitment](t, c.call(h, request))
	wantFailure(t, c.call(h, &pb.PairingChallenge{Challenge: make([]byte, 31)}), pb.FailureCode_FAILURE_DATA_ERROR)
	wantFailure(t, c.call(h, challenge), pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)
}

func TestPairingScreenBusyAndRestart(t *testing.T) {
	h, dir := newChannelHarness(t, "busy")
	hsm := newCoreKey(t, "hsm", issuedAt, expiresAt)
	c := newTestCore(t, hsm, "1")
	openChannel(t, h, c)
	pairingCode(t, h, c, "dave", pb.PairingRole_PAIRING_ROLE_APPROVER)
	// Another host cannot start a handshake while the user decides.
	other := &harness{t: t, d: h.d, host: &recorder{}}
	other.allocate()
	wantFailure(t, newTestCore(t, hsm, "2").handshake(other), pb.FailureCode_FAILURE_BUSY)
	// A HandshakeInit on the pairing's own framing channel abandons the
	// pairing and starts over.
	c3 := newTestCore(t, hsm, "3")
	openChannel(t, h, c3)
	if v, _ := h.d.View(); v.Kind != KindHome {
		t.Fatalf("pairing screen still shown after a new handshake")
	}
	if err := h.d.Press(ButtonConfirm); !errors.Is(err, ErrButtonUnavailable) {
		t.Fatalf("confirm after the pairing was abandoned: %v", err)
	}
	// A device that loses power while the screen is shown pins nothing.
	pairingCode(t, h, c3, "dave", pb.PairingRole_PAIRING_ROLE_APPROVER)
	h.reopen(dir)
	if h.d.store.Pin() != nil {
		t.Fatal("pinned after a power loss during pairing")
	}
}

func TestFeaturesCarryTheDevelopmentAttestation(t *testing.T) {
	for _, alg := range []string{AlgP256, AlgEd25519, AlgSecp256k1} {
		s, _, err := OpenStore(StoreRequest{Dir: t.TempDir(), Algorithm: alg, Rand: SeededRand("attest")})
		if err != nil {
			t.Fatal(err)
		}
		d, err := New(Config{Store: s})
		if err != nil {
			t.Fatal(err)
		}
		f := d.Features()
		a, err := signed.VerifyAttestation(f.GetAttestation(), f.GetIdentityAlgorithm(), f.GetIdentityPublicKey(), []signed.Root{signed.DevelopmentRoot()})
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if a.Subject != AttestationSubject || !a.Root.IsDevelopment() {
			t.Errorf("%s: attested as %q under %q", alg, a.Subject, a.Root.Name)
		}
		// Deterministic: the same key gives the same chain.
		d2, _ := New(Config{Store: s})
		if !proto.Equal(f, d2.Features()) {
			t.Errorf("%s: attestation differs between two starts", alg)
		}
	}
}

func TestStateKeepsTheChannelKey(t *testing.T) {
	dir := t.TempDir()
	s, _, err := OpenStore(StoreRequest{Dir: dir, Rand: SeededRand("channel key")})
	if err != nil {
		t.Fatal(err)
	}
	cred := s.Credential()
	if err := cred.VerifySignature(); err != nil || cred.Role != signed.RoleDevice || !bytes.Equal(cred.StaticKey[:], s.ChannelKey().Public) {
		t.Fatalf("credential %+v: %v", cred, err)
	}
	r, _, err := OpenStore(StoreRequest{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.ChannelKey().Private, s.ChannelKey().Private) || !bytes.Equal(r.Credential().Marshal(), cred.Marshal()) {
		t.Fatal("channel key or credential changed on reload")
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The terminal draws the pairing screen and its keys answer it.
func TestTerminalPairingScreen(t *testing.T) {
	h, _ := newChannelHarness(t, "terminal")
	hsm := newCoreKey(t, "hsm", issuedAt, expiresAt)
	c := newTestCore(t, hsm, "terminal")
	openChannel(t, h, c)
	code := pairingCode(t, h, c, "alice", pb.PairingRole_PAIRING_ROLE_ADMIN)

	keys, in := io.Pipe()
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Terminal{Device: h.d, In: keys, Out: out}).Run(ctx) }()
	defer func() {
		cancel()
		in.Close()
		<-done
	}()
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); !ok(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s; terminal shows:\n%s", what, out.String())
			}
		}
	}
	waitFor("pairing screen drawn", func() bool {
		s := out.String()
		return strings.Contains(s, "Pair with HSM") && strings.Contains(s, "Code: "+pairing.Display(code)) && strings.Contains(s, hsm.fingerprint()[:19])
	})
	if _, err := in.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	waitFor("confirmed", func() bool { v, _ := h.d.View(); return v.Kind == KindHome })
	if d := wantOne[*pb.PairingDecision](t, c.openAll(messagesToProto(t, h.host.take()))); !d.GetConfirmed() {
		t.Fatal("y did not confirm")
	}
}
