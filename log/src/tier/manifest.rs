//! The tier manifest: which sealed segments are in the object store, and who owns the prefix.
//!
//! The manifest is a log of versions, `{prefix}/manifest/{epoch:020}.json`, each written with
//! `PutMode::Create` (create-if-absent). The latest version is the one with the highest epoch.
//! Writing version `n + 1` is the conditional update: exactly one writer can create it, so two
//! servers on one prefix can never interleave their changes — the loser learns it is fenced.
//! This works the same on S3-compatible stores (`If-None-Match: *`) and on a local directory,
//! where `object_store` has no `PutMode::Update`.

use serde::{Deserialize, Serialize};

/// A sealed segment in the object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSegment {
    /// First offset.
    pub base: u64,
    /// One past the last offset.
    pub end: u64,
    /// Bytes of the segment object.
    pub bytes: u64,
    /// CRC-32 of the whole segment object.
    pub crc32: u32,
    /// Bytes of the `.index` object.
    pub index_bytes: u64,
    /// Bytes of the `.timeindex` object.
    pub time_bytes: u64,
    /// The objects' name below `segments/`, without the extension: `{base:020}.{writer:016x}`,
    /// unique to the process that uploaded them (its incarnation), so that a writer that lost
    /// the prefix and still uploads never overwrites an object a manifest lists; a rewrite's
    /// upload adds `-{generation}` ([`RemoteSegment::rewrite_stem`]). Absent in entries written
    /// before 2026-11-30: then `{base:020}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

impl RemoteSegment {
    /// The name of its objects below `segments/`, without the extension.
    pub fn stem(&self) -> String {
        match &self.object {
            Some(stem) => stem.clone(),
            None => format!("{:020}", self.base),
        }
    }

    /// The key (below the prefix) of its object with extension `ext` (`log`, `index`,
    /// `timeindex`).
    pub fn key(&self, ext: &str) -> String {
        Self::key_of(&self.stem(), ext)
    }

    /// The key (below the prefix) of the object `{stem}.{ext}`.
    pub fn key_of(stem: &str, ext: &str) -> String {
        format!("segments/{stem}.{ext}")
    }

    /// The stem a writer of incarnation `incarnation` uploads the segment at `base` under.
    pub fn unique_stem(base: u64, incarnation: u64) -> String {
        format!("{base:020}.{incarnation:016x}")
    }

    /// The stem a writer of incarnation `incarnation` uploads the `generation`th rewrite it
    /// makes under (`Log::rewrite_sealed`): never one an earlier upload used (objects are never
    /// overwritten with other bytes, and cached cold blocks are keyed by object), and still the
    /// writer's for `tier gc` (its incarnation first).
    pub fn rewrite_stem(base: u64, incarnation: u64, generation: u64) -> String {
        format!("{base:020}.{incarnation:016x}-{generation}")
    }

    /// An entry of offsets `[base, end)`, one byte, under the per-base key: for unit tests.
    #[cfg(test)]
    pub(crate) fn of_offsets(base: u64, end: u64) -> Self {
        Self {
            base,
            end,
            bytes: 1,
            crc32: 0,
            index_bytes: 0,
            time_bytes: 0,
            object: None,
        }
    }
}

/// Who writes to the prefix, and when it last said so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The owner's node id.
    pub id: String,
    /// When it last wrote (ms since the Unix epoch): its lease is renewed by every write.
    pub heartbeat_ms: u64,
    /// A random number of the writing process (new at every open of the tier): tells this
    /// process's own earlier writes from those of another process under the same id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
    /// The owner's lease (ms): how long after `heartbeat_ms` it keeps the prefix without
    /// writing. It renews by its own lease (a write every third of it), so a claimer must
    /// judge by this one and not only by its own, which may be shorter
    /// ([`Owner::lease_ms_for`]). Absent in versions written before 2026-11-30: then a
    /// claimer judges by its own lease alone, as those builds did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

