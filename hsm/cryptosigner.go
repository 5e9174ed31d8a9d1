package hsm

import (
	"context"
	"crypto"
	"fmt"
	"io"
)

// NewCryptoSigner returns a [crypto.Signer] for the key pair key in s, for
// code that takes one (crypto/x509, crypto/tls, …). It reads the public key
// once, now.
//
// The signer's Sign ignores its io.Reader (the HSM has its own randomness)
// and, like [Signer.Sign], takes only 32-byte digests. For ECDSA keys, opts
// must name a 32-byte hash (crypto.SHA256) or none, and the signature is ASN.1
// DER (as crypto/ecdsa returns it; low S on secp256k1). For Ed25519 keys,
// opts.HashFunc() must be 0 (pure Ed25519, not Ed25519ph) and the signature is
// the 64-byte Ed25519 signature of the 32 bytes. Each Sign uses
// context.Background: wrap the store if signatures need a deadline.
func NewCryptoSigner(ctx context.Context, s Signer, key string) (crypto.Signer, error) {
	pub, err := s.PublicKey(ctx, key)
	if err != nil {
		return nil, err
	}
	return &cryptoSigner{s: s, key: key, pub: pub}, nil
}

type cryptoSigner struct {
	s   Signer
	key string
	pub *PublicKey
}

func (c *cryptoSigner) Public() crypto.PublicKey { return c.pub.Key }

func (c *cryptoSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	h := crypto.Hash(0)
	if opts != nil {
		h = opts.HashFunc()
	}
	switch c.pub.Algorithm {
	case Ed25519:
		if h != 0 {
			return nil, fmt.Errorf("hsm: sign with key %q: Ed25519 signs the message itself; opts must not name a hash (got %v)", c.key, h)
		}
	default:
		if h != 0 && h.Size() != DigestSize {
			return nil, fmt.Errorf("hsm: sign with key %q: %v digests are %d bytes; the HSM signs %d-byte digests only", c.key, h, h.Size(), DigestSize)
		}
	}
	sig, err := c.s.Sign(context.Background(), SignRequest{Key: c.key, Digest: digest})
	if err != nil {
		return nil, err
	}
	if sig.Algorithm == Ed25519 {
		return sig.Bytes(), nil
	}
	return sig.DER()
}
