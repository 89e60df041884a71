//! Loading messages: history pages, sync, and the changes (recalls, edits) since a version.
//!
//! Each read is split in two: a *plan* computed from the state (synchronous, so a caller can
//! hold a lock on the state for it) naming the log offsets to read, then a *load* from the log
//! (asynchronous, no state needed). A page costs O(page) index lookups and log reads.

use bytes::Bytes;
use serde::Serialize;
use tidings_log::Log;

use crate::error::{ProjectionError, Result};
use crate::event::{Envelope, Event};
use crate::ids::ChannelId;
use crate::msgindex::{self, IndexFiles};
use crate::state::State;

/// A message to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef {
    /// The channel.
    pub channel: ChannelId,
    /// Its seq.
    pub seq: u64,
    /// The offset of its send.
    pub offset: u64,
    /// Recalled: no payload is served.
    pub recalled: bool,
    /// Edited: the payload comes from the edit at this offset.
    pub edit_offset: Option<u64>,
}

/// A message as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// The channel (canonical id).
    pub channel: ChannelId,
    /// Its seq.
    pub seq: u64,
    /// Its server id.
    pub message_id: u64,
    /// The sender.
    pub from: String,
    /// The client's id for the send.
    pub client_msg_id: String,
    /// When it was accepted.
    pub ts: u64,
    /// Its log offset.
    pub offset: u64,
    /// The payload; `None` when recalled.
    pub payload: Option<Bytes>,
    /// Whether the payload is a JSON document (sent as `payload`, not `payload_b64`).
    pub json: bool,
    /// Whether it was recalled.
    pub recalled: bool,
    /// Whether it was edited (the payload is the latest edit).
    pub edited: bool,
}

/// The plan for `channel`'s messages with seq in `[lo, hi]`, ascending.
pub fn plan_range(
    state: &State,
    files: &IndexFiles,
    channel: &str,
    lo: u64,
    hi: u64,
) -> Result<Vec<MessageRef>> {
    let hi = hi.min(state.heads.last_seq(channel));
    let lo = lo.max(1);
    if lo > hi {
        return Ok(Vec::new());
    }
    Ok(msgindex::offsets(&state.index, files, channel, lo, hi)?
        .into_iter()
        .map(|(seq, offset)| MessageRef {
            channel: channel.to_owned(),
            seq,
            offset,
            recalled: state.heads.is_recalled(channel, seq),
            edit_offset: state.heads.edit_offset(channel, seq),
        })
        .collect())
}

/// The plan for a user's sync: messages after the delivered cursor in every channel of the
/// user, oldest first per channel, channels in id order, at most `limit` in all. Returns the
/// plan and whether more remain.
///
/// A banned group's backlog is included: those messages were sent to its members before the
/// ban, and a member may move their cursor past them (`permissions::can_move_cursor`).
/// Passing it over would be worse both ways — a WebSocket session that went live past it, or
/// a client that acks live messages cumulatively, would move the cursor past a backlog it
/// never got once the ban is lifted, and a page of messages that cannot be acked would come
/// back at every sync. The ban stops sends and history reads.
pub fn plan_sync(
    state: &State,
    files: &IndexFiles,
    uid: &str,
    limit: usize,
) -> Result<(Vec<MessageRef>, bool)> {
    plan_sync_from(state, files, uid, limit, |_, cursor| cursor)
}

/// Like [`plan_sync`], but each channel starts after `after(channel, cursor)` instead of the
/// cursor (a WebSocket session's catch-up continues from what it already sent).
pub fn plan_sync_from(
    state: &State,
    files: &IndexFiles,
    uid: &str,
    limit: usize,
    after: impl Fn(&str, u64) -> u64,
) -> Result<(Vec<MessageRef>, bool)> {
    let mut out = Vec::new();
    let mut has_more = false;
    for channel in state.subs.channels_of(uid) {
        let last = state.heads.last_seq(channel);
        let cur = state.cursors.get(uid, channel);
        let floor = cur.delivered.max(cur.cleared);
        // Nothing after the cursor: `after` (never below it) is not asked.
        if last <= floor {
            continue;
        }
        let from = after(channel, floor).max(floor);
        if last <= from {
            continue;
        }
        let room = limit.saturating_sub(out.len()) as u64;
        if room == 0 {
            has_more = true;
            break;
        }
        let hi = last.min(from + room);
        out.extend(plan_range(state, files, channel, from + 1, hi)?);
        if hi < last {
            has_more = true;
        }
    }
    Ok((out, has_more))
}

