package emulator

import (
	"errors"
	"fmt"
	"strings"
)

// The screen is a grid of text cells. These sizes are part of the firmware
// specification (firmware-spec/device.md, "Screen"): a device lays out a
// prompt into exactly these pages whatever its display, because the pages
// are what the user saw and what a later approval covers.
const (
	// Columns is the number of characters in one row.
	Columns = 21
	// Rows is the number of rows: one title row, [BodyRows] body rows and
	// one footer row.
	Rows = 8
	// BodyRows is the number of body lines on one page.
	BodyRows = Rows - 2
	// MaxPages bounds the pages of one document.
	MaxPages = 64
)

// Button is a logical button of the device.
type Button string

// The device's buttons. Hardware with fewer physical buttons maps them
// (firmware-spec/device.md, "Buttons").
const (
	// ButtonConfirm approves the prompt; only available on its last page.
	ButtonConfirm Button = "confirm"
	// ButtonReject declines the prompt; available on every page.
	ButtonReject Button = "reject"
	// ButtonNext shows the next page.
	ButtonNext Button = "next"
	// ButtonPrev shows the previous page.
	ButtonPrev Button = "prev"
)

// ParseButton parses a button name as used by the debug link.
func ParseButton(s string) (Button, error) {
	switch b := Button(s); b {
	case ButtonConfirm, ButtonReject, ButtonNext, ButtonPrev:
		return b, nil
	}
	return "", fmt.Errorf("emulator: unknown button %q (want confirm, reject, next or prev)", s)
}

// Errors from [Layout].
var (
	// ErrUnprintable means the text holds a character outside printable
	// ASCII (0x20-0x7e) other than the newline.
	ErrUnprintable = errors.New("emulator: text holds a character the screen cannot show")
	// ErrTitleTooLong means the title does not fit on the title row.
	ErrTitleTooLong = errors.New("emulator: title longer than one row")
	// ErrTooManyPages means the body needs more than [MaxPages] pages.
	ErrTooManyPages = errors.New("emulator: document needs too many pages")
)

// Document is content to show: a title and a body. The body's paragraphs
// are separated by "\n"; an empty paragraph is an empty line.
type Document struct {
	Title string
	Body  string
}

// Page is one screenful of a laid-out [Document]. Lines always holds
// exactly [BodyRows] entries, unused ones empty; no line is longer than
// [Columns] and none has trailing spaces.
type Page struct {
	Title string
	Lines []string
	// Index is the page's position, from 0; Count is the number of pages.
	Index, Count int
}

// Layout splits d into pages deterministically: paragraphs are word wrapped
// to [Columns] (a word longer than a row is cut at the row's end) and the
// lines are cut into pages of [BodyRows]. Spaces at the start of a line are dropped
// and a run of spaces that would reach the row's end ends the line instead.
// An empty body gives one empty page.
// The rules are the ones in firmware-spec/device.md, so a device with
// another display produces the same pages.
func Layout(d Document) ([]Page, error) {
	if err := checkPrintable(d.Title); err != nil {
		return nil, err
	}
	if len(d.Title) > Columns {
		return nil, fmt.Errorf("%w: %d characters, row holds %d", ErrTitleTooLong, len(d.Title), Columns)
	}
	if err := checkPrintable(strings.ReplaceAll(d.Body, "\n", "")); err != nil {
		return nil, err
	}
	var lines []string
	for para := range strings.SplitSeq(d.Body, "\n") {
		lines = append(lines, wrap(para, Columns)...)
		if len(lines) > MaxPages*BodyRows {
			return nil, fmt.Errorf("%w: limit %d", ErrTooManyPages, MaxPages)
		}
	}
	n := max(1, (len(lines)+BodyRows-1)/BodyRows)
	pages := make([]Page, n)
	for i := range pages {
		body := make([]string, BodyRows)
		copy(body, lines[min(i*BodyRows, len(lines)):min((i+1)*BodyRows, len(lines))])
		pages[i] = Page{Title: d.Title, Lines: body, Index: i, Count: n}
	}
	return pages, nil
}

func checkPrintable(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return fmt.Errorf("%w: byte 0x%02x at offset %d", ErrUnprintable, s[i], i)
		}
	}
	return nil
}

