//! Tiered storage for the server: the object store named by `tier.url`, this node's id,
//! snapshot upload and restore.
//!
//! Under the prefix the log keeps `segments/` and `manifest/`; the server adds
//! `snapshots/{applied:020}.snap` (the newest three, and the newest two below the end of the
//! uploaded segments: [`stale_snapshots`]) and
//! `projections/index/{first:020}-{crc:08x}.cidx` (the message index sidecars the snapshots
//! refer to); `tidings tier gc` knows these names (`log/src/tier/gc.rs`: keep them in step, or
//! it reports new ones as unknown keys and leaves them). A server started on an empty data
//! directory with an existing prefix restores: the newest snapshot and its sidecars are
//! downloaded (one the log still holds the records after: not below the manifest's `start`,
//! up to which the retention removed segments from the store; one whose sidecars are not all
//! usable gives way to an older one), the log opens at the end of the uploaded segments, and
//! the rest is replayed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use tidings_log::tier::{Tier, TierOptions};
use tidings_projections::msgindex::{Sidecar, sidecar_path};
use tidings_projections::snapshot;

use crate::config::{Config, TierConfig};
use crate::data::DataDir;

/// Snapshots kept in the object store (`tidings tier gc` keeps as many).
pub(crate) const KEEP_SNAPSHOTS: usize = 3;

/// Snapshots below the end of the uploaded segments (those a restore could use) kept in the
/// object store besides the newest [`KEEP_SNAPSHOTS`] (`tidings tier gc` keeps as many).
pub(crate) const KEEP_RESTORABLE: usize = 2;

/// The object store, the prefix in it, and its name for messages.
pub(crate) fn build_store(
    t: &TierConfig,
    url: &str,
) -> anyhow::Result<(Arc<dyn ObjectStore>, String, String)> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(!bucket.is_empty(), "tier.url {url:?}: no bucket");
        let http = t
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let mut b = AmazonS3Builder::from_env()
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(http)
                    .with_timeout(Duration::from_secs(30))
                    .with_connect_timeout(Duration::from_secs(3)),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
            })
            .with_bucket_name(bucket);
        if let Some(r) = &t.region {
            b = b.with_region(r);
        }
        if let Some(e) = &t.endpoint {
            b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
        }
        if let Some(k) = &t.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &t.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        let store = b
            .build()
            .with_context(|| format!("configuring the object store {url}"))?;
        return Ok((
            Arc::new(store),
            prefix.trim_matches('/').to_owned(),
            url.to_owned(),
        ));
    }
    if let Some(dir) = url.strip_prefix("file://") {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        let store =
            LocalFileSystem::new_with_prefix(dir).with_context(|| format!("opening {dir}"))?;
        return Ok((Arc::new(store), String::new(), url.to_owned()));
    }
    anyhow::bail!("tier.url {url:?}: expected s3://bucket/prefix or file:///dir")
}

/// This node's id: configured, or generated once into DATA/node.id. Written durably, as the
/// admin key is: a node.id lost or left empty by a power cut made the node pick a new id, and
/// its own live lease under the old one then refused it as a second server on its prefix (an
/// empty one left by an earlier build is still replaced).
pub(crate) fn node_id(config: &Config, data: &DataDir) -> anyhow::Result<String> {
    if let Some(id) = &config.node_id {
        return Ok(id.clone());
    }
    let path = data.root().join("node.id");
    // Made only when there is none (or an empty one, left by an earlier build): a file that
    // cannot be read is an error, not a reason to take a new id (the node's own lease under
    // the old one would then refuse it, and the old id would be gone).
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("reading {}", path.display())));
        }
    }
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let id = crate::render::hex(&raw);
    crate::data::write_durably(&path, id.as_bytes(), 0o644)?;
    Ok(id)
}

/// The tier, when `tier.url` is set.
pub(crate) async fn open(config: &Config, data: &DataDir) -> anyhow::Result<Option<Tier>> {
    let t = &config.tier;
    let Some(url) = &t.url else {
        return Ok(None);
    };
    let (store, prefix, display) = build_store(t, url)?;
    let opts = TierOptions::new(
        store,
        &prefix,
        display,
        node_id(config, data)?,
        data.cache().join("blocks"),
    )
    .with_local_retention_bytes(t.local_retention_bytes)
    .with_local_retention_age(t.local_retention_secs.map(Duration::from_secs))
    .with_block_bytes(t.block_bytes)
    .with_cache_bytes(t.cache_memory_bytes, t.cache_disk_bytes)
    .with_read_timeout(Duration::from_millis(t.read_timeout_ms))
    .with_upload_interval(Duration::from_secs(t.upload_interval_secs.max(1)))
    .with_lease(Duration::from_secs(t.lease_secs));
    Ok(Some(Tier::open(opts).await?))
}

/// Warns, for a server without `tier.url`, when its log was tiered: the data directory is
/// marked so ([`DataDir::tier_marker`]: the log's manifest copy, or the node id). The server
/// starts, but reads of the offsets before its first local one answer 503
/// `history_unavailable`, and nothing is uploaded; this says why at start-up. A log that was
/// never tiered and starts past offset 0 (its oldest segments deleted: the retention, or by
/// hand) is said so too: the messages before its start have expired
/// (`tidings_projections::messages`' module doc). Until 2026-11-30 such a log was taken for a
/// tiered one, and reads of those messages answered `history_unavailable` too.
pub(crate) fn warn_if_tiered(data: &DataDir, log: &tidings_log::Log) {
    let log_starts_at = log.start_offset();
    match data.tier_marker() {
        Some(marker) => tracing::warn!(
            log_starts_at,
            marker = %marker.display(),
            "this log was tiered to an object store, but tier.url is not set: nothing is uploaded, and the offsets before log_starts_at are only in the store (history and sync of them answer 503 history_unavailable); start with the tier settings it ran with"
        ),
        None if log_starts_at > 0 => tracing::info!(
            log_starts_at,
            "the log starts past offset 0 (its oldest segments were deleted): the messages before log_starts_at have expired, and reads leave them out"
        ),
        None => {}
    }
}

