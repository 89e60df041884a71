//! `tidings compact`: purge the payloads of recalled messages from the log's sealed segments
//! (the `tidings-compaction` crate does the work; this is its operator's side).
//!
//! The server must be stopped (the data directory's lock, then the log's). The state is brought
//! up to the log's end from the newest snapshot of this log's history, the records to purge are
//! planned and printed, then (unless `--dry-run`) a fresh snapshot anchored to the log's last
//! record is written, every other snapshot file removed, each sealed segment holding records to
//! purge rewritten in place, and the conversation cache's files removed (its lists may show a
//! recalled message's preview). Tiered data directories are refused: the object store keeps its
//! own copies of segments and snapshots, which a purge would not reach.

use std::process::ExitCode;

use anyhow::Context as _;
use tidings_compaction::{Plan, Progress, plan_recall_purge};
use tidings_log::Log;
use tidings_projections::{Origin, ProjectionConfig, snapshot};

use crate::data::DataDir;

/// Options of `tidings compact`.
#[derive(Debug, clap::Args)]
pub(crate) struct CompactArgs {
    /// The data directory.
    #[arg(long, env = "TIDINGS_DATA", default_value = "data", value_parser = crate::cli::data_dir)]
    data: std::path::PathBuf,
    /// Print what would be purged, and change nothing (the log is opened read-only and the
    /// state loaded into a temporary directory; the server must still be stopped) but
    /// `DATA/FORMAT`, which every command taking the directory's lock writes where it is
    /// missing.
    #[arg(long)]
    dry_run: bool,
}

