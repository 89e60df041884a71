//! Many appenders at once: every acknowledged offset is unique and dense, and reads back with
//! the exact bytes; a tail running alongside sees every record once, in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::payload;
use tidings_log::{Log, LogOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_unique_dense_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogOptions::default()
            .with_segment_bytes(256 << 10)
            .with_max_batch_bytes(16 << 10),
    )
    .await
    .unwrap();
    let tail_log = log.clone();
    let tail = tokio::spawn(async move {
        let mut tail = tail_log.tail(0);
        let mut seen = Vec::new();
        while seen.len() < 64 * 150 + 64 * 10 * 3 {
            for r in tail.next_batch(1 << 20).await.unwrap() {
                seen.push(r.offset);
            }
        }
        seen
    });
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64u64 {
        let log = log.clone();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            for i in 0..150u64 {
                let p = payload(t * 100_000 + i, 10 + ((t + i) % 200) as usize);
                mine.push((log.append_one(p.clone()).await.unwrap(), p));
            }
            for i in 0..10u64 {
                let recs: Vec<Bytes> = (0..3)
                    .map(|j| payload(t * 100_000 + 50_000 + i * 3 + j, 33))
                    .collect();
                let ack = log.append(recs.clone()).await.unwrap();
                for (k, p) in recs.into_iter().enumerate() {
                    mine.push((ack.base_offset + k as u64, p));
                }
            }
            mine
        });
    }
    let mut all = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        for (off, p) in r.unwrap() {
            assert!(
                all.insert(off, p).is_none(),
                "offset {off} acknowledged twice"
            );
        }
    }
    let n = all.len() as u64;
    assert_eq!(n, 64 * 150 + 64 * 30);
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>(),
        "offsets are dense"
    );
    assert_eq!(log.next_offset(), n);
    let batches = log.metrics().batches;
    assert!(
        batches < n,
        "group commit put several appends in one batch ({batches} batches for {n} records)"
    );

    let mut at = 0;
    while at < n {
        for r in log.read(at, 256 << 10).await.unwrap() {
            assert_eq!(r.offset, at);
            assert_eq!(r.payload, all[&at], "offset {at} read back different bytes");
            at += 1;
        }
    }
    assert_eq!(tail.await.unwrap(), (0..n).collect::<Vec<_>>());
    log.close().await.unwrap();
}
