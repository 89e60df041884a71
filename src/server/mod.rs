//! The server: start-up, the background tasks it owns, and shutdown.
//!
//! Start-up: take the data directory's lock and bind the port (a port that is taken fails the
//! start before the admin key, the tier or the log; it listens only once the server serves, so
//! connections are refused until then), open the log (recovering its tail), load the newest snapshot and
//! catch up with the log, open the conversation cache, then serve. A start that fails once the
//! log is open closes it (releasing a tier prefix the open claimed). Background tasks — the
//! applier, the ack flusher, the snapshotter, the background purge of recalled messages
//! (`purger.rs`), the log's retention (`retention.rs`) and the HTTP server — live in one `JoinSet` with a `CancellationToken` each;
//! WebSocket sessions are tracked in a `TaskTracker`.
//!
//! Shutdown (SIGTERM/SIGINT, or [`Running::shutdown`]): stop accepting; close WebSockets with
//! "going away" (1001) within half the grace period; let in-flight HTTP requests finish
//! within three quarters of it (then the HTTP task alone is aborted: a slow client must not
//! take the time the steps after it need); flush coalesced acks; let the applier reach the end
//! of the log; join every task; write a snapshot; with a tier, seal and upload the active
//! segment, upload the snapshot and release the prefix; close the log (fsync). Whatever is not
//! done within the grace period is aborted, the steps that wait for the object store too (a
//! store that does not answer costs the rest of the grace period, not more) — acknowledged
//! writes are already durable, so a restart loses none.

pub(crate) mod accept;
mod acks;
mod applier;
mod auth;
mod completions;
mod delivery;
mod error;
pub(crate) mod http;
mod index_repair;
mod keepalive;
mod limits;
mod metrics;
mod purger;
mod read_notices;
pub(crate) mod replay_from_zero;
mod retention;
mod sequencer;
mod state;
pub(crate) mod tiering;
mod waiters;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tidings_log::{Log, LogOptions};
use tidings_projections::conv_cache::{ConversationCache, ConversationCacheConfig};
use tidings_projections::{Origin, ProjectionConfig, Projections, snapshot};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::data::DataDir;
use state::AppState;

/// A running server.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    state: Arc<AppState>,
    tasks: JoinSet<&'static str>,
    /// The HTTP server's task, aborted alone if requests outlast their share of the grace.
    http_task: tokio::task::AbortHandle,
    stop_http: CancellationToken,
    stop_acks: CancellationToken,
    stop_applier: CancellationToken,
    stop_snapshots: CancellationToken,
    stop_purge: CancellationToken,
    stop_retention: CancellationToken,
    /// The data directory's `LOCK`, released when the server has stopped (dropped last).
    _dir_lock: crate::data::DirLock,
}

pub(crate) fn projection_config(c: &Config) -> ProjectionConfig {
    ProjectionConfig {
        idempotency_max_entries: c.projections_idempotency_entries,
        // Saturating: `rebuild` takes these settings unchecked.
        idempotency_max_age_ms: c.projections_idempotency_secs.saturating_mul(1000),
        index_cache_bytes: c.cache_index_bytes,
        index_flush_entries: c.projections_index_flush_entries,
        ..ProjectionConfig::default()
    }
}

