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
package signed
