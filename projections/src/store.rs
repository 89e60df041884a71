//! [`Projections`]: the state plus what lives beside it on disk (message index sidecars,
//! snapshots), kept in step with the log.
//!
//! Directory layout under the projections directory: `snapshots/` and `index/`.

use std::path::{Path, PathBuf};

use tidings_log::{Log, Record};

use crate::error::{ProjectionError, Result};
use crate::event::Envelope;
use crate::idempotency::Idempotency;
use crate::msgindex::{self, DEFAULT_FLUSH_ENTRIES, IndexFiles};
use crate::snapshot;
use crate::state::{Applied, State};

/// Settings of the projections. Changing the first three changes what the state holds, so a
/// snapshot remembers them and a rebuild for `verify` uses the snapshot's.
#[derive(Debug, Clone)]
pub struct ProjectionConfig {
    /// Sends remembered for idempotency. Default: 100,000.
    pub idempotency_max_entries: usize,
    /// Age after which a send is forgotten for idempotency. Default: 24 h.
    pub idempotency_max_age_ms: u64,
    /// Message index entries per sidecar file. Default: 262,144.
    pub index_flush_entries: u64,
    /// Memory for cached message index runs. Default: 64 MiB.
    pub index_cache_bytes: usize,
    /// Snapshots kept. Default: 3.
    pub snapshots_keep: usize,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        Self {
            idempotency_max_entries: 100_000,
            idempotency_max_age_ms: 24 * 3600 * 1000,
            index_flush_entries: DEFAULT_FLUSH_ENTRIES,
            index_cache_bytes: 64 << 20,
            snapshots_keep: 3,
        }
    }
}

impl ProjectionConfig {
    /// This configuration with the state-shaping settings taken from `state` (so that a
    /// rebuild compared with a snapshot is shaped like the snapshot).
    pub fn shaped_like(&self, state: &State) -> Self {
        Self {
            idempotency_max_entries: state.idempotency.max_entries,
            idempotency_max_age_ms: state.idempotency.max_age_ms,
            index_flush_entries: state.index.flush_entries,
            ..self.clone()
        }
    }

    /// Whether `state` is shaped by this configuration (the settings that change what the
    /// state holds: the idempotency window's size and age, the index's flush size). A state
    /// shaped otherwise cannot be reshaped exactly — a window that grew would lack the entries
    /// a rebuild under the new settings remembers — so it is rebuilt from the log.
    pub fn shapes(&self, state: &State) -> bool {
        let fresh = self.empty_state();
        state.idempotency.max_entries == fresh.idempotency.max_entries
            && state.idempotency.max_age_ms == fresh.idempotency.max_age_ms
            && state.index.flush_entries == fresh.index.flush_entries
    }

    /// An empty state shaped by this configuration.
    pub fn empty_state(&self) -> State {
        State::new(
            Idempotency::new(self.idempotency_max_entries, self.idempotency_max_age_ms),
            self.index_flush_entries,
        )
    }
}

/// Where a [`Projections`] came from at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Nothing to load: an empty state.
    Empty,
    /// The snapshot at this path.
    Snapshot(PathBuf),
}

/// The projections and their files.
#[derive(Debug)]
pub struct Projections {
    /// Every projection.
    pub state: State,
    dir: PathBuf,
    files: IndexFiles,
    config: ProjectionConfig,
    origin: Origin,
    /// The anchor of the snapshot the state was loaded from (`snapshot.rs`), when it has one.
    anchor: Option<u32>,
    /// The latest `log_trimmed` events applied (in log order, at most [`KEPT_TRIMS`]; the
    /// first may be the state's when loaded): which one a snapshot of an earlier offset had
    /// applied last ([`trim_applied_by`]), for the sidecar files it let go. In memory only.
    trims: std::collections::VecDeque<TrimApplied>,
}

