package signed

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

// AttestationLabel starts every attestation certificate statement.
const AttestationLabel = "OpenCustody attestation certificate v1\x00"

// CertificateKind says what the subject of an attestation certificate is,
// and so where in a chain the certificate may stand.
type CertificateKind uint8

const (
	// KindDevice certifies a device identity key. It is the first
	// certificate of a chain, and its subject never issues certificates: a
	// key taken from one device cannot vouch for others.
	KindDevice CertificateKind = 1
	// KindAuthority certifies an issuing key (a vendor's factory or
	// intermediate CA). It stands after the device certificate.
	KindAuthority CertificateKind = 2
)

func (k CertificateKind) String() string {
	switch k {
	case KindDevice:
		return "device"
	case KindAuthority:
		return "authority"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

const (
	// MaxAttestationChain is the most certificates a chain may hold.
	MaxAttestationChain = 4
	// MaxNameSize is the longest subject or root name, in bytes of UTF-8.
	MaxNameSize = 128
)

// AttestationCertificate says that the issuer key vouches for the subject
// key under the subject name. Its statement is:
//
//	AttestationLabel
//	kind              uint8 (CertificateKind)
//	subject algorithm uint8 (pb.Algorithm)
//	subject key       uint8 length, then the key
//	subject name      uint16 length, then UTF-8
//	issuer algorithm  uint8 (pb.Algorithm)
//	issuer key        uint8 length, then the key
//
// and the issuer key signs SHA-256 of it. Keys are in their wire encoding
// (see the package doc). The name is 1 to [MaxNameSize] bytes of printable
// UTF-8 (no control or formatting characters), because operators read it.
type AttestationCertificate struct {
	Kind             CertificateKind
	SubjectAlgorithm pb.Algorithm
	SubjectKey       []byte
	SubjectName      string
	IssuerAlgorithm  pb.Algorithm
	IssuerKey        []byte
	Signature        []byte
}

// ErrMalformedAttestation means attestation certificate bytes did not
// parse, or a certificate's fields are not valid.
var ErrMalformedAttestation = errors.New("signed: malformed attestation certificate")

func publicKeySize(alg pb.Algorithm) int {
	switch alg {
	case pb.Algorithm_ALGORITHM_ED25519:
		return 32
	case pb.Algorithm_ALGORITHM_ECDSA_P256, pb.Algorithm_ALGORITHM_ECDSA_SECP256K1:
		return 33
	}
	return -1
}

// checkName accepts 1 to MaxNameSize bytes of UTF-8 made of printable
// characters (letters, marks, numbers, punctuation, symbols, ASCII space).
func checkName(s string) error {
	if s == "" || len(s) > MaxNameSize {
		return fmt.Errorf("name is %d bytes, want 1 to %d", len(s), MaxNameSize)
	}
	if !utf8.ValidString(s) {
		return errors.New("name is not UTF-8")
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("name contains the unprintable character %U", r)
		}
	}
	return nil
}

// check validates the fields, so that every certificate that is signed or
// parsed has a statement that encodes and re-encodes the same way.
func (c *AttestationCertificate) check() error {
	if c.Kind != KindDevice && c.Kind != KindAuthority {
		return fmt.Errorf("unknown kind %d", uint8(c.Kind))
	}
	for _, k := range []struct {
		what string
		alg  pb.Algorithm
		key  []byte
	}{{"subject", c.SubjectAlgorithm, c.SubjectKey}, {"issuer", c.IssuerAlgorithm, c.IssuerKey}} {
		n := publicKeySize(k.alg)
		if n < 0 {
			return fmt.Errorf("%s: unknown algorithm %d", k.what, int32(k.alg))
		}
		if len(k.key) != n {
			return fmt.Errorf("%s: %v key is %d bytes, want %d", k.what, k.alg, len(k.key), n)
		}
	}
	if err := checkName(c.SubjectName); err != nil {
		return fmt.Errorf("subject %w", err)
	}
	if len(c.Signature) > 0xffff {
		return errors.New("signature too long")
	}
	return nil
}

// Statement returns the canonical bytes that the issuer signs the digest
// of. It panics on fields that no length prefix can hold; [Sign] and
// [ParseAttestationCertificate] never produce such a certificate.
//
// [Sign]: AttestationCertificate.Sign
func (c *AttestationCertificate) Statement() []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddBytes([]byte(AttestationLabel))
	b.AddUint8(uint8(c.Kind))
	b.AddUint8(uint8(c.SubjectAlgorithm))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c.SubjectKey) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(c.SubjectName)) })
	b.AddUint8(uint8(c.IssuerAlgorithm))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c.IssuerKey) })
	return b.BytesOrPanic()
}

// Digest is SHA-256 of the statement.
func (c *AttestationCertificate) Digest() []byte {
	d := sha256.Sum256(c.Statement())
	return d[:]
}

