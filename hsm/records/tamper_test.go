package records

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// rawDB changes the database behind the store's back, as whoever controls
// the database can. Queries use ? placeholders.
type rawDB interface {
	exec(t *testing.T, q string, args ...any) int64
}

// mustExec runs a change that must touch at least one row.
func mustExec(t *testing.T, db rawDB, q string, args ...any) {
	t.Helper()
	if n := db.exec(t, q, args...); n == 0 {
		t.Fatalf("%s: changed no row", q)
	}
}

// tamperWorld is what the SQL tamperings start from: devices alice (at
// version 2), carol and zed, and the rows as they were when only alice
// existed, at version 1 (an older, genuine state of the database).
type tamperWorld struct {
	s         *Store
	b         Backend
	db        rawDB
	untouched Record
	old       []Row // every row after alice's creation
}

func (w *tamperWorld) oldRow(kind, key string) Row {
	for _, r := range w.old {
		if r.Kind == kind && r.Key == key {
			return r
		}
	}
	panic(fmt.Sprintf("no old row %s %q", kind, key))
}

func (w *tamperWorld) current(t *testing.T, kind, key string) Row {
	t.Helper()
	r, err := w.b.Get(context.Background(), kind, key)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// restore puts an old row back in place of the current one.
func (w *tamperWorld) restore(t *testing.T, r Row) {
	t.Helper()
	mustExec(t, w.db, "UPDATE records SET version = ?, body = ?, mac = ? WHERE kind = ? AND key = ?",
		int64(r.Version), r.Body, nonNil(r.MAC), r.Kind, r.Key)
}

func newTamperWorld(t *testing.T, newDB func(t *testing.T) (Backend, rawDB)) *tamperWorld {
	t.Helper()
	ctx := context.Background()
	b, db := newDB(t)
	w := &tamperWorld{s: testStore(t, b), b: b, db: db}
	if _, err := w.s.Create(ctx, "device", "alice", []byte(`{"name":"alice"}`)); err != nil {
		t.Fatal(err)
	}
	old, err := b.Read(ctx, []string{"device", TreeKind("device"), RootKind}, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.old = old
	if _, err := w.s.Update(ctx, "device", "alice", 1, []byte(`{"name":"alice","role":"admin"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.s.Create(ctx, "device", "carol", []byte(`{"name":"carol"}`)); err != nil {
		t.Fatal(err)
	}
	if w.untouched, err = w.s.Create(ctx, "device", "zed", []byte(`{"name":"zed"}`)); err != nil {
		t.Fatal(err)
	}
	// Another kind, which kind-wide tamperings must not break.
	if _, err := w.s.Create(ctx, "wallet", "w1", []byte(`{"quorum":2}`)); err != nil {
		t.Fatal(err)
	}
	return w
}

// runTamperSuite changes rows with SQL behind the store's back. A change to
// one record must be refused with an IntegrityError naming that record by
// Get, Update, Create and List; a change the record MACs cannot see
// (rollback to an older genuine version, deletion) is caught by the
// manifests and named the same way; a rollback of the whole database is
// caught by the Store's pin while it runs.
func runTamperSuite(t *testing.T, newDB func(t *testing.T) (Backend, rawDB)) {
	type rec struct{ kind, key string }
	cases := []struct {
		name   string
		tamper func(t *testing.T, w *tamperWorld)
		broken []rec
	}{
		{"body edited", func(t *testing.T, w *tamperWorld) {
			mustExec(t, w.db, "UPDATE records SET body = ? WHERE kind = 'device' AND key = 'alice'", []byte(`{"name":"mallory"}`))
		}, []rec{{"device", "alice"}}},
		{"one body byte flipped", func(t *testing.T, w *tamperWorld) {
			r := w.current(t, "device", "alice")
			r.Body[3] ^= 1
			mustExec(t, w.db, "UPDATE records SET body = ? WHERE kind = 'device' AND key = 'alice'", r.Body)
		}, []rec{{"device", "alice"}}},
		{"version raised", func(t *testing.T, w *tamperWorld) {
			mustExec(t, w.db, "UPDATE records SET version = version + 1 WHERE kind = 'device' AND key = 'alice'")
		}, []rec{{"device", "alice"}}},
		{"version lowered", func(t *testing.T, w *tamperWorld) {
			mustExec(t, w.db, "UPDATE records SET version = 1 WHERE kind = 'device' AND key = 'alice'")
		}, []rec{{"device", "alice"}}},
		{"row copied to another key (an extra approver)", func(t *testing.T, w *tamperWorld) {
			mustExec(t, w.db, "INSERT INTO records SELECT kind, 'mallory', version, body, mac FROM records WHERE kind = 'device' AND key = 'alice'")
		}, []rec{{"device", "mallory"}}},
		{"row moved to another key", func(t *testing.T, w *tamperWorld) {
			mustExec(t, w.db, "UPDATE records SET key = 'mallory' WHERE kind = 'device' AND key = 'alice'")
		}, []rec{{"device", "mallory"}, {"device", "alice"}}},
		{"row copied to another kind", func(t *testing.T, w *tamperWorld) {
			mustExec(t, w.db, "INSERT INTO records SELECT 'user', key, version, body, mac FROM records WHERE kind = 'device' AND key = 'alice'")
		}, []rec{{"user", "alice"}}},
		{"row inserted with a garbage mac", func(t *testing.T, w *tamperWorld) {
			mustExec(t, w.db, "INSERT INTO records VALUES ('device', 'mallory', 1, ?, ?)", []byte(`{"approver":true}`), bytes.Repeat([]byte{0xa5}, 32))
		}, []rec{{"device", "mallory"}}},
		{"macs swapped between rows", func(t *testing.T, w *tamperWorld) {
			a, c := w.current(t, "device", "alice"), w.current(t, "device", "carol")
			mustExec(t, w.db, "UPDATE records SET mac = ? WHERE kind = 'device' AND key = 'alice'", c.MAC)
			mustExec(t, w.db, "UPDATE records SET mac = ? WHERE kind = 'device' AND key = 'carol'", a.MAC)
		}, []rec{{"device", "alice"}, {"device", "carol"}}},
		{"mac truncated", func(t *testing.T, w *tamperWorld) {
			c := w.current(t, "device", "carol")
			mustExec(t, w.db, "UPDATE records SET mac = ? WHERE kind = 'device' AND key = 'carol'", c.MAC[:16])
		}, []rec{{"device", "carol"}}},
		{"record rolled back to an older genuine version", func(t *testing.T, w *tamperWorld) {
			w.restore(t, w.oldRow("device", "alice"))
		}, []rec{{"device", "alice"}}},
		{"record deleted", func(t *testing.T, w *tamperWorld) {
			mustExec(t, w.db, "DELETE FROM records WHERE kind = 'device' AND key = 'carol'")
		}, []rec{{"device", "carol"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newTamperWorld(t, newDB)
			tc.tamper(t, w)
			var broken []Row
			for _, r := range tc.broken {
				broken = append(broken, Row{Kind: r.kind, Key: r.key})
			}
			checkRefused(t, w.s, broken, w.untouched)
			checkKindReads(t, w.s, "wallet", "w1")
		})
	}

	// Tamperings with a kind's manifests or the root: every record under
	// the manifest that failed is refused, naming it.
	top, aliceLeaf := rec{TreeKind("device"), TopNode}, rec{TreeKind("device"), LeafPath("alice")[treeDepth]}
	kindCases := []struct {
		name   string
		tamper func(t *testing.T, w *tamperWorld)
		failed rec // the manifest named
		what   string
	}{
		{"record and its manifest rolled back together", func(t *testing.T, w *tamperWorld) {
			w.restore(t, w.oldRow("device", "alice"))
			w.restore(t, w.oldRow(aliceLeaf.kind, aliceLeaf.key))
		}, aliceLeaf, "rolled back"},
		{"a record, its leaf and the manifests above rolled back together", func(t *testing.T, w *tamperWorld) {
			for _, node := range LeafPath("alice") {
				w.restore(t, w.oldRow(TreeKind("device"), node))
			}
			w.restore(t, w.oldRow("device", "alice"))
		}, top, "rolled back"},
		{"every record of a kind and its manifests deleted", func(t *testing.T, w *tamperWorld) {
			mustExec(t, w.db, "DELETE FROM records WHERE kind = 'device' OR kind = ?", TreeKind("device"))
		}, top, "missing"},
		{"top manifest edited", func(t *testing.T, w *tamperWorld) {
			m := w.current(t, top.kind, top.key)
			m.Body[len(m.Body)-1]++
			mustExec(t, w.db, "UPDATE records SET body = ? WHERE kind = ? AND key = ?", m.Body, top.kind, top.key)
		}, top, "altered"},
		{"leaf manifest edited, and given a MAC", func(t *testing.T, w *tamperWorld) {
			m := w.current(t, aliceLeaf.kind, aliceLeaf.key)
			m.Body[len(m.Body)-1]++
			mustExec(t, w.db, "UPDATE records SET body = ?, mac = ? WHERE kind = ? AND key = ?", m.Body, w.untouched.MAC, aliceLeaf.kind, aliceLeaf.key)
		}, aliceLeaf, "MAC"},
		{"leaf manifest deleted", func(t *testing.T, w *tamperWorld) {
			mustExec(t, w.db, "DELETE FROM records WHERE kind = ? AND key = ?", aliceLeaf.kind, aliceLeaf.key)
		}, aliceLeaf, "missing"},
		{"root deleted", func(t *testing.T, w *tamperWorld) {
			mustExec(t, w.db, "DELETE FROM records WHERE kind = ?", RootKind)
		}, rec{RootKind, RootKey}, "missing"},
		{"whole database rolled back to an older genuine state", func(t *testing.T, w *tamperWorld) {
			mustExec(t, w.db, "DELETE FROM records WHERE kind = 'device' AND key <> 'alice'")
			mustExec(t, w.db, "DELETE FROM records WHERE kind = 'wallet' OR kind = ?", TreeKind("wallet"))
			for _, r := range w.old {
				w.restore(t, r)
			}
		}, rec{RootKind, RootKey}, "rolled back"},
	}
	for _, tc := range kindCases {
		t.Run(tc.name, func(t *testing.T) {
			w := newTamperWorld(t, newDB)
			tc.tamper(t, w)
			ctx := context.Background()
			affected := func(key string) bool {
				p := LeafPath(key)
				return tc.failed.kind != TreeKind("device") || slices.Contains(p[:], tc.failed.key)
			}
			for _, key := range []string{"alice", "zed", "nobody"} {
				if !affected(key) {
					continue // under manifests that did not fail
				}
				_, err := w.s.Get(ctx, "device", key)
				checkIntegrityError(t, "Get", err, tc.failed.kind, tc.failed.key)
				if err != nil && !strings.Contains(err.Error(), tc.what) {
					t.Errorf("Get: %v, want it to say %q", err, tc.what)
				}
				if !affected(key + "2") {
					continue
				}
				_, err = w.s.Create(ctx, "device", key+"2", nil)
				checkIntegrityError(t, "Create", err, tc.failed.kind, tc.failed.key)
			}
			list, err := w.s.List(ctx, "device")
			checkIntegrityError(t, "List", err, tc.failed.kind, tc.failed.key)
			err = w.s.Each(ctx, "device", func(r Record) error {
				if affected(r.Key) {
					t.Errorf("Each passed %s %q, under the failed manifest", r.Kind, r.Key)
				}
				return nil
			})
			checkIntegrityError(t, "Each", err, tc.failed.kind, tc.failed.key)
			if list != nil {
				t.Error("List returned records")
			}
		})
	}

	// The limit the package doc states: a Store that never saw the newer
	// state (a daemon started after the rollback) accepts a consistent
	// older database, unless it was pinned from a copy kept elsewhere.
	t.Run("whole database rolled back before a restart", func(t *testing.T) {
		w := newTamperWorld(t, newDB)
		pin := w.s.Pinned()
		mustExec(t, w.db, "DELETE FROM records WHERE kind = 'device' AND key <> 'alice'")
		mustExec(t, w.db, "DELETE FROM records WHERE kind = 'wallet' OR kind = ?", TreeKind("wallet"))
		for _, r := range w.old {
			w.restore(t, r)
		}
		ctx := context.Background()
		fresh := testStore(t, w.b)
		if got, err := fresh.Get(ctx, "device", "alice"); err != nil || got.Version != 1 {
			t.Fatalf("unpinned store: Get = %+v, %v; want the old version 1 (the documented limit)", got, err)
		}
		pinned := testStore(t, w.b)
		pinned.Pin(pin)
		_, err := pinned.Get(ctx, "device", "alice")
		checkIntegrityError(t, "Get", err, RootKind, RootKey)
	})
}

// checkKindReads checks that a record of another kind still reads.
func checkKindReads(t *testing.T, s *Store, kind, key string) {
	t.Helper()
	if _, err := s.Get(context.Background(), kind, key); err != nil {
		t.Errorf("%s %q of an untouched kind: %v", kind, key, err)
	}
	if _, err := s.List(context.Background(), kind); err != nil {
		t.Errorf("List %s of an untouched kind: %v", kind, err)
	}
}
