//! Extractors whose every rejection is the API's JSON error (never axum's plain-text
//! 400/415/422): bodies, path segments and query strings.

use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::state::AppState;

/// A JSON body. Any content type is accepted (so `curl -d` works); an empty body reads as
/// `{}`. Wrong types, unknown fields and malformed JSON are 400 `invalid_argument` naming
/// the field; a body over the limit is 413 `limit_exceeded`.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T>
where
    AppState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // The limit is applied here, where bodies are read, rather than by a layer in
        // front of every route (most of which read none).
        let max = AppState::from_ref(state).config.limits.max_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), max).await.map_err(|e| {
            let e = e.into_inner();
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
            while let Some(c) = cause {
                if c.is::<http_body_util::LengthLimitError>() {
                    return ApiError::body_too_large(max);
                }
                cause = c.source();
            }
            ApiError::invalid("body", format!("cannot read the body: {e}"))
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        let mut de = serde_json::Deserializer::from_slice(text);
        let value = serde_path_to_error::deserialize(&mut de)?;
        de.end().map_err(|e| ApiError::invalid("body", format!("malformed JSON: {e}")))?;
        Ok(Body(value))
    }
}

/// Path parameters, percent-decoded by axum; bad percent-encoding or invalid UTF-8 is 400
/// `invalid_argument`.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(PathParams(value))
    }
}

/// Query parameters; malformed ones are 400 `invalid_argument`.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(QueryParams(value))
    }
}
