package records

import (
	"context"
	"fmt"
	"testing"
)

func TestLeafPath(t *testing.T) {
	leaves := map[string]int{}
	for i := range 100_000 {
		p := LeafPath(fmt.Sprintf("request-%d", i))
		for level, node := range p {
			if got := nodeLevel(node); got != level {
				t.Fatalf("%q: level %d, want %d", node, got, level)
			}
			if level > 0 && !childOf(p[level-1], node) {
				t.Fatalf("%q is not a child of %q", node, p[level-1])
			}
		}
		leaves[p[treeDepth]]++
	}
	if len(leaves) != fanout*fanout {
		t.Errorf("100,000 keys reached %d leaves, want all %d", len(leaves), fanout*fanout)
	}
	for _, bad := range []string{"", "/", "//", "/4", "/40", "/3F", "/3g", "/00/", "/00/40", "/00/01/02", "00/01", "/0001"} {
		if bad == TopNode {
			continue
		}
		if l := nodeLevel(bad); l >= 0 {
			t.Errorf("nodeLevel(%q) = %d, want -1", bad, l)
		}
	}
	if childOf("/00", "/01/00") || childOf(TopNode, "/00/00") || !childOf(TopNode, "/3f") {
		t.Error("childOf is wrong")
	}
}

// sizingBackend counts the bytes each Apply writes.
type sizingBackend struct {
	Backend
	last int
}

func (b *sizingBackend) Apply(ctx context.Context, ops []Op) error {
	b.last = 0
	for _, o := range ops {
		b.last += len(o.New.Body) + len(o.New.MAC)
	}
	return b.Backend.Apply(ctx, ops)
}

// TestWriteCostDoesNotGrow: what a write stores (the record, the
// manifests on its path and the root) stays about the same size whether
// the kind holds one record or thousands.
func TestWriteCostDoesNotGrow(t *testing.T) {
	ctx := context.Background()
	b := &sizingBackend{Backend: NewMemory()}
	s := testStore(t, b)
	body := []byte(`{"state":"pending"}`)
	cost := func(n int) int {
		r, err := s.Create(ctx, "request", fmt.Sprintf("r%d", n), body)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Update(ctx, "request", r.Key, r.Version, body); err != nil {
			t.Fatal(err)
		}
		return b.last
	}
	first := cost(0)
	for i := 1; i < 5_000; i++ {
		if _, err := s.Create(ctx, "request", fmt.Sprintf("r%d", i), body); err != nil {
			t.Fatal(err)
		}
	}
	later := cost(5_000)
	// The top and the middle node fill up to 64 entries of about 50 bytes
	// each; nothing else grows.
	if later > 8<<10 {
		t.Errorf("a write with 5,000 records stores %d bytes (with one: %d), want under 8 KiB", later, first)
	}
	t.Logf("bytes stored by one write: %d with one record, %d with 5,000", first, later)
	if _, err := s.List(ctx, "request"); err != nil {
		t.Fatal(err)
	}
}

// readCounter counts the rows each Read returns.
type readCounter struct {
	Backend
	rows int
}

func (b *readCounter) Read(ctx context.Context, kinds []string, keys []RowKey) ([]Row, error) {
	rows, err := b.Backend.Read(ctx, kinds, keys)
	b.rows += len(rows)
	return rows, err
}

// TestLatest: Latest answers from the records the last listing
// verified while the root lists the same top manifest for the kind, and
// reads the kind again as soon as anyone, another Store included, writes
// to it.
func TestLatest(t *testing.T) {
	ctx := context.Background()
	b := &readCounter{Backend: NewMemory()}
	s, other := testStore(t, b), testStore(t, b)
	for i := range 50 {
		if _, err := s.Create(ctx, "device", fmt.Sprintf("d%d", i), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Create(ctx, "wallet", "w", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	first, err := s.Latest(ctx, "device")
	if err != nil || len(first) != 50 {
		t.Fatalf("Latest: %d records, %v", len(first), err)
	}
	first[0].Body[0] = 'x' // a caller's change to what it got is its own
	b.rows = 0
	again, err := s.Latest(ctx, "device")
	if err != nil || len(again) != 50 || string(again[0].Body) != "{}" {
		t.Fatalf("Latest again: %v, %v", again, err)
	}
	if b.rows != 1 {
		t.Errorf("Latest of an unchanged kind read %d rows, want the root alone", b.rows)
	}
	b.rows = 0
	if _, err := s.List(ctx, "device"); err != nil || b.rows < 50 {
		t.Errorf("List read %d rows (%v), want the whole kind, every time", b.rows, err)
	}
	// Another kind's write moves the root but not this kind's tree.
	if _, err := other.Update(ctx, "wallet", "w", 1, []byte(`{"quorum":2}`)); err != nil {
		t.Fatal(err)
	}
	b.rows = 0
	if _, err := s.Latest(ctx, "device"); err != nil || b.rows != 1 {
		t.Errorf("Latest after another kind's write read %d rows (%v), want the root alone", b.rows, err)
	}
	// Another store's write to the kind: read again, and see it.
	if _, err := other.Create(ctx, "device", "new", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	b.rows = 0
	got, err := s.Latest(ctx, "device")
	if err != nil || len(got) != 51 {
		t.Fatalf("Latest after another store's create: %d records, %v", len(got), err)
	}
	if b.rows < 51 {
		t.Errorf("Latest after a write to the kind read %d rows, want the whole kind", b.rows)
	}
}
