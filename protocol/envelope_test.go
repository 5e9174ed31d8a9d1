package protocol_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/firmware-spec/vectors"
	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

// errorIDs maps the stable error ids of envelope.json to the sentinels.
var errorIDs = map[string]error{
	"unsupported_version": protocol.ErrUnsupportedVersion,
	"empty_envelope":      protocol.ErrEmptyEnvelope,
	"malformed":           protocol.ErrMalformedEnvelope,
	"too_large":           protocol.ErrEnvelopeTooLarge,
}

func loadEnvelope(tb testing.TB) *vectors.Envelope {
	tb.Helper()
	v, err := vectors.LoadEnvelope()
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

func TestVectorConstants(t *testing.T) {
	v := loadEnvelope(t)
	if v.Version != protocol.Version || v.MaxSize != protocol.MaxEnvelopeSize {
		t.Errorf("envelope.json: version %d, max size %d; package: %d, %d", v.Version, v.MaxSize, protocol.Version, protocol.MaxEnvelopeSize)
	}
}

func TestVectorValid(t *testing.T) {
	for _, e := range loadEnvelope(t).Valid {
		t.Run(e.Name, func(t *testing.T) {
			got, err := protocol.DecodeEnvelope(e.Encoding)
			if err != nil {
				t.Fatalf("DecodeEnvelope: %v", err)
			}
			if e.Envelope == nil {
				// Only the round trip is stated.
				b, err := proto.MarshalOptions{Deterministic: true}.Marshal(got)
				if err != nil || !bytes.Equal(b, e.Encoding) {
					t.Fatalf("re-encoding: %v; equal %v", err, bytes.Equal(b, e.Encoding))
				}
				return
			}
			var want pb.Envelope
			if err := (protojson.UnmarshalOptions{}).Unmarshal(e.Envelope, &want); err != nil {
				t.Fatalf("vector's envelope: %v", err)
			}
			if !proto.Equal(got, &want) {
				t.Errorf("DecodeEnvelope:\n got %v\nwant %v", got, &want)
			}
			enc, err := protocol.EncodeEnvelope(protocol.Unwrap(&want))
			if err != nil {
				t.Fatalf("EncodeEnvelope: %v", err)
			}
			if !bytes.Equal(enc, e.Encoding) {
				t.Errorf("EncodeEnvelope:\n got %x\nwant %x", enc, []byte(e.Encoding))
			}
		})
	}
}

func TestVectorInvalid(t *testing.T) {
	for _, e := range loadEnvelope(t).Invalid {
		t.Run(e.Name, func(t *testing.T) {
			want, ok := errorIDs[e.Error]
			if !ok {
				t.Fatalf("unknown error id %q", e.Error)
			}
			env, err := protocol.DecodeEnvelope(e.Encoding)
			if !errors.Is(err, want) {
				t.Fatalf("got %v, want %v", err, want)
			}
			if env != nil {
				t.Errorf("envelope %v returned with the error", env)
			}
		})
	}
}

// TestVectorCoverage checks that every message the envelope carries, and
// every error id, has a vector.
func TestVectorCoverage(t *testing.T) {
	v := loadEnvelope(t)
	seen := map[string]bool{}
	for _, e := range v.Valid {
		env, err := protocol.DecodeEnvelope(e.Encoding)
		if err != nil {
			continue // reported by TestVectorValid
		}
		seen[string(protocol.Unwrap(env).ProtoReflect().Descriptor().FullName())] = true
	}
	fields := (&pb.Envelope{}).ProtoReflect().Descriptor().Oneofs().ByName("msg").Fields()
	for i := range fields.Len() {
		if name := string(fields.Get(i).Message().FullName()); !seen[name] {
			t.Errorf("no valid vector carries %s", name)
		}
	}
	for _, e := range v.Invalid {
		seen[e.Error] = true
	}
	for id := range errorIDs {
		if !seen[id] {
			t.Errorf("no vector expects error %q", id)
		}
	}
}

func TestWrap(t *testing.T) {
	env, err := protocol.Wrap(&pb.Ping{Message: "x"})
	if err != nil || env.Version != protocol.Version || env.GetPing().GetMessage() != "x" {
		t.Fatalf("Wrap(Ping): %v, %v", env, err)
	}
	if _, err := protocol.Wrap(nil); !errors.Is(err, protocol.ErrEmptyEnvelope) {
		t.Errorf("Wrap(nil): %v", err)
	}
	if _, err := protocol.Wrap(&pb.Envelope{}); err == nil || !strings.HasPrefix(err.Error(), "protocol: ") {
		t.Errorf("Wrap(Envelope): %v, want an error", err)
	}
	if m := protocol.Unwrap(&pb.Envelope{Version: 1}); m != nil {
		t.Errorf("Unwrap(empty) = %v", m)
	}
	if m := protocol.Unwrap(nil); m != nil {
		t.Errorf("Unwrap(nil) = %v", m)
	}
}

func TestEncodeEnvelopeTooLarge(t *testing.T) {
	// 8 bytes of envelope and Ping framing around the text.
	fits := strings.Repeat("a", protocol.MaxEnvelopeSize-8)
	b, err := protocol.EncodeEnvelope(&pb.Ping{Message: fits})
	if err != nil || len(b) != protocol.MaxEnvelopeSize {
		t.Fatalf("largest envelope: %d bytes, %v", len(b), err)
	}
	if b, err := protocol.EncodeEnvelope(&pb.Ping{Message: fits + "a"}); !errors.Is(err, protocol.ErrEnvelopeTooLarge) || b != nil {
		t.Fatalf("one byte over: %d bytes, %v", len(b), err)
	}
}

func TestDecodeEnvelopeNamesVersion(t *testing.T) {
	b, _ := proto.Marshal(&pb.Envelope{Version: 7, Msg: &pb.Envelope_Cancel{Cancel: &pb.Cancel{}}})
	_, err := protocol.DecodeEnvelope(b)
	if !errors.Is(err, protocol.ErrUnsupportedVersion) || !strings.Contains(err.Error(), "got 7") {
		t.Fatalf("got %v", err)
	}
}
