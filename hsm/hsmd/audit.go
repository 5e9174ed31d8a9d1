package hsmd

import (
	"context"
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/opencustodynet/opencustody/hsm/audit"
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
	if s.cfg.Audit == nil {
		return
	}
	ev := audit.Event{Kind: kind, Subject: clip(subject, audit.MaxSubjectLen), Detail: clip(detail, audit.MaxDetailLen)}
	if _, err := s.cfg.Audit.Append(context.WithoutCancel(ctx), ev); err != nil {
		s.auditFailed(ev, err)
	}
}

// recordLater appends an event from a goroutine, for callers that hold a
// lock the HSM's latency must not hold up. Stop waits for it.
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
	go func() {
		defer s.bgWork.Done()
		s.record(s.bgCtx, kind, subject, detail)
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
