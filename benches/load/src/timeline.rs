//! Where in a phase the slow sends were: the worst latency per 100 ms of the phase (by the
//! time the frame was written), set beside what the server process and the machine did in
//! the same 100 ms (read from `/proc` as the phase runs). A p99 says how bad the tail was;
//! this says when, and whether the server was faulting memory in, the kernel reclaiming, the
//! hypervisor stealing time, or the disk taking milliseconds over an `fdatasync` while it
//! happened. Counters are read from outside the server and may read as zero when a read
//! fails, so every difference saturates: a diagnosis never panics a run.

use std::time::Duration;

use serde_json::{Value, json};

/// Width of a slot.
pub(crate) const SLOT: Duration = Duration::from_millis(100);

/// A send slower than this counts as slow.
const SLOW_US: u64 = 5_000;

/// At most this many slow slots are reported (the worst first).
const MAX_REPORTED: usize = 12;

/// Worst latency and number of slow sends per slot.
#[derive(Default)]
pub(crate) struct Slots {
    slots: Vec<(u64, u64)>,
}

impl Slots {
    /// A send written `at` into the phase took `us`.
    pub(crate) fn record(&mut self, at: Duration, us: u64) {
        let i = (at.as_millis() / SLOT.as_millis()) as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, (0, 0));
        }
        let s = &mut self.slots[i];
        s.0 = s.0.max(us);
        s.1 += u64::from(us > SLOW_US);
    }

    pub(crate) fn merge(&mut self, other: &Slots) {
        if self.slots.len() < other.slots.len() {
            self.slots.resize(other.slots.len(), (0, 0));
        }
        for (a, b) in self.slots.iter_mut().zip(&other.slots) {
            a.0 = a.0.max(b.0);
            a.1 += b.1;
        }
    }
}

/// Counters read at one moment.
#[derive(Clone, Copy, Default)]
pub(crate) struct Sample {
    /// Since the phase started.
    at: Duration,
    rss_kb: u64,
    minflt: u64,
    majflt: u64,
    /// The server's user + system CPU, in clock ticks.
    cpu_ticks: u64,
    /// The machine's steal time, in clock ticks.
    steal_ticks: u64,
    /// Pages the kernel scanned for reclaim (`pgscan_*` of `/proc/vmstat`).
    pgscan: u64,
    /// Allocations that stalled for reclaim or compaction.
    stalls: u64,
    /// The log's `fdatasync` calls, and those of them over 2.5 ms (from the server's metrics).
    fsyncs: u64,
    slow_fsyncs: u64,
    /// The fsync histogram's cumulative buckets: (bound in ms, count), up to 16.
    fsync_le: [(f64, u64); 16],
    /// Sends the server itself took over 5 ms for (its `tidings_send_seconds`), so that a
    /// slow moment can be told the server's or the generator's.
    server_slow_sends: u64,
}

