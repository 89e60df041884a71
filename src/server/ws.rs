//! The WebSocket gateway `GET /v1/ws`: JSON text frames, or CBOR binary frames for clients that
//! ask for the `tidings.cbor` subprotocol.
//!
//! A session registers for live pushes first, then catches up: it pages through every message
//! after the user's delivered cursor (256 at a time, each page written before the next is read,
//! so memory stays bounded), and goes live only when a catch-up round found nothing new and no
//! push arrived meanwhile. Live messages at or below the last seq sent in a channel are skipped,
//! so a connection sees each message once, with no gap, even when messages arrive mid-catch-up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tidings_projections::ids::{ChannelId, is_person_channel};
use tidings_projections::messages;
use tidings_projections::permissions::can_read;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::render::{cbor_frame, channel_ref, message_json};
use crate::server::auth::{Caller, authenticate, bearer, resolve};
use crate::server::delivery::{CloseReason, GOING_AWAY, Pushed, Session};
use crate::server::error::{ApiError, ApiResult};
use crate::server::http::ApiQuery;
use crate::server::limits::TokenBucket;
use crate::server::sequencer::{self, SendRequest};
use crate::server::state::AppState;

const CBOR_PROTOCOL: &str = "tidings.cbor";
const CATCH_UP_PAGE: usize = 256;
/// Sends in flight per connection; beyond it the session stops reading the socket until some
/// complete, so a client that floods sends meets TCP backpressure instead of growing memory.
const MAX_IN_FLIGHT: usize = 256;

/// Query of `GET /v1/ws`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct WsQuery {
    /// The user token (instead of the Authorization header).
    #[allow(dead_code)]
    pub(crate) token: Option<String>,
    /// Deliver missed messages first (default true). `false`: the client syncs over HTTP.
    pub(crate) catch_up: Option<bool>,
}

/// The caller of an upgrade request, taken from the header or `?token=`.
pub(crate) struct WsCaller(String);

impl FromRequestParts<Arc<AppState>> for WsCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> ApiResult<Self> {
        match authenticate(state, bearer(parts).as_deref())? {
            Caller::User(uid) => Ok(WsCaller(uid)),
            Caller::Admin => Err(ApiError::bad_request(
                "user_only",
                "WebSocket sessions are for users (a user token)",
            )),
        }
    }
}

/// Upgrades to a WebSocket session.
#[utoipa::path(get, path = "/v1/ws", tag = "websocket", params(WsQuery),
    responses((status = 101, description = "Switching to the WebSocket protocol (see the README for frames)"), (status = 401, body = crate::server::http::openapi::ErrorBody), (status = 503, body = crate::server::http::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn upgrade(
    State(state): State<Arc<AppState>>,
    WsCaller(uid): WsCaller,
    ApiQuery(q): ApiQuery<WsQuery>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    if !state.is_ready() || state.sessions_stop.is_cancelled() {
        return Err(ApiError::unavailable(
            "not_ready",
            "starting up or shutting down",
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
    let max = state.config.limits_max_frame_bytes;
    let catch_up = q.catch_up.unwrap_or(true);
    let tracker = state.ws_tasks.clone();
    Ok(ws
        .protocols([CBOR_PROTOCOL])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                let cbor = socket
                    .protocol()
                    .is_some_and(|p| p.as_bytes() == CBOR_PROTOCOL.as_bytes());
                run(state, uid, socket, cbor, catch_up).await;
                drop(permit);
            })
        })
        .into_response())
}

type Sink = SplitSink<WebSocket, WsMessage>;

/// Writes one frame in the session's encoding.
async fn send(sink: &mut Sink, frame: &Value, cbor: bool) -> Result<(), axum::Error> {
    if cbor {
        sink.send(WsMessage::Binary(cbor_frame(frame))).await
    } else {
        sink.send(WsMessage::Text(Utf8Bytes::from(frame.to_string())))
            .await
    }
}

fn error_frame(e: &ApiError, client_msg_id: Option<&str>) -> Value {
    let mut v = json!({"type": "error", "code": e.code, "message": e.message});
    if let (Some(id), Some(o)) = (client_msg_id, v.as_object_mut()) {
        o.insert("client_msg_id".into(), json!(id));
    }
    v
}

/// A client frame, parsed.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Send {
        #[serde(default)]
        client_msg_id: String,
        channel: String,
        payload: Option<Value>,
        payload_b64: Option<String>,
    },
    Ack {
        channel: String,
        seq: u64,
    },
    Read {
        channel: String,
        seq: u64,
    },
    Ping,
}

