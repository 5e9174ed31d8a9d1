package hsm

import "sync/atomic"

// Operations counts the cryptographic operations a store has asked its
// token for since it was opened: what `make bench` divides by the token's
// own rates to find the HSM-bound ceiling of a workload, and what an
// operator compares with the HSM's rated capacity.
type Operations struct {
	// Sign counts signatures by the signing key's algorithm.
	Sign map[Algorithm]uint64
	// MAC and VerifyMAC count HMAC-SHA256 computations and checks.
	MAC, VerifyMAC uint64
}

// Sub returns the operations in o that are not in before: the work done
// between two readings.
func (o Operations) Sub(before Operations) Operations {
	d := Operations{Sign: map[Algorithm]uint64{}, MAC: o.MAC - before.MAC, VerifyMAC: o.VerifyMAC - before.VerifyMAC}
	for alg, n := range o.Sign {
		if n -= before.Sign[alg]; n > 0 {
			d.Sign[alg] = n
		}
	}
	return d
}

// opCounts is the store's running count, updated without a lock.
type opCounts struct {
	sign           [len(signAlgorithms)]atomic.Uint64
	mac, verifyMAC atomic.Uint64
}

// signAlgorithms are the algorithms a store signs with, in the order of
// opCounts.sign.
var signAlgorithms = [...]Algorithm{ECDSASecp256k1, ECDSAP256, Ed25519}

func (c *opCounts) signed(alg Algorithm) {
	for i, a := range signAlgorithms {
		if a == alg {
			c.sign[i].Add(1)
			return
		}
	}
}

// Operations returns the operations the store has completed since it was
// opened.
func (s *PKCS11Store) Operations() Operations {
	o := Operations{Sign: map[Algorithm]uint64{}, MAC: s.ops.mac.Load(), VerifyMAC: s.ops.verifyMAC.Load()}
	for i, alg := range signAlgorithms {
		if n := s.ops.sign[i].Load(); n > 0 {
			o.Sign[alg] = n
		}
	}
	return o
}
