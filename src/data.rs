//! The layout of a data directory:
//!
//! ```text
//! DIR/log/            the commit log (segments, indexes, LOCK)
//! DIR/projections/    snapshots/ and index/ (message index sidecars)
//! DIR/cache/          foyer disk caches (safe to delete while the server is stopped)
//! DIR/admin.key       the admin key generated on first start (mode 0600)
//! DIR/LOCK            held by the process that owns the directory (a server, `tier upload-now`)
//! ```
//!
//! The directory's `LOCK` is taken before anything else is opened: the block cache, a
//! snapshot restored from the object store, the admin key. The log's own `LOCK` (in `log/`)
//! comes later, after the tier is open, and read-only commands (`verify`, `inspect`, `replay`)
//! take neither.

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
    /// Creates the directory if missing and takes its `LOCK`, held while the returned file
    /// is open; refused while another process holds it.
    pub(crate) fn lock(&self) -> anyhow::Result<std::fs::File> {
        self.try_lock()?.ok_or_else(|| {
            anyhow::anyhow!(
                "the data directory {} is in use by another tidings process (a running server?)",
                self.0.display()
            )
        })
    }

    /// [`DataDir::lock`], with `None` while another process holds it.
    pub(crate) fn try_lock(&self) -> anyhow::Result<Option<std::fs::File>> {
        use anyhow::Context as _;
        std::fs::create_dir_all(&self.0)
            .with_context(|| format!("creating the data directory {}", self.0.display()))?;
        let path = self.0.join("LOCK");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(anyhow::Error::new(e).context(format!("locking {}", path.display())))
            }
        }
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
