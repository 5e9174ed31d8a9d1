package bitcoin

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/wire"
	"golang.org/x/crypto/cryptobyte"
)

// MaxPSBTSize is the largest PSBT [Parse] reads, in bytes as given (base64
// or binary): 4 MiB.
const MaxPSBTSize = 4 << 20

// psbtMagic starts every binary PSBT: "psbt" and 0xff.
var psbtMagic = []byte{'p', 's', 'b', 't', 0xff}

// Parse reads a PSBT (BIP-174), binary or base64 (surrounding whitespace is
// ignored), of at most [MaxPSBTSize] bytes. It checks the format only, and
// refuses anything after the PSBT's last map; whether the transaction is
// one to sign is [Analyse]'s question. It is stricter than BIP-174 asks in
// two ways the underlying parser needs: key types must be single bytes
// (all defined ones are), and no key may appear twice in a map, whatever
// its type. Errors name the part of the PSBT that is malformed where it
// can be told: the global map, an input or an output, by index.
func Parse(b []byte) (*psbt.Packet, error) {
	if len(b) > MaxPSBTSize {
		return nil, fmt.Errorf("bitcoin: the PSBT is %d bytes, more than the limit of %d", len(b), MaxPSBTSize)
	}
	raw := b
	if !bytes.HasPrefix(b, psbtMagic) {
		text := bytes.TrimSpace(b)
		if len(text) == 0 {
			return nil, errors.New("bitcoin: the PSBT is empty")
		}
		raw = make([]byte, base64.StdEncoding.DecodedLen(len(text)))
		n, err := base64.StdEncoding.Strict().Decode(raw, text)
		if err != nil {
			return nil, fmt.Errorf("bitcoin: not a PSBT: neither binary (starting with \"psbt\\xff\") nor base64 (%v)", err)
		}
		raw = raw[:n]
		if !bytes.HasPrefix(raw, psbtMagic) {
			return nil, errors.New("bitcoin: not a PSBT: the base64 text does not decode to one (it must start with \"cHNidP8\")")
		}
	}
	if err := precheck(raw); err != nil {
		return nil, fmt.Errorf("bitcoin: malformed PSBT: %w", err)
	}
	r := bytes.NewReader(raw)
	p, err := parsePSBT(r)
	if err != nil {
		at := len(raw) - r.Len()
		return nil, fmt.Errorf("bitcoin: malformed PSBT: %s: %w", locate(raw, at), err)
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("bitcoin: malformed PSBT: %d bytes follow its last output map", r.Len())
	}
	return p, nil
}

// errParserPanic is the error for a PSBT that made the parser panic.
var errParserPanic = errors.New("the PSBT parser failed on it")

// parsePSBT runs the PSBT parser, turning a panic into an error: the
// parser works on the reader alone, so nothing is left half-changed.
// [precheck] refuses the inputs known to make it panic; this is the net
// under it.
func parsePSBT(r *bytes.Reader) (p *psbt.Packet, err error) {
	defer func() {
		if v := recover(); v != nil {
			p, err = nil, fmt.Errorf("%w (%v)", errParserPanic, v)
		}
	}()
	return psbt.NewFromRawBytes(r, false)
}

// section names a map of a binary PSBT: the global map, or an input's or
// an output's by index.
type section struct {
	kind  byte // 'g', 'i' or 'o'
	index int
}

func (s section) String() string {
	switch s.kind {
	case 'i':
		return fmt.Sprintf("input %d", s.index)
	case 'o':
		return fmt.Sprintf("output %d", s.index)
	}
	return "the global map"
}

// walk visits the key-value pairs of the binary PSBT raw, map by map,
// without interpreting them beyond the count of input and output maps
// (from the global map's unsigned transaction). It calls visit for each
// pair and end at the end of each map, with the offset just past it. It
// stops at the first error from visit or end, and returns it with the map
// it was in; it returns errTruncated if raw ends inside a map.
func walk(raw []byte, visit func(sec section, key, value []byte) error, end func(sec section, offset int) error) (section, error) {
	s := cryptobyte.String(raw)
	if !s.Skip(len(psbtMagic)) {
		return section{kind: 'g'}, errTruncated
	}
	var unsignedTx []byte
	walkMap := func(sec section) error {
		for {
			var keyLen uint64
			if !readCompactSize(&s, &keyLen) {
				return errTruncated
			}
			if keyLen == 0 {
				return end(sec, len(raw)-len(s))
			}
			var key, value []byte
			var valueLen uint64
			if keyLen > uint64(len(s)) || !s.ReadBytes(&key, int(keyLen)) ||
				!readCompactSize(&s, &valueLen) || valueLen > uint64(len(s)) || !s.ReadBytes(&value, int(valueLen)) {
				return errTruncated
			}
			if sec.kind == 'g' && len(key) == 1 && key[0] == 0x00 {
				unsignedTx = value
			}
			if err := visit(sec, key, value); err != nil {
				return err
			}
		}
	}
	if err := walkMap(section{kind: 'g'}); err != nil {
		return section{kind: 'g'}, err
	}
	var nIn, nOut int
	if unsignedTx != nil {
		var msg wire.MsgTx
		if msg.DeserializeNoWitness(bytes.NewReader(unsignedTx)) == nil {
			nIn, nOut = len(msg.TxIn), len(msg.TxOut)
		}
	}
	for i := range nIn {
		if err := walkMap(section{'i', i}); err != nil {
			return section{'i', i}, err
		}
	}
	for i := range nOut {
		if err := walkMap(section{'o', i}); err != nil {
			return section{'o', i}, err
		}
	}
	return section{}, nil
}

