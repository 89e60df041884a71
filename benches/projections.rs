//! Projection benchmark: rebuild throughput from a large local log, and resident memory after
//! rebuilding 1M vs 10M messages in 1,000 channels (it must stay flat: projection memory grows
//! with channels and users, not messages).
//!
//! Full run: `cargo bench --bench projections` (builds the logs once under `target/`).
//! Options after `--`: `--events N` (default 10,000,000), `--runs N` (rebuilds to take the
//! median of; default 5), `--keep` (keep the generated logs).
//! Smoke run (CI): `cargo test --bench projections`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bytes::Bytes;
use tidings_log::{FsyncPolicy, Log, LogOptions};
use tidings_projections::{
    ChannelFlags, Envelope, Event, FLAG_JSON_PAYLOAD, ProjectionConfig, Projections,
};

/// The allocator the `tidings` binary (and so `tidings rebuild`) runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHANNELS: u64 = 1000;
const MEMBERS: u64 = 20;

/// The events of a busy server: 1,000 channels of 20 members, then messages round-robin over
/// the channels with a cursor advance after every 10th message.
fn event(i: u64, setup: u64) -> Event {
    if i < CHANNELS {
        return Event::ChannelCreated {
            channel: format!("ch{i}"),
            flags: ChannelFlags::default(),
        };
    }
    if i < setup {
        let c = i - CHANNELS;
        return Event::MembersSubscribed {
            channel: format!("ch{c}"),
            uids: (0..MEMBERS)
                .map(|m| format!("u{}", (c * 7 + m) % 5000))
                .collect(),
        };
    }
    let n = i - setup;
    let c = n % CHANNELS;
    let seq = n / CHANNELS + 1;
    if n % 10 == 9 {
        return Event::CursorAdvanced {
            uid: format!("u{}", (c * 7 + n % MEMBERS) % 5000),
            channel: format!("ch{c}"),
            delivered_seq: Some(seq),
            read_seq: Some(seq.saturating_sub(1)),
        };
    }
    Event::MessageSent {
        channel: format!("ch{c}"),
        from: format!("u{}", (c * 7 + n % MEMBERS) % 5000),
        client_msg_id: format!("m{n}"),
        seq,
        message_id: n,
        payload: Bytes::from(format!(
            "{{\"text\":\"message number {n} in a busy channel\"}}"
        )),
        flags: FLAG_JSON_PAYLOAD,
    }
}

/// Messages in a log of `events` events are about 90% of the events after setup.
async fn build_log(dir: &Path, events: u64) {
    let setup = 2 * CHANNELS;
    let log = Log::open(dir, LogOptions::default().with_fsync(FsyncPolicy::Never))
        .await
        .unwrap();
    let mut next = log.next_offset();
    if next < events {
        eprintln!("building a log of {events} events in {}", dir.display());
        // The seqs are a pure function of the index, so a partially built log continues.
        while next < events {
            let end = (next + 4096).min(events);
            let batch: Vec<Bytes> = (next..end)
                .map(|i| Envelope::new(1_764_000_000_000 + i, event(i, setup)).encode())
                .collect();
            log.append(batch).await.unwrap();
            next = end;
        }
    }
    log.close().await.unwrap();
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn rebuild(log_dir: &Path) -> (u64, f64, Projections) {
    let log = Log::open(log_dir, LogOptions::default()).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut p = Projections::empty(out.path(), ProjectionConfig::default()).unwrap();
    let t = Instant::now();
    let n = p.catch_up(&log, |_, _| {}).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    log.close().await.unwrap();
    (n, secs, p)
}

fn log_dir(events: u64) -> PathBuf {
    PathBuf::from(format!("target/bench-projections-{events}"))
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Child mode: rebuild one log and report the resident set size.
    if let Some(i) = argv.iter().position(|a| a == "--rss-child") {
        let dir = PathBuf::from(&argv[i + 1]);
        let (n, _, p) = rt.block_on(rebuild(&dir));
        let messages: u64 = p.state.heads.heads.values().map(|h| h.last_seq).sum();
        println!("{n} {messages} {}", rss_kib());
        return;
    }
    let smoke = !argv.iter().any(|a| a == "--bench");
    let events: u64 = argv
        .iter()
        .position(|a| a == "--events")
        .map(|i| argv[i + 1].parse().unwrap())
        .unwrap_or(if smoke { 30_000 } else { 10_000_000 });
    let keep = argv.iter().any(|a| a == "--keep");

    let tmp = tempfile::tempdir().unwrap();
    let big = if smoke {
        tmp.path().join("big")
    } else {
        log_dir(events)
    };
    rt.block_on(build_log(&big, events));
    // The machine's speed varies from run to run: rebuild several times, report the median.
    let runs: usize = argv
        .iter()
        .position(|a| a == "--runs")
        .map(|i| argv[i + 1].parse().unwrap())
        .unwrap_or(if smoke { 1 } else { 5 });
    let mut rates = Vec::new();
    let mut last = None;
    for _ in 0..runs.max(1) {
        let (n, secs, p) = rt.block_on(rebuild(&big));
        rates.push(n as f64 / secs);
        println!(
            "  rebuild of {n} events: {secs:.2} s, {:.0} events/s",
            n as f64 / secs
        );
        last = Some((n, p));
    }
    let (n, p) = last.unwrap();
    rates.sort_by(f64::total_cmp);
    println!(
        "\nrebuild of {n} events (1,000 channels, 20 members each), median of {}: {:.0} events/s (range {:.0}–{:.0})",
        rates.len(),
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
    let messages: u64 = p.state.heads.heads.values().map(|h| h.last_seq).sum();
    // A fast wrong rebuild does not count: every event applied, and the state is what the
    // log's events make (a cursor event every 10th after setup, messages otherwise).
    let after_setup = events
        .checked_sub(2 * CHANNELS)
        .expect("--events must cover the setup (2,000 events)");
    assert_eq!(n, events, "events applied");
    assert_eq!(p.state.subs.channels.len() as u64, CHANNELS, "channels");
    assert_eq!(
        messages,
        after_setup - after_setup / 10,
        "messages in the state"
    );
    println!(
        "  state: {} channels, {} users with cursors, {messages} messages, {} index sidecars",
        p.state.subs.channels.len(),
        p.state.cursors.by_user.len(),
        p.state.index.sidecars.len()
    );
    drop(p);

    // Resident memory after rebuilding a tenth of the events vs all of them, each in a fresh
    // process so that nothing else is in the number.
    let small_events = (events / 10).max(3 * CHANNELS);
    let small = if smoke {
        tmp.path().join("small")
    } else {
        log_dir(small_events)
    };
    rt.block_on(build_log(&small, small_events));
    let exe = std::env::current_exe().unwrap();
    let mut rows = Vec::new();
    for dir in [&small, &big] {
        let out = Command::new(&exe)
            .args(["--rss-child", dir.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() == 3 {
            rows.push((v[0], v[1], v[2]));
        }
    }
    for (n, messages, rss) in &rows {
        println!(
            "  RSS after rebuilding {n} events ({messages} messages): {:.1} MiB",
            *rss as f64 / 1024.0
        );
    }
    if rows.len() == 2 {
        println!(
            "  RSS ratio (10x the messages): {:.2}",
            rows[1].2 as f64 / rows[0].2.max(1) as f64
        );
    }
    if !smoke && !keep {
        let _ = std::fs::remove_dir_all(&big);
        let _ = std::fs::remove_dir_all(&small);
    }
    if smoke {
        assert_eq!(rows.len(), 2, "the RSS child runs worked");
        println!("smoke run: 1 passed, 0 failed");
    }
}
