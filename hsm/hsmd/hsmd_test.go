package hsmd_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	_ "modernc.org/sqlite"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/backup"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/hsm/hsmtest"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/hsm/softhsm/softhsmtest"
	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/apiclient"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		crashChild() // this process is an hsmd the crash test kills
		return
	}
	softhsmtest.Main(m)
}

// env is a running hsmd on real parts: a SoftHSM2 token holding the
// identity and record keys, SQLite records, TLS on loopback.
type env struct {
	srv      *hsmd.Server
	core     *core.Core
	addr     string
	dataDir  string
	identity *hsm.IdentitySigner
	devices  hsmd.DeviceStore
	store    *hsm.PKCS11Store
	audit    *audit.Log
	records  *records.Store
	token    *softhsmtest.Token

	// For an hsmd in another process (srv is nil): its certificate
	// fingerprint and its directory with the token files.
	cert     string
	tokenDir string
}

// auditKinds returns the kinds of the audit entries about subject, in
// order, after checking that the log verifies.
func (e *env) auditKinds(t *testing.T, subject string) []string {
	t.Helper()
	rep, err := e.audit.Verify(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("audit log: %v", rep.Problems)
	}
	entries, err := e.audit.Entries(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, en := range entries {
		if en.Subject == subject {
			kinds = append(kinds, en.Kind)
		}
	}
	return kinds
}

func start(t *testing.T, ceremony bool) *env {
	t.Helper()
	return startWith(t, ceremony, false)
}

// startWith starts hsmd; approvals enables the approval path (wallet and
// request records, custody keys in the token).
func startWith(t *testing.T, ceremony, approvals bool) *env {
	t.Helper()
	c := hsmtest.NewCore(t)
	store, id, rs := c.Store, c.Identity, c.Records
	ds := hsmd.DeviceStore{Records: rs}
	cfg := core.Config{Identity: id, Devices: ds, Ceremony: ceremony}
	if approvals {
		cfg.Wallets, cfg.Requests, cfg.Custody, cfg.Keys = hsmd.WalletStore{Records: rs}, hsmd.RequestStore{Records: rs}, store, store
		cfg.Changes = hsmd.ChangeStore{Records: rs}
		cfg.ChangeHandlers = hsmd.BackupChangeHandlers(&backup.Site{HSM: store, Identity: id, Records: rs})
	}
	cr, err := core.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, c, cr, ds)
}

// serve runs hsmd around cr, with an audit log on c's records, on a
// loopback port until the test ends.
func serve(t *testing.T, c *hsmtest.Core, cr *core.Core, ds hsmd.DeviceStore) *env {
	t.Helper()
	al, err := audit.New(audit.Config{Records: c.Records, Rows: c.DB, Identity: c.Identity})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := hsmd.New(hsmd.Config{Core: cr, Dir: filepath.Join(c.Dir, "hsmd"), Version: "test", Logger: slog.New(slog.DiscardHandler), Audit: al})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &env{srv: srv, core: cr, addr: l.Addr().String(), dataDir: c.Dir, identity: c.Identity, devices: ds, store: c.Store, audit: al, records: c.Records, token: c.Token}
}

