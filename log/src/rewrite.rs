//! Rewriting a sealed segment in place of itself: the same batches at the same positions, the
//! bytes of some records replaced by others of the same length (`log/DESIGN.md`, "Rewriting a
//! sealed segment"). Compaction uses it to purge the payloads of recalled messages.
//!
//! A replaced record keeps its length, so every batch keeps its length and its position: the
//! segment keeps its size, its name, its offsets and timestamps, and both index files (which
//! hold offsets, timestamps and byte positions) stay true; only the batches holding a replaced
//! record change (those records' bytes and the batch's CRC). The new segment is written beside
//! the old one as `{base:020}.log.rewrite`, synced, read back and checked, and renamed over it;
//! then the directory is synced. A crash leaves the old segment or the new one under its name,
//! each whole and valid, never a mix; a writable open removes a temp file a crash left.
//!
//! Only the writer writes the active segment, and a rewrite never touches it; readers keep
//! reading through the segment value they hold (its open file is the old one until they let
//! go), and the log's segment list gets a fresh value for the rewritten segment, which opens
//! the new file. Refused for read-only views.
//!
//! With a tier (`Uploader::rewrite`, under the uploader's pass lock — no upload, removal or
//! local deletion meanwhile — but for a segment only in the store, whose read and upload run
//! without it, under the log's rewrite lock alone), a segment not uploaded yet is rewritten as above and goes up
//! later with its new bytes. A local copy of an uploaded segment is rewritten the same way, a
//! marker `{base:020}.log.reupload` made durable before the rename; then it goes up under new
//! objects, a manifest version names them in place of the old entry, the old objects are
//! deleted and the marker removed. Until then the local copy is kept (the local retention and
//! removals stop at it: its CRC is not the entry's), and a pass finishes what a crash left —
//! uploads it, or drops the marker when the store holds its bytes already (a rename that never
//! happened, a manifest version that landed). A segment only in the object store is rewritten
//! from its cold reads into `{base:020}.log.purge`, uploaded from there under new objects (its
//! index objects copied) named in place of its entry under the pass lock again (if the prefix
//! is still held and the entry unchanged), and the temp file removed
//! (`Uploader::rewrite_remote`).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{self, BatchHeader, HEADER_LEN, RECORD_OVERHEAD};
use crate::error::{CorruptKind, LogError, Result};
use crate::log::Log;
use crate::segment::{self, Scanner, Segment};
use crate::vfs::{Vfs, VfsFile};

/// Appended to a segment's file name to name its rewrite while it is written:
/// `{base:020}.log.rewrite`. Not a segment name, nor one ending in `.log` (which open reports).
const REWRITE_SUFFIX: &str = ".rewrite";

/// Bytes gathered before a write to the rewrite's file (and read at a time by its scans).
const WRITE_CHUNK: usize = 4 << 20;

/// A sealed segment, as listed for a rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedSegment {
    /// Its first offset.
    pub base: u64,
    /// One past its last offset (the next segment's base).
    pub end: u64,
    /// Only in the object store (not in the local directory).
    pub remote: bool,
}

/// What a rewrite did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewriteStats {
    /// Records replaced.
    pub records: u64,
    /// Batches rebuilt (their CRC changed).
    pub batches: u64,
    /// Bytes of the segment file written.
    pub bytes: u64,
}

/// The name of the file the segment at `base` is rewritten into.
fn rewrite_name(base: u64) -> String {
    format!("{}{REWRITE_SUFFIX}", segment::log_name(base))
}

/// Whether `name` is a segment's rewrite file (`{base:020}.log.rewrite`).
pub(crate) fn is_rewrite_leftover(name: &str) -> bool {
    name.strip_suffix(REWRITE_SUFFIX)
        .and_then(segment::parse_log_name)
        .is_some()
}

/// Removes the rewrite files `names` in `dir`, which a crash (or a process killed) left before
/// their rename: the segment each was made from is whole under its own name. Called by a
/// writable open, under the directory lock. A file that cannot be removed is only reported:
/// the next rewrite of its segment removes it first.
pub(crate) fn remove_leftovers(vfs: &dyn Vfs, dir: &Path, names: &[&str]) -> Result<()> {
    let mut removed = false;
    for name in names {
        let path = dir.join(name);
        match vfs.remove(&path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "removed a segment rewrite that stopped before its rename (the segment is as it was)");
                removed = true;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not remove a segment rewrite that stopped before its rename");
            }
        }
    }
    if removed {
        vfs.sync_dir(dir)
            .map_err(|e| LogError::io("sync directory", dir, e))?;
    }
    Ok(())
}