impl Sample {
    /// Reads the counters of process `pid` and of the machine. Missing files read as zeros:
    /// the timeline is a diagnosis, never a reason to fail a run.
    pub(crate) fn read(pid: u32, at: Duration) -> Sample {
        let mut s = Sample {
            at,
            ..Sample::default()
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            // Fields after the name: state is field 3 (index 0), so field n is index n - 3.
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let at = |n: usize| f.get(n - 3).copied().unwrap_or(0);
            s.minflt = at(10);
            s.majflt = at(12);
            s.cpu_ticks = at(14) + at(15);
            s.rss_kb = at(24) * 4;
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/stat")
            && let Some(cpu) = stat.lines().next()
        {
            // "cpu user nice system idle iowait irq softirq steal ..."
            s.steal_ticks = cpu
                .split_whitespace()
                .nth(8)
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        }
        if let Ok(vm) = std::fs::read_to_string("/proc/vmstat") {
            for line in vm.lines() {
                let Some((k, v)) = line.split_once(' ') else {
                    continue;
                };
                let v: u64 = v.parse().unwrap_or(0);
                // kswapd + direct (pgscan_anon/_file count the same pages again).
                if k == "pgscan_kswapd" || k == "pgscan_direct" {
                    s.pgscan += v;
                } else if k.starts_with("allocstall_") || k == "compact_stall" {
                    s.stalls += v;
                }
            }
        }
        s
    }

    /// Adds the log's fsync counts and the server's slow sends from its `/metrics` text.
    pub(crate) fn with_metrics(mut self, metrics: &str) -> Sample {
        let value = |prefix: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        };
        let name = "tidings_log_fsync_duration_seconds";
        self.fsyncs = value(&format!("{name}_count "));
        let fast = value(&format!("{name}_bucket{{le=\"0.0025\"}} "));
        self.slow_fsyncs = self.fsyncs.saturating_sub(fast);
        self.server_slow_sends = value("tidings_send_seconds_count ")
            .saturating_sub(value("tidings_send_seconds_bucket{le=\"0.005\"} "));
        let prefix = format!("{name}_bucket{{le=\"");
        let buckets = metrics.lines().filter_map(|l| {
            let (le, n) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
            Some((
                le.parse::<f64>().ok()? * 1e3,
                n.trim().parse::<f64>().ok()? as u64,
            ))
        });
        for (slot, b) in self
            .fsync_le
            .iter_mut()
            .zip(buckets.filter(|b| b.0.is_finite()))
        {
            *slot = b;
        }
        self
    }

    /// The bound (ms) the slowest fsync between `self` and the later `b` was under, if any
    /// fsync ran and the histogram has a bound it was under.
    fn slowest_fsync_ms(&self, b: &Sample) -> Option<f64> {
        let total = b.fsyncs.saturating_sub(self.fsyncs);
        if total == 0 {
            return None;
        }
        self.fsync_le
            .iter()
            .zip(&b.fsync_le)
            .find(|(x, y)| y.0 > 0.0 && y.1.saturating_sub(x.1) == total)
            .map(|(_, y)| y.0)
    }
}

