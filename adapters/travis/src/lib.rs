//! The `travis` adapter: create a Travis CI build request, follow it to its build and the
//! build to its end, read outputs from its jobs' logs, and cancel it.
//!
//! ```toml
//! [adapters.travis]
//! kind = "travis"
//! url = "https://api.travis-ci.com"     # Enterprise: https://travis.example.com/api
//! repo = "octo-org/app"
//! token = { env = "TRAVIS_TOKEN" }
//! request_timeout_build = "5m"          # a request with no build by then fails
//! ```
//!
//! ```yaml
//!   test:
//!     uses: travis
//!     with:
//!       branch: main
//!       config: { env: { global: ['SHA=${{ .event.after }}'] } }
//!       merge_mode: deep_merge_append
//!       message: 'baton ${{ .run.id }}'
//! ```
//!
//! The calls follow Travis CI's API v3 (see `docs/adapters/travis.md`):
//!
//! - `start` creates a request (`POST /repo/{owner%2Fname}/requests`) whose message carries
//!   the attempt key, unless the repository's request limit is known to be spent, in which
//!   case it says until when ([`AdapterError::Throttled`]).
//! - `find` looks through the repository's recent requests for that message.
//! - `poll` reads the request until it has a build (or is rejected, or
//!   `request_timeout_build` passes), then the build; hints grow from `poll_initial` to
//!   `poll_max` with jitter.
//! - `cancel` cancels the build, or watches a request that has none yet.
//! - `outputs` reads the build, its jobs and the `KEY=value` lines between
//!   `BATON-OUTPUTS-BEGIN` and `BATON-OUTPUTS-END` in the jobs' logs; `logs` links every
//!   job and its `log.txt` and reads the failed jobs' tails.
//! - `source_delivery` reads a `travis` source's notifications.
//!
//! # Modules
//!
//! [`config`] checks instance blocks and `with:` blocks; `client` is HTTP to the API;
//! `model` reads Travis's answers and maps its states; `tracked` is what the stored
//! reference holds and what this process remembers; `limit` is the shared knowledge of the
//! request limit; `start` creates and finds requests; `poll` follows them and cancels;
//! `outputs` reads what a finished build leaves; `webhook` reads notifications.

mod client;
pub mod config;
mod limit;
mod model;
mod outputs;
mod poll;
mod start;
mod tracked;
mod webhook;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::typed::InstanceBuild;
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, FieldError, Logs, PollOutcome,
    PollRequest, Secret, SecretResolver, SourceDelivery, StartRequest,
};
use serde_json::{Map, Value};

use crate::client::Client;
use crate::config::Mode;
pub use crate::config::{InstanceConfig, StageSpec};
use crate::limit::Limit;
/// The lines that open and close a block of outputs in a job's log.
pub use crate::outputs::{BEGIN as OUTPUTS_BEGIN, END as OUTPUTS_END};
use crate::tracked::Memory;
/// How transient answers (429, 5xx, a refused connection) are retried within one call.
pub use baton_core::wire::RetryPolicy;

/// The kind name, as in `kind = "travis"`.
pub const KIND: &str = "travis";

/// The `travis` kind.
#[derive(Debug, Clone, Default)]
pub struct TravisKind {
    retry: RetryPolicy,
}

impl TravisKind {
    /// The kind, building adapters that retry transient answers as `retry` says.
    pub fn with_retry(retry: RetryPolicy) -> Self {
        Self { retry }
    }
}

impl AdapterKind for TravisKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn summary(&self) -> &'static str {
        "creates a Travis CI build request and follows its build to the end"
    }

    fn docs(&self) -> &'static str {
        "docs/adapters/travis.md"
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
        Ok(Arc::new(TravisAdapter::new(
            name, &config, token, self.retry,
        )?))
    }
}

#[derive(Debug)]
struct Inner {
    client: Client,
    /// The repository's pages, `<web>/<owner>/<name>`.
    pages: String,
    request_timeout_build: Duration,
    poll_initial: Duration,
    poll_max: Duration,
    limit: Limit,
    memory: Memory,
    /// Requests whose build a cancel waits for, so that it is cancelled once it appears.
    watched: Mutex<HashSet<u64>>,
}

