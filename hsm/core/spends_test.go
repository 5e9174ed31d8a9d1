package core

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/opencustodynet/opencustody/protocol/signed"
)

func ledgerIDs(t *testing.T, w *world) []string {
	t.Helper()
	l, err := w.core.cfg.Requests.Spends(context.Background(), "treasury")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range l.Spends {
		ids = append(ids, s.RequestID)
	}
	return ids
}

// Two signings of one wallet are ordered by its spend ledger: a spend
// recorded first (here by another hsmd instance on the same database)
// counts against the velocity limit of every signing that begins after
// it, and a refused signing leaves no spend behind.
func TestSpendLedgerOrdersSignings(t *testing.T) {
	w := policyWorld(t, tiered+"velocity: [{window: 24h, max: 1 BTC}]\n")
	first, err := w.submitAs("operator", w.transferOf("first", 60_000_000))
	if err != nil {
		t.Fatal(err)
	}
	other, err := w.submitAs("operator", w.transferOf("other", 60_000_000))
	if err != nil {
		t.Fatal(err)
	}
	// The other instance begins signing "other": its spend is recorded.
	if err := w.core.recordSpend(context.Background(), w.request(other.Request.ID), 60_000_000); err != nil {
		t.Fatal(err)
	}
	w.press("alice", signed.Approve)
	w.press("bob", signed.Approve)
	r := w.request(first.Request.ID)
	if r.State != RequestFailed || !strings.Contains(r.Error, "velocity limit") || w.custody.signatures() != 0 {
		t.Fatalf("first: %s %q, %d signatures; want refused by the velocity limit, nothing signed", r.State, r.Error, w.custody.signatures())
	}
	if got := ledgerIDs(t, w); !slices.Equal(got, []string{other.Request.ID}) {
		t.Fatalf("ledger %v, want only %s", got, other.Request.ID)
	}
	// Recording a spend again (a signing interrupted and begun again)
	// adds nothing.
	if err := w.core.recordSpend(context.Background(), w.request(other.Request.ID), 60_000_000); err != nil {
		t.Fatal(err)
	}
	if got := ledgerIDs(t, w); len(got) != 1 {
		t.Fatalf("ledger %v after recording a spend twice", got)
	}
	// "other" counts only what was recorded before it: with its second
	// approval it is signed.
	w.press("alice", signed.Approve)
	if r := w.request(other.Request.ID); r.State != RequestSigned {
		t.Fatalf("other: %s %q", r.State, r.Error)
	}
}
