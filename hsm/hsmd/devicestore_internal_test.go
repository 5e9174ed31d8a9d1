package hsmd

import (
	"encoding/json"
	"testing"

	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/records"
)

// The decoded devices DeviceStore remembers are its own: a caller that
// changes what it got does not change what the next caller gets, and a
// record whose body differs in any byte is decoded afresh.
func TestDeviceDecodesAreCopies(t *testing.T) {
	body, err := json.Marshal(core.DeviceRecord{ID: "dev-cache-test", User: "alice", IdentityKey: []byte{1, 2, 3}, Attestation: &core.DeviceAttestation{Root: "r"}})
	if err != nil {
		t.Fatal(err)
	}
	rec := records.Record{Kind: deviceKind, Key: "dev-cache-test", Version: 3, Body: body}
	var s DeviceStore
	first, err := s.decode(rec)
	if err != nil {
		t.Fatal(err)
	}
	first.User, first.IdentityKey[0], first.Attestation.Root = "mallory", 9, "x"
	again, err := s.decode(rec)
	if err != nil {
		t.Fatal(err)
	}
	if again.User != "alice" || again.IdentityKey[0] != 1 || again.Attestation.Root != "r" || again.Version != 3 {
		t.Fatalf("second decode: %+v", again)
	}
	again.IdentityKey[0] = 7
	if third, _ := s.decode(rec); third.IdentityKey[0] != 1 {
		t.Fatal("a cached device shares its key bytes with a caller")
	}
	other, _ := json.Marshal(core.DeviceRecord{ID: "dev-cache-test", User: "bob"})
	rec.Body = other
	if d, err := s.decode(rec); err != nil || d.User != "bob" {
		t.Fatalf("a changed body decoded as %+v, %v", d, err)
	}
}