const SIDECAR_DIR: &str = "projections/index";

/// A sidecar's key: its first offset and its CRC, so that a sidecar with other entries (another
/// writer's: a stale owner not yet fenced) goes under another key instead of over this one.
fn sidecar_key(side: &Sidecar) -> String {
    format!(
        "{SIDECAR_DIR}/{:020}-{:08x}.cidx",
        side.first_offset, side.crc
    )
}

/// The key sidecars had before their CRC was part of it (still read on restore).
fn legacy_sidecar_key(side: &Sidecar) -> String {
    format!("{SIDECAR_DIR}/{:020}.cidx", side.first_offset)
}

/// Downloads the newest usable snapshot (and the sidecars it refers to) when there is none
/// locally. Usable: every event it covers is in the uploaded segments (a snapshot ahead of them
/// would describe events the restored log does not have), and the log still holds every record
/// after it (not below the manifest's `start`: the retention removed the segments from there
/// down, and the replay after such a snapshot would lack them). Returns whether one was
/// restored.
pub(crate) async fn restore_snapshot(tier: &Tier, projections: &Path) -> anyhow::Result<bool> {
    let local = projections.join("snapshots");
    remove_leftovers(projections);
    if !snapshot::list(&local)?.is_empty() {
        return Ok(false);
    }
    let manifest = tier.remote_manifest().await?;
    let end = manifest.as_ref().map_or(0, |m| m.end());
    let start = manifest.as_ref().and_then(|m| m.start).unwrap_or(0);
    let mut names: Vec<String> = tier
        .list("snapshots")
        .await?
        .into_iter()
        .filter(|n| n.ends_with(".snap"))
        .collect();
    names.sort();
    for name in names.iter().rev() {
        let applied: Option<u64> = name.strip_suffix(".snap").and_then(|s| s.parse().ok());
        if applied.is_none_or(|a| a >= end || a < start) {
            continue;
        }
        // Downloaded under a name no start loads (`*.snap.restoring`), and moved to its own
        // name only once every sidecar it names is in place and durable: a restore cut short
        // (a failed GET, a crash, a power cut) leaves no snapshot that would load without
        // its sidecars (every read of their messages failed until a `rebuild`).
        let path = local.join(format!("{name}.restoring"));
        let mut staged = Staged(Some(path.clone()));
        if !tier.get_file(&format!("snapshots/{name}"), &path).await? {
            continue;
        }
        let state = match std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|b| snapshot::decode(&path, &b).map_err(anyhow::Error::from))
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "a snapshot in the object store does not load; trying an older one");
                let _ = std::fs::remove_file(&path);
                continue;
            }
        };
        let index = projections.join("index");
        let mut usable = true;
        for side in &state.index.sidecars {
            let dest = sidecar_path(&index, side.first_offset);
            // The index is derived: a sidecar missing from the store, or not the one the
            // snapshot recorded (under the legacy key, without the CRC, another writer's could
            // replace it), is rebuilt by replaying the log from an older snapshot instead —
            // or from the log's start when none is usable, which a store the retention
            // trimmed no longer holds (until 2026-11-30 the first such sidecar went straight
            // to a replay from the start, refused on a trimmed store though an older snapshot
            // was usable).
            if !fetch_sidecar(tier, &index, side).await? {
                tracing::warn!(
                    first_offset = side.first_offset,
                    "a message index sidecar the snapshot needs is missing from the object store, or not the one it recorded; trying an older snapshot"
                );
                let _ = std::fs::remove_file(&dest);
                usable = false;
                break;
            }
        }
        if !usable {
            continue;
        }
        sync_dir(&index)?;
        // The entries of `index/` and `snapshots/` themselves (made by this restore).
        sync_dir(projections)?;
        std::fs::rename(&path, local.join(name))
            .with_context(|| format!("moving {} into place", path.display()))?;
        sync_dir(&local)?;
        staged.0 = None;
        tracing::info!(snapshot = %name, store = tier.display(), "restored a snapshot from the object store");
        return Ok(true);
    }
    Ok(false)
}

/// Fetches `side` from the object store into `dir` (under its key, else the legacy one):
/// downloaded beside its place (`….cidx.fetch`), checked against its record, and only then
/// renamed over whatever is there — a copy that is not the recorded sidecar never replaces a
/// local file. Returns whether it is in place (`false`: not in the store, or another one).
pub(crate) async fn fetch_sidecar(tier: &Tier, dir: &Path, side: &Sidecar) -> anyhow::Result<bool> {
    let dest = sidecar_path(dir, side.first_offset);
    let staged = dest.with_extension("cidx.fetch");
    let mut rejected = false;
    for key in [sidecar_key(side), legacy_sidecar_key(side)] {
        match tier.get_file(&key, &staged).await {
            Ok(true) => {}
            Ok(false) => continue,
            // The legacy key after a copy the check rejected: a failure there is no worse
            // than the copy not being there (the restore goes on to an older snapshot).
            Err(e) if rejected => {
                tracing::warn!(key, error = %e, "could not read the legacy copy of a message index sidecar");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let (side, staged, dest, dir) = (*side, staged.clone(), dest.clone(), dir.to_path_buf());
        let placed = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            if let Err(e) = side.check_path(&staged) {
                tracing::warn!(error = %e, "the object store's copy of a message index sidecar is not the one the state recorded");
                let _ = std::fs::remove_file(&staged);
                return Ok(false);
            }
            std::fs::rename(&staged, &dest)
                .with_context(|| format!("moving {} into place", staged.display()))?;
            sync_dir(&dir)?;
            Ok(true)
        })
        .await
        .context("the sidecar check task failed")??;
        if placed {
            return Ok(true);
        }
        rejected = true;
    }
    Ok(false)
}

