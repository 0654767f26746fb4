//! The one error shape of the API: `{"error": {"code", "message", "details"}}`, with the
//! status DESIGN.md §4 gives each code.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tumbler_core::Error;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// For programs: the field, the holders, the cycle, the bound.
    pub details: Value,
}

impl ApiError {
    /// 400 `invalid_argument` naming `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_argument",
            message: format!("invalid {field}: {message}"),
            details: json!({ "field": field }),
        }
    }

    /// Adds `name: value` to the details (e.g. the `max` a value exceeded).
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.details[name] = value.into();
        self
    }

    /// 404 for a session id the server never issued (410 is for one that ended).
    pub fn unknown_session() -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "session_expired",
            message: "unknown session: this server never opened it".into(),
            details: json!({}),
        }
    }

    /// 413 `limit_exceeded`: the body is larger than the server accepts.
    pub fn body_too_large(max: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "limit_exceeded",
            message: format!("the request body is larger than {max} bytes"),
            details: json!({ "limit": "body_bytes", "max": max }),
        }
    }

    /// 413 `limit_exceeded`: the request asks for more of something (`limit`, e.g. keys)
    /// than one request may; like an oversized body, it is the request that is too large.
    pub fn request_too_large(limit: &str, max: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "limit_exceeded",
            message: format!("limit exceeded: {limit} (at most {max})"),
            details: json!({ "limit": limit, "max": max }),
        }
    }

    /// 429 `limit_exceeded` for a bound of the server itself.
    pub fn quota(limit: &str, max: usize) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "limit_exceeded",
            message: format!("limit exceeded: {limit} (at most {max})"),
            details: json!({ "limit": limit, "max": max }),
        }
    }

    /// 404 for a route that does not exist.
    pub fn no_route() -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "invalid_argument",
            message: "no such route".into(),
            details: json!({}),
        }
    }

    /// 503 `unavailable`: the store could not write.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.into(),
            details: json!({}),
        }
    }
}

/// The status of each core error code, as DESIGN.md §4 lists them.
fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
        Error::Unauthenticated => StatusCode::UNAUTHORIZED,
        Error::PermissionDenied => StatusCode::FORBIDDEN,
        Error::NotHeld => StatusCode::NOT_FOUND,
        Error::Busy { .. } | Error::Timeout | Error::Deadlock { .. } | Error::NotOwner => StatusCode::CONFLICT,
        Error::SessionExpired => StatusCode::GONE,
        Error::LimitExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let details = match &error {
            Error::InvalidArgument { field, .. } => json!({ "field": field }),
            Error::Busy { holders } => json!({
                "holders": holders.iter().map(|h| {
                    let mut holder = json!({
                        "owner": h.owner.as_str(),
                        "mode": h.mode.name(),
                        "count": h.count,
                        "fencing_token": h.fencing_token,
                    });
                    if let Some(limit) = h.mode.limit() {
                        holder["limit"] = json!(limit);
                    }
                    holder
                }).collect::<Vec<_>>()
            }),
            Error::Deadlock { cycle } => json!({ "cycle": cycle.iter().map(|o| o.as_str()).collect::<Vec<_>>() }),
            Error::LimitExceeded { limit, max } => json!({ "limit": limit, "max": max }),
            _ => json!({}),
        };
        ApiError { status: status_of(&error), code: error.code(), message: error.to_string(), details }
    }
}

impl From<serde_path_to_error::Error<serde_json::Error>> for ApiError {
    fn from(error: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let inner = error.inner();
        let path = error.path().to_string();
        let message = inner.to_string();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::invalid("body", format!("malformed JSON: {message}"));
        }
        let field = if path == "." { field_of(&message) } else { path };
        ApiError::invalid(&field, message)
    }
}

/// The field serde's message is about (`unknown field `x``, `missing field `x``), or
/// `body` when it names none.
fn field_of(message: &str) -> String {
    for marker in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.split(marker).nth(1) {
            if let Some(field) = rest.split('`').next() {
                return field.to_owned();
            }
        }
    }
    "body".to_owned()
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::invalid("path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::invalid("query", rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message, "details": self.details } });
        (self.status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_name_their_field() {
        assert_eq!(field_of("unknown field `wait`, expected one of `a`"), "wait");
        assert_eq!(field_of("missing field `owner` at line 1 column 2"), "owner");
        assert_eq!(field_of("something else entirely"), "body");
    }
}
