package hsmd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// sendPrompts hands each prompt to the link of its device, if attached.
// A device without a channel now gets it when its channel comes up.
func (s *Server) sendPrompts(ctx context.Context, prompts []*signed.Prompt) {
	for _, p := range prompts {
		if d := s.device(p.DeviceID); d != nil {
			s.sendPrompt(ctx, d, p)
		}
	}
}

func (s *Server) sendPrompt(ctx context.Context, d *deviceConn, p *signed.Prompt) {
	err := d.call(func(l *core.Link) (core.Output, error) { return l.SendPrompt(ctx, p) })
	switch {
	case err == nil:
	case errors.Is(err, core.ErrNoChannel), errors.Is(err, errDetached):
		s.log.Debug("prompt waits for the device's channel", "request", p.RequestID, "device", p.DeviceID)
	default:
		s.log.Warn("cannot send a prompt", "request", p.RequestID, "device", p.DeviceID, "err", err)
	}
}

// sendPending sends a device the prompts it has yet to answer.
func (s *Server) sendPending(ctx context.Context, d *deviceConn, deviceID string) {
	// PendingPrompts issues each prompt afresh, a change of the request:
	// one at a time with the others, across instances too.
	var ps []*signed.Prompt
	err := s.exclusive(ctx, func() (err error) {
		ps, err = s.cfg.Core.PendingPrompts(ctx, deviceID)
		return err
	})
	if errors.Is(err, core.ErrNoApprovalPath) {
		return
	}
	if err != nil {
		s.log.Error("cannot read the device's pending prompts", "device", deviceID, "err", err)
		return
	}
	for _, p := range ps {
		s.sendPrompt(ctx, d, p)
	}
}

// queueAnswer hands a device's answer to the core after the answers the
// device sent before it, one at a time. A device answers the next prompt
// while the core still checks its last answer, and the core refuses an
// answer whose counter is not above the last it accepted: checked out of
// order, honest approvals would be refused as stale and their requests
// left waiting for answers the device has already given.
func (s *Server) queueAnswer(a core.Answer) {
	s.answersMu.Lock()
	defer s.answersMu.Unlock()
	q, busy := s.answers[a.Device]
	s.answers[a.Device] = append(q, a)
	if busy {
		return // the device's worker takes it in turn
	}
	s.background(func(ctx context.Context) {
		for {
			s.answersMu.Lock()
			q := s.answers[a.Device]
			if len(q) == 0 {
				delete(s.answers, a.Device)
				s.answersMu.Unlock()
				return
			}
			next := q[0]
			s.answers[a.Device] = q[1:]
			s.answersMu.Unlock()
			s.check(ctx, next)
		}
	})
}

