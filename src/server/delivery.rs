//! Delivery to online sessions: a registry of sessions per user and of online members per group
//! channel, so pushing a message costs O(online members) and nothing for offline ones.
//!
//! A session starts in catch-up: pushes only mark it *dirty* (it will plan again from the log).
//! Once its catch-up has found nothing new it goes *live*, and pushes queue the message itself.
//! A live session whose bounded queue is full is closed as too slow (code 4000); it resumes from
//! its cursor on reconnect.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use tidings_projections::ids::{ChannelId, Uid, person_pair};

/// One encoding of a frame: JSON text and CBOR binary.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) json: String,
    pub(crate) cbor: Bytes,
}

/// A frame as pushed to sessions: encoded once per viewpoint, shared by every recipient
/// session (a group has one viewpoint; a person channel has two, `@peer` for each side).
#[derive(Debug)]
pub(crate) struct Pushed {
    pub(crate) channel: ChannelId,
    pub(crate) seq: u64,
    /// A message (deduplicated by seq against catch-up) or a notice (a recall).
    pub(crate) is_message: bool,
    /// The session that sent the message: it has its sendack and is skipped.
    pub(crate) origin: Option<u64>,
    /// `(None, frame)` for everyone, or one frame per user.
    pub(crate) frames: Vec<(Option<Uid>, Frame)>,
}

impl Pushed {
    /// The frame `uid` gets.
    pub(crate) fn frame_for(&self, uid: &str) -> Option<&Frame> {
        self.frames
            .iter()
            .find(|(who, _)| who.as_deref().is_none_or(|w| w == uid))
            .map(|(_, f)| f)
    }
}

/// Why a session is being closed: a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CloseReason {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

pub(crate) const GOING_AWAY: CloseReason = CloseReason {
    code: 1001,
    reason: "going_away",
};
pub(crate) const SLOW_CONSUMER: CloseReason = CloseReason {
    code: 4000,
    reason: "slow_consumer",
};
pub(crate) const TOKEN_REVOKED: CloseReason = CloseReason {
    code: 4001,
    reason: "token_revoked",
};

#[derive(Debug, Default)]
struct Phase {
    live: bool,
    dirty: bool,
}

/// One WebSocket session as the registry sees it.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: u64,
    pub(crate) uid: Uid,
    tx: mpsc::Sender<Arc<Pushed>>,
    phase: Mutex<Phase>,
    closing: Mutex<Option<CloseReason>>,
    pub(crate) close: CancellationToken,
}

impl Session {
    /// Asks the session to close with `reason` (the first reason wins); returns whether this
    /// call was the first.
    pub(crate) fn close_with(&self, reason: CloseReason) -> bool {
        let mut c = self.closing.lock().unwrap_or_else(|p| p.into_inner());
        let first = c.is_none();
        c.get_or_insert(reason);
        self.close.cancel();
        first
    }

    /// The reason the session was asked to close, if it was.
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        *self.closing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Clears the dirty mark before a catch-up round.
    pub(crate) fn begin_catch_up_round(&self) {
        self.phase.lock().unwrap_or_else(|p| p.into_inner()).dirty = false;
    }

    /// Goes live unless a message arrived during the round (then: another round).
    pub(crate) fn try_go_live(&self) -> bool {
        let mut p = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        if p.dirty {
            return false;
        }
        p.live = true;
        true
    }

    fn offer(&self, msg: &Arc<Pushed>) -> bool {
        let mut p = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        if !p.live {
            // Catch-up will plan again and find the message in the log. (A notice sent
            // during catch-up is not replayed: the message itself carries the state.)
            p.dirty = true;
            return true;
        }
        self.tx.try_send(msg.clone()).is_ok()
    }
}

#[derive(Debug, Default)]
struct Registry {
    sessions: HashMap<Uid, Vec<Arc<Session>>>,
    /// Online members of group channels.
    online: HashMap<ChannelId, HashSet<Uid>>,
}

/// The registry.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    inner: RwLock<Registry>,
    next_id: AtomicU64,
}

/// What a push did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PushStats {
    pub(crate) users: u32,
    pub(crate) sessions: u32,
    pub(crate) dropped: u32,
    /// Sessions closed as too slow by this push.
    pub(crate) closed_slow: u32,
}

