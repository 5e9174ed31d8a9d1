package bitcoin_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/hsm/bitcoin/btcdtest"
	"github.com/opencustodynet/opencustody/hsm/hsmtest"
)

func TestKeysInHSM(t *testing.T) {
	ctx := t.Context()
	store := hsmtest.Store(t)
	k, err := bitcoin.NewKey(ctx, store, bitcoin.NewKeyRequest{Label: "custody-1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(k.PublicKey) != 33 || !bytes.HasPrefix([]byte(k.Ref), []byte("pkcs11:")) {
		t.Fatalf("key %+v", k)
	}
	for _, ref := range []string{k.Ref, "custody-1"} {
		loaded, err := bitcoin.LoadKey(ctx, store, ref)
		if err != nil || !bytes.Equal(loaded.PublicKey, k.PublicKey) || loaded.Ref != ref {
			t.Fatalf("LoadKey(%q) = %+v, %v", ref, loaded, err)
		}
	}
	a, err := k.Address(bitcoin.Simnet)
	if err != nil || !bytes.HasPrefix([]byte(a.EncodeAddress()), []byte("sb1q")) {
		t.Fatalf("address %v %v", a, err)
	}
	if _, err := bitcoin.NewKey(ctx, store, bitcoin.NewKeyRequest{Label: "custody-1"}); !errors.Is(err, hsm.ErrKeyExists) {
		t.Errorf("a second key custody-1: %v", err)
	}
	if _, err := bitcoin.LoadKey(ctx, store, "missing"); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Errorf("LoadKey(missing): %v", err)
	}
	if _, err := store.GenerateKey(ctx, hsm.GenerateKeyRequest{Label: "identity", Algorithm: hsm.ECDSAP256}); err != nil {
		t.Fatal(err)
	}
	if _, err := bitcoin.LoadKey(ctx, store, "identity"); err == nil {
		t.Error("LoadKey accepted a P-256 key as a custody key")
	}
	if _, err := bitcoin.NewKey(ctx, store, bitcoin.NewKeyRequest{Label: "custody-2", Backupable: true}); err != nil {
		t.Fatal(err)
	}
	keys, err := store.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range keys {
		if info.Label == "custody-2" && !info.Backupable || info.Label == "custody-1" && info.Backupable {
			t.Errorf("key %s: backupable %v", info.Label, info.Backupable)
		}
	}
}

// nodeCoin is a coin on the node's chain: its transaction and output.
type nodeCoin struct {
	tx    *wire.MsgTx
	index uint32
}

