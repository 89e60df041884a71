//! The state every handler shares.

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use serde_json::json;
use tidings_log::Log;
use tidings_projections::conv_cache::ConversationCache;
use tidings_projections::trace::PushSamples;
use tidings_projections::{Envelope, Event, Projections};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::data::DataDir;
use crate::render::channel_ref;
use crate::server::acks::Acks;
use crate::server::completions::{self, Completions};
use crate::server::delivery::{Delivery, Frame, Pushed};
use crate::server::error::{ApiError, ApiResult};
use crate::server::limits::{Limited, SendRates, UserBucket, UserRates};
use crate::server::metrics::Metrics;
use crate::server::purger::SnapshotWrites;
use crate::server::read_notices::ReadNotices;
use crate::server::sequencer::{Revocation, Sequencer};
use crate::server::waiters::{AppliedWaiters, Wait};

/// How long a request waits for its own event to be applied before answering 503.
pub(crate) const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An event written and applied: its offset and the time it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) offset: u64,
    pub(crate) ts: u64,
}

/// A channel's expired floor and what it was found for: the log's start and the channel's
/// earlier-group floor ([`AppState::expired_floor`]).
#[derive(Debug, Clone, Copy)]
struct ExpiredFloor {
    key: (u64, u64),
    floor: u64,
}

