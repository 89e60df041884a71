//! The channel message index: (channel, seq) → log offset, so a page of history costs O(page)
//! reads and never a log scan.
//!
//! Memory grows with channels, not messages. New entries gather in memory; every
//! `flush_entries` entries (a deterministic point in the log) they are written to an immutable
//! sidecar file `index/{first_offset:020}.cidx`, grouped by channel, and each channel keeps one
//! small [`Run`] per sidecar it appears in (where its entries start, how many, their CRC).
//! Reading a run is one positional read, checked against its CRC, behind an in-memory foyer
//! cache. Sidecars are derived data: a missing or damaged one is a typed error naming the file
//! (never wrong data), and the reads that fail are remembered ([`IndexFiles::take_failed`])
//! for the server to make it again from the log's records of its range
//! ([`crate::index_repair`]); `tidings rebuild` writes them all again (from offset 0); a
//! restore from the object store replays the log when a sidecar cannot be fetched.
//!
//! **Bounded by the retention.** The retention's removal of the log's oldest segments
//! (`Event::LogTrimmed { start }`) drops every sidecar that ends below the log's new start,
//! with its runs ([`IndexState::drop_below`]): each of their messages has expired
//! (`crate::messages`' module doc), and no read plans one. Each channel keeps the last seq
//! its dropped runs held ([`IndexState::dropped`]), the floor below which its messages are
//! gone whatever the log says, so the runs and sidecars a state holds grow with the retained
//! log, not with every message ever sent (until 2026-11-30 they grew so, 48 bytes of memory per
//! channel per sidecar and 16 bytes of disk per message). The files themselves go once every
//! snapshot on disk follows the event (`Projections::remove_dropped_sidecars`; one an earlier
//! build wrote after it still names them, and lets them go when loaded: `State::after_load`).
//! Their copies in an object store stay.
//!
//! Sidecar layout (little-endian): a 32-byte header — magic `"TDCX"`, version `1` (u32),
//! entry count (u64), first log offset (u64), CRC-32 of the entries (u32), reserved (u32) —
//! then the entries, `(seq: u64, offset: u64)`, grouped by channel in id order, seq ascending.

use crate::FastMap as HashMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{ProjectionError, Result};
use crate::ids::ChannelId;

const MAGIC: u32 = u32::from_le_bytes(*b"TDCX");
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 32;
const ENTRY_LEN: u64 = 16;

/// Entries per sidecar by default.
pub const DEFAULT_FLUSH_ENTRIES: u64 = 256 * 1024;

/// A channel's entries in one sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// First seq in the run.
    pub first_seq: u64,
    /// Last seq in the run.
    pub last_seq: u64,
    /// The sidecar (its first log offset).
    pub file: u64,
    /// Index of the run's first entry in the sidecar.
    pub first_entry: u64,
    /// Entries in the run.
    pub count: u64,
    /// CRC-32 of the run's bytes.
    pub crc: u32,
}

/// A sidecar file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    /// First log offset it covers (its name).
    pub first_offset: u64,
    /// Last log offset it covers.
    pub last_offset: u64,
    /// Entries in it.
    pub entries: u64,
    /// CRC-32 of its entries.
    pub crc: u32,
}

impl Sidecar {
    /// The length its file has: a header and its entries (`None`: a record no file can match,
    /// its entry count overflowing).
    pub fn file_len(&self) -> Option<u64> {
        self.entries
            .checked_mul(ENTRY_LEN)
            .and_then(|b| b.checked_add(HEADER_LEN))
    }

    /// Checks this sidecar's file in `dir` against its recorded length, magic and CRC (a file
    /// fetched from elsewhere, e.g. the object store, may be another history's).
    pub fn check_file(&self, dir: &Path) -> Result<()> {
        self.check_path(&sidecar_path(dir, self.first_offset))
    }

