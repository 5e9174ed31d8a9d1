package cli

import (
	"context"
	"testing"

	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/hsm/records/pgtest"
)

// TestOpenRecordStore checks which backend --store opens: SQLite in the
// data directory by default, PostgreSQL (migrated, and a lock for several
// hsmd instances) for a postgres:// URL.
func TestOpenRecordStore(t *testing.T) {
	ctx := context.Background()
	db, err := openRecordStore(ctx, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := db.(*records.SQLite); !ok {
		t.Errorf("default store is %T, want SQLite", db)
	}
	db.Close()

	dsn := pgtest.NewSchema(t)
	db, err = openRecordStore(ctx, dsn, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, ok := db.(records.Locker); !ok {
		t.Errorf("--store %s opened %T, not a Locker", dsn, db)
	}
	if _, err := db.Read(ctx, []string{"device"}, nil); err != nil {
		t.Errorf("read from the migrated database: %v", err)
	}
}
