package records

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// SQLiteFile is the name of the database file [OpenSQLite] keeps in its
// directory.
const SQLiteFile = "opencustody.db"

// SQLite is the embedded [Backend]: one SQLite database file, pure Go, no
// server. It is safe for concurrent use, also by several processes sharing
// the file (SQLite's own locking, with a busy timeout, serialises writers).
type SQLite struct {
	db   *sql.DB
	path string

	stmtMu sync.Mutex
	stmts  map[string]*sql.Stmt // prepared statements by their text
}

// maxStmts bounds how many statements a SQLite keeps prepared. Its
// statements come in a few dozen shapes (a read of one record's path, of
// a whole kind, a swap, an insert); one past the bound runs unprepared.
const maxStmts = 64

// stmt returns q prepared, or nil if maxStmts are kept already. Parsing
// and planning a statement cost SQLite more than running most of this
// package's: the driver keeps a prepared statement's compiled form on
// each connection it runs on.
func (s *SQLite) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	s.stmtMu.Lock()
	defer s.stmtMu.Unlock()
	if st, ok := s.stmts[q]; ok {
		return st, nil
	}
	if len(s.stmts) >= maxStmts {
		return nil, nil
	}
	st, err := s.db.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	if s.stmts == nil {
		s.stmts = map[string]*sql.Stmt{}
	}
	s.stmts[q] = st
	return st, nil
}

// query runs q, prepared if it can be.
func (s *SQLite) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	st, err := s.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return s.db.QueryContext(ctx, q, args...)
	}
	return st.QueryContext(ctx, args...)
}

// exec runs q in tx, prepared if it can be.
func (s *SQLite) exec(ctx context.Context, tx *sql.Tx, q string, args ...any) (sql.Result, error) {
	st, err := s.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return tx.ExecContext(ctx, q, args...)
	}
	return tx.StmtContext(ctx, st).ExecContext(ctx, args...)
}

// sqlitePragmas run on every new connection. busy_timeout makes a writer wait
// for another instead of failing at once; WAL lets readers run beside the
// writer; synchronous=FULL makes every commit durable on return, power loss
// included. trusted_schema=OFF and cell_size_check=ON are SQLite's advice for
// database files that may have been crafted by someone hostile.
var sqlitePragmas = []string{
	"busy_timeout(10000)",
	"journal_mode(WAL)",
	"synchronous(FULL)",
	"foreign_keys(ON)",
	"trusted_schema(OFF)",
	"cell_size_check(ON)",
}

// OpenSQLite opens the database file dir/opencustody.db, creating dir
// (mode 0700) and the file (mode 0600) if they do not exist, and applies the
// schema migrations it has not applied yet. It refuses a database whose
// schema is newer than this build knows. Close it when done.
func OpenSQLite(ctx context.Context, dir string) (*SQLite, error) {
	if dir == "" {
		return nil, errors.New("records: sqlite: no data directory given")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("records: sqlite: %w", err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("records: sqlite: %w", err)
	}
	path := filepath.Join(abs, SQLiteFile)
	// Create the file ourselves so that it, and the -wal and -shm files
	// SQLite makes with the same mode, are private to the service's user.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("records: sqlite: %w", err)
	}
	f.Close()

	q := url.Values{}
	for _, p := range sqlitePragmas {
		q.Add("_pragma", p)
	}
	// Transactions take the write lock when they begin, so a transaction
	// never fails half-way because another writer got there first.
	q.Set("_txlock", "immediate")
	dsn := (&url.URL{Scheme: "file", Path: filepath.ToSlash(path)}).String() + "?" + q.Encode()

	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("records: sqlite: open %s: %w", path, err)
	}
	s := &SQLite{db: db, path: path}
	if err := s.init(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *SQLite) init(ctx context.Context) error {
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("records: sqlite: open %s: %w", s.path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("records: sqlite: open %s: journal mode is %q, not wal", s.path, mode)
	}
	return s.migrate(ctx)
}

