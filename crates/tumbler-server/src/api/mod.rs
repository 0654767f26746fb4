//! The HTTP API of DESIGN.md §4: routes, handlers, and the one error shape.

pub mod error;
pub(crate) mod events;
pub mod extract;
pub(crate) mod gs2;
pub(crate) mod locks;
pub(crate) mod ops;
mod parse;
pub(crate) mod sessions;
pub mod wire;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use sessions::ended_sessions;

use self::error::ApiError;
use crate::metrics::RouteLabels;
use crate::state::AppState;

/// Every route of the API, with the body limit, the latency histogram and JSON errors for
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
        .layer(middleware::from_fn_with_state(state.clone(), front))
        .with_state(state)
}

/// What every request goes through, in one layer (each layer costs a service clone and a
/// boxed future per request): the body limit, the percent-encoding check, then the
/// handler, timed into the latency histogram under its route template, and logged.
async fn front(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    // Set here rather than by a layer of its own, which would add one more service to
    // clone per request.
    DefaultBodyLimit::max(state.config.limits.max_body_bytes).apply(&mut req);
    let labels = RouteLabels::new(req.method(), req.extensions().get::<MatchedPath>().map(MatchedPath::as_str));
    let started = Instant::now();
    let response = match bad_percent_encoding(req.uri().path()) {
        true => ApiError::invalid("path", "malformed percent-encoding").into_response(),
        false => next.run(req).await,
    };
    let elapsed = started.elapsed();
    state.metrics.latency.get_or_create(&labels).observe(elapsed.as_secs_f64());
    tracing::debug!(
        method = labels.method,
        route = labels.route,
        status = response.status().as_u16(),
        micros = elapsed.as_micros() as u64,
        "request"
    );
    response
}

/// Whether `path` has a `%` not followed by two hex digits: the router would take such a
/// segment literally, so it is answered 400 `invalid_argument` instead.
fn bad_percent_encoding(path: &str) -> bool {
    let path = path.as_bytes();
    path.iter().enumerate().any(|(i, b)| {
        *b == b'%'
            && !(path.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && path.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}