/// The admin key: configured (trimmed and checked by the configuration), or read from
/// DATA/admin.key (trimmed; refused when no `Authorization` header can carry it, as a
/// configured one is), or generated there (mode 0600) and printed once.
fn admin_key(config: &Config, data: &DataDir) -> anyhow::Result<String> {
    if let Some(k) = &config.admin_key {
        return Ok(k.clone());
    }
    let path = data.admin_key();
    match std::fs::read_to_string(&path) {
        Ok(k) if !k.trim().is_empty() => {
            let k = k.trim();
            if let Some(why) = crate::config::admin_key_error(k) {
                anyhow::bail!("the admin key in {}: {why}", path.display());
            }
            return Ok(k.to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    use base64::Engine;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    // Written whole under another name and renamed: a crash leaves no key or the key, never
    // an empty file (which the next start would fail to replace). An empty one left by an
    // earlier build is replaced. The data directory's lock keeps two servers out.
    crate::data::write_durably(&path, key.as_bytes(), 0o600)?;
    println!(
        "generated the admin key (stored in {}): {key}",
        path.display()
    );
    Ok(key)
}

/// The disk caches hold one open file per block of (at most) 16 MiB, for the server's life: a
/// `cache.conversation_disk_bytes` (or `tier.cache_disk_bytes`) past what the open-file limit
/// holds failed the start late — "Too many open files", with thousands of block files left in
/// the data directory — and one just below it left the log and the connections few
/// descriptors. Refused before anything is created when the caches would take more than half
/// of the limit.
pub(crate) fn check_cache_files(config: &Config, limit: u64) -> anyhow::Result<()> {
    // Blocks are 16 MiB for caches of 128 MiB and more, and at least 8 for smaller ones.
    let files = |bytes: usize| (bytes / (16 << 20)) as u64 + 8;
    let mut used = files(config.cache_conversation_disk_bytes);
    let mut named = "cache.conversation_disk_bytes";
    if config.tier.url.is_some() {
        used += files(config.tier.cache_disk_bytes);
        named = "cache.conversation_disk_bytes + tier.cache_disk_bytes";
    }
    anyhow::ensure!(
        used <= limit / 2,
        "{named}: the disk caches would hold about {used} open files (one per 16 MiB block), \
         more than half of the open-file limit ({limit}), which the log and the client \
         connections need: shrink them, or raise the limit (ulimit -n, LimitNOFILE)"
    );
    Ok(())
}

/// Starts a server; returns once it accepts connections.
pub(crate) async fn start(config: Config) -> anyhow::Result<Running> {
    let open_files = accept::raise_open_files_limit();
    check_cache_files(&config, open_files)?;
    let data = DataDir::new(&config.data);
    let dir_lock = data.lock()?;
    // The port next, before the admin key, the tier and the log: a port that is taken (another
    // server, a mistyped `listen`) failed the start only after the replay, with the admin key
    // generated and the tier's prefix claimed (a port another socket only binds is not seen
    // here: see the `listen` below). Bound only: it listens once the server's state is
    // ready, so until then connections are refused, as before (a TCP health check or a load
    // balancer would otherwise take a server still replaying for one that serves).
    let socket = bind(config.listen).with_context(|| format!("listening on {}", config.listen))?;
    let addr = socket.local_addr()?;
    let admin_key = admin_key(&config, &data)?;
    let tier = tiering::open(&config, &data).await?;
    let mut log_opts = LogOptions::default()
        .with_fsync(config.log_fsync)
        .with_segment_bytes(config.log_segment_bytes)
        .with_preallocate_bytes(config.log_preallocate_bytes)
        .with_max_append_bytes(config.log_max_append_bytes());
    if let Some(t) = tier {
        log_opts = log_opts.with_tier(t);
    }
    // The log first: it decides whether a start can go on while the store does not answer
    // (from the local manifest copy), and refuses a directory that says nothing of where the
    // log starts ("cannot tell where the log starts") and a store that lacks the offsets
    // before the directory's oldest segment (another store than the one it was tiered to).
    // Until 2026-11-30 the snapshot restore came first, and a fresh directory got the store's
    // raw error from it instead.
    let log = Log::open(data.log(), log_opts)
        .await
        .with_context(|| format!("opening the log in {}", data.log().display()))?;
    // Listening once the state is ready (the tasks that serve follow at once), and as part of
    // the start whose failure closes the log: a socket only bound does not keep another from
    // binding the port and listening first (both with `SO_REUSEADDR`), and this `listen` then
    // fails after the replay.
    let opened = match open_state(&config, &data, &log).await {
        Ok(state) => socket
            .listen(LISTEN_BACKLOG)
            .with_context(|| format!("listening on {addr}"))
            .map(|listener| (state, listener)),
        Err(e) => Err(e),
    };
    let ((proj, conv_cache, repaired), listener) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            close_after_failed_start(&log, &config).await;
            return Err(e);
        }
    };

    let (applied_tx, applied_rx) = watch::channel(proj.state.next_offset());
    let state = Arc::new(AppState::new(
        config,
        log,
        proj,
        applied_rx,
        sequencer::Sequencer::default(),
        acks::Acks::default(),
        conv_cache,
        admin_key,
    ));
    state.metrics.sidecars_repaired.add(repaired);
    let (held, connections) = (
        accept::open_descriptors(),
        state.sockets.available_permits(),
    );
    tracing::info!(
        open_files,
        held,
        connections,
        "open-file limit, descriptors held at start, and the client connections they leave room for"
    );
    if connections < LOW_CONNECTION_BUDGET {
        tracing::warn!(
            open_files,
            held,
            connections,
            "the open-file limit leaves room for few client connections: raise it (ulimit -n, LimitNOFILE) or shrink the disk caches (one open file per 16 MiB)"
        );
    }

    let mut tasks = JoinSet::new();
    let stop_applier = CancellationToken::new();
    let (s, t) = (state.clone(), stop_applier.clone());
    tasks.spawn(async move {
        applier::run(s, applied_tx, t).await;
        "applier"
    });
    // Answers the sends the applier cannot (failed appends, timeouts); stops with the applier.
    let (s, t) = (state.clone(), stop_applier.clone());
    tasks.spawn(async move {
        completions::sweeper(s, t).await;
        "completions"
    });
    let stop_acks = CancellationToken::new();
    let (s, t) = (state.clone(), stop_acks.clone());
    tasks.spawn(async move {
        acks::run(s, t).await;
        "acks"
    });
    let stop_snapshots = CancellationToken::new();
    let (s, t) = (state.clone(), stop_snapshots.clone());
    tasks.spawn(async move {
        snapshots(s, t).await;
        "snapshots"
    });
    // Purges recalled messages' payloads from sealed segments (with a tier, the object store's
    // copies too); stopped and
    // joined with the others, before the log is closed.
    let stop_purge = CancellationToken::new();
    let (s, t) = (state.clone(), stop_purge.clone());
    tasks.spawn(async move {
        purger::run(s, t).await;
        "purge"
    });
    // Removes the log's oldest segments once snapshots cover them, when a retention is set;
    // stopped and joined with the others, before the log is closed.
    let stop_retention = CancellationToken::new();
    let (s, t) = (state.clone(), stop_retention.clone());
    tasks.spawn(async move {
        retention::run(s, t).await;
        "retention"
    });
    // Makes again the message index sidecars reads find missing or damaged.
    let (s, t) = (state.clone(), stop_retention.clone());
    tasks.spawn(async move {
        index_repair::run(s, t).await;
        "index repair"
    });
    let stop_http = CancellationToken::new();
    let app = http::router(state.clone());
    let t = stop_http.clone();
    let user_timeout_ms =
        u32::try_from(state.config.limits_ws_idle_secs.saturating_mul(1000)).unwrap_or(u32::MAX);
    let read_timeout = std::time::Duration::from_secs(state.config.limits_http_read_timeout_secs);
    let sockets = state.sockets.clone();
    let http_task = tasks.spawn(async move {
        // TCP_NODELAY: a sendack or a push is a small write that must leave now, not wait
        // for the previous segment's ACK (Nagle) while the client delays that ACK.
        // TCP_USER_TIMEOUT: a peer gone without a FIN while data is written to it (a phone
        // out of coverage in a busy group) never acknowledges it; the kernel ends the
        // connection after `ws_idle_secs` of that instead of ~15 min of retransmissions, and
        // the session's next write fails. (A quiet one is found by the WebSocket keepalive.)
        accept::serve(listener, app, t, read_timeout, sockets, move |tcp| {
            tune_socket(tcp, user_timeout_ms);
        })
        .await;
        "http"
    });
    state.ready.store(true, Ordering::Release);
    tracing::info!(%addr, "serving");
    Ok(Running {
        addr,
        state,
        tasks,
        http_task,
        stop_http,
        stop_acks,
        stop_applier,
        stop_snapshots,
        stop_purge,
        stop_retention,
        _dir_lock: dir_lock,
    })
}

/// What the server serves from, once the log is open: the projections caught up with the log
/// (from a snapshot, restored from the object store when this directory has none), the
/// conversation cache, and how many message index sidecars were made again on the way. The
/// caller closes the log when this fails.
async fn open_state(
    config: &Config,
    data: &DataDir,
    log: &Log,
) -> anyhow::Result<(Projections, ConversationCache, u64)> {
    // Whether the log's last run wrote under every/never: a power cut may then have taken
    // applied events whose offsets are now other events', and the lists on disk were
    // fingerprinted by them. This run's policy alone does not tell (it was all that was
    // checked until 2026-11-30). It is written in the cache's directory now, before anything
    // else can fail: the log's open has replaced its record of that run with this one's, and
    // a start that failed before its cache opened left the next start nothing to go by. (A run
    // under every/never marks the directory itself as its cache opens; one of an earlier build
    // did not.)
    let after_unsynced = log.opened_after_unsynced_writes();
    if after_unsynced {
        distrust_conversation_cache(data)?;
    }
    match log.tier() {
        Some(t) => {
            let restored = tiering::restore_snapshot(t, &data.projections())
                .await
                .with_context(|| {
                    format!(
                        "restoring a snapshot from the object store {} (this data directory has none)",
                        t.display()
                    )
                })?;
            if restored {
                tracing::info!(store = t.display(), "restoring from the object store");
            }
        }
        None => tiering::warn_if_tiered(data, log),
    }

    let started = Instant::now();
    let (mut proj, continues) = load_projections(data, projection_config(config), log).await?;
    let origin = proj.origin().clone();
    let replayed = proj
        .catch_up(log, |_, _| {})
        .await
        .map_err(|e| catch_up_refused(e, &origin, log))?;
    // Before it serves: a sidecar deleted or cut short failed every read of its messages.
    let repaired = index_repair::at_start(&proj, log).await;
    tracing::info!(
        origin = ?proj.origin(),
        replayed,
        applied = proj.state.next_offset(),
        took_ms = started.elapsed().as_millis() as u64,
        "projections ready"
    );
    let dir = data.conversation_cache();
    // Under `always`, a doubt about the lists on disk marks the cache, and the open that may
    // recover then finds the mark, empties the cache and clears the mark: the lists this run
    // writes are reused by the next start. (An open without recovery leaves the mark, and the
    // next start under `always` emptied the cache a second time.) Under every/never nothing
    // is reused, and the mark stays for the next start.
    let always = config.log_fsync == tidings_log::FsyncPolicy::Always;
    if always && (after_unsynced || !continues) {
        distrust_conversation_cache(data)?;
    }
    if after_unsynced && always {
        tracing::info!(
            "the conversation cache starts empty: the log's last run wrote under fsync every/never"
        );
    }
    let conv_cache = ConversationCache::open(
        &dir,
        &ConversationCacheConfig {
            memory_bytes: config.cache_conversation_memory_bytes,
            disk_bytes: config.cache_conversation_disk_bytes,
            // Entries on disk are reused only under `fsync = always`, this run's and the last
            // one's (under every/never a power cut can take applied events, whose offsets are
            // then reused), and only when the state continues this directory's history (see
            // `load_projections`); and never when the directory is marked (by an earlier start
            // or a rebuild that knew one of these: `ConversationCache::distrust`).
            recover: always,
        },
    )
    .await
    .with_context(|| format!("opening the conversation cache in {}", dir.display()))?;
    Ok((proj, conv_cache, repaired))
}

/// The start's catch-up error, in words for the operator when it needs offsets before the
/// log's first one: the log starts past offset 0 (its oldest segments deleted, by the
/// retention or by hand, or only in an object store this server does not read) and no
/// snapshot covers what it no longer holds. A start goes on from a snapshot of the offset
/// before the log's start or later: the messages before it have expired.
fn catch_up_refused(
    e: tidings_projections::ProjectionError,
    origin: &Origin,
    log: &Log,
) -> anyhow::Error {
    let start = log.start_offset();
    match e {
        tidings_projections::ProjectionError::HistoryMissing { needed, .. } if needed < start => {
            let from = match origin {
                Origin::Empty => "there is no usable snapshot".to_owned(),
                Origin::Snapshot(path) => format!(
                    "the newest usable one, {}, ends at offset {}",
                    path.display(),
                    needed.saturating_sub(1)
                ),
            };
            anyhow::anyhow!(
                "the log starts at offset {start} (the segments before it were deleted, by the retention or by hand, or are only in an object store this server does not read), and no snapshot covers the offsets before it: {from}, so the state needs the log from offset {needed}. Restore the deleted segments, or a snapshot of offset {} or later, or start with the object store the log was tiered to",
                start.saturating_sub(1)
            )
        }
        other => other.into(),
    }
}

/// Marks the conversation cache's lists on disk as not to be reused
/// ([`ConversationCache::distrust`]), before whatever puts the log's history in doubt is done
/// (snapshots set aside, a rebuild): a process that died between that and the cache's open
/// otherwise left the next start with nothing to tell it, and that start reused the lists
/// (until 2026-11-30).
pub(crate) fn distrust_conversation_cache(data: &DataDir) -> anyhow::Result<()> {
    let dir = data.conversation_cache();
    ConversationCache::distrust(&dir).with_context(|| {
        format!(
            "marking the conversation cache in {} as not to be reused",
            dir.display()
        )
    })
}

/// Closes the log of a start that failed after it opened, within the shutdown's grace period:
/// a claim of the tier's prefix that the open took is released, so the next start claims at
/// once instead of waiting out this process's lease (until 2026-11-30 only a failed snapshot
/// restore closed it; a failed replay or conversation cache left the claim, and the next
/// start's last segment stayed local at its stop). A store that does not answer costs the
/// grace period, not more.
async fn close_after_failed_start(log: &Log, config: &Config) {
    let by = tokio::time::Instant::now() + config.shutdown_grace();
    if let Err(e) = log.close_by(by).await {
        tracing::warn!(error = %e, "could not close the log");
    }
}

/// Connections the kernel completes before the server accepts them (tokio's default).
const LISTEN_BACKLOG: u32 = 1024;

/// A socket bound to `addr`, not yet listening. With `SO_REUSEADDR`, as a listener is bound
/// (a restart is not refused for the last run's connections in TIME_WAIT); Linux still refuses
/// a port another socket listens on.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// A connection budget below this is warned about at start: a few keep-alive clients fill it.
const LOW_CONNECTION_BUDGET: usize = 64;

/// Options of an accepted connection (see where it is called).
fn tune_socket(tcp: &tokio::net::TcpStream, user_timeout_ms: u32) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::net::sockopt::set_tcp_user_timeout(tcp, user_timeout_ms) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
}

