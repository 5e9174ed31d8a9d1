package records

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

// macCounter counts the MACs its authenticator makes.
type macCounter struct {
	Authenticator
	macs atomic.Int64
}

func (c *macCounter) MAC(data []byte) ([]byte, error) {
	c.macs.Add(1)
	return c.Authenticator.MAC(data)
}

// countingBackend counts the Reads and Applies a Store makes.
type countingBackend struct {
	Backend
	reads, applies atomic.Int64
}

func (b *countingBackend) Read(ctx context.Context, kinds []string, keys []RowKey) ([]Row, error) {
	b.reads.Add(1)
	return b.Backend.Read(ctx, kinds, keys)
}

func (b *countingBackend) Apply(ctx context.Context, ops []Op) error {
	b.applies.Add(1)
	return b.Backend.Apply(ctx, ops)
}

// TestWriteIsOneStep: a Write of records of several kinds, new and
// updated, stores them all in one Apply with one root, one MAC for each
// record and one for the root; each reads back, and Check finds every
// tree sound.
func TestWriteIsOneStep(t *testing.T) {
	ctx := context.Background()
	for name, newBackend := range map[string]func(t *testing.T) Backend{
		"memory": func(*testing.T) Backend { return NewMemory() },
		"sqlite": func(t *testing.T) Backend { return openTestSQLite(t, t.TempDir()) },
	} {
		t.Run(name, func(t *testing.T) {
			b := &countingBackend{Backend: newBackend(t)}
			soft, err := NewSoftHMAC(vectorKey())
			if err != nil {
				t.Fatal(err)
			}
			auth := &macCounter{Authenticator: soft}
			s := New(b, auth)
			dev, err := s.Create(ctx, "device", "d1", []byte(`{"counter":1}`))
			if err != nil {
				t.Fatal(err)
			}
			req, err := s.Create(ctx, "request", "r1", []byte(`{"answers":0}`))
			if err != nil {
				t.Fatal(err)
			}
			pinned := s.Pinned()
			applies, macs := b.applies.Load(), auth.macs.Load()
			got, err := s.Write(ctx,
				Change{Kind: "device", Key: "d1", Version: dev.Version, Body: []byte(`{"counter":2}`)},
				Change{Kind: "request", Key: "r1", Version: req.Version, Body: []byte(`{"answers":1}`)},
				Change{Kind: "spends", Key: "w1", Body: []byte(`{"spent":5}`)},
			)
			if err != nil {
				t.Fatal(err)
			}
			if n := b.applies.Load() - applies; n != 1 {
				t.Errorf("the write took %d Applies, want 1", n)
			}
			if n := auth.macs.Load() - macs; n != 4 {
				t.Errorf("the write made %d MACs, want 4 (three records and the root)", n)
			}
			if s.Pinned() != pinned+1 {
				t.Errorf("root version %d after the write, want %d", s.Pinned(), pinned+1)
			}
			want := []struct {
				kind, key, body string
				version         uint64
			}{{"device", "d1", `{"counter":2}`, 2}, {"request", "r1", `{"answers":1}`, 2}, {"spends", "w1", `{"spent":5}`, 1}}
			for i, w := range want {
				if got[i].Kind != w.kind || got[i].Key != w.key || got[i].Version != w.version || string(got[i].Body) != w.body {
					t.Errorf("Write returned %s %q v%d %s, want %s %q v%d %s", got[i].Kind, got[i].Key, got[i].Version, got[i].Body, w.kind, w.key, w.version, w.body)
				}
				// Read by a Store that has seen nothing.
				rec, err := New(b, soft).Get(ctx, w.kind, w.key)
				if err != nil {
					t.Fatal(err)
				}
				if rec.Version != w.version || string(rec.Body) != w.body {
					t.Errorf("Get %s %q: v%d %s, want v%d %s", w.kind, w.key, rec.Version, rec.Body, w.version, w.body)
				}
				if _, bad, err := s.Check(ctx, w.kind); err != nil || len(bad) > 0 {
					t.Errorf("Check %s: %v %v", w.kind, bad, err)
				}
			}
		})
	}
}

