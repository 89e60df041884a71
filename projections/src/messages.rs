//! Loading messages: history pages, sync, and the changes (recalls, edits) since a version.
//!
//! Each read is split in two: a *plan* computed from the state (synchronous, so a caller can
//! hold a lock on the state for it) naming the log offsets to read, then a *load* from the log
//! (asynchronous, no state needed). A page costs O(page) index lookups and log reads.
//!
//! **Expired messages.** A log whose oldest segments were deleted (the server's retention once
//! a durable snapshot covers them, or an operator by hand) starts past offset 0, while the
//! projections still hold much about the messages it no longer has: heads, cursors and
//! their message index entries — until a `log_trimmed` event (the retention's, after each
//! removal) lets go of the index's sidecars that end below the start, keeping each channel's
//! last seq let go ([`msgindex::IndexState::dropped_through`]), below which the index finds
//! nothing. A message whose send lies below the log's first offset has
//! *expired*: gone by retention, as a message cleared for everyone is, and never an error. The
//! planning functions take that offset as `expired_below` (0: nothing expires — a log read
//! from its start, or one whose older segments are in an object store, where a read of them
//! fails as unavailable instead), and the loaders a flag, `expiring`, saying whether to read
//! the log's first offset as that bound. Decisions:
//! - Offsets grow with seq, so a channel's expired messages are the seqs up to its *expired
//!   floor* ([`expired_floor`]), found from the message index alone (never the log) and only
//!   when a read planned an expired message first, or asked from at or below the seqs the
//!   index let go ([`begins_expired`]). Below it is a floor as a clear is: a
//!   history page starts after it, or ends there with nothing more to read; sync and
//!   catch-up start after it when the cursor is below it ([`plan_sync_from`]).
//! - `/v1/changes` tells a recall or an edit of an expired message as the notice alone
//!   ([`Change::Notice`]), whatever of its edits the log still holds ([`plan_changes`]).
//! - A message that expires between its plan and its load (the log's start moved meanwhile)
//!   is left out of what [`load_retained`] returns; the next plan finds the new floor.

use bytes::Bytes;
use serde::Serialize;
use tidings_log::{Log, LogError, Record};

use crate::error::{ProjectionError, Result};
use crate::event::{Envelope, Event};
use crate::ids::ChannelId;
use crate::msgindex::{self, IndexFiles, Located};
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

/// Whether the planned message `m` has expired: its send lies below `expired_below`, the log's
/// first offset (module doc).
pub fn is_expired(m: &MessageRef, expired_below: u64) -> bool {
    m.offset < expired_below
}

/// The *expired floor* of `channel` (module doc): the highest seq in `(above, last]` whose
/// message lies below offset `expired_below`, the log's first offset; 0 when none does. With
/// `expired_below` 0, the last seq the index let go (0 when none, or none above `above`).
/// `above` is a floor the caller already has — a clear, the last
/// seq of an earlier group under the id, a cursor — and the channel's last seq the top: no seq
/// outside them is looked at.
///
/// Reads the message index only, never the log: offsets grow with seq, so the entries below
/// `expired_below` come first. The channel's index runs (one per sidecar, in log order, each
/// starting at or after its sidecar's first offset, [`msgindex::Run::file`]) and its entries
/// still in memory are binary-searched for the last that starts below it. A run whose whole
/// sidecar ends below it has its last seq for the floor, unread; one whose sidecar reaches
/// past it is read (through the run cache) and binary-searched in turn. When none of its
/// entries lies below it, the run before it ends below it (its sidecar ends before this one's
/// first offset), and that run's last seq is the floor. With no run left below it, the floor
/// is the last seq whose entry the index dropped with its sidecar
/// ([`msgindex::IndexState::dropped_through`]: those have expired whatever `expired_below`
/// says, and count even when it is 0). Costs O(log runs + log run length) and at most one run
/// read.
pub fn expired_floor(
    state: &State,
    files: &IndexFiles,
    channel: &str,
    above: u64,
    expired_below: u64,
) -> Result<u64> {
    let last = state.heads.last_seq(channel);
    if above >= last {
        return Ok(0);
    }
    let lo = above + 1;
    let in_range = |seq: u64| if seq >= lo { seq } else { 0 };
    let dropped = in_range(state.index.dropped_through(channel).min(last));
    if expired_below == 0 {
        return Ok(dropped);
    }
    let located = state.index.locate(channel, lo, last);
    let start_below = located.partition_point(|loc| match *loc {
        Located::Run(run) => run.file < expired_below,
        Located::Entry { offset, .. } => offset < expired_below,
    });
    for loc in located[..start_below].iter().rev() {
        let run = match *loc {
            // An entry in memory, within `[lo, last]` (`locate` gives no other), below it.
            Located::Entry { seq, .. } => return Ok(seq),
            Located::Run(run) => run,
        };
        // Wholly below (a sidecar the next `log_trimmed` drops): its last entry is the floor.
        if state
            .index
            .sidecar_of(&run)
            .is_some_and(|s| s.last_offset < expired_below)
        {
            return Ok(in_range(run.last_seq));
        }
        let entries = files.read_run(&run)?;
        let below = entries.partition_point(|&(_, offset)| offset < expired_below);
        if let Some(&(seq, _)) = below.checked_sub(1).and_then(|i| entries.get(i)) {
            // The run may begin below `lo`: then nothing in range has expired.
            return Ok(in_range(seq));
        }
    }
    Ok(dropped)
}

