package signed

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/btcsuite/btcd/btcec/v2"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

// A roots file lists attestation roots in JSON (firmware-spec/attestation.md):
//
//	{
//	  "description": "free text, optional",
//	  "roots": [
//	    {
//	      "name": "Example Devices factory root 2026",
//	      "algorithm": "ALGORITHM_ECDSA_P256",
//	      "public_key": "02…",
//	      "fingerprint": "1a2b 3c4d …"
//	    }
//	  ]
//	}
type rootsFile struct {
	Description string     `json:"description,omitempty"`
	Roots       []rootJSON `json:"roots"`
}

type rootJSON struct {
	Name        string `json:"name"`
	Algorithm   string `json:"algorithm"`
	PublicKey   string `json:"public_key"`
	Fingerprint string `json:"fingerprint"`
}

// LoadRoots reads a roots file (see [ParseRoots]).
func LoadRoots(path string) ([]Root, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signed: attestation roots: %w", err)
	}
	roots, err := ParseRoots(b)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return roots, nil
}

// ParseRoots decodes a roots file: a JSON object with an optional
// "description" and a non-empty "roots" list, each root with a "name" (1 to
// [MaxNameSize] bytes of printable UTF-8), an "algorithm" (a pb.Algorithm
// name such as "ALGORITHM_ED25519"), a "public_key" (lowercase hex of the
// wire encoding, a valid point) and its "fingerprint" (see [Fingerprint]),
// which must match the key: it is what the vendor publishes and the
// operator compares. Unknown fields, two roots with the same key, and
// data after the object are errors.
func ParseRoots(data []byte) ([]Root, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f rootsFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("signed: attestation roots: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("signed: attestation roots: data after the JSON object")
	}
	if len(f.Roots) == 0 {
		return nil, errors.New("signed: attestation roots: the file lists no roots")
	}
	var roots []Root
	for i, j := range f.Roots {
		r, err := j.root()
		if err != nil {
			return nil, fmt.Errorf("signed: attestation root %d (%q): %w", i, j.Name, err)
		}
		if prev, dup := findRoot(roots, r.Algorithm, r.PublicKey); dup {
			return nil, fmt.Errorf("signed: attestation root %d (%q): same key as %q", i, j.Name, prev.Name)
		}
		roots = append(roots, r)
	}
	return roots, nil
}

func (j rootJSON) root() (Root, error) {
	if err := checkName(j.Name); err != nil {
		return Root{}, err
	}
	v, ok := pb.Algorithm_value[j.Algorithm]
	alg := pb.Algorithm(v)
	if !ok {
		return Root{}, fmt.Errorf("unknown algorithm %q", j.Algorithm)
	}
	key, err := hex.DecodeString(j.PublicKey)
	if err != nil || hex.EncodeToString(key) != j.PublicKey {
		return Root{}, errors.New("public_key is not lowercase hex")
	}
	if err := checkPublicKey(alg, key); err != nil {
		return Root{}, err
	}
	r := Root{Name: j.Name, Algorithm: alg, PublicKey: key}
	if r.Fingerprint() != j.Fingerprint {
		return Root{}, fmt.Errorf("fingerprint %q does not match the key, whose fingerprint is %q", j.Fingerprint, r.Fingerprint())
	}
	return r, nil
}

