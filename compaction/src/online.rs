//! The plan of one pass of the server's background purge of recalled messages
//! ([`plan_online_purge`]): which records to replace, segment by segment.
//!
//! The running server cannot scan its whole log at every pass, nor stop appending: it finds its
//! targets in its projections instead — for each recalled message, its send (through the
//! message index) and every edit of it (`Heads::edit_offsets`), each a target of its own —
//! reads those records, lists its sealed segments and the offsets it must not rewrite, and
//! hands it all to this function, which reads nothing and decides:
//!
//! - a record that is not the target's (another kind of event, another channel or seq, bytes
//!   that do not decode, nothing read) is skipped, for good: a record is rewritten only once
//!   it is identified as the send or edit of that recalled message;
//! - one purged already is counted and left;
//! - one this build cannot purge in place ([`CompactionError::NotCanonical`],
//!   [`CompactionError::LengthChanged`]) is skipped, for good, with the reason;
//! - one at a protected offset (the server's last applied offset, a snapshot's anchor record)
//!   or in the active segment is left for a later pass;
//! - one in a sealed segment — local, or only in the object store (a tiered log rewrites it
//!   there: `Log::rewrite_sealed`) — is planned: its purged bytes ([`crate::purge_record`]),
//!   under its segment's base.
//!
//! [`OnlinePlan::next_watermark`] tells the server which recalls its next pass must consider
//! again: every one whose record was left.
//!
//! [`CompactionError::NotCanonical`]: crate::CompactionError::NotCanonical
//! [`CompactionError::LengthChanged`]: crate::CompactionError::LengthChanged

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use tidings_log::SealedSegment;
use tidings_projections::ids::ChannelId;
use tidings_projections::{Envelope, Event};

use crate::purge::purge_env;

/// Which record of a recalled message a [`Target`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Its send (`MessageSent`).
    Send,
    /// An edit of it (`MessageEdited`).
    Edit,
}

impl TargetKind {
    /// The kind, as messages name it.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Send => "send",
            TargetKind::Edit => "edit",
        }
    }
}

/// A record a pass means to purge: the send or an edit of a recalled message, where the
/// server's projections say it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The message's channel.
    pub channel: ChannelId,
    /// The message's seq.
    pub seq: u64,
    /// Which of its records.
    pub kind: TargetKind,
    /// The record's log offset.
    pub offset: u64,
    /// The offset of the message's recall (its entry in `Heads::changes`): a pass that leaves
    /// the record must consider this recall again ([`OnlinePlan::next_watermark`]).
    pub recall: u64,
}

/// What one pass rewrites, and what it leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnlinePlan {
    /// The replacements, per sealed segment (its base offset): the record's offset → its
    /// purged bytes, of the record's length (what `Log::rewrite_sealed` takes).
    pub segments: BTreeMap<u64, BTreeMap<u64, Bytes>>,
    /// Targets left for a later pass: at a protected offset, or in the active segment.
    pub left: Vec<Target>,
    /// Targets purged already.
    pub already_purged: u64,
    /// Targets never to be purged by a pass, each with why: the record read at its offset is
    /// not the target's (or none was read), or this build cannot purge it in place, or it is
    /// in no sealed segment.
    pub skipped: Vec<(Target, String)>,
}

impl OnlinePlan {
    /// Records to purge.
    pub fn records(&self) -> usize {
        self.segments.values().map(BTreeMap::len).sum()
    }

    /// The watermark after a pass that took its targets from the recalls up to `applied` (the
    /// last applied offset it read) and carried this plan out: recalls at offsets up to it are
    /// done with. `applied`, or, when targets were left, just below the earliest of their
    /// recalls, so that the next pass considers them again (and, with them, the later recalls,
    /// whose records it then finds purged already). `None`: every recall again.
    pub fn next_watermark(&self, applied: u64) -> Option<u64> {
        match self.left.iter().map(|t| t.recall).min() {
            None => Some(applied),
            Some(recall) => recall.checked_sub(1).map(|w| w.min(applied)),
        }
    }
}

/// Where a record is, for a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the sealed segment starting at this offset (local, or only in the object store: a
    /// tiered log rewrites either, `Log::rewrite_sealed`).
    Sealed(u64),
    /// In the active segment (past every sealed one).
    Active,
    /// Before the first sealed segment: in no segment the log holds.
    Nowhere,
}

/// Where `offset` is, given the log's sealed segments (oldest first; the active segment starts
/// where the last ends).
fn place(sealed: &[SealedSegment], offset: u64) -> Place {
    let at = sealed.partition_point(|s| s.base <= offset);
    match at.checked_sub(1).and_then(|i| sealed.get(i)) {
        Some(s) if offset < s.end => Place::Sealed(s.base),
        _ if sealed.last().is_none_or(|s| offset >= s.end) => Place::Active,
        _ => Place::Nowhere,
    }
}

