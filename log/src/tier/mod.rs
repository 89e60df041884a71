//! Tiered storage: sealed segments (with their index sidecars) are uploaded to an object store
//! (S3-compatible, or a local directory), recorded in a manifest, and deleted locally once
//! uploaded and no longer needed by the local retention. Reads of offsets that are no longer
//! local fetch fixed-size blocks with ranged GETs through a foyer `HybridCache`.
//!
//! Layout under the prefix: `segments/{base:020}.{writer:016x}.log|.index|.timeindex` (the
//! manifest names each segment's objects: [`manifest::RemoteSegment::object`]; entries from
//! before writer-unique keys name `segments/{base:020}.*`),
//! `manifest/{epoch:020}.json` (see [`manifest`]), and whatever the server stores beside them
//! (snapshots) through [`Tier::put_file`] / [`Tier::get_file`]. What no manifest needs any more
//! (an upload whose manifest write never came, old versions and snapshots) is judged by [`gc`]
//! for `tidings tier gc`.
//!
//! Guarantees:
//! - The object store never blocks appends: uploads run in the log's own background task, retried
//!   with exponential backoff and jitter; the lag is in [`TierStatus`].
//! - A local segment is deleted only after its upload was confirmed (size, and CRC when
//!   `verify_uploads`), recorded in a manifest version, and the retention no longer needs it.
//! - A cold read fails within `read_timeout` with [`ColdStorageUnavailable`] when the store is
//!   down; it never hangs. Every cached block carries a CRC: a damaged entry is dropped and
//!   fetched again, never served. Batches read from cold segments are CRC-checked like local ones.
//! - A store that does not hold the offsets before the log directory's oldest segment is not
//!   this log's store: the claim refuses it before writing anything there
//!   ([`LogError::HistoryNotInStore`]), so a data directory pointed at another store never
//!   uploads its new segments where a restore from its own store would not find them. A
//!   store's history starts at its first segment; a store holding none is refused only by a
//!   directory that tiered before (its local manifest copy lists segments).
//! - One writer per prefix: each manifest version names its owner and its lease, and the
//!   owner's lease is renewed by its writes; a second server finding a live owner is refused
//!   ([`LogError::Fenced`]). A lease is live for the longer of the owner's and the claimer's,
//!   so servers with different `lease` settings never judge each other's lapsed early.
//! - No process overwrites an object another process uploaded: segment objects are keyed by
//!   the uploading process's incarnation, so a writer that lost the prefix and uploads before
//!   its manifest write is fenced only adds objects nobody lists. A cold read resolves a
//!   segment through the manifest entry's exact key, never "whatever is at this base".

mod cold;
pub mod gc;
pub mod manifest;
mod store;
pub(crate) mod uploader;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use tokio_util::task::TaskTracker;

pub use self::cold::ColdStorageUnavailable;
pub(crate) use self::cold::TierVfs;
use self::manifest::Manifest;
pub(crate) use self::store::{Claim, LocalStart, Tiered};
use crate::error::{LogError, Result};

/// How a log tiers to an object store.
#[derive(Clone)]
pub struct TierOptions {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) prefix: ObjectPath,
    pub(crate) display: String,
    pub(crate) owner_id: String,
    pub(crate) local_retention_bytes: u64,
    pub(crate) local_retention_age: Option<Duration>,
    pub(crate) block_bytes: usize,
    pub(crate) cache_dir: PathBuf,
    pub(crate) cache_memory_bytes: usize,
    pub(crate) cache_disk_bytes: usize,
    pub(crate) read_timeout: Duration,
    pub(crate) upload_interval: Duration,
    pub(crate) lease: Duration,
    pub(crate) verify_uploads: bool,
    pub(crate) prefetch_blocks: usize,
}

impl std::fmt::Debug for TierOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierOptions")
            .field("store", &self.display)
            .field("owner_id", &self.owner_id)
            .field("local_retention_bytes", &self.local_retention_bytes)
            .finish_non_exhaustive()
    }
}

