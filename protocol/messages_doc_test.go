package protocol

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

var updateDoc = flag.Bool("update", false, "rewrite the generated part of firmware-spec/messages.md")

const messagesDoc = "../firmware-spec/messages.md"

// Markers around the part of messages.md made from device.proto.
const (
	beginGenerated = "<!-- BEGIN GENERATED: go test ./protocol -run TestMessagesDoc -update -->\n"
	endGenerated   = "<!-- END GENERATED -->\n"
)

// messageTables renders every message of the envelope and every enum of
// device.proto as markdown tables, in field-number order.
func messageTables() string {
	var b strings.Builder
	env := (&pb.Envelope{}).ProtoReflect().Descriptor()
	b.WriteString("### Envelope\n\n| field | number | type |\n|---|---|---|\n")
	fields := env.Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		fmt.Fprintf(&b, "| `%s` | %d | %s |\n", f.Name(), f.Number(), fieldType(f))
	}
	b.WriteString("\nEvery field but `version` is one case of the `msg` oneof: an envelope carries exactly one message.\n")
	for i := range fields.Len() {
		f := fields.Get(i)
		if f.Message() == nil {
			continue
		}
		m := f.Message()
		fmt.Fprintf(&b, "\n### %s (envelope field %d)\n\n", m.Name(), f.Number())
		if m.Fields().Len() == 0 {
			b.WriteString("No fields: encoded as an empty message.\n")
			continue
		}
		b.WriteString("| field | number | type |\n|---|---|---|\n")
		for j := range m.Fields().Len() {
			g := m.Fields().Get(j)
			fmt.Fprintf(&b, "| `%s` | %d | %s |\n", g.Name(), g.Number(), fieldType(g))
		}
	}
	enums := pb.File_device_proto.Enums()
	for i := range enums.Len() {
		e := enums.Get(i)
		fmt.Fprintf(&b, "\n### enum %s\n\n| name | value |\n|---|---|\n", e.Name())
		for j := range e.Values().Len() {
			v := e.Values().Get(j)
			fmt.Fprintf(&b, "| `%s` | %d |\n", v.Name(), v.Number())
		}
	}
	return b.String()
}

func fieldType(f protoreflect.FieldDescriptor) string {
	t := f.Kind().String()
	switch f.Kind() {
	case protoreflect.MessageKind:
		t = string(f.Message().Name())
	case protoreflect.EnumKind:
		t = "enum " + string(f.Enum().Name())
	}
	if f.Cardinality() == protoreflect.Repeated {
		t = "repeated " + t
	}
	return t
}

// TestMessagesDoc checks that firmware-spec/messages.md lists every message,
// field and enum value of device.proto as they are; -update rewrites the
// generated part.
func TestMessagesDoc(t *testing.T) {
	doc, err := os.ReadFile(messagesDoc)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(doc, []byte(beginGenerated))
	j := bytes.Index(doc, []byte(endGenerated))
	if i < 0 || j < i {
		t.Fatalf("%s: generated-part markers missing", messagesDoc)
	}
	want := messageTables()
	if got := string(doc[i+len(beginGenerated) : j]); got != want {
		if !*updateDoc {
			t.Fatalf("%s does not match device.proto (run go test ./protocol -run TestMessagesDoc -update)", messagesDoc)
		}
		out := append(append(append([]byte(nil), doc[:i+len(beginGenerated)]...), want...), doc[j:]...)
		if err := os.WriteFile(messagesDoc, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
