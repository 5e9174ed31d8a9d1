package emulator

import (
	"fmt"
	"io"

	"github.com/btcsuite/btcd/btcec/v2"

	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// Algorithm names as used by --algorithm and in the state file.
const (
	AlgP256      = "p256"
	AlgEd25519   = "ed25519"
	AlgSecp256k1 = "secp256k1"
)

// ParseAlgorithm maps a name (p256, ed25519, secp256k1) to the protocol's
// algorithm.
func ParseAlgorithm(name string) (pb.Algorithm, error) {
	switch name {
	case AlgP256:
		return pb.Algorithm_ALGORITHM_ECDSA_P256, nil
	case AlgEd25519:
		return pb.Algorithm_ALGORITHM_ED25519, nil
	case AlgSecp256k1:
		return pb.Algorithm_ALGORITHM_ECDSA_SECP256K1, nil
	}
	return pb.Algorithm_ALGORITHM_UNSPECIFIED, fmt.Errorf("emulator: unknown algorithm %q (want p256, ed25519 or secp256k1)", name)
}

func algorithmName(a pb.Algorithm) string {
	switch a {
	case pb.Algorithm_ALGORITHM_ECDSA_P256:
		return AlgP256
	case pb.Algorithm_ALGORITHM_ED25519:
		return AlgEd25519
	case pb.Algorithm_ALGORITHM_ECDSA_SECP256K1:
		return AlgSecp256k1
	}
	return a.String()
}

// Identity is the device identity key: the long-term key that names the
// device, signs its channel credential and, in later protocol features,
// its approvals. The emulator keeps it in its state file; a real device
// keeps it in a secure element.
type Identity struct {
	Algorithm pb.Algorithm
	key       *signed.SoftwareKey
}

// newIdentity derives an identity key of algorithm alg from 32-byte
// secrets read from rand. The key is a pure function of rand's output, so
// a seeded rand gives the same key every time (the standard library's key
// generators ignore their random source since Go 1.26).
func newIdentity(alg pb.Algorithm, rand io.Reader) (*Identity, error) {
	for range 16 {
		secret := make([]byte, 32)
		if _, err := io.ReadFull(rand, secret); err != nil {
			return nil, fmt.Errorf("emulator: read randomness for the identity key: %w", err)
		}
		id, err := identityFromPrivate(alg, secret)
		if err == nil {
			return id, nil
		}
		// A scalar out of range for the curve: draw again.
	}
	return nil, fmt.Errorf("emulator: no valid %s key from the random source", algorithmName(alg))
}

// identityFromPrivate rebuilds an identity from its stored private bytes
// (the Ed25519 seed or the ECDSA scalar). A scalar outside [1, n-1] is
// refused rather than reduced, so that one stored value names one key.
func identityFromPrivate(alg pb.Algorithm, priv []byte) (*Identity, error) {
	if alg == pb.Algorithm_ALGORITHM_ECDSA_SECP256K1 && len(priv) == 32 {
		var s btcec.ModNScalar
		if overflow := s.SetByteSlice(priv); overflow || s.IsZero() {
			return nil, fmt.Errorf("emulator: secp256k1 private key out of range")
		}
	}
	k, err := signed.SoftwareKeyFromBytes(alg, priv)
	if err != nil {
		return nil, fmt.Errorf("emulator: identity key: %w", err)
	}
	return &Identity{Algorithm: alg, key: k}, nil
}

// PublicKey returns the public key in the protocol's encoding: 32 bytes for
// Ed25519, the 33-byte compressed SEC1 point for ECDSA.
func (id *Identity) PublicKey() []byte { return id.key.PublicKey() }

// DeviceID is the stable device id: the first 8 bytes of SHA-256 of the
// public key, in hex ([signed.DeviceID]).
func (id *Identity) DeviceID() string { return signed.DeviceID(id.key.PublicKey()) }

// Fingerprint is the identity key's fingerprint ([signed.Fingerprint]).
func (id *Identity) Fingerprint() string { return signed.Fingerprint(id.Algorithm, id.key.PublicKey()) }

// signer returns the key as a [signed.Signer].
func (id *Identity) signer() signed.Signer { return id.key }

// private returns the 32-byte private encoding for the state file.
func (id *Identity) private() []byte { return id.key.Bytes() }
