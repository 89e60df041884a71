//! Open-time recovery of the active segment (protocol in `log/DESIGN.md`, "Recovery").
//!
//! Reads only the active segment's index files and the tail after the last trustworthy index
//! entry; sealed segments are not touched.

use std::path::Path;
use std::sync::Arc;

use crate::batch::{self, HEADER_LEN, MAGIC};
use crate::error::{CorruptKind, LogError, Result};
use crate::index::{self, INDEX_ENTRY_LEN, IndexEntry, SegmentIndex, TIME_ENTRY_LEN, TimeEntry};
use crate::options::{FsyncPolicy, LogOptions, RecoveryMode};
use crate::segment::{MAX_OFFSET, Scanner, SegmentPaths};
use crate::vfs::{Vfs, VfsFile, read_up_to};

/// The active segment as recovery left it, ready for the writer.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) file: Arc<dyn VfsFile>,
    pub(crate) index_file: Arc<dyn VfsFile>,
    pub(crate) time_file: Arc<dyn VfsFile>,
    /// Valid bytes in the segment.
    pub(crate) len: u64,
    pub(crate) next_offset: u64,
    pub(crate) index: SegmentIndex,
    /// Bytes in the `.index` and `.timeindex` files.
    pub(crate) index_len: u64,
    pub(crate) time_len: u64,
    /// Position of the last index entry (0 when none).
    pub(crate) last_entry_pos: u64,
    /// Timestamp of the segment's first batch.
    pub(crate) first_ts: Option<u64>,
    /// The segment's last batch, as a time entry (for the final entry at sealing).
    pub(crate) last_batch: Option<TimeEntry>,
    /// Bytes discarded from the tail.
    pub(crate) truncated_bytes: u64,
    /// The newest timestamp of the segment before, when this one holds no batch (see
    /// [`newest_timestamp`]): the writer's timestamps never go below it.
    pub(crate) floor_ts: Option<u64>,
    /// The file's size afterwards: `len`, or more when zeros of a preallocation follow.
    pub(crate) file_len: u64,
}

fn open_index(
    vfs: &dyn Vfs,
    path: &Path,
    data_len: u64,
    max: u64,
) -> Result<(Arc<dyn VfsFile>, Vec<u8>)> {
    let file = vfs
        .open_write(path)
        .map_err(|e| LogError::io("open index", path, e))?;
    let len = file
        .len()
        .map_err(|e| LogError::io("stat index", path, e))?;
    // Never more than one entry per 16 data bytes; a larger file is damaged past that point.
    let len = len.min(max).min((data_len / 16 + 1) * 16);
    let bytes = read_up_to(file.as_ref(), len as usize, 0)
        .map_err(|e| LogError::io("read index", path, e))?;
    Ok((file, bytes))
}

/// The file in the log directory that records the fsync policy the log was last opened with,
/// and from where its writes may be unsynced: `always`, or `every {base} {len}` / `never
/// {base} {len}` — the active segment and its length at that open, all durable then (see
/// [`recover_active`]). Absent or unreadable: `always` is assumed.
pub(crate) const POLICY_FILE: &str = "fsync-policy";

/// Where, in the active segment `active_base`, the writes of the last open began if they were
/// made under `every`/`never` (so may be unsynced from there on): the recorded length when the
/// segment is the one recorded, 0 when it came later (a roll since). `None`: written under
/// `always`, or nothing usable is recorded.
pub(crate) fn recorded_unsynced(vfs: &dyn Vfs, dir: &Path, active_base: u64) -> Option<u64> {
    let (base, len) = recorded_unsynced_start(vfs, dir)?;
    match active_base.cmp(&base) {
        std::cmp::Ordering::Equal => Some(len),
        std::cmp::Ordering::Greater => Some(0),
        std::cmp::Ordering::Less => None,
    }
}

/// Whether the last open recorded `every`/`never` (so may have acknowledged writes a power cut
/// took), whatever segment it names. Read before this open records its own policy.
pub(crate) fn recorded_unsynced_writes(vfs: &dyn Vfs, dir: &Path) -> bool {
    recorded_unsynced_start(vfs, dir).is_some()
}

