//! Object-store operations: manifest versions, ownership, uploads, whole-file transfers.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use super::TierInner;
use super::manifest::{Manifest, RemoteSegment};
use crate::error::{LogError, Result};
use crate::segment::SegmentPaths;

/// Uploads up to this size are one PUT; larger ones are multipart in parts of this size.
const PART: usize = 8 << 20;
/// Manifest versions kept (older ones are deleted; `tidings tier gc` keeps as many).
pub(crate) const KEEP_VERSIONS: usize = 20;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn key(inner: &TierInner, rel: &str) -> ObjectPath {
    if inner.opts.prefix.as_ref().is_empty() {
        ObjectPath::from(rel)
    } else {
        ObjectPath::from(format!("{}/{rel}", inner.opts.prefix))
    }
}

fn err(inner: &TierInner, what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Tier(format!("{what} ({}): {e}", inner.opts.display))
}

/// [`err`] of a store's answer, but one refusing the credentials (HTTP 401 / 403, or S3's
/// `ExpiredToken` / `InvalidToken`) is
/// [`LogError::TierAccessDenied`], and one naming no bucket (`NoSuchBucket`,
/// `InvalidBucketName`) [`LogError::TierNoBucket`]: waiting does not mend them (a missing
/// bucket was said to be a store that "did not answer"). `object_store` gives most S3
/// calls' refusals as a generic error whose text carries the status (its retry error, which
/// has it, is not public), so the text is read too.
fn store_err(inner: &TierInner, what: &str, e: object_store::Error) -> LogError {
    let denied = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || {
        // 401 / 403, and S3's 400s for a session token that expired or is not one.
        let text = e.to_string();
        [
            "status code: 403",
            "status code: 401",
            "ExpiredToken",
            "InvalidToken",
        ]
        .iter()
        .any(|mark| text.contains(mark))
    };
    let no_bucket = {
        let text = e.to_string();
        text.contains("NoSuchBucket") || text.contains("InvalidBucketName")
    };
    if denied {
        LogError::TierAccessDenied(format!("{what} ({}): {e}", inner.opts.display))
    } else if no_bucket {
        LogError::TierNoBucket(format!("{what} ({}): {e}", inner.opts.display))
    } else {
        err(inner, what, e)
    }
}

/// A manifest version at `path` (`bytes`) that does not decode ([`LogError::TierDamaged`]:
/// until 2026-12-03 an outage, which a start opened past and every pass retried for ever). One
/// of a newer build's format is no damage: removing it would drop what it names.
fn damaged(
    inner: &TierInner,
    path: &ObjectPath,
    bytes: &[u8],
    e: impl std::fmt::Display,
) -> LogError {
    let newer = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64))
        .filter(|&v| v > u64::from(Manifest::VERSION));
    let what = match newer {
        Some(v) => format!(
            "it is of manifest format {v}, which a newer build of tidings writes (this one reads up to {}): run that build, or a newer one",
            Manifest::VERSION
        ),
        None => format!(
            "{e}: it is damaged; remove that object to go on from the version before it (the segments only it names are uploaded again, or collected by `tidings tier gc`), or put back an intact copy"
        ),
    };
    LogError::TierDamaged(format!("{path} ({}): {what}", inner.opts.display))
}

async fn timed<T>(
    inner: &TierInner,
    what: &str,
    fut: impl Future<Output = object_store::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(inner.opts.read_timeout, fut).await {
        Ok(r) => r.map_err(|e| store_err(inner, what, e)),
        Err(_) => Err(err(inner, what, "timed out")),
    }
}

/// The latest manifest version in the store, if any.
pub(crate) async fn latest_manifest(inner: &TierInner) -> Result<Option<Manifest>> {
    match latest_epoch(inner).await? {
        Some(epoch) => manifest_at(inner, epoch).await.map(Some),
        None => Ok(None),
    }
}

/// The highest manifest epoch in the store (one listing), if any.
async fn latest_epoch(inner: &TierInner) -> Result<Option<u64>> {
    let dir = key(inner, "manifest");
    let metas: Vec<_> = timed(inner, "listing the manifest", async {
        let mut out = Vec::new();
        let mut stream = inner.opts.store.list(Some(&dir));
        while let Some(m) = stream.next().await {
            out.push(m?);
        }
        Ok(out)
    })
    .await?;
    Ok(metas
        .iter()
        .filter(|m| is_child(&dir, &m.location))
        .filter_map(|m| m.location.filename().and_then(Manifest::epoch_of))
        .max())
}

/// Whether `location` is directly in `dir`. A listing is recursive, and another log's prefix
/// may lie below this one's directories (`{prefix}/manifest/x`): its files are not ours.
pub fn is_child(dir: &object_store::path::Path, location: &object_store::path::Path) -> bool {
    location
        .prefix_match(dir)
        .is_some_and(|mut rest| rest.next().is_some() && rest.next().is_none())
}

