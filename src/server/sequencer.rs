//! The sequencer: validates a send against the projections, deduplicates `client_msg_id`,
//! assigns the channel seq and the message id, registers the send with the
//! [completions](crate::server::completions) and enqueues it in the log. The applier answers it
//! once the message is durable and applied; nobody waits in a task of its own. A caller that
//! gives up (an HTTP client gone, an `apply_timeout`) cannot leave the send half-done, and its
//! in-flight entry — what a retry with the same `client_msg_id` waits on — stays until the
//! message is in the idempotency projection (or the append failed and nothing was written), so
//! a retry never makes a second message.
//!
//! Seq assignment and the enqueue into the log happen under one lock, so the log holds each
//! channel's messages in seq order even with thousands of sends in flight; the lock is released
//! before the fsync, so group commit batches them. A WebSocket session's burst of sends goes
//! through in one hold of the lock, in appends of at most [`CHUNK_BYTES`] of records; their
//! seqs are committed to the sequencer only once their append is enqueued, so an append that
//! fails leaves no gap. A retry of a send that is still in flight
//! waits for the first attempt and gets its answer: never a second message. A retry refused
//! `payload_too_large` before it reaches the sequencer (the limit lowered since its original
//! was taken) is answered from the idempotency window all the same ([`stored_retry`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use tidings_projections::idempotency::SentRef;
use tidings_projections::ids::is_person_channel;
use tidings_projections::permissions::check_send;
use tidings_projections::{Envelope, Event, FastMap, State};
use tokio::sync::watch;

use crate::server::auth::{invalid_token, token_owner};
use crate::server::completions::{Outcome, Registration, Reply};
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
    /// The hash of the user token the send was authenticated with (`None`: the admin key),
    /// checked again in [`prepare_locked`]: a revocation is applied under the sequencer's lock
    /// ([`AppState::emit`]), so a send authenticated before it is either written before it or
    /// refused; and a send sequenced at or after its token's expiry is refused. Shared, not
    /// copied: every send of a WebSocket session holds its one hash.
    pub(crate) token_hash: Option<Bytes>,
}

/// What a revocation in flight covers ([`Sequencer::revoking`]).
#[derive(Debug, Clone)]
pub(crate) enum Revocation {
    /// Every token of a user.
    User(String),
    /// One token, by its hash.
    Token(Bytes),
}

/// Reservations made but not yet applied.
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    /// The last seq handed out per channel (entries at or below the applied head are swept).
    reserved: FastMap<String, u64>,
    next_message_id: u64,
    /// Sweep `reserved` when it grows past this.
    sweep_at: usize,
    /// Users whose tokens' revocation is in the log and not yet applied (a count: revocations
    /// may overlap). Their sends are refused here from the moment the revocation is enqueued,
    /// so the lock is not held across its fsync and apply ([`Sequencer::revoking`]).
    revoking: FastMap<String, u32>,
    /// The same for single tokens revoked (by hash): sends made with them are refused, the
    /// user's other tokens' are not.
    revoking_tokens: FastMap<Bytes, u32>,
    /// The person channels each user opened this hour (`limits.new_person_channels_per_hour`).
    new_chats: crate::server::limits::NewChats,
    /// Recalls in the log and not yet applied, by channel and seq, each with what turns `true`
    /// once it is applied or failed ([`AppState::emit_recall`]): an edit checked meanwhile
    /// is refused as one of a recalled message, and a second recall of the message waits for
    /// the first.
    ///
    /// [`AppState::emit_recall`]: crate::server::state::AppState::emit_recall
    recalling: FastMap<(String, u64), tokio::sync::watch::Receiver<bool>>,
}

impl Sequencer {
    /// The recall of `seq` in `channel` in the log and not yet applied, if any: what turns
    /// `true` once it is applied (or failed).
    pub(crate) fn recall_in_flight(
        &self,
        channel: &str,
        seq: u64,
    ) -> Option<tokio::sync::watch::Receiver<bool>> {
        if self.recalling.is_empty() {
            return None;
        }
        self.recalling.get(&(channel.to_owned(), seq)).cloned()
    }

