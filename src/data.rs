//! The layout of a data directory:
//!
//! ```text
//! DIR/log/            the commit log (segments, indexes, LOCK)
//! DIR/projections/    snapshots/, index/ (message index sidecars), purge-watermark
//! DIR/cache/          foyer disk caches (safe to delete while the server is stopped)
//! DIR/admin.key       the admin key generated on first start (mode 0600)
//! DIR/node.id         this node's tier owner name, generated on first start with a tier
//! DIR/LOCK            held by the process that owns the directory (a server, `tier upload-now`)
//! DIR/FORMAT          the data format of the newest build that wrote here ([`DATA_FORMAT`])
//! ```
//!
//! The directory's `LOCK` is taken before anything else is opened: the block cache, a
//! snapshot restored from the object store, the admin key. The log's own `LOCK` (in `log/`)
//! comes later, after the tier is open, and read-only commands (`verify`, `inspect`, `replay`,
//! `trace`) take neither.

use std::path::{Path, PathBuf};

/// The data format this build writes: kept in `DIR/FORMAT` by every command that takes the
/// directory's lock (`serve`, `rebuild`, `compact`, `tier upload-now`), written there when the
/// file is missing or holds an older number. A later build that writes what this one would
/// misread (an event kind, a snapshot or sidecar format, a file this one would take for
/// damage) raises the number, and this build then refuses the directory before it opens
/// anything — the way back from an upgrade is a copy of the directory made before it. Builds
/// from before 2026-12-01 do not read the file (format 1 is what they wrote too).
pub(crate) const DATA_FORMAT: u32 = 1;

/// The number `DATA/FORMAT` holds: decimal digits alone (surrounding whitespace aside), one too
/// large for a `u32` taken as [`u32::MAX`] (a newer build's all the same); `None` for anything
/// else.
fn parse_format(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u32::MAX))
}

/// A format number in a message.
fn format_words(n: u32) -> String {
    match n {
        u32::MAX => "a number above this build's".to_owned(),
        n => n.to_string(),
    }
}

/// A data directory.
#[derive(Debug, Clone)]
pub(crate) struct DataDir(PathBuf);

/// A data directory's lock ([`DataDir::lock`]): its `LOCK` file, and the directory itself
/// where the file system locks directories.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: std::fs::File,
    _dir: Option<std::fs::File>,
}

