//! Damage inside sealed segments: a flipped bit is reported as a typed error that names the
//! file, byte position and offset; nothing from the damaged batch is returned; other segments
//! still read; a damaged index is rebuilt rather than trusted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{payload, read_all, segment_files};
use tidings_log::{CorruptKind, Log, LogError, LogOptions};

fn opts() -> LogOptions {
    LogOptions::default()
        .with_segment_bytes(4096)
        .with_index_interval_bytes(256)
}

async fn build(dir: &std::path::Path, n: u64) -> Vec<Bytes> {
    let log = Log::open(dir, opts()).await.unwrap();
    let mut v = Vec::new();
    for i in 0..n {
        let p = payload(i, 90);
        log.append_one(p.clone()).await.unwrap();
        v.push(p);
    }
    log.close().await.unwrap();
    v
}

#[tokio::test]
async fn a_bit_flip_in_a_sealed_segment_is_named_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = build(dir.path(), 200).await;
    let files = segment_files(dir.path());
    assert!(files.len() >= 4);
    // Flip one bit in the middle of the second segment.
    let victim = &files[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let flip_at = bytes.len() / 2;
    bytes[flip_at] ^= 0x01;
    std::fs::write(victim, &bytes).unwrap();

    let log = Log::open(dir.path(), opts()).await.unwrap();
    let segs = log.segments().unwrap();
    let (base, end) = (segs[1].base_offset, segs[1].end_offset);

    // Reading through the damaged segment fails with the file, position and offset named.
    let mut next = base;
    let err = loop {
        match log.read(next, 1 << 20).await {
            Ok(recs) => {
                for r in &recs {
                    assert_eq!(
                        r.payload, payloads[r.offset as usize],
                        "served bytes must be intact"
                    );
                }
                next = recs.last().unwrap().offset + 1;
                assert!(next < end, "the damaged batch was served");
            }
            Err(e) => break e,
        }
    };
    match &err {
        LogError::Corrupt {
            path,
            position,
            expected_offset,
            kind,
        } => {
            assert_eq!(path, victim);
            assert!(
                *position <= flip_at as u64,
                "damage at {flip_at}, reported batch at {position}"
            );
            assert!((base..end).contains(expected_offset));
            assert!(matches!(
                kind,
                CorruptKind::ChecksumMismatch { .. }
                    | CorruptKind::BadLength { .. }
                    | CorruptKind::MagicMismatch { .. }
            ));
            let msg = err.to_string();
            assert!(
                msg.contains(&victim.display().to_string())
                    && msg.contains(&format!("offset {expected_offset}")),
                "{msg}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Asking for the damaged offset directly fails the same way.
    let LogError::Corrupt {
        expected_offset, ..
    } = err
    else {
        unreachable!()
    };
    assert!(matches!(
        log.read(expected_offset, 10).await,
        Err(LogError::Corrupt { .. })
    ));
    assert!(matches!(
        log.check_segment(base),
        Err(LogError::Corrupt { .. })
    ));

    // Every other segment still reads, byte for byte.
    for s in segs.iter().filter(|s| s.base_offset != base) {
        let mut at = s.base_offset;
        while at < s.end_offset {
            for r in log.read(at, 1 << 20).await.unwrap() {
                if r.offset >= s.end_offset {
                    break;
                }
                assert_eq!(r.payload, payloads[r.offset as usize]);
                at = r.offset + 1;
            }
        }
        log.check_segment(s.base_offset).unwrap();
    }
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_damaged_sealed_index_is_rebuilt_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = build(dir.path(), 120).await;
    let files = segment_files(dir.path());
    let index = files[0].with_extension("index");
    let mut bytes = std::fs::read(&index).unwrap();
    assert!(bytes.len() >= 16, "the first segment has index entries");
    // Point an entry at a wrong (but plausible, monotonic) position.
    let pos = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    bytes[4..8].copy_from_slice(&(pos + 3).to_le_bytes());
    std::fs::write(&index, &bytes).unwrap();

    let log = Log::open(dir.path(), opts()).await.unwrap();
    // Point reads at every offset go through the index, including the damaged entry.
    for (i, p) in payloads.iter().enumerate() {
        assert_eq!(
            &log.read(i as u64, 1).await.unwrap()[0].payload,
            p,
            "offset {i}"
        );
    }
    let got: Vec<Bytes> = read_all(&log, 0)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(got, payloads);
    log.close().await.unwrap();
}

/// A log of 120 records appended over some milliseconds (a pause of 3 ms every `every`), so
/// that the segments' batches differ in time; returns the first segment's time index path.
async fn stamped_apart(dir: &Path, every: u64) -> PathBuf {
    let log = Log::open(dir, opts()).await.unwrap();
    for i in 0..120 {
        log.append_one(payload(i, 90)).await.unwrap();
        if i % every == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
    }
    log.close().await.unwrap();
    segment_files(dir)[0].with_extension("timeindex")
}

/// Every lookup by time (each record's stamp, and one past it) answers the first offset
/// stamped at or after it.
async fn lookups_by_time_answer_right(dir: &Path) {
    let log = Log::open(dir, opts()).await.unwrap();
    let records = read_all(&log, 0).await;
    let mut stamps: Vec<u64> = records.iter().map(|r| r.timestamp_ms).collect();
    stamps.dedup();
    for ts in stamps.iter().flat_map(|&t| [t, t + 1]) {
        let want = records
            .iter()
            .find(|r| r.timestamp_ms >= ts)
            .map(|r| r.offset);
        assert_eq!(log.offset_for_timestamp(ts).unwrap(), want, "ts {ts}");
    }
    log.close().await.unwrap();
}

/// A time index entry moved off its batch (still monotonic and inside the data) is rebuilt
/// when a lookup by time meets it, as an offset index entry is when a read does: every lookup
/// in its range failed with a corruption error before (and the retention by age with it).
#[tokio::test]
async fn a_damaged_sealed_time_index_is_rebuilt_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let time = stamped_apart(dir.path(), 10).await;
    let mut bad = std::fs::read(&time).unwrap();
    assert!(bad.len() >= 32, "the first segment has time entries");
    let pos = u32::from_le_bytes(bad[16 + 12..16 + 16].try_into().unwrap());
    bad[16 + 12..16 + 16].copy_from_slice(&(pos + 3).to_le_bytes());
    std::fs::write(&time, &bad).unwrap();
    lookups_by_time_answer_right(dir.path()).await;
}

/// A time index entry whose timestamp was damaged to an earlier one that keeps the entries in
/// order is found out when a lookup starts from it (its batch is stamped otherwise) and the
/// index rebuilt. Trusted, a lookup starting there skipped the batches before it stamped at or
/// after the time asked, and answered a later offset without a word (found by a review).
#[tokio::test]
async fn a_time_entry_stamped_too_early_is_found_out() {
    let dir = tempfile::tempdir().unwrap();
    let time = stamped_apart(dir.path(), 5).await;
    let mut bad = std::fs::read(&time).unwrap();
    assert!(bad.len() >= 48, "the first segment has time entries");
    // Every entry stamped as the first one: still in order.
    let first: [u8; 8] = bad[0..8].try_into().unwrap();
    let mut changed = false;
    for entry in bad.chunks_exact_mut(16).skip(1) {
        changed |= entry[0..8] != first;
        entry[0..8].copy_from_slice(&first);
    }
    assert!(changed, "the entries were stamped apart");
    std::fs::write(&time, &bad).unwrap();
    lookups_by_time_answer_right(dir.path()).await;
}

#[tokio::test]
async fn a_missing_sealed_index_falls_back_to_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = build(dir.path(), 120).await;
    for f in segment_files(dir.path()) {
        let _ = std::fs::remove_file(f.with_extension("index"));
        let _ = std::fs::remove_file(f.with_extension("timeindex"));
    }
    let log = Log::open(dir.path(), opts()).await.unwrap();
    let got: Vec<Bytes> = read_all(&log, 0)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(got, payloads);
    for (i, p) in payloads.iter().enumerate().step_by(11) {
        assert_eq!(&log.read(i as u64, 1).await.unwrap()[0].payload, p);
    }
    log.close().await.unwrap();
}

#[tokio::test]
async fn an_active_index_entry_pointing_at_no_batch_is_rewritten_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = build(dir.path(), 120).await;
    let files = segment_files(dir.path());
    let index = files.last().unwrap().with_extension("index");
    let good = std::fs::read(&index).unwrap();
    assert!(good.len() >= 16, "the active segment has index entries");
    // The last entry moved off its batch (still monotonic and inside the data): the open
    // drops it, scans from the one before and derives it again at its true position — an
    // index file of the same length, which must not keep the stale entry.
    let mut bad = good.clone();
    let at = good.len() - 8 + 4;
    let pos = u32::from_le_bytes(bad[at..at + 4].try_into().unwrap());
    bad[at..at + 4].copy_from_slice(&(pos + 3).to_le_bytes());
    std::fs::write(&index, &bad).unwrap();

    let log = Log::open(dir.path(), opts()).await.unwrap();
    assert_eq!(
        std::fs::read(&index).unwrap(),
        good,
        "the index file holds the re-derived entry"
    );
    let got: Vec<Bytes> = read_all(&log, 0)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(got, payloads);
    log.close().await.unwrap();
}