/// The active segment and its length recorded by an open under `every`/`never`: `None` under
/// `always`, or when nothing usable is recorded.
fn recorded_unsynced_start(vfs: &dyn Vfs, dir: &Path) -> Option<(u64, u64)> {
    let path = dir.join(POLICY_FILE);
    let file = vfs.open_read(&path).ok()?;
    let bytes = read_up_to(file.as_ref(), 64, 0).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let mut parts = text.split(' ');
    if !matches!(parts.next(), Some("every" | "never")) {
        return None;
    }
    let base: u64 = parts.next()?.parse().ok()?;
    let len: u64 = parts.next()?.parse().ok()?;
    Some((base, len))
}

/// Records the policy of this open (see [`POLICY_FILE`]; `from` = the active segment and its
/// durable length, for `every`/`never`) before anything is written under it: temp file,
/// fsync, rename, directory fsync. Nothing is written when it is already recorded.
pub(crate) fn record_policy(
    vfs: &dyn Vfs,
    dir: &Path,
    policy: FsyncPolicy,
    from: (u64, u64),
) -> Result<()> {
    let path = dir.join(POLICY_FILE);
    let (base, len) = from;
    let policy = match policy {
        FsyncPolicy::Always => "always".to_owned(),
        FsyncPolicy::Every(_) => format!("every {base} {len}"),
        FsyncPolicy::Never => format!("never {base} {len}"),
    };
    if let Ok(file) = vfs.open_read(&path)
        && read_up_to(file.as_ref(), 64, 0).is_ok_and(|b| b == policy.as_bytes())
    {
        return Ok(());
    }
    let tmp = dir.join(format!("{POLICY_FILE}.tmp"));
    let file = vfs
        .open_write(&tmp)
        .map_err(|e| LogError::io("create", &tmp, e))?;
    file.set_len(0)
        .and_then(|()| file.write_all_at(policy.as_bytes(), 0))
        .and_then(|()| file.sync_data())
        .map_err(|e| LogError::io("write", &tmp, e))?;
    vfs.rename(&tmp, &path)
        .map_err(|e| LogError::io("rename", &path, e))?;
    vfs.sync_dir(dir)
        .map_err(|e| LogError::io("sync directory", dir, e))
}

