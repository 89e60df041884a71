//! Messages: send, history pages, recall, trace.
//!
//! A message whose send lies below the log's first offset has *expired* (its segment deleted
//! by the retention, or by hand: `tidings_projections::messages`' module doc): history pages
//! leave it out, its channel's expired floor acting as a lower floor as a clear does (an
//! ascending page from below it starts after it, a descending one stops there with `has_more:
//! false`: [`plan_page`]); recall, edit and trace answer 404 `message_expired`. On a tiered data
//! directory messages expire below where the object store's history starts
//! ([`AppState::expiring`], `data::expires_with_tier`: the retention removed them from the
//! store too, or they were gone before its first upload); above it they are in the store, not
//! gone, and a read of them answers 503 `history_unavailable` while the store is not read (a
//! tiered directory started without `tier.url` never expires any:
//! `DataDir::expires_below_log_start`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use tidings_log::Log;
use tidings_projections::ids::ChannelId;
use tidings_projections::messages::{Message, MessageRef};
use tidings_projections::permissions::can_read;
use tidings_projections::{Event, FLAG_JSON_PAYLOAD, Projections, messages, trace as tr};

use super::json_check::JsonCheck;
use super::users::valid_uid;
use super::{ApiJson, ApiPath, ApiQuery, page_limit};
use crate::render::{channel_ref, message_raw};
use crate::server::auth::{ADMIN_ACTOR, Authenticated, Caller, resolve};
use crate::server::error::{ApiError, ApiResult};
use crate::server::sequencer::{self, SendRequest, Sent};
use crate::server::state::AppState;

/// Body of `POST /v1/messages`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PostMessage {
    /// A group channel id, or `@uid` for a person channel (the admin: `p:a:b`).
    pub(crate) channel: String,
    /// The client's id for this send: a retry with the same id returns the original message.
    /// Absent, `null` or `""`: none (each such send is a new message).
    #[serde(default)]
    pub(crate) client_msg_id: Option<String>,
    /// Any JSON value, `null` included.
    #[schema(value_type = Object)]
    #[serde(default, deserialize_with = "present")]
    pub(crate) payload: Option<Box<RawValue>>,
    /// Bytes, base64-encoded (instead of `payload`).
    pub(crate) payload_b64: Option<String>,
    /// The sender (admin key only).
    pub(crate) from: Option<String>,
}

/// Answer of `POST /v1/messages`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MessageSent {
    /// The channel, as the caller refers to it.
    pub(crate) channel: String,
    /// The message's seq in the channel (from 1).
    pub(crate) seq: u64,
    /// The server's message id.
    pub(crate) message_id: u64,
    /// Its log offset.
    pub(crate) offset: u64,
    /// When it was accepted (ms since the Unix epoch).
    pub(crate) ts: u64,
    /// True when this answers a retry: the original message, not a new one.
    pub(crate) duplicate: bool,
}

/// For `#[serde(default, deserialize_with = "present")]` on an `Option` field: a field given as
/// `null` is `Some` of that null, and only an absent field is `None` (`Option`'s own impl reads
/// `null` as absent, and a payload may be any JSON value, `null` too).
pub(crate) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The answer to a send with both payload forms, or neither.
pub(crate) fn one_payload_form() -> ApiError {
    ApiError::bad_request(
        "invalid_request",
        "give exactly one of payload (JSON) and payload_b64 (bytes)",
    )
}

