//! Who may send where. The sequencer calls [`check_send`] against the current state before it
//! appends a message; the rules live here so they are tested with the projections they read.
//!
//! Group channel: it must exist and not be banned, disbanded or send-banned (the app server,
//! sending with the admin key, may still send into a send-banned channel); the sender must be
//! a member, not on the denylist, and on the allowlist when the allowlist is non-empty.
//! Person channel: the recipient's denylist is always honoured; the recipient's allowlist is
//! honoured when the `person_allowlist` switch is on (default off: anyone may message anyone).

use serde::Serialize;

use crate::ids::{is_valid_id, person_pair};
use crate::state::State;

/// Why a send is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SendDenied {
    /// No such channel.
    #[error("channel not found")]
    ChannelNotFound,
    /// The channel is banned.
    #[error("channel is banned")]
    ChannelBanned,
    /// The channel is disbanded.
    #[error("channel is disbanded")]
    ChannelDisbanded,
    /// Only the app server may send here.
    #[error("sending is banned in this channel")]
    SendBanned,
    /// The sender is not a member.
    #[error("sender is not a member of the channel")]
    NotMember,
    /// The sender is on the denylist (a group's, or a person channel's recipient's).
    #[error("sender is on the denylist (the group's, or the recipient's in a person channel)")]
    Denied,
    /// The allowlist does not include the sender (a group's that lists anyone, or a person
    /// channel's recipient's under `person_allowlist`, which lets nobody through when empty).
    #[error("sender is not on the allowlist (the group's, or the recipient's in a person channel)")]
    NotAllowed,
}

impl SendDenied {
    /// A stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            SendDenied::ChannelNotFound => "channel_not_found",
            SendDenied::ChannelBanned => "channel_banned",
            SendDenied::ChannelDisbanded => "channel_disbanded",
            SendDenied::SendBanned => "send_banned",
            SendDenied::NotMember => "not_member",
            SendDenied::Denied => "denied",
            SendDenied::NotAllowed => "not_allowed",
        }
    }
}

/// Whether `from` may send into `channel` (canonical id). `by_admin` is a send made with the
/// admin key on the user's behalf: it is not held to the recipient's allowlist of a person
/// channel (an app server's system messages), but to deny lists and a group's allowlist.
pub fn check_send(
    state: &State,
    from: &str,
    channel: &str,
    person_allowlist: bool,
    by_admin: bool,
) -> Result<(), SendDenied> {
    if let Some((a, b)) = person_pair(channel) {
        let to = if a == from {
            b
        } else if b == from {
            a
        } else {
            return Err(SendDenied::NotMember);
        };
        if !is_valid_id(to) {
            return Err(SendDenied::ChannelNotFound);
        }
        if to == from {
            return Ok(());
        }
        if let Some(lists) = state.subs.user_lists.get(to) {
            if lists.deny.contains(from) {
                return Err(SendDenied::Denied);
            }
            if person_allowlist && !by_admin && !lists.allow.contains(from) {
                return Err(SendDenied::NotAllowed);
            }
        } else if person_allowlist && !by_admin {
            return Err(SendDenied::NotAllowed);
        }
        return Ok(());
    }
    // A user who is not a member learns nothing of the group — whether it exists, or its
    // flags — only that they are not a member (as reads answer). The admin is told more.
    let Some(info) = state.subs.channels.get(channel) else {
        return Err(if by_admin {
            SendDenied::ChannelNotFound
        } else {
            SendDenied::NotMember
        });
    };
    if !by_admin && !info.members.contains(from) {
        return Err(SendDenied::NotMember);
    }
    if info.flags.ban {
        return Err(SendDenied::ChannelBanned);
    }
    if info.flags.disband {
        return Err(SendDenied::ChannelDisbanded);
    }
    if info.flags.send_ban && !by_admin {
        return Err(SendDenied::SendBanned);
    }
    if !info.members.contains(from) {
        return Err(SendDenied::NotMember);
    }
    if info.deny.contains(from) {
        return Err(SendDenied::Denied);
    }
    if !info.allow.is_empty() && !info.allow.contains(from) {
        return Err(SendDenied::NotAllowed);
    }
    Ok(())
}

/// Whether `uid` may move their own cursors in `channel`: members of a group, banned or not
/// (a ban stops sends and history reads, not the delivery of what was sent before it: see
/// `messages::plan_sync`), or either user of a person channel.
pub fn can_move_cursor(state: &State, uid: &str, channel: &str) -> bool {
    state.subs.is_member(channel, uid)
}

/// Whether `uid` may read `channel`'s messages: members of a group (not banned), or either user
/// of a person channel.
pub fn can_read(state: &State, uid: &str, channel: &str) -> bool {
    if person_pair(channel).is_some() {
        return state.subs.is_member(channel, uid);
    }
    state
        .subs
        .channels
        .get(channel)
        .is_some_and(|c| !c.flags.ban && c.members.contains(uid))
}
