//! Plain locks: acquire (one key or several), release, refresh, status, listing, force
//! release.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use smallvec::SmallVec;
use tumbler_core::{Acquire, Error, Grant, HolderStatus, KeyStatus, Mode, Wait};

use super::error::ApiError;
use super::extract::{Body, PathParams, QueryParams};
use super::parse;
use super::wire::{
    AcquireAll, AcquireFields, CountAnswer, ForceAnswer, HoldAnswer, HolderAnswer, HoldsAnswer, ListAnswer, ListQuery,
    Refresh, RefreshAnswer, Release, StatusAnswer,
};
use crate::key::LockKey;
use crate::openapi::ErrorBody;
use crate::state::{AppState, Shared};

/// `{ns}/locks/{key}` path parameters.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct LockPath {
    /// The namespace.
    ns: String,
    /// The lock's key: one path segment, percent-encoded.
    key: String,
}

impl LockPath {
    fn key(&self) -> Result<LockKey, ApiError> {
        Ok(LockKey::lock(&self.ns, &self.key)?)
    }
}

/// `{ns}` path parameter.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct NamespacePath {
    /// The namespace.
    ns: String,
}

/// `POST /v1/namespaces/{ns}/locks/{key}/acquire`.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/locks/{key}/acquire",
    operation_id = "acquire_lock",
    summary = "Acquire a lock",
    description = "Acquires `key` in `mode` for `owner`, bound to a session or a TTL. With `wait_ms` above 0 the request waits (long-polls) up to that long in the key's fair FIFO queue; a client that disconnects cancels its wait. A retried request with the same `request_id` counts once.",
    tag = "locks",
    params(LockPath),
    request_body(content = AcquireFields, description = "`owner` is generated when absent; one of `session` / `ttl_ms` is required; `wait_ms` 0 (default) is a try, otherwise a long-poll up to that bound. An empty body reads as `{}`."),
    responses(
        (status = 200, description = "The hold.", body = HoldAnswer),
        (status = 400, description = "`invalid_argument`: a bad field (owner, mode, limit, ttl_ms, wait_ms, request_id, session), neither `session` nor `ttl_ms`, a bad namespace or key, an unknown field or malformed JSON.", body = ErrorBody),
        (status = 404, description = "`session_expired`: this server never issued the `session`.", body = ErrorBody),
        (status = 409, description = "`busy` (held incompatibly and `wait_ms` is 0; `details.holders` names the holders), `timeout` (the wait ran out) or `deadlock` (waiting would close a cycle; `details.cycle` names the owners).", body = ErrorBody),
        (status = 410, description = "`session_expired`: the `session` has ended.", body = ErrorBody),
        (status = 413, description = "`limit_exceeded`: the body is larger than the server accepts.", body = ErrorBody),
        (status = 429, description = "`limit_exceeded`: a quota of the server (waiters per key, holds per session, keys per namespace); `details` names it and its `max`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store could not write (the grant is undone) or the server is shutting down.", body = ErrorBody),
    )
)]
pub async fn acquire_one(
    State(state): State<AppState>,
    PathParams(path): PathParams<LockPath>,
    Body(fields): Body<AcquireFields>,
) -> Result<Json<HoldAnswer>, ApiError> {
    let key = path.key()?;
    let mut holds = acquire(&state, SmallVec::from_buf([key]), fields).await?;
    Ok(Json(holds.remove(0)))
}

