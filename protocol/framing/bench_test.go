package framing_test

import (
	"testing"

	"github.com/opencustodynet/opencustody/protocol/framing"
)

// BenchmarkFragmentReassemble measures one maximum-size message through
// Fragment and a Reassembler.
func BenchmarkFragmentReassemble(b *testing.B) {
	data := make([]byte, framing.MaxMessageSize)
	for i := range data {
		data[i] = byte(i)
	}
	var r framing.Reassembler
	b.SetBytes(framing.MaxMessageSize)
	b.ReportAllocs()
	for b.Loop() {
		reports, err := framing.Fragment(0x01020304, framing.CmdMsg, data)
		if err != nil {
			b.Fatal(err)
		}
		var m *framing.Message
		for _, rep := range reports {
			if m, err = r.Push(rep, t0); err != nil {
				b.Fatal(err)
			}
		}
		if m == nil || len(m.Data) != framing.MaxMessageSize {
			b.Fatal("message not reassembled")
		}
	}
}
