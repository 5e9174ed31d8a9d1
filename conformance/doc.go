// Package conformance is the judge of firmware-spec/: a suite that runs
// every requirement of the specification against a device, an emulator
// over UDP or hardware over USB HID, and reports pass or fail test by test,
// each test naming the section it checks. The opencustody conformance
// command runs it; firmware-spec/conformance.md is the guide for firmware
// authors.
//
// # What it checks
//
// [Tests] lists the tests in the order they run: framing (reports,
// channel allocation, every framing error, the reassembly timeout),
// envelopes (every invalid encoding of vectors/envelope.json), the device's
// messages and state machine (ping, button requests, cancel by message and
// by command, busy, keepalives), the secure channel (handshake, the
// device's credential, refused core credentials, altered and replayed
// channel messages), pairing (commitment and reveal, out of order, cancel,
// reject, confirm with the code on the screen), prompts (approve and reject
// with signed answers and strictly increasing counters; malformed,
// unsigned, wrongly signed, altered, other device's, unshowable, expired and
// replayed prompts refused; cancel; confirm only on the last page) and
// state across a power cycle (identity, pin, counter, answered prompts).
//
// # Playing the core
//
// The suite plays the custody core itself, with an HSM identity (an
// Ed25519 key) made in software for each run, and pairs the device with it.
// So the device must be unpaired when the run starts, and is left paired
// with an HSM that no longer exists: reset a hardware device before and
// after, and give an emulator a new state directory. [Run] stops with
// [ErrDevicePaired] when the device refuses the suite's HSM.
//
// # People and buttons
//
// Some tests need the device's user. An [Operator] stands for that user:
// [DebugLinkOperator] presses the emulator's buttons through its debug
// link (and power-cycles it), [TerminalOperator] asks a person at a
// terminal to press them on real hardware, and to unplug and replug it once.
// Tests that read the screen need a [ScreenReader] (the debug link); on
// hardware they are reported as skipped.
//
// # Timing
//
// A correct device answers in milliseconds; the suite waits up to
// [Config].AnswerTimeout for each answer, so a slow machine only makes a
// failing test take longer. The one timed rule it checks, the framing
// timeout, is checked from below only (the ERROR must not come before
// 3000 ms), which load cannot break.
package conformance
