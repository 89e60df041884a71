//! `/v1/users/{uid}/…`: tokens and a user's own allow/deny lists (for person channels).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use tidings_projections::ids::is_valid_id;
use tidings_projections::tokens::token_hash;
use tidings_projections::{Event, ListKind, ListOp, ListOwner};

use super::{ApiJson, ApiPath};
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult};
use crate::server::state::AppState;

/// `201` answer of `POST /v1/users/{uid}/tokens`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TokenCreated {
    /// The user.
    pub(crate) uid: String,
    /// The new token (shown once; only its hash is stored).
    pub(crate) token: String,
}

/// A list of user ids.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct Uids {
    /// User ids (`[A-Za-z0-9._-]{1,64}`).
    pub(crate) uids: Vec<String>,
}

pub(crate) fn valid_uid(uid: &str) -> ApiResult<()> {
    if is_valid_id(uid) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_uid",
            format!("{uid:?} is not a user id ([A-Za-z0-9._-]{{1,64}})"),
        ))
    }
}

pub(crate) fn valid_uids(state: &AppState, uids: &[String]) -> ApiResult<()> {
    let max = state.config.limits_max_uids_per_call;
    if uids.len() > max {
        return Err(ApiError::too_large(format!("at most {max} uids per call")));
    }
    uids.iter().try_for_each(|u| valid_uid(u))
}

/// Issues a token for a user.
#[utoipa::path(post, path = "/v1/users/{uid}/tokens", tag = "users",
    params(("uid" = String, Path, description = "The user")),
    responses((status = 201, body = TokenCreated), (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(uid): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    valid_uid(&uid)?;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    let token = URL_SAFE_NO_PAD.encode(raw);
    state
        .emit(Event::TokenSet {
            uid: uid.clone(),
            token_hash: token_hash(&token),
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(TokenCreated { uid, token })))
}

/// Revokes every token of a user and closes their WebSockets.
#[utoipa::path(delete, path = "/v1/users/{uid}/tokens", tag = "users",
    params(("uid" = String, Path, description = "The user")),
    responses((status = 204), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn revoke_tokens(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(uid): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    valid_uid(&uid)?;
    state.emit(Event::TokensRevoked { uid }).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn may_read_user_list(caller: &Caller, uid: &str) -> ApiResult<()> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::User(me) if me == uid => Ok(()),
        Caller::User(_) => Err(ApiError::forbidden("forbidden", "another user's list")),
    }
}

/// A user's allowlist or denylist.
#[utoipa::path(get, path = "/v1/users/{uid}/allowlist", tag = "users", operation_id = "user_allowlist_get",
    params(("uid" = String, Path, description = "The user")),
    responses((status = 200, body = Uids)), security(("bearer" = [])))]
pub(crate) async fn get_list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(uid): ApiPath<String>,
    kind: ListKind,
) -> ApiResult<axum::Json<Uids>> {
    may_read_user_list(&caller, &uid)?;
    // As the calls that change a list answer: no user has an invalid uid, nor a list.
    valid_uid(&uid)?;
    let p = state.proj();
    let lists = p.state.subs.user_lists.get(&uid);
    let set = lists.map(|l| match kind {
        ListKind::Allow => &l.allow,
        ListKind::Deny => &l.deny,
    });
    Ok(axum::Json(Uids {
        uids: set.into_iter().flatten().cloned().collect(),
    }))
}

async fn change(
    state: &Arc<AppState>,
    caller: &Caller,
    uid: String,
    body: Uids,
    kind: ListKind,
    op: ListOp,
) -> ApiResult<axum::Json<Uids>> {
    caller.require_admin()?;
    valid_uid(&uid)?;
    valid_uids(state, &body.uids)?;
    state
        .emit(Event::ListChanged {
            owner: ListOwner::User(uid.clone()),
            list: kind,
            op,
            uids: body.uids,
        })
        .await?;
    let p = state.proj();
    let lists = p.state.subs.user_lists.get(&uid);
    let set = lists.map(|l| match kind {
        ListKind::Allow => &l.allow,
        ListKind::Deny => &l.deny,
    });
    Ok(axum::Json(Uids {
        uids: set.into_iter().flatten().cloned().collect(),
    }))
}

/// Adds users to a user's list.
#[utoipa::path(post, path = "/v1/users/{uid}/allowlist", tag = "users", operation_id = "user_allowlist_add",
    params(("uid" = String, Path, description = "The user")), request_body = Uids,
    responses((status = 200, body = Uids)), security(("bearer" = [])))]
pub(crate) async fn add_to_list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(uid): ApiPath<String>,
    ApiJson(body): ApiJson<Uids>,
    kind: ListKind,
) -> ApiResult<axum::Json<Uids>> {
    change(&state, &caller, uid, body, kind, ListOp::Add).await
}

/// Removes users from a user's list.
#[utoipa::path(delete, path = "/v1/users/{uid}/allowlist", tag = "users", operation_id = "user_allowlist_remove",
    params(("uid" = String, Path, description = "The user")), request_body = Uids,
    responses((status = 200, body = Uids)), security(("bearer" = [])))]
pub(crate) async fn remove_from_list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(uid): ApiPath<String>,
    ApiJson(body): ApiJson<Uids>,
    kind: ListKind,
) -> ApiResult<axum::Json<Uids>> {
    change(&state, &caller, uid, body, kind, ListOp::Remove).await
}
