//! The state of every projection, and the one function that changes it: [`State::apply`].
//!
//! `apply` is deterministic: the same events at the same offsets always produce the same state,
//! so the state can be rebuilt from the log at any time and compared with a live one.

use serde::{Deserialize, Serialize};

use crate::FastMap as HashMap;
use crate::cursors::Cursors;
use crate::error::{ProjectionError, Result};
use crate::event::{Envelope, Event, FLAG_PURGED};
use crate::heads::Heads;
use crate::idempotency::{Idempotency, SentRef};
use crate::ids::is_person_channel;
use crate::msgindex::IndexState;
use crate::subscriptions::Subscriptions;
use crate::tokens::Tokens;

/// The snapshot format from which `log_trimmed` events were applied with `State::forget_left`
/// (`crate::snapshot`'s module doc).
const FORGETS_LEFT_SINCE: u32 = 9;

/// Every projection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The last log offset applied (`None`: nothing yet).
    pub applied: Option<u64>,
    /// User tokens (hashes).
    pub tokens: Tokens,
    /// Channels, members, lists; users' channels.
    pub subs: Subscriptions,
    /// Channel heads, recalls, edits.
    pub heads: Heads,
    /// Users' cursors.
    pub cursors: Cursors,
    /// Recent sends by (sender, client_msg_id).
    pub idempotency: Idempotency,
    /// The channel message index's in-memory part and the map of its sidecar files.
    pub index: IndexState,
    /// The latest removal of the log's oldest segments by the retention
    /// ([`Event::LogTrimmed`]), if any. Absent from snapshots written before it existed.
    #[serde(default)]
    pub trimmed: Option<Trimmed>,
}

/// A removal of the log's oldest segments, as the log says it ([`Event::LogTrimmed`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trimmed {
    /// The offset of the event.
    pub offset: u64,
    /// The log's first offset after the removal (the highest so far).
    pub start: u64,
}

/// What applying an event asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Nothing more.
    Done,
    /// The message index's in-memory part is full: write it to a sidecar file now.
    FlushIndex,
}

impl State {
    /// An empty state with the given idempotency window and index flush size.
    pub fn new(idempotency: Idempotency, index_flush_entries: u64) -> Self {
        Self {
            idempotency,
            index: IndexState::new(index_flush_entries),
            ..Self::default()
        }
    }

    /// The offset the next event must have.
    pub fn next_offset(&self) -> u64 {
        self.applied.map_or(0, |a| a + 1)
    }

