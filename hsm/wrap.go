package hsm

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/asn1"
	"errors"
	"fmt"

	"github.com/btcsuite/btcd/btcec/v2"
	btcecdsa "github.com/btcsuite/btcd/btcec/v2/ecdsa"
	"github.com/miekg/pkcs11"
)

// ErrUnwrap is wrapped by [PKCS11Store.ImportWrapped] when the HSM refuses
// a wrapped key: the key was altered, or wrapped for another HSM.
var ErrUnwrap = errors.New("wrapped key does not unwrap")

// WrappedKey is a custody key wrapped (CKM_AES_KEY_WRAP_PAD) under a
// transfer key, with what the other HSM needs to store it under the same
// name.
type WrappedKey struct {
	Label string
	ID    []byte
	// PublicKey is the 33-byte compressed secp256k1 public key.
	PublicKey []byte
	// Wrapped is the PKCS#8 private key, AES-key-wrapped (RFC 5649).
	Wrapped []byte
}

// ExportWrappedRequest asks for custody keys wrapped for another HSM.
type ExportWrappedRequest struct {
	// AgreementKey names this HSM's backup key-agreement key ([ECDHP256]).
	AgreementKey string
	// PeerPublicKey is the other HSM's backup key: a 65-byte uncompressed
	// P-256 point.
	PeerPublicKey []byte
	// Keys name the custody keys to wrap; each must be backup-able.
	Keys []string
	// SOPIN is the token's Security Officer PIN. Backup-able keys have
	// CKA_WRAP_WITH_TRUSTED, so only a key marked CKA_TRUSTED can wrap
	// them, and only the Security Officer can make one.
	SOPIN string
}

// WrappedExport is what [PKCS11Store.ExportWrapped] returns: the transfer
// key wrapped under the key both HSMs agree on, and the custody keys
// wrapped under the transfer key. None of it is readable without the
// other HSM.
type WrappedExport struct {
	TransferKey []byte
	Keys        []WrappedKey
}

// mechanisms of the backup path.
var (
	mechWrapPad = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}
	mechAESGen  = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}
)

// checkP256Point reports whether p is an uncompressed point on P-256.
func checkP256Point(p []byte) error {
	if len(p) != 65 || p[0] != 4 {
		return fmt.Errorf("the other HSM's backup key is not a 65-byte uncompressed P-256 point (%d bytes)", len(p))
	}
	if _, err := ecdh.P256().NewPublicKey(p); err != nil {
		return fmt.Errorf("the other HSM's backup key is not a P-256 point: %w", err)
	}
	return nil
}

