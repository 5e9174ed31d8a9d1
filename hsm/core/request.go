package core

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/hsm/policy"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// RequestState is the lifecycle of a request.
type RequestState string

const (
	// RequestPending waits for its approvers.
	RequestPending RequestState = "pending"
	// RequestApproved met its quorum and is being signed.
	RequestApproved RequestState = "approved"
	// RequestSigned is signed: the transaction is final.
	RequestSigned RequestState = "signed"
	// RequestRejected was rejected by an approver.
	RequestRejected RequestState = "rejected"
	// RequestExpired was not approved in time.
	RequestExpired RequestState = "expired"
	// RequestFailed met its quorum but could not be signed; Error says why.
	RequestFailed RequestState = "failed"
	// RequestWithdrawn was pending when its wallet's policy changed; Error
	// says which change. It is never signed: submit it again.
	RequestWithdrawn RequestState = "withdrawn"
)

// Closed reports whether the request will not change any more.
func (s RequestState) Closed() bool {
	return s != RequestPending && s != RequestApproved
}

// RequestRecord is what the core stores about a request to sign a
// transaction.
type RequestRecord struct {
	ID      string          `json:"id"`
	Wallet  string          `json:"wallet"`
	Network bitcoin.Network `json:"network"`
	// WalletKeys is how many of the wallet's keys it had when the request
	// was submitted: those keys analysed the transaction and sign it.
	WalletKeys int `json:"wallet_keys"`
	// Approvers are the users whose approval can count under the policy
	// (the initiator excepted); Quorum is the wallet's quorum when its
	// policy is one group's, and zero otherwise.
	Approvers []string `json:"approvers"`
	Quorum    int      `json:"quorum"`
	// Initiator is the user who submitted the request, as the submitter
	// named them: their approval does not count and they get no prompt.
	Initiator string `json:"initiator,omitempty"`
	// PolicyVersion is the version of the wallet's policy the request was
	// submitted under, and Rule the rule that applied then. The request is
	// evaluated under that version only: a policy change withdraws it.
	PolicyVersion uint64 `json:"policy_version,omitempty"`
	Rule          string `json:"rule,omitempty"`
	// SignAfter is when the HSM may sign an approved request: when the
	// policy's rule was met, plus its time lock.
	SignAfter time.Time `json:"sign_after,omitzero"`
	// PSBT is the packet as submitted; Summary the canonical encoding of
	// its summary ([bitcoin.Summary.Canonical]), the payload of every
	// prompt and the only thing Sign will sign.
	PSBT       []byte       `json:"psbt"`
	Summary    []byte       `json:"summary"`
	TxID       string       `json:"txid"`
	State      RequestState `json:"state"`
	CreatedAt  time.Time    `json:"created_at"`
	ExpiresAt  time.Time    `json:"expires_at"`
	FinishedAt time.Time    `json:"finished_at,omitzero"`
	// Prompts are the prompts issued, one per approver device.
	Prompts []PromptRecord `json:"prompts"`
	// Answers are the approvals and rejections accepted, in order.
	Answers []AnswerRecord `json:"answers"`
	// SignedPSBT (finalized) and SignedTx (ready to broadcast) once signed.
	SignedPSBT []byte `json:"signed_psbt,omitempty"`
	SignedTx   []byte `json:"signed_tx,omitempty"`
	// Error says why a request failed.
	Error string `json:"error,omitempty"`
	// Version is the storage version the record was read at.
	Version uint64 `json:"-"`
}

// PromptRecord is one prompt the core issued for a request.
type PromptRecord struct {
	DeviceID string `json:"device_id"`
	User     string `json:"user"`
	Nonce    []byte `json:"nonce"`
	Digest   []byte `json:"digest"`
	// Prompt is the signed prompt as encoded for the device
	// ([signed.Prompt.Marshal]); it is sent again when the device
	// reconnects.
	Prompt   []byte    `json:"prompt"`
	IssuedAt time.Time `json:"issued_at"`
}

// AnswerRecord is an approval or rejection the core accepted.
type AnswerRecord struct {
	DeviceID string          `json:"device_id"`
	User     string          `json:"user"`
	Decision signed.Decision `json:"decision"`
	Counter  uint64          `json:"counter"`
	// Approval is the device's signed answer as received.
	Approval []byte    `json:"approval"`
	At       time.Time `json:"at"`
}

// ParsedSummary decodes the request's summary.
func (r *RequestRecord) ParsedSummary() (*bitcoin.Summary, error) {
	return bitcoin.ParseSummary(r.Summary)
}

// ApprovedBy and RejectedBy list the users who approved or rejected, in
// the order they answered.
func (r *RequestRecord) ApprovedBy() []string { return usersWith(r.Answers, signed.Approve) }

// RejectedBy: see [RequestRecord.ApprovedBy].
func (r *RequestRecord) RejectedBy() []string { return usersWith(r.Answers, signed.Reject) }

// The prompts and answers of requests and admin changes are kept alike
// and read with the same helpers.

// findPrompt returns the prompt issued to the device, or nil if none was.
func findPrompt(prompts []PromptRecord, deviceID string) *PromptRecord {
	for i := range prompts {
		if prompts[i].DeviceID == deviceID {
			return &prompts[i]
		}
	}
	return nil
}

// signedBy reports whether appr answers the prompt p: it signs p's digest
// under p's nonce.
func (p *PromptRecord) signedBy(appr *signed.Approval) bool {
	return bytes.Equal(p.Digest, appr.PromptDigest[:]) && bytes.Equal(p.Nonce, appr.Nonce[:])
}

