package backup_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcec/v2"
	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/backup"
	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/hsm/bitcoin/btcdtest"
	"github.com/opencustodynet/opencustody/hsm/hsmtest"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/hsm/softhsm/softhsmtest"
)

func TestMain(m *testing.M) { softhsmtest.Main(m) }

// approver records the changes it is asked about and answers with err.
// It stands in for the admin quorum in tests of the logic around it.
type approver struct {
	asked []backup.Change
	err   error
}

func (a *approver) Approve(_ context.Context, c backup.Change) error {
	a.asked = append(a.asked, c)
	return a.err
}

type testSite struct {
	*backup.Site
	core *hsmtest.Core
	tok  *softhsmtest.Token
	appr *approver
}

// newSite is an HSM token with identity and record keys and its own
// records. Sites share this process's SoftHSM2 token directory (one
// PKCS#11 context per process); the CLI test runs each site in its own
// process and token directory.
func newSite(t *testing.T) *testSite {
	t.Helper()
	c := hsmtest.NewCore(t)
	a := &approver{}
	return &testSite{Site: &backup.Site{HSM: c.Store, Identity: c.Identity, Records: c.Records, Approver: a}, core: c, tok: c.Token, appr: a}
}

func (s *testSite) fingerprint() string {
	return backup.HSMKey{Algorithm: s.Identity.Algorithm(), Key: s.Identity.PublicKey()}.Fingerprint()
}

// twin stores a backup-able custody key whose scalar the test knows.
func (s *testSite) twin(t *testing.T, label string) *btcec.PrivateKey {
	t.Helper()
	return hsmtest.BackupableKey(t, s.core.Store, s.tok, label, []byte(label))
}

