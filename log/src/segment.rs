//! One segment: its files, a validating batch scanner, and reads by offset or time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;

use crate::batch::{self, BatchHeader, HEADER_LEN, Record};
use crate::error::{LogError, Result};
use crate::index::{self, IndexEntry, SegmentIndex, TimeEntry};
use crate::sealed::{self, SEALED};
use crate::vfs::{Vfs, VfsFile, read_up_to};

/// Bytes read at a time by scanners.
const SCAN_CHUNK: usize = 64 << 10;

/// The file name of the segment with base offset `base`.
pub(crate) fn log_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// Offsets stay below this (2^63, centuries of appends): a segment's offsets (its base plus
/// a `u32` position of a record) and a batch's (its base plus its count) then never overflow,
/// whatever a damaged or foreign file names or holds.
pub(crate) const MAX_OFFSET: u64 = 1 << 63;

/// The base offset named by a segment file name, if it is one (a name past [`MAX_OFFSET`] is
/// not: no log gets there).
pub(crate) fn parse_log_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().filter(|&base| base < MAX_OFFSET)
}

/// The three files of a segment.
#[derive(Debug, Clone)]
pub(crate) struct SegmentPaths {
    pub(crate) log: PathBuf,
    pub(crate) index: PathBuf,
    pub(crate) time: PathBuf,
}

impl SegmentPaths {
    pub(crate) fn new(dir: &Path, base: u64) -> Self {
        Self::named(dir, &format!("{base:020}"))
    }

    /// The files of a segment named `{stem}.log|.index|.timeindex` (a remote segment's objects,
    /// `RemoteSegment::stem`).
    pub(crate) fn named(dir: &Path, stem: &str) -> Self {
        Self {
            log: dir.join(format!("{stem}.log")),
            index: dir.join(format!("{stem}.index")),
            time: dir.join(format!("{stem}.timeindex")),
        }
    }
}

/// A segment shared by the writer and readers.
///
/// The active segment holds its file and index itself. A sealed one holds neither: they are
/// in the process's cache of sealed segments ([`SEALED`], `sealed.rs`) while recently used,
/// opened and loaded again on the next use after that, so that the log's open files and memory
/// do not grow with its history.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base: u64,
    pub(crate) paths: SegmentPaths,
    vfs: Arc<dyn Vfs>,
    /// This segment's key in [`SEALED`], never another segment value's.
    key: u64,
    /// The file the segment holds itself: the active segment's (the writer's handle, handed to
    /// [`SEALED`] when sealed), or a sealed one's pinned before tiering unlinks it
    /// ([`Segment::pin_file`]). `None`: a sealed segment, whose file is in [`SEALED`] or opened
    /// on use.
    file: RwLock<Option<Arc<dyn VfsFile>>>,
    /// The index the segment holds itself: the active segment's (the writer adds to it; dropped
    /// when sealed, the index files holding the same entries by then), or a sealed one's rebuilt
    /// by a scan (kept for the segment's life: its files do not match the segment). `None`: a
    /// sealed segment, whose index is in [`SEALED`] or loaded from its files on use.
    index: RwLock<Option<SegmentIndex>>,
    /// The sparse index interval, for rebuilding an index.
    interval: u64,
    /// Final length, once sealed.
    sealed_len: OnceLock<u64>,
    /// Timestamp of the first batch, once known.
    first_ts: OnceLock<Option<u64>>,
    /// Timestamp of the last batch of the sealed segment, once known.
    last_ts: OnceLock<Option<u64>>,
    /// Its files are in the object store, not on local disk.
    remote: bool,
}

impl Segment {
    /// A segment whose files exist on disk; nothing is read yet.
    pub(crate) fn new(vfs: Arc<dyn Vfs>, dir: &Path, base: u64, interval: u64) -> Self {
        Self {
            base,
            paths: SegmentPaths::new(dir, base),
            vfs,
            key: sealed::next_key(),
            file: RwLock::new(None),
            index: RwLock::new(None),
            interval,
            sealed_len: OnceLock::new(),
            first_ts: OnceLock::new(),
            last_ts: OnceLock::new(),
            remote: false,
        }
    }

