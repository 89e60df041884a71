//! The `Log` handle: open, append, read, roll, sync, close.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::acks::Acks;
use crate::batch::{self, HEADER_LEN, Record};
use crate::error::{LogError, Result};
use crate::metrics::{Counters, LogMetrics};
use crate::options::LogOptions;
use crate::recovery;
use crate::segment::{self, Budget, Segment};
use crate::tail::Tail;
use crate::vfs::StdFs;
use crate::writer::{Command, Writer, WriterParts};

/// What the writer has made readable: nothing at or past `next_offset` is ever returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// One past the last readable (acknowledged) offset.
    pub next_offset: u64,
    pub(crate) active_base: u64,
    /// Committed bytes in the active segment.
    pub(crate) active_len: u64,
}

/// The acknowledgement of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    /// Offset of the first record of the append.
    pub base_offset: u64,
    /// Records appended.
    pub count: u32,
    /// The batch timestamp the records were written with (ms since the Unix epoch).
    pub timestamp_ms: u64,
}

impl AppendAck {
    /// The offsets the append was given.
    pub fn offsets(&self) -> Range<u64> {
        self.base_offset..self.base_offset + u64::from(self.count)
    }
}

/// An append waiting in the writer's queue (from [`Log::enqueue`]).
#[derive(Debug)]
pub struct PendingAppend {
    rx: oneshot::Receiver<Result<AppendAck>>,
}

impl PendingAppend {
    /// Waits until the append is durable under the fsync policy.
    pub async fn wait(self) -> Result<AppendAck> {
        self.rx.await.map_err(|_| LogError::WriterGone)?
    }

    /// The acknowledgement if it has come, without waiting: `None` while the append is still
    /// in the writer's hands.
    pub fn try_wait(&mut self) -> Option<Result<AppendAck>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(LogError::WriterGone)),
        }
    }
}

/// A segment as listed by [`Log::segments`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// First offset.
    pub base_offset: u64,
    /// One past the last offset.
    pub end_offset: u64,
    /// Bytes of batches.
    pub bytes: u64,
    /// Whether the segment is sealed (no longer written to by appends; only
    /// [`Log::rewrite_sealed`] replaces it, whole and at the same length).
    pub sealed: bool,
    /// Whether its files are only in the object store.
    pub remote: bool,
    /// The segment file.
    pub path: PathBuf,
}

/// The result of checking every batch of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentCheck {
    /// Batches read and checked.
    pub batches: u64,
    /// Records in them.
    pub records: u64,
}

/// The first failure that stopped the log; later appends are refused with it.
#[derive(Debug, Default)]
pub(crate) struct PoisonSlot(ArcSwapOption<LogError>);

