//! Read-only views of a log that another process may be writing: find the end of the valid
//! data without changing anything, and find more of it later.

use std::path::Path;
use std::sync::Arc;

use crate::error::{LogError, Result};
use crate::index::{self, SegmentIndex};
use crate::log::Watermark;
use crate::options::LogOptions;
use crate::recovery::{self, scan_tail};
use crate::segment::{self, Scanner, Segment, SegmentPaths};
use crate::vfs::{Vfs, VfsFile, read_up_to};

/// The segment bases in `dir`, ascending.
fn bases(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<u64>> {
    let mut bases: Vec<u64> = vfs
        .list(dir)
        .map_err(|e| LogError::io("list directory", dir, e))?
        .iter()
        .filter_map(|n| segment::parse_log_name(n))
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

/// The base of the oldest segment in `dir`, if it holds any: where a read-only view's log
/// starts now, when the writer removed its oldest segments since the view last looked
/// (`Log::remove_segments_before`).
pub(crate) fn first_base(vfs: &dyn Vfs, dir: &Path) -> Result<Option<u64>> {
    Ok(bases(vfs, dir)?.first().copied())
}

/// Scans the active (last) segment for the end of its valid data.
fn scan_active(opts: &LogOptions, dir: &Path, base: u64) -> Result<(Arc<Segment>, Watermark)> {
    let vfs = opts.vfs.clone();
    let paths = SegmentPaths::new(dir, base);
    let interval = u64::from(opts.index_interval_bytes);
    let file = vfs
        .open_read(&paths.log)
        .map_err(|e| LogError::io("open segment", &paths.log, e))?;
    let file_len = file
        .len()
        .map_err(|e| LogError::io("stat segment", &paths.log, e))?;
    let read_index = |path: &Path| -> Result<Vec<u8>> {
        match vfs.open_read(path) {
            Ok(f) => {
                let len = f.len().map_err(|e| LogError::io("stat index", path, e))?;
                let len = len.min(crate::index::max_index_bytes(file_len, interval));
                read_up_to(f.as_ref(), len as usize, 0)
                    .map_err(|e| LogError::io("read index", path, e))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(LogError::io("open index", path, e)),
        }
    };
    let mut offsets = index::decode_index(&read_index(&paths.index)?, file_len);
    let mut times = index::decode_time_index(&read_index(&paths.time)?, file_len);
    let tail = scan_tail(
        file.as_ref(),
        &paths.log,
        file_len,
        base,
        interval,
        &mut offsets,
    )?;
    let start = offsets.last().map_or(0, |e| u64::from(e.pos));
    times.retain(|t| u64::from(t.pos) <= start);
    for (e, t) in tail.new_entries {
        offsets.push(e);
        times.push(t);
    }
    let seg = Segment::new_active(
        vfs,
        dir,
        base,
        interval,
        file,
        SegmentIndex { offsets, times },
    );
    let wm = Watermark {
        next_offset: tail.next_offset,
        active_base: base,
        active_len: tail.end,
    };
    Ok((Arc::new(seg), wm))
}

/// The segments and watermark of the log in `dir` as it is now. With `known`, keeps the
/// segments already known and only looks at what may have changed.
pub(crate) fn scan(
    opts: &LogOptions,
    dir: &Path,
    known: Option<(&[Arc<Segment>], Watermark)>,
) -> Result<(Vec<Arc<Segment>>, Watermark)> {
    let vfs = opts.vfs.clone();
    let interval = u64::from(opts.index_interval_bytes);
    let all = bases(vfs.as_ref(), dir)?;
    let Some(&last) = all.last() else {
        // An empty directory: an empty log whose first segment does not exist yet.
        let seg = Arc::new(Segment::new(vfs, dir, 0, interval));
        let wm = Watermark {
            next_offset: 0,
            active_base: 0,
            active_len: 0,
        };
        return Ok((vec![seg], wm));
    };
    let mut segs: Vec<Arc<Segment>> = match known {
        Some((known, wm))
            if wm.active_base == last && known.last().is_some_and(|s| s.base == last) =>
        {
            // Same active segment: rescan it (cheap: from its last index entry). Sealed ones
            // removed since (tiering's retention, or the writer's removal of the oldest ones)
            // leave the list.
            let (seg, wm) = scan_active(opts, dir, last)?;
            let mut v: Vec<Arc<Segment>> = known[..known.len() - 1]
                .iter()
                .filter(|s| all.contains(&s.base))
                .cloned()
                .collect();
            v.push(seg);
            return Ok((v, wm));
        }
        // The active segment changed: the one that was active is sealed now, and becomes a
        // plain segment whose file and index go through the sealed cache (kept as scanned, it
        // held its own file and index for as long as the view ran: one more of each per roll
        // a `replay --follow` saw).
        Some((known, old)) => known
            .iter()
            .filter(|s| s.base < last && all.contains(&s.base))
            .map(|s| {
                if s.base == old.active_base {
                    Arc::new(Segment::new(vfs.clone(), dir, s.base, interval))
                } else {
                    s.clone()
                }
            })
            .collect(),
        None => Vec::new(),
    };
    for &b in all.iter().filter(|&&b| b < last) {
        if !segs.iter().any(|s| s.base == b) {
            segs.push(Arc::new(Segment::new(vfs.clone(), dir, b, interval)));
        }
    }
    segs.sort_by_key(|s| s.base);
    let (active, wm) = scan_active(opts, dir, last)?;
    segs.push(active);
    Ok((segs, wm))
}

/// The damage the active segment `seg`'s valid data ends at under watermark `wm`, as the
/// error a writable open with these options would refuse the log with: only when valid data
/// follows it (the rule of `recovery::recover_active`), never for a torn tail or the zeros of
/// a preallocated segment. A writer still running never writes past a batch it has not
/// finished, so a batch being written at the end of the data is a torn tail here, as today.
///
/// Not part of [`scan`], which runs at every refresh of a view that follows a running writer:
/// it reads the rest of the active segment file (with preallocation, up to `preallocate_bytes`
/// of zeros), so it runs only when asked — a check of the active segment, a read at the
/// watermark.
pub(crate) fn damage_at_end(
    opts: &LogOptions,
    dir: &Path,
    seg: &Segment,
    wm: &Watermark,
) -> Result<Option<LogError>> {
    let (good_end, next_offset) = (wm.active_len, wm.next_offset);
    if seg.base != wm.active_base {
        return Ok(None);
    }
    let unsynced_from = recovery::recorded_unsynced(opts.vfs.as_ref(), dir, seg.base);
    if !recovery::refuses_damage(opts.recovery, unsynced_from, good_end) {
        return Ok(None);
    }
    let path = &seg.paths.log;
    let file = match opts.vfs.open_read(path) {
        Ok(f) => f,
        // A log whose first segment does not exist yet (an empty directory).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io("open segment", path, e)),
    };
    let file_len = file
        .len()
        .map_err(|e| LogError::io("stat segment", path, e))?;
    // Not damage: nothing after the valid data; a valid batch there (a writer went on since
    // the watermark was taken); or only the unused zeros of a preallocated segment.
    if good_end >= file_len
        || !damaged_at(file.as_ref(), path, good_end, file_len, next_offset)?
        || recovery::zeros_to_end(file.as_ref(), path, good_end, file_len)?
    {
        return Ok(None);
    }
    let Some(resume_at) =
        recovery::resume_after_damage(file.as_ref(), path, good_end, next_offset, file_len)?
    else {
        return Ok(None);
    };
    // Read the damaged batch again, now that valid data was seen after it: a writer that
    // finished it meanwhile and went on to the next one is not damage (it was read while being
    // written).
    let now_len = file
        .len()
        .map_err(|e| LogError::io("stat segment", path, e))?;
    if !damaged_at(file.as_ref(), path, good_end, now_len, next_offset)? {
        return Ok(None);
    }
    Ok(Some(recovery::damage_before_valid_data(
        path,
        good_end,
        next_offset,
        resume_at,
        file_len,
    )))
}

/// Whether the batch at `pos`, where offset `expected` is due, fails to read as a valid batch
/// within the first `len` bytes of the file.
fn damaged_at(file: &dyn VfsFile, path: &Path, pos: u64, len: u64, expected: u64) -> Result<bool> {
    match Scanner::new(file, path, pos, len, expected).next_batch() {
        Some(Err(LogError::Corrupt { .. })) => Ok(true),
        Some(Err(e)) => Err(e),
        Some(Ok(_)) | None => Ok(false),
    }
}
