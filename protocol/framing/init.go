package framing

import (
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// NonceSize is the size of the channel-allocation nonce.
const NonceSize = 8

// InitRequest is the payload of a [CmdInit] sent by the host on
// [BroadcastCID]: a fresh random nonce that the answer must echo.
type InitRequest struct {
	Nonce [NonceSize]byte
}

// Marshal encodes the request.
func (q InitRequest) Marshal() []byte { return append([]byte(nil), q.Nonce[:]...) }

// ParseInitRequest decodes the payload of a host's [CmdInit].
func ParseInitRequest(data []byte) (InitRequest, error) {
	var q InitRequest
	s := cryptobyte.String(data)
	if !s.CopyBytes(q.Nonce[:]) || !s.Empty() {
		return InitRequest{}, frameErr(fmt.Errorf("%w: request is %d bytes, want %d", ErrBadInit, len(data), NonceSize), BroadcastCID, ErrCodeInvalidPar)
	}
	return q, nil
}

// InitResponseSize is the size of an encoded [InitResponse].
const InitResponseSize = NonceSize + 4 + 1 + 3 + 1

// InitResponse is the device's answer to an [InitRequest], sent on
// [BroadcastCID]: the echoed nonce, the channel id allocated to the host,
// the framing version and the firmware version.
type InitResponse struct {
	Nonce [NonceSize]byte
	CID   uint32
	// FramingVersion is the version of this framing layer (1).
	FramingVersion uint8
	// Firmware version, major.minor.patch.
	Major, Minor, Patch uint8
	// Capabilities is reserved and zero in framing version 1.
	Capabilities uint8
}

// FramingVersion is the version of the framing defined by this package.
const FramingVersion = 1

// Marshal encodes the response.
func (p InitResponse) Marshal() []byte {
	b := cryptobyte.NewFixedBuilder(make([]byte, 0, InitResponseSize))
	b.AddBytes(p.Nonce[:])
	b.AddUint32(p.CID)
	b.AddUint8(p.FramingVersion)
	b.AddUint8(p.Major)
	b.AddUint8(p.Minor)
	b.AddUint8(p.Patch)
	b.AddUint8(p.Capabilities)
	return b.BytesOrPanic()
}

// ParseInitResponse decodes a device's [CmdInit] answer. It does not check
// the nonce; the caller compares it with the one it sent.
func ParseInitResponse(data []byte) (InitResponse, error) {
	var p InitResponse
	s := cryptobyte.String(data)
	if !s.CopyBytes(p.Nonce[:]) || !s.ReadUint32(&p.CID) || !s.ReadUint8(&p.FramingVersion) ||
		!s.ReadUint8(&p.Major) || !s.ReadUint8(&p.Minor) || !s.ReadUint8(&p.Patch) ||
		!s.ReadUint8(&p.Capabilities) || !s.Empty() {
		return InitResponse{}, frameErr(fmt.Errorf("%w: response is %d bytes, want %d", ErrBadInit, len(data), InitResponseSize), BroadcastCID, ErrCodeInvalidPar)
	}
	if p.CID == ReservedCID || p.CID == BroadcastCID {
		return InitResponse{}, frameErr(fmt.Errorf("%w: allocated channel %08x is reserved", ErrBadInit, p.CID), BroadcastCID, ErrCodeInvalidPar)
	}
	return p, nil
}

// ErrorReport builds the single report of a [CmdError] with code on cid.
// It returns nil for [ReservedCID]: a report that cannot be attributed to a
// channel (wrong size, or sent on channel 0) is not answered.
func ErrorReport(cid uint32, code ErrorCode) []byte {
	r, err := Fragment(cid, CmdError, []byte{byte(code)})
	if err != nil {
		return nil
	}
	return r[0]
}
