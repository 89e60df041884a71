//! Cold reads: segments that are only in the object store are read in fixed-size blocks, each
//! fetched with one ranged GET and kept in a foyer `HybridCache` (memory + disk). A cached block
//! carries its CRC-32: one that does not match is dropped and fetched again, never served.
//! Sequential reads prefetch the next blocks.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use foyer::{BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder};
use object_store::ObjectStoreExt;
use tokio::sync::OnceCell;

use super::{TierInner, TierOptions};
use crate::error::{LogError, Result};
use crate::vfs::{Vfs, VfsFile, VfsLock};

/// A cold read could not be served within the read timeout (the store is down or slow).
#[derive(Debug, thiserror::Error)]
#[error("cold storage unavailable: {0}")]
pub struct ColdStorageUnavailable(pub String);

/// Cache keys are `{KEY_VERSION}:{block_bytes}:{object}:{index}`: the format version, so a
/// format change never decodes old entries, and the block size, so a cache that outlives a
/// restart under another `block_bytes` never serves a block cut at the old size. The `b1` keys
/// had no size: a block of the old size was found at the same index, counted damaged and
/// refetched when its length differed, and served as this block when it did not (every read
/// of it then failed its checksum).
const KEY_VERSION: &str = "b2";

pub(crate) async fn open_cache(opts: &TierOptions) -> Result<HybridCache<String, Bytes>> {
    let err = |e: foyer::Error| {
        LogError::Tier(format!(
            "opening the block cache in {}: {e}",
            opts.cache_dir.display()
        ))
    };
    // Made here, not by foyer: its builder unwraps the creation, and panicked when a file stood
    // at the path.
    std::fs::create_dir_all(&opts.cache_dir).map_err(|e| {
        LogError::Tier(format!(
            "creating the block cache's directory {}: {e}",
            opts.cache_dir.display()
        ))
    })?;
    let disk = opts.cache_disk_bytes.max(16 << 20);
    // Engine blocks: an eighth of the disk, at most 16 MiB, but at least two cache blocks plus
    // headers — past 16 MiB for blocks near their 8 MiB maximum (a `clamp` whose lower bound
    // passed its upper one panicked there).
    let engine_block = ((disk / 8) & !4095)
        .min(16 << 20)
        .max(2 * opts.block_bytes + 8192);
    // The files a larger cache of an earlier start left, which foyer neither opens nor removes.
    crate::disk_cache::remove_files_from(
        &opts.cache_dir,
        crate::disk_cache::files_used(disk, engine_block),
    )
    .map_err(|e| LogError::Tier(format!("trimming the block cache: {e}")))?;
    let device = FsDeviceBuilder::new(&opts.cache_dir)
        .with_capacity(disk)
        .build()
        .map_err(err)?;
    HybridCacheBuilder::new()
        .with_name("cold-blocks")
        .memory(opts.cache_memory_bytes.max(1 << 20))
        .with_weighter(|k: &String, v: &Bytes| k.len() + v.len() + 64)
        .storage()
        .with_engine_config(BlockEngineConfig::new(device).with_block_size(engine_block))
        .build()
        .await
        .map_err(err)
}

/// Why a block could not be fetched.
#[derive(Debug, Clone)]
enum FetchError {
    /// The store did not answer in time, or refused (an outage, credentials): reading again
    /// later may succeed ([`ColdStorageUnavailable`]).
    Unavailable(String),
    /// The store answered that the object is not there, or holds fewer bytes than its
    /// manifest entry: the segment is damaged in the store, as a local segment with a missing
    /// or cut file is. Not an outage: reading again does not mend it (until 2026-12-03 it was
    /// one, and a reader such as the purge of recalled messages waited for it for good).
    Damaged(String),
}

/// How long an object the store served damaged is not fetched again for a read that meets the
/// damage ([`TierInner::damaged_in_store`]).
pub(crate) const DAMAGED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

fn fetch_error(e: FetchError) -> io::Error {
    match e {
        FetchError::Unavailable(what) => io::Error::other(ColdStorageUnavailable(what)),
        FetchError::Damaged(what) => io::Error::new(io::ErrorKind::InvalidData, what),
    }
}

impl TierInner {
    fn cache_key(&self, rel: &str, idx: u64) -> String {
        format!("{KEY_VERSION}:{}:{rel}:{idx}", self.opts.block_bytes)
    }

