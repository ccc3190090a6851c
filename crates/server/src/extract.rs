//! The REST API's extractors: axum's `Query`, `Path` and a JSON body, whose refusals are the
//! API's JSON errors (`{"error": {"code", "message"}}`, documented in `openapi.json`) instead
//! of axum's plain-text ones, and the typed parameters whose errors say what was expected.

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::HeaderMap;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use axum::http::request::Parts;
use baton_core::RunStatus;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;

/// `Query<T>` whose refusal is a 400 in the API's envelope.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// `Path<T>` whose refusal is a 400 in the API's envelope.
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// A request body the API reads as JSON.
pub(crate) trait JsonBody: DeserializeOwned {
    /// What the body should be, for error messages.
    const EXPECTED: &'static str;
}

/// An optional JSON object body: `None` when the body is empty or only whitespace.
///
/// A body over `server.max_body_bytes` is refused with 413 (before it is read when
/// `Content-Length` says so), one not declared as JSON with 415, and one that is not a JSON
/// object of the expected shape with 400.
pub(crate) struct ApiJson<T>(pub(crate) Option<T>);

impl<T: JsonBody> FromRequest<Arc<AppState>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let (parts, bytes) = read_body(request, state.max_body_bytes).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        if !declares_json(&parts.headers) {
            return Err(ApiError::unsupported_media_type(format!(
                "a body needs `Content-Type: application/json`; expected {}",
                T::EXPECTED
            )));
        }
        // Checked before serde sees it: a struct would also take a JSON array, field by field.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(ApiError::bad_request(format!(
                "the body is not a JSON object; expected {}",
                T::EXPECTED
            )));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(value)) => Ok(Self(Some(value))),
            Err(rejection) => Err(ApiError::from(rejection).expected(T::EXPECTED)),
        }
    }
}

/// The request's head and its whole body, at most `limit` bytes: a larger one is refused
/// with 413 (before it is read when `Content-Length` says so).
pub(crate) async fn read_body(request: Request, limit: u64) -> Result<(Parts, Bytes), ApiError> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit).closing());
    }
    match Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .collect()
        .await
    {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::too_large(limit).closing()),
        Err(e) => Err(ApiError::bad_request(format!("the body could not be read: {e}")).closing()),
    }
}

/// True when the request says a body follows: one the server closes the connection on when it
/// answers without reading it.
pub(crate) fn announces_body(headers: &HeaderMap) -> bool {
    headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// `Content-Type: application/json`, or any `application/…+json`, with or without parameters.
pub(crate) fn declares_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.as_bytes();
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case(b"json")
            || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// Reads a parameter from its text with `parse`, whose error says what was expected; the
/// query and path deserializers add the parameter's name.
pub(crate) fn from_text<'de, D, T>(
    deserializer: D,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct Text<T>(fn(&str) -> Result<T, String>);

    impl<T> Visitor<'_> for Text<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a text parameter")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            (self.0)(text).map_err(E::custom)
        }
    }

    deserializer.deserialize_str(Text(parse))
}

/// `limit`: at most this many items, 1 to 1000; 50 when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit(pub(crate) u32);

impl Limit {
    /// The largest page.
    pub(crate) const MAX: u32 = 1000;
}

impl Default for Limit {
    fn default() -> Self {
        Self(50)
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, |text| {
            text.parse()
                .ok()
                .filter(|n| (1..=Self::MAX).contains(n))
                .map(Self)
                .ok_or_else(|| format!("`{text}` is not a whole number from 1 to {}", Self::MAX))
        })
    }
}

/// `offset`: skip this many items, 0 to 2³²−1; 0 when absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Offset(pub(crate) u32);

impl<'de> Deserialize<'de> for Offset {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, |text| {
            text.parse()
                .map(Self)
                .map_err(|_| format!("`{text}` is not a whole number from 0 to {}", u32::MAX))
        })
    }
}

/// `status`: a run status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusParam(pub(crate) RunStatus);

impl<'de> Deserialize<'de> for StatusParam {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, |text| {
            RunStatus::parse(text).map(Self).ok_or_else(|| {
                format!(
                    "`{text}` is not a run status: expected queued, running, succeeded, failed or cancelled"
                )
            })
        })
    }
}

/// A delivery's public id: a whole number from 1 up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub(crate) struct DeliveryId(pub(crate) i64);

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for DeliveryId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, |text| {
            text.parse()
                .ok()
                .filter(|n| *n >= 1)
                .map(Self)
                .ok_or_else(|| {
                    format!(
                        "`{text}` is not a delivery id: expected a whole number from 1 to {}",
                        i64::MAX
                    )
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, value.parse().unwrap());
        headers
    }

    #[test]
    fn json_is_recognised_with_parameters_suffixes_and_any_case() {
        for yes in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.baton+json",
        ] {
            assert!(declares_json(&content_type(yes)), "{yes}");
        }
        for no in [
            "text/json",
            "application/x-www-form-urlencoded",
            "application/+json",
            "json",
            "application/jsonx",
        ] {
            assert!(!declares_json(&content_type(no)), "{no}");
        }
        assert!(!declares_json(&HeaderMap::new()));
    }
}
