// Package backup moves custody keys from one HSM to another — a
// disaster-recovery site — without any key existing in plain form on a
// host, and only with the admin quorum's approval.
//
// # The ceremony
//
//	target  [Site.Enroll]    make the backup key-agreement key in the HSM (ECDH P-256,
//	                         never extractable); write an [Enrollment] signed by the HSM identity key
//	source  [Site.Register]  verify the enrollment; the admin quorum approves
//	                         "register backup target" on devices showing both fingerprints
//	source  [Site.Export]    the admin quorum approves "export backup to target"; the
//	                         Security Officer's PIN makes the trusted transfer key;
//	                         the HSM wraps each backup-able custody key ([hsm.PKCS11Store.ExportWrapped]);
//	                         the [Bundle] also carries the records and is signed by the identity key
//	target  [Site.Import]    check source, target, enrolled key and replay; the HSM unwraps
//	                         the keys as sensitive, never-extractable keys; store the records
//
// # What a bundle is
//
// A PEM file ("OPENCUSTODY BACKUP BUNDLE") around bytes built with
// cryptobyte:
//
//	"OpenCustody backup bundle v1\x00"
//	id [16] || created uint64 (Unix seconds)
//	source: alg uint8 || uint8-prefixed identity key || uint8-prefixed backup key
//	target: alg uint8 || uint8-prefixed identity key || uint8-prefixed backup key
//	uint16-prefixed wrapped transfer key
//	uint32 n || n × key  (uint16 label, uint8 id, uint8 compressed public key, uint16 wrapped key)
//	uint32 n || n × kept (the same, with an empty wrapped key: keys that stay)
//	uint32 n || n × record (uint8 kind, uint16 key, uint32 body)
//	uint16-prefixed signature
//
// The signature is the source HSM identity key's over SHA-256 of
// everything before it. An enrollment ("OPENCUSTODY BACKUP ENROLLMENT")
// is built the same way from "OpenCustody backup enrollment v1\x00", the
// target's identity key, its backup key, its token label and the time.
// [ParseBundle] and [ParseEnrollment] check structure only; the checks of
// meaning are [Site.Import]'s and [Site.Register]'s.
//
// The records carried are those of [DefaultKinds]. In the bundle they are
// authenticated by the source's signature; the target stores them anew
// under its own HSM record key. A bundle refers to keys by label and ID, so
// wallet records (which name their keys by pkcs11: URI) stay right.
//
// # Errors
//
// A refused import says why, with a sentinel to branch on:
// [ErrSignature] (altered), [ErrFormat] (not a bundle), [ErrWrongSource],
// [ErrWrongTarget] (made for another HSM or another backup key of this
// one), [ErrNotEnrolled], [ErrReplayed], [ErrConflict]. A key the target
// HSM cannot unwrap wraps [hsm.ErrUnwrap].
//
// # The approval gate
//
// [Approver] is where the admin quorum decides: [Site.Register] and
// [Site.Export] proceed only when it returns nil, and a Site without one
// refuses both. The two changes are admin changes of kinds
// [AdminChangeRegister] and [AdminChangeExport], whose subject is the
// target's identity fingerprint and whose payload is [Change.Canonical]:
// the target's signed enrollment and the lists of keys leaving and kept.
// [Site.DescribeChange] is the trusted check behind both kinds: it
// verifies the payload against the site's own state and returns the
// fields the admins' devices show ([Change.Fields]); an Approver must
// check that the change the admins approved has exactly the payload of
// the change it is asked about.
//
// hsmd's ChangeApprover is the Approver over hsmd's API: it proposes the
// change, waits while the admins decide on their devices, and accepts
// only a change the core reports approved with exactly its payload. The
// CLI also has a ceremony approver (--ceremony), allowed only while the
// site has no admin quorum yet.
package backup
