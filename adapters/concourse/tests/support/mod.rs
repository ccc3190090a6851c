//! The harness of the adapter's tests: a fake Concourse (`baton_forge_fakes::concourse`,
//! which keeps state and lets real time move its builds) served on loopback, an adapter
//! built through its kind as `baton serve` builds it, and a driver that plays the engine's
//! part (store the reference, poll until an end, replace the reference when a poll gives
//! one).

// Each test file compiles this module on its own and uses a different part of it (and of
// what it re-exports).
#![allow(dead_code, unused_imports)]

use std::sync::Arc;
use std::time::Duration;

use baton_adapter_concourse::{ConcourseKind, RetryPolicy};
pub(crate) use baton_adapter_kit::harness::{
    TableSecrets, expect_error, poll_once, poll_to_end, start_request as request,
};
use baton_core::{Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef};
use baton_forge_fakes::Served;
use baton_forge_fakes::concourse::{BuildPlan, Concourse, PipelineSetup};
use serde_json::{Value, json};

/// The local user the adapter logs in as.
pub(crate) const USER: &str = "baton";
/// Its password.
pub(crate) const PASSWORD: &str = "s3cret-pw";
/// A bearer token issued elsewhere, for the same user.
pub(crate) const BEARER: &str = "bearer-from-fly-login";
/// The team every test uses.
pub(crate) const TEAM: &str = "main";

/// Polls every 50 ms until `done` says so or the work ends, for at most `limit`.
pub(crate) async fn poll_until(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &mut ExternalRef,
    limit: Duration,
    done: impl Fn(&baton_core::PollOutcome) -> bool,
) -> Vec<baton_core::PollOutcome> {
    let every = Duration::from_millis(50);
    baton_adapter_kit::harness::poll_until(adapter, key, external, (every, limit), done).await
}

/// Retries fast, so that 429 and 5xx stories take milliseconds.
pub(crate) fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(40),
        budget: Duration::from_secs(3),
    }
}

/// A quick plan: 50 ms to start, 300 ms of running.
pub(crate) fn quick() -> BuildPlan {
    BuildPlan::new()
        .pending_for(Duration::from_millis(50))
        .runs_for(Duration::from_millis(300))
}

/// A fake Concourse with the user, the team and pipeline `app` (job `deploy`, quick),
/// being served.
pub(crate) struct Lab {
    pub ci: Concourse,
    pub served: Served,
}

impl Lab {
    pub(crate) async fn start() -> Self {
        let ci = Concourse::new();
        ci.add_user(USER, PASSWORD, &[TEAM]);
        ci.add_bearer(BEARER, USER, &[TEAM]);
        ci.pipeline(TEAM, "app").job("deploy", quick());
        let served = ci.serve().await.expect("serve the fake Concourse");
        Self { ci, served }
    }

    /// Pipeline `app` of the team.
    pub(crate) fn app(&self) -> PipelineSetup {
        self.ci.pipeline(TEAM, "app")
    }

    /// The instance block of an adapter for the team, `extra`'s keys over the defaults
    /// (a `null` drops a key).
    pub(crate) fn config(&self, extra: Value) -> Value {
        let defaults = json!({
            "url": self.served.url,
            "team": TEAM,
            "username": USER,
            "password": {"env": "CONCOURSE_PASSWORD"},
            "poll_initial": "100ms",
            "poll_max": "200ms",
            "poll_streaming": "200ms",
            "request_timeout": "2s",
        });
        let mut block = defaults.as_object().cloned().unwrap_or_default();
        block.extend(extra.as_object().cloned().unwrap_or_default());
        block.retain(|_, v| !v.is_null());
        Value::Object(block)
    }

    /// An adapter built through the kind, as `baton serve` builds it.
    pub(crate) fn adapter(&self, extra: Value) -> Arc<dyn Adapter> {
        self.try_adapter(extra).expect("build the adapter")
    }

    pub(crate) fn try_adapter(&self, extra: Value) -> Result<Arc<dyn Adapter>, AdapterError> {
        let secrets = TableSecrets::of(&[
            ("CONCOURSE_PASSWORD", PASSWORD),
            ("CONCOURSE_TOKEN", BEARER),
            ("WRONG_PASSWORD", "not-it"),
            ("OLD_TOKEN", "revoked-bearer"),
        ]);
        ConcourseKind::with_retry(fast_retry()).build("ci", &self.config(extra), &secrets)
    }

    /// The one job build the fake holds (panics unless there is exactly one).
    pub(crate) fn only_build(&self) -> baton_forge_fakes::concourse::BuildView {
        let all = self.ci.job_builds();
        assert_eq!(all.len(), 1, "expected exactly one build: {all:?}");
        all.into_iter().next().unwrap()
    }
}

/// The input of a stage running job `deploy` of pipeline `app`.
pub(crate) fn deploy() -> Value {
    json!({"pipeline": "app", "job": "deploy"})
}

/// Starts `deploy` of `app`; panics if the start fails.
pub(crate) async fn start_deploy(adapter: &dyn Adapter, key: &AttemptKey) -> ExternalRef {
    adapter
        .start(&request(key, deploy()))
        .await
        .unwrap_or_else(|e| panic!("start of {key} failed: {e:?}"))
}
