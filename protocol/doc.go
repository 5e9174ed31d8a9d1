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
// # Use
//
// A sender calls [EncodeEnvelope] with the message (a *pb.Ping, say) and
// sends the bytes as one [framing.CmdMsg] message. A receiver calls
// [DecodeEnvelope] on the reassembled bytes and [Unwrap] to get the
// message, then switches on its type.
//
// # Guarantees
//
// [EncodeEnvelope] is deterministic: equal messages give equal bytes.
// [DecodeEnvelope] never returns a partly valid envelope: on error the
// envelope is nil, and the error wraps exactly one of
// [ErrUnsupportedVersion], [ErrEmptyEnvelope], [ErrMalformedEnvelope] and
// [ErrEnvelopeTooLarge]. It rejects a known field sent with the wrong wire
// type as malformed, where the protobuf runtime alone would drop the
// field, so that it cannot disagree with a stricter decoder about what was
// sent. Fields this version does not define are kept and ignored, as
// proto3 does; an envelope whose only message is one this version does not
// define carries no message for this side ([ErrEmptyEnvelope]).
package protocol
