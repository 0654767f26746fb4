//! `GET /openapi.json`: the OpenAPI 3.1 document of the API of DESIGN.md §4, generated
//! from the code by [`utoipa`].
//!
//! The routes, their parameters and their answers come from the `#[utoipa::path]`
//! annotations on the handlers and the `ToSchema` / `IntoParams` derives on the bodies of
//! [`crate::api::wire`]; this module only gathers them. The one shape the handlers build
//! with `json!` rather than a typed body — the error shape — is mirrored here as a schema
//! type, checked against `ApiError` by a test.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::api::wire::{EventType, LockEvent, ResetEvent};
use crate::api::{events, gs2, locks, ops, sessions};

/// The API's document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tumbler lock server",
        version = env!("CARGO_PKG_VERSION"),
        description = "Locks, sessions, long-poll waits, events and GS2-style mutexes (DESIGN.md §4). \
            JSON bodies with snake_case fields (camelCase for the GS2 routes), times in \
            milliseconds, keys in paths as percent-encoded single segments. Every error is \
            an `ErrorBody`; an unknown route is 404 and a wrong method 405, both \
            `invalid_argument`.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        sessions::open,
        sessions::keepalive,
        sessions::close,
        locks::acquire_one,
        locks::release,
        locks::refresh,
        locks::status,
        locks::force_release,
        locks::list,
        locks::acquire_all,
        events::events,
        gs2::get,
        gs2::lock,
        gs2::unlock,
        gs2::list,
        ops::stats,
        ops::healthz,
        ops::metrics,
        ops::dashboard,
        serve,
    ),
    components(schemas(ErrorBody, ErrorCode, LockEvent, EventType, ResetEvent)),
    tags(
        (name = "sessions", description = "Session leases: holds bound to a session end with it."),
        (name = "locks", description = "Plain locks: exclusive, shared and semaphore holds with fencing tokens."),
        (name = "events", description = "A namespace's changes as Server-Sent Events."),
        (name = "gs2", description = "GS2-Lock style per-user mutexes, in a key space of their own."),
        (name = "ops", description = "Liveness, metrics, the dashboard and this document."),
    )
)]
pub struct ApiDoc;

/// The document, serialized once.
static DOCUMENT: LazyLock<String> =
    LazyLock::new(|| ApiDoc::openapi().to_json().expect("BUG: the OpenAPI document always serializes"));

/// The OpenAPI document as a value (for tools and tests; the server serves [`serve`]).
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /openapi.json`: this API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    summary = "This document",
    tag = "ops",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object, content_type = "application/json"))
)]
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}

/// Every error answer: `{"error": {"code", "message", "details"}}`, with the status the
/// code gives.
// Mirrors `ApiError::into_response` in `api/error.rs`; `every_api_error_is_an_error_body`
// below keeps the two in step.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    #[allow(missing_docs)]
    #[schema(inline)]
    pub error: ErrorDetail,
}

/// The error: its stable code, a message for people and details for programs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// The stable code; the status follows from it (DESIGN.md §4).
    pub code: ErrorCode,
    /// For people; not stable.
    pub message: String,
    /// For programs: `field` for `invalid_argument`; `holders` (`owner`, `mode`, `count`,
    /// `fencing_token`, `limit`?) for `busy`; `cycle` (owners) for `deadlock`; `limit` and
    /// `max` for `limit_exceeded`; `{}` otherwise.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// The stable error codes (DESIGN.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400 (also 404 for an unknown route, 405 for a wrong method).
    InvalidArgument,
    /// 401.
    Unauthenticated,
    /// 403.
    PermissionDenied,
    /// 404: nobody holds the key (or not with that fencing token).
    NotHeld,
    /// 409: held incompatibly and the request did not wait.
    Busy,
    /// 409: the wait ran out.
    Timeout,
    /// 409: waiting would close a cycle of owners.
    Deadlock,
    /// 409: others hold the key, not this owner.
    NotOwner,
    /// 410 once a session has ended; 404 for a session id this server never issued.
    SessionExpired,
    /// 413 for a body over the limit; 429 for the server's quotas.
    LimitExceeded,
    /// 503: the store could not write, or the server is stopping.
    Unavailable,
    /// 500: a bug.
    Internal,
}

/// `{}`: done, nothing to tell.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EmptyAnswer {}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use serde_json::json;

    use super::*;
    use crate::api::error::ApiError;

    async fn body_of(error: ApiError) -> (StatusCode, ErrorBody) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, serde_json::from_slice(&bytes).expect("an ErrorBody, no more and no less"))
    }

    #[tokio::test]
    async fn every_api_error_is_an_error_body() {
        let errors = [
            ApiError::invalid("ttl_ms", "must be greater than zero"),
            ApiError::unknown_session(),
            ApiError::body_too_large(10),
            ApiError::quota("event_streams", 1),
            ApiError::no_route(),
            ApiError::unavailable("down"),
            tumbler_core::Error::NotHeld.into(),
            tumbler_core::Error::NotOwner.into(),
            tumbler_core::Error::Timeout.into(),
            tumbler_core::Error::SessionExpired.into(),
            tumbler_core::Error::Internal("x".into()).into(),
        ];
        for error in errors {
            let code = error.code;
            let (_, body) = body_of(error).await;
            assert_eq!(json!(body.error.code), json!(code), "the code survives the round trip");
            assert!(body.error.details.is_object(), "details is always an object");
        }
    }

    #[test]
    fn the_document_serializes() {
        let doc: serde_json::Value = serde_json::from_str(&DOCUMENT).expect("JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")));
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    }
}
