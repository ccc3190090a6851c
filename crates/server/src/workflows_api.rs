//! `POST /api/v1/workflows/validate`: checks a workflow against this server's config as
//! `baton validate` checks a workflow file, and answers every problem at once. It changes
//! nothing, so any token may call it. The web editor's `POST /ui/editor/validate` takes
//! the same body with a session instead of a token ([`check`] answers both).

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use baton_config::Problem;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AppState;
use crate::api::Viewer;
use crate::error::ApiError;
use crate::extract::{ApiQuery, declares_json, read_body};

/// A workflow sent to be checked: YAML text, or the workflow as a JSON object.
#[derive(Debug)]
pub(crate) enum WorkflowBody {
    /// `Content-Type: application/yaml` (or `text/yaml`, `application/x-yaml`, `text/x-yaml`).
    Yaml(String),
    /// `Content-Type: application/json`.
    Json(Value),
}

/// The media types a YAML body may be declared with.
const YAML_TYPES: [&str; 4] = [
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
    "text/x-yaml",
];

/// The media types, for messages.
const EXPECTED: &str = "the workflow as YAML text (`Content-Type: application/yaml`) or as a JSON object (`Content-Type: application/json`)";

impl FromRequest<Arc<AppState>> for WorkflowBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let (parts, bytes) = read_body(request, state.max_body_bytes).await?;
        if declares_yaml(&parts.headers) {
            return match String::from_utf8(bytes.to_vec()) {
                Ok(text) => Ok(Self::Yaml(text)),
                Err(e) => Err(ApiError::bad_request(format!(
                    "the body is not UTF-8 text (invalid byte at offset {}); expected {EXPECTED}",
                    e.utf8_error().valid_up_to()
                ))),
            };
        }
        if !declares_json(&parts.headers) {
            return Err(ApiError::unsupported_media_type(format!(
                "expected {EXPECTED}"
            )));
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(value @ Value::Object(_)) => Ok(Self::Json(value)),
            Ok(_) => Err(ApiError::bad_request(format!(
                "the body is not a JSON object; expected {EXPECTED}"
            ))),
            Err(e) => Err(ApiError::bad_request(format!(
                "the body is not JSON ({e}); expected {EXPECTED}"
            ))),
        }
    }
}

fn declares_yaml(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim())
        .is_some_and(|essence| YAML_TYPES.iter().any(|t| t.eq_ignore_ascii_case(essence)))
}

/// `?editing=`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Editing {
    /// The loaded workflow the body is an edit of: the body may keep its name.
    pub(crate) editing: Option<String>,
}

/// The answer: whether the workflow has no problem, and every problem.
#[derive(Debug, Serialize)]
pub(crate) struct Validation {
    /// True when there is no problem.
    pub(crate) valid: bool,
    /// Every problem, in the order `baton validate` finds them.
    pub(crate) problems: Vec<Problem>,
}

/// Checks `body` against this server's config; `editing` names the loaded workflow it is
/// an edit of.
pub(crate) fn check(state: &AppState, body: &WorkflowBody, editing: Option<&str>) -> Validation {
    let editing = editing.filter(|e| !e.is_empty());
    let problems = match body {
        WorkflowBody::Yaml(text) => state.workflow_check.yaml(text, editing),
        WorkflowBody::Json(value) => state.workflow_check.json(value, editing),
    };
    Validation {
        valid: problems.is_empty(),
        problems,
    }
}

/// `POST /api/v1/workflows/validate[?editing=NAME]`.
pub(crate) async fn validate(
    State(state): State<Arc<AppState>>,
    _caller: Viewer,
    ApiQuery(q): ApiQuery<Editing>,
    body: WorkflowBody,
) -> Json<Validation> {
    Json(check(&state, &body, q.editing.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn yaml_is_recognised_by_its_media_types() {
        let mut headers = HeaderMap::new();
        assert!(!declares_yaml(&headers));
        for (value, yaml) in [
            ("application/yaml", true),
            ("text/yaml; charset=utf-8", true),
            ("Application/X-YAML", true),
            ("text/x-yaml", true),
            ("text/plain", false),
            ("application/json", false),
            ("application/yaml-patch", false),
        ] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(declares_yaml(&headers), yaml, "{value}");
        }
    }
}
