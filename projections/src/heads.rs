//! Channel heads: channel → last seq, last message id, preview, timestamp; plus the per-channel
//! sets of recalled seqs and edited seqs, and each channel's *changes* — the log offsets at
//! which a message was recalled or edited, in log order, so that a device that was offline can
//! ask which messages it may hold changed since it last asked (`messages::plan_changes`);
//! and, for each edited message, the log offset of every edit of it (history serves the
//! latest; the server's purge of a recalled message rewrites them all). These grow with
//! recalls and edits, not messages: a message edited n times holds n offsets. The edit offsets
//! below the log's start go with each `log_trimmed` event (the retention's removals), and so
//! do the changes made below it and the recalled seqs they name (`forget_changes_below`), so
//! all of them stay bounded by the log.

use std::collections::{BTreeMap, BTreeSet};

use crate::FastMap as HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::{ChannelId, Uid};

/// Payloads up to this size are kept whole in the head; longer ones are cut and flagged.
pub const PREVIEW_MAX: usize = 512;

/// The newest message of a channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The channel's last seq (0: no message yet).
    pub last_seq: u64,
    /// That message's server id.
    pub last_message_id: u64,
    /// Its sender.
    pub from: Uid,
    /// The first [`PREVIEW_MAX`] bytes of its payload.
    pub preview: Bytes,
    /// Whether the preview is cut short.
    pub truncated: bool,
    /// The message's flags (`FLAG_JSON_PAYLOAD`: the preview is JSON when not cut).
    pub flags: u32,
    /// Whether the last message was recalled.
    pub recalled: bool,
    /// Whether the last message was edited (`preview` is its latest edit's). Absent from heads
    /// written before edits could be made (none was edited then).
    #[serde(default)]
    pub edited: bool,
    /// When it was sent (ms since the Unix epoch).
    pub ts: u64,
    /// Log offset of the last change to this head.
    pub version: u64,
}

/// The heads projection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heads {
    /// Heads by channel (group or person). Kept when a group is deleted: seqs are never reused.
    pub heads: HashMap<ChannelId, Head>,
    /// Recalled seqs by channel.
    pub recalled: BTreeMap<ChannelId, BTreeSet<u64>>,
    /// For each edited message, the log offsets of all its edits, in log order (ascending):
    /// the last is the edit history shows. Edits applied after the message's recall are not
    /// kept (the projections ignore them); those before it stay, for the purge. Read from a
    /// snapshot of format 6 too, which held the latest offset alone ([`edits_of_either_shape`]).
    #[serde(deserialize_with = "edits_of_either_shape")]
    pub edits: Edits,
    /// Recalls and edits by channel as `(offset, seq)`, in log order (offsets ascending), each
    /// seq once: at its latest change.
    pub changes: BTreeMap<ChannelId, Vec<(u64, u64)>>,
    /// The next server message id.
    pub next_message_id: u64,
}

/// Every edited message's edit offsets, by channel then seq ([`Heads::edits`]).
pub type Edits = BTreeMap<ChannelId, BTreeMap<u64, Vec<u64>>>;

/// A message's edit offsets as a snapshot holds them: all of them (format 7), or the latest
/// alone (format 6, written before the edit API existed: no message had an earlier edit, so
/// the one offset is all of them).
#[derive(Deserialize)]
#[serde(untagged)]
enum EditOffsets {
    Latest(u64),
    All(Vec<u64>),
}

/// [`Heads::edits`] from either shape ([`EditOffsets`]): a format 6 snapshot loads as it is,
/// without the replay from offset 0 an outdated one costs (which a log the retention trimmed
/// cannot make).
fn edits_of_either_shape<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Edits, D::Error> {
    let read: BTreeMap<ChannelId, BTreeMap<u64, EditOffsets>> = Deserialize::deserialize(d)?;
    Ok(read
        .into_iter()
        .map(|(channel, edits)| {
            let edits = edits
                .into_iter()
                .map(|(seq, offsets)| match offsets {
                    EditOffsets::Latest(offset) => (seq, vec![offset]),
                    EditOffsets::All(all) => (seq, all),
                })
                .collect();
            (channel, edits)
        })
        .collect())
}

/// A copy of the payload's first [`PREVIEW_MAX`] bytes. A copy, not a slice: a head outlives
/// its message, and sharing would keep the whole payload (and, on the hot path, the decoding
/// thread's allocation) alive and make every replaced preview a cross-thread free.
fn preview(payload: &Bytes) -> (Bytes, bool) {
    let n = payload.len().min(PREVIEW_MAX);
    (
        Bytes::copy_from_slice(&payload[..n]),
        payload.len() > PREVIEW_MAX,
    )
}

