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
//
// The only things it reads are a device's Features (public, and only a
// claim: the core checks the device's identity in the channel handshake)
// and the framing around each message. It never logs a frame's contents,
// only its size.
//
// # Running a bridge
//
// [New] takes a [Config]; [Bridge.Run] relays until its context ends:
//
//	b, err := bridge.New(bridge.Config{
//		HSMD:          apiclient.Options{Address: "hsmd.example:7420", CertFingerprint: fp, Token: token},
//		Name:          "desk-3",
//		EmulatorPorts: []int{21424},
//	})
//	err = b.Run(ctx) // returns nil after a clean shutdown
//
// The bridge dials hsmd (nothing listens on the approver's machine for
// it) and keeps one Relay.Connect stream open. It sends BridgeHello, waits
// for CoreHello, then announces every open device with DeviceAttached. If
// the stream cannot be opened or breaks, it tries again after an
// exponential backoff with jitter ([Backoff]; from 0.5 s, capped at 30 s,
// back to the start once a stream lasted a minute) and announces its
// devices again on the new stream. Each attempt is logged.
//
// Every [Config].ScanInterval it runs discovery ([device.Discover]: USB HID
// devices and emulators answering the liveness ping on the given ports).
// A new device is opened (a channel allocated, GetFeatures asked in plain)
// and announced, with its discovery id ("emu-21424", "hid-…") as the ref
// hsmd knows it by. A device that discovery no longer finds (unplugged, an
// emulator stopped) is detached with DeviceDetached, as is one whose
// transport fails or that forgot the bridge's channel; it is opened and
// announced again when it comes back. An open emulator that misses its
// liveness probe is probed again first: it is gone at once if its port
// refuses, but a silent one only after three scans in a row, so that a
// busy moment does not detach a device while its user is approving. When Run's context ends, every
// device is detached, the stream is closed from the bridge's side, and Run
// returns.
//
// # Relaying
//
// The relay is a pipe, not request and response. A frame from hsmd is
// written to its device at once ([device.Client.Send]); every message the
// device sends is forwarded to hsmd as it arrives
// ([device.Client.Receive]), however long after the last frame: an answer
// can come minutes later, when the device's user pressed a button, and the
// answer to a Cancel inside the channel looks like any other ciphertext.
// Device keepalives are not forwarded. Messages a device sends while hsmd
// is not connected are dropped: they belong to a core link that ended with
// the stream.
//
// Memory is bounded. A frame is at most protocol.MaxEnvelopeSize bytes
// (hsmd's messages are refused above that). At most [Config].MaxQueue
// frames wait for one device, and at most as many of one device's frames
// wait for hsmd; a device whose queue overflows is detached with reason
// [ReasonFlood] and a log line saying which side flooded, since buffering
// more would only grow memory. A stream whose outgoing queue reaches 4096
// messages in all is dropped and redialed. At most [MaxDevices] devices are
// relayed.
//
// # Status and metrics
//
// [Bridge.Status] is a snapshot: whether hsmd is connected and since when,
// connections and reconnections, the last error and the next attempt, and
// each device's state ([StateOpening], [StateOpen], [StateFailed],
// [StateGone]), whether it is announced on the current stream, frame
// counts each way, queue lengths and its last error.
// [Bridge.StatusHandler] serves it as JSON on GET /status, and
// [FetchStatus] reads it back (this is what 'opencustody bridge status'
// does). [Bridge.MetricsHandler] serves the Prometheus metrics
// (opencustody_bridge_hsmd_connected, _hsmd_connections_total,
// _hsmd_connect_failures_total, _devices_open,
// _device_detaches_total{reason}, _frames_total{direction},
// _frame_bytes_total{direction}, _frames_dropped_total{reason},
// _device_open_failures_total). Neither endpoint has authentication:
// serve them on loopback only (`opencustody bridge` refuses other
// addresses).
package bridge
