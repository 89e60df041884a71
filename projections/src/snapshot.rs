//! Snapshots of every projection: `snapshots/{applied:020}.snap`, written to a temp file,
//! fsynced, renamed, directory fsynced; the newest few kept.
//!
//! Layout (little-endian): a 40-byte header — magic `"TDSN"`, version `9` (u32), the last
//! offset applied (u64), body length (u64), CRC-32 of the body (u32), the *anchor* (u32),
//! flags (u32; bit 0: the anchor is set), CRC-32 of the header's first 36 bytes (u32) — then
//! the body: the CBOR of [`State`]. Versions 1 and 2 have a 32-byte header: the same fields
//! up to the body's CRC, then the CRC-32 of the first 28 bytes.
//!
//! The anchor is the CRC-32 of the payload of the log record at the applied offset, as the log
//! held it when the snapshot was written ([`Encoded::set_anchor`]; the server and `rebuild`
//! set it). A snapshot describes one history of the log; a loader that finds another record at
//! that offset (a data directory whose log was replaced or restored from another node's
//! history, a snapshot restored from a store another writer also wrote) knows the snapshot is
//! not this log's state, where the offsets alone would match.
//!
//! The version changes when the *rules* of a projection change, not only its layout: a
//! snapshot is the state the log's events produced under the rules of the build that wrote
//! it, and a state carried on under other rules would differ from a rebuild for good. An
//! older version is refused with [`ProjectionError::SnapshotOutdated`] (so the state is
//! rebuilt from the log), a newer or unknown one as corrupt.
//!
//! - 1: until 2026-11-30.
//! - 2: a send no longer moves the sender's delivered cursor past messages they were never
//!   delivered (`cursors.rs`). Version 1 states may hold such skipped cursors; a rebuild
//!   under the new rule gives those messages back to sync.
//! - 3 (2026-11-30, the same day): the 40-byte header with the anchor.
//! - 4 (2026-11-30, the same day): a group deleted and created again under the same id no
//!   longer shows the earlier group's messages to the new group's members
//!   ([`crate::subscriptions::ChannelInfo::history_from`]); states of versions 2 and 3 lack
//!   that floor, so they are outdated too.
//! - 5 (2026-11-30): the channel heads keep each recall's and edit's log offset
//!   ([`crate::heads::Heads::changes`], what `GET /v1/changes` answers from); a version 4
//!   state lacks them.
//! - 6 (2026-11-30): a user who leaves a group (or whose group is deleted) has the messages of
//!   earlier groups under its id counted as cleared (`Cursors::left`), so `/v1/changes` no
//!   longer tells one who joined a group created again under an id of recalls made in the
//!   earlier group; a version 5 state lacks that floor for those who left before.
//! - 7 (2026-11-30): the channel heads keep the offset of every edit of a message
//!   ([`crate::heads::Heads::edits`]), not only its latest, so that the server's purge of a
//!   recalled message rewrites each; a version 6 state holds one offset per message, in
//!   another shape. The same version carries the head's `edited` mark (`Head::edited`,
//!   `#[serde(default)]`): the edit API came with it, so no earlier state holds an edited head.
//!   Version 6 is still *current*: its one offset per message is read as a list of one
//!   (`heads::edits_of_either_shape`), which is exact, since no message had an earlier edit
//!   before the API — so a log the retention trimmed, which cannot be replayed from offset 0,
//!   still starts after this change. (A format change that is not exact so needs the replay.)
//! - 8 (2026-11-30): the message index lets go of the sidecars that end below the log's start
//!   at each `log_trimmed` event, and keeps each channel's last seq let go
//!   (`msgindex::IndexState::drop_below`, `dropped`). Versions 6 and 7 are still *current*: a
//!   state they hold that applied such an event still has those sidecars, and loading lets
//!   them go (`State::after_load`) — letting go below the highest start at once leaves what
//!   each event did, exactly. The version moved the other way: a build of version 7 knows the
//!   event but not the dropped seqs, and would load this state without them (and write it so
//!   for good), its reads of the seqs let go then finding nothing; it refuses this version
//!   instead.
//! - 9 (2026-12-01): each `log_trimmed` event also lets go of the recalls and edits made
//!   below the log's start, from the heads' `changes` and `recalled`
//!   (`Heads::forget_changes_below`): until then they grew with every recall and edit ever
//!   made. Versions 6 to 8 are still *current*: the rule keeps or lets go by offset against
//!   the start alone, so loading lets go below the highest start at once (`State::after_load`)
//!   and leaves what each event did, exactly. The same events let go of the groups users
//!   left before the start with nothing of them left to tell (`State::forget_left`, noted in
//!   `Cursors::removals_let_go`). Its conditions read more than the start: a state of
//!   version 9 applied it at its events, and loading it again could let go of more than they
//!   did, so it is not; a state of an earlier version has it applied at load, as of its
//!   highest start. That is nearly what this build's replay of the events since an earlier
//!   state gives, not exactly: a user who left before a trim and joined the group again
//!   before the next snapshot keeps a cleared seq or hide that hid nothing where the replay
//!   started them afresh, and a group whose old message was recalled between a trim and the
//!   load is let go by the replay, kept by the load. So `verify` rebuilding from a snapshot
//!   of version 8 or before, on a log trimmed since it, may report such cursors and removals
//!   as differing: the rules changed between them, nothing is damaged. A build of version 8
//!   refuses this version: it would take the recalls let go for never made.
//!
//! Not a version: `State::forget_left` counting the index's entries in memory below the
//! start as expired (`IndexState::expired_through`, 2026-12-02; the build of 2026-12-01
//! counted only the sidecars that went). A state of version 9 that build wrote kept some
//! groups this build's replay lets go; the next `log_trimmed` event lets them go (its start
//! is no lower), so live and replayed states meet there, and until then `verify` may report
//! such removals and cursors as differing: the rule changed, nothing is damaged.
//!
//! Not a version either: a hide carrying the seq it hides as of (`ConversationHidden::up_to_seq`,
//! 2026-11-30). A hide without it is applied as before, and every state an earlier build wrote
//! applied only such hides. The other way (a build from before it loading a newer state) reads
//! the state, but a hide written with the seq had, under that build's rule, covered a message
//! sequenced before it was applied: its `verify` may report such a cursor's `hidden_at` as
//! differing from its rebuild, which is its rule, not damage.
//!
//! Not a version either: a hide never lowers `hidden_at` (2026-12-03; a hide read earlier
//! and applied after a later one used to). States an earlier build wrote hold what its rule
//! gave; only a log holding two such hides applied out of order rebuilds to another
//! `hidden_at`, which `verify` may report against a snapshot of that build: the rule
//! changed, nothing is damaged.
//!
//! Not a version either: token expiries (`Tokens::expires`, from `TokenSet::expires_at_ms`,
//! 2026-11-30) and single revocations (`TokenRevoked`). A state an earlier build wrote decodes
//! with no expiries (`#[serde(default)]`), which is right: none of its tokens had one, nor was
//! any revoked alone. The other way, a build from before them loading a newer state ignores
//! the expiries (serde skips the field), and takes those tokens as never expiring; it cannot
//! read a log holding a `token_revoked` at all (an unknown event kind stops its applier). Nor
//! a token hash issued again to another user now leaving the first user's set: tokens are
//! random, so only a crafted log repeats one.
//!
//! Not a version either: a cursor move, hide or clear of a user not a member of the channel
//! when it is applied (written after their removal: an ack window flushed after it, or a
//! request checked before it) changes nothing (`State::apply`, 2026-12-03). Such events were
//! written only when a removal raced them, so few states an earlier build wrote hold a cursor
//! one made; the next `log_trimmed` event that lets go of the user's removal lets it go too,
//! and until then `verify` may report it as differing from its rebuild: the rule changed,
//! nothing is damaged. A version would have made every earlier state outdated, and a trimmed
//! log cannot be replayed from offset 0.
//!
//! Not a version either: `State::forget_left` taking a hide or clear at or below the group's
//! floor (its `history_from`; a deleted group's last seq) as hiding nothing (2026-12-03). A
//! state an earlier build wrote may keep the cursor of a user who left a group created again
//! before its first message, which this build's replay lets go; the next `log_trimmed` event
//! lets it go too, and until then `verify` may report it as differing: the rule changed,
//! nothing is damaged.
//!
//! Not a version either: the purged bit of a message's flags (`FLAG_PURGED`, masked by
//! `State::apply`). No log written before it holds the bit, so every earlier state is the one
//! this build applies.