    /// Drops every cached block of object `rel` (`len` bytes) at the current block size: its
    /// bytes are not to stay on this disk (a rewrite replaced the object: the purge). The
    /// disk cache frees the entries; their bytes stay in its device file until overwritten.
    pub(crate) fn forget_object(&self, rel: &str, len: u64) {
        let bs = self.opts.block_bytes as u64;
        for idx in 0..len.div_ceil(bs) {
            self.cache.remove(&self.cache_key(rel, idx));
        }
    }

    /// Drops the cached blocks of the segment object behind `path` (a remote segment's file
    /// name, as [`TierVfs`] opens it) after its batches failed their checks, and counts the
    /// damaged read: a block damaged on its way from the store (a GET's body) passes the
    /// cache's own CRC, which is taken as it is cached, and was served from the cache — across
    /// restarts, from its disk — for good, the object intact. Whether there was such an object.
    ///
    /// Not for an object the store itself served damaged within [`DAMAGED_FOR`]
    /// ([`TierInner::damaged_in_store`]): its cached blocks are what the store holds, and every
    /// read meeting the damage fetched the whole object again, twice.
    pub(crate) fn forget_damaged(&self, path: &Path) -> bool {
        let Some((rel, len)) = self.object_of(path) else {
            return false;
        };
        self.counters.damaged_reads.fetch_add(1, Ordering::Relaxed);
        {
            let mut damaged = self.damaged.lock().unwrap_or_else(|p| p.into_inner());
            damaged.retain(|_, at| at.elapsed() < DAMAGED_FOR);
            if damaged.contains_key(&rel) {
                return false;
            }
        }
        tracing::warn!(
            object = rel,
            "a cold read failed its checks; dropping the object's cached blocks, to read them again from the store"
        );
        self.forget_object(&rel, len);
        true
    }

    /// A read of the object behind `path` from the store failed its checks too: the object is
    /// damaged as the store serves it. Its blocks are dropped once more (a good copy put back
    /// in the store is read at the next read), and [`TierInner::forget_damaged`] leaves them
    /// for [`DAMAGED_FOR`].
    pub(crate) fn damaged_in_store(&self, path: &Path) {
        if let Some((rel, len)) = self.object_of(path) {
            self.forget_object(&rel, len);
            self.damaged
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(rel, std::time::Instant::now());
        }
    }

