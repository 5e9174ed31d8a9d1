// Package vectors loads the protocol's committed test vectors, the JSON
// files in firmware-spec/vectors, so that Go tests in any package check the
// code against the same bytes a firmware author reads.
//
// # Files
//
//   - framing.json (see [LoadFraming]): messages and the exact 64-byte
//     reports that carry them, messages a sender must refuse, the channel
//     allocation payloads, ERROR reports, and report sequences fed to a
//     receiver with the outcome of each step.
//   - envelope.json (see [LoadEnvelope]): each message of device.proto in its
//     envelope and the exact encoding, and encodings a receiver rejects.
//
// Each file's "conventions" list explains its fields; firmware-spec/framing.md
// is the normative text. Expected errors are named by stable ids (for
// example "wrong_sequence"); the spec lists them, and each consumer maps
// them to its own errors.
//
// # Guarantees
//
// The loaders decode strictly: an unknown field, a hex string that is not
// lowercase hex of the right length, or an unknown data pattern is an error,
// so a typo in a vector fails the tests instead of being skipped. Byte
// patterns ("counter", "repeat") are expanded, so callers only see bytes.
package vectors

import (
	"bytes"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
)

//go:embed framing.json envelope.json
var files embed.FS

// Hex is a byte string written as lowercase hex.
type Hex []byte

// UnmarshalJSON decodes a lowercase hex string.
func (h *Hex) UnmarshalJSON(b []byte) error {
	s, err := unquoteHex(b, -1)
	if err != nil {
		return err
	}
	*h = s
	return nil
}

// CID is a channel id written as 8 hex digits.
type CID uint32

// UnmarshalJSON decodes 8 hex digits, big endian.
func (c *CID) UnmarshalJSON(b []byte) error {
	s, err := unquoteHex(b, 4)
	if err != nil {
		return err
	}
	*c = CID(uint32(s[0])<<24 | uint32(s[1])<<16 | uint32(s[2])<<8 | uint32(s[3]))
	return nil
}

// OptionalCID is a channel id, or the empty string for none.
type OptionalCID struct {
	CID   uint32
	Valid bool
}

// UnmarshalJSON decodes "" or 8 hex digits.
func (o *OptionalCID) UnmarshalJSON(b []byte) error {
	if string(b) == `""` {
		*o = OptionalCID{}
		return nil
	}
	var c CID
	if err := c.UnmarshalJSON(b); err != nil {
		return err
	}
	*o = OptionalCID{CID: uint32(c), Valid: true}
	return nil
}

// Byte is one byte written as 2 hex digits (a command or an error code).
type Byte byte

// UnmarshalJSON decodes 2 hex digits.
func (v *Byte) UnmarshalJSON(b []byte) error {
	s, err := unquoteHex(b, 1)
	if err != nil {
		return err
	}
	*v = Byte(s[0])
	return nil
}

// unquoteHex decodes a JSON string of lowercase hex, of n bytes unless n
// is negative.
func unquoteHex(b []byte, n int) ([]byte, error) {
	s, err := strconv.Unquote(string(b))
	if err != nil || len(b) < 2 || b[0] != '"' {
		return nil, fmt.Errorf("vectors: want a hex string, got %s", b)
	}
	out, err := hex.DecodeString(s)
	if err != nil || hex.EncodeToString(out) != s {
		return nil, fmt.Errorf("vectors: %q is not lowercase hex", s)
	}
	if n >= 0 && len(out) != n {
		return nil, fmt.Errorf("vectors: %q is %d bytes, want %d", s, len(out), n)
	}
	return out, nil
}

// Data is a byte string written either as {"hex": ...} or as a pattern:
// {"pattern": "counter", "len": n} is n bytes where byte i is i mod 256;
// {"prefix": hex, "pattern": "repeat", "byte": hex, "len": n} is the prefix
// followed by the byte repeated up to n bytes in total. A prefix may also
// precede a counter, which then counts from 0 after the prefix.
type Data []byte

// UnmarshalJSON decodes and expands a data object.
func (d *Data) UnmarshalJSON(b []byte) error {
	var raw struct {
		Hex     *Hex   `json:"hex"`
		Prefix  Hex    `json:"prefix"`
		Pattern string `json:"pattern"`
		Byte    *Byte  `json:"byte"`
		Len     *int   `json:"len"`
	}
	if err := strictUnmarshal(b, &raw); err != nil {
		return err
	}
	if raw.Hex != nil {
		if raw.Pattern != "" || raw.Prefix != nil || raw.Byte != nil || raw.Len != nil {
			return fmt.Errorf("vectors: data %s mixes hex with a pattern", b)
		}
		*d = Data(*raw.Hex)
		return nil
	}
	if raw.Len == nil || *raw.Len < len(raw.Prefix) {
		return fmt.Errorf("vectors: data %s needs a len of at least its prefix", b)
	}
	out := append(make([]byte, 0, *raw.Len), raw.Prefix...)
	switch {
	case raw.Pattern == "counter" && raw.Byte == nil:
		for i := range *raw.Len - len(raw.Prefix) {
			out = append(out, byte(i))
		}
	case raw.Pattern == "repeat" && raw.Byte != nil:
		out = append(out, bytes.Repeat([]byte{byte(*raw.Byte)}, *raw.Len-len(raw.Prefix))...)
	default:
		return fmt.Errorf("vectors: data %s: unknown pattern %q or wrong fields for it", b, raw.Pattern)
	}
	*d = out
	return nil
}

