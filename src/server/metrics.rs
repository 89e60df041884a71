//! A small Prometheus registry: counters, gauges and fixed-bucket histograms on atomics, rendered
//! in the text exposition format at `/metrics`. One per server (no global recorder, so several
//! servers can run in one test process).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.add(1);
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicI64);

impl Gauge {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Appends a histogram in the text format: `le` bounds (seconds) with their cumulative counts,
/// the count of all observations (`+Inf`) and their sum in seconds.
pub(crate) fn render_histogram(
    out: &mut String,
    name: &str,
    help: &str,
    buckets: impl Iterator<Item = (f64, u64)>,
    count: u64,
    sum_secs: f64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (le, n) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum_secs}\n{name}_count {count}");
}

/// Every metric of a server.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) sends: Counter,
    pub(crate) send_duplicates: Counter,
    pub(crate) send_denied: Counter,
    pub(crate) events_applied: Counter,
    pub(crate) pushes: Counter,
    pub(crate) slow_consumer_closes: Counter,
    /// Sessions closed because a write to them waited [`crate::server::ws`]'s write timeout.
    pub(crate) ws_write_timeouts: Counter,
    pub(crate) cursor_events: Counter,
    pub(crate) acks_received: Counter,
    pub(crate) rate_limited: Counter,
    /// Sends refused as opening more person channels than `limits.new_person_channels_per_hour`.
    pub(crate) new_chats_refused: Counter,
    pub(crate) snapshots: Counter,
    /// Message index sidecars deleted after the retention let them go (`snapshots.rs`).
    pub(crate) sidecars_removed: Counter,
    /// The same, in the object store (`tiering::upload_snapshot`).
    pub(crate) tier_sidecars_removed: Counter,
    /// Message index sidecars found missing or damaged and made again or fetched
    /// (`index_repair.rs`).
    pub(crate) sidecars_repaired: Counter,
    /// Those that could not be.
    pub(crate) sidecar_repairs_failed: Counter,
    /// Records of recalled messages purged by the background purge (`purger.rs`).
    pub(crate) purged_records: Counter,
    /// Passes of the background purge run.
    pub(crate) purge_passes: Counter,
    /// Passes of the background purge that failed (retried at the next pass).
    pub(crate) purge_failures: Counter,
    /// Log segments the retention removed (`retention.rs`).
    pub(crate) retention_removed_segments: Counter,
    /// Bytes of the log segments the retention removed.
    pub(crate) retention_removed_bytes: Counter,
    /// Passes of the retention that failed (retried at the next pass).
    pub(crate) retention_failures: Counter,
    pub(crate) ws_sessions: Gauge,
    /// Sessions still catching up (not live yet).
    pub(crate) ws_catching_up: Gauge,
    pub(crate) send_latency: Histogram,
    pub(crate) http_latency: Histogram,
    http_requests: Mutex<BTreeMap<(String, String, u16), u64>>,
}

