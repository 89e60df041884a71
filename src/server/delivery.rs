//! Delivery to online sessions: a registry of sessions per user and of online members per group
//! channel, so pushing a message costs O(online members) and nothing for offline ones.
//!
//! A session starts in catch-up: pushes only mark it *dirty* (it will plan again from the log).
//! Once its catch-up has found nothing new it goes *live*, and pushes queue the message itself.
//! A live session whose bounded queue is full is closed as too slow (code 4000); it resumes from
//! its cursor on reconnect.
//!
//! Pushes travel as *runs*: the messages of one channel that one applier pass applied, in seq
//! order, shared by every recipient. A session is woken once per run, not once per message,
//! and writes the run with one flush. The queue limit still counts messages (a run is cut at
//! `MAX_RUN` and always fits an empty queue).
//!
//! Notices for one user (a `read` frame when their read position moves) travel the same
//! queues under the same limits ([`Delivery::push_to_user`]).
//!
//! The applier applies a pass of events to the projections, then updates the online members
//! and pushes, in log order. A session registers with the user's groups as the projections
//! hold them, which can be ahead of the pushes still to come from that pass: a session
//! registered just after a join was applied would be pushed the messages sent before it. So
//! a session gets only the events applied after its registration (`Session::from_offset`);
//! those before it reach the client by catch-up or sync, and only if they are owed to it.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use tidings_projections::ids::{ChannelId, Uid, person_pair};
use tidings_projections::{FastMap as HashMap, FastSet as HashSet};

use crate::render::cbor_frame;

/// One encoding of a frame: JSON text and CBOR binary (both shared, not copied, per session).
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) json: Utf8Bytes,
    pub(crate) cbor: Bytes,
}

impl Frame {
    /// `v` in both encodings.
    pub(crate) fn new(v: &serde_json::Value) -> Frame {
        Frame {
            cbor: cbor_frame(v),
            json: v.to_string().into(),
        }
    }
}

/// A frame as pushed to sessions: encoded once per viewpoint, shared by every recipient
/// session (a group has one viewpoint; a person channel has two, `@peer` for each side).
#[derive(Debug)]
pub(crate) struct Pushed {
    pub(crate) channel: ChannelId,
    pub(crate) seq: u64,
    /// The log offset of the event it comes from: a session registered after that event was
    /// applied does not get it ([`Delivery::push`]). `u64::MAX` for a notice that is no event
    /// of the log (a `read` frame, [`Delivery::push_to_user`], which does not compare it).
    pub(crate) offset: u64,
    /// A message (deduplicated by seq against catch-up) or a notice (a recall).
    pub(crate) is_message: bool,
    /// The session that sent the message: it has its sendack and is skipped.
    pub(crate) origin: Option<u64>,
    /// `(None, frame)` for everyone, or one frame per user.
    pub(crate) frames: Vec<(Option<Uid>, Frame)>,
}

impl Pushed {
    /// The bytes its frames hold (what a queued copy keeps alive).
    pub(crate) fn bytes(&self) -> usize {
        self.frames
            .iter()
            .map(|(_, f)| f.json.len() + f.cbor.len())
            .sum()
    }

    /// The bytes of the frames of a run.
    pub(crate) fn run_bytes(run: &[Arc<Pushed>]) -> usize {
        run.iter().map(|p| p.bytes()).sum()
    }

    /// The frame `uid` gets.
    pub(crate) fn frame_for(&self, uid: &str) -> Option<&Frame> {
        self.frames
            .iter()
            .find(|(who, _)| who.as_deref().is_none_or(|w| w == uid))
            .map(|(_, f)| f)
    }
}

/// The messages of one channel from one applier pass, in order; shared by all recipients.
/// (A thin pointer: every session's queue holds its slots from the start.)
pub(crate) type Run = Arc<Vec<Arc<Pushed>>>;

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
/// The session's token reached its expiry (`ws/mod.rs` keeps a timer for it).
pub(crate) const TOKEN_EXPIRED: CloseReason = CloseReason {
    code: 4001,
    reason: "token_expired",
};
pub(crate) const IDLE_TIMEOUT: CloseReason = CloseReason {
    code: 4002,
    reason: "idle_timeout",
};

#[derive(Debug, Default)]
struct Phase {
    live: bool,
    /// A message was pushed during the catch-up round (and left to the next round).
    dirty: bool,
    /// Catching up, and every push is queued as when live ([`Session::queue_from_now`]).
    queueing: bool,
}

/// What bounds a session: its queue (messages and bytes) and the user's sessions at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLimits {
    pub(crate) queue: usize,
    pub(crate) queue_bytes: usize,
    pub(crate) per_user: usize,
}