// answer has the core verify and apply a device's answer, then withdraws
// the prompts it made moot.
func (s *Server) answer(ctx context.Context, a core.Answer) {
	log := s.log.With("request", a.RequestID, "device", a.Device)
	var res *core.AnswerResult
	err := s.exclusive(ctx, func() (err error) {
		res, err = s.cfg.Core.Answer(ctx, a)
		return err
	})
	if err != nil {
		s.metrics.answers.WithLabelValues("refused").Inc()
		log.Warn("answer refused", "err", err)
		s.record(ctx, audit.KindRefused, a.RequestID, fmt.Sprintf("answer from device %s refused: %v", a.Device, err))
	} else if ch := res.Change; ch != nil {
		s.metrics.answers.WithLabelValues(res.Decision.String()).Inc()
		log.Info("admin answer accepted", "user", res.User, "decision", res.Decision.String(), "kind", string(ch.Kind), "state", string(ch.State), "approved_by", ch.ApprovedBy())
		kind := audit.KindApproval
		if res.Decision == signed.Reject {
			kind = audit.KindRejection
		}
		s.record(ctx, kind, ch.ID, fmt.Sprintf("%s by admin %s on device %s; change %s", res.Decision, res.User, a.Device, ch.State))
		s.changeOutcome(ctx, ch)
	} else {
		r := res.Request
		s.metrics.answers.WithLabelValues(res.Decision.String()).Inc()
		if r.State.Closed() {
			// Counted when it happened: the audit entries follow.
			s.metrics.requests.WithLabelValues(string(r.State)).Inc()
		}
		log.Info("answer accepted", "user", res.User, "decision", res.Decision.String(), "state", string(r.State), "approved_by", r.ApprovedBy())
		kind := audit.KindApproval
		if res.Decision == signed.Reject {
			kind = audit.KindRejection
		}
		detail := fmt.Sprintf("%s by user %s on device %s; request %s", res.Decision, res.User, a.Device, r.State)
		if r.State == core.RequestPending {
			// The answer is stored with the request; its entry goes with
			// the next (the request's next answer, say), not in a commit
			// of its own while that answer is checked.
			s.recordLater(kind, a.RequestID, detail)
		} else {
			s.record(ctx, kind, a.RequestID, detail)
		}
		switch r.State {
		case core.RequestSigned:
			log.Info("request signed", "txid", r.TxID)
			s.record(ctx, audit.KindSignature, r.ID, "signed: txid "+r.TxID)
		case core.RequestFailed:
			log.Error("request approved but not signed", "err", r.Error)
			s.record(ctx, audit.KindSignature, r.ID, "approved but not signed: "+r.Error)
		}
	}
	if res != nil {
		s.withdraw(ctx, res.Withdraw)
		s.sendPrompts(ctx, res.Prompts)
	}
}

// withdraw cancels prompts on the devices that have them.
func (s *Server) withdraw(ctx context.Context, refs []core.PromptRef) {
	for _, ref := range refs {
		if d := s.device(ref.DeviceID); d != nil {
			err := d.call(func(l *core.Link) (core.Output, error) { return l.WithdrawPrompt(ctx, ref.RequestID) })
			if err != nil && !errors.Is(err, errDetached) {
				s.log.Warn("cannot withdraw a prompt", "request", ref.RequestID, "device", ref.DeviceID, "err", err)
			}
		}
	}
}

// deliverPending hands every device with a secure channel here the stored
// prompts of pending requests it has yet to answer and that this link has
// not been handed yet. With several hsmd instances on one database, a
// request submitted to another instance has prompts for devices attached
// here, which nothing else would hand over until their channel came up
// again. It sends each prompt as stored, without issuing it afresh (which
// would make the copy a device already holds unanswerable), and once per
// link.
func (s *Server) deliverPending(ctx context.Context) {
	rs, err := s.cfg.Core.Requests(ctx)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, core.ErrNoApprovalPath) {
			s.log.Error("cannot read the pending requests", "err", err)
		}
		return
	}
	s.mu.Lock()
	ds := make([]*deviceConn, 0, len(s.devices))
	for _, d := range s.devices {
		ds = append(ds, d)
	}
	s.mu.Unlock()
	for _, d := range ds {
		var dev *core.DeviceRecord
		d.mu.Lock()
		if !d.detached && d.link != nil {
			if up, rec := d.link.Secure(); up {
				dev = rec
			}
		}
		d.mu.Unlock()
		if dev == nil {
			continue
		}
		for _, r := range rs {
			if r.State != core.RequestPending {
				continue
			}
			p := slices.IndexFunc(r.Prompts, func(p core.PromptRecord) bool { return p.DeviceID == dev.ID })
			answered := slices.ContainsFunc(r.Answers, func(a core.AnswerRecord) bool { return a.DeviceID == dev.ID || a.User == dev.User })
			if p < 0 || answered {
				continue
			}
			d.mu.Lock()
			sent := d.delivered[r.ID]
			if d.delivered == nil {
				d.delivered = map[string]bool{}
			}
			d.delivered[r.ID] = true
			d.mu.Unlock()
			if sent {
				continue
			}
			sp, err := signed.ParsePrompt(r.Prompts[p].Prompt)
			if err != nil {
				s.log.Error("stored prompt does not parse", "request", r.ID, "device", dev.ID, "err", err)
				continue
			}
			s.sendPrompt(ctx, d, sp)
		}
	}
}

