package backup

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// Errors callers branch on; each is wrapped by an error that names the
// bundle, the HSMs and the keys involved.
var (
	// ErrNotApproved: the admin quorum has not approved the change.
	ErrNotApproved = errors.New("backup: not approved by the admin quorum")
	// ErrUnknownTarget: no registered backup target has that fingerprint.
	ErrUnknownTarget = errors.New("backup: not a registered backup target")
	// ErrNotEnrolled: this HSM has no backup key, so no bundle can be for it.
	ErrNotEnrolled = errors.New("backup: this HSM was never enrolled as a backup target")
	// ErrWrongTarget: the bundle was made for another HSM, or for another
	// backup key of this one.
	ErrWrongTarget = errors.New("backup: the bundle was made for another target")
	// ErrWrongSource: the bundle was signed by another HSM than the one
	// the operator named.
	ErrWrongSource = errors.New("backup: the bundle is not from the expected source")
	// ErrReplayed: this bundle was imported here before.
	ErrReplayed = errors.New("backup: the bundle was already imported")
	// ErrConflict: the target already holds a record or key the bundle
	// carries.
	ErrConflict = errors.New("backup: the target already has it")
)

// Record kinds the backup keeps of its own.
const (
	// TargetKind: a registered backup target (source side), keyed by the
	// target's identity fingerprint in hex; the body is the enrollment file.
	TargetKind = "backup-target"
	// ImportKind: an imported bundle (target side), keyed by the bundle ID
	// in hex.
	ImportKind = "backup-import"
)

// DefaultKinds are the record kinds a bundle carries: wallets (each with
// its policy and its policy history) and pairings. Requests, admin
// changes, the governance record (the target sets its own admin quorum at
// its key ceremony) and the audit log stay.
var DefaultKinds = []string{"wallet", "device"}

// ChangeKind is the kind of a backup change the admin quorum approves.
type ChangeKind uint8

const (
	// RegisterTarget: accept an enrolled HSM as a backup target. The
	// devices show the target's identity and backup key fingerprints.
	RegisterTarget ChangeKind = iota + 1
	// ExportToTarget: wrap the backup-able custody keys for a registered
	// target. The devices show the target and how many keys go.
	ExportToTarget
)

func (k ChangeKind) String() string {
	switch k {
	case RegisterTarget:
		return "register backup target"
	case ExportToTarget:
		return "export backup to target"
	}
	return fmt.Sprintf("change kind %d", uint8(k))
}

// Change is what an [Approver] is asked to have approved.
type Change struct {
	Kind   ChangeKind
	Target *Enrollment
	// Keys are the labels of the custody keys an export carries; Kept
	// those that stay (created not backup-able).
	Keys, Kept []string
}

// Fields are the lines an admin's device shows for c: built from the
// verified enrollment and the key list, nothing an operator typed.
func (c Change) Fields() []signed.Field {
	f := []signed.Field{{Label: "Action", Value: c.Kind.String()}}
	if c.Target != nil {
		f = append(f, signed.Field{Label: "Target HSM", Value: c.Target.Identity.Fingerprint()},
			signed.Field{Label: "Backup key", Value: BackupKeyFingerprint(c.Target.BackupKey)})
		if c.Target.Token != "" {
			f = append(f, signed.Field{Label: "Token", Value: c.Target.Token})
		}
	}
	if c.Kind == ExportToTarget {
		f = append(f, signed.Field{Label: "Keys leaving", Value: fmt.Sprint(len(c.Keys))}, signed.Field{Label: "Keys kept", Value: fmt.Sprint(len(c.Kept))})
	}
	return f
}

// changeDomain starts [Change.Canonical].
const changeDomain = "OpenCustody backup change v1\x00"

