package backup

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// Domain strings: each starts the bytes its signature covers.
const (
	enrollmentDomain = "OpenCustody backup enrollment v1\x00"
	bundleDomain     = "OpenCustody backup bundle v1\x00"
)

// PEM block types of the two files.
const (
	EnrollmentPEMType = "OPENCUSTODY BACKUP ENROLLMENT"
	BundlePEMType     = "OPENCUSTODY BACKUP BUNDLE"
)

// Limits of what Parse accepts.
const (
	// MaxBundleSize bounds a bundle file.
	MaxBundleSize = 64 << 20
	// MaxKeys bounds the keys of a bundle.
	MaxKeys = 100000
	// MaxRecords bounds its records.
	MaxRecords = 1000000
)

// ErrFormat is wrapped by every parse error.
var ErrFormat = errors.New("backup: malformed")

// ErrSignature is wrapped when an enrollment's or a bundle's signature
// does not verify: the file was altered, or signed by another key.
var ErrSignature = errors.New("backup: signature does not verify")

// HSMKey is an HSM identity public key: its algorithm and wire encoding
// (package signed).
type HSMKey struct {
	Algorithm pb.Algorithm
	Key       []byte
}

// Fingerprint is the key's fingerprint ([signed.Fingerprint]), the name
// people compare.
func (k HSMKey) Fingerprint() string { return signed.Fingerprint(k.Algorithm, k.Key) }

// BackupKeyFingerprint is the fingerprint of a backup key-agreement key
// (a 65-byte P-256 point), in the same form as identity fingerprints.
func BackupKeyFingerprint(point []byte) string {
	return signed.Fingerprint(pb.Algorithm_ALGORITHM_ECDSA_P256, point)
}

func (k HSMKey) equal(o HSMKey) bool {
	return k.Algorithm == o.Algorithm && bytes.Equal(k.Key, o.Key)
}

// Enrollment is a target site's public backup key, signed by its HSM
// identity key: what `opencustody backup enroll` writes.
type Enrollment struct {
	Identity HSMKey
	// BackupKey is the 65-byte uncompressed P-256 point of the target's
	// backup key-agreement key.
	BackupKey []byte
	// Token is the target token's label, for people.
	Token     string
	CreatedAt time.Time
	Signature []byte
}

func (e *Enrollment) signedBytes() ([]byte, error) {
	var b cryptobyte.Builder
	b.AddBytes([]byte(enrollmentDomain))
	addHSMKey(&b, e.Identity)
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.BackupKey) })
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(e.Token)) })
	b.AddUint64(uint64(e.CreatedAt.Unix()))
	return b.Bytes()
}

// Sign signs the enrollment with the HSM identity key id, which must be
// e.Identity.
func (e *Enrollment) Sign(id signed.Signer) error {
	if id.Algorithm() != e.Identity.Algorithm || !bytes.Equal(id.PublicKey(), e.Identity.Key) {
		return errors.New("backup: enrollment: the signer is not the enrollment's identity key")
	}
	msg, err := e.signedBytes()
	if err != nil {
		return fmt.Errorf("backup: enrollment: %w", err)
	}
	d := sha256.Sum256(msg)
	e.Signature, err = id.SignDigest(d[:])
	return err
}

// Verify checks the enrollment's signature under its own identity key,
// and the backup key. Whether that identity is the expected one is the
// caller's to check (people compare the fingerprint).
func (e *Enrollment) Verify() error {
	if err := checkPoint(e.BackupKey); err != nil {
		return fmt.Errorf("%w: enrollment: %w", ErrFormat, err)
	}
	msg, err := e.signedBytes()
	if err != nil {
		return fmt.Errorf("%w: enrollment: %w", ErrFormat, err)
	}
	d := sha256.Sum256(msg)
	if err := signed.Verify(e.Identity.Algorithm, e.Identity.Key, d[:], e.Signature); err != nil {
		return fmt.Errorf("%w: enrollment of HSM %s: %w", ErrSignature, e.Identity.Fingerprint(), err)
	}
	return nil
}

// Marshal returns the enrollment as a PEM file.
func (e *Enrollment) Marshal() ([]byte, error) {
	msg, err := e.signedBytes()
	if err != nil {
		return nil, err
	}
	return signedPEM(EnrollmentPEMType, e.headers(), msg, e.Signature)
}

