package records

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/crypto/cryptobyte"
)

// Record kinds the [Store] keeps for itself. Callers cannot read or write
// them through the Store.
const (
	// ManifestKind names the manifests. The manifest tree of record kind K
	// is stored under the row kind ManifestKind + "." + K (see
	// [TreeKind]), which no caller's kind can be; the root manifest's Kind
	// is ManifestKind.
	ManifestKind = "manifest"
	// RootKind holds the one root manifest, under [RootKey]: the version
	// and digest of every kind's top manifest. It is the only manifest the
	// HSM MACs.
	RootKind = "manifest-root"
	RootKey  = "root"
)

// The manifest tree of one kind has three levels: the top node (key
// [TopNode]) lists up to 64 middle nodes, each of which lists up to 64
// leaves, each of which lists the latest version of the records whose
// key hashes to it (see [LeafPath]). A write rewrites one leaf, one middle
// node, the top and the root; a leaf lists a few records until a kind
// holds tens of thousands, and a few thousand at ten million. A scan of
// a kind reads at most 4,160 manifests besides its records.
const (
	// TopNode is the key of a kind's top manifest.
	TopNode = "/"
	// treeDepth is how many bytes of SHA-256(key) choose a record's leaf;
	// fanout is how many children a node has: each byte's low six bits
	// choose one.
	treeDepth = 2
	fanout    = 64
)

// TreeKind returns the row kind under which the manifests of kind are
// stored.
func TreeKind(kind string) string { return ManifestKind + "." + kind }

// LeafPath returns the keys of the manifests that lead from a kind's top
// node to the leaf listing key: TopNode, "/ab", "/ab/cd", where ab and cd
// are the low six bits of the first two bytes of SHA-256(key), in hex
// ("00" to "3f").
func LeafPath(key string) [treeDepth + 1]string {
	h := sha256.Sum256([]byte(key))
	var p [treeDepth + 1]string
	p[0] = TopNode
	node := ""
	for i := range treeDepth {
		node += "/" + hex.EncodeToString([]byte{h[i] % fanout})
		p[i+1] = node
	}
	return p
}

// nodeLevel returns how deep a node key is (0 for TopNode, treeDepth for
// a leaf), or -1 if key names no node.
func nodeLevel(key string) int {
	if key == TopNode {
		return 0
	}
	if key == "" {
		return -1
	}
	level := 0
	for rest := key; rest != ""; level++ {
		if len(rest) < 3 || rest[0] != '/' || !isLowerHex(rest[1]) || !isLowerHex(rest[2]) || level == treeDepth {
			return -1
		}
		if b, _ := hex.DecodeString(rest[1:3]); b[0] >= fanout {
			return -1
		}
		rest = rest[3:]
	}
	return level
}

func isLowerHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }

const manifestDomain = "OpenCustody manifest v2\x00"

// An Entry is what a manifest says of one row it lists: its latest
// version and, for a manifest row, its [Digest]. Records are
// authenticated by their own MACs, so a leaf's entries carry no digest.
type Entry struct {
	Version uint64
	Digest  []byte // empty, or sha256.Size bytes
}

// A Manifest lists the rows of one level of a kind's manifest tree, or,
// as the root, every kind's top node. Kind is the row kind of what it
// lists: the record kind for a leaf, the [TreeKind] for an inner node,
// [ManifestKind] for the root.
type Manifest struct {
	Kind    string
	Entries map[string]Entry
}

// MaxManifestEntries bounds how many rows one manifest lists, so that it
// stays well inside [MaxBodyLen]. With 4,096 leaves a kind, that is some
// 800 million records.
const MaxManifestEntries = 200_000

// Digest returns the SHA-256 of a manifest row's [MACInput]: the value
// its parent lists for it. The manifests below the root are authenticated
// by these digests, back to the root's MAC.
func Digest(row Row) ([]byte, error) {
	in, err := MACInput(row.Kind, row.Key, row.Version, row.Body)
	if err != nil {
		return nil, err
	}
	d := sha256.Sum256(in)
	return d[:], nil
}

// Marshal encodes m:
//
//	"OpenCustody manifest v2\x00"  24 bytes
//	uint8  len(kind) || kind
//	uint32 count
//	count × (uint16 len(key) || key || uint64 version || uint8 len(digest) || digest)
//
// with keys in increasing byte order and every digest empty or 32 bytes.
func (m *Manifest) Marshal() ([]byte, error) {
	keys := make([]string, 0, len(m.Entries))
	for k := range m.Entries {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b cryptobyte.Builder
	b.AddBytes([]byte(manifestDomain))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(m.Kind)) })
	b.AddUint32(uint32(len(keys)))
	for _, k := range keys {
		e := m.Entries[k]
		if len(e.Digest) != 0 && len(e.Digest) != sha256.Size {
			return nil, fmt.Errorf("records: manifest of %s: %q has a %d-byte digest", m.Kind, k, len(e.Digest))
		}
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(k)) })
		b.AddUint64(e.Version)
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.Digest) })
	}
	out, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("records: manifest of %s: %w", m.Kind, err)
	}
	return out, nil
}

var errBadManifest = errors.New("malformed manifest")

// checkListedKind reports whether kind is one a manifest can list: a
// record kind, or the [TreeKind] of one.
func checkListedKind(kind string) error {
	if k, ok := strings.CutPrefix(kind, ManifestKind+"."); ok {
		kind = k
	}
	return checkKind(kind)
}

// ParseManifest decodes a manifest. It accepts only the encoding
// [Manifest.Marshal] makes: keys valid, strictly increasing, versions at
// least 1, digests empty or 32 bytes, nothing left over.
func ParseManifest(body []byte) (*Manifest, error) {
	s := cryptobyte.String(body)
	var domain []byte
	var kind cryptobyte.String
	var n uint32
	if !s.ReadBytes(&domain, len(manifestDomain)) || string(domain) != manifestDomain ||
		!s.ReadUint8LengthPrefixed(&kind) || !s.ReadUint32(&n) {
		return nil, errBadManifest
	}
	if err := checkListedKind(string(kind)); err != nil {
		return nil, fmt.Errorf("%w: %v", errBadManifest, err)
	}
	if n > MaxManifestEntries || int(n) > len(s)/12 {
		return nil, fmt.Errorf("%w: %d entries", errBadManifest, n)
	}
	m := &Manifest{Kind: string(kind), Entries: make(map[string]Entry, n)}
	prev := ""
	for i := range n {
		var key, digest cryptobyte.String
		var v uint64
		if !s.ReadUint16LengthPrefixed(&key) || !s.ReadUint64(&v) || !s.ReadUint8LengthPrefixed(&digest) {
			return nil, errBadManifest
		}
		k := string(key)
		if err := checkKey(m.Kind, k); err != nil {
			return nil, fmt.Errorf("%w: %v", errBadManifest, err)
		}
		if i > 0 && strings.Compare(prev, k) >= 0 {
			return nil, fmt.Errorf("%w: keys out of order", errBadManifest)
		}
		if v == 0 || v > MaxVersion {
			return nil, fmt.Errorf("%w: %q at version %d", errBadManifest, k, v)
		}
		if len(digest) != 0 && len(digest) != sha256.Size {
			return nil, fmt.Errorf("%w: %q has a %d-byte digest", errBadManifest, k, len(digest))
		}
		e := Entry{Version: v}
		if len(digest) > 0 {
			e.Digest = []byte(digest)
		}
		m.Entries[k] = e
		prev = k
	}
	if !s.Empty() {
		return nil, fmt.Errorf("%w: trailing bytes", errBadManifest)
	}
	return m, nil
}
