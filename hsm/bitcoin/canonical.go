package bitcoin

import (
	"errors"
	"fmt"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"golang.org/x/crypto/cryptobyte"
)

// SummaryLabel starts every canonical summary encoding.
const SummaryLabel = "OpenCustody bitcoin summary v1\x00"

// Output flags in the canonical encoding.
const (
	flagChange = 1 << 0 // the output pays a wallet key
	flagDust   = 1 << 1 // the output is dust
)

// Canonical returns the summary's canonical encoding: the bytes a prompt
// covers, defined once here. Integers are big-endian; amounts are in
// satoshis; hashes are in their internal byte order (the reverse of how
// txids are displayed).
//
//	SummaryLabel                     "OpenCustody bitcoin summary v1" and a NUL byte
//	network                          uint8 ([Network])
//	txid                             32 bytes
//	version                          uint32 (the int32, two's complement)
//	lock time                        uint32
//	input count                      uint32, then for each input:
//	    previous txid                32 bytes
//	    previous output index        uint32
//	    sequence                     uint32
//	    amount                       uint64
//	    public key                   uint8 length (33), then the compressed key
//	output count                     uint32, then for each output:
//	    amount                       uint64
//	    script                       uint16 length, then the script
//	    address                      uint8 length, then the address (ASCII)
//	    flags                        uint8: 1 change, 2 dust
//	    public key                   uint8 length (33 for change, else 0), then the key
//	input total                      uint64
//	sent total                       uint64
//	change total                     uint64
//	fee                              uint64
//	weight                           uint64
//	virtual size                     uint64
//	fee rate                         uint64 (sat per 1,000 vbytes)
//	high fee                         uint8: 1 or 0
//
// It fails only for a summary that [Analyse] would not produce (a negative
// amount, a field too long for its length prefix).
func (s *Summary) Canonical() ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, 128+80*len(s.Inputs)+120*len(s.Outputs)))
	var bad error
	u64 := func(name string, v int64) {
		if v < 0 {
			bad = fmt.Errorf("bitcoin: summary: negative %s", name)
		}
		b.AddUint64(uint64(v))
	}
	b.AddBytes([]byte(SummaryLabel))
	b.AddUint8(uint8(s.Network))
	b.AddBytes(s.TxID[:])
	b.AddUint32(uint32(s.Version))
	b.AddUint32(s.LockTime)
	b.AddUint32(uint32(len(s.Inputs)))
	for _, in := range s.Inputs {
		b.AddBytes(in.OutPoint.Hash[:])
		b.AddUint32(in.OutPoint.Index)
		b.AddUint32(in.Sequence)
		u64("input amount", int64(in.Amount))
		addUint8Bytes(b, in.PublicKey)
	}
	b.AddUint32(uint32(len(s.Outputs)))
	for _, out := range s.Outputs {
		u64("output amount", int64(out.Amount))
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(out.Script) })
		addUint8Bytes(b, []byte(out.Address))
		var flags uint8
		if out.Change {
			flags |= flagChange
		}
		if out.Dust {
			flags |= flagDust
		}
		b.AddUint8(flags)
		addUint8Bytes(b, out.PublicKey)
	}
	u64("input total", int64(s.InputTotal))
	u64("sent total", int64(s.SentTotal))
	u64("change total", int64(s.ChangeTotal))
	u64("fee", int64(s.Fee))
	u64("weight", s.Weight)
	u64("virtual size", s.VSize)
	u64("fee rate", int64(s.FeeRate))
	if s.HighFee {
		b.AddUint8(1)
	} else {
		b.AddUint8(0)
	}
	out, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("bitcoin: summary: %w", err)
	}
	if bad != nil {
		return nil, bad
	}
	return out, nil
}

func addUint8Bytes(b *cryptobyte.Builder, v []byte) {
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(v) })
}

// errMalformedSummary is what ParseSummary returns for bytes that are not a
// canonical summary.
var errMalformedSummary = errors.New("bitcoin: malformed summary encoding")

