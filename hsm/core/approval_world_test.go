package core

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	mrand "math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcec/v2"
	btcecdsa "github.com/btcsuite/btcd/btcec/v2/ecdsa"
	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// jsonStore keeps records as JSON with versions, as the authenticated
// store does, so that records round-trip through their encoding.
type jsonStore[T any] struct {
	mu      sync.Mutex
	m       map[string][]byte
	version map[string]uint64
	missing error
}

func newJSONStore[T any](missing error) *jsonStore[T] {
	return &jsonStore[T]{m: map[string][]byte{}, version: map[string]uint64{}, missing: missing}
}

func (s *jsonStore[T]) get(key string, setVersion func(*T, uint64)) (*T, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.m[key]
	if !ok {
		return nil, fmt.Errorf("%w: %s", s.missing, key)
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	setVersion(&v, s.version[key])
	return &v, nil
}

func (s *jsonStore[T]) list(setVersion func(*T, uint64)) ([]*T, error) {
	s.mu.Lock()
	keys := make([]string, 0, len(s.m))
	for k := range s.m {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	sort.Strings(keys)
	var out []*T
	for _, k := range keys {
		v, err := s.get(k, setVersion)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (s *jsonStore[T]) put(key string, v *T, create bool, version uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, exists := s.m[key]
	switch {
	case create && exists:
		return 0, fmt.Errorf("%s exists", key)
	case !create && (!exists || s.version[key] != version):
		return 0, fmt.Errorf("%s: version conflict", key)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	s.m[key] = b
	s.version[key]++
	return s.version[key], nil
}

type memWallets struct{ s *jsonStore[WalletRecord] }

func setWalletVersion(w *WalletRecord, v uint64) { w.Version = v }

func (m memWallets) GetWallet(_ context.Context, name string) (*WalletRecord, error) {
	return m.s.get(name, setWalletVersion)
}
func (m memWallets) ListWallets(context.Context) ([]*WalletRecord, error) {
	return m.s.list(setWalletVersion)
}
func (m memWallets) CreateWallet(_ context.Context, w *WalletRecord) error {
	if _, err := m.s.get(w.Name, setWalletVersion); err == nil {
		return fmt.Errorf("%w: %s", ErrWalletExists, w.Name)
	}
	v, err := m.s.put(w.Name, w, true, 0)
	w.Version = v
	return err
}
func (m memWallets) UpdateWallet(_ context.Context, w *WalletRecord) error {
	v, err := m.s.put(w.Name, w, false, w.Version)
	if err == nil {
		w.Version = v
	}
	return err
}

type memChanges struct {
	s   *jsonStore[ChangeRecord]
	gov *jsonStore[GovernanceRecord]
}

func newMemChanges() *memChanges {
	return &memChanges{newJSONStore[ChangeRecord](ErrChangeNotFound), newJSONStore[GovernanceRecord](ErrNoGovernance)}
}

func setChangeVersion(ch *ChangeRecord, v uint64)        { ch.Version = v }
func setGovernanceVersion(g *GovernanceRecord, v uint64) { g.Version = v }

func (m *memChanges) GetChange(_ context.Context, id string) (*ChangeRecord, error) {
	return m.s.get(id, setChangeVersion)
}
func (m *memChanges) ListChanges(context.Context) ([]*ChangeRecord, error) {
	return m.s.list(setChangeVersion)
}
func (m *memChanges) CreateChange(_ context.Context, ch *ChangeRecord) error {
	v, err := m.s.put(ch.ID, ch, true, 0)
	ch.Version = v
	return err
}
func (m *memChanges) UpdateChange(_ context.Context, ch *ChangeRecord) error {
	v, err := m.s.put(ch.ID, ch, false, ch.Version)
	if err == nil {
		ch.Version = v
	}
	return err
}
func (m *memChanges) GetGovernance(context.Context) (*GovernanceRecord, error) {
	return m.gov.get("admins", setGovernanceVersion)
}
func (m *memChanges) PutGovernance(_ context.Context, g *GovernanceRecord) error {
	v, err := m.gov.put("admins", g, g.Version == 0, g.Version)
	if err == nil {
		g.Version = v
	}
	return err
}

type memRequests struct {
	s       *jsonStore[RequestRecord]
	spends  *jsonStore[SpendLedger]
	devices *memDevices // for StoreAnswer
	// refuseAnswers, when set, is what StoreAnswer fails with, storing
	// nothing: a database that refuses the write.
	refuseAnswers *error
}

func setRequestVersion(r *RequestRecord, v uint64) { r.Version = v }

func (m memRequests) GetRequest(_ context.Context, id string) (*RequestRecord, error) {
	return m.s.get(id, setRequestVersion)
}
func (m memRequests) ListRequests(context.Context) ([]*RequestRecord, error) {
	return m.s.list(setRequestVersion)
}
func (m memRequests) ListRequestStatus(ctx context.Context) ([]RequestStatus, error) {
	rs, err := m.ListRequests(ctx)
	var out []RequestStatus
	for _, r := range rs {
		out = append(out, RequestStatus{ID: r.ID, State: r.State, ExpiresAt: r.ExpiresAt, SignAfter: r.SignAfter})
	}
	return out, err
}
func (m memRequests) EachRequest(ctx context.Context, fn func(*RequestRecord) error) error {
	rs, err := m.ListRequests(ctx)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}
func (m memRequests) CreateRequest(_ context.Context, r *RequestRecord) error {
	v, err := m.s.put(r.ID, r, true, 0)
	r.Version = v
	return err
}
func (m memRequests) Spends(_ context.Context, wallet string) (*SpendLedger, error) {
	l, err := m.spends.get(wallet, func(l *SpendLedger, v uint64) { l.Version = v })
	if errors.Is(err, errNoLedger) {
		return &SpendLedger{Wallet: wallet, Spends: []LedgerSpend{}}, nil
	}
	return l, err
}

func (m memRequests) UpdateSpends(_ context.Context, l *SpendLedger) error {
	v, err := m.spends.put(l.Wallet, l, l.Version == 0, l.Version)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrLedgerConflict, err)
	}
	l.Version = v
	return nil
}

// errNoLedger: a wallet has no spend ledger yet.
var errNoLedger = errors.New("no spend ledger")

func (m memRequests) UpdateRequest(_ context.Context, r *RequestRecord) error {
	v, err := m.s.put(r.ID, r, false, r.Version)
	if err == nil {
		r.Version = v
	}
	return err
}

// StoreAnswer checks every version before it stores anything, so that
// it stores all or none (the core's tests are not concurrent).
func (m memRequests) StoreAnswer(ctx context.Context, d *DeviceRecord, r *RequestRecord, l *SpendLedger) error {
	if err := *m.refuseAnswers; err != nil {
		return err
	}
	if cur, err := m.devices.GetDevice(ctx, d.ID); err != nil || cur.Version != d.Version {
		return fmt.Errorf("device %s: version conflict (%v)", d.ID, err)
	}
	if cur, err := m.GetRequest(ctx, r.ID); err != nil || cur.Version != r.Version {
		return fmt.Errorf("request %s: version conflict (%v)", r.ID, err)
	}
	if l != nil {
		if cur, err := m.Spends(ctx, l.Wallet); err != nil || cur.Version != l.Version {
			return fmt.Errorf("%w: wallet %s (%v)", ErrLedgerConflict, l.Wallet, err)
		}
	}
	if err := m.devices.UpdateDevice(ctx, d); err != nil {
		return err
	}
	if err := m.UpdateRequest(ctx, r); err != nil {
		return err
	}
	if l != nil {
		return m.UpdateSpends(ctx, l)
	}
	return nil
}

// softCustody is an in-memory hsm.Signer and hsm.KeyManager over
// secp256k1 keys derived from their labels, for the core's unit tests
// (hsmd's tests use SoftHSM2). It counts signatures.
type softCustody struct {
	mu    sync.Mutex
	keys  map[string]*btcec.PrivateKey // by ref
	signs int
	// backupable are the labels of the keys made backup-able.
	backupable []string
}

func newSoftCustody() *softCustody { return &softCustody{keys: map[string]*btcec.PrivateKey{}} }

func (s *softCustody) GenerateKey(_ context.Context, req hsm.GenerateKeyRequest) (*hsm.KeyInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ref := "pkcs11:object=" + req.Label
	if _, ok := s.keys[ref]; ok {
		return nil, fmt.Errorf("soft custody: %q: %w", req.Label, hsm.ErrKeyExists)
	}
	d := sha256.Sum256([]byte("opencustody core test key " + req.Label))
	k, _ := btcec.PrivKeyFromBytes(d[:])
	s.keys[ref] = k
	if req.Backupable {
		s.backupable = append(s.backupable, req.Label)
	}
	return &hsm.KeyInfo{Label: req.Label, URI: ref, Backupable: req.Backupable, Algorithm: hsm.ECDSASecp256k1, PublicKey: &hsm.PublicKey{Algorithm: hsm.ECDSASecp256k1, Key: k.PubKey()}}, nil
}

func (s *softCustody) ListKeys(context.Context) ([]hsm.KeyInfo, error) { return nil, nil }

func (s *softCustody) key(ref string) (*btcec.PrivateKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[ref]
	if !ok {
		return nil, fmt.Errorf("soft custody: %q: %w", ref, hsm.ErrKeyNotFound)
	}
	return k, nil
}

func (s *softCustody) Sign(_ context.Context, req hsm.SignRequest) (*hsm.Signature, error) {
	k, err := s.key(req.Key)
	if err != nil {
		return nil, err
	}
	if len(req.Digest) != 32 {
		return nil, errors.New("soft custody: digest is not 32 bytes")
	}
	s.mu.Lock()
	s.signs++
	s.mu.Unlock()
	der := btcecdsa.Sign(k, req.Digest).Serialize()
	rLen := int(der[3])
	return &hsm.Signature{Algorithm: hsm.ECDSASecp256k1, R: new(big.Int).SetBytes(der[4 : 4+rLen]), S: new(big.Int).SetBytes(der[6+rLen:])}, nil
}

func (s *softCustody) PublicKey(_ context.Context, ref string) (*hsm.PublicKey, error) {
	k, err := s.key(ref)
	if err != nil {
		return nil, err
	}
	return &hsm.PublicKey{Algorithm: hsm.ECDSASecp256k1, Key: k.PubKey()}, nil
}

func (s *softCustody) signatures() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.signs
}

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// foreignScript is the P2WPKH script of a key that is not the wallet's.
func foreignScript(name string) []byte {
	d := sha256.Sum256([]byte("foreign " + name))
	_, pub := btcec.PrivKeyFromBytes(d[:])
	return append([]byte{0x00, 0x14}, btcutil.Hash160(pub.SerializeCompressed())...)
}

// coin is a made-up previous transaction whose output 0 pays amount to
// script.
func coin(tag string, amount int64, script []byte) *wire.MsgTx {
	prev := wire.NewMsgTx(2)
	h := chainhash.HashH([]byte("funding " + tag))
	prev.AddTxIn(wire.NewTxIn(wire.NewOutPoint(&h, 0), nil, nil))
	prev.AddTxOut(wire.NewTxOut(amount, script))
	return prev
}

// packet builds a PSBT spending output 0 of each coin to outs, with the
// witness UTXO and previous transaction of each input; binary.
func packet(t testing.TB, coins []*wire.MsgTx, outs []*wire.TxOut) []byte {
	t.Helper()
	ops := make([]*wire.OutPoint, len(coins))
	seqs := make([]uint32, len(coins))
	for i, c := range coins {
		h := c.TxHash()
		ops[i], seqs[i] = wire.NewOutPoint(&h, 0), wire.MaxTxInSequenceNum-2
	}
	p, err := psbt.New(ops, outs, 2, 0, seqs)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := psbt.NewUpdater(p)
	for i, c := range coins {
		if err := u.AddInNonWitnessUtxo(c, i); err != nil {
			t.Fatal(err)
		}
		if err := u.AddInWitnessUtxo(c.TxOut[0], i); err != nil {
			t.Fatal(err)
		}
	}
	var b bytes.Buffer
	if err := p.Serialize(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// world is a core with the approval path, devices with open channels to
// it, and a 2-of-3 wallet of alice, bob and carol with two addresses.
type world struct {
	t        testing.TB
	rnd      io.Reader
	core     *Core
	identity *signed.SoftwareKey
	devices  *memDevices
	requests memRequests
	changes  *memChanges
	handlers map[ChangeKind]ChangeHandler
	custody  *softCustody
	clock    *clock
	dev      map[string]*testDevice // by device name
	links    map[string]*Link       // by device name
	users    map[string]string      // device name → user
	wallet   *WalletRecord

	// results of Answer calls made for ApprovalReceived events, in order.
	answers []answerOutcome
	// failed prompts (PromptFailed events), in order.
	failed []PromptFailed
}

type answerOutcome struct {
	device string // device name
	res    *AnswerResult
	err    error
}

// newWorld pairs one device per name: a name "alice2" is alice's second
// device. The wallet's approvers are the distinct users.
func newWorld(t testing.TB, names ...string) *world {
	t.Helper()
	if len(names) == 0 {
		names = []string{"alice", "bob", "carol"}
	}
	// Keys, ids and nonces are the same in every run (and in every fuzz
	// worker, so that seeds name the same prompts).
	rnd := mrand.NewChaCha8([32]byte{'o', 'p', 'e', 'n', 'c', 'u', 's', 't', 'o', 'd', 'y'})
	id, err := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ECDSA_P256, rnd)
	if err != nil {
		t.Fatal(err)
	}
	devices := newMemDevices()
	w := &world{rnd: rnd,
		t: t, identity: id, devices: devices, requests: memRequests{newJSONStore[RequestRecord](ErrRequestNotFound), newJSONStore[SpendLedger](errNoLedger), devices, new(error)},
		changes: newMemChanges(), handlers: map[ChangeKind]ChangeHandler{},
		custody: newSoftCustody(), clock: &clock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)},
		dev: map[string]*testDevice{}, links: map[string]*Link{}, users: map[string]string{},
	}
	w.core, err = New(Config{
		Identity: id, Devices: w.devices,
		Wallets: memWallets{newJSONStore[WalletRecord](ErrWalletNotFound)}, Requests: w.requests,
		Changes: w.changes, ChangeHandlers: w.handlers,
		Custody: w.custody, Keys: w.custody, Now: w.clock.Now, Rand: rnd,
	})
	if err != nil {
		t.Fatal(err)
	}
	var users []string
	for _, name := range names {
		user := name
		if l := len(name); name[l-1] >= '0' && name[l-1] <= '9' {
			user = name[:l-1]
		}
		w.users[name] = user
		if !slices.Contains(users, user) {
			users = append(users, user)
		}
		w.pairDirectly(name, user)
		w.connect(name)
	}
	ctx := context.Background()
	if w.wallet, err = w.core.CreateWallet(ctx, CreateWalletRequest{Name: "treasury", Network: bitcoin.Simnet, Approvers: users, Quorum: 2}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if w.wallet, _, err = w.core.NewAddress(ctx, "treasury"); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// pairDirectly stores a pairing record for a new device and pins the HSM
// key on it, as a completed pairing would (pairing has its own tests).
func (w *world) pairDirectly(name, user string) { w.pairAs(name, user, RoleApprover) }

func (w *world) pairAs(name, user string, role Role) {
	d := newTestDeviceFrom(w.t, w.rnd)
	d.pinned, d.now = w.identity.PublicKey(), w.clock.Now
	rec := &DeviceRecord{ID: d.id(), Algorithm: d.identity.Algorithm(), IdentityKey: d.identity.PublicKey(),
		User: user, Role: role, State: DevicePaired, PairedAt: w.clock.Now()}
	if err := w.devices.CreateDevice(context.Background(), rec); err != nil {
		w.t.Fatal(err)
	}
	w.dev[name] = d
	w.users[name] = user
}

// connect opens a channel to a paired device.
func (w *world) connect(name string) {
	w.t.Helper()
	l := w.core.Attach(w.dev[name].features())
	out, err := l.Open(context.Background())
	events := w.pump(name, l, out, err)
	if _, ok := find[ChannelUp](events); !ok {
		w.t.Fatalf("%s: no channel: %v", name, events)
	}
	w.links[name] = l
}

func (w *world) name(deviceID string) string {
	for n, d := range w.dev {
		if d.id() == deviceID {
			return n
		}
	}
	w.t.Fatalf("no device %s", deviceID)
	return ""
}

// pump runs a link's output through its device, as hsmd does: answers
// go to the core, withdrawals to the links.
func (w *world) pump(name string, l *Link, out Output, err error) []Event {
	w.t.Helper()
	events, err := pump(w.t, l, w.dev[name], out, err)
	if err != nil {
		w.t.Fatalf("%s: %v", name, err)
	}
	w.react(name, events)
	return events
}

func (w *world) react(name string, events []Event) {
	w.t.Helper()
	for _, e := range events {
		switch e := e.(type) {
		case ApprovalReceived:
			res, err := w.core.Answer(context.Background(), e.Answer)
			w.answers = append(w.answers, answerOutcome{device: name, res: res, err: err})
			if res != nil {
				w.withdraw(res.Withdraw)
				w.deliverPrompts(res.Prompts)
			}
		case PromptFailed:
			w.failed = append(w.failed, e)
		}
	}
}

func (w *world) withdraw(refs []PromptRef) {
	w.t.Helper()
	for _, ref := range refs {
		n := w.name(ref.DeviceID)
		l := w.links[n]
		out, err := l.WithdrawPrompt(context.Background(), ref.RequestID)
		w.pump(n, l, out, err)
	}
}

// coins are two coins of the wallet: 1 BTC to its first key, 0.5 BTC to
// its second.
func (w *world) coins(tag string) []*wire.MsgTx {
	return []*wire.MsgTx{
		coin(tag+"a", 100_000_000, bitcoin.Key{PublicKey: w.wallet.Keys[0].PublicKey}.PkScript()),
		coin(tag+"b", 50_000_000, bitcoin.Key{PublicKey: w.wallet.Keys[1].PublicKey}.PkScript()),
	}
}

// transfer is a PSBT paying 1.2 BTC out of the wallet, with change to its
// second key and a fee of 10,000 sat.
func (w *world) transfer(tag string) []byte {
	return packet(w.t, w.coins(tag), []*wire.TxOut{
		wire.NewTxOut(120_000_000, foreignScript("destination")),
		wire.NewTxOut(29_990_000, bitcoin.Key{PublicKey: w.wallet.Keys[1].PublicKey}.PkScript()),
	})
}

func (w *world) submit(psbt []byte) *Submitted {
	w.t.Helper()
	sub, err := w.core.Submit(context.Background(), SubmitRequest{Wallet: "treasury", Initiator: "operator", PSBT: psbt})
	if err != nil {
		w.t.Fatal(err)
	}
	return sub
}

// deliver sends each prompt to its device's link.
func (w *world) deliver(sub *Submitted) {
	w.t.Helper()
	for _, p := range sub.Prompts {
		n := w.name(p.DeviceID)
		if w.links[n] == nil {
			continue // not connected
		}
		out, err := w.links[n].SendPrompt(context.Background(), p)
		w.pump(n, w.links[n], out, err)
	}
}

// press has a device's user decide on the prompt it shows.
func (w *world) press(name string, d signed.Decision) {
	w.t.Helper()
	ans := w.dev[name].press(d)
	if ans == nil {
		w.t.Fatalf("%s shows no prompt", name)
	}
	out, err := w.links[name].Handle(context.Background(), ans)
	w.pump(name, w.links[name], out, err)
}

// lastAnswer is the outcome of the latest Answer call.
func (w *world) lastAnswer() answerOutcome {
	w.t.Helper()
	if len(w.answers) == 0 {
		w.t.Fatal("no answer reached the core")
	}
	return w.answers[len(w.answers)-1]
}

func (w *world) request(id string) *RequestRecord {
	w.t.Helper()
	r, err := w.core.Request(context.Background(), id)
	if err != nil {
		w.t.Fatal(err)
	}
	return r
}

func (w *world) counter(name string) uint64 {
	w.t.Helper()
	rec, err := w.devices.GetDevice(context.Background(), w.dev[name].id())
	if err != nil {
		w.t.Fatal(err)
	}
	return rec.Counter
}

func hsmKeyRequest(label string) hsm.GenerateKeyRequest {
	return hsm.GenerateKeyRequest{Label: label, Algorithm: hsm.ECDSASecp256k1}
}

// snapshot and restore let a fuzz target judge each input against the
// same stored state.
type storeSnapshot struct {
	requests map[string][]byte
	versions map[string]uint64
	devices  map[string]DeviceRecord
}

func (w *world) snapshot() storeSnapshot {
	s := w.requests.s
	s.mu.Lock()
	defer s.mu.Unlock()
	w.devices.mu.Lock()
	defer w.devices.mu.Unlock()
	return storeSnapshot{requests: maps.Clone(s.m), versions: maps.Clone(s.version), devices: maps.Clone(w.devices.m)}
}

func (w *world) restore(snap storeSnapshot) {
	s := w.requests.s
	s.mu.Lock()
	defer s.mu.Unlock()
	w.devices.mu.Lock()
	defer w.devices.mu.Unlock()
	s.m, s.version, w.devices.m = maps.Clone(snap.requests), maps.Clone(snap.versions), maps.Clone(snap.devices)
}
