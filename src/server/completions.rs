//! Sends enqueued and not yet applied, completed by the applier.
//!
//! The applier only ever sees durable records, so applying a `MessageSent` is the moment its
//! send is done: durable and visible. The applier takes the send's entry here (by message id)
//! and answers it in the same pass — the HTTP caller through a watch channel, the WebSocket
//! session through its answer queue. One pass answers every send of an fsync batch before any
//! session runs, so a session writes all of its acks of a batch with one write, and a send
//! costs no task and no wake-up of its own between the log writer and the applier.
//!
//! What the applier cannot see is handled by [`Completions::sweep`], run by a background task:
//! an append that failed (the log is poisoned: nothing more becomes durable) is answered with
//! the log's error; a WebSocket send not applied within [`APPLY_TIMEOUT`] is answered
//! `apply_timeout` (its entry stays, so a retry with the same `client_msg_id` still waits for
//! it). When the applier stops, [`Completions::close`] answers every send still here.
//!
//! An entry's idempotency key is in [`Completions::in_flight`] until the entry is answered by
//! the applier (from then on the idempotency projection has it) or fails (nothing written), so
//! a retry never makes a second message — provided the sequencer looks here *before* it reads
//! the idempotency window: the applier takes an entry only after applying it, so a send gone
//! from here is already in the window.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidings_log::PendingAppend;
use tidings_projections::FastMap;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::server::error::{ApiError, ApiResult};
use crate::server::metrics::Metrics;
use crate::server::sequencer::Sent;
use crate::server::state::{APPLY_TIMEOUT, AppState};

/// How often [`sweeper`] looks.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// A send's outcome as its waiters see it (`None`: not yet).
pub(crate) type Outcome = Option<ApiResult<Sent>>;

/// A send's answer on its way to the WebSocket session that made it.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) client_msg_id: String,
    pub(crate) result: ApiResult<Sent>,
    /// The session's in-flight slot: it frees once the answer is written.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    /// A send answered before it was applied (`apply_timeout`): its channel and seq. It is
    /// still written, and the session gets it as a message — catching up too, which skips
    /// its own sends by seq: it must not skip this one.
    pub(crate) not_applied: Option<(String, u64)>,
}

/// A session's answer queue. Boxed: an idle session's queue pre-allocates a block of slots,
/// and a slot the size of a pointer keeps that block small.
pub(crate) type Answers = mpsc::UnboundedSender<Box<Answer>>;

/// Where a WebSocket send's answer goes.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) to: Answers,
    pub(crate) client_msg_id: String,
    pub(crate) permit: OwnedSemaphorePermit,
}

impl Reply {
    /// Queues the answer (a session that has ended drops it), with the in-flight slot.
    pub(crate) fn answer(self, result: ApiResult<Sent>) {
        self.answer_with(result, None);
    }

    fn answer_with(self, result: ApiResult<Sent>, not_applied: Option<(String, u64)>) {
        let _ = self.to.send(Box::new(Answer {
            client_msg_id: self.client_msg_id,
            result,
            permit: Some(self.permit),
            not_applied,
        }));
    }
}

/// What the sequencer knows of a send when it registers it.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) message_id: u64,
    pub(crate) channel: String,
    pub(crate) seq: u64,
    pub(crate) ts: u64,
    /// Idempotency key (`None` without a `client_msg_id`).
    pub(crate) key: Option<String>,
    /// The WebSocket session that sent it (it gets a sendack, not the message).
    pub(crate) origin: Option<u64>,
    pub(crate) reply: Option<Reply>,
    pub(crate) started: Instant,
}

#[derive(Debug)]
struct Entry {
    reg: Registration,
    /// Made for the first waiter (an HTTP caller at once; a retry when it asks): a WebSocket
    /// send is answered through its reply and seldom has one.
    tx: Option<watch::Sender<Outcome>>,
    /// The log's acknowledgement of the append that holds it (set right after the enqueue;
    /// shared by the sends enqueued together).
    pending: Option<Arc<SharedAppend>>,
}

/// One append's acknowledgement, read by every send it carries (only the sweep reads it, and
/// only once the log is poisoned).
#[derive(Debug)]
struct SharedAppend(Mutex<AppendState>);