use std::path::{Path, PathBuf};

use crate::error::{ProjectionError, Result};
use crate::fsutil::write_atomic;
use crate::state::State;

const MAGIC: u32 = u32::from_le_bytes(*b"TDSN");
pub(crate) const VERSION: u32 = 9;
/// The oldest version whose states follow the current rules (older ones are outdated).
const OLDEST_CURRENT: u32 = 6;
const HEADER_LEN: usize = 40;
/// The header of versions 1 and 2: no anchor, no flags.
const SHORT_HEADER_LEN: usize = 32;
/// Flags bit: the anchor field is set.
const HAS_ANCHOR: u32 = 1;

/// A snapshot file found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// The last log offset it covers.
    pub applied: u64,
    /// Its path.
    pub path: PathBuf,
}

/// The path of the snapshot covering up to `applied`.
pub fn snapshot_path(dir: &Path, applied: u64) -> PathBuf {
    dir.join(format!("{applied:020}.snap"))
}

/// Encodes a snapshot of `state` (which must have applied something).
pub fn encode(state: &State) -> Option<Vec<u8>> {
    let applied = state.applied?;
    let mut body = Vec::new();
    if let Err(e) = ciborium::into_writer(state, &mut body) {
        unreachable!("encoding a snapshot into memory failed: {e}");
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&applied.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // anchor
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    let header_crc = crc32fast::hash(&out[..36]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&body);
    Some(out)
}

/// Sets the anchor in encoded snapshot bytes (and the header's CRC).
fn set_anchor(bytes: &mut [u8], anchor: u32) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    bytes[28..32].copy_from_slice(&anchor.to_le_bytes());
    bytes[32..36].copy_from_slice(&HAS_ANCHOR.to_le_bytes());
    let header_crc = crc32fast::hash(&bytes[..36]);
    bytes[36..40].copy_from_slice(&header_crc.to_le_bytes());
}

