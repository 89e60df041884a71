//! Removing the oldest sealed segments: retention for a log without an object store
//! (`log/DESIGN.md`, "Removing the oldest segments (retention)"). The server removes the
//! segments whose records a durable snapshot covers; the log only removes what it is told to.
//!
//! A removal takes the longest prefix of sealed segments whose offsets all lie below the offset
//! asked for (never the active segment) out of the segment list first, so that readers that
//! load the list afterwards see the new start and get [`LogError::OffsetOutOfRange`] below it;
//! then it drops those segments' open files and indexes from the cache of sealed segments (an
//! unlinked file that is still open keeps its disk space), and unlinks their files, oldest
//! segment first and each segment's index files before its `.log`, syncing the directory after
//! each segment. A crash at any step leaves segments that are a suffix of the log, each with its
//! `.log`: open lists segments by their `.log` files alone, and a missing index loads as empty.
//!
//! A reader that took the segment list before the removal reads a removed segment through the
//! handle it holds, or opens its file again while the file is still there; once the file is
//! gone, the "not found" is answered as [`LogError::OffsetOutOfRange`] ([`Log::or_removed`]).
//!
//! Removals run one at a time with rewrites of sealed segments (`rewrite.rs`: the same lock), so
//! a segment being rewritten is never removed; the writer only writes the active segment, so
//! appends go on. Refused for read-only views.
//!
//! With a tier the removal is the object store's retention as well ([`Log::remove_tiered`]):
//! only segments already uploaded go, and they leave the store's manifest (its `start` moves
//! to the first offset kept) before the segment list, so a crash never leaves a store that
//! lists a segment the log removed; their objects are deleted last.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::error::{LogError, Result};
use crate::log::Log;
use crate::segment::{self, Segment, SegmentPaths};
use crate::vfs::Vfs;

/// What [`Log::remove_segments_before`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Sealed segments this call took out of the log (0 when no sealed segment at the start of
    /// the log held only offsets below the one asked for).
    pub segments: u64,
    /// Bytes of batches those segments held (their `.log` files; their index files, about 0.6%
    /// of that, are not counted).
    pub bytes: u64,
    /// The log's first offset afterwards ([`Log::start_offset`]): the base of its oldest
    /// remaining segment.
    pub start_offset: u64,
}

impl Log {
    /// Removes the oldest sealed segments whose records all lie below `offset`: the longest
    /// prefix of the segment list whose segments end (where the next one starts) at or before
    /// `offset`. The active segment is never removed, whatever `offset` is. Reads below the new
    /// start fail with [`LogError::OffsetOutOfRange`] from then on; the start only moves
    /// forward. Removing nothing is not an error: a second call with the same offset removes
    /// nothing (and finishes the unlinks of one that failed midway).
    ///
    /// With a tier, only segments already in the object store go, from the store and locally
    /// ([`Log::remove_tiered`]): the store's manifest then starts at the new start, and
    /// everything below the store's start goes whatever `offset` is.
    ///
    /// Refused with [`LogError::RemoveRefused`], nothing removed, on a read-only view and on a
    /// tiered log that does not hold its prefix (not claimed yet, fenced) or whose store holds
    /// another history; a closed log answers [`LogError::Closed`]. Runs one at a time with [`Log::rewrite_sealed`], beside
    /// appends and reads. An error from an unlink or a directory sync comes after the segments
    /// left the log: the files not yet removed are removed by the next call.
    pub async fn remove_segments_before(&self, offset: u64) -> Result<Removed> {
        // Taken before the checks and held by the blocking task to its end, even if this
        // future is dropped meanwhile: a close waits for it.
        let guard = self.shared.rewrites.clone().lock_owned().await;
        if self.tier().is_some() && !self.is_read_only() {
            return self.remove_tiered(offset, guard).await;
        }
        let log = self.clone();
        tokio::task::spawn_blocking(move || {
            let _running = guard;
            log.remove_blocking(offset)
        })
        .await
        .map_err(|_| LogError::Closed)?
    }