/// Decodes a payload given as JSON or base64 and checks its size.
pub(crate) fn payload_bytes(
    state: &AppState,
    payload: Option<Box<RawValue>>,
    payload_b64: Option<String>,
) -> ApiResult<(Bytes, u32)> {
    // `"payload": null` beside `payload_b64` stands for no JSON payload, as it did before a
    // null payload was stored: clients that write every field of a send write it so.
    let payload = payload.filter(|v| payload_b64.is_none() || v.get() != "null");
    let max = state.config.limits_max_payload_bytes;
    let too_large =
        |n: usize| ApiError::too_large(format!("payload of {n} bytes; the limit is {max}"));
    // The size first: an oversized payload is `payload_too_large` whatever else is wrong
    // with it, and is not read through.
    match (&payload, &payload_b64) {
        (Some(v), None) if v.get().len() > max => return Err(too_large(v.get().len())),
        // At least this many bytes once decoded (up to two of padding less).
        (None, Some(b)) if (b.len() / 4 * 3).saturating_sub(2) > max => {
            return Err(too_large((b.len() / 4 * 3).saturating_sub(2)));
        }
        _ => {}
    }
    let (bytes, flags) = match (payload, payload_b64) {
        (Some(v), None) => (json_payload(&v)?, FLAG_JSON_PAYLOAD),
        (None, Some(b)) => (
            Bytes::from(B64.decode(b.as_bytes()).map_err(|e| {
                ApiError::bad_request("invalid_payload", format!("payload_b64: {e}"))
            })?),
            0,
        ),
        _ => return Err(one_payload_form()),
    };
    if bytes.len() > max {
        return Err(too_large(bytes.len()));
    }
    Ok((bytes, flags))
}

/// A JSON payload, stored as the client wrote it (not printed again). It must be a value the
/// server can read back as JSON when it renders the message: the frame's parser only
/// delimited it, and accepts what a JSON tree does not (a lone UTF-16 surrogate escape, a
/// number out of `f64` range, arrays and objects nested more than 127 deep).
fn json_payload(raw: &RawValue) -> ApiResult<Bytes> {
    if let Err(e) = serde_json::from_str::<JsonCheck>(raw.get()) {
        return Err(ApiError::bad_request(
            "invalid_payload",
            format!("payload: {e}"),
        ));
    }
    Ok(Bytes::copy_from_slice(raw.get().as_bytes()))
}

/// The longest `client_msg_id` a send may carry, in bytes.
pub(crate) const MAX_CLIENT_MSG_ID: usize = 128;

pub(crate) fn check_client_msg_id(id: &str) -> ApiResult<()> {
    if id.len() > MAX_CLIENT_MSG_ID {
        return Err(ApiError::bad_request(
            "invalid_request",
            "client_msg_id is longer than 128 bytes",
        ));
    }
    Ok(())
}

/// Sends a message; answers once it is durable.
#[utoipa::path(post, path = "/v1/messages", tag = "messages", request_body = PostMessage,
    responses((status = 201, body = MessageSent), (status = 400, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody), (status = 409, body = super::openapi::ErrorBody), (status = 413, body = super::openapi::ErrorBody), (status = 429, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn post_message(
    State(state): State<Arc<AppState>>,
    Authenticated { caller, token_hash }: Authenticated,
    ApiJson(body): ApiJson<PostMessage>,
) -> ApiResult<(StatusCode, axum::Json<MessageSent>)> {
    let (from, by_admin) = match (&caller, body.from) {
        // A `from` that is not a user id is `invalid_uid`, as a uid in a path or a list is.
        (Caller::Admin, Some(from)) => {
            valid_uid(&from)?;
            (from, true)
        }
        (Caller::Admin, None) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "the admin names the sender in \"from\"",
            ));
        }
        (Caller::User(me), None) => (me.clone(), false),
        (Caller::User(me), Some(from)) if &from == me => (from, false),
        (Caller::User(_), Some(_)) => {
            return Err(ApiError::forbidden(
                "forbidden",
                "only the admin may send as another user",
            ));
        }
    };
    let client_msg_id = body.client_msg_id.unwrap_or_default();
    check_client_msg_id(&client_msg_id)?;
    let channel = resolve(&caller, &body.channel)?;
    let (payload, flags) = match payload_bytes(&state, body.payload, body.payload_b64) {
        Ok(stored) => stored,
        Err(e) => {
            // A retry of a send stored under a larger limit is answered as any retry is.
            let Some(sent) = stored_retry(&state, &e, &from, &channel, &client_msg_id) else {
                return Err(e);
            };
            // Charged as a duplicate answered by the sequencer is, but for its payload, which
            // is not read (nor written).
            if !by_admin {
                state.charge_user_send(&from, 0)?;
            }
            return Ok(created(&caller, sent));
        }
    };
    // Not the admin's sends as a user: an app server sending on many users' behalf is not held
    // to one user's limit (the README says so).
    if !by_admin {
        state.charge_user_send(&from, payload.len())?;
    }
    let sent = sequencer::send(
        &state,
        SendRequest {
            from,
            channel,
            client_msg_id,
            payload,
            flags,
            by_admin,
            origin: None,
            token_hash,
        },
    )
    .await?;
    Ok(created(&caller, sent))
}

