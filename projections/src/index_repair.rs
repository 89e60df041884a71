//! Writing a message index sidecar again from the log.
//!
//! A sidecar is a function of the log's `message_sent` records from its first offset to its
//! last ([`msgindex::encode`]), so one deleted or damaged is made again by reading that range:
//! no replay, no snapshot. What is made is written (atomically, over whatever is there) only
//! when its entry count and CRC are the ones the state recorded: never another history's index
//! under this state's name. A range the log no longer holds (below its start: the retention
//! removed it) cannot be made again; the caller says so, or fetches the sidecar from where a
//! copy is kept (an object store).

use std::path::Path;

use tidings_log::Log;

use crate::FastMap as HashMap;
use crate::error::{ProjectionError, Result};
use crate::event::{Envelope, Event};
use crate::ids::ChannelId;
use crate::msgindex::{self, Sidecar, sidecar_path};

/// Bytes read from the log at a time.
const READ_BYTES: usize = 1 << 20;

/// The sidecars of `sidecars` whose file in `dir` is missing, not the length its record says,
/// or does not start with the header its record gives (a stat and a 32-byte read each: a
/// start checks them all). A file with other entries under a right header is found by the
/// first read of them ([`msgindex::IndexFiles::take_failed`]).
pub fn unreadable(dir: &Path, sidecars: &[Sidecar]) -> Vec<Sidecar> {
    sidecars
        .iter()
        .filter(|s| !header_and_length_match(&sidecar_path(dir, s.first_offset), s))
        .copied()
        .collect()
}

fn header_and_length_match(path: &Path, side: &Sidecar) -> bool {
    use std::io::Read as _;
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let want = side.header();
    let mut got = [0u8; 32];
    f.metadata().is_ok_and(|m| Some(m.len()) == side.file_len())
        && f.read_exact(&mut got).is_ok()
        && got == want
}

/// Makes `side` again from `log` and writes it into `dir` (see the module doc). Blocking: it
/// reads the sidecar's whole range of the log (a few hundred thousand records by default),
/// asking `stop` before each read ([`ProjectionError::Stopped`] when it says to stop).
pub fn rewrite_from_log(
    log: &Log,
    dir: &Path,
    side: &Sidecar,
    stop: &dyn Fn() -> bool,
) -> Result<()> {
    let path = sidecar_path(dir, side.first_offset);
    let mut mem: HashMap<ChannelId, Vec<(u64, u64)>> = HashMap::default();
    let mut next = side.first_offset;
    while next <= side.last_offset {
        if stop() {
            return Err(ProjectionError::Stopped);
        }
        let records = match log.read_blocking(next, READ_BYTES) {
            Ok(r) => r,
            Err(tidings_log::LogError::OffsetOutOfRange { start, .. }) if next < start => {
                return Err(ProjectionError::HistoryMissing {
                    needed: next,
                    log_start: start,
                });
            }
            Err(e) => return Err(e.into()),
        };
        if records.is_empty() {
            return Err(ProjectionError::HistoryMissing {
                needed: next,
                log_start: log.next_offset(),
            });
        }
        for rec in records {
            // Offsets are dense; a record past the one expected means a gap (a tiered log
            // opened without its store): the sidecar cannot be made from what is here.
            if rec.offset != next {
                return Err(ProjectionError::HistoryMissing {
                    needed: next,
                    log_start: rec.offset,
                });
            }
            if rec.offset > side.last_offset {
                break;
            }
            if let Event::MessageSent { channel, seq, .. } =
                Envelope::decode(rec.offset, &rec.payload)?.event
            {
                mem.entry(channel).or_default().push((seq, rec.offset));
            }
            next = rec.offset + 1;
        }
    }
    let made = msgindex::encode(side.first_offset, side.last_offset, &mem);
    if made.sidecar != *side {
        return Err(ProjectionError::Corrupt {
            what: "message index sidecar",
            path,
            position: 0,
            reason: format!(
                "made again from log offsets {}..={}, it has {} entries with CRC {:#010x}; the state recorded {} with {:#010x} (this log is not the one the state was built from)",
                side.first_offset,
                side.last_offset,
                made.sidecar.entries,
                made.sidecar.crc,
                side.entries,
                side.crc
            ),
        });
    }
    crate::fsutil::write_atomic(&path, &made.bytes)
}