// MarshalRoots encodes roots as a roots file (see [ParseRoots]), for a
// vendor to publish.
func MarshalRoots(description string, roots []Root) ([]byte, error) {
	f := rootsFile{Description: description}
	for _, r := range roots {
		j := rootJSON{Name: r.Name, Algorithm: r.Algorithm.String(), PublicKey: hex.EncodeToString(r.PublicKey), Fingerprint: r.Fingerprint()}
		if _, err := j.root(); err != nil {
			return nil, fmt.Errorf("signed: attestation root %q: %w", r.Name, err)
		}
		f.Roots = append(f.Roots, j)
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// checkPublicKey checks that pub is a valid wire encoding for alg.
func checkPublicKey(alg pb.Algorithm, pub []byte) error {
	switch alg {
	case pb.Algorithm_ALGORITHM_ED25519:
		if len(pub) != 32 {
			return fmt.Errorf("%w: ed25519 key is %d bytes", ErrBadPublicKey, len(pub))
		}
		return nil
	case pb.Algorithm_ALGORITHM_ECDSA_P256:
		_, err := ParseP256(pub)
		return err
	case pb.Algorithm_ALGORITHM_ECDSA_SECP256K1:
		if _, err := btcec.ParsePubKey(pub); err != nil || len(pub) != 33 {
			return fmt.Errorf("%w: secp256k1 key must be 33-byte compressed", ErrBadPublicKey)
		}
		return nil
	}
	return fmt.Errorf("%w: %v", ErrUnknownAlgorithm, alg)
}

// The development attestation CA. Its private keys are derived from
// published labels, so anyone can issue certificates under it: it exists
// so that the emulator can present a chain and the attestation path can be
// exercised end to end. A production hsmd must never trust it.
const (
	// DevelopmentRootName is the development root's name.
	DevelopmentRootName = "OpenCustody development root (not for production)"
	// DevelopmentIntermediateName is the subject name of the development
	// intermediate, which issues the device certificates.
	DevelopmentIntermediateName = "OpenCustody development intermediate"
	// DevelopmentRootSeedLabel: the root's Ed25519 seed is SHA-256 of it.
	DevelopmentRootSeedLabel = "OpenCustody development attestation root v1"
	// DevelopmentIntermediateSeedLabel: the intermediate's secp256k1
	// scalar is SHA-256 of it.
	DevelopmentIntermediateSeedLabel = "OpenCustody development attestation intermediate v1"
)

type developmentCA struct {
	root, intermediate *SoftwareKey
	intermediateCert   []byte
}

var development = sync.OnceValue(func() *developmentCA {
	key := func(alg pb.Algorithm, label string) *SoftwareKey {
		seed := sha256.Sum256([]byte(label))
		k, err := SoftwareKeyFromBytes(alg, seed[:])
		if err != nil {
			panic(err)
		}
		return k
	}
	ca := &developmentCA{
		root:         key(pb.Algorithm_ALGORITHM_ED25519, DevelopmentRootSeedLabel),
		intermediate: key(pb.Algorithm_ALGORITHM_ECDSA_SECP256K1, DevelopmentIntermediateSeedLabel),
	}
	c := &AttestationCertificate{Kind: KindAuthority, SubjectAlgorithm: ca.intermediate.Algorithm(),
		SubjectKey: ca.intermediate.PublicKey(), SubjectName: DevelopmentIntermediateName}
	if err := c.Sign(ca.root); err != nil {
		panic(err)
	}
	ca.intermediateCert = c.Marshal()
	return ca
})

// DevelopmentRoot is the development attestation root: an Ed25519 key
// whose seed is SHA-256([DevelopmentRootSeedLabel]). It is published in
// firmware-spec/attestation/development-root.json. Anyone can issue
// certificates under it, so trusting it attests nothing: configure it only
// to develop and test with the emulator, never in production.
func DevelopmentRoot() Root {
	k := development().root
	return Root{Name: DevelopmentRootName, Algorithm: k.Algorithm(), PublicKey: k.PublicKey()}
}

// DevelopmentAttestation issues a chain under the development root for
// the device identity key (alg, identityKey), with subject as the device
// certificate's subject name (for example the emulator's model). The chain
// is ready for Features.attestation: the device certificate, issued by the
// development intermediate, then the intermediate's certificate, issued by
// the development root. Both signatures are deterministic, so the same
// inputs give the same chain. For the emulator and tests only; see
// [DevelopmentRoot].
func DevelopmentAttestation(alg pb.Algorithm, identityKey []byte, subject string) ([][]byte, error) {
	if err := checkPublicKey(alg, identityKey); err != nil {
		return nil, fmt.Errorf("signed: development attestation: %w", err)
	}
	ca := development()
	leaf := &AttestationCertificate{Kind: KindDevice, SubjectAlgorithm: alg, SubjectKey: bytes.Clone(identityKey), SubjectName: subject}
	if err := leaf.Sign(ca.intermediate); err != nil {
		return nil, err
	}
	return [][]byte{leaf.Marshal(), bytes.Clone(ca.intermediateCert)}, nil
}