    /// Marks a recall as enqueued (call under the lock, with the enqueue).
    pub(crate) fn recalling(
        &mut self,
        channel: &str,
        seq: u64,
        done: tokio::sync::watch::Receiver<bool>,
    ) {
        self.recalling.insert((channel.to_owned(), seq), done);
    }

    /// The recall marked by [`Sequencer::recalling`] is applied, or failed.
    pub(crate) fn recalled(&mut self, channel: &str, seq: u64) {
        self.recalling.remove(&(channel.to_owned(), seq));
    }

    /// Marks a revocation as enqueued (call under the lock, with the enqueue).
    pub(crate) fn revoking(&mut self, what: &Revocation) {
        match what {
            Revocation::User(uid) => *self.revoking.entry(uid.clone()).or_default() += 1,
            Revocation::Token(hash) => *self.revoking_tokens.entry(hash.clone()).or_default() += 1,
        }
    }

    /// The revocation marked by [`Sequencer::revoking`] is applied, or was never written.
    pub(crate) fn revoked(&mut self, what: &Revocation) {
        match what {
            Revocation::User(uid) => {
                if let Some(n) = self.revoking.get_mut(uid) {
                    *n -= 1;
                    if *n == 0 {
                        self.revoking.remove(uid);
                    }
                }
            }
            Revocation::Token(hash) => {
                if let Some(n) = self.revoking_tokens.get_mut(hash) {
                    *n -= 1;
                    if *n == 0 {
                        self.revoking_tokens.remove(hash);
                    }
                }
            }
        }
    }

    /// Whether the token stored under `hash` still authenticates `uid` at `ts` under the
    /// sequencer's lock: not revoked in the applied state nor by a revocation in flight
    /// ([`Sequencer::revoking`]), and not expired (`token_expired`).
    pub(crate) fn check_token(&self, st: &State, uid: &str, hash: &[u8], ts: u64) -> ApiResult<()> {
        if self.is_revoking(uid, hash) || *token_owner(&st.tokens, hash, ts)? != uid {
            return Err(invalid_token());
        }
        Ok(())
    }

    /// Whether a revocation of `uid`'s tokens, or of the token stored under `hash`, is
    /// enqueued and not yet applied.
    fn is_revoking(&self, uid: &str, hash: &[u8]) -> bool {
        (!self.revoking.is_empty() && self.revoking.contains_key(uid))
            || (!self.revoking_tokens.is_empty() && self.revoking_tokens.contains_key(hash))
    }

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

impl Sent {
    /// The answer to a retry: the original message, marked `duplicate`.
    fn duplicate_of(prev: SentRef) -> Self {
        Self {
            channel: prev.channel,
            seq: prev.seq,
            message_id: prev.message_id,
            offset: prev.offset,
            ts: prev.ts,
            duplicate: true,
        }
    }
}

/// The applied send `from` made with `client_msg_id`, as a retry of it into `channel` sees
/// it: none when the idempotency window has forgotten it, or when it went to a group deleted
/// since and created again under `channel`'s id (its seq is below the new group's floor,
/// readable by nobody: the id is free again; it was answered `duplicate` with that seq).
fn remembered(st: &State, from: &str, client_msg_id: &str, channel: &str) -> Option<SentRef> {
    st.idempotency
        .get(from, client_msg_id)
        .filter(|prev| !(prev.channel == channel && prev.seq <= st.subs.history_from(channel)))
}

/// The original of a send refused `payload_too_large` that retries one already stored, as a
/// duplicate; `None` for any other send, which keeps its refusal.
///
/// `limits.max_payload_bytes` may be lowered by a restart while clients still retry sends the
/// old limit took: refused, such a retry told its client that a message stored and delivered
/// had failed. Only an exact retry is answered so (same sender, `client_msg_id` and channel),
/// so the lowered limit still holds for every new send. Looked up in the applied state alone,
/// without the sequencer's lock: a retry racing its original while that is still in flight
/// (not yet applied) may still be refused 413, and its next retry is answered here. Nothing is
/// written either way.
pub(crate) fn stored_retry(
    state: &AppState,
    from: &str,
    channel: &str,
    client_msg_id: &str,
) -> Option<Sent> {
    if client_msg_id.is_empty() {
        return None;
    }
    let prev = {
        let p = state.proj();
        remembered(&p.state, from, client_msg_id, channel)?
    };
    if prev.channel != channel {
        return None;
    }
    state.metrics.send_duplicates.inc();
    Some(Sent::duplicate_of(prev))
}

fn idem_key(from: &str, client_msg_id: &str) -> String {
    format!("{from}\u{1f}{client_msg_id}")
}

/// The refusal of a `client_msg_id` already used in `channel`, named as the sender `from` names
/// it (`@bob`: a person channel's canonical `p:alice:bob` is the admin's form).
fn reused(channel: &str, from: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "client_msg_id_reused",
        format!(
            "this client_msg_id was already used for a message in {}",
            crate::render::channel_ref(channel, Some(from))
        ),
    )
}