// ExportWrapped wraps custody keys for the HSM whose backup key is
// req.PeerPublicKey, entirely inside this HSM:
//
//  1. the Security Officer logs in (req.SOPIN) and generates a transfer key
//     T: AES-256, a session object of this process, sensitive, marked
//     CKA_TRUSTED, able only to wrap;
//  2. the user logs in again, and the HSM derives K by ECDH
//     (CKM_ECDH1_DERIVE, CKD_NULL) between req.AgreementKey and the peer's
//     key: AES-256, sensitive, never extractable, able only to wrap;
//  3. T is wrapped under K, and each custody key under T
//     (CKM_AES_KEY_WRAP_PAD);
//  4. K and T are destroyed.
//
// Only the HSM holding the peer's private key can derive K again, so only
// it can unwrap T and then the keys. The user's login is dropped while the
// Security Officer is logged in, so no other operation of this store may
// run meanwhile: this is for the backup ceremony, not for a running hsmd.
// A key that is not backup-able makes the whole export fail.
func (s *PKCS11Store) ExportWrapped(ctx context.Context, req ExportWrappedRequest) (*WrappedExport, error) {
	if s.closed.Load() {
		return nil, s.errClosed()
	}
	if err := checkP256Point(req.PeerPublicKey); err != nil {
		return nil, fmt.Errorf("hsm: export wrapped keys: %w", err)
	}
	if req.SOPIN == "" {
		return nil, errors.New("hsm: export wrapped keys: no Security Officer PIN: only a key the Security Officer marks trusted can wrap backup-able keys")
	}
	for _, m := range []struct {
		m    uint
		what string
	}{{pkcs11.CKM_ECDH1_DERIVE, "agreeing a wrapping key"}, {pkcs11.CKM_AES_KEY_WRAP_PAD, "wrapping keys"}, {pkcs11.CKM_AES_KEY_GEN, "the transfer key"}} {
		if err := s.needMechanism(m.m, m.what); err != nil {
			return nil, fmt.Errorf("hsm: export wrapped keys: %w", err)
		}
	}
	sh, err := s.pool.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("hsm: export wrapped keys: token %q: %w", s.info.Label, err)
	}
	// The session is closed, not pooled: its session objects (T, K) end
	// with it even if destroying them failed.
	defer s.pool.put(sh, false)

	t, err := s.trustedTransferKey(sh, req.SOPIN)
	if err != nil {
		return nil, err
	}
	defer s.p.DestroyObject(sh, t)

	k, err := s.agree(sh, req.AgreementKey, req.PeerPublicKey, true)
	if err != nil {
		return nil, err
	}
	defer s.p.DestroyObject(sh, k)
	out := &WrappedExport{}
	if out.TransferKey, err = s.p.WrapKey(sh, mechWrapPad, k, t); err != nil {
		return nil, fmt.Errorf("hsm: export wrapped keys: wrap the transfer key: %w", err)
	}
	for _, ref := range req.Keys {
		r, err := parseKeyRef(ref)
		if err != nil {
			return nil, err
		}
		r.class = pkcs11.CKO_PRIVATE_KEY
		ck, err := s.find(sh, ref, r)
		if err != nil {
			return nil, err
		}
		info, err := s.keyInfo(sh, ck.handle)
		if err != nil {
			return nil, fmt.Errorf("hsm: export key %q: %w", ref, err)
		}
		if info.Algorithm != ECDSASecp256k1 || info.PublicKey == nil {
			return nil, fmt.Errorf("hsm: export key %q: it is a %s key; only custody keys (secp256k1 key pairs) are backed up", ref, info.Role)
		}
		if !info.Backupable {
			return nil, fmt.Errorf("hsm: export key %q: it was created not backup-able (never extractable) and cannot leave the HSM", ref)
		}
		w, err := s.p.WrapKey(sh, mechWrapPad, t, ck.handle)
		if err != nil {
			return nil, fmt.Errorf("hsm: export key %q: wrap under the transfer key: %w", ref, err)
		}
		out.Keys = append(out.Keys, WrappedKey{Label: info.Label, ID: info.ID, PublicKey: info.PublicKey.Bytes(), Wrapped: w})
	}
	s.log.Info("hsm: custody keys wrapped for another HSM", "token", s.info.Label, "keys", len(out.Keys))
	return out, nil
}

// trustedTransferKey has the Security Officer generate the transfer key
// on session sh, then logs the user in again. The user's login (shared by
// every session of the process) is gone meanwhile; handles found before
// are stale afterwards, so the key cache is cleared.
func (s *PKCS11Store) trustedTransferKey(sh pkcs11.SessionHandle, soPIN string) (pkcs11.ObjectHandle, error) {
	s.loginMu.Lock()
	defer s.loginMu.Unlock()
	if err := s.p.Logout(s.anchor); err != nil && rv(err) != pkcs11.CKR_USER_NOT_LOGGED_IN {
		return 0, fmt.Errorf("hsm: token %q: log the user out for the Security Officer: %w", s.info.Label, err)
	}
	defer func() {
		s.keysMu.Lock()
		s.gen++
		clear(s.keys)
		s.keysMu.Unlock()
	}()
	var t pkcs11.ObjectHandle
	err := s.p.Login(sh, pkcs11.CKU_SO, soPIN)
	switch rv(err) {
	case 0:
		t, err = s.p.GenerateKey(sh, mechAESGen, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), // a session object: no other process sees it
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), // to travel wrapped under K
			pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		})
		if err != nil {
			err = fmt.Errorf("hsm: token %q: the Security Officer's transfer key: %w", s.info.Label, mechanismError(err))
		}
		if lerr := s.p.Logout(sh); lerr != nil && err == nil {
			err = fmt.Errorf("hsm: token %q: Security Officer log out: %w", s.info.Label, lerr)
		}
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LEN_RANGE, pkcs11.CKR_PIN_INVALID:
		err = fmt.Errorf("hsm: token %q: %w (%w): the token refused the Security Officer PIN", s.info.Label, ErrPINIncorrect, err)
	default:
		err = fmt.Errorf("hsm: token %q: Security Officer log in: %w", s.info.Label, err)
	}
	if lerr := s.login(); lerr != nil {
		return 0, errors.Join(err, lerr)
	}
	return t, err
}