/// Recovers the active segment with base offset `base` in `dir`.
///
/// `unsynced_from`: the position from which the segment was written under `fsync =
/// every/never` (recorded by the last open, [`POLICY_FILE`]). Writes there were acknowledged
/// without being durable and may have reached the disk in any order — a later batch without an
/// earlier one — so damage at or after it followed by valid data is what a power cut leaves,
/// not a sign of bad data: it is cut like a torn tail even under `RecoveryMode::Strict`.
/// Damage before it was durable data and is refused as before.
///
/// The segment is fdatasynced before the index files are rewritten, whatever was found: the
/// recovered tail may be in the page cache only (a process killed under `every`/`never`), and
/// an index entry on disk must never point past data that may not be (step 2 of recovery
/// trusts the last entry).
pub(crate) fn recover_active(
    vfs: &dyn Vfs,
    dir: &Path,
    base: u64,
    opts: &LogOptions,
    unsynced_from: Option<u64>,
) -> Result<Recovered> {
    let paths = SegmentPaths::new(dir, base);
    let file = vfs
        .open_write(&paths.log)
        .map_err(|e| LogError::io("open segment", &paths.log, e))?;
    // Read what is on the disk, not what a failed writeback left cached: after a failed
    // `fdatasync` Linux keeps those pages, marked clean, and a restart in the same boot would
    // read back a batch that never reached the disk (and was never acknowledged) as valid.
    if let Err(e) = file.drop_clean_cache() {
        tracing::warn!(segment = %paths.log.display(), error = %e, "could not drop the cached pages of the active segment before recovery");
    }
    let file_len = file
        .len()
        .map_err(|e| LogError::io("stat segment", &paths.log, e))?;
    let interval = u64::from(opts.index_interval_bytes);
    let max_entries = opts.segment_bytes / interval + 2;
    let (index_file, index_bytes) = open_index(
        vfs,
        &paths.index,
        file_len,
        max_entries * INDEX_ENTRY_LEN as u64,
    )?;
    let (time_file, time_bytes) = open_index(
        vfs,
        &paths.time,
        file_len,
        (max_entries + 1) * TIME_ENTRY_LEN as u64,
    )?;
    let mut offsets = index::decode_index(&index_bytes, file_len);
    let mut times = index::decode_time_index(&time_bytes, file_len);

    let tail = scan_tail(
        file.as_ref(),
        &paths.log,
        file_len,
        base,
        interval,
        &mut offsets,
    )?;
    let start_pos = offsets.last().map_or(0, |e| u64::from(e.pos));
    times.retain(|t| u64::from(t.pos) <= start_pos);
    let (good_end, next_offset) = (tail.end, tail.next_offset);
    let (last_entry_pos, new_entries, last_batch, damage) = (
        tail.last_entry_pos,
        tail.new_entries,
        tail.last_batch,
        tail.damage,
    );
    refuse_acknowledged_missing(
        file.as_ref(),
        &paths.log,
        opts,
        unsynced_from,
        (good_end, next_offset, file_len),
        damage.as_ref(),
    )?;

    let mut truncated_bytes = 0;
    let mut kept_len = good_end;
    if good_end < file_len && zeros_to_end(file.as_ref(), &paths.log, good_end, file_len)? {
        // Zeros after the last batch: the unused part of a preallocated segment (or a batch
        // of which nothing reached the disk). Nothing to cut; the segment stays preallocated.
        tracing::info!(
            segment = %paths.log.display(),
            position = good_end,
            next_offset,
            preallocated_bytes = file_len - good_end,
            "the active segment ends in preallocated zeros"
        );
        kept_len = file_len;
    } else if good_end < file_len {
        let kind = damage.unwrap_or(CorruptKind::Truncated {
            batch_len: 0,
            available: file_len - good_end,
        });
        let resume =
            resume_after_damage(file.as_ref(), &paths.log, good_end, next_offset, file_len)?;
        let refused = refuses_damage(opts.recovery, unsynced_from, good_end);
        match (resume, opts.recovery) {
            (Some(resume_at), _) if refused => {
                return Err(damage_before_valid_data(
                    &paths.log,
                    good_end,
                    next_offset,
                    resume_at,
                    file_len,
                ));
            }
            (Some(resume_at), RecoveryMode::Truncate) => {
                tracing::error!(
                    segment = %paths.log.display(),
                    position = good_end,
                    resume_at,
                    discarded_bytes = file_len - good_end,
                    "damaged batch followed by valid data; truncating as recovery = truncate allows"
                );
            }
            (Some(resume_at), RecoveryMode::Strict) => {
                tracing::warn!(
                    segment = %paths.log.display(),
                    position = good_end,
                    next_offset,
                    resume_at,
                    discarded_bytes = file_len - good_end,
                    "a gap in the unsynced tail (written under fsync every/never: later writes reached the disk, earlier ones did not); truncating at the gap"
                );
            }
            (None, _) => {
                tracing::warn!(
                    segment = %paths.log.display(),
                    position = good_end,
                    next_offset,
                    discarded_bytes = file_len - good_end,
                    reason = %kind,
                    "truncating torn tail of the active segment"
                );
            }
        }
        file.set_len(good_end)
            .map_err(|e| LogError::io("truncate segment", &paths.log, e))?;
        file.sync_data()
            .map_err(|e| LogError::io("sync segment", &paths.log, e))?;
        truncated_bytes = file_len - good_end;
    }
    if truncated_bytes == 0 {
        // Synced above when cut; else the tail kept may be in the page cache only.
        file.sync_data()
            .map_err(|e| LogError::io("sync segment", &paths.log, e))?;
    }

    // Rewrite the index files to exactly the trusted entries plus the re-derived ones.
    for (e, t) in &new_entries {
        offsets.push(*e);
        times.push(*t);
    }
    rewrite(
        index_file.as_ref(),
        &paths.index,
        &index_bytes,
        offsets.iter().map(|e| e.encode()),
    )?;
    rewrite(
        time_file.as_ref(),
        &paths.time,
        &time_bytes,
        times.iter().map(|t| t.encode()),
    )?;

    let first_ts = if good_end >= HEADER_LEN as u64 {
        let head = read_up_to(file.as_ref(), HEADER_LEN, 0)
            .map_err(|e| LogError::io("read segment", &paths.log, e))?;
        batch::peek_header(&head).ok().map(|h| h.timestamp_ms)
    } else {
        None
    };
    Ok(Recovered {
        file,
        index_file,
        time_file,
        len: good_end,
        next_offset,
        index_len: (offsets.len() * INDEX_ENTRY_LEN) as u64,
        time_len: (times.len() * TIME_ENTRY_LEN) as u64,
        index: SegmentIndex { offsets, times },
        last_entry_pos,
        first_ts,
        last_batch,
        truncated_bytes,
        file_len: kept_len,
        floor_ts: None,
    })
}

