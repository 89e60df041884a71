//! The group-commit writer: one thread owns the active segment (protocol in `log/DESIGN.md`,
//! "Append protocol").
//!
//! The cycle: take every queued append, write one batch, fdatasync, acknowledge, repeat. While
//! the writer is in `fdatasync`, appenders queue up and form the next batch. The writer never
//! starts a sync before the previous batch's acknowledgements are out of its hands: a pipelined
//! variant (next sync started first) was measured slower here — acknowledged appenders then
//! always miss the sync already running, so each waits about two syncs instead of one and a
//! half (`log/DESIGN.md`). A large batch's acknowledgements are handed to the acknowledger task
//! (`acks.rs`) and may still be on their way while the next batch is written.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::acks::{Acks, Outcome, Pending};
use crate::batch::BatchBuilder;
use crate::error::{LogError, Result};
use crate::index::{IndexEntry, SegmentIndex, TimeEntry};
use crate::log::{AppendAck, PoisonSlot, Watermark};
use crate::metrics::Counters;
use crate::options::{FsyncPolicy, LogOptions};
use crate::prealloc::Preallocator;
use crate::recovery::Recovered;
use crate::segment::{Segment, SegmentPaths};
use crate::vfs::{VfsFile, VfsLock};

/// Writes into preallocated zeros end at a multiple of this (see `write_and_sync`).
const PAGE: u64 = crate::vfs::DIRECT_ALIGN as u64;

/// How long the writer polls its queue before parking (see `spin_for_command`).
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);

/// What appenders and control calls send to the writer.
#[derive(Debug)]
pub(crate) enum Command {
    Append {
        records: Vec<Bytes>,
        /// Encoded size; also the semaphore permits to give back.
        size: u32,
        ack: oneshot::Sender<Result<AppendAck>>,
    },
    Roll(oneshot::Sender<Result<()>>),
    Sync(oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<Result<()>>),
}

/// The active segment as the writer sees it.
struct Active {
    seg: Arc<Segment>,
    file: Arc<dyn VfsFile>,
    index_file: Arc<dyn VfsFile>,
    time_file: Arc<dyn VfsFile>,
    len: u64,
    index_len: u64,
    time_len: u64,
    last_entry_pos: u64,
    first_ts: Option<u64>,
    last_batch: Option<TimeEntry>,
    /// Bytes written but not yet fdatasynced.
    unsynced: bool,
    /// The file's size: `len` plus the zeros of its preallocation not yet written over.
    file_len: u64,
    /// Whether the segment started as a preallocated file (then it is never rolled early to
    /// get one).
    preallocated: bool,
    /// Index entries of batches not yet synced (`every`/`never`), written to the index files
    /// after the sync that makes their batches durable: an entry on disk must never point past
    /// data that may not have reached it (open trusts the last entry and scans on from there,
    /// `log/DESIGN.md`, "Recovery").
    deferred: Vec<(IndexEntry, TimeEntry)>,
}

/// Everything the writer shares with the `Log` handles (never the queue's sender, so the
/// writer sees the queue close when the last handle goes).
pub(crate) struct WriterParts {
    pub(crate) dir: PathBuf,
    pub(crate) opts: LogOptions,
    pub(crate) segments: Arc<ArcSwap<Vec<Arc<Segment>>>>,
    pub(crate) watermark: watch::Sender<Watermark>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) poison: Arc<PoisonSlot>,
    pub(crate) counters: Arc<Counters>,
    /// Where acknowledgements go.
    pub(crate) acks: Acks,
    /// Woken after every roll (the tier uploader waits on it).
    pub(crate) rolled: Arc<tokio::sync::Notify>,
}

