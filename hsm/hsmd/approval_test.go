package hsmd_test

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcec/v2"
	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
	"github.com/flynn/noise"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/bitcoin/btcdtest"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/channel"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// relayDevice plays a paired approval device behind a bridge: the secure
// channel and the prompt exchange of firmware-spec/approval.md. Its user
// presses buttons through press.
type relayDevice struct {
	t      *testing.T
	ref    string
	user   string
	key    *signed.SoftwareKey
	static noise.DHKey
	cred   *signed.Credential
	pinned []byte // the HSM identity key

	mu        sync.Mutex // guards the fields below; the bridge loop and the test both use them
	hs        *channel.Handshake
	sess      *channel.Session
	counter   uint64
	showing   *signed.Prompt
	cancelled []string // request ids withdrawn while shown
}

func newRelayDevice(t *testing.T, ref, user string, alg pb.Algorithm, pinned []byte) *relayDevice {
	t.Helper()
	k, err := signed.GenerateSoftwareKey(alg, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := channel.GenerateStatic(nil)
	cred := &signed.Credential{Role: signed.RoleDevice, NotBefore: time.Unix(0, 0), NotAfter: signed.Forever}
	copy(cred.StaticKey[:], st.Public)
	if err := cred.Sign(k); err != nil {
		t.Fatal(err)
	}
	return &relayDevice{t: t, ref: ref, user: user, key: k, static: st, cred: cred, pinned: pinned}
}

func (d *relayDevice) id() string { return signed.DeviceID(d.key.PublicKey()) }

func (d *relayDevice) features() *pb.Features {
	return &pb.Features{DeviceId: d.id(), Model: "test", IdentityAlgorithm: d.key.Algorithm(), IdentityPublicKey: d.key.PublicKey()}
}

// record is the pairing record a completed pairing would have stored.
func (d *relayDevice) record() *core.DeviceRecord {
	return &core.DeviceRecord{ID: d.id(), Algorithm: d.key.Algorithm(), IdentityKey: d.key.PublicKey(), User: d.user,
		Role: core.RoleApprover, State: core.DevicePaired, PairedAt: time.Now()}
}

// handle answers one envelope; nil means no answer. d.mu is held.
func (d *relayDevice) handle(raw []byte) []byte {
	env, err := protocol.DecodeEnvelope(raw)
	if err != nil {
		d.t.Errorf("device %s: %v", d.ref, err)
		return nil
	}
	plain := func(m proto.Message) []byte {
		b, err := protocol.EncodeEnvelope(m)
		if err != nil {
			d.t.Error(err)
		}
		return b
	}
	switch m := protocol.Unwrap(env).(type) {
	case *pb.HandshakeInit:
		d.hs, _ = channel.NewHandshake(channel.Config{Role: signed.RoleDevice, Static: d.static, Credential: d.cred,
			ProtocolVersion: protocol.Version, Accept: func(c *signed.Credential) error {
				if !bytes.Equal(c.IdentityKey, d.pinned) {
					return errors.New("not the pinned HSM")
				}
				return nil
			}})
		msg2, err := d.hs.Respond(m.GetNoise())
		if err != nil {
			return plain(&pb.Failure{Code: pb.FailureCode_FAILURE_CHANNEL, Message: err.Error()})
		}
		return plain(&pb.HandshakeResponse{Noise: msg2})
	case *pb.HandshakeFinish:
		s, err := d.hs.Complete(m.GetNoise())
		if err != nil {
			return plain(&pb.Failure{Code: pb.FailureCode_FAILURE_CHANNEL, Message: err.Error()})
		}
		d.sess, d.showing = s, nil
		return plain(&pb.Success{})
	case *pb.SecureMessage:
		pt, err := d.sess.Open(m.GetCiphertext())
		if err != nil {
			return plain(&pb.Failure{Code: pb.FailureCode_FAILURE_CHANNEL})
		}
		inner, err := protocol.DecodeEnvelope(pt)
		if err != nil {
			d.t.Error(err)
			return nil
		}
		switch im := protocol.Unwrap(inner).(type) {
		case *pb.PromptRequest:
			p, err := signed.ParsePrompt(im.GetPrompt())
			if err == nil {
				peer := d.sess.Peer()
				err = p.Verify(peer.Algorithm, peer.IdentityKey)
			}
			if err == nil && p.DeviceID != d.id() {
				err = fmt.Errorf("prompt for device %s", p.DeviceID)
			}
			if err != nil {
				d.t.Errorf("device %s refuses a prompt: %v", d.ref, err)
				return d.sealed(&pb.Failure{Code: pb.FailureCode_FAILURE_DATA_ERROR, Message: err.Error()})
			}
			d.showing = p
			return d.sealed(&pb.ButtonRequest{Code: pb.ButtonRequestCode_BUTTON_REQUEST_APPROVAL})
		case *pb.ButtonAck:
			return nil // shown; the user decides (press)
		case *pb.Cancel:
			if d.showing == nil {
				return nil
			}
			d.cancelled = append(d.cancelled, d.showing.RequestID)
			d.showing = nil
			return d.sealed(&pb.Failure{Code: pb.FailureCode_FAILURE_ACTION_CANCELLED})
		default:
			d.t.Errorf("device %s: unexpected %T", d.ref, im)
		}
	default:
		d.t.Errorf("device %s: unexpected %T", d.ref, m)
	}
	return nil
}

func (d *relayDevice) sealed(m proto.Message) []byte {
	b, err := protocol.EncodeEnvelope(m)
	if err != nil {
		d.t.Error(err)
	}
	ct, err := d.sess.Seal(b)
	if err != nil {
		d.t.Error(err)
	}
	out, _ := protocol.EncodeEnvelope(&pb.SecureMessage{Ciphertext: ct})
	return out
}

// shows returns the request id of the prompt shown, if any.
func (d *relayDevice) shows() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.showing == nil {
		return ""
	}
	return d.showing.RequestID
}

