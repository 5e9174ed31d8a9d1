package hsmd_test

// Crash safety: hsmd runs as a process of its own (this test binary,
// started again with crashChildEnv set), on a SoftHSM2 token and a SQLite
// database that outlive it, and the test kills it with SIGKILL at several
// points of an approval, then starts it again on the same token, database
// and address. To kill it at a point inside an approval, the child can be
// told to stop there (crashAtEnv): it writes a marker file and blocks,
// and the test, seeing the marker, sends SIGKILL.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/hsm/hsmtest"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/hsm/records/pgtest"
	"github.com/opencustodynet/opencustody/hsm/softhsm/softhsmtest"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

const (
	crashChildEnv = "OPENCUSTODY_TEST_CRASH_CHILD" // the child's data directory
	crashTokenEnv = "OPENCUSTODY_TEST_CRASH_TOKEN" // the token's pkcs11: URI
	crashAtEnv    = "OPENCUSTODY_TEST_CRASH_AT"    // where to stop: one of the crash points
	crashAddrEnv  = "OPENCUSTODY_TEST_CRASH_ADDR"  // where to listen
	crashStoreEnv = "OPENCUSTODY_TEST_CRASH_STORE" // a postgres:// URL, or empty for SQLite
)

// Crash points the child can stop at.
const (
	crashAfterAnswer = "after-answer" // an answer stored (with its device counter), nothing sent yet
	crashBeforeSign  = "before-sign"  // the deciding answer checked, the HSM not yet asked, nothing of it stored
	crashAfterSign   = "after-sign"   // the HSM signed, the answer and the outcome not yet stored
)

// Files in the child's data directory.
const (
	crashInfoFile   = "hsmd.info"  // "address\ncertificate fingerprint\n", once listening
	crashMarkerFile = "crashed-at" // the crash point reached
	crashSignsFile  = "signs.log"  // one line per custody signature the HSM made
)

// crashChild is the child's main: an hsmd like 'opencustody hsmd', with the
// crash points armed.
func crashChild() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(1)
	}
	dir, at := os.Getenv(crashChildEnv), os.Getenv(crashAtEnv)
	ctx := context.Background()
	store, err := hsm.Open(ctx, hsm.Config{URI: os.Getenv(crashTokenEnv)})
	if err != nil {
		fail(err)
	}
	defer store.Close()
	id, err := hsm.NewIdentitySigner(ctx, store, hsmtest.IdentityKey)
	if err != nil {
		fail(err)
	}
	var db interface {
		records.Backend
		Close() error
	}
	if dsn := os.Getenv(crashStoreEnv); dsn != "" {
		db, err = records.OpenPostgres(ctx, dsn)
	} else {
		db, err = records.OpenSQLite(ctx, filepath.Join(dir, "records"))
	}
	if err != nil {
		fail(err)
	}
	defer db.Close()
	rs := records.New(db, hsm.RecordAuthenticator{A: store, Key: hsmtest.RecordKey})
	p := &crashPoint{at: at, dir: dir}
	cr, err := core.New(core.Config{
		Identity: id, Devices: hsmd.DeviceStore{Records: rs}, Ceremony: true,
		Wallets: hsmd.WalletStore{Records: rs}, Requests: crashRequests{hsmd.RequestStore{Records: rs}, p},
		Custody: crashSigner{store, p}, Keys: store,
	})
	if err != nil {
		fail(err)
	}
	al, err := audit.New(audit.Config{Records: rs, Rows: db, Identity: id})
	if err != nil {
		fail(err)
	}
	srv, err := hsmd.New(hsmd.Config{
		Core: cr, Dir: filepath.Join(dir, "hsmd"), Version: "test", Audit: al,
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		TickInterval: 100 * time.Millisecond, RetryDelay: 50 * time.Millisecond,
	})
	if err != nil {
		fail(err)
	}
	l, err := net.Listen("tcp", os.Getenv(crashAddrEnv))
	if err != nil {
		fail(err)
	}
	info := filepath.Join(dir, crashInfoFile)
	if err := os.WriteFile(info+".tmp", []byte(l.Addr().String()+"\n"+srv.CertFingerprint()+"\n"), 0o600); err != nil {
		fail(err)
	}
	if err := os.Rename(info+".tmp", info); err != nil {
		fail(err)
	}
	sctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := srv.Serve(sctx, l); err != nil {
		fail(err)
	}
}

