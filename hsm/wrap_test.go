package hsm_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/btcsuite/btcd/btcec/v2"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/hsmtest"
	"github.com/opencustodynet/opencustody/hsm/softhsm/softhsmtest"
)

// site is one HSM of a backup test: a store on its own token with a
// backup key-agreement key.
type site struct {
	s      *hsm.PKCS11Store
	tok    *softhsmtest.Token
	backup []byte // the backup key's 65-byte point
}

func newSite(t *testing.T) *site {
	t.Helper()
	s, tok := open(t)
	info := generate(t, s, hsm.BackupKeyLabel, hsm.ECDHP256, false)
	if info.Role != hsm.RoleBackup || info.Extractable || !info.Sensitive || info.PublicKey == nil {
		t.Fatalf("backup key: role %s extractable %v sensitive %v", info.Role, info.Extractable, info.Sensitive)
	}
	return &site{s: s, tok: tok, backup: info.PublicKey.Bytes()}
}

// twin stores on the site's token a backup-able custody key whose scalar
// the test chose, with the attributes GenerateKey gives backup-able keys,
// so the test can look for the scalar in what leaves the HSM.
func (st *site) twin(t *testing.T, label string) *btcec.PrivateKey {
	t.Helper()
	return hsmtest.BackupableKey(t, st.s, st.tok, label, []byte("twin-"+label))
}

func export(t *testing.T, from, to *site, keys ...string) *hsm.WrappedExport {
	t.Helper()
	out, err := from.s.ExportWrapped(t.Context(), hsm.ExportWrappedRequest{
		AgreementKey: hsm.BackupKeyLabel, PeerPublicKey: to.backup, Keys: keys, SOPIN: from.tok.SOPIN,
	})
	if err != nil {
		t.Fatalf("ExportWrapped: %v", err)
	}
	return out
}

func importInto(to, from *site, w *hsm.WrappedExport) ([]hsm.KeyInfo, error) {
	return to.s.ImportWrapped(context.Background(), hsm.ImportWrappedRequest{
		AgreementKey: hsm.BackupKeyLabel, PeerPublicKey: from.backup, TransferKey: w.TransferKey, Keys: w.Keys,
	})
}

// TestBackupKeyAgreesOnly: the backup key-agreement key signs nothing.
func TestBackupKeyAgreesOnly(t *testing.T) {
	st := newSite(t)
	if _, err := st.s.Sign(t.Context(), hsm.SignRequest{Key: hsm.BackupKeyLabel, Digest: digest("x")}); err == nil || !strings.Contains(err.Error(), "signs nothing") {
		t.Fatalf("Sign with the backup key: %v", err)
	}
	if _, err := hsm.NewIdentitySigner(t.Context(), st.s, hsm.BackupKeyLabel); err == nil {
		t.Fatal("the backup key became an identity signer")
	}
}

