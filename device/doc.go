// Package device is the host side of an approval device: transports that
// carry the protocol's 64-byte reports, discovery of USB devices and
// emulators, and a typed [Client] for the device messages.
//
// # Transports
//
// A [Transport] moves whole reports and nothing else; everything above it
// (framing, channels, messages) is the same for every kind of device:
//
//   - [OpenHID]: a USB device through hidapi (github.com/karalabe/hid,
//     cgo), matched on [USBVendorID], [USBProductID] and [HIDUsagePage].
//   - [DialUDP]: an emulator on loopback, one report per datagram.
//   - [Pipe]: an in-process pair, for tests that run a device in the same
//     process.
//
// [Open] opens the right one for a path from [Discover].
//
// # Discovery
//
// [Discover] enumerates USB approval devices and probes emulator ports with
// the liveness ping ([ProbeUDP]). A machine without USB looks exactly like a
// machine with USB and nothing plugged in (hidapi finds nothing and reports
// no error); [USBStatus].Note says so in words for people.
//
// # Client
//
// [NewClient] allocates a channel on the device (CmdInit with a random
// nonce), and [Client.Call] runs one request: it answers the device's
// ButtonRequests with ButtonAck (after [ClientOptions].OnButton, if set),
// follows keepalives, and gives up when the context ends (cancelling the
// request on the device) or when the device stays silent for
// [ClientOptions].SilenceTimeout. Answers come back typed:
//
//	t, err := device.Open(info.Path)
//	c, err := device.NewClient(ctx, t, device.ClientOptions{Name: info.ID})
//	defer c.Close()
//	f, err := c.Features(ctx)
//	_, err = c.Ping(ctx, device.PingRequest{Message: "hello", ButtonProtection: true})
//	var fe *device.FailureError
//	if errors.As(err, &fe) && fe.Code == pb.FailureCode_FAILURE_ACTION_REJECTED { … }
//
// # Errors
//
// A Failure from the device is a [*FailureError] carrying its code; a
// framing error the device reports (CmdError) is a [*ReportError]; silence
// wraps [ErrNoAnswer]; a transport closed under a request wraps
// [ErrClosed]. Error texts name the device ("device emu-21424: …").
//
// The protocol itself is specified in firmware-spec/device.md and
// firmware-spec/framing.md in the repository.
package device
