package records

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/opencustodynet/opencustody/hsm/records/pgtest"
)

func openTestPostgres(t *testing.T, dsn string) *Postgres {
	t.Helper()
	db, err := OpenPostgres(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestPostgres(t *testing.T) {
	pgtest.ServerDSN(t)
	runBackendSuite(t, func(t *testing.T) Backend { return openTestPostgres(t, pgtest.NewSchema(t)) })
}

func TestPostgresTampered(t *testing.T) {
	pgtest.ServerDSN(t)
	runTamperSuite(t, func(t *testing.T) (Backend, rawDB) {
		dsn := pgtest.NewSchema(t)
		conn, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return openTestPostgres(t, dsn), pgRaw{conn}
	})
}

// pgRaw runs SQL on its own connection, behind the store's back.
type pgRaw struct{ conn *pgx.Conn }

func (r pgRaw) exec(t *testing.T, q string, args ...any) int64 {
	t.Helper()
	var b strings.Builder
	n := 0
	for _, c := range q {
		if c == '?' {
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteRune(c)
	}
	tag, err := r.conn.Exec(context.Background(), b.String(), args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return tag.RowsAffected()
}

// TestPostgresMalformedRows changes column types, as the database's owner
// can; a value of the wrong type must be refused naming the record, not
// crash or be coerced.
func TestPostgresMalformedRows(t *testing.T) {
	pgtest.ServerDSN(t)
	for _, tc := range []struct{ name, alter string }{
		{"version as text", "ALTER TABLE records ALTER COLUMN version TYPE text USING version::text"},
		{"version as real", "ALTER TABLE records ALTER COLUMN version TYPE real USING version::real"},
		{"body as text", "ALTER TABLE records ALTER COLUMN body TYPE text USING encode(body, 'hex')"},
		{"mac as text", "ALTER TABLE records ALTER COLUMN mac TYPE text USING encode(mac, 'hex')"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := pgtest.NewSchema(t)
			db := openTestPostgres(t, dsn)
			s := testStore(t, db)
			seedTamperRecords(t, s)
			conn, err := pgx.Connect(context.Background(), dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			if _, err := conn.Exec(context.Background(), "ALTER TABLE records DROP CONSTRAINT IF EXISTS records_version_check"); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(context.Background(), tc.alter); err != nil {
				t.Fatal(err)
			}
			// A fresh pool: the old one's prepared statements fail on
			// the changed columns with an error of their own.
			s = testStore(t, openTestPostgres(t, dsn))
			_, err = s.Get(context.Background(), "device", "carol")
			if !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), "malformed row") {
				t.Errorf("Get: %v, want a malformed row", err)
			}
			list, err := s.List(context.Background(), "device")
			if !errors.Is(err, ErrIntegrity) || list != nil {
				t.Errorf("List: %v, %d records", err, len(list))
			}
		})
	}
}

// TestPostgresTwoHandles runs the concurrent updaters through two
// connection pools on one database, as two hsmd processes would.
func TestPostgresTwoHandles(t *testing.T) {
	dsn := pgtest.NewSchema(t)
	testConcurrentUpdates(t, testStore(t, openTestPostgres(t, dsn)), testStore(t, openTestPostgres(t, dsn)))
}

func TestPostgresMigrationChecks(t *testing.T) {
	dsn := pgtest.NewSchema(t)
	ctx := context.Background()
	openTestPostgres(t, dsn)
	openTestPostgres(t, dsn) // a second open applies nothing
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&n); err != nil || n != len(postgresMigrations) {
		t.Fatalf("schema_migrations has %d rows (%v), want %d", n, err, len(postgresMigrations))
	}
	if _, err := conn.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from the future')", len(postgresMigrations)+1); err != nil {
		t.Fatal(err)
	}
	if db, err := OpenPostgres(ctx, dsn); err == nil || !strings.Contains(err.Error(), "newer than this build") {
		if db != nil {
			db.Close()
		}
		t.Errorf("OpenPostgres of a newer schema: %v", err)
	}
	if _, err := OpenPostgres(ctx, "postgres://u:secretpw@[bad"); err == nil || strings.Contains(err.Error(), "secretpw") {
		t.Errorf("OpenPostgres of a bad DSN: %v (must fail without quoting the password)", err)
	}
}

func TestPostgresLock(t *testing.T) {
	dsn := pgtest.NewSchema(t)
	testLocker(t, openTestPostgres(t, dsn), openTestPostgres(t, dsn))
}
