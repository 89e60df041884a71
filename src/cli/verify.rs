//! `tidings verify`: rebuild every projection from offset 0 (in memory and temp files) and
//! compare it with the newest snapshot plus the log after it. A log that starts past 0 (the
//! retention removed its oldest segments) is rebuilt from the oldest snapshot it holds the
//! records after. The answer to "a user stopped
//! receiving a channel": which user, which channel, which field differ. Also reports damaged
//! snapshots and sidecars, and damage that ends the log's valid data early. Creates nothing in
//! the data directory.

use std::process::ExitCode;

use tidings_projections::diff::diff;
use tidings_projections::{ProjectionConfig, ProjectionError, Projections, snapshot};

use crate::data::DataDir;

/// Options of `tidings verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The data directory.
    #[arg(long, env = "TIDINGS_DATA", default_value = "data", value_parser = crate::cli::data_dir)]
    data: std::path::PathBuf,
    /// Print at most this many differences.
    #[arg(long, default_value_t = 200)]
    max_differences: usize,
}

pub(crate) async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let data = DataDir::new(&args.data);
    // The newest snapshot is read before the log is opened: a running server may write one at
    // any time, and one written after the read-only view was opened would cover offsets past
    // its end, taken for a log that lost them (the view's end is fixed when it opens; what a
    // snapshot covers was written to the log before the snapshot was).
    let snap_dir = data.projections().join("snapshots");
    let newest = snapshot::load_newest_anchored(&snap_dir, None)?;
    let log = super::open_read_only(&data).await?;
    let mut problems = 0usize;
    // The read-only view's valid data ends quietly at damage in the active segment that valid
    // batches follow (what `serve` refuses to start on); only a read at its end reports it.
    // Checked first: that end is short of a snapshot taken before the damage, and the
    // comparison below would otherwise blame the log for losing its end.
    let damaged = log.read(log.next_offset(), 0).await.err();
    if let Some(e) = &damaged {
        super::out!("damaged log: {e}");
        problems += 1;
    }

    // Every snapshot file must at least decode.
    for s in snapshot::list(&snap_dir)? {
        let loaded = std::fs::read(&s.path)
            .map_err(anyhow::Error::from)
            .and_then(|b| snapshot::decode(&s.path, &b).map_err(anyhow::Error::from));
        match loaded {
            Ok(_) => {}
            // Not damage: the server writes a current one at its next snapshot and prunes
            // the old ones.
            Err(e)
                if matches!(
                    e.downcast_ref(),
                    Some(ProjectionError::SnapshotOutdated { .. })
                ) =>
            {
                super::out!("note: {e}");
            }
            // Pruned by a running server between the listing and the read: not damage.
            Err(e) if super::vanished(&e) => {}
            Err(e) => {
                super::out!("damaged snapshot: {e}");
                problems += 1;
            }
        }
    }

    let base = ProjectionConfig::default();
    let live_dir = tempfile::tempdir()?;
    // Whether the snapshot compared is one the server would load (its sidecars are mended
    // by `rebuild --sidecars`): not past the log's end, nor of another history.
    let mut loadable = true;
    let (mut live, from) = match newest {
        Some((state, snap, anchor)) => {
            loadable = state.next_offset() <= log.next_offset();
            // Made from this log? (The server sets such a snapshot aside at start-up.)
            if let (Some(anchor), Some(applied)) = (anchor, state.applied)
                && let Some(found) = snapshot::anchor_at(&log, applied).await?
                && found != anchor
            {
                loadable = false;
                super::out!(
                    "snapshot {} was made from another history of the log: the record at \
                     offset {applied} differs (anchor {anchor:#010x}, log {found:#010x})",
                    snap.path.display()
                );
                problems += 1;
            }
            let mut p = Projections::empty(live_dir.path(), base.shaped_like(&state))?;
            p.state = state;
            (p, format!("snapshot {}", snap.path.display()))
        }
        None => (
            Projections::empty(live_dir.path(), base.clone())?,
            "no snapshot (an empty state)".to_string(),
        ),
    };
    // The sidecars the snapshot relies on must match their checksums (read in place:
    // `IndexFiles::open` would create the directory, and verify changes nothing).
    let index_dir = data.projections().join("index");
    for side in &live.state.index.sidecars {
        if let Err(e) = side.check_file(&index_dir) {
            let fix = if loadable {
                "`tidings rebuild --sidecars` makes it again"
            } else {
                "named by a snapshot the server sets aside"
            };
            super::out!("damaged message index sidecar: {e} ({fix})");
            problems += 1;
        }
    }
    let snapshot_older = live.state.next_offset() < log.start_offset();
    // The live snapshot's own offset, before the tail moves it (compared after the catch-up,
    // the rebuild's snapshot matched it only when no event followed).
    let live_applied = live.state.applied;
    let tail = match live.catch_up(&log, |_, _| {}).await {
        Ok(tail) => tail,
        // The snapshot covers offsets past the damage (taken before it): the log lost nothing
        // but the valid data that damage hides, named above.
        Err(ProjectionError::AheadOfLog {
            applied_to,
            log_end,
        }) if damaged.is_some() => {
            super::out!(
                "not compared with a rebuild: {from} covers the offsets below {applied_to}, past \
                 the damage at the log's valid end (offset {log_end})"
            );
            log.close().await?;
            super::out!("verify found problems");
            return Ok(ExitCode::FAILURE);
        }
        // Past the end of a log last written under fsync always: acknowledged records were
        // lost, which a start refuses (its advice, not a rebuild's: a rebuild refuses too).
        Err(ProjectionError::AheadOfLog {
            applied_to,
            log_end,
        }) if !crate::server::last_run_unsynced(&data) => {
            log.close().await?;
            anyhow::bail!(
                "{from} covers the offsets below {applied_to} but the log ends at {log_end}, and \
                 the log was last written under fsync always: acknowledged records are missing \
                 from it, and the server refuses to start (README: \"The log lost acknowledged \
                 records\")"
            );
        }
        // The newest snapshot is older than the local log's start, so no snapshot is one the
        // local segments can be replayed after (the advice to start from one, the general
        // explanation's, named none that exists: a tiered directory whose local copies go once
        // uploaded, stopped before its next snapshot).
        Err(ProjectionError::HistoryMissing { needed, log_start }) if snapshot_older => {
            log.close().await?;
            anyhow::bail!(
                "nothing to verify against: the newest snapshot ({from}) needs events from \
                 offset {needed}, but the local log starts at offset {log_start} (the segments \
                 before are only in the object store, or were removed), and verify reads local \
                 segments only; the server writes a snapshot every \
                 projections.snapshot_interval_secs while it takes writes — verify after the next"
            );
        }
        Err(e) => return Err(super::explain(e)),
    };

    // The rebuild's first record: where the local log starts, or — once a running server's
    // retention removed segments this rebuild was reading (it writes a snapshot, then may
    // remove the segments below the one before it) — where it starts since.
    let mut floor = log.start_offset();
    let mut tries = 0;
    let (rebuilt, rebuilt_from, from_itself, all, _rebuilt_dir) = loop {
        let rebuilt_dir = tempfile::tempdir()?;
        let mut rebuilt = Projections::empty(rebuilt_dir.path(), live.config().clone())?;
        // A log whose oldest segments the retention removed starts past 0: the rebuild starts
        // from the oldest snapshot it can replay after instead.
        let mut rebuilt_from = "offset 0".to_string();
        // The rebuild starts from the live state's own snapshot: it compares nothing but the
        // events after it (none, and it compared the snapshot with itself, said "ok").
        let mut from_itself = false;
        if floor > 0
            && let Some((state, snap)) = oldest_replayable(&snap_dir, &log, floor).await?
        {
            from_itself =
                state.applied == live_applied && from.ends_with(&snap.path.display().to_string());
            rebuilt = Projections::empty(rebuilt_dir.path(), base.shaped_like(&state))?;
            rebuilt.state = state;
            // A tiered directory's older segments may be in its store (this reads local ones).
            let why = if data.tier_marker().is_some() {
                "its older segments were removed, or are only in the object store, which this does not read"
            } else {
                "its older segments were removed"
            };
            rebuilt_from = format!(
                "snapshot {} (the local log starts at offset {floor}: {why})",
                snap.path.display(),
            );
        }
        match rebuilt.catch_up(&log, |_, _| {}).await {
            Ok(all) => break (rebuilt, rebuilt_from, from_itself, all, rebuilt_dir),
            // Removed under this read by the server's retention: again, from past the removal
            // (until 2026-12-03 verify beside a server with a retention failed "out of range").
            Err(ProjectionError::Log(tidings_log::LogError::OffsetOutOfRange {
                requested,
                start,
                ..
            })) if requested < start && start > floor && tries < 3 => {
                tries += 1;
                eprintln!(
                    "note: the server's retention removed the segments the rebuild was reading \
                     (offset {requested}); rebuilding again from the log's start now, offset {start}"
                );
                floor = start;
            }
            Err(e) => return Err(super::explain(e)),
        }
    };
    log.close().await?;

    let lines = diff(&live.state, &rebuilt.state, args.max_differences);
    for l in &lines {
        super::out!("{l}");
    }
    problems += lines.len();
    if problems == 0 && from_itself && all == 0 {
        super::out!(
            "ok, but nothing was rebuilt to compare: {from} is the only snapshot the local log \
             holds the records after, and no event follows it ({rebuilt_from}); its checksums \
             and its sidecars' were checked"
        );
        Ok(ExitCode::SUCCESS)
    } else if problems == 0 && from_itself {
        // Both sides are that snapshot and the same events: equal whatever the snapshot holds
        // (this said "ok: … equals a rebuild").
        super::out!(
            "ok, but nothing was rebuilt to compare: {from} is the only snapshot the local log \
             holds the records after ({rebuilt_from}), so both sides are it plus the same {all} \
             events; its checksums and its sidecars' were checked, and the events apply"
        );
        Ok(ExitCode::SUCCESS)
    } else if problems == 0 {
        super::out!(
            "ok: {from} + {tail} events equals a rebuild of all {all} events from {rebuilt_from}"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        super::out!(
            "verify found problems (live = {from} + {tail} events; rebuilt = {all} events from {rebuilt_from})"
        );
        Ok(ExitCode::FAILURE)
    }
}

