package emulator

import (
	"fmt"
	"slices"
	"strings"
)

// Quirk is a deliberate deviation from firmware-spec/, one per class of
// mistake a firmware could make. A quirky emulator exists to show that the
// conformance suite (package conformance) catches that mistake: each quirk
// makes a known set of its tests fail. The zero value, [QuirkNone], is the
// correct device. Never use a quirk for anything but that.
type Quirk string

// The quirks. Each comment names the rule the quirk breaks.
const (
	// QuirkNone is the correct device.
	QuirkNone Quirk = ""
	// QuirkAcceptUnsigned shows prompts whatever their signature
	// (approval.md §5.2, bad_signature).
	QuirkAcceptUnsigned Quirk = "accept-unsigned-prompts"
	// QuirkAcceptOtherDevice shows prompts issued to another device
	// (approval.md §5.2, wrong_device).
	QuirkAcceptOtherDevice Quirk = "accept-other-device-prompts"
	// QuirkIgnoreExpiry shows prompts that have certainly expired
	// (approval.md §5.2, expired).
	QuirkIgnoreExpiry Quirk = "ignore-expiry"
	// QuirkAcceptReplayed shows and signs a prompt it answered before
	// (approval.md §5.2, replayed).
	QuirkAcceptReplayed Quirk = "accept-replayed-prompts"
	// QuirkReuseCounter signs every answer with the current counter
	// instead of a new value (device.md §3, approval.md §5.3).
	QuirkReuseCounter Quirk = "reuse-counter"
	// QuirkNoPersistence keeps state changes in memory only: after a power
	// cycle the device is unpaired and its counter is back (device.md §3).
	QuirkNoPersistence Quirk = "no-persistence"
	// QuirkIgnoreSequence accepts CONT reports whatever their SEQ
	// (framing.md §5, wrong_sequence).
	QuirkIgnoreSequence Quirk = "ignore-sequence"
	// QuirkBadErrorCodes answers every framing error with ERROR 7f
	// (OTHER) instead of its code (framing.md §5, §6).
	QuirkBadErrorCodes Quirk = "bad-error-codes"
	// QuirkNoTimeout never expires a partly received message (framing.md
	// §5, timeout).
	QuirkNoTimeout Quirk = "no-timeout"
	// QuirkIgnoreCancel ignores the CANCEL command (framing.md §3).
	QuirkIgnoreCancel Quirk = "ignore-cancel"
	// QuirkNoKeepalive sends no KEEPALIVE while it waits for the user
	// (device.md §5).
	QuirkNoKeepalive Quirk = "no-keepalive"
	// QuirkAcceptAnyHSM, once paired, opens a full session with any core
	// whose credential verifies (channel.md §3.3, check 5).
	QuirkAcceptAnyHSM Quirk = "accept-any-hsm"
	// QuirkAcceptStale accepts core credentials that expired before the
	// newest one it saw was issued (channel.md §3.3, freshness).
	QuirkAcceptStale Quirk = "accept-stale-credentials"
	// QuirkConfirmAnyPage lets the user confirm on any page of a prompt,
	// not only the last (device.md §7, Buttons).
	QuirkConfirmAnyPage Quirk = "confirm-any-page"
)

// Quirks lists every quirk but [QuirkNone], in a stable order.
var Quirks = []Quirk{
	QuirkAcceptUnsigned, QuirkAcceptOtherDevice, QuirkIgnoreExpiry, QuirkAcceptReplayed,
	QuirkReuseCounter, QuirkNoPersistence, QuirkIgnoreSequence, QuirkBadErrorCodes,
	QuirkNoTimeout, QuirkIgnoreCancel, QuirkNoKeepalive, QuirkAcceptAnyHSM, QuirkAcceptStale,
	QuirkConfirmAnyPage,
}

// ParseQuirk returns the quirk named s ("" is [QuirkNone]).
func ParseQuirk(s string) (Quirk, error) {
	q := Quirk(s)
	if q == QuirkNone || slices.Contains(Quirks, q) {
		return q, nil
	}
	names := make([]string, len(Quirks))
	for i, q := range Quirks {
		names[i] = string(q)
	}
	return "", fmt.Errorf("emulator: unknown quirk %q; known: %s", s, strings.Join(names, ", "))
}
