//! Ack coalescing: WebSocket acks and reads are gathered per (channel, user) and written every
//! `acks.flush_ms` as one `CursorBatch` event per channel — a 10,000-member group acking a
//! message costs one event per window, not 10,000.
//!
//! Acks are at-least-once: a crash within the window loses them, and the messages are delivered
//! again on reconnect (clients deduplicate by seq). HTTP `/read` and `/ack` are written at once.
//! Until a window's events are applied, what it holds still counts for the user's other
//! sessions: a device that connects (or syncs) meanwhile starts after what was acknowledged
//! ([`Acks::delivered`]), not after the cursor the projections show yet. A read is told to the
//! user's other sessions when it is recorded, not when its window is written, and only when it
//! moves past every read known for them ([`Acks::record`]).
//!
//! A window is written in appends of at most [`APPEND_BYTES`], each channel's users in events
//! of at most [`CURSORS_PER_EVENT`]: one event of a large group's acks (or one append of many
//! channels') could pass the log's largest append, and the whole window was lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tidings_projections::permissions::can_move_cursor;
use tidings_projections::{CursorUpdate, Envelope, Event};
use tokio_util::sync::CancellationToken;

use crate::server::state::{AppState, now_ms};

/// Per channel: user → (delivered, read).
type Pending = HashMap<String, HashMap<String, (u64, u64)>>;

/// Cursors in one `CursorBatch` event (uids of 64 bytes, the longest: under 400 KB).
const CURSORS_PER_EVENT: usize = 4096;

/// Bytes of one append, the log's framing counted ([`append_size`]): the log's largest append
/// is always more than 1 MiB (`Config::log_max_append_bytes`), and one event fits this alone.
const APPEND_BYTES: usize = 512 << 10;

/// What an append of records of these sizes takes against the log's limit: the records, a
/// length prefix each, the batch header (`tidings_log`'s framing, with room to spare).
fn append_size(records: usize, bytes: usize) -> usize {
    bytes + records * 4 + 64
}

#[derive(Debug, Default)]
struct Windows {
    /// Gathered since the last flush.
    pending: Pending,
    /// Taken by the flush in progress, until its events are applied (shared with that flush:
    /// taking a window costs no copy under the lock every session's acks take).
    flushing: Arc<Pending>,
}

impl Windows {
    /// `(delivered, read)` of `uid` in `channel` in both windows (0: none).
    fn held(&self, uid: &str, channel: &str) -> (u64, u64) {
        let of = |p: &Pending| {
            p.get(channel)
                .and_then(|u| u.get(uid))
                .copied()
                .unwrap_or_default()
        };
        let (a, b) = (of(&self.pending), of(&self.flushing));
        (a.0.max(b.0), a.1.max(b.1))
    }
}

/// What [`Acks::record`] made of an ack or a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// The read moves past every read known (the projections' and the windows'): one to tell
    /// the user's other sessions of, once.
    pub(crate) read_moved: bool,
    /// The user's position in the channel moves forward (delivered or read). Such acks are
    /// bounded by the messages there are (each moves a position up by one at least, up to the
    /// head): a WebSocket does not charge them to its frame limit.
    pub(crate) advanced: bool,
}

/// Pending acks.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    windows: Mutex<Windows>,
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an ack (delivered) and/or a read, cumulative. `known` is the user's cursor in
    /// the projections (delivered, read), read under their lock, which the caller holds
    /// across this call: a window is let go only once applied, so one let go by now is in
    /// `known`.
    pub(crate) fn record(
        &self,
        uid: &str,
        channel: &str,
        delivered: u64,
        read: u64,
        known: (u64, u64),
    ) -> Recorded {
        let mut w = self.lock();
        let held = w.held(uid, channel);
        let read_moved = read > known.1.max(held.1);
        let advanced = delivered.max(read) > known.0.max(known.1).max(held.0) || read_moved;
        let users = w.pending.entry(channel.to_owned()).or_default();
        let e = users.entry(uid.to_owned()).or_default();
        e.0 = e.0.max(delivered).max(read);
        e.1 = e.1.max(read);
        Recorded {
            read_moved,
            advanced,
        }
    }

    /// The highest seq `uid` acknowledged as delivered in `channel` that may not be in the
    /// projections yet (0: none).
    pub(crate) fn delivered(&self, uid: &str, channel: &str) -> u64 {
        self.lock().held(uid, channel).0
    }

    /// The highest seq `uid` read in `channel` by a WebSocket `read` that may not be in the
    /// projections yet (0: none).
    pub(crate) fn read(&self, uid: &str, channel: &str) -> u64 {
        self.lock().held(uid, channel).1
    }

    /// Takes the window to flush; it still counts for [`Acks::delivered`] until
    /// [`Acks::flushed`].
    fn take(&self) -> Arc<Pending> {
        let mut w = self.lock();
        let taken = Arc::new(std::mem::take(&mut w.pending));
        w.flushing = taken.clone();
        taken
    }

    /// The flush's events are applied (or failed: at-least-once).
    fn flushed(&self) {
        self.lock().flushing = Arc::default();
    }
}

