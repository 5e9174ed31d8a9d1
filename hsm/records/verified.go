package records

import (
	"crypto/sha256"
	"sync"
)

// maxVerified bounds the memory of a [Store]'s verified set: about 100
// bytes an entry, so some 20 MB at most. When full it starts again, empty.
const maxVerified = 200_000

// verifiedSet remembers the rows whose MAC the authenticator has already
// checked (or made), by the SHA-256 of the MAC input and the MAC. A row
// read again byte for byte is accepted without asking the HSM again: its
// MAC input and MAC are exactly those the HSM accepted. A row changed in
// any byte, its MAC included, misses the set and is verified by the HSM.
//
// This keeps scans cheap (a daemon lists every request to find the prompts
// a device has yet to answer, and every device to address a new request's
// prompts) without trusting the database: the set lives in the core's
// memory, never in the backend. It changes nothing about what is accepted,
// only how often the HSM is asked; a rollback to an older genuine version
// is accepted by the MAC with or without it.
type verifiedSet struct {
	mu   sync.Mutex
	seen map[[sha256.Size]byte]struct{}
}

func verifiedKey(data, mac []byte) [sha256.Size]byte {
	h := sha256.New()
	var n [8]byte
	for i, l := 0, uint64(len(data)); i < 8; i++ {
		n[i] = byte(l >> (8 * i))
	}
	h.Write(n[:]) // the length separates the MAC input from the MAC
	h.Write(data)
	h.Write(mac)
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

func (v *verifiedSet) has(data, mac []byte) bool {
	k := verifiedKey(data, mac)
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.seen[k]
	return ok
}

func (v *verifiedSet) add(data, mac []byte) {
	k := verifiedKey(data, mac)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.seen == nil || len(v.seen) >= maxVerified {
		v.seen = make(map[[sha256.Size]byte]struct{})
	}
	v.seen[k] = struct{}{}
}
