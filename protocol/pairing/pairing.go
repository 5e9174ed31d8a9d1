// Package pairing defines the short code that binds a person's approval
// device to the custody core, the way people compare it, and why a relay
// in the middle cannot make the codes match.
//
// # Protocol
//
// Pairing runs inside a fresh secure channel (package channel), whose
// handshake hash H both ends share only if nobody sits in the middle:
//
//	core   -> device  PairingRequest (user, role)
//	device -> core    commitment = Commitment(H, secret)   secret: 32 random bytes
//	core   -> device  challenge                            32 random bytes
//	device -> core    secret
//	both:             code = Code(H, secret, challenge)
//
// The device shows the code and the HSM fingerprint; the operator's CLI
// shows the code the core computed; both people confirm they match.
//
// # Why a relay cannot search for a match
//
// A relay that runs two handshakes (one with the core, one with the
// device) has two different hashes H1 and H2, and wins only if the two
// codes agree. The device commits to its secret before it sees the
// challenge, and the core picks its challenge only after it holds the
// commitment, so on each side one of the two inputs is fixed before the
// relay learns the other: each attempt succeeds with probability 10^-6,
// and a failed attempt shows different codes to the people comparing them.
package pairing

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
)

// Sizes of the values exchanged, in bytes.
const (
	SecretSize    = 32
	ChallengeSize = 32
)

// Domain labels of the two derivations.
const (
	commitmentLabel = "OpenCustody pairing commitment v1\x00"
	codeLabel       = "OpenCustody pairing code v1\x00"
)

// ErrCommitment means the revealed secret does not match the commitment.
var ErrCommitment = errors.New("pairing: revealed secret does not match the commitment")

// Commitment is SHA-256(label || handshake hash || secret).
func Commitment(handshakeHash, secret []byte) []byte {
	h := sha256.New()
	h.Write([]byte(commitmentLabel))
	h.Write(handshakeHash)
	h.Write(secret)
	return h.Sum(nil)
}

// CheckReveal verifies a revealed secret against its commitment.
func CheckReveal(handshakeHash, commitment, secret []byte) error {
	if len(secret) != SecretSize {
		return fmt.Errorf("pairing: secret is %d bytes, want %d", len(secret), SecretSize)
	}
	if subtle.ConstantTimeCompare(Commitment(handshakeHash, secret), commitment) != 1 {
		return ErrCommitment
	}
	return nil
}

// Code derives the six-digit code: the first 8 bytes of
// SHA-256(label || handshake hash || secret || challenge) as a big-endian
// integer, modulo 10^6, written with leading zeros.
func Code(handshakeHash, secret, challenge []byte) string {
	h := sha256.New()
	h.Write([]byte(codeLabel))
	h.Write(handshakeHash)
	h.Write(secret)
	h.Write(challenge)
	n := binary.BigEndian.Uint64(h.Sum(nil)[:8]) % 1_000_000
	return fmt.Sprintf("%06d", n)
}

// Display groups a code for screens: "123 456".
func Display(code string) string {
	if len(code) != 6 {
		return code
	}
	return code[:3] + " " + code[3:]
}
