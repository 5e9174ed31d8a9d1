package hsmd

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opencustodynet/opencustody/hsm/backup"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// The admin change kinds of the HSM-to-HSM backup.
const (
	ChangeBackupRegister = core.ChangeKind(backup.AdminChangeRegister)
	ChangeBackupExport   = core.ChangeKind(backup.AdminChangeExport)
)

// BackupChangeHandlers are the core's handlers of the two backup change
// kinds, for core.Config.ChangeHandlers: each checks a proposed change
// against site (backup.Site.DescribeChange: the target's signed
// enrollment, its registration, the keys an export would carry now) and
// returns what the admins' devices show. The changes are carried out by
// 'opencustody backup' at the HSM's console, which reports back with
// CompleteChange.
func BackupChangeHandlers(site *backup.Site) map[core.ChangeKind]core.ChangeHandler {
	return map[core.ChangeKind]core.ChangeHandler{
		ChangeBackupRegister: backupHandler{site, backup.RegisterTarget},
		ChangeBackupExport:   backupHandler{site, backup.ExportToTarget},
	}
}

type backupHandler struct {
	site *backup.Site
	kind backup.ChangeKind
}

func (h backupHandler) Describe(ctx context.Context, subject string, payload []byte) ([]signed.Field, error) {
	return h.site.DescribeChange(ctx, h.kind, subject, payload)
}

func (o *operatorService) ProposeBackupChange(ctx context.Context, req *apipb.ProposeBackupChangeRequest) (*apipb.Change, error) {
	kind := core.ChangeKind(req.GetKind())
	if kind != ChangeBackupRegister && kind != ChangeBackupExport {
		return nil, status.Errorf(codes.InvalidArgument, "hsmd: %q is not a backup change (want %s or %s)", kind, ChangeBackupRegister, ChangeBackupExport)
	}
	var prop *core.Proposed
	err := o.s.exclusive(ctx, func() (err error) {
		prop, err = o.s.cfg.Core.ProposeChange(ctx, core.ProposeChangeRequest{Kind: kind, Subject: req.GetSubject(), Payload: req.GetPayload(), Initiator: req.GetInitiator()})
		return err
	})
	if err != nil {
		o.s.log.Warn("backup change refused", "kind", string(kind), "target", req.GetSubject(), "err", err)
		return nil, custodyError(err)
	}
	o.s.proposed(ctx, prop)
	return changeMessage(prop.Change), nil
}

func (o *operatorService) ApprovedChange(ctx context.Context, req *apipb.GetChangeRequest) (*apipb.Change, error) {
	ch, err := o.s.cfg.Core.ApprovedChange(ctx, req.GetId())
	if errors.Is(err, core.ErrNotApproved) || errors.Is(err, core.ErrRequestClosed) {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	if err != nil {
		return nil, custodyError(err)
	}
	m := changeMessage(ch)
	h := sha256.Sum256(ch.Payload)
	m.PayloadSha256 = h[:]
	return m, nil
}

func (o *operatorService) CompleteChange(ctx context.Context, req *apipb.CompleteChangeRequest) (*apipb.Change, error) {
	var cause error
	if req.GetError() != "" {
		cause = errors.New(req.GetError())
	}
	var ch *core.ChangeRecord
	err := o.s.exclusive(ctx, func() (err error) {
		ch, err = o.s.cfg.Core.CompleteChange(ctx, req.GetId(), req.GetResult(), cause)
		return err
	})
	if errors.Is(err, core.ErrRequestClosed) {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	if err != nil {
		return nil, custodyError(err)
	}
	o.s.log.Info("admin change carried out", "change", ch.ID, "kind", string(ch.Kind), "state", string(ch.State))
	o.s.record(ctx, changeAuditKind(ch.Kind), ch.ID, fmt.Sprintf("%s %s: %s%s", ch.Kind, ch.State, ch.Result, ch.Error))
	return changeMessage(ch), nil
}

// ChangeApprover is a [backup.Approver] that asks the admin quorum through
// hsmd: it proposes the change, waits while the admins decide on their
// devices, and accepts only a change hsmd's core reports approved (having
// recounted the admins' signed approvals) with exactly the payload it
// proposed. After the backup step ran, [ChangeApprover.Complete] reports
// the outcome.
type ChangeApprover struct {
	Client    apipb.OperatorClient
	Initiator string
	// Poll is how often the change is read while the admins decide; zero
	// means one second.
	Poll time.Duration
	// Progress, if set, receives a line when the change is proposed.
	Progress io.Writer

	// id is the change last approved, for Complete.
	id string
}

var _ backup.Approver = (*ChangeApprover)(nil)

// Approve implements [backup.Approver].
func (a *ChangeApprover) Approve(ctx context.Context, c backup.Change) error {
	payload, err := c.Canonical()
	if err != nil {
		return err
	}
	kind := backup.AdminChangeRegister
	if c.Kind == backup.ExportToTarget {
		kind = backup.AdminChangeExport
	}
	ch, err := a.Client.ProposeBackupChange(ctx, &apipb.ProposeBackupChangeRequest{Kind: kind, Subject: c.Target.Identity.Fingerprint(), Payload: payload, Initiator: a.Initiator})
	if err != nil {
		return fmt.Errorf("%w: propose %s: %w", backup.ErrNotApproved, c.Kind, err)
	}
	if a.Progress != nil {
		fmt.Fprintf(a.Progress, "proposed admin change %s (%s): %d of %v must approve on their devices\n", ch.GetId(), kind, ch.GetQuorum(), ch.GetAdmins())
	}
	poll := a.Poll
	if poll <= 0 {
		poll = time.Second
	}
	for {
		got, err := a.Client.GetChange(ctx, &apipb.GetChangeRequest{Id: ch.GetId()})
		if err != nil {
			return fmt.Errorf("%w: change %s: %w", backup.ErrNotApproved, ch.GetId(), err)
		}
		switch core.ChangeState(got.GetState()) {
		case core.ChangePending:
		case core.ChangeApproved:
			ok, err := a.Client.ApprovedChange(ctx, &apipb.GetChangeRequest{Id: ch.GetId()})
			if err != nil {
				return fmt.Errorf("%w: change %s: %w", backup.ErrNotApproved, ch.GetId(), err)
			}
			want := sha256.Sum256(payload)
			if string(ok.GetPayloadSha256()) != string(want[:]) || ok.GetKind() != kind {
				return fmt.Errorf("%w: change %s is not the change proposed", backup.ErrNotApproved, ch.GetId())
			}
			a.id = ch.GetId()
			return nil
		default:
			return fmt.Errorf("%w: change %s is %s (rejected by %v) %s", backup.ErrNotApproved, ch.GetId(), got.GetState(), got.GetRejectedBy(), got.GetError())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: change %s: still pending: %w", backup.ErrNotApproved, ch.GetId(), ctx.Err())
		case <-time.After(poll):
		}
	}
}

// Complete reports the outcome of the step the last approved change
// allowed: done with result, or failed with cause.
func (a *ChangeApprover) Complete(ctx context.Context, result string, cause error) error {
	if a.id == "" {
		return nil
	}
	req := &apipb.CompleteChangeRequest{Id: a.id, Result: result}
	if cause != nil {
		req.Error = cause.Error()
	}
	_, err := a.Client.CompleteChange(ctx, req)
	return err
}