/// The events of a window: per channel, only moves that advance a cursor, at most
/// [`CURSORS_PER_EVENT`] users each. Only of members now: one removed from the group (or a
/// group deleted) since the ack was taken gets no cursor there — a removal's cursor is let go
/// with it at a trim (`State::forget_left`), and one written after would stay for good.
fn events(state: &AppState, pending: &Pending) -> Vec<Bytes> {
    let p = state.proj();
    let st = &p.state;
    let ts = now_ms();
    let mut out = Vec::new();
    for (channel, users) in pending {
        let last = st.heads.last_seq(channel);
        let cursors: Vec<CursorUpdate> = users
            .iter()
            .filter(|(uid, _)| can_move_cursor(st, uid, channel))
            .filter_map(|(uid, &(d, r))| {
                let (d, r) = (d.min(last), r.min(last));
                let cur = st.cursors.get(uid, channel);
                let d = (d > cur.delivered).then_some(d);
                let r = (r > cur.read).then_some(r);
                (d.is_some() || r.is_some()).then(|| CursorUpdate {
                    uid: uid.clone(),
                    delivered_seq: d,
                    read_seq: r,
                })
            })
            .collect();
        out.extend(cursor_events(channel, cursors, ts));
    }
    out
}

/// A channel's cursor moves as events of at most [`CURSORS_PER_EVENT`] users, by uid.
fn cursor_events(channel: &str, mut cursors: Vec<CursorUpdate>, ts: u64) -> Vec<Bytes> {
    cursors.sort_by(|a, b| a.uid.cmp(&b.uid));
    cursors
        .chunks(CURSORS_PER_EVENT)
        .map(|part| {
            let event = Event::CursorBatch {
                channel: channel.to_owned(),
                cursors: part.to_vec(),
            };
            Envelope::new(ts, event).encode()
        })
        .collect()
}

/// Events grouped into appends of at most [`APPEND_BYTES`] with the log's framing (an event
/// alone may be larger).
fn appends(events: Vec<Bytes>) -> Vec<Vec<Bytes>> {
    let mut out: Vec<Vec<Bytes>> = Vec::new();
    let mut bytes = 0;
    for e in events {
        match out.last_mut() {
            Some(last) if append_size(last.len() + 1, bytes + e.len()) <= APPEND_BYTES => {
                bytes += e.len();
                last.push(e);
            }
            _ => {
                bytes = e.len();
                out.push(vec![e]);
            }
        }
    }
    out
}

/// Writes what was gathered, then waits until it is applied.
pub(crate) async fn flush(state: &AppState) {
    let pending = state.acks.take();
    if pending.is_empty() {
        return;
    }
    let mut last = None;
    for append in appends(events(state, &pending)) {
        let n = append.len() as u64;
        match state.log.append(append).await {
            Ok(ack) => {
                state.metrics.cursor_events.add(n);
                last = Some(ack.base_offset + n - 1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "acks not written (clients will be sent those messages again)");
                break;
            }
        }
    }
    if let Some(last) = last {
        // Until then a session planning its catch-up takes the window into account. (Fails
        // only when the applier stops: nothing more to wait for.)
        let _ = state.wait_applied(last).await;
    }
    state.acks.flushed();
}

/// Flushes every window until stopped, then once more.
pub(crate) async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(state.config.acks_flush());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => flush(&state).await,
        }
    }
    flush(&state).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_projections::Envelope;

    /// A window of 30,000 users of one channel (uids of 64 bytes, the longest) is written as
    /// events of at most 4,096 users, in appends of at most 1 MiB, every cursor once: as one
    /// event it was ~2.3 MB, past the log's largest append, and the whole window was lost.
    #[test]
    fn a_large_window_is_written_in_bounded_events_and_appends() {
        let cursors: Vec<CursorUpdate> = (0..30_000)
            .map(|i| CursorUpdate {
                uid: format!("{i:064}"),
                delivered_seq: Some(7),
                read_seq: Some(5),
            })
            .collect();
        let events = cursor_events(&"g".repeat(64), cursors, 1);
        assert_eq!(events.len(), 30_000usize.div_ceil(CURSORS_PER_EVENT));
        assert!(
            events.iter().all(|e| e.len() < 400_000),
            "events of ~330 KB at most"
        );
        let mut seen = Vec::new();
        for e in &events {
            match Envelope::decode(0, e).unwrap().event {
                Event::CursorBatch { cursors, .. } => {
                    seen.extend(cursors.into_iter().map(|c| c.uid));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen.len(), 30_000);
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "each user once, in order"
        );
        let grouped = appends(events.clone());
        assert!(grouped.len() > 1);
        for a in &grouped {
            let size = append_size(a.len(), a.iter().map(Bytes::len).sum());
            assert!(size <= APPEND_BYTES, "{size}");
        }
        // Many small events (one per channel): their framing counts too, against the smallest
        // largest append the server configures (1 MiB and a little).
        let small: Vec<Bytes> = (0..20_000)
            .flat_map(|i| {
                let c = CursorUpdate {
                    uid: "u".into(),
                    delivered_seq: Some(1),
                    read_seq: None,
                };
                cursor_events(&format!("c{i}"), vec![c], 1)
            })
            .collect();
        for a in appends(small) {
            // The log's own count: records, a 4-byte length each, a 40-byte header.
            let logged = a.iter().map(|e| e.len() + 4).sum::<usize>() + 40;
            assert!(logged <= 1 << 20, "{logged}");
        }
        assert_eq!(grouped.concat(), events, "every event, in order");
    }
}
