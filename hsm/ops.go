package hsm

import (
	"context"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// DigestSize is the only digest length [Signer.Sign] accepts.
const DigestSize = 32

// withKey runs op on a pooled session with the key that ref names, after
// checking the key is of class want and, if useMech, that the token can use
// it. If the token lost the session, the
// login or the key's handle, it logs in again, finds the key again and
// retries once. op's errors are PKCS#11 errors; withKey's wrap them.
func (s *PKCS11Store) withKey(ctx context.Context, ref string, want uint, useMech bool, what string, op func(pkcs11.SessionHandle, *key) error) (*key, error) {
	if s.closed.Load() {
		return nil, s.errClosed()
	}
	for attempt := 0; ; attempt++ {
		k, gen, err := s.lookup(ctx, ref)
		if err == nil && k.class != want {
			kind := "signing"
			if want == pkcs11.CKO_SECRET_KEY {
				kind = "MAC"
			}
			return nil, fmt.Errorf("hsm: %s key %q on token %q: %w: the key named is a %s key, not a %s key", what, ref, s.info.Label, ErrKeyNotFound, RoleOf(k.alg), kind)
		}
		if err == nil && useMech && k.mechErr != nil {
			return nil, fmt.Errorf("hsm: %s key %q: %w", what, ref, k.mechErr)
		}
		if err == nil {
			var sh pkcs11.SessionHandle
			sh, err = s.pool.get(ctx)
			if err != nil {
				if errors.Is(err, ErrClosed) {
					return nil, s.errClosed()
				}
				return nil, fmt.Errorf("hsm: %s key %q on token %q: %w", what, ref, s.info.Label, err)
			}
			err = op(sh, k)
			s.pool.put(sh, err == nil)
			if err == nil {
				return k, nil
			}
			if rv(err) != 0 && !(attempt == 0 && sessionLost(err)) {
				// A module error from the operation itself: say which.
				err = fmt.Errorf("hsm: %s key %q on token %q: %w", what, ref, s.info.Label, mechanismError(err))
			}
		}
		if attempt == 0 && sessionLost(err) {
			if rerr := s.relogin(gen, err); rerr != nil {
				return nil, rerr
			}
			continue
		}
		return k, err
	}
}

// Sign signs req.Digest, which must be exactly [DigestSize] bytes, with the
// private key req.Key: ECDSA (CKM_ECDSA) for secp256k1 and P-256 keys, with S
// made low on secp256k1, or Ed25519 (CKM_EDDSA) over the 32 bytes.
func (s *PKCS11Store) Sign(ctx context.Context, req SignRequest) (*Signature, error) {
	if len(req.Digest) != DigestSize {
		// CKM_ECDSA would sign any length (truncating or padding): refuse
		// here, or a caller that forgot to hash would get a valid-looking
		// signature over something else.
		return nil, fmt.Errorf("hsm: sign with key %q: digest is %d bytes, want exactly %d: sign a SHA-256 hash (or sighash), not the message", req.Key, len(req.Digest), DigestSize)
	}
	var raw []byte
	k, err := s.withKey(ctx, req.Key, pkcs11.CKO_PRIVATE_KEY, true, "sign with", func(sh pkcs11.SessionHandle, k *key) error {
		if err := s.p.SignInit(sh, k.mech, k.handle); err != nil {
			return err
		}
		var err error
		raw, err = s.p.Sign(sh, req.Digest)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.ops.signed(k.alg)
	if k.alg == Ed25519 {
		if len(raw) != 64 {
			return nil, fmt.Errorf("hsm: sign with key %q: Ed25519 signature from the HSM is %d bytes, want 64", req.Key, len(raw))
		}
		return &Signature{Algorithm: Ed25519, raw: raw}, nil
	}
	sig, err := newECDSASignature(k.alg, raw)
	if err != nil {
		return nil, fmt.Errorf("%w (key %q)", err, req.Key)
	}
	return sig, nil
}

// MAC returns the HMAC-SHA256 of req.Data under the secret key req.Key.
func (s *PKCS11Store) MAC(ctx context.Context, req MACRequest) ([]byte, error) {
	var mac []byte
	_, err := s.withKey(ctx, req.Key, pkcs11.CKO_SECRET_KEY, true, "MAC with", func(sh pkcs11.SessionHandle, k *key) error {
		if err := s.p.SignInit(sh, k.mech, k.handle); err != nil {
			return err
		}
		var err error
		mac, err = s.p.Sign(sh, req.Data)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.ops.mac.Add(1)
	return mac, nil
}

// VerifyMAC checks req.MAC against req.Data inside the HSM (C_Verify, so the
// comparison is the HSM's). A MAC that does not match, or has the wrong
// length, gives an error wrapping [ErrMACInvalid].
func (s *PKCS11Store) VerifyMAC(ctx context.Context, req VerifyMACRequest) error {
	var mismatch error
	_, err := s.withKey(ctx, req.Key, pkcs11.CKO_SECRET_KEY, true, "verify MAC with", func(sh pkcs11.SessionHandle, k *key) error {
		if err := s.p.VerifyInit(sh, k.mech, k.handle); err != nil {
			return err
		}
		err := s.p.Verify(sh, req.Data, req.MAC)
		if r := rv(err); r == pkcs11.CKR_SIGNATURE_INVALID || r == pkcs11.CKR_SIGNATURE_LEN_RANGE {
			// An answer, not a failure: C_Verify has finished and the
			// session is fine.
			mismatch = err
			return nil
		}
		return err
	})
	if err != nil {
		return err
	}
	s.ops.verifyMAC.Add(1)
	if mismatch != nil {
		return fmt.Errorf("hsm: MAC with key %q: %w (%w)", req.Key, ErrMACInvalid, mismatch)
	}
	return nil
}

// PublicKey returns the public half of the key pair key (a label or
// pkcs11: URI), read from its public key object.
func (s *PKCS11Store) PublicKey(ctx context.Context, ref string) (*PublicKey, error) {
	var pub *PublicKey
	_, err := s.withKey(ctx, ref, pkcs11.CKO_PRIVATE_KEY, false, "read public", func(sh pkcs11.SessionHandle, k *key) error {
		if k.alg == "" {
			return fmt.Errorf("hsm: read public key %q: %w", ref, k.mechErr)
		}
		var err error
		pub, err = s.publicKey(sh, k.label, k.id, k.keyType, k.alg)
		return err
	})
	if err != nil {
		return nil, err
	}
	return pub, nil
}
