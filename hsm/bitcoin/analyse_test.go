package bitcoin_test

import (
	"bytes"
	"encoding/hex"
	"flag"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
)

var update = flag.Bool("update", false, "rewrite testdata/summary_v1.hex")

func TestAnalyseSummary(t *testing.T) {
	f := newFixture(t, 3)
	p := f.standard(t)
	s, err := bitcoin.Analyse(p, f.wallet)
	if err != nil {
		t.Fatal(err)
	}
	dest, err := btcutil.NewAddressWitnessPubKeyHash(btcutil.Hash160(testKey("foreign destination").PubKey().SerializeCompressed()), &chaincfg.SimNetParams)
	if err != nil {
		t.Fatal(err)
	}
	change, err := f.keys[2].Address(bitcoin.Simnet)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(dest.EncodeAddress(), "sb1q") || !strings.HasPrefix(change.EncodeAddress(), "sb1q") {
		t.Fatalf("simnet addresses %s %s", dest, change)
	}

	// The signed transaction: version 4, input count 1, 2 inputs of
	// 36+1+4, output count 1, 2 P2WPKH outputs of 8+1+22, lock time 4:
	// 154 bytes stripped; weight 154*4 + 2 (marker, flag) + 2*108
	// (witnesses with 72-byte signatures) = 834; vsize 209.
	want := &bitcoin.Summary{
		Network:  bitcoin.Simnet,
		TxID:     p.UnsignedTx.TxHash(),
		Version:  2,
		LockTime: 0,
		Inputs: []bitcoin.Input{
			{OutPoint: p.UnsignedTx.TxIn[0].PreviousOutPoint, Amount: 100_000_000, Sequence: 0xfffffffd, PublicKey: f.keys[0].PublicKey},
			{OutPoint: p.UnsignedTx.TxIn[1].PreviousOutPoint, Amount: 50_000_000, Sequence: 0xfffffffd, PublicKey: f.keys[1].PublicKey},
		},
		Outputs: []bitcoin.Output{
			{Amount: 120_000_000, Script: foreignScript("destination"), Address: dest.EncodeAddress()},
			{Amount: 29_990_000, Script: f.keys[2].PkScript(), Address: change.EncodeAddress(), Change: true, PublicKey: f.keys[2].PublicKey},
		},
		InputTotal:  150_000_000,
		SentTotal:   120_000_000,
		ChangeTotal: 29_990_000,
		Fee:         10_000,
		Weight:      834,
		VSize:       209,
		FeeRate:     47846, // 10,000 sat / 209 vB = 47.846… sat/vB
	}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("summary\n got %+v\nwant %+v", s, want)
	}
	if got := s.FeeRate.String(); got != "47.846 sat/vB" {
		t.Errorf("fee rate string %q", got)
	}
	if !s.SignalsRBF() {
		t.Errorf("sequence 0xfffffffd does not signal RBF")
	}

	// Deterministic, and the packet is untouched.
	before := serialize(t, p)
	s2, err := bitcoin.Analyse(p, f.wallet)
	if err != nil || !reflect.DeepEqual(s, s2) {
		t.Fatalf("second analysis differs: %v", err)
	}
	if !bytes.Equal(before, serialize(t, p)) {
		t.Fatal("Analyse modified the packet")
	}
}

