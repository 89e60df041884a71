//! The `tidings serve` flags (each also a `TIDINGS_*` variable) and their merge with the file
//! and the defaults into a [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use super::file::FileConfig;
use super::*;

/// `tidings serve` flags (each also read from its `TIDINGS_*` variable).
#[derive(Debug, Default, clap::Args)]
pub(crate) struct ServeArgs {
    /// A TOML configuration file.
    #[arg(long, env = "TIDINGS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on. Default: 127.0.0.1:7070.
    #[arg(long, env = "TIDINGS_LISTEN")]
    pub(super) listen: Option<SocketAddr>,
    /// Data directory. Default: ./data.
    #[arg(long, env = "TIDINGS_DATA")]
    pub(super) data: Option<PathBuf>,
    /// The admin key for app-server calls (surrounding whitespace trimmed; visible ASCII and
    /// inner spaces and tabs only). Default: generated on first start into DATA/admin.key (mode 0600)
    /// and printed once.
    #[arg(long, env = "TIDINGS_ADMIN_KEY", hide_env_values = true)]
    pub(super) admin_key: Option<String>,
    /// Person channels honour the recipient's allowlist. Default: false.
    #[arg(long, env = "TIDINGS_PERSON_ALLOWLIST")]
    pub(super) person_allowlist: Option<bool>,
    /// always | every(MS) | never. Default: always.
    #[arg(long, env = "TIDINGS_LOG_FSYNC")]
    pub(super) log_fsync: Option<String>,
    /// Segment size before a roll. Default: 134217728 (128 MiB).
    #[arg(long, env = "TIDINGS_LOG_SEGMENT_BYTES")]
    pub(super) log_segment_bytes: Option<u64>,
    /// Each new segment starts as a file of this many zeros, written ahead of time, so that
    /// fdatasync does not journal a growing file (0 = off). Default: the segment size.
    #[arg(long, env = "TIDINGS_LOG_PREALLOCATE_BYTES")]
    pub(super) log_preallocate_bytes: Option<u64>,
    /// Largest message payload. Default: 65536.
    #[arg(long, env = "TIDINGS_LIMITS_MAX_PAYLOAD_BYTES")]
    pub(super) limits_max_payload_bytes: Option<usize>,
    /// Largest WebSocket frame; at least 3 × the payload limit + 4096 (the largest binary frame
    /// read as a send). Default: 1048576.
    #[arg(long, env = "TIDINGS_LIMITS_MAX_FRAME_BYTES")]
    pub(super) limits_max_frame_bytes: Option<usize>,
    /// Most WebSocket connections at once (at most 2^30). Default: 100000.
    #[arg(long, env = "TIDINGS_LIMITS_MAX_CONNECTIONS")]
    pub(super) limits_max_connections: Option<usize>,
    /// Sends per second per user, over all of their WebSocket sessions and HTTP sends
    /// together (the admin's sends as a user are not counted); bursts of twice that.
    /// Default: 200.
    #[arg(long, env = "TIDINGS_LIMITS_SENDS_PER_SECOND")]
    pub(super) limits_sends_per_second: Option<u32>,
    /// Payload bytes per second per user (sends and edits), counted as sends are; bursts of
    /// twice that, and at least one largest payload. Default: 1048576.
    #[arg(long, env = "TIDINGS_LIMITS_SEND_BYTES_PER_SECOND")]
    pub(super) limits_send_bytes_per_second: Option<u64>,
    /// Person channels a user may open (send the first message of) per hour: each holds a head
    /// and cursors for good, and any uid can be named. Not counted: the admin's sends as a
    /// user. Default: 1000.
    #[arg(long, env = "TIDINGS_LIMITS_NEW_PERSON_CHANNELS_PER_HOUR")]
    pub(super) limits_new_person_channels_per_hour: Option<u32>,
    /// WebSocket frames other than sends (acks, reads, pings, bad frames) per second per
    /// connection, bursts of twice that; past it the server stops reading the connection for
    /// a while. Default: 1000.
    #[arg(long, env = "TIDINGS_LIMITS_FRAMES_PER_SECOND")]
    pub(super) limits_frames_per_second: Option<u32>,
    /// Messages queued for one WebSocket session before it is closed as too slow (at most
    /// 2^30). Default: 4096.
    #[arg(long, env = "TIDINGS_LIMITS_SESSION_QUEUE")]
    pub(super) limits_session_queue: Option<usize>,
    /// Most uids in one membership or list call (1 to 1000913: the call's event must fit one
    /// log append). Default: 10000.
    #[arg(long, env = "TIDINGS_LIMITS_MAX_UIDS_PER_CALL")]
    pub(super) limits_max_uids_per_call: Option<usize>,
    /// Bytes of frames queued for one WebSocket session before it is closed as too slow.
    /// Default: 33554432.
    #[arg(long, env = "TIDINGS_LIMITS_SESSION_QUEUE_BYTES")]
    pub(super) limits_session_queue_bytes: Option<usize>,
    /// WebSocket sessions one user may hold at once (429 beyond). Default: 32.
    #[arg(long, env = "TIDINGS_LIMITS_SESSIONS_PER_USER")]
    pub(super) limits_sessions_per_user: Option<usize>,
    /// Seconds of silence after which a WebSocket is closed (4002 `idle_timeout`); the server
    /// pings it after a third of that. Default: 90.
    #[arg(long, env = "TIDINGS_LIMITS_WS_IDLE_SECS")]
    pub(super) limits_ws_idle_secs: Option<u64>,
    /// Seconds a client has to send a request's headers (also the longest an idle keep-alive
    /// connection is kept), and again its body. Default: 30.
    #[arg(long, env = "TIDINGS_LIMITS_HTTP_READ_TIMEOUT_SECS")]
    pub(super) limits_http_read_timeout_secs: Option<u64>,
    /// Origins whose web pages may call the HTTP API from a browser (CORS), comma-separated:
    /// each scheme://host[:port] as the browser sends it (e.g. https://app.example.com), or *
    /// for any. An empty value: none. Default: none (no CORS headers).
    #[arg(long, env = "TIDINGS_HTTP_CORS_ORIGINS")]
    pub(super) http_cors_origins: Option<String>,
    /// How long WebSocket acks are coalesced before they become cursor events. Default: 200.
    #[arg(long, env = "TIDINGS_ACKS_FLUSH_MS")]
    pub(super) acks_flush_ms: Option<u64>,
    /// Seconds between snapshots. Default: 300.
    #[arg(long, env = "TIDINGS_PROJECTIONS_SNAPSHOT_INTERVAL_SECS")]
    pub(super) projections_snapshot_interval_secs: Option<u64>,
    #[command(flatten)]
    pub(super) projections: ProjectionsArgs,
    /// Memory for cached conversation lists. Default: 67108864.
    #[arg(long, env = "TIDINGS_CACHE_CONVERSATION_MEMORY_BYTES")]
    pub(super) cache_conversation_memory_bytes: Option<usize>,
    /// Disk for cached conversation lists. Default: 268435456.
    #[arg(long, env = "TIDINGS_CACHE_CONVERSATION_DISK_BYTES")]
    pub(super) cache_conversation_disk_bytes: Option<usize>,
    /// Memory for cached message index runs. Default: 67108864.
    #[arg(long, env = "TIDINGS_CACHE_INDEX_BYTES")]
    pub(super) cache_index_bytes: Option<usize>,
    /// Keep push records of one message in N for traces. Default: 100.
    #[arg(long, env = "TIDINGS_TRACE_SAMPLE_EVERY")]
    pub(super) trace_sample_every: Option<u64>,
    /// Seconds a shutdown may take before remaining tasks are aborted. Default: 10.
    #[arg(long, env = "TIDINGS_SHUTDOWN_GRACE_SECS")]
    pub(super) shutdown_grace_secs: Option<u64>,
    /// Seconds between passes of the background purge of recalled messages' payloads from
    /// sealed segments (0: off; with a tier, the object store's copies too). Default: 3600.
    #[arg(long, env = "TIDINGS_COMPACTION_PURGE_INTERVAL_SECS")]
    pub(super) compaction_purge_interval_secs: Option<u64>,
    /// The bytes of recalled records a purge pass reads before it rewrites them and reads on
    /// (it holds them twice meanwhile, and ends a share at a segment's end; 0 is taken as 1).
    /// Default: 33554432 (32 MiB).
    #[arg(long, env = "TIDINGS_COMPACTION_PURGE_SHARE_BYTES")]
    pub(super) compaction_purge_share_bytes: Option<usize>,
    /// Remove sealed log segments whose every record is older than this many seconds, once
    /// snapshots cover them (with a tier, from the object store too). Default: none (kept for
    /// ever).
    #[arg(long, env = "TIDINGS_COMPACTION_RETENTION_SECS")]
    pub(super) compaction_retention_secs: Option<u64>,
    /// Remove the oldest sealed log segments, once snapshots cover them, while the log holds
    /// more than this many bytes (with a tier, from the object store too). Default: none.
    #[arg(long, env = "TIDINGS_COMPACTION_RETENTION_BYTES")]
    pub(super) compaction_retention_bytes: Option<u64>,
    /// Seconds between passes of the retention. Default: 60.
    #[arg(long, env = "TIDINGS_COMPACTION_RETENTION_INTERVAL_SECS")]
    pub(super) compaction_retention_interval_secs: Option<u64>,
    /// This server's name in the tier manifest. Default: generated into DATA/node.id.
    #[arg(long, env = "TIDINGS_NODE_ID")]
    pub(super) node_id: Option<String>,
    /// Object store for sealed segments and snapshots: s3://bucket/prefix or file:///dir.
    /// Default: none (everything stays local).
    #[arg(long, env = "TIDINGS_TIER_URL")]
    pub(super) tier_url: Option<String>,
    /// S3 endpoint, e.g. http://127.0.0.1:9000 (plain http only when it says so). Default:
    /// AWS.
    #[arg(long, env = "TIDINGS_TIER_ENDPOINT")]
    pub(super) tier_endpoint: Option<String>,
    /// S3 region. Default: AWS_REGION, else us-east-1.
    #[arg(long, env = "TIDINGS_TIER_REGION")]
    pub(super) tier_region: Option<String>,
    /// S3 access key. Default: AWS_ACCESS_KEY_ID.
    #[arg(long, env = "TIDINGS_TIER_ACCESS_KEY_ID")]
    pub(super) tier_access_key_id: Option<String>,
    /// S3 secret key. Default: AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "TIDINGS_TIER_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub(super) tier_secret_access_key: Option<String>,
    /// Sealed bytes kept locally once uploaded (0: none). Default: 1073741824.
    #[arg(long, env = "TIDINGS_TIER_LOCAL_RETENTION_BYTES")]
    pub(super) tier_local_retention_bytes: Option<u64>,
    /// Uploaded segments older than this are deleted locally. Default: none.
    #[arg(long, env = "TIDINGS_TIER_LOCAL_RETENTION_SECS")]
    pub(super) tier_local_retention_secs: Option<u64>,
    /// Block size of cold reads. Default: 1048576.
    #[arg(long, env = "TIDINGS_TIER_BLOCK_BYTES")]
    pub(super) tier_block_bytes: Option<usize>,
    /// Memory of the cold-read cache. Default: 67108864.
    #[arg(long, env = "TIDINGS_TIER_CACHE_MEMORY_BYTES")]
    pub(super) tier_cache_memory_bytes: Option<usize>,
    /// Disk of the cold-read cache. Default: 1073741824.
    #[arg(long, env = "TIDINGS_TIER_CACHE_DISK_BYTES")]
    pub(super) tier_cache_disk_bytes: Option<usize>,
    /// A cold read fails (503 cold_storage_unavailable) after this long. Default: 10000.
    #[arg(long, env = "TIDINGS_TIER_READ_TIMEOUT_MS")]
    pub(super) tier_read_timeout_ms: Option<u64>,
    /// Seconds between upload passes (also after every roll). Default: 5.
    #[arg(long, env = "TIDINGS_TIER_UPLOAD_INTERVAL_SECS")]
    pub(super) tier_upload_interval_secs: Option<u64>,
    /// Seconds a silent owner keeps the prefix. Default: 30.
    #[arg(long, env = "TIDINGS_TIER_LEASE_SECS")]
    pub(super) tier_lease_secs: Option<u64>,
}

/// The settings that shape the projections (`serve` and `rebuild` take the same flags).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ProjectionsArgs {
    /// Sends remembered for idempotent retries. Default: 100000.
    #[arg(long, env = "TIDINGS_PROJECTIONS_IDEMPOTENCY_ENTRIES")]
    pub(super) projections_idempotency_entries: Option<usize>,
    /// How long a send is remembered for idempotent retries. Default: 86400.
    #[arg(long, env = "TIDINGS_PROJECTIONS_IDEMPOTENCY_SECS")]
    pub(super) projections_idempotency_secs: Option<u64>,
    /// Message index entries per sidecar file. Default: 262144.
    #[arg(long, env = "TIDINGS_PROJECTIONS_INDEX_FLUSH_ENTRIES")]
    pub(super) projections_index_flush_entries: Option<u64>,
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
            compaction_purge_share_bytes: self
                .compaction_purge_share_bytes
                .or(file.compaction.purge_share_bytes)
                .unwrap_or(d.compaction_purge_share_bytes),
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
