//! The background purge of recalled messages' payloads (`compaction.purge_interval_secs`): what
//! `tidings compact` does with the server stopped, done by the running server, a few records
//! at a time, in place (`Log::rewrite_sealed`: the same offsets and lengths, the payload
//! replaced by zeros and the record marked purged).
//!
//! Every interval (the first pass one interval after the start), a pass:
//! 1. Under the projections' read lock, takes the last applied offset (A0); then, holding the
//!    lock for a few channels at a time, for every recall applied after the watermark (the A0
//!    of the last pass that finished, kept across restarts; none at a first start, whose first
//!    pass considers every recall ever) and at most A0, the message index's location of the
//!    recalled message's send and the offsets of all its edits (`Heads::edit_offsets`), if
//!    any. The lock is held only for those copies: the sidecar runs are read after it is
//!    released.
//! 2. Then protects A0 and the offset of every snapshot: those being written
//!    ([`SnapshotWrites`]), then those on disk, and with a tier those in the object store. A record a snapshot is anchored to is never
//!    rewritten (its anchor would no longer match, and the next start would set the snapshot
//!    aside as another history's). A snapshot taken after step 1 ends at A0 or later, past
//!    every target (a message is sent before it is recalled or edited); one prepared before
//!    it is registered in [`SnapshotWrites`] under the lock its state was read under, before
//!    the applier could apply anything past it, so it is listed there or its file is on disk
//!    by the time the pass looks.
//! 3. Finds where each target is (the message index), then, a share at a time in log order
//!    ("A bounded pass" below), reads the target records and plans
//!    ([`tidings_compaction::plan_online_purge`]): a record that is not the expected send or
//!    edit of that channel and seq is skipped with a warning (never purged unidentified), one
//!    purged already is skipped, one in the active segment or at a protected offset is left
//!    for a later pass, the others are grouped by sealed segment.
//! 4. Rewrites each of those segments, checking for shutdown between them, before the next
//!    share is read.
//!
//! The watermark then moves to A0 — or, when records were left, to just before the earliest
//! recall whose record was left, so that the next pass considers it again (and finds the later
//! ones purged already) — and is kept in `DIR/projections/purge-watermark` for the next start
//! ([`load_watermark`]). The records of a segment whose rewrite fails are left as well (the
//! next pass tries again; the pass counts as failed) — unless it failed on damage (a batch that
//! fails its checksum, locally or in the object store), which fails the same way at every
//! pass: those records are given up on with an error, as an unreadable target is, and never
//! hold the watermark. A target that cannot be read (a damaged sidecar or batch) is skipped with a warning,
//! not retried (an object store that does not answer, or a read that failed for want of file
//! descriptors or memory, fails the pass instead, its watermark kept: until 2026-12-02 such a
//! read skipped its target for good): one damaged record must not stop every later purge. A target below the log's
//! first offset is gone already (its segment was deleted: the retention, or by hand; its
//! message has expired, `tidings_projections::messages`' module doc): left out of the pass
//! without a word — not a failure, not counted as purged, not left for a later pass. The
//! records read are copied out of the log's read buffers, so a pass holds only the targets' own
//! bytes.
//!
//! A bounded pass: a share reads records until they hold `compaction.purge_share_bytes` (at
//! least one record) and the next target lies in another segment, so a pass holds about twice
//! that (as read, and purged) — a sealed segment's records at most past it — however many
//! recalls it looks at (their list, a hundred bytes or so each, is all a pass keeps of them
//! all): a first pass looks at every recall ever made, and until 2026-12-03 read every target
//! before it rewrote anything. A sealed segment's targets stay in one share, so it is
//! rewritten once. The watermark is kept once the pass is done, from every share's left
//! targets.
//!
//! Every edit of a recalled message is a target, not only its latest: the projections keep
//! each edit's offset (until 2026-11-30 they kept the latest only, and the earlier edits'
//! payloads stayed on disk). An edit after a recall is never written by the API (the edit
//! endpoint refuses it under the sequencer lock), and the projections ignore one, keeping no
//! offset of it: a log that holds one anyway (written by hand, or by another build) keeps its
//! payload until `tidings compact`, which scans the whole log, purges it. Left as they are, by
//! design: the conversation cache's files and older snapshots may still hold a recalled
//! message's preview until they are overwritten or pruned.
//!
//! A recall first: a pass acts on a recall only once nothing can lose it while its send's purge
//! is kept — a purged send with no recall after it is a message whose words are zeros. So the
//! log is synced before the rewrites (under `fsync = every` or `never` an applied recall may
//! be in the page cache only, and a power cut kept the rewritten segment, synced, without it),
//! and on a tiered server only recalls the object store holds (below the end of its manifest)
//! are acted on: the active segment is uploaded only once sealed, and a restore from the store
//! read the purged send of a recall still in the lost directory's active segment. A later
//! recall waits for its segment's upload; until 2026-12-03 both orders were possible.
//!
//! On a tiered server (`tier.url` set) the log rewrites a sealed segment wherever it is — a
//! local copy, or one only in the object store (read through the cold path) — and uploads the
//! rewrite under new objects in place of the old ones (`Log::rewrite_sealed`). Until
//! 2026-11-30 the purge was off on every tiered server. Off on a data directory that was tiered
//! and is started without its tier ([`DataDir::tier_marker`]), as `tidings compact` refuses it:
//! the object store keeps its own copies of segments and snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use bytes::Bytes;
use tidings_compaction::{Target, TargetKind, plan_online_purge};
use tidings_log::{Log, SealedSegment};
use tidings_projections::heads::Heads;
use tidings_projections::ids::ChannelId;
use tidings_projections::msgindex::{IndexFiles, IndexState, Located};
use tidings_projections::snapshot;
use tokio_util::sync::CancellationToken;

