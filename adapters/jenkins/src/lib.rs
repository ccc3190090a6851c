//! The `jenkins` adapter: trigger a Jenkins job, follow its queue item to the build, map
//! the result, read outputs (parameters, artifacts, a property file) and logs, and cancel.
//!
//! ```toml
//! [adapters.ci]
//! kind = "jenkins"
//! url = "https://jenkins.example.com/"
//! user = "baton"
//! token = { env = "JENKINS_TOKEN" }     # or password = { … }: then a crumb and its cookie
//! unstable = "failure"                  # or "success": UNSTABLE passes with warnings
//! ```
//!
//! ```yaml
//!   mysql-test:
//!     uses: ci
//!     with:
//!       job: tidb/mysql-test                     # folders as a/b/c
//!       parameters: { SHA: '${{ .event.pull_request.head.sha }}' }
//!       properties_artifact: out/result.properties
//! ```
//!
//! The calls follow the Jenkins remote API (see `docs/adapters/jenkins.md`):
//!
//! - `start` reads the job (its class, URL and parameter definitions), then POSTs
//!   `buildWithParameters` (a form body) or `build`, and keeps the queue item from the
//!   `Location` header. When the job defines a `BATON_ATTEMPT` parameter it is set to the
//!   attempt key, which correlates the build and keeps Jenkins from folding this request
//!   into an identical queued one.
//! - `poll` follows the queue item until it is cancelled or has become a build, then the
//!   build until it has a result; the reference is replaced at each step. When a queue
//!   item has vanished (Jenkins forgets left items after about 5 minutes), the build is
//!   found by its `queueId` among the job's recent builds. Hints grow from `poll_initial`
//!   to `poll_max`, with jitter.
//! - `find` looks for `BATON_ATTEMPT = <key>` in the queue and the recent builds. Without
//!   that parameter it falls back to the queue id this process saw, or to identical
//!   parameters queued after the run began; see [`JenkinsAdapter::find`] for what that
//!   cannot guarantee.
//! - `cancel` cancels a queued item, or stops a running build and, in the background,
//!   escalates to `term` and then `kill` after `stop_grace` each while it still runs.
//! - `completion_webhook` reads the Notification plugin's JSON.
//!
//! # Modules
//!
//! Every call after `start` works from the stored reference alone: `tracked` is that
//! reference (where the work is) and this process's memory of the attempts it started.
//! `start` triggers jobs and finds their work again (the search `poll` and `cancel` use
//! too), `poll` follows a queue item to its build and the build to its result,
//! `cancel` cancels and stops, and `outputs` reads what a finished build leaves (outputs,
//! logs). They all talk to Jenkins through [`client`] (requests, crumbs, retries) and read
//! its answers with [`model`]; [`config`] checks instance blocks and `with:` blocks,
//! [`properties`] reads property files and [`webhook`] completion notices.

mod cancel;
mod client;
pub mod config;
mod model;
mod outputs;
mod poll;
mod properties;
mod start;
mod tracked;
mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use baton_core::typed::InstanceBuild;
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, FieldError, Logs, PollOutcome,
    PollRequest, Secret, SecretResolver, StartRequest, WebhookRequest,
};
use serde_json::{Map, Value};

use crate::client::Client;
pub use crate::client::RetryPolicy;
use crate::config::Mode;
pub use crate::config::{ATTEMPT_PARAMETER, Credentials, InstanceConfig, StageSpec, Unstable};
pub use crate::outputs::LogChunk;
use crate::tracked::Tracked;

/// The kind name, as in `kind = "jenkins"`.
pub const KIND: &str = "jenkins";

/// How long a queue item may be missing, with no build found for it, before the attempt
/// errs. Covers the 404 some controllers give right after a trigger.
pub const LOST_GRACE: Duration = Duration::from_secs(120);

/// How far before the earliest possible trigger time the fallback search of `find` looks,
/// for clocks that disagree a little.
pub const CLOCK_SLACK: Duration = Duration::from_secs(5);

/// How much of a log `logs` returns as text (its tail).
pub const LOG_TAIL_BYTES: usize = 64 * 1024;

/// The most bytes one [`JenkinsAdapter::read_log`] returns.
pub const LOG_CHUNK_BYTES: usize = 1024 * 1024;

/// How many attempts this process remembers starting (for `find` and webhooks) at most.
const MEMORY_LIMIT: usize = 20_000;

