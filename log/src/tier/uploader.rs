//! The uploader: the log's background task that moves sealed segments to the object store and
//! applies the local retention. It never blocks appends; failures are retried with exponential
//! backoff and jitter.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use object_store::ObjectStoreExt as _;
use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;

use super::manifest::{Manifest, RemoteSegment};
use super::store::{self, Written};
use super::{Tier, TierStatus, TierVfs};
use crate::error::{LogError, Result};
use crate::log::Watermark;
use crate::segment::{Segment, SegmentPaths};

/// The local copy of the latest manifest this log wrote or read (lets the log open, and know
/// its remote segments, while the store is unreachable).
pub(crate) fn local_manifest_path(dir: &Path) -> PathBuf {
    dir.join("tier-manifest.json")
}

/// The local manifest copy: `None` when there is none. A copy that cannot be read or decoded
/// is an error that names the file and the cause (`"{path} is damaged: {why}"`): it is not a
/// missing copy, and a log opened as if it were would know none of its remote segments.
pub(crate) fn read_local_manifest(dir: &Path) -> std::result::Result<Option<Manifest>, String> {
    let path = local_manifest_path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{} cannot be read: {e}", path.display())),
    };
    Manifest::decode(&bytes)
        .map(Some)
        .map_err(|why| format!("{} is damaged: {why}", path.display()))
}

pub(crate) fn write_local_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let path = local_manifest_path(dir);
    let tmp = dir.join(".tier-manifest.json.tmp");
    let io = |e| LogError::io("write", &path, e);
    std::fs::write(&tmp, m.encode()).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// The marker of a local copy rewritten whose new bytes are not yet in the store
/// ([`Uploader::rewrite`]): `{base:020}.log.reupload`.
pub(crate) fn reupload_marker(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{}.reupload", crate::segment::log_name(base)))
}

/// The bases of the segments `dir` holds a re-upload marker of, ascending.
fn pending_reuploads(dir: &Path) -> Result<Vec<u64>> {
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io("list directory", dir, e))?;
    let mut bases: Vec<u64> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| crate::segment::parse_log_name(n.strip_suffix(".reupload")?))
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

/// Where the rewrite of a segment only in the store is written before its upload
/// ([`Uploader::rewrite_remote`]): `{base:020}.log.purge`.
fn purge_file(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{}.purge", crate::segment::log_name(base)))
}

/// Removes what rewrites of segments only in the store left in `dir` (a crash, a stop).
fn remove_purge_files(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io("list directory", dir, e))?;
    for name in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
        let left = name
            .strip_suffix(".purge")
            .and_then(crate::segment::parse_log_name)
            .is_some();
        if left {
            let path = dir.join(&name);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "could not remove a rewritten segment's temp file");
            }
        }
    }
    Ok(())
}

/// Creates (`make`) or removes a re-upload marker, durably (the directory synced).
fn set_marker(dir: &Path, base: u64, make: bool) -> Result<()> {
    let path = reupload_marker(dir, base);
    let done = if make {
        std::fs::File::create(&path).and_then(|f| f.sync_all())
    } else {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            r => r,
        }
    };
    done.map_err(|e| LogError::io(if make { "create" } else { "remove" }, &path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io("sync directory", dir, e))
}

/// A segment whose files are in the object store (its index files may still be local, in
/// `local_dir`).
pub(crate) fn remote_segment(
    tier: &Tier,
    local_dir: &Path,
    base: u64,
    interval: u64,
) -> Arc<Segment> {
    let vfs = TierVfs {
        inner: tier.inner.clone(),
        local_dir: Some(local_dir.to_path_buf()),
    };
    let dir = vfs.display_dir();
    let entry = tier
        .manifest()
        .segments
        .iter()
        .find(|s| s.base == base)
        .map(|s| (s.bytes, s.stem()));
    let paths = match &entry {
        Some((_, stem)) => SegmentPaths::named(&dir, stem),
        None => SegmentPaths::new(&dir, base),
    };
    let seg = Segment::new_remote(Arc::new(vfs), paths, base, interval);
    if let Some((len, _)) = entry {
        seg.seal(len);
    }
    Arc::new(seg)
}

/// What the uploader works on.
#[derive(Debug)]
pub(crate) struct Uploader {
    pub(crate) tier: Tier,
    pub(crate) dir: PathBuf,
    pub(crate) interval: u64,
    pub(crate) segments: Arc<ArcSwap<Vec<Arc<Segment>>>>,
    pub(crate) watermark: watch::Receiver<Watermark>,
    pub(crate) wake: Arc<Notify>,
    /// Serializes passes (background and `upload_now`).
    pub(crate) pass_lock: Arc<Mutex<PassState>>,
    /// The log's rewrite lock (`Log::rewrite_sealed`, removals): held by a rewrite of a
    /// segment only in the store while its temp file is in use, which a pass then leaves alone.
    pub(crate) rewrites: Arc<Mutex<()>>,
    /// Where the history this directory tiered before starts, by its local manifest copy as of
    /// the open ([`store::LocalStart::tiered`]): for the claim after an open the store did
    /// not answer (nothing rewrites the copy before that claim).
    pub(crate) tiered: store::Tiered,
    /// Where that copy's history ends, as of the open ([`store::LocalStart::own_end`]).
    pub(crate) own_end: Option<u64>,
    /// That copy's history id, as of the open ([`Manifest::history`]).
    ///
    /// [`Manifest::history`]: super::manifest::Manifest::history
    pub(crate) own_history: Option<u64>,
    /// Cancelled when the log closes (the token `run` takes): a rewrite of a segment only in
    /// the store gives its read and upload up then, so that the close's wait for the rewrite
    /// lock keeps its deadline ([`Self::rewrite_remote`]).
    pub(crate) stop: CancellationToken,
}

/// The start of a pass's error while the claim waits ([`store::Claim::Waiting`]).
const WAITING: &str = "waiting for the lease of another process under this node id to lapse before claiming the prefix";

/// State kept between passes.
#[derive(Debug, Default)]
pub(crate) struct PassState {
    claimed: bool,
    /// The prefix was given up at the close ([`Uploader::release`]): nothing is written to
    /// the manifest any more.
    released: bool,
    last_write_ms: u64,
    /// (base, CRC-32) of local segments known to hold exactly the bytes of the manifest entry
    /// at their base: uploaded by this process, or read and compared before a deletion.
    confirmed: HashSet<(u64, u32)>,
    /// Objects a rewrite of a segment only in the store replaced, and when: deleted a while
    /// later ([`DOOMED_AFTER`]), so that a reader still holding the old segment finishes (its
    /// blocks are fetched by the old keys). At the release, all of them.
    doomed: Vec<(std::time::Instant, String)>,
    /// Bases of marked local copies found damaged ([`Uploader::upload_marked`]): said once,
    /// not read again by this process's passes (they stay, with their markers).
    damaged_marked: HashSet<u64>,
}

