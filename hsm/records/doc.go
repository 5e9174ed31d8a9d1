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
//	err = store.Each(ctx, "request", fn) // one record at a time, for large kinds
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
// record's MAC and version before replacing it, so an update never papers
// over tampering.
//
// There is no delete. A record is revoked by updating its body (for example
// a device marked revoked), never by removing its row: a row that is gone
// is always an attacker's doing, which the manifests (below) report.
//
// # Errors
//
// A record that fails verification is never returned. [Store.Get],
// [Store.Update] and [Store.Create] return an [*IntegrityError] naming the
// kind and key (errors.Is(err, [ErrIntegrity]) is true); [Store.List] fails as
// a whole if any row of the kind fails, naming each bad row, and
// [Store.Check] names every bad row and returns the good ones.
// ([Store.Latest] answers a small kind unchanged since its last listing
// from memory, without reading its rows: see the manifests below.) An
// error from the
// Authenticator that does not wrap [ErrBadMAC] (the HSM is unreachable, say)
// is returned as it is, not as an integrity failure: the record may be fine,
// but it was not verified, so it is not used either.
//
// Other outcomes callers branch on: [ErrNotFound], [ErrExists] and
// [ErrConflict]. Error texts name the record; they never contain a body.
//
// # Manifests: rollback and deletion
//
// Per-record MACs stop forgery, editing and splicing, but not a row rolled
// back to an older version that was once genuine (a device's record from
// before it was revoked), nor a row deleted. So the Store keeps, for each
// kind, a tree of manifests in the encoding [Manifest.Marshal] defines,
// stored as rows of kind [TreeKind](kind), which no caller's kind can be:
//
//   - 4,096 leaves (keys "/ab/cd"), each listing the latest version of
//     the records whose key's SHA-256 starts with bytes whose low six bits
//     are ab and cd ([LeafPath]);
//   - 64 middle nodes ("/ab"), each listing the version and [Digest] of
//     its leaves;
//   - one top node ([TopNode]), listing the version and digest of the
//     middle nodes;
//
// and one root manifest (kind [RootKind], key [RootKey]) listing the
// version and digest of every kind's top node. The root is MACed by the
// record key like a record; the manifests below it carry no MAC, because
// their parent's digest (SHA-256 of the row's [MACInput]) authenticates
// them, back to the root. Nodes exist only once something is stored under
// them. A write therefore rewrites one record, one leaf, one middle node,
// the top and the root, and asks the HSM for two MACs, whatever the number
// of records: the manifests stay small (a leaf lists a few records until a
// kind holds tens of thousands, a few thousand at ten million), and a scan
// of a kind reads at most 4,160 manifests besides the records.
//
// Every Create and Update writes the record, the manifests on its path and
// the root in one atomic [Backend.Apply], each a compare-and-swap of the
// row it read, so they never disagree after a crash; a write that lost a
// race for a manifest or the root reads again and retries. [Store.Write]
// does the same for several records at once, of any kinds, all or none:
// one Apply, one new root, one MAC per record and one for the root.
//
// A Store writes one change at a time, and builds on the rows it last
// wrote without reading them again: every row a write builds on is still
// the Old of a compare-and-swap, so if another process wrote meanwhile, or
// someone edited the database, the Apply fails, and the Store forgets what
// it remembered, reads, verifies, and decides again from what it read
// (reporting an edit as an [*IntegrityError]). Every Get reads
// the record, the manifests on its path and the root from one snapshot
// ([Backend.Read]), and List the whole kind and its tree; both refuse, with
// an [*IntegrityError] naming it:
//
//   - a record at another version than its leaf lists (rolled back);
//   - a record its leaf lists that has no row (deleted);
//   - a row its leaf does not list (put back after removal, or copied);
//   - a manifest at another version or digest than its parent lists, or
//     missing while its parent lists it, or listed by no parent (rolled
//     back, edited, removed with the records under it, or planted);
//   - a root older than the newest this Store has seen ([Store.Pinned]), or
//     missing after it saw one: the whole database rolled back or replaced
//     while the daemon ran.
//
// What remains: the root itself is only as fresh as the pin. A Store that
// never saw a newer root (a daemon started after the database was
// restored) accepts a complete, consistent older copy of the database: the
// genuine state of an earlier moment, all records at once. [Store.Pin] takes
// a version kept where the database cannot reach it: the custody daemon
// keeps one in its own directory between runs (hsmd.PinFile), which
// catches a database restored while it was down, as long as that
// directory was not rolled back too; its pin is at most one tick behind.
// Because the root's MAC and the digests below it pin down every row of
// a kind, a Store remembers the records its last List of a small kind
// verified, with the kind's top digest; while the root (read and verified
// each time) lists that digest, [Store.Latest] answers from memory,
// reading one row.
//
// The root makes every write contend for one row, and the top node every
// write of a kind; writers that lose retry. The database can always refuse
// service, or drop writes by failing them.
//
// # Backends
//
// A [Backend] stores rows and does no cryptography; it is not trusted, and
// the Store verifies everything it returns.
//
//   - [SQLite] is the embedded default: one file, pure Go
//     (modernc.org/sqlite), WAL mode, numbered schema migrations applied at
//     open.
//   - [Postgres] (github.com/jackc/pgx/v5) is for several hsmd instances
//     sharing one database: each read one statement, each [Backend.Apply]
//     one transaction of compare-and-swap UPDATEs, its own numbered
//     migrations, applied under an advisory lock.
//
// Both run the same test suite, including the tamper tests that edit,
// insert, delete and roll back rows with SQL behind the Store's back. Both
// are also a [Locker]: a lock across every process on the database, which
// the custody daemon holds around each approval step.
//
// Store, and every backend in this package, is safe for concurrent use.
package records
