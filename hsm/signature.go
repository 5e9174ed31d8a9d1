package hsm

import (
	"errors"
	"fmt"
	"math/big"

	"github.com/btcsuite/btcd/btcec/v2"
	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// Signature is a signature made by the HSM.
type Signature struct {
	Algorithm Algorithm
	// R and S are the ECDSA scalars; nil for Ed25519. On secp256k1, S is
	// always in the lower half of the group order (BIP 62 "low S"), as
	// Bitcoin's script engine requires.
	R, S *big.Int

	raw []byte // r||s, 32 bytes each, for ECDSA; the 64-byte signature for Ed25519
}

// Bytes returns the fixed-size form: r||s (64 bytes) for ECDSA, the 64-byte
// signature for Ed25519.
func (s *Signature) Bytes() []byte { return append([]byte(nil), s.raw...) }

// DER returns an ECDSA signature as the ASN.1 DER SEQUENCE { r, s } that
// crypto/ecdsa.VerifyASN1, btcec's ParseDERSignature and Bitcoin scripts
// (with a sighash byte appended) take. Ed25519 signatures have no DER form.
func (s *Signature) DER() ([]byte, error) {
	if s.R == nil || s.S == nil {
		return nil, fmt.Errorf("hsm: %s signatures have no DER form; use Bytes", s.Algorithm)
	}
	var b cryptobyte.Builder
	b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(s.R)
		b.AddASN1BigInt(s.S)
	})
	return b.Bytes()
}

// newECDSASignature builds a Signature from the raw r||s that CKM_ECDSA
// returns, normalising S to low S on secp256k1.
func newECDSASignature(alg Algorithm, raw []byte) (*Signature, error) {
	if len(raw) != 64 {
		return nil, fmt.Errorf("hsm: %s signature from the HSM is %d bytes, want 64 (r||s)", alg, len(raw))
	}
	if alg == ECDSASecp256k1 {
		var s btcec.ModNScalar
		if overflow := s.SetByteSlice(raw[32:]); overflow {
			return nil, errors.New("hsm: secp256k1 signature from the HSM has S ≥ n")
		}
		if s.IsOverHalfOrder() {
			s.Negate()
			out := make([]byte, 64)
			copy(out, raw[:32])
			s.PutBytesUnchecked(out[32:])
			raw = out
		}
	}
	return &Signature{
		Algorithm: alg,
		R:         new(big.Int).SetBytes(raw[:32]),
		S:         new(big.Int).SetBytes(raw[32:]),
		raw:       raw,
	}, nil
}
