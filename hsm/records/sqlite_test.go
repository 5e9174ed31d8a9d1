package records

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func openTestSQLite(t *testing.T, dir string) *SQLite {
	t.Helper()
	db, err := OpenSQLite(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Error(err)
		}
	})
	return db
}

func TestSQLite(t *testing.T) {
	runBackendSuite(t, func(t *testing.T) Backend { return openTestSQLite(t, t.TempDir()) })
}

// rawSQL opens the database file directly, as an attacker with access to the
// file would, behind the store's back.
func rawSQL(t *testing.T, dir string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(dir, SQLiteFile)+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1) // one connection, so TEMP tables last between statements
	t.Cleanup(func() { db.Close() })
	return db
}

func execSQL(t *testing.T, db *sql.DB, query string, args ...any) {
	t.Helper()
	res, err := db.Exec(query, args...)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	dml := strings.HasPrefix(query, "UPDATE") || strings.HasPrefix(query, "INSERT")
	if n, _ := res.RowsAffected(); dml && n == 0 {
		t.Fatalf("%s: changed no row", query)
	}
}

func TestSQLiteTamperedFile(t *testing.T) {
	runTamperSuite(t, func(t *testing.T) (Backend, rawDB) {
		dir := t.TempDir()
		return openTestSQLite(t, dir), sqliteRaw{rawSQL(t, dir)}
	})
}

type sqliteRaw struct{ db *sql.DB }

func (r sqliteRaw) exec(t *testing.T, q string, args ...any) int64 {
	t.Helper()
	res, err := r.db.Exec(q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	n, _ := res.RowsAffected()
	return n
}

// TestSQLiteMalformedRows rebuilds the table without its types and
// constraints, as an attacker with the file can, and stores values of the
// wrong SQL type. Each must be refused naming the record, not crash or be
// coerced.
func TestSQLiteMalformedRows(t *testing.T) {
	cases := []struct {
		name, set string
	}{
		{"version as text", "version = 'two'"},
		{"version as real", "version = 2.5"},
		{"version null", "version = NULL"},
		{"version zero", "version = 0"},
		{"version negative", "version = -1"},
		{"body as text", "body = CAST(body AS TEXT)"},
		{"body null", "body = NULL"},
		{"mac as text", "mac = hex(mac)"},
		{"mac null", "mac = NULL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			db := openTestSQLite(t, dir)
			s := testStore(t, db)
			_, _, untouched := seedTamperRecords(t, s)
			raw := rawSQL(t, dir)
			for _, q := range []string{
				`CREATE TABLE loose (kind, key, version, body, mac)`,
				`INSERT INTO loose SELECT * FROM records`,
				`DROP TABLE records`,
				`ALTER TABLE loose RENAME TO records`,
			} {
				if _, err := raw.Exec(q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			execSQL(t, raw, `UPDATE records SET `+tc.set+` WHERE kind = 'device' AND key = 'carol'`)

			ctx := context.Background()
			_, err := s.Get(ctx, "device", "carol")
			checkIntegrityError(t, "Get", err, "device", "carol")
			_, err = s.Update(ctx, "device", "carol", 1, []byte("x"))
			checkIntegrityError(t, "Update", err, "device", "carol")
			list, err := s.List(ctx, "device")
			checkIntegrityError(t, "List", err, "device", "carol")
			if list != nil {
				t.Error("List returned records")
			}
			if got, err := s.Get(ctx, "device", untouched.Key); err != nil || got.Version != untouched.Version {
				t.Errorf("untouched record: %+v, %v", got, err)
			}
		})
	}
}

// TestSQLiteKeyOfWrongType stores a key as a BLOB in a loosened table. Get
// cannot find it (a BLOB never equals the TEXT it is looked up by); List sees
// it and must refuse, naming it readably.
func TestSQLiteKeyOfWrongType(t *testing.T) {
	dir := t.TempDir()
	s := testStore(t, openTestSQLite(t, dir))
	seedTamperRecords(t, s)
	raw := rawSQL(t, dir)
	for _, q := range []string{
		`CREATE TABLE loose (kind, key, version, body, mac)`,
		`INSERT INTO loose SELECT * FROM records`,
		`DROP TABLE records`,
		`ALTER TABLE loose RENAME TO records`,
		`UPDATE records SET key = CAST(key AS BLOB) WHERE key = 'carol'`,
	} {
		execSQL(t, raw, q)
	}
	list, err := s.List(context.Background(), "device")
	checkIntegrityError(t, "List", err, "device", "carol")
	if list != nil {
		t.Error("List returned records")
	}
}

func TestSQLiteReopen(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data") // OpenSQLite creates it
	db, err := OpenSQLite(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	s := testStore(t, db)
	if _, err := s.Create(ctx, "device", "alice", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, "device", "alice", 1, []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	for i := range 3 {
		db, err := OpenSQLite(ctx, dir)
		if err != nil {
			t.Fatalf("reopen %d: %v", i, err)
		}
		rec, err := testStore(t, db).Get(ctx, "device", "alice")
		if err != nil || rec.Version != 2 || string(rec.Body) != "v2" {
			t.Errorf("reopen %d: Get = %+v, %v", i, rec, err)
		}
		var n, max int
		if err := db.db.QueryRowContext(ctx, "SELECT count(*), max(version) FROM schema_migrations").Scan(&n, &max); err != nil {
			t.Fatal(err)
		}
		if n != len(sqliteMigrations) || max != len(sqliteMigrations) {
			t.Errorf("reopen %d: schema_migrations has %d rows up to version %d, want %d", i, n, max, len(sqliteMigrations))
		}
		var mode string
		if err := db.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
			t.Errorf("journal_mode = %q, %v", mode, err)
		}
		db.Close()
	}

	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, SQLiteFile): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&^want != 0 {
			t.Errorf("%s has mode %v, want at most %v", path, fi.Mode().Perm(), want)
		}
	}
}

// TestSQLiteMigrationToRowids: a database made before migration 2, with
// records in its WITHOUT ROWID table, is migrated on open: every row is
// kept byte for byte (so every MAC and manifest still verifies), and the
// table has rowids.
func TestSQLiteMigrationToRowids(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	all := sqliteMigrations
	sqliteMigrations = all[:1]
	db, err := OpenSQLite(ctx, dir)
	sqliteMigrations = all
	if err != nil {
		t.Fatal(err)
	}
	s := testStore(t, db)
	want := map[string]string{}
	for i := range 50 {
		k, body := fmt.Sprintf("r%d", i), strings.Repeat("x", 100*i)
		if _, err := s.Create(ctx, "request", k, []byte(body)); err != nil {
			t.Fatal(err)
		}
		want[k] = body
	}
	pinned := s.Pinned()
	db.Close()

	db = openTestSQLite(t, dir)
	var ddl string
	if err := db.db.QueryRowContext(ctx, "SELECT sql FROM sqlite_schema WHERE name = 'records'").Scan(&ddl); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ToUpper(ddl), "WITHOUT ROWID") {
		t.Errorf("after migration the table is still %s", ddl)
	}
	s = testStore(t, db)
	s.Pin(pinned)
	recs, bad, err := s.Check(ctx, "request")
	if err != nil || len(bad) > 0 {
		t.Fatalf("Check after migration: %v %v", bad, err)
	}
	if len(recs) != len(want) {
		t.Errorf("%d records after migration, want %d", len(recs), len(want))
	}
	for _, r := range recs {
		if string(r.Body) != want[r.Key] {
			t.Errorf("%s changed in migration", r.Key)
		}
	}
	if _, err := s.Create(ctx, "request", "after", []byte("{}")); err != nil {
		t.Errorf("write after migration: %v", err)
	}
}