/// The anchor of a record payload (see the module doc).
pub fn anchor_of(payload: &[u8]) -> u32 {
    crc32fast::hash(payload)
}

/// The anchor of the record `log` holds at `offset`, or `None` when it holds none there.
pub async fn anchor_at(log: &tidings_log::Log, offset: u64) -> Result<Option<u32>> {
    if offset < log.start_offset() || offset >= log.next_offset() {
        return Ok(None);
    }
    Ok(log
        .read(offset, 0)
        .await?
        .iter()
        .find(|r| r.offset == offset)
        .map(|r| anchor_of(&r.payload)))
}

/// What [`check`] found in a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The last log offset it covers.
    pub applied: u64,
    /// Its anchor, when it has one (module doc).
    pub anchor: Option<u32>,
}

/// Checks a snapshot file's bytes as [`decode_anchored`] does — magic, a current version, both
/// CRCs, the body's length — without decoding the state (its CBOR): what a caller needs to
/// know that the file would load, at the cost of one pass of CRC-32 over it. The state's own
/// offset is not compared with the header's (that needs the body decoded). A file of an
/// earlier version is outdated, as [`decode_anchored`] says, its short header too (versions 1
/// and 2: until 2026-12-03 read with the long one, and said to be damaged).
pub fn check(path: &Path, bytes: &[u8]) -> Result<Checked> {
    let raw = Raw { path, bytes };
    let header_len = raw.header_len()?;
    raw.at_least(header_len)?;
    raw.header_crc(header_len)?;
    let version = raw.u32_at(4);
    if version < OLDEST_CURRENT {
        return Err(raw.outdated(version));
    }
    raw.body(header_len)?;
    Ok(Checked {
        applied: raw.u64_at(8),
        anchor: raw.anchor(header_len),
    })
}

/// Decodes a snapshot file's bytes, checking both CRCs.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<State> {
    decode_anchored(path, bytes).map(|(state, _)| state)
}

