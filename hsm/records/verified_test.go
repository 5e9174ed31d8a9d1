package records

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

// countingAuth counts the MAC checks its authenticator is asked for.
type countingAuth struct {
	Authenticator
	checks atomic.Int64
}

func (c *countingAuth) VerifyMAC(data, mac []byte) error {
	c.checks.Add(1)
	return c.Authenticator.VerifyMAC(data, mac)
}

// TestVerifiedRowsAreNotCheckedAgain reads records the store wrote or
// already verified without asking the authenticator again, and still
// refuses a row edited behind its back in the body or the MAC, also after
// reading the genuine row, and also through a second store on the same
// database (which has its own, empty, verified set).
func TestVerifiedRowsAreNotCheckedAgain(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	soft, err := NewSoftHMAC(vectorKey())
	if err != nil {
		t.Fatal(err)
	}
	auth := &countingAuth{Authenticator: soft}
	s := New(openTestSQLite(t, dir), auth)
	if _, err := s.Create(ctx, "device", "d1", []byte(`{"user":"alice"}`)); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.Get(ctx, "device", "d1"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.List(ctx, "device"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Latest(ctx, "device"); err != nil {
			t.Fatal(err)
		}
	}
	if n := auth.checks.Load(); n != 0 {
		t.Fatalf("the store asked for %d MAC checks of a row it wrote itself", n)
	}

	other := New(openTestSQLite(t, dir), auth)
	for range 3 {
		if _, err := other.Get(ctx, "device", "d1"); err != nil {
			t.Fatal(err)
		}
	}
	// The record and the root manifest, each once (the manifests between
	// are checked by their digests).
	if n := auth.checks.Load(); n != 2 {
		t.Fatalf("a second store asked for %d MAC checks of one unchanged row and the root, want 2", n)
	}

	raw := rawSQL(t, dir)
	var body, mac []byte
	if err := raw.QueryRow(`SELECT body, mac FROM records WHERE kind = 'device' AND key = 'd1'`).Scan(&body, &mac); err != nil {
		t.Fatal(err)
	}
	edited := append([]byte(nil), body...)
	edited[len(edited)-3] ^= 1
	badMAC := append([]byte(nil), mac...)
	badMAC[0] ^= 1
	for _, tc := range []struct {
		what      string
		body, mac []byte
	}{{"body edited", edited, mac}, {"MAC edited", body, badMAC}} {
		execSQL(t, raw, `UPDATE records SET body = ?, mac = ? WHERE kind = 'device' AND key = 'd1'`, tc.body, tc.mac)
		for _, st := range []*Store{s, other} {
			_, err := st.Get(ctx, "device", "d1")
			var ie *IntegrityError
			if !errors.As(err, &ie) {
				t.Errorf("%s: Get gave %v, want an integrity error", tc.what, err)
			}
			if _, err := st.List(ctx, "device"); !errors.As(err, &ie) {
				t.Errorf("%s: List gave %v, want an integrity error", tc.what, err)
			}
			if _, bad, err := st.Check(ctx, "device"); err != nil || len(bad) != 1 {
				t.Errorf("%s: Check gave %v, %v, want one integrity error", tc.what, bad, err)
			}
			// s listed the kind before, under the same root: Latest
			// answers with the genuine records verified then.
			list, err := st.Latest(ctx, "device")
			switch {
			case st == s && (err != nil || len(list) != 1 || !bytes.Equal(list[0].Body, body)):
				t.Errorf("%s: Latest gave %v, %v, want the genuine record", tc.what, list, err)
			case st == other && !errors.As(err, &ie):
				t.Errorf("%s: Latest (nothing listed before) gave %v, want an integrity error", tc.what, err)
			}
		}
	}
	execSQL(t, raw, `UPDATE records SET body = ?, mac = ? WHERE kind = 'device' AND key = 'd1'`, body, mac)
	if _, err := s.Get(ctx, "device", "d1"); err != nil {
		t.Fatalf("the genuine row again: %v", err)
	}
}