/// Waits (bounded) for an in-flight send's outcome.
async fn wait_for(
    mut rx: watch::Receiver<Outcome>,
    (channel, from): (&str, &str),
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
        Some(Ok(sent)) if sent.channel != channel => Err(reused(&sent.channel, from)),
        Some(Ok(sent)) => Ok(Sent { duplicate, ..sent }),
        Some(Err(e)) => Err(e),
        None => Err(ApiError::internal("in-flight send vanished")),
    }
}

/// Sends a message; answers once it is durable and applied (or after [`APPLY_TIMEOUT`] with
/// `apply_timeout`).
///
/// Safe to call from a future that may be dropped (an HTTP handler): once enqueued, the send
/// is finished by the applier whether or not anyone still waits.
pub(crate) async fn send(state: &Arc<AppState>, req: SendRequest) -> ApiResult<Sent> {
    let channel = req.channel.clone();
    match start(state, req).await? {
        Prepared::Done(sent) => Ok(sent),
        Prepared::Wait(rx, channel, from) => {
            wait_for(rx, (&channel, &from), true, APPLY_TIMEOUT).await
        }
        // Its own registration: never another channel's.
        Prepared::Registered(Some(rx)) => wait_for(rx, (&channel, ""), false, APPLY_TIMEOUT).await,
        // Never: a send without a reply is registered with a receiver.
        Prepared::Registered(None) => Err(ApiError::internal("a send registered without a waiter")),
    }
}