impl Metrics {
    pub(crate) fn http_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http_latency.observe(took);
        let mut m = self.http_requests.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
    }

    /// The text exposition, with `extra` values appended (name, help, value): counters when
    /// the name ends in `_total`, gauges otherwise.
    pub(crate) fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &Counter); 22] = [
            (
                "tidings_sends_total",
                "Messages accepted and durable.",
                &self.sends,
            ),
            (
                "tidings_send_duplicates_total",
                "Sends answered from the idempotency window.",
                &self.send_duplicates,
            ),
            (
                "tidings_send_denied_total",
                "Sends refused by channel rules.",
                &self.send_denied,
            ),
            (
                "tidings_events_applied_total",
                "Events applied to the projections.",
                &self.events_applied,
            ),
            (
                "tidings_pushes_total",
                "Messages queued to online sessions.",
                &self.pushes,
            ),
            (
                "tidings_slow_consumer_closes_total",
                "Sessions closed because their queue was full.",
                &self.slow_consumer_closes,
            ),
            (
                "tidings_ws_write_timeouts_total",
                "WebSocket sessions closed because a write to them waited 10 s (the client stopped reading).",
                &self.ws_write_timeouts,
            ),
            (
                "tidings_cursor_events_total",
                "Cursor events written (coalesced acks).",
                &self.cursor_events,
            ),
            (
                "tidings_acks_received_total",
                "Acks and reads received over WebSocket.",
                &self.acks_received,
            ),
            (
                "tidings_rate_limited_total",
                "Sends refused by a rate limit.",
                &self.rate_limited,
            ),
            (
                "tidings_new_chats_refused_total",
                "Sends refused as opening more person channels in an hour than limits.new_person_channels_per_hour.",
                &self.new_chats_refused,
            ),
            (
                "tidings_snapshots_total",
                "Snapshots written.",
                &self.snapshots,
            ),
            (
                "tidings_sidecars_removed_total",
                "Message index sidecars deleted once the retention let them go and no snapshot named them.",
                &self.sidecars_removed,
            ),
            (
                "tidings_tier_sidecars_removed_total",
                "Message index sidecars deleted from the object store once the retention let them go and no snapshot there named them.",
                &self.tier_sidecars_removed,
            ),
            (
                "tidings_sidecars_repaired_total",
                "Message index sidecars found missing or damaged and made again from the log or fetched from the object store.",
                &self.sidecars_repaired,
            ),
            (
                "tidings_sidecar_repairs_failed_total",
                "Tries to make a missing or damaged message index sidecar again that failed (at most one a minute per sidecar).",
                &self.sidecar_repairs_failed,
            ),
            (
                "tidings_purged_records_total",
                "Records of recalled messages whose payloads the background purge replaced.",
                &self.purged_records,
            ),
            (
                "tidings_purge_passes_total",
                "Passes of the background purge of recalled messages.",
                &self.purge_passes,
            ),
            (
                "tidings_purge_failures_total",
                "Passes of the background purge that failed (retried at the next pass).",
                &self.purge_failures,
            ),
            (
                "tidings_retention_removed_segments_total",
                "Log segments the retention removed.",
                &self.retention_removed_segments,
            ),
            (
                "tidings_retention_removed_bytes_total",
                "Bytes of the log segments the retention removed.",
                &self.retention_removed_bytes,
            ),
            (
                "tidings_retention_failures_total",
                "Passes of the retention that failed (retried at the next pass).",
                &self.retention_failures,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        let _ = writeln!(
            out,
            "# HELP tidings_ws_sessions Open WebSocket sessions.\n# TYPE tidings_ws_sessions gauge\ntidings_ws_sessions {}",
            self.ws_sessions.get()
        );
        let _ = writeln!(
            out,
            "# HELP tidings_ws_catching_up WebSocket sessions still catching up (not live yet).\n# TYPE tidings_ws_catching_up gauge\ntidings_ws_catching_up {}",
            self.ws_catching_up.get()
        );
        // Values that only rise (counts since start) are counters, named `_total`.
        for (name, help, value) in extra {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        for (name, help, h) in [
            (
                "tidings_send_seconds",
                "Send latency: accepted to durable and applied.",
                &self.send_latency,
            ),
            (
                "tidings_http_request_seconds",
                "HTTP request latency.",
                &self.http_latency,
            ),
        ] {
            let bounds = BUCKETS
                .iter()
                .zip(&h.buckets)
                .map(|(b, c)| (*b, c.load(Ordering::Relaxed)));
            render_histogram(
                &mut out,
                name,
                help,
                bounds,
                h.count.load(Ordering::Relaxed),
                h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            );
        }
        let _ = writeln!(
            out,
            "# HELP tidings_http_requests_total HTTP requests by route and status.\n# TYPE tidings_http_requests_total counter"
        );
        let m = self.http_requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((method, route, status), n) in m.iter() {
            let _ = writeln!(
                out,
                "tidings_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out
    }
}
