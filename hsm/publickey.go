package hsm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"fmt"

	"github.com/btcsuite/btcd/btcec/v2"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// PublicKey is the public half of a key pair held in the HSM.
type PublicKey struct {
	Algorithm Algorithm
	// Key is the key in the form Go's verifiers take:
	//
	//	ECDSAP256       *ecdsa.PublicKey (crypto/ecdsa)
	//	Ed25519         ed25519.PublicKey (crypto/ed25519)
	//	ECDSASecp256k1  *btcec.PublicKey (github.com/btcsuite/btcd/btcec/v2;
	//	                its ToECDSA method gives an *ecdsa.PublicKey)
	Key crypto.PublicKey

	point []byte // SEC1 uncompressed point for ECDSA, 32 bytes for Ed25519
}

// Bytes returns the key's usual encoding: the 33-byte compressed point for
// secp256k1 (what Bitcoin scripts and PSBTs use), the 65-byte uncompressed
// SEC1 point for P-256, and the 32-byte key for Ed25519.
func (p *PublicKey) Bytes() []byte {
	if k, ok := p.Key.(*btcec.PublicKey); ok {
		return k.SerializeCompressed()
	}
	return append([]byte(nil), p.point...)
}

// OIDs for SubjectPublicKeyInfo.
var (
	oidECPublicKey = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidSecp256k1   = asn1.ObjectIdentifier{1, 3, 132, 0, 10}
)

// SPKI returns the key's DER-encoded X.509 SubjectPublicKeyInfo (RFC 5280;
// RFC 5480 for ECDSA with the uncompressed point, RFC 8410 for Ed25519).
func (p *PublicKey) SPKI() ([]byte, error) {
	switch p.Algorithm {
	case ECDSAP256, ECDHP256, Ed25519:
		return x509.MarshalPKIXPublicKey(p.Key)
	case ECDSASecp256k1:
		// crypto/x509 does not know secp256k1; the structure is the same
		// as P-256's with the curve's OID.
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidECPublicKey)
				b.AddASN1ObjectIdentifier(oidSecp256k1)
			})
			b.AddASN1BitString(p.point)
		})
		return b.Bytes()
	}
	return nil, fmt.Errorf("hsm: no SubjectPublicKeyInfo for algorithm %q", p.Algorithm)
}

// Protocol returns the key as the device protocol names and encodes it
// (package signed): the algorithm, and the 33-byte compressed point for
// ECDSA or the 32-byte key for Ed25519.
func (p *PublicKey) Protocol() (pb.Algorithm, []byte, error) {
	switch k := p.Key.(type) {
	case *ecdsa.PublicKey:
		b, err := signed.CompressP256(k)
		return pb.Algorithm_ALGORITHM_ECDSA_P256, b, err
	case ed25519.PublicKey:
		return pb.Algorithm_ALGORITHM_ED25519, append([]byte(nil), k...), nil
	case *btcec.PublicKey:
		return pb.Algorithm_ALGORITHM_ECDSA_SECP256K1, k.SerializeCompressed(), nil
	}
	return 0, nil, fmt.Errorf("hsm: algorithm %q has no protocol encoding", p.Algorithm)
}

// Fingerprint returns the key's fingerprint as the device protocol defines
// it ([signed.Fingerprint]): the HSM identity fingerprint that approval
// devices compute and show at pairing, and that operators compare.
func (p *PublicKey) Fingerprint() (Fingerprint, error) {
	alg, b, err := p.Protocol()
	if err != nil {
		return Fingerprint{}, err
	}
	return Fingerprint(signed.FingerprintBytes(alg, b)), nil
}

// Fingerprint is a key fingerprint ([signed.FingerprintBytes]).
type Fingerprint [signed.FingerprintSize]byte

// String writes the fingerprint for people to compare, as devices show it.
func (f Fingerprint) String() string { return signed.FormatFingerprint(f) }

// Hex returns the fingerprint as hex digits with no spaces.
func (f Fingerprint) Hex() string { return hex.EncodeToString(f[:]) }

// The DER encodings of the curves' OIDs, as CKA_EC_PARAMS holds them.
var (
	paramsSecp256k1 = []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a}
	paramsP256      = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	paramsEd25519   = []byte{0x06, 0x03, 0x2b, 0x65, 0x70}
	// RFC 8410 allows the curve's printable name in place of the OID.
	paramsEd25519Name = []byte{0x13, 0x0c, 'e', 'd', 'w', 'a', 'r', 'd', 's', '2', '5', '5', '1', '9'}
)

// parsePublicKey builds a PublicKey from CKA_EC_POINT.
func parsePublicKey(alg Algorithm, ecPoint []byte) (*PublicKey, error) {
	want := 65
	if alg == Ed25519 {
		want = ed25519.PublicKeySize
	}
	point := ecPoint
	if len(point) != want {
		// The standard form: a DER OCTET STRING around the point. Some
		// modules return the bare point; its length tells them apart.
		point = unwrapOctetString(ecPoint)
	}
	p := &PublicKey{Algorithm: alg, point: point}
	var err error
	switch alg {
	case ECDSAP256, ECDHP256:
		p.Key, err = ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	case ECDSASecp256k1:
		if len(point) != 65 || point[0] != 4 {
			return nil, fmt.Errorf("hsm: secp256k1 public key is not a 65-byte uncompressed point (%d bytes)", len(point))
		}
		p.Key, err = btcec.ParsePubKey(point)
	case Ed25519:
		if len(point) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("hsm: Ed25519 public key is %d bytes, want %d", len(point), ed25519.PublicKeySize)
		}
		p.Key = ed25519.PublicKey(point)
	default:
		return nil, fmt.Errorf("hsm: no public key for algorithm %q", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("hsm: %s public key from the HSM: %w", alg, err)
	}
	return p, nil
}

// unwrapOctetString returns the contents of a DER OCTET STRING, or b itself
// if it is not one.
func unwrapOctetString(b []byte) []byte {
	var inner []byte
	rest, err := asn1.Unmarshal(b, &inner)
	if err != nil || len(rest) != 0 {
		return b
	}
	return inner
}
