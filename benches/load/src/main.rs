//! `tidings-load`: drives a real `tidings serve` process with real WebSocket clients and prints
//! JSON results. Every scenario ends with a correctness check (each expected message arrived
//! exactly once), so a fast wrong answer fails.
//!
//! ```sh
//! cargo build --release && cargo run --release -p tidings-load -- all
//! cargo run --release -p tidings-load -- send --json send.json
//! cargo run -p tidings-load -- all --smoke          # seconds, tiny sizes (CI)
//! ```
//!
//! The server is started from `--tidings-bin` (default: the `tidings` binary beside this one)
//! on a fresh data directory, with limits raised for load (see [`server`]). Clients connect from
//! several 127.0.0.x source addresses so that many connections do not exhaust one address's
//! ports.

mod client;
mod scenarios;
mod server;
mod stats;
mod timeline;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The same allocator as the server: the load generator shares the 2 cores with it, so its
/// own CPU cost matters.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "tidings-load", about = "Load generator for tidings")]
pub(crate) struct Args {
    /// Scenarios to run: send, fanout, large-group, offline-sync, idle, cold, all; and peers (with
    /// the `peers` feature, see benches/peers/run.sh).
    #[arg(required = true)]
    scenarios: Vec<String>,
    /// Tiny sizes, a few seconds in all (CI keeps the harness working with it).
    #[arg(long)]
    pub(crate) smoke: bool,
    /// Write the results (a JSON array) here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The server binary (default: `tidings` next to this binary).
    #[arg(long)]
    pub(crate) tidings_bin: Option<PathBuf>,
    /// Seconds per measured phase (default 10; smoke 1).
    #[arg(long)]
    pub(crate) secs: Option<f64>,
    /// Fixed send rate for the latency measurement of `send` (msg/s).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) rate: u64,
    /// Connections for `idle` (default 100,000; smoke 500).
    #[arg(long)]
    pub(crate) idle_connections: Option<usize>,
    /// Members of the big group in `large-group` (default 100,000; smoke 2,000).
    #[arg(long)]
    pub(crate) large_group_members: Option<usize>,
    /// Online members in `fanout` (default 2,000; smoke 50).
    #[arg(long)]
    pub(crate) fanout_members: Option<usize>,
    /// Sends the `fanout` sender keeps in flight (a closed loop: with few in flight the rate
    /// is bound by the send→ack time on cores the receivers share).
    #[arg(long, default_value_t = 32)]
    pub(crate) fanout_window: u64,
    /// `fanout` at a fixed rate instead (messages/s, each delivered to every member), with up
    /// to `--fanout-window` in flight: the send→receive latency at a load below saturation,
    /// from the moment each send was due (a sender running late counts).
    #[arg(long)]
    pub(crate) fanout_rate: Option<f64>,
}

impl Args {
    pub(crate) fn secs(&self) -> f64 {
        self.secs.unwrap_or(if self.smoke { 1.0 } else { 10.0 })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidings-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tidings-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<bool> {
    let all = [
        "send",
        "fanout",
        "large-group",
        "offline-sync",
        "idle",
        "cold",
    ];
    let mut names: Vec<&str> = Vec::new();
    for s in &args.scenarios {
        if s == "all" {
            names.extend(all);
        } else if all.contains(&s.as_str()) || s == "peers" {
            names.push(s);
        } else {
            anyhow::bail!("unknown scenario {s:?}; one of {all:?} or all");
        }
    }
    let mut results = Vec::new();
    let mut ok = true;
    for name in names {
        eprintln!("== {name}");
        let result = match name {
            "send" => scenarios::send::run(args).await?,
            "fanout" => scenarios::fanout::run(args).await?,
            "large-group" => scenarios::large_group::run(args).await?,
            "offline-sync" => scenarios::offline_sync::run(args).await?,
            "cold" => scenarios::cold::run(args).await?,
            #[cfg(feature = "peers")]
            "peers" => scenarios::peers::run(args).await?,
            #[cfg(not(feature = "peers"))]
            "peers" => anyhow::bail!("peers needs the feature: benches/peers/run.sh"),
            "idle" => scenarios::idle::run(args).await?,
            other => anyhow::bail!("unknown scenario {other:?}"),
        };
        let passed = result["correct"].as_bool().unwrap_or(false);
        ok &= passed;
        println!("{}", serde_json::to_string(&result)?);
        if !passed {
            eprintln!("{name}: correctness check FAILED");
        }
        results.push(result);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
    }
    Ok(ok)
}
