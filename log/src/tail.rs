//! Following the log: a reader that waits for the high-watermark to move.

use tokio::sync::watch;

use crate::batch::Record;
use crate::error::{LogError, Result};
use crate::log::{Log, Watermark};

/// How often a tail on a read-only view looks for new data.
const READ_ONLY_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads the log from a position on, waiting for new records. Never returns a record past the
/// high-watermark. Ends with `LogError::Closed` when the log closes.
#[derive(Debug)]
pub struct Tail {
    log: Log,
    watermark: watch::Receiver<Watermark>,
    next: u64,
}

impl Tail {
    pub(crate) fn new(log: Log, watermark: watch::Receiver<Watermark>, from: u64) -> Self {
        Self {
            log,
            watermark,
            next: from,
        }
    }

    /// The offset the next record will have.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next records (up to about `max_bytes` of payload, at least one), waiting until
    /// there are some.
    pub async fn next_batch(&mut self, max_bytes: usize) -> Result<Vec<Record>> {
        loop {
            if self.log.is_closed() {
                return Err(LogError::Closed);
            }
            let hw = self.watermark.borrow_and_update().next_offset;
            if self.next < hw {
                let records = self.log.read(self.next, max_bytes).await?;
                if let Some(last) = records.last() {
                    self.next = last.offset + 1;
                    return Ok(records);
                }
            }
            if self.log.is_read_only() {
                // Nobody publishes a read-only view's watermark: look for new data now and then.
                tokio::time::sleep(READ_ONLY_POLL).await;
                let log = self.log.clone();
                tokio::task::spawn_blocking(move || log.refresh())
                    .await
                    .map_err(|_| LogError::Closed)??;
                continue;
            }
            if self.watermark.changed().await.is_err() {
                return Err(LogError::Closed);
            }
        }
    }

    /// The next record, waiting until there is one.
    pub async fn next(&mut self) -> Result<Record> {
        // `next_batch` returns at least one record: with a budget of 0, the first and every
        // empty one after it (0 bytes fit a budget of 0). Until 2026-12-03 this took the last
        // and moved past the others (found by a review).
        let first = self
            .next_batch(0)
            .await?
            .into_iter()
            .next()
            .ok_or(LogError::Closed)?;
        self.next = first.offset + 1;
        Ok(first)
    }
}
