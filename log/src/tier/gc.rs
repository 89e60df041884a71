//! Which objects under a log's prefix nothing needs (`tidings tier gc`): a listing judged
//! against the manifest, with no I/O here, so that the rules that must hold are tested in one
//! place and the command only lists, reads and deletes.
//!
//! What a prefix holds, and how each kind becomes garbage:
//! - `segments/{base:020}.{writer:016x}.{log,index,timeindex}` (`segments/{base:020}.*` for
//!   entries written by older builds): needed while a manifest entry names the stem. An
//!   unnamed one is an upload whose manifest write never came (the process crashed or stopped
//!   between the two, or it had lost the prefix and was fenced at that write), and nothing
//!   reads it: a reader resolves a segment through its entry's exact stem. Entries leave the
//!   manifest only by a removal (the retention), which moves the manifest's `start` past them
//!   and then deletes their objects itself; a crash between the two leaves objects below the
//!   start that no version from then on names, collected here (a reader still holding an older
//!   version meets them gone once collected: [`Rules::min_age`] gives it time).
//! - `manifest/{epoch:020}.json`: the newest is the segment list and the owner's lease (there
//!   is no lease object of its own). The owner prunes older versions itself, keeping 20, in
//!   steps and at best effort, so some are left behind; a fenced writer's create of a pruned
//!   epoch leaves one too.
//! - `snapshots/{applied:020}.snap`: the server keeps the newest 3, pruning at each upload, so
//!   older ones stay only when uploads stopped (or a prune failed).
//! - `projections/index/{first:020}-{crc:08x}.cidx` (and `{first:020}.cidx` of older builds):
//!   message index sidecars. The snapshots refer to them (those the retention let go the server
//!   deletes itself once no kept snapshot can name them), and the server remembers which it
//!   uploaded and does not upload them again, so they are not judged here: always kept.
//!
//! The rules, in [`judge`]:
//! 1. A key that is none of these names is [`Verdict::Unknown`]: reported, never deleted.
//! 2. Needed, kept at any age: every object of a segment the manifest lists, or one of the
//!    versions kept before it lists ([`judge_with_earlier`]: a reader may hold one); the manifest
//!    version read, any newer one, and the 19 before it (the owner keeps 20); the newest
//!    [`Rules::keep_snapshots`] snapshots and the newest two a restore could use (below the
//!    manifest's end); every sidecar.
//! 3. Kept too: segment objects of the manifest owner's process (its incarnation is the
//!    writer in their name), unless it released the prefix or they lie below the manifest's
//!    start (the owner uploads nothing there: its removals and uploads run one at a time): it
//!    may be between an upload and the version naming it. Another writer can no longer publish a version naming its
//!    objects: its next manifest write finds the owner's newer version and fences it. And an
//!    older build's per-base key at or past the manifest's end: such a build uploads that
//!    base to that very key, which could be overwritten between the listing and the delete.
//! 4. Anything else younger than [`Rules::min_age`] is [`Verdict::Young`] (kept); older, it is
//!    [`Verdict::Collect`].
//!
//! Rule 3 holds only for a manifest read *after* the listing (a version published before that
//! read names everything its writer uploaded before the listing): the caller lists first, and
//! reads the manifest again just before deleting, deleting only what both judgments collect.
//! The age is a second guard, for a store whose listings lag behind its writes and for
//! segments under the older per-base keys, which name no writer.

use std::collections::HashSet;
use std::time::Duration;

use super::manifest::{Manifest, RemoteSegment};
use super::store::KEEP_VERSIONS;
pub use super::store::is_child;

/// How many manifest versions the owner keeps (the newest and those before it).
pub const KEPT_VERSIONS: usize = KEEP_VERSIONS;

/// The default [`Rules::min_age`]: far longer than any segment's upload and the manifest
/// write after it.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(3600);

/// An object under the prefix, as the store listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key below the prefix, e.g. `manifest/00000000000000000007.json`.
    pub key: String,
    /// Its bytes.
    pub size: u64,
    /// How long ago it was last written, by the store's clock against the caller's (zero when
    /// the store's time is ahead).
    pub age: Duration,
}

