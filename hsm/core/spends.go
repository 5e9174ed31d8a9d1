package core

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/btcsuite/btcd/btcutil"

	"github.com/opencustodynet/opencustody/hsm/policy"
)

// SpendLedger is a wallet's velocity history: what each of its transfers
// sent, recorded when its signing began, in the order the signings began.
// It is one authenticated record per wallet, so that a velocity check
// reads one record instead of every request, and so that two signings of
// one wallet (two hsmd instances on one database) are ordered by the
// store's compare-and-swap: each counts the spends recorded before its
// own.
type SpendLedger struct {
	Wallet string        `json:"wallet"`
	Spends []LedgerSpend `json:"spends"`
	// Version is the storage version the ledger was read at; 0 for a
	// wallet without one yet.
	Version uint64 `json:"-"`
}

// LedgerSpend is one transfer in a [SpendLedger].
type LedgerSpend struct {
	RequestID string    `json:"request_id"`
	At        time.Time `json:"at"`
	Amount    int64     `json:"amount"` // satoshis sent out of the wallet
}

// ErrLedgerConflict is returned by [RequestStore.UpdateSpends] when the
// ledger changed since it was read.
var ErrLedgerConflict = errors.New("core: the spend ledger changed since it was read")

// ledgerAttempts bounds the retries of a ledger update that lost a race.
const ledgerAttempts = 16

// history returns the wallet's spends for a velocity check of request
// except: the spends recorded before except's own, if except is recorded
// (its signing has begun), and otherwise all of them. Spends older than
// the longest window a policy may have are no longer kept.
func (c *Core) history(ctx context.Context, wallet, except string) ([]policy.Spend, error) {
	l, err := c.cfg.Requests.Spends(ctx, wallet)
	if err != nil {
		return nil, fmt.Errorf("core: wallet %s: read its spend ledger: %w", wallet, err)
	}
	out := []policy.Spend{}
	for _, s := range l.Spends {
		if s.RequestID == except {
			break
		}
		out = append(out, policy.Spend{At: s.At, Amount: btcutil.Amount(s.Amount)})
	}
	return out, nil
}

// recordSpend adds request r's transfer to its wallet's ledger before r
// is signed, unless it is there already (a signing interrupted and begun
// again). A crash after this step leaves the spend counted: stricter, never
// looser.
func (c *Core) recordSpend(ctx context.Context, r *RequestRecord, amount int64) error {
	return c.updateLedger(ctx, r.Wallet, func(l *SpendLedger) bool { return c.addSpend(l, r, amount) })
}

// addSpend adds request r's transfer to ledger l, dropping spends older
// than any velocity window, and reports whether l changed (false: r's
// spend is there already).
func (c *Core) addSpend(l *SpendLedger, r *RequestRecord, amount int64) bool {
	if slices.ContainsFunc(l.Spends, func(s LedgerSpend) bool { return s.RequestID == r.ID }) {
		return false
	}
	now := c.cfg.Now().UTC()
	l.Spends = slices.DeleteFunc(l.Spends, func(s LedgerSpend) bool { return now.Sub(s.At) > policy.MaxWindow })
	l.Spends = append(l.Spends, LedgerSpend{RequestID: r.ID, At: now, Amount: amount})
	return true
}

// forgetSpend removes request r's spend after its signing failed for good:
// nothing was sent.
func (c *Core) forgetSpend(ctx context.Context, r *RequestRecord) error {
	return c.updateLedger(ctx, r.Wallet, func(l *SpendLedger) bool { return dropSpend(l, r) })
}

// dropSpend removes request r's spend from ledger l and reports whether
// l changed.
func dropSpend(l *SpendLedger, r *RequestRecord) bool {
	n := len(l.Spends)
	l.Spends = slices.DeleteFunc(l.Spends, func(s LedgerSpend) bool { return s.RequestID == r.ID })
	return len(l.Spends) != n
}

// updateLedger reads the wallet's ledger, lets change edit it (false: no
// change needed) and stores it, again from a fresh read if another writer
// stored it meanwhile.
func (c *Core) updateLedger(ctx context.Context, wallet string, change func(*SpendLedger) bool) error {
	for range ledgerAttempts {
		l, err := c.cfg.Requests.Spends(ctx, wallet)
		if err != nil {
			return fmt.Errorf("core: wallet %s: read its spend ledger: %w", wallet, err)
		}
		if !change(l) {
			return nil
		}
		err = c.cfg.Requests.UpdateSpends(ctx, l)
		if errors.Is(err, ErrLedgerConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("core: wallet %s: store its spend ledger: %w", wallet, err)
		}
		return nil
	}
	return fmt.Errorf("core: wallet %s: %w %d times in a row", wallet, ErrLedgerConflict, ledgerAttempts)
}
