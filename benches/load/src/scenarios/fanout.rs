//! `fanout`: one group, many online members; one sender keeps `--fanout-window` sends (default
//! 32) in flight for the measured time (with `--fanout-rate`, sends at that rate instead, the
//! window only a cap). Deliveries/s counts message frames received by all members; latency is
//! send → receive (the send time travels in the payload). At a fixed rate the send time is
//! the moment the send was due, so a sender running late (its window full, its task behind
//! the receivers on the shared cores) counts as latency rather than vanishing from it; the
//! result reports the rate achieved beside the rate offered, and how late the sender wrote.
//! Check: every send acknowledged once, and every member received every message exactly
//! once, seqs 1..=n.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::Args;
use crate::client::{self, Ws};
use crate::scenarios::{Until, payload_at, send_paced};
use crate::server::Server;
use crate::stats::{hist, summary};

/// What a member reads of a frame: borrowed where it can, everything else skipped (the
/// generator shares the server's two cores, so it parses no more than it checks).
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    seq: Option<u64>,
    payload: Option<SentAt>,
}

/// The send time the sender put in the payload.
#[derive(Deserialize)]
struct SentAt {
    t: u64,
}

/// Receives until `total` (known once the sender is done) messages arrived.
async fn receive(
    ws: Ws,
    base: Instant,
    mut total: watch::Receiver<Option<u64>>,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, Vec<u64>, Instant)> {
    let (_sink, mut stream) = ws.split();
    let mut h = hist();
    let mut seqs = Vec::new();
    let mut last = Instant::now();
    // One timer for the whole run (a fresh 30 s sleep per frame was a timer-wheel insert and
    // removal per delivery).
    let mut idle_check = tokio::time::interval(Duration::from_secs(1));
    loop {
        if let Some(t) = *total.borrow()
            && seqs.len() as u64 >= t
        {
            break;
        }
        tokio::select! {
            frame = client::next_text(&mut stream) => {
                let Some(text) = frame? else { anyhow::bail!("connection ended") };
                let f: Incoming = serde_json::from_str(text.as_str())?;
                if f.kind == "message" {
                    let sent = f.payload.map_or(0, |p| p.t);
                    let now = base.elapsed().as_micros() as u64;
                    h.saturating_record(now.saturating_sub(sent).max(1));
                    seqs.push(f.seq.unwrap_or(0));
                    last = Instant::now();
                }
            }
            changed = total.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the sender went away");
                }
            }
            _ = idle_check.tick() => {
                if last.elapsed() > Duration::from_secs(30) {
                    anyhow::bail!("no message for 30 s ({} received)", seqs.len());
                }
            }
        }
    }
    // Nothing more may come: a late duplicate counts too (kept, so the check sees it).
    while let Ok(Some(Ok(text))) =
        tokio::time::timeout(Duration::from_millis(300), client::next_text(&mut stream))
            .await
            .map(|f| f.transpose())
    {
        let f: Incoming = serde_json::from_str(text.as_str())?;
        if f.kind == "message" {
            seqs.push(f.seq.unwrap_or(0));
        }
    }
    Ok((h, seqs, last))
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<Value> {
    let members = args
        .fanout_members
        .unwrap_or(if args.smoke { 50 } else { 2000 });
    let server = Server::start(args, &[]).await?;
    let mut uids: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
    uids.push("sender".into());
    server.group("fan", &uids).await?;
    let tokens = server.tokens(&uids).await?;
    let base = Instant::now();
    let (total_tx, total_rx) = watch::channel(None);
    let mut receivers = JoinSet::new();
    for (i, t) in tokens[..members].iter().enumerate() {
        let ws = client::connect(server.addr, t, i, "?catch_up=false").await?;
        receivers.spawn(receive(ws, base, total_rx.clone()));
    }
    let mut sender =
        client::connect(server.addr, &tokens[members], members, "?catch_up=false").await?;
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(args.secs());
    let sent = send_paced(&mut sender, args.fanout_window.max(1), args.fanout_rate, Until::Time(stop), |i, at| {
        json!({"type": "send", "client_msg_id": format!("f{i}"), "channel": "fan", "payload": payload_at(base, at, i)})
    })
    .await?;
    let acked = sent.acked;
    let _ = total_tx.send(Some(acked));
    let mut h = hist();
    let mut correct = sent.errors == 0 && acked > 0;
    let mut delivered = 0u64;
    let mut last = started;
    while let Some(r) = receivers.join_next().await {
        let (rh, mut seqs, l) = r??;
        h.add(&rh)?;
        delivered += seqs.len() as u64;
        seqs.sort_unstable();
        correct &=
            seqs.len() as u64 == acked && seqs.iter().enumerate().all(|(i, s)| *s == i as u64 + 1);
        last = last.max(l);
    }
    let took = (last - started).as_secs_f64();
    let cpu = server.cpu_secs()?;
    server.stop().await;
    let from = if args.fanout_rate.is_some() {
        "due"
    } else {
        "built"
    };
    Ok(json!({
        "scenario": "fanout",
        "online_members": members,
        "sender_window": args.fanout_window.max(1),
        "offered_msgs_per_s": args.fanout_rate,
        "sends": sent.sent,
        "achieved_msgs_per_s": (sent.rate * 10.0).round() / 10.0,
        "sender_late": args.fanout_rate.map(|_| summary(&sent.lateness)),
        "messages": acked,
        "deliveries": delivered,
        "deliveries_per_s": (delivered as f64 / took).round(),
        "send_to_receive": summary(&h),
        // At a fixed rate from the moment each send was due, else from when it was built.
        "send_to_receive_from": from,
        "server_cpu_secs": cpu,
        "correct": correct,
    }))
}
