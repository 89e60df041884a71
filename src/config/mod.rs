//! Server configuration: a TOML file, `TIDINGS_*` environment variables and flags. Flags override
//! the environment, the environment overrides the file, and every option has a default.
//!
//! An option `key` in section `[sec]` of the file is the environment variable
//! `TIDINGS_SEC_KEY` and the flag `--sec-key` (top-level keys have no section part).
//!
//! [`Config`] (every setting, defaults applied) and the bounds derived from it are here; the
//! flags and their merge with the environment and the file in `args.rs`, the file's sections
//! in `file.rs`, the checks of a merged configuration in `checks.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tidings_log::FsyncPolicy;
use tidings_projections::ids::MAX_ID_LEN;

mod args;
mod checks;
mod file;
#[cfg(test)]
mod tests;

pub(crate) use args::{ProjectionsArgs, ServeArgs};
pub(crate) use checks::admin_key_error;

/// Every setting, with defaults applied.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) listen: SocketAddr,
    pub(crate) data: PathBuf,
    /// Trimmed, and what an `Authorization` header can carry (see [`admin_key_error`]).
    pub(crate) admin_key: Option<String>,
    pub(crate) person_allowlist: bool,
    pub(crate) log_fsync: FsyncPolicy,
    pub(crate) log_segment_bytes: u64,
    /// Bytes of zeros each new segment starts with (0 = off); defaults to the segment size.
    pub(crate) log_preallocate_bytes: u64,
    pub(crate) limits_max_payload_bytes: usize,
    pub(crate) limits_max_frame_bytes: usize,
    pub(crate) limits_max_connections: usize,
    pub(crate) limits_sends_per_second: u32,
    pub(crate) limits_send_bytes_per_second: u64,
    pub(crate) limits_new_person_channels_per_hour: u32,
    pub(crate) limits_frames_per_second: u32,
    pub(crate) limits_session_queue: usize,
    pub(crate) limits_max_uids_per_call: usize,
    /// Bytes of frames queued for one WebSocket session before it is closed as too slow.
    pub(crate) limits_session_queue_bytes: usize,
    /// WebSocket sessions one user may hold at once.
    pub(crate) limits_sessions_per_user: usize,
    /// A WebSocket silent this long is closed; the server pings it after a third of that.
    pub(crate) limits_ws_idle_secs: u64,
    pub(crate) limits_http_read_timeout_secs: u64,
    /// Origins whose pages may call the HTTP API from a browser (CORS): each
    /// `scheme://host[:port]` as a browser sends it, or `*` alone for any. Empty: no CORS
    /// headers at all.
    pub(crate) http_cors_origins: Vec<String>,
    pub(crate) acks_flush_ms: u64,
    pub(crate) projections_snapshot_interval_secs: u64,
    pub(crate) projections_idempotency_entries: usize,
    pub(crate) projections_idempotency_secs: u64,
    pub(crate) projections_index_flush_entries: u64,
    pub(crate) cache_conversation_memory_bytes: usize,
    pub(crate) cache_conversation_disk_bytes: usize,
    pub(crate) cache_index_bytes: usize,
    pub(crate) trace_sample_every: u64,
    pub(crate) shutdown_grace_secs: u64,
    /// Seconds between passes of the background purge of recalled messages' payloads (0:
    /// off; with a tier, the object store's copies too).
    pub(crate) compaction_purge_interval_secs: u64,
    /// The bytes of recalled records a purge pass reads before it rewrites them and reads on
    /// (0 is taken as 1). `server/purger.rs`.
    pub(crate) compaction_purge_share_bytes: usize,
    /// Sealed segments whose every record is older than this are removed once snapshots
    /// cover them (`None`: kept for ever; with a tier, from the object store too).
    /// `server/retention.rs`.
    pub(crate) compaction_retention_secs: Option<u64>,
    /// The oldest sealed segments are removed, once snapshots cover them, while the log holds
    /// more than this many bytes (`None`: no bound; with a tier, from the object store too).
    pub(crate) compaction_retention_bytes: Option<u64>,
    /// Seconds between passes of the retention (0 is taken as 1).
    pub(crate) compaction_retention_interval_secs: u64,
    pub(crate) node_id: Option<String>,
    pub(crate) tier: TierConfig,
}

