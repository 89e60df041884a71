//! Which records a purge of recalled messages rewrites: [`plan_recall_purge`].

use std::collections::{BTreeMap, BTreeSet};

use tidings_log::Log;
use tidings_projections::ids::ChannelId;
use tidings_projections::{Envelope, FLAG_PURGED};

use crate::error::{CompactionError, Result};
use crate::purge::{message_of, purge_env};

/// Bytes of records read at a time while scanning.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// What a purge of recalled messages will rewrite, and what it leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// One past the log's last offset when planned: a run checks the log still ends there.
    pub end: u64,
    /// The offset never purged (the new snapshot's anchor: the log's last record), as given.
    pub protect: Option<u64>,
    /// The records to purge in sealed local segments: segment base → offsets, ascending.
    pub sealed: BTreeMap<u64, Vec<u64>>,
    /// Records to purge in the active segment, which is never rewritten: left for a later
    /// run, once the server has sealed it. Ascending.
    pub active: Vec<u64>,
    /// Whether the protected offset holds a record to purge (left for a later run).
    pub kept_protected: bool,
    /// Records of recalled messages purged already (skipped).
    pub already_purged: u64,
    /// Records of recalled messages this build cannot purge in place, left as they are, each
    /// with the reason: ones not in the encoding this build writes for the event they decode
    /// to ([`crate::CompactionError::NotCanonical`]: re-encoding would change more than the
    /// payload), or whose purge would change their length. Reported, not fatal: one such
    /// record must not keep every other from being purged.
    pub unpurgeable: Vec<(u64, String)>,
    /// Records scanned.
    pub scanned: u64,
    /// Snapshot files that may hold a recalled message's preview though no record is left to
    /// purge (the server's background purge rewrote the log; they predate the newest recall,
    /// or were set aside): set by the caller from [`crate::stale_snapshot_files`]. A run then
    /// writes its fresh snapshot and removes them.
    pub stale_copies: bool,
}

impl Plan {
    /// Records to purge in sealed segments.
    pub fn records(&self) -> usize {
        self.sealed.values().map(Vec::len).sum()
    }

    /// Whether a run has nothing to rewrite.
    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty()
    }

    /// Whether a run has nothing to do: nothing to rewrite, no stale snapshot to remove.
    pub fn is_idle(&self) -> bool {
        self.is_empty() && !self.stale_copies
    }
}