// Canonical is the change's canonical encoding: the payload of the admin
// change that approves it, so that an approval binds the exact target
// (its signed enrollment) and key lists, not only what fits on a screen:
//
//	"OpenCustody backup change v1\x00" || kind uint8 ||
//	uint16-prefixed enrollment file ||
//	uint16 n || n × uint16-prefixed label (keys leaving) ||
//	uint16 n || n × uint16-prefixed label (keys kept)
//
// [ParseChange] reads it back.
func (c Change) Canonical() ([]byte, error) {
	if c.Target == nil {
		return nil, errors.New("backup: change without a target")
	}
	if len(c.Keys) > 0xffff || len(c.Kept) > 0xffff {
		return nil, errors.New("backup: change lists too many keys")
	}
	enr, err := c.Target.Marshal()
	if err != nil {
		return nil, err
	}
	var b cryptobyte.Builder
	b.AddBytes([]byte(changeDomain))
	b.AddUint8(uint8(c.Kind))
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(enr) })
	for _, list := range [][]string{c.Keys, c.Kept} {
		b.AddUint16(uint16(len(list)))
		for _, l := range list {
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(l)) })
		}
	}
	return b.Bytes()
}

// ParseChange reads [Change.Canonical]. It checks the structure, not the
// enrollment's signature: see [Site.DescribeChange].
func ParseChange(payload []byte) (Change, error) {
	s := cryptobyte.String(payload)
	var kind uint8
	var enr []byte
	if !readDomain(&s, changeDomain) || !s.ReadUint8(&kind) || !readBytes16(&s, &enr) {
		return Change{}, fmt.Errorf("%w: backup change", ErrFormat)
	}
	c := Change{Kind: ChangeKind(kind)}
	if c.Kind != RegisterTarget && c.Kind != ExportToTarget {
		return Change{}, fmt.Errorf("%w: backup change kind %d", ErrFormat, kind)
	}
	var err error
	if c.Target, err = ParseEnrollment(enr); err != nil {
		return Change{}, err
	}
	for _, list := range []*[]string{&c.Keys, &c.Kept} {
		var n uint16
		if !s.ReadUint16(&n) {
			return Change{}, fmt.Errorf("%w: backup change key list", ErrFormat)
		}
		for range n {
			var l []byte
			if !readBytes16(&s, &l) {
				return Change{}, fmt.Errorf("%w: backup change key list", ErrFormat)
			}
			*list = append(*list, string(l))
		}
	}
	if !s.Empty() {
		return Change{}, fmt.Errorf("%w: data after the backup change", ErrFormat)
	}
	return c, nil
}

// Kinds of admin change, as the admin-change mechanism names them; the
// subject of each is the target's identity fingerprint and the payload
// [Change.Canonical].
const (
	AdminChangeRegister = "backup-register"
	AdminChangeExport   = "backup-export"
)

// DescribeChange checks a proposed backup change against this site and
// returns the fields the admins' devices show for it: the payload must be
// a [Change.Canonical] of kind, whose enrollment verifies and names
// subject; an export must be to a registered target with that same
// enrollment, and list exactly the keys an export would carry and keep
// now. It is what the admin-change mechanism's handler for the two kinds
// calls, and what an [Approver] checks an approved change against.
func (s *Site) DescribeChange(ctx context.Context, kind ChangeKind, subject string, payload []byte) ([]signed.Field, error) {
	c, err := ParseChange(payload)
	if err != nil {
		return nil, err
	}
	if c.Kind != kind {
		return nil, fmt.Errorf("backup: the change is a %s, not a %s", c.Kind, kind)
	}
	if err := c.Target.Verify(); err != nil {
		return nil, err
	}
	want, err := ParseFingerprint(subject)
	if err != nil {
		return nil, err
	}
	if fingerprintHex(c.Target.Identity) != want {
		return nil, fmt.Errorf("backup: the change's subject %s is not its target %s", subject, c.Target.Identity.Fingerprint())
	}
	if kind == ExportToTarget {
		r, err := s.Records.Get(ctx, TargetKind, want)
		if errors.Is(err, records.ErrNotFound) {
			return nil, fmt.Errorf("%w: %s", ErrUnknownTarget, subject)
		}
		if err != nil {
			return nil, err
		}
		reg, err := s.target(r)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(reg.BackupKey, c.Target.BackupKey) || !reg.Identity.equal(c.Target.Identity) {
			return nil, fmt.Errorf("backup: the change's target is not the registered %s", subject)
		}
		plan, err := s.Plan(ctx)
		if err != nil {
			return nil, err
		}
		if !slices.Equal(labels(plan.Carried), c.Keys) || !slices.Equal(labels(plan.Kept), c.Kept) {
			return nil, errors.New("backup: the change's key lists are not the keys an export carries and keeps now")
		}
	}
	return c.Fields(), nil
}