func (d *relayDevice) wasCancelled(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Contains(d.cancelled, id)
}

// relayBridge is a bridge whose devices answer the core as they come.
type relayBridge struct {
	t       *testing.T
	stream  apipb.Relay_ConnectClient
	mu      sync.Mutex // serialises Send
	devices map[string]*relayDevice
}

func (b *relayBridge) send(m *apipb.BridgeMessage) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.stream.Send(m); err != nil {
		b.t.Logf("bridge send: %v", err)
	}
}

func (b *relayBridge) frame(ref string, env []byte) {
	b.send(&apipb.BridgeMessage{Msg: &apipb.BridgeMessage_Frame{Frame: &apipb.DeviceFrame{Ref: ref, Envelope: env}}})
}

func (b *relayBridge) run() {
	for {
		m, err := b.stream.Recv()
		if err != nil {
			return
		}
		f := m.GetFrame()
		if f == nil {
			continue
		}
		d := b.devices[f.GetRef()]
		d.mu.Lock()
		ans := d.handle(f.GetEnvelope())
		d.mu.Unlock()
		if ans != nil {
			b.frame(d.ref, ans)
		}
	}
}

func (b *relayBridge) attach(d *relayDevice) {
	raw, _ := protocol.EncodeEnvelope(d.features())
	b.send(&apipb.BridgeMessage{Msg: &apipb.BridgeMessage_Attached{Attached: &apipb.DeviceAttached{Ref: d.ref, Transport: "udp", Path: "test", Features: raw}}})
}

func (b *relayBridge) detach(d *relayDevice) {
	b.send(&apipb.BridgeMessage{Msg: &apipb.BridgeMessage_Detached{Detached: &apipb.DeviceDetached{Ref: d.ref, Reason: "unplugged"}}})
}

// press has the device's user decide on the prompt shown: the device
// stores its new counter, signs, and answers through the bridge.
func (b *relayBridge) press(d *relayDevice, dec signed.Decision) {
	b.t.Helper()
	d.mu.Lock()
	p := d.showing
	if p == nil {
		d.mu.Unlock()
		b.t.Fatalf("device %s shows no prompt", d.ref)
	}
	d.showing = nil
	d.counter++
	a := &signed.Approval{Nonce: p.Nonce, Decision: dec, Counter: d.counter, DeviceID: d.id()}
	copy(a.PromptDigest[:], p.Digest())
	if err := a.Sign(d.key); err != nil {
		b.t.Fatal(err)
	}
	ans := d.sealed(&pb.PromptAnswer{Approval: a.Marshal()})
	d.mu.Unlock()
	b.frame(d.ref, ans)
}

func connectRelayBridge(t *testing.T, e *env, devs ...*relayDevice) *relayBridge {
	t.Helper()
	b := connectBridge(t, e, "desk")
	rb := &relayBridge{t: t, stream: b.stream, devices: map[string]*relayDevice{}}
	for _, d := range devs {
		rb.devices[d.ref] = d
	}
	go rb.run()
	return rb
}

// pairDevices stores pairing records for the devices.
func pairDevices(t *testing.T, e *env, devs ...*relayDevice) {
	t.Helper()
	for _, d := range devs {
		if err := e.devices.CreateDevice(t.Context(), d.record()); err != nil {
			t.Fatal(err)
		}
	}
}

