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
use crate::state::{AppState, Shared};

/// `{ns}/users/{user}/mutexes/{property_id}`.
#[derive(Deserialize)]
pub struct MutexPath {
    ns: String,
    user: String,
    property_id: String,
}

impl MutexPath {
    fn key(&self) -> Result<LockKey, ApiError> {
        Ok(LockKey::mutex(&self.ns, &self.user, &self.property_id)?)
    }
}

/// `{ns}/users/{user}`.
#[derive(Deserialize)]
pub struct UserPath {
    ns: String,
    user: String,
}

/// `GET .../mutexes/{property_id}`: 404 `not_held` when unlocked.
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
pub async fn lock(
    State(state): State<AppState>,
    PathParams(path): PathParams<MutexPath>,
    Body(body): Body<Gs2Lock>,
) -> Result<Json<Gs2Item>, ApiError> {
    let key = path.key()?;
    let ttl_ms = body.ttl.checked_mul(1000).ok_or_else(|| ApiError::invalid("ttl", "too large"))?;
    if body.ttl == 0 {
        return Err(ApiError::invalid("ttl", "must be at least one second"));
    }
    let fields = AcquireFields { owner: Some(body.transaction_id), ttl_ms: Some(ttl_ms), ..AcquireFields::default() };
    parse::ttl("ttl", ttl_ms, &state)?;
    locks::acquire(&state, SmallVec::from_buf([key.clone()]), fields).await?;
    let status = state.held(&key).ok_or(Error::NotHeld)?;
    Ok(Json(Gs2Item { item: view(&state, &key, &status) }))
}

/// `POST .../mutexes/{property_id}/unlock`: one level; answers the mutex as it was.
pub async fn unlock(
    State(state): State<AppState>,
    PathParams(path): PathParams<MutexPath>,
    Body(body): Body<Gs2Unlock>,
) -> Result<Json<Gs2Item>, ApiError> {
    let key = path.key()?;
    let owner = parse::owner(&body.transaction_id)?;
    let before = state.held(&key).ok_or(Error::NotHeld)?;
    state.engine.release(&key, &owner, Some(Mode::Exclusive), None)?;
    state.metrics.releases.inc();
    state.persist(std::slice::from_ref(&key), Vec::new(), 0).await?;
    Ok(Json(Gs2Item { item: view(&state, &key, &before) }))
}

/// `GET .../users/{user}/mutexes`: the user's held mutexes, by property id.
pub async fn list(
    State(state): State<AppState>,
    PathParams(path): PathParams<UserPath>,
) -> Result<Json<Gs2Items>, ApiError> {
    tumbler_core::validate_namespace(&path.ns)?;
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
        mutex_id: format!("grn:tumbler:{namespace}:user:{user}:mutex:{property}"),
        property_id: property.to_owned(),
        transaction_id: holder.map(|h| h.holder.owner.as_str().to_owned()).unwrap_or_default(),
        ttl_at: holder.and_then(|h| h.expires_at).map(|at| state.clock.unix_ms(at)),
    }
}
