//! The server: start-up, the background tasks it owns, and shutdown.
//!
//! Start-up: take the data directory's lock and bind the port (a port that is taken fails the
//! start before the admin key, the tier or the log; it listens only once the server serves, so
//! connections are refused until then), open the log (recovering its tail), load the newest snapshot and
//! catch up with the log, mend the message index sidecars, open the conversation cache
//! (`open.rs`), then serve. A start that fails once the log is open closes it (releasing a tier
//! prefix the open claimed). Background tasks — the applier, the ack flusher, the snapshotter
//! (`snapshots.rs`), the background purge of recalled messages (`purger.rs`), the log's
//! retention (`retention.rs`), the sidecar repair (`index_repair.rs`) and the HTTP server —
//! live in one `JoinSet` with a `CancellationToken` each;
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
mod open;
mod purger;
mod read_notices;
pub(crate) mod replay_from_zero;
mod retention;
mod sequencer;
mod shed;
mod snapshots;
mod state;
pub(crate) mod tiering;
mod waiters;
mod ws;

use open::open_state;
pub(crate) use open::{
    acknowledged_through, check_lost_acknowledged, distrust_conversation_cache, last_run_unsynced,
    log_open_refused, refuse_lost_acknowledged, set_aside_all_snapshots,
    set_aside_snapshots_ahead_of,
};
use snapshots::{AnchorFrom, upload_written, write_snapshot};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tidings_log::{Log, LogOptions};
use tidings_projections::ProjectionConfig;
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
        // Saturating, though checked (`Config::check_projections`).
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
        .with_max_append_bytes(config.log_max_append_bytes())
        .with_acknowledged_through(open::acknowledged_through(&data)?);
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
        .map_err(|e| open::log_open_refused(e, &data))?;
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
        snapshots::run(s, t).await;
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
        // Both closed whatever the other's outcome (the log's error returned first skipped
        // the cache's close).
        let log = state.log.close_by(deadline).await;
        let cache = state.conv_cache.close().await;
        log?;
        cache?;
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
}
