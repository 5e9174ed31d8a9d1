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
// # Guarantees
//
// [Fragment] and [Reassembler] are exact inverses for every message up to
// [MaxMessageSize]. The reassembler never returns a partial message: a
// report that breaks the rules yields a [*FrameError] naming the rule, with
// the matching [ErrorCode] to send back, and the message in progress is
// dropped.
package framing

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// Sizes of the framing, in bytes.
const (
	ReportSize     = 64
	initHeaderSize = 7
	contHeaderSize = 5
	InitDataSize   = ReportSize - initHeaderSize // 57
	ContDataSize   = ReportSize - contHeaderSize // 59
	// MaxContSeq is the highest CONT sequence number.
	MaxContSeq = 127
	// MaxMessageSize is the largest message: one INIT and 128 CONT reports.
	MaxMessageSize = InitDataSize + (MaxContSeq+1)*ContDataSize // 7609
)

// Channel ids with a fixed meaning.
const (
	// BroadcastCID is used only for channel allocation ([CmdInit]).
	BroadcastCID uint32 = 0xffffffff
	// ReservedCID is never valid.
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
	// CmdCancel aborts the transaction in progress on the channel.
	CmdCancel Command = 0x91
	// CmdKeepalive tells the host the device is still working (1 data byte:
	// 1 processing, 2 waiting for the user).
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
	// ErrCodeInvalidSeq: a CONT report is out of sequence, or arrived with
	// no message in progress.
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
// [*FrameError]. Test vectors name them by the text after "framing: ".
var (
	ErrReportSize      = errors.New("framing: report is not 64 bytes")
	ErrReservedChannel = errors.New("framing: reserved channel id")
	ErrBroadcastMisuse = errors.New("framing: broadcast channel used for a command other than INIT")
	ErrUnknownCommand  = errors.New("framing: unknown command")
	ErrMessageTooLong  = errors.New("framing: announced length exceeds maximum message size")
	ErrUnexpectedCont  = errors.New("framing: continuation with no message in progress")
	ErrWrongChannel    = errors.New("framing: report on another channel while a message is in progress")
	ErrWrongSequence   = errors.New("framing: continuation out of sequence")
	ErrInterleaved     = errors.New("framing: new message started before the previous one completed")
	ErrTimeout         = errors.New("framing: message not completed in time")
	ErrBadInit         = errors.New("framing: malformed INIT payload")
)

// FrameError is a framing failure: the rule broken, the channel it happened
// on, and the code to report to the peer in a [CmdError] report.
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
// command cmd. It fails only if data exceeds [MaxMessageSize].
func Fragment(cid uint32, cmd Command, data []byte) ([][]byte, error) {
	if len(data) > MaxMessageSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMessageTooLong, len(data), MaxMessageSize)
	}
	var reports [][]byte
	first := min(len(data), InitDataSize)
	b := cryptobyte.NewFixedBuilder(make([]byte, 0, ReportSize))
	b.AddUint32(cid)
	b.AddUint8(byte(cmd) | 0x80)
	b.AddUint16(uint16(len(data)))
	b.AddBytes(data[:first])
	reports = append(reports, pad(b.BytesOrPanic()))
	rest := data[first:]
	for seq := 0; len(rest) > 0; seq++ {
		n := min(len(rest), ContDataSize)
		b := cryptobyte.NewFixedBuilder(make([]byte, 0, ReportSize))
		b.AddUint32(cid)
		b.AddUint8(uint8(seq))
		b.AddBytes(rest[:n])
		reports = append(reports, pad(b.BytesOrPanic()))
		rest = rest[n:]
	}
	return reports, nil
}

// pad extends a report to ReportSize with zeros. The slice has that
// capacity already.
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
		return report{}, frameErr(fmt.Errorf("%w: got %d", ErrReportSize, len(r)), 0, ErrCodeInvalidLen)
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
