//! Compaction: rewriting sealed log segments so that what nothing serves any more is no longer
//! on disk. Slice 1 purges the payloads of recalled messages (`tidings compact`).
//!
//! A recalled message is served without its payload (history, sync, catch-up, changes), but its
//! send — and each edit of it — still holds the bytes in the log. [`plan_recall_purge`] finds
//! those records in the sealed local segments; [`purge_record`] turns one into the same event
//! with its payload replaced by zeros of the same length and
//! [`FLAG_PURGED`](tidings_projections::FLAG_PURGED) set, encoded to the same length; [`run()`]
//! writes a fresh anchored snapshot, removes every other snapshot file (one may hold a recalled
//! message's preview) and rewrites each segment in place through `Log::rewrite_sealed`.
//!
//! The server purges too, while it runs (`compaction.purge_interval_secs`): it finds its
//! targets in its projections rather than by a scan — each recalled message's send, through
//! the message index, and every edit of it — and [`plan_online_purge`] decides, reading
//! nothing, which of the records it read to rewrite in which sealed segment, which to leave
//! for a later pass (in the active segment, or at an offset a snapshot is anchored to) and
//! which to skip (not the record the projections said).
//!
//! # Invariants
//! 1. A purged record has the original's offset and length, and decodes to the original event
//!    but for its payload (zeros) and flags (`FLAG_PURGED` added): its segment's batch lengths,
//!    byte positions and index files stay valid.
//! 2. The purged log rebuilds into the state the original gave: `State::apply` ignores
//!    `FLAG_PURGED`, and a recalled message's payloads fed only the channel head's preview,
//!    which its recall cleared or a later message replaced (the server writes a recall only of
//!    a message already sent).
//! 3. Only the sends and edits of messages the state holds as recalled are purged; a record
//!    purged already is skipped, so a second run over the same log rewrites nothing.
//! 4. A record whose bytes are not what this build encodes for the event they decode to is
//!    refused, never rewritten: re-encoding it would change more than its payload. The plan
//!    checks every record it would purge, and lists such a record as unpurgeable (left as it
//!    is) before anything changes; the others are purged.
//! 5. The log's last record, to which the fresh snapshot is anchored, is never purged (nor, by
//!    the server, its last applied record or any snapshot's anchor record), and the active
//!    segment is never rewritten: what they hold waits for a later run.
//! 6. Segments are rewritten only once the fresh snapshot is durable and every other snapshot
//!    file is gone, each atomically (old or new, never half): a run cut short leaves a log and
//!    a snapshot that agree, and running it again finishes it.
//! 7. A record is purged only once it is identified as the send or edit of a recalled message:
//!    decoded, of that channel and seq (the online plan checks what it was handed).
//! 8. `tidings compact` refuses a tiered data directory: the object store keeps its own copies
//!    of segments and snapshots, which an offline run would not reach. A tiered server purges
//!    online (`Log::rewrite_sealed` rewrites a local copy or one only in the store, and uploads
//!    the rewrite in place of the old objects), acting on a recall only once the store holds it.

mod error;
mod online;
mod plan;
mod purge;
mod run;

pub use crate::error::{CompactionError, Result};
pub use crate::online::{OnlinePlan, Target, TargetKind, plan_online_purge};
pub use crate::plan::{Plan, plan_recall_purge};
pub use crate::purge::purge_record;
pub use crate::run::{Progress, Report, run, stale_snapshot_files};
