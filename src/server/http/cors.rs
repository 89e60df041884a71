//! CORS (`http.cors_origins`): a web client served from another origin (the app at
//! `https://app.example.com`, this server at `https://im.example.com`) may call the HTTP API
//! from a browser. Off unless configured: no layer, no headers.
//!
//! One layer for every route, the admin ones included (their calls come from app servers,
//! which CORS does not concern; a browser holding the admin key is no worse off with it), and
//! for the fallbacks, so error answers (401, 404, 405, 429) carry the headers too: a browser
//! hides an answer without them from the page, which sees only a network error. A WebSocket
//! upgrade is not subject to CORS, and its `Origin` is not checked.

use std::time::Duration;

use axum::http::{HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may reuse a preflight's answer (browsers cap it lower: Chromium at two
/// hours, older ones at ten minutes).
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS layer for `origins` (checked at start: origins as browsers send them, or `*`
/// alone), or none when there are none.
///
/// Every `OPTIONS` request is answered as a preflight (200, no body); to an origin not in the
/// list without `Access-Control-Allow-Origin`, which the browser takes as a refusal. The
/// allowed methods are those the router uses, the request headers those the API reads
/// (`Authorization`, and `Content-Type` for JSON bodies), and `Retry-After` (a 429's) is
/// exposed to the page. No `Access-Control-Allow-Credentials`: the API takes bearer tokens,
/// not cookies, and `*` could not be used with it.
pub(crate) fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // The checked origins are all valid header values.
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}
