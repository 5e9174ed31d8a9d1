package core

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/opencustodynet/opencustody/protocol/signed"
)

// ChangeKind names a kind of admin change: what it changes and which
// [ChangeHandler] checks, shows and applies it.
type ChangeKind string

// ChangePolicy replaces a wallet's policy: its subject is the wallet's
// name, its payload the new policy document (see [PolicyChange]).
const ChangePolicy ChangeKind = "policy"

// ChangePairing pairs a device outside ceremony mode: its subject is the
// device's id, its payload the [DeviceRecord] to store (JSON). The
// admins' screens show the device's fingerprint, to compare with the new
// device's own screen.
const ChangePairing ChangeKind = "pairing"

// ChangeState is the lifecycle of an admin change.
type ChangeState string

const (
	// ChangePending waits for the admins.
	ChangePending ChangeState = "pending"
	// ChangeApproved met the admin quorum. A change whose handler is a
	// [ChangeApplier] is applied at once and stays approved only if a
	// crash interrupted that ([Core.Tick] finishes it); any other change
	// stays approved until the daemon carries it out and reports with
	// [Core.CompleteChange].
	ChangeApproved ChangeState = "approved"
	// ChangeApplied is carried out; Result says what it did.
	ChangeApplied ChangeState = "applied"
	// ChangeRejected was rejected by an admin: one rejection stops it.
	ChangeRejected ChangeState = "rejected"
	// ChangeExpired was not approved in time.
	ChangeExpired ChangeState = "expired"
	// ChangeFailed was approved but could not be carried out; Error says
	// why.
	ChangeFailed ChangeState = "failed"
)

// Closed reports whether the change will not change any more.
func (s ChangeState) Closed() bool { return s != ChangePending && s != ChangeApproved }

// ChangeRecord is what the core stores about a proposed admin change.
type ChangeRecord struct {
	ID   string     `json:"id"`
	Kind ChangeKind `json:"kind"`
	// Subject is what the change is about, as its handler reads it: a
	// wallet's name, a backup target's id.
	Subject string `json:"subject"`
	// Payload is the change itself, in its handler's encoding; Digest is
	// SHA-256 of the change statement ([ChangeStatement]), the payload of
	// every admin prompt: an approval binds to these exact bytes.
	Payload []byte `json:"payload"`
	Digest  []byte `json:"digest"`
	// Fields are what the admins' devices show between the fixed fields,
	// as the handler built them (a readable diff).
	Fields []signed.Field `json:"fields"`
	// Initiator is the user who proposed the change; they may not approve
	// it.
	Initiator string `json:"initiator"`
	// Admins are the users with a paired admin device when the change was
	// proposed, except the initiator; Quorum of them must approve (the
	// governance record's admin quorum then).
	Admins     []string       `json:"admins"`
	Quorum     int            `json:"quorum"`
	State      ChangeState    `json:"state"`
	CreatedAt  time.Time      `json:"created_at"`
	ExpiresAt  time.Time      `json:"expires_at"`
	FinishedAt time.Time      `json:"finished_at,omitzero"`
	Prompts    []PromptRecord `json:"prompts"`
	Answers    []AnswerRecord `json:"answers"`
	// Result says what applying the change did; Error why it failed.
	Result string `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`
	// Version is the storage version the record was read at.
	Version uint64 `json:"-"`
}

// ApprovedBy lists the admins who approved, in order.
func (ch *ChangeRecord) ApprovedBy() []string { return usersWith(ch.Answers, signed.Approve) }

// RejectedBy lists the admins who rejected.
func (ch *ChangeRecord) RejectedBy() []string { return usersWith(ch.Answers, signed.Reject) }

func (ch *ChangeRecord) effective(now time.Time) *ChangeRecord {
	if ch.State == ChangePending && now.After(ch.ExpiresAt) {
		ch.State, ch.FinishedAt = ChangeExpired, ch.ExpiresAt
	}
	return ch
}

// GovernanceRecord is how the HSM's admins govern it: how many of them
// must approve an admin change. It is set at the key ceremony
// ([Core.SetAdminQuorum], ceremony mode only) and stored authenticated
// like every other record. The admins themselves are the users with a
// paired, unrevoked device of role admin.
type GovernanceRecord struct {
	AdminQuorum int       `json:"admin_quorum"`
	SetAt       time.Time `json:"set_at"`
	// Version is the storage version the record was read at; zero for a
	// record not stored yet.
	Version uint64 `json:"-"`
}

