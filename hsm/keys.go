package hsm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/opencustodynet/opencustody/hsm/p11uri"
)

// key is a key found on the token: what an operation needs, looked up once
// per login and cached by the caller's reference string.
type key struct {
	label   string
	id      []byte
	class   uint // CKO_PRIVATE_KEY or CKO_SECRET_KEY
	alg     Algorithm
	keyType uint
	handle  pkcs11.ObjectHandle
	mech    []*pkcs11.Mechanism // the signing or MAC mechanism; read-only
	mechErr error               // why the token cannot use the key, or nil
}

// maxCachedKeys bounds the key cache; past it the cache starts over.
const maxCachedKeys = 4096

// Shared read-only mechanism lists (miekg/pkcs11 only reads them).
var (
	mechECDSA = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}
	mechEdDSA = []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdDSA, nil)}
	mechHMAC  = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}
)

// keyRef is a parsed key reference: a label, or a pkcs11: URI.
type keyRef struct {
	label string
	id    []byte
	class uint // 0: private or secret
}

func parseKeyRef(ref string) (keyRef, error) {
	if ref == "" {
		return keyRef{}, errors.New("hsm: no key named: give a key label or a pkcs11: URI")
	}
	if !strings.HasPrefix(ref, p11uri.Scheme) {
		return keyRef{label: ref}, nil
	}
	u, err := p11uri.Parse(ref)
	if err != nil {
		return keyRef{}, fmt.Errorf("hsm: key reference: %w", err)
	}
	r := keyRef{label: u.Object, id: u.ID}
	switch u.Type {
	case "":
	case "private":
		r.class = pkcs11.CKO_PRIVATE_KEY
	case "secret-key":
		r.class = pkcs11.CKO_SECRET_KEY
	default:
		return keyRef{}, fmt.Errorf("hsm: key reference %s: type=%s names no signing or MAC key; use type=private or type=secret-key", u.Redacted(), u.Type)
	}
	if r.label == "" && len(r.id) == 0 {
		return keyRef{}, fmt.Errorf("hsm: key reference %s names no key: add object= or id=", u.Redacted())
	}
	return r, nil
}

// lookup returns the key ref names and the login generation it belongs to.
func (s *PKCS11Store) lookup(ctx context.Context, ref string) (*key, uint64, error) {
	s.keysMu.RLock()
	k, gen := s.keys[ref], s.gen
	s.keysMu.RUnlock()
	if k != nil {
		return k, gen, nil
	}
	r, err := parseKeyRef(ref)
	if err != nil {
		return nil, gen, err
	}
	sh, err := s.pool.get(ctx)
	if err != nil {
		return nil, gen, fmt.Errorf("hsm: token %q: %w", s.info.Label, err)
	}
	k, err = s.find(sh, ref, r)
	s.pool.put(sh, err == nil || errors.Is(err, ErrKeyNotFound))
	if err != nil {
		return nil, gen, err
	}
	s.keysMu.Lock()
	if s.gen == gen { // a handle from an older login is useless
		if len(s.keys) >= maxCachedKeys {
			clear(s.keys)
		}
		s.keys[ref] = k
	}
	s.keysMu.Unlock()
	return k, gen, nil
}

