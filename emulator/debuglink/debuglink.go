// Package debuglink is the client of the emulator's debug link: the
// test-only side door through which a test reads the emulator's screen,
// presses its buttons, takes screenshots and sets automation rules, as
// Trezor's debuglink and Speculos' automation do. Real devices have no debug
// link, and an emulator started with --production has none either.
//
// # Wire format
//
// The debug link is HTTP with JSON bodies on loopback (by default on the
// port after the emulator's UDP port). firmware-spec/device.md, "Debug
// link", is the reference; in short:
//
//	GET  /v1/screen                        current [Screen]
//	GET  /v1/screen/next?after=SEQ&wait=D  the first screen with seq > SEQ, waiting up to D (default 30s, at most 60s; 408 if none)
//	POST /v1/press   {"button":"next"}     press a button, answers the new [Screen] (409 if the button does nothing now)
//	GET  /v1/screenshot                    the screen as a PNG image
//	GET  /v1/rules                         the automation rules, a JSON array of [Rule]
//	PUT  /v1/rules   [Rule, ...]           replace the automation rules
//	POST /v1/power-cycle                   unplug and plug back in: state reread from disk, channels forgotten
//
// Errors are answered with a non-2xx status and {"error": "text"}. With
// curl: curl -s localhost:21425/v1/screen.
//
// # Use
//
// A test starts emulators (package emulator's Start, or the opencustody
// emulator command), talks to them over the device protocol with package
// device, and drives the screens with a [Client]:
//
//	dl := debuglink.New(emu.DebugURL())
//	s, err := dl.WaitFor(ctx, func(s *debuglink.Screen) bool { return s.Kind == "prompt" })
//	s, err = dl.Press(ctx, debuglink.Confirm)
package debuglink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Button names.
const (
	Confirm = "confirm"
	Reject  = "reject"
	Next    = "next"
	Prev    = "prev"
)

// Screen kinds.
const (
	// KindHome is the idle screen.
	KindHome = "home"
	// KindPrompt is a prompt waiting for the user.
	KindPrompt = "prompt"
)

// Screen is the structured content of the emulator's screen.
type Screen struct {
	// Seq increases with every change of the screen.
	Seq uint64 `json:"seq"`
	// Kind is [KindHome] or [KindPrompt].
	Kind  string `json:"kind"`
	Title string `json:"title"`
	// Lines are the body rows of the current page, always all of them,
	// unused ones empty.
	Lines []string `json:"lines"`
	// Footer is the footer row as drawn (page number and button marks).
	Footer string `json:"footer"`
	// Page is the current page, from 1, of Pages.
	Page  int `json:"page"`
	Pages int `json:"pages"`
	// Buttons lists the buttons that act on this screen.
	Buttons []string `json:"buttons"`
	// Text is the whole document, every page (what rules match).
	Text string `json:"text"`
	// Fields are the values the screen shows, by name, so that tests need
	// not parse Text: on the home screen "device_id" and, once paired,
	// "hsm_fingerprint", "user" and "role"; on the pairing screen
	// "hsm_fingerprint", "user", "role" and "code" (as shown, "123 456");
	// on a prompt's screen "request_id".
	Fields map[string]string `json:"fields,omitempty"`
}

// Has reports whether button acts on the screen.
func (s *Screen) Has(button string) bool {
	for _, b := range s.Buttons {
		if b == button {
			return true
		}
	}
	return false
}

// Rule is an automation rule: when a prompt whose Text matches the
// regular expression Pattern (Go RE2 syntax) appears, the emulator presses
// Action: "confirm" (after paging through every page) or "reject".
type Rule struct {
	Pattern string `json:"pattern"`
	Action  string `json:"action"`
}

// Error is a failure answered by the debug link.
type Error struct {
	// Status is the HTTP status code, e.g. 409 for a button that does
	// nothing on the current screen.
	Status int
	Text   string
}

func (e *Error) Error() string { return fmt.Sprintf("debuglink: %s (HTTP %d)", e.Text, e.Status) }

