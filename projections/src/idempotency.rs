//! Idempotent sends: (sender, client_msg_id) → the message it produced, for a bounded window
//! (a count and an age, both measured in the log so the window is deterministic).

use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use serde::de::Error as _;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
///
/// Entries live in a queue in the order they were first recorded (the window evicts from the
/// front); a hash table holds only their 32-bit ids. Evicting an entry finds it in the table by
/// its stored hash and its id, so it never touches the key's bytes; each entry is one
/// allocation (key and channel together). The window is the rebuild's hottest structure: at
/// 100,000 sends it sees an insert and an eviction per message.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// At most this many sends are remembered.
    pub max_entries: usize,
    /// Sends older than this (by event time, relative to the newest) are forgotten — when a
    /// send is recorded, from the front of the queue; [`Idempotency::get`] does not look at
    /// the age: the window is a function of the log alone.
    pub max_age_ms: u64,
    /// Ids of the entries, by the hash of their key. Ids wrap around: `entries` never holds
    /// 2^32 entries, so `id - first_id` (wrapping) is an entry's index.
    table: HashTable<u32>,
    /// The entries, oldest first; `entries[i]` has id `first_id + i`.
    entries: VecDeque<Entry>,
    first_id: u32,
    hasher: foldhash::fast::RandomState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// `hash(from, client_msg_id)` (with this process's seed; never stored).
    hash: u64,
    /// When the send was first recorded (the window's clock).
    first_ts: u64,
    /// `"{from}\u{1f}{client_msg_id}{channel}"` (user ids cannot contain U+001F).
    text: Box<str>,
    /// Length of the key part, `"{from}\u{1f}{client_msg_id}"`.
    key_len: u32,
    seq: u64,
    message_id: u64,
    offset: u64,
    ts: u64,
}

impl Entry {
    fn new(hash: u64, first_ts: u64, from: &str, client_msg_id: &str, sent: SentRef) -> Self {
        let mut text =
            String::with_capacity(from.len() + 1 + client_msg_id.len() + sent.channel.len());
        text.push_str(from);
        text.push('\u{1f}');
        text.push_str(client_msg_id);
        let key_len = text.len() as u32;
        text.push_str(&sent.channel);
        Self {
            hash,
            first_ts,
            text: text.into_boxed_str(),
            key_len,
            seq: sent.seq,
            message_id: sent.message_id,
            offset: sent.offset,
            ts: sent.ts,
        }
    }

    fn key(&self) -> &str {
        self.text.get(..self.key_len as usize).unwrap_or_default()
    }

    fn channel(&self) -> &str {
        self.text.get(self.key_len as usize..).unwrap_or_default()
    }

    fn is(&self, from: &str, client_msg_id: &str) -> bool {
        let k = self.key().as_bytes();
        k.len() == from.len() + 1 + client_msg_id.len()
            && k.starts_with(from.as_bytes())
            && k[from.len()] == 0x1f
            && k.ends_with(client_msg_id.as_bytes())
    }

    fn sent(&self) -> SentRef {
        SentRef {
            channel: self.channel().to_owned(),
            seq: self.seq,
            message_id: self.message_id,
            offset: self.offset,
            ts: self.ts,
        }
    }

    fn set(&mut self, sent: SentRef) {
        let key_len = self.key_len as usize;
        let mut text = String::with_capacity(key_len + sent.channel.len());
        text.push_str(self.key());
        text.push_str(&sent.channel);
        self.text = text.into_boxed_str();
        (self.seq, self.message_id, self.offset, self.ts) =
            (sent.seq, sent.message_id, sent.offset, sent.ts);
    }
}

impl Default for Idempotency {
    fn default() -> Self {
        Self::new(100_000, 24 * 3600 * 1000)
    }
}

/// Equal when they remember the same sends in the same order under the same limits.
impl PartialEq for Idempotency {
    fn eq(&self, other: &Self) -> bool {
        self.max_entries == other.max_entries
            && self.max_age_ms == other.max_age_ms
            && self.entries.len() == other.entries.len()
            && self.entries.iter().zip(&other.entries).all(|(a, b)| {
                (
                    a.first_ts,
                    &a.text,
                    a.key_len,
                    a.seq,
                    a.message_id,
                    a.offset,
                    a.ts,
                ) == (
                    b.first_ts,
                    &b.text,
                    b.key_len,
                    b.seq,
                    b.message_id,
                    b.offset,
                    b.ts,
                )
            })
    }
}

impl Eq for Idempotency {}

/// The window reserves room for this many entries at most.
const RESERVE_MAX: usize = 1 << 20;

