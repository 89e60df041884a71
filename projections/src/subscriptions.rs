//! Subscriptions: channel → members, flags, allowlist, denylist; user → channels.
//!
//! Subscribe and unsubscribe are idempotent: subscribing a member or unsubscribing a
//! non-member changes nothing. A person channel has no membership events: both users get it
//! in their channel set with its first message.

use std::collections::{BTreeMap, BTreeSet};

use crate::FastMap as HashMap;

use serde::{Deserialize, Serialize};

use crate::event::{ChannelFlags, ListKind, ListOp, ListOwner};
use crate::ids::{ChannelId, Uid, person_pair};

/// A group channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// Moderation flags.
    pub flags: ChannelFlags,
    /// Subscribed users.
    pub members: BTreeSet<Uid>,
    /// When non-empty, only these users may send.
    pub allow: BTreeSet<Uid>,
    /// These users may not send.
    pub deny: BTreeSet<Uid>,
    /// Seqs up to this one belong to an earlier group under the same id (deleted, then
    /// created again: seqs are never reused), whose messages this group's members may not
    /// read. 0 for a group created once.
    #[serde(default)]
    pub history_from: u64,
}

/// A user's own lists, applied to person channels with that user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLists {
    /// Who may message the user (consulted when `person_allowlist` is on).
    pub allow: BTreeSet<Uid>,
    /// Who may not message the user.
    pub deny: BTreeSet<Uid>,
}

/// The subscription projection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriptions {
    /// Existing group channels.
    pub channels: HashMap<ChannelId, ChannelInfo>,
    /// Each user's channels: groups they belong to and person channels with messages.
    pub user_channels: HashMap<Uid, BTreeSet<ChannelId>>,
    /// Users' own allow/deny lists.
    pub user_lists: BTreeMap<Uid, UserLists>,
}

fn apply_list(set: &mut BTreeSet<Uid>, op: ListOp, uids: &[Uid]) {
    match op {
        ListOp::Add => set.extend(uids.iter().cloned()),
        ListOp::Remove => {
            for u in uids {
                set.remove(u);
            }
        }
        ListOp::Set => *set = uids.iter().cloned().collect(),
    }
}

impl Subscriptions {
    /// Creates a group (or sets the flags of an existing one); `last_seq` is the channel's
    /// last seq so far, the history a new group does not inherit.
    pub(crate) fn create(&mut self, channel: &str, flags: ChannelFlags, last_seq: u64) {
        let info = self
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| ChannelInfo {
                history_from: last_seq,
                ..ChannelInfo::default()
            });
        info.flags = flags;
    }

    /// The last seq of an earlier group under this id ([`ChannelInfo::history_from`]).
    pub fn history_from(&self, channel: &str) -> u64 {
        self.channels.get(channel).map_or(0, |c| c.history_from)
    }

    pub(crate) fn update(&mut self, channel: &str, flags: ChannelFlags) {
        if let Some(c) = self.channels.get_mut(channel) {
            c.flags = flags;
        }
    }

    /// Removes a channel; returns its members.
    pub(crate) fn delete(&mut self, channel: &str) -> Vec<Uid> {
        let Some(info) = self.channels.remove(channel) else {
            return Vec::new();
        };
        for m in &info.members {
            self.leave(m, channel);
        }
        info.members.into_iter().collect()
    }

    /// Adds members; returns those who were not members before.
    pub(crate) fn subscribe(&mut self, channel: &str, uids: &[Uid]) -> Vec<Uid> {
        let Some(info) = self.channels.get_mut(channel) else {
            return Vec::new();
        };
        let added: Vec<Uid> = uids
            .iter()
            .filter(|u| info.members.insert((*u).clone()))
            .cloned()
            .collect();
        for u in &added {
            self.user_channels
                .entry(u.clone())
                .or_default()
                .insert(channel.to_owned());
        }
        added
    }

    /// Removes members; returns those who were members.
    pub(crate) fn unsubscribe(&mut self, channel: &str, uids: &[Uid]) -> Vec<Uid> {
        let Some(info) = self.channels.get_mut(channel) else {
            return Vec::new();
        };
        let removed: Vec<Uid> = uids
            .iter()
            .filter(|u| info.members.remove(u.as_str()))
            .cloned()
            .collect();
        for u in &removed {
            self.leave(u, channel);
        }
        removed
    }

    fn leave(&mut self, uid: &str, channel: &str) {
        if let Some(set) = self.user_channels.get_mut(uid) {
            set.remove(channel);
            if set.is_empty() {
                self.user_channels.remove(uid);
            }
        }
    }

    pub(crate) fn change_list(
        &mut self,
        owner: &ListOwner,
        list: ListKind,
        op: ListOp,
        uids: &[Uid],
    ) {
        let set = match owner {
            ListOwner::Channel(c) => match self.channels.get_mut(c) {
                Some(info) => match list {
                    ListKind::Allow => &mut info.allow,
                    ListKind::Deny => &mut info.deny,
                },
                None => return,
            },
            ListOwner::User(u) => {
                let lists = self.user_lists.entry(u.clone()).or_default();
                match list {
                    ListKind::Allow => &mut lists.allow,
                    ListKind::Deny => &mut lists.deny,
                }
            }
        };
        apply_list(set, op, uids);
        if let ListOwner::User(u) = owner
            && self
                .user_lists
                .get(u)
                .is_some_and(|l| l.allow.is_empty() && l.deny.is_empty())
        {
            self.user_lists.remove(u);
        }
    }

    /// A message in a person channel puts the channel in both users' sets.
    pub(crate) fn person_message(&mut self, channel: &str) {
        if let Some((a, b)) = person_pair(channel) {
            for u in [a, b] {
                // Every message of a person channel comes here: allocate only the first time.
                if self
                    .user_channels
                    .get(u)
                    .is_some_and(|chs| chs.contains(channel))
                {
                    continue;
                }
                self.user_channels
                    .entry(u.to_owned())
                    .or_default()
                    .insert(channel.to_owned());
            }
        }
    }

    /// Whether `uid` may read `channel`: a member of the group, or one of the person pair.
    pub fn is_member(&self, channel: &str, uid: &str) -> bool {
        match person_pair(channel) {
            Some((a, b)) => a == uid || b == uid,
            None => self
                .channels
                .get(channel)
                .is_some_and(|c| c.members.contains(uid)),
        }
    }

    /// The channels of a user.
    pub fn channels_of(&self, uid: &str) -> impl Iterator<Item = &ChannelId> {
        self.user_channels.get(uid).into_iter().flatten()
    }

    /// The users a message in `channel` goes to.
    pub fn recipients<'a>(&'a self, channel: &'a str) -> Box<dyn Iterator<Item = &'a str> + 'a> {
        match person_pair(channel) {
            Some((a, b)) if a == b => Box::new(std::iter::once(a)),
            Some((a, b)) => Box::new([a, b].into_iter()),
            None => Box::new(
                self.channels
                    .get(channel)
                    .into_iter()
                    .flat_map(|c| c.members.iter().map(String::as_str)),
            ),
        }
    }
}
