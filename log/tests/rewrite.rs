//! Rewriting a sealed segment (`Log::rewrite_sealed`): a same-length rewrite keeps the segment's
//! offsets, timestamps, length and index files, and the log reads the new bytes at once; every
//! refusal leaves the segment untouched; a crash at any step of a rewrite leaves each segment
//! wholly old or wholly new; and the simulated disk's model of names across a crash, which
//! those crash tests rely on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{payload, read_all, sim_dir, small_opts};
use tidings_log::sim::SimFs;
use tidings_log::{Log, LogError, LogOptions, Record, RewriteStats, SealedSegment, Vfs};

/// The bytes that replace the record at `offset` (of `len` bytes): same length, another tag.
fn replacement(offset: u64, len: usize) -> Bytes {
    payload(1_000_000 + offset, len)
}

/// A log in `dir` of about 120 records appended in batches of one to four (so that a batch
/// holds replaced and kept records side by side), rolled at the end: every segment holding a
/// record is sealed. Returns the open log and the payloads by offset.
async fn written(dir: &Path, opts: LogOptions) -> (Log, Vec<Bytes>) {
    let log = Log::open(dir, opts).await.unwrap();
    let mut payloads = Vec::new();
    let mut next = 0u64;
    while next < 120 {
        let n = 1 + next % 4;
        let records: Vec<Bytes> = (next..next + n)
            .map(|o| payload(o, 30 + (o as usize * 13) % 70))
            .collect();
        let ack = log.append(records.clone()).await.unwrap();
        assert_eq!(ack.base_offset, next);
        payloads.extend(records);
        next += n;
    }
    log.roll().await.unwrap();
    (log, payloads)
}

/// Replacements for the first and every third offset of `seg`.
fn replacements(seg: &SealedSegment, payloads: &[Bytes]) -> BTreeMap<u64, Bytes> {
    (seg.base..seg.end)
        .filter(|o| (o - seg.base).is_multiple_of(3))
        .map(|o| (o, replacement(o, payloads[o as usize].len())))
        .collect()
}

/// The payloads after a rewrite of `repl` (or before it, `new` false).
fn expected(payloads: &[Bytes], repl: &BTreeMap<u64, Bytes>, new: bool) -> Vec<Bytes> {
    payloads
        .iter()
        .enumerate()
        .map(|(o, p)| match repl.get(&(o as u64)) {
            Some(r) if new => r.clone(),
            _ => p.clone(),
        })
        .collect()
}

fn segment_file(dir: &Path, base: u64, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

/// A rewrite replaces exactly the records asked for and nothing else: offsets, batch
/// timestamps, the segment's length and both index files are byte for byte what they were,
/// every segment checks, and time lookups answer as before. The same log, which read the old
/// file (and keeps it open in its cache of sealed segments), reads the new bytes at once.
#[tokio::test]
async fn a_rewrite_keeps_offsets_timestamps_length_and_index_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let opts = LogOptions::default()
        .with_segment_bytes(4096)
        .with_index_interval_bytes(256);
    let (log, payloads) = written(&dir, opts.clone()).await;
    let sealed = log.sealed_segments();
    assert!(sealed.len() >= 3, "{sealed:?}");
    let listed = log.segments().unwrap();
    for (i, s) in sealed.iter().enumerate() {
        assert!(!s.remote);
        assert_eq!(
            (s.base, s.end),
            (listed[i].base_offset, listed[i].end_offset)
        );
    }
    assert_eq!(sealed.last().unwrap().end, log.next_offset());
    assert_eq!(listed.len(), sealed.len() + 1, "and the active segment");

    // Read once: the target's file is open in the cache of sealed segments.
    let before: Vec<Record> = read_all(&log, 0).await;
    let target = sealed[1];
    let repl = replacements(&target, &payloads);
    let files = |ext: &str| -> Vec<Vec<u8>> {
        sealed
            .iter()
            .map(|s| std::fs::read(segment_file(&dir, s.base, ext)).unwrap())
            .collect()
    };
    let (logs, indexes, times) = (files("log"), files("index"), files("timeindex"));
    let checks: Vec<_> = sealed
        .iter()
        .map(|s| log.check_segment(s.base).unwrap())
        .collect();
    let mut stamps: Vec<u64> = before.iter().map(|r| r.timestamp_ms).collect();
    stamps.dedup();
    let lookups: Vec<_> = stamps
        .iter()
        .map(|&ts| log.offset_for_timestamp(ts).unwrap())
        .collect();

    let stats = log.rewrite_sealed(target.base, repl.clone()).await.unwrap();
    assert_eq!(stats.records, repl.len() as u64);
    assert!(
        stats.batches >= 1 && stats.batches <= stats.records,
        "{stats:?}"
    );
    assert_eq!(stats.bytes, logs[1].len() as u64);

    let after = read_all(&log, 0).await;
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a.offset, b.offset);
        assert_eq!(a.timestamp_ms, b.timestamp_ms, "offset {}", a.offset);
    }
    let got: Vec<Bytes> = after.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(
        got,
        expected(&payloads, &repl, true),
        "the same log reads the new bytes"
    );

    let (logs2, indexes2, times2) = (files("log"), files("index"), files("timeindex"));
    assert_eq!(indexes2, indexes, "the index files are not touched");
    assert_eq!(times2, times);
    for (i, (new, old)) in logs2.iter().zip(&logs).enumerate() {
        assert_eq!(new.len(), old.len(), "segment {i} keeps its length");
        assert_eq!(new == old, i != 1, "only segment 1 changed");
    }
    for (s, c) in sealed.iter().zip(&checks) {
        assert_eq!(log.check_segment(s.base).unwrap(), *c);
    }
    for (ts, off) in stamps.iter().zip(&lookups) {
        assert_eq!(log.offset_for_timestamp(*ts).unwrap(), *off, "ts {ts}");
    }
    assert_eq!(log.sealed_segments(), sealed);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".rewrite")), "{names:?}");
    log.close().await.unwrap();

    let log = Log::open(&dir, opts).await.unwrap();
    let reopened: Vec<Bytes> = read_all(&log, 0)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(reopened, expected(&payloads, &repl, true));
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