/// The answer to a send, with its channel as `caller` refers to it.
fn created(caller: &Caller, sent: Sent) -> (StatusCode, axum::Json<MessageSent>) {
    (
        StatusCode::CREATED,
        axum::Json(MessageSent {
            channel: channel_ref(&sent.channel, caller.uid()),
            seq: sent.seq,
            message_id: sent.message_id,
            offset: sent.offset,
            ts: sent.ts,
            duplicate: sent.duplicate,
        }),
    )
}

/// For a send refused with `refused`: the original message when the refusal is
/// `payload_too_large` and the send retries one already stored (the same sender,
/// `client_msg_id` and canonical `channel`), answered as a duplicate
/// ([`sequencer::stored_retry`]). `limits.max_payload_bytes` may have been lowered since the
/// original was taken; a new send of that size is still refused.
pub(crate) fn stored_retry(
    state: &AppState,
    refused: &ApiError,
    from: &str,
    channel: &str,
    client_msg_id: &str,
) -> Option<Sent> {
    if refused.status != StatusCode::PAYLOAD_TOO_LARGE {
        return None;
    }
    sequencer::stored_retry(state, from, channel, client_msg_id)
}

/// Query of `GET /v1/channels/{id}/messages`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Messages after this seq, ascending.
    pub(crate) after_seq: Option<u64>,
    /// Messages before this seq, descending. (Neither: the newest page, descending.)
    pub(crate) before_seq: Option<u64>,
    /// At most this many: 1 to 1000 (default 50; a larger limit is taken as 1000).
    #[param(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "super::saturating_limit")]
    pub(crate) limit: Option<usize>,
}

/// A page of messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MessagePage {
    /// The messages: `{channel, seq, message_id, from, client_msg_id, ts, payload | payload_b64}`,
    /// or `{…, recalled: true}` without payload.
    #[schema(value_type = Vec<Object>)]
    pub(crate) messages: Vec<Box<RawValue>>,
    /// Whether there are more in that direction.
    pub(crate) has_more: bool,
}

/// Checks that the caller may read the channel (the admin may read any).
pub(crate) fn readable(state: &AppState, caller: &Caller, channel: &str) -> ApiResult<()> {
    readable_in(&state.proj().state, caller, channel)
}

/// [`readable`] against `state` (the state held under the sequencer's lock).
fn readable_in(
    state: &tidings_projections::State,
    caller: &Caller,
    channel: &str,
) -> ApiResult<()> {
    let Caller::User(me) = caller else {
        return admin_readable(state, channel);
    };
    if can_read(state, me, channel) {
        return Ok(());
    }
    // A member of a banned group is told so; anyone else hears the same whether the group
    // exists or not (as `GET /v1/channels/{id}` answers): a user learns nothing of groups
    // they are not in.
    if state
        .subs
        .channels
        .get(channel)
        .is_some_and(|c| c.flags.ban && c.members.contains(me.as_str()))
    {
        return Err(ApiError::forbidden(
            "channel_banned",
            "the channel is banned: its history is closed",
        ));
    }
    Err(ApiError::forbidden(
        "not_member",
        "not a member of this channel",
    ))
}

/// Whether the admin may read `channel`: any channel that exists or has had messages (a
/// deleted group's history too); one that never did is not found.
fn admin_readable(state: &tidings_projections::State, channel: &str) -> ApiResult<()> {
    if state.subs.channels.contains_key(channel) || state.heads.heads.contains_key(channel) {
        return Ok(());
    }
    Err(ApiError::not_found(
        "channel_not_found",
        format!("no channel {channel:?}"),
    ))
}