    /// A sealed segment read from the object store through `vfs` (a `TierVfs`); `paths` are
    /// its objects as shown in messages (and as the `TierVfs` resolves them).
    pub(crate) fn new_remote(
        vfs: Arc<dyn Vfs>,
        paths: SegmentPaths,
        base: u64,
        interval: u64,
    ) -> Self {
        // Not `..Self::new(..)`: a `Drop` type's fields cannot be moved out.
        let mut seg = Self::new(vfs, Path::new(""), base, interval);
        seg.paths = paths;
        seg.remote = true;
        seg
    }

    /// Whether the segment's files are in the object store.
    pub(crate) fn is_remote(&self) -> bool {
        self.remote
    }

    /// The active segment: the writer hands over its open file and recovered index.
    pub(crate) fn new_active(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        base: u64,
        interval: u64,
        file: Arc<dyn VfsFile>,
        index: SegmentIndex,
    ) -> Self {
        let seg = Self::new(vfs, dir, base, interval);
        *seg.file_slot() = Some(file);
        *seg.index_slot() = Some(index);
        seg
    }

    fn index_slot(&self) -> std::sync::RwLockWriteGuard<'_, Option<SegmentIndex>> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn file_slot(&self) -> std::sync::RwLockWriteGuard<'_, Option<Arc<dyn VfsFile>>> {
        self.file.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The file: the one the segment holds, else the one in [`SEALED`], else opened now (and
    /// kept there). The handle returned stays readable however long the caller holds it, even
    /// once the cache has dropped it.
    pub(crate) fn file(&self) -> Result<Arc<dyn VfsFile>> {
        let held = self.file.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(f) = held {
            return Ok(f);
        }
        if let Some(f) = SEALED.file(self.key) {
            return Ok(f);
        }
        let f = self
            .vfs
            .open_read(&self.paths.log)
            .map_err(|e| LogError::io("open segment", &self.paths.log, e))?;
        Ok(SEALED.keep_file(self.key, f))
    }

    /// Holds the file open for as long as this segment value lives, outside [`SEALED`]:
    /// tiering's retention calls it before it unlinks the file, so that a reader still holding
    /// the segment list from before the switch to the remote copy reads through this handle
    /// (the path is gone, and the cache may have closed its handle by then).
    pub(crate) fn pin_file(&self) -> Result<()> {
        let f = self.file()?;
        *self.file_slot() = Some(f);
        Ok(())
    }

    /// Drops what [`SEALED`] holds for this segment (its open file, its loaded index) now,
    /// rather than when the segment value goes: [`crate::Log::remove_segments_before`] calls it
    /// once the segment has left the log's segment list, before and after it unlinks the file,
    /// so that no descriptor of the unlinked file stays cached (an unlinked file that is still
    /// open keeps its disk space). A reader that took the file keeps its own handle until it
    /// lets go; one that opens it again meanwhile caches it until the segment value is dropped.
    pub(crate) fn forget_cached(&self) {
        SEALED.forget(self.key);
    }

    /// Marks the segment sealed at `len` bytes (called by the writer when it rolls, after the
    /// segment and both index files are synced). Its file goes to [`SEALED`] with the others;
    /// its index is dropped: the index files hold the same entries, and the next lookup loads
    /// them.
    pub(crate) fn seal(&self, len: u64) {
        let _ = self.sealed_len.set(len);
        // Into the cache first, so a reader meanwhile finds it in one place or the other.
        let held = self.file.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(f) = held {
            SEALED.keep_file(self.key, f);
        }
        *self.file_slot() = None;
        *self.index_slot() = None;
    }

    /// The length of a sealed segment.
    pub(crate) fn sealed_len(&self) -> Result<u64> {
        if let Some(l) = self.sealed_len.get() {
            return Ok(*l);
        }
        let len = self
            .file()?
            .len()
            .map_err(|e| LogError::io("stat segment", &self.paths.log, e))?;
        Ok(*self.sealed_len.get_or_init(|| len))
    }

    /// Adds entries to the in-memory index (the active segment, from the writer).
    pub(crate) fn push_index(&self, offset: Option<IndexEntry>, time: Option<TimeEntry>) {
        let mut slot = self.index_slot();
        let idx = slot.get_or_insert_with(SegmentIndex::default);
        if let Some(e) = offset {
            idx.offsets.push(e);
        }
        if let Some(t) = time {
            idx.times.push(t);
        }
    }

    /// Position of the last time-index entry held in memory.
    pub(crate) fn last_time_pos(&self) -> Option<u32> {
        let slot = self.index.read().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()?.times.last().map(|t| t.pos)
    }

    /// Runs a lookup on the index: the one the segment holds (under a read lock only for the
    /// lookup), else a sealed segment's from [`SEALED`], else loaded from its files (and kept
    /// there).
    fn lookup<R>(&self, end: u64, f: impl Fn(&SegmentIndex) -> R) -> Result<R> {
        if let Some(idx) = self
            .index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(f(idx));
        }
        if let Some(idx) = SEALED.index(self.key) {
            return Ok(f(&idx));
        }
        let offsets = self.read_index_file(&self.paths.index, end, index::decode_index)?;
        let times = self.read_index_file(&self.paths.time, end, index::decode_time_index)?;
        let idx = SegmentIndex { offsets, times };
        // Decoding drops the entries at or past `end`: kept only when `end` is the sealed
        // length. A reader whose watermark was taken before the roll reads the segment just
        // sealed only up to its length then, and its index must not stand for the whole one.
        if self.sealed_len.get() != Some(&end) {
            return Ok(f(&idx));
        }
        Ok(f(&SEALED.keep_index(self.key, Arc::new(idx))))
    }

    fn read_index_file<T>(
        &self,
        path: &Path,
        data_len: u64,
        decode: fn(&[u8], u64) -> Vec<T>,
    ) -> Result<Vec<T>> {
        let file = match self.vfs.open_read(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LogError::io("open index", path, e)),
        };
        let len = file
            .len()
            .map_err(|e| LogError::io("stat index", path, e))?;
        // An index holds about one entry per `interval` bytes of data (16 bytes at most
        // each); a larger file is damaged (or written with a smaller interval: cut, it is
        // only sparser), and what decodes cleanly is still usable. Bounded by the interval,
        // not the data: a damaged index file the size of its segment was read whole.
        let cap = crate::index::max_index_bytes(data_len, self.interval);
        let bytes = read_up_to(file.as_ref(), len.min(cap) as usize, 0)
            .map_err(|e| LogError::io("read index", path, e))?;
        Ok(decode(&bytes, data_len))
    }

