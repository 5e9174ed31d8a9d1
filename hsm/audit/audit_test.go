package audit_test

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/hsmtest"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/hsm/softhsm/softhsmtest"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

func TestMain(m *testing.M) { softhsmtest.Main(m) }

// TestEntryVector pins the entry hash encoding (see the package doc).
func TestEntryVector(t *testing.T) {
	e := &audit.Entry{
		Seq: 1, Time: time.Unix(1700000000, 5).UTC(), Kind: "pairing",
		Subject: "dev-1", Detail: "user alice", Prev: make([]byte, 32),
	}
	in, err := e.HashInput()
	if err != nil {
		t.Fatal(err)
	}
	const wantIn = "4f70656e437573746f647920617564697420656e74727920763100000000000000000117979cfe362a00050770616972696e6700056465762d31000a7573657220616c6963650000000000000000000000000000000000000000000000000000000000000000"
	if got := hex.EncodeToString(in); got != wantIn {
		t.Errorf("hash input\n got %s\nwant %s", got, wantIn)
	}
	h, err := e.ComputeHash()
	if err != nil {
		t.Fatal(err)
	}
	const wantHash = "883c5a45c7b3109e02948e4bd3d427fb59a00caf9cdbf0982a217ec211e8434a"
	if got := hex.EncodeToString(h); got != wantHash {
		t.Errorf("hash %s, want %s", got, wantHash)
	}
}

type env struct {
	log    *audit.Log
	dbPath string
	store  *hsm.PKCS11Store
	cfg    audit.Config
}

func newEnv(t *testing.T, every uint64) *env {
	t.Helper()
	c := hsmtest.NewCore(t)
	cfg := audit.Config{Records: c.Records, Rows: c.DB, Identity: c.Identity, CheckpointEvery: every}
	l, err := audit.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &env{log: l, dbPath: filepath.Join(c.Dir, records.SQLiteFile), store: c.Store, cfg: cfg}
}

func (e *env) appendN(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		if _, err := e.log.Append(t.Context(), audit.Event{Kind: audit.KindApproval, Subject: fmt.Sprintf("req-%d", i), Detail: "approved by alice"}); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *env) exec(t *testing.T, q string, args ...any) {
	t.Helper()
	db, err := sql.Open("sqlite", e.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	res, err := db.Exec(q, args...)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		t.Fatalf("%s: no row changed", q)
	}
}