/// Manifest version `epoch`.
async fn manifest_at(inner: &TierInner, epoch: u64) -> Result<Manifest> {
    let path = key(inner, &Manifest::key(epoch));
    let bytes = timed(inner, "reading the manifest", async {
        inner.opts.store.get(&path).await?.bytes().await
    })
    .await?;
    Manifest::decode_at(&bytes, epoch).map_err(|e| damaged(inner, &path, &bytes, e))
}

/// What writing a manifest version came to.
pub(crate) enum Written {
    Ok,
    /// Another writer created that version first.
    Fenced(Manifest),
}

/// How many versions in a row may turn out to be our own earlier writes (see below) before
/// writing the manifest gives up for this pass.
const MAX_OWN_VERSIONS: u32 = 8;

/// Creates manifest version `m.epoch` (create-if-absent), its owner marked with this process's
/// incarnation and lease.
///
/// A version that already exists is another writer's (we are fenced) unless it is this
/// process's (same owner id and incarnation) and every segment it lists is one `m` lists too:
/// then it is an earlier write of ours whose
/// answer never came (it timed out but landed, and the uploader tried again from the version
/// before it). That version is adopted and `m`'s content is written as the next one, so a slow
/// store no longer fences its own owner until restart.
pub(crate) async fn write_manifest(inner: &TierInner, m: &Manifest) -> Result<Written> {
    let mut m = m.clone();
    m.owner.incarnation = Some(inner.incarnation);
    m.owner.lease_ms = Some(inner.opts.lease_ms());
    // Never a version no reader could decode (entries overlapping, out of order, below the
    // start): once written, every later start, restore and gc would refuse the prefix as
    // damaged. Refused here, before the store sees it, naming what is wrong.
    if let Err(why) = Manifest::decode(&m.encode()) {
        return Err(LogError::Tier(format!(
            "refusing to write manifest version {} to {}: it would not decode ({why})",
            m.epoch, inner.opts.display
        )));
    }
    let mut own = 0;
    loop {
        match put_manifest(inner, &m).await? {
            // Created — yet a newer version may exist: fencing rests on the next version
            // being there, and an owner that took over long ago prunes its oldest versions
            // (a stale owner's create of a pruned one succeeds). Any newer version is
            // another writer's (this process writes one version after the other).
            Put::Written => match latest_epoch(inner).await? {
                Some(newer) if newer > m.epoch => {
                    inner.fenced.store(true, Ordering::Relaxed);
                    return Ok(Written::Fenced(manifest_at(inner, newer).await?));
                }
                _ => break,
            },
            Put::Exists(t) if t == m => break,
            // This process's own (same id and incarnation: another process under the same
            // id — a node cloned with its data directory — stays fenced), and its segments fit
            // with `m`'s: `m` is written next with what that version holds and `m` lacks.
            Put::Exists(t)
                if t.owner.id == m.owner.id && t.owner.incarnation == m.owner.incarnation =>
            {
                let Some(merged) = merge_own(&m, &t, &inner.manifest.load()) else {
                    inner.fenced.store(true, Ordering::Relaxed);
                    return Ok(Written::Fenced(t));
                };
                if own == MAX_OWN_VERSIONS {
                    return Err(err(
                        inner,
                        "writing the manifest",
                        "too many versions already written by this node",
                    ));
                }
                tracing::warn!(
                    epoch = t.epoch,
                    store = %inner.opts.display,
                    "manifest version already written by this node (an earlier write that timed out landed); writing the next"
                );
                own += 1;
                m = merged;
                m.epoch = t.epoch + 1;
                inner.set_manifest(t);
            }
            Put::Exists(t) => {
                inner.fenced.store(true, Ordering::Relaxed);
                return Ok(Written::Fenced(t));
            }
        }
    }
    inner
        .counters
        .manifest_writes
        .fetch_add(1, Ordering::Relaxed);
    inner.set_manifest(m.clone());
    prune_versions(inner, m.epoch).await;
    Ok(Written::Ok)
}

/// `m` with what `t` — a version this process wrote whose answer never came — holds and `m`
/// lacks: the later start of the two (a removal that landed: the entries below it are not
/// listed again; their objects may be deleted), and `t`'s segments at or past it (an upload that
/// landed). `None` when the two do not fit together (an entry of `t` overlapping one of `m`'s
/// with other offsets): not a version this process could have written before `m`.
///
/// An entry of `t` with the offsets of one of `m`'s but other objects is a rewrite's (a purge
/// naming its upload in place of the entry, `Uploader::rewrite`). Both `m` and `t` were made
/// from `known`, the version this process last knew: the one that changed the entry is the
/// newer, and `t`'s wins when `m`'s is `known`'s. Until 2026-12-03 `m`'s always stayed: a
/// rewrite's version that landed unanswered was followed by one naming the objects it
/// replaced again, and `tidings tier gc` run between the two (the newest version not naming
/// them, an earlier process's upload) deleted them: a manifest naming objects the store no
/// longer held.
///
/// Until 2026-11-30 `t` was adopted only when `m` listed every segment of `t`, which was all a
/// process that never removed entries could write; a removal's version that landed unanswered
/// would then have been written again with the removed entries.
pub(crate) fn merge_own(m: &Manifest, t: &Manifest, known: &Manifest) -> Option<Manifest> {
    let mut merged = m.clone();
    for s in &t.segments {
        // The same offsets: the same entry, or under other objects (one of the two replaced
        // the other; the objects of both are still in the store: the old ones are deleted only
        // after a version naming the new ones was answered).
        if let Some(o) = merged
            .segments
            .iter_mut()
            .find(|o| o.base == s.base && o.end == s.end)
        {
            if known.segments.contains(o) {
                *o = s.clone();
            }
            continue;
        }
        if merged
            .segments
            .iter()
            .any(|o| o.base < s.end && s.base < o.end)
        {
            return None;
        }
        merged.segments.push(s.clone());
    }
    merged.segments.sort_by_key(|s| s.base);
    // The later start of the two: neither `m`'s removed entries nor `t`'s come back.
    if let Some(start) = m.start.max(t.start) {
        merged.remove_before(start);
    }
    Some(merged)
}

