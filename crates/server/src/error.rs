//! Errors as JSON a person can act on: `{"error": {"code": "...", "message": "..."}}`.

use axum::Json;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use baton_store::StoreError;
use serde_json::json;
use std::sync::atomic::{AtomicI64, Ordering};

/// An HTTP error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// The status code.
    pub status: StatusCode,
    /// A short machine-readable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// The request's body was left unread: the server closes the connection after the
    /// answer, and says so (`Connection: close`) so that a client does not send its next
    /// request on it.
    close: bool,
    /// `Retry-After`, in seconds, for an answer that says "not now".
    retry_after: Option<&'static str>,
}

/// `Retry-After` of a 503 given while the store cannot write: readiness checks it every
/// second, and a database restart takes a few.
const STORE_RETRY_AFTER_SECS: &str = "5";

/// When a refusal for an unavailable store was last logged (ms since the epoch): one line
/// per [`STORE_LOG_EVERY_MS`], not one per request, while an outage lasts.
static STORE_LOGGED_AT: AtomicI64 = AtomicI64::new(0);

/// How often a store outage is logged from requests at most.
const STORE_LOG_EVERY_MS: i64 = 10_000;

impl ApiError {
    /// An error with a status, a code and a message.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            close: false,
            retry_after: None,
        }
    }

    /// Marks an answer given without reading the request's body.
    pub(crate) fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// [`closing`](Self::closing) when the request announced a body that this answer leaves
    /// unread: a client that pools connections would otherwise send its next request on one
    /// the server is closing.
    pub(crate) fn unread_body(self, request: &axum::http::HeaderMap) -> Self {
        if crate::extract::announces_body(request) {
            self.closing()
        } else {
            self
        }
    }

    /// 400.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409.
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 503, for a request that cannot be handled now but may be later.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 415, for a body that is not declared as JSON.
    pub(crate) fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 413.
    pub(crate) fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {limit} bytes (server.max_body_bytes)"),
        )
    }

    /// Adds what was expected to the message.
    pub(crate) fn expected(mut self, what: &str) -> Self {
        self.message.push_str("; expected ");
        self.message.push_str(what);
        self
    }

    /// A rejection this module does not word itself: axum's text, as a 400, or as a 500
    /// (logged) when axum blames the server.
    fn from_status(status: StatusCode, message: String) -> Self {
        if status.is_server_error() {
            Self::internal(message)
        } else {
            Self::bad_request(message)
        }
    }

    /// 503 with `Retry-After` when the store's database cannot be reached now: nothing was
    /// stored, and the same request works once it is back, so a sender retries rather than
    /// dropping it. Other store failures (a full disk among them) are 500.
    pub(crate) fn store(error: StoreError) -> Self {
        if !unavailable(&error) {
            return Self::internal(error);
        }
        let now = baton_store::now_millis();
        let last = STORE_LOGGED_AT.load(Ordering::Relaxed);
        if now - last >= STORE_LOG_EVERY_MS
            && STORE_LOGGED_AT
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "the store cannot be reached: requests get 503 until it can (logged at most every 10s)"
            );
        }
        let mut answer = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "nothing was stored: the store cannot be reached now; retry later",
        );
        answer.retry_after = Some(STORE_RETRY_AFTER_SECS);
        answer
    }

    /// 500, for store failures; the detail goes to the log, not to the caller.
    pub(crate) fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server could not complete the request; see its log",
        )
    }
}

/// True when `error` says the store's database cannot be reached ([`StoreError::Unavailable`],
/// also when a group commit failed for that reason).
pub(crate) fn unavailable(error: &StoreError) -> bool {
    match error {
        StoreError::Unavailable { .. } => true,
        StoreError::Commit(inner) => unavailable(inner),
        _ => false,
    }
}

/// A rejection's own message: its source, without axum's generic prefix ("Failed to
/// deserialize query string: ").
fn detail(rejection: &dyn std::error::Error) -> String {
    rejection
        .source()
        .map_or_else(|| rejection.to_string(), ToString::to_string)
}

