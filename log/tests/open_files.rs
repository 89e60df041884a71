//! What a log holds open does not grow with its history. After reads of every segment of a
//! long log, at most `MAX_OPEN_SEALED_FILES` sealed segment files (plus the active one) are
//! open, and every record still reads back byte for byte, also once the cache of sealed
//! segments has closed a segment's file and dropped its index and they are opened and loaded
//! again. Until 2026-11-30 a sealed segment kept the writer's file from its roll, or its own
//! from its first read, until the process exited (with its whole index): a log of 300 segments
//! read from offset 0 left 300 descriptors open, and a long-running server reached the
//! open-file limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use bytes::Bytes;
use common::payload;
use tidings_log::{FsyncPolicy, Log, LogOptions, MAX_OPEN_SEALED_FILES};

/// Bytes of each record's payload: a batch of one is 144 bytes, seven to a segment.
const RECORD: usize = 100;

/// Sealed segments the tests write: several times the cache's bound.
const SEGMENTS: usize = 300;

/// Segments of 1 KiB (the smallest allowed) with an index entry at every batch after the
/// first, so point reads go through the index. No fsync per append: the tests are about reads
/// (a roll still syncs the segment and its index files).
fn opts() -> LogOptions {
    LogOptions::default()
        .with_segment_bytes(1024)
        .with_index_interval_bytes(64)
        .with_fsync(FsyncPolicy::Never)
}

/// Appends one record at a time until the log has more than `segments` sealed segments;
/// returns the payloads, by offset (each names its offset).
async fn build(log: &Log, segments: usize) -> Vec<Bytes> {
    let mut payloads = Vec::new();
    while log.segments().unwrap().len() <= segments {
        let p = payload(payloads.len() as u64, RECORD);
        assert_eq!(
            log.append_one(p.clone()).await.unwrap(),
            payloads.len() as u64
        );
        payloads.push(p);
    }
    payloads
}

/// Descriptors of this process open on `.log` files in `dir` (the targets of the
/// `/proc/self/fd` links).
fn open_log_files(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    let in_dir = |t: &Path| t.parent() == Some(dir.as_path());
    let is_log = |t: &Path| t.extension().is_some_and(|x| x == "log");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| in_dir(t) && is_log(t))
        .count()
}

/// Fails unless at most the cache's bound of sealed files, plus the active segment's, are open
/// on `dir` — and at least the active segment's, so the count does see this log's files.
fn assert_few_open(dir: &Path, when: &str) {
    let open = open_log_files(dir);
    let bound = MAX_OPEN_SEALED_FILES + 1;
    assert!(
        (1..=bound).contains(&open),
        "{when}: {open} segment files open; expected 1 to {bound} (the cache's bound plus the active segment)"
    );
}

/// Reads everything from offset 0, a few segments per read, and compares it byte for byte.
async fn check_all(log: &Log, payloads: &[Bytes]) {
    let mut next = 0u64;
    while next < payloads.len() as u64 {
        let recs = log.read(next, 4 << 10).await.unwrap();
        assert!(!recs.is_empty(), "read at {next} returned nothing");
        for r in recs {
            assert_eq!(r.offset, next);
            assert_eq!(r.payload, payloads[next as usize], "offset {next}");
            next += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_every_segment_keeps_a_bounded_number_of_files_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    let payloads = build(&log, SEGMENTS).await;
    // Each roll hands the sealed segment's file to the cache (it kept it, before).
    assert_few_open(dir.path(), "after the rolls");

    check_all(&log, &payloads).await;
    assert_few_open(dir.path(), "after reading from offset 0");
    // Point reads: each looks its offset up in its segment's index, loaded again from the
    // index files once the cache has dropped it.
    for (i, p) in payloads.iter().enumerate() {
        let recs = log.read(i as u64, 1).await.unwrap();
        assert_eq!((recs[0].offset, &recs[0].payload), (i as u64, p));
    }
    // The first segments' files and indexes were dropped long ago: read them again.
    check_all(&log, &payloads).await;
    assert_few_open(dir.path(), "after reading everything again");
    log.close().await.unwrap();
    drop(log);

    // Reopened: the sealed segments are the directory's, opened only when read.
    let log = Log::open(dir.path(), opts()).await.unwrap();
    check_all(&log, &payloads).await;
    assert_few_open(dir.path(), "after reading from offset 0 after a reopen");
    check_all(&log, &payloads).await;
    assert_few_open(dir.path(), "after reading everything again after a reopen");
    log.close().await.unwrap();
}

/// A seeded xorshift: the same reads at every run.
struct XorShift(u64);

impl XorShift {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Readers at random offsets across every segment, while an appender rolls new segments (their
/// files move into the cache) and the cache keeps closing files and dropping indexes that other
/// readers may be using: every read returns exactly the bytes written at its offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_reads_stay_exact_while_the_cache_churns() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    let written = build(&log, SEGMENTS).await.len() as u64;

    let appender = {
        let log = log.clone();
        tokio::spawn(async move {
            for i in written..written + 700 {
                assert_eq!(log.append_one(payload(i, RECORD)).await.unwrap(), i);
            }
        })
    };
    let mut readers = tokio::task::JoinSet::new();
    for t in 0..8u64 {
        let log = log.clone();
        readers.spawn(async move {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
            for _ in 0..1500 {
                let from = rng.next_u64() % log.next_offset();
                // Mostly one record (an index lookup each), sometimes a run across segments.
                let max = if rng.next_u64().is_multiple_of(4) {
                    4 << 10
                } else {
                    1
                };
                let recs = log.read(from, max).await.unwrap();
                assert!(!recs.is_empty(), "read at {from} returned nothing");
                for (k, r) in recs.iter().enumerate() {
                    assert_eq!(r.offset, from + k as u64);
                    assert_eq!(r.payload, payload(r.offset, RECORD), "offset {}", r.offset);
                }
            }
        });
    }
    while let Some(r) = readers.join_next().await {
        r.unwrap();
    }
    appender.await.unwrap();
    assert_few_open(dir.path(), "after the random reads");
    log.close().await.unwrap();
}

/// A read-only view following a live log (`tidings replay --follow`) holds no more files as
/// the writer rolls: the segment it saw active becomes a plain sealed one at its next refresh.
/// It kept the file and index it had scanned, one more of each for every roll it saw.
#[tokio::test]
async fn a_read_only_view_following_a_writer_keeps_few_files_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, opts()).await.unwrap();
    let view = Log::open(&path, opts().with_read_only(true)).await.unwrap();
    let mut n = 0u64;
    while log.segments().unwrap().len() <= 2 * MAX_OPEN_SEALED_FILES {
        assert_eq!(log.append_one(payload(n, RECORD)).await.unwrap(), n);
        n += 1;
        view.refresh().unwrap();
    }
    // The writer's and the view's active segments, and the cache's sealed ones.
    let open = open_log_files(&path);
    assert!(
        open <= MAX_OPEN_SEALED_FILES + 2,
        "{open} segment files open after {} rolls",
        log.segments().unwrap().len()
    );
    let recs = view.read(n - 1, 0).await.unwrap();
    assert_eq!(recs[0].payload, payload(n - 1, RECORD));
    view.close().await.unwrap();
    log.close().await.unwrap();
}