/// Starts a WebSocket session's sends (the sends of one burst of its frames, in order) under
/// one hold of the sequencer lock; each answer goes to its reply — from the applier once the
/// message is durable and applied, or right away when it is a duplicate or refused. Drains
/// `sends`. `sequenced` is told the channel and seq of every send this call enqueued, before
/// the session that made them can see them applied (it awaits this call).
///
/// One hold for the burst, not one per send: with many sessions sending at once the lock is
/// a convoy (each hand-over wakes the next waiting task), and a session that took it once
/// per frame waited a whole round of the other sessions for each of its frames (measured:
/// ~350 µs a send with 64 sessions, the limit of the server's throughput). The burst's
/// messages also go to the log as one append (see [`Chunk`]).
pub(crate) async fn send_batch_for_session(
    state: &Arc<AppState>,
    sends: &mut Vec<(SendRequest, Reply)>,
    mut sequenced: impl FnMut(&str, u64),
) {
    if sends.is_empty() {
        return;
    }
    let started = Instant::now();
    let mut seq = state.sequencer.lock().await;
    // Outside tokio's cooperative budget while the lock is held (see `start`).
    tokio::task::coop::unconstrained(async {
        let mut chunk = Chunk::default();
        for (req, reply) in sends.drain(..) {
            if !chunk.ids.is_empty() && chunk.bytes + record_size_bound(&req) > CHUNK_BYTES {
                // Answers its sends itself if the append fails.
                let _ = enqueue_chunk(state, &mut seq, &mut chunk, &mut sequenced).await;
            }
            let mut slot = Some(reply);
            let answer = |slot: &mut Option<Reply>, result: ApiResult<Sent>| {
                if let Some(r) = slot.take() {
                    r.answer(result);
                }
            };
            match prepare_locked(state, &mut seq, &mut chunk, started, req, &mut slot) {
                // The applier answers it (or `enqueue_chunk`, if the append fails).
                Ok(Prepared::Registered(_)) => {}
                // The original may be another session's (another device's): not told.
                Ok(Prepared::Done(sent)) => answer(&mut slot, Ok(sent)),
                Err(e) => answer(&mut slot, Err(e)),
                Ok(Prepared::Wait(rx, channel, from)) => {
                    // A retry of a send still in flight (rare): waits for the first attempt in a
                    // tracked task of its own, so the session goes on reading.
                    state.send_tasks.spawn(async move {
                        let result = wait_for(rx, (&channel, &from), true, APPLY_TIMEOUT).await;
                        answer(&mut slot, result);
                    });
                }
            }
        }
        let _ = enqueue_chunk(state, &mut seq, &mut chunk, &mut sequenced).await;
    })
    .await;
}

/// What [`prepare_locked`] made of a send.
enum Prepared {
    /// Answered from the idempotency window.
    Done(Sent),
    /// The same send is in flight: its outcome (and the channel it was sent to, and its
    /// sender).
    Wait(watch::Receiver<Outcome>, String, String),
    /// Registered with the completions and added to the chunk (the receiver when the send
    /// has no reply); from [`start`], also enqueued.
    Registered(Option<watch::Receiver<Outcome>>),
}

/// Most bytes of records that go to the log as one append (a single larger record goes
/// alone). Within the log's `max_append_bytes`, which the server sets to at least 1 MiB plus
/// twice the payload limit (`server::start`).
const CHUNK_BYTES: usize = 1 << 20;

/// Sends registered and not yet enqueued: they go to the log as one append (one command, one
/// acknowledgement). Their seqs and message ids are reserved here and move into the
/// [`Sequencer`] only once the append is enqueued: a chunk that never reaches the log (the
/// enqueue failed, or its caller was dropped) leaves no gap in a channel's seqs.
#[derive(Default)]
struct Chunk {
    /// Seqs reserved in this chunk, in order (a channel may appear more than once).
    reserved: Vec<(String, u64)>,
    /// The message id the next send in this chunk gets at least (0: none yet).
    next_message_id: u64,
    ids: Vec<u64>,
    records: Vec<Bytes>,
    bytes: usize,
    /// The senders whose send in this chunk opened a person channel (took a
    /// [`NewChats`](crate::server::limits::NewChats) slot): given back if the enqueue fails.
    opened: Vec<String>,
}

impl Chunk {
    fn last_seq(&self, channel: &str) -> Option<u64> {
        self.reserved
            .iter()
            .rev()
            .find(|(c, _)| c == channel)
            .map(|(_, s)| *s)
    }
}

/// A bound on the size of a send's record (fixed fields and names fit in 256 bytes).
fn record_size_bound(req: &SendRequest) -> usize {
    256 + req.payload.len() + req.channel.len() + req.from.len() + req.client_msg_id.len()
}

