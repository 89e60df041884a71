//! The WebSocket gateway `GET /v1/ws`: JSON text frames, or CBOR binary frames for clients that
//! ask for the `tidings.cbor` subprotocol.
//!
//! A session registers for live pushes first, then catches up: it pages through every message
//! after the user's delivered cursor (256 at a time, each page written before the next is read,
//! so memory stays bounded), and goes live only when a catch-up round found nothing new and no
//! push arrived meanwhile. Live messages at or below the last seq sent in a channel are skipped,
//! so a connection sees each message once, with no gap, even when messages arrive mid-catch-up.
//! A channel whose cursor is below its expired floor (`tidings_projections::messages`' module
//! doc: messages whose segments the retention deleted) is caught up from after that floor.
//!
//! The frames themselves — reading a client's, encoding the server's — are in `frames.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tidings_projections::ids::{ChannelId, is_person_channel};
use tidings_projections::messages;
use tidings_projections::permissions::can_move_cursor;
use tokio::sync::mpsc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::render::{cbor_frame, channel_ref, message_json, message_text};
use crate::server::auth::{Authenticated, Caller, authenticate, resolve, token_owner, ws_bearer};
use crate::server::completions::{Answer, Answers, Reply};
use crate::server::delivery::{
    CloseReason, GOING_AWAY, IDLE_TIMEOUT, Pushed, Run, Session, SessionLimits, SessionUser,
    TOKEN_EXPIRED,
};
use crate::server::error::{ApiError, ApiResult};
use crate::server::http::{ApiQuery, one_payload_form, payload_bytes};
use crate::server::keepalive::{Due, Keepalive};
use crate::server::limits::{TokenBucket, UserBucket};
use crate::server::sequencer::{self, SendRequest, Sent};
use crate::server::state::{AppState, now_ms};

mod frames;
mod own_sends;

use self::frames::{ClientFrame, SendAck, SendPayload, encode, error_frame, parse};
use self::own_sends::OwnSends;

/// A read that moved the user's read position: its channel, its seq and the projections'
/// next offset ([`Ctx::record_cursor`]).
type ReadMoved = (ChannelId, u64, u64);

const CBOR_PROTOCOL: &str = "tidings.cbor";
/// The longest a session's expiry timer is set for before the wall clock is read again.
const EXPIRY_RECHECK: Duration = Duration::from_secs(60);
const CATCH_UP_PAGE: usize = 256;
/// Catch-up messages read from the log (and held) at a time.
const CATCH_UP_LOAD: usize = 32;
/// Sends in flight per connection; beyond it the session stops reading the socket until some
/// complete, so a client that floods sends meets TCP backpressure instead of growing memory.
const MAX_IN_FLIGHT: usize = 256;
/// Frames written before one flush.
const BURST: usize = 64;
/// Sends of one burst of read frames that go to the sequencer together (one hold of its lock).
const SEND_BATCH: usize = 64;
/// Frames of any kind read while sends wait to go to the sequencer, before they go anyway.
const BURST_FRAMES: usize = 256;
/// Read buffer of a WebSocket connection (allocated up front: small keeps idle ones cheap).
const WS_READ_BUFFER: usize = 1024;
/// Bytes tungstenite gathers before it writes to the socket mid-burst (a burst is flushed at
/// its end anyway). Its buffer keeps the capacity it grew to, so this bounds what a busy
/// connection holds; an idle one never grows it.
const WS_WRITE_BUFFER: usize = 16 * 1024;
/// A write to a client that makes no progress for this long ends the session.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Budget for the close frame and the closing handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Close code when the server cannot serve the session (catch-up failed): reconnect later.
const CATCH_UP_FAILED: CloseReason = CloseReason {
    code: 1011,
    reason: "catch_up_failed",
};

/// Query of `GET /v1/ws`, as the API document shows it (read as [`WsArgs`] and by
/// `auth::ws_bearer`).
#[allow(dead_code)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WsQuery {
    /// The user token (instead of the Authorization header).
    token: Option<String>,
    /// Deliver missed messages first (default true). `false`: the client syncs over HTTP.
    catch_up: Option<bool>,
}

/// Query of `GET /v1/ws` but the token, which `auth::ws_bearer` reads: it takes one given
/// twice and refuses two that differ, where serde refuses a repeated key (400).
#[derive(Debug, Deserialize)]
pub(crate) struct WsArgs {
    catch_up: Option<bool>,
}

/// The caller of an upgrade request, taken from the header or `?token=`, and the hash of its
/// token.
pub(crate) struct WsCaller(String, Bytes);

impl FromRequestParts<Arc<AppState>> for WsCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> ApiResult<Self> {
        match authenticate(state, ws_bearer(parts)?.as_deref())? {
            Authenticated {
                caller: Caller::User(uid),
                token_hash: Some(hash),
            } => Ok(WsCaller(uid, hash)),
            // The admin key (a user always has a token hash).
            _ => Err(ApiError::bad_request(
                "user_only",
                "WebSocket sessions are for users (a user token)",
            )),
        }
    }
}

/// Any method on `/v1/ws` but GET: 405 with `Allow: GET`, before authentication.
pub(crate) async fn not_get() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "a WebSocket upgrade is a GET",
    )
    .with_allow("GET")
}

