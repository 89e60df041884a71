//! Acknowledgements: handing a written batch's outcome back to the appends it holds.
//!
//! The writer is a plain thread outside the async runtime, so each acknowledgement it sends
//! wakes its appender remotely: through the runtime's shared inject queue (a lock, which the
//! workers take too) and often a futex wake. With 256 appenders a batch holds ~130 appends,
//! and acknowledging them took the writer ~16 µs of each ~150 µs cycle, time in which it
//! could not start the next write.
//!
//! So a batch of more than [`INLINE_MAX`] appends goes to the *acknowledger*, a task on the
//! runtime: one remote wake for the batch, and the appenders it wakes land in a worker's own
//! run queue. Small batches (one or a few appenders waiting, where the extra hop would only
//! add latency) are acknowledged by the writer itself — unless the acknowledger still holds
//! batches, so acknowledgements never overtake one another.
//!
//! An append's queue permits come back once it has been acknowledged, wherever that happens,
//! so batches waiting here count against `max_queued_bytes` like those still queued. The task
//! is owned by the log: it ends when the writer drops its sender, and `Log::close` joins it.
//! Should the runtime drop it first (a log outliving its runtime), the writer finds the channel
//! closed and acknowledges inline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::{LogError, Result};
use crate::log::AppendAck;

/// Batches of at most this many appends are acknowledged by the writer itself.
pub(crate) const INLINE_MAX: usize = 4;

/// An append waiting for its acknowledgement.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) ack: oneshot::Sender<Result<AppendAck>>,
    pub(crate) base: u64,
    pub(crate) count: u32,
    /// Its queue permits (encoded size).
    pub(crate) size: u32,
}

/// The appends of one batch and what became of it: the batch timestamp, or why it failed.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) pending: Vec<Pending>,
    pub(crate) result: std::result::Result<u64, Arc<LogError>>,
}

impl Outcome {
    /// Sends every acknowledgement, then gives the permits back.
    fn deliver(self, permits: &Semaphore) {
        let mut total = 0usize;
        for p in self.pending {
            total += p.size as usize;
            let msg = match &self.result {
                Ok(ts) => Ok(AppendAck {
                    base_offset: p.base,
                    count: p.count,
                    timestamp_ms: *ts,
                }),
                Err(cause) => Err(LogError::Poisoned {
                    cause: cause.clone(),
                }),
            };
            // The appender may have stopped waiting; its append stands all the same.
            let _ = p.ack.send(msg);
        }
        permits.add_permits(total);
    }
}

/// The writer's side: acknowledges inline or through the acknowledger task.
#[derive(Debug)]
pub(crate) struct Acks {
    tx: Option<mpsc::UnboundedSender<Outcome>>,
    /// Batches handed to the task and not yet delivered.
    queued: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
}

impl Acks {
    /// Starts the acknowledger on the current runtime; returns the writer's side and the
    /// task's handle (`None` outside a runtime: then the writer acknowledges everything).
    pub(crate) fn start(permits: Arc<Semaphore>) -> (Acks, Option<tokio::task::JoinHandle<()>>) {
        let queued = Arc::new(AtomicUsize::new(0));
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            let acks = Acks {
                tx: None,
                queued,
                permits,
            };
            return (acks, None);
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = rt.spawn(run(rx, queued.clone(), permits.clone()));
        let acks = Acks {
            tx: Some(tx),
            queued,
            permits,
        };
        (acks, Some(task))
    }

    /// Acknowledges a batch's appends (see the module doc for where).
    pub(crate) fn send(&self, outcome: Outcome) {
        let inline =
            outcome.pending.len() <= INLINE_MAX && self.queued.load(Ordering::Acquire) == 0;
        let outcome = match (&self.tx, inline) {
            (Some(tx), false) => {
                self.queued.fetch_add(1, Ordering::AcqRel);
                match tx.send(outcome) {
                    Ok(()) => return,
                    Err(mpsc::error::SendError(back)) => {
                        self.queued.fetch_sub(1, Ordering::AcqRel);
                        back
                    }
                }
            }
            _ => outcome,
        };
        outcome.deliver(&self.permits);
    }
}

/// The acknowledger task: delivers batches in the order the writer sent them.
async fn run(
    mut rx: mpsc::UnboundedReceiver<Outcome>,
    queued: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
) {
    while let Some(outcome) = rx.recv().await {
        outcome.deliver(&permits);
        queued.fetch_sub(1, Ordering::AcqRel);
    }
}