// answeredBy reports whether the device, or its user on any device, has
// answered.
func answeredBy(answers []AnswerRecord, deviceID, user string) bool {
	return slices.ContainsFunc(answers, func(a AnswerRecord) bool { return a.DeviceID == deviceID || a.User == user })
}

// usersWith lists the users whose answer is d, in the order they
// answered.
func usersWith(answers []AnswerRecord, d signed.Decision) []string {
	var out []string
	for _, a := range answers {
		if a.Decision == d {
			out = append(out, a.User)
		}
	}
	return out
}

// openPrompts lists the prompts of request or change id still waiting
// for an answer: those whose device and user have not answered.
func openPrompts(id string, prompts []PromptRecord, answers []AnswerRecord) []PromptRef {
	var out []PromptRef
	for _, p := range prompts {
		if !answeredBy(answers, p.DeviceID, p.User) {
			out = append(out, PromptRef{RequestID: id, DeviceID: p.DeviceID})
		}
	}
	return out
}

// oldestFirst orders requests and changes as they are listed: by creation
// time, then by id.
func oldestFirst(aCreated time.Time, aID string, bCreated time.Time, bID string) int {
	if c := aCreated.Compare(bCreated); c != 0 {
		return c
	}
	return strings.Compare(aID, bID)
}

// effective is the request as it stands at now: a pending request past
// its expiry is expired, even before [Core.Tick] stored that.
func (r *RequestRecord) effective(now time.Time) *RequestRecord {
	if r.State == RequestPending && now.After(r.ExpiresAt) {
		r.State, r.FinishedAt = RequestExpired, r.ExpiresAt
	}
	return r
}

// A RequestStatus is the part of a request record that upkeep decides on.
// Its JSON fields are the record's own, so a store can decode it from the
// stored record.
type RequestStatus struct {
	ID        string       `json:"id"`
	State     RequestState `json:"state"`
	ExpiresAt time.Time    `json:"expires_at"`
	SignAfter time.Time    `json:"sign_after,omitzero"`
}

// due reports whether upkeep must act on a request in state st now.
func (st RequestStatus) due(now time.Time) bool {
	return st.State == RequestPending && now.After(st.ExpiresAt) ||
		st.State == RequestApproved && !now.Before(st.SignAfter)
}

// ErrRequestNotFound is returned by a [RequestStore] for an unknown id.
var ErrRequestNotFound = errors.New("core: request not found")

// RequestStore keeps request records. Implementations authenticate every
// record with the HSM record key, as [DeviceStore] does: GetRequest and
// ListRequests return an error, never a record, when authentication
// fails. GetRequest returns an error wrapping [ErrRequestNotFound] for an
// unknown id.
type RequestStore interface {
	GetRequest(ctx context.Context, id string) (*RequestRecord, error)
	ListRequests(ctx context.Context) ([]*RequestRecord, error)
	// ListRequestStatus returns the status of every request, read and
	// authenticated as ListRequests does, without keeping the rest of
	// each record in memory.
	ListRequestStatus(ctx context.Context) ([]RequestStatus, error)
	// EachRequest passes fn every request, one at a time and in no
	// particular order, authenticated as ListRequests does, without
	// holding them all in memory; it stops at fn's first error.
	EachRequest(ctx context.Context, fn func(*RequestRecord) error) error
	// CreateRequest stores a new record; it fails if the id exists.
	CreateRequest(ctx context.Context, r *RequestRecord) error
	// UpdateRequest replaces the record read at r.Version.
	UpdateRequest(ctx context.Context, r *RequestRecord) error
	// Spends returns the wallet's spend ledger, authenticated like the
	// requests; a wallet without one gets an empty ledger (Version 0).
	Spends(ctx context.Context, wallet string) (*SpendLedger, error)
	// UpdateSpends stores l over the version it was read at (0: a new
	// ledger). If another writer stored the wallet's ledger meanwhile, it
	// changes nothing and returns an error wrapping [ErrLedgerConflict].
	UpdateSpends(ctx context.Context, l *SpendLedger) error
	// StoreAnswer stores what an accepted answer changes, all or none, in
	// one atomic write: device d (its new counter) and request r (with
	// the answer), each over the version it was read at, and, unless l
	// is nil, the wallet's spend ledger l as UpdateSpends would. If any
	// of them changed since it was read, nothing is stored.
	StoreAnswer(ctx context.Context, d *DeviceRecord, r *RequestRecord, l *SpendLedger) error
}

// Errors of the approval path. Errors from [Core.Answer] wrap one of them
// (or [ErrNotPaired], [ErrRevoked], [ErrRequestNotFound]) and name the
// request and device.
var (
	// ErrTransactionRefused: the PSBT is not one the wallet can sign, or
	// cannot be shown on a device.
	ErrTransactionRefused = errors.New("core: transaction refused")
	// ErrQuorumUnreachable: fewer of the wallet's approvers have a paired,
	// unrevoked device than its quorum.
	ErrQuorumUnreachable = errors.New("core: quorum out of reach")
	// ErrBadApproval: the answer does not parse, or its signature does not
	// verify under the device's paired key.
	ErrBadApproval = errors.New("core: approval is not validly signed by the device")
	// ErrWrongDevice: the answer names another device than the one whose
	// channel carried it.
	ErrWrongDevice = errors.New("core: approval names another device than the one that sent it")
	// ErrPromptMismatch: the answer is not for the prompt the core issued
	// to that device for that request (another digest or nonce, or no
	// prompt at all).
	ErrPromptMismatch = errors.New("core: approval is not for the prompt issued to the device")
	// ErrExpired: the request's prompts expired before the answer came.
	ErrExpired = errors.New("core: request expired")
	// ErrReplay: the answer's counter is not above the last one accepted
	// from the device.
	ErrReplay = errors.New("core: approval counter is not above the device's last one (replayed or stale)")
	// ErrRequestClosed: the request is already signed, rejected, expired
	// or failed.
	ErrRequestClosed = errors.New("core: request is closed")
	// ErrAlreadyAnswered: the device, or its user on another device,
	// already answered the request. A user counts once.
	ErrAlreadyAnswered = errors.New("core: already answered")
)