#[derive(Debug)]
enum AppendState {
    Waiting(PendingAppend),
    Done(Result<(), ApiError>),
}

impl SharedAppend {
    /// The append's outcome once the log writer has given it (`None`: not yet).
    fn outcome(&self) -> Option<Result<(), ApiError>> {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *state {
            AppendState::Done(r) => Some(r.clone()),
            AppendState::Waiting(p) => {
                let r = p.try_wait()?.map(|_| ()).map_err(ApiError::from);
                *state = AppendState::Done(r.clone());
                Some(r)
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Boxed: the map moves its entries when it rehashes (inserts and removes churn it).
    by_id: FastMap<u64, Box<Entry>>,
    /// In-flight sends by idempotency key (→ message id).
    by_key: FastMap<String, u64>,
    /// The applier stopped (with what new sends are told): nothing registered from now on
    /// would ever be answered.
    closed: Option<ApiError>,
}

/// The registry (one per server).
#[derive(Debug, Default)]
pub(crate) struct Completions {
    inner: Mutex<Inner>,
}

/// Sends the applier took, to answer outside the lock.
#[derive(Debug)]
pub(crate) struct Taken(Vec<(u64, Box<Entry>)>);

impl Completions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a send about to be enqueued (before the enqueue: the applier may apply it
    /// before the enqueue returns). Fails, giving the reply back, once the applier has stopped
    /// or for a message id already in flight. A send without a reply gets its outcome's
    /// receiver.
    #[allow(clippy::result_large_err)]
    pub(crate) fn register(
        &self,
        mut reg: Registration,
    ) -> Result<Option<watch::Receiver<Outcome>>, (ApiError, Option<Reply>)> {
        let mut inner = self.lock();
        if let Some(e) = &inner.closed {
            return Err((e.clone(), reg.reply.take()));
        }
        if inner.by_id.contains_key(&reg.message_id) {
            // Never: message ids are handed out once, under the sequencer's lock.
            return Err((
                ApiError::internal("message id already in flight"),
                reg.reply.take(),
            ));
        }
        let (tx, rx) = match reg.reply {
            Some(_) => (None, None),
            None => {
                let (tx, rx) = watch::channel(None);
                (Some(tx), Some(rx))
            }
        };
        if let Some(k) = &reg.key {
            inner.by_key.insert(k.clone(), reg.message_id);
        }
        inner.by_id.insert(
            reg.message_id,
            Box::new(Entry {
                reg,
                tx,
                pending: None,
            }),
        );
        Ok(rx)
    }

    /// The enqueue of these sends (one append) succeeded: keeps its acknowledgement (to
    /// notice a failed append).
    pub(crate) fn enqueued(&self, message_ids: &[u64], pending: PendingAppend) {
        let shared = Arc::new(SharedAppend(Mutex::new(AppendState::Waiting(pending))));
        let mut inner = self.lock();
        for id in message_ids {
            if let Some(e) = inner.by_id.get_mut(id) {
                e.pending = Some(shared.clone());
            }
        }
    }

    /// The enqueue failed (nothing was written): forgets the send, tells its waiters (an HTTP
    /// caller, a retry) `why`, and gives its reply back (the caller answers it).
    pub(crate) fn abandon(&self, message_id: u64, why: &ApiError) -> Option<Reply> {
        let entry = {
            let mut inner = self.lock();
            let entry = inner.by_id.remove(&message_id);
            if let Some(k) = entry.as_ref().and_then(|e| e.reg.key.as_ref()) {
                inner.by_key.remove(k);
            }
            entry
        };
        let mut e = entry?;
        if let Some(tx) = &e.tx {
            let _ = tx.send(Some(Err(why.clone())));
        }
        e.reg.reply.take()
    }

    /// The outcome of an in-flight send with this idempotency key.
    pub(crate) fn in_flight(&self, key: &str) -> Option<watch::Receiver<Outcome>> {
        let mut inner = self.lock();
        let id = *inner.by_key.get(key)?;
        let e = inner.by_id.get_mut(&id)?;
        Some(
            e.tx.get_or_insert_with(|| watch::channel(None).0)
                .subscribe(),
        )
    }

    /// Takes the sends of the messages just applied (message ids), to be answered with
    /// [`Taken::answer`] once the lock is released.
    pub(crate) fn take(&self, applied: impl Iterator<Item = (u64, u64)>) -> Taken {
        let mut inner = self.lock();
        if inner.by_id.is_empty() {
            return Taken(Vec::new());
        }
        let mut out = Vec::new();
        for (message_id, offset) in applied {
            if let Some(e) = inner.by_id.remove(&message_id) {
                if let Some(k) = &e.reg.key {
                    inner.by_key.remove(k);
                }
                out.push((offset, e));
            }
        }
        Taken(out)
    }

    /// Answers what the applier cannot: failed appends (only when the log is poisoned) and
    /// WebSocket sends waiting longer than [`APPLY_TIMEOUT`]. Returns how many were answered.
    pub(crate) fn sweep(&self, poisoned: bool, now: Instant, metrics: &Metrics) -> usize {
        let mut failed: Vec<(Box<Entry>, ApiError)> = Vec::new();
        let mut late: Vec<(Reply, String, u64)> = Vec::new();
        {
            let mut inner = self.lock();
            let mut failed_ids: Vec<(u64, ApiError)> = Vec::new();
            for (id, e) in &mut inner.by_id {
                if poisoned && let Some(p) = &e.pending {
                    match p.outcome() {
                        Some(Err(err)) => {
                            failed_ids.push((*id, err));
                            continue;
                        }
                        // Durable: the applier answers it.
                        Some(Ok(_)) => e.pending = None,
                        None => {}
                    }
                }
                if now.saturating_duration_since(e.reg.started) >= APPLY_TIMEOUT
                    && let Some(r) = e.reg.reply.take()
                {
                    late.push((r, e.reg.channel.clone(), e.reg.seq));
                }
            }
            for (id, err) in failed_ids {
                if let Some(e) = inner.by_id.remove(&id) {
                    if let Some(k) = &e.reg.key {
                        inner.by_key.remove(k);
                    }
                    failed.push((e, err));
                }
            }
        }
        let n = failed.len() + late.len();
        for (e, err) in failed {
            answer(*e, Err(err), metrics);
        }
        for (r, channel, seq) in late {
            r.answer_with(
                Err(ApiError::unavailable(
                    "apply_timeout",
                    "the send is queued but not yet applied; retry with the same client_msg_id",
                )),
                Some((channel, seq)),
            );
        }
        n
    }

    /// The applier stopped: answers every send still here with `why`, and refuses new ones
    /// with it.
    pub(crate) fn close(&self, why: ApiError, metrics: &Metrics) {
        let entries = {
            let mut inner = self.lock();
            inner.closed = Some(why.clone());
            inner.by_key.clear();
            std::mem::take(&mut inner.by_id)
        };
        for (_, e) in entries {
            answer(*e, Err(why.clone()), metrics);
        }
    }

    /// Sends registered and not yet answered by the applier.
    pub(crate) fn len(&self) -> usize {
        self.lock().by_id.len()
    }
}

impl Taken {
    /// Answers each taken send (durable and applied at its offset); returns which session
    /// sent each message that came from one (message id → session).
    pub(crate) fn answer(self, metrics: &Metrics) -> FastMap<u64, u64> {
        let mut origins = FastMap::default();
        for (offset, mut e) in self.0 {
            // A session already told `apply_timeout` gets the message as a push instead of a
            // sendack: it must not be skipped as the sender.
            if let Some(o) = e.reg.origin
                && e.reg.reply.is_some()
            {
                origins.insert(e.reg.message_id, o);
            }
            let sent = Sent {
                // Nothing reads the registration's channel after this.
                channel: std::mem::take(&mut e.reg.channel),
                seq: e.reg.seq,
                message_id: e.reg.message_id,
                offset,
                ts: e.reg.ts,
                duplicate: false,
            };
            answer(*e, Ok(sent), metrics);
        }
        origins
    }
}

/// What sends waiting when the server shuts down are told.
pub(crate) fn shutting_down() -> ApiError {
    ApiError::unavailable("shutting_down", "the server is shutting down")
}

/// What sends are told when the applier stopped on its own (a record it cannot apply).
pub(crate) fn applier_stopped() -> ApiError {
    ApiError::unavailable(
        "not_ready",
        "the server cannot apply its log; see its log and run `tidings verify`",
    )
}

fn answer(e: Entry, result: ApiResult<Sent>, metrics: &Metrics) {
    if result.is_ok() {
        metrics.sends.inc();
        metrics.send_latency.observe(e.reg.started.elapsed());
    }
    if let Some(r) = e.reg.reply {
        r.answer(result.clone());
    }
    // Only a waiter (an HTTP caller, a retry) holds a receiver: skip the clone without one.
    if let Some(tx) = e.tx
        && tx.receiver_count() > 0
    {
        let _ = tx.send(Some(result));
    }
}

/// Runs [`Completions::sweep`] every [`SWEEP_EVERY`] until `stop` is cancelled.
pub(crate) async fn sweeper(state: Arc<AppState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let poisoned = state.log.poisoned().is_some();
        let answered = state
            .completions
            .sweep(poisoned, Instant::now(), &state.metrics);
        if answered > 0 {
            tracing::warn!(
                answered,
                poisoned,
                "answered sends the applier did not (failed appends or apply timeouts)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tidings_log::sim::SimFs;
    use tidings_log::{Log, LogOptions};
    use tokio::sync::Semaphore;

    use super::*;

    fn reg(
        message_id: u64,
        key: Option<&str>,
        reply: Option<Reply>,
        started: Instant,
    ) -> Registration {
        Registration {
            message_id,
            channel: "g".into(),
            seq: message_id,
            ts: 7,
            key: key.map(str::to_owned),
            origin: Some(3),
            reply,
            started,
        }
    }

    /// The registry, metrics, a session's in-flight slots and its answer queue.
    fn setup(
        slots: usize,
    ) -> (
        Completions,
        Metrics,
        Arc<Semaphore>,
        Answers,
        mpsc::UnboundedReceiver<Box<Answer>>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Completions::default(),
            Metrics::default(),
            Arc::new(Semaphore::new(slots)),
            tx,
            rx,
        )
    }

    fn reply(to: &Answers, slots: &Arc<Semaphore>, id: &str) -> Reply {
        Reply {
            to: to.clone(),
            client_msg_id: id.into(),
            permit: slots.clone().try_acquire_owned().unwrap(),
        }
    }

    #[tokio::test]
    async fn the_applier_answers_the_waiter_and_the_session_once() {
        let (c, m, slots, tx, mut answers) = setup(2);
        let registered = c.register(reg(
            5,
            Some("k"),
            Some(reply(&tx, &slots, "a")),
            Instant::now(),
        ));
        assert!(
            registered.unwrap().is_none(),
            "a session's send is answered through its reply"
        );
        let mut rx = c.in_flight("k").expect("a retry finds it while in flight");
        // Messages nobody registered (another server's, a replay) are skipped.
        let origins = c.take([(4, 40), (5, 50)].into_iter()).answer(&m);
        assert_eq!(origins.get(&5), Some(&3));
        assert!(c.in_flight("k").is_none());
        assert_eq!(c.len(), 0);
        let sent = rx.wait_for(Option::is_some).await.unwrap().clone();
        let sent = sent.unwrap().unwrap();
        assert_eq!(
            (sent.seq, sent.message_id, sent.offset, sent.ts),
            (5, 5, 50, 7)
        );
        let a = answers.try_recv().unwrap();
        assert_eq!(a.client_msg_id, "a");
        assert_eq!(a.result.unwrap().offset, 50);
        assert_eq!(
            slots.available_permits(),
            1,
            "the slot is held until written"
        );
        drop(a.permit);
        assert_eq!(slots.available_permits(), 2);
        assert!(answers.try_recv().is_err(), "answered once");
        assert_eq!(m.sends.get(), 1);
    }

    #[tokio::test]
    async fn a_failed_append_is_answered_with_the_logs_error() {
        let fs = SimFs::new();
        let log = Log::open(
            "/sim/completions",
            LogOptions::default().with_vfs(Arc::new(fs.clone())),
        )
        .await
        .unwrap();
        let (c, m, slots, tx, mut answers) = setup(2);
        c.register(reg(
            1,
            Some("k"),
            Some(reply(&tx, &slots, "a")),
            Instant::now(),
        ))
        .unwrap();
        c.register(reg(2, None, Some(reply(&tx, &slots, "b")), Instant::now()))
            .unwrap();
        let mut rx = c.in_flight("k").unwrap();
        fs.fail_write_after(1, 0);
        // Both sends in one append.
        let pending = log
            .enqueue(vec![Bytes::from_static(b"x"), Bytes::from_static(b"y")])
            .await
            .unwrap();
        c.enqueued(&[1, 2], pending);
        // Not poisoned yet (as far as the sweep is told): nothing is answered.
        assert_eq!(c.sweep(false, Instant::now(), &m), 0);
        while log.poisoned().is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            c.sweep(true, Instant::now(), &m),
            2,
            "each send of the append"
        );
        let mut told: Vec<String> = Vec::new();
        for _ in 0..2 {
            let a = answers.try_recv().unwrap();
            assert!(a.result.is_err());
            told.push(a.client_msg_id.clone());
        }
        told.sort();
        assert_eq!(told, ["a", "b"]);
        let outcome = rx.wait_for(Option::is_some).await.unwrap().clone();
        assert!(matches!(outcome, Some(Err(_))));
        assert!(
            c.in_flight("k").is_none(),
            "nothing was written: a retry may send again"
        );
        assert_eq!(c.len(), 0);
        assert_eq!(m.sends.get(), 0);
    }

    #[tokio::test]
    async fn a_late_session_send_is_told_apply_timeout_and_stays_in_flight() {
        let (c, m, slots, tx, mut answers) = setup(1);
        let long_ago = Instant::now() - APPLY_TIMEOUT - Duration::from_secs(1);
        c.register(reg(1, Some("k"), Some(reply(&tx, &slots, "a")), long_ago))
            .unwrap();
        assert_eq!(c.sweep(false, Instant::now(), &m), 1);
        let a = answers.try_recv().unwrap();
        assert_eq!(a.result.unwrap_err().code, "apply_timeout");
        assert_eq!(
            a.not_applied,
            Some(("g".to_owned(), 1)),
            "its channel and seq"
        );
        drop(a.permit);
        assert_eq!(slots.available_permits(), 1);
        // Told once; the send is still in flight, and the applier still completes it.
        assert_eq!(c.sweep(false, Instant::now(), &m), 0);
        assert!(c.in_flight("k").is_some());
        let origins = c.take([(1, 10)].into_iter()).answer(&m);
        assert!(
            origins.is_empty(),
            "without a sendack coming, the session gets the message as a push"
        );
        assert!(
            answers.try_recv().is_err(),
            "the session was already answered"
        );
        assert_eq!(m.sends.get(), 1);
    }

    #[tokio::test]
    async fn when_the_applier_stops_every_send_is_answered_and_new_ones_refused() {
        let (c, m, slots, tx, mut answers) = setup(2);
        c.register(reg(1, None, Some(reply(&tx, &slots, "a")), Instant::now()))
            .unwrap();
        c.close(shutting_down(), &m);
        assert_eq!(
            answers.try_recv().unwrap().result.unwrap_err().code,
            "shutting_down"
        );
        let Err((e, back)) =
            c.register(reg(2, None, Some(reply(&tx, &slots, "b")), Instant::now()))
        else {
            panic!("registered after close")
        };
        assert_eq!(e.code, "shutting_down");
        assert_eq!(
            back.unwrap().client_msg_id,
            "b",
            "the reply is given back to answer"
        );
    }

    #[tokio::test]
    async fn a_message_id_already_in_flight_is_refused_not_overwritten() {
        let c = Completions::default();
        let m = Metrics::default();
        let mut first = c
            .register(reg(1, Some("k"), None, Instant::now()))
            .unwrap()
            .expect("a send without a reply gets a receiver");
        let Err((e, _)) = c.register(reg(1, Some("j"), None, Instant::now())) else {
            panic!("registered twice")
        };
        assert_eq!(e.code, "internal");
        assert!(c.in_flight("j").is_none());
        // The first is intact and still answered.
        c.take([(1, 10)].into_iter()).answer(&m);
        let outcome = first.wait_for(Option::is_some).await.unwrap().clone();
        assert_eq!(outcome.unwrap().unwrap().offset, 10);
    }
}