    /// Applies the event at `offset`. Offsets must increase (gaps are allowed: records that are
    /// not events, such as compacted ones, are skipped by the caller).
    pub fn apply(&mut self, offset: u64, env: &Envelope) -> Result<Applied> {
        if let Some(applied) = self.applied
            && offset <= applied
        {
            return Err(ProjectionError::OutOfOrder { offset, applied });
        }
        self.applied = Some(offset);
        let ts = env.ts;
        match &env.event {
            Event::TokenSet {
                uid,
                token_hash,
                expires_at_ms,
            } => self.tokens.set(uid, token_hash, *expires_at_ms, ts),
            Event::TokensRevoked { uid } => self.tokens.revoke_all(uid),
            Event::TokenRevoked { uid, token_hash } => self.tokens.revoke(uid, token_hash),
            Event::ChannelCreated { channel, flags } => {
                let last = self.heads.last_seq(channel);
                self.subs.create(channel, *flags, last);
            }
            Event::ChannelUpdated { channel, flags } => self.subs.update(channel, *flags),
            Event::ChannelDeleted { channel } => {
                let floor = self.subs.history_from(channel);
                for uid in self.subs.delete(channel) {
                    self.cursors.left(offset, &uid, channel, floor);
                }
            }
            Event::MembersSubscribed { channel, uids } => {
                let last = self.heads.last_seq(channel);
                for uid in self.subs.subscribe(channel, uids) {
                    self.cursors.joined(offset, &uid, channel, last);
                }
            }
            Event::MembersUnsubscribed { channel, uids } => {
                let floor = self.subs.history_from(channel);
                for uid in self.subs.unsubscribe(channel, uids) {
                    self.cursors.left(offset, &uid, channel, floor);
                }
            }
            Event::ListChanged {
                owner,
                list,
                op,
                uids,
            } => self.subs.change_list(owner, *list, *op, uids),
            Event::MessageSent {
                channel,
                from,
                client_msg_id,
                seq,
                message_id,
                payload,
                flags,
                ..
            } => {
                if is_person_channel(channel) {
                    self.subs.person_message(channel);
                }
                // A purged payload (`FLAG_PURGED`) was a recalled message's: the bit is not
                // part of the message, and a purged log rebuilds into the original's state.
                self.heads.sent(
                    offset,
                    ts,
                    channel,
                    from,
                    *seq,
                    *message_id,
                    payload,
                    *flags & !FLAG_PURGED,
                );
                self.cursors.sent(offset, from, channel, *seq);
                self.idempotency.record(
                    from,
                    client_msg_id,
                    SentRef {
                        channel: channel.clone(),
                        seq: *seq,
                        message_id: *message_id,
                        offset,
                        ts,
                    },
                );
                if self.index.add(channel, *seq, offset) {
                    return Ok(Applied::FlushIndex);
                }
            }
            Event::MessageRecalled { channel, seq, .. } => self.heads.recall(offset, channel, *seq),
            Event::MessageEdited {
                channel,
                seq,
                payload,
                flags,
                ..
            } => self
                .heads
                .edit(offset, channel, *seq, payload, *flags & !FLAG_PURGED),
            Event::CursorAdvanced {
                uid,
                channel,
                delivered_seq,
                read_seq,
            } if self.subs.is_member(channel, uid) => {
                self.cursors
                    .advance(offset, uid, channel, *delivered_seq, *read_seq);
            }
            Event::CursorBatch { channel, cursors } => {
                for c in cursors {
                    if self.subs.is_member(channel, &c.uid) {
                        self.cursors
                            .advance(offset, &c.uid, channel, c.delivered_seq, c.read_seq);
                    }
                }
            }
            Event::ConversationHidden {
                uid,
                channel,
                up_to_seq,
            } if self.subs.is_member(channel, uid) => {
                let last = self.heads.last_seq(channel);
                // As of the seq the user hid it at (an event without one: now). Never past
                // the head: a hide does not cover messages in advance.
                let up_to = up_to_seq.map_or(last, |s| s.min(last));
                self.cursors.hide(offset, uid, channel, up_to);
            }
            Event::ConversationCleared {
                uid,
                channel,
                up_to_seq,
            } if self.subs.is_member(channel, uid) => {
                self.cursors.clear(offset, uid, channel, *up_to_seq);
            }
            // A cursor move, hide or clear of one not a member of the channel then: written
            // after a removal the request was checked before (an ack window flushed, a request
            // raced by the removal; until 2026-12-03 applied, the cursor kept for good).
            Event::CursorAdvanced { .. }
            | Event::ConversationHidden { .. }
            | Event::ConversationCleared { .. } => {}
            Event::LogTrimmed { start } => {
                let start = self.trimmed.map_or(*start, |t| t.start.max(*start));
                self.trimmed = Some(Trimmed { offset, start });
                self.forget_below(start);
                self.forget_left(start);
            }
        }
        Ok(Applied::Done)
    }

    /// What a `log_trimmed` event lets go, the log starting at `start`: the edit offsets
    /// below it (`Heads::forget_edits_below`), the recalls and edits made below it
    /// (`Heads::forget_changes_below`) and the message index's sidecars that end below it
    /// (`IndexState::drop_below`). Each rule keeps or lets go by its offsets against `start`
    /// alone, so letting go at the highest start once leaves what each event did.
    fn forget_below(&mut self, start: u64) {
        self.heads.forget_edits_below(start);
        self.heads.forget_changes_below(start);
        self.index.drop_below(start);
    }