    /// The 32-byte header its file starts with (module doc): magic, version, entry count,
    /// first offset, CRC, zeros.
    pub fn header(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&VERSION.to_le_bytes());
        h[8..16].copy_from_slice(&self.entries.to_le_bytes());
        h[16..24].copy_from_slice(&self.first_offset.to_le_bytes());
        h[24..28].copy_from_slice(&self.crc.to_le_bytes());
        h
    }

    /// [`Sidecar::check_file`] of the file at `path` (one downloaded beside its place): its
    /// length, its whole header (the CRC covers the entries only) and its entries' CRC.
    pub fn check_path(&self, path: &Path) -> Result<()> {
        let path = path.to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| ProjectionError::io("read", &path, e))?;
        let corrupt = |position: u64, reason: String| ProjectionError::Corrupt {
            what: "message index sidecar",
            path: path.clone(),
            position,
            reason,
        };
        // Checked arithmetic: the entry count comes from a snapshot (possibly downloaded).
        let want = self.file_len();
        if want != Some(bytes.len() as u64) {
            return Err(corrupt(
                0,
                format!(
                    "{} bytes, expected {} entries of {ENTRY_LEN} after a {HEADER_LEN}-byte header",
                    bytes.len(),
                    self.entries
                ),
            ));
        }
        if bytes.get(0..4) != Some(&MAGIC.to_le_bytes()[..]) {
            return Err(corrupt(0, "bad magic".into()));
        }
        let want = self.header();
        if let Some(at) = (0..want.len()).find(|&i| bytes.get(i) != want.get(i)) {
            return Err(corrupt(
                at as u64,
                "the header differs from the sidecar's record (version, entry count, first offset, CRC or the zeros after them)".into(),
            ));
        }
        let crc = crc32fast::hash(&bytes[HEADER_LEN as usize..]);
        if crc != self.crc {
            return Err(corrupt(
                HEADER_LEN,
                format!(
                    "checksum mismatch: expected {:#010x}, found {crc:#010x}",
                    self.crc
                ),
            ));
        }
        Ok(())
    }
}

/// The index's serializable state (part of every snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexState {
    /// Entries per sidecar.
    pub flush_entries: u64,
    /// Entries not yet in a sidecar: channel → (seq, offset), seq ascending.
    pub mem: HashMap<ChannelId, Vec<(u64, u64)>>,
    /// How many entries `mem` holds.
    pub mem_len: u64,
    /// The first log offset in `mem`.
    pub mem_first_offset: Option<u64>,
    /// The last log offset in `mem`.
    pub mem_last_offset: u64,
    /// Each channel's runs, seq ascending.
    pub runs: HashMap<ChannelId, Vec<Run>>,
    /// The sidecars, in log order.
    pub sidecars: Vec<Sidecar>,
    /// Each channel's last seq in the runs [`IndexState::drop_below`] dropped (absent: none
    /// dropped). Absent from snapshots written before it existed, which had dropped none.
    #[serde(default)]
    pub dropped: HashMap<ChannelId, u64>,
    /// Entry vectors emptied by the last flush (not state: see [`SpareVecs`]).
    #[serde(skip)]
    pub spare: SpareVecs,
}

/// Entry vectors emptied by the last flush, each kept for the channel that filled it, so a
/// busy channel does not grow its vector from nothing again after every flush (with many busy
/// channels the vectors doubled in step: a burst of page faults, ~5 ms at 20k sends/s over 64
/// channels). A vector is kept only when its period used at least half of it, so the spares
/// never hold more than twice the last period's entries; those of channels quiet for a whole
/// period are dropped at the next flush. Not part of the state: skipped by serde, empty when
/// cloned, equal to any other.
#[derive(Debug, Default)]
pub struct SpareVecs(HashMap<ChannelId, Vec<(u64, u64)>>);

impl Clone for SpareVecs {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for SpareVecs {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for SpareVecs {}

/// A sidecar ready to be written, and what it adds to the state once written.
#[derive(Debug)]
pub struct Flush {
    /// The sidecar.
    pub sidecar: Sidecar,
    /// Its bytes.
    pub bytes: Vec<u8>,
    runs: Vec<(ChannelId, Run)>,
}

/// Where an entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    /// In memory: the entry itself.
    Entry {
        /// The message's seq.
        seq: u64,
        /// Its log offset.
        offset: u64,
    },
    /// In a sidecar run.
    Run(Run),
}

impl IndexState {
    /// An empty index flushing every `flush_entries` entries.
    pub fn new(flush_entries: u64) -> Self {
        Self {
            flush_entries: flush_entries.max(1),
            ..Self::default()
        }
    }

