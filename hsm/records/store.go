package records

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// A Store reads and writes authenticated records through a [Backend]. It
// returns only records whose MAC verifies. Its only state is the set of
// rows already verified (see verifiedSet); it is safe for concurrent use.
type Store struct {
	backend  Backend
	auth     Authenticator
	verified verifiedSet
}

// New returns a Store over backend, authenticating records with auth. In
// production auth is the HSM record key.
func New(backend Backend, auth Authenticator) *Store {
	return &Store{backend: backend, auth: auth}
}

// Get returns the record of kind and key. It returns an error wrapping
// [ErrNotFound] if there is none, and an [*IntegrityError] if the stored
// record fails verification.
func (s *Store) Get(ctx context.Context, kind, key string) (Record, error) {
	if err := checkKindKey(kind, key); err != nil {
		return Record{}, err
	}
	row, err := s.backend.Get(ctx, kind, key)
	if errors.Is(err, ErrNotFound) {
		return Record{}, fmt.Errorf("records: %s %q: %w", kind, key, ErrNotFound)
	}
	if err != nil {
		return Record{}, err
	}
	return s.verify(kind, key, row)
}

// maxNamed is how many failing rows a List error names one by one.
const maxNamed = 16

// List returns every record of kind, sorted by key. If any row of kind fails
// verification, List returns no records and an error naming the failing rows
// (errors.Is(err, [ErrIntegrity]) is true, and errors.As finds an
// [*IntegrityError]).
func (s *Store) List(ctx context.Context, kind string) ([]Record, error) {
	if err := checkKind(kind); err != nil {
		return nil, err
	}
	rows, err := s.backend.List(ctx, kind)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(rows, func(a, b Row) int { return strings.Compare(a.Key, b.Key) })

	recs := make([]Record, 0, len(rows))
	var bad []error
	badCount := 0
	for i, row := range rows {
		var rec Record
		var err error
		if i > 0 && rows[i-1].Key == row.Key {
			err = &IntegrityError{Kind: kind, Key: row.Key, Reason: "listed more than once"}
		} else {
			rec, err = s.verify(kind, row.Key, row)
		}
		var ie *IntegrityError
		switch {
		case err == nil:
			recs = append(recs, rec)
		case errors.As(err, &ie):
			badCount++
			if len(bad) < maxNamed {
				bad = append(bad, err)
			}
		default:
			return nil, err // not verified, so not usable; not tampering either
		}
	}
	if badCount > 0 {
		if badCount > len(bad) {
			bad = append(bad, fmt.Errorf("records: %s: %d more records fail verification", kind, badCount-len(bad)))
		}
		return nil, errors.Join(bad...)
	}
	return recs, nil
}

// Create stores a new record of kind and key with version 1 and returns it.
// It returns an error wrapping [ErrExists] if a record of that kind and key
// is already stored, or an [*IntegrityError] if the row already stored under
// that kind and key fails verification.
func (s *Store) Create(ctx context.Context, kind, key string, body []byte) (Record, error) {
	if err := checkKindKey(kind, key); err != nil {
		return Record{}, err
	}
	row, err := s.seal(kind, key, 1, body)
	if err != nil {
		return Record{}, err
	}
	err = s.backend.Insert(ctx, row)
	if errors.Is(err, ErrExists) {
		// Say whether what is in the way is genuine or planted.
		existing, gerr := s.backend.Get(ctx, kind, key)
		if gerr == nil {
			_, gerr = s.verify(kind, key, existing)
		}
		var ie *IntegrityError
		if errors.As(gerr, &ie) {
			return Record{}, gerr
		}
		return Record{}, fmt.Errorf("records: %s %q: %w", kind, key, ErrExists)
	}
	if err != nil {
		return Record{}, err
	}
	return Record(row), nil
}

