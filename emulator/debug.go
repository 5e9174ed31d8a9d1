package emulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/opencustodynet/opencustody/emulator/debuglink"
)

// DebugHandler serves the debug link of d: HTTP with JSON bodies, as
// described in package [debuglink]. It is for emulators only: never serve
// it from anything that holds real keys.
func DebugHandler(d *Device) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/screen", func(w http.ResponseWriter, r *http.Request) {
		v, _ := d.View()
		writeJSON(w, http.StatusOK, screenJSON(v))
	})
	mux.HandleFunc("GET /v1/screen/next", func(w http.ResponseWriter, r *http.Request) {
		v, changed := d.View()
		after := v.Seq
		if s := r.URL.Query().Get("after"); s != "" {
			n, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				writeError(w, http.StatusBadRequest, "after: not a number")
				return
			}
			after = n
		}
		wait := 30 * time.Second
		if s := r.URL.Query().Get("wait"); s != "" {
			dur, err := time.ParseDuration(s)
			if err != nil || dur < 0 {
				writeError(w, http.StatusBadRequest, "wait: not a duration")
				return
			}
			wait = min(dur, debuglink.MaxWait)
		}
		timer := time.NewTimer(wait)
		defer timer.Stop()
		for v.Seq <= after {
			select {
			case <-changed:
				v, changed = d.View()
			case <-timer.C:
				writeError(w, http.StatusRequestTimeout, fmt.Sprintf("screen did not change within %s", wait))
				return
			case <-r.Context().Done():
				return
			}
		}
		writeJSON(w, http.StatusOK, screenJSON(v))
	})
	mux.HandleFunc("POST /v1/press", func(w http.ResponseWriter, r *http.Request) {
		servePress(w, r, d, 1<<16)
	})
	mux.HandleFunc("POST /v1/power-cycle", func(w http.ResponseWriter, r *http.Request) {
		if err := d.PowerCycle(); err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		v, _ := d.View()
		writeJSON(w, http.StatusOK, screenJSON(v))
	})
	mux.HandleFunc("GET /v1/screenshot", func(w http.ResponseWriter, r *http.Request) {
		v, _ := d.View()
		w.Header().Set("Content-Type", "image/png")
		w.Write(v.Screenshot())
	})
	mux.HandleFunc("GET /v1/rules", func(w http.ResponseWriter, r *http.Request) {
		out := []debuglink.Rule{}
		for _, rule := range d.Rules() {
			out = append(out, debuglink.Rule{Pattern: rule.Pattern.String(), Action: string(rule.Action)})
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("PUT /v1/rules", func(w http.ResponseWriter, r *http.Request) {
		var in []debuglink.Rule
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
			writeError(w, http.StatusBadRequest, "body: want a JSON array of {\"pattern\": REGEXP, \"action\": \"confirm\"|\"reject\"}")
			return
		}
		rules, err := ParseRules(in)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		d.SetRules(rules)
		writeJSON(w, http.StatusOK, in)
	})
	return mux
}

// ParseRules checks and compiles debug-link rules.
func ParseRules(in []debuglink.Rule) ([]Rule, error) {
	var rules []Rule
	for i, r := range in {
		re, err := regexp.Compile(r.Pattern)
		if err != nil {
			return nil, fmt.Errorf("emulator: rule %d: pattern: %w", i, err)
		}
		a := Button(r.Action)
		if a != ButtonConfirm && a != ButtonReject {
			return nil, fmt.Errorf("emulator: rule %d: action %q: want confirm or reject", i, r.Action)
		}
		rules = append(rules, Rule{Pattern: re, Action: a})
	}
	return rules, nil
}

// servePress presses the button that a {"button": NAME} body (read up
// to maxBody bytes) names and answers the screen after it: 400 for a bad
// body or button, 409 for a button the screen does not offer. The debug
// link and the web view both serve it.
func servePress(w http.ResponseWriter, r *http.Request, d *Device, maxBody int64) {
	var req struct {
		Button string `json:"button"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, maxBody)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "body: want {\"button\": NAME}")
		return
	}
	b, err := ParseButton(req.Button)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := d.Press(b); err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, ErrButtonUnavailable) {
			status = http.StatusConflict
		}
		writeError(w, status, err.Error())
		return
	}
	v, _ := d.View()
	writeJSON(w, http.StatusOK, screenJSON(v))
}

func screenJSON(v View) debuglink.Screen {
	bs := make([]string, 0, len(v.Buttons))
	for _, b := range v.Buttons {
		bs = append(bs, string(b))
	}
	return debuglink.Screen{
		Seq:     v.Seq,
		Kind:    v.Kind,
		Title:   v.Page.Title,
		Lines:   v.Page.Lines,
		Footer:  v.Footer(),
		Page:    v.Page.Index + 1,
		Pages:   v.Page.Count,
		Buttons: bs,
		Text:    v.Text,
		Fields:  v.Fields,
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, text string) {
	writeJSON(w, status, map[string]string{"error": text})
}