    /// Records `(channel, seq) → offset`; returns whether a flush is due.
    pub(crate) fn add(&mut self, channel: &str, seq: u64, offset: u64) -> bool {
        match self.mem.get_mut(channel) {
            Some(v) => v.push((seq, offset)),
            None => {
                let (key, mut v) = self
                    .spare
                    .0
                    .remove_entry(channel)
                    .unwrap_or_else(|| (channel.to_owned(), Vec::new()));
                v.push((seq, offset));
                self.mem.insert(key, v);
            }
        }
        self.mem_len += 1;
        self.mem_first_offset.get_or_insert(offset);
        self.mem_last_offset = offset;
        self.mem_len >= self.flush_entries.max(1)
    }

    /// The sidecar for the in-memory entries (nothing changes until [`commit_flush`]).
    ///
    /// [`commit_flush`]: IndexState::commit_flush
    pub fn prepare_flush(&self) -> Option<Flush> {
        let first_offset = self.mem_first_offset?;
        Some(encode(first_offset, self.mem_last_offset, &self.mem))
    }

    /// Moves the in-memory entries into the sidecar just written.
    pub fn commit_flush(&mut self, flush: Flush) {
        for (channel, run) in flush.runs {
            self.runs.entry(channel).or_default().push(run);
        }
        self.sidecars.push(flush.sidecar);
        // The spares of the period before go; this period's vectors take their place.
        self.spare.0.clear();
        for (channel, mut v) in self.mem.drain() {
            if v.len() * 2 >= v.capacity() {
                v.clear();
                self.spare.0.insert(channel, v);
            }
        }
        self.mem_len = 0;
        self.mem_first_offset = None;
        self.mem_last_offset = 0;
    }

    /// Drops the sidecars that end below `start` (the log's first offset after a removal:
    /// `Event::LogTrimmed`) and their runs, keeping each channel's last dropped seq in
    /// [`IndexState::dropped`] (module doc). The entries in memory stay (at most a sidecar's
    /// worth, written out at the next flush and dropped at a later removal). Sidecars end in
    /// log order and a channel's runs follow them, so what goes is a prefix of each. Costs a
    /// look at every channel's runs when any sidecar goes.
    pub(crate) fn drop_below(&mut self, start: u64) {
        let gone = self.sidecars.partition_point(|s| s.last_offset < start);
        if gone == 0 {
            return;
        }
        // Runs of a kept sidecar start at or after its first offset; those of a dropped one
        // before the first kept sidecar's.
        let kept_from = self.sidecars.get(gone).map_or(u64::MAX, |s| s.first_offset);
        self.sidecars.drain(..gone);
        let dropped = &mut self.dropped;
        self.runs.retain(|channel, runs| {
            let n = runs.partition_point(|r| r.file < kept_from);
            if let Some(last) = n.checked_sub(1).and_then(|i| runs.get(i)) {
                let seq = dropped.entry(channel.clone()).or_insert(0);
                *seq = (*seq).max(last.last_seq);
                runs.drain(..n);
            }
            !runs.is_empty()
        });
    }

    /// The last seq of `channel` whose entry went with its sidecar ([`IndexState::drop_below`]);
    /// 0 when none did. Every seq up to it has expired.
    pub fn dropped_through(&self, channel: &str) -> u64 {
        self.dropped.get(channel).copied().unwrap_or(0)
    }

    /// The last seq of `channel` the state knows to have expired in a log starting at `start`:
    /// the last one whose sidecar went ([`IndexState::dropped_through`]), or the last entry in
    /// memory below `start` when that is higher (a small or quiet server may trim many
    /// segments before its first sidecar is written). The entries below `start` of a sidecar
    /// that ends past it are not counted (they would be read from the file); once a later
    /// removal passes its end they are.
    pub fn expired_through(&self, channel: &str, start: u64) -> u64 {
        let in_mem = self.mem.get(channel).map_or(0, |entries| {
            let below = entries.partition_point(|&(_, offset)| offset < start);
            below
                .checked_sub(1)
                .and_then(|i| entries.get(i))
                .map_or(0, |&(seq, _)| seq)
        });
        self.dropped_through(channel).max(in_mem)
    }

