//! Removing the oldest sealed segments (`Log::remove_segments_before`, retention without an
//! object store): exactly the prefix of sealed segments below the offset goes, files and all,
//! never the active segment; reads, tails and views below the new start fail with
//! `OffsetOutOfRange` and those from it on go on; refusals remove nothing; a crash at each step
//! of a removal leaves a suffix of the log that reads back exactly; no descriptor of a removed
//! file stays open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{payload, read_all, sim_dir, small_opts};
use tidings_log::sim::SimFs;
use tidings_log::{Log, LogError, LogOptions, Removed, Vfs, VfsFile, VfsLock};

/// Records appended by [`written`]: one per append, 144-byte batches, 28 to a 4 KiB segment,
/// so about five sealed segments and an active one holding records.
const RECORDS: u64 = 150;

/// Segments of 4 KiB with an index entry every 256 bytes (as `common::small_opts`), on a real
/// disk.
fn opts() -> LogOptions {
    LogOptions::default()
        .with_segment_bytes(4096)
        .with_index_interval_bytes(256)
}

/// A log in `dir` holding [`RECORDS`] records of 100 bytes, one per append. Returns the open
/// log and the payloads by offset.
async fn written(dir: &Path, opts: LogOptions) -> (Log, Vec<Bytes>) {
    let log = Log::open(dir, opts).await.unwrap();
    let mut payloads = Vec::new();
    for o in 0..RECORDS {
        let p = payload(o, 100);
        assert_eq!(log.append_one(p.clone()).await.unwrap(), o);
        payloads.push(p);
    }
    (log, payloads)
}

/// The bases of the log's segments, oldest first, the active one last.
fn bases(log: &Log) -> Vec<u64> {
    log.segments()
        .unwrap()
        .iter()
        .map(|s| s.base_offset)
        .collect()
}

/// The payloads the log reads from `from` to its end.
async fn payloads_from(log: &Log, from: u64) -> Vec<Bytes> {
    read_all(log, from)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect()
}

fn segment_file(dir: &Path, base: u64, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

/// Whether `r` is the out-of-range error for a read of `requested` in a log starting at `start`.
fn out_of_range<T: std::fmt::Debug>(r: &Result<T, LogError>, requested: u64, start: u64) -> bool {
    matches!(r, Err(LogError::OffsetOutOfRange { requested: q, start: s, .. })
        if *q == requested && *s == start)
}

/// Before an offset in the middle of segment 3: segments 1 and 2 go (their files with them),
/// the start moves to segment 3's base, reads below it are out of range and from it exact; the
/// same call again removes nothing; past the end every sealed segment goes but the active one,
/// and appends go on; a reopen starts where the removal left the log.
#[tokio::test]
async fn the_segments_below_the_offset_go_and_the_rest_reads_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (log, mut payloads) = written(&dir, opts()).await;
    let listed = log.segments().unwrap();
    assert!(listed.len() >= 5, "{listed:?}");
    let all = bases(&log);
    let third = &listed[2];
    assert!(third.end_offset - third.base_offset >= 2, "{third:?}");
    let offset = third.base_offset + 1;

    let removed = log.remove_segments_before(offset).await.unwrap();
    assert_eq!(
        removed,
        Removed {
            segments: 2,
            bytes: listed[0].bytes + listed[1].bytes,
            start_offset: third.base_offset,
        }
    );
    let start = third.base_offset;
    assert_eq!(log.start_offset(), start);
    assert_eq!(log.metrics().segments_removed, 2);
    assert_eq!(bases(&log), all[2..], "segments() no longer lists them");
    assert_eq!(log.segments().unwrap()[..], listed[2..]);
    for o in [0, 1, listed[1].base_offset, start - 1] {
        let r = log.read(o, 1 << 20).await;
        assert!(out_of_range(&r, o, start), "read at {o}: {r:?}");
    }
    let r = log.check_segment(0);
    assert!(out_of_range(&r, 0, start), "{r:?}");
    assert!(!log.is_local(0));
    assert_eq!(payloads_from(&log, start).await, payloads[start as usize..]);
    for s in &listed[..2] {
        for ext in ["log", "index", "timeindex"] {
            let path = segment_file(&dir, s.base_offset, ext);
            assert!(!path.exists(), "{} is still there", path.display());
        }
    }
    for s in &listed[2..] {
        assert!(segment_file(&dir, s.base_offset, "log").exists());
    }

    // The same call again: nothing to remove.
    let again = log.remove_segments_before(offset).await.unwrap();
    assert_eq!(
        again,
        Removed {
            segments: 0,
            bytes: 0,
            start_offset: start,
        }
    );
    // An offset below the start removes nothing either.
    assert_eq!(log.remove_segments_before(0).await.unwrap().segments, 0);

    // Past the end: every sealed segment, never the active one.
    let active = *all.last().unwrap();
    let removed = log.remove_segments_before(u64::MAX).await.unwrap();
    assert_eq!(removed.segments, all.len() as u64 - 3);
    assert_eq!(removed.start_offset, active);
    let left = log.segments().unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!left[0].sealed);
    assert_eq!(left[0].base_offset, active);
    assert_eq!(log.metrics().segments_removed, all.len() as u64 - 1);
    assert_eq!(
        payloads_from(&log, active).await,
        payloads[active as usize..]
    );
    // Appends go on at the next offset, across rolls.
    for o in RECORDS..RECORDS + 40 {
        let p = payload(o, 100);
        assert_eq!(log.append_one(p.clone()).await.unwrap(), o);
        payloads.push(p);
    }
    assert!(log.segments().unwrap().len() >= 2, "rolled since");
    assert_eq!(
        payloads_from(&log, active).await,
        payloads[active as usize..]
    );
    log.close().await.unwrap();

    let log = Log::open(&dir, opts()).await.unwrap();
    assert_eq!(log.start_offset(), active);
    assert_eq!(log.next_offset(), RECORDS + 40);
    assert_eq!(
        payloads_from(&log, active).await,
        payloads[active as usize..]
    );
    let r = log.read(active - 1, 1 << 20).await;
    assert!(out_of_range(&r, active - 1, active), "{r:?}");
    log.close().await.unwrap();
}

