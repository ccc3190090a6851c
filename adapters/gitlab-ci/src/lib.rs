//! The `gitlab-ci` adapter: create a GitLab CI/CD pipeline, follow it to its end, read its
//! jobs, a dotenv file from its artifacts and its failed jobs' traces, and cancel it.
//!
//! ```toml
//! [adapters.gl]
//! kind = "gitlab-ci"
//! url = "https://gitlab.example.com"
//! project = "group/sub/app"              # path or numeric id
//! token = { env = "GITLAB_TOKEN" }       # `api` scope: create, read, cancel
//! trigger_token = { env = "GL_TRIGGER" } # optional: create through the trigger endpoint
//! ```
//!
//! ```yaml
//!   deploy:
//!     uses: gl
//!     with:
//!       ref: main
//!       variables: { IMAGE_TAG: '${{ .stages.build.outputs.tag }}' }
//!       inputs: { environment: production }
//!       dotenv_artifact: build.env
//! ```
//!
//! The calls follow GitLab's REST API v4 (see `docs/adapters/gitlab-ci.md`):
//!
//! - `start` creates the pipeline (`POST /projects/:id/pipeline` with array variables, or
//!   `POST /projects/:id/trigger/pipeline` with the trigger token and hash variables), with
//!   the variable `BATON_ATTEMPT` set to the attempt key.
//! - `find` lists the project's recent pipelines of the stage's `ref` created through that
//!   endpoint and reads each one's variables for `BATON_ATTEMPT`.
//! - `poll` reads the pipeline; hints grow from `poll_initial` to `poll_max` with jitter.
//! - `cancel` asks GitLab to cancel, then reads the status back (the cancel answers 200
//!   whatever the state).
//! - `outputs` reads the jobs and, with `dotenv_artifact`, that file from the last job
//!   whose artifacts hold it; `logs` links every job and reads the failed jobs' traces.
//! - `source_delivery` reads a `gitlab` source's Pipeline Hook deliveries.
//!
//! # Modules
//!
//! [`config`] checks instance blocks and `with:` blocks; `client` is HTTP to the project
//! (retries, errors that name the token); `model` reads GitLab's answers and maps its
//! statuses; `tracked` is what the stored reference holds and the memory of followed
//! pipelines; `start` creates and finds pipelines, `poll` reads and cancels them,
//! `outputs` reads what a finished pipeline leaves, and `webhook` reads Pipeline Hooks.

mod client;
pub mod config;
mod model;
mod outputs;
mod poll;
mod start;
mod tracked;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_core::typed::InstanceBuild;
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, FieldError, Logs, PollOutcome,
    PollRequest, Secret, SecretResolver, SourceDelivery, StartRequest,
};
use serde_json::{Map, Value};

use crate::client::Client;
pub use crate::client::RetryPolicy;
use crate::config::Mode;
pub use crate::config::{ATTEMPT_VARIABLE, InstanceConfig, StageSpec};
use crate::tracked::Followed;

/// The kind name, as in `kind = "gitlab-ci"`.
pub const KIND: &str = "gitlab-ci";

/// The `gitlab-ci` kind.
#[derive(Debug, Clone, Default)]
pub struct GitLabKind {
    retry: RetryPolicy,
}

impl GitLabKind {
    /// The kind, building adapters that retry transient answers as `retry` says.
    pub fn with_retry(retry: RetryPolicy) -> Self {
        Self { retry }
    }
}

impl AdapterKind for GitLabKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn summary(&self) -> &'static str {
        "creates a GitLab CI/CD pipeline and follows it to its end"
    }

    fn docs(&self) -> &'static str {
        "docs/adapters/gitlab-ci.md"
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
        let token = build.secret(&config.token)?;
        let trigger = config
            .trigger_token
            .as_ref()
            .map(|reference| build.secret(reference))
            .transpose()?;
        Ok(Arc::new(GitLabAdapter::new(
            name, &config, token, trigger, self.retry,
        )?))
    }
}

#[derive(Debug)]
struct Inner {
    client: Client,
    trigger_token: Option<Secret>,
    poll_initial: Duration,
    poll_max: Duration,
    /// Pipelines this process started, found or polled, by id, with their attempts.
    followed: Followed,
}

