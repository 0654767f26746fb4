//! The JSON bodies of the lock server's API (DESIGN.md §4), as the client sends and reads
//! them, and the mapping of the server's error codes back to [`Error`].
//!
//! Answers are read leniently (unknown fields are ignored, so a newer server can add
//! some); requests carry only the fields the contract names, since the server refuses
//! unknown ones.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tumbler_core::{Holder, Mode, OwnerId};

use crate::error::Error;

/// `POST /v1/sessions`.
#[derive(Debug, Serialize)]
pub(super) struct OpenSession<'a> {
    pub ttl_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<&'a str>,
}

/// A session's lease, as opened or renewed.
#[derive(Debug, Deserialize)]
pub(super) struct SessionAnswer {
    pub id: String,
    pub ttl_ms: u64,
}

/// The fields of an acquire, for one key (`keys` absent) or several.
#[derive(Debug, Serialize)]
pub(super) struct AcquireBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<&'a [String]>,
    pub owner: &'a str,
    pub session: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    pub wait_ms: u64,
    pub request_id: &'a str,
}

/// The answer to an acquire, per key.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct HoldAnswer {
    pub key: String,
    pub count: u32,
    pub fencing_token: u64,
}

/// `{holds: [...]}`, the answer to a multi-key acquire.
#[derive(Debug, Deserialize)]
pub(super) struct HoldsAnswer {
    pub holds: Vec<HoldAnswer>,
}

/// `POST .../release`, naming the hold by its fencing token so that a stale guard never
/// releases a newer hold of the same owner.
#[derive(Debug, Serialize)]
pub(super) struct ReleaseBody<'a> {
    pub owner: &'a str,
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    pub fencing_token: u64,
}

/// `{count}` levels left after a release.
#[derive(Debug, Deserialize)]
pub(super) struct CountAnswer {
    pub count: u32,
}

/// `POST .../refresh`.
#[derive(Debug, Serialize)]
pub(super) struct RefreshBody<'a> {
    pub owner: &'a str,
    pub ttl_ms: u64,
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// The new expiry after a refresh (read only to check the answer).
#[derive(Debug, Deserialize)]
pub(super) struct RefreshAnswer {
    #[allow(dead_code)]
    pub expires_at_ms: u64,
}

/// One holder in a key's status.
#[derive(Debug, Deserialize)]
pub(super) struct HolderAnswer {
    pub owner: String,
    pub fencing_token: u64,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

/// `GET .../locks/{key}`.
#[derive(Debug, Deserialize)]
pub(super) struct StatusAnswer {
    pub holders: Vec<HolderAnswer>,
}

/// `{"error": {...}}`.
#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Value,
}

/// A holder named in a `busy` error's details.
#[derive(Debug, Deserialize)]
struct BusyHolder {
    owner: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    count: u32,
    #[serde(default)]
    fencing_token: u64,
}

/// The error an answer with a non-success `status` and `body` stands for. `requested` is
/// the mode the request asked for: `busy` details name a semaphore holder's mode without
/// its limit, and every holder of a semaphore has the limit the requester named (or the
/// request would have been refused), so that limit is the best guess.
pub(super) fn error_from_answer(status: u16, body: &[u8], requested: Option<Mode>) -> Error {
    let Ok(ErrorEnvelope { error }) = serde_json::from_slice::<ErrorEnvelope>(body) else {
        let text = String::from_utf8_lossy(body);
        let text = text.chars().take(200).collect::<String>();
        return match status {
            503 => Error::Unavailable(format!("HTTP 503: {text}")),
            _ => Error::Internal(format!("the lock server answered HTTP {status} without an error body: {text}")),
        };
    };
    let ErrorBody { code, message, details } = error;
    match code.as_str() {
        "invalid_argument" => {
            let wire = details.get("field").and_then(Value::as_str).unwrap_or("argument");
            let field = library_field(wire);
            // The server's message repeats the field ("invalid ttl_ms: ..."): keep the reason only.
            let reason = message.strip_prefix(&format!("invalid {wire}: ")).map_or(message.clone(), str::to_owned);
            let reason = if field == "argument" { format!("{wire}: {reason}") } else { reason };
            Error::InvalidArgument { field, reason }
        }
        "busy" => {
            let holders = details
                .get("holders")
                .cloned()
                .and_then(|h| serde_json::from_value::<Vec<BusyHolder>>(h).ok())
                .unwrap_or_default();
            let holders = holders
                .into_iter()
                .filter_map(|h| {
                    Some(Holder {
                        owner: OwnerId::new(&h.owner).ok()?,
                        mode: parse_mode(h.mode.as_deref(), h.limit.or(requested.and_then(Mode::limit))),
                        count: h.count,
                        fencing_token: h.fencing_token,
                    })
                })
                .collect();
            Error::Busy { holders }
        }
        "timeout" => Error::Timeout,
        "deadlock" => {
            let cycle = details
                .get("cycle")
                .and_then(Value::as_array)
                .map(|ids| ids.iter().filter_map(Value::as_str).filter_map(|id| OwnerId::new(id).ok()).collect())
                .unwrap_or_default();
            Error::Deadlock { cycle }
        }
        "not_held" => Error::NotHeld,
        "not_owner" => Error::NotOwner,
        "session_expired" => Error::SessionExpired,
        "limit_exceeded" => Error::LimitExceeded {
            limit: details.get("limit").and_then(Value::as_str).unwrap_or("unknown").to_owned(),
            max: details.get("max").and_then(Value::as_u64).unwrap_or(0),
        },
        "unauthenticated" => Error::Unauthenticated,
        "permission_denied" => Error::PermissionDenied,
        "unavailable" => Error::Unavailable(message),
        "internal" => Error::Internal(message),
        other => Error::Internal(format!("the lock server answered an unknown error code {other:?}: {message}")),
    }
}