impl TierOptions {
    /// Tiering into `store` under `prefix`, as node `owner_id`, with the block cache in
    /// `cache_dir`. `display` names the store in messages (e.g. `s3://bucket/prefix`).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        display: impl Into<String>,
        owner_id: impl Into<String>,
        cache_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            store,
            prefix: ObjectPath::from(prefix.trim_matches('/')),
            display: display.into(),
            owner_id: owner_id.into(),
            local_retention_bytes: 1 << 30,
            local_retention_age: None,
            block_bytes: 1 << 20,
            cache_dir: cache_dir.into(),
            cache_memory_bytes: 64 << 20,
            cache_disk_bytes: 1 << 30,
            read_timeout: Duration::from_secs(10),
            upload_interval: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            verify_uploads: true,
            prefetch_blocks: 4,
        }
    }
    /// Sealed bytes kept locally once uploaded (0: none). Default: 1 GiB.
    pub fn with_local_retention_bytes(mut self, bytes: u64) -> Self {
        self.local_retention_bytes = bytes;
        self
    }
    /// Uploaded segments older than this are deleted locally whatever their size. Default: none.
    pub fn with_local_retention_age(mut self, age: Option<Duration>) -> Self {
        self.local_retention_age = age;
        self
    }
    /// Size of the blocks cold reads fetch. Default: 1 MiB.
    pub fn with_block_bytes(mut self, bytes: usize) -> Self {
        self.block_bytes = bytes.clamp(4096, 8 << 20);
        self
    }
    /// Memory and disk of the block cache. Default: 64 MiB and 1 GiB.
    pub fn with_cache_bytes(mut self, memory: usize, disk: usize) -> Self {
        self.cache_memory_bytes = memory;
        self.cache_disk_bytes = disk;
        self
    }
    /// Longest a cold read may take before it fails. Default: 10 s.
    pub fn with_read_timeout(mut self, t: Duration) -> Self {
        self.read_timeout = t;
        self
    }
    /// How often the uploader looks for sealed segments (it also wakes on every roll).
    /// Default: 5 s.
    pub fn with_upload_interval(mut self, t: Duration) -> Self {
        self.upload_interval = t;
        self
    }
    /// How long an owner that stopped writing keeps the prefix. Recorded in each manifest
    /// version it writes: a claimer waits out the longer of that and its own. Default: 30 s.
    pub fn with_lease(mut self, t: Duration) -> Self {
        self.lease = t;
        self
    }
    /// Read each upload back and compare its CRC before trusting it. Default: true.
    pub fn with_verify_uploads(mut self, v: bool) -> Self {
        self.verify_uploads = v;
        self
    }

    /// The lease in ms: recorded in every manifest version this process writes, and compared
    /// with heartbeat ages.
    pub(crate) fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Counters of the tier.
#[derive(Debug, Default)]
pub(crate) struct TierCounters {
    pub(crate) uploads: AtomicU64,
    pub(crate) upload_bytes: AtomicU64,
    pub(crate) upload_failures: AtomicU64,
    pub(crate) manifest_writes: AtomicU64,
    pub(crate) gets: AtomicU64,
    pub(crate) get_bytes: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) corrupt_cache_entries: AtomicU64,
    pub(crate) damaged_reads: AtomicU64,
    pub(crate) local_deletes: AtomicU64,
}

/// What the tier holds and how far behind it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TierStatus {
    /// The store, e.g. `s3://bucket/prefix`.
    pub store: String,
    /// Segments in the object store.
    pub remote_segments: usize,
    /// Their bytes.
    pub remote_bytes: u64,
    /// Where the store's history starts: the start a removal (the retention) set, else its
    /// first segment's base; `null` while it holds none that nothing was removed from.
    pub remote_start: Option<u64>,
    /// One past the last offset in the object store.
    pub remote_end: u64,
    /// Sealed segments not yet uploaded (the lag).
    pub lag_segments: usize,
    /// Their bytes.
    pub lag_bytes: u64,
    /// The latest manifest version.
    pub epoch: u64,
    /// This log holds the prefix: false until its claim is taken (while the store is out of
    /// reach at open, or while it waits out another process's lease under this node id).
    pub claimed: bool,
    /// Another server took the prefix over: uploads stopped, and the log takes no appends
    /// ([`crate::LogError::NotTheStoresHistory`]).
    pub fenced: bool,
    /// The object store holds another history of this log than the local segments (a segment
    /// with a local segment's base but other offsets or size, or one overlapping them), or,
    /// found at a claim after an open the store did not answer, lacks offsets from before the
    /// oldest local segment ([`LogError::HistoryNotInStore`]): uploads and local deletion
    /// stopped until the log is reopened.
    pub diverged: bool,
    /// Segment uploads since open.
    pub uploads: u64,
    /// Failed upload attempts since open.
    pub upload_failures: u64,
    /// Ranged GETs since open.
    pub gets: u64,
    /// Block cache hits since open.
    pub cache_hits: u64,
    /// Damaged cache entries dropped and refetched since open.
    pub corrupt_cache_entries: u64,
    /// Reads of a segment in the store whose batches failed their checks since open: its
    /// cached blocks were dropped and it was read again from the store (damage on the way, or
    /// in the object).
    pub damaged_reads: u64,
}

/// A random number for this opening of the tier (std's hasher keys come from the OS's
/// randomness; the process id and the time are mixed in as well).
fn incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Claims the prefix for this node (used by `Log::open`); `local` is where the log directory's
/// segments start, `None` when it holds no record ([`store::claim`]).
pub(crate) async fn store_claim(
    tier: &Tier,
    local: Option<LocalStart>,
    own_history: Option<u64>,
) -> Result<store::Claim> {
    store::claim(&tier.inner, local, own_history).await
}