    /// Replaces a sealed segment's index with one rebuilt by scanning the segment.
    fn rebuild_index(&self, end: u64) -> Result<SegmentIndex> {
        let interval = self.interval;
        tracing::warn!(segment = %self.paths.log.display(), "index does not match the segment; rebuilding it by a scan");
        let file = self.file()?;
        let mut scan = Scanner::new(file.as_ref(), &self.paths.log, 0, end, self.base);
        let mut idx = SegmentIndex::default();
        let mut last_entry_pos = 0u64;
        while let Some(item) = scan.next_batch() {
            let (pos, header, _) = item?;
            if pos > 0 && pos - last_entry_pos >= interval {
                let rel = (header.base_offset - self.base) as u32;
                idx.offsets.push(IndexEntry {
                    rel,
                    pos: pos as u32,
                });
                idx.times.push(TimeEntry {
                    ts: header.timestamp_ms,
                    rel,
                    pos: pos as u32,
                });
                last_entry_pos = pos;
            }
        }
        // Held by the segment, not the cache: reloading the damaged files would mean another
        // scan (and another warning) each time the cache had dropped it.
        *self.index_slot() = Some(idx.clone());
        Ok(idx)
    }

    /// Appends records from offset `from` (in this segment) to `out`, reading no byte at or past
    /// `end`, as the budget allows (see [`Budget`]).
    pub(crate) fn read_into(
        &self,
        from: u64,
        end: u64,
        budget: &mut Budget,
        out: &mut Vec<Record>,
    ) -> Result<()> {
        let (rel, pos) = self.lookup(end, |idx| idx.floor(from - self.base))?;
        match self.read_from_pos(from, rel, pos, end, budget, out) {
            Err(LogError::Corrupt { position, .. }) if pos > 0 && position == pos => {
                // The index pointed at something that is not the batch it names: rebuild the
                // index, then read again. Real damage shows up again at its true position.
                let idx = self.rebuild_index(end)?;
                let (rel, pos) = idx.floor(from - self.base);
                self.read_from_pos(from, rel, pos, end, budget, out)
            }
            other => other,
        }
    }

