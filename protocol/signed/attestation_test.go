package signed

import (
	"bytes"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

// testCA is an attestation hierarchy for tests: a root and a factory CA of
// algorithm alg.
type testCA struct {
	root, factory *SoftwareKey
	factoryCert   []byte
}

func newTestCA(t *testing.T, alg pb.Algorithm) *testCA {
	t.Helper()
	ca := &testCA{root: mustKey(t, alg), factory: mustKey(t, alg)}
	c := &AttestationCertificate{Kind: KindAuthority, SubjectAlgorithm: alg, SubjectKey: ca.factory.PublicKey(), SubjectName: "factory CA"}
	if err := c.Sign(ca.root); err != nil {
		t.Fatal(err)
	}
	ca.factoryCert = c.Marshal()
	return ca
}

func (ca *testCA) Root() Root {
	return Root{Name: "test root", Algorithm: ca.root.Algorithm(), PublicKey: ca.root.PublicKey()}
}

func (ca *testCA) chain(t *testing.T, dev Signer) [][]byte {
	t.Helper()
	c := &AttestationCertificate{Kind: KindDevice, SubjectAlgorithm: dev.Algorithm(), SubjectKey: dev.PublicKey(), SubjectName: "Test Vault"}
	if err := c.Sign(ca.factory); err != nil {
		t.Fatal(err)
	}
	return [][]byte{c.Marshal(), ca.factoryCert}
}

func mustKey(t *testing.T, alg pb.Algorithm) *SoftwareKey {
	t.Helper()
	k, err := GenerateSoftwareKey(alg, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestAttestationEveryAlgorithm(t *testing.T) {
	for _, caAlg := range algorithms {
		for _, devAlg := range algorithms {
			ca := newTestCA(t, caAlg)
			dev := mustKey(t, devAlg)
			chain := ca.chain(t, dev)
			for _, b := range chain {
				c, err := ParseAttestationCertificate(b)
				if err != nil || !bytes.Equal(c.Marshal(), b) || c.VerifySignature() != nil {
					t.Fatalf("%v/%v: certificate did not round-trip: %v", caAlg, devAlg, err)
				}
			}
			a, err := VerifyAttestation(chain, devAlg, dev.PublicKey(), []Root{DevelopmentRoot(), ca.Root()})
			if err != nil {
				t.Fatalf("%v CA, %v device: %v", caAlg, devAlg, err)
			}
			if a.Root.Name != "test root" || a.Subject != "Test Vault" || a.Root.IsDevelopment() {
				t.Fatalf("attestation %+v", a)
			}
		}
	}
}

func TestVerifyAttestationRefusals(t *testing.T) {
	ca, other := newTestCA(t, pb.Algorithm_ALGORITHM_ECDSA_P256), newTestCA(t, pb.Algorithm_ALGORITHM_ED25519)
	dev, dev2 := mustKey(t, pb.Algorithm_ALGORITHM_ED25519), mustKey(t, pb.Algorithm_ALGORITHM_ED25519)
	roots := []Root{ca.Root()}
	good := ca.chain(t, dev)
	tamper := func(i int, f func(*AttestationCertificate)) [][]byte {
		c, err := ParseAttestationCertificate(good[i])
		if err != nil {
			t.Fatal(err)
		}
		f(c)
		out := [][]byte{good[0], good[1]}
		out[i] = c.Marshal()
		return out
	}
	devCert := func(issuer Signer, kind CertificateKind, subject Signer) []byte {
		c := &AttestationCertificate{Kind: kind, SubjectAlgorithm: subject.Algorithm(), SubjectKey: subject.PublicKey(), SubjectName: "x"}
		if err := c.Sign(issuer); err != nil {
			t.Fatal(err)
		}
		return c.Marshal()
	}
	for _, tc := range []struct {
		name  string
		chain [][]byte
		key   *SoftwareKey
		alg   pb.Algorithm // default: key's
		roots []Root
		want  error
	}{
		{"none", nil, dev, 0, roots, errNoCertificates},
		{"too long", [][]byte{good[0], good[1], good[1], good[1], good[1]}, dev, 0, roots, errTooLong},
		{"garbage", [][]byte{good[0], {1, 2, 3}}, dev, 0, roots, errMalformed},
		{"leaf is an authority", tamper(0, func(c *AttestationCertificate) { c.Kind = KindAuthority }), dev, 0, roots, errWrongKind},
		{"intermediate is a device", tamper(1, func(c *AttestationCertificate) { c.Kind = KindDevice }), dev, 0, roots, errWrongKind},
		{"device vouches for a device", [][]byte{devCert(dev, KindDevice, dev2), good[0], good[1]}, dev2, 0, roots, errWrongKind},
		{"another device's chain", good, dev2, 0, roots, errWrongKey},
		{"same key, other algorithm", good, dev, pb.Algorithm_ALGORITHM_ECDSA_P256, roots, errWrongKey},
		{"other CA's intermediate", [][]byte{good[0], other.factoryCert}, dev, 0, []Root{ca.Root(), other.Root()}, errBrokenChain},
		{"intermediate key swapped", tamper(1, func(c *AttestationCertificate) {
			c.SubjectAlgorithm, c.SubjectKey = other.factory.Algorithm(), other.factory.PublicKey()
		}), dev, 0, roots, errBrokenChain},
		{"intermediate algorithm swapped", tamper(1, func(c *AttestationCertificate) { c.SubjectAlgorithm = pb.Algorithm_ALGORITHM_ECDSA_SECP256K1 }), dev, 0, roots, errBrokenChain},
		{"other root", good, dev, 0, []Root{other.Root(), DevelopmentRoot()}, errUntrustedRoot},
		{"no roots", good, dev, 0, nil, errUntrustedRoot},
		{"root of the other algorithm", good, dev, 0, []Root{{Name: "r", Algorithm: pb.Algorithm_ALGORITHM_ECDSA_SECP256K1, PublicKey: ca.root.PublicKey()}}, errUntrustedRoot},
		{"leaf name", tamper(0, func(c *AttestationCertificate) { c.SubjectName = "Test Vaulu" }), dev, 0, roots, errBadSignature},
		{"leaf signature", tamper(0, func(c *AttestationCertificate) { c.Signature[len(c.Signature)-2] ^= 1 }), dev, 0, roots, errBadSignature},
		{"intermediate name", tamper(1, func(c *AttestationCertificate) { c.SubjectName = "factory CB" }), dev, 0, roots, errBadSignature},
		{"root signature", tamper(1, func(c *AttestationCertificate) { c.Signature[len(c.Signature)-2] ^= 1 }), dev, 0, roots, errBadSignature},
	} {
		alg := tc.alg
		if alg == 0 {
			alg = tc.key.Algorithm()
		}
		a, err := VerifyAttestation(tc.chain, alg, tc.key.PublicKey(), tc.roots)
		if a != nil || !errors.Is(err, ErrAttestation) || !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestDevelopmentAttestation(t *testing.T) {
	for _, alg := range algorithms {
		dev := mustKey(t, alg)
		chain, err := DevelopmentAttestation(alg, dev.PublicKey(), "OpenCustody Emulator")
		if err != nil {
			t.Fatal(err)
		}
		again, _ := DevelopmentAttestation(alg, dev.PublicKey(), "OpenCustody Emulator")
		if len(chain) != 2 || !bytes.Equal(chain[0], again[0]) || !bytes.Equal(chain[1], again[1]) {
			t.Fatal("development chain is not deterministic")
		}
		a, err := VerifyAttestation(chain, alg, dev.PublicKey(), []Root{DevelopmentRoot()})
		if err != nil || !a.Root.IsDevelopment() || a.Subject != "OpenCustody Emulator" {
			t.Fatalf("%v: %+v, %v", alg, a, err)
		}
		if a.Chain[1].SubjectName != DevelopmentIntermediateName {
			t.Fatalf("intermediate %q", a.Chain[1].SubjectName)
		}
		// Without the development root configured, the error says what
		// the chain is.
		_, err = VerifyAttestation(chain, alg, dev.PublicKey(), []Root{newTestCA(t, alg).Root()})
		if !errors.Is(err, errUntrustedRoot) || !strings.Contains(err.Error(), "development root") {
			t.Fatalf("development chain, other root: %v", err)
		}
	}
	if _, err := DevelopmentAttestation(pb.Algorithm_ALGORITHM_ECDSA_P256, make([]byte, 33), "x"); err == nil {
		t.Fatal("chain issued for an invalid key")
	}
	if _, err := DevelopmentAttestation(pb.Algorithm_ALGORITHM_ED25519, make([]byte, 32), "bad\nname"); err == nil {
		t.Fatal("chain issued with an unprintable name")
	}
	if (Root{Name: DevelopmentRootName, Algorithm: pb.Algorithm_ALGORITHM_ED25519, PublicKey: make([]byte, 32)}).IsDevelopment() {
		t.Fatal("a root is development by its name")
	}
}

func TestAttestationSignRefusesInvalidFields(t *testing.T) {
	issuer := mustKey(t, pb.Algorithm_ALGORITHM_ED25519)
	sub := mustKey(t, pb.Algorithm_ALGORITHM_ECDSA_P256).PublicKey()
	for name, c := range map[string]AttestationCertificate{
		"kind 0":           {SubjectAlgorithm: pb.Algorithm_ALGORITHM_ECDSA_P256, SubjectKey: sub, SubjectName: "x"},
		"kind 3":           {Kind: 3, SubjectAlgorithm: pb.Algorithm_ALGORITHM_ECDSA_P256, SubjectKey: sub, SubjectName: "x"},
		"no algorithm":     {Kind: KindDevice, SubjectKey: sub, SubjectName: "x"},
		"key length":       {Kind: KindDevice, SubjectAlgorithm: pb.Algorithm_ALGORITHM_ED25519, SubjectKey: sub, SubjectName: "x"},
		"empty name":       {Kind: KindDevice, SubjectAlgorithm: pb.Algorithm_ALGORITHM_ECDSA_P256, SubjectKey: sub},
		"long name":        {Kind: KindDevice, SubjectAlgorithm: pb.Algorithm_ALGORITHM_ECDSA_P256, SubjectKey: sub, SubjectName: strings.Repeat("a", MaxNameSize+1)},
		"invalid UTF-8":    {Kind: KindDevice, SubjectAlgorithm: pb.Algorithm_ALGORITHM_ECDSA_P256, SubjectKey: sub, SubjectName: "a\xffb"},
		"bidi override":    {Kind: KindDevice, SubjectAlgorithm: pb.Algorithm_ALGORITHM_ECDSA_P256, SubjectKey: sub, SubjectName: "a\u202eb"},
		"terminal escape":  {Kind: KindDevice, SubjectAlgorithm: pb.Algorithm_ALGORITHM_ECDSA_P256, SubjectKey: sub, SubjectName: "a\x1b[0m"},
		"zero-width space": {Kind: KindDevice, SubjectAlgorithm: pb.Algorithm_ALGORITHM_ECDSA_P256, SubjectKey: sub, SubjectName: "a\u200bb"},
	} {
		c.Signature = []byte{1}
		if err := c.Sign(issuer); err == nil || c.Signature != nil {
			t.Errorf("%s: signed", name)
		}
	}
	ok := AttestationCertificate{Kind: KindDevice, SubjectAlgorithm: pb.Algorithm_ALGORITHM_ECDSA_P256, SubjectKey: sub,
		SubjectName: strings.Repeat("é", MaxNameSize/2)}
	if err := ok.Sign(issuer); err != nil {
		t.Fatalf("longest name refused: %v", err)
	}
}

func TestParseAttestationCertificateMalformed(t *testing.T) {
	ca := newTestCA(t, pb.Algorithm_ALGORITHM_ED25519)
	good := ca.factoryCert
	// The statement's fields start after the outer length and the label.
	field := 2 + len(AttestationLabel)
	for name, b := range map[string][]byte{
		"empty":        nil,
		"truncated":    good[:len(good)-1],
		"trailing":     append(bytes.Clone(good), 0),
		"label":        func() []byte { b := bytes.Clone(good); b[5] ^= 1; return b }(),
		"kind":         func() []byte { b := bytes.Clone(good); b[field] = 9; return b }(),
		"algorithm":    func() []byte { b := bytes.Clone(good); b[field+1] = 7; return b }(),
		"key length":   func() []byte { b := bytes.Clone(good); b[field+1] = byte(pb.Algorithm_ALGORITHM_ECDSA_P256); return b }(),
		"credential":   func() []byte { c, _ := testCredential(t, pb.Algorithm_ALGORITHM_ED25519); return c.Marshal() }(),
		"no signature": good[:2+(int(good[0])<<8|int(good[1]))],
	} {
		c, err := ParseAttestationCertificate(b)
		if c != nil || !errors.Is(err, ErrMalformedAttestation) {
			t.Errorf("%s: got %v, want ErrMalformedAttestation", name, err)
		}
	}
}

func TestParseRoots(t *testing.T) {
	dev := DevelopmentRoot()
	p256 := newTestCA(t, pb.Algorithm_ALGORITHM_ECDSA_P256).Root()
	p256.Name = "Example Devices root 2026"
	b, err := MarshalRoots("two roots", []Root{p256, dev})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "roots.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	roots, err := LoadRoots(path)
	if err != nil || len(roots) != 2 || roots[0].Name != p256.Name || !bytes.Equal(roots[0].PublicKey, p256.PublicKey) ||
		roots[0].Algorithm != p256.Algorithm || !roots[1].IsDevelopment() || roots[0].IsDevelopment() {
		t.Fatalf("roots %+v, %v", roots, err)
	}
	if _, err := LoadRoots(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Fatal("missing file loaded")
	}

	s := string(b)
	key := roots[0].PublicKey
	// Keys that are not valid points, listed with their own fingerprint
	// so that only the key check can refuse them.
	offCurve := append([]byte{2}, make([]byte, 32)...)
	for x := byte(1); ; x++ {
		offCurve[32] = x
		if px, _ := elliptic.UnmarshalCompressed(elliptic.P256(), offCurve); px == nil {
			break
		}
	}
	invalid := func(alg pb.Algorithm, key []byte) string {
		return `{"roots": [` + rootEntry(Root{Name: "r", Algorithm: alg, PublicKey: key}) + `]}`
	}
	for name, bad := range map[string]string{
		"empty":             ``,
		"no roots":          `{"roots": []}`,
		"not JSON":          `roots`,
		"unknown field":     strings.Replace(s, `"name"`, `"trust": true, "name"`, 1),
		"trailing data":     s + `{}`,
		"fingerprint":       strings.Replace(s, p256.Fingerprint()[:4], "ffff", 1),
		"no fingerprint":    `{"roots": [{"name": "r", "algorithm": "ALGORITHM_ED25519", "public_key": "` + strings.Repeat("ab", 32) + `"}]}`,
		"algorithm":         strings.Replace(s, "ALGORITHM_ECDSA_P256", "ALGORITHM_UNSPECIFIED", 1),
		"algorithm name":    strings.Replace(s, "ALGORITHM_ECDSA_P256", "P256", 1),
		"uppercase hex":     strings.Replace(s, hexString(key), strings.ToUpper(hexString(key)), 1),
		"p-256 off curve":   invalid(pb.Algorithm_ALGORITHM_ECDSA_P256, offCurve),
		"secp256k1 prefix":  invalid(pb.Algorithm_ALGORITHM_ECDSA_SECP256K1, append([]byte{4}, key[1:]...)),
		"ed25519 size":      invalid(pb.Algorithm_ALGORITHM_ED25519, key),
		"name":              strings.Replace(s, p256.Name, `bad\u0007name`, 1),
		"empty name":        strings.Replace(s, p256.Name, ``, 1),
		"duplicated roots":  `{"roots": [` + rootEntry(dev) + `,` + rootEntry(dev) + `]}`,
		"key of wrong size": strings.Replace(s, hexString(dev.PublicKey), hexString(dev.PublicKey[:31]), 1),
	} {
		if _, err := ParseRoots([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func hexString(b []byte) string { return hex.EncodeToString(b) }

func rootEntry(r Root) string {
	return `{"name": "` + r.Name + `", "algorithm": "` + r.Algorithm.String() + `", "public_key": "` + hexString(r.PublicKey) +
		`", "fingerprint": "` + r.Fingerprint() + `"}`
}

// FuzzParseAttestationCertificate checks that whatever parses re-encodes
// to the same bytes and has valid fields, and that nothing panics, through
// parsing, verifying a signature and verifying a chain.
func FuzzParseAttestationCertificate(f *testing.F) {
	v := readAttestationVectors(f)
	for _, c := range v.Certificates {
		f.Add([]byte(c.Encoded))
	}
	for _, ch := range v.Chains {
		for _, b := range ch.Chain {
			f.Add([]byte(b))
		}
	}
	f.Add([]byte(v.DevelopmentCA.IntermediateCertificate))
	roots := []Root{DevelopmentRoot()}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseAttestationCertificate(b)
		if err != nil {
			if c != nil || !errors.Is(err, ErrMalformedAttestation) {
				t.Fatalf("error %v with certificate %v", err, c)
			}
			return
		}
		if !bytes.Equal(c.Marshal(), b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", c.Marshal(), b)
		}
		if err := c.check(); err != nil {
			t.Fatalf("parsed certificate has invalid fields: %v", err)
		}
		_ = c.VerifySignature()
		a, err := VerifyAttestation([][]byte{b, development().intermediateCert}, c.SubjectAlgorithm, c.SubjectKey, roots)
		if (a == nil) == (err == nil) {
			t.Fatalf("VerifyAttestation returned %v and %v", a, err)
		}
	})
}
