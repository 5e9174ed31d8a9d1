package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// Entries returns every entry, in order. It fails as a whole if any entry
// row fails its record MAC; [Log.Verify] names each bad row.
func (l *Log) Entries(ctx context.Context) ([]*Entry, error) {
	recs, err := l.cfg.Records.List(ctx, RecordKind)
	if err != nil {
		return nil, fmt.Errorf("audit: list entries: %w", err)
	}
	out := make([]*Entry, 0, len(recs))
	for _, r := range recs {
		e, err := decodeEntry(r.Body)
		if err != nil {
			return nil, fmt.Errorf("audit: entry %s: %w", r.Key, err)
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *Entry) int { return cmpUint(a.Seq, b.Seq) })
	return out, nil
}

// Checkpoints returns every checkpoint, in order, like [Log.Entries].
func (l *Log) Checkpoints(ctx context.Context) ([]*Checkpoint, error) {
	recs, err := l.cfg.Records.List(ctx, CheckpointRecordKind)
	if err != nil {
		return nil, fmt.Errorf("audit: list checkpoints: %w", err)
	}
	out := make([]*Checkpoint, 0, len(recs))
	for _, r := range recs {
		var c Checkpoint
		if err := json.Unmarshal(r.Body, &c); err != nil {
			return nil, fmt.Errorf("audit: checkpoint %s: cannot decode: %w", r.Key, err)
		}
		out = append(out, &c)
	}
	slices.SortFunc(out, func(a, b *Checkpoint) int { return cmpUint(a.Seq, b.Seq) })
	return out, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// A Problem is one thing [Log.Verify] found wrong, at a position.
type Problem struct {
	// Seq is the entry concerned, or the entry a checkpoint names.
	Seq uint64 `json:"seq"`
	// Checkpoint is true if the problem is with the checkpoint at Seq
	// rather than the entry.
	Checkpoint bool `json:"checkpoint,omitempty"`
	// What says what is wrong.
	What string `json:"what"`
}

func (p Problem) String() string {
	if p.Checkpoint {
		return fmt.Sprintf("checkpoint %d: %s", p.Seq, p.What)
	}
	return fmt.Sprintf("entry %d: %s", p.Seq, p.What)
}

// A Report is what [Log.Verify] found.
type Report struct {
	Entries        int       `json:"entries"`         // entry rows read
	LastSeq        uint64    `json:"last_seq"`        // highest entry sequence number seen
	Checkpoints    int       `json:"checkpoints"`     // checkpoint rows read
	LastCheckpoint uint64    `json:"last_checkpoint"` // highest entry a valid checkpoint covers
	Problems       []Problem `json:"problems"`
}

// OK reports whether Verify found nothing wrong.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// Verify recomputes the chain from entry 1 and checks every checkpoint
// against the identity key. It returns an error only if it could not read
// the log or reach the HSM; everything wrong with the log itself is in the
// report, each problem with its position.
func (l *Log) Verify(ctx context.Context) (*Report, error) {
	rep := &Report{}
	add := func(seq uint64, cp bool, format string, args ...any) {
		rep.Problems = append(rep.Problems, Problem{Seq: seq, Checkpoint: cp, What: fmt.Sprintf(format, args...)})
	}

	rows, err := l.cfg.Rows.List(ctx, RecordKind)
	if err != nil {
		return nil, fmt.Errorf("audit: list entries: %w", err)
	}
	rep.Entries = len(rows)
	entryProblems, err := l.recordProblems(ctx, RecordKind, add)
	if err != nil {
		return nil, fmt.Errorf("audit: entries: %w", err)
	}
	// stored maps a sequence number to the hash its row claims, for the
	// prev links; computed to the hash of its fields, for checkpoints.
	// prevs to the prev it names.
	stored, computed, prevs := map[uint64][]byte{}, map[uint64][]byte{}, map[uint64][]byte{}
	var seqs []uint64
	for _, row := range rows {
		seq, ok := parseKey(row.Key)
		if !ok {
			add(0, false, "row with key %q is not an entry", row.Key)
			continue
		}
		if _, dup := stored[seq]; dup {
			add(seq, false, "listed more than once")
			continue
		}
		if ie := entryProblems[row.Key]; ie != nil {
			add(seq, false, "%s", recordProblem(ie))
			delete(entryProblems, row.Key)
		}
		e, err := decodeEntry(row.Body)
		if err != nil {
			add(seq, false, "%v", err)
			stored[seq] = nil
			seqs = append(seqs, seq)
			continue
		}
		if e.Seq != seq {
			add(seq, false, "row holds entry %d", e.Seq)
		}
		h, err := e.ComputeHash()
		switch {
		case err != nil:
			add(seq, false, "%v", err)
		case !bytes.Equal(h, e.Hash):
			add(seq, false, "hash does not match the entry's fields (the entry was edited)")
		}
		stored[seq], computed[seq], prevs[seq] = e.Hash, h, e.Prev
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	var expect uint64 = 1
	for _, seq := range seqs {
		switch {
		case seq == expect+1:
			add(expect, false, "missing (the row was deleted)")
		case seq > expect:
			add(expect, false, "missing, through entry %d (%d rows deleted)", seq-1, seq-expect)
		}
		expect = seq + 1
		rep.LastSeq = seq
		want := make([]byte, 32)
		if seq > 1 {
			h, ok := stored[seq-1]
			if !ok || h == nil {
				continue // already reported as missing or unreadable
			}
			want = h
		}
		if p, ok := prevs[seq]; ok && !bytes.Equal(p, want) {
			if seq == 1 {
				add(seq, false, "prev is not 32 zero bytes, though entry 1 starts the chain")
			} else {
				add(seq, false, "prev does not match entry %d's hash (the chain is broken here)", seq-1)
			}
		}
	}

	// Entries the manifest lists past the last row: a deleted tail. (Gaps
	// in the middle are reported above as missing.)
	for k, ie := range entryProblems {
		if seq, ok := parseKey(k); ok && seq > rep.LastSeq {
			add(seq, false, "missing: %s", ie.Reason)
		}
	}
	slices.SortStableFunc(rep.Problems, func(a, b Problem) int { return cmpUint(a.Seq, b.Seq) })

	cps, err := l.cfg.Rows.List(ctx, CheckpointRecordKind)
	if err != nil {
		return nil, fmt.Errorf("audit: list checkpoints: %w", err)
	}
	cpProblems, err := l.recordProblems(ctx, CheckpointRecordKind, add)
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoints: %w", err)
	}
	for k, ie := range cpProblems {
		if seq, ok := parseKey(k); ok && !slices.ContainsFunc(cps, func(r records.Row) bool { return r.Key == k }) {
			add(seq, true, "missing: %s", ie.Reason)
		}
	}
	rep.Checkpoints = len(cps)
	slices.SortFunc(cps, func(a, b records.Row) int { return cmpString(a.Key, b.Key) })
	alg, pub := l.cfg.Identity.Algorithm(), l.cfg.Identity.PublicKey()
	for _, row := range cps {
		seq, ok := parseKey(row.Key)
		if !ok {
			add(0, true, "row with key %q is not a checkpoint", row.Key)
			continue
		}
		if ie := cpProblems[row.Key]; ie != nil {
			add(seq, true, "%s", recordProblem(ie))
		}
		var c Checkpoint
		if err := json.Unmarshal(row.Body, &c); err != nil {
			add(seq, true, "cannot decode: %v", err)
			continue
		}
		if c.Seq != seq {
			add(seq, true, "row holds checkpoint %d", c.Seq)
			continue
		}
		if err := signed.Verify(alg, pub, c.Digest(), c.Signature); err != nil {
			add(seq, true, "signature is not the identity key's: %v", err)
			continue
		}
		h, ok := computed[seq]
		switch {
		case !ok:
			add(seq, true, "names an entry that is missing (entries up to %d were signed; the log was cut)", seq)
			continue
		case !bytes.Equal(h, c.Hash):
			add(seq, true, "signed hash does not match entry %d", seq)
			continue
		}
		if seq > rep.LastCheckpoint {
			rep.LastCheckpoint = seq
		}
	}
	return rep, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// recordProblems has the record store check every record of kind (its MAC,
// and its version against the kind's manifest) and returns the failures by
// key. A failure of the manifest itself, which makes every record of the
// kind unverifiable, is added to the report at once (at position 0).
func (l *Log) recordProblems(ctx context.Context, kind string, add func(seq uint64, cp bool, format string, args ...any)) (map[string]*records.IntegrityError, error) {
	_, bad, err := l.cfg.Records.Check(ctx, kind)
	if err != nil {
		return nil, err
	}
	out := map[string]*records.IntegrityError{}
	for _, ie := range bad {
		if ie.Kind != kind {
			add(0, kind == CheckpointRecordKind, "%v", ie)
			continue
		}
		out[ie.Key] = ie
	}
	return out, nil
}

// recordProblem says what the record store found wrong with a row.
func recordProblem(ie *records.IntegrityError) string {
	if errors.Is(ie.Err, records.ErrBadMAC) {
		return "record mac does not verify (the row was edited or planted)"
	}
	return "record " + ie.Reason
}