/// Gives up the prefix a claim took when the log then failed to open ([`store::release`]).
pub(crate) async fn store_release(tier: &Tier) -> Result<()> {
    store::release(&tier.inner).await
}

/// A log's link to its object store. Cheap to clone.
#[derive(Clone)]
pub struct Tier {
    pub(crate) inner: Arc<TierInner>,
}

pub(crate) struct TierInner {
    pub(crate) opts: TierOptions,
    pub(crate) cache: foyer::HybridCache<String, bytes::Bytes>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) tracker: TaskTracker,
    pub(crate) manifest: arc_swap::ArcSwap<Manifest>,
    /// See [`TierStatus::claimed`].
    pub(crate) claimed: AtomicBool,
    pub(crate) fenced: AtomicBool,
    /// See [`TierStatus::diverged`]; never cleared while the log is open.
    pub(crate) diverged: AtomicBool,
    /// The divergence the open found in the offsets themselves ([`Tier::other_history`]);
    /// never cleared while the log is open.
    pub(crate) other_history: AtomicBool,
    /// The store holds another log's history ([`LogError::StoreHoldsAnotherLog`], found at a
    /// claim after an open the store did not answer): none of its objects is read — the
    /// remote segments known from the directory's copy are not there (they read as missing:
    /// damage) — and cold reads are an outage until the log is reopened with its own store.
    pub(crate) foreign: AtomicBool,
    /// The manifest epoch at which another process under this node id was first seen holding
    /// a live lease, while this one waits to claim ([`store::claim`]).
    pub(crate) predecessor: std::sync::Mutex<Option<u64>>,
    /// This process's mark on the manifest versions it writes ([`Owner::incarnation`]).
    ///
    /// [`Owner::incarnation`]: manifest::Owner::incarnation
    pub(crate) incarnation: u64,
    pub(crate) counters: TierCounters,
    /// Rewrites uploaded by this process so far ([`manifest::RemoteSegment::rewrite_stem`]).
    pub(crate) rewrites: AtomicU64,
    pub(crate) lag: std::sync::Mutex<(usize, u64)>,
    /// Blocks being fetched (cache key → the fetch's outcome): a reader and the prefetches
    /// of the blocks before it wait for one GET instead of each making its own.
    pub(crate) fetching: cold::InFlight,
    /// Entries a newer manifest version replaced with other objects at the same offsets (a
    /// rewrite's), newest last, at most [`RETIRED`]: a reader still holding the segment value
    /// made for one reads its objects until they are deleted ([`cold::TierVfs`]).
    pub(crate) retired: std::sync::Mutex<Vec<manifest::RemoteSegment>>,
    /// Segment objects found damaged as the store serves them (a read from the store failed its
    /// checks too), with when: a read meeting the damage does not drop their cached blocks
    /// again for [`cold::DAMAGED_FOR`] ([`TierInner::forget_damaged`]).
    pub(crate) damaged: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// The replaced entries [`TierInner::retired`] remembers.
const RETIRED: usize = 64;

impl TierInner {
    /// Makes `m` the manifest this process knows, remembering the entries it replaced with
    /// other objects ([`TierInner::retired`]).
    pub(crate) fn set_manifest(&self, m: Manifest) {
        let old = self.manifest.swap(Arc::new(m));
        let now = self.manifest.load();
        // One lookup per entry (a manifest of 10,000 segments is written every lease renewal).
        let stems: std::collections::HashMap<(u64, u64), String> = now
            .segments
            .iter()
            .map(|n| ((n.base, n.end), n.stem()))
            .collect();
        let replaced = old.segments.iter().filter(|o| {
            stems
                .get(&(o.base, o.end))
                .is_some_and(|stem| *stem != o.stem())
        });
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        for o in replaced {
            if !retired.iter().any(|r| r.stem() == o.stem()) {
                retired.push(o.clone());
            }
        }
        let over = retired.len().saturating_sub(RETIRED);
        retired.drain(..over);
    }
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("store", &self.inner.opts.display)
            .finish()
    }
}

impl Tier {
    /// Opens the block cache. Must be called inside a tokio runtime (the one cold reads and
    /// uploads will use).
    pub async fn open(opts: TierOptions) -> Result<Tier> {
        let cache = cold::open_cache(&opts).await?;
        Ok(Tier {
            inner: Arc::new(TierInner {
                cache,
                runtime: tokio::runtime::Handle::current(),
                tracker: TaskTracker::new(),
                fetching: cold::InFlight::default(),
                retired: std::sync::Mutex::new(Vec::new()),
                damaged: std::sync::Mutex::new(std::collections::HashMap::new()),
                manifest: arc_swap::ArcSwap::from_pointee(Manifest::new(&opts.owner_id, 0)),
                claimed: AtomicBool::new(false),
                fenced: AtomicBool::new(false),
                predecessor: std::sync::Mutex::new(None),
                diverged: AtomicBool::new(false),
                other_history: AtomicBool::new(false),
                foreign: AtomicBool::new(false),
                incarnation: incarnation(),
                counters: TierCounters::default(),
                rewrites: AtomicU64::new(0),
                lag: std::sync::Mutex::new((0, 0)),
                opts,
            }),
        })
    }