/// What becomes of a listed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Needed (rules 2 and 3).
    Keep,
    /// Nothing needs it, but it is younger than [`Rules::min_age`]: kept.
    Young,
    /// Nothing needs it and it is old enough: deleted when asked.
    Collect,
    /// Not a name this project writes: never deleted.
    Unknown,
}

/// What the judgment takes besides the manifest and the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Unneeded objects younger than this are kept. Default: [`DEFAULT_MIN_AGE`].
    pub min_age: Duration,
    /// The newest snapshots kept (the server keeps 3).
    pub keep_snapshots: usize,
}

/// The verdict on each listed object, in the listing's order.
pub fn judge(manifest: &Manifest, listing: &[Listed], rules: &Rules) -> Vec<Verdict> {
    judge_with_earlier(manifest, &[], listing, rules)
}

/// [`judge`], keeping too every object of a segment one of the `earlier` versions lists (the
/// versions the owner keeps before the newest: a reader may still hold one, and reads the
/// objects it names). An object a rewrite replaced, or one below a removal's start, is often
/// older than [`Rules::min_age`] the moment it is unnamed: judged by the newest version
/// alone it was collected under such a reader, whose read then failed "not found".
pub fn judge_with_earlier(
    manifest: &Manifest,
    earlier: &[Manifest],
    listing: &[Listed],
    rules: &Rules,
) -> Vec<Verdict> {
    let stems: HashSet<String> = std::iter::once(manifest)
        .chain(earlier)
        .flat_map(|m| m.segments.iter().map(RemoteSegment::stem))
        .collect();
    // A released owner (heartbeat 0, written at its close) writes nothing more.
    let owner = manifest
        .owner
        .incarnation
        .filter(|_| manifest.owner.heartbeat_ms != 0);
    let snapshots = kept_snapshots(manifest, listing, rules.keep_snapshots);
    // An older build's per-base key at or past the uploaded end is where its next upload of
    // that base goes: overwritten between the listing and the delete, it would be a segment
    // the manifest names by then. Those below the end can never be written again.
    let end = manifest.end();
    let start = manifest.start.unwrap_or(0);
    listing
        .iter()
        .map(|o| {
            let needed = match Name::parse(&o.key) {
                None => return Verdict::Unknown,
                Some(Name::Segment { stem, base, writer }) => {
                    stems.contains(stem)
                        || (writer.is_some_and(|w| owner == Some(w)) && base >= start)
                        || (writer.is_none() && base >= end)
                }
                Some(Name::Manifest(epoch)) => {
                    manifest.epoch.saturating_sub(epoch) < KEEP_VERSIONS as u64
                }
                Some(Name::Snapshot(applied)) => snapshots.contains(&applied),
                Some(Name::Sidecar) => true,
            };
            if needed {
                Verdict::Keep
            } else if o.age < rules.min_age {
                Verdict::Young
            } else {
                Verdict::Collect
            }
        })
        .collect()
}

/// An object the manifest lists that the listing lacks, or holds at another size: the store
/// lost it, or it was changed (damage, or a hand's work). Cold reads of its offsets fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// Its key below the prefix.
    pub key: String,
    /// The bytes the manifest gives it.
    pub expected: u64,
    /// The bytes the listing gives it; `None` when not listed.
    pub found: Option<u64>,
}

/// The objects of the manifest's segments that the listing lacks or holds at another size
/// (for the report: nothing is deleted by it). A listing taken before the manifest was read
/// may lack objects uploaded in between and named by that version: the caller checks each
/// again before it reports it.
pub fn missing(manifest: &Manifest, listing: &[Listed]) -> Vec<Missing> {
    let sizes: std::collections::HashMap<&str, u64> =
        listing.iter().map(|o| (o.key.as_str(), o.size)).collect();
    manifest
        .segments
        .iter()
        .flat_map(|s| {
            [
                ("log", s.bytes),
                ("index", s.index_bytes),
                ("timeindex", s.time_bytes),
            ]
            .map(|(ext, bytes)| (s.key(ext), bytes))
        })
        .filter_map(|(key, expected)| {
            let found = sizes.get(key.as_str()).copied();
            (found != Some(expected)).then_some(Missing {
                key,
                expected,
                found,
            })
        })
        .collect()
}

