package records

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// A Store reads and writes authenticated records through a [Backend]. It
// returns only records whose MAC verifies and whose version is the latest
// the kind's manifest lists. Its state is the set of rows already verified
// (see verifiedSet) and its pin; it is safe for concurrent use.
type Store struct {
	backend  Backend
	auth     Authenticator
	verified verifiedSet

	mu   sync.Mutex // guards root
	root uint64     // the highest root manifest version this Store has verified: its pin
}

// New returns a Store over backend, authenticating records with auth. In
// production auth is the HSM record key.
func New(backend Backend, auth Authenticator) *Store {
	return &Store{backend: backend, auth: auth}
}

// Pinned returns the highest root manifest version this Store has read
// or written. A root older than that is reported as rolled back.
func (s *Store) Pinned() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.root
}

// Pin raises the Store's pin to version (see [Store.Pinned]), for a caller
// that kept the version from an earlier run somewhere the database cannot
// reach. A lower version does nothing.
func (s *Store) Pin(version uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.root = max(s.root, version)
}

var rootRowKey = RowKey{Kind: RootKind, Key: RootKey}

func manifestRowKey(kind string) RowKey { return RowKey{Kind: ManifestKind, Key: kind} }

// snapshot is what one [Backend.Read] returned for a kind: the root and
// the kind's manifest, verified, and the kind's rows, not yet verified.
type snapshot struct {
	rootRow *Row
	root    *Manifest
	manRow  *Row
	man     *Manifest
	rows    []Row // rows of the kind
}

// read reads the root, kind's manifest and either the record key (if key is
// not empty) or every record of kind, in one snapshot, and verifies the
// root and the manifest.
func (s *Store) read(ctx context.Context, kind, key string) (*snapshot, error) {
	keys := []RowKey{rootRowKey, manifestRowKey(kind)}
	var kinds []string
	if key != "" {
		keys = append(keys, RowKey{Kind: kind, Key: key})
	} else {
		kinds = []string{kind}
	}
	// The pin is taken before the read: every version it counts was
	// committed before the read began, so the snapshot must hold it.
	// (One taken after could count a write that committed during the
	// read, and call a snapshot just before it a rollback.)
	pin := s.Pinned()
	rows, err := s.backend.Read(ctx, kinds, keys)
	if err != nil {
		return nil, err
	}
	sn := &snapshot{}
	for i := range rows {
		r := &rows[i]
		switch {
		case r.Kind == RootKind && r.Key == RootKey:
			if sn.rootRow != nil {
				return nil, &IntegrityError{Kind: RootKind, Key: RootKey, Reason: "listed more than once"}
			}
			sn.rootRow = r
		case r.Kind == ManifestKind && r.Key == kind:
			if sn.manRow != nil {
				return nil, &IntegrityError{Kind: ManifestKind, Key: kind, Reason: "listed more than once"}
			}
			sn.manRow = r
		case r.Kind == kind && (key == "" || r.Key == key):
			sn.rows = append(sn.rows, *r)
		}
		// Anything else was not asked for, and is not used.
	}
	if sn.root, err = s.verifyRoot(sn.rootRow, pin); err != nil {
		return nil, err
	}
	if sn.man, err = s.verifyManifest(kind, sn.manRow, sn.root); err != nil {
		return nil, err
	}
	return sn, nil
}

// verifyRoot checks the root manifest's MAC and that it is not older than
// pin, and raises the Store's pin to it.
func (s *Store) verifyRoot(row *Row, pin uint64) (*Manifest, error) {
	if row == nil {
		if pin > 0 {
			return nil, &IntegrityError{Kind: RootKind, Key: RootKey,
				Reason: fmt.Sprintf("missing, though version %d was seen (the database was emptied or replaced)", pin)}
		}
		return &Manifest{Kind: ManifestKind, Versions: map[string]uint64{}}, nil
	}
	rec, err := s.verify(RootKind, RootKey, *row)
	if err != nil {
		return nil, err
	}
	m, err := ParseManifest(rec.Body)
	if err == nil && m.Kind != ManifestKind {
		err = fmt.Errorf("it covers kind %s", m.Kind)
	}
	if err != nil {
		return nil, &IntegrityError{Kind: RootKind, Key: RootKey, Reason: err.Error(), Err: err}
	}
	if rec.Version < pin {
		return nil, &IntegrityError{Kind: RootKind, Key: RootKey,
			Reason: fmt.Sprintf("rolled back to version %d, though version %d was seen", rec.Version, pin)}
	}
	s.Pin(rec.Version)
	return m, nil
}