/// How long the objects a remote rewrite replaced stay before they are deleted.
const DOOMED_AFTER: Duration = Duration::from_secs(60);

impl PassState {
    pub(crate) fn claimed() -> Self {
        Self {
            claimed: true,
            last_write_ms: store::now_ms(),
            ..Self::default()
        }
    }
}

impl Uploader {
    /// Runs until `stop` is cancelled.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut attempt = 0u32;
        loop {
            let wait = if attempt > 0 {
                store::backoff(attempt)
            } else {
                self.tier.inner.opts.upload_interval
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
            let r = tokio::select! {
                () = stop.cancelled() => return,
                r = self.pass() => r,
            };
            match r {
                Ok(_) => attempt = 0,
                Err(LogError::Fenced { .. }) => {} // reported once when it happened
                // Fenced or diverged: reported once when it happened, and final until the log
                // is reopened — not a failure to retry and warn about at every backoff.
                Err(_)
                    if self.tier.inner.fenced.load(Ordering::Relaxed)
                        || self.tier.inner.diverged.load(Ordering::Relaxed) => {}
                // Waiting out another process's lease (reported at open): not a failure.
                Err(LogError::Tier(m)) if m.starts_with(WAITING) => attempt = 0,
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    self.tier
                        .inner
                        .counters
                        .upload_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, attempt, "tiering pass failed; retrying with backoff (appends are not affected)");
                }
            }
        }
    }

    /// Sealed segments, local and remote, oldest first: (base, end, segment).
    fn sealed(&self) -> Vec<(u64, u64, Arc<Segment>)> {
        let wm = *self.watermark.borrow();
        let segs = self.segments.load_full();
        segs.iter()
            .zip(segs.iter().skip(1))
            .filter(|(s, _)| s.base < wm.active_base)
            .map(|(s, next)| (s.base, next.base, s.clone()))
            .collect()
    }

    /// Where the local segments start, for the claim: the base of the oldest segment that is
    /// still local (the active one always is).
    fn local_start(&self) -> Option<store::LocalStart> {
        self.segments
            .load()
            .iter()
            .find(|s| !s.is_remote())
            .map(|s| store::LocalStart {
                first: s.base,
                active: self.watermark.borrow().active_base,
                tiered: self.tiered,
                own_end: self.own_end,
            })
    }

    /// Sealed segments that are still local: (base, end, local bytes).
    fn sealed_local(&self) -> Vec<(u64, u64, Arc<Segment>)> {
        let mut out = self.sealed();
        out.retain(|(_, _, s)| !s.is_remote());
        out
    }

    /// One pass: upload what is sealed and not uploaded, renew the lease, apply retention.
    pub(crate) async fn pass(&self) -> Result<TierStatus> {
        let mut state = self.pass_lock.lock().await;
        let inner = &self.tier.inner;
        // Given up by the close (`release`): a pass that waited for the lock behind it (an
        // `upload_now` called as the log closed) claimed the prefix again and renewed a lease
        // the successor then waited out.
        if state.released {
            return Err(LogError::Closed);
        }
        if inner.fenced.load(Ordering::Relaxed) {
            return Err(LogError::Tier(
                "fenced: another server owns the prefix".into(),
            ));
        }
        if inner.diverged.load(Ordering::Relaxed) {
            return Err(LogError::Tier(DIVERGED.into()));
        }
        if !state.claimed {
            // The log opened while the store was out of reach. Another server's live lease
            // refuses this claim as it would have refused the open: fenced, final until the
            // log is reopened (not a failure to retry until that lease lapses, then take the
            // prefix over from under a history this log never saw). A store that lacks the
            // offsets before the oldest local segment is refused too (the open checks only the
            // local manifest copy, which may be another store's): tiering stops, final as for
            // another history, before anything is uploaded there or deleted here.
            match store::claim(inner, self.local_start(), self.own_history).await {
                Ok(store::Claim::Taken) => {}
                Ok(store::Claim::Diverged) => return Err(LogError::Tier(DIVERGED.into())),
                Ok(store::Claim::Waiting { seen_ms_ago }) => {
                    return Err(LogError::Tier(format!(
                        "{WAITING}: it wrote {seen_ms_ago} ms ago"
                    )));
                }
                Err(e) => {
                    if matches!(e, LogError::Fenced { .. })
                        && !inner.fenced.swap(true, Ordering::Relaxed)
                    {
                        tracing::error!(error = %e, store = %inner.opts.display, "another server owns the prefix; this log stops tiering until it is reopened");
                    }
                    // Another log's history: nothing of it is this log's, and this log's next
                    // records could never reach it.
                    if matches!(e, LogError::StoreHoldsAnotherLog { .. }) {
                        inner.other_history.store(true, Ordering::Relaxed);
                        inner.foreign.store(true, Ordering::Relaxed);
                    }
                    if matches!(
                        e,
                        LogError::HistoryNotInStore { .. } | LogError::StoreHoldsAnotherLog { .. }
                    ) && !inner.diverged.swap(true, Ordering::Relaxed)
                    {
                        tracing::error!(error = %e, "this log stops tiering (no uploads, no local deletion) until it is reopened with the store it was tiered to");
                    }
                    return Err(e);
                }
            }
            self.refresh_remote();
            write_local_manifest(&self.dir, &self.tier.manifest())?;
            state.claimed = true;
            state.last_write_ms = store::now_ms();
        }
        self.finish_reuploads(&mut state).await?;
        let sealed = self.sealed_local();
        let pending: Vec<_> = {
            let m = self.tier.manifest();
            let mut pending = Vec::new();
            // A local segment below the store's start is left of a removal cut short (its
            // manifest version written, its files not yet unlinked): expired, never uploaded;
            // the next removal unlinks it (`Log::remove_segments_before`).
            let start = m.start.unwrap_or(0);
            for s in sealed.iter().filter(|(base, _, _)| *base >= start) {
                if !self.in_store(&m, s)? {
                    pending.push(s.clone());
                }
            }
            pending
        };
        self.set_lag(&pending);
        for (i, (base, end, _)) in pending.iter().enumerate() {
            // Rewritten before its first upload: under objects of its own, as a rewrite's
            // (an upload of this process's own stem may have landed with the earlier bytes).
            let marked = reupload_marker(&self.dir, *base).exists();
            let upload = async {
                if marked {
                    let stem = self.rewrite_stem(*base);
                    store::upload_segment_as(inner, &self.dir, *base, *end, stem).await
                } else {
                    store::upload_segment(inner, &self.dir, *base, *end).await
                }
            };
            let rs = self.renewing(&mut state, upload).await?;
            state.confirmed.insert((rs.base, rs.crc32));
            let mut next = self
                .tier
                .manifest()
                .next(&inner.opts.owner_id, store::now_ms());
            next.segments.retain(|s| s.base != rs.base);
            next.segments.push(rs);
            next.segments.sort_by_key(|s| s.base);
            self.write(&next).await?;
            state.last_write_ms = store::now_ms();
            if marked {
                set_marker(&self.dir, *base, false)?;
            }
            self.set_lag(&pending[i + 1..]);
            tracing::info!(base, end, store = %inner.opts.display, "uploaded a sealed segment");
        }
        // Renew the lease when nothing else was written for a third of it (our own lease: the
        // one each write records, and the least a claimer waits).
        if store::now_ms().saturating_sub(state.last_write_ms) >= inner.opts.lease_ms() / 3 {
            self.renew(&mut state).await?;
        }
        self.retention(&mut state).await?;
        self.delete_doomed(&mut state, false).await;
        Ok(self.tier.status())
    }

    /// Renews the lease: the next manifest version, holding what this one holds.
    async fn renew(&self, state: &mut PassState) -> Result<()> {
        let next = self
            .tier
            .manifest()
            .next(&self.tier.inner.opts.owner_id, store::now_ms());
        self.write(&next).await?;
        state.last_write_ms = store::now_ms();
        Ok(())
    }

    /// Runs `work` (an upload), renewing the lease meanwhile whenever nothing was written for
    /// a third of it, as a pass does between uploads: a segment whose upload (and read-back)
    /// outlasted the lease let a standby take the prefix from a healthy owner, which was then
    /// fenced at its next write. A renewal is a manifest version like any other (the upload's
    /// own version follows it); one that finds the prefix taken ends the upload.
    async fn renewing<T>(
        &self,
        state: &mut PassState,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let inner = &self.tier.inner;
        let third = (inner.opts.lease_ms() / 3).max(1);
        let mut work = std::pin::pin!(work);
        loop {
            let due = state.last_write_ms.saturating_add(third);
            let wait = Duration::from_millis(due.saturating_sub(store::now_ms()));
            tokio::select! {
                done = &mut work => return done,
                () = tokio::time::sleep(wait) => {
                    self.renew(state).await?;
                    tracing::debug!(store = %inner.opts.display, "renewed the lease during an upload");
                }
            }
        }
    }

    /// Why this log may not change the store's manifest now (removals, rewrites), if it may
    /// not: fenced, diverged, or not claimed yet.
    fn not_holding(&self, state: &PassState) -> Option<&'static str> {
        let inner = &self.tier.inner;
        if state.released {
            Some("the log is closing: it gave up the object store's prefix")
        } else if inner.fenced.load(Ordering::Relaxed) {
            Some("another server owns the object store's prefix (this log is fenced)")
        } else if inner.diverged.load(Ordering::Relaxed) {
            Some("the object store holds another history of this log")
        } else if !state.claimed {
            Some("this log has not claimed the object store's prefix yet")
        } else {
            None
        }
    }

    /// The tiered half of `Log::remove_segments_before` (`retention.rs`), under the pass lock
    /// (its manifest write is one of the uploader's): the longest run of the oldest sealed
    /// segments that end at or before `offset` and are in the store — remote, or local with
    /// their entry listed (and its bytes: size and CRC, else the tier diverged and nothing goes),
    /// or left below the store's start by a removal cut short — leaves the
    /// manifest (a version with its start moved to the first segment kept, written before
    /// anything else changes) and then the segment list. Returns the segments taken out, oldest
    /// first, and the manifest entries dropped (whose objects the caller deletes). A segment
    /// not uploaded yet stops the run: the store keeps the whole history from its start.
    ///
    /// Refused ([`LogError::RemoveRefused`]) while this log does not hold the prefix (not
    /// claimed yet, fenced) or its store holds another history (diverged).
    pub(crate) async fn take_out_before(
        &self,
        offset: u64,
    ) -> Result<(Vec<Arc<Segment>>, Vec<RemoteSegment>)> {
        let mut state = self.pass_lock.lock().await;
        if let Some(reason) = self.not_holding(&state) {
            return Err(LogError::RemoveRefused { reason });
        }
        let inner = &self.tier.inner;
        let m = self.tier.manifest();
        let start = m.start.unwrap_or(0);
        let sealed = self.sealed();
        let runs: Vec<(u64, u64, bool)> = sealed
            .iter()
            .map(|(base, end, seg)| (*base, *end, seg.is_remote()))
            .collect();
        let taken = removable_run(&runs, &m, offset);
        // A rewritten local copy whose new bytes are not in the store yet ends the run too
        // (`Uploader::rewrite`): the next pass uploads it.
        let taken = sealed
            .iter()
            .take(taken)
            .position(|(base, _, seg)| {
                !seg.is_remote() && reupload_marker(&self.dir, *base).exists()
            })
            .unwrap_or(taken);
        let Some(&(_, new_start, _)) = taken.checked_sub(1).and_then(|i| sealed.get(i)) else {
            return Ok((Vec::new(), Vec::new()));
        };
        // A local copy goes with its entry only if it holds the entry's bytes, as the local
        // retention requires before it deletes one: two histories can hold segments of the same
        // offsets and size.
        for (base, _, seg) in sealed.iter().take(taken).filter(|(_, _, s)| !s.is_remote()) {
            let Some(r) = m.segments.iter().find(|r| r.base == *base) else {
                continue; // left below the store's start by a removal cut short
            };
            if state.confirmed.contains(&(*base, r.crc32)) {
                continue;
            }
            let path = SegmentPaths::new(&self.dir, *base).log;
            let same = seg.sealed_len()? == r.bytes
                && self.renewing(&mut state, self.local_crc(&path)).await? == r.crc32;
            if !same {
                tracing::error!(
                    base,
                    store = %inner.opts.display,
                    "a local segment holds other bytes than the object store's segment at its base: another history of this log; tiering stops (no uploads, no removal, no local deletion)"
                );
                inner.diverged.store(true, Ordering::Relaxed);
                return Err(LogError::Tier(DIVERGED.into()));
            }
            state.confirmed.insert((*base, r.crc32));
        }
        let mut dropped = Vec::new();
        if new_start > start {
            // The copy first holds every upload the store's manifest names (a copy write that
            // failed after an upload's version, on a full disk, left it behind): a removal's
            // start is then never past the copy's end, which the claim takes for another
            // writer's removal (`store::holds_history`). Not removed when it cannot be written.
            write_local_manifest(&self.dir, &self.tier.manifest())?;
            // From the manifest as it is now: a renewal during the reads above wrote a newer
            // version than `m` (its segments are the same: the pass lock is held).
            let mut next = self
                .tier
                .manifest()
                .next(&inner.opts.owner_id, store::now_ms());
            dropped = next.remove_before(new_start);
            self.write(&next).await?;
            state.last_write_ms = store::now_ms();
        }
        self.segments.rcu(|segs| {
            segs.iter()
                .filter(|s| s.base >= new_start)
                .cloned()
                .collect::<Vec<_>>()
        });
        let gone = sealed
            .into_iter()
            .take(taken)
            .map(|(_, _, seg)| seg)
            .collect();
        Ok((gone, dropped))
    }

    /// The tiered `Log::rewrite_sealed` (`rewrite.rs`'s module doc), under the pass lock
    /// (`rewrites` is the log's rewrite lock, held for the local step): a re-upload marker is
    /// made durable, the local segment at `base` rewritten, and — when the store holds it — the
    /// rewritten copy goes up under new objects that a manifest version names in place of the
    /// old entry ([`Self::upload_marked`]); one not uploaded yet goes up at the next pass, under
    /// new objects too. A copy the store holds must hold the entry's bytes first (else another
    /// history: diverged). The local step runs to its end, with both locks, even if this future
    /// is dropped; what is left after it (an error, a stop, a crash) the next pass finishes. A
    /// segment only in the store: [`Self::rewrite_remote`], which gives the pass lock back for
    /// its read and upload.
    pub(crate) async fn rewrite(
        &self,
        log: &crate::log::Log,
        base: u64,
        replacements: std::collections::BTreeMap<u64, bytes::Bytes>,
        rewrites: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<crate::rewrite::RewriteStats> {
        let mut state = self.pass_lock.clone().lock_owned().await;
        let inner = &self.tier.inner;
        // Unclaimed, the manifest known may be older than the store's (an upload's version
        // that landed unanswered): a segment it does not list may be in the store.
        if let Some(reason) = self.not_holding(&state) {
            return Err(LogError::RewriteRefused {
                base,
                reason: reason.into(),
            });
        }
        if replacements.is_empty() {
            return Ok(crate::rewrite::RewriteStats::default());
        }
        let local = self.sealed_local().into_iter().find(|(b, _, _)| *b == base);
        let entry = self
            .tier
            .manifest()
            .segments
            .iter()
            .find(|r| r.base == base)
            .cloned();
        // Only in the store: rewritten from its cold reads ([`Self::rewrite_remote`]).
        let remote = self
            .sealed()
            .into_iter()
            .find(|(b, _, s)| *b == base && s.is_remote());
        if let (Some((_, end, seg)), Some(old)) = (remote, &entry) {
            return self
                .rewrite_remote(state, rewrites, log, (end, seg), old, replacements)
                .await;
        }
        // A copy marked for re-upload holds this log's own rewrite of the entry's bytes (a
        // re-upload that failed, maybe in an earlier process): other bytes than the entry's,
        // not another history. Its batches are checked as it is read for this rewrite, and
        // again before it goes up.
        if let (Some((_, end, seg)), Some(e)) = (&local, &entry)
            && !state.confirmed.contains(&(base, e.crc32))
            && !reupload_marker(&self.dir, base).exists()
        {
            let path = SegmentPaths::new(&self.dir, base).log;
            let same = *end == e.end
                && seg.sealed_len()? == e.bytes
                && self.renewing(&mut state, self.local_crc(&path)).await? == e.crc32;
            if !same {
                tracing::error!(
                    base,
                    store = %inner.opts.display,
                    "a local segment holds other bytes than the object store's segment at its base: another history of this log (or damage); tiering stops, and it is not rewritten"
                );
                inner.diverged.store(true, Ordering::Relaxed);
                return Err(LogError::Tier(DIVERGED.into()));
            }
            state.confirmed.insert((base, e.crc32));
        }
        // Not a local sealed segment: `rewrite_blocking` refuses it, and no marker is made.
        if local.is_some() {
            set_marker(&self.dir, base, true)?;
            // The copy's bytes change: what was confirmed of them no longer holds.
            state.confirmed.retain(|(b, _)| *b != base);
        }
        let l = log.clone();
        let (stats, mut state) = tokio::task::spawn_blocking(move || {
            let _rewrites = rewrites;
            (l.rewrite_blocking(base, &replacements), state)
        })
        .await
        .map_err(|_| LogError::Closed)?;
        let stats = stats?;
        if entry.is_some() {
            self.upload_marked(&mut state, base).await?;
        } else {
            self.wake.notify_one();
        }
        Ok(stats)
    }

    /// [`Self::rewrite`] of a segment only in the store (`seg`, ending at offset `end`, listed
    /// as `old`): its rewrite is written from cold reads into `{base:020}.log.purge` in the
    /// local directory (synced, read back and checked, as a local rewrite), uploaded from there
    /// under a rewrite's objects (its index objects copied: a rewrite keeps positions), and a
    /// manifest version names them in place of `old`; the segment list's value for it then reads
    /// the new objects, `old`'s are deleted and the temp file removed. A crash or an error
    /// before the manifest version leaves the store as it was (and objects nothing names, which
    /// `tidings tier gc` collects); after it, old objects (likewise) and a temp file, which the
    /// next pass removes.
    ///
    /// The pass lock is given back for the cold read and the upload (a whole segment's, seconds
    /// on a slow store; until 2026-11-30 uploads, lease renewals and the local retention waited
    /// for them) and taken again to name the new objects — only while the prefix is still held
    /// and the manifest still lists `old` for the segment; otherwise they are deleted and the
    /// rewrite refused. The log's rewrite lock (`rewrites`) is held throughout: no removal of
    /// the segment, nor another rewrite, runs meanwhile.
    ///
    /// A close (the uploader's `stop`) gives it up between batches of the read, during the
    /// upload, and before the naming — `LogError::Closed`, what went up deleted within half a
    /// second or left to `tidings tier gc` — so that `Log::close_by` waits for the rewrite lock
    /// at most a cold block read (`tier.read_timeout_ms`) or a manifest write already under way.
    async fn rewrite_remote(
        &self,
        state: tokio::sync::OwnedMutexGuard<PassState>,
        rewrites: tokio::sync::OwnedMutexGuard<()>,
        log: &crate::log::Log,
        (end, seg): (u64, Arc<Segment>),
        old: &RemoteSegment,
        replacements: std::collections::BTreeMap<u64, bytes::Bytes>,
    ) -> Result<crate::rewrite::RewriteStats> {
        let inner = &self.tier.inner;
        let base = old.base;
        if log.is_closed() {
            return Err(LogError::Closed);
        }
        if let Some(offset) = replacements.keys().find(|&&o| o < base || o >= end) {
            return Err(LogError::RewriteRefused {
                base,
                reason: format!(
                    "offset {offset} is not in the segment, which holds [{base}, {end})"
                ),
            });
        }
        drop(state);
        let tmp = purge_file(&self.dir, base);
        let vfs = log.options().vfs.clone();
        let (from, to) = (seg.clone(), tmp.clone());
        // The rewrite lock goes with the blocking write and comes back with it: a caller
        // dropped meanwhile (a stop) does not release it while the file is written.
        let tier = inner.clone();
        let stop = self.stop.clone();
        let (stats, rewrites) = tokio::task::spawn_blocking(move || {
            let write = || {
                crate::rewrite::write_rewrite(
                    vfs.as_ref(),
                    &from,
                    end,
                    &replacements,
                    &to,
                    Some(&stop),
                )
            };
            let mut stats = write();
            // Batches that fail their checks: as a read does (`Log::read_blocking`), the
            // cached blocks are dropped and the segment read once more from the store — the
            // damage may have come on the way and been cached (until 2026-12-03 the purge gave
            // its records up for good, the store's copy intact). Damaged again: damaged in the
            // store.
            if matches!(stats, Err(LogError::Corrupt { .. }))
                && tier.forget_damaged(&from.paths.log)
            {
                stats = write();
                if matches!(stats, Err(LogError::Corrupt { .. })) {
                    tier.damaged_in_store(&from.paths.log);
                }
            }
            (stats, rewrites)
        })
        .await
        .map_err(|_| LogError::Closed)?;
        let stem = self.rewrite_stem(base);
        // A close gives the upload up (until 2026-12-03 it waited for it, past its deadline,
        // for as long as the store client's timeouts and retries took): the objects written
        // so far are named by no version, and `tidings tier gc` collects them.
        let (uploaded, started) = match stats {
            Ok(stats) => (
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => Err(LogError::Closed),
                    r = self.upload_purged(old, &stem, &tmp) => r.map(|new| (stats, new)),
                },
                true,
            ),
            Err(e) => (Err(e), false),
        };
        if started && matches!(uploaded, Err(LogError::Closed)) {
            self.delete_unnamed(&stem).await;
        }
        if let Err(e) = std::fs::remove_file(&tmp)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %tmp.display(), error = %e, "could not remove a rewritten segment's temp file (the next pass does)");
        }
        let (stats, new) = uploaded?;
        // Dropped while waiting here (a stop), the uploaded objects stay unnamed: `tidings tier
        // gc` keeps them while this process may still name them, and collects them after its
        // release.
        let mut state = self.pass_lock.lock().await;
        // The upload ended as the close began: given up as well (no version written).
        if self.stop.is_cancelled() {
            self.delete_unnamed(&stem).await;
            return Err(LogError::Closed);
        }
        let refused = match self.not_holding(&state) {
            Some(reason) => Some(reason),
            None if !self.tier.manifest().segments.contains(old) => {
                Some("its entry in the object store's manifest changed meanwhile")
            }
            None => None,
        };
        if let Some(reason) = refused {
            self.delete_unnamed(&stem).await;
            return Err(LogError::RewriteRefused {
                base,
                reason: reason.into(),
            });
        }
        // A version whose write failed may still have landed (then they are named): left to
        // `tidings tier gc`, which keeps what a version names.
        // Its manifest write replaces the segment's value with one reading the new objects
        // (`Self::refresh_remote`), dropping the old value's cached handles.
        self.name_rewrite(&mut state, old, &new).await?;
        drop(rewrites);
        seg.forget_cached();
        // The old bytes leave this disk's block cache now (a purge), and the store a while
        // later (a reader holding the old segment may still fetch blocks of it).
        inner.forget_object(&old.key("log"), old.bytes);
        let now = std::time::Instant::now();
        state
            .doomed
            .extend(["log", "index", "timeindex"].map(|ext| (now, old.key(ext))));
        tracing::info!(base, records = stats.records, store = %inner.opts.display, "rewrote a segment only in the object store");
        Ok(stats)
    }

    /// Deletes the objects of a remote rewrite that no version names (given up, or refused)
    /// if the store answers within half a second — a close waits that long at most — else
    /// `tidings tier gc` collects them.
    async fn delete_unnamed(&self, stem: &str) {
        let deletes = async {
            for ext in ["log", "index", "timeindex"] {
                let _ = self.tier.delete(&RemoteSegment::key_of(stem, ext)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), deletes).await;
    }

    /// Deletes the objects remote rewrites replaced ([`PassState::doomed`]) that have waited
    /// [`DOOMED_AFTER`] (`all`: every one, at the release). A failed delete is said:
    /// `tidings tier gc` collects the object once the writer that uploaded it released the
    /// prefix.
    async fn delete_doomed(&self, state: &mut PassState, all: bool) {
        let now = std::time::Instant::now();
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut state.doomed)
            .into_iter()
            .partition(|(at, _)| all || now.duration_since(*at) >= DOOMED_AFTER);
        state.doomed = wait;
        for (_, key) in due {
            if let Err(e) = self.tier.delete(&key).await {
                tracing::warn!(key, error = %e, store = %self.tier.inner.opts.display, "could not delete an object a rewritten segment replaced; `tidings tier gc` collects it once the writer that uploaded it released the prefix");
            }
        }
    }

    /// Uploads the rewrite of the remote segment `old` from `tmp` under the rewrite's objects
    /// `stem`, its index objects copied: the entry that names them (not written here).
    async fn upload_purged(
        &self,
        old: &RemoteSegment,
        stem: &str,
        tmp: &Path,
    ) -> Result<RemoteSegment> {
        let inner = &self.tier.inner;
        for ext in ["index", "timeindex"] {
            let (from, to) = (
                store::key(inner, &old.key(ext)),
                store::key(inner, &RemoteSegment::key_of(stem, ext)),
            );
            inner
                .opts
                .store
                .copy(&from, &to)
                .await
                .map_err(|e| LogError::Tier(format!("copying {from} to {to}: {e}")))?;
        }
        let (bytes, crc32) =
            store::upload_object(inner, &RemoteSegment::key_of(stem, "log"), tmp).await?;
        if bytes != old.bytes {
            return Err(LogError::Tier(format!(
                "the rewritten segment at offset {} holds {bytes} bytes, its entry {}",
                old.base, old.bytes
            )));
        }
        Ok(RemoteSegment {
            crc32,
            object: Some(stem.to_owned()),
            ..old.clone()
        })
    }

    /// Writes a manifest version naming `new` in place of `old` (under the pass lock).
    async fn name_rewrite(
        &self,
        state: &mut PassState,
        old: &RemoteSegment,
        new: &RemoteSegment,
    ) -> Result<()> {
        let inner = &self.tier.inner;
        let mut next = self
            .tier
            .manifest()
            .next(&inner.opts.owner_id, store::now_ms());
        for e in next.segments.iter_mut().filter(|e| e.base == old.base) {
            *e = new.clone();
        }
        self.write(&next).await?;
        state.last_write_ms = store::now_ms();
        Ok(())
    }

    /// The stem of this process's next rewrite upload of the segment at `base`.
    fn rewrite_stem(&self, base: u64) -> String {
        let inner = &self.tier.inner;
        let generation = inner.rewrites.fetch_add(1, Ordering::Relaxed) + 1;
        RemoteSegment::rewrite_stem(base, inner.incarnation, generation)
    }

    /// Uploads the marked local copy of the segment at `base`, which the store holds under an
    /// older entry, under new objects ([`Self::rewrite_stem`]), writes a manifest version naming
    /// them in place of that entry, deletes the entry's objects and removes the marker. A copy
    /// whose CRC is the entry's drops the marker only (the store holds its bytes: a rename that
    /// never happened, a manifest version that landed); one that no longer is a local sealed
    /// segment listed in the store (removed, deleted, never uploaded) is left to the upload loop
    /// or dropped. A copy whose batches do not all check is damage, not a rewrite: not uploaded,
    /// and kept with its marker (the store's copy holds the replaced bytes: the local retention
    /// must not delete this copy and serve that one), the error returned; one of other offsets
    /// or size than its entry is another history (diverged).
    async fn upload_marked(&self, state: &mut PassState, base: u64) -> Result<()> {
        let inner = &self.tier.inner;
        let m = self.tier.manifest();
        let local = self.sealed_local().into_iter().find(|(b, _, _)| *b == base);
        let entry = m.segments.iter().find(|r| r.base == base).cloned();
        let (Some((_, end, seg)), Some(old)) = (local, entry) else {
            // Not uploaded yet: the upload loop takes it (under a stem of its own). Otherwise
            // nothing to do.
            let pending = self.sealed_local().iter().any(|(b, _, _)| *b == base)
                && base >= m.start.unwrap_or(0);
            if !pending {
                set_marker(&self.dir, base, false)?;
            }
            return Ok(());
        };
        let len = seg.sealed_len()?;
        if end != old.end || len != old.bytes {
            tracing::error!(base, store = %inner.opts.display, "a rewritten local segment has other offsets or size than the object store's segment at its base: another history of this log; tiering stops");
            inner.diverged.store(true, Ordering::Relaxed);
            return Err(LogError::Tier(DIVERGED.into()));
        }
        let path = SegmentPaths::new(&self.dir, base).log;
        // Each long step renews the lease when due, as an upload does (`renewing`): a pass
        // re-uploading several rewritten copies let it lapse.
        let crc = self.renewing(state, self.local_crc(&path)).await?;
        if crc == old.crc32 {
            state.confirmed.insert((base, crc));
            return set_marker(&self.dir, base, false);
        }
        // A rewrite is checked before its rename, and a crash leaves the old file or the new
        // one whole: a copy that does not check is damage since, and the store's copy stays.
        let checking = seg.clone();
        let check = async {
            tokio::task::spawn_blocking(move || checking.check(len))
                .await
                .map_err(|_| LogError::Closed)
        };
        let checked = self.renewing(state, check).await?;
        // Damage only: another failure (a descriptor short, a read error) is tried again at
        // the next pass, as any other failure of this step.
        if let Err(e @ LogError::Corrupt { .. }) = checked {
            // Kept, with its marker: the store's copy holds what the rewrite replaced (a
            // recalled message's words), and with the marker gone the local retention would
            // delete this copy and serve that one in its place (until 2026-12-03 it did).
            tracing::error!(base, error = %e, store = %inner.opts.display, "a local segment marked for re-upload after a rewrite is damaged: not uploaded, and kept with its marker (the object store's copy still holds the bytes the rewrite replaced and is not served in its place); the local retention stops at it until it is repaired (README, \"A damaged rewritten segment\")");
            state.damaged_marked.insert(base);
            return Err(e);
        }
        checked?;
        let upload = store::upload_segment_as(inner, &self.dir, base, end, self.rewrite_stem(base));
        let new = self.renewing(state, upload).await?;
        if new.crc32 != crc || new.bytes != len {
            return Err(LogError::Tier(format!(
                "the rewritten segment at offset {base} changed during its upload"
            )));
        }
        let mut next = self
            .tier
            .manifest()
            .next(&inner.opts.owner_id, store::now_ms());
        for e in next.segments.iter_mut().filter(|e| e.base == base) {
            *e = new.clone();
        }
        self.write(&next).await?;
        state.last_write_ms = store::now_ms();
        state.confirmed.insert((base, new.crc32));
        inner.forget_object(&old.key("log"), old.bytes);
        for ext in ["log", "index", "timeindex"] {
            let key = old.key(ext);
            if let Err(e) = self.tier.delete(&key).await {
                tracing::warn!(key, error = %e, store = %inner.opts.display, "could not delete an object a rewritten segment replaced; `tidings tier gc` collects it once the writer that uploaded it released the prefix");
            }
        }
        set_marker(&self.dir, base, false)?;
        tracing::info!(base, store = %inner.opts.display, "uploaded a rewritten segment in place of its earlier objects");
        Ok(())
    }

    /// Finishes what rewrites left ([`Self::rewrite`]: an error, a stop, a crash), each marker
    /// on its own ([`Self::upload_marked`]): one that fails is said and stays for the next pass,
    /// and the pass goes on (its uploads, lease and local retention do not wait for it).
    async fn finish_reuploads(&self, state: &mut PassState) -> Result<()> {
        // Not while a rewrite runs: a rewrite of a segment only in the store no longer holds
        // the pass lock while it writes and uploads its temp file.
        if let Ok(_rewriting) = self.rewrites.try_lock() {
            remove_purge_files(&self.dir)?;
        }
        for base in pending_reuploads(&self.dir)? {
            if state.damaged_marked.contains(&base) {
                continue;
            }
            if let Err(e) = self.upload_marked(state, base).await {
                if self.tier.inner.diverged.load(Ordering::Relaxed) {
                    return Err(e);
                }
                tracing::warn!(base, error = %e, "could not finish the upload of a rewritten segment; the next pass tries again");
            }
        }
        Ok(())
    }

    /// Gives the prefix up (a graceful close): a version whose heartbeat is 0, so that another
    /// server may claim it at once instead of waiting for the lease to run out.
    pub(crate) async fn release(&self) -> Result<()> {
        let mut state = self.pass_lock.lock().await;
        // Given up before anything else, whatever comes of the release (an error, the close's
        // deadline dropping this future): a removal or a remote rewrite waiting for this lock
        // writes no version after it, which would renew the lease a successor then waits out
        // (or undo a release version that landed unanswered).
        let claimed = std::mem::replace(&mut state.claimed, false);
        state.released = true;
        if self.tier.inner.fenced.load(Ordering::Relaxed) {
            return Ok(());
        }
        // A manifest write of this process's that the close cut short (a pass claiming, or
        // writing the version naming a segment it uploaded) may have landed: unclaimed, the
        // store's newest version is read; claimed, such a version found at the release's epoch
        // is released in turn (until 2026-11-30 it was taken for another writer's: fenced, the
        // lease left live).
        self.delete_doomed(&mut state, true).await;
        let known = claimed.then(|| self.tier.manifest());
        store::release_own(&self.tier.inner, known).await?;
        if claimed {
            write_local_manifest(&self.dir, &self.tier.manifest())?;
        }
        Ok(())
    }

    pub(crate) async fn write(&self, next: &Manifest) -> Result<()> {
        match store::write_manifest(&self.tier.inner, next).await? {
            Written::Ok => {
                self.refresh_remote();
                write_local_manifest(&self.dir, &self.tier.manifest())
            }
            Written::Fenced(theirs) => {
                tracing::error!(
                    owner = %theirs.owner.id,
                    store = %self.tier.inner.opts.display,
                    "another server wrote the tier manifest: this server stops uploading, and its log takes no more appends (503 fenced) until a restart"
                );
                Err(LogError::Fenced {
                    owner: theirs.owner.id,
                    seen_ms_ago: store::now_ms().saturating_sub(theirs.owner.heartbeat_ms),
                    store: self.tier.inner.opts.display.clone(),
                })
            }
        }
    }

    /// Replaces each remote segment value whose objects are no longer its entry's (a rewrite's
    /// version adopted from the store: one of this process's that landed unanswered, or read
    /// at a claim) with one reading the entry's, dropping what the old value cached. A reader
    /// holding an old value reads on ([`TierInner::retired`]).
    ///
    /// [`TierInner::retired`]: super::TierInner::retired
    fn refresh_remote(&self) {
        let m = self.tier.manifest();
        // One lookup per segment (a manifest of 10,000 segments is written every lease
        // renewal).
        let stems: std::collections::HashMap<u64, String> =
            m.segments.iter().map(|e| (e.base, e.stem())).collect();
        let stale = |s: &Arc<Segment>| {
            s.is_remote()
                && stems.get(&s.base).is_some_and(|stem| {
                    s.paths.log.file_stem().and_then(|n| n.to_str()) != Some(stem.as_str())
                })
        };
        let old = self.segments.load();
        if !old.iter().any(stale) {
            return;
        }
        self.segments.rcu(|segs| {
            segs.iter()
                .map(|s| {
                    if stale(s) {
                        remote_segment(&self.tier, &self.dir, s.base, self.interval)
                    } else {
                        s.clone()
                    }
                })
                .collect::<Vec<_>>()
        });
        for s in old.iter().filter(|s| stale(s)) {
            tracing::debug!(base = s.base, store = %self.tier.inner.opts.display, "the segment is read from the objects its manifest entry names now (a rewrite's)");
            s.forget_cached();
        }
    }

    fn set_lag(&self, pending: &[(u64, u64, Arc<Segment>)]) {
        let bytes = pending
            .iter()
            .map(|(_, _, s)| s.sealed_len().unwrap_or(0))
            .sum();
        *self
            .tier
            .inner
            .lag
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = (pending.len(), bytes);
    }

    /// Whether the store holds this local sealed segment: an entry with its base, end and
    /// size. An entry with its base but other offsets or another size is another history of
    /// this log (another node wrote the prefix after this directory's data was made): an
    /// error that stops the tier — nothing more is uploaded and no local copy is deleted.
    fn in_store(&self, m: &Manifest, (base, end, seg): &(u64, u64, Arc<Segment>)) -> Result<bool> {
        let Some(r) = m.segments.iter().find(|r| r.base == *base) else {
            return Ok(false);
        };
        let len = seg.sealed_len()?;
        if r.end == *end && r.bytes == len {
            return Ok(true);
        }
        tracing::error!(
            base,
            end,
            bytes = len,
            store_end = r.end,
            store_bytes = r.bytes,
            store = %self.tier.inner.opts.display,
            "a local segment differs from the object store's segment at its base: another history of this log; tiering stops (no uploads, no local deletion)"
        );
        self.tier.inner.diverged.store(true, Ordering::Relaxed);
        Err(LogError::Tier(DIVERGED.into()))
    }

    /// The local sealed segments the retention no longer needs, oldest first. What stays local
    /// is one run of the newest sealed segments, up to the active one: from the first segment
    /// (newest first) that does not fit the byte budget, is too old, or is remote already,
    /// every older local copy goes too. The local segments are then a suffix of the log, which
    /// is all a read-only view (`tidings replay`, `inspect`, `verify`) reads. Until 2026-11-30
    /// each segment was judged alone, so a short old one (segment 0 often holds a few records)
    /// stayed local below newer remote ones, and those tools met a hole after it. A hole left
    /// by an older build is closed the same way: the remote segment in it cuts the run.
    fn beyond_retention(&self) -> Vec<(u64, u64, Arc<Segment>)> {
        let opts = &self.tier.inner.opts;
        let now = SystemTime::now();
        let (mut kept, mut cut) = (0u64, false);
        let mut out = Vec::new();
        for sealed_seg in self.sealed().into_iter().rev() {
            let (_, _, seg) = &sealed_seg;
            if seg.is_remote() {
                cut = true;
                continue;
            }
            let len = seg.sealed_len().unwrap_or(0);
            cut = cut || kept + len > opts.local_retention_bytes || self.too_old(seg, len, now);
            if cut {
                out.push(sealed_seg);
            } else {
                kept += len;
            }
        }
        out.reverse();
        out
    }

    /// Deletes the local copies of uploaded segments the retention no longer needs
    /// ([`Self::beyond_retention`]), oldest first, so that what is left is a suffix of the log
    /// at every step (a read-only view looking meanwhile meets no hole).
    async fn retention(&self, state: &mut PassState) -> Result<()> {
        let opts = &self.tier.inner.opts;
        let m = self.tier.manifest();
        let mut gone = self.beyond_retention();
        // Left of a removal cut short (see `pass`): not in the store, and not in the way of
        // the local deletion of those that are.
        gone.retain(|(base, _, _)| *base >= m.start.unwrap_or(0));
        for sealed_seg in &gone {
            let (base, _, seg) = sealed_seg;
            // Not uploaded: sealed after this pass's uploads (so newer than every uploaded
            // one); it and everything newer stay until a later pass. Nor a rewritten copy whose
            // new bytes are not in the store yet (its CRC is not the entry's).
            if !self.in_store(&m, sealed_seg)? || reupload_marker(&self.dir, *base).exists() {
                break;
            }
            let paths = SegmentPaths::new(&self.dir, *base);
            // Base, end and size matched; the bytes must too before the local copy goes (two
            // histories can hold batches of the same sizes). Read once per segment and process.
            let crc = m
                .segments
                .iter()
                .find(|r| r.base == *base)
                .map_or(0, |r| r.crc32);
            if !state.confirmed.contains(&(*base, crc)) {
                // Renewing when due: after a restart nothing is confirmed, and reading every
                // copy the retention lets go of (a lowered bound: hundreds) let the lease lapse.
                let local = self.renewing(state, self.local_crc(&paths.log)).await?;
                if local != crc {
                    tracing::error!(
                        base,
                        local_crc = local,
                        store_crc = crc,
                        store = %opts.display,
                        "a local segment holds other bytes than the object store's segment at its base: another history of this log; tiering stops (no uploads, no local deletion)"
                    );
                    self.tier.inner.diverged.store(true, Ordering::Relaxed);
                    return Err(LogError::Tier(DIVERGED.into()));
                }
                state.confirmed.insert((*base, crc));
            }
            // Uploaded, confirmed, in the manifest, and not needed locally: readers switch to
            // the remote copy first; open file handles keep the local bytes readable until the
            // last reader lets go. A sealed segment opens its file on use and the cache of
            // sealed segments may close it, so it is opened and pinned to the segment here,
            // before the unlink: a reader still holding the old segment list would otherwise
            // open it after the unlink and fail with "not found".
            seg.pin_file()?;
            let remote = remote_segment(&self.tier, &self.dir, *base, self.interval);
            self.segments.rcu(|segs| {
                segs.iter()
                    .map(|s| {
                        if s.base == *base {
                            remote.clone()
                        } else {
                            s.clone()
                        }
                    })
                    .collect::<Vec<_>>()
            });
            // The index files stay: cold reads then need no GET for them (see `TierVfs`).
            if let Err(e) = std::fs::remove_file(&paths.log)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(LogError::io("remove", &paths.log, e));
            }
            self.tier
                .inner
                .counters
                .local_deletes
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(base, "deleted the local copy of an uploaded segment");
        }
        Ok(())
    }
}