func (e *Enrollment) headers() map[string]string {
	return map[string]string{"Identity": e.Identity.Fingerprint(), "Backup-Key": BackupKeyFingerprint(e.BackupKey)}
}

// ParseEnrollment reads an enrollment file. It checks the structure only:
// call [Enrollment.Verify].
func ParseEnrollment(file []byte) (*Enrollment, error) {
	block, err := pemBody(file, EnrollmentPEMType)
	if err != nil {
		return nil, err
	}
	s := cryptobyte.String(block.Bytes)
	var e Enrollment
	var token []byte
	var created uint64
	if !readDomain(&s, enrollmentDomain) ||
		!readHSMKey(&s, &e.Identity) ||
		!readBytes8(&s, &e.BackupKey) ||
		!readBytes8(&s, &token) ||
		!s.ReadUint64(&created) ||
		!readBytes16(&s, &e.Signature) || !s.Empty() {
		return nil, fmt.Errorf("%w: enrollment", ErrFormat)
	}
	if created > 1<<40 {
		return nil, fmt.Errorf("%w: enrollment: time out of range", ErrFormat)
	}
	e.Token, e.CreatedAt = string(token), time.Unix(int64(created), 0).UTC()
	if err := checkHeaders(block, e.headers()); err != nil {
		return nil, err
	}
	return &e, nil
}

// Bundle is a backup: custody keys wrapped for one target HSM, and the
// records that give them meaning, signed by the source HSM identity key.
type Bundle struct {
	// ID is 16 random bytes naming the bundle; a target imports a bundle
	// once.
	ID        [16]byte
	CreatedAt time.Time
	// Source is the HSM that made the bundle; SourceBackupKey its backup
	// key (the target derives the wrapping key from it).
	Source          HSMKey
	SourceBackupKey []byte
	// Target is the HSM the bundle was made for, and TargetBackupKey the
	// backup key it enrolled.
	Target          HSMKey
	TargetBackupKey []byte
	// TransferKey is the transfer key wrapped under the agreed key; Keys
	// are the custody keys wrapped under the transfer key.
	TransferKey []byte
	Keys        []Key
	// Kept are custody keys of the source that were created not
	// backup-able: listed, never carried.
	Kept []Key
	// Records are the source's records (wallets, pairings, policies).
	Records   []Record
	Signature []byte
}

// Key is a custody key in a bundle. Wrapped is empty for [Bundle.Kept].
type Key struct {
	Label     string
	ID        []byte
	PublicKey []byte // 33-byte compressed secp256k1
	Wrapped   []byte
}

// Record is a record carried by a bundle: its kind, key and body as the
// source stored them. The bundle's signature authenticates it; the target
// stores it anew under its own record key.
type Record struct {
	Kind string
	Key  string
	Body []byte
}

func (b *Bundle) signedBytes() ([]byte, error) {
	var c cryptobyte.Builder
	c.AddBytes([]byte(bundleDomain))
	c.AddBytes(b.ID[:])
	c.AddUint64(uint64(b.CreatedAt.Unix()))
	addHSMKey(&c, b.Source)
	c.AddUint8LengthPrefixed(func(c *cryptobyte.Builder) { c.AddBytes(b.SourceBackupKey) })
	addHSMKey(&c, b.Target)
	c.AddUint8LengthPrefixed(func(c *cryptobyte.Builder) { c.AddBytes(b.TargetBackupKey) })
	c.AddUint16LengthPrefixed(func(c *cryptobyte.Builder) { c.AddBytes(b.TransferKey) })
	for _, list := range [][]Key{b.Keys, b.Kept} {
		c.AddUint32(uint32(len(list)))
		for _, k := range list {
			c.AddUint16LengthPrefixed(func(c *cryptobyte.Builder) { c.AddBytes([]byte(k.Label)) })
			c.AddUint8LengthPrefixed(func(c *cryptobyte.Builder) { c.AddBytes(k.ID) })
			c.AddUint8LengthPrefixed(func(c *cryptobyte.Builder) { c.AddBytes(k.PublicKey) })
			c.AddUint16LengthPrefixed(func(c *cryptobyte.Builder) { c.AddBytes(k.Wrapped) })
		}
	}
	c.AddUint32(uint32(len(b.Records)))
	for _, r := range b.Records {
		c.AddUint8LengthPrefixed(func(c *cryptobyte.Builder) { c.AddBytes([]byte(r.Kind)) })
		c.AddUint16LengthPrefixed(func(c *cryptobyte.Builder) { c.AddBytes([]byte(r.Key)) })
		c.AddUint32LengthPrefixed(func(c *cryptobyte.Builder) { c.AddBytes(r.Body) })
	}
	return c.Bytes()
}