/// A `log_trimmed` event as applied, with the lowest first offset of a sidecar any state from
/// it to the next event can name (`keep_from`): the first sidecar the state kept, or else the
/// first entry still in memory (flushed later), or else the event's offset + 1 (entries to
/// come). A trim lets go of a prefix of the state's sidecars and flushes only add after the
/// last, so a state that applied this event last names no sidecar starting below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrimApplied {
    /// The event, as the state keeps it.
    pub trim: crate::state::Trimmed,
    /// The lowest first offset of a sidecar named while it is the latest event.
    pub keep_from: u64,
}

/// What [`Projections::remove_dropped_sidecars`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SidecarsRemoved {
    /// How many files went.
    pub removed: usize,
    /// The offset of the `log_trimmed` event bounding them (0: none).
    pub through: u64,
}

/// How many of the latest `log_trimmed` events [`Projections`] keeps: more than the
/// retention's passes over the window of the snapshots kept (at most one event a pass, a pass a
/// minute by default: 17 hours; a snapshot every five minutes, three kept, by default).
const KEPT_TRIMS: usize = 1024;

/// Of `trims` (a run of `log_trimmed` events in log order, the latest last), the one a state
/// that applied up to `applied` had applied last: the newest at or below it. `None` when the
/// run starts past it (it may have applied one before the run: not known).
pub fn trim_applied_by(trims: &[TrimApplied], applied: u64) -> Option<TrimApplied> {
    trims
        .iter()
        .rev()
        .find(|t| t.trim.offset <= applied)
        .copied()
}

/// Of the sidecar files starting at `firsts`, those no kept snapshot can name, given `named`
/// (what the newest state names), `latest` (the newest state's last `log_trimmed`) and `bound`
/// (the last `log_trimmed` the oldest kept snapshot applied): not named, and with `bound` the
/// latest, starting below its start (every snapshot applied it, and names no more than the
/// newest state: a trim lets go of the sidecars ending below its start, flushes only add);
/// with an earlier one, starting below its `keep_from` (no state from it on names one). Files
/// of another run (another history's, another flush size's, another writer's in a store) are
/// judged by the same marks, never by their neighbours. Until 2026-12-03 files went only once
/// every kept snapshot followed the latest event, which a server the retention trims more
/// often than its snapshots' window never saw: its index files grew without bound.
pub fn let_go_sidecars(
    firsts: &[u64],
    named: impl Fn(u64) -> bool,
    latest: crate::state::Trimmed,
    bound: TrimApplied,
) -> Vec<u64> {
    let below = if bound.trim == latest {
        latest.start
    } else {
        bound.keep_from.min(bound.trim.start)
    };
    firsts
        .iter()
        .copied()
        .filter(|&first| first < below && !named(first))
        .collect()
}

impl Projections {
    /// Empty projections in `dir` (files created when missing; existing snapshots ignored).
    pub fn empty(dir: &Path, config: ProjectionConfig) -> Result<Self> {
        let files = IndexFiles::open(&dir.join("index"), config.index_cache_bytes)?;
        Ok(Self {
            state: config.empty_state(),
            dir: dir.to_path_buf(),
            files,
            config,
            origin: Origin::Empty,
            anchor: None,
            trims: std::collections::VecDeque::new(),
        })
    }

    /// The newest valid snapshot in `dir` (damaged ones are reported and skipped), or empty
    /// projections when there is none.
    pub fn load(dir: &Path, config: ProjectionConfig) -> Result<Self> {
        Self::load_at_most(dir, config, None)
    }

    /// Like [`Projections::load`], but only from a snapshot covering at most `max_applied`.
    pub fn load_at_most(
        dir: &Path,
        config: ProjectionConfig,
        max_applied: Option<u64>,
    ) -> Result<Self> {
        let mut p = Self::empty(dir, config)?;
        if let Some((state, snap, anchor)) =
            snapshot::load_newest_anchored(&p.snapshot_dir(), max_applied)?
        {
            tracing::info!(path = %snap.path.display(), applied = snap.applied, "loaded snapshot");
            p.state = state;
            p.origin = Origin::Snapshot(snap.path);
            p.anchor = anchor;
        }
        Ok(p)
    }