/// Whether `channel`'s messages from seq `lo` begin with an expired one, `plan` being
/// [`plan_range`]'s from `lo`: its first message expired, or `lo` at or below the seqs whose
/// index entries went with their sidecars (which `plan_range` does not find:
/// [`msgindex::IndexState::dropped_through`]). Then [`expired_floor`] is the floor to plan
/// from.
pub fn begins_expired(
    state: &State,
    channel: &str,
    lo: u64,
    plan: &[MessageRef],
    expired_below: u64,
) -> bool {
    lo <= state.index.dropped_through(channel)
        || plan.first().is_some_and(|m| is_expired(m, expired_below))
}

/// Whether seq `lo` of `channel` may have expired ([`begins_expired`]), from the message
/// index in memory alone: false when the index let go of nothing from it and the entry or
/// sidecar run holding it starts at or past `expired_below`.
fn may_begin_expired(state: &State, channel: &str, lo: u64, expired_below: u64) -> bool {
    if lo <= state.index.dropped_through(channel) {
        return true;
    }
    expired_below > 0
        && state
            .index
            .locate(channel, lo, lo)
            .first()
            .is_some_and(|loc| match *loc {
                Located::Run(run) => run.file < expired_below,
                Located::Entry { offset, .. } => offset < expired_below,
            })
}

/// The plan for a user's sync: messages after the delivered cursor in every channel of the
/// user, oldest first per channel, at most `limit` in all, shared between the channels with
/// messages to give (`fair_shares`), the channels with the smaller shares first (then in id
/// order). Returns the plan and whether more remain.
///
/// A banned group's backlog is included: those messages were sent to its members before the
/// ban, and a member may move their cursor past them (`permissions::can_move_cursor`).
/// Passing it over would be worse both ways — a WebSocket session that went live past it, or
/// a client that acks live messages cumulatively, would move the cursor past a backlog it
/// never got once the ban is lifted, and a page of messages that cannot be acked would come
/// back at every sync. The ban stops sends and history reads.
///
/// Nothing expires here (module doc) but the seqs the index let go, which it skips: see
/// [`plan_sync_from`].
pub fn plan_sync(
    state: &State,
    files: &IndexFiles,
    uid: &str,
    limit: usize,
) -> Result<(Vec<MessageRef>, bool)> {
    plan_sync_from(state, files, uid, limit, 0, |_, cursor| cursor)
}