    fn read_from_pos(
        &self,
        from: u64,
        rel: u64,
        pos: u64,
        end: u64,
        budget: &mut Budget,
        out: &mut Vec<Record>,
    ) -> Result<()> {
        let file = self.file()?;
        let mut scan = Scanner::new(file.as_ref(), &self.paths.log, pos, end, self.base + rel)
            .with_chunk(budget.left.clamp(SCAN_CHUNK, 16 << 20));
        while let Some(item) = scan.next_batch() {
            let (_, header, bytes) = item?;
            if header.next_offset() <= from {
                continue;
            }
            for rec in batch::records(&bytes, &header, from) {
                if !budget.take(rec.payload.len(), out.is_empty()) {
                    return Ok(());
                }
                out.push(rec);
            }
        }
        Ok(())
    }

    /// The first offset in this segment whose batch timestamp is `≥ ts`, reading no byte at or
    /// past `end`.
    pub(crate) fn offset_for_timestamp(&self, ts: u64, end: u64) -> Result<Option<u64>> {
        let (rel, pos, stamped) = self.lookup(end, |idx| idx.time_floor_stamped(ts))?;
        let rebuilt = |this: &Self| -> Result<Option<u64>> {
            let idx = this.rebuild_index(end)?;
            let (rel, pos) = idx.time_floor(ts);
            Ok(this.scan_for_timestamp(ts, rel, pos, None, end)?.flatten())
        };
        match self.scan_for_timestamp(ts, rel, pos, stamped, end) {
            Ok(Some(found)) => Ok(found),
            // The entry's timestamp is not its batch's (damage that kept the entries in
            // order): a lookup starting there skipped the batches before it stamped at or after
            // `ts`, and answered a later offset without a word (found by a review). Rebuilt.
            Ok(None) => rebuilt(self),
            // The time index pointed at something that is not the batch it names (a torn
            // entry that passed the checks): rebuilt, as `read_into` does for the offset index
            // (before, every lookup in its range failed, and the retention by age with it).
            Err(LogError::Corrupt { position, .. }) if pos > 0 && position == pos => rebuilt(self),
            Err(e) => Err(e),
        }
    }

    /// The first offset from `pos` on whose batch is stamped `≥ ts` (`Some(None)`: none before
    /// `end`); `None` when the batch at `pos` is not stamped `stamped`, as its time entry says.
    fn scan_for_timestamp(
        &self,
        ts: u64,
        rel: u64,
        pos: u64,
        stamped: Option<u64>,
        end: u64,
    ) -> Result<Option<Option<u64>>> {
        let file = self.file()?;
        let mut scan = Scanner::new(file.as_ref(), &self.paths.log, pos, end, self.base + rel);
        let mut first = true;
        while let Some(item) = scan.next_batch() {
            let (_, header, _) = item?;
            if first && pos > 0 && stamped.is_some_and(|s| s != header.timestamp_ms) {
                return Ok(None);
            }
            first = false;
            if header.timestamp_ms >= ts {
                return Ok(Some(Some(header.base_offset)));
            }
        }
        Ok(Some(None))
    }

