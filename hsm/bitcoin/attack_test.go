package bitcoin_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
)

// TestAttacks takes the fixture's honest packet, changes it the way a
// hostile submitter, bridge or database would, and checks that Analyse
// refuses the result with an error naming the input or output, and that
// Sign refuses it too, even when handed the honest packet's approval.
func TestAttacks(t *testing.T) {
	f := newFixture(t, 3)
	honest := f.standard(t)
	hs, err := bitcoin.Analyse(honest, f.wallet)
	if err != nil {
		t.Fatal(err)
	}
	approved := canonical(t, hs)
	if _, err := bitcoin.Sign(t.Context(), f.signer, bitcoin.SignRequest{Packet: honest, Wallet: f.wallet, Approved: approved}); err != nil {
		t.Fatalf("the honest packet does not sign: %v", err)
	}

	foreign := newCoin("foreign", 0, 70_000_000, foreignScript("payer"))
	cases := []struct {
		name   string
		mutate func(p *psbt.Packet)
		want   string // in the error
	}{
		{"input not ours", func(p *psbt.Packet) {
			p.UnsignedTx.TxIn[1].PreviousOutPoint = *foreign.outPoint()
			p.Inputs[1].NonWitnessUtxo = foreign.prev
			p.Inputs[1].WitnessUtxo = foreign.prev.TxOut[0]
		}, "input 1 spends"},
		{"witness UTXO amount lie", func(p *psbt.Packet) {
			p.Inputs[0].WitnessUtxo = wire.NewTxOut(p.Inputs[0].WitnessUtxo.Value-5_000_000, p.Inputs[0].WitnessUtxo.PkScript)
		}, "input 0: the witness UTXO (95000000 sat) is not the output"},
		{"witness UTXO claims our script for a foreign coin", func(p *psbt.Packet) {
			p.UnsignedTx.TxIn[1].PreviousOutPoint = *foreign.outPoint()
			p.Inputs[1].NonWitnessUtxo = foreign.prev
			p.Inputs[1].WitnessUtxo = wire.NewTxOut(foreign.prev.TxOut[0].Value, f.keys[1].PkScript())
		}, "input 1: the witness UTXO"},
		{"previous transaction of another txid", func(p *psbt.Packet) {
			p.Inputs[1].NonWitnessUtxo = p.Inputs[0].NonWitnessUtxo
		}, "input 1: its previous transaction hashes to"},
		{"previous transaction too short", func(p *psbt.Packet) {
			p.UnsignedTx.TxIn[0].PreviousOutPoint.Index = 5
		}, "input 0"},
		{"witness UTXO missing", func(p *psbt.Packet) {
			p.Inputs[1].WitnessUtxo = nil
		}, "input 1 (spending"},
		{"previous transaction missing", func(p *psbt.Packet) {
			p.Inputs[0].NonWitnessUtxo = nil
		}, "input 0 (spending"},
		{"sighash NONE", func(p *psbt.Packet) { p.Inputs[1].SighashType = txscript.SigHashNone }, "input 1 asks for sighash type SIGHASH_NONE (0x2)"},
		{"sighash SINGLE", func(p *psbt.Packet) { p.Inputs[0].SighashType = txscript.SigHashSingle }, "input 0 asks for sighash type SIGHASH_SINGLE (0x3)"},
		{"sighash ALL|ANYONECANPAY", func(p *psbt.Packet) {
			p.Inputs[0].SighashType = txscript.SigHashAll | txscript.SigHashAnyOneCanPay
		}, "input 0 asks for sighash type SIGHASH_ALL|SIGHASH_ANYONECANPAY (0x81)"},
		{"sighash NONE|ANYONECANPAY", func(p *psbt.Packet) {
			p.Inputs[1].SighashType = txscript.SigHashNone | txscript.SigHashAnyOneCanPay
		}, "input 1 asks for sighash type SIGHASH_NONE|SIGHASH_ANYONECANPAY (0x82)"},
		{"sighash unknown", func(p *psbt.Packet) { p.Inputs[0].SighashType = 0x41 }, "input 0 asks for sighash type 0x41"},
		{"fake change claiming a wallet key", func(p *psbt.Packet) {
			// Output 0 pays a foreign script but says it derives from
			// wallet key 2, as change would.
			p.Outputs[0].Bip32Derivation = []*psbt.Bip32Derivation{{PubKey: f.keys[2].PublicKey, MasterKeyFingerprint: 1, Bip32Path: []uint32{0}}}
		}, "output 0 claims to pay wallet key 2"},
		{"fake taproot change claiming a wallet key", func(p *psbt.Packet) {
			p.Outputs[0].TaprootInternalKey = f.keys[1].PublicKey[1:]
		}, "output 0 claims to pay wallet key 1"},
		{"change claiming another wallet key", func(p *psbt.Packet) {
			p.Outputs[1].Bip32Derivation = []*psbt.Bip32Derivation{{PubKey: f.keys[0].PublicKey, MasterKeyFingerprint: 1, Bip32Path: []uint32{0}}}
		}, "output 1 claims to pay wallet key 0"},
		{"duplicate input", func(p *psbt.Packet) {
			p.UnsignedTx.TxIn[1].PreviousOutPoint = p.UnsignedTx.TxIn[0].PreviousOutPoint
			p.Inputs[1] = p.Inputs[0]
		}, "input 1 spends"},
		{"fee negative", func(p *psbt.Packet) { p.UnsignedTx.TxOut[0].Value += 10_001 }, "spend more than the inputs"},
		{"no outputs", func(p *psbt.Packet) {
			p.UnsignedTx.TxOut, p.Outputs = nil, nil
		}, "no outputs"},
		{"no inputs", func(p *psbt.Packet) {
			p.UnsignedTx.TxIn, p.Inputs = nil, nil
		}, "no inputs"},
		{"input maps missing", func(p *psbt.Packet) { p.Inputs = p.Inputs[:1] }, "1 input maps for 2 inputs"},
		{"OP_RETURN output", func(p *psbt.Packet) {
			p.UnsignedTx.TxOut[0].PkScript = []byte{txscript.OP_RETURN, 4, 'b', 'u', 'y', '!'}
		}, "output 0: OP_RETURN"},
		{"bare public key output", func(p *psbt.Packet) {
			p.UnsignedTx.TxOut[0].PkScript = append(append([]byte{33}, f.keys[0].PublicKey...), txscript.OP_CHECKSIG)
		}, "output 0: its script (pubkey) has no standard address"},
		{"non-standard output", func(p *psbt.Packet) {
			p.UnsignedTx.TxOut[0].PkScript = []byte{txscript.OP_TRUE}
		}, "output 0"},
		{"unknown witness version", func(p *psbt.Packet) {
			p.UnsignedTx.TxOut[0].PkScript = append([]byte{txscript.OP_2, 0x20}, bytes.Repeat([]byte{1}, 32)...)
		}, "output 0"},
		{"negative output", func(p *psbt.Packet) { p.UnsignedTx.TxOut[1].Value = -1 }, "output 1: amount -1 sat is out of range"},
		{"output above 21 million", func(p *psbt.Packet) { p.UnsignedTx.TxOut[0].Value = btcutil.MaxSatoshi + 1 }, "output 0: amount"},
		{"outputs add up above 21 million", func(p *psbt.Packet) {
			p.UnsignedTx.TxOut[0].Value = btcutil.MaxSatoshi
		}, "up to output 1"},
		{"input amount negative", func(p *psbt.Packet) {
			p.Inputs[0].WitnessUtxo = wire.NewTxOut(-5, p.Inputs[0].WitnessUtxo.PkScript)
		}, "input 0: amount -5 sat is out of range"},
		{"partial signature present", func(p *psbt.Packet) {
			p.Inputs[0].PartialSigs = []*psbt.PartialSig{{PubKey: f.keys[0].PublicKey, Signature: []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x01}}}
		}, "input 0 already carries signatures"},
		{"final witness present", func(p *psbt.Packet) {
			p.Inputs[1].FinalScriptWitness = []byte{0}
		}, "input 1 already carries signatures"},
		{"witness script on a P2WPKH input", func(p *psbt.Packet) {
			p.Inputs[1].WitnessScript = []byte{txscript.OP_TRUE}
		}, "input 1 has a redeem or witness script"},
		{"redeem script on a P2WPKH input", func(p *psbt.Packet) {
			p.Inputs[0].RedeemScript = f.keys[0].PkScript()
		}, "input 0 has a redeem or witness script"},
		{"signed unsigned transaction", func(p *psbt.Packet) {
			p.UnsignedTx.TxIn[0].SignatureScript = []byte{txscript.OP_TRUE}
		}, "input 0 is already signed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := reparse(t, honest)
			c.mutate(p)
			s, err := bitcoin.Analyse(p, f.wallet)
			if err == nil || s != nil {
				t.Fatalf("Analyse accepted it: %+v", s)
			}
			if !strings.HasPrefix(err.Error(), "bitcoin: ") || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
			if signed, err := bitcoin.Sign(t.Context(), f.signer, bitcoin.SignRequest{Packet: p, Wallet: f.wallet, Approved: approved}); err == nil {
				t.Fatalf("Sign signed it: %v", signed.Tx.TxHash())
			}
		})
	}
}

