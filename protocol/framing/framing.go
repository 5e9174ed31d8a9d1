// Package framing splits protocol messages into 64-byte HID reports and
// reassembles them, following the shape of FIDO CTAPHID.
//
// A message travels as one INIT report followed by up to [MaxContSeq]+1 CONT
// reports, all on one channel:
//
//	INIT: CID (4) | CMD|0x80 (1) | BCNT (2, big endian) | DATA (57)
//	CONT: CID (4) | SEQ 0..127 (1) | DATA (59)
//
// Unused bytes of the last report are zero. A host first allocates a
// channel by sending [CmdInit] with an 8-byte nonce on [BroadcastCID]; see
// [InitRequest] and [InitResponse]. firmware-spec/framing.md is the
// normative description, and its vectors are this package's tests.
//
// # Use
//
// A sender calls [Fragment] and writes each report in order. A receiver
// feeds every report it reads to one [Reassembler] with [Reassembler.Push],
// and calls [Reassembler.Expire] from a timer so that a message abandoned
// half way is dropped and its sender told. A [*FrameError] carries the
// [ErrorCode] to answer with; [ErrorReport] builds that answer. The
// transport carries whole 64-byte reports (a USB HID interrupt report, or
// one UDP datagram for the emulator); this package never sees it.
//
// # Guarantees
//
// [Fragment] and [Reassembler] are exact inverses for every message up to
// [MaxMessageSize]: Fragment refuses what a Reassembler would refuse. The
// reassembler never returns a partial message. A report that breaks a rule
// yields a [*FrameError] naming the rule (one of the Err sentinels, to test
// with [errors.Is]) with the matching [ErrorCode]. Reports that cannot
// belong to the message in progress ([ErrReportSize], [ErrReservedChannel],
// [ErrWrongChannel]) are refused and the message in progress is kept; every
// other error drops it.
package framing

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// Sizes of the framing, in bytes.
const (
	// ReportSize is the size of every report, INIT or CONT.
	ReportSize     = 64
	initHeaderSize = 7
	contHeaderSize = 5
	// InitDataSize is how many message bytes an INIT report carries.
	InitDataSize = ReportSize - initHeaderSize // 57
	// ContDataSize is how many message bytes a CONT report carries.
	ContDataSize = ReportSize - contHeaderSize // 59
	// MaxContSeq is the highest CONT sequence number.
	MaxContSeq = 127
	// MaxMessageSize is the largest message: one INIT and 128 CONT reports.
	MaxMessageSize = InitDataSize + (MaxContSeq+1)*ContDataSize // 7609
)

// Channel ids with a fixed meaning.
const (
	// BroadcastCID carries only channel allocation ([CmdInit] both ways)
	// and the [CmdError] a device sends about a report it received on it.
	BroadcastCID uint32 = 0xffffffff
	// ReservedCID is never valid; reports on it are not answered.
	ReservedCID uint32 = 0
)

// Command identifies what an INIT report starts. On the wire it is sent with
// the high bit set; the constants here are the wire values.
type Command byte

const (
	// CmdPing echoes its data; a liveness check that needs no device state.
	CmdPing Command = 0x81
	// CmdMsg carries one protobuf envelope (package protocol).
	CmdMsg Command = 0x83
	// CmdInit allocates a channel; see [InitRequest] and [InitResponse].
	CmdInit Command = 0x86
	// CmdCancel aborts the transaction in progress on the channel; no data.
	CmdCancel Command = 0x91
	// CmdKeepalive tells the host the device is still working; its data is
	// one [KeepaliveStatus] byte.
	CmdKeepalive Command = 0xbb
	// CmdError reports a framing error; its data is one [ErrorCode] byte.
	CmdError Command = 0xbf
)

func (c Command) String() string {
	switch c {
	case CmdPing:
		return "PING"
	case CmdMsg:
		return "MSG"
	case CmdInit:
		return "INIT"
	case CmdCancel:
		return "CANCEL"
	case CmdKeepalive:
		return "KEEPALIVE"
	case CmdError:
		return "ERROR"
	}
	return fmt.Sprintf("CMD(0x%02x)", byte(c))
}

