package records

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
)

// ErrBadMAC is wrapped by an [Authenticator]'s VerifyMAC error when the MAC
// does not match the data.
var ErrBadMAC = errors.New("mac does not verify")

// An Authenticator makes and checks MACs with a key the database cannot
// reach. In production it is the HSM record key (HMAC-SHA256 computed inside
// the HSM), reached through a small adapter over the HSM key store.
//
// MAC returns a MAC over data. VerifyMAC returns nil if mac is a valid MAC
// over data under the same key, and an error wrapping [ErrBadMAC] if it is
// not (including a mac of the wrong length or an empty one); it must compare
// in constant time. Any other failure (the HSM is unreachable, the session
// was lost) must be returned as an error that does not wrap ErrBadMAC, so that
// an outage is not reported as tampering.
//
// Both methods must be safe for concurrent use and must not retain data or
// mac after returning.
type Authenticator interface {
	MAC(data []byte) ([]byte, error)
	VerifyMAC(data, mac []byte) error
}

// SoftHMAC is an [Authenticator] computing HMAC-SHA256 with a key held in
// process memory. It is for unit tests only: trust-model point 6 requires the
// record key to live inside the HSM, where no hostile host can read it and
// forge records. Its MACs are the same HMAC-SHA256 an HSM computes with the
// same key, which makes it a reference for adapter tests.
type SoftHMAC struct {
	key []byte
}

// NewSoftHMAC returns a [SoftHMAC] with a copy of key, which must be at least
// 32 bytes. It is for unit tests only.
func NewSoftHMAC(key []byte) (*SoftHMAC, error) {
	if len(key) < 32 {
		return nil, fmt.Errorf("records: hmac key is %d bytes, want at least 32", len(key))
	}
	return &SoftHMAC{key: append([]byte(nil), key...)}, nil
}

// MAC returns HMAC-SHA256(key, data).
func (s *SoftHMAC) MAC(data []byte) ([]byte, error) {
	m := hmac.New(sha256.New, s.key)
	m.Write(data)
	return m.Sum(nil), nil
}

// VerifyMAC returns nil if mac is HMAC-SHA256(key, data), and an error
// wrapping [ErrBadMAC] otherwise.
func (s *SoftHMAC) VerifyMAC(data, mac []byte) error {
	want, _ := s.MAC(data)
	if !hmac.Equal(want, mac) {
		return fmt.Errorf("records: hmac-sha256: %w", ErrBadMAC)
	}
	return nil
}
