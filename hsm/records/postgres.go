package records

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Postgres is the [Backend] for several custody daemons sharing one
// PostgreSQL database (github.com/jackc/pgx/v5). It is safe for concurrent
// use by any number of processes: reads are single statements, each on one
// snapshot, and [Postgres.Apply] is one transaction whose swaps are
// compare-and-swap UPDATEs.
//
// It is also a [Locker]: [Postgres.Lock] takes a session advisory lock,
// one per database schema, held on a connection of its own.
type Postgres struct {
	pool    *pgxpool.Pool
	name    string // host/database, for errors; never the password
	lockKey int64
	// local is this process's turn at the advisory lock: one goroutine
	// at a time waits for it on a connection, so that waiters cannot take
	// every pooled connection and starve the holder of the ones its
	// reads and writes need.
	local chan struct{}
}

// OpenPostgres connects to the database dsn names (a postgres:// URL or
// key=value string, as libpq reads them), and applies the schema migrations
// it has not applied yet, in the connection's current schema. It refuses
// a database whose schema is newer than this build knows. Close it when
// done.
func OpenPostgres(ctx context.Context, dsn string) (*Postgres, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors can quote the DSN, password included.
		return nil, errors.New("records: postgres: cannot parse the connection string")
	}
	name := fmt.Sprintf("%s:%d/%s", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("records: postgres %s: %w", name, err)
	}
	p := &Postgres{pool: pool, name: name, local: make(chan struct{}, 1)}
	if err := p.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return p, nil
}

// Close closes every connection.
func (p *Postgres) Close() error {
	p.pool.Close()
	return nil
}

func (p *Postgres) fail(op string, err error) error {
	return fmt.Errorf("records: postgres %s: %s: %w", p.name, op, err)
}

var postgresMigrations = []migration{
	{1, "records", `
CREATE TABLE records (
	kind    text   NOT NULL,
	key     text   NOT NULL,
	version bigint NOT NULL CHECK (version >= 1),
	body    bytea  NOT NULL,
	mac     bytea  NOT NULL,
	PRIMARY KEY (kind, key)
)`},
}

// migrate applies the missing migrations in one transaction, under a
// transaction advisory lock so that daemons starting together do not race.
func (p *Postgres) migrate(ctx context.Context) (err error) {
	fail := func(err error) error { return p.fail("migrate", err) }
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return fail(err)
	}
	defer func() {
		if err != nil {
			tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	var schema string
	if err := tx.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		return fail(err)
	}
	h := fnv.New64a()
	h.Write([]byte("opencustody records\x00" + schema))
	p.lockKey = int64(h.Sum64())
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", p.lockKey^1); err != nil {
		return fail(err)
	}
	if _, err := tx.Exec(ctx, `
CREATE TABLE IF NOT EXISTS schema_migrations (
	version    integer PRIMARY KEY,
	name       text NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now()
)`); err != nil {
		return fail(err)
	}
	rows, err := tx.Query(ctx, "SELECT version FROM schema_migrations ORDER BY version")
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
	if applied > len(postgresMigrations) {
		return fail(fmt.Errorf("database schema version %d is newer than this build's %d", applied, len(postgresMigrations)))
	}
	for _, m := range postgresMigrations[applied:] {
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return fail(fmt.Errorf("migration %d (%s): %w", m.version, m.name, err))
		}
		if _, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
			return fail(fmt.Errorf("migration %d (%s): %w", m.version, m.name, err))
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fail(err)
	}
	return nil
}

// scanRows reads kind, key, version, body, mac rows, whatever types a
// hostile database gives the columns.
func scanRows(rows pgx.Rows) ([]Row, error) {
	var out []Row
	err := eachRow(rows, func(r Row) error {
		out = append(out, r)
		return nil
	})
	return out, err
}

// eachRow passes fn each kind, key, version, body, mac row.
func eachRow(rows pgx.Rows, fn func(Row) error) error {
	defer rows.Close()
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return err
		}
		if len(vals) != 5 {
			return fmt.Errorf("%d columns", len(vals))
		}
		r, err := rowFromSQL(sqlName(vals[0]), sqlName(vals[1]), vals[0], vals[1], vals[2], vals[3], vals[4])
		if err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return &fnError{err}
		}
	}
	return rows.Err()
}

// fnError carries an error of Scan's fn through eachRow unchanged.
type fnError struct{ err error }

func (e *fnError) Error() string { return e.err.Error() }

const selectRows = "SELECT kind, key, version, body, mac FROM records "

// Get implements [Backend].
func (p *Postgres) Get(ctx context.Context, kind, key string) (Row, error) {
	rows, err := p.pool.Query(ctx, selectRows+"WHERE kind = $1 AND key = $2", kind, key)
	if err != nil {
		return Row{}, p.fail(fmt.Sprintf("get %s %q", kind, key), err)
	}
	rs, err := scanRows(rows)
	var ie *IntegrityError
	if errors.As(err, &ie) {
		return Row{}, err
	}
	if err != nil {
		return Row{}, p.fail(fmt.Sprintf("get %s %q", kind, key), err)
	}
	if len(rs) == 0 {
		return Row{}, ErrNotFound
	}
	return rs[0], nil
}

// List implements [Backend].
func (p *Postgres) List(ctx context.Context, kind string) ([]Row, error) {
	return p.Read(ctx, []string{kind}, nil)
}