/// Why the event read at `target`'s offset is not the target's record, if it is not: it must
/// be a send (or an edit, as the target says) of the target's channel and seq.
fn mismatch(target: &Target, event: &Event) -> Option<String> {
    let (kind, channel, seq) = match event {
        Event::MessageSent { channel, seq, .. } => (TargetKind::Send, channel, *seq),
        Event::MessageEdited { channel, seq, .. } => (TargetKind::Edit, channel, *seq),
        other => {
            return Some(format!(
                "the record is a {} event, not a message's {}",
                other.kind(),
                target.kind.name()
            ));
        }
    };
    if kind == target.kind && *channel == target.channel && seq == target.seq {
        return None;
    }
    Some(format!(
        "the record is the {} of message {seq} of channel {channel:?}, not the {} of message {} \
         of channel {:?}",
        kind.name(),
        target.kind.name(),
        target.seq,
        target.channel
    ))
}

/// What becomes of one target (module doc).
#[derive(Debug)]
enum Verdict {
    /// Purged: these bytes replace it, in the sealed segment at this base.
    Purge(u64, Bytes),
    /// Left for a later pass.
    Left,
    /// Purged already.
    Purged,
    /// Never purged by a pass, for this reason.
    Skip(String),
}

/// Judges `target` from the record read at its offset (module doc).
fn judge(
    target: &Target,
    records: &BTreeMap<u64, Bytes>,
    sealed: &[SealedSegment],
    protected: &BTreeSet<u64>,
) -> Verdict {
    let Some(bytes) = records.get(&target.offset) else {
        return Verdict::Skip("no record was read at its offset".into());
    };
    let env = match Envelope::decode(target.offset, bytes) {
        Ok(env) => env,
        Err(e) => return Verdict::Skip(format!("the record does not decode: {e}")),
    };
    if let Some(why) = mismatch(target, &env.event) {
        return Verdict::Skip(why);
    }
    let purged = match purge_env(target.offset, bytes, env) {
        Ok(Some(purged)) => purged,
        Ok(None) => return Verdict::Purged,
        Err(e) => return Verdict::Skip(e.to_string()),
    };
    if protected.contains(&target.offset) {
        return Verdict::Left;
    }
    match place(sealed, target.offset) {
        Place::Sealed(base) => Verdict::Purge(base, purged),
        Place::Active => Verdict::Left,
        Place::Nowhere => Verdict::Skip("it is in no segment of the log".into()),
    }
}

