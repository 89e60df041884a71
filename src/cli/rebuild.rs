//! `tidings rebuild`: rebuild the projections from the log and write a fresh snapshot (or keep
//! the one it started from, when no events follow it); with `--sidecars`, only make again the
//! message index sidecars that fail their check.

use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use tidings_log::Log;
use tidings_projections::{Origin, ProjectionConfig, Projections, snapshot};

use crate::data::DataDir;

/// Options of `tidings rebuild`.
#[derive(Debug, clap::Args)]
pub(crate) struct RebuildArgs {
    /// The data directory.
    #[arg(long, env = "TIDINGS_DATA", default_value = "data", value_parser = crate::cli::data_dir)]
    data: std::path::PathBuf,
    /// Start from the newest valid snapshot and replay the log after it (default: replay the
    /// whole log from offset 0).
    #[arg(long, conflicts_with = "from_offset")]
    from_snapshot: bool,
    /// Start from the newest valid snapshot covering at most offset N (an empty state when
    /// there is none), to step around a suspect newer snapshot.
    #[arg(long, value_name = "N")]
    from_offset: Option<u64>,
    /// The server's configuration file: the rebuild is shaped by its projections settings, as
    /// the server's next start would be (with none of these four given: like the newest
    /// snapshot).
    #[arg(long, env = "TIDINGS_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    projections: crate::config::ProjectionsArgs,
    /// Only make again, from the log's records of their ranges, the message index sidecars the
    /// snapshot the server would load names that fail their check (missing, cut short,
    /// damaged); nothing else changes: no replay, no new snapshot. Projections settings are
    /// not used (each sidecar is made as its snapshot records it), though a malformed one
    /// (a flag, a `TIDINGS_PROJECTIONS_*` variable, or the `--config` file) is still refused.
    #[arg(long, conflicts_with_all = ["from_snapshot", "from_offset"])]
    sidecars: bool,
}

impl RebuildArgs {
    /// The server's projections settings, when any were given.
    fn server_settings(&self) -> anyhow::Result<Option<ProjectionConfig>> {
        if self.config.is_none() && !self.projections.any() {
            return Ok(None);
        }
        let serve = crate::config::ServeArgs::projections_only(
            self.config.clone(),
            self.projections.clone(),
        );
        let config = serve.merge()?;
        config.check_projections()?;
        Ok(Some(crate::server::projection_config(&config)))
    }
}

pub(crate) async fn run(args: RebuildArgs) -> anyhow::Result<ExitCode> {
    // Read and checked before anything in the directory changes (a mistyped `--config` was
    // found after the snapshots went aside, and a refused one still wrote `FORMAT`); with
    // `--sidecars` too, which does not use them (it took a missing or malformed file).
    let settings = args.server_settings()?;
    let data = DataDir::new(&args.data);
    super::ensure_segments(&data, "rebuild")?;
    // The directory's lock first, as the server takes it: a starting server restores
    // snapshots and sidecars before it opens (and locks) the log.
    let _dir_lock = data.lock()?;
    if args.sidecars {
        return mend_sidecars(&data).await;
    }
    // A rebuild is run when the state is in doubt (a log that lost its end or was replaced,
    // snapshots of another history), and the server's next start can no longer tell: this
    // rebuild sets aside what told it or writes a newer snapshot over it, and its log's open
    // replaces the record of a last run under fsync every/never with its own. So the
    // conversation cache's lists are marked not to be reused, before that open. Until
    // 2026-11-30 the next start reused them.
    crate::server::distrust_conversation_cache(&data)?;
    let log = super::open_exclusive(&data).await?;
    // Snapshots past the log's end (lost events) go aside as at the server's start: this
    // rebuild's snapshot would otherwise be the oldest among them, and pruned.
    // Not when the log lost acknowledged records: as a start, it refuses.
    crate::server::refuse_lost_acknowledged(&data, log.next_offset())?;
    crate::server::set_aside_snapshots_ahead_of(&data, log.next_offset())?;
    // Shaped like the state it replaces (the idempotency window's settings are the server's
    // configuration, which the CLI does not read): the server would otherwise find the new
    // snapshot shaped by other settings and rebuild again at start-up.
    let newest = snapshot::load_newest(&data.projections().join("snapshots"))?;
    let config = match (settings, newest) {
        // The server's settings: snapshots shaped otherwise go aside, as at the server's start
        // (this rebuild rewrites the message index sidecars they name, cut elsewhere).
        (Some(config), newest) => {
            if newest.is_some_and(|(state, _)| !config.shapes(&state)) {
                set_aside_other_settings(&args, &data, &log).await?;
            }
            config
        }
        (None, Some((state, _))) => ProjectionConfig::default().shaped_like(&state),
        (None, None) => ProjectionConfig::default(),
    };
    let mut p = if args.from_snapshot || args.from_offset.is_some() {
        super::load_this_history(&data.projections(), config, &log, args.from_offset).await?
    } else {
        Projections::empty(&data.projections(), config)?
    };
    match p.origin() {
        Origin::Empty => eprintln!("rebuilding from offset 0"),
        Origin::Snapshot(path) => eprintln!(
            "rebuilding from snapshot {} (offset {})",
            path.display(),
            p.state.next_offset()
        ),
    }
    let start = p.state.next_offset();
    let end = log.next_offset();
    let bar = ProgressBar::new(end.saturating_sub(start));
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t = Instant::now();
    let n = p
        .catch_up(&log, |applied, _| bar.set_position(applied - start))
        .await
        .map_err(super::explain)?;
    bar.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let snap = write_snapshot(&p, &log, n).await?;
    log.close().await?;
    super::out!(
        "applied {n} events in {secs:.2} s ({:.0} events/s); snapshot: {snap}",
        n as f64 / secs.max(1e-9),
    );
    Ok(ExitCode::SUCCESS)
}

