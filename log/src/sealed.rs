//! What sealed segments hold: their open files and loaded sparse indexes, kept only for the
//! most recently used ones (`log/DESIGN.md`, "Open files and memory").
//!
//! A sealed segment opens its file and loads its index on first use. Until 2026-11-30 it then
//! kept both until the process exited, so a reader paging a history from offset 0 left every
//! segment of the log open (one file descriptor each, and up to ~768 KiB of index per 128 MiB
//! segment): a long-running server grew by hundreds of descriptors and megabytes a day until
//! it hit the open-file limit, and a roll that could not create its files then poisoned the
//! log. Now the files and indexes of sealed segments live here, at most
//! [`MAX_OPEN_SEALED_FILES`] and [`MAX_LOADED_SEALED_INDEXES`] of them, the least recently
//! used dropped first.
//!
//! Dropping drops only this cache's reference: a reader that took a file keeps reading through
//! its own handle (positional reads) until it lets go, and the next reader reopens the file by
//! its path, or reloads the index from its files. The active segment's file and index are never
//! here: the segment holds them itself, and hands the file over when it is sealed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::index::SegmentIndex;
use crate::vfs::VfsFile;

/// Sealed segment files this process holds open at most (plus any a reader is using at that
/// moment, and the active segment's, which is never counted here).
///
/// Per process, not per log: the open-file limit (`RLIMIT_NOFILE`, often 1024 soft) is the
/// process's, and the server's sockets need most of it. 64 covers as many readers at as many
/// different places in the history at once; reading one more segment costs an `open` and a
/// `close`, small beside the reads of its batches.
pub const MAX_OPEN_SEALED_FILES: usize = 64;

/// Sealed segment indexes this process holds in memory at most (plus any a lookup is using at
/// that moment). One is up to 24 bytes per `index_interval_bytes` of its segment: ~768 KiB for a
/// 128 MiB segment at the default 4 KiB, so at most ~48 MiB here. Loading one more reads its
/// two index files (about 0.6% of the segment's size).
pub const MAX_LOADED_SEALED_INDEXES: usize = 64;

/// The cache every sealed segment of this process uses.
pub(crate) static SEALED: SealedCache =
    SealedCache::new(MAX_OPEN_SEALED_FILES, MAX_LOADED_SEALED_INDEXES);

/// Source of segment keys (see [`next_key`]).
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

/// A key for a new segment value, never given twice in this process: a segment replaced by
/// another at the same base (tiering swaps a local one for its remote copy) never finds the
/// other's entries.
pub(crate) fn next_key() -> u64 {
    NEXT_KEY.fetch_add(1, Ordering::Relaxed)
}

/// The open files and loaded indexes of sealed segments, by segment key.
#[derive(Debug)]
pub(crate) struct SealedCache {
    files: Mutex<Lru<Arc<dyn VfsFile>>>,
    indexes: Mutex<Lru<Arc<SegmentIndex>>>,
}

impl SealedCache {
    pub(crate) const fn new(files: usize, indexes: usize) -> Self {
        Self {
            files: Mutex::new(Lru::new(files)),
            indexes: Mutex::new(Lru::new(indexes)),
        }
    }

    /// The open file of segment `key`, if kept (now the most recently used).
    pub(crate) fn file(&self, key: u64) -> Option<Arc<dyn VfsFile>> {
        lock(&self.files).get(key)
    }

    /// Keeps `file` as segment `key`'s and returns the file kept: the one already there when
    /// another reader opened it meanwhile.
    pub(crate) fn keep_file(&self, key: u64, file: Arc<dyn VfsFile>) -> Arc<dyn VfsFile> {
        let (kept, displaced) = lock(&self.files).insert(key, file);
        // Closed (unless a reader still holds it) after the lock is released.
        drop(displaced);
        kept
    }

    /// The loaded index of segment `key`, if kept (now the most recently used).
    pub(crate) fn index(&self, key: u64) -> Option<Arc<SegmentIndex>> {
        lock(&self.indexes).get(key)
    }

    /// Keeps `index` as segment `key`'s and returns the index kept (see [`Self::keep_file`]).
    pub(crate) fn keep_index(&self, key: u64, index: Arc<SegmentIndex>) -> Arc<SegmentIndex> {
        let (kept, displaced) = lock(&self.indexes).insert(key, index);
        drop(displaced);
        kept
    }

    /// Drops what segment `key` has here (the segment itself is gone).
    pub(crate) fn forget(&self, key: u64) {
        let file = lock(&self.files).remove(key);
        let index = lock(&self.indexes).remove(key);
        drop((file, index));
    }
}

/// A poisoned lock is taken as it is: the cache's state is valid after any panic (each change
/// is a single `Vec` operation).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Values for at most `cap` keys; one more drops the least recently used.
#[derive(Debug)]
struct Lru<V> {
    cap: usize,
    /// Least recently used first. Short (`cap` is 64): a linear search costs less than the read
    /// it serves.
    entries: Vec<(u64, V)>,
}

impl<V: Clone> Lru<V> {
    const fn new(cap: usize) -> Self {
        Self {
            cap,
            entries: Vec::new(),
        }
    }

    /// The value for `key`, which becomes the most recently used.
    fn get(&mut self, key: u64) -> Option<V> {
        let i = self.entries.iter().position(|(k, _)| *k == key)?;
        let entry = self.entries.remove(i);
        let value = entry.1.clone();
        self.entries.push(entry);
        Some(value)
    }

    /// Keeps `value` for `key` as the most recently used, unless one is kept already (which
    /// stays). Returns the value kept and the values no longer kept: those pushed out, or
    /// `value` itself when it was not kept.
    fn insert(&mut self, key: u64, value: V) -> (V, Vec<V>) {
        if let Some(kept) = self.get(key) {
            return (kept, vec![value]);
        }
        self.entries.push((key, value.clone()));
        let over = self.entries.len().saturating_sub(self.cap);
        let displaced = self.entries.drain(..over).map(|(_, v)| v).collect();
        (value, displaced)
    }

    /// Drops `key`'s value from the cache and returns it.
    fn remove(&mut self, key: u64) -> Option<V> {
        let i = self.entries.iter().position(|(k, _)| *k == key)?;
        Some(self.entries.remove(i).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut lru = Lru::new(2);
        assert_eq!(lru.insert(1, "a"), ("a", vec![]));
        assert_eq!(lru.insert(2, "b"), ("b", vec![]));
        // A use makes 1 the most recently used: 2 goes next.
        assert_eq!(lru.get(1), Some("a"));
        assert_eq!(lru.insert(3, "c"), ("c", vec!["b"]));
        assert_eq!(lru.get(2), None);
        assert_eq!(lru.insert(4, "d"), ("d", vec!["a"]));
        assert_eq!(lru.entries.len(), 2);
    }

    #[test]
    fn a_second_insert_keeps_the_first_value() {
        let mut lru = Lru::new(2);
        lru.insert(1, "first");
        lru.insert(2, "other");
        // Two readers opened key 1 at once: the second's copy is handed back, not kept, and
        // key 1 is now the most recently used.
        assert_eq!(lru.insert(1, "second"), ("first", vec!["second"]));
        assert_eq!(lru.insert(3, "x"), ("x", vec!["other"]));
        assert_eq!(lru.remove(1), Some("first"));
        assert_eq!(lru.remove(1), None);
        assert_eq!(lru.entries.len(), 1);
    }
}
