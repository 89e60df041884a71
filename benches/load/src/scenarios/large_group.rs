//! `large-group`: server CPU time per send into a group of 100,000 members with 1% of them
//! online, against a two-member group with the other member online. A send writes one event
//! whatever the group size (conversations are computed on read), so the difference is the
//! pushes to online members. The run also measures the big group with nobody online (that
//! ratio isolates the write path) and a group of just the same online members (the same
//! pushes without the 99,000 offline members: that ratio shows what the offline members
//! cost). The same sessions are open in every phase (the nobody-online group is of other
//! users), and the server's idle CPU over each window is subtracted. Check: every online
//! member got every message exactly once.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::Args;
use crate::client::{self, Ws};
use crate::scenarios::{Until, payload, send_windowed};
use crate::server::Server;

/// Sends `n` messages into `channel` with 16 in flight; returns the server CPU seconds used,
/// less what the server spends idle (`idle_rate` CPU seconds per second) over the window.
async fn sends(
    server: &Server,
    ws: &mut Ws,
    channel: &str,
    n: u64,
    idle_rate: f64,
) -> anyhow::Result<(f64, u64)> {
    let base = std::time::Instant::now();
    // Let the previous phase's work (pushes, acks) settle before reading the CPU clock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.cpu_secs()?;
    let window = std::time::Instant::now();
    let errors = send_windowed(ws, 16, Until::Count(n), |i| {
        json!({"type": "send", "client_msg_id": format!("{channel}-{i}"), "channel": channel, "payload": payload(base, i)})
    })
    .await?
    .errors;
    // Pushes finish after the acks: wait for the server to go idle again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let idle = idle_rate * window.elapsed().as_secs_f64();
    Ok(((server.cpu_secs()? - before - idle).max(0.0), errors))
}

/// Collects message frames until told to stop; returns the (channel, seq) pairs seen.
async fn drain(
    ws: Ws,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<(String, u64)>> {
    let (_sink, mut stream) = ws.split();
    let mut stop = stop;
    let mut seqs = Vec::new();
    loop {
        tokio::select! {
            frame = client::next(&mut stream) => {
                let Some(v) = frame? else { anyhow::bail!("connection ended") };
                if v["type"] == "message" {
                    seqs.push((
                        v["channel"].as_str().unwrap_or_default().to_owned(),
                        v["seq"].as_u64().unwrap_or(0),
                    ));
                }
            }
            _ = stop.changed() => return Ok(seqs),
        }
    }
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<Value> {
    let big = args
        .large_group_members
        .unwrap_or(if args.smoke { 2_000 } else { 100_000 });
    let online = (big / 100).max(1);
    let n: u64 = if args.smoke { 200 } else { 5_000 };
    let server = Server::start(args, &[]).await?;
    let mut members: Vec<String> = (0..big).map(|i| format!("g{i}")).collect();
    members.push("sender".into());
    server.group("big", &members).await?;
    // As big, but of other users: with the same sessions open in every phase (like for
    // like), none of its members is online.
    let mut others: Vec<String> = (0..big).map(|i| format!("h{i}")).collect();
    others.push("sender".into());
    server.group("big-offline", &others).await?;
    server
        .group("small", &["sender".to_string(), "g0".to_string()])
        .await?;
    let mut who: Vec<String> = members[..online].to_vec();
    who.push("sender".into());
    server.group("online-only", &who).await?;
    let tokens = server.tokens(&who).await?;
    let mut ws = client::connect(server.addr, &tokens[online], online, "?catch_up=false").await?;
    // The online members connect first and stay for every phase.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut receivers = JoinSet::new();
    for (i, t) in tokens[..online].iter().enumerate() {
        let r = client::connect(server.addr, t, i, "?catch_up=false").await?;
        let stop = stop_rx.clone();
        receivers.spawn(async move { (i, drain(r, stop).await) });
    }
    // What the server spends idle with those sessions open, per second (subtracted).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_before = server.cpu_secs()?;
    let idle_window = std::time::Instant::now();
    // Long enough for the 10 ms CPU clock: 5 s resolve 0.002 CPU/s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_rate = (server.cpu_secs()? - idle_before) / idle_window.elapsed().as_secs_f64();

    // Nobody online: the write path alone.
    let (cpu_big_offline, e0) = sends(&server, &mut ws, "big-offline", n, idle_rate).await?;
    // 1% online.
    let (cpu_big, e1) = sends(&server, &mut ws, "big", n, idle_rate).await?;
    let (cpu_online_only, e3) = sends(&server, &mut ws, "online-only", n, idle_rate).await?;
    let (cpu_small, e2) = sends(&server, &mut ws, "small", n, idle_rate).await?;
    let _ = stop_tx.send(true);
    let mut correct = e0 + e1 + e2 + e3 == 0;
    let exactly = |got: &[(String, u64)], channel: &str| {
        let mut seqs: Vec<u64> = got
            .iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, s)| *s)
            .collect();
        seqs.sort_unstable();
        seqs.len() as u64 == n && seqs.iter().enumerate().all(|(i, s)| *s == i as u64 + 1)
    };
    while let Some(r) = receivers.join_next().await {
        let (i, got) = r?;
        let got = got?;
        // Every online member: each "big" and "online-only" message once. g0 (member 0) is in
        // "small" too.
        correct &= exactly(&got, "big") && exactly(&got, "online-only");
        correct &= if i == 0 {
            exactly(&got, "small") && got.len() as u64 == 3 * n
        } else {
            got.len() as u64 == 2 * n
        };
    }
    let per = |cpu: f64| cpu / n as f64 * 1e6;
    server.stop().await;
    Ok(json!({
        "scenario": "large-group",
        "members": big,
        "online": online,
        "sends_each": n,
        "idle_cpu_per_sec": idle_rate,
        "cpu_us_per_send_big_1pct_online": per(cpu_big),
        "cpu_us_per_send_big_nobody_online": per(cpu_big_offline),
        "cpu_us_per_send_two_members": per(cpu_small),
        "cpu_us_per_send_online_members_only": per(cpu_online_only),
        "ratio_big_1pct_online_to_online_members_only": cpu_big / cpu_online_only.max(1e-9),
        "ratio_big_1pct_online_to_two_members": cpu_big / cpu_small.max(1e-9),
        "ratio_big_nobody_online_to_two_members": cpu_big_offline / cpu_small.max(1e-9),
        "correct": correct,
    }))
}
