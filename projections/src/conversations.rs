//! Conversations in read mode: a user's list is computed when it is read, from the user's
//! channels × channel heads × the user's cursors. A send writes one event whatever the group
//! size; nobody's conversation is rewritten.
//!
//! Unread = messages in `(max(read, cleared), last_seq]` that were not recalled. A user's own
//! messages are never in that range (sending advances the sender's read cursor; `cursors.rs`). Ordered by last
//! activity, newest first. The incremental form returns the conversations whose version (the
//! log offset of the last change to the head or to the user's cursor) is above the version the
//! client holds, plus the channels that left the list since then. A group is listed from its
//! first message: a group created again under an earlier group's id, too (its head is the
//! earlier group's until then).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::FastSet;
use crate::ids::{ChannelId, Uid};
use crate::state::State;

/// The newest message, as shown in a conversation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastMessage {
    /// Its seq.
    pub seq: u64,
    /// Its server id.
    pub message_id: u64,
    /// The sender.
    pub from: Uid,
    /// When it was sent.
    pub ts: u64,
    /// The payload, or its first `PREVIEW_MAX` bytes.
    pub preview: Bytes,
    /// Whether `preview` is cut short.
    pub truncated: bool,
    /// The message's flags (`FLAG_JSON_PAYLOAD`).
    pub flags: u32,
    /// Whether it was recalled (then `preview` is empty).
    pub recalled: bool,
    /// Whether it was edited (`preview` is its latest edit's).
    #[serde(default)]
    pub edited: bool,
}

/// One entry of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// The channel (canonical id).
    pub channel: ChannelId,
    /// The channel's last seq.
    pub last_seq: u64,
    /// The newest message (absent when the user cleared up to it).
    pub last_message: Option<LastMessage>,
    /// Unread messages.
    pub unread: u64,
    /// The user's read cursor.
    pub read_seq: u64,
    /// The user's delivered cursor.
    pub delivered_seq: u64,
    /// Last activity (the newest message's time).
    pub updated_at: u64,
    /// Version of this entry (log offset of its last change).
    pub version: u64,
}

/// A user's conversation list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationList {
    /// Newest first.
    pub conversations: Vec<Conversation>,
    /// Channels that left the list since the version asked for (incremental form only).
    pub removed: Vec<ChannelId>,
    /// Whether `limit` cut the list.
    pub has_more: bool,
    /// The version to ask from next time.
    pub version: u64,
}

/// Every visible conversation of `uid`, newest first (the cacheable part).
pub fn compute(state: &State, uid: &str) -> Vec<Conversation> {
    let mut out = Vec::new();
    for channel in state.subs.channels_of(uid) {
        let Some(head) = state.heads.heads.get(channel) else {
            continue;
        };
        let cur = state.cursors.get(uid, channel);
        if !listed(state, &cur, channel, head.last_seq) {
            continue;
        }
        let seen = cur.read.max(cur.cleared);
        let unread = head
            .last_seq
            .saturating_sub(seen)
            .saturating_sub(state.heads.recalled_between(channel, seen, head.last_seq));
        // A group re-created under this id shows nothing of the earlier one's messages. A
        // banned one (its history closed) shows its last message only to a member it is
        // still to be delivered to (a backlog from before the ban, which sync brings): a
        // member who joined after the ban saw it here and nowhere else.
        let floor = cur.cleared.max(state.subs.history_from(channel));
        let shown =
            crate::permissions::can_read(state, uid, channel) || cur.delivered < head.last_seq;
        let last_message = (head.last_seq > floor && shown).then(|| LastMessage {
            seq: head.last_seq,
            message_id: head.last_message_id,
            from: head.from.clone(),
            ts: head.ts,
            preview: head.preview.clone(),
            truncated: head.truncated,
            flags: head.flags,
            recalled: head.recalled,
            edited: head.edited,
        });
        out.push(Conversation {
            channel: channel.clone(),
            last_seq: head.last_seq,
            last_message,
            unread,
            read_seq: cur.read,
            delivered_seq: cur.delivered,
            updated_at: head.ts,
            version: head.version.max(cur.version),
        });
    }
    sort(&mut out);
    out
}

/// Whether `uid`'s list shows `channel` (one of their channels): it holds a message of the
/// group under its id now, and `uid` has not hidden it as of its last message (a hide as of an
/// earlier seq leaves it listed).
pub fn is_listed(state: &State, uid: &str, channel: &str) -> bool {
    let cur = state.cursors.get(uid, channel);
    listed(state, &cur, channel, state.heads.last_seq(channel))
}

fn listed(state: &State, cur: &crate::cursors::Cursor, channel: &str, last_seq: u64) -> bool {
    has_own_message(state, channel, last_seq) && cur.hidden_at.is_none_or(|h| last_seq > h)
}

