//! `read` frames to a user's other sessions (README "Reads on other devices"): after the
//! messages they cover, and never moving back.
//!
//! A read is capped at the head the projections hold, and the applier applies a pass to the
//! projections before it hands out that pass's pushes: told at once, a read could reach
//! another session before messages it covers (a client counting unread by the messages it
//! gets would count them after the read). So a notice carries the offset below which every
//! event's pushes must be out first (`needs`: all that was applied when the read was taken),
//! and waits until the applier says they are ([`ReadNotices::pushed_through`]).
//!
//! Notices are told under one lock, and one at or below what the user was last told in that
//! channel is dropped: reads racing each other (two devices, HTTP and WebSocket) never tell a
//! lower seq after a higher one, nor one seq twice. What was told is kept only while the user
//! has another session to tell, and the whole record is dropped past [`MAX_TOLD`] entries
//! (two reads racing at that moment can then tell a seq again, or a lower one after a higher
//! one: clients take the highest `seq` they were told).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tidings_projections::ids::{ChannelId, Uid};

use crate::server::state::AppState;

/// Entries of the "last told" record before it is dropped whole.
const MAX_TOLD: usize = 1 << 16;

/// Read notices waiting for the pushes they follow, and what was told.
#[derive(Debug)]
pub(crate) struct ReadNotices {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Every event below this offset has had its pushes handed out.
    pushed: u64,
    /// Notices waiting for `pushed` to reach their `needs`, in the order they came.
    waiting: Vec<Held>,
    /// The last seq told to each user in each channel.
    told: HashMap<Uid, HashMap<ChannelId, u64>>,
    told_len: usize,
}

#[derive(Debug)]
struct Held {
    needs: u64,
    uid: Uid,
    channel: ChannelId,
    seq: u64,
    origin: Option<u64>,
}

impl ReadNotices {
    /// Nothing waiting; every event below `applied` had its pushes (none are owed for the
    /// events applied before the server started).
    pub(crate) fn new(applied: u64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                pushed: applied,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells `uid`'s sessions but `origin` that their read in `channel` is at `seq`, once the
    /// pushes of every event below `needs` are out (at once when they are).
    pub(crate) fn tell(
        &self,
        state: &AppState,
        needs: u64,
        uid: &str,
        channel: &str,
        seq: u64,
        origin: Option<u64>,
    ) {
        let mut i = self.lock();
        if i.pushed >= needs {
            i.send(state, uid, channel, seq, origin);
        } else {
            i.waiting.push(Held {
                needs,
                uid: uid.to_owned(),
                channel: channel.to_owned(),
                seq,
                origin,
            });
        }
    }

    /// The applier handed out the pushes of every event below `next`: the notices that
    /// waited for them go, in the order they came.
    pub(crate) fn pushed_through(&self, state: &AppState, next: u64) {
        let mut i = self.lock();
        i.pushed = i.pushed.max(next);
        if i.waiting.is_empty() {
            return;
        }
        let pushed = i.pushed;
        let (ready, waiting): (Vec<Held>, Vec<Held>) = std::mem::take(&mut i.waiting)
            .into_iter()
            .partition(|h| h.needs <= pushed);
        i.waiting = waiting;
        for h in ready {
            i.send(state, &h.uid, &h.channel, h.seq, h.origin);
        }
    }
}

impl Inner {
    fn send(&mut self, state: &AppState, uid: &str, channel: &str, seq: u64, origin: Option<u64>) {
        let told = self.told.get(uid).and_then(|m| m.get(channel)).copied();
        if told.is_some_and(|t| t >= seq) {
            return;
        }
        if state.push_read(uid, channel, seq, origin) {
            if self.told_len >= MAX_TOLD {
                self.told.clear();
                self.told_len = 0;
            }
            let m = self.told.entry(uid.to_owned()).or_default();
            if m.insert(channel.to_owned(), seq).is_none() {
                self.told_len += 1;
            }
        } else if let Some(m) = self.told.get_mut(uid) {
            // Nobody else to tell: nothing to keep in order.
            if m.remove(channel).is_some() {
                self.told_len -= 1;
            }
            if m.is_empty() {
                self.told.remove(uid);
            }
        }
    }
}
