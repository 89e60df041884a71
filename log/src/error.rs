//! The log's error type.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Why bytes on disk were rejected. Each names the state that was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptKind {
    /// The batch does not start with the batch magic.
    #[error("bad magic {found:#010x}")]
    MagicMismatch {
        /// The four bytes found, little-endian.
        found: u32,
    },
    /// The stored CRC does not match the bytes.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes on disk.
        computed: u32,
    },
    /// The batch ends past the end of the file (a torn write).
    #[error("batch of {batch_len} bytes runs past the end of the data ({available} available)")]
    Truncated {
        /// Declared batch length.
        batch_len: u64,
        /// Bytes actually there.
        available: u64,
    },
    /// The declared length is impossible.
    #[error("impossible batch length {batch_len}")]
    BadLength {
        /// Declared batch length.
        batch_len: u64,
    },
    /// A format version this build does not know.
    #[error("unknown batch version {version}")]
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// The batch is not the one expected at that position.
    #[error("batch base offset {found}, expected {expected}")]
    OffsetMismatch {
        /// The base offset found.
        found: u64,
        /// The base offset that belongs there.
        expected: u64,
    },
    /// The records inside the batch do not add up to its length or count.
    #[error("record framing inconsistent: {detail}")]
    BadRecords {
        /// What did not add up.
        detail: &'static str,
    },
    /// A damaged last batch of a tail written under `fsync = always` where the records it
    /// should hold were acknowledged (`LogOptions::with_acknowledged_through`): not a torn tail.
    #[error(
        "{damage}, where acknowledged records were (through offset {acknowledged_through}, written under fsync always)"
    )]
    AcknowledgedDamage {
        /// The offset through which records were acknowledged.
        acknowledged_through: u64,
        /// What was found.
        damage: Box<CorruptKind>,
    },
    /// The data ends here: the end of the file, or zeros to it.
    #[error("the data ends here ({zeros} zero bytes after it)")]
    EndsEarly {
        /// Zero bytes from here to the end of the file.
        zeros: u64,
    },
    /// Valid batches follow a damaged one: not a torn tail.
    #[error("valid batches follow a damaged one ({valid_after} bytes from position {resume_at})")]
    DamageBeforeValidData {
        /// Where the next valid batch starts.
        resume_at: u64,
        /// Bytes from there to the end of the file.
        valid_after: u64,
    },
}