func waitChannels(t *testing.T, op apipb.OperatorClient, devs ...*relayDevice) {
	t.Helper()
	eventually(t, func() error {
		res, err := op.ListDevices(t.Context(), &apipb.ListDevicesRequest{})
		if err != nil {
			return err
		}
		up := map[string]bool{}
		for _, d := range res.GetDevices() {
			up[d.GetId()] = d.GetChannel()
		}
		for _, d := range devs {
			if !up[d.id()] {
				return fmt.Errorf("no channel to %s yet", d.ref)
			}
		}
		return nil
	})
}

func waitRequest(t *testing.T, cust apipb.CustodyClient, id string, ok func(*apipb.Request) bool) *apipb.Request {
	t.Helper()
	var r *apipb.Request
	eventually(t, func() error {
		var err error
		if r, err = cust.GetRequest(t.Context(), &apipb.GetRequestRequest{Id: id}); err != nil {
			return err
		}
		if !ok(r) {
			return fmt.Errorf("request %s: state %v, approved by %v, rejected by %v", id, r.GetState(), r.GetApprovedBy(), r.GetRejectedBy())
		}
		return nil
	})
	return r
}

func waitShown(t *testing.T, id string, devs ...*relayDevice) {
	t.Helper()
	eventually(t, func() error {
		for _, d := range devs {
			if d.shows() != id {
				return fmt.Errorf("device %s does not show request %s", d.ref, id)
			}
		}
		return nil
	})
}

// spend is a base64 PSBT spending output index of prev (which pays the
// wallet's first address): half to a foreign address, the rest less the
// fee as change to the wallet's second address.
func spend(t testing.TB, prev *wire.MsgTx, index uint32, change []byte) []byte {
	t.Helper()
	h := prev.TxHash()
	value := prev.TxOut[index].Value
	d := sha256.Sum256([]byte("hsmd test destination"))
	_, dest := btcec.PrivKeyFromBytes(d[:])
	destScript := append([]byte{0x00, 0x14}, btcutil.Hash160(dest.SerializeCompressed())...)
	p, err := psbt.New([]*wire.OutPoint{wire.NewOutPoint(&h, index)},
		[]*wire.TxOut{wire.NewTxOut(value/2, destScript), wire.NewTxOut(value-value/2-5_000, change)},
		2, 0, []uint32{wire.MaxTxInSequenceNum - 2})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := psbt.NewUpdater(p)
	if err := u.AddInNonWitnessUtxo(prev, 0); err != nil {
		t.Fatal(err)
	}
	if err := u.AddInWitnessUtxo(prev.TxOut[index], 0); err != nil {
		t.Fatal(err)
	}
	b64, err := p.B64Encode()
	if err != nil {
		t.Fatal(err)
	}
	return []byte(b64)
}

func p2wpkh(pub []byte) []byte { return append([]byte{0x00, 0x14}, btcutil.Hash160(pub)...) }

