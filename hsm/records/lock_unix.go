//go:build unix

package records

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// Lock implements [Locker] with an exclusive flock(2) on the file
// opencustody.db.lock beside the database, which every process sharing
// the database file takes. SQLite's own locks cannot serve: they are
// per connection, and the lock holder writes through other connections.
func (s *SQLite) Lock(ctx context.Context) (func(), error) {
	f, err := os.OpenFile(s.path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("records: sqlite: lock: %w", err)
	}
	// flock has no timeout: poll, so that ctx can end the wait.
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("records: sqlite: lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("records: sqlite: lock: %w", ctx.Err())
		case <-time.After(delay):
		}
	}
	return func() { f.Close() }, nil // closing the file releases the lock
}