    /// Where the state came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The anchor of the snapshot the state was loaded from, when it has one: the CRC-32 of
    /// the payload of the log's record at the state's last applied offset when the snapshot
    /// was written (`snapshot.rs`). A log holding another record there is another history.
    pub fn snapshot_anchor(&self) -> Option<u32> {
        self.anchor
    }

    /// Whether `log` holds, at the state's last applied offset, the record the snapshot this
    /// state was loaded from is anchored to: `Some(false)` means the snapshot was made from
    /// another history of the log. `None` when that cannot be told (loaded from no snapshot,
    /// or from one without an anchor, or the log holds no record there).
    pub async fn anchor_matches(&self, log: &Log) -> Result<Option<bool>> {
        let (Some(anchor), Some(applied)) = (self.anchor, self.state.applied) else {
            return Ok(None);
        };
        Ok(snapshot::anchor_at(log, applied)
            .await?
            .map(|found| found == anchor))
    }

    /// The projections directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshots directory.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// The configuration.
    pub fn config(&self) -> &ProjectionConfig {
        &self.config
    }

    /// The message index sidecars.
    pub fn index_files(&self) -> &IndexFiles {
        &self.files
    }

    /// Applies the event at `offset`, writing a message index sidecar when one is due.
    pub fn apply(&mut self, offset: u64, env: &Envelope) -> Result<()> {
        // The event the state was loaded with, marked before this one lets sidecars go.
        let loaded = match (&env.event, self.trims.is_empty()) {
            (crate::event::Event::LogTrimmed { .. }, true) => self.latest_trim(),
            _ => None,
        };
        let before = self.state.trimmed;
        let applied = self.state.apply(offset, env)?;
        if let Some(trim) = self.state.trimmed
            && before != Some(trim)
        {
            self.trims.extend(loaded);
            self.trims.push_back(TrimApplied {
                trim,
                keep_from: self.keep_from(offset),
            });
            while self.trims.len() > KEPT_TRIMS {
                self.trims.pop_front();
            }
        }
        if applied == Applied::FlushIndex {
            self.flush_index()?;
        }
        Ok(())
    }

    /// The latest `log_trimmed` events applied, in log order (the state's latest last): those
    /// applied since the state was loaded or made, and the one it was loaded with (at most
    /// [`KEPT_TRIMS`]).
    pub fn trims(&self) -> Vec<TrimApplied> {
        if self.trims.is_empty() {
            return self.latest_trim().into_iter().collect();
        }
        self.trims.iter().copied().collect()
    }

    /// The state's latest `log_trimmed`, marked as of now (no event since: sidecars were only
    /// added since it, so the first one named now is the first any state since named).
    fn latest_trim(&self) -> Option<TrimApplied> {
        let trim = self.state.trimmed?;
        let applied = self.state.applied.unwrap_or(trim.offset);
        Some(TrimApplied {
            trim,
            keep_from: self.keep_from(applied),
        })
    }

    /// [`TrimApplied::keep_from`] of the state now, at `offset`.
    fn keep_from(&self, offset: u64) -> u64 {
        let index = &self.state.index;
        index
            .sidecars
            .first()
            .map(|s| s.first_offset)
            .or(index.mem_first_offset)
            .unwrap_or(offset.saturating_add(1))
    }

    /// Decodes and applies a log record; returns the event.
    pub fn apply_record(&mut self, rec: &Record) -> Result<Envelope> {
        let env = Envelope::decode(rec.offset, &rec.payload)?;
        self.apply(rec.offset, &env)?;
        Ok(env)
    }

    fn flush_index(&mut self) -> Result<()> {
        if let Some(flush) = self.state.index.prepare_flush() {
            self.files.write(&flush)?;
            self.state.index.commit_flush(flush);
        }
        Ok(())
    }

