package hsmd

import (
	"context"
	"errors"
	"fmt"
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
	err := d.call(func(l *core.Link) (core.Output, error) {
		if d.answering[p.RequestID] { // d.mu is held
			return core.Output{}, nil
		}
		return l.SendPrompt(ctx, p)
	})
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
	ps, err := s.cfg.Core.PendingPrompts(ctx, deviceID)
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
	} else {
		r := res.Request
		s.metrics.answers.WithLabelValues(res.Decision.String()).Inc()
		log.Info("answer accepted", "user", res.User, "decision", res.Decision.String(), "state", string(r.State), "approved_by", r.ApprovedBy())
		kind := audit.KindApproval
		if res.Decision == signed.Reject {
			kind = audit.KindRejection
		}
		s.record(ctx, kind, a.RequestID, fmt.Sprintf("%s by user %s on device %s; request %s", res.Decision, res.User, a.Device, r.State))
		switch r.State {
		case core.RequestSigned:
			log.Info("request signed", "txid", r.TxID)
			s.record(ctx, audit.KindSignature, r.ID, "signed: txid "+r.TxID)
		case core.RequestFailed:
			log.Error("request approved but not signed", "err", r.Error)
			s.record(ctx, audit.KindSignature, r.ID, "approved but not signed: "+r.Error)
		}
		if r.State.Closed() {
			s.metrics.requests.WithLabelValues(string(r.State)).Inc()
		}
	}
	if res != nil {
		s.withdraw(ctx, res.Withdraw)
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

// deliverPending sends every device with a secure channel here the prompts
// it has yet to answer. With several hsmd instances on one database, a
// request submitted to another instance has prompts for devices attached
// here, which nothing else would hand over until their channel came up
// again. A prompt the link already holds is not sent twice.
func (s *Server) deliverPending(ctx context.Context) {
	s.mu.Lock()
	ds := make([]*deviceConn, 0, len(s.devices))
	for _, d := range s.devices {
		ds = append(ds, d)
	}
	s.mu.Unlock()
	for _, d := range ds {
		var id string
		d.mu.Lock()
		if !d.detached && d.link != nil {
			if up, rec := d.link.Secure(); up && rec != nil {
				id = rec.ID
			}
		}
		d.mu.Unlock()
		if id != "" {
			s.sendPending(ctx, d, id)
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
		var finished []*core.RequestRecord
		err := s.exclusive(ctx, func() (err error) {
			// Requests left approved (a crash between the approval and
			// the signature) are signed by Tick: note them, to audit
			// their outcome.
			rs, err := s.cfg.Core.Requests(ctx)
			if err != nil {
				return err
			}
			withdraw, err = s.cfg.Core.Tick(ctx)
			for _, r := range rs {
				if r.State != core.RequestApproved {
					continue
				}
				if now, gerr := s.cfg.Core.Request(ctx, r.ID); gerr == nil && now.State.Closed() {
					finished = append(finished, now)
				}
			}
			return err
		})
		for _, r := range finished {
			switch r.State {
			case core.RequestSigned:
				s.log.Info("interrupted request signed", "request", r.ID, "txid", r.TxID)
				s.record(ctx, audit.KindSignature, r.ID, "signed after an interruption: txid "+r.TxID)
			case core.RequestFailed:
				s.log.Error("interrupted request approved but not signed", "request", r.ID, "err", r.Error)
				s.record(ctx, audit.KindSignature, r.ID, "approved but not signed after an interruption: "+r.Error)
			}
			s.metrics.requests.WithLabelValues(string(r.State)).Inc()
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