// Errors of admin changes.
var (
	// ErrChangeNotFound is returned by a [ChangeStore] for an unknown id.
	ErrChangeNotFound = errors.New("core: change not found")
	// ErrNoGovernance: no admin quorum was set at the key ceremony, or
	// no [ChangeStore] is configured.
	ErrNoGovernance = errors.New("core: no admin quorum is set (set it at the key ceremony: hsmd --ceremony --admin-quorum N)")
	// ErrChangeRefused: the proposed change is not acceptable (unknown
	// kind, bad payload, or it cannot be shown on a device).
	ErrChangeRefused = errors.New("core: change refused")
	// ErrNotAdmin: an answer to an admin prompt came from a device whose
	// role is no longer admin.
	ErrNotAdmin = errors.New("core: device is not an admin's")
)

// ChangeStore keeps admin change records and the governance record.
// Implementations authenticate every record with the HSM record key, as
// [DeviceStore] does. GetChange returns an error wrapping
// [ErrChangeNotFound] for an unknown id; GetGovernance one wrapping
// [ErrNoGovernance] when none is stored. PutGovernance creates the record
// when g.Version is zero and otherwise replaces the one read at g.Version.
type ChangeStore interface {
	GetChange(ctx context.Context, id string) (*ChangeRecord, error)
	ListChanges(ctx context.Context) ([]*ChangeRecord, error)
	CreateChange(ctx context.Context, ch *ChangeRecord) error
	UpdateChange(ctx context.Context, ch *ChangeRecord) error
	GetGovernance(ctx context.Context) (*GovernanceRecord, error)
	PutGovernance(ctx context.Context, g *GovernanceRecord) error
}

// A ChangeHandler is the trusted code behind one [ChangeKind]. It is part
// of the core: it reads only the change's subject and payload and the
// core's own records, never text a proposer wrote for the screen.
//
// Describe checks a proposed change and returns the fields the admins'
// devices show for it (between the core's fixed fields: change id, kind,
// subject first; initiator and expiry last), at most [MaxChangeFields],
// each within the prompt limits of package signed. It is called once,
// when the change is proposed; an error (which [Core.ProposeChange]
// wraps in [ErrChangeRefused]) refuses the change.
//
// A handler that also implements [ChangeApplier] is applied by the core
// once the admin quorum approved. Any other handler's changes are carried
// out by the daemon: it sees them approved (in [AnswerResult.Change] and
// [Core.Changes]), acts, and reports with [Core.CompleteChange].
type ChangeHandler interface {
	Describe(ctx context.Context, subject string, payload []byte) ([]signed.Field, error)
}

// A ChangeApplier is a [ChangeHandler] whose changes the core carries out
// itself. Apply is called with the core's request lock held, after the
// core recounted the verified admin approvals; it returns a short
// description of what it did. It must refuse a change that no longer
// applies (the state it was proposed against moved on), and be safe to
// call again after a crash interrupted it: [Core.Tick] retries approved
// changes.
type ChangeApplier interface {
	ChangeHandler
	Apply(ctx context.Context, ch *ChangeRecord) (result string, err error)
}

// ChangeTitle is the title of an admin change prompt.
const ChangeTitle = "Approve change"

// changeFixedFields is how many fields the core adds to a handler's.
const changeFixedFields = 5

// MaxChangeFields is how many fields a [ChangeHandler] may show.
const MaxChangeFields = signed.MaxPromptFields - changeFixedFields

// changeIDPrefix starts every change id, so that an answer's request id
// says which kind of record it names.
const changeIDPrefix = "chg-"

// IsChangeID reports whether id names an admin change rather than a
// transfer request.
func IsChangeID(id string) bool { return strings.HasPrefix(id, changeIDPrefix) }

// ChangeLabel starts a change statement.
const ChangeLabel = "OpenCustody change v1\x00"

// ChangeStatement is the canonical statement of a change, whose SHA-256
// is the payload of its admin prompts:
//
//	ChangeLabel
//	id          uint8 length
//	kind        uint8 length
//	subject     uint16 length
//	initiator   uint8 length
//	payload     SHA-256 of the handler's payload, 32 bytes
func ChangeStatement(id string, kind ChangeKind, subject, initiator string, payload []byte) []byte {
	h := sha256.Sum256(payload)
	b := cryptobyte.NewBuilder(nil)
	b.AddBytes([]byte(ChangeLabel))
	addU8(b, []byte(id))
	addU8(b, []byte(kind))
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(subject)) })
	addU8(b, []byte(initiator))
	b.AddBytes(h[:])
	return b.BytesOrPanic()
}