/// What one create-if-absent of a manifest version came to.
enum Put {
    Written,
    /// The version exists; what it holds.
    Exists(Manifest),
}

async fn put_manifest(inner: &TierInner, m: &Manifest) -> Result<Put> {
    let path = key(inner, &Manifest::key(m.epoch));
    let opts = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let put = tokio::time::timeout(
        inner.opts.read_timeout,
        inner
            .opts
            .store
            .put_opts(&path, PutPayload::from(m.encode()), opts),
    )
    .await;
    match put {
        Ok(Ok(_)) => Ok(Put::Written),
        Ok(Err(object_store::Error::AlreadyExists { .. })) => {
            let theirs = timed(inner, "reading the manifest", async {
                inner.opts.store.get(&path).await?.bytes().await
            })
            .await?;
            Manifest::decode_at(&theirs, m.epoch)
                .map(Put::Exists)
                .map_err(|e| damaged(inner, &path, &theirs, e))
        }
        Ok(Err(e)) => Err(store_err(inner, "writing the manifest", e)),
        Err(_) => Err(err(inner, "writing the manifest", "timed out")),
    }
}

/// Deletes manifest versions older than the newest [`KEEP_VERSIONS`] (best effort).
async fn prune_versions(inner: &TierInner, newest: u64) {
    if newest < KEEP_VERSIONS as u64 {
        return;
    }
    let old = newest - KEEP_VERSIONS as u64;
    if !old.is_multiple_of(10) {
        return; // prune in steps, not on every write
    }
    for e in old.saturating_sub(10)..=old {
        let _ = inner
            .opts
            .store
            .delete(&key(inner, &Manifest::key(e)))
            .await;
    }
}

/// What a claim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The prefix is this process's.
    Taken,
    /// The store holds another history of this log ([`holds_history`]): nothing was written
    /// there (no lease taken from its owner, whose lease may only look lapsed), and tiering
    /// stops.
    Diverged,
    /// Another process under this node id holds a live lease: this node restarted after a
    /// crash within the lease, or its data directory was cloned and the other copy runs. Only
    /// waiting tells them apart — a crashed process writes no more, a running one renews —
    /// so the claim is made once that lease has lapsed, and refused (fenced) if the other
    /// process writes meanwhile. Until then nothing is uploaded or deleted.
    Waiting {
        /// When the other process last wrote.
        seen_ms_ago: u64,
    },
}

/// What the log directory holds, as a claim checks the store against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalStart {
    /// The first offset of the directory's oldest segment: the offsets before it are only in
    /// the store (deleted here once uploaded), or nowhere (removed by hand before tiering).
    pub(crate) first: u64,
    /// The first offset of the directory's newest segment (the active one): this log's own
    /// store never ends past it ([`holds_history`]).
    pub(crate) active: u64,
    /// Where the history this directory tiered before starts, by its local manifest copy.
    pub(crate) tiered: Tiered,
    /// Where that copy's history ends (its uploads' end, or the start its removals set; 0
    /// without a copy): every offset this directory's own tiering put in the store, or removed
    /// from it, is below. `None` when the copy cannot be read.
    pub(crate) own_end: Option<u64>,
}

/// Where the history a log directory tiered before starts, by its local manifest copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tiered {
    /// No copy, or one listing no segment: the directory never uploaded a segment.
    Never,
    /// The base of the first segment its copy lists.
    From(u64),
    /// A copy that cannot be read: the directory tiered, from where is not known.
    Unknown,
}

