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

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{self, Ws};

/// A payload of about 200 bytes carrying the send time (µs since `base`).
pub(crate) fn payload(base: Instant, n: u64) -> serde_json::Value {
    serde_json::json!({
        "t": base.elapsed().as_micros() as u64,
        "n": n,
        "text": "x".repeat(160),
    })
}

/// How long a windowed sender keeps sending.
pub(crate) enum Until {
    /// This many sends.
    Count(u64),
    /// Until this moment.
    Time(Instant),
}

/// Sends over `ws` with up to `window` sends in flight (`frame(i)` builds the i-th) until
/// `until`, then waits for every answer (30 s at most between answers). Returns the sends
/// acknowledged and the ones answered with an error.
pub(crate) async fn send_windowed(
    ws: &mut Ws,
    window: u64,
    until: Until,
    frame: impl FnMut(u64) -> Value,
) -> anyhow::Result<(u64, u64)> {
    send_paced(ws, window, None, until, frame).await
}

/// [`send_windowed`], and with `rate` (sends/s) no faster than that: each send waits for its
/// moment (and for a free slot in the window).
pub(crate) async fn send_paced(
    ws: &mut Ws,
    window: u64,
    rate: Option<f64>,
    until: Until,
    mut frame: impl FnMut(u64) -> Value,
) -> anyhow::Result<(u64, u64)> {
    let (mut sent, mut acked, mut errors) = (0u64, 0u64, 0u64);
    let started = tokio::time::Instant::now();
    loop {
        let more = match until {
            Until::Count(n) => sent < n,
            Until::Time(t) => Instant::now() < t,
        };
        let in_flight = sent - acked - errors;
        let due = rate.map(|r| started + Duration::from_secs_f64(sent as f64 / r));
        if more && in_flight < window {
            match due {
                Some(at) if at > tokio::time::Instant::now() => {
                    // Not yet: read an answer if one comes first, else send on time.
                    tokio::select! {
                        biased;
                        v = client::next(ws) => {
                            let v = v?.ok_or_else(|| anyhow::anyhow!("the sender's connection ended"))?;
                            match v["type"].as_str() {
                                Some("sendack") => acked += 1,
                                Some("error") => errors += 1,
                                _ => {}
                            }
                            continue;
                        }
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                _ => {}
            }
            client::send(ws, &frame(sent)).await?;
            sent += 1;
            continue;
        }
        if in_flight == 0 {
            return Ok((acked, errors));
        }
        let v = tokio::time::timeout(Duration::from_secs(30), client::next(ws))
            .await??
            .ok_or_else(|| anyhow::anyhow!("the sender's connection ended"))?;
        match v["type"].as_str() {
            Some("sendack") => acked += 1,
            Some("error") => errors += 1,
            _ => {}
        }
    }
}