/// Writes a snapshot every interval (when anything changed).
async fn snapshots(state: Arc<AppState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(state.config.snapshot_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    let mut last = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let applied = state.proj().state.applied;
        if applied == last {
            continue;
        }
        let written = match write_snapshot(&state, AnchorFrom::AnySegment).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "snapshot failed");
                continue;
            }
        };
        // The upload gives way to a shutdown (a store that does not answer must not hold the
        // steps after it); the write, local and short, does not: one cut short would go on in
        // its blocking thread beside the shutdown snapshot's, through the same temporary file.
        if let Some(w) = &written {
            let uploaded = tokio::select! {
                () = stop.cancelled() => return,
                r = upload_written(&state, w) => r,
            };
            if let Err(e) = uploaded {
                tracing::warn!(error = %e, "snapshot upload failed");
                continue;
            }
        }
        last = applied;
    }
}

/// Held while a snapshot is written (see [`write_snapshot`]).
static SNAPSHOT_WRITE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A snapshot written to disk, and what its upload needs.
struct WrittenSnapshot {
    path: std::path::PathBuf,
    /// The projections directory (the sidecars are in its `index/`).
    dir: std::path::PathBuf,
    sidecars: Vec<tidings_projections::msgindex::Sidecar>,
    /// The state's latest `log_trimmed` (for the store's sidecars it let go).
    trimmed: Option<tidings_projections::Trimmed>,
}