// ParseSummary decodes a [Summary.Canonical] encoding. It checks the
// encoding (label, lengths, flags, ranges), not that the summary is
// consistent: only [Analyse] makes summaries to trust.
func ParseSummary(b []byte) (*Summary, error) {
	in := cryptobyte.String(b)
	var label []byte
	if !in.ReadBytes(&label, len(SummaryLabel)) || string(label) != SummaryLabel {
		return nil, fmt.Errorf("%w: it does not start with %q", errMalformedSummary, SummaryLabel)
	}
	s := &Summary{}
	var network uint8
	var version uint32
	var nIn, nOut uint32
	if !in.ReadUint8(&network) || !in.CopyBytes(s.TxID[:]) || !in.ReadUint32(&version) ||
		!in.ReadUint32(&s.LockTime) || !in.ReadUint32(&nIn) {
		return nil, errMalformedSummary
	}
	s.Network, s.Version = Network(network), int32(version)
	if s.Network.Params() == nil {
		return nil, fmt.Errorf("%w: unknown network %d", errMalformedSummary, network)
	}
	// Each input takes at least 81 bytes and each output 15: bound the
	// counts by what is left before allocating.
	if uint64(nIn)*81 > uint64(len(in)) {
		return nil, errMalformedSummary
	}
	s.Inputs = make([]Input, nIn)
	for i := range s.Inputs {
		x := &s.Inputs[i]
		var hash chainhash.Hash
		var amount uint64
		if !in.CopyBytes(hash[:]) || !in.ReadUint32(&x.OutPoint.Index) || !in.ReadUint32(&x.Sequence) ||
			!readAmount(&in, &amount) || !readUint8Bytes(&in, &x.PublicKey) || len(x.PublicKey) != 33 {
			return nil, fmt.Errorf("%w: input %d", errMalformedSummary, i)
		}
		x.OutPoint.Hash, x.Amount = hash, btcutil.Amount(amount)
	}
	if !in.ReadUint32(&nOut) || uint64(nOut)*15 > uint64(len(in)) {
		return nil, errMalformedSummary
	}
	s.Outputs = make([]Output, nOut)
	for j := range s.Outputs {
		x := &s.Outputs[j]
		var amount uint64
		var script, addr cryptobyte.String
		var flags uint8
		if !readAmount(&in, &amount) || !in.ReadUint16LengthPrefixed(&script) || !in.ReadUint8LengthPrefixed(&addr) ||
			!in.ReadUint8(&flags) || flags&^(flagChange|flagDust) != 0 || !readUint8Bytes(&in, &x.PublicKey) {
			return nil, fmt.Errorf("%w: output %d", errMalformedSummary, j)
		}
		x.Amount, x.Script, x.Address = btcutil.Amount(amount), append([]byte(nil), script...), string(addr)
		x.Change, x.Dust = flags&flagChange != 0, flags&flagDust != 0
		if x.Change != (len(x.PublicKey) == 33) || (!x.Change && len(x.PublicKey) != 0) {
			return nil, fmt.Errorf("%w: output %d: change flag and public key disagree", errMalformedSummary, j)
		}
		if !x.Change {
			x.PublicKey = nil
		}
	}
	var inTotal, sent, change, fee, weight, vsize, rate uint64
	var high uint8
	if !readAmount(&in, &inTotal) || !readAmount(&in, &sent) || !readAmount(&in, &change) || !readAmount(&in, &fee) ||
		!in.ReadUint64(&weight) || !in.ReadUint64(&vsize) || !in.ReadUint64(&rate) || !in.ReadUint8(&high) ||
		weight > 1<<62 || vsize > 1<<62 || rate > 1<<62 || high > 1 || !in.Empty() {
		return nil, errMalformedSummary
	}
	s.InputTotal, s.SentTotal, s.ChangeTotal, s.Fee = btcutil.Amount(inTotal), btcutil.Amount(sent), btcutil.Amount(change), btcutil.Amount(fee)
	s.Weight, s.VSize, s.FeeRate, s.HighFee = int64(weight), int64(vsize), FeeRate(rate), high == 1
	return s, nil
}

// readAmount reads a uint64 amount of at most 21 million bitcoin.
func readAmount(s *cryptobyte.String, v *uint64) bool {
	return s.ReadUint64(v) && *v <= btcutil.MaxSatoshi
}

// readUint8Bytes reads a uint8-length-prefixed byte string into a new
// slice (nil if empty).
func readUint8Bytes(s *cryptobyte.String, out *[]byte) bool {
	var v cryptobyte.String
	if !s.ReadUint8LengthPrefixed(&v) {
		return false
	}
	*out = nil
	if len(v) > 0 {
		*out = append([]byte(nil), v...)
	}
	return true
}
