//! Acknowledgements of large batches go through the acknowledger task (`log/src/acks.rs`):
//! all of them arrive before `close` returns, a failed batch fails every append in it, the
//! queue permits come back through it, and a log that outlives the runtime that opened it
//! still acknowledges (inline). A log opened in a current-thread runtime acknowledges inline
//! and works when used from another runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{payload, sim_dir, small_opts};
use tidings_log::sim::SimFs;
use tidings_log::{Log, LogError, LogOptions, PendingAppend};

/// Enqueues `n` one-record appends from one task without waiting, so the writer finds many
/// queued at once and writes them in batches far larger than the inline limit.
async fn enqueue_many(log: &Log, first: u64, n: u64) -> Vec<PendingAppend> {
    let mut pending = Vec::new();
    for i in first..first + n {
        pending.push(log.enqueue(vec![payload(i, 60)]).await.unwrap());
    }
    pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledgement_arrives_before_close_returns() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).await.unwrap();
    let mut pending = enqueue_many(&log, 0, 2_000).await;
    // (On this project's disk they go in batches of dozens, through the acknowledger; on a disk
    // that syncs for free they may go one by one, inline. Either way:)
    log.close().await.unwrap();
    for (i, p) in pending.iter_mut().enumerate() {
        match p.try_wait() {
            Some(Ok(ack)) => assert_eq!(ack.base_offset, i as u64),
            other => panic!("append {i} after close: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_permits_come_back_through_the_acknowledger() {
    let dir = tempfile::tempdir().unwrap();
    // 16 KiB may be queued at once; 8 MiB go through, in batches the acknowledger answers.
    let opts = LogOptions::default()
        .with_max_queued_bytes(16 << 10)
        .with_max_append_bytes(4 << 10);
    let log = Log::open(dir.path(), opts).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..32u64 {
        let log = log.clone();
        tasks.spawn(async move {
            for i in 0..1_000u64 {
                log.append_one(payload(t * 10_000 + i, 250)).await.unwrap();
            }
        });
    }
    let all = async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("appends stalled: queue permits were not given back");
    assert_eq!(log.next_offset(), 32_000);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_fails_every_append_of_a_large_batch() {
    let fs = SimFs::new();
    let log = Log::open(sim_dir(), small_opts(&fs).with_segment_bytes(1 << 20))
        .await
        .unwrap();
    log.append_one(payload(0, 10)).await.unwrap();
    fs.fail_sync_after(1);
    // Appends queued before the failure fail with it; those after it are refused at once.
    let mut pending = Vec::new();
    let mut failed = 0;
    for i in 1..=500 {
        match log.enqueue(vec![payload(i, 60)]).await {
            Ok(p) => pending.push(p),
            Err(LogError::Poisoned { .. }) => failed += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    for p in pending {
        match p.wait().await {
            Err(LogError::Poisoned { .. }) => failed += 1,
            Ok(ack) => panic!(
                "offset {} acknowledged after a failed sync",
                ack.base_offset
            ),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(failed, 500);
    assert_eq!(log.next_offset(), 1, "nothing past the failure is readable");
    log.close().await.unwrap();
}

fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Enqueues `n` appends from offset `first` on and checks that each is acknowledged with its
/// offset within 30 s (`lost` says what a missing acknowledgement would mean).
async fn all_acknowledged(log: &Log, first: u64, n: u64, lost: &str) {
    for (i, p) in enqueue_many(log, first, n).await.into_iter().enumerate() {
        let ack = tokio::time::timeout(Duration::from_secs(30), p.wait())
            .await
            .expect(lost)
            .unwrap();
        assert_eq!(ack.base_offset, first + i as u64);
    }
}

#[test]
fn a_log_that_outlives_the_runtime_that_opened_it_still_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let first = multi_thread_runtime();
    let log = first.block_on(async {
        let log = Log::open(dir.path(), LogOptions::default()).await.unwrap();
        all_acknowledged(&log, 0, 500, "acknowledgement missing").await;
        log
    });
    // The acknowledger task dies with its runtime; the writer thread does not.
    drop(first);
    multi_thread_runtime().block_on(async {
        all_acknowledged(
            &log,
            500,
            500,
            "an acknowledgement was lost with the old runtime",
        )
        .await;
        log.close().await.unwrap();
    });
}

#[test]
fn a_log_opened_in_a_current_thread_runtime_works_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let opener = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = opener
        .block_on(Log::open(dir.path(), LogOptions::default()))
        .unwrap();
    // `opener` is never driven again: nothing of the log may depend on it.
    multi_thread_runtime().block_on(async {
        all_acknowledged(
            &log,
            0,
            500,
            "an acknowledgement waits for a runtime nobody drives",
        )
        .await;
        log.close().await.unwrap();
    });
    drop(opener);
}
