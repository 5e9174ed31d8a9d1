package hsm

import (
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Errors that callers branch on. Every error from this package that means one
// of these wraps it; match with errors.Is. Errors from the PKCS#11 module are
// also wrapped as a [pkcs11.Error], for errors.As.
var (
	// ErrModule: the PKCS#11 module could not be loaded or initialised
	// (a wrong or missing module-path, a library that is not PKCS#11).
	ErrModule = errors.New("PKCS#11 module unusable")
	// ErrTokenNotFound: no token matches the URI's token attributes.
	ErrTokenNotFound = errors.New("token not found")
	// ErrPINIncorrect: the token refused the PIN.
	ErrPINIncorrect = errors.New("PIN incorrect")
	// ErrKeyNotFound: no key of the right kind has that label or ID.
	ErrKeyNotFound = errors.New("key not found")
	// ErrKeyExists: a key with that label is already on the token.
	ErrKeyExists = errors.New("key already exists")
	// ErrMechanismNotSupported: the HSM does not offer a mechanism the
	// operation needs.
	ErrMechanismNotSupported = errors.New("mechanism not supported by this HSM")
	// ErrMACInvalid: a MAC did not verify.
	ErrMACInvalid = errors.New("MAC does not verify")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store closed")
)

// rv returns the PKCS#11 return value inside err, or 0 (CKR_OK).
func rv(err error) pkcs11.Error {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// sessionLost reports whether err means the session, the login or the
// object handles are gone, so that logging in again and finding the key
// again may succeed.
func sessionLost(err error) bool {
	switch rv(err) {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_USER_NOT_LOGGED_IN, pkcs11.CKR_OBJECT_HANDLE_INVALID,
		pkcs11.CKR_KEY_HANDLE_INVALID, pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED:
		return true
	}
	return false
}

// mechanismError wraps err with ErrMechanismNotSupported when the module
// said the mechanism or key type is not supported.
func mechanismError(err error) error {
	switch rv(err) {
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID,
		pkcs11.CKR_CURVE_NOT_SUPPORTED, pkcs11.CKR_DOMAIN_PARAMS_INVALID,
		pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_FUNCTION_NOT_SUPPORTED:
		return fmt.Errorf("%w: %w", ErrMechanismNotSupported, err)
	}
	return err
}