    /// Applies every record of the log after the state's last offset (up to the watermark at
    /// the call), calling `progress(applied, end)` after each chunk. Returns how many events
    /// were applied.
    ///
    /// Reading and decoding run on a blocking thread one chunk ahead of applying, so the two
    /// halves of the work use both cores. That thread is joined before this returns.
    pub async fn catch_up(&mut self, log: &Log, mut progress: impl FnMut(u64, u64)) -> Result<u64> {
        let end = log.next_offset();
        let needed = self.state.next_offset();
        // Same log, same state: a state that has applied offsets the log does not hold, or
        // that needs offsets the log no longer has, cannot be brought to the log's state.
        if needed > end {
            return Err(ProjectionError::AheadOfLog {
                applied_to: needed,
                log_end: end,
            });
        }
        let log_start = log.start_offset();
        if needed < log_start {
            return Err(ProjectionError::HistoryMissing { needed, log_start });
        }
        let start = needed;
        if start >= end {
            return Ok(0);
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<(u64, Envelope)>>>(2);
        // Applied chunks go back to the reader, which drops their events (freeing memory on
        // the thread that allocated it is cheaper) and reuses the vectors (a fresh megabyte
        // per chunk costs page faults).
        let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<Vec<(u64, Envelope)>>();
        let reader_log = log.clone();
        let reader = tokio::task::spawn_blocking(move || {
            let mut next = start;
            while next < end {
                let chunk = match reader_log.read_blocking(next, 1 << 20) {
                    Ok(c) => c,
                    Err(tidings_log::LogError::Gap { from, next }) => {
                        let _ = tx.blocking_send(Err(ProjectionError::HistoryMissing {
                            needed: from,
                            log_start: next,
                        }));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e.into()));
                        return;
                    }
                };
                // Offsets in a log are dense: a read below the end that finds nothing, or lands
                // past `next`, met a gap (a tiered log opened without its store, whose retention
                // left local segments with remote ones between them) — the events in it would
                // be skipped, or the catch-up would end early, without a word.
                let mut expect = next;
                let gap_in_chunk = chunk.iter().find_map(|r| {
                    let gap = (r.offset > expect).then_some((expect, r.offset));
                    expect = r.offset + 1;
                    gap
                });
                if let Some((needed, log_start)) = gap_in_chunk {
                    let _ = tx
                        .blocking_send(Err(ProjectionError::HistoryMissing { needed, log_start }));
                    return;
                }
                let Some(last) = chunk.last() else {
                    // Nothing below the end: the gap runs to the next segment's base.
                    let log_start = reader_log
                        .segments()
                        .ok()
                        .and_then(|s| s.iter().map(|x| x.base_offset).filter(|&b| b > next).min())
                        .unwrap_or(end);
                    let _ = tx.blocking_send(Err(ProjectionError::HistoryMissing {
                        needed: next,
                        log_start,
                    }));
                    return;
                };
                next = last.offset + 1;
                let mut events = match recycle_rx.try_recv() {
                    Ok(mut v) => {
                        v.clear();
                        v
                    }
                    Err(_) => Vec::new(),
                };
                // Sized up front: a chunk holds thousands of events, and growing the vector
                // would copy them over and over.
                events.reserve(chunk.len());
                let decoded: Result<Vec<(u64, Envelope)>> = chunk
                    .iter()
                    .filter(|r| r.offset < end)
                    .try_for_each(|r| {
                        events.push((r.offset, Envelope::decode(r.offset, &r.payload)?));
                        Ok(())
                    })
                    .map(|()| events);
                let failed = decoded.is_err();
                if tx.blocking_send(decoded).is_err() || failed {
                    return;
                }
            }
        });
        let mut n = 0;
        let mut result = Ok(());
        while let Some(chunk) = rx.recv().await {
            let applied = chunk.and_then(|events| {
                for (offset, env) in &events {
                    self.apply(*offset, env)?;
                    n += 1;
                }
                let last = events.last().map(|(o, _)| *o);
                // The reader may have finished: then the vector is dropped here.
                let _ = recycle_tx.send(events);
                Ok(last)
            });
            match applied {
                Ok(Some(last)) => progress(last + 1, end),
                Ok(None) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Stop the reader (if we stopped early) and join it.
        drop(rx);
        reader
            .await
            .map_err(|e| crate::error::ProjectionError::Cache(format!("log reader task: {e}")))?;
        result.map(|()| n)
    }

    /// Encodes a snapshot to write later with [`PreparedSnapshot::write`], outside whatever
    /// lock guards these projections (the write and its fsyncs are the slow part).
    pub fn prepare_snapshot(&self) -> Option<PreparedSnapshot> {
        Some(PreparedSnapshot {
            encoded: snapshot::Encoded::of(&self.state)?,
            dir: self.snapshot_dir(),
            keep: self.config.snapshots_keep,
        })
    }

    /// Writes a snapshot (when anything was applied) and prunes old ones.
    pub fn snapshot(&self) -> Result<Option<PathBuf>> {
        snapshot::write(
            &self.snapshot_dir(),
            &self.state,
            self.config.snapshots_keep,
        )
    }

    /// The log offsets of `channel`'s messages with seq in `[lo, hi]`, ascending.
    pub fn message_offsets(&self, channel: &str, lo: u64, hi: u64) -> Result<Vec<(u64, u64)>> {
        msgindex::offsets(&self.state.index, &self.files, channel, lo, hi)
    }

    /// Deletes up to `max` sidecar files the state let go (`msgindex::IndexState::drop_below`,
    /// at a `log_trimmed` event) once no snapshot on disk can name them: the files
    /// [`let_go_sidecars`] picks, the bound being the last event the oldest snapshot in the
    /// directory applied ([`trim_applied_by`] of [`Projections::trims`]). `writing`: the
    /// oldest offset of a snapshot prepared but not yet on disk, counted as one in the
    /// directory. Returns how many went (`max` means more may remain: call again) and the
    /// offset of the event bounding them (all are gone when none went and it is the state's
    /// latest), or `None` when the oldest snapshot applied none of the events known (nothing
    /// looked at).
    ///
    /// Call it with the projections' lock held for reading, as this takes `&self`: a flush
    /// (under the write lock) then cannot be naming a file between the check and its
    /// deletion. A file deleted so that a later flush writes again (the entries in memory
    /// below the start, written at the same offset after a restart) is written whole.
    pub fn remove_dropped_sidecars(
        &self,
        writing: Option<u64>,
        max: usize,
    ) -> Result<Option<SidecarsRemoved>> {
        let Some(latest) = self.state.trimmed else {
            return Ok(Some(SidecarsRemoved::default()));
        };
        let oldest = snapshot::list(&self.snapshot_dir())?
            .iter()
            .map(|s| s.applied)
            .chain(writing)
            .min();
        let bound = match oldest {
            None => TrimApplied {
                trim: latest,
                keep_from: latest.start,
            },
            Some(applied) => match trim_applied_by(&self.trims(), applied) {
                Some(bound) => bound,
                None => return Ok(None),
            },
        };
        let dir = self.files.dir();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Some(SidecarsRemoved::default()));
            }
            Err(e) => return Err(ProjectionError::io("list", dir, e)),
        };
        let mut firsts = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ProjectionError::io("list", dir, e))?;
            let name = entry.file_name();
            if let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".cidx"))
                .filter(|stem| stem.len() == 20)
                .and_then(|stem| stem.parse::<u64>().ok())
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        firsts.dedup();
        let sidecars = &self.state.index.sidecars;
        let named = |first: u64| {
            sidecars
                .binary_search_by_key(&first, |s| s.first_offset)
                .is_ok()
        };
        let doomed: Vec<PathBuf> = let_go_sidecars(&firsts, named, latest, bound)
            .into_iter()
            .take(max)
            .map(|first| msgindex::sidecar_path(dir, first))
            .collect();
        let through = bound.trim.offset;
        if doomed.is_empty() {
            return Ok(Some(SidecarsRemoved {
                removed: 0,
                through,
            }));
        }
        // The pruning of the snapshots that named them durable first: a power cut must not
        // bring one back over deleted sidecars (unlikely to be loaded — every newer snapshot
        // would have to be damaged — but then it would fail, not replay).
        let snapshots = self.snapshot_dir();
        match std::fs::File::open(&snapshots).and_then(|d| d.sync_all()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ProjectionError::io("sync directory", &snapshots, e));
            }
            _ => {}
        }
        let mut removed = 0;
        for path in doomed {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ProjectionError::io("remove", &path, e)),
            }
        }
        Ok(Some(SidecarsRemoved { removed, through }))
    }

    /// Checks every message index sidecar against its CRC; returns the failures.
    pub fn check_index_files(&self) -> Vec<crate::error::ProjectionError> {
        self.state
            .index
            .sidecars
            .iter()
            .filter_map(|s| self.files.check(s).err())
            .collect()
    }
}