/// The oldest snapshot in `dir` that loads and that `log` holds the records after (from offset
/// `start`, where the log starts or, a removal met meanwhile, started since), not anchored
/// to another record than the log holds at its offset. `None` when there is none. When it is
/// the newest (the only one the log holds the records after), the comparison checks the
/// tail's events alone: the note in the output says which snapshot the rebuild started from.
async fn oldest_replayable(
    dir: &std::path::Path,
    log: &tidings_log::Log,
    start: u64,
) -> anyhow::Result<Option<(tidings_projections::State, snapshot::SnapshotFile)>> {
    for snap in snapshot::list(dir)?.into_iter().rev() {
        // The log must hold every record after it, from `start` (its own record may be the
        // one before the log's start, as the server accepts).
        if snap.applied.saturating_add(1) < start {
            continue;
        }
        // Written by a running server after this view of the log was opened: past its end.
        if snap.applied >= log.next_offset() {
            continue;
        }
        let Ok(bytes) = std::fs::read(&snap.path) else {
            continue;
        };
        let Ok((state, anchor)) = snapshot::decode_anchored(&snap.path, &bytes) else {
            continue;
        };
        // Anchored to another record of the log: another history's, never replayed after.
        match (anchor, snapshot::anchor_at(log, snap.applied).await?) {
            (Some(a), Some(held)) if a != held => continue,
            _ => return Ok(Some((state, snap))),
        }
    }
    Ok(None)
}