/// A page of a channel's history.
#[utoipa::path(get, path = "/v1/channels/{id}/messages", tag = "messages",
    params(("id" = String, Path, description = "Group id or @uid"), PageQuery),
    responses((status = 200, body = MessagePage), (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_messages(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<axum::Json<MessagePage>> {
    let channel = resolve(&caller, &id)?;
    readable(&state, &caller, &channel)?;
    let limit = page_limit(q.limit, 50)? as u64;
    let (plan, has_more, descending) = {
        let p = state.proj();
        let last = p.state.heads.last_seq(&channel);
        // Below the floor: messages cleared for the caller, and those of an earlier group under
        // this id (deleted and created again), which the new group's members may not read.
        let cleared = caller
            .uid()
            .map_or(0, |me| p.state.cursors.get(me, &channel).cleared)
            .max(p.state.subs.history_from(&channel));
        // `top`: the highest seq the query asks for (forward paging stops there).
        let (lo, hi, descending, top) = match (q.after_seq, q.before_seq) {
            // Forward from the floor when `after_seq` is below it: a page counted from
            // `after_seq` could end below the floor and come back empty with more to read.
            // With `before_seq` too: the messages between the two.
            (Some(after), before) => {
                let lo = after.max(cleared).saturating_add(1);
                let top = before.map_or(last, |b| b.saturating_sub(1)).min(last);
                (lo, lo.saturating_add(limit - 1).min(top), false, top)
            }
            (None, before) => {
                let hi = before.map_or(last, |b| b.saturating_sub(1)).min(last);
                (hi.saturating_sub(limit - 1).max(1), hi, true, hi)
            }
        };
        let lo = lo.max(cleared.saturating_add(1));
        let page = Page {
            lo,
            hi,
            descending,
            top,
            limit,
        };
        let (plan, floor, lo, hi) = plan_page(&p, &channel, page, cleared, state.expired_below())?;
        let has_more = if descending {
            lo > floor + 1 && hi > 0
        } else {
            hi < top
        };
        (plan, has_more, descending)
    };
    let (mut msgs, cut) = load_page(&state.log, &plan, descending, state.expiring()).await?;
    if descending {
        msgs.reverse();
    }
    let viewer = caller.uid();
    Ok(axum::Json(MessagePage {
        messages: msgs.iter().map(|m| message_raw(m, viewer)).collect(),
        has_more: has_more || cut,
    }))
}

/// The seqs a history page asks for: `[lo, hi]`, at most `limit`, ascending up to `top` (the
/// highest seq the query asks for) or descending from `hi`.
#[derive(Debug, Clone, Copy)]
struct Page {
    lo: u64,
    hi: u64,
    descending: bool,
    top: u64,
    limit: u64,
}

/// The plan of a history page of `channel` above `cleared` (the caller's floor), less its
/// expired messages (`tidings_projections::messages`' module doc: below `expired_below`, the
/// log's first offset), with the floor the page ends at and its bounds once moved above it.
///
/// The expired floor is a floor as `cleared` is: found (from the message index) only when the
/// page planned an expired message first. An ascending page from below it starts after it —
/// counted from below, it could come back empty with more to read — and a descending one stops
/// there. A descending page whose first message is retained looks at the one just below it
/// (one index lookup): expired, it is the floor, and the page the last.
fn plan_page(
    p: &Projections,
    channel: &str,
    page: Page,
    cleared: u64,
    expired_below: u64,
) -> ApiResult<(Vec<MessageRef>, u64, u64, u64)> {
    let Page {
        mut lo,
        mut hi,
        descending,
        top,
        limit,
    } = page;
    let (state, files) = (&p.state, p.index_files());
    let mut plan = messages::plan_range(state, files, channel, lo, hi)?;
    let mut floor = cleared;
    if messages::begins_expired(state, channel, lo, &plan, expired_below) {
        let expired = messages::expired_floor(state, files, channel, cleared, expired_below)?;
        floor = floor.max(expired);
        lo = lo.max(floor.saturating_add(1));
        if descending {
            plan.retain(|m| m.seq >= lo);
        } else {
            hi = lo.saturating_add(limit - 1).min(top);
            plan = messages::plan_range(state, files, channel, lo, hi)?;
        }
    } else if descending
        && lo > floor.saturating_add(1)
        && (expired_below > 0 || lo - 1 <= state.index.dropped_through(channel))
    {
        let below = messages::plan_range(state, files, channel, lo - 1, lo - 1)?;
        if messages::begins_expired(state, channel, lo - 1, &below, expired_below) {
            floor = lo - 1;
        }
    }
    Ok((plan, floor, lo, hi))
}

/// Payload bytes at which a page of messages stops (after at least one message): a page of
/// 1,000 messages of 64 KiB would be a 64 MB answer held in memory whole. `has_more` says the
/// page was cut.
pub(crate) const PAGE_PAYLOAD_BYTES: usize = 4 << 20;

/// Loads planned messages up to [`PAGE_PAYLOAD_BYTES`] of payload, from the start of `plan`,
/// or from its end (`newest_first`: a descending page keeps its newest). Returns them in plan
/// order, and whether the budget cut the plan short. When `expiring` ([`AppState::expiring`]),
/// a message that expired since the plan was made is left out.
pub(crate) async fn load_page(
    log: &Log,
    plan: &[MessageRef],
    newest_first: bool,
    expiring: bool,
) -> ApiResult<(Vec<Message>, bool)> {
    // Loaded a few at a time, so a cut page reads little past its end.
    const CHUNK: usize = 64;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut done = 0usize;
    let mut cut = false;
    'chunks: while done < plan.len() {
        let n = CHUNK.min(plan.len() - done);
        let part = if newest_first {
            &plan[plan.len() - done - n..plan.len() - done]
        } else {
            &plan[done..done + n]
        };
        done += n;
        let mut msgs = messages::load_retained(log, part, expiring).await?;
        if newest_first {
            msgs.reverse();
        }
        for m in msgs {
            let size = m.payload.as_ref().map_or(0, |p| p.len());
            if !out.is_empty() && bytes.saturating_add(size) > PAGE_PAYLOAD_BYTES {
                cut = true;
                break 'chunks;
            }
            bytes = bytes.saturating_add(size);
            out.push(m);
        }
    }
    if newest_first {
        out.reverse();
    }
    Ok((out, cut))
}

/// Message `seq` of `channel` as history shows it (404 `message_not_found` when the channel
/// holds none: a seq past its last, or one of an earlier group under the id; 404
/// `message_expired` when its send lies below the log's first offset, as the plan finds it or
/// as the load does once the log's start moved past it: `tidings_projections::messages`'
/// module doc). Recall and edit look their message up so.
pub(crate) async fn load_message(state: &AppState, channel: &str, seq: u64) -> ApiResult<Message> {
    let (plan, absent) = {
        let p = state.proj();
        // A message of an earlier group under this id is not this group's (not found).
        if seq <= p.state.subs.history_from(channel) {
            (Vec::new(), no_message(seq))
        } else {
            let plan = messages::plan_range(&p.state, p.index_files(), channel, seq, seq)?;
            (plan, not_planned(&p.state, channel, seq))
        }
    };
    let Some(planned) = plan.first() else {
        return Err(absent);
    };
    if messages::is_expired(planned, state.expired_below()) {
        return Err(message_expired(seq));
    }
    messages::load_retained(&state.log, &plan, state.expiring())
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| message_expired(seq))
}

/// Answer of a recall.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Recalled {
    /// The channel, as the caller refers to it.
    pub(crate) channel: String,
    /// The message's seq.
    pub(crate) seq: u64,
    /// Always true.
    pub(crate) recalled: bool,
}

