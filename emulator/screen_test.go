package emulator

import (
	"bytes"
	"errors"
	"image/png"
	"reflect"
	"strings"
	"testing"
)

func TestWrap(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", []string{""}},
		{"hello world", []string{"hello world"}},
		{"send 0.5 BTC to the address below", []string{"send 0.5 BTC to the", "address below"}},
		{"bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", []string{"bc1qar0srrr7xfkvy5l64", "3lydnw9re59gtzzwf5mdq"}},
		{"fee: bc1qar0srrr7xfkvy5l643", []string{"fee:", "bc1qar0srrr7xfkvy5l64", "3"}},
		{"   indented", []string{"indented"}},
		{"a  b", []string{"a  b"}},
		{"twenty-one characters", []string{"twenty-one characters"}},
		{"twenty-one characters next", []string{"twenty-one characters", "next"}},
		{"abcdefghijklmnopqrst     x", []string{"abcdefghijklmnopqrst", "x"}},
		{"trailing   ", []string{"trailing"}},
	} {
		got := wrap(tc.in, Columns)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("wrap(%q) = %q, want %q", tc.in, got, tc.want)
		}
		for _, l := range got {
			if len(l) > Columns || strings.HasSuffix(l, " ") || strings.HasPrefix(l, " ") {
				t.Errorf("wrap(%q): bad line %q", tc.in, l)
			}
		}
	}
}

func TestLayoutPages(t *testing.T) {
	body := strings.Repeat("word ", 40) + "\n\nlast"
	pages, err := Layout(Document{Title: "Confirm", Body: body})
	if err != nil {
		t.Fatal(err)
	}
	// 200 characters of "word " wrap 4 words (19 chars) a line: 10 lines,
	// then an empty line and "last": 12 lines, two pages.
	if len(pages) != 2 {
		t.Fatalf("%d pages, want 2", len(pages))
	}
	for i, p := range pages {
		if p.Index != i || p.Count != 2 || p.Title != "Confirm" || len(p.Lines) != BodyRows {
			t.Errorf("page %d: %+v", i, p)
		}
	}
	if pages[1].Lines[5] != "last" || pages[1].Lines[4] != "" {
		t.Errorf("second page: %q", pages[1].Lines)
	}
	again, _ := Layout(Document{Title: "Confirm", Body: body})
	if !reflect.DeepEqual(pages, again) {
		t.Error("layout is not deterministic")
	}
	empty, err := Layout(Document{Title: "T"})
	if err != nil || len(empty) != 1 || len(empty[0].Lines) != BodyRows {
		t.Errorf("empty body: %v %v", empty, err)
	}
}

func TestLayoutErrors(t *testing.T) {
	for _, tc := range []struct {
		d    Document
		want error
	}{
		{Document{Title: "caf\u00e9"}, ErrUnprintable},
		{Document{Title: "t", Body: "tab\there"}, ErrUnprintable},
		{Document{Title: strings.Repeat("x", Columns+1)}, ErrTitleTooLong},
		{Document{Title: "t", Body: strings.Repeat("\n", MaxPages*BodyRows)}, ErrTooManyPages},
	} {
		if _, err := Layout(tc.d); !errors.Is(err, tc.want) {
			t.Errorf("Layout(%q): %v, want %v", tc.d, err, tc.want)
		}
	}
	if _, err := Layout(Document{Title: "t", Body: strings.Repeat("\n", MaxPages*BodyRows-1)}); err != nil {
		t.Errorf("exactly %d pages: %v", MaxPages, err)
	}
}

func TestFooterAndLines(t *testing.T) {
	pages, _ := Layout(Document{Title: "T", Body: strings.Repeat("x\n", 10)})
	v := View{Page: pages[0], Buttons: []Button{ButtonNext, ButtonReject}}
	for _, l := range v.Lines() {
		if len(l) != Columns {
			t.Errorf("line %q is %d wide", l, len(l))
		}
	}
	if f := v.Footer(); !strings.HasPrefix(f, "X ") || !strings.Contains(f, "1/2 >") || strings.Contains(f, "OK") {
		t.Errorf("first page footer %q", f)
	}
	v = View{Page: pages[1], Buttons: []Button{ButtonPrev, ButtonReject, ButtonConfirm}}
	if f := v.Footer(); !strings.Contains(f, "< 2/2") || !strings.HasSuffix(f, "OK") {
		t.Errorf("last page footer %q", f)
	}
}

func TestScreenshot(t *testing.T) {
	pages, _ := Layout(Document{Title: "Confirm ping", Body: "hello"})
	img, err := png.Decode(bytes.NewReader(View{Page: pages[0], Buttons: []Button{ButtonReject, ButtonConfirm}}.Screenshot()))
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != ScreenshotWidth || b.Dy() != ScreenshotHeight || b.Dx() != 310 || b.Dy() != 224 {
		t.Errorf("screenshot is %v, want %dx%d", b, ScreenshotWidth, ScreenshotHeight)
	}
	// Some text was drawn: the body area is not uniformly black.
	lit := 0
	for y := 2 * (border + cellH); y < 2*(border+2*cellH); y++ {
		for x := range ScreenshotWidth {
			if r, _, _, _ := img.At(x, y).RGBA(); r != 0 {
				lit++
			}
		}
	}
	if lit == 0 {
		t.Error("no text in the first body row")
	}
}

func TestParseKeys(t *testing.T) {
	got := parseKeys([]byte("\x1b[C\x1b[Dy\rn\x1bq\x03hlx"))
	want := []key{keyNext, keyPrev, keyConfirm, keyConfirm, keyReject, keyReject, keyQuit, keyQuit, keyPrev, keyNext}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseKeys = %v, want %v", got, want)
	}
}