/// Which segments a snapshot's anchor (the record it ends at) may be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnchorFrom {
    /// Any, one only in the object store too (a periodic snapshot: the read is bounded by
    /// `tier.read_timeout_ms`). When the record cannot be read the snapshot is written without
    /// an anchor, and loads unchecked as snapshots from before anchors do.
    AnySegment,
    /// Local segments only (the shutdown's: it must not wait for the store). A snapshot whose
    /// record is not in one is not written: the next start loads the previous snapshot and
    /// replays the log after it, which an unanchored one would have spared it at the cost of
    /// the check that the snapshot belongs to this log (and, at the same offset, of the
    /// anchored snapshot it would overwrite).
    LocalSegment,
}

/// Writes a snapshot of what was applied; `None` when nothing was, or when its anchor is not
/// to be had from where `from` allows. Not after the applier failed: its state may hold part
/// of the record it stopped at.
async fn write_snapshot(
    state: &Arc<AppState>,
    from: AnchorFrom,
) -> anyhow::Result<Option<WrittenSnapshot>> {
    let s = state.clone();
    // Encode under the read lock; write and fsync outside it, so the applier (which needs the
    // write lock) is not held up by the disk.
    let (prepared, writing, (sidecars, trimmed), dir) = tokio::task::spawn_blocking(move || {
        let p = s.proj();
        // Read under the lock the applier sets it under.
        if s.applier_failed.load(Ordering::Acquire) {
            anyhow::bail!(
                "the applier stopped on a record it could not apply: no snapshot of its state (the next start replays the log from the last snapshot)"
            );
        }
        let sidecars = (p.state.index.sidecars.clone(), p.state.trimmed);
        let prepared = p.prepare_snapshot();
        // Registered under the lock its state was read under: the background purge must not
        // rewrite the record it will be anchored to (`purger.rs`).
        let writing = prepared
            .as_ref()
            .map(|w| s.snapshot_writes.begin(w.applied()));
        Ok((prepared, writing, sidecars, p.dir().to_path_buf()))
    })
    .await??;
    let (Some(mut prepared), Some(writing)) = (prepared, writing) else {
        return Ok(None);
    };
    let applied = prepared.applied();
    if from == AnchorFrom::LocalSegment && !state.log.is_local(applied) {
        tracing::warn!(
            applied,
            "the log record this snapshot would end at is not in a local segment (its segment is only in the object store, or gone); not writing it: the next start loads the previous snapshot and replays the log after it"
        );
        return Ok(None);
    }
    // The anchor: which record this state ends at (checked when the snapshot is loaded). The
    // shutdown's is a local read, given a second at most: the copy can go between the check
    // above and the read (an upload pass), and the store must not hold the shutdown.
    let anchor = match from {
        AnchorFrom::AnySegment => snapshot::anchor_at(&state.log, applied).await,
        AnchorFrom::LocalSegment => tokio::time::timeout(
            Duration::from_secs(1),
            snapshot::anchor_at(&state.log, applied),
        )
        .await
        .unwrap_or_else(|_| {
            Err(tidings_projections::ProjectionError::Cache(
                "the record was not read within a second".into(),
            ))
        }),
    };
    match anchor {
        Ok(Some(anchor)) => prepared.set_anchor(anchor),
        Ok(None) => {}
        // The shutdown's: not written unanchored (the record was local a moment ago; the
        // upload pass may have removed its copy since, and the read went to the store).
        Err(e) if from == AnchorFrom::LocalSegment => {
            tracing::warn!(error = %e, "could not read the record the shutdown snapshot ends at; not writing it: the next start loads the previous snapshot and replays the log after it");
            return Ok(None);
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the record a snapshot ends at; writing it without an anchor")
        }
    }
    // A log that cannot be replayed from offset 0 (the retention trims it, or trimmed it):
    // under `log.fsync = every | never` the record this snapshot ends at may not be durable
    // yet, and a power cut would set it aside as ahead of the log — the newest 3 kept all so,
    // no snapshot would be left that a start can use (`retention.rs`). Synced first, it is.
    if state.config.retention_interval().is_some() || state.log.start_offset() > 0 {
        state.log.sync().await?;
    }
    // One write at a time, held in the blocking thread itself: a periodic snapshot's write
    // that a shutdown cut short (its task aborted) goes on there, and the shutdown's write of
    // the same offset would share its temporary file.
    let path = tokio::task::spawn_blocking(move || {
        let _one = SNAPSHOT_WRITE.lock().unwrap_or_else(|p| p.into_inner());
        // Until the file is in place (or the write failed), here: a write cut short by an
        // abort goes on in this thread.
        let _writing = writing;
        prepared.write()
    })
    .await??;
    state.metrics.snapshots.inc();
    tracing::debug!(path = %path.display(), "wrote a snapshot");
    let s = state.clone();
    tokio::task::spawn_blocking(move || remove_dropped_sidecars(&s)).await?;
    Ok(Some(WrittenSnapshot {
        path,
        dir,
        sidecars,
        trimmed,
    }))
}

