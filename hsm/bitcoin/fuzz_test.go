package bitcoin_test

import (
	"bytes"
	"encoding/base64"
	"reflect"
	"strings"
	"testing"

	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
)

// FuzzParseAnalyse feeds arbitrary bytes to Parse, and what parses to
// Analyse with a fixed wallet, then what analyses to Sign with an
// in-memory signer of that wallet's keys. Invariants: no panic; an error
// comes with a nil result; a parsed packet serializes and parses back to
// the same bytes; a summary adds up, recognises as change only outputs
// paying a wallet key, and its canonical encoding round-trips; and what
// Analyse accepts, Sign signs. Seeds: the BIP-174 vectors and packets
// spending the wallet's coins.
func FuzzParseAnalyse(f *testing.F) {
	fx := newFixture(f, 3)
	for _, name := range []string{"valid", "invalid"} {
		for _, v := range readVectors(f, name) {
			f.Add(v.psbt)
		}
	}
	std := serialize(f, fx.standard(f))
	f.Add(std)
	f.Add([]byte(base64.StdEncoding.EncodeToString(std)))
	claimed := fx.standard(f)
	claimed.Outputs[1].Bip32Derivation = []*psbt.Bip32Derivation{{PubKey: fx.keys[2].PublicKey, MasterKeyFingerprint: 7, Bip32Path: []uint32{0x80000054, 1}}}
	f.Add(serialize(f, claimed))
	f.Add(serialize(f, newPacket(f, []coin{newCoin("f", 2, 5_000, fx.keys[1].PkScript())},
		[]*wire.TxOut{wire.NewTxOut(4_000, fx.keys[0].PkScript())})))

	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := bitcoin.Parse(b)
		if err != nil {
			if p != nil {
				t.Fatalf("Parse returned a packet and an error: %v", err)
			}
			if strings.Contains(err.Error(), "the PSBT parser failed") {
				// Parse caught a panic in the PSBT parser: refused, but
				// precheck should say why.
				t.Fatalf("the PSBT parser panicked: %v", err)
			}
			return
		}
		var ser bytes.Buffer
		if err := p.Serialize(&ser); err != nil {
			t.Fatalf("a parsed packet does not serialize: %v", err)
		}
		q, err := bitcoin.Parse(ser.Bytes())
		if err != nil {
			t.Fatalf("a serialized packet does not parse: %v", err)
		}
		var ser2 bytes.Buffer
		if err := q.Serialize(&ser2); err != nil || !bytes.Equal(ser.Bytes(), ser2.Bytes()) {
			t.Fatalf("serialization does not round-trip: %v", err)
		}

		s, err := bitcoin.Analyse(p, fx.wallet)
		if err != nil {
			if s != nil {
				t.Fatalf("Analyse returned a summary and an error: %v", err)
			}
			return
		}
		if s.Fee < 0 || s.InputTotal != s.SentTotal+s.ChangeTotal+s.Fee || s.VSize*4 < s.Weight {
			t.Fatalf("summary does not add up: %+v", s)
		}
		var in, sent, change int64
		for _, x := range s.Inputs {
			in += int64(x.Amount)
		}
		for _, o := range s.Outputs {
			if o.Change {
				change += int64(o.Amount)
				if !bytes.Equal(o.Script, p2wpkh(o.PublicKey)) {
					t.Fatalf("change output pays %x, not key %x", o.Script, o.PublicKey)
				}
			} else {
				sent += int64(o.Amount)
			}
		}
		if in != int64(s.InputTotal) || sent != int64(s.SentTotal) || change != int64(s.ChangeTotal) {
			t.Fatalf("totals %d %d %d, summary %+v", in, sent, change, s)
		}
		enc, err := s.Canonical()
		if err != nil {
			t.Fatal(err)
		}
		back, err := bitcoin.ParseSummary(enc)
		if err != nil || !reflect.DeepEqual(back, s) {
			t.Fatalf("canonical encoding does not round-trip: %v", err)
		}
		signed, err := bitcoin.Sign(t.Context(), fx.signer, bitcoin.SignRequest{Packet: p, Wallet: fx.wallet, Approved: enc})
		if err != nil {
			t.Fatalf("Analyse accepted a packet Sign does not sign: %v", err)
		}
		if signed.Tx.TxHash() != s.TxID {
			t.Fatal("signed transaction has another ID")
		}
	})
}

// FuzzParseSummary checks that ParseSummary never panics and that what it
// accepts encodes back to the same bytes.
func FuzzParseSummary(f *testing.F) {
	fx := newFixture(f, 3)
	s, err := bitcoin.Analyse(fx.standard(f), fx.wallet)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(canonical(f, s))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := bitcoin.ParseSummary(b)
		if err != nil {
			if s != nil {
				t.Fatal("ParseSummary returned a summary and an error")
			}
			return
		}
		enc, err := s.Canonical()
		if err != nil || !bytes.Equal(enc, b) {
			t.Fatalf("re-encoding differs: %v", err)
		}
	})
}
