//! `/v1/channels/{id}`: group channels, their members and allow/deny lists (admin).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use tidings_projections::ids::is_usable_id;
use tidings_projections::{ChannelFlags, Event, ListKind, ListOp, ListOwner};

use super::users::{Uids, valid_uids};
use super::{ApiJson, ApiOptionalJson, ApiPath};
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult};
use crate::server::state::AppState;

/// Channel flags as the API shows them.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Flags {
    /// Nobody may send or read.
    #[serde(default)]
    pub(crate) ban: bool,
    /// Only the app server (admin key) may send.
    #[serde(default)]
    pub(crate) send_ban: bool,
    /// The channel is dissolved: no more sends.
    #[serde(default)]
    pub(crate) disband: bool,
}

impl From<Flags> for ChannelFlags {
    fn from(f: Flags) -> Self {
        ChannelFlags {
            ban: f.ban,
            send_ban: f.send_ban,
            disband: f.disband,
        }
    }
}

impl From<ChannelFlags> for Flags {
    fn from(f: ChannelFlags) -> Self {
        Flags {
            ban: f.ban,
            send_ban: f.send_ban,
            disband: f.disband,
        }
    }
}

/// Body of `PUT /v1/channels/{id}`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutChannel {
    /// The flags, set as a whole: one left out is false, so is every one when `flags` is
    /// absent (send every flag the group should keep).
    #[serde(default)]
    pub(crate) flags: Flags,
}

/// A group channel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ChannelView {
    /// Its id.
    pub(crate) channel: String,
    /// Its flags.
    pub(crate) flags: Flags,
    /// How many members it has.
    pub(crate) members: usize,
    /// Its last seq.
    pub(crate) last_seq: u64,
}

fn group_id(id: &str) -> ApiResult<()> {
    if is_usable_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_channel",
            format!("{id:?} is not a group channel id ([A-Za-z0-9._-]{{1,64}})"),
        ))
    }
}

fn view(state: &AppState, id: &str) -> ApiResult<ChannelView> {
    let p = state.proj();
    let info =
        p.state.subs.channels.get(id).ok_or_else(|| {
            ApiError::not_found("channel_not_found", format!("no channel {id:?}"))
        })?;
    Ok(ChannelView {
        channel: id.to_owned(),
        flags: info.flags.into(),
        members: info.members.len(),
        last_seq: p.state.heads.last_seq(id),
    })
}

fn exists(state: &AppState, id: &str) -> ApiResult<()> {
    if state.proj().state.subs.channels.contains_key(id) {
        Ok(())
    } else {
        Err(no_channel(id))
    }
}

fn no_channel(id: &str) -> ApiError {
    ApiError::not_found("channel_not_found", format!("no channel {id:?}"))
}

/// Creates a group channel or updates its flags.
#[utoipa::path(put, path = "/v1/channels/{id}", tag = "channels",
    params(("id" = String, Path, description = "Group channel id")), request_body = Option<PutChannel>,
    responses((status = 201, body = ChannelView, description = "Created"), (status = 200, body = ChannelView, description = "Updated"), (status = 400, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn put_channel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    // The body is optional: no body (or `null`, as the OpenAPI document allows) means no flags.
    ApiOptionalJson(put): ApiOptionalJson<Option<PutChannel>>,
) -> ApiResult<impl IntoResponse> {
    let put = put.unwrap_or_default();
    caller.require_admin()?;
    group_id(&id)?;
    let flags: ChannelFlags = put.flags.into();
    // Created or updated as the channel is under the sequencer's lock (`emit_decided`).
    let channel = id.clone();
    let written = state
        .emit_decided(move |st| {
            let existed = st.subs.channels.contains_key(&channel);
            let event = if existed {
                Event::ChannelUpdated { channel, flags }
            } else {
                Event::ChannelCreated { channel, flags }
            };
            Ok(Some((event, existed)))
        })
        .await?;
    let existed = written.is_some_and(|(_, existed)| existed);
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(view(&state, &id)?)))
}