use crate::data::DataDir;
use crate::server::state::AppState;

/// Recalls at offsets up to this one were dealt with by an earlier pass (`None`: none yet).
type Watermark = Option<u64>;

/// Runs a pass every `compaction.purge_interval_secs` until `stop` (the module doc), unless
/// the purge is off.
pub(crate) async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let Some(every) = state.config.purge_interval() else {
        tracing::debug!(
            "the background purge of recalled messages is off (compaction.purge_interval_secs = 0)"
        );
        return;
    };
    if let Some(why) = off_because(&state) {
        tracing::info!("{why}");
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The first tick is at once: the first pass comes one interval after the start.
    tick.tick().await;
    let mut watermark: Watermark = load_watermark(&state).await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        state.metrics.purge_passes.inc();
        match pass(&state, &mut watermark, &stop).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                state.metrics.purge_failures.inc();
                let why = format!("{e:#}");
                tracing::warn!(error = %why, "a pass of the background purge of recalled messages failed; the next pass tries again");
            }
        }
    }
}

/// Where the watermark is kept across restarts: `DIR/projections/purge-watermark`, the offset
/// and the anchor of the record there (the CRC-32 of its payload, as a snapshot's), which ties
/// it to this log's history. Without it (a first start, a file that does not match the log),
/// the first pass considers every recall ever: each is read, and those purged already are
/// skipped.
fn watermark_path(state: &AppState) -> std::path::PathBuf {
    DataDir::new(&state.config.data)
        .projections()
        .join("purge-watermark")
}

/// The watermark kept by an earlier run, if it is this log's.
async fn load_watermark(state: &AppState) -> Watermark {
    let path = watermark_path(state);
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "could not read the purge's watermark: every recall is considered again");
            return None;
        }
    };
    let mut fields = text.split_whitespace();
    let offset = fields.next().and_then(|f| f.parse::<u64>().ok());
    let anchor = fields.next().and_then(|f| u32::from_str_radix(f, 16).ok());
    // The anchor's record: the watermark's own, or the recall just after it (`store_watermark`).
    let at = match fields.next().map(str::parse::<u64>) {
        None => offset,
        Some(Ok(at)) if Some(at) == offset.and_then(|o| o.checked_add(1)) => Some(at),
        Some(_) => None,
    };
    let (Some(offset), Some(anchor), Some(at)) = (offset, anchor, at) else {
        tracing::warn!(file = %path.display(), "the purge's watermark does not parse: every recall is considered again");
        return None;
    };
    match snapshot::anchor_at(&state.log, at).await {
        Ok(Some(found)) if found == anchor => Some(offset),
        _ => {
            tracing::info!(file = %path.display(), offset, "the purge's watermark is not this log's (the record there differs, or the log does not hold it): every recall is considered again");
            None
        }
    }
}

/// Moves `current` to `next`, kept for the next start when it changed ([`store_watermark`]).
/// `left`: `next` stops just below a recall whose target was left for a later pass.
async fn advance(state: &AppState, current: &mut Watermark, next: Watermark, left: bool) {
    if next != *current
        && let Some(w) = next
        && let Err(e) = store_watermark(state, w, left).await
    {
        let why = format!("{e:#}");
        tracing::warn!(error = %why, "could not keep the purge's watermark (the first pass after a restart considers every recall again)");
    }
    *current = next;
}