// TestChangeClaims checks that derivation information in the PSBT never
// makes an output change by itself, and that honest claims are accepted.
func TestChangeClaims(t *testing.T) {
	f := newFixture(t, 3)
	p := f.standard(t)
	// Honest: the change output says it is key 2's; the destination names
	// a key of the recipient's wallet.
	p.Outputs[1].Bip32Derivation = []*psbt.Bip32Derivation{{PubKey: f.keys[2].PublicKey, MasterKeyFingerprint: 1, Bip32Path: []uint32{1, 2}}}
	p.Outputs[0].Bip32Derivation = []*psbt.Bip32Derivation{{PubKey: testKey("foreign destination").PubKey().SerializeCompressed(), MasterKeyFingerprint: 2, Bip32Path: []uint32{0}}}
	s, err := bitcoin.Analyse(reparse(t, p), f.wallet)
	if err != nil {
		t.Fatal(err)
	}
	if s.Outputs[0].Change || !s.Outputs[1].Change {
		t.Fatalf("change flags %v %v", s.Outputs[0].Change, s.Outputs[1].Change)
	}
	// Change without any claim is still change: the script decides.
	p = f.standard(t)
	if s, err = bitcoin.Analyse(p, f.wallet); err != nil || !s.Outputs[1].Change || s.Outputs[0].Change {
		t.Fatalf("%v %+v", err, s)
	}
}

