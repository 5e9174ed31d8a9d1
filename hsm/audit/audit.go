package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// Record kinds of entries and checkpoints in the record store.
const (
	RecordKind           = "audit"
	CheckpointRecordKind = "audit-checkpoint"
)

// Event kinds the custody daemon appends.
const (
	KindPairing    = "pairing"
	KindRevocation = "revocation"
	KindRequest    = "request"
	KindPrompt     = "prompt"
	KindApproval   = "approval"
	KindRejection  = "rejection"
	KindSignature  = "signature"
	KindPolicy     = "policy"       // a policy change proposed, approved, applied or refused
	KindChange     = "admin-change" // any other admin change
	KindLogin      = "login-failure"
	KindRefused    = "answer-refused"  // a device answer the core did not accept
	KindChannel    = "channel-failure" // a device's secure channel failed closed on what the device side sent
)

// Field limits, in bytes.
const (
	MaxKindLen    = 64
	MaxSubjectLen = 1024
	MaxDetailLen  = 1024
)

// DefaultCheckpointEvery is how many entries a checkpoint covers unless
// [Config.CheckpointEvery] says otherwise.
const DefaultCheckpointEvery = 16

const (
	entryLabel      = "OpenCustody audit entry v1\x00"
	checkpointLabel = "OpenCustody audit checkpoint v1\x00"
)

// An Event is what a caller appends.
type Event struct {
	Kind    string // one of the Kind constants, or another 1 to 64 bytes
	Subject string // a device id, a request id, ...
	Detail  string // short text, never a secret
}