func addU8(b *cryptobyte.Builder, v []byte) {
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(v) })
}

// ProposeChangeRequest asks for an admin change.
type ProposeChangeRequest struct {
	Kind    ChangeKind
	Subject string
	Payload []byte
	// Initiator is the user who proposes it (see [SubmitRequest.Initiator]
	// for what the core can and cannot know about it).
	Initiator string
}

// Proposed is a stored change and the prompts to deliver, one per paired
// admin device except the initiator's.
type Proposed struct {
	Change  *ChangeRecord
	Prompts []*signed.Prompt
}

func (c *Core) changes() error {
	if c.cfg.Changes == nil {
		return ErrNoGovernance
	}
	return nil
}

// SetAdminQuorum stores the governance record: how many admins must
// approve an admin change. It is allowed only in ceremony mode, like
// direct pairing; afterwards the admin quorum is as the ceremony left it.
func (c *Core) SetAdminQuorum(ctx context.Context, n int) (*GovernanceRecord, error) {
	if err := c.changes(); err != nil {
		return nil, err
	}
	if !c.Ceremony() {
		return nil, fmt.Errorf("core: the admin quorum is set only at the key ceremony: %w", ErrNotCeremony)
	}
	if n < 1 {
		return nil, fmt.Errorf("%w: admin quorum %d: want at least 1", ErrChangeRefused, n)
	}
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	g, err := c.cfg.Changes.GetGovernance(ctx)
	if errors.Is(err, ErrNoGovernance) {
		g, err = &GovernanceRecord{}, nil
	}
	if err != nil {
		return nil, err
	}
	g.AdminQuorum, g.SetAt = n, c.cfg.Now().UTC().Truncate(time.Second)
	if err := c.cfg.Changes.PutGovernance(ctx, g); err != nil {
		return nil, fmt.Errorf("core: store the admin quorum: %w", err)
	}
	return g, nil
}

// Governance returns the governance record, or an error wrapping
// [ErrNoGovernance].
func (c *Core) Governance(ctx context.Context) (*GovernanceRecord, error) {
	if err := c.changes(); err != nil {
		return nil, err
	}
	return c.cfg.Changes.GetGovernance(ctx)
}

// handler returns the handler of kind: the core's own kinds first, then
// [Config.ChangeHandlers].
func (c *Core) handler(kind ChangeKind) (ChangeHandler, bool) {
	if h, ok := c.builtinHandlers()[kind]; ok {
		return h, true
	}
	h, ok := c.cfg.ChangeHandlers[kind]
	return h, ok && h != nil
}

// builtinHandlers are the change kinds the core itself defines.
func (c *Core) builtinHandlers() map[ChangeKind]ChangeHandler {
	return map[ChangeKind]ChangeHandler{ChangePolicy: policyHandler{c}, ChangePairing: pairingHandler{c}}
}

