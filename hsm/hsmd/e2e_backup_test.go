package hsmd_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/emulator/debuglink"
	"github.com/opencustodynet/opencustody/hsm/backup"
	"github.com/opencustodynet/opencustody/hsm/bitcoin/btcdtest"
	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// adminChange waits for the pending backup change of kind, checks what
// the admins' devices show, and has each of them answer.
func (w *world) adminChange(kind string, show []string, answer func(*emu) error) *apipb.Change {
	w.t.Helper()
	var ch *apipb.Change
	until(w.t, w.ctx, "a pending "+kind+" change", func() error {
		l, err := w.op.ListChanges(w.ctx, &apipb.ListChangesRequest{})
		if err != nil {
			return err
		}
		for _, c := range l.GetChanges() {
			if c.GetKind() == kind && c.GetState() == "pending" {
				ch = c
				return nil
			}
		}
		return errors.New("none yet")
	})
	for _, e := range w.emus {
		text := screenText(w.promptScreen(e, ch.GetId()))
		if !strings.HasPrefix(text, "Approve change") {
			w.t.Errorf("device %s: %s", e.id, text)
		}
		// Each page of a long prompt starts with its title again.
		text = strings.ReplaceAll(text, "Approve change ", "")
		for _, want := range append([]string{"Kind: " + kind, "Proposed by: olivia"}, show...) {
			if !strings.Contains(text, want) {
				w.t.Errorf("device %s: the %s screen lacks %q:\n%s", e.id, kind, want, text)
			}
		}
		if err := answer(e); err != nil {
			w.t.Fatal(err)
		}
	}
	return ch
}

// TestE2EBackupSiteSigns runs a disaster-recovery takeover on real parts:
// a backup-able wallet made at the main site (hsmd, SoftHSM2, emulators
// through a bridge); the second site's HSM enrolled; registering it and
// exporting to it approved by the main site's admin quorum on the
// emulators, whose screens show the target's fingerprints; the keys and
// records imported at the second site; the approvers pair devices with the
// second site's HSM; a transfer from the wallet is approved there on the
// emulators' screens, signed by the second HSM, and a real node accepts
// it. An export one admin rejects produces nothing.
func TestE2EBackupSiteSigns(t *testing.T) {
	main, dr := newWorld(t, 2), newWorld(t, 2)
	users := []string{"alice", "bob"}
	for _, w := range []*world{main, dr} {
		for i, e := range w.emus {
			w.pair(w.hsmd, e, users[i], apipb.Role_ROLE_ADMIN)
		}
		for _, e := range w.emus {
			w.waitChannel(w.hsmd, e, true)
		}
	}
	if _, err := main.hsmd.core.SetAdminQuorum(main.ctx, 2); err != nil {
		t.Fatal(err)
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

	gate := &hsmd.ChangeApprover{Client: main.op, Initiator: "olivia", Poll: 20 * time.Millisecond}
	src := &backup.Site{HSM: main.hsmd.store, Identity: main.hsmd.identity, Records: main.hsmd.records, Approver: gate}
	dst := &backup.Site{HSM: dr.hsmd.store, Identity: dr.hsmd.identity, Records: dr.hsmd.records}
	e, _, err := dst.Enroll(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	target := e.Identity.Fingerprint()
	confirm := func(e *emu) error { _, err := e.dl.ConfirmAll(main.ctx); return err }

	done := make(chan error, 1)
	go func() { done <- src.Register(main.ctx, e) }()
	reg := main.adminChange(backup.AdminChangeRegister, []string{"Target HSM: " + target, "Backup key: " + backup.BackupKeyFingerprint(e.BackupKey)}, confirm)
	if err := <-done; err != nil {
		t.Fatalf("Register after the admins approved: %v", err)
	}
	if err := gate.Complete(main.ctx, "registered", nil); err != nil {
		t.Fatal(err)
	}
	main.waitChange(reg.GetId(), func(c *apipb.Change) bool { return c.GetState() == "applied" })

	// One admin rejects an export: nothing is exported.
	exportReq := backup.ExportRequest{Target: target, SOPIN: main.hsmd.token.SOPIN}
	rejected := make(chan error, 1)
	go func() { _, err := src.Export(main.ctx, exportReq); rejected <- err }()
	main.adminChange(backup.AdminChangeExport, []string{"Target HSM: " + target, "Keys leaving: 1"}, func(e *emu) error {
		if e != main.emus[0] {
			return nil
		}
		_, err := e.dl.Press(main.ctx, debuglink.Reject)
		return err
	})
	if err := <-rejected; !errors.Is(err, backup.ErrNotApproved) || !strings.Contains(err.Error(), "rejected") {
		t.Fatalf("an export an admin rejected: %v", err)
	}

	exported := make(chan *backup.Bundle, 1)
	go func() {
		b, err := src.Export(main.ctx, exportReq)
		if err != nil {
			t.Error(err)
		}
		exported <- b
	}()
	ex := main.adminChange(backup.AdminChangeExport, []string{"Target HSM: " + target, "Keys leaving: 1", "Keys kept: 0"}, confirm)
	b := <-exported
	if b == nil {
		t.FailNow()
	}
	if err := gate.Complete(main.ctx, "exported", nil); err != nil {
		t.Fatal(err)
	}
	main.waitChange(ex.GetId(), func(c *apipb.Change) bool { return c.GetState() == "applied" })
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
	_, tx := dr.waitSignedTx(dr.hsmd, req.GetId())
	txid, err := node.Send(tx)
	if err != nil {
		t.Fatalf("the node refused the transaction the second site signed: %v", err)
	}
	node.RequireConfirmed(t, txid)
}