/// Upgrades to a WebSocket session.
#[utoipa::path(get, path = "/v1/ws", tag = "websocket", params(WsQuery),
    responses((status = 101, description = "Switching to the WebSocket protocol (see the README for frames)"), (status = 400, description = "The admin's key (`user_only`), or not a WebSocket upgrade request (`not_a_websocket`)", body = crate::server::http::openapi::ErrorBody), (status = 401, body = crate::server::http::openapi::ErrorBody), (status = 426, description = "An upgrade to another WebSocket version than 13 (`unsupported_websocket_version`, with `Sec-WebSocket-Version: 13`)", body = crate::server::http::openapi::ErrorBody), (status = 429, description = "The user holds `limits.sessions_per_user` sessions already (`too_many_sessions`)", body = crate::server::http::openapi::ErrorBody), (status = 503, body = crate::server::http::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn upgrade(
    State(state): State<Arc<AppState>>,
    WsCaller(uid, token_hash): WsCaller,
    ApiQuery(q): ApiQuery<WsArgs>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    // A HEAD (routed here with the GET) is a method the endpoint does not take; anything
    // else that is not an upgrade (no `Upgrade` header, HTTP/1.0, a bad key) is 400, whatever
    // status axum's rejection carries (426 for a connection that cannot upgrade).
    let ws = ws.map_err(|e| match e {
        WebSocketUpgradeRejection::MethodNotGet(_) => ApiError::new(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "a WebSocket upgrade is a GET",
        )
        .with_allow("GET"),
        // RFC 6455 §4.4: 426 naming the version served (it was 400).
        WebSocketUpgradeRejection::InvalidWebSocketVersionHeader(_) => ApiError::new(
            axum::http::StatusCode::UPGRADE_REQUIRED,
            "unsupported_websocket_version",
            "this server speaks WebSocket version 13 (Sec-WebSocket-Version: 13)",
        )
        .with_websocket_version("13"),
        e => ApiError::bad_request("not_a_websocket", e.body_text()),
    })?;
    // Counted from here, before the shutdown check, not from the upgrade (axum runs it in a
    // task of its own): a shutdown waiting for the sessions also waits for one whose 101 is
    // still going out. It did not, and such a session ran after the acks' final flush, losing
    // the acks it read (review, 2026-12-03). Dropped with the callback when the upgrade
    // fails, or with this handler when it refuses.
    let upgrading = state.ws_tasks.token();
    if !state.is_ready() || state.sessions_stop.is_cancelled() {
        return Err(ApiError::unavailable(
            "not_ready",
            "starting up or shutting down",
        ));
    }
    let per_user = state.config.limits_sessions_per_user;
    if state.delivery.sessions_of(&uid) >= per_user {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions",
            format!("at most {per_user} WebSocket sessions per user"),
        ));
    }
    let permit = state.connections.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(
            "too_many_connections",
            format!(
                "at most {} connections",
                state.config.limits_max_connections
            ),
        )
    })?;
    // The session's descriptor, in the budget the open-file limit leaves (`accept.rs`): the
    // HTTP connection's permit goes when the upgrade takes the socket out of it.
    // Refused when taking one would leave less than the headroom for plain HTTP
    // (`accept::http_headroom`): the upgrading connection still holds its own permit, which
    // goes back once the upgrade is done.
    let full = || {
        ApiError::unavailable(
            "too_many_connections",
            "as many connections as the open-file limit allows",
        )
    };
    if state.sockets.available_permits() < state.http_headroom {
        return Err(full());
    }
    let descriptor = state
        .sockets
        .clone()
        .try_acquire_owned()
        .map_err(|_| full())?;
    let permit = (permit, descriptor);
    let max = state.config.limits_max_frame_bytes;
    let catch_up = q.catch_up.unwrap_or(true);
    // Registered before the 101 goes out: a client without catch-up syncs over HTTP once it is
    // connected, and every message applied from here on is pushed to it (one applied between
    // that sync and a registration after the upgrade reached it neither way).
    let registered = Registered::new(&state, &uid, token_hash, !catch_up)?;
    let tracker = state.ws_tasks.clone();
    Ok(ws
        .protocols([CBOR_PROTOCOL])
        .max_message_size(max)
        .max_frame_size(max)
        // tungstenite allocates its read buffer up front (128 KiB by default): small buffers
        // keep an idle connection cheap; larger frames still arrive, in more reads.
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| {
            let _upgrading = upgrading;
            tracker.track_future(async move {
                let cbor = socket
                    .protocol()
                    .is_some_and(|p| p.as_bytes() == CBOR_PROTOCOL.as_bytes());
                run(state, registered, socket, cbor, catch_up).await;
                drop(permit);
            })
        })
        .into_response())
}

type Sink = SplitSink<WebSocket, WsMessage>;

/// A write to a session waited [`WRITE_TIMEOUT`].
#[derive(Debug)]
struct WriteTimedOut;

impl std::fmt::Display for WriteTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("write timed out: the client stopped reading")
    }
}

impl std::error::Error for WriteTimedOut {}

/// The write half of a session. Every write is bounded: it fails after [`WRITE_TIMEOUT`] (a
/// client that stops reading cannot pin its session, its connection slot or shutdown) and as
/// soon as the session is told to close.
struct Writer {
    sink: Sink,
    cbor: bool,
    close: CancellationToken,
}

impl Writer {
    /// Writes one frame in the session's encoding.
    async fn frame(&mut self, frame: &Value) -> Result<(), axum::Error> {
        let msg = if self.cbor {
            WsMessage::Binary(cbor_frame(frame))
        } else {
            WsMessage::Text(Utf8Bytes::from(frame.to_string()))
        };
        self.raw(msg).await
    }

    /// Writes one prepared message.
    async fn raw(&mut self, msg: WsMessage) -> Result<(), axum::Error> {
        let sink = &mut self.sink;
        Self::bounded(&self.close, sink.send(msg)).await
    }

    /// Writes a burst of messages (draining `msgs`) with one flush, so one syscall, under one
    /// timeout for the whole burst.
    async fn burst(&mut self, msgs: &mut Vec<WsMessage>) -> Result<(), axum::Error> {
        if msgs.is_empty() {
            return Ok(());
        }
        let sink = &mut self.sink;
        let write = async {
            for m in msgs.drain(..) {
                sink.feed(m).await?;
            }
            sink.flush().await
        };
        Self::bounded(&self.close, write).await
    }

    /// `write`, cut short by the write timeout or by the session closing.
    async fn bounded(
        close: &CancellationToken,
        write: impl Future<Output = Result<(), axum::Error>>,
    ) -> Result<(), axum::Error> {
        tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, write) => {
                r.unwrap_or_else(|_| Err(axum::Error::new(WriteTimedOut)))
            }
            () = close.cancelled() => Err(axum::Error::new("session closing")),
        }
    }

    /// Sends the close frame (when there is a reason) and closes, each step bounded.
    async fn finish(mut self, reason: Option<CloseReason>) {
        if let Some(reason) = reason {
            let frame = CloseFrame {
                code: reason.code,
                reason: Utf8Bytes::from_static(reason.reason),
            };
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, self.sink.send(WsMessage::Close(Some(frame))))
                    .await;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sink.close()).await;
    }
}

/// While the server's close frame goes out: reads (and drops) what the client still sends,
/// until its close frame, the end of the stream, or twice [`CLOSE_TIMEOUT`] (the close's own
/// two bounded steps). A socket closed with unread bytes in its receive buffer is reset
/// (RST), and the reset discards what was still on its way to the client — the close frame
/// with its code (4000 `slow_consumer`, 1001 at shutdown) and the messages before it: a client
/// that had sent anything (an ack, a ping, a send) saw the connection drop without a code. A
/// client that goes on sending past that, or reads too slowly for the close frame to go out
/// within it, can still see none.
async fn drain(stream: &mut SplitStream<WebSocket>, mut late: impl FnMut(&WsMessage)) {
    let _ = tokio::time::timeout(2 * CLOSE_TIMEOUT, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, WsMessage::Close(_)) {
                break;
            }
            late(&msg);
        }
    })
    .await;
}