impl Heads {
    /// The last seq of a channel (0 when it has no message).
    pub fn last_seq(&self, channel: &str) -> u64 {
        self.heads.get(channel).map_or(0, |h| h.last_seq)
    }

    /// Whether the message was recalled.
    pub fn is_recalled(&self, channel: &str, seq: u64) -> bool {
        self.recalled.get(channel).is_some_and(|s| s.contains(&seq))
    }

    /// Recalled seqs in `(after, up_to]`.
    pub fn recalled_between(&self, channel: &str, after: u64, up_to: u64) -> u64 {
        if after >= up_to {
            return 0;
        }
        self.recalled
            .get(channel)
            .map_or(0, |s| s.range(after + 1..=up_to).count() as u64)
    }

    /// The changes of `channel` (recalls and edits, as `(offset, seq)`) at offsets `>= since`,
    /// oldest first.
    pub fn changes_since(&self, channel: &str, since: u64) -> &[(u64, u64)] {
        self.changes.get(channel).map_or(&[], |c| {
            let at = c.partition_point(|(offset, _)| *offset < since);
            &c[at..]
        })
    }

    fn changed(&mut self, offset: u64, channel: &str, seq: u64) {
        let list = self.changes.entry(channel.to_owned()).or_default();
        // A message edited again (or edited, then recalled) moves to its latest change: the
        // list stays as long as the changed messages, not the changes. (A linear search, but
        // recalls and edits are rare next to messages.)
        if let Some(at) = list.iter().rposition(|&(_, s)| s == seq) {
            list.remove(at);
        }
        list.push((offset, seq));
    }

    /// The offset of the latest edit of a message, if edited.
    pub fn edit_offset(&self, channel: &str, seq: u64) -> Option<u64> {
        self.edit_offsets(channel, seq).last().copied()
    }

    /// The offsets of every edit of a message, in log order (empty when never edited).
    pub fn edit_offsets(&self, channel: &str, seq: u64) -> &[u64] {
        self.edits
            .get(channel)
            .and_then(|by_seq| by_seq.get(&seq))
            .map_or(&[], Vec::as_slice)
    }

    /// Forgets the edits at offsets below `start` (the log's first offset after a removal,
    /// `Event::LogTrimmed`): each belongs to a message sent before it, expired with its
    /// segment, which no read shows and the purge leaves out. What edits keep is then bounded
    /// by the log, as the log is by the retention (until 2026-11-30 it grew with every edit
    /// ever made).
    pub(crate) fn forget_edits_below(&mut self, start: u64) {
        self.edits.retain(|_, by_seq| {
            by_seq.retain(|_, offsets| {
                offsets.retain(|&o| o >= start);
                !offsets.is_empty()
            });
            !by_seq.is_empty()
        });
    }