// find searches the token for the private or secret key r names.
func (s *PKCS11Store) find(sh pkcs11.SessionHandle, ref string, r keyRef) (*key, error) {
	var tmpl []*pkcs11.Attribute
	if r.label != "" {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, r.label))
	}
	if len(r.id) > 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, r.id))
	}
	if r.class != 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_CLASS, r.class))
	}
	handles, err := s.findObjects(sh, tmpl, 16)
	if err != nil {
		return nil, fmt.Errorf("hsm: find key %q on token %q: %w", ref, s.info.Label, err)
	}
	var found []*key
	for _, h := range handles {
		a, err := s.attrs(sh, h, pkcs11.CKA_CLASS, pkcs11.CKA_KEY_TYPE, pkcs11.CKA_LABEL, pkcs11.CKA_ID)
		if err != nil {
			return nil, fmt.Errorf("hsm: read key %q on token %q: %w", ref, s.info.Label, err)
		}
		class := ulong(a[pkcs11.CKA_CLASS])
		if class != pkcs11.CKO_PRIVATE_KEY && class != pkcs11.CKO_SECRET_KEY {
			continue
		}
		k := &key{label: string(a[pkcs11.CKA_LABEL]), id: a[pkcs11.CKA_ID], class: class, keyType: ulong(a[pkcs11.CKA_KEY_TYPE]), handle: h}
		if k.keyType == pkcs11.CKK_EC || k.keyType == ckkECEdwards {
			p, err := s.attrs(sh, h, pkcs11.CKA_EC_PARAMS, pkcs11.CKA_DERIVE)
			if err != nil {
				return nil, fmt.Errorf("hsm: read key %q on token %q: %w", ref, s.info.Label, err)
			}
			k.alg = algorithmOf(k.keyType, p[pkcs11.CKA_EC_PARAMS], boolAttr(p[pkcs11.CKA_DERIVE]))
		} else {
			k.alg = algorithmOf(k.keyType, nil, false)
		}
		s.setMechanism(k)
		found = append(found, k)
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("hsm: key %q on token %q: %w; ListKeys (opencustody hsm keys) shows the keys there are", ref, s.info.Label, ErrKeyNotFound)
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("hsm: key %q is ambiguous on token %q: %d keys match; name one by the URI with id= that ListKeys shows", ref, s.info.Label, len(found))
}

// setMechanism fills k.mech, or k.mechErr (without an "hsm: " prefix) if
// the key cannot be used here.
func (s *PKCS11Store) setMechanism(k *key) {
	switch k.alg {
	case ECDSASecp256k1, ECDSAP256:
		k.mech = mechECDSA
		k.mechErr = s.needMechanism(pkcs11.CKM_ECDSA, string(k.alg)+" signing")
	case Ed25519:
		k.mech = mechEdDSA
		k.mechErr = s.needMechanism(ckmEdDSA, "Ed25519 signing")
	case HMACSHA256:
		k.mech = mechHMAC
		k.mechErr = s.needMechanism(pkcs11.CKM_SHA256_HMAC, "record MACs")
	case ECDHP256:
		k.mechErr = errors.New("it is the backup key-agreement key, which only agrees wrapping keys with another HSM and signs nothing")
	default:
		k.mechErr = fmt.Errorf("it is a %s key, which OpenCustody neither signs nor MACs with", keyTypeName(k.keyType))
	}
}

// algorithmOf names the algorithm of a key of type kt with EC parameters
// params, or returns "" for keys OpenCustody does not use. A P-256 key
// that may derive (CKA_DERIVE) is the backup key-agreement key.
func algorithmOf(kt uint, params []byte, derive bool) Algorithm {
	switch kt {
	case pkcs11.CKK_EC:
		switch {
		case bytes.Equal(params, paramsSecp256k1):
			return ECDSASecp256k1
		case bytes.Equal(params, paramsP256) && derive:
			return ECDHP256
		case bytes.Equal(params, paramsP256):
			return ECDSAP256
		}
	case ckkECEdwards:
		if bytes.Equal(params, paramsEd25519) || bytes.Equal(params, paramsEd25519Name) {
			return Ed25519
		}
	case pkcs11.CKK_GENERIC_SECRET:
		return HMACSHA256
	}
	return ""
}

func curveName(a Algorithm) string {
	switch a {
	case ECDSASecp256k1:
		return "secp256k1"
	case ECDSAP256, ECDHP256:
		return "P-256"
	case Ed25519:
		return "Ed25519"
	}
	return ""
}

func keyTypeName(kt uint) string {
	switch kt {
	case pkcs11.CKK_EC:
		return "EC"
	case ckkECEdwards:
		return "EC_EDWARDS"
	case pkcs11.CKK_GENERIC_SECRET:
		return "GENERIC_SECRET"
	case pkcs11.CKK_RSA:
		return "RSA"
	case pkcs11.CKK_AES:
		return "AES"
	case pkcs11.CKK_DES3:
		return "DES3"
	case pkcs11.CKK_DSA:
		return "DSA"
	}
	return fmt.Sprintf("0x%x", kt)
}

