package hsmd

import (
	"context"
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// record appends a security event to the audit log, if there is one.
//
// An event that cannot be appended does not fail the operation that
// caused it (the operation already happened in the core, and refusing to
// report it would not undo it): it is logged at error level, with the
// event, and counted in opencustody_hsmd_audit_failures_total, which an
// operator must alert on. The log then has no entry for it, and says so
// only through that log line and that counter.
func (s *Server) record(ctx context.Context, kind, subject, detail string) {
	s.queueRecord(kind, subject, detail)(ctx)
}

// queueRecord puts an event in line for the audit log, ahead of any
// recorded after it, and returns a function that waits for its entry, as
// record does; the caller may do what follows the event (and causes
// later events) in between.
func (s *Server) queueRecord(kind, subject, detail string) func(context.Context) {
	if s.cfg.Audit == nil {
		return func(context.Context) {}
	}
	ev := audit.Event{Kind: kind, Subject: clip(subject, audit.MaxSubjectLen), Detail: clip(detail, audit.MaxDetailLen)}
	wait := s.cfg.Audit.Queue(ev)
	return func(ctx context.Context) {
		ent, err := wait(context.WithoutCancel(ctx))
		switch {
		case err != nil && ent != nil:
			s.metrics.auditFailures.Inc()
			s.log.Error("audit entry written but its checkpoint failed", "seq", ent.Seq, "err", err)
		case err != nil:
			s.auditFailed(ev, err)
		}
	}
}

// auditLinger is how long an event recorded from a goroutine waits for
// another append to carry it in the same write, before writing it itself:
// a device's 'prompt shown' then goes with the next entry (typically its
// answer), instead of a commit of its own while the devices answer.
const auditLinger = 20 * time.Millisecond

// recordLater appends an event from a goroutine, for callers that hold a
// lock the HSM's latency must not hold up. The event takes its place in
// the chain at once, and is written with the next append or after
// auditLinger (at once when hsmd stops). Stop waits for it.
func (s *Server) recordLater(kind, subject, detail string) {
	if s.cfg.Audit == nil {
		return
	}
	s.bgMu.Lock()
	stopped := s.bgStopped
	if !stopped {
		s.bgWork.Add(1)
	}
	s.bgMu.Unlock()
	if stopped {
		s.auditFailed(audit.Event{Kind: kind, Subject: subject, Detail: detail}, errors.New("hsmd: stopping"))
		return
	}
	recorded := s.queueRecord(kind, subject, detail)
	go func() {
		defer s.bgWork.Done()
		t := time.NewTimer(auditLinger)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.bgCtx.Done():
		}
		recorded(s.bgCtx)
	}()
}

func (s *Server) auditFailed(ev audit.Event, err error) {
	s.metrics.auditFailures.Inc()
	s.log.Error("security event not written to the audit log", "kind", ev.Kind, "subject", ev.Subject, "detail", ev.Detail, "err", err)
}

// clip cuts s to at most n bytes of valid UTF-8.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return strings.ToValidUTF8(s, "")
}

// checkpointLoop signs a checkpoint of the audit log's newest entry every
// TickInterval, if it has none yet.
func (s *Server) checkpointLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.flushLogins()
			s.checkpoint(ctx)
		case <-ctx.Done():
			return
		}
	}
}

func (s *Server) checkpoint(ctx context.Context) {
	if _, err := s.cfg.Audit.Checkpoint(ctx); err != nil && ctx.Err() == nil {
		s.metrics.auditFailures.Inc()
		s.log.Error("cannot checkpoint the audit log", "err", err)
	}
}

// auditService serves the Audit API.
type auditService struct {
	apipb.UnimplementedAuditServer
	s *Server
}

func (a *auditService) log() (*audit.Log, error) {
	if a.s.cfg.Audit == nil {
		return nil, status.Error(codes.FailedPrecondition, "hsmd: the audit log is off")
	}
	return a.s.cfg.Audit, nil
}

func (a *auditService) ListAudit(ctx context.Context, _ *apipb.ListAuditRequest) (*apipb.ListAuditResponse, error) {
	l, err := a.log()
	if err != nil {
		return nil, err
	}
	entries, err := l.Entries(ctx)
	if err != nil {
		return nil, auditError(err)
	}
	cps, err := l.Checkpoints(ctx)
	if err != nil {
		return nil, auditError(err)
	}
	resp := &apipb.ListAuditResponse{}
	for _, e := range entries {
		resp.Entries = append(resp.Entries, &apipb.AuditEntry{Seq: e.Seq, TimeUnixNano: e.Time.UnixNano(), Kind: e.Kind, Subject: e.Subject, Detail: e.Detail, Prev: e.Prev, Hash: e.Hash})
	}
	for _, c := range cps {
		resp.Checkpoints = append(resp.Checkpoints, &apipb.AuditCheckpoint{Seq: c.Seq, Hash: c.Hash, TimeUnixNano: c.Time.UnixNano(), Algorithm: int32(c.Algorithm), PublicKey: c.PublicKey, Signature: c.Signature})
	}
	return resp, nil
}

func (a *auditService) VerifyAudit(ctx context.Context, _ *apipb.VerifyAuditRequest) (*apipb.VerifyAuditResponse, error) {
	l, err := a.log()
	if err != nil {
		return nil, err
	}
	rep, err := l.Verify(ctx)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp := &apipb.VerifyAuditResponse{Entries: uint32(rep.Entries), LastSeq: rep.LastSeq, Checkpoints: uint32(rep.Checkpoints), LastCheckpoint: rep.LastCheckpoint}
	for _, p := range rep.Problems {
		resp.Problems = append(resp.Problems, &apipb.AuditProblem{Seq: p.Seq, Checkpoint: p.Checkpoint, What: p.What})
	}
	if !rep.OK() {
		a.s.log.Error("audit log fails verification", "problems", len(rep.Problems), "first", rep.Problems[0].String())
	}
	return resp, nil
}

func auditError(err error) error {
	if errors.Is(err, records.ErrIntegrity) {
		return status.Error(codes.DataLoss, "hsmd: the audit log fails authentication; run 'opencustody audit verify': "+err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
