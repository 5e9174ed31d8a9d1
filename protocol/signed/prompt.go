package signed

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

// Labels of the approval statements.
const (
	PromptLabel   = "OpenCustody prompt v1\x00"
	ApprovalLabel = "OpenCustody approval v1\x00"
)

// PromptKind says what a prompt asks the device's user to approve.
type PromptKind uint8

const (
	// PromptTransaction asks to approve a transaction; the payload is the
	// transaction summary's canonical encoding.
	PromptTransaction PromptKind = 1
	// PromptAdmin asks an admin to approve a change to users, devices or
	// policies; the payload is the change's canonical encoding.
	PromptAdmin PromptKind = 2
)

func (k PromptKind) valid() bool { return k == PromptTransaction || k == PromptAdmin }

// Limits on a prompt, so that it fits one framed message with room to
// spare and a small screen can show it.
const (
	NonceSize          = 32
	MaxPromptTitle     = 64
	MaxPromptFields    = 64
	MaxFieldLabel      = 32
	MaxFieldValue      = 256
	MaxPromptPayload   = 2048
	MaxRequestIDLength = 64
)

// Field is one labelled value a device shows, such as "Send" / "0.5 BTC".
type Field struct {
	Label string
	Value string
}

// Prompt is what the core asks one device's user to approve. The core
// builds it from what it verified itself (never from a submitter's text)
// and the HSM identity key signs its digest; the device verifies that
// signature against the HSM key it pinned, refuses a prompt for another
// device, shows the title and every field, and answers an [Approval].
//
// Statement:
//
//	PromptLabel
//	kind            uint8
//	request id      uint8 length, ASCII
//	device id       uint8 length, the target device's id (hex)
//	nonce           32 bytes, fresh per prompt
//	not after       uint64, Unix seconds: the core refuses answers after it
//	title           uint8 length, UTF-8
//	field count     uint8, then per field: uint8 length label, uint16 length value (UTF-8)
//	payload         uint16 length, the canonical machine form of what is shown
type Prompt struct {
	Kind      PromptKind
	RequestID string
	DeviceID  string
	Nonce     [NonceSize]byte
	NotAfter  time.Time
	Title     string
	Fields    []Field
	Payload   []byte
	// Signature is the HSM identity key's signature over Digest.
	Signature []byte
}

// ErrMalformedPrompt means prompt or approval bytes did not parse, or a
// field is out of its limits.
var ErrMalformedPrompt = errors.New("signed: malformed prompt or approval")

func checkText(what string, s string, max int) error {
	if len(s) > max || !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s must be valid UTF-8 of at most %d bytes", ErrMalformedPrompt, what, max)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %s contains a control character", ErrMalformedPrompt, what)
		}
	}
	return nil
}

func (p *Prompt) check() error {
	if !p.Kind.valid() {
		return fmt.Errorf("%w: unknown prompt kind %d", ErrMalformedPrompt, p.Kind)
	}
	if p.RequestID == "" || len(p.RequestID) > MaxRequestIDLength || p.DeviceID == "" || len(p.DeviceID) > 64 {
		return fmt.Errorf("%w: request id and device id must be 1 to 64 bytes", ErrMalformedPrompt)
	}
	if err := checkText("request id", p.RequestID, MaxRequestIDLength); err != nil {
		return err
	}
	if err := checkText("device id", p.DeviceID, 64); err != nil {
		return err
	}
	if p.Title == "" {
		return fmt.Errorf("%w: empty title", ErrMalformedPrompt)
	}
	if err := checkText("title", p.Title, MaxPromptTitle); err != nil {
		return err
	}
	if len(p.Fields) == 0 || len(p.Fields) > MaxPromptFields {
		return fmt.Errorf("%w: a prompt has 1 to %d fields", ErrMalformedPrompt, MaxPromptFields)
	}
	for i, f := range p.Fields {
		if f.Label == "" {
			return fmt.Errorf("%w: field %d has no label", ErrMalformedPrompt, i)
		}
		if err := checkText(fmt.Sprintf("field %d label", i), f.Label, MaxFieldLabel); err != nil {
			return err
		}
		if err := checkText(fmt.Sprintf("field %d value", i), f.Value, MaxFieldValue); err != nil {
			return err
		}
	}
	if len(p.Payload) > MaxPromptPayload {
		return fmt.Errorf("%w: payload is %d bytes, limit %d", ErrMalformedPrompt, len(p.Payload), MaxPromptPayload)
	}
	if _, ok := fromUnix(unixOrMax(p.NotAfter)); !ok || p.NotAfter.Unix() <= 0 {
		return fmt.Errorf("%w: expiry out of range", ErrMalformedPrompt)
	}
	return nil
}

