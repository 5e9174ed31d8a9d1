package bitcoin_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/btcsuite/btcd/btcutil/psbt"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
)

type vector struct {
	name string
	psbt []byte // binary, or base64 text as the vector gives it
}

// readVectors reads testdata/bip174/NAME.txt: "# description" lines, then
// "hex DATA" or "base64 DATA".
func readVectors(t testing.TB, name string) []vector {
	t.Helper()
	f, err := os.Open("testdata/bip174/" + name + ".txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []vector
	desc := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
		case strings.HasPrefix(line, "#"):
			desc = strings.TrimSpace(strings.TrimPrefix(line, "#"))
		case strings.HasPrefix(line, "hex "):
			b, err := hex.DecodeString(line[len("hex "):])
			if err != nil {
				t.Fatalf("%s: %v", desc, err)
			}
			out = append(out, vector{desc, b})
		case strings.HasPrefix(line, "base64 "):
			out = append(out, vector{desc, []byte(line[len("base64 "):])})
		default:
			t.Fatalf("testdata/bip174/%s.txt: bad line %q", name, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatalf("no vectors in %s", name)
	}
	return out
}

// TestBIP174Vectors: every invalid vector is refused by Parse with an
// error; every valid one parses (binary and base64 alike) and goes through
// Analyse without a panic, which refuses it since none spends our coins.
func TestBIP174Vectors(t *testing.T) {
	f := newFixture(t, 2)
	for _, v := range readVectors(t, "invalid") {
		p, err := bitcoin.Parse(v.psbt)
		if err == nil || p != nil {
			t.Errorf("invalid vector %q: Parse accepted it", v.name)
			continue
		}
		if !strings.HasPrefix(err.Error(), "bitcoin: ") {
			t.Errorf("invalid vector %q: error %q", v.name, err)
		}
		t.Logf("%s: %v", v.name, err)
	}
	for _, v := range readVectors(t, "valid") {
		p, err := bitcoin.Parse(v.psbt)
		if err != nil {
			t.Errorf("valid vector %q: %v", v.name, err)
			continue
		}
		// The other encoding parses to the same packet.
		bin := serialize(t, p)
		other := []byte(base64.StdEncoding.EncodeToString(bin))
		if !bytes.HasPrefix(v.psbt, []byte("psbt\xff")) {
			other = bin
		}
		q, err := bitcoin.Parse(other)
		if err != nil || !bytes.Equal(serialize(t, q), bin) {
			t.Errorf("valid vector %q in the other encoding: %v", v.name, err)
		}
		s, err := bitcoin.Analyse(p, f.wallet)
		if err == nil || s != nil {
			t.Errorf("valid vector %q: Analyse accepted someone else's PSBT", v.name)
		}
		t.Logf("%s: %v", v.name, err)
	}
}

func TestParse(t *testing.T) {
	f := newFixture(t, 3)
	bin := serialize(t, f.standard(t))
	b64 := base64.StdEncoding.EncodeToString(bin)

	for name, in := range map[string][]byte{
		"binary":             bin,
		"base64":             []byte(b64),
		"base64 whitespace":  []byte("\n\t " + b64 + "\r\n"),
		"base64 from a file": []byte(b64 + "\n"),
	} {
		p, err := bitcoin.Parse(in)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !bytes.Equal(serialize(t, p), bin) {
			t.Errorf("%s: parsed to a different packet", name)
		}
	}

	// Where the PSBT is malformed, the error says which map.
	inputMap := bytes.Index(bin, []byte{0x00, 0x01, 0x00}) // the end of the global map, then input 0's first key
	if inputMap < 0 {
		t.Fatal("no input map found")
	}
	truncatedInput := bin[:inputMap+20]
	badOutput := append(bytes.Clone(bin[:len(bin)-1]), 0x01, 0x02, 0x00) // an output key 0x02 with a bad value, no separator

	for name, c := range map[string]struct {
		in   []byte
		want string
	}{
		"empty":             {nil, "empty"},
		"whitespace":        {[]byte(" \n"), "empty"},
		"too big":           {make([]byte, bitcoin.MaxPSBTSize+1), "more than the limit"},
		"not base64":        {[]byte("this is not a psbt"), "neither binary"},
		"base64 of garbage": {[]byte(base64.StdEncoding.EncodeToString([]byte("garbage!"))), "does not decode to one"},
		"raw transaction":   {bin[6:], "not a PSBT"},
		"truncated global":  {bin[:30], "in the global map"},
		"truncated input":   {truncatedInput, "in input 0"},
		"bad output":        {badOutput, "in output 1"},
		"trailing bytes":    {append(bytes.Clone(bin), 0x00), "1 bytes follow"},
		"trailing base64":   {[]byte(base64.StdEncoding.EncodeToString(append(bytes.Clone(bin), 1, 2, 3))), "3 bytes follow"},
	} {
		p, err := bitcoin.Parse(c.in)
		if err == nil || p != nil {
			t.Errorf("%s: Parse accepted it", name)
			continue
		}
		if !strings.HasPrefix(err.Error(), "bitcoin: ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not contain %q", name, err, c.want)
		}
	}
}

