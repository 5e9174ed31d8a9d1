package emulator

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/btcsuite/btcd/btcec/v2"

	"github.com/opencustodynet/opencustody/protocol/pb"
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
// device and, in later protocol features, signs its approvals.
type Identity struct {
	Algorithm pb.Algorithm
	// private is the 32-byte private scalar (ECDSA) or seed (Ed25519).
	private []byte
	public  []byte
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

// identityFromPrivate rebuilds an identity from its stored private bytes.
func identityFromPrivate(alg pb.Algorithm, priv []byte) (*Identity, error) {
	id := &Identity{Algorithm: alg, private: append([]byte(nil), priv...)}
	switch alg {
	case pb.Algorithm_ALGORITHM_ED25519:
		if len(priv) != ed25519.SeedSize {
			return nil, fmt.Errorf("emulator: ed25519 seed is %d bytes, want %d", len(priv), ed25519.SeedSize)
		}
		id.public = ed25519.NewKeyFromSeed(priv).Public().(ed25519.PublicKey)
	case pb.Algorithm_ALGORITHM_ECDSA_P256:
		k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), priv)
		if err != nil {
			return nil, fmt.Errorf("emulator: p256 private key: %w", err)
		}
		u, err := k.PublicKey.Bytes() // 0x04 || X || Y
		if err != nil {
			return nil, fmt.Errorf("emulator: p256 public key: %w", err)
		}
		id.public = append([]byte{0x02 | u[64]&1}, u[1:33]...)
	case pb.Algorithm_ALGORITHM_ECDSA_SECP256K1:
		if len(priv) != 32 {
			return nil, fmt.Errorf("emulator: secp256k1 private key is %d bytes, want 32", len(priv))
		}
		var s btcec.ModNScalar
		if overflow := s.SetByteSlice(priv); overflow || s.IsZero() {
			return nil, fmt.Errorf("emulator: secp256k1 private key out of range")
		}
		k, _ := btcec.PrivKeyFromBytes(priv)
		id.public = k.PubKey().SerializeCompressed()
	default:
		return nil, fmt.Errorf("emulator: unsupported identity algorithm %v", alg)
	}
	return id, nil
}

// PublicKey returns the public key in the protocol's encoding: 32 bytes for
// Ed25519, the 33-byte compressed SEC1 point for ECDSA.
func (id *Identity) PublicKey() []byte { return append([]byte(nil), id.public...) }

// DeviceID is the stable device id: the first 8 bytes of SHA-256 of the
// public key, in hex.
func (id *Identity) DeviceID() string {
	h := sha256.Sum256(id.public)
	return hex.EncodeToString(h[:8])
}