// PromptRef names one prompt: a request's prompt for a device.
type PromptRef struct {
	RequestID string
	DeviceID  string
}

// SubmitRequest asks the core to have a transaction approved and signed.
type SubmitRequest struct {
	// Wallet is the name of the wallet whose keys sign.
	Wallet string
	// Initiator is the user on whose behalf the request is submitted.
	// The core cannot verify it (submitters hold the operator token, not
	// a device): it only ever makes the policy stricter, since the
	// initiator gets no prompt and their approval does not count. A
	// submitter who names someone else can keep that user from
	// approving, and can approve their own request if they also approve.
	// It is required.
	Initiator string
	// PSBT is the transaction, binary or base64 (BIP-174), as the
	// submitter sent it: untrusted.
	PSBT []byte
}

// ErrNoInitiator: a request did not name its initiator.
var ErrNoInitiator = errors.New("core: a request must name its initiator")

// Submitted is a stored request and the prompts to deliver, one per
// approver device.
type Submitted struct {
	Request *RequestRecord
	Prompts []*signed.Prompt
}

// requestIDSize is the size of a request id in bytes (hex in the id).
const requestIDSize = 8

// Submit checks that the wallet can sign the PSBT, derives its summary
// (package bitcoin: from the transaction and the wallet alone), stores a
// pending request, and returns it with the prompts to deliver: one per
// paired, unrevoked device of each of the wallet's approvers, each bound
// to its device, with a fresh nonce and the request's expiry, signed by
// the HSM identity key. The prompts' fields are [TransferFields]; their
// payload is the summary's canonical encoding.
//
// It refuses, with an error wrapping [ErrTransactionRefused], a PSBT that
// does not parse or that [bitcoin.Analyse] refuses, and a transaction too
// large for a prompt or a wallet that has no address yet; and, with
// [ErrQuorumUnreachable], a wallet with fewer approvers with a paired
// device than its quorum.
func (c *Core) Submit(ctx context.Context, req SubmitRequest) (*Submitted, error) {
	if err := c.approvalPath(); err != nil {
		return nil, err
	}
	if err := checkUserName("initiator", req.Initiator); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoInitiator, err)
	}
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	w, sum, canonical, err := c.analyse(ctx, req)
	if err != nil {
		return nil, err
	}
	p, err := w.Policy()
	if err != nil {
		return nil, err
	}
	devices, err := c.cfg.Devices.CurrentDevices(ctx)
	if err != nil {
		return nil, err
	}
	id := make([]byte, requestIDSize)
	if _, err := io.ReadFull(c.cfg.Rand, id); err != nil {
		return nil, fmt.Errorf("core: request id: %w", err)
	}
	// Prompts carry whole seconds; the creation time keeps its precision,
	// which orders requests.
	now := c.cfg.Now().UTC()
	expiry := c.cfg.PromptExpiry
	if p.Expiry != 0 {
		expiry = p.Expiry.D()
	}
	r := &RequestRecord{
		ID: hex.EncodeToString(id), Wallet: w.Name, Network: w.Network, WalletKeys: len(w.Keys),
		Quorum: w.Quorum, Initiator: req.Initiator, PolicyVersion: w.CurrentPolicyVersion(),
		PSBT: bytes.Clone(req.PSBT), Summary: canonical, TxID: sum.TxID.String(),
		State: RequestPending, CreatedAt: now, ExpiresAt: now.Truncate(time.Second).Add(expiry),
		Prompts: []PromptRecord{}, Answers: []AnswerRecord{},
	}
	available := availableUsers(devices)
	d, err := c.evaluate(ctx, p, r, nil, available)
	if err != nil {
		return nil, err
	}
	switch d.Outcome {
	case policy.Refused:
		return nil, fmt.Errorf("%w: wallet %s: %s", ErrPolicyRefused, w.Name, d.Reason)
	case policy.Rejected, policy.Approved:
		reachable := 0
		for _, u := range d.Eligible {
			if slices.Contains(available, u) {
				reachable++
			}
		}
		return nil, fmt.Errorf("%w: wallet %s: only %d of its approvers have a paired device besides the initiator %s: %s", ErrQuorumUnreachable, w.Name, reachable, req.Initiator, d.Reason)
	}
	r.Approvers, r.Rule = d.Eligible, d.Rule
	prompts, err := c.issuePrompts(r, sum, d.Ask, devices, now)
	if err != nil {
		return nil, err
	}
	if err := c.cfg.Requests.CreateRequest(ctx, r); err != nil {
		return nil, fmt.Errorf("core: store request %s: %w", r.ID, err)
	}
	return &Submitted{Request: r, Prompts: prompts}, nil
}

