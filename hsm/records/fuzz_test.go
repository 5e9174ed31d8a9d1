package records

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func TestMemory(t *testing.T) {
	runBackendSuite(t, func(t *testing.T) Backend { return NewMemory() })
}

// realRows returns the rows a Store writes for a few records: the seeds of
// the fuzz targets below are what a real database holds.
func realRows(tb testing.TB) []Row {
	tb.Helper()
	ctx := context.Background()
	m := NewMemory()
	auth, _ := NewSoftHMAC(vectorKey())
	s := New(m, auth)
	for _, k := range []string{"alice", "bob", "ünicøde"} {
		r, err := s.Create(ctx, "device", k, []byte(`{"id":"`+k+`","user":"`+k+`","state":"paired"}`))
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := s.Update(ctx, "device", k, r.Version, []byte(`{"id":"`+k+`","state":"revoked"}`)); err != nil {
			tb.Fatal(err)
		}
	}
	if _, err := s.Create(ctx, "wallet", "treasury", []byte(`{"name":"treasury","quorum":2}`)); err != nil {
		tb.Fatal(err)
	}
	rows, err := m.Read(ctx, []string{"device", "wallet", TreeKind("device"), TreeKind("wallet"), RootKind}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return rows
}

// FuzzManifest parses manifest bodies: it never panics, and what it
// accepts is the canonical encoding of what it returns (so one manifest has
// one encoding, and its MAC one meaning).
func FuzzManifest(f *testing.F) {
	for _, r := range realRows(f) {
		if strings.HasPrefix(r.Kind, ManifestKind) {
			f.Add(r.Body)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := ParseManifest(body)
		if err != nil {
			if m != nil {
				t.Fatal("error with a manifest")
			}
			return
		}
		again, err := m.Marshal()
		if err != nil || !bytes.Equal(again, body) {
			t.Fatalf("parsed %x, re-encoded %x (%v)", body, again, err)
		}
	})
}

// FuzzStoreRead has the Store read what a hostile database serves: the
// row of device "alice", its leaf manifest and the root, each either the
// real row, or one with a fuzzed body, version or MAC, or missing; the
// fuzzed rows can be authenticated (a record or root MACed by the record
// key, as if the HSM had been fooled into MACing them; a leaf listed by
// its parents under its new digest, up to a root so MACed), so the parsing
// behind the MACs and digests is reached.
// Get and List must never panic, and whatever Get returns must be a
// record whose MAC verifies and whose version the verified manifest lists.
func FuzzStoreRead(f *testing.F) {
	rows := realRows(f)
	find := func(kind, key string) Row {
		for _, r := range rows {
			if r.Kind == kind && r.Key == key {
				return r
			}
		}
		f.Fatalf("no %s %q", kind, key)
		return Row{}
	}
	rec, man, root := find("device", "alice"), find(TreeKind("device"), LeafPath("alice")[treeDepth]), find(RootKind, RootKey)
	f.Add(uint8(0), rec.Body, rec.Version, man.Body, man.Version, root.Body, root.Version)
	f.Add(uint8(0x3f), rec.Body, rec.Version, man.Body, man.Version, root.Body, root.Version)
	f.Add(uint8(0x15), []byte(`{"id":"alice"}`), uint64(1), man.Body, uint64(1), root.Body, uint64(2))
	auth, _ := NewSoftHMAC(vectorKey())
	f.Fuzz(func(t *testing.T, mode uint8, recBody []byte, recVersion uint64, manBody []byte, manVersion uint64, rootBody []byte, rootVersion uint64) {
		m := NewMemory()
		for _, r := range rows {
			m.Put(r)
		}
		// Bits 0-1: the record's row; 2-3: the manifest's; 4-5: the
		// root's. 0 real, 1 fuzzed and MACed, 2 fuzzed with its old MAC,
		// 3 missing.
		serve := func(bits uint8, real Row, body []byte, version uint64) {
			switch bits & 3 {
			case 1, 2:
				r := Row{Kind: real.Kind, Key: real.Key, Version: version, Body: body, MAC: real.MAC}
				if bits&3 == 1 {
					if r.Kind == man.Kind {
						relist(m, auth, r)
						return
					}
					in, err := MACInput(r.Kind, r.Key, r.Version, r.Body)
					if err != nil {
						return
					}
					r.MAC, _ = auth.MAC(in)
				}
				m.Put(r)
			case 3:
				m.Delete(real.Kind, real.Key)
			}
		}
		serve(mode, rec, recBody, recVersion)
		serve(mode>>2, man, manBody, manVersion)
		serve(mode>>4, root, rootBody, rootVersion)
		s := New(m, auth)
		ctx := context.Background()
		got, err := s.Get(ctx, "device", "alice")
		if err == nil {
			checkServed(t, m, auth, got)
		} else if !errors.Is(err, ErrIntegrity) && !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get: %v, want an integrity error or not found", err)
		}
		list, err := s.List(ctx, "device")
		if err != nil && list != nil {
			t.Fatal("List returned records and an error")
		}
		for _, r := range list {
			checkServed(t, m, auth, r)
		}
		s.Each(ctx, "device", func(r Record) error {
			checkServed(t, m, auth, r)
			return nil
		})
	})
}

