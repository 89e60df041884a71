//! `tidings tier status`, `tidings tier upload-now` and `tidings tier gc`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use tidings_log::tier::gc::{self, Listed, Verdict};
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
        #[arg(long, env = "TIDINGS_DATA", default_value = "data", value_parser = crate::cli::data_dir)]
        data: std::path::PathBuf,
    },
    /// Uploads every sealed segment now (server stopped; while it runs, use
    /// `POST /v1/tier/upload`). Takes the same options as `serve`.
    UploadNow(Box<ServeArgs>),
    /// Lists the objects under the prefix that nothing needs, with their size and age, and
    /// deletes them with `--delete` (works while the server runs). Takes the same options as
    /// `serve` (only the tier's are read).
    ///
    /// Never deleted: the newest manifest version (it holds the owner's lease: there is no
    /// other lease object) and the 19 before it; every object of a segment it lists; the
    /// segment uploads of the owner's process (its manifest write may still come) unless it
    /// released the prefix; the newest 3 snapshots and the newest two a restore could use; the
    /// message index sidecars (snapshots share them); any key that is not a name tidings
    /// writes (reported as unknown); anything younger than `--min-age-secs`. The store is
    /// listed first and the manifest read after, then read again just before deleting:
    /// what a version published meanwhile names is kept. Refused when the prefix holds no
    /// manifest.
    Gc(Box<GcArgs>),
}

/// `tidings tier gc`.
#[derive(Debug, clap::Args)]
pub(crate) struct GcArgs {
    /// Objects nothing needs are kept until this old (by the store's last-modified time):
    /// far longer than a segment's upload and the manifest write after it.
    #[arg(long, default_value_t = gc::DEFAULT_MIN_AGE.as_secs())]
    min_age_secs: u64,
    /// Delete them; without it, only list them.
    #[arg(long)]
    delete: bool,
    #[command(flatten)]
    serve: ServeArgs,
}

