//! `/v1/users/{uid}/…`: tokens and a user's own allow/deny lists (for person channels); and
//! `DELETE /v1/token`, a user's logout.
//!
//! A token may expire (`ttl_secs` when issued): from its expiry on it authenticates nothing
//! (401 `token_expired`), and its WebSocket sessions close (4001 `token_expired`). A token is
//! named by its id, the lowercase hex of the SHA-256 it is stored under: the admin lists a
//! user's live tokens by id and revokes one by id; the token itself is shown only once.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tidings_projections::ids::is_usable_id;
use tidings_projections::tokens::{TokenStatus, token_hash};
use tidings_projections::{Event, ListKind, ListOp, ListOwner};

use super::{ApiJson, ApiOptionalJson, ApiPath};
use crate::server::auth::{Authenticated, Caller};
use crate::server::error::{ApiError, ApiResult};
use crate::server::state::{AppState, now_ms};

/// The longest `ttl_secs` a token may be issued with: ten years.
const MAX_TTL_SECS: u64 = 315_360_000;

/// Body of `POST /v1/users/{uid}/tokens` (optional: none, or `null`, issues a token that never
/// expires).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenBody {
    /// Seconds the token is valid for, from when it is issued: 1 to 315360000 (ten years).
    /// Default: it never expires.
    pub(crate) ttl_secs: Option<u64>,
}

/// `201` answer of `POST /v1/users/{uid}/tokens`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TokenCreated {
    /// The user.
    pub(crate) uid: String,
    /// The new token (shown once; only its hash is stored).
    pub(crate) token: String,
    /// The token's id: the lowercase hex of its SHA-256 (to list or revoke it by).
    pub(crate) token_id: String,
    /// When it expires (ms since the Unix epoch); `null`: never.
    pub(crate) expires_at_ms: Option<u64>,
}

/// One live token, in `GET /v1/users/{uid}/tokens`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TokenInfo {
    /// The token's id: the lowercase hex of its SHA-256.
    pub(crate) token_id: String,
    /// When it expires (ms since the Unix epoch); `null`: never.
    pub(crate) expires_at_ms: Option<u64>,
}

/// `200` answer of `GET /v1/users/{uid}/tokens`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TokenList {
    /// The user.
    pub(crate) uid: String,
    /// The user's tokens that are neither revoked nor expired.
    pub(crate) tokens: Vec<TokenInfo>,
}

/// A token's id: the lowercase hex of the hash it is stored under (as `tidings replay` shows
/// a `token_set`'s hash).
fn token_id(hash: &[u8]) -> String {
    crate::render::hex(hash)
}

/// The hash a token id names: `None` unless it is 64 lowercase hex digits.
fn parse_token_id(id: &str) -> Option<Bytes> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if id.len() != 64 {
        return None;
    }
    id.as_bytes()
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

/// When a token issued at `now` with `ttl_secs` expires: 400 `invalid_request` for a ttl
/// outside 1 to [`MAX_TTL_SECS`].
fn expiry(now: u64, ttl_secs: u64) -> ApiResult<u64> {
    if !(1..=MAX_TTL_SECS).contains(&ttl_secs) {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("ttl_secs must be between 1 and {MAX_TTL_SECS} (ten years)"),
        ));
    }
    Ok(now.saturating_add(ttl_secs * 1000))
}

/// A list of user ids.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Uids {
    /// User ids (`[A-Za-z0-9._-]{1,64}`).
    pub(crate) uids: Vec<String>,
}

pub(crate) fn valid_uid(uid: &str) -> ApiResult<()> {
    if is_usable_id(uid) {
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

/// Issues a token for a user, valid for `ttl_secs` (default: until revoked).
#[utoipa::path(post, path = "/v1/users/{uid}/tokens", tag = "users",
    params(("uid" = String, Path, description = "The user")), request_body = Option<TokenBody>,
    responses((status = 201, body = TokenCreated), (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(uid): ApiPath<String>,
    ApiOptionalJson(body): ApiOptionalJson<Option<TokenBody>>,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    valid_uid(&uid)?;
    // The clock events are stamped with: the event's own timestamp is taken just after.
    let expires_at_ms = body
        .and_then(|b| b.ttl_secs)
        .map(|ttl| expiry(now_ms(), ttl))
        .transpose()?;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    let token = URL_SAFE_NO_PAD.encode(raw);
    let hash = token_hash(&token);
    let token_id = token_id(&hash);
    state
        .emit(Event::TokenSet {
            uid: uid.clone(),
            token_hash: hash,
            expires_at_ms,
        })
        .await?;
    let created = TokenCreated {
        uid,
        token,
        token_id,
        expires_at_ms,
    };
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Lists a user's live tokens (neither revoked nor expired) by id, with their expiries.
#[utoipa::path(get, path = "/v1/users/{uid}/tokens", tag = "users",
    params(("uid" = String, Path, description = "The user")),
    responses((status = 200, body = TokenList), (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_tokens(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(uid): ApiPath<String>,
) -> ApiResult<axum::Json<TokenList>> {
    caller.require_admin()?;
    valid_uid(&uid)?;
    let live = state.proj().state.tokens.list(&uid, now_ms());
    let tokens = live
        .into_iter()
        .map(|(hash, expires_at_ms)| TokenInfo {
            token_id: token_id(&hash),
            expires_at_ms,
        })
        .collect();
    Ok(axum::Json(TokenList { uid, tokens }))
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

/// Revokes one token of a user (by its id) and closes the WebSockets opened with it; the
/// user's other tokens and sessions stay.
#[utoipa::path(delete, path = "/v1/users/{uid}/tokens/{token_id}", tag = "users",
    params(("uid" = String, Path, description = "The user"), ("token_id" = String, Path, description = "The token's id: the lowercase hex of its SHA-256")),
    responses((status = 204), (status = 400, description = "Not a valid user id", body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn revoke_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((uid, id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    valid_uid(&uid)?;
    // An id that names no token (not 64 lowercase hex digits, too) is a token not found.
    let hash = parse_token_id(&id).filter(|hash| {
        let p = state.proj();
        matches!(p.state.tokens.status(hash, now_ms()), TokenStatus::Valid(owner) if *owner == uid)
    });
    let Some(hash) = hash else {
        return Err(ApiError::not_found(
            "token_not_found",
            format!("{uid} has no live token with this id"),
        ));
    };
    state
        .emit(Event::TokenRevoked {
            uid,
            token_hash: hash,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Logs out: revokes the token the call is made with (a user's, not the admin key), and
/// closes the WebSockets opened with it.
#[utoipa::path(delete, path = "/v1/token", tag = "users",
    responses((status = 204), (status = 400, body = super::openapi::ErrorBody), (status = 401, body = super::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn logout(
    State(state): State<Arc<AppState>>,
    Authenticated { caller, token_hash }: Authenticated,
) -> ApiResult<StatusCode> {
    caller.require_user()?;
    let (Caller::User(uid), Some(token_hash)) = (caller, token_hash) else {
        return Err(ApiError::internal("a user authenticated without a token"));
    };
    state.emit(Event::TokenRevoked { uid, token_hash }).await?;
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
