//! Message trace: a message's timeline, built from the log (it is the audit trail) plus sampled
//! push records fed by the server.
//!
//! Accepted and durable come from the send itself (the event's time and the batch's write
//! time); recall and edits from their events; delivery and read acks from the cursor events
//! that first cover the seq, found by scanning the log forward from the send (bounded by
//! `max_scan` records; the trace says whether the scan reached the end). Pushes are not logged
//! per recipient (that cost is what made WuKongIM drop its trace): the server samples one
//! message in N and keeps its push records in a bounded ring ([`PushSamples`]).
//!
//! A cover counts only for a user in the group continuously since the message. A join puts
//! the joiner's cursors at the head (`cursors.rs`), so their next ack or send covers messages
//! that were never theirs: from a subscribe naming a user, and from an unsubscribe naming
//! them, the scan no longer counts them (a member removed before acking and added again is
//! marked as having read what they were owed; that is the join rule, not a read), and after
//! the group's deletion it counts nobody. The server writes a subscribe only for users not
//! members yet, so one in the log is a join; logs written before 2026-11-30 also hold
//! re-subscribes of members: one naming a user whose ack or send the scan has already counted
//! is taken as a re-subscribe, one naming a member who has not acted since the message as a
//! join (their later acks are left out).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tidings_log::Log;

use crate::error::Result;
use crate::event::{Envelope, Event};
use crate::ids::{ChannelId, Uid};
use crate::msgindex::{self, IndexFiles};
use crate::state::State;

/// One push of a sampled message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRecord {
    /// When the push was queued (ms since the Unix epoch).
    pub at_ms: u64,
    /// Recipients online.
    pub online_users: u32,
    /// Sessions the message was queued to.
    pub sessions: u32,
    /// Sessions whose queue was full (closed to resume later).
    pub dropped: u32,
}

/// Push records of sampled messages, in a bounded ring.
#[derive(Debug)]
pub struct PushSamples {
    every: u64,
    capacity: usize,
    ring: Mutex<VecDeque<((ChannelId, u64), PushRecord)>>,
}

impl PushSamples {
    /// Keeps one message in `every` (by message id), at most `capacity` records.
    pub fn new(every: u64, capacity: usize) -> Self {
        Self {
            every: every.max(1),
            capacity: capacity.max(1),
            ring: Mutex::new(VecDeque::new()),
        }
    }

    /// Whether the message with this id is sampled.
    pub fn sampled(&self, message_id: u64) -> bool {
        message_id.is_multiple_of(self.every)
    }

    /// Records a push of a sampled message.
    pub fn record(&self, channel: &str, seq: u64, rec: PushRecord) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(((channel.to_owned(), seq), rec));
    }

    /// The push records of one message.
    pub fn get(&self, channel: &str, seq: u64) -> Vec<PushRecord> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter()
            .filter(|((c, s), _)| c == channel && *s == seq)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// A user's ack of a message, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The user.
    pub uid: Uid,
    /// When the covering cursor event was accepted.
    pub at_ms: u64,
    /// That event's log offset.
    pub offset: u64,
}

/// A message's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// The channel.
    pub channel: ChannelId,
    /// The message's seq.
    pub seq: u64,
    /// Its server id.
    pub message_id: u64,
    /// The sender.
    pub from: Uid,
    /// When the server accepted it.
    pub accepted_at_ms: u64,
    /// Where it is in the log.
    pub offset: u64,
    /// When its batch was written (durable under `fsync = always`).
    pub durable_at_ms: u64,
    /// Sampled push records.
    pub pushes: Vec<PushRecord>,
    /// Who acknowledged delivery, first time each.
    pub delivered: Vec<Ack>,
    /// Who read it, first time each.
    pub read: Vec<Ack>,
    /// Current members other than the sender whose delivered cursor is still below the seq
    /// (a member who joined after the message is never among them: the join moved their
    /// cursor to the head).
    pub not_delivered: Vec<Uid>,
    /// When it was recalled, if it was.
    pub recalled_at_ms: Option<u64>,
    /// Whether the message is recalled now (also when the recall lies past the scan).
    pub recalled: bool,
    /// When it was edited.
    pub edited_at_ms: Vec<u64>,
    /// The last offset the scan read.
    pub scanned_to: u64,
    /// Whether the scan reached the end of the log (otherwise `max_scan` stopped it).
    pub scan_complete: bool,
}

