//! API errors: always `{"error":{"code":"snake_case","message":"..."}}` with a fitting status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tidings_projections::permissions::SendDenied;

/// Whether an answer's message is the operator's (file paths, offsets, checksums, object
/// store errors): every 500, and the 503s that carry a storage fault's words. Anyone but the
/// admin key's caller gets [`internal_for_user`]'s words instead (the code and status stay).
pub(crate) fn is_operators(status: StatusCode, code: &str) -> bool {
    status == StatusCode::INTERNAL_SERVER_ERROR
        || (status == StatusCode::SERVICE_UNAVAILABLE
            && matches!(
                code,
                "storage_failed"
                    | "cold_storage_unavailable"
                    | "object_store_unavailable"
                    | "history_diverged"
                    | "fenced"
            ))
}

/// What a user is told of an error whose details are the operator's ([`is_operators`]): they
/// are logged here under an error id the answer names (the admin key's calls get them whole).
/// Over HTTP by the `observe` middleware (`/readyz` too), over a WebSocket by its error frames.
pub(crate) fn internal_for_user(detail: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = format!(
        "{:x}-{}",
        crate::server::state::now_ms(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    // A fault's words, not a body's worth of them.
    let mut cut = detail.len().min(4096);
    while !detail.is_char_boundary(cut) {
        cut -= 1;
    }
    let detail = &detail[..cut];
    tracing::error!(error_id = %id, error = %detail, "an internal error, answered to a user without its details");
    format!(
        "a fault of the server's storage (see the code); the server's log has its details \
         under error_id {id}"
    )
}

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// Whole seconds for a `Retry-After` header (a rate limit's 429: when a retry can pass).
    retry_after_secs: Option<u64>,
    /// A header of the answer: `Allow` with the methods taken (a 405 a handler answers
    /// itself), `Sec-WebSocket-Version` with the one served (a 426).
    header: Option<(axum::http::HeaderName, &'static str)>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            header: None,
        }
    }
    /// This error with `Allow: methods` (a 405: RFC 9110 asks for the methods taken).
    pub(crate) fn with_allow(mut self, methods: &'static str) -> Self {
        self.header = Some((axum::http::header::ALLOW, methods));
        self
    }
    /// This error with `Sec-WebSocket-Version: version` (a 426: RFC 6455 asks for the
    /// versions served).
    pub(crate) fn with_websocket_version(mut self, version: &'static str) -> Self {
        self.header = Some((axum::http::header::SEC_WEBSOCKET_VERSION, version));
        self
    }
    /// This error, answered over HTTP with `Retry-After: wait` in whole seconds, rounded up
    /// (at least 1: a client told 0 would retry at once and be refused again).
    pub(crate) fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        let secs = wait
            .as_secs()
            .saturating_add(u64::from(wait.subsec_nanos() > 0));
        self.retry_after_secs = Some(secs.max(1));
        self
    }
    /// The whole seconds of its `Retry-After`, if it has one.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        self.retry_after_secs
    }
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
    }
    pub(crate) fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
    pub(crate) fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        if let Some((name, value)) = self.header {
            resp.headers_mut()
                .insert(name, axum::http::HeaderValue::from_static(value));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The body may be left unread, so the server closes the connection after this
            // answer; saying so keeps clients from reusing it for their next request.
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

impl From<SendDenied> for ApiError {
    fn from(d: SendDenied) -> Self {
        let status = match d {
            SendDenied::ChannelNotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::FORBIDDEN,
        };
        ApiError::new(status, d.code(), d.to_string())
    }
}

impl From<tidings_log::LogError> for ApiError {
    fn from(e: tidings_log::LogError) -> Self {
        use tidings_log::LogError;
        match e {
            LogError::Io { .. } if e.is_cold_storage_unavailable() => {
                ApiError::unavailable("cold_storage_unavailable", e.to_string())
            }
            LogError::Tier(msg) => ApiError::unavailable("object_store_unavailable", msg),
            LogError::TierAccessDenied(_)
            | LogError::TierNoBucket(_)
            | LogError::TierDamaged(_) => {
                ApiError::unavailable("object_store_unavailable", e.to_string())
            }
            // Found at a claim after a start the store did not answer: tiering stopped, and the
            // next calls answer so too (`diverged`).
            LogError::HistoryNotInStore { .. } => {
                ApiError::unavailable("object_store_unavailable", e.to_string())
            }
            LogError::NotTheStoresHistory { diverged } => ApiError::unavailable(
                if diverged {
                    "history_diverged"
                } else {
                    "fenced"
                },
                e.to_string(),
            ),
            LogError::Closed => {
                ApiError::unavailable("shutting_down", "the server is shutting down")
            }
            LogError::Poisoned { .. } => ApiError::unavailable(
                "storage_failed",
                format!("the log stopped after a write failure: {e}"),
            ),
            // Below the first offset the log holds: its older segments were tiered out and
            // this server reads no object store (`tier.url` unset; start-up warns), or its
            // store did not answer at start and the log knows none of their segments (no
            // manifest copy in the directory; the log warns), or they were removed. Not the
            // server's fault to report as `internal`, nor the client's. Said without claiming
            // which: this conversion does not know whether `tier.url` is set.
            LogError::OffsetOutOfRange {
                requested, start, ..
            } if requested < start => ApiError::unavailable(
                "history_unavailable",
                format!(
                    "offset {requested} is not held by this server: its log starts at offset {start}; the older segments were removed, or are only in an object store this server does not read them from (tier.url is not set, or the store did not answer when the server started: a restart once it answers reads them)"
                ),
            ),
            LogError::Corrupt { .. } => {
                ApiError::internal(format!("stored data failed its checksum: {e}"))
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<tidings_projections::ProjectionError> for ApiError {
    fn from(e: tidings_projections::ProjectionError) -> Self {
        match e {
            tidings_projections::ProjectionError::Log(l) => l.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// Result of a handler.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_log::LogError;

    /// A read below the log's first offset (a tiered directory served without its store) is
    /// 503 `history_unavailable` naming where the log starts; one past its end is not.
    #[test]
    fn a_read_below_the_log_start_is_history_unavailable() {
        let below = ApiError::from(LogError::OffsetOutOfRange {
            requested: 6,
            start: 2275,
            end: 2407,
        });
        assert_eq!(
            (below.status, below.code),
            (StatusCode::SERVICE_UNAVAILABLE, "history_unavailable")
        );
        assert!(below.message.contains("starts at offset 2275"), "{below:?}");
        let past = ApiError::from(LogError::OffsetOutOfRange {
            requested: 2500,
            start: 2275,
            end: 2407,
        });
        assert_eq!(past.code, "internal");
    }
}
