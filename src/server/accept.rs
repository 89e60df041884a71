//! The HTTP accept loop: one task per connection, all owned by one `JoinSet`.
//!
//! Served with hyper's HTTP/1.1 connection (upgrades on, for WebSockets) rather than
//! `axum::serve`, for two things that one does not do:
//! - **Read timeouts.** A client gets `limits.http_read_timeout_secs` to send a request's
//!   headers — also the longest a keep-alive connection waits idle for its next request — and
//!   the same again for its body (`408 request_timeout`, in the extractors). Without them a
//!   client trickling bytes, or just holding connections open, kept each one (and its file
//!   descriptor) for ever. An upgraded WebSocket leaves this loop: its own keepalive applies.
//! - **Ownership.** Every connection task is in this loop's `JoinSet`: on shutdown each is
//!   asked to finish its request and close; aborting the loop's task aborts them all.
//! - **A budget of descriptors.** A connection is accepted only with a permit of the sockets
//!   budget ([`socket_budget`]: the open-file limit less what the server holds at start — its
//!   disk caches' files above all — and a reserve for what the log, snapshots and the object
//!   store's connections open later), held for the connection's life (an upgraded WebSocket takes one of its own).
//!   Without it, idle connections could take every descriptor, and the log's next segment
//!   roll, unable to open its files, stopped the log until a restart.
//! - **Shedding.** A connection accepted when the budget is spent closes the oldest
//!   plain-HTTP connection that is idle — waiting for a request's head (half-sent, or between
//!   requests), with nothing of a response left to hand to the kernel — and takes its
//!   descriptor (`shed.rs`). A connection serving a request (its body still coming in, or its
//!   response going out, a follow stream's for as long as it lasts) is never closed for it, nor
//!   a WebSocket session: with no idle connection the newcomer waits for a descriptor, as it
//!   did in the kernel's backlog. Until 2026-12-03 every newcomer waited: a client holding the
//!   budget in connections that send half a request (each kept for the read timeout, and
//!   opened again) left the server unreachable for everyone else for as long as it liked.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, TryAcquireError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::shed::{ConnState, Counted, IDLE_FOR, Registered, Shed, Watched};

/// Descriptors kept, beyond those the server holds at start (the caches' files, the active
/// segment's, locks, the listener: counted by [`socket_budget`]'s caller), for what it opens
/// later: new segments and their index files, up to `tidings_log::MAX_OPEN_SEALED_FILES` (64)
/// sealed segment files, snapshots, sidecars, the object store's connections. Half of what
/// the limit leaves when that is less (a quarter of a small limit, 75 of 300, was too few).
const RESERVED_DESCRIPTORS: u64 = 1024;

/// WebSocket sessions leave this many connections of the budget to plain HTTP (a quarter of
/// the budget when that is less): a full server still answers `/healthz`, `/readyz`,
/// `/metrics` and the admin API (a liveness probe that timed out restarted a server that was
/// only full).
const HTTP_HEADROOM: usize = 32;

/// The connections of a budget of `budget` that WebSocket sessions leave to plain HTTP.
pub(crate) fn http_headroom(budget: usize) -> usize {
    HTTP_HEADROOM.min(budget / 4)
}

/// Raises the soft open-file limit to the hard one (a service manager's soft default, often
/// 1,024, is far below what a chat server's connections need) and returns it.
pub(crate) fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
        && soft < hard
    {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, soft, hard, "could not raise the open-file limit");
        }
    }
    open_files_limit()
}

/// The soft open-file limit now (`u64::MAX`: unlimited).
pub(crate) fn open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit};
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Descriptors the process holds now (Linux: the entries of `/proc/self/fd`, less the one
/// reading them; elsewhere 0, and [`RESERVED_DESCRIPTORS`] alone stands for them).
pub(crate) fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| (dir.count() as u64).saturating_sub(1))
}

/// Client connections (HTTP and WebSocket together) that an open-file limit of `limit` leaves
/// room for when the server already holds `held` descriptors (at start, with its caches open):
/// what is left less [`RESERVED_DESCRIPTORS`] for what it opens later (half of what is left
/// when smaller). Not the limit less the reserve alone: the disk caches hold one file per
/// block (16 MiB), 1,024 for a 16 GiB `tier.cache_disk_bytes`, and with those taking the
/// reserve idle connections could again take the descriptors a segment roll needs.
pub(crate) fn socket_budget(limit: u64, held: u64) -> usize {
    let free = limit.saturating_sub(held);
    let reserve = RESERVED_DESCRIPTORS.min(free / 2);
    usize::try_from(free.saturating_sub(reserve).max(1)).unwrap_or(usize::MAX)
}