/// Keeps `w` for the next start (module doc), with the anchor of a record a purge never
/// rewrites where it can: a watermark that stops below a recall whose target was left (`left`)
/// is anchored to that recall, at `w + 1`, written `w anchor w+1`. Anchored to the record at
/// `w` instead, it was most often the left send itself, which the next pass purges: its anchor
/// no longer matched, and every later start's first pass considered every recall ever again
/// (review, 2026-12-03). Otherwise the record at `w` (the last applied): a send recalled
/// later may still be purged under it — slower at the next start, not wrong.
async fn store_watermark(state: &AppState, w: u64, left: bool) -> anyhow::Result<()> {
    let at = if left { w.saturating_add(1) } else { w };
    let Some(anchor) = snapshot::anchor_at(&state.log, at).await? else {
        return Ok(());
    };
    let path = watermark_path(state);
    let bytes = if left {
        format!("{w} {anchor:08x} {at}\n")
    } else {
        format!("{w} {anchor:08x}\n")
    };
    tokio::task::spawn_blocking(move || crate::data::write_durably(&path, bytes.as_bytes(), 0o644))
        .await??;
    Ok(())
}

/// Why the purge is off on this server, if it is: a data directory that was tiered, started
/// without its tier.
fn off_because(state: &AppState) -> Option<String> {
    if state.config.tier.url.is_some() || state.log.tier().is_some() {
        return None;
    }
    let marker = DataDir::new(&state.config.data).tier_marker()?;
    Some(format!(
        "the background purge of recalled messages is off: this data directory was tiered ({} \
         exists), and the object store keeps its copies of segments and snapshots, which a \
         purge would not reach (`tidings compact` refuses it too)",
        marker.display()
    ))
}

/// A recalled message, as step 1 of a pass finds it (module doc).
struct Recalled {
    channel: ChannelId,
    seq: u64,
    /// The offset of its recall.
    recall: u64,
    /// Where the message index holds its send's offset (nowhere when its entry went with its
    /// sidecar: then `expired`).
    send: Vec<Located>,
    /// Its send lies below a start of the log a `log_trimmed` event told
    /// (`IndexState::dropped_through`): gone already.
    expired: bool,
    /// The offsets of its edits, in log order (empty when never edited).
    edits: Vec<u64>,
}

/// What a pass copies out from under the projections' lock.
struct Found {
    /// A0: the last offset applied.
    applied: u64,
    recalled: Vec<Recalled>,
    files: IndexFiles,
    snapshots: std::path::PathBuf,
}

