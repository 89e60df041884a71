//! `idle`: many idle WebSocket connections (100 per user); the server's resident memory per
//! connection. Needs a file-descriptor limit above the connection count for both processes
//! (`benches/load.sh` raises it). Check: every connection is registered and a sample answers
//! a ping.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::Args;
use crate::client::{self, Ws};
use crate::server::Server;

/// This process's open-file limit (the server, its child, inherits it).
fn fd_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<Value> {
    let wanted = args
        .idle_connections
        .unwrap_or(if args.smoke { 500 } else { 100_000 });
    // Each side holds one descriptor per connection; keep headroom for everything else (the
    // server takes connections only up to its limit less 1,024 descriptors of its own).
    let limit = fd_limit();
    let n = match limit {
        Some(l) if wanted + 1200 > l => {
            let n = l.saturating_sub(1200).max(100);
            eprintln!("idle: the open-file limit is {l}: {n} connections instead of {wanted}");
            n
        }
        _ => wanted,
    };
    let server = Server::start(args, &[]).await?;
    let users: Vec<String> = (0..n.div_ceil(100)).map(|i| format!("i{i}")).collect();
    let tokens = server.tokens(&users).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss()?;
    let mut conns: Vec<Ws> = Vec::with_capacity(n);
    let mut batch = JoinSet::new();
    let addr = server.addr;
    for i in 0..n {
        let t = tokens[i / 100].clone();
        batch.spawn(async move { client::connect(addr, &t, i, "?catch_up=false").await });
        if batch.len() >= 256 || i + 1 == n {
            while let Some(r) = batch.join_next().await {
                conns.push(r??);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss()?;
    // Every connection is a registered session (the server's own count).
    let sessions = server
        .metrics()
        .await?
        .lines()
        .find_map(|l| l.strip_prefix("tidings_ws_sessions "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(-1.0);
    // A sample of connections must still be alive and answering.
    let mut alive = 0;
    for ws in conns.iter_mut().step_by((n / 100).max(1)) {
        client::send(ws, &json!({"type": "ping"})).await?;
        if let Ok(Ok(Some(v))) =
            tokio::time::timeout(Duration::from_secs(10), client::next(ws)).await
            && v["type"] == "pong"
        {
            alive += 1;
        }
    }
    let sampled = conns.iter().step_by((n / 100).max(1)).count();
    let per_conn = after.saturating_sub(before) as f64 / n as f64;
    drop(conns);
    server.stop().await;
    Ok(json!({
        "scenario": "idle",
        "connections": n,
        "connections_wanted": wanted,
        "fd_limit": limit,
        "rss_before_mib": before as f64 / 1048576.0,
        "rss_after_mib": after as f64 / 1048576.0,
        "rss_bytes_per_connection": per_conn.round(),
        "sampled_pings_answered": format!("{alive}/{sampled}"),
        "sessions_registered": sessions,
        "correct": alive == sampled && sessions == n as f64,
    }))
}
