//! Who is calling: the app server (admin key) or a user (token). `Authorization: Bearer <key>`;
//! WebSocket clients may pass `?token=` instead. Tokens are stored only as SHA-256 hashes.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;
use tidings_projections::ids::{ChannelId, Uid, is_usable_id, person_channel, person_pair};
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
    match header_token(headers) {
        HeaderToken::One(t) => is_admin_hash(state, &token_hash(&t)),
        // None, or two that differ: no credential ([`bearer`]).
        HeaderToken::None | HeaderToken::Conflicting => false,
    }
}

/// The token of an `Authorization` header's value: `Bearer {token}`, the scheme in any case
/// (RFC 9110 §11.1: `bearer`, `BEARER`; only `Bearer` and `bearer` were taken until
/// 2026-12-03), spaces or tabs around the token.
fn bearer_token(v: &str) -> Option<&str> {
    let (scheme, token) = v.trim_start().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_matches([' ', '\t']))
}

/// The bearer tokens of a request's `Authorization` headers: none (no header, or none of the
/// `Bearer` scheme: a proxy's `Basic`), one (the same token twice too), or several that differ.
enum HeaderToken {
    None,
    One(String),
    Conflicting,
}

fn header_token(headers: &axum::http::HeaderMap) -> HeaderToken {
    let mut found: Option<&str> = None;
    for h in headers.get_all(axum::http::header::AUTHORIZATION) {
        let Some(t) = h.to_str().ok().and_then(bearer_token) else {
            continue;
        };
        match found {
            Some(other) if other != t => return HeaderToken::Conflicting,
            _ => found = Some(t),
        }
    }
    found.map_or(HeaderToken::None, |t| HeaderToken::One(t.to_owned()))
}

/// The bearer token of a request, from the `Authorization` header. Two naming different
/// tokens are no token (`401 invalid_token`): which one names the caller is not for the
/// server to guess (the first header was taken until 2026-12-03). A header of another scheme
/// beside it (a proxy's `Basic`) is not one.
pub(crate) fn bearer(parts: &Parts) -> ApiResult<Option<String>> {
    match header_token(&parts.headers) {
        HeaderToken::One(t) => Ok(Some(t)),
        HeaderToken::None => Ok(None),
        HeaderToken::Conflicting => Err(conflicting()),
    }
}

/// The answer to credentials that name different tokens.
fn conflicting() -> ApiError {
    ApiError::unauthorized(
        "the request names two different tokens (two Authorization headers, or the header and ?token=): send one",
    )
}

/// The token of a WebSocket upgrade: the header, or `?token=` (browsers cannot set headers
/// on a WebSocket). Only there: a token in a URL ends up in proxy logs and browser history.
/// The two naming different tokens are no token (`401 invalid_token`; the header's was
/// taken until 2026-12-03), as are two `token=` parameters that differ; an empty `token=`
/// is none, and so is a header of another scheme (a browser sends a page's `Basic`
/// credentials with its upgrade).
pub(crate) fn ws_bearer(parts: &Parts) -> ApiResult<Option<String>> {
    let mut query = parts.uri.query().into_iter().flat_map(|q| {
        q.split('&')
            .filter_map(|kv| kv.strip_prefix("token="))
            .filter(|t| !t.is_empty())
            .map(percent_decode)
    });
    let from_query = query.next();
    if from_query
        .as_ref()
        .is_some_and(|first| query.any(|other| &other != first))
    {
        return Err(conflicting());
    }
    match (header_token(&parts.headers), from_query) {
        (HeaderToken::Conflicting, _) => Err(conflicting()),
        (HeaderToken::One(h), Some(q)) if h != q => Err(conflicting()),
        (HeaderToken::One(h), _) => Ok(Some(h)),
        (HeaderToken::None, q) => Ok(q),
    }
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
        authenticate(state, bearer(parts)?.as_deref())
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> ApiResult<Self> {
        authenticate(state, bearer(parts)?.as_deref()).map(|a| a.caller)
    }
}

/// The canonical id of a channel reference: a group id, `@uid` (a person channel from a user's
/// point of view), or — for the admin — a canonical person id `p:a:b`.
pub(crate) fn resolve(caller: &Caller, reference: &str) -> ApiResult<ChannelId> {
    if let Some(peer) = reference.strip_prefix('@') {
        if !is_usable_id(peer) {
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
        // As for `@uid`: a dot segment names no user in a request.
        if !is_usable_id(a) || !is_usable_id(b) {
            return Err(ApiError::bad_request(
                "invalid_channel",
                format!("{reference:?} names a user that cannot be (`.` or `..`)"),
            ));
        }
        return Ok(person_channel(a, b));
    }
    if is_usable_id(reference) {
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

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_taken_in_any_case() {
        for v in [
            "Bearer t1",
            "bearer t1",
            "BEARER t1",
            "BeArEr  t1 ",
            "Bearer\tt1",
        ] {
            assert_eq!(bearer_token(v), Some("t1"), "{v:?}");
        }
        for v in ["Basic t1", "Bearert1", "t1", "", "Bearer"] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }
}