// The approval path on real parts: custody keys in SoftHSM2, wallet and
// request records in SQLite, devices (three key algorithms) answering
// through a bridge's relay stream, and a btcd node that must accept the
// signed transaction. Then a rejection, with a device that connects only
// after the request was submitted.
func TestApprovalPathOverRelay(t *testing.T) {
	e := startWith(t, false, true)
	ctx := t.Context()
	alice := newRelayDevice(t, "emu-a", "alice", pb.Algorithm_ALGORITHM_ECDSA_P256, e.identity.PublicKey())
	bob := newRelayDevice(t, "emu-b", "bob", pb.Algorithm_ALGORITHM_ED25519, e.identity.PublicKey())
	carol := newRelayDevice(t, "emu-c", "carol", pb.Algorithm_ALGORITHM_ECDSA_SECP256K1, e.identity.PublicKey())
	pairDevices(t, e, alice, bob, carol)
	op := apipb.NewOperatorClient(e.dial(t, "operator"))
	cust := apipb.NewCustodyClient(e.dial(t, "operator"))
	b := connectRelayBridge(t, e, alice, bob, carol)
	for _, d := range []*relayDevice{alice, bob, carol} {
		b.attach(d)
	}
	waitChannels(t, op, alice, bob, carol)

	if _, err := cust.CreateWallet(ctx, &apipb.CreateWalletRequest{Name: "treasury", Network: "simnet", Approvers: []string{"alice", "bob", "carol"}, Quorum: 2}); err != nil {
		t.Fatal(err)
	}
	var addrs []*apipb.WalletAddress
	for range 2 {
		a, err := cust.NewAddress(ctx, &apipb.NewAddressRequest{Wallet: "treasury"})
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, a.GetAddress())
	}
	w, err := cust.GetWallet(ctx, &apipb.GetWalletRequest{Name: "treasury"})
	if err != nil || len(w.GetAddresses()) != 2 || w.GetQuorum() != 2 || w.GetNetwork() != "simnet" {
		t.Fatalf("wallet %v, %v", w, err)
	}
	// The custody keys are in the HSM.
	for _, a := range addrs {
		pub, err := e.store.PublicKey(ctx, a.GetKeyRef())
		if err != nil || !bytes.Equal(pub.Bytes(), a.GetPublicKey()) {
			t.Fatalf("key %s in the HSM: %v", a.GetKeyRef(), err)
		}
	}

	// Coins: a real chain mining to the wallet's first address.
	mining, err := btcutil.DecodeAddress(addrs[0].GetAddress(), &chaincfg.SimNetParams)
	if err != nil {
		t.Fatal(err)
	}
	node := btcdtest.Start(t, btcdtest.Options{Network: &chaincfg.SimNetParams, MiningAddr: mining})
	blocks := node.Generate(t, btcdtest.SimnetSegwitHeight)
	coinbase := func(i int) (*wire.MsgTx, uint32) {
		tx := node.Block(t, blocks[i]).Transactions[0]
		for j, out := range tx.TxOut {
			if bytes.Equal(out.PkScript, p2wpkh(addrs[0].GetPublicKey())) {
				return tx, uint32(j)
			}
		}
		t.Fatalf("block %d does not pay the wallet", i+1)
		return nil, 0
	}

	// 2 of 3 approve: signed, and the node takes it.
	prev, index := coinbase(0)
	req, err := cust.Submit(ctx, &apipb.SubmitRequest{Wallet: "treasury", Initiator: "operator", Psbt: spend(t, prev, index, p2wpkh(addrs[1].GetPublicKey()))})
	if err != nil {
		t.Fatal(err)
	}
	if req.GetState() != apipb.RequestState_REQUEST_STATE_PENDING || len(req.GetPrompts()) != 3 || len(req.GetSummary().GetOutputs()) != 2 {
		t.Fatalf("submitted %v", req)
	}
	waitShown(t, req.GetId(), alice, bob, carol)
	b.press(alice, signed.Approve)
	waitRequest(t, cust, req.GetId(), func(r *apipb.Request) bool { return slices.Equal(r.GetApprovedBy(), []string{"alice"}) })
	b.press(bob, signed.Approve)
	r := waitRequest(t, cust, req.GetId(), func(r *apipb.Request) bool { return r.GetState() == apipb.RequestState_REQUEST_STATE_SIGNED })
	eventually(t, func() error {
		if !carol.wasCancelled(req.GetId()) {
			return errors.New("carol's prompt not withdrawn")
		}
		return nil
	})
	var tx wire.MsgTx
	if err := tx.Deserialize(bytes.NewReader(r.GetSignedTx())); err != nil {
		t.Fatal(err)
	}
	if tx.TxHash().String() != r.GetSummary().GetTxid() || len(r.GetSignedPsbt()) == 0 {
		t.Fatalf("signed tx %s, summary %s", tx.TxHash(), r.GetSummary().GetTxid())
	}
	txid, err := node.Send(&tx)
	if err != nil {
		t.Fatalf("the node refused the signed transaction: %v", err)
	}
	node.RequireConfirmed(t, txid)
	if vm, err := txscript.NewEngine(prev.TxOut[index].PkScript, &tx, 0, txscript.StandardVerifyFlags, nil,
		txscript.NewTxSigHashes(&tx, txscript.NewCannedPrevOutputFetcher(prev.TxOut[index].PkScript, prev.TxOut[index].Value)),
		prev.TxOut[index].Value, txscript.NewCannedPrevOutputFetcher(prev.TxOut[index].PkScript, prev.TxOut[index].Value)); err != nil || vm.Execute() != nil {
		t.Fatal("signature does not verify")
	}
	for _, a := range r.GetAnswers() {
		if !a.GetApproved() || a.GetCounter() != 1 {
			t.Fatalf("answer %v", a)
		}
	}

	// Carol is unplugged; a second request is submitted; she plugs in and
	// gets it, and rejects it: the request stops, the others' prompts are
	// withdrawn, nothing is signed.
	b.detach(carol)
	eventually(t, func() error {
		res, err := op.ListDevices(ctx, &apipb.ListDevicesRequest{})
		if err != nil {
			return err
		}
		for _, d := range res.GetDevices() {
			if d.GetId() == carol.id() && d.GetConnected() {
				return errors.New("carol still attached")
			}
		}
		return nil
	})
	prev2, index2 := coinbase(1)
	req2, err := cust.Submit(ctx, &apipb.SubmitRequest{Wallet: "treasury", Initiator: "operator", Psbt: spend(t, prev2, index2, p2wpkh(addrs[1].GetPublicKey()))})
	if err != nil {
		t.Fatal(err)
	}
	waitShown(t, req2.GetId(), alice, bob)
	b.attach(carol)
	waitShown(t, req2.GetId(), carol)
	b.press(carol, signed.Reject)
	r2 := waitRequest(t, cust, req2.GetId(), func(r *apipb.Request) bool { return r.GetState() == apipb.RequestState_REQUEST_STATE_REJECTED })
	if !slices.Equal(r2.GetRejectedBy(), []string{"carol"}) || len(r2.GetSignedTx()) != 0 {
		t.Fatalf("rejected request %v", r2)
	}
	eventually(t, func() error {
		if !alice.wasCancelled(req2.GetId()) || !bob.wasCancelled(req2.GetId()) {
			return errors.New("prompts not withdrawn after the rejection")
		}
		return nil
	})
	list, err := cust.ListRequests(ctx, &apipb.ListRequestsRequest{Wallet: "treasury"})
	if err != nil || len(list.GetRequests()) != 2 || list.GetRequests()[0].GetId() != req.GetId() || len(list.GetRequests()[0].GetSignedTx()) != 0 {
		t.Fatalf("list: %v, %v", list, err)
	}
	if l, _ := cust.ListRequests(ctx, &apipb.ListRequestsRequest{State: apipb.RequestState_REQUEST_STATE_REJECTED}); len(l.GetRequests()) != 1 {
		t.Fatalf("rejected requests: %v", l)
	}

	// The audit log holds each request's story.
	count := func(kinds []string, k string) int {
		n := 0
		for _, x := range kinds {
			if x == k {
				n++
			}
		}
		return n
	}
	until(t, ctx, "audit entries", func() error {
		k1, k2 := e.auditKinds(t, req.GetId()), e.auditKinds(t, req2.GetId())
		if len(k1) == 0 || k1[0] != audit.KindRequest || count(k1, audit.KindPrompt) == 0 ||
			count(k1, audit.KindApproval) != 2 || count(k1, audit.KindSignature) != 1 {
			return fmt.Errorf("audit entries for the signed request: %v", k1)
		}
		if len(k2) == 0 || k2[0] != audit.KindRequest || count(k2, audit.KindRejection) != 1 || count(k2, audit.KindSignature) != 0 {
			return fmt.Errorf("audit entries for the rejected request: %v", k2)
		}
		return nil
	})
}

