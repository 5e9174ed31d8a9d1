package signed

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"testing"

	"github.com/btcsuite/btcd/btcec/v2"
	"golang.org/x/crypto/cryptobyte"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

var update = flag.Bool("update", false, "rewrite firmware-spec/vectors/attestation.json and firmware-spec/attestation/development-root.json from the definitions in attestation_vectors_test.go")

const (
	attestationVectorsPath = "../../firmware-spec/vectors/attestation.json"
	developmentRootPath    = "../../firmware-spec/attestation/development-root.json"
)

func (h hexBytes) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(h)) }

// The layout of firmware-spec/vectors/attestation.json; see
// firmware-spec/attestation.md, "Test vectors".
type attestationFile struct {
	Description   string            `json:"description"`
	Conventions   []string          `json:"conventions"`
	DevelopmentCA developmentVector `json:"development_ca"`
	Certificates  []certVector      `json:"certificates"`
	Chains        []chainVector     `json:"chains"`
}

type developmentVector struct {
	Root                    caKeyVector `json:"root"`
	Intermediate            caKeyVector `json:"intermediate"`
	IntermediateCertificate hexBytes    `json:"intermediate_certificate"`
}

type caKeyVector struct {
	Name        string   `json:"name"`
	SeedLabel   string   `json:"seed_label"`
	Algorithm   string   `json:"algorithm"`
	PrivateKey  hexBytes `json:"private_key"`
	PublicKey   hexBytes `json:"public_key"`
	Fingerprint string   `json:"fingerprint"`
}

type certVector struct {
	Name             string   `json:"name"`
	IssuerAlgorithm  string   `json:"issuer_algorithm"`
	IssuerPrivateKey hexBytes `json:"issuer_private_key"`
	IssuerPublicKey  hexBytes `json:"issuer_public_key"`
	Kind             uint8    `json:"kind"`
	SubjectAlgorithm string   `json:"subject_algorithm"`
	SubjectPublicKey hexBytes `json:"subject_public_key"`
	SubjectName      string   `json:"subject_name"`
	Statement        hexBytes `json:"statement"`
	Digest           hexBytes `json:"digest"`
	Signature        hexBytes `json:"signature"`
	Deterministic    bool     `json:"deterministic"`
	Encoded          hexBytes `json:"encoded"`
}

type rootVector struct {
	Name      string   `json:"name"`
	Algorithm string   `json:"algorithm"`
	PublicKey hexBytes `json:"public_key"`
}

type chainVector struct {
	Name              string       `json:"name"`
	Comment           string       `json:"comment,omitempty"`
	IdentityAlgorithm string       `json:"identity_algorithm"`
	IdentityPublicKey hexBytes     `json:"identity_public_key"`
	Chain             []hexBytes   `json:"chain"`
	Roots             []rootVector `json:"roots"`
	// Either Root and Subject (accepted), or Error (refused).
	Root    string `json:"root,omitempty"`
	Subject string `json:"subject,omitempty"`
	Error   string `json:"error,omitempty"`
}

var attestationErrors = map[string]error{
	"no_certificates": errNoCertificates,
	"too_long":        errTooLong,
	"malformed":       errMalformed,
	"wrong_kind":      errWrongKind,
	"wrong_key":       errWrongKey,
	"broken_chain":    errBrokenChain,
	"untrusted_root":  errUntrustedRoot,
	"bad_signature":   errBadSignature,
}

// reusingSigner signs as its key does, except that it returns a
// signature already in the vectors when it verifies over the same digest:
// P-256 signatures are randomized, and regenerating the file should not
// change them.
type reusingSigner struct {
	*SoftwareKey
	known map[string][]byte // digest hex → signature
}

func (s reusingSigner) SignDigest(d []byte) ([]byte, error) {
	if sig, ok := s.known[hex.EncodeToString(d)]; ok && Verify(s.Algorithm(), s.PublicKey(), d, sig) == nil {
		return sig, nil
	}
	return s.SoftwareKey.SignDigest(d)
}

// knownSignatures collects the signature of every certificate in an
// existing vectors file.
func knownSignatures(f *attestationFile) map[string][]byte {
	known := map[string][]byte{}
	add := func(b []byte) {
		if c, err := ParseAttestationCertificate(b); err == nil && c.VerifySignature() == nil {
			known[hex.EncodeToString(c.Digest())] = c.Signature
		}
	}
	if f == nil {
		return known
	}
	for _, c := range f.Certificates {
		add(c.Encoded)
	}
	for _, ch := range f.Chains {
		for _, b := range ch.Chain {
			add(b)
		}
	}
	return known
}