// TestParseParserPitfalls covers inputs that btcutil/psbt v1.1.10 mishandles
// (it panics on short BIP-32 derivations, truncates multi-byte key types,
// and lets some repeated keys through): Parse refuses them first, naming
// the map.
func TestParseParserPitfalls(t *testing.T) {
	f := newFixture(t, 3)
	p := f.standard(t)
	bin := serialize(t, p)
	// mapStart returns the offset of a key-value pair in input 1's map (or
	// output 0's), found by serializing the packet with a marker pair
	// there; withPair inserts a pair at that offset.
	mapStart := func(sec string) int {
		q := reparse(t, p)
		switch sec {
		case "input 1":
			q.Inputs[1].Unknowns = append(q.Inputs[1].Unknowns, &psbt.Unknown{Key: []byte{0xfc, 0xee, 0xee}, Value: []byte{0xee}})
		case "output 0":
			q.Outputs[0].Unknowns = append(q.Outputs[0].Unknowns, &psbt.Unknown{Key: []byte{0xfc, 0xee, 0xee}, Value: []byte{0xee}})
		}
		target := bytes.Index(serialize(t, q), []byte{0x03, 0xfc, 0xee, 0xee, 0x01, 0xee})
		if target < 0 {
			t.Fatal("marker not found")
		}
		return target
	}
	withPair := func(sec string, key, value []byte) []byte {
		at := mapStart(sec)
		pair := append(append(append([]byte{byte(len(key))}, key...), byte(len(value))), value...)
		out := append(bytes.Clone(bin[:at]), pair...)
		return append(out, bin[at:]...)
	}
	pub := f.keys[0].PublicKey
	cases := map[string]struct {
		in   []byte
		want string
	}{
		"empty BIP-32 derivation in an input":  {withPair("input 1", append([]byte{0x06}, pub...), nil), "in input 1: BIP-32 derivation of 0 bytes"},
		"short BIP-32 derivation in an output": {withPair("output 0", append([]byte{0x02}, pub...), []byte{1, 2, 3}), "in output 0: BIP-32 derivation of 3 bytes"},
		"taproot derivation, no fingerprint":   {withPair("input 1", append([]byte{0x16}, pub[1:]...), append([]byte{0x01}, make([]byte, 32)...)), "in input 1: malformed taproot BIP-32 derivation"},
		"taproot derivation, huge hash count": {withPair("output 0", append([]byte{0x07}, pub[1:]...),
			[]byte{0xff, 0, 0, 0, 0, 0, 0, 0, 0x08, 1, 2, 3, 4}), "in output 0: malformed taproot BIP-32 derivation"},
		"multi-byte key type":  {withPair("input 1", []byte{0xfd, 0x01, 0x01}, []byte{1}), "in input 1: key type fd"},
		"repeated unknown key": {withPair("input 1", []byte{0xfc, 0x01}, []byte{1}), ""},
	}
	// The repeated key: the same proprietary key twice with different
	// values.
	twice := withPair("input 1", []byte{0xfc, 0x01}, []byte{1})
	at := mapStart("input 1")
	cases["repeated unknown key"] = struct {
		in   []byte
		want string
	}{append(append(bytes.Clone(twice[:at]), 0x02, 0xfc, 0x01, 0x01, 0x02), twice[at:]...), "in input 1: key fc01 appears twice"}

	for name, c := range cases {
		q, err := bitcoin.Parse(c.in)
		if err == nil || q != nil {
			t.Errorf("%s: Parse accepted it", name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not contain %q", name, err, c.want)
		}
	}
	// A well-formed derivation in the same place parses.
	ok := withPair("input 1", append([]byte{0x06}, pub...), []byte{1, 2, 3, 4, 5, 6, 7, 8})
	if _, err := bitcoin.Parse(ok); err != nil {
		t.Fatalf("a well-formed derivation: %v", err)
	}
}
