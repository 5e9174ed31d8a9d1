// Package protocol defines what travels between the custody core and an
// approval device: the protocol version, the protobuf [pb.Envelope] that
// carries every message, and how envelopes are encoded and checked.
//
// The byte-level framing of envelopes into 64-byte HID reports lives in
// [github.com/opencustodynet/opencustody/protocol/framing]; the messages
// themselves are generated into
// [github.com/opencustodynet/opencustody/protocol/pb]. The normative text for
// firmware authors is firmware-spec/ in the repository; the Go tests read its
// vectors, so the spec and this code cannot drift.
//
// # Guarantees
//
// [DecodeEnvelope] never returns a partly valid envelope: on error the
// envelope is nil. It rejects unknown protocol versions, envelopes with no
// message, and encodings larger than [MaxEnvelopeSize].
package protocol
