package device

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

// FuzzClientAnswers has a fake device answer a request with arbitrary
// reports (most of them aimed at the client's channel), then with a
// Failure: the client must return an answer or an error, never panic or
// hang, and never both.
func FuzzClientAnswers(f *testing.F) {
	const cid = 0x0a0b0c0d
	for _, m := range []proto.Message{&pb.Features{Vendor: "v"}, &pb.ButtonRequest{}, &pb.Failure{Code: pb.FailureCode_FAILURE_BUSY}, &pb.Success{Message: "x"}} {
		b, _ := protocol.EncodeEnvelope(m)
		rs, _ := framing.Fragment(cid, framing.CmdMsg, b)
		var seed []byte
		for _, r := range rs {
			seed = append(seed, r[4:]...)
		}
		f.Add(seed)
	}
	keep, _ := framing.Fragment(cid, framing.CmdKeepalive, []byte{2})
	f.Add(append(append([]byte(nil), keep[0][4:]...), make([]byte, 60)...))
	f.Add([]byte{byte(framing.CmdError), 0, 1, 6})

	f.Fuzz(func(t *testing.T, data []byte) {
		host, dev := Pipe()
		go func() {
			buf := make([]byte, framing.ReportSize)
			// Allocate the channel properly.
			if _, err := dev.Read(buf); err != nil {
				return
			}
			var q framing.InitRequest
			copy(q.Nonce[:], buf[7:15])
			resp := framing.InitResponse{Nonce: q.Nonce, CID: cid, FramingVersion: 1}
			rs, _ := framing.Fragment(framing.BroadcastCID, framing.CmdInit, resp.Marshal())
			dev.Write(rs[0])
			// Wait for the request, then answer garbage: each report is a
			// channel id followed by 60 bytes of data.
			if _, err := dev.Read(buf); err != nil {
				return
			}
			for i := 0; len(data) > 0; i++ {
				r := make([]byte, framing.ReportSize)
				binary.BigEndian.PutUint32(r, cid)
				if i%7 == 6 {
					binary.BigEndian.PutUint32(r, uint32(i))
				}
				data = data[copy(r[4:], data):]
				if _, err := dev.Write(r); err != nil {
					return
				}
			}
			// Whatever state the garbage left, this ends the request:
			// an answer, or an INIT interleaved into a message.
			end, _ := protocol.EncodeEnvelope(&pb.Failure{Code: pb.FailureCode_FAILURE_PROCESS_ERROR})
			rs, _ = framing.Fragment(cid, framing.CmdMsg, end)
			dev.Write(rs[0])
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := NewClient(ctx, host, ClientOptions{SilenceTimeout: 300 * time.Millisecond})
		if err != nil {
			t.Fatalf("channel allocation: %v", err)
		}
		defer c.Close()
		m, err := c.Call(ctx, &pb.GetFeatures{})
		if (m == nil) == (err == nil) {
			t.Fatalf("Call returned %v and %v", m, err)
		}
		if ctx.Err() != nil {
			t.Fatal("Call hung until the test's deadline")
		}
	})
}
