package records

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"
)

// macVectors pin the bytes a record's MAC covers (see [MACInput]) and their
// HMAC-SHA256 under vectorKey, the bytes 0x00 to 0x1f. They were computed
// independently of this package, from the layout in the package doc.
var macVectors = []struct {
	kind, key string
	version   uint64
	body      string
	input     string // hex of MACInput
	hmac      string // hex of HMAC-SHA256(vectorKey, input)
}{
	{
		kind: "device", key: "3f2a", version: 1, body: `{"name":"alice"}`,
		input: "4f70656e437573746f6479207265636f7264207631" + "00" + // domain
			"06" + "646576696365" + // kind
			"0004" + "33663261" + // key
			"0000000000000001" + // version
			"00000010" + "7b226e616d65223a22616c696365227d", // body
		hmac: "6d5cd6ad3a92a1dae41f5e9f5c23a7937e46bfc2d900150ac63ec51f381d8624",
	},
	{
		kind: "user", key: "ünicøde", version: 1<<40 + 5, body: "",
		input: "4f70656e437573746f6479207265636f7264207631" + "00" +
			"04" + "75736572" +
			"0009" + "c3bc6e6963c3b86465" +
			"0000010000000005" +
			"00000000",
		hmac: "bd93dc4a33554cd90f1ee1bdb538a3be84e8e1207a5ab27a61da9e050dc1a73e",
	},
}

func vectorKey() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

func TestMACInputVectors(t *testing.T) {
	auth, err := NewSoftHMAC(vectorKey())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range macVectors {
		got, err := MACInput(v.kind, v.key, v.version, []byte(v.body))
		if err != nil {
			t.Fatalf("%s %q: %v", v.kind, v.key, err)
		}
		if h := hex.EncodeToString(got); h != v.input {
			t.Errorf("%s %q: MACInput\n got %s\nwant %s", v.kind, v.key, h, v.input)
		}
		mac, err := auth.MAC(got)
		if err != nil {
			t.Fatal(err)
		}
		if h := hex.EncodeToString(mac); h != v.hmac {
			t.Errorf("%s %q: HMAC\n got %s\nwant %s", v.kind, v.key, h, v.hmac)
		}
		if err := auth.VerifyMAC(got, mac); err != nil {
			t.Errorf("%s %q: VerifyMAC of its own MAC: %v", v.kind, v.key, err)
		}
	}
}

func TestMACInputLengthLimits(t *testing.T) {
	if _, err := MACInput(strings.Repeat("k", 256), "a", 1, nil); err == nil {
		t.Error("a 256-byte kind encoded; its length does not fit the uint8 prefix")
	}
	if _, err := MACInput("k", strings.Repeat("a", 1<<16), 1, nil); err == nil {
		t.Error("a 65536-byte key encoded; its length does not fit the uint16 prefix")
	}
	if _, err := MACInput(strings.Repeat("k", 255), strings.Repeat("a", 1<<16-1), 1, nil); err != nil {
		t.Errorf("longest kind and key: %v", err)
	}
}

