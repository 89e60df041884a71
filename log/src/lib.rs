//! tidings' commit log: an append-only sequence of records with dense `u64` offsets, stored
//! in checksummed batches in segment files, written by one group-commit writer.
//!
//! The byte layout, the append/fsync/roll protocol and the crash analysis are in
//! `log/DESIGN.md`; this crate implements that page.
//!
//! # Invariants
//! 1. Offsets are dense and start at 0: the record after `n` is `n + 1`.
//! 2. Under `FsyncPolicy::Always` (the default) no append is acknowledged before `fdatasync`
//!    of its bytes returned.
//! 3. Reads and tails never return a record at or past the high-watermark.
//! 4. Bytes that fail their CRC are never returned: the read fails with
//!    [`LogError::Corrupt`], naming the file, byte position and offset.
//! 5. After a write or sync error the log refuses appends ([`LogError::Poisoned`]) until it is
//!    reopened; so does a tiered log whose object store is no longer its to write — another
//!    history of it there, or its prefix taken over — ([`LogError::NotTheStoresHistory`]):
//!    nothing it acknowledged then could reach the store's history.
//! 6. Opening reads only the active segment's indexes and tail, never the whole log.
//! 7. Sealed segments are never written to, and hold exactly their batches. Only the active
//!    segment may end in zeros (the unused part of a preallocated segment, `log/DESIGN.md`);
//!    they are never read as records, and sealing or closing cuts them. A sealed segment is
//!    only ever replaced whole, by [`Log::rewrite_sealed`]: the same batches, offsets,
//!    timestamps and length, some records' bytes replaced by others of the same length, in a
//!    new file renamed over it (a crash leaves the old segment or the new one, never a mix).
//!    The oldest sealed segments may be removed whole, oldest first, by
//!    [`Log::remove_segments_before`] (retention; with an object store, from the store too,
//!    only segments it holds, its manifest's start moved before anything is deleted): the
//!    log's start offset only moves forward, what a crash leaves is a suffix of the log, and a
//!    read below the start fails with [`LogError::OffsetOutOfRange`].
//! 8. One process at a time: the directory is locked while open, by the writer thread, until
//!    its last write (a log dropped without `close` stays locked while its writer finishes).
//! 9. With a [`tier::Tier`]: a sealed segment's local file is deleted only after its upload was
//!    confirmed and recorded in a manifest version; appends never wait for the object store;
//!    a cold read fails within the tier's read timeout instead of hanging; one owner per
//!    prefix; no tiering to a store that lacks offsets from its history's start up to the
//!    oldest local segment ([`LogError::HistoryNotInStore`]; see the [`tier`] module).
//! 10. What the log holds does not grow with its history: a process holds at most
//!     [`MAX_OPEN_SEALED_FILES`] sealed segment files open and [`MAX_LOADED_SEALED_INDEXES`]
//!     sealed segment indexes in memory (the least recently used are dropped, and opened or
//!     loaded again when read), plus those a read is using at that moment, the index rebuilt for
//!     a segment whose index files are damaged, and a file tiering's retention unlinked while
//!     a reader may still use it; the active segment's are never dropped.
//!
//! # Example
//! ```
//! # async fn demo() -> Result<(), tidings_log::LogError> {
//! use tidings_log::{Log, LogOptions};
//! let dir = std::env::temp_dir().join(format!("tidings-doc-{}", std::process::id()));
//! let log = Log::open(&dir, LogOptions::default()).await?;
//! let offset = log.append_one(bytes::Bytes::from_static(b"hello")).await?;
//! let records = log.read(offset, 1 << 20).await?;
//! assert_eq!(&records[0].payload[..], b"hello");
//! log.close().await?;
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(()) }
//! ```

mod acks;
mod batch;
pub mod disk_cache;
mod error;
mod index;
mod log;
mod metrics;
mod options;
mod prealloc;
mod readonly;
mod recovery;
mod retention;
mod rewrite;
mod sealed;
mod segment;
#[cfg(feature = "sim")]
pub mod sim;
mod tail;
pub mod tier;
mod vfs;
mod writer;

pub use crate::batch::Record;
pub use crate::error::{CorruptKind, LogError, Result};
pub use crate::log::{
    AppendAck, Log, PendingAppend, SegmentCheck, SegmentInfo, Watermark, last_open_was_unsynced,
};
pub use crate::metrics::{FSYNC_BUCKETS_MICROS, LogMetrics};
pub use crate::options::{FsyncPolicy, LogOptions, RecoveryMode};
pub use crate::retention::Removed;
pub use crate::rewrite::{RewriteStats, SealedSegment};
pub use crate::sealed::{MAX_LOADED_SEALED_INDEXES, MAX_OPEN_SEALED_FILES};
pub use crate::tail::Tail;
pub use crate::vfs::{DIRECT_ALIGN, StdFs, Vfs, VfsFile, VfsLock, lock_dir_of};