// analyse checks that the wallet can sign the PSBT and derives its
// summary and the summary's canonical encoding.
func (c *Core) analyse(ctx context.Context, req SubmitRequest) (*WalletRecord, *bitcoin.Summary, []byte, error) {
	w, err := c.cfg.Wallets.GetWallet(ctx, req.Wallet)
	if err != nil {
		return nil, nil, nil, err
	}
	if len(w.Keys) == 0 {
		return nil, nil, nil, fmt.Errorf("%w: wallet %s has no address yet, so no coins to spend", ErrTransactionRefused, w.Name)
	}
	bw, err := w.bitcoinWallet(len(w.Keys))
	if err != nil {
		return nil, nil, nil, err
	}
	packet, err := bitcoin.Parse(req.PSBT)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %w", ErrTransactionRefused, err)
	}
	sum, err := bitcoin.Analyse(packet, bw)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: wallet %s cannot sign it: %w", ErrTransactionRefused, w.Name, err)
	}
	canonical, err := sum.Canonical()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %w", ErrTransactionRefused, err)
	}
	if len(canonical) > signed.MaxPromptPayload {
		return nil, nil, nil, fmt.Errorf("%w: its summary (%d inputs, %d outputs) is %d bytes, more than a prompt carries (%d): split it into smaller transactions",
			ErrTransactionRefused, len(sum.Inputs), len(sum.Outputs), len(canonical), signed.MaxPromptPayload)
	}
	return w, sum, canonical, nil
}

// issuePrompts adds to r a prompt for each paired, unrevoked device of
// users that has none yet, and returns the new prompts.
func (c *Core) issuePrompts(r *RequestRecord, sum *bitcoin.Summary, users []string, devices []*DeviceRecord, now time.Time) ([]*signed.Prompt, error) {
	fields := TransferFields(r.Wallet, r.ID, sum, r.ExpiresAt)
	var prompts []*signed.Prompt
	for _, u := range users {
		for _, d := range pairedDevicesOf(devices, u) {
			if findPrompt(r.Prompts, d.ID) != nil {
				continue
			}
			p := &signed.Prompt{
				Kind: signed.PromptTransaction, RequestID: r.ID, DeviceID: d.ID, NotAfter: r.ExpiresAt,
				Title: TransferTitle, Fields: fields, Payload: r.Summary,
			}
			if _, err := io.ReadFull(c.cfg.Rand, p.Nonce[:]); err != nil {
				return nil, fmt.Errorf("core: prompt nonce: %w", err)
			}
			if err := p.Sign(c.cfg.Identity); err != nil {
				if errors.Is(err, signed.ErrMalformedPrompt) {
					return nil, fmt.Errorf("%w: it cannot be shown on a device (%d outputs): %w", ErrTransactionRefused, len(sum.Outputs), err)
				}
				return nil, fmt.Errorf("core: request %s: sign the prompt for device %s with the HSM identity key: %w", r.ID, d.ID, err)
			}
			enc := p.Marshal()
			if err := checkFitsChannel(enc); err != nil {
				return nil, fmt.Errorf("%w: its prompt does not fit a device message: %w", ErrTransactionRefused, err)
			}
			r.Prompts = append(r.Prompts, PromptRecord{
				DeviceID: d.ID, User: d.User, Nonce: bytes.Clone(p.Nonce[:]), Digest: p.Digest(), Prompt: enc, IssuedAt: now,
			})
			prompts = append(prompts, p)
		}
	}
	return prompts, nil
}

// Answer is a device's answer to a prompt, as a link received it.
type Answer struct {
	// RequestID is the request of the prompt the link sent.
	RequestID string
	// Device is the id of the device whose secure channel carried the
	// answer: the identity the channel proved, not a claim.
	Device string
	// Approval is the encoded signed approval or rejection
	// ([signed.Approval.Marshal]).
	Approval []byte
}

// AnswerResult is what an accepted answer did.
type AnswerResult struct {
	// Request is the request after the answer (and, once the quorum is
	// met, after signing: signed, or failed with its Error). It is nil
	// for an answer to an admin change.
	Request *RequestRecord
	// Change is the admin change after the answer (and, once the admin
	// quorum is met, after the core applied it), for an answer to an
	// admin prompt; nil otherwise.
	Change   *ChangeRecord
	User     string
	Decision signed.Decision
	// Withdraw lists prompts nobody needs to answer any more: all of them
	// once the request is closed, or the user's prompts on other devices.
	// The caller cancels them on the devices.
	Withdraw []PromptRef
	// Prompts are new prompts to deliver: the next step's approvers, once
	// a sequential rule's step is met.
	Prompts []*signed.Prompt
}

