//! Read-only views: follow a log another handle is writing, across rolls, without a lock and
//! without changing a byte on disk; damage in the active segment that valid batches follow is
//! reported as the writable open reports it, a torn tail is a clean end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use common::{payload, read_all, segment_files};
use tidings_log::{CorruptKind, Log, LogError, LogOptions};

fn opts() -> LogOptions {
    LogOptions::default()
        .with_segment_bytes(4096)
        .with_index_interval_bytes(256)
}

#[tokio::test]
async fn a_read_only_view_follows_a_live_writer() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    for i in 0..30 {
        log.append_one(payload(i, 100)).await.unwrap();
    }
    // The writer holds the lock, yet a read-only view opens.
    let view = Log::open(dir.path(), opts().with_read_only(true))
        .await
        .unwrap();
    assert!(view.is_read_only());
    assert_eq!(view.next_offset(), 30);
    assert!(matches!(
        view.append_one(Bytes::new()).await,
        Err(LogError::ReadOnly)
    ));
    assert!(matches!(view.roll().await, Err(LogError::ReadOnly)));

    let mut tail = view.tail(0);
    let follower = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 130 {
            for r in tail.next_batch(1 << 20).await.unwrap() {
                got.push(r.payload);
            }
        }
        got
    });
    for i in 30..130 {
        log.append_one(payload(i, 100)).await.unwrap();
    }
    assert!(
        segment_files(dir.path()).len() > 3,
        "the writer rolled segments meanwhile"
    );
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), follower)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, (0..130).map(|i| payload(i, 100)).collect::<Vec<_>>());
    assert_eq!(view.refresh().unwrap().next_offset, 130);
    assert_eq!(read_all(&view, 0).await.len(), 130);
    view.close().await.unwrap();
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_read_only_view_changes_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    for i in 0..5 {
        log.append_one(payload(i, 50)).await.unwrap();
    }
    log.close().await.unwrap();
    // A torn tail: a read-only view reads up to it and leaves it for real recovery.
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(b"TDTG torn");
    std::fs::write(&seg, &bytes).unwrap();
    let view = Log::open(dir.path(), opts().with_read_only(true))
        .await
        .unwrap();
    assert_eq!(view.next_offset(), 5);
    assert_eq!(read_all(&view, 0).await.len(), 5);
    view.close().await.unwrap();
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "the view did not touch the file"
    );
    // An empty or missing directory is an empty view, or an error naming it.
    let empty = tempfile::tempdir().unwrap();
    let v = Log::open(empty.path(), opts().with_read_only(true))
        .await
        .unwrap();
    assert_eq!(v.next_offset(), 0);
    v.close().await.unwrap();
    assert!(matches!(
        Log::open(empty.path().join("missing"), opts().with_read_only(true)).await,
        Err(LogError::Io { .. })
    ));
}

/// Preallocation off and no index entry in a segment of 32 batches (the interval is larger),
/// so a read-only view scans the active segment from its start.
fn damage_opts() -> LogOptions {
    LogOptions::default()
        .with_preallocate_bytes(0)
        .with_index_interval_bytes(1 << 20)
}

/// A log of 32 records of 200 bytes, one batch each, all in its active segment (closed).
/// Returns the segment file and the length of each batch (they are all alike).
async fn thirty_two_batches(dir: &Path) -> (PathBuf, usize) {
    let log = Log::open(dir, damage_opts()).await.unwrap();
    for i in 0..32 {
        log.append_one(payload(i, 200)).await.unwrap();
    }
    log.close().await.unwrap();
    let files = segment_files(dir);
    assert_eq!(files.len(), 1, "one (active) segment");
    let len = std::fs::metadata(&files[0]).unwrap().len() as usize;
    assert_eq!(len % 32, 0, "32 batches of one length");
    (files[0].clone(), len / 32)
}

