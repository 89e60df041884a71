//! Editing a message: `PATCH /v1/channels/{id}/messages/{seq}` with a new payload, or a
//! WebSocket `edit` frame ([`edit_message`] serves both).
//!
//! Decisions (where the tracker said nothing; the README's API table says the same):
//! - **Who:** the message's sender, while they may still send into the channel (a member, the
//!   group neither banned, disbanded nor send-banned, not on a deny list, on an allowlist where
//!   there is one) and with a token still valid — checked under the sequencer's lock as a send
//!   is, so an edit checked before a revocation or a narrowing change was applied is written
//!   before it, or refused — the lock is held until the edit is enqueued, not across its
//!   fsync (`AppState::emit_checked`). And the admin (moderation: an app server replacing a
//!   message's text), in any channel that holds the message but a banned group (403
//!   `channel_banned`: its members would get the new payload in an `edit` frame, and some of
//!   them are not owed the message); its frames name `:admin` in `by`.
//! - **Not after a recall:** 409 `message_recalled` (checked again under the lock, so an edit
//!   racing a recall is written before it or refused). The recall purges the message's
//!   payloads, and an edit after it would write one back.
//! - **Not after its expiry:** a message whose send lies below the log's first offset (its
//!   segment deleted by the retention, or by hand) is 404 `message_expired`, as for a recall
//!   (`load_message`). An edit that races the deletion of the segment is written (nothing
//!   orders the two), and told by `/v1/changes` as the notice alone.
//! - **Limits:** the payload is checked as a send's (`limits.max_payload_bytes`, JSON that can
//!   be read back); a user's edit is charged to their send rate.
//! - **What changes:** every edit stays in the log; history, sync, catch-up, `/v1/changes` and
//!   the conversation preview (when it is the channel's last message) show the latest, marked
//!   `"edited": true`; online members' sessions (the editor's own included) get an `edit`
//!   frame — a session still catching up once it is live, as a `recall` frame; a member who
//!   cleared the conversation past the message gets it too (a client drops what it cleared).
//!   The message keeps its seq, id, sender and `ts`.

use std::sync::Arc;

use axum::extract::State;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tidings_projections::Event;
use tidings_projections::permissions::check_send;

use super::messages::{load_message, message_expired, payload_bytes, present, readable};
use super::{ApiJson, ApiPath};
use crate::render::channel_ref;
use crate::server::auth::{ADMIN_ACTOR, Authenticated, Caller, resolve};
use crate::server::error::{ApiError, ApiResult};
use crate::server::state::AppState;

/// Body of `PATCH /v1/channels/{id}/messages/{seq}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EditMessage {
    /// The new payload: any JSON value, `null` included.
    #[schema(value_type = Object)]
    #[serde(default, deserialize_with = "present")]
    pub(crate) payload: Option<Box<RawValue>>,
    /// The new payload as bytes, base64-encoded (instead of `payload`).
    pub(crate) payload_b64: Option<String>,
}

/// Answer of an edit.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Edited {
    /// The channel, as the caller refers to it.
    pub(crate) channel: String,
    /// The message's seq.
    pub(crate) seq: u64,
    /// Always true.
    pub(crate) edited: bool,
    /// The edit's log offset.
    pub(crate) offset: u64,
    /// When the edit was made (ms since the Unix epoch).
    pub(crate) ts: u64,
}

/// The answer to an edit of a recalled message.
fn recalled(seq: u64) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "message_recalled",
        format!("message {seq} was recalled: it cannot be edited"),
    )
}

/// Replaces a message's payload (its sender, or the admin); answers once the edit is durable
/// and applied.
#[utoipa::path(patch, path = "/v1/channels/{id}/messages/{seq}", tag = "messages",
    params(("id" = String, Path, description = "Group id or @uid"), ("seq" = u64, Path, description = "The message's seq")),
    request_body = EditMessage,
    responses((status = 200, body = Edited), (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody), (status = 409, body = super::openapi::ErrorBody), (status = 413, body = super::openapi::ErrorBody), (status = 429, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn edit(
    State(state): State<Arc<AppState>>,
    Authenticated { caller, token_hash }: Authenticated,
    ApiPath((id, seq)): ApiPath<(String, u64)>,
    ApiJson(body): ApiJson<EditMessage>,
) -> ApiResult<axum::Json<Edited>> {
    let channel = resolve(&caller, &id)?;
    readable(&state, &caller, &channel)?;
    let (payload, flags) = payload_bytes(&state, body.payload, body.payload_b64)?;
    edit_message(&state, &caller, token_hash, &channel, seq, (payload, flags))
        .await
        .map(axum::Json)
}

/// Replaces the payload of `seq` in `channel` (resolved, and readable by `caller`) with
/// `payload` (checked already), over HTTP or a WebSocket `edit` frame; answers once the edit
/// is durable and applied. `token_hash`: the caller's token, checked again under the
/// sequencer's lock (`None` for the admin). A user's edit is charged to their send rate, once
/// it passed the checks before the lock.
pub(crate) async fn edit_message(
    state: &Arc<AppState>,
    caller: &Caller,
    token_hash: Option<Bytes>,
    channel: &str,
    seq: u64,
    (payload, flags): (Bytes, u32),
) -> ApiResult<Edited> {
    let channel = channel.to_owned();
    let m = load_message(state, &channel, seq).await?;
    let by = match caller {
        Caller::Admin => ADMIN_ACTOR.to_owned(),
        Caller::User(me) if *me == m.from => me.clone(),
        Caller::User(_) => {
            return Err(ApiError::forbidden(
                "forbidden",
                "only the sender or the admin may edit a message",
            ));
        }
    };
    if m.recalled {
        return Err(recalled(seq));
    }
    if let Caller::User(me) = caller {
        state.charge_user_send(me, payload.len())?;
    }
    let event = Event::MessageEdited {
        channel: channel.clone(),
        seq,
        by,
        payload,
        flags,
    };
    let ch = channel.clone();
    let (app, sent_at) = (state.clone(), m.offset);
    let user = caller.uid().map(str::to_owned);
    let person_allowlist = state.config.person_allowlist;
    let written = state
        .emit_checked(event, move |sequencer, st, ts| {
            // Again under the lock: a recall (or the group deleted and created again) since
            // the message was loaded; a recall enqueued and not yet applied too.
            if st.heads.is_recalled(&ch, seq) || sequencer.recall_in_flight(&ch, seq).is_some() {
                return Err(recalled(seq));
            }
            if seq <= st.subs.history_from(&ch) {
                return Err(ApiError::not_found(
                    "message_not_found",
                    format!("no message {seq} in this channel"),
                ));
            }
            // Or expired since (the retention removed its segment).
            if sent_at < app.expired_below() {
                return Err(message_expired(seq));
            }
            match &user {
                Some(me) => {
                    if let Some(hash) = &token_hash {
                        sequencer.check_token(st, me, hash, ts)?;
                    }
                    check_send(st, me, &ch, person_allowlist, false)?;
                }
                // Not into a banned group: its members get the edit frame, and some of them
                // are not owed the message's payload (`/v1/changes` tells them its seq alone).
                None if st.subs.channels.get(&ch).is_some_and(|c| c.flags.ban) => {
                    return Err(ApiError::forbidden(
                        "channel_banned",
                        "the channel is banned: its messages cannot be edited",
                    ));
                }
                None => {}
            }
            Ok(true)
        })
        .await?
        .ok_or_else(|| ApiError::internal("an edit to write was not written"))?;
    Ok(Edited {
        channel: channel_ref(&channel, caller.uid()),
        seq,
        edited: true,
        offset: written.offset,
        ts: written.ts,
    })
}