// Update replaces the body of the record of kind and key, which must be at
// expectVersion, and returns the new record, at expectVersion+1. It verifies
// the stored record first and returns an [*IntegrityError] if it fails. It
// returns an error wrapping [ErrConflict] if the stored version is not
// expectVersion or the record changed while Update ran, and one wrapping
// [ErrNotFound] if there is no such record.
func (s *Store) Update(ctx context.Context, kind, key string, expectVersion uint64, body []byte) (Record, error) {
	if err := checkKindKey(kind, key); err != nil {
		return Record{}, err
	}
	if err := checkBody(kind, key, body); err != nil {
		return Record{}, err
	}
	old, err := s.backend.Get(ctx, kind, key)
	if errors.Is(err, ErrNotFound) {
		return Record{}, fmt.Errorf("records: %s %q: %w", kind, key, ErrNotFound)
	}
	if err != nil {
		return Record{}, err
	}
	if _, err := s.verify(kind, key, old); err != nil {
		return Record{}, err
	}
	if old.Version != expectVersion {
		return Record{}, fmt.Errorf("records: %s %q: %w: expected version %d, stored version is %d",
			kind, key, ErrConflict, expectVersion, old.Version)
	}
	if old.Version >= MaxVersion {
		return Record{}, fmt.Errorf("records: %s %q: version %d cannot grow", kind, key, old.Version)
	}
	row, err := s.seal(kind, key, old.Version+1, body)
	if err != nil {
		return Record{}, err
	}
	err = s.backend.Swap(ctx, old, row)
	if errors.Is(err, ErrConflict) {
		return Record{}, fmt.Errorf("records: %s %q: %w: version %d changed during the update",
			kind, key, ErrConflict, old.Version)
	}
	if err != nil {
		return Record{}, err
	}
	return Record(row), nil
}

// seal builds the row for a new version and MACs it. It copies body, so
// that the bytes stored are the bytes authenticated.
func (s *Store) seal(kind, key string, version uint64, body []byte) (Row, error) {
	if err := checkBody(kind, key, body); err != nil {
		return Row{}, err
	}
	body = bytes.Clone(body)
	if body == nil {
		body = []byte{}
	}
	data, err := MACInput(kind, key, version, body)
	if err != nil {
		return Row{}, err
	}
	mac, err := s.auth.MAC(data)
	if err != nil {
		return Row{}, fmt.Errorf("records: %s %q: mac: %w", kind, key, err)
	}
	s.verified.add(data, mac)
	return Row{Kind: kind, Key: key, Version: version, Body: body, MAC: mac}, nil
}

// verify checks row's MAC as the record of kind and key: the MAC input is
// built from the kind and key the caller asked for, not from the row's
// fields, so a row served under another name fails.
func (s *Store) verify(kind, key string, row Row) (Record, error) {
	if row.Kind != kind || row.Key != key {
		return Record{}, &IntegrityError{Kind: kind, Key: key,
			Reason: fmt.Sprintf("backend returned the row of %s %q", row.Kind, row.Key)}
	}
	if len(row.Body) > MaxBodyLen {
		return Record{}, &IntegrityError{Kind: kind, Key: key,
			Reason: fmt.Sprintf("body is %d bytes, more than %d", len(row.Body), MaxBodyLen)}
	}
	data, err := MACInput(kind, key, row.Version, row.Body)
	if err != nil {
		return Record{}, &IntegrityError{Kind: kind, Key: key, Reason: "cannot encode row", Err: err}
	}
	if s.verified.has(data, row.MAC) {
		err = nil
	} else if err = s.auth.VerifyMAC(data, row.MAC); err == nil {
		s.verified.add(data, row.MAC)
	}
	if errors.Is(err, ErrBadMAC) {
		return Record{}, &IntegrityError{Kind: kind, Key: key, Reason: "mac does not verify", Err: err}
	}
	if err != nil {
		return Record{}, fmt.Errorf("records: %s %q: verify mac: %w", kind, key, err)
	}
	if row.Version == 0 || row.Version > MaxVersion {
		// Never MACed by a Store; an Authenticator that accepted it is broken.
		return Record{}, &IntegrityError{Kind: kind, Key: key,
			Reason: fmt.Sprintf("version %d out of range", row.Version)}
	}
	return Record(row), nil
}

func checkKindKey(kind, key string) error {
	if err := checkKind(kind); err != nil {
		return err
	}
	return checkKey(kind, key)
}
