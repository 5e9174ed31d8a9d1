package emulator_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// RequireBrowserEnv, when "1", makes a missing Chromium fail the browser
// test instead of skipping it; make test sets it, so that CI cannot pass
// without running the test.
const requireBrowserEnv = "OPENCUSTODY_REQUIRE_BROWSER"

// chromium finds a Chromium to drive: $OPENCUSTODY_CHROMIUM, or Debian's
// chromium package on the PATH.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("OPENCUSTODY_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv(requireBrowserEnv) == "1" {
		t.Fatalf("no Chromium found (chromium not on PATH, OPENCUSTODY_CHROMIUM unset) and %s=1: run 'make setup' (Debian package chromium)", requireBrowserEnv)
	}
	t.Skip("no Chromium found: install Debian's chromium (make setup) to run the web view's browser test")
	return ""
}

// TestWebViewInBrowser opens the emulator's web view in a real headless
// Chromium while the device asks its user to confirm a ping, clicks
// confirm, and sees the screen go back home and the ping succeed.
func TestWebViewInBrowser(t *testing.T) {
	path := chromium(t)
	emu, _ := webEmulator(t)
	done := protectedPing(t, emu, "Browser confirm")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox, // CI runs as root, where Chromium's sandbox cannot start
		chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()

	steps := func() (before, after string, shot []byte, err error) {
		if err = chromedp.Do(bctx,
			chromedp.Navigate(emu.WebURL()),
			chromedp.WaitVisible(chromedp.CSS(`#text[data-kind="prompt"]`)),
			chromedp.WaitEnabled(chromedp.CSS(`#confirm`)),
		); err != nil {
			return
		}
		if before, err = chromedp.Run(bctx, chromedp.Text(chromedp.CSS(`#text`))); err != nil {
			return
		}
		if err = chromedp.Do(bctx,
			chromedp.Click(chromedp.CSS(`#confirm`)),
			chromedp.WaitVisible(chromedp.CSS(`#text[data-kind="home"]`)),
		); err != nil {
			return
		}
		if after, err = chromedp.Run(bctx, chromedp.Text(chromedp.CSS(`#text`))); err != nil {
			return
		}
		shot, err = chromedp.Run(bctx, chromedp.CaptureScreenshot())
		return
	}
	before, after, shot, err := steps()
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the ping confirmed in the browser: %v", err)
	}
	if !strings.Contains(before, "Browser confirm") || !strings.Contains(after, "OpenCustody") || strings.Contains(after, "Browser confirm") {
		t.Errorf("screen text before the click %q, after %q", before, after)
	}
	if dir := os.Getenv("OPENCUSTODY_SCREENSHOT_DIR"); dir != "" {
		_ = os.WriteFile(filepath.Join(dir, "webview.png"), shot, 0o644)
	}
}