/// [`prepare_locked`] and the enqueue, under its own hold of the sequencer lock.
async fn start(state: &Arc<AppState>, req: SendRequest) -> ApiResult<Prepared> {
    let started = Instant::now();
    let mut seq = state.sequencer.lock().await;
    // Outside tokio's cooperative budget while the lock is held: the enqueue's waits each
    // spend budget, and a holder whose budget ran out yielded with the lock held, behind every
    // other runnable task, while all the other senders waited for it (measured: a hold of
    // ~4 µs per send where the work is under 1 µs). The enqueue still waits when the log's
    // queue is full: that is backpressure, not the budget.
    tokio::task::coop::unconstrained(async {
        let mut chunk = Chunk::default();
        let prepared = prepare_locked(state, &mut seq, &mut chunk, started, req, &mut None)?;
        if let Prepared::Registered(_) = prepared {
            enqueue_chunk(state, &mut seq, &mut chunk, &mut |_, _| {}).await?;
        }
        Ok(prepared)
    })
    .await
}

/// Validates, deduplicates, assigns the seq and the message id, registers the send with the
/// completions (taking `reply`, which is left in place when the send is answered another
/// way) and adds its record to `chunk`. The caller holds the sequencer lock (`seq`) until the
/// chunk is enqueued.
fn prepare_locked(
    state: &Arc<AppState>,
    seq: &mut Sequencer,
    chunk: &mut Chunk,
    started: Instant,
    req: SendRequest,
    reply: &mut Option<Reply>,
) -> ApiResult<Prepared> {
    let key = (!req.client_msg_id.is_empty()).then(|| idem_key(&req.from, &req.client_msg_id));

    // The message's timestamp, and the time its token must still be valid at.
    let ts = now_ms();
    let (last_seq, next_id) = {
        // One read of the projections for every check (each read queues behind an applier
        // waiting to write).
        let p = state.proj();
        let st = &p.state;
        // The applier stopped on a record it could not read or apply (set under the
        // projections' write lock, so seen here): refused before the log, as every other
        // write is (`AppState::writable`). Registered in the moment before the completions
        // close, the send was written after that record and still answered `not_ready`
        // (review, 2026-12-03).
        if state
            .applier_stopping
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(crate::server::completions::applier_stopped());
        }
        // The credential, still valid in the applied state (a lookup in the token index, and
        // one in its expiries). A revocation is appended and applied under this lock, so a
        // send authenticated before it and sequenced after is refused here, as a request made
        // after it is refused at authentication: a user cut off writes nothing after the
        // revocation in the log. So is one whose token expired by the time it is sequenced
        // (`token_expired`). First of all: a retry of a send still in flight made with a
        // revoked token is refused too (it waited for the first attempt's answer until
        // 2026-12-03).
        if let Some(hash) = &req.token_hash {
            seq.check_token(st, &req.from, hash, ts)?;
        }
        // Still in flight: wait for the first attempt's answer. The applier applies a send
        // and only then takes it from the completions, and cannot apply while the
        // projections are read here: gone from the completions, it is in the idempotency
        // window read below (read in two steps, it could slip between them and be sent
        // twice). A send registered earlier in the same chunk is in flight too.
        if let Some(k) = &key
            && let Some(rx) = state.completions.in_flight(k)
        {
            state.metrics.send_duplicates.inc();
            return Ok(Prepared::Wait(rx, req.channel, req.from));
        }
        // Already applied: answer with the original.
        if key.is_some()
            && let Some(prev) = remembered(st, &req.from, &req.client_msg_id, &req.channel)
        {
            state.metrics.send_duplicates.inc();
            if prev.channel != req.channel {
                return Err(reused(&prev.channel, &req.from));
            }
            return Ok(Prepared::Done(Sent::duplicate_of(prev)));
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

    let channel_seq = chunk
        .last_seq(&req.channel)
        .or_else(|| seq.reserved.get(&req.channel).copied())
        .unwrap_or(0)
        .max(last_seq)
        + 1;
    // A user's first message in a person channel opens it, for good: so many an hour.
    let opens = channel_seq == 1 && !req.by_admin && is_person_channel(&req.channel);
    if opens {
        let per_hour = state.config.limits_new_person_channels_per_hour;
        if let Err(wait) = seq.new_chats.take(&req.from, per_hour, started) {
            state.metrics.new_chats_refused.inc();
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_new_chats",
                format!(
                    "more than {per_hour} new person channels in an hour \
                     (limits.new_person_channels_per_hour); messages to ones already open go on"
                ),
            )
            .with_retry_after(wait));
        }
    }
    let opener = opens.then(|| req.from.clone());
    // Message ids start at 1 (0 is never a message).
    let message_id = chunk
        .next_message_id
        .max(seq.next_message_id)
        .max(next_id)
        .max(1);
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
    // Registered before the enqueue: the applier may apply the message before it returns.
    let registered = state.completions.register(Registration {
        message_id,
        channel: req.channel.clone(),
        seq: channel_seq,
        ts,
        key,
        origin: req.origin,
        reply: reply.take(),
        started,
    });
    let rx = match registered {
        Ok(rx) => rx,
        Err((e, back)) => {
            *reply = back;
            // Nothing is written: the channel is not opened (a slot spent on each refused
            // retry ended in `too_many_new_chats`).
            if let Some(uid) = &opener {
                seq.new_chats.give_back(uid);
            }
            return Err(e);
        }
    };
    chunk.opened.extend(opener);
    let record = env.encode();
    chunk.bytes += record.len();
    chunk.records.push(record);
    chunk.ids.push(message_id);
    chunk.reserved.push((req.channel, channel_seq));
    chunk.next_message_id = message_id + 1;
    Ok(Prepared::Registered(rx))
}

