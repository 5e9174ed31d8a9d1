// Package hsm is OpenCustody's key store: every private and secret key lives
// in an HSM, reached through PKCS#11, and this package asks the HSM to use
// them. No key is ever in this process's memory.
//
// # Using it
//
// Open a token by its RFC 7512 URI (see package
// [github.com/opencustodynet/opencustody/hsm/p11uri]):
//
//	store, err := hsm.Open(ctx, hsm.Config{
//		URI: "pkcs11:token=opencustody?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/var/lib/opencustody/hsm-pin",
//	})
//	defer store.Close()
//
//	info, err := store.GenerateKey(ctx, hsm.GenerateKeyRequest{Label: "custody-1", Algorithm: hsm.ECDSASecp256k1})
//	sig, err := store.Sign(ctx, hsm.SignRequest{Key: "custody-1", Digest: sighash[:]})
//	der, err := sig.DER() // low S, ready for a Bitcoin witness
//
// Code that needs only part of the store takes the small interface for its
// role: [Signer] (prompts, credentials, transactions), [Authenticator]
// (records stored outside the HSM), [KeyManager] (key ceremonies, `opencustody
// hsm`). [Store] is all of them. [NewCryptoSigner] adapts a key to
// [crypto.Signer].
//
// Keys are named by label, or by a pkcs11: URI with object= and/or id=
// ([KeyInfo.URI]); a label must not itself start with "pkcs11:".
//
// # Keys and their roles
//
// Every key is generated inside the HSM as a private token object with
// CKA_SENSITIVE set, so its value can never be read, and CKA_EXTRACTABLE
// clear, so it can never leave — and only with the one usage it needs.
// [GenerateKey] reads the attributes back and deletes the key if the HSM did
// not honour them. A key's [Role] follows from its algorithm:
//
//	identity  ECDSA P-256 (default) or Ed25519; signs prompts, channel credentials, audit checkpoints
//	records   HMAC-SHA256, a 32-byte generic secret; authenticates records kept outside the HSM
//	custody   ECDSA secp256k1; signs transactions
//	backup    ECDH P-256 (CKA_DERIVE); agrees wrapping keys with another HSM, signs nothing
//
// [IdentityKeyLabel] and [RecordKeyLabel] are the labels `opencustody hsm
// init` gives the first two.
//
// # Backup-able custody keys
//
// A custody key generated with [GenerateKeyRequest.Backupable] is still
// sensitive (never readable) but extractable, and has CKA_WRAP_WITH_TRUSTED
// set: the HSM will export it only wrapped under a key that the token's
// Security Officer marked CKA_TRUSTED — a stolen user PIN is not enough. This
// is for moving custody keys from one HSM to another (ECDH inside both HSMs,
// then AES key wrap); a key is backup-able from birth or never, since PKCS#11
// forbids making a non-extractable key extractable later. The attributes
// themselves say which keys are backup-able: [KeyInfo.Backupable] is
// CKA_SENSITIVE and CKA_EXTRACTABLE both set, and `opencustody hsm keys` shows it.
//
// # Moving keys to another HSM
//
// Each HSM that takes part in backups has a backup key-agreement key
// ([ECDHP256], label [BackupKeyLabel]): a P-256 key pair that may only
// derive (CKA_DERIVE), sensitive and never extractable.
// [PKCS11Store.ExportWrapped] and [PKCS11Store.ImportWrapped] move custody
// keys between two such HSMs without a key ever being in plain form
// outside them:
//
//	source: SO logs in, makes T (AES-256, session object, CKA_TRUSTED, wrap only); user logs in again
//	source: K = ECDH(own backup key, target's backup key)   (CKM_ECDH1_DERIVE, CKD_NULL; wrap only)
//	source: wrap T under K, each custody key under T        (CKM_AES_KEY_WRAP_PAD)
//	target: K = ECDH(own backup key, source's backup key)   (unwrap only)
//	target: unwrap T under K, each custody key under T      (sensitive, never extractable, sign only)
//
// Why the transfer key T: backup-able keys carry CKA_WRAP_WITH_TRUSTED, so
// only a wrapping key with CKA_TRUSTED can take them out, and PKCS#11 lets
// only the Security Officer set CKA_TRUSTED. SoftHSM2 2.6.1 refuses
// CKA_TRUSTED in the template of the user's C_DeriveKey and refuses
// C_SetAttributeValue(CKA_TRUSTED) afterwards, from the user and from the
// SO alike (CKR_ATTRIBUTE_READ_ONLY); and the SO cannot derive K itself,
// since the backup key is a private object the SO cannot use. So the SO
// generates T, trusted from birth, and T travels under K. T is a session
// object of the exporting process, so no other process can see it, and it
// is destroyed after the export. The result: taking keys out needs both
// the user PIN and the SO PIN, and what comes out opens only in the HSM
// that holds the target's backup key. Keys made without Backupable cannot
// be wrapped at all (CKR_KEY_UNEXTRACTABLE), so they never leave.
//
// # Signatures
//
// [Signer.Sign] takes a 32-byte digest and nothing else: CKM_ECDSA signs
// whatever it is given, so a caller that forgot to hash would otherwise get a
// valid signature over the wrong thing. ECDSA signatures come back as
// [Signature] with R and S and a [Signature.DER] form; on secp256k1, S is
// always made low (BIP 62/146), because roughly half of what an HSM returns
// has high S, which Bitcoin nodes reject. Ed25519 (CKM_EDDSA) signs the 32
// bytes as its message.
//
// # Identity fingerprint
//
// [PublicKey.Fingerprint] is the device protocol's fingerprint
// ([signed.Fingerprint]: the first 16 bytes of SHA-256 of the algorithm byte
// and the key's wire encoding, in eight groups of four hex digits). It is
// what an approval device computes and shows at pairing, and what an
// operator compares with the fingerprint `opencustody hsm init` printed.
//
// # Processes, sessions and logins
//
// PKCS#11 allows one initialised context per module per process, so stores
// share one per module path (opened by the first [Open], finalised by the
// last Close). Each store keeps a pool of sessions, one goroutine per session
// at a time ([Config.Sessions] bounds it; callers beyond wait), and a
// separate session that holds the login. Key handles are looked up once and
// cached; if the token drops the login or a session (a restart, a network HSM
// reconnecting), the operation logs in again with the PIN it was opened with,
// looks the key up again and is retried once.
//
// Logging in is per process and token in PKCS#11: a second store on a token
// this process is already logged in to shares that login, and its PIN is not
// checked again.
//
// # PINs
//
// The PIN comes from the URI's pin-source (a file, or env:NAME), its
// pin-value, or [Config.PINPrompt]. It is never logged and never put in an
// error message; errors name where it came from.
//
// # Errors
//
// Errors read "hsm: …", name the token and key, and say what to do. Those a
// caller may act on wrap a sentinel: [ErrModule], [ErrTokenNotFound],
// [ErrPINIncorrect], [ErrKeyNotFound], [ErrKeyExists],
// [ErrMechanismNotSupported], [ErrMACInvalid], [ErrClosed]. Errors from the
// module also wrap its [github.com/miekg/pkcs11.Error] (CKR_…).
//
// # SoftHSM2
//
// SoftHSM2 is the default HSM for development, tests and the demo; package
// [github.com/opencustodynet/opencustody/hsm/softhsm] creates its tokens from
// Go, and package
// [github.com/opencustodynet/opencustody/hsm/softhsm/softhsmtest] gives each
// test a token of its own.
package hsm
