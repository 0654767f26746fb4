//! `GET /v1/namespaces/{ns}/events`: the namespace's changes as Server-Sent Events.
//!
//! Each event is `event: <acquired|released|expired|cancelled>`, `id: <revision>`,
//! `data: <json>`. A client resumes with `Last-Event-ID`: the events after that revision
//! still in the replay buffer ([`tumbler::mem::EVENT_BUFFER`] = 4096 events across all
//! namespaces) are sent first. When the id is older than the buffer, or the client falls
//! so far behind that live events were dropped, the stream sends one `reset` event
//! (`data: {"reason", "oldest"?}`) and goes on with live events: the client must re-read
//! the state it cares about, because it missed changes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tumbler_core::Event;

use super::error::ApiError;
use super::extract::{PathParams, QueryParams};
use super::wire::{EventsQuery, LockEvent, ResetEvent};
use crate::key::LockKey;
use crate::openapi::ErrorBody;
use crate::state::{AppState, StreamSlot};

/// `{ns}`.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct NamespacePath {
    /// The namespace.
    ns: String,
}

/// Which events a stream shows.
struct Filter {
    namespace: String,
    prefix: String,
}

impl Filter {
    fn wants(&self, key: &LockKey) -> bool {
        match key {
            LockKey::Lock { namespace, name } => **namespace == *self.namespace && name.starts_with(&self.prefix),
            LockKey::Mutex { namespace, property, .. } => {
                **namespace == *self.namespace && property.starts_with(&self.prefix)
            }
        }
    }
}

/// Opens the stream.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{ns}/events",
    operation_id = "watch_events",
    summary = "Watch a namespace's changes (SSE)",
    tag = "events",
    params(
        NamespacePath,
        EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, description = "Resume after this revision (the `id` of the last event seen): the events after it still in the replay buffer are sent first. When it is older than the buffer, the stream starts with a `reset` event."),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = String, description = "Server-Sent Events, live until the client goes or the server stops. \
            Each change is `event: <acquired|released|expired|cancelled>`, `id: <revision>`, `data: <LockEvent as JSON>`. \
            When changes were missed (a `Last-Event-ID` older than the replay buffer, or a client too slow to keep up), \
            one `event: reset` with `data: <ResetEvent as JSON>` comes first: re-read the state you care about. \
            A comment line keeps the connection alive every 15 s."),
        (status = 400, description = "`invalid_argument`: a bad namespace, a `Last-Event-ID` that is not a revision, or an unknown or malformed query parameter.", body = ErrorBody),
        (status = 429, description = "`limit_exceeded`: as many event streams are open as the server allows.", body = ErrorBody),
        (status = 503, description = "`unavailable`: this server records no events, or the stream is not available.", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    PathParams(path): PathParams<NamespacePath>,
    QueryParams(query): QueryParams<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    tumbler_core::validate_namespace(&path.ns)?;
    let after = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid("Last-Event-ID", "must be an event revision"))?,
        ),
        None => None,
    };
    let slot = state.0.open_stream()?;
    let filter = Arc::new(Filter { namespace: path.ns, prefix: query.prefix.unwrap_or_default() });
    let from = after.unwrap_or_else(|| state.engine.last_revision());
    let (first, replay, rx) = match state.engine.watch(from) {
        Some(Ok((replay, rx))) => (None, replay, rx),
        Some(Err(too_old)) => {
            let reset = reset("too_old", Some(too_old.oldest));
            let (_, rx) = state
                .engine
                .watch(state.engine.last_revision())
                .and_then(Result::ok)
                .ok_or_else(|| ApiError::unavailable("the event stream is not available"))?;
            (Some(reset), Vec::new(), rx)
        }
        None => return Err(ApiError::unavailable("this server records no events")),
    };
    let head = first.into_iter().chain(replay.iter().filter(|e| filter.wants(&e.key)).map(to_sse).collect::<Vec<_>>());
    let live = live(rx, filter, slot, state.stopping.clone());
    let stream = stream::iter(head).chain(live).map(Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The live part: events as they come, a `reset` when some were dropped, the end when the
/// server stops. Holds the stream's slot in the bound until the client goes.
fn live(
    rx: Receiver<Event<LockKey>>,
    filter: Arc<Filter>,
    slot: StreamSlot,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = SseEvent> {
    stream::unfold((rx, filter, slot, stopping), |(mut rx, filter, slot, mut stopping)| async move {
        loop {
            let received = tokio::select! {
                received = rx.recv() => received,
                _ = crate::state::stopped(&mut stopping) => return None,
            };
            match received {
                Ok(event) if filter.wants(&event.key) => return Some((to_sse(&event), (rx, filter, slot, stopping))),
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => return Some((reset("lagged", None), (rx, filter, slot, stopping))),
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

fn reset(reason: &str, oldest: Option<u64>) -> SseEvent {
    sse("reset", &ResetEvent { reason: reason.to_owned(), oldest })
}

fn to_sse(event: &Event<LockKey>) -> SseEvent {
    let (namespace, key, user, property_id) = match &event.key {
        LockKey::Lock { namespace, name } => (namespace, Some(name), None, None),
        LockKey::Mutex { namespace, user, property } => (namespace, None, Some(user), Some(property)),
    };
    let data = LockEvent {
        revision: event.revision,
        kind: event.kind.into(),
        namespace: namespace.to_string(),
        key: key.map(|k| k.to_string()),
        user: user.map(|u| u.to_string()),
        property_id: property_id.map(|p| p.to_string()),
        owner: event.owner.as_str().to_owned(),
        mode: event.mode.name().to_owned(),
        limit: event.mode.limit(),
        count: event.count,
        fencing_token: event.fencing_token,
    };
    sse(event.kind.name(), &data).id(event.revision.to_string())
}

/// An event named `name` whose data is `data` as JSON.
fn sse(name: &str, data: &impl serde::Serialize) -> SseEvent {
    SseEvent::default().event(name).data(serde_json::to_string(data).expect("BUG: event data always serializes"))
}