    /// [`Log::remove_segments_before`], under its lock.
    fn remove_blocking(&self, offset: u64) -> Result<Removed> {
        let refuse = |reason: &'static str| LogError::RemoveRefused { reason };
        if self.is_read_only() {
            return Err(refuse("the log is open read-only"));
        }
        if self.is_closed() {
            return Err(LogError::Closed);
        }
        let (gone, bytes) = self.take_out_before(offset);
        let start = self.start_offset();
        let unlinked = self.unlink_below(start, &gone);
        // Again: a reader still holding the old segment list may have opened a file between
        // the first forget and its unlink, and cached it.
        for seg in &gone {
            seg.forget_cached();
        }
        unlinked?;
        let removed = Removed {
            segments: gone.len() as u64,
            bytes,
            start_offset: start,
        };
        if removed.segments > 0 {
            tracing::info!(
                dir = %self.dir().display(),
                segments = removed.segments,
                bytes = removed.bytes,
                start_offset = removed.start_offset,
                "removed the oldest segments of the log"
            );
        }
        Ok(removed)
    }

    /// [`Log::remove_segments_before`] of a log with a tier: the segments leave the store's
    /// manifest first (`Uploader::take_out_before`: a version whose start is the first offset
    /// kept), then the segment list; then their local files (the `.log` of a local copy, the
    /// index files kept for cold reads, anything a removal cut short left below the start) are
    /// unlinked as without a tier, and last their objects are deleted. A crash after the
    /// manifest write leaves files and objects below the start: the next removal unlinks the
    /// files (it removes below the store's start whatever it is asked), `tidings tier gc`
    /// collects the objects. A failed object delete is said, not an error: the segments are
    /// out of the log.
    ///
    /// The rewrite lock (`running`) goes with the blocking unlinks and comes back with them:
    /// this future dropped meanwhile (a stop), a close waits for them before it lets the
    /// directory go (until 2026-12-03 the lock was released with the future, and a close could
    /// release the directory's lock while files were still being unlinked in it).
    async fn remove_tiered(
        &self,
        offset: u64,
        running: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<Removed> {
        if self.is_closed() {
            return Err(LogError::Closed);
        }
        let (Some(tier), Some(up)) = (self.tier(), self.uploader()) else {
            return Err(LogError::RemoveRefused {
                reason: "the log's tier is not running",
            });
        };
        let (gone, dropped) = up.take_out_before(offset).await?;
        // Counted before the cache entries are dropped (a local length not known yet opens the
        // file; a remote segment's is its manifest entry's).
        let bytes: u64 = gone.iter().map(|s| s.sealed_len().unwrap_or(0)).sum();
        self.forget_removed(&gone);
        let start = self.start_offset();
        let log = self.clone();
        let (unlinked, _running) = tokio::task::spawn_blocking(move || {
            let r = log.unlink_below(start, &gone);
            for seg in &gone {
                seg.forget_cached();
            }
            (r.map(|()| gone.len() as u64), running)
        })
        .await
        .map_err(|_| LogError::Closed)?;
        for entry in &dropped {
            for ext in ["log", "index", "timeindex"] {
                let key = entry.key(ext);
                if let Err(e) = tier.delete(&key).await {
                    tracing::warn!(key, error = %e, store = tier.display(), "could not delete the object of a removed segment; `tidings tier gc` collects it");
                }
            }
        }
        let segments = unlinked?;
        if segments > 0 {
            tracing::info!(
                dir = %self.dir().display(),
                store = tier.display(),
                segments,
                bytes,
                start_offset = start,
                "removed the oldest segments of the log, from the object store and locally"
            );
        }
        Ok(Removed {
            segments,
            bytes,
            start_offset: start,
        })
    }

    /// Publishes the segment list without its longest prefix of sealed segments that end at or
    /// before `offset` ([`removable_prefix`]), drops their entries in the cache of sealed
    /// segments, and returns them, oldest first, with the bytes they hold.
    fn take_out_before(&self, offset: u64) -> (Vec<Arc<Segment>>, u64) {
        // The watermark first, as reads do: the segment list is published before any watermark
        // that names its active segment, so the segment it names is in the list loaded after.
        let wm = self.watermark();
        let segs = self.shared.segments.load_full();
        let bases: Vec<u64> = segs.iter().map(|s| s.base).collect();
        let n = removable_prefix(&bases, wm.active_base, offset);
        let gone: Vec<Arc<Segment>> = segs.iter().take(n).cloned().collect();
        drop(segs);
        let Some(last) = gone.last().map(|s| s.base) else {
            return (gone, 0);
        };
        // Before the cache entries are dropped (a length not known yet opens the file); one
        // that cannot be read counts 0: the file is removed all the same.
        let bytes: u64 = gone.iter().map(|s| s.sealed_len().unwrap_or(0)).sum();
        // Only a roll changes the list meanwhile (rewrites wait for the lock held here), and it
        // appends: the segments kept are those past the last one removed.
        self.shared.segments.rcu(|segs| {
            segs.iter()
                .filter(|s| s.base > last)
                .cloned()
                .collect::<Vec<_>>()
        });
        self.forget_removed(&gone);
        (gone, bytes)
    }

    /// Drops the cache entries of the segments `gone`, taken out of the segment list, and
    /// counts them removed.
    fn forget_removed(&self, gone: &[Arc<Segment>]) {
        for seg in gone {
            seg.forget_cached();
        }
        self.shared
            .counters
            .segments_removed
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
    }

    /// Unlinks the files of the segments `gone` and any other segment files in the directory
    /// below `start` (a removal that failed midway left them), oldest first
    /// ([`unlink_segment`]).
    fn unlink_below(&self, start: u64, gone: &[Arc<Segment>]) -> Result<()> {
        let vfs = self.options().vfs.clone();
        let dir = self.dir();
        let names = vfs
            .list(dir)
            .map_err(|e| LogError::io("list directory", dir, e))?;
        let mut bases: BTreeSet<u64> = names
            .iter()
            .filter_map(|n| segment_file_base(n))
            .filter(|&b| b < start)
            .collect();
        bases.extend(gone.iter().map(|s| s.base));
        if bases.is_empty() {
            // Nothing left to unlink, but an earlier removal may have unlinked and then failed
            // its directory sync: its unlinks are not known to be durable, and a power cut
            // would bring those segments back below the start. (Found by the crash test: a
            // second call after such a failure removed nothing and synced nothing.)
            return vfs
                .sync_dir(dir)
                .map_err(|e| LogError::io("sync directory", dir, e));
        }
        for base in bases {
            unlink_segment(vfs.as_ref(), dir, base)?;
        }
        Ok(())
    }

    /// The base of the segment whose file `err` says is not found, and the log's start now,
    /// when that segment lies below the start: [`Log::remove_segments_before`] removed it while
    /// a reader held the segment list from before (for a read-only view, the writer removed it
    /// since the view last looked; the start is then the directory's oldest segment).
    pub(crate) fn removed(&self, err: &LogError) -> Option<(u64, u64)> {
        let LogError::Io { path, source, .. } = err else {
            return None;
        };
        if source.kind() != io::ErrorKind::NotFound || path.parent() != Some(self.dir()) {
            return None;
        }
        let base = segment::parse_log_name(path.file_name()?.to_str()?)?;
        let start = if self.is_read_only() {
            crate::readonly::first_base(self.options().vfs.as_ref(), self.dir())
                .ok()
                .flatten()?
        } else {
            self.start_offset()
        };
        (base < start).then_some((base, start))
    }

    /// `err`, met by a read of `requested`, as the reader should see it: a segment file that is
    /// not found because the segment was removed ([`Log::removed`]) is
    /// [`LogError::OffsetOutOfRange`], as the read would have been had it loaded the segment
    /// list after the removal. Any other error is returned as it is.
    pub(crate) fn or_removed(&self, err: LogError, requested: u64) -> LogError {
        match self.removed(&err) {
            Some((_, start)) => LogError::OffsetOutOfRange {
                requested,
                start,
                end: self.next_offset(),
            },
            // A segment only in the object store, removed since this read loaded the list: its
            // objects (and local index files) gone, whatever error that came as.
            None if self.tier().is_some()
                && !self.is_read_only()
                && requested < self.start_offset() =>
            {
                LogError::OffsetOutOfRange {
                    requested,
                    start: self.start_offset(),
                    end: self.next_offset(),
                }
            }
            None => err,
        }
    }
}

/// How many segments of the list with bases `bases` (ascending) a removal before `offset`
/// takes: the longest prefix of sealed segments (base below `active_base`) each of which ends —
/// where the next segment starts — at or before `offset`. The active segment never goes: it
/// has no next segment in the list, or only one a roll published before the watermark that
/// names it.
fn removable_prefix(bases: &[u64], active_base: u64, offset: u64) -> usize {
    bases
        .windows(2)
        .take_while(|w| w[0] < active_base && w[1] <= offset)
        .count()
}

/// The base offset named by a segment file's name (`{base:020}.log`, `.index` or
/// `.timeindex`), if it is one.
fn segment_file_base(name: &str) -> Option<u64> {
    [".index", ".timeindex"]
        .into_iter()
        .find_map(|ext| name.strip_suffix(ext))
        .map_or_else(
            || segment::parse_log_name(name),
            |stem| segment::parse_log_name(&format!("{stem}.log")),
        )
}

/// Unlinks the files of the segment at `base` in `dir` — its index files first, then its
/// `.log` — and syncs the directory. Files already gone are skipped. A crash between two
/// unlinks leaves the `.log` with fewer index files (a missing index loads as empty: reads of
/// the segment scan it from its start), not index files without their `.log` (unless the disk
/// made the unlinks durable out of order; open ignores those, and the next removal unlinks
/// them). The directory sync after each segment makes the removals durable oldest first on a
/// disk that could otherwise make a later unlink durable before an earlier one, so that what a
/// crash leaves is a suffix of the log.
fn unlink_segment(vfs: &dyn Vfs, dir: &Path, base: u64) -> Result<()> {
    let paths = SegmentPaths::new(dir, base);
    for path in [&paths.index, &paths.time, &paths.log] {
        match vfs.remove(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io("remove", path, e)),
        }
    }
    vfs.sync_dir(dir)
        .map_err(|e| LogError::io("sync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_ends_at_the_first_segment_reaching_the_offset_and_before_the_active_one() {
        let bases = [0, 10, 20, 30];
        // Segment [0, 10) ends at 10: removed by an offset of 10, not 9.
        assert_eq!(removable_prefix(&bases, 30, 9), 0);
        assert_eq!(removable_prefix(&bases, 30, 10), 1);
        assert_eq!(removable_prefix(&bases, 30, 25), 2);
        // Past the end: every sealed segment, never the active one.
        assert_eq!(removable_prefix(&bases, 30, u64::MAX), 3);
        // A roll published its segment (40) before the watermark that names it: 30 is still
        // the active segment for this removal.
        assert_eq!(removable_prefix(&[0, 10, 20, 30, 40], 30, u64::MAX), 3);
        assert_eq!(removable_prefix(&[30], 30, u64::MAX), 0);
        assert_eq!(removable_prefix(&[], 0, u64::MAX), 0);
        // A gap (a segment missing between 10 and 25): [10, 25) ends at 25.
        assert_eq!(removable_prefix(&[0, 10, 25, 30], 30, 25), 2);
    }

    #[test]
    fn segment_files_name_their_base() {
        let name = |ext: &str| format!("{:020}.{}", 42, ext);
        assert_eq!(segment_file_base(&name("log")), Some(42));
        assert_eq!(segment_file_base(&name("index")), Some(42));
        assert_eq!(segment_file_base(&name("timeindex")), Some(42));
        assert_eq!(segment_file_base(&name("log.rewrite")), None);
        assert_eq!(segment_file_base("next-segment.zeros"), None);
        assert_eq!(segment_file_base("42.index"), None);
        assert_eq!(segment_file_base("LOCK"), None);
    }
}
