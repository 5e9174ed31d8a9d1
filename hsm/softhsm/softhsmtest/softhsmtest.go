// Package softhsmtest gives tests a real SoftHSM2 token of their own.
//
//	func TestMain(m *testing.M) { softhsmtest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		tok := softhsmtest.NewTestToken(t)
//		store, err := hsm.Open(ctx, hsm.Config{URI: tok.URI})
//		...
//	}
//
// Every test binary (that is, every test package) gets its own token
// directory under the system's temporary directory, created on first use;
// every [NewTestToken] call makes a new token with a unique label in it, so
// tests do not see each other's keys. One directory per process is what
// SoftHSM2 needs: it reads SOFTHSM2_CONF once per process, and processes
// starting on one shared directory fail spuriously. [Main] removes the
// directory when the tests end; without it the directory is left behind in
// the temporary directory.
//
// If SoftHSM2 is not installed, NewTestToken fails the test with a message
// saying to run `make setup`; it never skips.
package softhsmtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencustodynet/opencustody/hsm/internal/module"
	"github.com/opencustodynet/opencustody/hsm/softhsm"
)

// Token is a fresh, initialised SoftHSM2 token with no objects.
type Token struct {
	// URI names the token with module-path and a pin-source file; pass it to
	// hsm.Open as is.
	URI        string
	Label      string
	Serial     string
	ModulePath string
	PIN        string // the user PIN, also in PINFile
	PINFile    string
	SOPIN      string
	// Conf is the process's softhsm2.conf. Tools run on the token (such as
	// pkcs11-tool) need SOFTHSM2_CONF=Conf in their environment.
	Conf string
}

var (
	setupOnce sync.Once
	setupErr  error
	dir       string         // the process's token directory root
	mod       *module.Module // held for the whole run, so SoftHSM2 stays initialised
	counter   atomic.Uint64
)

func setup() {
	path, err := softhsm.ModulePath()
	if err != nil {
		setupErr = err
		return
	}
	dir, err = os.MkdirTemp("", "opencustody-softhsm-")
	if err != nil {
		setupErr = fmt.Errorf("softhsmtest: %w", err)
		return
	}
	conf, err := softhsm.WriteConfig(dir)
	if err != nil {
		setupErr = err
		return
	}
	if err := softhsm.Use(conf); err != nil {
		setupErr = err
		return
	}
	if mod, err = module.Acquire(path); err != nil {
		setupErr = fmt.Errorf("softhsmtest: %w; run `make setup` to install SoftHSM2", err)
		return
	}
}

// NewTestToken creates a new token for t in the process's token directory and
// returns it. The PIN file is written with mode 0600.
func NewTestToken(t testing.TB) *Token {
	t.Helper()
	setupOnce.Do(setup)
	if setupErr != nil {
		t.Fatalf("softhsmtest: no SoftHSM2 token for this test: %v", setupErr)
	}
	n := counter.Add(1)
	label := fmt.Sprintf("test-%d-%s", n, sanitize(t.Name()))
	if len(label) > 32 {
		label = label[:32]
	}
	pin, so := softhsm.NewPIN(), softhsm.NewPIN()
	tok, err := softhsm.CreateToken(softhsm.CreateTokenRequest{ModulePath: mod.Path, Label: label, SOPIN: so, UserPIN: pin})
	if err != nil {
		t.Fatalf("softhsmtest: %v", err)
	}
	pinFile := filepath.Join(dir, fmt.Sprintf("pin-%d", n))
	if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
		t.Fatalf("softhsmtest: %v", err)
	}
	return &Token{
		URI:        tok.URI("file:" + pinFile),
		Label:      tok.Label,
		Serial:     tok.Serial,
		ModulePath: tok.ModulePath,
		PIN:        pin,
		PINFile:    pinFile,
		SOPIN:      so,
		Conf:       tok.Conf,
	}
}

// Main runs the tests and then removes the process's token directory. Call it
// from TestMain; it does not return.
func Main(m *testing.M) {
	code := m.Run()
	if dir != "" {
		if mod != nil {
			mod.Release()
		}
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

func sanitize(name string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '_'
		}
		return r
	}, name)
}