// Close closes the database.
func (s *SQLite) Close() error {
	s.stmtMu.Lock()
	for _, st := range s.stmts {
		st.Close()
	}
	s.stmts = nil
	s.stmtMu.Unlock()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("records: sqlite: close %s: %w", s.path, err)
	}
	return nil
}

// A migration changes the schema from version-1 to version. Migrations are
// never edited once released; a change is a new migration at the end.
type migration struct {
	version int
	name    string
	sql     string
}

var sqliteMigrations = []migration{
	{1, "records", `
CREATE TABLE records (
	kind    TEXT    NOT NULL,
	key     TEXT    NOT NULL,
	version INTEGER NOT NULL CHECK (version >= 1),
	body    BLOB    NOT NULL,
	mac     BLOB    NOT NULL,
	PRIMARY KEY (kind, key)
) STRICT, WITHOUT ROWID`},
	// A WITHOUT ROWID table keeps whole rows in its key's b-tree, which
	// SQLite advises only for rows well under a page; manifests run to
	// kilobytes, and every lookup paid for them (a third of an approval's
	// database time). With rowids, the (kind, key) index stays small and
	// a row's body is read only when it is wanted.
	{2, "records with rowids", `
CREATE TABLE records_rowid (
	kind    TEXT    NOT NULL,
	key     TEXT    NOT NULL,
	version INTEGER NOT NULL CHECK (version >= 1),
	body    BLOB    NOT NULL,
	mac     BLOB    NOT NULL,
	PRIMARY KEY (kind, key)
) STRICT;
INSERT INTO records_rowid (kind, key, version, body, mac) SELECT kind, key, version, body, mac FROM records;
DROP TABLE records;
ALTER TABLE records_rowid RENAME TO records`},
}

// migrate applies, in one transaction, the migrations the database has not
// applied yet, and records each in schema_migrations.
func (s *SQLite) migrate(ctx context.Context) (err error) {
	fail := func(err error) error { return fmt.Errorf("records: sqlite: migrate %s: %w", s.path, err) }
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fail(err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	if _, err := tx.ExecContext(ctx, `
CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER PRIMARY KEY,
	name       TEXT NOT NULL,
	applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT`); err != nil {
		return fail(err)
	}
	rows, err := tx.QueryContext(ctx, "SELECT version FROM schema_migrations ORDER BY version")
	if err != nil {
		return fail(err)
	}
	applied := 0
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return fail(err)
		}
		if v != applied+1 {
			rows.Close()
			return fail(fmt.Errorf("schema_migrations lists version %d after %d", v, applied))
		}
		applied = v
	}
	if err := rows.Err(); err != nil {
		return fail(err)
	}
	if applied > len(sqliteMigrations) {
		return fail(fmt.Errorf("database schema version %d is newer than this build's %d", applied, len(sqliteMigrations)))
	}
	for _, m := range sqliteMigrations[applied:] {
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return fail(fmt.Errorf("migration %d (%s): %w", m.version, m.name, err))
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", m.version, m.name); err != nil {
			return fail(fmt.Errorf("migration %d (%s): %w", m.version, m.name, err))
		}
	}
	if err := tx.Commit(); err != nil {
		return fail(err)
	}
	return nil
}

// Get implements [Backend].
func (s *SQLite) Get(ctx context.Context, kind, key string) (Row, error) {
	var k, y, v, b, m any
	err := s.db.QueryRowContext(ctx,
		"SELECT kind, key, version, body, mac FROM records WHERE kind = ? AND key = ?",
		kind, key).Scan(&k, &y, &v, &b, &m)
	if errors.Is(err, sql.ErrNoRows) {
		return Row{}, ErrNotFound
	}
	if err != nil {
		return Row{}, fmt.Errorf("records: sqlite: get %s %q: %w", kind, key, err)
	}
	return rowFromSQL(kind, key, k, y, v, b, m)
}

