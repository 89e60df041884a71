//! The HTTP API under `/v1`, plus `/healthz`, `/readyz`, `/metrics`; CORS headers when
//! `http.cors_origins` is set.

mod channels;
mod conversations;
mod cors;
mod cursors;
mod edit;
mod hide;
mod json_check;
mod messages;
pub(crate) mod openapi;
mod ops;
mod users;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::server::error::{ApiError, ApiResult};
use crate::server::state::AppState;

pub(crate) use edit::edit_message;
pub(crate) use messages::{
    MAX_CLIENT_MSG_ID, admin_channel, admin_trace_plan, check_client_msg_id, one_payload_form,
    payload_bytes, present, readable, recall_message, stored_retry, trace_planned,
};

/// A JSON body whose rejections are API errors.
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let ApiBytes(bytes) =
            ApiBytes::from_request(Request::from_parts(parts.clone(), body), state).await?;
        let req = Request::from_parts(parts, axum::body::Body::from(bytes.clone()));
        match axum::Json::<T>::from_request(req, state).await {
            // serde reads a struct from an array of its fields in order, which no body the
            // API documents is (until 2026-11-30 `["g","c1",{"text":"hi"}]` was a send).
            Ok(_) if bytes.trim_ascii_start().starts_with(b"[") => Err(ApiError::bad_request(
                "invalid_request",
                "the request body must be a JSON object, not an array",
            )),
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// How long a request's body may take to arrive (`limits.http_read_timeout_secs`, set on
/// every request by the router).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyTimeout(pub(crate) std::time::Duration);

fn body_timeout(req: &Request) -> std::time::Duration {
    req.extensions()
        .get::<BodyTimeout>()
        .map_or(std::time::Duration::from_secs(30), |t| t.0)
}

/// `fut` (reading a body), or `408 request_timeout` once `within` has passed.
async fn within_body_timeout<T>(
    within: std::time::Duration,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, ApiError> {
    tokio::time::timeout(within, fut).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {within:?}"),
        )
    })
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("invalid_json", e.body_text()),
        JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_request", e.body_text()),
        JsonRejection::MissingJsonContentType(e) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.body_text(),
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::too_large("the request body is larger than the server accepts")
        }
        other => ApiError::new(other.status(), "invalid_request", other.body_text()),
    }
}

/// An optional JSON body: one that is empty (or only whitespace) is `T::default()`, whatever
/// its content type; any other is read as [`ApiJson`] reads it, so it needs
/// `Content-Type: application/json` (415 `unsupported_media_type` otherwise), as the README
/// says of every body. Read as bytes alone, a JSON body sent as `text/plain` was taken.
pub(crate) struct ApiOptionalJson<T>(pub(crate) T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for ApiOptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let ApiBytes(bytes) =
            ApiBytes::from_request(Request::from_parts(parts.clone(), body), state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(ApiOptionalJson(T::default()));
        }
        // The body is in memory: reading it again costs no wait, and its content type and
        // errors are judged as a required body's are.
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        let ApiJson(v) = ApiJson::<T>::from_request(req, state).await?;
        Ok(ApiOptionalJson(v))
    }
}

/// A raw body whose rejections (too large, unreadable) are API errors.
struct ApiBytes(axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let within = body_timeout(&req);
        within_body_timeout(within, axum::body::Bytes::from_request(req, state))
            .await?
            .map(ApiBytes)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large("the request body is larger than the server accepts")
                } else {
                    ApiError::new(e.status(), "invalid_request", e.body_text())
                }
            })
    }
}

/// Query parameters whose rejections are API errors.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// The most items a page holds: a larger `limit` is taken as this (the query structs'
/// `#[param(maximum = 1000)]` say so in the OpenAPI document).
const MAX_PAGE_LIMIT: usize = 1000;

/// A `limit` query parameter: digits, read as a number saturating at `usize::MAX` (a limit
/// past every integer is "a larger limit", taken as [`MAX_PAGE_LIMIT`] by [`page_limit`]; it
/// was 400 `invalid_query`); anything else is refused as before.
pub(crate) fn saturating_limit<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    // A leading `+`, as the number's own parse took it.
    let digits = text.strip_prefix('+').unwrap_or(&text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(serde::de::Error::custom(format!(
            "limit: {text:?} is not a whole number"
        )));
    }
    Ok(Some(digits.parse().unwrap_or(usize::MAX)))
}

