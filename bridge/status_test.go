package bridge_test

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/bridge"
	"github.com/opencustodynet/opencustody/protocol/apiclient"
)

func apiOptions(addr, fingerprint string) apiclient.Options {
	return apiclient.Options{Address: addr, CertFingerprint: fingerprint, Token: "a-token-a-token-a-token-a-token-a-token"}
}

// The status endpoint serves the same snapshot as Status, FetchStatus
// reads it, and only loopback addresses are accepted.
func TestStatusEndpoint(t *testing.T) {
	ctx := testContext(t)
	fp := "sha256:" + strings.Repeat("ab", 32)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	b, err := bridge.New(bridge.Config{
		HSMD: apiOptions("127.0.0.1:7420", fp), Name: "desk-7", Version: "v9",
		Now: func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(b.StatusHandler())
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	addr := l.Addr().String()

	st, err := bridge.FetchStatus(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if st.Name != "desk-7" || st.Version != "v9" || !st.Started.Equal(now) || st.HSMD.Address != "127.0.0.1:7420" ||
		st.HSMD.Connected || st.Devices == nil || len(st.Devices) != 0 {
		t.Errorf("status %+v", st)
	}

	// The JSON names are part of the interface.
	resp, err := http.Get("http://" + addr + "/status")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	hsmd, _ := raw["hsmd"].(map[string]any)
	if raw["name"] != "desk-7" || hsmd["connected"] != false || hsmd["address"] != "127.0.0.1:7420" {
		t.Errorf("status JSON %s", body)
	}
	// Only GET.
	resp, err = http.Post("http://"+addr+"/status", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /status: %s", resp.Status)
	}

	// Metrics.
	mrec := httptest.NewRecorder()
	b.MetricsHandler().ServeHTTP(mrec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(mrec.Body.String(), "opencustody_bridge_hsmd_connected 0") {
		t.Errorf("metrics:\n%s", mrec.Body.String())
	}

	// Nothing listening: ErrNoBridge.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	if _, err := bridge.FetchStatus(ctx, deadAddr); !errors.Is(err, bridge.ErrNoBridge) {
		t.Errorf("FetchStatus with nothing listening: %v", err)
	}
	// Something else listening: not a bridge's status.
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "<html>") }))
	defer other.Close()
	if _, err := bridge.FetchStatus(ctx, strings.TrimPrefix(other.URL, "http://")); err == nil || !strings.Contains(err.Error(), "not a bridge's") {
		t.Errorf("FetchStatus from another server: %v", err)
	}
}

// Run stops when its context ends even if hsmd was never reachable.
func TestRunStopsWithoutHSMD(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.Addr().String()
	dead.Close()
	_, log := newLogs(t)
	cfg := fastConfig(log)
	cfg.HSMD = apiOptions(addr, "sha256:"+strings.Repeat("cd", 32))
	b := runBridge(t, cfg)
	ctx := testContext(t)
	eventually(t, ctx, "failed attempts", func() bool { return b.Status().HSMD.FailedAttempts >= 2 })
	st := b.Status()
	if st.HSMD.Connected || st.HSMD.LastError == "" || st.HSMD.NextAttempt.IsZero() {
		t.Errorf("unreachable hsmd: %+v", st.HSMD)
	}
	b.stop()
}