/// Deletes the message index sidecars the retention let go once no snapshot names them
/// (`Projections::remove_dropped_sidecars`), a few per hold of the projections' read lock;
/// after each snapshot written (the last one naming them leaves the directory at a later
/// write). A failure is logged: the next snapshot's call tries again.
fn remove_dropped_sidecars(state: &AppState) {
    const PER_LOCK: usize = 64;
    let mut removed = 0;
    loop {
        let (done, trimmed) = {
            let p = state.proj();
            let trimmed = p.state.trimmed.map_or(0, |t| t.offset);
            // Every file of this event's gone already: nothing to list (it listed the index
            // directory under the lock after every snapshot).
            if trimmed == state.sidecars_cleaned_for.load(Ordering::Relaxed) {
                break;
            }
            let writing = state.snapshot_writes.oldest();
            (p.remove_dropped_sidecars(writing, PER_LOCK), trimmed)
        };
        match done {
            // Only a call that found nothing left marks the event done: one that removed fewer
            // than it listed (another call removed some meanwhile) may have left more.
            Ok(Some(0)) => {
                state.sidecars_cleaned_for.store(trimmed, Ordering::Relaxed);
                break;
            }
            Ok(Some(n)) => removed += n,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "could not remove the message index sidecars the retention let go");
                break;
            }
        }
    }
    if removed > 0 {
        state.metrics.sidecars_removed.add(removed as u64);
        tracing::info!(
            removed,
            "removed message index sidecars the retention let go"
        );
    }
}

/// With a tier, uploads a written snapshot and the sidecars it needs; whether it did (not
/// without a tier, nor when the prefix is not this server's).
async fn upload_written(state: &AppState, w: &WrittenSnapshot) -> anyhow::Result<bool> {
    let Some(tier) = state.log.tier() else {
        return Ok(false);
    };
    let snapshot = tiering::SnapshotUpload {
        projections: &w.dir,
        snap: &w.path,
        sidecars: &w.sidecars,
        trimmed: w.trimmed,
    };
    let uploaded = tiering::upload_snapshot(tier, &snapshot, &state.uploaded_sidecars).await;
    if let Err(e) = &uploaded
        && let Some(d) = e.downcast_ref::<tiering::DamagedSidecar>()
    {
        state.proj().index_files().mark_failed(d.first_offset);
    }
    let Some(removed) = uploaded? else {
        return Ok(false);
    };
    if removed > 0 {
        state.metrics.tier_sidecars_removed.add(removed as u64);
        tracing::info!(
            removed,
            "removed message index sidecars the retention let go from the object store"
        );
    }
    Ok(true)
}