/// Serves `app` on `listener` until `stop`, then lets the connections finish their requests.
/// Each connection holds one of `sockets`' permits; one accepted when none is left sheds the
/// oldest idle plain-HTTP connection (`shed.rs`).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    read_timeout: Duration,
    sockets: Arc<Semaphore>,
    tune: impl Fn(&TcpStream),
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .keep_alive(true);
    let mut conns = JoinSet::new();
    let shed = Arc::new(Shed::default());
    let mut next_id = 0u64;
    'accept: loop {
        let tcp = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            // Reap finished connections as they end (the set stays the size of the live ones).
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                // That one connection's trouble (gone before it was accepted).
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) => continue,
                Err(e) => {
                    // Out of file descriptors, most often: let some connections end first.
                    tracing::warn!(error = %e, "accepting a connection failed; pausing 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // A descriptor for it: when none is left, the oldest idle plain-HTTP connection is
        // asked to close and give its own back (this one holds a descriptor of the reserve
        // meanwhile); with none idle, it waits for one to end.
        let permit = match sockets.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => break,
            // Asked again every quarter of `IDLE_FOR` while none is idle yet.
            Err(TryAcquireError::NoPermits) => loop {
                if shed.oldest_idle() {
                    tracing::debug!(
                        "connection budget spent: closing the oldest idle HTTP connection for a new one"
                    );
                }
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break 'accept,
                    permit = sockets.clone().acquire_owned() => match permit {
                        Ok(permit) => break permit,
                        Err(_) => break 'accept,
                    },
                    () = tokio::time::sleep(IDLE_FOR / 4) => {}
                }
            },
        };
        tune(&tcp);
        let conn_state = Arc::new(ConnState::new());
        let service = Counted::new(TowerToHyperService::new(app.clone()), conn_state.clone());
        let conn = http
            .serve_connection(TokioIo::new(Watched::new(tcp, conn_state.clone())), service)
            .with_upgrades();
        let stop = stop.clone();
        let asked = CancellationToken::new();
        next_id += 1;
        shed.add(next_id, asked.clone(), conn_state.clone());
        let registered = Registered::new(shed.clone(), next_id);
        conns.spawn(async move {
            let _descriptor = permit;
            let _registered = registered;
            let mut conn = std::pin::pin!(conn);
            let served = tokio::select! {
                r = conn.as_mut() => r,
                () = stop.cancelled() => {
                    // Finish the request in progress (if any), then close.
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
                // Shed for a newcomer: it was idle when picked. Busy again since (a request's
                // head came in meanwhile): it finishes that request and closes, as at a stop.
                () = asked.cancelled() => {
                    if conn_state.idle() {
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small open-file limit still leaves room for WebSocket sessions beside the headroom
    /// for plain HTTP (a reserve floor of 192 and a fixed headroom of 32 refused every upgrade
    /// below a limit of ~226), and a large one keeps 1,024 descriptors for the server.
    #[test]
    fn the_budget_leaves_room_for_sessions_at_small_limits() {
        for limit in [64, 190, 220, 256, 300, 1024, 20_000] {
            let budget = socket_budget(limit, 0);
            let sessions = budget - http_headroom(budget);
            assert!(sessions >= budget / 2, "{limit}: {budget} / {sessions}");
            assert!(
                budget as u64 <= limit / 2 || limit >= 2048,
                "{limit}: {budget}"
            );
        }
        assert_eq!(socket_budget(20_000, 0), 20_000 - 1024);
        assert_eq!(http_headroom(socket_budget(20_000, 0)), 32);
        assert_eq!(
            socket_budget(u64::MAX, 0),
            usize::try_from(u64::MAX - 1024).unwrap()
        );
    }

    /// What the server holds at start (its disk caches' files above all) comes out of the
    /// budget before the reserve: a 16 GiB block cache holds 1,024 files, and at a limit of
    /// 1,400 the budget was 700 connections beside ~1,060 descriptors held.
    #[test]
    fn descriptors_held_at_start_are_not_in_the_budget() {
        assert_eq!(socket_budget(20_000, 1_060), 20_000 - 1_060 - 1024);
        let budget = socket_budget(1_400, 1_060) as u64;
        assert!(1_060 + budget <= 1_400 - budget, "{budget}");
        assert_eq!(socket_budget(100, 400), 1, "never none");
        assert!(open_descriptors() >= 3, "stdin, stdout and stderr at least");
    }
}