/// [`decode`], and the snapshot's anchor when it has one (module doc).
pub fn decode_anchored(path: &Path, bytes: &[u8]) -> Result<(State, Option<u32>)> {
    let raw = Raw { path, bytes };
    let header_len = raw.header_len()?;
    let version = raw.u32_at(4);
    raw.at_least(header_len)?;
    raw.header_crc(header_len)?;
    // Only now is the version known to be what was written (not a damaged byte).
    if version < OLDEST_CURRENT {
        return Err(raw.outdated(version));
    }
    let anchor = raw.anchor(header_len);
    let applied = raw.u64_at(8);
    let body = raw.body(header_len)?;
    let mut state: State = ciborium::from_reader(body)
        .map_err(|e| raw.corrupt(header_len as u64, format!("undecodable body: {e}")))?;
    if state.applied != Some(applied) {
        return Err(raw.corrupt(8, "header offset differs from the body's".into()));
    }
    state.after_load(version);
    Ok((state, anchor))
}

/// A snapshot file's bytes and path: the reads and checks [`check`] and [`decode_anchored`]
/// share, each calling them in its own order (which error a damaged file gets depends on it).
/// A field is read only once [`Raw::at_least`] has covered it.
struct Raw<'a> {
    path: &'a Path,
    bytes: &'a [u8],
}

impl Raw<'_> {
    /// The length of the header of the file's version, once the fields every version has
    /// (magic, version) are there: versions 1 and 2 have the short header (no anchor, no
    /// flags). The full header is checked once the version is known.
    fn header_len(&self) -> Result<usize> {
        self.at_least(8)?;
        self.magic()?;
        match self.u32_at(4) {
            1 | 2 => Ok(SHORT_HEADER_LEN),
            3..=VERSION => Ok(HEADER_LEN),
            other => Err(self.corrupt(4, format!("unknown version {other}"))),
        }
    }
}

impl<'a> Raw<'a> {
    /// Damage found at `position`.
    fn corrupt(&self, position: u64, reason: String) -> ProjectionError {
        ProjectionError::Corrupt {
            what: "snapshot",
            path: self.path.to_path_buf(),
            position,
            reason,
        }
    }

    /// A version written under earlier rules (module doc).
    fn outdated(&self, version: u32) -> ProjectionError {
        ProjectionError::SnapshotOutdated {
            path: self.path.to_path_buf(),
            version,
            current: VERSION,
        }
    }

    /// The little-endian u32 at `at`.
    fn u32_at(&self, at: usize) -> u32 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.bytes[at..at + 4]);
        u32::from_le_bytes(a)
    }

    /// The little-endian u64 at `at`.
    fn u64_at(&self, at: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.bytes[at..at + 8]);
        u64::from_le_bytes(a)
    }

    /// At least `len` bytes, or corrupt at 0 as shorter than the header.
    fn at_least(&self, len: usize) -> Result<()> {
        if self.bytes.len() < len {
            return Err(self.corrupt(
                0,
                format!("{} bytes, shorter than the header", self.bytes.len()),
            ));
        }
        Ok(())
    }

    /// The magic (the first 4 bytes, which [`Raw::at_least`] has covered).
    fn magic(&self) -> Result<()> {
        if self.u32_at(0) != MAGIC {
            return Err(self.corrupt(0, "bad magic".into()));
        }
        Ok(())
    }

    /// The CRC-32 in the last 4 bytes of a header of `header_len` bytes, over the rest of it.
    fn header_crc(&self, header_len: usize) -> Result<()> {
        let crc_at = header_len - 4;
        if crc32fast::hash(&self.bytes[..crc_at]) != self.u32_at(crc_at) {
            return Err(self.corrupt(0, "header checksum mismatch".into()));
        }
        Ok(())
    }

    /// The anchor in a header of `header_len` bytes, when it is set (the short header has
    /// none).
    fn anchor(&self, header_len: usize) -> Option<u32> {
        (header_len == HEADER_LEN && self.u32_at(32) & HAS_ANCHOR != 0).then(|| self.u32_at(28))
    }

    /// The body after a header of `header_len` bytes, its length and CRC-32 checked against
    /// the header's.
    fn body(&self, header_len: usize) -> Result<&'a [u8]> {
        let body = &self.bytes[header_len..];
        let len = self.u64_at(16);
        if body.len() as u64 != len {
            return Err(self.corrupt(
                header_len as u64,
                format!("body of {} bytes, header says {len}", body.len()),
            ));
        }
        if crc32fast::hash(body) != self.u32_at(24) {
            return Err(self.corrupt(header_len as u64, "body checksum mismatch".into()));
        }
        Ok(body)
    }
}

