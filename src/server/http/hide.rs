//! `POST /v1/conversations/{id}/hide` and `/clear`: the caller's own view of a conversation
//! ("delete chat", "clear history"). Hiding leaves it out of the caller's conversation list
//! until a message after the seq it hides as of (the one the caller's client showed, or the
//! head the server read when it took the request; the event carries it, so a message sequenced
//! after it but applied first is never covered); clearing drops its messages up to a seq from
//! the caller's history, sync, catch-up and changes, and counts them as read and delivered
//! (the cursors projection's `hide` and `clear`). Other members see no change. Written at once,
//! as the cursor calls are, so the answer reflects them. A clear moves the caller's read
//! position too: their online sessions are told of it as of a read.

use std::sync::Arc;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use tidings_projections::Event;
use tidings_projections::conversations::is_listed;
use tidings_projections::permissions::can_move_cursor;

use super::messages::readable;
use super::{ApiOptionalJson, ApiPath};
use crate::render::channel_ref;
use crate::server::auth::{Caller, resolve};
use crate::server::error::ApiResult;
use crate::server::state::AppState;

/// Body of `/clear` (optional: none, or `null`, clears the whole conversation).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClearBody {
    /// Clear up to and including this seq. Default: the conversation's last seq; a seq past
    /// it is taken as it (messages sent later are never cleared in advance).
    pub(crate) seq: Option<u64>,
}

/// Body of `/hide` (optional: none, or `null`, hides the conversation as of its last seq).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HideBody {
    /// Hide as of this seq: the last message the caller saw. A message after it keeps the
    /// conversation listed, also one sent while the request was on its way. Default: the
    /// conversation's last seq; a seq past it is taken as it (a hide never covers messages
    /// sent later).
    pub(crate) seq: Option<u64>,
}

/// The caller's view of a conversation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ConversationState {
    /// The channel, as the caller refers to it.
    pub(crate) channel: String,
    /// The channel's last seq.
    pub(crate) last_seq: u64,
    /// Messages up to this seq are cleared for the caller.
    pub(crate) cleared_seq: u64,
    /// Everything up to this seq was read.
    pub(crate) read_seq: u64,
    /// Everything up to this seq was delivered.
    pub(crate) delivered_seq: u64,
    /// Whether the caller's conversation list leaves it out until its next message (hidden,
    /// or no message yet).
    pub(crate) hidden: bool,
}

/// The caller and the canonical channel, when the conversation is the caller's: a member of
/// the group, or one of a person channel's pair. A member of a banned group may hide or clear
/// it (as they may move its cursors: it is their list and their backlog); anyone else (a
/// member who left, a deleted group) is answered as a history read is: `not_member`.
fn own_conversation(state: &AppState, caller: &Caller, id: &str) -> ApiResult<(String, String)> {
    let me = caller.require_user()?.to_owned();
    let channel = resolve(caller, id)?;
    if !can_move_cursor(&state.proj().state, &me, &channel) {
        readable(state, caller, &channel)?;
    }
    Ok((me, channel))
}

fn view(state: &AppState, me: &str, channel: &str) -> ConversationState {
    let p = state.proj();
    let last_seq = p.state.heads.last_seq(channel);
    let cur = p.state.cursors.get(me, channel);
    ConversationState {
        channel: channel_ref(channel, Some(me)),
        last_seq,
        cleared_seq: cur.cleared,
        read_seq: cur.read,
        delivered_seq: cur.delivered,
        // What the list shows (`conversations::is_listed`: also a group re-created under this
        // id before its first message).
        hidden: !is_listed(&p.state, me, channel),
    }
}

/// Hides the conversation from the caller's list until a message after `seq` (default: its last
/// message).
#[utoipa::path(post, path = "/v1/conversations/{id}/hide", tag = "conversations",
    params(("id" = String, Path, description = "Group id or @uid")), request_body = Option<HideBody>,
    responses((status = 200, body = ConversationState), (status = 400, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn hide(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiOptionalJson(body): ApiOptionalJson<Option<HideBody>>,
) -> ApiResult<axum::Json<ConversationState>> {
    let (me, channel) = own_conversation(&state, &caller, &id)?;
    // The body is optional: none (or `null`) hides as of the last seq applied now.
    let asked = body.and_then(|b| b.seq);
    let up_to = {
        let p = state.proj();
        let last = p.state.heads.last_seq(&channel);
        // Never past the head: a hide must not cover messages sent after it.
        let seq = asked.map_or(last, |s| s.min(last));
        // Nothing is written for a conversation already out of the list: hidden at its last
        // seq, or without a message of its own (a person channel with anyone, which would only
        // add a cursor; a group re-created under its id before its first message). Nor for a
        // hide as of a seq below the head: a later message is already there, which would keep
        // it listed.
        (seq == last && is_listed(&p.state, &me, &channel)).then_some(seq)
    };
    // The event carries the seq: a message sequenced after this read but applied before the
    // event keeps the conversation listed (with the head read at apply time, the hide covered
    // it until the next message).
    if let Some(up_to_seq) = up_to {
        state
            .emit(Event::ConversationHidden {
                uid: me.clone(),
                channel: channel.clone(),
                up_to_seq: Some(up_to_seq),
            })
            .await?;
    }
    Ok(axum::Json(view(&state, &me, &channel)))
}

/// Clears the caller's history of the conversation up to `seq` (default: its last message).
#[utoipa::path(post, path = "/v1/conversations/{id}/clear", tag = "conversations",
    params(("id" = String, Path, description = "Group id or @uid")), request_body = Option<ClearBody>,
    responses((status = 200, body = ConversationState), (status = 400, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn clear(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiOptionalJson(body): ApiOptionalJson<Option<ClearBody>>,
) -> ApiResult<axum::Json<ConversationState>> {
    let (me, channel) = own_conversation(&state, &caller, &id)?;
    // The body is optional: none (or `null`) clears up to the last message.
    let asked = body.and_then(|b| b.seq);
    // Never past the head: a clear must not swallow messages sent after it. Nothing is
    // written when the clear point would not move (it only moves forward).
    let (up_to, read_moves) = {
        let p = state.proj();
        let last = p.state.heads.last_seq(&channel);
        let seq = asked.map_or(last, |s| s.min(last));
        let cur = p.state.cursors.get(&me, &channel);
        // The cleared messages count as read: past what the user's sessions were told (the
        // read in the projections, a WebSocket read not yet written), it is told as a read.
        let read_moves = seq > cur.read.max(state.acks.read(&me, &channel));
        ((seq > cur.cleared).then_some(seq), read_moves)
    };
    if let Some(up_to_seq) = up_to {
        let offset = state
            .emit(Event::ConversationCleared {
                uid: me.clone(),
                channel: channel.clone(),
                up_to_seq,
            })
            .await?;
        if read_moves {
            state.push_applied_read(&me, &channel, up_to_seq, offset);
        }
    }
    Ok(axum::Json(view(&state, &me, &channel)))
}