impl Uploader {
    /// Whether the local sealed segment `seg` (of `len` bytes) is older than the local
    /// retention's age: by the time of its newest record ([`Segment::last_timestamp`]). Until
    /// 2026-12-03 the file's modification time, which a purge's rewrite of the segment resets:
    /// a purged segment stayed local for another whole age. A segment whose batches cannot be
    /// read (damage, named by the reads) goes by its file's time still.
    fn too_old(&self, seg: &Segment, len: u64, now: SystemTime) -> bool {
        let Some(age) = self.tier.inner.opts.local_retention_age else {
            return false;
        };
        let newest = match seg.last_timestamp(len) {
            Ok(Some(ms)) => Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
            Ok(None) | Err(_) => std::fs::metadata(&seg.paths.log)
                .and_then(|md| md.modified())
                .ok(),
        };
        newest
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|d| d > age)
    }

    /// CRC-32 of a local file, read on the blocking pool.
    async fn local_crc(&self, path: &Path) -> Result<u32> {
        let p = path.to_path_buf();
        tokio::task::spawn_blocking(move || -> std::io::Result<u32> {
            use std::io::Read;
            let mut f = std::fs::File::open(&p)?;
            let mut h = crc32fast::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match f.read(&mut buf)? {
                    0 => return Ok(h.finalize()),
                    n => h.update(&buf[..n]),
                }
            }
        })
        .await
        .map_err(|e| LogError::Tier(format!("checksum task: {e}")))?
        .map_err(|e| LogError::io("read", path, e))
    }
}

