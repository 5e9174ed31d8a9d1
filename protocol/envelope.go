package protocol

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

// Version is the protocol version this implementation speaks. See
// firmware-spec/CHANGELOG.md for what each version changed.
const Version uint32 = 1

// MaxEnvelopeSize is the largest encoded envelope: the framing's maximum
// message size.
const MaxEnvelopeSize = framing.MaxMessageSize

var (
	// ErrUnsupportedVersion means the envelope's version is not [Version].
	ErrUnsupportedVersion = errors.New("protocol: unsupported protocol version")
	// ErrEmptyEnvelope means the envelope carries no message this version
	// defines.
	ErrEmptyEnvelope = errors.New("protocol: envelope carries no message")
	// ErrEnvelopeTooLarge means the encoding exceeds [MaxEnvelopeSize].
	ErrEnvelopeTooLarge = errors.New("protocol: envelope too large")
	// ErrMalformedEnvelope means the bytes are not a valid protobuf envelope,
	// or a known field has the wrong wire type.
	ErrMalformedEnvelope = errors.New("protocol: malformed envelope")
)

// envelopeMsg is the oneof of [pb.Envelope] that carries the message.
var envelopeMsg = (&pb.Envelope{}).ProtoReflect().Descriptor().Oneofs().ByName("msg")

// Wrap puts msg (for example a *pb.Ping) into an envelope of the current
// [Version]. It fails if msg's type is not one the envelope carries.
func Wrap(msg proto.Message) (*pb.Envelope, error) {
	if msg == nil {
		return nil, ErrEmptyEnvelope
	}
	env := &pb.Envelope{Version: Version}
	name := msg.ProtoReflect().Descriptor().FullName()
	fields := envelopeMsg.Fields()
	for i := range fields.Len() {
		if f := fields.Get(i); f.Message().FullName() == name {
			env.ProtoReflect().Set(f, protoreflect.ValueOfMessage(msg.ProtoReflect()))
			return env, nil
		}
	}
	return nil, fmt.Errorf("protocol: %s is not carried by the envelope", name)
}

// Unwrap returns the message an envelope carries, or nil if it carries none.
func Unwrap(env *pb.Envelope) proto.Message {
	m := env.ProtoReflect()
	f := m.WhichOneof(envelopeMsg)
	if f == nil {
		return nil
	}
	return m.Get(f).Message().Interface()
}

// EncodeEnvelope wraps msg (see [Wrap]) and returns the deterministic
// encoding of the envelope.
func EncodeEnvelope(msg proto.Message) ([]byte, error) {
	env, err := Wrap(msg)
	if err != nil {
		return nil, err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("protocol: encode envelope: %w", err)
	}
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrEnvelopeTooLarge, len(b), MaxEnvelopeSize)
	}
	return b, nil
}

// DecodeEnvelope parses and checks an encoded envelope. On error the
// returned envelope is nil; errors wrap the sentinels above, and
// [ErrUnsupportedVersion] errors name the version received.
func DecodeEnvelope(b []byte) (*pb.Envelope, error) {
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrEnvelopeTooLarge, len(b), MaxEnvelopeSize)
	}
	var env pb.Envelope
	if err := (proto.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(b, &env); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedEnvelope, err)
	}
	if err := checkWireTypes(env.ProtoReflect()); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedEnvelope, err)
	}
	if env.Version != Version {
		return nil, fmt.Errorf("%w: got %d, this side speaks %d", ErrUnsupportedVersion, env.Version, Version)
	}
	if env.Msg == nil {
		return nil, ErrEmptyEnvelope
	}
	return &env, nil
}

// checkWireTypes rejects a known field sent with the wrong wire type, in m
// or any message inside it. The protobuf runtime keeps such a field as an
// unknown field and reads the known one as unset; a decoder that rejects it
// instead (as many embedded ones do) would then disagree with this one
// about what was sent, for example about Ping.button_protection.
func checkWireTypes(m protoreflect.Message) error {
	fields := m.Descriptor().Fields()
	for b := m.GetUnknown(); len(b) > 0; {
		num, typ, n := protowire.ConsumeField(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if f := fields.ByNumber(num); f != nil {
			return fmt.Errorf("field %s has wire type %d", f.FullName(), typ)
		}
		b = b[n:]
	}
	var err error
	m.Range(func(f protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case f.IsList() && f.Message() != nil:
			for i := range v.List().Len() {
				if err = checkWireTypes(v.List().Get(i).Message()); err != nil {
					return false
				}
			}
		case f.IsMap() && f.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, v protoreflect.Value) bool {
				err = checkWireTypes(v.Message())
				return err == nil
			})
		case !f.IsList() && !f.IsMap() && f.Message() != nil:
			err = checkWireTypes(v.Message())
		}
		return err == nil
	})
	return err
}