// Framing is framing.json.
type Framing struct {
	Description    string   `json:"description"`
	Conventions    []string `json:"conventions"`
	ReportSize     int      `json:"report_size"`
	InitDataSize   int      `json:"init_data_size"`
	ContDataSize   int      `json:"cont_data_size"`
	MaxMessageSize int      `json:"max_message_size"`
	// TimeoutMS is the receiver's timeout for Sequences, in milliseconds.
	TimeoutMS    int64         `json:"timeout_ms"`
	Messages     []Message     `json:"messages"`
	Unsendable   []Unsendable  `json:"unsendable"`
	Init         Init          `json:"init"`
	ErrorReports []ErrorReport `json:"error_reports"`
	Sequences    []Sequence    `json:"sequences"`
}

// Message is a valid message and the exact reports that carry it.
type Message struct {
	Name    string `json:"name"`
	Note    string `json:"note,omitempty"`
	CID     CID    `json:"cid"`
	Cmd     Byte   `json:"cmd"`
	Data    Data   `json:"data"`
	Reports []Hex  `json:"reports"`
}

// Unsendable is a message a sender must refuse to fragment; Error is the id
// of the rule it breaks.
type Unsendable struct {
	Name  string `json:"name"`
	CID   CID    `json:"cid"`
	Cmd   Byte   `json:"cmd"`
	Data  Data   `json:"data"`
	Error string `json:"error"`
}

// Init holds the channel allocation vectors.
type Init struct {
	Requests  []InitRequest  `json:"requests"`
	Responses []InitResponse `json:"responses"`
	Invalid   []InitInvalid  `json:"invalid"`
}

// InitRequest is a host's allocation request: its payload and the reports
// that carry it on the broadcast channel.
type InitRequest struct {
	Name    string `json:"name"`
	Nonce   Hex    `json:"nonce"`
	Payload Hex    `json:"payload"`
	Reports []Hex  `json:"reports"`
}

// InitResponse is a device's allocation response.
type InitResponse struct {
	Name           string `json:"name"`
	Nonce          Hex    `json:"nonce"`
	CID            CID    `json:"cid"`
	FramingVersion uint8  `json:"framing_version"`
	Major          uint8  `json:"major"`
	Minor          uint8  `json:"minor"`
	Patch          uint8  `json:"patch"`
	Capabilities   uint8  `json:"capabilities"`
	Payload        Hex    `json:"payload"`
	Reports        []Hex  `json:"reports"`
}

// InitInvalid is an allocation payload that must be rejected. Kind is
// "request" or "response".
type InitInvalid struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Payload Hex    `json:"payload"`
	Error   string `json:"error"`
	Code    Byte   `json:"code"`
}

// ErrorReport is the single report of an ERROR with Code on CID.
type ErrorReport struct {
	CID    CID  `json:"cid"`
	Code   Byte `json:"code"`
	Report Hex  `json:"report"`
}

// Sequence is a series of reports fed to one fresh receiver.
type Sequence struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Steps       []Step `json:"steps"`
}

// Step results.
const (
	ResultNone    = "none"    // no message and no error
	ResultMessage = "message" // Message completed
	ResultError   = "error"   // Error, answered with Code on ErrorCID
)

// Step is one report pushed at AtMS (or, with Expire, one timer check at
// AtMS) and its outcome.
type Step struct {
	AtMS       int64        `json:"at_ms"`
	Report     Hex          `json:"report"`
	Expire     bool         `json:"expire"`
	Result     string       `json:"result"`
	Error      string       `json:"error"`
	ErrorCID   CID          `json:"error_cid"`
	Code       Byte         `json:"code"`
	Message    *StepMessage `json:"message"`
	InProgress OptionalCID  `json:"in_progress"`
}

// StepMessage is the message a step completes.
type StepMessage struct {
	CID  CID  `json:"cid"`
	Cmd  Byte `json:"cmd"`
	Data Data `json:"data"`
}

// Envelope is envelope.json.
type Envelope struct {
	Description string            `json:"description"`
	Conventions []string          `json:"conventions"`
	Version     uint32            `json:"version"`
	MaxSize     int               `json:"max_size"`
	Valid       []ValidEnvelope   `json:"valid"`
	Invalid     []InvalidEnvelope `json:"invalid"`
}

// ValidEnvelope is an envelope and its exact encoding. Envelope is the
// proto3 JSON mapping of the envelope (decode it with protojson), or empty
// when the vector only states that Encoding round-trips.
type ValidEnvelope struct {
	Name     string          `json:"name"`
	Envelope json.RawMessage `json:"envelope"`
	Encoding Data            `json:"encoding"`
}

// InvalidEnvelope is an encoding a receiver rejects; Error is the id of the
// rule it breaks.
type InvalidEnvelope struct {
	Name     string `json:"name"`
	Encoding Data   `json:"encoding"`
	Error    string `json:"error"`
}

// LoadFraming decodes framing.json.
func LoadFraming() (*Framing, error) {
	var v Framing
	if err := load("framing.json", &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// LoadEnvelope decodes envelope.json.
func LoadEnvelope() (*Envelope, error) {
	var v Envelope
	if err := load("envelope.json", &v); err != nil {
		return nil, err
	}
	return &v, nil
}

func load(name string, v any) error {
	b, err := files.ReadFile(name)
	if err != nil {
		return fmt.Errorf("vectors: %w", err)
	}
	if err := strictUnmarshal(b, v); err != nil {
		return fmt.Errorf("vectors: %s: %w", name, err)
	}
	return nil
}

// strictUnmarshal decodes one JSON value, refusing unknown fields and
// trailing data.
func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("vectors: trailing data after the JSON value")
	}
	return nil
}