    /// The sidecar a run is in (`None` for a run of a sidecar the state no longer holds).
    pub fn sidecar_of(&self, run: &Run) -> Option<&Sidecar> {
        let at = self.sidecars.partition_point(|s| s.first_offset < run.file);
        self.sidecars.get(at).filter(|s| s.first_offset == run.file)
    }

    /// Where the entries of `channel` with seq in `[lo, hi]` are, in seq order.
    pub fn locate(&self, channel: &str, lo: u64, hi: u64) -> Vec<Located> {
        let mut out = Vec::new();
        if lo > hi {
            return out;
        }
        if let Some(runs) = self.runs.get(channel) {
            let start = runs.partition_point(|r| r.last_seq < lo);
            for r in &runs[start..] {
                if r.first_seq > hi {
                    break;
                }
                out.push(Located::Run(*r));
            }
        }
        if let Some(mem) = self.mem.get(channel) {
            let start = mem.partition_point(|(s, _)| *s < lo);
            out.extend(
                mem[start..]
                    .iter()
                    .take_while(|(s, _)| *s <= hi)
                    .map(|&(seq, offset)| Located::Entry { seq, offset }),
            );
        }
        out
    }
}

/// The sidecar of the entries `mem` (channel → `(seq, offset)`, seq ascending), from log
/// offset `first_offset` to `last_offset`: a function of those entries alone (channels in id
/// order), so that one made again from the log's records ([`crate::Projections`]' repair)
/// has the bytes and the CRC the first one had.
pub fn encode(
    first_offset: u64,
    last_offset: u64,
    mem: &HashMap<ChannelId, Vec<(u64, u64)>>,
) -> Flush {
    // Sized by the entries held, not by `len` (a count a snapshot carries: a crafted one
    // asked for an allocation that aborted the process).
    let held: usize = mem.values().map(Vec::len).sum();
    let mut bytes = Vec::with_capacity(HEADER_LEN as usize + held * ENTRY_LEN as usize);
    bytes.resize(HEADER_LEN as usize, 0);
    let mut runs = Vec::with_capacity(mem.len());
    let mut entry = 0u64;
    // Channel id order: the sidecar's bytes are a function of the log alone.
    let mut channels: Vec<&ChannelId> = mem.keys().collect();
    channels.sort_unstable();
    for channel in channels {
        let Some(entries) = mem.get(channel) else {
            continue;
        };
        let start = bytes.len();
        for (seq, off) in entries {
            bytes.extend_from_slice(&seq.to_le_bytes());
            bytes.extend_from_slice(&off.to_le_bytes());
        }
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            continue;
        };
        runs.push((
            channel.clone(),
            Run {
                first_seq: first.0,
                last_seq: last.0,
                file: first_offset,
                first_entry: entry,
                count: entries.len() as u64,
                crc: crc32fast::hash(&bytes[start..]),
            },
        ));
        entry += entries.len() as u64;
    }
    let sidecar = Sidecar {
        first_offset,
        last_offset,
        entries: entry,
        crc: crc32fast::hash(&bytes[HEADER_LEN as usize..]),
    };
    bytes[..HEADER_LEN as usize].copy_from_slice(&sidecar.header());
    Flush {
        sidecar,
        bytes,
        runs,
    }
}

/// Runs read from sidecars, by (sidecar, first entry).
type RunCache = foyer::Cache<(u64, u64), Arc<Vec<(u64, u64)>>>;

/// The sidecar files on disk, with a cache of runs read.
#[derive(Clone)]
pub struct IndexFiles {
    dir: PathBuf,
    cache: RunCache,
    /// The sidecars (first offsets) a read found missing or damaged since the last
    /// [`IndexFiles::take_failed`], for the server to write again.
    failed: Arc<Mutex<BTreeSet<u64>>>,
}

impl std::fmt::Debug for IndexFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexFiles")
            .field("dir", &self.dir)
            .finish()
    }
}

/// The path of the sidecar that starts at `first_offset`.
pub fn sidecar_path(dir: &Path, first_offset: u64) -> PathBuf {
    dir.join(format!("{first_offset:020}.cidx"))
}