pub(crate) async fn run(cmd: TierCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TierCmd::Status { data } => status(&DataDir::new(data)).await,
        TierCmd::UploadNow(args) => upload_now(*args).await,
        TierCmd::Gc(args) => collect(*args).await,
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
        super::out!(
            "no tier manifest in {}: tiering is not configured, or nothing was uploaded yet",
            dir.display()
        );
        super::out!(
            "local: {}, {} bytes, offsets [{start}, {end})",
            super::count(local.len() as u64, "segment", "segments"),
            local.iter().map(|s| s.bytes).sum::<u64>()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let c = compare(&m, &local);
    super::out!(
        "manifest epoch {} (owner {}), from the local copy {} (the object store was not consulted)",
        m.epoch,
        m.owner.id,
        dir.join("tier-manifest.json").display()
    );
    super::out!(
        "remote: {}, {} bytes, offsets [{}, {})",
        super::count(m.segments.len() as u64, "segment", "segments"),
        m.segments.iter().map(|s| s.bytes).sum::<u64>(),
        m.segments.first().map_or(0, |s| s.base),
        m.end()
    );
    super::out!(
        "local:  {}, {} bytes, offsets [{start}, {end}) (the newest is the active one)",
        super::count(local.len() as u64, "segment", "segments"),
        local.iter().map(|s| s.bytes).sum::<u64>()
    );
    let below = if c.below_start == 0 {
        String::new()
    } else {
        format!(
            ", and {} below where the store's history starts, which its retention removed",
            super::count(c.below_start as u64, "sealed segment", "sealed segments")
        )
    };
    super::out!(
        "local only: {} (the active segment, {} not uploaded yet{below})",
        ranges(&c.local_only),
        super::count(c.lag_segments as u64, "sealed segment", "sealed segments")
    );
    super::out!(
        "lag:    {}, {} bytes not uploaded yet",
        super::count(c.lag_segments as u64, "sealed segment", "sealed segments"),
        c.lag_bytes
    );
    if c.diverged.is_empty() {
        super::out!(
            "diverged: no, as far as this copy tells (a server on this directory updates it at \
             each manifest write, but another server may have written the store since): a \
             running server's GET /v1/tier says \"diverged\" from the store itself"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let only = if c.local_only.is_empty() {
        "No record is in this directory only".to_string()
    } else {
        format!(
            "The records at {} are in this directory only",
            ranges(&c.local_only)
        )
    };
    super::out!(
        "DIVERGED: the object store holds another history of this log than the local segments: \
         {}. {only}, and a server started on it does not upload them or delete any local \
         segment (tiering stops there) until an operator decides which history to keep",
        c.diverged.join("; "),
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
    /// Sealed local segments ending at or below where the store's history starts: kept here,
    /// removed there by the store's retention (not lag).
    below_start: usize,
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
            // At the active segment's base (never uploaded): told with the run past it, below.
            Some(_) => {}
            None => {}
        }
        extents.push((
            seg.base_offset,
            if seg.sealed { seg.end_offset } else { u64::MAX },
        ));
        // Below where the store's history starts, the store's retention removed it: no lag
        // (until 2026-11-30 such segments were counted "not uploaded yet").
        let removed_there = m.start.is_some_and(|s| seg.end_offset <= s);
        if seg.sealed && removed_there {
            c.below_start += 1;
        } else if seg.sealed {
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
    // The store's segments past the active segment's first offset, which this directory's
    // next records would take: told once, as a run (a store that went on for many segments
    // was told once per segment, each said to overlap the local segments).
    let active = local.iter().find(|s| !s.sealed).map(|s| s.base_offset);
    let mut went_on: Option<(u64, u64)> = None;
    for r in &m.segments {
        if active.is_some_and(|a| r.base >= a) {
            let (from, to) = went_on.get_or_insert((r.base, r.end));
            *from = (*from).min(r.base);
            *to = (*to).max(r.end);
        } else if local.iter().any(|s| s.base_offset == r.base) {
            // At a sealed local segment's base: judged above.
        } else if extents.iter().any(|&(b, e)| r.base < e && r.end > b) {
            c.diverged.push(format!(
                "its segment [{}, {}) overlaps the local segments' offsets",
                r.base, r.end
            ));
        }
    }
    if let (Some((from, to)), Some(active)) = (went_on, active) {
        c.diverged.push(format!(
            "it holds offsets [{from}, {to}) past this directory's log (the active segment starts at {active}): another node wrote on from the store"
        ));
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
pub(crate) fn local_manifest(dir: &Path) -> anyhow::Result<Option<Manifest>> {
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
    // Nothing is made for a directory without a log (a mistyped `--data`): its lock, its
    // node id and the log's first segment would have been, and a server started there later
    // would take the new empty log for a history of its own.
    super::ensure_segments(&data, "upload")?;
    // It opens the block cache as the server does: the same limit, the same check.
    let open_files = crate::server::accept::raise_open_files_limit();
    crate::server::check_cache_files(&config, open_files)?;
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
    // As the server opens it: a log that lost acknowledged records is refused, not cut.
    let opts = LogOptions::default()
        .with_fsync(config.log_fsync)
        .with_segment_bytes(config.log_segment_bytes)
        .with_acknowledged_through(crate::server::acknowledged_through(&data)?)
        .with_tier(tier);
    let log = match Log::open(data.log(), opts).await {
        Ok(l) => l,
        Err(LogError::Locked { .. }) => anyhow::bail!(
            "the server is running: ask it instead (POST /v1/tier/upload with the admin key)"
        ),
        Err(e) => return Err(crate::server::log_open_refused(e, &data)),
    };
    let result = log.upload_now().await;
    log.close().await?;
    let status = result?;
    super::out!("{}", serde_json::to_string_pretty(&status)?);
    Ok(ExitCode::SUCCESS)
}

/// `tidings tier gc`: the decisions are `tidings_log::tier::gc::judge`'s; this lists, reads the
/// manifest, prints and deletes. It opens no block cache and takes no lock, so it runs beside
/// the server.
async fn collect(args: GcArgs) -> anyhow::Result<ExitCode> {
    let config = args.serve.resolve()?;
    let Some(url) = &config.tier.url else {
        anyhow::bail!("no object store is configured (tier.url)");
    };
    // Opening a `file://` store makes its directory: a mistyped one is reported, not made.
    if let Some(dir) = url.strip_prefix("file://")
        && !Path::new(dir).is_dir()
    {
        anyhow::bail!("{url}: no such directory (nothing to judge)");
    }
    let (store, prefix, display) = crate::server::tiering::build_store(&config.tier, url)?;
    let store: &dyn ObjectStore = &*store;
    let prefix = (!prefix.is_empty()).then(|| ObjectPath::from(prefix.as_str()));
    let prefix = prefix.as_ref();
    let rules = gc::Rules {
        min_age: Duration::from_secs(args.min_age_secs),
        keep_snapshots: crate::server::tiering::KEEP_SNAPSHOTS,
    };
    // The listing before the manifest: a version published before this read names whatever
    // its writer uploaded before the listing.
    let (paths, listing) = list_all(store, prefix)
        .await
        .with_context(|| format!("listing {display}"))?;
    let no_manifest = || {
        format!(
            "{display} holds no tier manifest: nothing is judged (without one, every segment \
             would look unreferenced)"
        )
    };
    let manifest = newest_manifest(store, prefix)
        .await
        .with_context(|| format!("reading the tier manifest in {display}"))?
        .with_context(no_manifest)?;
    let earlier = earlier_versions(store, prefix, manifest.epoch).await;
    let verdicts = gc::judge_with_earlier(&manifest, &earlier, &listing, &rules);
    report(&display, &manifest, &listing, &verdicts, args.min_age_secs);
    let lost = lost_objects(store, prefix, &manifest, &listing).await?;
    let (orphans, _) = tally(&listing, &verdicts, Verdict::Collect);
    let code = if lost == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "the store lacks {} the manifest lists, or holds {} at another size: cold reads of \
             their offsets fail (`tidings tier status` shows whether the local log still holds \
             them)",
            super::count(lost as u64, "object", "objects"),
            if lost == 1 { "it" } else { "them" }
        );
        ExitCode::FAILURE
    };
    if !args.delete {
        super::out!("dry run: nothing deleted (--delete deletes the {orphans} orphans)");
        return Ok(code);
    }
    // Again just before deleting: a server may have published a version naming some of them.
    let again = newest_manifest(store, prefix)
        .await
        .with_context(|| format!("reading the tier manifest in {display} again"))?
        .with_context(no_manifest)?;
    let now = gc::judge_with_earlier(&again, &earlier, &listing, &rules);
    let (mut deleted, mut bytes) = (0usize, 0u64);
    for ((o, path), (before, after)) in listing.iter().zip(&paths).zip(verdicts.iter().zip(&now)) {
        if *before != Verdict::Collect {
            continue;
        }
        if *after != Verdict::Collect {
            super::out!(
                "kept     {} (manifest epoch {} needs it now)",
                o.key,
                again.epoch
            );
            continue;
        }
        match store.delete(path).await {
            // Gone already (the owner's own pruning, another gc).
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "deleting {path} ({deleted} deleted before it; run gc again)"
                )));
            }
        }
        deleted += 1;
        bytes += o.size;
    }
    super::out!("deleted: {deleted} objects, {bytes} bytes");
    Ok(code)
}