    /// What a `log_trimmed` event lets go of a group a user left before `start` (or that was
    /// deleted under them), with nothing of it still to tell them: its entry in
    /// `Cursors::removed` (an incremental conversation list from a version below it is
    /// answered as a first call: `Cursors::removals_let_go`) and their cursor there. Nothing is
    /// to tell when they are not a member again, every message they could hold there or
    /// cleared (up to their cursor: delivered, read or cleared) is known to have expired
    /// (`IndexState::expired_through`: no recall or edit reaches it), no recall or edit of one is still kept (`/v1/changes` would tell it),
    /// and a hide or a clear of theirs no longer hides anything (the last seq is past it: the
    /// conversation list would show the last message either way). A user who joins again then
    /// starts afresh at the head, as they would with the cursor kept: every part it kept was
    /// below the head, of messages expired, or hid nothing. Applied at load only to a state of
    /// a format before it (`after_load`): its conditions read more than the start, so applied
    /// again to a state that applied it at its events it could let go of more than they did.
    /// Until 2026-12-01 both stayed for every group anyone ever left.
    fn forget_left(&mut self, start: u64) {
        let State {
            cursors,
            subs,
            heads,
            index,
            ..
        } = self;
        // The lowest seq of each channel whose recall or edit is still kept: read once, not
        // once per removal (a deleted group of many members has as many).
        let mut lowest_changed: HashMap<&str, u64> = HashMap::default();
        for (channel, changes) in &heads.changes {
            if let Some(lowest) = changes.iter().map(|&(_, seq)| seq).min() {
                lowest_changed.insert(channel.as_str(), lowest);
            }
        }
        cursors.forget_left(start, |uid, channel, cur| {
            if subs.is_member(channel, uid) {
                return false;
            }
            let Some(cur) = cur else {
                return true;
            };
            let (held, last) = (
                cur.delivered.max(cur.read).max(cur.cleared),
                heads.last_seq(channel),
            );
            // The seq up to which the group's floor hides the channel from whoever joins it
            // next: its `history_from`, or — deleted — its last seq (the floor a creation
            // under the id would take). A hide or clear at or below it hides nothing the
            // floor does not: a user who left a group created again before its first message
            // (cleared at its floor, the last seq) kept the cursor for good until 2026-12-03.
            let floor = if subs.channels.contains_key(channel) {
                subs.history_from(channel)
            } else {
                last
            };
            held <= index.expired_through(channel, start)
                && cur.hidden_at.is_none_or(|h| h < last || h <= floor)
                && (cur.cleared == 0 || cur.cleared < last || cur.cleared <= floor)
                && lowest_changed
                    .get(channel)
                    .is_none_or(|&lowest| lowest > held)
        });
    }