fn refused(r: &Result<RewriteStats, LogError>, base: u64) -> bool {
    matches!(r, Err(LogError::RewriteRefused { base: b, .. }) if *b == base)
}

/// Each refusal is typed, names the segment, and changes no byte on the disk (a replacement of
/// another length is found while the rewrite is written: its temp file is removed).
#[tokio::test]
async fn refusals_leave_the_segment_untouched() {
    let fs = SimFs::new();
    let (log, payloads) = written(&sim_dir(), small_opts(&fs)).await;
    // The active segment holds records too.
    let active = log.next_offset();
    log.append_one(payload(active, 40)).await.unwrap();
    let sealed = log.sealed_segments();
    assert!(sealed.len() >= 2);
    let (first, second) = (sealed[0], sealed[1]);
    let len_at = |o: u64| payloads[o as usize].len();
    let image = disk(&fs);

    let one = |o: u64, len: usize| BTreeMap::from([(o, replacement(o, len))]);
    // One replacement, of the length of the original record at `o`.
    let at = |o: u64| one(o, len_at(o));
    let r = log.rewrite_sealed(active, one(active, 40)).await;
    assert!(refused(&r, active), "the active segment: {r:?}");
    let r = log
        .rewrite_sealed(second.base + 1, at(second.base + 1))
        .await;
    assert!(refused(&r, second.base + 1), "not a segment's base: {r:?}");
    let r = log.rewrite_sealed(first.base, at(first.end)).await;
    assert!(
        refused(&r, first.base),
        "the next segment's first offset: {r:?}"
    );
    let r = log.rewrite_sealed(second.base, at(second.base - 1)).await;
    assert!(
        refused(&r, second.base),
        "the previous segment's last offset: {r:?}"
    );
    let r = log.rewrite_sealed(first.base, one(active, 40)).await;
    assert!(
        refused(&r, first.base),
        "an offset in the active segment: {r:?}"
    );
    let last = first.end - 1;
    for len in [len_at(last) + 1, len_at(last) - 1, 0] {
        let mut repl = replacements(&first, &payloads);
        repl.insert(last, Bytes::from(vec![b'#'; len]));
        let r = log.rewrite_sealed(first.base, repl).await;
        assert!(
            refused(&r, first.base),
            "a replacement of {len} bytes: {r:?}"
        );
    }
    // Nothing to replace: nothing written.
    let r = log.rewrite_sealed(first.base, BTreeMap::new()).await;
    assert_eq!(r.unwrap(), RewriteStats::default());
    assert_eq!(disk(&fs), image, "no byte changed, no file left");

    let all: Vec<Bytes> = read_all(&log, 0)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(all[..payloads.len()], payloads[..]);
    log.close().await.unwrap();
    let r = log.rewrite_sealed(first.base, at(first.base)).await;
    assert!(matches!(r, Err(LogError::Closed)), "a closed log: {r:?}");

    let view = Log::open(sim_dir(), small_opts(&fs).with_read_only(true))
        .await
        .unwrap();
    let r = view.rewrite_sealed(first.base, at(first.base)).await;
    assert!(refused(&r, first.base), "a read-only view: {r:?}");
    view.close().await.unwrap();
}