// List implements [Backend].
func (s *SQLite) List(ctx context.Context, kind string) ([]Row, error) {
	rows, err := s.db.QueryContext(ctx,
		"SELECT kind, key, version, body, mac FROM records WHERE kind = ?", kind)
	if err != nil {
		return nil, fmt.Errorf("records: sqlite: list %s: %w", kind, err)
	}
	defer rows.Close()
	var out []Row
	for rows.Next() {
		var k, y, v, b, m any
		if err := rows.Scan(&k, &y, &v, &b, &m); err != nil {
			return nil, fmt.Errorf("records: sqlite: list %s: %w", kind, err)
		}
		var name string // names the row in errors, whatever its type
		switch y := y.(type) {
		case string:
			name = y
		case []byte:
			name = string(y)
		default:
			name = fmt.Sprint(y)
		}
		r, err := rowFromSQL(kind, name, k, y, v, b, m)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("records: sqlite: list %s: %w", kind, err)
	}
	return out, nil
}

// rowFromSQL converts the columns of one row, which the table's STRICT
// types should make well-formed but a hostile file need not, naming the row
// as kind and key if they are not.
func rowFromSQL(kind, key string, k, y, v, b, m any) (Row, error) {
	malformed := func(format string, args ...any) (Row, error) {
		return Row{}, &IntegrityError{Kind: kind, Key: key, Reason: "malformed row: " + fmt.Sprintf(format, args...)}
	}
	var r Row
	var ok bool
	if r.Kind, ok = k.(string); !ok {
		return malformed("kind is %s", sqlType(k))
	}
	if r.Key, ok = y.(string); !ok {
		return malformed("key is %s", sqlType(y))
	}
	version, ok := v.(int64)
	if !ok {
		return malformed("version is %s", sqlType(v))
	}
	if version < 1 {
		return malformed("version %d", version)
	}
	r.Version = uint64(version)
	if r.Body, ok = b.([]byte); !ok {
		return malformed("body is %s", sqlType(b))
	}
	if r.MAC, ok = m.([]byte); !ok {
		return malformed("mac is %s", sqlType(m))
	}
	return r, nil
}

func sqlType(v any) string {
	switch v.(type) {
	case nil:
		return "NULL"
	case int64:
		return "an INTEGER"
	case float64:
		return "a REAL"
	case string:
		return "TEXT"
	case []byte:
		return "a BLOB"
	default:
		return fmt.Sprintf("a %T", v)
	}
}

// readWhere is the WHERE clause and arguments of [SQLite.Read], or "" if
// it reads nothing.
func readWhere(kinds []string, keys []RowKey) (string, []any) {
	var where []string
	var args []any
	for _, k := range kinds {
		where = append(where, "kind = ?")
		args = append(args, k)
	}
	for _, k := range keys {
		where = append(where, "(kind = ? AND key = ?)")
		args = append(args, k.Kind, k.Key)
	}
	return strings.Join(where, " OR "), args
}

const sqliteSelect = "SELECT kind, key, version, body, mac FROM records WHERE "

// Read implements [Backend] with one SELECT, which SQLite runs on one
// snapshot.
func (s *SQLite) Read(ctx context.Context, kinds []string, keys []RowKey) ([]Row, error) {
	where, args := readWhere(kinds, keys)
	if where == "" {
		return nil, nil
	}
	var out []Row
	err := s.each(ctx, "read", sqliteSelect+where, args, func(r Row) error {
		out = append(out, r)
		return nil
	})
	return out, err
}

// Scan implements [Backend] with one SELECT, a UNION ALL of the first part
// and the tail, which SQLite runs on one snapshot and, having no ORDER BY,
// one part after the other.
func (s *SQLite) Scan(ctx context.Context, kinds []string, keys []RowKey, tail string, fn func(Row) error) error {
	q, args := sqliteSelect+"kind = ?", []any{tail}
	if where, head := readWhere(kinds, keys); where != "" {
		q, args = sqliteSelect+"("+where+") UNION ALL "+q, append(head, tail)
	}
	return s.each(ctx, "scan", q, args, fn)
}