/// The `jenkins` kind.
#[derive(Debug, Clone, Default)]
pub struct JenkinsKind {
    retry: RetryPolicy,
}

impl JenkinsKind {
    /// The kind, building adapters that retry transient answers as `retry` says.
    pub fn with_retry(retry: RetryPolicy) -> Self {
        Self { retry }
    }
}

impl AdapterKind for JenkinsKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn summary(&self) -> &'static str {
        "triggers a Jenkins job and follows its queue item to the build and its result"
    }

    fn docs(&self) -> &'static str {
        "docs/adapters/jenkins.md"
    }

    fn validate_instance(&self, config: &Value) -> Vec<FieldError> {
        config::parse_instance(config).err().unwrap_or_default()
    }

    fn validate_stage(&self, with: &Value) -> Vec<FieldError> {
        config::parse_stage(with, Mode::Templates)
            .err()
            .unwrap_or_default()
    }

    fn build(
        &self,
        name: &str,
        config: &Value,
        secrets: &dyn SecretResolver,
    ) -> Result<Arc<dyn Adapter>, AdapterError> {
        let build = InstanceBuild::new(name, secrets);
        let config = build.config(config::parse_instance(config))?;
        let credentials = config
            .credentials
            .clone()
            .map(|reference| build.secret(&reference))?;
        Ok(Arc::new(JenkinsAdapter::new(
            name,
            &config,
            credentials,
            self.retry,
        )?))
    }
}

#[derive(Debug)]
struct Inner {
    client: Client,
    unstable: Unstable,
    poll_initial: Duration,
    poll_max: Duration,
    stop_grace: Duration,
    /// Attempts this process triggered: for `find` after a start whose answer was lost.
    journal: Mutex<HashMap<AttemptKey, Tracked>>,
    /// Queue items (`queue:<N>`) and build paths of attempts being polled, for webhooks
    /// from jobs without `BATON_ATTEMPT`.
    watched: Mutex<HashMap<String, AttemptKey>>,
    /// Builds with a stop escalation under way.
    stopping: Mutex<HashSet<String>>,
}

/// Drives Jenkins jobs for one controller.
#[derive(Debug, Clone)]
pub struct JenkinsAdapter {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl JenkinsAdapter {
    /// An adapter for the controller in `config`, authenticating with `credentials`.
    pub fn new(
        name: &str,
        config: &InstanceConfig,
        credentials: Credentials<Secret>,
        retry: RetryPolicy,
    ) -> Result<Self, AdapterError> {
        let client = Client::new(
            name,
            config.url.clone(),
            credentials,
            config.request_timeout,
            retry,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                unstable: config.unstable,
                poll_initial: config.poll_initial,
                poll_max: config.poll_max,
                stop_grace: config.stop_grace,
                journal: Mutex::default(),
                watched: Mutex::default(),
                stopping: Mutex::default(),
            }),
        })
    }

    /// The poll hint after `polls` polls in one phase: `poll_initial × 1.5^polls`, capped at
    /// `poll_max`, times a jitter in [0.8, 1.2] (never above `poll_max`), so that many
    /// waiting stages spread out instead of polling in step.
    pub fn hint(&self, polls: u32) -> Duration {
        let jitter = rand::random_range(0.8..=1.2);
        baton_core::wire::poll_hint(self.inner.poll_initial, self.inner.poll_max, polls, jitter)
    }
}

