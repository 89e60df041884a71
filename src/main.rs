//! The `tidings` binary: the server and the operator CLI.

mod cli;
mod config;
mod data;
mod render;
mod server;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: under load glibc's allocator (free-list consolidation,
/// arena locks) took about a fifth of the server's CPU in profiles of the send path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tidings: an instant-messaging server on a checksummed commit log.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the server.
    // A flag given twice takes its last value (a wrapper script's defaults, then the user's).
    #[command(args_override_self = true)]
    Serve(Box<config::ServeArgs>),
    /// Print events as NDJSON, one per line.
    Replay(cli::replay::ReplayArgs),
    /// Rebuild the projections from the log and write a fresh snapshot (server stopped).
    Rebuild(cli::rebuild::RebuildArgs),
    /// Rebuild from offset 0 in memory and compare with the newest snapshot + the log after it.
    Verify(cli::verify::VerifyArgs),
    /// List segments, snapshots and index sidecars, and check every checksum.
    Inspect(cli::inspect::InspectArgs),
    /// Purge the payloads of recalled messages from sealed log segments (server stopped).
    Compact(cli::compact::CompactArgs),
    /// Print a message's trace (JSON), as the admin's HTTP trace call answers it.
    ///
    /// Read-only, as `verify`: it works on a stopped server's data directory and while the
    /// server runs, and changes nothing in the data directory. `pushes` is always empty: the
    /// server keeps its sampled push records in memory only. Exits 1 for a channel or a
    /// message the data directory does not hold (channel_not_found, message_not_found).
    Trace(cli::trace::TraceArgs),
    /// Tiered storage: status, upload now, garbage collection.
    #[command(subcommand)]
    Tier(cli::tier::TierCmd),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Cmd::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(async move {
        match cli.command {
            Cmd::Serve(args) => {
                server::serve(args.resolve()?).await?;
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Replay(a) => cli::replay::run(a).await,
            Cmd::Rebuild(a) => cli::rebuild::run(a).await,
            Cmd::Verify(a) => cli::verify::run(a).await,
            Cmd::Inspect(a) => cli::inspect::run(a).await,
            Cmd::Compact(a) => cli::compact::run(a).await,
            Cmd::Trace(a) => cli::trace::run(a).await,
            Cmd::Tier(t) => cli::tier::run(t).await,
        }
    });
    // Not waited for past a moment: what is still running once the command has returned (the
    // server stopped, its log closed and its snapshot written) is a call to an object store
    // that does not answer, bounded by its own timeout; a stop under a stopped store ran on
    // 1.3 s past its grace period for it (found by a QA round).
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    let code = code?;
    // A report the CLI could not write whole is a failure, whatever it found.
    Ok(if cli::stdout_failed() {
        ExitCode::FAILURE
    } else {
        code
    })
}