// Statement returns the canonical bytes whose digest the HSM signs. It
// panics on a prompt outside its limits; [Prompt.Sign] checks first.
func (p *Prompt) Statement() []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddBytes([]byte(PromptLabel))
	b.AddUint8(uint8(p.Kind))
	addU8(b, []byte(p.RequestID))
	addU8(b, []byte(p.DeviceID))
	b.AddBytes(p.Nonce[:])
	b.AddUint64(unixOrMax(p.NotAfter))
	addU8(b, []byte(p.Title))
	b.AddUint8(uint8(len(p.Fields)))
	for _, f := range p.Fields {
		addU8(b, []byte(f.Label))
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(f.Value)) })
	}
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(p.Payload) })
	return b.BytesOrPanic()
}

func addU8(b *cryptobyte.Builder, v []byte) {
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(v) })
}

// Digest is SHA-256 of the statement: what the HSM signs and what an
// approval names.
func (p *Prompt) Digest() []byte {
	d := sha256.Sum256(p.Statement())
	return d[:]
}

// Sign checks the prompt's limits and signs it with the HSM identity key.
func (p *Prompt) Sign(hsm Signer) error {
	if err := p.check(); err != nil {
		return err
	}
	sig, err := hsm.SignDigest(p.Digest())
	if err != nil {
		return fmt.Errorf("signed: sign prompt for request %s: %w", p.RequestID, err)
	}
	p.Signature = sig
	return nil
}

// Verify checks that the HSM key (alg, key) signed the prompt.
func (p *Prompt) Verify(alg pb.Algorithm, key []byte) error {
	if err := Verify(alg, key, p.Digest(), p.Signature); err != nil {
		return fmt.Errorf("signed: prompt for request %s: %w", p.RequestID, err)
	}
	return nil
}

// Marshal encodes the prompt for transport: the statement and the
// signature, each with a uint16 length prefix.
func (p *Prompt) Marshal() []byte {
	return marshalSigned(p.Statement(), p.Signature)
}

func marshalSigned(stmt, sig []byte) []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(stmt) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(sig) })
	return b.BytesOrPanic()
}

func unmarshalSigned(data []byte, label string) (stmt cryptobyte.String, sig []byte, err error) {
	in := cryptobyte.String(data)
	var s, g cryptobyte.String
	var l []byte
	if !in.ReadUint16LengthPrefixed(&s) || !in.ReadUint16LengthPrefixed(&g) || !in.Empty() ||
		!s.ReadBytes(&l, len(label)) || string(l) != label {
		return nil, nil, fmt.Errorf("%w: bad encoding or label", ErrMalformedPrompt)
	}
	return s, append([]byte(nil), g...), nil
}

// ParsePrompt decodes a prompt made by [Prompt.Marshal] and checks its
// limits. It does not check the signature: call [Prompt.Verify].
func ParsePrompt(data []byte) (*Prompt, error) {
	s, sig, err := unmarshalSigned(data, PromptLabel)
	if err != nil {
		return nil, err
	}
	p := &Prompt{Signature: sig}
	var (
		kind, n         uint8
		rid, did, title cryptobyte.String
		na              uint64
		payload         cryptobyte.String
	)
	if !s.ReadUint8(&kind) || !s.ReadUint8LengthPrefixed(&rid) || !s.ReadUint8LengthPrefixed(&did) ||
		!s.CopyBytes(p.Nonce[:]) || !s.ReadUint64(&na) || !s.ReadUint8LengthPrefixed(&title) || !s.ReadUint8(&n) {
		return nil, fmt.Errorf("%w: truncated prompt", ErrMalformedPrompt)
	}
	for range n {
		var l, v cryptobyte.String
		if !s.ReadUint8LengthPrefixed(&l) || !s.ReadUint16LengthPrefixed(&v) {
			return nil, fmt.Errorf("%w: truncated field", ErrMalformedPrompt)
		}
		p.Fields = append(p.Fields, Field{Label: string(l), Value: string(v)})
	}
	if !s.ReadUint16LengthPrefixed(&payload) || !s.Empty() {
		return nil, fmt.Errorf("%w: bad payload", ErrMalformedPrompt)
	}
	t, ok := fromUnix(na)
	if !ok {
		return nil, fmt.Errorf("%w: expiry out of range", ErrMalformedPrompt)
	}
	p.Kind, p.RequestID, p.DeviceID, p.NotAfter, p.Title = PromptKind(kind), string(rid), string(did), t, string(title)
	p.Payload = append([]byte(nil), payload...)
	if err := p.check(); err != nil {
		return nil, err
	}
	return p, nil
}