/// At most this many frames read while a session closes are looked at for acks and reads
/// ([`Ctx::late_cursor`]); the rest are read and dropped.
const LATE_FRAMES: usize = 4096;

struct Ctx {
    state: Arc<AppState>,
    uid: String,
    caller: Caller,
    /// The hash of the session's token: each send carries it, and is refused if the token was
    /// revoked before the send was sequenced (the session is closed with 4001 once the
    /// revocation is applied, but sends it had read by then are still on their way).
    token_hash: Bytes,
    cbor: bool,
    session: Arc<Session>,
    /// The last seq this connection has sent in each channel.
    sent_upto: HashMap<ChannelId, u64>,
    /// Answers to this session's sends (at most [`MAX_IN_FLIGHT`] queued: each holds a slot).
    replies: Answers,
    /// Answers to its recalls and edits (each holds a slot too): made at the first one (an
    /// idle session holds no channel for them), the receiving end handed to the session loop
    /// through `new_changes`.
    changes: Option<mpsc::UnboundedSender<Changed>>,
    new_changes: Option<mpsc::UnboundedReceiver<Changed>>,
    /// Ends when the session's last recall or edit has ended ([`Ctx::change`]).
    last_change: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Sends read and checked, not yet given to the sequencer: the frames already readable
    /// are read first, then their sends go together ([`sequencer::send_batch_for_session`]).
    sends: Vec<(SendRequest, Reply)>,
    /// The user's send bucket, shared with their other sessions and their HTTP sends
    /// (`limits.sends_per_second` is per user: a bucket per session multiplied it by
    /// `limits.sessions_per_user`). Held for the session's life, so a send takes only its lock.
    send_rate: UserBucket,
    /// Frames other than sends (acks, reads, pings, bad frames): past the rate the session
    /// stops reading the socket until a token is back (TCP pushes back on the client).
    frames: TokenBucket,
    /// Whether the last frame read was a send that was accepted (those are charged to
    /// `send_rate`).
    last_was_send: bool,
    /// The last frame read was an ack or a read that moved the user's position forward: not
    /// charged to `limits.frames_per_second` (bounded by the messages there are). A client
    /// acking each message of a long catch-up at the default limit had the server read its
    /// acks (and its pings and close) at 1,000 a second, a few times slower than the
    /// messages went out, and most of the backlog came again at its next connection (found
    /// by a QA round, 2026-12-03).
    last_was_progress: bool,
    /// While catching up: the channel and seq of each send this session made, so that
    /// catch-up does not send their messages back to it (it has their sendacks; live pushes
    /// skip them by origin). By seq, told by the sequencer before the message can be applied
    /// ([`sequencer::send_batch_for_session`]): a `client_msg_id` told neither a send without
    /// one nor the same id of another device's message apart. It holds what catch-up left
    /// out as the session's own until the send's answer says whether a sendack came
    /// ([`own_sends`]).
    own_sends: OwnSends,
}

/// Notes a session's send as its own while it catches up ([`Ctx::own_sends`]).
fn mark_own(own: &mut OwnSends) -> impl FnMut(&str, u64) + '_ {
    move |channel, seq| own.mark(channel, seq)
}

/// The answer to a recall or an edit frame ([`Ctx::change`]), with the in-flight slot it held:
/// the slot frees once the answer is written.
struct Changed {
    frame: Option<WsMessage>,
    _slot: OwnedSemaphorePermit,
}

/// An answer's fields as JSON.
fn to_json<T: Serialize>(answer: &T) -> ApiResult<Value> {
    serde_json::to_value(answer).map_err(|e| ApiError::internal(e.to_string()))
}

/// The outcome of one catch-up page.
enum CatchUp {
    More,
    Live,
    Failed,
}

/// What the session loop does next.
enum Step {
    Close(CloseReason),
    Gone,
    Frame(WsMessage),
    /// No further frame readable now (or a batch is full): start the sends read so far.
    Sends,
    Reply(Box<Answer>),
    Changed(Changed),
    Push(Run),
    Reaped,
    CatchUp,
    /// The keepalive timer: ping a silent client, close one silent too long.
    Keepalive,
    /// The session's token reached its expiry: closed (4001 `token_expired`).
    Expired,
    /// The client sent a frame the server cannot read (too large, text not UTF-8, not
    /// WebSocket): closed with a code that says so; what it sent before still goes to the log,
    /// as on a close.
    Broken(CloseReason),
}

/// Close code 1009 for a frame past `limits.max_frame_bytes`, 1007 for a text frame that is
/// not UTF-8 (RFC 6455: data inconsistent with the message's type), 1002 for a protocol error;
/// `None` for a connection that failed (nothing to say, nobody to say it to). tungstenite's
/// errors reach us as text only (axum wraps them).
fn broken_frame(e: &axum::Error) -> Option<CloseReason> {
    let text = e.to_string();
    if text.contains("Space limit exceeded") {
        Some(CloseReason {
            code: 1009,
            reason: "message_too_big",
        })
    } else if text.contains("UTF-8 encoding error") {
        Some(CloseReason {
            code: 1007,
            reason: "invalid_payload_data",
        })
    } else if text.contains("WebSocket protocol error") {
        Some(CloseReason {
            code: 1002,
            reason: "protocol_error",
        })
    } else {
        None
    }
}

impl Ctx {
    /// The frame answering a send.
    fn answer(&self, a: &Answer) -> Option<WsMessage> {
        match &a.result {
            Ok(s) => self.sendack(&a.client_msg_id, s),
            Err(e) => encode(&error_frame(e, Some(&a.client_msg_id)), self.cbor),
        }
    }

    /// The sendack of a send that is durable and applied.
    fn sendack(&self, client_msg_id: &str, s: &Sent) -> Option<WsMessage> {
        encode(
            &SendAck {
                kind: "sendack",
                client_msg_id,
                channel: channel_ref(&s.channel, Some(&self.uid)),
                seq: s.seq,
                message_id: s.message_id,
                offset: s.offset,
                ts: s.ts,
                duplicate: s.duplicate,
            },
            self.cbor,
        )
    }