// relist stores the leaf manifest row leaf of device "alice" and has
// its parents list its digest and version, up to a root MACed by auth.
func relist(m *Memory, auth Authenticator, leaf Row) {
	ctx := context.Background()
	m.Put(leaf)
	child, row := LeafPath("alice"), leaf
	for i := treeDepth - 1; i >= -1; i-- {
		kind, key, name := TreeKind("device"), "", child[i+1]
		if i < 0 {
			kind, key, name = RootKind, RootKey, "device"
		} else {
			key = child[i]
		}
		parent, err := m.Get(ctx, kind, key)
		if err != nil {
			return
		}
		pm, err := ParseManifest(parent.Body)
		if err != nil {
			return
		}
		d, err := Digest(row)
		if err != nil {
			return
		}
		pm.Entries[name] = Entry{Version: row.Version, Digest: d}
		if parent.Body, err = pm.Marshal(); err != nil {
			return
		}
		if i < 0 {
			in, _ := MACInput(parent.Kind, parent.Key, parent.Version, parent.Body)
			parent.MAC, _ = auth.MAC(in)
		}
		m.Put(parent)
		row = parent
	}
}

// checkServed checks a record the Store returned against the rows: its MAC
// verifies, the root's MAC verifies, and every manifest from the root to
// the record's leaf lists the next at its version and digest, and the leaf
// the record at its version.
func checkServed(t *testing.T, m *Memory, auth Authenticator, r Record) {
	t.Helper()
	get := func(kind, key string) Row {
		row, err := m.Get(context.Background(), kind, key)
		if err != nil {
			t.Fatalf("returned %s %q, but %s %q: %v", r.Kind, r.Key, kind, key, err)
		}
		return row
	}
	verified := func(kind, key string) Row {
		row := get(kind, key)
		in, err := MACInput(row.Kind, row.Key, row.Version, row.Body)
		if err != nil || auth.VerifyMAC(in, row.MAC) != nil {
			t.Fatalf("returned %s %q, but %s %q does not verify", r.Kind, r.Key, kind, key)
		}
		return row
	}
	row := verified(r.Kind, r.Key)
	if row.Version != r.Version || !bytes.Equal(row.Body, r.Body) {
		t.Fatalf("returned %+v, stored %+v", r, row)
	}
	parent, err := ParseManifest(verified(RootKind, RootKey).Body)
	if err != nil {
		t.Fatal(err)
	}
	for i, node := range LeafPath(r.Key) {
		name := node
		if i == 0 {
			name = r.Kind // the root lists kinds
		}
		nr := get(TreeKind(r.Kind), node)
		d, err := Digest(nr)
		if err != nil || parent.Entries[name].Version != nr.Version || !bytes.Equal(parent.Entries[name].Digest, d) {
			t.Fatalf("returned %s %q, but manifest %q is not the one its parent lists", r.Kind, r.Key, node)
		}
		if parent, err = ParseManifest(nr.Body); err != nil {
			t.Fatal(err)
		}
	}
	if parent.Entries[r.Key].Version != r.Version {
		t.Fatalf("returned %s %q at version %d, its leaf lists %v", r.Kind, r.Key, r.Version, parent.Entries[r.Key])
	}
}
