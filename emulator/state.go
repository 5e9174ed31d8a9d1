package emulator

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// StateFile is the name of the state file inside a state directory.
const StateFile = "state.json"

// stateFormat is the version of the state file's layout.
const stateFormat = 1

// stateJSON is the state file's layout. Later protocol features (pinned HSM
// keys, pairings) add their fields here; a field is added with the feature
// that fills it.
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

// Store is a device's persistent state in a directory. Every change is
// written atomically: a temporary file in the same directory is written and
// fsynced, renamed over the state file, and the directory is fsynced, so a
// crash at any moment leaves either the old or the new state, never a mix.
//
// A Store is safe for concurrent use. Two processes must not share a
// directory.
type Store struct {
	dir string

	mu       sync.Mutex // guards state; held across writes so changes are ordered
	state    stateJSON
	identity *Identity // immutable
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
	s.state = stateJSON{Format: stateFormat, Algorithm: alg, IdentityPrivateKey: hex.EncodeToString(id.private), Label: label}
	if err := s.write(s.state); err != nil {
		return nil, false, err
	}
	return s, true, nil
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

// NextCounter increments the monotonic counter and returns the new value
// only once it is on disk, so a value handed out is never handed out again,
// even after a crash. On error the counter is unchanged.
func (s *Store) NextCounter() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state
	if st.Counter == ^uint64(0) {
		return 0, errors.New("emulator: counter exhausted")
	}
	st.Counter++
	if err := s.write(st); err != nil {
		return 0, err
	}
	s.state = st
	return st.Counter, nil
}

// write replaces the state file with st atomically. s.mu is held or s is
// not yet shared.
func (s *Store) write(st stateJSON) error {
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