// Read implements [Backend] with one SELECT: in PostgreSQL every statement
// sees one snapshot.
func (p *Postgres) Read(ctx context.Context, kinds []string, keys []RowKey) ([]Row, error) {
	if kinds == nil {
		kinds = []string{}
	}
	ks, ys := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		ks[i], ys[i] = k.Kind, k.Key
	}
	rows, err := p.pool.Query(ctx, selectRows+
		"WHERE kind = ANY($1::text[]) OR (kind, key) IN (SELECT * FROM unnest($2::text[], $3::text[]))", kinds, ks, ys)
	if err != nil {
		return nil, p.fail("read", err)
	}
	rs, err := scanRows(rows)
	var ie *IntegrityError
	if errors.As(err, &ie) {
		return nil, err
	}
	if err != nil {
		return nil, p.fail("read", err)
	}
	return rs, nil
}

// Scan implements [Backend] with one SELECT, a UNION ALL of the first part
// and the tail: one snapshot, and PostgreSQL appends the second part's
// rows after the first's.
func (p *Postgres) Scan(ctx context.Context, kinds []string, keys []RowKey, tail string, fn func(Row) error) error {
	if kinds == nil {
		kinds = []string{}
	}
	ks, ys := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		ks[i], ys[i] = k.Kind, k.Key
	}
	rows, err := p.pool.Query(ctx, "("+selectRows+
		"WHERE kind = ANY($1::text[]) OR (kind, key) IN (SELECT * FROM unnest($2::text[], $3::text[]))) UNION ALL ("+
		selectRows+"WHERE kind = $4)", kinds, ks, ys, tail)
	if err != nil {
		return p.fail("scan", err)
	}
	err = eachRow(rows, fn)
	var fe *fnError
	var ie *IntegrityError
	switch {
	case errors.As(err, &fe):
		return fe.err
	case errors.As(err, &ie):
		return err
	case err != nil:
		return p.fail("scan", err)
	}
	return nil
}

// Apply implements [Backend] in one transaction. Each swap is one UPDATE
// whose WHERE clause is the whole old row: under READ COMMITTED, an UPDATE
// that waited for a concurrent writer re-checks its WHERE clause against
// the row that writer committed, so of two swaps from the same row only
// the first matches.
func (p *Postgres) Apply(ctx context.Context, ops []Op) (err error) {
	for _, o := range ops {
		if err := checkOp(o); err != nil {
			return fmt.Errorf("records: postgres: %w", err)
		}
	}
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return p.fail("begin", err)
	}
	defer func() {
		if err != nil {
			tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	for i, o := range ops {
		var n int64
		switch o.Kind {
		case OpInsert:
			tag, err := tx.Exec(ctx,
				"INSERT INTO records (kind, key, version, body, mac) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, key) DO NOTHING",
				o.New.Kind, o.New.Key, int64(o.New.Version), nonNil(o.New.Body), nonNil(o.New.MAC))
			if err != nil {
				return p.fail(fmt.Sprintf("insert %s %q", o.New.Kind, o.New.Key), err)
			}
			n = tag.RowsAffected()
		case OpSwap:
			tag, err := tx.Exec(ctx, `
UPDATE records SET version = $1, body = $2, mac = $3
WHERE kind = $4 AND key = $5 AND version = $6 AND body = $7 AND mac = $8`,
				int64(o.New.Version), nonNil(o.New.Body), nonNil(o.New.MAC),
				o.Old.Kind, o.Old.Key, int64(o.Old.Version), nonNil(o.Old.Body), nonNil(o.Old.MAC))
			if err != nil {
				return p.fail(fmt.Sprintf("swap %s %q", o.New.Kind, o.New.Key), err)
			}
			n = tag.RowsAffected()
		}
		if err := opResult(i, o, n); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return p.fail("commit", err)
	}
	return nil
}

// Insert implements [Backend].
func (p *Postgres) Insert(ctx context.Context, r Row) error {
	return p.Apply(ctx, []Op{{Kind: OpInsert, New: r}})
}

// Swap implements [Backend].
func (p *Postgres) Swap(ctx context.Context, old, new Row) error {
	return p.Apply(ctx, []Op{{Kind: OpSwap, Old: old, New: new}})
}

// Lock implements [Locker] with a session advisory lock on a connection
// taken from the pool for as long as the lock is held. If that connection
// breaks, PostgreSQL releases the lock; the holder's writes are still
// compare-and-swaps, so they fail rather than overwrite.
func (p *Postgres) Lock(ctx context.Context) (func(), error) {
	select {
	case p.local <- struct{}{}:
	case <-ctx.Done():
		return nil, p.fail("lock", ctx.Err())
	}
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		<-p.local
		return nil, p.fail("lock", err)
	}
	if _, err := c.Exec(ctx, "SELECT pg_advisory_lock($1)", p.lockKey); err != nil {
		// The wait may have been cancelled half-way: do not reuse it.
		c.Conn().Close(context.WithoutCancel(ctx))
		c.Release()
		<-p.local
		return nil, p.fail("lock", err)
	}
	return func() {
		var ok bool
		err := c.QueryRow(context.Background(), "SELECT pg_advisory_unlock($1)", p.lockKey).Scan(&ok)
		if err != nil || !ok {
			c.Conn().Close(context.Background())
		}
		c.Release()
		<-p.local
	}, nil
}

// IsPostgresDSN reports whether store names a PostgreSQL database rather
// than a directory: a postgres:// or postgresql:// URL.
func IsPostgresDSN(store string) bool {
	return strings.HasPrefix(store, "postgres://") || strings.HasPrefix(store, "postgresql://")
}