func TestCustodyAPIErrors(t *testing.T) {
	e := startWith(t, false, true)
	ctx := t.Context()
	cust := apipb.NewCustodyClient(e.dial(t, "operator"))
	alice := newRelayDevice(t, "emu-a", "alice", pb.Algorithm_ALGORITHM_ECDSA_P256, e.identity.PublicKey())
	pairDevices(t, e, alice)
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"unknown network", func() error {
			_, err := cust.CreateWallet(ctx, &apipb.CreateWalletRequest{Name: "w", Network: "moon", Approvers: []string{"alice"}, Quorum: 1})
			return err
		}(), codes.InvalidArgument},
		{"unpaired approver", func() error {
			_, err := cust.CreateWallet(ctx, &apipb.CreateWalletRequest{Name: "w", Network: "simnet", Approvers: []string{"mallory"}, Quorum: 1})
			return err
		}(), codes.InvalidArgument},
		{"unknown wallet", func() error { _, err := cust.NewAddress(ctx, &apipb.NewAddressRequest{Wallet: "nope"}); return err }(), codes.NotFound},
		{"unknown request", func() error {
			_, err := cust.GetRequest(ctx, &apipb.GetRequestRequest{Id: "0011223344556677"})
			return err
		}(), codes.NotFound},
	} {
		if status.Code(tc.err) != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
	}
	if _, err := cust.CreateWallet(ctx, &apipb.CreateWalletRequest{Name: "w", Network: "simnet", Approvers: []string{"alice"}, Quorum: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := cust.CreateWallet(ctx, &apipb.CreateWalletRequest{Name: "w", Network: "simnet", Approvers: []string{"alice"}, Quorum: 1}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("existing wallet: %v", err)
	}
	if _, err := cust.Submit(ctx, &apipb.SubmitRequest{Wallet: "w", Initiator: "operator", Psbt: []byte("not a psbt")}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("garbage PSBT: %v", err)
	}
	// The bridge token does not open the Custody API.
	if _, err := apipb.NewCustodyClient(e.dial(t, "bridge")).ListWallets(ctx, &apipb.ListWalletsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("custody API with the bridge token: %v", err)
	}
	// A core without the approval path says so.
	plain := start(t, false)
	if _, err := apipb.NewCustodyClient(plain.dial(t, "operator")).ListWallets(ctx, &apipb.ListWalletsRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("no approval path: %v", err)
	}
}

// A wallet or request edited in the database behind the core's back is
// refused loudly: a hostile database cannot lower a quorum or mark a
// request approved.
func TestTamperedApprovalRecordsAreRefused(t *testing.T) {
	e := startWith(t, false, true)
	ctx := t.Context()
	cust := apipb.NewCustodyClient(e.dial(t, "operator"))
	alice := newRelayDevice(t, "emu-a", "alice", pb.Algorithm_ALGORITHM_ECDSA_P256, e.identity.PublicKey())
	bob := newRelayDevice(t, "emu-b", "bob", pb.Algorithm_ALGORITHM_ECDSA_P256, e.identity.PublicKey())
	pairDevices(t, e, alice, bob)
	if _, err := cust.CreateWallet(ctx, &apipb.CreateWalletRequest{Name: "w", Network: "simnet", Approvers: []string{"alice", "bob"}, Quorum: 2}); err != nil {
		t.Fatal(err)
	}
	a, err := cust.NewAddress(ctx, &apipb.NewAddressRequest{Wallet: "w"})
	if err != nil {
		t.Fatal(err)
	}
	prev := wire.NewMsgTx(2)
	h := chainhash.HashH([]byte("funding"))
	prev.AddTxIn(wire.NewTxIn(wire.NewOutPoint(&h, 0), nil, nil))
	prev.AddTxOut(wire.NewTxOut(100_000_000, p2wpkh(a.GetAddress().GetPublicKey())))
	req, err := cust.Submit(ctx, &apipb.SubmitRequest{Wallet: "w", Initiator: "operator", Psbt: spend(t, prev, 0, p2wpkh(a.GetAddress().GetPublicKey()))})
	if err != nil {
		t.Fatal(err)
	}

	edit := recordEditor(t, e.dataDir)
	edit("wallet", `"quorum":2`, `"quorum":1`)
	if _, err := cust.GetWallet(ctx, &apipb.GetWalletRequest{Name: "w"}); status.Code(err) != codes.DataLoss {
		t.Fatalf("wallet with a lowered quorum: %v, want DataLoss", err)
	}
	if _, err := cust.Submit(ctx, &apipb.SubmitRequest{Wallet: "w", Initiator: "operator", Psbt: spend(t, prev, 0, p2wpkh(a.GetAddress().GetPublicKey()))}); status.Code(err) != codes.DataLoss {
		t.Fatalf("submit to a tampered wallet: %v, want DataLoss", err)
	}
	edit("request", `"state":"pending"`, `"state":"approved"`)
	if _, err := cust.GetRequest(ctx, &apipb.GetRequestRequest{Id: req.GetId()}); status.Code(err) != codes.DataLoss {
		t.Fatalf("request marked approved: %v, want DataLoss", err)
	}
	// The core's upkeep refuses it too: nothing gets signed.
	if _, err := e.core.Tick(ctx); err == nil {
		t.Fatal("Tick used a tampered request")
	}
}

// recordEditor opens the daemon's database behind its back, as a hostile
// database would, and returns edit: it replaces from by to in the body of
// every record of kind, and fails the test if there was none to edit.
func recordEditor(t *testing.T, dataDir string) (edit func(kind, from, to string)) {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(dataDir, "opencustody.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return func(kind, from, to string) {
		t.Helper()
		res, err := db.Exec(`UPDATE records SET body = CAST(replace(CAST(body AS TEXT), ?, ?) AS BLOB) WHERE kind = ?`, from, to, kind)
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			t.Fatalf("no %s record edited", kind)
		}
	}
}

