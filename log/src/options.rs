//! Options for opening a log.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{LogError, Result};
use crate::vfs::{StdFs, Vfs};

/// When an append is acknowledged, relative to `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` before any acknowledgement: nothing acknowledged is lost on power failure.
    #[default]
    Always,
    /// Acknowledge after `write`; `fdatasync` at most this long after. Power failure may lose
    /// up to this window of acknowledged appends.
    Every(Duration),
    /// Acknowledge after `write`; never `fdatasync` except when a segment is sealed or the log
    /// is closed.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = LogError;
    /// Parses `always`, `never`, or `every(N)` / `every_ms(N)` / `every:N` (milliseconds).
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        match s {
            "always" => return Ok(FsyncPolicy::Always),
            "never" => return Ok(FsyncPolicy::Never),
            _ => {}
        }
        let ms = s
            .strip_prefix("every_ms(")
            .or_else(|| s.strip_prefix("every("))
            .and_then(|r| r.strip_suffix(')'))
            .or_else(|| s.strip_prefix("every:"))
            .and_then(|n| n.trim().trim_end_matches("ms").parse::<u64>().ok());
        match ms {
            Some(ms) if ms > 0 => Ok(FsyncPolicy::Every(Duration::from_millis(ms))),
            _ => Err(LogError::InvalidOptions(format!(
                "fsync policy {s:?}: expected always, never or every(MS)"
            ))),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Every(d) => write!(f, "every({})", d.as_millis()),
        }
    }
}

/// What open does when damaged data is followed by valid data in the active segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Refuse to open (`LogError::Corrupt`): truncating would discard batches written after
    /// the damaged one, which may have been acknowledged.
    #[default]
    Strict,
    /// Truncate at the damaged batch anyway, with an error-level log line.
    Truncate,
}

/// How a log is opened. Build with [`LogOptions::default`] and the `with_*` setters.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub(crate) fsync: FsyncPolicy,
    pub(crate) segment_bytes: u64,
    pub(crate) preallocate_bytes: u64,
    pub(crate) segment_max_age: Option<Duration>,
    pub(crate) index_interval_bytes: u32,
    pub(crate) max_batch_bytes: usize,
    pub(crate) max_append_bytes: usize,
    pub(crate) queue_depth: usize,
    pub(crate) max_queued_bytes: usize,
    pub(crate) recovery: RecoveryMode,
    pub(crate) acknowledged_through: Option<u64>,
    pub(crate) read_only: bool,
    pub(crate) tier: Option<crate::tier::Tier>,
    pub(crate) vfs: Arc<dyn Vfs>,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Always,
            segment_bytes: 128 << 20,
            preallocate_bytes: 0,
            segment_max_age: Some(Duration::from_secs(24 * 3600)),
            index_interval_bytes: 4096,
            max_batch_bytes: 1 << 20,
            max_append_bytes: 16 << 20,
            queue_depth: 8192,
            max_queued_bytes: 64 << 20,
            recovery: RecoveryMode::Strict,
            acknowledged_through: None,
            read_only: false,
            tier: None,
            vfs: Arc::new(StdFs),
        }
    }
}

