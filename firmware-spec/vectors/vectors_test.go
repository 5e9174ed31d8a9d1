package vectors

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestLoadFraming(t *testing.T) {
	v, err := LoadFraming()
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Messages) == 0 || len(v.Sequences) == 0 || len(v.Init.Requests) == 0 ||
		len(v.Init.Responses) == 0 || len(v.Init.Invalid) == 0 || len(v.ErrorReports) == 0 || len(v.Unsendable) == 0 {
		t.Fatal("framing.json: a section is empty")
	}
	for _, m := range v.Messages {
		if len(m.Reports) == 0 {
			t.Errorf("%s: no reports", m.Name)
		}
		for i, r := range m.Reports {
			if len(r) != v.ReportSize {
				t.Errorf("%s: report %d is %d bytes", m.Name, i, len(r))
			}
		}
	}
	for _, s := range v.Sequences {
		if len(s.Steps) == 0 {
			t.Errorf("%s: no steps", s.Name)
		}
		for i, st := range s.Steps {
			switch st.Result {
			case ResultNone:
				if st.Error != "" || st.Message != nil {
					t.Errorf("%s: step %d: result none with an error or message", s.Name, i)
				}
			case ResultMessage:
				if st.Message == nil || st.Error != "" {
					t.Errorf("%s: step %d: result message without exactly a message", s.Name, i)
				}
			case ResultError:
				if st.Error == "" || st.Message != nil {
					t.Errorf("%s: step %d: result error without exactly an error", s.Name, i)
				}
			default:
				t.Errorf("%s: step %d: unknown result %q", s.Name, i, st.Result)
			}
			if st.Expire && st.Report != nil {
				t.Errorf("%s: step %d: a timer check carries no report", s.Name, i)
			}
			if i > 0 && st.AtMS < s.Steps[i-1].AtMS {
				t.Errorf("%s: step %d: time goes backwards", s.Name, i)
			}
		}
	}
}

func TestLoadEnvelope(t *testing.T) {
	v, err := LoadEnvelope()
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Valid) == 0 || len(v.Invalid) == 0 {
		t.Fatal("envelope.json: a section is empty")
	}
	for _, e := range v.Invalid {
		if e.Error == "" {
			t.Errorf("%s: no expected error", e.Name)
		}
	}
}

func TestData(t *testing.T) {
	good := []struct {
		in   string
		want []byte
	}{
		{`{"hex": ""}`, []byte{}},
		{`{"hex": "00ff10"}`, []byte{0x00, 0xff, 0x10}},
		{`{"pattern": "counter", "len": 3}`, []byte{0, 1, 2}},
		{`{"pattern": "counter", "len": 258}`, append(counter(256), 0, 1)},
		{`{"prefix": "aa", "pattern": "counter", "len": 3}`, []byte{0xaa, 0, 1}},
		{`{"prefix": "0801", "pattern": "repeat", "byte": "61", "len": 5}`, []byte{0x08, 0x01, 'a', 'a', 'a'}},
		{`{"pattern": "repeat", "byte": "61", "len": 0}`, []byte{}},
	}
	for _, c := range good {
		var d Data
		if err := json.Unmarshal([]byte(c.in), &d); err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if !bytes.Equal(d, c.want) {
			t.Errorf("%s: got %x, want %x", c.in, []byte(d), c.want)
		}
	}
	bad := []string{
		`{"hex": "ABCD"}`,
		`{"hex": "abc"}`,
		`{"hex": "zz"}`,
		`{"hex": 12}`,
		`{"hex": "00", "len": 1}`,
		`{"pattern": "counter"}`,
		`{"pattern": "random", "len": 3}`,
		`{"pattern": "repeat", "len": 3}`,
		`{"pattern": "counter", "byte": "00", "len": 3}`,
		`{"prefix": "0000", "pattern": "counter", "len": 1}`,
		`{"pattern": "counter", "len": 3, "extra": 1}`,
	}
	for _, in := range bad {
		var d Data
		if err := json.Unmarshal([]byte(in), &d); err == nil {
			t.Errorf("%s: accepted as %x", in, []byte(d))
		}
	}
}

func TestCID(t *testing.T) {
	var c CID
	if err := json.Unmarshal([]byte(`"01020304"`), &c); err != nil || c != 0x01020304 {
		t.Errorf("got %08x, %v", uint32(c), err)
	}
	for _, in := range []string{`"010203"`, `"0102030405"`, `""`, `16909060`} {
		if err := json.Unmarshal([]byte(in), &c); err == nil {
			t.Errorf("%s: accepted", in)
		}
	}
	var o OptionalCID
	if err := json.Unmarshal([]byte(`""`), &o); err != nil || o.Valid {
		t.Errorf(`"": got %+v, %v`, o, err)
	}
	if err := json.Unmarshal([]byte(`"ffffffff"`), &o); err != nil || !o.Valid || o.CID != 0xffffffff {
		t.Errorf(`"ffffffff": got %+v, %v`, o, err)
	}
}

func counter(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}
