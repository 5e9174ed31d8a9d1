package hsm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/opencustodynet/opencustody/hsm/p11uri"
)

// PINPrompt asks a person for the user PIN of the token labelled token, for
// example on a terminal with echo off. It is called only when the URI has no
// pin-source or pin-value.
type PINPrompt func(ctx context.Context, token string) (string, error)

// pinSource describes where a PIN comes from, for messages. It never holds
// the PIN.
type pinSource string

// readPIN returns the PIN for token as u says: pin-source, then pin-value,
// then prompt.
func readPIN(ctx context.Context, u *p11uri.URI, prompt PINPrompt, token string, log *slog.Logger) (string, pinSource, error) {
	switch {
	case u.PINSource != "":
		return readPINSource(u.PINSource, token, log)
	case u.PINValue != "":
		return u.PINValue, "the URI's pin-value", nil
	case prompt != nil:
		pin, err := prompt(ctx, token)
		if err != nil {
			return "", "", fmt.Errorf("hsm: token %q: read PIN: %w", token, err)
		}
		if pin == "" {
			return "", "", fmt.Errorf("hsm: token %q: empty PIN", token)
		}
		return pin, "the prompt", nil
	}
	return "", "", fmt.Errorf("hsm: token %q: no PIN: add pin-source=file:/path/to/pin-file or pin-source=env:VARIABLE to the URI, or run where a PIN can be typed", token)
}

// maxPINFile bounds what is read from a PIN file.
const maxPINFile = 4096

func readPINSource(src, token string, log *slog.Logger) (string, pinSource, error) {
	if name, ok := strings.CutPrefix(src, "env:"); ok {
		what := pinSource("environment variable " + name)
		pin, set := os.LookupEnv(name)
		if !set {
			return "", what, fmt.Errorf("hsm: token %q: pin-source %s is not set", token, what)
		}
		if pin == "" {
			return "", what, fmt.Errorf("hsm: token %q: pin-source %s is empty", token, what)
		}
		return pin, what, nil
	}
	path := src
	if strings.HasPrefix(src, "file:") {
		fu, err := url.Parse(src)
		if err != nil || (fu.Host != "" && fu.Host != "localhost") || fu.Path == "" {
			return "", "", fmt.Errorf("hsm: token %q: pin-source %q is not a file: URI of a local file", token, src)
		}
		path = fu.Path
	} else if strings.Contains(src, ":") {
		return "", "", fmt.Errorf("hsm: token %q: pin-source %q: only file:, env: and plain paths are supported", token, src)
	}
	what := pinSource("file " + path)
	f, err := os.Open(path)
	if err != nil {
		return "", what, fmt.Errorf("hsm: token %q: read PIN: %w", token, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("hsm: PIN file is readable by other users; chmod 600 it", "path", path, "mode", fi.Mode().Perm().String())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPINFile))
	if err != nil {
		return "", what, fmt.Errorf("hsm: token %q: read PIN: %w", token, err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) == 0 {
		return "", what, fmt.Errorf("hsm: token %q: PIN %s is empty", token, what)
	}
	return string(line), what, nil
}
