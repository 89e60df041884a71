//! The scenarios. Each starts its own server, measures, checks correctness and returns a JSON
//! object with `"scenario"`, its numbers and `"correct"`.

pub(crate) mod cold;
pub(crate) mod fanout;
pub(crate) mod idle;
pub(crate) mod large_group;
pub(crate) mod offline_sync;
#[cfg(feature = "peers")]
pub(crate) mod peers;
pub(crate) mod send;

use std::time::Instant;

/// A payload of about 200 bytes carrying the send time (µs since `base`).
pub(crate) fn payload(base: Instant, n: u64) -> serde_json::Value {
    serde_json::json!({
        "t": base.elapsed().as_micros() as u64,
        "n": n,
        "text": "x".repeat(160),
    })
}