impl IndexFiles {
    /// Sidecars in `dir` (created when missing), with a run cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ProjectionError::io("create directory", dir, e))?;
        let cache = foyer::CacheBuilder::new(cache_bytes.max(1 << 20))
            .with_weighter(|_k: &(u64, u64), v: &Arc<Vec<(u64, u64)>>| 64 + v.len() * 16)
            .build();
        Ok(Self {
            dir: dir.to_path_buf(),
            cache,
            failed: Arc::default(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a sidecar atomically (temp file, fsync, rename, directory fsync).
    pub fn write(&self, flush: &Flush) -> Result<()> {
        let path = sidecar_path(&self.dir, flush.sidecar.first_offset);
        crate::fsutil::write_atomic(&path, &flush.bytes)
    }

    /// The `(seq, offset)` entries of a run, checked against its CRC. A sidecar that fails
    /// (missing, short, damaged) is remembered for [`IndexFiles::take_failed`].
    pub fn read_run(&self, run: &Run) -> Result<Arc<Vec<(u64, u64)>>> {
        let read = self.read_run_checked(run);
        if read.is_err() {
            self.mark_failed(run.file);
        }
        read
    }

    /// Adds a sidecar to those [`IndexFiles::take_failed`] returns (one found unreadable
    /// otherwise than by a read).
    pub fn mark_failed(&self, first_offset: u64) {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(first_offset);
    }

    /// The sidecars (first offsets) reads found missing or damaged since the last call.
    pub fn take_failed(&self) -> Vec<u64> {
        let mut failed = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut *failed).into_iter().collect()
    }

    fn read_run_checked(&self, run: &Run) -> Result<Arc<Vec<(u64, u64)>>> {
        let key = (run.file, run.first_entry);
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit.value().clone());
        }
        let path = sidecar_path(&self.dir, run.file);
        // The run's place comes from a snapshot (possibly downloaded): checked, not wrapped.
        let place = run
            .first_entry
            .checked_mul(ENTRY_LEN)
            .and_then(|b| b.checked_add(HEADER_LEN))
            .zip(run.count.checked_mul(ENTRY_LEN));
        let Some((position, len)) = place else {
            return Err(ProjectionError::Corrupt {
                what: "message index sidecar",
                path,
                position: 0,
                reason: format!(
                    "a run of {} entries from entry {} lies past any file",
                    run.count, run.first_entry
                ),
            });
        };
        let bytes = crate::fsutil::read_at(&path, position, len)?;
        let corrupt = |reason: String| ProjectionError::Corrupt {
            what: "message index sidecar",
            path: path.clone(),
            position,
            reason,
        };
        if bytes.len() as u64 != len {
            return Err(corrupt(format!(
                "run of {len} bytes, {} present",
                bytes.len()
            )));
        }
        let crc = crc32fast::hash(&bytes);
        if crc != run.crc {
            return Err(corrupt(format!(
                "checksum mismatch: expected {:#010x}, found {crc:#010x}",
                run.crc
            )));
        }
        let entries: Vec<(u64, u64)> = bytes
            .chunks_exact(ENTRY_LEN as usize)
            .map(|c| {
                let mut s = [0u8; 8];
                let mut o = [0u8; 8];
                s.copy_from_slice(&c[..8]);
                o.copy_from_slice(&c[8..]);
                (u64::from_le_bytes(s), u64::from_le_bytes(o))
            })
            .collect();
        let entries = Arc::new(entries);
        self.cache.insert(key, entries.clone());
        Ok(entries)
    }

    /// Checks a whole sidecar file against its recorded CRC.
    pub fn check(&self, sidecar: &Sidecar) -> Result<()> {
        sidecar.check_file(&self.dir)
    }
}