/// The newest batch timestamp of the sealed local segment at `base`, read from its last time
/// entry to its end (one batch when sealed by a roll, which writes that entry; at most an
/// index interval of batches otherwise). Best effort, for the writer's floor after a restart
/// whose active segment is empty (a roll just before it): `None` when the segment cannot be
/// read, and damage stops the scan where it is (what was read before it stands; the batch
/// CRCs vouch for it).
pub(crate) fn newest_timestamp(vfs: &dyn Vfs, dir: &Path, base: u64) -> Option<u64> {
    let paths = SegmentPaths::new(dir, base);
    let file = vfs.open_read(&paths.log).ok()?;
    let len = file.len().ok()?;
    let (start, expected) = vfs
        .open_read(&paths.time)
        .and_then(|t| {
            let tlen = t.len()?;
            let whole = tlen - tlen % TIME_ENTRY_LEN as u64;
            if whole == 0 {
                return Ok(None);
            }
            let last = read_up_to(t.as_ref(), TIME_ENTRY_LEN, whole - TIME_ENTRY_LEN as u64)?;
            Ok(index::decode_time_index(&last, len).first().copied())
        })
        .ok()
        .flatten()
        .map_or((0, base), |e| {
            (u64::from(e.pos), base.saturating_add(u64::from(e.rel)))
        });
    let mut scan = Scanner::new(file.as_ref(), &paths.log, start, len, expected);
    let mut newest = None;
    while let Some(Ok((_, header, _))) = scan.next_batch() {
        newest = newest.max(Some(header.timestamp_ms));
    }
    newest
}

/// Whether `[from, end)` of the file is all zero bytes (read in 1 MiB pieces).
pub(crate) fn zeros_to_end(file: &dyn VfsFile, path: &Path, from: u64, end: u64) -> Result<bool> {
    const CHUNK: u64 = 1 << 20;
    let mut pos = from;
    while pos < end {
        let want = CHUNK.min(end - pos) as usize;
        let chunk =
            read_up_to(file, want, pos).map_err(|e| LogError::io("read segment", path, e))?;
        if chunk.len() < want {
            // The file is shorter than it said: not the preallocation this checks for.
            return Ok(false);
        }
        if chunk.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += want as u64;
    }
    Ok(true)
}

/// Where a valid batch resumes after the damage that ends a segment's valid data at
/// `good_end` (where offset `next_offset` was due), in a file of `file_len` bytes: `None` when
/// none does, and the damage is a torn tail. Callers have ruled out zeros to the end (the unused
/// part of a preallocated segment).
pub(crate) fn resume_after_damage(
    file: &dyn VfsFile,
    path: &Path,
    good_end: u64,
    next_offset: u64,
    file_len: u64,
) -> Result<Option<u64>> {
    // The damaged batch's own extent, when its header still reads: its payload is a
    // client's bytes and may hold a whole valid batch (a message can carry any bytes).
    // Inside that extent only a batch that continues its offsets is evidence of durable
    // data after damage (a length field flipped larger still finds the real next batch).
    let head = read_up_to(file, HEADER_LEN, good_end)
        .map_err(|e| LogError::io("read segment", path, e))?;
    // Only when the damaged batch is the last thing written — the file ends inside its
    // extent, or zeros follow it — as a torn last batch does: a length flipped larger with
    // the next batch damaged as well would otherwise hide valid batches inside the extent.
    let inside = match batch::peek_header(&head) {
        Ok(h) if h.base_offset == next_offset => {
            let end = good_end.saturating_add(h.batch_len);
            let last = end >= file_len || zeros_to_end(file, path, end, file_len)?;
            last.then(|| Extent {
                end,
                next_base: h.next_offset(),
            })
        }
        _ => None,
    };
    find_valid_batch(file, path, good_end + 1, file_len, next_offset, inside)
}