/// `POST /v1/namespaces/{ns}/acquire`.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/acquire",
    operation_id = "acquire_locks",
    summary = "Acquire several locks, all or none",
    tag = "locks",
    params(NamespacePath),
    request_body(content = AcquireAll, description = "All the keys or none, with the fields of a single acquire. `keys` names 1 to `max_keys_per_request` distinct keys."),
    responses(
        (status = 200, description = "One hold per key, in the order asked.", body = HoldsAnswer),
        (status = 400, description = "`invalid_argument`: a bad field (owner, mode, limit, ttl_ms, wait_ms, request_id, session), neither `session` nor `ttl_ms`, a bad namespace or key, no key or a key named twice, an unknown field or malformed JSON.", body = ErrorBody),
        (status = 404, description = "`session_expired`: this server never issued the `session`.", body = ErrorBody),
        (status = 409, description = "`busy` (held incompatibly and `wait_ms` is 0; `details.holders` names the holders), `timeout` (the wait ran out) or `deadlock` (waiting would close a cycle; `details.cycle` names the owners).", body = ErrorBody),
        (status = 410, description = "`session_expired`: the `session` has ended.", body = ErrorBody),
        (status = 413, description = "`limit_exceeded`: the body is larger than the server accepts, or more keys than `max_keys_per_request` (`details.limit` says which, `details.max` the bound).", body = ErrorBody),
        (status = 429, description = "`limit_exceeded`: a quota of the server (waiters per key, holds per session, keys per namespace); `details` names it and its `max`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store could not write (the grant is undone) or the server is shutting down.", body = ErrorBody),
    )
)]
pub async fn acquire_all(
    State(state): State<AppState>,
    PathParams(path): PathParams<NamespacePath>,
    Body(body): Body<AcquireAll>,
) -> Result<Json<HoldsAnswer>, ApiError> {
    let (names, fields) = body.split();
    let max = state.config.limits.max_keys_per_request;
    if names.is_empty() {
        return Err(ApiError::invalid("keys", "at least one key is required"));
    }
    if names.len() > max {
        return Err(ApiError::request_too_large("keys_per_request", max));
    }
    let keys = names.iter().map(|n| LockKey::lock(&path.ns, n)).collect::<Result<SmallVec<_>, _>>()?;
    // The answer pairs `holds[i]` with `keys[i]`; the core would fold a repeated key into
    // one hold and break that pairing, so a repeat is the client's mistake to hear about.
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    if let Some(repeated) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(ApiError::invalid("keys", format!("key {repeated:?} is named more than once")));
    }
    Ok(Json(HoldsAnswer { holds: acquire(&state, keys, fields).await? }))
}

/// Acquires `keys` as `fields` say, waits as long as allowed (ending early with 503 when
/// the server stops), writes the grant, and answers per key. A grant the store cannot
/// write is released again and answered with 503, so no hold outlives a failed answer.
pub async fn acquire(
    state: &Shared,
    keys: SmallVec<[LockKey; 1]>,
    fields: AcquireFields,
) -> Result<Vec<HoldAnswer>, ApiError> {
    let owner = match &fields.owner {
        Some(id) => parse::owner(id)?,
        None => parse::generated_owner(),
    };
    let mode = parse::mode(fields.mode.as_deref(), fields.limit)?;
    let session = fields.session.as_deref().map(|s| parse::session(state, s)).transpose()?;
    let ttl = fields.ttl_ms.map(|ms| parse::ttl("ttl_ms", ms, state)).transpose()?;
    if session.is_none() && ttl.is_none() {
        return Err(ApiError::invalid("session", "one of `session` and `ttl_ms` is required"));
    }
    let wait = parse::wait(fields.wait_ms.unwrap_or(0), state)?;
    let mut req = Acquire::all(keys.iter().cloned(), owner).mode(mode);
    req = req.wait(wait.map_or(Wait::NoWait, Wait::Timeout));
    if let Some(ttl) = ttl {
        req = req.ttl(ttl);
    }
    if let Some(session) = session {
        req = req.session(session);
    }
    if let Some(id) = &fields.request_id {
        req = req.request_id(parse::request_id(id)?);
    }
    if let Some(delay) = keys.first().and_then(|k| state.config.lock_delays.get(k.namespace())) {
        req = req.lock_delay(*delay);
    }
    if wait.is_some() {
        state.metrics.waits.inc();
    }
    let outcome = match wait {
        // A try answers at once: nothing to interrupt.
        None => state.engine.acquire(req).await,
        Some(_) => {
            let mut stopping = state.stopping.clone();
            tokio::select! {
                outcome = state.engine.acquire(req) => outcome,
                _ = crate::state::stopped(&mut stopping) => return Err(ApiError::unavailable("the server is shutting down")),
            }
        }
    };
    let grant = outcome.inspect_err(|e| match e {
        Error::Timeout => {
            state.metrics.timeouts.inc();
        }
        Error::Deadlock { .. } => {
            state.metrics.deadlocks.inc();
        }
        _ => {}
    })?;
    let highest = grant.holds.iter().map(|h| h.fencing_token).max().unwrap_or(0);
    if let Err(e) = state.persist(&keys, Vec::new(), highest).await {
        if !grant.retried {
            state.engine.release_grant(&grant);
        }
        return Err(e);
    }
    Ok(answers(state, &grant))
}