pub(crate) async fn run(args: CompactArgs) -> anyhow::Result<ExitCode> {
    let data = DataDir::new(&args.data);
    super::ensure_segments(&data, "compact")?;
    refuse_tiered(&data)?;
    // The directory's lock first, as the server takes it (and `rebuild`): a starting server
    // restores snapshots before it opens (and locks) the log.
    let _dir_lock = data.lock()?;
    // Planned first from a read-only open, the state loaded into a temporary directory: a dry
    // run, and a run with nothing to purge, change nothing in the data directory.
    let planned = {
        let log = super::open_read_only(&data).await?;
        let planned = plan_read_only(&data, &log).await;
        let closed = log.close().await;
        let planned = planned?;
        closed?;
        planned
    };
    let Some((plan, recalled_at)) = planned else {
        super::out!("the log holds no record: nothing to purge");
        return Ok(ExitCode::SUCCESS);
    };
    // The conversation cache's lists may show a recalled message's preview until the first
    // run after its recall removes them (the background purge rewrites the log, not them).
    let cached_copies = recalled_at.is_some_and(|at| compacted_through(&data) < Some(at));
    print_plan(&plan, args.dry_run);
    if cached_copies && plan.is_empty() {
        super::out!(
            "the conversation cache's files may hold recalled messages' previews: {}",
            doing(args.dry_run, "removing them", "a run removes them")
        );
    }
    if args.dry_run {
        super::out!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    if plan.is_idle() && !cached_copies {
        return Ok(ExitCode::SUCCESS);
    }
    // The conversation cache's lists are marked not to be reused, before the log's open: that
    // open replaces the record of a last run under fsync every/never (as `rebuild`'s does), and
    // the lists may show previews of the messages this run purges. Their files go before any
    // segment changes: a run cut short after its rewrites is run again with nothing left to
    // purge, and left them (removed at the end until 2026-12-02).
    crate::server::distrust_conversation_cache(&data)?;
    let cache = data.conversation_cache();
    let removed = tidings_log::disk_cache::remove_files_from(&cache, 0)
        .with_context(|| format!("clearing {}", cache.display()))?;
    if removed > 0 {
        super::out!(
            "removed the conversation cache's {removed} files in {}",
            cache.display()
        );
    }
    let log = super::open_exclusive(&data).await?;
    let result = compact(&data, &log, plan).await;
    let closed = log.close().await;
    let code = result?;
    closed?;
    if let Some(at) = recalled_at {
        crate::data::write_durably(&data.compacted_marker(), at.to_string().as_bytes(), 0o644)?;
    }
    Ok(code)
}

/// The newest recall the copies were removed after ([`DataDir::compacted_marker`]); `None`
/// when no run removed them (or the file does not read).
fn compacted_through(data: &DataDir) -> Option<u64> {
    std::fs::read_to_string(data.compacted_marker())
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The log offset of the newest recall `state` holds, if any: the recall's own offset, or,
/// for one whose offset a trim let go, the log's start (it was written below it).
fn newest_recall(state: &tidings_projections::State, log_start: u64) -> Option<u64> {
    let mut newest = None;
    for (channel, seqs) in &state.heads.recalled {
        let at: std::collections::HashMap<u64, u64> = state
            .heads
            .changes
            .get(channel)
            .map(|c| c.iter().map(|&(offset, seq)| (seq, offset)).collect())
            .unwrap_or_default();
        for seq in seqs {
            newest = newest.max(Some(at.get(seq).copied().unwrap_or(log_start)));
        }
    }
    newest
}

/// The plan, from `log` opened read-only and the state loaded into a temporary directory (as
/// `verify` does): the newest snapshot of this log's history (an older one when the newest was
/// made from another history; none: offset 0), brought up to the log's end. `None` for an
/// empty log.
async fn plan_read_only(data: &DataDir, log: &Log) -> anyhow::Result<Option<(Plan, Option<u64>)>> {
    refuse_damaged_tail(log).await?;
    // A log that lost acknowledged records (its end, as a read-only view reads it, below a
    // snapshot's offset under fsync always) is refused before anything, a dry run too, as a
    // start refuses it: the run would cut it or set the snapshots aside (QA, 2026-12-03).
    crate::server::check_lost_acknowledged(data, log.next_offset())?;
    if log.next_offset() == 0 {
        return Ok(None);
    }
    let tmp = tempfile::tempdir()?;
    let mut p = super::load_read_only(data, log, tmp.path()).await?;
    p.catch_up(log, |_, _| {}).await.map_err(super::explain)?;
    let recalled_at = newest_recall(&p.state, log.start_offset());
    let log = log.clone();
    let recalled = p.state.heads.recalled.clone();
    let protect = p.state.applied;
    let mut plan =
        tokio::task::spawn_blocking(move || plan_recall_purge(&log, &recalled, protect)).await??;
    // Snapshots from before the newest recall (or set aside) may hold its preview, also when
    // the server's background purge left no record to purge (a run then did nothing, and
    // left them: found by a QA round).
    if let Some(at) = recalled_at {
        let stale =
            tidings_compaction::stale_snapshot_files(&data.projections().join("snapshots"), at)?;
        plan.stale_copies = !stale.is_empty();
    }
    Ok(Some((plan, recalled_at)))
}

/// Refuses a log whose active segment holds damage that valid batches follow. A read-only
/// view ends the log at such damage (a server may be writing there), so the plan saw neither
/// the damage nor what follows it: a run said there was nothing to purge with a recalled
/// message's bytes behind it, or removed the conversation cache's files and only then failed
/// at the writable open, which refuses the log (found by a QA round). Checked as `inspect`
/// checks it; the sealed segments' damage the plan meets as it reads every record.
async fn refuse_damaged_tail(log: &Log) -> anyhow::Result<()> {
    let Some(active) = log
        .segments()?
        .into_iter()
        .rfind(|s| !s.sealed && !s.remote)
    else {
        return Ok(());
    };
    let (l, base) = (log.clone(), active.base_offset);
    match tokio::task::spawn_blocking(move || l.check_segment(base)).await? {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!(
            "{e}: `tidings compact` reads every record and leaves a damaged log as it is \
             (`tidings inspect` names the damage)"
        ),
    }
}

/// Refuses a tiered data directory (slice 1 of compaction purges local files only): one with
/// the local copy of a tier manifest, or with the node id a first start with a tier generates
/// (a start killed after its claim of the store's prefix, before its first manifest write, has
/// no copy yet, and the store may hold its snapshots already).
fn refuse_tiered(data: &DataDir) -> anyhow::Result<()> {
    if let Some(marker) = data.tier_marker() {
        anyhow::bail!(
            "{} is a tiered data directory ({} exists): `tidings compact` does not purge \
             tiered logs (the object store keeps its own copies of segments and snapshots; \
             the server's background purge, `compaction.purge_interval_secs`, rewrites them \
             there); nothing was changed",
            data.root().display(),
            marker.display()
        );
    }
    Ok(())
}

/// The run, on the log opened for writing: the read-only plan (made again only when the log's
/// end moved), carried out with the data directory's own projections, whose fresh snapshot it
/// writes.
async fn compact(data: &DataDir, log: &Log, planned: Plan) -> anyhow::Result<ExitCode> {
    let end = log.next_offset();
    let Some(last) = end.checked_sub(1) else {
        super::out!("the log holds no record: nothing to purge");
        return Ok(ExitCode::SUCCESS);
    };
    // Snapshots past the log's end go aside as at the server's start (the run removes them
    // with every other snapshot file).
    crate::server::refuse_lost_acknowledged(data, end)?;
    crate::server::set_aside_snapshots_ahead_of(data, end)?;
    // Shaped like the newest snapshot, as `rebuild` without settings: the fresh snapshot must
    // load at the server's next start.
    let snapshots = data.projections().join("snapshots");
    let config = match snapshot::load_newest_at_most(&snapshots, Some(last))? {
        Some((state, _)) => ProjectionConfig::default().shaped_like(&state),
        None => ProjectionConfig::default(),
    };
    let mut p = super::load_this_history(&data.projections(), config, log, Some(last)).await?;
    let from = match p.origin() {
        Origin::Empty => "offset 0".to_string(),
        Origin::Snapshot(path) => format!("snapshot {}", path.display()),
    };
    let n = p.catch_up(log, |_, _| {}).await.map_err(super::explain)?;
    eprintln!("state: {from} + {n} events, up to offset {last}");

    // The read-only plan holds while the log ends where it did (the writable open's recovery
    // may have cut a torn tail): no second scan of every record.
    let stale_copies = planned.stale_copies;
    let mut plan = if planned.end == end && planned.protect == p.state.applied {
        planned
    } else {
        let log = log.clone();
        let recalled = p.state.heads.recalled.clone();
        let protect = p.state.applied;
        tokio::task::spawn_blocking(move || plan_recall_purge(&log, &recalled, protect)).await??
    };
    plan.stale_copies = stale_copies;
    if plan.is_idle() {
        // Nothing to rewrite after all (the read-only plan had something), and no stale
        // snapshot: nothing is.
        return Ok(ExitCode::SUCCESS);
    }

    let report = tidings_compaction::run(log, &p, &plan, |step| match step {
        Progress::SnapshotWritten(path) => super::out!("wrote snapshot {}", path.display()),
        Progress::Removed(path) => super::out!("removed {}", path.display()),
        Progress::SegmentRewritten { base, stats } => super::out!(
            "rewrote segment {base:020}: {} purged in {} changed ({} of the segment written)",
            super::count(stats.records, "record", "records"),
            super::count(stats.batches, "batch", "batches"),
            super::count(stats.bytes, "byte", "bytes")
        ),
        _ => {}
    })
    .await?;
    super::out!(
        "purged {} in {}",
        super::count(report.records, "record", "records"),
        super::count(report.segments, "segment", "segments")
    );
    // The other snapshots went (they may hold the purged messages' previews): on a log the
    // retention trimmed, the one written is then the only way the server starts.
    let start = log.start_offset();
    if start > 0 && report.snapshot.is_some() {
        super::out!(
            "note: the log starts at offset {start} (the retention removed its oldest \
             segments), so the server starts only from a snapshot, and the one this run wrote \
             is now the only one: keep a copy of it until the server has written another \
             (every projections.snapshot_interval_secs while it takes writes, and at its stop)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a run does (`now`), or with `--dry-run` what a run would do (`later`): a dry run said
/// "removing them" before "nothing was changed" until 2026-12-03.
fn doing(dry_run: bool, now: &'static str, later: &'static str) -> &'static str {
    if dry_run { later } else { now }
}

/// What the plan purges and what it leaves, in words.
fn print_plan(plan: &Plan, dry_run: bool) {
    if plan.is_empty() {
        super::out!("nothing to purge in sealed segments");
        if plan.stale_copies {
            super::out!(
                "snapshots from before the newest recall may hold recalled messages' previews: {}",
                doing(
                    dry_run,
                    "writing a fresh one and removing them",
                    "a run writes a fresh one and removes them"
                )
            );
        }
    } else {
        super::out!(
            "to purge: {} of recalled messages in {}",
            super::count(plan.records() as u64, "record", "records"),
            super::count(
                plan.sealed.len() as u64,
                "sealed segment",
                "sealed segments"
            )
        );
        for (base, offsets) in &plan.sealed {
            super::out!(
                "  segment {base:020}: {}",
                super::count(offsets.len() as u64, "record", "records")
            );
        }
    }
    if plan.already_purged > 0 {
        super::out!(
            "purged already: {}",
            super::count(plan.already_purged, "record", "records")
        );
    }
    if !plan.unpurgeable.is_empty() {
        super::out!(
            "left as they are: {} of recalled messages this build cannot purge in place",
            super::count(plan.unpurgeable.len() as u64, "record", "records")
        );
        for (offset, why) in &plan.unpurgeable {
            super::out!("  offset {offset}: {why}");
        }
    }
    if !plan.active.is_empty() {
        super::out!(
            "left in the active segment: {} of recalled messages (run `tidings compact` again once the server has sealed that segment)",
            super::count(plan.active.len() as u64, "record", "records")
        );
    }
    if let (true, Some(offset)) = (plan.kept_protected, plan.protect) {
        super::out!(
            "left at offset {offset}: the log's last record, a recalled message's, which the new snapshot is anchored to (a later run purges it)"
        );
    }
}