// TestSummaryVector checks the canonical encoding of the fixture's summary
// against testdata/summary_v1.hex: the bytes prompts cover must not change
// by accident. Run with -update to rewrite it after a deliberate change
// (with a new SummaryLabel version).
func TestSummaryVector(t *testing.T) {
	f := newFixture(t, 3)
	s, err := bitcoin.Analyse(f.standard(t), f.wallet)
	if err != nil {
		t.Fatal(err)
	}
	enc := canonical(t, s)
	if !bytes.HasPrefix(enc, []byte("OpenCustody bitcoin summary v1\x00")) {
		t.Fatalf("encoding does not start with the label: %x", enc[:32])
	}
	const path = "testdata/summary_v1.hex"
	if *update {
		if err := os.WriteFile(path, []byte(hex.EncodeToString(enc)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc, want) {
		t.Fatalf("canonical encoding changed:\n got %x\nwant %x", enc, want)
	}
	back, err := bitcoin.ParseSummary(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, s) {
		t.Fatalf("round trip\n got %+v\nwant %+v", back, s)
	}
	// Every field is covered: changing any one changes the encoding.
	for name, mutate := range map[string]func(*bitcoin.Summary){
		"network":      func(s *bitcoin.Summary) { s.Network = bitcoin.Regtest },
		"txid":         func(s *bitcoin.Summary) { s.TxID[0] ^= 1 },
		"version":      func(s *bitcoin.Summary) { s.Version = 1 },
		"locktime":     func(s *bitcoin.Summary) { s.LockTime = 1 },
		"input hash":   func(s *bitcoin.Summary) { s.Inputs[1].OutPoint.Hash[31] ^= 1 },
		"input index":  func(s *bitcoin.Summary) { s.Inputs[0].OutPoint.Index = 7 },
		"sequence":     func(s *bitcoin.Summary) { s.Inputs[0].Sequence = 0 },
		"input amount": func(s *bitcoin.Summary) { s.Inputs[0].Amount++ },
		"input key":    func(s *bitcoin.Summary) { s.Inputs[0].PublicKey = f.keys[2].PublicKey },
		"amount":       func(s *bitcoin.Summary) { s.Outputs[0].Amount++ },
		"script":       func(s *bitcoin.Summary) { s.Outputs[0].Script = foreignScript("x") },
		"address":      func(s *bitcoin.Summary) { s.Outputs[0].Address = "sb1qother" },
		"change":       func(s *bitcoin.Summary) { s.Outputs[1].Change, s.Outputs[1].PublicKey = false, nil },
		"dust":         func(s *bitcoin.Summary) { s.Outputs[0].Dust = true },
		"change key":   func(s *bitcoin.Summary) { s.Outputs[1].PublicKey = f.keys[0].PublicKey },
		"input total":  func(s *bitcoin.Summary) { s.InputTotal++ },
		"sent":         func(s *bitcoin.Summary) { s.SentTotal++ },
		"change total": func(s *bitcoin.Summary) { s.ChangeTotal++ },
		"fee":          func(s *bitcoin.Summary) { s.Fee++ },
		"weight":       func(s *bitcoin.Summary) { s.Weight++ },
		"vsize":        func(s *bitcoin.Summary) { s.VSize++ },
		"fee rate":     func(s *bitcoin.Summary) { s.FeeRate++ },
		"high fee":     func(s *bitcoin.Summary) { s.HighFee = true },
	} {
		c, _ := bitcoin.ParseSummary(enc)
		mutate(c)
		if got := canonical(t, c); bytes.Equal(got, enc) {
			t.Errorf("changing the %s does not change the encoding", name)
		}
	}
	// Malformed encodings are refused: every truncation, and trailing bytes.
	for n := range len(enc) {
		if _, err := bitcoin.ParseSummary(enc[:n]); err == nil {
			t.Fatalf("ParseSummary accepted the first %d bytes", n)
		}
	}
	if _, err := bitcoin.ParseSummary(append(bytes.Clone(enc), 0)); err == nil {
		t.Fatal("ParseSummary accepted a trailing byte")
	}
}

func TestAnalyseOutputs(t *testing.T) {
	f := newFixture(t, 2)
	in := []coin{newCoin("a", 0, 10_000_000, f.keys[0].PkScript())}
	taproot := append([]byte{txscript.OP_1, 0x20}, bytes.Repeat([]byte{7}, 32)...)
	p2sh := append(append([]byte{txscript.OP_HASH160, 0x14}, bytes.Repeat([]byte{8}, 20)...), txscript.OP_EQUAL)
	p2pkh := append(append([]byte{txscript.OP_DUP, txscript.OP_HASH160, 0x14}, bytes.Repeat([]byte{9}, 20)...), txscript.OP_EQUALVERIFY, txscript.OP_CHECKSIG)
	p2wsh := append([]byte{txscript.OP_0, 0x20}, bytes.Repeat([]byte{6}, 32)...)
	p := newPacket(t, in, []*wire.TxOut{
		wire.NewTxOut(1_000_000, taproot),
		wire.NewTxOut(1_000_000, p2sh),
		wire.NewTxOut(1_000_000, p2pkh),
		wire.NewTxOut(1_000_000, p2wsh),
		wire.NewTxOut(293, foreignScript("dust")),   // below 294: dust
		wire.NewTxOut(294, foreignScript("nodust")), // at the threshold: not dust
		wire.NewTxOut(545, p2pkh),                   // below 546: dust
		wire.NewTxOut(1_000, f.keys[1].PkScript()),  // change, though small
	})
	s, err := bitcoin.Analyse(p, f.wallet)
	if err != nil {
		t.Fatal(err)
	}
	prefixes := []string{"sb1p", "r", "S", "sb1q", "sb1q", "sb1q", "S", "sb1q"}
	dust := []bool{false, false, false, false, true, false, true, false}
	for j, out := range s.Outputs {
		if !strings.HasPrefix(out.Address, prefixes[j]) || out.Dust != dust[j] || out.Change != (j == 7) {
			t.Errorf("output %d: %+v", j, out)
		}
	}
	if s.ChangeTotal != 1_000 || s.SentTotal != 4_000_000+293+294+545 {
		t.Errorf("totals: sent %d change %d", s.SentTotal, s.ChangeTotal)
	}

	// Mainnet encodes the same scripts for mainnet.
	wm, err := bitcoin.NewWallet(bitcoin.WalletConfig{Network: bitcoin.Mainnet, Keys: f.keys})
	if err != nil {
		t.Fatal(err)
	}
	sm, err := bitcoin.Analyse(p, wm)
	if err != nil {
		t.Fatal(err)
	}
	for j, want := range []string{"bc1p", "3", "1", "bc1q"} {
		if !strings.HasPrefix(sm.Outputs[j].Address, want) {
			t.Errorf("mainnet output %d: %s", j, sm.Outputs[j].Address)
		}
	}
}

func TestAnalyseFeeRate(t *testing.T) {
	f := newFixture(t, 1)
	// One input, one P2WPKH output: 4+1+41+1+31+4 = 82 bytes stripped,
	// weight 82*4+2+108 = 438, vsize 110 (109.5 rounded up).
	p := newPacket(t, []coin{newCoin("a", 0, 100_000, f.keys[0].PkScript())},
		[]*wire.TxOut{wire.NewTxOut(100_000-1100, foreignScript("d"))})
	s, err := bitcoin.Analyse(p, f.wallet)
	if err != nil {
		t.Fatal(err)
	}
	if s.Weight != 438 || s.VSize != 110 || s.Fee != 1100 || s.FeeRate != 10_000 || s.HighFee || s.ChangeTotal != 0 {
		t.Fatalf("summary %+v", s)
	}
	// A fee of 1,000 sat/vB and more is marked high.
	p = newPacket(t, []coin{newCoin("a", 0, 200_000, f.keys[0].PkScript())},
		[]*wire.TxOut{wire.NewTxOut(200_000-110_000, foreignScript("d"))})
	s, err = bitcoin.Analyse(p, f.wallet)
	if err != nil {
		t.Fatal(err)
	}
	if !s.HighFee || s.FeeRate != 1_000_000 {
		t.Fatalf("fee rate %v, high %v", s.FeeRate, s.HighFee)
	}
	// A zero fee is reported, not refused.
	p = newPacket(t, []coin{newCoin("a", 0, 200_000, f.keys[0].PkScript())},
		[]*wire.TxOut{wire.NewTxOut(200_000, foreignScript("d"))})
	if s, err = bitcoin.Analyse(p, f.wallet); err != nil || s.Fee != 0 || s.FeeRate != 0 {
		t.Fatalf("zero fee: %v %+v", err, s)
	}
}

func TestWitnessUTXOOnly(t *testing.T) {
	f := newFixture(t, 1)
	p := newPacket(t, []coin{newCoin("a", 0, 100_000, f.keys[0].PkScript())},
		[]*wire.TxOut{wire.NewTxOut(90_000, foreignScript("d"))})
	p.Inputs[0].NonWitnessUtxo = nil
	if _, err := bitcoin.Analyse(p, f.wallet); err == nil || !strings.Contains(err.Error(), "input 0") || !strings.Contains(err.Error(), "previous transaction") {
		t.Fatalf("default wallet: %v", err)
	}
	w, err := bitcoin.NewWallet(bitcoin.WalletConfig{Network: bitcoin.Simnet, Keys: f.keys, AllowWitnessUTXOOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	s, err := bitcoin.Analyse(p, w)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bitcoin.Sign(t.Context(), f.signer, bitcoin.SignRequest{Packet: p, Wallet: w, Approved: canonical(t, s)}); err != nil {
		t.Fatal(err)
	}
}

func TestNewWallet(t *testing.T) {
	f := newFixture(t, 2)
	bad := []bitcoin.WalletConfig{
		{Network: 0, Keys: f.keys},
		{Network: 9, Keys: f.keys},
		{Network: bitcoin.Simnet},
		{Network: bitcoin.Simnet, Keys: []bitcoin.Key{f.keys[0], f.keys[0]}},
		{Network: bitcoin.Simnet, Keys: []bitcoin.Key{{Ref: "", PublicKey: f.keys[0].PublicKey}}},
		{Network: bitcoin.Simnet, Keys: []bitcoin.Key{{Ref: "x", PublicKey: testKey("u").PubKey().SerializeUncompressed()}}},
		{Network: bitcoin.Simnet, Keys: []bitcoin.Key{{Ref: "x", PublicKey: append([]byte{2}, bytes.Repeat([]byte{0xff}, 32)...)}}},
	}
	for i, c := range bad {
		if _, err := bitcoin.NewWallet(c); err == nil || !strings.HasPrefix(err.Error(), "bitcoin: ") {
			t.Errorf("config %d: %v", i, err)
		}
	}
	for _, n := range []bitcoin.Network{bitcoin.Mainnet, bitcoin.Testnet3, bitcoin.Signet, bitcoin.Regtest, bitcoin.Simnet} {
		got, err := bitcoin.ParseNetwork(n.String())
		if err != nil || got != n {
			t.Errorf("ParseNetwork(%q) = %v, %v", n.String(), got, err)
		}
		if _, err := f.keys[0].Address(n); err != nil {
			t.Error(err)
		}
	}
	if _, err := bitcoin.ParseNetwork("dogecoin"); err == nil {
		t.Error("ParseNetwork accepted dogecoin")
	}
	a, err := f.keys[0].Address(bitcoin.Mainnet)
	if err != nil || !strings.HasPrefix(a.EncodeAddress(), "bc1q") {
		t.Errorf("mainnet address %v %v", a, err)
	}
	if s, _ := txscript.PayToAddrScript(a); !bytes.Equal(s, f.keys[0].PkScript()) {
		t.Errorf("PkScript is not the address's script")
	}
}

func TestNoPacket(t *testing.T) {
	f := newFixture(t, 3)
	for _, p := range []*psbt.Packet{nil, {}} {
		if s, err := bitcoin.Analyse(p, f.wallet); err == nil || s != nil {
			t.Errorf("Analyse(%v) = %v, %v", p, s, err)
		}
	}
	if _, err := bitcoin.Analyse(f.standard(t), nil); err == nil {
		t.Error("Analyse with no wallet")
	}
}