/// The snapshots kept, by applied offset: the newest `keep`, and the newest two a restore could
/// use now (a restore skips those at or past the manifest's end, and those below its start; the
/// server keeps two, which bound its retention).
fn kept_snapshots(manifest: &Manifest, listing: &[Listed], keep: usize) -> HashSet<u64> {
    let mut applied: Vec<u64> = listing
        .iter()
        .filter_map(|o| match Name::parse(&o.key) {
            Some(Name::Snapshot(a)) => Some(a),
            _ => None,
        })
        .collect();
    applied.sort_unstable_by(|a, b| b.cmp(a));
    let end = manifest.end();
    // Not below the start either: the records after such a snapshot up to the start are gone.
    let start = manifest.start.unwrap_or(0);
    let restorable: Vec<u64> = applied
        .iter()
        .copied()
        .filter(|&a| a < end && a >= start)
        .take(2)
        .collect();
    applied.into_iter().take(keep).chain(restorable).collect()
}

/// A name this project writes under a prefix (parsed strictly: anything else is unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name<'a> {
    /// A segment object: its stem, and the writer in it (none in the older per-base keys).
    Segment {
        stem: &'a str,
        base: u64,
        writer: Option<u64>,
    },
    /// A manifest version: its epoch.
    Manifest(u64),
    /// A snapshot: the offset it applied.
    Snapshot(u64),
    /// A message index sidecar.
    Sidecar,
}

impl<'a> Name<'a> {
    fn parse(key: &'a str) -> Option<Name<'a>> {
        if let Some(name) = leaf(key, "segments/") {
            let (stem, ext) = name.rsplit_once('.')?;
            if !matches!(ext, "log" | "index" | "timeindex") {
                return None;
            }
            let (base, writer) = match stem.split_once('.') {
                Some((base, writer)) => (base, Some(writer_of(writer)?)),
                None => (stem, None),
            };
            let base = decimal20(base)?;
            return Some(Name::Segment { stem, base, writer });
        }
        if let Some(name) = leaf(key, "manifest/") {
            return decimal20(name.strip_suffix(".json")?).map(Name::Manifest);
        }
        if let Some(name) = leaf(key, "snapshots/") {
            return decimal20(name.strip_suffix(".snap")?).map(Name::Snapshot);
        }
        let name = leaf(key, "projections/index/")?.strip_suffix(".cidx")?;
        let first = match name.split_once('-') {
            Some((first, crc)) => hex(crc, 8).map(|_| first)?,
            None => name,
        };
        decimal20(first).map(|_| Name::Sidecar)
    }
}

/// The name after `dir` in `key`, when the key is directly in that directory.
fn leaf<'a>(key: &'a str, dir: &str) -> Option<&'a str> {
    key.strip_prefix(dir)
        .filter(|name| !name.is_empty() && !name.contains('/'))
}