pub(crate) struct Writer {
    parts: WriterParts,
    rx: mpsc::Receiver<Command>,
    active: Active,
    /// Offset the next record written gets.
    next_offset: u64,
    last_ts: u64,
    builder: BatchBuilder,
    /// A command taken while gathering a batch that did not belong in it.
    stashed: Option<Command>,
    /// When the `every(ms)` policy must sync by.
    sync_deadline: Option<tokio::time::Instant>,
    /// An `fdatasync` of the active segment failed: it is never synced again (the kernel may
    /// have dropped the pages it could not write), not even to keep what was acknowledged
    /// ([`Writer::save_acknowledged`]).
    segment_sync_failed: bool,
    /// Makes the next segment's file ahead of time (with `preallocate_bytes`).
    prealloc: Option<Preallocator>,
    /// The directory lock, released when the writer is dropped: after its last write, never
    /// while it may still write (a log dropped without `close` finishes in the background).
    _lock: Box<dyn VfsLock>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Writer {
    pub(crate) fn new(
        parts: WriterParts,
        rx: mpsc::Receiver<Command>,
        seg: Arc<Segment>,
        rec: Recovered,
        lock: Box<dyn VfsLock>,
    ) -> Result<Self> {
        // Timestamps never decrease, across restarts too: from the active segment's last
        // batch, or the segment before's when it holds none (a clock stepped back while the
        // server was down would otherwise start this segment below the last one's end).
        let last_ts = rec.last_batch.map(|b| b.ts).or(rec.floor_ts).unwrap_or(0);
        let opts = &parts.opts;
        let prealloc = match opts.preallocate_bytes.min(opts.segment_bytes) {
            0 => {
                // A spare left by an earlier run with preallocation on is only zeros.
                let spare = parts.dir.join(crate::prealloc::SPARE_NAME);
                if let Err(e) = opts.vfs.remove(&spare)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(error = %e, file = %spare.display(), "could not remove an old spare segment");
                }
                None
            }
            bytes => Some(
                Preallocator::start(opts.vfs.clone(), &parts.dir, bytes)
                    .map_err(|e| LogError::io("start preallocation thread", &parts.dir, e))?,
            ),
        };
        Ok(Self {
            active: Active {
                seg,
                file: rec.file,
                index_file: rec.index_file,
                time_file: rec.time_file,
                len: rec.len,
                index_len: rec.index_len,
                time_len: rec.time_len,
                last_entry_pos: rec.last_entry_pos,
                first_ts: rec.first_ts,
                last_batch: rec.last_batch,
                unsynced: false,
                file_len: rec.file_len,
                preallocated: rec.file_len > rec.len,
                deferred: Vec::new(),
            },
            next_offset: rec.next_offset,
            last_ts,
            builder: BatchBuilder::default(),
            stashed: None,
            sync_deadline: None,
            segment_sync_failed: false,
            prealloc,
            _lock: lock,
            parts,
            rx,
        })
    }

    /// The writer's loop; returns when closed or when every handle is gone.
    pub(crate) async fn run(mut self) {
        loop {
            // Before taking the next command, stashed or queued: a writer that always finds
            // one waiting (a backlog; a batch full at `max_batch_bytes`, the next append
            // stashed) never reached the timer below, and under `every(ms)` synced only at a
            // roll (until 2026-12-03: a power cut lost a whole segment's acknowledged appends).
            self.sync_if_due();
            let cmd = match self.stashed.take() {
                Some(c) => c,
                None => match self.next_command().await {
                    Some(c) => c,
                    None => break,
                },
            };
            match cmd {
                Command::Append { records, size, ack } => self.append_batch(records, size, ack),
                Command::Roll(ack) => {
                    let r = self.checked().and_then(|()| self.roll());
                    let _ = ack.send(self.stop_on_error(r));
                }
                Command::Sync(ack) => {
                    let r = self.checked().and_then(|()| self.sync_all());
                    let _ = ack.send(self.stop_on_error(r));
                }
                Command::Close(ack) => {
                    let r = self.finish();
                    self.drain_closed().await;
                    let _ = ack.send(r);
                    return;
                }
            }
        }
        if let Err(e) = self.finish() {
            tracing::error!(error = %e, "closing the log after its last handle was dropped");
        }
    }

