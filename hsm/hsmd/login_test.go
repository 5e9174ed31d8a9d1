package hsmd_test

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/protocol/apiclient"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// loginFailures sums hsmd's count of calls refused for their token.
func loginFailures(t *testing.T, e *env) int {
	t.Helper()
	rec := httptest.NewRecorder()
	e.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	n := 0
	for l := range strings.SplitSeq(rec.Body.String(), "\n") {
		if strings.HasPrefix(l, "opencustody_hsmd_login_failures_total{") {
			v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
			if err != nil {
				t.Fatal(err)
			}
			n += int(v)
		}
	}
	return n
}

// TestLoginFailuresAreAudited floods every API with missing and wrong
// tokens: each failure is counted, the first ones get an audit entry naming
// the service, the reason and the caller's address, the flood adds no more
// than the limit's burst (plus one the bucket may refill meanwhile), and no
// entry holds a token.
func TestLoginFailuresAreAudited(t *testing.T) {
	e := start(t, false)
	const wrong = "not-the-token-not-the-token-not-the-token"
	ctx := t.Context()
	wrongConn, err := apiclient.Dial(apiclient.Options{Address: e.addr, CertFingerprint: e.srv.CertFingerprint(), Token: wrong})
	if err != nil {
		t.Fatal(err)
	}
	defer wrongConn.Close()
	tlsCfg, err := apiclient.TLSConfig(e.srv.CertFingerprint())
	if err != nil {
		t.Fatal(err)
	}
	noToken, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer noToken.Close()
	operator, auditWithBridge := apipb.NewOperatorClient(wrongConn), apipb.NewAuditClient(e.dial(t, "bridge"))
	custody, relay := apipb.NewCustodyClient(noToken), apipb.NewRelayClient(e.dial(t, "operator"))
	calls := []func() error{
		func() error {
			_, err := operator.Status(ctx, &apipb.StatusRequest{})
			return err
		},
		func() error {
			_, err := auditWithBridge.ListAudit(ctx, &apipb.ListAuditRequest{})
			return err
		},
		func() error {
			_, err := custody.ListWallets(ctx, &apipb.ListWalletsRequest{})
			return err
		},
		func() error {
			s, err := relay.Connect(ctx)
			if err == nil {
				_, err = s.Recv()
			}
			return err
		},
	}
	const flood = 80
	for i := range flood {
		if err := calls[i%len(calls)](); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("call %d: %v, want Unauthenticated", i, err)
		}
	}
	if n := loginFailures(t, e); n != flood {
		t.Errorf("login failures counted: %d, want %d", n, flood)
	}
	e.srv.Stop() // waits for the audit entries being written

	entries, err := e.audit.Entries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var logins []*audit.Entry
	for _, en := range entries {
		if en.Kind == audit.KindLogin {
			logins = append(logins, en)
		}
	}
	if len(logins) < hsmd.DefaultLoginAuditBurst || len(logins) > hsmd.DefaultLoginAuditBurst+1 {
		t.Fatalf("%d login-failure entries for %d failures, want %d (the burst) or one more", len(logins), flood, hsmd.DefaultLoginAuditBurst)
	}
	services := map[string]bool{}
	for _, en := range logins {
		services[en.Subject] = true
		if !strings.Contains(en.Detail, "token from 127.0.0.1:") {
			t.Errorf("entry %d: detail %q does not say why and from where", en.Seq, en.Detail)
		}
	}
	for _, svc := range []string{apipb.Operator_ServiceDesc.ServiceName, apipb.Audit_ServiceDesc.ServiceName, apipb.Custody_ServiceDesc.ServiceName, apipb.Relay_ServiceDesc.ServiceName} {
		if !services[svc] {
			t.Errorf("no entry names %s", svc)
		}
	}
	var secrets []string
	for _, f := range []string{"bridge.token", "operator.token"} {
		b, err := os.ReadFile(filepath.Join(e.dataDir, "hsmd", f))
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, strings.TrimSpace(string(b)))
	}
	for _, en := range entries {
		for _, s := range append(secrets, wrong) {
			if strings.Contains(en.Detail, s) || strings.Contains(en.Subject, s) {
				t.Errorf("entry %d holds a token", en.Seq)
			}
		}
	}
	rep, err := e.audit.Verify(context.WithoutCancel(ctx))
	if err != nil || !rep.OK() {
		t.Fatalf("audit log: %v, %v", rep, err)
	}
}
