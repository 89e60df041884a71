//! `POST /v1/channels/{id}/read` and `/ack`: move the caller's cursors forward (never back).
//! Written at once (not coalesced like WebSocket acks), so the answer reflects them. A read
//! that moves the caller's read position is then told to each of their online sessions.

use std::sync::Arc;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use tidings_projections::Event;

use super::messages::readable;
use super::{ApiJson, ApiPath};
use crate::render::channel_ref;
use crate::server::auth::{Caller, resolve};
use crate::server::error::ApiResult;
use crate::server::state::AppState;

/// Body of `/read` and `/ack`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SeqBody {
    /// Everything up to this seq (cumulative).
    pub(crate) seq: u64,
}

/// The caller's cursors in a channel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Cursors {
    /// The channel, as the caller refers to it.
    pub(crate) channel: String,
    /// Everything up to this seq was delivered.
    pub(crate) delivered_seq: u64,
    /// Everything up to this seq was read.
    pub(crate) read_seq: u64,
}

async fn advance(
    state: &Arc<AppState>,
    caller: &Caller,
    id: &str,
    seq: u64,
    read: bool,
) -> ApiResult<axum::Json<Cursors>> {
    let me = caller.require_user()?.to_owned();
    let channel = resolve(caller, id)?;
    // Members move their own cursors even in a banned group: sync hands them its backlog
    // (`messages::plan_sync`), which they must be able to acknowledge.
    if !tidings_projections::permissions::can_move_cursor(&state.proj().state, &me, &channel) {
        readable(state, caller, &channel)?;
    }
    let (moves, seq, read_moves) = {
        let p = state.proj();
        let seq = seq.min(p.state.heads.last_seq(&channel));
        let cur = p.state.cursors.get(&me, &channel);
        // A read implies delivery, and the read cursor may be ahead of the delivered one (a
        // send moves the sender's read only): a read below `cur.read` can still move it.
        let moves = if read {
            seq > cur.read || seq > cur.delivered
        } else {
            seq > cur.delivered
        };
        // Past what the user's sessions were told: the read in the projections and a
        // WebSocket read not yet written.
        let read_moves = read && seq > cur.read.max(state.acks.read(&me, &channel));
        (moves, seq, read_moves)
    };
    if moves {
        let offset = state
            .emit(Event::CursorAdvanced {
                uid: me.clone(),
                channel: channel.clone(),
                delivered_seq: (!read).then_some(seq),
                read_seq: read.then_some(seq),
            })
            .await?;
        state.metrics.cursor_events.inc();
        if read_moves {
            state.push_applied_read(&me, &channel, seq, offset);
        }
    }
    let cur = state.proj().state.cursors.get(&me, &channel);
    Ok(axum::Json(Cursors {
        channel: channel_ref(&channel, Some(&me)),
        delivered_seq: cur.delivered,
        read_seq: cur.read,
    }))
}

/// Marks messages up to `seq` as read (and delivered).
#[utoipa::path(post, path = "/v1/channels/{id}/read", tag = "cursors",
    params(("id" = String, Path, description = "Group id or @uid")), request_body = SeqBody,
    responses((status = 200, body = Cursors), (status = 403, body = super::openapi::ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn read(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SeqBody>,
) -> ApiResult<axum::Json<Cursors>> {
    advance(&state, &caller, &id, body.seq, true).await
}

/// Marks messages up to `seq` as delivered.
#[utoipa::path(post, path = "/v1/channels/{id}/ack", tag = "cursors",
    params(("id" = String, Path, description = "Group id or @uid")), request_body = SeqBody,
    responses((status = 200, body = Cursors), (status = 403, body = super::openapi::ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn ack(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SeqBody>,
) -> ApiResult<axum::Json<Cursors>> {
    advance(&state, &caller, &id, body.seq, false).await
}
