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
//   - [Store]: the persistent state (identity key, monotonic counter, label),
//     written atomically so that a crash at any moment leaves the old state
//     or the new one.
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
// # Determinism
//
// Randomness comes from [Options].Rand (and [Config].Rand); with
// [SeededRand] a fresh state directory always gets the same identity key and
// the device hands out the same channel ids, which is how
// firmware-spec/vectors/device_*.json are made. Time comes from [Config].Now.
//
// # Logging
//
// Logs go to [Options].Logger. Screen contents, message payloads and keys are
// never logged above debug level.
package emulator
