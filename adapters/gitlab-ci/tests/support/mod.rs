//! The harness of the adapter's tests: a fake GitLab (`baton_forge_fakes::gitlab`, which
//! keeps state and lets real time move its pipelines) served on loopback, an adapter built
//! through its kind as `baton serve` builds it, and a driver that plays the engine's part
//! (store the reference, poll until an end, replace the reference when a poll gives one).

// Each test file compiles this module on its own and uses a different part of it (and of
// what it re-exports).
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_adapter_gitlab_ci::{GitLabKind, RetryPolicy};
pub(crate) use baton_adapter_kit::drive::{
    TableSecrets as Secrets, expect_error, poll_once, poll_to_end, poll_until, request,
};
use baton_core::{Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef};
use baton_forge_fakes::Served;
use baton_forge_fakes::gitlab::GitLab;
use serde_json::{Value, json};

/// The API token the fake accepts, counted as `ci`.
pub(crate) const TOKEN: &str = "glpat-baton-tests";
/// The project's trigger token.
pub(crate) const TRIGGER: &str = "glptt-baton-trigger";
/// The project every test uses.
pub(crate) const PROJECT: &str = "group/sub/app";

/// Retries fast, so that 429 and 5xx stories take milliseconds.
pub(crate) fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(40),
        budget: Duration::from_secs(3),
    }
}

/// A fake GitLab with the project, the API token and the trigger token, being served.
pub(crate) struct Lab {
    pub gitlab: GitLab,
    pub served: Served,
}

impl Lab {
    pub(crate) async fn start() -> Self {
        let gitlab = GitLab::new();
        gitlab.add_token("ci", TOKEN);
        gitlab.project(PROJECT).id(42).trigger_token(TRIGGER);
        let served = gitlab.serve().await.expect("serve the fake GitLab");
        Self { gitlab, served }
    }

    /// The instance block of an adapter for the project; `extra` adds or replaces keys
    /// (`null` removes one).
    pub(crate) fn config(&self, extra: Value) -> Value {
        let mut config = json!({
            "url": self.served.url,
            "project": PROJECT,
            "token": {"env": "GITLAB_TOKEN"},
            "poll_initial": "100ms",
            "poll_max": "200ms",
            "request_timeout": "2s",
        });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            if v.is_null() {
                config.as_object_mut().unwrap().remove(&k);
            } else {
                config[k] = v;
            }
        }
        config
    }

    /// An adapter built through the kind, as `baton serve` builds it.
    pub(crate) fn adapter(&self, extra: Value) -> Arc<dyn Adapter> {
        self.try_adapter(extra).expect("build the adapter")
    }

    pub(crate) fn try_adapter(&self, extra: Value) -> Result<Arc<dyn Adapter>, AdapterError> {
        let secrets = Secrets(BTreeMap::from([
            ("GITLAB_TOKEN", TOKEN),
            ("GL_TRIGGER", TRIGGER),
            ("WRONG_TOKEN", "glpat-revoked"),
        ]));
        GitLabKind::with_retry(fast_retry()).build("gl", &self.config(extra), &secrets)
    }

    /// The one pipeline the fake holds (panics unless there is exactly one).
    pub(crate) fn only_pipeline(&self) -> baton_forge_fakes::gitlab::PipelineView {
        let all = self.gitlab.pipelines();
        assert_eq!(all.len(), 1, "expected exactly one pipeline: {all:?}");
        all.into_iter().next().unwrap()
    }
}

/// Starts a stage on `main` with no other input; panics if the start fails.
pub(crate) async fn start_on_main(adapter: &dyn Adapter, key: &AttemptKey) -> ExternalRef {
    adapter
        .start(&request(key, json!({"ref": "main"})))
        .await
        .unwrap_or_else(|e| panic!("start of {key} failed: {e:?}"))
}