/// Where a rewrite is made to fail before the power cut (or the kill).
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The `n`th write, after applying `torn` bytes of it.
    Write {
        n: u64,
        torn: usize,
    },
    Sync(u64),
    Rename(u64),
    DirSync(u64),
}

impl Fault {
    fn arm(self, fs: &SimFs) {
        match self {
            Fault::Write { n, torn } => fs.fail_write_after(n, torn),
            Fault::Sync(n) => fs.fail_sync_after(n),
            Fault::Rename(n) => fs.fail_rename_after(n),
            Fault::DirSync(n) => fs.fail_dir_sync_after(n),
        }
    }

    fn with_nth(self, n: u64) -> Fault {
        match self {
            Fault::Write { torn, .. } => Fault::Write { n, torn },
            Fault::Sync(_) => Fault::Sync(n),
            Fault::Rename(_) => Fault::Rename(n),
            Fault::DirSync(_) => Fault::DirSync(n),
        }
    }
}

/// Reopens the log on `fs` after a crash or kill and checks it: every offset readable with its
/// original timestamp, the target segment wholly new (`new`) or wholly old, every other record
/// as it was, every segment valid, no rewrite file left. Returns the reopened log.
async fn reopen_and_check(
    fs: &SimFs,
    before: &[Record],
    payloads: &[Bytes],
    repl: &BTreeMap<u64, Bytes>,
    new: bool,
    case: &str,
) -> Log {
    let log = Log::open(sim_dir(), small_opts(fs)).await.unwrap();
    assert_eq!(log.next_offset(), payloads.len() as u64, "{case}");
    let all = read_all(&log, 0).await;
    let stamps: Vec<u64> = all.iter().map(|r| r.timestamp_ms).collect();
    let old: Vec<u64> = before.iter().map(|r| r.timestamp_ms).collect();
    assert_eq!(stamps, old, "{case}");
    let got: Vec<Bytes> = all.into_iter().map(|r| r.payload).collect();
    assert!(
        got == expected(payloads, repl, new),
        "{case}: the segment must be wholly {}",
        if new { "new" } else { "old" }
    );
    for s in log.segments().unwrap() {
        log.check_segment(s.base_offset).unwrap();
    }
    let left: Vec<PathBuf> = fs
        .paths()
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".rewrite"))
        .collect();
    assert!(left.is_empty(), "{case}: {left:?}");
    log
}

