package hsmd

import (
	"context"
	"testing"

	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/hsmtest"
)

// TestLingeringEventsKeepTheirPlace: events recorded from goroutines take
// their place in the chain at once; the next append writes them with its
// own entry, in order, and stopping hsmd writes any still waiting.
func TestLingeringEventsKeepTheirPlace(t *testing.T) {
	c := hsmtest.NewCore(t)
	al, err := audit.New(audit.Config{Records: c.Records, Rows: c.DB, Identity: c.Identity})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	s := &Server{cfg: Config{Audit: al}, bgCtx: ctx}
	s.recordLater(audit.KindPrompt, "r1", "shown on device d1")
	s.recordLater(audit.KindApproval, "r1", "approve by user alice on device d1; request pending")
	ent, err := al.Append(t.Context(), audit.Event{Kind: audit.KindApproval, Subject: "r1", Detail: "approve by user bob on device d2; request approved"})
	if err != nil {
		t.Fatal(err)
	}
	if ent.Seq != 3 {
		t.Errorf("the append after two lingering events got entry %d, want 3", ent.Seq)
	}
	entries, err := al.Entries(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 || entries[0].Kind != audit.KindPrompt || entries[1].Detail != "approve by user alice on device d1; request pending" {
		t.Fatalf("entries after the append: %+v", entries)
	}

	s.recordLater(audit.KindPrompt, "r2", "shown on device d1")
	stop() // as Stop does, before it waits
	s.bgWork.Wait()
	if entries, err = al.Entries(t.Context()); err != nil || len(entries) != 4 || entries[3].Subject != "r2" {
		t.Fatalf("entries after stopping: %d, %v", len(entries), err)
	}
}