    /// One page of catch-up: whether catch-up goes on, or why the session must close.
    ///
    /// A failure to plan or load a page closes the session (code 1011): going live past
    /// messages it could not deliver would leave a silent gap; the client reconnects and
    /// catch-up starts again from its cursor.
    async fn catch_up_page(&mut self, w: &mut Writer) -> Result<CatchUp, axum::Error> {
        let expired_below = self.state.expired_below();
        let plan = {
            let p = self.state.proj();
            let sent = &self.sent_upto;
            let acks = &self.state.acks;
            // After what this session sent, and what any session of the user acknowledged
            // that the cursor does not show yet (a window not yet written); and after the
            // expired messages (`tidings_projections::messages`' module doc).
            messages::plan_sync_from(
                &p.state,
                p.index_files(),
                &self.uid,
                CATCH_UP_PAGE,
                expired_below,
                |ch, cursor| {
                    let sent = sent.get(ch).copied().unwrap_or(0);
                    sent.max(cursor).max(acks.delivered(&self.uid, ch))
                },
            )
        };
        let (plan, more) = match plan {
            Ok(planned) => planned,
            Err(e) => {
                tracing::warn!(uid = %self.uid, error = %e, "catch-up planning failed; closing the session");
                let err: ApiError = e.into();
                w.frame(&error_frame(&err, None)).await?;
                return Ok(CatchUp::Failed);
            }
        };
        if plan.is_empty() {
            if self.session.try_go_live() {
                return Ok(CatchUp::Live);
            }
            // Something arrived during this round: plan again, with what comes from now on
            // queued (`Session::queue_from_now`), so that the next round that plans all there
            // is ends the catch-up.
            self.session.queue_from_now();
            self.session.begin_catch_up_round();
            return Ok(CatchUp::More);
        }
        // Loaded and written a few at a time: a page of 256 messages of up to 64 KiB each
        // held whole in memory while a slow client read it (~16 MiB per session). One that
        // expired since the plan is left out: the next page's plan starts after it.
        for part in plan.chunks(CATCH_UP_LOAD) {
            let loaded = messages::load_retained(&self.state.log, part, self.state.expiring());
            let msgs = match loaded.await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(uid = %self.uid, error = %e, "catch-up read failed; closing the session");
                    let err: ApiError = e.into();
                    w.frame(&error_frame(&err, None)).await?;
                    return Ok(CatchUp::Failed);
                }
            };
            for m in msgs {
                let e = self.sent_upto.entry(m.channel.clone()).or_default();
                *e = (*e).max(m.seq);
                let m = if m.from == self.uid {
                    match self.own_sends.catch_up(m) {
                        Some(m) => m,
                        None => continue,
                    }
                } else {
                    m
                };
                w.raw(self.message_frame(&m)).await?;
            }
        }
        // Everything applied before this plan is sent, and, when queueing, everything since
        // is queued: live. Not queueing yet (messages pushed during this round were left to
        // the next): queue from now on, so that the next round that plans all there is ends
        // the catch-up, however busy the groups (a round meeting a new message every time
        // kept the session catching up for as long as that lasted).
        if !more {
            if self.session.go_live_if_queueing() {
                return Ok(CatchUp::Live);
            }
            self.session.queue_from_now();
        }
        Ok(CatchUp::More)
    }

    /// A message as the `message` frame catch-up writes.
    fn message_frame(&self, m: &messages::Message) -> WsMessage {
        if self.cbor {
            let mut frame = message_json(m, Some(&self.uid));
            if let Some(o) = frame.as_object_mut() {
                o.insert("type".into(), json!("message"));
            }
            WsMessage::Binary(cbor_frame(&frame))
        } else {
            // The payload as sent.
            WsMessage::Text(message_text(m, Some(&self.uid), Some("message")).into())
        }
    }

    /// The frame for a live push; none when catch-up already sent it or this session sent it.
    fn live(&mut self, session: u64, pushed: &Pushed) -> Option<WsMessage> {
        if pushed.origin == Some(session) {
            return None;
        }
        if pushed.is_message {
            // Looked up by reference: the channel name is cloned once per session, not once
            // per delivered message.
            match self.sent_upto.get_mut(pushed.channel.as_str()) {
                Some(sent) if pushed.seq <= *sent => return None,
                Some(sent) => *sent = pushed.seq,
                None => {
                    self.sent_upto.insert(pushed.channel.clone(), pushed.seq);
                }
            }
        }
        let frame = pushed.frame_for(&self.uid)?;
        Some(if self.cbor {
            WsMessage::Binary(frame.cbor.clone())
        } else {
            WsMessage::Text(frame.json.clone())
        })
    }

    /// Handles one client frame.
    async fn incoming(
        &mut self,
        w: &mut Writer,
        msg: &WsMessage,
        in_flight: &Arc<Semaphore>,
    ) -> Result<(), axum::Error> {
        self.last_was_send = false;
        self.last_was_progress = false;
        // A CBOR frame becomes two value trees before it is checked: bounded by what a send
        // needs (its payload and a few short fields), not by the frame limit — a 1 MiB array
        // of one-byte integers would be a million nodes, twice. The frame is not read, so the
        // error names no `client_msg_id`.
        if let WsMessage::Binary(b) = msg {
            // Three times the payload limit and the frame's fields; `limits.max_frame_bytes` is
            // at least that, so a frame the transport lets through is read or answered here.
            let most = self.state.config.max_binary_frame_bytes();
            if b.len() > most {
                let err = ApiError::too_large(format!(
                    "a binary frame of {} bytes, not read; at most {most} (3 × limits.max_payload_bytes and the frame's fields)",
                    b.len()
                ));
                return w.frame(&error_frame(&err, None)).await;
            }
        }
        let frame = match parse(msg) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(bad) => {
                let err = ApiError::bad_request("invalid_frame", bad.message);
                return w
                    .frame(&error_frame(&err, bad.client_msg_id.as_deref()))
                    .await;
            }
        };
        match frame {
            ClientFrame::Ping => w.frame(&json!({"type": "pong"})).await,
            ClientFrame::Ack { channel, seq } => self.cursor(w, &channel, seq, 0).await,
            ClientFrame::Read { channel, seq } => self.cursor(w, &channel, 0, seq).await,
            ClientFrame::Recall {
                client_msg_id,
                channel,
                seq,
            } => {
                self.change(w, in_flight, client_msg_id, &channel, seq, None)
                    .await
            }
            ClientFrame::Edit {
                client_msg_id,
                channel,
                seq,
                payload,
            } => {
                self.change(w, in_flight, client_msg_id, &channel, seq, Some(payload))
                    .await
            }
            ClientFrame::Send {
                client_msg_id,
                channel,
                payload,
            } => {
                match self.prepare_send(client_msg_id.clone(), &channel, payload) {
                    Ok(req) => {
                        // Always available: the session reads a frame only with a permit free.
                        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                            let err = ApiError::unavailable("busy", "too many sends in flight");
                            return w.frame(&error_frame(&err, Some(&client_msg_id))).await;
                        };
                        // The answer comes back through `replies` with the permit: the slot
                        // frees only once the answer is written, so a client that keeps
                        // sending while not reading its answers runs out of slots, and then
                        // the session stops reading and writes the answers.
                        let reply = Reply {
                            to: self.replies.clone(),
                            client_msg_id,
                            permit,
                        };
                        self.sends.push((req, reply));
                        // Accepted: charged to the send limit, not the frame limit (a refused
                        // send is charged as any other frame).
                        self.last_was_send = true;
                        Ok(())
                    }
                    Err(e) => match self.stored_original(&e, &client_msg_id, &channel) {
                        // Answered at once, as a refusal is; charged as an accepted send (but
                        // for its payload, which is not written).
                        Some(sent) => {
                            if let Err(e) = self.state.charge_send(&self.send_rate, 0) {
                                return w.frame(&error_frame(&e, Some(&client_msg_id))).await;
                            }
                            self.last_was_send = true;
                            match self.sendack(&client_msg_id, &sent) {
                                Some(ack) => w.raw(ack).await,
                                None => Ok(()),
                            }
                        }
                        None => w.frame(&error_frame(&e, Some(&client_msg_id))).await,
                    },
                }
            }
        }
    }

    /// Starts a recall (`edit`: `None`) or an edit of `seq` in `channel`: checked here as far
    /// as HTTP checks before reading the message, then made in a task of its own (in
    /// `send_tasks`, waited for at shutdown) holding one of the session's in-flight slots, so
    /// the session goes on reading and pushing while the message is read (from the object
    /// store, maybe) and the change is written and applied; its answer — a `recallack` or an
    /// `editack`, with the HTTP answer's fields, or an error frame — comes back through
    /// `changes`.
    ///
    /// Order: the sends read before the frame go to the sequencer first, so they reach the log
    /// before the change; and a session's changes are made one after the other, each task
    /// waiting for the one before it to end (two edits of one message sent back to back are
    /// written in that order: the later payload is the one that stays). Sends read after the
    /// frame may reach the log before it. Charged: as a frame here, and a user's recall or
    /// edit to their send rate too once past the checks, as over HTTP (`recall_message`,
    /// `edit_message`).
    async fn change(
        &mut self,
        w: &mut Writer,
        in_flight: &Arc<Semaphore>,
        client_msg_id: Option<String>,
        channel: &str,
        seq: u64,
        edit: Option<SendPayload>,
    ) -> Result<(), axum::Error> {
        let checked = (|| {
            if let Some(id) = &client_msg_id {
                crate::server::http::check_client_msg_id(id)?;
            }
            let channel = resolve(&self.caller, channel)?;
            crate::server::http::readable(&self.state, &self.caller, &channel)?;
            let edit = edit.map(|p| self.frame_payload(p)).transpose()?;
            // Always available: the session reads a frame only with a permit free.
            let slot = in_flight.clone().try_acquire_owned().map_err(|_| {
                ApiError::unavailable("busy", "too many sends and changes in flight")
            })?;
            Ok::<_, ApiError>((channel, edit, slot))
        })();
        let (channel, edit, slot) = match checked {
            Ok(c) => c,
            Err(e) => return w.frame(&error_frame(&e, client_msg_id.as_deref())).await,
        };
        sequencer::send_batch_for_session(
            &self.state,
            &mut self.sends,
            mark_own(&mut self.own_sends),
        )
        .await;
        let (done, before) = tokio::sync::oneshot::channel::<()>();
        let before = self.last_change.replace(before);
        let state = self.state.clone();
        let caller = self.caller.clone();
        let token_hash = self.token_hash.clone();
        let to = match &self.changes {
            Some(to) => to.clone(),
            None => {
                let (to, from) = mpsc::unbounded_channel();
                self.new_changes = Some(from);
                self.changes.insert(to).clone()
            }
        };
        let cbor = self.cbor;
        self.state.send_tasks.spawn(async move {
            // The change before it has ended (answered, or its session's task dropped).
            if let Some(before) = before {
                let _ = before.await;
            }
            let (kind, result) = match edit {
                None => (
                    "recallack",
                    crate::server::http::recall_message(&state, &caller, &channel, seq)
                        .await
                        .and_then(|r| to_json(&r)),
                ),
                Some(payload) => (
                    "editack",
                    crate::server::http::edit_message(
                        &state,
                        &caller,
                        Some(token_hash),
                        &channel,
                        seq,
                        payload,
                    )
                    .await
                    .and_then(|e| to_json(&e)),
                ),
            };
            let frame = match result {
                Ok(mut v) => {
                    if let Some(o) = v.as_object_mut() {
                        o.insert("type".into(), json!(kind));
                        if let Some(id) = &client_msg_id {
                            o.insert("client_msg_id".into(), json!(id));
                        }
                    }
                    encode(&v, cbor)
                }
                Err(e) => encode(&error_frame(&e, client_msg_id.as_deref()), cbor),
            };
            // A session that has ended drops it.
            let _ = to.send(Changed { frame, _slot: slot });
            // The next change may go.
            drop(done);
        });
        Ok(())
    }

    /// For a send refused with `refused`: the original message when it retries one already
    /// stored and the refusal is `payload_too_large` (`limits.max_payload_bytes` lowered
    /// since; [`sequencer::stored_retry`]).
    fn stored_original(
        &self,
        refused: &ApiError,
        client_msg_id: &str,
        channel: &str,
    ) -> Option<Sent> {
        let channel = resolve(&self.caller, channel).ok()?;
        crate::server::http::stored_retry(&self.state, refused, &self.uid, &channel, client_msg_id)
    }

    /// Records an ack (delivered) or a read; coalesced into cursor events. A read that moves
    /// the user's read position is told to their other sessions at once.
    async fn cursor(
        &mut self,
        w: &mut Writer,
        channel: &str,
        delivered: u64,
        read: u64,
    ) -> Result<(), axum::Error> {
        match self.record_cursor(channel, delivered, read) {
            Ok((advanced, moved)) => {
                self.last_was_progress = advanced;
                self.state.metrics.acks_received.inc();
                if let Some((ch, seq, needs)) = moved {
                    let origin = Some(self.session.id);
                    let notices = &self.state.read_notices;
                    notices.tell(&self.state, needs, &self.uid, &ch, seq, origin);
                }
                Ok(())
            }
            Err(e) => w.frame(&error_frame(&e, None)).await,
        }
    }

    /// An ack or a read the client sent before the server closed the session, read while the
    /// close frame goes out (the session loop had not read it: it was waiting on a catch-up
    /// read that then failed, or pushing to a client being closed as too slow): recorded as
    /// at any time. Acks are cumulative, and one dropped here brought back at the reconnect
    /// every message it acknowledged (found by a QA round: hundreds after a catch-up closed
    /// by a store outage). Anything else is dropped, as before; errors are not answered. Not
    /// after the session's token was revoked or expired ([`Ctx::record_cursor`] refuses).
    fn late_cursor(&self, msg: &WsMessage) {
        if let WsMessage::Binary(b) = msg
            && b.len() > self.state.config.max_binary_frame_bytes()
        {
            return;
        }
        let (channel, delivered, read) = match parse(msg) {
            Ok(Some(ClientFrame::Ack { channel, seq })) => (channel, seq, 0),
            Ok(Some(ClientFrame::Read { channel, seq })) => (channel, 0, seq),
            _ => return,
        };
        if let Ok((_, moved)) = self.record_cursor(&channel, delivered, read) {
            self.state.metrics.acks_received.inc();
            if let Some((ch, seq, needs)) = moved {
                let origin = Some(self.session.id);
                let notices = &self.state.read_notices;
                notices.tell(&self.state, needs, &self.uid, &ch, seq, origin);
            }
        }
    }

    /// Records an ack or a read in the channel it names; returns whether it moved the user's
    /// position forward ([`Recorded::advanced`]), and the channel and the read when that moves
    /// the user's read position past what was known, with the projections' next offset (the
    /// read's notice follows the pushes of what was applied: `read_notices.rs`).
    ///
    /// [`Recorded::advanced`]: crate::server::acks::Recorded::advanced
    fn record_cursor(
        &self,
        channel: &str,
        delivered: u64,
        read: u64,
    ) -> ApiResult<(bool, Option<ReadMoved>)> {
        let ch = resolve(&self.caller, channel)?;
        // Held while recording: the read known in the projections and the windows are looked
        // at together (`Acks::record`).
        let p = self.state.proj();
        // The session's token, still valid: an ack or a read read after its revocation or
        // expiry was applied (the session is closing, and reads what the client still sends
        // while its close frame goes out: `late_cursor`) is not recorded. It was, for up to
        // 4,096 frames: a revoked token's holder could move the user's cursors to the heads,
        // and the user's devices then skipped those messages in catch-up (a review).
        if token_owner(&p.state.tokens, &self.token_hash, now_ms())? != &self.uid {
            return Err(crate::server::auth::invalid_token());
        }
        // Members ack even in a banned group (its backlog reaches them: `messages::plan_sync`).
        if !can_move_cursor(&p.state, &self.uid, &ch) {
            return Err(ApiError::forbidden(
                "not_member",
                "not a member of this channel",
            ));
        }
        // Capped at the head as it is now, as HTTP does: capped only when the window is
        // flushed, an ack past the head ("mark all read") also covered messages that arrived
        // meanwhile, which then never came by sync or catch-up.
        let head = p.state.heads.last_seq(&ch);
        let (delivered, read) = (delivered.min(head), read.min(head));
        let cur = p.state.cursors.get(&self.uid, &ch);
        let recorded =
            self.state
                .acks
                .record(&self.uid, &ch, delivered, read, (cur.delivered, cur.read));
        let next = p.state.next_offset();
        Ok((
            recorded.advanced,
            recorded.read_moved.then_some((ch, read, next)),
        ))
    }

    fn prepare_send(
        &self,
        client_msg_id: String,
        channel: &str,
        payload: SendPayload,
    ) -> ApiResult<SendRequest> {
        crate::server::http::check_client_msg_id(&client_msg_id)?;
        let channel = resolve(&self.caller, channel)?;
        let (payload, flags) = self.frame_payload(payload)?;
        self.state.charge_send(&self.send_rate, payload.len())?;
        Ok(SendRequest {
            from: self.uid.clone(),
            channel,
            client_msg_id,
            payload,
            flags,
            by_admin: false,
            origin: Some(self.session.id),
            token_hash: Some(self.token_hash.clone()),
        })
    }

    /// A send's or an edit's payload, checked: its size, then its content (as HTTP checks it).
    fn frame_payload(&self, payload: SendPayload) -> ApiResult<(Bytes, u32)> {
        Ok(match payload {
            SendPayload {
                bytes: Some(bytes),
                payload_b64: None,
                ..
            } => {
                let max = self.state.config.limits_max_payload_bytes;
                if bytes.len() > max {
                    return Err(ApiError::too_large(format!(
                        "payload of {} bytes; the limit is {max}",
                        bytes.len()
                    )));
                }
                (bytes, 0)
            }
            // A byte string and `payload_b64`: two payloads, as `payload` and `payload_b64` are.
            SendPayload { bytes: Some(_), .. } => return Err(one_payload_form()),
            SendPayload {
                json,
                payload_b64,
                not_json,
                ..
            } => {
                // Converted to `null` (a bare NaN to exactly that), it is still not the null that
                // may stand beside `payload_b64` for no payload.
                if not_json.is_some() && payload_b64.is_some() {
                    return Err(one_payload_form());
                }
                let stored = payload_bytes(&self.state, json, payload_b64)?;
                // After the size and the JSON checks, as for a JSON number out of range.
                if let Some(what) = not_json {
                    return Err(ApiError::bad_request("invalid_payload", what));
                }
                stored
            }
        })
    }
}

