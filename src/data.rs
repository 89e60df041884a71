//! The layout of a data directory:
//!
//! ```text
//! DIR/log/            the commit log (segments, indexes, LOCK)
//! DIR/projections/    snapshots/ and index/ (message index sidecars)
//! DIR/cache/          foyer disk caches (safe to delete while the server is stopped)
//! DIR/admin.key       the admin key generated on first start (mode 0600)
//! ```

use std::path::PathBuf;

/// A data directory.
#[derive(Debug, Clone)]
pub(crate) struct DataDir(PathBuf);

impl DataDir {
    pub(crate) fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }
    pub(crate) fn root(&self) -> &std::path::Path {
        &self.0
    }
    pub(crate) fn cache(&self) -> PathBuf {
        self.0.join("cache")
    }
    pub(crate) fn admin_key(&self) -> PathBuf {
        self.0.join("admin.key")
    }
    pub(crate) fn log(&self) -> PathBuf {
        self.0.join("log")
    }
    pub(crate) fn projections(&self) -> PathBuf {
        self.0.join("projections")
    }
}