// findObjects returns the handles of up to max objects matching tmpl.
func (s *PKCS11Store) findObjects(sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute, max int) ([]pkcs11.ObjectHandle, error) {
	if err := s.p.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	var all []pkcs11.ObjectHandle
	for len(all) < max {
		hs, _, err := s.p.FindObjects(sh, max-len(all))
		if err != nil {
			s.p.FindObjectsFinal(sh)
			return nil, err
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
	}
	if err := s.p.FindObjectsFinal(sh); err != nil {
		return nil, err
	}
	return all, nil
}

// attrs reads attributes of h; all of them must exist on the object.
func (s *PKCS11Store) attrs(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, types ...uint) (map[uint][]byte, error) {
	tmpl := make([]*pkcs11.Attribute, len(types))
	for i, t := range types {
		tmpl[i] = pkcs11.NewAttribute(t, nil)
	}
	got, err := s.p.GetAttributeValue(sh, h, tmpl)
	if err != nil {
		return nil, err
	}
	out := make(map[uint][]byte, len(got))
	for _, a := range got {
		out[a.Type] = a.Value
	}
	return out, nil
}

// ulong decodes a CK_ULONG attribute value (native byte order and size).
func ulong(b []byte) uint {
	switch len(b) {
	case 8:
		return uint(binary.NativeEndian.Uint64(b))
	case 4:
		return uint(binary.NativeEndian.Uint32(b))
	}
	return ^uint(0)
}

// boolAttr decodes a CK_BBOOL attribute value.
func boolAttr(b []byte) bool { return len(b) == 1 && b[0] != 0 }

// GenerateKey creates a key inside the HSM. Every key is a token object,
// private (readable only after login) and sensitive; it is not extractable
// unless req.Backupable, and it may do only its one job: a key pair signs
// and verifies, a backup key-agreement key ([ECDHP256]) only derives, a
// record key computes and checks MACs. After generating,
// GenerateKey reads the attributes back and deletes the key if the HSM did not
// honour them.
func (s *PKCS11Store) GenerateKey(ctx context.Context, req GenerateKeyRequest) (*KeyInfo, error) {
	if s.closed.Load() {
		return nil, s.errClosed()
	}
	if req.Label == "" {
		return nil, errors.New("hsm: generate key: a label is required")
	}
	if strings.HasPrefix(req.Label, p11uri.Scheme) {
		return nil, fmt.Errorf("hsm: generate key %q: a label must not start with %q (it would read as a URI)", req.Label, p11uri.Scheme)
	}
	if req.Backupable && req.Algorithm != ECDSASecp256k1 {
		return nil, fmt.Errorf("hsm: generate key %q: only custody keys (%s) can be backup-able, not %s", req.Label, ECDSASecp256k1, req.Algorithm)
	}
	var genMech uint
	switch req.Algorithm {
	case ECDSASecp256k1, ECDSAP256, ECDHP256:
		genMech = pkcs11.CKM_EC_KEY_PAIR_GEN
	case Ed25519:
		genMech = ckmECEdwardsKeyPairGen
	case HMACSHA256:
		genMech = pkcs11.CKM_GENERIC_SECRET_KEY_GEN
	default:
		_, err := ParseAlgorithm(string(req.Algorithm))
		return nil, fmt.Errorf("hsm: generate key %q: %w", req.Label, err)
	}
	if err := s.needMechanism(genMech, string(req.Algorithm)+" key generation"); err != nil {
		return nil, fmt.Errorf("hsm: generate key %q: %w", req.Label, err)
	}
	id := req.ID
	if len(id) == 0 {
		id = make([]byte, 8)
		rand.Read(id)
	}

	s.genKeyMu.Lock()
	defer s.genKeyMu.Unlock()
	for attempt := 0; ; attempt++ {
		s.keysMu.RLock()
		gen := s.gen
		s.keysMu.RUnlock()
		info, err := s.generate(ctx, req, genMech, id)
		if err != nil && attempt == 0 && sessionLost(err) {
			if rerr := s.relogin(gen, err); rerr != nil {
				return nil, rerr
			}
			continue
		}
		if err == nil {
			s.log.Info("hsm: key generated", "token", s.info.Label, "label", info.Label, "algorithm", string(info.Algorithm), "backupable", info.Backupable)
		}
		return info, err
	}
}

// tokenKeyTemplate is the template of a key stored on the token under
// label and id, followed by attrs: the usages the caller switches on or
// off.
func tokenKeyTemplate(class, keyType uint, label string, id []byte, attrs ...*pkcs11.Attribute) []*pkcs11.Attribute {
	return append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}, attrs...)
}