// crashPoint stops the process at its point, the first time it is reached.
type crashPoint struct {
	at, dir string
	once    sync.Once
}

func (p *crashPoint) reach(point string) {
	if p.at != point {
		return
	}
	p.once.Do(func() {
		os.WriteFile(filepath.Join(p.dir, crashMarkerFile), []byte(point), 0o600)
		select {} // until SIGKILL
	})
}

type crashRequests struct {
	hsmd.RequestStore
	p *crashPoint
}

func (s crashRequests) StoreAnswer(ctx context.Context, d *core.DeviceRecord, r *core.RequestRecord, l *core.SpendLedger) error {
	if err := s.RequestStore.StoreAnswer(ctx, d, r, l); err != nil {
		return err
	}
	s.p.reach(crashAfterAnswer)
	return nil
}

type crashSigner struct {
	hsm.Signer
	p *crashPoint
}

func (s crashSigner) Sign(ctx context.Context, req hsm.SignRequest) (*hsm.Signature, error) {
	s.p.reach(crashBeforeSign)
	sig, err := s.Signer.Sign(ctx, req)
	if err == nil {
		f, ferr := os.OpenFile(filepath.Join(s.p.dir, crashSignsFile), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if ferr != nil {
			return nil, ferr
		}
		f.WriteString("signed\n")
		f.Close()
	}
	s.p.reach(crashAfterSign)
	return sig, err
}

// crashWorld is an hsmd process, its bridge and three paired emulators
// (alice, bob, carol) with a 2-of-3 wallet.
type crashWorld struct {
	*world
	t        *testing.T
	dir      string
	tokenURI string
	store    string // the child's --store: a postgres:// URL, or empty for SQLite
	h        *env
	cmd      *exec.Cmd
	exited   chan struct{}
	stderr   bytes.Buffer
}

func newCrashWorld(t *testing.T, dsn string) (*crashWorld, []*apipb.WalletAddress) {
	t.Helper()
	tok := softhsmtest.NewTestToken(t)
	store, err := hsm.Open(t.Context(), hsm.Config{URI: tok.URI})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []hsm.GenerateKeyRequest{{Label: hsmtest.IdentityKey, Algorithm: hsm.ECDSAP256}, {Label: hsmtest.RecordKey, Algorithm: hsm.HMACSHA256}} {
		if _, err := store.GenerateKey(t.Context(), k); err != nil {
			t.Fatal(err)
		}
	}
	id, err := hsm.NewIdentitySigner(t.Context(), store, hsmtest.IdentityKey)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	cw := &crashWorld{t: t, dir: t.TempDir(), tokenURI: tok.URI, store: dsn}
	cw.h = &env{identity: id, tokenDir: filepath.Join(cw.dir, "hsmd")}
	cw.start("", "127.0.0.1:0")
	w := &world{t: t, ctx: e2eContext(t), hsmd: cw.h, taps: newTaps(t), ops: map[*env]apipb.OperatorClient{}}
	cw.world = w
	for range 3 {
		w.emus = append(w.emus, startEmu(t, t.TempDir(), 0))
	}
	w.br = w.startBridgeFor(cw.h, w.emus...)
	w.waitAttached(cw.h, w.emus...)
	for i, e := range w.emus {
		w.pair(cw.h, e, []string{"alice", "bob", "carol"}[i], apipb.Role_ROLE_APPROVER)
		w.waitChannel(cw.h, e, true)
	}
	return cw, w.wallet(cw.h, "treasury", []string{"alice", "bob", "carol"}, 2)
}

// start starts the child hsmd, stopping at crash point at, and waits until
// it listens.
func (cw *crashWorld) start(at, addr string) {
	cw.t.Helper()
	info := filepath.Join(cw.dir, crashInfoFile)
	os.Remove(info)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+cw.dir, crashTokenEnv+"="+cw.tokenURI, crashAtEnv+"="+at, crashAddrEnv+"="+addr, crashStoreEnv+"="+cw.store)
	cw.stderr.Reset()
	cmd.Stderr = &cw.stderr
	if err := cmd.Start(); err != nil {
		cw.t.Fatal(err)
	}
	cw.cmd, cw.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) { cmd.Wait(); close(exited) }(cw.exited)
	cw.t.Cleanup(func() { cw.kill() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	until(cw.t, ctx, "hsmd process listening", func() error {
		select {
		case <-cw.exited:
			cw.t.Fatalf("hsmd process exited: %s", cw.stderr.String())
		default:
		}
		b, err := os.ReadFile(info)
		if err != nil {
			return err
		}
		f := strings.Fields(string(b))
		if len(f) != 2 {
			return fmt.Errorf("info file %q", b)
		}
		cw.h.addr, cw.h.cert = f[0], f[1]
		return nil
	})
}

// kill sends SIGKILL and waits for the process to be gone.
func (cw *crashWorld) kill() {
	if cw.cmd == nil {
		return
	}
	cw.cmd.Process.Signal(syscall.SIGKILL)
	<-cw.exited
	cw.cmd = nil
}

// stop stops the child gracefully.
func (cw *crashWorld) stop() {
	cw.cmd.Process.Signal(syscall.SIGTERM)
	<-cw.exited
	cw.cmd = nil
}

// killAt waits until the child reached crash point at, then kills it.
func (cw *crashWorld) killAt(at string) {
	cw.t.Helper()
	marker := filepath.Join(cw.dir, crashMarkerFile)
	until(cw.t, cw.ctx, "hsmd reaching "+at, func() error {
		b, err := os.ReadFile(marker)
		if err != nil {
			return err
		}
		if string(b) != at {
			return fmt.Errorf("stopped at %s", b)
		}
		return nil
	})
	cw.kill()
	os.Remove(marker)
}

// restart starts the child again on the same address, stopping at at, and
// waits for every device's channel.
func (cw *crashWorld) restart(at string) {
	cw.t.Helper()
	cw.start(at, cw.h.addr)
	for _, e := range cw.emus {
		cw.waitChannel(cw.h, e, true)
	}
}

func (cw *crashWorld) confirm(e *emu, id string) {
	cw.t.Helper()
	cw.promptScreen(e, id)
	if _, err := e.dl.ConfirmAll(cw.ctx); err != nil {
		cw.t.Fatal(err)
	}
}

func (cw *crashWorld) signs() int {
	b, err := os.ReadFile(filepath.Join(cw.dir, crashSignsFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		cw.t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

// checkSigned checks the end state: the request signed, with one approval
// each from alice and bob, counted once; the audit log whole, with one
// signature entry for the request.
func (cw *crashWorld) checkSigned(id string, aliceCounter, bobCounter uint64) {
	cw.t.Helper()
	r := cw.waitRequestState(cw.h, id, "signed", func(r *apipb.Request) bool {
		return r.GetState() == apipb.RequestState_REQUEST_STATE_SIGNED
	})
	if len(r.GetSignedTx()) == 0 || len(r.GetAnswers()) != 2 {
		cw.t.Fatalf("request %s: %d answers, %d bytes signed", id, len(r.GetAnswers()), len(r.GetSignedTx()))
	}
	got := map[string]uint64{}
	for _, a := range r.GetAnswers() {
		if !a.GetApproved() {
			cw.t.Errorf("answer %v", a)
		}
		got[a.GetUser()] = a.GetCounter()
	}
	if got["alice"] != aliceCounter || got["bob"] != bobCounter {
		cw.t.Errorf("answers by user with their counters: %v; want alice %d, bob %d", got, aliceCounter, bobCounter)
	}
	a := apipb.NewAuditClient(cw.h.dial(cw.t, "operator"))
	until(cw.t, cw.ctx, "one signature entry in the audit log", func() error {
		rep, err := a.VerifyAudit(cw.ctx, &apipb.VerifyAuditRequest{})
		if err != nil {
			return err
		}
		if len(rep.GetProblems()) > 0 {
			cw.t.Fatalf("audit log: %v", rep.GetProblems())
		}
		list, err := a.ListAudit(cw.ctx, &apipb.ListAuditRequest{})
		if err != nil {
			return err
		}
		n := 0
		for _, e := range list.GetEntries() {
			if e.GetSubject() == id && e.GetKind() == audit.KindSignature {
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("%d signature entries", n)
		}
		return nil
	})
}

// TestCrashRecovery kills hsmd with SIGKILL at points of an approval and
// starts it again: no request or approval is lost, pending prompts are
// shown again, and the request ends with one signed transaction. It runs
// on SQLite, and on PostgreSQL when there is a server.
func TestCrashRecovery(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testCrashRecovery(t, func(*testing.T) string { return "" }) })
	t.Run("postgres", func(t *testing.T) {
		pgtest.ServerDSN(t)
		testCrashRecovery(t, func(t *testing.T) string { return pgtest.NewSchema(t) })
	})
}

// testCrashRecovery runs the crash points; store gives each its own
// database.
func testCrashRecovery(t *testing.T, store func(t *testing.T) string) {
	t.Run("after submit", func(t *testing.T) {
		cw, addrs := newCrashWorld(t, store(t))
		id := cw.submit(cw.h, "treasury", addrs, 20_000_000).GetId()
		cw.kill()
		cw.restart("")
		// Every approver's device shows the prompt again.
		for _, e := range cw.emus {
			cw.promptScreen(e, id)
		}
		cw.confirm(cw.emus[0], id)
		cw.confirm(cw.emus[1], id)
		cw.checkSigned(id, 1, 1)
		if n := cw.signs(); n != 1 {
			t.Errorf("the HSM signed %d times", n)
		}
	})
	t.Run("between approvals", func(t *testing.T) {
		cw, addrs := newCrashWorld(t, store(t))
		id := cw.submit(cw.h, "treasury", addrs, 20_000_000).GetId()
		cw.confirm(cw.emus[0], id)
		cw.waitRequestState(cw.h, id, "alice's approval stored", func(r *apipb.Request) bool { return len(r.GetApprovedBy()) == 1 })
		cw.kill()
		cw.restart("")
		cw.confirm(cw.emus[1], id)
		cw.checkSigned(id, 1, 1)
		if n := cw.signs(); n != 1 {
			t.Errorf("the HSM signed %d times", n)
		}
	})
	t.Run("answer stored, before anything else", func(t *testing.T) {
		cw, addrs := newCrashWorld(t, store(t))
		cw.stop()
		cw.restart(crashAfterAnswer)
		id := cw.submit(cw.h, "treasury", addrs, 20_000_000).GetId()
		cw.confirm(cw.emus[0], id)
		cw.killAt(crashAfterAnswer)
		cw.restart("")
		// The answer and its counter were stored together: alice's
		// approval counts, and is not asked for again.
		cw.waitRequestState(cw.h, id, "alice's approval stored", func(r *apipb.Request) bool { return len(r.GetApprovedBy()) == 1 })
		cw.confirm(cw.emus[1], id)
		cw.checkSigned(id, 1, 1)
		if n := cw.signs(); n != 1 {
			t.Errorf("the HSM signed %d times", n)
		}
	})
	t.Run("deciding answer checked, before signing", func(t *testing.T) {
		cw, addrs := newCrashWorld(t, store(t))
		cw.stop()
		cw.restart(crashBeforeSign)
		id := cw.submit(cw.h, "treasury", addrs, 20_000_000).GetId()
		cw.confirm(cw.emus[0], id)
		cw.waitRequestState(cw.h, id, "alice's approval stored", func(r *apipb.Request) bool { return len(r.GetApprovedBy()) == 1 })
		cw.confirm(cw.emus[1], id)
		cw.killAt(crashBeforeSign)
		cw.restart("")
		// Bob's answer was lost with the process, none of it stored: the
		// prompt comes again, and he answers with his next counter.
		cw.confirm(cw.emus[1], id)
		cw.checkSigned(id, 1, 2)
		if n := cw.signs(); n != 1 {
			t.Errorf("the HSM signed %d times", n)
		}
	})
	t.Run("signed, before the outcome is stored", func(t *testing.T) {
		cw, addrs := newCrashWorld(t, store(t))
		cw.stop()
		cw.restart(crashAfterSign)
		id := cw.submit(cw.h, "treasury", addrs, 20_000_000).GetId()
		cw.confirm(cw.emus[0], id)
		cw.waitRequestState(cw.h, id, "alice's approval stored", func(r *apipb.Request) bool { return len(r.GetApprovedBy()) == 1 })
		cw.confirm(cw.emus[1], id)
		cw.killAt(crashAfterSign)
		cw.restart("")
		// The signature made before the crash died with the process,
		// never stored or returned, and bob's answer with it: he is
		// asked again, and the HSM signs again; that one is the
		// request's.
		cw.confirm(cw.emus[1], id)
		cw.checkSigned(id, 1, 2)
		if n := cw.signs(); n != 2 {
			t.Errorf("the HSM signed %d times, want 2 (one lost with the process)", n)
		}
	})
}
