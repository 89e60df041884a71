//! `peers` (feature `peers`): the same durable-send workload against the engines a user would
//! otherwise reach for, started here on 127.0.0.1 from their Debian packages
//! (`benches/peers/run.sh` installs them), plus a raw `write + fdatasync` baseline of the disk:
//!
//! - Redis with `appendonly yes` and `appendfsync always`: `XADD` to a stream, one
//!   subscriber reading it with `XREAD BLOCK`.
//! - NATS JetStream, file storage: publish and wait for the ack, one pull consumer. nats-server
//!   2.9 (Debian 12) has no `sync_interval` setting: it acknowledges before its data is fsynced
//!   (it syncs on a timer), so it is measured at a weaker durability level — said in the table.
//! - tidings: the `send` scenario at saturation.
//!
//! Same payload size (~200 bytes), same number of connections and in-flight requests per
//! connection, connected before the clock starts. Timed: the durable writes alone, as for
//! tidings (whose recipients are offline in `send`: nothing is delivered during its run). Each
//! peer's consumer then reads everything back; check: it received every acknowledged message
//! (tidings': each channel's head is its acknowledged count).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::Args;
use crate::stats::{hist, summary};

const WINDOW: usize = 64;
/// How long a peer's consumer may take, after the senders stop, to read every acknowledged
/// message (a check, not a measurement: a consumer slower than its producer catches up here;
/// NATS' pull consumer once needed more than 30 s on this box).
const CONSUME_GRACE: Duration = Duration::from_secs(180);

fn payload() -> Vec<u8> {
    vec![b'x'; 200]
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("nothing listening on port {port}")
}

fn spawn(cmd: &mut Command, what: &str) -> anyhow::Result<Child> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {what} (run benches/peers/run.sh, which installs it)"))
}

fn result(name: &str, acked: u64, secs: f64, h: &Histogram<u64>, consumed: u64) -> Value {
    json!({
        "engine": name,
        "msgs_per_s": (acked as f64 / secs).round(),
        "latency": summary(h),
        "acked": acked,
        "consumed": consumed,
        "correct": consumed == acked && acked > 0,
    })
}

async fn redis(conns: usize, secs: f64) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let _server = spawn(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir.path()),
        "redis-server",
    )?;
    wait_port(port).await?;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    // Connected before the clock starts, as tidings' clients are.
    let mut cons = Vec::with_capacity(conns);
    for _ in 0..conns {
        cons.push(client.get_multiplexed_async_connection().await?);
    }
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for con in cons {
        tasks.spawn(async move {
            let mut h = hist();
            let mut acked = 0u64;
            let mut inflight = FuturesUnordered::new();
            let body = payload();
            loop {
                while Instant::now() < stop && inflight.len() < WINDOW {
                    let mut c = con.clone();
                    let body = body.clone();
                    inflight.push(async move {
                        let t0 = Instant::now();
                        let r: redis::RedisResult<String> = redis::cmd("XADD")
                            .arg("s")
                            .arg("*")
                            .arg("p")
                            .arg(body)
                            .query_async(&mut c)
                            .await;
                        (t0, r)
                    });
                }
                let Some((t0, r)) = inflight.next().await else {
                    break;
                };
                r?;
                acked += 1;
                h.saturating_record(t0.elapsed().as_micros().max(1) as u64);
            }
            Ok::<_, anyhow::Error>((h, acked))
        });
    }
    let (h, acked) = gather(&mut tasks).await?;
    let took = started.elapsed().as_secs_f64();
    // The subscriber: reads the stream until told how many to expect.
    let (total_tx, mut total_rx) = tokio::sync::watch::channel(None::<u64>);
    let mut sub = client.get_multiplexed_async_connection().await?;
    let subscriber = tokio::spawn(async move {
        let mut last = "0-0".to_string();
        let mut seen = 0u64;
        loop {
            if let Some(t) = *total_rx.borrow_and_update()
                && seen >= t
            {
                return Ok::<u64, anyhow::Error>(seen);
            }
            let reply: redis::streams::StreamReadReply = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(10_000)
                .arg("BLOCK")
                .arg(200)
                .arg("STREAMS")
                .arg("s")
                .arg(&last)
                .query_async(&mut sub)
                .await
                .unwrap_or_default();
            for k in reply.keys {
                for id in k.ids {
                    seen += 1;
                    last = id.id;
                }
            }
        }
    });
    let _ = total_tx.send(Some(acked));
    let consumed = tokio::time::timeout(CONSUME_GRACE, subscriber).await???;
    Ok(result(
        "redis (XADD, appendfsync always)",
        acked,
        took,
        &h,
        consumed,
    ))
}