/// A session registered with delivery (pushes reach it from then on); unregistered when
/// dropped — at the end of the session, or with the upgrade if it never completes.
struct Registered {
    state: Arc<AppState>,
    uid: String,
    /// The hash of the token the session was opened with.
    token_hash: Bytes,
    /// When that token expires (ms since the Unix epoch; `None`: never): the session closes
    /// then.
    expires_at_ms: Option<u64>,
    session: Arc<Session>,
    queue: mpsc::Receiver<Run>,
}

impl Registered {
    /// Registers `uid`'s new session (`live`: without catch-up). Under the projections' lock: no
    /// membership change slips between reading the user's groups and registering, and a
    /// revocation applied since the request was authenticated is seen here (one applied later
    /// closes the registered session), as is an expiry reached since. The session is pushed
    /// what is applied from here on: the applier may still be pushing events the projections
    /// hold already, and the groups read here are those of after them (a group joined among
    /// them is not yet the user's for the messages before the join).
    fn new(
        state: &Arc<AppState>,
        uid: &str,
        token_hash: Bytes,
        live: bool,
    ) -> ApiResult<Registered> {
        let p = state.proj();
        // The upgrade's answer, as any request's with a revoked or expired token (the close
        // reasons `token_revoked` and `token_expired` are a registered session's).
        if token_owner(&p.state.tokens, &token_hash, now_ms())? != uid {
            return Err(crate::server::auth::invalid_token());
        }
        let expires_at_ms = p.state.tokens.expiry(&token_hash);
        let groups = p
            .state
            .subs
            .channels_of(uid)
            .filter(|c| !is_person_channel(c))
            .cloned();
        let per_user = state.config.limits_sessions_per_user;
        let user = SessionUser {
            uid: uid.to_owned(),
            token_hash: Some(token_hash.clone()),
        };
        let (session, queue) = state
            .delivery
            .register(
                user,
                groups,
                p.state.next_offset(),
                SessionLimits {
                    queue: state.config.limits_session_queue,
                    queue_bytes: state.config.limits_session_queue_bytes,
                    per_user,
                },
                &state.sessions_stop,
                live,
            )
            // Past the check above: connections of one user racing.
            .ok_or_else(|| {
                ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "too_many_sessions",
                    format!("at most {per_user} WebSocket sessions per user"),
                )
            })?;
        Ok(Registered {
            state: state.clone(),
            uid: uid.to_owned(),
            token_hash,
            expires_at_ms,
            session,
            queue,
        })
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let p = self.state.proj();
        let groups = p
            .state
            .subs
            .channels_of(&self.uid)
            .filter(|c| !is_person_channel(c))
            .cloned();
        self.state.delivery.unregister(&self.session, groups);
    }
}

