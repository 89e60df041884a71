//! Snapshots while the server runs: one every `snapshot.interval` when anything changed,
//! anchored to the record it ends at, uploaded with its sidecars when a tier is set; the
//! message index sidecars the retention let go are deleted once no snapshot names them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tidings_projections::snapshot;
use tokio_util::sync::CancellationToken;

use super::state::AppState;
use super::tiering;

/// Writes a snapshot every interval (when anything changed).
pub(super) async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(state.config.snapshot_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    let mut last = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let applied = state.proj().state.applied;
        if applied == last {
            continue;
        }
        let written = match write_snapshot(&state, AnchorFrom::AnySegment).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "snapshot failed");
                continue;
            }
        };
        // The upload gives way to a shutdown (a store that does not answer must not hold the
        // steps after it); the write, local and short, does not: one cut short would go on in
        // its blocking thread beside the shutdown snapshot's, through the same temporary file.
        if let Some(w) = &written {
            let uploaded = tokio::select! {
                () = stop.cancelled() => return,
                r = upload_written(&state, w) => r,
            };
            if let Err(e) = uploaded {
                tracing::warn!(error = %e, "snapshot upload failed");
                continue;
            }
        }
        last = applied;
    }
}

/// Held while a snapshot is written (see [`write_snapshot`]).
static SNAPSHOT_WRITE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A snapshot written to disk, and what its upload needs.
pub(super) struct WrittenSnapshot {
    path: std::path::PathBuf,
    /// The projections directory (the sidecars are in its `index/`).
    dir: std::path::PathBuf,
    sidecars: Vec<tidings_projections::msgindex::Sidecar>,
    /// The state's latest `log_trimmed` events, in log order (for the store's sidecars they
    /// let go: `Projections::trims`).
    trims: Vec<tidings_projections::TrimApplied>,
}

/// Which segments a snapshot's anchor (the record it ends at) may be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AnchorFrom {
    /// Any, one only in the object store too (a periodic snapshot: the read is bounded by
    /// `tier.read_timeout_ms`). When the record cannot be read the snapshot is written without
    /// an anchor, and loads unchecked as snapshots from before anchors do.
    AnySegment,
    /// Local segments only (the shutdown's: it must not wait for the store). A snapshot whose
    /// record is not in one is not written: the next start loads the previous snapshot and
    /// replays the log after it, which an unanchored one would have spared it at the cost of
    /// the check that the snapshot belongs to this log (and, at the same offset, of the
    /// anchored snapshot it would overwrite).
    LocalSegment,
}

/// Writes a snapshot of what was applied; `None` when nothing was, or when its anchor is not
/// to be had from where `from` allows. Not after the applier failed: its state may hold part
/// of the record it stopped at.
pub(super) async fn write_snapshot(
    state: &Arc<AppState>,
    from: AnchorFrom,
) -> anyhow::Result<Option<WrittenSnapshot>> {
    let s = state.clone();
    // Encode under the read lock; write and fsync outside it, so the applier (which needs the
    // write lock) is not held up by the disk.
    let (prepared, writing, (sidecars, trims), dir) = tokio::task::spawn_blocking(move || {
        let p = s.proj();
        // Read under the lock the applier sets it under.
        if s.applier_failed.load(Ordering::Acquire) {
            anyhow::bail!(
                "the applier stopped on a record it could not apply: no snapshot of its state (the next start replays the log from the last snapshot)"
            );
        }
        let sidecars = (p.state.index.sidecars.clone(), p.trims());
        let prepared = p.prepare_snapshot();
        // Registered under the lock its state was read under: the background purge must not
        // rewrite the record it will be anchored to (`purger.rs`).
        let writing = prepared
            .as_ref()
            .map(|w| s.snapshot_writes.begin(w.applied()));
        Ok((prepared, writing, sidecars, p.dir().to_path_buf()))
    })
    .await??;
    let (Some(mut prepared), Some(writing)) = (prepared, writing) else {
        return Ok(None);
    };
    let applied = prepared.applied();
    if from == AnchorFrom::LocalSegment && !state.log.is_local(applied) {
        tracing::warn!(
            applied,
            "the log record this snapshot would end at is not in a local segment (its segment is only in the object store, or gone); not writing it: the next start loads the previous snapshot and replays the log after it"
        );
        return Ok(None);
    }
    // The anchor: which record this state ends at (checked when the snapshot is loaded). The
    // shutdown's is a local read, given a second at most: the copy can go between the check
    // above and the read (an upload pass), and the store must not hold the shutdown.
    let anchor = match from {
        AnchorFrom::AnySegment => snapshot::anchor_at(&state.log, applied).await,
        AnchorFrom::LocalSegment => tokio::time::timeout(
            Duration::from_secs(1),
            snapshot::anchor_at(&state.log, applied),
        )
        .await
        .unwrap_or_else(|_| {
            Err(tidings_projections::ProjectionError::Cache(
                "the record was not read within a second".into(),
            ))
        }),
    };
    match anchor {
        Ok(Some(anchor)) => prepared.set_anchor(anchor),
        Ok(None) => {}
        // The shutdown's: not written unanchored (the record was local a moment ago; the
        // upload pass may have removed its copy since, and the read went to the store).
        Err(e) if from == AnchorFrom::LocalSegment => {
            tracing::warn!(error = %e, "could not read the record the shutdown snapshot ends at; not writing it: the next start loads the previous snapshot and replays the log after it");
            return Ok(None);
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the record a snapshot ends at; writing it without an anchor")
        }
    }
    // A log that cannot be replayed from offset 0 (the retention trims it, or trimmed it):
    // under `log.fsync = every | never` the record this snapshot ends at may not be durable
    // yet, and a power cut would set it aside as ahead of the log — the newest 3 kept all so,
    // no snapshot would be left that a start can use (`retention.rs`). Synced first, it is.
    if state.config.retention_interval().is_some() || state.log.start_offset() > 0 {
        state.log.sync().await?;
    }
    // One write at a time, held in the blocking thread itself: a periodic snapshot's write
    // that a shutdown cut short (its task aborted) goes on there, and the shutdown's write of
    // the same offset would share its temporary file.
    let path = tokio::task::spawn_blocking(move || {
        let _one = SNAPSHOT_WRITE.lock().unwrap_or_else(|p| p.into_inner());
        // Until the file is in place (or the write failed), here: a write cut short by an
        // abort goes on in this thread.
        let _writing = writing;
        prepared.write()
    })
    .await??;
    state.metrics.snapshots.inc();
    tracing::debug!(path = %path.display(), "wrote a snapshot");
    let s = state.clone();
    tokio::task::spawn_blocking(move || remove_dropped_sidecars(&s)).await?;
    Ok(Some(WrittenSnapshot {
        path,
        dir,
        sidecars,
        trims,
    }))
}

