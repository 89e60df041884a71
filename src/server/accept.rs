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

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Serves `app` on `listener` until `stop`, then lets the connections finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    read_timeout: Duration,
    tune: impl Fn(&TcpStream),
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .keep_alive(true);
    let mut conns = JoinSet::new();
    loop {
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
        tune(&tcp);
        let service = TowerToHyperService::new(app.clone());
        let conn = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let stop = stop.clone();
        conns.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let served = tokio::select! {
                r = conn.as_mut() => r,
                () = stop.cancelled() => {
                    // Finish the request in progress (if any), then close.
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