// TestWriteAllOrNothing: when one change of a Write fails its check,
// nothing of the Write is stored, and the error is that change's.
func TestWriteAllOrNothing(t *testing.T) {
	ctx := context.Background()
	s := testStore(t, NewMemory())
	dev, err := s.Create(ctx, "device", "d1", []byte(`{"counter":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, "request", "r1", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change Change
		want   error
	}{
		{"create over a record", Change{Kind: "request", Key: "r1", Body: []byte(`{}`)}, ErrExists},
		{"update at another version", Change{Kind: "request", Key: "r1", Version: 7, Body: []byte(`{}`)}, ErrConflict},
		{"update of no record", Change{Kind: "request", Key: "r2", Version: 1, Body: []byte(`{}`)}, ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pinned := s.Pinned()
			_, err := s.Write(ctx,
				Change{Kind: "device", Key: "d1", Version: dev.Version, Body: []byte(`{"counter":2}`)},
				Change{Kind: "audit", Key: "e1", Body: []byte(`{}`)},
				tc.change)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Write: %v, want %v", err, tc.want)
			}
			if got, err := s.Get(ctx, "device", "d1"); err != nil || got.Version != dev.Version {
				t.Errorf("device d1 after the failed write: v%d, %v; want v%d", got.Version, err, dev.Version)
			}
			if _, err := s.Get(ctx, "audit", "e1"); !errors.Is(err, ErrNotFound) {
				t.Errorf("audit e1 after the failed write: %v, want not found", err)
			}
			if s.Pinned() != pinned {
				t.Errorf("root moved from %d to %d", pinned, s.Pinned())
			}
		})
	}
	if _, err := s.Write(ctx); err == nil {
		t.Error("a Write of nothing succeeded")
	}
	_, err = s.Write(ctx, Change{Kind: "audit", Key: "e1", Body: []byte(`{}`)}, Change{Kind: "audit", Key: "e1", Body: []byte(`{}`)})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("twice")) {
		t.Errorf("a Write changing one record twice: %v, want an error saying so", err)
	}
}

// TestWriteBuildsOnWhatItWrote: a Store writing again builds on the rows
// it last wrote without reading them, and a Store whose rows another
// Store (another process) has since replaced finds out from the database
// and writes on the current ones, without a false conflict.
func TestWriteBuildsOnWhatItWrote(t *testing.T) {
	ctx := context.Background()
	b := &countingBackend{Backend: NewMemory()}
	s1, s2 := testStore(t, b), testStore(t, b)
	r, err := s1.Create(ctx, "request", "r1", []byte(`{"n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	reads := b.reads.Load()
	for i := range 20 {
		if r, err = s1.Update(ctx, "request", "r1", r.Version, []byte(`{"n":2}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := s1.Create(ctx, "audit", entryKey(i), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	// Every row these writes build on is one s1 wrote, or one that does
	// not exist yet (an audit leaf no manifest lists): none is read.
	if n := b.reads.Load() - reads; n != 0 {
		t.Errorf("40 writes read the database %d times, want 0", n)
	}
	// s2 writes r1 at the version s1 left; s1's next update names that
	// version, which s1 has not seen.
	got, err := s2.Get(ctx, "request", "r1")
	if err != nil {
		t.Fatal(err)
	}
	if got, err = s2.Update(ctx, "request", "r1", got.Version, []byte(`{"by":"s2"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s1.Update(ctx, "request", "r1", got.Version, []byte(`{"by":"s1"}`)); err != nil {
		t.Errorf("s1 updating the version s2 wrote: %v", err)
	}
	// And one naming the version s1 itself last wrote is a conflict.
	if _, err := s1.Update(ctx, "request", "r1", r.Version, []byte(`{}`)); !errors.Is(err, ErrConflict) {
		t.Errorf("s1 updating a version since replaced: %v, want a conflict", err)
	}
}

func entryKey(i int) string { return string(rune('a'+i%26)) + string(rune('a'+i/26)) }

// TestWriteNoticesTamperingAfterItsWrite: rows edited in the database
// after the Store wrote them are not built on: the write that would
// builds on what it remembered, the database refuses the swap, and the
// Store reads and verifies, reporting the edit.
func TestWriteNoticesTamperingAfterItsWrite(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, b Backend)
	}{
		{"record body edited", func(t *testing.T, b Backend) {
			row, err := b.Get(ctx, "request", "r1")
			if err != nil {
				t.Fatal(err)
			}
			edited := row
			edited.Body = []byte(`{"n":"forged"}`)
			if err := b.Swap(ctx, row, edited); err != nil {
				t.Fatal(err)
			}
		}},
		{"leaf rolled back", func(t *testing.T, b Backend) {
			leaf := LeafPath("r1")[treeDepth]
			row, err := b.Get(ctx, TreeKind("request"), leaf)
			if err != nil {
				t.Fatal(err)
			}
			old := row
			old.Version--
			if err := b.Swap(ctx, row, old); err != nil {
				t.Fatal(err)
			}
		}},
		{"root replaced by an older one", func(t *testing.T, b Backend) {
			row, err := b.Get(ctx, RootKind, RootKey)
			if err != nil {
				t.Fatal(err)
			}
			older := row
			older.Version = 1
			if err := b.Swap(ctx, row, older); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewMemory()
			s := testStore(t, b)
			r, err := s.Create(ctx, "request", "r1", []byte(`{"n":1}`))
			if err != nil {
				t.Fatal(err)
			}
			if r, err = s.Update(ctx, "request", "r1", r.Version, []byte(`{"n":2}`)); err != nil {
				t.Fatal(err)
			}
			tc.edit(t, b)
			_, err = s.Update(ctx, "request", "r1", r.Version, []byte(`{"n":3}`))
			if !errors.Is(err, ErrIntegrity) {
				t.Errorf("update after the edit: %v, want an integrity error", err)
			}
		})
	}
}