/// Deletes the message index sidecars the retention let go once no snapshot names them
/// (`Projections::remove_dropped_sidecars`), a few per hold of the projections' read lock;
/// after each snapshot written (the last one naming them leaves the directory at a later
/// write). A failure is logged: the next snapshot's call tries again.
fn remove_dropped_sidecars(state: &AppState) {
    const PER_LOCK: usize = 64;
    let mut removed = 0;
    loop {
        let (done, trimmed) = {
            let p = state.proj();
            let trimmed = p.state.trimmed.map_or(0, |t| t.offset);
            // Every file of this event's gone already: nothing to list (it listed the index
            // directory under the lock after every snapshot).
            if trimmed == state.sidecars_cleaned_for.load(Ordering::Relaxed) {
                break;
            }
            let writing = state.snapshot_writes.oldest();
            (p.remove_dropped_sidecars(writing, PER_LOCK), trimmed)
        };
        match done {
            // Only a call that found nothing left, bounded by the latest event (not an earlier
            // one the oldest snapshot applied), marks the event done: one that removed fewer
            // than it listed (another call removed some meanwhile) may have left more.
            Ok(Some(r)) if r.removed == 0 => {
                if r.through == trimmed {
                    state.sidecars_cleaned_for.store(trimmed, Ordering::Relaxed);
                }
                break;
            }
            Ok(Some(r)) => removed += r.removed,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "could not remove the message index sidecars the retention let go");
                break;
            }
        }
    }
    if removed > 0 {
        state.metrics.sidecars_removed.add(removed as u64);
        tracing::info!(
            removed,
            "removed message index sidecars the retention let go"
        );
    }
}

/// With a tier, uploads a written snapshot and the sidecars it needs; whether it did (not
/// without a tier, nor when the prefix is not this server's).
pub(super) async fn upload_written(state: &AppState, w: &WrittenSnapshot) -> anyhow::Result<bool> {
    let Some(tier) = state.log.tier() else {
        return Ok(false);
    };
    let snapshot = tiering::SnapshotUpload {
        projections: &w.dir,
        snap: &w.path,
        sidecars: &w.sidecars,
        trims: &w.trims,
    };
    let uploaded = tiering::upload_snapshot(tier, &snapshot, &state.uploaded_sidecars).await;
    if let Err(e) = &uploaded
        && let Some(d) = e.downcast_ref::<tiering::DamagedSidecar>()
    {
        state.proj().index_files().mark_failed(d.first_offset);
    }
    let Some(removed) = uploaded? else {
        return Ok(false);
    };
    if removed > 0 {
        state.metrics.tier_sidecars_removed.add(removed as u64);
        tracing::info!(
            removed,
            "removed message index sidecars the retention let go from the object store"
        );
    }
    Ok(true)
}