/// Takes ownership of the prefix: refused while another owner's lease is live; waits out
/// the lease of another process under this node id ([`Claim::Waiting`]). A lease is live for
/// the longer of the owner's recorded lease and this process's ([`Owner::lease_ms_for`]): the
/// owner renews by its own, so one set longer than ours is still held after ours ran out.
///
/// Refused first ([`LogError::HistoryNotInStore`]) when the log directory's oldest segment
/// (`local`) starts past offsets the store does not hold ([`holds_history`]): that store is
/// not this log's, and nothing is written to it. `None`: the directory holds no record (a
/// restore starts at the store's end).
///
/// [`Owner::lease_ms_for`]: super::manifest::Owner::lease_ms_for
pub(crate) async fn claim(
    inner: &TierInner,
    local: Option<LocalStart>,
    own_history: Option<u64>,
) -> Result<Claim> {
    let me = &inner.opts.owner_id;
    let now = now_ms();
    let latest = latest_manifest(inner).await?;
    // Another log's prefix (another node's, or one another log took over): refused whatever
    // the directory holds — records whose offsets may line up with the store's (until
    // 2026-12-03 they were taken for its own: the directory read the store's segments as its
    // history, and lost its own records below its oldest local segment from view), or none
    // (it restored the other log's history as its own, setting its own snapshots aside).
    // `own_history` is the directory's manifest copy's ([`Manifest::history`]).
    if let (Some(theirs), Some(ours)) = (latest.as_ref().and_then(|m| m.history), own_history)
        && theirs != ours
    {
        return Err(LogError::StoreHoldsAnotherLog {
            store: inner.opts.display.clone(),
            ours,
            theirs,
        });
    }
    if let Some(local) = local {
        holds_history(inner, latest.as_ref(), local)?;
    }
    let mut next = match latest {
        None => Manifest::new(me, now),
        Some(m) => {
            let age = now.saturating_sub(m.owner.heartbeat_ms);
            let lease_ms = m.owner.lease_ms_for(inner.opts.lease_ms());
            if &m.owner.id != me && age < lease_ms {
                return Err(LogError::Fenced {
                    owner: m.owner.id,
                    seen_ms_ago: age,
                    store: inner.opts.display.clone(),
                });
            }
            let other_process =
                &m.owner.id == me && m.owner.incarnation.is_some_and(|i| i != inner.incarnation);
            if other_process {
                let mut seen = inner.predecessor.lock().unwrap_or_else(|p| p.into_inner());
                // It wrote again since this process first saw it: it runs (a crashed process
                // writes nothing more). Checked before the lease's age: a running copy that
                // stopped cleanly meanwhile left a released lease, which is no invitation.
                if seen.is_some_and(|epoch| m.epoch > epoch) {
                    inner.fenced.store(true, Ordering::Relaxed);
                    tracing::error!(
                        node = %me,
                        store = %inner.opts.display,
                        "another process under this node id is writing to the prefix (a copy of this data directory?); this log stops tiering"
                    );
                    return Err(LogError::Fenced {
                        owner: m.owner.id,
                        seen_ms_ago: age,
                        store: inner.opts.display.clone(),
                    });
                }
                if age < lease_ms {
                    seen.get_or_insert(m.epoch);
                    inner.set_manifest(m);
                    return Ok(Claim::Waiting { seen_ms_ago: age });
                }
            }
            inner.set_manifest(m.clone());
            m.next(me, now)
        }
    };
    // Another history ([`holds_history`]), and nobody to wait for or be fenced by: no version
    // is written there. Writing one took the lease of an owner whose lease only looked lapsed
    // (a partition, a clock), fencing it at its next write, while this log never renewed it
    // (its passes stop at the divergence).
    if inner.diverged.load(Ordering::Relaxed) {
        return Ok(Claim::Diverged);
    }
    // A prefix's history id is set by its first claim, or by the first by a build that knows
    // it: the directory's own when its copy has one (a version an older build wrote after
    // this one dropped it; minting another then refused every directory whose copy kept the
    // first), else a new one.
    if next.history.is_none() {
        next.history = Some(own_history.unwrap_or_else(super::incarnation));
    }
    match write_manifest(inner, &next).await? {
        Written::Ok => {
            inner.fenced.store(false, Ordering::Relaxed);
            inner.claimed.store(true, Ordering::Relaxed);
            *inner.predecessor.lock().unwrap_or_else(|p| p.into_inner()) = None;
            Ok(Claim::Taken)
        }
        Written::Fenced(t) => Err(LogError::Fenced {
            owner: t.owner.id,
            seen_ms_ago: now_ms().saturating_sub(t.owner.heartbeat_ms),
            store: inner.opts.display.clone(),
        }),
    }
}

