//! Retention of the server's log (`compaction.retention_secs`, `compaction.retention_bytes`):
//! a pass every `compaction.retention_interval_secs` removes the oldest sealed segments the
//! policy no longer keeps, once snapshots cover them. With a tier (`tier.url`) it is the
//! object store's retention: the segments leave the store and the local directory
//! (`tier.local_retention_*` only decide which uploaded segments also stay local).
//!
//! A pass:
//! 1. **What the policy lets go** ([`policy_cut`]): the log's sealed segments are taken oldest
//!    first while the log (every segment, the active one included, those only in the object
//!    store too) holds more than `retention_bytes`, and every sealed segment whose records are
//!    all older than `retention_secs` goes too (by batch time: the first offset written at or
//!    after the cut-off, `Log::offset_for_timestamp`). Whole segments only, and never the
//!    active one: a segment goes once its newest record is past the age (it rolls by size,
//!    and a day after its first record: `log.segment_max_age`).
//! 2. **What snapshots allow** ([`snapshot_bound`]): the newest two snapshot files must check
//!    (both CRCs, the current format, without decoding the state) and be anchored to the
//!    records the log holds at their offsets; only segments wholly below the older one's offset
//!    go. A start loads the newest snapshot and replays the log after it, so every segment
//!    removed must lie below a snapshot it can load, and its anchor record must stay; two
//!    keep a start possible when the newest file is damaged. With fewer, or one that does not
//!    check, nothing is removed (the next snapshot, `projections.snapshot_interval_secs`,
//!    brings one). The log is synced before the removal: under `log.fsync = every | never`
//!    the anchors may be records not yet durable, which a power cut would take.
//!    With a tier, the object store's snapshots bound it as well ([`store_bound`]): a restore
//!    into an empty data directory loads the newest snapshot in the store below the end of the
//!    uploaded segments (one past it describes records the store does not hold) and replays
//!    after it, so only segments wholly below the older of the store's newest two such
//!    snapshots go (by their names, `snapshots/{applied:020}.snap`; with fewer than two,
//!    nothing: on a server whose writes fit in the active segment, the retention waits for
//!    its roll — `log.segment_max_age` — and the upload). The store keeps those two as well as
//!    its newest three (`tiering::upload_snapshot`).
//! 3. `Log::remove_segments_before`: the segments' files are deleted, oldest first; readers of
//!    their offsets get "expired" (`messages::expired_floor` and the read paths). A tiered log
//!    removes only segments already uploaded: first from the store (a manifest version without
//!    them, whose `start` is the log's new first offset, then their objects), then locally.
//!    A pass while this server does not hold the store's prefix (not claimed yet, fenced, or
//!    its history diverged from the store's) removes nothing, and is not a failure.
//!
//! Before the first removal, `DATA/log-trimmed` is written ([`DataDir::trimmed_marker`]) and
//! the server's reads take messages below the log's start as expired from then on
//! ([`AppState::expiring`]; with a tier, the manifest's start says so as well). A tiered log
//! also removes, whatever the offset asked, what a removal cut short by a crash left below the
//! store's start. Off on a data directory that was tiered but is started without `tier.url`
//! (its store holds the older segments; a later start with the tier again would find segments
//! missing from both). The record a snapshot is anchored to is never removed;
//! the purge's watermark may be (its next start considers every recall again, and finds those
//! below the log's start gone).

use std::sync::Arc;

use anyhow::Context as _;
use tidings_log::tier::Tier;
use tidings_log::{Log, LogError, SegmentInfo};
use tidings_projections::snapshot;
use tokio_util::sync::CancellationToken;

use crate::data::DataDir;
use crate::server::state::{AppState, now_ms};