// TestSignRefusesOtherApprovals checks that Sign signs only the approved
// transaction: a packet that analyses well but differs in anything the
// summary covers is refused, and so is an empty approval.
func TestSignRefusesOtherApprovals(t *testing.T) {
	f := newFixture(t, 3)
	honest := f.standard(t)
	hs, err := bitcoin.Analyse(honest, f.wallet)
	if err != nil {
		t.Fatal(err)
	}
	approved := canonical(t, hs)
	for name, mutate := range map[string]func(*psbt.Packet){
		"amount":      func(p *psbt.Packet) { p.UnsignedTx.TxOut[0].Value-- },
		"destination": func(p *psbt.Packet) { p.UnsignedTx.TxOut[0].PkScript = foreignScript("thief") },
		"lock time":   func(p *psbt.Packet) { p.UnsignedTx.LockTime = 500_000 },
		"sequence":    func(p *psbt.Packet) { p.UnsignedTx.TxIn[0].Sequence = 0 },
		"order":       func(p *psbt.Packet) { o := p.UnsignedTx.TxOut; o[0], o[1] = o[1], o[0] },
	} {
		p := reparse(t, honest)
		mutate(p)
		if _, err := bitcoin.Analyse(p, f.wallet); err != nil {
			t.Fatalf("%s: Analyse: %v", name, err)
		}
		_, err := bitcoin.Sign(t.Context(), f.signer, bitcoin.SignRequest{Packet: p, Wallet: f.wallet, Approved: approved})
		if err == nil || !strings.Contains(err.Error(), "not the one approved") {
			t.Errorf("%s: Sign: %v", name, err)
		}
	}
	if _, err := bitcoin.Sign(t.Context(), f.signer, bitcoin.SignRequest{Packet: honest, Wallet: f.wallet}); err == nil {
		t.Error("Sign without an approval")
	}
	// A wallet whose key does not match the HSM's key of that name.
	keys := f.wallet.Keys()
	keys[1].Ref = "custody-2"
	keys[2].Ref = "custody-1"
	swapped, err := bitcoin.NewWallet(bitcoin.WalletConfig{Network: bitcoin.Simnet, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bitcoin.Sign(t.Context(), f.signer, bitcoin.SignRequest{Packet: honest, Wallet: swapped, Approved: approved}); err == nil || !strings.Contains(err.Error(), "is not the wallet's key") {
		t.Errorf("swapped key references: %v", err)
	}
}

// TestSign signs with the in-memory signer and checks the result beyond
// what Sign itself checks.
func TestSign(t *testing.T) {
	f := newFixture(t, 3)
	p := f.standard(t)
	before := serialize(t, p)
	s, err := bitcoin.Analyse(p, f.wallet)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := bitcoin.Sign(t.Context(), f.signer, bitcoin.SignRequest{Packet: p, Wallet: f.wallet, Approved: canonical(t, s)})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, serialize(t, p)) {
		t.Fatal("Sign modified the caller's packet")
	}
	if !signed.Packet.IsComplete() {
		t.Fatal("the returned packet is not finalized")
	}
	tx := signed.Tx
	if tx.TxHash() != s.TxID {
		t.Fatalf("txid %v, summary %v", tx.TxHash(), s.TxID)
	}
	for i, in := range tx.TxIn {
		if len(in.SignatureScript) != 0 || len(in.Witness) != 2 {
			t.Fatalf("input %d: scriptSig %x, %d witness items", i, in.SignatureScript, len(in.Witness))
		}
		sig, pub := in.Witness[0], in.Witness[1]
		if sig[len(sig)-1] != byte(txscript.SigHashAll) || len(sig) > 72 || !bytes.Equal(pub, s.Inputs[i].PublicKey) {
			t.Fatalf("input %d: witness %x %x", i, sig, pub)
		}
	}
	raw, err := signed.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var back wire.MsgTx
	if err := back.Deserialize(bytes.NewReader(raw)); err != nil || back.WitnessHash() != tx.WitnessHash() {
		t.Fatalf("serialized transaction does not read back: %v", err)
	}
	weight := int64(tx.SerializeSizeStripped())*3 + int64(tx.SerializeSize())
	if weight > s.Weight || s.Weight-weight > 2*4 {
		t.Fatalf("weight %d, estimated %d", weight, s.Weight)
	}
}