// Answer verifies a device's answer and applies it. It accepts the answer
// only if all of these hold, in this order:
//
//  1. it parses, and names the device whose channel carried it;
//  2. that device is paired and not revoked, and its paired identity key
//     signed it;
//  3. the request exists and issued a prompt to that device whose digest
//     and nonce the answer carries;
//  4. the request is pending and has not expired (an expired one is
//     marked so);
//  5. neither the device nor its user (on any device) answered before;
//  6. its counter is above the last one accepted from the device.
//
// The device's new counter, the request with the answer and, if the
// answer approves the request for signing now, the HSM's signature (or
// why signing failed) and the transfer's spend are stored in one atomic
// write ([RequestStore.StoreAnswer]): an answer is counted with its
// counter spent, or not at all (see signWithAnswer).
//
// A rejection closes the request (rejected). An approval that brings the
// distinct approving users to the quorum has the HSM sign the transaction
// ([bitcoin.Sign], which signs only a transaction whose summary is the
// approved one); the request ends signed, or failed if signing failed.
// Each answer is counted at most once and a request is signed at most
// once.
func (c *Core) Answer(ctx context.Context, a Answer) (*AnswerResult, error) {
	if err := c.approvalPath(); err != nil {
		return nil, err
	}
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	fail := func(err error, format string, args ...any) error {
		return fmt.Errorf("%w: request %s, device %s: %s", err, a.RequestID, a.Device, fmt.Sprintf(format, args...))
	}
	appr, err := signed.ParseApproval(a.Approval)
	if err != nil {
		return nil, fail(ErrBadApproval, "%v", err)
	}
	if appr.DeviceID != a.Device {
		return nil, fail(ErrWrongDevice, "it names device %s", appr.DeviceID)
	}
	dev, err := c.cfg.Devices.GetDevice(ctx, appr.DeviceID)
	if errors.Is(err, ErrDeviceNotFound) {
		return nil, fail(ErrNotPaired, "no paired device has this id")
	}
	if err != nil {
		return nil, err
	}
	if dev.State != DevicePaired {
		return nil, fail(ErrRevoked, "its answers are refused")
	}
	if err := appr.Verify(dev.Algorithm, dev.IdentityKey); err != nil {
		return nil, fail(ErrBadApproval, "%v", err)
	}
	if IsChangeID(a.RequestID) {
		return c.answerChange(ctx, dev, appr, a, fail)
	}
	r, err := c.cfg.Requests.GetRequest(ctx, a.RequestID)
	if err != nil {
		return nil, err
	}
	p := findPrompt(r.Prompts, dev.ID)
	if p == nil {
		return nil, fail(ErrPromptMismatch, "the request issued no prompt to this device")
	}
	if !p.signedBy(appr) {
		return nil, fail(ErrPromptMismatch, "the answer signs prompt %x, the core issued %x", appr.PromptDigest[:8], p.Digest[:8])
	}
	now := c.cfg.Now()
	if r.State == RequestPending && now.After(r.ExpiresAt) {
		withdraw, err := c.expire(ctx, r)
		if err != nil {
			return nil, err
		}
		return &AnswerResult{Request: r, Withdraw: withdraw}, fail(ErrExpired, "it expired at %s", r.ExpiresAt.Format(time.RFC3339))
	}
	if r.State != RequestPending {
		return nil, fail(ErrRequestClosed, "it is %s", r.State)
	}
	if dev.User != p.User {
		return nil, fail(ErrPromptMismatch, "the prompt was issued to user %s, the device now belongs to %s", p.User, dev.User)
	}
	if answeredBy(r.Answers, dev.ID, dev.User) {
		return nil, fail(ErrAlreadyAnswered, "user %s has answered", dev.User)
	}
	if appr.Counter <= dev.Counter {
		return nil, fail(ErrReplay, "counter %d, last accepted %d", appr.Counter, dev.Counter)
	}

	// Accepted.
	dev.Counter = appr.Counter
	r.Answers = append(r.Answers, AnswerRecord{
		DeviceID: dev.ID, User: dev.User, Decision: appr.Decision, Counter: appr.Counter,
		Approval: bytes.Clone(a.Approval), At: now.UTC(),
	})
	res := &AnswerResult{Request: r, User: dev.User, Decision: appr.Decision}
	w, err := c.decide(ctx, r, res)
	if err != nil {
		return nil, err
	}
	// Withdraw what no device needs to answer any more: every outstanding
	// prompt once the request is decided, else the user's other devices'.
	res.Withdraw = append(res.Withdraw, withdrawals(r.ID, r.Prompts, r.Answers, dev, r.State != RequestPending)...)
	signNow := r.State == RequestApproved && !now.Before(r.SignAfter)
	var ledger *SpendLedger
	var interrupted error
	if signNow {
		// The HSM signs now, and the outcome is stored with the answer
		// (see signWithAnswer).
		if ledger, interrupted, err = c.signWithAnswer(ctx, r, w); err != nil {
			return nil, err
		}
	}
	if err := c.cfg.Requests.StoreAnswer(ctx, dev, r, ledger); err != nil {
		return nil, fmt.Errorf("core: request %s: store the answer of device %s: %w", r.ID, dev.ID, err)
	}
	if interrupted != nil {
		return nil, interrupted
	}
	return res, nil
}