    /// The next command; under `every(ms)`, syncs when the deadline passes first.
    async fn next_command(&mut self) -> Option<Command> {
        let Some(deadline) = self.sync_deadline else {
            if let Some(cmd) = self.spin_for_command() {
                return Some(cmd);
            }
            return self.rx.recv().await;
        };
        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
            Ok(cmd) => cmd,
            Err(_elapsed) => {
                self.sync_if_due();
                self.rx.recv().await
            }
        }
    }

    /// Under `every(ms)`: syncs the segment once its deadline has passed (a failure stops the
    /// log, as any sync's does).
    fn sync_if_due(&mut self) {
        if self
            .sync_deadline
            .is_none_or(|d| d > tokio::time::Instant::now())
        {
            return;
        }
        self.sync_deadline = None;
        if self.parts.poison.get().is_none()
            && let Err(e) = self.sync_segment()
        {
            self.poison(e);
        }
    }

    /// Polls the queue for a short while before the thread parks. An appender that was just
    /// acknowledged usually sends its next append within microseconds; parking and being
    /// woken again (a futex round trip through the scheduler) costs more than that.
    fn spin_for_command(&mut self) -> Option<Command> {
        let start = Instant::now();
        loop {
            match self.rx.try_recv() {
                Ok(cmd) => return Some(cmd),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if start.elapsed() >= SPIN_BEFORE_PARK {
                return None;
            }
            std::thread::yield_now();
        }
    }

    fn checked(&self) -> Result<()> {
        match self.parts.poison.get() {
            Some(cause) => Err(LogError::Poisoned { cause }),
            None => Ok(()),
        }
    }

    /// A roll or a sync that failed stops the log as a failed append does. A failed roll may
    /// have created the next segment (a reopen takes the highest base for the log's end:
    /// appends acknowledged after it into the old segment would vanish), and a failed
    /// `fdatasync` leaves pages the kernel may report clean to the next one (which would then
    /// succeed for bytes the disk never got).
    /// The caller is told `Poisoned`, with the failure as its cause.
    fn stop_on_error(&mut self, r: Result<()>) -> Result<()> {
        match r {
            Err(e) if !matches!(e, LogError::Poisoned { .. }) => {
                self.poison(e);
                self.checked()
            }
            r => r,
        }
    }

    fn poison(&mut self, err: LogError) {
        tracing::error!(error = %err, dir = %self.parts.dir.display(), "log write failed; refusing appends until reopened");
        self.parts.poison.set(err);
        self.save_acknowledged();
    }

    /// Gathers the queued appends into one batch, writes it, syncs per policy, acknowledges.
    fn append_batch(
        &mut self,
        records: Vec<Bytes>,
        size: u32,
        ack: oneshot::Sender<Result<AppendAck>>,
    ) {
        let max = self.parts.opts.max_batch_bytes;
        let mut pending = Vec::with_capacity(64);
        self.builder.begin();
        let mut next = Some((records, size, ack));
        while let Some((records, size, ack)) = next.take() {
            let base = self.next_offset + u64::from(self.builder.count());
            for r in &records {
                self.builder.push(r);
            }
            pending.push(Pending {
                ack,
                base,
                count: records.len() as u32,
                size,
            });
            if self.builder.len() >= max {
                break;
            }
            match self.rx.try_recv() {
                Ok(Command::Append { records, size, ack })
                    if self.builder.len() + size as usize <= max =>
                {
                    next = Some((records, size, ack));
                }
                // A control command, or an append that does not fit: it goes next.
                Ok(other) => self.stashed = Some(other),
                Err(_) => {}
            }
        }
        let result = self
            .checked()
            .and_then(|()| self.write_built())
            .map_err(|e| match e {
                LogError::Poisoned { cause } => cause,
                other => Arc::new(other),
            });
        let n = pending.len() as u64;
        self.parts.counters.appends.fetch_add(n, Ordering::Relaxed);
        self.parts.acks.send(Outcome {
            pending,
            result,
            permits: self.parts.permits.clone(),
        });
    }

    /// Writes the batch in the builder (rolling first if due), syncs under `always`, publishes
    /// the watermark; returns the batch timestamp. Any failure poisons the log.
    fn write_built(&mut self) -> Result<u64> {
        let ts = now_ms().max(self.last_ts);
        let opts = &self.parts.opts;
        let too_big = self.active.len + self.builder.len() as u64 > opts.segment_bytes;
        let too_old = match (opts.segment_max_age, self.active.first_ts) {
            (Some(age), Some(first)) => ts.saturating_sub(first) >= age.as_millis() as u64,
            _ => false,
        };
        // A segment that did not start preallocated (a new log, or one reopened after a clean
        // close or a truncated tail) hands over to a preallocated one as soon as it is ready.
        let spare_waiting =
            !self.active.preallocated && self.prealloc.as_ref().is_some_and(Preallocator::is_ready);
        let rolled = if self.active.len > 0 && (too_big || too_old || spare_waiting) {
            self.roll()
        } else {
            Ok(())
        };
        // A roll whose sync of the old segment stored the data but not its index entries
        // poisons the log without failing (`after_durable`): this batch is not written.
        match rolled
            .and_then(|()| self.checked())
            .and_then(|()| self.write_and_sync(ts))
        {
            Ok(()) => Ok(ts),
            Err(e) => {
                // Already stopped (a roll's index write): the first cause stays, logged once.
                if !matches!(e, LogError::Poisoned { .. }) {
                    self.poison(e);
                }
                self.checked().map(|()| ts)
            }
        }
    }

    fn write_and_sync(&mut self, ts: u64) -> Result<()> {
        let base = self.next_offset;
        let count = self.builder.count();
        let n = self.builder.finish(base, ts).len() as u64;
        let pos = self.active.len;
        // Inside the preallocated part, the write runs on with zeros (what is already there)
        // to the end of its last 4 KiB block: the spare's zeros were written past the page
        // cache (`prealloc.rs`), and a write that ended inside an uncached block would make
        // the kernel read it from disk first. The padding never goes past the file's end (a
        // growing segment gets none); `len`, the watermark and the indexes count the batch
        // alone.
        let end = pos + n;
        let pad = end
            .next_multiple_of(PAGE)
            .min(self.active.file_len)
            .saturating_sub(end);
        let bytes = self.builder.padded(pad as usize);
        let a = &mut self.active;
        a.file
            .write_all_at(bytes, pos)
            .map_err(|e| LogError::io("write segment", &a.seg.paths.log, e))?;
        a.unsynced = true;
        a.file_len = a.file_len.max(pos + n);
        match self.parts.opts.fsync {
            FsyncPolicy::Always => self.sync_segment()?,
            FsyncPolicy::Every(d) => {
                if self.sync_deadline.is_none() {
                    self.sync_deadline = Some(tokio::time::Instant::now() + d);
                }
            }
            FsyncPolicy::Never => {}
        }
        let a = &mut self.active;
        a.len = pos + n;
        a.first_ts.get_or_insert(ts);
        let rel = (base - a.seg.base) as u32;
        let entry = TimeEntry {
            ts,
            rel,
            pos: pos as u32,
        };
        a.last_batch = Some(entry);
        self.next_offset = base + u64::from(count);
        self.last_ts = ts;
        if pos > 0 && pos - a.last_entry_pos >= u64::from(self.parts.opts.index_interval_bytes) {
            let index = self.write_index(
                IndexEntry {
                    rel,
                    pos: pos as u32,
                },
                entry,
            );
            self.after_durable(index);
        }
        let c = &self.parts.counters;
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.records.fetch_add(u64::from(count), Ordering::Relaxed);
        c.bytes.fetch_add(n, Ordering::Relaxed);
        self.publish();
        Ok(())
    }

    /// The outcome of index-file writes made after the batches they describe were written
    /// (and, under `fsync = always`, synced): a failure stops the log for later appends, but
    /// does not fail those batches — they are in the segment, and recovery finds them without
    /// the index (which only speeds up seeks). Answering them with an error would tell the
    /// caller "not written" about records that are there after a restart.
    fn after_durable(&mut self, index: Result<()>) {
        if let Err(e) = index {
            self.poison(e);
        }
    }

    /// Records an index entry: at once in memory (for readers), in the index files at once
    /// when its batch is synced, else after the sync that makes it so.
    fn write_index(&mut self, e: IndexEntry, t: TimeEntry) -> Result<()> {
        let a = &mut self.active;
        a.last_entry_pos = u64::from(e.pos);
        a.seg.push_index(Some(e), Some(t));
        if a.unsynced {
            a.deferred.push((e, t));
            return Ok(());
        }
        self.write_index_files(e, t)
    }

    /// Writes the deferred index entries (their batches are synced now).
    fn write_deferred_index(&mut self) -> Result<()> {
        for (e, t) in std::mem::take(&mut self.active.deferred) {
            self.write_index_files(e, t)?;
        }
        Ok(())
    }

    fn write_index_files(&mut self, e: IndexEntry, t: TimeEntry) -> Result<()> {
        let a = &mut self.active;
        a.index_file
            .write_all_at(&e.encode(), a.index_len)
            .map_err(|err| LogError::io("write index", &a.seg.paths.index, err))?;
        a.index_len += e.encode().len() as u64;
        a.time_file
            .write_all_at(&t.encode(), a.time_len)
            .map_err(|err| LogError::io("write time index", &a.seg.paths.time, err))?;
        a.time_len += t.encode().len() as u64;
        Ok(())
    }

    fn publish(&self) {
        self.parts.watermark.send_replace(Watermark {
            next_offset: self.next_offset,
            active_base: self.active.seg.base,
            active_len: self.active.len,
        });
    }

    /// fdatasync of the active segment if it has unsynced bytes.
    fn sync_segment(&mut self) -> Result<()> {
        if !self.active.unsynced {
            return Ok(());
        }
        let started = Instant::now();
        let a = &mut self.active;
        if let Err(e) = a.file.sync_data() {
            self.segment_sync_failed = true;
            return Err(LogError::io("sync segment", &a.seg.paths.log, e));
        }
        a.unsynced = false;
        self.parts.counters.fsynced(started.elapsed());
        let index = self.write_deferred_index();
        self.after_durable(index);
        Ok(())
    }

    /// When the log stops under `every`/`never` (a failed write, a roll's or an index file's
    /// failure): the batches acknowledged before, written but not synced, are synced now —
    /// the timer, a `sync()` and the close all refuse a stopped log, and until 2026-12-03 they
    /// were left to the kernel's writeback. A failed write does not taint the pages written
    /// before it; a failed sync may, and after one the segment is never synced again
    /// ([`Writer::segment_sync_failed`]). Torn bytes of the failed write that become durable
    /// are a torn tail, cut by the next open. Best effort: a failure is logged.
    fn save_acknowledged(&mut self) {
        if matches!(self.parts.opts.fsync, FsyncPolicy::Always)
            || self.segment_sync_failed
            || !self.active.unsynced
        {
            return;
        }
        let a = &mut self.active;
        match a.file.sync_data() {
            Ok(()) => a.unsynced = false,
            Err(e) => {
                tracing::error!(error = %e, file = %a.seg.paths.log.display(), "could not sync the batches acknowledged before a failed write");
            }
        }
    }

    /// Syncs the segment and both index files.
    fn sync_all(&mut self) -> Result<()> {
        self.sync_segment()?;
        self.sync_deadline = None;
        let a = &self.active;
        a.index_file
            .sync_data()
            .map_err(|e| LogError::io("sync index", &a.seg.paths.index, e))?;
        a.time_file
            .sync_data()
            .map_err(|e| LogError::io("sync time index", &a.seg.paths.time, e))
    }
    /// Seals the active segment and starts the next one (a no-op on an empty segment).
    fn roll(&mut self) -> Result<()> {
        if self.active.len == 0 {
            return Ok(());
        }
        // Cut the unused zeros, sync the batches (and with them write the index entries
        // waiting for that), then the final time entry makes the sealed segment's newest
        // timestamp exact.
        self.trim_active()?;
        self.sync_segment()?;
        // Its index entries may have failed to write (`after_durable`): no sealing then.
        self.checked()?;
        let a = &mut self.active;
        if let Some(last) = a.last_batch
            && a.seg.last_time_pos() != Some(last.pos)
        {
            a.time_file
                .write_all_at(&last.encode(), a.time_len)
                .map_err(|e| LogError::io("write time index", &a.seg.paths.time, e))?;
            a.time_len += last.encode().len() as u64;
            a.seg.push_index(None, Some(last));
        }
        self.sync_all()?;
        let base = self.next_offset;
        let vfs = self.parts.opts.vfs.clone();
        let paths = SegmentPaths::new(&self.parts.dir, base);
        let open = |p: &PathBuf| {
            vfs.open_write(p)
                .map_err(|e| LogError::io("create segment", p, e))
        };
        // The new segment is the spare of zeros if one is ready, renamed; else a new file. The
        // renamed file is opened again by its new name and must be the spare's size: the
        // segment is whatever that name holds, never a handle to a file that lost it.
        let (file, file_len) = match self.prealloc.as_mut().and_then(Preallocator::take) {
            None => (open(&paths.log)?, 0),
            Some(spare) => {
                let renamed = vfs
                    .rename(&spare.path, &paths.log)
                    .and_then(|()| vfs.open_write(&paths.log))
                    .and_then(|f| f.len().map(|len| (f, len)));
                match renamed {
                    Ok((f, len)) if len == spare.len => (f, len),
                    other => {
                        let why = match other {
                            Ok((_, len)) => format!("{len} bytes, not {}", spare.len),
                            Err(e) => e.to_string(),
                        };
                        // Off until the log is reopened: a rename that fails once is likely to
                        // fail again, and each try would cost a segment of zeros.
                        tracing::warn!(error = %why, file = %paths.log.display(), "could not use the preallocated segment; preallocation is off until the log is reopened");
                        self.prealloc = None;
                        // Its zeros are of no use now (gone already if the rename went through).
                        if let Err(e) = vfs.remove(&spare.path)
                            && e.kind() != std::io::ErrorKind::NotFound
                        {
                            tracing::warn!(error = %e, file = %spare.path.display(), "could not remove the spare segment");
                        }
                        let f = open(&paths.log)?;
                        f.set_len(0)
                            .map_err(|e| LogError::io("create segment", &paths.log, e))?;
                        (f, 0)
                    }
                }
            }
        };
        let index_file = open(&paths.index)?;
        let time_file = open(&paths.time)?;
        vfs.sync_dir(&self.parts.dir)
            .map_err(|e| LogError::io("sync directory", &self.parts.dir, e))?;
        if let Some(p) = &mut self.prealloc {
            p.request();
        }
        let seg = Arc::new(Segment::new_active(
            vfs.clone(),
            &self.parts.dir,
            base,
            u64::from(self.parts.opts.index_interval_bytes),
            file.clone(),
            SegmentIndex::default(),
        ));
        // Its file goes to the cache of sealed segments and its in-memory index is dropped:
        // readers load it from the index files, complete and synced above (`sync_all`).
        self.active.seg.seal(self.active.len);
        self.parts.segments.rcu(|segs| {
            let mut v = Vec::with_capacity(segs.len() + 1);
            v.extend(segs.iter().cloned());
            v.push(seg.clone());
            v
        });
        self.active = Active {
            seg,
            file,
            index_file,
            time_file,
            len: 0,
            index_len: 0,
            time_len: 0,
            last_entry_pos: 0,
            first_ts: None,
            last_batch: None,
            unsynced: false,
            file_len,
            preallocated: file_len > 0,
            deferred: Vec::new(),
        };
        self.parts.counters.rolls.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(base, "rolled to a new segment");
        let wm = Watermark {
            next_offset: self.next_offset,
            active_base: base,
            active_len: 0,
        };
        self.parts.watermark.send_replace(wm);
        // After the watermark that shows the segment sealed: the uploader woken reads it (woken
        // before, it could find the segment still active and spend the wake on nothing, the
        // upload waiting for the next interval).
        self.parts.rolled.notify_one();
        Ok(())
    }

    /// Makes everything durable before the writer stops (unless poisoned: then nothing more is
    /// written and reopen recovers).
    fn finish(&mut self) -> Result<()> {
        // The spare's thread stops first (joined; it may be writing zeros).
        let spare = self.prealloc.take().map(|p| p.path().to_path_buf());
        if self.parts.poison.get().is_some() {
            return Ok(());
        }
        // A closed log's active segment is exactly its batches: the next open reads no zeros.
        self.trim_active()?;
        self.sync_all()?;
        // Nor does a closed log keep a spare of zeros on disk (the next open makes one).
        if let Some(path) = spare
            && let Err(e) = self.parts.opts.vfs.remove(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, file = %path.display(), "could not remove the spare segment");
        }
        Ok(())
    }

    /// Cuts the preallocated zeros the active segment has not used (before it is sealed or
    /// the log closes); synced with the segment.
    fn trim_active(&mut self) -> Result<()> {
        let a = &mut self.active;
        if a.file_len > a.len {
            a.file
                .set_len(a.len)
                .map_err(|e| LogError::io("trim segment", &a.seg.paths.log, e))?;
            a.file_len = a.len;
            a.unsynced = true;
        }
        Ok(())
    }

    /// Answers every command still queued after a close.
    ///
    /// `recv`, not `try_recv`: an appender may hold a queue slot it reserved before the close
    /// and fill it a moment later. The queue ends only once every such slot is filled or given
    /// back; a command sent into a slot after the receiver is gone would stay in the channel
    /// unanswered, and its appender would wait for ever.
    async fn drain_closed(&mut self) {
        self.rx.close();
        if let Some(cmd) = self.stashed.take() {
            self.refuse(cmd);
        }
        while let Some(cmd) = self.rx.recv().await {
            self.refuse(cmd);
        }
    }

    fn refuse(&self, cmd: Command) {
        match cmd {
            Command::Append { ack, size, .. } => {
                self.parts.permits.add_permits(size as usize);
                let _ = ack.send(Err(LogError::Closed));
            }
            Command::Roll(ack) | Command::Sync(ack) | Command::Close(ack) => {
                let _ = ack.send(Err(LogError::Closed));
            }
        }
    }
}