/// Drives the builds of one Travis CI repository.
#[derive(Debug, Clone)]
pub struct TravisAdapter {
    inner: Arc<Inner>,
}

impl TravisAdapter {
    /// An adapter for the repository in `config`, with API token `token`.
    pub fn new(
        name: &str,
        config: &InstanceConfig,
        token: Secret,
        retry: RetryPolicy,
    ) -> Result<Self, AdapterError> {
        let slug = config.slug();
        let client = Client::new(
            name,
            &config.api,
            &slug,
            token,
            config.request_timeout,
            retry,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                pages: format!("{}/{slug}", config.web),
                request_timeout_build: config.request_timeout_build,
                poll_initial: config.poll_initial,
                poll_max: config.poll_max,
                limit: Limit::of(config.api.as_str(), &slug),
                memory: Memory::default(),
                watched: Mutex::default(),
            }),
        })
    }

    /// The poll hint after `polls` polls: `poll_initial × 1.5^polls`, capped at `poll_max`,
    /// times a jitter in [0.8, 1.0], so that many waiting stages spread out and no hint is
    /// above `poll_max`.
    pub fn hint(&self, polls: u32) -> Duration {
        baton_core::wire::poll_hint(
            self.inner.poll_initial,
            self.inner.poll_max,
            polls,
            rand::random_range(0.8..=1.0),
        )
    }
}

#[async_trait]
impl Adapter for TravisAdapter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        self.create(request).await
    }

    /// Finds the request of `key`: one this process created, else among the repository's
    /// 50 most recent requests (created since the run began, for a run id that is a
    /// UUIDv7), the one whose message holds `key`.
    async fn find(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        self.find_request(key, input).await
    }

    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        self.follow(request).await
    }

    async fn outputs(
        &self,
        _key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        self.read_outputs(external).await
    }

    async fn cancel(&self, key: &AttemptKey, external: &ExternalRef) -> Result<(), AdapterError> {
        self.stop(key, external).await
    }

    async fn logs(&self, _key: &AttemptKey, external: &ExternalRef) -> Result<Logs, AdapterError> {
        self.read_logs(external).await
    }

    fn source_delivery(&self, delivery: &SourceDelivery<'_>) -> Vec<AttemptKey> {
        self.notified(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn adapter(initial: &str, max: &str) -> TravisAdapter {
        let config = config::parse_instance(&json!({
            "repo": "octo/app", "token": {"env": "T"}, "poll_initial": initial, "poll_max": max,
        }))
        .unwrap();
        TravisAdapter::new("travis", &config, Secret::new("t"), RetryPolicy::default()).unwrap()
    }

    /// The default hints and the request budget of a 120 s build that the doc promises.
    #[test]
    fn a_two_minute_build_costs_at_most_fifteen_requests() {
        let a = adapter("5s", "30s");
        for _ in 0..200 {
            let first = a.hint(0);
            assert!(first >= Duration::from_secs(4) && first <= Duration::from_secs(5));
            assert!(a.hint(40) <= Duration::from_secs(30));
            assert!(a.hint(40) >= Duration::from_secs(24));
        }
        // The engine polls once right after the create, then after each hint, until a poll
        // lands past 120 s (the request's polls and the build's share one count); the most
        // polls come with every hint at its shortest (×0.8).
        for (jitter, expected) in [(0.8, 9), (1.0, 8)] {
            let mut at = 0.0;
            let mut polls = 1u32;
            while at < 120.0 {
                at += (5.0 * 1.5f64.powi(polls as i32 - 1)).min(30.0) * jitter;
                polls += 1;
            }
            assert_eq!(polls, expected, "jitter {jitter}");
            // Success with one job: create + polls + its log for outputs (the ending poll
            // kept the build's state and jobs). Failure: + the failed job's log tail.
            let passed = 1 + polls + 1;
            let failed = passed + 1;
            assert!(passed <= 11 && failed <= 15, "{passed}, {failed}");
        }
    }
}