// signWithAnswer has the HSM sign request r, approved by the answer being
// accepted, and puts the outcome in r: signed, or failed with the error.
// It returns the wallet's spend ledger to store with the answer: with r's
// transfer once signed, without it if signing failed (nil: unchanged).
// If ctx ended the signing, r stays approved, its spend counted, for
// [Core.Tick], and the interruption is returned as interrupted.
//
// The HSM signs before anything of the answer is stored, and the answer,
// the device's counter, the spend and the signed transaction are then
// stored in one write: a crash in between loses the answer and the
// signature together (the device is asked again), and nothing signed is
// ever released without its approvals and its spend stored. The velocity
// limits are checked at signing against the spends stored before r's,
// as in sign; the shared lock keeps any other signing out meanwhile, and
// the ledger's compare-and-swap refuses the write if a spend was stored
// all the same.
func (c *Core) signWithAnswer(ctx context.Context, r *RequestRecord, w *WalletRecord) (ledger *SpendLedger, interrupted, err error) {
	sum, err := r.ParsedSummary()
	if err != nil {
		return nil, nil, fmt.Errorf("core: request %s: stored summary: %w", r.ID, err)
	}
	l, err := c.cfg.Requests.Spends(ctx, r.Wallet)
	if err != nil {
		return nil, nil, fmt.Errorf("core: wallet %s: read its spend ledger: %w", r.Wallet, err)
	}
	signedTx, err := c.signTransaction(ctx, r, w)
	now := c.cfg.Now().UTC()
	switch {
	case err != nil && ctx.Err() != nil:
		// Interrupted, not refused.
		if c.addSpend(l, r, int64(sum.SentTotal)) {
			ledger = l
		}
		return ledger, fmt.Errorf("core: request %s: signing interrupted; it stays approved: %w", r.ID, err), nil
	case err != nil:
		// Nothing to count (a spend of r's stored before is dropped).
		if dropSpend(l, r) {
			ledger = l
		}
		r.State, r.FinishedAt, r.Error = RequestFailed, now, err.Error()
	default:
		if c.addSpend(l, r, int64(sum.SentTotal)) {
			ledger = l
		}
		r.State, r.FinishedAt = RequestSigned, now
		r.SignedPSBT, r.SignedTx = signedTx.psbt, signedTx.tx
	}
	return ledger, nil, nil
}

// decide evaluates the request's policy after an answer and moves it on:
// rejected, failed (refused by the policy, say over a velocity limit now),
// approved (signable after SignAfter), withdrawn (its policy version is no
// longer the wallet's), or still pending, with prompts for the approvers
// the next step needs.
func (c *Core) decide(ctx context.Context, r *RequestRecord, res *AnswerResult) (*WalletRecord, error) {
	now := c.cfg.Now().UTC()
	w, err := c.cfg.Wallets.GetWallet(ctx, r.Wallet)
	if err != nil {
		return nil, err
	}
	if w.CurrentPolicyVersion() != r.requestPolicyVersion() {
		r.State, r.FinishedAt = RequestWithdrawn, now
		r.Error = fmt.Sprintf("the wallet's policy is version %d, the request was submitted under version %d: submit it again", w.CurrentPolicyVersion(), r.requestPolicyVersion())
		return w, nil
	}
	p, err := w.Policy()
	if err != nil {
		return nil, err
	}
	d, err := c.evaluate(ctx, p, r, storedAnswers(r), nil)
	if err != nil {
		return nil, err
	}
	switch d.Outcome {
	case policy.Rejected:
		r.State, r.FinishedAt, r.Error = RequestRejected, now, d.Reason
	case policy.Refused:
		r.State, r.FinishedAt, r.Error = RequestFailed, now, "refused by the policy: "+d.Reason
	case policy.Approved:
		r.State, r.SignAfter = RequestApproved, d.SignAfter
	case policy.Pending:
		sum, err := r.ParsedSummary()
		if err != nil {
			return nil, err
		}
		devices, err := c.cfg.Devices.CurrentDevices(ctx)
		if err != nil {
			return nil, err
		}
		res.Prompts, err = c.issuePrompts(r, sum, d.Ask, devices, now)
		if err != nil {
			return nil, err
		}
	}
	return w, nil
}

// sign has the HSM sign an approved request and stores the outcome:
// signed, or failed with the error. It returns an error when the outcome
// could not be stored, or when ctx ended the signing (the request then
// stays approved, for [Core.Tick]).
func (c *Core) sign(ctx context.Context, r *RequestRecord) error {
	// The spend is recorded first, so that the velocity check at signing
	// counts exactly the spends recorded before it, whichever hsmd
	// instance recorded them.
	sum, err := r.ParsedSummary()
	if err != nil {
		return fmt.Errorf("core: request %s: stored summary: %w", r.ID, err)
	}
	if err := c.recordSpend(ctx, r, int64(sum.SentTotal)); err != nil {
		return fmt.Errorf("core: request %s: not signed, it stays approved: %w", r.ID, err)
	}
	signedTx, err := c.signTransaction(ctx, r, nil)
	if err != nil && ctx.Err() != nil {
		// Interrupted, not refused: the request stays approved and the
		// next Tick signs it.
		return fmt.Errorf("core: request %s: signing interrupted; it stays approved: %w", r.ID, err)
	}
	now := c.cfg.Now().UTC()
	if err != nil {
		if ferr := c.forgetSpend(ctx, r); ferr != nil {
			// Counted though not sent: stricter, and said.
			err = fmt.Errorf("%w (its spend stays counted against the velocity limits: %w)", err, ferr)
		}
		r.State, r.FinishedAt, r.Error = RequestFailed, now, err.Error()
	} else {
		r.State, r.FinishedAt = RequestSigned, now
		r.SignedPSBT, r.SignedTx = signedTx.psbt, signedTx.tx
	}
	if err := c.cfg.Requests.UpdateRequest(ctx, r); err != nil {
		return fmt.Errorf("core: request %s: store the outcome of signing (%s): %w", r.ID, r.State, err)
	}
	return nil
}

type signedTransaction struct{ psbt, tx []byte }

