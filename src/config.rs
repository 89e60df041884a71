//! Server configuration: a TOML file, `TIDINGS_*` environment variables and flags. Flags override
//! the environment, the environment overrides the file, and every option has a default.
//!
//! An option `key` in section `[sec]` of the file is the environment variable
//! `TIDINGS_SEC_KEY` and the flag `--sec-key` (top-level keys have no section part).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tidings_log::FsyncPolicy;
use tidings_projections::ids::MAX_ID_LEN;

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

/// `tidings serve` flags (each also read from its `TIDINGS_*` variable).
#[derive(Debug, Default, clap::Args)]
pub(crate) struct ServeArgs {
    /// A TOML configuration file.
    #[arg(long, env = "TIDINGS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on. Default: 127.0.0.1:7070.
    #[arg(long, env = "TIDINGS_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory. Default: ./data.
    #[arg(long, env = "TIDINGS_DATA")]
    data: Option<PathBuf>,
    /// The admin key for app-server calls (surrounding whitespace trimmed; visible ASCII and
    /// inner spaces only). Default: generated on first start into DATA/admin.key (mode 0600)
    /// and printed once.
    #[arg(long, env = "TIDINGS_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Person channels honour the recipient's allowlist. Default: false.
    #[arg(long, env = "TIDINGS_PERSON_ALLOWLIST")]
    person_allowlist: Option<bool>,
    /// always | every(MS) | never. Default: always.
    #[arg(long, env = "TIDINGS_LOG_FSYNC")]
    log_fsync: Option<String>,
    /// Segment size before a roll. Default: 134217728 (128 MiB).
    #[arg(long, env = "TIDINGS_LOG_SEGMENT_BYTES")]
    log_segment_bytes: Option<u64>,
    /// Each new segment starts as a file of this many zeros, written ahead of time, so that
    /// fdatasync does not journal a growing file (0 = off). Default: the segment size.
    #[arg(long, env = "TIDINGS_LOG_PREALLOCATE_BYTES")]
    log_preallocate_bytes: Option<u64>,
    /// Largest message payload. Default: 65536.
    #[arg(long, env = "TIDINGS_LIMITS_MAX_PAYLOAD_BYTES")]
    limits_max_payload_bytes: Option<usize>,
    /// Largest WebSocket frame; at least 3 × the payload limit + 4096 (the largest binary frame
    /// read as a send). Default: 1048576.
    #[arg(long, env = "TIDINGS_LIMITS_MAX_FRAME_BYTES")]
    limits_max_frame_bytes: Option<usize>,
    /// Most WebSocket connections at once (at most 2^30). Default: 100000.
    #[arg(long, env = "TIDINGS_LIMITS_MAX_CONNECTIONS")]
    limits_max_connections: Option<usize>,
    /// Sends per second per user, over all of their WebSocket sessions and HTTP sends
    /// together (the admin's sends as a user are not counted); bursts of twice that.
    /// Default: 200.
    #[arg(long, env = "TIDINGS_LIMITS_SENDS_PER_SECOND")]
    limits_sends_per_second: Option<u32>,
    /// Payload bytes per second per user (sends and edits), counted as sends are; bursts of
    /// twice that, and at least one largest payload. Default: 1048576.
    #[arg(long, env = "TIDINGS_LIMITS_SEND_BYTES_PER_SECOND")]
    limits_send_bytes_per_second: Option<u64>,
    /// Person channels a user may open (send the first message of) per hour: each holds a head
    /// and cursors for good, and any uid can be named. Not counted: the admin's sends as a
    /// user. Default: 1000.
    #[arg(long, env = "TIDINGS_LIMITS_NEW_PERSON_CHANNELS_PER_HOUR")]
    limits_new_person_channels_per_hour: Option<u32>,
    /// WebSocket frames other than sends (acks, reads, pings, bad frames) per second per
    /// connection, bursts of twice that; past it the server stops reading the connection for
    /// a while. Default: 1000.
    #[arg(long, env = "TIDINGS_LIMITS_FRAMES_PER_SECOND")]
    limits_frames_per_second: Option<u32>,
    /// Messages queued for one WebSocket session before it is closed as too slow (at most
    /// 2^30). Default: 4096.
    #[arg(long, env = "TIDINGS_LIMITS_SESSION_QUEUE")]
    limits_session_queue: Option<usize>,
    /// Most uids in one membership or list call (1 to 1000913: the call's event must fit one
    /// log append). Default: 10000.
    #[arg(long, env = "TIDINGS_LIMITS_MAX_UIDS_PER_CALL")]
    limits_max_uids_per_call: Option<usize>,
    /// Bytes of frames queued for one WebSocket session before it is closed as too slow.
    /// Default: 33554432.
    #[arg(long, env = "TIDINGS_LIMITS_SESSION_QUEUE_BYTES")]
    limits_session_queue_bytes: Option<usize>,
    /// WebSocket sessions one user may hold at once (429 beyond). Default: 32.
    #[arg(long, env = "TIDINGS_LIMITS_SESSIONS_PER_USER")]
    limits_sessions_per_user: Option<usize>,
    /// Seconds of silence after which a WebSocket is closed (4002 `idle_timeout`); the server
    /// pings it after a third of that. Default: 90.
    #[arg(long, env = "TIDINGS_LIMITS_WS_IDLE_SECS")]
    limits_ws_idle_secs: Option<u64>,
    /// Seconds a client has to send a request's headers (also the longest an idle keep-alive
    /// connection is kept), and again its body. Default: 30.
    #[arg(long, env = "TIDINGS_LIMITS_HTTP_READ_TIMEOUT_SECS")]
    limits_http_read_timeout_secs: Option<u64>,
    /// Origins whose web pages may call the HTTP API from a browser (CORS), comma-separated:
    /// each scheme://host[:port] as the browser sends it (e.g. https://app.example.com), or *
    /// for any. An empty value: none. Default: none (no CORS headers).
    #[arg(long, env = "TIDINGS_HTTP_CORS_ORIGINS")]
    http_cors_origins: Option<String>,
    /// How long WebSocket acks are coalesced before they become cursor events. Default: 200.
    #[arg(long, env = "TIDINGS_ACKS_FLUSH_MS")]
    acks_flush_ms: Option<u64>,
    /// Seconds between snapshots. Default: 300.
    #[arg(long, env = "TIDINGS_PROJECTIONS_SNAPSHOT_INTERVAL_SECS")]
    projections_snapshot_interval_secs: Option<u64>,
    #[command(flatten)]
    projections: ProjectionsArgs,
    /// Memory for cached conversation lists. Default: 67108864.
    #[arg(long, env = "TIDINGS_CACHE_CONVERSATION_MEMORY_BYTES")]
    cache_conversation_memory_bytes: Option<usize>,
    /// Disk for cached conversation lists. Default: 268435456.
    #[arg(long, env = "TIDINGS_CACHE_CONVERSATION_DISK_BYTES")]
    cache_conversation_disk_bytes: Option<usize>,
    /// Memory for cached message index runs. Default: 67108864.
    #[arg(long, env = "TIDINGS_CACHE_INDEX_BYTES")]
    cache_index_bytes: Option<usize>,
    /// Keep push records of one message in N for traces. Default: 100.
    #[arg(long, env = "TIDINGS_TRACE_SAMPLE_EVERY")]
    trace_sample_every: Option<u64>,
    /// Seconds a shutdown may take before remaining tasks are aborted. Default: 10.
    #[arg(long, env = "TIDINGS_SHUTDOWN_GRACE_SECS")]
    shutdown_grace_secs: Option<u64>,
    /// Seconds between passes of the background purge of recalled messages' payloads from
    /// sealed segments (0: off; with a tier, the object store's copies too). Default: 3600.
    #[arg(long, env = "TIDINGS_COMPACTION_PURGE_INTERVAL_SECS")]
    compaction_purge_interval_secs: Option<u64>,
    /// Remove sealed log segments whose every record is older than this many seconds, once
    /// snapshots cover them (with a tier, from the object store too). Default: none (kept for
    /// ever).
    #[arg(long, env = "TIDINGS_COMPACTION_RETENTION_SECS")]
    compaction_retention_secs: Option<u64>,
    /// Remove the oldest sealed log segments, once snapshots cover them, while the log holds
    /// more than this many bytes (with a tier, from the object store too). Default: none.
    #[arg(long, env = "TIDINGS_COMPACTION_RETENTION_BYTES")]
    compaction_retention_bytes: Option<u64>,
    /// Seconds between passes of the retention. Default: 60.
    #[arg(long, env = "TIDINGS_COMPACTION_RETENTION_INTERVAL_SECS")]
    compaction_retention_interval_secs: Option<u64>,
    /// This server's name in the tier manifest. Default: generated into DATA/node.id.
    #[arg(long, env = "TIDINGS_NODE_ID")]
    node_id: Option<String>,
    /// Object store for sealed segments and snapshots: s3://bucket/prefix or file:///dir.
    /// Default: none (everything stays local).
    #[arg(long, env = "TIDINGS_TIER_URL")]
    tier_url: Option<String>,
    /// S3 endpoint, e.g. http://127.0.0.1:9000 (plain http only when it says so). Default:
    /// AWS.
    #[arg(long, env = "TIDINGS_TIER_ENDPOINT")]
    tier_endpoint: Option<String>,
    /// S3 region. Default: AWS_REGION, else us-east-1.
    #[arg(long, env = "TIDINGS_TIER_REGION")]
    tier_region: Option<String>,
    /// S3 access key. Default: AWS_ACCESS_KEY_ID.
    #[arg(long, env = "TIDINGS_TIER_ACCESS_KEY_ID")]
    tier_access_key_id: Option<String>,
    /// S3 secret key. Default: AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "TIDINGS_TIER_SECRET_ACCESS_KEY", hide_env_values = true)]
    tier_secret_access_key: Option<String>,
    /// Sealed bytes kept locally once uploaded (0: none). Default: 1073741824.
    #[arg(long, env = "TIDINGS_TIER_LOCAL_RETENTION_BYTES")]
    tier_local_retention_bytes: Option<u64>,
    /// Uploaded segments older than this are deleted locally. Default: none.
    #[arg(long, env = "TIDINGS_TIER_LOCAL_RETENTION_SECS")]
    tier_local_retention_secs: Option<u64>,
    /// Block size of cold reads. Default: 1048576.
    #[arg(long, env = "TIDINGS_TIER_BLOCK_BYTES")]
    tier_block_bytes: Option<usize>,
    /// Memory of the cold-read cache. Default: 67108864.
    #[arg(long, env = "TIDINGS_TIER_CACHE_MEMORY_BYTES")]
    tier_cache_memory_bytes: Option<usize>,
    /// Disk of the cold-read cache. Default: 1073741824.
    #[arg(long, env = "TIDINGS_TIER_CACHE_DISK_BYTES")]
    tier_cache_disk_bytes: Option<usize>,
    /// A cold read fails (503 cold_storage_unavailable) after this long. Default: 10000.
    #[arg(long, env = "TIDINGS_TIER_READ_TIMEOUT_MS")]
    tier_read_timeout_ms: Option<u64>,
    /// Seconds between upload passes (also after every roll). Default: 5.
    #[arg(long, env = "TIDINGS_TIER_UPLOAD_INTERVAL_SECS")]
    tier_upload_interval_secs: Option<u64>,
    /// Seconds a silent owner keeps the prefix. Default: 30.
    #[arg(long, env = "TIDINGS_TIER_LEASE_SECS")]
    tier_lease_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierSection {
    url: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    local_retention_bytes: Option<u64>,
    local_retention_secs: Option<u64>,
    block_bytes: Option<usize>,
    cache_memory_bytes: Option<usize>,
    cache_disk_bytes: Option<usize>,
    read_timeout_ms: Option<u64>,
    upload_interval_secs: Option<u64>,
    lease_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    admin_key: Option<String>,
    person_allowlist: Option<bool>,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    acks: AcksSection,
    #[serde(default)]
    projections: ProjectionsSection,
    #[serde(default)]
    cache: CacheSection,
    #[serde(default)]
    trace: TraceSection,
    #[serde(default)]
    shutdown: ShutdownSection,
    #[serde(default)]
    compaction: CompactionSection,
    node_id: Option<String>,
    #[serde(default)]
    tier: TierSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSection {
    fsync: Option<String>,
    segment_bytes: Option<u64>,
    preallocate_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_payload_bytes: Option<usize>,
    max_frame_bytes: Option<usize>,
    max_connections: Option<usize>,
    sends_per_second: Option<u32>,
    send_bytes_per_second: Option<u64>,
    new_person_channels_per_hour: Option<u32>,
    frames_per_second: Option<u32>,
    session_queue: Option<usize>,
    max_uids_per_call: Option<usize>,
    session_queue_bytes: Option<usize>,
    sessions_per_user: Option<usize>,
    ws_idle_secs: Option<u64>,
    http_read_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    cors_origins: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcksSection {
    flush_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectionsSection {
    snapshot_interval_secs: Option<u64>,
    idempotency_entries: Option<usize>,
    idempotency_secs: Option<u64>,
    index_flush_entries: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheSection {
    conversation_memory_bytes: Option<usize>,
    conversation_disk_bytes: Option<usize>,
    index_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceSection {
    sample_every: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownSection {
    grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactionSection {
    purge_interval_secs: Option<u64>,
    retention_secs: Option<u64>,
    retention_bytes: Option<u64>,
    retention_interval_secs: Option<u64>,
}

/// The settings that shape the projections (`serve` and `rebuild` take the same flags).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ProjectionsArgs {
    /// Sends remembered for idempotent retries. Default: 100000.
    #[arg(long, env = "TIDINGS_PROJECTIONS_IDEMPOTENCY_ENTRIES")]
    projections_idempotency_entries: Option<usize>,
    /// How long a send is remembered for idempotent retries. Default: 86400.
    #[arg(long, env = "TIDINGS_PROJECTIONS_IDEMPOTENCY_SECS")]
    projections_idempotency_secs: Option<u64>,
    /// Message index entries per sidecar file. Default: 262144.
    #[arg(long, env = "TIDINGS_PROJECTIONS_INDEX_FLUSH_ENTRIES")]
    projections_index_flush_entries: Option<u64>,
}

impl ProjectionsArgs {
    /// Whether any is given.
    pub(crate) fn any(&self) -> bool {
        self.projections_idempotency_entries.is_some()
            || self.projections_idempotency_secs.is_some()
            || self.projections_index_flush_entries.is_some()
    }
}

impl ServeArgs {
    /// Only the projections' settings (the rest from the file or the defaults): what
    /// `rebuild` needs of the server's configuration.
    pub(crate) fn projections_only(
        config: Option<PathBuf>,
        projections: ProjectionsArgs,
    ) -> ServeArgs {
        ServeArgs {
            config,
            projections,
            ..ServeArgs::default()
        }
    }

    /// The configuration: these flags (and variables) over the file over the defaults,
    /// checked.
    pub(crate) fn resolve(self) -> anyhow::Result<Config> {
        let config = self.merge()?;
        config.check()?;
        Ok(config)
    }

    /// The same, unchecked: `rebuild` reads only the projections' settings, and must not fail
    /// on others (which `serve` may take from variables `rebuild` does not read).
    pub(crate) fn merge(self) -> anyhow::Result<Config> {
        let file: FileConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing the config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        let fsync = given(self.log_fsync).or(given(file.log.fsync));
        let log_segment_bytes = self
            .log_segment_bytes
            .or(file.log.segment_bytes)
            .unwrap_or(d.log_segment_bytes);
        let limits_max_payload_bytes = self
            .limits_max_payload_bytes
            .or(file.limits.max_payload_bytes)
            .unwrap_or(d.limits_max_payload_bytes);
        let config = Config {
            listen: self.listen.or(file.listen).unwrap_or(d.listen),
            // Empty (`data = ""`) is not given: it named the working directory.
            data: [self.data, file.data]
                .into_iter()
                .flatten()
                .find(|p| !p.as_os_str().is_empty())
                .unwrap_or(d.data),
            // Trimmed as tokens are (`auth::bearer`): a key ending in a newline (a Kubernetes
            // secret, `$(cat key)` in a unit file) matched no call. Empty is unset; nothing but
            // whitespace is refused by `check`.
            admin_key: given(self.admin_key)
                .or(given(file.admin_key))
                .map(|k| k.trim().to_owned()),
            person_allowlist: self
                .person_allowlist
                .or(file.person_allowlist)
                .unwrap_or(d.person_allowlist),
            log_fsync: match fsync {
                Some(s) => s.parse().map_err(|e| anyhow::anyhow!("log.fsync: {e}"))?,
                None => d.log_fsync,
            },
            log_segment_bytes,
            log_preallocate_bytes: self
                .log_preallocate_bytes
                .or(file.log.preallocate_bytes)
                .unwrap_or(log_segment_bytes)
                .min(log_segment_bytes),
            limits_max_payload_bytes,
            // Unset: 1 MiB, or what the payload limit needs (so raising only the payload
            // limit, as configurations did before the floor existed, still starts).
            limits_max_frame_bytes: self
                .limits_max_frame_bytes
                .or(file.limits.max_frame_bytes)
                .unwrap_or_else(|| {
                    d.limits_max_frame_bytes
                        .max(binary_frame_bytes(limits_max_payload_bytes))
                }),
            limits_max_connections: self
                .limits_max_connections
                .or(file.limits.max_connections)
                .unwrap_or(d.limits_max_connections),
            limits_sends_per_second: self
                .limits_sends_per_second
                .or(file.limits.sends_per_second)
                .unwrap_or(d.limits_sends_per_second),
            limits_send_bytes_per_second: self
                .limits_send_bytes_per_second
                .or(file.limits.send_bytes_per_second)
                .unwrap_or(d.limits_send_bytes_per_second),
            limits_new_person_channels_per_hour: self
                .limits_new_person_channels_per_hour
                .or(file.limits.new_person_channels_per_hour)
                .unwrap_or(d.limits_new_person_channels_per_hour),
            limits_frames_per_second: self
                .limits_frames_per_second
                .or(file.limits.frames_per_second)
                .unwrap_or(d.limits_frames_per_second),
            limits_session_queue: self
                .limits_session_queue
                .or(file.limits.session_queue)
                .unwrap_or(d.limits_session_queue),
            limits_max_uids_per_call: self
                .limits_max_uids_per_call
                .or(file.limits.max_uids_per_call)
                .unwrap_or(d.limits_max_uids_per_call),
            limits_session_queue_bytes: self
                .limits_session_queue_bytes
                .or(file.limits.session_queue_bytes)
                .unwrap_or(d.limits_session_queue_bytes),
            limits_sessions_per_user: self
                .limits_sessions_per_user
                .or(file.limits.sessions_per_user)
                .unwrap_or(d.limits_sessions_per_user),
            limits_ws_idle_secs: self
                .limits_ws_idle_secs
                .or(file.limits.ws_idle_secs)
                .unwrap_or(d.limits_ws_idle_secs),
            limits_http_read_timeout_secs: self
                .limits_http_read_timeout_secs
                .or(file.limits.http_read_timeout_secs)
                .unwrap_or(d.limits_http_read_timeout_secs),
            http_cors_origins: match self.http_cors_origins {
                Some(list) => comma_list(&list),
                None => file.http.cors_origins.unwrap_or(d.http_cors_origins),
            },
            acks_flush_ms: self
                .acks_flush_ms
                .or(file.acks.flush_ms)
                .unwrap_or(d.acks_flush_ms),
            projections_snapshot_interval_secs: self
                .projections_snapshot_interval_secs
                .or(file.projections.snapshot_interval_secs)
                .unwrap_or(d.projections_snapshot_interval_secs),
            projections_idempotency_entries: self
                .projections
                .projections_idempotency_entries
                .or(file.projections.idempotency_entries)
                .unwrap_or(d.projections_idempotency_entries),
            projections_idempotency_secs: self
                .projections
                .projections_idempotency_secs
                .or(file.projections.idempotency_secs)
                .unwrap_or(d.projections_idempotency_secs),
            projections_index_flush_entries: self
                .projections
                .projections_index_flush_entries
                .or(file.projections.index_flush_entries)
                .unwrap_or(d.projections_index_flush_entries),
            cache_conversation_memory_bytes: self
                .cache_conversation_memory_bytes
                .or(file.cache.conversation_memory_bytes)
                .unwrap_or(d.cache_conversation_memory_bytes),
            cache_conversation_disk_bytes: self
                .cache_conversation_disk_bytes
                .or(file.cache.conversation_disk_bytes)
                .unwrap_or(d.cache_conversation_disk_bytes),
            cache_index_bytes: self
                .cache_index_bytes
                .or(file.cache.index_bytes)
                .unwrap_or(d.cache_index_bytes),
            trace_sample_every: self
                .trace_sample_every
                .or(file.trace.sample_every)
                .unwrap_or(d.trace_sample_every),
            shutdown_grace_secs: self
                .shutdown_grace_secs
                .or(file.shutdown.grace_secs)
                .unwrap_or(d.shutdown_grace_secs),
            compaction_purge_interval_secs: self
                .compaction_purge_interval_secs
                .or(file.compaction.purge_interval_secs)
                .unwrap_or(d.compaction_purge_interval_secs),
            compaction_retention_secs: self
                .compaction_retention_secs
                .or(file.compaction.retention_secs),
            compaction_retention_bytes: self
                .compaction_retention_bytes
                .or(file.compaction.retention_bytes),
            compaction_retention_interval_secs: self
                .compaction_retention_interval_secs
                .or(file.compaction.retention_interval_secs)
                .unwrap_or(d.compaction_retention_interval_secs),
            node_id: given(self.node_id).or(given(file.node_id)),
            tier: {
                let t = file.tier;
                let dt = TierConfig::default();
                TierConfig {
                    url: given(self.tier_url).or(given(t.url)),
                    endpoint: given(self.tier_endpoint).or(given(t.endpoint)),
                    region: given(self.tier_region).or(given(t.region)).or(dt.region),
                    access_key_id: given(self.tier_access_key_id).or(given(t.access_key_id)),
                    secret_access_key: given(self.tier_secret_access_key)
                        .or(given(t.secret_access_key)),
                    local_retention_bytes: self
                        .tier_local_retention_bytes
                        .or(t.local_retention_bytes)
                        .unwrap_or(dt.local_retention_bytes),
                    local_retention_secs: self.tier_local_retention_secs.or(t.local_retention_secs),
                    block_bytes: self
                        .tier_block_bytes
                        .or(t.block_bytes)
                        .unwrap_or(dt.block_bytes),
                    cache_memory_bytes: self
                        .tier_cache_memory_bytes
                        .or(t.cache_memory_bytes)
                        .unwrap_or(dt.cache_memory_bytes),
                    cache_disk_bytes: self
                        .tier_cache_disk_bytes
                        .or(t.cache_disk_bytes)
                        .unwrap_or(dt.cache_disk_bytes),
                    read_timeout_ms: self
                        .tier_read_timeout_ms
                        .or(t.read_timeout_ms)
                        .unwrap_or(dt.read_timeout_ms),
                    upload_interval_secs: self
                        .tier_upload_interval_secs
                        .or(t.upload_interval_secs)
                        .unwrap_or(dt.upload_interval_secs),
                    lease_secs: self
                        .tier_lease_secs
                        .or(t.lease_secs)
                        .unwrap_or(dt.lease_secs),
                }
            },
        };
        Ok(config)
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

/// A setting given a value: an empty one (a variable set to nothing — a Kubernetes secret that
/// came out empty —, `--admin-key ''`, `admin_key = ""`) is not given, and the next source
/// (flag, then variable, then file) or the default holds. It overrode them, unset: the file's
/// admin key gave way to a generated one, and the file's `tier.url` to no tiering.
fn given(v: Option<String>) -> Option<String> {
    v.filter(|v| !v.is_empty())
}

/// The items of a comma-separated setting (a variable or a flag), trimmed; empty ones (a
/// trailing comma, an empty value) are none.
fn comma_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Why `origin` is not an origin as a browser sends it in its `Origin` header, if it is not:
/// `scheme://host[:port]`, scheme and host in lowercase, without the scheme's default port, and
/// nothing after (no path, not even `/`). The server compares the header with the setting byte
/// for byte, so any other spelling would never match.
fn origin_error(origin: &str) -> Option<String> {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Some("no scheme://".into());
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !scheme_ok {
        return Some(format!(
            "the scheme {scheme:?} is not a URL scheme in lowercase (browsers send it so)"
        ));
    }
    if let Some(c) = authority.chars().find(|c| "/\\?#@".contains(*c)) {
        return Some(format!(
            "{c:?}: an origin has no path (not even a trailing slash), query, fragment or user"
        ));
    }
    // The host ends at the first `:`, or after the `]` of an IPv6 literal.
    let host_end = if authority.starts_with('[') {
        authority.find(']').map_or(authority.len(), |i| i + 1)
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (host, rest) = authority.split_at(host_end);
    if let Some(why) = host_error(host) {
        return Some(why);
    }
    match rest.strip_prefix(':') {
        Some(port) => port_error(scheme, host, port),
        None if rest.is_empty() => None,
        None => Some(format!("{rest:?} after the host")),
    }
}

/// Why `host` (of an origin) is not one as a browser sends it, if it is not.
fn host_error(host: &str) -> Option<String> {
    if let Some(inner) = host.strip_prefix('[') {
        let Some(ip) = inner.strip_suffix(']') else {
            return Some("an IPv6 host without its closing ]".into());
        };
        return match ip.parse::<std::net::Ipv6Addr>() {
            Ok(addr) if ipv6_as_browsers_write(addr) == ip => None,
            Ok(addr) => Some(format!(
                "browsers write [{ip}] as [{}]",
                ipv6_as_browsers_write(addr)
            )),
            Err(_) => Some(format!("[{ip}] is not an IPv6 address")),
        };
    }
    if host.is_empty() {
        return Some("no host".into());
    }
    if ends_in_a_number(host) {
        // An IPv4 address, to a browser, however written (`127.0.0.01`, `0x7f.1`, `2130706433`):
        // it sends the dotted decimal form.
        return match host.parse::<std::net::Ipv4Addr>() {
            Ok(addr) if addr.to_string() == host => None,
            _ => Some(format!(
                "{host:?} is an IPv4 address to a browser, which sends it in the dotted decimal form without leading zeros"
            )),
        };
    }
    let c = host
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(*c)))?;
    let why = if c.is_ascii_uppercase() {
        "browsers send the host in lowercase"
    } else if !c.is_ascii() {
        "browsers send an internationalized name in its xn-- form"
    } else {
        "no host name has it"
    };
    Some(format!("{c:?} in the host: {why}"))
}

/// Whether a browser takes `host` for an IPv4 address (the URL standard's "ends in a number":
/// its last label, a trailing dot aside, is decimal digits or `0x` and hex digits).
fn ends_in_a_number(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.chars().all(|c| c.is_ascii_digit()))
}

/// An IPv6 address as a browser writes it in an origin (the URL standard's serializer):
/// lowercase hex without leading zeros, the first longest run of two or more zero pieces as
/// `::`, and no dotted IPv4 tail (`::ffff:c000:280`, where Rust writes `::ffff:192.0.2.128`).
fn ipv6_as_browsers_write(addr: std::net::Ipv6Addr) -> String {
    let pieces = addr.segments();
    // The first longest run of zeros, if two or more long.
    let (mut best, mut run) = (None::<(usize, usize)>, None::<(usize, usize)>);
    for (i, &p) in pieces.iter().enumerate() {
        run = match (p, run) {
            (0, Some((start, len))) => Some((start, len + 1)),
            (0, None) => Some((i, 1)),
            _ => None,
        };
        if let Some((start, len)) = run
            && len >= 2
            && best.is_none_or(|(_, l)| len > l)
        {
            best = Some((start, len));
        }
    }
    let hex = |ps: &[u16]| {
        ps.iter()
            .map(|p| format!("{p:x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    match best {
        Some((start, len)) => format!("{}::{}", hex(&pieces[..start]), hex(&pieces[start + len..])),
        None => hex(&pieces),
    }
}

/// Why `port` (of an origin of `scheme` and `host`) is not one as a browser sends it, if it is
/// not: a browser leaves the scheme's default port out, and writes no leading zeros.
fn port_error(scheme: &str, host: &str, port: &str) -> Option<String> {
    let Ok(n) = port.parse::<u16>() else {
        return Some(format!("the port {port:?} is not a number up to 65535"));
    };
    if n.to_string() != port {
        return Some(format!("the port {port:?}: browsers send it as {n}"));
    }
    let default = matches!((scheme, n), ("http", 80) | ("https", 443));
    default.then(|| format!("browsers leave the default port out: {scheme}://{host}"))
}

/// Why `key` (trimmed) cannot be the admin key, if it cannot. It is compared with the bearer
/// token of an `Authorization` header, which `auth::bearer` takes only as visible ASCII with
/// spaces or tabs between (`HeaderValue::to_str`) and trims: a key holding any other character
/// (a control character, a letter outside ASCII), or nothing, could never match, and every
/// admin call would be refused. The reason names the character, never the key.
pub(crate) fn admin_key_error(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("nothing but whitespace".into());
    }
    let (at, c) = key
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_graphic() || c == ' ' || c == '\t'))?;
    Some(format!(
        "{c:?} at byte {at}: an Authorization header carries visible ASCII (and spaces inside) \
         only, so no admin call could match the key"
    ))
}

/// Refuses setting `name` above `max` (in `unit`).
fn at_most<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    max: T,
    unit: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        value <= max,
        "{name} ({value}) must be at most {max} {unit}"
    );
    Ok(())
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

    /// Durations and capacities within what the code that uses them can hold.
    fn check_bounds(&self) -> anyhow::Result<()> {
        let t = &self.tier;
        let secs = [
            ("limits.ws_idle_secs", self.limits_ws_idle_secs),
            (
                "limits.http_read_timeout_secs",
                self.limits_http_read_timeout_secs,
            ),
            (
                "projections.snapshot_interval_secs",
                self.projections_snapshot_interval_secs,
            ),
            (
                "projections.idempotency_secs",
                self.projections_idempotency_secs,
            ),
            ("shutdown.grace_secs", self.shutdown_grace_secs),
            (
                "compaction.purge_interval_secs",
                self.compaction_purge_interval_secs,
            ),
            (
                "compaction.retention_secs",
                self.compaction_retention_secs.unwrap_or(0),
            ),
            (
                "compaction.retention_interval_secs",
                self.compaction_retention_interval_secs,
            ),
            (
                "tier.local_retention_secs",
                t.local_retention_secs.unwrap_or(0),
            ),
            ("tier.upload_interval_secs", t.upload_interval_secs),
            ("tier.lease_secs", t.lease_secs),
        ];
        for (name, value) in secs {
            at_most(name, value, MAX_DURATION_SECS, "(seconds: about 31 years)")?;
        }
        let ms = [
            ("acks.flush_ms", self.acks_flush_ms),
            ("tier.read_timeout_ms", t.read_timeout_ms),
        ];
        for (name, value) in ms {
            at_most(
                name,
                value,
                MAX_DURATION_MS,
                "(milliseconds: about 31 years)",
            )?;
        }
        if let FsyncPolicy::Every(d) = self.log_fsync {
            at_most(
                "log.fsync every(MS)",
                d.as_millis(),
                u128::from(MAX_DURATION_MS),
                "(milliseconds: about 31 years)",
            )?;
        }
        let capacities = [
            ("limits.max_connections", self.limits_max_connections),
            ("limits.session_queue", self.limits_session_queue),
        ];
        for (name, value) in capacities {
            at_most(name, value, MAX_CAPACITY, "(2^30)")?;
        }
        Ok(())
    }

    /// The log's options as the log checks them when it opens (`LogOptions::validate`), named
    /// as settings: refused there, they failed the start after the data directory and the
    /// admin key were made, with the log's own names. The rest of what it checks follows from
    /// the checks here: `preallocate_bytes` is at most the segment size (a larger one is taken
    /// as that), `every(0)` does not parse, and the largest append is within its bounds.
    fn check_log(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (LOG_MIN_SEGMENT_BYTES..=LOG_MAX_SEGMENT_BYTES).contains(&self.log_segment_bytes),
            "log.segment_bytes ({}) must be in [{LOG_MIN_SEGMENT_BYTES}, {LOG_MAX_SEGMENT_BYTES}] \
             (1 KiB to 2 GiB)",
            self.log_segment_bytes
        );
        Ok(())
    }

    /// Counts and rates that 0 does not turn off: the code takes it as 1 (a limit of "more
    /// than 0 sends per second" let two sends through, then one a second; a `sample_every`
    /// of 0 sampled every message), so it is refused rather than taken for something else.
    /// Intervals of 0 (`acks.flush_ms`, `projections.snapshot_interval_secs`,
    /// `tier.upload_interval_secs`) are taken as the shortest, as the README says.
    fn check_zeros(&self) -> anyhow::Result<()> {
        let zeros = [
            ("limits.sends_per_second", self.limits_sends_per_second == 0),
            (
                "limits.send_bytes_per_second",
                self.limits_send_bytes_per_second == 0,
            ),
            (
                "limits.new_person_channels_per_hour",
                self.limits_new_person_channels_per_hour == 0,
            ),
            (
                "limits.frames_per_second",
                self.limits_frames_per_second == 0,
            ),
            ("limits.session_queue", self.limits_session_queue == 0),
            (
                "limits.session_queue_bytes",
                self.limits_session_queue_bytes == 0,
            ),
            ("trace.sample_every", self.trace_sample_every == 0),
        ];
        if let Some((name, _)) = zeros.iter().find(|(_, zero)| *zero) {
            anyhow::bail!(
                "{name} must be at least 1 (0 would not turn it off: it was taken as 1 before)"
            );
        }
        Ok(())
    }

    /// `tier.url` names a store the server can open, and the S3 settings go with an `s3://`
    /// one: without it they were ignored (a tier the operator set up silently did not exist),
    /// an endpoint without a scheme panicked the server in the S3 client, one of another
    /// scheme failed only when the store was built, and `file://relative/dir` made a directory
    /// relative to wherever the server was started. Checked before anything is created.
    fn check_tier(&self) -> anyhow::Result<()> {
        let t = &self.tier;
        let given = |v: Option<&str>| v.is_some_and(|v| !v.is_empty());
        if let Some(e) = &t.endpoint {
            let rest = e
                .strip_prefix("https://")
                .or_else(|| e.strip_prefix("http://"));
            anyhow::ensure!(
                rest.is_some_and(|r| !r.is_empty()),
                "tier.endpoint {e:?} must start with http:// or https:// (e.g. \
                 http://127.0.0.1:9000)"
            );
        }
        let s3_only = [
            ("tier.endpoint", given(t.endpoint.as_deref())),
            ("tier.region", given(t.region.as_deref())),
            ("tier.access_key_id", given(t.access_key_id.as_deref())),
            (
                "tier.secret_access_key",
                given(t.secret_access_key.as_deref()),
            ),
        ];
        let s3_setting = s3_only.iter().find(|(_, set)| *set).map(|(name, _)| *name);
        let Some(url) = t.url.as_deref() else {
            if let Some(name) = s3_setting {
                anyhow::bail!(
                    "{name} is set but tier.url is not: without tier.url nothing is tiered \
                     (set tier.url = \"s3://bucket/prefix\", or remove {name})"
                );
            }
            return Ok(());
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let bucket = rest.split('/').next().unwrap_or_default();
            anyhow::ensure!(
                !bucket.is_empty(),
                "tier.url {url:?}: no bucket (expected s3://bucket/prefix)"
            );
            return Ok(());
        }
        let Some(dir) = url.strip_prefix("file://") else {
            anyhow::bail!("tier.url {url:?}: expected s3://bucket/prefix or file:///dir");
        };
        anyhow::ensure!(
            std::path::Path::new(dir).is_absolute(),
            "tier.url {url:?}: a file URL names an absolute directory, file:///dir (three \
             slashes); {dir:?} is relative"
        );
        if let Some(name) = s3_setting {
            anyhow::bail!("{name} is set but tier.url {url:?} is not s3://: it applies to S3 only");
        }
        Ok(())
    }

    /// `http.cors_origins` holds origins as browsers send them (see [`origin_error`]), or `*`
    /// alone. A misspelt one (a trailing slash, a default port, uppercase) would never match
    /// the `Origin` header: the server would answer that page without the header it needs,
    /// and the failure would show only in the browser's console.
    fn check_http(&self) -> anyhow::Result<()> {
        let origins = &self.http_cors_origins;
        if origins.iter().any(|o| o == "*") {
            anyhow::ensure!(
                origins.len() == 1,
                "http.cors_origins {origins:?}: \"*\" allows every origin and must be the only \
                 entry"
            );
            return Ok(());
        }
        for origin in origins {
            if let Some(why) = origin_error(origin) {
                anyhow::bail!(
                    "http.cors_origins: {origin:?} is not an origin as a browser sends it: {why} \
                     (expected scheme://host[:port], e.g. https://app.example.com, or * alone)"
                );
            }
        }
        Ok(())
    }

    /// `admin_key`, trimmed, is a key some admin call can send (see [`admin_key_error`]):
    /// one that cannot was taken, and every admin call was answered 401.
    fn check_admin_key(&self) -> anyhow::Result<()> {
        if let Some(why) = self.admin_key.as_deref().and_then(admin_key_error) {
            anyhow::bail!(
                "admin_key: {why} (surrounding whitespace is trimmed; leave it empty or unset \
                 to use DATA/admin.key)"
            );
        }
        Ok(())
    }

    /// Values that each parse but together (or alone) would break the server.
    fn check(&self) -> anyhow::Result<()> {
        self.check_admin_key()?;
        self.check_bounds()?;
        self.check_log()?;
        self.check_zeros()?;
        self.check_tier()?;
        self.check_http()?;
        let t = &self.tier;
        // The lease is renewed by upload passes (at the first pass a third of a lease after
        // the last manifest write): passes further apart than that let the lease lapse while
        // the owner runs, and a second server (or a copy of this directory) would take the
        // prefix over.
        anyhow::ensure!(
            t.url.is_none()
                || (t.lease_secs >= 3
                    && t.lease_secs >= t.upload_interval_secs.max(1).saturating_mul(3)),
            "tier.lease_secs ({}) must be at least 3 and at least 3 × tier.upload_interval_secs ({}): \
             the owner renews its lease only at upload passes",
            t.lease_secs,
            t.upload_interval_secs
        );
        anyhow::ensure!(
            t.read_timeout_ms > 0,
            "tier.read_timeout_ms must be above 0 (it bounds every call to the object store)"
        );
        anyhow::ensure!(
            self.projections_index_flush_entries >= 1,
            "projections.index_flush_entries must be at least 1"
        );
        anyhow::ensure!(
            self.limits_sessions_per_user >= 1,
            "limits.sessions_per_user must be at least 1"
        );
        anyhow::ensure!(
            self.limits_http_read_timeout_secs >= 1,
            "limits.http_read_timeout_secs must be at least 1"
        );
        anyhow::ensure!(
            self.limits_ws_idle_secs >= 3,
            "limits.ws_idle_secs ({}) must be at least 3 (the server pings after a third of it)",
            self.limits_ws_idle_secs
        );
        anyhow::ensure!(
            (1..=MAX_PAYLOAD_LIMIT).contains(&self.limits_max_payload_bytes),
            "limits.max_payload_bytes ({}) must be in [1, {MAX_PAYLOAD_LIMIT}]",
            self.limits_max_payload_bytes
        );
        // Binary frames up to this size are read as sends: below it, a send HTTP takes closed
        // the connection (1009) instead of being answered, and 0 closed it at every frame.
        let frame_floor = self.max_binary_frame_bytes();
        anyhow::ensure!(
            self.limits_max_frame_bytes >= frame_floor,
            "limits.max_frame_bytes ({}) must be at least 3 × limits.max_payload_bytes + \
             {CBOR_FRAME_OVERHEAD} ({frame_floor}): a binary frame up to that size may be a \
             valid send, and a frame past limits.max_frame_bytes closes the connection",
            self.limits_max_frame_bytes
        );
        anyhow::ensure!(
            (1..=MAX_UIDS_PER_CALL).contains(&self.limits_max_uids_per_call),
            "limits.max_uids_per_call ({}) must be in [1, {MAX_UIDS_PER_CALL}]: the event of a \
             call, up to {UID_EVENT_BYTES} bytes a uid, must fit one log append \
             ({LOG_MAX_APPEND} bytes at most)",
            self.limits_max_uids_per_call
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_projections::{Envelope, Event, ListKind, ListOp, ListOwner};

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\n[log]\nsegment_bytes = 4096\nfsync = \"every(50)\"\n[limits]\nmax_payload_bytes = 100\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            limits_max_payload_bytes: Some(7),
            ..ServeArgs::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.log_segment_bytes, 4096);
        assert_eq!(c.log_preallocate_bytes, 4096, "the segment size by default");
        assert_eq!(c.log_fsync, FsyncPolicy::Every(Duration::from_millis(50)));
        assert_eq!(c.limits_max_payload_bytes, 7);
        assert_eq!(
            c.limits_session_queue,
            Config::default().limits_session_queue
        );

        std::fs::write(&path, "[log]\nsegmnt_bytes = 1\n").unwrap();
        let err = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("segmnt_bytes"), "{err:#}");
    }

    /// `[compaction] purge_interval_secs`: an hour by default, from the file, the flag over it,
    /// 0 turning the purge off; a duration past the bound is refused, and so is an unknown key
    /// in the section.
    #[test]
    fn the_purge_interval_comes_from_the_file_or_the_flag() {
        let d = ServeArgs::default().resolve().unwrap();
        assert_eq!(d.purge_interval(), Some(Duration::from_secs(3600)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[compaction]\npurge_interval_secs = 0\n").unwrap();
        let from = |flag: Option<u64>| {
            ServeArgs {
                config: Some(path.clone()),
                compaction_purge_interval_secs: flag,
                ..ServeArgs::default()
            }
            .resolve()
        };
        assert_eq!(from(None).unwrap().purge_interval(), None);
        assert_eq!(
            from(Some(5)).unwrap().purge_interval(),
            Some(Duration::from_secs(5))
        );
        let err = format!("{:#}", from(Some(MAX_DURATION_SECS + 1)).unwrap_err());
        assert!(err.contains("compaction.purge_interval_secs"), "{err}");
        std::fs::write(&path, "[compaction]\npurge_interval = 60\n").unwrap();
        let err = format!("{:#}", from(None).unwrap_err());
        assert!(err.contains("unknown field `purge_interval`"), "{err}");
    }

    /// `[compaction] retention_*`: off by default; from the file, the flag over it; the
    /// interval a minute by default; taken with a tier too (refused with one until the tiered
    /// log could remove from its store); refused past the duration bound.
    #[test]
    fn retention_comes_from_the_file_or_the_flag_with_or_without_a_tier() {
        let d = ServeArgs::default().resolve().unwrap();
        assert_eq!(d.retention_interval(), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "[compaction]\nretention_secs = 86400\nretention_interval_secs = 0\n",
        )
        .unwrap();
        let with = |args: ServeArgs| {
            ServeArgs {
                config: Some(path.clone()),
                ..args
            }
            .resolve()
        };
        let c = with(ServeArgs::default()).unwrap();
        assert_eq!(c.compaction_retention_secs, Some(86400));
        assert_eq!(c.compaction_retention_bytes, None);
        assert_eq!(c.retention_interval(), Some(Duration::from_secs(1)));
        let c = with(ServeArgs {
            compaction_retention_secs: Some(60),
            compaction_retention_bytes: Some(1 << 30),
            compaction_retention_interval_secs: Some(5),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(
            (c.compaction_retention_secs, c.compaction_retention_bytes),
            (Some(60), Some(1 << 30))
        );
        assert_eq!(c.retention_interval(), Some(Duration::from_secs(5)));
        let bytes_only = ServeArgs {
            compaction_retention_bytes: Some(0),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            bytes_only.retention_interval(),
            Some(Duration::from_secs(60))
        );
        let tiered = with(ServeArgs {
            tier_url: Some("file:///tmp/tidings-store".into()),
            compaction_retention_bytes: Some(1 << 30),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(
            tiered.tier.url.as_deref(),
            Some("file:///tmp/tidings-store")
        );
        assert_eq!(
            (
                tiered.compaction_retention_secs,
                tiered.compaction_retention_bytes
            ),
            (Some(86400), Some(1 << 30))
        );
        assert_eq!(tiered.retention_interval(), Some(Duration::from_secs(1)));
        let err = format!(
            "{:#}",
            with(ServeArgs {
                compaction_retention_secs: Some(MAX_DURATION_SECS + 1),
                ..ServeArgs::default()
            })
            .unwrap_err()
        );
        assert!(err.contains("compaction.retention_secs"), "{err}");
    }

    #[test]
    fn values_that_would_break_the_server_are_refused() {
        let refused = |args: ServeArgs, what: &str| {
            let err = format!("{:#}", args.resolve().unwrap_err());
            assert!(err.contains(what), "{err}");
        };
        // A lease that lapses between upload passes (the default interval is 5 s).
        refused(
            ServeArgs {
                tier_lease_secs: Some(10),
                tier_url: Some("file:///nowhere".into()),
                ..ServeArgs::default()
            },
            "tier.lease_secs",
        );
        refused(
            ServeArgs {
                tier_lease_secs: Some(0),
                tier_upload_interval_secs: Some(0),
                tier_url: Some("file:///nowhere".into()),
                ..ServeArgs::default()
            },
            "tier.lease_secs",
        );
        refused(
            ServeArgs {
                tier_upload_interval_secs: Some(60),
                tier_url: Some("file:///nowhere".into()),
                ..ServeArgs::default()
            },
            "tier.lease_secs",
        );
        refused(
            ServeArgs {
                tier_read_timeout_ms: Some(0),
                ..ServeArgs::default()
            },
            "tier.read_timeout_ms",
        );
        refused(
            ServeArgs {
                limits_max_payload_bytes: Some(MAX_PAYLOAD_LIMIT + 1),
                ..ServeArgs::default()
            },
            "limits.max_payload_bytes",
        );
        refused(
            ServeArgs {
                limits_ws_idle_secs: Some(2),
                ..ServeArgs::default()
            },
            "limits.ws_idle_secs",
        );
        // Durations a deadline cannot hold (2^63 s and up panicked: hyper's read timeout at
        // every connection, the shutdown's deadline at SIGTERM; the idempotency window wrapped
        // in milliseconds), and one second past the bound.
        let huge = u64::MAX;
        let durations = [
            (
                ServeArgs {
                    limits_http_read_timeout_secs: Some(1 << 63),
                    ..ServeArgs::default()
                },
                "limits.http_read_timeout_secs",
            ),
            (
                ServeArgs {
                    limits_ws_idle_secs: Some(huge),
                    ..ServeArgs::default()
                },
                "limits.ws_idle_secs",
            ),
            (
                ServeArgs {
                    shutdown_grace_secs: Some(1 << 63),
                    ..ServeArgs::default()
                },
                "shutdown.grace_secs",
            ),
            (
                ServeArgs {
                    shutdown_grace_secs: Some(MAX_DURATION_SECS + 1),
                    ..ServeArgs::default()
                },
                "shutdown.grace_secs",
            ),
            (
                ServeArgs {
                    projections_snapshot_interval_secs: Some(huge),
                    ..ServeArgs::default()
                },
                "projections.snapshot_interval_secs",
            ),
            (
                ServeArgs {
                    projections: ProjectionsArgs {
                        projections_idempotency_secs: Some(huge / 1000 + 1),
                        ..ProjectionsArgs::default()
                    },
                    ..ServeArgs::default()
                },
                "projections.idempotency_secs",
            ),
            (
                ServeArgs {
                    acks_flush_ms: Some(huge),
                    ..ServeArgs::default()
                },
                "acks.flush_ms",
            ),
            (
                ServeArgs {
                    tier_read_timeout_ms: Some(huge),
                    ..ServeArgs::default()
                },
                "tier.read_timeout_ms",
            ),
            (
                ServeArgs {
                    tier_local_retention_secs: Some(huge),
                    ..ServeArgs::default()
                },
                "tier.local_retention_secs",
            ),
            (
                ServeArgs {
                    tier_upload_interval_secs: Some(huge),
                    ..ServeArgs::default()
                },
                "tier.upload_interval_secs",
            ),
            (
                ServeArgs {
                    log_fsync: Some(format!("every({huge})")),
                    ..ServeArgs::default()
                },
                "log.fsync",
            ),
            // The lease in milliseconds was cut to 64 bits; checked with or without a tier.
            (
                ServeArgs {
                    tier_lease_secs: Some(huge),
                    ..ServeArgs::default()
                },
                "tier.lease_secs",
            ),
        ];
        for (args, what) in durations {
            refused(args, what);
        }
        // Capacities tokio refuses with a panic (above `usize::MAX >> 3`): at start-up for the
        // connections' semaphore, at every WebSocket upgrade for a session's queue.
        for n in [usize::MAX, (1 << 61) + 1, MAX_CAPACITY + 1] {
            refused(
                ServeArgs {
                    limits_max_connections: Some(n),
                    ..ServeArgs::default()
                },
                "limits.max_connections",
            );
            refused(
                ServeArgs {
                    limits_session_queue: Some(n),
                    ..ServeArgs::default()
                },
                "limits.session_queue",
            );
        }
        // A frame limit below what a send's binary frame may take (3 × the payload limit and
        // 4 KiB): a 1.5 MB send closed the connection (1009) where HTTP took it; 0 closed
        // every connection at its first frame.
        for (payload, frame) in [(4 << 20, 1 << 20), (64 << 10, 0), (1024, 3 * 1024 + 4095)] {
            refused(
                ServeArgs {
                    limits_max_payload_bytes: Some(payload),
                    limits_max_frame_bytes: Some(frame),
                    ..ServeArgs::default()
                },
                "limits.max_frame_bytes",
            );
        }
        // More uids per call than one log append holds the event of (and none at all).
        for n in [MAX_UIDS_PER_CALL + 1, usize::MAX, 0] {
            refused(
                ServeArgs {
                    limits_max_uids_per_call: Some(n),
                    ..ServeArgs::default()
                },
                "limits.max_uids_per_call",
            );
        }
        // Segment sizes the log refuses when it opens (after the data directory and the admin
        // key were made, and without the `log.` name).
        for n in [
            0,
            5,
            LOG_MIN_SEGMENT_BYTES - 1,
            LOG_MAX_SEGMENT_BYTES + 1,
            u64::MAX,
        ] {
            refused(
                ServeArgs {
                    log_segment_bytes: Some(n),
                    ..ServeArgs::default()
                },
                "log.segment_bytes",
            );
        }
        // Counts and rates that 0 does not turn off (they were taken as 1).
        let zeros = [
            (
                ServeArgs {
                    limits_sends_per_second: Some(0),
                    ..ServeArgs::default()
                },
                "limits.sends_per_second",
            ),
            (
                ServeArgs {
                    limits_frames_per_second: Some(0),
                    ..ServeArgs::default()
                },
                "limits.frames_per_second",
            ),
            (
                ServeArgs {
                    limits_session_queue: Some(0),
                    ..ServeArgs::default()
                },
                "limits.session_queue",
            ),
            (
                ServeArgs {
                    limits_session_queue_bytes: Some(0),
                    ..ServeArgs::default()
                },
                "limits.session_queue_bytes",
            ),
            (
                ServeArgs {
                    trace_sample_every: Some(0),
                    ..ServeArgs::default()
                },
                "trace.sample_every",
            ),
        ];
        for (args, what) in zeros {
            refused(args, what);
        }
        // An S3 endpoint without a scheme (the S3 client panicked at start: InvalidUri) or of
        // another scheme (a late "builder error").
        for endpoint in [
            "127.0.0.1:17650",
            "ftp://127.0.0.1:21",
            "http://",
            "HTTP://x",
        ] {
            refused(
                ServeArgs {
                    tier_url: Some("s3://bucket/prefix".into()),
                    tier_endpoint: Some(endpoint.into()),
                    ..ServeArgs::default()
                },
                "tier.endpoint",
            );
        }
        // S3 settings without an S3 tier.url (ignored without a word).
        let s3_settings = [
            (
                ServeArgs {
                    tier_endpoint: Some("http://127.0.0.1:9000".into()),
                    ..ServeArgs::default()
                },
                "tier.endpoint is set but tier.url is not",
            ),
            (
                ServeArgs {
                    tier_region: Some("eu-west-1".into()),
                    ..ServeArgs::default()
                },
                "tier.region is set but tier.url is not",
            ),
            (
                ServeArgs {
                    tier_access_key_id: Some("k".into()),
                    ..ServeArgs::default()
                },
                "tier.access_key_id is set but tier.url is not",
            ),
            (
                ServeArgs {
                    tier_secret_access_key: Some("s".into()),
                    ..ServeArgs::default()
                },
                "tier.secret_access_key is set but tier.url is not",
            ),
            (
                ServeArgs {
                    tier_url: Some("file:///nowhere".into()),
                    tier_endpoint: Some("http://127.0.0.1:9000".into()),
                    ..ServeArgs::default()
                },
                "tier.endpoint is set but tier.url \"file:///nowhere\" is not s3://",
            ),
        ];
        for (args, what) in s3_settings {
            refused(args, what);
        }
        // Store URLs the server cannot open: a relative directory (it was made relative to
        // wherever the server started), none, no bucket, another scheme.
        for url in [
            "file://relative/dir",
            "file://",
            "s3://",
            "s3:///prefix",
            "gs://b/p",
        ] {
            refused(
                ServeArgs {
                    tier_url: Some(url.into()),
                    ..ServeArgs::default()
                },
                "tier.url",
            );
        }
        // CORS origins no browser sends (the `Origin` header is compared byte for byte, so each
        // would never match), and `*` beside others.
        for origins in [
            "https://app.example.com/",
            "https://app.example.com/app",
            "https://app.example.com?x",
            "https://user@app.example.com",
            "app.example.com",
            "//app.example.com",
            "null",
            "HTTPS://app.example.com",
            "https://App.example.com",
            "https://app.exämple.com",
            "https://app example.com",
            "https://",
            "https://:8443",
            "https://app.example.com:443",
            "http://app.example.com:80",
            "https://app.example.com:",
            "https://app.example.com:08443",
            "https://app.example.com:65536",
            "https://app.example.com:x",
            "http://[::1",
            "http://[::1]x",
            "http://[::G]",
            "http://[::A]",
            // Browsers send the canonical forms: [::1], 127.0.0.1.
            "http://[0:0:0:0:0:0:0:1]",
            "http://[::0:1]",
            "http://[::ffff:192.0.2.128]",
            "http://127.0.0.01",
            "http://0x7f.0.0.1",
            "http://2130706433",
            "http://127.1",
            "http://1.2.3.4.",
            "*,https://app.example.com",
            "https://app.example.com, https://other.example.com/",
        ] {
            refused(
                ServeArgs {
                    http_cors_origins: Some(origins.into()),
                    ..ServeArgs::default()
                },
                "http.cors_origins",
            );
        }
        // Without a tier the lease is not used: a leftover interval is no reason to refuse.
        let untiered = ServeArgs {
            tier_upload_interval_secs: Some(60),
            ..ServeArgs::default()
        };
        assert!(untiered.resolve().is_ok());
        let ok = ServeArgs {
            tier_lease_secs: Some(15),
            limits_max_payload_bytes: Some(MAX_PAYLOAD_LIMIT),
            limits_max_frame_bytes: Some(3 * MAX_PAYLOAD_LIMIT + CBOR_FRAME_OVERHEAD),
            ..ServeArgs::default()
        };
        assert_eq!(ok.resolve().unwrap().tier.lease_secs, 15);
    }

    /// The admin key is trimmed, as the bearer tokens it is compared with are: a key ending in
    /// a newline (a Kubernetes secret, `$(cat key)`) was taken whole, and every admin call was
    /// then 401. One that no `Authorization` header can carry is refused, naming the setting
    /// and not the key; an empty one is unset (generated into DATA/admin.key).
    #[test]
    fn the_admin_key_is_trimmed_and_one_no_header_carries_is_refused() {
        let resolve = |key: &str| {
            ServeArgs {
                admin_key: Some(key.into()),
                ..ServeArgs::default()
            }
            .resolve()
        };
        for key in [
            "s3cret-admin-key\n",
            " s3cret-admin-key\t",
            "\r\ns3cret-admin-key \r\n",
        ] {
            let c = resolve(key).unwrap();
            assert_eq!(c.admin_key.as_deref(), Some("s3cret-admin-key"), "{key:?}");
        }
        // Spaces inside reach the server (a header value loses only its ends).
        assert_eq!(
            resolve("two words").unwrap().admin_key.as_deref(),
            Some("two words")
        );
        assert_eq!(resolve("").unwrap().admin_key, None);
        for key in [
            " ",
            "\n\n",
            "s3cret\nkey",
            "s3cret\u{7f}",
            "s3cr\u{e9}t",
            "key\0",
        ] {
            let err = format!("{:#}", resolve(key).unwrap_err());
            assert!(err.contains("admin_key"), "{key:?}: {err}");
            assert!(!err.contains("s3cr"), "the key itself is not shown: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "admin_key = \"from-the-file\\n\"\n").unwrap();
        let c = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.admin_key.as_deref(), Some("from-the-file"));
        // An empty flag or variable is not given: the file's key holds (it was replaced by a
        // generated one), as do its tier url and node id, and an empty `data` is the default.
        std::fs::write(
            &path,
            "admin_key = \"from-the-file\"\nnode_id = \"n1\"\ndata = \"\"\n\
             [log]\nfsync = \"never\"\n[tier]\nurl = \"file:///srv/tier\"\n",
        )
        .unwrap();
        let c = ServeArgs {
            config: Some(path.clone()),
            admin_key: Some(String::new()),
            node_id: Some(String::new()),
            tier_url: Some(String::new()),
            log_fsync: Some(String::new()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.log_fsync, FsyncPolicy::Never);
        assert_eq!(c.admin_key.as_deref(), Some("from-the-file"));
        assert_eq!(c.node_id.as_deref(), Some("n1"));
        assert_eq!(c.tier.url.as_deref(), Some("file:///srv/tier"));
        assert_eq!(c.data, Config::default().data);
        // The tier's region and keys too (an empty one overrode the file's and `AWS_*`).
        std::fs::write(
            &path,
            "[tier]\nurl = \"s3://b/p\"\nregion = \"eu-west-3\"\naccess_key_id = \"AK\"\n\
             secret_access_key = \"SK\"\n",
        )
        .unwrap();
        let c = ServeArgs {
            config: Some(path),
            tier_region: Some(String::new()),
            tier_access_key_id: Some(String::new()),
            tier_secret_access_key: Some(String::new()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.tier.region.as_deref(), Some("eu-west-3"));
        assert_eq!(c.tier.access_key_id.as_deref(), Some("AK"));
        assert_eq!(c.tier.secret_access_key.as_deref(), Some("SK"));
    }

    /// CORS origins come from the file as a list, from the variable or the flag as one
    /// comma-separated value (which replaces the file's; an empty one turns CORS off), and
    /// every form of origin a browser sends is taken.
    #[test]
    fn cors_origins_from_the_file_or_a_comma_separated_flag() {
        assert!(
            ServeArgs::default()
                .resolve()
                .unwrap()
                .http_cors_origins
                .is_empty()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "[http]\ncors_origins = [\"https://app.example.com\", \"http://localhost:5173\"]\n",
        )
        .unwrap();
        let from = |flag: Option<&str>| {
            ServeArgs {
                config: Some(path.clone()),
                http_cors_origins: flag.map(str::to_owned),
                ..ServeArgs::default()
            }
            .resolve()
            .unwrap()
            .http_cors_origins
        };
        assert_eq!(
            from(None),
            ["https://app.example.com", "http://localhost:5173"]
        );
        assert_eq!(
            from(Some(" https://a.example.com ,https://b.example.com:8443,")),
            ["https://a.example.com", "https://b.example.com:8443"]
        );
        assert!(from(Some("")).is_empty(), "an empty value turns CORS off");
        assert_eq!(from(Some("*")), ["*"]);
        let taken = [
            "http://127.0.0.1:7070",
            "http://[::1]:8080",
            "http://[2001:db8::1]",
            "http://[::ffff:c000:280]",
            "http://[1:0:0:2::3]",
            "http://[1::2:0:0:3]",
            "http://10.0.0.255:3000",
            "https://1a.example",
            "https://xn--exmple-cua.com",
            "https://my_host.internal:1",
            "capacitor://localhost",
            "chrome-extension://abcdefghijklmnop",
            "https://app.example.com:8443",
            "http://app.example.com:443",
        ];
        for origin in taken {
            let resolved = ServeArgs {
                http_cors_origins: Some(origin.into()),
                ..ServeArgs::default()
            }
            .resolve();
            if let Err(e) = resolved {
                panic!("{origin} refused: {e:#}");
            }
        }
    }

    /// Every bound is a value that is taken, and the defaults are within them all.
    #[test]
    fn an_unset_frame_limit_follows_a_raised_payload_limit() {
        // Only the payload limit raised (as configurations did before the frame floor): the
        // frame limit follows it instead of refusing the start.
        let c = ServeArgs {
            limits_max_payload_bytes: Some(4 << 20),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            c.limits_max_frame_bytes,
            3 * (4 << 20) + CBOR_FRAME_OVERHEAD
        );
        // The default stays 1 MiB while it is enough.
        let c = ServeArgs::default().resolve().unwrap();
        assert_eq!(c.limits_max_frame_bytes, 1 << 20);
        // One set below the floor is still refused.
        let e = ServeArgs {
            limits_max_payload_bytes: Some(4 << 20),
            limits_max_frame_bytes: Some(1 << 20),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("limits.max_frame_bytes"), "{e}");
    }

    #[test]
    fn values_at_the_bounds_are_taken() {
        let at_bounds = ServeArgs {
            limits_ws_idle_secs: Some(MAX_DURATION_SECS),
            limits_http_read_timeout_secs: Some(MAX_DURATION_SECS),
            projections_snapshot_interval_secs: Some(MAX_DURATION_SECS),
            projections: ProjectionsArgs {
                projections_idempotency_secs: Some(MAX_DURATION_SECS),
                ..ProjectionsArgs::default()
            },
            shutdown_grace_secs: Some(MAX_DURATION_SECS),
            acks_flush_ms: Some(MAX_DURATION_MS),
            tier_url: Some("file:///nowhere".into()),
            tier_local_retention_secs: Some(MAX_DURATION_SECS),
            tier_upload_interval_secs: Some(MAX_DURATION_SECS / 3),
            tier_lease_secs: Some(MAX_DURATION_SECS),
            tier_read_timeout_ms: Some(MAX_DURATION_MS),
            log_fsync: Some(format!("every({MAX_DURATION_MS})")),
            limits_max_connections: Some(MAX_CAPACITY),
            limits_session_queue: Some(MAX_CAPACITY),
            limits_max_payload_bytes: Some(MAX_PAYLOAD_LIMIT),
            limits_max_frame_bytes: Some(3 * MAX_PAYLOAD_LIMIT + CBOR_FRAME_OVERHEAD),
            limits_max_uids_per_call: Some(MAX_UIDS_PER_CALL),
            ..ServeArgs::default()
        };
        let c = at_bounds.resolve().unwrap();
        for n in [LOG_MIN_SEGMENT_BYTES, LOG_MAX_SEGMENT_BYTES] {
            let c = ServeArgs {
                log_segment_bytes: Some(n),
                ..ServeArgs::default()
            }
            .resolve()
            .unwrap();
            assert_eq!(c.log_preallocate_bytes, n, "the segment size by default");
        }
        for endpoint in ["http://127.0.0.1:9000", "https://s3.example.com"] {
            let s3 = ServeArgs {
                tier_url: Some("s3://bucket/prefix".into()),
                tier_endpoint: Some(endpoint.into()),
                tier_region: Some("eu-west-1".into()),
                tier_access_key_id: Some("k".into()),
                tier_secret_access_key: Some("s".into()),
                ..ServeArgs::default()
            };
            assert!(s3.resolve().is_ok(), "{endpoint}");
        }
        let rates = ServeArgs {
            limits_sends_per_second: Some(1),
            limits_frames_per_second: Some(1),
            limits_session_queue: Some(1),
            limits_session_queue_bytes: Some(1),
            trace_sample_every: Some(1),
            ..ServeArgs::default()
        };
        assert!(rates.resolve().is_ok());
        assert!(
            c.log_max_append_bytes() <= LOG_MAX_APPEND,
            "{} bytes: more than the log takes",
            c.log_max_append_bytes()
        );
        assert_eq!(c.max_binary_frame_bytes(), c.limits_max_frame_bytes);
        let d = ServeArgs::default().resolve().unwrap();
        assert_eq!(d.max_binary_frame_bytes(), 3 * (64 << 10) + 4096);
    }

    /// A membership or list call of `limits.max_uids_per_call` uids of the longest kind fits
    /// the log's largest append. Sized by the payload limit alone (2 × 64 KiB + 1 MiB), it was
    /// below the event of 20,000 such uids (~1.3 MB), and the call answered 500.
    #[test]
    fn the_largest_uids_call_fits_one_append() {
        let event_bytes = |n: usize| {
            Envelope::new(
                u64::MAX,
                Event::ListChanged {
                    owner: ListOwner::Channel("c".repeat(MAX_ID_LEN)),
                    list: ListKind::Allow,
                    op: ListOp::Set,
                    uids: vec!["u".repeat(MAX_ID_LEN); n],
                },
            )
            .encode()
            .len()
        };
        let n = 20_000;
        // Each uid adds at most `UID_EVENT_BYTES` (the array's head grows by a few bytes).
        assert!(event_bytes(n) - event_bytes(0) <= n * UID_EVENT_BYTES + 8);
        let c = ServeArgs {
            limits_max_uids_per_call: Some(n),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        // The log frames a one-record append with a 40-byte batch header and a 4-byte length.
        let append = event_bytes(n) + 44;
        assert!(
            append <= c.log_max_append_bytes(),
            "an append of {append} bytes, the log's largest {}",
            c.log_max_append_bytes()
        );
        assert!(append > 2 * c.limits_max_payload_bytes + (1 << 20));
    }
}