impl Running {
    /// Shuts down as described in the module docs.
    pub(crate) async fn shutdown(mut self) -> anyhow::Result<()> {
        let grace = self.state.config.shutdown_grace();
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(grace_secs = grace.as_secs(), "shutting down");
        let state = self.state.clone();
        // Stop accepting, close sessions.
        state.ready.store(false, Ordering::Release);
        self.stop_http.cancel();
        state.sessions_stop.cancel();
        state.ws_tasks.close();
        // Sessions get at most half the grace period (each write is bounded, so this is
        // rarely needed); the log, the projections and the snapshot need the rest.
        let sessions_deadline = tokio::time::Instant::now() + grace / 2;
        if tokio::time::timeout_at(sessions_deadline, state.ws_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("WebSocket sessions still closing at half the grace period");
        }
        tracing::debug!(
            took_ms = deadline_elapsed(deadline, grace),
            "sessions closed"
        );
        // In-flight HTTP requests finish inside the HTTP task, within three quarters of the
        // grace period; then that task alone is aborted. (The set is only ever borrowed by a
        // wait that can time out: dropping a `JoinSet` aborts every task in it, the ack
        // flusher and the applier too.)
        let mut pending = std::mem::take(&mut self.tasks);
        let http_deadline = deadline - grace / 4;
        let http_done = async {
            while let Some(done) = pending.join_next().await {
                if let Ok("http") = done {
                    return;
                }
            }
        };
        if tokio::time::timeout_at(http_deadline, http_done)
            .await
            .is_err()
        {
            tracing::warn!(
                "requests still running at three quarters of the grace period; no longer waiting for them"
            );
            self.http_task.abort();
        }
        tracing::debug!(took_ms = deadline_elapsed(deadline, grace), "http done");
        // Sends already queued finish (durable, applied, answered) before the applier stops:
        // the completions empty as the applier answers them (or the sweeper fails them), and
        // retries waiting on one of them finish in `send_tasks`.
        let sends_done = async {
            while state.completions.len() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            state.send_tasks.close();
            state.send_tasks.wait().await;
        };
        if tokio::time::timeout_at(deadline, sends_done).await.is_err() {
            tracing::warn!(
                unanswered = state.completions.len(),
                "sends still finishing at the end of the grace period"
            );
        }
        // Coalesced acks, then everything applied.
        self.stop_acks.cancel();
        self.stop_snapshots.cancel();
        self.stop_purge.cancel();
        self.stop_retention.cancel();
        let log_end = state.log.next_offset();
        let mut applied = state.applied.clone();
        let _ = tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= log_end)).await;
        // Wait for the ack flusher's last flush to be applied too.
        let joined = async {
            while let Some(done) = pending.join_next().await {
                if let Ok("acks") = done {
                    break;
                }
            }
        };
        if tokio::time::timeout_at(deadline, joined).await.is_err() {
            tracing::warn!("the ack flusher still running at the end of the grace period");
        }
        let log_end = state.log.next_offset();
        let _ = tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= log_end)).await;
        self.stop_applier.cancel();
        let remaining = tokio::time::timeout_at(deadline, async {
            while pending.join_next().await.is_some() {}
        })
        .await;
        if remaining.is_err() {
            tracing::warn!(
                "background tasks still running at the end of the grace period; aborting them"
            );
            pending.shutdown().await;
        }
        tracing::debug!(took_ms = deadline_elapsed(deadline, grace), "tasks joined");
        // Snapshot what was applied, before the active segment is sealed and uploaded: the
        // record the snapshot ends at is then still in a local segment (once its segment is
        // uploaded, the retention may delete the local copy, and the anchor would have to come
        // from the store). Written whatever the time (local disk); uploaded below.
        let written = match write_snapshot(&state, AnchorFrom::LocalSegment).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "shutdown snapshot failed");
                None
            }
        };
        if written.is_some() {
            tracing::info!("wrote the shutdown snapshot");
        }
        // With a tier: seal and upload the active segment, so that the object store holds the
        // whole log (a restore elsewhere then loses nothing); then the snapshot. Every step
        // that waits for the store ends at the deadline, the release of the prefix (in the
        // log's close) too: a store that does not answer must not hold the process past its
        // grace period. What is not uploaded stays local and goes up from the next start.
        if state.log.tier().is_some() {
            // The uploads leave the release of the prefix (in the close) a slice of the grace
            // period: without it a long last upload took it all, and the next owner (this
            // node restarting too) waited out the lease.
            let reserve = (grace / 10).min(Duration::from_secs(1));
            let uploads_by = deadline.checked_sub(reserve).unwrap_or(deadline);
            let upload = async {
                state.log.roll().await?;
                state.log.upload_now().await
            };
            match tokio::time::timeout_at(uploads_by, upload).await {
                Ok(Ok(_)) => tracing::info!("uploaded the last segment"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not upload the last segment; it stays local until the next start")
                }
                Err(_) => {
                    tracing::warn!(
                        "no time left in the grace period to upload the last segment; it stays local until the next start"
                    )
                }
            }
            if let Some(w) = &written {
                match tokio::time::timeout_at(uploads_by, upload_written(&state, w)).await {
                    Ok(Ok(true)) => tracing::info!("uploaded the shutdown snapshot"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "could not upload the shutdown snapshot; it stays local")
                    }
                    Err(_) => tracing::warn!(
                        "no time left in the grace period to upload the shutdown snapshot; it stays local"
                    ),
                }
            }
        }
        state.log.close_by(deadline).await?;
        state.conv_cache.close().await?;
        tracing::info!("stopped");
        Ok(())
    }
}

fn deadline_elapsed(deadline: tokio::time::Instant, grace: std::time::Duration) -> u128 {
    (grace.saturating_sub(deadline.saturating_duration_since(tokio::time::Instant::now())))
        .as_millis()
}

/// The stop signals: SIGTERM, SIGINT (Ctrl-C), and SIGHUP (a closed terminal; its default
/// action killed the server, with no shutdown snapshot and no 1001 to its WebSockets).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: Option<tokio::signal::unix::Signal>,
}

/// Whether SIGHUP is ignored (`nohup`), as `/proc/self/status` says (its `SigIgn` mask; on a
/// system without it, not ignored).
fn hangup_ignored() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & 1 != 0)
}

impl StopSignals {
    fn new() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            // Not under `nohup` (which set it ignored, for the server to outlive its
            // terminal): a handler would take the place of that.
            hup: if hangup_ignored() {
                None
            } else {
                Some(signal(SignalKind::hangup())?)
            },
        })
    }

    /// The next one, by name.
    async fn next(&mut self) -> &'static str {
        let hup = async {
            match &mut self.hup {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = hup => "SIGHUP",
        }
    }

    /// The next SIGTERM or SIGINT: a hangup may come twice as a terminal closes (from the
    /// shell, then from the kernel), which is no operator asking again.
    async fn next_but_hangup(&mut self) -> &'static str {
        loop {
            match self.next().await {
                "SIGHUP" => continue,
                name => return name,
            }
        }
    }
}

/// `tidings serve`: runs until SIGTERM, SIGINT or SIGHUP (unless `nohup` ignores it), then
/// shuts down; a SIGTERM or SIGINT during the shutdown exits at once.
pub(crate) async fn serve(config: Config) -> anyhow::Result<()> {
    // The handlers go in before the server says it listens: a SIGTERM sent as soon as the
    // line appears (a supervisor, a test) must shut it down cleanly, not kill it by the
    // signal's default action. A signal during start-up (a long replay, a slow object store)
    // stops it there: the log is crash-safe, and nothing was served yet.
    let mut signals = StopSignals::new()?;
    let running = tokio::select! {
        r = start(config) => r?,
        name = signals.next() => {
            tracing::warn!("{name} during start-up; stopping before serving");
            return Ok(());
        }
    };
    println!("tidings listening on http://{}", running.addr);
    let name = signals.next().await;
    tracing::info!("{name} received");
    let shutdown = running.shutdown();
    tokio::pin!(shutdown);
    tokio::select! {
        r = &mut shutdown => r,
        // The operator's second Ctrl-C: what a kill would do (every acknowledged write is in
        // the log; the next start replays what no snapshot covers).
        name = signals.next_but_hangup() => {
            tracing::warn!("{name} during the shutdown: exiting now, without the rest of it");
            std::process::exit(1);
        }
    }
}

