//! Completion webhooks: Buildbot's HTTP status push, checked against `webhook_token` when
//! one is set, names the builds whose attempts the engine then polls at once.

use baton_core::adapter::WebhookRequest;
use baton_core::{AdapterError, AttemptKey};
use serde_json::Value;

use crate::BuildbotAdapter;
use crate::model::keys_in_push;

/// Compares in time that depends only on the lengths.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl BuildbotAdapter {
    /// The attempts the status push in `request` concerns.
    pub(crate) fn webhook_attempts(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<AttemptKey>, AdapterError> {
        if let Some(token) = &self.webhook_token {
            let expected = format!("Bearer {}", token.expose());
            let given = request.header("authorization").unwrap_or("");
            if !same(given.as_bytes(), expected.as_bytes()) {
                return Err(AdapterError::Auth(
                    "the status push lacks the right `Authorization: Bearer <webhook_token>` header: set headers={\"Authorization\": \"Bearer …\"} on reporters.HttpStatusPush".into(),
                ));
            }
        }
        let body: Value = serde_json::from_slice(request.body).map_err(|e| {
            AdapterError::Invalid(format!(
                "a Buildbot status push must be the JSON of a build ({e})"
            ))
        })?;
        Ok(keys_in_push(&body))
    }
}
