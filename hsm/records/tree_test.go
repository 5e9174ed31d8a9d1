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
