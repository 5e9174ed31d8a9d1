package emulator

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/flynn/noise"
	"golang.org/x/crypto/curve25519"

	"github.com/opencustodynet/opencustody/protocol/channel"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// StateFile is the name of the state file inside a state directory.
const StateFile = "state.json"

// stateFormat is the version of the state file's layout.
const stateFormat = 1

// stateJSON is the state file's layout. Fields added after the first
// release are optional, so that an older state file still loads (and gets
// them filled in).
type stateJSON struct {
	// Format is [stateFormat].
	Format int `json:"format"`
	// Algorithm is the identity key's algorithm name (p256, ed25519,
	// secp256k1).
	Algorithm string `json:"algorithm"`
	// IdentityPrivateKey is the identity key's private scalar or seed, hex.
	// An emulator's key guards nothing of value; a real device never lets
	// it leave its secure element.
	IdentityPrivateKey string `json:"identity_private_key"`
	// Counter is the monotonic device counter (see [Store.NextCounter]).
	Counter uint64 `json:"counter"`
	// Label is the owner's name for the device.
	Label string `json:"label"`
	// ChannelPrivateKey is the private X25519 key of the device's Noise
	// static key, hex (firmware-spec/channel.md §2).
	ChannelPrivateKey string `json:"channel_private_key,omitempty"`
	// Credential is the device channel credential that binds the channel
	// key to the identity key, made once (channel.md §3), hex.
	Credential string `json:"credential,omitempty"`
	// Pin is the HSM the device paired with; absent before pairing.
	Pin *pinJSON `json:"pin,omitempty"`
	// Newest is the greatest not_before, in Unix seconds, of a core
	// credential accepted from the pinned HSM (channel.md §3.3).
	Newest uint64 `json:"newest,omitempty"`
	// Answered holds the nonces (hex) of the last [MaxAnswered] prompts
	// the device answered, oldest first, so that a prompt sent again is
	// refused (approval.md §5.2, replayed).
	Answered []string `json:"answered,omitempty"`
}

// MaxAnswered is how many answered prompts' nonces the device remembers.
const MaxAnswered = 64

// pinJSON is a [Pin] in the state file.
type pinJSON struct {
	Algorithm string `json:"algorithm"`
	PublicKey string `json:"public_key"`
	User      string `json:"user"`
	Role      string `json:"role"`
}

// Pin is the custody core a device is paired with: the HSM identity key it
// accepts channels from, and the user and role it was paired for.
type Pin struct {
	Algorithm pb.Algorithm
	PublicKey []byte
	User      string
	Role      pb.PairingRole
}

// Fingerprint is the HSM identity key's fingerprint, as the pairing screen
// showed it.
func (p *Pin) Fingerprint() string { return signed.Fingerprint(p.Algorithm, p.PublicKey) }

// roleName is how a pairing role is shown and stored.
func roleName(r pb.PairingRole) string {
	switch r {
	case pb.PairingRole_PAIRING_ROLE_ADMIN:
		return "admin"
	case pb.PairingRole_PAIRING_ROLE_APPROVER:
		return "approver"
	}
	return ""
}

func parseRoleName(s string) (pb.PairingRole, bool) {
	switch s {
	case "admin":
		return pb.PairingRole_PAIRING_ROLE_ADMIN, true
	case "approver":
		return pb.PairingRole_PAIRING_ROLE_APPROVER, true
	}
	return pb.PairingRole_PAIRING_ROLE_UNSPECIFIED, false
}

func (p *Pin) toJSON() *pinJSON {
	return &pinJSON{Algorithm: p.Algorithm.String(), PublicKey: hex.EncodeToString(p.PublicKey), User: p.User, Role: roleName(p.Role)}
}