// Sign fills in the issuer algorithm, key and signature using issuer. It
// refuses a certificate whose fields are not valid (see
// [AttestationCertificate]).
func (c *AttestationCertificate) Sign(issuer Signer) error {
	c.IssuerAlgorithm = issuer.Algorithm()
	c.IssuerKey = issuer.PublicKey()
	c.Signature = nil
	if err := c.check(); err != nil {
		return fmt.Errorf("signed: attestation certificate for %q: %w", c.SubjectName, err)
	}
	sig, err := issuer.SignDigest(c.Digest())
	if err != nil {
		return fmt.Errorf("signed: sign attestation certificate for %q: %w", c.SubjectName, err)
	}
	c.Signature = sig
	return nil
}

// VerifySignature checks that the issuer key signed the certificate. It
// does not decide whether the issuer is trusted: [VerifyAttestation] does.
func (c *AttestationCertificate) VerifySignature() error {
	if err := Verify(c.IssuerAlgorithm, c.IssuerKey, c.Digest(), c.Signature); err != nil {
		return fmt.Errorf("signed: attestation certificate for %q: %w", c.SubjectName, err)
	}
	return nil
}

// Marshal encodes the certificate for transport: the statement and the
// signature, each with a uint16 length prefix.
func (c *AttestationCertificate) Marshal() []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c.Statement()) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(c.Signature) })
	return b.BytesOrPanic()
}

// ParseAttestationCertificate decodes a certificate produced by
// [AttestationCertificate.Marshal]. It checks the encoding and the fields
// only; [VerifyAttestation] checks a chain. Errors wrap
// [ErrMalformedAttestation]. Whatever it accepts re-encodes to the same
// bytes.
func ParseAttestationCertificate(data []byte) (*AttestationCertificate, error) {
	in := cryptobyte.String(data)
	var stmt, sig cryptobyte.String
	if !in.ReadUint16LengthPrefixed(&stmt) || !in.ReadUint16LengthPrefixed(&sig) || !in.Empty() {
		return nil, fmt.Errorf("%w: bad outer encoding", ErrMalformedAttestation)
	}
	var label []byte
	if !stmt.ReadBytes(&label, len(AttestationLabel)) || string(label) != AttestationLabel {
		return nil, fmt.Errorf("%w: wrong label", ErrMalformedAttestation)
	}
	var (
		kind, subAlg, issAlg uint8
		subKey, name, issKey cryptobyte.String
	)
	if !stmt.ReadUint8(&kind) || !stmt.ReadUint8(&subAlg) || !stmt.ReadUint8LengthPrefixed(&subKey) ||
		!stmt.ReadUint16LengthPrefixed(&name) || !stmt.ReadUint8(&issAlg) || !stmt.ReadUint8LengthPrefixed(&issKey) ||
		!stmt.Empty() {
		return nil, fmt.Errorf("%w: bad statement", ErrMalformedAttestation)
	}
	c := &AttestationCertificate{
		Kind:             CertificateKind(kind),
		SubjectAlgorithm: pb.Algorithm(subAlg),
		SubjectKey:       bytes.Clone([]byte(subKey)),
		SubjectName:      string(name),
		IssuerAlgorithm:  pb.Algorithm(issAlg),
		IssuerKey:        bytes.Clone([]byte(issKey)),
		Signature:        bytes.Clone([]byte(sig)),
	}
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedAttestation, err)
	}
	return c, nil
}

// Root is an attestation root: a vendor's key that the operator trusts to
// vouch for devices. It is not a certificate; the last certificate of a
// chain names it as its issuer. [LoadRoots] reads roots from a file.
type Root struct {
	// Name is the operator's label for the root, shown next to every
	// device attested under it.
	Name      string
	Algorithm pb.Algorithm
	// PublicKey is in its wire encoding (see the package doc).
	PublicKey []byte
}

// Fingerprint is the root key's fingerprint (see [Fingerprint]), which a
// vendor publishes and an operator compares.
func (r Root) Fingerprint() string { return Fingerprint(r.Algorithm, r.PublicKey) }

// IsDevelopment reports whether r is the development root, which anyone
// can issue certificates under (see [DevelopmentRoot]).
func (r Root) IsDevelopment() bool {
	d := DevelopmentRoot()
	return r.Algorithm == d.Algorithm && bytes.Equal(r.PublicKey, d.PublicKey)
}

// Attestation is the result of a verified chain.
type Attestation struct {
	// Root is the trusted root the chain ends at.
	Root Root
	// Subject is the device certificate's subject name (for example the
	// device model), as the issuer certified it.
	Subject string
	// Chain is the parsed chain, device certificate first.
	Chain []*AttestationCertificate
}

// ErrAttestation means a device's attestation chain was refused; the
// error's text says why.
var ErrAttestation = errors.New("signed: attestation refused")

