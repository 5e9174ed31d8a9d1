package hsmd_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/hsm/backup"
	"github.com/opencustodynet/opencustody/hsm/bitcoin/btcdtest"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// consent stands in for the admin quorum: it records what it was asked.
type consent struct{ asked []backup.Change }

func (c *consent) Approve(_ context.Context, ch backup.Change) error {
	c.asked = append(c.asked, ch)
	return nil
}

// TestE2EBackupSiteSigns runs a disaster-recovery takeover on real parts:
// a backup-able wallet made at the main site (hsmd, SoftHSM2, emulators
// through a bridge); the second site's HSM enrolled, registered and sent
// the keys and records through the backup; the approvers pair devices with
// the second site's HSM; a transfer from the wallet is approved there on
// the emulators' screens, signed by the second HSM, and a real node
// accepts it.
func TestE2EBackupSiteSigns(t *testing.T) {
	main, dr := newWorld(t, 2), newWorld(t, 2)
	users := []string{"alice", "bob"}
	for _, w := range []*world{main, dr} {
		for i, e := range w.emus {
			w.pair(w.hsmd, e, users[i], apipb.Role_ROLE_APPROVER)
		}
		for _, e := range w.emus {
			w.waitChannel(w.hsmd, e, true)
		}
	}
	cust := apipb.NewCustodyClient(main.hsmd.dial(t, "operator"))
	if _, err := cust.CreateWallet(main.ctx, &apipb.CreateWalletRequest{Name: "treasury", Network: "simnet", Approvers: users, Quorum: 2, Backupable: true}); err != nil {
		t.Fatal(err)
	}
	a, err := cust.NewAddress(main.ctx, &apipb.NewAddressRequest{Wallet: "treasury"})
	if err != nil {
		t.Fatal(err)
	}
	addr := a.GetAddress()

	gate := &consent{}
	src := &backup.Site{HSM: main.hsmd.store, Identity: main.hsmd.identity, Records: main.hsmd.records, Approver: gate}
	dst := &backup.Site{HSM: dr.hsmd.store, Identity: dr.hsmd.identity, Records: dr.hsmd.records}
	e, _, err := dst.Enroll(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Register(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	b, err := src.Export(t.Context(), backup.ExportRequest{Target: e.Identity.Fingerprint(), SOPIN: main.hsmd.token.SOPIN})
	if err != nil {
		t.Fatal(err)
	}
	if len(gate.asked) != 2 || gate.asked[0].Kind != backup.RegisterTarget || gate.asked[1].Kind != backup.ExportToTarget {
		t.Fatalf("the gate was asked %+v", gate.asked)
	}
	file, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	res, err := dst.Import(t.Context(), backup.ImportRequest{Bundle: file, Source: backup.HSMKey{Algorithm: src.Identity.Algorithm(), Key: src.Identity.PublicKey()}.Fingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Keys) != 1 {
		t.Fatalf("imported %d keys", len(res.Keys))
	}
	// The main site still works after the Security Officer's step.
	if _, err := cust.NewAddress(main.ctx, &apipb.NewAddressRequest{Wallet: "treasury"}); err != nil {
		t.Fatalf("main site after the export: %v", err)
	}

	drCust := apipb.NewCustodyClient(dr.hsmd.dial(t, "operator"))
	wl, err := drCust.GetWallet(dr.ctx, &apipb.GetWalletRequest{Name: "treasury"})
	if err != nil {
		t.Fatalf("the second site does not know the wallet: %v", err)
	}
	if len(wl.GetAddresses()) != 1 || wl.GetAddresses()[0].GetAddress() != addr.GetAddress() {
		t.Fatalf("second site's wallet: %v", wl.GetAddresses())
	}

	mining, err := btcutil.DecodeAddress(addr.GetAddress(), &chaincfg.SimNetParams)
	if err != nil {
		t.Fatal(err)
	}
	node := btcdtest.Start(t, btcdtest.Options{Network: &chaincfg.SimNetParams, MiningAddr: mining})
	blocks := node.Generate(t, btcdtest.SimnetSegwitHeight)
	var prev *wire.MsgTx
	var index uint32
	for j, out := range node.Block(t, blocks[0]).Transactions[0].TxOut {
		if bytes.Equal(out.PkScript, p2wpkh(addr.GetPublicKey())) {
			prev, index = node.Block(t, blocks[0]).Transactions[0], uint32(j)
		}
	}
	if prev == nil {
		t.Fatal("the first block does not pay the wallet")
	}
	req, err := drCust.Submit(dr.ctx, &apipb.SubmitRequest{Wallet: "treasury", Initiator: "operator", Psbt: spend(t, prev, index, p2wpkh(addr.GetPublicKey()))})
	if err != nil {
		t.Fatal(err)
	}
	for _, em := range dr.emus {
		dr.promptScreen(em, req.GetId())
		if _, err := em.dl.ConfirmAll(dr.ctx); err != nil {
			t.Fatal(err)
		}
	}
	r := dr.waitRequestState(dr.hsmd, req.GetId(), "signed", func(r *apipb.Request) bool {
		return r.GetState() == apipb.RequestState_REQUEST_STATE_SIGNED
	})
	var tx wire.MsgTx
	if err := tx.Deserialize(bytes.NewReader(r.GetSignedTx())); err != nil {
		t.Fatal(err)
	}
	txid, err := node.Send(&tx)
	if err != nil {
		t.Fatalf("the node refused the transaction the second site signed: %v", err)
	}
	node.RequireConfirmed(t, txid)
}
