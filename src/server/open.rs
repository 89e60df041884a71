//! Opening the server's state at start-up: the projections from the newest usable snapshot
//! (restored from the object store when the directory has none; those ahead of the log, of
//! another history or of other settings set aside), caught up with the log, the message index
//! sidecars checked, and the conversation cache. `rebuild` and `compact` share the set-asides.

use std::time::Instant;

use anyhow::Context;
use tidings_log::Log;
use tidings_projections::conv_cache::{ConversationCache, ConversationCacheConfig};
use tidings_projections::{Origin, ProjectionConfig, Projections};

use super::{index_repair, projection_config, replay_from_zero, tiering};
use crate::config::Config;
use crate::data::DataDir;

/// What the server serves from, once the log is open: the projections caught up with the log
/// (from a snapshot, restored from the object store when this directory has none), the
/// conversation cache, and how many message index sidecars were made again on the way. The
/// caller closes the log when this fails.
pub(super) async fn open_state(
    config: &Config,
    data: &DataDir,
    log: &Log,
) -> anyhow::Result<(Projections, ConversationCache, u64)> {
    // Whether the log's last run wrote under every/never: a power cut may then have taken
    // applied events whose offsets are now other events', and the lists on disk were
    // fingerprinted by them. This run's policy alone does not tell (it was all that was
    // checked until 2026-11-30). It is written in the cache's directory now, before anything
    // else can fail: the log's open has replaced its record of that run with this one's, and
    // a start that failed before its cache opened left the next start nothing to go by. (A run
    // under every/never marks the directory itself as its cache opens; one of an earlier build
    // did not.)
    let after_unsynced = log.opened_after_unsynced_writes();
    if after_unsynced {
        distrust_conversation_cache(data)?;
    }
    match log.tier() {
        Some(t) => {
            let restored = tiering::restore_snapshot(t, &data.projections())
                .await
                .with_context(|| {
                    format!(
                        "restoring a snapshot from the object store {} (this data directory has none)",
                        t.display()
                    )
                })?;
            if restored {
                tracing::info!(store = t.display(), "restoring from the object store");
            }
        }
        None => tiering::warn_if_tiered(data, log),
    }

    let started = Instant::now();
    let (mut proj, continues) = load_projections(data, projection_config(config), log).await?;
    let origin = proj.origin().clone();
    let replayed = proj
        .catch_up(log, |_, _| {})
        .await
        .map_err(|e| catch_up_refused(e, &origin, log))?;
    // Before it serves: a sidecar deleted or cut short failed every read of its messages.
    let repaired = index_repair::at_start(&proj, log).await;
    tracing::info!(
        origin = ?proj.origin(),
        replayed,
        applied = proj.state.next_offset(),
        took_ms = started.elapsed().as_millis() as u64,
        "projections ready"
    );
    let dir = data.conversation_cache();
    // Under `always`, a doubt about the lists on disk marks the cache, and the open that may
    // recover then finds the mark, empties the cache and clears the mark: the lists this run
    // writes are reused by the next start. (An open without recovery leaves the mark, and the
    // next start under `always` emptied the cache a second time.) Under every/never nothing
    // is reused, and the mark stays for the next start.
    let always = config.log_fsync == tidings_log::FsyncPolicy::Always;
    if always && (after_unsynced || !continues) {
        distrust_conversation_cache(data)?;
    }
    if after_unsynced && always {
        tracing::info!(
            "the conversation cache starts empty: the log's last run wrote under fsync every/never"
        );
    }
    let conv_cache = ConversationCache::open(
        &dir,
        &ConversationCacheConfig {
            memory_bytes: config.cache_conversation_memory_bytes,
            disk_bytes: config.cache_conversation_disk_bytes,
            // Entries on disk are reused only under `fsync = always`, this run's and the last
            // one's (under every/never a power cut can take applied events, whose offsets are
            // then reused), and only when the state continues this directory's history (see
            // `load_projections`); and never when the directory is marked (by an earlier start
            // or a rebuild that knew one of these: `ConversationCache::distrust`).
            recover: always,
        },
    )
    .await
    .with_context(|| format!("opening the conversation cache in {}", dir.display()))?;
    Ok((proj, conv_cache, repaired))
}