/// A byte flipped in batch 30 of the active segment, with batch 31 valid after it: the
/// read-only view's valid data ends at batch 30 (its watermark is 30), and before the fix its
/// check of the active segment said ok and a read at the watermark was a clean end, while
/// the writable open refused the log. Now all three name the same damage.
#[tokio::test]
async fn damage_in_the_active_segment_that_valid_batches_follow_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, batch) = thirty_two_batches(dir.path()).await;
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = 30 * batch;
    bytes[at + batch / 2] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let is_this_damage = |e: &LogError| {
        matches!(
            e,
            LogError::Corrupt {
                path,
                position,
                expected_offset: 30,
                kind: CorruptKind::DamageBeforeValidData { resume_at, .. },
            } if *path == seg && *position == at as u64 && *resume_at == (31 * batch) as u64
        )
    };

    let view = Log::open(dir.path(), damage_opts().with_read_only(true))
        .await
        .unwrap();
    assert_eq!(view.next_offset(), 30, "the valid data ends at batch 30");
    let err = view.check_segment(0).unwrap_err();
    assert!(is_this_damage(&err), "{err:?}");
    // The records before the damage read; the read that reaches it fails, naming it.
    assert_eq!(read_all(&view, 0).await.len(), 30);
    let err = view.read(30, 1 << 20).await.unwrap_err();
    assert!(is_this_damage(&err), "{err:?}");
    view.close().await.unwrap();

    // The writable open refuses the same log with the same error.
    let err = Log::open(dir.path(), damage_opts()).await.unwrap_err();
    assert!(is_this_damage(&err), "{err:?}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing was cut");
}

/// A torn tail — the last batch cut short, or damaged with nothing valid after it — stays a
/// clean end of a read-only view, as it is for the writable open (which cuts it).
#[tokio::test]
async fn a_torn_tail_stays_a_clean_end_of_a_read_only_view() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, batch) = thirty_two_batches(dir.path()).await;
    let whole = std::fs::read(&seg).unwrap();

    // Cut in the middle of batch 31.
    std::fs::write(&seg, &whole[..31 * batch + batch / 2]).unwrap();
    let view = Log::open(dir.path(), damage_opts().with_read_only(true))
        .await
        .unwrap();
    assert_eq!(view.next_offset(), 31);
    assert_eq!(view.check_segment(0).unwrap().records, 31);
    assert!(view.read(31, 1 << 20).await.unwrap().is_empty());
    view.close().await.unwrap();

    // A byte flipped in the last batch: damage, but nothing valid follows it.
    let mut bytes = whole;
    bytes[31 * batch + batch / 2] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let view = Log::open(dir.path(), damage_opts().with_read_only(true))
        .await
        .unwrap();
    assert_eq!(view.next_offset(), 31);
    assert_eq!(view.check_segment(0).unwrap().records, 31);
    assert!(view.read(31, 1 << 20).await.unwrap().is_empty());
    view.close().await.unwrap();

    // The writable open agrees: it cuts the torn batch and opens.
    let log = Log::open(dir.path(), damage_opts()).await.unwrap();
    assert_eq!(log.next_offset(), 31);
    log.close().await.unwrap();
}

/// A view that keeps reading at its watermark while a writer appends never takes the batch
/// being written for damage: a running writer writes nothing past a batch it has not finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_the_watermark_of_a_view_of_a_live_writer_never_fail() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), damage_opts()).await.unwrap();
    log.append_one(payload(0, 200)).await.unwrap();
    let view = Log::open(dir.path(), damage_opts().with_read_only(true))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (view, stop) = (view.clone(), stop.clone());
        move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Acquire) {
                let wm = view.refresh().unwrap();
                view.read_blocking(wm.next_offset, 0).unwrap();
                reads += 1;
            }
            reads
        }
    });
    for i in 1..300 {
        log.append_one(payload(i, 200)).await.unwrap();
    }
    stop.store(true, Ordering::Release);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    assert_eq!(view.refresh().unwrap().next_offset, 300);
    view.close().await.unwrap();
    log.close().await.unwrap();
}

