//! Sparse offset and time indexes of a segment (layout in `log/DESIGN.md`).

/// Bytes per `.index` entry.
pub(crate) const INDEX_ENTRY_LEN: usize = 8;
/// Bytes per `.timeindex` entry.
pub(crate) const TIME_ENTRY_LEN: usize = 16;

/// `.index` entry: the batch starting at `base + rel` sits at byte `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) rel: u32,
    pub(crate) pos: u32,
}

/// `.timeindex` entry: the batch at `pos`, starting at `base + rel`, has timestamp `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub(crate) ts: u64,
    pub(crate) rel: u32,
    pub(crate) pos: u32,
}

impl IndexEntry {
    pub(crate) fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        b[0..4].copy_from_slice(&self.rel.to_le_bytes());
        b[4..8].copy_from_slice(&self.pos.to_le_bytes());
        b
    }
}

impl TimeEntry {
    pub(crate) fn encode(&self) -> [u8; TIME_ENTRY_LEN] {
        let mut b = [0u8; TIME_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.ts.to_le_bytes());
        b[8..12].copy_from_slice(&self.rel.to_le_bytes());
        b[12..16].copy_from_slice(&self.pos.to_le_bytes());
        b
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

/// Decodes whole entries, stopping at the first that breaks monotonicity (a damaged index is
/// cut there, never trusted past it) or points at or past `data_len`.
pub(crate) fn decode_index(bytes: &[u8], data_len: u64) -> Vec<IndexEntry> {
    let mut out: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / INDEX_ENTRY_LEN);
    for chunk in bytes.chunks_exact(INDEX_ENTRY_LEN) {
        let e = IndexEntry {
            rel: le_u32(&chunk[0..4]),
            pos: le_u32(&chunk[4..8]),
        };
        let monotonic = out.last().is_none_or(|l| e.rel > l.rel && e.pos > l.pos);
        if !monotonic || e.rel == 0 || u64::from(e.pos) >= data_len {
            break;
        }
        out.push(e);
    }
    out
}

/// Decodes whole time entries with the same rules as [`decode_index`] (timestamps may repeat but
/// never decrease).
pub(crate) fn decode_time_index(bytes: &[u8], data_len: u64) -> Vec<TimeEntry> {
    let mut out: Vec<TimeEntry> = Vec::with_capacity(bytes.len() / TIME_ENTRY_LEN);
    for chunk in bytes.chunks_exact(TIME_ENTRY_LEN) {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&chunk[0..8]);
        let e = TimeEntry {
            ts: u64::from_le_bytes(ts),
            rel: le_u32(&chunk[8..12]),
            pos: le_u32(&chunk[12..16]),
        };
        let monotonic = out
            .last()
            .is_none_or(|l| e.ts >= l.ts && e.rel > l.rel && e.pos > l.pos);
        if !monotonic || u64::from(e.pos) >= data_len {
            break;
        }
        out.push(e);
    }
    out
}

/// A segment's indexes in memory.
#[derive(Debug, Default, Clone)]
pub(crate) struct SegmentIndex {
    pub(crate) offsets: Vec<IndexEntry>,
    pub(crate) times: Vec<TimeEntry>,
}

impl SegmentIndex {
    /// Where to start scanning for relative offset `rel`: the last entry at or before it, or the
    /// start of the segment.
    pub(crate) fn floor(&self, rel: u64) -> (u64, u64) {
        let i = self.offsets.partition_point(|e| u64::from(e.rel) <= rel);
        match i {
            0 => (0, 0),
            _ => {
                let e = self.offsets[i - 1];
                (u64::from(e.rel), u64::from(e.pos))
            }
        }
    }

    /// [`SegmentIndex::time_floor`], with the timestamp of the entry it starts from (`None`:
    /// the start of the segment), which the batch there must carry.
    pub(crate) fn time_floor_stamped(&self, ts: u64) -> (u64, u64, Option<u64>) {
        let i = self.times.partition_point(|e| e.ts < ts);
        match i {
            0 => (0, 0, None),
            _ => {
                let e = self.times[i - 1];
                (u64::from(e.rel), u64::from(e.pos), Some(e.ts))
            }
        }
    }

    /// Where to start scanning for the first batch with timestamp `≥ ts`: the last time entry
    /// older than `ts`, or the start of the segment.
    pub(crate) fn time_floor(&self, ts: u64) -> (u64, u64) {
        let i = self.times.partition_point(|e| e.ts < ts);
        match i {
            0 => (0, 0),
            _ => {
                let e = self.times[i - 1];
                (u64::from(e.rel), u64::from(e.pos))
            }
        }
    }
}

/// The most bytes an index file of a segment of `data_len` bytes needs at one entry per
/// `interval` bytes (entries are at most 16 bytes); what lies beyond is damage.
pub(crate) fn max_index_bytes(data_len: u64, interval: u64) -> u64 {
    (data_len / interval.max(1) + 2) * 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_stops_at_damage() {
        let mut bytes = Vec::new();
        for (rel, pos) in [(3u32, 100u32), (9, 5000), (8, 9000), (20, 12000)] {
            bytes.extend_from_slice(&IndexEntry { rel, pos }.encode());
        }
        bytes.extend_from_slice(&[1, 2, 3]); // torn trailing entry
        let e = decode_index(&bytes, 1 << 20);
        assert_eq!(e.len(), 2, "non-monotonic third entry ends the index");
        let e = decode_index(&bytes, 5000);
        assert_eq!(e.len(), 1, "entries at or past the data length are dropped");
    }

    #[test]
    fn floor_lookups() {
        let idx = SegmentIndex {
            offsets: vec![
                IndexEntry { rel: 10, pos: 400 },
                IndexEntry { rel: 20, pos: 800 },
            ],
            times: vec![
                TimeEntry {
                    ts: 100,
                    rel: 10,
                    pos: 400,
                },
                TimeEntry {
                    ts: 200,
                    rel: 20,
                    pos: 800,
                },
            ],
        };
        assert_eq!(idx.floor(0), (0, 0));
        assert_eq!(idx.floor(9), (0, 0));
        assert_eq!(idx.floor(10), (10, 400));
        assert_eq!(idx.floor(25), (20, 800));
        assert_eq!(idx.time_floor(100), (0, 0));
        assert_eq!(idx.time_floor(101), (10, 400));
        assert_eq!(idx.time_floor(1000), (20, 800));
    }
}
