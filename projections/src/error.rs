//! Errors of the projections crate.

use std::path::PathBuf;

/// Errors decoding, applying, snapshotting or rebuilding projections.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// A log record is not a valid event.
    #[error("record at offset {offset} is not a valid event: {reason}")]
    Decode {
        /// The record's log offset.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// An envelope version this build does not know.
    #[error("record at offset {offset} has envelope version {version}; this build reads version 1")]
    UnsupportedVersion {
        /// The record's log offset.
        offset: u64,
        /// The version found.
        version: u8,
    },
    /// The log failed.
    #[error(transparent)]
    Log(#[from] tidings_log::LogError),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot or index file failed validation.
    #[error("corrupt {what} {path} at byte {position}: {reason}")]
    Corrupt {
        /// What kind of file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Where the damage was found.
        position: u64,
        /// What was wrong.
        reason: String,
    },
    /// A snapshot written by an earlier build whose projections applied events differently
    /// (format versions in `snapshot.rs`): it is not loaded; the state is rebuilt from the log.
    #[error(
        "snapshot {path} has format version {version} (this build writes {current}): it was \
         written under rules that changed since, so it is not used; the state is rebuilt \
         from the log"
    )]
    SnapshotOutdated {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
        /// The version this build writes.
        current: u32,
    },
    /// Events were applied out of order.
    #[error("offset {offset} applied after offset {applied}")]
    OutOfOrder {
        /// The offset offered.
        offset: u64,
        /// The last offset applied.
        applied: u64,
    },
    /// The log does not hold the events the state needs next: it starts past them, or has a
    /// gap there (a tiered log opened without its object store, or segments removed).
    #[error(
        "the state needs events from offset {needed}, but the log's next record is at offset \
         {log_start}: history is missing (open the log with its object store, or restore the \
         segments)"
    )]
    HistoryMissing {
        /// The next offset the state needs.
        needed: u64,
        /// Where the log's records go on: its first offset, or the end of the gap.
        log_start: u64,
    },
    /// The state (from a snapshot) covers events the log does not hold: the log lost its end
    /// (a power cut under `fsync = every/never`, or a tail cut in recovery) after the
    /// snapshot was written. Applying from the log's end would skip every event appended at
    /// the offsets the state already counts.
    #[error(
        "the state covers the offsets below {applied_to} but the log ends at {log_end}: the log \
         lost events after this snapshot was taken; rebuild from the log (`tidings rebuild`, \
         or `--from-offset N` with N below {log_end})"
    )]
    AheadOfLog {
        /// One past the last offset the state has applied.
        applied_to: u64,
        /// The log's next offset.
        log_end: u64,
    },
    /// The cache failed.
    #[error("cache: {0}")]
    Cache(String),
    /// The work was stopped before it finished (a shutdown).
    #[error("stopped before it finished")]
    Stopped,
}

impl ProjectionError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ProjectionError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result alias for the projections crate.
pub type Result<T, E = ProjectionError> = std::result::Result<T, E>;
