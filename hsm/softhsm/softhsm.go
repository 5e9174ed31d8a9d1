// Package softhsm sets up SoftHSM2, the software PKCS#11 token that is
// OpenCustody's embedded default HSM, from Go and without its command-line
// tools.
//
// # A token in three steps
//
//	conf, err := softhsm.WriteConfig(dir)   // dir/softhsm2.conf, tokens in dir/tokens
//	err = softhsm.Use(conf)                 // SOFTHSM2_CONF for this process
//	tok, err := softhsm.CreateToken(softhsm.CreateTokenRequest{
//		ModulePath: path, Label: "opencustody", SOPIN: so, UserPIN: pin,
//	})
//
// tok.URI(pinSource) is then the RFC 7512 URI that
// [github.com/opencustodynet/opencustody/hsm.Open] takes.
//
// # One configuration per process
//
// SoftHSM2 reads SOFTHSM2_CONF once, when the module is initialised, and a
// process initialises a PKCS#11 module once (see
// [github.com/opencustodynet/opencustody/hsm]). So a process works with one
// token directory at a time: [Use] refuses to switch while the module is
// initialised with another configuration. Hold several tokens in one
// directory instead. Without SOFTHSM2_CONF, SoftHSM2 silently uses the
// system-wide /var/lib/softhsm/tokens; [Use] makes the choice explicit.
//
// Several processes starting on one token directory at the same moment can
// fail spuriously (CKR_SLOT_ID_INVALID, CKR_GENERAL_ERROR), so tests give each
// process its own directory: package
// [github.com/opencustodynet/opencustody/hsm/softhsm/softhsmtest] does that.
package softhsm

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/opencustodynet/opencustody/hsm/internal/module"
	"github.com/opencustodynet/opencustody/hsm/p11uri"
)

// ErrNotInstalled is returned by [ModulePath] when no SoftHSM2 module is found.
var ErrNotInstalled = errors.New("softhsm: SoftHSM2 is not installed")

// ModulePaths are the places SoftHSM2's PKCS#11 module is installed by Debian,
// Ubuntu, Fedora, Homebrew and source builds, in the order [ModulePath]
// tries them.
var ModulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/lib/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
	"/usr/local/opt/softhsm/lib/softhsm/libsofthsm2.so",
}

// ModulePath returns the path of the installed SoftHSM2 module: the first of
// [ModulePaths] that exists. If none does, the error wraps [ErrNotInstalled]
// and says how to install it.
func ModulePath() (string, error) {
	for _, p := range ModulePaths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w (looked for libsofthsm2.so in %s): run `make setup`, or install it yourself (Debian/Ubuntu: apt-get install softhsm2 opensc; macOS: brew install softhsm opensc)",
		ErrNotInstalled, strings.Join(ModulePaths, ", "))
}

// Config is the softhsm2.conf that [WriteConfig] writes: a file object store
// (one directory per token, nothing shared with the system's tokens) and
// only errors logged, to syslog. %s is the token directory.
const Config = `# SoftHSM2 configuration for OpenCustody (written by opencustody; SOFTHSM2_CONF points here).
directories.tokendir = %s
objectstore.backend = file
log.level = ERROR
slots.removable = false
`

// WriteConfig writes dir/softhsm2.conf naming dir/tokens as the token
// directory, creates both with owner-only permissions, and returns the
// configuration file's absolute path. An existing configuration is
// rewritten; existing tokens are kept.
func WriteConfig(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("softhsm: %w", err)
	}
	if strings.ContainsAny(dir, "\n\r") {
		return "", fmt.Errorf("softhsm: directory %q has a line break in its name", dir)
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return "", fmt.Errorf("softhsm: create token directory: %w", err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, Config, tokens), 0o600); err != nil {
		return "", fmt.Errorf("softhsm: write configuration: %w", err)
	}
	return conf, nil
}

// Use points this process's SoftHSM2 at the configuration file conf by
// setting SOFTHSM2_CONF. Call it before the module is first opened: SoftHSM2
// reads the variable only when it is initialised. It fails if a module is
// already initialised in this process with a different configuration.
func Use(conf string) error {
	conf, err := filepath.Abs(conf)
	if err != nil {
		return fmt.Errorf("softhsm: %w", err)
	}
	if _, err := os.Stat(conf); err != nil {
		return fmt.Errorf("softhsm: configuration %w", err)
	}
	for path, c := range module.InitializedConfs() {
		if c != conf {
			return fmt.Errorf("softhsm: module %s is already initialised in this process with SOFTHSM2_CONF=%q; SoftHSM2 reads its configuration once per process, so close every store first or keep all tokens under one configuration", path, c)
		}
	}
	return os.Setenv("SOFTHSM2_CONF", conf)
}

// CreateTokenRequest says what token [CreateToken] makes.
type CreateTokenRequest struct {
	// ModulePath is SoftHSM2's module; empty means [ModulePath]().
	ModulePath string
	// Label is the new token's label, at most 32 bytes. It must not be the
	// label of a token already in the directory.
	Label string
	// SOPIN is the Security Officer's PIN and UserPIN the user's (the one
	// OpenCustody logs in with). Both are 4 to 255 bytes; [NewPIN] makes good ones.
	SOPIN, UserPIN string
}

