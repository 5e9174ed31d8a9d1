// Package audit is the custody core's tamper-evident audit log: every
// security event (a pairing, a revocation, a request, an approval, a
// rejection, a signature, ...) is appended to a hash chain, and the HSM
// identity key signs checkpoints of the chain.
//
// # Using it
//
// Open a [Log] over the same authenticated record store the core uses and
// the HSM identity key, append events, and verify the whole log when asked:
//
//	log, err := audit.New(audit.Config{Records: store, Rows: db, Identity: identity})
//	err = log.Append(ctx, audit.Event{Kind: audit.KindPairing, Subject: deviceID, Detail: "user alice"})
//	report, err := log.Verify(ctx)
//	for _, p := range report.Problems { ... } // each names its position
//
// Append is serialized: entries get consecutive sequence numbers from 1.
// Events appended at the same time are written together, in one
// record-store write (one commit) of up to 64 entries; [Log.Queue] puts
// an event in line at once and waits for its entry later, so that what
// follows the event can start while its entry is written. A write that
// reaches a multiple of [Config.CheckpointEvery] entries (16 by default)
// also signs a [Checkpoint] of its last entry; [Log.Checkpoint] signs one
// on demand.
//
// # Entries
//
// An [Entry] is a sequence number, a time, a kind, a subject (a device id
// or a request id), a short detail (never a secret), the hash of the
// previous entry (32 zero bytes for entry 1) and its own hash. The hash is
// SHA-256 of the bytes [Entry.HashInput] returns, built with cryptobyte:
//
//	"OpenCustody audit entry v1\x00"  27 bytes: domain and format version
//	uint64 seq                        big-endian, from 1
//	uint64 time                       Unix nanoseconds, big-endian
//	uint8  len(kind)    || kind       at most 64 bytes
//	uint16 len(subject) || subject    at most 1024 bytes
//	uint16 len(detail)  || detail     at most 1024 bytes
//	[32]byte prev                     the previous entry's hash
//
// # Checkpoints
//
// A [Checkpoint] commits to the chain up to an entry: the identity key
// signs SHA-256 of the statement [Checkpoint.Statement]:
//
//	"OpenCustody audit checkpoint v1\x00"  32 bytes
//	uint64 seq                             the entry checkpointed
//	[32]byte hash                          that entry's hash
//	uint64 time                            Unix nanoseconds
//
// # Storage
//
// Entries are records of kind "audit" and checkpoints records of kind
// "audit-checkpoint" in the record store (package records), keyed by the
// sequence number as 20 decimal digits, so every row also carries the HSM
// record key's MAC. Entries are created, never updated: a second entry with
// the same sequence number fails.
//
// # What Verify finds
//
// [Log.Verify] reads every entry and checkpoint, whatever the database
// does to them, and reports, each with its position ([Problem.Seq]):
//
//   - a row whose record MAC does not verify (an edited or planted row);
//   - an entry whose hash is not the hash of its fields (an edited entry);
//   - a missing sequence number (a deleted row in the middle);
//   - an entry whose prev is not the previous entry's hash (a replaced
//     or reordered entry);
//   - a checkpoint whose signature is not the identity key's, or whose hash
//     is not the hash of the entry it names, or that names an entry that is
//     not there (a deleted tail the checkpoint covers);
//   - an entry or checkpoint the record store's manifest lists that has no
//     row (the newest entries deleted, checkpointed or not), a row the
//     manifest does not list, and a manifest that was rolled back or
//     removed (package records, "Manifests"). Such problems with the
//     manifest itself are reported at position 0.
//
// # What Verify cannot find
//
// A consistent copy of the whole database from an earlier moment (records,
// manifests, entries and checkpoints all as they were) is the genuine log
// of that moment: while hsmd runs, the record store's pin reports it as
// rolled back, but a daemon started on the restored copy cannot tell. The
// newest entries lost that way are those after the checkpoint an operator
// last exported: keep exports ('opencustody audit export'; hsmd signs a
// checkpoint of the newest entry every tick, and when it stops) where the
// database cannot reach them, and compare.
//
// # Failures
//
// A security event must not vanish silently, and must not block the
// operation that caused it either: the custody daemon logs a failed Append
// at error level with the event and counts it in a metric, and the next
// Verify shows no entry for it. If the newest entry fails verification,
// Append refuses to chain onto it, and every later Append fails (loudly)
// until an operator has looked. Errors read "audit: ..." and name the
// sequence number concerned.
//
// A Log is safe for concurrent use.
package audit
