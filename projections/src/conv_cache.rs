//! A per-user cache of computed conversation lists: a foyer `HybridCache` (memory, overflowing
//! to disk), never the source of truth.
//!
//! An entry holds the list and a fingerprint of what it was computed from: for each of the
//! user's channels, the head's version and the user's cursor version. A read recomputes the
//! fingerprint from the live state (a few map lookups per channel, no allocation, no sort) and
//! uses the entry only when it matches. Entries carry their own CRC: a damaged disk entry, or one
//! written by another format version, is a miss.
//!
//! The fingerprint names log offsets, so lists on disk are reused after a restart only while the
//! log still holds the history they were computed from. Whether it does is known at times when
//! the cache is not open (a start that finds snapshots of another history, a run whose writes
//! a power cut may have taken), and a process can die before it opens the cache. So the
//! doubt is kept in the cache's directory: a file named [`UNTRUSTED`] beside foyer's, written
//! and synced by [`ConversationCache::distrust`] and by every open without `recover`, removed
//! only by an open with `recover` once it has removed the lists. Until 2026-11-30 each start
//! judged from what it saw itself, and a start after the one that knew (a `tidings rebuild`,
//! a start that failed before its cache opened) reused lists whose offsets were lost.

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
use crate::fsutil::write_atomic;
use crate::state::State;

/// The file in the cache's directory whose presence says the lists there may describe offsets
/// the log no longer holds, or holds for other events (see the module doc). foyer opens only
/// its own partition files, and `tidings_log::disk_cache` removes only those: this one stays
/// until an open with `recover` removes it.
pub const UNTRUSTED: &str = "UNTRUSTED";

/// What [`UNTRUSTED`] holds, for whoever finds it (only its presence is read).
const UNTRUSTED_TEXT: &[u8] = b"The conversation lists in this directory may describe another \
history of the log than the one it holds now: the next start removes them.\n";

const MAGIC: u32 = u32::from_le_bytes(*b"TDCV");
/// Part of every key, so entries of an older format are never even looked at. Also bumped when
/// the projection rules change what a list holds without changing the versions the fingerprint
/// hashes (v2: the sender's delivered cursor on send, snapshot format 2; v3: a re-created
/// group's floor, snapshot format 4; v4: a banned group's last message shown only to whom it
/// is owed; v5: a re-created group listed only from its first message; v6: the last message's
/// `edited` mark): a list computed under the old rules would otherwise be served on.
const KEY_VERSION: &str = "v6";

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
    /// the lists on disk are removed, not only left unread (a later open that recovers would
    /// otherwise find them again in the blocks this run did not overwrite), and the directory
    /// is marked first ([`ConversationCache::distrust`]), so that no later open reuses what
    /// this run writes either. When true, lists are reused only if the directory is not
    /// marked; if it is, they are removed and the mark with them (this run's state is
    /// trusted, and so are the lists it writes). Default: true.
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

/// Creates the cache's directory when missing. Made here, not by foyer: its builder unwraps the
/// creation, and panicked when a file stood at the path.
fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        ProjectionError::Cache(format!("creating the directory {}: {e}", dir.display()))
    })
}

/// Whether `dir` holds the [`UNTRUSTED`] mark.
fn distrusted(dir: &Path) -> Result<bool> {
    let path = dir.join(UNTRUSTED);
    path.try_exists()
        .map_err(|e| ProjectionError::io("look for", &path, e))
}

/// Whether `dir` holds any file but the [`UNTRUSTED`] mark (a cache's lists). Unreadable: no.
fn holds_lists(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(std::result::Result::ok)
            .any(|e| e.file_name() != UNTRUSTED)
    })
}

/// Removes the [`UNTRUSTED`] mark once the lists are gone. The directory is synced first, so
/// that a power cut cannot keep the removed lists while losing the mark; the mark's own removal
/// is not synced: lost, it only costs the next start the lists this run writes.
fn trust_again(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ProjectionError::io("sync directory", dir, e))?;
    let path = dir.join(UNTRUSTED);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ProjectionError::io("remove", &path, e)),
    }
}

impl ConversationCache {
    /// Marks the lists on disk in `dir` (created when missing) as not to be reused: the next
    /// open removes them whatever its `recover`, and only an open with `recover`, having
    /// removed them, clears the mark. Durable when this returns (written and synced, and the
    /// directory synced). For whoever learns that the log's history may have changed under the
    /// lists before the cache opens (snapshots set aside, a run that wrote under `fsync =
    /// every/never`): said only to the open, it would be lost with a process that died first.
    pub fn distrust(dir: &Path) -> Result<()> {
        create_dir(dir)?;
        write_atomic(&dir.join(UNTRUSTED), UNTRUSTED_TEXT)
    }

    /// A cache with its disk part in `dir` (created when missing). Needs a tokio runtime.
    pub async fn open(dir: &Path, config: &ConversationCacheConfig) -> Result<Self> {
        let err = |e: foyer::Error| ProjectionError::Cache(e.to_string());
        create_dir(dir)?;
        // Without recovery the mark goes first, before anything this run writes: the next open
        // must not reuse those lists either.
        let marked = if config.recover {
            distrusted(dir)?
        } else {
            Self::distrust(dir)?;
            true
        };
        let recover = !marked;
        // Said only when there were lists to drop (a new data directory's first start is
        // marked too, and was told its lists were "not to be reused").
        let had_lists = config.recover && marked && holds_lists(dir);
        let disk = config.disk_bytes.max(16 << 20);
        // At least 8 blocks, so that eviction has room to work.
        let block = (disk / 8).clamp(1 << 20, 16 << 20) & !4095;
        // Files foyer would not open (those of a larger cache before), and with no recovery
        // all of them (`RecoverMode::None` only skips the scan: see `recover`).
        let keep = if recover {
            disk_cache::files_used(disk, block)
        } else {
            0
        };
        disk_cache::remove_files_from(dir, keep).map_err(|e| {
            ProjectionError::Cache(format!("clearing the directory {}: {e}", dir.display()))
        })?;
        if had_lists {
            tracing::info!(
                dir = %dir.display(),
                "the conversation cache starts empty: its lists were marked as not to be reused (by a start or a rebuild that found the log's history in doubt, or a run under fsync every/never)"
            );
        }
        if config.recover && marked {
            trust_again(dir)?;
        }
        let device = FsDeviceBuilder::new(dir)
            .with_capacity(disk)
            .build()
            .map_err(err)?;
        let cache = HybridCacheBuilder::new()
            .with_name("conversations")
            .memory(config.memory_bytes.max(1 << 20))
            .with_weighter(|k: &String, v: &Bytes| k.len() + v.len() + 64)
            .storage()
            .with_recover_mode(if recover {
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
