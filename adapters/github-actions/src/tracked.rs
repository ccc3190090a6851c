//! What a stage's stored reference holds (`ExternalRef.data`): enough to poll, cancel and
//! read the outputs after a restart, and nothing secret.

use baton_core::{AdapterError, ExternalRef};
use serde::{Deserialize, Serialize};

/// The id of a reference whose run is not known yet (a 204 dispatch being correlated).
pub(crate) const SEARCHING: &str = "searching";

/// A dispatched run, or a dispatch whose run is being looked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tracked {
    /// The run, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) run: Option<u64>,
    /// The workflow as given (file name or id).
    pub(crate) workflow: String,
    /// The branch or tag it was dispatched on.
    #[serde(rename = "ref")]
    pub(crate) git_ref: String,
    /// When baton sent the dispatch (Unix ms).
    pub(crate) dispatched_ms: u64,
}

impl Tracked {
    /// The stored reference.
    pub(crate) fn to_ref(&self, url: Option<String>) -> ExternalRef {
        ExternalRef {
            id: self
                .run
                .map_or_else(|| SEARCHING.to_owned(), |r| r.to_string()),
            url,
            data: serde_json::to_value(self).unwrap_or_default(),
        }
    }

    /// Reads a stored reference.
    pub(crate) fn read(external: &ExternalRef) -> Result<Self, AdapterError> {
        let tracked: Self = serde_json::from_value(external.data.clone()).map_err(|e| {
            AdapterError::Invalid(format!(
                "the stored reference is not a github-actions run ({e}): {}",
                external.data
            ))
        })?;
        if tracked
            .run
            .map(|r| r.to_string())
            .as_deref()
            .unwrap_or(SEARCHING)
            != external.id
        {
            return Err(AdapterError::Invalid(format!(
                "the stored reference's id `{}` is not its run",
                external.id
            )));
        }
        Ok(tracked)
    }
}