/// Deletes a group channel (its seqs are never reused).
#[utoipa::path(delete, path = "/v1/channels/{id}", tag = "channels",
    params(("id" = String, Path, description = "Group channel id")),
    responses((status = 204), (status = 404, body = super::openapi::ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn delete_channel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    group_id(&id)?;
    // Whether it exists, under the sequencer's lock: of two racing deletions one is 404.
    state
        .emit_decided(move |st| {
            if !st.subs.channels.contains_key(&id) {
                return Err(no_channel(&id));
            }
            Ok(Some((Event::ChannelDeleted { channel: id }, ())))
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A group channel (admin, or a member).
#[utoipa::path(get, path = "/v1/channels/{id}", tag = "channels",
    params(("id" = String, Path, description = "Group channel id")),
    responses((status = 200, body = ChannelView), (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn get_channel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<axum::Json<ChannelView>> {
    group_id(&id)?;
    // Membership first: a user who is not a member learns nothing, not even whether the
    // channel exists (403 either way).
    if let Caller::User(me) = &caller
        && !state.proj().state.subs.is_member(&id, me)
    {
        return Err(ApiError::forbidden(
            "not_member",
            "not a member of this channel",
        ));
    }
    Ok(axum::Json(view(&state, &id)?))
}

/// The members of a group channel.
#[utoipa::path(get, path = "/v1/channels/{id}/members", tag = "channels",
    params(("id" = String, Path, description = "Group channel id")),
    responses((status = 200, body = Uids)), security(("bearer" = [])))]
pub(crate) async fn get_members(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<axum::Json<Uids>> {
    caller.require_admin()?;
    group_id(&id)?;
    let p = state.proj();
    let info =
        p.state.subs.channels.get(&id).ok_or_else(|| {
            ApiError::not_found("channel_not_found", format!("no channel {id:?}"))
        })?;
    Ok(axum::Json(Uids {
        uids: info.members.iter().cloned().collect(),
    }))
}

/// Subscribes users (idempotent; up to `limits.max_uids_per_call`).
#[utoipa::path(post, path = "/v1/channels/{id}/members", tag = "channels",
    params(("id" = String, Path, description = "Group channel id")), request_body = Uids,
    responses((status = 200, body = ChannelView), (status = 404, body = super::openapi::ErrorBody), (status = 413, body = super::openapi::ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn add_members(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Uids>,
) -> ApiResult<axum::Json<ChannelView>> {
    caller.require_admin()?;
    group_id(&id)?;
    valid_uids(&state, &body.uids)?;
    exists(&state, &id)?;
    state.subscribe(id.clone(), body.uids).await?;
    Ok(axum::Json(view(&state, &id)?))
}

/// Unsubscribes users (idempotent).
#[utoipa::path(delete, path = "/v1/channels/{id}/members", tag = "channels",
    params(("id" = String, Path, description = "Group channel id")), request_body = Uids,
    responses((status = 200, body = ChannelView)), security(("bearer" = [])))]
pub(crate) async fn remove_members(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Uids>,
) -> ApiResult<axum::Json<ChannelView>> {
    caller.require_admin()?;
    group_id(&id)?;
    valid_uids(&state, &body.uids)?;
    exists(&state, &id)?;
    state
        .emit(Event::MembersUnsubscribed {
            channel: id.clone(),
            uids: body.uids,
        })
        .await?;
    Ok(axum::Json(view(&state, &id)?))
}

fn list_of(state: &AppState, id: &str, kind: ListKind) -> ApiResult<Uids> {
    let p = state.proj();
    let info =
        p.state.subs.channels.get(id).ok_or_else(|| {
            ApiError::not_found("channel_not_found", format!("no channel {id:?}"))
        })?;
    let set = match kind {
        ListKind::Allow => &info.allow,
        ListKind::Deny => &info.deny,
    };
    Ok(Uids {
        uids: set.iter().cloned().collect(),
    })
}

/// A channel's allowlist or denylist.
#[utoipa::path(get, path = "/v1/channels/{id}/allowlist", tag = "channels", operation_id = "channel_allowlist_get",
    params(("id" = String, Path, description = "Group channel id")),
    responses((status = 200, body = Uids)), security(("bearer" = [])))]
pub(crate) async fn get_list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    kind: ListKind,
) -> ApiResult<axum::Json<Uids>> {
    caller.require_admin()?;
    group_id(&id)?;
    Ok(axum::Json(list_of(&state, &id, kind)?))
}

async fn change(
    state: &Arc<AppState>,
    caller: &Caller,
    id: String,
    body: Uids,
    kind: ListKind,
    op: ListOp,
) -> ApiResult<axum::Json<Uids>> {
    caller.require_admin()?;
    group_id(&id)?;
    valid_uids(state, &body.uids)?;
    exists(state, &id)?;
    state
        .emit(Event::ListChanged {
            owner: ListOwner::Channel(id.clone()),
            list: kind,
            op,
            uids: body.uids,
        })
        .await?;
    Ok(axum::Json(list_of(state, &id, kind)?))
}

/// Adds users to a channel's list.
#[utoipa::path(post, path = "/v1/channels/{id}/allowlist", tag = "channels", operation_id = "channel_allowlist_add",
    params(("id" = String, Path, description = "Group channel id")), request_body = Uids,
    responses((status = 200, body = Uids)), security(("bearer" = [])))]
pub(crate) async fn add_to_list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Uids>,
    kind: ListKind,
) -> ApiResult<axum::Json<Uids>> {
    change(&state, &caller, id, body, kind, ListOp::Add).await
}

/// Removes users from a channel's list.
#[utoipa::path(delete, path = "/v1/channels/{id}/allowlist", tag = "channels", operation_id = "channel_allowlist_remove",
    params(("id" = String, Path, description = "Group channel id")), request_body = Uids,
    responses((status = 200, body = Uids)), security(("bearer" = [])))]
pub(crate) async fn remove_from_list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Uids>,
    kind: ListKind,
) -> ApiResult<axum::Json<Uids>> {
    change(&state, &caller, id, body, kind, ListOp::Remove).await
}