/// Like [`plan_sync`], but each channel starts after `after(channel, cursor)` instead of the
/// cursor (a WebSocket session's catch-up continues from what it already sent), and the
/// messages whose send lies below `expired_below` have expired (module doc): a channel whose
/// first message planned has expired starts after its [`expired_floor`] instead — a user
/// offline for longer than the retention gets what is retained, and nothing of what it removed.
pub fn plan_sync_from(
    state: &State,
    files: &IndexFiles,
    uid: &str,
    limit: usize,
    expired_below: u64,
    after: impl Fn(&str, u64) -> u64,
) -> Result<(Vec<MessageRef>, bool)> {
    // The channels with messages past where they start: (channel, from, last).
    let mut pending: Vec<(&str, u64, u64)> = Vec::new();
    for channel in state.subs.channels_of(uid) {
        let last = state.heads.last_seq(channel);
        let cur = state.cursors.get(uid, channel);
        let floor = cur.delivered.max(cur.cleared);
        // Nothing after the cursor: `after` (never below it) is not asked.
        if last <= floor {
            continue;
        }
        let mut from = after(channel, floor).max(floor);
        if last <= from {
            continue;
        }
        // Past the expired floor before the shares are counted: a channel's expired messages
        // counted in what it wants took a share it could not fill, and the page came short
        // (with `has_more`) until 2026-12-03. The message index in memory tells most channels
        // apart (nothing let go there, nothing below the log's start in the run or entry that
        // holds the next seq); the others have one message planned to tell.
        if may_begin_expired(state, channel, from + 1, expired_below)
            && begins_expired(
                state,
                channel,
                from + 1,
                &plan_range(state, files, channel, from + 1, from + 1)?,
                expired_below,
            )
        {
            from = from.max(expired_floor(state, files, channel, from, expired_below)?);
            if last <= from {
                continue;
            }
        }
        pending.push((channel, from, last));
    }
    let wants: Vec<u64> = pending.iter().map(|&(_, from, last)| last - from).collect();
    let shares = fair_shares(&wants, limit as u64);
    // The smaller shares first (then by channel id): a client that reads part of a page before
    // it goes (a catch-up cut short) has the quiet channels' messages before a busy group's.
    let mut order: Vec<usize> = (0..pending.len()).collect();
    order.sort_by_key(|&i| (shares[i], i));
    let mut out = Vec::new();
    let mut has_more = false;
    for i in order {
        let ((channel, from, last), room) = (pending[i], shares[i]);
        if room == 0 {
            has_more = true;
            continue;
        }
        let hi = last.min(from + room);
        out.extend(plan_range(state, files, channel, from + 1, hi)?);
        if hi < last {
            has_more = true;
        }
    }
    Ok((out, has_more))
}

/// How many seqs of a page of `room` each channel gets, wanting `wants` (in channel order):
/// what it wants, or an equal share of what the channels wanting less left, whichever is less
/// (max-min fair), the remainder of the division to the first channels still wanting. With
/// more channels than room, the first channels in order get one each. Until 2026-12-03 a page
/// went to the channels in id order, each drained before the next: a quiet channel sorted
/// after a busy group got nothing until the group was drained, and a client that reconnected
/// before then never saw it (found by a QA round).
fn fair_shares(wants: &[u64], room: u64) -> Vec<u64> {
    let n = wants.len();
    // Smallest wants first; among equal ones, the later channels first, so that the shares
    // an exact division leaves at 0 fall on them.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (wants[i], std::cmp::Reverse(i)));
    let mut shares = vec![0; n];
    let mut left = room;
    for (k, &i) in order.iter().enumerate() {
        let take = wants[i].min(left / (n - k) as u64);
        shares[i] = take;
        left -= take;
    }
    for (share, want) in shares.iter_mut().zip(wants) {
        let more = (want - *share).min(left);
        *share += more;
        left -= more;
    }
    shares
}

/// One entry of a [`ChangesPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The message, to [`load`] and show as history shows it now.
    Message(MessageRef),
    /// Only which message changed and how: the caller may not see the message itself (a
    /// banned group's message they are not owed, see [`plan_changes`]), or it has expired
    /// (module doc).
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
    /// The offset of each change's event (the latest change of its message), in the order of
    /// `changes`: a page cut after `k` of them goes on from `offsets[k]` ([`Self::cut`]).
    pub offsets: Vec<u64>,
}