// buildAttestationVectors makes the vectors file from the definitions
// below. Expected outcomes are written here by hand, never computed:
// TestAttestationVectors checks them against VerifyAttestation.
func buildAttestationVectors(t *testing.T, known map[string][]byte) *attestationFile {
	t.Helper()
	key := func(alg pb.Algorithm, b byte) reusingSigner {
		k, err := SoftwareKeyFromBytes(alg, bytes.Repeat([]byte{b}, 32))
		if err != nil {
			t.Fatal(err)
		}
		return reusingSigner{k, known}
	}
	const (
		ed  = pb.Algorithm_ALGORITHM_ED25519
		p2  = pb.Algorithm_ALGORITHM_ECDSA_P256
		k1  = pb.Algorithm_ALGORITHM_ECDSA_SECP256K1
		emu = "OpenCustody Emulator"
	)
	issue := func(issuer Signer, kind CertificateKind, subject Signer, name string) *AttestationCertificate {
		c := &AttestationCertificate{Kind: kind, SubjectAlgorithm: subject.Algorithm(), SubjectKey: subject.PublicKey(), SubjectName: name}
		if err := c.Sign(issuer); err != nil {
			t.Fatal(err)
		}
		return c
	}

	f := &attestationFile{
		Description: "Attestation certificates and chains (firmware-spec/attestation.md). Test keys are the 32-byte value " +
			"named in each vector repeated (an Ed25519 seed or an ECDSA scalar); the development CA's keys are SHA-256 of " +
			"their published seed labels. Ed25519 and secp256k1 (RFC 6979) signatures are deterministic and must be " +
			"reproduced exactly; P-256 signatures are randomized and must verify.",
		Conventions: []string{
			"Byte strings are lowercase hex; algorithms are pb.Algorithm names; kind is 1 (device) or 2 (authority).",
			"certificates: statement is built from the fields, digest = SHA-256(statement), signature is the issuer's over the digest, encoded = u16(len(statement)) || statement || u16(len(signature)) || signature.",
			"chains: chain is Features.attestation, device certificate first, checked against identity_algorithm/identity_public_key (the key the device proved) and roots. " +
				"An accepted chain names the root (its name) and the subject (the device certificate's subject name); a refused one names the first failing check (attestation.md §4): " +
				"no_certificates, too_long, malformed, wrong_kind, wrong_key, broken_chain, untrusted_root, bad_signature.",
		},
	}

	// The development CA.
	ca := development()
	rootSeed, interSeed := ca.root.Bytes(), ca.intermediate.Bytes()
	f.DevelopmentCA = developmentVector{
		Root: caKeyVector{Name: DevelopmentRootName, SeedLabel: DevelopmentRootSeedLabel, Algorithm: ed.String(),
			PrivateKey: rootSeed, PublicKey: ca.root.PublicKey(), Fingerprint: DevelopmentRoot().Fingerprint()},
		Intermediate: caKeyVector{Name: DevelopmentIntermediateName, SeedLabel: DevelopmentIntermediateSeedLabel, Algorithm: k1.String(),
			PrivateKey: interSeed, PublicKey: ca.intermediate.PublicKey(), Fingerprint: Fingerprint(k1, ca.intermediate.PublicKey())},
		IntermediateCertificate: ca.intermediateCert,
	}

	// Single certificates, one per issuer algorithm.
	for _, d := range []struct {
		name    string
		issuer  reusingSigner
		kind    CertificateKind
		subject reusingSigner
		subName string
	}{
		{"Ed25519 issuer, device certificate", key(ed, 0x42), KindDevice, key(p2, 0x43), "Example Vault One"},
		{"P-256 issuer, authority certificate", key(p2, 0x42), KindAuthority, key(ed, 0x43), "Example Devices factory CA 7"},
		{"secp256k1 issuer, device certificate, non-ASCII name", key(k1, 0x42), KindDevice, key(k1, 0x43), "Exemple Coffre n° 1"},
	} {
		c := issue(d.issuer, d.kind, d.subject, d.subName)
		f.Certificates = append(f.Certificates, certVector{
			Name: d.name, IssuerAlgorithm: d.issuer.Algorithm().String(), IssuerPrivateKey: d.issuer.Bytes(), IssuerPublicKey: d.issuer.PublicKey(),
			Kind: uint8(d.kind), SubjectAlgorithm: d.subject.Algorithm().String(), SubjectPublicKey: d.subject.PublicKey(), SubjectName: d.subName,
			Statement: c.Statement(), Digest: c.Digest(), Signature: c.Signature, Deterministic: d.issuer.Algorithm() != p2, Encoded: c.Marshal(),
		})
	}

	// Chains.
	devRoot := rootVector{Name: DevelopmentRootName, Algorithm: ed.String(), PublicKey: ca.root.PublicKey()}
	vendorRootKey, factoryKey := key(p2, 0x50), key(p2, 0x51)
	vendorRoot := rootVector{Name: "Example Devices root 2026", Algorithm: p2.String(), PublicKey: vendorRootKey.PublicKey()}
	factoryCert := issue(vendorRootKey, KindAuthority, factoryKey, "Example Devices factory CA 7")
	devChain := func(dev Signer, name string) [][]byte {
		c, err := DevelopmentAttestation(dev.Algorithm(), dev.PublicKey(), name)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	hexChain := func(c ...[]byte) []hexBytes {
		out := make([]hexBytes, len(c))
		for i, b := range c {
			out[i] = b
		}
		return out
	}
	accept := func(name string, dev Signer, chain [][]byte, roots []rootVector, root, subject string) {
		f.Chains = append(f.Chains, chainVector{Name: name, IdentityAlgorithm: dev.Algorithm().String(), IdentityPublicKey: dev.PublicKey(),
			Chain: hexChain(chain...), Roots: roots, Root: root, Subject: subject})
	}
	reject := func(name, comment string, dev Signer, chain [][]byte, roots []rootVector, id string) {
		f.Chains = append(f.Chains, chainVector{Name: name, Comment: comment, IdentityAlgorithm: dev.Algorithm().String(), IdentityPublicKey: dev.PublicKey(),
			Chain: hexChain(chain...), Roots: roots, Error: id})
	}
	for _, alg := range []pb.Algorithm{ed, p2, k1} {
		dev := key(alg, 0x42)
		accept("development chain, "+alg.String()+" device key 0x42", dev, devChain(dev, emu), []rootVector{devRoot}, DevelopmentRootName, emu)
	}
	vendorDev := key(p2, 0x42)
	vendorLeaf := issue(factoryKey, KindDevice, vendorDev, "Example Vault One")
	accept("vendor chain: P-256 root 0x50, factory CA 0x51, P-256 device key 0x42", vendorDev,
		[][]byte{vendorLeaf.Marshal(), factoryCert.Marshal()}, []rootVector{devRoot, vendorRoot}, vendorRoot.Name, "Example Vault One")
	k1Dev := key(k1, 0x42)
	accept("device certificate issued by the root itself: secp256k1 device key 0x42", k1Dev,
		[][]byte{issue(vendorRootKey, KindDevice, k1Dev, "Example Vault Mini").Marshal()}, []rootVector{vendorRoot}, vendorRoot.Name, "Example Vault Mini")

	edDev, edOther := key(ed, 0x42), key(ed, 0x43)
	good := devChain(edDev, emu)
	reject("no certificates", "", edDev, nil, []rootVector{devRoot}, "no_certificates")
	reject("five certificates", "", edDev, [][]byte{good[0], good[1], good[1], good[1], good[1]}, []rootVector{devRoot}, "too_long")
	reject("trailing byte after a certificate", "", edDev, [][]byte{append(bytes.Clone(good[0]), 0), good[1]}, []rootVector{devRoot}, "malformed")
	{
		// Sign does not make such a certificate; build its statement directly.
		c := &AttestationCertificate{Kind: KindDevice, SubjectAlgorithm: ed, SubjectKey: edDev.PublicKey(), SubjectName: "Vault\x1b[2J",
			IssuerAlgorithm: k1, IssuerKey: ca.intermediate.PublicKey()}
		c.Signature, _ = ca.intermediate.SignDigest(c.Digest())
		reject("subject name with a control character", "signed by the development intermediate, but names must be printable", edDev,
			[][]byte{c.Marshal(), good[1]}, []rootVector{devRoot}, "malformed")
	}
	reject("device key issues a device certificate", "a key taken from device 0x42 (which has a valid chain) vouches for key 0x43", edOther,
		[][]byte{issue(edDev, KindDevice, edOther, emu).Marshal(), good[0], good[1]}, []rootVector{devRoot}, "wrong_kind")
	reject("first certificate is an authority certificate", "", edDev,
		[][]byte{issue(reusingSigner{ca.intermediate, known}, KindAuthority, edDev, emu).Marshal(), good[1]}, []rootVector{devRoot}, "wrong_kind")
	reject("chain of another device", "device 0x42's valid chain presented for key 0x43", edOther, good, []rootVector{devRoot}, "wrong_key")
	reject("device certificate and an unrelated authority", "", edDev, [][]byte{good[0], factoryCert.Marshal()},
		[]rootVector{devRoot, vendorRoot}, "broken_chain")
	reject("development chain, development root not configured", "", edDev, good, []rootVector{vendorRoot}, "untrusted_root")
	reject("vendor chain, only the development root configured", "", vendorDev,
		[][]byte{vendorLeaf.Marshal(), factoryCert.Marshal()}, []rootVector{devRoot}, "untrusted_root")
	{
		c, _ := ParseAttestationCertificate(good[0])
		c.SubjectName = "OpenCustody Emulatos"
		reject("subject name altered", "the device certificate's name changed after signing", edDev, [][]byte{c.Marshal(), good[1]}, []rootVector{devRoot}, "bad_signature")
	}
	{
		c, _ := ParseAttestationCertificate(good[1])
		c.Signature[10] ^= 1
		reject("intermediate signature altered", "", edDev, [][]byte{good[0], c.Marshal()}, []rootVector{devRoot}, "bad_signature")
	}
	{
		// The high-S twin of a secp256k1 signature verifies
		// mathematically but is not the canonical encoding.
		c, _ := ParseAttestationCertificate(good[0])
		r, s := parseDER(t, c.Signature)
		s.Sub(btcec.S256().N, s)
		c.Signature = encodeDER(r, s)
		reject("device certificate signed with high S", "secp256k1 signatures must have low S", edDev, [][]byte{c.Marshal(), good[1]},
			[]rootVector{devRoot}, "bad_signature")
	}
	return f
}

func marshalVectors(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func developmentRootFile(t *testing.T) []byte {
	t.Helper()
	b, err := MarshalRoots("The OpenCustody DEVELOPMENT attestation root. Its private key is SHA-256(\""+DevelopmentRootSeedLabel+
		"\"), published on purpose, so ANYONE can issue certificates under it: it lets the emulator present a chain. "+
		"Configure it only to develop and test with the emulator; a production hsmd must never trust it.", []Root{DevelopmentRoot()})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readAttestationVectors(t testing.TB) *attestationFile {
	t.Helper()
	raw, err := os.ReadFile(attestationVectorsPath)
	if err != nil {
		t.Fatal(err)
	}
	var f attestationFile
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		t.Fatal(err)
	}
	return &f
}

// TestAttestationVectors checks firmware-spec/vectors/attestation.json and
// firmware-spec/attestation/development-root.json: each file must be what
// the definitions produce (so code and spec cannot drift), and each chain
// must have the stated outcome. With -update it rewrites both files first.
func TestAttestationVectors(t *testing.T) {
	if *update {
		var old *attestationFile
		if _, err := os.Stat(attestationVectorsPath); err == nil {
			old = readAttestationVectors(t)
		}
		if err := os.WriteFile(attestationVectorsPath, marshalVectors(t, buildAttestationVectors(t, knownSignatures(old))), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(developmentRootPath, developmentRootFile(t), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f := readAttestationVectors(t)
	raw, _ := os.ReadFile(attestationVectorsPath)
	if want := marshalVectors(t, buildAttestationVectors(t, knownSignatures(f))); !bytes.Equal(raw, want) {
		t.Errorf("%s differs from the definitions (run go test -run TestAttestationVectors -update)", attestationVectorsPath)
	}
	if raw, err := os.ReadFile(developmentRootPath); err != nil || !bytes.Equal(raw, developmentRootFile(t)) {
		t.Errorf("%s differs from DevelopmentRoot (run go test -run TestAttestationVectors -update): %v", developmentRootPath, err)
	}
	roots, err := LoadRoots(developmentRootPath)
	if err != nil || len(roots) != 1 || !roots[0].IsDevelopment() || roots[0].Name != DevelopmentRootName {
		t.Fatalf("development root file: %+v, %v", roots, err)
	}

	for _, v := range f.Certificates {
		t.Run("certificate/"+v.Name, func(t *testing.T) {
			alg := pb.Algorithm(pb.Algorithm_value[v.IssuerAlgorithm])
			k, err := SoftwareKeyFromBytes(alg, v.IssuerPrivateKey)
			if err != nil || !bytes.Equal(k.PublicKey(), v.IssuerPublicKey) {
				t.Fatalf("issuer key: %v", err)
			}
			c := &AttestationCertificate{Kind: CertificateKind(v.Kind), SubjectAlgorithm: pb.Algorithm(pb.Algorithm_value[v.SubjectAlgorithm]),
				SubjectKey: v.SubjectPublicKey, SubjectName: v.SubjectName, IssuerAlgorithm: alg, IssuerKey: v.IssuerPublicKey, Signature: v.Signature}
			if !bytes.Equal(c.Statement(), v.Statement) || !bytes.Equal(c.Digest(), v.Digest) || !bytes.Equal(c.Marshal(), v.Encoded) {
				t.Fatal("statement, digest or encoding differs")
			}
			if err := c.VerifySignature(); err != nil {
				t.Fatal(err)
			}
			if v.Deterministic {
				if sig, _ := k.SignDigest(v.Digest); !bytes.Equal(sig, v.Signature) {
					t.Fatalf("signature not reproduced:\n got %x\nwant %x", sig, v.Signature)
				}
			}
			p, err := ParseAttestationCertificate(v.Encoded)
			if err != nil || !bytes.Equal(p.Marshal(), v.Encoded) {
				t.Fatalf("parse: %v", err)
			}
		})
	}

	dc := f.DevelopmentCA
	for _, k := range []caKeyVector{dc.Root, dc.Intermediate} {
		alg := pb.Algorithm(pb.Algorithm_value[k.Algorithm])
		sk, err := SoftwareKeyFromBytes(alg, k.PrivateKey)
		if err != nil || !bytes.Equal(sk.PublicKey(), k.PublicKey) || Fingerprint(alg, k.PublicKey) != k.Fingerprint {
			t.Errorf("development key %q does not match its private key: %v", k.Name, err)
		}
	}

	accepted, refused := map[string]bool{}, map[string]bool{}
	for _, v := range f.Chains {
		t.Run("chain/"+v.Name, func(t *testing.T) {
			var roots []Root
			for _, r := range v.Roots {
				roots = append(roots, Root{Name: r.Name, Algorithm: pb.Algorithm(pb.Algorithm_value[r.Algorithm]), PublicKey: r.PublicKey})
			}
			chain := make([][]byte, len(v.Chain))
			for i, b := range v.Chain {
				chain[i] = b
			}
			a, err := VerifyAttestation(chain, pb.Algorithm(pb.Algorithm_value[v.IdentityAlgorithm]), v.IdentityPublicKey, roots)
			if v.Error != "" {
				want, ok := attestationErrors[v.Error]
				if !ok {
					t.Fatalf("unknown error id %q", v.Error)
				}
				if a != nil || !errors.Is(err, ErrAttestation) || !errors.Is(err, want) {
					t.Fatalf("got %v, want %s", err, v.Error)
				}
				refused[v.Error] = true
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a.Root.Name != v.Root || a.Subject != v.Subject || len(a.Chain) != len(chain) {
				t.Fatalf("accepted under %q as %q, want %q as %q", a.Root.Name, a.Subject, v.Root, v.Subject)
			}
			accepted[v.IdentityAlgorithm] = true
		})
	}
	if len(accepted) != 3 || len(refused) != len(attestationErrors) {
		t.Errorf("vectors accept identity algorithms %v and refuse with %v: want every algorithm and every error", accepted, refused)
	}
}

// The vector statements are built the way the spec says, independently of
// the Go builder: label, then each field with its length prefix.
func TestAttestationStatementLayout(t *testing.T) {
	f := readAttestationVectors(t)
	for _, v := range f.Certificates {
		b := cryptobyte.NewBuilder([]byte("OpenCustody attestation certificate v1\x00"))
		b.AddUint8(v.Kind)
		b.AddUint8(uint8(pb.Algorithm_value[v.SubjectAlgorithm]))
		b.AddUint8(uint8(len(v.SubjectPublicKey)))
		b.AddBytes(v.SubjectPublicKey)
		b.AddUint16(uint16(len(v.SubjectName)))
		b.AddBytes([]byte(v.SubjectName))
		b.AddUint8(uint8(pb.Algorithm_value[v.IssuerAlgorithm]))
		b.AddUint8(uint8(len(v.IssuerPublicKey)))
		b.AddBytes(v.IssuerPublicKey)
		if !bytes.Equal(b.BytesOrPanic(), v.Statement) {
			t.Errorf("%s: statement layout differs", v.Name)
		}
	}
}
