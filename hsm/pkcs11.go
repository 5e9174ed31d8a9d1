package hsm

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/pkcs11"

	"github.com/opencustodynet/opencustody/hsm/internal/module"
	"github.com/opencustodynet/opencustody/hsm/p11uri"
)

// Config says which token [Open] logs in to.
type Config struct {
	// URI is the token's RFC 7512 URI: module-path names the PKCS#11
	// module; token, serial, manufacturer, model and slot-id select the token
	// (one must match); pin-source or pin-value give the user PIN. Object
	// attributes are ignored here.
	URI string
	// PINPrompt is asked for the PIN if the URI gives none.
	PINPrompt PINPrompt
	// Sessions is the most sessions the store opens at once; concurrent
	// calls beyond it wait. Zero means 2×GOMAXPROCS, at least 4, capped by
	// the token's own limit.
	Sessions int
	// Logger receives the store's events. Nothing logged ever contains a
	// PIN or key material. Nil discards them.
	Logger *slog.Logger
}

// PKCS11Store is a [Store] on a token of a PKCS#11 module. It is safe for
// concurrent use: each operation takes a session of its own from a pool.
type PKCS11Store struct {
	mod    *module.Module
	p      *pkcs11.Ctx
	slot   uint
	info   TokenInfo
	pin    string    // kept to log in again if the token drops the login
	pinSrc pinSource // where pin came from, for messages
	mechs  map[uint]bool
	log    *slog.Logger
	pool   *pool
	closed atomic.Bool

	// loginMu serialises logging in again; it is taken before keysMu and
	// held across C_Login and C_OpenSession.
	loginMu sync.Mutex
	anchor  pkcs11.SessionHandle // guarded by loginMu: holds the login while the store lives

	// keysMu guards keys and gen. It is never held across a PKCS#11 call.
	keysMu sync.RWMutex
	keys   map[string]*key // key references already found, by the caller's string
	gen    uint64          // bumped at every new login; handles from older logins are stale

	genKeyMu sync.Mutex // serialises GenerateKey, so one label cannot be made twice

	ops opCounts // completed operations, for Operations
}

var _ Store = (*PKCS11Store)(nil)

// TokenInfo describes the module and token a store is logged in to.
type TokenInfo struct {
	ModulePath         string
	LibraryDescription string
	LibraryVersion     string
	Manufacturer       string
	Label              string
	Model              string
	Serial             string
	SlotID             uint
	// URI names the token (module-path, token, serial), without the PIN.
	URI string
}

// Open loads the module named by cfg.URI (once per process, shared with
// every other store on it), finds the token and logs in as the user.
//
// Errors wrap [ErrModule] if the module cannot be loaded, [ErrTokenNotFound]
// if no token matches (the message lists the tokens there are), and
// [ErrPINIncorrect] if the token refuses the PIN.
func Open(ctx context.Context, cfg Config) (*PKCS11Store, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	u, err := p11uri.Parse(cfg.URI)
	if err != nil {
		return nil, fmt.Errorf("hsm: token URI: %w", err)
	}
	if u.ModulePath == "" {
		if u.ModuleName != "" {
			return nil, fmt.Errorf("hsm: %w: the URI names module-name=%q; give its file as module-path= instead", ErrModule, u.ModuleName)
		}
		return nil, fmt.Errorf("hsm: %w: the URI has no module-path; name the PKCS#11 library, for SoftHSM2 usually module-path=/usr/lib/softhsm/libsofthsm2.so", ErrModule)
	}
	mod, err := module.Acquire(u.ModulePath)
	if err != nil {
		return nil, fmt.Errorf("hsm: %w: %w; install the HSM's PKCS#11 library (SoftHSM2: run `make setup`) or fix module-path", ErrModule, err)
	}
	s := &PKCS11Store{mod: mod, p: mod.Ctx, log: log, keys: map[string]*key{}}
	ok := false
	defer func() {
		if !ok {
			mod.Release()
		}
	}()

	if err := s.findToken(u); err != nil {
		return nil, err
	}
	s.info.URI = (&p11uri.URI{Token: s.info.Label, Serial: s.info.Serial, ModulePath: u.ModulePath}).String()
	if err := s.readMechanisms(); err != nil {
		return nil, err
	}
	s.pin, s.pinSrc, err = readPIN(ctx, u, cfg.PINPrompt, s.info.Label, log)
	if err != nil {
		return nil, err
	}

	ti, err := s.p.GetTokenInfo(s.slot)
	if err != nil {
		return nil, fmt.Errorf("hsm: token %q: %w", s.info.Label, err)
	}
	size := cfg.Sessions
	if size <= 0 {
		size = max(2*runtime.GOMAXPROCS(0), 4)
	}
	// The limit counts the anchor session too. CK_EFFECTIVELY_INFINITE is
	// 0 and CK_UNAVAILABLE_INFORMATION is all ones.
	if m := ti.MaxSessionCount; m > 1 && m < uint(^uint32(0)) && size > int(m)-1 {
		size = int(m) - 1
	}
	s.pool = newPool(s.p, s.slot, size)

	s.loginMu.Lock()
	err = s.login()
	s.loginMu.Unlock()
	if err != nil {
		return nil, err
	}
	ok = true
	log.Info("hsm: token opened", "module", u.ModulePath, "token", s.info.Label, "serial", s.info.Serial, "slot", s.slot, "sessions", size)
	return s, nil
}