/// The newest snapshot that the log still covers (or empty projections). A snapshot past the
/// log's end describes events the log lost — a power cut under `fsync = every/never`, or a
/// tail cut in recovery — and applying from there would skip every event appended again at
/// those offsets; it is passed over with a warning, and the state is rebuilt from an older
/// snapshot or from offset 0 (same log, same state). A snapshot whose anchor differs from the
/// log's record at its offset (`projections/src/snapshot.rs`) describes another history of the
/// log — a data directory whose log was replaced or restored from another node's, a snapshot
/// from a store another writer also wrote — and is set aside the same way. A snapshot shaped by
/// other settings of the idempotency window (`ProjectionConfig::shapes`) is not loaded: the
/// projections are rebuilt from the log under the configured ones, every snapshot set aside
/// first — once the log can be read from offset 0 now ([`replay_from_zero::check`]); else the
/// start is refused and every snapshot left in place.
///
/// Also says whether the state is known to continue the history this directory last ran with:
/// loaded from a snapshot whose anchor matches the log, with nothing set aside at this start.
/// Only then is the conversation cache on disk reused (its entries are keyed by log offsets,
/// which another history reuses for other events). Whatever is set aside marks the cache
/// first ([`distrust_conversation_cache`]): the next start, if this one fails before the cache
/// opens, finds nothing left to set aside and would otherwise reuse it.
async fn load_projections(
    data: &DataDir,
    config: tidings_projections::ProjectionConfig,
    log: &Log,
) -> anyhow::Result<(Projections, bool)> {
    let projections = data.projections();
    let dir = projections.as_path();
    let end = log.next_offset();
    let mut continues = set_aside_snapshots_ahead_of(data, end)? == 0;
    loop {
        let Some(last) = end.checked_sub(1) else {
            return Ok((Projections::empty(dir, config)?, false));
        };
        let p = Projections::load_at_most(dir, config.clone(), Some(last))?;
        if let Origin::Snapshot(path) = p.origin()
            && !config.shapes(&p.state)
        {
            tracing::info!(
                snapshot = %path.display(),
                snapshot_idempotency_entries = p.state.idempotency.max_entries,
                snapshot_idempotency_ms = p.state.idempotency.max_age_ms,
                idempotency_entries = config.idempotency_max_entries,
                idempotency_ms = config.idempotency_max_age_ms,
                snapshot_index_flush_entries = p.state.index.flush_entries,
                index_flush_entries = config.index_flush_entries,
                "the projections' settings changed since the snapshot; rebuilding the projections from the log"
            );
            // The rebuild writes the message index's sidecars anew, under names the snapshots
            // already use (a sidecar is named for its first offset) but cut where the new
            // settings cut them: no snapshot of the old settings may load after it (one loaded
            // once the settings were changed back failed every read of those messages). So
            // they go aside first, and only when the replay from offset 0 can run: one that
            // failed would leave none, and the next start, under either settings, the same.
            if let Err(e) = replay_from_zero::check(log).await {
                anyhow::bail!(
                    "the projections' settings changed since snapshot {} was made ({}), so the projections must be rebuilt by replaying the log from offset 0, which cannot be read now: {e:#}. Every snapshot was left in place: start with the settings they were made under, or with the object store this directory was tiered to (tier.url) set and answering (a log whose oldest segments the retention removed, compaction.retention_*, cannot be replayed from offset 0 again: keep the settings)",
                    path.display(),
                    changed_settings(&p.state, &config)
                );
            }
            drop(p);
            set_aside_all_snapshots(data, ".snap.other-settings")?;
            return Ok((Projections::empty(dir, config)?, false));
        }
        let (Origin::Snapshot(path), Some(anchor)) = (p.origin(), p.snapshot_anchor()) else {
            return Ok((p, false));
        };
        let applied = p.state.applied.unwrap_or(0);
        match p.anchor_matches(log).await {
            Ok(Some(false)) => {}
            Ok(Some(true)) => return Ok((p, continues)),
            Ok(None) => return Ok((p, false)),
            Err(e) => {
                // Not a verdict: the state is used, as before anchors existed.
                tracing::warn!(error = %e, snapshot = %path.display(), anchor, "could not read the record a snapshot ends at to check it belongs to this log; using it");
                return Ok((p, false));
            }
        }
        continues = false;
        let path = path.clone();
        let aside = aside_path(&path, ".snap.other-history");
        tracing::warn!(
            snapshot = %path.display(),
            snapshot_applied = applied,
            moved_to = %aside.display(),
            "a snapshot was made from another history of the log (the record at its offset differs); loading an older one or replaying the log"
        );
        distrust_conversation_cache(data)?;
        std::fs::rename(&path, &aside)
            .with_context(|| format!("setting aside {}", path.display()))?;
        prune_set_aside(&dir.join("snapshots"));
    }
}

/// The state-shaping settings in which a snapshot's `state` differs from `config`, as
/// `projections.name old → new`, for messages.
fn changed_settings(state: &tidings_projections::State, config: &ProjectionConfig) -> String {
    let fresh = config.empty_state();
    let mut changed = Vec::new();
    let (was, now) = (&state.idempotency, &fresh.idempotency);
    if was.max_entries != now.max_entries {
        changed.push(format!(
            "projections.idempotency_entries {} → {}",
            was.max_entries, now.max_entries
        ));
    }
    if was.max_age_ms != now.max_age_ms {
        changed.push(format!(
            "projections.idempotency_secs {} → {}",
            was.max_age_ms / 1000,
            now.max_age_ms / 1000
        ));
    }
    if state.index.flush_entries != fresh.index.flush_entries {
        changed.push(format!(
            "projections.index_flush_entries {} → {}",
            state.index.flush_entries, fresh.index.flush_entries
        ));
    }
    changed.join(", ")
}

/// Sets aside (renames to `*.snap.ahead-of-log`) every snapshot covering offset `end` or
/// later: it describes events the log no longer holds (lost in a power cut under `fsync =
/// every/never`, or cut in recovery). Used by the server at start and by `rebuild`, which
/// would otherwise write its snapshot among them and prune it as the oldest. When any goes
/// aside, the conversation cache is marked first (its lists may name the lost offsets).
/// Returns how many it set aside.
pub(crate) fn set_aside_snapshots_ahead_of(data: &DataDir, end: u64) -> anyhow::Result<usize> {
    let snapshots = data.projections().join("snapshots");
    remove_snapshot_temp_files(&snapshots);
    let ahead: Vec<_> = tidings_projections::snapshot::list(&snapshots)?
        .into_iter()
        .filter(|snap| snap.applied >= end)
        .collect();
    if !ahead.is_empty() {
        distrust_conversation_cache(data)?;
    }
    for snap in &ahead {
        // Set aside, not deleted (for a post-mortem), and never loaded again: once the log
        // grows past its offset it would look current while describing other events.
        let aside = aside_path(&snap.path, ".snap.ahead-of-log");
        tracing::warn!(
            snapshot = %snap.path.display(),
            snapshot_applied = snap.applied,
            log_end = end,
            moved_to = %aside.display(),
            "a snapshot covers events the log no longer holds (lost in a power cut under fsync every/never, or cut in recovery); loading an older one or replaying the log"
        );
        std::fs::rename(&snap.path, &aside)
            .with_context(|| format!("setting aside {}", snap.path.display()))?;
    }
    prune_set_aside(&snapshots);
    Ok(ahead.len())
}