/// A snapshot encoded by [`Projections::prepare_snapshot`], not yet on disk.
#[derive(Debug)]
pub struct PreparedSnapshot {
    encoded: snapshot::Encoded,
    dir: PathBuf,
    keep: usize,
}

impl PreparedSnapshot {
    /// The last offset it covers.
    pub fn applied(&self) -> u64 {
        self.encoded.applied()
    }

    /// Records its anchor (`snapshot.rs`): [`snapshot::anchor_of`] the payload of the log's
    /// record at [`Self::applied`].
    pub fn set_anchor(&mut self, anchor: u32) {
        self.encoded.set_anchor(anchor);
    }

    /// Writes it (temp file, fsync, rename, directory fsync) and prunes old snapshots.
    pub fn write(self) -> Result<PathBuf> {
        self.encoded.write(&self.dir, self.keep)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Event;
    use bytes::Bytes;

    fn cidx_files(p: &Projections) -> Vec<u64> {
        let mut out: Vec<u64> = std::fs::read_dir(p.index_files().dir())
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".cidx")?.parse().ok()
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Projections in `dir` writing a sidecar every two messages, keeping two snapshots.
    fn sidecar_every_two(dir: &Path) -> Projections {
        let config = ProjectionConfig {
            index_flush_entries: 2,
            snapshots_keep: 2,
            ..ProjectionConfig::default()
        };
        Projections::empty(dir, config).unwrap()
    }

    /// Ann's message `seq` in channel `c`.
    fn sent(seq: u64) -> Envelope {
        let e = Event::MessageSent {
            channel: "c".into(),
            from: "ann".into(),
            client_msg_id: format!("m{seq}"),
            seq,
            message_id: seq,
            payload: Bytes::from_static(b"hi"),
            flags: 0,
        };
        Envelope::new(1, e)
    }

    /// The sidecars a `log_trimmed` event let go stay on disk while a snapshot there (or one
    /// being written) is from before the event, and go once none is, a few per call; those
    /// the state names stay, and check.
    #[test]
    fn sidecars_let_go_are_removed_once_no_snapshot_can_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = sidecar_every_two(dir.path());
        // Offsets 0 to 19: seqs 1 to 20 of `c`, a sidecar every two; 21: seq 21.
        for seq in 1..=20u64 {
            p.apply(seq - 1, &sent(seq)).unwrap();
        }
        assert_eq!(cidx_files(&p), (0..20).step_by(2).collect::<Vec<_>>());
        p.snapshot().unwrap();
        let trimmed = Envelope::new(1, Event::LogTrimmed { start: 9 });
        p.apply(20, &trimmed).unwrap();
        // Sidecars 0, 2, 4, 6 end below 9; 8 (offsets 8, 9) stays.
        let named: Vec<u64> = p
            .state
            .index
            .sidecars
            .iter()
            .map(|s| s.first_offset)
            .collect();
        assert_eq!(named, [8, 10, 12, 14, 16, 18]);
        assert_eq!(
            p.remove_dropped_sidecars(None, 64).unwrap(),
            None,
            "snapshot 19 names them"
        );
        p.snapshot().unwrap();
        assert_eq!(
            p.remove_dropped_sidecars(None, 64).unwrap(),
            None,
            "snapshot 19 is still kept"
        );
        p.apply(21, &sent(21)).unwrap();
        p.snapshot().unwrap();
        // Snapshots 20 and 21 now: none from before the event at 20.
        assert_eq!(
            p.remove_dropped_sidecars(Some(19), 64).unwrap(),
            None,
            "one being written"
        );
        let removed = |n| {
            Some(SidecarsRemoved {
                removed: n,
                through: 20,
            })
        };
        assert_eq!(p.remove_dropped_sidecars(None, 3).unwrap(), removed(3));
        assert_eq!(p.remove_dropped_sidecars(None, 3).unwrap(), removed(1));
        assert_eq!(p.remove_dropped_sidecars(None, 3).unwrap(), removed(0));
        assert_eq!(cidx_files(&p), named);
        assert!(p.check_index_files().is_empty());
    }