/// The log offsets of `channel`'s messages with seq in `[lo, hi]`, seq ascending.
pub fn offsets(
    state: &IndexState,
    files: &IndexFiles,
    channel: &str,
    lo: u64,
    hi: u64,
) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for loc in state.locate(channel, lo, hi) {
        match loc {
            Located::Run(run) => {
                let entries = files.read_run(&run)?;
                out.extend(
                    entries
                        .iter()
                        .filter(|(s, _)| (lo..=hi).contains(s))
                        .copied(),
                );
            }
            Located::Entry { seq, offset } => out.push((seq, offset)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A sidecar record whose entry count overflows the length (a damaged or crafted snapshot)
    /// is an error, not a panic, whatever the file holds.
    #[test]
    fn a_check_against_an_impossible_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for entries in [u64::MAX, u64::MAX / ENTRY_LEN - 1, (1 << 60) - 2] {
            let side = Sidecar {
                first_offset: 0,
                last_offset: 0,
                entries,
                crc: 0,
            };
            for bytes in [&b""[..], b"TD"] {
                std::fs::write(sidecar_path(dir.path(), 0), bytes).unwrap();
                assert!(side.check_file(dir.path()).is_err(), "{entries}");
            }
        }
    }

    /// A run whose place overflows (a crafted snapshot's) is a typed error, not a panic or a
    /// wrapped read.
    #[test]
    fn a_run_past_any_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let files = IndexFiles::open(dir.path(), 1 << 20).unwrap();
        let mut mem = HashMap::default();
        mem.insert("c".to_owned(), vec![(1, 5), (2, 6)]);
        files.write(&encode(5, 6, &mem)).unwrap();
        for (first_entry, count) in [(u64::MAX / 2, 1), (0, u64::MAX / 8), (u64::MAX, u64::MAX)] {
            let run = Run {
                first_seq: 1,
                last_seq: 2,
                file: 5,
                first_entry,
                count,
                crc: 0,
            };
            let err = files.read_run(&run).unwrap_err();
            assert!(matches!(err, ProjectionError::Corrupt { .. }), "{err}");
        }
        assert_eq!(files.take_failed(), vec![5]);
    }

    /// Every byte of a sidecar's header is checked against its record (the entries' CRC does
    /// not cover it: a flipped entry count or version passed every check, and was uploaded).
    #[test]
    fn every_header_byte_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut mem = HashMap::default();
        mem.insert("c".to_owned(), vec![(1, 5), (2, 6)]);
        let flush = encode(5, 6, &mem);
        let path = sidecar_path(dir.path(), 5);
        std::fs::write(&path, &flush.bytes).unwrap();
        flush.sidecar.check_file(dir.path()).unwrap();
        for i in 0..HEADER_LEN as usize {
            let mut bad = flush.bytes.clone();
            bad[i] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            assert!(flush.sidecar.check_file(dir.path()).is_err(), "byte {i}");
        }
    }

    #[test]
    fn a_flush_keeps_each_busy_channels_vector_for_it_and_they_are_not_state() {
        let mut live = IndexState::new(1000);
        // ch0 busy (900 entries), ch1 to ch4 quiet (25 each).
        for i in 0..1000u64 {
            let ch = if i < 900 { 0 } else { 1 + i % 4 };
            live.add(&format!("ch{ch}"), i + 1, i);
        }
        let cap0 = live.mem["ch0"].capacity();
        let flush = live.prepare_flush().unwrap();
        live.commit_flush(flush);
        assert!(live.spare.0.values().all(Vec::is_empty));
        assert_eq!(live.spare.0["ch0"].capacity(), cap0);
        // A copy (as a snapshot restores it) has no spares, and is the same state.
        let copy = live.clone();
        assert!(copy.spare.0.is_empty());
        assert_eq!(live, copy);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ciborium::into_writer(&live, &mut a).unwrap();
        ciborium::into_writer(&copy, &mut b).unwrap();
        assert_eq!(a, b, "spares are not serialized");

        // Next period: ch0 gets its own vector back, however late it shows up; ch0 goes
        // quiet, so at the next flush it does not keep its busy period's room.
        live.add("ch9", 1, 1000);
        live.add("ch0", 901, 1001);
        assert_eq!(live.mem["ch0"].capacity(), cap0);
        assert_eq!(live.mem["ch0"], [(901, 1001)]);
        assert!(live.mem["ch9"].capacity() < 16);
        let flush = live.prepare_flush().unwrap();
        live.commit_flush(flush);
        assert!(
            !live.spare.0.contains_key("ch0"),
            "a quiet channel gives its room back"
        );
        assert!(
            !live.spare.0.contains_key("ch1"),
            "channels absent a whole period are dropped"
        );
        let spare_room: usize = live.spare.0.values().map(Vec::capacity).sum();
        assert!(
            spare_room <= 2 * 2,
            "at most twice the period's entries ({spare_room})"
        );
    }
}