    /// The object behind `path` (`{stem}.{ext}`) and its length, when the manifest lists a
    /// segment under exactly that stem, or listed one a rewrite replaced since
    /// ([`TierInner::retired`]: a reader holding the segment value made for it reads on until
    /// its objects are deleted; until 2026-12-03 it met "not found" at once): never another
    /// object at the same base.
    fn object_of(&self, path: &Path) -> Option<(String, u64)> {
        let (base, stem, ext) = split_name(path)?;
        let m = self.manifest.load();
        let current = m
            .segments
            .iter()
            .find(|s| s.base == base && s.stem() == stem);
        let retired;
        let s = match current {
            Some(s) => s,
            None => {
                retired = self
                    .retired
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|s| s.base == base && s.stem() == stem)
                    .cloned()?;
                &retired
            }
        };
        let len = match ext {
            "log" => s.bytes,
            "index" => s.index_bytes,
            "timeindex" => s.time_bytes,
            _ => return None,
        };
        Some((s.key(ext), len))
    }

    /// Block `idx` of object `rel` (`len` bytes long), from the cache or the store.
    pub(crate) async fn block(&self, rel: &str, idx: u64, len: u64) -> io::Result<Bytes> {
        if self.foreign.load(Ordering::Relaxed) {
            return Err(fetch_error(FetchError::Unavailable(format!(
                "reading {rel}: the object store {} holds another log's history; this log's \
                 objects are not there",
                self.opts.display
            ))));
        }
        let bs = self.opts.block_bytes as u64;
        let start = idx * bs;
        let end = (start + bs).min(len);
        if start >= end {
            return Ok(Bytes::new());
        }
        let ckey = self.cache_key(rel, idx);
        // A read error from the cache (such as an undecodable entry) is a miss.
        if let Ok(Some(entry)) = self.cache.get(&ckey).await {
            let v = entry.value();
            if v.len() >= 4 {
                let (data, crc) = v.split_at(v.len() - 4);
                let mut c = [0u8; 4];
                c.copy_from_slice(crc);
                // An entry read back from the disk cache is checked against its CRC; one held
                // in memory is the block as it was fetched (and checked when it came from
                // disk), so a memory hit costs no pass over the block.
                let from_disk = entry.source() == foyer::Source::Disk;
                if data.len() as u64 == end - start
                    && (!from_disk || crc32fast::hash(data) == u32::from_le_bytes(c))
                {
                    self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(v.slice(..v.len() - 4));
                }
            }
            self.counters
                .corrupt_cache_entries
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                object = rel,
                block = idx,
                "damaged block in the cold-read cache; fetching it again"
            );
            self.cache.remove(&ckey);
        }
        // One fetch per block at a time: a caller arriving while it runs waits for its
        // outcome, a failure too (each waiter retrying in turn would wait `read_timeout` once
        // per waiter before the last one's answer); the next caller after it tries again.
        let cell = self.fetching.cell(&ckey);
        // Forgotten however this ends (a caller dropped mid-fetch too: the next waiter then
        // fetches).
        let _done = Done(&self.fetching, &ckey, &cell);
        let shared = cell
            .get_or_init(|| self.fetch(rel, ckey.clone(), start, end))
            .await;
        match shared {
            Ok(b) if b.len() as u64 == end - start => Ok(b.clone()),
            // A reader of another object under the same key (keys from before writer-unique
            // object names) with another length: its own fetch.
            Ok(_) => self
                .fetch(rel, ckey.clone(), start, end)
                .await
                .map_err(fetch_error),
            Err(e) => Err(fetch_error(e.clone())),
        }
    }

    /// GETs bytes `[start, end)` of object `rel` and caches them (with a CRC) under `ckey`;
    /// a failure is what [`ColdStorageUnavailable`] will say.
    async fn fetch(&self, rel: &str, ckey: String, start: u64, end: u64) -> Shared {
        // Fetched (and cached in memory) by another caller between this one's cache miss and
        // its turn here.
        if let Some(entry) = self.cache.memory().get(&ckey) {
            let v = entry.value();
            if v.len() as u64 == end - start + 4 {
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(v.slice(..v.len() - 4));
            }
        }
        let path = super::store::key(self, rel);
        let got = tokio::time::timeout(
            self.opts.read_timeout,
            self.opts.store.get_range(&path, start..end),
        )
        .await;
        let data = match got {
            Ok(Ok(d)) => d,
            Ok(Err(e @ object_store::Error::NotFound { .. })) => {
                return Err(FetchError::Damaged(format!(
                    "reading {path} [{start}, {end}): the object store does not hold it: {e}"
                )));
            }
            Ok(Err(e)) => {
                // A range past the object's end (S3 answers 416) is an object shorter than its
                // manifest entry: damage, as a short answer is below, not an outage to wait out
                // (it was one until 2026-12-03). Told by the object's size, whatever the error.
                let head =
                    tokio::time::timeout(self.opts.read_timeout, self.opts.store.head(&path));
                if let Ok(Ok(meta)) = head.await
                    && meta.size < end
                {
                    return Err(FetchError::Damaged(format!(
                        "reading {path} [{start}, {end}): the object holds {} bytes (shorter than its manifest entry says): {e}",
                        meta.size
                    )));
                }
                return Err(FetchError::Unavailable(format!(
                    "reading {path} [{start}, {end}): {e}"
                )));
            }
            Err(_) => {
                return Err(FetchError::Unavailable(format!(
                    "reading {path} [{start}, {end}): no answer within {:?}",
                    self.opts.read_timeout
                )));
            }
        };
        if data.len() as u64 != end - start {
            return Err(FetchError::Damaged(format!(
                "reading {path} [{start}, {end}): got {} bytes (the object is shorter than its manifest entry says)",
                data.len()
            )));
        }
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.counters
            .get_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut v = BytesMut::with_capacity(data.len() + 4);
        v.extend_from_slice(&data);
        v.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
        self.cache.insert(ckey, v.freeze());
        Ok(data)
    }
}

/// A fetch's outcome, as every caller waiting for it gets it.
type Shared = std::result::Result<Bytes, FetchError>;

/// Fetches in flight, by cache key.
#[derive(Debug, Default)]
pub(crate) struct InFlight(Mutex<HashMap<String, Arc<OnceCell<Shared>>>>);

