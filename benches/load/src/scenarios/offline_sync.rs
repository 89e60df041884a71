//! `offline-sync`: a user in 100 channels is offline while 10,000 messages are sent (round
//! robin); then the user connects and the WebSocket catch-up delivers them. Measured: time from
//! connect to the last message. Check: every (channel, seq) exactly once, none missing.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Args;
use crate::client;
use crate::scenarios::{Until, payload, send_windowed};
use crate::server::Server;

pub(crate) async fn run(args: &Args) -> anyhow::Result<Value> {
    let (channels, messages) = if args.smoke { (10, 500) } else { (100, 10_000) };
    let server = Server::start(args, &[]).await?;
    let users = vec!["reader".to_string(), "writer".to_string()];
    for c in 0..channels {
        server.group(&format!("c{c}"), &users).await?;
    }
    let tokens = server.tokens(&users).await?;
    let base = Instant::now();
    let mut writer = client::connect(server.addr, &tokens[1], 1, "?catch_up=false").await?;
    let errors = send_windowed(&mut writer, 64, Until::Count(messages), |i| {
        json!({"type": "send", "client_msg_id": format!("o{i}"), "channel": format!("c{}", i % channels), "payload": payload(base, i)})
    })
    .await?
    .errors;
    let started = Instant::now();
    let mut reader = client::connect(server.addr, &tokens[0], 0, "").await?;
    let mut seen = HashSet::new();
    let mut duplicates = 0u64;
    while (seen.len() as u64) < messages {
        let v = tokio::time::timeout(Duration::from_secs(30), client::next(&mut reader))
            .await??
            .ok_or_else(|| anyhow::anyhow!("the reader's connection ended"))?;
        if v["type"] == "message" {
            let key = (
                v["channel"].as_str().unwrap_or_default().to_owned(),
                v["seq"].as_u64().unwrap_or(0),
            );
            if !seen.insert(key) {
                duplicates += 1;
            }
        }
    }
    let took = started.elapsed();
    // Nothing more may come: a late duplicate counts too.
    while let Ok(Ok(Some(v))) =
        tokio::time::timeout(Duration::from_millis(300), client::next(&mut reader)).await
    {
        if v["type"] == "message" {
            duplicates += 1;
        }
    }
    let per_channel = messages / channels;
    let missing = (0..channels)
        .flat_map(|c| (1..=per_channel).map(move |s| (format!("c{c}"), s)))
        .filter(|k| !seen.contains(k))
        .count() as u64;
    let complete = missing == 0;
    server.stop().await;
    Ok(json!({
        "scenario": "offline-sync",
        "channels": channels,
        "messages": messages,
        "catch_up_ms": took.as_secs_f64() * 1e3,
        "messages_per_s": (messages as f64 / took.as_secs_f64()).round(),
        "lost": missing,
        "duplicated": duplicates,
        "correct": errors == 0 && duplicates == 0 && complete,
    }))
}
