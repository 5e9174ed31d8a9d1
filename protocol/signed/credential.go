package signed

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

// CredentialLabel starts every channel credential statement.
const CredentialLabel = "OpenCustody channel credential v1\x00"

// Role says which end of a secure channel a credential is for.
type Role uint8

const (
	// RoleCore is the custody core; its identity key is the HSM identity key.
	RoleCore Role = 1
	// RoleDevice is an approval device; its identity key is the device's.
	RoleDevice Role = 2
)

func (r Role) String() string {
	switch r {
	case RoleCore:
		return "core"
	case RoleDevice:
		return "device"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// StaticKeySize is the size of a Noise X25519 static public key.
const StaticKeySize = 32

// Credential binds a Noise static key to an identity key for a validity
// period. Its statement is:
//
//	CredentialLabel
//	role            uint8
//	static key      32 bytes (X25519 public key)
//	not before      uint64, Unix seconds
//	not after       uint64, Unix seconds
//	algorithm       uint8 (pb.Algorithm)
//	identity key    uint8 length, then the key
//
// and the identity key signs SHA-256 of it. A device credential, made once
// by a device without a clock, has not before 0 and not after 2^64-1.
type Credential struct {
	Role        Role
	StaticKey   [StaticKeySize]byte
	NotBefore   time.Time
	NotAfter    time.Time
	Algorithm   pb.Algorithm
	IdentityKey []byte
	Signature   []byte
}

// Forever is the NotAfter of a credential that does not expire; on the
// wire it is 2^64-1. Other times must lie below 2^62 Unix seconds.
var Forever = time.Unix(maxUnix, 0)

const (
	maxUnix     = 1 << 62
	wireForever = 1<<64 - 1
)

// ErrMalformedCredential means credential bytes did not parse.
var ErrMalformedCredential = errors.New("signed: malformed channel credential")

func unixOrMax(t time.Time) uint64 {
	if !t.Before(Forever) {
		return wireForever
	}
	if t.Unix() < 0 {
		return 0
	}
	return uint64(t.Unix())
}

// fromUnix decodes a wire time; ok is false for values that no encoder
// produces, so that every accepted encoding is canonical.
func fromUnix(u uint64) (t time.Time, ok bool) {
	switch {
	case u == wireForever:
		return Forever, true
	case u >= maxUnix:
		return time.Time{}, false
	}
	return time.Unix(int64(u), 0), true
}

// Statement returns the canonical bytes that the identity key signs the
// digest of.
func (c *Credential) Statement() []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddBytes([]byte(CredentialLabel))
	b.AddUint8(uint8(c.Role))
	b.AddBytes(c.StaticKey[:])
	b.AddUint64(unixOrMax(c.NotBefore))
	b.AddUint64(unixOrMax(c.NotAfter))
	b.AddUint8(uint8(c.Algorithm))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c.IdentityKey) })
	return b.BytesOrPanic()
}

// Digest is SHA-256 of the statement.
func (c *Credential) Digest() []byte {
	d := sha256.Sum256(c.Statement())
	return d[:]
}

// Sign fills in the identity key, algorithm and signature using s.
func (c *Credential) Sign(s Signer) error {
	c.Algorithm = s.Algorithm()
	c.IdentityKey = s.PublicKey()
	sig, err := s.SignDigest(c.Digest())
	if err != nil {
		return fmt.Errorf("signed: sign %v credential: %w", c.Role, err)
	}
	c.Signature = sig
	return nil
}

// VerifySignature checks that the identity key signed the credential. It
// does not decide whether the identity key is the expected one: that is
// the caller's pinning decision.
func (c *Credential) VerifySignature() error {
	if err := Verify(c.Algorithm, c.IdentityKey, c.Digest(), c.Signature); err != nil {
		return fmt.Errorf("signed: %v credential: %w", c.Role, err)
	}
	return nil
}

// ErrCredentialExpired means a credential is outside its validity period.
var ErrCredentialExpired = errors.New("signed: credential outside its validity period")

// ValidAt checks that now lies within the credential's validity period.
func (c *Credential) ValidAt(now time.Time) error {
	if now.Before(c.NotBefore) || now.After(c.NotAfter) {
		return fmt.Errorf("%w: %v credential checked at %s, valid %s to %s", ErrCredentialExpired, c.Role,
			now.UTC().Format(time.RFC3339), c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// Marshal encodes the credential for transport: the statement and the
// signature, each with a uint16 length prefix.
func (c *Credential) Marshal() []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c.Statement()) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c.Signature) })
	return b.BytesOrPanic()
}

// ParseCredential decodes a credential produced by [Credential.Marshal].
// It checks the encoding only; call [Credential.Verify] to check it.
func ParseCredential(data []byte) (*Credential, error) {
	in := cryptobyte.String(data)
	var stmt, sig cryptobyte.String
	if !in.ReadUint16LengthPrefixed(&stmt) || !in.ReadUint16LengthPrefixed(&sig) || !in.Empty() {
		return nil, fmt.Errorf("%w: bad outer encoding", ErrMalformedCredential)
	}
	var (
		c      Credential
		role   uint8
		nb, na uint64
		alg    uint8
		key    cryptobyte.String
	)
	var label []byte
	if !stmt.ReadBytes(&label, len(CredentialLabel)) || string(label) != CredentialLabel {
		return nil, fmt.Errorf("%w: wrong label", ErrMalformedCredential)
	}
	if !stmt.ReadUint8(&role) || !stmt.CopyBytes(c.StaticKey[:]) || !stmt.ReadUint64(&nb) ||
		!stmt.ReadUint64(&na) || !stmt.ReadUint8(&alg) || !stmt.ReadUint8LengthPrefixed(&key) || !stmt.Empty() {
		return nil, fmt.Errorf("%w: bad statement", ErrMalformedCredential)
	}
	if Role(role) != RoleCore && Role(role) != RoleDevice {
		return nil, fmt.Errorf("%w: unknown role %d", ErrMalformedCredential, role)
	}
	var okB, okA bool
	c.NotBefore, okB = fromUnix(nb)
	c.NotAfter, okA = fromUnix(na)
	if !okB || !okA {
		return nil, fmt.Errorf("%w: validity time out of range", ErrMalformedCredential)
	}
	c.Role = Role(role)
	c.Algorithm, c.IdentityKey, c.Signature = pb.Algorithm(alg), append([]byte(nil), key...), append([]byte(nil), sig...)
	return &c, nil
}
