// Package hsmtest gives tests the real parts the custody core runs on: an
// HSM store on a fresh SoftHSM2 token (package softhsmtest), and a token
// holding the identity and record keys together with SQLite records that
// the record key authenticates.
//
// A test binary that uses it must run its tests through
// softhsmtest.Main from TestMain, which removes the tokens afterwards.
package hsmtest

import (
	"encoding/asn1"
	"testing"

	"github.com/btcsuite/btcd/btcec/v2"
	"github.com/miekg/pkcs11"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/internal/module"
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

// BackupableKey stores on the store's token, under label and id, a
// backup-able secp256k1 custody key whose scalar the test chose, with the
// attributes GenerateKey gives backup-able keys (sensitive, extractable
// only wrapped by a trusted key), and returns it: the test can look for
// the scalar in what leaves the HSM.
func BackupableKey(t testing.TB, s *hsm.PKCS11Store, tok *softhsmtest.Token, label string, id []byte) *btcec.PrivateKey {
	t.Helper()
	priv, err := btcec.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	m, err := module.Acquire(tok.ModulePath)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release()
	sh, err := m.Ctx.OpenSession(s.Info().SlotID, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Ctx.CloseSession(sh) // the store's login stays
	point, _ := asn1.Marshal(priv.PubKey().SerializeUncompressed())
	scalar := priv.Key.Bytes()
	common := func(class uint) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a}), // secp256k1
		}
	}
	if _, err := m.Ctx.CreateObject(sh, append(common(pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, point), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true))); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Ctx.CreateObject(sh, append(common(pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, scalar[:]),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true))); err != nil {
		t.Fatal(err)
	}
	return priv
}