func (j *pinJSON) pin() (*Pin, error) {
	alg, ok := pb.Algorithm_value[j.Algorithm]
	if !ok {
		return nil, fmt.Errorf("pin: unknown algorithm %q", j.Algorithm)
	}
	key, err := hex.DecodeString(j.PublicKey)
	if err != nil || len(key) == 0 {
		return nil, errors.New("pin: public key is not hex")
	}
	role, ok := parseRoleName(j.Role)
	if !ok {
		return nil, fmt.Errorf("pin: unknown role %q", j.Role)
	}
	return &Pin{Algorithm: pb.Algorithm(alg), PublicKey: key, User: j.User, Role: role}, nil
}

// StoreRequest says how to open or create a state directory.
type StoreRequest struct {
	// Dir is the state directory; it is created (mode 0700) if missing.
	Dir string
	// Algorithm of the identity key for a new state (default p256). If the
	// state exists with another algorithm, [OpenStore] fails rather than
	// silently use a different key.
	Algorithm string
	// Label for a new state (default "OpenCustody emulator").
	Label string
	// Rand is the randomness for a new identity key (default crypto/rand).
	Rand io.Reader
}

// Store is a device's persistent state in a directory: the identity key,
// the counter, the label, the channel key and device credential, and once
// paired the pinned HSM ([Store.Pin]) and the freshness mark of its
// credentials ([Store.Newest]). Every change is
// written atomically: a temporary file in the same directory is written and
// fsynced, renamed over the state file, and the directory is fsynced, so a
// crash at any moment leaves either the old or the new state, never a mix.
//
// A Store is safe for concurrent use. Two processes must not share a
// directory.
type Store struct {
	dir string

	mu       sync.Mutex // guards state and pin; held across writes so changes are ordered
	state    stateJSON
	pin      *Pin               // parsed state.Pin
	identity *Identity          // immutable
	static   noise.DHKey        // immutable: the channel key
	cred     *signed.Credential // immutable: the device credential
	// noPersist (QuirkNoPersistence) keeps changes in memory only, once
	// the state file exists. Set before the Store is shared.
	noPersist bool
}

// OpenStore loads the state in req.Dir, or creates it with a new identity
// key if the directory holds none. created reports which happened.
func OpenStore(req StoreRequest) (s *Store, created bool, err error) {
	if req.Dir == "" {
		return nil, false, errors.New("emulator: no state directory")
	}
	alg := req.Algorithm
	if err := os.MkdirAll(req.Dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("emulator: state directory: %w", err)
	}
	s = &Store{dir: req.Dir}
	// A crash between creating and renaming a temporary file leaves it
	// behind; it never holds the only copy of anything.
	if stale, _ := filepath.Glob(filepath.Join(req.Dir, "."+StateFile+".tmp-*")); len(stale) > 0 {
		for _, f := range stale {
			os.Remove(f)
		}
	}
	b, err := os.ReadFile(s.path())
	switch {
	case err == nil:
		if err := s.load(b); err != nil {
			return nil, false, err
		}
		if alg != "" && alg != s.state.Algorithm {
			return nil, false, fmt.Errorf("emulator: state in %s holds a %s identity key, not %s (use another --state directory)", req.Dir, s.state.Algorithm, alg)
		}
		if s.cred == nil {
			// A state from before the secure channel: add the channel
			// key now, once.
			rand := req.Rand
			if rand == nil {
				rand = cryptoRand
			}
			if err := s.makeChannelKey(rand); err != nil {
				return nil, false, err
			}
			if err := s.write(s.state); err != nil {
				return nil, false, err
			}
		}
		return s, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, fmt.Errorf("emulator: read state: %w", err)
	}
	if alg == "" {
		alg = AlgP256
	}
	a, err := ParseAlgorithm(alg)
	if err != nil {
		return nil, false, err
	}
	rand := req.Rand
	if rand == nil {
		rand = cryptoRand
	}
	id, err := newIdentity(a, rand)
	if err != nil {
		return nil, false, err
	}
	label := req.Label
	if label == "" {
		label = "OpenCustody emulator"
	}
	s.identity = id
	s.state = stateJSON{Format: stateFormat, Algorithm: alg, IdentityPrivateKey: hex.EncodeToString(id.private()), Label: label}
	if err := s.makeChannelKey(rand); err != nil {
		return nil, false, err
	}
	if err := s.write(s.state); err != nil {
		return nil, false, err
	}
	return s, true, nil
}

