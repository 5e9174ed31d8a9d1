package hsmd

import (
	"testing"
	"time"
)

func TestLoginLimiter(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now := t0
	l := newLoginLimiter(3, time.Minute, func() time.Time { return now })
	for i := range 3 {
		if ok, held, _ := l.allow(); !ok || held != 0 {
			t.Fatalf("failure %d within the burst: ok %v, held %d", i, ok, held)
		}
	}
	for i := range 5 {
		if ok, _, _ := l.allow(); ok {
			t.Fatalf("failure %d past the burst got an entry", i)
		}
	}
	if held, _ := l.flush(); held != 0 {
		t.Fatalf("flush with no token: %d", held)
	}
	now = now.Add(30 * time.Second)
	if ok, _, _ := l.allow(); ok {
		t.Fatal("half a token gave an entry")
	}
	now = now.Add(30 * time.Second)
	held, since := l.flush()
	if held != 6 || !since.Equal(t0) {
		t.Fatalf("flush after a minute: %d held since %v, want 6 since %v", held, since, t0)
	}
	if held, _ := l.flush(); held != 0 {
		t.Fatalf("second flush: %d", held)
	}
	// A long flood: at most one entry a minute gets through.
	entries := 0
	for range 10 * 60 {
		now = now.Add(time.Second)
		if ok, _, _ := l.allow(); ok {
			entries++
		}
	}
	if entries != 10 {
		t.Errorf("ten minutes of one failure a second gave %d entries, want 10", entries)
	}
	// A quiet spell refills the bucket, to its burst and no more.
	now = now.Add(time.Hour)
	if ok, _, _ := l.allow(); !ok {
		t.Fatal("after a quiet hour: no entry")
	}
	for i := range 2 {
		if ok, _, _ := l.allow(); !ok {
			t.Fatalf("refilled burst, failure %d refused", i)
		}
	}
	if ok, _, _ := l.allow(); ok {
		t.Fatal("the bucket held more than its burst")
	}
}