/// A sidecar a snapshot upload found damaged on disk (not uploaded; the caller has it made
/// again).
#[derive(Debug)]
pub(crate) struct DamagedSidecar {
    pub(crate) first_offset: u64,
    error: String,
}

impl std::fmt::Display for DamagedSidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the message index sidecar starting at offset {} is damaged, not uploaded: {}",
            self.first_offset, self.error
        )
    }
}

impl std::error::Error for DamagedSidecar {}

/// Removes what a restore cut short by a crash left (a staged snapshot, half-written
/// downloads): never loaded, but never cleaned otherwise (best effort).
fn remove_leftovers(projections: &Path) {
    for (dir, suffixes) in [
        ("snapshots", &[".snap.restoring", ".download"][..]),
        ("index", &[".download", ".fetch"][..]),
    ] {
        let Ok(entries) = std::fs::read_dir(projections.join(dir)) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name();
            if name
                .to_str()
                .is_some_and(|n| suffixes.iter().any(|s| n.ends_with(s)))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A downloaded snapshot not yet moved into place: removed if the restore stops short.
struct Staged(Option<std::path::PathBuf>);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// fsync of a directory (its entries durable), when it exists.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// A snapshot written locally, to upload ([`upload_snapshot`]).
pub(crate) struct SnapshotUpload<'a> {
    /// The projections directory (the sidecars are in its `index/`).
    pub(crate) projections: &'a Path,
    /// The snapshot file.
    pub(crate) snap: &'a Path,
    /// The sidecars its state names.
    pub(crate) sidecars: &'a [Sidecar],
    /// Its state's latest `log_trimmed` events, in log order (`Projections::trims`).
    pub(crate) trims: &'a [tidings_projections::TrimApplied],
}

/// Uploads a snapshot and the sidecars it refers to; keeps the newest few in the store; then
/// deletes the store's sidecars the retention let go ([`stale_sidecars`]). Returns how many
/// sidecars it deleted, or `None` when it uploaded nothing (the prefix is not this server's).
pub(crate) async fn upload_snapshot(
    tier: &Tier,
    upload: &SnapshotUpload<'_>,
    uploaded: &Mutex<Option<HashSet<String>>>,
) -> anyhow::Result<Option<usize>> {
    let SnapshotUpload {
        projections,
        snap,
        sidecars,
        trims,
    } = *upload;
    // Only the prefix's owner uploads: a server that has not claimed it (yet: the store was
    // out of reach at open, or it waits out another process's lease under this node id), was
    // fenced from it, or whose log is another history than the prefix's would put its
    // snapshot and sidecars under the owner's fixed keys and prune the owner's newest.
    let status = tier.status();
    if !status.claimed || status.fenced || status.diverged {
        tracing::debug!(
            claimed = status.claimed,
            fenced = status.fenced,
            diverged = status.diverged,
            "not uploading the snapshot: the prefix is not this server's"
        );
        return Ok(None);
    }
    // The status changes only at this server's next manifest write: a server cut off while
    // another took the prefix over still says "claimed". The store's newest version tells:
    // if it is not the one this server wrote last, another writer owns the prefix now, and
    // this server's snapshot would overwrite or prune that owner's.
    // (Compared by writer — node id and the incarnation drawn at open — not by epoch: this
    // server's own uploader may write a newer version meanwhile.)
    let ours = tier.manifest().owner.clone();
    let newest = tier.remote_manifest().await?.map(|m| m.owner);
    if newest
        .as_ref()
        .is_none_or(|o| o.id != ours.id || o.incarnation != ours.incarnation)
    {
        tracing::warn!(
            owner = ?newest.map(|o| o.id),
            "not uploading the snapshot: the store's newest manifest version is another writer's"
        );
        return Ok(None);
    }
    let known = uploaded.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut known = match known {
        Some(k) => k,
        None => tier
            .list(SIDECAR_DIR)
            .await?
            .into_iter()
            .map(|n| format!("{SIDECAR_DIR}/{n}"))
            .collect(),
    };
    for side in sidecars {
        let key = sidecar_key(side);
        if known.contains(&key) {
            continue;
        }
        let index = projections.join("index");
        let local = sidecar_path(&index, side.first_offset);
        // Checked first: a damaged one stored would be kept for good under its key, and a
        // restore (or a repair) would find it and reject it. The upload fails instead, until
        // the sidecar is made again (the caller asks for that: `index_repair`).
        let checked = *side;
        tokio::task::spawn_blocking(move || checked.check_file(&index))
            .await
            .context("the sidecar check task failed")?
            .map_err(|e| DamagedSidecar {
                first_offset: side.first_offset,
                error: e.to_string(),
            })?;
        tier.put_file(&key, &local).await?;
        known.insert(key);
    }
    *uploaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(known.clone());
    let name = snap
        .file_name()
        .and_then(|n| n.to_str())
        .context("snapshot file name")?;
    tier.put_file(&format!("snapshots/{name}"), snap).await?;
    let names: Vec<String> = tier
        .list("snapshots")
        .await?
        .into_iter()
        .filter(|n| n.ends_with(".snap"))
        .collect();
    let stale = stale_snapshots(names.clone(), tier.manifest().end());
    for old in &stale {
        tier.delete(&format!("snapshots/{old}")).await?;
    }
    let kept = names.iter().filter(|n| !stale.contains(n));
    let doomed = stale_sidecars(kept, &known, sidecars, trims);
    if doomed.is_empty() {
        return Ok(Some(0));
    }
    // Forgotten as uploaded before they go: a deletion cut short must not leave a key the
    // cache says is there (a sidecar written again under it would not be uploaded). A failed
    // deletion is the cleanup's, not the upload's (it was said "could not upload" and the
    // snapshot uploaded again at every interval): the rest are remembered again, for the
    // next upload's cleanup.
    for key in &doomed {
        known.remove(key);
    }
    *uploaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(known);
    for (i, key) in doomed.iter().enumerate() {
        if let Err(e) = tier.delete(key).await {
            tracing::warn!(error = %e, "could not delete a message index sidecar the retention let go from the object store; the next snapshot upload tries again");
            let mut cache = uploaded.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(known) = cache.as_mut() {
                known.extend(doomed[i..].iter().cloned());
            }
            return Ok(Some(i));
        }
    }
    Ok(Some(doomed.len()))
}

/// The sidecar keys of the store (`keys`) the retention let go, once no snapshot kept there
/// (`kept`, `{applied:020}.snap`) can name them: as locally
/// (`Projections::remove_dropped_sidecars`), the sidecars [`tidings_projections::let_go_sidecars`]
/// picks (under either key form), of those the snapshot just uploaded does not name
/// (`sidecars`), bounded by the last of its `log_trimmed` events (`trims`) the oldest kept
/// snapshot applied. A snapshot an earlier build wrote after an event names them, but its
/// state lets them go when decoded, and a restore downloads only what the decoded state
/// names. Until 2026-11-30 the store kept every sidecar, 16 bytes per message ever sent; until
/// 2026-12-03 they went only once every kept snapshot followed the latest event, which the
/// restorable snapshots kept there seldom do on a server the retention trims often.
fn stale_sidecars<'a>(
    kept: impl Iterator<Item = &'a String>,
    keys: &HashSet<String>,
    sidecars: &[Sidecar],
    trims: &[tidings_projections::TrimApplied],
) -> Vec<String> {
    let Some(&latest) = trims.last() else {
        return Vec::new();
    };
    let applied = |n: &str| n.strip_suffix(".snap").and_then(|a| a.parse::<u64>().ok());
    // At least the snapshot just uploaded: a listing without it says nothing of the store.
    let Some(oldest) = kept
        .map(|n| applied(n).ok_or(()))
        .collect::<Result<Vec<u64>, ()>>()
        .ok()
        .and_then(|all| all.into_iter().min())
    else {
        return Vec::new();
    };
    let Some(bound) = tidings_projections::trim_applied_by(trims, oldest) else {
        return Vec::new();
    };
    let named: HashSet<u64> = sidecars.iter().map(|s| s.first_offset).collect();
    let first_of = |key: &str| -> Option<u64> {
        let name = key.strip_prefix(SIDECAR_DIR)?.strip_prefix('/')?;
        let digits = name.get(..20)?;
        let rest = name.get(20..)?;
        (rest == ".cidx" || (rest.starts_with('-') && rest.ends_with(".cidx")))
            .then(|| digits.parse().ok())
            .flatten()
    };
    let mut firsts: Vec<u64> = keys.iter().filter_map(|k| first_of(k)).collect();
    firsts.sort_unstable();
    firsts.dedup();
    let gone: HashSet<u64> =
        tidings_projections::let_go_sidecars(&firsts, |f| named.contains(&f), latest.trim, bound)
            .into_iter()
            .collect();
    let mut doomed: Vec<String> = keys
        .iter()
        .filter(|k| first_of(k).is_some_and(|f| gone.contains(&f)))
        .cloned()
        .collect();
    doomed.sort();
    doomed
}