/// Recalls a message (its sender, or the admin).
#[utoipa::path(delete, path = "/v1/channels/{id}/messages/{seq}", tag = "messages",
    params(("id" = String, Path, description = "Group id or @uid"), ("seq" = u64, Path, description = "The message's seq")),
    responses((status = 200, body = Recalled), (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody), (status = 429, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn recall(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((id, seq)): ApiPath<(String, u64)>,
) -> ApiResult<axum::Json<Recalled>> {
    let channel = resolve(&caller, &id)?;
    recall_message(&state, &caller, &channel, seq)
        .await
        .map(axum::Json)
}

/// Recalls `seq` of `channel` (resolved) for `caller`, over HTTP or a WebSocket `recall`
/// frame; answers once the recall is durable and applied (at once when it was recalled
/// already).
pub(crate) async fn recall_message(
    state: &Arc<AppState>,
    caller: &Caller,
    channel: &str,
    seq: u64,
) -> ApiResult<Recalled> {
    let channel = channel.to_owned();
    readable(state, caller, &channel)?;
    let m = load_message(state, &channel, seq).await?;
    let already = m.recalled;
    let by = match caller {
        Caller::Admin => ADMIN_ACTOR.to_owned(),
        Caller::User(me) if *me == m.from => me.clone(),
        Caller::User(_) => {
            return Err(ApiError::forbidden(
                "forbidden",
                "only the sender or the admin may recall a message",
            ));
        }
    };
    if !already {
        // A write to the log, as a send is (a recall of a recalled message writes nothing).
        // Until 2026-11-30 recalls were not limited.
        if let Caller::User(me) = caller {
            state.charge_user_send(me, 0)?;
        }
        // Checked again under the lock that orders such changes: a racing recall of the same
        // message already written makes this one nothing to write, and one expired since it
        // was loaded is refused as an edit is (the retention removes segments before its
        // `log_trimmed` event lets go of what a user could still be told of the message: a
        // recall written after that event, of a message below its start, would reach none of
        // the devices of those let go). So are the caller's rights, as an edit's are: a ban or
        // a removal applied while the message was read (from the object store, maybe) came
        // before this recall, which must not be written after it; nor one of a message of a
        // group deleted and created again meanwhile.
        let recall = Event::MessageRecalled {
            channel: channel.clone(),
            seq,
            by,
        };
        let (ch, app, sent_at, who) = (channel.clone(), state.clone(), m.offset, caller.clone());
        // Enqueued under the sequencer's lock and marked there while in flight, not applied
        // under it: sends do not wait for a recall's fsync (`AppState::emit_recall`).
        state
            .emit_recall((channel.clone(), seq), recall, move |st| {
                readable_in(st, &who, &ch)?;
                if seq <= st.subs.history_from(&ch) {
                    return Err(ApiError::not_found(
                        "message_not_found",
                        format!("no message {seq} in this channel"),
                    ));
                }
                if st.heads.is_recalled(&ch, seq) {
                    return Ok(true);
                }
                if sent_at < app.expired_below() {
                    return Err(message_expired(seq));
                }
                Ok(false)
            })
            .await?;
    }
    Ok(Recalled {
        channel: channel_ref(&channel, caller.uid()),
        seq,
        recalled: true,
    })
}

/// Records a trace scans past its message, at most: the trace of an old message in a busy
/// log stops there (`scan_complete: false`).
const TRACE_MAX_SCAN: u64 = 1_000_000;

/// A message's timeline (admin).
#[utoipa::path(get, path = "/v1/channels/{id}/messages/{seq}/trace", tag = "messages",
    params(("id" = String, Path, description = "Group id or p:a:b"), ("seq" = u64, Path, description = "The message's seq")),
    responses((status = 200, description = "The timeline: accepted, durable, pushes, delivered, read, recall, edits (JSON)", content_type = "application/json"), (status = 404, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn trace(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((id, seq)): ApiPath<(String, u64)>,
) -> ApiResult<axum::Json<tr::Trace>> {
    caller.require_admin()?;
    let channel = admin_channel(&id)?;
    let plan = {
        let p = state.proj();
        admin_trace_plan(&p, &channel, seq, state.expired_below())?
    };
    let t = trace_planned(&state.log, &plan, Some(&state.samples), state.expiring()).await?;
    Ok(axum::Json(t))
}

/// The canonical id of a channel as the admin names it: a group id, or a person channel as
/// `p:{uid_a}:{uid_b}` (in either order); `@uid`, a user's form, is refused
/// `invalid_channel`. `tidings trace` takes its channel argument so too.
pub(crate) fn admin_channel(reference: &str) -> ApiResult<ChannelId> {
    resolve(&Caller::Admin, reference)
}

/// The plan of the admin's trace of message `seq` in `channel` (canonical), from `p` (the
/// server's projections, under their lock; or `tidings trace`'s, loaded from a data
/// directory). 404 `channel_not_found` for a channel that never existed nor had messages (as
/// in the admin's history: it was told `message_not_found`), `message_not_found` for a seq it
/// does not hold (one of an earlier group under the id included), `message_expired` for one
/// whose send lies below `expired_below`, the log's first offset when messages expire there
/// (`tidings_projections::messages`' module doc; 0: none does).
pub(crate) fn admin_trace_plan(
    p: &Projections,
    channel: &str,
    seq: u64,
    expired_below: u64,
) -> ApiResult<tr::TracePlan> {
    admin_readable(&p.state, channel)?;
    let Some(plan) = tr::plan(&p.state, p.index_files(), channel, seq)? else {
        return Err(not_planned(&p.state, channel, seq));
    };
    if plan.offset < expired_below {
        return Err(message_expired(seq));
    }
    Ok(plan)
}

/// The trace of a planned message as `GET /v1/channels/{id}/messages/{seq}/trace` answers it
/// (the same value `tidings trace` prints): scanned from `log`, with the push records
/// `samples` holds for it (the server's, in its memory; `None`, as for `tidings trace`, gives
/// none). When `expiring` ([`AppState::expiring`]), a scan that fails once the log's start
/// moved past the message (it expired since the plan) answers `message_expired`.
pub(crate) async fn trace_planned(
    log: &Log,
    plan: &tr::TracePlan,
    samples: Option<&tr::PushSamples>,
    expiring: bool,
) -> ApiResult<tr::Trace> {
    match tr::trace(log, plan, samples, TRACE_MAX_SCAN).await {
        Ok(t) => t.ok_or_else(|| no_message(plan.seq)),
        Err(_) if expiring && plan.offset < log.start_offset() => Err(message_expired(plan.seq)),
        Err(e) => Err(e.into()),
    }
}

/// Why message `seq` of `channel` has no plan: it expired with the message index's sidecar
/// that held its entry (`msgindex::IndexState::dropped_through`), or the channel never held
/// it (a seq past its last, or one of an earlier group under the id).
fn not_planned(state: &tidings_projections::State, channel: &str, seq: u64) -> ApiError {
    let dropped = state.index.dropped_through(channel);
    if seq <= dropped && seq > state.subs.history_from(channel) {
        message_expired(seq)
    } else {
        no_message(seq)
    }
}

/// The answer for a seq the channel does not hold.
fn no_message(seq: u64) -> ApiError {
    ApiError::not_found(
        "message_not_found",
        format!("no message {seq} in this channel"),
    )
}

/// The answer for a message of the channel that has expired: its send lies below the log's
/// first offset (`tidings_projections::messages`' module doc), its segment deleted by the
/// retention (or by hand).
pub(crate) fn message_expired(seq: u64) -> ApiError {
    ApiError::not_found(
        "message_expired",
        format!("message {seq} has expired: the log no longer holds it"),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn a_json_payload_is_kept_verbatim() {
        let text = r#"{ "z": 1, "a": [true, null, "\u00e9"] }"#;
        assert_eq!(&json_payload(&raw(text)).unwrap()[..], text.as_bytes());
    }

    /// `"payload": null` is a payload (JSON null); only a missing field is none.
    #[test]
    fn a_null_payload_is_a_payload() {
        let m: PostMessage = serde_json::from_str(r#"{"channel":"g","payload":null}"#).unwrap();
        assert_eq!(m.payload.unwrap().get(), "null");
        let m: PostMessage =
            serde_json::from_str(r#"{"channel":"g","payload_b64":"AA=="}"#).unwrap();
        assert!(m.payload.is_none());
        let m: PostMessage =
            serde_json::from_str(r#"{"channel":"g","payload":{"a":[null]}}"#).unwrap();
        assert_eq!(m.payload.unwrap().get(), r#"{"a":[null]}"#);
        assert!(
            serde_json::from_str::<PostMessage>(r#"{"channel":"g","payload":1,"payload":2}"#)
                .is_err()
        );
    }

    #[test]
    fn a_payload_that_does_not_read_back_as_json_is_refused() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for bad in [r#""\ud800""#, "1e400", deep.as_str()] {
            let e = json_payload(&raw(bad)).unwrap_err();
            assert_eq!(e.body()["error"]["code"], "invalid_payload", "{bad:.20}");
        }
    }
}
