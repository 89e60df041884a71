//! The compaction's error type.

use std::path::PathBuf;

/// Errors of a compaction. None leaves a segment half rewritten: each segment is replaced
/// whole or not at all (`Log::rewrite_sealed`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactionError {
    /// The log failed (a read, or a rewrite it refused).
    #[error(transparent)]
    Log(#[from] tidings_log::LogError),
    /// A record did not decode, or a snapshot could not be written.
    #[error(transparent)]
    Projection(#[from] tidings_projections::ProjectionError),
    /// The record's bytes are not what this build encodes for the event they decode to (an
    /// encoding another writer chose, or one this build would write otherwise): re-encoding it
    /// would change more than its payload, so it is not rewritten.
    #[error(
        "the record at offset {offset} is not in the encoding this build writes for its event; \
         it is left as it is"
    )]
    NotCanonical {
        /// The record's offset.
        offset: u64,
    },
    /// A purge was asked of a record that is not a message's send or edit.
    #[error("the record at offset {offset} is a {kind} event, not a message's send or edit")]
    NotAMessage {
        /// The record's offset.
        offset: u64,
        /// The event's kind.
        kind: &'static str,
    },
    /// The purged record's encoding has another length than the original's (never expected:
    /// the payload keeps its length and the flags their head's size).
    #[error(
        "purging the record at offset {offset} would change its length from {before} to \
         {after} bytes"
    )]
    LengthChanged {
        /// The record's offset.
        offset: u64,
        /// The original's length.
        before: usize,
        /// The purged record's length.
        after: usize,
    },
    /// The run was given a plan, or projections, not as of the log's current end.
    #[error(
        "the {what} is as of offset {at}, but the log ends at offset {end}: plan again from \
         projections caught up with the log"
    )]
    Stale {
        /// `"plan"`, or `"projections"`.
        what: &'static str,
        /// The log's end it is as of (one past the last offset).
        at: u64,
        /// The log's end (one past its last offset).
        end: u64,
    },
    /// The plan keeps another offset than the one the new snapshot is anchored to.
    #[error(
        "the plan protects offset {planned:?}, but the snapshot is anchored to offset \
         {anchored:?}: plan with the projections' last offset"
    )]
    WrongProtected {
        /// The offset the plan keeps.
        planned: Option<u64>,
        /// The projections' last offset.
        anchored: Option<u64>,
    },
    /// The log holds no local record where one must be (the new snapshot's anchor, a planned
    /// record).
    #[error("the log holds no local record at offset {offset}")]
    Missing {
        /// The offset.
        offset: u64,
    },
    /// A snapshot file could not be removed or its directory synced.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl CompactionError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The compaction's result type.
pub type Result<T, E = CompactionError> = std::result::Result<T, E>;