impl Owner {
    /// How long after its heartbeat this owner keeps the prefix, as judged by a claimer whose
    /// own lease is `own_ms`: the longer of the owner's recorded lease (it renews by that one
    /// only) and `own_ms` (all there is for a version without one, and a claimer may always
    /// wait longer).
    pub fn lease_ms_for(&self, own_ms: u64) -> u64 {
        self.lease_ms.map_or(own_ms, |theirs| theirs.max(own_ms))
    }
}

/// One version of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version: 2, or 3 once [`Manifest::start`] is set, when written by this build;
    /// 1 is read too ([`Manifest::VERSION`]).
    pub version: u32,
    /// This version's number.
    pub epoch: u64,
    /// The writer.
    pub owner: Owner,
    /// Uploaded segments, by base offset.
    pub segments: Vec<RemoteSegment>,
    /// The log's first offset, once a removal (the retention, `Log::remove_segments_before`)
    /// took the oldest segments out of the store: the offsets below it have expired, and no
    /// entry lies below it. `None`: nothing was ever removed, and the history starts at the
    /// first segment ([`Manifest::history_start`]). Written only when set, in format 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// The log's history id: a random number set by the first claim of the prefix (or the
    /// first by this build of a prefix written before it) and kept by every version after. A
    /// directory's manifest copy carries its store's: a directory started with another log's
    /// prefix is refused by it ([`crate::LogError::StoreHoldsAnotherLog`]), even when the
    /// offsets of both line up. Absent in versions written before 2026-12-03 (and dropped by a
    /// build from before then writing the next version): nothing is compared then. A build
    /// that does not know the field reads past it: no new format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<u64>,
}

impl Manifest {
    /// The format this build writes. 2: segment entries may name writer-unique objects
    /// ([`RemoteSegment::object`]). A build that knows only 1 would read a version-2 manifest
    /// without those names and write it back without them, losing every segment's key: so it
    /// must refuse it, and does (it refuses any version but 1). [`Owner::lease_ms`] came
    /// later without a new version: a build without it reads past the field, and the versions
    /// it writes name itself as the owner, so nothing of another writer's is lost.
    ///
    /// 3: the manifest has a [`Manifest::start`]. Written only once one is set (a prefix nothing
    /// was removed from stays at 2, which builds from before read): a build that knows only 2
    /// would write the next version without the start, and a removal that took every entry
    /// would then read as a store holding no history (refused at the next start); it refuses
    /// version 3.
    pub const VERSION: u32 = 3;

    /// The format of a version: 3 with a start, else 2.
    fn format(start: Option<u64>) -> u32 {
        if start.is_some() { 3 } else { 2 }
    }

    /// The first manifest of a prefix.
    pub fn new(owner: &str, now_ms: u64) -> Self {
        Self {
            version: Self::format(None),
            epoch: 0,
            owner: Owner {
                id: owner.to_owned(),
                heartbeat_ms: now_ms,
                incarnation: None,
                lease_ms: None,
            },
            segments: Vec::new(),
            start: None,
            history: None,
        }
    }

    /// The next version, written by `owner` at `now_ms`.
    pub fn next(&self, owner: &str, now_ms: u64) -> Self {
        Self {
            version: Self::format(self.start),
            epoch: self.epoch + 1,
            owner: Owner {
                id: owner.to_owned(),
                heartbeat_ms: now_ms,
                incarnation: None,
                lease_ms: None,
            },
            ..self.clone()
        }
    }

    /// Whether the segment with this base is uploaded.
    pub fn has(&self, base: u64) -> bool {
        self.segments.iter().any(|s| s.base == base)
    }

