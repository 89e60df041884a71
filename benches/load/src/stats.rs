//! Latency histograms (microseconds) and their JSON summary.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// A histogram of microseconds, 1 µs to 60 s.
#[allow(clippy::expect_used)] // constant, valid bounds
pub(crate) fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// p50 / p99 / p999 / max in microseconds.
pub(crate) fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}