// A hostile database cannot lower the admin quorum or approve an admin
// change: the governance and change records are authenticated, and the
// core refuses them, saying which failed.
func TestTamperedChangeRecordsAreRefused(t *testing.T) {
	e := startWith(t, true, true)
	ctx := t.Context()
	if _, err := e.core.SetAdminQuorum(ctx, 2); err != nil {
		t.Fatal(err)
	}
	cust := apipb.NewCustodyClient(e.dial(t, "operator"))
	op := apipb.NewOperatorClient(e.dial(t, "operator"))
	alice := newRelayDevice(t, "emu-a", "alice", pb.Algorithm_ALGORITHM_ECDSA_P256, e.identity.PublicKey())
	bob := newRelayDevice(t, "emu-b", "bob", pb.Algorithm_ALGORITHM_ECDSA_P256, e.identity.PublicKey())
	pairDevices(t, e, alice, bob)
	for _, name := range []string{"root1", "root2"} {
		rec := newRelayDevice(t, name, name, pb.Algorithm_ALGORITHM_ED25519, e.identity.PublicKey()).record()
		rec.Role = core.RoleAdmin
		if err := e.devices.CreateDevice(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cust.CreateWallet(ctx, &apipb.CreateWalletRequest{Name: "w", Network: "simnet", Approvers: []string{"alice", "bob"}, Quorum: 2}); err != nil {
		t.Fatal(err)
	}
	doc := []byte("version: 1\ngroups: {g: {members: [alice, bob], quorum: 1}}\nrequire: g\n")
	ch, err := cust.ProposePolicy(ctx, &apipb.ProposePolicyRequest{Wallet: "w", Document: doc, Initiator: "olivia"})
	if err != nil {
		t.Fatal(err)
	}
	if ch.GetQuorum() != 2 || len(ch.GetAdmins()) != 2 {
		t.Fatalf("change %v", ch)
	}

	edit := recordEditor(t, e.dataDir)
	edit("change", `"state":"pending"`, `"state":"approved"`)
	if _, err := op.GetChange(ctx, &apipb.GetChangeRequest{Id: ch.GetId()}); status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), ch.GetId()) {
		t.Fatalf("change marked approved: %v, want DataLoss naming it", err)
	}
	if _, err := e.core.Tick(ctx); err == nil {
		t.Fatal("Tick used a tampered change")
	}
	if p, err := cust.GetPolicy(ctx, &apipb.GetPolicyRequest{Wallet: "w"}); err != nil || p.GetVersion() != 1 {
		t.Fatalf("policy after a forged approval: %v %v", p, err)
	}
	edit("governance", `"admin_quorum":2`, `"admin_quorum":1`)
	if _, err := cust.ProposePolicy(ctx, &apipb.ProposePolicyRequest{Wallet: "w", Document: doc, Initiator: "olivia"}); status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), "governance") {
		t.Fatalf("lowered admin quorum: %v, want DataLoss naming the governance record", err)
	}
}