/// The `[tier]` section: tiered storage of sealed segments and snapshots.
#[derive(Debug, Clone)]
pub(crate) struct TierConfig {
    /// `s3://bucket/prefix`, `file:///dir`, or none.
    pub(crate) url: Option<String>,
    pub(crate) endpoint: Option<String>,
    /// None: `AWS_REGION` / `AWS_DEFAULT_REGION`, else us-east-1.
    pub(crate) region: Option<String>,
    pub(crate) access_key_id: Option<String>,
    pub(crate) secret_access_key: Option<String>,
    pub(crate) local_retention_bytes: u64,
    pub(crate) local_retention_secs: Option<u64>,
    pub(crate) block_bytes: usize,
    pub(crate) cache_memory_bytes: usize,
    pub(crate) cache_disk_bytes: usize,
    pub(crate) read_timeout_ms: u64,
    pub(crate) upload_interval_secs: u64,
    pub(crate) lease_secs: u64,
}

impl Default for TierConfig {
    fn default() -> Self {
        Self {
            url: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            local_retention_bytes: 1 << 30,
            local_retention_secs: None,
            block_bytes: 1 << 20,
            cache_memory_bytes: 64 << 20,
            cache_disk_bytes: 1 << 30,
            read_timeout_ms: 10_000,
            upload_interval_secs: 5,
            lease_secs: 30,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data: PathBuf::from("data"),
            admin_key: None,
            person_allowlist: false,
            log_fsync: FsyncPolicy::Always,
            log_segment_bytes: 128 << 20,
            log_preallocate_bytes: 128 << 20,
            limits_max_payload_bytes: 64 << 10,
            limits_max_frame_bytes: 1 << 20,
            limits_max_connections: 100_000,
            limits_sends_per_second: 200,
            limits_send_bytes_per_second: 1 << 20,
            limits_new_person_channels_per_hour: 1000,
            limits_frames_per_second: 1000,
            limits_session_queue: 4096,
            limits_max_uids_per_call: 10_000,
            limits_session_queue_bytes: 32 << 20,
            limits_sessions_per_user: 32,
            limits_ws_idle_secs: 90,
            limits_http_read_timeout_secs: 30,
            http_cors_origins: Vec::new(),
            acks_flush_ms: 200,
            projections_snapshot_interval_secs: 300,
            projections_idempotency_entries: 100_000,
            projections_idempotency_secs: 24 * 3600,
            projections_index_flush_entries: tidings_projections::msgindex::DEFAULT_FLUSH_ENTRIES,
            cache_conversation_memory_bytes: 64 << 20,
            cache_conversation_disk_bytes: 256 << 20,
            cache_index_bytes: 64 << 20,
            trace_sample_every: 100,
            shutdown_grace_secs: 10,
            compaction_purge_interval_secs: 3600,
            compaction_purge_share_bytes: 32 << 20,
            compaction_retention_secs: None,
            compaction_retention_bytes: None,
            compaction_retention_interval_secs: 60,
            node_id: None,
            tier: TierConfig::default(),
        }
    }
}

impl Config {
    pub(crate) fn acks_flush(&self) -> Duration {
        Duration::from_millis(self.acks_flush_ms.max(1))
    }
    pub(crate) fn snapshot_interval(&self) -> Duration {
        Duration::from_secs(self.projections_snapshot_interval_secs.max(1))
    }
    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
    /// The interval between passes of the retention; `None`: no retention is set.
    pub(crate) fn retention_interval(&self) -> Option<Duration> {
        (self.compaction_retention_secs.is_some() || self.compaction_retention_bytes.is_some())
            .then(|| Duration::from_secs(self.compaction_retention_interval_secs.max(1)))
    }
    /// The interval between passes of the background purge; `None`: off.
    pub(crate) fn purge_interval(&self) -> Option<Duration> {
        match self.compaction_purge_interval_secs {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        }
    }
}

