// Package emulator is a software approval device: the reference
// implementation of firmware-spec/device.md for firmware developers, and
// the device every test talks to. It is never a place for real keys.
//
// # Running one
//
// [Start] opens (or creates) a device state directory, listens for reports
// on a UDP port of 127.0.0.1 (one 64-byte report per datagram, plus the
// [LivenessPing] / [LivenessPong] probe) and, with [Options].DebugLink, serves
// the debug link on a TCP port. Several emulators run side by side on
// different ports and state directories:
//
//	emu, err := emulator.Start(emulator.Options{StateDir: dir, DebugLink: true})
//	defer emu.Close()
//	addr := emu.Addr()        // give to device.DialUDP
//	url := emu.DebugURL()     // give to debuglink.New
//
// The opencustody emulator command wraps Start, draws the screen in the
// terminal ([Terminal]) and maps keys to buttons.
//
// # Pieces
//
//   - [Store]: the persistent state (identity key, monotonic counter, label,
//     channel key and device credential, the pinned HSM and the freshness
//     mark of its credentials), written atomically so that a crash at any
//     moment leaves the old state or the new one. The counter is on disk
//     before an answer that carries it leaves the device.
//   - [Device]: the device logic — framing, channels, messages, screen and
//     buttons — without I/O: reports in through [Device.HandleReport],
//     answers out through a [Host], buttons through [Device.Press], time
//     through [Device.Tick]. [Device.ServeReports] runs it over any stream
//     of reports, such as an in-process pipe (device.Pipe).
//   - [Layout], [Document], [Page], [View]: the screen model, a grid of
//     [Columns] x [Rows] characters; content is laid out into pages
//     deterministically, as the specification requires, because the pages
//     shown are what a user approves.
//   - [DebugHandler]: the debug link (HTTP + JSON), for tests only; package
//     [github.com/opencustodynet/opencustody/emulator/debuglink] is its
//     client.
//
// # Secure channel and pairing
//
// The device speaks the device side of firmware-spec/channel.md. At first
// boot the [Store] makes an X25519 channel key and a device credential
// (role device, valid from 0 to [signed.Forever]) signed by the identity
// key. A core opens the channel with HandshakeInit and HandshakeFinish;
// the device accepts it as a full channel only if the core's credential is
// signed by the HSM identity key it pinned ([Store.Pin]) and is fresh:
// a device has no clock, so it refuses a credential that expired before
// the newest one it accepted from that HSM was issued ([Store.Newest]). An
// unpaired device accepts any core whose credential verifies, but only
// for a pairing session; a paired device refuses every other HSM. The
// device holds one channel; a new HandshakeInit discards it, and a
// SecureMessage that fails to decrypt closes it (FAILURE_CHANNEL).
//
// Pairing runs inside a pairing session: commitment, challenge, reveal,
// then the pairing screen ("Pair with HSM": the HSM fingerprint the device
// computed from the core's key, the user and role, and the code as
// "123 456"). Once the user confirmed and the core sent PairingFinish, the
// device pins the HSM key with the user and role, writes its state, and
// only then answers Success. The home screen then shows "Paired with HSM",
// the fingerprint and the user. The debug link serves the values a screen
// shows as [View].Fields ([FieldCode], [FieldHSMFingerprint],
// [FieldRequestID], ...), so that tests read the pairing code without
// parsing the screen.
//
// # Prompts
//
// In a full channel the device answers PromptRequest as
// firmware-spec/approval.md says: it checks the prompt (it parses, the
// pinned HSM key signed it, it names this device, it can be shown, and it
// has not certainly expired), shows [PromptDocument] after ButtonAck, and
// when the user confirms on the last page or rejects, increments and
// writes the counter ([Store.NextCounter]) before it signs the answer
// with the identity key (PromptAnswer). A Cancel signs nothing.
//
// Features carries an attestation chain under the development root
// (signed.DevelopmentAttestation with subject [AttestationSubject]),
// deterministic for a given identity key.
//
// # Watching it
//
// With [Options].WebAddr the emulator serves a web page with the live
// screen and its buttons ([WebHandler]): loopback addresses only, the Host
// and Origin of each request checked, no CORS, and a button press accepted
// only with the page's per-run token in the [WebTokenHeader] header. With
// [Options].RecordDir it writes one PNG per screen change, named by the
// screen's sequence number. The debug link can also power-cycle the device
// ([Device.PowerCycle]): what was not written to the state directory is
// lost, as on hardware.
//
// # Quirks
//
// [Options].Quirk makes the device break one rule of the specification on
// purpose ([Quirks] lists them), so that the conformance suite (package
// conformance) can show that each of its tests catches the mistake it is
// about. A quirk is never for anything else.
//
// # Determinism
//
// Randomness comes from [Options].Rand (and [Config].Rand); with
// [SeededRand] a fresh state directory always gets the same identity and
// channel keys and the device hands out the same channel ids, ephemeral
// keys and pairing secrets, which is how firmware-spec/vectors/device_*.json
// are made. Time comes from [Config].Now.
//
// # Logging
//
// Logs go to [Options].Logger. Screen contents (user names, codes,
// fingerprints), message payloads and keys are never logged above debug
// level.
package emulator
