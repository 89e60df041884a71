//! Ack coalescing: WebSocket acks and reads are gathered per (channel, user) and written every
//! `acks.flush_ms` as one `CursorBatch` event per channel — a 10,000-member group acking a
//! message costs one event per window, not 10,000.
//!
//! Acks are at-least-once: a crash within the window loses them, and the messages are delivered
//! again on reconnect (clients deduplicate by seq). HTTP `/read` and `/ack` are written at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tidings_projections::{CursorUpdate, Envelope, Event};
use tokio_util::sync::CancellationToken;

use crate::server::state::{AppState, now_ms};

/// Per channel: user → (delivered, read).
type Pending = HashMap<String, HashMap<String, (u64, u64)>>;

/// Pending acks.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    pending: Mutex<Pending>,
}

impl Acks {
    /// Records an ack (delivered) and/or a read, cumulative.
    pub(crate) fn record(&self, uid: &str, channel: &str, delivered: u64, read: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let users = p.entry(channel.to_owned()).or_default();
        let e = users.entry(uid.to_owned()).or_default();
        e.0 = e.0.max(delivered).max(read);
        e.1 = e.1.max(read);
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Writes what was gathered: one event per channel, only moves that advance a cursor.
pub(crate) async fn flush(state: &AppState) {
    let pending = state.acks.take();
    if pending.is_empty() {
        return;
    }
    let events: Vec<Bytes> = {
        let p = state.proj();
        let st = &p.state;
        let ts = now_ms();
        pending
            .into_iter()
            .filter_map(|(channel, users)| {
                let last = st.heads.last_seq(&channel);
                let mut cursors: Vec<CursorUpdate> = users
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
                if cursors.is_empty() {
                    return None;
                }
                cursors.sort_by(|a, b| a.uid.cmp(&b.uid));
                Some(Envelope::new(ts, Event::CursorBatch { channel, cursors }).encode())
            })
            .collect()
    };
    if events.is_empty() {
        return;
    }
    let n = events.len() as u64;
    match state.log.append(events).await {
        Ok(_) => state.metrics.cursor_events.add(n),
        Err(e) => {
            tracing::warn!(error = %e, "acks not written (clients will be sent those messages again)")
        }
    }
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
