package cli_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestDemo runs 'opencustody demo' end to end with real processes: a
// SoftHSM2 token, hsmd, three emulators, a bridge and btcd (from PATH or the
// module's .bin, where 'make setup' installs it).
func TestDemo(t *testing.T) {
	bin, err := moduleBin()
	if err != nil {
		t.Fatal(err)
	}
	testscript.Run(t, testscript.Params{
		Dir: "testdata/demo",
		Setup: func(env *testscript.Env) error {
			env.Setenv("PATH", env.Getenv("PATH")+string(os.PathListSeparator)+bin)
			return nil
		},
	})
}

// moduleBin returns the .bin directory at the module's root.
func moduleBin() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, ".bin"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no module root above the working directory")
		}
		dir = parent
	}
}