/// A rewrite failed at each of its writes (torn or not), its fsync, its rename and its
/// directory sync in turn — and run through without a fault — then the power cut (or, without
/// a power cut, the process killed): after a reopen the segment is wholly old or wholly new,
/// new exactly when the rename was durable (the directory synced) or the process only died,
/// every offset reads back, no temp file is left, and the same rewrite run again finishes and
/// survives the next power cut. (Before the simulated disk kept the old file on a crash after
/// an unsynced rename over it, a crash there lost the segment.)
#[tokio::test]
async fn a_crash_at_each_step_of_a_rewrite_leaves_the_old_or_the_new_segment() {
    let base_fs = SimFs::new();
    let (log, payloads) = written(&sim_dir(), small_opts(&base_fs)).await;
    let before = read_all(&log, 0).await;
    let target = log.sealed_segments()[1];
    log.close().await.unwrap();
    let repl = replacements(&target, &payloads);

    let faults = [
        Fault::Write { n: 1, torn: 0 },
        Fault::Write { n: 1, torn: 1 },
        Fault::Write { n: 1, torn: 41 },
        Fault::Write { n: 1, torn: 1000 },
        Fault::Sync(1),
        Fault::Rename(1),
        Fault::DirSync(1),
    ];
    let mut completed = 0;
    for first in faults {
        for power_cut in [true, false] {
            // The 1st, 2nd, … such step fails, until the rewrite has fewer of them.
            for n in 1.. {
                assert!(n <= 1_000, "{first:?}: the rewrite never finished");
                let fault = first.with_nth(n);
                let case = format!("{fault:?}, power cut {power_cut}");
                let fs = base_fs.fork();
                let log = Log::open(sim_dir(), small_opts(&fs)).await.unwrap();
                // Read first: the segment's old file is open in the cache.
                assert_eq!(read_all(&log, 0).await, before, "{case}");
                fault.arm(&fs);
                let result = log.rewrite_sealed(target.base, repl.clone()).await;
                fs.clear_faults();
                let finished = result.is_ok();
                if finished {
                    assert_eq!(result.unwrap().records, repl.len() as u64, "{case}");
                } else {
                    assert!(
                        !matches!(result, Err(LogError::RewriteRefused { .. })),
                        "{case}: {result:?}"
                    );
                }
                // The rename is made before the directory sync: without a power cut it stays.
                let renamed = finished || (matches!(fault, Fault::DirSync(_)) && !power_cut);
                if power_cut {
                    fs.crash();
                }
                fs.kill_process();
                drop(log);
                let log = reopen_and_check(&fs, &before, &payloads, &repl, renamed, &case).await;

                let again = log.rewrite_sealed(target.base, repl.clone()).await.unwrap();
                assert_eq!(again.records, repl.len() as u64, "{case}: a second run");
                fs.crash();
                fs.kill_process();
                drop(log);
                let log = reopen_and_check(&fs, &before, &payloads, &repl, true, &case).await;
                log.close().await.unwrap();
                if finished {
                    completed += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(completed, faults.len() * 2);
}

/// A rewrite file a crash left is removed by the next writable open (durably: it does not come
/// back at the next power cut), and left alone by a read-only view; the segment is as it was.
#[tokio::test]
async fn a_writable_open_removes_a_rewrite_left_by_a_crash() {
    let fs = SimFs::new();
    let (log, payloads) = written(&sim_dir(), small_opts(&fs)).await;
    let target = log.sealed_segments()[1];
    log.close().await.unwrap();
    let leftover = sim_dir().join(format!("{:020}.log.rewrite", target.base));
    let half = fs
        .read_file(&segment_file(&sim_dir(), target.base, "log"))
        .unwrap();
    fs.write_file(&leftover, half[..half.len() / 2].to_vec());
    let other = sim_dir().join("notes.rewrite");
    fs.write_file(&other, b"not a segment's".to_vec());

    let view = Log::open(sim_dir(), small_opts(&fs).with_read_only(true))
        .await
        .unwrap();
    view.close().await.unwrap();
    assert!(
        fs.read_file(&leftover).is_some(),
        "a read-only view changes nothing"
    );

    let log = Log::open(sim_dir(), small_opts(&fs)).await.unwrap();
    assert!(fs.read_file(&leftover).is_none());
    assert!(
        fs.read_file(&other).is_some(),
        "only segments' rewrites are removed"
    );
    fs.crash();
    fs.kill_process();
    drop(log);
    assert!(fs.read_file(&leftover).is_none(), "removed durably");
    let log = Log::open(sim_dir(), small_opts(&fs)).await.unwrap();
    let all: Vec<Bytes> = read_all(&log, 0)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(all, payloads);
    log.close().await.unwrap();
}

/// Writes `bytes` into a new file at `path` and fdatasyncs it (its name is not synced).
fn write_synced(fs: &SimFs, path: &Path, bytes: &[u8]) {
    let f = fs.open_write(path).unwrap();
    f.write_all_at(bytes, 0).unwrap();
    f.sync_data().unwrap();
}

/// The simulated disk across a crash: a rename over a file is undone until the directory is
/// synced (the old file stays under its name, and the renamed one under its old name if that
/// was durable); after the sync it holds. Before, such a crash kept neither file.
#[test]
fn on_the_simulated_disk_an_unsynced_rename_over_a_file_leaves_the_old_one() {
    let fs = SimFs::new();
    let dir = Path::new("/sim/names");
    fs.create_dir_all(dir).unwrap();
    // The new directories' own entries, durable (see `a_new_directory_never_synced_...`).
    fs.sync_dir(Path::new("/sim")).unwrap();
    fs.sync_dir(Path::new("/")).unwrap();
    let (target, tmp) = (dir.join("segment"), dir.join("segment.tmp"));
    write_synced(&fs, &target, b"old");
    fs.sync_dir(dir).unwrap();

    write_synced(&fs, &tmp, b"new");
    fs.rename(&tmp, &target).unwrap();
    assert_eq!(fs.read_file(&target).unwrap(), b"new");
    assert!(fs.read_file(&tmp).is_none());
    fs.crash();
    assert_eq!(
        fs.read_file(&target).unwrap(),
        b"old",
        "the old file, not neither"
    );
    assert!(fs.read_file(&tmp).is_none(), "its name was never durable");

    // Its source name durable: both names are back as they were.
    write_synced(&fs, &tmp, b"new");
    fs.sync_dir(dir).unwrap();
    fs.rename(&tmp, &target).unwrap();
    fs.crash();
    assert_eq!(fs.read_file(&target).unwrap(), b"old");
    assert_eq!(fs.read_file(&tmp).unwrap(), b"new");

    // Synced after the rename: the new file holds.
    fs.rename(&tmp, &target).unwrap();
    fs.sync_dir(dir).unwrap();
    fs.crash();
    assert_eq!(fs.read_file(&target).unwrap(), b"new");
    assert!(fs.read_file(&tmp).is_none());
}

/// The rest of the model, as before the change to renames: a new file whose directory entry
/// was never synced is gone after a crash, however synced its data; a file whose entry was
/// synced keeps its synced bytes only. Removals are undone until the directory is synced, as
/// renames are.
#[test]
fn on_the_simulated_disk_a_new_file_never_synced_into_its_directory_is_gone_after_a_crash() {
    let fs = SimFs::new();
    let dir = Path::new("/sim/files");
    fs.create_dir_all(dir).unwrap();
    // The new directories' own entries, durable (see `a_new_directory_never_synced_...`).
    fs.sync_dir(Path::new("/sim")).unwrap();
    fs.sync_dir(Path::new("/")).unwrap();
    let (named, unnamed) = (dir.join("named"), dir.join("unnamed"));
    write_synced(&fs, &named, b"synced");
    fs.sync_dir(dir).unwrap();
    write_synced(&fs, &unnamed, b"data synced, name not");
    fs.open_write(&named)
        .unwrap()
        .write_all_at(b" and more", 6)
        .unwrap();
    assert_eq!(fs.read_file(&named).unwrap(), b"synced and more");
    assert!(fs.read_file(&unnamed).is_some());
    fs.crash();
    assert!(
        fs.read_file(&unnamed).is_none(),
        "a new file never synced into its directory"
    );
    assert_eq!(
        fs.read_file(&named).unwrap(),
        b"synced",
        "its synced bytes only"
    );

    fs.remove(&named).unwrap();
    assert!(fs.read_file(&named).is_none());
    fs.crash();
    assert_eq!(
        fs.read_file(&named).unwrap(),
        b"synced",
        "an unsynced removal is undone"
    );
    fs.remove(&named).unwrap();
    fs.sync_dir(dir).unwrap();
    fs.crash();
    assert!(fs.read_file(&named).is_none());
}

/// A directory `create_dir_all` made is gone after a crash, with every file beneath it however
/// synced, until the directory holding it was synced: each new level needs its parent's sync
/// (`/` counts as there before).
#[test]
fn a_new_directory_never_synced_into_its_parent_is_gone_after_a_crash() {
    let fs = SimFs::new();
    let dir = Path::new("/sim/a/b");
    fs.create_dir_all(dir).unwrap();
    let file = dir.join("f");
    write_synced(&fs, &file, b"synced");
    fs.sync_dir(dir).unwrap();
    // `/sim/a` synced (so `b` is named in it), but not `/sim` nor `/`.
    fs.sync_dir(Path::new("/sim/a")).unwrap();
    fs.crash();
    assert!(
        fs.read_file(&file).is_none(),
        "`/sim` was never named in `/`"
    );
    assert!(fs.list(dir).is_err());

    fs.create_dir_all(dir).unwrap();
    write_synced(&fs, &file, b"synced");
    for d in ["/sim/a/b", "/sim/a", "/sim", "/"] {
        fs.sync_dir(Path::new(d)).unwrap();
    }
    fs.crash();
    assert_eq!(fs.read_file(&file).unwrap(), b"synced");
}