/// Refuses, before anything is written, an active segment whose valid data ends at `good_end`
/// (where offset `next_offset` was due; the file is `file_len` bytes) below records the opener
/// knows were acknowledged (`LogOptions::with_acknowledged_through`), written under `always`
/// (before `unsynced_from`, if any) and opened under `RecoveryMode::Strict`: an acknowledged
/// record was synced before it was acknowledged, so a damaged batch there, zeros, or a file
/// that ends (or a segment removed after it) is damage, never a write a crash cut short. The
/// bytes stay as they were for an operator to mend — also the zeros and index entries the open
/// would otherwise trim. Damage that valid batches follow is left to the refusal that names it
/// (`DamageBeforeValidData`).
fn refuse_acknowledged_missing(
    file: &dyn VfsFile,
    path: &Path,
    opts: &LogOptions,
    unsynced_from: Option<u64>,
    (good_end, next_offset, file_len): (u64, u64, u64),
    damage: Option<&CorruptKind>,
) -> Result<()> {
    let Some(through) = opts.acknowledged_through else {
        return Ok(());
    };
    if through < next_offset
        || opts.recovery != RecoveryMode::Strict
        || unsynced_from.is_some_and(|from| good_end >= from)
    {
        return Ok(());
    }
    let found = if good_end >= file_len {
        CorruptKind::EndsEarly { zeros: 0 }
    } else if zeros_to_end(file, path, good_end, file_len)? {
        CorruptKind::EndsEarly {
            zeros: file_len - good_end,
        }
    } else if resume_after_damage(file, path, good_end, next_offset, file_len)?.is_some() {
        return Ok(());
    } else {
        damage.cloned().unwrap_or(CorruptKind::Truncated {
            batch_len: 0,
            available: file_len - good_end,
        })
    };
    Err(LogError::Corrupt {
        path: path.to_path_buf(),
        position: good_end,
        expected_offset: next_offset,
        kind: CorruptKind::AcknowledgedDamage {
            acknowledged_through: through,
            damage: Box::new(found),
        },
    })
}

/// Whether an open refuses damage at `good_end` that valid data follows: under
/// `RecoveryMode::Strict`, unless the damage lies in a tail written under `every`/`never`
/// (at or after `unsynced_from`, see [`recover_active`]), where it is what a power cut leaves.
pub(crate) fn refuses_damage(
    recovery: RecoveryMode,
    unsynced_from: Option<u64>,
    good_end: u64,
) -> bool {
    recovery == RecoveryMode::Strict && unsynced_from.is_none_or(|from| good_end < from)
}

/// The error an open refuses a segment with whose valid data ends at damage at `good_end`
/// (where offset `next_offset` was due) and resumes at `resume_at`, in a file of `file_len`
/// bytes.
pub(crate) fn damage_before_valid_data(
    path: &Path,
    good_end: u64,
    next_offset: u64,
    resume_at: u64,
    file_len: u64,
) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        position: good_end,
        expected_offset: next_offset,
        kind: CorruptKind::DamageBeforeValidData {
            resume_at,
            valid_after: file_len - resume_at,
        },
    }
}

/// Where the valid data of a segment ends, found from its index and a scan of the tail.
#[derive(Debug)]
pub(crate) struct TailScan {
    /// End of the valid data.
    pub(crate) end: u64,
    /// The offset after the last valid batch.
    pub(crate) next_offset: u64,
    /// Position of the last index entry, counting the re-derived ones.
    pub(crate) last_entry_pos: u64,
    /// Index entries due in the scanned tail that the index did not have.
    pub(crate) new_entries: Vec<(IndexEntry, TimeEntry)>,
    /// The last valid batch.
    pub(crate) last_batch: Option<TimeEntry>,
    /// Why the scan stopped before the end of the file, if it did.
    pub(crate) damage: Option<CorruptKind>,
}

/// Trims `offsets` to the last entry that points at a valid batch with the offset it names,
/// then scans forward from there to the end of the valid data in `[0, file_len)`.
pub(crate) fn scan_tail(
    file: &dyn VfsFile,
    path: &Path,
    file_len: u64,
    base: u64,
    interval: u64,
    offsets: &mut Vec<IndexEntry>,
) -> Result<TailScan> {
    let (mut scan, first) = loop {
        let (rel, pos) = offsets
            .last()
            .map_or((0, 0), |e| (u64::from(e.rel), u64::from(e.pos)));
        let mut scan = Scanner::new(file, path, pos, file_len, base + rel);
        match scan.next_batch() {
            Some(Err(LogError::Corrupt { .. })) if !offsets.is_empty() => {
                offsets.pop();
            }
            Some(Err(e @ LogError::Io { .. })) => return Err(e),
            first => break (scan, first),
        }
    };
    let mut last_entry_pos = offsets.last().map_or(0, |e| u64::from(e.pos));
    let mut new_entries = Vec::new();
    let mut last_batch = None;
    let mut damage = None;
    let mut item = first;
    while let Some(result) = item {
        match result {
            Ok((pos, header, _)) => {
                let rel = (header.base_offset - base) as u32;
                let t = TimeEntry {
                    ts: header.timestamp_ms,
                    rel,
                    pos: pos as u32,
                };
                if pos > 0 && pos - last_entry_pos >= interval {
                    new_entries.push((
                        IndexEntry {
                            rel,
                            pos: pos as u32,
                        },
                        t,
                    ));
                    last_entry_pos = pos;
                }
                last_batch = Some(t);
            }
            Err(LogError::Corrupt { kind, .. }) => {
                damage = Some(kind);
                break;
            }
            Err(e) => return Err(e),
        }
        item = scan.next_batch();
    }
    Ok(TailScan {
        end: scan.position(),
        next_offset: scan.expected_offset(),
        last_entry_pos,
        new_entries,
        last_batch,
        damage,
    })
}