/// Query strings the API cannot read: a value of the wrong type or range, a repeated key.
impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        match &rejection {
            QueryRejection::FailedToDeserializeQueryString(e) => {
                Self::bad_request(format!("query string: {}", detail(e)))
            }
            _ => Self::from_status(rejection.status(), rejection.body_text()),
        }
    }
}

/// Path segments the API cannot read: not UTF-8 once percent-decoded, or not of the type a
/// segment holds (a delivery id is a number).
impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        let PathRejection::FailedToDeserializePathParams(e) = &rejection else {
            return Self::from_status(rejection.status(), rejection.body_text());
        };
        match e.kind() {
            ErrorKind::InvalidUtf8InPathParam { key } => Self::bad_request(format!(
                "path parameter `{key}` is not UTF-8 once percent-decoded"
            )),
            ErrorKind::DeserializeError { key, message, .. } => {
                Self::bad_request(format!("path parameter `{key}`: {message}"))
            }
            ErrorKind::ParseErrorAtKey {
                key,
                value,
                expected_type,
            } => Self::bad_request(format!(
                "path parameter `{key}`: `{value}` is not a valid {expected_type}"
            )),
            _ => Self::from_status(e.status(), e.body_text()),
        }
    }
}

/// JSON bodies the API cannot read: not JSON, or not of the expected shape.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match &rejection {
            JsonRejection::JsonSyntaxError(e) => {
                Self::bad_request(format!("the body is not JSON: {}", detail(e)))
            }
            JsonRejection::JsonDataError(e) => {
                Self::bad_request(format!("the body does not fit: {}", detail(e)))
            }
            JsonRejection::MissingJsonContentType(_) => {
                Self::unsupported_media_type("a body needs `Content-Type: application/json`")
            }
            _ => Self::from_status(rejection.status(), rejection.body_text()),
        }
    }
}

/// The answer (405) for a method a path does not take; axum adds the `Allow` header.
pub(crate) async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not allowed here; the `Allow` header lists the methods that are, and /api/v1/openapi.json describes the API"
        ),
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        if self.close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<baton_engine::EngineError> for ApiError {
    fn from(e: baton_engine::EngineError) -> Self {
        use baton_engine::EngineError as E;
        match e {
            E::NoSuchRun(_) | E::NoSuchStage { .. } => Self::not_found(e.to_string()),
            E::Conflict(_) => Self::conflict(e.to_string()),
            E::Store(e) => Self::store(e),
            E::BadWorkflow { .. } | E::Evaluation(_) => Self::internal(e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::store(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_store_is_503_with_retry_after_and_other_failures_500() {
        let gone = ApiError::from(StoreError::Unavailable {
            detail: "connection refused".into(),
        })
        .into_response();
        assert_eq!(gone.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(gone.headers()[header::RETRY_AFTER], "5");
        let grouped = ApiError::from(StoreError::Commit(std::sync::Arc::new(
            StoreError::Unavailable {
                detail: "connection reset".into(),
            },
        )));
        assert_eq!(grouped.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(grouped.code, "store_unavailable");
        // A full disk keeps its 500: the same database answers, and its log says why.
        let full = ApiError::from(StoreError::Full {
            detail: "disk full".into(),
        });
        assert_eq!(full.status, StatusCode::INTERNAL_SERVER_ERROR);
        let engine = ApiError::from(baton_engine::EngineError::Store(StoreError::Unavailable {
            detail: "x".into(),
        }));
        assert_eq!(engine.status, StatusCode::SERVICE_UNAVAILABLE);
        let other = ApiError::from(StoreError::Corrupt {
            what: "runs".into(),
            detail: "bad".into(),
        })
        .into_response();
        assert_eq!(other.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(other.headers().get(header::RETRY_AFTER).is_none());
    }
}