// ProposeChange stores a pending admin change and returns it with its
// prompts: one per paired, unrevoked admin device, except the
// initiator's, each showing [ChangeTitle], the change id, kind and
// subject, the handler's fields, the initiator and the expiry, with the
// change statement's digest as payload, signed by the HSM identity key.
//
// It refuses with [ErrChangeRefused] an unknown kind, a change its
// handler refuses, or one too large for a prompt; with [ErrNoGovernance]
// when no admin quorum was set; and with [ErrQuorumUnreachable] when
// fewer admins than the quorum (not counting the initiator) have a paired
// device.
func (c *Core) ProposeChange(ctx context.Context, req ProposeChangeRequest) (*Proposed, error) {
	if err := c.changes(); err != nil {
		return nil, err
	}
	if err := checkUserName("initiator", req.Initiator); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrChangeRefused, err)
	}
	h, ok := c.handler(req.Kind)
	if !ok {
		return nil, fmt.Errorf("%w: unknown change kind %q", ErrChangeRefused, req.Kind)
	}
	if req.Subject == "" || len(req.Subject) > signed.MaxFieldValue {
		return nil, fmt.Errorf("%w: a change needs a subject of 1 to %d bytes", ErrChangeRefused, signed.MaxFieldValue)
	}
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	gov, err := c.cfg.Changes.GetGovernance(ctx)
	if err != nil {
		return nil, err
	}
	fields, err := h.Describe(ctx, req.Subject, req.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %w", ErrChangeRefused, req.Kind, req.Subject, err)
	}
	if len(fields) > MaxChangeFields {
		return nil, fmt.Errorf("%w: %s %s: it takes %d lines to show, a device shows %d: split it into smaller changes", ErrChangeRefused, req.Kind, req.Subject, len(fields), MaxChangeFields)
	}
	devices, err := c.cfg.Devices.ListDevices(ctx)
	if err != nil {
		return nil, err
	}
	var admins []string
	var targets []*DeviceRecord
	for _, d := range devices {
		if d.State != DevicePaired || d.Role != RoleAdmin || d.User == req.Initiator {
			continue
		}
		if !slices.Contains(admins, d.User) {
			admins = append(admins, d.User)
		}
		targets = append(targets, d)
	}
	slices.Sort(admins)
	slices.SortFunc(targets, func(a, b *DeviceRecord) int { return strings.Compare(a.ID, b.ID) })
	if len(admins) < gov.AdminQuorum {
		return nil, fmt.Errorf("%w: %d admins besides the initiator %s have a paired device, and the admin quorum is %d", ErrQuorumUnreachable, len(admins), req.Initiator, gov.AdminQuorum)
	}

	rid := make([]byte, requestIDSize)
	if _, err := io.ReadFull(c.cfg.Rand, rid); err != nil {
		return nil, fmt.Errorf("core: change id: %w", err)
	}
	now := c.cfg.Now().UTC()
	ch := &ChangeRecord{
		ID: changeIDPrefix + hex.EncodeToString(rid), Kind: req.Kind, Subject: req.Subject,
		Payload: bytes.Clone(req.Payload), Fields: fields, Initiator: req.Initiator,
		Admins: admins, Quorum: gov.AdminQuorum, State: ChangePending,
		CreatedAt: now, ExpiresAt: now.Truncate(time.Second).Add(c.cfg.PromptExpiry),
		Prompts: []PromptRecord{}, Answers: []AnswerRecord{},
	}
	digest := sha256.Sum256(ChangeStatement(ch.ID, ch.Kind, ch.Subject, ch.Initiator, ch.Payload))
	ch.Digest = digest[:]
	shown := append([]signed.Field{
		{Label: "Change", Value: ch.ID},
		{Label: "Kind", Value: string(ch.Kind)},
		{Label: "Subject", Value: ch.Subject},
	}, fields...)
	shown = append(shown,
		signed.Field{Label: "Proposed by", Value: ch.Initiator},
		signed.Field{Label: "Expires", Value: ch.ExpiresAt.Format("2006-01-02 15:04:05 UTC")})
	var prompts []*signed.Prompt
	for _, d := range targets {
		p := &signed.Prompt{
			Kind: signed.PromptAdmin, RequestID: ch.ID, DeviceID: d.ID, NotAfter: ch.ExpiresAt,
			Title: ChangeTitle, Fields: shown, Payload: ch.Digest,
		}
		if _, err := io.ReadFull(c.cfg.Rand, p.Nonce[:]); err != nil {
			return nil, fmt.Errorf("core: prompt nonce: %w", err)
		}
		if err := p.Sign(c.cfg.Identity); err != nil {
			if errors.Is(err, signed.ErrMalformedPrompt) {
				return nil, fmt.Errorf("%w: it cannot be shown on a device: %w", ErrChangeRefused, err)
			}
			return nil, fmt.Errorf("core: change %s: sign the prompt for device %s with the HSM identity key: %w", ch.ID, d.ID, err)
		}
		enc := p.Marshal()
		if err := checkFitsChannel(enc); err != nil {
			return nil, fmt.Errorf("%w: its prompt does not fit a device message: %w", ErrChangeRefused, err)
		}
		ch.Prompts = append(ch.Prompts, PromptRecord{
			DeviceID: d.ID, User: d.User, Nonce: bytes.Clone(p.Nonce[:]), Digest: p.Digest(), Prompt: enc, IssuedAt: now,
		})
		prompts = append(prompts, p)
	}
	if err := c.cfg.Changes.CreateChange(ctx, ch); err != nil {
		return nil, fmt.Errorf("core: store change %s: %w", ch.ID, err)
	}
	return &Proposed{Change: ch, Prompts: prompts}, nil
}