/// One pass (module doc), moving `kept` (the watermark) once it is done: false when `stop`
/// ended it midway (the watermark as it was; the shares rewritten meanwhile are found purged
/// already by the next pass).
async fn pass(
    state: &Arc<AppState>,
    kept: &mut Watermark,
    stop: &CancellationToken,
) -> anyhow::Result<bool> {
    // A tiered log that does not hold the store's prefix (a restart waiting out the lease of
    // the process before it) rewrites nothing: the pass waits for the claim, not counted as
    // failed (each one was, every interval, after every crash until 2026-12-03).
    if state.log.tier().is_some_and(|t| !t.is_claimed()) {
        tracing::debug!("the background purge waits for the object store's prefix to be claimed");
        return Ok(true);
    }
    // 1. Under the lock: what to look at.
    let found = {
        let p = state.proj();
        // Read under the lock the applier sets it under: its state may hold part of the record
        // it stopped at.
        if state.applier_failed.load(Ordering::Acquire) {
            return Ok(true);
        }
        let Some(applied) = p.state.applied else {
            return Ok(true);
        };
        let channels: Vec<ChannelId> = p.state.heads.recalled.keys().cloned().collect();
        let found = Found {
            applied,
            recalled: Vec::new(),
            files: p.index_files().clone(),
            snapshots: p.snapshot_dir(),
        };
        (found, channels)
    };
    // The recalls it may act on (module doc, "A recall first"): with a tier, those the object
    // store holds; none while it holds nothing.
    let through = match state.log.tier().map(|t| t.manifest().end()) {
        None => found.0.applied,
        Some(0) => return Ok(true),
        Some(end) => found.0.applied.min(end - 1),
    };
    // The recalls, a few channels per hold of the lock: the applier (which needs the write lock,
    // and every reader after it waits on it) is held up for a share of a first pass over every
    // recall ever made, not all of it. Recalls past A0 are left to the next pass; what the
    // index said of a message stays true (an entry moves to a sidecar run, which never changes).
    let (mut found, channels) = found;
    // A recall below the log's start is gone with the send and edits it recalled (all before
    // it): taken as done, not looked up in the index to be dropped later.
    let watermark = match (*kept, state.log.start_offset().checked_sub(1)) {
        (Some(w), Some(below)) => Some(w.max(below)),
        (w, below) => w.or(below),
    };
    for chunk in channels.chunks(RECALL_CHANNELS_PER_LOCK) {
        let p = state.proj();
        found.recalled.extend(recalled_since(
            &p.state.heads,
            &p.state.index,
            chunk,
            watermark,
            through,
        ));
    }
    // Never back: a watermark past `through` (the log's start moved past what the store
    // holds) stays.
    let through_all = Some(watermark.map_or(through, |w| w.max(through)));
    if found.recalled.is_empty() {
        advance(state, kept, through_all, false).await;
        return Ok(true);
    }
    let Found {
        applied,
        recalled,
        files,
        snapshots,
    } = found;
    // 2. What must not be rewritten: A0 and every snapshot's record, those being written first.
    let mut protected = state.snapshot_writes.offsets();
    protected.insert(applied);
    protected.extend(snapshot::list(&snapshots)?.iter().map(|s| s.applied));
    // With a tier, the store's snapshots too: it keeps some the directory pruned (the newest
    // two a restore can use), and a restore or the retention's check of one anchored to a
    // purged record would set it aside.
    if let Some(tier) = state.log.tier() {
        let names = tier
            .list("snapshots")
            .await
            .context("listing the snapshots in the object store")?;
        protected.extend(
            names
                .iter()
                .filter_map(|n| n.strip_suffix(".snap")?.parse::<u64>().ok()),
        );
    }
    // 3. Where each target is (the message index; no record read yet), in log order.
    let (log, halt) = (state.log.clone(), stop.clone());
    let located =
        tokio::task::spawn_blocking(move || locate_targets(&log, &files, recalled, &halt));
    let Some(mut rest) = located.await?? else {
        return Ok(false);
    };
    rest.sort_by_key(|t| t.offset);
    // 4. A share of the targets at a time, in log order (module doc, "A bounded pass"): read,
    // planned and rewritten before the next is read. A segment is rewritten once per share
    // that holds some of its targets (most often once).
    let mut left = Vec::new();
    let mut failed = false;
    let budget = state.config.compaction_purge_share_bytes.max(1);
    while !rest.is_empty() {
        let (log, halt) = (state.log.clone(), stop.clone());
        let read = tokio::task::spawn_blocking(move || {
            let sealed = log.sealed_segments();
            let share = read_share(&log, &rest, &halt, (budget, &sealed));
            (rest, share)
        });
        let (mut all, share) = read.await?;
        let Some((taken, records, gone)) = share? else {
            return Ok(false);
        };
        rest = all.split_off(taken);
        all.retain(|t| !gone.contains(&t.offset));
        let Some(done) = purge_share(state, &all, records, &protected, stop).await? else {
            return Ok(false);
        };
        left.extend(done.left);
        failed |= done.failed;
    }
    if failed {
        state.metrics.purge_failures.inc();
    }
    // The watermark: `through`, or just below the earliest recall whose target was left.
    let next = match left.iter().map(|t| t.recall).min() {
        None => Some(through),
        Some(recall) => recall.checked_sub(1).map(|w| w.min(through)),
    };
    let next = next.map(|w| watermark.map_or(w, |old| old.max(w)));
    advance(state, kept, next, !left.is_empty()).await;
    Ok(true)
}

/// What a share of a pass left behind.
struct ShareDone {
    /// The targets left for a later pass (in the active segment, at a protected offset, or in
    /// a segment whose rewrite failed and is retried).
    left: Vec<Target>,
    /// Whether a rewrite failed.
    failed: bool,
}

/// Plans and rewrites one share of a pass's targets (`records`: those read, by offset):
/// `None` when `stop` ended it midway.
async fn purge_share(
    state: &Arc<AppState>,
    targets: &[Target],
    records: BTreeMap<u64, Bytes>,
    protected: &BTreeSet<u64>,
    stop: &CancellationToken,
) -> anyhow::Result<Option<ShareDone>> {
    let sealed = state.log.sealed_segments();
    let mut plan = plan_online_purge(targets, &records, &sealed, protected);
    // Planned: the records as read are no longer needed.
    drop(records);
    for (target, why) in &plan.skipped {
        tracing::warn!(
            channel = %target.channel,
            seq = target.seq,
            record = target.kind.name(),
            offset = target.offset,
            reason = %why,
            "not purging a recalled message's record (the reason says why; it is not retried)"
        );
    }
    let (planned, segments) = (plan.records(), plan.segments.len());
    // 4. The rewrites, once the recalls they act on are durable (module doc, "A recall first").
    if !plan.segments.is_empty() {
        state
            .log
            .sync()
            .await
            .context("syncing the log before purging recalled messages")?;
    }
    let mut purged = 0;
    // The offsets of the records in segments whose rewrite failed and is retried.
    let mut retried = BTreeSet::new();
    let mut failed = 0;
    for (base, replacements) in std::mem::take(&mut plan.segments) {
        if stop.is_cancelled() {
            return Ok(None);
        }
        let offsets: Vec<u64> = replacements.keys().copied().collect();
        match state.log.rewrite_sealed(base, replacements).await {
            Ok(stats) => {
                purged += stats.records;
                state.metrics.purged_records.add(stats.records);
            }
            // Removed by the retention since the plan was made: its records are gone, which
            // is what a purge wants.
            Err(_) if base < state.log.start_offset() => {}
            // Damaged (a batch that fails its checksum, here or in the object store): as for a
            // target that cannot be read, not retried — a rewrite fails the same way at every
            // pass, and it would hold the watermark for good (module doc).
            Err(e @ tidings_log::LogError::Corrupt { .. }) => {
                failed += 1;
                tracing::error!(segment = base, records = offsets.len(), error = %e, "could not purge recalled messages from a damaged sealed segment; not retried (`tidings inspect` names the damage)");
            }
            Err(e) => {
                failed += 1;
                retried.extend(offsets);
                tracing::warn!(segment = base, error = %e, "could not purge recalled messages from a sealed segment; the next pass tries again");
            }
        }
    }
    // Those retried are left for the next pass as those in the active segment are: the
    // watermark stops just below the earliest of their recalls, and past every other recall
    // before it (until 2026-11-30 a failed rewrite kept the whole pass's watermark).
    plan.left.extend(
        targets
            .iter()
            .filter(|t| retried.contains(&t.offset))
            .cloned(),
    );
    let left = plan.left.len();
    if failed > 0 {
        tracing::warn!(
            failed,
            segments,
            retried = retried.len(),
            "some rewrites of the background purge of recalled messages failed"
        );
    }
    if planned > 0 || left > 0 {
        tracing::info!(
            purged,
            segments,
            left,
            already_purged = plan.already_purged,
            "purged recalled messages' payloads from sealed segments (those left are in the active segment, or a snapshot ends at them: a later pass purges them)"
        );
    }
    Ok(Some(ShareDone {
        left: plan.left,
        failed: failed > 0,
    }))
}