impl ChangesPlan {
    /// Keeps the first `k` changes (fewer than it holds): the next page starts at the first
    /// one left out.
    pub fn cut(&mut self, k: usize) {
        if let Some(&next) = self.offsets.get(k) {
            self.changes.truncate(k);
            self.offsets.truncate(k);
            self.version = next;
            self.has_more = true;
        }
    }

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
/// A message whose send lies below `expired_below` has expired (module doc): a change to it
/// comes as a [`Change::Notice`] too, never with its message — also when the edit that made
/// it, the latest, is still in the log (the message's sender, ids and time are not).
///
/// Cost: O(channels + groups left + limit × log channels) — the channels' lists are merged,
/// not gathered and sorted.
pub fn plan_changes(
    state: &State,
    files: &IndexFiles,
    uid: &str,
    since: u64,
    limit: usize,
    expired_below: u64,
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
    let mut picked: Vec<(&str, u64, bool, u64)> = Vec::new();
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
        picked.push((p.channel, seq, seq > p.whole_above, offset));
    }
    let mut changes = Vec::with_capacity(picked.len());
    let mut offsets = Vec::with_capacity(picked.len());
    for (channel, seq, whole, offset) in picked {
        if !whole {
            changes.push(notice(state, channel, seq));
            offsets.push(offset);
            continue;
        }
        let planned = plan_range(state, files, channel, seq, seq)?;
        // Its index entry gone with its sidecar: expired.
        if planned.is_empty() && seq <= state.index.dropped_through(channel) {
            changes.push(notice(state, channel, seq));
            offsets.push(offset);
        }
        for m in planned {
            changes.push(if is_expired(&m, expired_below) {
                notice(state, channel, seq)
            } else {
                Change::Message(m)
            });
            offsets.push(offset);
        }
    }
    Ok(ChangesPlan {
        changes,
        version,
        has_more,
        offsets,
    })
}