    /// One past the last offset in the object store (at least [`Manifest::start`]: a store
    /// whose every segment was removed ends where its history now starts).
    pub fn end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.end)
            .max()
            .unwrap_or(0)
            .max(self.start.unwrap_or(0))
    }

    /// Where the store's history starts: [`Manifest::start`] once a removal set it, else the
    /// first segment's base; `None` for a store holding no segment that nothing was removed
    /// from (it says nothing of where the history starts).
    pub fn history_start(&self) -> Option<u64> {
        self.start.or_else(|| self.segments.first().map(|s| s.base))
    }

    /// This version with the log's start moved to `start` (never back): the entries below it
    /// dropped, the format 3. Returns the entries dropped.
    pub fn remove_before(&mut self, start: u64) -> Vec<RemoteSegment> {
        let start = start.max(self.start.unwrap_or(0));
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.segments)
            .into_iter()
            .partition(|s| s.base < start);
        self.segments = kept;
        self.start = Some(start);
        self.version = Self::format(self.start);
        gone
    }

    /// The first run of offsets from the first listed segment's base up to `before` that no
    /// segment holds, if any: what a log whose oldest local segment starts at `before` could
    /// read from nowhere. The store's history starts at its first segment, not at 0: a
    /// directory whose oldest segment was past 0 when it first tiered (its older segments
    /// removed by hand; or, by a build before 2026-11-30, restored from another store) uploads
    /// from there, and its store holds every offset the log has. `None` for a manifest that
    /// lists no segment: it says nothing of where the history starts (the claim judges an
    /// empty store apart). Segments are in offset order (as [`Manifest::decode`] requires).
    /// Once a removal set [`Manifest::start`], the history starts there, also with no segment
    /// left: the offsets below it expired, and are not missing.
    pub fn missing_before(&self, before: u64) -> Option<std::ops::Range<u64>> {
        let mut due = self.history_start()?;
        for s in self.segments.iter().take_while(|s| s.base < before) {
            if s.base > due {
                return Some(due..s.base);
            }
            due = due.max(s.end);
        }
        (due < before).then_some(due..before)
    }

    /// The object key (below the prefix) of a manifest version.
    pub fn key(epoch: u64) -> String {
        format!("manifest/{epoch:020}.json")
    }

    /// The epoch a manifest key names.
    pub fn epoch_of(name: &str) -> Option<u64> {
        let stem = name.strip_suffix(".json")?;
        (stem.len() == 20).then(|| stem.parse().ok()).flatten()
    }

    /// JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data: serialization cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses the manifest version stored under `epoch`'s key: its epoch must be that one (a
    /// version holding a lower one made its owner write the next version at a key already
    /// taken, and take that for another writer's: fenced at every start).
    pub fn decode_at(bytes: &[u8], epoch: u64) -> Result<Self, String> {
        let m = Self::decode(bytes)?;
        if m.epoch != epoch {
            return Err(format!(
                "it says epoch {}, its key {}: damaged or written by another tool",
                m.epoch,
                Self::key(epoch)
            ));
        }
        Ok(m)
    }

    /// Parses a manifest.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if !(1..=Self::VERSION).contains(&m.version) {
            return Err(format!("unknown manifest version {}", m.version));
        }
        // The next version is `epoch + 1`.
        if m.epoch == u64::MAX {
            return Err(format!("epoch {} has no next version", m.epoch));
        }
        // Offsets stay below 2^63 (`segment::MAX_OFFSET`): a manifest past it is damaged, and
        // a segment restored from it would be named for a base the log then ignores.
        if let Some(s) = m
            .segments
            .iter()
            .find(|s| s.base > s.end || s.end >= crate::segment::MAX_OFFSET)
        {
            return Err(format!(
                "a segment from offset {} to {} (offsets stay below 2^63, and a segment ends after it starts)",
                s.base, s.end
            ));
        }
        // A segment's positions are u32 (a segment is at most 2 GiB and one batch): a larger
        // size is damage, and readers size their buffers from these fields.
        if let Some(s) = m.segments.iter().find(|s| s.bytes > u64::from(u32::MAX)) {
            return Err(format!(
                "the segment at offset {} of {} bytes (a segment is under 4 GiB)",
                s.base, s.bytes
            ));
        }
        // In offset order, none overlapping the next: a reader goes from one to the next, and
        // two entries holding the same offsets would serve them twice.
        if let Some(w) = m.segments.windows(2).find(|w| w[0].end > w[1].base) {
            return Err(format!(
                "the segments at offsets {}..{} and {}..{} overlap or are out of order",
                w[0].base, w[0].end, w[1].base, w[1].end
            ));
        }
        // The start is the log's first offset: no entry below it, and not past 2^63.
        if let Some(start) = m.start {
            if start >= crate::segment::MAX_OFFSET {
                return Err(format!(
                    "a start at offset {start} (offsets stay below 2^63)"
                ));
            }
            if let Some(s) = m.segments.first().filter(|s| s.base < start) {
                return Err(format!(
                    "the segment at offset {} lies below the log's start {start}",
                    s.base
                ));
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_versions() {
        assert_eq!(Manifest::key(3), "manifest/00000000000000000003.json");
        assert_eq!(Manifest::epoch_of("00000000000000000003.json"), Some(3));
        assert_eq!(Manifest::epoch_of("3.json"), None);
        let m = Manifest::new("a", 5).next("b", 9);
        assert_eq!(
            (m.epoch, m.owner.id.as_str(), m.owner.heartbeat_ms),
            (1, "b", 9)
        );
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        assert!(Manifest::decode(b"{").is_err());
        // Read at its key's epoch, and only there; an epoch with no next one is damage.
        assert_eq!(Manifest::decode_at(&m.encode(), 1).unwrap(), m);
        let at = Manifest::decode_at(&m.encode(), 2).unwrap_err();
        assert!(
            at.contains("epoch 1") && at.contains("00000000000000000002"),
            "{at}"
        );
        let mut last = m.clone();
        last.epoch = u64::MAX;
        assert!(Manifest::decode(&last.encode()).is_err());
        // Version 1 (before writer-unique keys) is read, and its successor is written as 2
        // (3 only with a start).
        let mut old = m.clone();
        old.version = 1;
        let read = Manifest::decode(&old.encode()).unwrap();
        assert_eq!(read.next("b", 10).version, 2);
        old.version = Manifest::VERSION + 1;
        assert!(Manifest::decode(&old.encode()).is_err());
        // Offsets past 2^63, or a segment that ends before it starts: damaged.
        for (base, end) in [(0, 1 << 63), (5, 4)] {
            let mut bad = m.clone();
            bad.segments.push(RemoteSegment {
                base,
                end,
                bytes: 1,
                crc32: 0,
                index_bytes: 0,
                time_bytes: 0,
                object: None,
            });
            assert!(Manifest::decode(&bad.encode()).is_err(), "{base}..{end}");
        }
        // Sizes past a segment's u32 positions, overlapping or unordered entries: damaged.
        let seg = |base, end, bytes| RemoteSegment {
            base,
            end,
            bytes,
            crc32: 0,
            index_bytes: 0,
            time_bytes: 0,
            object: None,
        };
        let with = |segments: Vec<RemoteSegment>| {
            let mut m = m.clone();
            m.segments = segments;
            Manifest::decode(&m.encode())
        };
        assert!(with(vec![seg(0, 100, 10), seg(100, 200, 10), seg(200, 200, 0)]).is_ok());
        assert!(with(vec![seg(0, 100, 1 << 32)]).is_err());
        assert!(with(vec![seg(0, 200, 10), seg(100, 260, 10)]).is_err());
        assert!(with(vec![seg(100, 200, 10), seg(0, 100, 10)]).is_err());
        assert!(with(vec![seg(0, 100, 10), seg(0, 100, 10)]).is_err());
    }

    #[test]
    fn offsets_missing_before_the_first_local_one() {
        let seg = RemoteSegment::of_offsets;
        let mut m = Manifest::new("a", 0);
        // Nothing listed: nothing said (the claim judges an empty store apart).
        assert_eq!(m.missing_before(0), None);
        assert_eq!(m.missing_before(102), None);
        // Listed up to exactly the first local offset, or past it: none.
        m.segments = vec![seg(0, 50), seg(50, 102)];
        assert_eq!(m.missing_before(102), None);
        assert_eq!(m.missing_before(80), None);
        // Ending before it: the rest.
        assert_eq!(m.missing_before(142), Some(102..142));
        // A hole: the first run missing.
        m.segments = vec![seg(0, 50), seg(60, 102), seg(110, 120)];
        assert_eq!(m.missing_before(102), Some(50..60));
        assert_eq!(m.missing_before(55), Some(50..55));
        // Not from 0: the history starts at the first segment (0..102 counted as missing once,
        // and such a store was refused at every start).
        m.segments = vec![seg(102, 142)];
        assert_eq!(m.missing_before(142), None);
        assert_eq!(m.missing_before(102), None);
        assert_eq!(m.missing_before(50), None);
        assert_eq!(m.missing_before(150), Some(142..150));
        // ... and holes and an early end after it still count.
        m.segments = vec![seg(102, 142), seg(150, 160)];
        assert_eq!(m.missing_before(160), Some(142..150));
    }

    #[test]
    fn a_removal_sets_the_start_and_format_3() {
        let seg = RemoteSegment::of_offsets;
        let mut m = Manifest::new("a", 0);
        m.segments = vec![seg(0, 50), seg(50, 102), seg(102, 140)];
        // Nothing removed: no start written, format 2, history from the first segment.
        assert!(!String::from_utf8(m.encode()).unwrap().contains("start"));
        assert_eq!((m.version, m.history_start()), (2, Some(0)));
        // Entries wholly below the start leave; the start is the log's first offset.
        let gone = m.remove_before(102);
        assert_eq!(gone, vec![seg(0, 50), seg(50, 102)]);
        assert_eq!(
            (m.start, m.version, m.history_start()),
            (Some(102), 3, Some(102))
        );
        let back = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.next("b", 1).version, 3);
        assert_eq!(back.next("b", 1).start, Some(102));
        // Never back.
        assert!(m.remove_before(50).is_empty());
        assert_eq!(m.start, Some(102));
        // Every entry removed: the history starts, and the store ends, at the start; nothing
        // before it is missing, what lies after it is.
        m.remove_before(140);
        assert!(m.segments.is_empty());
        assert_eq!((m.history_start(), m.end()), (Some(140), 140));
        assert_eq!(m.missing_before(140), None);
        assert_eq!(m.missing_before(120), None);
        assert_eq!(m.missing_before(150), Some(140..150));
        // An entry below the start is damage.
        let mut bad = m.clone();
        bad.segments = vec![seg(100, 150)];
        assert!(Manifest::decode(&bad.encode()).is_err());
        bad.segments = vec![seg(140, 150)];
        assert!(Manifest::decode(&bad.encode()).is_ok());
    }

    #[test]
    fn owner_lease_recorded_or_absent() {
        // A version written before the owner's lease was recorded decodes; a claimer then
        // judges by its own lease alone, as before.
        let old = br#"{
            "version": 2,
            "epoch": 4,
            "owner": { "id": "a", "heartbeat_ms": 9, "incarnation": 7 },
            "segments": []
        }"#;
        let mut m = Manifest::decode(old).unwrap();
        assert_eq!(
            (m.epoch, m.owner.incarnation, m.owner.lease_ms),
            (4, Some(7), None)
        );
        assert_eq!(m.owner.lease_ms_for(30_000), 30_000);
        // None is not written (the format of those versions); a recorded one round-trips,
        // and the longer of the owner's and the claimer's counts.
        assert!(!String::from_utf8(m.encode()).unwrap().contains("lease_ms"));
        m.owner.lease_ms = Some(120_000);
        let back = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.owner.lease_ms_for(30_000), 120_000);
        assert_eq!(back.owner.lease_ms_for(300_000), 300_000);
        // The next writer records its own (at the write), not this one's.
        assert_eq!(back.next("b", 10).owner.lease_ms, None);
    }

    #[test]
    fn segment_keys_old_and_unique() {
        let mut s = RemoteSegment {
            base: 7,
            end: 9,
            bytes: 1,
            crc32: 2,
            index_bytes: 3,
            time_bytes: 4,
            object: None,
        };
        // An entry from before unique keys: no field written, the fixed key read.
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("object"), "{json}");
        assert_eq!(s.key("log"), "segments/00000000000000000007.log");
        s.object = Some(RemoteSegment::unique_stem(7, 0xab));
        assert_eq!(
            s.key("index"),
            "segments/00000000000000000007.00000000000000ab.index"
        );
        let back: RemoteSegment =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
