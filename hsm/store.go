package hsm

import (
	"context"
	"io"
)

// Signer signs digests with keys that never leave the HSM.
//
// Sign must refuse a digest that is not exactly 32 bytes, must return an error
// wrapping [ErrKeyNotFound] if no signing key matches req.Key, and
// [ErrMechanismNotSupported] if the HSM cannot sign with the key's
// algorithm. ECDSA signatures on secp256k1 are returned with low S.
//
// PublicKey must return an error wrapping [ErrKeyNotFound] if key names no
// key pair.
type Signer interface {
	Sign(ctx context.Context, req SignRequest) (*Signature, error)
	PublicKey(ctx context.Context, key string) (*PublicKey, error)
}

// Authenticator computes and checks message authentication codes with a
// secret key that never leaves the HSM: the record key that authenticates
// what the core stores outside the HSM.
//
// VerifyMAC must return nil only if req.MAC is the key's MAC of req.Data, and
// otherwise an error wrapping [ErrMACInvalid] (a wrong MAC, including one of
// the wrong length) or describing why it could not check. Both methods must
// return an error wrapping [ErrKeyNotFound] if no secret key matches req.Key.
type Authenticator interface {
	MAC(ctx context.Context, req MACRequest) ([]byte, error)
	VerifyMAC(ctx context.Context, req VerifyMACRequest) error
}

// KeyManager creates and lists keys.
//
// GenerateKey must create the key inside the HSM, sensitive and not
// extractable unless req.Backupable, and return an error wrapping
// [ErrKeyExists] if a key with req.Label is already on the token, or
// [ErrMechanismNotSupported] if the HSM cannot generate it.
type KeyManager interface {
	GenerateKey(ctx context.Context, req GenerateKeyRequest) (*KeyInfo, error)
	ListKeys(ctx context.Context) ([]KeyInfo, error)
}

// Store is a logged-in HSM token: everything the rest of OpenCustody asks of
// an HSM. [*PKCS11Store] implements it. Close releases the sessions; the
// Store must not be used after it.
type Store interface {
	Signer
	Authenticator
	KeyManager
	io.Closer
}

// SignRequest asks for a signature over a digest.
type SignRequest struct {
	// Key is the signing key: its label, or a pkcs11: URI naming it by
	// object= and/or id= (see [KeyInfo.URI]).
	Key string
	// Digest is the 32-byte hash to sign: SHA-256 (or a Bitcoin sighash) for
	// ECDSA, OpenCustody's 32-byte domain-separated digest for Ed25519.
	Digest []byte
}

// MACRequest asks for the MAC of Data under the secret key Key.
type MACRequest struct {
	Key  string // label or pkcs11: URI, as in [SignRequest]
	Data []byte
}

// VerifyMACRequest asks whether MAC is the MAC of Data under Key.
type VerifyMACRequest struct {
	Key  string // label or pkcs11: URI, as in [SignRequest]
	Data []byte
	MAC  []byte
}

// GenerateKeyRequest describes a key to create in the HSM.
type GenerateKeyRequest struct {
	// Label names the key; it must be new on the token (labels are how
	// OpenCustody finds keys).
	Label string
	// ID is the key's CKA_ID. If empty, 8 random bytes.
	ID []byte
	// Algorithm of the key. Its role follows: see [Role].
	Algorithm Algorithm
	// Backupable makes a custody key (secp256k1) exportable by wrapping
	// only, for moving it to another HSM: CKA_EXTRACTABLE and
	// CKA_WRAP_WITH_TRUSTED are set, CKA_SENSITIVE stays set. It is refused
	// for other algorithms. A key is backup-able from birth or never.
	Backupable bool
}
