//! The scenarios. Each starts its own server, measures, checks correctness and returns a JSON
//! object with `"scenario"`, its numbers and `"correct"`.

pub(crate) mod cold;
pub(crate) mod fanout;
pub(crate) mod idle;
pub(crate) mod large_group;
#[cfg(test)]
mod loopback;
pub(crate) mod offline_sync;
#[cfg(feature = "peers")]
pub(crate) mod peers;
pub(crate) mod send;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::Value;

use crate::client::{self, Ws};
use crate::stats::hist;

/// How long a windowed sender waits for the next answer while sends are in flight.
const PATIENCE: Duration = Duration::from_secs(30);

/// A payload of about 200 bytes carrying the send time (µs since `base`): now.
pub(crate) fn payload(base: Instant, n: u64) -> Value {
    payload_at(base, Instant::now(), n)
}

/// A payload of about 200 bytes carrying the send time `at` (µs since `base`).
pub(crate) fn payload_at(base: Instant, at: Instant, n: u64) -> Value {
    serde_json::json!({
        "t": at.saturating_duration_since(base).as_micros() as u64,
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

/// What a windowed sender did.
pub(crate) struct Sent {
    /// Frames written.
    pub(crate) sent: u64,
    /// Sends acknowledged once, as new (`duplicate: false`).
    pub(crate) acked: u64,
    /// Sends answered with an error, sends acknowledged as duplicates, and answers that
    /// answered no send in flight (a second answer, an unknown id).
    pub(crate) errors: u64,
    /// Sends per second achieved: `sent` over the time from the first send until sending
    /// stopped (`until` reached, noticed at the next answer if the window was full then).
    pub(crate) rate: f64,
    /// With a rate: how long after its due moment each frame was written (µs; it waited for
    /// a slot in the window, for the cores, or for the socket). Empty without a rate.
    pub(crate) lateness: Histogram<u64>,
}

/// The sends of one connection still in flight, by `client_msg_id`, and how they were
/// answered. Answers are matched to sends, not counted: a send answered twice and another
/// never answered must not add up to "all answered".
#[derive(Default)]
struct Ledger {
    in_flight: HashSet<String>,
    sent: u64,
    acked: u64,
    errors: u64,
}

impl Ledger {
    /// Notes a send about to be written; its frame must carry a `client_msg_id` not in
    /// flight (the generator's own frames always do).
    fn send(&mut self, frame: &Value) -> anyhow::Result<()> {
        let id = frame["client_msg_id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("a send frame without a client_msg_id: {frame}"))?;
        anyhow::ensure!(
            self.in_flight.insert(id.to_owned()),
            "client_msg_id {id:?} sent again while in flight"
        );
        self.sent += 1;
        Ok(())
    }

    /// Takes a server frame. A `sendack` or an `error` must answer a send in flight (which
    /// it takes out of flight), and a sendack must say `duplicate: false`; any other sendack
    /// or error counts as an error. Other frames are not answers.
    fn answer(&mut self, v: &Value) {
        let kind = v["type"].as_str();
        if !matches!(kind, Some("sendack" | "error")) {
            return;
        }
        let matched = v["client_msg_id"]
            .as_str()
            .is_some_and(|id| self.in_flight.remove(id));
        if matched && kind == Some("sendack") && v["duplicate"].as_bool() == Some(false) {
            self.acked += 1;
        } else {
            self.errors += 1;
        }
    }

    /// Sends not answered yet.
    fn in_flight(&self) -> u64 {
        self.in_flight.len() as u64
    }
}

/// Sends over `ws` with up to `window` sends in flight (`frame(i)` builds the i-th) until
/// `until`, then waits for every answer (30 s at most between answers).
pub(crate) async fn send_windowed(
    ws: &mut Ws,
    window: u64,
    until: Until,
    mut frame: impl FnMut(u64) -> Value,
) -> anyhow::Result<Sent> {
    send_paced(ws, window, None, until, |i, _| frame(i)).await
}

/// [`send_windowed`], and with `rate` (sends/s) no faster than that: each send waits for its
/// moment (and for a free slot in the window). `frame(i, at)` builds the i-th send, stamped
/// `at`: with a rate the moment it was due, not when it is built, so a sender running late
/// (its window full, its task behind the receivers on the shared cores, a slow write) shows
/// in the latency measured from the stamp (no coordinated omission); without one, now.
pub(crate) async fn send_paced(
    ws: &mut Ws,
    window: u64,
    rate: Option<f64>,
    until: Until,
    frame: impl FnMut(u64, Instant) -> Value,
) -> anyhow::Result<Sent> {
    send_paced_within(ws, window, rate, until, PATIENCE, frame).await
}

/// [`send_paced`], waiting at most `patience` for each answer while sends are in flight.
async fn send_paced_within(
    ws: &mut Ws,
    window: u64,
    rate: Option<f64>,
    until: Until,
    patience: Duration,
    mut frame: impl FnMut(u64, Instant) -> Value,
) -> anyhow::Result<Sent> {
    let mut ledger = Ledger::default();
    let mut lateness = hist();
    let started = tokio::time::Instant::now();
    let mut stopped = None;
    loop {
        let more = match until {
            Until::Count(n) => ledger.sent < n,
            Until::Time(t) => Instant::now() < t,
        };
        if !more && stopped.is_none() {
            stopped = Some(tokio::time::Instant::now());
        }
        let due = rate.map(|r| started + Duration::from_secs_f64(ledger.sent as f64 / r));
        if more && ledger.in_flight() < window {
            if let Some(at) = due
                && at > tokio::time::Instant::now()
            {
                // Not yet: read an answer if one comes first, else send on time.
                tokio::select! {
                    biased;
                    v = client::next(ws) => {
                        ledger.answer(&answer(v)?);
                        continue;
                    }
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            let at = due.unwrap_or_else(tokio::time::Instant::now);
            let f = frame(ledger.sent, at.into_std());
            ledger.send(&f)?;
            client::send(ws, &f).await?;
            if due.is_some() {
                let late = at.elapsed().as_micros().max(1) as u64;
                lateness.saturating_record(late);
            }
            continue;
        }
        if ledger.in_flight() == 0 {
            let took = stopped.map_or(Duration::ZERO, |s| s.saturating_duration_since(started));
            return Ok(Sent {
                sent: ledger.sent,
                acked: ledger.acked,
                errors: ledger.errors,
                rate: ledger.sent as f64 / took.as_secs_f64().max(1e-9),
                lateness,
            });
        }
        let v = tokio::time::timeout(patience, client::next(ws))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} sends unanswered, none answered for {patience:?}",
                    ledger.in_flight()
                )
            })?;
        ledger.answer(&answer(v)?);
    }
}

/// The frame read from the sender's connection, which must not have ended.
fn answer(v: anyhow::Result<Option<Value>>) -> anyhow::Result<Value> {
    v?.ok_or_else(|| anyhow::anyhow!("the sender's connection ended"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::loopback::{peer, sendack};
    use super::*;

    /// Send number `i`: `f{i}` into channel `c`.
    fn frame(i: u64) -> Value {
        json!({"type": "send", "client_msg_id": format!("f{i}"), "channel": "c", "payload": {}})
    }

    /// Answers are matched to sends by `client_msg_id`: only the first `sendack` of a send in
    /// flight, and only as new, is an ack; everything else answering a send is an error.
    #[test]
    fn the_ledger_matches_answers_to_sends() -> anyhow::Result<()> {
        let mut l = Ledger::default();
        for i in 0..4 {
            l.send(&frame(i))?;
        }
        assert!(l.send(&frame(3)).is_err(), "an id already in flight");
        assert!(l.send(&json!({"type": "send"})).is_err(), "no id");
        l.answer(&sendack(&frame(0), 1));
        l.answer(&sendack(&frame(0), 1)); // a second answer
        l.answer(&json!({"type": "sendack", "client_msg_id": "f1", "duplicate": true}));
        l.answer(&json!({"type": "error", "code": "rate_limited", "client_msg_id": "f2"}));
        l.answer(&sendack(&frame(9), 2)); // never sent
        l.answer(&json!({"type": "error", "code": "invalid_frame"})); // no id
        l.answer(&json!({"type": "message", "client_msg_id": "f3"})); // not an answer
        assert_eq!((l.sent, l.acked, l.errors, l.in_flight()), (4, 1, 5, 1));
        l.answer(&sendack(&frame(3), 2));
        assert_eq!((l.acked, l.errors, l.in_flight()), (2, 5, 0));
        Ok(())
    }

    /// At a fixed rate the payload carries the moment each send was due, not when its frame
    /// was built: a peer that answers in 50 ms holds a window of one to 20 sends/s, and
    /// frame i still says i × 10 ms at 100/s. The achieved rate and the lateness say so.
    #[tokio::test]
    async fn a_late_sender_stamps_the_due_moment() -> anyhow::Result<()> {
        let (mut ws, reader) = peer(Duration::from_millis(50), |v| vec![sendack(v, 1)]).await?;
        let base = Instant::now();
        let sent = send_paced(&mut ws, 1, Some(100.0), Until::Count(5), |i, at| {
            json!({"type": "send", "client_msg_id": format!("f{i}"), "channel": "c",
                "payload": payload_at(base, at, i)})
        })
        .await?;
        drop(ws);
        let frames = reader.await?;
        let stamps: Vec<u64> = frames
            .iter()
            .filter_map(|f| f["payload"]["t"].as_u64())
            .collect();
        assert_eq!(stamps.len(), 5);
        for (i, t) in stamps.iter().enumerate() {
            let due = i as u64 * 10_000;
            assert!(
                t.abs_diff(due) < 5_000,
                "frame {i} stamped {t} µs, due at {due}: {stamps:?}"
            );
        }
        assert_eq!((sent.sent, sent.acked, sent.errors), (5, 5, 0));
        // Written at ~0, 50, …, 200 ms: 25/s, the last 160 ms late.
        assert!(sent.rate < 50.0, "achieved {} sends/s", sent.rate);
        assert!(sent.lateness.max() >= 100_000, "{}", sent.lateness.max());
        Ok(())
    }

    /// Without a rate the stamp is the moment the frame is built, as before.
    #[tokio::test]
    async fn a_saturating_sender_stamps_now() -> anyhow::Result<()> {
        let (mut ws, reader) = peer(Duration::from_millis(20), |v| vec![sendack(v, 1)]).await?;
        let base = Instant::now();
        let sent = send_windowed(&mut ws, 1, Until::Count(3), |i| {
            json!({"type": "send", "client_msg_id": format!("f{i}"), "channel": "c",
                "payload": payload(base, i)})
        })
        .await?;
        drop(ws);
        let frames = reader.await?;
        let last = frames[2]["payload"]["t"].as_u64().unwrap_or(0);
        assert!(
            last >= 40_000,
            "the third frame built after two answers: {last} µs"
        );
        assert_eq!((sent.acked, sent.errors, sent.lateness.len()), (3, 0, 0));
        Ok(())
    }

    /// A peer that answers f0 twice and f1 never: the sender fails naming the send still in
    /// flight (counting answers, it had three for three sends and passed).
    #[tokio::test]
    async fn a_send_answered_twice_does_not_stand_for_one_never_answered() -> anyhow::Result<()> {
        let (mut ws, _peer) = peer(Duration::ZERO, |v| match v["client_msg_id"].as_str() {
            Some("f0") => vec![sendack(v, 1), sendack(v, 1)],
            Some("f1") => vec![],
            _ => vec![sendack(v, 2)],
        })
        .await?;
        let started = Instant::now();
        let r = send_paced_within(
            &mut ws,
            3,
            None,
            Until::Count(3),
            Duration::from_millis(300),
            |i, _| frame(i),
        )
        .await;
        let Err(e) = r else {
            anyhow::bail!("the sender passed with f1 never answered")
        };
        assert!(e.to_string().contains("1 sends unanswered"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        Ok(())
    }

    /// A second answer to f0, then f1's: every send answered, and the extra answer an error
    /// (counting answers, the sender stopped at two for two with no error).
    #[tokio::test]
    async fn a_second_answer_is_an_error() -> anyhow::Result<()> {
        let (mut ws, _peer) = peer(Duration::ZERO, |v| match v["client_msg_id"].as_str() {
            Some("f0") => vec![sendack(v, 1), sendack(v, 1)],
            _ => vec![sendack(v, 2)],
        })
        .await?;
        let sent = send_windowed(&mut ws, 2, Until::Count(2), frame).await?;
        assert_eq!((sent.sent, sent.acked, sent.errors), (2, 2, 1));
        Ok(())
    }
}