// Approver gates the backup changes behind the admin quorum.
//
// Approve must return nil only when the wallet admins' quorum has approved
// exactly c on their own paired devices (prompts showing [Change.Fields],
// with [Change.Canonical] as their payload), and otherwise an error wrapping
// [ErrNotApproved] (declined, expired, not enough admins). It may block
// while the admins decide; ctx bounds the wait.
type Approver interface {
	Approve(ctx context.Context, c Change) error
}

// HSM is what a site's backup needs of its HSM; [*hsm.PKCS11Store] is one.
type HSM interface {
	hsm.KeyManager
	PublicKey(ctx context.Context, key string) (*hsm.PublicKey, error)
	ExportWrapped(ctx context.Context, req hsm.ExportWrappedRequest) (*hsm.WrappedExport, error)
	ImportWrapped(ctx context.Context, req hsm.ImportWrappedRequest) ([]hsm.KeyInfo, error)
}

// Site is one HSM with its records, as a backup source or target.
type Site struct {
	HSM HSM
	// Identity is the site's HSM identity key.
	Identity signed.Signer
	// Records are the site's authenticated records.
	Records *records.Store
	// Approver gates registering targets and exporting; without one both
	// are refused.
	Approver Approver
	// AgreementKey is the backup key-agreement key's label;
	// hsm.BackupKeyLabel if empty.
	AgreementKey string
	// Kinds are the record kinds a bundle carries; DefaultKinds if nil.
	Kinds []string
	// Now and Rand default to time.Now and crypto/rand.
	Now  func() time.Time
	Rand io.Reader
}

func (s *Site) agreementKey() string {
	if s.AgreementKey != "" {
		return s.AgreementKey
	}
	return hsm.BackupKeyLabel
}

func (s *Site) kinds() []string {
	if s.Kinds != nil {
		return s.Kinds
	}
	return DefaultKinds
}

func (s *Site) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Site) identity() HSMKey {
	return HSMKey{Algorithm: s.Identity.Algorithm(), Key: s.Identity.PublicKey()}
}

// backupKey returns the site's backup key point, or an error wrapping
// [ErrNotEnrolled].
func (s *Site) backupKey(ctx context.Context) ([]byte, error) {
	pub, err := s.HSM.PublicKey(ctx, s.agreementKey())
	if errors.Is(err, hsm.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w (no key %q on the HSM): run 'opencustody backup enroll' first", ErrNotEnrolled, s.agreementKey())
	}
	if err != nil {
		return nil, err
	}
	if pub.Algorithm != hsm.ECDHP256 {
		return nil, fmt.Errorf("backup: key %q is a %s key, not a backup key-agreement key (%s)", s.agreementKey(), pub.Algorithm, hsm.ECDHP256)
	}
	return pub.Bytes(), nil
}

// Enroll makes the site's backup key-agreement key in the HSM unless it
// has one, and returns the enrollment to hand to the source site, signed
// by the HSM identity key. created says whether the key is new.
func (s *Site) Enroll(ctx context.Context) (e *Enrollment, created bool, err error) {
	point, created, err := s.ensureBackupKey(ctx)
	if err != nil {
		return nil, false, err
	}
	e = &Enrollment{Identity: s.identity(), BackupKey: point, CreatedAt: s.now().UTC().Truncate(time.Second)}
	if t, ok := s.HSM.(interface{ Info() hsm.TokenInfo }); ok {
		e.Token = t.Info().Label
	}
	if err := e.Sign(s.Identity); err != nil {
		return nil, false, err
	}
	return e, created, nil
}

