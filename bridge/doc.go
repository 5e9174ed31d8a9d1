// Package bridge is the untrusted relay that runs where approval devices are
// plugged in: it finds devices, dials hsmd, and carries their frames both
// ways.
//
// # What the bridge may and may not do
//
// The bridge is outside the trust boundary. Everything it relays between the
// custody core and a device is inside an end-to-end Noise channel whose keys
// it never holds, so it can delay or drop frames and nothing more: it cannot
// read a prompt, forge or replay an approval, or cause a signature. Code in
// this package must never need a key that matters; tests play a hostile
// bridge to show that the rest of the system holds.
package bridge