/// Prints each object of the manifest's segments that the store lacks or holds at another
/// size, and returns how many. One the listing lacks is looked up again first: the listing was
/// taken before the manifest was read, and a version published in between names objects
/// uploaded after it.
async fn lost_objects(
    store: &dyn ObjectStore,
    prefix: Option<&ObjectPath>,
    manifest: &Manifest,
    listing: &[Listed],
) -> anyhow::Result<usize> {
    let mut lost = 0;
    for m in gc::missing(manifest, listing) {
        let path = match prefix {
            Some(p) => ObjectPath::from(format!("{p}/{}", m.key)),
            None => ObjectPath::from(m.key.as_str()),
        };
        let found = match m.found {
            Some(n) => Some(n),
            None => match store.head(&path).await {
                Ok(meta) => Some(meta.size),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("looking up {path}")));
                }
            },
        };
        let (word, what) = match found {
            Some(n) if n == m.expected => continue,
            Some(n) => ("DAMAGED", format!("the store holds {n}")),
            None => ("MISSING", "the store lacks it".to_string()),
        };
        lost += 1;
        super::out!(
            "{word}  {}  the manifest lists it with {} bytes; {what}",
            m.key,
            m.expected
        );
    }
    Ok(lost)
}

/// Every object under the prefix: its path, and as the judgment takes it (key below the
/// prefix, size, age by its last-modified time).
async fn list_all(
    store: &dyn ObjectStore,
    prefix: Option<&ObjectPath>,
) -> anyhow::Result<(Vec<ObjectPath>, Vec<Listed>)> {
    // Unreadable, the clock makes every age 0: everything is young, nothing deleted.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0);
    let (mut paths, mut listing) = (Vec::new(), Vec::new());
    let mut stream = store.list(prefix);
    while let Some(meta) = stream.next().await {
        let meta = meta?;
        let age_ms = now_ms.saturating_sub(meta.last_modified.timestamp_millis());
        listing.push(Listed {
            key: relative(&meta.location, prefix),
            size: meta.size,
            age: Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)),
        });
        paths.push(meta.location);
    }
    Ok((paths, listing))
}

