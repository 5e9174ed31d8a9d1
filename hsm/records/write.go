package records

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// A Change is one record a [Store.Write] stores: a new record, at version
// 1, when Version is 0; otherwise a new body for the record stored at
// Version, which becomes Version+1.
type Change struct {
	Kind    string
	Key     string
	Version uint64
	Body    []byte
}

// maxAttempts bounds how often a write starts again because another
// writer moved a manifest on its path or the root between its read and
// its write.
const maxAttempts = 200

// Create stores a new record of kind and key with version 1 and returns it.
// It returns an error wrapping [ErrExists] if a record of that kind and key
// is already stored, or an [*IntegrityError] if the row already stored under
// that kind and key fails verification.
func (s *Store) Create(ctx context.Context, kind, key string, body []byte) (Record, error) {
	recs, err := s.Write(ctx, Change{Kind: kind, Key: key, Body: body})
	if err != nil {
		return Record{}, err
	}
	return recs[0], nil
}

// Update replaces the body of the record of kind and key, which must be at
// expectVersion, and returns the new record, at expectVersion+1. It verifies
// the stored record first and returns an [*IntegrityError] if it fails. It
// returns an error wrapping [ErrConflict] if the stored version is not
// expectVersion or the record changed while Update ran, and one wrapping
// [ErrNotFound] if there is no such record.
func (s *Store) Update(ctx context.Context, kind, key string, expectVersion uint64, body []byte) (Record, error) {
	if expectVersion == 0 {
		// No record is at version 0 (a Change at 0 creates one): say
		// what is stored instead.
		rec, err := s.Get(ctx, kind, key)
		if err != nil {
			return Record{}, err
		}
		return Record{}, fmt.Errorf("records: %s %q: %w: expected version 0, stored version is %d", kind, key, ErrConflict, rec.Version)
	}
	recs, err := s.Write(ctx, Change{Kind: kind, Key: key, Version: expectVersion, Body: body})
	if err != nil {
		return Record{}, err
	}
	return recs[0], nil
}

// Write stores changes in one atomic step, all or none, with one new root
// manifest (so one HSM MAC for the root, and one commit), and returns the
// new records in the order of changes. Each change is checked as
// [Store.Create] (Version 0) or [Store.Update] checks it, and fails the
// same way; the first that fails fails the write, and nothing is stored.
// A kind and key may appear once.
func (s *Store) Write(ctx context.Context, changes ...Change) ([]Record, error) {
	if len(changes) == 0 {
		return nil, errors.New("records: a write of no records")
	}
	seen := make(map[RowKey]bool, len(changes))
	for _, c := range changes {
		if err := checkUserKindKey(c.Kind, c.Key); err != nil {
			return nil, err
		}
		if err := checkBody(c.Kind, c.Key, c.Body); err != nil {
			return nil, err
		}
		k := RowKey{c.Kind, c.Key}
		if seen[k] {
			return nil, fmt.Errorf("records: %s %q: changed twice in one write", c.Kind, c.Key)
		}
		seen[k] = true
	}
	// One write at a time from this Store: writes from one process
	// would otherwise race for the root and all but one start again.
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	for range maxAttempts {
		v := s.head.view(changes)
		cached := v != nil
		if !cached {
			var err error
			if v, err = s.readView(ctx, changes); err != nil {
				return nil, err
			}
			s.head.read(v)
		}
		rows, err := s.decideAll(v, changes)
		if err != nil && cached {
			// Decided on what this Store last saw, which another
			// process may have changed: only the database can say.
			s.head.forget()
			continue
		}
		if err != nil {
			return nil, err
		}
		ops, next, err := s.build(v, changes, rows)
		if err != nil {
			return nil, err
		}
		err = s.backend.Apply(ctx, ops)
		var oe *OpError
		if errors.As(err, &oe) {
			// Another writer (another process) wrote first, or the
			// database is not what this Store last saw: read it again.
			s.head.forget()
			continue
		}
		if err != nil {
			// Whether it committed is unknown: read before the next write.
			s.head.forget()
			return nil, err
		}
		s.Pin(next.rootRow.Version)
		s.head.wrote(next)
		out := make([]Record, len(rows))
		for i, r := range rows {
			r.Body, r.MAC = bytes.Clone(r.Body), bytes.Clone(r.MAC)
			out[i] = Record(r)
		}
		return out, nil
	}
	c := changes[0]
	return nil, fmt.Errorf("records: %s %q: %w: the database changed under %d attempts to write", c.Kind, c.Key, ErrConflict, maxAttempts)
}