// TestRolledBackAndDeletedRecordsAreRefused changes the database in ways
// the record MACs alone cannot see: a device's record put back to its
// genuine version from before its revocation, a wallet put back to before
// its newest address, a request deleted, and an audit entry removed. Each
// is refused, by the API and by the core's upkeep, naming the record.
func TestRolledBackAndDeletedRecordsAreRefused(t *testing.T) {
	e := startWith(t, false, true)
	ctx := t.Context()
	cust := apipb.NewCustodyClient(e.dial(t, "operator"))
	op := apipb.NewOperatorClient(e.dial(t, "operator"))
	alice := newRelayDevice(t, "emu-a", "alice", pb.Algorithm_ALGORITHM_ECDSA_P256, e.identity.PublicKey())
	bob := newRelayDevice(t, "emu-b", "bob", pb.Algorithm_ALGORITHM_ECDSA_P256, e.identity.PublicKey())
	pairDevices(t, e, alice, bob)
	if _, err := cust.CreateWallet(ctx, &apipb.CreateWalletRequest{Name: "w", Network: "simnet", Approvers: []string{"alice", "bob"}, Quorum: 2}); err != nil {
		t.Fatal(err)
	}
	a, err := cust.NewAddress(ctx, &apipb.NewAddressRequest{Wallet: "w"})
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", filepath.Join(e.dataDir, "opencustody.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	exec := func(q string, args ...any) {
		t.Helper()
		res, err := db.Exec(q, args...)
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			t.Fatalf("%s: no row changed", q)
		}
	}
	if _, err := db.Exec(`CREATE TABLE saved AS SELECT * FROM records`); err != nil {
		t.Fatal(err)
	}
	aliceID := alice.record().ID
	if _, err := op.RevokeDevice(ctx, &apipb.RevokeDeviceRequest{DeviceId: aliceID}); err != nil {
		t.Fatal(err)
	}
	if _, err := cust.NewAddress(ctx, &apipb.NewAddressRequest{Wallet: "w"}); err != nil {
		t.Fatal(err)
	}
	prev := wire.NewMsgTx(2)
	h := chainhash.HashH([]byte("funding"))
	prev.AddTxIn(wire.NewTxIn(wire.NewOutPoint(&h, 0), nil, nil))
	prev.AddTxOut(wire.NewTxOut(100_000_000, p2wpkh(a.GetAddress().GetPublicKey())))
	if _, err := op.RevokeDevice(ctx, &apipb.RevokeDeviceRequest{DeviceId: bob.record().ID}); err != nil {
		t.Fatal(err)
	}
	restore := func(kind, key string) {
		t.Helper()
		exec(`UPDATE records SET version = s.version, body = s.body, mac = s.mac FROM saved s
			WHERE records.kind = ? AND records.key = ? AND s.kind = records.kind AND s.key = records.key`, kind, key)
	}
	wantDataLoss := func(what string, err error, parts ...string) {
		t.Helper()
		if status.Code(err) != codes.DataLoss {
			t.Fatalf("%s: %v, want DataLoss", what, err)
		}
		for _, p := range parts {
			if !strings.Contains(err.Error(), p) {
				t.Errorf("%s: %v does not say %q", what, err, p)
			}
		}
	}

	// Alice's revocation undone by putting her old record back.
	restore("device", aliceID)
	_, err = op.ListDevices(ctx, &apipb.ListDevicesRequest{})
	wantDataLoss("devices with a revocation rolled back", err, fmt.Sprintf("device %q", aliceID), "rolled back to version 1")
	exec(`DELETE FROM records WHERE kind = 'device'`)
	exec(`INSERT INTO records SELECT * FROM saved WHERE kind = 'device'`) // both back as paired, manifest as now
	_, err = op.ListDevices(ctx, &apipb.ListDevicesRequest{})
	wantDataLoss("devices rolled back", err, "rolled back")

	// The wallet put back to before its second address.
	restore("wallet", "w")
	_, err = cust.GetWallet(ctx, &apipb.GetWalletRequest{Name: "w"})
	wantDataLoss("wallet rolled back", err, `wallet "w"`, "rolled back to version 2")
	_, err = cust.Submit(ctx, &apipb.SubmitRequest{Wallet: "w", Initiator: "olivia", Psbt: spend(t, prev, 0, p2wpkh(a.GetAddress().GetPublicKey()))})
	wantDataLoss("submit to a rolled back wallet", err, `wallet "w"`)
}

