//! Operations routes: liveness, metrics, the dashboard.

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;

use super::wire::{HealthAnswer, StatsAnswer};
use crate::state::AppState;

/// `GET /healthz`: 200 while the server runs (503 once it is shutting down).
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    summary = "Liveness",
    tag = "ops",
    responses(
        (status = 200, description = "`{\"status\": \"ok\"}`: the server runs.", body = HealthAnswer),
        (status = 503, description = "`{\"status\": \"stopping\"}`: the server is shutting down. (Not an `ErrorBody`: a liveness answer.)", body = HealthAnswer),
    )
)]
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let (status, text) = match state.is_stopping() {
        true => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "stopping"),
        false => (axum::http::StatusCode::OK, "ok"),
    };
    (status, Json(HealthAnswer { status: text.to_owned() }))
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    tag = "ops",
    responses((status = 200, description = "The metrics in the OpenMetrics text format.", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.metrics.render(state.engine.stats());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

/// `GET /`: the dashboard, one self-contained page that reads the API.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "dashboard",
    summary = "The dashboard",
    tag = "ops",
    responses((status = 200, description = "The dashboard: one self-contained page that reads the API.", body = String, content_type = "text/html; charset=utf-8"))
)]
pub async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

/// `GET /v1/stats`: the gauges as JSON, for the dashboard.
#[utoipa::path(
    get,
    path = "/v1/stats",
    operation_id = "stats",
    summary = "Gauges as JSON",
    tag = "ops",
    responses((status = 200, description = "The table's gauges, for the dashboard.", body = StatsAnswer))
)]
pub async fn stats(State(state): State<AppState>) -> Json<StatsAnswer> {
    let s = state.engine.stats();
    Json(StatsAnswer { held_locks: s.holds as u64, waiters: s.waiting as u64, sessions: s.sessions as u64 })
}