/// Sets aside (renames to `*{suffix}`) every snapshot in the data directory's
/// `projections/snapshots/`; when there is any, the conversation cache is marked first.
pub(crate) fn set_aside_all_snapshots(data: &DataDir, suffix: &str) -> anyhow::Result<()> {
    let snapshots = data.projections().join("snapshots");
    let all = tidings_projections::snapshot::list(&snapshots)?;
    if !all.is_empty() {
        distrust_conversation_cache(data)?;
    }
    for snap in all {
        // `….snap` → `….snap.other-settings`.
        let aside = aside_path(&snap.path, suffix);
        tracing::warn!(snapshot = %snap.path.display(), moved_to = %aside.display(), "setting aside a snapshot of other settings");
        std::fs::rename(&snap.path, &aside)
            .with_context(|| format!("setting aside {}", snap.path.display()))?;
    }
    // Durable before the replay rewrites the sidecars: a rename lost in a power cut would
    // bring such a snapshot back over sidecars cut elsewhere.
    if snapshots.is_dir() {
        std::fs::File::open(&snapshots)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", snapshots.display()))?;
    }
    prune_set_aside(&snapshots);
    Ok(())
}

/// Where snapshot `path` (`{applied:020}.snap`) goes aside with `suffix` (`.snap.{why}`):
/// `{applied:020}.snap.{why}`, or `{applied:020}.{n}.snap.{why}` with the first `n` from 1 that
/// is free when that is taken — a second snapshot of the same offset set aside for the same
/// reason (two `rebuild`s under other settings) replaced the first, which was lost.
fn aside_path(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".snap"))
        .unwrap_or("snapshot");
    let at = |name: String| path.with_file_name(name);
    let first = at(format!("{stem}{suffix}"));
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|n| at(format!("{stem}.{n}{suffix}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Removes what snapshot writes cut short left (`.{offset:020}.snap.tmp`: a crash, or a full
/// disk, mid-write): never loaded, they only took space. Called with the data directory
/// locked, when no snapshot is being written.
fn remove_snapshot_temp_files(snapshots: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(snapshots) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_prefix('.'))
            .and_then(|n| n.strip_suffix(".snap.tmp"))
        else {
            continue;
        };
        if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => {
                tracing::info!(path = %e.path().display(), "removed the part of a snapshot write cut short");
            }
            Err(err) => {
                tracing::warn!(error = %err, path = %e.path().display(), "could not remove the part of a snapshot write cut short");
            }
        }
    }
}

/// Snapshots set aside (each a full state) are kept for a post-mortem, the newest
/// [`SET_ASIDE_KEPT`] of each kind; older ones are deleted (best effort).
fn prune_set_aside(snapshots: &std::path::Path) {
    for suffix in [
        ".snap.ahead-of-log",
        ".snap.other-history",
        ".snap.other-settings",
    ] {
        let Ok(entries) = std::fs::read_dir(snapshots) else {
            return;
        };
        let mut found: Vec<((i64, i64), String, std::path::PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                use std::os::unix::fs::MetadataExt;
                let name = e.file_name().to_str()?.to_owned();
                // The rename that set it aside changed its inode: `ctime` is when.
                let md = e.metadata().ok()?;
                let when = (md.ctime(), md.ctime_nsec());
                name.ends_with(suffix).then(|| (when, name, e.path()))
            })
            .collect();
        // Set aside most recently last (then by name).
        found.sort();
        let excess = found.len().saturating_sub(SET_ASIDE_KEPT);
        for (_, _, path) in found.into_iter().take(excess) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, path = %path.display(), "could not remove an old set-aside snapshot");
            }
        }
    }
}

/// Set-aside snapshots kept of each kind (see [`prune_set_aside`]).
const SET_ASIDE_KEPT: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// The key in DATA/admin.key is trimmed, and one that no `Authorization` header can carry
    /// is refused at start, naming the file (it was taken, and every admin call was 401).
    #[test]
    fn an_admin_key_file_no_header_carries_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        std::fs::write(data.admin_key(), " the-key\n").unwrap();
        assert_eq!(admin_key(&Config::default(), &data).unwrap(), "the-key");
        std::fs::write(data.admin_key(), "the-k\u{e9}y\n").unwrap();
        let err = format!("{:#}", admin_key(&Config::default(), &data).unwrap_err());
        assert!(err.contains("admin.key"), "{err}");
    }

    /// Accepted sockets get TCP_NODELAY and the user timeout.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_get_nodelay_and_a_user_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        tune_socket(&tcp, 90_000);
        assert!(tcp.nodelay().unwrap());
        assert_eq!(
            rustix::net::sockopt::tcp_user_timeout(&tcp).unwrap(),
            90_000
        );
    }

    /// A snapshot set aside where one of the same offset and reason already is gets a name of
    /// its own (the second `rebuild` under other settings replaced the first), which the
    /// pruning of set-aside snapshots still counts.
    #[test]
    fn a_second_snapshot_set_aside_at_the_same_offset_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("00000000000000000061.snap");
        let suffix = ".snap.other-settings";
        for name in [
            "00000000000000000061.snap.other-settings",
            "00000000000000000061.1.snap.other-settings",
            "00000000000000000061.2.snap.other-settings",
        ] {
            let aside = aside_path(&snap, suffix);
            assert_eq!(aside, dir.path().join(name));
            std::fs::write(&aside, name).unwrap();
        }
    }
}