// Reasons a chain is refused. Each error from VerifyAttestation wraps
// ErrAttestation and exactly one of these; the firmware-spec vectors name
// them by the ids in their text.
var (
	errNoCertificates = errors.New("no_certificates")
	errTooLong        = errors.New("too_long")
	errMalformed      = errors.New("malformed")
	errWrongKind      = errors.New("wrong_kind")
	errWrongKey       = errors.New("wrong_key")
	errBrokenChain    = errors.New("broken_chain")
	errUntrustedRoot  = errors.New("untrusted_root")
	errBadSignature   = errors.New("bad_signature")
)

func refuse(reason error, format string, args ...any) error {
	return fmt.Errorf("%w: %w", ErrAttestation, &attestationError{reason, fmt.Sprintf(format, args...)})
}

type attestationError struct {
	reason error
	text   string
}

func (e *attestationError) Error() string { return e.text }
func (e *attestationError) Unwrap() error { return e.reason }

// VerifyAttestation checks that chain, device certificate first, attests
// the identity key (alg, identityKey) under one of roots. The identity key
// must be the one the device proved (in the channel handshake), never one
// it merely claimed. It checks, in this order, and refuses at the first
// failure:
//
//  1. the chain holds 1 to [MaxAttestationChain] certificates;
//  2. each parses ([ParseAttestationCertificate]);
//  3. the first is of [KindDevice], every other of [KindAuthority];
//  4. the first certifies the identity key (algorithm and key);
//  5. each certificate's issuer is the next one's subject (algorithm and
//     key);
//  6. the last certificate's issuer is one of roots (algorithm and key);
//  7. each certificate's signature verifies under its issuer key.
//
// Errors wrap [ErrAttestation] and name the certificate that failed.
func VerifyAttestation(chain [][]byte, alg pb.Algorithm, identityKey []byte, roots []Root) (*Attestation, error) {
	switch {
	case len(chain) == 0:
		return nil, refuse(errNoCertificates, "the device presented no attestation certificate")
	case len(chain) > MaxAttestationChain:
		return nil, refuse(errTooLong, "chain of %d certificates, at most %d allowed", len(chain), MaxAttestationChain)
	}
	certs := make([]*AttestationCertificate, len(chain))
	for i, b := range chain {
		c, err := ParseAttestationCertificate(b)
		if err != nil {
			return nil, refuse(errMalformed, "certificate %d: %v", i, err)
		}
		certs[i] = c
	}
	for i, c := range certs {
		want := KindAuthority
		if i == 0 {
			want = KindDevice
		}
		if c.Kind != want {
			return nil, refuse(errWrongKind, "certificate %d (%q) is a %v certificate, want %v", i, c.SubjectName, c.Kind, want)
		}
	}
	leaf := certs[0]
	if leaf.SubjectAlgorithm != alg || !bytes.Equal(leaf.SubjectKey, identityKey) {
		return nil, refuse(errWrongKey, "the device certificate is for key %s, not the device's identity key %s",
			Fingerprint(leaf.SubjectAlgorithm, leaf.SubjectKey), Fingerprint(alg, identityKey))
	}
	for i := 0; i+1 < len(certs); i++ {
		c, next := certs[i], certs[i+1]
		if c.IssuerAlgorithm != next.SubjectAlgorithm || !bytes.Equal(c.IssuerKey, next.SubjectKey) {
			return nil, refuse(errBrokenChain, "certificate %d is issued by key %s, but certificate %d certifies key %s",
				i, Fingerprint(c.IssuerAlgorithm, c.IssuerKey), i+1, Fingerprint(next.SubjectAlgorithm, next.SubjectKey))
		}
	}
	last := certs[len(certs)-1]
	root, ok := findRoot(roots, last.IssuerAlgorithm, last.IssuerKey)
	if !ok {
		if dev := DevelopmentRoot(); last.IssuerAlgorithm == dev.Algorithm && bytes.Equal(last.IssuerKey, dev.PublicKey) {
			return nil, refuse(errUntrustedRoot, "the chain ends at the development root (%s), which anyone can issue under and which is not a configured root",
				dev.Fingerprint())
		}
		return nil, refuse(errUntrustedRoot, "the chain ends at issuer key %s, which is not a configured root",
			Fingerprint(last.IssuerAlgorithm, last.IssuerKey))
	}
	for i, c := range certs {
		if err := Verify(c.IssuerAlgorithm, c.IssuerKey, c.Digest(), c.Signature); err != nil {
			return nil, refuse(errBadSignature, "certificate %d (%q): %v", i, c.SubjectName, err)
		}
	}
	return &Attestation{Root: root, Subject: leaf.SubjectName, Chain: certs}, nil
}

func findRoot(roots []Root, alg pb.Algorithm, key []byte) (Root, bool) {
	for _, r := range roots {
		if r.Algorithm == alg && bytes.Equal(r.PublicKey, key) {
			return r, true
		}
	}
	return Root{}, false
}
