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
    /// Events were applied out of order.
    #[error("offset {offset} applied after offset {applied}")]
    OutOfOrder {
        /// The offset offered.
        offset: u64,
        /// The last offset applied.
        applied: u64,
    },
    /// The cache failed.
    #[error("cache: {0}")]
    Cache(String),
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
