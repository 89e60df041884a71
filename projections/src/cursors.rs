//! Cursors: (user, channel) → delivered_seq, read_seq. Both only move forward.
//!
//! Semantics fixed for everyone: channel seqs start at 1; a cursor is "the last seq received"
//! (0 = nothing yet); sync returns every message with `seq > delivered`. A read the user
//! reports implies delivery up to it. A user who joins a group starts at the channel's last
//! seq (the join point): they receive what is sent after they joined.
//!
//! Sending a message marks the conversation read up to it (a user's own messages are never
//! unread, and replying is reading), but moves the sender's *delivered* cursor only when it is
//! contiguous: when everything before the message had been delivered to them. Otherwise a
//! reply sent before syncing (an app that posts its outbox first, a second device) would skip
//! the messages the sender never received, and they would be lost to sync. The cost: such a
//! sender gets their own message again on the next sync or catch-up (clients deduplicate by
//! `(channel, seq)`, as they do for every redelivery). So `read` may be above `delivered`;
//! only the read a user *reports* moves `delivered`, never the read a send gives.

use std::collections::BTreeMap;

use crate::FastMap as HashMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ChannelId, Uid};

/// A user's position in a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Everything up to this seq was delivered.
    pub delivered: u64,
    /// Everything up to this seq was read.
    pub read: u64,
    /// Messages up to this seq are cleared for the user.
    pub cleared: u64,
    /// Hidden while the channel's last seq is at most this.
    pub hidden_at: Option<u64>,
    /// Log offset of the last change.
    pub version: u64,
}

/// The cursors projection, plus conversation removals (for incremental conversation sync).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursors {
    /// Cursors by user, then channel.
    pub by_user: HashMap<Uid, HashMap<ChannelId, Cursor>>,
    /// When a conversation left a user's list (unsubscribed, deleted), by user then channel;
    /// kept until the user joins the group again, or a `log_trimmed` event lets it go with
    /// nothing of the group left to tell them ([`Cursors::forget_left`]). `/v1/changes` reads
    /// it too: a recall in a group the user left still reaches their devices
    /// (`messages::plan_changes`).
    pub removed: HashMap<Uid, BTreeMap<ChannelId, u64>>,
    /// For each user some of whose entries in `removed` a `log_trimmed` event let go
    /// ([`Cursors::forget_left`]), the highest offset let go: an incremental list from a
    /// version below it may have missed a removal, and answers the whole list instead. Absent
    /// from snapshots written before 2026-12-01 (none was let go then).
    #[serde(default)]
    pub removals_let_go: HashMap<Uid, u64>,
}

impl Cursors {
    /// A user's cursor in a channel (zeros when none).
    pub fn get(&self, uid: &str, channel: &str) -> Cursor {
        self.by_user
            .get(uid)
            .and_then(|m| m.get(channel))
            .copied()
            .unwrap_or_default()
    }

    fn entry(&mut self, uid: &str, channel: &str) -> &mut Cursor {
        // One lookup per level; keys are allocated only when new.
        self.by_user
            .entry_ref(uid)
            .or_default()
            .entry_ref(channel)
            .or_default()
    }

    /// Moves cursors forward (never back). Returns whether anything changed.
    pub(crate) fn advance(
        &mut self,
        offset: u64,
        uid: &str,
        channel: &str,
        delivered: Option<u64>,
        read: Option<u64>,
    ) -> bool {
        let c = self.entry(uid, channel);
        let before = *c;
        if let Some(r) = read {
            c.read = c.read.max(r);
        }
        // The read this event reports, not `c.read`: that may come from a send (module doc).
        c.delivered = c
            .delivered
            .max(delivered.unwrap_or(0))
            .max(read.unwrap_or(0));
        let changed = (c.delivered, c.read) != (before.delivered, before.read);
        if changed {
            c.version = offset;
        }
        changed
    }

