//! The configuration file's sections, as TOML gives them (every key optional; an unknown one
//! refused).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TierSection {
    pub(super) url: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) access_key_id: Option<String>,
    pub(super) secret_access_key: Option<String>,
    pub(super) local_retention_bytes: Option<u64>,
    pub(super) local_retention_secs: Option<u64>,
    pub(super) block_bytes: Option<usize>,
    pub(super) cache_memory_bytes: Option<usize>,
    pub(super) cache_disk_bytes: Option<usize>,
    pub(super) read_timeout_ms: Option<u64>,
    pub(super) upload_interval_secs: Option<u64>,
    pub(super) lease_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) listen: Option<SocketAddr>,
    pub(super) data: Option<PathBuf>,
    pub(super) admin_key: Option<String>,
    pub(super) person_allowlist: Option<bool>,
    #[serde(default)]
    pub(super) log: LogSection,
    #[serde(default)]
    pub(super) limits: LimitsSection,
    #[serde(default)]
    pub(super) http: HttpSection,
    #[serde(default)]
    pub(super) acks: AcksSection,
    #[serde(default)]
    pub(super) projections: ProjectionsSection,
    #[serde(default)]
    pub(super) cache: CacheSection,
    #[serde(default)]
    pub(super) trace: TraceSection,
    #[serde(default)]
    pub(super) shutdown: ShutdownSection,
    #[serde(default)]
    pub(super) compaction: CompactionSection,
    pub(super) node_id: Option<String>,
    #[serde(default)]
    pub(super) tier: TierSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogSection {
    pub(super) fsync: Option<String>,
    pub(super) segment_bytes: Option<u64>,
    pub(super) preallocate_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsSection {
    pub(super) max_payload_bytes: Option<usize>,
    pub(super) max_frame_bytes: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) sends_per_second: Option<u32>,
    pub(super) send_bytes_per_second: Option<u64>,
    pub(super) new_person_channels_per_hour: Option<u32>,
    pub(super) frames_per_second: Option<u32>,
    pub(super) session_queue: Option<usize>,
    pub(super) max_uids_per_call: Option<usize>,
    pub(super) session_queue_bytes: Option<usize>,
    pub(super) sessions_per_user: Option<usize>,
    pub(super) ws_idle_secs: Option<u64>,
    pub(super) http_read_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpSection {
    pub(super) cors_origins: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AcksSection {
    pub(super) flush_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProjectionsSection {
    pub(super) snapshot_interval_secs: Option<u64>,
    pub(super) idempotency_entries: Option<usize>,
    pub(super) idempotency_secs: Option<u64>,
    pub(super) index_flush_entries: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheSection {
    pub(super) conversation_memory_bytes: Option<usize>,
    pub(super) conversation_disk_bytes: Option<usize>,
    pub(super) index_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TraceSection {
    pub(super) sample_every: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShutdownSection {
    pub(super) grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CompactionSection {
    pub(super) purge_interval_secs: Option<u64>,
    pub(super) purge_share_bytes: Option<usize>,
    pub(super) retention_secs: Option<u64>,
    pub(super) retention_bytes: Option<u64>,
    pub(super) retention_interval_secs: Option<u64>,
}