/// The start's catch-up error, in words for the operator when it needs offsets before the
/// log's first one: the log starts past offset 0 (its oldest segments deleted, by the
/// retention or by hand, or only in an object store this server does not read) and no
/// snapshot covers what it no longer holds. A start goes on from a snapshot of the offset
/// before the log's start or later: the messages before it have expired.
fn catch_up_refused(
    e: tidings_projections::ProjectionError,
    origin: &Origin,
    log: &Log,
) -> anyhow::Error {
    let start = log.start_offset();
    match e {
        tidings_projections::ProjectionError::HistoryMissing { needed, .. } if needed < start => {
            let from = match origin {
                Origin::Empty => "there is no usable snapshot".to_owned(),
                Origin::Snapshot(path) => format!(
                    "the newest usable one, {}, ends at offset {}",
                    path.display(),
                    needed.saturating_sub(1)
                ),
            };
            anyhow::anyhow!(
                "the log starts at offset {start} (the segments before it were deleted, by the retention or by hand, or are only in an object store this server does not read), and no snapshot covers the offsets before it: {from}, so the state needs the log from offset {needed}. Restore the deleted segments, or a snapshot of offset {} or later, or start with the object store the log was tiered to",
                start.saturating_sub(1)
            )
        }
        other => other.into(),
    }
}

/// Marks the conversation cache's lists on disk as not to be reused
/// ([`ConversationCache::distrust`]), before whatever puts the log's history in doubt is done
/// (snapshots set aside, a rebuild): a process that died between that and the cache's open
/// otherwise left the next start with nothing to tell it, and that start reused the lists
/// (until 2026-11-30).
pub(crate) fn distrust_conversation_cache(data: &DataDir) -> anyhow::Result<()> {
    let dir = data.conversation_cache();
    ConversationCache::distrust(&dir).with_context(|| {
        format!(
            "marking the conversation cache in {} as not to be reused",
            dir.display()
        )
    })
}

/// Whether the log's last run may have lost acknowledged writes in a power cut: it ran under
/// `fsync = every/never`, as the log's `fsync-policy` records. An open records its own policy
/// over that file at once, so the fact is written down here too
/// (`DATA/projections/after-unsynced-writes`, before the open) and kept until the snapshots
/// ahead of the log are set aside ([`set_aside_snapshots_ahead_of`]): a start that failed in
/// between left the next one reading `always` and refusing a power cut's loss as damage
/// (review, 2026-12-03). A log from before the policy file counts as `always`.
pub(crate) fn after_unsynced_run(data: &DataDir) -> anyhow::Result<bool> {
    let marker = unsynced_marker(data);
    if tidings_log::last_open_was_unsynced(&data.log()) {
        if !marker.exists() {
            std::fs::create_dir_all(data.projections())
                .with_context(|| format!("creating {}", data.projections().display()))?;
            crate::data::write_durably(&marker, b"", 0o644)?;
        }
        return Ok(true);
    }
    Ok(marker.exists())
}

/// [`after_unsynced_run`] without writing anything (for read-only commands).
pub(crate) fn last_run_unsynced(data: &DataDir) -> bool {
    tidings_log::last_open_was_unsynced(&data.log()) || unsynced_marker(data).exists()
}

fn unsynced_marker(data: &DataDir) -> std::path::PathBuf {
    data.projections().join("after-unsynced-writes")
}

/// The offset through which the records were acknowledged, as far as the data directory tells:
/// the newest snapshot's (its state applied them, and only acknowledged records are applied);
/// none after a run that may have lost acknowledged writes ([`after_unsynced_run`]). The log's
/// open refuses to end at or below it (`LogOptions::with_acknowledged_through`): until
/// 2026-12-03 one flipped bit in the last batch was cut as a torn write, the snapshot set
/// aside, and the next send took the lost message's seq and offset (QA).
pub(crate) fn acknowledged_through(data: &DataDir) -> anyhow::Result<Option<u64>> {
    if after_unsynced_run(data)? {
        return Ok(None);
    }
    let snapshots = data.projections().join("snapshots");
    Ok(tidings_projections::snapshot::list(&snapshots)?
        .iter()
        .map(|s| s.applied)
        .max())
}