    /// The sender of `seq` has read the conversation up to it, has it delivered if nothing
    /// before it is missing (module doc), and the conversation shows again.
    pub(crate) fn sent(&mut self, offset: u64, uid: &str, channel: &str, seq: u64) {
        let c = self.entry(uid, channel);
        if c.delivered.saturating_add(1) >= seq {
            c.delivered = c.delivered.max(seq);
        }
        c.read = c.read.max(seq);
        c.hidden_at = None;
        c.version = offset;
    }

    /// A user joined at `last_seq`.
    pub(crate) fn joined(&mut self, offset: u64, uid: &str, channel: &str, last_seq: u64) {
        let c = self.entry(uid, channel);
        c.delivered = c.delivered.max(last_seq);
        c.read = c.read.max(last_seq);
        c.version = offset;
        if let Some(m) = self.removed.get_mut(uid) {
            m.remove(channel);
            if m.is_empty() {
                self.removed.remove(uid);
            }
        }
    }

    /// The conversation left the user's list: they left the group, or it was deleted. The
    /// messages of earlier groups under the id (up to `history_from`, the group's floor) count
    /// as cleared for them from now on: out of the group, only `cleared` bounds what
    /// `/v1/changes` tells them from below (`messages::plan_changes`), and a user who joined a
    /// group created again under an id never held the earlier group's messages. While a member
    /// nothing changes: every read of the group is bounded by its floor already.
    pub(crate) fn left(&mut self, offset: u64, uid: &str, channel: &str, history_from: u64) {
        if let Some(c) = self.by_user.get_mut(uid).and_then(|m| m.get_mut(channel)) {
            c.cleared = c.cleared.max(history_from);
        }
        self.removed
            .entry(uid.to_owned())
            .or_default()
            .insert(channel.to_owned(), offset);
    }

    /// Lets go of the groups users left (or that were deleted under them) before `start` whose
    /// remains `done` says nothing can need any more: the entry in [`Cursors::removed`] and the
    /// user's cursor there (`None` to `done` when there is none), noting the removal's offset in
    /// [`Cursors::removals_let_go`]. At a `log_trimmed` event (`State::forget_left`); until
    /// 2026-12-01 both stayed for every group a user ever left.
    pub(crate) fn forget_left(
        &mut self,
        start: u64,
        done: impl Fn(&str, &str, Option<&Cursor>) -> bool,
    ) {
        let (by_user, let_go) = (&mut self.by_user, &mut self.removals_let_go);
        self.removed.retain(|uid, gone| {
            gone.retain(|channel, offset| {
                if *offset >= start {
                    return true;
                }
                let mine = by_user.get_mut(uid.as_str());
                if !done(uid, channel, mine.as_deref().and_then(|m| m.get(channel))) {
                    return true;
                }
                if let Some(mine) = mine {
                    mine.remove(channel);
                    if mine.is_empty() {
                        by_user.remove(uid.as_str());
                    }
                }
                let highest = let_go.entry_ref(uid.as_str()).or_default();
                *highest = (*highest).max(*offset);
                false
            });
            !gone.is_empty()
        });
    }

    /// The conversation is hidden while the channel's last seq is at most `up_to`: the seq the
    /// hide was made as of, which may be below the last seq already applied (a message
    /// sequenced after the user hid it, applied first, keeps it listed).
    /// Hidden as of `up_to`, or as of a later seq a hide applied before it named: two devices
    /// hiding at once may have their hides applied in the other order, and the one read
    /// earlier must not bring back what the later one hid (until 2026-12-03 it did, until the
    /// next message). The user's own send clears it (`sent`).
    pub(crate) fn hide(&mut self, offset: u64, uid: &str, channel: &str, up_to: u64) {
        let c = self.entry(uid, channel);
        c.hidden_at = Some(c.hidden_at.map_or(up_to, |h| h.max(up_to)));
        c.version = offset;
    }

    pub(crate) fn clear(&mut self, offset: u64, uid: &str, channel: &str, up_to: u64) {
        let c = self.entry(uid, channel);
        c.cleared = c.cleared.max(up_to);
        c.read = c.read.max(up_to);
        c.delivered = c.delivered.max(up_to);
        c.version = offset;
    }
}