impl Log {
    /// Sealed segments (every segment but the active one), oldest first.
    pub fn sealed_segments(&self) -> Vec<SealedSegment> {
        // The watermark first, as reads do: the segment list is published before any
        // watermark that names its active segment.
        let wm = self.watermark();
        let segs = self.shared.segments.load();
        segs.iter()
            .enumerate()
            .take_while(|(_, s)| s.base < wm.active_base)
            .map(|(i, s)| SealedSegment {
                base: s.base,
                end: segs.get(i + 1).map_or(wm.next_offset, |next| next.base),
                remote: s.is_remote(),
            })
            .collect()
    }

    /// Rewrites the sealed segment starting at `base`, each record at an offset in
    /// `replacements` replaced by the given bytes, which must have the record's length.
    /// Atomic per segment (temp file, fsync, rename, dir fsync). Errors: LogError variants.
    ///
    /// With a tier, a local copy the object store holds goes up again under new objects once
    /// rewritten, and its manifest entry is replaced (`Uploader::rewrite`); a segment only in
    /// the store is rewritten from cold reads and replaced the same way.
    ///
    /// Refused with [`LogError::RewriteRefused`], the segment left as it was, for a read-only
    /// view, a tiered log that does not hold its prefix (fenced, diverged, not claimed yet), a
    /// `base` that is not a sealed segment's (the active segment's, or none; without a tier,
    /// one only in the object store), an offset outside `[base, end)`, and a replacement
    /// of another length than its record's; [`LogError::Closed`] once the log is closed. Every
    /// batch of the segment is read and checked: damage fails the rewrite
    /// ([`LogError::Corrupt`]) with nothing changed. Rewrites of one log run one at a time,
    /// beside appends and reads. Once the rename is made, this log's reads return the new bytes
    /// (a read already under way may return the old ones); an error from the directory sync
    /// after it leaves the rename perhaps not durable: a crash then may keep the old segment,
    /// and running the rewrite again makes it so. No replacement: nothing is written.
    pub async fn rewrite_sealed(
        &self,
        base: u64,
        replacements: BTreeMap<u64, Bytes>,
    ) -> Result<RewriteStats> {
        // Taken before the checks and held by the blocking task to its end, even if this
        // future is dropped meanwhile: a close waits for it.
        let guard = self.shared.rewrites.clone().lock_owned().await;
        if self.tier().is_some() && !self.is_read_only() {
            let up = self.uploader().ok_or_else(|| LogError::RewriteRefused {
                base,
                reason: "the log's tier is not running".into(),
            })?;
            return up.rewrite(self, base, replacements, guard).await;
        }
        let log = self.clone();
        tokio::task::spawn_blocking(move || {
            let _running = guard;
            log.rewrite_blocking(base, &replacements)
        })
        .await
        .map_err(|_| LogError::Closed)?
    }

