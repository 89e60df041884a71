//! Basic behaviour on the real file system: appends get dense offsets, reads return exactly
//! what was appended across rolls and reopens, limits are enforced, the directory is locked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{payload, read_all, segment_files};
use tidings_log::{FsyncPolicy, Log, LogError, LogOptions};

fn opts() -> LogOptions {
    LogOptions::default()
        .with_segment_bytes(8 << 10)
        .with_index_interval_bytes(512)
}

#[tokio::test]
async fn offsets_are_dense_from_zero_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    assert_eq!(log.next_offset(), 0);
    let mut expected = Vec::new();
    for i in 0..300u64 {
        let n = (i % 3 + 1) as usize;
        let recs: Vec<Bytes> = (0..n)
            .map(|j| payload(i * 10 + j as u64, 50 + (i as usize % 90)))
            .collect();
        let ack = log.append(recs.clone()).await.unwrap();
        assert_eq!(ack.base_offset, expected.len() as u64);
        assert_eq!(ack.count as usize, n);
        expected.extend(recs);
    }
    assert!(
        segment_files(dir.path()).len() > 3,
        "small segments must have rolled"
    );
    let got = read_all(&log, 0).await;
    assert_eq!(
        got.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
        expected
    );
    log.close().await.unwrap();
    log.close().await.unwrap(); // idempotent

    let log = Log::open(dir.path(), opts()).await.unwrap();
    assert_eq!(log.next_offset(), expected.len() as u64);
    let got = read_all(&log, 0).await;
    assert_eq!(
        got.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
        expected
    );
    // Reads from every offset start exactly there.
    for from in (0..expected.len() as u64).step_by(7) {
        let recs = log.read(from, 1).await.unwrap();
        assert_eq!(recs[0].offset, from);
        assert_eq!(recs[0].payload, expected[from as usize]);
    }
    let next = log
        .append_one(Bytes::from_static(b"after reopen"))
        .await
        .unwrap();
    assert_eq!(next, expected.len() as u64);
    log.close().await.unwrap();
}

#[tokio::test]
async fn read_respects_bounds_and_budget() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    for i in 0..20 {
        log.append_one(payload(i, 100)).await.unwrap();
    }
    // At the watermark: nothing. Past it: an error naming the range.
    assert!(log.read(20, 1000).await.unwrap().is_empty());
    match log.read(21, 1000).await {
        Err(LogError::OffsetOutOfRange {
            requested: 21,
            start: 0,
            end: 20,
        }) => {}
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    // A budget smaller than one record still returns one record.
    assert_eq!(log.read(3, 0).await.unwrap().len(), 1);
    // A budget of 350 bytes returns 3 records of 100.
    assert_eq!(log.read(3, 350).await.unwrap().len(), 3);
    log.close().await.unwrap();
}

#[tokio::test]
async fn limits_are_enforced_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        opts()
            .with_max_append_bytes(4096)
            .with_max_queued_bytes(1 << 20),
    )
    .await
    .unwrap();
    assert!(matches!(
        log.append(vec![]).await,
        Err(LogError::EmptyAppend)
    ));
    match log.append(vec![Bytes::from(vec![0u8; 5000])]).await {
        Err(LogError::AppendTooLarge { max: 4096, .. }) => {}
        other => panic!("expected AppendTooLarge, got {other:?}"),
    }
    // Nothing was written by the refused appends.
    assert_eq!(log.next_offset(), 0);
    log.close().await.unwrap();
    assert!(matches!(
        log.append_one(Bytes::new()).await,
        Err(LogError::Closed)
    ));

    let bad = LogOptions::default().with_segment_bytes(10);
    assert!(matches!(
        Log::open(dir.path(), bad).await,
        Err(LogError::InvalidOptions(_))
    ));
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    match Log::open(dir.path(), opts()).await {
        Err(LogError::Locked { .. }) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
    // Also once its `LOCK` file is deleted (a "stale lock" cleanup): the directory itself is
    // locked too (before, the second open created a new `LOCK`, and two writers shared the log).
    std::fs::remove_file(dir.path().join("LOCK")).unwrap();
    match Log::open(dir.path(), opts()).await {
        Err(LogError::Locked { .. }) => {}
        other => panic!("expected Locked with the LOCK file deleted, got {other:?}"),
    }
    log.close().await.unwrap();
    // Closing releases the lock.
    let again = Log::open(dir.path(), opts()).await.unwrap();
    again.close().await.unwrap();
}