func TestSQLiteMigrationChecks(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, sql, want string
	}{
		{"newer schema", "INSERT INTO schema_migrations (version, name) VALUES (?, 'from the future')", "newer than this build"},
		{"gap", "UPDATE schema_migrations SET version = version + 1 WHERE version = ?", "lists version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			db, err := OpenSQLite(ctx, dir)
			if err != nil {
				t.Fatal(err)
			}
			db.Close()
			arg := len(sqliteMigrations) + 1
			if tc.name == "gap" {
				arg = len(sqliteMigrations)
			}
			execSQL(t, rawSQL(t, dir), tc.sql, arg)
			db, err = OpenSQLite(ctx, dir)
			if err == nil {
				db.Close()
				t.Fatal("OpenSQLite accepted the database")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("OpenSQLite: %v, want it to say %q", err, tc.want)
			}
		})
	}
	if _, err := OpenSQLite(ctx, ""); err == nil {
		t.Error("OpenSQLite accepted an empty directory")
	}
}

// TestSQLiteTwoHandles runs the concurrent updaters through two separate
// handles on one file, as two hsmd processes sharing a data directory would.
func TestSQLiteTwoHandles(t *testing.T) {
	dir := t.TempDir()
	a := openTestSQLite(t, dir)
	b := openTestSQLite(t, dir)
	testConcurrentUpdates(t, testStore(t, a), testStore(t, b))
}

func TestSQLiteContextCanceled(t *testing.T) {
	db := openTestSQLite(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := testStore(t, db).Get(ctx, "device", "a"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a canceled context: %v", err)
	}
	if _, err := OpenSQLite(ctx, t.TempDir()); err == nil {
		t.Error("OpenSQLite with a canceled context succeeded")
	}
}

func TestSQLiteLock(t *testing.T) {
	dir := t.TempDir()
	testLocker(t, openTestSQLite(t, dir), openTestSQLite(t, dir))
}

// TestSQLiteKeepsStatementsPrepared: statements are prepared once and
// reused, up to maxStmts shapes; a read of a shape past the bound runs
// unprepared and reads the same rows.
func TestSQLiteKeepsStatementsPrepared(t *testing.T) {
	ctx := context.Background()
	db := openTestSQLite(t, t.TempDir())
	s := testStore(t, db)
	var keys []RowKey
	for i := range maxStmts + 10 {
		k := fmt.Sprintf("r%d", i)
		if _, err := s.Create(ctx, "request", k, []byte(k)); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, RowKey{Kind: "request", Key: k})
	}
	kept := len(db.stmts)
	if kept == 0 || kept > 4 {
		t.Errorf("%d writes kept %d statements, want a few", maxStmts+10, kept)
	}
	// Each number of keys is a statement of its own shape.
	for n := 1; n <= len(keys); n++ {
		rows, err := db.Read(ctx, nil, keys[:n])
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != n {
			t.Fatalf("a read of %d keys returned %d rows", n, len(rows))
		}
	}
	if len(db.stmts) != maxStmts {
		t.Errorf("%d statements kept, want the bound, %d", len(db.stmts), maxStmts)
	}
}