/// The [`Change::Notice`] of a change to `channel`'s message `seq`: recalled, or else edited.
fn notice(state: &State, channel: &str, seq: u64) -> Change {
    Change::Notice {
        channel: channel.to_owned(),
        seq,
        recalled: state.heads.is_recalled(channel, seq),
    }
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

/// Loads planned messages from the log (one blocking task for the whole plan), one for each,
/// in plan order. Nothing expires here: a message below the log's first offset fails the load
/// ([`LogError::OffsetOutOfRange`]); see [`load_retained`].
pub async fn load(log: &Log, plan: &[MessageRef]) -> Result<Vec<Message>> {
    load_retained(log, plan, false).await
}

/// Like [`load`], but when `expiring` (module doc) the messages whose send lies below the log's
/// first offset now — expired since the plan left out those expired when it was made — are
/// left out, not an error. The others come one for each, in plan order.
pub async fn load_retained(log: &Log, plan: &[MessageRef], expiring: bool) -> Result<Vec<Message>> {
    if plan.is_empty() {
        return Ok(Vec::new());
    }
    let log = log.clone();
    let plan = plan.to_vec();
    tokio::task::spawn_blocking(move || load_blocking_retained(&log, &plan, expiring))
        .await
        .map_err(|e| ProjectionError::Cache(format!("message loader task: {e}")))?
}

/// [`load`] for blocking contexts.
pub fn load_blocking(log: &Log, plan: &[MessageRef]) -> Result<Vec<Message>> {
    load_blocking_retained(log, plan, false)
}

/// The records `log` reads from `offset` (the one there first); `None` when `expiring` and
/// `offset` lies below the log's first offset, checked before the read and, should the start
/// move past it meanwhile, from the read's error: the record has expired (module doc).
fn read_unless_expired(log: &Log, offset: u64, expiring: bool) -> Result<Option<Vec<Record>>> {
    if expiring && offset < log.start_offset() {
        return Ok(None);
    }
    match log.read_blocking(offset, 0) {
        Ok(recs) => Ok(Some(recs)),
        Err(LogError::OffsetOutOfRange {
            requested, start, ..
        }) if expiring && requested < start => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// [`load_retained`] for blocking contexts.
pub fn load_blocking_retained(
    log: &Log,
    plan: &[MessageRef],
    expiring: bool,
) -> Result<Vec<Message>> {
    let mut out = Vec::with_capacity(plan.len());
    for m in plan {
        let Some(recs) = read_unless_expired(log, m.offset, expiring)? else {
            continue;
        };
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
                // After the send in the log: below its start only if the send is now too.
                let Some(recs) = read_unless_expired(log, edit, expiring)? else {
                    continue;
                };
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{ChannelFlags, ProjectionConfig, Projections};

    /// Max-min fair: each channel gets what it wants or an equal share of what is left; with
    /// more channels than room, the first ones get one each; the remainder goes in order.
    #[test]
    fn a_page_is_shared_max_min_fair() {
        assert_eq!(fair_shares(&[40, 3], 10), vec![7, 3]);
        assert_eq!(fair_shares(&[3, 40], 10), vec![3, 7]);
        assert_eq!(fair_shares(&[40, 40, 40], 10), vec![4, 3, 3]);
        assert_eq!(fair_shares(&[1, 1, 1, 1], 2), vec![1, 1, 0, 0]);
        assert_eq!(fair_shares(&[2, 5], 100), vec![2, 5]);
        assert_eq!(fair_shares(&[100, 1, 100], 10), vec![5, 1, 4]);
        assert_eq!(fair_shares(&[], 10), Vec::<u64>::new());
        assert_eq!(fair_shares(&[5], 0), vec![0]);
    }

    /// Projections in `dir` whose message index writes a sidecar every 3 entries: a channel's
    /// entries lie in several runs and in memory.
    fn projections(dir: &std::path::Path) -> Projections {
        let config = ProjectionConfig {
            index_flush_entries: 3,
            ..ProjectionConfig::default()
        };
        Projections::empty(dir, config).unwrap()
    }

    /// Ann's message `seq` in `channel`.
    fn sent(channel: &str, seq: u64) -> Event {
        Event::MessageSent {
            channel: channel.into(),
            from: "ann".into(),
            client_msg_id: format!("{channel}{seq}"),
            seq,
            message_id: seq,
            payload: Bytes::from_static(b"hi"),
            flags: 0,
        }
    }

    fn apply(p: &mut Projections, offset: u64, event: Event) {
        p.apply(offset, &Envelope::new(1_000, event)).unwrap();
    }

    /// The expired floor is the highest seq above the caller's floor whose message lies below
    /// the log's start, 0 when none does, for every start and floor: with the channel's
    /// entries in several sidecar runs and in memory, interleaved with another channel's, and
    /// offsets between them that are no message's.
    #[test]
    fn the_expired_floor_is_the_last_seq_below_the_log_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = projections(dir.path());
        let mut offset = 0;
        for (i, ch) in "aabaababaaababbaa".chars().enumerate() {
            let channel = ch.to_string();
            let seq = p.state.heads.last_seq(&channel) + 1;
            offset += 1 + i as u64 % 3;
            apply(&mut p, offset, sent(&channel, seq));
        }
        assert!(p.state.index.sidecars.len() >= 5, "entries in sidecars");
        assert!(!p.state.index.mem.is_empty(), "entries in memory");
        let files = p.index_files();
        for channel in ["a", "b"] {
            let last = p.state.heads.last_seq(channel);
            let entries = msgindex::offsets(&p.state.index, files, channel, 1, last).unwrap();
            assert_eq!(entries.len() as u64, last);
            for start in 0..=offset + 2 {
                for above in 0..=last {
                    let want = entries
                        .iter()
                        .filter(|&&(seq, at)| seq > above && at < start)
                        .map(|&(seq, _)| seq)
                        .max()
                        .unwrap_or(0);
                    let got = expired_floor(&p.state, files, channel, above, start).unwrap();
                    assert_eq!(got, want, "{channel}: above {above}, start {start}");
                }
            }
        }
        // A channel without messages, and one asked above its last seq.
        assert_eq!(expired_floor(&p.state, files, "c", 0, 100).unwrap(), 0);
        assert_eq!(expired_floor(&p.state, files, "b", 6, 100).unwrap(), 0);

        // With the sidecars that end below a removal's start let go (`log_trimmed`), the
        // floor is the same for that start and every later one, and with no start known (0)
        // it is the last seq let go; the files of the sidecars let go are not read (removed).
        for trim in 1..=offset + 1 {
            let mut state = p.state.clone();
            state.index.drop_below(trim);
            let gone: Vec<_> = p
                .state
                .index
                .sidecars
                .iter()
                .filter(|s| s.last_offset < trim)
                .collect();
            assert_eq!(
                state.index.sidecars.len() + gone.len(),
                p.state.index.sidecars.len()
            );
            let moved = tempfile::tempdir().unwrap();
            for side in &gone {
                let from = msgindex::sidecar_path(files.dir(), side.first_offset);
                std::fs::rename(
                    &from,
                    msgindex::sidecar_path(moved.path(), side.first_offset),
                )
                .unwrap();
            }
            let cold = IndexFiles::open(files.dir(), 1 << 20).unwrap();
            for channel in ["a", "b"] {
                let last = p.state.heads.last_seq(channel);
                let entries = msgindex::offsets(&p.state.index, files, channel, 1, last).unwrap();
                let floor = |above: u64, start: u64| {
                    entries
                        .iter()
                        .filter(|&&(seq, at)| seq > above && at < start)
                        .map(|&(seq, _)| seq)
                        .max()
                        .unwrap_or(0)
                };
                let dropped = state.index.dropped_through(channel);
                let in_sidecars_let_go = entries
                    .iter()
                    .filter(|&&(_, at)| {
                        gone.iter()
                            .any(|s| (s.first_offset..=s.last_offset).contains(&at))
                    })
                    .map(|&(seq, _)| seq)
                    .max()
                    .unwrap_or(0);
                assert_eq!(dropped, in_sidecars_let_go, "{channel}, trimmed at {trim}");
                for above in 0..=last {
                    for start in trim..=offset + 2 {
                        let got = expired_floor(&state, &cold, channel, above, start).unwrap();
                        assert_eq!(
                            got,
                            floor(above, start),
                            "{channel}: trim {trim}, above {above}, start {start}"
                        );
                    }
                    let got = expired_floor(&state, &cold, channel, above, 0).unwrap();
                    assert_eq!(got, if dropped > above { dropped } else { 0 });
                }
            }
            for side in &gone {
                let to = msgindex::sidecar_path(files.dir(), side.first_offset);
                std::fs::rename(msgindex::sidecar_path(moved.path(), side.first_offset), to)
                    .unwrap();
            }
        }
    }

    /// A `log_trimmed` event lets go of the index's sidecars that end below its start (and
    /// their runs), and sync and the changes plan as they did with them, the recall of a
    /// message whose entry went included (a notice). A state a snapshot held that applied the
    /// event without letting them go (an earlier build's) has them let go at load, the same.
    #[test]
    fn a_log_trimmed_event_lets_the_index_below_the_start_go_and_reads_plan_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = group_with_changes(dir.path());
        let files = p.index_files().clone();
        let plans = |state: &State, expired_below| {
            let (sync, more) =
                plan_sync_from(state, &files, "bob", 100, expired_below, |_, c| c).unwrap();
            let sync: Vec<u64> = sync.iter().map(|m| m.seq).collect();
            let changes = plan_changes(state, &files, "bob", 0, 100, expired_below).unwrap();
            (sync, more, changes.changes)
        };
        // Offsets 2 to 11 hold seqs 1 to 10; sidecars of 3 entries: seqs 1-3 (offsets 2-4),
        // 4-6 (5-7), 7-9 (8-10), seq 10 in memory. The log starts at 9.
        let before = plans(&p.state, 9);
        let mut earlier_build = p.state.clone();
        apply(&mut p, 17, Event::LogTrimmed { start: 9 });
        assert_eq!(
            p.state.index.sidecars.len(),
            1,
            "{:?}",
            p.state.index.sidecars
        );
        assert_eq!(p.state.index.runs["g"].len(), 1);
        assert_eq!(p.state.index.dropped_through("g"), 6);
        assert_eq!(plans(&p.state, 9), before);
        assert_eq!(before.0, [8, 9, 10]);
        assert!(before.2.contains(&Change::Notice {
            channel: "g".into(),
            seq: 3,
            recalled: true
        }));
        // No start known (a tiered directory started without its store): what went is below.
        assert_eq!(plans(&p.state, 0).0, (7..=10).collect::<Vec<u64>>());
        // A page whose whole range went (seqs 3 and 4) plans from after it, not nothing with
        // more to come (which a client would ask for again and again).
        let (page, more) = plan_sync_from(&p.state, &files, "bob", 2, 0, |_, c| c).unwrap();
        assert_eq!(
            (page.iter().map(|m| m.seq).collect::<Vec<_>>(), more),
            (vec![7, 8], true)
        );

        earlier_build.applied = Some(17);
        earlier_build.trimmed = Some(crate::state::Trimmed {
            offset: 17,
            start: 9,
        });
        let bytes = crate::snapshot::encode(&earlier_build).unwrap();
        let loaded = crate::snapshot::decode(std::path::Path::new("s"), &bytes).unwrap();
        assert_eq!(loaded, p.state);
    }

    /// Bob's group `g` at offsets 0 and 1, ten messages at offsets 2 to 11 (seq + 1), bob's
    /// ack of 2, then a recall of 3, edits of 4 and 8 and a recall of 9 (offsets 13 to 16).
    fn group_with_changes(dir: &std::path::Path) -> Projections {
        let mut p = projections(dir);
        apply(
            &mut p,
            0,
            Event::ChannelCreated {
                channel: "g".into(),
                flags: ChannelFlags::default(),
            },
        );
        apply(
            &mut p,
            1,
            Event::MembersSubscribed {
                channel: "g".into(),
                uids: vec!["bob".into()],
            },
        );
        for seq in 1..=10 {
            apply(&mut p, seq + 1, sent("g", seq));
        }
        apply(
            &mut p,
            12,
            Event::CursorAdvanced {
                uid: "bob".into(),
                channel: "g".into(),
                delivered_seq: Some(2),
                read_seq: None,
            },
        );
        let recalled = |seq| Event::MessageRecalled {
            channel: "g".into(),
            seq,
            by: "ann".into(),
        };
        let edited = |seq| Event::MessageEdited {
            channel: "g".into(),
            seq,
            by: "ann".into(),
            payload: Bytes::from_static(b"edited"),
            flags: 0,
        };
        apply(&mut p, 13, recalled(3));
        apply(&mut p, 14, edited(4));
        apply(&mut p, 15, edited(8));
        apply(&mut p, 16, recalled(9));
        p
    }

    /// Sync starts after the expired floor when the cursor is below it (seqs 1 to 5 lie below
    /// offset 7), pages from there, and plans nothing when every message after the cursor has
    /// expired; with nothing expired it starts after the cursor.
    #[test]
    fn sync_starts_after_the_expired_floor() {
        let dir = tempfile::tempdir().unwrap();
        let p = group_with_changes(dir.path());
        let files = p.index_files();
        let sync = |limit, expired_below| {
            let (plan, more) =
                plan_sync_from(&p.state, files, "bob", limit, expired_below, |_, c| c).unwrap();
            (plan.iter().map(|m| m.seq).collect::<Vec<_>>(), more)
        };
        assert_eq!(sync(100, 0), ((3..=10).collect::<Vec<u64>>(), false));
        assert_eq!(sync(100, 7), ((6..=10).collect::<Vec<u64>>(), false));
        assert_eq!(sync(3, 7), (vec![6, 7, 8], true));
        assert_eq!(sync(100, 100), (Vec::<u64>::new(), false));
    }

    /// A channel's expired messages take no share of a page: with `g`'s seqs 3 to 5 expired,
    /// a page of 16 gives `g` its 5 retained messages and the busy `h` the other 11 (the
    /// shares counted `g` as wanting 8, gave it 8, and the page held 13 with `has_more`).
    #[test]
    fn expired_messages_take_no_share_of_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = group_with_changes(dir.path());
        apply(
            &mut p,
            17,
            Event::ChannelCreated {
                channel: "h".into(),
                flags: ChannelFlags::default(),
            },
        );
        apply(
            &mut p,
            18,
            Event::MembersSubscribed {
                channel: "h".into(),
                uids: vec!["bob".into()],
            },
        );
        for seq in 1..=20 {
            apply(&mut p, seq + 18, sent("h", seq));
        }
        let (plan, more) =
            plan_sync_from(&p.state, p.index_files(), "bob", 16, 7, |_, c| c).unwrap();
        let of = |ch: &str| {
            plan.iter()
                .filter(|m| m.channel == ch)
                .map(|m| m.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(of("g"), (6..=10).collect::<Vec<u64>>());
        assert_eq!(of("h"), (1..=11).collect::<Vec<u64>>());
        assert!(more);
    }

    /// A recall or an edit of an expired message is told as the notice alone — the edit of 4 at
    /// offset 14 too, though the log still holds it — and those of retained messages with the
    /// message; with nothing expired, every one comes with its message.
    #[test]
    fn a_change_to_an_expired_message_is_a_notice() {
        let dir = tempfile::tempdir().unwrap();
        let p = group_with_changes(dir.path());
        let files = p.index_files();
        let told = |seq, recalled| Change::Notice {
            channel: "g".into(),
            seq,
            recalled,
        };
        let plan = plan_changes(&p.state, files, "bob", 0, 100, 7).unwrap();
        assert_eq!(plan.changes.len(), 4, "{plan:?}");
        assert_eq!(plan.changes[..2], [told(3, true), told(4, false)]);
        let loaded: Vec<_> = plan
            .to_load()
            .iter()
            .map(|m| (m.seq, m.recalled, m.edit_offset))
            .collect();
        assert_eq!(loaded, [(8, false, Some(15)), (9, true, None)]);
        let whole = plan_changes(&p.state, files, "bob", 0, 100, 0).unwrap();
        assert_eq!(whole.to_load().len(), 4, "{whole:?}");
    }
}
