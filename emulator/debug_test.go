package emulator

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/emulator/debuglink"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

func TestDebugLinkHTTP(t *testing.T) {
	h := newHarness(t, "debug")
	h.allocate()
	srv := httptest.NewServer(DebugHandler(h.d))
	defer srv.Close()
	dl := debuglink.New(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	s, err := dl.Screen(ctx)
	if err != nil || s.Kind != debuglink.KindHome || len(s.Lines) != BodyRows || len(s.Buttons) != 0 {
		t.Fatalf("home screen %+v %v", s, err)
	}
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{"GET", "/v1/screen/next?wait=10ms", "", http.StatusRequestTimeout},
		{"GET", "/v1/screen/next?after=x", "", http.StatusBadRequest},
		{"GET", "/v1/screen/next?wait=soon", "", http.StatusBadRequest},
		{"POST", "/v1/press", "{", http.StatusBadRequest},
		{"POST", "/v1/press", `{"button": "shake"}`, http.StatusBadRequest},
		{"POST", "/v1/press", `{"button": "confirm"}`, http.StatusConflict},
		{"PUT", "/v1/rules", `{}`, http.StatusBadRequest},
		{"DELETE", "/v1/rules", "", http.StatusMethodNotAllowed},
		{"GET", "/v1/nothing", "", http.StatusNotFound},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s %s: %d, want %d", tc.method, tc.path, tc.body, resp.StatusCode, tc.status)
		}
	}
	resp, err := http.Get(srv.URL + "/v1/screenshot")
	if err != nil || resp.Header.Get("Content-Type") != "image/png" {
		t.Errorf("screenshot: %v %v", resp.Header, err)
	}
	resp.Body.Close()

	// NextScreen waits for the prompt.
	next := make(chan *debuglink.Screen, 1)
	go func() {
		s, err := dl.NextScreen(ctx, s.Seq)
		if err != nil {
			t.Error(err)
		}
		next <- s
	}()
	h.call(&pb.Ping{Message: "next", ButtonProtection: true})
	h.call(&pb.ButtonAck{})
	if p := <-next; p == nil || p.Kind != debuglink.KindPrompt || p.Title != "Confirm ping" || !p.Has(debuglink.Confirm) {
		t.Fatalf("next screen %+v", p)
	}
	_, err = dl.Press(ctx, debuglink.Next)
	var de *debuglink.Error
	if !errors.As(err, &de) || de.Status != http.StatusConflict || !strings.Contains(de.Error(), "not available") {
		t.Errorf("next on a one-page prompt: %v", err)
	}
	if s, err := dl.Press(ctx, debuglink.Confirm); err != nil || s.Kind != debuglink.KindHome {
		t.Errorf("confirm: %+v %v", s, err)
	}
	wantOne[*pb.Success](t, messagesToProto(t, h.host.take()))
}
