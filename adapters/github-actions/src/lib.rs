//! The `github-actions` adapter: dispatch a GitHub Actions workflow, follow its run to the
//! end, read its jobs, artifacts and a `baton-outputs` file, and cancel it.
//!
//! ```toml
//! [adapters.gha]
//! kind = "github-actions"
//! repo = "octo-org/app"
//! token = { env = "GITHUB_TOKEN" }     # or app = { id, installation, key = { file } }
//! correlation_input = "baton_attempt"  # optional: finds runs a 204 did not name
//! ```
//!
//! ```yaml
//!   build:
//!     uses: gha
//!     with: { workflow: ci.yml, ref: main, inputs: { sha: '${{ .event.after }}' } }
//! ```
//!
//! The calls follow GitHub's REST API (see `docs/adapters/github-actions.md`):
//!
//! - `start` POSTs the `workflow_dispatch` with `return_run_details`; a 200 names the run.
//!   A 204 (GHES, older API versions) leaves a reference that `poll` resolves by finding
//!   the run whose `display_title` holds the attempt key (`correlation_input`).
//! - `poll` reads the run with `If-None-Match` (a 304 is free), maps every status and
//!   conclusion, and stretches its hints when the credential's rate budget runs low.
//! - `find` looks in this process's journal, then (with `correlation_input`) searches
//!   the workflow's `workflow_dispatch` runs; it never dispatches.
//! - `cancel` cancels, then force-cancels after `stop_grace` while the run still runs.
//! - `outputs` reads jobs, artifacts and the `baton-outputs` artifact's `outputs.json`;
//!   `logs` gives every job's link and the failed jobs' log tails.
//! - `source_delivery` reads the `github` source's `workflow_run` deliveries.
//!
//! # Modules
//!
//! [`config`] checks the blocks; `client` talks HTTP (auth, retries, rate limits, downloads
//! without the token) and `budget` keeps one rate budget per credential; `model` reads
//! GitHub's answers and `tracked` is the stored reference. `start` dispatches and finds
//! runs, `poll` maps states, `cancel` stops runs, `outputs` reads what a run leaves (with
//! `zip` for the outputs artifact), and `webhook` reads deliveries.

mod budget;
mod cancel;
mod client;
pub mod config;
mod model;
mod outputs;
mod poll;
mod start;
mod tracked;
mod webhook;
mod zip;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::typed::InstanceBuild;
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, FieldError, Logs, PollOutcome,
    PollRequest, SecretResolver, SourceDelivery, StartRequest,
};
use serde_json::{Map, Value};

pub use crate::budget::Budget;
pub use crate::client::RetryPolicy;
use crate::client::{Client, Credential};
use crate::config::Mode;
pub use crate::config::{Credentials, InstanceConfig, StageSpec};
use crate::model::Run;
use crate::tracked::Tracked;

/// The kind name, as in `kind = "github-actions"`.
pub const KIND: &str = "github-actions";

/// The artifact whose `outputs.json` becomes outputs.
pub const OUTPUTS_ARTIFACT: &str = "baton-outputs";

/// How long after a dispatch answered 204 its run may take to appear before the stage
/// fails. GitHub creates the run within seconds; two minutes covers a slow queue.
pub const CORRELATE_WINDOW: Duration = Duration::from_secs(120);

/// How far before the dispatch the search looks, for clocks that disagree a little.
pub const CLOCK_SLACK: Duration = Duration::from_secs(60);

/// How many runs (and attempts) this process remembers at most.
const MEMORY_LIMIT: usize = 20_000;

/// The `github-actions` kind.
#[derive(Debug, Clone, Default)]
pub struct GithubActionsKind {
    retry: RetryPolicy,
}

impl GithubActionsKind {
    /// The kind, building adapters that retry transient answers as `retry` says.
    pub fn with_retry(retry: RetryPolicy) -> Self {
        Self { retry }
    }
}

impl AdapterKind for GithubActionsKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn summary(&self) -> &'static str {
        "dispatches a GitHub Actions workflow and follows its run to the end"
    }

    fn docs(&self) -> &'static str {
        "docs/adapters/github-actions.md"
    }

    fn validate_instance(&self, config: &Value) -> Vec<FieldError> {
        config::parse_instance(config).err().unwrap_or_default()
    }

    fn validate_stage(&self, with: &Value) -> Vec<FieldError> {
        // The instance is not known here; the limit on inputs counts the correlation
        // input again at start.
        config::parse_stage(with, Mode::Templates, None)
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
        let parsed = build.config(config::parse_instance(config))?;
        let credential = match &parsed.credentials {
            Credentials::Token(token) => Credential::Token(build.secret(token)?),
            Credentials::App {
                id,
                installation,
                key,
            } => Credential::App {
                id: *id,
                installation: *installation,
                key: build.secret(key)?,
            },
        };
        Ok(Arc::new(GithubActionsAdapter::new(
            name, &parsed, credential, self.retry,
        )?))
    }
}

