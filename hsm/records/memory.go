package records

import (
	"bytes"
	"context"
	"sync"
)

// Memory is a [Backend] that keeps rows in process memory, for tests and
// fuzzing: nothing survives the process. It keeps the Backend contract
// (one snapshot per Read, atomic Apply) with a mutex, and is safe for
// concurrent use.
type Memory struct {
	mu   sync.Mutex // guards rows
	rows map[RowKey]Row
}

// NewMemory returns an empty Memory backend.
func NewMemory() *Memory { return &Memory{rows: map[RowKey]Row{}} }

func cloneRow(r Row) Row {
	r.Body, r.MAC = bytes.Clone(nonNil(r.Body)), bytes.Clone(nonNil(r.MAC))
	return r
}

// Get implements [Backend].
func (m *Memory) Get(ctx context.Context, kind, key string) (Row, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.rows[RowKey{kind, key}]
	if !ok {
		return Row{}, ErrNotFound
	}
	return cloneRow(r), nil
}

// List implements [Backend].
func (m *Memory) List(ctx context.Context, kind string) ([]Row, error) {
	return m.Read(ctx, []string{kind}, nil)
}

// Read implements [Backend].
func (m *Memory) Read(ctx context.Context, kinds []string, keys []RowKey) ([]Row, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.readLocked(kinds, keys), nil
}

func (m *Memory) readLocked(kinds []string, keys []RowKey) []Row {
	var out []Row
	seen := map[RowKey]bool{}
	for k, r := range m.rows {
		for _, kind := range kinds {
			if k.Kind == kind {
				out, seen[k] = append(out, cloneRow(r)), true
			}
		}
	}
	for _, k := range keys {
		if r, ok := m.rows[k]; ok && !seen[k] {
			out, seen[k] = append(out, cloneRow(r)), true
		}
	}
	return out
}

// Scan implements [Backend]. It copies the rows under its lock and calls
// fn without it.
func (m *Memory) Scan(ctx context.Context, kinds []string, keys []RowKey, tail string, fn func(Row) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	head, rows := m.readLocked(kinds, keys), m.readLocked([]string{tail}, nil)
	m.mu.Unlock()
	for _, r := range append(head, rows...) {
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// Apply implements [Backend].
func (m *Memory) Apply(ctx context.Context, ops []Op) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, o := range ops {
		if err := checkOp(o); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, o := range ops {
		k := RowKey{o.New.Kind, o.New.Key}
		cur, ok := m.rows[k]
		switch {
		case o.Kind == OpInsert && ok:
			return &OpError{Index: i, Kind: k.Kind, Key: k.Key, Err: ErrExists}
		case o.Kind == OpSwap && (!ok || !rowsSame(cur, o.Old)):
			return &OpError{Index: i, Kind: k.Kind, Key: k.Key, Err: ErrConflict}
		}
	}
	for _, o := range ops {
		m.rows[RowKey{o.New.Kind, o.New.Key}] = cloneRow(o.New)
	}
	return nil
}

func rowsSame(a, b Row) bool {
	return a.Kind == b.Kind && a.Key == b.Key && a.Version == b.Version &&
		bytes.Equal(a.Body, b.Body) && bytes.Equal(a.MAC, b.MAC)
}

// Insert implements [Backend].
func (m *Memory) Insert(ctx context.Context, r Row) error {
	return m.Apply(ctx, []Op{{Kind: OpInsert, New: r}})
}

// Swap implements [Backend].
func (m *Memory) Swap(ctx context.Context, old, new Row) error {
	return m.Apply(ctx, []Op{{Kind: OpSwap, Old: old, New: new}})
}

// Put stores r as it is, replacing any row of its kind and key: what a
// hostile database does. It is for tests.
func (m *Memory) Put(r Row) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rows[RowKey{r.Kind, r.Key}] = cloneRow(r)
}

// Delete removes the row of kind and key, if any: what a hostile database
// does. It is for tests.
func (m *Memory) Delete(kind, key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.rows, RowKey{kind, key})
}
