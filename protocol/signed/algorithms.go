package signed

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/btcsuite/btcd/btcec/v2"
	btcecdsa "github.com/btcsuite/btcd/btcec/v2/ecdsa"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

// DigestSize is the size of every digest that is signed.
const DigestSize = sha256.Size

// Signer signs statement digests with an identity key. Implementations are
// HSM keys (package hsm) and device keys (package emulator).
type Signer interface {
	// Algorithm names the key's algorithm.
	Algorithm() pb.Algorithm
	// PublicKey returns the key's wire encoding (see the package doc).
	PublicKey() []byte
	// SignDigest signs a DigestSize-byte digest and returns the signature
	// in its wire encoding. It must refuse any other digest length.
	SignDigest(digest []byte) ([]byte, error)
}

var (
	// ErrBadSignature means a signature did not verify.
	ErrBadSignature = errors.New("signed: signature does not verify")
	// ErrBadPublicKey means a public key is not a valid encoding for its algorithm.
	ErrBadPublicKey = errors.New("signed: invalid public key")
	// ErrUnknownAlgorithm means the algorithm is not one of pb.Algorithm's.
	ErrUnknownAlgorithm = errors.New("signed: unknown algorithm")
)

// Verify checks sig over digest with the public key pub of algorithm alg.
// It returns nil only for a valid signature in its exact wire encoding.
func Verify(alg pb.Algorithm, pub, digest, sig []byte) error {
	if len(digest) != DigestSize {
		return fmt.Errorf("signed: digest is %d bytes, want %d", len(digest), DigestSize)
	}
	switch alg {
	case pb.Algorithm_ALGORITHM_ED25519:
		if len(pub) != ed25519.PublicKeySize {
			return fmt.Errorf("%w: ed25519 key is %d bytes", ErrBadPublicKey, len(pub))
		}
		if len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub, digest, sig) {
			return ErrBadSignature
		}
		return nil
	case pb.Algorithm_ALGORITHM_ECDSA_P256:
		k, err := ParseP256(pub)
		if err != nil {
			return err
		}
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return ErrBadSignature
		}
		return nil
	case pb.Algorithm_ALGORITHM_ECDSA_SECP256K1:
		k, err := btcec.ParsePubKey(pub)
		if err != nil || len(pub) != 33 {
			return fmt.Errorf("%w: secp256k1 key must be 33-byte compressed", ErrBadPublicKey)
		}
		s, err := btcecdsa.ParseDERSignature(sig)
		// Serialize yields canonical DER with low S: demanding the same
		// bytes rejects high-S and non-minimal encodings.
		if err != nil || !bytes.Equal(s.Serialize(), sig) || !s.Verify(digest, k) {
			return ErrBadSignature
		}
		return nil
	}
	return fmt.Errorf("%w: %v", ErrUnknownAlgorithm, alg)
}

// ParseP256 decodes a 33-byte compressed SEC1 P-256 public key.
func ParseP256(pub []byte) (*ecdsa.PublicKey, error) {
	if len(pub) != 33 {
		return nil, fmt.Errorf("%w: p-256 key must be 33-byte compressed, got %d bytes", ErrBadPublicKey, len(pub))
	}
	x, y := elliptic.UnmarshalCompressed(elliptic.P256(), pub)
	if x == nil {
		return nil, fmt.Errorf("%w: p-256 point not on curve", ErrBadPublicKey)
	}
	u := make([]byte, 65)
	u[0] = 4
	x.FillBytes(u[1:33])
	y.FillBytes(u[33:])
	k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), u)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadPublicKey, err)
	}
	return k, nil
}

// CompressP256 returns the 33-byte compressed SEC1 encoding of k.
func CompressP256(k *ecdsa.PublicKey) ([]byte, error) {
	u, err := k.Bytes()
	if err != nil || len(u) != 65 {
		return nil, fmt.Errorf("%w: not a p-256 key", ErrBadPublicKey)
	}
	return append([]byte{2 | u[64]&1}, u[1:33]...), nil
}

// FingerprintSize is the size of a key fingerprint in bytes.
const FingerprintSize = 16

// FingerprintBytes is the fingerprint of an identity key: the first 16
// bytes of SHA-256(algorithm byte || public key in its wire encoding).
func FingerprintBytes(alg pb.Algorithm, pub []byte) [FingerprintSize]byte {
	h := sha256.Sum256(append([]byte{byte(alg)}, pub...))
	return [FingerprintSize]byte(h[:FingerprintSize])
}

// Fingerprint is the stable short name of a key that people compare:
// [FingerprintBytes] in hex groups of four. Devices, the CLI and hsmd all
// show it in this form.
func Fingerprint(alg pb.Algorithm, pub []byte) string {
	return FormatFingerprint(FingerprintBytes(alg, pub))
}

// FormatFingerprint writes fingerprint bytes in hex groups of four.
func FormatFingerprint(f [FingerprintSize]byte) string {
	s := hex.EncodeToString(f[:])
	var b bytes.Buffer
	for i := 0; i < len(s); i += 4 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s[i : i+4])
	}
	return b.String()
}

// DeviceID is a device's stable id: the first 8 bytes of SHA-256 of its
// identity public key, in lowercase hex. Devices report it in Features; the
// core recomputes it from the key a device proved.
func DeviceID(identityKey []byte) string {
	h := sha256.Sum256(identityKey)
	return hex.EncodeToString(h[:8])
}