/// A mode from its wire name; a semaphore whose limit is unknown reports limit 0.
fn parse_mode(name: Option<&str>, limit: Option<u32>) -> Mode {
    match name {
        Some("shared") => Mode::Shared,
        Some("semaphore") => Mode::Semaphore { limit: limit.unwrap_or(0) },
        _ => Mode::Exclusive,
    }
}

/// The library's name of an argument the server named on the wire: the same as the
/// in-process backend reports (`ttl` rather than `ttl_ms`, `wait` rather than `wait_ms`),
/// and `argument` for a name the library does not know (the reason then names it).
pub(super) fn library_field(wire: &str) -> &'static str {
    match wire {
        "ttl_ms" | "ttl" => "ttl",
        "wait_ms" | "wait" => "wait",
        "limit" => "limit",
        "mode" => "mode",
        "keys" => "keys",
        "key" => "key",
        "namespace" => "namespace",
        "owner" => "owner",
        "session" => "session",
        "request_id" => "request_id",
        "fencing_token" => "fencing_token",
        "label" => "label",
        "body" => "body",
        "path" => "path",
        "query" => "query",
        _ => "argument",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Error {
        error_from_answer(status, body.as_bytes(), None)
    }

    #[test]
    fn every_contract_code_maps_to_its_variant() {
        for code in [
            "invalid_argument",
            "busy",
            "timeout",
            "deadlock",
            "not_held",
            "not_owner",
            "session_expired",
            "limit_exceeded",
            "unauthenticated",
            "permission_denied",
            "unavailable",
            "internal",
        ] {
            let e = answer(409, &format!(r#"{{"error": {{"code": "{code}", "message": "m", "details": {{}}}}}}"#));
            assert_eq!(e.code(), code, "{e:?}");
        }
    }

    #[test]
    fn invalid_argument_names_the_library_field_and_keeps_the_reason() {
        let e = answer(
            400,
            r#"{"error": {"code": "invalid_argument", "message": "invalid ttl_ms: must be greater than zero", "details": {"field": "ttl_ms"}}}"#,
        );
        let Error::InvalidArgument { field, reason } = e else { panic!("{e:?}") };
        assert_eq!((field, reason.as_str()), ("ttl", "must be greater than zero"));

        let e =
            answer(400, r#"{"error": {"code": "invalid_argument", "message": "bad", "details": {"field": "x.y"}}}"#);
        let Error::InvalidArgument { field, reason } = e else { panic!("{e:?}") };
        assert_eq!((field, reason.as_str()), ("argument", "x.y: bad"));
    }

    #[test]
    fn busy_lists_its_holders_and_deadlock_its_cycle() {
        let e = error_from_answer(
            409,
            br#"{"error": {"code": "busy", "message": "busy", "details": {"holders": [
                {"owner": "a", "mode": "semaphore", "count": 2, "fencing_token": 7},
                {"owner": "b", "mode": "shared", "count": 1, "fencing_token": 9}]}}}"#,
            Some(Mode::Semaphore { limit: 3 }),
        );
        let Error::Busy { holders } = e else { panic!("{e:?}") };
        assert_eq!(holders.len(), 2);
        assert_eq!((holders[0].owner.as_str(), holders[0].mode), ("a", Mode::Semaphore { limit: 3 }));
        assert_eq!((holders[0].count, holders[0].fencing_token), (2, 7));
        assert_eq!(holders[1].mode, Mode::Shared);

        let e = answer(409, r#"{"error": {"code": "deadlock", "message": "d", "details": {"cycle": ["a", "b"]}}}"#);
        let Error::Deadlock { cycle } = e else { panic!("{e:?}") };
        assert_eq!(cycle.iter().map(OwnerId::as_str).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn limit_exceeded_names_the_bound() {
        let e = answer(
            429,
            r#"{"error": {"code": "limit_exceeded", "message": "m", "details": {"limit": "waiters_per_key", "max": 5}}}"#,
        );
        let Error::LimitExceeded { limit, max } = e else { panic!("{e:?}") };
        assert_eq!((limit.as_str(), max), ("waiters_per_key", 5));
    }

    #[test]
    fn an_answer_without_an_error_body_is_still_an_error() {
        assert!(matches!(answer(503, "upstream gone"), Error::Unavailable(_)));
        assert!(matches!(answer(502, "<html>"), Error::Internal(_)));
        assert!(matches!(
            answer(409, r#"{"error": {"code": "brand_new", "message": "m"}}"#),
            Error::Internal(m) if m.contains("brand_new")
        ));
    }
}