// TestNode is the proof on a real node: custody keys in SoftHSM2, coins
// mined to their P2WPKH addresses on a private btcd simnet, PSBTs spending
// them analysed, signed through the HSM, and accepted by the node into its
// mempool and a block.
func TestNode(t *testing.T) {
	ctx := t.Context()
	store := hsmtest.Store(t)
	keyA, err := bitcoin.NewKey(ctx, store, bitcoin.NewKeyRequest{Label: "custody-a"})
	if err != nil {
		t.Fatal(err)
	}
	keyB, err := bitcoin.NewKey(ctx, store, bitcoin.NewKeyRequest{Label: "custody-b"})
	if err != nil {
		t.Fatal(err)
	}
	wallet, err := bitcoin.NewWallet(bitcoin.WalletConfig{Network: bitcoin.Simnet, Keys: []bitcoin.Key{keyA, keyB}})
	if err != nil {
		t.Fatal(err)
	}
	addrA, err := keyA.Address(bitcoin.Simnet)
	if err != nil {
		t.Fatal(err)
	}
	dest, err := btcutil.NewAddressWitnessPubKeyHash(btcutil.Hash160(testKey("node destination").PubKey().SerializeCompressed()), &chaincfg.SimNetParams)
	if err != nil {
		t.Fatal(err)
	}

	node := btcdtest.Start(t, btcdtest.Options{Network: &chaincfg.SimNetParams, MiningAddr: addrA})
	// Segwit activates at height 300 on simnet; the first coinbases are
	// long mature by then.
	blocks := node.Generate(t, btcdtest.SimnetSegwitHeight)
	coinbase := func(i int) nodeCoin {
		tx := node.Block(t, blocks[i]).Transactions[0]
		for j, out := range tx.TxOut {
			if bytes.Equal(out.PkScript, keyA.PkScript()) {
				return nodeCoin{tx, uint32(j)}
			}
		}
		t.Fatalf("the coinbase of block %d does not pay custody key A", i+1)
		return nodeCoin{}
	}

	// spend builds a PSBT as a submitter would, sends it through intake
	// (base64), analyses it, signs it in the HSM and has the node accept
	// it; it returns the summary and the signed transaction.
	spend := func(t *testing.T, coins []nodeCoin, outs []*wire.TxOut) (*bitcoin.Summary, *bitcoin.Signed) {
		t.Helper()
		ops := make([]*wire.OutPoint, len(coins))
		for i, c := range coins {
			h := c.tx.TxHash()
			ops[i] = wire.NewOutPoint(&h, c.index)
		}
		p, err := psbt.New(ops, outs, 2, 0, []uint32{wire.MaxTxInSequenceNum - 2, wire.MaxTxInSequenceNum - 2}[:len(coins)])
		if err != nil {
			t.Fatal(err)
		}
		u, err := psbt.NewUpdater(p)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range coins {
			if err := u.AddInNonWitnessUtxo(c.tx, i); err != nil {
				t.Fatal(err)
			}
			if err := u.AddInWitnessUtxo(c.tx.TxOut[c.index], i); err != nil {
				t.Fatal(err)
			}
		}
		b64, err := p.B64Encode()
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := bitcoin.Parse([]byte(b64 + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		s, err := bitcoin.Analyse(parsed, wallet)
		if err != nil {
			t.Fatal(err)
		}
		signed, err := bitcoin.Sign(ctx, store, bitcoin.SignRequest{Packet: parsed, Wallet: wallet, Approved: canonical(t, s)})
		if err != nil {
			t.Fatal(err)
		}

		// A tampered copy is refused by the node: its checks are real.
		tampered := signed.Tx.Copy()
		tampered.TxOut[0].Value--
		if _, err := node.Send(tampered); err == nil {
			t.Fatal("the node accepted a transaction whose output was changed after signing")
		}

		txid, err := node.Send(signed.Tx)
		if err != nil {
			t.Fatalf("the node refused the signed transaction: %v", err)
		}
		if *txid != s.TxID {
			t.Fatalf("node txid %v, summary %v", txid, s.TxID)
		}
		node.RequireInMempool(t, txid)
		entry, err := node.MempoolEntry(txid)
		if err != nil {
			t.Fatal(err)
		}
		fee, err := btcutil.NewAmount(entry.Fee)
		if err != nil {
			t.Fatal(err)
		}
		weight := int64(signed.Tx.SerializeSizeStripped())*3 + int64(signed.Tx.SerializeSize())
		if fee != s.Fee || int64(entry.Weight) != weight || weight > s.Weight || int64(entry.Vsize) > s.VSize {
			t.Fatalf("node: fee %v weight %d vsize %d; summary: fee %v weight ≤ %d vsize ≤ %d; transaction weight %d",
				fee, entry.Weight, entry.Vsize, s.Fee, s.Weight, s.VSize, weight)
		}
		node.RequireConfirmed(t, txid)
		return s, signed
	}

	// One coinbase of key A: 1 BTC to an outside address, the rest back to
	// key B as change, at exactly 10 sat/vB: one input, two P2WPKH
	// outputs, 113 bytes stripped, weight 113*4+2+108 = 562, vsize 141,
	// fee 1,410 sat.
	var change nodeCoin
	t.Run("one input, destination and change", func(t *testing.T) {
		in := coinbase(0)
		total := in.tx.TxOut[in.index].Value
		s, signed := spend(t, []nodeCoin{in}, []*wire.TxOut{
			wire.NewTxOut(100_000_000, mustScript(t, dest)),
			wire.NewTxOut(total-100_000_000-1410, keyB.PkScript()),
		})
		o := s.Outputs
		if o[0].Address != dest.EncodeAddress() || o[0].Amount != 100_000_000 || o[0].Change ||
			!o[1].Change || !bytes.Equal(o[1].PublicKey, keyB.PublicKey) || o[1].Amount != btcutil.Amount(total-100_000_000-1410) {
			t.Fatalf("outputs %+v", o)
		}
		if s.Fee != 1410 || s.VSize != 141 || s.FeeRate != 10_000 || s.SentTotal != 100_000_000 || s.InputTotal != btcutil.Amount(total) {
			t.Fatalf("summary %+v", s)
		}
		change = nodeCoin{signed.Tx, 1}
	})
	if t.Failed() {
		return
	}

	// Two inputs of two keys (a coinbase of A, the change of B) at exactly
	// 20 sat/vB: weight 154*4+2+2*108 = 834, vsize 209, fee 4,180 sat.
	t.Run("two inputs of two keys", func(t *testing.T) {
		a := coinbase(1)
		total := a.tx.TxOut[a.index].Value + change.tx.TxOut[change.index].Value
		s, _ := spend(t, []nodeCoin{a, change}, []*wire.TxOut{
			wire.NewTxOut(9_000_000_000, mustScript(t, dest)),
			wire.NewTxOut(total-9_000_000_000-4180, keyA.PkScript()),
		})
		if !bytes.Equal(s.Inputs[0].PublicKey, keyA.PublicKey) || !bytes.Equal(s.Inputs[1].PublicKey, keyB.PublicKey) {
			t.Fatalf("inputs %+v", s.Inputs)
		}
		if s.Fee != 4180 || s.VSize != 209 || s.FeeRate != 20_000 || !s.Outputs[1].Change || s.Outputs[0].Change {
			t.Fatalf("summary %+v", s)
		}
	})
}

func mustScript(t *testing.T, a btcutil.Address) []byte {
	t.Helper()
	s, err := txscript.PayToAddrScript(a)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