// makeChannelKey makes the device's channel key and its credential, once:
// the credential never expires (not_before 0, not_after forever), since a
// device has no clock to renew it by.
func (s *Store) makeChannelKey(rand io.Reader) error {
	st, err := channel.GenerateStatic(rand)
	if err != nil {
		return fmt.Errorf("emulator: channel key: %w", err)
	}
	cred := &signed.Credential{Role: signed.RoleDevice, NotBefore: time.Unix(0, 0), NotAfter: signed.Forever}
	copy(cred.StaticKey[:], st.Public)
	if err := cred.Sign(s.identity.signer()); err != nil {
		return fmt.Errorf("emulator: device credential: %w", err)
	}
	s.static, s.cred = st, cred
	s.state.ChannelPrivateKey = hex.EncodeToString(st.Private)
	s.state.Credential = hex.EncodeToString(cred.Marshal())
	return nil
}

func (s *Store) path() string { return filepath.Join(s.dir, StateFile) }

func (s *Store) load(b []byte) error {
	var st stateJSON
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("emulator: state file %s is not valid JSON: %w", s.path(), err)
	}
	if st.Format != stateFormat {
		return fmt.Errorf("emulator: state file %s has format %d, this emulator reads %d", s.path(), st.Format, stateFormat)
	}
	a, err := ParseAlgorithm(st.Algorithm)
	if err != nil {
		return fmt.Errorf("emulator: state file %s: %w", s.path(), err)
	}
	priv, err := hex.DecodeString(st.IdentityPrivateKey)
	if err != nil {
		return fmt.Errorf("emulator: state file %s: identity key is not hex", s.path())
	}
	id, err := identityFromPrivate(a, priv)
	if err != nil {
		return fmt.Errorf("emulator: state file %s: %w", s.path(), err)
	}
	s.state, s.identity = st, id
	if st.ChannelPrivateKey != "" || st.Credential != "" {
		if err := s.loadChannelKey(); err != nil {
			return fmt.Errorf("emulator: state file %s: %w", s.path(), err)
		}
	}
	if st.Pin != nil {
		if s.pin, err = st.Pin.pin(); err != nil {
			return fmt.Errorf("emulator: state file %s: %w", s.path(), err)
		}
	}
	return nil
}

// loadChannelKey rebuilds the channel key and checks that the stored
// credential binds it to the identity key.
func (s *Store) loadChannelKey() error {
	priv, err := hex.DecodeString(s.state.ChannelPrivateKey)
	if err != nil || len(priv) != 32 {
		return errors.New("channel key is not 32 bytes of hex")
	}
	pub, err := curve25519.X25519(priv, curve25519.Basepoint)
	if err != nil {
		return fmt.Errorf("channel key: %w", err)
	}
	raw, err := hex.DecodeString(s.state.Credential)
	if err != nil {
		return errors.New("credential is not hex")
	}
	cred, err := signed.ParseCredential(raw)
	if err != nil {
		return err
	}
	if cred.Role != signed.RoleDevice || !bytes.Equal(cred.StaticKey[:], pub) || cred.Algorithm != s.identity.Algorithm ||
		!bytes.Equal(cred.IdentityKey, s.identity.PublicKey()) || cred.VerifySignature() != nil {
		return errors.New("credential does not bind the channel key to the identity key")
	}
	s.static, s.cred = noise.DHKey{Private: priv, Public: pub}, cred
	return nil
}

// Algorithm returns the identity key's algorithm name.
func (s *Store) Algorithm() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.Algorithm
}

// Identity returns the device identity key.
func (s *Store) Identity() *Identity { return s.identity }

// ChannelKey returns the device's Noise static key.
func (s *Store) ChannelKey() noise.DHKey {
	return noise.DHKey{Private: bytes.Clone(s.static.Private), Public: bytes.Clone(s.static.Public)}
}