// maxUserName bounds a user name: it is shown on a device.
const maxUserName = 64

// checkUserName reports whether name is a usable user name.
func checkUserName(what, name string) error {
	if name == "" || len(name) > maxUserName {
		return fmt.Errorf("core: %s must be a user name of 1 to %d bytes", what, maxUserName)
	}
	for _, r := range name {
		if r < 0x21 || r == 0x7f {
			return fmt.Errorf("core: %s %q: no spaces or control characters", what, name)
		}
	}
	return nil
}

// answerChange applies a verified device's answer to an admin change
// (the second half of [Core.Answer]; reqMu is held).
func (c *Core) answerChange(ctx context.Context, dev *DeviceRecord, appr *signed.Approval, a Answer, fail func(error, string, ...any) error) (*AnswerResult, error) {
	if err := c.changes(); err != nil {
		return nil, err
	}
	ch, err := c.cfg.Changes.GetChange(ctx, a.RequestID)
	if err != nil {
		return nil, err
	}
	p := findPrompt(ch.Prompts, dev.ID)
	if p == nil {
		return nil, fail(ErrPromptMismatch, "the change issued no prompt to this device")
	}
	if !p.signedBy(appr) {
		return nil, fail(ErrPromptMismatch, "the answer signs prompt %x, the core issued %x", appr.PromptDigest[:8], p.Digest[:8])
	}
	now := c.cfg.Now()
	if ch.State == ChangePending && now.After(ch.ExpiresAt) {
		withdraw, err := c.expireChange(ctx, ch)
		if err != nil {
			return nil, err
		}
		return &AnswerResult{Change: ch, Withdraw: withdraw}, fail(ErrExpired, "it expired at %s", ch.ExpiresAt.Format(time.RFC3339))
	}
	if ch.State != ChangePending {
		return nil, fail(ErrRequestClosed, "it is %s", ch.State)
	}
	if dev.User != p.User {
		return nil, fail(ErrPromptMismatch, "the prompt was issued to user %s, the device now belongs to %s", p.User, dev.User)
	}
	if dev.Role != RoleAdmin {
		return nil, fail(ErrNotAdmin, "its role is %s", dev.Role)
	}
	if dev.User == ch.Initiator {
		return nil, fail(ErrPromptMismatch, "user %s proposed the change and may not approve it", dev.User)
	}
	if answeredBy(ch.Answers, dev.ID, dev.User) {
		return nil, fail(ErrAlreadyAnswered, "user %s has answered", dev.User)
	}
	if appr.Counter <= dev.Counter {
		return nil, fail(ErrReplay, "counter %d, last accepted %d", appr.Counter, dev.Counter)
	}
	dev.Counter = appr.Counter
	if err := c.cfg.Devices.UpdateDevice(ctx, dev); err != nil {
		return nil, fmt.Errorf("core: change %s: device %s: store its counter: %w", ch.ID, dev.ID, err)
	}
	ch.Answers = append(ch.Answers, AnswerRecord{
		DeviceID: dev.ID, User: dev.User, Decision: appr.Decision, Counter: appr.Counter,
		Approval: bytes.Clone(a.Approval), At: now.UTC(),
	})
	res := &AnswerResult{Change: ch, User: dev.User, Decision: appr.Decision}
	switch {
	case appr.Decision == signed.Reject:
		ch.State, ch.FinishedAt = ChangeRejected, now.UTC()
	case len(ch.ApprovedBy()) >= ch.Quorum:
		ch.State = ChangeApproved
	}
	res.Withdraw = withdrawals(ch.ID, ch.Prompts, ch.Answers, dev, ch.State != ChangePending)
	if err := c.cfg.Changes.UpdateChange(ctx, ch); err != nil {
		return nil, fmt.Errorf("core: change %s: store the answer of device %s: %w", ch.ID, dev.ID, err)
	}
	if ch.State == ChangeApproved {
		err := c.applyChange(ctx, ch)
		res.Withdraw = append(res.Withdraw, c.takeWithdrawals()...)
		if err != nil {
			return nil, err
		}
	}
	return res, nil
}

// withdrawals lists the prompts nobody needs to answer after dev's
// answer: every outstanding one once closed, else dev's user's others.
func withdrawals(id string, prompts []PromptRecord, answers []AnswerRecord, dev *DeviceRecord, closed bool) []PromptRef {
	var out []PromptRef
	for _, p := range prompts {
		if p.DeviceID == dev.ID || slices.ContainsFunc(answers, func(a AnswerRecord) bool { return a.DeviceID == p.DeviceID }) {
			continue
		}
		if closed || p.User == dev.User {
			out = append(out, PromptRef{RequestID: id, DeviceID: p.DeviceID})
		}
	}
	return out
}

