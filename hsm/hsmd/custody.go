package hsmd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// custodyService serves the Custody API: wallets and requests. The core
// decides everything; this only converts messages and hands the prompts
// of a new request to the devices' links.
type custodyService struct {
	apipb.UnimplementedCustodyServer
	s *Server
}

// custodyError maps the approval path's errors to gRPC codes. An integrity
// failure is never hidden.
func custodyError(err error) error {
	switch {
	case errors.Is(err, records.ErrIntegrity):
		return status.Error(codes.DataLoss, "hsmd: refusing a stored record that failed authentication: "+err.Error())
	case errors.Is(err, core.ErrWalletNotFound), errors.Is(err, core.ErrRequestNotFound), errors.Is(err, core.ErrChangeNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, core.ErrNoInitiator), errors.Is(err, core.ErrChangeRefused):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, core.ErrPolicyRefused):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, core.ErrNoGovernance):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, core.ErrWalletExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, core.ErrInvalidWallet):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, core.ErrTransactionRefused), errors.Is(err, core.ErrQuorumUnreachable), errors.Is(err, core.ErrNoApprovalPath):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func (c *custodyService) CreateWallet(ctx context.Context, req *apipb.CreateWalletRequest) (*apipb.Wallet, error) {
	n, err := bitcoin.ParseNetwork(req.GetNetwork())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var w *core.WalletRecord
	err = c.s.exclusive(ctx, func() (err error) {
		w, err = c.s.cfg.Core.CreateWallet(ctx, core.CreateWalletRequest{
			Name: req.GetName(), Network: n, Approvers: req.GetApprovers(), Quorum: int(req.GetQuorum()), Policy: req.GetPolicy(),
			Backupable: req.GetBackupable(),
		})
		return err
	})
	if err != nil {
		return nil, custodyError(err)
	}
	c.s.log.Info("wallet created", "wallet", w.Name, "network", w.Network.String(), "approvers", w.Approvers, "quorum", w.Quorum, "backupable", w.Backupable)
	if len(req.GetPolicy()) > 0 {
		c.s.record(ctx, audit.KindPolicy, w.Name, fmt.Sprintf("wallet %s created with policy version 1: %s", w.Name, w.PolicyDoc))
	}
	return walletMessage(w)
}

func (c *custodyService) NewAddress(ctx context.Context, req *apipb.NewAddressRequest) (*apipb.NewAddressResponse, error) {
	var w *core.WalletRecord
	var k core.WalletKey
	err := c.s.exclusive(ctx, func() (err error) {
		w, k, err = c.s.cfg.Core.NewAddress(ctx, req.GetWallet())
		return err
	})
	if err != nil {
		return nil, custodyError(err)
	}
	a, err := addressMessage(w, k)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	c.s.log.Info("custody key made", "wallet", w.Name, "index", k.Index, "address", a.GetAddress())
	return &apipb.NewAddressResponse{Wallet: w.Name, Address: a}, nil
}

func (c *custodyService) GetWallet(ctx context.Context, req *apipb.GetWalletRequest) (*apipb.Wallet, error) {
	w, err := c.s.cfg.Core.Wallet(ctx, req.GetName())
	if err != nil {
		return nil, custodyError(err)
	}
	return walletMessage(w)
}

func (c *custodyService) ListWallets(ctx context.Context, _ *apipb.ListWalletsRequest) (*apipb.ListWalletsResponse, error) {
	ws, err := c.s.cfg.Core.Wallets(ctx)
	if err != nil {
		return nil, custodyError(err)
	}
	out := &apipb.ListWalletsResponse{}
	for _, w := range ws {
		m, err := walletMessage(w)
		if err != nil {
			return nil, err
		}
		out.Wallets = append(out.Wallets, m)
	}
	return out, nil
}

func (c *custodyService) Submit(ctx context.Context, req *apipb.SubmitRequest) (*apipb.Request, error) {
	var sub *core.Submitted
	err := c.s.exclusive(ctx, func() (err error) {
		sub, err = c.s.cfg.Core.Submit(ctx, core.SubmitRequest{Wallet: req.GetWallet(), Initiator: req.GetInitiator(), PSBT: req.GetPsbt()})
		return err
	})
	if err != nil {
		c.s.log.Warn("request refused", "wallet", req.GetWallet(), "err", err)
		return nil, custodyError(err)
	}
	r := sub.Request
	c.s.metrics.requests.WithLabelValues("submitted").Inc()
	c.s.log.Info("request submitted", "request", r.ID, "wallet", r.Wallet, "txid", r.TxID, "prompts", len(sub.Prompts), "expires", r.ExpiresAt)
	recorded := c.s.queueRecord(audit.KindRequest, r.ID, fmt.Sprintf("submitted by %s: wallet %s, txid %s, policy version %d, %s, %d prompts", r.Initiator, r.Wallet, r.TxID, r.PolicyVersion, r.Rule, len(sub.Prompts)))
	// Devices connected now get their prompt now, while the entry above
	// (queued first, so ahead of theirs) is written; the others when
	// their channel comes up.
	c.s.background(func(ctx context.Context) { c.s.sendPrompts(ctx, sub.Prompts) })
	recorded(ctx)
	return requestMessage(r, false)
}