// decideAll makes the new row of each change.
func (s *Store) decideAll(v *view, changes []Change) ([]Row, error) {
	rows := make([]Row, len(changes))
	for i, c := range changes {
		var err error
		if rows[i], err = s.decide(c, v.recs[RowKey{c.Kind, c.Key}], v.listed(c.Kind, c.Key)); err != nil {
			return nil, err
		}
	}
	return rows, nil
}

// decide makes the new row of change c from the record's stored row cur
// (nil if none) and the version its leaf manifest lists (0 if none).
func (s *Store) decide(c Change, cur *Row, listed uint64) (Row, error) {
	if c.Version == 0 {
		if cur != nil || listed > 0 {
			// Say whether what is in the way is genuine or not.
			if _, err := s.checkRecord(c.Kind, c.Key, cur, listed); err != nil {
				return Row{}, err
			}
			return Row{}, fmt.Errorf("records: %s %q: %w", c.Kind, c.Key, ErrExists)
		}
		return s.seal(c.Kind, c.Key, 1, c.Body)
	}
	old, err := s.checkRecord(c.Kind, c.Key, cur, listed)
	if err != nil {
		return Row{}, err
	}
	if old.Version != c.Version {
		return Row{}, fmt.Errorf("records: %s %q: %w: expected version %d, stored version is %d",
			c.Kind, c.Key, ErrConflict, c.Version, old.Version)
	}
	if old.Version >= MaxVersion {
		return Row{}, fmt.Errorf("records: %s %q: version %d cannot grow", c.Kind, c.Key, old.Version)
	}
	return s.seal(c.Kind, c.Key, old.Version+1, c.Body)
}

// A view is what a write builds on, all verified: the root manifest and,
// for each record the write changes, the manifests on the record's path
// and the record's stored row.
type view struct {
	rootRow *Row // nil: none stored
	root    *Manifest
	nodes   map[RowKey]node
	recs    map[RowKey]*Row // nil: none stored
}

// A node is a manifest row (nil: none stored) and its verified manifest.
type node struct {
	row *Row
	m   *Manifest
}

// listed is the version the leaf of kind/key lists for it (0: none).
func (v *view) listed(kind, key string) uint64 {
	leaf := LeafPath(key)[treeDepth]
	return v.nodes[RowKey{TreeKind(kind), leaf}].m.Entries[key].Version
}