/// Plans one pass of the background purge: each of `targets` judged from the record read at
/// its offset (`records`: offset → the record's bytes), the log's sealed segments (`sealed`,
/// oldest first, as `Log::sealed_segments` lists them) and the offsets never to rewrite
/// (`protected`). See the module doc for what becomes of each. Reads nothing.
pub fn plan_online_purge(
    targets: &[Target],
    records: &BTreeMap<u64, Bytes>,
    sealed: &[SealedSegment],
    protected: &BTreeSet<u64>,
) -> OnlinePlan {
    let mut plan = OnlinePlan::default();
    for target in targets {
        match judge(target, records, sealed, protected) {
            Verdict::Purge(base, purged) => {
                plan.segments
                    .entry(base)
                    .or_default()
                    .insert(target.offset, purged);
            }
            Verdict::Left => plan.left.push(target.clone()),
            Verdict::Purged => plan.already_purged += 1,
            Verdict::Skip(why) => plan.skipped.push((target.clone(), why)),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use tidings_projections::{ChannelFlags, FLAG_PURGED};

    use super::*;
    use crate::purge_record;

    /// Whether `event` holds the purged bit (a send or an edit purged already).
    fn is_purged(event: &Event) -> bool {
        match event {
            Event::MessageSent { flags, .. } | Event::MessageEdited { flags, .. } => {
                flags & FLAG_PURGED != 0
            }
            _ => false,
        }
    }

    fn send(channel: &str, seq: u64, payload: &str) -> Bytes {
        Envelope::new(
            1_764_000_000_000,
            Event::MessageSent {
                channel: channel.into(),
                from: "ann".into(),
                client_msg_id: format!("{channel}-{seq}"),
                seq,
                message_id: seq,
                payload: Bytes::copy_from_slice(payload.as_bytes()),
                flags: 0,
            },
        )
        .encode()
    }

    fn edit(channel: &str, seq: u64, payload: &str) -> Bytes {
        Envelope::new(
            1_764_000_000_000,
            Event::MessageEdited {
                channel: channel.into(),
                seq,
                by: "ann".into(),
                payload: Bytes::copy_from_slice(payload.as_bytes()),
                flags: 0,
            },
        )
        .encode()
    }

    fn target(channel: &str, seq: u64, kind: TargetKind, offset: u64, recall: u64) -> Target {
        Target {
            channel: channel.into(),
            seq,
            kind,
            offset,
            recall,
        }
    }

    /// Two sealed local segments, [0, 10) and [10, 20); the active one starts at 20.
    fn sealed() -> Vec<SealedSegment> {
        vec![
            SealedSegment {
                base: 0,
                end: 10,
                remote: false,
            },
            SealedSegment {
                base: 10,
                end: 20,
                remote: false,
            },
        ]
    }

    /// Checks that `purged` is `original` purged: the same length, the purged bit, no payload.
    fn assert_purged(original: &Bytes, purged: &Bytes, secret: &str) {
        assert_eq!(purged.len(), original.len());
        assert!(is_purged(&Envelope::decode(0, purged).unwrap().event));
        let secret = secret.as_bytes();
        assert!(!purged.windows(secret.len()).any(|w| w == secret));
        assert_eq!(Some(purged.clone()), purge_record(0, original).unwrap());
    }

    /// Targets in sealed segments are planned under their segment, each with its purged bytes;
    /// one in the active segment is left, and the watermark stops just before its recall.
    #[test]
    fn sealed_targets_are_planned_and_active_ones_left() {
        let records = BTreeMap::from([
            (3, send("g", 1, "secret one")),
            (12, edit("g", 1, "secret one, edited")),
            (15, send("g", 4, "secret four")),
            (25, send("h", 2, "secret in the active segment")),
        ]);
        let targets = [
            target("g", 1, TargetKind::Send, 3, 17),
            target("g", 1, TargetKind::Edit, 12, 17),
            target("g", 4, TargetKind::Send, 15, 18),
            target("h", 2, TargetKind::Send, 25, 27),
        ];
        let plan = plan_online_purge(&targets, &records, &sealed(), &BTreeSet::new());
        assert_eq!(plan.records(), 3);
        assert_eq!(
            plan.segments.keys().copied().collect::<Vec<_>>(),
            vec![0, 10]
        );
        assert_eq!(plan.segments[&0].keys().copied().collect::<Vec<_>>(), [3]);
        assert_eq!(
            plan.segments[&10].keys().copied().collect::<Vec<_>>(),
            [12, 15]
        );
        assert_purged(&records[&3], &plan.segments[&0][&3], "secret one");
        assert_purged(&records[&12], &plan.segments[&10][&12], "secret one");
        assert_purged(&records[&15], &plan.segments[&10][&15], "secret four");
        assert_eq!(plan.left, vec![targets[3].clone()]);
        assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);
        assert_eq!(plan.already_purged, 0);
        assert_eq!(plan.next_watermark(30), Some(26));

        // Nothing sealed yet: everything is in the active segment.
        let plan = plan_online_purge(&targets, &records, &[], &BTreeSet::new());
        assert_eq!(plan.records(), 0);
        assert_eq!(plan.left.len(), 4);
        assert_eq!(plan.next_watermark(30), Some(16));
    }

    /// A target at a protected offset (a snapshot's anchor, the last applied offset) is left,
    /// not planned, whatever segment it is in.
    #[test]
    fn protected_offsets_are_left() {
        let records = BTreeMap::from([(3, send("g", 1, "anchor")), (4, send("g", 2, "other"))]);
        let targets = [
            target("g", 1, TargetKind::Send, 3, 11),
            target("g", 2, TargetKind::Send, 4, 12),
        ];
        let plan = plan_online_purge(&targets, &records, &sealed(), &BTreeSet::from([3, 9]));
        assert_eq!(plan.segments[&0].keys().copied().collect::<Vec<_>>(), [4]);
        assert_eq!(plan.left, vec![targets[0].clone()]);
        assert_eq!(plan.next_watermark(22), Some(10));
        // The first recall at offset 0 (none before it): every recall again.
        let plan = plan_online_purge(
            &[target("g", 1, TargetKind::Send, 3, 0)],
            &records,
            &sealed(),
            &BTreeSet::from([3]),
        );
        assert_eq!(plan.next_watermark(22), None);
    }

    /// A record purged already is counted, not planned nor left: the watermark moves on.
    #[test]
    fn records_purged_already_are_counted() {
        let original = send("g", 1, "secret");
        let purged = purge_record(3, &original).unwrap().unwrap();
        let records = BTreeMap::from([(3, purged.clone()), (25, purged)]);
        let targets = [
            target("g", 1, TargetKind::Send, 3, 30),
            // In the active segment, but purged already (a record never purged there): not
            // left either.
            target("g", 1, TargetKind::Send, 25, 30),
        ];
        let plan = plan_online_purge(&targets, &records, &sealed(), &BTreeSet::new());
        assert_eq!(plan.already_purged, 2);
        assert_eq!(plan.records(), 0);
        assert!(plan.left.is_empty());
        assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);
        assert_eq!(plan.next_watermark(31), Some(31));
    }

    /// A record that is not the target's — another seq, another channel, an edit where a send
    /// was expected, another kind of event, bytes that do not decode, nothing read — or that
    /// this build cannot purge in place, or in a segment only in the object store, is skipped
    /// with the reason and never planned; it does not hold the watermark back.
    #[test]
    fn a_record_that_is_not_the_expected_message_is_skipped() {
        let mut odd = send("g", 7, "secret in another encoding").to_vec();
        // The envelope's version (1) with a needless one-byte argument: decodes, not canonical.
        odd.insert(3, 0x18);
        let created = Envelope::new(
            1,
            Event::ChannelCreated {
                channel: "g".into(),
                flags: ChannelFlags::default(),
            },
        )
        .encode();
        let records = BTreeMap::from([
            (1, send("g", 2, "another seq")),
            (2, send("h", 1, "another channel")),
            (4, edit("g", 1, "an edit, not the send")),
            (5, send("g", 1, "a send, not the edit")),
            (6, created),
            (7, Bytes::from_static(b"not cbor")),
            (8, Bytes::from(odd)),
            (9, send("g", 9, "remote")),
        ]);
        let targets = [
            target("g", 1, TargetKind::Send, 1, 40),
            target("g", 1, TargetKind::Send, 2, 40),
            target("g", 1, TargetKind::Send, 4, 40),
            target("g", 1, TargetKind::Edit, 5, 40),
            target("g", 1, TargetKind::Send, 6, 40),
            target("g", 1, TargetKind::Send, 7, 40),
            target("g", 7, TargetKind::Send, 8, 40),
            target("g", 9, TargetKind::Send, 9, 41),
            // Nothing read there.
            target("g", 3, TargetKind::Send, 3, 42),
        ];
        let remote = [SealedSegment {
            base: 0,
            end: 20,
            remote: true,
        }];
        let mut sealed = sealed();
        // Offsets 0 to 8 local, 9 remote: one segment [0, 9) local, [9, 20) remote.
        sealed[0].end = 9;
        sealed[1] = SealedSegment {
            base: 9,
            end: 20,
            remote: true,
        };
        let plan = plan_online_purge(&targets, &records, &sealed, &BTreeSet::new());
        // The right record in a segment only in the object store: purged there (a tiered log
        // rewrites it through the store; until 2026-11-30 it was skipped).
        assert_eq!(plan.records(), 1, "{:?}", plan.segments);
        assert!(plan.segments.contains_key(&9), "{:?}", plan.segments);
        assert!(plan.left.is_empty());
        assert_eq!(plan.already_purged, 0);
        let skipped: Vec<u64> = plan.skipped.iter().map(|(t, _)| t.offset).collect();
        assert_eq!(skipped, vec![1, 2, 4, 5, 6, 7, 8, 3]);
        let why = |offset: u64| {
            plan.skipped
                .iter()
                .find(|(t, _)| t.offset == offset)
                .map(|(_, why)| why.clone())
                .unwrap()
        };
        assert!(why(1).contains("message 2"), "{}", why(1));
        assert!(why(2).contains("\"h\""), "{}", why(2));
        assert!(why(4).contains("the edit of message 1"), "{}", why(4));
        assert!(why(5).contains("the send of message 1"), "{}", why(5));
        assert!(why(6).contains("channel_created"), "{}", why(6));
        assert!(why(7).contains("does not decode"), "{}", why(7));
        assert!(why(8).contains("encoding"), "{}", why(8));
        assert!(why(3).contains("no record"), "{}", why(3));
        assert_eq!(plan.next_watermark(50), Some(50));

        // Before the first local segment (removed by hand): skipped too.
        let later = [SealedSegment {
            base: 5,
            end: 20,
            remote: false,
        }];
        let plan = plan_online_purge(&targets[..1], &records, &later, &BTreeSet::new());
        assert!(plan.skipped[0].1.contains("message 2"));
        let records = BTreeMap::from([(1, send("g", 1, "the right one"))]);
        let plan = plan_online_purge(&targets[..1], &records, &later, &BTreeSet::new());
        assert_eq!(plan.skipped.len(), 1);
        let why = &plan.skipped[0].1;
        assert!(why.contains("no segment"), "{why}");
        // And a whole remote log: planned as a local one.
        let plan = plan_online_purge(&targets[..1], &records, &remote, &BTreeSet::new());
        assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);
        assert!(plan.segments.contains_key(&0), "{:?}", plan.segments);
    }
}
