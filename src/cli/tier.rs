//! `tidings tier status` and `tidings tier upload-now`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use tidings_log::tier::manifest::Manifest;
use tidings_log::{Log, LogError, LogOptions};

use crate::config::ServeArgs;
use crate::data::DataDir;

/// `tidings tier …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TierCmd {
    /// What is local, what is in the object store, and the upload lag (works while the server
    /// runs: it reads the log's local manifest copy).
    Status {
        /// The data directory.
        #[arg(long, env = "TIDINGS_DATA", default_value = "data")]
        data: std::path::PathBuf,
    },
    /// Uploads every sealed segment now (server stopped; while it runs, use
    /// `POST /v1/tier/upload`). Takes the same options as `serve`.
    UploadNow(Box<ServeArgs>),
}

pub(crate) async fn run(cmd: TierCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TierCmd::Status { data } => status(&DataDir::new(data)),
        TierCmd::UploadNow(args) => upload_now(*args).await,
    }
}

fn status(data: &DataDir) -> anyhow::Result<ExitCode> {
    let dir = data.log();
    let mut local: Vec<(u64, u64)> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing the log directory {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let base: u64 = name.strip_suffix(".log")?.parse().ok()?;
            Some((base, e.metadata().ok()?.len()))
        })
        .collect();
    local.sort();
    let Some(m) = local_manifest(&dir)? else {
        println!(
            "no tier manifest in {}: tiering is not configured, or nothing was uploaded yet",
            dir.display()
        );
        println!(
            "local: {} segments, {} bytes",
            local.len(),
            local.iter().map(|s| s.1).sum::<u64>()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let sealed = &local[..local.len().saturating_sub(1)];
    let lag: Vec<&(u64, u64)> = sealed.iter().filter(|(b, _)| !m.has(*b)).collect();
    println!("manifest epoch {} (owner {})", m.epoch, m.owner.id);
    println!(
        "remote: {} segments, {} bytes, offsets [{}, {})",
        m.segments.len(),
        m.segments.iter().map(|s| s.bytes).sum::<u64>(),
        m.segments.first().map_or(0, |s| s.base),
        m.end()
    );
    println!(
        "local:  {} segments, {} bytes (the newest is the active one; while a server runs, its file size includes preallocated zeros)",
        local.len(),
        local.iter().map(|s| s.1).sum::<u64>()
    );
    println!(
        "lag:    {} sealed segments, {} bytes not uploaded yet",
        lag.len(),
        lag.iter().map(|s| s.1).sum::<u64>()
    );
    Ok(ExitCode::SUCCESS)
}

/// The log's local copy of the tier manifest in `dir`; `None` when there is none (tiering is
/// not configured, or nothing was uploaded yet). One that cannot be read or decoded is an error
/// naming the file: taken for no manifest, it would hide the damage behind "not configured".
fn local_manifest(dir: &Path) -> anyhow::Result<Option<Manifest>> {
    let path = dir.join("tier-manifest.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("reading the tier manifest {}", path.display())));
        }
    };
    Manifest::decode(&bytes)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("the tier manifest {} does not decode: {e}", path.display()))
}

async fn upload_now(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.resolve()?;
    let data = DataDir::new(&config.data);
    // The directory's lock before the tier: opening the tier opens the block cache the
    // running server uses.
    let Some(_dir_lock) = data.try_lock()? else {
        anyhow::bail!(
            "the server is running: ask it instead (POST /v1/tier/upload with the admin key)"
        );
    };
    let Some(tier) = crate::server::tiering::open(&config, &data).await? else {
        anyhow::bail!("no object store is configured (tier.url)");
    };
    let opts = LogOptions::default()
        .with_fsync(config.log_fsync)
        .with_segment_bytes(config.log_segment_bytes)
        .with_tier(tier);
    let log = match Log::open(data.log(), opts).await {
        Ok(l) => l,
        Err(LogError::Locked { .. }) => anyhow::bail!(
            "the server is running: ask it instead (POST /v1/tier/upload with the admin key)"
        ),
        Err(e) => return Err(e.into()),
    };
    let result = log.upload_now().await;
    log.close().await?;
    let status = result?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(ExitCode::SUCCESS)
}