// wrap word-wraps one paragraph to width columns.
func wrap(para string, width int) []string {
	var lines []string
	line := ""
	for _, word := range splitWords(para) {
		// Spaces are kept inside a line; a run that does not fit ends the
		// line, and spaces at the start of a line are dropped.
		if word[0] == ' ' {
			switch {
			case line == "":
			case len(line)+len(word) < width:
				line += word
			default:
				lines = append(lines, line)
				line = ""
			}
			continue
		}
		if len(line)+len(word) > width && line != "" {
			lines = append(lines, strings.TrimRight(line, " "))
			line = ""
		}
		for len(word) > width {
			lines = append(lines, word[:width])
			word = word[width:]
		}
		line += word
	}
	return append(lines, strings.TrimRight(line, " "))
}

// splitWords splits s into alternating runs of spaces and non-spaces.
func splitWords(s string) []string {
	var out []string
	for len(s) > 0 {
		space := s[0] == ' '
		i := 1
		for i < len(s) && (s[i] == ' ') == space {
			i++
		}
		out = append(out, s[:i])
		s = s[i:]
	}
	return out
}

// View is what the device shows at one moment: a page of a document and the
// buttons that do something. The debug link serves it as JSON
// (package [github.com/opencustodynet/opencustody/emulator/debuglink]).
type View struct {
	// Seq increases every time the screen changes.
	Seq uint64
	// Kind is [KindHome] for the idle screen and [KindPrompt] while the device
	// waits for the user.
	Kind string
	Page Page
	// Buttons lists the buttons that act on this screen.
	Buttons []Button
	// Text is the whole document's text, every page, one line per line,
	// pages separated by an empty line; automation rules match it.
	Text string
	// Fields are the values the screen shows, by name ([FieldCode] and
	// the other Field constants), for tests that read them through the
	// debug link rather than parse Text. Nil when the screen shows none.
	// Do not modify.
	Fields map[string]string
}

// Kinds of screen ([View].Kind).
const (
	// KindHome is the idle screen.
	KindHome = "home"
	// KindPrompt is a request waiting for the user: a protected ping, or
	// the pairing screen.
	KindPrompt = "prompt"
)

// Names of [View].Fields.
const (
	// FieldDeviceID is the device id (home screen).
	FieldDeviceID = "device_id"
	// FieldHSMFingerprint is the fingerprint of the HSM identity key: the
	// pinned one on the home screen, the one the device is asked to pin
	// on the pairing screen.
	FieldHSMFingerprint = "hsm_fingerprint"
	// FieldUser and FieldRole are the user and role the device is, or is
	// to be, paired for.
	FieldUser = "user"
	FieldRole = "role"
	// FieldCode is the pairing code as shown, "123 456" (pairing screen).
	FieldCode = "code"
	// FieldRequestID is the id of the request a prompt belongs to (prompt
	// screens).
	FieldRequestID = "request_id"
)

// Footer returns the footer row drawn under the body: a reject mark, the
// page number with prev/next marks, and a confirm mark when confirming is
// possible. It is decoration derived from the view, not content.
func (v View) Footer() string {
	has := func(b Button) bool {
		for _, x := range v.Buttons {
			if x == b {
				return true
			}
		}
		return false
	}
	left, right := "  ", "  "
	if has(ButtonReject) {
		left = "X "
	}
	if has(ButtonConfirm) {
		right = "OK"
	}
	mid := ""
	if v.Page.Count > 1 {
		p, n := "  ", "  "
		if has(ButtonPrev) {
			p = "< "
		}
		if has(ButtonNext) {
			n = " >"
		}
		mid = fmt.Sprintf("%s%d/%d%s", p, v.Page.Index+1, v.Page.Count, n)
	}
	pad := Columns - len(left) - len(right) - len(mid)
	return left + strings.Repeat(" ", pad/2) + mid + strings.Repeat(" ", pad-pad/2) + right
}

// documentText joins the text of every page for automation rules.
func documentText(pages []Page) string {
	var b strings.Builder
	for i, p := range pages {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString(p.Title)
		b.WriteString("\n")
		for _, l := range p.Lines {
			b.WriteString(l)
			b.WriteString("\n")
		}
	}
	return b.String()
}