/// How many of the oldest sealed segments `sealed` — (base, end, only in the store), oldest
/// first — a removal before `offset` takes from a log whose store's manifest is `m`: the
/// longest run that ends at or before `offset` (or at the store's start, whatever `offset` is:
/// what lies below it expired) and is in the store — remote, listed with the same offsets, or
/// left below the store's start. A segment not uploaded yet ends the run.
fn removable_run(sealed: &[(u64, u64, bool)], m: &Manifest, offset: u64) -> usize {
    let start = m.start.unwrap_or(0);
    let offset = offset.max(start);
    sealed
        .iter()
        .take_while(|&&(base, end, remote)| {
            end <= offset
                && (remote
                    || end <= start
                    || m.segments.iter().any(|r| r.base == base && r.end == end))
        })
        .count()
}

/// Why a diverged tier refuses to go on.
const DIVERGED: &str = "the object store holds another history of this log than the local segments, or lacks offsets the local segments no longer hold: uploads and local deletion stopped (see the server log)";

/// How long to wait for the store at open before using the local manifest copy.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::manifest::RemoteSegment;

    fn entry(base: u64, end: u64) -> RemoteSegment {
        RemoteSegment::of_offsets(base, end)
    }

    /// Only segments in the store go: remote ones, local copies listed with their offsets, and
    /// what a removal cut short left below the store's start; the first one not uploaded (or
    /// listed with other offsets) ends the run, and so does the offset.
    #[test]
    fn a_removal_takes_the_oldest_run_the_store_holds() {
        let mut m = Manifest::new("a", 0);
        m.segments = vec![entry(0, 10), entry(10, 20), entry(20, 30)];
        let sealed = [
            (0, 10, true),
            (10, 20, true),
            (20, 30, false),
            (30, 40, false),
            (40, 50, false),
        ];
        assert_eq!(removable_run(&sealed, &m, 9), 0);
        assert_eq!(removable_run(&sealed, &m, 10), 1);
        assert_eq!(removable_run(&sealed, &m, 25), 2);
        // The local copy of [20, 30) is listed: it goes; [30, 40) is not uploaded: it stays,
        // and so does everything after it.
        assert_eq!(removable_run(&sealed, &m, u64::MAX), 3);
        // Listed with other offsets: not this segment, not known to be in the store.
        m.segments[2] = entry(20, 31);
        assert_eq!(removable_run(&sealed, &m, u64::MAX), 2);
        // A removal cut short: the store starts at 30, the local copies below it are left.
        let mut m = Manifest::new("a", 0);
        m.segments = vec![entry(30, 40)];
        m.remove_before(30);
        let left = [(20, 30, false), (30, 40, false), (40, 50, false)];
        // Below the start whatever the offset asked for; then up to the offset.
        assert_eq!(removable_run(&left, &m, 0), 1);
        assert_eq!(removable_run(&left, &m, 40), 2);
        assert_eq!(removable_run(&left, &m, u64::MAX), 2);
    }
}