// Token describes a token [CreateToken] made.
type Token struct {
	ModulePath string
	Label      string
	Serial     string // assigned by SoftHSM2; with Label it names the token for good
	SlotID     uint   // the slot it was in when created; SoftHSM2 may renumber slots
	Conf       string // the SOFTHSM2_CONF it lives under
}

// URI returns the token's RFC 7512 URI with module-path and, if pinSource
// is not empty, pin-source (for example "file:/path/to/pin" or "env:NAME").
func (t *Token) URI(pinSource string) string {
	u := &p11uri.URI{Token: t.Label, Serial: t.Serial, ModulePath: t.ModulePath, PINSource: pinSource}
	return u.String()
}

// CreateToken initialises a new token in SoftHSM2's free slot, sets its SO
// PIN and user PIN, and logs out. The token lives in the directory of the
// process's SOFTHSM2_CONF (see [Use]); call Use first.
func CreateToken(req CreateTokenRequest) (*Token, error) {
	if req.Label == "" || len(req.Label) > 32 {
		return nil, fmt.Errorf("softhsm: token label %q must be 1 to 32 bytes", req.Label)
	}
	for _, p := range []struct{ name, pin string }{{"SO PIN", req.SOPIN}, {"user PIN", req.UserPIN}} {
		if len(p.pin) < 4 || len(p.pin) > 255 {
			return nil, fmt.Errorf("softhsm: token %q: the %s must be 4 to 255 bytes", req.Label, p.name)
		}
	}
	path := req.ModulePath
	if path == "" {
		var err error
		if path, err = ModulePath(); err != nil {
			return nil, err
		}
	}
	conf := os.Getenv("SOFTHSM2_CONF")
	if conf == "" {
		return nil, fmt.Errorf("softhsm: token %q: SOFTHSM2_CONF is not set, so SoftHSM2 would use the system token directory; call softhsm.Use first", req.Label)
	}
	m, err := module.Acquire(path)
	if err != nil {
		return nil, fmt.Errorf("softhsm: %w (is SoftHSM2 installed? run `make setup`)", err)
	}
	defer m.Release()
	if m.Conf() != conf {
		return nil, fmt.Errorf("softhsm: token %q: module %s runs with SOFTHSM2_CONF=%q, not %q; one configuration per process", req.Label, path, m.Conf(), conf)
	}
	m.SlotMu.Lock()
	defer m.SlotMu.Unlock()

	p := m.Ctx
	slots, err := p.GetSlotList(true)
	if err != nil {
		return nil, fmt.Errorf("softhsm: token %q: list slots: %w", req.Label, err)
	}
	free, found := uint(0), false
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			return nil, fmt.Errorf("softhsm: token %q: read slot %d: %w", req.Label, s, err)
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			if !found {
				free, found = s, true
			}
			continue
		}
		if ti.Label == req.Label {
			return nil, fmt.Errorf("softhsm: a token labelled %q already exists (serial %s) under %s", req.Label, ti.SerialNumber, conf)
		}
	}
	if !found {
		return nil, fmt.Errorf("softhsm: token %q: no free slot under %s", req.Label, conf)
	}
	if err := p.InitToken(free, req.SOPIN, req.Label); err != nil {
		return nil, fmt.Errorf("softhsm: token %q: C_InitToken in slot %d: %w", req.Label, free, err)
	}
	// SoftHSM2 may move the token to another slot ID once initialised:
	// find it again by label.
	tok, err := findToken(p, req.Label)
	if err != nil {
		return nil, err
	}
	sh, err := p.OpenSession(tok.SlotID, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, fmt.Errorf("softhsm: token %q: open session: %w", req.Label, err)
	}
	defer p.CloseSession(sh)
	if err := p.Login(sh, pkcs11.CKU_SO, req.SOPIN); err != nil {
		return nil, fmt.Errorf("softhsm: token %q: SO login: %w", req.Label, err)
	}
	if err := p.InitPIN(sh, req.UserPIN); err != nil {
		p.Logout(sh)
		return nil, fmt.Errorf("softhsm: token %q: C_InitPIN: %w", req.Label, err)
	}
	if err := p.Logout(sh); err != nil {
		return nil, fmt.Errorf("softhsm: token %q: SO logout: %w", req.Label, err)
	}
	tok.ModulePath = path
	tok.Conf = conf
	return tok, nil
}

func findToken(p *pkcs11.Ctx, label string) (*Token, error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return nil, fmt.Errorf("softhsm: token %q: list slots: %w", label, err)
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 && ti.Label == label {
			return &Token{Label: label, Serial: ti.SerialNumber, SlotID: s}, nil
		}
	}
	return nil, fmt.Errorf("softhsm: token %q was initialised but is not in the slot list", label)
}

// NewPIN returns a fresh random PIN: 26 base32 characters, 128 bits from
// crypto/rand.
func NewPIN() string { return rand.Text() }
