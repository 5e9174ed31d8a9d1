package signed

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"fmt"
	"io"

	"github.com/btcsuite/btcd/btcec/v2"
	btcecdsa "github.com/btcsuite/btcd/btcec/v2/ecdsa"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

// SoftwareKey is an identity key held in process memory. It exists for the
// emulator and for tests: a real device keeps its key in a secure element,
// and the custody core's keys live in the HSM.
type SoftwareKey struct {
	alg  pb.Algorithm
	pub  []byte
	sign func(digest []byte) ([]byte, error)
	raw  []byte
}

// GenerateSoftwareKey makes a new key of algorithm alg from rand
// (crypto/rand if nil).
func GenerateSoftwareKey(alg pb.Algorithm, rand io.Reader) (*SoftwareKey, error) {
	if rand == nil {
		rand = cryptorand.Reader
	}
	seed := make([]byte, 32)
	if _, err := io.ReadFull(rand, seed); err != nil {
		return nil, fmt.Errorf("signed: generate key: %w", err)
	}
	return SoftwareKeyFromBytes(alg, seed)
}

// SoftwareKeyFromBytes rebuilds a key from its 32-byte private encoding
// (the Ed25519 seed, or the ECDSA scalar), as returned by [SoftwareKey.Bytes].
func SoftwareKeyFromBytes(alg pb.Algorithm, raw []byte) (*SoftwareKey, error) {
	if len(raw) != 32 {
		return nil, fmt.Errorf("signed: private key is %d bytes, want 32", len(raw))
	}
	k := &SoftwareKey{alg: alg, raw: append([]byte(nil), raw...)}
	switch alg {
	case pb.Algorithm_ALGORITHM_ED25519:
		priv := ed25519.NewKeyFromSeed(raw)
		k.pub = priv.Public().(ed25519.PublicKey)
		k.sign = func(d []byte) ([]byte, error) { return ed25519.Sign(priv, d), nil }
	case pb.Algorithm_ALGORITHM_ECDSA_P256:
		priv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), raw)
		if err != nil {
			return nil, fmt.Errorf("signed: p-256 private key: %w", err)
		}
		if k.pub, err = CompressP256(&priv.PublicKey); err != nil {
			return nil, err
		}
		// crypto/ecdsa draws its own secure randomness (Go ≥ 1.26).
		k.sign = func(d []byte) ([]byte, error) { return ecdsa.SignASN1(nil, priv, d) }
	case pb.Algorithm_ALGORITHM_ECDSA_SECP256K1:
		priv, pub := btcec.PrivKeyFromBytes(raw)
		k.pub = pub.SerializeCompressed()
		// RFC 6979 deterministic nonces; Serialize gives low-S DER.
		k.sign = func(d []byte) ([]byte, error) { return btcecdsa.Sign(priv, d).Serialize(), nil }
	default:
		return nil, fmt.Errorf("%w: %v", ErrUnknownAlgorithm, alg)
	}
	return k, nil
}

// Algorithm implements [Signer].
func (k *SoftwareKey) Algorithm() pb.Algorithm { return k.alg }

// PublicKey implements [Signer].
func (k *SoftwareKey) PublicKey() []byte { return append([]byte(nil), k.pub...) }

// SignDigest implements [Signer].
func (k *SoftwareKey) SignDigest(digest []byte) ([]byte, error) {
	if len(digest) != DigestSize {
		return nil, fmt.Errorf("signed: digest is %d bytes, want %d", len(digest), DigestSize)
	}
	return k.sign(digest)
}

// Bytes returns the 32-byte private encoding, for the emulator's state file.
func (k *SoftwareKey) Bytes() []byte { return append([]byte(nil), k.raw...) }
