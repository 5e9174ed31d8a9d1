package records

import "bytes"

// headCache is what a [Store] last wrote (or read to write): the root
// manifest, manifest nodes and records, each verified or made by the
// Store, so that the next write can build on them without reading them
// again. It is never trusted to be current: every row a write builds on
// goes into [Backend.Apply] as the Old of a swap, which succeeds only if
// the database still holds exactly that row. If another process wrote
// meanwhile, or someone edited the database, the swap fails, the cache
// is forgotten, and the write starts again from a full, verified read.
// Store.writeMu guards it.
type headCache struct {
	rootRow *Row
	root    *Manifest
	nodes   map[RowKey]cachedNode
	recs    map[RowKey]*Row
	// What the kept rows take in memory (estimated: see nodeCost), against
	// maxHeadNodeBytes and maxHeadRecordBytes.
	nodeBytes, recBytes int
}

type cachedNode struct {
	node
	digest []byte
	cost   int
}

// Bounds on what a headCache keeps, in memory; past them it forgets rows
// at random. The tops and middle nodes every write goes through, and
// some thousands of leaves, fit: with 10,000 requests, hsmd's heap grows
// by a few MiB (make bench's scale figures), and a write whose leaf was
// forgotten reads it.
const (
	maxHeadNodeBytes   = 1 << 20
	maxHeadRecordBytes = 256 << 10
)

// nodeCost estimates the memory a kept manifest takes: its row, and each
// entry of its decoded map (the key, an Entry, the digest, the map's own
// overhead).
func nodeCost(n node) int { return len(n.row.Body) + len(n.row.Key) + 128*len(n.m.Entries) }

// recCost estimates the memory a kept record takes.
func recCost(r *Row) int { return len(r.Body) + len(r.MAC) + len(r.Key) + 64 }

// view returns what a write of changes builds on, if the cache holds all
// of it, and nil if not.
func (h *headCache) view(changes []Change) *view {
	if h.root == nil {
		return nil
	}
	v := &view{rootRow: h.rootRow, root: h.root, nodes: map[RowKey]node{}, recs: map[RowKey]*Row{}}
	for _, c := range changes {
		tk := TreeKind(c.Kind)
		path := LeafPath(c.Key)
		want := h.root.Entries[c.Kind]
		for level, n := range path {
			k := RowKey{tk, n}
			if want.Version == 0 {
				// Listed by nothing above: none stored (or, if one was
				// planted, the insert finds it and the write reads).
				v.nodes[k] = node{m: &Manifest{Kind: listedKind(c.Kind, level), Entries: map[string]Entry{}}}
				continue
			}
			cn, ok := h.nodes[k]
			if !ok || cn.row.Version != want.Version || !bytes.Equal(cn.digest, want.Digest) {
				return nil
			}
			v.nodes[k] = cn.node
			if level < treeDepth {
				want = cn.m.Entries[path[level+1]]
			}
		}
		k := RowKey{c.Kind, c.Key}
		if listed := v.listed(c.Kind, c.Key); listed > 0 {
			r, ok := h.recs[k]
			if !ok || r.Version != listed {
				return nil
			}
			v.recs[k] = r
		}
	}
	return v
}

// read takes in the root and manifests of a view just read and verified.
// Under another root than the one cached, what was cached may be stale,
// and is forgotten.
func (h *headCache) read(v *view) {
	if v.rootRow == nil || h.rootRow == nil || !rowsSame(*h.rootRow, *v.rootRow) {
		h.forget()
	}
	h.rootRow, h.root = v.rootRow, v.root
	for k, n := range v.nodes {
		if n.row != nil {
			h.addNode(k, n)
		}
	}
}

// wrote takes in what a write stored.
func (h *headCache) wrote(v *view) {
	h.rootRow, h.root = v.rootRow, v.root
	for k, n := range v.nodes {
		h.addNode(k, n)
	}
	for k, r := range v.recs {
		if old, ok := h.recs[k]; ok {
			h.recBytes -= recCost(old)
			delete(h.recs, k)
		}
		for victim, vr := range h.recs {
			if h.recBytes+recCost(r) <= maxHeadRecordBytes {
				break
			}
			h.recBytes -= recCost(vr)
			delete(h.recs, victim)
		}
		if h.recs == nil {
			h.recs = map[RowKey]*Row{}
		}
		h.recs[k] = r
		h.recBytes += recCost(r)
	}
}

func (h *headCache) addNode(k RowKey, n node) {
	d, err := Digest(*n.row)
	if err != nil {
		return
	}
	if old, ok := h.nodes[k]; ok {
		h.nodeBytes -= old.cost
		delete(h.nodes, k)
	}
	cost := nodeCost(n)
	for victim, vn := range h.nodes {
		if h.nodeBytes+cost <= maxHeadNodeBytes {
			break
		}
		h.nodeBytes -= vn.cost
		delete(h.nodes, victim)
	}
	if h.nodes == nil {
		h.nodes = map[RowKey]cachedNode{}
	}
	h.nodes[k] = cachedNode{node: n, digest: d, cost: cost}
	h.nodeBytes += cost
}

// forget empties the cache: the next write reads.
func (h *headCache) forget() { *h = headCache{} }
