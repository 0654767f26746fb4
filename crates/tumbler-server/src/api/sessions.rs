//! Session leases: open, keep alive, close.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use tumbler_core::SessionInfo;

use super::error::ApiError;
use super::extract::{Body, PathParams};
use super::parse;
use super::wire::{Keepalive, OpenSession, SessionAnswer};
use crate::openapi::{EmptyAnswer, ErrorBody};
use crate::state::{AppState, Shared};
use crate::store::{Change, SessionRecord};

/// `POST /v1/sessions`.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    operation_id = "open_session",
    summary = "Open a session lease",
    tag = "sessions",
    request_body = OpenSession,
    responses(
        (status = 200, description = "The session is open.", body = SessionAnswer),
        (status = 400, description = "`invalid_argument`: a bad `ttl_ms` (zero or over the bound), a too long `label`, an unknown field or malformed JSON.", body = ErrorBody),
        (status = 413, description = "`limit_exceeded`: the body is larger than the server accepts.", body = ErrorBody),
        (status = 429, description = "`limit_exceeded`: as many sessions are open as the server allows.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store could not write; the session was not opened.", body = ErrorBody),
    )
)]
pub async fn open(
    State(state): State<AppState>,
    Body(body): Body<OpenSession>,
) -> Result<Json<SessionAnswer>, ApiError> {
    let ttl = parse::ttl("ttl_ms", body.ttl_ms, &state)?;
    if body.label.as_ref().is_some_and(|l| l.len() > parse::MAX_LABEL_BYTES) {
        return Err(ApiError::invalid("label", format!("must be at most {} bytes", parse::MAX_LABEL_BYTES)));
    }
    let info = state.engine.open_session(ttl)?;
    let record = SessionRecord { id: info.id.0, ttl_ms: body.ttl_ms, label: body.label };
    state.last_session.fetch_max(info.id.0, Ordering::AcqRel);
    state.sessions.lock().insert(info.id.0, record.clone());
    if let Err(e) = state.persist(&[], vec![Change::SessionOpened(record.clone())], 0).await {
        let _ = state.engine.end_session(info.id);
        state.sessions.lock().remove(&info.id.0);
        return Err(e);
    }
    Ok(Json(answer(&state, &info, record.label)))
}

/// `POST /v1/sessions/{id}/keepalive`: 410 once the session has ended.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/keepalive",
    operation_id = "keepalive_session",
    summary = "Renew a session lease",
    description = "Renews the lease from now. 410 once the session has ended.",
    tag = "sessions",
    params(("id" = String, Path, description = "The session id, as `POST /v1/sessions` answered it.")),
    request_body(content = Keepalive, description = "Empty, or `{}`: the lease keeps its TTL."),
    responses(
        (status = 200, description = "The lease is renewed from now.", body = SessionAnswer),
        (status = 400, description = "`invalid_argument`: a field in the body (there are none), or malformed JSON.", body = ErrorBody),
        (status = 404, description = "`session_expired`: this server never issued that id.", body = ErrorBody),
        (status = 413, description = "`limit_exceeded`: the body is larger than the server accepts.", body = ErrorBody),
        (status = 410, description = "`session_expired`: the session has ended (closed, or its lease ran out).", body = ErrorBody),
    )
)]
pub async fn keepalive(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    Body(_): Body<Keepalive>,
) -> Result<Json<SessionAnswer>, ApiError> {
    let id = parse::session(&state, &id)?;
    let info = state.engine.keepalive(id)?;
    let label = state.sessions.lock().get(&id.0).and_then(|r| r.label.clone());
    Ok(Json(answer(&state, &info, label)))
}

/// `DELETE /v1/sessions/{id}`: ends it, releasing all its holds and cancelling its waits.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    operation_id = "close_session",
    summary = "End a session",
    description = "Ends the session, releasing all its holds and cancelling its waits.",
    tag = "sessions",
    params(("id" = String, Path, description = "The session id, as `POST /v1/sessions` answered it.")),
    responses(
        (status = 200, description = "The session has ended; its holds are released and its waits cancelled.", body = EmptyAnswer),
        (status = 400, description = "`invalid_argument`: the id is not a session id.", body = ErrorBody),
        (status = 404, description = "`session_expired`: this server never issued that id.", body = ErrorBody),
        (status = 410, description = "`session_expired`: the session has already ended.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store could not write.", body = ErrorBody),
    )
)]
pub async fn close(State(state): State<AppState>, PathParams(id): PathParams<String>) -> Result<Json<Value>, ApiError> {
    let id = parse::session(&state, &id)?;
    state.engine.end_session(id)?;
    state.sessions.lock().remove(&id.0);
    state.persist(&[], vec![Change::SessionClosed(id.0)], 0).await?;
    Ok(Json(json!({})))
}

fn answer(state: &Shared, info: &SessionInfo, label: Option<String>) -> SessionAnswer {
    SessionAnswer {
        id: info.id.0.to_string(),
        ttl_ms: info.ttl.as_millis() as u64,
        expires_at_ms: state.clock.unix_ms(info.expires_at),
        label,
    }
}

/// Sessions this server believed open that the table has ended (their lease ran out):
/// forgets them and returns their ids, for the store.
pub fn ended_sessions(state: &Shared) -> Vec<u64> {
    let ids: Vec<u64> = state.sessions.lock().keys().copied().collect();
    let ended: Vec<u64> =
        ids.into_iter().filter(|id| state.engine.session_info(tumbler_core::SessionId(*id)).is_none()).collect();
    let mut sessions = state.sessions.lock();
    for id in &ended {
        sessions.remove(id);
    }
    ended
}
