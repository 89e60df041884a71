//! Requests waiting for their event to be applied (read-your-writes). Each waiter is woken once,
//! by the applier pass that applies its offset — not by every pass: with thousands of sends in
//! flight, a shared "applied" signal would wake all of them on every batch.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::server::error::ApiError;

#[derive(Debug, Default)]
struct Inner {
    /// Every offset below this is applied.
    next: u64,
    /// The applier stopped, with what waiters are told: nothing more will be applied.
    closed: Option<ApiError>,
    by_offset: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
}

/// What a waiter gets.
#[derive(Debug)]
pub(crate) enum Wait {
    /// Already applied.
    Done,
    /// Resolves when applied; errs when the applier stops first.
    Pending(oneshot::Receiver<()>),
    /// The applier has stopped (why) and the offset was not applied.
    Stopped(ApiError),
}

/// The registry; the applier advances it after each pass.
#[derive(Debug, Default)]
pub(crate) struct AppliedWaiters {
    inner: Mutex<Inner>,
}

impl AppliedWaiters {
    /// Starts at `next` (everything below it already applied).
    pub(crate) fn new(next: u64) -> Self {
        Self {
            inner: Mutex::new(Inner {
                next,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for `offset` to be applied.
    pub(crate) fn wait(&self, offset: u64) -> Wait {
        let mut w = self.lock();
        if offset < w.next {
            return Wait::Done;
        }
        if let Some(why) = &w.closed {
            return Wait::Stopped(why.clone());
        }
        let (tx, rx) = oneshot::channel();
        w.by_offset.entry(offset).or_default().push(tx);
        Wait::Pending(rx)
    }

    /// Everything below `next` is applied: wakes exactly those waiters.
    pub(crate) fn advance(&self, next: u64) {
        let ready = {
            let mut w = self.lock();
            w.next = w.next.max(next);
            let upto = w.next;
            let rest = w.by_offset.split_off(&upto);
            std::mem::replace(&mut w.by_offset, rest)
        };
        for tx in ready.into_values().flatten() {
            let _ = tx.send(());
        }
    }

    /// Why the applier stopped (`None`: it runs). A waiter whose receiver errs reads it here:
    /// [`close`](Self::close) sets it before it drops the senders.
    pub(crate) fn stopped(&self) -> Option<ApiError> {
        self.lock().closed.clone()
    }

    /// The applier stopped (`why`: what waiters are told): every waiter still waiting gets an
    /// error.
    pub(crate) fn close(&self, why: ApiError) {
        let dropped = {
            let mut w = self.lock();
            w.closed = Some(why);
            std::mem::take(&mut w.by_offset)
        };
        drop(dropped);
    }

    /// Waiters registered (for tests and metrics).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_offset.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_waiter_wakes_when_its_offset_is_applied() {
        let w = AppliedWaiters::new(5);
        assert!(matches!(w.wait(4), Wait::Done));
        let Wait::Pending(a) = w.wait(5) else {
            panic!("5 is not applied yet")
        };
        let Wait::Pending(mut b) = w.wait(9) else {
            panic!("9 is not applied yet")
        };
        w.advance(6);
        assert!(a.await.is_ok());
        assert!(b.try_recv().is_err(), "9 is still waiting");
        assert_eq!(w.len(), 1);
        // Never backwards.
        w.advance(3);
        assert!(matches!(w.wait(5), Wait::Done));
        assert_eq!(w.stopped(), None);
        w.close(crate::server::completions::applier_stopped());
        assert!(b.await.is_err(), "the applier stopped first");
        assert_eq!(w.stopped().map(|e| e.code), Some("not_ready"));
        assert!(matches!(w.wait(10), Wait::Stopped(e) if e.code == "not_ready"));
        assert!(matches!(w.wait(1), Wait::Done));
    }
}