/// Parses a frame; a CBOR `payload` given as a byte string is kept as raw bytes.
fn parse(msg: &WsMessage) -> Result<Option<(ClientFrame, Option<Bytes>)>, String> {
    match msg {
        WsMessage::Text(t) => serde_json::from_str(t.as_str())
            .map(|f| Some((f, None)))
            .map_err(|e| e.to_string()),
        WsMessage::Binary(b) => {
            let mut v: ciborium::Value =
                ciborium::from_reader(&b[..]).map_err(|e| e.to_string())?;
            let mut raw = None;
            if let ciborium::Value::Map(entries) = &mut v
                && let Some(i) = entries.iter().position(|(k, val)| {
                    k.as_text() == Some("payload") && matches!(val, ciborium::Value::Bytes(_))
                })
                && let (_, ciborium::Value::Bytes(bytes)) = entries.remove(i)
            {
                raw = Some(Bytes::from(bytes));
            }
            let json: Value = v.deserialized().map_err(|e| e.to_string())?;
            serde_json::from_value(json)
                .map(|f| Some((f, raw)))
                .map_err(|e| e.to_string())
        }
        _ => Ok(None),
    }
}

struct Ctx {
    state: Arc<AppState>,
    uid: String,
    caller: Caller,
    cbor: bool,
    session: Arc<Session>,
    /// The last seq this connection has sent in each channel.
    sent_upto: HashMap<ChannelId, u64>,
    replies: mpsc::Sender<Value>,
    limiter: TokenBucket,
}

/// What the session loop does next.
enum Step {
    Close(CloseReason),
    Gone,
    Frame(WsMessage),
    Reply(Value),
    Push(Arc<Pushed>),
    Reaped,
    CatchUp,
}

impl Ctx {
    /// One page of catch-up; returns whether catch-up goes on.
    async fn catch_up_page(&mut self, sink: &mut Sink) -> Result<bool, axum::Error> {
        let plan = {
            let p = self.state.proj();
            let sent = &self.sent_upto;
            messages::plan_sync_from(
                &p.state,
                p.index_files(),
                &self.uid,
                CATCH_UP_PAGE,
                |ch, cursor| sent.get(ch).copied().unwrap_or(0).max(cursor),
            )
        };
        let plan = match plan {
            Ok((plan, _)) => plan,
            Err(e) => {
                tracing::warn!(uid = %self.uid, error = %e, "catch-up planning failed; the client can sync over HTTP");
                Vec::new()
            }
        };
        if plan.is_empty() {
            if self.session.try_go_live() {
                return Ok(false);
            }
            // Something arrived during this round: plan again.
            self.session.begin_catch_up_round();
            return Ok(true);
        }
        let msgs = match messages::load(&self.state.log, &plan).await {
            Ok(m) => m,
            Err(e) => {
                let err: ApiError = e.into();
                send(sink, &error_frame(&err, None), self.cbor).await?;
                return Ok(false);
            }
        };
        for m in &msgs {
            let mut frame = message_json(m, Some(&self.uid));
            if let Some(o) = frame.as_object_mut() {
                o.insert("type".into(), json!("message"));
            }
            send(sink, &frame, self.cbor).await?;
            let e = self.sent_upto.entry(m.channel.clone()).or_default();
            *e = (*e).max(m.seq);
        }
        Ok(true)
    }

