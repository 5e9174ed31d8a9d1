// Package signed defines, once, every byte string that a key of the system
// signs, and how signatures over them are made and checked.
//
// Each signed structure is a domain-separated, versioned statement: a fixed
// ASCII label ending in a NUL byte, then fields in a fixed order encoded
// with cryptobyte (big-endian integers, length-prefixed byte strings). What
// is signed is SHA-256 of the statement, the statement's digest. The same
// definitions appear in firmware-spec/ with test vectors, so a firmware
// author can build them without reading Go.
//
// # Algorithms
//
// Keys and signatures are named by [pb.Algorithm]:
//
//   - Ed25519: 32-byte public key; the 64-byte signature is over the
//     32-byte digest as the message.
//   - ECDSA P-256: 33-byte compressed SEC1 public key; ASN.1 DER
//     signature over the digest.
//   - ECDSA secp256k1: 33-byte compressed SEC1 public key; canonical ASN.1
//     DER signature with low S over the digest.
//
// [Verify] accepts exactly these encodings and nothing looser.
//
// # Statements
//
//   - [Credential]: binds a secure channel's Noise static key to an
//     identity key (firmware-spec/channel.md).
//   - [AttestationCertificate]: an issuer key vouches for a subject key
//     (firmware-spec/attestation.md).
//   - [Prompt]: what the core asks one device's user to approve, signed by
//     the HSM identity key; [Approval]: the device's signed answer over the
//     prompt's digest, its nonce, the decision and the device's counter.
//
// # Device attestation
//
// A device may present, in Features.attestation, a chain of attestation
// certificates for its identity key: the device certificate first, issued
// by its vendor's factory CA, then certificates of the issuing authorities,
// the last one issued by a root the vendor publishes. [VerifyAttestation]
// checks such a chain against the identity key a device proved and the
// roots an operator trusts ([Root], read with [LoadRoots]), and says which
// root vouched for the device and under what name. A chain proves only
// that a trusted issuer certified the key; that the key proved itself is
// the secure channel's business.
//
// The development CA ([DevelopmentRoot], [DevelopmentAttestation]) has
// published private keys, so that the emulator can present a chain. Anyone
// can issue under it: trusting it attests nothing, and a production hsmd
// must never be configured with it ([Root.IsDevelopment] tells).
package signed