// verifyManifest checks kind's manifest against the root.
func (s *Store) verifyManifest(kind string, row *Row, root *Manifest) (*Manifest, error) {
	want := root.Versions[kind]
	if row == nil {
		if want > 0 {
			return nil, &IntegrityError{Kind: ManifestKind, Key: kind,
				Reason: fmt.Sprintf("missing, though the root manifest lists version %d (the kind's rows were removed?)", want)}
		}
		return &Manifest{Kind: kind, Versions: map[string]uint64{}}, nil
	}
	rec, err := s.verify(ManifestKind, kind, *row)
	if err != nil {
		return nil, err
	}
	m, err := ParseManifest(rec.Body)
	if err == nil && m.Kind != kind {
		err = fmt.Errorf("it covers kind %s", m.Kind)
	}
	if err != nil {
		return nil, &IntegrityError{Kind: ManifestKind, Key: kind, Reason: err.Error(), Err: err}
	}
	switch {
	case want == 0:
		return nil, &IntegrityError{Kind: ManifestKind, Key: kind,
			Reason: fmt.Sprintf("version %d is not in the root manifest (put back from an older database?)", rec.Version)}
	case rec.Version < want:
		return nil, &IntegrityError{Kind: ManifestKind, Key: kind,
			Reason: fmt.Sprintf("rolled back to version %d; the root manifest lists version %d", rec.Version, want)}
	case rec.Version > want:
		return nil, &IntegrityError{Kind: ManifestKind, Key: kind,
			Reason: fmt.Sprintf("version %d is newer than the root manifest's %d (the root was rolled back?)", rec.Version, want)}
	}
	return m, nil
}

// checkRecord verifies row (nil if none is stored) as the record kind/key
// of manifest man.
func (s *Store) checkRecord(kind, key string, row *Row, man *Manifest) (Record, error) {
	want := man.Versions[key]
	if row == nil {
		if want > 0 {
			return Record{}, &IntegrityError{Kind: kind, Key: key,
				Reason: fmt.Sprintf("deleted: the manifest lists version %d", want)}
		}
		return Record{}, fmt.Errorf("records: %s %q: %w", kind, key, ErrNotFound)
	}
	rec, err := s.verify(kind, key, *row)
	if err != nil {
		return Record{}, err
	}
	switch {
	case want == 0:
		return Record{}, &IntegrityError{Kind: kind, Key: key,
			Reason: fmt.Sprintf("version %d is not in the manifest (a row put back after it was removed, or planted from a copy)", rec.Version)}
	case rec.Version < want:
		return Record{}, &IntegrityError{Kind: kind, Key: key,
			Reason: fmt.Sprintf("rolled back to version %d; the manifest lists version %d", rec.Version, want)}
	case rec.Version > want:
		return Record{}, &IntegrityError{Kind: kind, Key: key,
			Reason: fmt.Sprintf("version %d is newer than the manifest's %d (the manifest was rolled back?)", rec.Version, want)}
	}
	return rec, nil
}

// Get returns the record of kind and key. It returns an error wrapping
// [ErrNotFound] if there is none, and an [*IntegrityError] if the stored
// record fails verification: its MAC, or its version against the kind's
// manifest (rolled back, deleted, or not listed), or the manifest itself.
func (s *Store) Get(ctx context.Context, kind, key string) (Record, error) {
	if err := checkUserKindKey(kind, key); err != nil {
		return Record{}, err
	}
	sn, err := s.read(ctx, kind, key)
	if err != nil {
		return Record{}, err
	}
	var row *Row
	for i := range sn.rows {
		if row != nil {
			return Record{}, &IntegrityError{Kind: kind, Key: key, Reason: "listed more than once"}
		}
		row = &sn.rows[i]
	}
	return s.checkRecord(kind, key, row, sn.man)
}

// maxNamed is how many failing rows a List error names one by one.
const maxNamed = 16

