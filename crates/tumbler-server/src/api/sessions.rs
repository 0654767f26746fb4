//! Session leases: open, keep alive, close.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use tumbler_core::SessionInfo;

use super::error::ApiError;
use super::extract::{Body, PathParams};
use super::parse;
use super::wire::{OpenSession, SessionAnswer};
use crate::state::{AppState, Shared};
use crate::store::{Change, SessionRecord};

/// `POST /v1/sessions`.
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
pub async fn keepalive(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<SessionAnswer>, ApiError> {
    let id = parse::session(&state, &id)?;
    let info = state.engine.keepalive(id)?;
    let label = state.sessions.lock().get(&id.0).and_then(|r| r.label.clone());
    Ok(Json(answer(&state, &info, label)))
}

/// `DELETE /v1/sessions/{id}`: ends it, releasing all its holds and cancelling its waits.
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
