package records

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
)

// A Record is a record the [Store] has authenticated: one it read and whose
// MAC it checked against the kind and key it was asked for, or one it wrote
// and MACed itself.
type Record struct {
	// Kind names the record's type, such as "device" or "user".
	Kind string
	// Key is the record's id within its kind.
	Key string
	// Version is 1 when the record is created and grows by one on every
	// update.
	Version uint64
	// Body is the record's content, opaque to the store.
	Body []byte
	// MAC authenticates [MACInput](Kind, Key, Version, Body).
	MAC []byte
}

// A Row is a record as a [Backend] stores it. Nothing about a Row is trusted
// until the [Store] has verified its MAC.
type Row struct {
	Kind    string
	Key     string
	Version uint64
	Body    []byte
	MAC     []byte
}

// macDomain starts every [MACInput]: the domain, the format version and a NUL
// that ends the string.
const macDomain = "OpenCustody record v1\x00"

const (
	// MaxKindLen is the longest kind, in bytes.
	MaxKindLen = 64
	// MaxKeyLen is the longest key, in bytes.
	MaxKeyLen = 1024
	// MaxBodyLen is the largest body, in bytes. Records are small; the
	// bound keeps one record well inside what SQL backends and an HSM's
	// single-part MAC handle.
	MaxBodyLen = 16 << 20
	// MaxVersion is the highest version a record can reach. SQL integers
	// are signed, so versions stay within int64.
	MaxVersion = 1<<63 - 1
)

// MACInput returns the bytes a record's MAC covers:
//
//	"OpenCustody record v1\x00" || uint8-prefixed kind || uint16-prefixed key ||
//	uint64 version || uint32-prefixed body
//
// with integers big-endian. It fails only if a field is too long for its
// length prefix; it does not check the kind and key syntax the [Store]
// enforces.
func MACInput(kind, key string, version uint64, body []byte) ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, len(macDomain)+1+len(kind)+2+len(key)+8+4+len(body)))
	b.AddBytes([]byte(macDomain))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(kind)) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(key)) })
	b.AddUint64(version)
	b.AddUint32LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(body) })
	out, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("records: %s %q: encode mac input: %w", kind, key, err)
	}
	return out, nil
}

// Errors callers branch on. They are wrapped by errors that name the record.
var (
	// ErrNotFound: no record has that kind and key.
	ErrNotFound = errors.New("record not found")
	// ErrExists: Create found a record with that kind and key.
	ErrExists = errors.New("record already exists")
	// ErrConflict: Update's expected version is not the stored one, or the
	// record changed while Update ran. Read again and retry.
	ErrConflict = errors.New("version conflict")
	// ErrIntegrity: a stored record failed verification. See [IntegrityError].
	ErrIntegrity = errors.New("integrity check failed")
)

// An IntegrityError reports a stored record that failed verification: its MAC
// does not match, or the row is malformed. The record is not used.
// errors.Is(err, ErrIntegrity) is true for every IntegrityError.
type IntegrityError struct {
	Kind   string
	Key    string
	Reason string // what failed, such as "mac does not verify"
	Err    error  // the underlying error, if any (for example one wrapping ErrBadMAC)
}

func (e *IntegrityError) Error() string {
	return fmt.Sprintf("records: %s %q: integrity check failed: %s", e.Kind, e.Key, e.Reason)
}

// Is reports whether target is [ErrIntegrity].
func (e *IntegrityError) Is(target error) bool { return target == ErrIntegrity }

func (e *IntegrityError) Unwrap() error { return e.Err }

// checkKind reports whether kind is 1 to MaxKindLen bytes of [a-z0-9_-],
// starting with a letter.
func checkKind(kind string) error {
	if kind == "" || len(kind) > MaxKindLen {
		return fmt.Errorf("records: invalid kind %q: want 1 to %d bytes", kind, MaxKindLen)
	}
	for i := 0; i < len(kind); i++ {
		c := kind[i]
		switch {
		case 'a' <= c && c <= 'z':
		case i > 0 && ('0' <= c && c <= '9' || c == '_' || c == '-'):
		default:
			return fmt.Errorf("records: invalid kind %q: want lowercase letters, digits, '_' and '-', starting with a letter", kind)
		}
	}
	return nil
}

// checkKey reports whether key is 1 to MaxKeyLen bytes of UTF-8 without NUL.
func checkKey(kind, key string) error {
	switch {
	case key == "" || len(key) > MaxKeyLen:
		return fmt.Errorf("records: %s %q: invalid key: want 1 to %d bytes", kind, key, MaxKeyLen)
	case !utf8.ValidString(key):
		return fmt.Errorf("records: %s %q: invalid key: not valid UTF-8", kind, key)
	case strings.IndexByte(key, 0) >= 0:
		return fmt.Errorf("records: %s %q: invalid key: contains NUL", kind, key)
	}
	return nil
}

func checkBody(kind, key string, body []byte) error {
	if len(body) > MaxBodyLen {
		return fmt.Errorf("records: %s %q: body is %d bytes, more than %d", kind, key, len(body), MaxBodyLen)
	}
	return nil
}
