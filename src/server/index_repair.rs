//! Message index sidecars written again while the server runs.
//!
//! A sidecar (`DIR/projections/index/*.cidx`, `tidings_projections::msgindex`) is derived from
//! the log; one deleted or damaged used to fail every read of its messages (500 to the
//! client, and a user's whole `/v1/sync`, which spans their channels) until `tidings rebuild`
//! ran with the server stopped. Now:
//! - **At start**, every sidecar the state names is checked by a stat (present, of the length
//!   its record says); those that are not are made again before the server listens.
//! - **While serving**, a read that finds one missing or damaged (`IndexFiles::take_failed`)
//!   has it made again within a second or so ([`run`]); the reads in between fail as before.
//!
//! Made again from the log's records of its range
//! (`tidings_projections::index_repair::rewrite_from_log`, written only when the result has
//! the entry count and CRC the state recorded); when the log no longer holds the range (the
//! retention removed its start) and a tier is set, fetched from the object store and checked
//! the same way. When neither works the error is logged naming the file, and reads of those
//! messages keep failing until `tidings rebuild`. A sidecar is tried at most once a minute
//! (each try reads its whole range of the log).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings_log::Log;
use tidings_projections::Projections;
use tidings_projections::index_repair;
use tidings_projections::msgindex::{Sidecar, sidecar_path};
use tokio_util::sync::CancellationToken;

use super::state::AppState;
use super::tiering;

/// How often the failed reads are looked at.
const POLL: Duration = Duration::from_secs(1);
/// The least time between two tries of one sidecar.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Makes again, before the server serves, the sidecars that are missing or cut short.
/// Returns how many it could not.
pub(crate) async fn at_start(proj: &Projections, log: &Log) -> usize {
    let dir = proj.index_files().dir().to_path_buf();
    let unreadable = index_repair::unreadable(&dir, &proj.state.index.sidecars);
    if unreadable.is_empty() {
        return 0;
    }
    tracing::warn!(
        sidecars = unreadable.len(),
        dir = %dir.display(),
        "message index sidecars are missing or cut short; making them again"
    );
    let mut failed = 0;
    let never = CancellationToken::new();
    for side in unreadable {
        if !repair(log, &dir, side, &never).await {
            failed += 1;
        }
    }
    failed
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
            let sidecars = &proj.state.index.sidecars;
            let due = files
                .take_failed()
                .into_iter()
                .filter(|first| !tried.contains_key(first))
                // One the state no longer names (the retention let it go) is not made again.
                .filter_map(|first| {
                    sidecars
                        .binary_search_by_key(&first, |s| s.first_offset)
                        .ok()
                        .map(|i| sidecars[i])
                })
                .collect();
            (files.dir().to_path_buf(), due)
        };
        for side in due {
            if stop.is_cancelled() {
                return;
            }
            tried.insert(side.first_offset, Instant::now());
            repair(&state.log, &dir, side, &stop).await;
        }
    }
}

/// Makes `side` again in `dir`: from the log, else from the object store. Logs the outcome;
/// returns whether it is in place. The blocking read of the log is joined here, and gives up
/// between reads once `stop` is cancelled.
async fn repair(log: &Log, dir: &Path, side: Sidecar, stop: &CancellationToken) -> bool {
    let file = sidecar_path(dir, side.first_offset);
    let (l, d, s) = (log.clone(), dir.to_path_buf(), stop.clone());
    let from_log = tokio::task::spawn_blocking(move || {
        index_repair::rewrite_from_log(&l, &d, &side, &|| s.is_cancelled())
    })
    .await
    .map_err(|e| anyhow::anyhow!("the repair task failed: {e}"))
    .and_then(|r| r.map_err(anyhow::Error::from));
    let from_log = match from_log {
        Ok(()) => {
            tracing::info!(file = %file.display(), "message index sidecar made again from the log");
            return true;
        }
        Err(e) => e,
    };
    if stop.is_cancelled() {
        return false;
    }
    if let Some(tier) = log.tier() {
        match tiering::fetch_sidecar(tier, dir, &side).await {
            Ok(true) => {
                tracing::info!(file = %file.display(), store = tier.display(), from_log = %from_log, "message index sidecar fetched from the object store (the log could not make it again)");
                return true;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(file = %file.display(), from_log = %from_log, from_store = %format!("{e:#}"), "a message index sidecar is missing or damaged and could not be made again: reads of its messages fail until `tidings rebuild` (with the server stopped) writes it");
                return false;
            }
        }
    }
    tracing::error!(file = %file.display(), error = %from_log, "a message index sidecar is missing or damaged and could not be made again: reads of its messages fail until `tidings rebuild` (with the server stopped) writes it");
    false
}