// TestWrapRoundTrip moves a generated backup-able key and a twin with a
// known scalar from one token to another: the target signs for the same
// public keys with sensitive, never-extractable keys, and nothing that
// left the source contains a scalar.
func TestWrapRoundTrip(t *testing.T) {
	src, dst := newSite(t), newSite(t)
	gen := generate(t, src.s, "custody-0", hsm.ECDSASecp256k1, true)
	twin := src.twin(t, "custody-twin")
	keep := generate(t, src.s, "custody-kept", hsm.ECDSASecp256k1, false)

	w := export(t, src, dst, "custody-0", "custody-twin")
	if len(w.Keys) != 2 {
		t.Fatalf("%d keys wrapped", len(w.Keys))
	}
	scalar := twin.Key.Bytes()
	for _, blob := range append([][]byte{w.TransferKey}, w.Keys[0].Wrapped, w.Keys[1].Wrapped) {
		if bytes.Contains(blob, scalar[:]) || bytes.Contains(blob, scalar[1:]) || bytes.Contains(blob, scalar[:31]) {
			t.Fatal("the twin's private scalar is in what left the HSM")
		}
	}
	// The source store works again after the Security Officer's step.
	if _, err := src.s.Sign(t.Context(), hsm.SignRequest{Key: "custody-kept", Digest: digest("after")}); err != nil {
		t.Fatalf("source after export: %v", err)
	}
	if _, err := src.s.ExportWrapped(t.Context(), hsm.ExportWrappedRequest{AgreementKey: hsm.BackupKeyLabel, PeerPublicKey: dst.backup, Keys: []string{"custody-kept"}, SOPIN: src.tok.SOPIN}); err == nil || !strings.Contains(err.Error(), "not backup-able") {
		t.Fatalf("export of a key made not backup-able: %v", err)
	}
	_ = keep

	infos, err := importInto(dst, src, w)
	if err != nil {
		t.Fatalf("ImportWrapped: %v", err)
	}
	for _, in := range infos {
		if !in.Sensitive || in.Extractable || in.Backupable || in.Role != hsm.RoleCustody {
			t.Errorf("imported %s: sensitive %v extractable %v role %s", in.Label, in.Sensitive, in.Extractable, in.Role)
		}
	}
	for label, pub := range map[string]*btcec.PublicKey{"custody-0": gen.PublicKey.Key.(*btcec.PublicKey), "custody-twin": twin.PubKey()} {
		p, err := dst.s.PublicKey(t.Context(), label)
		if err != nil {
			t.Fatal(err)
		}
		if !p.Key.(*btcec.PublicKey).IsEqual(pub) {
			t.Fatalf("%s: the target's public key differs", label)
		}
		d := digest("pay " + label)
		sig, err := dst.s.Sign(t.Context(), hsm.SignRequest{Key: label, Digest: d})
		if err != nil {
			t.Fatal(err)
		}
		verify(t, p, d, sig)
	}
	if _, err := importInto(dst, src, w); !errors.Is(err, hsm.ErrKeyExists) {
		t.Fatalf("second import: %v, want ErrKeyExists", err)
	}
}

// TestWrapRefusals: wrong Security Officer PIN, another target, altered
// blobs. Nothing is left on the target after a refused import.
func TestWrapRefusals(t *testing.T) {
	src, dst, other := newSite(t), newSite(t), newSite(t)
	generate(t, src.s, "custody-0", hsm.ECDSASecp256k1, true)

	_, err := src.s.ExportWrapped(t.Context(), hsm.ExportWrappedRequest{AgreementKey: hsm.BackupKeyLabel, PeerPublicKey: dst.backup, Keys: []string{"custody-0"}, SOPIN: "wrong-pin"})
	if !errors.Is(err, hsm.ErrPINIncorrect) {
		t.Fatalf("wrong SO PIN: %v", err)
	}
	if _, err := src.s.Sign(t.Context(), hsm.SignRequest{Key: "custody-0", Digest: digest("x")}); err != nil {
		t.Fatalf("source after a refused SO login: %v", err)
	}
	w := export(t, src, dst, "custody-0")

	if _, err := importInto(other, src, w); !errors.Is(err, hsm.ErrUnwrap) {
		t.Fatalf("import into another HSM: %v, want ErrUnwrap", err)
	}
	altered := *w
	altered.Keys = []hsm.WrappedKey{w.Keys[0]}
	altered.Keys[0].Wrapped = bytes.Clone(w.Keys[0].Wrapped)
	altered.Keys[0].Wrapped[10] ^= 1
	if _, err := importInto(dst, src, &altered); !errors.Is(err, hsm.ErrUnwrap) {
		t.Fatalf("altered key: %v, want ErrUnwrap", err)
	}
	altered = *w
	altered.TransferKey = bytes.Clone(w.TransferKey)
	altered.TransferKey[0] ^= 1
	if _, err := importInto(dst, src, &altered); !errors.Is(err, hsm.ErrUnwrap) {
		t.Fatalf("altered transfer key: %v, want ErrUnwrap", err)
	}
	// A public key that is not the wrapped key's is caught by the HSM's
	// own signature, and the import leaves nothing behind.
	altered = *w
	altered.Keys = []hsm.WrappedKey{w.Keys[0]}
	other2, _ := btcec.NewPrivateKey()
	altered.Keys[0].PublicKey = other2.PubKey().SerializeCompressed()
	if _, err := importInto(dst, src, &altered); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched public key: %v", err)
	}
	keys, err := dst.s.ListKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.Label == "custody-0" {
			t.Fatal("a refused import left a key behind")
		}
	}
	if _, err := importInto(dst, src, w); err != nil {
		t.Fatalf("the genuine import after refusals: %v", err)
	}
}
