// Package records is the authenticated record store the custody core keeps
// outside the HSM: paired devices, users, roles, and later wallets, policies
// and requests.
//
// The database is untrusted (trust-model point 6): whoever controls it may
// edit, copy, insert or reorder rows at will. So every record carries a MAC
// made by a key inside the HSM, and the store refuses, loudly and by name, any
// record whose MAC does not verify. A hostile database therefore cannot add an
// approver, lower a quorum, or change a record without the core noticing.
//
// # Using it
//
// Open a [Backend] (the raw rows), wrap it in a [Store] with an
// [Authenticator] (the MAC key), and use only the Store:
//
//	db, err := records.OpenSQLite(ctx, dataDir) // dataDir/opencustody.db
//	...
//	defer db.Close()
//	store := records.New(db, recordKey)
//	rec, err := store.Create(ctx, "device", id, body) // rec.Version == 1
//	rec, err = store.Update(ctx, "device", id, rec.Version, newBody)
//	rec, err = store.Get(ctx, "device", id)
//	all, err := store.List(ctx, "device")
//
// The custody core passes the HSM record key (HMAC-SHA256 inside the HSM) as
// the Authenticator, through a small adapter over the HSM key store; this
// package does not import the HSM code. [SoftHMAC] is a software key for unit
// tests only.
//
// A [Record] is a kind ("device", "user", ...), a key (the record's id within
// its kind), a version, an opaque body (the core stores protobuf or JSON
// there; the store never looks inside) and the MAC. Bodies are authenticated,
// not encrypted: anyone who can read the database can read them.
//
// # What is authenticated
//
// The MAC covers the bytes returned by [MACInput], built with
// golang.org/x/crypto/cryptobyte:
//
//	"OpenCustody record v1\x00"      22 bytes: domain and format version
//	uint8  len(kind) || kind
//	uint16 len(key)  || key
//	uint64 version                    big-endian
//	uint32 len(body) || body
//
// Every field is length-prefixed, so the encoding is injective: a row moved to
// another kind or key, or whose version or body changed, or whose MAC came
// from another row, fails verification. The domain string keeps these MACs
// apart from any other use of the key that starts with its own domain string,
// and its "v1" lets a later format coexist with this one.
//
// Kinds are 1 to 64 bytes of lowercase ASCII letters, digits, '_' and '-',
// starting with a letter. Keys are 1 to 1024 bytes of valid UTF-8 without NUL
// (so that every SQL backend can store them as text). Bodies are at most
// [MaxBodyLen] bytes.
//
// # Updates
//
// Versions start at 1 and increase by one on every [Store.Update]. Update is
// optimistic: the caller names the version its change is based on, and gets
// an error wrapping [ErrConflict] if the stored record has moved on. The
// backend replaces the row only if it is still, byte for byte, the row the
// store read and verified (a compare-and-swap in one SQL statement), so of
// two concurrent writers of the same version exactly one wins and no update
// is lost; the loser reads again and retries. Update verifies the stored
// record's MAC before replacing it, so an update never papers over tampering.
//
// There is no delete. A record is revoked by updating its body (for example
// a device marked revoked), never by removing its row: the absence of a row
// cannot carry a MAC, so a deletion could not be told apart from an attacker
// dropping the row. Removal is for the tamper-evident audit chain (a hash
// chain with HSM-signed checkpoints) to cover; see below.
//
// # Errors
//
// A record that fails verification is never returned. [Store.Get],
// [Store.Update] and [Store.Create] return an [*IntegrityError] naming the
// kind and key (errors.Is(err, [ErrIntegrity]) is true); [Store.List] fails as
// a whole if any row of the kind fails, naming each bad row. An error from the
// Authenticator that does not wrap [ErrBadMAC] (the HSM is unreachable, say)
// is returned as it is, not as an integrity failure: the record may be fine,
// but it was not verified, so it is not used either.
//
// Other outcomes callers branch on: [ErrNotFound], [ErrExists] and
// [ErrConflict]. Error texts name the record; they never contain a body.
//
// # What the MACs do not cover
//
// Per-record MACs stop forgery, editing and splicing. They cannot, on their
// own, stop the database from:
//
//   - rolling a record back to an older version that was once genuine (for
//     example, restoring a device's record from before it was revoked);
//   - dropping a record, or a whole kind of records;
//   - refusing service.
//
// Catching rollback and removal needs state the database cannot rewrite: the
// audit chain's HSM-signed checkpoints, once they commit to each record's
// latest version. That chain is not part of this package. Until it exists,
// a revocation or a raised quorum is only as durable as the database.
//
// # Backends
//
// A [Backend] stores rows and does no cryptography; it is not trusted, and
// the Store verifies everything it returns. [SQLite] is the embedded default: one file, pure Go
// (modernc.org/sqlite), WAL mode, numbered schema migrations applied at open.
// A PostgreSQL backend, for several hsmd instances sharing one database, goes
// behind the same interface and runs the same test suite.
//
// Store, and every backend in this package, is safe for concurrent use.
package records
