package hsm

import "fmt"

// Algorithm is a key's algorithm and, for elliptic curves, its curve. The
// values are the names used in the device protocol and in `opencustody hsm
// keys`.
type Algorithm string

const (
	// ECDSASecp256k1 is ECDSA on secp256k1 (CKM_ECDSA): custody keys.
	ECDSASecp256k1 Algorithm = "ecdsa-secp256k1"
	// ECDSAP256 is ECDSA on NIST P-256 (CKM_ECDSA): the default identity key.
	ECDSAP256 Algorithm = "ecdsa-p256"
	// Ed25519 is pure Ed25519 (CKM_EDDSA): the optional identity key.
	Ed25519 Algorithm = "ed25519"
	// HMACSHA256 is HMAC-SHA256 (CKM_SHA256_HMAC) with a 32-byte
	// CKK_GENERIC_SECRET key: the record key.
	HMACSHA256 Algorithm = "hmac-sha256"
	// ECDHP256 is ECDH on NIST P-256 (CKM_ECDH1_DERIVE): the backup
	// key-agreement key, a P-256 key pair that derives and never signs.
	ECDHP256 Algorithm = "ecdh-p256"
)

// ParseAlgorithm accepts an [Algorithm] name, and the short forms
// "secp256k1", "p256" and "p-256".
func ParseAlgorithm(s string) (Algorithm, error) {
	switch s {
	case string(ECDSASecp256k1), "secp256k1":
		return ECDSASecp256k1, nil
	case string(ECDSAP256), "p256", "p-256", "P-256":
		return ECDSAP256, nil
	case string(Ed25519):
		return Ed25519, nil
	case string(HMACSHA256):
		return HMACSHA256, nil
	case string(ECDHP256):
		return ECDHP256, nil
	}
	return "", fmt.Errorf("hsm: unknown algorithm %q (want %s, %s, %s, %s or %s)", s, ECDSASecp256k1, ECDSAP256, Ed25519, HMACSHA256, ECDHP256)
}

// Role is what a key is for. It follows from the key's algorithm, so it is
// stored in the HSM by the key type itself:
//
//	secp256k1 key pair       custody   signs transactions
//	P-256 or Ed25519 pair    identity  signs prompts, channel credentials, checkpoints
//	generic secret (HMAC)    records   authenticates what is stored outside the HSM
//	P-256 pair with derive   backup    agrees wrapping keys with another HSM (ECDH)
type Role string

const (
	RoleCustody  Role = "custody"
	RoleIdentity Role = "identity"
	RoleRecords  Role = "records"
	RoleBackup   Role = "backup"
	// RoleUnknown is a key OpenCustody did not make (another type or curve).
	RoleUnknown Role = "unknown"
)

// RoleOf returns the role of keys of algorithm a.
func RoleOf(a Algorithm) Role {
	switch a {
	case ECDSASecp256k1:
		return RoleCustody
	case ECDSAP256, Ed25519:
		return RoleIdentity
	case HMACSHA256:
		return RoleRecords
	case ECDHP256:
		return RoleBackup
	}
	return RoleUnknown
}

// The labels of the keys `opencustody hsm init` creates.
const (
	IdentityKeyLabel = "opencustody-identity"
	RecordKeyLabel   = "opencustody-records"
	// BackupKeyLabel is the label `opencustody backup enroll` gives the
	// backup key-agreement key.
	BackupKeyLabel = "opencustody-backup"
)

// KeyInfo describes a key on the token, as [KeyManager.ListKeys] and
// [KeyManager.GenerateKey] return it. The booleans are the key's PKCS#11
// attributes, read from the HSM.
type KeyInfo struct {
	Label string
	ID    []byte
	// URI names the key by label and ID (pkcs11:object=…;id=…): a key
	// reference for [SignRequest] that stays right if labels repeat.
	URI       string
	Role      Role
	Algorithm Algorithm // empty if the key is of a type OpenCustody does not use
	KeyType   string    // the PKCS#11 key type: "EC", "EC_EDWARDS", "GENERIC_SECRET", …
	Curve     string    // "secp256k1", "P-256", "Ed25519", or empty

	Sensitive        bool // CKA_SENSITIVE: the key's value can never be read
	AlwaysSensitive  bool // CKA_ALWAYS_SENSITIVE: and never could
	Extractable      bool // CKA_EXTRACTABLE: it can be wrapped (not read)
	NeverExtractable bool // CKA_NEVER_EXTRACTABLE: it never could be
	WrapWithTrusted  bool // CKA_WRAP_WITH_TRUSTED: only under an SO-trusted key
	// Backupable is true for a key that is sensitive but extractable: it can
	// leave the HSM wrapped (for an HSM-to-HSM backup) and in no other form.
	Backupable bool

	// PublicKey is nil for secret keys.
	PublicKey *PublicKey
}