/// What a trace needs from the state, taken under the state's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracePlan {
    /// The channel.
    pub channel: ChannelId,
    /// The message's seq.
    pub seq: u64,
    /// The offset of its send.
    pub offset: u64,
    /// Recipients whose delivered cursor is below the seq now.
    pub not_delivered: Vec<Uid>,
    /// Whether it is recalled now.
    pub recalled: bool,
}

/// The plan for tracing `(channel, seq)`, or `None` if there is no such message.
pub fn plan(
    state: &State,
    files: &IndexFiles,
    channel: &str,
    seq: u64,
) -> Result<Option<TracePlan>> {
    // A seq of an earlier group under this id is not this group's message (as for history
    // and recall).
    if seq <= state.subs.history_from(channel) {
        return Ok(None);
    }
    let Some(&(_, offset)) = msgindex::offsets(&state.index, files, channel, seq, seq)?.first()
    else {
        return Ok(None);
    };
    // The subscriptions keep no join point, but none is needed: a join moves the joiner's
    // delivered cursor to the head, past any message sent before it (`cursors.rs`).
    let not_delivered = state
        .subs
        .recipients(channel)
        .filter(|u| state.cursors.get(u, channel).delivered < seq)
        .map(str::to_owned)
        .collect();
    Ok(Some(TracePlan {
        channel: channel.to_owned(),
        seq,
        offset,
        not_delivered,
        recalled: state.heads.is_recalled(channel, seq),
    }))
}

