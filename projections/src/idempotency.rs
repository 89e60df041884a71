//! Idempotent sends: (sender, client_msg_id) → the message it produced, for a bounded window
//! (a count and an age, both measured in the log so the window is deterministic).

use std::collections::VecDeque;

use crate::FastMap as HashMap;

use serde::{Deserialize, Serialize};

use crate::ids::ChannelId;

/// What a send produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentRef {
    /// The channel.
    pub channel: ChannelId,
    /// The message's seq.
    pub seq: u64,
    /// The server message id.
    pub message_id: u64,
    /// The log offset of the send.
    pub offset: u64,
    /// When it was accepted.
    pub ts: u64,
}

/// The idempotency window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotency {
    /// At most this many sends are remembered.
    pub max_entries: usize,
    /// Sends older than this (by event time, relative to the newest) are forgotten.
    pub max_age_ms: u64,
    /// Keyed by `"{from}\u{1f}{client_msg_id}"` (user ids cannot contain U+001F).
    map: HashMap<String, SentRef>,
    order: VecDeque<(u64, String)>,
}

fn key(from: &str, client_msg_id: &str) -> String {
    let mut k = String::with_capacity(from.len() + 1 + client_msg_id.len());
    k.push_str(from);
    k.push('\u{1f}');
    k.push_str(client_msg_id);
    k
}

impl Default for Idempotency {
    fn default() -> Self {
        Self::new(100_000, 24 * 3600 * 1000)
    }
}

impl Idempotency {
    /// An empty window.
    pub fn new(max_entries: usize, max_age_ms: u64) -> Self {
        Self {
            max_entries,
            max_age_ms,
            map: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    /// The earlier result of this send, if still remembered.
    pub fn get(&self, from: &str, client_msg_id: &str) -> Option<&SentRef> {
        self.map.get(&key(from, client_msg_id))
    }

    /// Entries remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn record(&mut self, from: &str, client_msg_id: &str, sent: SentRef) {
        if client_msg_id.is_empty() {
            return;
        }
        let ts = sent.ts;
        let key = key(from, client_msg_id);
        if self.map.insert(key.clone(), sent).is_none() {
            self.order.push_back((ts, key));
        }
        while let Some((front_ts, ..)) = self.order.front() {
            let too_many = self.order.len() > self.max_entries;
            let too_old = ts.saturating_sub(*front_ts) > self.max_age_ms;
            if !(too_many || too_old) {
                break;
            }
            if let Some((_, k)) = self.order.pop_front() {
                self.map.remove(&k);
            }
        }
    }
}
