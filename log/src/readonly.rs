//! Read-only views of a log that another process may be writing: find the end of the valid
//! data without changing anything, and find more of it later.

use std::path::Path;
use std::sync::Arc;

use crate::error::{LogError, Result};
use crate::index::{self, SegmentIndex};
use crate::log::Watermark;
use crate::options::LogOptions;
use crate::recovery::scan_tail;
use crate::segment::{self, Segment, SegmentPaths};
use crate::vfs::{Vfs, read_up_to};

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
            // Same active segment: rescan it (cheap: from its last index entry).
            let (seg, wm) = scan_active(opts, dir, last)?;
            let mut v: Vec<Arc<Segment>> = known[..known.len() - 1].to_vec();
            v.push(seg);
            return Ok((v, wm));
        }
        Some((known, _)) => known
            .iter()
            .filter(|s| s.base < last && all.contains(&s.base))
            .cloned()
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
