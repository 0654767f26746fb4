//! The HTTP API of DESIGN.md §4: routes, handlers, and the one error shape.

pub mod error;
pub(crate) mod events;
pub mod extract;
mod front;
pub(crate) mod gs2;
pub(crate) mod locks;
pub(crate) mod ops;
mod parse;
pub(crate) mod sessions;
pub mod wire;

use axum::routing::{get, post};
use axum::Router;

pub use sessions::ended_sessions;

use self::error::ApiError;
use crate::state::AppState;

/// Every route of the API, with the latency histogram and JSON errors for
/// unknown routes and methods.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/sessions", post(sessions::open))
        .route("/v1/sessions/{id}/keepalive", post(sessions::keepalive))
        .route("/v1/sessions/{id}", axum::routing::delete(sessions::close))
        .route("/v1/namespaces/{ns}/locks/{key}/acquire", post(locks::acquire_one))
        .route("/v1/namespaces/{ns}/locks/{key}/release", post(locks::release))
        .route("/v1/namespaces/{ns}/locks/{key}/refresh", post(locks::refresh))
        .route("/v1/namespaces/{ns}/locks/{key}", get(locks::status).delete(locks::force_release))
        .route("/v1/namespaces/{ns}/locks", get(locks::list))
        .route("/v1/namespaces/{ns}/acquire", post(locks::acquire_all))
        .route("/v1/namespaces/{ns}/events", get(events::events))
        .route("/v1/namespaces/{ns}/users/{user}/mutexes/{property_id}", get(gs2::get))
        .route("/v1/namespaces/{ns}/users/{user}/mutexes/{property_id}/lock", post(gs2::lock))
        .route("/v1/namespaces/{ns}/users/{user}/mutexes/{property_id}/unlock", post(gs2::unlock))
        .route("/v1/namespaces/{ns}/users/{user}/mutexes", get(gs2::list))
        .route("/v1/stats", get(ops::stats))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route("/", get(ops::dashboard))
        .route("/openapi.json", get(crate::openapi::serve))
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
                code: "invalid_argument",
                message: "this route does not take that method".into(),
                details: serde_json::json!({}),
            }
        })
        .layer(front::FrontLayer::new(state.clone()))
        .with_state(state)
}