// signTransaction has the HSM sign approved request r, once its approvals
// are counted again (checkApprovals); w is r's wallet as read under the
// same lock, or nil to read it.
func (c *Core) signTransaction(ctx context.Context, r *RequestRecord, w *WalletRecord) (*signedTransaction, error) {
	if c.cfg.Custody == nil {
		return nil, errors.New("core: no HSM signer configured for custody keys")
	}
	if w == nil {
		var err error
		if w, err = c.cfg.Wallets.GetWallet(ctx, r.Wallet); err != nil {
			return nil, err
		}
	}
	if w.Network != r.Network {
		return nil, fmt.Errorf("core: wallet %s is on %s, the request on %s", w.Name, w.Network, r.Network)
	}
	bw, err := w.bitcoinWallet(r.WalletKeys)
	if err != nil {
		return nil, err
	}
	if err := c.checkApprovals(ctx, r, w); err != nil {
		return nil, err
	}
	packet, err := bitcoin.Parse(r.PSBT)
	if err != nil {
		return nil, err
	}
	s, err := bitcoin.Sign(ctx, c.cfg.Custody, bitcoin.SignRequest{Packet: packet, Wallet: bw, Approved: r.Summary})
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := s.Packet.Serialize(&b); err != nil {
		return nil, fmt.Errorf("core: serialize the signed PSBT: %w", err)
	}
	tx, err := s.Bytes()
	if err != nil {
		return nil, err
	}
	return &signedTransaction{psbt: b.Bytes(), tx: tx}, nil
}

// ErrNotApproved means a request reached signing without the approvals its
// policy needs: the stored request claims more than its answers prove.
var ErrNotApproved = errors.New("core: not enough verified approvals")

// checkApprovals is the precondition of every signature, checked where the
// HSM is asked to sign rather than trusted from the request's stored state:
// the request's policy version must still be the wallet's, and the policy,
// evaluated on the answers whose signatures verify (each under the key of
// a paired, unrevoked device, over the prompt the core issued to that
// device), must approve it, its time lock passed.
func (c *Core) checkApprovals(ctx context.Context, r *RequestRecord, w *WalletRecord) error {
	if w.CurrentPolicyVersion() != r.requestPolicyVersion() {
		return fmt.Errorf("%w: request %s was approved under policy version %d, the wallet's is %d; refusing to sign", ErrNotApproved, r.ID, r.requestPolicyVersion(), w.CurrentPolicyVersion())
	}
	p, err := w.Policy()
	if err != nil {
		return err
	}
	verified, err := c.verifiedAnswers(ctx, r.Prompts, r.Answers, func(*DeviceRecord) bool { return true })
	if err != nil {
		return err
	}
	answers := make([]policy.Answer, 0, len(verified))
	for _, v := range verified {
		answers = append(answers, policy.Answer{User: v.User, Approve: v.Decision == signed.Approve, At: v.At})
	}
	d, err := c.evaluate(ctx, p, r, answers, nil)
	if err != nil {
		return err
	}
	if d.Outcome != policy.Approved {
		why := d.Reason
		if why == "" {
			why = strings.Join(d.Missing, "; ")
		}
		return fmt.Errorf("%w: request %s is %s under its policy (%s); refusing to sign", ErrNotApproved, r.ID, d.Outcome, why)
	}
	if !d.Ready(c.cfg.Now()) {
		return fmt.Errorf("%w: request %s is time-locked until %s; refusing to sign", ErrNotApproved, r.ID, signAfterText(d.SignAfter))
	}
	return nil
}

// expire marks a pending request expired and returns its open prompts.
func (c *Core) expire(ctx context.Context, r *RequestRecord) ([]PromptRef, error) {
	withdraw := openPrompts(r.ID, r.Prompts, r.Answers)
	r.State, r.FinishedAt = RequestExpired, r.ExpiresAt
	if err := c.cfg.Requests.UpdateRequest(ctx, r); err != nil {
		return nil, fmt.Errorf("core: request %s: store its expiry: %w", r.ID, err)
	}
	return withdraw, nil
}

// Tick stores the expiry of pending requests and admin changes past their
// expiry, signs requests left approved but unsigned (by a crash between
// the two writes) or whose time lock ended, and applies approved admin
// changes a crash left unapplied. It returns the prompts to withdraw from
// devices. It is [Core.DueRequests] and then [Core.TickDue]; a daemon that
// serialises its writers calls the two apart, the first outside its lock.
// Reads already show an overdue request as expired.
func (c *Core) Tick(ctx context.Context) ([]PromptRef, error) {
	due, err := c.DueRequests(ctx)
	if err != nil {
		return nil, err
	}
	withdraw, _, err := c.TickDue(ctx, due)
	return withdraw, err
}

// DueRequests returns the requests upkeep must act on now: pending past
// their expiry, or approved and past their time lock. It reads every
// request, but only its status, and takes no lock, so that the read does
// not hold up approvals; [Core.TickDue] reads each again before it acts.
func (c *Core) DueRequests(ctx context.Context) ([]RequestStatus, error) {
	if err := c.approvalPath(); err != nil {
		return nil, err
	}
	sts, err := c.cfg.Requests.ListRequestStatus(ctx)
	if err != nil {
		return nil, err
	}
	now := c.cfg.Now()
	var due []RequestStatus
	for _, st := range sts {
		if st.due(now) {
			due = append(due, st)
		}
	}
	return due, nil
}