/// Whose a session is: the user, and the hash of the token it was opened with.
#[derive(Debug, Clone)]
pub(crate) struct SessionUser {
    pub(crate) uid: Uid,
    /// `None`: no token to revoke it by (only the registry's own tests open such sessions).
    pub(crate) token_hash: Option<Bytes>,
}

impl From<&str> for SessionUser {
    fn from(uid: &str) -> Self {
        SessionUser {
            uid: uid.to_owned(),
            token_hash: None,
        }
    }
}

/// One WebSocket session as the registry sees it.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: u64,
    pub(crate) uid: Uid,
    /// The hash of the token the session was opened with: revoking that token closes it, and
    /// the user's other sessions stay ([`Delivery::close_token`]).
    token_hash: Option<Bytes>,
    /// The projections' next offset when the session registered: its groups are those of
    /// that point, so pushes of earlier events (the applier may still be handing out a pass
    /// it applied before) are not for it. A group joined in that pass would otherwise get the
    /// session the messages sent before the join (catch-up and sync already leave them out).
    from_offset: u64,
    tx: mpsc::Sender<Run>,
    /// Messages queued and not yet taken by the session; at most `limit`.
    queued: AtomicUsize,
    limit: usize,
    /// Bytes of the frames queued (shared with other sessions, but kept alive by this
    /// queue); at most `limit_bytes`: a count alone let a session pin ~150 KB per message.
    queued_bytes: AtomicUsize,
    limit_bytes: usize,
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

    /// Closes a session that refused a run ([`Session::offer`]) as too slow, unless it refused
    /// it because it is closing already: a shutdown cancels every session's token (their
    /// parent) with no reason of its own, and until 2026-12-03 a push refused meanwhile closed
    /// busy sessions with 4000 `slow_consumer` instead of 1001, counted as slow (review).
    /// Returns whether this call closed it.
    fn close_slow(&self) -> bool {
        !self.close.is_cancelled() && self.close_with(SLOW_CONSUMER)
    }

    /// The reason the session was asked to close, if it was.
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        *self.closing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Clears the dirty mark before a catch-up round.
    pub(crate) fn begin_catch_up_round(&self) {
        self.phase.lock().unwrap_or_else(|p| p.into_inner()).dirty = false;
    }

    /// Goes live unless a message arrived during the round and was left to the next round
    /// (then: another round); while queueing nothing is left to a round.
    pub(crate) fn try_go_live(&self) -> bool {
        let mut p = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        if p.dirty && !p.queueing {
            return false;
        }
        p.live = true;
        true
    }

    /// From now on every push is queued, messages too, as once live — at the cost of queue
    /// room, which the session does not read until it is live. A catch-up round that planned
    /// all there was asks for it: without it, in a channel busy enough that a message arrives
    /// during every round, the session caught up round after round and never went live (a
    /// plan of every channel of the user per round, not a push). Its next round's
    /// plan then holds everything applied before it, and whatever is pushed after is queued: a
    /// round that planned all there was ([`Session::go_live_if_queueing`]) goes live; messages
    /// both planned and queued are skipped once live (by seq, `ws/mod.rs`).
    pub(crate) fn queue_from_now(&self) {
        self.phase
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queueing = true;
    }

    /// Goes live when queueing ([`Session::queue_from_now`]): called after a round whose plan
    /// held every message not yet sent (none left past its page).
    pub(crate) fn go_live_if_queueing(&self) -> bool {
        let mut p = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        if p.queueing {
            p.live = true;
        }
        p.live
    }

    /// The session took `n` queued messages of `bytes` off its queue.
    pub(crate) fn taken(&self, n: usize, bytes: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// What of `run` is for this session: the events applied since it registered. A run is in
    /// log order, so that is its tail; all of it but in the moment after a registration.
    /// `None` when nothing of it is.
    fn since_registered<'r>(&self, run: &'r Run) -> Option<Cow<'r, Run>> {
        let before = run
            .iter()
            .take_while(|p| p.offset < self.from_offset)
            .count();
        if before == 0 {
            Some(Cow::Borrowed(run))
        } else if before == run.len() {
            None
        } else {
            Some(Cow::Owned(Arc::new(run.as_slice()[before..].to_vec())))
        }
    }

    fn offer(&self, run: &Run) -> bool {
        // A session asked to close takes nothing more. After a run was refused as too much, a
        // later smaller one could fit again (the session took some meanwhile) and would reach
        // the client with the refused messages missing before it: a gap on the wire that a
        // client acking what it got would turn into lost messages. Refused instead, the whole
        // remainder comes back in order by catch-up on reconnect.
        if self.close.is_cancelled() {
            return false;
        }
        let mut p = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        let notices: Run;
        let run = if p.live || p.queueing {
            run
        } else {
            // Catch-up will plan again and find the message in the log. A notice (a recall)
            // is not in that replay when its message went out in an earlier page: the
            // notices alone wait in the queue, read once the session is live (the messages
            // would only be skipped then, yet count against the queue's limit).
            p.dirty = true;
            if run.iter().all(|x| x.is_message) {
                return true;
            }
            notices = Arc::new(run.iter().filter(|x| !x.is_message).cloned().collect());
            &notices
        };
        // A run is taken whole when the queue is empty, so a run longer than the limit still
        // reaches a session that keeps up (the applier also cuts runs to MAX_RUN).
        let n = run.len();
        let bytes = Pushed::run_bytes(run);
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        let before_bytes = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        let refused =
            before != 0 && (before + n > self.limit || before_bytes + bytes > self.limit_bytes);
        if refused || self.tx.try_send(run.clone()).is_err() {
            self.taken(n, bytes);
            return false;
        }
        true
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

/// What a push of a run did.
#[derive(Debug, Default, Clone)]
pub(crate) struct PushStats {
    pub(crate) users: u32,
    /// Sessions the run was offered to.
    pub(crate) sessions: u32,
    pub(crate) dropped: u32,
    /// Sessions closed as too slow by this push.
    pub(crate) closed_slow: u32,
    /// Sessions offered the run that sent some of its messages (they skip those), and
    /// whether the offer was dropped.
    pub(crate) origins_offered: Vec<(u64, bool)>,
}

impl PushStats {
    /// `(sessions, dropped)` for `msg`: its sender's session skips it, so it does not count.
    pub(crate) fn for_message(&self, msg: &Pushed) -> (u32, u32) {
        let own = msg
            .origin
            .and_then(|o| self.origins_offered.iter().find(|(id, _)| *id == o));
        match own {
            Some((_, dropped)) => (
                self.sessions.saturating_sub(1),
                self.dropped.saturating_sub(u32::from(*dropped)),
            ),
            None => (self.sessions, self.dropped),
        }
    }
}

/// Runs longer than this are cut (one session wake and one write per cut).
pub(crate) const MAX_RUN: usize = 256;

impl Delivery {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// How many sessions `uid` holds.
    pub(crate) fn sessions_of(&self, uid: &str) -> usize {
        self.read().sessions.get(uid).map_or(0, Vec::len)
    }

    /// Registers a session of `user` (a user id, and the hash of the token it was opened
    /// with), online in `groups`, the user's groups as the projections hold them with
    /// `from_offset` their next offset. Returns it and the receiving end of its queue; `None`
    /// when the user already holds `max_sessions`. The caller must hold the projections' read
    /// lock while calling, so that no membership change slips between reading `groups` and
    /// registering.
    pub(crate) fn register(
        &self,
        user: impl Into<SessionUser>,
        groups: impl Iterator<Item = ChannelId>,
        from_offset: u64,
        limits: SessionLimits,
        parent: &CancellationToken,
        live: bool,
    ) -> Option<(Arc<Session>, mpsc::Receiver<Run>)> {
        let SessionUser { uid, token_hash } = user.into();
        let uid = uid.as_str();
        let SessionLimits {
            queue,
            queue_bytes,
            per_user: max_sessions,
        } = limits;
        if self.sessions_of(uid) >= max_sessions {
            return None;
        }
        let (tx, rx) = mpsc::channel(queue.max(1));
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            uid: uid.to_owned(),
            token_hash,
            from_offset,
            tx,
            queued: AtomicUsize::new(0),
            limit: queue.max(1),
            queued_bytes: AtomicUsize::new(0),
            limit_bytes: queue_bytes.max(1),
            // Live from the start (a session without catch-up): no push between registering
            // and going live can be taken for one that catch-up will plan again.
            phase: Mutex::new(Phase {
                live,
                dirty: false,
                queueing: false,
            }),
            closing: Mutex::new(None),
            close: parent.child_token(),
        });
        let mut r = self.write();
        // Checked again under the write lock: two connections racing past the first check.
        // (Before any entry is made: an empty list would make the user look online.)
        let held = r.sessions.get(uid).map_or(0, Vec::len);
        if held >= max_sessions {
            return None;
        }
        let first = held == 0;
        r.sessions
            .entry(uid.to_owned())
            .or_default()
            .push(session.clone());
        if first {
            for g in groups {
                r.online.entry(g).or_default().insert(uid.to_owned());
            }
        }
        Some((session, rx))
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

    /// Queues `run` (one channel's messages) to every session of every online recipient, once
    /// per session. A session that sent every message of the run is skipped, and a session
    /// gets only what was applied after it registered.
    pub(crate) fn push(&self, run: &Run) -> PushStats {
        let mut stats = PushStats::default();
        let Some(first) = run.first() else {
            return stats;
        };
        let mut origins: Vec<u64> = run.iter().filter_map(|m| m.origin).collect();
        origins.sort_unstable();
        origins.dedup();
        let only_from = match origins.as_slice() {
            [o] if run.iter().all(|m| m.origin == Some(*o)) => Some(*o),
            _ => None,
        };
        let r = self.read();
        let mut offer = |uid: &str| {
            if let Some(sessions) = r.sessions.get(uid) {
                stats.users += 1;
                for s in sessions {
                    if only_from == Some(s.id) {
                        continue;
                    }
                    let Some(run) = s.since_registered(run) else {
                        continue;
                    };
                    stats.sessions += 1;
                    let taken = s.offer(&run);
                    if origins.contains(&s.id) {
                        stats.origins_offered.push((s.id, !taken));
                    }
                    if !taken {
                        stats.dropped += 1;
                        if s.close_slow() {
                            stats.closed_slow += 1;
                        }
                    }
                }
            }
        };
        match person_pair(&first.channel) {
            Some((a, b)) => {
                offer(a);
                if a != b {
                    offer(b);
                }
            }
            None => {
                if let Some(users) = r.online.get(&first.channel) {
                    for u in users {
                        offer(u);
                    }
                }
            }
        }
        stats
    }

    /// Queues a notice to every session of `uid` but `origin` (the session it comes from), as
    /// [`Delivery::push`] queues a run: a session still catching up gets it once live, and one
    /// whose queue is full is closed as too slow; nothing waits for a session. `notice` is
    /// built only when there is a session to take it.
    pub(crate) fn push_to_user(
        &self,
        uid: &str,
        origin: Option<u64>,
        notice: impl FnOnce() -> Pushed,
    ) -> PushStats {
        let mut stats = PushStats::default();
        let r = self.read();
        let Some(sessions) = r.sessions.get(uid) else {
            return stats;
        };
        let mut others = sessions.iter().filter(|s| Some(s.id) != origin).peekable();
        if others.peek().is_none() {
            return stats;
        }
        let run: Run = Arc::new(vec![Arc::new(notice())]);
        stats.users = 1;
        for s in others {
            stats.sessions += 1;
            if !s.offer(&run) {
                stats.dropped += 1;
                if s.close_slow() {
                    stats.closed_slow += 1;
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

    /// Closes the sessions of `uid` opened with the token stored under `token_hash`; the
    /// user's other sessions stay.
    pub(crate) fn close_token(&self, uid: &str, token_hash: &[u8], reason: CloseReason) {
        if let Some(sessions) = self.read().sessions.get(uid) {
            for s in sessions {
                if s.token_hash.as_deref() == Some(token_hash) {
                    s.close_with(reason);
                }
            }
        }
    }

    /// Online users (for tests and metrics).
    pub(crate) fn online_users(&self) -> usize {
        self.read().sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(channel: &str, seq: u64, origin: Option<u64>) -> Arc<Pushed> {
        Arc::new(Pushed {
            channel: channel.into(),
            seq,
            // One event in ten a message.
            offset: 10 * seq,
            is_message: true,
            origin,
            frames: vec![(
                None,
                Frame {
                    json: format!("{seq}").into(),
                    cbor: Bytes::new(),
                },
            )],
        })
    }

    fn live_session(d: &Delivery, uid: &str, queue: usize) -> (Arc<Session>, mpsc::Receiver<Run>) {
        let (s, rx) = d
            .register(
                uid,
                ["g".to_owned()].into_iter(),
                0,
                SessionLimits {
                    queue,
                    queue_bytes: usize::MAX,
                    per_user: 8,
                },
                &CancellationToken::new(),
                false,
            )
            .unwrap();
        assert!(s.try_go_live());
        (s, rx)
    }

    /// A session closing with the server (its parent token cancelled, no reason given) that a
    /// push meets is not closed as a slow consumer: the session says 1001 `going_away`. One
    /// whose queue is full is, as before.
    #[test]
    fn a_push_meeting_a_shutdown_does_not_close_sessions_as_slow() {
        let d = Delivery::default();
        let stop = CancellationToken::new();
        let limits = SessionLimits {
            queue: 1,
            queue_bytes: usize::MAX,
            per_user: 8,
        };
        let (a, _rx_a) = d
            .register("a", ["g".to_owned()].into_iter(), 0, limits, &stop, true)
            .unwrap();
        let (b, _rx_b) = d
            .register(
                "b",
                ["g".to_owned()].into_iter(),
                0,
                limits,
                &CancellationToken::new(),
                true,
            )
            .unwrap();
        assert_eq!(d.push(&Arc::new(vec![msg("g", 1, None)])).dropped, 0);
        stop.cancel();
        // a is closing; b's queue (one run) is full.
        let stats = d.push(&Arc::new(vec![msg("g", 2, None)]));
        assert_eq!((stats.dropped, stats.closed_slow), (2, 1));
        assert_eq!(a.close_reason(), None);
        assert_eq!(b.close_reason(), Some(SLOW_CONSUMER));
        let notice = || Pushed {
            channel: "g".into(),
            seq: 3,
            offset: u64::MAX,
            is_message: false,
            origin: None,
            frames: vec![(
                None,
                Frame {
                    json: "3".into(),
                    cbor: Bytes::new(),
                },
            )],
        };
        let stats = d.push_to_user("a", None, notice);
        assert_eq!((stats.dropped, stats.closed_slow), (1, 0));
        assert_eq!(a.close_reason(), None);
    }

    /// A user holds at most `max_sessions`; a session that goes frees its place.
    #[test]
    fn a_user_holds_at_most_max_sessions() {
        let d = Delivery::default();
        let reg = |uid: &str| {
            d.register(
                uid,
                std::iter::empty(),
                0,
                SessionLimits {
                    queue: 4,
                    queue_bytes: usize::MAX,
                    per_user: 2,
                },
                &CancellationToken::new(),
                false,
            )
            .map(|(s, _)| s)
        };
        let first = reg("a").unwrap();
        let _second = reg("a").unwrap();
        assert!(reg("a").is_none());
        assert!(reg("b").is_some(), "per user");
        assert_eq!(d.sessions_of("a"), 2);
        d.unregister(&first, std::iter::empty());
        assert!(reg("a").is_some());
    }

    #[test]
    fn a_run_reaches_each_session_once_and_skips_a_sender_of_all_of_it() {
        let d = Delivery::default();
        let (a, mut rx_a) = live_session(&d, "a", 16);
        let (b, mut rx_b) = live_session(&d, "b", 16);

        // a sent message 1 of three: a is offered the run (it skips its own message itself).
        let run: Run = vec![
            msg("g", 1, Some(a.id)),
            msg("g", 2, None),
            msg("g", 3, None),
        ]
        .into();
        let stats = d.push(&run);
        assert_eq!((stats.users, stats.sessions, stats.dropped), (2, 2, 0));
        assert_eq!(
            stats.for_message(&run[0]),
            (1, 0),
            "message 1 goes to b only"
        );
        assert_eq!(stats.for_message(&run[1]), (2, 0));
        assert_eq!(rx_a.try_recv().map(|r| r.len()).ok(), Some(3));
        assert_eq!(rx_b.try_recv().map(|r| r.len()).ok(), Some(3));

        // A run a sent all of is not offered to a at all.
        let run: Run = Arc::new(vec![msg("g", 4, Some(a.id)), msg("g", 5, Some(a.id))]);
        let stats = d.push(&run);
        assert_eq!(stats.sessions, 1);
        assert!(rx_a.try_recv().is_err());
        assert_eq!(rx_b.try_recv().map(|r| r.len()).ok(), Some(2));
        drop(b);
    }

    /// A session without catch-up is live from its registration: a message pushed before its
    /// task runs is queued, not left to a catch-up that will not come (a session registered,
    /// then made live, dropped a push in between).
    #[test]
    fn a_session_without_catch_up_is_live_from_its_registration() {
        let d = Delivery::default();
        let (_s, mut rx) = d
            .register(
                "a",
                ["g".to_owned()].into_iter(),
                0,
                SessionLimits {
                    queue: 16,
                    queue_bytes: usize::MAX,
                    per_user: 8,
                },
                &CancellationToken::new(),
                true,
            )
            .unwrap();
        assert_eq!(d.push(&Arc::new(vec![msg("g", 1, None)])).dropped, 0);
        assert_eq!(rx.try_recv().map(|r| r.len()).ok(), Some(1));
    }

    /// The applier applies a pass, then pushes it; a session registered in between has the
    /// groups of after the pass. Here bob joined `g` at offset 11, after message 1 (offset 10):
    /// its push, handed out after the registration, went to bob, a message sent before he
    /// joined (the join rule's catch-up and sync leave it out). Now a session gets only what
    /// was applied after it registered (without that, `rx` holds message 1).
    #[test]
    fn a_session_gets_only_what_was_applied_after_it_registered() {
        let d = Delivery::default();
        let limits = SessionLimits {
            queue: 16,
            queue_bytes: usize::MAX,
            per_user: 8,
        };
        let token = CancellationToken::new();
        // Registered (without catch-up: live at once) when the projections' next offset is 12.
        let (_s, mut rx) = d
            .register(
                "bob",
                ["g".to_owned()].into_iter(),
                12,
                limits,
                &token,
                true,
            )
            .unwrap();
        let stats = d.push(&Arc::new(vec![msg("g", 1, None)]));
        assert_eq!((stats.sessions, stats.dropped), (0, 0));
        assert!(rx.try_recv().is_err(), "sent before bob joined");
        // What is applied after the registration reaches it.
        assert_eq!(d.push(&Arc::new(vec![msg("g", 2, None)])).sessions, 1);
        assert_eq!(rx.try_recv().map(|r| r[0].seq).ok(), Some(2));
        // Of a run from before and after the registration, the part after.
        let run: Run = Arc::new(vec![msg("g", 1, None), msg("g", 3, None)]);
        assert_eq!(d.push(&run).sessions, 1);
        let got = rx.try_recv().unwrap();
        assert_eq!(got.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![3]);

        // A session catching up is not sent it, nor sent into another round for it: it plans
        // from projections that hold it already.
        let (catching_up, _rx) = d
            .register(
                "carol",
                ["g".to_owned()].into_iter(),
                12,
                limits,
                &token,
                false,
            )
            .unwrap();
        d.push(&Arc::new(vec![msg("g", 1, None)]));
        assert!(catching_up.try_go_live());
    }

    /// `uid`'s session in group `g`, catching up, with a queue of 16 messages.
    fn catching_up_in_g(d: &Delivery, uid: &str) -> (Arc<Session>, mpsc::Receiver<Run>) {
        let limits = SessionLimits {
            queue: 16,
            queue_bytes: usize::MAX,
            per_user: 8,
        };
        let token = CancellationToken::new();
        d.register(uid, ["g".to_owned()].into_iter(), 0, limits, &token, false)
            .unwrap()
    }

    /// A round that found nothing while a message came (dirty) asks to queue from then on:
    /// messages pushed since are queued, not left to a round, and the session goes live at the
    /// next empty round — or after a round that planned everything — whatever comes meanwhile.
    #[test]
    fn a_session_queueing_at_the_end_of_catch_up_takes_messages_and_goes_live() {
        let d = Delivery::default();
        let (s, mut rx) = catching_up_in_g(&d, "a");
        d.push(&Arc::new(vec![msg("g", 1, None)]));
        assert!(rx.try_recv().is_err());
        assert!(!s.try_go_live());
        // Not queueing: a round that planned everything does not end the catch-up.
        assert!(!s.go_live_if_queueing());
        s.queue_from_now();
        s.begin_catch_up_round();
        d.push(&Arc::new(vec![msg("g", 2, None)]));
        let queued = rx.try_recv().unwrap();
        assert_eq!((queued.len(), queued[0].seq), (1, 2));
        // Dirty or not, it goes live now.
        assert!(s.go_live_if_queueing());
        assert!(s.try_go_live());
        let (t, mut t_rx) = catching_up_in_g(&d, "b");
        d.push(&Arc::new(vec![msg("g", 3, None)]));
        t.queue_from_now();
        d.push(&Arc::new(vec![msg("g", 4, None)]));
        assert!(t.try_go_live());
        // Only what came once it was queueing.
        let queued = t_rx.try_recv().unwrap();
        assert_eq!((queued.len(), queued[0].seq), (1, 4));
        assert!(t_rx.try_recv().is_err());
    }

    #[test]
    fn a_notice_during_catch_up_waits_in_the_queue_a_message_does_not() {
        let d = Delivery::default();
        let (s, mut rx) = catching_up_in_g(&d, "a");
        // Catching up: a message is left to the next catch-up round.
        assert_eq!(d.push(&Arc::new(vec![msg("g", 1, None)])).dropped, 0);
        assert!(rx.try_recv().is_err());
        // A recall of a message catch-up may already have sent is queued for after it.
        let recall = Arc::new(Pushed {
            channel: "g".into(),
            seq: 1,
            offset: 25,
            is_message: false,
            origin: None,
            frames: vec![(
                None,
                Frame {
                    json: "recall".into(),
                    cbor: Bytes::new(),
                },
            )],
        });
        // In a run with messages: the recall alone is queued (the messages would only count
        // against the limit of a session still catching up).
        let run: Run = Arc::new(vec![msg("g", 2, None), recall, msg("g", 3, None)]);
        assert_eq!(d.push(&run).dropped, 0);
        let queued = rx.try_recv().unwrap();
        assert_eq!(queued.len(), 1);
        assert!(!queued[0].is_message);
        // Both marked the round dirty: catch-up plans again before going live.
        assert!(!s.try_go_live());
    }

    /// A notice for one user reaches each of their sessions but the one it comes from, and
    /// nobody else; one whose queue is full is closed as too slow, as for a message. Built only
    /// when a session takes it.
    #[test]
    fn a_notice_to_a_user_skips_its_origin_and_closes_a_full_queue() {
        fn notice(seq: u64) -> Pushed {
            Pushed {
                channel: "g".into(),
                seq,
                offset: u64::MAX,
                is_message: false,
                origin: None,
                frames: Vec::new(),
            }
        }
        let d = Delivery::default();
        let (a, mut rx_a) = live_session(&d, "a", 1);
        let (a2, mut rx_a2) = live_session(&d, "a", 1);
        let (b, mut rx_b) = live_session(&d, "b", 16);
        let stats = d.push_to_user("a", Some(a.id), || notice(1));
        assert_eq!((stats.sessions, stats.dropped), (1, 0));
        assert_eq!(rx_a2.try_recv().map(|r| r[0].seq).ok(), Some(1));
        assert!(rx_a.try_recv().is_err(), "not the session it comes from");
        assert!(rx_b.try_recv().is_err(), "not another user");
        // a2 has not taken the first off its queue (a limit of 1): closed as too slow.
        let stats = d.push_to_user("a", None, || notice(2));
        assert_eq!(
            (stats.sessions, stats.dropped, stats.closed_slow),
            (2, 1, 1)
        );
        assert_eq!(a2.close_reason(), Some(SLOW_CONSUMER));
        assert_eq!(rx_a.try_recv().map(|r| r[0].seq).ok(), Some(2));
        // No other session, or none at all: nothing is built.
        d.push_to_user("b", Some(b.id), || panic!("built for nobody"));
        d.push_to_user("c", None, || panic!("built for nobody"));
    }

    /// Revoking one token closes the sessions opened with it, not the user's others (nor
    /// another user's); revoking all of the user's closes every one.
    #[test]
    fn revoking_a_token_closes_only_its_sessions() {
        let d = Delivery::default();
        let register = |uid: &str, token: u8| {
            let user = SessionUser {
                uid: uid.to_owned(),
                token_hash: Some(Bytes::from(vec![token; 32])),
            };
            let limits = SessionLimits {
                queue: 4,
                queue_bytes: usize::MAX,
                per_user: 8,
            };
            let parent = CancellationToken::new();
            d.register(user, std::iter::empty(), 0, limits, &parent, true)
                .unwrap()
                .0
        };
        let (lost, lost_too, kept) = (register("a", 1), register("a", 1), register("a", 2));
        let other = register("b", 1);
        d.close_token("a", &[1; 32], TOKEN_REVOKED);
        assert_eq!(lost.close_reason(), Some(TOKEN_REVOKED));
        assert_eq!(lost_too.close_reason(), Some(TOKEN_REVOKED));
        assert_eq!(kept.close_reason(), None, "another token of the user");
        assert_eq!(other.close_reason(), None, "another user");
        d.close_user("a", TOKEN_REVOKED);
        assert_eq!(kept.close_reason(), Some(TOKEN_REVOKED));
    }

    #[test]
    fn the_queue_limit_counts_messages_not_runs() {
        let d = Delivery::default();
        let (s, mut rx) = live_session(&d, "a", 5);
        let run3: Run = Arc::new((1..=3).map(|q| msg("g", q, None)).collect());
        assert_eq!(d.push(&run3).dropped, 0);
        // What was taken off the queue frees room again.
        assert_eq!(rx.try_recv().map(|r| r.len()).ok(), Some(3));
        s.taken(3, 3);
        assert_eq!(d.push(&run3).dropped, 0);
        // 3 queued + 3 more > 5: the session is closed as too slow.
        let stats = d.push(&run3);
        assert_eq!((stats.dropped, stats.closed_slow), (1, 1));
        assert_eq!(s.close_reason(), Some(SLOW_CONSUMER));
    }

    /// Bytes count too: a few large messages fill a session's queue long before 4,096 do.
    #[test]
    fn the_queue_limit_counts_bytes_too() {
        let d = Delivery::default();
        let (s, mut rx) = d
            .register(
                "a",
                ["g".to_owned()].into_iter(),
                0,
                SessionLimits {
                    queue: 100,
                    queue_bytes: 10,
                    per_user: 8,
                },
                &CancellationToken::new(),
                false,
            )
            .unwrap();
        assert!(s.try_go_live());
        let big = |seq: u64| -> Run {
            Arc::new(vec![Arc::new(Pushed {
                channel: "g".into(),
                seq,
                offset: seq,
                is_message: true,
                origin: None,
                frames: vec![(
                    None,
                    Frame {
                        json: "x".repeat(4).into(),
                        cbor: Bytes::from_static(b"yy"),
                    },
                )],
            })])
        };
        // An empty queue takes a run whatever its size; 6 + 6 bytes > 10 do not fit.
        assert_eq!(d.push(&big(1)).dropped, 0);
        let stats = d.push(&big(2));
        assert_eq!((stats.dropped, stats.closed_slow), (1, 1));
        assert_eq!(s.close_reason(), Some(SLOW_CONSUMER));
        assert_eq!(rx.try_recv().map(|r| r[0].seq).ok(), Some(1));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_session_closed_as_too_slow_takes_no_later_run() {
        let d = Delivery::default();
        let (s, mut rx) = live_session(&d, "a", 5);
        let run = |seqs: std::ops::RangeInclusive<u64>| -> Run {
            Arc::new(seqs.map(|q| msg("g", q, None)).collect())
        };
        assert_eq!(d.push(&run(1..=3)).dropped, 0);
        // 4..=6 does not fit: refused, the session is asked to close.
        assert_eq!(d.push(&run(4..=6)).closed_slow, 1);
        // The session takes 1..=3 before it sees the close; 7 would fit the queue again, but
        // it must not reach the client without 4..=6 before it.
        assert_eq!(rx.try_recv().map(|r| r.len()).ok(), Some(3));
        s.taken(3, 3);
        let stats = d.push(&run(7..=7));
        assert_eq!((stats.dropped, stats.closed_slow), (1, 0));
        assert!(rx.try_recv().is_err(), "nothing after the refused run");
    }

    #[test]
    fn a_run_longer_than_the_limit_reaches_a_session_that_keeps_up() {
        let d = Delivery::default();
        let (s, mut rx) = live_session(&d, "a", 2);
        let run3: Run = Arc::new((1..=3).map(|q| msg("g", q, None)).collect());
        assert_eq!(
            d.push(&run3).dropped,
            0,
            "an empty queue takes the run whole"
        );
        assert_eq!(s.close_reason(), None);
        // Behind on that run, the next one is too much.
        assert_eq!(d.push(&run3).dropped, 1);
        assert_eq!(s.close_reason(), Some(SLOW_CONSUMER));
        assert_eq!(rx.try_recv().map(|r| r.len()).ok(), Some(3));
    }

    #[test]
    fn a_dropped_offer_to_the_sender_is_counted_once() {
        let d = Delivery::default();
        let (a, _rx_a) = live_session(&d, "a", 1);
        let (_b, _rx_b) = live_session(&d, "b", 16);
        let first: Run = Arc::new(vec![msg("g", 1, None)]);
        d.push(&first);
        // a's queue is full: a is dropped, and a sent message 2 (not 3).
        let run: Run = Arc::new(vec![msg("g", 2, Some(a.id)), msg("g", 3, None)]);
        let stats = d.push(&run);
        assert_eq!((stats.sessions, stats.dropped), (2, 1));
        assert_eq!(
            stats.for_message(&run[0]),
            (1, 0),
            "b got it; a skips its own"
        );
        assert_eq!(stats.for_message(&run[1]), (2, 1));
    }

    #[test]
    fn a_session_in_catch_up_is_only_marked_dirty() {
        let d = Delivery::default();
        let (s, mut rx) = d
            .register(
                "a",
                ["g".to_owned()].into_iter(),
                0,
                SessionLimits {
                    queue: 4,
                    queue_bytes: usize::MAX,
                    per_user: 8,
                },
                &CancellationToken::new(),
                false,
            )
            .unwrap();
        let run: Run = Arc::new(vec![msg("g", 1, None)]);
        assert_eq!(d.push(&run).dropped, 0);
        assert!(rx.try_recv().is_err());
        assert!(
            !s.try_go_live(),
            "the message arrived during catch-up: plan again"
        );
        s.begin_catch_up_round();
        assert!(s.try_go_live());
    }
}