/// The snapshots of the store (`names`, `{applied:020}.snap`) that are not kept: all but the
/// newest [`KEEP_SNAPSHOTS`] and the newest [`KEEP_RESTORABLE`] a restore could use — below
/// `end`, the end of the uploaded segments (the newest three may all lie past it, on a server
/// whose writes fit in the active segment); the retention removes segments only below those
/// two (`retention.rs`).
fn stale_snapshots(mut names: Vec<String>, end: u64) -> Vec<String> {
    names.sort();
    let applied = |n: &String| n.strip_suffix(".snap").and_then(|a| a.parse::<u64>().ok());
    let restorable: Vec<String> = names
        .iter()
        .rev()
        .filter(|n| applied(n).is_some_and(|a| a < end))
        .take(KEEP_RESTORABLE)
        .cloned()
        .collect();
    let stale = names.len().saturating_sub(KEEP_SNAPSHOTS);
    names.truncate(stale);
    names.retain(|n| !restorable.contains(n));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A [`SnapshotUpload`] of `snap` with `sidecars` and no `log_trimmed`.
    fn up<'a>(
        projections: &'a Path,
        snap: &'a Path,
        sidecars: &'a [Sidecar],
    ) -> SnapshotUpload<'a> {
        SnapshotUpload {
            projections,
            snap,
            sidecars,
            trims: &[],
        }
    }

    /// The store's sidecars the retention let go: with every snapshot kept there following the
    /// latest `log_trimmed` event, those starting below its start; with the oldest between two
    /// events, those starting below the first one the earlier event kept; none while one
    /// precedes every event known; never one the uploaded snapshot names (under either key
    /// form), and no key of another shape. A stray (another writer's) inside a kept sidecar's
    /// range does not make it look let go.
    #[test]
    fn store_sidecars_go_as_far_as_the_oldest_kept_snapshot_let_them_go() {
        let side = |first: u64, crc: u32| Sidecar {
            first_offset: first,
            last_offset: first + 9,
            entries: 10,
            crc,
        };
        let keys: HashSet<String> = [
            sidecar_key(&side(0, 1)),
            legacy_sidecar_key(&side(10, 0)),
            sidecar_key(&side(12, 7)),
            sidecar_key(&side(20, 2)),
            sidecar_key(&side(30, 3)),
            legacy_sidecar_key(&side(30, 0)),
            sidecar_key(&side(40, 4)),
            format!("{SIDECAR_DIR}/notes.txt"),
            format!("{SIDECAR_DIR}/00000000000000000005-x.tmp"),
        ]
        .into_iter()
        .collect();
        // The snapshot names 30 (which starts below the start, 35, and reaches past it) and 40.
        let named = [side(30, 3), side(40, 4)];
        let mark = |offset, start, keep_from| tidings_projections::TrimApplied {
            trim: tidings_projections::Trimmed { offset, start },
            keep_from,
        };
        let trimmed = mark(50, 35, 30);
        let snaps = |applied: &[u64]| -> Vec<String> {
            applied.iter().map(|a| format!("{a:020}.snap")).collect()
        };
        let stale = |kept: &[u64]| stale_sidecars(snaps(kept).iter(), &keys, &named, &[trimmed]);
        assert_eq!(
            stale(&[49, 50, 60]),
            Vec::<String>::new(),
            "49 is from before"
        );
        let want = vec![
            sidecar_key(&side(0, 1)),
            legacy_sidecar_key(&side(10, 0)),
            sidecar_key(&side(12, 7)),
            sidecar_key(&side(20, 2)),
        ];
        assert_eq!(stale(&[50, 60, 70]), want);
        let no_trim_below = mark(50, 0, 0);
        let kept = snaps(&[60]);
        assert!(stale_sidecars(kept.iter(), &keys, &named, &[no_trim_below]).is_empty());
        // A kept snapshot from between two events: what the earlier one let go, below the
        // first sidecar it kept (10, which the snapshot at 45 names; the stray at 12 inside
        // its range does not make it look ended below the start, 15). Until 2026-12-03:
        // nothing.
        let earlier = mark(40, 15, 10);
        let kept = snaps(&[45, 60]);
        assert_eq!(
            stale_sidecars(kept.iter(), &keys, &named, &[earlier, trimmed]),
            vec![sidecar_key(&side(0, 1))]
        );
        assert!(
            stale_sidecars(snaps(&[39, 60]).iter(), &keys, &named, &[earlier, trimmed]).is_empty(),
            "a snapshot from before every event known"
        );
    }

    /// The store keeps its newest three snapshots and the newest two below the end of the
    /// uploaded segments (those a restore could use, which bound the retention).
    #[test]
    fn the_store_keeps_the_newest_three_and_two_a_restore_could_use() {
        let names: Vec<String> = [5, 8, 15, 25, 30, 40]
            .iter()
            .map(|a| format!("{a:020}.snap"))
            .collect();
        let stale = |end| -> Vec<u64> {
            stale_snapshots(names.clone(), end)
                .iter()
                .map(|n| n[..20].parse().unwrap())
                .collect()
        };
        assert_eq!(stale(u64::MAX), [5, 8, 15]);
        assert_eq!(stale(41), [5, 8, 15]);
        assert_eq!(stale(26), [5, 8]);
        assert_eq!(stale(20), [5]);
        assert_eq!(stale(10), [15]);
        assert_eq!(stale(0), [5, 8, 15]);
    }
    use object_store::ObjectStoreExt as _;
    use tidings_log::tier::manifest::Manifest;
    use tidings_log::{Log, LogOptions};
    use tidings_projections::msgindex;

    /// The node id is generated once, written whole through the durable path (no temporary
    /// left beside it), and read back the same at the next start; an empty node.id (what a
    /// power cut could leave of a plain write) is replaced.
    #[test]
    fn the_node_id_is_written_whole_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let path = dir.path().join("node.id");
        std::fs::write(&path, b"").unwrap();
        let config = Config::default();
        let id = node_id(&config, &data).unwrap();
        assert_eq!(id.len(), 16, "{id}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), id);
        assert!(!dir.path().join("node.id.tmp").exists());
        assert_eq!(node_id(&config, &data).unwrap(), id);
        // One that cannot be read is an error, not a new id written over it.
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let e = node_id(&config, &data).unwrap_err();
        assert!(format!("{e:#}").contains("node.id"), "{e:#}");
        assert_eq!(std::fs::read(&path).unwrap(), [0xff, 0xfe]);
    }

    /// A local-directory store, and a data directory and a cache for node-a's log.
    struct Setup {
        _bucket: tempfile::TempDir,
        data: tempfile::TempDir,
        cache: tempfile::TempDir,
        store: Arc<dyn ObjectStore>,
    }

    impl Setup {
        fn new() -> (Setup, Arc<dyn ObjectStore>) {
            let bucket = tempfile::tempdir().unwrap();
            let store: Arc<dyn ObjectStore> =
                Arc::new(LocalFileSystem::new_with_prefix(bucket.path()).unwrap());
            let t = Setup {
                _bucket: bucket,
                data: tempfile::tempdir().unwrap(),
                cache: tempfile::tempdir().unwrap(),
                store: store.clone(),
            };
            (t, store)
        }

        /// node-a's log, tiered under prefix `p`; it uploads when asked.
        async fn open_log(&self) -> Log {
            let tier = Tier::open(
                TierOptions::new(self.store.clone(), "p", "test", "node-a", self.cache.path())
                    .with_upload_interval(Duration::from_secs(3600)),
            )
            .await
            .unwrap();
            Log::open(
                self.data.path().join("log"),
                LogOptions::default().with_tier(tier),
            )
            .await
            .unwrap()
        }

        /// [`Setup::open_log`] with one record appended, sealed and uploaded (the prefix is
        /// claimed), and its tier.
        async fn log_with_one_uploaded(&self) -> (Log, Tier) {
            let log = self.open_log().await;
            log.append_one(bytes::Bytes::from_static(b"one"))
                .await
                .unwrap();
            log.roll().await.unwrap();
            log.upload_now().await.unwrap();
            let tier = log.tier().unwrap().clone();
            (log, tier)
        }
    }

    /// Puts manifest version `m` into the store (as another writer would).
    async fn put_version(store: &Arc<dyn ObjectStore>, m: &Manifest) {
        let key = object_store::path::Path::from(format!("p/{}", Manifest::key(m.epoch)));
        store
            .put(&key, object_store::PutPayload::from(m.encode()))
            .await
            .unwrap();
    }

    /// A server fenced from the prefix does not upload its snapshot: before, it put it (and
    /// its sidecars) under the same fixed keys the owner uses and pruned the owner's newest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fenced_server_uploads_no_snapshot() {
        let (t, store) = Setup::new();
        let ((log, tier), data) = (t.log_with_one_uploaded().await, &t.data);
        let snap = data.path().join("00000000000000000000.snap");
        std::fs::write(&snap, b"a snapshot").unwrap();
        let uploaded = Mutex::new(None);
        upload_snapshot(&tier, &up(data.path(), &snap, &[]), &uploaded)
            .await
            .unwrap();
        assert_eq!(tier.list("snapshots").await.unwrap().len(), 1);
        // node-b takes the prefix over (its manifest version lands first).
        let theirs = tier.manifest().next("node-b", u64::MAX / 2);
        put_version(&store, &theirs).await;
        log.append_one(bytes::Bytes::from_static(b"two"))
            .await
            .unwrap();
        log.roll().await.unwrap();
        assert!(log.upload_now().await.is_err());
        assert!(tier.status().fenced);
        let newer = data.path().join("00000000000000000001.snap");
        std::fs::write(&newer, b"another snapshot").unwrap();
        upload_snapshot(&tier, &up(data.path(), &newer, &[]), &uploaded)
            .await
            .unwrap();
        assert_eq!(
            tier.list("snapshots").await.unwrap(),
            vec!["00000000000000000000.snap".to_owned()]
        );
        log.close().await.unwrap();
    }

    /// Nor one whose status still says "claimed" because it has not written a manifest version
    /// since another writer took the prefix over (it was cut off): its snapshot would have
    /// overwritten or pruned the new owner's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_overtaken_before_its_next_manifest_write_uploads_no_snapshot() {
        let (t, store) = Setup::new();
        let ((log, tier), data) = (t.log_with_one_uploaded().await, &t.data);
        // node-b takes over and uploads snapshots of its own; node-a has not noticed.
        put_version(&store, &tier.manifest().next("node-b", u64::MAX / 2)).await;
        for applied in [10, 11, 12] {
            let snap = data.path().join(format!("{applied:020}.snap"));
            std::fs::write(&snap, b"node-b's").unwrap();
            tier.put_file(&format!("snapshots/{applied:020}.snap"), &snap)
                .await
                .unwrap();
        }
        assert!(tier.status().claimed && !tier.status().fenced);
        let ours = data.path().join(format!("{:020}.snap", 13));
        std::fs::write(&ours, b"node-a's").unwrap();
        upload_snapshot(&tier, &up(data.path(), &ours, &[]), &Mutex::new(None))
            .await
            .unwrap();
        let names = tier.list("snapshots").await.unwrap();
        assert_eq!(
            names,
            [10, 11, 12]
                .iter()
                .map(|a| format!("{a:020}.snap"))
                .collect::<Vec<_>>()
        );
        log.close().await.unwrap();
    }

    /// Nor does one that has not claimed the prefix: here it waits out the lease of another
    /// process under its node id (a copy of its data directory may be running).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_waiting_to_claim_uploads_no_snapshot() {
        let (t, store) = Setup::new();
        let mut other = Manifest::new("node-a", u64::MAX / 2);
        other.owner.incarnation = Some(7);
        put_version(&store, &other).await;
        let (log, data) = (t.open_log().await, &t.data);
        let tier = log.tier().unwrap().clone();
        assert!(!tier.status().claimed);
        let snap = data.path().join("00000000000000000000.snap");
        std::fs::write(&snap, b"a snapshot").unwrap();
        upload_snapshot(&tier, &up(data.path(), &snap, &[]), &Mutex::new(None))
            .await
            .unwrap();
        assert!(tier.list("snapshots").await.unwrap().is_empty());
        log.close().await.unwrap();
    }

    /// A snapshot in the store below the manifest's `start` (a retention removed the segments
    /// below it: a manifest version without them) is not restored — the replay after it
    /// would lack the records up to the start —, and with no other the restore brings none
    /// (before, it restored it). One at the start is restored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_skips_the_snapshots_below_the_stores_start() {
        let (t, store) = Setup::new();
        let log = t.open_log().await;
        // Two uploaded segments: offsets 0 and 1, then 2 and 3.
        let records: [&[u8]; 4] = [b"one", b"two", b"three", b"four"];
        for (i, r) in records.iter().enumerate() {
            log.append_one(bytes::Bytes::copy_from_slice(r))
                .await
                .unwrap();
            if i % 2 == 1 {
                log.roll().await.unwrap();
                log.upload_now().await.unwrap();
            }
        }
        let tier = log.tier().unwrap().clone();
        assert_eq!(tier.manifest().segments.len(), 2);
        let put_snapshot = |applied: u64| {
            let (tier, dir) = (tier.clone(), t.data.path().join("snaps"));
            async move {
                std::fs::create_dir_all(&dir).unwrap();
                let state = tidings_projections::State {
                    applied: Some(applied),
                    ..Default::default()
                };
                let name = format!("{applied:020}.snap");
                let file = dir.join(&name);
                std::fs::write(&file, snapshot::encode(&state).unwrap()).unwrap();
                tier.put_file(&format!("snapshots/{name}"), &file)
                    .await
                    .unwrap();
            }
        };
        put_snapshot(1).await;
        let restored = |n: &str| t.data.path().join(n);
        assert!(restore_snapshot(&tier, &restored("a")).await.unwrap());
        // A retention took the first segment out of the store: the log starts at 2.
        let mut trimmed = tier.manifest().next("node-b", u64::MAX / 2);
        trimmed.segments.retain(|s| s.base >= 2);
        trimmed.start = Some(2);
        put_version(&store, &trimmed).await;
        assert!(!restore_snapshot(&tier, &restored("b")).await.unwrap());
        assert!(
            snapshot::list(&restored("b").join("snapshots"))
                .unwrap()
                .is_empty()
        );
        put_snapshot(2).await;
        assert!(restore_snapshot(&tier, &restored("c")).await.unwrap());
        let got = snapshot::list(&restored("c").join("snapshots")).unwrap();
        assert_eq!(got.iter().map(|f| f.applied).collect::<Vec<_>>(), [2]);
        // A newer snapshot whose message index sidecar is not in the store: the older one is
        // restored (before, the first such sidecar went to a replay from the log's start,
        // which this trimmed store no longer holds).
        let (_, side) = sidecar(2, &[(1, 2)]);
        let mut state = tidings_projections::State {
            applied: Some(3),
            ..Default::default()
        };
        state.index.sidecars.push(side);
        let file = t.data.path().join("snaps").join(format!("{:020}.snap", 3));
        std::fs::write(&file, snapshot::encode(&state).unwrap()).unwrap();
        tier.put_file(&format!("snapshots/{:020}.snap", 3), &file)
            .await
            .unwrap();
        assert!(restore_snapshot(&tier, &restored("d")).await.unwrap());
        let got = snapshot::list(&restored("d").join("snapshots")).unwrap();
        assert_eq!(got.iter().map(|f| f.applied).collect::<Vec<_>>(), [2]);
        log.close().await.unwrap();
    }

    /// A sidecar file as the message index writes it, and its entry for a snapshot.
    fn sidecar(first_offset: u64, entries: &[(u64, u64)]) -> (Vec<u8>, msgindex::Sidecar) {
        let mut body = Vec::new();
        for (seq, offset) in entries {
            body.extend_from_slice(&seq.to_le_bytes());
            body.extend_from_slice(&offset.to_le_bytes());
        }
        let crc = crc32fast::hash(&body);
        let mut bytes = b"TDCX".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&first_offset.to_le_bytes());
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.resize(32, 0);
        bytes.extend_from_slice(&body);
        let side = msgindex::Sidecar {
            first_offset,
            last_offset: entries.last().map_or(first_offset, |e| e.1),
            entries: entries.len() as u64,
            crc,
        };
        (bytes, side)
    }

    /// Sidecar keys carry the CRC, so a stale owner not yet fenced that uploads its own sidecar
    /// at the same first offset puts it beside the owner's, not over it; and a restore checks
    /// each sidecar it downloads against the snapshot's record of it, so one found under the
    /// legacy key (no CRC) with other entries makes the server replay the log instead of
    /// serving history through a wrong index.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_gets_the_sidecar_its_snapshot_describes() {
        let (t, _store) = Setup::new();
        let log = t.open_log().await;
        for r in [&b"one"[..], b"two"] {
            log.append_one(bytes::Bytes::copy_from_slice(r))
                .await
                .unwrap();
        }
        log.roll().await.unwrap();
        log.upload_now().await.unwrap();
        let tier = log.tier().unwrap().clone();
        let (ours, side) = sidecar(0, &[(1, 0)]);
        let (theirs, their_side) = sidecar(0, &[(1, 1)]);
        assert_eq!(ours.len(), theirs.len());
        // The owner uploads a snapshot and the sidecar it needs.
        let mut state = tidings_projections::State {
            applied: Some(0),
            ..Default::default()
        };
        state.index.sidecars.push(side);
        let owner = t.data.path().join("owner");
        std::fs::create_dir_all(owner.join("index")).unwrap();
        std::fs::write(sidecar_path(&owner.join("index"), 0), &ours).unwrap();
        let snap = owner.join("00000000000000000000.snap");
        std::fs::write(&snap, snapshot::encode(&state).unwrap()).unwrap();
        upload_snapshot(&tier, &up(&owner, &snap, &[side]), &Mutex::new(None))
            .await
            .unwrap();
        // A stale writer uploads its sidecar for the same offsets (as its upload would).
        let put = |key: String, bytes: Vec<u8>| {
            let (tier, file) = (tier.clone(), t.data.path().join("side.cidx"));
            async move {
                std::fs::write(&file, bytes).unwrap();
                tier.put_file(&key, &file).await.unwrap();
            }
        };
        put(sidecar_key(&their_side), theirs.clone()).await;
        let restored = |n: &str| t.data.path().join(n);
        assert!(restore_snapshot(&tier, &restored("a")).await.unwrap());
        let got = std::fs::read(sidecar_path(&restored("a").join("index"), 0)).unwrap();
        assert_eq!(got, ours);
        // Under the legacy key only: the right sidecar restores, another one does not.
        tier.delete(&sidecar_key(&side)).await.unwrap();
        put(legacy_sidecar_key(&side), theirs).await;
        assert!(!restore_snapshot(&tier, &restored("b")).await.unwrap());
        let left = snapshot::list(&restored("b").join("snapshots")).unwrap();
        assert!(left.is_empty());
        put(legacy_sidecar_key(&side), ours.clone()).await;
        assert!(restore_snapshot(&tier, &restored("c")).await.unwrap());
        let got = std::fs::read(sidecar_path(&restored("c").join("index"), 0)).unwrap();
        assert_eq!(got, ours);
        // A sidecar the store fails to serve (not "not found": here a symlink loop in the
        // bucket) stops the restore with an error and leaves no snapshot behind — before, the
        // snapshot was already in place and the next start loaded it without its sidecar.
        put(sidecar_key(&side), ours.clone()).await;
        let object = t._bucket.path().join("p").join(sidecar_key(&side));
        std::fs::remove_file(&object).unwrap();
        std::os::unix::fs::symlink(&object, &object).unwrap();
        assert!(restore_snapshot(&tier, &restored("d")).await.is_err());
        assert!(
            snapshot::list(&restored("d").join("snapshots"))
                .unwrap()
                .is_empty()
        );
        std::fs::remove_file(&object).unwrap();
        put(sidecar_key(&side), ours.clone()).await;
        // What a crash mid-restore would leave is cleaned by the next one.
        let leftovers = [
            restored("d").join("snapshots/00000000000000000009.snap.restoring"),
            restored("d").join("snapshots/00000000000000000009.snap.download"),
            restored("d").join("index/00000000000000000009.download"),
        ];
        for f in &leftovers {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, b"half").unwrap();
        }
        assert!(restore_snapshot(&tier, &restored("d")).await.unwrap());
        assert_eq!(
            snapshot::list(&restored("d").join("snapshots"))
                .unwrap()
                .len(),
            1
        );
        assert!(leftovers.iter().all(|f| !f.exists()));
        log.close().await.unwrap();
    }

    /// A sidecar the log cannot make again (`index_repair`) is fetched from the store: the one
    /// recorded, under its key or the legacy one; another one found there is not left in place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_sidecar_is_fetched_from_the_store_only_when_it_is_the_one_recorded() {
        let (t, _store) = Setup::new();
        let log = t.open_log().await;
        let tier = log.tier().unwrap().clone();
        let (ours, side) = sidecar(0, &[(1, 0), (2, 1)]);
        let (theirs, _) = sidecar(0, &[(1, 0), (2, 2)]);
        let dir = t.data.path().join("index");
        let local = sidecar_path(&dir, 0);
        let put = |key: String, bytes: &[u8]| {
            let (tier, file) = (tier.clone(), t.data.path().join("side.cidx"));
            std::fs::write(&file, bytes).unwrap();
            async move { tier.put_file(&key, &file).await.unwrap() }
        };
        assert!(
            !fetch_sidecar(&tier, &dir, &side).await.unwrap(),
            "not there"
        );
        put(legacy_sidecar_key(&side), &theirs).await;
        assert!(!fetch_sidecar(&tier, &dir, &side).await.unwrap());
        assert!(!local.exists(), "another one is not left in place");
        put(sidecar_key(&side), &theirs).await;
        assert!(!fetch_sidecar(&tier, &dir, &side).await.unwrap());
        assert!(!local.exists());
        put(legacy_sidecar_key(&side), &ours).await;
        assert!(fetch_sidecar(&tier, &dir, &side).await.unwrap());
        assert_eq!(std::fs::read(&local).unwrap(), ours);
        std::fs::remove_file(&local).unwrap();
        put(sidecar_key(&side), &ours).await;
        assert!(fetch_sidecar(&tier, &dir, &side).await.unwrap());
        assert_eq!(std::fs::read(&local).unwrap(), ours);
        let read = || std::fs::read(&local).unwrap();

        // A local file stays as it was when the store's copy is rejected (the copy went over
        // it and was then deleted), and nothing is left beside it.
        std::fs::write(&local, &theirs).unwrap();
        tier.delete(&sidecar_key(&side)).await.unwrap();
        put(legacy_sidecar_key(&side), &theirs).await;
        assert!(!fetch_sidecar(&tier, &dir, &side).await.unwrap());
        assert_eq!(read(), theirs);
        assert!(!local.with_extension("cidx.fetch").exists());

        // The repair: a file that checks is left alone; a damaged one the log cannot make
        // (these entries are not this log's: it is empty) comes from the store; with no good
        // copy there it fails and the file stays; stopped, it does not reach the store.
        use super::super::index_repair::{Outcome, repair};
        let (never, stopped) = (
            tokio_util::sync::CancellationToken::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        stopped.cancel();
        std::fs::write(&local, &ours).unwrap();
        assert_eq!(repair(&log, &dir, side, &never).await, Outcome::Intact);
        std::fs::write(&local, &theirs).unwrap();
        put(sidecar_key(&side), &ours).await;
        assert_eq!(repair(&log, &dir, side, &stopped).await, Outcome::Failed);
        assert_eq!(read(), theirs);
        assert_eq!(repair(&log, &dir, side, &never).await, Outcome::Fetched);
        assert_eq!(read(), ours);
        std::fs::remove_file(&local).unwrap();
        tier.delete(&sidecar_key(&side)).await.unwrap();
        assert_eq!(repair(&log, &dir, side, &never).await, Outcome::Failed);
        assert!(!local.exists());
        log.close().await.unwrap();
    }

    /// A snapshot upload checks each sidecar it uploads: a damaged one is not stored (the
    /// store would keep it under its key for good) and the error names it for the repair.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_sidecar_is_not_uploaded() {
        let (t, _store) = Setup::new();
        let (log, tier) = t.log_with_one_uploaded().await;
        let (mut bytes, side) = sidecar(0, &[(1, 0)]);
        let owner = t.data.path().join("owner");
        std::fs::create_dir_all(owner.join("index")).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(sidecar_path(&owner.join("index"), 0), &bytes).unwrap();
        let mut state = tidings_projections::State {
            applied: Some(0),
            ..Default::default()
        };
        state.index.sidecars.push(side);
        let snap = owner.join("00000000000000000000.snap");
        std::fs::write(&snap, snapshot::encode(&state).unwrap()).unwrap();
        let e = upload_snapshot(&tier, &up(&owner, &snap, &[side]), &Mutex::new(None))
            .await
            .unwrap_err();
        assert_eq!(e.downcast_ref::<DamagedSidecar>().unwrap().first_offset, 0);
        assert!(tier.list(SIDECAR_DIR).await.unwrap().is_empty());
        assert!(tier.list("snapshots").await.unwrap().is_empty());
        log.close().await.unwrap();
    }
}
