//! `tidings trace`: a message's timeline from a data directory, as the admin's
//! `GET /v1/channels/{ref}/messages/{seq}/trace` answers it — the same lookup
//! (`server::http::admin_trace_plan` and `trace_planned`, which the HTTP handler calls), the
//! same JSON, pretty-printed.
//!
//! Read-only, as `verify`: the log is opened read-only, the newest snapshot of this log's
//! history is loaded into a temporary directory and caught up with the log there, and the
//! message index sidecar holding the message's entry, when the snapshot had it in one, is
//! linked into that directory from the data directory (read in place). Nothing in the data
//! directory is created or changed, so it works on a stopped server's directory and while the
//! server runs (the trace is then as of the log's end when it was opened). It reads local
//! segments only, as `verify` does. The server's sampled push records are kept in its memory
//! only: `pushes` is always empty here.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use tidings_log::Log;
use tidings_projections::Projections;
use tidings_projections::msgindex::{Located, sidecar_path};
use tidings_projections::trace::Trace;

use crate::data::DataDir;
use crate::server::http::{admin_channel, admin_trace_plan, trace_planned};

/// Options of `tidings trace`.
#[derive(Debug, clap::Args)]
pub(crate) struct TraceArgs {
    /// The data directory.
    #[arg(long, env = "TIDINGS_DATA", default_value = "data", value_parser = crate::cli::data_dir)]
    data: std::path::PathBuf,
    /// The channel, as the admin names it over HTTP: a group id, or a person channel as
    /// p:{uid_a}:{uid_b} (in either order).
    #[arg(value_parser = parse_channel)]
    channel: String,
    /// The message's seq in the channel (from 1).
    seq: u64,
}

/// The canonical id of the channel argument; a reference the admin's HTTP call refuses
/// (`@uid`, an invalid id) is a usage error.
pub(crate) fn parse_channel(reference: &str) -> Result<String, String> {
    admin_channel(reference).map_err(|e| e.message)
}

pub(crate) async fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let data = DataDir::new(&args.data);
    super::ensure_segments(&data, "trace")?;
    let log = super::open_read_only(&data).await?;
    // The read-only view's valid data ends quietly at damage in the active segment that valid
    // batches follow (as `verify` says): a trace would leave out the records after it — the
    // message itself, or acks of it — and call its scan complete.
    if let Err(e) = log.read(log.next_offset(), 0).await {
        log.close().await?;
        anyhow::bail!(
            "damaged log: {e} (the records after it cannot be read, and a trace would leave \
             them out; `tidings inspect` lists the damage)"
        );
    }
    let traced = trace(&data, &log, &args.channel, args.seq).await;
    let closed = log.close().await;
    let t = traced?;
    closed?;
    super::out!("{}", serde_json::to_string_pretty(&t)?);
    Ok(ExitCode::SUCCESS)
}

/// The trace of message `seq` in `channel` (canonical), from the state brought up to the log's
/// end in a temporary directory.
async fn trace(data: &DataDir, log: &Log, channel: &str, seq: u64) -> anyhow::Result<Trace> {
    let tmp = tempfile::tempdir()?;
    let mut p = super::load_read_only(data, log, tmp.path()).await?;
    p.catch_up(log, |_, _| {}).await.map_err(super::explain)?;
    link_sidecar(&data.projections().join("index"), &p, channel, seq)?;
    // A message below the log's first offset has expired, as the server answers it, unless
    // the directory was tiered: then below where the store's history starts, as its local
    // manifest copy says (the retention removed them from the store too; until 2026-11-30
    // this said `history_unavailable` where the server says `message_expired`), and the
    // offsets between that and the local segments are in the store, which this reads not.
    let (expired_below, expiring) = match data.tier_marker() {
        Some(_) if log.tier().is_none() => {
            let copy = super::tier::local_manifest(&data.log())?;
            let start = copy.and_then(|m| m.history_start()).unwrap_or(0);
            (start, false)
        }
        _ => {
            let expiring = data.expires_below_log_start(log);
            (if expiring { log.start_offset() } else { 0 }, expiring)
        }
    };
    // The sidecar read through its link is named as the data directory's file: the
    // temporary directory is gone once the command ends (found by a QA round).
    let (linked, real) = (
        p.index_files().dir().display().to_string(),
        std::path::absolute(data.projections().join("index"))?
            .display()
            .to_string(),
    );
    let refused =
        |code, message: &str| refused(channel, seq, code, &message.replace(&linked, &real));
    let plan = admin_trace_plan(&p, channel, seq, expired_below)
        .map_err(|e| refused(e.code, &e.message))?;
    let t = trace_planned(log, &plan, None, expiring)
        .await
        .map_err(|e| refused(e.code, &e.message))?;
    Ok(t)
}

/// Links into `p`'s (temporary) index directory the sidecar of `index_dir` (the data
/// directory's) that holds the entry of `(channel, seq)`, when the loaded snapshot had it in
/// one: a symbolic link to the file (by its absolute path, whatever `--data` is), read in
/// place. A sidecar the catch-up wrote is in the temporary directory already.
fn link_sidecar(index_dir: &Path, p: &Projections, channel: &str, seq: u64) -> anyhow::Result<()> {
    let to_dir = p.index_files().dir();
    for located in p.state.index.locate(channel, seq, seq) {
        let Located::Run(run) = located else {
            continue;
        };
        let link = sidecar_path(to_dir, run.file);
        if link.exists() {
            continue;
        }
        let file = std::path::absolute(sidecar_path(index_dir, run.file))?;
        anyhow::ensure!(
            file.is_file(),
            "the message index sidecar {} is missing (`tidings rebuild` writes it again from \
             the log)",
            file.display()
        );
        std::os::unix::fs::symlink(&file, &link)
            .with_context(|| format!("linking {} to {}", link.display(), file.display()))?;
    }
    Ok(())
}

/// What the HTTP call would answer as an error (`channel_not_found`, `message_not_found`,
/// `message_expired`, or the log's), in words naming the message.
fn refused(channel: &str, seq: u64, code: &str, message: &str) -> anyhow::Error {
    let mut text = format!("message {seq} in channel {channel:?}: {code}: {message}");
    if code == "history_unavailable" {
        text.push_str(" (`tidings trace` reads local segments only)");
    }
    anyhow::anyhow!(text)
}
