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
//! Should the runtime drop it first (a log outliving its runtime), the batches still in the
//! channel are acknowledged as the channel drops them, and the writer, finding the channel
//! closed, acknowledges inline from then on. Only a multi-thread runtime gets an
//! acknowledger (see [`Acks::start`]).
//!
//! (One narrow exception: a batch sent in the instant the runtime drops the task may land in
//! the channel after it was drained; it is delivered when the writer drops its sender, at
//! close.) Only append acknowledgements keep their order. The replies to `sync`, `roll` and `close` are
//! sent by the writer directly, so `sync()` may return before the acknowledgements of earlier
//! appends have arrived (their bytes are durable all the same).

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
/// Delivered when dropped, wherever that happens: by the acknowledger, by the writer, or by
/// the channel itself when the runtime drops the acknowledger with batches still queued.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) pending: Vec<Pending>,
    pub(crate) result: std::result::Result<u64, Arc<LogError>>,
    pub(crate) permits: Arc<Semaphore>,
}

impl Drop for Outcome {
    /// Sends every acknowledgement, then gives the permits back.
    fn drop(&mut self) {
        let mut total = 0usize;
        for p in self.pending.drain(..) {
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
        self.permits.add_permits(total);
    }
}

/// The writer's side: acknowledges inline or through the acknowledger task.
#[derive(Debug)]
pub(crate) struct Acks {
    tx: Option<mpsc::UnboundedSender<Outcome>>,
    /// Batches handed to the task and not yet delivered.
    queued: Arc<AtomicUsize>,
}

impl Acks {
    /// Starts the acknowledger on the current runtime when that is a multi-thread runtime;
    /// returns the writer's side and the task's handle. A current-thread runtime runs its
    /// tasks only while someone drives it — a log opened in one and used from elsewhere would
    /// wait forever for its acknowledgements — so there the writer acknowledges everything.
    pub(crate) fn start() -> (Acks, Option<tokio::task::JoinHandle<()>>) {
        let queued = Arc::new(AtomicUsize::new(0));
        let rt = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|rt| rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let Some(rt) = rt else {
            return (Acks { tx: None, queued }, None);
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = rt.spawn(run(rx, queued.clone()));
        let acks = Acks {
            tx: Some(tx),
            queued,
        };
        (acks, Some(task))
    }

    /// Acknowledges a batch's appends (see the module doc for where).
    pub(crate) fn send(&self, mut outcome: Outcome) {
        let inline =
            outcome.pending.len() <= INLINE_MAX && self.queued.load(Ordering::Acquire) == 0;
        let Some(tx) = self.tx.as_ref().filter(|_| !inline) else {
            return drop(outcome);
        };
        // A batch may wait in the channel: it keeps no more memory than it needs.
        if outcome.pending.capacity() > 2 * outcome.pending.len() {
            outcome.pending.shrink_to_fit();
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError(back)) = tx.send(outcome) {
            // The runtime dropped the acknowledger.
            self.queued.fetch_sub(1, Ordering::AcqRel);
            drop(back);
        }
    }
}

/// The acknowledger task: delivers batches in the order the writer sent them.
async fn run(mut rx: mpsc::UnboundedReceiver<Outcome>, queued: Arc<AtomicUsize>) {
    while let Some(outcome) = rx.recv().await {
        drop(outcome);
        queued.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(
        n: u64,
        permits: &Arc<Semaphore>,
    ) -> (Outcome, Vec<oneshot::Receiver<Result<AppendAck>>>) {
        let mut rxs = Vec::new();
        let pending = (0..n)
            .map(|i| {
                let (ack, rx) = oneshot::channel();
                rxs.push(rx);
                Pending {
                    ack,
                    base: i,
                    count: 1,
                    size: 100,
                }
            })
            .collect();
        let o = Outcome {
            pending,
            result: Ok(7),
            permits: permits.clone(),
        };
        (o, rxs)
    }

    #[test]
    fn batches_still_queued_when_the_channel_goes_are_acknowledged() {
        let permits = Arc::new(Semaphore::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let (a, mut acks_a) = outcome(10, &permits);
        let (b, mut acks_b) = outcome(5, &permits);
        tx.send(a).unwrap();
        tx.send(b).unwrap();
        // The acknowledger's receiver dropped with both batches in it (its runtime shut down).
        drop(rx);
        for (i, rx) in acks_a.iter_mut().chain(acks_b.iter_mut()).enumerate() {
            let ack = rx
                .try_recv()
                .unwrap_or_else(|e| panic!("append {i}: {e}"))
                .unwrap();
            assert_eq!(ack.timestamp_ms, 7);
        }
        assert_eq!(permits.available_permits(), 15 * 100);
    }

    #[test]
    fn a_failed_batch_fails_every_append_in_it_and_gives_its_permits_back() {
        let permits = Arc::new(Semaphore::new(0));
        let (mut o, mut rxs) = outcome(8, &permits);
        o.result = Err(Arc::new(LogError::Closed));
        drop(o);
        for rx in &mut rxs {
            match rx.try_recv().unwrap() {
                Err(LogError::Poisoned { cause }) => assert!(matches!(*cause, LogError::Closed)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(permits.available_permits(), 8 * 100);
    }
}
