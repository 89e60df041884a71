//! `send`: durable sends acknowledged over WebSocket. Each connection's user sends into its
//! own two-member group (the other member offline), first at a fixed total rate (after 2 s of
//! unmeasured warm-up at that rate), then at saturation (64 sends in flight per connection).
//!
//! At the fixed rate two latencies are kept: from the moment the frame was written (the
//! server's send→ack time; the sends are open-loop, so a server stall still shows) and from
//! the intended send time (adds the generator's own lateness: tokio's 1 ms timer and its share
//! of the two cores). Check: every send acknowledged once, not as a duplicate, and each
//! channel's seqs are exactly 1..=n. A send still unacknowledged [`GRACE`] after its phase
//! fails the run, whether or not anything else arrives meanwhile.
//!
//! Frames are written from and read into typed structs, never `serde_json::Value` trees: the
//! generator shares the two cores with the server, and building and parsing a tree per send
//! cost it ~40% of its CPU (the Redis and NATS drivers of `peers` send raw bytes). The bytes
//! on the wire are the same.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::Args;
use crate::client::{self, Ws};
use crate::server::Server;
use crate::stats::{hist, summary};
use crate::timeline::{self, Sample, Slots};

#[derive(Clone, Copy)]
enum Mode {
    /// Sends per second on this connection.
    Rate(f64),
    /// Sends in flight.
    Window(usize),
}

struct Conn {
    ws: Ws,
    channel: String,
    next: u64,
    seqs: Vec<u64>,
    errors: u64,
}

/// A `send` frame; its payload is what `scenarios::payload` makes, without the tree.
#[derive(Serialize)]
struct SendFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    client_msg_id: &'a str,
    channel: &'a str,
    payload: Payload,
}

#[derive(Serialize)]
struct Payload {
    t: u64,
    n: u64,
    text: &'static str,
}

/// 160 bytes of text, as `scenarios::payload` has.
const TEXT: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// What the generator reads of a server frame (other fields are skipped).
#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    client_msg_id: Option<Cow<'a, str>>,
    seq: Option<u64>,
    duplicate: Option<bool>,
}

/// The frame of send number `n` into `channel`.
fn send_frame(channel: &str, n: u64, base: Instant) -> anyhow::Result<Message> {
    let id = format!("{channel}-{n}");
    let frame = SendFrame {
        kind: "send",
        client_msg_id: &id,
        channel,
        payload: Payload {
            t: base.elapsed().as_micros() as u64,
            n,
            text: TEXT,
        },
    };
    Ok(Message::Text(serde_json::to_string(&frame)?.into()))
}

/// How long after its phase a connection waits for its last acks.
const GRACE: Duration = Duration::from_secs(30);

/// The send number in a `client_msg_id` made by [`send_frame`].
fn send_number(id: &str) -> Option<u64> {
    id.rsplit_once('-')?.1.parse().ok()
}

struct PhaseOut {
    conn: Conn,
    /// From writing the frame to its ack.
    hist: Histogram<u64>,
    /// From the intended send time to the ack.
    intended: Histogram<u64>,
    /// The worst latency per slot of the phase.
    slots: Slots,
    acked: u64,
}