func (s *PKCS11Store) generate(ctx context.Context, req GenerateKeyRequest, genMech uint, id []byte) (info *KeyInfo, err error) {
	sh, err := s.pool.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("hsm: generate key %q: %w", req.Label, err)
	}
	defer func() { s.pool.put(sh, err == nil || errors.Is(err, ErrKeyExists)) }()

	existing, err := s.findObjects(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, req.Label)}, 1)
	if err != nil {
		return nil, fmt.Errorf("hsm: generate key %q: look for an existing key: %w", req.Label, err)
	}
	if len(existing) > 0 {
		return nil, fmt.Errorf("hsm: generate key %q on token %q: %w; pick another label", req.Label, s.info.Label, ErrKeyExists)
	}

	// Each key does one job: every usage it does not need is switched off
	// (SoftHSM2 would otherwise default some of them on).
	var h pkcs11.ObjectHandle
	if req.Algorithm == HMACSHA256 {
		tmpl := tokenKeyTemplate(pkcs11.CKO_SECRET_KEY, pkcs11.CKK_GENERIC_SECRET, req.Label, id,
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		)
		h, err = s.p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(genMech, nil)}, tmpl)
	} else {
		kt, params := uint(pkcs11.CKK_EC), paramsP256
		switch req.Algorithm {
		case ECDSASecp256k1:
			params = paramsSecp256k1
		case Ed25519:
			kt, params = ckkECEdwards, paramsEd25519
		}
		// The backup key-agreement key derives and never signs; every
		// other key pair signs and never derives.
		agree := req.Algorithm == ECDHP256
		pub := tokenKeyTemplate(pkcs11.CKO_PUBLIC_KEY, kt, req.Label, id,
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, !agree),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		)
		priv := tokenKeyTemplate(pkcs11.CKO_PRIVATE_KEY, kt, req.Label, id,
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, req.Backupable),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, !agree),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, agree),
		)
		if req.Backupable {
			priv = append(priv, pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true))
		}
		_, h, err = s.p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(genMech, nil)}, pub, priv)
	}
	if err != nil {
		return nil, fmt.Errorf("hsm: generate %s key %q on token %q: %w", req.Algorithm, req.Label, s.info.Label, mechanismError(err))
	}
	info, err = s.keyInfo(sh, h)
	if err == nil && info.Algorithm != req.Algorithm {
		err = fmt.Errorf("the HSM made a %s key, not %s", info.Algorithm, req.Algorithm)
	}
	if err == nil && (!info.Sensitive || info.Extractable != req.Backupable || req.Backupable && !info.WrapWithTrusted) {
		err = fmt.Errorf("the HSM did not honour the key's protection (sensitive=%v extractable=%v wrap-with-trusted=%v)", info.Sensitive, info.Extractable, info.WrapWithTrusted)
	}
	if err != nil {
		s.destroyLabel(sh, req.Label)
		return nil, fmt.Errorf("hsm: generate key %q on token %q: %w; the key was deleted", req.Label, s.info.Label, err)
	}
	return info, nil
}

// destroyLabel deletes every object labelled label, to undo a generation
// that went wrong.
func (s *PKCS11Store) destroyLabel(sh pkcs11.SessionHandle, label string) {
	hs, err := s.findObjects(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}, 8)
	if err != nil {
		return
	}
	for _, h := range hs {
		s.p.DestroyObject(sh, h)
	}
}

// ListKeys returns every private and secret key on the token, sorted by
// label, with their attributes and public keys.
func (s *PKCS11Store) ListKeys(ctx context.Context) ([]KeyInfo, error) {
	if s.closed.Load() {
		return nil, s.errClosed()
	}
	for attempt := 0; ; attempt++ {
		s.keysMu.RLock()
		gen := s.gen
		s.keysMu.RUnlock()
		keys, err := s.listKeys(ctx)
		if err != nil && attempt == 0 && sessionLost(err) {
			if rerr := s.relogin(gen, err); rerr != nil {
				return nil, rerr
			}
			continue
		}
		return keys, err
	}
}

// maxListed bounds ListKeys, so a huge token cannot exhaust memory.
const maxListed = 100000