impl InFlight {
    /// The fetch of `key` in flight, or a new one.
    fn cell(&self, key: &str) -> Arc<OnceCell<Shared>> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(key) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(OnceCell::new());
                m.insert(key.to_owned(), c.clone());
                c
            }
        }
    }

    /// Forgets `cell` once its fetch has an outcome (the block is in the cache by then; a
    /// failed one is tried again by whoever asks next).
    fn done(&self, key: &str, cell: &Arc<OnceCell<Shared>>) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(key).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            m.remove(key);
        }
    }
}

struct Done<'a>(&'a InFlight, &'a str, &'a Arc<OnceCell<Shared>>);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.done(self.1, self.2);
    }
}

/// A read-only object in the store, read through the block cache.
#[derive(Debug)]
pub(crate) struct RemoteFile {
    inner: Arc<TierInner>,
    rel: String,
    len: u64,
    last_block: AtomicU64,
}

impl std::fmt::Debug for TierInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierInner")
            .field("store", &self.opts.display)
            .finish()
    }
}

impl RemoteFile {
    fn prefetch(&self, after: u64) {
        let bs = self.inner.opts.block_bytes as u64;
        for k in 1..=self.inner.opts.prefetch_blocks as u64 {
            let idx = after + k;
            if idx * bs >= self.len {
                break;
            }
            let (inner, rel, len) = (self.inner.clone(), self.rel.clone(), self.len);
            // Owned by the tier's tracker: waited for when the tier closes.
            self.inner.tracker.spawn_on(
                async move {
                    let _ = inner.block(&rel, idx, len).await;
                },
                &self.inner.runtime,
            );
        }
    }
}

impl VfsFile for RemoteFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        if pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let bs = self.inner.opts.block_bytes as u64;
        let want = (buf.len() as u64).min(self.len - pos) as usize;
        let mut done = 0usize;
        // One read timeout for the whole call, however many blocks it takes: a store that
        // answers each block just in time no longer holds a 16 MiB read for 16 timeouts (one
        // per 1 MiB block), nor a block fetched twice for two.
        let timeout = self.inner.opts.read_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        while done < want {
            let at = pos + done as u64;
            let idx = at / bs;
            // Cold reads run on blocking threads (never inside an async task).
            let block = self.inner.runtime.block_on(async {
                tokio::time::timeout_at(deadline, self.inner.block(&self.rel, idx, self.len))
                    .await
                    .unwrap_or_else(|_| {
                        Err(fetch_error(FetchError::Unavailable(format!(
                            "reading {} from byte {pos}: {done} of {want} bytes within {timeout:?}",
                            self.rel
                        ))))
                    })
            })?;
            let prev = self.last_block.swap(idx, Ordering::Relaxed);
            if prev.wrapping_add(1) == idx {
                self.prefetch(idx);
            }
            let off = (at - idx * bs) as usize;
            if off >= block.len() {
                break;
            }
            let n = (block.len() - off).min(want - done);
            buf[done..done + n].copy_from_slice(&block[off..off + n]);
            done += n;
        }
        Ok(done)
    }

    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a tiered segment is read-only",
        ))
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a tiered segment is read-only",
        ))
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The segment files in the object store, seen as a read-only file system: a file name
/// (`{stem}.log|.index|.timeindex`, the stem of a manifest entry: [`RemoteSegment::stem`])
/// opens that entry's object; a name whose stem is not the entry's at its base opens nothing.
///
/// [`RemoteSegment::stem`]: super::manifest::RemoteSegment::stem
///
/// The index files of an uploaded segment stay on local disk (they are about 0.6% of its size)
/// when the segment file itself is deleted, and are read from there when present: a cold read
/// then costs the ranged GETs of its data blocks only, not two more for the indexes.
#[derive(Debug, Clone)]
pub(crate) struct TierVfs {
    pub(crate) inner: Arc<TierInner>,
    /// The log directory, where local index files may be.
    pub(crate) local_dir: Option<std::path::PathBuf>,
}

impl TierVfs {
    /// The local copy of an index file (named `{base:020}.index|.timeindex` in the log
    /// directory, whatever the object's name), when there is one.
    fn local_index(&self, path: &Path) -> Option<std::path::PathBuf> {
        let (base, _, ext) = split_name(path)?;
        if ext != "index" && ext != "timeindex" {
            return None;
        }
        let local = self.local_dir.as_ref()?.join(format!("{base:020}.{ext}"));
        local.is_file().then_some(local)
    }

