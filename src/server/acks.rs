//! Ack coalescing: WebSocket acks and reads are gathered per (channel, user) and written every
//! `acks.flush_ms` as one `CursorBatch` event per channel — a 10,000-member group acking a
//! message costs one event per window, not 10,000.
//!
//! Acks are at-least-once: a crash within the window loses them, and the messages are delivered
//! again on reconnect (clients deduplicate by seq). HTTP `/read` and `/ack` are written at once.
//! Until a window's events are applied, what it holds still counts for the user's other
//! sessions: a device that connects (or syncs) meanwhile starts after what was acknowledged
//! ([`Acks::delivered`]), not after the cursor the projections show yet.
//!
//! A window is written in appends of at most [`APPEND_BYTES`], each channel's users in events
//! of at most [`CURSORS_PER_EVENT`]: one event of a large group's acks (or one append of many
//! channels') could pass the log's largest append, and the whole window was lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tidings_projections::{CursorUpdate, Envelope, Event};
use tokio_util::sync::CancellationToken;

use crate::server::state::{AppState, now_ms};

/// Per channel: user → (delivered, read).
type Pending = HashMap<String, HashMap<String, (u64, u64)>>;

/// Cursors in one `CursorBatch` event (a uid is at most 64 bytes: ~330 KB at most).
const CURSORS_PER_EVENT: usize = 4096;

/// Bytes of events in one append (the log's largest append is at least 1 MiB more than this).
const APPEND_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
struct Windows {
    /// Gathered since the last flush.
    pending: Pending,
    /// Taken by the flush in progress, until its events are applied.
    flushing: Pending,
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

    /// Records an ack (delivered) and/or a read, cumulative.
    pub(crate) fn record(&self, uid: &str, channel: &str, delivered: u64, read: u64) {
        let mut w = self.lock();
        let users = w.pending.entry(channel.to_owned()).or_default();
        let e = users.entry(uid.to_owned()).or_default();
        e.0 = e.0.max(delivered).max(read);
        e.1 = e.1.max(read);
    }

    /// The highest seq `uid` acknowledged as delivered in `channel` that may not be in the
    /// projections yet (0: none).
    pub(crate) fn delivered(&self, uid: &str, channel: &str) -> u64 {
        let w = self.lock();
        let of = |p: &Pending| p.get(channel).and_then(|u| u.get(uid)).map_or(0, |e| e.0);
        of(&w.pending).max(of(&w.flushing))
    }

    /// Takes the window to flush; it still counts for [`Acks::delivered`] until
    /// [`Acks::flushed`].
    fn take(&self) -> Pending {
        let mut w = self.lock();
        let taken = std::mem::take(&mut w.pending);
        w.flushing.clone_from(&taken);
        taken
    }

    /// The flush's events are applied (or failed: at-least-once).
    fn flushed(&self) {
        self.lock().flushing.clear();
    }
}

/// The events of a window: per channel, only moves that advance a cursor, at most
/// [`CURSORS_PER_EVENT`] users each.
fn events(state: &AppState, pending: Pending) -> Vec<Bytes> {
    let p = state.proj();
    let st = &p.state;
    let ts = now_ms();
    let mut out = Vec::new();
    for (channel, users) in pending {
        let last = st.heads.last_seq(&channel);
        let cursors: Vec<CursorUpdate> = users
            .into_iter()
            .filter_map(|(uid, (d, r))| {
                let (d, r) = (d.min(last), r.min(last));
                let cur = st.cursors.get(&uid, &channel);
                let d = (d > cur.delivered).then_some(d);
                let r = (r > cur.read).then_some(r);
                (d.is_some() || r.is_some()).then_some(CursorUpdate {
                    uid,
                    delivered_seq: d,
                    read_seq: r,
                })
            })
            .collect();
        out.extend(cursor_events(&channel, cursors, ts));
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

/// Events grouped into appends of at most [`APPEND_BYTES`] (an event alone may be larger).
fn appends(events: Vec<Bytes>) -> Vec<Vec<Bytes>> {
    let mut out: Vec<Vec<Bytes>> = Vec::new();
    let mut bytes = 0;
    for e in events {
        match out.last_mut() {
            Some(last) if bytes + e.len() <= APPEND_BYTES => {
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
    for append in appends(events(state, pending)) {
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
        let appends = appends(events.clone());
        assert!(appends.len() > 1);
        for a in &appends {
            assert!(a.iter().map(Bytes::len).sum::<usize>() <= APPEND_BYTES);
        }
        assert_eq!(appends.concat(), events, "every event, in order");
    }
}