/// What an operator does about acknowledged records the log lost from offset `from`: the
/// README's "The log lost acknowledged records".
fn lost_acknowledged_advice(data: &DataDir, from: u64) -> String {
    format!(
        "Nothing was cut and no snapshot set aside. Put back a good copy of the log's files \
         that holds offset {from} (a backup, or a tier's copy of a sealed segment); or, to go \
         on without those records, move every snapshot of offset {from} or later out of {} \
         (the next start cuts the log there, loads an older snapshot or replays the log, and \
         new messages take the lost ones' seqs) — see \"The log lost acknowledged records\" \
         in the README",
        data.projections().join("snapshots").display()
    )
}

/// The error of a refused open of the log, with what to do about records a snapshot says were
/// acknowledged ([`acknowledged_through`]): the conversation cache is marked first, as for
/// snapshots set aside — the lists it holds may name the lost records, and a start after the
/// snapshots ahead were moved out by hand sets nothing aside itself.
pub(crate) fn log_open_refused(e: tidings_log::LogError, data: &DataDir) -> anyhow::Error {
    let lost_from = match &e {
        tidings_log::LogError::Corrupt {
            kind: tidings_log::CorruptKind::AcknowledgedDamage { .. },
            expected_offset,
            ..
        } => Some(*expected_offset),
        _ => None,
    };
    let e = anyhow::Error::new(e).context(format!("opening the log in {}", data.log().display()));
    let Some(from) = lost_from else {
        return e;
    };
    if let Err(d) = distrust_conversation_cache(data) {
        return e.context(format!("{d:#}"));
    }
    e.context(format!(
        "the log lost records from offset {from} that a snapshot says were acknowledged \
         (written under fsync = always, which acknowledges only what is synced). {}",
        lost_acknowledged_advice(data, from)
    ))
}

/// Refuses a start whose log ends at `end`, before a snapshot's offset, when the log's last
/// run wrote under `fsync = always` ([`after_unsynced_run`]): every record a snapshot covers
/// was synced before it was acknowledged, so the log lost acknowledged records — damaged or a
/// file removed — and going on would write new messages at their seqs and offsets. Under
/// `every`/`never` a power cut takes such records: the snapshots ahead are set aside, as
/// before. The log's open refuses most such logs first (`acknowledged_through`); this catches
/// the rest. The conversation cache is marked first, as in [`log_open_refused`].
pub(crate) fn refuse_lost_acknowledged(data: &DataDir, end: u64) -> anyhow::Result<()> {
    if after_unsynced_run(data)? {
        return Ok(());
    }
    match lost_acknowledged(data, end)? {
        None => Ok(()),
        Some(e) => {
            distrust_conversation_cache(data)?;
            Err(e)
        }
    }
}

/// [`refuse_lost_acknowledged`] changing nothing (for `compact`'s plan, a dry run's too): no
/// note of the last run written, no cache marked.
pub(crate) fn check_lost_acknowledged(data: &DataDir, end: u64) -> anyhow::Result<()> {
    if last_run_unsynced(data) {
        return Ok(());
    }
    lost_acknowledged(data, end)?.map_or(Ok(()), Err)
}

/// The error for a log ending at `end` below a snapshot's offset, if it does.
fn lost_acknowledged(data: &DataDir, end: u64) -> anyhow::Result<Option<anyhow::Error>> {
    let snapshots = data.projections().join("snapshots");
    let Some(newest) = tidings_projections::snapshot::list(&snapshots)?
        .into_iter()
        .filter(|s| s.applied >= end)
        .max_by_key(|s| s.applied)
    else {
        return Ok(None);
    };
    Ok(Some(anyhow::anyhow!(
        "the log in {} ends before offset {end}, but snapshot {} covers offsets through {}, and \
         the log was written under fsync = always, which acknowledges only what is synced: \
         acknowledged records are missing from the log (damaged, or a file removed). {}",
        data.log().display(),
        newest.path.display(),
        newest.applied,
        lost_acknowledged_advice(data, end)
    )))
}