#[tokio::test]
async fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    let mut stamps = Vec::new();
    for i in 0..40u64 {
        let ack = log.append(vec![payload(i, 400)]).await.unwrap();
        stamps.push((ack.base_offset, ack.timestamp_ms));
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    assert!(segment_files(dir.path()).len() > 1);
    for &(offset, ts) in &stamps {
        let first_with_ts = stamps.iter().find(|(_, t)| *t >= ts).unwrap().0;
        assert_eq!(
            log.offset_for_timestamp(ts).unwrap(),
            Some(first_with_ts),
            "ts {ts} (offset {offset})"
        );
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    let last_ts = stamps.last().unwrap().1;
    assert_eq!(log.offset_for_timestamp(last_ts + 1).unwrap(), None);
    log.close().await.unwrap();
}

/// `Tail::next` hands out every record, one at a time, empty ones too: it took the last of
/// what a read of 0 bytes returns (the first record and every empty one after it) and moved
/// past the others (found by a review, 2026-12-03).
#[tokio::test]
async fn tail_next_hands_out_empty_records_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    let payloads = [
        Bytes::from_static(b"a"),
        Bytes::new(),
        Bytes::new(),
        Bytes::from_static(b"b"),
    ];
    for p in &payloads {
        log.append_one(p.clone()).await.unwrap();
    }
    let mut tail = log.tail(0);
    for (i, p) in payloads.iter().enumerate() {
        let r = tail.next().await.unwrap();
        assert_eq!((r.offset, &r.payload), (i as u64, p));
    }
    log.close().await.unwrap();
}

#[tokio::test]
async fn tail_waits_for_new_records_and_ends_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    log.append_one(payload(0, 10)).await.unwrap();
    let mut tail = log.tail(0);
    assert_eq!(tail.next().await.unwrap().offset, 0);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 50 {
            for r in tail.next_batch(1 << 20).await.unwrap() {
                got.push(r.offset);
            }
        }
        let end = tail.next().await;
        (got, end)
    });
    for i in 1..=50 {
        log.append_one(payload(i, 10)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.close().await.unwrap();
    let (got, end) = reader.await.unwrap();
    assert_eq!(got, (1..=50).collect::<Vec<_>>());
    assert!(
        matches!(end, Err(LogError::Closed)),
        "tail ends on close: {end:?}"
    );
}

#[tokio::test]
async fn age_rolls_and_explicit_rolls_seal_segments() {
    let dir = tempfile::tempdir().unwrap();
    let o = LogOptions::default().with_segment_max_age(Some(Duration::from_millis(30)));
    let log = Log::open(dir.path(), o).await.unwrap();
    log.append_one(payload(0, 10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.append_one(payload(1, 10)).await.unwrap();
    let segs = log.segments().unwrap();
    assert_eq!(
        segs.len(),
        2,
        "the age limit rolled before the second append: {segs:?}"
    );
    assert!(segs[0].sealed && !segs[1].sealed);
    assert_eq!((segs[0].base_offset, segs[0].end_offset), (0, 1));
    log.roll().await.unwrap();
    log.roll().await.unwrap(); // rolling an empty segment does nothing
    assert_eq!(log.segments().unwrap().len(), 3);
    for s in log.segments().unwrap() {
        log.check_segment(s.base_offset).unwrap();
    }
    log.close().await.unwrap();
}

#[tokio::test]
async fn every_and_never_policies_acknowledge_and_sync_later() {
    for policy in [
        FsyncPolicy::Every(Duration::from_millis(5)),
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), opts().with_fsync(policy))
            .await
            .unwrap();
        for i in 0..100 {
            log.append_one(payload(i, 64)).await.unwrap();
        }
        let before = log.metrics().fsyncs;
        assert!(before < 100, "{policy}: no fsync per append ({before})");
        tokio::time::sleep(Duration::from_millis(30)).await;
        if matches!(policy, FsyncPolicy::Every(_)) {
            assert!(log.metrics().fsyncs > before, "{policy}: the timer synced");
        }
        log.sync().await.unwrap();
        log.close().await.unwrap();
        let log = Log::open(dir.path(), opts()).await.unwrap();
        assert_eq!(read_all(&log, 0).await.len(), 100);
        log.close().await.unwrap();
    }
}

/// A log tells whether its last open ran under `every`/`never` (so a power cut may have taken
/// acknowledged records, whose offsets later records then take): the server keeps no
/// conversation list computed from that run's state. Read before this open records its own
/// policy, which the server checked alone before (a run under `never` cut by a power loss,
/// restarted under `always`, reused lists fingerprinted by offsets the cut took).
#[tokio::test]
async fn a_log_tells_whether_its_last_open_wrote_unsynced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let open = |fsync: FsyncPolicy| Log::open(path.clone(), opts().with_fsync(fsync));
    let log = open(FsyncPolicy::Always).await.unwrap();
    assert!(!log.opened_after_unsynced_writes(), "a new log");
    log.append_one(payload(0, 10)).await.unwrap();
    log.close().await.unwrap();
    for (next, (last, now, after_unsynced)) in (1..).zip([
        (FsyncPolicy::Always, FsyncPolicy::Never, false),
        (FsyncPolicy::Never, FsyncPolicy::Always, true),
        (FsyncPolicy::Always, FsyncPolicy::Always, false),
        (
            FsyncPolicy::Always,
            FsyncPolicy::Every(Duration::from_millis(5)),
            false,
        ),
        (
            FsyncPolicy::Every(Duration::from_millis(5)),
            FsyncPolicy::Never,
            true,
        ),
        (FsyncPolicy::Never, FsyncPolicy::Never, true),
        (FsyncPolicy::Never, FsyncPolicy::Always, true),
        (FsyncPolicy::Always, FsyncPolicy::Always, false),
    ]) {
        let log = open(now).await.unwrap();
        assert_eq!(
            log.opened_after_unsynced_writes(),
            after_unsynced,
            "opened under {now} after {last}"
        );
        log.append_one(payload(next, 10)).await.unwrap();
        log.close().await.unwrap();
    }
    // A read-only view tells it of the last writable open.
    let view = Log::open(&path, opts().with_read_only(true)).await.unwrap();
    assert!(!view.opened_after_unsynced_writes());
    view.close().await.unwrap();
    let log = open(FsyncPolicy::Never).await.unwrap();
    log.close().await.unwrap();
    let view = Log::open(&path, opts().with_read_only(true)).await.unwrap();
    assert!(view.opened_after_unsynced_writes());
    view.close().await.unwrap();
}