// List returns every record of kind, sorted by key. If any row of kind fails
// verification, or a record the manifest lists is missing, List returns no
// records and an error naming the failing records (errors.Is(err,
// [ErrIntegrity]) is true, and errors.As finds an [*IntegrityError]).
func (s *Store) List(ctx context.Context, kind string) ([]Record, error) {
	recs, bad, err := s.Check(ctx, kind)
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		errs := make([]error, 0, maxNamed+1)
		for _, e := range bad[:min(len(bad), maxNamed)] {
			errs = append(errs, e)
		}
		if len(bad) > maxNamed {
			errs = append(errs, fmt.Errorf("records: %s: %d more records fail verification", kind, len(bad)-maxNamed))
		}
		return nil, errors.Join(errs...)
	}
	return recs, nil
}

// Check reads every record of kind and returns those that verify, sorted
// by key, and an [*IntegrityError] for each that does not: a row whose MAC
// fails, a row at another version than the manifest lists, a row the
// manifest does not list, and a record the manifest lists that has no
// row. If the kind's manifest or the root manifest fails, that is the only
// problem returned. The error is for failures to read or verify at all
// (the database or the HSM is unreachable).
func (s *Store) Check(ctx context.Context, kind string) ([]Record, []*IntegrityError, error) {
	if err := checkUserKind(kind); err != nil {
		return nil, nil, err
	}
	sn, err := s.read(ctx, kind, "")
	var ie *IntegrityError
	if errors.As(err, &ie) {
		return nil, []*IntegrityError{ie}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	rows := sn.rows
	slices.SortFunc(rows, func(a, b Row) int { return strings.Compare(a.Key, b.Key) })
	recs := make([]Record, 0, len(rows))
	var bad []*IntegrityError
	seen := map[string]bool{}
	for i, row := range rows {
		var rec Record
		var err error
		if i > 0 && rows[i-1].Key == row.Key {
			err = &IntegrityError{Kind: kind, Key: row.Key, Reason: "listed more than once"}
		} else {
			seen[row.Key] = true
			rec, err = s.checkRecord(kind, row.Key, &rows[i], sn.man)
		}
		switch {
		case err == nil:
			recs = append(recs, rec)
		case errors.As(err, &ie):
			bad = append(bad, ie)
		default:
			return nil, nil, err // not verified, so not usable; not tampering either
		}
	}
	var missing []string
	for k := range sn.man.Versions {
		if !seen[k] {
			missing = append(missing, k)
		}
	}
	slices.Sort(missing)
	for _, k := range missing {
		_, err := s.checkRecord(kind, k, nil, sn.man)
		if errors.As(err, &ie) {
			bad = append(bad, ie)
		}
	}
	slices.SortStableFunc(bad, func(a, b *IntegrityError) int { return strings.Compare(a.Key, b.Key) })
	return recs, bad, nil
}

// maxAttempts bounds how often a write starts again because another
// writer moved the kind's manifest or the root between its read and its
// write.
const maxAttempts = 200

// write reads the record kind/key with its manifest and the root, lets
// decide make the new row from the current one (nil if none), and stores
// the row, the manifest and the root in one [Backend.Apply]. If any of the
// three moved in between, it starts again with a fresh read; decide then
// says whether the caller's change still applies.
func (s *Store) write(ctx context.Context, kind, key string, decide func(cur *Row, man *Manifest) (Row, error)) (Record, error) {
	for range maxAttempts {
		sn, err := s.read(ctx, kind, key)
		if err != nil {
			return Record{}, err
		}
		var cur *Row
		for i := range sn.rows {
			if cur != nil {
				return Record{}, &IntegrityError{Kind: kind, Key: key, Reason: "listed more than once"}
			}
			cur = &sn.rows[i]
		}
		row, err := decide(cur, sn.man)
		if err != nil {
			return Record{}, err
		}
		if _, ok := sn.man.Versions[key]; !ok && len(sn.man.Versions) >= MaxManifestEntries {
			return Record{}, fmt.Errorf("records: %s %q: the kind holds %d records, the most a manifest lists", kind, key, MaxManifestEntries)
		}
		ops := make([]Op, 0, 3)
		ops = append(ops, op(cur, row))
		man := &Manifest{Kind: kind, Versions: maps.Clone(sn.man.Versions)}
		man.Versions[key] = row.Version
		manRow, err := s.sealManifest(ManifestKind, kind, sn.manRow, man)
		if err != nil {
			return Record{}, err
		}
		ops = append(ops, op(sn.manRow, manRow))
		root := &Manifest{Kind: ManifestKind, Versions: maps.Clone(sn.root.Versions)}
		root.Versions[kind] = manRow.Version
		rootRow, err := s.sealManifest(RootKind, RootKey, sn.rootRow, root)
		if err != nil {
			return Record{}, err
		}
		ops = append(ops, op(sn.rootRow, rootRow))
		err = s.backend.Apply(ctx, ops)
		var oe *OpError
		if errors.As(err, &oe) {
			continue // someone else wrote first: read again
		}
		if err != nil {
			return Record{}, err
		}
		s.Pin(rootRow.Version)
		return Record(row), nil
	}
	return Record{}, fmt.Errorf("records: %s %q: %w: the database changed under %d attempts to write", kind, key, ErrConflict, maxAttempts)
}

func op(old *Row, new Row) Op {
	if old == nil {
		return Op{Kind: OpInsert, New: new}
	}
	return Op{Kind: OpSwap, Old: *old, New: new}
}

func (s *Store) sealManifest(kind, key string, old *Row, m *Manifest) (Row, error) {
	body, err := m.Marshal()
	if err != nil {
		return Row{}, err
	}
	version := uint64(1)
	if old != nil {
		if old.Version >= MaxVersion {
			return Row{}, fmt.Errorf("records: %s %q: version %d cannot grow", kind, key, old.Version)
		}
		version = old.Version + 1
	}
	return s.seal(kind, key, version, body)
}

// Create stores a new record of kind and key with version 1 and returns it.
// It returns an error wrapping [ErrExists] if a record of that kind and key
// is already stored, or an [*IntegrityError] if the row already stored under
// that kind and key fails verification.
func (s *Store) Create(ctx context.Context, kind, key string, body []byte) (Record, error) {
	if err := checkUserKindKey(kind, key); err != nil {
		return Record{}, err
	}
	if err := checkBody(kind, key, body); err != nil {
		return Record{}, err
	}
	return s.write(ctx, kind, key, func(cur *Row, man *Manifest) (Row, error) {
		if cur != nil || man.Versions[key] > 0 {
			// Say whether what is in the way is genuine or not.
			if _, err := s.checkRecord(kind, key, cur, man); err != nil {
				return Row{}, err
			}
			return Row{}, fmt.Errorf("records: %s %q: %w", kind, key, ErrExists)
		}
		return s.seal(kind, key, 1, body)
	})
}

// Update replaces the body of the record of kind and key, which must be at
// expectVersion, and returns the new record, at expectVersion+1. It verifies
// the stored record first and returns an [*IntegrityError] if it fails. It
// returns an error wrapping [ErrConflict] if the stored version is not
// expectVersion or the record changed while Update ran, and one wrapping
// [ErrNotFound] if there is no such record.
func (s *Store) Update(ctx context.Context, kind, key string, expectVersion uint64, body []byte) (Record, error) {
	if err := checkUserKindKey(kind, key); err != nil {
		return Record{}, err
	}
	if err := checkBody(kind, key, body); err != nil {
		return Record{}, err
	}
	return s.write(ctx, kind, key, func(cur *Row, man *Manifest) (Row, error) {
		old, err := s.checkRecord(kind, key, cur, man)
		if err != nil {
			return Row{}, err
		}
		if old.Version != expectVersion {
			return Row{}, fmt.Errorf("records: %s %q: %w: expected version %d, stored version is %d",
				kind, key, ErrConflict, expectVersion, old.Version)
		}
		if old.Version >= MaxVersion {
			return Row{}, fmt.Errorf("records: %s %q: version %d cannot grow", kind, key, old.Version)
		}
		return s.seal(kind, key, old.Version+1, body)
	})
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

// checkUserKind refuses a malformed kind and the kinds the Store keeps
// for itself.
func checkUserKind(kind string) error {
	if err := checkKind(kind); err != nil {
		return err
	}
	if kind == ManifestKind || kind == RootKind {
		return fmt.Errorf("records: kind %q is the store's own", kind)
	}
	return nil
}

func checkUserKindKey(kind, key string) error {
	if err := checkUserKind(kind); err != nil {
		return err
	}
	return checkKey(kind, key)
}