// Client talks to one emulator's debug link. It is safe for concurrent use.
type Client struct {
	base string
	hc   *http.Client
}

// New returns a client for the debug link at base, either a URL
// ("http://127.0.0.1:21425") or a host:port.
func New(base string) *Client {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &Client{base: strings.TrimRight(base, "/"), hc: &http.Client{}}
}

// Screen returns the current screen.
func (c *Client) Screen(ctx context.Context) (*Screen, error) {
	var s Screen
	if err := c.do(ctx, http.MethodGet, "/v1/screen", nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// NextScreen returns the first screen with a sequence number above after,
// waiting until ctx ends.
func (c *Client) NextScreen(ctx context.Context, after uint64) (*Screen, error) {
	for {
		var s Screen
		q := url.Values{"after": {strconv.FormatUint(after, 10)}, "wait": {"30s"}}
		err := c.do(ctx, http.MethodGet, "/v1/screen/next?"+q.Encode(), nil, &s)
		var de *Error
		if errors.As(err, &de) && de.Status == http.StatusRequestTimeout {
			continue
		}
		if err != nil {
			return nil, err
		}
		return &s, nil
	}
}

// WaitFor returns the first screen, the current one included, for which ok
// is true, waiting until ctx ends.
func (c *Client) WaitFor(ctx context.Context, ok func(*Screen) bool) (*Screen, error) {
	s, err := c.Screen(ctx)
	for err == nil && !ok(s) {
		s, err = c.NextScreen(ctx, s.Seq)
	}
	return s, err
}

// Press presses button and returns the screen after it.
func (c *Client) Press(ctx context.Context, button string) (*Screen, error) {
	var s Screen
	if err := c.do(ctx, http.MethodPost, "/v1/press", map[string]string{"button": button}, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// ConfirmAll pages through the prompt on the screen and confirms it, as a
// user who read every page would.
func (c *Client) ConfirmAll(ctx context.Context) (*Screen, error) {
	s, err := c.Screen(ctx)
	for err == nil && s.Has(Next) {
		s, err = c.Press(ctx, Next)
	}
	if err != nil {
		return nil, err
	}
	return c.Press(ctx, Confirm)
}

// Screenshot returns the screen as a PNG image.
func (c *Client) Screenshot(ctx context.Context) ([]byte, error) {
	var b []byte
	if err := c.do(ctx, http.MethodGet, "/v1/screenshot", nil, &b); err != nil {
		return nil, err
	}
	return b, nil
}

// Rules returns the automation rules.
func (c *Client) Rules(ctx context.Context) ([]Rule, error) {
	var rs []Rule
	if err := c.do(ctx, http.MethodGet, "/v1/rules", nil, &rs); err != nil {
		return nil, err
	}
	return rs, nil
}

// SetRules replaces the automation rules; an empty list removes them.
func (c *Client) SetRules(ctx context.Context, rules []Rule) error {
	if rules == nil {
		rules = []Rule{}
	}
	return c.do(ctx, http.MethodPut, "/v1/rules", rules, nil)
}

// PowerCycle simulates unplugging the emulator and plugging it back in:
// it forgets its channels, its secure channel and a pending request, and
// reads its state again from disk. It answers the home screen.
func (c *Client) PowerCycle(ctx context.Context) (*Screen, error) {
	var s Screen
	if err := c.do(ctx, http.MethodPost, "/v1/power-cycle", struct{}{}, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// do sends a request with body as JSON and decodes the answer into out: a
// *[]byte gets the raw body, anything else is JSON-decoded.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("debuglink: encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("debuglink: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("debuglink: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("debuglink: %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		return &Error{Status: resp.StatusCode, Text: e.Error}
	}
	switch out := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*out = data
		return nil
	default:
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("debuglink: %s %s: decode answer: %w", method, path, err)
		}
		return nil
	}
}

// MaxWait is the longest a /v1/screen/next request waits.
const MaxWait = 60 * time.Second