/// Sets an index file to exactly `entries`, writing only when it differs from `read` (the bytes
/// [`open_index`] read of it). Not when it differs in length alone: an entry that pointed at
/// damage is replaced by one re-derived at another position, and the file keeps its length
/// (until 2026-11-30 the stale entry stayed, and each later open or read of the sealed segment
/// met it, warned and scanned the segment again).
fn rewrite<const N: usize>(
    file: &dyn VfsFile,
    path: &Path,
    read: &[u8],
    entries: impl ExactSizeIterator<Item = [u8; N]>,
) -> Result<()> {
    let mut bytes = Vec::with_capacity(entries.len() * N);
    for e in entries {
        bytes.extend_from_slice(&e);
    }
    let have = file
        .len()
        .map_err(|e| LogError::io("stat index", path, e))?;
    if have == bytes.len() as u64 && read == bytes.as_slice() {
        return Ok(());
    }
    file.set_len(0)
        .and_then(|()| file.write_all_at(&bytes, 0))
        .map_err(|e| LogError::io("rewrite index", path, e))
}

/// A damaged batch's extent, as its intact header declares it.
#[derive(Debug, Clone, Copy)]
struct Extent {
    /// One past its last byte.
    end: u64,
    /// The base offset of the batch that follows it.
    next_base: u64,
}

/// The position of the first valid batch in `[from, end)` whose base offset is at least
/// `min_base` (evidence that damage at `from - 1` is not a torn tail), if any, and no larger
/// than the records the bytes between could hold. Inside `inside` (the damaged batch's
/// declared extent) a batch counts only if its base is exactly `next_base`.
fn find_valid_batch(
    file: &dyn VfsFile,
    path: &Path,
    from: u64,
    end: u64,
    min_base: u64,
    inside: Option<Extent>,
) -> Result<Option<u64>> {
    const CHUNK: usize = 1 << 20;
    let magic = MAGIC.to_le_bytes();
    let mut pos = from;
    while pos + HEADER_LEN as u64 <= end {
        let want = CHUNK.min((end - pos) as usize);
        let chunk =
            read_up_to(file, want, pos).map_err(|e| LogError::io("read segment", path, e))?;
        if chunk.len() < magic.len() {
            break;
        }
        for i in 0..=chunk.len() - magic.len() {
            if chunk[i..i + magic.len()] != magic {
                continue;
            }
            let at = pos + i as u64;
            let head = read_up_to(file, HEADER_LEN, at)
                .map_err(|e| LogError::io("read segment", path, e))?;
            let Ok(h) = batch::peek_header(&head) else {
                continue;
            };
            // A batch written after the damage continues its offsets: every record between
            // takes at least `RECORD_OVERHEAD` bytes, so its base is at most one per such
            // bytes past `min_base`. A client's bytes embedding a batch with any larger base
            // (say 2^62: no offset to predict) were taken for data after damage when the
            // damaged batch's header did not read, and a strict open refused.
            let most = min_base.saturating_add((at - (from - 1)) / batch::RECORD_OVERHEAD as u64);
            if h.base_offset < min_base
                || h.base_offset >= MAX_OFFSET
                || h.base_offset > most
                || inside.is_some_and(|x| at < x.end && h.base_offset != x.next_base)
            {
                continue;
            }
            let mut scan = Scanner::new(file, path, at, end, h.base_offset);
            if let Some(Ok(_)) = scan.next_batch() {
                return Ok(Some(at));
            }
        }
        // Overlap by the magic's length minus one so a magic across chunks is still found.
        pos += (chunk.len() - (magic.len() - 1)) as u64;
    }
    Ok(None)
}