/// Plans the purge of recalled messages: every send and edit, in the log's local segments, of
/// a message in `recalled` (channel → seqs: `Heads::recalled` of projections caught up with the
/// log) that is not purged already, but the record at `protect`. Reads and decodes every local
/// record (blocking: run it on a blocking thread); segments only in the object store are not
/// read.
///
/// Each record to purge is checked as [`crate::purge_record`] would purge it, so a record it
/// refuses is listed in the plan's `unpurgeable` (left as it is), before anything is
/// rewritten.
pub fn plan_recall_purge(
    log: &Log,
    recalled: &BTreeMap<ChannelId, BTreeSet<u64>>,
    protect: Option<u64>,
) -> Result<Plan> {
    let end = log.next_offset();
    let mut plan = Plan {
        end,
        protect,
        ..Plan::default()
    };
    let segments: Vec<_> = log.segments()?.into_iter().filter(|s| !s.remote).collect();
    let Some(first) = segments.first() else {
        return Ok(plan);
    };
    let mut next = first.base_offset;
    while next < end {
        let chunk = log.read_blocking(next, SCAN_CHUNK_BYTES)?;
        let Some(last) = chunk.last() else {
            break;
        };
        next = last.offset + 1;
        for rec in chunk.iter().filter(|r| r.offset < end) {
            plan.scanned += 1;
            let env = Envelope::decode(rec.offset, &rec.payload)?;
            let Some((channel, seq, flags)) = message_of(&env.event) else {
                continue;
            };
            if !recalled
                .get(channel)
                .is_some_and(|seqs| seqs.contains(&seq))
            {
                continue;
            }
            if flags & FLAG_PURGED != 0 {
                plan.already_purged += 1;
                continue;
            }
            // Found here rather than halfway through the run.
            match purge_env(rec.offset, &rec.payload, env) {
                Ok(_) => {}
                Err(
                    e @ (CompactionError::NotCanonical { .. }
                    | CompactionError::LengthChanged { .. }),
                ) => {
                    plan.unpurgeable.push((rec.offset, e.to_string()));
                    continue;
                }
                Err(e) => return Err(e),
            }
            if protect == Some(rec.offset) {
                plan.kept_protected = true;
                continue;
            }
            // The segment holding it: the last one starting at or before it.
            let at = segments.partition_point(|s| s.base_offset <= rec.offset);
            match at.checked_sub(1).and_then(|i| segments.get(i)) {
                Some(seg) if seg.sealed => {
                    plan.sealed
                        .entry(seg.base_offset)
                        .or_default()
                        .push(rec.offset);
                }
                _ => plan.active.push(rec.offset),
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tidings_log::{FsyncPolicy, LogOptions};
    use tidings_projections::{ChannelFlags, Event};

    use super::*;
    use crate::purge_record;

    fn send(channel: &str, seq: u64, payload: &str) -> Event {
        Event::MessageSent {
            channel: channel.into(),
            from: "ann".into(),
            client_msg_id: format!("{channel}-{seq}"),
            seq,
            message_id: seq,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            flags: 0,
        }
    }

    fn edit(channel: &str, seq: u64, payload: &str) -> Event {
        Event::MessageEdited {
            channel: channel.into(),
            seq,
            by: "ann".into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            flags: 0,
        }
    }

    async fn append(log: &Log, event: Event) -> u64 {
        log.append_one(Envelope::new(1_764_000_000_000, event).encode())
            .await
            .unwrap()
    }

    /// In sealed segments, exactly the sends and edits of recalled messages (of that channel:
    /// not the same seq elsewhere) are planned; those in the active segment are listed apart,
    /// the protected offset is kept, and a record purged already is counted, not planned.
    #[tokio::test]
    async fn the_plan_picks_the_sends_and_edits_of_recalled_messages() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions::default()
            .with_fsync(FsyncPolicy::Never)
            .with_segment_bytes(1024);
        let log = Log::open(dir.path(), opts).await.unwrap();
        append(
            &log,
            Event::ChannelCreated {
                channel: "g".into(),
                flags: ChannelFlags::default(),
            },
        )
        .await;
        let g1 = append(&log, send("g", 1, "recalled one")).await;
        let h1 = append(&log, send("h", 1, "same seq, other channel")).await;
        let g2 = append(&log, send("g", 2, "kept")).await;
        let g1_edit = append(&log, edit("g", 1, "recalled one, edited")).await;
        let g2_edit = append(&log, edit("g", 2, "kept, edited")).await;
        let g3 = append(&log, send("g", 3, "recalled, protected")).await;
        // Enough to seal the segments above.
        for seq in 4..40 {
            append(&log, send("g", seq, "filler filler filler filler")).await;
        }
        log.roll().await.unwrap();
        let g40 = append(&log, send("g", 40, "recalled, in the active segment")).await;
        append(&log, send("g", 41, "the last")).await;

        let recalled = BTreeMap::from([("g".to_string(), BTreeSet::from([1, 3, 40]))]);
        let plan = plan_recall_purge(&log, &recalled, Some(g3)).unwrap();
        let planned: Vec<u64> = plan.sealed.values().flatten().copied().collect();
        assert_eq!(planned, vec![g1, g1_edit]);
        assert_eq!(plan.records(), 2);
        assert_eq!(plan.active, vec![g40]);
        assert!(plan.kept_protected);
        assert_eq!(plan.already_purged, 0);
        assert_eq!(plan.end, log.next_offset());
        assert_eq!(plan.scanned, log.next_offset());
        for (base, offsets) in &plan.sealed {
            let seg = log
                .segments()
                .unwrap()
                .into_iter()
                .find(|s| s.base_offset == *base)
                .unwrap();
            assert!(seg.sealed);
            assert!(
                offsets
                    .iter()
                    .all(|o| (seg.base_offset..seg.end_offset).contains(o))
            );
        }
        for offset in [h1, g2, g2_edit] {
            assert!(!planned.contains(&offset));
        }

        // Without protection the protected send is planned too.
        let unprotected = plan_recall_purge(&log, &recalled, None).unwrap();
        assert_eq!(unprotected.records(), 3);
        assert!(!unprotected.kept_protected);
        log.close().await.unwrap();
    }

    /// A log holding a purged record: the plan counts it as purged and does not plan it.
    #[tokio::test]
    async fn a_purged_record_is_not_planned_again() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions::default()
            .with_fsync(FsyncPolicy::Never)
            .with_segment_bytes(1024);
        let log = Log::open(dir.path(), opts).await.unwrap();
        let original = Envelope::new(1, send("g", 1, "secret")).encode();
        let purged = purge_record(0, &original).unwrap().unwrap();
        log.append_one(purged).await.unwrap();
        let edit = append(&log, edit("g", 1, "secret edit")).await;
        for seq in 2..40 {
            append(&log, send("g", seq, "filler filler filler filler")).await;
        }
        log.roll().await.unwrap();
        let recalled = BTreeMap::from([("g".to_string(), BTreeSet::from([1]))]);
        let plan = plan_recall_purge(&log, &recalled, None).unwrap();
        assert_eq!(plan.already_purged, 1);
        let planned: Vec<u64> = plan.sealed.values().flatten().copied().collect();
        assert_eq!(planned, vec![edit]);
        log.close().await.unwrap();
    }

    /// A record to purge in another encoding than this build's is left and reported, naming
    /// it; the other records are still planned.
    #[tokio::test]
    async fn a_record_in_another_encoding_is_left_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions::default().with_fsync(FsyncPolicy::Never);
        let log = Log::open(dir.path(), opts).await.unwrap();
        let mut odd = Envelope::new(1, send("g", 1, "secret")).encode().to_vec();
        // The envelope's version (1) with a needless one-byte argument.
        odd.insert(3, 0x18);
        let offset = log.append_one(Bytes::from(odd)).await.unwrap();
        let other = append(&log, send("g", 2, "another secret")).await;
        log.roll().await.unwrap();
        let recalled = BTreeMap::from([("g".to_string(), BTreeSet::from([1, 2]))]);
        let plan = plan_recall_purge(&log, &recalled, None).unwrap();
        assert_eq!(plan.unpurgeable.len(), 1, "{plan:?}");
        assert_eq!(plan.unpurgeable[0].0, offset);
        let planned: Vec<u64> = plan.sealed.values().flatten().copied().collect();
        assert_eq!(planned, vec![other]);
        // Not recalled: not a target, and not refused.
        let plan = plan_recall_purge(&log, &BTreeMap::new(), None).unwrap();
        assert!(plan.is_empty());
        log.close().await.unwrap();
    }
}