    /// The timestamp of the first batch (`None` for an empty segment).
    pub(crate) fn first_timestamp(&self, end: u64) -> Result<Option<u64>> {
        if let Some(ts) = self.first_ts.get() {
            return Ok(*ts);
        }
        let file = self.file()?;
        let mut scan = Scanner::new(file.as_ref(), &self.paths.log, 0, end, self.base);
        let ts = match scan.next_batch() {
            Some(item) => Some(item?.1.timestamp_ms),
            None => None,
        };
        if end > 0 {
            let _ = self.first_ts.set(ts);
        }
        Ok(ts)
    }

    /// The timestamp of the last batch before `end` (`None` for an empty segment): its time
    /// index's last entry, then a scan of the batches after it (a few index intervals at most).
    /// Batch timestamps never decrease within a log (the writer keeps the last one's), so this
    /// is the segment's newest record time — what the tier's local retention by age goes by,
    /// not the file's modification time, which a purge's rewrite resets.
    pub(crate) fn last_timestamp(&self, end: u64) -> Result<Option<u64>> {
        if let Some(ts) = self.last_ts.get() {
            return Ok(*ts);
        }
        let (rel, pos) = self.lookup(end, |idx| idx.time_floor(u64::MAX))?;
        let scan_from = |rel: u64, pos: u64| -> Result<Option<u64>> {
            let file = self.file()?;
            let mut scan = Scanner::new(file.as_ref(), &self.paths.log, pos, end, self.base + rel);
            let mut ts = None;
            while let Some(item) = scan.next_batch() {
                ts = Some(item?.1.timestamp_ms);
            }
            Ok(ts)
        };
        let ts = match scan_from(rel, pos) {
            // The time index pointed at something that is not a batch (a torn entry that
            // passed the checks): rebuilt, as `offset_for_timestamp` does.
            Err(LogError::Corrupt { position, .. }) if pos > 0 && position == pos => {
                let (rel, pos) = self.rebuild_index(end)?.time_floor(u64::MAX);
                scan_from(rel, pos)?
            }
            r => r?,
        };
        if self.sealed_len.get() == Some(&end) {
            let _ = self.last_ts.set(ts);
        }
        Ok(ts)
    }

    /// Reads and checks every batch in `[0, end)`; returns (batches, records, next offset).
    pub(crate) fn check(&self, end: u64) -> Result<(u64, u64, u64)> {
        let file = self.file()?;
        let mut scan =
            Scanner::new(file.as_ref(), &self.paths.log, 0, end, self.base).with_chunk(4 << 20);
        let (mut batches, mut records, mut next) = (0u64, 0u64, self.base);
        while let Some(item) = scan.next_batch() {
            let (_, header, _) = item?;
            batches += 1;
            records += u64::from(header.record_count);
            next = header.next_offset();
        }
        Ok((batches, records, next))
    }
}

impl Drop for Segment {
    /// What the cache holds for this segment goes with it: a segment tiering replaced by its
    /// remote copy (its file unlinked) must not keep a descriptor open, and its disk space
    /// taken, once the last reader has let go of it.
    fn drop(&mut self) {
        SEALED.forget(self.key);
    }
}

/// How much a read may still return: the first record always, then each next record while its
/// payload fits in what is left; the first that does not fit ends the read.
#[derive(Debug)]
pub(crate) struct Budget {
    pub(crate) left: usize,
    pub(crate) full: bool,
}

impl Budget {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            left: max_bytes,
            full: false,
        }
    }

    /// Whether a record of `len` bytes may be taken (and takes it).
    fn take(&mut self, len: usize, first: bool) -> bool {
        if self.full || (!first && len > self.left) {
            self.full = true;
            return false;
        }
        self.left = self.left.saturating_sub(len);
        true
    }
}