/// Tails refreshing one view at once never step its watermark back: each look is published
/// before the next one starts, so an older look cannot land after a newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_at_once_never_step_the_watermark_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), damage_opts()).await.unwrap();
    let view = Log::open(dir.path(), damage_opts().with_read_only(true))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let refreshers: Vec<_> = (0..3)
        .map(|_| {
            let (view, stop) = (view.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    view.refresh().unwrap();
                }
            })
        })
        .collect();
    let watcher = std::thread::spawn({
        let (view, stop) = (view.clone(), stop.clone());
        move || {
            let (mut seen, mut back) = (0u64, 0u64);
            while !stop.load(Ordering::Acquire) {
                let now = view.watermark().next_offset;
                if now < seen {
                    back += 1;
                }
                seen = seen.max(now);
            }
            back
        }
    });
    for i in 0..2000 {
        log.append_one(payload(i, 100)).await.unwrap();
    }
    stop.store(true, Ordering::Release);
    for r in refreshers {
        r.join().unwrap();
    }
    assert_eq!(watcher.join().unwrap(), 0, "the watermark stepped back");
    assert_eq!(view.refresh().unwrap().next_offset, 2000);
    view.close().await.unwrap();
    log.close().await.unwrap();
}

/// Removes the `.log` file of the segment at `base`, as tiering's retention does (it keeps
/// the index files).
fn remove_segment(dir: &Path, base: u64) {
    std::fs::remove_file(dir.join(format!("{base:020}.log"))).unwrap();
}

/// The last sealed segment missing before an empty active segment (a tiered directory whose
/// retention left an old segment and removed the newer ones; a file removed by hand): a read
/// of its offsets is a `Gap`, and a tail there fails with it. Before, the read stopped at the
/// active segment as at the end of the log and returned nothing, and the tail (so `tidings
/// replay` without `--follow`) waited there for ever.
#[tokio::test]
async fn a_missing_last_sealed_segment_before_an_empty_active_one_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    for i in 0..30 {
        log.append_one(payload(i, 50)).await.unwrap();
        if i % 10 == 9 {
            log.roll().await.unwrap();
        }
    }
    log.close().await.unwrap();
    // Sealed segments at 0, 10 and 20; the active one at 30 is empty.
    remove_segment(dir.path(), 20);

    let view = Log::open(dir.path(), opts().with_read_only(true))
        .await
        .unwrap();
    assert_eq!(view.next_offset(), 30);
    for from in [20, 25, 29] {
        match view.read(from, 1 << 20).await {
            Err(LogError::Gap { from: f, next }) => assert_eq!((f, next), (from, 30)),
            other => panic!(
                "read at {from}: expected Gap, got {:?}",
                other.map(|r| r.len())
            ),
        }
    }
    // A read before the gap ends at it.
    assert_eq!(view.read(0, 1 << 20).await.unwrap().len(), 20);
    let mut tail = view.tail(20);
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), tail.next_batch(1 << 20));
    match first.await {
        Ok(Err(LogError::Gap { from: 20, next: 30 })) => {}
        Ok(other) => panic!("expected Gap, got {:?}", other.map(|r| r.len())),
        Err(_) => panic!("the tail waited at the gap instead of failing"),
    }
    view.close().await.unwrap();
}

/// A refresh that finds one segment removed (tiering's retention deleted the oldest local
/// copy) and one rolled since the last look publishes the new segment list. Before, the list
/// was replaced only when the count changed: the view kept the old list, without the new
/// active segment its watermark named, and read nothing there (its tail waited for ever).
#[tokio::test]
async fn a_refresh_after_a_removal_and_a_roll_sees_the_new_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    for i in 0..30 {
        log.append_one(payload(i, 50)).await.unwrap();
        if i == 9 || i == 19 {
            log.roll().await.unwrap();
        }
    }
    let view = Log::open(dir.path(), opts().with_read_only(true))
        .await
        .unwrap();
    assert_eq!(view.next_offset(), 30);
    assert_eq!(view.start_offset(), 0);
    log.roll().await.unwrap();
    for i in 30..40 {
        log.append_one(payload(i, 50)).await.unwrap();
    }
    remove_segment(dir.path(), 0);

    assert_eq!(view.refresh().unwrap().next_offset, 40);
    assert_eq!(view.start_offset(), 10);
    let records = view.read(30, 1 << 20).await.unwrap();
    assert_eq!(records.first().map(|r| r.offset), Some(30));
    let all = read_all(&view, 10).await;
    assert_eq!(
        all.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
        (10..40).map(|i| payload(i, 50)).collect::<Vec<_>>()
    );
    // A removal alone (the same active segment): the view's start moves too.
    remove_segment(dir.path(), 10);
    view.refresh().unwrap();
    assert_eq!(view.start_offset(), 20);
    view.close().await.unwrap();
    log.close().await.unwrap();
}