// each runs query q and passes fn each row.
func (s *SQLite) each(ctx context.Context, what, q string, args []any, fn func(Row) error) error {
	rows, err := s.query(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("records: sqlite: %s: %w", what, err)
	}
	defer rows.Close()
	for rows.Next() {
		var k, y, v, b, m any
		if err := rows.Scan(&k, &y, &v, &b, &m); err != nil {
			return fmt.Errorf("records: sqlite: %s: %w", what, err)
		}
		r, err := rowFromSQL(sqlName(k), sqlName(y), k, y, v, b, m)
		if err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("records: sqlite: %s: %w", what, err)
	}
	return nil
}

// sqlName renders a column that should be text, whatever its type, to
// name a row in errors.
func sqlName(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	default:
		return fmt.Sprint(v)
	}
}

// Apply implements [Backend] in one transaction. Each swap is one UPDATE
// whose WHERE clause is the whole old row, so the check and the write are a
// single step; the transaction holds SQLite's write lock from its start.
func (s *SQLite) Apply(ctx context.Context, ops []Op) (err error) {
	for _, o := range ops {
		if err := checkOp(o); err != nil {
			return fmt.Errorf("records: sqlite: %w", err)
		}
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("records: sqlite: begin: %w", err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	for i, o := range ops {
		var res sql.Result
		switch o.Kind {
		case OpInsert:
			res, err = s.exec(ctx, tx,
				"INSERT INTO records (kind, key, version, body, mac) VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, key) DO NOTHING",
				o.New.Kind, o.New.Key, int64(o.New.Version), nonNil(o.New.Body), nonNil(o.New.MAC))
		case OpSwap:
			res, err = s.exec(ctx, tx, `
UPDATE records SET version = ?, body = ?, mac = ?
WHERE kind = ? AND key = ? AND version = ? AND body = ? AND mac = ?`,
				int64(o.New.Version), nonNil(o.New.Body), nonNil(o.New.MAC),
				o.Old.Kind, o.Old.Key, int64(o.Old.Version), nonNil(o.Old.Body), nonNil(o.Old.MAC))
		}
		if err != nil {
			return fmt.Errorf("records: sqlite: write %s %q: %w", o.New.Kind, o.New.Key, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("records: sqlite: write %s %q: %w", o.New.Kind, o.New.Key, err)
		}
		if err := opResult(i, o, n); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("records: sqlite: commit: %w", err)
	}
	return nil
}

// checkOp refuses an op no Store makes.
func checkOp(o Op) error {
	switch {
	case o.Kind != OpInsert && o.Kind != OpSwap:
		return fmt.Errorf("op of unknown kind %d", o.Kind)
	case o.New.Version > MaxVersion || o.Old.Version > MaxVersion:
		return fmt.Errorf("write %s %q: version out of range", o.New.Kind, o.New.Key)
	case o.Kind == OpSwap && (o.Old.Kind != o.New.Kind || o.Old.Key != o.New.Key):
		return fmt.Errorf("swap %s %q: new row is %s %q", o.Old.Kind, o.Old.Key, o.New.Kind, o.New.Key)
	}
	return nil
}

// opResult turns the number of rows op i changed into its outcome.
func opResult(i int, o Op, n int64) error {
	switch {
	case n == 1:
		return nil
	case n == 0 && o.Kind == OpInsert:
		return &OpError{Index: i, Kind: o.New.Kind, Key: o.New.Key, Err: ErrExists}
	case n == 0:
		return &OpError{Index: i, Kind: o.New.Kind, Key: o.New.Key, Err: ErrConflict}
	default:
		return fmt.Errorf("records: write %s %q: %d rows changed", o.New.Kind, o.New.Key, n)
	}
}

// Insert implements [Backend].
func (s *SQLite) Insert(ctx context.Context, r Row) error {
	return s.Apply(ctx, []Op{{Kind: OpInsert, New: r}})
}

// Swap implements [Backend].
func (s *SQLite) Swap(ctx context.Context, old, new Row) error {
	return s.Apply(ctx, []Op{{Kind: OpSwap, Old: old, New: new}})
}

// nonNil returns b, or an empty slice if b is nil: the driver binds a nil
// slice as NULL, and the columns are NOT NULL.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
