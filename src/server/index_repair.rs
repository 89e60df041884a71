//! Message index sidecars made again while the server runs.
//!
//! A sidecar (`DIR/projections/index/*.cidx`, `tidings_projections::msgindex`) is derived from
//! the log; one deleted or damaged used to fail every read of its messages (500 to the
//! client, and a user's whole `/v1/sync`, which spans their channels) until `tidings rebuild`
//! ran with the server stopped. Now:
//! - **At start**, every sidecar the state names is checked by a stat and a read of its
//!   32-byte header (present, of the length and with the header its record says); those that
//!   are not are made again from the log before the server listens ([`at_start`]; the object store is not waited on there: those the log cannot
//!   make go to the task below).
//! - **While serving**, a sidecar a read found missing or damaged (`IndexFiles::take_failed`),
//!   or a snapshot upload found damaged, is looked at within a second or so ([`run`]): left
//!   alone when its file checks (the read failed for another reason: out of descriptors),
//!   else made again. The reads in between fail as before.
//!
//! Made again from the log's records of its range
//! (`tidings_projections::index_repair::rewrite_from_log`, written only when the result has
//! the entry count and CRC the state recorded); when the log cannot (the retention removed the
//! start of its range, or a record in it is damaged) and a tier is set, fetched from the object
//! store and checked the same way before it replaces anything. When neither works the error is
//! logged naming the file, and reads of those messages keep failing: `tidings rebuild` (server
//! stopped) writes every sidecar again by replaying the log from offset 0, which a log whose
//! start the retention removed no longer allows — such a sidecar is only let go by the
//! retention's next removal past its end, or mended by putting back a copy of its file. A
//! sidecar is tried at most once a minute (each try reads its whole range of the log), and
//! again each minute while it fails and the state names it;
//! `tidings_sidecars_repaired_total` and `tidings_sidecar_repairs_failed_total` count them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings_log::Log;
use tidings_projections::msgindex::{Sidecar, sidecar_path};
use tidings_projections::{ProjectionError, Projections, index_repair};
use tokio_util::sync::CancellationToken;

use super::state::AppState;
use super::tiering;

/// How often the failed reads are looked at.
const POLL: Duration = Duration::from_secs(1);
/// The least time between two tries of one sidecar.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// What became of a sidecar looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Its file checks: nothing to do.
    Intact,
    /// Made again from the log.
    Made,
    /// Fetched from the object store.
    Fetched,
    /// Still missing or damaged (logged).
    Failed,
}

/// Makes again from the log, before the server serves, the sidecars that are missing, of the
/// wrong length or with a wrong header; those it cannot are left to [`run`] (marked failed).
/// Stops between reads when the start is given up (the future dropped). Returns how many it
/// made.
pub(crate) async fn at_start(proj: &Projections, log: &Log) -> u64 {
    let dir = proj.index_files().dir().to_path_buf();
    let unreadable = index_repair::unreadable(&dir, &proj.state.index.sidecars);
    if unreadable.is_empty() {
        return 0;
    }
    tracing::warn!(
        sidecars = unreadable.len(),
        dir = %dir.display(),
        "message index sidecars are missing, of the wrong length or with a wrong header; making them again from the log"
    );
    let stop = CancellationToken::new();
    let _stop_when_dropped = stop.clone().drop_guard();
    let mut made = 0;
    for side in unreadable {
        match from_log(log, &dir, side, &stop).await {
            Ok(()) => made += 1,
            Err(e) => {
                // Said once, with its cause, by the task's first try (within a second).
                tracing::debug!(file = %sidecar_path(&dir, side.first_offset).display(), error = %e, "the log could not make a message index sidecar again; trying again once the server serves");
                proj.index_files().mark_failed(side.first_offset);
            }
        }
    }
    made
}