/// The largest `limits.max_payload_bytes`: a message, not a file transfer (the log's largest
/// append, twice this plus framing, must fit its 64 MiB queue).
pub(crate) const MAX_PAYLOAD_LIMIT: usize = 16 << 20;

/// Bytes a binary (CBOR) WebSocket frame may hold besides three times its payload: its type,
/// `client_msg_id` and channel.
pub(crate) const CBOR_FRAME_OVERHEAD: usize = 4096;

/// The longest a duration setting may be, in seconds (about 31 years; a setting in
/// milliseconds, [`MAX_DURATION_MS`]): beyond any real use, and far inside what a deadline (now
/// plus the setting) can hold. One of 2^63 s or more panicked where it was added to the clock:
/// hyper's read timeout at every connection, the shutdown's deadline at SIGTERM.
pub(crate) const MAX_DURATION_SECS: u64 = 1_000_000_000;

/// [`MAX_DURATION_SECS`] in milliseconds.
pub(crate) const MAX_DURATION_MS: u64 = MAX_DURATION_SECS * 1000;

/// The largest count that becomes the capacity of a semaphore or a queue
/// (`limits.max_connections`, `limits.session_queue`): tokio panics above `usize::MAX >> 3`, at
/// start-up or at every WebSocket upgrade.
pub(crate) const MAX_CAPACITY: usize = 1 << 30;

/// The largest append the server's log takes: one must fit the log writer's queue
/// (`LogOptions`' default `max_queued_bytes`, 64 MiB), or the log refuses to open.
const LOG_MAX_APPEND: usize = 64 << 20;

/// Room in an append besides its payload or its uids: the rest of the event (ids, field names)
/// and the log's framing (a batch header, a record length).
const APPEND_SLACK: usize = 1 << 20;

/// Bytes one uid adds to a membership or list event at most: its text and the 2-byte CBOR head
/// of a text of 24 to 255 bytes (`projections/src/codec.rs`).
const UID_EVENT_BYTES: usize = MAX_ID_LEN + 2;

/// The largest `limits.max_uids_per_call` (1,000,913): the event of a call with that many uids
/// of the longest kind must fit one append.
pub(crate) const MAX_UIDS_PER_CALL: usize = (LOG_MAX_APPEND - APPEND_SLACK) / UID_EVENT_BYTES;

/// The smallest `log.segment_bytes` the log takes (`LogOptions::validate`).
const LOG_MIN_SEGMENT_BYTES: u64 = 1 << 10;

/// The largest `log.segment_bytes` the log takes: a segment's positions are 32-bit.
const LOG_MAX_SEGMENT_BYTES: u64 = 2 << 30;

/// The largest binary frame read as a send under payload limit `payload`
/// ([`Config::max_binary_frame_bytes`]).
fn binary_frame_bytes(payload: usize) -> usize {
    payload
        .saturating_mul(3)
        .saturating_add(CBOR_FRAME_OVERHEAD)
}

impl Config {
    /// The largest binary (CBOR) WebSocket frame that is read: 3 × `limits.max_payload_bytes`
    /// and the frame's fields (a CBOR map payload of short decimals takes about twice its JSON
    /// size, a `payload_b64` 4/3 of the payload). A larger one is answered `payload_too_large`
    /// unread.
    pub(crate) fn max_binary_frame_bytes(&self) -> usize {
        binary_frame_bytes(self.limits_max_payload_bytes)
    }

    /// The log's largest append: room for the largest event a request makes — a send (twice
    /// the largest payload) or a membership or list call with `limits.max_uids_per_call` uids
    /// of the longest kind — and the rest. (Sized by the payload alone, a call with many uids
    /// made an event larger than the log took: a 500.)
    pub(crate) fn log_max_append_bytes(&self) -> usize {
        self.limits_max_payload_bytes
            .saturating_mul(2)
            .max(
                self.limits_max_uids_per_call
                    .saturating_mul(UID_EVENT_BYTES),
            )
            .saturating_add(APPEND_SLACK)
    }
}