/// Sends on `c` for `secs`, then waits up to `grace` for the acks still owed (failing,
/// with their count, at the end of it).
async fn drive(
    mut c: Conn,
    mode: Mode,
    secs: f64,
    base: Instant,
    phase_start: Instant,
    grace: Duration,
) -> anyhow::Result<PhaseOut> {
    let (mut sink, mut stream) = c.ws.split();
    // Each connection paces from its own start (as before the timeline), so the connections'
    // timers are not all in phase; slots count from the phase's start.
    let started = Instant::now();
    let mut h = hist();
    let mut h_intended = hist();
    let mut slots = Slots::default();
    // Per send in flight (by its number): (intended send time, when its frame was written).
    let mut pending: HashMap<u64, (Instant, Instant)> = HashMap::new();
    let stop = started + Duration::from_secs_f64(secs);
    // After the phase nothing else may come, and keepalive pings are not text frames: without
    // a timer of its own, a lost ack would leave the wait below waiting for ever.
    let give_up = tokio::time::sleep_until(tokio::time::Instant::from_std(stop + grace));
    tokio::pin!(give_up);
    let unacked = |n: usize| anyhow::anyhow!("{n} sends unacknowledged {grace:?} after the phase");
    let mut next_at = started;
    let mut acked = 0;
    loop {
        let now = Instant::now();
        let sending = now < stop;
        if !sending && pending.is_empty() {
            break;
        }
        // (Also checked here: frames that keep coming would starve the timer below.)
        if now > stop + grace {
            return Err(unacked(pending.len()));
        }
        let may_send = sending
            && match mode {
                Mode::Rate(_) => true,
                Mode::Window(w) => pending.len() < w,
            };
        // Which branch sends: the pacing timer, or a window with free slots.
        let (paced, window) = match mode {
            Mode::Rate(_) => (may_send, 0),
            Mode::Window(w) => (false, if may_send { w } else { 0 }),
        };
        tokio::select! {
            biased;
            frame = client::next_text(&mut stream) => {
                let Some(text) = frame? else { anyhow::bail!("connection ended") };
                let r: Reply = serde_json::from_str(text.as_str())?;
                let n = r.client_msg_id.as_deref().and_then(send_number);
                match &*r.kind {
                    "sendack" => {
                        if let Some((intended, written)) = n.and_then(|n| pending.remove(&n)) {
                            let us = written.elapsed().as_micros().max(1) as u64;
                            h.saturating_record(us);
                            slots.record(written.saturating_duration_since(phase_start), us);
                            h_intended.saturating_record(intended.elapsed().as_micros().max(1) as u64);
                            acked += 1;
                            if r.duplicate != Some(false) {
                                c.errors += 1;
                            }
                            c.seqs.push(r.seq.unwrap_or(0));
                        } else {
                            c.errors += 1;
                        }
                    }
                    "error" => {
                        eprintln!("send error: {}", text.as_str());
                        c.errors += 1;
                        if let Some(n) = n {
                            pending.remove(&n);
                        }
                    }
                    _ => {}
                }
            }
            () = &mut give_up, if !sending => return Err(unacked(pending.len())),
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(next_at)), if paced => {
                let intended = next_at;
                if let Mode::Rate(r) = mode {
                    next_at += Duration::from_secs_f64(1.0 / r);
                }
                let frame = send_frame(&c.channel, c.next, base)?;
                let n = c.next;
                c.next += 1;
                sink.send(frame).await?;
                pending.insert(n, (intended, Instant::now()));
            }
            // Saturation: every free slot of the window is filled at once, one flush for all
            // (a timer per send would hold each connection to tokio's 1 ms timer resolution).
            () = std::future::ready(()), if window > 0 => {
                let first = c.next;
                while pending.len() + ((c.next - first) as usize) < window {
                    let frame = send_frame(&c.channel, c.next, base)?;
                    c.next += 1;
                    sink.feed(frame).await?;
                }
                sink.flush().await?;
                let now = Instant::now();
                for n in first..c.next {
                    pending.insert(n, (now, now));
                }
            }
        }
    }
    c.ws = sink.reunite(stream)?;
    Ok(PhaseOut {
        conn: c,
        hist: h,
        intended: h_intended,
        slots,
        acked,
    })
}