// Known reports whether c is a command defined by this protocol version.
func (c Command) Known() bool {
	switch c {
	case CmdPing, CmdMsg, CmdInit, CmdCancel, CmdKeepalive, CmdError:
		return true
	}
	return false
}

// allowedOn reports whether c may be sent on channel cid.
func (c Command) allowedOn(cid uint32) bool {
	return cid != BroadcastCID || c == CmdInit || c == CmdError
}

// KeepaliveStatus is the data byte of a [CmdKeepalive] report.
type KeepaliveStatus byte

const (
	// KeepaliveProcessing: the device is working on the request.
	KeepaliveProcessing KeepaliveStatus = 0x01
	// KeepaliveUserNeeded: the device waits for the user to press a button.
	KeepaliveUserNeeded KeepaliveStatus = 0x02
)

// ErrorCode is the data byte of a [CmdError] report.
type ErrorCode byte

const (
	// ErrCodeInvalidCmd: the command is not known.
	ErrCodeInvalidCmd ErrorCode = 0x01
	// ErrCodeInvalidPar: a parameter (e.g. the INIT nonce) is malformed.
	ErrCodeInvalidPar ErrorCode = 0x02
	// ErrCodeInvalidLen: the announced length exceeds MaxMessageSize or the
	// report is not 64 bytes.
	ErrCodeInvalidLen ErrorCode = 0x03
	// ErrCodeInvalidSeq: a CONT report is out of sequence or arrived with
	// no message in progress, or an INIT interrupted the channel's own
	// message.
	ErrCodeInvalidSeq ErrorCode = 0x04
	// ErrCodeMsgTimeout: the message was not completed in time.
	ErrCodeMsgTimeout ErrorCode = 0x05
	// ErrCodeChannelBusy: another channel is in the middle of a message.
	ErrCodeChannelBusy ErrorCode = 0x06
	// ErrCodeInvalidChannel: the channel id is reserved, or broadcast for a
	// command other than INIT.
	ErrCodeInvalidChannel ErrorCode = 0x0b
	// ErrCodeOther: anything else.
	ErrCodeOther ErrorCode = 0x7f
)

// Errors returned by the reassembler and the parsers, each wrapped in a
// [*FrameError]; [Fragment] returns the first five, unwrapped. The test
// vectors in firmware-spec/vectors name each one by the id in its comment.
var (
	// ErrReportSize (report_size): a report is not [ReportSize] bytes.
	ErrReportSize = errors.New("framing: report is not 64 bytes")
	// ErrReservedChannel (reserved_channel): a report on [ReservedCID].
	ErrReservedChannel = errors.New("framing: reserved channel id")
	// ErrBroadcastMisuse (broadcast_misuse): a command other than INIT or
	// ERROR on [BroadcastCID].
	ErrBroadcastMisuse = errors.New("framing: broadcast channel used for a command other than INIT or ERROR")
	// ErrUnknownCommand (unknown_command): an INIT report names a command
	// this version does not define.
	ErrUnknownCommand = errors.New("framing: unknown command")
	// ErrMessageTooLong (too_long): the announced length exceeds
	// [MaxMessageSize].
	ErrMessageTooLong = errors.New("framing: announced length exceeds maximum message size")
	// ErrUnexpectedCont (unexpected_cont): a CONT report with no message in
	// progress.
	ErrUnexpectedCont = errors.New("framing: continuation with no message in progress")
	// ErrWrongChannel (wrong_channel): a report on another channel while a
	// message is in progress; that message is kept.
	ErrWrongChannel = errors.New("framing: report on another channel while a message is in progress")
	// ErrWrongSequence (wrong_sequence): a CONT report whose sequence number
	// is not the next one.
	ErrWrongSequence = errors.New("framing: continuation out of sequence")
	// ErrInterleaved (interleaved): an INIT report on the channel whose
	// message is in progress.
	ErrInterleaved = errors.New("framing: new message started before the previous one completed")
	// ErrTimeout (timeout): the gap between two reports of a message
	// exceeded the reassembler's timeout.
	ErrTimeout = errors.New("framing: message not completed in time")
	// ErrBadInit (bad_init): an INIT request or response payload is
	// malformed.
	ErrBadInit = errors.New("framing: malformed INIT payload")
)