impl DataDir {
    pub(crate) fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }
    pub(crate) fn root(&self) -> &std::path::Path {
        &self.0
    }
    /// Creates the directory if missing and takes its `LOCK` (and a lock on the directory
    /// itself: `tidings_log::lock_dir_of`), held while the returned value lives; refused
    /// while another process holds it.
    pub(crate) fn lock(&self) -> anyhow::Result<DirLock> {
        self.try_lock()?.ok_or_else(|| {
            anyhow::anyhow!(
                "the data directory {} is in use by another tidings process (a running server?)",
                self.0.display()
            )
        })
    }

    /// [`DataDir::lock`], with `None` while another process holds it.
    pub(crate) fn try_lock(&self) -> anyhow::Result<Option<DirLock>> {
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
            Ok(()) => match tidings_log::lock_dir_of(&path) {
                Ok(dir) => {
                    let lock = DirLock {
                        _file: file,
                        _dir: dir,
                    };
                    self.check_format()?;
                    Ok(Some(lock))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => {
                    Err(anyhow::Error::new(e).context(format!("locking {}", self.0.display())))
                }
            },
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(anyhow::Error::new(e).context(format!("locking {}", path.display())))
            }
        }
    }
    /// For the commands that only read (and take no lock): a few words when `DATA/FORMAT` says
    /// a newer build wrote here (what it holds may be misread), changing nothing.
    pub(crate) fn newer_format(&self) -> Option<String> {
        let path = self.0.join("FORMAT");
        let text = std::fs::read_to_string(&path).ok()?;
        match parse_format(&text) {
            Some(n) if n > DATA_FORMAT => Some(format!(
                "{} says data format {}, written by a newer build of tidings; this build reads format {DATA_FORMAT} and older, and may misread what that build wrote",
                path.display(),
                format_words(n)
            )),
            _ => None,
        }
    }

    /// Refuses a directory a newer build wrote ([`DATA_FORMAT`]); records this build's format
    /// where none or an older one is. Called with the directory's lock held.
    fn check_format(&self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let path = self.0.join("FORMAT");
        let found = match std::fs::read_to_string(&path) {
            Ok(text) => parse_format(&text).ok_or_else(|| {
                anyhow::anyhow!(
                    "{} does not hold a data format number (it holds {:?}): it is written by tidings; if this directory is this build's, write {DATA_FORMAT} there",
                    path.display(),
                    text.chars().take(40).collect::<String>()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if found > DATA_FORMAT {
            let found = format_words(found);
            anyhow::bail!(
                "the data directory {} is in data format {found} ({}), written by a newer build of tidings; this build reads format {DATA_FORMAT} and older, and would misread it. Run that newer build, or restore a copy of the directory made before the upgrade",
                self.0.display(),
                path.display()
            );
        }
        if found < DATA_FORMAT {
            write_durably(&path, format!("{DATA_FORMAT}\n").as_bytes(), 0o644)?;
        }
        Ok(())
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
    /// by hand; read as gone, never an error):
    ///
    /// - `log` without a tier, on a directory never tiered ([`DataDir::tier_marker`]): always.
    /// - `log` with its tier: [`expires_with_tier`], with whether this directory's
    ///   [`DataDir::trimmed_marker`] exists.
    /// - `log` without a tier on a directory that was tiered: never. Its older segments are in
    ///   the object store, not gone (those the retention removed from it too, but the local
    ///   log cannot tell where that ends): reads of them answer 503 `history_unavailable`
    ///   until it is started with its tier again.
    ///
    /// The server's view of this changes while it runs: its tiered log's first removal comes
    /// later (`AppState::expiring`).
    pub(crate) fn expires_below_log_start(&self, log: &tidings_log::Log) -> bool {
        match log.tier() {
            Some(tier) => expires_with_tier(tier, self.trimmed_marker().exists()),
            None => self.tier_marker().is_none(),
        }
    }
    /// The file the retention writes (durably) before it first removes segments: this
    /// directory's log lost its oldest segments for good (with a tier, from the object store
    /// too), so messages below its start have expired, whenever the log is read with the
    /// store its history is in ([`DataDir::expires_below_log_start`]).
    pub(crate) fn trimmed_marker(&self) -> PathBuf {
        self.0.join("log-trimmed")
    }
    /// The file `tidings compact` writes once it has removed the copies (old snapshots, the
    /// conversation cache's lists) that may hold recalled messages' previews: the log offset
    /// of the newest recall they were removed after, in decimal. A later run removes the
    /// cache's files again only after a newer recall.
    pub(crate) fn compacted_marker(&self) -> PathBuf {
        self.0.join("compacted-through")
    }
}

/// Whether messages below the first offset of a log read with its `tier` have expired
/// ([`DataDir::expires_below_log_start`]); `trimmed`: the data directory's
/// [`DataDir::trimmed_marker`] exists.
///
/// The store holds the log's history from where its manifest says it starts (a removal's
/// `start`, else its first segment): below a start past 0 the messages are gone for good —
/// removed by the retention (this node's, or another's whose store this directory restored
/// from, which left no marker here), or before the store's first upload (by a retention that
/// ran before the tier was turned on, or by hand). The marker says the same of a store that
/// holds no segment yet (a tier just turned on after the retention; before the marker, such a
/// directory's sync failed 503 for every user whose cursor was below the start, for good) —
/// once the store's manifest is known: claimed, or a local copy read. With neither (the store
/// did not answer at open and the directory has no copy), the log does not know its remote
/// segments, and what is below its local start may be in the store: unavailable (503), not
/// expired.
pub(crate) fn expires_with_tier(tier: &tidings_log::tier::Tier, trimmed: bool) -> bool {
    let m = tier.manifest();
    let from = m.history_start();
    from.is_some_and(|s| s > 0) || (trimmed && (from.is_some() || tier.is_claimed()))
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
    use std::sync::Arc;

    use super::*;

    /// A tiered log's messages below its start expire where the store's history starts past
    /// 0 (a removal's `start`, also one another node made: no marker needed), and with the
    /// `log-trimmed` marker once the store's manifest is known; a store whose history starts at
    /// 0 expires nothing without the marker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tiered_log_expires_below_where_the_stores_history_starts() {
        use object_store::ObjectStore;
        use tidings_log::tier::{Tier, TierOptions};
        use tidings_log::{Log, LogOptions};
        let (bucket, data, cache) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(bucket.path()).unwrap());
        let open = |owner: &'static str, dir: std::path::PathBuf| {
            let (store, cache) = (store.clone(), cache.path().to_path_buf());
            async move {
                let tier = Tier::open(
                    TierOptions::new(store, "p", "test", owner, cache)
                        .with_upload_interval(std::time::Duration::from_secs(3600)),
                )
                .await
                .unwrap();
                let opts = LogOptions::default()
                    .with_segment_bytes(4096)
                    .with_tier(tier);
                Log::open(dir, opts).await.unwrap()
            }
        };
        let log = open("node-a", data.path().join("a")).await;
        for i in 0..100 {
            log.append_one(bytes::Bytes::from(format!(
                "record {i:04} {}",
                "x".repeat(60)
            )))
            .await
            .unwrap();
        }
        log.roll().await.unwrap();
        log.upload_now().await.unwrap();
        let tier = log.tier().unwrap();
        assert!(tier.is_claimed());
        // From 0, nothing removed: nothing expires, unless the marker says the log was
        // trimmed before its first upload (then its store starts past 0 anyway).
        assert!(!expires_with_tier(tier, false));
        assert!(expires_with_tier(tier, true));
        log.remove_segments_before(50).await.unwrap();
        assert!(tier.manifest().start.is_some_and(|s| s > 0));
        assert!(expires_with_tier(tier, false));
        log.close().await.unwrap();
        // Another node restoring from that store: no marker, the start says so.
        let b = open("node-b", data.path().join("b")).await;
        assert!(expires_with_tier(b.tier().unwrap(), false));
        b.close().await.unwrap();
    }

    /// Taking the lock records this build's data format; a newer one is refused, naming it,
    /// and the file is left as it was; a file that is not a number is refused too.
    #[test]
    fn the_lock_records_the_data_format_and_refuses_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().join("data"));
        let format = data.root().join("FORMAT");
        drop(data.lock().unwrap());
        assert_eq!(std::fs::read_to_string(&format).unwrap(), "1\n");
        // An older number (none yet below 1: 0 stands for it) is raised.
        std::fs::write(&format, "0").unwrap();
        drop(data.lock().unwrap());
        assert_eq!(std::fs::read_to_string(&format).unwrap(), "1\n");
        assert!(data.newer_format().is_none());
        for (text, says) in [
            ("2\n", "data format 2"),
            ("4294967295", "written by a newer build"),
            ("99999999999999999999999", "written by a newer build"),
            ("two", "does not hold a data format number"),
            ("+2", "does not hold a data format number"),
            ("02", "data format 2"),
            ("", "does not hold a data format number"),
        ] {
            std::fs::write(&format, text).unwrap();
            let e = format!("{:#}", data.lock().unwrap_err());
            assert!(e.contains(says), "{text:?}: {e}");
            assert!(data.try_lock().is_err(), "{text:?}");
            assert_eq!(std::fs::read_to_string(&format).unwrap(), text);
            // The read-only commands are warned of a newer build's number, not of the rest.
            let newer = !text.trim().is_empty() && text.trim().bytes().all(|b| b.is_ascii_digit());
            assert_eq!(data.newer_format().is_some(), newer, "{text:?}");
        }
    }

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