func (c *custodyService) ListRequests(ctx context.Context, req *apipb.ListRequestsRequest) (*apipb.ListRequestsResponse, error) {
	rs, err := c.s.cfg.Core.Requests(ctx)
	if err != nil {
		return nil, custodyError(err)
	}
	out := &apipb.ListRequestsResponse{}
	for _, r := range rs {
		if (req.GetWallet() != "" && r.Wallet != req.GetWallet()) ||
			(req.GetState() != apipb.RequestState_REQUEST_STATE_UNSPECIFIED && apiRequestState(r.State) != req.GetState()) {
			continue
		}
		m, err := requestMessage(r, false)
		if err != nil {
			return nil, err
		}
		out.Requests = append(out.Requests, m)
	}
	return out, nil
}

func (c *custodyService) GetRequest(ctx context.Context, req *apipb.GetRequestRequest) (*apipb.Request, error) {
	r, err := c.s.cfg.Core.Request(ctx, req.GetId())
	if err != nil {
		return nil, custodyError(err)
	}
	m, err := requestMessage(r, true)
	if err != nil {
		return nil, err
	}
	if r.State == core.RequestPending {
		if ex, err := c.s.cfg.Core.ExplainRequest(ctx, r.ID); err == nil {
			m.PolicyNeeds, m.PolicyMissing = ex.Decision.Needs, ex.Decision.Missing
		}
	}
	return m, nil
}

func (c *custodyService) GetPolicy(ctx context.Context, req *apipb.GetPolicyRequest) (*apipb.Policy, error) {
	w, err := c.s.cfg.Core.Wallet(ctx, req.GetWallet())
	if err != nil {
		return nil, custodyError(err)
	}
	p, err := w.Policy()
	if err != nil {
		return nil, custodyError(err)
	}
	return &apipb.Policy{Wallet: w.Name, Version: w.CurrentPolicyVersion(), Document: p.Marshal(), Lines: p.Lines()}, nil
}

func (c *custodyService) ProposePolicy(ctx context.Context, req *apipb.ProposePolicyRequest) (*apipb.Change, error) {
	var prop *core.Proposed
	err := c.s.exclusive(ctx, func() (err error) {
		prop, err = c.s.cfg.Core.ProposePolicy(ctx, req.GetWallet(), req.GetDocument(), req.GetInitiator())
		return err
	})
	if err != nil {
		c.s.log.Warn("policy change refused", "wallet", req.GetWallet(), "err", err)
		return nil, custodyError(err)
	}
	c.s.proposed(ctx, prop)
	return changeMessage(prop.Change), nil
}

func (c *custodyService) TestPolicy(ctx context.Context, req *apipb.TestPolicyRequest) (*apipb.PolicyDecision, error) {
	ex, err := c.s.cfg.Core.ExplainTransfer(ctx, core.SubmitRequest{Wallet: req.GetWallet(), Initiator: req.GetInitiator(), PSBT: req.GetPsbt()})
	if err != nil {
		return nil, custodyError(err)
	}
	d := ex.Decision
	return &apipb.PolicyDecision{
		Outcome: d.Outcome.String(), Rule: d.Rule, Needs: d.Needs, Missing: d.Missing, Reason: d.Reason,
		Explanation: d.Explanation, Ask: d.Ask, Eligible: d.Eligible, PolicyVersion: ex.PolicyVersion,
		Summary: summaryMessage(ex.Summary),
	}, nil
}

// proposed logs and audits a new admin change and hands its prompts to
// the admins' devices.
func (s *Server) proposed(ctx context.Context, prop *core.Proposed) {
	ch := prop.Change
	kind := changeAuditKind(ch.Kind)
	var shown []string
	for _, f := range ch.Fields {
		shown = append(shown, f.Label+": "+f.Value)
	}
	s.log.Info("admin change proposed", "change", ch.ID, "kind", string(ch.Kind), "subject", ch.Subject, "initiator", ch.Initiator, "prompts", len(prop.Prompts))
	s.record(ctx, kind, ch.ID, fmt.Sprintf("%s %s proposed by %s, %d of %v to approve: %s", ch.Kind, ch.Subject, ch.Initiator, ch.Quorum, ch.Admins, strings.Join(shown, "; ")))
	s.background(func(ctx context.Context) { s.sendPrompts(ctx, prop.Prompts) })
}

