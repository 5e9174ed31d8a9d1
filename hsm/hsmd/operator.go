package hsmd

import (
	"context"
	"errors"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

type operatorService struct {
	apipb.UnimplementedOperatorServer
	s *Server
}

func (o *operatorService) Status(context.Context, *apipb.StatusRequest) (*apipb.StatusResponse, error) {
	return &apipb.StatusResponse{
		Version:        o.s.cfg.Version,
		HsmFingerprint: o.s.cfg.Core.HSMFingerprint(),
		Bridges:        o.s.bridgeStatuses(),
	}, nil
}

func (o *operatorService) ListDevices(ctx context.Context, _ *apipb.ListDevicesRequest) (*apipb.ListDevicesResponse, error) {
	recs, err := o.s.cfg.Core.Devices(ctx)
	if err != nil {
		return nil, storeError(err)
	}
	attached := o.s.attached()
	var out []*apipb.Device
	for _, r := range recs {
		d := deviceMessage(r)
		if a := attached[r.ID]; a != nil {
			d.Connected, d.Bridge = true, a.bridge.name
			a.mu.Lock()
			d.Channel = a.up
			a.mu.Unlock()
			delete(attached, r.ID)
		}
		out = append(out, d)
	}
	for id, a := range attached {
		f := a.link.Claimed()
		out = append(out, &apipb.Device{
			Id: id, State: apipb.DeviceState_DEVICE_STATE_UNPAIRED,
			Fingerprint: signed.Fingerprint(f.GetIdentityAlgorithm(), f.GetIdentityPublicKey()),
			Connected:   true, Bridge: a.bridge.name, Emulator: f.GetEmulator(), Model: f.GetModel(),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return &apipb.ListDevicesResponse{Devices: out}, nil
}

func deviceMessage(r *core.DeviceRecord) *apipb.Device {
	d := &apipb.Device{
		Id: r.ID, Fingerprint: r.Fingerprint(), User: r.User, Role: apiRole(r.Role),
		Emulator: r.Emulator, Model: r.Model, PairedAt: r.PairedAt.Unix(),
		State: apipb.DeviceState_DEVICE_STATE_PAIRED,
	}
	if r.State == core.DeviceRevoked {
		d.State, d.RevokedAt = apipb.DeviceState_DEVICE_STATE_REVOKED, r.RevokedAt.Unix()
	}
	if a := r.Attestation; a != nil {
		d.AttestationRoot, d.AttestationRootFingerprint, d.AttestationSubject = a.Root, a.RootFingerprint, a.Subject
	}
	return d
}

func apiRole(r core.Role) apipb.Role {
	if r == core.RoleAdmin {
		return apipb.Role_ROLE_ADMIN
	}
	return apipb.Role_ROLE_APPROVER
}

func coreRole(r apipb.Role) (core.Role, error) {
	switch r {
	case apipb.Role_ROLE_ADMIN:
		return core.RoleAdmin, nil
	case apipb.Role_ROLE_APPROVER:
		return core.RoleApprover, nil
	}
	return "", status.Error(codes.InvalidArgument, "hsmd: role must be approver or admin")
}

// storeError maps storage failures: an integrity failure is never hidden.
func storeError(err error) error {
	switch {
	case errors.Is(err, core.ErrDeviceNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, records.ErrIntegrity):
		return status.Error(codes.DataLoss, "hsmd: refusing a stored record that failed authentication: "+err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func (o *operatorService) RevokeDevice(ctx context.Context, req *apipb.RevokeDeviceRequest) (*apipb.RevokeDeviceResponse, error) {
	var rec *core.DeviceRecord
	err := o.s.exclusive(ctx, func() (err error) {
		rec, err = o.s.cfg.Core.Revoke(ctx, req.GetDeviceId())
		return err
	})
	if err != nil {
		return nil, storeError(err)
	}
	o.s.log.Warn("device revoked", "device", rec.ID, "user", rec.User)
	o.s.record(ctx, audit.KindRevocation, rec.ID, "revoked: user "+rec.User)
	if d := o.s.device(rec.ID); d != nil {
		_ = d.call(func(l *core.Link) (core.Output, error) { return l.Abort(core.ErrRevoked), nil })
	}
	return &apipb.RevokeDeviceResponse{Device: deviceMessage(rec)}, nil
}

// Pair runs one pairing for an operator: start, code, decision, result.
func (o *operatorService) Pair(stream apipb.Operator_PairServer) error {
	s := o.s
	ctx, cancel := context.WithTimeout(stream.Context(), s.cfg.PairingTimeout)
	defer cancel()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return status.Error(codes.InvalidArgument, "hsmd: a pairing starts with PairStart")
	}
	role, err := coreRole(start.GetRole())
	if err != nil {
		return err
	}
	d := s.device(start.GetDeviceId())
	if d == nil {
		return status.Errorf(codes.NotFound, "hsmd: device %s is not attached to any bridge; run 'opencustody devices list' to see the attached ones", start.GetDeviceId())
	}
	events := make(chan core.Event, 16)
	d.mu.Lock()
	if d.detached {
		d.mu.Unlock()
		return status.Errorf(codes.Unavailable, "hsmd: device %s went away", d.id)
	}
	if d.watcher != nil {
		d.mu.Unlock()
		return status.Errorf(codes.FailedPrecondition, "hsmd: device %s is already being paired", d.id)
	}
	out, err := d.link.StartPairing(ctx, start.GetUser(), role)
	if err != nil {
		d.mu.Unlock()
		return pairingError(err)
	}
	d.watcher = events
	d.deliver(out)
	d.mu.Unlock()

	finished := false
	defer func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.watcher == events {
			d.watcher = nil
			if !finished && !d.detached {
				d.deliver(d.link.Abort(errors.New("the operator's pairing call ended")))
			}
		}
	}()

	decisions := make(chan bool, 1)
	go func() {
		defer close(decisions)
		m, err := stream.Recv()
		if err == nil && m.GetDecision() != nil {
			decisions <- m.GetDecision().GetConfirmed()
		}
	}()
	for {
		select {
		case e := <-events:
			switch e := e.(type) {
			case core.PairingCode:
				if err := stream.Send(&apipb.PairServerMessage{Msg: &apipb.PairServerMessage_Code{Code: &apipb.PairCode{
					Code: e.Code, HsmFingerprint: e.HSMFingerprint, DeviceFingerprint: e.DeviceFingerprint,
				}}}); err != nil {
					return err
				}
			case core.PairingDone:
				finished = true
				return stream.Send(&apipb.PairServerMessage{Msg: &apipb.PairServerMessage_Result{Result: &apipb.PairResult{Device: deviceMessage(e.Device)}}})
			case core.PairingProposed:
				finished = true
				dev := deviceMessage(e.Device)
				dev.State = apipb.DeviceState_DEVICE_STATE_UNPAIRED
				return stream.Send(&apipb.PairServerMessage{Msg: &apipb.PairServerMessage_Result{Result: &apipb.PairResult{Device: dev, ChangeId: e.Change.Change.ID}}})
			case core.PairingFailed:
				finished = true
				return pairingError(e.Err)
			}
		case c, ok := <-decisions:
			if !ok {
				return status.Error(codes.Canceled, "hsmd: the operator left before deciding; pairing aborted")
			}
			decisions = nil
			err := d.call(func(l *core.Link) (core.Output, error) { return l.OperatorDecision(ctx, c) })
			if err != nil && !errors.Is(err, core.ErrPairingRejected) {
				return pairingError(err)
			}
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return status.Errorf(codes.DeadlineExceeded, "hsmd: pairing not completed within %s", s.cfg.PairingTimeout.Round(time.Second))
			}
			return status.Error(codes.Canceled, "hsmd: pairing cancelled")
		}
	}
}

func pairingError(err error) error {
	switch {
	case errors.Is(err, core.ErrNotCeremony):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, core.ErrAlreadyPaired), errors.Is(err, core.ErrRevoked), errors.Is(err, core.ErrBusy):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, core.ErrPairingRejected):
		return status.Error(codes.Aborted, err.Error())
	}
	return status.Error(codes.Aborted, "hsmd: pairing failed: "+err.Error())
}

func (o *operatorService) GetChange(ctx context.Context, req *apipb.GetChangeRequest) (*apipb.Change, error) {
	ch, err := o.s.cfg.Core.Change(ctx, req.GetId())
	if err != nil {
		return nil, custodyError(err)
	}
	return changeMessage(ch), nil
}

func (o *operatorService) ListChanges(ctx context.Context, _ *apipb.ListChangesRequest) (*apipb.ListChangesResponse, error) {
	chs, err := o.s.cfg.Core.Changes(ctx)
	if err != nil {
		return nil, custodyError(err)
	}
	out := &apipb.ListChangesResponse{}
	for _, ch := range chs {
		out.Changes = append(out.Changes, changeMessage(ch))
	}
	return out, nil
}
