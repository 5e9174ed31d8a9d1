package hsmd_test

import (
	"bytes"
	"testing"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/hsm/bitcoin/btcdtest"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// TestE2ETransferAcceptedByNode runs the whole approval path on real parts
// and proves the result on a real node: coins mined on a btcd simnet node
// to a custody address whose key is in SoftHSM2; a PSBT spending them
// submitted to hsmd; the prompt shown on three emulators reached through
// the bridge; two of them approve on their screens; the HSM signs; and the
// node accepts the extracted transaction into its mempool and a block.
func TestE2ETransferAcceptedByNode(t *testing.T) {
	w := newWorld(t, 3)
	users := []string{"alice", "bob", "carol"}
	addrs := w.approverWallet("treasury", 2, users...)

	mining, err := btcutil.DecodeAddress(addrs[0].GetAddress(), &chaincfg.SimNetParams)
	if err != nil {
		t.Fatal(err)
	}
	node := btcdtest.Start(t, btcdtest.Options{Network: &chaincfg.SimNetParams, MiningAddr: mining})
	blocks := node.Generate(t, btcdtest.SimnetSegwitHeight)
	var prev *wire.MsgTx
	var index uint32
	for j, out := range node.Block(t, blocks[0]).Transactions[0].TxOut {
		if bytes.Equal(out.PkScript, p2wpkh(addrs[0].GetPublicKey())) {
			prev, index = node.Block(t, blocks[0]).Transactions[0], uint32(j)
		}
	}
	if prev == nil {
		t.Fatal("the first block does not pay the wallet")
	}

	req, err := apipb.NewCustodyClient(w.hsmd.dial(t, "operator")).Submit(w.ctx, &apipb.SubmitRequest{Wallet: "treasury", Initiator: "operator", Psbt: spend(t, prev, index, p2wpkh(addrs[1].GetPublicKey()))})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range w.emus {
		w.promptScreen(e, req.GetId())
	}
	for _, e := range w.emus[:2] {
		if _, err := e.dl.ConfirmAll(w.ctx); err != nil {
			t.Fatal(err)
		}
	}
	r, tx := w.waitSignedTx(w.hsmd, req.GetId())
	if tx.TxHash().String() != r.GetSummary().GetTxid() {
		t.Fatalf("signed tx %s, approved summary %s", tx.TxHash(), r.GetSummary().GetTxid())
	}
	txid, err := node.Send(tx)
	if err != nil {
		t.Fatalf("the node refused the transaction the devices approved: %v", err)
	}
	node.RequireInMempool(t, txid)
	node.RequireConfirmed(t, txid)
}
