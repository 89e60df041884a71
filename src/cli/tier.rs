//! `tidings tier status` and `tidings tier upload-now`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use tidings_log::tier::manifest::Manifest;
use tidings_log::{Log, LogError, LogOptions, SegmentInfo};

use crate::config::ServeArgs;
use crate::data::DataDir;

/// `tidings tier …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TierCmd {
    /// What is local, what is in the object store, what is only local, the upload lag, and
    /// whether the store holds another history of the log (works while the server runs: it
    /// reads the log's local manifest copy, not the store; exit 1 when the copy shows
    /// divergence).
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
        TierCmd::Status { data } => status(&DataDir::new(data)).await,
        TierCmd::UploadNow(args) => upload_now(*args).await,
    }
}

async fn status(data: &DataDir) -> anyhow::Result<ExitCode> {
    let dir = data.log();
    // Named when missing (opening the view would say only that the directory is not there).
    std::fs::read_dir(&dir)
        .with_context(|| format!("listing the log directory {}", dir.display()))?;
    let manifest = local_manifest(&dir)?;
    let log = super::open_read_only(data).await?;
    let (start, end) = (log.start_offset(), log.next_offset());
    let segments = log.segments();
    log.close().await?;
    // Local segments only: a read-only view has no tier, but be sure.
    let local: Vec<SegmentInfo> = segments
        .with_context(|| format!("reading the segments in {}", dir.display()))?
        .into_iter()
        .filter(|s| !s.remote)
        .collect();
    let Some(m) = manifest else {
        println!(
            "no tier manifest in {}: tiering is not configured, or nothing was uploaded yet",
            dir.display()
        );
        println!(
            "local: {} segments, {} bytes, offsets [{start}, {end})",
            local.len(),
            local.iter().map(|s| s.bytes).sum::<u64>()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let c = compare(&m, &local);
    println!(
        "manifest epoch {} (owner {}), from the local copy {} (the object store was not consulted)",
        m.epoch,
        m.owner.id,
        dir.join("tier-manifest.json").display()
    );
    println!(
        "remote: {} segments, {} bytes, offsets [{}, {})",
        m.segments.len(),
        m.segments.iter().map(|s| s.bytes).sum::<u64>(),
        m.segments.first().map_or(0, |s| s.base),
        m.end()
    );
    println!(
        "local:  {} segments, {} bytes, offsets [{start}, {end}) (the newest is the active one)",
        local.len(),
        local.iter().map(|s| s.bytes).sum::<u64>()
    );
    println!(
        "local only: {} (the active segment and {} sealed segments not uploaded yet)",
        ranges(&c.local_only),
        c.lag_segments
    );
    println!(
        "lag:    {} sealed segments, {} bytes not uploaded yet",
        c.lag_segments, c.lag_bytes
    );
    if c.diverged.is_empty() {
        println!(
            "diverged: no, as far as this copy tells (a server on this directory updates it at \
             each manifest write, but another server may have written the store since): a \
             running server's GET /v1/tier says \"diverged\" from the store itself"
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "DIVERGED: the object store holds another history of this log than the local segments: \
         {}. The records at {} are in this directory only, and a server started on it does not \
         upload them or delete any local segment (tiering stops there) until an operator \
         decides which history to keep",
        c.diverged.join("; "),
        ranges(&c.local_only)
    );
    Ok(ExitCode::FAILURE)
}

/// The local segments against a manifest version, by the rules a log with a tier applies at
/// open (`Log::open` in the log crate): a sealed segment is in the store when the entry at its
/// base has its size; an entry at a sealed segment's base of another size, any entry at the
/// active segment's base (it is never uploaded), or a remote segment overlapping a local one
/// (the active one runs on past the log's end) is another history of the log: divergence.
/// The local manifest copy records no divergence itself; this is what it tells.
#[derive(Debug, Default, PartialEq, Eq)]
struct Comparison {
    /// Sealed local segments the store does not hold: the upload lag.
    lag_segments: usize,
    /// Their bytes.
    lag_bytes: u64,
    /// Offsets held only in this directory, as `[start, end)` ranges: the active segment and
    /// the sealed segments the store does not hold.
    local_only: Vec<(u64, u64)>,
    /// Each way the store holds another history of the log, in words.
    diverged: Vec<String>,
}

fn compare(m: &Manifest, local: &[SegmentInfo]) -> Comparison {
    let mut c = Comparison::default();
    // Where each local segment's offsets end as the log's open judges it: an uploaded
    // segment's entry says; the active segment runs on.
    let mut extents = Vec::with_capacity(local.len());
    for seg in local {
        match m.segments.iter().find(|r| r.base == seg.base_offset) {
            // In the store: its entry says where its offsets end.
            Some(r) if seg.sealed && r.bytes == seg.bytes => {
                extents.push((seg.base_offset, r.end));
                continue;
            }
            Some(r) if seg.sealed => c.diverged.push(format!(
                "its segment at offset {} holds offsets [{}, {}) in {} bytes, the local one \
                 [{}, {}) in {} bytes",
                r.base, r.base, r.end, r.bytes, seg.base_offset, seg.end_offset, seg.bytes
            )),
            Some(r) => c.diverged.push(format!(
                "it holds offsets [{}, {}) from the active segment's first offset (the active \
                 segment is never uploaded)",
                r.base, r.end
            )),
            None => {}
        }
        extents.push((
            seg.base_offset,
            if seg.sealed { seg.end_offset } else { u64::MAX },
        ));
        if seg.sealed {
            c.lag_segments += 1;
            c.lag_bytes += seg.bytes;
        }
        if seg.end_offset > seg.base_offset {
            match c.local_only.last_mut() {
                Some(last) if last.1 == seg.base_offset => last.1 = seg.end_offset,
                _ => c.local_only.push((seg.base_offset, seg.end_offset)),
            }
        }
    }
    for r in &m.segments {
        let at_a_local_base = local.iter().any(|s| s.base_offset == r.base);
        if !at_a_local_base && extents.iter().any(|&(b, e)| r.base < e && r.end > b) {
            c.diverged.push(format!(
                "its segment [{}, {}) overlaps the local segments' offsets",
                r.base, r.end
            ));
        }
    }
    c
}

/// `[a, b), [c, d)`, or `none`.
fn ranges(r: &[(u64, u64)]) -> String {
    if r.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = r
        .iter()
        .map(|(a, b)| format!("offsets [{a}, {b})"))
        .collect();
    parts.join(", ")
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

#[cfg(test)]
mod tests {
    use tidings_log::tier::manifest::RemoteSegment;

    use super::*;

    fn local(base: u64, end: u64, bytes: u64, sealed: bool) -> SegmentInfo {
        SegmentInfo {
            base_offset: base,
            end_offset: end,
            bytes,
            sealed,
            remote: false,
            path: std::path::PathBuf::new(),
        }
    }

    fn remote(base: u64, end: u64, bytes: u64) -> RemoteSegment {
        RemoteSegment {
            base,
            end,
            bytes,
            crc32: 0,
            index_bytes: 0,
            time_bytes: 0,
            object: None,
        }
    }

    fn manifest(segments: Vec<RemoteSegment>) -> Manifest {
        let mut m = Manifest::new("a", 0);
        m.segments = segments;
        m
    }

    #[test]
    fn sealed_segments_not_in_the_store_and_the_active_one_are_local_only() {
        let segs = [
            local(0, 10, 100, true),
            local(10, 20, 100, true),
            local(20, 30, 100, true),
            local(30, 35, 50, false),
        ];
        let c = compare(&manifest(vec![remote(0, 10, 100)]), &segs);
        assert_eq!(
            c,
            Comparison {
                lag_segments: 2,
                lag_bytes: 200,
                local_only: vec![(10, 35)],
                diverged: vec![],
            }
        );
        // Older segments only in the store, all sealed ones uploaded, an empty active one.
        let segs = [local(10, 20, 100, true), local(20, 20, 0, false)];
        let m = manifest(vec![remote(0, 10, 90), remote(10, 20, 100)]);
        assert_eq!(compare(&m, &segs), Comparison::default());
    }

    /// The repro: the store went on from another directory at this one's active segment (and
    /// the records written here after the last upload are nowhere else); it said lag 0.
    #[test]
    fn another_history_in_the_store_is_divergence() {
        let segs = [local(0, 3227, 9000, true), local(3227, 3257, 900, false)];
        let m = manifest(vec![remote(0, 3227, 9000), remote(3227, 3232, 150)]);
        let c = compare(&m, &segs);
        assert_eq!(
            (c.lag_segments, c.local_only.clone()),
            (0, vec![(3227, 3257)])
        );
        assert_eq!(c.diverged.len(), 1, "{:?}", c.diverged);
        assert!(c.diverged[0].contains("[3227, 3232)"), "{:?}", c.diverged);
        // The same once this directory's active segment was sealed (a graceful stop): the
        // store's segment at its base is another size.
        let segs = [
            local(0, 3227, 9000, true),
            local(3227, 3257, 900, true),
            local(3257, 3257, 0, false),
        ];
        let c = compare(&m, &segs);
        assert_eq!(
            (c.lag_segments, c.local_only.clone()),
            (1, vec![(3227, 3257)])
        );
        assert_eq!(c.diverged.len(), 1, "{:?}", c.diverged);
        // A store segment at no local base overlapping a local one; one past the active
        // segment's start too (this directory's next records would take its offsets).
        let segs = [local(0, 20, 200, true), local(20, 25, 50, false)];
        for r in [remote(10, 30, 10), remote(40, 50, 10)] {
            let c = compare(&manifest(vec![r]), &segs);
            assert_eq!(c.diverged.len(), 1, "{:?}", c.diverged);
        }
    }
}