/// Runs a pass every `compaction.retention_interval_secs` until `stop`, when a retention is
/// set (the module doc).
pub(crate) async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let Some(every) = state.config.retention_interval() else {
        return;
    };
    // With its tier the log removes from the object store too; without it, a directory that
    // was tiered keeps its older segments in a store this server does not reach.
    if state.log.tier().is_none()
        && let Some(marker) = DataDir::new(&state.config.data).tier_marker()
    {
        tracing::warn!(
            "the retention (compaction.retention_secs / retention_bytes) is off: this data \
             directory was tiered ({} exists) and is started without tier.url, and its object \
             store holds its older segments",
            marker.display()
        );
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut checked = Checks::default();
    let mut stored = StoreChecks::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = pass(&state, &mut checked, &mut stored).await {
            state.metrics.retention_failures.inc();
            let why = format!("{e:#}");
            tracing::warn!(error = %why, "a pass of the log's retention failed; the next pass tries again");
        }
    }
}

/// One pass (the module doc).
async fn pass(
    state: &Arc<AppState>,
    checked: &mut Checks,
    stored: &mut StoreChecks,
) -> anyhow::Result<()> {
    let log = state.log.clone();
    if let Some(start) = missing_trim(state) {
        record_trim(state, start).await;
    }
    let age_cut = match state.config.compaction_retention_secs {
        None => None,
        Some(secs) => {
            let before = now_ms().saturating_sub(secs.saturating_mul(1000));
            let l = log.clone();
            let first_kept = tokio::task::spawn_blocking(move || l.offset_for_timestamp(before))
                .await
                .context("finding the first record inside the retention age")??;
            Some(first_kept.unwrap_or_else(|| log.next_offset()))
        }
    };
    let segments = log.segments()?;
    let wanted = policy_cut(&segments, age_cut, state.config.compaction_retention_bytes);
    if wanted <= log.start_offset() {
        return Ok(());
    }
    if let Some(tier) = log.tier()
        && !holds_prefix(tier)
    {
        return Ok(());
    }
    let dir = state.proj().snapshot_dir();
    let Some(bound) = snapshot_bound(&log, &dir, checked).await? else {
        tracing::debug!(
            "the retention waits for two snapshots to cover the segments it would remove"
        );
        return Ok(());
    };
    let mut upto = wanted.min(bound);
    if let Some(tier) = log.tier() {
        let Some(stored) = store_bound(tier, &dir, stored).await? else {
            tracing::debug!(
                "the retention waits for two snapshots in the object store to cover the segments it would remove"
            );
            return Ok(());
        };
        upto = upto.min(stored);
    }
    if upto <= log.start_offset() {
        return Ok(());
    }
    // Under `log.fsync = every | never` the snapshots may be anchored to records not yet
    // durable (the applier applies what is written): a power cut would take those records,
    // the start would set both snapshots aside as ahead of the log, and the segments that a
    // replay from an older one needs would be gone. Synced now, every record up to the
    // anchors is durable before anything is removed.
    log.sync().await?;
    // Before the first removal: this directory's messages below the log's start expire for
    // good (with a tier, the store loses them too), also if a tier is turned on later
    // (`DataDir::trimmed_marker`).
    let data = DataDir::new(&state.config.data);
    let marker = data.trimmed_marker();
    if !marker.exists() {
        crate::data::write_durably(
            &marker,
            b"the retention removed the log's oldest segments: messages below its start have expired\n",
            0o644,
        )?;
    }
    // The marker is written: reads take what lies below the start as expired from now on
    // (with a tier, once the store's manifest is known: `data::expires_with_tier`).
    state.set_trimmed();
    let removed = match log.remove_segments_before(upto).await {
        Ok(removed) => removed,
        // A tiered log refuses while its tier does not hold the prefix (it may have lost it
        // since the check above): the next pass tries again.
        Err(LogError::RemoveRefused { reason, .. }) if log.tier().is_some() => {
            tracing::debug!(
                reason = %reason,
                "the tiered log refused the retention's removal; nothing removed"
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if removed.segments > 0 {
        state
            .metrics
            .retention_removed_segments
            .add(removed.segments as u64);
        state.metrics.retention_removed_bytes.add(removed.bytes);
        tracing::info!(
            segments = removed.segments,
            bytes = removed.bytes,
            log_start = removed.start_offset,
            "the retention removed the log's oldest segments"
        );
        record_trim(state, removed.start_offset).await;
    }
    Ok(())
}

/// Writes the removal up to `start` in the log (`Event::LogTrimmed`), so that what it changed
/// in reads has an offset: the conversations whose unread counts it cut are listed again to
/// incremental lists. One not written (a stop between the removal and it, the applier
/// stopped) is written by a later pass ([`missing_trim`]).
async fn record_trim(state: &Arc<AppState>, start: u64) {
    let trimmed = tidings_projections::Event::LogTrimmed { start };
    if let Err(e) = state.emit(trimmed).await {
        tracing::warn!(error = %e.message, start, "the retention's log_trimmed event was not written, or not applied yet (a later pass writes it if it is missing)");
    }
}

/// The log's start when messages below it have expired and no `log_trimmed` event says so
/// yet: a removal whose event was not written, or the removals of a build from before the
/// event (2026-11-30).
fn missing_trim(state: &AppState) -> Option<u64> {
    let start = state.expired_below();
    let known = state.proj().state.trimmed.map_or(0, |t| t.start);
    (start > known).then_some(start)
}

/// Whether this server holds its tier's prefix (claimed, not fenced, its history not diverged
/// from the store's): otherwise the tiered log refuses a removal, and a pass removes nothing
/// (module doc, step 3).
fn holds_prefix(tier: &Tier) -> bool {
    let status = tier.status();
    let holds = status.claimed && !status.fenced && !status.diverged;
    if !holds {
        tracing::debug!(
            claimed = status.claimed,
            fenced = status.fenced,
            diverged = status.diverged,
            "the retention removes nothing: the object store's prefix is not this server's"
        );
    }
    holds
}

/// The checks of the object store's snapshots made by earlier passes, by name: a snapshot is
/// uploaded once under its name (its offset), so a verdict stands while the name is listed.
#[derive(Default)]
struct StoreChecks(std::collections::HashMap<String, bool>);

/// The offset of the older of the newest two snapshots in the tier's object store that a
/// restore could use — below the end of the uploaded segments (module doc, step 2) —, when
/// both check (downloaded once each into `dir` under a name no start loads, CRCs and format as
/// for the local ones: a restore of a damaged or outdated one goes on to an older one, which a
/// removal may have left nothing to replay from); `None` with fewer than two, or one that does
/// not check.
async fn store_bound(
    tier: &Tier,
    dir: &std::path::Path,
    checks: &mut StoreChecks,
) -> anyhow::Result<Option<u64>> {
    let names = tier
        .list("snapshots")
        .await
        .context("listing the snapshots in the object store")?;
    checks.0.retain(|name, _| names.contains(name));
    let newest = newest_two_below(&names, tier.manifest().end());
    let [(_, newer), (older, older_name)] = newest.as_slice() else {
        return Ok(None);
    };
    for name in [*newer, *older_name] {
        let good = match checks.0.get(name) {
            Some(&good) => good,
            None => {
                let good = store_snapshot_checks(tier, dir, name).await?;
                checks.0.insert(name.clone(), good);
                good
            }
        };
        if !good {
            tracing::warn!(snapshot = %name, "the retention removes nothing while one of the newest two snapshots in the object store that a restore could use does not check");
            return Ok(None);
        }
    }
    Ok(Some(*older))
}

/// Whether the store's snapshot `name` checks ([`snapshot::check`]), downloaded into `dir` as
/// `{name}.check.download` (a name no start loads; a restore removes what a crash left) and
/// removed after.
async fn store_snapshot_checks(
    tier: &Tier,
    dir: &std::path::Path,
    name: &str,
) -> anyhow::Result<bool> {
    let path = dir.join(format!("{name}.check.download"));
    if !tier.get_file(&format!("snapshots/{name}"), &path).await? {
        return Ok(false);
    }
    let p = path.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let bytes =
            std::fs::read(&p).with_context(|| format!("reading the snapshot {}", p.display()))?;
        anyhow::Ok(snapshot::check(&p, &bytes))
    })
    .await
    .context("checking a snapshot")?;
    let _ = std::fs::remove_file(&path);
    match checked? {
        Ok(_) => Ok(true),
        Err(e) => {
            tracing::warn!(snapshot = name, error = %e, "a snapshot in the object store does not check");
            Ok(false)
        }
    }
}

/// The newest two snapshots named in `names` (`{applied:020}.snap`; other names are left
/// out) below offset `end`, newest first, with their offsets.
fn newest_two_below(names: &[String], end: u64) -> Vec<(u64, &String)> {
    let mut found: Vec<(u64, &String)> = names
        .iter()
        .filter_map(|n| Some((n.strip_suffix(".snap")?.parse().ok()?, n)))
        .filter(|&(applied, _)| applied < end)
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    found.dedup_by_key(|(applied, _)| *applied);
    found.truncate(2);
    found
}

/// The offset of the older of the newest two snapshots named in `names` below offset `end`
/// ([`newest_two_below`]); `None` with fewer than two.
#[cfg(test)]
fn older_of_newest_two(names: &[String], end: u64) -> Option<u64> {
    match newest_two_below(names, end).as_slice() {
        [_, (older, _)] => Some(*older),
        _ => None,
    }
}

/// The offset below which the policy lets sealed segments go: the end of the last segment of
/// the longest run of sealed segments, oldest first, that the size bound or the age removes
/// (module doc, step 1). `age_cut`: the first offset inside the retention age (the log's end
/// when every record is older). Segments only in the object store count as local ones do (a
/// tiered log removes them from the store); not above the first segment that is not sealed.
pub(crate) fn policy_cut(
    segments: &[SegmentInfo],
    age_cut: Option<u64>,
    max_bytes: Option<u64>,
) -> u64 {
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    let mut cut = segments.first().map_or(0, |s| s.base_offset);
    for s in segments {
        if !s.sealed {
            break;
        }
        let too_big = max_bytes.is_some_and(|max| total > max);
        let too_old = age_cut.is_some_and(|first_kept| s.end_offset <= first_kept);
        if !(too_big || too_old) {
            break;
        }
        total = total.saturating_sub(s.bytes);
        cut = s.end_offset;
    }
    cut
}

/// A snapshot file as it was when checked: its path, length and modification time.
type FileKey = (std::path::PathBuf, u64, std::time::SystemTime);

/// The checks of the snapshot files made by earlier passes, by [`FileKey`]: a file that has not
/// changed is not read again (a pass that waits for snapshots, on a server that takes no
/// writes, would otherwise read both files whole every interval).
#[derive(Default)]
struct Checks(Vec<(FileKey, Result<snapshot::Checked, String>)>);

impl Checks {
    /// The check of `path`: the earlier one if the file is unchanged, else made now.
    async fn of(
        &mut self,
        path: &std::path::Path,
    ) -> anyhow::Result<Result<snapshot::Checked, String>> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("reading the snapshot {}", path.display()))?;
        let key: FileKey = (path.to_path_buf(), meta.len(), meta.modified()?);
        if let Some((_, done)) = self.0.iter().find(|(k, _)| *k == key) {
            return Ok(done.clone());
        }
        let p = path.to_path_buf();
        let done = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&p)
                .with_context(|| format!("reading the snapshot {}", p.display()))?;
            anyhow::Ok(snapshot::check(&p, &bytes).map_err(|e| format!("{e:#}")))
        })
        .await
        .context("checking a snapshot")??;
        // The newest two are what a pass checks: older entries are never asked for again.
        if self.0.len() >= 4 {
            self.0.drain(..1);
        }
        self.0.push((key, done.clone()));
        Ok(done)
    }
}