/// Runs every connection through a phase. With `server`, the phase also keeps a timeline: the
/// server process's, its log's and the machine's counters every [`timeline::SLOT`], reported
/// beside the slots that had slow sends.
async fn phase(
    conns: Vec<Conn>,
    mode: impl Fn(usize) -> Mode,
    secs: f64,
    base: Instant,
    server: Option<&Server>,
) -> anyhow::Result<(Vec<Conn>, Value)> {
    let pid = server.map(Server::pid).transpose()?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, c) in conns.into_iter().enumerate() {
        tasks.spawn(drive(c, mode(i), secs, base, started, GRACE));
    }
    let mut h = hist();
    let mut h_intended = hist();
    let mut slots = Slots::default();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(timeline::SLOT);
    let mut acked = 0;
    let mut out = Vec::new();
    loop {
        tokio::select! {
            r = tasks.join_next() => {
                let Some(r) = r else { break };
                let r = r??;
                h.add(&r.hist)?;
                h_intended.add(&r.intended)?;
                slots.merge(&r.slots);
                acked += r.acked;
                out.push(r.conn);
            }
            _ = tick.tick(), if pid.is_some() => {
                if let (Some(pid), Some(server)) = (pid, server) {
                    samples.extend(sample(server, pid, started).await);
                }
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    let mut v = summary(&h);
    v["msgs_per_s"] = json!((acked as f64 / took).round());
    v["acked"] = json!(acked);
    v["from_intended_send"] = summary(&h_intended);
    if let (Some(pid), Some(server)) = (pid, server) {
        samples.extend(sample(server, pid, started).await);
        v["timeline"] = timeline::report(&slots, &samples);
    }
    Ok((out, v))
}

/// The counters of the timeline, now; none if the server's metrics cannot be read (a sample
/// of zeros would make the next difference the whole count).
async fn sample(server: &Server, pid: u32, started: Instant) -> Option<Sample> {
    let s = Sample::read(pid, started.elapsed());
    server
        .metrics()
        .await
        .ok()
        .map(|text| s.with_metrics(&text))
}

/// The server's own send latency (accepted → durable and applied; its `/metrics` histogram)
/// over a phase: the share of sends within each bucket bound, and the bucket bounds the
/// median and the 99th percentile fall in. Set beside the client's view, it shows how much
/// of the latency the server's send path itself accounts for.
fn server_side(before: &[(f64, u64)], after: &[(f64, u64)]) -> Value {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .zip(before)
        .map(|(&(le, a), &(_, b))| (le, a.saturating_sub(b)))
        .collect();
    // The last finite bucket holds every send unless one took over its bound (5 s).
    let total = delta.last().map_or(0, |d| d.1).max(1) as f64;
    let within = |q: f64| {
        delta
            .iter()
            .find(|(_, c)| *c as f64 >= q * total)
            .map(|(le, _)| le * 1e3)
    };
    let shares: serde_json::Map<String, Value> = delta
        .iter()
        .map(|(le, c)| (format!("{}", le * 1e3), json!(*c as f64 / total)))
        .collect();
    json!({
        "share_within_ms": shares,
        "p50_at_most_ms": within(0.5),
        "p99_at_most_ms": within(0.99),
    })
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<Value> {
    let server = Server::start(args, &[]).await?;
    let n = if args.smoke { 4 } else { 64 };
    let uids: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    for (i, u) in uids.iter().enumerate() {
        server
            .group(&format!("s{i}"), &[u.clone(), format!("v{i}")])
            .await?;
    }
    let tokens = server.tokens(&uids).await?;
    let mut conns = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        conns.push(Conn {
            ws: client::connect(server.addr, t, i, "?catch_up=false").await?,
            channel: format!("s{i}"),
            next: 0,
            seqs: Vec::new(),
            errors: 0,
        });
    }
    let base = Instant::now();
    let rate = if args.smoke { 500.0 } else { args.rate as f64 };
    let per_conn = rate / n as f64;
    // A fresh server's first second runs slower (page faults as memory is first touched, tables
    // growing from empty): sends at the fixed rate for a moment first, measured by nobody. The
    // exactly-once check below still covers them.
    let warm_up = if args.smoke { 0.2 } else { 2.0 };
    let (conns, _) = phase(conns, |_| Mode::Rate(per_conn), warm_up, base, None).await?;
    let before = server.histogram("tidings_send_seconds").await?;
    let (conns, mut fixed) = phase(
        conns,
        |_| Mode::Rate(per_conn),
        args.secs(),
        base,
        Some(&server),
    )
    .await?;
    let after = server.histogram("tidings_send_seconds").await?;
    fixed["server_side"] = server_side(&before, &after);
    let cpu_before = server.cpu_secs()?;
    let (conns, mut saturated) =
        phase(conns, |_| Mode::Window(64), args.secs(), base, None).await?;
    let cpu = server.cpu_secs()?;
    // Server CPU per acknowledged send at saturation (the phase's own CPU time only; sends
    // still in flight when it ends are few against a million).
    let saturation_acked = saturated["acked"].as_u64().unwrap_or(0);
    let acked = saturation_acked.max(1);
    saturated["server_cpu_us_per_send"] = json!((cpu - cpu_before) * 1e6 / acked as f64);
    let mut correct = saturation_acked > 0;
    let mut total = 0;
    for c in &conns {
        let mut seqs = c.seqs.clone();
        seqs.sort_unstable();
        let dense = seqs.iter().enumerate().all(|(i, s)| *s == i as u64 + 1);
        // Each connection sent (a run that sent nothing was `correct`).
        correct &= dense && c.errors == 0 && seqs.len() as u64 == c.next && c.next > 0;
        // Read back: the server's own view of the channel holds exactly what it acknowledged
        // (applied, not only answered).
        let view = server
            .admin(
                reqwest::Method::GET,
                &format!("/v1/channels/{}", c.channel),
                None,
            )
            .await?;
        correct &= view["last_seq"].as_u64() == Some(seqs.len() as u64);
        total += seqs.len();
    }
    server.stop().await;
    Ok(json!({
        "scenario": "send",
        "connections": n,
        "fixed_rate": {"target_msgs_per_s": rate, "warm_up_secs": warm_up, "latency": fixed},
        "saturation": {"in_flight_per_connection": 64, "latency": saturated},
        "messages": total,
        "server_cpu_secs": cpu,
        "correct": correct,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::loopback::{peer, sendack};

    /// The typed frame is the frame the `Value` version made, and its id reads back.
    #[test]
    fn a_send_frame_is_the_json_frame() -> anyhow::Result<()> {
        let base = Instant::now();
        let Message::Text(t) = send_frame("g-send-3", 41, base)? else {
            anyhow::bail!("not a text frame")
        };
        let mut got: Value = serde_json::from_str(t.as_str())?;
        let mut want = json!({"type": "send", "client_msg_id": "g-send-3-41", "channel": "g-send-3",
            "payload": crate::scenarios::payload(base, 41)});
        got["payload"]["t"] = json!(0);
        want["payload"]["t"] = json!(0);
        assert_eq!(got, want);
        assert_eq!(send_number("g-send-3-41"), Some(41));
        assert_eq!(send_number("nope"), None);
        Ok(())
    }

    /// A connection still owed an ack after its phase fails once the grace is over, though
    /// its peer keeps the connection open and says nothing more (the wait after the phase
    /// read frames only, and its check ran only when one came: it waited for ever).
    #[tokio::test]
    async fn a_lost_ack_fails_the_phase_after_the_grace() -> anyhow::Result<()> {
        let mut seq = 0;
        let (ws, _peer) = peer(Duration::ZERO, move |v| {
            if v["client_msg_id"].as_str() == Some("g-1") {
                return vec![];
            }
            seq += 1;
            vec![sendack(v, seq)]
        })
        .await?;
        let conn = Conn {
            ws,
            channel: "g".into(),
            next: 0,
            seqs: Vec::new(),
            errors: 0,
        };
        let started = Instant::now();
        let grace = Duration::from_millis(500);
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            drive(conn, Mode::Rate(50.0), 0.2, started, started, grace),
        )
        .await;
        let Ok(Err(e)) = r else {
            anyhow::bail!("the phase did not fail within 10 s")
        };
        assert!(e.to_string().contains("1 sends unacknowledged"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        Ok(())
    }
}