// ensureBackupKey returns the site's backup key point, made in the HSM
// first if there is none.
func (s *Site) ensureBackupKey(ctx context.Context) (point []byte, created bool, err error) {
	point, err = s.backupKey(ctx)
	if errors.Is(err, ErrNotEnrolled) {
		info, gerr := s.HSM.GenerateKey(ctx, hsm.GenerateKeyRequest{Label: s.agreementKey(), Algorithm: hsm.ECDHP256})
		if gerr != nil {
			return nil, false, gerr
		}
		return info.PublicKey.Bytes(), true, nil
	}
	return point, false, err
}

// ParseFingerprint normalises a fingerprint as people type it (groups of
// hex digits, any case) to 32 lowercase hex digits.
func ParseFingerprint(s string) (string, error) {
	h := strings.ToLower(strings.Join(strings.Fields(s), ""))
	if b, err := hex.DecodeString(h); err != nil || len(b) != signed.FingerprintSize {
		return "", fmt.Errorf("backup: %q is not a fingerprint (%d hex digits, as 'opencustody hsm init' prints it)", s, 2*signed.FingerprintSize)
	}
	return h, nil
}

func fingerprintHex(k HSMKey) string {
	f := signed.FingerprintBytes(k.Algorithm, k.Key)
	return hex.EncodeToString(f[:])
}

func (s *Site) approve(ctx context.Context, c Change) error {
	if s.Approver == nil {
		return fmt.Errorf("%w: no admin-quorum approver is configured for %s", ErrNotApproved, c.Kind)
	}
	if err := s.Approver.Approve(ctx, c); err != nil {
		if !errors.Is(err, ErrNotApproved) {
			return fmt.Errorf("%w: %s: %w", ErrNotApproved, c.Kind, err)
		}
		return err
	}
	return nil
}

// Register makes the enrolled HSM a backup target of this site once the
// admin quorum approved it. The enrollment's signature must verify; the
// people approving compare its fingerprints with the target site's. This
// site's own backup key is made in the HSM too, if it has none: exports
// agree their wrapping key with it.
func (s *Site) Register(ctx context.Context, e *Enrollment) error {
	if err := e.Verify(); err != nil {
		return err
	}
	if e.Identity.equal(s.identity()) {
		return errors.New("backup: the enrollment is this HSM's own: enroll the other site's HSM")
	}
	if err := s.approve(ctx, Change{Kind: RegisterTarget, Target: e}); err != nil {
		return err
	}
	if _, _, err := s.ensureBackupKey(ctx); err != nil {
		return err
	}
	body, err := e.Marshal()
	if err != nil {
		return err
	}
	key := fingerprintHex(e.Identity)
	old, err := s.Records.Get(ctx, TargetKind, key)
	switch {
	case errors.Is(err, records.ErrNotFound):
		_, err = s.Records.Create(ctx, TargetKind, key, body)
	case err == nil:
		_, err = s.Records.Update(ctx, TargetKind, key, old.Version, body)
	}
	if err != nil {
		return fmt.Errorf("backup: store target %s: %w", e.Identity.Fingerprint(), err)
	}
	return nil
}

// Targets lists the registered backup targets.
func (s *Site) Targets(ctx context.Context) ([]*Enrollment, error) {
	rs, err := s.Records.List(ctx, TargetKind)
	if err != nil {
		return nil, err
	}
	var out []*Enrollment
	for _, r := range rs {
		e, err := s.target(r)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

func (s *Site) target(r records.Record) (*Enrollment, error) {
	e, err := ParseEnrollment(r.Body)
	if err != nil {
		return nil, fmt.Errorf("backup: target record %s: %w", r.Key, err)
	}
	if err := e.Verify(); err != nil {
		return nil, fmt.Errorf("backup: target record %s: %w", r.Key, err)
	}
	if fingerprintHex(e.Identity) != r.Key {
		return nil, fmt.Errorf("backup: target record %s holds the enrollment of %s", r.Key, e.Identity.Fingerprint())
	}
	return e, nil
}

// Plan is what an export carries: the backup-able custody keys, and those
// created not backup-able, which stay.
type Plan struct {
	Carried, Kept []hsm.KeyInfo
}

// Plan lists the custody keys an export would carry and keep.
func (s *Site) Plan(ctx context.Context) (*Plan, error) {
	keys, err := s.HSM.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	p := &Plan{}
	for _, k := range keys {
		if k.Role != hsm.RoleCustody || k.PublicKey == nil {
			continue
		}
		if k.Backupable {
			p.Carried = append(p.Carried, k)
		} else {
			p.Kept = append(p.Kept, k)
		}
	}
	return p, nil
}

func labels(ks []hsm.KeyInfo) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.Label
	}
	return out
}

