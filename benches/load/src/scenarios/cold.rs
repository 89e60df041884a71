//! `cold`: history pages served from the object store against hot ones. The server tiers to a
//! real S3 server (`s3s-fs` on 127.0.0.1, found like the tests find it) with no local
//! retention, so every sealed segment is read back through ranged GETs and the foyer cache.
//! Measured: `GET /v1/channels/{id}/messages?after_seq=N&limit=100` for old pages the first
//! time (object store), the second time (cache), and for recent pages (local disk). Check:
//! every page holds exactly the 100 seqs asked for.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::Args;
use crate::client;
use crate::scenarios::{Until, payload, send_windowed};
use crate::server::Server;
use crate::stats::{hist, summary};

fn s3s_binary() -> PathBuf {
    std::env::var_os("TIDINGS_S3S_FS")
        .map(PathBuf::from)
        .or_else(|| {
            let p =
                PathBuf::from(std::env::var("HOME").ok()?).join(".cache/tidings-tools/bin/s3s-fs");
            p.exists().then_some(p)
        })
        .unwrap_or_else(|| PathBuf::from("s3s-fs"))
}

/// Fetches one page and checks it.
async fn page(server: &Server, from: u64) -> anyhow::Result<(Duration, bool)> {
    let started = Instant::now();
    let v = server
        .admin(
            reqwest::Method::GET,
            &format!("/v1/channels/h/messages?after_seq={from}&limit=100"),
            None,
        )
        .await?;
    let took = started.elapsed();
    let seqs: Vec<u64> = v["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["seq"].as_u64()).collect())
        .unwrap_or_default();
    Ok((took, seqs == (from + 1..=from + 100).collect::<Vec<_>>()))
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<Value> {
    let (messages, samples, segment, block) = if args.smoke {
        (2_000u64, 3u64, "65536", "65536")
    } else {
        // Samples ~4,800 messages (~1.2 MB) apart: no two in one 1 MiB block, so every
        // first read is a GET (at 60,000 they were ~0.6 MB apart and some first reads hit a
        // block an earlier sample had cached).
        (120_000, 20, "2097152", "1048576")
    };
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("bkt"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _s3 = tokio::process::Command::new(s3s_binary())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "load", "--secret-key", "load-secret"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting s3s-fs (scripts/test.sh installs it; or set TIDINGS_S3S_FS)")?;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let server = Server::start(
        args,
        &[
            "--tier-url",
            "s3://bkt/tidings",
            "--tier-endpoint",
            &endpoint,
            "--tier-access-key-id",
            "load",
            "--tier-secret-access-key",
            "load-secret",
            "--tier-local-retention-bytes",
            "0",
            "--tier-upload-interval-secs",
            "1",
            "--log-segment-bytes",
            segment,
            "--tier-block-bytes",
            block,
        ],
    )
    .await?;
    server.group("h", &["writer".to_string()]).await?;
    let token = server.token("writer").await?;
    let mut ws = client::connect(server.addr, &token, 0, "?catch_up=false").await?;
    let base = Instant::now();
    let errors = send_windowed(&mut ws, 64, Until::Count(messages), |i| {
        json!({"type": "send", "client_msg_id": format!("h{i}"), "channel": "h", "payload": payload(base, i)})
    })
    .await?
    .errors;
    anyhow::ensure!(errors == 0, "{errors} sends failed");
    // Everything sealed goes up; nothing sealed stays local.
    server
        .admin(reqwest::Method::POST, "/v1/tier/upload", None)
        .await?;
    let status = server.admin(reqwest::Method::GET, "/v1/tier", None).await?;
    let remote_end = status["status"]["remote_end"].as_u64().unwrap_or(0);
    // Old pages: spread over the first 80% of the channel (all in uploaded segments).
    let old = (messages * 8 / 10).saturating_sub(100);
    let (mut first, mut second, mut hot) = (hist(), hist(), hist());
    let mut correct = remote_end > 0;
    let gets = || async {
        let t = server.admin(reqwest::Method::GET, "/v1/tier", None).await?;
        anyhow::Ok(t["status"]["gets"].as_u64().unwrap_or(0))
    };
    for i in 0..samples {
        let from = i * old / samples;
        // Each first read goes to the object store: at least one GET of its own.
        let before = gets().await?;
        let (t1, ok1) = page(&server, from).await?;
        correct &= gets().await? > before;
        let (t2, ok2) = page(&server, from).await?;
        let (t3, ok3) = page(&server, messages - 100 - (i % 5) * 10).await?;
        correct &= ok1 && ok2 && ok3;
        first.saturating_record(t1.as_micros().max(1) as u64);
        second.saturating_record(t2.as_micros().max(1) as u64);
        hot.saturating_record(t3.as_micros().max(1) as u64);
    }
    let tier = server.admin(reqwest::Method::GET, "/v1/tier", None).await?;
    server.stop().await;
    Ok(json!({
        "scenario": "cold",
        "messages": messages,
        "remote_segments": tier["status"]["remote_segments"],
        "ranged_gets": tier["status"]["gets"],
        "first_read_cold": summary(&first),
        "second_read_cached": summary(&second),
        "hot_read": summary(&hot),
        "correct": correct,
    }))
}