/// A page's size from its `limit` query parameter (history, conversations, sync, changes):
/// `default` without one, and a larger one than [`MAX_PAGE_LIMIT`] is taken as that. `0` is
/// `invalid_query`: taken as 1, it answered one item and `has_more` to a client that asked
/// for none.
pub(crate) fn page_limit(limit: Option<usize>, default: usize) -> ApiResult<usize> {
    match limit {
        Some(0) => Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "limit must be between 1 and {MAX_PAGE_LIMIT} (a larger one is taken as {MAX_PAGE_LIMIT})"
            ),
        )),
        Some(n) => Ok(n.min(MAX_PAGE_LIMIT)),
        None => Ok(default),
    }
}

/// Path parameters whose rejections are API errors.
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

/// A span per request; counts and times it by route and status.
/// The longest request target (path and query) a request may have: 414 `uri_too_long`.
pub(crate) const MAX_URI_BYTES: usize = 8 * 1024;
/// The most bytes its header fields may take together (names, values and 4 bytes of framing
/// each): 431 `headers_too_large`.
pub(crate) const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Refuses a request whose target or header fields are larger than any this API needs, with a
/// JSON error. Below hyper's own limits (a target of 64 KiB, ~400 KiB of head, 100 fields),
/// whose refusals have no body: those stay for larger requests.
async fn head_limits(req: Request, next: Next) -> Response {
    // A refused request's body is not read: the connection then ends after the answer, and
    // says so (a client still writing a large body otherwise met a closed socket unwarned).
    let with_body = |mut r: Response| {
        let h = req.headers();
        let body = h.contains_key(axum::http::header::TRANSFER_ENCODING)
            || h.get(axum::http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if body {
            r.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        r
    };
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return with_body(
            ApiError::new(
                axum::http::StatusCode::URI_TOO_LONG,
                "uri_too_long",
                format!("the request target is {target} bytes; at most {MAX_URI_BYTES}"),
            )
            .into_response(),
        );
    }
    let head: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if head > MAX_HEADER_BYTES {
        return with_body(
            ApiError::new(
                axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!("the header fields take {head} bytes; at most {MAX_HEADER_BYTES}"),
            )
            .into_response(),
        );
    }
    next.run(req).await
}

async fn observe(state: axum::extract::State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Metric labels stay bounded: a method outside the standard set is "other".
    let method: &'static str = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let span = tracing::info_span!("http", %method, %route);
    let admin = crate::server::auth::is_admin_request(&state.0, req.headers());
    let mut resp = next.run(req).instrument(span.clone()).await;
    if !admin
        && (resp.status() == StatusCode::INTERNAL_SERVER_ERROR
            || resp.status() == StatusCode::SERVICE_UNAVAILABLE)
    {
        resp = without_details(resp).instrument(span.clone()).await;
    }
    let status = resp.status().as_u16();
    let took = started.elapsed();
    state.metrics.http_request(method, &route, status, took);
    span.in_scope(|| tracing::debug!(status, took_us = took.as_micros() as u64, "request"));
    resp
}

/// A 500 or 503 answered to anyone but the admin, its message replaced by
/// [`internal_for_user`](crate::server::error::internal_for_user)'s (the details logged) when
/// it is the operator's ([`is_operators`](crate::server::error::is_operators)).
async fn without_details(resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, 1 << 20).await {
        Ok(bytes) => bytes,
        Err(e) => bytes::Bytes::from(format!("(the answer's body could not be read: {e})")),
    };
    let parsed = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
    let code = parsed
        .as_ref()
        .and_then(|v| v["error"]["code"].as_str())
        .unwrap_or("internal")
        .to_owned();
    if !crate::server::error::is_operators(parts.status, &code) {
        let mut parts = parts;
        // The body as read (the original's, or the words of a failure to read it).
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    let detail = parsed
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let message = crate::server::error::internal_for_user(&detail);
    let mut redacted = (
        parts.status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response();
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_LENGTH && name != axum::http::header::CONTENT_TYPE {
            redacted.headers_mut().append(name.clone(), value.clone());
        }
    }
    redacted
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// The request body allowed per uid of a membership or list call: 64 characters escaped as
/// `\uXXXX`, quoted, a comma, and a line's indent.
const UID_BODY_BYTES: usize = 64 * 6 + 16;

/// Every route.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    // A body may carry a payload of the maximum size in base64 (4/3) plus JSON framing, or a
    // membership or list call's uids: each at most 64 characters, quoted, with a comma. Those
    // calls alone may carry them as JSON may write them: every character escaped (`\u0041`, 6
    // bytes), on a line of their own, indented (until 2026-12-03 only 67 bytes a uid were
    // allowed, and the largest call pretty-printed was refused 413 for its whitespace: QA).
    let c = &state.config;
    let body_limit = (c.limits_max_payload_bytes * 2)
        .max(c.limits_max_uids_per_call.saturating_mul(67))
        .saturating_add(64 * 1024);
    let uids_limit = DefaultBodyLimit::max(
        body_limit.max(
            c.limits_max_uids_per_call
                .saturating_mul(UID_BODY_BYTES)
                .saturating_add(64 * 1024),
        ),
    );
    let list = |kind| {
        get(move |s, c, p| channels::get_list(s, c, p, kind))
            .post(move |s, c, p, b| channels::add_to_list(s, c, p, b, kind))
            .delete(move |s, c, p, b| channels::remove_from_list(s, c, p, b, kind))
            .layer(uids_limit)
    };
    let user_list = |kind| {
        get(move |s, c, p| users::get_list(s, c, p, kind))
            .post(move |s, c, p, b| users::add_to_list(s, c, p, b, kind))
            .delete(move |s, c, p, b| users::remove_from_list(s, c, p, b, kind))
            .layer(uids_limit)
    };
    use tidings_projections::ListKind::{Allow, Deny};
    let routes = Router::new()
        .route(
            "/v1/users/{uid}/tokens",
            post(users::create_token)
                .get(users::list_tokens)
                .delete(users::revoke_tokens),
        )
        .route(
            "/v1/users/{uid}/tokens/{token_id}",
            axum::routing::delete(users::revoke_token),
        )
        .route("/v1/token", axum::routing::delete(users::logout))
        .route("/v1/users/{uid}/allowlist", user_list(Allow))
        .route("/v1/users/{uid}/denylist", user_list(Deny))
        .route(
            "/v1/channels/{id}",
            put(channels::put_channel)
                .delete(channels::delete_channel)
                .get(channels::get_channel),
        )
        .route(
            "/v1/channels/{id}/members",
            get(channels::get_members)
                .post(channels::add_members)
                .delete(channels::remove_members)
                .layer(uids_limit),
        )
        .route("/v1/channels/{id}/allowlist", list(Allow))
        .route("/v1/channels/{id}/denylist", list(Deny))
        .route("/v1/messages", post(messages::post_message))
        .route("/v1/channels/{id}/messages", get(messages::get_messages))
        .route(
            "/v1/channels/{id}/messages/{seq}",
            axum::routing::delete(messages::recall).patch(edit::edit),
        )
        .route(
            "/v1/channels/{id}/messages/{seq}/trace",
            get(messages::trace),
        )
        .route("/v1/channels/{id}/read", post(cursors::read))
        .route("/v1/channels/{id}/ack", post(cursors::ack))
        .route("/v1/conversations", get(conversations::conversations))
        .route("/v1/conversations/{id}/hide", post(hide::hide))
        .route("/v1/conversations/{id}/clear", post(hide::clear))
        .route("/v1/sync", get(conversations::sync))
        .route("/v1/changes", get(conversations::changes))
        .route("/v1/log", get(ops::log_stream))
        .route("/v1/tier", get(ops::tier_status))
        .route("/v1/tier/upload", post(ops::tier_upload))
        .route("/v1/openapi.json", get(openapi::document))
        // Any method but GET is answered 405 with `Allow: GET` before the caller is
        // authenticated, as every other endpoint's wrong method is (a HEAD was routed to the
        // upgrade with the GET: 401 without a token; others said `Allow: GET,HEAD`).
        .route(
            "/v1/ws",
            get(crate::server::ws::upgrade)
                .head(crate::server::ws::not_get)
                .fallback(crate::server::ws::not_get),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(head_limits));
    // Around every route and both fallbacks, so error answers carry the CORS headers too; inside
    // `observe`, so preflights are counted (as OPTIONS) like any request.
    let routes = match cors::layer(&c.http_cors_origins) {
        Some(layer) => routes.layer(layer),
        None => routes,
    };
    routes
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(BodyTimeout(
            std::time::Duration::from_secs(c.limits_http_read_timeout_secs),
        )))
        .with_state(state)
}