/// The newest snapshot that the log still covers (or empty projections). A snapshot past the
/// log's end describes events the log lost — a power cut under `fsync = every/never`, or a
/// tail cut in recovery — and applying from there would skip every event appended again at
/// those offsets; it is passed over with a warning, and the state is rebuilt from an older
/// snapshot or from offset 0 (same log, same state). A snapshot whose anchor differs from the
/// log's record at its offset (`projections/src/snapshot.rs`) describes another history of the
/// log — a data directory whose log was replaced or restored from another node's, a snapshot
/// from a store another writer also wrote — and is set aside the same way. A snapshot shaped by
/// other settings of the idempotency window (`ProjectionConfig::shapes`) is not loaded: the
/// projections are rebuilt from the log under the configured ones, every snapshot set aside
/// first — once the log can be read from offset 0 now ([`replay_from_zero::check`]); else the
/// start is refused and every snapshot left in place.
///
/// Also says whether the state is known to continue the history this directory last ran with:
/// loaded from a snapshot whose anchor matches the log, with nothing set aside at this start.
/// Only then is the conversation cache on disk reused (its entries are keyed by log offsets,
/// which another history reuses for other events). Whatever is set aside marks the cache
/// first ([`distrust_conversation_cache`]): the next start, if this one fails before the cache
/// opens, finds nothing left to set aside and would otherwise reuse it.
async fn load_projections(
    data: &DataDir,
    config: tidings_projections::ProjectionConfig,
    log: &Log,
) -> anyhow::Result<(Projections, bool)> {
    let projections = data.projections();
    let dir = projections.as_path();
    let end = log.next_offset();
    refuse_lost_acknowledged(data, end)?;
    let mut continues = set_aside_snapshots_ahead_of(data, end)? == 0;
    loop {
        let Some(last) = end.checked_sub(1) else {
            return Ok((Projections::empty(dir, config)?, false));
        };
        let p = Projections::load_at_most(dir, config.clone(), Some(last))?;
        if let Origin::Snapshot(path) = p.origin()
            && !config.shapes(&p.state)
        {
            tracing::info!(
                snapshot = %path.display(),
                snapshot_idempotency_entries = p.state.idempotency.max_entries,
                snapshot_idempotency_ms = p.state.idempotency.max_age_ms,
                idempotency_entries = config.idempotency_max_entries,
                idempotency_ms = config.idempotency_max_age_ms,
                snapshot_index_flush_entries = p.state.index.flush_entries,
                index_flush_entries = config.index_flush_entries,
                "the projections' settings changed since the snapshot; rebuilding the projections from the log"
            );
            // The rebuild writes the message index's sidecars anew, under names the snapshots
            // already use (a sidecar is named for its first offset) but cut where the new
            // settings cut them: no snapshot of the old settings may load after it (one loaded
            // once the settings were changed back failed every read of those messages). So
            // they go aside first, and only when the replay from offset 0 can run: one that
            // failed would leave none, and the next start, under either settings, the same.
            if let Err(e) = replay_from_zero::check(log).await {
                anyhow::bail!(
                    "the projections' settings changed since snapshot {} was made ({}), so the projections must be rebuilt by replaying the log from offset 0, which cannot be read now: {e:#}. Every snapshot was left in place: start with the settings they were made under, or with the object store this directory was tiered to (tier.url) set and answering (a log whose oldest segments the retention removed, compaction.retention_*, cannot be replayed from offset 0 again: keep the settings)",
                    path.display(),
                    changed_settings(&p.state, &config)
                );
            }
            drop(p);
            set_aside_all_snapshots(data, ".snap.other-settings")?;
            return Ok((Projections::empty(dir, config)?, false));
        }
        let (Origin::Snapshot(path), Some(anchor)) = (p.origin(), p.snapshot_anchor()) else {
            return Ok((p, false));
        };
        let applied = p.state.applied.unwrap_or(0);
        match p.anchor_matches(log).await {
            Ok(Some(false)) => {}
            Ok(Some(true)) => return Ok((p, continues)),
            Ok(None) => return Ok((p, false)),
            Err(e) => {
                // Not a verdict: the state is used, as before anchors existed.
                tracing::warn!(error = %e, snapshot = %path.display(), anchor, "could not read the record a snapshot ends at to check it belongs to this log; using it");
                return Ok((p, false));
            }
        }
        continues = false;
        let path = path.clone();
        let aside = aside_path(&path, ".snap.other-history");
        tracing::warn!(
            snapshot = %path.display(),
            snapshot_applied = applied,
            moved_to = %aside.display(),
            "a snapshot was made from another history of the log (the record at its offset differs); loading an older one or replaying the log"
        );
        distrust_conversation_cache(data)?;
        std::fs::rename(&path, &aside)
            .with_context(|| format!("setting aside {}", path.display()))?;
        sync_snapshots_dir(&dir.join("snapshots"))?;
        prune_set_aside(&dir.join("snapshots"));
    }
}

