// Package core is OpenCustody's trusted approval logic: the small part of
// the custody service that decides which devices may talk to the HSM, binds
// new devices to people, and (in later versions) what gets signed.
//
// # What "I/O-free" means here
//
// The core opens no socket, file or database and reads no clock or random
// source of its own. It takes inputs (envelopes from a device, an
// operator's decision) and returns outputs (envelopes for the device,
// events for the operator) and decisions. What it needs from the outside
// comes in through small interfaces and fields:
//
//   - [Config.Identity]: the HSM identity key, a [signed.Signer] whose
//     private half never leaves the HSM;
//   - [Config.Devices]: device records, authenticated by the HSM record key
//     in the storage layer (package records), so a hostile database cannot
//     add or re-enable a device unnoticed;
//   - [Config.Now] and [Config.Rand].
//
// hsmd is the I/O shell around it. With a plain PKCS#11 HSM the core runs
// in hsmd's process next to the HSM, so that host is inside the trust
// boundary; keeping the core this small is what lets it be audited on its
// own and later moved into an HSM's secure execution environment.
//
// # Devices
//
// Each device a bridge announces gets a [Link]. Everything the bridge says
// about the device is a claim: the core believes only what the device
// proves in the secure channel's handshake (package channel). A paired,
// unrevoked device gets a full channel; an unknown device gets a channel
// only when an operator pairs it; a revoked device gets none.
//
// # Pairing
//
// Pairing binds a device's identity key to a user and role, after both the
// device's user and the operator confirmed the same six-digit code (package
// pairing). Direct pairing is allowed only in ceremony mode
// ([Config.Ceremony]): the key ceremony at the HSM's console that pairs the
// first admins.
//
// # Attestation
//
// With [Config.AttestationRoots] set, the core pairs only devices whose
// vendor vouches for them: the attestation chain in the device's Features
// must certify, under one of those roots, the identity key the device
// proved in the handshake (firmware-spec/attestation.md). The chain travels
// through the bridge like the rest of Features; because it is checked
// against the proved key, a bridge can withhold it (and so prevent the
// pairing) but cannot lend one device's chain to another. The verified
// root and subject name are stored in the record
// ([DeviceRecord.Attestation]). The emulator's chain ends at the
// development root, which anyone can issue under: a core configured with
// other roots refuses the emulator.
package core