fn answers(state: &Shared, grant: &Grant<LockKey>) -> Vec<HoldAnswer> {
    grant
        .holds
        .iter()
        .map(|h| {
            let (namespace, key) = names(&h.key);
            HoldAnswer {
                namespace,
                key,
                owner: grant.owner.as_str().to_owned(),
                mode: grant.mode.name().to_owned(),
                limit: grant.mode.limit(),
                count: h.count,
                fencing_token: h.fencing_token,
                session: grant.session.map(|s| s.0.to_string()),
                expires_at_ms: h.expires_at.map(|at| state.clock.unix_ms(at)),
            }
        })
        .collect()
}

/// The namespace and the name a client knows the key by (for a GS2 mutex, its property).
pub fn names(key: &LockKey) -> (String, String) {
    match key {
        LockKey::Lock { namespace, name } => (namespace.to_string(), name.to_string()),
        LockKey::Mutex { namespace, property, .. } => (namespace.to_string(), property.to_string()),
    }
}

/// `POST /v1/namespaces/{ns}/locks/{key}/release`.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/locks/{key}/release",
    operation_id = "release_lock",
    summary = "Release one level of a hold",
    tag = "locks",
    params(LockPath),
    request_body = Release,
    responses(
        (status = 200, description = "One level released; the levels the owner still holds.", body = CountAnswer),
        (status = 400, description = "`invalid_argument`: a bad owner, mode or limit (or `mode` is needed because the owner holds the key in several), a bad namespace or key, an unknown field or malformed JSON.", body = ErrorBody),
        (status = 404, description = "`not_held`: the owner holds no such hold (or not with that `fencing_token`).", body = ErrorBody),
        (status = 409, description = "`not_owner`: others hold the key, not this owner.", body = ErrorBody),
        (status = 413, description = "`limit_exceeded`: the body is larger than the server accepts.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store could not write.", body = ErrorBody),
    )
)]
pub async fn release(
    State(state): State<AppState>,
    PathParams(path): PathParams<LockPath>,
    Body(body): Body<Release>,
) -> Result<Json<CountAnswer>, ApiError> {
    let key = path.key()?;
    let owner = parse::owner(&body.owner)?;
    let mode = parse::hold_mode(body.mode.as_deref(), body.limit)?;
    let count = state.engine.release(&key, &owner, mode, body.fencing_token)?;
    state.persist(std::slice::from_ref(&key), Vec::new(), 0).await?;
    Ok(Json(CountAnswer { count }))
}

/// `POST /v1/namespaces/{ns}/locks/{key}/refresh`.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/locks/{key}/refresh",
    operation_id = "refresh_lock",
    summary = "Extend a TTL hold",
    tag = "locks",
    params(LockPath),
    request_body = Refresh,
    responses(
        (status = 200, description = "The hold now expires `ttl_ms` from now, or later if it already did (never earlier).", body = RefreshAnswer),
        (status = 400, description = "`invalid_argument`: a bad owner, `ttl_ms`, mode or limit, a hold without a TTL (nothing to extend), a bad namespace or key, an unknown field or malformed JSON.", body = ErrorBody),
        (status = 404, description = "`not_held`: the owner holds no such hold (or not with that `fencing_token`).", body = ErrorBody),
        (status = 409, description = "`not_owner`: others hold the key, not this owner.", body = ErrorBody),
        (status = 413, description = "`limit_exceeded`: the body is larger than the server accepts.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store could not write.", body = ErrorBody),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    PathParams(path): PathParams<LockPath>,
    Body(body): Body<Refresh>,
) -> Result<Json<RefreshAnswer>, ApiError> {
    let key = path.key()?;
    let owner = parse::owner(&body.owner)?;
    let ttl = parse::ttl("ttl_ms", body.ttl_ms, &state)?;
    let mode = parse::hold_mode(body.mode.as_deref(), body.limit)?;
    let at = state.engine.refresh(&key, &owner, mode, ttl).map_err(|e| match e {
        // The core's `ttl` is this body's `ttl_ms`.
        Error::InvalidArgument { field: "ttl", reason } => Error::InvalidArgument { field: "ttl_ms", reason },
        other => other,
    })?;
    state.persist(std::slice::from_ref(&key), Vec::new(), 0).await?;
    Ok(Json(RefreshAnswer { expires_at_ms: state.clock.unix_ms(at) }))
}

/// `GET /v1/namespaces/{ns}/locks/{key}`: 404 `not_held` when free.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{ns}/locks/{key}",
    operation_id = "get_lock",
    summary = "A lock's holders and waiters",
    tag = "locks",
    params(LockPath),
    responses(
        (status = 200, description = "Who holds the key and how many wait.", body = StatusAnswer),
        (status = 400, description = "`invalid_argument`: a bad namespace or key.", body = ErrorBody),
        (status = 404, description = "`not_held`: the key is free.", body = ErrorBody),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    PathParams(path): PathParams<LockPath>,
) -> Result<Json<StatusAnswer>, ApiError> {
    let key = path.key()?;
    let status = state.held(&key).ok_or(Error::NotHeld)?;
    Ok(Json(status_answer(&state, &key, &status)))
}