/// One entry of a [`ChangesPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The message, to [`load`] and show as history shows it now.
    Message(MessageRef),
    /// Only which message changed and how: the caller may not see the message itself (a
    /// banned group's message they are not owed, see [`plan_changes`]).
    Notice {
        /// The channel.
        channel: ChannelId,
        /// The message's seq.
        seq: u64,
        /// Recalled; otherwise edited.
        recalled: bool,
    },
}

impl Change {
    /// The channel of the changed message.
    pub fn channel(&self) -> &str {
        match self {
            Change::Message(m) => &m.channel,
            Change::Notice { channel, .. } => channel,
        }
    }

    /// The seq of the changed message.
    pub fn seq(&self) -> u64 {
        match self {
            Change::Message(m) => m.seq,
            Change::Notice { seq, .. } => *seq,
        }
    }
}

/// What changed for a device since it last asked ([`plan_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesPlan {
    /// The changed messages, each once, in the order of their latest change.
    pub changes: Vec<Change>,
    /// The `since` to ask with next time: every change before it is in this plan or an
    /// earlier one.
    pub version: u64,
    /// Whether more changes remain (ask again with `version`).
    pub has_more: bool,
}

impl ChangesPlan {
    /// The messages to load: the [`Change::Message`] entries, in order ([`load`] returns one
    /// message for each).
    pub fn to_load(&self) -> Vec<MessageRef> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                Change::Message(m) => Some(m.clone()),
                Change::Notice { .. } => None,
            })
            .collect()
    }
}

/// The messages of `uid`'s channels recalled or edited at a log offset `>= since`: a device
/// that holds messages from before it went offline learns which of them changed (the live
/// `recall` notice reaches only the sessions online at the time). Each message comes once, in
/// the order of its latest change; at most `limit`. Channels: those the user is a member of,
/// as for sync — a banned group too (its backlog still reaches its members by sync, so a
/// recall made during the ban must reach them as well, or it would be lost for good once the
/// version moved past it) — and the groups the user left or that were deleted
/// ([`crate::cursors::Cursors::removed`]): a device that held a group's messages keeps them
/// when the user is removed, and a recall made while they were out would otherwise never
/// reach it (the version moves past it, and a re-join starts at the head). Nothing at or
/// below the user's cleared point, and in a group they belong to nothing from an earlier
/// group under the same id.
///
/// What the caller sees of a change follows what they may see of the message. In a channel
/// whose history they can read ([`crate::permissions::can_read`]), and in a banned group for a
/// message still to be delivered to them (above their delivered cursor: sync brings it, and
/// the conversation list shows it), the message as history shows it now
/// ([`Change::Message`]). A banned group's message at or below their delivered cursor was
/// either delivered to them before the ban or sent before they joined — no projection tells
/// which (a join moves the cursor to the head and is not kept) — so it comes as a
/// [`Change::Notice`]: enough for a device that holds the message to drop or mark it, and
/// nothing of it (sender, client id, payload) to a member who never had it. A group the user
/// is no longer in is told the same way, and only for the messages they could hold: at or
/// below their cursor there (delivered, or read: a send moves the sender's read cursor), which
/// stays when they leave: nothing sent after they left, so nothing of a group created again
/// under the same id reaches the earlier group's members (its seqs are above their cursor),
/// while a recall of a message they had reaches them even once the group is deleted.
///
/// Cost: O(channels + groups left + limit × log channels) — the channels' lists are merged,
/// not gathered and sorted.
pub fn plan_changes(
    state: &State,
    files: &IndexFiles,
    uid: &str,
    since: u64,
    limit: usize,
) -> Result<ChangesPlan> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut lists: Vec<Pending<'_>> = Vec::new();
    for channel in state.subs.channels_of(uid) {
        let list = state.heads.changes_since(channel, since);
        if list.is_empty() {
            continue;
        }
        let cur = state.cursors.get(uid, channel);
        let whole_above = if crate::permissions::can_read(state, uid, channel) {
            0
        } else {
            cur.delivered
        };
        lists.push(Pending {
            channel: channel.as_str(),
            list,
            floor: cur.cleared.max(state.subs.history_from(channel)),
            ceiling: u64::MAX,
            whole_above,
        });
    }
    for channel in left_groups(state, uid) {
        let list = state.heads.changes_since(channel, since);
        if list.is_empty() {
            continue;
        }
        let cur = state.cursors.get(uid, channel);
        lists.push(Pending {
            channel: channel.as_str(),
            list,
            floor: cur.cleared,
            ceiling: cur.delivered.max(cur.read),
            whole_above: u64::MAX,
        });
    }
    // Offsets are unique (one change per event, each in one channel): the order is the log's.
    let mut heap: BinaryHeap<_> = lists
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            p.list
                .first()
                .map(|&(offset, _)| Reverse((offset, i, 0usize)))
        })
        .collect();
    let mut picked: Vec<(&str, u64, bool)> = Vec::new();
    let mut version = state.next_offset();
    let mut has_more = false;
    while let Some(Reverse((offset, i, at))) = heap.pop() {
        let p = &lists[i];
        if let Some(&(next, _)) = p.list.get(at + 1) {
            heap.push(Reverse((next, i, at + 1)));
        }
        let seq = p.list[at].1;
        if seq <= p.floor || seq > p.ceiling {
            continue;
        }
        if picked.len() == limit {
            (version, has_more) = (offset, true);
            break;
        }
        picked.push((p.channel, seq, seq > p.whole_above));
    }
    let mut changes = Vec::with_capacity(picked.len());
    for (channel, seq, whole) in picked {
        if whole {
            changes.extend(
                plan_range(state, files, channel, seq, seq)?
                    .into_iter()
                    .map(Change::Message),
            );
        } else {
            changes.push(Change::Notice {
                channel: channel.to_owned(),
                seq,
                recalled: state.heads.is_recalled(channel, seq),
            });
        }
    }
    Ok(ChangesPlan {
        changes,
        version,
        has_more,
    })
}