/// `location` below the prefix (`segments/…`); the whole location when it is not below it
/// (then it parses as no name of ours, and is left alone).
fn relative(location: &ObjectPath, prefix: Option<&ObjectPath>) -> String {
    let full: &str = location.as_ref();
    prefix
        .and_then(|p| {
            let p: &str = p.as_ref();
            full.strip_prefix(p)?.strip_prefix('/')
        })
        .unwrap_or(full)
        .to_owned()
}

/// The newest manifest version under the prefix, as the server finds it (the highest epoch
/// listed under `manifest/`); `None` when there is none.
async fn newest_manifest(
    store: &dyn ObjectStore,
    prefix: Option<&ObjectPath>,
) -> anyhow::Result<Option<Manifest>> {
    let dir = match prefix {
        Some(p) => ObjectPath::from(format!("{p}/manifest")),
        None => ObjectPath::from("manifest"),
    };
    let mut newest: Option<(u64, ObjectPath)> = None;
    let mut stream = store.list(Some(&dir));
    while let Some(meta) = stream.next().await {
        let meta = meta?;
        // Only the versions directly in `manifest/`: a log whose prefix lies below it is
        // another log (its versions judged this one's objects, and deleted them).
        if !gc::is_child(&dir, &meta.location) {
            continue;
        }
        let epoch = meta.location.filename().and_then(Manifest::epoch_of);
        if let Some(epoch) = epoch
            && newest.as_ref().is_none_or(|(e, _)| epoch > *e)
        {
            newest = Some((epoch, meta.location));
        }
    }
    let Some((epoch, path)) = newest else {
        return Ok(None);
    };
    let bytes = store.get(&path).await?.bytes().await?;
    Manifest::decode_at(&bytes, epoch)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{path} does not decode: {e}"))
}

/// The versions the owner keeps before the newest (`newest`: its epoch), as far as they can be
/// read: a reader may hold one, and the objects it names are kept ([`gc::judge_with_earlier`]).
/// One that cannot be read (pruned meanwhile, damaged) protects nothing, said on stderr.
async fn earlier_versions(
    store: &dyn ObjectStore,
    prefix: Option<&ObjectPath>,
    newest: u64,
) -> Vec<Manifest> {
    let first = newest.saturating_sub(gc::KEPT_VERSIONS as u64 - 1);
    let mut out = Vec::new();
    for epoch in first..newest {
        let key = Manifest::key(epoch);
        let path = match prefix {
            Some(p) => ObjectPath::from(format!("{p}/{key}")),
            None => ObjectPath::from(key.as_str()),
        };
        let read = match store.get(&path).await {
            Ok(r) => r.bytes().await.map_err(|e| e.to_string()),
            // Pruned (the owner keeps 20, and prunes in steps): nothing to keep for it.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => Err(e.to_string()),
        };
        match read.and_then(|b| Manifest::decode_at(&b, epoch)) {
            Ok(m) => out.push(m),
            Err(e) => eprintln!(
                "manifest version {path} not read ({e}): the objects only it names are judged without it"
            ),
        }
    }
    out
}

