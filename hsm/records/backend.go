package records

import "context"

// A Backend stores rows. It does no cryptography and is not trusted: the
// [Store] verifies everything it returns. Implementations must be safe for
// concurrent use, including by several processes sharing one database.
//
// Get returns the row stored under kind and key, or an error wrapping
// [ErrNotFound].
//
// List returns every row of kind, in any order.
//
// Insert stores r if no row has r's kind and key, and otherwise returns an
// error wrapping [ErrExists] and changes nothing.
//
// Swap replaces old with new (which has the same kind and key) in one atomic
// step, if and only if the stored row is still exactly old: same version,
// same body bytes, same MAC bytes. Otherwise it returns an error wrapping
// [ErrConflict] and changes nothing. Two concurrent Swaps from the same old
// row must never both succeed.
//
// A backend that reads a row it cannot represent as a [Row] (a column of the
// wrong type, a negative version) returns an [*IntegrityError] naming it.
// Other errors are returned to the Store's callers as they are, so they should
// read "records: ...".
type Backend interface {
	Get(ctx context.Context, kind, key string) (Row, error)
	List(ctx context.Context, kind string) ([]Row, error)
	Insert(ctx context.Context, r Row) error
	Swap(ctx context.Context, old, new Row) error
}