func (e *env) verify(t *testing.T) *audit.Report {
	t.Helper()
	rep, err := e.log.Verify(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// want checks that rep has a problem at seq whose text contains what.
func want(t *testing.T, rep *audit.Report, seq uint64, checkpoint bool, what string) {
	t.Helper()
	for _, p := range rep.Problems {
		if p.Seq == seq && p.Checkpoint == checkpoint && strings.Contains(p.What, what) {
			return
		}
	}
	t.Errorf("no problem at %d (checkpoint %v) containing %q; got %v", seq, checkpoint, what, rep.Problems)
}

func key(seq int) string { return fmt.Sprintf("%020d", seq) }

func TestAppendVerifyClean(t *testing.T) {
	e := newEnv(t, 4)
	e.appendN(t, 10)
	if _, err := e.log.Checkpoint(t.Context()); err != nil {
		t.Fatal(err)
	}
	rep := e.verify(t)
	if !rep.OK() || rep.Entries != 10 || rep.LastSeq != 10 || rep.Checkpoints != 3 || rep.LastCheckpoint != 10 {
		t.Fatalf("report %+v", rep)
	}
	entries, err := e.log.Entries(t.Context())
	if err != nil || len(entries) != 10 || entries[9].Seq != 10 {
		t.Fatalf("Entries: %d, %v", len(entries), err)
	}
	// A new Log over the same store continues the chain.
	if e.log, err = audit.New(e.cfg); err != nil {
		t.Fatal(err)
	}
	e.appendN(t, 1)
	if rep := e.verify(t); !rep.OK() || rep.LastSeq != 11 {
		t.Fatalf("report %+v", rep)
	}
}

func TestEditedEntryIsReported(t *testing.T) {
	e := newEnv(t, 4)
	e.appendN(t, 6)
	e.exec(t, `UPDATE records SET body = CAST(replace(CAST(body AS TEXT), 'alice', 'mallory') AS BLOB) WHERE kind = 'audit' AND key = ?`, key(3))
	rep := e.verify(t)
	want(t, rep, 3, false, "mac does not verify")
	want(t, rep, 3, false, "hash does not match")
	if len(rep.Problems) != 2 {
		t.Errorf("problems %v, want only entry 3's", rep.Problems)
	}
	if _, err := e.log.Entries(t.Context()); err == nil {
		t.Error("Entries returned a tampered log")
	}
}

func TestDeletedEntryIsReported(t *testing.T) {
	e := newEnv(t, 4)
	e.appendN(t, 6)
	e.exec(t, `DELETE FROM records WHERE kind = 'audit' AND key = ?`, key(3))
	rep := e.verify(t)
	want(t, rep, 3, false, "missing")
	if len(rep.Problems) != 1 {
		t.Errorf("problems %v, want only entry 3 missing", rep.Problems)
	}
}

func TestDeletedCheckpointedTailIsReported(t *testing.T) {
	e := newEnv(t, 4)
	e.appendN(t, 6)
	e.exec(t, `DELETE FROM records WHERE kind = 'audit' AND key >= ?`, key(4))
	rep := e.verify(t)
	want(t, rep, 4, true, "missing")
	// Entries 5 and 6 were after the last checkpoint; the record store's
	// manifest still lists them.
	want(t, rep, 5, false, "missing: deleted")
	want(t, rep, 6, false, "missing: deleted")
	if rep.LastSeq != 3 {
		t.Errorf("last seq %d, want 3", rep.LastSeq)
	}
}

// TestDeletedUncheckpointedTailIsReported deletes the newest entry, which
// no checkpoint covers: the manifest of the audit records catches it, and
// Append refuses to chain past the hole.
func TestDeletedUncheckpointedTailIsReported(t *testing.T) {
	e := newEnv(t, 100)
	e.appendN(t, 3)
	e.exec(t, `DELETE FROM records WHERE kind = 'audit' AND key = ?`, key(3))
	rep := e.verify(t)
	want(t, rep, 3, false, "missing: deleted")
	if len(rep.Problems) != 1 {
		t.Errorf("problems %v", rep.Problems)
	}
	fresh, err := audit.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.Append(t.Context(), audit.Event{Kind: audit.KindLogin, Subject: "operator"}); !errors.Is(err, records.ErrIntegrity) {
		t.Errorf("Append over a deleted entry: %v, want an integrity error", err)
	}
}

// TestRolledBackLogIsReported puts the audit records, their manifest and
// the root back as they were two entries ago, while the log runs: the
// record store's pin catches the rollback.
func TestRolledBackLogIsReported(t *testing.T) {
	e := newEnv(t, 100)
	e.appendN(t, 2)
	db, err := sql.Open("sqlite", e.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE saved AS SELECT * FROM records`); err != nil {
		t.Fatal(err)
	}
	e.appendN(t, 2)
	for _, q := range []string{`DELETE FROM records`, `INSERT INTO records SELECT * FROM saved`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	rep := e.verify(t)
	want(t, rep, 0, false, "rolled back")
	if _, err := e.log.Append(t.Context(), audit.Event{Kind: audit.KindLogin, Subject: "operator"}); !errors.Is(err, records.ErrIntegrity) {
		t.Errorf("Append onto a rolled back log: %v, want an integrity error", err)
	}
}

func TestForeignCheckpointIsReported(t *testing.T) {
	e := newEnv(t, 100)
	e.appendN(t, 3)
	// A checkpoint over the genuine entry 3, signed by another key and
	// MACed by the record key (as if the HSM had been asked to store it).
	other, err := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ECDSA_P256, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := e.log.Entries(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	db, err := records.OpenSQLite(t.Context(), filepath.Dir(e.dbPath))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rs := records.New(db, hsm.RecordAuthenticator{A: e.store, Key: "records"})
	forged, err := audit.New(audit.Config{Records: rs, Rows: db, Identity: other})
	if err != nil {
		t.Fatal(err)
	}
	c, err := forged.Checkpoint(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if c.Seq != 3 || string(c.Hash) != string(entries[2].Hash) {
		t.Fatalf("forged checkpoint %+v", c)
	}
	rep := e.verify(t)
	want(t, rep, 3, true, "signature is not the identity key's")
	if len(rep.Problems) != 1 {
		t.Errorf("problems %v", rep.Problems)
	}
}

// TestTwoLogsShareTheChain appends through two Logs over one store, as two
// hsmd instances on one database do: an entry whose sequence number the
// other took is chained onto the new head, and the chain stays whole.
func TestTwoLogsShareTheChain(t *testing.T) {
	e := newEnv(t, 100)
	e.appendN(t, 2)
	other, err := audit.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ent, err := other.Append(t.Context(), audit.Event{Kind: audit.KindRevocation, Subject: "dev-1"}); err != nil || ent.Seq != 3 {
		t.Fatalf("other Append: %v, %v", ent, err)
	}
	// e.log still thinks the head is entry 2.
	if ent, err := e.log.Append(t.Context(), audit.Event{Kind: audit.KindRevocation, Subject: "dev-2"}); err != nil || ent.Seq != 4 {
		t.Fatalf("Append after the other's: %v, %v", ent, err)
	}
	if rep := e.verify(t); !rep.OK() || rep.LastSeq != 4 {
		t.Fatalf("report %+v", rep)
	}
	if _, err := e.log.Append(t.Context(), audit.Event{Kind: ""}); err == nil || !strings.Contains(err.Error(), "audit: entry 5") {
		t.Errorf("empty kind: %v", err)
	}
}

// TestConcurrentAppendsShareWrites: events appended at the same time are
// written together, fewer writes than events, and the chain stays whole:
// every entry once, in one order, each returned to its own caller; a
// write that passes a multiple of CheckpointEvery signs a checkpoint.
func TestConcurrentAppendsShareWrites(t *testing.T) {
	c := hsmtest.NewCore(t)
	l, err := audit.New(audit.Config{Records: c.Records, Rows: c.DB, Identity: c.Identity, CheckpointEvery: 10})
	if err != nil {
		t.Fatal(err)
	}
	const n = 32
	before := c.Records.Pinned() // the root's version: one more per write
	start := make(chan struct{})
	var wg sync.WaitGroup
	got := make([]*audit.Entry, n)
	for i := range n {
		wg.Go(func() {
			<-start
			e, err := l.Append(t.Context(), audit.Event{Kind: audit.KindPrompt, Subject: fmt.Sprintf("req-%d", i), Detail: "shown"})
			if err != nil {
				t.Error(err)
			}
			got[i] = e
		})
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}
	writes := c.Records.Pinned() - before // checkpoints included
	t.Logf("%d concurrent appends took %d writes", n, writes)
	if writes > n/2 {
		t.Errorf("%d concurrent appends took %d writes", n, writes)
	}
	seqs := map[uint64]bool{}
	for i, e := range got {
		if e.Subject != fmt.Sprintf("req-%d", i) || seqs[e.Seq] || e.Seq < 1 || e.Seq > n {
			t.Errorf("caller %d got entry %d for %s", i, e.Seq, e.Subject)
		}
		seqs[e.Seq] = true
	}
	rep, err := l.Verify(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Entries != n || rep.LastSeq != n || rep.Checkpoints == 0 {
		t.Errorf("report %+v", rep)
	}
}

// TestQueuedEventComesFirst: an event queued before another is appended
// takes the earlier sequence number, even when the other's Append writes
// both before the first caller waits.
func TestQueuedEventComesFirst(t *testing.T) {
	e := newEnv(t, 100)
	wait := e.log.Queue(audit.Event{Kind: audit.KindRequest, Subject: "req-1", Detail: "submitted"})
	later, err := e.log.Append(t.Context(), audit.Event{Kind: audit.KindPrompt, Subject: "req-1", Detail: "shown"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := wait(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if first.Seq != 1 || first.Kind != audit.KindRequest || later.Seq != 2 || later.Prev == nil || string(later.Prev) != string(first.Hash) {
		t.Errorf("queued entry %d (%s), appended entry %d", first.Seq, first.Kind, later.Seq)
	}
	if rep := e.verify(t); !rep.OK() || rep.Entries != 2 {
		t.Errorf("report %+v", rep)
	}
}