/// `rebuild --sidecars`: each message index sidecar the newest snapshot names that fails its
/// check is made again from the log (`tidings_projections::index_repair`, written only when
/// its entry count and CRC are the recorded ones), as the server does when a read fails on
/// one. Exit 1 when one could not be (its range not in the local log: with a tier, the server
/// fetches it from the object store).
async fn mend_sidecars(data: &DataDir) -> anyhow::Result<ExitCode> {
    // Read-only: the directory's lock keeps a server out, and an open for writing would replace
    // the log's record of a last run under fsync every/never (the conversation cache is
    // trusted by it) with one of `always`.
    let log = super::open_read_only(data).await?;
    // The snapshot the server would load: the newest one of this log's history within its end.
    let tmp = tempfile::tempdir()?;
    let loaded = super::load_read_only(data, &log, tmp.path()).await;
    let state = match loaded {
        Ok(p) => p.state,
        Err(e) => {
            let _ = log.close().await;
            return Err(e);
        }
    };
    let Some(applied) = state.applied else {
        log.close().await?;
        super::out!("no snapshot of this log: no sidecar to mend");
        return Ok(ExitCode::SUCCESS);
    };
    let dir = data.projections().join("index");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        let _ = log.close().await;
        anyhow::bail!(
            "creating the message index directory {}: {e}",
            dir.display()
        );
    }
    let (l, d) = (log.clone(), dir.clone());
    let results = tokio::task::spawn_blocking(move || {
        state
            .index
            .sidecars
            .iter()
            .filter(|s| s.check_file(&d).is_err())
            .map(|s| {
                let made =
                    tidings_projections::index_repair::rewrite_from_log(&l, &d, s, &|| false);
                (*s, made)
            })
            .collect::<Vec<_>>()
    })
    .await?;
    log.close().await?;
    let mut failed = 0;
    for (side, made) in &results {
        let path = tidings_projections::msgindex::sidecar_path(&dir, side.first_offset);
        match made {
            Ok(()) => super::out!("made again: {}", path.display()),
            Err(e) => {
                failed += 1;
                let why = match e {
                    tidings_projections::ProjectionError::HistoryMissing { needed, log_start }
                        if needed < log_start =>
                    {
                        format!(
                            "the local log does not hold offset {needed} of its range (its records go on from {log_start}): those segments were removed, or are only in the object store (the server, started with its tier, fetches the sidecar from there)"
                        )
                    }
                    tidings_projections::ProjectionError::HistoryMissing { needed, .. } => {
                        format!("the log ends before offset {needed} of its range")
                    }
                    e @ tidings_projections::ProjectionError::Io { .. } => format!(
                        "{e} (the file cannot be written there: mend the path or its permissions, then run this again)"
                    ),
                    e @ tidings_projections::ProjectionError::Log(_) => format!(
                        "{e} (a record in its range cannot be read: `tidings inspect` names the damage; nothing rebuilds a sidecar past it)"
                    ),
                    other => other.to_string(),
                };
                super::out!("NOT made again: {}: {why}", path.display());
            }
        }
    }
    super::out!(
        "{} of the sidecars the snapshot of offset {applied} names failed their check; {} made again",
        results.len(),
        results.len() - failed
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Sets aside every snapshot, made under projections settings other than the rebuild's, as the
/// server does at start. Before the replay from offset 0 that follows, not after it: the replay
/// rewrites the message index sidecars they name, cut elsewhere, and one stopped midway would
/// leave them loadable over sidecars they no longer match. So the replay must be able to run
/// first: refused, with every snapshot left in place, when it would start from a snapshot or
/// when the local log cannot be read from offset 0 (`replay_from_zero::check`: it starts later,
/// its older segments only in the object store or removed, or a segment between two others is
/// missing) — the directory would otherwise be left with no snapshot at all. Until 2026-11-30
/// only where the local log starts was checked, and a hole passed.
async fn set_aside_other_settings(
    args: &RebuildArgs,
    data: &DataDir,
    log: &Log,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.from_snapshot && args.from_offset.is_none(),
        "the snapshots were made under other projections settings: rebuild from offset 0 (without --from-snapshot or --from-offset)"
    );
    if let Err(e) = crate::server::replay_from_zero::check(log).await {
        anyhow::bail!(
            "the snapshots were made under other projections settings, so this rebuild must replay the log from offset 0, which it cannot read: {e:#}. The snapshots were left in place. When the segments it lacks are in the object store, the server, started with these settings and its tier.url, sets them aside and replays the log from there"
        );
    }
    crate::server::set_aside_all_snapshots(data, ".snap.other-settings")
}

/// Writes the rebuilt state's snapshot, anchored like the server's (to this log's record at its
/// offset), and describes it for the summary line. A state that is the loaded snapshot's own
/// (no events applied after it) stays in that file as it is, unless the log can give it the
/// anchor it lacks: rewritten, it would hold the same state, and no anchor when its record is
/// only in the object store (a tiered log after a graceful stop) — an unanchored file over the
/// anchored one of the same offset.
async fn write_snapshot(p: &Projections, log: &Log, events_applied: u64) -> anyhow::Result<String> {
    let Some(mut prepared) = p.prepare_snapshot() else {
        return Ok("none (empty log)".into());
    };
    let anchor = snapshot::anchor_at(log, prepared.applied()).await?;
    if let Origin::Snapshot(path) = p.origin()
        && events_applied == 0
        && (anchor.is_none() || p.snapshot_anchor().is_some())
    {
        return Ok(format!(
            "{} (as it was: no events after it)",
            path.display()
        ));
    }
    if let Some(anchor) = anchor {
        prepared.set_anchor(anchor);
    }
    Ok(prepared.write()?.display().to_string())
}