// Sign signs the bundle with the source HSM identity key, which must be
// b.Source.
func (b *Bundle) Sign(id signed.Signer) error {
	if id.Algorithm() != b.Source.Algorithm || !bytes.Equal(id.PublicKey(), b.Source.Key) {
		return errors.New("backup: bundle: the signer is not the bundle's source identity key")
	}
	msg, err := b.signedBytes()
	if err != nil {
		return fmt.Errorf("backup: bundle: %w", err)
	}
	d := sha256.Sum256(msg)
	b.Signature, err = id.SignDigest(d[:])
	return err
}

// VerifySignature checks the bundle's signature under its own source key;
// whether that source is the expected one is the caller's to check.
func (b *Bundle) VerifySignature() error {
	msg, err := b.signedBytes()
	if err != nil {
		return fmt.Errorf("%w: bundle: %w", ErrFormat, err)
	}
	d := sha256.Sum256(msg)
	if err := signed.Verify(b.Source.Algorithm, b.Source.Key, d[:], b.Signature); err != nil {
		return fmt.Errorf("%w: the bundle is not as HSM %s signed it (altered, or signed by another key): %w", ErrSignature, b.Source.Fingerprint(), err)
	}
	return nil
}

// Marshal returns the bundle as a PEM file.
func (b *Bundle) Marshal() ([]byte, error) {
	msg, err := b.signedBytes()
	if err != nil {
		return nil, err
	}
	return signedPEM(BundlePEMType, b.headers(), msg, b.Signature)
}

func (b *Bundle) headers() map[string]string {
	return map[string]string{"Source": b.Source.Fingerprint(), "Target": b.Target.Fingerprint()}
}

// ParseBundle reads a bundle file. It checks the structure only: the
// caller verifies the signature, the source and the target (see
// [Site.Import]). On error it returns nil.
func ParseBundle(file []byte) (*Bundle, error) {
	if len(file) > MaxBundleSize*2 {
		return nil, fmt.Errorf("%w: bundle is %d bytes, more than %d", ErrFormat, len(file), MaxBundleSize*2)
	}
	block, err := pemBody(file, BundlePEMType)
	if err != nil {
		return nil, err
	}
	s := cryptobyte.String(block.Bytes)
	var b Bundle
	var created uint64
	var id []byte
	if !readDomain(&s, bundleDomain) || !s.ReadBytes(&id, len(b.ID)) || !s.ReadUint64(&created) ||
		!readHSMKey(&s, &b.Source) || !readBytes8(&s, &b.SourceBackupKey) ||
		!readHSMKey(&s, &b.Target) || !readBytes8(&s, &b.TargetBackupKey) ||
		!readBytes16(&s, &b.TransferKey) {
		return nil, fmt.Errorf("%w: bundle header", ErrFormat)
	}
	if created > 1<<40 {
		return nil, fmt.Errorf("%w: bundle: time out of range", ErrFormat)
	}
	copy(b.ID[:], id)
	b.CreatedAt = time.Unix(int64(created), 0).UTC()
	for i, list := range []*[]Key{&b.Keys, &b.Kept} {
		var n uint32
		if !s.ReadUint32(&n) || n > MaxKeys {
			return nil, fmt.Errorf("%w: bundle key count", ErrFormat)
		}
		for range n {
			var k Key
			var label []byte
			if !readBytes16(&s, &label) || !readBytes8(&s, &k.ID) || !readBytes8(&s, &k.PublicKey) || !readBytes16(&s, &k.Wrapped) {
				return nil, fmt.Errorf("%w: bundle key %d", ErrFormat, len(*list))
			}
			if len(label) == 0 || len(k.ID) == 0 || len(k.PublicKey) != 33 || (i == 0) != (len(k.Wrapped) > 0) {
				return nil, fmt.Errorf("%w: bundle key %q", ErrFormat, label)
			}
			k.Label = string(label)
			*list = append(*list, k)
		}
	}
	var n uint32
	if !s.ReadUint32(&n) || n > MaxRecords {
		return nil, fmt.Errorf("%w: bundle record count", ErrFormat)
	}
	for range n {
		var r Record
		var kind, key []byte
		if !readBytes8(&s, &kind) || !readBytes16(&s, &key) || !readBytes32(&s, &r.Body) {
			return nil, fmt.Errorf("%w: bundle record %d", ErrFormat, len(b.Records))
		}
		r.Kind, r.Key = string(kind), string(key)
		b.Records = append(b.Records, r)
	}
	if !readBytes16(&s, &b.Signature) || !s.Empty() {
		return nil, fmt.Errorf("%w: bundle signature", ErrFormat)
	}
	if err := checkHeaders(block, b.headers()); err != nil {
		return nil, err
	}
	return &b, nil
}

