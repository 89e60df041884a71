//! Counters kept by the writer, read by anyone.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) appends: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    pub(crate) fsync_nanos: AtomicU64,
    pub(crate) rolls: AtomicU64,
}

/// A snapshot of the log's counters since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogMetrics {
    /// Append calls acknowledged or failed by the writer.
    pub appends: u64,
    /// Records written.
    pub records: u64,
    /// Batches written (one `write` each).
    pub batches: u64,
    /// Bytes written to segments, framing included.
    pub bytes: u64,
    /// `fdatasync` calls on segments.
    pub fsyncs: u64,
    /// Total time spent in those calls, in nanoseconds.
    pub fsync_nanos: u64,
    /// Segment rolls.
    pub rolls: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> LogMetrics {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LogMetrics {
            appends: l(&self.appends),
            records: l(&self.records),
            batches: l(&self.batches),
            bytes: l(&self.bytes),
            fsyncs: l(&self.fsyncs),
            fsync_nanos: l(&self.fsync_nanos),
            rolls: l(&self.rolls),
        }
    }
}
