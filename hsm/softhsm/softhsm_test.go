package softhsm_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/softhsm"
	"github.com/opencustodynet/opencustody/hsm/softhsm/softhsmtest"
)

func TestMain(m *testing.M) { softhsmtest.Main(m) }

func TestModulePath(t *testing.T) {
	p, err := softhsm.ModulePath()
	if err != nil {
		t.Fatalf("%v", err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	old := softhsm.ModulePaths
	t.Cleanup(func() { softhsm.ModulePaths = old })
	softhsm.ModulePaths = []string{"/nonexistent/libsofthsm2.so"}
	_, err = softhsm.ModulePath()
	if !errors.Is(err, softhsm.ErrNotInstalled) || !strings.Contains(err.Error(), "make setup") {
		t.Errorf("no SoftHSM2: %v", err)
	}
}

func TestWriteConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "hsm")
	conf, err := softhsm.WriteConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"directories.tokendir = " + filepath.Join(dir, "tokens") + "\n",
		"objectstore.backend = file\n",
		"log.level = ERROR\n",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("softhsm2.conf lacks %q:\n%s", want, b)
		}
	}
	for path, mode := range map[string]os.FileMode{conf: 0o600, filepath.Join(dir, "tokens"): 0o700} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), mode)
		}
	}
}

// TestTokensAreSeparate makes two tokens in the process's directory: each
// has its own label, serial and keys.
func TestTokensAreSeparate(t *testing.T) {
	a, b := softhsmtest.NewTestToken(t), softhsmtest.NewTestToken(t)
	if a.Label == b.Label || a.Serial == b.Serial || a.Conf != b.Conf {
		t.Fatalf("tokens %+v and %+v", a, b)
	}
	sa, err := hsm.Open(t.Context(), hsm.Config{URI: a.URI})
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	sb, err := hsm.Open(t.Context(), hsm.Config{URI: b.URI})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	if _, err := sa.GenerateKey(t.Context(), hsm.GenerateKeyRequest{Label: "only-on-a", Algorithm: hsm.ECDSAP256}); err != nil {
		t.Fatal(err)
	}
	keys, err := sb.ListKeys(t.Context())
	if err != nil || len(keys) != 0 {
		t.Errorf("token b sees keys %v (%v)", keys, err)
	}
}

func TestCreateTokenRefusals(t *testing.T) {
	tok := softhsmtest.NewTestToken(t)
	for name, req := range map[string]softhsm.CreateTokenRequest{
		"existing label": {Label: tok.Label, SOPIN: "12345678", UserPIN: "12345678"},
		"empty label":    {SOPIN: "12345678", UserPIN: "12345678"},
		"long label":     {Label: strings.Repeat("x", 33), SOPIN: "12345678", UserPIN: "12345678"},
		"short user PIN": {Label: "x", SOPIN: "12345678", UserPIN: "123"},
		"no SO PIN":      {Label: "x", UserPIN: "12345678"},
	} {
		if _, err := softhsm.CreateToken(req); err == nil || !strings.HasPrefix(err.Error(), "softhsm: ") {
			t.Errorf("%s: CreateToken = %v, want a softhsm: error", name, err)
		}
	}
}

// TestUseRefusesSecondConfig: SoftHSM2 reads its configuration once per
// process, so switching while it runs must fail loudly.
func TestUseRefusesSecondConfig(t *testing.T) {
	tok := softhsmtest.NewTestToken(t) // the module is initialised from here on
	other, err := softhsm.WriteConfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	err = softhsm.Use(other)
	if err == nil || !strings.Contains(err.Error(), "already initialised") || !strings.Contains(err.Error(), tok.Conf) {
		t.Errorf("Use of a second configuration: %v", err)
	}
	if err := softhsm.Use(tok.Conf); err != nil {
		t.Errorf("Use of the same configuration: %v", err)
	}
	if os.Getenv("SOFTHSM2_CONF") != tok.Conf {
		t.Errorf("SOFTHSM2_CONF = %q", os.Getenv("SOFTHSM2_CONF"))
	}
}

func TestNewPIN(t *testing.T) {
	a, b := softhsm.NewPIN(), softhsm.NewPIN()
	if a == b || len(a) < 20 {
		t.Errorf("NewPIN gave %q and %q", a, b)
	}
}
