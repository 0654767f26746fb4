//! Operations routes: liveness, metrics, the dashboard.

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

/// `GET /healthz`: 200 while the server runs (503 once it is shutting down).
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.is_stopping() {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "stopping" })));
    }
    (axum::http::StatusCode::OK, Json(json!({ "status": "ok" })))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.metrics.render(state.engine.stats());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

/// `GET /`: the dashboard, one self-contained page that reads the API.
pub async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

/// `GET /v1/stats`: the gauges as JSON, for the dashboard.
pub async fn stats(State(state): State<AppState>) -> Json<Value> {
    let s = state.engine.stats();
    Json(json!({ "held_locks": s.holds, "waiters": s.waiting, "sessions": s.sessions }))
}