// signedPEM encodes a signed file: a PEM block of type typ with headers,
// whose body is the signed bytes msg followed by the signature
// (uint16-length-prefixed). [pemBody] reads it back.
func signedPEM(typ string, headers map[string]string, msg, sig []byte) ([]byte, error) {
	b := cryptobyte.NewBuilder(msg)
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(sig) })
	der, err := b.Bytes()
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: typ, Headers: headers, Bytes: der}), nil
}

func pemBody(file []byte, typ string) (*pem.Block, error) {
	block, rest := pem.Decode(file)
	if block == nil || block.Type != typ {
		return nil, fmt.Errorf("%w: not a %s file", ErrFormat, typ)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: data after the %s block", ErrFormat, typ)
	}
	return block, nil
}

// checkHeaders: the PEM headers are for people reading the file and are
// not signed, so each must say what the signed body says; any other header
// is refused.
func checkHeaders(block *pem.Block, want map[string]string) error {
	for k, v := range block.Headers {
		if w, ok := want[k]; !ok || v != w {
			return fmt.Errorf("%w: header %q says %q, but the signed content says %q", ErrFormat, k, v, w)
		}
	}
	return nil
}

func addHSMKey(b *cryptobyte.Builder, k HSMKey) {
	b.AddUint8(uint8(k.Algorithm))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(k.Key) })
}

func readHSMKey(s *cryptobyte.String, k *HSMKey) bool {
	var alg uint8
	if !s.ReadUint8(&alg) || !readBytes8(s, &k.Key) || len(k.Key) == 0 {
		return false
	}
	k.Algorithm = pb.Algorithm(alg)
	return true
}

func readDomain(s *cryptobyte.String, domain string) bool {
	var d []byte
	return s.ReadBytes(&d, len(domain)) && string(d) == domain
}

// The readers copy, so that nothing parsed aliases the input.
func readBytes8(s *cryptobyte.String, out *[]byte) bool {
	var v cryptobyte.String
	if !s.ReadUint8LengthPrefixed(&v) {
		return false
	}
	*out = bytes.Clone([]byte(v))
	return true
}

func readBytes16(s *cryptobyte.String, out *[]byte) bool {
	var v cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&v) {
		return false
	}
	*out = bytes.Clone([]byte(v))
	return true
}

func readBytes32(s *cryptobyte.String, out *[]byte) bool {
	var n uint32
	var v []byte
	if !s.ReadUint32(&n) || n > MaxBundleSize || !s.ReadBytes(&v, int(n)) {
		return false
	}
	*out = bytes.Clone(v)
	return true
}

func checkPoint(p []byte) error {
	if len(p) != 65 || p[0] != 4 {
		return fmt.Errorf("backup key is not a 65-byte uncompressed P-256 point (%d bytes)", len(p))
	}
	if _, err := ecdh.P256().NewPublicKey(p); err != nil {
		return fmt.Errorf("backup key is not a P-256 point: %w", err)
	}
	return nil
}
