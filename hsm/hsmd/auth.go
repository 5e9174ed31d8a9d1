package hsmd

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/opencustodynet/opencustody/hsm/audit"
)

// loadOrCreateToken returns the token in dir/name, making a random one on
// first use (32 bytes, base64url, file mode 0600).
func loadOrCreateToken(dir, name string) (string, error) {
	path := filepath.Join(dir, name)
	if b, err := os.ReadFile(path); err == nil {
		t := strings.TrimSpace(string(b))
		if len(t) < 32 {
			return "", fmt.Errorf("hsmd: token in %s is too short; delete it to make a new one", path)
		}
		return t, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	t := base64.RawURLEncoding.EncodeToString(raw)
	if err := writeFileAtomic(path, []byte(t+"\n"), 0o600); err != nil {
		return "", err
	}
	return t, nil
}

// ReadToken reads a token file written by hsmd.
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("hsmd: read token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// authorizer maps each gRPC service to the token that may call it.
type authorizer struct {
	tokens map[string]string // full service name → token
	// failed is told of every call with a missing or wrong token.
	failed func(ctx context.Context, service, reason string)
}

func (a *authorizer) check(ctx context.Context, fullMethod string) error {
	svc := strings.TrimPrefix(fullMethod, "/")
	if i := strings.LastIndex(svc, "/"); i >= 0 {
		svc = svc[:i]
	}
	want, ok := a.tokens[svc]
	if !ok {
		return status.Errorf(codes.PermissionDenied, "hsmd: no access to %s", svc)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	var got string
	if v := md.Get("authorization"); len(v) == 1 {
		got = strings.TrimPrefix(v[0], "Bearer ")
	}
	if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		if a.failed != nil {
			reason := "wrong token"
			if got == "" {
				reason = "no token"
			}
			a.failed(ctx, svc, reason)
		}
		return status.Errorf(codes.Unauthenticated, "hsmd: missing or wrong token for %s", svc)
	}
	return nil
}

func (a *authorizer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := a.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (a *authorizer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := a.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return h(srv, ss)
}

// Defaults of the login-failure audit limit (Config.LoginAuditBurst and
// Config.LoginAuditEvery).
const (
	DefaultLoginAuditBurst = 10
	DefaultLoginAuditEvery = time.Minute
)

// loginLimiter decides which failed logins get an audit entry of their own,
// so that a flood of bad tokens cannot grow the audit log without bound:
// a token bucket holding up to burst entries, refilled by one every
// interval. A failure that finds the bucket empty is held back and
// counted; the next entry written, or the summary [loginLimiter.flush]
// writes once the bucket refills, says how many were held back and since
// when. Under a sustained flood the log so grows by at most burst entries
// plus one per interval (1,440 a day with the defaults), and every failure
// still counts in opencustody_hsmd_login_failures_total.
type loginLimiter struct {
	burst float64
	every time.Duration
	now   func() time.Time

	mu        sync.Mutex // guards the fields below
	tokens    float64
	last      time.Time // when tokens was last refilled
	held      uint64    // failures not logged since the last entry
	heldSince time.Time // the first of them
}

func newLoginLimiter(burst int, every time.Duration, now func() time.Time) *loginLimiter {
	return &loginLimiter{burst: float64(burst), every: every, now: now, tokens: float64(burst), last: now()}
}

// refill adds the tokens earned since the last call. l.mu is held.
func (l *loginLimiter) refill() time.Time {
	now := l.now()
	if el := now.Sub(l.last); el > 0 {
		l.tokens = min(l.burst, l.tokens+float64(el)/float64(l.every))
		l.last = now
	}
	return now
}

// allow records one failure. It reports whether it gets an entry, and if so
// how many failures were held back before it, since when.
func (l *loginLimiter) allow() (ok bool, held uint64, since time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.refill()
	if l.tokens < 1 {
		if l.held == 0 {
			l.heldSince = now
		}
		l.held++
		return false, 0, time.Time{}
	}
	l.tokens--
	held, since = l.held, l.heldSince
	l.held = 0
	return true, held, since
}

// flush reports the failures held back, if there are any and the bucket
// has a token for their summary entry.
func (l *loginLimiter) flush() (held uint64, since time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refill()
	if l.held == 0 || l.tokens < 1 {
		return 0, time.Time{}
	}
	l.tokens--
	held, since = l.held, l.heldSince
	l.held = 0
	return held, since
}

// loginFailed counts a call with a missing or wrong token and, within the
// limit, appends a login-failure event to the audit log. The token itself
// is never logged.
func (s *Server) loginFailed(ctx context.Context, service, reason string) {
	s.metrics.loginFailures.WithLabelValues(service).Inc()
	ok, held, since := s.logins.allow()
	if !ok {
		return
	}
	remote := "unknown"
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		remote = p.Addr.String()
	}
	detail := fmt.Sprintf("%s from %s", reason, remote)
	if held > 0 {
		detail += fmt.Sprintf("; before it, %d failed logins since %s were counted but not logged one by one", held, since.UTC().Format(time.RFC3339))
	}
	s.log.Warn("login failed", "service", service, "reason", reason, "remote", remote, "held_back", held)
	s.recordLater(audit.KindLogin, service, detail)
}

// flushLogins writes the summary of failed logins held back, once the limit
// allows.
func (s *Server) flushLogins() {
	if held, since := s.logins.flush(); held > 0 {
		s.log.Warn("failed logins held back from the audit log", "count", held, "since", since)
		s.recordLater(audit.KindLogin, "hsmd", fmt.Sprintf("%d failed logins since %s were counted but not logged one by one", held, since.UTC().Format(time.RFC3339)))
	}
}