// findToken picks the one token that matches u's token attributes.
func (s *PKCS11Store) findToken(u *p11uri.URI) error {
	p := s.p
	info, err := p.GetInfo()
	if err != nil {
		return fmt.Errorf("hsm: %w: C_GetInfo on %s: %w", ErrModule, u.ModulePath, err)
	}
	s.info.ModulePath = u.ModulePath
	s.info.LibraryDescription = info.LibraryDescription
	s.info.LibraryVersion = fmt.Sprintf("%d.%d", info.LibraryVersion.Major, info.LibraryVersion.Minor)
	if u.LibraryManufacturer != "" && u.LibraryManufacturer != info.ManufacturerID ||
		u.LibraryDescription != "" && u.LibraryDescription != info.LibraryDescription ||
		u.LibraryVersion != "" && u.LibraryVersion != s.info.LibraryVersion && u.LibraryVersion+".0" != s.info.LibraryVersion {
		return fmt.Errorf("hsm: %w: module %s is %q %s version %s, which the URI's library attributes do not match", ErrTokenNotFound, u.ModulePath, info.ManufacturerID, info.LibraryDescription, s.info.LibraryVersion)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("hsm: %w: list slots of %s: %w", ErrModule, u.ModulePath, err)
	}
	var matches []uint
	var present []string
	for _, slot := range slots {
		ti, err := p.GetTokenInfo(slot)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		present = append(present, fmt.Sprintf("%q (serial %s, slot %d)", ti.Label, ti.SerialNumber, slot))
		si, err := p.GetSlotInfo(slot)
		if err != nil {
			continue
		}
		if u.Token != "" && u.Token != ti.Label ||
			u.Serial != "" && u.Serial != ti.SerialNumber ||
			u.Manufacturer != "" && u.Manufacturer != ti.ManufacturerID ||
			u.Model != "" && u.Model != ti.Model ||
			u.SlotID != nil && *u.SlotID != slot ||
			u.SlotDescription != "" && u.SlotDescription != strings.TrimRight(si.SlotDescription, " ") ||
			u.SlotManufacturer != "" && u.SlotManufacturer != strings.TrimRight(si.ManufacturerID, " ") {
			continue
		}
		matches = append(matches, slot)
		s.slot = slot
		s.info.Label = ti.Label
		s.info.Serial = ti.SerialNumber
		s.info.Manufacturer = ti.ManufacturerID
		s.info.Model = ti.Model
		s.info.SlotID = slot
	}
	want := (&p11uri.URI{Token: u.Token, Serial: u.Serial, Manufacturer: u.Manufacturer, Model: u.Model, SlotID: u.SlotID,
		SlotDescription: u.SlotDescription, SlotManufacturer: u.SlotManufacturer}).String()
	switch len(matches) {
	case 1:
		return nil
	case 0:
		there := "there are no initialised tokens"
		if len(present) > 0 {
			there = "the tokens there are: " + strings.Join(present, ", ")
		}
		hint := "create one (opencustody hsm init) or fix the URI's token attributes"
		if conf := s.mod.Conf(); conf != "" {
			hint += fmt.Sprintf("; SoftHSM2 reads its tokens from the directory in SOFTHSM2_CONF=%s", conf)
		}
		return fmt.Errorf("hsm: %w: no token in %s matches %s; %s; %s", ErrTokenNotFound, u.ModulePath, want, there, hint)
	default:
		return fmt.Errorf("hsm: %d tokens in %s match %s (%s): add serial= to the URI to pick one", len(matches), u.ModulePath, want, strings.Join(present, ", "))
	}
}