/// Whether `channel`, whose last seq is `last_seq`, holds a message of the group under its id
/// now. A group with none yet is not listed: a new group, and one created again under an id
/// whose earlier group had messages (its head, seqs and time are the earlier group's, and a
/// new member was shown `last_seq` and `updated_at` of a group they never belonged to). Once
/// it has a message it is listed with the channel's seqs as they are, since every message,
/// cursor and ack carries them (the first message a new member gets already has a seq past
/// the earlier group's): a `last_seq` counted from the new group would no longer add up with
/// `read_seq` and `unread`, nor name the seq a client acks.
fn has_own_message(state: &State, channel: &str, last_seq: u64) -> bool {
    last_seq > state.subs.history_from(channel)
}

fn sort(list: &mut [Conversation]) {
    list.sort_by(|a, b| {
        b.updated_at
            .cmp(&a.updated_at)
            .then_with(|| b.last_seq.cmp(&a.last_seq))
            .then_with(|| a.channel.cmp(&b.channel))
    });
}

/// The page a client asked for, from the full list computed at `version` (the offset applied
/// when `all` was computed; removals after it are left for the next call).
///
/// Paging never skips a conversation. Without `since_version`: the `limit` most recently
/// active; when some are left out, the returned version is just below the lowest version left
/// out, so an incremental call from it returns them. With `since_version`: the conversations
/// changed since then, the `limit` lowest versions first (plus any sharing the last one's
/// version, so a page can run over `limit` when one event touched several conversations),
/// shown by activity; when some are left out the returned version is the highest one returned.
pub fn page(
    state: &State,
    uid: &str,
    all: &[Conversation],
    since_version: Option<u64>,
    limit: usize,
    version: u64,
) -> ConversationList {
    let since = since_version.unwrap_or(0);
    let limit = limit.max(1);
    let (picked, has_more, version) = match since_version {
        None => {
            let has_more = all.len() > limit;
            let version = match all[limit.min(all.len())..].iter().map(|c| c.version).min() {
                Some(lowest_left) => lowest_left.saturating_sub(1).min(version),
                None => version,
            };
            (all[..limit.min(all.len())].to_vec(), has_more, version)
        }
        Some(_) => {
            let mut changed: Vec<Conversation> =
                all.iter().filter(|c| c.version > since).cloned().collect();
            if changed.len() > limit {
                changed.sort_by_key(|c| c.version);
                let cut = changed[limit - 1].version;
                let keep = changed.iter().take_while(|c| c.version <= cut).count();
                let has_more = keep < changed.len();
                changed.truncate(keep);
                sort(&mut changed);
                let version = if has_more { cut } else { version };
                (changed, has_more, version)
            } else {
                (changed, false, version)
            }
        }
    };
    let mut removed = Vec::new();
    if since_version.is_some() {
        let window = |v: u64| v > since && v <= version;
        if let Some(gone) = state.cursors.removed.get(uid) {
            removed.extend(
                gone.iter()
                    .filter(|(_, v)| window(**v))
                    .map(|(c, _)| c.clone()),
            );
        }
        // Hidden since then: their cursor changed after `since` and they are not listed. So is
        // a group the user joined again after it was deleted and created anew, until its
        // first message: the join took it off `cursors.removed`, and the client may still
        // hold the earlier group's entry (one that never listed it has nothing to drop).
        // Looked up in a set (and duplicates dropped below): a scan of the listed and removed
        // ones for each cursor was quadratic for a user in many groups, many hidden.
        if let Some(curs) = state.cursors.by_user.get(uid) {
            let listed: FastSet<&str> = all.iter().map(|c| c.channel.as_str()).collect();
            for (channel, cur) in curs {
                let last_seq = state.heads.last_seq(channel);
                let unlisted = cur.hidden_at.is_some()
                    || (last_seq > 0 && !has_own_message(state, channel, last_seq));
                if unlisted && window(cur.version) && !listed.contains(channel.as_str()) {
                    removed.push(channel.clone());
                }
            }
        }
    }
    // In channel order: the hidden ones came in hash-map order (another per process, and
    // between a live state and a restored one).
    removed.sort_unstable();
    removed.dedup();
    ConversationList {
        conversations: picked,
        removed,
        has_more,
        version,
    }
}

/// A user's conversation list (computed now).
pub fn conversations(
    state: &State,
    uid: &str,
    since_version: Option<u64>,
    limit: usize,
) -> ConversationList {
    let all = compute(state, uid);
    page(
        state,
        uid,
        &all,
        since_version,
        limit,
        state.applied.unwrap_or(0),
    )
}