    /// Brings a state a snapshot of format `version` held to this build's rules: one written
    /// by a build that applied its `log_trimmed` events without letting the index's sidecars
    /// go has them let go now (`crate::snapshot`'s module doc). Dropping below the highest
    /// start at once leaves what dropping at each event did, so the state is the one this
    /// build's replay of the log gives. A state of a format before 9 has the groups its users
    /// left let go as of its highest start too (`forget_left`): nearly what this build's
    /// replay of its events gives, not exactly — the module doc says where they differ.
    /// Idempotent.
    pub(crate) fn after_load(&mut self, version: u32) {
        if let Some(t) = self.trimmed {
            self.forget_below(t.start);
            if version < FORGETS_LEFT_SINCE {
                self.forget_left(t.start);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::idempotency::Idempotency;

    /// A `log_trimmed` event records its offset and the highest start so far (a later event
    /// naming a lower start keeps the higher one), forgets the edits below that start, and the
    /// state keeps it through a snapshot's
    /// encoding; a snapshot's state without the field (written before it existed) reads as none.
    #[test]
    fn a_log_trimmed_event_is_kept_with_the_highest_start_and_forgets_older_edits() {
        let mut st = State::new(Idempotency::default(), 1024);
        assert_eq!(st.trimmed, None);
        let trim = |start| Envelope::new(1, Event::LogTrimmed { start });
        st.apply(5, &trim(100)).unwrap();
        assert_eq!(
            st.trimmed,
            Some(Trimmed {
                offset: 5,
                start: 100
            })
        );
        st.apply(9, &trim(40)).unwrap();
        assert_eq!(
            st.trimmed,
            Some(Trimmed {
                offset: 9,
                start: 100
            })
        );
        // Edits below the start are forgotten, those from it kept.
        let edit = |seq| {
            Envelope::new(
                2,
                Event::MessageEdited {
                    channel: "g".into(),
                    seq,
                    by: "a".into(),
                    payload: bytes::Bytes::from_static(b"x"),
                    flags: 0,
                },
            )
        };
        st.apply(150, &edit(1)).unwrap();
        st.apply(250, &edit(1)).unwrap();
        st.apply(260, &edit(2)).unwrap();
        st.apply(300, &trim(200)).unwrap();
        assert_eq!(st.heads.edit_offsets("g", 1), [250]);
        assert_eq!(st.heads.edit_offsets("g", 2), [260]);
        st.apply(400, &trim(255)).unwrap();
        assert!(st.heads.edit_offsets("g", 1).is_empty());
        assert!(!st.heads.edits["g"].contains_key(&1));
        assert_eq!(st.heads.edit_offsets("g", 2), [260]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&st, &mut bytes).unwrap();
        let back: State = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!(back, st);
        // Without the field.
        let value: ciborium::Value = ciborium::Value::serialized(&st).unwrap();
        let ciborium::Value::Map(entries) = value else {
            panic!("a map")
        };
        let older = ciborium::Value::Map(
            entries
                .into_iter()
                .filter(|(k, _)| k.as_text() != Some("trimmed"))
                .collect(),
        );
        let read: State = older.deserialized().unwrap();
        assert_eq!(read.trimmed, None);
    }

    /// A `log_trimmed` event lets go of the recalls and edits made below its start (from the
    /// changes and, a recall's, from the recalled seqs) and keeps those from it; a state that
    /// applied the same events under a build that kept them all (the trims' starts recorded,
    /// nothing let go) comes to the same heads at load.
    #[test]
    fn a_log_trimmed_event_forgets_older_recalls_and_edits() {
        let sent = |channel: &str, seq| Event::MessageSent {
            channel: channel.into(),
            from: "a".into(),
            client_msg_id: format!("{channel}{seq}"),
            seq,
            message_id: seq,
            payload: bytes::Bytes::from_static(b"m"),
            flags: 0,
        };
        let recall = |channel: &str, seq| Event::MessageRecalled {
            channel: channel.into(),
            seq,
            by: "a".into(),
        };
        let edit = |channel: &str, seq| Event::MessageEdited {
            channel: channel.into(),
            seq,
            by: "a".into(),
            payload: bytes::Bytes::from_static(b"e"),
            flags: 0,
        };
        let mut events: Vec<(u64, Event)> = (1..=5).map(|s| (9 + s, sent("g", s))).collect();
        events.push((16, sent("h", 1)));
        events.extend([
            (20, recall("g", 1)),
            (21, edit("g", 2)),
            (22, recall("g", 3)),
            (30, Event::LogTrimmed { start: 21 }),
            (40, recall("g", 4)),
            (41, edit("g", 5)),
            (45, recall("h", 1)),
            (50, Event::LogTrimmed { start: 41 }),
            (60, edit("g", 5)),
        ]);
        let mut live = State::new(Idempotency::default(), 1024);
        let mut kept_all = State::new(Idempotency::default(), 1024);
        for (offset, event) in &events {
            live.apply(*offset, &Envelope::new(1, event.clone()))
                .unwrap();
            if !matches!(event, Event::LogTrimmed { .. }) {
                kept_all
                    .apply(*offset, &Envelope::new(1, event.clone()))
                    .unwrap();
            }
            if *offset == 30 {
                // Between the trims: the recall below 21 went, the edit at 21 stays.
                assert!(!live.heads.is_recalled("g", 1));
                assert_eq!(live.heads.changes_since("g", 0), [(21, 2), (22, 3)]);
            }
        }
        assert_eq!(live.heads.changes_since("g", 0), [(60, 5)]);
        assert!(!live.heads.recalled.contains_key("g"));
        assert_eq!(live.heads.changes_since("h", 0), [(45, 1)]);
        assert!(live.heads.is_recalled("h", 1));
        assert_eq!(kept_all.heads.changes_since("g", 0).len(), 5);
        kept_all.trimmed = live.trimmed;
        kept_all.after_load(crate::snapshot::VERSION);
        assert_eq!(kept_all.heads, live.heads);
    }

    /// A state of a format before 9 (its `log_trimmed` events applied without
    /// `forget_left`) has the groups its users left let go at load, as of its highest start;
    /// one of format 9 applied the rule at its events, and is not changed by a load.
    #[test]
    fn a_state_of_an_earlier_format_lets_go_of_groups_left_at_load() {
        let mut old = State::new(Idempotency::default(), 1024);
        let events = [
            Event::ChannelCreated {
                channel: "g".into(),
                flags: Default::default(),
            },
            Event::MembersSubscribed {
                channel: "g".into(),
                uids: vec!["a".into(), "b".into()],
            },
            Event::MembersUnsubscribed {
                channel: "g".into(),
                uids: vec!["b".into()],
            },
        ];
        for (offset, event) in events.into_iter().enumerate() {
            old.apply(offset as u64, &Envelope::new(1, event)).unwrap();
        }
        assert!(old.cursors.removed.contains_key("b"));
        // A trim past the removal, as a build of format 8 applied it: nothing let go.
        old.trimmed = Some(Trimmed {
            offset: 3,
            start: 3,
        });
        let mut nine = old.clone();
        nine.after_load(FORGETS_LEFT_SINCE);
        assert_eq!(nine, old);
        old.after_load(FORGETS_LEFT_SINCE - 1);
        assert!(!old.cursors.removed.contains_key("b"));
        assert_eq!(old.cursors.removals_let_go.get("b"), Some(&2));
        // As this build applies the event.
        let mut live = nine.clone();
        live.trimmed = None;
        live.apply(3, &Envelope::new(1, Event::LogTrimmed { start: 3 }))
            .unwrap();
        assert_eq!(live.cursors, old.cursors);
    }
}