// readView reads the root, the manifests on each change's path and each
// changed record's row in one snapshot, and verifies the root and the
// manifests.
func (s *Store) readView(ctx context.Context, changes []Change) (*view, error) {
	keys := []RowKey{rootRowKey}
	seen := map[RowKey]bool{}
	for _, c := range changes {
		tk := TreeKind(c.Kind)
		for _, n := range LeafPath(c.Key) {
			if k := (RowKey{tk, n}); !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
		keys = append(keys, RowKey{c.Kind, c.Key})
	}
	pin := s.Pinned() // before the read: see read
	rows, err := s.backend.Read(ctx, nil, keys)
	if err != nil {
		return nil, err
	}
	// One snapshot per kind, sharing the root.
	sns := map[string]*snapshot{}
	for _, c := range changes {
		if sns[c.Kind] == nil {
			sns[c.Kind] = &snapshot{nodes: map[string]*Row{}}
		}
	}
	root := &snapshot{}
	recs := map[RowKey]*Row{}
	for i := range rows {
		r := &rows[i]
		switch {
		case r.Kind == RootKind:
			if _, err := root.addHead(r, ""); err != nil {
				return nil, err
			}
		case sns[r.Kind] != nil:
			k := RowKey{r.Kind, r.Key}
			if recs[k] != nil {
				return nil, &IntegrityError{Kind: r.Kind, Key: r.Key, Reason: "listed more than once"}
			}
			recs[k] = r
		default:
			for kind, sn := range sns {
				if r.Kind == TreeKind(kind) {
					if _, err := sn.addHead(r, r.Kind); err != nil {
						return nil, err
					}
				}
			}
			// Anything else was not asked for, and is not used.
		}
	}
	v := &view{rootRow: root.rootRow, nodes: map[RowKey]node{}, recs: map[RowKey]*Row{}}
	if v.root, err = s.verifyRoot(root.rootRow, pin); err != nil {
		return nil, err
	}
	for _, c := range changes {
		sn := sns[c.Kind]
		sn.rootRow, sn.root = v.rootRow, v.root
		mans, err := s.verifyPath(sn, c.Kind, c.Key)
		if err != nil {
			return nil, err
		}
		tk := TreeKind(c.Kind)
		for i, n := range LeafPath(c.Key) {
			v.nodes[RowKey{tk, n}] = node{row: sn.nodes[n], m: mans[i]}
		}
		k := RowKey{c.Kind, c.Key}
		v.recs[k] = recs[k]
	}
	return v, nil
}

// build makes the rows of a write: the changed records' rows, the
// manifests on their paths, each listing the new version (and, above the
// leaves, the digest) of what is below it, and the root listing each
// changed kind's new top. It returns the ops that store them and the view
// they make.
func (s *Store) build(v *view, changes []Change, rows []Row) ([]Op, *view, error) {
	next := &view{nodes: map[RowKey]node{}, recs: map[RowKey]*Row{}}
	ops := make([]Op, 0, len(rows)+len(changes)*(treeDepth+1)+1)
	// The manifests that change, copied from v, by level.
	var levels [treeDepth + 1]map[RowKey]*Manifest
	for i := range levels {
		levels[i] = map[RowKey]*Manifest{}
	}
	list := func(level int, k RowKey, child string, e Entry) {
		m := levels[level][k]
		if m == nil {
			old := v.nodes[k].m
			m = &Manifest{Kind: old.Kind, Entries: maps.Clone(old.Entries)}
			levels[level][k] = m
		}
		m.Entries[child] = e
	}
	for i, c := range changes {
		k := RowKey{c.Kind, c.Key}
		ops = append(ops, op(v.recs[k], rows[i]))
		next.recs[k] = &rows[i]
		leaf := RowKey{TreeKind(c.Kind), LeafPath(c.Key)[treeDepth]}
		if _, ok := v.nodes[leaf].m.Entries[c.Key]; !ok && len(v.nodes[leaf].m.Entries) >= MaxManifestEntries {
			return nil, nil, fmt.Errorf("records: %s %q: its manifest leaf lists %d records, the most a manifest lists", c.Kind, c.Key, MaxManifestEntries)
		}
		list(treeDepth, leaf, c.Key, Entry{Version: rows[i].Version})
	}
	root := &Manifest{Kind: ManifestKind, Entries: maps.Clone(v.root.Entries)}
	// From the leaves up: each manifest lists the new version and digest
	// of the one below it, and the root each kind's new top.
	for level := treeDepth; level >= 0; level-- {
		for _, k := range slices.SortedFunc(maps.Keys(levels[level]), cmpRowKey) {
			m := levels[level][k]
			old := v.nodes[k].row
			row, err := sealNode(k.Kind, k.Key, old, m)
			if err != nil {
				return nil, nil, err
			}
			ops = append(ops, op(old, row))
			next.nodes[k] = node{row: &row, m: m}
			d, err := Digest(row)
			if err != nil {
				return nil, nil, err
			}
			e := Entry{Version: row.Version, Digest: d}
			if level == 0 {
				root.Entries[kindOfTree(k.Kind)] = e
			} else {
				list(level-1, RowKey{k.Kind, parentNode(k.Key)}, k.Key, e)
			}
		}
	}
	body, err := root.Marshal()
	if err != nil {
		return nil, nil, err
	}
	version, err := nextVersion(RootKind, RootKey, v.rootRow)
	if err != nil {
		return nil, nil, err
	}
	rootRow, err := s.seal(RootKind, RootKey, version, body)
	if err != nil {
		return nil, nil, err
	}
	ops = append(ops, op(v.rootRow, rootRow))
	next.rootRow, next.root = &rootRow, root
	return ops, next, nil
}

func cmpRowKey(a, b RowKey) int {
	return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Key, b.Key))
}

// kindOfTree is the record kind whose manifests are of row kind tk.
func kindOfTree(tk string) string { return tk[len(ManifestKind)+1:] }

// parentNode is the key of the manifest node above node ("/ab/cd": "/ab").
func parentNode(node string) string {
	if i := bytes.LastIndexByte([]byte(node), '/'); i > 0 {
		return node[:i]
	}
	return TopNode
}

func op(old *Row, new Row) Op {
	if old == nil {
		return Op{Kind: OpInsert, New: new}
	}
	return Op{Kind: OpSwap, Old: *old, New: new}
}

// nextVersion is the version of the row that replaces old (nil: none).
func nextVersion(kind, key string, old *Row) (uint64, error) {
	if old == nil {
		return 1, nil
	}
	if old.Version >= MaxVersion {
		return 0, fmt.Errorf("records: %s %q: version %d cannot grow", kind, key, old.Version)
	}
	return old.Version + 1, nil
}

// sealNode builds the row of manifest node key of tree kind tk, replacing
// old. It carries no MAC: its parent lists its [Digest].
func sealNode(tk, key string, old *Row, m *Manifest) (Row, error) {
	body, err := m.Marshal()
	if err != nil {
		return Row{}, err
	}
	version, err := nextVersion(tk, key, old)
	if err != nil {
		return Row{}, err
	}
	if err := checkBody(tk, key, body); err != nil {
		return Row{}, err
	}
	return Row{Kind: tk, Key: key, Version: version, Body: body, MAC: []byte{}}, nil
}
