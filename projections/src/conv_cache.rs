//! A per-user cache of computed conversation lists: a foyer `HybridCache` (memory, overflowing
//! to disk), never the source of truth.
//!
//! An entry holds the list and a fingerprint of what it was computed from: for each of the
//! user's channels, the head's version and the user's cursor version. A read recomputes the
//! fingerprint from the live state (a few map lookups per channel, no allocation, no sort) and
//! uses the entry only when it matches. Entries carry their own CRC: a damaged disk entry, or one
//! written by another format version, is a miss.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder, RecoverMode,
};
use tidings_log::disk_cache;

use crate::conversations::Conversation;
use crate::error::{ProjectionError, Result};
use crate::state::State;

const MAGIC: u32 = u32::from_le_bytes(*b"TDCV");
/// Part of every key, so entries of an older format are never even looked at. Also bumped when
/// the projection rules change what a list holds without changing the versions the fingerprint
/// hashes (v2: the sender's delivered cursor on send, snapshot format 2; v3: a re-created
/// group's floor, snapshot format 4; v4: a banned group's last message shown only to whom it
/// is owed; v5: a re-created group listed only from its first message): a list computed under
/// the old rules would otherwise be served on.
const KEY_VERSION: &str = "v5";

/// What the cached list was computed from.
pub fn fingerprint(state: &State, uid: &str) -> u64 {
    let mut h = DefaultHasher::new();
    for channel in state.subs.channels_of(uid) {
        channel.hash(&mut h);
        state
            .heads
            .heads
            .get(channel)
            .map(|x| x.version)
            .hash(&mut h);
        state.cursors.get(uid, channel).version.hash(&mut h);
        // A ban changes what the list shows without moving a head or a cursor.
        state
            .subs
            .channels
            .get(channel)
            .map(|c| c.flags.ban)
            .hash(&mut h);
    }
    h.finish()
}

/// Sizes of the conversation cache.
#[derive(Debug, Clone)]
pub struct ConversationCacheConfig {
    /// Memory for cached lists. Default: 64 MiB.
    pub memory_bytes: usize,
    /// Disk for lists evicted from memory. Default: 256 MiB.
    pub disk_bytes: usize,
    /// Whether lists on disk are used again after a restart. Only when the state they were
    /// computed from cannot be lost: under `fsync = every/never` a power cut can take applied
    /// events off the log's end, the offsets are written again by other events, and a list
    /// fingerprinted by those offsets would match a state it does not describe. When false,
    /// the lists on disk are removed, not only left unread: a later open that recovers would
    /// otherwise find them again in the blocks this run did not overwrite. Default: true.
    pub recover: bool,
}

impl Default for ConversationCacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            disk_bytes: 256 << 20,
            recover: true,
        }
    }
}

/// The cache.
#[derive(Debug)]
pub struct ConversationCache {
    cache: HybridCache<String, Bytes>,
    hits: AtomicU64,
    misses: AtomicU64,
}

fn encode(fp: u64, list: &[Conversation]) -> Bytes {
    let mut body = Vec::new();
    if let Err(e) = ciborium::into_writer(&(fp, list), &mut body) {
        unreachable!("encoding a conversation list into memory failed: {e}");
    }
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

fn decode(bytes: &[u8]) -> Option<(u64, Vec<Conversation>)> {
    if bytes.len() < 8 || bytes[0..4] != MAGIC.to_le_bytes() {
        return None;
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[4..8]);
    if crc32fast::hash(&bytes[8..]) != u32::from_le_bytes(crc) {
        return None;
    }
    ciborium::from_reader(&bytes[8..]).ok()
}

impl ConversationCache {
    /// A cache with its disk part in `dir` (created when missing). Needs a tokio runtime.
    pub async fn open(dir: &Path, config: &ConversationCacheConfig) -> Result<Self> {
        let err = |e: foyer::Error| ProjectionError::Cache(e.to_string());
        // Made here, not by foyer: its builder unwraps the creation, and panicked when a file
        // stood at the path.
        std::fs::create_dir_all(dir).map_err(|e| {
            ProjectionError::Cache(format!("creating the directory {}: {e}", dir.display()))
        })?;
        let disk = config.disk_bytes.max(16 << 20);
        // At least 8 blocks, so that eviction has room to work.
        let block = (disk / 8).clamp(1 << 20, 16 << 20) & !4095;
        // Files foyer would not open (those of a larger cache before), and with no recovery
        // all of them (`RecoverMode::None` only skips the scan: see `recover`).
        let keep = if config.recover {
            disk_cache::files_used(disk, block)
        } else {
            0
        };
        disk_cache::remove_files_from(dir, keep).map_err(|e| {
            ProjectionError::Cache(format!("clearing the directory {}: {e}", dir.display()))
        })?;
        let device = FsDeviceBuilder::new(dir)
            .with_capacity(disk)
            .build()
            .map_err(err)?;
        let cache = HybridCacheBuilder::new()
            .with_name("conversations")
            .memory(config.memory_bytes.max(1 << 20))
            .with_weighter(|k: &String, v: &Bytes| k.len() + v.len() + 64)
            .storage()
            .with_recover_mode(if config.recover {
                RecoverMode::Quiet
            } else {
                RecoverMode::None
            })
            .with_engine_config(BlockEngineConfig::new(device).with_block_size(block))
            .build()
            .await
            .map_err(err)?;
        Ok(Self {
            cache,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    fn key(uid: &str) -> String {
        format!("{KEY_VERSION}:{uid}")
    }

    /// The cached list of `uid`, if it was computed from the state `fp` describes.
    pub async fn get(&self, uid: &str, fp: u64) -> Option<Vec<Conversation>> {
        // A read error (such as an undecodable disk entry) is a miss, never a failure.
        let found = match self.cache.get(&Self::key(uid)).await {
            Ok(Some(entry)) => decode(entry.value()),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(uid, error = %e, "conversation cache read failed; recomputing");
                None
            }
        };
        match found {
            Some((cached_fp, list)) if cached_fp == fp => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(list)
            }
            _ => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Stores the list computed from the state `fp` describes.
    pub fn put(&self, uid: &str, fp: u64, list: &[Conversation]) {
        self.cache.insert(Self::key(uid), encode(fp, list));
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Flushes and stops the cache's background tasks.
    pub async fn close(&self) -> Result<()> {
        self.cache
            .close()
            .await
            .map_err(|e| ProjectionError::Cache(e.to_string()))
    }
}