// findAgreementKey finds the private backup key-agreement key ref names.
func (s *PKCS11Store) findAgreementKey(sh pkcs11.SessionHandle, ref string) (pkcs11.ObjectHandle, error) {
	r, err := parseKeyRef(ref)
	if err != nil {
		return 0, err
	}
	r.class = pkcs11.CKO_PRIVATE_KEY
	k, err := s.find(sh, ref, r)
	if err != nil {
		return 0, fmt.Errorf("%w; make it with 'opencustody backup enroll'", err)
	}
	if k.alg != ECDHP256 {
		return 0, fmt.Errorf("hsm: key %q on token %q is a %s key, not a backup key-agreement key (%s)", ref, s.info.Label, RoleOf(k.alg), ECDHP256)
	}
	return k.handle, nil
}

// agree derives, with the backup key-agreement key agreementKey, the
// AES-256 key shared with the holder of peer: a session object,
// sensitive, never extractable, that can only wrap (wrap) or only unwrap
// (!wrap).
func (s *PKCS11Store) agree(sh pkcs11.SessionHandle, agreementKey string, peer []byte, wrap bool) (pkcs11.ObjectHandle, error) {
	base, err := s.findAgreementKey(sh, agreementKey)
	if err != nil {
		return 0, err
	}
	params := pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, peer)
	h, err := s.p.DeriveKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE, params)}, base, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, wrap),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, !wrap),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	})
	if err != nil {
		return 0, fmt.Errorf("hsm: token %q: agree a wrapping key with the other HSM (ECDH): %w", s.info.Label, mechanismError(err))
	}
	return h, nil
}

// ImportWrappedRequest asks to store keys another HSM wrapped for this one.
type ImportWrappedRequest struct {
	// AgreementKey names this HSM's backup key-agreement key.
	AgreementKey string
	// PeerPublicKey is the exporting HSM's backup key (65-byte P-256 point).
	PeerPublicKey []byte
	// TransferKey and Keys are what [PKCS11Store.ExportWrapped] returned.
	TransferKey []byte
	Keys        []WrappedKey
}