// Credential returns the device channel credential.
func (s *Store) Credential() *signed.Credential {
	c := *s.cred
	c.IdentityKey, c.Signature = bytes.Clone(c.IdentityKey), bytes.Clone(c.Signature)
	return &c
}

// Pin returns the HSM the device is paired with, or nil.
func (s *Store) Pin() *Pin {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pin == nil {
		return nil
	}
	p := *s.pin
	p.PublicKey = bytes.Clone(p.PublicKey)
	return &p
}

// Newest returns the greatest not_before of a core credential accepted
// from the pinned HSM (firmware-spec/channel.md §3.3).
func (s *Store) Newest() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Unix(int64(s.state.Newest), 0)
}

// SetPin pins the HSM identity key of p and raises Newest to newest,
// returning once both are on disk. On error nothing changed.
func (s *Store) SetPin(p *Pin, newest time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state
	st.Pin = p.toJSON()
	st.Newest = max(st.Newest, unixSeconds(newest))
	if err := s.write(st); err != nil {
		return err
	}
	pc := *p
	pc.PublicKey = bytes.Clone(p.PublicKey)
	s.state, s.pin = st, &pc
	return nil
}

// RaiseNewest raises Newest to t if t is later, returning once it is on
// disk. On error Newest is unchanged.
func (s *Store) RaiseNewest(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := unixSeconds(t)
	if u <= s.state.Newest {
		return nil
	}
	st := s.state
	st.Newest = u
	if err := s.write(st); err != nil {
		return err
	}
	s.state = st
	return nil
}

func unixSeconds(t time.Time) uint64 {
	if t.Unix() < 0 {
		return 0
	}
	return uint64(t.Unix())
}

// Label returns the owner's label.
func (s *Store) Label() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.Label
}

// Counter returns the current value of the monotonic counter.
func (s *Store) Counter() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.Counter
}

// Answered reports whether the device answered a prompt with this nonce
// (among the last [MaxAnswered]).
func (s *Store) Answered(nonce [signed.NonceSize]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.state.Answered, hex.EncodeToString(nonce[:]))
}

// NextCounterFor is [Store.NextCounter] for the answer to the prompt with
// this nonce: the nonce is recorded as answered in the same write.
func (s *Store) NextCounterFor(nonce [signed.NonceSize]byte) (uint64, error) {
	return s.nextCounter(hex.EncodeToString(nonce[:]), true)
}

// NextCounter increments the monotonic counter and returns the new value
// only once it is on disk, so a value handed out is never handed out again,
// even after a crash. On error the counter is unchanged.
func (s *Store) NextCounter() (uint64, error) { return s.nextCounter("", true) }

// nextCounter records nonce (if not "") as answered and, if increment,
// increments the counter, in one write; it returns the counter.
func (s *Store) nextCounter(nonce string, increment bool) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state
	if st.Counter == ^uint64(0) {
		return 0, errors.New("emulator: counter exhausted")
	}
	if increment {
		st.Counter++
	}
	if nonce != "" {
		st.Answered = append(slices.Clone(st.Answered), nonce)
		if n := len(st.Answered); n > MaxAnswered {
			st.Answered = st.Answered[n-MaxAnswered:]
		}
	}
	if err := s.write(st); err != nil {
		return 0, err
	}
	s.state = st
	return st.Counter, nil
}

// write replaces the state file with st atomically. s.mu is held or s is
// not yet shared.
func (s *Store) write(st stateJSON) error {
	if s.noPersist {
		if _, err := os.Stat(s.path()); err == nil {
			return nil
		}
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("emulator: encode state: %w", err)
	}
	b = append(b, '\n')
	if err := writeFileAtomic(s.dir, StateFile, b); err != nil {
		return fmt.Errorf("emulator: write state: %w", err)
	}
	return nil
}

// writeFileAtomic writes data to dir/name through a synced temporary file,
// a rename and a sync of the directory.
func writeFileAtomic(dir, name string, data []byte) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