impl Idempotency {
    /// An empty window (it reserves its room at its first entry: [`Idempotency::reserve`]).
    pub fn new(max_entries: usize, max_age_ms: u64) -> Self {
        Self {
            // The 32-bit ids need fewer than 2^32 live entries.
            max_entries: max_entries.min(u32::MAX as usize - 1),
            max_age_ms,
            table: HashTable::new(),
            entries: VecDeque::new(),
            first_id: 0,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn hash(&self, from: &str, client_msg_id: &str) -> u64 {
        self.hasher.hash_one((from, client_msg_id))
    }

    fn position(&self, hash: u64, from: &str, client_msg_id: &str) -> Option<usize> {
        let first = self.first_id;
        let entries = &self.entries;
        self.table
            .find(hash, |&id| {
                entries
                    .get(id.wrapping_sub(first) as usize)
                    .is_some_and(|e| e.is(from, client_msg_id))
            })
            .map(|&id| id.wrapping_sub(first) as usize)
    }

    /// The earlier result of this send, if still remembered.
    pub fn get(&self, from: &str, client_msg_id: &str) -> Option<SentRef> {
        let i = self.position(self.hash(from, client_msg_id), from, client_msg_id)?;
        self.entries.get(i).map(Entry::sent)
    }

    /// Entries remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn record(&mut self, from: &str, client_msg_id: &str, sent: SentRef) {
        if client_msg_id.is_empty() {
            return;
        }
        let ts = sent.ts;
        let hash = self.hash(from, client_msg_id);
        match self.position(hash, from, client_msg_id) {
            // A repeat keeps its place in the window and takes the new result.
            Some(i) => {
                if let Some(e) = self.entries.get_mut(i) {
                    e.set(sent);
                }
            }
            None => self.push(Entry::new(hash, ts, from, client_msg_id, sent)),
        }
        while let Some(front) = self.entries.front() {
            let too_many = self.entries.len() > self.max_entries;
            let too_old = ts.saturating_sub(front.first_ts) > self.max_age_ms;
            if !(too_many || too_old) {
                break;
            }
            self.pop_front();
        }
    }

    /// Reserves room for `max_entries` (up to [`RESERVE_MAX`]) at once.
    ///
    /// The entries' room is address space until entries arrive (the table's control bytes are
    /// written at once: ~256 KiB for 100,000). Grown by doubling instead, a filling window of
    /// 100,000 moved its ~4.5 MiB of entries to a fresh 9 MiB block at 65,536 entries, and the
    /// page faults of that step showed in the send latency (a ~10 ms stall of every send at
    /// that moment, seen by `tidings-load send`'s timeline). The table gets twice the room: a
    /// full window evicts as it inserts, and with the table over half full the tombstones of
    /// evictions make it grow (hashbrown rehashes in place only at most half full), which it
    /// did to twice the size anyway. Done at the first entry, not in `new`, so that a window
    /// made and dropped (a default state, say) costs nothing.
    fn reserve(&mut self) {
        // The window holds one more than `max_entries` between a push and its eviction.
        let room = self.max_entries.saturating_add(1).min(RESERVE_MAX);
        self.entries.reserve_exact(room);
        let first = self.first_id;
        let entries = &self.entries;
        self.table.reserve(room.saturating_mul(2), |&id| {
            entries
                .get(id.wrapping_sub(first) as usize)
                .map_or(0, |e| e.hash)
        });
    }

    /// Appends an entry whose key is not in the window.
    fn push(&mut self, e: Entry) {
        if self.entries.capacity() == 0 {
            self.reserve();
        }
        let id = self.first_id.wrapping_add(self.entries.len() as u32);
        let first = self.first_id;
        let entries = &self.entries;
        self.table.insert_unique(e.hash, id, |&id| {
            entries
                .get(id.wrapping_sub(first) as usize)
                .map_or(0, |e| e.hash)
        });
        self.entries.push_back(e);
    }

    fn pop_front(&mut self) {
        let Some(e) = self.entries.pop_front() else {
            return;
        };
        let id = self.first_id;
        if let Ok(slot) = self.table.find_entry(e.hash, |&x| x == id) {
            slot.remove();
        }
        self.first_id = self.first_id.wrapping_add(1);
    }
}

/// The snapshot form: `{max_entries, max_age_ms, map: {key: SentRef}, order: [[ts, key]]}`
/// (the form snapshots have always had).
#[derive(Deserialize)]
struct Wire {
    max_entries: usize,
    max_age_ms: u64,
    map: std::collections::HashMap<String, SentRef>,
    order: VecDeque<(u64, String)>,
}

impl Serialize for Idempotency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Map<'a>(&'a VecDeque<Entry>);
        impl Serialize for Map<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|e| (e.key(), e.sent())))
            }
        }
        struct Order<'a>(&'a VecDeque<Entry>);
        impl Serialize for Order<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|e| (e.first_ts, e.key())))
            }
        }
        let mut st = s.serialize_struct("Idempotency", 4)?;
        st.serialize_field("max_entries", &self.max_entries)?;
        st.serialize_field("max_age_ms", &self.max_age_ms)?;
        st.serialize_field("map", &Map(&self.entries))?;
        st.serialize_field("order", &Order(&self.entries))?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Idempotency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut w = Wire::deserialize(d)?;
        if w.map.len() != w.order.len() {
            return Err(D::Error::custom(format!(
                "idempotency window: {} entries but {} in order",
                w.map.len(),
                w.order.len()
            )));
        }
        let mut out = Idempotency::new(w.max_entries, w.max_age_ms);
        for (ts, key) in w.order {
            let Some(sent) = w.map.remove(&key) else {
                return Err(D::Error::custom(
                    "idempotency window: an ordered key has no entry (or appears twice)",
                ));
            };
            let (from, id) = key.split_once('\u{1f}').unwrap_or((&key, ""));
            out.push(Entry::new(out.hash(from, id), ts, from, id, sent));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sent(channel: &str, seq: u64, ts: u64) -> SentRef {
        SentRef {
            channel: channel.into(),
            seq,
            message_id: seq * 10,
            offset: seq * 100,
            ts,
        }
    }

    #[test]
    fn the_window_keeps_the_newest_by_count_and_by_age() {
        let mut w = Idempotency::new(3, 1_000);
        for i in 1..=5 {
            w.record("al", &format!("m{i}"), sent("g", i, i));
        }
        assert_eq!(w.len(), 3);
        assert!(w.get("al", "m1").is_none() && w.get("al", "m2").is_none());
        assert_eq!(w.get("al", "m5"), Some(sent("g", 5, 5)));
        // An old entry leaves when a newer send is more than max_age later.
        w.record("bo", "x", sent("h", 9, 1_004));
        assert!(w.get("al", "m3").is_none(), "1,004 - 3 > 1,000");
        assert_eq!(w.get("al", "m4"), Some(sent("g", 4, 4)));
        assert_eq!(w.get("bo", "x"), Some(sent("h", 9, 1_004)));
        // Through many evictions (ids wrapping is covered by the arithmetic being wrapping).
        for i in 0..10_000 {
            w.record("cy", &i.to_string(), sent("k", i, 2_000 + i));
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.get("cy", "9999"), Some(sent("k", 9999, 11_999)));
        assert!(w.get("cy", "9996").is_none());
    }

    #[test]
    fn the_window_is_reserved_once_and_never_moves() {
        let mut w = Idempotency::new(5_000, u64::MAX);
        assert_eq!(
            w.entries.capacity(),
            0,
            "nothing reserved before the first entry"
        );
        w.record("al", "first", sent("g", 0, 0));
        let (entries, table) = (w.entries.capacity(), w.table.allocation_size());
        assert!(entries > 5_000 && w.table.capacity() > 10_000);
        for i in 1..20_000u64 {
            w.record("al", &i.to_string(), sent("g", i, i));
        }
        assert_eq!(w.len(), 5_000);
        assert_eq!(
            (w.entries.capacity(), w.table.allocation_size()),
            (entries, table),
            "no growth while the window filled and turned over"
        );
        // A huge window reserves a bounded amount.
        let mut big = Idempotency::new(usize::MAX, 1);
        big.record("al", "x", sent("g", 1, 1));
        assert!(big.entries.capacity() < 2 * RESERVE_MAX);
    }

    #[test]
    fn keys_do_not_run_together_and_empty_ids_are_not_remembered() {
        let mut w = Idempotency::new(10, 1_000);
        w.record("ab", "c", sent("g", 1, 1));
        assert!(w.get("a", "bc").is_none());
        assert!(w.get("ab", "").is_none());
        w.record("al", "", sent("g", 2, 2));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn a_repeat_keeps_its_place_and_takes_the_new_result() {
        let mut w = Idempotency::new(2, 1_000);
        w.record("al", "a", sent("g", 1, 1));
        w.record("al", "b", sent("g", 2, 2));
        w.record("al", "a", sent("other-channel", 3, 3));
        assert_eq!(w.len(), 2);
        assert_eq!(w.get("al", "a"), Some(sent("other-channel", 3, 3)));
        // "a" is still the oldest: the next send evicts it.
        w.record("al", "c", sent("g", 4, 4));
        assert!(w.get("al", "a").is_none());
        assert!(w.get("al", "b").is_some());
    }

    #[test]
    fn a_snapshot_round_trip_keeps_order_and_results() {
        let mut w = Idempotency::new(3, 1_000);
        for i in 1..=4 {
            w.record("al", &format!("m{i}"), sent("g", i, i));
        }
        let mut buf = Vec::new();
        ciborium::into_writer(&w, &mut buf).unwrap();
        let mut back: Idempotency = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back, w);
        // The order survived: the oldest (m2) goes first.
        back.record("al", "m5", sent("g", 5, 5));
        assert!(back.get("al", "m2").is_none());
        assert!(back.get("al", "m3").is_some());
    }
}
