package hsm

import (
	"context"
	"errors"
	"fmt"

	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// IdentitySigner is the HSM identity key as the protocol's [signed.Signer]:
// it signs statement digests (channel credentials, prompts, checkpoints)
// inside the HSM and returns signatures in their wire encoding (Ed25519's 64
// bytes, or ECDSA DER).
type IdentitySigner struct {
	s   Signer
	key string
	alg pb.Algorithm
	pub []byte
}

var _ signed.Signer = (*IdentitySigner)(nil)

// NewIdentitySigner looks up key (a label or pkcs11: URI) and returns its
// signer. The key must be an identity key (P-256 or Ed25519).
func NewIdentitySigner(ctx context.Context, s Signer, key string) (*IdentitySigner, error) {
	pub, err := s.PublicKey(ctx, key)
	if err != nil {
		return nil, err
	}
	if RoleOf(pub.Algorithm) != RoleIdentity {
		return nil, fmt.Errorf("hsm: key %q is a %s key, not an identity key (P-256 or Ed25519)", key, pub.Algorithm)
	}
	alg, b, err := pub.Protocol()
	if err != nil {
		return nil, err
	}
	return &IdentitySigner{s: s, key: key, alg: alg, pub: b}, nil
}

// Algorithm implements [signed.Signer].
func (i *IdentitySigner) Algorithm() pb.Algorithm { return i.alg }

// PublicKey implements [signed.Signer].
func (i *IdentitySigner) PublicKey() []byte { return append([]byte(nil), i.pub...) }

// SignDigest implements [signed.Signer].
func (i *IdentitySigner) SignDigest(digest []byte) ([]byte, error) {
	sig, err := i.s.Sign(context.Background(), SignRequest{Key: i.key, Digest: digest})
	if err != nil {
		return nil, err
	}
	if i.alg == pb.Algorithm_ALGORITHM_ED25519 {
		return sig.Bytes(), nil
	}
	return sig.DER()
}

// RecordAuthenticator is the HSM record key as the [records.Authenticator]
// that authenticates what the core stores outside the HSM.
type RecordAuthenticator struct {
	A   Authenticator
	Key string
}

var _ records.Authenticator = RecordAuthenticator{}

// MAC implements [records.Authenticator].
func (r RecordAuthenticator) MAC(data []byte) ([]byte, error) {
	return r.A.MAC(context.Background(), MACRequest{Key: r.Key, Data: data})
}

// VerifyMAC implements [records.Authenticator]: only a MAC the HSM found
// wrong is reported as records.ErrBadMAC; an HSM that could not check is
// another error, so an outage is never reported as tampering.
func (r RecordAuthenticator) VerifyMAC(data, mac []byte) error {
	err := r.A.VerifyMAC(context.Background(), VerifyMACRequest{Key: r.Key, Data: data, MAC: mac})
	if errors.Is(err, ErrMACInvalid) {
		return fmt.Errorf("%w: %w", records.ErrBadMAC, err)
	}
	return err
}
