//! The sequencer: validates a send against the projections, deduplicates `client_msg_id`,
//! assigns the channel seq and the message id, appends, waits for durability and for the
//! projections to apply it, then answers.
//!
//! Once a send is in the log's queue, finishing it (waiting for durability and for the
//! projections) runs as its own tracked task, not in the caller: a client that disconnects, or
//! a caller that gives up after [`APPLY_TIMEOUT`], cannot leave the send half-done. Its
//! in-flight entry — what a retry with the same `client_msg_id` waits on — stays until the
//! message is in the idempotency projection (or the append failed and nothing was written), so
//! a retry never makes a second message.
//!
//! Seq assignment and the enqueue into the log happen under one lock, so the log holds each
//! channel's messages in seq order even with thousands of sends in flight; the lock is released
//! before waiting for the fsync, so group commit batches them. A retry of a send that is still
//! in flight waits for the first attempt and gets its answer: never a second message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use tidings_projections::permissions::check_send;
use tidings_projections::{Envelope, Event};
use tokio::sync::watch;

use crate::server::error::{ApiError, ApiResult};
use crate::server::state::{APPLY_TIMEOUT, AppState, now_ms};

/// A durable, applied message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sent {
    pub(crate) channel: String,
    pub(crate) seq: u64,
    pub(crate) message_id: u64,
    pub(crate) offset: u64,
    pub(crate) ts: u64,
    /// Answered from the idempotency window: the original message.
    pub(crate) duplicate: bool,
}

/// A send to make.
#[derive(Debug, Clone)]
pub(crate) struct SendRequest {
    pub(crate) from: String,
    /// Canonical channel id.
    pub(crate) channel: String,
    pub(crate) client_msg_id: String,
    pub(crate) payload: Bytes,
    pub(crate) flags: u32,
    pub(crate) by_admin: bool,
    /// The WebSocket session that sent it (it gets a sendack, not the message).
    pub(crate) origin: Option<u64>,
}

type Outcome = Option<ApiResult<Sent>>;

/// Reservations made but not yet applied.
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    /// The last seq handed out per channel (entries at or below the applied head are swept).
    reserved: HashMap<String, u64>,
    next_message_id: u64,
    /// Sends enqueued and not yet applied, by idempotency key.
    in_flight: HashMap<String, watch::Receiver<Outcome>>,
    /// Sweep `reserved` when it grows past this.
    sweep_at: usize,
}

impl Sequencer {
    /// Drops reservations the projections have caught up with, once the map has doubled since
    /// the last sweep (amortised O(1) per send).
    fn sweep(&mut self, state: &AppState) {
        if self.reserved.len() < self.sweep_at.max(1024) {
            return;
        }
        let p = state.proj();
        self.reserved
            .retain(|ch, seq| *seq > p.state.heads.last_seq(ch));
        self.sweep_at = self.reserved.len() * 2;
    }
}

fn idem_key(from: &str, client_msg_id: &str) -> String {
    format!("{from}\u{1f}{client_msg_id}")
}

fn reused(channel: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "client_msg_id_reused",
        format!("this client_msg_id was already used for a message in {channel}"),
    )
}

/// Waits (bounded) for an in-flight send's outcome.
async fn wait_for(
    mut rx: watch::Receiver<Outcome>,
    channel: &str,
    duplicate: bool,
    budget: Duration,
) -> ApiResult<Sent> {
    let done = match tokio::time::timeout(budget, rx.wait_for(Option::is_some)).await {
        Ok(Ok(done)) => done.clone(),
        Ok(Err(_)) => {
            return Err(ApiError::unavailable(
                "shutting_down",
                "the server is shutting down",
            ));
        }
        Err(_) => {
            return Err(ApiError::unavailable(
                "apply_timeout",
                "the send is queued but not yet applied; retry with the same client_msg_id",
            ));
        }
    };
    match done {
        Some(Ok(sent)) if sent.channel != channel => Err(reused(&sent.channel)),
        Some(Ok(sent)) => Ok(Sent { duplicate, ..sent }),
        Some(Err(e)) => Err(e),
        None => Err(ApiError::internal("in-flight send vanished")),
    }
}

/// Sends a message; answers once it is durable and applied.
///
/// Safe to call from a future that may be dropped (an HTTP handler): once enqueued, the send
/// is finished by its own tracked task.
pub(crate) async fn send(state: &Arc<AppState>, req: SendRequest) -> ApiResult<Sent> {
    send_with(state, req, false).await
}

/// [`send`] for a caller that already runs in a task of `state.send_tasks` (never dropped
/// before it completes): finishes the send inline instead of in another task.
pub(crate) async fn send_in_tracked_task(
    state: &Arc<AppState>,
    req: SendRequest,
) -> ApiResult<Sent> {
    send_with(state, req, true).await
}