/// Shared by every handler and task.
pub(crate) struct AppState {
    pub(crate) config: Config,
    pub(crate) log: Log,
    pub(crate) proj: RwLock<Projections>,
    /// The next offset the applier will apply: everything below it is in the projections.
    pub(crate) applied: watch::Receiver<u64>,
    /// Requests waiting for their own event, woken one by one by the applier.
    pub(crate) applied_waiters: AppliedWaiters,
    pub(crate) sequencer: tokio::sync::Mutex<Sequencer>,
    pub(crate) delivery: Delivery,
    pub(crate) acks: Acks,
    /// `read` frames waiting for the pushes they follow.
    pub(crate) read_notices: ReadNotices,
    pub(crate) conv_cache: ConversationCache,
    pub(crate) samples: PushSamples,
    pub(crate) metrics: Metrics,
    /// The admin key's SHA-256, which presented keys are compared against
    /// (`auth::is_admin_hash`); the key itself is not kept.
    pub(crate) admin_key_hash: Bytes,
    /// Cancelled at shutdown: WebSocket sessions close with "going away".
    pub(crate) sessions_stop: CancellationToken,
    /// Every WebSocket session and the tasks it spawns, waited for at shutdown.
    pub(crate) ws_tasks: TaskTracker,
    /// Retries waiting for a WebSocket send still in flight (see the sequencer); waited for at
    /// shutdown.
    pub(crate) send_tasks: TaskTracker,
    pub(crate) connections: std::sync::Arc<Semaphore>,
    /// Client connections, HTTP and WebSocket, that the open-file limit leaves room for
    /// (`accept.rs`): one permit per accepted connection, and one per WebSocket session.
    pub(crate) sockets: std::sync::Arc<Semaphore>,
    /// `sockets`' permits at start: the connection budget.
    pub(crate) socket_budget: usize,
    /// Of `sockets`, what WebSocket sessions leave to plain HTTP (`accept::http_headroom`).
    pub(crate) http_headroom: usize,
    pub(crate) ready: AtomicBool,
    /// The applier stopped on a record it could not apply: the state in memory may hold part
    /// of that record (an index entry whose sidecar write failed), so it is never snapshotted
    /// (a restart replays from the last snapshot instead).
    pub(crate) applier_failed: AtomicBool,
    /// The applier stopped, or is stopping, on a record it could not read or apply: set under
    /// the projections' write lock in the pass that meets it, before the completions close,
    /// so that a write checked under the read lock after it is refused before the log
    /// ([`AppState::writable`], the sequencer). Not `applier_failed`, which a record that
    /// does not decode does not set (its state is whole, and may be snapshotted).
    pub(crate) applier_stopping: AtomicBool,
    /// Every user's send bucket, shared by their WebSocket sessions and their HTTP sends.
    pub(crate) user_rates: UserRates,
    /// Sends enqueued and not yet answered; the applier answers them.
    pub(crate) completions: Completions,
    /// Keys of the message index sidecars already in the object store (`None`: not listed
    /// yet).
    pub(crate) uploaded_sidecars: Mutex<Option<std::collections::HashSet<String>>>,
    /// The snapshots being written, whose records the background purge must not rewrite.
    pub(crate) snapshot_writes: Arc<SnapshotWrites>,
    /// The offset of the `log_trimmed` event whose let-go sidecar files are all deleted (0:
    /// none yet, or no event): `snapshots.rs`' `remove_dropped_sidecars` skips its listing then.
    pub(crate) sidecars_cleaned_for: std::sync::atomic::AtomicU64,
    /// Without a tier: whether messages below the log's first offset have expired rather than
    /// being unavailable ([`DataDir::expires_below_log_start`]: on a directory never tiered).
    untiered_expiring: bool,
    /// `DATA/log-trimmed` exists: found at start, or written since by the retention
    /// ([`AppState::set_trimmed`]). With a tier, [`AppState::expiring`] asks the manifest too.
    trimmed: AtomicBool,
    /// Each channel's expired floor as last found, with the log start and the channel's
    /// earlier-group floor it was found for ([`AppState::expired_floor`]).
    expired_floors: Mutex<tidings_projections::FastMap<String, ExpiredFloor>>,
    /// Held by [`AppState::subscribe`] from its read of who is a member to its event applied:
    /// one of these locks per group, by a hash of its id ([`SUBSCRIBE_LOCKS`]).
    subscribing: Box<[tokio::sync::Mutex<()>]>,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: Config,
        log: Log,
        proj: Projections,
        applied: watch::Receiver<u64>,
        sequencer: Sequencer,
        acks: Acks,
        conv_cache: ConversationCache,
        admin_key: String,
    ) -> Self {
        let samples = PushSamples::new(config.trace_sample_every, 10_000);
        let connections = std::sync::Arc::new(Semaphore::new(config.limits_max_connections));
        // After the log and the caches opened: their files are not the connections'.
        let budget = crate::server::accept::socket_budget(
            crate::server::accept::open_files_limit(),
            crate::server::accept::open_descriptors(),
        );
        let budget = budget.min(Semaphore::MAX_PERMITS);
        let sockets = std::sync::Arc::new(Semaphore::new(budget));
        let http_headroom = crate::server::accept::http_headroom(budget);
        let next_applied = *applied.borrow();
        let user_rates = UserRates::new(SendRates {
            sends: config.limits_sends_per_second,
            bytes: config.limits_send_bytes_per_second,
            max_payload: config.limits_max_payload_bytes,
        });
        let data = DataDir::new(&config.data);
        let untiered_expiring = data.tier_marker().is_none();
        let trimmed = AtomicBool::new(data.trimmed_marker().exists());
        Self {
            config,
            log,
            proj: RwLock::new(proj),
            applied_waiters: AppliedWaiters::new(next_applied),
            applied,
            sequencer: tokio::sync::Mutex::new(sequencer),
            delivery: Delivery::default(),
            acks,
            read_notices: ReadNotices::new(next_applied),
            conv_cache,
            samples,
            metrics: Metrics::default(),
            admin_key_hash: tidings_projections::tokens::token_hash(&admin_key),
            sessions_stop: CancellationToken::new(),
            ws_tasks: TaskTracker::new(),
            send_tasks: TaskTracker::new(),
            connections,
            sockets,
            socket_budget: budget,
            http_headroom,
            ready: AtomicBool::new(false),
            applier_failed: AtomicBool::new(false),
            applier_stopping: AtomicBool::new(false),
            user_rates,
            completions: Completions::default(),
            uploaded_sidecars: Mutex::new(None),
            snapshot_writes: Arc::new(SnapshotWrites::default()),
            sidecars_cleaned_for: std::sync::atomic::AtomicU64::new(0),
            untiered_expiring,
            trimmed,
            expired_floors: Mutex::default(),
            subscribing: (0..SUBSCRIBE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// Whether messages below the log's first offset have expired (read as gone) rather than
    /// being unavailable (503 `history_unavailable`), as [`DataDir::expires_below_log_start`]
    /// says, asked again at each call: with a tier the answer changes while the server runs
    /// (the first removal of its retention, a claim made after a start the store did not
    /// answer: `data::expires_with_tier`).
    pub(crate) fn expiring(&self) -> bool {
        match self.log.tier() {
            None => self.untiered_expiring,
            Some(tier) => {
                crate::data::expires_with_tier(tier, self.trimmed.load(Ordering::Acquire))
            }
        }
    }

    /// `DATA/log-trimmed` was written (by the retention, before it first removes segments).
    pub(crate) fn set_trimmed(&self) {
        self.trimmed.store(true, Ordering::Release);
    }

    /// The log offset below which messages have expired (`tidings_projections::messages`'
    /// module doc: gone by retention, read as gone and never an error): the log's first offset
    /// now, or 0 when nothing expires here ([`AppState::expiring`]). It only grows.
    pub(crate) fn expired_below(&self) -> u64 {
        if self.expiring() {
            self.log.start_offset()
        } else {
            0
        }
    }

    /// The highest seq of `channel` whose message has expired (0: none), from the projections
    /// `p`: found by a binary search of the message index (`messages::expired_floor`) once per
    /// log start — it changes only when the retention removes segments — and remembered, so a
    /// conversation list reads no index for it again (nor holds `p` over sidecar reads).
    pub(crate) fn expired_floor(&self, p: &Projections, channel: &str) -> ApiResult<u64> {
        let start = self.expired_below();
        let above = p.state.subs.history_from(channel);
        if start == 0 {
            // Only what the index let go (a tiered directory started without its store): read
            // from the state, nothing to remember.
            let floor = tidings_projections::messages::expired_floor(
                &p.state,
                p.index_files(),
                channel,
                above,
                0,
            )?;
            return Ok(floor);
        }
        let key = (start, above);
        let memo = |m: &mut tidings_projections::FastMap<String, ExpiredFloor>| {
            m.get(channel).filter(|f| f.key == key).map(|f| f.floor)
        };
        if let Some(floor) = memo(&mut self.floors()) {
            return Ok(floor);
        }
        let floor = tidings_projections::messages::expired_floor(
            &p.state,
            p.index_files(),
            channel,
            above,
            start,
        )?;
        self.floors()
            .insert(channel.to_owned(), ExpiredFloor { key, floor });
        Ok(floor)
    }

    fn floors(
        &self,
    ) -> std::sync::MutexGuard<'_, tidings_projections::FastMap<String, ExpiredFloor>> {
        self.expired_floors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The projections, for reading (never held across an await).
    pub(crate) fn proj(&self) -> RwLockReadGuard<'_, Projections> {
        self.proj.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The projections, for the applier.
    pub(crate) fn proj_mut(&self) -> RwLockWriteGuard<'_, Projections> {
        self.proj.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the event at `offset` is in the projections (read-your-writes), at most
    /// [`APPLY_TIMEOUT`].
    pub(crate) async fn wait_applied(&self, offset: u64) -> ApiResult<()> {
        match tokio::time::timeout(APPLY_TIMEOUT, self.applied_past(offset)).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::unavailable(
                "apply_timeout",
                "the event is durable but not yet visible; retry the read",
            )),
        }
    }

    /// Waits, with no time limit, until the event at `offset` is applied; fails only when the
    /// applier has stopped, with what it stopped with: `shutting_down` at shutdown,
    /// `not_ready` when it stopped on its own (a record it could not read or apply).
    pub(crate) async fn applied_past(&self, offset: u64) -> ApiResult<()> {
        match self.applied_waiters.wait(offset) {
            Wait::Done => Ok(()),
            Wait::Pending(rx) => rx.await.map_err(|_| {
                self.applied_waiters
                    .stopped()
                    .unwrap_or_else(completions::applier_stopped)
            }),
            Wait::Stopped(why) => Err(why),
        }
    }

    /// Refuses a write the applier will never apply (it stopped, or is stopping on a record it
    /// could not apply), as sends are refused: before anything is appended. Appended, the event
    /// would still take effect at the next start, though its caller was told it failed.
    fn writable(&self) -> ApiResult<()> {
        if let Some(why) = self.applied_waiters.stopped() {
            return Err(why);
        }
        if self.applier_stopping.load(Ordering::Acquire) {
            return Err(completions::applier_stopped());
        }
        Ok(())
    }

    /// Appends an event (not a message: those go through the sequencer), waits until it is
    /// durable and applied, returns its offset. Refused (nothing appended) once the applier
    /// has stopped.
    ///
    /// An event that narrows who may send where (a group's flags or deletion, members removed,
    /// allow and deny lists) is appended under the sequencer's lock and applied before the
    /// lock is released: sends are checked against the applied state, and one checked before
    /// such an event was applied was written after it in the log — a message from a removed
    /// member, into a banned group, or into a deleted group where no member can ever read it
    /// (it was acknowledged all the same). A user's tokens revoked, all or one, are ordered
    /// with sends too, without holding the lock that long ([`AppState::revoke`]; the send's
    /// token is checked under the lock: `SendRequest::token_hash`).
    pub(crate) async fn emit(self: &Arc<Self>, event: Event) -> ApiResult<u64> {
        let revocation = match &event {
            Event::TokensRevoked { uid } => Some(Revocation::User(uid.clone())),
            Event::TokenRevoked { token_hash, .. } => Some(Revocation::Token(token_hash.clone())),
            _ => None,
        };
        if let Some(what) = revocation {
            return self.revoke(what, event).await;
        }
        if narrows_sends(&event) {
            return self
                .emit_unless(event, |_| Ok(false))
                .await?
                .ok_or_else(|| ApiError::internal("an event to write was not written"));
        }
        self.append_applied(event).await
    }

    /// Like [`AppState::emit`] under the sequencer's lock, unless `done(state)` says the event
    /// is not needed (checked under the lock, after every earlier such event was applied): two
    /// racing requests for one change write it once. `None` when it was not written; an error
    /// of `done` is the answer, nothing written.
    ///
    /// The locked part runs in a task of its own (in `send_tasks`, waited for at shutdown):
    /// the lock is released only once the event is applied, or the applier stopped — not when
    /// the request that asked for it goes away or stops waiting ([`APPLY_TIMEOUT`]), which
    /// would let sends checked against the state without the event be written after it.
    pub(crate) async fn emit_unless(
        self: &Arc<Self>,
        event: Event,
        done: impl FnOnce(&tidings_projections::State) -> ApiResult<bool> + Send + 'static,
    ) -> ApiResult<Option<u64>> {
        let written = self
            .emit_decided(move |st| Ok((!done(st)?).then_some((event, ()))))
            .await?;
        Ok(written.map(|(offset, ())| offset))
    }

    /// Like [`AppState::emit_unless`], the event made under the sequencer's lock from the
    /// applied state: `decide(state)` gives the event to write and what to answer with it
    /// (`None`: nothing written). A channel's creation or update, or its deletion, is decided
    /// by whether it exists there: read before the lock, two racing requests both created
    /// the channel (both answered 201), or an update raced by a deletion wrote an update of
    /// a channel that no longer was (answered 404 after it).
    pub(crate) async fn emit_decided<T: Send + 'static>(
        self: &Arc<Self>,
        decide: impl FnOnce(&tidings_projections::State) -> ApiResult<Option<(Event, T)>>
        + Send
        + 'static,
    ) -> ApiResult<Option<(u64, T)>> {
        let state = self.clone();
        let locked = self.send_tasks.spawn(async move {
            let _sends = state.sequencer.lock().await;
            let Some((event, answer)) = decide(&state.proj().state)? else {
                return Ok(None);
            };
            state.writable()?;
            let env = Envelope::new(now_ms(), event);
            let ack = state.log.append(vec![env.encode()]).await?;
            state.applied_past(ack.base_offset).await?;
            Ok(Some((ack.base_offset, answer)))
        });
        answer_of(locked).await
    }

    /// Writes an event a user's request makes of a message (an edit) as a send is written:
    /// `check(sequencer, state, ts)` runs under the sequencer's lock against the applied state,
    /// `ts` being the time the event will carry — `Ok(false)` writes nothing (`None`), an error
    /// is the answer — and the event is enqueued in the log before the lock is released, so it
    /// takes its place among the sends; its fsync and apply are waited for after. That is
    /// enough for what a check reads: the events that change it are applied under the lock
    /// (narrowing changes: [`AppState::emit_unless`]) or marked in the sequencer while in
    /// flight (revocations, recalls: [`AppState::emit_recall`]), so an edit checked before one
    /// of them was applied is written before it, or refused. (Held across the fsync as `emit_unless` holds it, every send on
    /// the server would wait for each edit's.)
    pub(crate) async fn emit_checked(
        self: &Arc<Self>,
        event: Event,
        check: impl FnOnce(&Sequencer, &tidings_projections::State, u64) -> ApiResult<bool>
        + Send
        + 'static,
    ) -> ApiResult<Option<Written>> {
        let state = self.clone();
        let task = self.send_tasks.spawn(async move {
            let (pending, ts) = {
                let sequencer = state.sequencer.lock().await;
                let ts = now_ms();
                if !check(&sequencer, &state.proj().state, ts)? {
                    return Ok(None);
                }
                state.writable()?;
                let env = Envelope::new(ts, event);
                (state.log.enqueue(vec![env.encode()]).await?, ts)
            };
            let ack = pending.wait().await?;
            state.applied_past(ack.base_offset).await?;
            Ok(Some(Written {
                offset: ack.base_offset,
                ts,
            }))
        });
        answer_of(task).await
    }

    /// Writes the recall of `seq` in `channel` (`event`) as an edit is written
    /// ([`AppState::emit_checked`]): `check(state)` runs under the sequencer's lock against the
    /// applied state — `Ok(true)`: recalled already, nothing written; an error is the answer —
    /// and the event is enqueued before the lock is released, marked in the sequencer while in
    /// flight ([`Sequencer::recall_in_flight`]): an edit checked meanwhile is refused as one of
    /// a recalled message, and another recall of the message waits for this one's outcome and
    /// checks again. Answers once the recall is durable and applied (`true`: written).
    ///
    /// Until 2026-12-03 a recall held the sequencer's lock across its fsync and apply
    /// ([`AppState::emit_unless`]): every send on the server waited for each recall's.
    pub(crate) async fn emit_recall(
        self: &Arc<Self>,
        (channel, seq): (String, u64),
        event: Event,
        check: impl Fn(&tidings_projections::State) -> ApiResult<bool> + Send + 'static,
    ) -> ApiResult<bool> {
        let state = self.clone();
        let task = self.send_tasks.spawn(async move {
            loop {
                let (pending, done) = {
                    let mut sequencer = state.sequencer.lock().await;
                    if let Some(mut other) = sequencer.recall_in_flight(&channel, seq) {
                        drop(sequencer);
                        // Its outcome, then this one's check again (recalled: nothing to
                        // write; failed: this one is written, or refused as it was).
                        let _ = other.wait_for(|done| *done).await;
                        continue;
                    }
                    if check(&state.proj().state)? {
                        return Ok(false);
                    }
                    state.writable()?;
                    let env = Envelope::new(now_ms(), event.clone());
                    let pending = state.log.enqueue(vec![env.encode()]).await?;
                    let (done, rx) = tokio::sync::watch::channel(false);
                    sequencer.recalling(&channel, seq, rx);
                    (pending, done)
                };
                let written = async {
                    let ack = pending.wait().await?;
                    state.applied_past(ack.base_offset).await?;
                    Ok::<_, ApiError>(true)
                }
                .await;
                state.sequencer.lock().await.recalled(&channel, seq);
                let _ = done.send(true);
                return written;
            }
        });
        answer_of(task).await
    }

    /// Subscribes those of `uids` who are not members of group `channel` yet (each once), so
    /// that a subscribe in the log is a join (the trace reads it so: `trace.rs`) and re-adding
    /// members writes nothing. Calls are serialized from their read of the members to their
    /// event applied, per group (by a hash of its id: calls for other groups go on, and their
    /// events share fsyncs): two racing to add one user both read them as not a member, and
    /// both wrote a subscribe (the trace then left a message between the two uncounted for
    /// them).
    /// Not under the sequencer's lock: a join narrows no send. In a task of its own, as
    /// [`AppState::emit_unless`]'s: a request that goes away does not release the lock before
    /// its event is applied.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        channel: String,
        uids: Vec<String>,
    ) -> ApiResult<()> {
        let state = self.clone();
        let task = self.send_tasks.spawn(async move {
            let _one_at_a_time = state.subscribing_lock(&channel).lock().await;
            let joining: Vec<String> = {
                let p = state.proj();
                let mut seen = std::collections::HashSet::new();
                uids.into_iter()
                    .filter(|u| !p.state.subs.is_member(&channel, u) && seen.insert(u.clone()))
                    .collect()
            };
            if joining.is_empty() {
                return Ok(());
            }
            state.writable()?;
            let env = Envelope::new(
                now_ms(),
                Event::MembersSubscribed {
                    channel,
                    uids: joining,
                },
            );
            let ack = state.log.append(vec![env.encode()]).await?;
            state.applied_past(ack.base_offset).await
        });
        answer_of(task).await
    }

    /// The lock [`AppState::subscribe`] holds for group `channel`.
    fn subscribing_lock(&self, channel: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(channel);
        &self.subscribing[(hash % self.subscribing.len() as u64) as usize]
    }

    /// Writes a revocation (`what`: a user's tokens, or one token), ordered with sends as a
    /// narrowing change is but without holding the sequencer's lock across its fsync and apply
    /// (logouts are frequent; every send would wait for each): under the lock it is enqueued
    /// and what it revokes marked as being revoked, so a send made with such a token and
    /// sequenced after it is refused, and one before it is written before it; the mark goes
    /// once the event is applied. In a task of its own, as [`AppState::emit_unless`]'s: the
    /// mark is taken off however the request ends.
    async fn revoke(self: &Arc<Self>, what: Revocation, event: Event) -> ApiResult<u64> {
        let state = self.clone();
        let task = self.send_tasks.spawn(async move {
            let pending = {
                let mut seq = state.sequencer.lock().await;
                state.writable()?;
                let env = Envelope::new(now_ms(), event);
                let pending = state.log.enqueue(vec![env.encode()]).await?;
                seq.revoking(&what);
                pending
            };
            let written = async {
                let ack = pending.wait().await?;
                state.applied_past(ack.base_offset).await?;
                Ok::<_, ApiError>(ack.base_offset)
            }
            .await;
            // Left in place if it failed: the log or the applier stopped, and a send checked
            // against a state without the revocation must not be written after it meanwhile.
            if written.is_ok() {
                state.sequencer.lock().await.revoked(&what);
            }
            written
        });
        answer_of(task).await
    }

    async fn append_applied(&self, event: Event) -> ApiResult<u64> {
        self.writable()?;
        let env = Envelope::new(now_ms(), event);
        let ack = self.log.append(vec![env.encode()]).await?;
        self.wait_applied(ack.base_offset).await?;
        Ok(ack.base_offset)
    }

    /// Charges one send over HTTP, with `bytes` of payload, to `uid`'s send limits (a
    /// WebSocket session holds its user's bucket: [`AppState::charge_send`]).
    pub(crate) fn charge_user_send(&self, uid: &str, bytes: usize) -> ApiResult<()> {
        self.charge_send(&self.user_rates.bucket(uid), bytes)
    }

    /// Charges one send with `bytes` of payload (0: a recall, or a retry of a send stored under
    /// a larger `limits.max_payload_bytes`, answered without its payload) to its user's
    /// buckets, which all of their connections share: 429 `rate_limited` when either holds too
    /// little, with the time until both would do.
    pub(crate) fn charge_send(&self, bucket: &UserBucket, bytes: usize) -> ApiResult<()> {
        bucket.take(bytes).map_err(|limited| {
            self.metrics.rate_limited.inc();
            let (message, wait) = match limited {
                Limited::Sends(wait) => {
                    let rate = self.config.limits_sends_per_second;
                    (
                        format!("more than {rate} sends per second by this user"),
                        wait,
                    )
                }
                Limited::Bytes(wait) => {
                    let rate = self.config.limits_send_bytes_per_second;
                    let m = format!(
                        "more than {rate} payload bytes per second by this user \
                         (limits.send_bytes_per_second)"
                    );
                    (m, wait)
                }
            };
            // `wait`: when the buckets hold this send (a payload's wait may pass a second).
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                .with_retry_after(wait)
        })
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Tells the user's sessions of a read written at `offset` and applied (`POST …/read`, a
    /// clear), unless a later read overtook it meanwhile — applied (the projections' read is
    /// past `seq`) or a WebSocket read still in its window at or past it: that one was told,
    /// and telling this one after it would move the other sessions' read position back.
    pub(crate) fn push_applied_read(&self, uid: &str, channel: &str, seq: u64, offset: u64) {
        let newest = {
            let p = self.proj();
            // The projections' lock, then the acks' (the order of `Acks::record`'s callers).
            p.state.cursors.get(uid, channel).read <= seq && self.acks.read(uid, channel) < seq
        };
        if newest {
            // After the pushes of the messages applied before it.
            self.read_notices
                .tell(self, offset.saturating_add(1), uid, channel, seq, None);
        }
    }

    /// Tells `uid`'s online sessions but `origin` (the session that read) that their read
    /// position in `channel` moved to `seq`: a `read` frame, in the channel as they name it.
    /// Queued as a message push is (a full queue closes the session as too slow); never waits.
    /// Whether the user had such a session. Called by [`ReadNotices`], which orders notices.
    pub(crate) fn push_read(
        &self,
        uid: &str,
        channel: &str,
        seq: u64,
        origin: Option<u64>,
    ) -> bool {
        let stats = self.delivery.push_to_user(uid, origin, || {
            let named = channel_ref(channel, Some(uid));
            let v = json!({"type": "read", "channel": named, "seq": seq});
            Pushed {
                channel: channel.to_owned(),
                seq,
                offset: u64::MAX,
                is_message: false,
                origin,
                frames: vec![(None, Frame::new(&v))],
            }
        });
        // Counted as a recall's notice is.
        self.metrics
            .pushes
            .add(u64::from(stats.sessions.saturating_sub(stats.dropped)));
        self.metrics
            .slow_consumer_closes
            .add(u64::from(stats.closed_slow));
        stats.sessions > 0
    }
}