// FrameError is a framing failure: the rule broken, the channel it happened
// on, and the code to report to the peer in a [CmdError] report on that
// channel (see [ErrorReport]; nothing is sent when CID is [ReservedCID]).
type FrameError struct {
	Err  error
	CID  uint32
	Code ErrorCode
}

func (e *FrameError) Error() string { return fmt.Sprintf("%v (channel %08x)", e.Err, e.CID) }
func (e *FrameError) Unwrap() error { return e.Err }

func frameErr(err error, cid uint32, code ErrorCode) *FrameError {
	return &FrameError{Err: err, CID: cid, Code: code}
}

// Message is one reassembled message.
type Message struct {
	CID  uint32
	Cmd  Command
	Data []byte
}

// Fragment splits data into the reports that carry it on channel cid as
// command cmd. It fails if data exceeds [MaxMessageSize], cid is
// [ReservedCID], cmd is not [Command.Known], or cmd may not be sent on
// [BroadcastCID]: it never builds reports that a [Reassembler] refuses.
func Fragment(cid uint32, cmd Command, data []byte) ([][]byte, error) {
	switch {
	case len(data) > MaxMessageSize:
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMessageTooLong, len(data), MaxMessageSize)
	case cid == ReservedCID:
		return nil, ErrReservedChannel
	case !cmd.Known():
		return nil, fmt.Errorf("%w: %v", ErrUnknownCommand, cmd)
	case !cmd.allowedOn(cid):
		return nil, fmt.Errorf("%w: %v", ErrBroadcastMisuse, cmd)
	}
	n := reportCount(len(data))
	reports := make([][]byte, 0, n)
	// One zeroed allocation holds every report; each builder is capped to
	// its own 64 bytes, so a report never grows into the next one.
	backing := make([]byte, n*ReportSize)
	next := func() *cryptobyte.Builder {
		b := cryptobyte.NewFixedBuilder(backing[:0:ReportSize])
		backing = backing[ReportSize:]
		return b
	}
	first := min(len(data), InitDataSize)
	b := next()
	b.AddUint32(cid)
	b.AddUint8(byte(cmd))
	b.AddUint16(uint16(len(data)))
	b.AddBytes(data[:first])
	reports = append(reports, pad(b.BytesOrPanic()))
	rest := data[first:]
	for seq := 0; len(rest) > 0; seq++ {
		n := min(len(rest), ContDataSize)
		b := next()
		b.AddUint32(cid)
		b.AddUint8(uint8(seq))
		b.AddBytes(rest[:n])
		reports = append(reports, pad(b.BytesOrPanic()))
		rest = rest[n:]
	}
	return reports, nil
}

// reportCount is how many reports carry a message of n bytes.
func reportCount(n int) int {
	if n <= InitDataSize {
		return 1
	}
	return 1 + (n-InitDataSize+ContDataSize-1)/ContDataSize
}

// pad extends a report to ReportSize with zeros. The slice has that
// capacity already, and its spare capacity is zero.
func pad(r []byte) []byte { return r[:ReportSize] }

// report is a parsed report header with its payload.
type report struct {
	cid     uint32
	isInit  bool
	cmd     Command // INIT only
	bcnt    uint16  // INIT only
	seq     uint8   // CONT only
	payload []byte
}

// parseReport reads the header of one 64-byte report.
func parseReport(r []byte) (report, error) {
	if len(r) != ReportSize {
		return report{}, frameErr(fmt.Errorf("%w: got %d", ErrReportSize, len(r)), ReservedCID, ErrCodeInvalidLen)
	}
	s := cryptobyte.String(r)
	var rep report
	var b uint8
	if !s.ReadUint32(&rep.cid) || !s.ReadUint8(&b) {
		panic("framing: unreachable short report")
	}
	if b&0x80 != 0 {
		rep.isInit = true
		rep.cmd = Command(b)
		if !s.ReadUint16(&rep.bcnt) {
			panic("framing: unreachable short report")
		}
	} else {
		rep.seq = b
	}
	rep.payload = s
	return rep, nil
}