func (e *env) dial(t *testing.T, tokenFile string) *grpc.ClientConn {
	t.Helper()
	var bt, ot, cert string
	if e.srv != nil {
		bt, ot = e.srv.TokenPaths()
		cert = e.srv.CertFingerprint()
	} else {
		bt, ot, cert = filepath.Join(e.tokenDir, hsmd.BridgeTokenFile), filepath.Join(e.tokenDir, hsmd.OperatorTokenFile), e.cert
	}
	path := map[string]string{"bridge": bt, "operator": ot}[tokenFile]
	token, err := hsmd.ReadToken(path)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := apiclient.Dial(apiclient.Options{Address: e.addr, CertFingerprint: cert, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestStatusShowsTheHSMIdentity(t *testing.T) {
	e := start(t, false)
	st, err := apipb.NewOperatorClient(e.dial(t, "operator")).Status(t.Context(), &apipb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if want := signed.Fingerprint(e.identity.Algorithm(), e.identity.PublicKey()); st.GetHsmFingerprint() != want {
		t.Fatalf("status fingerprint %q, want %q", st.GetHsmFingerprint(), want)
	}
}

func TestTokensArePerAPIFace(t *testing.T) {
	e := start(t, false)
	// The bridge token does not open the operator API.
	_, err := apipb.NewOperatorClient(e.dial(t, "bridge")).Status(t.Context(), &apipb.StatusRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("operator API with the bridge token: %v", err)
	}
	// The operator token does not open the relay.
	stream, err := apipb.NewRelayClient(e.dial(t, "operator")).Connect(t.Context())
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("relay with the operator token: %v", err)
	}
	// A wrong token opens nothing.
	conn, _ := apiclient.Dial(apiclient.Options{Address: e.addr, CertFingerprint: e.srv.CertFingerprint(), Token: "not-the-token-not-the-token-not-the-token"})
	defer conn.Close()
	if _, err := apipb.NewOperatorClient(conn).Status(t.Context(), &apipb.StatusRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("wrong token: %v", err)
	}
}

func TestClientRefusesAnotherCertificate(t *testing.T) {
	e := start(t, false)
	other := start(t, false) // another hsmd's certificate
	_, ot := e.srv.TokenPaths()
	token, _ := hsmd.ReadToken(ot)
	conn, err := apiclient.Dial(apiclient.Options{Address: e.addr, CertFingerprint: other.srv.CertFingerprint(), Token: token})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = apipb.NewOperatorClient(conn).Status(t.Context(), &apipb.StatusRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("pinned another certificate: %v", err)
	}
}

// bridge is a minimal bridge: it opens the relay and announces devices.
type bridge struct {
	t      *testing.T
	stream apipb.Relay_ConnectClient
}

func connectBridge(t *testing.T, e *env, name string) *bridge {
	t.Helper()
	stream, err := apipb.NewRelayClient(e.dial(t, "bridge")).Connect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&apipb.BridgeMessage{Msg: &apipb.BridgeMessage_Hello{Hello: &apipb.BridgeHello{BridgeName: name}}}); err != nil {
		t.Fatal(err)
	}
	m, err := stream.Recv()
	if err != nil || m.GetHello() == nil {
		t.Fatalf("no CoreHello: %v", err)
	}
	return &bridge{t: t, stream: stream}
}

func (b *bridge) attach(ref string, f *pb.Features) {
	b.t.Helper()
	raw, err := protocol.EncodeEnvelope(f)
	if err != nil {
		b.t.Fatal(err)
	}
	if err := b.stream.Send(&apipb.BridgeMessage{Msg: &apipb.BridgeMessage_Attached{Attached: &apipb.DeviceAttached{Ref: ref, Transport: "udp", Path: "test", Features: raw}}}); err != nil {
		b.t.Fatal(err)
	}
}

func softDevice(t *testing.T) (*signed.SoftwareKey, *pb.Features) {
	k, err := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ECDSA_P256, nil)
	if err != nil {
		t.Fatal(err)
	}
	return k, &pb.Features{DeviceId: signed.DeviceID(k.PublicKey()), Model: "test", IdentityAlgorithm: k.Algorithm(), IdentityPublicKey: k.PublicKey()}
}

// eventually polls f until it returns nil or 10 s pass.
func eventually(t *testing.T, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAnnouncedDevicesAreListedUnpaired(t *testing.T) {
	e := start(t, false)
	op := apipb.NewOperatorClient(e.dial(t, "operator"))
	b := connectBridge(t, e, "desk-1")
	k, f := softDevice(t)
	b.attach("emu-1", f)
	eventually(t, func() error {
		res, err := op.ListDevices(t.Context(), &apipb.ListDevicesRequest{})
		if err != nil {
			return err
		}
		if len(res.GetDevices()) != 1 {
			return errors.New("device not listed yet")
		}
		d := res.GetDevices()[0]
		if d.GetId() != f.GetDeviceId() || d.GetState() != apipb.DeviceState_DEVICE_STATE_UNPAIRED || !d.GetConnected() || d.GetBridge() != "desk-1" || d.GetChannel() {
			t.Fatalf("listed %v", d)
		}
		if d.GetFingerprint() != signed.Fingerprint(k.Algorithm(), k.PublicKey()) {
			t.Fatalf("fingerprint %q", d.GetFingerprint())
		}
		return nil
	})
	// Without ceremony mode, pairing is refused.
	stream, err := op.Pair(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&apipb.PairClientMessage{Msg: &apipb.PairClientMessage_Start{Start: &apipb.PairStart{DeviceId: f.GetDeviceId(), User: "alice", Role: apipb.Role_ROLE_ADMIN}}})
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("pairing outside ceremony mode: %v", err)
	}
	// The bridge going away detaches its devices.
	b.stream.CloseSend()
	eventually(t, func() error {
		res, err := op.ListDevices(t.Context(), &apipb.ListDevicesRequest{})
		if err != nil {
			return err
		}
		if len(res.GetDevices()) != 0 {
			return errors.New("device still listed after its bridge left")
		}
		return nil
	})
}

// A device record edited in the database behind the core's back is refused
// loudly: the listing fails with DataLoss naming the record.
func TestTamperedDeviceRecordIsRefused(t *testing.T) {
	e := start(t, false)
	k, f := softDevice(t)
	rec := &core.DeviceRecord{ID: f.GetDeviceId(), Algorithm: k.Algorithm(), IdentityKey: k.PublicKey(), User: "alice", Role: core.RoleApprover, State: core.DevicePaired, PairedAt: time.Now()}
	if err := e.devices.CreateDevice(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	op := apipb.NewOperatorClient(e.dial(t, "operator"))
	if _, err := op.ListDevices(t.Context(), &apipb.ListDevicesRequest{}); err != nil {
		t.Fatalf("genuine record: %v", err)
	}
	// Promote alice to admin directly in SQLite.
	db, err := sql.Open("sqlite", filepath.Join(e.dataDir, "opencustody.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE records SET body = CAST(replace(CAST(body AS TEXT), '"approver"', '"admin"') AS BLOB) WHERE kind = 'device'`); err != nil {
		t.Fatal(err)
	}
	_, err = op.ListDevices(t.Context(), &apipb.ListDevicesRequest{})
	if status.Code(err) != codes.DataLoss {
		t.Fatalf("tampered record: %v, want DataLoss", err)
	}
	// The core refuses to open a channel on it either.
	if _, err := e.core.Attach(f).Open(t.Context()); !errors.Is(err, records.ErrIntegrity) {
		t.Fatalf("open on a tampered record: %v", err)
	}
}

// The Audit API lists the log, and reports an edited entry by position
// while refusing to list it.
func TestAuditAPI(t *testing.T) {
	e := start(t, false)
	for i := range 3 {
		if _, err := e.audit.Append(t.Context(), audit.Event{Kind: audit.KindRevocation, Subject: fmt.Sprintf("dev-%d", i), Detail: "revoked: user alice"}); err != nil {
			t.Fatal(err)
		}
	}
	a := apipb.NewAuditClient(e.dial(t, "operator"))
	list, err := a.ListAudit(t.Context(), &apipb.ListAuditRequest{})
	if err != nil || len(list.GetEntries()) != 3 || list.GetEntries()[2].GetSubject() != "dev-2" {
		t.Fatalf("ListAudit: %v, %v", list, err)
	}
	rep, err := a.VerifyAudit(t.Context(), &apipb.VerifyAuditRequest{})
	if err != nil || len(rep.GetProblems()) != 0 || rep.GetLastSeq() != 3 {
		t.Fatalf("VerifyAudit: %v, %v", rep, err)
	}
	// (This failed login adds an entry of its own, after entry 3.)
	if _, err := apipb.NewAuditClient(e.dial(t, "bridge")).ListAudit(t.Context(), &apipb.ListAuditRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("bridge token: %v, want Unauthenticated", err)
	}

	db, err := sql.Open("sqlite", filepath.Join(e.dataDir, "opencustody.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE records SET body = CAST(replace(CAST(body AS TEXT), 'alice', 'mallory') AS BLOB) WHERE kind = 'audit' AND key = ?`, fmt.Sprintf("%020d", 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ListAudit(t.Context(), &apipb.ListAuditRequest{}); status.Code(err) != codes.DataLoss {
		t.Fatalf("ListAudit of an edited log: %v, want DataLoss", err)
	}
	rep, err = a.VerifyAudit(t.Context(), &apipb.VerifyAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.GetProblems()) != 2 || rep.GetProblems()[0].GetSeq() != 2 || rep.GetProblems()[1].GetSeq() != 2 {
		t.Fatalf("problems %v, want two at entry 2 (mac and hash)", rep.GetProblems())
	}
}

// hsmd signs a checkpoint of the audit log's tail when it stops.
func TestAuditCheckpointOnStop(t *testing.T) {
	e := start(t, false)
	for i := range 3 {
		if _, err := e.audit.Append(t.Context(), audit.Event{Kind: audit.KindRevocation, Subject: fmt.Sprintf("dev-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	e.srv.Stop()
	until(t, t.Context(), "a checkpoint of entry 3", func() error {
		rep, err := e.audit.Verify(t.Context())
		if err != nil {
			return err
		}
		if !rep.OK() || rep.LastCheckpoint != 3 {
			return fmt.Errorf("report %+v", rep)
		}
		return nil
	})
}