/// A tail that was below the new start, and a read-only view whose segment list predates the
/// removal, fail with `OffsetOutOfRange` (no panic, no I/O error); a tail at the start goes on,
/// through new appends, and the view finds the new start at its next refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tails_and_views_below_the_new_start_fail_cleanly_and_the_rest_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (log, mut payloads) = written(&dir, opts()).await;
    let all = bases(&log);
    let start = all[2];
    // The view lists every segment; it has read none of them.
    let view = Log::open(&dir, opts().with_read_only(true)).await.unwrap();
    assert_eq!(view.start_offset(), 0);

    let mut below = log.tail(0);
    let first = below.next().await.unwrap();
    assert_eq!((first.offset, &first.payload), (0, &payloads[0]));
    let mut above = log.tail(start);

    let removed = log.remove_segments_before(start).await.unwrap();
    assert_eq!((removed.segments, removed.start_offset), (2, start));

    let r = below.next_batch(1 << 20).await;
    assert!(out_of_range(&r, 1, start), "{r:?}");
    let mut got = Vec::new();
    while got.len() < (RECORDS - start) as usize {
        got.extend(above.next_batch(1 << 20).await.unwrap());
    }
    let got: Vec<Bytes> = got.into_iter().map(|r| r.payload).collect();
    assert_eq!(got, payloads[start as usize..]);
    let more = payload(RECORDS, 100);
    assert_eq!(log.append_one(more.clone()).await.unwrap(), RECORDS);
    let next = tokio::time::timeout(Duration::from_secs(10), above.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((next.offset, &next.payload), (RECORDS, &more));
    payloads.push(more);
    let r = log.read(start - 1, 1 << 20).await;
    assert!(out_of_range(&r, start - 1, start), "{r:?}");

    // The view still lists the removed segments: their files are gone, and a read of them is
    // out of range from the directory's start.
    assert_eq!(view.start_offset(), 0);
    for o in [0, all[1]] {
        let r = view.read(o, 1 << 20).await;
        assert!(out_of_range(&r, o, start), "view read at {o}: {r:?}");
    }
    let mut view_tail = view.tail(0);
    let r = view_tail.next_batch(1 << 20).await;
    assert!(out_of_range(&r, 0, start), "{r:?}");
    view.refresh().unwrap();
    assert_eq!(view.start_offset(), start);
    assert_eq!(view.segments().unwrap()[0].base_offset, start);
    let r = view.read(0, 1 << 20).await;
    assert!(out_of_range(&r, 0, start), "{r:?}");
    let seen: Vec<Bytes> = payloads_from(&view, start).await;
    assert_eq!(seen[..], payloads[start as usize..]);
    view.close().await.unwrap();
    log.close().await.unwrap();
}

