package hsmd_test

// Two hsmd instances on one PostgreSQL database and one HSM token, each
// with its own core (and so its own in-process lock), its own connection
// pool and its own bridge, racing on the same requests.

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/emulator"
	"github.com/opencustodynet/opencustody/emulator/debuglink"
	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/hsm/hsmtest"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/hsm/records/pgtest"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// countingSigner counts the custody signatures the HSM makes.
type countingSigner struct {
	hsm.Signer
	n *atomic.Int64
}

func (c countingSigner) Sign(ctx context.Context, req hsm.SignRequest) (*hsm.Signature, error) {
	c.n.Add(1)
	return c.Signer.Sign(ctx, req)
}

// startOnPostgres starts an hsmd in ceremony mode with the approval path,
// its records in the PostgreSQL database dsn names, on the token of store.
// Its ticker runs often, so that prompts another instance issued reach its
// devices soon; nothing waits for it by the clock.
func startOnPostgres(t *testing.T, store *hsm.PKCS11Store, id *hsm.IdentitySigner, dsn string, signs *atomic.Int64) *env {
	t.Helper()
	ctx := context.Background()
	pg, err := records.OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	rs := records.New(pg, hsm.RecordAuthenticator{A: store, Key: hsmtest.RecordKey})
	ds := hsmd.DeviceStore{Records: rs}
	cr, err := core.New(core.Config{
		Identity: id, Devices: ds, Ceremony: true,
		Wallets: hsmd.WalletStore{Records: rs}, Requests: hsmd.RequestStore{Records: rs},
		Custody: countingSigner{store, signs}, Keys: store,
	})
	if err != nil {
		t.Fatal(err)
	}
	al, err := audit.New(audit.Config{Records: rs, Rows: pg, Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, err := hsmd.New(hsmd.Config{
		Core: cr, Dir: filepath.Join(dir, "hsmd"), Version: "test", Logger: slog.New(slog.DiscardHandler), Audit: al,
		Lock: pg, TickInterval: 50 * time.Millisecond, RetryDelay: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &env{srv: srv, core: cr, addr: l.Addr().String(), dataDir: dir, identity: id, devices: ds, store: store, audit: al}
}

// approveAll has e confirm every prompt of the requests in ids that it
// shows, once each, until it has confirmed them all.
func approveAll(ctx context.Context, e *emu, ids map[string]bool) error {
	done := map[string]bool{}
	for len(done) < len(ids) {
		s, err := e.dl.WaitFor(ctx, func(s *debuglink.Screen) bool {
			id := s.Fields[emulator.FieldRequestID]
			return s.Kind == debuglink.KindPrompt && ids[id] && !done[id]
		})
		if err != nil {
			return fmt.Errorf("device %s: %d of %d prompts confirmed: %w", e.id, len(done), len(ids), err)
		}
		if _, err := e.dl.ConfirmAll(ctx); err != nil {
			return fmt.Errorf("device %s: %w", e.id, err)
		}
		done[s.Fields[emulator.FieldRequestID]] = true
	}
	return nil
}

// TestTwoInstancesOnPostgres runs two hsmd instances on one database and
// one token. Alice's device is attached to the first, Bob's and Carol's to
// the second; requests are submitted to both, and Alice and Bob approve
// them all at the same time, so their answers reach the two instances for
// the same requests together. Every request must end signed once, with
// both approvals counted once: one custody signature per request from
// the HSM, the device counters at one per approval, and one audit entry
// per request, approval and signature in the shared, verifying log.
func TestTwoInstancesOnPostgres(t *testing.T) {
	dsn := pgtest.NewSchema(t)
	store, id := hsmtest.NewHSM(t)
	var signs atomic.Int64
	a := startOnPostgres(t, store, id, dsn, &signs)
	b := startOnPostgres(t, store, id, dsn, &signs)
	w := &world{t: t, ctx: e2eContext(t), hsmd: a, taps: newTaps(t), ops: map[*env]apipb.OperatorClient{}}
	for range 3 {
		w.emus = append(w.emus, startEmu(t, t.TempDir(), 0))
	}
	alice, bob, carol := w.emus[0], w.emus[1], w.emus[2]
	w.startBridgeFor(a, alice)
	w.startBridgeFor(b, bob, carol)
	w.waitAttached(a, alice)
	w.waitAttached(b, bob, carol)
	// Each pairs through the instance its device is attached to.
	w.pair(a, alice, "alice", apipb.Role_ROLE_APPROVER)
	w.pair(b, bob, "bob", apipb.Role_ROLE_APPROVER)
	w.pair(b, carol, "carol", apipb.Role_ROLE_APPROVER)
	w.waitChannel(a, alice, true)
	w.waitChannel(b, bob, true)
	w.waitChannel(b, carol, true)

	// The wallet on one instance, its keys made through the other.
	cust := apipb.NewCustodyClient(a.dial(t, "operator"))
	if _, err := cust.CreateWallet(w.ctx, &apipb.CreateWalletRequest{Name: "treasury", Network: "simnet", Approvers: []string{"alice", "bob", "carol"}, Quorum: 2}); err != nil {
		t.Fatal(err)
	}
	var addrs []*apipb.WalletAddress
	for range 2 {
		res, err := apipb.NewCustodyClient(b.dial(t, "operator")).NewAddress(w.ctx, &apipb.NewAddressRequest{Wallet: "treasury"})
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, res.GetAddress())
	}

	const requests = 6
	ids := map[string]bool{}
	for i := range requests {
		h := []*env{a, b}[i%2]
		ids[w.submit(h, "treasury", addrs, int64(10_000_000+i)).GetId()] = true
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, e := range []*emu{alice, bob} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- approveAll(w.ctx, e, ids)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	for id := range ids {
		for _, h := range []*env{a, b} {
			r := w.waitRequestState(h, id, "signed", func(r *apipb.Request) bool {
				return r.GetState() == apipb.RequestState_REQUEST_STATE_SIGNED
			})
			if len(r.GetSignedTx()) == 0 || len(r.GetAnswers()) != 2 {
				t.Fatalf("request %s on %s: %d answers, %d bytes signed", id, h.addr, len(r.GetAnswers()), len(r.GetSignedTx()))
			}
			users := map[string]bool{}
			for _, an := range r.GetAnswers() {
				if !an.GetApproved() || users[an.GetUser()] {
					t.Errorf("request %s: answer %v", id, an)
				}
				users[an.GetUser()] = true
			}
		}
	}
	// Let both tickers run over the signed requests once more (the ticker
	// also signs approved requests a crash left unsigned): still one
	// signature each.
	for _, h := range []*env{a, b} {
		if _, err := h.core.Tick(w.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := signs.Load(); n != requests {
		t.Errorf("the HSM made %d custody signatures for %d requests (one input each)", n, requests)
	}
	for _, e := range []*emu{alice, bob} {
		d, err := a.devices.GetDevice(w.ctx, e.id)
		if err != nil {
			t.Fatal(err)
		}
		if d.Counter != requests || e.Store().Counter() != requests {
			t.Errorf("device %s: stored counter %d, device counter %d; want %d, one per approval", e.id, d.Counter, e.Store().Counter(), requests)
		}
	}

	// The shared audit log, written by both: whole, and one entry per
	// event.
	a.srv.Stop()
	b.srv.Stop()
	rep, err := a.audit.Verify(context.Background())
	if err != nil || !rep.OK() {
		t.Fatalf("audit log: %+v, %v", rep, err)
	}
	entries, err := b.audit.Entries(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]map[string]int{}
	for _, en := range entries {
		if ids[en.Subject] {
			if count[en.Subject] == nil {
				count[en.Subject] = map[string]int{}
			}
			count[en.Subject][en.Kind]++
		}
	}
	for id := range ids {
		c := count[id]
		if c[audit.KindRequest] != 1 || c[audit.KindApproval] != 2 || c[audit.KindSignature] != 1 || c[audit.KindRefused] != 0 {
			t.Errorf("request %s: audit entries %v; want one request, two approvals, one signature, nothing refused", id, c)
		}
	}
}