    /// A live push; skipped when catch-up already sent it.
    async fn live(&mut self, sink: &mut Sink, pushed: &Pushed) -> Result<(), axum::Error> {
        if pushed.is_message {
            let sent = self.sent_upto.entry(pushed.channel.clone()).or_default();
            if pushed.seq <= *sent {
                return Ok(());
            }
            *sent = pushed.seq;
        }
        let Some(frame) = pushed.frame_for(&self.uid) else {
            return Ok(());
        };
        if self.cbor {
            sink.send(WsMessage::Binary(frame.cbor.clone())).await
        } else {
            sink.send(WsMessage::Text(Utf8Bytes::from(frame.json.clone())))
                .await
        }
    }

    /// Handles one client frame.
    async fn incoming(
        &mut self,
        sink: &mut Sink,
        msg: &WsMessage,
        tasks: &mut JoinSet<()>,
    ) -> Result<(), axum::Error> {
        let (frame, raw) = match parse(msg) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                let err = ApiError::bad_request("invalid_frame", e);
                return send(sink, &error_frame(&err, None), self.cbor).await;
            }
        };
        match frame {
            ClientFrame::Ping => send(sink, &json!({"type": "pong"}), self.cbor).await,
            ClientFrame::Ack { channel, seq } => self.cursor(sink, &channel, seq, 0).await,
            ClientFrame::Read { channel, seq } => self.cursor(sink, &channel, 0, seq).await,
            ClientFrame::Send {
                client_msg_id,
                channel,
                payload,
                payload_b64,
            } => {
                match self.prepare_send(client_msg_id.clone(), &channel, payload, payload_b64, raw)
                {
                    Ok(req) => {
                        let (state, replies, viewer) =
                            (self.state.clone(), self.replies.clone(), self.uid.clone());
                        tasks.spawn(async move {
                            let reply = match sequencer::send(&state, req).await {
                                Ok(s) => json!({
                                    "type": "sendack",
                                    "client_msg_id": client_msg_id,
                                    "channel": channel_ref(&s.channel, Some(&viewer)),
                                    "seq": s.seq,
                                    "message_id": s.message_id,
                                    "offset": s.offset,
                                    "ts": s.ts,
                                    "duplicate": s.duplicate,
                                }),
                                Err(e) => error_frame(&e, Some(&client_msg_id)),
                            };
                            let _ = replies.send(reply).await;
                        });
                        Ok(())
                    }
                    Err(e) => send(sink, &error_frame(&e, Some(&client_msg_id)), self.cbor).await,
                }
            }
        }
    }

    /// Records an ack (delivered) or a read; coalesced into cursor events.
    async fn cursor(
        &mut self,
        sink: &mut Sink,
        channel: &str,
        delivered: u64,
        read: u64,
    ) -> Result<(), axum::Error> {
        match self.cursor_target(channel) {
            Ok(ch) => {
                self.state.metrics.acks_received.inc();
                self.state.acks.record(&self.uid, &ch, delivered, read);
                Ok(())
            }
            Err(e) => send(sink, &error_frame(&e, None), self.cbor).await,
        }
    }

    fn cursor_target(&self, channel: &str) -> ApiResult<ChannelId> {
        let ch = resolve(&self.caller, channel)?;
        if !can_read(&self.state.proj().state, &self.uid, &ch) {
            return Err(ApiError::forbidden(
                "not_member",
                "not a member of this channel",
            ));
        }
        Ok(ch)
    }

    fn prepare_send(
        &mut self,
        client_msg_id: String,
        channel: &str,
        payload: Option<Value>,
        payload_b64: Option<String>,
        raw: Option<Bytes>,
    ) -> ApiResult<SendRequest> {
        if !self.limiter.take(Instant::now()) {
            self.state.metrics.rate_limited.inc();
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more than {} sends per second on this connection",
                    self.state.config.limits_sends_per_second
                ),
            ));
        }
        crate::server::http::check_client_msg_id(&client_msg_id)?;
        let channel = resolve(&self.caller, channel)?;
        let (payload, flags) = match raw {
            Some(bytes) => {
                let max = self.state.config.limits_max_payload_bytes;
                if bytes.len() > max {
                    return Err(ApiError::too_large(format!(
                        "payload of {} bytes; the limit is {max}",
                        bytes.len()
                    )));
                }
                (bytes, 0)
            }
            None => crate::server::http::payload_bytes(&self.state, payload, payload_b64)?,
        };
        Ok(SendRequest {
            from: self.uid.clone(),
            channel,
            client_msg_id,
            payload,
            flags,
            by_admin: false,
            origin: Some(self.session.id),
        })
    }
}