/// A number written as exactly 20 decimal digits.
fn decimal20(s: &str) -> Option<u64> {
    if s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// The writer named by a segment stem's writer part: `{incarnation:016x}`, or
/// `{incarnation:016x}-{generation}` for a rewrite's upload (`RemoteSegment::rewrite_stem`).
fn writer_of(part: &str) -> Option<u64> {
    let incarnation = match part.split_once('-') {
        Some((incarnation, generation))
            if !generation.is_empty() && generation.bytes().all(|b| b.is_ascii_digit()) =>
        {
            incarnation
        }
        Some(_) => return None,
        None => part,
    };
    hex(incarnation, 16)
}

/// A number written as exactly `len` lowercase hex digits (as `{:016x}` writes it).
fn hex(s: &str, len: usize) -> Option<u64> {
    if s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        u64::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);
    const DAY: Duration = Duration::from_secs(86_400);
    const RULES: Rules = Rules {
        min_age: DEFAULT_MIN_AGE,
        keep_snapshots: 3,
    };

    fn seg(base: u64, end: u64, object: Option<String>) -> RemoteSegment {
        RemoteSegment {
            base,
            end,
            bytes: 1,
            crc32: 0,
            index_bytes: 1,
            time_bytes: 1,
            object,
        }
    }

    /// Epoch 30, owned by the running process of incarnation 0xab; offsets [0, 10) uploaded by
    /// incarnation 0xaa, [10, 20) by an older build (per-base keys).
    fn manifest() -> Manifest {
        let mut m = Manifest::new("node-a", 1_000);
        m.epoch = 30;
        m.owner.incarnation = Some(0xab);
        m.segments = vec![
            seg(0, 10, Some(RemoteSegment::unique_stem(0, 0xaa))),
            seg(10, 20, None),
        ];
        m
    }

    fn listed(key: &str, age: Duration) -> Listed {
        Listed {
            key: key.to_owned(),
            size: 1,
            age,
        }
    }

    /// The verdict on each key, all listed with the same age.
    fn verdicts(m: &Manifest, rules: &Rules, keys: &[&str], age: Duration) -> Vec<Verdict> {
        let listing: Vec<Listed> = keys.iter().map(|k| listed(k, age)).collect();
        judge(m, &listing, rules)
    }

    /// Every object of a listed segment missing or of another size is named, with the bytes
    /// the manifest gives it and those listed; the others are not.
    #[test]
    fn objects_the_manifest_lists_and_the_store_lacks_are_named() {
        let m = manifest();
        let mut listing: Vec<Listed> = [
            "segments/00000000000000000000.00000000000000aa.log",
            "segments/00000000000000000000.00000000000000aa.index",
            "segments/00000000000000000000.00000000000000aa.timeindex",
            "segments/00000000000000000010.log",
            "segments/00000000000000000010.index",
        ]
        .iter()
        .map(|k| listed(k, DAY))
        .collect();
        assert_eq!(
            missing(&m, &listing),
            vec![Missing {
                key: "segments/00000000000000000010.timeindex".into(),
                expected: 1,
                found: None,
            }]
        );
        listing[0].size = 0;
        let names: Vec<(String, Option<u64>)> = missing(&m, &listing)
            .into_iter()
            .map(|x| (x.key, x.found))
            .collect();
        assert_eq!(
            names,
            vec![
                (
                    "segments/00000000000000000000.00000000000000aa.log".into(),
                    Some(0)
                ),
                ("segments/00000000000000000010.timeindex".into(), None),
            ]
        );
    }

    #[test]
    fn every_object_of_a_listed_segment_is_kept_at_any_age() {
        let keys = [
            "segments/00000000000000000000.00000000000000aa.log",
            "segments/00000000000000000000.00000000000000aa.index",
            "segments/00000000000000000000.00000000000000aa.timeindex",
            "segments/00000000000000000010.log",
            "segments/00000000000000000010.index",
            "segments/00000000000000000010.timeindex",
        ];
        let rules = Rules {
            min_age: Duration::ZERO,
            ..RULES
        };
        assert_eq!(
            verdicts(&manifest(), &rules, &keys, DAY),
            [Verdict::Keep; 6]
        );
    }

    #[test]
    fn an_unlisted_segment_object_is_collected_once_old_and_kept_once_listed() {
        // Another process's upload at a listed base, and an older build's at an unlisted one
        // below the uploaded end.
        let keys = [
            "segments/00000000000000000000.00000000000000cc.log",
            "segments/00000000000000000005.index",
        ];
        let m = manifest();
        assert_eq!(verdicts(&m, &RULES, &keys, DAY), [Verdict::Collect; 2]);
        assert_eq!(verdicts(&m, &RULES, &keys, MINUTE), [Verdict::Young; 2]);
        let now = Rules {
            min_age: Duration::ZERO,
            ..RULES
        };
        assert_eq!(
            verdicts(&m, &now, &keys, Duration::ZERO),
            [Verdict::Collect; 2]
        );
        // A version read later (just before deleting) that names one keeps it.
        let mut later = m.next("node-a", 2_000);
        later.owner.incarnation = Some(0xab);
        later.segments.push(seg(5, 6, None));
        assert_eq!(
            verdicts(&later, &RULES, &keys, DAY),
            [Verdict::Collect, Verdict::Keep]
        );
    }

    /// An older build uploads a base to its per-base key, and again after a crash: one at or
    /// past the uploaded end may be overwritten by the upload the next manifest version names
    /// between gc's listing and its delete, so it is kept at any age; below the end no upload
    /// writes it again.
    #[test]
    fn an_older_builds_key_at_or_past_the_uploaded_end_is_kept() {
        let keys = [
            "segments/00000000000000000020.log",
            "segments/00000000000000000031.timeindex",
            "segments/00000000000000000015.log",
        ];
        assert_eq!(
            verdicts(&manifest(), &RULES, &keys, DAY),
            [Verdict::Keep, Verdict::Keep, Verdict::Collect]
        );
    }

    /// The owner's process may be between an upload and the manifest version naming it: its
    /// objects wait for that version, however old, unless it released the prefix.
    #[test]
    fn the_running_owners_uploads_are_kept_until_it_releases_the_prefix() {
        let keys = ["segments/00000000000000000020.00000000000000ab.log"];
        let mut m = manifest();
        assert_eq!(verdicts(&m, &RULES, &keys, DAY), [Verdict::Keep]);
        m.owner.heartbeat_ms = 0;
        assert_eq!(verdicts(&m, &RULES, &keys, DAY), [Verdict::Collect]);
        // A version that names no incarnation (an older build) protects nothing by it.
        let mut m = manifest();
        m.owner.incarnation = None;
        assert_eq!(verdicts(&m, &RULES, &keys, DAY), [Verdict::Collect]);
    }

    /// A removal moved the start past segments and deleted their objects itself; what a crash
    /// between the two left — also the running owner's own uploads — is collected, and so are
    /// snapshots below the start that a restore could no longer replay from.
    /// An object an earlier kept version still lists is kept at any age: a reader holding that
    /// version reads it. Judged by the newest version alone, it is collected.
    #[test]
    fn objects_an_earlier_version_lists_are_kept() {
        let old = manifest();
        let mut new = old.next("node-a", 2_000);
        assert_eq!(new.remove_before(10).len(), 1);
        let key = ["segments/00000000000000000000.00000000000000aa.log"];
        assert_eq!(verdicts(&new, &RULES, &key, DAY), [Verdict::Collect]);
        let listing: Vec<Listed> = key.iter().map(|k| listed(k, DAY)).collect();
        assert_eq!(
            judge_with_earlier(&new, &[old], &listing, &RULES),
            [Verdict::Keep]
        );
    }

    #[test]
    fn objects_below_the_start_are_collected_even_the_running_owners() {
        let mut m = manifest();
        m.segments
            .push(seg(20, 30, Some(RemoteSegment::unique_stem(20, 0xab))));
        let gone = m.remove_before(20);
        assert_eq!(gone.len(), 2);
        let keys = [
            "segments/00000000000000000000.00000000000000aa.log",
            "segments/00000000000000000010.index",
            "segments/00000000000000000012.00000000000000ab.log",
            "segments/00000000000000000020.00000000000000ab.log",
            "segments/00000000000000000030.00000000000000ab.log",
        ];
        assert_eq!(
            verdicts(&m, &RULES, &keys, DAY),
            [
                Verdict::Collect,
                Verdict::Collect,
                Verdict::Collect,
                Verdict::Keep,
                Verdict::Keep
            ]
        );
        let snaps = ["snapshots/00000000000000000015.snap"];
        let one = Rules {
            keep_snapshots: 0,
            ..RULES
        };
        assert_eq!(verdicts(&m, &one, &snaps, DAY), [Verdict::Collect]);
        let snaps = ["snapshots/00000000000000000025.snap"];
        assert_eq!(verdicts(&m, &one, &snaps, DAY), [Verdict::Keep]);
    }

    /// A rewrite's upload (`{base}.{incarnation}-{generation}`) is the writer's like its
    /// first upload: kept while the owner may still name it, collected once unnamed after its
    /// release; a malformed generation is not our name.
    #[test]
    fn a_rewrites_upload_is_its_writers() {
        let mut m = manifest();
        let keys = [
            "segments/00000000000000000020.00000000000000ab-3.log",
            "segments/00000000000000000020.00000000000000cc-1.log",
            "segments/00000000000000000020.00000000000000ab-.log",
            "segments/00000000000000000020.00000000000000ab-x.log",
        ];
        assert_eq!(
            verdicts(&m, &RULES, &keys, DAY),
            [
                Verdict::Keep,
                Verdict::Collect,
                Verdict::Unknown,
                Verdict::Unknown
            ]
        );
        m.owner.heartbeat_ms = 0;
        assert_eq!(verdicts(&m, &RULES, &keys[..1], DAY), [Verdict::Collect]);
        m.segments
            .push(seg(20, 30, Some(RemoteSegment::rewrite_stem(20, 0xab, 3))));
        assert_eq!(verdicts(&m, &RULES, &keys[..1], DAY), [Verdict::Keep]);
    }

    #[test]
    fn a_key_that_is_not_a_name_of_ours_is_never_collected() {
        let keys = [
            "notes.txt",
            "segments",
            "segments/",
            "segments/readme",
            "segments/0.log",
            "segments/00000000000000000000.log.bak",
            "segments/00000000000000000000.00000000000000AB.log",
            "segments/00000000000000000000.0000000000000ab.log",
            "segments/00000000000000000000.00000000000000ab.cc.log",
            "segments/00000000000000000000.data",
            "segments/sub/00000000000000000000.log",
            "segments/+0000000000000000000.log",
            "segments/99999999999999999999.log",
            "other/segments/00000000000000000000.log",
            "manifest/3.json",
            "manifest/latest.json",
            "manifest/00000000000000000003.json.tmp",
            "snapshots/latest.snap",
            "snapshots/00000000000000000003.snap.restoring",
            "projections/index/00000000000000000005-0000ABCD.cidx",
            "projections/index/5.cidx",
            "projections/00000000000000000005.cidx",
        ];
        let now = Rules {
            min_age: Duration::ZERO,
            ..RULES
        };
        let out = verdicts(&manifest(), &now, &keys, DAY);
        for (key, v) in keys.iter().zip(&out) {
            assert_eq!(*v, Verdict::Unknown, "{key}");
        }
    }

    /// The version read (which holds the owner's lease) and the 19 before it are kept at any
    /// age, as are newer ones; older ones go.
    #[test]
    fn the_manifest_and_its_newest_versions_are_kept() {
        let key = |epoch: u64| format!("manifest/{epoch:020}.json");
        let keys: Vec<String> = (0..=32).map(key).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let now = Rules {
            min_age: Duration::ZERO,
            ..RULES
        };
        let out = verdicts(&manifest(), &now, &refs, DAY);
        for (epoch, v) in (0u64..).zip(&out) {
            let want = if epoch <= 10 {
                Verdict::Collect
            } else {
                Verdict::Keep
            };
            assert_eq!(*v, want, "epoch {epoch}");
        }
        // A superseded one still young is kept.
        assert_eq!(
            verdicts(&manifest(), &RULES, &[key(3).as_str()], MINUTE),
            [Verdict::Young]
        );
        // The newest there can be is kept too.
        let mut last = manifest();
        last.epoch = u64::MAX;
        let max = key(u64::MAX);
        assert_eq!(verdicts(&last, &now, &[max.as_str()], DAY), [Verdict::Keep]);
    }

    #[test]
    fn the_newest_snapshots_the_two_a_restore_would_use_and_every_sidecar_are_kept() {
        use Verdict::{Collect, Keep};
        // The manifest ends at 20: the newest three are ahead of the uploaded segments, and a
        // restore now would use the one at 15, or the one at 8 if that one did not load.
        let snap = |applied: u64| format!("snapshots/{applied:020}.snap");
        let keys: Vec<String> = [5, 8, 15, 25, 30, 40].into_iter().map(snap).collect();
        let mut refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        refs.push("projections/index/00000000000000000005-0000abcd.cidx");
        refs.push("projections/index/00000000000000000005.cidx");
        let out = verdicts(&manifest(), &RULES, &refs, DAY);
        assert_eq!(out, [Collect, Keep, Keep, Keep, Keep, Keep, Keep, Keep]);
    }
}
