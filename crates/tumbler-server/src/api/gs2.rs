//! The GS2-Lock facade: per-user mutexes addressed by `(namespace, user, propertyId)`,
//! re-entered by the same `transactionId`, with a TTL in seconds. They live in a key space
//! of their own ([`LockKey::Mutex`]) and never meet plain locks.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use smallvec::SmallVec;
use tumbler_core::{Error, KeyStatus, Mode};

use super::error::ApiError;
use super::extract::{Body, PathParams};
use super::locks;
use super::parse;
use super::wire::{AcquireFields, Gs2Item, Gs2Items, Gs2Lock, Gs2Mutex, Gs2Unlock};
use crate::key::LockKey;
use crate::openapi::ErrorBody;
use crate::state::{AppState, Shared};

/// `{ns}/users/{user}/mutexes/{property_id}`.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct MutexPath {
    /// The namespace.
    ns: String,
    /// The user the mutex belongs to.
    user: String,
    /// The mutex's property id: one path segment, percent-encoded.
    property_id: String,
}

impl MutexPath {
    fn key(&self) -> Result<LockKey, ApiError> {
        Ok(LockKey::mutex(&self.ns, &self.user, &self.property_id)?)
    }
}

/// `{ns}/users/{user}`.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct UserPath {
    /// The namespace.
    ns: String,
    /// The user.
    user: String,
}

/// `GET .../mutexes/{property_id}`: 404 `not_held` when unlocked.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{ns}/users/{user}/mutexes/{property_id}",
    operation_id = "get_mutex",
    summary = "A GS2 mutex",
    tag = "gs2",
    params(MutexPath),
    responses(
        (status = 200, description = "The mutex and its holder.", body = Gs2Item),
        (status = 400, description = "`invalid_argument`: a bad namespace, user or property id.", body = ErrorBody),
        (status = 404, description = "`not_held`: the mutex is unlocked.", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    PathParams(path): PathParams<MutexPath>,
) -> Result<Json<Gs2Item>, ApiError> {
    let key = path.key()?;
    let status = state.held(&key).ok_or(Error::NotHeld)?;
    Ok(Json(Gs2Item { item: view(&state, &key, &status) }))
}

/// `POST .../mutexes/{property_id}/lock`: the same `transactionId` re-enters, another is
/// 409 `busy`. Never waits.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/users/{user}/mutexes/{property_id}/lock",
    operation_id = "lock_mutex",
    summary = "Lock a GS2 mutex",
    description = "The same `transactionId` re-enters; another is 409 `busy`. `ttl` is in seconds. Never waits.",
    tag = "gs2",
    params(MutexPath),
    request_body = Gs2Lock,
    responses(
        (status = 200, description = "Locked (or re-entered by the same `transactionId`); the mutex as it is now.", body = Gs2Item),
        (status = 400, description = "`invalid_argument`: a bad `transactionId` or `ttl` (zero, or over the bound), a bad namespace, user or property id, an unknown field or malformed JSON.", body = ErrorBody),
        (status = 409, description = "`busy`: another `transactionId` holds the mutex.", body = ErrorBody),
        (status = 413, description = "`limit_exceeded`: the body is larger than the server accepts.", body = ErrorBody),
        (status = 429, description = "`limit_exceeded`: a quota of the server (keys per namespace).", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store could not write (the lock is undone) or the server is shutting down.", body = ErrorBody),
    )
)]
pub async fn lock(
    State(state): State<AppState>,
    PathParams(path): PathParams<MutexPath>,
    Body(body): Body<Gs2Lock>,
) -> Result<Json<Gs2Item>, ApiError> {
    let key = path.key()?;
    parse::owner_in("transactionId", &body.transaction_id)?;
    let ttl_ms = parse::ttl_secs("ttl", body.ttl, &state)?.as_millis() as u64;
    let fields = AcquireFields { owner: Some(body.transaction_id), ttl_ms: Some(ttl_ms), ..AcquireFields::default() };
    locks::acquire(&state, SmallVec::from_buf([key.clone()]), fields).await?;
    let status = state.held(&key).ok_or(Error::NotHeld)?;
    Ok(Json(Gs2Item { item: view(&state, &key, &status) }))
}