    /// [`Log::rewrite_sealed`], under its lock (with a tier, under the uploader's pass lock too:
    /// `Uploader::rewrite`).
    pub(crate) fn rewrite_blocking(
        &self,
        base: u64,
        replacements: &BTreeMap<u64, Bytes>,
    ) -> Result<RewriteStats> {
        let refuse = |reason: String| LogError::RewriteRefused { base, reason };
        if self.is_read_only() {
            return Err(refuse("the log is open read-only".into()));
        }
        if self.is_closed() {
            return Err(LogError::Closed);
        }
        let wm = self.watermark();
        let segs = self.shared.segments.load_full();
        let Some((i, seg)) = segs.iter().enumerate().find(|(_, s)| s.base == base) else {
            return Err(refuse(format!("no segment starts at offset {base}")));
        };
        if base >= wm.active_base {
            return Err(refuse("it is the active segment".into()));
        }
        if seg.is_remote() {
            return Err(refuse(
                "it is only in the object store, not in the local directory".into(),
            ));
        }
        let end = segs.get(i + 1).map_or(wm.next_offset, |next| next.base);
        if let Some(offset) = replacements.keys().find(|&&o| o < base || o >= end) {
            return Err(refuse(format!(
                "offset {offset} is not in the segment, which holds [{base}, {end})"
            )));
        }
        if replacements.is_empty() {
            return Ok(RewriteStats::default());
        }
        let seg = seg.clone();
        drop(segs);
        let vfs = self.options().vfs.clone();
        let dir = self.dir().to_path_buf();
        let tmp = dir.join(rewrite_name(base));
        let written = write_rewrite(vfs.as_ref(), &seg, end, replacements, &tmp, None);
        let renamed = written.and_then(|stats| {
            vfs.rename(&tmp, &seg.paths.log)
                .map_err(|e| LogError::io("rename", &tmp, e))?;
            Ok(stats)
        });
        let stats = match renamed {
            Ok(stats) => stats,
            Err(e) => {
                // Nothing was renamed: the segment is as it was, and the temp file of no use.
                if let Err(rm) = vfs.remove(&tmp)
                    && rm.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(file = %tmp.display(), error = %rm, "could not remove a failed segment rewrite (the next writable open does)");
                }
                return Err(e);
            }
        };
        // Readers from here on open the new file: the old segment value's file, kept open in
        // the cache of sealed segments, is the old one (its cache entries go with the value,
        // once the last reader holding it lets go).
        let fresh = Arc::new(Segment::new(
            vfs.clone(),
            &dir,
            base,
            u64::from(self.options().index_interval_bytes),
        ));
        self.shared.segments.rcu(|segs| {
            segs.iter()
                .map(|s| {
                    if s.base == base && !s.is_remote() {
                        fresh.clone()
                    } else {
                        s.clone()
                    }
                })
                .collect::<Vec<_>>()
        });
        vfs.sync_dir(&dir)
            .map_err(|e| LogError::io("sync directory", &dir, e))?;
        tracing::info!(
            segment = %seg.paths.log.display(),
            records = stats.records,
            batches = stats.batches,
            "rewrote a sealed segment"
        );
        Ok(stats)
    }
}

/// Writes `seg`'s rewrite into `tmp` (removed first when a failed run left it: `open_write`
/// does not truncate), fdatasyncs it and checks it; `end` is the segment's end offset.
pub(crate) fn write_rewrite(
    vfs: &dyn Vfs,
    seg: &Segment,
    end: u64,
    replacements: &BTreeMap<u64, Bytes>,
    tmp: &Path,
    stop: Option<&tokio_util::sync::CancellationToken>,
) -> Result<RewriteStats> {
    match vfs.remove(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(LogError::io("remove", tmp, e)),
    }
    let out = vfs
        .open_write(tmp)
        .map_err(|e| LogError::io("create", tmp, e))?;
    let len = seg.sealed_len()?;
    let file = seg.file()?;
    let path = &seg.paths.log;
    let mut scan = Scanner::new(file.as_ref(), path, 0, len, seg.base).with_chunk(WRITE_CHUNK);
    let mut stats = RewriteStats::default();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(item) = scan.next_batch() {
        // Given up at a close (a segment only in the store, read through the cold path: its
        // blocks may take a read timeout each).
        if stop.is_some_and(|s| s.is_cancelled()) {
            return Err(LogError::Closed);
        }
        let (pos, header, bytes) = item?;
        let touched = replacements
            .range(header.base_offset..header.next_offset())
            .next()
            .is_some();
        if touched {
            let (patched, records) =
                patch_batch(&bytes, &header, replacements, path, pos, seg.base)?;
            pending.extend_from_slice(&patched);
            stats.records += records;
            stats.batches += 1;
        } else {
            pending.extend_from_slice(&bytes);
        }
        if pending.len() >= WRITE_CHUNK {
            flush(out.as_ref(), tmp, &mut pending, &mut stats.bytes)?;
        }
    }
    flush(out.as_ref(), tmp, &mut pending, &mut stats.bytes)?;
    // Offsets are dense: the segment's batches end where the next segment starts.
    if scan.expected_offset() != end {
        return Err(LogError::Corrupt {
            path: path.clone(),
            position: scan.position(),
            expected_offset: end,
            kind: CorruptKind::OffsetMismatch {
                found: scan.expected_offset(),
                expected: end,
            },
        });
    }
    out.sync_data().map_err(|e| LogError::io("sync", tmp, e))?;
    check_rewrite(out.as_ref(), tmp, seg.base, len, end).map_err(read_back_failed(tmp))?;
    Ok(stats)
}

/// Writes `pending` at `*written` in `out` and empties it.
fn flush(out: &dyn VfsFile, tmp: &Path, pending: &mut Vec<u8>, written: &mut u64) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    out.write_all_at(pending, *written)
        .map_err(|e| LogError::io("write", tmp, e))?;
    *written += pending.len() as u64;
    pending.clear();
    Ok(())
}