/// Whether the store's manifest `m` (`None`: the store holds no manifest) holds every offset
/// the log directory `local` no longer holds: those before its oldest segment must be in the
/// store, or they are nowhere.
///
/// The store's history starts at its first segment (a directory whose oldest segment was past
/// 0 when it first tiered uploads from there), or at the start a removal (the retention) set
/// ([`Manifest::history_start`]): from it up to the oldest local segment, no offset may be
/// missing. A store holding no segment that nothing was removed from says nothing of where
/// the history starts: it is refused only when this directory tiered before (its manifest copy lists
/// segments, so its older offsets went to another store), and taken by a directory that never
/// tiered, whatever its first offset (its older segments, if any, were removed by hand: the
/// store's history starts here). Until 2026-11-30 every store was judged from offset 0, and a
/// store whose history starts later was refused at every start.
fn holds_history(inner: &TierInner, m: Option<&Manifest>, local: LocalStart) -> Result<()> {
    // A store ending past where the directory's active segment starts holds what this log
    // never sealed: entries there, or a start a removal moved there (a log tiers only what it
    // sealed, and removes only below its own active segment). Another process wrote it since
    // this directory's data was made (a fail-back to an old data directory, a restored backup):
    // another history, as when its entries differ from the local segments — the log opens,
    // tiering stops (no upload, no removal, no local deletion) and appends are refused. Until 2026-11-30 entries
    // past the active segment were ignored, and a start past it let such a directory claim the
    // prefix and its retention unlink what it acknowledged since.
    // Its next records would take offsets the store's history gave other records: the log
    // takes no appends either (`Tier::other_history`; until 2026-12-03 only tiering stopped,
    // and a fail-back after the other node's retention moved the store's start past this
    // directory served as ready, took writes, and expired its own history below its segments).
    if let Some(end) = m.map(Manifest::end).filter(|&end| end > local.active)
        && !inner.diverged.swap(true, Ordering::Relaxed)
    {
        inner.other_history.store(true, Ordering::Relaxed);
        tracing::error!(
            store = %inner.opts.display,
            store_end = end,
            local_active = local.active,
            "the object store holds this log's history past the start of this directory's newest segment: another history of this log; tiering stops (no uploads, no removal, no local deletion) and the log takes no appends"
        );
    }
    // A start a removal moved past offsets this directory holds and its own tiering never
    // reached (its manifest copy ends below them): another writer's retention removed them,
    // so the store's offsets there are another history's. This log's own removals only take
    // what it uploaded, and each upload's version is in its copy before any removal runs (a
    // crash between the two leaves the copy to the next claim, before any removal), so its own
    // start is never past its copy's end. Not taken for expired leftovers of its own (until
    // 2026-12-03 they were: the retention unlinked what this directory acknowledged and never
    // uploaded).
    if let (Some(start), Some(own_end)) = (m.and_then(|m| m.start), local.own_end)
        && local.first < start
        && own_end < start
        && !inner.diverged.swap(true, Ordering::Relaxed)
    {
        inner.other_history.store(true, Ordering::Relaxed);
        tracing::error!(
            store = %inner.opts.display,
            store_start = start,
            local_first = local.first,
            own_end,
            "the object store's history starts past offsets this directory holds and never tiered: another writer removed them; another history of this log, tiering stops (no uploads, no removal, no local deletion) and the log takes no appends"
        );
    }
    let listed = m.filter(|m| m.history_start().is_some());
    let missing = match listed {
        // From the store's first segment — and from where this directory's own tiering began,
        // when that is earlier: a store whose history starts after it is another log's (its
        // first segment at or past the local start left nothing to count before it, and a
        // directory tiered from 0 took another node's prefix starting later).
        // Not from an unreadable copy: a store starting past 0 is a legitimate one (segments
        // removed by hand before the first tiering), and the next manifest write repairs the copy.
        // Not below a start a removal set: those offsets expired (this directory's manifest copy
        // may be from before the removal, if it crashed between the store's version and the
        // copy).
        Some(m) => m.missing_before(local.first).or_else(|| {
            let Tiered::From(from) = local.tiered else {
                return None;
            };
            if m.start.is_some() {
                return None;
            }
            let store_from = m.history_start()?;
            (from < store_from && from < local.first).then(|| from..store_from.min(local.first))
        }),
        // A store holding nothing, to a directory that tiered (from 0 when the copy cannot tell).
        None => match local.tiered {
            Tiered::Never => None,
            Tiered::From(from) => (from < local.first).then_some(from..local.first),
            Tiered::Unknown => (local.first > 0).then_some(0..local.first),
        },
    };
    match missing {
        None => Ok(()),
        Some(r) => Err(LogError::HistoryNotInStore {
            store: inner.opts.display.clone(),
            from: r.start,
            to: r.end,
            first_local: local.first,
            store_empty: listed.is_none(),
        }),
    }
}

/// Gives the prefix up after a claim whose log then failed to open (strict recovery refused
/// damage, the options did not validate, ...): a version whose heartbeat is 0, as a graceful
/// close writes (`Uploader::release`), so that the next start claims at once instead of
/// waiting out this process's lease. Nothing to give up when this process does not hold the
/// prefix (never claimed, or fenced since); a version another writer made first leaves it
/// theirs.
pub(crate) async fn release(inner: &TierInner) -> Result<()> {
    if inner.fenced.load(Ordering::Relaxed) {
        return Ok(());
    }
    let known = inner
        .claimed
        .load(Ordering::Relaxed)
        .then(|| inner.manifest.load_full());
    release_own(inner, known).await
}