// Decision is a device user's answer to a prompt.
type Decision uint8

const (
	// Approve: the user confirmed after seeing every field.
	Approve Decision = 1
	// Reject: the user refused. A rejection is signed too, so that a relay
	// cannot forge one any more than an approval.
	Reject Decision = 2
)

func (d Decision) String() string {
	switch d {
	case Approve:
		return "approve"
	case Reject:
		return "reject"
	}
	return fmt.Sprintf("decision(%d)", uint8(d))
}

// Approval is a device's signed answer to one prompt. Statement:
//
//	ApprovalLabel
//	prompt digest   32 bytes
//	nonce           32 bytes, the prompt's
//	decision        uint8
//	counter         uint64, the device's monotonic counter, incremented for
//	                every approval or rejection it signs
//	device id       uint8 length
//
// The device identity key signs SHA-256 of it. The core accepts it only
// from the paired, unrevoked device the prompt was for, for a prompt it
// issued and that has not expired, with a counter above the last one it
// accepted from that device.
type Approval struct {
	PromptDigest [32]byte
	Nonce        [NonceSize]byte
	Decision     Decision
	Counter      uint64
	DeviceID     string
	Signature    []byte
}

// Statement returns the canonical bytes the device signs the digest of.
func (a *Approval) Statement() []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddBytes([]byte(ApprovalLabel))
	b.AddBytes(a.PromptDigest[:])
	b.AddBytes(a.Nonce[:])
	b.AddUint8(uint8(a.Decision))
	b.AddUint64(a.Counter)
	addU8(b, []byte(a.DeviceID))
	return b.BytesOrPanic()
}

// Digest is SHA-256 of the statement.
func (a *Approval) Digest() []byte {
	d := sha256.Sum256(a.Statement())
	return d[:]
}

func (a *Approval) check() error {
	if a.Decision != Approve && a.Decision != Reject {
		return fmt.Errorf("%w: unknown decision %d", ErrMalformedPrompt, a.Decision)
	}
	if a.DeviceID == "" || len(a.DeviceID) > 64 {
		return fmt.Errorf("%w: device id must be 1 to 64 bytes", ErrMalformedPrompt)
	}
	return nil
}

// Sign signs the approval with the device identity key.
func (a *Approval) Sign(device Signer) error {
	if err := a.check(); err != nil {
		return err
	}
	sig, err := device.SignDigest(a.Digest())
	if err != nil {
		return fmt.Errorf("signed: sign approval: %w", err)
	}
	a.Signature = sig
	return nil
}

// Verify checks that the device key (alg, key) signed the approval.
func (a *Approval) Verify(alg pb.Algorithm, key []byte) error {
	if err := Verify(alg, key, a.Digest(), a.Signature); err != nil {
		return fmt.Errorf("signed: approval from device %s: %w", a.DeviceID, err)
	}
	return nil
}

// Marshal encodes the approval: statement and signature, each with a
// uint16 length prefix.
func (a *Approval) Marshal() []byte { return marshalSigned(a.Statement(), a.Signature) }

// ParseApproval decodes an approval made by [Approval.Marshal]. It does
// not check the signature: call [Approval.Verify].
func ParseApproval(data []byte) (*Approval, error) {
	s, sig, err := unmarshalSigned(data, ApprovalLabel)
	if err != nil {
		return nil, err
	}
	a := &Approval{Signature: sig}
	var dec uint8
	var did cryptobyte.String
	if !s.CopyBytes(a.PromptDigest[:]) || !s.CopyBytes(a.Nonce[:]) || !s.ReadUint8(&dec) ||
		!s.ReadUint64(&a.Counter) || !s.ReadUint8LengthPrefixed(&did) || !s.Empty() {
		return nil, fmt.Errorf("%w: truncated approval", ErrMalformedPrompt)
	}
	a.Decision, a.DeviceID = Decision(dec), string(did)
	if err := a.check(); err != nil {
		return nil, err
	}
	return a, nil
}
