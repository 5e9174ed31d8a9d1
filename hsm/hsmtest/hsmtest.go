// Package hsmtest gives tests the real parts the custody core runs on: an
// HSM store on a fresh SoftHSM2 token (package softhsmtest), and a token
// holding the identity and record keys together with SQLite records that
// the record key authenticates.
//
// A test binary that uses it must run its tests through
// softhsmtest.Main from TestMain, which removes the tokens afterwards.
package hsmtest

import (
	"testing"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/hsm/softhsm/softhsmtest"
)

// Labels of the keys [NewCore] generates.
const (
	IdentityKey = "identity"
	RecordKey   = "records"
)

// Store opens a store on a new, empty token; it is closed when the test
// ends.
func Store(t testing.TB) *hsm.PKCS11Store {
	t.Helper()
	s, _ := StoreToken(t)
	return s
}

// StoreToken is [Store], also returning the token (its PINs, for tests of
// Security Officer steps).
func StoreToken(t testing.TB) (*hsm.PKCS11Store, *softhsmtest.Token) {
	t.Helper()
	tok := softhsmtest.NewTestToken(t)
	s, err := hsm.Open(t.Context(), hsm.Config{URI: tok.URI})
	if err != nil {
		t.Fatalf("hsmtest: open token: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("hsmtest: close store: %v", err)
		}
	})
	return s, tok
}

// Core is what the custody core needs from outside: the HSM with its
// identity key (P-256) and record key (HMAC-SHA256), and a SQLite record
// store in Dir whose records the record key authenticates.
type Core struct {
	Store    *hsm.PKCS11Store
	Identity *hsm.IdentitySigner
	DB       *records.SQLite
	Records  *records.Store
	// Dir holds the database file, records.SQLiteFile.
	Dir string
	// Token is the SoftHSM2 token the store is on.
	Token *softhsmtest.Token
}

// NewHSM opens a store on a new token holding the identity key (P-256) and
// the record key (HMAC-SHA256), and returns it with the identity signer.
func NewHSM(t testing.TB) (*hsm.PKCS11Store, *hsm.IdentitySigner) {
	t.Helper()
	store, id, _ := newHSM(t)
	return store, id
}

func newHSM(t testing.TB) (*hsm.PKCS11Store, *hsm.IdentitySigner, *softhsmtest.Token) {
	t.Helper()
	ctx := t.Context()
	store, tok := StoreToken(t)
	for _, k := range []hsm.GenerateKeyRequest{{Label: IdentityKey, Algorithm: hsm.ECDSAP256}, {Label: RecordKey, Algorithm: hsm.HMACSHA256}} {
		if _, err := store.GenerateKey(ctx, k); err != nil {
			t.Fatalf("hsmtest: %v", err)
		}
	}
	id, err := hsm.NewIdentitySigner(ctx, store, IdentityKey)
	if err != nil {
		t.Fatalf("hsmtest: %v", err)
	}
	return store, id, tok
}

// NewCore makes a Core on a new token and a new directory; everything is
// closed when the test ends.
func NewCore(t testing.TB) *Core {
	t.Helper()
	ctx := t.Context()
	store, id, tok := newHSM(t)
	dir := t.TempDir()
	db, err := records.OpenSQLite(ctx, dir)
	if err != nil {
		t.Fatalf("hsmtest: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return &Core{Store: store, Identity: id, DB: db, Records: records.New(db, hsm.RecordAuthenticator{A: store, Key: RecordKey}), Dir: dir, Token: tok}
}