/// `POST .../mutexes/{property_id}/unlock`: one level; answers the mutex as it was.
#[utoipa::path(
    post,
    path = "/v1/namespaces/{ns}/users/{user}/mutexes/{property_id}/unlock",
    operation_id = "unlock_mutex",
    summary = "Unlock a GS2 mutex (one level)",
    tag = "gs2",
    params(MutexPath),
    request_body = Gs2Unlock,
    responses(
        (status = 200, description = "One level released; the mutex as it was before.", body = Gs2Item),
        (status = 400, description = "`invalid_argument`: a bad `transactionId`, a bad namespace, user or property id, an unknown field or malformed JSON.", body = ErrorBody),
        (status = 404, description = "`not_held`: the mutex is unlocked.", body = ErrorBody),
        (status = 409, description = "`not_owner`: another `transactionId` holds the mutex.", body = ErrorBody),
        (status = 413, description = "`limit_exceeded`: the body is larger than the server accepts.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store could not write.", body = ErrorBody),
    )
)]
pub async fn unlock(
    State(state): State<AppState>,
    PathParams(path): PathParams<MutexPath>,
    Body(body): Body<Gs2Unlock>,
) -> Result<Json<Gs2Item>, ApiError> {
    let key = path.key()?;
    let owner = parse::owner_in("transactionId", &body.transaction_id)?;
    let before = state.held(&key).ok_or(Error::NotHeld)?;
    state.engine.release(&key, &owner, Some(Mode::Exclusive), None)?;
    state.persist(std::slice::from_ref(&key), Vec::new(), 0).await?;
    Ok(Json(Gs2Item { item: view(&state, &key, &before) }))
}

/// `GET .../users/{user}/mutexes`: the user's held mutexes, by property id.
#[utoipa::path(
    get,
    path = "/v1/namespaces/{ns}/users/{user}/mutexes",
    operation_id = "list_mutexes",
    summary = "A user's GS2 mutexes",
    tag = "gs2",
    params(UserPath),
    responses(
        (status = 200, description = "The user's held mutexes, by property id (no paging).", body = Gs2Items),
        (status = 400, description = "`invalid_argument`: a bad namespace or user.", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    PathParams(path): PathParams<UserPath>,
) -> Result<Json<Gs2Items>, ApiError> {
    tumbler_core::validate_namespace(&path.ns)?;
    tumbler_core::validate_name(&path.user).map_err(|e| crate::key::rename(e, "user"))?;
    let mut keys = state.engine.held_keys(
        |k| matches!(k, LockKey::Mutex { namespace, user, .. } if **namespace == *path.ns && **user == *path.user),
    );
    keys.sort();
    let items = keys.iter().filter_map(|k| state.held(k).map(|s| view(&state, k, &s))).collect();
    Ok(Json(Gs2Items { items }))
}

fn view(state: &Shared, key: &LockKey, status: &KeyStatus) -> Gs2Mutex {
    let holder = status.holders.first();
    let (namespace, user, property) = match key {
        LockKey::Mutex { namespace, user, property } => (namespace.as_ref(), user.as_ref(), property.as_ref()),
        LockKey::Lock { namespace, name } => (namespace.as_ref(), "", name.as_ref()),
    };
    Gs2Mutex {
        mutex_id: format!("grn:tumbler:{namespace}:user:{}:mutex:{}", grn_part(user), grn_part(property)),
        property_id: property.to_owned(),
        transaction_id: holder.map(|h| h.holder.owner.as_str().to_owned()).unwrap_or_default(),
        ttl_at: holder.and_then(|h| h.expires_at).map(|at| state.clock.unix_ms(at)),
    }
}

/// A user or property id as a part of a `mutexId`: `%` and `:` are percent-encoded, so
/// that the id names one mutex only (user `a:mutex:x` with property `y` and user `a` with
/// property `x:mutex:y` would otherwise read the same).
fn grn_part(part: &str) -> std::borrow::Cow<'_, str> {
    const SEPARATORS: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%').add(b':');
    percent_encoding::utf8_percent_encode(part, SEPARATORS).into()
}
