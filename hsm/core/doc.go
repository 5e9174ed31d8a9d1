// Package core is OpenCustody's trusted approval logic: the small part of
// the custody service that decides which devices may talk to the HSM, binds
// new devices to people, and what gets signed.
//
// # What "I/O-free" means here
//
// The core opens no socket, file or database and reads no clock or random
// source of its own. It takes inputs (envelopes from a device, an
// operator's decision) and returns outputs (envelopes for the device,
// events for the operator) and decisions. What it needs from the outside
// comes in through small interfaces and fields:
//
//   - [Config.Identity]: the HSM identity key, a [signed.Signer] whose
//     private half never leaves the HSM;
//   - [Config.Devices], [Config.Wallets], [Config.Requests]: device, wallet
//     and request records, authenticated by the HSM record key in the
//     storage layer (package records), so a hostile database cannot add or
//     re-enable a device, add an approver, lower a quorum or forge an
//     approval unnoticed;
//   - [Config.Custody] and [Config.Keys]: the HSM's custody keys, which
//     sign transactions and are made for new addresses;
//   - [Config.Now] and [Config.Rand].
//
// hsmd is the I/O shell around it. With a plain PKCS#11 HSM the core runs
// in hsmd's process next to the HSM, so that host is inside the trust
// boundary; keeping the core this small is what lets it be audited on its
// own and later moved into an HSM's secure execution environment.
//
// # Devices
//
// Each device a bridge announces gets a [Link]. Everything the bridge says
// about the device is a claim: the core believes only what the device
// proves in the secure channel's handshake (package channel). A paired,
// unrevoked device gets a full channel; an unknown device gets a channel
// only when an operator pairs it; a revoked device gets none.
//
// # Pairing
//
// Pairing binds a device's identity key to a user and role, after both the
// device's user and the operator confirmed the same six-digit code (package
// pairing). Direct pairing is allowed only in ceremony mode
// ([Config.Ceremony]): the key ceremony at the HSM's console that pairs the
// first admins and sets the admin quorum ([Core.EndCeremony] ends it).
// Outside it, once an admin quorum is set, the same steps end in an admin
// change ([ChangePairing], event [PairingProposed]) instead of a stored
// record: the device pins the HSM key, the admins' screens show its
// fingerprint, user and role, and the record is stored, and the device
// given a channel, only once the admin quorum approved. A device whose
// pairing the admins rejected must be reset before it is paired again.
//
// # Attestation
//
// With [Config.AttestationRoots] set, the core pairs only devices whose
// vendor vouches for them: the attestation chain in the device's Features
// must certify, under one of those roots, the identity key the device
// proved in the handshake (firmware-spec/attestation.md). The chain travels
// through the bridge like the rest of Features; because it is checked
// against the proved key, a bridge can withhold it (and so prevent the
// pairing) but cannot lend one device's chain to another. The verified
// root and subject name are stored in the record
// ([DeviceRecord.Attestation]). The emulator's chain ends at the
// development root, which anyone can issue under: a core configured with
// other roots refuses the emulator.
//
// # Wallets
//
// A wallet ([WalletRecord]) is a set of custody keys on one Bitcoin
// network, one key per address ([Core.NewAddress] makes each in the HSM),
// and who approves its transfers: m of n users, or a policy document
// ([Core.CreateWallet]; every approver must have a paired device). Quorums
// count users, not devices: a user with several devices answers once.
//
// # Approving a transfer
//
// [Core.Submit] takes a PSBT from an untrusted submitter. Package bitcoin
// checks that the wallet can sign it and derives its summary from the
// transaction and the wallet alone; the core evaluates the wallet's policy,
// stores a pending request and builds one prompt per paired device of the
// approvers its rule asks first (never the initiator's): the
// fields of [TransferFields] (wallet, request, each destination and
// amount, change, fee, expiry: nothing the submitter wrote), the summary's
// canonical encoding as payload, a fresh nonce, the device's id and the
// request's expiry (the policy's, or [Config.PromptExpiry]), signed by the
// HSM identity key
// (package signed defines the bytes; firmware-spec/approval.md is the
// device's side).
//
// The daemon hands each prompt to the device's [Link] ([Link.SendPrompt]),
// which sends it through the secure channel when the device is free and
// reports the device's answer as an [ApprovalReceived] event. Prompts a
// device has not answered are sent again when its channel comes up
// ([Core.PendingPrompts]).
//
// [Core.Answer] decides, under the wallet's policy (see Policy below). It
// accepts an answer only from the paired, unrevoked device whose channel
// carried it and whose identity key signed
// it, for the exact prompt (digest and nonce) the core issued to that
// device, before the request's expiry, once per user, and with a counter
// above the last one the device used (stored before anything else). A
// rejection closes the request (single veto, unless the policy turns it
// off). When the policy's rule is met and its time lock has passed, the
// HSM signs every input through [bitcoin.Sign], which signs
// only a transaction whose summary is the approved one; the request ends
// signed, with the finalized PSBT and the transaction, or failed. Answers
// that close a request, or that make a user's other devices' prompts moot,
// come back with the prompts to withdraw ([Link.WithdrawPrompt]).
// [Core.Tick] stores expiries, signs requests whose time lock ended, and
// finishes a signing a crash interrupted.
//
// # Policy
//
// Who must approve is the wallet's policy (package policy): approver
// groups, rules combining them, amount tiers, an allow-list, velocity
// limits, prompt expiry, a time lock and single veto. A wallet made with
// approvers and a quorum has the default policy of that m of n
// ([policy.Default]); [CreateWalletRequest.Policy] or an admin change
// ([ChangePolicy], [Core.ProposePolicy]) sets a document. Each policy
// has a version, 1 at creation and one more per change.
//
// The core evaluates the policy ([policy.Policy.Evaluate]) at every step,
// with the wallet's signed transfers as velocity history: at submission
// (a transfer the policy refuses is refused with [ErrPolicyRefused]; one
// whose rule the users with a paired device, the initiator excepted,
// cannot meet with [ErrQuorumUnreachable]); after every accepted answer
// (rejected, failed if now refused, approved, or still pending, with
// prompts for the next step of a sequential rule in
// [AnswerResult.Prompts]); and again in the signing step, on the answers
// whose signatures it verifies anew, which must approve the transfer with
// its time lock passed. An approved request whose time lock has not
// ended is signed by [Core.Tick] once it has. [Core.ExplainTransfer]
// says which rule applies to a PSBT and what it needs, without storing
// or signing anything.
//
// The initiator: [SubmitRequest.Initiator] names the user on whose behalf
// a request is submitted. The Custody API's callers share the operator
// token, so the core cannot verify the name; it only ever makes the
// policy stricter: the initiator gets no prompt and their answers never
// count (and may not approve their own admin change either).
//
// Pending requests and policy changes: a request is evaluated only under
// the policy version it was submitted with ([RequestRecord.PolicyVersion]),
// and applying a policy change withdraws every pending or time-locked
// request of the wallet ([RequestWithdrawn]; its prompts are withdrawn
// from the devices); the initiator submits it again under the new policy.
// Approvals are given under the rules the approvers knew: re-evaluating
// them under a looser policy would sign on fewer approvals than they
// expected, and under a stricter one (a departed approver removed) would
// still count the departed approver's approval. The signing step refuses
// a request whose version is no longer the wallet's, whatever its state.
//
// # Admin changes
//
// Changes to how the HSM is governed (a wallet's policy, and kinds other
// packages add, such as registering a backup target) are not made by an
// operator's call but proposed, and carried out only once the admin quorum
// approved them on their own devices. The admin quorum is the governance
// record's ([GovernanceRecord]), set at the key ceremony
// ([Core.SetAdminQuorum], ceremony mode only); the admins are the users
// with a paired, unrevoked device of role admin.
//
// Each kind of change ([ChangeKind]) has a [ChangeHandler], trusted code
// of the core: [ChangeHandler.Describe] checks a proposed payload and
// builds the fields the admins' screens show (a readable diff: nothing the
// proposer wrote for the screen). Kinds the core defines itself come
// first; [Config.ChangeHandlers] adds others.
//
//   - [Core.ProposeChange] stores a pending [ChangeRecord] and returns its
//     prompts ([signed.PromptAdmin], title [ChangeTitle]), one per admin
//     device except the initiator's: the initiator may not approve their
//     own change. The payload of each prompt is SHA-256 of the change
//     statement ([ChangeStatement]), which binds the change's id, kind,
//     subject, initiator and payload. The daemon delivers the prompts
//     like a transfer's; ids start with "chg-" ([IsChangeID]).
//   - [Core.Answer] takes the admins' answers like any other: the same
//     checks, plus the device's role must still be admin. One rejection
//     stops the change. When the approving admins reach the quorum, the
//     core recounts the verified approvals and, for a handler that is a
//     [ChangeApplier], applies the change at once: it ends applied (with
//     a Result) or failed. [AnswerResult.Change] says what became of it.
//   - A change whose handler is not a ChangeApplier stays approved: the
//     daemon carries it out (it may need I/O, such as talking to another
//     HSM), after [Core.ApprovedChange] recounted its approvals, and
//     reports with [Core.CompleteChange].
//   - [Core.Tick] expires overdue changes and applies approved ones a
//     crash interrupted; [Core.PendingPrompts] includes admin prompts;
//     [Core.Change] and [Core.Changes] read them.
//
// Change records and the governance record are kept in [Config.Changes],
// authenticated by the HSM record key like every other record.
package core