/// Errors returned by the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// An IO operation on a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Bytes on disk failed validation. Nothing from the damaged batch is returned.
    #[error("corrupt log data in {path} at byte {position} (offset {expected_offset}): {kind}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the damaged batch in that file.
        position: u64,
        /// The offset that was expected at that position.
        expected_offset: u64,
        /// What was wrong.
        kind: CorruptKind,
    },
    /// A write or sync failed earlier; the log refuses appends until it is reopened.
    #[error("log is stopped after an earlier write failure (reopen to recover): {cause}")]
    Poisoned {
        /// The original failure.
        cause: Arc<LogError>,
    },
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// Another process (or handle) has the log directory open.
    #[error("log directory {path} is locked by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The requested offset is not in the log.
    #[error("offset {requested} is out of range: the log holds [{start}, {end})")]
    OffsetOutOfRange {
        /// What was asked for.
        requested: u64,
        /// First offset held.
        start: u64,
        /// One past the last readable offset (the high-watermark).
        end: u64,
    },
    /// The log has no records from `from` up to `next`, below its watermark: the segment that
    /// held them is missing (a segment file removed by hand; a tiered log's directory read
    /// without its object store, where the retention of a build before 2026-11-30 left newer
    /// segments only in the store). Reads never skip over it, nor return nothing there.
    #[error(
        "offsets {from} to {next} are missing from the log (a segment between two others is \
         not here: a tiered log read without its object store, or a segment file removed; or \
         the segment before them was cut short at a batch's end)"
    )]
    Gap {
        /// The first missing offset.
        from: u64,
        /// Where records go on.
        next: u64,
    },
    /// An append exceeded `max_append_bytes`.
    #[error("append of {size} bytes exceeds the limit of {max} bytes")]
    AppendTooLarge {
        /// Encoded size of the append.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// An append had no records.
    #[error("an append needs at least one record")]
    EmptyAppend,
    /// The options are inconsistent.
    #[error("invalid log options: {0}")]
    InvalidOptions(String),
    /// The object store failed (uploads are retried; reads fail within the read timeout).
    #[error("object store: {0}")]
    Tier(String),
    /// The object store refused this server's credentials (HTTP 401 or 403): unlike an
    /// outage, no retry mends it, so a start is refused on it.
    #[error(
        "the object store refused the credentials (check tier.access_key_id and tier.secret_access_key, or the AWS_* environment, the bucket's policy, and this machine's clock): {0}"
    )]
    TierAccessDenied(String),
    /// The object store has no bucket of that name, or refuses the name (S3's `NoSuchBucket`,
    /// `InvalidBucketName`): like refused credentials, no retry mends it.
    #[error(
        "the object store has no such bucket, or refuses its name (check the bucket in tier.url, and tier.endpoint): {0}"
    )]
    TierNoBucket(String),
    /// A manifest version in the object store does not decode (damage, a write by something
    /// else than tidings, or a newer build's format): like refused credentials, no retry mends
    /// it — the next version's create finds it there too — so a start is refused on it,
    /// naming the object and what to do.
    #[error("a manifest version in the object store cannot be read: {0}")]
    TierDamaged(String),
    /// Another server owns the object-store prefix.
    #[error(
        "the object-store prefix {store} is owned by node {owner} (last write {seen_ms_ago} ms ago); refusing to write to it"
    )]
    Fenced {
        /// The owner's node id.
        owner: String,
        /// How long ago the owner last wrote.
        seen_ms_ago: u64,
        /// The store.
        store: String,
    },
    /// The object store does not hold offsets of the log that its directory no longer holds
    /// either: no segment of the store's manifest holds `from..to`, and the directory's oldest
    /// segment starts at `first_local` (the older ones were deleted once uploaded). The store
    /// is not the one the directory was tiered to, or those segments went to another store.
    /// Refused by the claim, before anything is written to the store: tiering on would upload
    /// the log's new segments there and delete their local copies, and a restore from the
    /// right store would never find them. At open the open fails; at a later claim (the store
    /// did not answer at open) tiering stops, as for another history (`diverged`).
    ///
    /// A store's history starts at its first segment. A store holding none is refused only
    /// when this directory tiered before (`store_empty`: its local manifest copy lists
    /// segments, which went to another store); a directory that never tiered starts its
    /// store's history at its oldest segment, whatever its offset.
    #[error(
        "offsets {from} to {to} of this log are in neither its directory (whose oldest segment \
         starts at offset {first_local}) nor the object store {store} ({}): is it the store \
         this directory was tiered to, or were they uploaded to another? Refusing to tier to it",
        if *.store_empty {
            "it holds no segment, while this directory tiered before: its local manifest copy \
             lists segments it uploaded, or cannot be read"
        } else {
            "no segment of its manifest holds them"
        }
    )]
    HistoryNotInStore {
        /// The store.
        store: String,
        /// The first offset neither holds.
        from: u64,
        /// One past the last offset of that missing run.
        to: u64,
        /// The first offset of the directory's oldest segment.
        first_local: u64,
        /// The store's manifest lists no segment (or there is none): refused because the
        /// directory's local manifest copy lists segments (from `from` on), or cannot be read.
        store_empty: bool,
    },
    /// The object store's manifest names another log's history than the directory's manifest
    /// copy ([`crate::tier::manifest::Manifest::history`]): the directory was started with
    /// another node's prefix, or a prefix another log took over. Refused by the claim, before
    /// anything is written to the store and before any of its segments is read as this log's
    /// (their offsets may line up with the directory's own). At open the open fails; at a later
    /// claim (the store did not answer at open) tiering stops, and the log takes no appends.
    #[error(
        "the object store {store} holds another log's history (history id {theirs}; this \
         directory's tier manifest copy names {ours}): is it the store this directory was \
         tiered to? Refusing to read or tier to it (an empty data directory restores from it)"
    )]
    StoreHoldsAnotherLog {
        /// The store.
        store: String,
        /// The history id of the directory's manifest copy.
        ours: u64,
        /// The history id of the store's manifest.
        theirs: u64,
    },
    /// The log was opened read-only.
    #[error("log is open read-only")]
    ReadOnly,
    /// A rewrite of a sealed segment ([`crate::Log::rewrite_sealed`]) was refused, and the
    /// segment left as it was: the log is read-only, or tiered and not holding its prefix
    /// (fenced, diverged, not claimed yet), no sealed segment starts at `base` (it is the active
    /// segment, not a segment's base, or — without a tier — only in the object store), an
    /// offset to replace is outside the segment, or a replacement's length is not its
    /// record's.
    #[error("rewrite of the segment at offset {base} refused: {reason}")]
    RewriteRefused {
        /// The base offset of the segment asked for.
        base: u64,
        /// Why.
        reason: String,
    },
    /// A removal of the oldest segments ([`crate::Log::remove_segments_before`]) was refused,
    /// and nothing removed: the log is a read-only view, or its object store's prefix is not
    /// this log's to change now (not claimed yet, fenced, another history).
    #[error("removal of the oldest segments refused: {reason}")]
    RemoveRefused {
        /// Why.
        reason: &'static str,
    },
    /// The writer thread ended unexpectedly.
    #[error("log writer stopped unexpectedly")]
    WriterGone,
    /// The log's object store is no longer this log's to write to — it holds another history
    /// of the log (`diverged`: a fail-back to an old data directory after another node wrote
    /// on), or another server took its prefix over (`fenced`) — so the log refuses appends
    /// until it is reopened: an acknowledged record could never reach the store's history.
    #[error(
        "the log takes no writes: {}",
        if *diverged {
            "its object store holds another history of this log (another node wrote on from it); an operator decides which history goes on (see tidings tier status), then restarts"
        } else {
            "another server took its object store's prefix over (this one is fenced); stop this server, or restart it once the other has stopped"
        }
    )]
    NotTheStoresHistory {
        /// Another history in the store (else: fenced).
        diverged: bool,
    },
}

impl LogError {
    /// Whether this is a cold read the object store did not answer within `read_timeout`
    /// ([`crate::tier::ColdStorageUnavailable`]).
    pub fn is_cold_storage_unavailable(&self) -> bool {
        matches!(self, LogError::Io { source, .. }
            if source
                .get_ref()
                .is_some_and(|s| s.is::<crate::tier::ColdStorageUnavailable>()))
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result alias for the log.
pub type Result<T, E = LogError> = std::result::Result<T, E>;
