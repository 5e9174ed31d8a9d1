package emulator_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/device"
	"github.com/opencustodynet/opencustody/emulator"
	"github.com/opencustodynet/opencustody/emulator/debuglink"
)

func TestParseWebAddr(t *testing.T) {
	for _, a := range []string{"127.0.0.1:0", "127.0.0.1:8080", "[::1]:9000", "127.1.2.3:80"} {
		if _, err := emulator.ParseWebAddr(a); err != nil {
			t.Errorf("%s: %v", a, err)
		}
	}
	for _, a := range []string{"0.0.0.0:8080", "[::]:80", "192.168.1.2:80", "10.0.0.1:80", "localhost:80", "example.com:80", ":8080", "127.0.0.1"} {
		if _, err := emulator.ParseWebAddr(a); err == nil {
			t.Errorf("%s: accepted", a)
		}
	}
	if _, err := emulator.Start(emulator.Options{StateDir: t.TempDir(), WebAddr: "0.0.0.0:0"}); err == nil {
		t.Error("Start served the web view on 0.0.0.0")
	}
}

// webEmulator starts an emulator with its web view and screen recording.
func webEmulator(t *testing.T) (*emulator.Emulator, string) {
	t.Helper()
	rec := filepath.Join(t.TempDir(), "screens")
	emu, err := emulator.Start(emulator.Options{StateDir: t.TempDir(), DebugLink: true, WebAddr: "127.0.0.1:0", RecordDir: rec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	if !strings.HasPrefix(emu.WebURL(), "http://127.0.0.1:") {
		t.Fatalf("web URL %q", emu.WebURL())
	}
	return emu, rec
}

// protectedPing starts a Ping the device's user must confirm, and returns
// a channel with its outcome.
func protectedPing(t *testing.T, emu *emulator.Emulator, msg string) <-chan error {
	t.Helper()
	tr, err := device.DialUDP(emu.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cl, err := device.NewClient(ctx, tr, device.ClientOptions{})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		defer cancel()
		defer cl.Close()
		_, err := cl.Ping(ctx, device.PingRequest{Message: msg, ButtonProtection: true})
		done <- err
	}()
	return done
}

func request(t *testing.T, method, url string, header map[string]string, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestWebView(t *testing.T) {
	emu, rec := webEmulator(t)
	base := strings.TrimSuffix(emu.WebURL(), "/")

	status, page := request(t, "GET", base+"/", nil, "")
	m := regexp.MustCompile(`<meta name="opencustody-token" content="([0-9a-f]{32})">`).FindStringSubmatch(page)
	if status != 200 || m == nil {
		t.Fatalf("GET /: %d, no token in the page:\n%s", status, page)
	}
	token := m[1]

	// The page is protected against framing and foreign content.
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") || resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("headers: %v", resp.Header)
	}

	done := protectedPing(t, emu, "Watch me")
	dl := debuglink.New(emu.DebugURL())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := dl.WaitFor(ctx, func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindPrompt }); err != nil {
		t.Fatal(err)
	}

	// Presses that must be refused, and the prompt still on the screen.
	body := `{"button": "confirm"}`
	for name, h := range map[string]map[string]string{
		"no token":     {},
		"wrong token":  {emulator.WebTokenHeader: strings.Repeat("0", 32)},
		"foreign host": {emulator.WebTokenHeader: token, "Host": "evil.example:80"},
		"cross origin": {emulator.WebTokenHeader: token, "Origin": "http://evil.example"},
	} {
		if status, text := request(t, "POST", base+"/press", h, body); status/100 == 2 {
			t.Errorf("%s: press accepted: %d %s", name, status, text)
		}
	}
	if status, _ := request(t, "GET", base+"/press", map[string]string{emulator.WebTokenHeader: token}, ""); status != http.StatusMethodNotAllowed {
		t.Errorf("GET /press: %d", status)
	}
	if s, err := dl.Screen(ctx); err != nil || s.Kind != debuglink.KindPrompt {
		t.Fatalf("after refused presses: %v %v", s, err)
	}

	// Server-sent events show the screen; a press with the token confirms.
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/events", nil)
	ev, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Body.Close()
	events := bufio.NewScanner(ev.Body)
	nextEvent := func() debuglink.Screen {
		t.Helper()
		for events.Scan() {
			if d, ok := strings.CutPrefix(events.Text(), "data: "); ok {
				var s debuglink.Screen
				if err := json.Unmarshal([]byte(d), &s); err != nil {
					t.Fatal(err)
				}
				return s
			}
		}
		t.Fatalf("event stream ended: %v", events.Err())
		return debuglink.Screen{}
	}
	if s := nextEvent(); s.Kind != debuglink.KindPrompt || !strings.Contains(s.Text, "Watch me") {
		t.Fatalf("first event: %+v", s)
	}
	if status, text := request(t, "POST", base+"/press", map[string]string{emulator.WebTokenHeader: token, "Content-Type": "application/json"}, body); status != 200 {
		t.Fatalf("press with the token: %d %s", status, text)
	}
	if err := <-done; err != nil {
		t.Fatalf("the ping confirmed on the web view: %v", err)
	}
	if s := nextEvent(); s.Kind != debuglink.KindHome {
		t.Fatalf("event after confirm: %+v", s)
	}
	if status, _ := request(t, "POST", base+"/press", map[string]string{emulator.WebTokenHeader: token}, body); status != http.StatusConflict {
		t.Errorf("confirm on the home screen: %d, want 409", status)
	}
	status, png := request(t, "GET", base+"/screen.png", nil, "")
	if status != 200 || !strings.HasPrefix(png, "\x89PNG") {
		t.Errorf("screen.png: %d", status)
	}

	// One PNG per screen: home, the prompt, home again.
	emu.Close()
	s, err := os.ReadDir(rec)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range s {
		names = append(names, e.Name())
	}
	if want := []string{"000001.png", "000002.png", "000003.png"}; fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("recorded %v, want %v", names, want)
	}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(rec, n))
		if err != nil || !strings.HasPrefix(string(b), "\x89PNG") {
			t.Errorf("%s: not a PNG (%v)", n, err)
		}
	}
}