// The mechanisms OpenCustody uses, with what for. Missing from miekg/pkcs11
// v1.1.2: the PKCS#11 3.0 Edwards-curve constants.
const (
	ckkECEdwards           = 0x40
	ckmECEdwardsKeyPairGen = 0x1055
	ckmEdDSA               = 0x1057
)

// Mechanisms lists the PKCS#11 mechanisms OpenCustody uses and what for, as
// [PKCS11Store.Mechanisms] reports them.
var Mechanisms = []struct {
	Name string
	Type uint
	For  string
}{
	{"CKM_EC_KEY_PAIR_GEN", pkcs11.CKM_EC_KEY_PAIR_GEN, "secp256k1 and P-256 key generation"},
	{"CKM_ECDSA", pkcs11.CKM_ECDSA, "secp256k1 and P-256 signing"},
	{"CKM_EC_EDWARDS_KEY_PAIR_GEN", ckmECEdwardsKeyPairGen, "Ed25519 key generation"},
	{"CKM_EDDSA", ckmEdDSA, "Ed25519 signing"},
	{"CKM_GENERIC_SECRET_KEY_GEN", pkcs11.CKM_GENERIC_SECRET_KEY_GEN, "record key generation"},
	{"CKM_SHA256_HMAC", pkcs11.CKM_SHA256_HMAC, "record MACs"},
	{"CKM_ECDH1_DERIVE", pkcs11.CKM_ECDH1_DERIVE, "HSM-to-HSM backup: agreeing a wrapping key"},
	{"CKM_AES_KEY_WRAP_PAD", pkcs11.CKM_AES_KEY_WRAP_PAD, "HSM-to-HSM backup: wrapping custody keys"},
}

func mechanismName(m uint) string {
	for _, x := range Mechanisms {
		if x.Type == m {
			return x.Name
		}
	}
	return fmt.Sprintf("mechanism 0x%x", m)
}

func (s *PKCS11Store) readMechanisms() error {
	list, err := s.p.GetMechanismList(s.slot)
	if err != nil {
		return fmt.Errorf("hsm: token %q: list mechanisms: %w", s.info.Label, err)
	}
	s.mechs = make(map[uint]bool, len(list))
	for _, m := range list {
		s.mechs[m.Mechanism] = true
	}
	return nil
}

// needMechanism returns an error wrapping ErrMechanismNotSupported if the
// token lacks m. Callers prefix it with "hsm: <operation>: ".
func (s *PKCS11Store) needMechanism(m uint, what string) error {
	if s.mechs[m] {
		return nil
	}
	return fmt.Errorf("token %q (%s): %w: %s, needed for %s; use an HSM that offers it, or another algorithm", s.info.Label, s.info.LibraryDescription, ErrMechanismNotSupported, mechanismName(m), what)
}

// MechanismSupport reports, for each of [Mechanisms], whether the token
// offers it.
type MechanismSupport struct {
	Name      string
	For       string
	Supported bool
}