async fn run(
    state: Arc<AppState>,
    mut registered: Registered,
    socket: WebSocket,
    cbor: bool,
    catch_up: bool,
) {
    let (sink, mut stream): (Sink, SplitStream<WebSocket>) = socket.split();
    let session = registered.session.clone();
    let uid = registered.uid.clone();
    let token_hash = registered.token_hash.clone();
    let queue = &mut registered.queue;
    // Catching up counted first: a scrape never sees the session without it.
    if catch_up {
        state.metrics.ws_catching_up.inc();
    }
    state.metrics.ws_sessions.inc();
    let (replies_tx, mut replies) = mpsc::unbounded_channel::<Box<Answer>>();
    let mut changes: Option<mpsc::UnboundedReceiver<Changed>> = None;
    let mut ctx = Ctx {
        caller: Caller::User(uid.clone()),
        token_hash,
        send_rate: state.user_rates.bucket(&uid),
        frames: TokenBucket::new(state.config.limits_frames_per_second),
        last_was_send: false,
        last_was_progress: false,
        state: state.clone(),
        uid: uid.clone(),
        cbor,
        session: session.clone(),
        sent_upto: HashMap::new(),
        replies: replies_tx,
        changes: None,
        new_changes: None,
        last_change: None,
        sends: Vec::new(),
        own_sends: OwnSends::new(catch_up),
    };
    let mut w = Writer {
        sink,
        cbor,
        close: session.close.clone(),
    };
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut catching_up = catch_up;
    // Frames read since the sends in `ctx.sends` began to gather: bounds how long other
    // frames (acks, pings, refused sends) can keep them from the sequencer.
    let mut burst_frames = 0usize;
    // Frames of one burst (reused: no allocation per burst; none at all for an idle session).
    let mut burst: Vec<WsMessage> = Vec::new();
    // In-flight slots of the answers in `burst`.
    let mut slots: Vec<OwnedSemaphorePermit> = Vec::new();
    // Pings a quiet client, closes one gone (`keepalive.rs`).
    let mut liveness = Keepalive::new(
        Duration::from_secs(state.config.limits_ws_idle_secs),
        tokio::time::Instant::now(),
    );
    let keepalive = tokio::time::sleep_until(liveness.first_check());
    tokio::pin!(keepalive);
    // A timer for the token's expiry, when it has one: the session closes then (its sends
    // would be refused from then on anyway: the sequencer checks the token of each). The
    // expiry is wall-clock time and a timer runs on a monotonic clock: the timer is set for
    // at most EXPIRY_RECHECK and the wall clock read again when it fires, so a clock stepped
    // forward (NTP, a VM resumed) closes the session within that time of the expiry, and one
    // stepped back does not close it early.
    let expires_at = registered.expires_at_ms;
    let expiry_timer = |at: u64| {
        let left = Duration::from_millis(at.saturating_sub(now_ms()));
        Box::pin(tokio::time::sleep(left.min(EXPIRY_RECHECK)))
    };
    let mut expiry = expires_at.map(expiry_timer);
    let mut broken = false;
    let close: Option<CloseReason> = loop {
        // Out of frame tokens: no frame is read until one is back.
        let frames_wait = ctx.frames.wait(Instant::now());
        let step = tokio::select! {
            biased;
            () = session.close.cancelled() => Step::Close(session.close_reason().unwrap_or(GOING_AWAY)),
            // Early in the order: ready at most once per `ping_after`, never starved by the
            // always-ready branches below (catch-up, a queue that never empties).
            () = &mut keepalive => Step::Keepalive,
            // Likewise: ready once, at the token's expiry.
            () = async {
                if let Some(at) = expiry.as_mut() {
                    at.await;
                }
            }, if expiry.is_some() => Step::Expired,
            frame = stream.next(), if frames_wait.is_none()
                && in_flight.available_permits() > 0
                && ctx.sends.len() < SEND_BATCH
                && (ctx.sends.is_empty() || burst_frames < BURST_FRAMES) => match frame {
                Some(Ok(WsMessage::Close(_))) | None => Step::Gone,
                Some(Err(e)) => {
                    tracing::debug!(session = session.id, error = %e, "WebSocket read failed");
                    broken_frame(&e).map_or(Step::Gone, Step::Broken)
                }
                Some(Ok(msg)) => Step::Frame(msg),
            },
            // Polled only when no frame is readable (or the batch is full).
            () = std::future::ready(()), if !ctx.sends.is_empty() => Step::Sends,
            Some(reply) = replies.recv() => Step::Reply(reply),
            Some(done) = async {
                match changes.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            }, if changes.is_some() => Step::Changed(done),
            Some(pushed) = queue.recv(), if !catching_up => Step::Push(pushed),
            // All slots taken: wake when one frees (the permit is given straight back).
            _ = in_flight.acquire(), if in_flight.available_permits() == 0 => Step::Reaped,
            // Out of frame tokens: wake when one is back. (A disabled branch's future is still
            // built: no timer unless paused.)
            () = async {
                if let Some(d) = frames_wait {
                    tokio::time::sleep(d).await;
                }
            }, if frames_wait.is_some() => Step::Reaped,
            // Not while no frame may be read: a client whose frames go past the limit while
            // catch-up writes to it (a read and an ack for each message, one charged) blocks
            // in its own send once the server stops reading, stops reading in turn, and the
            // server's write then blocked too, reading nothing, until the write timeout
            // dropped the connection and its acks (found by a QA round, 2026-12-03). Catch-up
            // goes on as frames are read.
            () = std::future::ready(()), if catching_up && frames_wait.is_none() => Step::CatchUp,
        };
        let done = match step {
            Step::Close(reason) => break Some(reason),
            Step::Expired if expires_at.is_some_and(|at| now_ms() < at) => {
                // Not yet by the wall clock (the timer's share, or the clock stepped back).
                expiry = expires_at.map(expiry_timer);
                Ok(())
            }
            Step::Expired => {
                // Through the session's close: the first reason wins (a revocation that came
                // at the same moment), and pushes stop at once.
                session.close_with(TOKEN_EXPIRED);
                break Some(session.close_reason().unwrap_or(TOKEN_EXPIRED));
            }
            Step::Gone => break None,
            Step::Broken(reason) => {
                broken = true;
                break Some(reason);
            }
            Step::Frame(msg) => {
                liveness.activity(tokio::time::Instant::now());
                if ctx.sends.is_empty() {
                    burst_frames = 0;
                }
                burst_frames += 1;
                let done = ctx.incoming(&mut w, &msg, &in_flight).await;
                if let Some(made) = ctx.new_changes.take() {
                    changes = Some(made);
                }
                if !ctx.last_was_send && !ctx.last_was_progress {
                    ctx.frames.take(Instant::now());
                }
                done
            }
            Step::Sends => {
                sequencer::send_batch_for_session(
                    &ctx.state,
                    &mut ctx.sends,
                    mark_own(&mut ctx.own_sends),
                )
                .await;
                Ok(())
            }
            // A burst of answers or pushes is written with one flush (one syscall), not one each.
            Step::Reply(first) => {
                let mut next = Some(first);
                while let Some(mut a) = next.take() {
                    burst.extend(ctx.answer(&a));
                    // Told `apply_timeout`: no sendack comes, so the message is not skipped as
                    // one this session has; written now if catch-up already left it out.
                    if let Some((channel, seq)) = &a.not_applied {
                        if let Some(m) = ctx.own_sends.not_applied(channel, *seq) {
                            burst.push(ctx.message_frame(&m));
                        }
                    } else if let Ok(s) = &a.result {
                        ctx.own_sends.answered(&s.channel, s.seq);
                    }
                    if let Some(p) = a.permit.take() {
                        slots.push(p);
                    }
                    if burst.len() < BURST {
                        next = replies.try_recv().ok();
                    }
                }
                let written = w.burst(&mut burst).await;
                // Written (or failed): the slots free.
                slots.clear();
                written
            }
            // Written (or failed): its slot frees.
            Step::Changed(Changed { frame, _slot }) => match frame {
                Some(frame) => w.raw(frame).await,
                None => Ok(()),
            },
            Step::Push(run) => {
                let mut messages = run.len();
                let mut bytes = Pushed::run_bytes(&run);
                burst.extend(run.iter().filter_map(|p| ctx.live(session.id, p)));
                while messages < BURST
                    && let Ok(next) = queue.try_recv()
                {
                    messages += next.len();
                    bytes += Pushed::run_bytes(&next);
                    burst.extend(next.iter().filter_map(|p| ctx.live(session.id, p)));
                }
                session.taken(messages, bytes);
                let written = w.burst(&mut burst).await;
                if written.is_ok() {
                    liveness.activity(tokio::time::Instant::now());
                }
                written
            }
            Step::Reaped => Ok(()),
            Step::Keepalive => match liveness.check(tokio::time::Instant::now()) {
                Due::Close => break Some(IDLE_TIMEOUT),
                Due::Wait(next) => {
                    keepalive.as_mut().reset(next);
                    Ok(())
                }
                Due::Ping(next) => {
                    keepalive.as_mut().reset(next);
                    w.raw(WsMessage::Ping(Bytes::new())).await
                }
            },
            Step::CatchUp => match ctx.catch_up_page(&mut w).await {
                Ok(CatchUp::More) => {
                    liveness.activity(tokio::time::Instant::now());
                    Ok(())
                }
                Ok(CatchUp::Live) => {
                    catching_up = false;
                    state.metrics.ws_catching_up.dec();
                    ctx.own_sends.live();
                    Ok(())
                }
                Ok(CatchUp::Failed) => break Some(CATCH_UP_FAILED),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = done {
            tracing::debug!(session = session.id, error = %e, "WebSocket write failed");
            if std::error::Error::source(&e).is_some_and(|s| s.is::<WriteTimedOut>()) {
                state.metrics.ws_write_timeouts.inc();
            }
            // A write cut short by a close request still says goodbye properly.
            break session
                .close
                .is_cancelled()
                .then(|| session.close_reason().unwrap_or(GOING_AWAY));
        }
    };
    // Sends read but not yet started: when the client closed (or the connection failed) they
    // still go to the log, as they did when each send was started before the next frame was
    // read (a client may send and close); their answers have nowhere to go. On a close the
    // server asked for (shutdown, a revoked token, too slow) they are dropped unanswered: the
    // client saw no sendack and retries them with the same `client_msg_id`.
    let unstarted = ctx.sends.len();
    if close.is_none() || broken {
        sequencer::send_batch_for_session(&state, &mut ctx.sends, mark_own(&mut ctx.own_sends))
            .await;
    }
    tracing::debug!(
        session = session.id,
        sends_in_flight = MAX_IN_FLIGHT - in_flight.available_permits(),
        unstarted,
        "session loop ended"
    );
    // Unregistered first: nothing more is pushed to a session that is closing (it would
    // count as dropped, and hold its place among the user's sessions a while longer).
    drop(registered);
    // The close frame and, at the same time, what the client still sends: a client that is
    // not reading holds the close frame back, and one whose frames stay unread when the
    // socket goes gets a reset (`drain`). Not after a frame the server could not read: the
    // stream ends at a read error.
    let drain_too = close.is_some() && !broken;
    let finishing = w.finish(close);
    if drain_too {
        let mut looked = 0;
        let late = |msg: &WsMessage| {
            looked += 1;
            if looked <= LATE_FRAMES {
                ctx.late_cursor(msg);
            }
        };
        tokio::join!(finishing, drain(&mut stream, late));
    } else {
        finishing.await;
    }
    // Sends in flight finish in the log and the applier (their appends are already queued);
    // their answers are dropped: closing the reply channel means none waits to deliver one.
    drop(replies);
    state.metrics.ws_sessions.dec();
    if catching_up {
        state.metrics.ws_catching_up.dec();
    }
}