// applyChange carries out an approved change whose handler is a
// [ChangeApplier], after recounting its approvals, and stores the
// outcome. Other changes stay approved for the daemon. It returns an
// error only when the outcome could not be stored.
func (c *Core) applyChange(ctx context.Context, ch *ChangeRecord) error {
	h, ok := c.handler(ch.Kind)
	if !ok {
		return c.finishChange(ctx, ch, "", fmt.Errorf("core: change %s: no handler for kind %q", ch.ID, ch.Kind))
	}
	if err := c.checkChangeApprovals(ctx, ch); err != nil {
		return c.finishChange(ctx, ch, "", err)
	}
	ap, ok := h.(ChangeApplier)
	if !ok {
		return nil
	}
	result, err := ap.Apply(ctx, ch)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("core: change %s: applying interrupted; it stays approved: %w", ch.ID, err)
	}
	return c.finishChange(ctx, ch, result, err)
}

func (c *Core) finishChange(ctx context.Context, ch *ChangeRecord, result string, err error) error {
	ch.FinishedAt = c.cfg.Now().UTC()
	if err != nil {
		ch.State, ch.Error = ChangeFailed, err.Error()
	} else {
		ch.State, ch.Result = ChangeApplied, result
	}
	if err := c.cfg.Changes.UpdateChange(ctx, ch); err != nil {
		return fmt.Errorf("core: change %s: store its outcome (%s): %w", ch.ID, ch.State, err)
	}
	return nil
}

// checkChangeApprovals is the precondition of applying a change, checked
// from the answers rather than the stored state: at least Quorum distinct
// admins other than the initiator approved, each with an approval that
// verifies under the key of a paired, unrevoked admin device, over the
// prompt the core issued to that device.
func (c *Core) checkChangeApprovals(ctx context.Context, ch *ChangeRecord) error {
	verified, err := c.verifiedAnswers(ctx, ch.Prompts, ch.Answers, func(d *DeviceRecord) bool {
		return d.Role == RoleAdmin && d.User != ch.Initiator
	})
	if err != nil {
		return err
	}
	var users []string
	for _, v := range verified {
		if v.Decision == signed.Reject {
			return fmt.Errorf("%w: change %s was rejected by %s; refusing to apply it", ErrNotApproved, ch.ID, v.User)
		}
		users = append(users, v.User)
	}
	digest := sha256.Sum256(ChangeStatement(ch.ID, ch.Kind, ch.Subject, ch.Initiator, ch.Payload))
	if !bytes.Equal(digest[:], ch.Digest) {
		return fmt.Errorf("%w: change %s: its stored statement does not match what the admins were shown", ErrNotApproved, ch.ID)
	}
	if len(users) < ch.Quorum || ch.Quorum < 1 {
		return fmt.Errorf("%w: change %s has %d of the %d admin approvals it needs; refusing to apply it", ErrNotApproved, ch.ID, len(users), ch.Quorum)
	}
	return nil
}