async fn run(state: Arc<AppState>, uid: String, socket: WebSocket, cbor: bool, catch_up: bool) {
    state.metrics.ws_sessions.inc();
    let (session, mut queue) = {
        // Under the projections' lock: no membership change slips between reading the
        // user's groups and registering.
        let p = state.proj();
        let groups = p
            .state
            .subs
            .channels_of(&uid)
            .filter(|c| !is_person_channel(c))
            .cloned();
        state.delivery.register(
            &uid,
            groups,
            state.config.limits_session_queue,
            &state.sessions_stop,
        )
    };
    if !catch_up {
        session.begin_catch_up_round();
        session.try_go_live();
    }
    let (replies_tx, mut replies) = mpsc::channel::<Value>(1024);
    let mut ctx = Ctx {
        caller: Caller::User(uid.clone()),
        limiter: TokenBucket::new(state.config.limits_sends_per_second),
        state: state.clone(),
        uid: uid.clone(),
        cbor,
        session: session.clone(),
        sent_upto: HashMap::new(),
        replies: replies_tx,
    };
    let mut tasks: JoinSet<()> = JoinSet::new();
    let (mut sink, mut stream): (Sink, SplitStream<WebSocket>) = socket.split();
    let mut catching_up = catch_up;
    let close: Option<CloseReason> = loop {
        let step = tokio::select! {
            biased;
            () = session.close.cancelled() => Step::Close(session.close_reason().unwrap_or(GOING_AWAY)),
            frame = stream.next(), if tasks.len() < MAX_IN_FLIGHT => match frame {
                Some(Ok(WsMessage::Close(_))) | None => Step::Gone,
                Some(Err(e)) => {
                    tracing::debug!(session = session.id, error = %e, "WebSocket read failed");
                    Step::Gone
                }
                Some(Ok(msg)) => Step::Frame(msg),
            },
            Some(reply) = replies.recv() => Step::Reply(reply),
            Some(pushed) = queue.recv(), if !catching_up => Step::Push(pushed),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => Step::Reaped,
            () = std::future::ready(()), if catching_up => Step::CatchUp,
        };
        let done = match step {
            Step::Close(reason) => break Some(reason),
            Step::Gone => break None,
            Step::Frame(msg) => ctx.incoming(&mut sink, &msg, &mut tasks).await,
            Step::Reply(reply) => send(&mut sink, &reply, cbor).await,
            Step::Push(pushed) => ctx.live(&mut sink, &pushed).await,
            Step::Reaped => Ok(()),
            Step::CatchUp => ctx
                .catch_up_page(&mut sink)
                .await
                .map(|going| catching_up = going),
        };
        if let Err(e) = done {
            tracing::debug!(session = session.id, error = %e, "WebSocket write failed");
            break None;
        }
    };
    tracing::debug!(
        session = session.id,
        tasks = tasks.len(),
        "session loop ended"
    );
    if let Some(reason) = close {
        let frame = CloseFrame {
            code: reason.code,
            reason: Utf8Bytes::from_static(reason.reason),
        };
        let _ = sink.send(WsMessage::Close(Some(frame))).await;
    }
    let _ = sink.close().await;
    // Sends in flight finish (their appends are already queued); their answers are dropped:
    // close the reply channel first so none of them waits to deliver one.
    drop(replies);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tasks.shutdown().await;
    }
    {
        let p = state.proj();
        let groups = p
            .state
            .subs
            .channels_of(&uid)
            .filter(|c| !is_person_channel(c))
            .cloned();
        state.delivery.unregister(&session, groups);
    }
    state.metrics.ws_sessions.dec();
}