/// Every message of `channels` in `heads.recalled` whose recall (its entry in
/// `heads.changes`: a recalled message's latest change is its recall) is past `watermark` and
/// at most `applied` (A0), with where its send and every edit of it are.
fn recalled_since(
    heads: &Heads,
    index: &IndexState,
    channels: &[ChannelId],
    watermark: Watermark,
    applied: u64,
) -> Vec<Recalled> {
    let since = watermark.map_or(0, |w| w.saturating_add(1));
    let mut out = Vec::new();
    for channel in channels {
        let Some(seqs) = heads.recalled.get(channel) else {
            continue;
        };
        for &(recall, seq) in heads.changes_since(channel, since) {
            // In log order: past A0 (applied since step 1 began), the rest is the next pass's.
            if recall > applied {
                break;
            }
            if !seqs.contains(&seq) {
                continue;
            }
            out.push(Recalled {
                channel: channel.clone(),
                seq,
                recall,
                send: index.locate(channel, seq, seq),
                expired: seq <= index.dropped_through(channel),
                edits: heads.edit_offsets(channel, seq).to_vec(),
            });
        }
    }
    out
}

/// Channels whose recalls a pass collects per hold of the projections' read lock.
const RECALL_CHANNELS_PER_LOCK: usize = 64;

/// What a share read: how many targets it took, the records (by offset), and the offsets found
/// below the log's start (gone).
type ShareRead = (usize, BTreeMap<u64, Bytes>, BTreeSet<u64>);