// ExportRequest asks for a bundle for a registered target.
type ExportRequest struct {
	// Target is the target's identity fingerprint.
	Target string
	// SOPIN is the source token's Security Officer PIN (see
	// [hsm.PKCS11Store.ExportWrapped]).
	SOPIN string
}

// Export makes a bundle for a registered target once the admin quorum
// approved it: every backup-able custody key wrapped for the target's
// backup key inside the HSM, the others listed as kept, and the records of
// [Site.Kinds], all signed by the HSM identity key.
func (s *Site) Export(ctx context.Context, req ExportRequest) (*Bundle, error) {
	fp, err := ParseFingerprint(req.Target)
	if err != nil {
		return nil, err
	}
	r, err := s.Records.Get(ctx, TargetKind, fp)
	if errors.Is(err, records.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s: register its enrollment first ('opencustody backup register')", ErrUnknownTarget, req.Target)
	}
	if err != nil {
		return nil, err
	}
	target, err := s.target(r)
	if err != nil {
		return nil, err
	}
	own, err := s.backupKey(ctx)
	if err != nil {
		return nil, err
	}
	plan, err := s.Plan(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.approve(ctx, Change{Kind: ExportToTarget, Target: target, Keys: labels(plan.Carried), Kept: labels(plan.Kept)}); err != nil {
		return nil, err
	}
	b := &Bundle{
		CreatedAt: s.now().UTC().Truncate(time.Second),
		Source:    s.identity(), SourceBackupKey: own,
		Target: target.Identity, TargetBackupKey: target.BackupKey,
	}
	rnd := s.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	if _, err := io.ReadFull(rnd, b.ID[:]); err != nil {
		return nil, err
	}
	refs := make([]string, len(plan.Carried))
	for i, k := range plan.Carried {
		refs[i] = k.URI
	}
	w, err := s.HSM.ExportWrapped(ctx, hsm.ExportWrappedRequest{AgreementKey: s.agreementKey(), PeerPublicKey: target.BackupKey, Keys: refs, SOPIN: req.SOPIN})
	if err != nil {
		return nil, err
	}
	b.TransferKey = w.TransferKey
	for _, k := range w.Keys {
		b.Keys = append(b.Keys, Key{Label: k.Label, ID: k.ID, PublicKey: k.PublicKey, Wrapped: k.Wrapped})
	}
	for _, k := range plan.Kept {
		b.Kept = append(b.Kept, Key{Label: k.Label, ID: k.ID, PublicKey: k.PublicKey.Bytes()})
	}
	for _, kind := range s.kinds() {
		rs, err := s.Records.List(ctx, kind)
		if err != nil {
			return nil, err
		}
		for _, r := range rs {
			b.Records = append(b.Records, Record{Kind: r.Kind, Key: r.Key, Body: r.Body})
		}
	}
	if err := b.Sign(s.Identity); err != nil {
		return nil, err
	}
	return b, nil
}

// ImportRequest asks to import a bundle.
type ImportRequest struct {
	// Bundle is the bundle file.
	Bundle []byte
	// Source is the fingerprint of the HSM that must have signed it, as
	// the source site gave it.
	Source string
}

// ImportResult says what an import stored.
type ImportResult struct {
	Bundle  *Bundle
	Keys    []hsm.KeyInfo
	Records int
}

// importMark is the body of an [ImportKind] record.
type importMark struct {
	Source     string    `json:"source"`
	CreatedAt  time.Time `json:"created_at"`
	ImportedAt time.Time `json:"imported_at"`
	Keys       []string  `json:"keys"`
}

// Import checks that the bundle is signed by the expected source, that it
// was made for this HSM's identity and enrolled backup key, and that it
// was not imported before; then it unwraps the keys inside the HSM as
// sensitive, never-extractable keys and stores the records under this
// site's record key. Nothing is stored if a check fails.
func (s *Site) Import(ctx context.Context, req ImportRequest) (*ImportResult, error) {
	want, err := ParseFingerprint(req.Source)
	if err != nil {
		return nil, err
	}
	b, err := ParseBundle(req.Bundle)
	if err != nil {
		return nil, err
	}
	if err := b.VerifySignature(); err != nil {
		return nil, err
	}
	if got := fingerprintHex(b.Source); got != want {
		return nil, fmt.Errorf("%w: it was signed by HSM %s, not by %s", ErrWrongSource, b.Source.Fingerprint(), req.Source)
	}
	me := s.identity()
	if b.Source.equal(me) {
		return nil, fmt.Errorf("%w: it was made by this HSM", ErrWrongTarget)
	}
	if !b.Target.equal(me) {
		return nil, fmt.Errorf("%w: it was made for HSM %s; this HSM is %s", ErrWrongTarget, b.Target.Fingerprint(), me.Fingerprint())
	}
	own, err := s.backupKey(ctx)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(own, b.TargetBackupKey) {
		return nil, fmt.Errorf("%w: it was made for backup key %s of this HSM, which now has %s (enrolled again since?)", ErrWrongTarget, BackupKeyFingerprint(b.TargetBackupKey), BackupKeyFingerprint(own))
	}
	id := hex.EncodeToString(b.ID[:])
	if _, err := s.Records.Get(ctx, ImportKind, id); err == nil {
		return nil, fmt.Errorf("%w: bundle %s", ErrReplayed, id)
	} else if !errors.Is(err, records.ErrNotFound) {
		return nil, err
	}
	for _, r := range b.Records {
		if !slices.Contains(s.kinds(), r.Kind) {
			return nil, fmt.Errorf("backup: bundle %s carries a %s record (%s), which backups do not carry", id, r.Kind, r.Key)
		}
		if _, err := s.Records.Get(ctx, r.Kind, r.Key); err == nil {
			return nil, fmt.Errorf("%w: %s %s is already here", ErrConflict, r.Kind, r.Key)
		} else if !errors.Is(err, records.ErrNotFound) {
			return nil, err
		}
	}
	wks := make([]hsm.WrappedKey, len(b.Keys))
	for i, k := range b.Keys {
		wks[i] = hsm.WrappedKey{Label: k.Label, ID: k.ID, PublicKey: k.PublicKey, Wrapped: k.Wrapped}
	}
	infos, err := s.HSM.ImportWrapped(ctx, hsm.ImportWrappedRequest{AgreementKey: s.agreementKey(), PeerPublicKey: b.SourceBackupKey, TransferKey: b.TransferKey, Keys: wks})
	if errors.Is(err, hsm.ErrKeyExists) {
		return nil, fmt.Errorf("%w: %w", ErrConflict, err)
	}
	if err != nil {
		return nil, err
	}
	res := &ImportResult{Bundle: b, Keys: infos}
	for _, r := range b.Records {
		if _, err := s.Records.Create(ctx, r.Kind, r.Key, r.Body); err != nil {
			return res, fmt.Errorf("backup: store %s %s: %w (the keys are imported; %d of %d records are)", r.Kind, r.Key, err, res.Records, len(b.Records))
		}
		res.Records++
	}
	mark, err := json.Marshal(importMark{Source: b.Source.Fingerprint(), CreatedAt: b.CreatedAt, ImportedAt: s.now().UTC().Truncate(time.Second), Keys: labels(infos)})
	if err != nil {
		return res, err
	}
	if _, err := s.Records.Create(ctx, ImportKind, id, mark); err != nil {
		return res, fmt.Errorf("backup: record the import of bundle %s: %w", id, err)
	}
	return res, nil
}
