package records

import (
	"bytes"
	"context"
	"crypto/sha256"
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

	writeMu sync.Mutex // one write at a time; guards head
	head    headCache

	mu   sync.Mutex           // guards root and kept
	root uint64               // the highest root manifest version this Store has verified: its pin
	kept map[string]*keptList // what Latest last verified of each small kind
}

// A keptList is a kind's records as [Store.Latest] verified them, and the
// digest of the kind's top manifest they were verified under. A later
// root (verified by its MAC) that lists the same digest for the kind lists
// the same tree, so the same records: Latest returns them without reading
// the kind again. This is the Merkle tree's own property, kept in the
// daemon's memory, never in the database.
type keptList struct {
	digest []byte
	recs   []Record
}

// maxListedBytes bounds the bodies of a kind Latest keeps to answer from
// memory; a larger kind is read again each time.
const maxListedBytes = 4 << 20

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

// snapshot is what one [Backend.Read] returned for a kind: the root,
// verified, and the manifest rows of the kind's tree and its record rows,
// not yet verified.
type snapshot struct {
	rootRow *Row
	root    *Manifest
	nodes   map[string]*Row // the kind's manifest rows, by key
	rows    []Row           // rows of the kind
}

// read reads the root and either the record key with the manifests on its
// path (if key is not empty) or every record and manifest of kind, in one
// snapshot, and verifies the root.
func (s *Store) read(ctx context.Context, kind, key string) (*snapshot, error) {
	tk := TreeKind(kind)
	keys := []RowKey{rootRowKey}
	var kinds []string
	if key != "" {
		for _, node := range LeafPath(key) {
			keys = append(keys, RowKey{Kind: tk, Key: node})
		}
		keys = append(keys, RowKey{Kind: kind, Key: key})
	} else {
		kinds = []string{kind, tk}
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
	sn := &snapshot{nodes: map[string]*Row{}}
	for i := range rows {
		r := &rows[i]
		if head, err := sn.addHead(r, tk); err != nil {
			return nil, err
		} else if !head && r.Kind == kind && (key == "" || r.Key == key) {
			sn.rows = append(sn.rows, *r)
		}
		// Anything else was not asked for, and is not used.
	}
	if sn.root, err = s.verifyRoot(sn.rootRow, pin); err != nil {
		return nil, err
	}
	return sn, nil
}

// addHead takes r into sn if it is the root or a manifest row of tree kind
// tk, and reports whether it was; a second copy of either is refused.
func (sn *snapshot) addHead(r *Row, tk string) (bool, error) {
	switch {
	case r.Kind == RootKind && r.Key == RootKey:
		if sn.rootRow != nil {
			return true, &IntegrityError{Kind: RootKind, Key: RootKey, Reason: "listed more than once"}
		}
		sn.rootRow = r
	case r.Kind == tk:
		if sn.nodes[r.Key] != nil {
			return true, &IntegrityError{Kind: tk, Key: r.Key, Reason: "listed more than once"}
		}
		sn.nodes[r.Key] = r
	default:
		return false, nil
	}
	return true, nil
}

// verifyRoot checks the root manifest's MAC and that it is not older than
// pin, and raises the Store's pin to it.
func (s *Store) verifyRoot(row *Row, pin uint64) (*Manifest, error) {
	if row == nil {
		if pin > 0 {
			return nil, &IntegrityError{Kind: RootKind, Key: RootKey,
				Reason: fmt.Sprintf("missing, though version %d was seen (the database was emptied or replaced)", pin)}
		}
		return &Manifest{Kind: ManifestKind, Entries: map[string]Entry{}}, nil
	}
	rec, err := s.verify(RootKind, RootKey, *row)
	if err != nil {
		return nil, err
	}
	m, err := ParseManifest(rec.Body)
	if err == nil && m.Kind != ManifestKind {
		err = fmt.Errorf("it covers kind %s", m.Kind)
	}
	if err == nil {
		for k, e := range m.Entries {
			if checkKind(k) != nil || len(e.Digest) != sha256.Size {
				err = fmt.Errorf("it lists %q, which is no kind's top manifest", k)
				break
			}
		}
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

// listedKind is the Kind of the manifest at level of kind's tree.
func listedKind(kind string, level int) string {
	if level == treeDepth {
		return kind
	}
	return TreeKind(kind)
}

// childOf reports whether child is a node key one level below node.
func childOf(node, child string) bool {
	l := nodeLevel(node)
	if l < 0 || nodeLevel(child) != l+1 {
		return false
	}
	return node == TopNode || strings.HasPrefix(child, node+"/")
}

// verifyNode checks row (nil if none is stored) as the manifest node of
// kind's tree, against want, what its parent (named for errors) lists
// for it. A manifest's parent authenticates it by its digest; the root's
// MAC authenticates them all.
func (s *Store) verifyNode(kind, node string, row *Row, want Entry, parent string) (*Manifest, *IntegrityError) {
	tk := TreeKind(kind)
	level := nodeLevel(node)
	fail := func(format string, a ...any) *IntegrityError {
		return &IntegrityError{Kind: tk, Key: node, Reason: fmt.Sprintf(format, a...)}
	}
	if row == nil {
		if want.Version > 0 {
			return nil, fail("missing, though %s lists version %d (the kind's rows were removed?)", parent, want.Version)
		}
		return &Manifest{Kind: listedKind(kind, level), Entries: map[string]Entry{}}, nil
	}
	switch {
	case level < 0:
		return nil, fail("no manifest has this key")
	case row.Kind != tk || row.Key != node:
		return nil, fail("backend returned the row of %s %q", row.Kind, row.Key)
	case want.Version == 0:
		return nil, fail("version %d is not in %s (put back from an older database?)", row.Version, parent)
	case row.Version < want.Version:
		return nil, fail("rolled back to version %d; %s lists version %d", row.Version, parent, want.Version)
	case row.Version > want.Version:
		return nil, fail("version %d is newer than the %d %s lists (it was rolled back?)", row.Version, want.Version, parent)
	case len(row.MAC) != 0:
		return nil, fail("it carries a MAC; only the root manifest has one")
	}
	d, err := Digest(*row)
	if err != nil {
		return nil, fail("cannot encode row: %v", err)
	}
	if !bytes.Equal(d, want.Digest) {
		return nil, fail("altered: its digest is not the one %s lists", parent)
	}
	m, err := ParseManifest(row.Body)
	if err != nil {
		return nil, &IntegrityError{Kind: tk, Key: node, Reason: err.Error(), Err: err}
	}
	if m.Kind != listedKind(kind, level) {
		return nil, fail("it covers kind %s", m.Kind)
	}
	for k, e := range m.Entries {
		ok := childOf(node, k) && len(e.Digest) == sha256.Size
		if level == treeDepth {
			ok = LeafPath(k)[treeDepth] == node && len(e.Digest) == 0
		}
		if !ok {
			return nil, fail("it lists %q, which does not belong under it", k)
		}
	}
	return m, nil
}

// verifyPath verifies the manifests from kind's top node to the leaf of
// key, and returns them, top first.
func (s *Store) verifyPath(sn *snapshot, kind, key string) ([treeDepth + 1]*Manifest, error) {
	var mans [treeDepth + 1]*Manifest
	path := LeafPath(key)
	want, parent := sn.root.Entries[kind], "the root manifest"
	for i, node := range path {
		m, ie := s.verifyNode(kind, node, sn.nodes[node], want, parent)
		if ie != nil {
			return mans, ie
		}
		mans[i] = m
		if i < treeDepth {
			want = m.Entries[path[i+1]]
			parent = fmt.Sprintf("manifest %s %q", TreeKind(kind), node)
		}
	}
	return mans, nil
}

// verifyTree verifies every manifest of kind's tree from the root down
// and returns the version each leaf lists for each record, or the
// manifests that fail: those that do not verify against their parent, and
// manifest rows no verified manifest lists.
func (s *Store) verifyTree(sn *snapshot, kind string) (map[string]uint64, []*IntegrityError) {
	listed := map[string]uint64{}
	seen := map[string]bool{}
	var bad []*IntegrityError
	var walk func(node string, want Entry, parent string)
	walk = func(node string, want Entry, parent string) {
		seen[node] = true
		m, ie := s.verifyNode(kind, node, sn.nodes[node], want, parent)
		if ie != nil {
			bad = append(bad, ie)
			return
		}
		if nodeLevel(node) == treeDepth {
			for k, e := range m.Entries {
				listed[k] = e.Version
			}
			return
		}
		name := fmt.Sprintf("manifest %s %q", TreeKind(kind), node)
		for _, child := range slices.Sorted(maps.Keys(m.Entries)) {
			walk(child, m.Entries[child], name)
		}
	}
	walk(TopNode, sn.root.Entries[kind], "the root manifest")
	if len(bad) > 0 {
		return nil, bad
	}
	for _, node := range slices.Sorted(maps.Keys(sn.nodes)) {
		if !seen[node] {
			bad = append(bad, &IntegrityError{Kind: TreeKind(kind), Key: node,
				Reason: fmt.Sprintf("version %d is listed by no manifest (planted, or put back from an older database)", sn.nodes[node].Version)})
		}
	}
	if len(bad) > 0 {
		return nil, bad
	}
	return listed, nil
}

// checkRecord verifies row (nil if none is stored) as the record kind/key
// whose leaf manifest lists version want (0: not listed).
func (s *Store) checkRecord(kind, key string, row *Row, want uint64) (Record, error) {
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

// readRecord reads the record kind/key (nil if it has no row), the
// manifests on its path and the root in one snapshot, and verifies the
// root and the manifests, which it returns top first.
func (s *Store) readRecord(ctx context.Context, kind, key string) (*snapshot, [treeDepth + 1]*Manifest, *Row, error) {
	var mans [treeDepth + 1]*Manifest
	sn, err := s.read(ctx, kind, key)
	if err != nil {
		return nil, mans, nil, err
	}
	if mans, err = s.verifyPath(sn, kind, key); err != nil {
		return nil, mans, nil, err
	}
	row, err := sn.record(kind, key)
	if err != nil {
		return nil, mans, nil, err
	}
	return sn, mans, row, nil
}

// record returns the one row of sn for key, or nil.
func (sn *snapshot) record(kind, key string) (*Row, error) {
	var row *Row
	for i := range sn.rows {
		if row != nil {
			return nil, &IntegrityError{Kind: kind, Key: key, Reason: "listed more than once"}
		}
		row = &sn.rows[i]
	}
	return row, nil
}

// Get returns the record of kind and key. It returns an error wrapping
// [ErrNotFound] if there is none, and an [*IntegrityError] if the stored
// record fails verification: its MAC, or its version against the kind's
// manifest (rolled back, deleted, or not listed), or the manifest itself.
func (s *Store) Get(ctx context.Context, kind, key string) (Record, error) {
	if err := checkUserKindKey(kind, key); err != nil {
		return Record{}, err
	}
	_, path, row, err := s.readRecord(ctx, kind, key)
	if err != nil {
		return Record{}, err
	}
	return s.checkRecord(kind, key, row, path[treeDepth].Entries[key].Version)
}

// maxNamed is how many failing rows a List error names one by one.
const maxNamed = 16

// List returns every record of kind, sorted by key. If any row of kind fails
// verification, or a record the manifest lists is missing, List returns no
// records and an error naming the failing records (errors.Is(err,
// [ErrIntegrity]) is true, and errors.As finds an [*IntegrityError]).
func (s *Store) List(ctx context.Context, kind string) ([]Record, error) {
	if err := checkUserKind(kind); err != nil {
		return nil, err
	}
	recs, _, err := s.list(ctx, kind)
	return recs, err
}

// Latest returns the records List would return, from memory when it can:
// if the root, read and verified now, lists for kind the top manifest
// digest under which the last Latest of kind (up to 4 MiB) verified its
// records, the same tree lists the same records, and no row of the kind
// is read. Otherwise it is List. What it returns is as authentic and as
// current as what List returns; but a row edited behind the Store's back
// is not read, so not reported, until the kind changes. Use it where a
// kind is listed often (the approval path lists every device); List,
// [Store.Get] and [Store.Check] read the rows every time.
func (s *Store) Latest(ctx context.Context, kind string) ([]Record, error) {
	if err := checkUserKind(kind); err != nil {
		return nil, err
	}
	if recs, ok, err := s.fromKept(ctx, kind); ok || err != nil {
		return recs, err
	}
	recs, top, err := s.list(ctx, kind)
	if err != nil {
		return nil, err
	}
	s.keepListed(kind, top, recs)
	return recs, nil
}

// list is List, and also returns the digest of the kind's top manifest
// the records were verified under.
func (s *Store) list(ctx context.Context, kind string) ([]Record, []byte, error) {
	recs, bad, top, err := s.check(ctx, kind)
	if err != nil {
		return nil, nil, err
	}
	if len(bad) > 0 {
		errs := make([]error, 0, maxNamed+1)
		for _, e := range bad[:min(len(bad), maxNamed)] {
			errs = append(errs, e)
		}
		if len(bad) > maxNamed {
			errs = append(errs, fmt.Errorf("records: %s: %d more records fail verification", kind, len(bad)-maxNamed))
		}
		return nil, nil, errors.Join(errs...)
	}
	return recs, top, nil
}

// fromKept returns kind's records from the last Latest, if the root, read and
// verified now, still lists the top manifest they were verified under.
func (s *Store) fromKept(ctx context.Context, kind string) ([]Record, bool, error) {
	s.mu.Lock()
	l := s.kept[kind]
	s.mu.Unlock()
	if l == nil {
		return nil, false, nil
	}
	pin := s.Pinned()
	rows, err := s.backend.Read(ctx, nil, []RowKey{rootRowKey})
	if err != nil {
		return nil, false, err
	}
	sn := &snapshot{nodes: map[string]*Row{}}
	for i := range rows {
		if _, err := sn.addHead(&rows[i], TreeKind(kind)); err != nil {
			return nil, false, err
		}
	}
	root, err := s.verifyRoot(sn.rootRow, pin)
	if err != nil {
		return nil, false, err
	}
	if !bytes.Equal(root.Entries[kind].Digest, l.digest) {
		return nil, false, nil
	}
	out := make([]Record, len(l.recs))
	for i, r := range l.recs {
		r.Body, r.MAC = bytes.Clone(r.Body), bytes.Clone(r.MAC)
		out[i] = r
	}
	return out, true, nil
}

// keepListed remembers recs, verified under kind's top manifest digest
// top, if they are small enough (and forgets the kind's last list if not).
func (s *Store) keepListed(kind string, top []byte, recs []Record) {
	n := 0
	for _, r := range recs {
		n += len(r.Body) + len(r.MAC) + len(r.Key)
	}
	var l *keptList
	if len(top) > 0 && n <= maxListedBytes {
		l = &keptList{digest: top, recs: make([]Record, len(recs))}
		for i, r := range recs {
			r.Body, r.MAC = bytes.Clone(r.Body), bytes.Clone(r.MAC)
			l.recs[i] = r
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kept == nil {
		s.kept = map[string]*keptList{}
	}
	if l == nil {
		delete(s.kept, kind)
	} else {
		s.kept[kind] = l
	}
}

// Check reads every record of kind and returns those that verify, sorted
// by key, and an [*IntegrityError] for each that does not: a row whose MAC
// fails, a row at another version than the manifest lists, a row the
// manifest does not list, and a record the manifest lists that has no
// row. If the kind's manifest or the root manifest fails, that is the only
// problem returned, and if any manifest of the kind's tree fails, those
// manifests are. The error is for failures to read or verify at all
// (the database or the HSM is unreachable).
func (s *Store) Check(ctx context.Context, kind string) ([]Record, []*IntegrityError, error) {
	if err := checkUserKind(kind); err != nil {
		return nil, nil, err
	}
	recs, bad, _, err := s.check(ctx, kind)
	return recs, bad, err
}

// check is Check, and also returns the digest of the kind's top manifest
// the records were verified under.
func (s *Store) check(ctx context.Context, kind string) ([]Record, []*IntegrityError, []byte, error) {
	sn, err := s.read(ctx, kind, "")
	var ie *IntegrityError
	if errors.As(err, &ie) {
		return nil, []*IntegrityError{ie}, nil, nil
	}
	if err != nil {
		return nil, nil, nil, err
	}
	listed, badNodes := s.verifyTree(sn, kind)
	if len(badNodes) > 0 {
		return nil, badNodes, nil, nil
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
			rec, err = s.checkRecord(kind, row.Key, &rows[i], listed[row.Key])
		}
		switch {
		case err == nil:
			recs = append(recs, rec)
		case errors.As(err, &ie):
			bad = append(bad, ie)
		default:
			return nil, nil, nil, err // not verified, so not usable; not tampering either
		}
	}
	var missing []string
	for k := range listed {
		if !seen[k] {
			missing = append(missing, k)
		}
	}
	slices.Sort(missing)
	for _, k := range missing {
		_, err := s.checkRecord(kind, k, nil, listed[k])
		if errors.As(err, &ie) {
			bad = append(bad, ie)
		}
	}
	slices.SortStableFunc(bad, func(a, b *IntegrityError) int { return strings.Compare(a.Key, b.Key) })
	return recs, bad, sn.root.Entries[kind].Digest, nil
}

// Each passes fn every record of kind, one at a time and in no particular
// order, verified as [Store.List] verifies them, without holding the kind
// in memory: the root and the kind's manifests are read and verified
// first, then each record, all from one snapshot ([Backend.Scan]). A
// record is passed to fn only once it verified; at the first that does
// not, Each stops and returns an [*IntegrityError] naming it (fn may have
// seen other, genuine, records before). Once every row is read, a record
// the manifests list that had no row is reported the same way. An error
// from fn stops Each, which returns it.
func (s *Store) Each(ctx context.Context, kind string, fn func(Record) error) error {
	if err := checkUserKind(kind); err != nil {
		return err
	}
	tk := TreeKind(kind)
	pin := s.Pinned()
	sn := &snapshot{nodes: map[string]*Row{}}
	var listed map[string]uint64
	seen := map[string]bool{}
	// head verifies the root and the tree, once every row before the
	// kind's records was read.
	head := func() error {
		if listed != nil {
			return nil
		}
		var err error
		if sn.root, err = s.verifyRoot(sn.rootRow, pin); err != nil {
			return err
		}
		var bad []*IntegrityError
		if listed, bad = s.verifyTree(sn, kind); len(bad) > 0 {
			return bad[0]
		}
		return nil
	}
	err := s.backend.Scan(ctx, []string{tk}, []RowKey{rootRowKey}, kind, func(r Row) error {
		switch {
		case r.Kind == kind:
			if err := head(); err != nil {
				return err
			}
			if seen[r.Key] {
				return &IntegrityError{Kind: kind, Key: r.Key, Reason: "listed more than once"}
			}
			seen[r.Key] = true
			rec, err := s.checkRecord(kind, r.Key, &r, listed[r.Key])
			if err != nil {
				return err
			}
			if err := fn(rec); err != nil {
				return &fnErr{err}
			}
			return nil
		case listed != nil:
			return fmt.Errorf("records: %s: the backend returned %s %q among the records", kind, r.Kind, r.Key)
		}
		_, err := sn.addHead(&r, tk)
		return err
	})
	var fe *fnErr
	if errors.As(err, &fe) {
		err = fe.err
	}
	if err != nil {
		return err
	}
	if err := head(); err != nil {
		return err
	}
	var missing []string
	for k := range listed {
		if !seen[k] {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		_, err := s.checkRecord(kind, missing[0], nil, listed[missing[0]])
		return err
	}
	return nil
}

// fnErr carries what Each's fn returned through the backend's Scan.
type fnErr struct{ err error }

func (e *fnErr) Error() string { return e.err.Error() }

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
