package hsmd_test

import (
	"context"
	"database/sql"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/hsm/hsmtest"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

// TestRollbackWhileStoppedIsRefused stops hsmd, puts the whole database
// back as it was before a wallet's newest address (a consistent, genuine,
// older copy, which no record MAC or manifest can tell from the real
// thing), and starts hsmd again: the pin it kept in its directory makes it
// refuse the copy. Without the pin file (an operator restoring a backup on
// purpose deletes it) the copy is accepted: the limit the README states.
func TestRollbackWhileStoppedIsRefused(t *testing.T) {
	c := hsmtest.NewCore(t)
	dir := filepath.Join(c.Dir, "hsmd")
	run := func() (*env, func()) {
		rs := records.New(c.DB, hsm.RecordAuthenticator{A: c.Store, Key: hsmtest.RecordKey})
		ds := hsmd.DeviceStore{Records: rs}
		cr, err := core.New(core.Config{Identity: c.Identity, Devices: ds, Wallets: hsmd.WalletStore{Records: rs},
			Requests: hsmd.RequestStore{Records: rs}, Custody: c.Store, Keys: c.Store})
		if err != nil {
			t.Fatal(err)
		}
		srv, err := hsmd.New(hsmd.Config{Core: cr, Dir: dir, Version: "test", Logger: slog.New(slog.DiscardHandler), Records: rs})
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- srv.Serve(context.Background(), l) }()
		stop := func() {
			srv.Stop()
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
		t.Cleanup(srv.Stop)
		return &env{srv: srv, core: cr, addr: l.Addr().String(), dataDir: c.Dir}, stop
	}
	e, stop := run()
	cust := apipb.NewCustodyClient(e.dial(t, "operator"))
	ctx := t.Context()
	alice := newRelayDevice(t, "emu-a", "alice", pb.Algorithm_ALGORITHM_ECDSA_P256, c.Identity.PublicKey())
	if err := (hsmd.DeviceStore{Records: records.New(c.DB, hsm.RecordAuthenticator{A: c.Store, Key: hsmtest.RecordKey})}).CreateDevice(ctx, alice.record()); err != nil {
		t.Fatal(err)
	}
	if _, err := cust.CreateWallet(ctx, &apipb.CreateWalletRequest{Name: "w", Network: "simnet", Approvers: []string{"alice"}, Quorum: 1}); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", filepath.Join(c.Dir, records.SQLiteFile)+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE saved AS SELECT * FROM records`); err != nil {
		t.Fatal(err)
	}
	if _, err := cust.NewAddress(ctx, &apipb.NewAddressRequest{Wallet: "w"}); err != nil {
		t.Fatal(err)
	}
	stop()
	for _, q := range []string{`DELETE FROM records`, `INSERT INTO records SELECT * FROM saved`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}

	e, stop = run()
	_, err = apipb.NewCustodyClient(e.dial(t, "operator")).GetWallet(ctx, &apipb.GetWalletRequest{Name: "w"})
	if status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), `manifest-root "root": integrity check failed: rolled back`) {
		t.Fatalf("GetWallet of a database rolled back while hsmd was stopped: %v, want DataLoss naming the root manifest", err)
	}
	stop()

	if err := os.Remove(filepath.Join(dir, hsmd.PinFile)); err != nil {
		t.Fatal(err)
	}
	e, stop = run()
	defer stop()
	w, err := apipb.NewCustodyClient(e.dial(t, "operator")).GetWallet(ctx, &apipb.GetWalletRequest{Name: "w"})
	if err != nil || len(w.GetAddresses()) != 0 {
		t.Fatalf("without the pin: %v, %v; want the restored wallet, with no address", w, err)
	}
}