/// What this process knows of a run it follows.
#[derive(Debug, Clone)]
struct Watch {
    key: AttemptKey,
    polls: u32,
    /// The last answer's ETag and run, for `If-None-Match`.
    etag: Option<(String, Run)>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    owner: String,
    repo: String,
    correlation_input: Option<String>,
    poll_initial: Duration,
    poll_max: Duration,
    stop_grace: Duration,
    /// Dispatches this process sent, by attempt: for `find` after a lost answer.
    journal: Mutex<HashMap<AttemptKey, Tracked>>,
    /// Runs being followed: for deliveries, poll counts and ETags.
    watched: Mutex<HashMap<u64, Watch>>,
    /// Runs with a force-cancel pending.
    stopping: Mutex<std::collections::HashSet<u64>>,
}

/// Drives GitHub Actions workflows of one repository.
#[derive(Debug, Clone)]
pub struct GithubActionsAdapter {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GithubActionsAdapter {
    fn new(
        name: &str,
        config: &InstanceConfig,
        credential: Credential,
        retry: RetryPolicy,
    ) -> Result<Self, AdapterError> {
        let client = Client::new(
            name,
            config.url.clone(),
            credential,
            config.request_timeout,
            retry,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                owner: config.owner.clone(),
                repo: config.repo.clone(),
                correlation_input: config.correlation_input.clone(),
                poll_initial: config.poll_initial,
                poll_max: config.poll_max,
                stop_grace: config.stop_grace,
                journal: Mutex::default(),
                watched: Mutex::default(),
                stopping: Mutex::default(),
            }),
        })
    }

    /// The rate budget this adapter's credential shares with every other user of it.
    pub fn budget(&self) -> Arc<Budget> {
        self.inner.client.budget().clone()
    }

    /// `repos/{owner}/{repo}/actions/` followed by `rest`.
    fn actions(&self, rest: &str) -> String {
        format!(
            "repos/{}/{}/actions/{rest}",
            self.inner.owner, self.inner.repo
        )
    }

    /// The poll hint after `polls` polls: `poll_initial × 1.5^polls`, capped at
    /// `poll_max`, times a jitter in [0.8, 1.2] (never above `poll_max`), and never shorter
    /// than the credential's budget allows.
    pub fn hint(&self, polls: u32) -> Duration {
        let jitter = rand::random_range(0.8..=1.2);
        let jittered = baton_core::wire::poll_hint(
            self.inner.poll_initial,
            self.inner.poll_max,
            polls,
            jitter,
        );
        let floor = self.inner.client.budget().poll_floor();
        // The spread keeps stages stretched by the budget from all polling in one instant.
        let floor = floor.mul_f64(rand::random_range(1.0..=1.1));
        jittered.max(floor).min(Duration::from_secs(3600))
    }

    /// Remembers that `run` belongs to `key`.
    fn watch(&self, run: u64, key: &AttemptKey) {
        let mut watched = lock(&self.inner.watched);
        if watched.len() >= MEMORY_LIMIT && !watched.contains_key(&run) {
            watched.clear();
        }
        watched.entry(run).or_insert_with(|| Watch {
            key: key.clone(),
            polls: 0,
            etag: None,
        });
    }

    fn forget(&self, run: u64, key: &AttemptKey) {
        lock(&self.inner.watched).remove(&run);
        self.inner.client.budget().done(key);
    }
}

#[async_trait]
impl Adapter for GithubActionsAdapter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        self.dispatch(request).await
    }

    /// Finds the run of `key`: the one this process dispatched, else (with
    /// `correlation_input`) the `workflow_dispatch` run on `ref` whose `display_title`
    /// holds the key, created since the run began. Never dispatches.
    async fn find(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        self.find_run(key, input).await
    }

    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        self.poll_run(request).await
    }

    async fn outputs(
        &self,
        _key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        self.read_outputs(external).await
    }

    async fn cancel(&self, key: &AttemptKey, external: &ExternalRef) -> Result<(), AdapterError> {
        self.cancel_run(key, external).await
    }

    async fn logs(&self, _key: &AttemptKey, external: &ExternalRef) -> Result<Logs, AdapterError> {
        self.read_logs(external).await
    }

    fn source_delivery(&self, delivery: &SourceDelivery<'_>) -> Vec<AttemptKey> {
        self.delivery_attempts(delivery)
    }
}

#[cfg(test)]
mod tests {
    /// The arithmetic of `docs/adapters/github-actions.md` ("What one run costs"): the
    /// requests of a run lasting 120 s with the default hints, webhooks off.
    #[test]
    fn a_two_minute_run_costs_at_most_fifteen_requests() {
        let polls_until = |run: f64, jitter: f64| {
            // The engine's first poll, right after the dispatch, sends nothing; then
            // one request per hint until the run is seen completed.
            let (mut t, mut polls, mut n) = (0.0, 0u32, 0i32);
            while t < run {
                t += (10.0 * 1.5f64.powi(n)).min(30.0) * jitter;
                n += 1;
                polls += 1;
            }
            polls
        };
        let (nominal, worst) = (polls_until(120.0, 1.0), polls_until(120.0, 0.8));
        assert_eq!((nominal, worst), (6, 7));
        // The dispatch; the run read, jobs and artifacts lists, the outputs zip's 302 and
        // download.
        let fixed = 1 + 5;
        assert_eq!((fixed + nominal, fixed + worst), (12, 13));
        assert!(fixed + worst <= 15);
        // `gh run watch` polls every 3 s.
        assert_eq!(120 / 3, 40);
    }
}
