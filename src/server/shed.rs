//! Which plain-HTTP connection makes room for a newcomer when the connection budget is spent
//! (`accept.rs`): the oldest idle one, never one serving a request.
//!
//! A connection is idle when it serves no request — from a request's head read to its
//! response's body handed over in full ([`Counted`]) — and holds nothing of a response that
//! the kernel has not taken yet ([`Watched`]: hyper hands a body's last bytes to the socket
//! after the body ends, up to its buffer's size; a slow reader takes them for as long as it
//! reads) — and has been so for [`IDLE_FOR`]: a connection just accepted, or just done with a
//! request, has the head of its next request in the socket before hyper reads it (closed
//! then, with that unread, the kernel resets it: a client's upload cut). Closed, an idle
//! connection loses nothing: what the kernel holds is still sent.
//! One that answered an upgrade is never idle again (the WebSocket leaves the accept loop at
//! the upgrade's hand-over).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// How long a connection must have served no request to be closed for a newcomer.
pub(crate) const IDLE_FOR: Duration = Duration::from_secs(1);

/// Milliseconds since the first call (a clock for [`ConnState::idle_since`]).
fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What a connection is doing, as [`Shed`] needs to know.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Requests it serves (read in part or whole, their responses not handed over in full).
    busy: AtomicUsize,
    /// Whether its last write to the socket found the kernel's buffer full: hyper still holds
    /// bytes of a response.
    blocked: AtomicBool,
    /// When it last started to serve no request ([`now_ms`]): accepted, or a response handed
    /// over.
    idle_since: AtomicU64,
}

impl ConnState {
    pub(crate) fn new() -> Self {
        Self {
            busy: AtomicUsize::new(0),
            blocked: AtomicBool::new(false),
            idle_since: AtomicU64::new(now_ms()),
        }
    }

    /// Serves no request, holds nothing to send, and has been so for [`IDLE_FOR`].
    pub(crate) fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
            && !self.blocked.load(Ordering::Acquire)
            && now_ms().saturating_sub(self.idle_since.load(Ordering::Acquire))
                >= IDLE_FOR.as_millis() as u64
    }
}

/// The plain-HTTP connections open, oldest first (by the order they were accepted), each with
/// the token that asks it to close and its state.
#[derive(Default)]
pub(crate) struct Shed {
    open: Mutex<BTreeMap<u64, (CancellationToken, Arc<ConnState>)>>,
}

type Open = BTreeMap<u64, (CancellationToken, Arc<ConnState>)>;

impl Shed {
    pub(crate) fn add(&self, id: u64, token: CancellationToken, state: Arc<ConnState>) {
        self.lock().insert(id, (token, state));
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Asks the oldest idle connection to close; `false` when none is idle.
    pub(crate) fn oldest_idle(&self) -> bool {
        let mut open = self.lock();
        let Some(id) = open
            .iter()
            .find(|(_, (_, state))| state.idle())
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some((token, _)) = open.remove(&id) {
            token.cancel();
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes a connection out of [`Shed`] when its task ends.
pub(crate) struct Registered(Arc<Shed>, u64);

impl Registered {
    pub(crate) fn new(shed: Arc<Shed>, id: u64) -> Self {
        Self(shed, id)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

/// A connection's socket, noting in its [`ConnState`] whether the last write found the
/// kernel's buffer full.
pub(crate) struct Watched<T> {
    io: T,
    state: Arc<ConnState>,
}

impl<T> Watched<T> {
    pub(crate) fn new(io: T, state: Arc<ConnState>) -> Self {
        Self { io, state }
    }

    fn note<R>(&self, polled: Poll<R>) -> Poll<R> {
        self.state
            .blocked
            .store(polled.is_pending(), Ordering::Release);
        polled
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The app as one connection serves it, counting in its [`ConnState`] the requests it serves:
/// from the request's head read to its response's body handed over in full (a
/// `?follow=true` stream's never is), or for good once it answered an upgrade.
#[derive(Clone)]
pub(crate) struct Counted {
    app: TowerToHyperService<Router>,
    state: Arc<ConnState>,
}

impl Counted {
    pub(crate) fn new(app: TowerToHyperService<Router>, state: Arc<ConnState>) -> Self {
        Self { app, state }
    }
}

/// Counts a request out of [`ConnState::busy`] when dropped: with its response's body, or
/// with the request when it has none.
struct Serving(Arc<ConnState>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.idle_since.store(now_ms(), Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body holding its request's [`Serving`] until it is handed over in full (or
/// dropped).
pub(crate) struct CountedBody {
    inner: axum::body::Body,
    _serving: Serving,
}

impl http_body::Body for CountedBody {
    type Data = <axum::body::Body as http_body::Body>::Data;
    type Error = <axum::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> hyper::service::Service<hyper::Request<B>> for Counted
where
    TowerToHyperService<Router>: hyper::service::Service<
            hyper::Request<B>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
    <TowerToHyperService<Router> as hyper::service::Service<hyper::Request<B>>>::Future:
        Send + 'static,
{
    type Response = hyper::Response<CountedBody>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, req: hyper::Request<B>) -> Self::Future {
        self.state.busy.fetch_add(1, Ordering::AcqRel);
        let serving = Serving(self.state.clone());
        let state = self.state.clone();
        let answer = self.app.call(req);
        Box::pin(async move {
            let response = answer.await?;
            if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                // Busy until the connection ends (at the upgrade's hand-over): shed between
                // its 101 and the hand-over, the session would never start.
                state.busy.fetch_add(1, Ordering::AcqRel);
            }
            Ok(response.map(|inner| CountedBody {
                inner,
                _serving: serving,
            }))
        })
    }
}