impl Delivery {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session of `uid`, online in `groups`. Returns it and the receiving end of
    /// its queue. The caller must hold the projections' read lock while calling, so that no
    /// membership change slips between reading `groups` and registering.
    pub(crate) fn register(
        &self,
        uid: &str,
        groups: impl Iterator<Item = ChannelId>,
        queue: usize,
        parent: &CancellationToken,
    ) -> (Arc<Session>, mpsc::Receiver<Arc<Pushed>>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            uid: uid.to_owned(),
            tx,
            phase: Mutex::new(Phase::default()),
            closing: Mutex::new(None),
            close: parent.child_token(),
        });
        let mut r = self.write();
        let first = !r.sessions.contains_key(uid);
        r.sessions
            .entry(uid.to_owned())
            .or_default()
            .push(session.clone());
        if first {
            for g in groups {
                r.online.entry(g).or_default().insert(uid.to_owned());
            }
        }
        (session, rx)
    }

    /// Removes a session; the user goes offline with their last one.
    pub(crate) fn unregister(&self, session: &Session, groups: impl Iterator<Item = ChannelId>) {
        let mut r = self.write();
        let Some(list) = r.sessions.get_mut(&session.uid) else {
            return;
        };
        list.retain(|s| s.id != session.id);
        if list.is_empty() {
            r.sessions.remove(&session.uid);
            for g in groups {
                if let Some(set) = r.online.get_mut(&g) {
                    set.remove(&session.uid);
                    if set.is_empty() {
                        r.online.remove(&g);
                    }
                }
            }
        }
    }

    /// Online users joined a group.
    pub(crate) fn joined(&self, channel: &str, uids: &[Uid]) {
        let mut r = self.write();
        let online: Vec<Uid> = uids
            .iter()
            .filter(|u| r.sessions.contains_key(u.as_str()))
            .cloned()
            .collect();
        if !online.is_empty() {
            r.online
                .entry(channel.to_owned())
                .or_default()
                .extend(online);
        }
    }

    /// Users left a group.
    pub(crate) fn left(&self, channel: &str, uids: &[Uid]) {
        let mut r = self.write();
        if let Some(set) = r.online.get_mut(channel) {
            for u in uids {
                set.remove(u);
            }
            if set.is_empty() {
                r.online.remove(channel);
            }
        }
    }

    /// A group was deleted.
    pub(crate) fn deleted(&self, channel: &str) {
        self.write().online.remove(channel);
    }

    /// Queues `msg` to every session of every online recipient.
    /// Whether a push to `channel` would reach any session other than `origin`.
    pub(crate) fn has_recipients(&self, channel: &str, origin: Option<u64>) -> bool {
        let r = self.read();
        let other = |uid: &str| {
            r.sessions
                .get(uid)
                .is_some_and(|ss| ss.iter().any(|s| Some(s.id) != origin))
        };
        match person_pair(channel) {
            Some((a, b)) => other(a) || other(b),
            None => r
                .online
                .get(channel)
                .is_some_and(|users| users.iter().any(|u| other(u))),
        }
    }

    pub(crate) fn push(&self, msg: &Arc<Pushed>) -> PushStats {
        let r = self.read();
        let mut stats = PushStats::default();
        let mut offer = |uid: &str| {
            if let Some(sessions) = r.sessions.get(uid) {
                stats.users += 1;
                for s in sessions {
                    if msg.origin == Some(s.id) {
                        continue;
                    }
                    stats.sessions += 1;
                    if !s.offer(msg) {
                        stats.dropped += 1;
                        if s.close_with(SLOW_CONSUMER) {
                            stats.closed_slow += 1;
                        }
                    }
                }
            }
        };
        match person_pair(&msg.channel) {
            Some((a, b)) => {
                offer(a);
                if a != b {
                    offer(b);
                }
            }
            None => {
                if let Some(users) = r.online.get(&msg.channel) {
                    for u in users {
                        offer(u);
                    }
                }
            }
        }
        stats
    }

    /// Closes every session of a user.
    pub(crate) fn close_user(&self, uid: &str, reason: CloseReason) {
        if let Some(sessions) = self.read().sessions.get(uid) {
            for s in sessions {
                s.close_with(reason);
            }
        }
    }

    /// Online users (for tests and metrics).
    pub(crate) fn online_users(&self) -> usize {
        self.read().sessions.len()
    }
}