// pair enrolls dst and registers it at src.
func pair(t *testing.T, src, dst *testSite) *backup.Enrollment {
	t.Helper()
	e, created, err := dst.Enroll(t.Context())
	if err != nil || !created {
		t.Fatalf("Enroll: created %v, %v", created, err)
	}
	file, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := backup.ParseEnrollment(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Register(t.Context(), parsed); err != nil {
		t.Fatalf("Register: %v", err)
	}
	return parsed
}

func exportFile(t *testing.T, src, dst *testSite) []byte {
	t.Helper()
	b, err := src.Export(t.Context(), backup.ExportRequest{Target: dst.fingerprint(), SOPIN: src.tok.SOPIN})
	if err != nil {
		t.Fatalf("Export: %v", err)
	}
	file, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return file
}

// TestRoundTripNode: a backup-able key moves from one HSM to another with
// the wallet record naming it; the same approved PSBT signs on either
// site, and a real node accepts the target's transaction. The bundle
// holds no private scalar of a key whose scalar the test knows.
func TestRoundTripNode(t *testing.T) {
	ctx := t.Context()
	src, dst := newSite(t), newSite(t)
	k, err := bitcoin.NewKey(ctx, src.core.Store, bitcoin.NewKeyRequest{Label: "opencustody-treasury-0", Backupable: true})
	if err != nil {
		t.Fatal(err)
	}
	kept, err := bitcoin.NewKey(ctx, src.core.Store, bitcoin.NewKeyRequest{Label: "opencustody-treasury-1"})
	if err != nil {
		t.Fatal(err)
	}
	twin := src.twin(t, "opencustody-twin-0")
	if _, err := src.Records.Create(ctx, "wallet", "treasury", []byte(`{"name":"treasury","keys":["`+k.Ref+`"]}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Records.Create(ctx, "device", "0011223344556677", []byte(`{"id":"0011223344556677","user":"alice","role":"admin"}`)); err != nil {
		t.Fatal(err)
	}

	e := pair(t, src, dst)
	if len(src.appr.asked) != 1 || src.appr.asked[0].Kind != backup.RegisterTarget || src.appr.asked[0].Target.Identity.Fingerprint() != dst.fingerprint() {
		t.Fatalf("registration asked the quorum %+v", src.appr.asked)
	}
	if !strings.Contains(fieldsText(src.appr.asked[0]), dst.fingerprint()) || !strings.Contains(fieldsText(src.appr.asked[0]), backup.BackupKeyFingerprint(e.BackupKey)) {
		t.Fatalf("the registration screen does not show the target's fingerprints: %s", fieldsText(src.appr.asked[0]))
	}

	file := exportFile(t, src, dst)
	ex := src.appr.asked[1]
	// Each change's payload, as the admin-change mechanism would carry it,
	// describes itself to this site, and binds the target and key lists.
	for _, c := range src.appr.asked {
		payload, err := c.Canonical()
		if err != nil {
			t.Fatal(err)
		}
		back, err := backup.ParseChange(payload)
		if err != nil {
			t.Fatal(err)
		}
		if again, _ := back.Canonical(); !bytes.Equal(again, payload) {
			t.Fatalf("%s: the change does not round-trip", c.Kind)
		}
		fields, err := src.DescribeChange(ctx, c.Kind, dst.fingerprint(), payload)
		if err != nil {
			t.Fatalf("%s: DescribeChange: %v", c.Kind, err)
		}
		if !strings.Contains(fmt.Sprint(fields), dst.fingerprint()) {
			t.Fatalf("%s: fields %v do not show the target", c.Kind, fields)
		}
		if _, err := src.DescribeChange(ctx, c.Kind, src.fingerprint(), payload); err == nil {
			t.Fatalf("%s: described under another subject", c.Kind)
		}
		other := map[backup.ChangeKind]backup.ChangeKind{backup.RegisterTarget: backup.ExportToTarget, backup.ExportToTarget: backup.RegisterTarget}[c.Kind]
		if _, err := src.DescribeChange(ctx, other, dst.fingerprint(), payload); err == nil {
			t.Fatalf("%s: described as a %s", c.Kind, other)
		}
	}
	stale := ex
	stale.Keys = stale.Keys[:1]
	payload, _ := stale.Canonical()
	if _, err := src.DescribeChange(ctx, backup.ExportToTarget, dst.fingerprint(), payload); err == nil || !strings.Contains(err.Error(), "key lists") {
		t.Fatalf("an export change with another key list: %v", err)
	}
	if ex.Kind != backup.ExportToTarget || len(ex.Keys) != 2 || len(ex.Kept) != 1 || ex.Kept[0] != "opencustody-treasury-1" {
		t.Fatalf("export asked the quorum %+v", ex)
	}
	// No scalar in the file, in any encoding the file could hold it.
	block, _ := pem.Decode(file)
	scalar := twin.Key.Bytes()
	for _, hay := range [][]byte{file, block.Bytes} {
		for _, needle := range [][]byte{scalar[:], scalar[:16], scalar[16:], []byte(hex.EncodeToString(scalar[:])), []byte(base64.StdEncoding.EncodeToString(scalar[:]))} {
			if bytes.Contains(hay, needle) {
				t.Fatal("the bundle contains the twin's private scalar")
			}
		}
	}
	parsed, err := backup.ParseBundle(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(parsed.Keys) != 2 || len(parsed.Kept) != 1 || !bytes.Equal(parsed.Kept[0].PublicKey, kept.PublicKey) || len(parsed.Records) != 2 {
		t.Fatalf("bundle: %d keys, %d kept, %d records", len(parsed.Keys), len(parsed.Kept), len(parsed.Records))
	}

	res, err := dst.Import(ctx, backup.ImportRequest{Bundle: file, Source: src.fingerprint()})
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if len(res.Keys) != 2 || res.Records != 2 {
		t.Fatalf("imported %d keys, %d records", len(res.Keys), res.Records)
	}
	for _, info := range res.Keys {
		if !info.Sensitive || info.Extractable {
			t.Fatalf("imported %s: sensitive %v, extractable %v", info.Label, info.Sensitive, info.Extractable)
		}
	}
	r, err := dst.Records.Get(ctx, "wallet", "treasury")
	if err != nil || !strings.Contains(string(r.Body), k.Ref) {
		t.Fatalf("target wallet record: %v", err)
	}
	if _, err := dst.core.Store.PublicKey(ctx, "opencustody-treasury-1"); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("the key made not backup-able reached the target: %v", err)
	}
	if _, err := dst.Import(ctx, backup.ImportRequest{Bundle: file, Source: src.fingerprint()}); !errors.Is(err, backup.ErrReplayed) {
		t.Fatalf("second import: %v, want ErrReplayed", err)
	}

	// The same PSBT, approved once, signs on both sites; the node takes
	// the target's transaction.
	addr, err := k.Address(bitcoin.Simnet)
	if err != nil {
		t.Fatal(err)
	}
	node := btcdtest.Start(t, btcdtest.Options{Network: &chaincfg.SimNetParams, MiningAddr: addr})
	blocks := node.Generate(t, btcdtest.SimnetSegwitHeight)
	cb := node.Block(t, blocks[0]).Transactions[0]
	index := -1
	for j, out := range cb.TxOut {
		if bytes.Equal(out.PkScript, k.PkScript()) {
			index = j
		}
	}
	if index < 0 {
		t.Fatal("the first block does not pay the key")
	}
	dest, err := btcutil.NewAddressWitnessPubKeyHash(btcutil.Hash160(twin.PubKey().SerializeCompressed()), &chaincfg.SimNetParams)
	if err != nil {
		t.Fatal(err)
	}
	h := cb.TxHash()
	p, err := psbt.New([]*wire.OutPoint{wire.NewOutPoint(&h, uint32(index))}, []*wire.TxOut{wire.NewTxOut(cb.TxOut[index].Value-2000, payTo(t, dest))}, 2, 0, []uint32{wire.MaxTxInSequenceNum - 2})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := psbt.NewUpdater(p)
	if err := u.AddInNonWitnessUtxo(cb, 0); err != nil {
		t.Fatal(err)
	}
	if err := u.AddInWitnessUtxo(cb.TxOut[index], 0); err != nil {
		t.Fatal(err)
	}
	wallet, err := bitcoin.NewWallet(bitcoin.WalletConfig{Network: bitcoin.Simnet, Keys: []bitcoin.Key{k}})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := bitcoin.Analyse(p, wallet)
	if err != nil {
		t.Fatal(err)
	}
	approved, err := sum.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	var txs []*wire.MsgTx
	for _, site := range []*testSite{src, dst} {
		s, err := bitcoin.Sign(ctx, site.core.Store, bitcoin.SignRequest{Packet: p, Wallet: wallet, Approved: approved})
		if err != nil {
			t.Fatalf("sign on %s: %v", site.core.Store.Info().Label, err)
		}
		txs = append(txs, s.Tx)
	}
	if txs[0].TxHash() != txs[1].TxHash() {
		t.Fatal("the two sites signed different transactions")
	}
	txid, err := node.Send(txs[1])
	if err != nil {
		t.Fatalf("the node refused the target site's transaction: %v", err)
	}
	node.RequireConfirmed(t, txid)
}

func fieldsText(c backup.Change) string {
	var b strings.Builder
	for _, f := range c.Fields() {
		b.WriteString(f.Label + ": " + f.Value + "\n")
	}
	return b.String()
}

func payTo(t *testing.T, a btcutil.Address) []byte {
	t.Helper()
	s, err := bitcoinPkScript(a)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRefusals: no approval, an unregistered target, an altered bundle, a
// bundle from another source, for another target, for a site never
// enrolled; nothing is stored on a refused import.
func TestRefusals(t *testing.T) {
	ctx := t.Context()
	src, dst, other := newSite(t), newSite(t), newSite(t)
	if _, err := bitcoin.NewKey(ctx, src.core.Store, bitcoin.NewKeyRequest{Label: "opencustody-w-0", Backupable: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Records.Create(ctx, "wallet", "w", []byte(`{"name":"w"}`)); err != nil {
		t.Fatal(err)
	}

	// Registration refused by the quorum stores nothing.
	e, _, err := dst.Enroll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := src.Enroll(ctx); err != nil {
		t.Fatal(err)
	}
	src.appr.err = errors.New("declined on device 3f2a")
	if err := src.Register(ctx, e); !errors.Is(err, backup.ErrNotApproved) {
		t.Fatalf("declined registration: %v", err)
	}
	src.appr.err = nil
	if _, err := src.Export(ctx, backup.ExportRequest{Target: dst.fingerprint(), SOPIN: src.tok.SOPIN}); !errors.Is(err, backup.ErrUnknownTarget) {
		t.Fatalf("export to an unregistered target: %v", err)
	}
	// An enrollment altered on its way is refused.
	file, _ := e.Marshal()
	forged, _ := backup.ParseEnrollment(file)
	other0, _, err := other.Enroll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	forged.BackupKey = other0.BackupKey
	if err := src.Register(ctx, forged); !errors.Is(err, backup.ErrSignature) {
		t.Fatalf("enrollment with a swapped backup key: %v", err)
	}
	if err := src.Register(ctx, e); err != nil {
		t.Fatal(err)
	}
	// Export refused by the quorum.
	src.appr.err = backup.ErrNotApproved
	if _, err := src.Export(ctx, backup.ExportRequest{Target: dst.fingerprint(), SOPIN: src.tok.SOPIN}); !errors.Is(err, backup.ErrNotApproved) {
		t.Fatalf("declined export: %v", err)
	}
	src.appr.err = nil
	noGate := &backup.Site{HSM: src.HSM, Identity: src.Identity, Records: src.Records}
	if _, err := noGate.Export(ctx, backup.ExportRequest{Target: dst.fingerprint(), SOPIN: src.tok.SOPIN}); !errors.Is(err, backup.ErrNotApproved) {
		t.Fatalf("export without an approver: %v", err)
	}

	file = exportFile(t, src, dst)
	imp := func(s *testSite, f []byte, source string) error {
		_, err := s.Import(ctx, backup.ImportRequest{Bundle: f, Source: source})
		return err
	}
	// Altered: every byte of the signed body, one at a time in a sample.
	block, _ := pem.Decode(file)
	for _, i := range []int{40, 60, 100, 200, len(block.Bytes) / 2, len(block.Bytes) - 80} {
		der := bytes.Clone(block.Bytes)
		der[i] ^= 0x40
		altered := pem.EncodeToMemory(&pem.Block{Type: block.Type, Bytes: der})
		err := imp(dst, altered, src.fingerprint())
		if !errors.Is(err, backup.ErrSignature) && !errors.Is(err, backup.ErrFormat) {
			t.Fatalf("bundle altered at byte %d: %v", i, err)
		}
	}
	if err := imp(dst, file, other.fingerprint()); !errors.Is(err, backup.ErrWrongSource) {
		t.Fatalf("bundle from an unexpected source: %v", err)
	}
	if err := imp(other, file, src.fingerprint()); !errors.Is(err, backup.ErrWrongTarget) || !strings.Contains(err.Error(), dst.fingerprint()) {
		t.Fatalf("bundle for another target: %v", err)
	}
	never := newSite(t)
	if err := imp(never, file, src.fingerprint()); !errors.Is(err, backup.ErrWrongTarget) {
		t.Fatalf("bundle replayed to a site never enrolled: %v", err)
	}
	// The target enrolled again (a new backup key): the old bundle is not for it.
	renamed := &backup.Site{HSM: dst.HSM, Identity: dst.Identity, Records: dst.Records, AgreementKey: "opencustody-backup-2"}
	if _, _, err := renamed.Enroll(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := renamed.Import(ctx, backup.ImportRequest{Bundle: file, Source: src.fingerprint()}); !errors.Is(err, backup.ErrWrongTarget) {
		t.Fatalf("bundle for an older backup key: %v", err)
	}
	notEnrolled := &backup.Site{HSM: dst.HSM, Identity: dst.Identity, Records: dst.Records, AgreementKey: "none"}
	if _, err := notEnrolled.Import(ctx, backup.ImportRequest{Bundle: file, Source: src.fingerprint()}); !errors.Is(err, backup.ErrNotEnrolled) {
		t.Fatalf("import without a backup key: %v", err)
	}
	// Nothing was stored by the refusals.
	if _, err := dst.Records.Get(ctx, "wallet", "w"); !errors.Is(err, records.ErrNotFound) {
		t.Fatalf("a refused import stored the wallet: %v", err)
	}
	if _, err := dst.core.Store.PublicKey(ctx, "opencustody-w-0"); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("a refused import stored the key: %v", err)
	}
	if err := imp(dst, file, src.fingerprint()); err != nil {
		t.Fatalf("the genuine bundle after the refusals: %v", err)
	}
}

// TestFormatRoundTrip: what Marshal writes, Parse reads back identically.
func TestFormatRoundTrip(t *testing.T) {
	for _, f := range seeds(t) {
		b, err := backup.ParseBundle(f)
		if err != nil {
			t.Fatal(err)
		}
		again, err := b.Marshal()
		if err != nil || !bytes.Equal(again, f) {
			t.Fatalf("re-marshalled bundle differs (%v)", err)
		}
		if err := b.VerifySignature(); err != nil {
			t.Fatal(err)
		}
	}
}

// seeds are bundle files made with software keys, for the format tests
// and the fuzz target.
func seeds(t testing.TB) [][]byte {
	id := softKey(t)
	tgt := softKey(t)
	b := &backup.Bundle{
		CreatedAt: time.Unix(1_800_000_000, 0).UTC(),
		Source:    backup.HSMKey{Algorithm: id.Algorithm(), Key: id.PublicKey()}, SourceBackupKey: point(t),
		Target: backup.HSMKey{Algorithm: tgt.Algorithm(), Key: tgt.PublicKey()}, TargetBackupKey: point(t),
		TransferKey: bytes.Repeat([]byte{7}, 40),
		Keys:        []backup.Key{{Label: "opencustody-a-0", ID: []byte{1, 2}, PublicKey: compressed(t), Wrapped: bytes.Repeat([]byte{9}, 72)}},
		Kept:        []backup.Key{{Label: "opencustody-a-1", ID: []byte{3}, PublicKey: compressed(t)}},
		Records:     []backup.Record{{Kind: "wallet", Key: "a", Body: []byte(`{"name":"a"}`)}, {Kind: "device", Key: "00", Body: []byte{}}},
	}
	copy(b.ID[:], "0123456789abcdef")
	if err := b.Sign(id); err != nil {
		t.Fatal(err)
	}
	f, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	empty := &backup.Bundle{Source: b.Source, SourceBackupKey: b.SourceBackupKey, Target: b.Target, TargetBackupKey: b.TargetBackupKey, TransferKey: []byte{1}, CreatedAt: b.CreatedAt}
	if err := empty.Sign(id); err != nil {
		t.Fatal(err)
	}
	g, err := empty.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return [][]byte{f, g}
}

// FuzzParseBundle: parsing never panics, returns nil with every error,
// and what it accepts marshals back to a file that parses to the same.
func FuzzParseBundle(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
		block, _ := pem.Decode(s)
		f.Add(block.Bytes)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, in := range [][]byte{data, pem.EncodeToMemory(&pem.Block{Type: backup.BundlePEMType, Bytes: data})} {
			b, err := backup.ParseBundle(in)
			if err != nil {
				if b != nil {
					t.Fatal("ParseBundle returned a bundle with an error")
				}
				continue
			}
			out, err := b.Marshal()
			if err != nil {
				t.Fatalf("Marshal of a parsed bundle: %v", err)
			}
			again, err := backup.ParseBundle(out)
			if err != nil {
				t.Fatalf("re-parse: %v", err)
			}
			out2, _ := again.Marshal()
			if !bytes.Equal(out, out2) {
				t.Fatal("round trip differs")
			}
		}
	})
}

// FuzzParseEnrollment: the same invariants for enrollment files.
func FuzzParseEnrollment(f *testing.F) {
	id := softKey(f)
	e := &backup.Enrollment{Identity: backup.HSMKey{Algorithm: id.Algorithm(), Key: id.PublicKey()}, BackupKey: point(f), Token: "dr-site", CreatedAt: time.Unix(1_800_000_000, 0)}
	if err := e.Sign(id); err != nil {
		f.Fatal(err)
	}
	file, _ := e.Marshal()
	f.Add(file)
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := backup.ParseEnrollment(data)
		if err != nil {
			if e != nil {
				t.Fatal("ParseEnrollment returned an enrollment with an error")
			}
			return
		}
		out, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		again, err := backup.ParseEnrollment(out)
		if err != nil || again.Identity.Fingerprint() != e.Identity.Fingerprint() || !bytes.Equal(again.Signature, e.Signature) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzParseChange: the same invariants for admin change payloads.
func FuzzParseChange(f *testing.F) {
	id := softKey(f)
	e := &backup.Enrollment{Identity: backup.HSMKey{Algorithm: id.Algorithm(), Key: id.PublicKey()}, BackupKey: point(f), Token: "dr-site", CreatedAt: time.Unix(1_800_000_000, 0)}
	if err := e.Sign(id); err != nil {
		f.Fatal(err)
	}
	for _, c := range []backup.Change{{Kind: backup.RegisterTarget, Target: e}, {Kind: backup.ExportToTarget, Target: e, Keys: []string{"a", "b"}, Kept: []string{"c"}}} {
		p, err := c.Canonical()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := backup.ParseChange(data)
		if err != nil {
			return
		}
		out, err := c.Canonical()
		if err != nil {
			t.Fatal(err)
		}
		again, err := backup.ParseChange(out)
		if err != nil {
			t.Fatal(err)
		}
		if out2, _ := again.Canonical(); !bytes.Equal(out, out2) {
			t.Fatal("round trip differs")
		}
	})
}