impl PoisonSlot {
    pub(crate) fn get(&self) -> Option<Arc<LogError>> {
        self.0.load_full()
    }
    /// Records the failure. Only the writer thread calls this, so check-then-store is safe;
    /// the first cause is kept because it is the one an operator needs.
    pub(crate) fn set(&self, err: LogError) {
        if self.0.load().is_none() {
            self.0.store(Some(Arc::new(err)));
        }
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    dir: PathBuf,
    opts: LogOptions,
    pub(crate) segments: Arc<ArcSwap<Vec<Arc<Segment>>>>,
    pub(crate) watermark: watch::Receiver<Watermark>,
    tx: mpsc::Sender<Command>,
    permits: Arc<Semaphore>,
    poison: Arc<PoisonSlot>,
    pub(crate) counters: Arc<Counters>,
    closed: AtomicBool,
    /// The writer thread; it owns the directory lock and releases it only once it has stopped
    /// writing (a log dropped without `close` stays locked until its writer has finished).
    writer: tokio::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The acknowledger task (`acks.rs`); it ends once the writer has dropped its sender.
    acker: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Read-only mode: no writer; [`Log::refresh`] publishes the watermark through this.
    read_only: Option<Mutex<Option<watch::Sender<Watermark>>>>,
    /// The tier uploader, when the log has a tier.
    uploader: Option<Mutex<Option<UploaderHandle>>>,
    rolled: Arc<tokio::sync::Notify>,
    /// See [`Log::opened_after_unsynced_writes`].
    after_unsynced: bool,
    /// Held by a rewrite of a sealed segment (`rewrite.rs`) and by a removal of the oldest
    /// segments (`retention.rs`) from before its checks until it ends, so that they run one at
    /// a time (a removal never unlinks a segment being rewritten), and by a close until it
    /// marks the log closed, so that none runs on after the directory lock is given up.
    pub(crate) rewrites: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct UploaderHandle {
    up: Arc<crate::tier::uploader::Uploader>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// An open commit log. Cheap to clone; all clones share one writer. Call [`Log::close`] before
/// dropping the last handle to sync and stop the writer deterministically.
#[derive(Debug, Clone)]
pub struct Log {
    pub(crate) shared: Arc<Shared>,
}

/// Whether the last writable open of the log in `dir` ran under `FsyncPolicy::Every` or `Never`
/// (as its `fsync-policy` file records it), read without opening the log: what
/// [`Log::opened_after_unsynced_writes`] will say, before an open records its own policy over
/// it. False when nothing usable is recorded (a new log, or one from before the file).
pub fn last_open_was_unsynced(dir: &Path) -> bool {
    recovery::recorded_unsynced_writes(&StdFs, dir)
}

impl Log {
    /// Opens (creating when missing) the log in `dir`, recovering the active segment's tail.
    ///
    /// With a tier (see [`LogOptions::with_tier`]): the prefix is claimed first (refused with
    /// [`LogError::Fenced`] while another server owns it, and with
    /// [`LogError::HistoryNotInStore`] when the store does not hold every offset from its
    /// first segment up to the directory's oldest one, or holds none while the directory
    /// tiered before: another store than the one it was tiered to); when the store cannot be
    /// reached, the log opens from its local manifest copy and claims later. Segments only in
    /// the store are read through the tier; an empty directory restores from the store, and
    /// so does an empty log (one segment, at 0, holding no record), its files removed. An open
    /// that fails after the claim gives the prefix up.
    pub async fn open(dir: impl AsRef<Path>, opts: LogOptions) -> Result<Log> {
        let dir = dir.as_ref().to_path_buf();
        // The directory lock comes first: a second process on this directory (the CLI while
        // the server runs) must fail before it claims the prefix, or its claim, made under
        // this directory's owner id, would look like a rival's to the running server. Under
        // it, with a tier, what the directory holds (`LocalLog`): the offsets before its
        // oldest segment are only in the store, and the claim refuses a store that does not
        // hold them (another store than this directory's).
        let (lock, local) = if opts.read_only {
            (None, LocalLog::untiered())
        } else {
            let (vfs, lock_dir, tiered) = (opts.vfs.clone(), dir.clone(), opts.tier.is_some());
            let (taken, local) = tokio::task::spawn_blocking(move || {
                let lock = lock_directory(vfs.as_ref(), &lock_dir)?;
                let local = if tiered {
                    LocalLog::read(vfs.as_ref(), &lock_dir)?
                } else {
                    LocalLog::untiered()
                };
                Ok::<_, LogError>((lock, local))
            })
            .await
            .map_err(|_| LogError::WriterGone)??;
            (Some(taken), local)
        };
        let first_local = local.start();
        let mut claimed = false;
        // A claim without an answer (a timeout, an error) may have landed all the same.
        let mut maybe_claimed = false;
        if let (Some(tier), false) = (&opts.tier, opts.read_only) {
            let claim = tokio::time::timeout(
                crate::tier::uploader::OPEN_TIMEOUT,
                crate::tier::store_claim(tier, first_local, local.own_history()),
            )
            .await
            .unwrap_or_else(|_| Err(LogError::Tier("no answer from the object store".into())));
            match claim {
                // The copy written at once: it carries the claimed version's history id (and
                // every upload the store names) before anything else can fail — the open, a
                // crash — as the claim's next start compares it with the store's.
                Ok(crate::tier::Claim::Taken) => {
                    claimed = true;
                    let copied =
                        crate::tier::uploader::write_local_manifest(&dir, &tier.manifest());
                    if let Err(e) = copied {
                        release_after_failed_open(tier).await;
                        return Err(e);
                    }
                }
                // Said by the claim; the open goes on with tiering stopped.
                Ok(crate::tier::Claim::Diverged) => {}
                Ok(crate::tier::Claim::Waiting { seen_ms_ago }) => {
                    tracing::warn!(
                        seen_ms_ago,
                        store = tier.display(),
                        "another process under this node id wrote the manifest within its lease (a restart after a crash, or a copy of this data directory running): claiming once its lease lapses; fenced if it writes meanwhile"
                    );
                }
                // Refused credentials are no outage to open past: such a start never tiers (until
                // 2026-11-30 it opened, never claimed the prefix, and served as ready). Nor is
                // a missing bucket (until 2026-12-02 "did not answer").
                Err(
                    e @ (LogError::Fenced { .. }
                    | LogError::HistoryNotInStore { .. }
                    | LogError::StoreHoldsAnotherLog { .. }
                    | LogError::TierAccessDenied(_)
                    | LogError::TierNoBucket(_)
                    | LogError::TierDamaged(_)),
                ) => {
                    return Err(e);
                }
                Err(e) => {
                    maybe_claimed = true;
                    // A damaged copy is no copy to open from: the log would know none of its
                    // remote segments, and every read of their offsets would fail until it
                    // was reopened. Refused until the store answers (whose manifest the next
                    // write copies over it).
                    let copy = local.copy.clone().map_err(|why| {
                        LogError::Tier(format!(
                            "the object store {} did not answer ({e}) and the local manifest \
                             copy {why}: cannot tell which of the log's segments are in the \
                             store; try again once the store answers",
                            tier.display()
                        ))
                    })?;
                    let has_copy = copy.is_some();
                    match copy {
                        Some(m) => {
                            // Said, not refused: the copy is as of this directory's last
                            // manifest write, and the claim checks the store itself once it
                            // answers (tiering stops there if it lacks these offsets too).
                            let missing = first_local.and_then(|l| m.missing_before(l.first));
                            if let Some(missing) = missing {
                                tracing::warn!(
                                    from = missing.start,
                                    to = missing.end,
                                    store = tier.display(),
                                    "the local manifest copy lists no segment holding these offsets, which this directory no longer holds: reads of them fail; the store's manifest is checked when it answers"
                                );
                            }
                            tier.inner.set_manifest(m);
                        }
                        // Nothing here says where the store's history ends: a log started
                        // at 0 (or kept empty at 0) would take offsets the store already
                        // holds (another history, served as this one's). Refused until the
                        // store answers.
                        None if first_local.is_none() => {
                            return Err(LogError::Tier(format!(
                                "the object store {} did not answer ({e}) and {} holds no log: \
                                 cannot tell where the log starts; try again once the store answers",
                                tier.display(),
                                dir.display()
                            )));
                        }
                        None => {}
                    }
                    tracing::warn!(error = %e, store = tier.display(), local_manifest_copy = has_copy, "object store unreachable at open: opening from what is local (the manifest copy when there is one), claiming later");
                }
            }
        }
        let (open_dir, tier, empty) = (dir.clone(), opts.tier.clone(), local.empty);
        let opened =
            tokio::task::spawn_blocking(move || Self::open_blocking(open_dir, opts, lock, empty))
                .await
                .unwrap_or(Err(LogError::WriterGone));
        let log = match (opened, &tier) {
            (Ok(log), _) => log,
            // Claimed, then failed (strict recovery refused damage, the options are invalid):
            // given up, or the next start would find this claim within its lease and wait it
            // out (its uploads and its stop's last upload with it).
            (Err(e), Some(tier)) if claimed || maybe_claimed => {
                release_after_failed_open(tier).await;
                return Err(e);
            }
            (Err(e), _) => return Err(e),
        };
        log.start_uploader(claimed, &local);
        Ok(log)
    }

    /// Starts the tier's uploader task (owned by the log; joined on close), with what the
    /// directory's manifest copy said at the open (`local`: [`LocalLog::tiered`] and the rest),
    /// for a claim after an open the store did not answer.
    fn start_uploader(&self, claimed: bool, local: &LocalLog) {
        let (Some(tier), Some(slot)) = (&self.shared.opts.tier, &self.shared.uploader) else {
            return;
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let up = Arc::new(crate::tier::uploader::Uploader {
            tier: tier.clone(),
            dir: self.shared.dir.clone(),
            interval: u64::from(self.shared.opts.index_interval_bytes),
            segments: self.shared.segments.clone(),
            watermark: self.shared.watermark.clone(),
            wake: self.shared.rolled.clone(),
            pass_lock: Arc::new(tokio::sync::Mutex::new(if claimed {
                crate::tier::uploader::PassState::claimed()
            } else {
                crate::tier::uploader::PassState::default()
            })),
            rewrites: self.shared.rewrites.clone(),
            tiered: local.tiered(),
            own_end: local.own_end(),
            own_history: local.own_history(),
            stop: stop.clone(),
        });
        let task = tokio::spawn(up.clone().run(stop.clone()));
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(UploaderHandle { up, stop, task });
    }

    /// The tier, when the log has one.
    pub fn tier(&self) -> Option<&crate::tier::Tier> {
        self.shared.opts.tier.as_ref()
    }

    /// Uploads every sealed segment now (and applies the local retention); returns the status.
    pub async fn upload_now(&self) -> Result<crate::tier::TierStatus> {
        let up = self
            .uploader()
            .ok_or_else(|| LogError::Tier("this log has no object store".into()))?;
        up.pass().await
    }

    /// The tier's uploader, when the log has a tier and it runs.
    pub(crate) fn uploader(&self) -> Option<Arc<crate::tier::uploader::Uploader>> {
        self.shared.uploader.as_ref().and_then(|s| {
            s.lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|h| h.up.clone())
        })
    }

    /// Opens the log; `lock` is the directory's lock when the caller took it already;
    /// `empty_log`: the directory's only segment is at 0 and holds no record
    /// ([`LocalLog::empty`]).
    fn open_blocking(
        dir: PathBuf,
        opts: LogOptions,
        lock: Option<Box<dyn crate::vfs::VfsLock>>,
        empty_log: bool,
    ) -> Result<Log> {
        opts.validate()?;
        if opts.read_only {
            return Self::open_read_only(dir, opts);
        }
        let vfs = opts.vfs.clone();
        vfs.create_dir_all(&dir)
            .map_err(|e| LogError::io("create directory", &dir, e))?;
        let lock = match lock {
            Some(l) => l,
            None => lock_directory(vfs.as_ref(), &dir)?,
        };
        let names = vfs
            .list(&dir)
            .map_err(|e| LogError::io("list directory", &dir, e))?;
        let mut bases = Vec::new();
        let mut leftovers = Vec::new();
        for name in &names {
            match segment::parse_log_name(name) {
                Some(base) => bases.push(base),
                None if name.ends_with(".log") => {
                    tracing::warn!(file = %dir.join(name).display(), "ignoring a .log file that is not named {{base:020}}.log");
                }
                None if crate::rewrite::is_rewrite_leftover(name) => leftovers.push(name.as_str()),
                None => {}
            }
        }
        crate::rewrite::remove_leftovers(vfs.as_ref(), &dir, &leftovers)?;
        bases.sort_unstable();
        let manifest = opts.tier.as_ref().map(|t| t.manifest());
        // An empty log beside a store that holds history: a data directory started once
        // without its `tier.url` and no write, then with it. Kept, its segment 0 would meet the
        // store's (another history: tiering stopped) and the log would take offsets the store
        // already holds; until 2026-11-30 it did, serving an empty state. Its files go, and it
        // restores as an empty directory does.
        let store_end = manifest.as_ref().map_or(0, |m| m.end());
        if empty_log && store_end > 0 {
            tracing::info!(dir = %dir.display(), store_end, "the log holds no record and the object store holds its history: removing its empty segment to restore from the store");
            remove_empty_log(vfs.as_ref(), &dir)?;
            bases.clear();
        }
        if bases.is_empty() {
            // A new log starts at 0; with a tier, where the object store ends (a restore).
            let first = manifest.as_ref().map_or(0, |m| m.end());
            if first > 0 {
                tracing::info!(dir = %dir.display(), next_offset = first, "restoring from the object store");
            }
            let path = dir.join(segment::log_name(first));
            vfs.open_write(&path)
                .map_err(|e| LogError::io("create segment", &path, e))?;
            vfs.sync_dir(&dir)
                .map_err(|e| LogError::io("sync directory", &dir, e))?;
            sync_ancestors(vfs.as_ref(), &dir)?;
            bases.push(first);
        }
        let active_base = bases[bases.len() - 1];
        let unsynced_from = recovery::recorded_unsynced(vfs.as_ref(), &dir, active_base);
        // Read before `record_policy` below replaces the last open's record with this one's.
        let after_unsynced = recovery::recorded_unsynced_writes(vfs.as_ref(), &dir);
        let mut rec =
            recovery::recover_active(vfs.as_ref(), &dir, active_base, &opts, unsynced_from)?;
        if rec.last_batch.is_none()
            && let Some(&before) = bases.len().checked_sub(2).and_then(|i| bases.get(i))
        {
            rec.floor_ts = recovery::newest_timestamp(vfs.as_ref(), &dir, before);
        }
        // Before anything is written under this open's policy (the next open's recovery
        // reads it); the recovered tail is durable now (recovery synced it).
        recovery::record_policy(vfs.as_ref(), &dir, opts.fsync, (active_base, rec.len))?;
        // The directory's names are made durable before anything is appended: the active
        // segment may be one a roll created (or renamed from its spare) just before a crash or
        // a failed directory sync, whose name no sync made durable yet; records acknowledged
        // into it would go with its name at a power cut.
        vfs.sync_dir(&dir)
            .map_err(|e| LogError::io("sync directory", &dir, e))?;
        let interval = u64::from(opts.index_interval_bytes);
        let mut segs: Vec<Arc<Segment>> = bases[..bases.len() - 1]
            .iter()
            .map(|&b| Arc::new(Segment::new(vfs.clone(), &dir, b, interval)))
            .collect();
        // Segments only in the object store: the offsets before the local segments, and the
        // gaps between them (the retention of builds before 2026-11-30 did not always remove
        // the oldest local copies first; the next pass closes such a gap). A store that holds
        // another history of this log — the prefix was written by another node after this
        // directory's data was made (a fail-back to an old data directory) — shows as an
        // entry at a local segment's base that is not that segment (another size on disk; any
        // entry at the active segment's base, which was never uploaded), or as a remote
        // segment overlapping a local one. Then that remote segment is not read, and the tier
        // stops (no uploads, no local deletion).
        if let (Some(tier), Some(m)) = (&opts.tier, &manifest) {
            let mut diverged = false;
            // Where each local segment's offsets end, as far as can be told without reading
            // it: its manifest entry's end when that entry is this segment, else the next
            // local base (the active segment runs on).
            let mut local = Vec::with_capacity(bases.len());
            for (i, &b) in bases.iter().enumerate() {
                let next = bases.get(i + 1).copied().unwrap_or(u64::MAX);
                let end = match m.segments.iter().find(|r| r.base == b) {
                    None => next,
                    Some(r) if i + 1 < bases.len() => {
                        let path = segment::SegmentPaths::new(&dir, b).log;
                        let len = vfs
                            .open_read(&path)
                            .and_then(|f| f.len())
                            .map_err(|e| LogError::io("stat segment", &path, e))?;
                        if len == r.bytes {
                            r.end
                        } else {
                            diverged = true;
                            next
                        }
                    }
                    Some(_) => {
                        diverged = true;
                        next
                    }
                };
                local.push((b, end));
            }
            for s in m
                .segments
                .iter()
                .filter(|s| s.base < active_base && !bases.contains(&s.base))
            {
                if local.iter().any(|&(b, e)| s.base < e && s.end > b) {
                    diverged = true;
                    continue;
                }
                segs.push(crate::tier::uploader::remote_segment(
                    tier, &dir, s.base, interval,
                ));
            }
            if diverged {
                tracing::error!(
                    store = tier.display(),
                    "the object store holds another history of this log than this directory's segments; tiering stops (no uploads, no local deletion) and the store's conflicting segments are not read, until an operator decides"
                );
                tier.inner
                    .diverged
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tier.inner
                    .other_history
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            segs.sort_by_key(|s| s.base);
        }
        let active = Arc::new(Segment::new_active(
            vfs.clone(),
            &dir,
            active_base,
            interval,
            rec.file.clone(),
            std::mem::take(&mut rec.index),
        ));
        segs.push(active.clone());
        tracing::info!(
            dir = %dir.display(),
            segments = segs.len(),
            start_offset = segs[0].base,
            next_offset = rec.next_offset,
            truncated_bytes = rec.truncated_bytes,
            "log opened"
        );

        let (wm_tx, wm_rx) = watch::channel(Watermark {
            next_offset: rec.next_offset,
            active_base,
            active_len: rec.len,
        });
        let (tx, rx) = mpsc::channel(opts.queue_depth);
        let segments = Arc::new(ArcSwap::from_pointee(segs));
        let permits = Arc::new(Semaphore::new(opts.max_queued_bytes));
        let poison = Arc::new(PoisonSlot::default());
        let counters = Arc::new(Counters::default());
        let rolled = Arc::new(tokio::sync::Notify::new());
        let (acks, acker) = Acks::start();
        let parts = WriterParts {
            acks,
            rolled: rolled.clone(),
            dir: dir.clone(),
            opts: opts.clone(),
            segments: segments.clone(),
            watermark: wm_tx,
            permits: permits.clone(),
            poison: poison.clone(),
            counters: counters.clone(),
        };
        let writer = Writer::new(parts, rx, active, rec, lock)?;
        let opts_has_tier = opts.tier.is_some();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| LogError::io("start writer runtime", &dir, e))?;
        let handle = std::thread::Builder::new()
            .name("tidings-log-writer".into())
            .spawn(move || rt.block_on(writer.run()))
            .map_err(|e| LogError::io("spawn writer thread", &dir, e))?;
        Ok(Log {
            shared: Arc::new(Shared {
                dir,
                opts,
                segments,
                watermark: wm_rx,
                tx,
                permits,
                poison,
                counters,
                closed: AtomicBool::new(false),
                writer: tokio::sync::Mutex::new(Some(handle)),
                acker: Mutex::new(acker),
                read_only: None,
                uploader: opts_has_tier.then(|| Mutex::new(None)),
                rolled,
                after_unsynced,
                rewrites: Arc::new(tokio::sync::Mutex::new(())),
            }),
        })
    }

    /// A read-only view: no lock, no recovery writes, no writer. Readable up to the last valid
    /// batch found; [`Log::refresh`] looks for more (while another process keeps writing, the
    /// view may include batches that process has not acknowledged yet).
    fn open_read_only(dir: PathBuf, opts: LogOptions) -> Result<Log> {
        let (segs, wm) = crate::readonly::scan(&opts, &dir, None)?;
        let after_unsynced = recovery::recorded_unsynced_writes(opts.vfs.as_ref(), &dir);
        let (wm_tx, wm_rx) = watch::channel(wm);
        let (tx, _) = mpsc::channel(1);
        Ok(Log {
            shared: Arc::new(Shared {
                dir,
                segments: Arc::new(ArcSwap::from_pointee(segs)),
                watermark: wm_rx,
                tx,
                permits: Arc::new(Semaphore::new(0)),
                poison: Arc::new(PoisonSlot::default()),
                counters: Arc::new(Counters::default()),
                closed: AtomicBool::new(false),
                writer: tokio::sync::Mutex::new(None),
                acker: Mutex::new(None),
                read_only: Some(Mutex::new(Some(wm_tx))),
                uploader: None,
                rolled: Arc::new(tokio::sync::Notify::new()),
                after_unsynced,
                rewrites: Arc::new(tokio::sync::Mutex::new(())),
                opts,
            }),
        })
    }

    /// Whether the open before this one ran under `FsyncPolicy::Every` or `Never` (as
    /// recorded in the directory's `fsync-policy`), and so may have acknowledged writes that a
    /// power cut then took: the offsets they had are written again by other records. Whatever
    /// was derived from that run's records and kept outside the log (a cache keyed by offsets)
    /// may describe records this log no longer holds. A run that stopped cleanly is not told
    /// apart. Only the open before this one is told of: this open's record replaces it, so a
    /// caller that must remember it past this run (the server's conversation cache) writes it
    /// down itself. False for a new log. For a read-only view: the last writable open (it may still
    /// be running).
    pub fn opened_after_unsynced_writes(&self) -> bool {
        self.shared.after_unsynced
    }

    /// Whether this is a read-only view.
    pub fn is_read_only(&self) -> bool {
        self.shared.read_only.is_some()
    }

    /// Read-only views: looks for data written since the last look and moves the watermark.
    /// Returns the new watermark. (A writable log's watermark moves by itself.)
    pub fn refresh(&self) -> Result<Watermark> {
        let Some(slot) = &self.shared.read_only else {
            return Ok(self.watermark());
        };
        // One look at a time, from scan to publish: two tails refreshing at once could
        // otherwise publish the older look last and step the watermark (and the segment list)
        // back under a reader that had already seen the newer one.
        let slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.watermark();
        let segs = self.shared.segments.load_full();
        let (fresh, wm) =
            crate::readonly::scan(&self.shared.opts, &self.shared.dir, Some((&segs, current)))?;
        // Published before the watermark that may name a new active segment. Compared by
        // base, not by count: a segment removed (tiering's retention) and one rolled since
        // the last look leave the count as it was, and the old list lacks the new active one.
        let same = fresh.len() == segs.len()
            && fresh.iter().zip(segs.iter()).all(|(a, b)| a.base == b.base);
        if !same {
            self.shared.segments.store(Arc::new(fresh));
        }
        if let Some(tx) = slot.as_ref() {
            tx.send_if_modified(|cur| {
                let newer = *cur != wm;
                *cur = wm;
                newer
            });
        }
        Ok(wm)
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &LogOptions {
        &self.shared.opts
    }

    fn check_open(&self) -> Result<()> {
        if let Some(cause) = self.shared.poison.get() {
            return Err(LogError::Poisoned { cause });
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    /// Appends `records` as one unit (all in one batch) and returns once they are durable under
    /// the fsync policy. Waits when the writer's queue is full.
    pub async fn append(&self, records: Vec<Bytes>) -> Result<AppendAck> {
        self.enqueue(records).await?.wait().await
    }

    /// Puts `records` in the writer's queue and returns without waiting for durability; await
    /// the returned [`PendingAppend`] for the acknowledgement. Appends enqueued one after the
    /// other (by one task, or under a lock) get increasing offsets in that order — the
    /// sequencer relies on this to keep a channel's seqs in log order while many appends are
    /// in flight.
    pub async fn enqueue(&self, records: Vec<Bytes>) -> Result<PendingAppend> {
        if self.shared.read_only.is_some() {
            return Err(LogError::ReadOnly);
        }
        if records.is_empty() {
            return Err(LogError::EmptyAppend);
        }
        let size = batch::records_size(&records) + HEADER_LEN;
        let max = self.shared.opts.max_append_bytes;
        if size > max {
            return Err(LogError::AppendTooLarge { size, max });
        }
        self.check_open()?;
        // `size ≤ max_append_bytes ≤ max_queued_bytes < 4 GiB` (checked at open).
        let size = size as u32;
        // A tier that is no longer this log's: what is appended could never reach the store's
        // history (until 2026-11-30 such a server took writes, answering them durable, and
        // stayed ready). Not for every divergence: a damaged local copy of an uploaded segment
        // stops tiering alone (`Tier::other_history`).
        if let Some(tier) = self.tier() {
            let (diverged, fenced) = (tier.other_history(), tier.fenced());
            if diverged || fenced {
                return Err(LogError::NotTheStoresHistory { diverged });
            }
        }
        // Both waits may be cancelled (the caller dropped): the byte permits and the queue
        // slot are held as guards until the command is handed over without another await,
        // so a cancelled enqueue gives back everything it took.
        let permit = self
            .shared
            .permits
            .acquire_many(size)
            .await
            .map_err(|_| LogError::Closed)?;
        let slot = self
            .shared
            .tx
            .reserve()
            .await
            .map_err(|_| LogError::Closed)?;
        // From here the writer owns the bytes: it returns the permits once they are written.
        permit.forget();
        let (ack, rx) = oneshot::channel();
        slot.send(Command::Append { records, size, ack });
        Ok(PendingAppend { rx })
    }

    /// Appends one record; returns its offset.
    pub async fn append_one(&self, record: Bytes) -> Result<u64> {
        Ok(self.append(vec![record]).await?.base_offset)
    }

    async fn control(&self, make: fn(oneshot::Sender<Result<()>>) -> Command) -> Result<()> {
        if self.shared.read_only.is_some() {
            return Err(LogError::ReadOnly);
        }
        self.check_open()?;
        let (ack, rx) = oneshot::channel();
        self.shared
            .tx
            .send(make(ack))
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::WriterGone)?
    }

    /// Seals the active segment and starts a new one (nothing happens to an empty segment).
    pub async fn roll(&self) -> Result<()> {
        self.control(Command::Roll).await
    }

    /// fdatasyncs everything written so far (useful under `every` and `never`).
    pub async fn sync(&self) -> Result<()> {
        self.control(Command::Sync).await
    }

    /// Stops the writer after every append queued before this call, syncs, releases the
    /// directory lock and joins the writer thread. Idempotent.
    pub async fn close(&self) -> Result<()> {
        self.close_within(None).await
    }

    /// [`Log::close`], giving up at `by` on what waits for the object store: the release of
    /// the prefix (a successor then waits for the lease to lapse, as after a crash) and the
    /// cold-read prefetches still running. A store that does not answer must not hold a
    /// shutdown past its grace period. Appends are synced and the writer joined whatever the
    /// time (local disk only). A rewrite of a segment only in the store is given up (as by
    /// any close), after at most a cold block read or a manifest write already under way and
    /// half a second to delete what it uploaded.
    pub async fn close_by(&self, by: tokio::time::Instant) -> Result<()> {
        self.close_within(Some(by)).await
    }

    async fn close_within(&self, by: Option<tokio::time::Instant>) -> Result<()> {
        let mut writer = self.shared.writer.lock().await;
        if let Some(slot) = &self.shared.read_only {
            self.shared.closed.store(true, Ordering::Release);
            slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            return Ok(());
        }
        let Some(handle) = writer.take() else {
            return Ok(());
        };
        // The uploader first: uploads resume from the manifest at the next open.
        let up = self
            .shared
            .uploader
            .as_ref()
            .and_then(|s| s.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(up) = up {
            up.stop.cancel();
            let _ = up.task.await;
            let released = match by {
                None => up.up.release().await,
                Some(by) => tokio::time::timeout_at(by, up.up.release())
                    .await
                    .unwrap_or_else(|_| {
                        Err(LogError::Tier(
                            "no answer before the close's deadline; gave up".into(),
                        ))
                    }),
            };
            if let Err(e) = released {
                tracing::warn!(error = %e, "could not release the object-store prefix (a successor waits for the lease)");
            }
        }
        // A rewrite of a sealed segment that is running ends first (its file is renamed, or
        // removed, before the writer gives up the directory lock); later ones see the log closed.
        let rewrites = self.shared.rewrites.lock().await;
        self.shared.closed.store(true, Ordering::Release);
        drop(rewrites);
        let (ack, rx) = oneshot::channel();
        let result = match self.shared.tx.send(Command::Close(ack)).await {
            Ok(()) => rx.await.unwrap_or(Err(LogError::WriterGone)),
            Err(_) => Err(LogError::WriterGone),
        };
        let joined = tokio::task::spawn_blocking(move || handle.join()).await;
        // The writer is gone, and with it the acknowledger's sender: every acknowledgement
        // is delivered once the task ends.
        let acker = self
            .shared
            .acker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = acker {
            let _ = task.await;
        }
        self.shared.permits.close();
        if let Some(tier) = &self.shared.opts.tier {
            tier.close_within(by).await?;
        }
        match joined {
            Ok(Ok(())) => result,
            _ => Err(LogError::WriterGone),
        }
    }

    /// The current high-watermark.
    pub fn watermark(&self) -> Watermark {
        *self.shared.watermark.borrow()
    }

    /// One past the last readable offset.
    pub fn next_offset(&self) -> u64 {
        self.watermark().next_offset
    }

    /// The first offset still held.
    pub fn start_offset(&self) -> u64 {
        self.shared.segments.load().first().map_or(0, |s| s.base)
    }

    /// Whether the record at `offset` is in a local segment, so that reading it needs no
    /// object store (false past the end of the log, and for segments only in the store).
    pub fn is_local(&self, offset: u64) -> bool {
        if offset >= self.next_offset() {
            return false;
        }
        let segs = self.shared.segments.load();
        segs.partition_point(|s| s.base <= offset)
            .checked_sub(1)
            .and_then(|i| segs.get(i))
            .is_some_and(|s| !s.is_remote())
    }

    /// Counters since open.
    pub fn metrics(&self) -> LogMetrics {
        self.shared.counters.snapshot()
    }

    /// Whether an earlier write failure stopped the log (and why).
    pub fn poisoned(&self) -> Option<Arc<LogError>> {
        self.shared.poison.get()
    }

    /// Records from offset `from`: the first record (when `from` is below the watermark; none
    /// when it equals it), then each next record while its payload fits in what is left of
    /// `max_bytes`. Every batch returned has
    /// passed its CRC check. A read that meets damaged data after some good records returns
    /// those; a read that starts at damaged data fails with [`LogError::Corrupt`]. A cold read
    /// the object store does not answer fails the read at once, good records before it or not
    /// ([`LogError::is_cold_storage_unavailable`]).
    ///
    /// On a read-only view, whose watermark stops at the first bad batch of the active segment,
    /// a read at the watermark fails the same way when valid data follows that batch (the
    /// writable open would refuse the log, under `RecoveryMode::Strict`, with this error); a
    /// torn tail, such as a batch a running writer is writing, stays a clean end. That read
    /// looks through the rest of the active segment file (with preallocation, its unused zeros).
    pub async fn read(&self, from: u64, max_bytes: usize) -> Result<Vec<Record>> {
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.read_blocking(from, max_bytes))
            .await
            .map_err(|_| LogError::Closed)?
    }

    /// [`Log::read`] for callers outside an async runtime (CLI tools, blocking threads).
    pub fn read_blocking(&self, from: u64, max_bytes: usize) -> Result<Vec<Record>> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let wm = self.watermark();
        let segs = self.shared.segments.load();
        let start = segs.first().map_or(0, |s| s.base);
        if from < start || from > wm.next_offset {
            return Err(LogError::OffsetOutOfRange {
                requested: from,
                start,
                end: wm.next_offset,
            });
        }
        // A read-only view's valid data ends at the first bad batch of the active segment: a
        // read that reaches it while valid data follows fails as a read of damage in a sealed
        // segment does, not as a clean end of the log.
        if from == wm.next_offset
            && let Some(seg) = segs.iter().find(|s| s.base == wm.active_base)
            && let Some(e) = self.damage_at_end(seg, &wm)?
        {
            return Err(e);
        }
        let mut out = Vec::new();
        let mut budget = Budget::new(max_bytes);
        let first = segs.partition_point(|s| s.base <= from).saturating_sub(1);
        for seg in &segs[first..] {
            if seg.base > wm.active_base {
                break;
            }
            // Offsets are dense: a segment that starts past the next offset due means the
            // one holding it is missing. Return what came before it, or say so; never skip.
            // Checked before the end of the log: the missing segment may be the last sealed
            // one, before an empty active segment that starts at the watermark.
            let due = out.last().map_or(from, |r: &Record| r.offset + 1);
            if seg.base > due {
                if out.is_empty() {
                    return Err(LogError::Gap {
                        from: due,
                        next: seg.base,
                    });
                }
                break;
            }
            if seg.base >= wm.next_offset {
                break;
            }
            // A segment removed (`Log::remove_segments_before`) since this read loaded the
            // list, its file unlinked before the read opened it: out of range, as the read
            // would have been had it loaded the list after the removal.
            let end = self
                .segment_end(seg, &wm)
                .map_err(|e| self.or_removed(e, from))?;
            let (kept, left) = (out.len(), budget.left);
            let mut read = seg.read_into(from.max(seg.base), end, &mut budget, &mut out);
            // A segment in the store whose batches fail their checks: its cached blocks are
            // dropped and it is read once more from the store — the damage may have come on
            // the way (a GET's body), cached since, and served for good from the cache (its
            // disk too, across restarts) while the object was intact. Dropped again when the
            // second read fails too, so that a good object put back is read; a read meeting
            // the damage within a minute after that does not fetch it again.
            if matches!(read, Err(LogError::Corrupt { .. }))
                && seg.is_remote()
                && let Some(tier) = self.tier()
                && tier.inner.forget_damaged(&seg.paths.log)
            {
                out.truncate(kept);
                budget.left = left;
                budget.full = false;
                read = seg.read_into(from.max(seg.base), end, &mut budget, &mut out);
                if matches!(read, Err(LogError::Corrupt { .. })) {
                    tier.inner.damaged_in_store(&seg.paths.log);
                }
            }
            if let Err(e) = read {
                let e = self.or_removed(e, from);
                // Hand out the good records gathered before the damage; the read that starts
                // at the damaged batch reports it. A store that did not answer is not damage:
                // said at once (handed the records before it, a reader asked again and waited
                // `read_timeout` a second time before hearing of it).
                if out.is_empty() || e.is_cold_storage_unavailable() {
                    return Err(e);
                }
                break;
            }
            if budget.full {
                break;
            }
        }
        // Below the watermark there is always a record to return: nothing found means the
        // segment holding `from` is missing. An empty answer would read as the end of the log
        // (a tail waits there for ever).
        if out.is_empty() && from < wm.next_offset {
            let next = segs
                .iter()
                .map(|s| s.base)
                .find(|&b| b > from && b <= wm.active_base)
                .map_or(wm.next_offset, |b| b.min(wm.next_offset));
            return Err(LogError::Gap { from, next });
        }
        Ok(out)
    }

    /// Read-only views: the damage the active segment `seg`'s valid data ends at, when valid
    /// data follows it (`readonly::damage_at_end`). `None` for other segments, and for a
    /// writable log, whose open refused such damage or cut it as its options say.
    fn damage_at_end(&self, seg: &Segment, wm: &Watermark) -> Result<Option<LogError>> {
        if !self.is_read_only() || seg.base != wm.active_base {
            return Ok(None);
        }
        crate::readonly::damage_at_end(&self.shared.opts, &self.shared.dir, seg, wm)
    }

    /// The committed byte length of a segment under watermark `wm`.
    fn segment_end(&self, seg: &Segment, wm: &Watermark) -> Result<u64> {
        if seg.base == wm.active_base {
            Ok(wm.active_len)
        } else {
            seg.sealed_len()
        }
    }

    /// The first offset whose batch timestamp is at or after `timestamp_ms`, or `None` when
    /// every record is older.
    pub fn offset_for_timestamp(&self, timestamp_ms: u64) -> Result<Option<u64>> {
        let first = self.offset_for_timestamp_in_list(timestamp_ms);
        // A removal of the oldest segments (`Log::remove_segments_before`) unlinked a segment
        // of the list this lookup loaded: the list loaded again lacks it (a read-only view's
        // is only renewed by a refresh).
        let again = !self.is_read_only() && matches!(&first, Err(e) if self.removed(e).is_some());
        let result = if again {
            self.offset_for_timestamp_in_list(timestamp_ms)
        } else {
            first
        };
        result.map_err(|e| match self.removed(&e) {
            Some((base, start)) => LogError::OffsetOutOfRange {
                requested: base,
                start,
                end: self.next_offset(),
            },
            None => e,
        })
    }

    /// [`Log::offset_for_timestamp`] over the segment list as loaded now.
    fn offset_for_timestamp_in_list(&self, timestamp_ms: u64) -> Result<Option<u64>> {
        let wm = self.watermark();
        let segs = self.shared.segments.load();
        let n = segs
            .iter()
            .take_while(|s| s.base < wm.next_offset && s.base <= wm.active_base)
            .count();
        // Segments whose first batch is older than the target form a prefix: find its length.
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let seg = &segs[mid];
            let first = seg.first_timestamp(self.segment_end(seg, &wm)?)?;
            if first.is_some_and(|t| t < timestamp_ms) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return Ok((n > 0).then(|| segs[0].base));
        }
        let seg = &segs[lo - 1];
        match seg.offset_for_timestamp(timestamp_ms, self.segment_end(seg, &wm)?)? {
            Some(off) => Ok(Some(off)),
            None => Ok((lo < n).then(|| segs[lo].base)),
        }
    }

    /// A reader that follows the log from `from`, waiting for new records.
    pub fn tail(&self, from: u64) -> Tail {
        Tail::new(self.clone(), self.shared.watermark.clone(), from)
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> Result<Vec<SegmentInfo>> {
        let wm = self.watermark();
        let segs = self.shared.segments.load();
        let mut out = Vec::with_capacity(segs.len());
        for (i, seg) in segs.iter().enumerate() {
            if seg.base > wm.active_base {
                break;
            }
            let sealed = seg.base < wm.active_base;
            let end_offset = match segs.get(i + 1) {
                Some(next) if sealed => next.base,
                _ => wm.next_offset,
            };
            let bytes = match self.segment_end(seg, &wm) {
                Ok(bytes) => bytes,
                // Removed since the list was loaded (`Log::remove_segments_before`, oldest
                // first): no longer part of the log.
                Err(e) if self.removed(&e).is_some() => continue,
                Err(e) => return Err(e),
            };
            out.push(SegmentInfo {
                base_offset: seg.base,
                end_offset,
                bytes,
                sealed,
                remote: seg.is_remote(),
                path: seg.paths.log.clone(),
            });
        }
        Ok(out)
    }

    /// Reads every batch of the segment with base `base_offset` and checks its CRC and framing
    /// (blocking: for tools such as `tidings inspect`). On a read-only view the active segment
    /// also fails when its valid data ends at damage that valid data follows, with the error a
    /// writable open would refuse the log with (see [`Log::read`]).
    pub fn check_segment(&self, base_offset: u64) -> Result<SegmentCheck> {
        let wm = self.watermark();
        let segs = self.shared.segments.load();
        let seg = segs
            .iter()
            .find(|s| s.base == base_offset && s.base <= wm.active_base)
            .ok_or(LogError::OffsetOutOfRange {
                requested: base_offset,
                start: segs.first().map_or(0, |s| s.base),
                end: wm.next_offset,
            })?;
        let (batches, records, next) = self
            .segment_end(seg, &wm)
            .and_then(|end| seg.check(end))
            .map_err(|e| self.or_removed(e, base_offset))?;
        if let Some(e) = self.damage_at_end(seg, &wm)? {
            return Err(e);
        }
        let expected_end = segs
            .iter()
            .find(|s| s.base > seg.base && s.base <= wm.active_base)
            .map_or(wm.next_offset, |s| s.base);
        // The segment's records end before the next segment starts: the segment is whole,
        // the offsets between are in no file (one removed, or a stray file past the log).
        if next < expected_end && seg.base < wm.active_base {
            return Err(LogError::Gap {
                from: next,
                next: expected_end,
            });
        }
        if next != expected_end {
            return Err(LogError::Corrupt {
                path: seg.paths.log.clone(),
                position: self.segment_end(seg, &wm)?,
                expected_offset: expected_end,
                kind: crate::error::CorruptKind::OffsetMismatch {
                    found: next,
                    expected: expected_end,
                },
            });
        }
        Ok(SegmentCheck { batches, records })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

/// The log directory as an open with a tier finds it under the directory's lock, before the
/// claim.
#[derive(Debug)]
struct LocalLog {
    /// The base of the oldest segment; `None` when the directory holds none.
    first: Option<u64>,
    /// The base of the newest segment (the active one).
    last: Option<u64>,
    /// The only segment is at 0 and holds no record: a log that never took a write (a data
    /// directory started once without its `tier.url`). It restores from a store holding
    /// history as an empty directory does (`Log::open_blocking`).
    empty: bool,
    /// The local manifest copy ([`crate::tier::uploader::read_local_manifest`]; `Err` says
    /// why it cannot be read).
    copy: std::result::Result<Option<crate::tier::manifest::Manifest>, String>,
}

impl LocalLog {
    /// Nothing read: no tier, or a read-only view (which claims nothing).
    fn untiered() -> Self {
        Self {
            first: None,
            last: None,
            empty: false,
            copy: Ok(None),
        }
    }

    /// Reads `dir` (made by the lock: a listing that fails is an error, not "no segment",
    /// which would skip the claim's check of the store and then fail the open after the
    /// claim).
    fn read(vfs: &dyn crate::vfs::Vfs, dir: &Path) -> Result<Self> {
        let names = vfs
            .list(dir)
            .map_err(|e| LogError::io("list directory", dir, e))?;
        let mut bases: Vec<u64> = names
            .iter()
            .filter_map(|n| segment::parse_log_name(n))
            .collect();
        bases.sort_unstable();
        let empty = matches!(bases.as_slice(), [0]) && holds_no_record(vfs, dir)?;
        Ok(Self {
            first: bases.first().copied(),
            last: bases.last().copied(),
            empty,
            copy: crate::tier::uploader::read_local_manifest(dir),
        })
    }

    /// Where the directory's segments start, for the claim; `None` when it holds no record
    /// (no segment, or an empty log): it restores from the store.
    fn start(&self) -> Option<crate::tier::LocalStart> {
        let first = self.first.filter(|_| !self.empty)?;
        Some(crate::tier::LocalStart {
            first,
            active: self.last.unwrap_or(first),
            tiered: self.tiered(),
            own_end: self.own_end(),
        })
    }

    /// The history id of the directory's manifest copy, when it has one.
    fn own_history(&self) -> Option<u64> {
        self.copy.as_ref().ok()?.as_ref()?.history
    }

    /// Where the history of the directory's manifest copy ends (0 without a copy; `None` when
    /// it cannot be read): [`crate::tier::LocalStart::own_end`].
    fn own_end(&self) -> Option<u64> {
        match &self.copy {
            Ok(copy) => Some(
                copy.as_ref()
                    .map_or(0, crate::tier::manifest::Manifest::end),
            ),
            Err(_) => None,
        }
    }

    /// Where the history this directory tiered before starts, by its manifest copy.
    fn tiered(&self) -> crate::tier::Tiered {
        use crate::tier::Tiered;
        match &self.copy {
            Ok(copy) => copy
                .as_ref()
                .and_then(crate::tier::manifest::Manifest::history_start)
                .map_or(Tiered::Never, Tiered::From),
            Err(_) => Tiered::Unknown,
        }
    }
}

/// Whether segment 0 in `dir` holds no record, as its recovery would find it: no valid batch
/// at its start, and none after — no byte, only zeros (a preallocation, or a first write of
/// which nothing reached the disk), or a first batch torn short (never acknowledged under
/// `always`; one lost under every/never, which those allow), which recovery cuts. A damaged
/// first batch that valid ones follow is not empty: recovery judges it. A valid first batch
/// settles it; only without one is the file read to its end (its length alone says nothing of
/// a preallocated file). (Until 2026-11-30 a torn first batch kept the segment, and the log
/// met the store's history as another one.)
fn holds_no_record(vfs: &dyn crate::vfs::Vfs, dir: &Path) -> Result<bool> {
    let path = segment::SegmentPaths::new(dir, 0).log;
    let file = vfs
        .open_read(&path)
        .map_err(|e| LogError::io("open segment", &path, e))?;
    let len = file
        .len()
        .map_err(|e| LogError::io("stat segment", &path, e))?;
    // Its first batch alone: valid, the segment holds a record (a scan to the end would read a
    // whole segment at every open, which reads only the tail otherwise).
    match segment::Scanner::new(file.as_ref(), &path, 0, len, 0).next_batch() {
        Some(Ok(_)) => return Ok(false),
        Some(Err(e @ LogError::Io { .. })) => return Err(e),
        _ => {}
    }
    if recovery::zeros_to_end(file.as_ref(), &path, 0, len)? {
        return Ok(true);
    }
    Ok(recovery::resume_after_damage(file.as_ref(), &path, 0, 0, len)?.is_none())
}

/// Removes the files of an empty log's segment 0 ([`LocalLog::empty`]) and any spare of
/// preallocated zeros, so that `dir` opens as an empty directory. The segment goes last: an
/// open stopped before it finds an empty log again.
fn remove_empty_log(vfs: &dyn crate::vfs::Vfs, dir: &Path) -> Result<()> {
    let paths = segment::SegmentPaths::new(dir, 0);
    let spare = dir.join(crate::prealloc::SPARE_NAME);
    for path in [&paths.index, &paths.time, &spare, &paths.log] {
        match vfs.remove(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io("remove", path, e)),
        }
    }
    vfs.sync_dir(dir)
        .map_err(|e| LogError::io("sync directory", dir, e))
}

/// Gives up the prefix an open claimed before it failed ([`crate::tier::store_release`]),
/// bounded as the claim is. A failure is only said: the open's own error is the news.
async fn release_after_failed_open(tier: &crate::tier::Tier) {
    let released = tokio::time::timeout(
        crate::tier::uploader::OPEN_TIMEOUT,
        crate::tier::store_release(tier),
    )
    .await
    .unwrap_or_else(|_| Err(LogError::Tier("no answer from the object store".into())));
    if let Err(e) = released {
        tracing::warn!(error = %e, store = tier.display(), "the open failed after claiming the prefix (or a claim that got no answer), and it could not be given up: the next start may wait out this process's lease");
    }
}

/// Syncs every directory above a new log's `dir`, up to the root (a relative path's: up to the
/// working directory): a first start may have created several of them at once
/// (`create_dir_all`: `/var/lib/tidings/log`), and each new one's entry is durable only once
/// the directory holding it is synced. Only the parent was, so a power cut soon after the
/// first acknowledged appends could take a new directory above it with the whole log (found
/// by a review). A directory further up that cannot be synced (not readable) is left, with a
/// warning: a log beneath it was created by this process only if it could write there.
fn sync_ancestors(vfs: &dyn crate::vfs::Vfs, dir: &Path) -> Result<()> {
    let above = dir.ancestors().skip(1).map(|a| {
        if a.as_os_str().is_empty() {
            Path::new(".")
        } else {
            a
        }
    });
    for (i, ancestor) in above.enumerate() {
        match vfs.sync_dir(ancestor) {
            Ok(()) => {}
            Err(e) if i == 0 => return Err(LogError::io("sync directory", ancestor, e)),
            Err(e) => {
                tracing::warn!(dir = %ancestor.display(), error = %e, "could not sync a directory above the new log's: a power cut soon after the first writes may lose the directories created beneath it");
                break;
            }
        }
        if ancestor == Path::new(".") {
            break;
        }
    }
    Ok(())
}

/// Creates `dir` if missing and takes its `LOCK` (refused with [`LogError::Locked`] while
/// another process holds it).
fn lock_directory(vfs: &dyn crate::vfs::Vfs, dir: &Path) -> Result<Box<dyn crate::vfs::VfsLock>> {
    vfs.create_dir_all(dir)
        .map_err(|e| LogError::io("create directory", dir, e))?;
    let lock_path = dir.join("LOCK");
    vfs.try_lock(&lock_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => LogError::Locked {
            path: lock_path.clone(),
        },
        _ => LogError::io("lock", &lock_path, e),
    })
}