/// Gives the prefix up from the store's newest version, when that is this process's own (this
/// node id and incarnation) and not released: a released version follows it. Read from the
/// store, not taken from memory: a manifest write of this process's whose answer never came
/// (a claim or a pass the close cancelled, a claim past the open's timeout) may have landed,
/// so the process may hold the prefix without knowing it, or hold it at a later version than
/// it knows. Until 2026-11-30 such a version was left live, and the next start under this
/// node id waited out its lease (`claimed` false, its last segment not uploaded at its stop).
///
/// `known`: the version this process knows it holds (it claimed), released after at once (one
/// write, as a close always did); `None`: it does not know it holds one, and the store's newest
/// version is read. Either way a version of its own found at the epoch it writes — a write the
/// close cut short that landed, listing a segment the release does not — is released in turn
/// (it was taken for another writer's: fenced, the lease left live); another writer's leaves
/// the prefix theirs, and says so.
pub(crate) async fn release_own(
    inner: &TierInner,
    known: Option<std::sync::Arc<Manifest>>,
) -> Result<()> {
    if inner.fenced.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut m = match known {
        Some(m) => (*m).clone(),
        None => match latest_manifest(inner).await? {
            Some(m) if is_own(inner, &m) && m.owner.heartbeat_ms != 0 => m,
            _ => return Ok(()),
        },
    };
    for _ in 0..=MAX_OWN_VERSIONS {
        match write_manifest(inner, &m.next(&inner.opts.owner_id, 0)).await? {
            Written::Ok => {
                inner.claimed.store(false, Ordering::Relaxed);
                return Ok(());
            }
            Written::Fenced(t) if is_own(inner, &t) => {
                inner.fenced.store(false, Ordering::Relaxed);
                if t.owner.heartbeat_ms == 0 {
                    return Ok(());
                }
                m = t;
            }
            Written::Fenced(t) => {
                tracing::warn!(owner = %t.owner.id, store = %inner.opts.display, "another writer wrote the tier manifest: the prefix is not released (it is theirs)");
                return Ok(());
            }
        }
    }
    Err(err(
        inner,
        "releasing the prefix",
        "too many versions already written by this node",
    ))
}

/// Whether manifest version `m` is this process's own: this node id and this process's
/// incarnation (another process under the same id has another).
fn is_own(inner: &TierInner, m: &Manifest) -> bool {
    m.owner.id == inner.opts.owner_id && m.owner.incarnation == Some(inner.incarnation)
}

/// Reads a local file region (blocking IO on the blocking pool).
async fn read_chunk(path: &Path, pos: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&path)?;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = f.read_at(&mut buf[done..], pos + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Uploads a local file to `rel`; returns its size and CRC-32 after confirming them.
pub(crate) async fn upload_object(
    inner: &TierInner,
    rel: &str,
    local: &Path,
) -> Result<(u64, u32)> {
    let path = key(inner, rel);
    let len = match std::fs::metadata(local) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(LogError::io("stat", local, e)),
    };
    let store = &inner.opts.store;
    let mut crc = crc32fast::Hasher::new();
    if len as usize <= PART {
        let bytes = if len == 0 {
            Vec::new()
        } else {
            read_chunk(local, 0, len as usize)
                .await
                .map_err(|e| LogError::io("read", local, e))?
        };
        crc.update(&bytes);
        store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| err(inner, &format!("uploading {path}"), e))?;
    } else {
        let upload = store
            .put_multipart(&path)
            .await
            .map_err(|e| err(inner, &format!("starting the upload of {path}"), e))?;
        let mut w = Unfinished {
            inner,
            path: path.clone(),
            w: Some(WriteMultipart::new_with_chunk_size(upload, PART)),
        };
        let mut pos = 0u64;
        let sent: Result<()> = async {
            while pos < len {
                let chunk = read_chunk(local, pos, PART.min((len - pos) as usize))
                    .await
                    .map_err(|e| LogError::io("read", local, e))?;
                if chunk.is_empty() {
                    break;
                }
                crc.update(&chunk);
                pos += chunk.len() as u64;
                if let Some(w) = w.w.as_mut() {
                    w.wait_for_capacity(2)
                        .await
                        .map_err(|e| err(inner, &format!("uploading {path}"), e))?;
                    w.put(Bytes::from(chunk));
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = sent {
            // The parts already stored would otherwise stay in the bucket (billed) until a
            // lifecycle rule removes them. Best effort: the error that stopped us is the news.
            if let Some(w) = w.w.take()
                && let Err(abort) = w.abort().await
            {
                tracing::debug!(error = %abort, path = %path, "could not abort a failed multipart upload");
            }
            return Err(e);
        }
        if let Some(done) = w.w.take() {
            done.finish()
                .await
                .map_err(|e| err(inner, &format!("completing the upload of {path}"), e))?;
        }
    }
    let crc = crc.finalize();
    // Confirm: the size always, the bytes themselves when asked to.
    let meta = store
        .head(&path)
        .await
        .map_err(|e| err(inner, &format!("checking {path}"), e))?;
    if meta.size != len {
        return Err(err(
            inner,
            &format!("checking {path}"),
            format!("{} bytes stored, {len} sent", meta.size),
        ));
    }
    if inner.opts.verify_uploads && len > 0 {
        // In ranged GETs of a part each: a store client's request timeout covers the whole
        // body, so one GET of a large segment failed on a link slower than its size over that
        // timeout (128 MiB in 30 s: 4.3 MB/s), after the whole upload, at every retry.
        let mut back = crc32fast::Hasher::new();
        let mut pos = 0u64;
        while pos < len {
            let end = (pos + PART as u64).min(len);
            let part = store
                .get_range(&path, pos..end)
                .await
                .map_err(|e| err(inner, &format!("reading back {path}"), e))?;
            if part.is_empty() {
                break;
            }
            back.update(&part);
            pos += part.len() as u64;
        }
        let back = back.finalize();
        if back != crc {
            return Err(err(
                inner,
                &format!("checking {path}"),
                format!("CRC {back:#010x} stored, {crc:#010x} sent"),
            ));
        }
    }
    inner
        .counters
        .upload_bytes
        .fetch_add(len, Ordering::Relaxed);
    Ok((len, crc))
}

/// A multipart upload under way: one dropped before it finished or was aborted (the pass
/// cancelled at close, or cut off by the shutdown's grace period) is aborted in the background,
/// on the tier's tracker (which the close waits for, within its deadline): its parts would
/// otherwise stay in the bucket, billed and listed by nothing, until a lifecycle rule.
struct Unfinished<'a> {
    inner: &'a TierInner,
    path: ObjectPath,
    w: Option<WriteMultipart>,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        let Some(w) = self.w.take() else {
            return;
        };
        let path = self.path.clone();
        self.inner.tracker.spawn_on(
            async move {
                if let Err(e) = w.abort().await {
                    tracing::debug!(error = %e, path = %path, "could not abort a cancelled multipart upload");
                }
            },
            &self.inner.runtime,
        );
    }
}

