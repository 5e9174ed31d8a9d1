package hsmd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// PinFile is the file in Config.Dir where hsmd keeps, between runs, the
// newest version of the record store's root manifest it has seen (see
// package records, "Manifests"). A database found older than that at the
// next start, a restored copy or a rollback made while hsmd was down, is
// refused: every read fails naming the root manifest. After restoring the
// database from a backup on purpose, delete the file.
const PinFile = "records.pin"

// loadPin raises the record store's pin to the version in the pin file.
func (s *Server) loadPin() error {
	if s.cfg.Records == nil {
		return nil
	}
	path := filepath.Join(s.cfg.Dir, PinFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("hsmd: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return fmt.Errorf("hsmd: %s: %w", path, err)
	}
	s.cfg.Records.Pin(v)
	s.pinned = v
	return nil
}

// savePin writes the store's pin to the pin file if it moved.
func (s *Server) savePin() {
	if s.cfg.Records == nil {
		return
	}
	s.pinMu.Lock()
	defer s.pinMu.Unlock()
	v := s.cfg.Records.Pinned()
	if v <= s.pinned {
		return
	}
	if err := writeFileAtomic(filepath.Join(s.cfg.Dir, PinFile), []byte(strconv.FormatUint(v, 10)+"\n"), 0o600); err != nil {
		s.log.Error("cannot save the record store's pin", "err", err)
		return
	}
	s.pinned = v
}