/// Prints each object gc would delete, each unneeded one kept for its age, each unknown key,
/// and the totals.
fn report(display: &str, m: &Manifest, listing: &[Listed], verdicts: &[Verdict], min_age: u64) {
    super::out!(
        "{display}: {} objects; manifest epoch {} (owner {}{})",
        listing.len(),
        m.epoch,
        m.owner.id,
        if m.owner.heartbeat_ms == 0 {
            ", released"
        } else {
            ""
        }
    );
    for (o, v) in listing.iter().zip(verdicts) {
        let (word, note) = match v {
            Verdict::Keep => continue,
            Verdict::Collect => ("orphan ", ""),
            Verdict::Young => (
                "young  ",
                " (nothing needs it; kept: younger than --min-age-secs)",
            ),
            Verdict::Unknown => ("unknown", " (not a name tidings writes: left alone)"),
        };
        super::out!(
            "{word}  {}  {} bytes, {} s old{note}",
            o.key,
            o.size,
            o.age.as_secs()
        );
    }
    let line = |what: &str, v: Verdict, why: &str| {
        let (n, bytes) = tally(listing, verdicts, v);
        super::out!("{what} {n} objects, {bytes} bytes{why}");
    };
    line(
        "kept:   ",
        Verdict::Keep,
        " (what the manifest lists, its newest versions, the newest snapshots, index sidecars, the owner's uploads)",
    );
    line(
        "orphans:",
        Verdict::Collect,
        &format!(" (nothing needs them; at least {min_age} s old)"),
    );
    line("young:  ", Verdict::Young, "");
    line("unknown:", Verdict::Unknown, " (never deleted)");
}

/// How many objects got `v`, and their bytes.
fn tally(listing: &[Listed], verdicts: &[Verdict], v: Verdict) -> (usize, u64) {
    listing
        .iter()
        .zip(verdicts)
        .filter(|(_, got)| **got == v)
        .fold((0, 0), |(n, bytes), (o, _)| (n + 1, bytes + o.size))
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
                below_start: 0,
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

    /// A fail-back whose store went on for many segments, and whose retention removed this
    /// directory's sealed segments from it: one line for the run past the local log (it was
    /// one per remote segment, each said to overlap the local segments, which none did), and
    /// no lag for segments below the store's start (they were counted "not uploaded yet"), but
    /// a count of their own.
    #[test]
    fn a_store_that_went_on_is_told_once_and_what_it_removed_is_no_lag() {
        let segs = [
            local(100, 110, 100, true),
            local(110, 120, 100, true),
            local(120, 125, 50, false),
        ];
        // A store whose history starts at `from`: `n` segments of 10 offsets.
        let store = |from: u64, n: u64| {
            let mut m = manifest(
                (0..n)
                    .map(|i| remote(from + 10 * i, from + 10 * i + 10, 100))
                    .collect(),
            );
            m.start = Some(from);
            m
        };
        // Then the usual fail-back: the node that restored wrote on from this one's active base.
        for (m, run) in [
            (store(200, 25), "[200, 450)"),
            (store(120, 5), "[120, 170)"),
        ] {
            let c = compare(&m, &segs);
            assert_eq!(c.diverged.len(), 1, "{:?}", c.diverged);
            let told = &c.diverged[0];
            assert!(
                told.contains(run) && told.contains("starts at 120"),
                "{told}"
            );
            assert_eq!((c.lag_segments, c.lag_bytes), (0, 0));
            // Told apart from the upload lag in the local-only line (both were said "not
            // uploaded yet" until 2026-12-03).
            assert_eq!(c.below_start, 2);
        }
    }
}