/// Uploads a sealed segment and its index sidecars.
pub(crate) async fn upload_segment(
    inner: &TierInner,
    dir: &Path,
    base: u64,
    end: u64,
) -> Result<RemoteSegment> {
    // Keys of this process's own (`RemoteSegment::object`): a retry overwrites only what this
    // process uploaded before, with the same bytes.
    let stem = RemoteSegment::unique_stem(base, inner.incarnation);
    upload_segment_as(inner, dir, base, end, stem).await
}

/// [`upload_segment`] under the object stem `stem` (a rewritten segment goes up under a stem
/// of its own: the objects its manifest entry names until the new one is written are not
/// overwritten).
pub(crate) async fn upload_segment_as(
    inner: &TierInner,
    dir: &Path,
    base: u64,
    end: u64,
    stem: String,
) -> Result<RemoteSegment> {
    let paths = SegmentPaths::new(dir, base);
    let key = |ext: &str| RemoteSegment::key_of(&stem, ext);
    let (index_bytes, _) = upload_object(inner, &key("index"), &paths.index).await?;
    let (time_bytes, _) = upload_object(inner, &key("timeindex"), &paths.time).await?;
    // The segment last: a manifest entry is only written after all three are stored.
    let (bytes, crc32) = upload_object(inner, &key("log"), &paths.log).await?;
    inner.counters.uploads.fetch_add(1, Ordering::Relaxed);
    Ok(RemoteSegment {
        base,
        end,
        bytes,
        crc32,
        index_bytes,
        time_bytes,
        object: Some(stem),
    })
}

/// Uploads a whole local file to `rel`.
pub(crate) async fn put_file(inner: &TierInner, rel: &str, local: &Path) -> Result<u64> {
    upload_object(inner, rel, local).await.map(|(n, _)| n)
}

/// Downloads `rel` into `local` (temp file + rename); `false` when the object does not exist.
pub(crate) async fn get_file(inner: &TierInner, rel: &str, local: &Path) -> Result<bool> {
    let path = key(inner, rel);
    let store = &inner.opts.store;
    let len = match store.head(&path).await {
        Ok(meta) => meta.size,
        Err(object_store::Error::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(err(inner, &format!("downloading {path}"), e)),
    };
    // In ranged GETs of a part each, as an upload's read-back: one GET of a large snapshot
    // had to come whole within the store client's request timeout.
    // Grown as the parts come: the size the store answers is not taken on trust up front.
    let mut bytes = Vec::with_capacity(usize::try_from(len).map_or(0, |n| n.min(PART)));
    while (bytes.len() as u64) < len {
        let pos = bytes.len() as u64;
        let end = (pos + PART as u64).min(len);
        match store.get_range(&path, pos..end).await {
            Ok(part) if part.is_empty() => break,
            Ok(part) => bytes.extend_from_slice(&part),
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(err(inner, &format!("downloading {path}"), e)),
        }
    }
    if (bytes.len() as u64) < len {
        return Err(err(
            inner,
            &format!("downloading {path}"),
            format!("{} of {len} bytes", bytes.len()),
        ));
    }
    let tmp = local.with_extension("download");
    let local = local.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if let Some(parent) = local.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&tmp, &bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &local)?;
        // The new name durable too (a power cut would otherwise lose it after the caller
        // went on).
        match local.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => std::fs::File::open(parent)?.sync_all(),
            None => Ok(()),
        }
    })
    .await
    .map_err(|e| LogError::Tier(format!("download task: {e}")))?
    .map_err(|e| LogError::io("write", "downloaded file", e))?;
    Ok(true)
}

