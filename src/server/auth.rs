//! Who is calling: the app server (admin key) or a user (token). `Authorization: Bearer <key>`;
//! WebSocket clients may pass `?token=` instead. Tokens are stored only as SHA-256 hashes.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;
use tidings_projections::ids::{ChannelId, Uid, is_valid_id, person_channel, person_pair};
use tidings_projections::tokens::{TokenStatus, Tokens, token_hash};

use crate::server::error::{ApiError, ApiResult};
use crate::server::state::{AppState, now_ms};

/// The admin as the author of what it does to a user's message (a recall's `by`, in the log
/// and in the `recall` frame): `:` is in no user id, so no user reads as the admin. Until
/// 2026-11-30 the admin recalled as `"admin"`, which is also a valid user id.
pub(crate) const ADMIN_ACTOR: &str = ":admin";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    Admin,
    User(String),
}

impl Caller {
    /// The user, or `None` for the admin.
    pub(crate) fn uid(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::User(u) => Some(u),
        }
    }

    pub(crate) fn require_admin(&self) -> ApiResult<()> {
        match self {
            Caller::Admin => Ok(()),
            Caller::User(_) => Err(ApiError::forbidden(
                "admin_only",
                "this call needs the admin key",
            )),
        }
    }

    pub(crate) fn require_user(&self) -> ApiResult<&str> {
        self.uid().ok_or_else(|| {
            ApiError::bad_request(
                "user_only",
                "this call is made with a user token, not the admin key",
            )
        })
    }
}

/// A caller and the credential it was authenticated with.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated {
    pub(crate) caller: Caller,
    /// A user's token as the SHA-256 it is stored under (`None`: the admin key). A send
    /// carries it to the sequencer, which refuses the send if the token was revoked before
    /// the send was sequenced (`SendRequest::token_hash`).
    pub(crate) token_hash: Option<Bytes>,
}

/// Whether a presented key, by its SHA-256 (`token_hash`), is the admin key, in a time that
/// tells nothing of either: the digests are compared, every byte, against the admin key's
/// computed once at start (a comparison of the keys themselves returned at once when the
/// lengths differed, telling the key's length).
fn is_admin_hash(state: &AppState, hash: &[u8]) -> bool {
    let admin = &state.admin_key_hash;
    hash.len() == admin.len()
        && hash
            .iter()
            .zip(admin.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The answer to a user token that is unknown or revoked: 401 `invalid_token`. A send
/// authenticated just before its token was revoked, and sequenced after, is answered so too.
pub(crate) fn invalid_token() -> ApiError {
    ApiError::unauthorized("unknown or revoked token")
}

/// The answer to a user token past its expiry: 401 `token_expired` (the client asks its app
/// server for a new one). A send authenticated before its token expired, and sequenced after,
/// is answered so too.
pub(crate) fn token_expired() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "token_expired",
        "the token has expired",
    )
}

/// The user the token stored under `hash` authenticates at `now` (wall-clock ms, the clock
/// events are stamped with): 401 `token_expired` past its expiry, `invalid_token` when it is
/// unknown or revoked.
pub(crate) fn token_owner<'a>(tokens: &'a Tokens, hash: &[u8], now: u64) -> ApiResult<&'a Uid> {
    match tokens.status(hash, now) {
        TokenStatus::Valid(uid) => Ok(uid),
        TokenStatus::Expired => Err(token_expired()),
        TokenStatus::Unknown => Err(invalid_token()),
    }
}

/// The caller a bearer token names, and the hash of a user's token.
pub(crate) fn authenticate(state: &AppState, token: Option<&str>) -> ApiResult<Authenticated> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    // One digest: the admin key's comparison and a user token's lookup both take it.
    let hash = token_hash(token);
    if is_admin_hash(state, &hash) {
        return Ok(Authenticated {
            caller: Caller::Admin,
            token_hash: None,
        });
    }
    let now = now_ms();
    let uid = {
        let p = state.proj();
        token_owner(&p.state.tokens, &hash, now)?.clone()
    };
    Ok(Authenticated {
        caller: Caller::User(uid),
        token_hash: Some(hash),
    })
}

/// Whether a request carries the admin key (in its `Authorization` header).
pub(crate) fn is_admin_request(state: &AppState, headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .is_some_and(|t| is_admin_hash(state, &token_hash(t.trim())))
}

/// The bearer token of a request, from the `Authorization` header.
pub(crate) fn bearer(parts: &Parts) -> Option<String> {
    if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION)
        && let Ok(v) = h.to_str()
        && let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    {
        return Some(t.trim().to_owned());
    }
    None
}

/// The token of a WebSocket upgrade: the header, or `?token=` (browsers cannot set headers
/// on a WebSocket). Only there: a token in a URL ends up in proxy logs and browser history.
pub(crate) fn ws_bearer(parts: &Parts) -> Option<String> {
    bearer(parts).or_else(|| {
        parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(percent_decode)
        })
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FromRequestParts<Arc<AppState>> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> ApiResult<Self> {
        authenticate(state, bearer(parts).as_deref())
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> ApiResult<Self> {
        authenticate(state, bearer(parts).as_deref()).map(|a| a.caller)
    }
}

/// The canonical id of a channel reference: a group id, `@uid` (a person channel from a user's
/// point of view), or — for the admin — a canonical person id `p:a:b`.
pub(crate) fn resolve(caller: &Caller, reference: &str) -> ApiResult<ChannelId> {
    if let Some(peer) = reference.strip_prefix('@') {
        if !is_valid_id(peer) {
            return Err(ApiError::bad_request(
                "invalid_channel",
                format!("{reference:?} is not a valid user"),
            ));
        }
        return match caller {
            Caller::User(me) => Ok(person_channel(me, peer)),
            Caller::Admin => Err(ApiError::bad_request(
                "invalid_channel",
                "the admin names person channels canonically: p:{uid_a}:{uid_b}",
            )),
        };
    }
    if let Some((a, b)) = person_pair(reference) {
        return Ok(person_channel(a, b));
    }
    if is_valid_id(reference) {
        return Ok(reference.to_owned());
    }
    // Named as this caller may name a channel (the admin has no `@`).
    let or_at = match caller {
        Caller::User(_) => ", @uid",
        Caller::Admin => "",
    };
    Err(ApiError::bad_request(
        "invalid_channel",
        format!(
            "{reference:?} is not a channel id ([A-Za-z0-9._-]{{1,64}}){or_at} or p:{{uid_a}}:{{uid_b}}"
        ),
    ))
}
