//! Counters kept by the writer, read by anyone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the `fdatasync` latency buckets, in microseconds. A healthy disk syncs in
/// well under a millisecond; the upper buckets are where a stalling disk shows.
pub const FSYNC_BUCKETS_MICROS: [u64; 10] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 500_000, 1_000_000,
];

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) appends: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    pub(crate) fsync_nanos: AtomicU64,
    /// `fdatasync` calls by latency bucket (not cumulative; the last counts the slower ones).
    pub(crate) fsync_buckets: [AtomicU64; FSYNC_BUCKETS_MICROS.len() + 1],
    pub(crate) rolls: AtomicU64,
    pub(crate) segments_removed: AtomicU64,
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
    /// `fsync_le[i]`: calls that took at most `FSYNC_BUCKETS_MICROS[i]` (cumulative, as a
    /// Prometheus histogram; `fsyncs` is the count of all).
    pub fsync_le: [u64; FSYNC_BUCKETS_MICROS.len()],
    /// Segment rolls.
    pub rolls: u64,
    /// Sealed segments taken out of the log by [`crate::Log::remove_segments_before`]
    /// (retention without an object store; tiering's local deletions are counted by the tier).
    pub segments_removed: u64,
}

impl Counters {
    /// Counts one `fdatasync` that took `took`.
    pub(crate) fn fsynced(&self, took: Duration) {
        let us = took.as_micros();
        let i = FSYNC_BUCKETS_MICROS
            .iter()
            .position(|&b| us <= u128::from(b))
            .unwrap_or(FSYNC_BUCKETS_MICROS.len());
        self.fsync_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LogMetrics {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut fsync_le = [0; FSYNC_BUCKETS_MICROS.len()];
        let mut below = 0;
        for (le, b) in fsync_le.iter_mut().zip(&self.fsync_buckets) {
            below += l(b);
            *le = below;
        }
        LogMetrics {
            appends: l(&self.appends),
            records: l(&self.records),
            batches: l(&self.batches),
            bytes: l(&self.bytes),
            fsyncs: l(&self.fsyncs),
            fsync_nanos: l(&self.fsync_nanos),
            fsync_le,
            rolls: l(&self.rolls),
            segments_removed: l(&self.segments_removed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsyncs_land_in_cumulative_buckets() {
        let c = Counters::default();
        c.fsynced(Duration::from_micros(100));
        c.fsynced(Duration::from_micros(250));
        c.fsynced(Duration::from_micros(3_000));
        c.fsynced(Duration::from_secs(2));
        let m = c.snapshot();
        assert_eq!(m.fsyncs, 4);
        assert_eq!(m.fsync_le[0], 2, "100 µs and 250 µs are ≤ 250 µs");
        assert_eq!(m.fsync_le[3], 2, "≤ 2.5 ms");
        assert_eq!(m.fsync_le[4], 3, "≤ 5 ms");
        assert_eq!(
            m.fsync_le[FSYNC_BUCKETS_MICROS.len() - 1],
            3,
            "2 s is above every bound"
        );
        assert_eq!(m.fsync_nanos, 2_003_350_000);
    }
}