// TickDue acts on the requests due (from [Core.DueRequests]), each as it
// stands when read again here: it stores the expiry of those still pending
// past their expiry and signs those still approved past their time lock.
// It then does the same upkeep for admin changes (see [Core.Tick]). It
// returns the prompts to withdraw and the ids of the requests it tried to
// sign, whose outcome the daemon audits.
func (c *Core) TickDue(ctx context.Context, due []RequestStatus) (withdraw []PromptRef, signing []string, err error) {
	if err := c.approvalPath(); err != nil {
		return nil, nil, err
	}
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	now := c.cfg.Now()
	var errs []error
	for _, d := range due {
		r, err := c.cfg.Requests.GetRequest(ctx, d.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		st := RequestStatus{ID: r.ID, State: r.State, ExpiresAt: r.ExpiresAt, SignAfter: r.SignAfter}
		switch {
		case !st.due(now):
			// Answered, signed or closed since it was read.
		case r.State == RequestPending:
			w, err := c.expire(ctx, r)
			withdraw = append(withdraw, w...)
			errs = append(errs, err)
		default:
			signing = append(signing, r.ID)
			errs = append(errs, c.sign(ctx, r))
		}
	}
	w, err := c.tickChanges(ctx)
	withdraw = append(withdraw, w...)
	errs = append(errs, err)
	return withdraw, signing, errors.Join(errs...)
}

// Request returns a request as it stands now.
func (c *Core) Request(ctx context.Context, id string) (*RequestRecord, error) {
	if err := c.approvalPath(); err != nil {
		return nil, err
	}
	r, err := c.cfg.Requests.GetRequest(ctx, id)
	if err != nil {
		return nil, err
	}
	return r.effective(c.cfg.Now()), nil
}

// Requests lists the requests as they stand now, oldest first.
func (c *Core) Requests(ctx context.Context) ([]*RequestRecord, error) {
	if err := c.approvalPath(); err != nil {
		return nil, err
	}
	rs, err := c.cfg.Requests.ListRequests(ctx)
	if err != nil {
		return nil, err
	}
	now := c.cfg.Now()
	for _, r := range rs {
		r.effective(now)
	}
	slices.SortStableFunc(rs, func(a, b *RequestRecord) int { return oldestFirst(a.CreatedAt, a.ID, b.CreatedAt, b.ID) })
	return rs, nil
}

// PendingPrompts returns the prompts a device has yet to answer, oldest
// request first, then admin changes: those of pending, unexpired requests
// and changes that neither the device nor its user answered. The daemon
// sends them when the device's channel comes up.
//
// Each is issued afresh (see [Core.reissue]): the same prompt under a new
// nonce, which replaces the one stored. A device refuses a prompt it has
// answered before, so one whose answer was lost on the way (the channel
// went down first) could otherwise never be answered again; an answer to
// the prompt it replaces is refused as not for the prompt issued.
func (c *Core) PendingPrompts(ctx context.Context, deviceID string) ([]*signed.Prompt, error) {
	if err := c.approvalPath(); err != nil {
		return nil, err
	}
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	// Only the requests with a prompt open for this device are kept.
	var rs []*RequestRecord
	now := c.cfg.Now()
	err := c.cfg.Requests.EachRequest(ctx, func(r *RequestRecord) error {
		if p := findPrompt(r.Prompts, deviceID); p != nil && r.effective(now).State == RequestPending && !answeredBy(r.Answers, p.DeviceID, p.User) {
			rs = append(rs, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(rs, func(a, b *RequestRecord) int { return oldestFirst(a.CreatedAt, a.ID, b.CreatedAt, b.ID) })
	var out []*signed.Prompt
	for _, r := range rs {
		sp, err := c.reissueOpen("request "+r.ID, r.Prompts, r.Answers, deviceID, func() error { return c.cfg.Requests.UpdateRequest(ctx, r) })
		if err != nil {
			return nil, err
		}
		if sp != nil {
			out = append(out, sp)
		}
	}
	cps, err := c.pendingChangePrompts(ctx, deviceID)
	if err != nil {
		return nil, err
	}
	return append(out, cps...), nil
}

// reissueOpen issues afresh the prompt for deviceID of a pending request
// or change (what names it: "request ID", "change ID"), unless there is
// none or the device or its user answered it, and stores the record that
// holds prompts with store. It returns nil when there is nothing to issue.
func (c *Core) reissueOpen(what string, prompts []PromptRecord, answers []AnswerRecord, deviceID string, store func() error) (*signed.Prompt, error) {
	p := findPrompt(prompts, deviceID)
	if p == nil || answeredBy(answers, p.DeviceID, p.User) {
		return nil, nil
	}
	sp, err := c.reissue(p)
	if err != nil {
		return nil, fmt.Errorf("core: %s: prompt for device %s: %w", what, deviceID, err)
	}
	if err := store(); err != nil {
		return nil, fmt.Errorf("core: %s: store the prompt issued again to device %s: %w", what, deviceID, err)
	}
	return sp, nil
}

// reissue replaces the stored prompt pr by the same prompt under a fresh
// nonce, signed again by the HSM identity key, and returns it.
func (c *Core) reissue(pr *PromptRecord) (*signed.Prompt, error) {
	p, err := signed.ParsePrompt(pr.Prompt)
	if err != nil {
		return nil, fmt.Errorf("stored prompt: %w", err)
	}
	if _, err := io.ReadFull(c.cfg.Rand, p.Nonce[:]); err != nil {
		return nil, fmt.Errorf("prompt nonce: %w", err)
	}
	if err := p.Sign(c.cfg.Identity); err != nil {
		return nil, fmt.Errorf("sign the prompt with the HSM identity key: %w", err)
	}
	pr.Nonce, pr.Digest, pr.Prompt, pr.IssuedAt = bytes.Clone(p.Nonce[:]), p.Digest(), p.Marshal(), c.cfg.Now().UTC()
	return p, nil
}