/// The offset of the older of the newest two snapshots in `dir`, when both check and are
/// anchored to the records `log` holds at their offsets (module doc, step 2); `None`
/// otherwise.
async fn snapshot_bound(
    log: &Log,
    dir: &std::path::Path,
    checks: &mut Checks,
) -> anyhow::Result<Option<u64>> {
    let files = snapshot::list(dir)?;
    if files.len() < 2 {
        return Ok(None);
    }
    let mut bound = u64::MAX;
    for f in files.into_iter().take(2) {
        let checked = match checks.of(&f.path).await? {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(error = %why, "the retention removes nothing while one of the newest two snapshots does not check");
                return Ok(None);
            }
        };
        let held = snapshot::anchor_at(log, checked.applied).await?;
        if checked.anchor.is_none() || held != checked.anchor {
            tracing::warn!(
                snapshot = %f.path.display(),
                "the retention removes nothing while one of the newest two snapshots is not anchored to this log's record at its offset"
            );
            return Ok(None);
        }
        bound = bound.min(checked.applied);
    }
    Ok(Some(bound))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use std::time::Duration;

    use bytes::Bytes;
    use tidings_projections::State;

    use super::*;

    /// Writes a snapshot ending at `applied` into `dir`, anchored to `anchor` (none: unanchored).
    fn snapshot_at(dir: &std::path::Path, applied: u64, anchor: Option<u32>) -> PathBuf {
        let state = State {
            applied: Some(applied),
            ..State::default()
        };
        let mut e = snapshot::Encoded::of(&state).unwrap();
        if let Some(a) = anchor {
            e.set_anchor(a);
        }
        e.write(dir, 10).unwrap()
    }

    /// The bound is the older of the newest two snapshots' offsets, and only when both check
    /// and are anchored to this log's records: none with fewer than two, with the newest
    /// damaged, anchored to another record, or unanchored.
    #[tokio::test]
    async fn only_two_good_anchored_snapshots_bound_the_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let log = Log::open(tmp.path().join("log"), tidings_log::LogOptions::default())
            .await
            .unwrap();
        let payloads: Vec<Bytes> = (0..10)
            .map(|i| Bytes::from(format!("record {i}")))
            .collect();
        for p in &payloads {
            log.append_one(p.clone()).await.unwrap();
        }
        let anchor = |at: u64| Some(snapshot::anchor_of(&payloads[at as usize]));
        let dir = tmp.path().join("snapshots");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            snapshot_bound(&log, &dir, &mut Checks::default())
                .await
                .unwrap(),
            None
        );
        snapshot_at(&dir, 5, anchor(5));
        assert_eq!(
            snapshot_bound(&log, &dir, &mut Checks::default())
                .await
                .unwrap(),
            None
        );
        let newest = snapshot_at(&dir, 8, anchor(8));
        assert_eq!(
            snapshot_bound(&log, &dir, &mut Checks::default())
                .await
                .unwrap(),
            Some(5)
        );
        // The newest damaged: nothing.
        let good = std::fs::read(&newest).unwrap();
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&newest, &bad).unwrap();
        assert_eq!(
            snapshot_bound(&log, &dir, &mut Checks::default())
                .await
                .unwrap(),
            None
        );
        std::fs::write(&newest, &good).unwrap();
        assert_eq!(
            snapshot_bound(&log, &dir, &mut Checks::default())
                .await
                .unwrap(),
            Some(5)
        );
        // Anchored to another record, or not at all: nothing.
        let other = snapshot_at(&dir, 9, anchor(8));
        assert_eq!(
            snapshot_bound(&log, &dir, &mut Checks::default())
                .await
                .unwrap(),
            None
        );
        std::fs::remove_file(other).unwrap();
        snapshot_at(&dir, 9, None);
        assert_eq!(
            snapshot_bound(&log, &dir, &mut Checks::default())
                .await
                .unwrap(),
            None
        );
        snapshot_at(&dir, 9, anchor(9));
        assert_eq!(
            snapshot_bound(&log, &dir, &mut Checks::default())
                .await
                .unwrap(),
            Some(8)
        );
        log.close().await.unwrap();
    }

    /// A snapshot file unchanged since its check (path, length, modification time) is not
    /// read again; a changed one is.
    #[tokio::test]
    async fn an_unchanged_snapshot_file_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = snapshot_at(dir.path(), 7, Some(1));
        let mut checks = Checks::default();
        let first = checks.of(&path).await.unwrap().unwrap();
        assert_eq!(first.applied, 7);
        // Damaged in place with its time kept: the earlier check stands (not read).
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        assert_eq!(checks.of(&path).await.unwrap(), Ok(first));
        // Its time moved: read and checked again.
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(mtime + Duration::from_secs(1)).unwrap();
        drop(f);
        assert!(checks.of(&path).await.unwrap().is_err());
    }

    fn seg(base: u64, end: u64, bytes: u64, sealed: bool) -> SegmentInfo {
        SegmentInfo {
            base_offset: base,
            end_offset: end,
            bytes,
            sealed,
            remote: false,
            path: PathBuf::from(format!("{base:020}.log")),
        }
    }

    /// Four segments of 100 bytes (the last active): the size bound takes the oldest while the
    /// log holds more than it, the age every sealed one before the first kept offset, either
    /// one enough; the active segment never goes.
    #[test]
    fn the_policy_takes_whole_sealed_segments_oldest_first() {
        let segs = [
            seg(0, 10, 100, true),
            seg(10, 20, 100, true),
            seg(20, 30, 100, true),
            seg(30, 35, 100, false),
        ];
        assert_eq!(policy_cut(&segs, None, None), 0);
        assert_eq!(policy_cut(&segs, None, Some(400)), 0);
        assert_eq!(policy_cut(&segs, None, Some(399)), 10);
        assert_eq!(policy_cut(&segs, None, Some(250)), 20);
        assert_eq!(policy_cut(&segs, None, Some(0)), 30);
        assert_eq!(policy_cut(&segs, Some(9), None), 0);
        assert_eq!(policy_cut(&segs, Some(10), None), 10);
        assert_eq!(policy_cut(&segs, Some(25), None), 20);
        assert_eq!(policy_cut(&segs, Some(35), None), 30);
        assert_eq!(policy_cut(&segs, Some(25), Some(399)), 20);
        assert_eq!(policy_cut(&segs, Some(5), Some(250)), 20);
        // A log that starts past 0 (segments removed before).
        assert_eq!(policy_cut(&segs[2..], Some(35), None), 30);
        assert_eq!(policy_cut(&segs[3..], Some(35), Some(0)), 30);
        assert_eq!(policy_cut(&[], Some(35), Some(0)), 0);
    }

    /// A tiered log's segments only in the object store count as local ones do, by bytes and
    /// by age (its removal takes them from the store): before, the cut stopped at the first
    /// one. The active segment still never goes.
    #[test]
    fn the_policy_counts_segments_only_in_the_object_store() {
        let remote = |base, end| SegmentInfo {
            remote: true,
            ..seg(base, end, 100, true)
        };
        let segs = [
            remote(0, 10),
            remote(10, 20),
            seg(20, 30, 100, true),
            seg(30, 35, 100, false),
        ];
        assert_eq!(policy_cut(&segs, None, None), 0);
        assert_eq!(policy_cut(&segs, None, Some(399)), 10);
        assert_eq!(policy_cut(&segs, None, Some(250)), 20);
        assert_eq!(policy_cut(&segs, None, Some(0)), 30);
        assert_eq!(policy_cut(&segs, Some(25), None), 20);
        assert_eq!(policy_cut(&segs, Some(35), None), 30);
        // Remote after local ones (a local copy kept below newer remote ones) too.
        let mixed = [
            seg(0, 10, 100, true),
            remote(10, 20),
            seg(20, 25, 100, false),
        ];
        assert_eq!(policy_cut(&mixed, None, Some(0)), 20);
    }

    /// The store's bound needs its newest two snapshots below the uploaded end to check: a
    /// damaged one (or one in an outdated format) there bounds nothing, as a restore would go
    /// past it to an older one. Each is downloaded once; its verdict is kept while listed.
    #[tokio::test]
    async fn the_store_bound_needs_its_two_snapshots_to_check() {
        use tidings_log::tier::TierOptions;
        let (bucket, data, cache) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let store: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(bucket.path()).unwrap());
        let tier = Tier::open(
            TierOptions::new(store, "p", "test", "node-a", cache.path())
                .with_upload_interval(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
        let log = Log::open(
            data.path().join("log"),
            tidings_log::LogOptions::default().with_tier(tier.clone()),
        )
        .await
        .unwrap();
        for i in 0..10 {
            log.append_one(Bytes::from(format!("record {i}")))
                .await
                .unwrap();
        }
        log.roll().await.unwrap();
        log.upload_now().await.unwrap();
        assert_eq!(tier.manifest().end(), 10);
        let local = data.path().join("snapshots");
        std::fs::create_dir_all(&local).unwrap();
        let put = |applied: u64, damaged: bool| {
            let (tier, local) = (tier.clone(), local.clone());
            async move {
                let path = snapshot_at(&local, applied, Some(1));
                if damaged {
                    let mut bytes = std::fs::read(&path).unwrap();
                    let last = bytes.len() - 1;
                    bytes[last] ^= 1;
                    std::fs::write(&path, bytes).unwrap();
                }
                let name = path.file_name().unwrap().to_str().unwrap().to_owned();
                tier.put_file(&format!("snapshots/{name}"), &path)
                    .await
                    .unwrap();
                std::fs::remove_file(path).unwrap();
            }
        };
        let dir = data.path().join("check");
        std::fs::create_dir_all(&dir).unwrap();
        let mut checks = StoreChecks::default();
        put(3, false).await;
        put(5, false).await;
        // Past the uploaded end: not one a restore could use.
        put(12, false).await;
        assert_eq!(
            store_bound(&tier, &dir, &mut checks).await.unwrap(),
            Some(3)
        );
        put(7, true).await;
        assert_eq!(store_bound(&tier, &dir, &mut checks).await.unwrap(), None);
        assert_eq!(checks.0.get("00000000000000000007.snap"), Some(&false));
        // Nothing left behind in the directory it downloads to.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        log.close().await.unwrap();
    }

    /// The store's bound is the older of its newest two snapshots below the uploaded end by
    /// offset (the names' number), whatever order the listing has; none with fewer than two;
    /// names that are not a snapshot's are left out.
    #[test]
    fn the_store_bound_is_the_older_of_its_newest_two_snapshots() {
        fn names(list: &[&str]) -> Vec<String> {
            list.iter().map(|n| (*n).to_owned()).collect()
        }
        assert_eq!(older_of_newest_two(&names(&[]), u64::MAX), None);
        assert_eq!(
            older_of_newest_two(&names(&["00000000000000000302.snap"]), u64::MAX),
            None
        );
        assert_eq!(
            older_of_newest_two(
                &names(&[
                    "00000000000000000302.snap",
                    "00000000000000000100.snap",
                    "00000000000000000250.snap",
                ],),
                u64::MAX
            ),
            Some(250)
        );
        assert_eq!(
            older_of_newest_two(
                &names(&[
                    "00000000000000000302.snap",
                    "00000000000000000302.snap.tmp",
                    "notes.txt",
                    "x.snap",
                ]),
                u64::MAX
            ),
            None
        );
        assert_eq!(
            older_of_newest_two(
                &names(&["00000000000000000009.snap", "00000000000000000010.snap",]),
                u64::MAX
            ),
            Some(9)
        );
        // Only those a restore could use: below the end of the uploaded segments.
        let three = names(&[
            "00000000000000000100.snap",
            "00000000000000000250.snap",
            "00000000000000000302.snap",
        ]);
        assert_eq!(older_of_newest_two(&three, 303), Some(250));
        assert_eq!(older_of_newest_two(&three, 302), Some(100));
        assert_eq!(older_of_newest_two(&three, 250), None);
    }
}
