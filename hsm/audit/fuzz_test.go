package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// realBodies returns the entry and checkpoint bodies a Log stores for a few
// events: the seeds of FuzzStoredEntry.
func realBodies(tb testing.TB) (entries, checkpoints [][]byte) {
	tb.Helper()
	ctx := context.Background()
	m := records.NewMemory()
	auth, err := records.NewSoftHMAC(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		tb.Fatal(err)
	}
	id, err := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ECDSA_P256, rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 123).UTC()
	l, err := New(Config{Records: records.New(m, auth), Rows: m, Identity: id, CheckpointEvery: 2, Now: func() time.Time { return now }})
	if err != nil {
		tb.Fatal(err)
	}
	for _, ev := range []Event{
		{KindPairing, "3f2a9c", "paired: user alice, role admin"},
		{KindApproval, "req-1", "approve by user alice on device 3f2a9c; request pending"},
		{KindLogin, "opencustody.api.Operator", "wrong token from 127.0.0.1:5555"},
	} {
		if _, err := l.Append(ctx, ev); err != nil {
			tb.Fatal(err)
		}
	}
	for kind, out := range map[string]*[][]byte{RecordKind: &entries, CheckpointRecordKind: &checkpoints} {
		rows, err := m.List(ctx, kind)
		if err != nil {
			tb.Fatal(err)
		}
		for _, r := range rows {
			*out = append(*out, r.Body)
		}
	}
	return entries, checkpoints
}

// FuzzStoredEntry decodes entry and checkpoint bodies as they come back
// from the database: decoding never panics, an entry that decodes has a
// hash input or a precise error, and an entry whose hash matches its fields
// keeps that hash through an encode and decode (what Verify checks is what
// was stored).
func FuzzStoredEntry(f *testing.F) {
	entries, cps := realBodies(f)
	for _, b := range entries {
		f.Add(b)
	}
	for _, b := range cps {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		e, err := decodeEntry(body)
		if err != nil {
			if e != nil {
				t.Fatal("error with an entry")
			}
		} else {
			h, err := e.ComputeHash()
			if err == nil && bytes.Equal(h, e.Hash) {
				again, err := json.Marshal(e)
				if err != nil {
					t.Fatal(err)
				}
				e2, err := decodeEntry(again)
				if err != nil {
					t.Fatal(err)
				}
				h2, err := e2.ComputeHash()
				if err != nil || !bytes.Equal(h2, h) {
					t.Fatalf("hash %x became %x (%v) through a round trip", h, h2, err)
				}
			}
		}
		var c Checkpoint
		if json.Unmarshal(body, &c) == nil {
			c.Statement()
			c.Digest()
		}
	})
}