var errTruncated = errors.New("the PSBT ends inside a map")

// locate says which map of the binary PSBT raw the byte offset at falls
// in, for error messages: "in input 2, at byte 345".
func locate(raw []byte, at int) string {
	where := fmt.Sprintf("at byte %d", at)
	found := errors.New("found")
	nothing := func(section, []byte, []byte) error { return nil }
	sec, err := walk(raw, nothing, func(_ section, offset int) error {
		if at < offset {
			return found
		}
		return nil
	})
	if err != nil {
		return fmt.Sprintf("in %s, %s", sec, where)
	}
	return where
}

// Key types whose values the PSBT parser reads without checking their
// length (BIP-174).
const (
	inBIP32Derivation         = 0x06
	inTaprootBIP32Derivation  = 0x16
	outBIP32Derivation        = 0x02
	outTaprootBIP32Derivation = 0x07
)

// precheck refuses what the PSBT parser (btcutil/psbt v1.1.10) would
// mishandle: a key type that is not a single byte (the parser truncates
// it to its low byte, which can turn an unknown key into a known one), a
// key that appears twice in a map (the parser lets some through), and
// BIP-32 derivation values too short for their fixed fields (the parser
// reads past their end and panics). It leaves everything else to the
// parser, including a PSBT that ends early.
func precheck(raw []byte) error {
	seen := make(map[string]bool)
	_, err := walk(raw, func(sec section, key, value []byte) error {
		if key[0] >= 0xfd {
			return fmt.Errorf("in %s: key type %x… is not a single byte; no such key types are defined", sec, key[:1])
		}
		if seen[string(key)] {
			return fmt.Errorf("in %s: key %x appears twice", sec, key)
		}
		seen[string(key)] = true
		switch {
		case sec.kind == 'i' && key[0] == inBIP32Derivation, sec.kind == 'o' && key[0] == outBIP32Derivation:
			if !validDerivationPath(value) {
				return fmt.Errorf("in %s: BIP-32 derivation of %d bytes (want a 4-byte fingerprint and 4 bytes per step)", sec, len(value))
			}
		case sec.kind == 'i' && key[0] == inTaprootBIP32Derivation, sec.kind == 'o' && key[0] == outTaprootBIP32Derivation:
			v := cryptobyte.String(value)
			var n uint64
			if !readCompactSize(&v, &n) || n > uint64(len(v))/32 || !v.Skip(int(n)*32) || !validDerivationPath(v) {
				return fmt.Errorf("in %s: malformed taproot BIP-32 derivation", sec)
			}
		}
		return nil
	}, func(section, int) error {
		clear(seen)
		return nil
	})
	if err == errTruncated {
		return nil
	}
	return err
}

// validDerivationPath says whether b is a BIP-32 fingerprint and path:
// at least 4 bytes, in 4-byte units.
func validDerivationPath(b []byte) bool {
	return len(b) >= 4 && len(b)%4 == 0
}

// readCompactSize reads a Bitcoin CompactSize unsigned integer.
func readCompactSize(s *cryptobyte.String, out *uint64) bool {
	var b uint8
	if !s.ReadUint8(&b) {
		return false
	}
	switch b {
	case 0xfd:
		var v [2]byte
		if !s.CopyBytes(v[:]) {
			return false
		}
		*out = uint64(v[0]) | uint64(v[1])<<8
	case 0xfe:
		var v [4]byte
		if !s.CopyBytes(v[:]) {
			return false
		}
		*out = uint64(v[0]) | uint64(v[1])<<8 | uint64(v[2])<<16 | uint64(v[3])<<24
	case 0xff:
		var v [8]byte
		if !s.CopyBytes(v[:]) {
			return false
		}
		*out = 0
		for i := 7; i >= 0; i-- {
			*out = *out<<8 | uint64(v[i])
		}
	default:
		*out = uint64(b)
	}
	return true
}