// ImportWrapped unwraps keys that the HSM holding req.PeerPublicKey's
// private key wrapped for this one, inside this HSM: it derives the same K
// by ECDH, unwraps the transfer key under it (a session object that can
// only unwrap), and unwraps each custody key under that as a token object
// with its label and ID, sensitive, never extractable and able only to
// sign. It stores the public key beside it and checks, by a signature made
// in the HSM, that the two belong together. It is all or nothing: on any
// error the keys it stored are destroyed again. A label already on the
// token gives an error wrapping [ErrKeyExists]; a key the HSM cannot
// unwrap (altered, or wrapped for another HSM) one wrapping [ErrUnwrap].
func (s *PKCS11Store) ImportWrapped(ctx context.Context, req ImportWrappedRequest) (_ []KeyInfo, err error) {
	if s.closed.Load() {
		return nil, s.errClosed()
	}
	if err := checkP256Point(req.PeerPublicKey); err != nil {
		return nil, fmt.Errorf("hsm: import wrapped keys: %w", err)
	}
	for _, m := range []uint{pkcs11.CKM_ECDH1_DERIVE, pkcs11.CKM_AES_KEY_WRAP_PAD} {
		if err := s.needMechanism(m, "importing a backup"); err != nil {
			return nil, fmt.Errorf("hsm: import wrapped keys: %w", err)
		}
	}
	pubs := make([]*btcec.PublicKey, len(req.Keys))
	for i, wk := range req.Keys {
		if wk.Label == "" || len(wk.ID) == 0 {
			return nil, fmt.Errorf("hsm: import wrapped key %d: no label or ID", i)
		}
		if pubs[i], err = btcec.ParsePubKey(wk.PublicKey); err != nil {
			return nil, fmt.Errorf("hsm: import wrapped key %q: public key: %w", wk.Label, err)
		}
	}
	s.genKeyMu.Lock() // no key may be generated under one of these labels meanwhile
	defer s.genKeyMu.Unlock()
	sh, err := s.pool.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("hsm: import wrapped keys: token %q: %w", s.info.Label, err)
	}
	defer s.pool.put(sh, false)

	for _, wk := range req.Keys {
		existing, err := s.findObjects(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, wk.Label)}, 1)
		if err != nil {
			return nil, fmt.Errorf("hsm: import wrapped key %q: %w", wk.Label, err)
		}
		if len(existing) > 0 {
			return nil, fmt.Errorf("hsm: import wrapped key %q on token %q: %w (imported before?)", wk.Label, s.info.Label, ErrKeyExists)
		}
	}
	k, err := s.agree(sh, req.AgreementKey, req.PeerPublicKey, false)
	if err != nil {
		return nil, err
	}
	defer s.p.DestroyObject(sh, k)
	t, err := s.p.UnwrapKey(sh, mechWrapPad, k, req.TransferKey, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: token %q: unwrap the transfer key: %w: it was altered, or wrapped for another HSM's backup key (%w)", s.info.Label, ErrUnwrap, err)
	}
	defer s.p.DestroyObject(sh, t)

	var made []pkcs11.ObjectHandle
	defer func() {
		if err != nil {
			for _, h := range made {
				s.p.DestroyObject(sh, h)
			}
		}
	}()
	var infos []KeyInfo
	for i, wk := range req.Keys {
		priv, err := s.p.UnwrapKey(sh, mechWrapPad, t, wk.Wrapped, tokenKeyTemplate(pkcs11.CKO_PRIVATE_KEY, pkcs11.CKK_EC, wk.Label, wk.ID,
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		))
		if err != nil {
			return nil, fmt.Errorf("hsm: token %q: unwrap key %q: %w: it was altered (%w)", s.info.Label, wk.Label, ErrUnwrap, err)
		}
		made = append(made, priv)
		point, err := asn1.Marshal(pubs[i].SerializeUncompressed())
		if err != nil {
			return nil, err
		}
		pub, err := s.p.CreateObject(sh, tokenKeyTemplate(pkcs11.CKO_PUBLIC_KEY, pkcs11.CKK_EC, wk.Label, wk.ID,
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, paramsSecp256k1),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, point),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		))
		if err != nil {
			return nil, fmt.Errorf("hsm: token %q: store the public key of %q: %w", s.info.Label, wk.Label, err)
		}
		made = append(made, pub)
		if err := s.checkPair(sh, priv, pubs[i]); err != nil {
			return nil, fmt.Errorf("hsm: token %q: imported key %q: %w", s.info.Label, wk.Label, err)
		}
		info, err := s.keyInfo(sh, priv)
		if err != nil {
			return nil, fmt.Errorf("hsm: token %q: imported key %q: %w", s.info.Label, wk.Label, err)
		}
		if info.Algorithm != ECDSASecp256k1 || !info.Sensitive || info.Extractable {
			return nil, fmt.Errorf("hsm: token %q: imported key %q is %s, sensitive=%v extractable=%v: not a protected custody key", s.info.Label, wk.Label, info.Algorithm, info.Sensitive, info.Extractable)
		}
		infos = append(infos, *info)
	}
	s.log.Info("hsm: custody keys imported from another HSM", "token", s.info.Label, "keys", len(infos))
	return infos, nil
}

// checkPair signs a random digest with priv inside the HSM and verifies it
// with pub: the unwrapped private key and the public key it came with must
// be one key pair.
func (s *PKCS11Store) checkPair(sh pkcs11.SessionHandle, priv pkcs11.ObjectHandle, pub *btcec.PublicKey) error {
	digest := make([]byte, DigestSize)
	rand.Read(digest)
	if err := s.p.SignInit(sh, mechECDSA, priv); err != nil {
		return err
	}
	raw, err := s.p.Sign(sh, digest)
	if err != nil {
		return err
	}
	if len(raw) != 64 {
		return fmt.Errorf("signature is %d bytes, want 64", len(raw))
	}
	var r, sv btcec.ModNScalar
	if r.SetByteSlice(raw[:32]) || sv.SetByteSlice(raw[32:]) {
		return errors.New("signature out of range")
	}
	if !btcecdsa.NewSignature(&r, &sv).Verify(digest, pub) {
		return fmt.Errorf("the private key does not match the public key %x it came with", pub.SerializeCompressed())
	}
	return nil
}
