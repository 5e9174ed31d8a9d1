package emulator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Terminal draws a device's screen in a terminal and turns keys into button
// presses:
//
//	← or h        prev        → or l    next
//	Enter or y    confirm     n or Esc  reject
//	q or Ctrl-C   quit the emulator
//
// The terminal must be in raw mode (golang.org/x/term.MakeRaw) so keys
// arrive one by one; Terminal writes "\r\n" line ends for that mode.
type Terminal struct {
	Device *Device
	// In delivers the keys; Out receives the drawing (ANSI escapes).
	In  io.Reader
	Out io.Writer
	// Status is shown under the screen, e.g. the addresses listened on.
	Status string
}

// key is a decoded key press.
type key int

const (
	keyNone key = iota
	keyPrev
	keyNext
	keyConfirm
	keyReject
	keyQuit
)

// parseKeys decodes the keys in one read from a raw-mode terminal. An
// escape byte that does not start a known sequence is the Esc key.
func parseKeys(b []byte) []key {
	var keys []key
	for len(b) > 0 {
		c := b[0]
		b = b[1:]
		switch c {
		case 0x1b:
			if len(b) >= 2 && (b[0] == '[' || b[0] == 'O') {
				switch b[1] {
				case 'C', 'B':
					keys = append(keys, keyNext)
				case 'D', 'A':
					keys = append(keys, keyPrev)
				}
				b = b[2:]
				continue
			}
			keys = append(keys, keyReject)
		case '\r', '\n', 'y', 'Y':
			keys = append(keys, keyConfirm)
		case 'n', 'N':
			keys = append(keys, keyReject)
		case 'h':
			keys = append(keys, keyPrev)
		case 'l':
			keys = append(keys, keyNext)
		case 'q', 'Q', 0x03, 0x04:
			keys = append(keys, keyQuit)
		}
	}
	return keys
}

// Run draws the screen whenever it changes and acts on keys until the user
// quits (nil), ctx ends (nil) or In fails (its error; io.EOF gives nil).
func (t *Terminal) Run(ctx context.Context) error {
	keys := make(chan []key)
	readErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := t.In.Read(buf)
			if n > 0 {
				select {
				case keys <- parseKeys(buf[:n]):
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()
	note := ""
	for {
		v, changed := t.Device.View()
		t.draw(v, note)
		select {
		case <-ctx.Done():
			return nil
		case err := <-readErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-changed:
			note = ""
		case ks := <-keys:
			note = ""
			for _, k := range ks {
				var b Button
				switch k {
				case keyQuit:
					fmt.Fprint(t.Out, "\r\n")
					return nil
				case keyPrev:
					b = ButtonPrev
				case keyNext:
					b = ButtonNext
				case keyConfirm:
					b = ButtonConfirm
				case keyReject:
					b = ButtonReject
				}
				if err := t.Device.Press(b); err != nil {
					note = fmt.Sprintf("(%s does nothing here)", b)
				}
			}
		}
	}
}

// draw clears the terminal and draws the screen in a frame.
func (t *Terminal) draw(v View, note string) {
	var b strings.Builder
	b.WriteString("\x1b[H\x1b[2J")
	bar := strings.Repeat("─", Columns+2)
	b.WriteString("┌" + bar + "┐\r\n")
	for i, l := range v.Lines() {
		if i == 0 {
			// The title row in reverse video, as on the device.
			b.WriteString("│\x1b[7m " + l + " \x1b[0m│\r\n")
			continue
		}
		if i == Rows-1 {
			b.WriteString("├" + bar + "┤\r\n")
		}
		b.WriteString("│ " + l + " │\r\n")
	}
	b.WriteString("└" + bar + "┘\r\n")
	b.WriteString("←/→ page  Enter/y confirm  n/Esc reject  q quit\r\n")
	if t.Status != "" {
		b.WriteString(strings.ReplaceAll(t.Status, "\n", "\r\n") + "\r\n")
	}
	if note != "" {
		b.WriteString(note + "\r\n")
	}
	io.WriteString(t.Out, b.String())
}
