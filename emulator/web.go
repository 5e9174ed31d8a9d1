package emulator

import (
	"crypto/rand"
	"crypto/subtle"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// The web view: a page that shows the emulator's screen live and has its
// buttons, for people watching an emulator (and for demos). It is served
// on loopback only, like the debug link, and is as powerful as the debug
// link's press: never serve it from anything that holds real keys.
//
// Safety: the server refuses requests whose Host is not the address it
// listens on (so a page on another site cannot reach it through DNS
// rebinding), sends no CORS headers, and accepts a button press only as a
// POST carrying the per-run token of the page in the [WebTokenHeader]
// header: a cross-site page can neither read the token nor send a custom
// header without a CORS preflight the server never grants. The page may
// not be framed (clickjacking) and loads nothing from elsewhere.

// WebTokenHeader is the request header that carries the web view's per-run
// token on a button press.
const WebTokenHeader = "X-OpenCustody-Token"

//go:embed web/index.html
var webIndex string

//go:embed web/app.js
var webApp []byte

var webPage = template.Must(template.New("index").Parse(webIndex))

// ParseWebAddr checks a web view address: HOST:PORT with HOST a loopback
// IP address (127.0.0.1, ::1). Anything else is refused: whoever reaches
// the page can press the device's buttons.
func ParseWebAddr(addr string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("emulator: web address %q: want 127.0.0.1:PORT", addr)
	}
	if !ap.Addr().IsLoopback() {
		return netip.AddrPort{}, fmt.Errorf("emulator: web address %q is not a loopback address; the web view serves only 127.0.0.1 or ::1", addr)
	}
	return ap, nil
}

// WebHandler serves the web view of d. token is the per-run secret the page
// carries and a press must present; hosts lists the Host header values
// accepted (the listening address, and "localhost:PORT").
func WebHandler(d *Device, token string, hosts []string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		webPage.Execute(w, struct{ Token string }{token})
	})
	mux.HandleFunc("GET /app.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		w.Write(webApp)
	})
	mux.HandleFunc("GET /screen.png", func(w http.ResponseWriter, r *http.Request) {
		v, _ := d.View()
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(v.Screenshot())
	})
	mux.HandleFunc("GET /screen", func(w http.ResponseWriter, r *http.Request) {
		v, _ := d.View()
		writeJSON(w, http.StatusOK, screenJSON(v))
	})
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		fl, ok := w.(http.Flusher)
		if !ok {
			writeError(w, http.StatusInternalServerError, "streaming unsupported")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-store")
		var last uint64
		for {
			v, changed := d.View()
			if v.Seq != last {
				last = v.Seq
				b, _ := json.Marshal(screenJSON(v))
				if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
					return
				}
				fl.Flush()
			}
			select {
			case <-changed:
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("POST /press", func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get(WebTokenHeader)), []byte(token)) != 1 {
			writeError(w, http.StatusForbidden, "missing or wrong "+WebTokenHeader)
			return
		}
		servePress(w, r, d, 1<<12)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !containsFold(hosts, r.Host) {
			writeError(w, http.StatusMisdirectedRequest, "unexpected Host header")
			return
		}
		if o := r.Header.Get("Origin"); o != "" && !containsFold(hosts, strings.TrimPrefix(o, "http://")) {
			writeError(w, http.StatusForbidden, "cross-origin request refused")
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		mux.ServeHTTP(w, r)
	})
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// newWebToken returns a fresh random token for the web view.
func newWebToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// webHosts lists the Host values accepted for a server listening on ln.
func webHosts(ln net.Listener) []string {
	addr := ln.Addr().(*net.TCPAddr)
	port := fmt.Sprint(addr.Port)
	hosts := []string{net.JoinHostPort(addr.IP.String(), port), net.JoinHostPort("localhost", port)}
	return hosts
}

// recordScreens writes one PNG per screen change of d into dir, named by
// the screen's sequence number (000001.png, …), until stop is closed.
// Screens are taken from the device's log of views, so none is missed
// however fast they change.
func (d *Device) recordScreens(dir string, stop <-chan struct{}) error {
	for {
		views, changed := d.takeViews()
		for _, v := range views {
			name := filepath.Join(dir, fmt.Sprintf("%06d.png", v.Seq))
			if err := os.WriteFile(name, v.Screenshot(), 0o644); err != nil {
				d.log.Error("emulator: record screen", "file", name, "err", err)
			}
		}
		select {
		case <-changed:
		case <-stop:
			// Write what came last.
			views, _ := d.takeViews()
			for _, v := range views {
				_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("%06d.png", v.Seq)), v.Screenshot(), 0o644)
			}
			return nil
		}
	}
}

// startViewLog makes the device keep every view it shows, from the
// current one on, for [Device.takeViews].
func (d *Device) startViewLog() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.viewLog = []View{d.view}
	d.logViews = true
}

// takeViews returns the views shown since the last call, and a channel
// closed at the next change.
func (d *Device) takeViews() ([]View, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	vs := d.viewLog
	d.viewLog = nil
	return vs, d.changed
}
