//! Messages whose log segment was deleted (the retention, or by hand) after their plan was
//! made: they have expired since. `load_retained` leaves them out and loads the others, in
//! order, where `load` (nothing expires) fails on the first; the expired floor the message
//! index gives is the last seq below the log's new start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::World;
use tidings_log::{FsyncPolicy, Log, LogError, LogOptions};
use tidings_projections::ProjectionError;
use tidings_projections::messages::{self, expired_floor};

#[tokio::test]
async fn messages_expired_since_their_plan_are_left_out() {
    let mut w = World::new().await;
    w.create("g").await;
    w.subscribe("g", &["ann", "bob"]).await;
    let mut sent = Vec::new();
    for i in 0..400 {
        sent.push(w.send("ann", "g", &format!("c{i}")).await.unwrap());
    }
    // Planned while the log starts at offset 0.
    let plan = messages::plan_range(w.state(), w.p.index_files(), "g", 1, 400).unwrap();
    assert_eq!(plan.len(), 400);

    // The first segment's files deleted, as the retention deletes them.
    w.log.close().await.unwrap();
    let dir = w.dir.path().join("log");
    let first = format!("{:020}.", 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&first))
        {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let options = LogOptions::default()
        .with_fsync(FsyncPolicy::Never)
        .with_segment_bytes(16 << 10);
    w.log = Log::open(&dir, options).await.unwrap();
    let start = w.log.start_offset();
    let retained: Vec<u64> = sent
        .iter()
        .filter(|s| s.offset >= start)
        .map(|s| s.seq)
        .collect();
    assert!(
        retained.len() > 1 && retained.len() < 400,
        "{start}: {retained:?}"
    );

    let loaded = messages::load_retained(&w.log, &plan, true).await.unwrap();
    let seqs: Vec<u64> = loaded.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, retained);
    let err = messages::load(&w.log, &plan).await.unwrap_err();
    assert!(
        matches!(err, ProjectionError::Log(LogError::OffsetOutOfRange { .. })),
        "{err}"
    );
    let floor = expired_floor(w.state(), w.p.index_files(), "g", 0, start).unwrap();
    assert_eq!(floor, retained[0] - 1);
}
