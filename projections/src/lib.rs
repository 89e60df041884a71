//! tidings' event model and projections.
//!
//! Every log record is one CBOR [`Envelope`] holding an [`Event`]. Every other piece of state —
//! subscriptions, channel heads, the channel message index, cursors, conversations, idempotency,
//! traces — is a projection: derived by applying events in log order with [`State::apply`],
//! rebuildable from any snapshot plus the log after it.
//!
//! # Invariants
//! 1. `apply` is deterministic: the same log always produces the same [`State`].
//! 2. Projection memory grows with channels, users, subscriptions, recalls and edits — never with
//!    the number of messages: the message index keeps only its newest entries in memory and the
//!    rest in CRC-checked sidecar files (a run per channel per sidecar: with a retention, only
//!    the sidecars of the retained log, `log_trimmed` letting the older ones go).
//! 3. Channel seqs start at 1 and are gapless; a cursor is the last seq received (0 = none);
//!    sync returns `seq > cursor`. Cursors only move forward.
//! 4. A send is O(1) events whatever the group size: conversations are computed on read.
//! 5. Decoding never panics: bad bytes are a typed error naming the offset.
//! 6. Snapshots are written atomically with a CRC; a damaged one is skipped, never loaded.

mod codec;
pub mod conv_cache;
pub mod conversations;
pub mod cursors;
pub mod diff;
mod error;
pub mod event;
mod fsutil;
pub mod heads;
pub mod idempotency;
pub mod ids;
pub mod index_repair;
pub mod messages;
pub mod msgindex;
pub mod permissions;
pub mod snapshot;
mod state;
mod store;
pub mod subscriptions;
pub mod tokens;
pub mod trace;

pub use crate::error::{ProjectionError, Result};

/// The hash map of the hot projections: foldhash (fast, seeded per process) instead of SipHash,
/// and hashbrown's map for `entry_ref` (one lookup, the key allocated only when inserted).
pub type FastMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;
/// The set to go with [`FastMap`].
pub type FastSet<K> = hashbrown::HashSet<K, foldhash::fast::RandomState>;
pub use crate::event::{
    ChannelFlags, CursorUpdate, Envelope, Event, FLAG_JSON_PAYLOAD, FLAG_PURGED, ListKind, ListOp,
    ListOwner,
};
pub use crate::state::{Applied, State, Trimmed};
pub use crate::store::{
    Origin, PreparedSnapshot, ProjectionConfig, Projections, SidecarsRemoved, TrimApplied,
    let_go_sidecars, trim_applied_by,
};