/// Makes the renames in `snapshots` durable. A set-aside rename lost in a power cut brings the
/// snapshot back; by then the log may reach past its offset again, and one the anchor check
/// cannot judge (no anchor, or its record unreadable) is loaded, describing events the log
/// does not hold (until 2026-12-03 only [`set_aside_all_snapshots`] synced: nothing else
/// synced the directory before the first periodic snapshot).
fn sync_snapshots_dir(snapshots: &std::path::Path) -> anyhow::Result<()> {
    if snapshots.is_dir() {
        std::fs::File::open(snapshots)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", snapshots.display()))?;
    }
    Ok(())
}

/// The state-shaping settings in which a snapshot's `state` differs from `config`, as
/// `projections.name old → new`, for messages.
fn changed_settings(state: &tidings_projections::State, config: &ProjectionConfig) -> String {
    let fresh = config.empty_state();
    let mut changed = Vec::new();
    let (was, now) = (&state.idempotency, &fresh.idempotency);
    if was.max_entries != now.max_entries {
        changed.push(format!(
            "projections.idempotency_entries {} → {}",
            was.max_entries, now.max_entries
        ));
    }
    if was.max_age_ms != now.max_age_ms {
        changed.push(format!(
            "projections.idempotency_secs {} → {}",
            was.max_age_ms / 1000,
            now.max_age_ms / 1000
        ));
    }
    if state.index.flush_entries != fresh.index.flush_entries {
        changed.push(format!(
            "projections.index_flush_entries {} → {}",
            state.index.flush_entries, fresh.index.flush_entries
        ));
    }
    changed.join(", ")
}

/// Sets aside (renames to `*.snap.ahead-of-log`) every snapshot covering offset `end` or
/// later: it describes events the log no longer holds (lost in a power cut under `fsync =
/// every/never`, or cut in recovery). Used by the server at start and by `rebuild`, which
/// would otherwise write its snapshot among them and prune it as the oldest. When any goes
/// aside, the conversation cache is marked first (its lists may name the lost offsets).
/// Returns how many it set aside.
pub(crate) fn set_aside_snapshots_ahead_of(data: &DataDir, end: u64) -> anyhow::Result<usize> {
    let snapshots = data.projections().join("snapshots");
    remove_temp_files(&snapshots, ".snap.tmp", "a snapshot write");
    remove_temp_files(
        &data.projections().join("index"),
        ".cidx.tmp",
        "a sidecar write",
    );
    let ahead: Vec<_> = tidings_projections::snapshot::list(&snapshots)?
        .into_iter()
        .filter(|snap| snap.applied >= end)
        .collect();
    if !ahead.is_empty() {
        distrust_conversation_cache(data)?;
    }
    for snap in &ahead {
        // Set aside, not deleted (for a post-mortem), and never loaded again: once the log
        // grows past its offset it would look current while describing other events.
        let aside = aside_path(&snap.path, ".snap.ahead-of-log");
        tracing::warn!(
            snapshot = %snap.path.display(),
            snapshot_applied = snap.applied,
            log_end = end,
            moved_to = %aside.display(),
            "a snapshot covers events the log no longer holds (lost in a power cut under fsync every/never, or cut in recovery); loading an older one or replaying the log"
        );
        std::fs::rename(&snap.path, &aside)
            .with_context(|| format!("setting aside {}", snap.path.display()))?;
    }
    if !ahead.is_empty() {
        sync_snapshots_dir(&snapshots)?;
    }
    prune_set_aside(&snapshots);
    // The snapshots a power cut left ahead are aside, durably: the run before no longer
    // matters ([`after_unsynced_run`]).
    let marker = unsynced_marker(data);
    if marker.exists() {
        std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
    }
    Ok(ahead.len())
}