/// Snapshots in `dir`, newest first.
pub fn list(dir: &Path) -> Result<Vec<SnapshotFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ProjectionError::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ProjectionError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".snap") else {
            continue;
        };
        if stem.len() == 20
            && let Ok(applied) = stem.parse()
        {
            out.push(SnapshotFile {
                applied,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.applied));
    Ok(out)
}

/// Writes a snapshot of `state` and keeps only the newest `keep`. Returns its path.
pub fn write(dir: &Path, state: &State, keep: usize) -> Result<Option<PathBuf>> {
    match Encoded::of(state) {
        Some(e) => e.write(dir, keep).map(Some),
        None => Ok(None),
    }
}

/// A snapshot encoded in memory and not yet written: encoding needs the state (and so a lock
/// on it); writing and fsyncing it does not.
#[derive(Debug)]
pub struct Encoded {
    bytes: Vec<u8>,
    applied: u64,
}

impl Encoded {
    /// Encodes `state`; `None` when nothing was applied yet.
    pub fn of(state: &State) -> Option<Encoded> {
        let bytes = encode(state)?;
        Some(Encoded {
            bytes,
            applied: state.applied.unwrap_or(0),
        })
    }

    /// The last offset the snapshot covers.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Records the anchor: [`anchor_of`] the payload of the log's record at [`Self::applied`].
    pub fn set_anchor(&mut self, anchor: u32) {
        set_anchor(&mut self.bytes, anchor);
    }

    /// Writes it atomically into `dir` and keeps the newest `keep` snapshots.
    pub fn write(self, dir: &Path, keep: usize) -> Result<PathBuf> {
        write_encoded(dir, self.applied, &self.bytes, keep)
    }
}

fn write_encoded(dir: &Path, applied: u64, bytes: &[u8], keep: usize) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| ProjectionError::io("create directory", dir, e))?;
    let path = snapshot_path(dir, applied);
    write_atomic(&path, bytes)?;
    for old in list(dir)?.into_iter().skip(keep.max(1)) {
        if let Err(e) = std::fs::remove_file(&old.path) {
            tracing::warn!(path = %old.path.display(), error = %e, "could not remove an old snapshot");
        }
    }
    Ok(path)
}

/// The newest snapshot that decodes, skipping (and reporting) damaged ones.
pub fn load_newest(dir: &Path) -> Result<Option<(State, SnapshotFile)>> {
    load_newest_at_most(dir, None)
}

/// The newest snapshot covering at most `max_applied` that decodes.
pub fn load_newest_at_most(
    dir: &Path,
    max_applied: Option<u64>,
) -> Result<Option<(State, SnapshotFile)>> {
    Ok(load_newest_anchored(dir, max_applied)?.map(|(state, file, _)| (state, file)))
}

/// [`load_newest_at_most`], with the snapshot's anchor.
pub fn load_newest_anchored(
    dir: &Path,
    max_applied: Option<u64>,
) -> Result<Option<(State, SnapshotFile, Option<u32>)>> {
    for snap in list(dir)?
        .into_iter()
        .filter(|s| max_applied.is_none_or(|m| s.applied <= m))
    {
        let loaded = std::fs::read(&snap.path)
            .map_err(|e| ProjectionError::io("read", &snap.path, e))
            .and_then(|bytes| decode_anchored(&snap.path, &bytes));
        match loaded {
            // Named for another offset than it holds (renamed by hand, or damage in the name):
            // not loaded. Taken for the offset of its name, a caller passing over it for an
            // older one (`max_applied` below what it holds) was given it again, for good.
            Ok((state, _)) if state.applied != Some(snap.applied) => {
                tracing::warn!(
                    snapshot = %snap.path.display(),
                    holds = state.applied,
                    "skipping a snapshot whose name is not the offset it covers; trying an older one"
                );
            }
            Ok((state, anchor)) => return Ok(Some((state, snap, anchor))),
            Err(e @ ProjectionError::SnapshotOutdated { .. }) => {
                tracing::info!(error = %e, "skipping a snapshot of an earlier format; trying an older one");
            }
            Err(e) => {
                tracing::warn!(error = %e, "skipping a snapshot that does not load; trying an older one");
            }
        }
    }
    Ok(None)
}
