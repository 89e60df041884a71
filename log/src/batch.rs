//! The on-disk batch: encoding, validation and record decoding (layout in `log/DESIGN.md`).

use bytes::Bytes;

use crate::error::CorruptKind;

/// `"TDTG"` as bytes, read little-endian.
pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"TDTG");
/// Bytes before the first record.
pub(crate) const HEADER_LEN: usize = 40;
/// The only batch format version so far.
pub(crate) const VERSION: u8 = 1;
/// Framing bytes per record (its length prefix).
pub(crate) const RECORD_OVERHEAD: usize = 4;
/// No valid batch is larger than this (bounded by `max_append_bytes ≤ 256 MiB`).
pub(crate) const MAX_BATCH_LEN: u64 = 512 << 20;

/// One record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's offset.
    pub offset: u64,
    /// The timestamp of the batch it was written in (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// The bytes appended.
    pub payload: Bytes,
}

/// The fixed part of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub(crate) batch_len: u64,
    pub(crate) base_offset: u64,
    pub(crate) record_count: u32,
    pub(crate) timestamp_ms: u64,
}

impl BatchHeader {
    /// One past the last offset in the batch.
    pub(crate) fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The encoded size of an append of these payloads (framing included, header excluded).
pub(crate) fn records_size<'a>(payloads: impl IntoIterator<Item = &'a Bytes>) -> usize {
    payloads
        .into_iter()
        .map(|p| p.len() + RECORD_OVERHEAD)
        .sum()
}

/// Builds one batch in a reusable buffer.
#[derive(Debug, Default)]
pub(crate) struct BatchBuilder {
    buf: Vec<u8>,
    count: u32,
}

impl BatchBuilder {
    /// Starts a new batch, discarding the previous one.
    pub(crate) fn begin(&mut self) {
        self.buf.clear();
        self.buf.resize(HEADER_LEN, 0);
        self.count = 0;
    }

    /// Adds a record.
    pub(crate) fn push(&mut self, payload: &[u8]) {
        // Appends are limited to 256 MiB, so a record length always fits in u32.
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.count += 1;
    }

