//! Read-only views: follow a log another handle is writing, across rolls, without a lock and
//! without changing a byte on disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{payload, read_all, segment_files};
use tidings_log::{Log, LogError, LogOptions};

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
