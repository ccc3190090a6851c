//! The harness of the adapter's tests: a fake Concourse (`baton_forge_fakes::concourse`,
//! which keeps state and lets real time move its builds) served on loopback, an adapter
//! built through its kind as `baton serve` builds it, and a driver that plays the engine's
//! part (store the reference, poll until an end, replace the reference when a poll gives
//! one).

// Each test file compiles this module on its own and uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_adapter_concourse::{ConcourseKind, RetryPolicy};
use baton_core::secret::SecretError;
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, PollOutcome, PollRequest, Secret,
    SecretRef, SecretResolver, StartRequest,
};
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

/// Resolves `{ env = NAME }` from a fixed table, so tests never touch the environment.
pub(crate) struct Secrets(pub BTreeMap<&'static str, &'static str>);

impl SecretResolver for Secrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError> {
        match reference {
            SecretRef::Env(name) => self
                .0
                .get(name.as_str())
                .map(|v| Secret::new(*v))
                .ok_or_else(|| SecretError::MissingEnv(name.clone())),
            SecretRef::File(path) => Err(SecretError::MissingEnv(path.clone())),
        }
    }
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

    /// The instance block of an adapter for the team; `extra` adds or replaces keys
    /// (`null` removes one).
    pub(crate) fn config(&self, extra: Value) -> Value {
        let mut config = json!({
            "url": self.served.url,
            "team": TEAM,
            "username": USER,
            "password": {"env": "CONCOURSE_PASSWORD"},
            "poll_initial": "100ms",
            "poll_max": "200ms",
            "poll_streaming": "200ms",
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
            ("CONCOURSE_PASSWORD", PASSWORD),
            ("CONCOURSE_TOKEN", BEARER),
            ("WRONG_PASSWORD", "not-it"),
            ("OLD_TOKEN", "revoked-bearer"),
        ]));
        ConcourseKind::with_retry(fast_retry()).build("ci", &self.config(extra), &secrets)
    }

    /// The one job build the fake holds (panics unless there is exactly one).
    pub(crate) fn only_build(&self) -> baton_forge_fakes::concourse::BuildView {
        let all = self.ci.job_builds();
        assert_eq!(all.len(), 1, "expected exactly one build: {all:?}");
        all.into_iter().next().unwrap()
    }
}

/// A start request for `key` with `input`.
pub(crate) fn request(key: &AttemptKey, input: Value) -> StartRequest {
    StartRequest {
        key: key.clone(),
        workflow: "wf".into(),
        input,
        timeout: Duration::from_secs(60),
    }
}

/// The input of a stage running job `deploy` of pipeline `app`.
pub(crate) fn deploy() -> Value {
    json!({"pipeline": "app", "job": "deploy"})
}

/// One poll, the reference replaced when the poll gives a new one.
pub(crate) async fn poll_once(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &mut ExternalRef,
) -> Result<PollOutcome, AdapterError> {
    let outcome = adapter
        .poll(&PollRequest {
            key,
            external,
            signal: None,
        })
        .await?;
    if let Some(next) = &outcome.external {
        *external = next.clone();
    }
    Ok(outcome)
}

/// Polls every 50 ms until `done` says so (or an end), for at most `limit`; every outcome
/// seen is returned, the last one last.
pub(crate) async fn poll_until(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &mut ExternalRef,
    limit: Duration,
    done: impl Fn(&PollOutcome) -> bool,
) -> Vec<PollOutcome> {
    let began = Instant::now();
    let mut seen = Vec::new();
    loop {
        let outcome = poll_once(adapter, key, external)
            .await
            .unwrap_or_else(|e| panic!("poll of {key} failed: {e:?}"));
        let stop = done(&outcome) || outcome.state.is_terminal();
        seen.push(outcome);
        if stop {
            return seen;
        }
        assert!(
            began.elapsed() < limit,
            "{key} did not get there within {limit:?}: {:?}",
            seen.last()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until an end.
pub(crate) async fn poll_to_end(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &mut ExternalRef,
) -> PollOutcome {
    poll_until(adapter, key, external, Duration::from_secs(20), |_| false)
        .await
        .pop()
        .unwrap()
}

/// Starts `deploy` of `app`; panics if the start fails.
pub(crate) async fn start_deploy(adapter: &dyn Adapter, key: &AttemptKey) -> ExternalRef {
    adapter
        .start(&request(key, deploy()))
        .await
        .unwrap_or_else(|e| panic!("start of {key} failed: {e:?}"))
}

/// Asserts that `result` is an error of `variant` (`Transient`, `Invalid`, …) whose message
/// holds `needle`.
pub(crate) fn expect_error<T: std::fmt::Debug>(
    result: Result<T, AdapterError>,
    variant: &str,
    needle: &str,
) {
    let err = result.expect_err("expected an error");
    let (name, message) = match &err {
        AdapterError::Invalid(m) => ("Invalid", m),
        AdapterError::Auth(m) => ("Auth", m),
        AdapterError::NotFound(m) => ("NotFound", m),
        AdapterError::Transient(m) => ("Transient", m),
        AdapterError::Protocol(m) => ("Protocol", m),
    };
    assert_eq!(name, variant, "{err:?}");
    assert!(message.contains(needle), "`{needle}` is not in: {message}");
}