/// A key's status as the API shows it.
pub fn status_answer(state: &Shared, key: &LockKey, status: &KeyStatus) -> StatusAnswer {
    let (namespace, name) = names(key);
    // The key is as strong as its strongest hold: after an upgrade the owner holds it both
    // shared and exclusive, and to everyone else it is exclusive.
    let modes = || status.holders.iter().map(|h| h.holder.mode);
    let mode = modes().find(|m| *m == Mode::Exclusive).or_else(|| modes().next()).unwrap_or(Mode::Exclusive);
    StatusAnswer {
        namespace,
        key: name,
        mode: mode.name().to_owned(),
        limit: mode.limit(),
        holders: status.holders.iter().map(|h| holder_answer(state, h)).collect(),
        waiters: status.waiters,
    }
}

fn holder_answer(state: &Shared, h: &HolderStatus) -> HolderAnswer {
    HolderAnswer {
        owner: h.holder.owner.as_str().to_owned(),
        mode: h.holder.mode.name().to_owned(),
        count: h.holder.count,
        fencing_token: h.holder.fencing_token,
        session: h.session.map(|s| s.0.to_string()),
        expires_at_ms: h.expires_at.map(|at| state.clock.unix_ms(at)),
    }
}

/// `GET /v1/namespaces/{ns}/locks?prefix=&limit=&after=`: held locks in key order.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{ns}/locks",
    operation_id = "list_locks",
    summary = "List held locks",
    description = "Held locks of the namespace in key order, a page at a time: pass the answer's `next_after` as `after` for the next page.",
    tag = "locks",
    params(NamespacePath, ListQuery),
    responses(
        (status = 200, description = "A page of held locks in key order.", body = ListAnswer),
        (status = 400, description = "`invalid_argument`: a bad namespace, a `limit` outside 1 to the page bound, or an unknown or malformed query parameter.", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    PathParams(path): PathParams<NamespacePath>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<ListAnswer>, ApiError> {
    tumbler_core::validate_namespace(&path.ns)?;
    let max = state.config.limits.max_page;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > max {
        return Err(ApiError::invalid("limit", format!("must be 1 to {max}")));
    }
    let prefix = query.prefix.unwrap_or_default();
    let after = query.after;
    let mut keys = state.engine.held_keys(|k| match k {
        LockKey::Lock { namespace, name } => {
            **namespace == *path.ns && name.starts_with(&prefix) && after.as_deref().is_none_or(|a| **name > *a)
        }
        LockKey::Mutex { .. } => false,
    });
    keys.sort();
    let more = keys.len() > limit;
    keys.truncate(limit);
    let items: Vec<StatusAnswer> =
        keys.iter().filter_map(|k| state.held(k).map(|s| status_answer(&state, k, &s))).collect();
    let next_after = if more { keys.last().map(|k| names(k).1) } else { None };
    Ok(Json(ListAnswer { items, next_after }))
}

/// `DELETE /v1/namespaces/{ns}/locks/{key}`: ends every hold of the key (their owners'
/// clients see `not_held` from then on). 404 `not_held` when nobody held it.
#[utoipa::path(
    delete,
    path = "/v1/namespaces/{ns}/locks/{key}",
    operation_id = "force_release_lock",
    summary = "Force-release a lock (admin)",
    description = "Ends every hold of the key; their owners see `not_held` from then on.",
    tag = "locks",
    params(LockPath),
    responses(
        (status = 200, description = "Every hold of the key has ended (an admin operation).", body = ForceAnswer),
        (status = 400, description = "`invalid_argument`: a bad namespace or key.", body = ErrorBody),
        (status = 404, description = "`not_held`: nobody held the key.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store could not write.", body = ErrorBody),
    )
)]
pub async fn force_release(
    State(state): State<AppState>,
    PathParams(path): PathParams<LockPath>,
) -> Result<Json<ForceAnswer>, ApiError> {
    let key = path.key()?;
    let released = state.engine.force_release(&key);
    if released == 0 {
        return Err(Error::NotHeld.into());
    }
    state.persist(std::slice::from_ref(&key), Vec::new(), 0).await?;
    Ok(Json(ForceAnswer { released }))
}
