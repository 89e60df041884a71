//! One segment: its files, a validating batch scanner, and reads by offset or time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;

use crate::batch::{self, BatchHeader, HEADER_LEN, Record};
use crate::error::{LogError, Result};
use crate::index::{self, IndexEntry, SegmentIndex, TimeEntry};
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
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base: u64,
    pub(crate) paths: SegmentPaths,
    vfs: Arc<dyn Vfs>,
    file: OnceLock<Arc<dyn VfsFile>>,
    /// `None` until loaded (sealed segments load lazily); the writer keeps the active one's.
    index: RwLock<Option<SegmentIndex>>,
    /// The sparse index interval, for rebuilding an index.
    interval: u64,
    /// Final length, once sealed.
    sealed_len: OnceLock<u64>,
    /// Timestamp of the first batch, once known.
    first_ts: OnceLock<Option<u64>>,
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
            file: OnceLock::new(),
            index: RwLock::new(None),
            interval,
            sealed_len: OnceLock::new(),
            first_ts: OnceLock::new(),
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
        Self {
            paths,
            remote: true,
            ..Self::new(vfs, Path::new(""), base, interval)
        }
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
        let _ = seg.file.set(file);
        *seg.index_slot() = Some(index);
        seg
    }

    fn index_slot(&self) -> std::sync::RwLockWriteGuard<'_, Option<SegmentIndex>> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The file, opened on first use.
    pub(crate) fn file(&self) -> Result<&Arc<dyn VfsFile>> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        let f = self
            .vfs
            .open_read(&self.paths.log)
            .map_err(|e| LogError::io("open segment", &self.paths.log, e))?;
        let _ = self.file.set(f);
        self.file.get().ok_or_else(|| {
            LogError::io(
                "open segment",
                &self.paths.log,
                std::io::ErrorKind::NotFound.into(),
            )
        })
    }

    /// Marks the segment sealed at `len` bytes (called by the writer when it rolls).
    pub(crate) fn seal(&self, len: u64) {
        let _ = self.sealed_len.set(len);
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

    /// Runs a lookup on the index (held under a read lock only for the lookup), loading a
    /// sealed segment's index from its files on first use.
    fn lookup<R>(&self, end: u64, f: impl Fn(&SegmentIndex) -> R) -> Result<R> {
        if let Some(idx) = self
            .index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(f(idx));
        }
        let offsets = self.read_index_file(&self.paths.index, end, index::decode_index)?;
        let times = self.read_index_file(&self.paths.time, end, index::decode_time_index)?;
        let idx = SegmentIndex { offsets, times };
        let r = f(&idx);
        let mut slot = self.index_slot();
        if slot.is_none() {
            *slot = Some(idx);
        }
        Ok(r)
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
        let (rel, pos) = self.lookup(end, |idx| idx.time_floor(ts))?;
        let file = self.file()?;
        let mut scan = Scanner::new(file.as_ref(), &self.paths.log, pos, end, self.base + rel);
        while let Some(item) = scan.next_batch() {
            let (_, header, _) = item?;
            if header.timestamp_ms >= ts {
                return Ok(Some(header.base_offset));
            }
        }
        Ok(None)
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
}