// TestDeletedRequestIsRefused deletes a pending request's row: reading it,
// listing requests and the core's upkeep all refuse, naming it.
func TestDeletedRequestIsRefused(t *testing.T) {
	e := startWith(t, false, true)
	ctx := t.Context()
	cust := apipb.NewCustodyClient(e.dial(t, "operator"))
	alice := newRelayDevice(t, "emu-a", "alice", pb.Algorithm_ALGORITHM_ECDSA_P256, e.identity.PublicKey())
	bob := newRelayDevice(t, "emu-b", "bob", pb.Algorithm_ALGORITHM_ECDSA_P256, e.identity.PublicKey())
	pairDevices(t, e, alice, bob)
	if _, err := cust.CreateWallet(ctx, &apipb.CreateWalletRequest{Name: "w", Network: "simnet", Approvers: []string{"alice", "bob"}, Quorum: 2}); err != nil {
		t.Fatal(err)
	}
	a, err := cust.NewAddress(ctx, &apipb.NewAddressRequest{Wallet: "w"})
	if err != nil {
		t.Fatal(err)
	}
	prev := wire.NewMsgTx(2)
	h := chainhash.HashH([]byte("funding"))
	prev.AddTxIn(wire.NewTxIn(wire.NewOutPoint(&h, 0), nil, nil))
	prev.AddTxOut(wire.NewTxOut(100_000_000, p2wpkh(a.GetAddress().GetPublicKey())))
	req, err := cust.Submit(ctx, &apipb.SubmitRequest{Wallet: "w", Initiator: "olivia", Psbt: spend(t, prev, 0, p2wpkh(a.GetAddress().GetPublicKey()))})
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", filepath.Join(e.dataDir, "opencustody.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`DELETE FROM records WHERE kind = 'request' AND key = ?`, req.GetId()); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("request %q: integrity check failed: deleted", req.GetId())
	if _, err := cust.GetRequest(ctx, &apipb.GetRequestRequest{Id: req.GetId()}); status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), want) {
		t.Errorf("GetRequest: %v, want DataLoss saying %q", err, want)
	}
	if _, err := cust.ListRequests(ctx, &apipb.ListRequestsRequest{}); status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), want) {
		t.Errorf("ListRequests: %v, want DataLoss saying %q", err, want)
	}
	if _, err := e.core.Tick(ctx); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Tick: %v, want it to refuse, saying %q", err, want)
	}
}
