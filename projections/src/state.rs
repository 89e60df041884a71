//! The state of every projection, and the one function that changes it: [`State::apply`].
//!
//! `apply` is deterministic: the same events at the same offsets always produce the same state,
//! so the state can be rebuilt from the log at any time and compared with a live one.

use serde::{Deserialize, Serialize};

use crate::cursors::Cursors;
use crate::error::{ProjectionError, Result};
use crate::event::{Envelope, Event, FLAG_PURGED};
use crate::heads::Heads;
use crate::idempotency::{Idempotency, SentRef};
use crate::ids::is_person_channel;
use crate::msgindex::IndexState;
use crate::subscriptions::Subscriptions;
use crate::tokens::Tokens;

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
            } => {
                self.cursors
                    .advance(offset, uid, channel, *delivered_seq, *read_seq);
            }
            Event::CursorBatch { channel, cursors } => {
                for c in cursors {
                    self.cursors
                        .advance(offset, &c.uid, channel, c.delivered_seq, c.read_seq);
                }
            }
            Event::ConversationHidden {
                uid,
                channel,
                up_to_seq,
            } => {
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
            } => self.cursors.clear(offset, uid, channel, *up_to_seq),
        }
        Ok(Applied::Done)
    }
}