    /// The store, as shown in messages.
    pub fn display(&self) -> &str {
        &self.inner.opts.display
    }

    /// Whether this log holds the prefix now ([`TierStatus::claimed`], without the rest of the
    /// status).
    pub fn is_claimed(&self) -> bool {
        self.inner.claimed.load(Ordering::Relaxed)
    }

    /// The manifest version last read or written.
    pub fn manifest(&self) -> Arc<Manifest> {
        self.inner.manifest.load_full()
    }

    /// Whether the open found the store's history going on over or past this log's offsets (a
    /// store segment at the active segment's base, one of another size at a sealed segment's
    /// base, one overlapping the local segments: a fail-back to an old data directory after
    /// another node wrote on). One of the ways the tier is [`TierStatus::diverged`] — not a
    /// local segment found to hold other bytes than its uploaded copy (damage, as likely) nor
    /// a store lacking older offsets: those stop tiering, while this one's next appends would
    /// take offsets the store's history has given other records, so the log refuses them.
    pub fn other_history(&self) -> bool {
        self.inner.other_history.load(Ordering::Relaxed)
    }

    /// [`TierStatus::fenced`], without the rest of the status.
    pub fn fenced(&self) -> bool {
        self.inner.fenced.load(Ordering::Relaxed)
    }

    /// The current status.
    pub fn status(&self) -> TierStatus {
        let m = self.manifest();
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (lag_segments, lag_bytes) = *self.inner.lag.lock().unwrap_or_else(|p| p.into_inner());
        TierStatus {
            store: self.inner.opts.display.clone(),
            remote_segments: m.segments.len(),
            remote_bytes: m.segments.iter().map(|s| s.bytes).sum(),
            remote_start: m.history_start(),
            remote_end: m.end(),
            lag_segments,
            lag_bytes,
            epoch: m.epoch,
            claimed: self.inner.claimed.load(Ordering::Relaxed),
            fenced: self.inner.fenced.load(Ordering::Relaxed),
            diverged: self.inner.diverged.load(Ordering::Relaxed),
            uploads: l(&c.uploads),
            upload_failures: l(&c.upload_failures),
            gets: l(&c.gets),
            cache_hits: l(&c.cache_hits),
            corrupt_cache_entries: l(&c.corrupt_cache_entries),
            damaged_reads: l(&c.damaged_reads),
        }
    }

    /// The latest manifest version in the object store (not the one this log last wrote).
    pub async fn remote_manifest(&self) -> Result<Option<Manifest>> {
        store::latest_manifest(&self.inner).await
    }

    /// Uploads a local file to `key` (below the prefix), e.g. a snapshot.
    pub async fn put_file(&self, key: &str, local: &std::path::Path) -> Result<u64> {
        store::put_file(&self.inner, key, local).await
    }

    /// Downloads `key` (below the prefix) into a local file (atomically); `false` if absent.
    pub async fn get_file(&self, key: &str, local: &std::path::Path) -> Result<bool> {
        store::get_file(&self.inner, key, local).await
    }

    /// The keys below `dir` (below the prefix), e.g. the snapshots.
    pub async fn list(&self, dir: &str) -> Result<Vec<String>> {
        store::list(&self.inner, dir).await
    }

    /// Deletes `key` (below the prefix).
    pub async fn delete(&self, key: &str) -> Result<()> {
        store::delete(&self.inner, key).await
    }

    /// Stops background fetches and closes the block cache.
    pub async fn close(&self) -> Result<()> {
        self.close_within(None).await
    }

    /// [`Tier::close`], no longer waiting for background fetches at `by` (each ends within
    /// the read timeout, which may be longer than a shutdown has left).
    pub(crate) async fn close_within(&self, by: Option<tokio::time::Instant>) -> Result<()> {
        self.inner.tracker.close();
        match by {
            None => self.inner.tracker.wait().await,
            Some(by) => {
                if tokio::time::timeout_at(by, self.inner.tracker.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        store = %self.inner.opts.display,
                        "cold-read prefetches still waiting for the object store at the close's deadline; not waiting for them"
                    );
                }
            }
        }
        self.inner
            .cache
            .close()
            .await
            .map_err(|e| LogError::Tier(format!("closing the block cache: {e}")))
    }
}