func TestSoftHMAC(t *testing.T) {
	if _, err := NewSoftHMAC(make([]byte, 31)); err == nil {
		t.Error("NewSoftHMAC accepted a 31-byte key")
	}
	key := vectorKey()
	a, err := NewSoftHMAC(key)
	if err != nil {
		t.Fatal(err)
	}
	key[0] ^= 1 // the SoftHMAC must have its own copy
	data := []byte("data")
	mac, _ := a.MAC(data)
	if err := a.VerifyMAC(data, mac); err != nil {
		t.Fatalf("VerifyMAC after the caller changed its key slice: %v", err)
	}
	other, _ := NewSoftHMAC(key)
	bad := map[string][]byte{
		"flipped bit":  append(mac[:len(mac)-1:len(mac)-1], mac[len(mac)-1]^1),
		"truncated":    mac[:16],
		"empty":        nil,
		"extended":     append(append([]byte(nil), mac...), 0),
		"other key":    must(other.MAC(data)),
		"other data's": must(a.MAC([]byte("datA"))),
	}
	for name, m := range bad {
		if err := a.VerifyMAC(data, m); !errors.Is(err, ErrBadMAC) {
			t.Errorf("%s MAC: VerifyMAC = %v, want ErrBadMAC", name, err)
		}
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestKindAndKeySyntax(t *testing.T) {
	for _, k := range []string{"device", "a", "user_role", "wallet-policy", "v2", strings.Repeat("a", MaxKindLen)} {
		if err := checkKind(k); err != nil {
			t.Errorf("checkKind(%q) = %v", k, err)
		}
	}
	for _, k := range []string{"", "Device", "1device", "_x", "dev ice", "dév", "a/b", strings.Repeat("a", MaxKindLen+1)} {
		if err := checkKind(k); err == nil {
			t.Errorf("checkKind(%q) accepted", k)
		}
	}
	for _, k := range []string{"3f2a", "alice@example.com", "ünicøde", "a b/c", strings.Repeat("x", MaxKeyLen)} {
		if err := checkKey("device", k); err != nil {
			t.Errorf("checkKey(%q) = %v", k, err)
		}
	}
	for _, k := range []string{"", "a\x00b", "\xff", strings.Repeat("x", MaxKeyLen+1)} {
		if err := checkKey("device", k); err == nil {
			t.Errorf("checkKey(%q) accepted", k)
		}
	}
}

// parseMACInput is the inverse of MACInput. The package never needs it (a MAC
// input is only ever built), but it shows the encoding is unambiguous: every
// input parses back to exactly one (kind, key, version, body).
func parseMACInput(in []byte) (kind, key string, version uint64, body []byte, ok bool) {
	s := cryptobyte.String(in)
	var domain []byte
	var k, y cryptobyte.String
	var n uint32
	if !s.ReadBytes(&domain, len(macDomain)) || string(domain) != macDomain ||
		!s.ReadUint8LengthPrefixed(&k) ||
		!s.ReadUint16LengthPrefixed(&y) ||
		!s.ReadUint64(&version) ||
		!s.ReadUint32(&n) || !s.ReadBytes(&body, int(n)) ||
		!s.Empty() {
		return "", "", 0, nil, false
	}
	return string(k), string(y), version, body, true
}

func TestParseMACInputVectors(t *testing.T) {
	for _, v := range macVectors {
		in, _ := hex.DecodeString(v.input)
		kind, key, version, body, ok := parseMACInput(in)
		if !ok || kind != v.kind || key != v.key || version != v.version || string(body) != v.body {
			t.Errorf("parseMACInput(%s) = %q, %q, %d, %q, %v", v.input, kind, key, version, body, ok)
		}
		if _, _, _, _, ok := parseMACInput(in[:len(in)-1]); ok {
			t.Errorf("%s %q: parsed with the last byte cut", v.kind, v.key)
		}
		if _, _, _, _, ok := parseMACInput(append(in, 0)); ok {
			t.Errorf("%s %q: parsed with a byte added", v.kind, v.key)
		}
	}
}

// FuzzRecordMAC checks that MACInput round-trips through parseMACInput, so
// two different records never share MAC input, and that any byte string
// that parses is exactly the encoding of what it parses to.
func FuzzRecordMAC(f *testing.F) {
	for _, v := range macVectors {
		in, _ := hex.DecodeString(v.input)
		f.Add(v.kind, v.key, v.version, []byte(v.body), in)
	}
	f.Fuzz(func(t *testing.T, kind, key string, version uint64, body, raw []byte) {
		in, err := MACInput(kind, key, version, body)
		if len(kind) <= 0xff && len(key) <= 0xffff && err != nil {
			t.Fatalf("MACInput(%q, %q, %d, %d bytes): %v", kind, key, version, len(body), err)
		}
		if err == nil {
			k, y, v, b, ok := parseMACInput(in)
			if !ok || k != kind || y != key || v != version || !bytes.Equal(b, body) {
				t.Fatalf("round trip of (%q, %q, %d, %x) gave (%q, %q, %d, %x, %v)", kind, key, version, body, k, y, v, b, ok)
			}
		}

		k, y, v, b, ok := parseMACInput(raw)
		if !ok {
			if k != "" || y != "" || v != 0 || b != nil {
				t.Fatal("failed parse returned values")
			}
			return
		}
		again, err := MACInput(k, y, v, b)
		if err != nil || !bytes.Equal(again, raw) {
			t.Fatalf("parsed %x but re-encoded %x (%v)", raw, again, err)
		}
	})
}
