//! The log's threads end with it: after `close`, and after the last handle is dropped without
//! one, neither the writer nor the preallocation thread is left, and the directory is unlocked
//! only then. (A test binary of its own: it counts the process's threads.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::payload;
use tidings_log::{Log, LogOptions};

/// Names of this process's threads starting with `tidings-log` (as the kernel keeps them: at
/// most 15 bytes).
fn log_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| n.starts_with("tidings-log"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_or_dropping_a_log_ends_its_threads() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions::default()
        .with_segment_bytes(1 << 20)
        .with_preallocate_bytes(1 << 20);
    let spare = dir.path().join("next-segment.zeros");

    let log = Log::open(dir.path(), opts.clone()).await.unwrap();
    log.append_one(payload(0, 100)).await.unwrap();
    // A new thread names itself once it runs: on a busy machine, a moment after the spawn.
    let mut named = log_threads();
    for _ in 0..500 {
        if named.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        named = log_threads();
    }
    assert_eq!(named, ["tidings-log-pre", "tidings-log-wri"]);
    log.close().await.unwrap();
    // A joined thread leaves /proc/self/task a moment after the join returns.
    wait_until_no_log_threads().await;
    assert!(!spare.exists());

    // Dropped without close: the writer finishes in the background, and until it has, the
    // directory stays locked.
    let log = Log::open(dir.path(), opts.clone()).await.unwrap();
    log.append_one(payload(1, 100)).await.unwrap();
    drop(log);
    let mut reopened = None;
    for _ in 0..500 {
        if log_threads().is_empty() {
            reopened = Some(Log::open(dir.path(), opts.clone()).await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = reopened.expect("the dropped log's threads ended");
    assert_eq!(log.next_offset(), 2);
    log.close().await.unwrap();
    wait_until_no_log_threads().await;
}

async fn wait_until_no_log_threads() {
    for _ in 0..200 {
        if log_threads().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("threads left: {:?}", log_threads());
}