    /// A server the retention trims more often than its snapshots' window: the oldest kept
    /// snapshot always precedes the latest `log_trimmed`, and until 2026-12-03 no file ever
    /// went. Now those the oldest snapshot's own trim let go do, and never one it names — a
    /// stray file of another run inside a named one's range changes nothing.
    #[test]
    fn sidecars_go_as_far_as_the_oldest_snapshot_let_them_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = sidecar_every_two(dir.path());
        let trim = |start| Envelope::new(1, Event::LogTrimmed { start });
        // Sidecars of two offsets each, starting at 0, 2, ..., 18.
        for seq in 1..=20u64 {
            p.apply(seq - 1, &sent(seq)).unwrap();
        }
        p.apply(20, &trim(5)).unwrap(); // lets 0 and 2 go
        p.snapshot().unwrap();
        p.apply(21, &trim(9)).unwrap(); // lets 4 and 6 go: snapshot 20 names them
        p.snapshot().unwrap();
        // A stray file of another run inside 4's range: 4 must not look ended before 5.
        std::fs::write(msgindex::sidecar_path(p.files.dir(), 5), b"stray").unwrap();
        let removed = |n, through| {
            Some(SidecarsRemoved {
                removed: n,
                through,
            })
        };
        assert_eq!(p.remove_dropped_sidecars(None, 64).unwrap(), removed(2, 20));
        assert_eq!(p.remove_dropped_sidecars(None, 64).unwrap(), removed(0, 20));
        let mut left: Vec<u64> = (4..20).step_by(2).collect();
        left.insert(1, 5);
        assert_eq!(cidx_files(&p), left);
        // Snapshot 20 pruned: the rest go, the stray too.
        p.apply(22, &sent(21)).unwrap();
        p.snapshot().unwrap();
        assert_eq!(p.remove_dropped_sidecars(None, 64).unwrap(), removed(3, 21));
        assert_eq!(cidx_files(&p), (8..20).step_by(2).collect::<Vec<_>>());
        assert!(p.check_index_files().is_empty());
        // A snapshot from before every event known (a state loaded after it): nothing.
        assert_eq!(trim_applied_by(&p.trims(), 19), None);
        // What each event kept first: 4 (offsets 4, 5, past 5), then 8 (8, 9, past 9).
        let kept: Vec<u64> = p.trims().iter().map(|t| t.keep_from).collect();
        assert_eq!(kept, [4, 8]);
    }
}