    /// Forgets the recalls and edits made at offsets below `start` (`Event::LogTrimmed`), from
    /// [`Heads::changes`] and, for a recall, the seq from [`Heads::recalled`]. Each concerns a
    /// message sent before its change, so before `start`: expired with its segment, which no
    /// read serves and no recall or edit reaches (`message_expired`). A recalled seq's one
    /// entry in `changes` is its recall (edits after a recall are not kept), so a recalled
    /// seq goes exactly when that entry does. `/v1/changes` from a version below `start` says
    /// it was told less (`forgotten`). Unread counts are unchanged where they are served: a
    /// seq let go here is at or below its channel's expired floor, where the served count is
    /// cut. Until 2026-12-01 both grew with every recall and edit ever made.
    pub(crate) fn forget_changes_below(&mut self, start: u64) {
        let recalled = &mut self.recalled;
        self.changes.retain(|channel, list| {
            let gone = list.partition_point(|&(offset, _)| offset < start);
            if gone > 0 {
                if let Some(seqs) = recalled.get_mut(channel) {
                    for (_, seq) in list.drain(..gone) {
                        seqs.remove(&seq);
                    }
                    if seqs.is_empty() {
                        recalled.remove(channel);
                    }
                } else {
                    list.drain(..gone);
                }
            }
            !list.is_empty()
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sent(
        &mut self,
        offset: u64,
        ts: u64,
        channel: &str,
        from: &str,
        seq: u64,
        message_id: u64,
        payload: &Bytes,
        flags: u32,
    ) {
        let (preview, truncated) = preview(payload);
        let update = |head: &mut Head| {
            head.last_seq = head.last_seq.max(seq);
            head.last_message_id = message_id;
            // Reuses the buffer: a busy channel's sender changes every message.
            head.from.clear();
            head.from.push_str(from);
            head.preview = preview;
            head.truncated = truncated;
            head.flags = flags;
            head.recalled = false;
            head.edited = false;
            head.ts = ts;
            head.version = offset;
        };
        // One lookup in the common case; the key is allocated only for a channel's first message.
        match self.heads.get_mut(channel) {
            Some(head) => update(head),
            None => {
                let mut head = Head::default();
                update(&mut head);
                self.heads.insert(channel.to_owned(), head);
            }
        }
        self.next_message_id = self.next_message_id.max(message_id.saturating_add(1));
    }

    pub(crate) fn recall(&mut self, offset: u64, channel: &str, seq: u64) {
        if self
            .recalled
            .entry(channel.to_owned())
            .or_default()
            .insert(seq)
        {
            self.changed(offset, channel, seq);
        }
        if let Some(h) = self.heads.get_mut(channel) {
            if h.last_seq == seq {
                h.recalled = true;
                h.preview = Bytes::new();
                h.truncated = false;
            }
            h.version = offset;
        }
    }

    pub(crate) fn edit(
        &mut self,
        offset: u64,
        channel: &str,
        seq: u64,
        payload: &Bytes,
        flags: u32,
    ) {
        if self.is_recalled(channel, seq) {
            return;
        }
        self.edits
            .entry(channel.to_owned())
            .or_default()
            .entry(seq)
            .or_default()
            .push(offset);
        self.changed(offset, channel, seq);
        if let Some(h) = self.heads.get_mut(channel) {
            if h.last_seq == seq {
                (h.preview, h.truncated) = preview(payload);
                h.flags = flags;
                h.edited = true;
            }
            h.version = offset;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A format 6 state's edits (the latest offset of each edited message alone) read as
    /// lists of one; format 7's as they are.
    #[test]
    fn edits_read_from_either_shape() {
        let mut heads = Heads::default();
        let payload = Bytes::from_static(b"body");
        heads.sent(1, 1_000, "g", "ann", 1, 1, &payload, 0);
        heads.edit(2, "g", 1, &payload, 0);
        heads.edit(3, "g", 1, &payload, 0);
        let value = ciborium::Value::serialized(&heads).unwrap();
        let back: Heads = value.deserialized().unwrap();
        assert_eq!(back, heads);
        // The format 6 shape: `{"g": {1: 3}}`.
        let ciborium::Value::Map(mut fields) = value else {
            panic!("a map");
        };
        for (k, v) in &mut fields {
            if k.as_text() == Some("edits") {
                *v = ciborium::Value::Map(vec![(
                    ciborium::Value::Text("g".into()),
                    ciborium::Value::Map(vec![(1.into(), 3.into())]),
                )]);
            }
        }
        let old: Heads = ciborium::Value::Map(fields).deserialized().unwrap();
        assert_eq!(old.edit_offsets("g", 1), [3]);
        assert_eq!(old.edit_offset("g", 1), Some(3));
    }

    /// Every edit of a message keeps its offset, in log order, the latest last (what history
    /// serves); its recall leaves them (the purge rewrites each), and an edit after the recall
    /// adds none.
    #[test]
    fn every_edit_offset_is_kept_in_log_order() {
        let mut heads = Heads::default();
        let payload = Bytes::from_static(b"body");
        heads.sent(1, 1_000, "g", "ann", 1, 1, &payload, 0);
        heads.sent(2, 1_001, "g", "ann", 2, 2, &payload, 0);
        // In log order: message 1 three times, message 2 once between its second and third.
        for (offset, seq) in [(3, 1), (5, 1), (6, 2), (8, 1)] {
            heads.edit(offset, "g", seq, &payload, 0);
        }
        assert_eq!(heads.edit_offsets("g", 1), [3, 5, 8]);
        assert_eq!(heads.edit_offset("g", 1), Some(8));
        assert_eq!(heads.edit_offsets("g", 2), [6]);
        assert!(heads.edit_offsets("g", 3).is_empty());
        assert!(heads.edit_offsets("h", 1).is_empty());
        assert_eq!(heads.edit_offset("g", 3), None);

        heads.recall(9, "g", 1);
        heads.edit(10, "g", 1, &payload, 0);
        assert_eq!(heads.edit_offsets("g", 1), [3, 5, 8]);
        assert_eq!(heads.edit_offset("g", 1), Some(8));
        // The message is listed once among the changes, at its recall.
        assert_eq!(heads.changes_since("g", 0), [(6, 2), (9, 1)]);
    }
}
