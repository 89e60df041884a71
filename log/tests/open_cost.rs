//! Opening reads only the active segment's indexes and tail: the bytes read on open do not
//! grow with the log's size.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::payload;
use tidings_log::sim::CountingFs;
use tidings_log::{Log, LogOptions, StdFs};

async fn bytes_read_on_open(records: u64) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    // Preallocated segments too: a clean close leaves no zeros for the next open to read.
    let o = LogOptions::default()
        .with_segment_bytes(64 << 10)
        .with_index_interval_bytes(4096)
        .with_preallocate_bytes(64 << 10);
    let log = Log::open(dir.path(), o.clone()).await.unwrap();
    let batch: Vec<_> = (0..20).map(|i| payload(i, 200)).collect();
    for _ in 0..records / 20 {
        log.append(batch.clone()).await.unwrap();
    }
    let size: u64 = log.segments().unwrap().iter().map(|s| s.bytes).sum();
    log.close().await.unwrap();

    let counting = CountingFs::new(Arc::new(StdFs));
    let log = Log::open(dir.path(), o.with_vfs(Arc::new(counting.clone())))
        .await
        .unwrap();
    let read = counting.bytes_read();
    assert_eq!(log.next_offset(), records);
    log.close().await.unwrap();
    (size, read)
}

#[tokio::test]
async fn bytes_read_on_open_do_not_grow_with_the_log() {
    let (small_size, small_read) = bytes_read_on_open(2_000).await;
    let (big_size, big_read) = bytes_read_on_open(40_000).await;
    assert!(big_size > 15 * small_size, "{big_size} vs {small_size}");
    // Bounded by one segment's index plus one index interval and one batch, whatever the size.
    let bound = (64 << 10) / 4096 * 24 + 4096 + 5 * 1024;
    assert!(
        small_read <= bound && big_read <= bound,
        "read {small_read} / {big_read} bytes, bound {bound}"
    );
    assert!(
        big_read <= small_read + 4096 + 5 * 1024,
        "open cost grew: {small_read} -> {big_read}"
    );
}

/// A sealed segment's index file grown far past what its segment needs (damage) is read only
/// as far as one entry per index interval: it was read whole, up to the segment's size.
#[tokio::test]
async fn a_swollen_index_file_is_read_only_as_far_as_it_can_be_valid() {
    let dir = tempfile::tempdir().unwrap();
    let o = LogOptions::default()
        .with_segment_bytes(256 << 10)
        .with_index_interval_bytes(4096);
    let log = Log::open(dir.path(), o.clone()).await.unwrap();
    let batch: Vec<_> = (0..20).map(|i| payload(i, 200)).collect();
    for _ in 0..100 {
        log.append(batch.clone()).await.unwrap();
    }
    log.roll().await.unwrap();
    log.close().await.unwrap();
    // Bytes read by an open and a read of offset 1000 (in the sealed segment).
    let cost = || async {
        let counting = CountingFs::new(Arc::new(StdFs));
        let log = Log::open(dir.path(), o.clone().with_vfs(Arc::new(counting.clone())))
            .await
            .unwrap();
        let got = log.read(1000, 4096).await.unwrap();
        assert_eq!((got[0].offset, &got[0].payload), (1000, &payload(0, 200)));
        log.close().await.unwrap();
        counting.bytes_read()
    };
    let intact = cost().await;
    let index = dir.path().join(format!("{:020}.index", 0));
    let mut bytes = std::fs::read(&index).unwrap();
    bytes.resize(200 << 10, 0xff);
    std::fs::write(&index, bytes).unwrap();
    let swollen = cost().await;
    // At most (230 KB / 4096 + 2) × 16 ≈ 0.9 KB of the index is read, whatever its size.
    assert!(
        swollen <= intact + 1024,
        "read {intact} bytes, then {swollen}"
    );
}
