package hsmd_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/hsm/hsmtest"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// realRecordBodies runs a core on a real token far enough to store a
// device of each of two users, a wallet with an address and a pending
// request, and returns the bodies stored, by kind.
func realRecordBodies(tb testing.TB) map[string][][]byte {
	tb.Helper()
	ctx := context.Background()
	c := hsmtest.NewCore(tb)
	ds := hsmd.DeviceStore{Records: c.Records}
	cr, err := core.New(core.Config{Identity: c.Identity, Devices: ds,
		Wallets: hsmd.WalletStore{Records: c.Records}, Requests: hsmd.RequestStore{Records: c.Records},
		Custody: c.Store, Keys: c.Store})
	if err != nil {
		tb.Fatal(err)
	}
	for _, u := range []string{"alice", "bob"} {
		k, err := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ED25519, rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
		d := &core.DeviceRecord{ID: u + "-dev", Algorithm: k.Algorithm(), IdentityKey: k.PublicKey(), User: u,
			Role: core.RoleApprover, State: core.DevicePaired, Model: "emulator", Emulator: true, PairedAt: time.Now().UTC()}
		if err := ds.CreateDevice(ctx, d); err != nil {
			tb.Fatal(err)
		}
	}
	if _, err := cr.CreateWallet(ctx, core.CreateWalletRequest{Name: "treasury", Network: bitcoin.Simnet, Approvers: []string{"alice", "bob"}, Quorum: 2}); err != nil {
		tb.Fatal(err)
	}
	_, key, err := cr.NewAddress(ctx, "treasury")
	if err != nil {
		tb.Fatal(err)
	}
	prev := wire.NewMsgTx(2)
	h := chainhash.HashH([]byte("funding"))
	prev.AddTxIn(wire.NewTxIn(wire.NewOutPoint(&h, 0), nil, nil))
	prev.AddTxOut(wire.NewTxOut(100_000_000, p2wpkh(key.PublicKey)))
	if _, err := cr.Submit(ctx, core.SubmitRequest{Wallet: "treasury", Initiator: "olivia", PSBT: spend(tb, prev, 0, p2wpkh(key.PublicKey))}); err != nil {
		tb.Fatal(err)
	}
	out := map[string][][]byte{}
	for _, kind := range []string{"device", "wallet", "request"} {
		rs, err := c.Records.List(ctx, kind)
		if err != nil {
			tb.Fatal(err)
		}
		for _, r := range rs {
			out[kind] = append(out[kind], r.Body)
		}
	}
	return out
}

// FuzzStoredRecords has the core read device, wallet and request records
// whose bodies are fuzzed but whose MACs verify (as if the HSM had been
// made to MAC them): decoding what comes back from the store never panics,
// a record is returned only under its own key, and the core's readers
// (lists, a device's pending prompts, which parse the stored prompts) fail
// cleanly or return what was stored.
func FuzzStoredRecords(f *testing.F) {
	kinds := []string{"device", "wallet", "request"}
	for i, kind := range kinds {
		for _, b := range realRecordBodies(f)[kind] {
			f.Add(uint8(i), b)
		}
	}
	auth, err := records.NewSoftHMAC(bytes.Repeat([]byte{9}, 32))
	if err != nil {
		f.Fatal(err)
	}
	id, err := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ECDSA_P256, rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		ctx := context.Background()
		rs := records.New(records.NewMemory(), auth)
		kind := kinds[int(which)%len(kinds)]
		const key = "alice-dev"
		if _, err := rs.Create(ctx, kind, key, body); err != nil {
			t.Skip() // too large for a record
		}
		ds, ws, qs := hsmd.DeviceStore{Records: rs}, hsmd.WalletStore{Records: rs}, hsmd.RequestStore{Records: rs}
		if d, err := ds.GetDevice(ctx, key); err == nil && d.ID != key {
			t.Fatalf("device record %s returned as %s", key, d.ID)
		}
		if w, err := ws.GetWallet(ctx, key); err == nil && w.Name != key {
			t.Fatalf("wallet record %s returned as %s", key, w.Name)
		}
		if r, err := qs.GetRequest(ctx, key); err == nil && r.ID != key {
			t.Fatalf("request record %s returned as %s", key, r.ID)
		}
		cr, err := core.New(core.Config{Identity: id, Devices: ds, Wallets: ws, Requests: qs,
			Now: func() time.Time { return time.Unix(1_700_000_000, 0) }})
		if err != nil {
			t.Fatal(err)
		}
		cr.PendingPrompts(ctx, key)
		cr.Requests(ctx)
		cr.Wallets(ctx)
		cr.Devices(ctx)
	})
}