/// Every file on a simulated disk with its bytes.
fn disk(fs: &SimFs) -> BTreeMap<PathBuf, Vec<u8>> {
    fs.paths()
        .into_iter()
        .map(|p| {
            let bytes = fs.read_file(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn refused<T: std::fmt::Debug>(r: &Result<T, LogError>) -> bool {
    matches!(r, Err(LogError::RemoveRefused { .. }))
}

/// A read-only view is refused, and so is nothing else on the disk changed; a closed log
/// answers `Closed`.
#[tokio::test]
async fn a_read_only_view_is_refused_and_nothing_is_removed() {
    let fs = SimFs::new();
    let (log, payloads) = written(&sim_dir(), small_opts(&fs)).await;
    log.close().await.unwrap();
    let r = log.remove_segments_before(u64::MAX).await;
    assert!(matches!(r, Err(LogError::Closed)), "a closed log: {r:?}");
    let image = disk(&fs);

    let view = Log::open(sim_dir(), small_opts(&fs).with_read_only(true))
        .await
        .unwrap();
    let r = view.remove_segments_before(u64::MAX).await;
    assert!(refused(&r), "a read-only view: {r:?}");
    assert_eq!(disk(&fs), image, "no file removed");
    assert_eq!(view.start_offset(), 0);
    assert_eq!(payloads_from(&view, 0).await, payloads);
    view.close().await.unwrap();
}

/// Index files whose `.log` is gone: a removal never leaves one (it unlinks a segment's index
/// files before its `.log`).
fn orphan_indexes(fs: &SimFs) -> Vec<PathBuf> {
    fs.paths()
        .into_iter()
        .filter(|p| {
            let name = p.to_string_lossy();
            (name.ends_with(".index") || name.ends_with(".timeindex"))
                && fs.read_file(&p.with_extension("log")).is_none()
        })
        .collect()
}

/// Where a removal is made to fail before the power cut (or the kill).
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The `n`th file removal (three per segment: `.index`, `.timeindex`, `.log`).
    Remove(u64),
    /// The `n`th directory sync (one per segment).
    DirSync(u64),
}

/// Reopens the log on `fs` after a crash or kill and checks it: it starts at `all[from]`, its
/// segments are `all[from..]` (a suffix), every offset from the start reads back exactly and
/// every one below is out of range, and no index file is left without its segment.
async fn reopen_and_check(
    fs: &SimFs,
    all: &[u64],
    from: usize,
    payloads: &[Bytes],
    case: &str,
) -> Log {
    let log = Log::open(sim_dir(), small_opts(fs)).await.unwrap();
    let start = all[from];
    assert_eq!(log.start_offset(), start, "{case}");
    assert_eq!(bases(&log), all[from..], "{case}: a suffix of the log");
    assert_eq!(log.next_offset(), payloads.len() as u64, "{case}");
    assert_eq!(
        payloads_from(&log, start).await,
        payloads[start as usize..],
        "{case}"
    );
    if start > 0 {
        let r = log.read(start - 1, 1 << 20).await;
        assert!(out_of_range(&r, start - 1, start), "{case}: {r:?}");
    }
    for s in log.segments().unwrap() {
        log.check_segment(s.base_offset).unwrap();
    }
    assert!(
        orphan_indexes(fs).is_empty(),
        "{case}: {:?}",
        orphan_indexes(fs)
    );
    log
}

/// A removal of three segments failed at each of its file removals and directory syncs in turn
/// — and run through without a fault — then the power cut (or, without one, the process
/// killed): the reopened log's segments are a suffix of the old ones, starting at the segment
/// the failure stopped at (or the next one, once that segment's removals were made and not
/// undone by a power cut), every offset from there reads back exactly, no index file is left
/// without its segment, and the same removal run again finishes and survives the next power
/// cut.
#[tokio::test]
async fn a_crash_at_each_step_of_a_removal_leaves_a_suffix_that_reads_back() {
    let base_fs = SimFs::new();
    let (log, payloads) = written(&sim_dir(), small_opts(&base_fs)).await;
    let all = bases(&log);
    assert!(all.len() >= 5, "{all:?}");
    log.close().await.unwrap();
    // Before an offset inside segment 4: segments 1 to 3 go.
    let offset = all[3] + 1;
    let gone = 3usize;

    let mut completed = 0;
    for first in [Fault::Remove(1), Fault::DirSync(1)] {
        for power_cut in [true, false] {
            for n in 1.. {
                assert!(n <= 100, "{first:?}: the removal never finished");
                let fault = match first {
                    Fault::Remove(_) => Fault::Remove(n),
                    Fault::DirSync(_) => Fault::DirSync(n),
                };
                let case = format!("{fault:?}, power cut {power_cut}");
                let fs = base_fs.fork();
                let log = Log::open(sim_dir(), small_opts(&fs)).await.unwrap();
                // Read first: the segments' files are open in the cache of sealed segments.
                assert_eq!(payloads_from(&log, 0).await, payloads, "{case}");
                match fault {
                    Fault::Remove(n) => fs.fail_remove_after(n),
                    Fault::DirSync(n) => fs.fail_dir_sync_after(n),
                }
                let result = log.remove_segments_before(offset).await;
                fs.clear_faults();
                let finished = result.is_ok();
                match &result {
                    Ok(r) => assert_eq!((r.segments, r.start_offset), (3, all[3]), "{case}"),
                    Err(e) => assert!(matches!(e, LogError::Io { .. }), "{case}: {e:?}"),
                }
                // Whatever failed, the segments left the log at once.
                assert_eq!(log.start_offset(), all[3], "{case}");
                // The segment the removal stopped at: its `.log` is still there (unlinked
                // last), and a power cut brings back whatever was not synced.
                let from = match fault {
                    _ if finished => gone,
                    Fault::Remove(n) => ((n - 1) / 3) as usize,
                    Fault::DirSync(n) => (n - 1) as usize + usize::from(!power_cut),
                };
                if power_cut {
                    fs.crash();
                }
                fs.kill_process();
                drop(log);
                let log = reopen_and_check(&fs, &all, from, &payloads, &case).await;

                let again = log.remove_segments_before(offset).await.unwrap();
                assert_eq!(
                    (again.segments, again.start_offset),
                    ((gone - from) as u64, all[3]),
                    "{case}: a second run"
                );
                fs.crash();
                fs.kill_process();
                drop(log);
                let log = reopen_and_check(&fs, &all, gone, &payloads, &case).await;
                for &b in &all[..gone] {
                    for ext in ["log", "index", "timeindex"] {
                        let path = segment_file(&sim_dir(), b, ext);
                        assert!(fs.read_file(&path).is_none(), "{case}: {}", path.display());
                    }
                }
                log.close().await.unwrap();
                if finished {
                    completed += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(completed, 4);
}

/// A removal whose unlinks failed midway has already taken its segments out of the log; the
/// next call (the same offset) finds their files below the start and removes them.
#[tokio::test]
async fn the_next_call_finishes_a_removal_that_failed_midway() {
    let fs = SimFs::new();
    let (log, payloads) = written(&sim_dir(), small_opts(&fs)).await;
    let all = bases(&log);
    // Fails at the first segment's `.timeindex`: its `.index` is gone, the rest is there.
    fs.fail_remove_after(2);
    let r = log.remove_segments_before(all[2]).await;
    fs.clear_faults();
    assert!(matches!(r, Err(LogError::Io { .. })), "{r:?}");
    assert_eq!(log.start_offset(), all[2]);
    let r = log.read(0, 1 << 20).await;
    assert!(out_of_range(&r, 0, all[2]), "{r:?}");
    assert!(fs.read_file(&segment_file(&sim_dir(), 0, "log")).is_some());
    assert!(
        fs.read_file(&segment_file(&sim_dir(), all[1], "log"))
            .is_some()
    );

    let again = log.remove_segments_before(all[2]).await.unwrap();
    assert_eq!(
        again,
        Removed {
            segments: 0,
            bytes: 0,
            start_offset: all[2],
        },
        "counted by the call that took them out of the log"
    );
    assert_eq!(log.metrics().segments_removed, 2);
    for &b in &all[..2] {
        for ext in ["log", "index", "timeindex"] {
            let path = segment_file(&sim_dir(), b, ext);
            assert!(fs.read_file(&path).is_none(), "{}", path.display());
        }
    }
    fs.crash();
    fs.kill_process();
    drop(log);
    let log = reopen_and_check(&fs, &all, 2, &payloads, "after a crash").await;
    log.close().await.unwrap();
}

/// Holds the first `open_read` of one path until released (a reader that loaded the segment
/// list before a removal, stopped between two steps of its read).
#[derive(Debug, Default)]
struct Gate {
    /// (a reader arrived, the gate was released)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Gate {
    /// Waits (up to 10 s) until `done` holds for the state.
    fn wait_for(&self, done: impl Fn(&(bool, bool)) -> bool) {
        let st = self.state.lock().unwrap();
        let (st, _) = self
            .changed
            .wait_timeout_while(st, Duration::from_secs(10), |s| !done(&*s))
            .unwrap();
        drop(st);
    }

    fn set(&self, change: impl FnOnce(&mut (bool, bool))) {
        change(&mut self.state.lock().unwrap());
        self.changed.notify_all();
    }
}

/// A simulated disk whose first `open_read` of `path` waits at the gate.
#[derive(Debug)]
struct GatedFs {
    inner: SimFs,
    path: PathBuf,
    gate: Arc<Gate>,
}

impl Vfs for GatedFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        if path == self.path.as_path() && !self.gate.state.lock().unwrap().1 {
            self.gate.set(|s| s.0 = true);
            self.gate.wait_for(|s| s.1);
        }
        self.inner.open_read(path)
    }
    fn open_write(&self, path: &Path) -> io::Result<Arc<dyn VfsFile>> {
        self.inner.open_write(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn VfsLock>> {
        self.inner.try_lock(path)
    }
}

/// A read that loaded the segment list before a removal and opened segment 0's file (its
/// length) before it, then reaches that segment's index after the removal: the cache of sealed
/// segments no longer holds the file (the removal dropped it, so its descriptor is closed), the
/// file is gone, and the read fails with `OffsetOutOfRange` — not a "not found" I/O error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_holding_the_old_segment_list_is_out_of_range_once_the_file_is_gone() {
    let fs = SimFs::new();
    let (log, payloads) = written(&sim_dir(), small_opts(&fs)).await;
    let all = bases(&log);
    log.close().await.unwrap();
    drop(log);
    // Reopened, its sealed segments open their files on first use.
    let gate = Arc::new(Gate::default());
    let gated = GatedFs {
        inner: fs.clone(),
        path: segment_file(&sim_dir(), 0, "index"),
        gate: gate.clone(),
    };
    let log = Log::open(sim_dir(), small_opts(&fs).with_vfs(Arc::new(gated)))
        .await
        .unwrap();
    let reader = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || log.read_blocking(0, 1 << 20))
    };
    {
        let gate = gate.clone();
        tokio::task::spawn_blocking(move || gate.wait_for(|s| s.0))
            .await
            .unwrap();
    }
    assert!(gate.state.lock().unwrap().0, "the reader reached the index");
    let removed = log.remove_segments_before(all[2]).await.unwrap();
    assert_eq!((removed.segments, removed.start_offset), (2, all[2]));
    gate.set(|s| s.1 = true);
    let r = reader.await.unwrap();
    assert!(out_of_range(&r, 0, all[2]), "{r:?}");
    assert_eq!(
        payloads_from(&log, all[2]).await,
        payloads[all[2] as usize..]
    );
    log.close().await.unwrap();
}

/// Descriptors of this process open on `path` (the targets of the `/proc/self/fd` links; an
/// unlinked file's reads "{path} (deleted)").
fn descriptors_on(path: &Path) -> usize {
    let name = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| {
            let t = t.to_string_lossy();
            t == name || t == format!("{name} (deleted)")
        })
        .count()
}

/// The removed segments' files are not kept open: their descriptors (the cache of sealed
/// segments held them after the reads) are closed, so their disk space is freed.
#[tokio::test]
async fn no_descriptor_of_a_removed_file_stays_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap().join("log");
    let (log, payloads) = written(&dir, opts()).await;
    let all = bases(&log);
    let removed: Vec<PathBuf> = all[..2]
        .iter()
        .map(|&b| segment_file(&dir, b, "log"))
        .collect();
    // Read, so the cache of sealed segments opens them (again, should a test running beside
    // this one have pushed them out meanwhile: the cache is the process's).
    let mut open = 0;
    for _ in 0..10 {
        assert_eq!(payloads_from(&log, 0).await, payloads);
        open = removed.iter().map(|p| descriptors_on(p)).sum::<usize>();
        if open > 0 {
            break;
        }
    }
    assert!(open > 0, "the reads left the files open in the cache");

    log.remove_segments_before(all[2]).await.unwrap();
    for p in &removed {
        assert!(!p.exists());
        assert_eq!(descriptors_on(p), 0, "{} is still open", p.display());
    }
    assert_eq!(
        payloads_from(&log, all[2]).await,
        payloads[all[2] as usize..]
    );
    log.close().await.unwrap();
}