/// The answer of a write run in a task of its own ([`AppState::emit_unless`],
/// [`AppState::revoke`]), waited for at most [`APPLY_TIMEOUT`]: the task goes on after that.
async fn answer_of<T>(task: tokio::task::JoinHandle<ApiResult<T>>) -> ApiResult<T> {
    match tokio::time::timeout(APPLY_TIMEOUT, task).await {
        Ok(Ok(written)) => written,
        Ok(Err(e)) => Err(ApiError::internal(format!("writing the event: {e}"))),
        // The timer ran from before the lock: the change may not even be written yet.
        Err(_) => Err(ApiError::unavailable(
            "apply_timeout",
            "the change was not made within 30 s (waiting its turn, being written or applied); it goes on, and takes effect unless its write fails: read to see whether it did before asking again",
        )),
    }
}

/// Locks of [`AppState::subscribe`], one per group by a hash of its id: calls adding members to
/// different groups rarely wait for each other (one lock for all ran every such call on the
/// server one fsync and apply at a time).
const SUBSCRIBE_LOCKS: usize = 64;

/// Whether `event` can refuse sends that were allowed before it ([`AppState::emit`]).
fn narrows_sends(event: &Event) -> bool {
    matches!(
        event,
        // Created: it sets the flags of an existing channel too (an upsert).
        Event::ChannelCreated { .. }
            | Event::ChannelUpdated { .. }
            | Event::ChannelDeleted { .. }
            | Event::MembersUnsubscribed { .. }
            | Event::ListChanged { .. }
    )
}