// verifiedAnswers returns the answers whose signatures verify: each under
// the key of a paired, unrevoked device that ok accepts, over the prompt
// the core issued to that device, in the order they answered, with the
// time of their answer.
func (c *Core) verifiedAnswers(ctx context.Context, prompts []PromptRecord, answers []AnswerRecord, ok func(*DeviceRecord) bool) ([]verifiedAnswer, error) {
	var out []verifiedAnswer
	for _, a := range answers {
		appr, err := signed.ParseApproval(a.Approval)
		if err != nil || appr.Decision != a.Decision || appr.DeviceID != a.DeviceID {
			continue
		}
		dev, err := c.cfg.Devices.GetDevice(ctx, a.DeviceID)
		if errors.Is(err, ErrDeviceNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		p := findPrompt(prompts, dev.ID)
		if dev.State != DevicePaired || p == nil || p.User != dev.User || dev.User != a.User || !ok(dev) ||
			!p.signedBy(appr) ||
			appr.Verify(dev.Algorithm, dev.IdentityKey) != nil {
			continue
		}
		if slices.ContainsFunc(out, func(v verifiedAnswer) bool { return v.User == dev.User }) {
			continue
		}
		out = append(out, verifiedAnswer{User: dev.User, Decision: appr.Decision, At: a.At})
	}
	return out, nil
}

// verifiedAnswer is an answer whose signature the core checked again.
type verifiedAnswer struct {
	User     string
	Decision signed.Decision
	At       time.Time
}

// CompleteChange records that the daemon carried out an approved change
// whose handler is not a [ChangeApplier]: applied with result, or failed
// with cause. It refuses a change that is not approved, and recounts its
// approvals first.
func (c *Core) CompleteChange(ctx context.Context, id, result string, cause error) (*ChangeRecord, error) {
	if err := c.changes(); err != nil {
		return nil, err
	}
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	ch, err := c.cfg.Changes.GetChange(ctx, id)
	if err != nil {
		return nil, err
	}
	if ch.State != ChangeApproved {
		return nil, fmt.Errorf("%w: change %s is %s, not approved", ErrRequestClosed, id, ch.State)
	}
	if h, ok := c.handler(ch.Kind); ok {
		if _, applier := h.(ChangeApplier); applier {
			return nil, fmt.Errorf("core: change %s (%s) is carried out by the core, not the daemon", id, ch.Kind)
		}
	}
	if err := c.checkChangeApprovals(ctx, ch); err != nil {
		cause = err
	}
	if err := c.finishChange(ctx, ch, result, cause); err != nil {
		return nil, err
	}
	return ch, nil
}

// ApprovedChange returns a change if it is approved and waiting for the
// daemon, after recounting its approvals: the daemon calls it before it
// acts on a change of a kind it carries out.
func (c *Core) ApprovedChange(ctx context.Context, id string) (*ChangeRecord, error) {
	if err := c.changes(); err != nil {
		return nil, err
	}
	ch, err := c.cfg.Changes.GetChange(ctx, id)
	if err != nil {
		return nil, err
	}
	if ch.State != ChangeApproved {
		return nil, fmt.Errorf("%w: change %s is %s, not approved", ErrNotApproved, id, ch.State)
	}
	if err := c.checkChangeApprovals(ctx, ch); err != nil {
		return nil, err
	}
	return ch, nil
}

func (c *Core) expireChange(ctx context.Context, ch *ChangeRecord) ([]PromptRef, error) {
	withdraw := openPrompts(ch.ID, ch.Prompts, ch.Answers)
	ch.State, ch.FinishedAt = ChangeExpired, ch.ExpiresAt
	if err := c.cfg.Changes.UpdateChange(ctx, ch); err != nil {
		return nil, fmt.Errorf("core: change %s: store its expiry: %w", ch.ID, err)
	}
	return withdraw, nil
}

// tickChanges expires overdue changes and applies approved ones a crash
// left unapplied (reqMu is held).
func (c *Core) tickChanges(ctx context.Context) ([]PromptRef, error) {
	if c.cfg.Changes == nil {
		return nil, nil
	}
	chs, err := c.cfg.Changes.ListChanges(ctx)
	if err != nil {
		return nil, err
	}
	now := c.cfg.Now()
	var withdraw []PromptRef
	var errs []error
	for _, ch := range chs {
		switch {
		case ch.State == ChangePending && now.After(ch.ExpiresAt):
			w, err := c.expireChange(ctx, ch)
			withdraw = append(withdraw, w...)
			errs = append(errs, err)
		case ch.State == ChangeApproved:
			if h, ok := c.handler(ch.Kind); ok {
				if _, applier := h.(ChangeApplier); !applier {
					continue // the daemon's to carry out
				}
			}
			errs = append(errs, c.applyChange(ctx, ch))
			withdraw = append(withdraw, c.takeWithdrawals()...)
		}
	}
	return withdraw, errors.Join(errs...)
}

// Change returns an admin change as it stands now.
func (c *Core) Change(ctx context.Context, id string) (*ChangeRecord, error) {
	if err := c.changes(); err != nil {
		return nil, err
	}
	ch, err := c.cfg.Changes.GetChange(ctx, id)
	if err != nil {
		return nil, err
	}
	return ch.effective(c.cfg.Now()), nil
}

// Changes lists the admin changes as they stand now, oldest first.
func (c *Core) Changes(ctx context.Context) ([]*ChangeRecord, error) {
	if err := c.changes(); err != nil {
		return nil, err
	}
	chs, err := c.cfg.Changes.ListChanges(ctx)
	if err != nil {
		return nil, err
	}
	now := c.cfg.Now()
	for _, ch := range chs {
		ch.effective(now)
	}
	slices.SortStableFunc(chs, func(a, b *ChangeRecord) int { return oldestFirst(a.CreatedAt, a.ID, b.CreatedAt, b.ID) })
	return chs, nil
}

// pendingChangePrompts issues afresh the device's prompts of pending
// changes, as [Core.PendingPrompts] does (reqMu is held).
func (c *Core) pendingChangePrompts(ctx context.Context, deviceID string) ([]*signed.Prompt, error) {
	if c.cfg.Changes == nil {
		return nil, nil
	}
	chs, err := c.Changes(ctx)
	if err != nil {
		return nil, err
	}
	var out []*signed.Prompt
	for _, ch := range chs {
		if ch.State != ChangePending {
			continue
		}
		sp, err := c.reissueOpen("change "+ch.ID, ch.Prompts, ch.Answers, deviceID, func() error { return c.cfg.Changes.UpdateChange(ctx, ch) })
		if err != nil {
			return nil, err
		}
		if sp != nil {
			out = append(out, sp)
		}
	}
	return out, nil
}

// pairingHandler is the core's handler of [ChangePairing].
type pairingHandler struct{ c *Core }

func (h pairingHandler) parse(ctx context.Context, subject string, payload []byte) (*DeviceRecord, error) {
	var rec DeviceRecord
	if err := json.Unmarshal(payload, &rec); err != nil {
		return nil, fmt.Errorf("pairing: %w", err)
	}
	if rec.ID != subject || DeviceID(rec.IdentityKey) != rec.ID {
		return nil, fmt.Errorf("pairing: the record is not device %s's", subject)
	}
	if _, err := ParseRole(string(rec.Role)); err != nil {
		return nil, err
	}
	if err := checkUserName("user", rec.User); err != nil {
		return nil, err
	}
	if rec.State != DevicePaired {
		return nil, fmt.Errorf("pairing: state %q", rec.State)
	}
	switch old, err := h.c.cfg.Devices.GetDevice(ctx, rec.ID); {
	case err == nil && old.State == DeviceRevoked:
		return nil, fmt.Errorf("%w: device %s cannot be paired again", ErrRevoked, rec.ID)
	case err == nil:
		return nil, fmt.Errorf("%w: device %s belongs to %s", ErrAlreadyPaired, rec.ID, old.User)
	case !errors.Is(err, ErrDeviceNotFound):
		return nil, err
	}
	return &rec, nil
}

// Describe shows the new device: its fingerprint (which the people
// compare with the device's own screen), user, role, and what attested it.
func (h pairingHandler) Describe(ctx context.Context, subject string, payload []byte) ([]signed.Field, error) {
	rec, err := h.parse(ctx, subject, payload)
	if err != nil {
		return nil, err
	}
	att := "none"
	if a := rec.Attestation; a != nil {
		att = fmt.Sprintf("%s (%s) %s", a.Root, a.RootFingerprint, a.Subject)
		if a.Development {
			att += " - development root: attested by nobody"
		}
	}
	model := rec.Model
	if rec.Emulator {
		model += " (emulator)"
	}
	return []signed.Field{
		{Label: "Pair device", Value: rec.ID},
		{Label: "Fingerprint", Value: rec.Fingerprint()},
		{Label: "User", Value: rec.User},
		{Label: "Role", Value: string(rec.Role)},
		{Label: "Model (claimed)", Value: clipField(model)},
		{Label: "Attestation", Value: clipField(att)},
	}, nil
}

// Apply stores the device's record, if the device is still unpaired.
func (h pairingHandler) Apply(ctx context.Context, ch *ChangeRecord) (string, error) {
	rec, err := h.parse(ctx, ch.Subject, ch.Payload)
	if err != nil {
		return "", err
	}
	rec.PairedAt = h.c.cfg.Now().UTC()
	if err := h.c.cfg.Devices.CreateDevice(ctx, rec); err != nil {
		return "", fmt.Errorf("store pairing: %w", err)
	}
	return fmt.Sprintf("device %s paired to %s as %s, fingerprint %s", rec.ID, rec.User, rec.Role, rec.Fingerprint()), nil
}

// clipField cuts a claimed text to a field's length.
func clipField(s string) string {
	if len(s) > signed.MaxFieldValue {
		s = s[:signed.MaxFieldValue]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
}