/// The slow slots, worst first, each with what changed over it (from the samples that
/// bracket it), and the median of the same changes over all slots for comparison.
pub(crate) fn report(slots: &Slots, samples: &[Sample]) -> Value {
    let delta = |from: Duration, to: Duration| -> Option<Value> {
        let a = samples.iter().rev().find(|s| s.at <= from)?;
        let b = samples.iter().find(|s| s.at >= to)?;
        let ms = b.at.saturating_sub(a.at).as_millis().max(1) as u64;
        Some(json!({
            "over_ms": ms,
            "rss_kb": b.rss_kb as i64 - a.rss_kb as i64,
            "minflt": b.minflt.saturating_sub(a.minflt),
            "majflt": b.majflt.saturating_sub(a.majflt),
            "cpu_ms": b.cpu_ticks.saturating_sub(a.cpu_ticks) * 10,
            "steal_ms": b.steal_ticks.saturating_sub(a.steal_ticks) * 10,
            "pgscan": b.pgscan.saturating_sub(a.pgscan),
            "stalls": b.stalls.saturating_sub(a.stalls),
            "fsyncs": b.fsyncs.saturating_sub(a.fsyncs),
            "fsyncs_over_2_5ms": b.slow_fsyncs.saturating_sub(a.slow_fsyncs),
            "slowest_fsync_under_ms": a.slowest_fsync_ms(b),
            "server_slow_sends": b.server_slow_sends.saturating_sub(a.server_slow_sends),
        }))
    };
    let mut slow: Vec<(usize, u64, u64)> = slots
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.1 > 0)
        .map(|(i, s)| (i, s.0, s.1))
        .collect();
    slow.sort_by_key(|s| std::cmp::Reverse(s.1));
    let windows: Vec<Value> = slow
        .iter()
        .take(MAX_REPORTED)
        .map(|&(i, max_us, n)| {
            let from = SLOT * i as u32;
            json!({
                "at_ms": from.as_millis() as u64,
                "max_us": max_us,
                "slow_sends": n,
                "meanwhile": delta(from, from + SLOT),
            })
        })
        .collect();
    // The typical 100 ms of the phase, to read the slow ones against.
    let mut minflt: Vec<u64> = samples
        .windows(2)
        .map(|w| w[1].minflt.saturating_sub(w[0].minflt))
        .collect();
    minflt.sort_unstable();
    let mut rss: Vec<i64> = samples
        .windows(2)
        .map(|w| w[1].rss_kb as i64 - w[0].rss_kb as i64)
        .collect();
    rss.sort_unstable();
    let slow_fsyncs = samples
        .last()
        .map_or(0, |l| l.slow_fsyncs)
        .saturating_sub(samples.first().map_or(0, |f| f.slow_fsyncs));
    json!({
        "slot_ms": SLOT.as_millis() as u64,
        "slow_slots": slow.len(),
        "fsyncs_over_2_5ms": slow_fsyncs,
        "slow_sends": slow.iter().map(|s| s.2).sum::<u64>(),
        "worst": windows,
        "median_per_slot": {
            "minflt": minflt.get(minflt.len() / 2),
            "rss_kb": rss.get(rss.len() / 2),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_slots_are_found_and_merged() {
        let mut a = Slots::default();
        a.record(Duration::from_millis(50), 900);
        a.record(Duration::from_millis(250), 7_000);
        let mut b = Slots::default();
        b.record(Duration::from_millis(260), 9_000);
        b.record(Duration::from_millis(420), 6_000);
        a.merge(&b);
        let samples: Vec<Sample> = (0..6)
            .map(|i| Sample {
                at: SLOT * i,
                minflt: u64::from(i) * 10 + if i >= 3 { 500 } else { 0 },
                ..Sample::default()
            })
            .collect();
        let r = report(&a, &samples);
        assert_eq!(r["slow_slots"], 2);
        assert_eq!(r["slow_sends"], 3);
        assert_eq!(r["worst"][0]["at_ms"], 200);
        assert_eq!(r["worst"][0]["max_us"], 9_000);
        assert_eq!(r["worst"][0]["slow_sends"], 2);
        assert_eq!(r["worst"][0]["meanwhile"]["minflt"], 510);
        assert_eq!(r["worst"][1]["at_ms"], 400);
        assert_eq!(r["median_per_slot"]["minflt"], 10);
    }

    #[test]
    fn fsync_counts_come_from_the_metrics_text() {
        let text = "tidings_log_fsync_duration_seconds_bucket{le=\"0.001\"} 90\n\
            tidings_log_fsync_duration_seconds_bucket{le=\"0.0025\"} 95\n\
            tidings_log_fsync_duration_seconds_bucket{le=\"+Inf\"} 100\n\
            tidings_log_fsync_duration_seconds_count 100\n\
            tidings_send_seconds_bucket{le=\"0.005\"} 7\n\
            tidings_send_seconds_count 9\n";
        let s = Sample::default().with_metrics(text);
        assert_eq!((s.fsyncs, s.slow_fsyncs, s.server_slow_sends), (100, 5, 2));
        let later = Sample::default().with_metrics(
            "tidings_log_fsync_duration_seconds_bucket{le=\"0.001\"} 90\n\
            tidings_log_fsync_duration_seconds_bucket{le=\"0.0025\"} 95\n\
            tidings_log_fsync_duration_seconds_count 101\n",
        );
        assert_eq!(s.slowest_fsync_ms(&later), None, "one is over every bound");
        let later = later.with_metrics(
            "tidings_log_fsync_duration_seconds_bucket{le=\"0.001\"} 90\n\
            tidings_log_fsync_duration_seconds_bucket{le=\"0.0025\"} 96\n\
            tidings_log_fsync_duration_seconds_count 101\n",
        );
        assert_eq!(s.slowest_fsync_ms(&later), Some(2.5));
    }

    #[test]
    fn this_process_can_be_read() {
        let s = Sample::read(std::process::id(), Duration::ZERO);
        assert!(s.rss_kb > 0);
        assert!(s.minflt > 0);
    }
}