/// A channel's changes for [`plan_changes`] to merge, and which of them the user is told of.
struct Pending<'a> {
    /// The channel.
    channel: &'a str,
    /// Its changes at or after `since`, as `(offset, seq)`, oldest first.
    list: &'a [(u64, u64)],
    /// Changes to seqs at or below this are not reported.
    floor: u64,
    /// Changes to seqs above this are not reported.
    ceiling: u64,
    /// A change to a seq above this comes with its message, one at or below it as a notice.
    whole_above: u64,
}

/// The groups `uid` left or that were deleted under them, and is not a member of now (a
/// re-join takes a group off [`crate::cursors::Cursors::removed`]; checked again so that no
/// channel is merged twice), in id order.
fn left_groups<'a>(state: &'a State, uid: &'a str) -> impl Iterator<Item = &'a ChannelId> {
    state
        .cursors
        .removed
        .get(uid)
        .into_iter()
        .flat_map(|m| m.keys())
        .filter(move |channel| !state.subs.is_member(channel, uid))
}

fn decode_at(offset: u64, recs: &[tidings_log::Record]) -> Result<Envelope> {
    let rec = recs
        .iter()
        .find(|r| r.offset == offset)
        .ok_or(ProjectionError::Decode {
            offset,
            reason: "the index names an offset the log does not return".into(),
        })?;
    Envelope::decode(rec.offset, &rec.payload)
}

/// Loads planned messages from the log (one blocking task for the whole plan).
pub async fn load(log: &Log, plan: &[MessageRef]) -> Result<Vec<Message>> {
    if plan.is_empty() {
        return Ok(Vec::new());
    }
    let log = log.clone();
    let plan = plan.to_vec();
    tokio::task::spawn_blocking(move || load_blocking(&log, &plan))
        .await
        .map_err(|e| ProjectionError::Cache(format!("message loader task: {e}")))?
}

/// [`load`] for blocking contexts.
pub fn load_blocking(log: &Log, plan: &[MessageRef]) -> Result<Vec<Message>> {
    let mut out = Vec::with_capacity(plan.len());
    for m in plan {
        let recs = log.read_blocking(m.offset, 0)?;
        let env = decode_at(m.offset, &recs)?;
        let Event::MessageSent {
            from,
            client_msg_id,
            message_id,
            payload,
            seq,
            flags,
            ..
        } = env.event
        else {
            return Err(ProjectionError::Decode {
                offset: m.offset,
                reason: format!(
                    "the index names a {} event, not a message",
                    env.event.kind()
                ),
            });
        };
        if seq != m.seq {
            return Err(ProjectionError::Decode {
                offset: m.offset,
                reason: format!(
                    "the index names seq {} but the message has seq {seq}",
                    m.seq
                ),
            });
        }
        let (payload, flags) = match (m.recalled, m.edit_offset) {
            (true, _) => (None, flags),
            (false, Some(edit)) => {
                let recs = log.read_blocking(edit, 0)?;
                match decode_at(edit, &recs)?.event {
                    Event::MessageEdited { payload, flags, .. } => (Some(payload), flags),
                    _ => (Some(payload), flags),
                }
            }
            (false, None) => (Some(payload), flags),
        };
        out.push(Message {
            channel: m.channel.clone(),
            seq: m.seq,
            message_id,
            from,
            client_msg_id,
            ts: env.ts,
            offset: m.offset,
            payload,
            json: flags & crate::event::FLAG_JSON_PAYLOAD != 0,
            recalled: m.recalled,
            edited: m.edit_offset.is_some() && !m.recalled,
        });
    }
    Ok(out)
}
