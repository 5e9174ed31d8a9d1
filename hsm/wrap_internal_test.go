package hsm

import (
	"crypto/ecdh"
	"crypto/rand"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/opencustodynet/opencustody/hsm/softhsm/softhsmtest"
)

// TestWhyATransferKey records what the token allows around CKA_TRUSTED,
// which is why ExportWrapped has the Security Officer make a transfer key
// instead of marking the ECDH-derived key trusted: a backup-able key will
// not wrap under an untrusted key; the user may not derive a trusted key,
// nor mark one trusted later; and the Security Officer may not mark an
// existing key trusted either, but may generate one trusted from birth.
func TestWhyATransferKey(t *testing.T) {
	tok := softhsmtest.NewTestToken(t)
	s, err := Open(t.Context(), Config{URI: tok.URI})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustGenerate(t, s, "agree", ECDHP256, false)
	mustGenerate(t, s, "custody", ECDSASecp256k1, true)
	peer, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := s.p.OpenSession(s.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer s.p.CloseSession(sh)
	find := func(label string) pkcs11.ObjectHandle {
		k, err := s.find(sh, label, keyRef{label: label, class: pkcs11.CKO_PRIVATE_KEY})
		if err != nil {
			t.Fatal(err)
		}
		return k.handle
	}
	derive := func(private, trusted bool) (pkcs11.ObjectHandle, error) {
		tmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, private),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		}
		if trusted {
			tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true))
		}
		params := pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, peer.PublicKey().Bytes())
		return s.p.DeriveKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE, params)}, find("agree"), tmpl)
	}
	trustedAttr := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true)}

	if _, err := derive(true, true); rv(err) != pkcs11.CKR_ATTRIBUTE_READ_ONLY {
		t.Errorf("the user derived a trusted key: %v", err)
	}
	k, err := derive(true, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.p.WrapKey(sh, mechWrapPad, k, find("custody")); rv(err) != pkcs11.CKR_KEY_NOT_WRAPPABLE {
		t.Errorf("a backup-able key wrapped under an untrusted key: %v", err)
	}
	if err := s.p.SetAttributeValue(sh, k, trustedAttr); rv(err) != pkcs11.CKR_ATTRIBUTE_READ_ONLY {
		t.Errorf("the user marked a key trusted: %v", err)
	}
	// A key the SO can see (not private): the SO still cannot mark it.
	pub, err := derive(false, false)
	if err != nil {
		t.Fatal(err)
	}
	s.loginMu.Lock()
	defer s.loginMu.Unlock()
	if err := s.p.Logout(s.anchor); err != nil {
		t.Fatal(err)
	}
	if err := s.p.Login(sh, pkcs11.CKU_SO, tok.SOPIN); err != nil {
		t.Fatal(err)
	}
	if err := s.p.SetAttributeValue(sh, pub, trustedAttr); rv(err) != pkcs11.CKR_ATTRIBUTE_READ_ONLY {
		t.Errorf("the SO marked an existing key trusted: %v", err)
	}
	if _, err := s.p.GenerateKey(sh, mechAESGen, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true), pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true),
	}); err != nil {
		t.Errorf("the SO could not generate a trusted key: %v", err)
	}
	if err := s.p.Logout(sh); err != nil {
		t.Fatal(err)
	}
	if err := s.login(); err != nil {
		t.Fatal(err)
	}
	s.keysMu.Lock()
	s.gen++
	clear(s.keys)
	s.keysMu.Unlock()
}
