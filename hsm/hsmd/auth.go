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

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
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