async fn nats(conns: usize, secs: f64) -> anyhow::Result<Value> {
    use async_nats::jetstream;
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let _server = spawn(
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "--jetstream"])
            .arg("--store_dir")
            .arg(dir.path()),
        "nats-server",
    )?;
    wait_port(port).await?;
    let url = format!("nats://127.0.0.1:{port}");
    let js = jetstream::new(async_nats::connect(&url).await?);
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench".into()],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("reader".into()),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(jetstream::new(async_nats::connect(&url).await?));
    }
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for js in clients {
        tasks.spawn(async move {
            let mut h = hist();
            let mut acked = 0u64;
            let mut inflight = FuturesUnordered::new();
            let body = bytes::Bytes::from(payload());
            loop {
                while Instant::now() < stop && inflight.len() < WINDOW {
                    let t0 = Instant::now();
                    let ack = js.publish("bench", body.clone()).await?;
                    inflight.push(async move { (t0, ack.await) });
                }
                let Some((t0, r)) = inflight.next().await else {
                    break;
                };
                r?;
                acked += 1;
                h.saturating_record(t0.elapsed().as_micros().max(1) as u64);
            }
            Ok::<_, anyhow::Error>((h, acked))
        });
    }
    let (h, acked) = gather(&mut tasks).await?;
    let took = started.elapsed().as_secs_f64();
    let (total_tx, mut total_rx) = tokio::sync::watch::channel(None::<u64>);
    let reader = tokio::spawn(async move {
        let mut messages = consumer.messages().await?;
        let mut seen = 0u64;
        loop {
            if let Some(t) = *total_rx.borrow_and_update()
                && seen >= t
            {
                return Ok::<u64, anyhow::Error>(seen);
            }
            tokio::select! {
                m = messages.next() => match m {
                    Some(Ok(_)) => seen += 1,
                    // The server was too busy to send its idle heartbeat in time (the
                    // publishers saturate the box); the stream goes on.
                    Some(Err(e)) if e.kind() == jetstream::consumer::pull::MessagesErrorKind::MissingHeartbeat => {}
                    Some(Err(e)) => anyhow::bail!("consumer: {e}"),
                    None => anyhow::bail!("consumer ended"),
                },
                _ = total_rx.changed() => {}
            }
        }
    });
    let _ = total_tx.send(Some(acked));
    let consumed = tokio::time::timeout(CONSUME_GRACE, reader).await???;
    Ok(result(
        "nats jetstream (file; acks before fsync: 2.9 has no sync_interval)",
        acked,
        took,
        &h,
        consumed,
    ))
}

async fn gather(
    tasks: &mut JoinSet<anyhow::Result<(Histogram<u64>, u64)>>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut h = hist();
    let mut acked = 0;
    while let Some(r) = tasks.join_next().await {
        let (th, n) = r??;
        h.add(&th)?;
        acked += n;
    }
    Ok((h, acked))
}

/// One 200-byte record per `write + fdatasync`, for `secs`: the disk's durable-append rate with
/// no batching at all.
async fn raw_disk(secs: f64) -> anyhow::Result<Value> {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let dir = tempfile::tempdir()?;
        let mut f = std::fs::File::create(dir.path().join("raw"))?;
        let body = payload();
        let mut h = hist();
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed().as_secs_f64() < secs {
            let t0 = Instant::now();
            f.write_all(&body)?;
            f.sync_data()?;
            h.saturating_record(t0.elapsed().as_micros().max(1) as u64);
            n += 1;
        }
        let took = started.elapsed().as_secs_f64();
        Ok(json!({
            "engine": "raw write + fdatasync, one record each",
            "msgs_per_s": (n as f64 / took).round(),
            "latency": summary(&h),
            "correct": true,
        }))
    })
    .await?
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<Value> {
    let conns = if args.smoke { 4 } else { 64 };
    let secs = args.secs();
    eprintln!("peers: raw disk");
    let raw = raw_disk(secs).await?;
    eprintln!("peers: redis");
    let redis = redis(conns, secs).await?;
    eprintln!("peers: nats");
    let nats = nats(conns, secs).await?;
    eprintln!("peers: tidings");
    let tidings = crate::scenarios::send::run(args).await?;
    let ours = tidings["saturation"]["latency"]["msgs_per_s"]
        .as_f64()
        .unwrap_or(0.0);
    let ratio = |peer: &Value| ours / peer["msgs_per_s"].as_f64().unwrap_or(f64::NAN);
    let correct = [&raw, &redis, &nats, &tidings]
        .iter()
        .all(|r| r["correct"] == true);
    println!("| engine | msgs/s | p99 µs | tidings / engine |");
    println!("|---|---|---|---|");
    for peer in [&raw, &redis, &nats] {
        println!(
            "| {} | {} | {} | {:.2} |",
            peer["engine"].as_str().unwrap_or_default(),
            peer["msgs_per_s"],
            peer["latency"]["p99_us"],
            ratio(peer)
        );
    }
    println!(
        "| tidings (send, saturation) | {} | {} | 1.00 |",
        ours, tidings["saturation"]["latency"]["p99_us"]
    );
    Ok(json!({
        "scenario": "peers",
        "connections": conns,
        "in_flight_per_connection": WINDOW,
        "raw_disk": raw,
        "redis": redis,
        "nats": nats,
        "tidings": tidings["saturation"],
        "ratio_to_redis": ratio(&redis),
        "ratio_to_nats": ratio(&nats),
        "correct": correct,
    }))
}