/// Enqueues the chunk's records as one append and moves its reservations into the sequencer,
/// telling `sequenced` each send's channel and seq. If the enqueue fails nothing was written:
/// each send is forgotten and answered with the error (a reply through it; an HTTP caller
/// gets it returned), and its reservations go (their seqs are handed out again: not told).
async fn enqueue_chunk(
    state: &Arc<AppState>,
    seq: &mut Sequencer,
    chunk: &mut Chunk,
    sequenced: &mut impl FnMut(&str, u64),
) -> ApiResult<()> {
    if chunk.ids.is_empty() {
        return Ok(());
    }
    // The enqueue may wait (queue full) and an HTTP handler may be dropped meanwhile: then
    // nothing was written, and the registrations must go too.
    let mut unregister = Unregister {
        state,
        message_ids: std::mem::take(&mut chunk.ids),
    };
    let enqueued = state.log.enqueue(std::mem::take(&mut chunk.records)).await;
    let ids = std::mem::take(&mut unregister.message_ids);
    let next_message_id = std::mem::take(&mut chunk.next_message_id);
    chunk.bytes = 0;
    match enqueued {
        Ok(pending) => {
            state.completions.enqueued(&ids, pending);
            for (channel, s) in chunk.reserved.drain(..) {
                sequenced(&channel, s);
                seq.reserved.insert(channel, s);
            }
            seq.next_message_id = seq.next_message_id.max(next_message_id);
            seq.sweep(state);
            chunk.opened.clear();
            Ok(())
        }
        Err(e) => {
            chunk.reserved.clear();
            for uid in chunk.opened.drain(..) {
                seq.new_chats.give_back(&uid);
            }
            let err: ApiError = e.into();
            for id in ids {
                if let Some(reply) = state.completions.abandon(id, &err) {
                    reply.answer(Err(err.clone()));
                }
            }
            Err(err)
        }
    }
}

/// Abandons the registrations of an enqueue that never finished (its future was dropped).
struct Unregister<'a> {
    state: &'a AppState,
    message_ids: Vec<u64>,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        for id in self.message_ids.drain(..) {
            self.state
                .completions
                .abandon(id, &ApiError::internal("the send was not enqueued"));
        }
    }
}