/// The file names directly below `rel`.
pub(crate) async fn list(inner: &TierInner, rel: &str) -> Result<Vec<String>> {
    let dir = key(inner, rel);
    timed(inner, &format!("listing {dir}"), async {
        let mut out = Vec::new();
        let mut stream = inner.opts.store.list(Some(&dir));
        while let Some(m) = stream.next().await {
            let m = m?;
            if !is_child(&dir, &m.location) {
                continue;
            }
            if let Some(n) = m.location.filename() {
                out.push(n.to_owned());
            }
        }
        out.sort();
        Ok(out)
    })
    .await
}

/// Deletes `rel`.
pub(crate) async fn delete(inner: &TierInner, rel: &str) -> Result<()> {
    let path = key(inner, rel);
    match inner.opts.store.delete(&path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(err(inner, &format!("deleting {path}"), e)),
    }
}

/// Exponential backoff with jitter, capped.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1u64 << attempt.min(8)).min(30_000);
    let jitter = (now_ms() ^ u64::from(attempt).wrapping_mul(0x9e37_79b9)) % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::manifest::RemoteSegment;

    fn entry(base: u64, end: u64) -> RemoteSegment {
        RemoteSegment::of_offsets(base, end)
    }

    fn with(segments: Vec<RemoteSegment>) -> Manifest {
        let mut m = Manifest::new("a", 0);
        m.segments = segments;
        m
    }

    /// A version of this process's that landed unanswered is adopted with what it holds: a
    /// removal's start (its entries not listed again), an upload's entry; one that does not
    /// fit (an entry overlapping another) is not this process's history.
    #[test]
    fn an_own_version_is_merged_into_the_next() {
        let m = with(vec![entry(0, 10), entry(10, 20)]);
        // Nothing more than `m`: `m` itself (what adoption always did).
        assert_eq!(
            merge_own(&m, &with(vec![entry(0, 10)]), &m),
            Some(m.clone())
        );
        // A removal that landed: its start, and not the entries below it.
        let mut removal = m.clone();
        removal.remove_before(10);
        let merged = merge_own(&m, &removal, &m).unwrap();
        assert_eq!(merged.start, Some(10));
        assert_eq!(merged.segments, vec![entry(10, 20)]);
        // Building on it, the next write carries the start too (format 3).
        assert_eq!(merged.next("a", 1).version, 3);
        // An upload that landed: its entry joins, in order.
        let upload = with(vec![entry(0, 10), entry(10, 20), entry(20, 30)]);
        let mut removed = m.clone();
        removed.remove_before(10);
        let merged = merge_own(&removed, &upload, &m).unwrap();
        assert_eq!(merged.segments, vec![entry(10, 20), entry(20, 30)]);
        assert_eq!(merged.start, Some(10));
        // ... and `t`'s entries below `m`'s own start stay out.
        let merged = merge_own(&removed, &m, &m).unwrap();
        assert_eq!(merged.segments, vec![entry(10, 20)]);
        // The same offsets under another object: the entry that changed since the version
        // both were made from is the newer. A rewrite's version that landed (`t`), then an
        // upload's built on the version before it (`m`): the rewrite's objects stay named.
        let mut rewritten = entry(10, 20);
        rewritten.crc32 = 7;
        rewritten.object = Some("x".into());
        let rewrite = with(vec![entry(0, 10), rewritten.clone(), entry(20, 30)]);
        let upload = with(vec![entry(0, 10), entry(10, 20), entry(30, 40)]);
        assert_eq!(
            merge_own(&upload, &rewrite, &m).unwrap().segments,
            vec![
                entry(0, 10),
                rewritten.clone(),
                entry(20, 30),
                entry(30, 40)
            ]
        );
        // The other way round (an upload's version landed, the rewrite's written next): the
        // rewrite's.
        assert_eq!(
            merge_own(&rewrite, &upload, &m).unwrap().segments,
            vec![
                entry(0, 10),
                rewritten.clone(),
                entry(20, 30),
                entry(30, 40)
            ]
        );
        // A rewrite tried again (the first one's version landed unanswered): the later one's.
        let mut again = rewritten.clone();
        again.crc32 = 8;
        again.object = Some("y".into());
        assert_eq!(
            merge_own(&with(vec![entry(0, 10), again.clone()]), &rewrite, &m)
                .unwrap()
                .segments,
            vec![entry(0, 10), again, entry(20, 30)]
        );
        // Overlapping: not ours.
        assert_eq!(merge_own(&m, &with(vec![entry(5, 15)]), &m), None);
        assert_eq!(merge_own(&m, &with(vec![entry(10, 21)]), &m), None);
    }
}