/// Sets aside (renames to `*{suffix}`) every snapshot in the data directory's
/// `projections/snapshots/`; when there is any, the conversation cache is marked first.
pub(crate) fn set_aside_all_snapshots(data: &DataDir, suffix: &str) -> anyhow::Result<()> {
    let snapshots = data.projections().join("snapshots");
    let all = tidings_projections::snapshot::list(&snapshots)?;
    if !all.is_empty() {
        distrust_conversation_cache(data)?;
    }
    for snap in all {
        // `….snap` → `….snap.other-settings`.
        let aside = aside_path(&snap.path, suffix);
        tracing::warn!(snapshot = %snap.path.display(), moved_to = %aside.display(), "setting aside a snapshot of other settings");
        std::fs::rename(&snap.path, &aside)
            .with_context(|| format!("setting aside {}", snap.path.display()))?;
    }
    // Durable before the replay rewrites the sidecars: a rename lost in a power cut would
    // bring such a snapshot back over sidecars cut elsewhere.
    sync_snapshots_dir(&snapshots)?;
    prune_set_aside(&snapshots);
    Ok(())
}

/// Where snapshot `path` (`{applied:020}.snap`) goes aside with `suffix` (`.snap.{why}`):
/// `{applied:020}.snap.{why}`, or `{applied:020}.{n}.snap.{why}` with the first `n` from 1 that
/// is free when that is taken — a second snapshot of the same offset set aside for the same
/// reason (two `rebuild`s under other settings) replaced the first, which was lost.
fn aside_path(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".snap"))
        .unwrap_or("snapshot");
    let at = |name: String| path.with_file_name(name);
    let first = at(format!("{stem}{suffix}"));
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|n| at(format!("{stem}.{n}{suffix}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Removes what writes cut short left in `dir` (`.{offset:020}{suffix}`: snapshots'
/// `.snap.tmp`, message index sidecars' `.cidx.tmp`; a crash, or a full disk, mid-write):
/// never read, they only took space (a sidecar's stayed for good until 2026-12-03). Called with
/// the data directory locked, when no snapshot or sidecar is being written.
fn remove_temp_files(dir: &std::path::Path, suffix: &str, what: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_prefix('.'))
            .and_then(|n| n.strip_suffix(suffix))
        else {
            continue;
        };
        if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => {
                tracing::info!(path = %e.path().display(), "removed the part of {what} cut short");
            }
            Err(err) => {
                tracing::warn!(error = %err, path = %e.path().display(), "could not remove the part of {what} cut short");
            }
        }
    }
}

/// Snapshots set aside (each a full state) are kept for a post-mortem, the newest
/// [`SET_ASIDE_KEPT`] of each kind; older ones are deleted (best effort).
fn prune_set_aside(snapshots: &std::path::Path) {
    for suffix in [
        ".snap.ahead-of-log",
        ".snap.other-history",
        ".snap.other-settings",
    ] {
        let Ok(entries) = std::fs::read_dir(snapshots) else {
            return;
        };
        let mut found: Vec<((i64, i64), String, std::path::PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                use std::os::unix::fs::MetadataExt;
                let name = e.file_name().to_str()?.to_owned();
                // The rename that set it aside changed its inode: `ctime` is when.
                let md = e.metadata().ok()?;
                let when = (md.ctime(), md.ctime_nsec());
                name.ends_with(suffix).then(|| (when, name, e.path()))
            })
            .collect();
        // Set aside most recently last (then by name).
        found.sort();
        let excess = found.len().saturating_sub(SET_ASIDE_KEPT);
        for (_, _, path) in found.into_iter().take(excess) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, path = %path.display(), "could not remove an old set-aside snapshot");
            }
        }
    }
}

/// Set-aside snapshots kept of each kind (see [`prune_set_aside`]).
const SET_ASIDE_KEPT: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot set aside where one of the same offset and reason already is gets a name of
    /// its own (the second `rebuild` under other settings replaced the first), which the
    /// pruning of set-aside snapshots still counts.
    #[test]
    fn a_second_snapshot_set_aside_at_the_same_offset_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("00000000000000000061.snap");
        let suffix = ".snap.other-settings";
        for name in [
            "00000000000000000061.snap.other-settings",
            "00000000000000000061.1.snap.other-settings",
            "00000000000000000061.2.snap.other-settings",
        ] {
            let aside = aside_path(&snap, suffix);
            assert_eq!(aside, dir.path().join(name));
            std::fs::write(&aside, name).unwrap();
        }
    }
}
