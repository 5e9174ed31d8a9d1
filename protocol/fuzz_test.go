package protocol_test

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol"
)

func FuzzDecodeEnvelope(f *testing.F) {
	v := loadEnvelope(f)
	for _, e := range v.Valid {
		f.Add([]byte(e.Encoding))
	}
	for _, e := range v.Invalid {
		f.Add([]byte(e.Encoding))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := protocol.DecodeEnvelope(b)
		if err != nil {
			if env != nil {
				t.Fatalf("envelope %v returned with error %v", env, err)
			}
			n := 0
			for _, s := range errorIDs {
				if errors.Is(err, s) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("error %v matches %d sentinels", err, n)
			}
			return
		}
		if env.Version != protocol.Version || protocol.Unwrap(env) == nil {
			t.Fatalf("accepted envelope %v", env)
		}
		// The envelope as decoded re-encodes to bytes that decode to it.
		re, err := proto.MarshalOptions{Deterministic: true}.Marshal(env)
		if err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		env2, err := protocol.DecodeEnvelope(re)
		if err != nil {
			t.Fatalf("re-encoding %x does not decode: %v", re, err)
		}
		if !proto.Equal(env, env2) {
			t.Fatalf("round trip changed the envelope:\n%v\n%v", env, env2)
		}
		// Re-wrapping the message it carries gives the same message.
		enc, err := protocol.EncodeEnvelope(protocol.Unwrap(env))
		if err != nil {
			t.Fatalf("EncodeEnvelope of a decoded message: %v", err)
		}
		env3, err := protocol.DecodeEnvelope(enc)
		if err != nil {
			t.Fatalf("EncodeEnvelope output does not decode: %v", err)
		}
		if !proto.Equal(protocol.Unwrap(env), protocol.Unwrap(env3)) {
			t.Fatalf("re-wrapping changed the message:\n%v\n%v", protocol.Unwrap(env), protocol.Unwrap(env3))
		}
	})
}
