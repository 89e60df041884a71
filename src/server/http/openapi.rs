//! The OpenAPI 3 document, generated from the handlers' annotations (utoipa), served at
//! `/v1/openapi.json` and checked in at `docs/openapi.json` (a test keeps the two equal).

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{channels, conversations, cursors, edit, hide, messages, ops, users};

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// The error.
    pub(crate) error: ErrorDetail,
}

/// An error.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// A stable snake_case code, e.g. `not_member`, `payload_too_large`.
    pub(crate) code: String,
    /// A readable explanation.
    pub(crate) message: String,
}

/// Adds the bearer scheme, and the denylist paths (the same operations as the allowlist ones).
struct Extras;

impl Modify for Extras {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for base in ["/v1/users/{uid}", "/v1/channels/{id}"] {
            let allow = format!("{base}/allowlist");
            if let Some(item) = openapi.paths.paths.get(&allow).cloned() {
                let mut deny = item;
                for op in [&mut deny.get, &mut deny.post, &mut deny.delete]
                    .into_iter()
                    .flatten()
                {
                    op.operation_id = op
                        .operation_id
                        .as_ref()
                        .map(|id| id.replace("allowlist", "denylist"));
                    op.summary = op
                        .summary
                        .as_ref()
                        .map(|s| s.replace("allowlist", "denylist"));
                }
                openapi.paths.paths.insert(format!("{base}/denylist"), deny);
            }
        }
    }
}

/// The API.
#[derive(OpenApi)]
#[openapi(
    info(title = "tidings", description = "An instant-messaging server on a checksummed commit log. Authorization: Bearer <admin key | user token>. Errors: {\"error\":{\"code\",\"message\"}}."),
    paths(
        users::create_token, users::list_tokens, users::revoke_tokens, users::revoke_token, users::logout,
        users::get_list, users::add_to_list, users::remove_from_list,
        channels::put_channel, channels::delete_channel, channels::get_channel,
        channels::get_members, channels::add_members, channels::remove_members,
        channels::get_list, channels::add_to_list, channels::remove_from_list,
        messages::post_message, messages::get_messages, messages::recall, edit::edit, messages::trace,
        cursors::read, cursors::ack,
        conversations::conversations, conversations::sync, conversations::changes,
        hide::hide, hide::clear,
        crate::server::ws::upgrade,
        ops::log_stream, ops::tier_status, ops::tier_upload, ops::healthz, ops::readyz, ops::metrics, document,
    ),
    modifiers(&Extras),
    tags(
        (name = "users", description = "Tokens and a user's own lists (admin)"),
        (name = "channels", description = "Group channels, members, lists (admin)"),
        (name = "messages", description = "Send, history, recall, edit, trace"),
        (name = "cursors", description = "Read and delivery cursors"),
        (name = "conversations", description = "Conversation list, offline sync, hide and clear"),
        (name = "websocket", description = "The WebSocket gateway"),
        (name = "ops", description = "Health, metrics, the event log"),
    )
)]
pub(crate) struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "ops", responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json")))]
pub(crate) async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