/// Makes again the sidecars reads found missing or damaged, until `stop`.
pub(crate) async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let mut tried: HashMap<u64, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        tried.retain(|_, at| at.elapsed() < RETRY_AFTER);
        let (dir, due): (PathBuf, Vec<Sidecar>) = {
            let proj = state.proj();
            let files = proj.index_files();
            let due = files
                .take_failed()
                .into_iter()
                // One the state no longer names (the retention let it go) is not made again.
                .filter_map(|first| named(&proj, first))
                // One tried within the minute waits for the next tick after it (kept marked):
                // a sidecar that cannot be made is tried again each minute while it is named.
                .filter(|side| {
                    let wait = tried.contains_key(&side.first_offset);
                    if wait {
                        files.mark_failed(side.first_offset);
                    }
                    !wait
                })
                .collect();
            (files.dir().to_path_buf(), due)
        };
        for side in due {
            if stop.is_cancelled() {
                return;
            }
            tried.insert(side.first_offset, Instant::now());
            let outcome = repair(&state.log, &dir, side, &stop).await;
            match outcome {
                Outcome::Made | Outcome::Fetched => {
                    state.metrics.sidecars_repaired.inc();
                    // Let go while it was made (a removal of the retention applied since):
                    // nothing names it any more, and the removal of such files may have run
                    // already. (Once let go a sidecar is never named again.)
                    if named(&state.proj(), side.first_offset).is_none() {
                        let _ = std::fs::remove_file(sidecar_path(&dir, side.first_offset));
                    }
                }
                Outcome::Failed => {
                    state.metrics.sidecar_repairs_failed.inc();
                    state.proj().index_files().mark_failed(side.first_offset);
                }
                Outcome::Intact => {}
            }
        }
    }
}

/// The state's record of the sidecar starting at `first`, if it names one.
fn named(proj: &Projections, first: u64) -> Option<Sidecar> {
    let sidecars = &proj.state.index.sidecars;
    sidecars
        .binary_search_by_key(&first, |s| s.first_offset)
        .ok()
        .map(|i| sidecars[i])
}

/// Makes `side` again from the log into `dir`, on a blocking thread joined here.
async fn from_log(
    log: &Log,
    dir: &Path,
    side: Sidecar,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let (l, d, s) = (log.clone(), dir.to_path_buf(), stop.clone());
    tokio::task::spawn_blocking(move || {
        index_repair::rewrite_from_log(&l, &d, &side, &|| s.is_cancelled())
    })
    .await
    .map_err(|e| anyhow::anyhow!("the repair task failed: {e}"))?
    .map_err(anyhow::Error::from)
}

/// Looks at `side` in `dir`: nothing when its file checks; else made again from the log, else
/// fetched from the object store. Logs the outcome. Gives up (as failed) once `stop` is
/// cancelled: the log's read between chunks, the store's fetch at once.
pub(super) async fn repair(
    log: &Log,
    dir: &Path,
    side: Sidecar,
    stop: &CancellationToken,
) -> Outcome {
    let file = sidecar_path(dir, side.first_offset);
    let d = dir.to_path_buf();
    let intact = tokio::task::spawn_blocking(move || side.check_file(&d).is_ok())
        .await
        .unwrap_or(false);
    if intact {
        return Outcome::Intact;
    }
    let from_log = match from_log(log, dir, side, stop).await {
        Ok(()) => {
            tracing::info!(file = %file.display(), "message index sidecar made again from the log");
            return Outcome::Made;
        }
        Err(e) => e,
    };
    if stop.is_cancelled() {
        return Outcome::Failed;
    }
    let from_store = match log.tier() {
        Some(tier) => {
            let fetched = tokio::select! {
                () = stop.cancelled() => return Outcome::Failed,
                r = tiering::fetch_sidecar(tier, dir, &side) => r,
            };
            match fetched {
                Ok(true) => {
                    tracing::info!(file = %file.display(), store = tier.display(), from_log = %from_log, "message index sidecar fetched from the object store (the log could not make it again)");
                    return Outcome::Fetched;
                }
                Ok(false) => "not in the object store, or not the one recorded".to_owned(),
                Err(e) => format!("{e:#}"),
            }
        }
        None => "no object store (tier.url)".to_owned(),
    };
    let (from_log, remedy) = match from_log.downcast_ref::<ProjectionError>() {
        Some(ProjectionError::HistoryMissing { needed, log_start }) => (
            format!(
                "the log does not hold offset {needed} of its range (it goes on from {log_start})"
            ),
            "no rebuild can write it: reads in the channels with entries in it fail until the retention lets it go (a removal past its last offset) or a copy of the file is put back (a tiered directory started without its object store: start it with tier.url)",
        ),
        Some(ProjectionError::Io { .. }) => (
            from_log.to_string(),
            "the file could not be read or written here: mend the path or its permissions; the server tries again each minute, and at its next start",
        ),
        Some(ProjectionError::Log(_)) => (
            from_log.to_string(),
            "a record in its range cannot be read (`tidings inspect` names the damage; the README's \"A damaged sealed segment\" says what to do): once the log reads again the server makes it within a minute",
        ),
        _ => (
            from_log.to_string(),
            "reads in the channels with entries in it fail until `tidings rebuild` (server stopped) writes it again",
        ),
    };
    tracing::error!(file = %file.display(), last_offset = side.last_offset, from_log, from_store, remedy, "a message index sidecar is missing or damaged and could not be made again");
    Outcome::Failed
}