async fn send_with(state: &Arc<AppState>, req: SendRequest, inline: bool) -> ApiResult<Sent> {
    let channel = req.channel.clone();
    match start(state, req).await? {
        Started::Done(sent) => Ok(sent),
        Started::Wait(rx) => wait_for(rx, &channel, true, APPLY_TIMEOUT).await,
        Started::Enqueued(finish) => {
            let rx = finish.rx.clone();
            let mut budget = APPLY_TIMEOUT;
            if inline {
                // Finished here, but answered within APPLY_TIMEOUT like any send: past it, the
                // rest of the work moves to a tracked task of its own and the answer is
                // `apply_timeout` (the client retries with the same client_msg_id).
                let started = Instant::now();
                let mut run = Box::pin(finish.run(state.clone()));
                if tokio::time::timeout(APPLY_TIMEOUT, &mut run).await.is_err() {
                    state.send_tasks.spawn(run);
                }
                budget = APPLY_TIMEOUT.saturating_sub(started.elapsed());
            } else {
                state.send_tasks.spawn(finish.run(state.clone()));
            }
            wait_for(rx, &channel, false, budget).await
        }
    }
}

/// How far [`start`] got.
enum Started {
    /// Answered from the idempotency window.
    Done(Sent),
    /// The same send is in flight: its outcome.
    Wait(watch::Receiver<Outcome>),
    /// In the log's queue; must be finished.
    Enqueued(Finish),
}

/// An enqueued send to finish: wait for durability and the projections, publish the outcome,
/// clear the in-flight entry.
struct Finish {
    pending: tidings_log::PendingAppend,
    tx: watch::Sender<Outcome>,
    rx: watch::Receiver<Outcome>,
    key: Option<String>,
    channel: String,
    seq: u64,
    message_id: u64,
    ts: u64,
    started: Instant,
}

impl Finish {
    async fn run(self, st: Arc<AppState>) {
        let Finish {
            pending,
            tx,
            rx: _,
            key,
            channel,
            seq,
            message_id,
            ts,
            started,
        } = self;
        let result = async {
            let ack = pending.wait().await?;
            st.applied_past(ack.base_offset).await?;
            Ok(Sent {
                channel,
                seq,
                message_id,
                offset: ack.base_offset,
                ts,
                duplicate: false,
            })
        }
        .await;
        if result.is_ok() {
            st.metrics.sends.inc();
            st.metrics.send_latency.observe(started.elapsed());
        }
        let _ = tx.send(Some(result));
        if let Some(k) = key {
            // Applied (later retries find it in the idempotency projection), or the append
            // failed and nothing was written.
            st.sequencer.lock().await.in_flight.remove(&k);
        }
    }
}

/// Validates, deduplicates, assigns the seq and enqueues.
async fn start(state: &Arc<AppState>, req: SendRequest) -> ApiResult<Started> {
    let started = Instant::now();
    let key = (!req.client_msg_id.is_empty()).then(|| idem_key(&req.from, &req.client_msg_id));
    let mut seq = state.sequencer.lock().await;

    // Already applied: answer with the original.
    let (last_seq, next_id) = {
        let p = state.proj();
        let st = &p.state;
        if key.is_some()
            && let Some(prev) = st.idempotency.get(&req.from, &req.client_msg_id)
        {
            state.metrics.send_duplicates.inc();
            if prev.channel != req.channel {
                return Err(reused(&prev.channel));
            }
            return Ok(Started::Done(Sent {
                channel: prev.channel,
                seq: prev.seq,
                message_id: prev.message_id,
                offset: prev.offset,
                ts: prev.ts,
                duplicate: true,
            }));
        }
        if let Err(denied) = check_send(
            st,
            &req.from,
            &req.channel,
            state.config.person_allowlist,
            req.by_admin,
        ) {
            state.metrics.send_denied.inc();
            return Err(denied.into());
        }
        (st.heads.last_seq(&req.channel), st.heads.next_message_id)
    };
    // Still in flight: wait for the first attempt's answer.
    if let Some(k) = &key
        && let Some(rx) = seq.in_flight.get(k).cloned()
    {
        drop(seq);
        state.metrics.send_duplicates.inc();
        return Ok(Started::Wait(rx));
    }

    let channel_seq = seq
        .reserved
        .get(&req.channel)
        .copied()
        .unwrap_or(0)
        .max(last_seq)
        + 1;
    // Message ids start at 1 (0 is never a message).
    let message_id = seq.next_message_id.max(next_id).max(1);
    let ts = now_ms();
    let env = Envelope::new(
        ts,
        Event::MessageSent {
            channel: req.channel.clone(),
            from: req.from,
            client_msg_id: req.client_msg_id,
            seq: channel_seq,
            message_id,
            payload: req.payload,
            flags: req.flags,
        },
    );
    if let Some(session) = req.origin {
        state.origins.insert(&req.channel, channel_seq, session);
    }
    let pending = match state.log.enqueue(vec![env.encode()]).await {
        Ok(p) => p,
        Err(e) => {
            state.origins.take(&req.channel, channel_seq);
            return Err(e.into());
        }
    };
    seq.reserved.insert(req.channel.clone(), channel_seq);
    seq.next_message_id = message_id + 1;
    seq.sweep(state);
    let (tx, rx) = watch::channel(None);
    if let Some(k) = &key {
        seq.in_flight.insert(k.clone(), rx.clone());
    }
    drop(seq);
    Ok(Started::Enqueued(Finish {
        pending,
        tx,
        rx,
        key,
        channel: req.channel,
        seq: channel_seq,
        message_id,
        ts,
        started,
    }))
}