/// Reads batches from `[pos, end)` of a segment file, validating each (CRC, framing and the
/// expected base offset) before handing it out.
pub(crate) struct Scanner<'a> {
    file: &'a dyn VfsFile,
    path: &'a Path,
    pos: u64,
    end: u64,
    expected: u64,
    buf: Bytes,
    buf_pos: u64,
    chunk: usize,
    failed: bool,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(
        file: &'a dyn VfsFile,
        path: &'a Path,
        pos: u64,
        end: u64,
        expected: u64,
    ) -> Self {
        Self {
            file,
            path,
            pos,
            end,
            expected,
            buf: Bytes::new(),
            buf_pos: pos,
            chunk: SCAN_CHUNK,
            failed: false,
        }
    }

    pub(crate) fn with_chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(HEADER_LEN);
        self
    }

    /// Position of the next batch (after the last one returned).
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// The base offset the next batch must have.
    pub(crate) fn expected_offset(&self) -> u64 {
        self.expected
    }

    /// Makes `[pos, pos + n)` available in the buffer (or as much of it as exists before `end`).
    fn fill(&mut self, n: u64) -> Result<()> {
        let have_end = self.buf_pos + self.buf.len() as u64;
        if self.pos >= self.buf_pos && self.pos + n <= have_end {
            return Ok(());
        }
        let want = n.max(self.chunk as u64).min(self.end - self.pos);
        let bytes = read_up_to(self.file, want as usize, self.pos)
            .map_err(|e| LogError::io("read segment", self.path, e))?;
        self.buf = Bytes::from(bytes);
        self.buf_pos = self.pos;
        Ok(())
    }

    fn corrupt(&mut self, kind: crate::error::CorruptKind) -> LogError {
        self.failed = true;
        LogError::Corrupt {
            path: self.path.to_path_buf(),
            position: self.pos,
            expected_offset: self.expected,
            kind,
        }
    }

    /// The next valid batch as (position, header, its bytes), `None` at `end`, or the error
    /// that stopped the scan (after which it returns `None`).
    pub(crate) fn next_batch(&mut self) -> Option<Result<(u64, BatchHeader, Bytes)>> {
        if self.failed || self.pos >= self.end {
            return None;
        }
        let avail = self.end - self.pos;
        if let Err(e) = self.fill(HEADER_LEN as u64) {
            self.failed = true;
            return Some(Err(e));
        }
        let start = (self.pos - self.buf_pos) as usize;
        let header = match batch::peek_header(&self.buf[start..]) {
            Ok(h) => h,
            Err(kind) => return Some(Err(self.corrupt(kind))),
        };
        if header.batch_len > avail {
            let kind = crate::error::CorruptKind::Truncated {
                batch_len: header.batch_len,
                available: avail,
            };
            return Some(Err(self.corrupt(kind)));
        }
        if let Err(e) = self.fill(header.batch_len) {
            self.failed = true;
            return Some(Err(e));
        }
        let start = (self.pos - self.buf_pos) as usize;
        let end = start + header.batch_len as usize;
        if end > self.buf.len() {
            // The file is shorter than `end` promised (it shrank underneath us).
            let kind = crate::error::CorruptKind::Truncated {
                batch_len: header.batch_len,
                available: (self.buf.len() - start) as u64,
            };
            return Some(Err(self.corrupt(kind)));
        }
        let bytes = self.buf.slice(start..end);
        if let Err(kind) = batch::validate(&bytes) {
            return Some(Err(self.corrupt(kind)));
        }
        if header.base_offset != self.expected {
            let kind = crate::error::CorruptKind::OffsetMismatch {
                found: header.base_offset,
                expected: self.expected,
            };
            return Some(Err(self.corrupt(kind)));
        }
        let pos = self.pos;
        self.pos += header.batch_len;
        self.expected = header.next_offset();
        Some(Ok((pos, header, bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(log_name(42), "00000000000000000042.log");
        assert_eq!(
            parse_log_name(&log_name(MAX_OFFSET - 1)),
            Some(MAX_OFFSET - 1)
        );
        assert_eq!(parse_log_name(&log_name(u64::MAX)), None);
        assert_eq!(parse_log_name("42.log"), None);
        assert_eq!(parse_log_name("0000000000000000004x.log"), None);
        assert_eq!(parse_log_name("00000000000000000042.index"), None);
    }

    /// A file that holds nothing and no descriptor.
    #[derive(Debug)]
    struct NoFile;

    impl VfsFile for NoFile {
        fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<usize> {
            Ok(0)
        }
        fn write_all_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn len(&self) -> std::io::Result<u64> {
            Ok(0)
        }
        fn set_len(&self, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Fills the cache of sealed segments with other keys' files: every segment's is pushed out.
    fn push_out_of_cache() {
        for _ in 0..sealed::MAX_OPEN_SEALED_FILES {
            SEALED.keep_file(sealed::next_key(), Arc::new(NoFile));
        }
    }

    fn std_fs() -> Arc<dyn Vfs> {
        Arc::new(crate::vfs::StdFs)
    }

    /// Sealing used to leave the writer's file and full index with the segment until the
    /// process exited; now the segment holds neither, and lookups load the index files.
    #[test]
    fn a_sealed_segment_holds_no_file_or_index_and_lookups_load_the_index_files() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SegmentPaths::new(dir.path(), 0);
        let file = std_fs().open_write(&paths.log).unwrap();
        file.write_all_at(&[0u8; 1000], 0).unwrap();
        let entry = IndexEntry { rel: 5, pos: 100 };
        let time = TimeEntry {
            ts: 7,
            rel: 5,
            pos: 100,
        };
        std::fs::write(&paths.index, entry.encode()).unwrap();
        std::fs::write(&paths.time, time.encode()).unwrap();
        let index = SegmentIndex {
            offsets: vec![entry],
            times: vec![time],
        };
        let seg = Segment::new_active(std_fs(), dir.path(), 0, 64, file, index);
        assert_eq!(seg.lookup(1000, |i| i.floor(7)).unwrap(), (5, 100));

        seg.seal(1000);
        assert!(
            seg.file.read().unwrap().is_none(),
            "the file went to the cache"
        );
        assert!(seg.index.read().unwrap().is_none(), "the index was dropped");
        // A reader whose watermark predates the roll reads less than the sealed length: the
        // index it loads lacks the entry at 100, and must not be kept for later lookups.
        assert_eq!(seg.lookup(50, |i| i.floor(7)).unwrap(), (0, 0));
        assert_eq!(seg.lookup(1000, |i| i.floor(7)).unwrap(), (5, 100));
        assert_eq!(seg.lookup(1000, |i| i.time_floor(8)).unwrap(), (5, 100));
        assert_eq!(seg.file().unwrap().len().unwrap(), 1000);
        // Pushed out of the cache, it is opened and loaded again.
        push_out_of_cache();
        assert_eq!(seg.file().unwrap().len().unwrap(), 1000);
        assert_eq!(seg.lookup(1000, |i| i.floor(7)).unwrap(), (5, 100));
    }

    /// Tiering's retention pins a segment's file before it unlinks it: a reader still holding
    /// the old segment list reads through that handle, whatever the cache dropped meanwhile.
    #[test]
    fn a_pinned_file_stays_readable_after_the_cache_dropped_it_and_the_path_went() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SegmentPaths::new(dir.path(), 0);
        std::fs::write(&paths.log, b"batches").unwrap();
        let pinned = Segment::new(std_fs(), dir.path(), 0, 64);
        let unpinned = Segment::new(std_fs(), dir.path(), 0, 64);
        pinned.pin_file().unwrap();
        unpinned.file().unwrap();
        std::fs::remove_file(&paths.log).unwrap();
        push_out_of_cache();
        assert_eq!(pinned.file().unwrap().len().unwrap(), 7);
        // The cache closed the other one's file: opened again by its path, which is gone.
        assert!(unpinned.file().is_err());
    }

    /// A segment that is dropped (replaced by its remote copy, its file unlinked) takes its
    /// cache entries with it: no descriptor of it stays open once its readers let go.
    #[test]
    fn a_dropped_segment_leaves_nothing_in_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let paths = SegmentPaths::new(dir.path(), 0);
        std::fs::write(&paths.log, b"batches").unwrap();
        let seg = Segment::new(std_fs(), dir.path(), 0, 64);
        let file = seg.file().unwrap();
        let key = seg.key;
        drop(seg);
        assert!(SEALED.file(key).is_none());
        assert_eq!(Arc::strong_count(&file), 1, "only this reader holds it");
    }
}