/// Drives the pipelines of one GitLab project.
#[derive(Debug, Clone)]
pub struct GitLabAdapter {
    inner: Arc<Inner>,
}

impl GitLabAdapter {
    /// An adapter for the project in `config`, reading with `token` and, when given,
    /// creating pipelines with `trigger_token`.
    pub fn new(
        name: &str,
        config: &InstanceConfig,
        token: Secret,
        trigger_token: Option<Secret>,
        retry: RetryPolicy,
    ) -> Result<Self, AdapterError> {
        let client = Client::new(
            name,
            &config.api,
            &config.project,
            token,
            config.request_timeout,
            retry,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                trigger_token,
                poll_initial: config.poll_initial,
                poll_max: config.poll_max,
                followed: Followed::default(),
            }),
        })
    }

    /// The poll hint after `polls` polls: `poll_initial × 1.5^polls`, capped at `poll_max`,
    /// times a jitter in [0.8, 1.0], so that many waiting stages spread out instead of
    /// polling in step, and no hint is ever above `poll_max`.
    pub fn hint(&self, polls: u32) -> Duration {
        let initial = self.inner.poll_initial.as_secs_f64();
        let max = self.inner.poll_max.as_secs_f64();
        let grown = (initial * 1.5f64.powi(polls.min(64) as i32)).min(max);
        Duration::from_secs_f64((grown * rand::random_range(0.8..=1.0)).max(0.001))
    }
}

#[async_trait]
impl Adapter for GitLabAdapter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        self.create(request).await
    }

    /// Finds the pipeline of `key`: one this process created, else among the project's 20
    /// most recent pipelines of the stage's `ref` created through the same endpoint (and,
    /// for a run id that is a UUIDv7, updated since the run began), the one whose
    /// `BATON_ATTEMPT` variable is `key`.
    async fn find(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        self.find_pipeline(key, input).await
    }

    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        self.poll_pipeline(request).await
    }

    async fn outputs(
        &self,
        _key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        self.read_outputs(external).await
    }

    async fn cancel(&self, _key: &AttemptKey, external: &ExternalRef) -> Result<(), AdapterError> {
        self.cancel_pipeline(external).await
    }

    async fn logs(&self, _key: &AttemptKey, external: &ExternalRef) -> Result<Logs, AdapterError> {
        self.read_logs(external).await
    }

    fn source_delivery(&self, delivery: &SourceDelivery<'_>) -> Vec<AttemptKey> {
        self.hook_attempts(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn adapter(initial: &str, max: &str) -> GitLabAdapter {
        let config = config::parse_instance(&json!({
            "url": "http://127.0.0.1:9", "project": "g/a", "token": {"env": "T"},
            "poll_initial": initial, "poll_max": max,
        }))
        .unwrap();
        GitLabAdapter::new(
            "gl",
            &config,
            Secret::new("t"),
            None,
            RetryPolicy::default(),
        )
        .unwrap()
    }

    /// The default hints and the request budget of a 120 s pipeline the doc promises.
    #[test]
    fn a_two_minute_pipeline_costs_at_most_fifteen_requests() {
        let a = adapter("5s", "30s");
        for _ in 0..200 {
            let first = a.hint(0);
            assert!(first >= Duration::from_secs(4) && first <= Duration::from_secs(5));
            assert!(a.hint(40) <= Duration::from_secs(30));
            assert!(a.hint(40) >= Duration::from_secs(24));
        }
        // The engine polls once right after the start, then after each hint, until a poll
        // lands past 120 s; the most polls come with every hint at its shortest (×0.8).
        for (jitter, expected) in [(0.8, 9), (1.0, 8)] {
            let mut at = 0.0;
            let mut polls = 1u32;
            while at < 120.0 {
                at += (5.0 * 1.5f64.powi(polls as i32 - 1)).min(30.0) * jitter;
                polls += 1;
            }
            assert_eq!(polls, expected, "jitter {jitter}");
            // Success: create + polls + jobs + the dotenv file (the end's poll kept the
            // pipeline's status and sha). Failure in one job: + jobs and its trace.
            let succeeded = 1 + polls + 1 + 1;
            let failed = succeeded + 2;
            assert!(succeeded <= 12 && failed <= 15, "{succeeded}, {failed}");
        }
    }
}