impl LogOptions {
    /// The durability policy. Default: `FsyncPolicy::Always`.
    pub fn with_fsync(mut self, fsync: FsyncPolicy) -> Self {
        self.fsync = fsync;
        self
    }
    /// Roll to a new segment when the active one would grow past this. Default: 128 MiB.
    pub fn with_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }
    /// Start each segment as a file of this many zero bytes, written and synced in the
    /// background before the segment is needed (capped at the segment size; 0 = off, the
    /// default). Overwriting blocks a file already has makes `fdatasync` cheaper than growing
    /// the file (no size change to journal): on this project's disk ~35% per sync. Costs the
    /// zeros' writes and a spare file of this size (`log/DESIGN.md`, "Preallocation").
    pub fn with_preallocate_bytes(mut self, bytes: u64) -> Self {
        self.preallocate_bytes = bytes;
        self
    }
    /// Roll when the active segment's first batch is older than this (checked at the next
    /// append); `None` disables age rolls. Default: 24 hours.
    pub fn with_segment_max_age(mut self, age: Option<Duration>) -> Self {
        self.segment_max_age = age;
        self
    }
    /// Bytes of batches between two sparse index entries. Default: 4096.
    pub fn with_index_interval_bytes(mut self, bytes: u32) -> Self {
        self.index_interval_bytes = bytes;
        self
    }
    /// Upper bound for a group-commit batch; one larger append still gets a batch of its own.
    /// Default: 1 MiB.
    pub fn with_max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes;
        self
    }
    /// Largest single append (records plus framing). Default: 16 MiB.
    pub fn with_max_append_bytes(mut self, bytes: usize) -> Self {
        self.max_append_bytes = bytes;
        self
    }
    /// Appends that may wait in the writer's queue. Default: 8192.
    pub fn with_queue_depth(mut self, depth: usize) -> Self {
        self.queue_depth = depth;
        self
    }
    /// Bytes that may wait in the writer's queue; appenders beyond it wait. Default: 64 MiB.
    pub fn with_max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }
    /// What open does with damage followed by valid data. Default: `RecoveryMode::Strict`.
    pub fn with_recovery(mut self, recovery: RecoveryMode) -> Self {
        self.recovery = recovery;
        self
    }
    /// The offset through which the opener knows records were acknowledged (the server: the
    /// newest snapshot's, whose state applied them). Under `RecoveryMode::Strict`, a writable
    /// open whose active segment's valid data ends at or below it — a damaged batch, zeros,
    /// the file's end (a later segment removed) — in a tail written under `always` refuses
    /// before it writes anything (`CorruptKind::AcknowledgedDamage`): an acknowledged batch
    /// was synced before it was acknowledged, so that is damage — a flipped bit, a bad sector,
    /// a file lost — not a write a crash cut short, and the bytes stay for an operator to
    /// mend. A tail written under `every`/`never` is cut as before (a power cut takes
    /// acknowledged writes there). Default: none.
    pub fn with_acknowledged_through(mut self, offset: Option<u64>) -> Self {
        self.acknowledged_through = offset;
        self
    }
    /// Opens a read-only view: no lock (another process may be writing), nothing on disk is
    /// changed, appends fail with `LogError::ReadOnly`, and `Log::refresh` looks for new data.
    /// Default: false.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }
    /// Tier sealed segments to an object store (see [`crate::tier`]). Default: none.
    pub fn with_tier(mut self, tier: crate::tier::Tier) -> Self {
        self.tier = Some(tier);
        self
    }
    /// The file system. Default: the real one ([`StdFs`]).
    pub fn with_vfs(mut self, vfs: Arc<dyn Vfs>) -> Self {
        self.vfs = vfs;
        self
    }

    /// The durability policy in force.
    pub fn fsync(&self) -> FsyncPolicy {
        self.fsync
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(LogError::InvalidOptions(msg));
        if self.segment_bytes < 1024 || self.segment_bytes > (2 << 30) {
            return bad(format!(
                "segment_bytes {} must be in [1 KiB, 2 GiB]",
                self.segment_bytes
            ));
        }
        if self.preallocate_bytes > u64::from(u32::MAX) {
            return bad(format!(
                "preallocate_bytes {} must be below 4 GiB",
                self.preallocate_bytes
            ));
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be > 0".into());
        }
        if self.max_batch_bytes < 1024 || self.max_batch_bytes > (256 << 20) {
            return bad(format!(
                "max_batch_bytes {} must be in [1 KiB, 256 MiB]",
                self.max_batch_bytes
            ));
        }
        if self.max_append_bytes == 0 || self.max_append_bytes > (256 << 20) {
            return bad(format!(
                "max_append_bytes {} must be in [1, 256 MiB]",
                self.max_append_bytes
            ));
        }
        if self.max_queued_bytes < self.max_append_bytes {
            return bad(format!(
                "max_queued_bytes {} must be at least max_append_bytes {}",
                self.max_queued_bytes, self.max_append_bytes
            ));
        }
        if self.max_queued_bytes > u32::MAX as usize {
            return bad("max_queued_bytes must be below 4 GiB".into());
        }
        if self.queue_depth == 0 {
            return bad("queue_depth must be > 0".into());
        }
        if let FsyncPolicy::Every(d) = self.fsync
            && d.is_zero()
        {
            return bad("fsync every(0) is not a policy; use always".into());
        }
        Ok(())
    }
}