// tickLoop has the core store expiries and finish interrupted signings,
// at once and then every TickInterval; with a shared database (Config.Lock)
// it also hands over the prompts other instances issued.
func (s *Server) tickLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.TickInterval)
	defer t.Stop()
	for {
		var withdraw []core.PromptRef
		// Every request is read outside the lock, so that approvals go on
		// meanwhile; TickDue reads the due ones again under it.
		due, err := s.cfg.Core.DueRequests(ctx)
		if err == nil {
			err = s.exclusive(ctx, func() (err error) {
				var signing []string
				withdraw, signing, err = s.cfg.Core.TickDue(ctx, due)
				// Requests approved before (a time lock ended, or a crash
				// came between the approval and the signature) that it
				// signed: audit their outcome.
				s.recordTicked(ctx, signing)
				return err
			})
		}
		switch {
		case errors.Is(err, core.ErrNoApprovalPath):
			return
		case err != nil && ctx.Err() == nil:
			s.log.Error("request upkeep failed", "err", err)
		}
		s.withdraw(ctx, withdraw)
		s.savePin()
		if s.cfg.Lock != nil {
			s.deliverPending(ctx)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// changeOutcome logs and audits what became of an admin change once an
// answer closed or approved it.
func (s *Server) changeOutcome(ctx context.Context, ch *core.ChangeRecord) {
	kind := changeAuditKind(ch.Kind)
	switch ch.State {
	case core.ChangeApplied:
		if ch.Kind == core.ChangePairing {
			// The device is paired now: open its channel if it is here.
			if d := s.device(ch.Subject); d != nil {
				if err := d.call(func(l *core.Link) (core.Output, error) { return l.Open(ctx) }); err != nil && !errors.Is(err, errDetached) {
					s.log.Warn("cannot open the newly paired device's channel", "device", ch.Subject, "err", err)
				}
			}
		}
		s.log.Info("admin change applied", "change", ch.ID, "kind", string(ch.Kind), "subject", ch.Subject, "result", ch.Result)
		s.record(ctx, kind, ch.ID, fmt.Sprintf("%s %s applied: %s", ch.Kind, ch.Subject, ch.Result))
	case core.ChangeFailed:
		s.log.Error("admin change approved but not applied", "change", ch.ID, "kind", string(ch.Kind), "err", ch.Error)
		s.record(ctx, kind, ch.ID, fmt.Sprintf("%s %s approved but not applied: %s", ch.Kind, ch.Subject, ch.Error))
	case core.ChangeApproved:
		s.log.Info("admin change approved; the daemon carries it out", "change", ch.ID, "kind", string(ch.Kind), "subject", ch.Subject)
		s.record(ctx, kind, ch.ID, fmt.Sprintf("%s %s approved by %v", ch.Kind, ch.Subject, ch.ApprovedBy()))
	case core.ChangeRejected:
		s.record(ctx, kind, ch.ID, fmt.Sprintf("%s %s rejected by %v", ch.Kind, ch.Subject, ch.RejectedBy()))
	}
}

// recordTicked audits what Tick did to the requests that were approved
// before it: signed (a time lock ended) or failed.
func (s *Server) recordTicked(ctx context.Context, ids []string) {
	for _, id := range ids {
		r, err := s.cfg.Core.Request(ctx, id)
		if err != nil {
			continue
		}
		switch r.State {
		case core.RequestSigned:
			s.log.Info("request signed", "request", r.ID, "txid", r.TxID)
			s.record(ctx, audit.KindSignature, r.ID, "signed: txid "+r.TxID)
		case core.RequestFailed:
			s.log.Error("request approved but not signed", "request", r.ID, "err", r.Error)
			s.record(ctx, audit.KindSignature, r.ID, "approved but not signed: "+r.Error)
		}
	}
}

// changeAuditKind is the audit kind of an admin change's events.
func changeAuditKind(k core.ChangeKind) string {
	switch k {
	case core.ChangePolicy:
		return audit.KindPolicy
	case core.ChangePairing:
		return audit.KindPairing
	}
	return audit.KindChange
}