func (s *PKCS11Store) listKeys(ctx context.Context) (_ []KeyInfo, err error) {
	sh, err := s.pool.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("hsm: list keys on token %q: %w", s.info.Label, err)
	}
	defer func() { s.pool.put(sh, err == nil) }()
	var out []KeyInfo
	for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_SECRET_KEY} {
		hs, err := s.findObjects(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}, maxListed)
		if err != nil {
			return nil, fmt.Errorf("hsm: list keys on token %q: %w", s.info.Label, err)
		}
		for _, h := range hs {
			info, err := s.keyInfo(sh, h)
			if err != nil {
				return nil, fmt.Errorf("hsm: list keys on token %q: %w", s.info.Label, err)
			}
			out = append(out, *info)
		}
	}
	slices.SortStableFunc(out, func(a, b KeyInfo) int {
		if c := strings.Compare(a.Label, b.Label); c != 0 {
			return c
		}
		return bytes.Compare(a.ID, b.ID)
	})
	return out, nil
}

// keyInfo reads the description of the private or secret key h.
func (s *PKCS11Store) keyInfo(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (*KeyInfo, error) {
	a, err := s.attrs(sh, h, pkcs11.CKA_CLASS, pkcs11.CKA_KEY_TYPE, pkcs11.CKA_LABEL, pkcs11.CKA_ID,
		pkcs11.CKA_SENSITIVE, pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_NEVER_EXTRACTABLE)
	if err != nil {
		return nil, err
	}
	kt := ulong(a[pkcs11.CKA_KEY_TYPE])
	info := &KeyInfo{
		Label:            string(a[pkcs11.CKA_LABEL]),
		ID:               a[pkcs11.CKA_ID],
		KeyType:          keyTypeName(kt),
		Sensitive:        boolAttr(a[pkcs11.CKA_SENSITIVE]),
		AlwaysSensitive:  boolAttr(a[pkcs11.CKA_ALWAYS_SENSITIVE]),
		Extractable:      boolAttr(a[pkcs11.CKA_EXTRACTABLE]),
		NeverExtractable: boolAttr(a[pkcs11.CKA_NEVER_EXTRACTABLE]),
	}
	info.Backupable = info.Sensitive && info.Extractable
	info.URI = (&p11uri.URI{Object: info.Label, ID: info.ID}).String()
	// Not every module knows CKA_WRAP_WITH_TRUSTED; its absence means false.
	if w, err := s.attrs(sh, h, pkcs11.CKA_WRAP_WITH_TRUSTED); err == nil {
		info.WrapWithTrusted = boolAttr(w[pkcs11.CKA_WRAP_WITH_TRUSTED])
	}
	var params []byte
	var derive bool
	if kt == pkcs11.CKK_EC || kt == ckkECEdwards {
		p, err := s.attrs(sh, h, pkcs11.CKA_EC_PARAMS, pkcs11.CKA_DERIVE)
		if err != nil {
			return nil, fmt.Errorf("key %q: read EC parameters: %w", info.Label, err)
		}
		params, derive = p[pkcs11.CKA_EC_PARAMS], boolAttr(p[pkcs11.CKA_DERIVE])
	}
	info.Algorithm = algorithmOf(kt, params, derive)
	info.Curve = curveName(info.Algorithm)
	info.Role = RoleOf(info.Algorithm)
	if ulong(a[pkcs11.CKA_CLASS]) == pkcs11.CKO_PRIVATE_KEY && info.Algorithm != "" {
		// A private key without its public object is listed without it.
		if pub, err := s.publicKey(sh, info.Label, info.ID, kt, info.Algorithm); err == nil {
			info.PublicKey = pub
		}
	}
	return info, nil
}

// publicKey reads the public key object that pairs with a private key.
func (s *PKCS11Store) publicKey(sh pkcs11.SessionHandle, label string, id []byte, kt uint, alg Algorithm) (*PublicKey, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, kt),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}
	if label != "" {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	}
	hs, err := s.findObjects(sh, tmpl, 2)
	if err != nil {
		return nil, err
	}
	if len(hs) != 1 {
		return nil, fmt.Errorf("hsm: key %q on token %q: %w: %d public key objects pair with it, want 1", label, s.info.Label, ErrKeyNotFound, len(hs))
	}
	a, err := s.attrs(sh, hs[0], pkcs11.CKA_EC_POINT)
	if err != nil {
		return nil, err
	}
	return parsePublicKey(alg, a[pkcs11.CKA_EC_POINT])
}
