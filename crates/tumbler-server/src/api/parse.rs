//! Turning wire values into core values, each failure a 400 naming its field.

use std::time::Duration;

use tumbler_core::{Mode, OwnerId, SessionId};

use super::error::ApiError;
use crate::state::Shared;

/// The longest `request_id`, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 256;
/// The longest session `label`, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;

/// A mode from its name and optional limit (`limit` only with `semaphore`).
pub fn mode(name: Option<&str>, limit: Option<u32>) -> Result<Mode, ApiError> {
    let mode = match name.unwrap_or("exclusive") {
        "exclusive" => Mode::Exclusive,
        "shared" => Mode::Shared,
        "semaphore" => match limit {
            Some(limit) => Mode::Semaphore { limit },
            None => return Err(ApiError::invalid("limit", "a semaphore needs a limit")),
        },
        other => {
            return Err(ApiError::invalid("mode", format!("unknown mode {other:?}: exclusive, shared or semaphore")))
        }
    };
    if limit.is_some() && mode.limit().is_none() {
        return Err(ApiError::invalid("limit", "only a semaphore has a limit"));
    }
    mode.validate()?;
    Ok(mode)
}

/// The mode naming one of an owner's holds, for release and refresh: the kind is what
/// counts, so a semaphore needs no limit here.
pub fn hold_mode(name: Option<&str>, limit: Option<u32>) -> Result<Option<Mode>, ApiError> {
    match name {
        None if limit.is_some() => Err(ApiError::invalid("limit", "only a semaphore has a limit")),
        None => Ok(None),
        Some("semaphore") => Ok(Some(Mode::Semaphore { limit: limit.unwrap_or(1).max(1) })),
        Some(other) => mode(Some(other), limit).map(Some),
    }
}

/// An owner id.
pub fn owner(id: &str) -> Result<OwnerId, ApiError> {
    owner_in("owner", id)
}

/// An owner id sent under another name (GS2's `transactionId`): a bad one is a 400
/// naming the field the client actually sent.
pub fn owner_in(field: &'static str, id: &str) -> Result<OwnerId, ApiError> {
    Ok(OwnerId::new(id).map_err(|e| crate::key::rename(e, field))?)
}

/// A session id the server issued; 404 for any other string. Ids are opaque to clients, so
/// only the exact text the server gave out names a session (`"016"` is not `"16"`).
pub fn session(state: &Shared, id: &str) -> Result<SessionId, ApiError> {
    let n = id.parse::<u64>().ok().filter(|n| *n != 0 && n.to_string() == id).ok_or_else(ApiError::unknown_session)?;
    if n > state.last_session.load(std::sync::atomic::Ordering::Acquire) {
        return Err(ApiError::unknown_session());
    }
    Ok(SessionId(n))
}

/// A TTL in ms: above zero, at most the configured bound.
pub fn ttl(field: &str, ms: u64, state: &Shared) -> Result<Duration, ApiError> {
    positive_within(field, ms, state.config.limits.max_ttl_ms, "ms").map(Duration::from_millis)
}

/// A TTL in whole seconds (GS2's `ttl`): above zero, at most the configured bound, which
/// a client is told in seconds too.
pub fn ttl_secs(field: &str, secs: u64, state: &Shared) -> Result<Duration, ApiError> {
    positive_within(field, secs, state.config.limits.max_ttl_ms / 1000, "s").map(Duration::from_secs)
}

fn positive_within(field: &str, value: u64, max: u64, unit: &str) -> Result<u64, ApiError> {
    if value == 0 {
        return Err(ApiError::invalid(field, "must be greater than zero"));
    }
    if value > max {
        return Err(ApiError::invalid(field, format!("must be at most {max} {unit}")).with("max", max));
    }
    Ok(value)
}

/// A long-poll bound in ms: at most the configured bound (0 is a try).
pub fn wait(ms: u64, state: &Shared) -> Result<Option<Duration>, ApiError> {
    let max = state.config.limits.max_wait_ms;
    if ms > max {
        return Err(ApiError::invalid("wait_ms", format!("must be at most {max} ms")).with("max", max));
    }
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

/// A request id: 1–256 bytes.
pub fn request_id(id: &str) -> Result<&str, ApiError> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_BYTES {
        return Err(ApiError::invalid("request_id", format!("must be 1 to {MAX_REQUEST_ID_BYTES} bytes")));
    }
    Ok(id)
}

/// A fresh random owner id, for acquires that name none.
pub fn generated_owner() -> OwnerId {
    let id: u128 = rand::random();
    OwnerId::new(format!("o-{id:032x}")).expect("a generated id is valid")
}