// An Entry is one link of the chain.
type Entry struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`
	Subject string    `json:"subject"`
	Detail  string    `json:"detail"`
	Prev    []byte    `json:"prev"`
	Hash    []byte    `json:"hash"`
}

// HashInput returns the bytes whose SHA-256 is the entry's hash (see the
// package doc). It fails if a field is out of its limits.
func (e *Entry) HashInput() ([]byte, error) {
	if len(e.Kind) == 0 || len(e.Kind) > MaxKindLen {
		return nil, fmt.Errorf("audit: entry %d: kind is %d bytes, want 1 to %d", e.Seq, len(e.Kind), MaxKindLen)
	}
	if len(e.Subject) > MaxSubjectLen || len(e.Detail) > MaxDetailLen {
		return nil, fmt.Errorf("audit: entry %d: subject or detail too long", e.Seq)
	}
	if len(e.Prev) != sha256.Size {
		return nil, fmt.Errorf("audit: entry %d: prev is %d bytes, want %d", e.Seq, len(e.Prev), sha256.Size)
	}
	var b cryptobyte.Builder
	b.AddBytes([]byte(entryLabel))
	b.AddUint64(e.Seq)
	b.AddUint64(uint64(e.Time.UnixNano()))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(e.Kind)) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(e.Subject)) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(e.Detail)) })
	b.AddBytes(e.Prev)
	return b.Bytes()
}

// ComputeHash returns SHA-256 of [Entry.HashInput].
func (e *Entry) ComputeHash() ([]byte, error) {
	in, err := e.HashInput()
	if err != nil {
		return nil, err
	}
	h := sha256.Sum256(in)
	return h[:], nil
}

// A Checkpoint is the identity key's signature over the chain up to entry Seq.
type Checkpoint struct {
	Seq       uint64       `json:"seq"`
	Hash      []byte       `json:"hash"` // the hash of entry Seq
	Time      time.Time    `json:"time"`
	Algorithm pb.Algorithm `json:"algorithm"`
	PublicKey []byte       `json:"public_key"` // the signer's, as it claimed; Verify checks against its own
	Signature []byte       `json:"signature"`
}

// Statement returns the signed statement (see the package doc).
func (c *Checkpoint) Statement() []byte {
	var b cryptobyte.Builder
	b.AddBytes([]byte(checkpointLabel))
	b.AddUint64(c.Seq)
	b.AddBytes(c.Hash)
	b.AddUint64(uint64(c.Time.UnixNano()))
	return b.BytesOrPanic()
}

// Digest is SHA-256 of the statement: what the identity key signs.
func (c *Checkpoint) Digest() []byte {
	h := sha256.Sum256(c.Statement())
	return h[:]
}

// Config configures a [Log].
type Config struct {
	// Records is the authenticated record store entries and checkpoints
	// are kept in.
	Records *records.Store
	// Rows is the backend under Records. Verify lists it to find every row,
	// including rows whose MAC fails, and checks each through Records.
	Rows records.Backend
	// Identity is the HSM identity key, which signs checkpoints.
	Identity signed.Signer
	// CheckpointEvery is how many entries a checkpoint covers; zero means
	// [DefaultCheckpointEvery].
	CheckpointEvery uint64
	// Now defaults to time.Now.
	Now func() time.Time
}

// A Log is the audit chain. It is safe for concurrent use.
type Log struct {
	cfg Config

	mu     sync.Mutex // guards loaded, seq, hash and the pending events it takes; held across a write
	loaded bool
	seq    uint64 // the last entry's sequence number, 0 if none
	hash   []byte // the last entry's hash

	qmu   sync.Mutex // guards queue
	queue []*pending // events waiting for an Append to write them
}

// New returns a Log.
func New(cfg Config) (*Log, error) {
	if cfg.Records == nil || cfg.Rows == nil || cfg.Identity == nil {
		return nil, errors.New("audit: Records, Rows and Identity are required")
	}
	if cfg.CheckpointEvery == 0 {
		cfg.CheckpointEvery = DefaultCheckpointEvery
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Log{cfg: cfg}, nil
}

func key(seq uint64) string { return fmt.Sprintf("%020d", seq) }

func parseKey(k string) (uint64, bool) {
	if len(k) != 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(k, 10, 64)
	return v, err == nil && v > 0
}

// load finds the head of the chain: the entry with the highest sequence
// number, which must verify. l.mu must be held.
func (l *Log) load(ctx context.Context) error {
	if l.loaded {
		return nil
	}
	rows, err := l.cfg.Rows.List(ctx, RecordKind)
	if err != nil {
		return fmt.Errorf("audit: list entries: %w", err)
	}
	var last uint64
	for _, r := range rows {
		if s, ok := parseKey(r.Key); ok && s > last {
			last = s
		}
	}
	l.seq, l.hash = 0, make([]byte, sha256.Size)
	if last > 0 {
		e, err := l.get(ctx, last)
		if err != nil {
			return err
		}
		l.seq, l.hash = e.Seq, e.Hash
	}
	l.loaded = true
	return nil
}

// get reads entry seq through the record store and checks its hash.
func (l *Log) get(ctx context.Context, seq uint64) (*Entry, error) {
	rec, err := l.cfg.Records.Get(ctx, RecordKind, key(seq))
	if err != nil {
		return nil, fmt.Errorf("audit: entry %d: %w", seq, err)
	}
	e, err := decodeEntry(rec.Body)
	if err != nil {
		return nil, fmt.Errorf("audit: entry %d: %w", seq, err)
	}
	h, err := e.ComputeHash()
	if err != nil {
		return nil, err
	}
	if e.Seq != seq || !bytes.Equal(h, e.Hash) {
		return nil, fmt.Errorf("audit: entry %d: hash does not match its fields", seq)
	}
	return e, nil
}

func decodeEntry(body []byte) (*Entry, error) {
	var e Entry
	if err := json.Unmarshal(body, &e); err != nil {
		return nil, fmt.Errorf("cannot decode: %w", err)
	}
	return &e, nil
}

// maxAppendAttempts bounds how often Append chains again onto a head
// another writer moved.
const maxAppendAttempts = 50

// maxBatch bounds how many queued events one record-store write appends.
const maxBatch = 64

// A pending event waits in Append's queue. Its fields are set, and done,
// by whichever Append writes it, under Log.mu.
type pending struct {
	ev   Event
	ent  *Entry
	err  error
	done bool
}

// Append adds ev to the chain and returns the new entry. Every
// CheckpointEvery entries it also signs a checkpoint; if that fails, Append
// returns the entry, which is stored, and the checkpoint's error.
//
// Events appended at the same time are written together: while one Append
// writes, the others queue, and the next to run writes every event queued
// by then, in order, in one record-store write (one commit) with ctx.
//
// Several Logs may append to one store (hsmd instances sharing a
// database): an entry whose sequence number another took first is chained
// again onto the new head.
func (l *Log) Append(ctx context.Context, ev Event) (*Entry, error) {
	return l.Queue(ev)(ctx)
}

// Queue puts ev in line to be appended, before any event queued or
// appended after Queue returns, and returns a function that waits until
// ev is written (writing it, with whatever is queued with it, if no other
// Append is) and returns what Append returns. The function must be
// called, once. Queue lets a caller start what follows an event without
// waiting for its entry, which still comes first in the chain.
func (l *Log) Queue(ev Event) func(context.Context) (*Entry, error) {
	p := &pending{ev: ev}
	l.qmu.Lock()
	l.queue = append(l.queue, p)
	l.qmu.Unlock()
	return func(ctx context.Context) (*Entry, error) { return l.wait(ctx, p) }
}

// wait returns p's outcome, writing the queue first if no other Append
// has written p yet.
func (l *Log) wait(ctx context.Context, p *pending) (*Entry, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !p.done {
		l.qmu.Lock()
		queued := l.queue
		l.queue = nil
		l.qmu.Unlock()
		for len(queued) > 0 {
			n := min(len(queued), maxBatch)
			l.appendBatch(ctx, queued[:n])
			queued = queued[n:]
		}
	}
	return p.ent, p.err
}

// appendBatch appends the events of ps in one write and marks each done.
// l.mu must be held.
func (l *Log) appendBatch(ctx context.Context, ps []*pending) {
	var written []*pending
	for attempt := 0; ; attempt++ {
		if err := l.load(ctx); err != nil {
			for _, p := range ps {
				p.err, p.done = err, true
			}
			return
		}
		seq, hash := l.seq, l.hash
		changes := make([]records.Change, 0, len(ps))
		written = written[:0]
		for _, p := range ps {
			e := &Entry{Seq: seq + 1, Time: l.cfg.Now().UTC(), Kind: p.ev.Kind, Subject: p.ev.Subject, Detail: p.ev.Detail, Prev: hash}
			body, err := e.seal()
			if err != nil {
				p.err, p.done = err, true // refused, and no number taken
				continue
			}
			changes = append(changes, records.Change{Kind: RecordKind, Key: key(e.Seq), Body: body})
			p.ent = e
			written = append(written, p)
			seq, hash = e.Seq, e.Hash
		}
		if len(changes) == 0 {
			return
		}
		_, err := l.cfg.Records.Write(ctx, changes...)
		if err == nil {
			l.seq, l.hash = seq, hash
			break
		}
		// Another writer may have moved the head: read it again.
		l.loaded = false
		if !errors.Is(err, records.ErrExists) || attempt+1 >= maxAppendAttempts {
			for _, p := range written {
				p.err = fmt.Errorf("audit: append entry %d: %w", p.ent.Seq, err)
				p.ent, p.done = nil, true
			}
			return
		}
	}
	var crossed *pending // the first entry at a multiple of CheckpointEvery
	for _, p := range written {
		p.done = true
		if crossed == nil && p.ent.Seq%l.cfg.CheckpointEvery == 0 {
			crossed = p
		}
	}
	if crossed != nil {
		if _, err := l.checkpoint(ctx); err != nil {
			crossed.err = err
		}
	}
}

// seal computes e's hash and returns the record body that stores e.
func (e *Entry) seal() ([]byte, error) {
	h, err := e.ComputeHash()
	if err != nil {
		return nil, err
	}
	e.Hash = h
	body, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("audit: entry %d: %w", e.Seq, err)
	}
	return body, nil
}

// Checkpoint signs and stores a checkpoint of the latest entry and returns
// it. With no entries it returns nil and no error. A checkpoint of an entry
// already checkpointed is not stored again.
func (l *Log) Checkpoint(ctx context.Context) (*Checkpoint, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.load(ctx); err != nil {
		return nil, err
	}
	return l.checkpoint(ctx)
}

func (l *Log) checkpoint(ctx context.Context) (*Checkpoint, error) {
	if l.seq == 0 {
		return nil, nil
	}
	if rec, err := l.cfg.Records.Get(ctx, CheckpointRecordKind, key(l.seq)); err == nil {
		var c Checkpoint
		if err := json.Unmarshal(rec.Body, &c); err == nil {
			return &c, nil
		}
	}
	c := &Checkpoint{Seq: l.seq, Hash: l.hash, Time: l.cfg.Now().UTC(), Algorithm: l.cfg.Identity.Algorithm(), PublicKey: l.cfg.Identity.PublicKey()}
	sig, err := l.cfg.Identity.SignDigest(c.Digest())
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoint %d: sign: %w", c.Seq, err)
	}
	c.Signature = sig
	body, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoint %d: %w", c.Seq, err)
	}
	if _, err := l.cfg.Records.Create(ctx, CheckpointRecordKind, key(c.Seq), body); err != nil {
		return nil, fmt.Errorf("audit: store checkpoint %d: %w", c.Seq, err)
	}
	return c, nil
}