    /// [`TierInner::object_of`].
    fn lookup(&self, path: &Path) -> Option<(String, u64)> {
        self.inner.object_of(path)
    }

    /// The directory remote segments are shown in (their "paths" in messages).
    pub(crate) fn display_dir(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!(
            "{}/segments",
            self.inner.opts.display.trim_end_matches('/')
        ))
    }
}

/// `{base:020}[.{writer}].{ext}` → (base, stem, ext).
fn split_name(path: &Path) -> Option<(u64, &str, &str)> {
    let name = path.file_name()?.to_str()?;
    let (stem, ext) = name.rsplit_once('.')?;
    let digits = stem.get(..20)?;
    if !digits.bytes().all(|b| b.is_ascii_digit())
        || !matches!(stem.as_bytes().get(20), None | Some(b'.'))
    {
        return None;
    }
    Some((digits.parse().ok()?, stem, ext))
}

fn read_only() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "tiered segments are read-only")
}

impl Vfs for TierVfs {
    fn create_dir_all(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
    fn rename(&self, _: &Path, _: &Path) -> io::Result<()> {
        Err(read_only())
    }
    fn list(&self, _: &Path) -> io::Result<Vec<String>> {
        Err(read_only())
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        if let Some(local) = self.local_index(path) {
            return crate::vfs::StdFs.open_read(&local);
        }
        let (rel, len) = self.lookup(path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not in the manifest", path.display()),
            )
        })?;
        Ok(Arc::new(RemoteFile {
            inner: self.inner.clone(),
            rel,
            len,
            last_block: AtomicU64::new(u64::MAX - 1),
        }))
    }
    fn open_write(&self, _: &Path) -> io::Result<Arc<dyn VfsFile>> {
        Err(read_only())
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        Ok(self.lookup(path).is_some())
    }
    fn remove(&self, _: &Path) -> io::Result<()> {
        Err(read_only())
    }
    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
    fn try_lock(&self, _: &Path) -> io::Result<Box<dyn VfsLock>> {
        Err(read_only())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::local::LocalFileSystem;
    use object_store::{ObjectStoreExt, PutPayload};

    use crate::tier::{Tier, TierOptions};

    /// A local-directory store holding `p/obj`: 10,000 bytes, returned with it.
    async fn store_with_object() -> (tempfile::TempDir, Arc<LocalFileSystem>, Vec<u8>) {
        store_with(10_000).await
    }

    /// A local-directory store holding `p/obj`: `len` bytes, returned with it.
    async fn store_with(len: u32) -> (tempfile::TempDir, Arc<LocalFileSystem>, Vec<u8>) {
        let bucket = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalFileSystem::new_with_prefix(bucket.path()).unwrap());
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        store
            .put(&"p/obj".into(), PutPayload::from(data.clone()))
            .await
            .unwrap();
        (bucket, store, data)
    }

    /// A tier on `store` with its block cache in `cache`.
    async fn tier(
        store: &Arc<LocalFileSystem>,
        cache: &std::path::Path,
        block_bytes: usize,
        disk_bytes: usize,
    ) -> Tier {
        Tier::open(
            TierOptions::new(store.clone(), "p", "test://p", "n", cache)
                .with_block_bytes(block_bytes)
                .with_cache_bytes(1 << 20, disk_bytes),
        )
        .await
        .unwrap()
    }

    /// The files in `dir`.
    fn files_in(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocks_are_fetched_once_then_served_from_the_cache() {
        let (_bucket, store, data) = store_with_object().await;
        let cache = tempfile::tempdir().unwrap();
        let t = Tier::open(
            TierOptions::new(store, "p", "test://p", "n", cache.path()).with_block_bytes(4096),
        )
        .await
        .unwrap();
        let inner = &t.inner;
        let b1 = inner.block("obj", 1, 10_000).await.unwrap();
        assert_eq!(&b1[..], &data[4096..8192]);
        assert_eq!(
            inner
                .counters
                .gets
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // A hit is served from memory without another GET. (Damaged entries read back from
        // the disk cache are covered by `a_damaged_disk_cache_is_refetched_not_served` in
        // tests/tier.rs, which damages the cache files on disk.)
        let again = inner.block("obj", 1, 10_000).await.unwrap();
        assert_eq!(&again[..], &data[4096..8192]);
        let c = &inner.counters;
        assert_eq!(c.gets.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(c.cache_hits.load(std::sync::atomic::Ordering::Relaxed), 1);
        // The last block is short; past the end is empty.
        assert_eq!(
            inner.block("obj", 2, 10_000).await.unwrap().len(),
            10_000 - 8192
        );
        assert!(inner.block("obj", 3, 10_000).await.unwrap().is_empty());
        t.close().await.unwrap();
    }

    /// A cache reopened under another `block_bytes` serves no block cut at the old size. Its
    /// keys had no size: block 1 of 8,192 bytes (`[8192, 16384)`) was found again as block 1
    /// of 11,808 (`[11808, 20000)`), as long, with a good CRC, and served; block 0 was counted
    /// a damaged entry. (A 20,000-byte object is one new block plus one old.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_block_size_serves_no_block_of_the_old_size() {
        use std::sync::atomic::Ordering::Relaxed;
        let (_bucket, store, data) = store_with(20_000).await;
        let cache = tempfile::tempdir().unwrap();
        let t = tier(&store, cache.path(), 8192, 1 << 30).await;
        for idx in 0..3u64 {
            let at = idx as usize * 8192;
            let b = t.inner.block("obj", idx, 20_000).await.unwrap();
            assert_eq!(&b[..], &data[at..(at + 8192).min(20_000)]);
        }
        t.close().await.unwrap(); // flushes the blocks to the disk cache
        let t = tier(&store, cache.path(), 20_000 - 8192, 1 << 30).await;
        let b0 = t.inner.block("obj", 0, 20_000).await.unwrap();
        assert_eq!(&b0[..], &data[..11_808]);
        let b1 = t.inner.block("obj", 1, 20_000).await.unwrap();
        assert_eq!(&b1[..], &data[11_808..], "not the old block 1");
        let c = &t.inner.counters;
        assert_eq!(c.corrupt_cache_entries.load(Relaxed), 0);
        assert_eq!(c.gets.load(Relaxed), 2, "both fetched");
        t.close().await.unwrap();
        // The disk cache kept the blocks of either size: back at 8,192, all served from it.
        let t = tier(&store, cache.path(), 8192, 1 << 30).await;
        for idx in 0..3u64 {
            let at = idx as usize * 8192;
            let b = t.inner.block("obj", idx, 20_000).await.unwrap();
            assert_eq!(&b[..], &data[at..(at + 8192).min(20_000)]);
        }
        let c = &t.inner.counters;
        assert_eq!((c.gets.load(Relaxed), c.cache_hits.load(Relaxed)), (0, 3));
        t.close().await.unwrap();
    }

    /// A cache reopened smaller keeps only the files it uses: 64 of 16 MiB for 1 GiB, then 8
    /// of 2 MiB for 16 MiB. foyer opens the first 8 and never removes the other 56, so the
    /// disk the larger cache took stayed taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_smaller_cache_leaves_no_files_behind() {
        let (_bucket, store, data) = store_with_object().await;
        let cache = tempfile::tempdir().unwrap();
        let t = tier(&store, cache.path(), 4096, 1 << 30).await;
        assert_eq!(files_in(cache.path()), 64);
        let b1 = t.inner.block("obj", 1, 10_000).await.unwrap();
        assert_eq!(&b1[..], &data[4096..8192]);
        t.close().await.unwrap();
        let t = tier(&store, cache.path(), 4096, 16 << 20).await;
        assert_eq!(files_in(cache.path()), 8);
        let b1 = t.inner.block("obj", 1, 10_000).await.unwrap();
        assert_eq!(&b1[..], &data[4096..8192]);
        t.close().await.unwrap();
    }

    /// Blocks of up to 8 MiB are taken; one above 8 MiB − 4 KiB panicked when the cache
    /// opened (its engine blocks' lower bound passed their 16 MiB upper one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_largest_blocks_are_served() {
        let (_bucket, store, data) = store_with_object().await;
        let cache = tempfile::tempdir().unwrap();
        let t = Tier::open(
            TierOptions::new(store, "p", "test://p", "n", cache.path())
                .with_block_bytes(16 << 20)
                .with_cache_bytes(1 << 20, 256 << 20),
        )
        .await
        .unwrap();
        assert_eq!(t.inner.opts.block_bytes, 8 << 20, "clamped to 8 MiB");
        let b0 = t.inner.block("obj", 0, 10_000).await.unwrap();
        assert_eq!(&b0[..], &data[..]);
        t.close().await.unwrap();
    }
}
