package emulator

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Screenshot geometry: each text cell is a 7x13 glyph of
// golang.org/x/image/font/basicfont.Face7x13, the grid has a 4-pixel
// border, and the image is scaled by [ScreenshotScale].
const (
	cellW  = 7
	cellH  = 13
	border = 4
	// ScreenshotScale is the integer scale of screenshots.
	ScreenshotScale = 2
	// ScreenshotWidth and ScreenshotHeight are the size of every
	// screenshot in pixels: 310x224.
	ScreenshotWidth  = (Columns*cellW + 2*border) * ScreenshotScale
	ScreenshotHeight = (Rows*cellH + 2*border) * ScreenshotScale
)

// Lines returns the screen as [Rows] strings of exactly [Columns]
// characters: the title, the body lines, the footer.
func (v View) Lines() []string {
	out := make([]string, 0, Rows)
	pad := func(s string) string { return s + strings.Repeat(" ", max(0, Columns-len(s))) }
	out = append(out, pad(v.Page.Title))
	for i := range BodyRows {
		l := ""
		if i < len(v.Page.Lines) {
			l = v.Page.Lines[i]
		}
		out = append(out, pad(l))
	}
	return append(out, pad(v.Footer()))
}

// Screenshot renders the view as a black-and-white PNG of
// [ScreenshotWidth] x [ScreenshotHeight] pixels: white text on black, the
// title row inverted, like a monochrome OLED.
func (v View) Screenshot() []byte {
	pal := color.Palette{color.Black, color.White}
	w, h := ScreenshotWidth/ScreenshotScale, ScreenshotHeight/ScreenshotScale
	img := image.NewPaletted(image.Rect(0, 0, w, h), pal)
	// Title bar.
	for y := border - 1; y < border+cellH; y++ {
		for x := border - 1; x < w-border+1; x++ {
			img.SetColorIndex(x, y, 1)
		}
	}
	// Separator above the footer.
	for x := border - 1; x < w-border+1; x++ {
		img.SetColorIndex(x, border+(Rows-1)*cellH-1, 1)
	}
	for row, text := range v.Lines() {
		fg := image.Image(image.NewUniform(color.White))
		if row == 0 {
			fg = image.NewUniform(color.Black)
		}
		d := font.Drawer{
			Dst:  img,
			Src:  fg,
			Face: basicfont.Face7x13,
			Dot:  fixed.P(border, border+row*cellH+basicfont.Face7x13.Ascent),
		}
		d.DrawString(text)
	}
	big := image.NewPaletted(image.Rect(0, 0, ScreenshotWidth, ScreenshotHeight), pal)
	for y := range ScreenshotHeight {
		for x := range ScreenshotWidth {
			big.SetColorIndex(x, y, img.ColorIndexAt(x/ScreenshotScale, y/ScreenshotScale))
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, big); err != nil {
		panic("emulator: encode PNG in memory: " + err.Error())
	}
	return buf.Bytes()
}
