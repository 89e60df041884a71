//! A purge of recalled messages, carried out: [`run()`].
//!
//! The order is what keeps every step safe to cut short:
//! 1. A fresh snapshot of the caught-up state is written, anchored to the log's last record
//!    (the plan never purges that record, so the anchor stays valid).
//! 2. Every other snapshot file goes: older snapshots, set-aside ones (`….snap.ahead-of-log`,
//!    `.other-history`, `.other-settings`) and temp files of interrupted writes. Any of them
//!    may hold a recalled message's preview (a snapshot taken between a send and its recall),
//!    and older ones are anchored to records a purge may change.
//! 3. Each sealed segment with records to purge is rewritten (`Log::rewrite_sealed`: a temp
//!    file, fsync, rename, directory fsync — the segment is old or new, never half).
//!
//! A run cut short anywhere leaves a log and a snapshot that agree (a purged log rebuilds into
//! the state the original gave), and the next run plans what is left.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tidings_log::{Log, RewriteStats};
use tidings_projections::{Projections, snapshot};

use crate::error::{CompactionError, Result};
use crate::plan::Plan;
use crate::purge::purge_record;

/// A step of a run, as it is done (for progress output).
#[derive(Debug)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// The fresh snapshot was written (synced, and its directory).
    SnapshotWritten(&'a Path),
    /// A snapshot file other than the fresh one was removed.
    Removed(&'a Path),
    /// A segment was rewritten.
    SegmentRewritten {
        /// Its base offset.
        base: u64,
        /// What the rewrite did.
        stats: RewriteStats,
    },
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The fresh snapshot (`None`: the plan had nothing to purge, and nothing was done).
    pub snapshot: Option<PathBuf>,
    /// The snapshot files removed.
    pub removed: Vec<PathBuf>,
    /// Segments rewritten.
    pub segments: u64,
    /// Records purged.
    pub records: u64,
    /// Batches rebuilt.
    pub batches: u64,
    /// Bytes of segment files written.
    pub bytes: u64,
}

/// Carries out `plan` (from [`crate::plan_recall_purge`] over this log, protecting the state's
/// last offset) with `projections` caught up with `log`: the steps of the module doc, each
/// reported to `progress`. A plan with nothing to purge and no stale snapshot
/// ([`Plan::stale_copies`]) does nothing at all. The log must not
/// take appends meanwhile (the server stopped): a plan or state behind its end is refused
/// ([`CompactionError::Stale`]).
pub async fn run(
    log: &Log,
    projections: &Projections,
    plan: &Plan,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<Report> {
    let mut report = Report::default();
    if plan.is_idle() {
        return Ok(report);
    }
    let end = log.next_offset();
    if plan.end != end {
        return Err(CompactionError::Stale {
            what: "plan",
            at: plan.end,
            end,
        });
    }
    let stale_state = CompactionError::Stale {
        what: "projections",
        at: projections.state.next_offset(),
        end,
    };
    if projections.state.next_offset() != end {
        return Err(stale_state);
    }
    if plan.protect != projections.state.applied {
        return Err(CompactionError::WrongProtected {
            planned: plan.protect,
            anchored: projections.state.applied,
        });
    }
    // Only an empty state has no snapshot, and it is not caught up with a log holding records.
    let Some(mut prepared) = projections.prepare_snapshot() else {
        return Err(stale_state);
    };
    let applied = prepared.applied();
    let anchor = snapshot::anchor_at(log, applied)
        .await?
        .ok_or(CompactionError::Missing { offset: applied })?;
    prepared.set_anchor(anchor);

    let dir = projections.snapshot_dir();
    let fresh = snapshot::snapshot_path(&dir, applied);
    // Snapshots past the log's end first (a caller normally set them aside): newer than the
    // fresh one, they would have it pruned as the oldest.
    for snap in snapshot::list(&dir)? {
        if snap.applied > applied {
            remove(&snap.path)?;
            progress(Progress::Removed(&snap.path));
            report.removed.push(snap.path);
        }
    }
    // Listed before the write, whose pruning removes some of them.
    let others = other_snapshot_files(&dir, &fresh)?;
    let written = prepared.write()?;
    progress(Progress::SnapshotWritten(&written));
    report.snapshot = Some(written);
    for path in others {
        remove(&path)?;
        progress(Progress::Removed(&path));
        report.removed.push(path);
    }
    sync_dir(&dir)?;

    // The recalls acted on are durable before any record they recall is rewritten: a server
    // stopped under `fsync = every` or `never` (or killed) may have left them in the page
    // cache only, and a power cut after the rewrite kept a zeroed send without its recall.
    log.sync().await?;
    for (&base, offsets) in &plan.sealed {
        let replacements = purged_records(log, offsets).await?;
        if replacements.is_empty() {
            continue;
        }
        let stats = log.rewrite_sealed(base, replacements).await?;
        report.segments += 1;
        report.records += stats.records;
        report.batches += stats.batches;
        report.bytes += stats.bytes;
        progress(Progress::SegmentRewritten { base, stats });
    }
    Ok(report)
}

/// The purged bytes of the records at `offsets` (those purged already left out).
async fn purged_records(log: &Log, offsets: &[u64]) -> Result<BTreeMap<u64, Bytes>> {
    let mut out = BTreeMap::new();
    for &offset in offsets {
        let record = log
            .read(offset, 0)
            .await?
            .into_iter()
            .find(|r| r.offset == offset)
            .ok_or(CompactionError::Missing { offset })?;
        if let Some(purged) = purge_record(offset, &record.payload)? {
            out.insert(offset, purged);
        }
    }
    Ok(out)
}

/// Whether `name` is a snapshot file or one made from a snapshot: `{offset:020}.snap`, one set
/// aside (`{offset:020}.snap.ahead-of-log`, `.other-history`, `.other-settings`, or
/// `{offset:020}.{n}.snap.…` when one of that offset was set aside before), or the temp file
/// of a write (`.{offset:020}.snap.tmp`).
fn is_snapshot_file(name: &str) -> bool {
    let name = name.strip_prefix('.').unwrap_or(name);
    let b = name.as_bytes();
    if b.len() < 20 || !b[..20].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut rest = &b[20..];
    // `.{n}` of a second snapshot of the offset set aside.
    if let Some(after) = rest.strip_prefix(b".") {
        let digits = after.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 && after[digits..].starts_with(b".snap.") {
            rest = &after[digits..];
        }
    }
    rest.starts_with(b".snap") && (rest.len() == 5 || rest[5] == b'.')
}

/// The snapshot files in `dir` that may hold the preview of a message recalled at offset
/// `recalled_at` or before: every snapshot file ([`is_snapshot_file`]) but a plain
/// `{offset:020}.snap` of its offset or later (a state after the recall shows none). Set-aside
/// and temp files count, whatever their offset. By name.
pub fn stale_snapshot_files(dir: &Path, recalled_at: u64) -> Result<Vec<PathBuf>> {
    Ok(snapshot_files(dir)?
        .into_iter()
        .filter(|(name, _)| {
            name.strip_suffix(".snap")
                .filter(|o| o.len() == 20)
                .and_then(|o| o.parse::<u64>().ok())
                .is_none_or(|o| o < recalled_at)
        })
        .map(|(_, path)| path)
        .collect())
}

/// The snapshot files in `dir` ([`is_snapshot_file`]) but `keep` and its temp file, by name.
fn other_snapshot_files(dir: &Path, keep: &Path) -> Result<Vec<PathBuf>> {
    let keep_name = keep.file_name().and_then(OsStr::to_str).unwrap_or("");
    let keep_tmp = format!(".{keep_name}.tmp");
    Ok(snapshot_files(dir)?
        .into_iter()
        .filter(|(name, _)| *name != keep_name && *name != keep_tmp)
        .map(|(_, path)| path)
        .collect())
}

/// The snapshot files ([`is_snapshot_file`], regular files) in `dir` as (name, path), by name;
/// none when `dir` does not exist.
fn snapshot_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CompactionError::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CompactionError::io("list", dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && is_snapshot_file(&name) {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes `path` (gone already is fine: pruned by the fresh snapshot's write).
fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CompactionError::io("remove", path, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CompactionError::io("sync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshots, set-aside snapshots and temp files are snapshot files; other names are not.
    #[test]
    fn snapshot_files_are_told_by_name() {
        for name in [
            "00000000000000000042.snap",
            "00000000000000000042.snap.ahead-of-log",
            "00000000000000000042.snap.other-history",
            "00000000000000000042.snap.other-settings",
            "00000000000000000042.1.snap.other-settings",
            "00000000000000000042.12.snap.ahead-of-log",
            ".00000000000000000042.snap.tmp",
        ] {
            assert!(is_snapshot_file(name), "{name}");
        }
        for name in [
            "0000000000000000042.snap",
            "00000000000000000042.snapshot",
            "00000000000000000042.sna",
            "0000000000000000004x.snap",
            "notes.txt",
            "",
            "..00000000000000000042.snap",
            "00000000000000000042.1.snapx",
            "00000000000000000042.x.snap.other-settings",
        ] {
            assert!(!is_snapshot_file(name), "{name}");
        }
    }
}
