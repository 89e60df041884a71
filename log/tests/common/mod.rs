//! Helpers shared by the log's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tidings_log::sim::SimFs;
use tidings_log::{Log, LogOptions, Record};

/// The directory simulated logs live in.
pub(crate) fn sim_dir() -> PathBuf {
    PathBuf::from("/sim/log")
}

/// Options for a simulated disk with small segments and a dense index, so that rolls and
/// index lookups happen within a few records.
pub(crate) fn small_opts(fs: &SimFs) -> LogOptions {
    LogOptions::default()
        .with_vfs(Arc::new(fs.clone()))
        .with_segment_bytes(4096)
        .with_index_interval_bytes(256)
}

/// A payload that names its own content, so any mix-up shows.
pub(crate) fn payload(tag: u64, len: usize) -> Bytes {
    let mut v = format!("rec-{tag}-").into_bytes();
    while v.len() < len {
        v.push(b'a' + (v.len() % 26) as u8);
    }
    v.truncate(len.max(1));
    Bytes::from(v)
}

/// Every record from `from` to the watermark.
pub(crate) async fn read_all(log: &Log, from: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut next = from;
    let end = log.next_offset();
    while next < end {
        let recs = log.read(next, 64 << 10).await.unwrap();
        assert!(
            !recs.is_empty(),
            "read at {next} below watermark {end} returned nothing"
        );
        for r in recs {
            assert_eq!(r.offset, next, "offsets must be dense");
            next += 1;
            out.push(r);
        }
    }
    out
}

/// Segment files in a real directory, sorted.
pub(crate) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}
