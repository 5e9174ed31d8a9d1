package records

import (
	"context"
	"fmt"
)

// A Backend stores rows. It does no cryptography and is not trusted: the
// [Store] verifies everything it returns. Implementations must be safe for
// concurrent use, including by several processes sharing one database.
//
// Get returns the row stored under kind and key, or an error wrapping
// [ErrNotFound].
//
// List returns every row of kind, in any order.
//
// Read returns, from one consistent snapshot of the database, every row of
// each kind in kinds and each row named in keys that exists, in any order.
// "Consistent" means that no [Backend.Apply] is seen half done, and that
// a row read is never older than one read from another Apply that
// committed before it: a single SQL statement, or a read transaction,
// gives that.
//
// Apply performs ops in one atomic step: all of them, or none. An [OpInsert]
// stores its row if no row has the row's kind and key; an [OpSwap] replaces
// Old with New (same kind and key) if and only if the stored row is still
// exactly Old: same version, same body bytes, same MAC bytes. If an insert
// finds a row, or a swap finds another row or none, Apply changes nothing
// and returns an [*OpError] naming the op, wrapping [ErrExists] or
// [ErrConflict]. Two concurrent Applies whose swaps start from the same old
// row must never both succeed.
//
// Scan passes fn, one at a time, every row Read(ctx, kinds, keys) would
// return and then every row of kind tail, all from one consistent snapshot
// as Read's are, without holding them all in memory: first the rows of
// the first part, in any order, then those of tail, in any order. It
// stops at the first error fn returns and returns it. fn may use the
// backend meanwhile.
//
// Insert and Swap are Apply of one op, returning ErrExists or ErrConflict
// (wrapped or bare) when it fails.
//
// A backend that reads a row it cannot represent as a [Row] (a column of the
// wrong type, a negative version) returns an [*IntegrityError] naming it.
// Other errors are returned to the Store's callers as they are, so they should
// read "records: ...".
type Backend interface {
	Get(ctx context.Context, kind, key string) (Row, error)
	List(ctx context.Context, kind string) ([]Row, error)
	Read(ctx context.Context, kinds []string, keys []RowKey) ([]Row, error)
	Scan(ctx context.Context, kinds []string, keys []RowKey, tail string, fn func(Row) error) error
	Apply(ctx context.Context, ops []Op) error
	Insert(ctx context.Context, r Row) error
	Swap(ctx context.Context, old, new Row) error
}

// A RowKey names a row.
type RowKey struct {
	Kind string
	Key  string
}

// OpKind says what an [Op] does.
type OpKind uint8

const (
	// OpInsert stores Op.New, which must not exist yet.
	OpInsert OpKind = iota + 1
	// OpSwap replaces Op.Old, which must be stored exactly, by Op.New.
	OpSwap
)

// An Op is one step of [Backend.Apply].
type Op struct {
	Kind OpKind
	Old  Row // for OpSwap
	New  Row
}

// An OpError is the error of an [Backend.Apply] whose op number Index
// (from 0) found the database other than it expected. Err is [ErrExists]
// or [ErrConflict].
type OpError struct {
	Index int
	Kind  string
	Key   string
	Err   error
}

func (e *OpError) Error() string {
	return fmt.Sprintf("records: %s %q: %v", e.Kind, e.Key, e.Err)
}

func (e *OpError) Unwrap() error { return e.Err }

// A Locker is a [Backend] that can also serialise work across every
// process that shares its database, for callers whose read-decide-write
// sequences must not interleave (the custody daemon's approval path). Lock
// blocks until the caller holds the database's one lock, or ctx ends; the
// returned function releases it and must be called exactly once.
//
// The lock orders work; it does not make it safe. Every write still goes
// through [Backend.Apply]'s compare-and-swap, so a holder that lost the
// lock without knowing (a dropped connection) gets a conflict, never a
// lost update.
type Locker interface {
	Lock(ctx context.Context) (unlock func(), err error)
}
