package records

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/crypto/cryptobyte"
)

// Record kinds the [Store] keeps for itself. Callers cannot read or write
// them through the Store.
const (
	// ManifestKind holds one manifest per record kind, keyed by the kind:
	// the latest version of every record of that kind.
	ManifestKind = "manifest"
	// RootKind holds the one root manifest, under [RootKey]: the latest
	// version of every manifest.
	RootKind = "manifest-root"
	RootKey  = "root"
)

const manifestDomain = "OpenCustody manifest v1\x00"

// A Manifest lists the latest version of every record of one kind. The
// manifest of kind K is stored as the record (ManifestKind, K); the root
// manifest, whose Kind is ManifestKind, as (RootKind, RootKey) and lists
// the version of each kind's manifest.
type Manifest struct {
	Kind     string
	Versions map[string]uint64 // key → latest version
}

// MaxManifestEntries bounds how many records one kind can hold, so that a
// manifest stays well inside [MaxBodyLen].
const MaxManifestEntries = 200_000

// Marshal encodes m:
//
//	"OpenCustody manifest v1\x00"  24 bytes
//	uint8  len(kind) || kind
//	uint32 count
//	count × (uint16 len(key) || key || uint64 version)   keys in increasing byte order
func (m *Manifest) Marshal() ([]byte, error) {
	keys := make([]string, 0, len(m.Versions))
	for k := range m.Versions {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b cryptobyte.Builder
	b.AddBytes([]byte(manifestDomain))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(m.Kind)) })
	b.AddUint32(uint32(len(keys)))
	for _, k := range keys {
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(k)) })
		b.AddUint64(m.Versions[k])
	}
	out, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("records: manifest of %s: %w", m.Kind, err)
	}
	return out, nil
}

var errBadManifest = errors.New("malformed manifest")

// ParseManifest decodes a manifest. It accepts only the encoding
// [Manifest.Marshal] makes: keys valid, strictly increasing, versions at
// least 1, nothing left over.
func ParseManifest(body []byte) (*Manifest, error) {
	s := cryptobyte.String(body)
	var domain []byte
	var kind cryptobyte.String
	var n uint32
	if !s.ReadBytes(&domain, len(manifestDomain)) || string(domain) != manifestDomain ||
		!s.ReadUint8LengthPrefixed(&kind) || !s.ReadUint32(&n) {
		return nil, errBadManifest
	}
	if err := checkKind(string(kind)); err != nil {
		return nil, fmt.Errorf("%w: %v", errBadManifest, err)
	}
	if n > MaxManifestEntries || int(n) > len(s)/11 {
		return nil, fmt.Errorf("%w: %d entries", errBadManifest, n)
	}
	m := &Manifest{Kind: string(kind), Versions: make(map[string]uint64, n)}
	prev := ""
	for i := range n {
		var key cryptobyte.String
		var v uint64
		if !s.ReadUint16LengthPrefixed(&key) || !s.ReadUint64(&v) {
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
		m.Versions[k] = v
		prev = k
	}
	if !s.Empty() {
		return nil, fmt.Errorf("%w: trailing bytes", errBadManifest)
	}
	return m, nil
}