func changeMessage(ch *core.ChangeRecord) *apipb.Change {
	m := &apipb.Change{
		Id: ch.ID, Kind: string(ch.Kind), Subject: ch.Subject, State: string(ch.State), Initiator: ch.Initiator,
		Admins: ch.Admins, Quorum: uint32(ch.Quorum), ApprovedBy: ch.ApprovedBy(), RejectedBy: ch.RejectedBy(),
		CreatedAt: ch.CreatedAt.Unix(), ExpiresAt: ch.ExpiresAt.Unix(), FinishedAt: unixOrZero(ch.FinishedAt),
		Result: ch.Result, Error: ch.Error,
	}
	for _, f := range ch.Fields {
		m.Fields = append(m.Fields, &apipb.ChangeField{Label: f.Label, Value: f.Value})
	}
	return m
}

func walletMessage(w *core.WalletRecord) (*apipb.Wallet, error) {
	m := &apipb.Wallet{
		Name: w.Name, Network: w.Network.String(), Approvers: w.Approvers, Quorum: uint32(w.Quorum),
		CreatedAt: w.CreatedAt.Unix(), PolicyVersion: w.CurrentPolicyVersion(), Backupable: w.Backupable,
	}
	for _, k := range w.Keys {
		a, err := addressMessage(w, k)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		m.Addresses = append(m.Addresses, a)
	}
	return m, nil
}

func addressMessage(w *core.WalletRecord, k core.WalletKey) (*apipb.WalletAddress, error) {
	addr, err := k.Address(w.Network)
	if err != nil {
		return nil, fmt.Errorf("hsmd: wallet %s key %d: %w", w.Name, k.Index, err)
	}
	return &apipb.WalletAddress{Index: k.Index, Address: addr, PublicKey: k.PublicKey, KeyRef: k.Ref, CreatedAt: k.CreatedAt.Unix()}, nil
}

func apiRequestState(s core.RequestState) apipb.RequestState {
	switch s {
	case core.RequestPending:
		return apipb.RequestState_REQUEST_STATE_PENDING
	case core.RequestApproved:
		return apipb.RequestState_REQUEST_STATE_APPROVED
	case core.RequestSigned:
		return apipb.RequestState_REQUEST_STATE_SIGNED
	case core.RequestRejected:
		return apipb.RequestState_REQUEST_STATE_REJECTED
	case core.RequestExpired:
		return apipb.RequestState_REQUEST_STATE_EXPIRED
	case core.RequestFailed:
		return apipb.RequestState_REQUEST_STATE_FAILED
	case core.RequestWithdrawn:
		return apipb.RequestState_REQUEST_STATE_WITHDRAWN
	}
	return apipb.RequestState_REQUEST_STATE_UNSPECIFIED
}

func summaryMessage(sum *bitcoin.Summary) *apipb.TransferSummary {
	m := &apipb.TransferSummary{
		Txid: sum.TxID.String(), Network: sum.Network.String(), Inputs: uint32(len(sum.Inputs)),
		InputTotal: int64(sum.InputTotal), SentTotal: int64(sum.SentTotal), ChangeTotal: int64(sum.ChangeTotal), Fee: int64(sum.Fee),
		Vsize: sum.VSize, FeeRateSatPerKvb: int64(sum.FeeRate), LockTime: sum.LockTime,
	}
	for _, o := range sum.Outputs {
		m.Outputs = append(m.Outputs, &apipb.TransferOutput{Amount: int64(o.Amount), Address: o.Address, Change: o.Change, Dust: o.Dust})
	}
	return m
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// requestMessage converts a request; withResult adds the signed PSBT and
// transaction.
func requestMessage(r *core.RequestRecord, withResult bool) (*apipb.Request, error) {
	sum, err := r.ParsedSummary()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "hsmd: request %s: stored summary: %v", r.ID, err)
	}
	m := &apipb.Request{
		Id: r.ID, Wallet: r.Wallet, State: apiRequestState(r.State), Quorum: uint32(r.Quorum), Approvers: r.Approvers,
		ApprovedBy: r.ApprovedBy(), RejectedBy: r.RejectedBy(),
		CreatedAt: r.CreatedAt.Unix(), ExpiresAt: r.ExpiresAt.Unix(), FinishedAt: unixOrZero(r.FinishedAt),
		Error: r.Error, SummaryCanonical: r.Summary, Summary: summaryMessage(sum),
		Initiator: r.Initiator, PolicyVersion: max(r.PolicyVersion, 1), Rule: r.Rule, SignAfter: unixOrZero(r.SignAfter),
	}
	answered := map[string]bool{}
	for _, a := range r.Answers {
		answered[a.DeviceID], answered["user:"+a.User] = true, true
		m.Answers = append(m.Answers, &apipb.RequestAnswer{DeviceId: a.DeviceID, User: a.User, Approved: a.Decision == signed.Approve, Counter: a.Counter, At: a.At.Unix()})
	}
	for _, p := range r.Prompts {
		m.Prompts = append(m.Prompts, &apipb.RequestPrompt{DeviceId: p.DeviceID, User: p.User, Answered: answered[p.DeviceID] || answered["user:"+p.User]})
	}
	if withResult {
		m.SignedPsbt, m.SignedTx = r.SignedPSBT, r.SignedTx
	}
	return m, nil
}