/// The trace of a planned message, scanning at most `max_scan` records after it.
pub async fn trace(
    log: &Log,
    plan: &TracePlan,
    samples: Option<&PushSamples>,
    max_scan: u64,
) -> Result<Option<Trace>> {
    let (channel, seq, offset) = (plan.channel.as_str(), plan.seq, plan.offset);
    let Some(rec) = log.read(offset, 0).await?.into_iter().next() else {
        return Ok(None);
    };
    let env = Envelope::decode(rec.offset, &rec.payload)?;
    let Event::MessageSent {
        from, message_id, ..
    } = &env.event
    else {
        return Ok(None);
    };
    let mut t = Trace {
        channel: channel.to_owned(),
        seq,
        message_id: *message_id,
        from: from.clone(),
        accepted_at_ms: env.ts,
        offset,
        durable_at_ms: rec.timestamp_ms,
        pushes: samples.map(|s| s.get(channel, seq)).unwrap_or_default(),
        delivered: Vec::new(),
        read: Vec::new(),
        not_delivered: Vec::new(),
        recalled_at_ms: None,
        recalled: plan.recalled,
        edited_at_ms: Vec::new(),
        scanned_to: offset,
        scan_complete: false,
    };
    let sender = from.clone();
    let mut delivered: BTreeMap<Uid, Ack> = BTreeMap::new();
    let mut read: BTreeMap<Uid, Ack> = BTreeMap::new();
    let mut members = Standing::default();
    // The sender was a member when they sent it (`permissions.rs`).
    members.seen.insert(sender.clone());
    let end = log.next_offset();
    let mut next = offset + 1;
    // Records offset+1 ..= offset+max_scan.
    let stop = offset.saturating_add(max_scan).saturating_add(1).min(end);
    while next < stop {
        let recs = log.read(next, 4 << 20).await?;
        let Some(last) = recs.last() else { break };
        next = last.offset + 1;
        for r in recs {
            if r.offset >= stop {
                break;
            }
            t.scanned_to = r.offset;
            // Records that are not events cannot be about this message.
            let Ok(e) = Envelope::decode(r.offset, &r.payload) else {
                continue;
            };
            if e.event.channel() != Some(channel) {
                continue;
            }
            let ack = |uid: &str| Ack {
                uid: uid.to_owned(),
                at_ms: e.ts,
                offset: r.offset,
            };
            let mut covers = |uid: &str, delivered_seq: Option<u64>, read_seq: Option<u64>| {
                if !members.counts(uid) {
                    return;
                }
                let d = delivered_seq.unwrap_or(0).max(read_seq.unwrap_or(0));
                if d >= seq {
                    members.saw(uid);
                    delivered.entry(uid.to_owned()).or_insert_with(|| ack(uid));
                }
                if read_seq.is_some_and(|s| s >= seq) {
                    read.entry(uid.to_owned()).or_insert_with(|| ack(uid));
                }
            };
            match &e.event {
                Event::CursorAdvanced {
                    uid,
                    delivered_seq,
                    read_seq,
                    ..
                } => covers(uid, *delivered_seq, *read_seq),
                Event::CursorBatch { cursors, .. } => {
                    for c in cursors {
                        covers(&c.uid, c.delivered_seq, c.read_seq);
                    }
                }
                // A clear counts the messages up to it as delivered and read (`cursors.rs`).
                Event::ConversationCleared { uid, up_to_seq, .. } => {
                    covers(uid, Some(*up_to_seq), Some(*up_to_seq));
                }
                // A member who sends a later message has read up to it (`cursors.rs`); whether
                // it also counts as delivery depends on their cursor then, which the
                // cursor events tell.
                Event::MessageSent {
                    from: by, seq: s, ..
                } if *s > seq && *by != sender && members.counts(by) => {
                    members.saw(by);
                    read.entry(by.clone()).or_insert_with(|| ack(by));
                }
                Event::MembersSubscribed { uids, .. } => members.subscribed(uids),
                Event::MembersUnsubscribed { uids, .. } => members.unsubscribed(uids),
                Event::ChannelDeleted { .. } => members.deleted = true,
                Event::MessageRecalled { seq: s, .. } if *s == seq => {
                    t.recalled_at_ms.get_or_insert(e.ts);
                }
                Event::MessageEdited { seq: s, .. } if *s == seq => t.edited_at_ms.push(e.ts),
                _ => {}
            }
        }
    }
    // Every record below `stop` was examined; the scan is complete when `stop` is the end.
    t.scan_complete = stop >= end;
    t.delivered = sorted(delivered);
    t.read = sorted(read);
    // The sender's delivered cursor may stay below their own message (`cursors.rs`).
    t.not_delivered = plan
        .not_delivered
        .iter()
        .filter(|u| *u != from)
        .cloned()
        .collect();
    Ok(Some(t))
}

/// Whose covers the scan still counts (module doc): users in the group continuously since
/// the message.
#[derive(Debug, Default)]
struct Standing {
    /// Users no longer counted: they joined after the message, or were removed since it.
    out: BTreeSet<Uid>,
    /// Users counted so far (an ack covering the message, or a send of theirs since it):
    /// members then, so a later subscribe naming them changes nothing. A cursor event below
    /// the message proves nothing: WebSocket acks are written up to a window late, so one can
    /// land after its user's removal and before their re-join.
    seen: BTreeSet<Uid>,
    /// The group was deleted: nobody counts any more.
    deleted: bool,
}

impl Standing {
    /// Whether a cover by `uid` counts here.
    fn counts(&self, uid: &str) -> bool {
        !self.deleted && !self.out.contains(uid)
    }

    /// A counted cover of the message, or a send, by `uid`: a member since the message.
    fn saw(&mut self, uid: &str) {
        if !self.seen.contains(uid) {
            self.seen.insert(uid.to_owned());
        }
    }

    /// A subscribe: a join for everyone named but the members already seen.
    fn subscribed(&mut self, uids: &[Uid]) {
        for u in uids {
            if !self.seen.contains(u) {
                self.out.insert(u.clone());
            }
        }
    }

    /// An unsubscribe: whoever it names is out from here on (also if added again).
    fn unsubscribed(&mut self, uids: &[Uid]) {
        self.out.extend(uids.iter().cloned());
    }
}

fn sorted(m: BTreeMap<Uid, Ack>) -> Vec<Ack> {
    let mut v: Vec<Ack> = m.into_values().collect();
    v.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then(a.offset.cmp(&b.offset)));
    v
}