/// The targets of `recalled` (each message's send, found through the message index, and every
/// edit of it), less those below the log's first offset, gone already (module doc); `None`
/// when `stop` came first (blocking: sidecar reads).
fn locate_targets(
    log: &Log,
    files: &IndexFiles,
    recalled: Vec<Recalled>,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Vec<Target>>> {
    let mut targets = Vec::with_capacity(recalled.len());
    for r in recalled {
        if stop.is_cancelled() {
            return Ok(None);
        }
        let target = |kind, offset| Target {
            channel: r.channel.clone(),
            seq: r.seq,
            kind,
            offset,
            recall: r.recall,
        };
        // A failure to read is this target's, not the pass's: one damaged sidecar must not
        // stop every later purge (`tidings verify` names the damage; `rebuild` mends it).
        match send_offset(files, &r) {
            Ok(Some(offset)) => targets.push(target(TargetKind::Send, offset)),
            Ok(None) if r.expired => {}
            Ok(None) => tracing::warn!(
                channel = %r.channel,
                seq = r.seq,
                "a recalled message has no entry in the message index; its send is not purged"
            ),
            // Out of file descriptors or memory: a failure of the moment, not of the sidecar.
            // The pass fails (its watermark kept below this recall) and the next one tries
            // again; given up, the recall was never purged.
            Err(e) if e.chain().any(passing) => {
                anyhow::bail!("reading a recalled message's index entry: {e:#}");
            }
            Err(e) => tracing::warn!(
                channel = %r.channel,
                seq = r.seq,
                error = %format!("{e:#}"),
                "not purging a recalled message's send: its index entry could not be read"
            ),
        }
        for &offset in &r.edits {
            targets.push(target(TargetKind::Edit, offset));
        }
    }
    // Below the log's start: gone already (module doc), also when the start moves past one
    // while the pass reads.
    let start = log.start_offset();
    targets.retain(|t| t.offset >= start);
    Ok(Some(targets))
}

/// Reads the records of `targets` (in offset order) from the first, until those read hold
/// `budget` bytes (at least one record) and the next target lies in another segment of
/// `sealed` (the log's sealed segments) than the last one taken: a sealed segment's targets
/// stay in one share, so it is rewritten once (on a tiered log, downloaded and uploaded once),
/// and a share holds at most a segment's records past the budget. How many targets it took,
/// with what it read; `None` when `stop` came first (blocking: log reads).
fn read_share(
    log: &Log,
    targets: &[Target],
    stop: &CancellationToken,
    (budget, sealed): (usize, &[SealedSegment]),
) -> anyhow::Result<Option<ShareRead>> {
    let segment_of = |offset: u64| {
        let at = sealed.partition_point(|s| s.base <= offset);
        at.checked_sub(1)
            .and_then(|i| sealed.get(i))
            .filter(|s| offset < s.end)
            .map(|s| s.base)
    };
    let mut gone = BTreeSet::new();
    let mut records = BTreeMap::new();
    let mut bytes = 0;
    let mut taken = 0;
    let mut last_segment = None;
    for t in targets {
        if stop.is_cancelled() {
            return Ok(None);
        }
        // Targets at one offset (none in practice) stay in one share.
        if records.contains_key(&t.offset) || gone.contains(&t.offset) {
            taken += 1;
            continue;
        }
        let segment = segment_of(t.offset);
        if bytes >= budget && (segment.is_none() || segment != last_segment) {
            break;
        }
        last_segment = segment;
        taken += 1;
        let read = match log.read_blocking(t.offset, 0) {
            Ok(read) => read,
            // The log closed under the pass (a stop): the pass ends.
            Err(tidings_log::LogError::Closed) => return Ok(None),
            Err(tidings_log::LogError::OffsetOutOfRange {
                requested, start, ..
            }) if requested < start => {
                gone.insert(t.offset);
                continue;
            }
            // The object store did not answer (a target only in the store): the pass fails, and
            // its watermark stays below this recall (skipped, it would never be purged).
            Err(e) if e.is_cold_storage_unavailable() => {
                anyhow::bail!("reading a recalled message's record from the object store: {e}");
            }
            // A failure of the moment (out of file descriptors or memory): as above.
            Err(e) if passing(&e) => {
                anyhow::bail!("reading a recalled message's record: {e}");
            }
            // Damage: this target is skipped (no record read).
            Err(e) => {
                tracing::warn!(offset = t.offset, error = %e, "not purging a recalled message's record: it could not be read");
                continue;
            }
        };
        if let Some(record) = read.into_iter().find(|rec| rec.offset == t.offset) {
            // Copied: the record's bytes are a slice of the read's buffer (64 KiB or more),
            // which the plan would otherwise keep alive for every target.
            bytes += record.payload.len();
            records.insert(t.offset, Bytes::copy_from_slice(&record.payload));
        }
    }
    Ok(Some((taken, records, gone)))
}

/// Whether `e` (or an error under it) is a failure of the moment rather than of the file: out
/// of file descriptors (`EMFILE`, `ENFILE`) or memory (`ENOMEM`, `ENOBUFS`), or interrupted
/// (`EINTR`, `EAGAIN`). Such a read is tried again at the next pass; others (a checksum that
/// fails, a file missing, `EIO`) are damage, skipped for good (module doc).
fn passing(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && (matches!(
                io.kind(),
                std::io::ErrorKind::OutOfMemory
                    | std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
            ) || matches!(io.raw_os_error(), Some(4 | 11 | 12 | 23 | 24 | 105)))
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// The offset of `r`'s send, from the message index (a sidecar run read when it is in one).
fn send_offset(files: &IndexFiles, r: &Recalled) -> anyhow::Result<Option<u64>> {
    for located in &r.send {
        match *located {
            Located::Entry { seq, offset } if seq == r.seq => return Ok(Some(offset)),
            Located::Entry { .. } => {}
            Located::Run(run) => {
                let entries = files.read_run(&run).with_context(|| {
                    let (seq, channel) = (r.seq, &r.channel);
                    format!("reading the index entry of message {seq} of {channel:?}")
                })?;
                if let Some(&(_, offset)) = entries.iter().find(|(seq, _)| *seq == r.seq) {
                    return Ok(Some(offset));
                }
            }
        }
    }
    Ok(None)
}

/// The offsets of the snapshots being written: prepared (encoded under the projections' read
/// lock), not yet renamed into place. A pass protects them with those on disk (module doc,
/// step 2).
#[derive(Debug, Default)]
pub(crate) struct SnapshotWrites(Mutex<BTreeMap<u64, usize>>);

/// A snapshot being written, registered in [`SnapshotWrites`] until dropped (once its file is
/// in place, or its write failed).
pub(crate) struct SnapshotWrite {
    writes: Arc<SnapshotWrites>,
    offset: u64,
}

impl SnapshotWrites {
    /// Registers the write of a snapshot ending at `offset`. Called under the projections'
    /// lock the snapshot was prepared under: a pass that read a later applied offset then
    /// finds it here (or its file on disk).
    pub(crate) fn begin(self: &Arc<Self>, offset: u64) -> SnapshotWrite {
        *self.lock().entry(offset).or_default() += 1;
        SnapshotWrite {
            writes: self.clone(),
            offset,
        }
    }

    /// The oldest offset being written.
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.lock().keys().next().copied()
    }

    /// The offsets being written.
    fn offsets(&self) -> BTreeSet<u64> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for SnapshotWrite {
    fn drop(&mut self) {
        let mut writes = self.writes.lock();
        if let Some(n) = writes.get_mut(&self.offset) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                writes.remove(&self.offset);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tidings_log::LogOptions;
    use tidings_projections::idempotency::Idempotency;
    use tidings_projections::{Envelope, Event, State};

    use super::*;

    fn sent(seq: u64) -> Event {
        Event::MessageSent {
            channel: "g".into(),
            from: "ann".into(),
            client_msg_id: format!("c{seq}"),
            seq,
            message_id: seq,
            payload: Bytes::from_static(b"sent"),
            flags: 0,
        }
    }

    fn edited(seq: u64) -> Event {
        Event::MessageEdited {
            channel: "g".into(),
            seq,
            by: "ann".into(),
            payload: Bytes::from_static(b"edited"),
            flags: 0,
        }
    }

    /// A recalled message is collected with every edit of it, in log order (not only its
    /// latest), and its send's index entry; an edited message that stays is not collected, nor
    /// a recall at or below the watermark.
    #[test]
    fn a_recalled_message_is_collected_with_every_edit() {
        let recall = Event::MessageRecalled {
            channel: "g".into(),
            seq: 1,
            by: "ann".into(),
        };
        // Offsets 0 to 5.
        let events = [sent(1), sent(2), edited(1), edited(2), edited(1), recall];
        let mut state = State::new(Idempotency::new(100, 86_400_000), 1_000);
        for (offset, event) in (0u64..).zip(events) {
            state.apply(offset, &Envelope::new(1_000, event)).unwrap();
        }
        let channels = ["g".to_owned()];
        let found = recalled_since(&state.heads, &state.index, &channels, None, 5);
        assert_eq!(found.len(), 1);
        let r = &found[0];
        assert_eq!((r.channel.as_str(), r.seq, r.recall), ("g", 1, 5));
        assert_eq!(r.edits, [2, 4]);
        assert!(
            matches!(r.send[..], [Located::Entry { seq: 1, offset: 0 }]),
            "{:?}",
            r.send
        );
        // At the watermark: done with.
        let past = recalled_since(&state.heads, &state.index, &channels, Some(5), 5);
        assert!(past.is_empty());
    }

    /// Targets below the log's first offset (their segment deleted: the retention, or by hand)
    /// are gone already: left out of a pass's targets, with no record read (before, each was
    /// warned about as unreadable, and the plan skipped it with another warning); a target
    /// after it is read as before.
    #[tokio::test]
    async fn targets_below_the_log_start_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join("log");
        let options = || LogOptions::default().with_segment_bytes(16 << 10);
        let log = Log::open(&log_dir, options()).await.unwrap();
        let mut last = 0;
        for seq in 1..=400 {
            last = log
                .append_one(Envelope::new(1_000, sent(seq)).encode())
                .await
                .unwrap();
        }
        log.close().await.unwrap();
        // The first segment's files deleted: the log starts at the second one's base.
        let first = format!("{:020}.", 0);
        for entry in std::fs::read_dir(&log_dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&first))
            {
                std::fs::remove_file(&path).unwrap();
            }
        }
        let log = Log::open(&log_dir, options()).await.unwrap();
        let start = log.start_offset();
        assert!(start > 0 && start <= last, "{start} {last}");
        let recalled = |seq, send, edits| Recalled {
            channel: "g".into(),
            seq,
            recall: last + 1,
            send: vec![Located::Entry { seq, offset: send }],
            expired: false,
            edits,
        };
        // Message 1's send and an edit of it below the start; message 400's send after it.
        let found = vec![
            recalled(1, 0, vec![start - 1]),
            recalled(400, last, Vec::new()),
        ];
        let files = IndexFiles::open(&dir.path().join("index"), 1 << 20).unwrap();
        let (reader, stop) = (log.clone(), CancellationToken::new());
        let read = tokio::task::spawn_blocking(move || {
            let targets = locate_targets(&reader, &files, found, &stop)
                .unwrap()
                .unwrap();
            let share = read_share(&reader, &targets, &stop, (usize::MAX, &[]));
            (targets, share.unwrap().unwrap())
        });
        let (targets, (taken, records, gone)) = read.await.unwrap();
        let at: Vec<u64> = targets.iter().map(|t| t.offset).collect();
        assert_eq!(at, [last]);
        assert_eq!(taken, 1);
        assert_eq!(records.keys().copied().collect::<Vec<_>>(), [last]);
        assert!(gone.is_empty());
        log.close().await.unwrap();
    }

    /// A share reads records until they hold its budget (at least one) and the next target is
    /// in another segment, and the next share goes on from the first target it did not take:
    /// a pass holds about a budget of records, a segment's at most past it (before, it read
    /// every target before it rewrote anything).
    #[tokio::test]
    async fn a_share_reads_up_to_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), LogOptions::default()).await.unwrap();
        let mut offsets = Vec::new();
        for seq in 1..=10 {
            offsets.push(
                log.append_one(Envelope::new(1_000, sent(seq)).encode())
                    .await
                    .unwrap(),
            );
        }
        let size = log.read(0, 0).await.unwrap()[0].payload.len();
        let targets: Vec<Target> = offsets
            .iter()
            .map(|&offset| Target {
                channel: "g".into(),
                seq: offset + 1,
                kind: TargetKind::Send,
                offset,
                recall: 100,
            })
            .collect();
        let (reader, stop) = (log.clone(), CancellationToken::new());
        let shares = tokio::task::spawn_blocking(move || {
            let shares_with = |sealed: &[SealedSegment]| {
                let mut shares = Vec::new();
                let mut rest = &targets[..];
                while !rest.is_empty() {
                    let (taken, records, _) = read_share(&reader, rest, &stop, (3 * size, sealed))
                        .unwrap()
                        .unwrap();
                    shares.push(records.keys().copied().collect::<Vec<_>>());
                    rest = &rest[taken..];
                }
                shares
            };
            let unsealed = shares_with(&[]);
            // A sealed segment's targets stay in one share (offsets 0 to 4 here).
            let sealed = shares_with(&[SealedSegment {
                base: 0,
                end: 5,
                remote: false,
            }]);
            // A budget below one record still reads one.
            let (taken, ..) = read_share(&reader, &targets, &stop, (1, &[]))
                .unwrap()
                .unwrap();
            (unsealed, sealed, taken)
        });
        let (unsealed, sealed, taken) = shares.await.unwrap();
        assert_eq!(
            unsealed,
            [vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8], vec![9]]
        );
        assert_eq!(sealed, [vec![0, 1, 2, 3, 4], vec![5, 6, 7], vec![8, 9]]);
        assert_eq!(taken, 1);
        log.close().await.unwrap();
    }

    /// A snapshot's offset is registered while one of its writes is under way, and no longer
    /// once every write of it is done.
    #[test]
    fn snapshot_writes_are_listed_until_done() {
        let writes = Arc::new(SnapshotWrites::default());
        let a = writes.begin(7);
        let b = writes.begin(7);
        let c = writes.begin(9);
        assert_eq!(writes.offsets(), BTreeSet::from([7, 9]));
        drop(a);
        assert_eq!(writes.offsets(), BTreeSet::from([7, 9]));
        drop(c);
        assert_eq!(writes.offsets(), BTreeSet::from([7]));
        drop(b);
        assert!(writes.offsets().is_empty());
    }

    /// Out of file descriptors, under a log's or a sidecar's error, is a failure of the
    /// moment (the pass is tried again); `EIO`, a missing file or a checksum is damage.
    #[test]
    fn a_shortage_is_passing_damage_is_not() {
        let io = std::io::Error::from_raw_os_error;
        let log_err = |source| tidings_log::LogError::Io {
            op: "read",
            path: "/x".into(),
            source,
        };
        assert!(passing(&log_err(io(24))));
        assert!(passing(&log_err(io(23))));
        assert!(!passing(&log_err(io(5))));
        assert!(!passing(&log_err(std::io::ErrorKind::NotFound.into())));
        let sidecar = anyhow::Error::new(tidings_projections::ProjectionError::Io {
            op: "read",
            path: "/x.cidx".into(),
            source: io(24),
        })
        .context("reading the index entry of message 3");
        assert!(sidecar.chain().any(passing));
        let damaged = anyhow::Error::new(tidings_projections::ProjectionError::Io {
            op: "read",
            path: "/x.cidx".into(),
            source: io(5),
        });
        assert!(!damaged.chain().any(passing));
    }
}