#[async_trait]
impl Adapter for JenkinsAdapter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        self.trigger(request).await
    }

    /// Finds the work of `key`.
    ///
    /// 1. A start made by this process whose answer gave a queue item: that item.
    /// 2. The job defines `BATON_ATTEMPT`: the queue item or one of the last 100 builds
    ///    whose `BATON_ATTEMPT` is `key`. Exact, as long as the build is among those 100.
    /// 3. Otherwise, candidates with the same parameters, queued or started after the
    ///    trigger this process recorded or, after a restart, after the run was created
    ///    (the time in its UUIDv7 id), less a few seconds for clock differences, and not
    ///    claimed by another attempt this process started. One candidate is adopted;
    ///    several are an error (the stage fails rather than adopt another run's build).
    ///    This cannot tell a build someone else triggered with the same parameters from
    ///    this attempt's, nor (for a retry) the previous attempt's build from this one's.
    async fn find(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        self.find_work(key, input).await
    }

    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        self.poll_attempt(request).await
    }

    async fn outputs(
        &self,
        _key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        self.read_outputs(external).await
    }

    async fn cancel(&self, key: &AttemptKey, external: &ExternalRef) -> Result<(), AdapterError> {
        self.cancel_work(key, external).await
    }

    async fn logs(&self, _key: &AttemptKey, external: &ExternalRef) -> Result<Logs, AdapterError> {
        self.read_logs(external).await
    }

    fn completion_webhook(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<AttemptKey>, AdapterError> {
        self.webhook_attempts(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracked::{Phase, decode, same_path};
    use serde_json::json;

    fn adapter(initial: &str, max: &str) -> JenkinsAdapter {
        let config = config::parse_instance(&json!({
            "url": "http://127.0.0.1:9/", "poll_initial": initial, "poll_max": max
        }))
        .unwrap();
        JenkinsAdapter::new(
            "ci",
            &config,
            Credentials::Anonymous,
            RetryPolicy::default(),
        )
        .unwrap()
    }

    #[test]
    fn hints_back_off_to_the_cap_with_jitter() {
        let a = adapter("2s", "30s");
        for _ in 0..100 {
            let first = a.hint(0);
            assert!(first >= Duration::from_millis(1600) && first <= Duration::from_millis(2400));
            let late = a.hint(40);
            assert!(
                late >= Duration::from_secs(24) && late <= Duration::from_secs(30),
                "{late:?}"
            );
        }
        // What the back-off buys: one waiting stage's polls in its first hour, on average.
        let mut elapsed = Duration::ZERO;
        let mut polls = 0u32;
        while elapsed < Duration::from_secs(3600) {
            let nominal = (2.0 * 1.5f64.powi(polls.min(64) as i32)).min(30.0);
            elapsed += Duration::from_secs_f64(nominal);
            polls += 1;
        }
        // 2 s fixed would be 1,800 polls; with the back-off it is about 120 (1,000 such
        // stages: about 33 requests a second once settled).
        assert!((115..=130).contains(&polls), "{polls}");
    }

    #[test]
    fn paths_compare_decoded() {
        assert!(same_path("job/a%20b/job/x%40y/", "job/a%20b/job/x@y"));
        assert!(!same_path("job/a/", "job/b/"));
        assert_eq!(decode("%zz%4"), b"%zz%4");
    }

    #[test]
    fn garbage_references_are_refused() {
        for data in [
            json!("x"),
            json!({"phase": "queued", "job": "job/a/"}),
            json!(null),
        ] {
            let ext = ExternalRef {
                id: "x".into(),
                url: None,
                data,
            };
            assert!(matches!(Tracked::read(&ext), Err(AdapterError::Invalid(_))));
        }
    }

    #[test]
    fn webhooks_name_attempts() {
        let a = adapter("2s", "30s");
        let key = AttemptKey::new("r1", "deploy", 1);
        let tracked = Tracked {
            phase: Phase::Building,
            job: "job/a/".into(),
            name: "a".into(),
            queue: Some(5),
            build: Some("job/a/3/".into()),
            number: Some(3),
            triggered_ms: 0,
            attempt_param: false,
            params: vec![],
            unstable: "failure".into(),
            properties_artifact: None,
            polls: 0,
            missing_since_ms: None,
        };
        a.watch(&key, &tracked);
        let hook = |body: &str| {
            a.completion_webhook(&WebhookRequest {
                headers: &[],
                body: body.as_bytes(),
            })
        };
        assert_eq!(
            hook(r#"{"build":{"url":"job/a/3/","phase":"COMPLETED"}}"#).unwrap(),
            std::slice::from_ref(&key)
        );
        assert_eq!(
            hook(r#"{"build":{"queue_id":5}}"#).unwrap(),
            std::slice::from_ref(&key)
        );
        assert_eq!(
            hook(r#"{"build":{"parameters":{"BATON_ATTEMPT":"r2/x/4"},"queue_id":5}}"#).unwrap(),
            [AttemptKey::new("r2", "x", 4), key.clone()]
        );
        assert!(hook(r#"{"build":{"queue_id":6}}"#).unwrap().is_empty());
        assert!(
            hook(r#"{"build":{"parameters":{"BATON_ATTEMPT":"not a key"}}}"#)
                .unwrap()
                .is_empty()
        );
        assert!(matches!(hook("garbage"), Err(AdapterError::Invalid(_))));
        a.forget(&key);
        assert!(hook(r#"{"build":{"queue_id":5}}"#).unwrap().is_empty());
    }
}