    /// Records pushed since `begin`.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Bytes of the batch so far, header included.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Fills in the header and CRC; returns the finished batch.
    pub(crate) fn finish(&mut self, base_offset: u64, timestamp_ms: u64) -> &[u8] {
        let len = self.buf.len() as u32;
        let b = &mut self.buf;
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12] = VERSION;
        b[13] = 0;
        b[14..16].copy_from_slice(&[0, 0]);
        b[16..24].copy_from_slice(&base_offset.to_le_bytes());
        b[24..28].copy_from_slice(&self.count.to_le_bytes());
        b[28..32].copy_from_slice(&[0, 0, 0, 0]);
        b[32..40].copy_from_slice(&timestamp_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[8..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        &self.buf
    }

    /// The finished batch followed by `zeros` zero bytes (not part of it: the writer writes
    /// them over zeros already on disk, see `writer.rs`).
    pub(crate) fn padded(&mut self, zeros: usize) -> &[u8] {
        self.buf.resize(self.buf.len() + zeros, 0);
        &self.buf
    }
}

/// Reads the header at the start of `bytes` (which must hold at least [`HEADER_LEN`] bytes)
/// and checks what can be checked without the rest: magic and a plausible length.
pub(crate) fn peek_header(bytes: &[u8]) -> Result<BatchHeader, CorruptKind> {
    if bytes.len() < HEADER_LEN {
        return Err(CorruptKind::Truncated {
            batch_len: HEADER_LEN as u64,
            available: bytes.len() as u64,
        });
    }
    let magic = u32_at(bytes, 0);
    if magic != MAGIC {
        return Err(CorruptKind::MagicMismatch { found: magic });
    }
    let batch_len = u64::from(u32_at(bytes, 8));
    if batch_len < (HEADER_LEN + RECORD_OVERHEAD) as u64 || batch_len > MAX_BATCH_LEN {
        return Err(CorruptKind::BadLength { batch_len });
    }
    Ok(BatchHeader {
        batch_len,
        base_offset: u64_at(bytes, 16),
        record_count: u32_at(bytes, 24),
        timestamp_ms: u64_at(bytes, 32),
    })
}

/// Validates a whole batch: `bytes` must be exactly the batch. Checks everything in the
/// design's validity list except the expected base offset, which the caller knows.
pub(crate) fn validate(bytes: &[u8]) -> Result<BatchHeader, CorruptKind> {
    let header = peek_header(bytes)?;
    if (bytes.len() as u64) < header.batch_len {
        return Err(CorruptKind::Truncated {
            batch_len: header.batch_len,
            available: bytes.len() as u64,
        });
    }
    let bytes = &bytes[..header.batch_len as usize];
    let stored = u32_at(bytes, 4);
    let computed = crc32fast::hash(&bytes[8..]);
    if stored != computed {
        return Err(CorruptKind::ChecksumMismatch { stored, computed });
    }
    if bytes[12] != VERSION {
        return Err(CorruptKind::UnknownVersion { version: bytes[12] });
    }
    if header.record_count == 0 {
        return Err(CorruptKind::BadRecords {
            detail: "record count is zero",
        });
    }
    // Walk the length prefixes: they must land exactly on the end.
    let mut at = HEADER_LEN;
    for _ in 0..header.record_count {
        if at + RECORD_OVERHEAD > bytes.len() {
            return Err(CorruptKind::BadRecords {
                detail: "record count exceeds the batch",
            });
        }
        let len = u32_at(bytes, at) as usize;
        at += RECORD_OVERHEAD;
        if len > bytes.len() - at {
            return Err(CorruptKind::BadRecords {
                detail: "record length runs past the batch",
            });
        }
        at += len;
    }
    if at != bytes.len() {
        return Err(CorruptKind::BadRecords {
            detail: "bytes left after the last record",
        });
    }
    Ok(header)
}

/// The records of a batch already checked by [`validate`], from `first` on. `batch` must be
/// exactly the batch's bytes.
pub(crate) fn records(batch: &Bytes, header: &BatchHeader, first: u64) -> Vec<Record> {
    let mut out = Vec::with_capacity(header.next_offset().saturating_sub(first) as usize);
    let mut at = HEADER_LEN;
    for i in 0..u64::from(header.record_count) {
        let len = u32_at(batch, at) as usize;
        at += RECORD_OVERHEAD;
        let offset = header.base_offset + i;
        if offset >= first {
            out.push(Record {
                offset,
                timestamp_ms: header.timestamp_ms,
                payload: batch.slice(at..at + len),
            });
        }
        at += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut b = BatchBuilder::default();
        b.begin();
        for p in payloads {
            b.push(p);
        }
        b.finish(base, 1234).to_vec()
    }

    #[test]
    fn round_trip() {
        let bytes = batch(7, &[b"a", b"", b"hello"]);
        let h = validate(&bytes).unwrap();
        assert_eq!(h.base_offset, 7);
        assert_eq!(h.record_count, 3);
        assert_eq!(h.batch_len as usize, bytes.len());
        let recs = records(&Bytes::from(bytes), &h, 8);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].offset, 8);
        assert_eq!(&recs[1].payload[..], b"hello");
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let good = batch(0, &[b"some payload", b"x"]);
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                assert!(validate(&bad).is_err(), "flip at {byte}:{bit} not detected");
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let good = batch(0, &[b"some payload", b"x"]);
        for cut in 0..good.len() {
            assert!(validate(&good[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..400 {
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                v.push(seed as u8);
            }
            if len >= 4 {
                v[..4].copy_from_slice(&MAGIC.to_le_bytes());
            }
            let _ = validate(&v);
        }
    }
}