// Mechanisms reports which of the mechanisms OpenCustody uses the token
// offers.
func (s *PKCS11Store) Mechanisms() []MechanismSupport {
	out := make([]MechanismSupport, 0, len(Mechanisms))
	for _, m := range Mechanisms {
		out = append(out, MechanismSupport{Name: m.Name, For: m.For, Supported: s.mechs[m.Type]})
	}
	return out
}

// Info describes the module and token.
func (s *PKCS11Store) Info() TokenInfo { return s.info }

// login opens a new anchor session and logs the user in on it. Logging in
// is per token and per process in PKCS#11: every session of the process sees
// it, and it lasts while any session is open, so the anchor (never used for
// operations) keeps it. Callers hold loginMu.
func (s *PKCS11Store) login() error {
	sh, err := s.p.OpenSession(s.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("hsm: token %q: open session: %w", s.info.Label, err)
	}
	err = s.p.Login(sh, pkcs11.CKU_USER, s.pin)
	switch rv(err) {
	case 0, pkcs11.CKR_USER_ALREADY_LOGGED_IN:
		// Already logged in: another store in this process holds the
		// login (PKCS#11 shares it per process).
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LEN_RANGE, pkcs11.CKR_PIN_INVALID:
		s.p.CloseSession(sh)
		return fmt.Errorf("hsm: token %q: %w (%w): the token refused the PIN from %s; check it", s.info.Label, ErrPINIncorrect, err, s.pinSrc)
	case pkcs11.CKR_PIN_LOCKED:
		s.p.CloseSession(sh)
		return fmt.Errorf("hsm: token %q: the user PIN is locked after too many wrong tries (%w): the Security Officer must unlock or reset it", s.info.Label, err)
	case pkcs11.CKR_USER_PIN_NOT_INITIALIZED:
		s.p.CloseSession(sh)
		return fmt.Errorf("hsm: token %q: no user PIN has been set (%w): the Security Officer must set one (C_InitPIN)", s.info.Label, err)
	default:
		s.p.CloseSession(sh)
		return fmt.Errorf("hsm: token %q: log in: %w", s.info.Label, err)
	}
	old := s.anchor
	s.anchor = sh
	if old != 0 {
		s.p.CloseSession(old)
	}
	return nil
}

// relogin logs in again after an operation found the session, the login or
// its key handle gone. seen is the login generation the operation started
// under; if another goroutine already logged in again since, relogin only
// returns.
func (s *PKCS11Store) relogin(seen uint64, cause error) error {
	s.loginMu.Lock()
	defer s.loginMu.Unlock()
	if s.closed.Load() {
		return s.errClosed()
	}
	s.keysMu.RLock()
	current := s.gen
	s.keysMu.RUnlock()
	if current != seen {
		return nil
	}
	s.log.Warn("hsm: token lost the session or login; logging in again", "token", s.info.Label, "cause", rv(cause).Error())
	s.pool.flush()
	if err := s.login(); err != nil {
		return err
	}
	s.keysMu.Lock()
	s.gen++
	clear(s.keys)
	s.keysMu.Unlock()
	return nil
}

// Close waits for running operations, closes the store's sessions (which
// ends the login unless another store in the process is logged in to the
// same token) and releases the module.
func (s *PKCS11Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.pool.drain()
	s.loginMu.Lock()
	if s.anchor != 0 {
		s.p.CloseSession(s.anchor)
		s.anchor = 0
	}
	s.loginMu.Unlock()
	s.pin = ""
	if err := s.mod.Release(); err != nil {
		return fmt.Errorf("hsm: token %q: %w", s.info.Label, err)
	}
	s.log.Info("hsm: token closed", "token", s.info.Label)
	return nil
}

// errClosed is the error of every call after Close.
func (s *PKCS11Store) errClosed() error {
	return fmt.Errorf("hsm: token %q: %w", s.info.Label, ErrClosed)
}