#[test]
fn fsync_policy_parses() {
    assert_eq!(
        "always".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Always
    );
    assert_eq!("never".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::Never);
    assert_eq!(
        "every(250)".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Every(Duration::from_millis(250))
    );
    assert_eq!(
        "every_ms(5)".parse::<FsyncPolicy>().unwrap(),
        FsyncPolicy::Every(Duration::from_millis(5))
    );
    assert!("every(0)".parse::<FsyncPolicy>().is_err());
    assert!("sometimes".parse::<FsyncPolicy>().is_err());
}

/// A segment missing between two others (a tiered log's directory read without its store, a
/// file removed by hand): a read at its offsets says so with `Gap`, and a read before it stops
/// at it. Before, the read returned the next segment's records as if the missing offsets had
/// never existed (a `replay` skipped them without a word).
#[tokio::test]
async fn a_missing_middle_segment_is_a_gap_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    for i in 0..400u64 {
        log.append_one(payload(i, 60)).await.unwrap();
    }
    log.close().await.unwrap();
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 4, "{segs:?}");
    let base =
        |p: &std::path::Path| -> u64 { p.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
    let (gone, next) = (base(&segs[1]), base(&segs[2]));
    for ext in ["log", "index", "timeindex"] {
        std::fs::remove_file(segs[1].with_extension(ext)).unwrap();
    }

    let log = Log::open(dir.path(), opts()).await.unwrap();
    for from in [gone, gone + 1, next - 1] {
        match log.read(from, 1 << 20).await {
            Err(LogError::Gap { from: f, next: n }) => assert_eq!((f, n), (from, next)),
            other => panic!(
                "read at {from}: expected Gap, got {:?}",
                other.map(|r| r.len())
            ),
        }
    }
    // A read before the gap ends at it.
    let before = log.read(0, 1 << 20).await.unwrap();
    assert_eq!(before.last().unwrap().offset, gone - 1);
    assert_eq!(before.len() as u64, gone);
    // After it, reads go on as usual.
    let after = log.read(next, 1 << 20).await.unwrap();
    assert_eq!(after.first().unwrap().offset, next);
    log.close().await.unwrap();
}

/// The batches of a segment file as (position, length).
fn batches_of(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 40 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
        if len < 40 || pos + len > bytes.len() {
            break;
        }
        out.push((pos, len));
        pos += len;
    }
    out
}

#[tokio::test]
async fn timestamps_do_not_go_back_when_the_active_segment_starts_empty() {
    // A roll just before a stop leaves an empty active segment; the clock then steps back
    // (here: the previous segment's last batch is stamped an hour ahead). The next append is
    // stamped no earlier than that batch: timestamps never decrease along the log. It was
    // stamped by the clock alone.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).await.unwrap();
    for i in 0..200u64 {
        log.append_one(payload(i, 100)).await.unwrap();
    }
    let next = log.next_offset();
    log.close().await.unwrap();
    let files = segment_files(dir.path());
    assert!(files.len() >= 2);
    let last = files.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    let (pos, len) = *batches_of(&bytes).last().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ahead = now + 3_600_000;
    bytes[pos + 32..pos + 40].copy_from_slice(&ahead.to_le_bytes());
    let crc = crc32fast::hash(&bytes[pos + 8..pos + len]);
    bytes[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(last, &bytes).unwrap();
    // The roll's new segment, created before the stop.
    std::fs::write(dir.path().join(format!("{next:020}.log")), b"").unwrap();

    let log = Log::open(dir.path(), opts()).await.unwrap();
    assert_eq!(log.next_offset(), next);
    assert_eq!(log.append_one(payload(999, 100)).await.unwrap(), next);
    let got = log.read(next - 1, 1 << 20).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].timestamp_ms, ahead);
    assert!(
        got[1].timestamp_ms >= ahead,
        "{} < {ahead}: the log's time went back",
        got[1].timestamp_ms
    );
    log.close().await.unwrap();
}
