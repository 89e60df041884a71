//! The layout of a data directory:
//!
//! ```text
//! DIR/log/            the commit log (segments, indexes, LOCK)
//! DIR/projections/    snapshots/, index/ (message index sidecars), purge-watermark
//! DIR/cache/          foyer disk caches (safe to delete while the server is stopped)
//! DIR/admin.key       the admin key generated on first start (mode 0600)
//! DIR/node.id         this node's tier owner name, generated on first start with a tier
//! DIR/LOCK            held by the process that owns the directory (a server, `tier upload-now`)
//! ```
//!
//! The directory's `LOCK` is taken before anything else is opened: the block cache, a
//! snapshot restored from the object store, the admin key. The log's own `LOCK` (in `log/`)
//! comes later, after the tier is open, and read-only commands (`verify`, `inspect`, `replay`,
//! `trace`) take neither.

use std::path::{Path, PathBuf};

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
    /// The conversation cache's files, and its mark of lists not to be reused.
    pub(crate) fn conversation_cache(&self) -> PathBuf {
        self.cache().join("conversations")
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
    /// A file marking this directory as tiered, if there is one: the log's local copy of a
    /// tier manifest (`log/tier-manifest.json`), or the node id a first start with a tier
    /// writes (`node.id`: a start killed after its claim of the store's prefix, before its
    /// first manifest write, has no copy yet). Neither `tidings compact` nor the server's
    /// background purge rewrites the segments of such a directory: the object store keeps its
    /// own copies of segments and snapshots, which they would not reach.
    pub(crate) fn tier_marker(&self) -> Option<PathBuf> {
        let manifest = self.log().join("tier-manifest.json");
        let node_id = self.0.join("node.id");
        [manifest, node_id].into_iter().find(|path| path.exists())
    }
    /// Whether a message whose send lies below the first offset `log` holds has *expired*
    /// (`tidings_projections::messages`' module doc: gone by retention, or its segment removed
    /// by hand; read as gone, never an error): when the log has no tier and this directory was
    /// never tiered ([`DataDir::tier_marker`]). A tiered directory's older segments are in the
    /// object store, not gone: reads of them answer 503 `history_unavailable` when it is not
    /// read.
    ///
    /// A directory the retention trimmed ([`DataDir::trimmed_marker`]) expires below its start
    /// whatever its tier: a tier turned on afterwards starts its store's history at the oldest
    /// segment left, and nothing holds the removed ones (before the marker, such a directory's
    /// sync failed 503 for every user whose cursor was below the start, for good).
    pub(crate) fn expires_below_log_start(&self, log: &tidings_log::Log) -> bool {
        (log.tier().is_none() && self.tier_marker().is_none()) || self.trimmed_marker().exists()
    }
    /// The file the retention writes (durably) before it first removes segments: this
    /// directory's log lost its oldest segments for good, so messages below its start have
    /// expired, tiered or not.
    pub(crate) fn trimmed_marker(&self) -> PathBuf {
        self.0.join("log-trimmed")
    }
}

/// Writes `bytes` to `path` so that a crash or a power cut leaves the earlier file (or none)
/// or the new one whole, never an empty or torn one: written under another name (`path` +
/// `.tmp`, created with permission bits `mode`), synced, renamed over `path`, and the
/// directory synced so the rename itself survives. For the files generated once and then
/// relied on (the admin key, the node id); the data directory's lock keeps a second writer
/// out.
pub(crate) fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_durable_write_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.key");
        // What a crash between create and rename left behind is written over.
        std::fs::write(dir.path().join("admin.key.tmp"), b"half").unwrap();
        write_durably(&path, b"first", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        write_durably(&path, b"second", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!dir.path().join("admin.key.tmp").exists());
        let fresh = dir.path().join("node.id");
        write_durably(&fresh, b"id", 0o600).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
