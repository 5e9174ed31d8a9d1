// Package module holds the process's PKCS#11 modules: one loaded and
// initialised context per module path, shared by every user in the process.
//
// PKCS#11 allows one C_Initialize per module per process (a second one
// returns CKR_CRYPTOKI_ALREADY_INITIALIZED), and SoftHSM2 reads SOFTHSM2_CONF
// only then. [Acquire] therefore hands out a counted reference to a single
// [Module] per path; the last [Module.Release] finalises it, so a later
// Acquire initialises it again (and SoftHSM2 reads its configuration again).
// The library itself stays loaded for the life of the process.
package module

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/miekg/pkcs11"
)

// ErrLoad is wrapped by errors from [Acquire] when the module cannot be
// loaded or initialised.
var ErrLoad = errors.New("cannot load PKCS#11 module")

// A Module is an initialised PKCS#11 module shared by the whole process.
type Module struct {
	// Path is the module's path as the caller gave it.
	Path string
	// Ctx is the initialised context. It is safe for concurrent use
	// (initialised with CKF_OS_LOCKING_OK); sessions are not.
	Ctx *pkcs11.Ctx
	// SlotMu serialises operations that change the slot list, such as
	// C_InitToken on SoftHSM2's free slot.
	SlotMu sync.Mutex

	key   string // canonical path: the registry key
	conf  string // SOFTHSM2_CONF when the module was initialised
	owned bool   // we called C_Initialize, so we call C_Finalize
	refs  int    // guarded by mu
}

var (
	// mu guards modules, loaded and each Module's refs and conf. It is held
	// across C_Initialize and C_Finalize, which are quick and must not race.
	mu      sync.Mutex
	modules = map[string]*Module{}     // initialised modules by canonical path
	loaded  = map[string]*pkcs11.Ctx{} // every library loaded, initialised or not
)

// Acquire returns the process's module at path, loading and initialising it
// on first use. Every successful Acquire must be paired with a Release.
func Acquire(path string) (*Module, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: no module path given", ErrLoad)
	}
	key, err := canonical(path)
	if err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	if m := modules[key]; m != nil {
		m.refs++
		return m, nil
	}
	ctx := loaded[key]
	if ctx == nil {
		ctx = pkcs11.New(path)
		if ctx == nil {
			// miekg/pkcs11 returns nil, with no reason, when dlopen or
			// C_GetFunctionList fails.
			return nil, fmt.Errorf("%w %s: the file exists but is not a loadable PKCS#11 library (dlopen or C_GetFunctionList failed; check the architecture and that it is the PKCS#11 module, not a tool)", ErrLoad, path)
		}
		loaded[key] = ctx
	}
	owned := true
	if err := ctx.Initialize(); err != nil {
		var p11 pkcs11.Error
		if !errors.As(err, &p11) || p11 != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			return nil, fmt.Errorf("%w %s: C_Initialize: %w", ErrLoad, path, err)
		}
		// Someone initialised this library behind our back (another path
		// to the same file, or other code in the process). Share it, and
		// leave finalising it to its owner.
		owned = false
	}
	m := &Module{Path: path, Ctx: ctx, key: key, conf: os.Getenv("SOFTHSM2_CONF"), owned: owned, refs: 1}
	modules[key] = m
	return m, nil
}

// Release drops a reference taken by Acquire. The last one finalises the
// module; the Module must not be used after its Release.
func (m *Module) Release() error {
	mu.Lock()
	defer mu.Unlock()
	m.refs--
	if m.refs > 0 {
		return nil
	}
	delete(modules, m.key)
	if !m.owned {
		return nil
	}
	if err := m.Ctx.Finalize(); err != nil {
		return fmt.Errorf("C_Finalize %s: %w", m.Path, err)
	}
	return nil
}

// Conf returns the value SOFTHSM2_CONF had when the module was initialised.
func (m *Module) Conf() string { return m.conf }

// InitializedConfs returns, for every module initialised in this process,
// its path and the SOFTHSM2_CONF it was initialised with.
func InitializedConfs() map[string]string {
	mu.Lock()
	defer mu.Unlock()
	out := make(map[string]string, len(modules))
	for _, m := range modules {
		out[m.Path] = m.conf
	}
	return out
}

// canonical resolves path to the file it names, so two spellings of one
// library share one Module. It also turns a missing file into a clear error
// before dlopen can give an unclear one.
func canonical(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("%w %s: %w", ErrLoad, path, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%w %s: no such file", ErrLoad, path)
		}
		return "", fmt.Errorf("%w %s: %w", ErrLoad, path, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("%w %s: %w", ErrLoad, path, err)
	}
	if fi.IsDir() {
		return "", fmt.Errorf("%w %s: is a directory, not a library file", ErrLoad, path)
	}
	return real, nil
}