/// The batch `bytes` (checked by the scanner; at `pos` in `path`, in the segment at `seg_base`)
/// with the records at the offsets in `replacements` replaced and its CRC computed again, and
/// how many records were replaced. Every other byte stays as it was (header fields, reserved
/// ones included). A replacement must have its record's length.
fn patch_batch(
    bytes: &[u8],
    header: &BatchHeader,
    replacements: &BTreeMap<u64, Bytes>,
    path: &Path,
    pos: u64,
    seg_base: u64,
) -> Result<(Vec<u8>, u64)> {
    let corrupt = |kind: CorruptKind| LogError::Corrupt {
        path: path.to_path_buf(),
        position: pos,
        expected_offset: header.base_offset,
        kind,
    };
    let framing = |detail: &'static str| corrupt(CorruptKind::BadRecords { detail });
    let mut out = bytes.to_vec();
    let mut at = HEADER_LEN;
    let mut replaced = 0u64;
    for i in 0..u64::from(header.record_count) {
        let offset = header.base_offset + i;
        let len = out
            .get(at..at + RECORD_OVERHEAD)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) as usize)
            .ok_or_else(|| framing("record count exceeds the batch"))?;
        let start = at + RECORD_OVERHEAD;
        let stop = start
            .checked_add(len)
            .ok_or_else(|| framing("record length runs past the batch"))?;
        let record = out
            .get_mut(start..stop)
            .ok_or_else(|| framing("record length runs past the batch"))?;
        if let Some(new) = replacements.get(&offset) {
            if new.len() != len {
                return Err(LogError::RewriteRefused {
                    base: seg_base,
                    reason: format!(
                        "the replacement for offset {offset} is {} bytes, and the record {len}: a rewrite keeps every record's length",
                        new.len()
                    ),
                });
            }
            record.copy_from_slice(new);
            replaced += 1;
        }
        at = stop;
    }
    // The CRC covers bytes [8, batch_len) (`log/DESIGN.md`, "Batch layout").
    let crc = crc32fast::hash(out.get(8..).unwrap_or_default());
    if let Some(field) = out.get_mut(4..8) {
        field.copy_from_slice(&crc.to_le_bytes());
    }
    batch::validate(&out).map_err(corrupt)?;
    Ok((out, replaced))
}

/// The error of a rewrite that does not read back as written: a fault of this write (the disk
/// or memory), not damage of the segment it was made from, which read whole just before. An
/// I/O error, so a caller retries it; as [`LogError::Corrupt`] the purge took the segment for
/// damaged and never tried its records again (until 2026-12-02).
fn read_back_failed(tmp: &Path) -> impl FnOnce(LogError) -> LogError + '_ {
    move |e| match e {
        LogError::Corrupt { .. } => LogError::io(
            "check rewritten segment",
            tmp,
            io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        ),
        e => e,
    }
}

/// Reads the rewrite back from `tmp`: `len` bytes, every batch valid, offsets from `base` to
/// `end`, as the segment it replaces.
fn check_rewrite(file: &dyn VfsFile, tmp: &Path, base: u64, len: u64, end: u64) -> Result<()> {
    let file_len = file.len().map_err(|e| LogError::io("stat", tmp, e))?;
    if file_len != len {
        return Err(LogError::io(
            "check rewritten segment",
            tmp,
            io::Error::other(format!("{file_len} bytes written, the segment has {len}")),
        ));
    }
    let mut scan = Scanner::new(file, tmp, 0, len, base).with_chunk(WRITE_CHUNK);
    while let Some(item) = scan.next_batch() {
        item?;
    }
    if scan.expected_offset() != end {
        return Err(LogError::Corrupt {
            path: tmp.to_path_buf(),
            position: scan.position(),
            expected_offset: end,
            kind: CorruptKind::OffsetMismatch {
                found: scan.expected_offset(),
                expected: end,
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::vfs::StdFs;

    #[test]
    fn a_rewrite_that_reads_back_damaged_is_an_io_error_not_the_segments_damage() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(rewrite_name(0));
        let vfs = StdFs;
        let file = vfs.open_write(&tmp).unwrap();
        file.write_all_at(&[0xA5; 100], 0).unwrap();
        let err = check_rewrite(file.as_ref(), &tmp, 0, 100, 1).unwrap_err();
        assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
        let err = read_back_failed(&tmp)(err);
        assert!(
            matches!(&err, LogError::Io { op: "check rewritten segment", path, .. } if *path == tmp),
            "{err}"
        );
    }
}
