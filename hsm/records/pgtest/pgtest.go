// Package pgtest gives tests a PostgreSQL database of their own, on the
// server that the environment variable OPENCUSTODY_TEST_POSTGRES names (a
// postgres:// URL). `make test` starts a throwaway server on a loopback
// port and sets it (scripts/with-postgres.sh).
//
// When the variable is set, a server that cannot be reached fails the
// test. When it is not set, tests that need PostgreSQL are skipped with a
// message saying how to run them.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvVar names the server tests use.
const EnvVar = "OPENCUSTODY_TEST_POSTGRES"

// ServerDSN returns the server's DSN, or skips the test if there is none.
func ServerDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(EnvVar)
	if dsn == "" {
		t.Skipf("PostgreSQL tests skipped: %s is not set (run 'make test', or point it at a server you can create schemas on, e.g. postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable)", EnvVar)
	}
	return dsn
}

// NewSchema makes an empty schema on the server and returns a DSN whose
// connections use it, so that each test has its own tables. The schema is
// dropped when the test ends.
func NewSchema(t testing.TB) string {
	t.Helper()
	dsn := ServerDSN(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("pgtest: cannot reach the PostgreSQL server %s names: %v", EnvVar, err)
	}
	defer conn.Close(context.Background())
	b := make([]byte, 8)
	rand.Read(b)
	schema := "t_" + hex.EncodeToString(b)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("pgtest: create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Errorf("pgtest: drop schema %s: %v", schema, err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("pgtest: drop schema %s: %v", schema, err)
		}
	})
	return WithSchema(t, dsn, schema)
}

// WithSchema returns dsn with its connections' search_path set to schema.
func WithSchema(t testing.TB, dsn, schema string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("pgtest: %s must be a postgres:// URL", EnvVar)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
