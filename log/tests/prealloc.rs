//! Preallocated segments: a segment starts as a file of zeros made ahead of time; the log
//! writes over them, cuts what it did not use when it seals the segment or closes, and after a
//! power cut takes zeros after the last batch for the unused preallocation (anything else
//! there is a torn tail, cut as before).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::{payload, read_all, sim_dir, small_opts};
use tidings_log::sim::SimFs;
use tidings_log::{Log, LogOptions};

const SPARE: &str = "next-segment.zeros";

/// Polls `ready` for up to 20 s.
async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn disk_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn payloads(recs: Vec<tidings_log::Record>) -> Vec<Bytes> {
    recs.into_iter().map(|r| r.payload).collect()
}

/// Small segments on a simulated disk, each preallocated whole.
fn sim_opts(fs: &SimFs) -> LogOptions {
    small_opts(fs)
        .with_segment_bytes(16 << 10)
        .with_preallocate_bytes(16 << 10)
}

/// Opens the log and waits until its first spare is written (and a moment more for it to be
/// marked ready).
async fn open_with_a_spare(fs: &SimFs, opts: &LogOptions) -> Log {
    let log = Log::open(sim_dir(), opts.clone()).await.unwrap();
    let spare = sim_dir().join(SPARE);
    wait_for("the first spare", || {
        fs.read_file(&spare).is_some_and(|b| b.len() == 16 << 10)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    log
}

#[tokio::test]
async fn segments_start_preallocated_and_are_cut_to_their_batches() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 << 10;
    let opts = LogOptions::default()
        .with_segment_bytes(size)
        .with_preallocate_bytes(size);
    let log = Log::open(dir.path(), opts.clone()).await.unwrap();
    let spare = dir.path().join(SPARE);
    wait_for("the first spare", || disk_len(&spare) == size).await;
    let mut expected = Vec::new();
    for i in 0..700 {
        let p = payload(i, 300);
        log.append_one(p.clone()).await.unwrap();
        expected.push(p);
    }
    // The next spare may have been late for the last roll; once it is ready, the next append
    // moves to it.
    until_preallocated(&log, 700, &mut expected).await;

    let segs = log.segments().unwrap();
    assert!(segs.len() >= 4, "{} segments", segs.len());
    for s in &segs[..segs.len() - 1] {
        assert!(s.sealed);
        assert_eq!(
            disk_len(&s.path),
            s.bytes,
            "sealed {} is exactly its batches",
            s.path.display()
        );
    }
    let active = segs.last().unwrap().clone();
    assert!(!active.sealed && active.bytes < size);
    assert_eq!(
        disk_len(&active.path),
        size,
        "the active segment is the preallocated file"
    );
    assert_eq!(payloads(read_all(&log, 0).await), expected);
    log.close().await.unwrap();
    assert_eq!(
        disk_len(&active.path),
        active.bytes,
        "closing cuts the zeros the segment did not use"
    );
    assert!(!spare.exists(), "a closed log keeps no spare of zeros");

    let log = Log::open(dir.path(), opts).await.unwrap();
    for i in 5_000..5_200 {
        let p = payload(i, 300);
        log.append_one(p.clone()).await.unwrap();
        expected.push(p);
    }
    assert_eq!(payloads(read_all(&log, 0).await), expected);
    for s in log.segments().unwrap() {
        log.check_segment(s.base_offset).unwrap();
    }
    log.close().await.unwrap();
}

/// Writes into a preallocated segment run on with zeros to the end of their last page (the
/// spare's zeros were written past the page cache); a segment that grows as it is written
/// never gets such zeros: its file is exactly its batches, before any close.
#[tokio::test]
async fn writes_are_padded_to_the_page_only_inside_the_preallocation() {
    let dir = tempfile::tempdir().unwrap();
    let grown = LogOptions::default().with_preallocate_bytes(0);
    let log = Log::open(dir.path(), grown).await.unwrap();
    let mut expected = Vec::new();
    for i in 0..10 {
        let p = payload(i, 300);
        log.append_one(p.clone()).await.unwrap();
        expected.push(p);
        let (path, bytes) = active_file(&log);
        assert_eq!(disk_len(&path), bytes, "a growing segment is its batches");
    }
    assert_eq!(payloads(read_all(&log, 0).await), expected);
    log.close().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let size = 64 << 10;
    let opts = LogOptions::default()
        .with_segment_bytes(size)
        .with_preallocate_bytes(size);
    let log = Log::open(dir.path(), opts).await.unwrap();
    let spare = dir.path().join(SPARE);
    wait_for("the first spare", || disk_len(&spare) == size).await;
    until_preallocated(&log, 0, &mut expected).await;
    expected.clear();
    let first = log.next_offset();
    for i in 10_000..10_020 {
        let p = payload(i, 300);
        log.append_one(p.clone()).await.unwrap();
        expected.push(p);
        let (path, bytes) = active_file(&log);
        assert_eq!(
            disk_len(&path),
            size,
            "the preallocated file keeps its size"
        );
        let disk = std::fs::read(&path).unwrap();
        assert!(
            disk[bytes as usize..].iter().all(|&b| b == 0),
            "zeros after the batches"
        );
    }
    assert_eq!(payloads(read_all(&log, first).await), expected);
    log.close().await.unwrap();
}

/// Appends on a simulated disk until a roll has moved to a preallocated segment, then cuts the
/// power with the process running; returns the acknowledged records.
async fn crash_with_a_preallocated_segment(opts: &LogOptions, fs: &SimFs) -> Vec<Bytes> {
    let log = open_with_a_spare(fs, opts).await;
    let mut acked = Vec::new();
    let mut i = 0;
    // At least 150 records, and on until the active segment is a preallocated one.
    while i < 150 || {
        let (path, bytes) = active_file(&log);
        fs.read_file(&path).unwrap().len() as u64 == bytes
    } {
        assert!(i < 2_000, "the log never moved to a preallocated segment");
        if i >= 150 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let p = payload(i, 100);
        log.append_one(p.clone()).await.unwrap();
        acked.push(p);
        i += 1;
    }
    fs.crash();
    fs.kill_process();
    drop(log);
    acked
}

/// Appends a record every 10 ms (numbers from `from`, into `expected`) until the active
/// segment is a preallocated file (larger on disk than its batches).
async fn until_preallocated(log: &Log, from: u64, expected: &mut Vec<Bytes>) {
    let mut i = from;
    while {
        let a = active_file(log);
        disk_len(&a.0) == a.1
    } {
        assert!(
            i < from + 1_300,
            "the log never moved to a preallocated segment"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        let p = payload(i, 300);
        log.append_one(p.clone()).await.unwrap();
        expected.push(p);
        i += 1;
    }
}

fn active_file(log: &Log) -> (PathBuf, u64) {
    let segs = log.segments().unwrap();
    let a = segs.last().unwrap();
    (a.path.clone(), a.bytes)
}

#[tokio::test]
async fn a_power_cut_keeps_everything_acknowledged_and_the_preallocation() {
    let fs = SimFs::new();
    let opts = sim_opts(&fs);
    let mut acked = crash_with_a_preallocated_segment(&opts, &fs).await;

    let log = Log::open(sim_dir(), opts.clone()).await.unwrap();
    assert_eq!(payloads(read_all(&log, 0).await), acked);
    let (path, bytes) = active_file(&log);
    let disk = fs.read_file(&path).unwrap();
    assert!(
        disk.len() as u64 > bytes,
        "the zeros after the last batch stay ({} bytes, {bytes} of batches)",
        disk.len()
    );
    assert!(disk[bytes as usize..].iter().all(|&b| b == 0));

    // Appends write over the zeros, and survive another power cut.
    for i in 5_000..5_050 {
        let p = payload(i, 100);
        log.append_one(p.clone()).await.unwrap();
        acked.push(p);
    }
    fs.crash();
    fs.kill_process();
    drop(log);
    let log = Log::open(sim_dir(), opts).await.unwrap();
    assert_eq!(payloads(read_all(&log, 0).await), acked);
    for s in log.segments().unwrap() {
        log.check_segment(s.base_offset).unwrap();
    }
    log.close().await.unwrap();
}

#[tokio::test]
async fn bytes_after_the_last_batch_that_are_not_zeros_are_cut_as_a_torn_tail() {
    let fs = SimFs::new();
    let opts = sim_opts(&fs);
    let acked = crash_with_a_preallocated_segment(&opts, &fs).await;
    // Find the active segment and its batches' end from a clean read-only look.
    let (path, bytes) = {
        let ro = Log::open(sim_dir(), opts.clone().with_read_only(true))
            .await
            .unwrap();
        let f = active_file(&ro);
        ro.close().await.unwrap();
        f
    };
    let mut disk = fs.read_file(&path).unwrap();
    assert!(disk.len() as u64 > bytes + 100);
    // Half a batch header's worth of junk where the next batch would have gone.
    for b in &mut disk[bytes as usize + 3..bytes as usize + 20] {
        *b = 0xAB;
    }
    fs.write_file(&path, disk);

    let log = Log::open(sim_dir(), opts).await.unwrap();
    assert_eq!(payloads(read_all(&log, 0).await), acked);
    assert_eq!(
        fs.read_file(&path).unwrap().len() as u64,
        bytes,
        "the tail was cut at the last batch"
    );
    let off = log.append_one(payload(999, 100)).await.unwrap();
    assert_eq!(off, acked.len() as u64);
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_spare_that_cannot_be_renamed_turns_preallocation_off_and_loses_nothing() {
    let fs = SimFs::new();
    let opts = sim_opts(&fs);
    let log = open_with_a_spare(&fs, &opts).await;
    fs.fail_rename_after(1);
    let mut acked = Vec::new();
    for i in 0..600 {
        let p = payload(i, 100);
        log.append_one(p.clone()).await.unwrap();
        acked.push(p);
        if i == 0 {
            // Give a spare time to be ready again: preallocation must stay off, not retry.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let segs = log.segments().unwrap();
    let total: u64 = segs.iter().map(|s| s.bytes).sum();
    for s in &segs {
        assert_eq!(
            fs.read_file(&s.path).unwrap().len() as u64,
            s.bytes,
            "{}: a plain file, no zeros",
            s.path.display()
        );
    }
    // Rolls by size only (plus the first hand-over, whose rename failed): no roll per spare.
    assert!(
        segs.len() as u64 <= total / (16 << 10) + 3,
        "{} segments for {total} bytes",
        segs.len()
    );
    assert_eq!(payloads(read_all(&log, 0).await), acked);
    assert!(
        fs.read_file(&sim_dir().join("next-segment.zeros"))
            .is_none(),
        "the unused spare is removed when preallocation turns off"
    );
    log.close().await.unwrap();
    let log = Log::open(sim_dir(), opts).await.unwrap();
    assert_eq!(payloads(read_all(&log, 0).await), acked);
    log.close().await.unwrap();
}

#[tokio::test]
async fn under_every_and_never_a_power_cut_keeps_a_synced_prefix_over_the_zeros() {
    use tidings_log::FsyncPolicy;
    for policy in [
        FsyncPolicy::Every(Duration::from_millis(5)),
        FsyncPolicy::Never,
    ] {
        let fs = SimFs::new();
        let opts = sim_opts(&fs).with_fsync(policy);
        let log = open_with_a_spare(&fs, &opts).await;
        let mut written = Vec::new();
        for i in 0..40 {
            let p = payload(i, 100);
            log.append_one(p.clone()).await.unwrap();
            written.push(p);
        }
        // Under every(5 ms) the timer has synced all of these by now; under never only the
        // roll (the hand-over to the spare) synced anything.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for i in 40..60 {
            log.append_one(payload(i, 100)).await.unwrap();
        }
        fs.crash();
        fs.kill_process();
        drop(log);
        let log = Log::open(sim_dir(), opts).await.unwrap();
        let got = payloads(read_all(&log, 0).await);
        assert!(
            got.len() <= 60,
            "{policy}: nothing appears that was not written"
        );
        assert_eq!(
            got[..],
            [written.clone(), (40..60).map(|i| payload(i, 100)).collect()].concat()[..got.len()],
            "{policy}: what survives is a prefix of what was written"
        );
        if matches!(policy, FsyncPolicy::Every(_)) {
            assert!(
                got.len() >= 40,
                "{policy}: the synced 40 survive, got {}",
                got.len()
            );
        }
        for s in log.segments().unwrap() {
            log.check_segment(s.base_offset).unwrap();
        }
        log.close().await.unwrap();
    }
}
