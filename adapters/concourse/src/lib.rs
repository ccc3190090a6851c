//! The `concourse` adapter: create a build of a Concourse job (after pushing a version into
//! one of its resources, when asked), follow it through its event stream to its end, read
//! the versions it used and made, and abort it.
//!
//! ```toml
//! [adapters.ci]
//! kind = "concourse"
//! url = "https://ci.example.com"
//! team = "main"
//! username = "baton"                          # the password grant, or
//! password = { env = "CONCOURSE_PASSWORD" }
//! # token = { env = "CONCOURSE_TOKEN" }       # a bearer token obtained elsewhere
//! ```
//!
//! ```yaml
//!   deploy:
//!     uses: ci
//!     with:
//!       pipeline: app
//!       job: deploy
//!       instance_vars: { branch: main }
//!       resource: repo                            # optional: check it first …
//!       version: { ref: '${{ .event.after }}' }   # … from this version
//! ```
//!
//! The calls follow Concourse's ATC API (see `docs/adapters/concourse.md`):
//!
//! - `start` checks `resource` (from `version`) and waits for the check, then creates the
//!   build (`POST /api/v1/teams/{team}/pipelines/{pipeline}/jobs/{job}/builds`), comments
//!   it with the attempt key, and starts following its events.
//! - `find` reads the job's newest builds for the one commented with the attempt key, else
//!   the newest unclaimed one baton's user created since the run began.
//! - `poll` takes the status from the event stream when it said the build ended, else reads
//!   the build; a build pending too long reads its preparation to say why.
//! - `cancel` aborts the build; `outputs` reads its resources; `logs` its events.
//!
//! # Modules
//!
//! [`config`] checks instance blocks and `with:` blocks; `auth` gets and renews tokens;
//! `client` is HTTP to the team (retries, errors that say what to fix); `model` reads
//! Concourse's answers and maps its statuses; `events` reads event streams and follows
//! builds; `tracked` is what the stored reference holds; `start` checks, creates and finds
//! builds, `poll` reads and aborts them, `outputs` reads what a finished build leaves.

mod auth;
mod client;
pub mod config;
mod events;
mod model;
mod outputs;
mod poll;
mod start;
mod tracked;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_trait::async_trait;
use baton_core::typed::InstanceBuild;
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, FieldError, Logs, PollOutcome,
    PollRequest, SecretResolver, StartRequest, Waker,
};
use reqwest::Url;
use serde_json::{Map, Value};

use crate::auth::Auth;
use crate::client::{Client, Target, with_vars};
pub use crate::config::{Credentials, InstanceConfig, StageSpec};
use crate::events::Streams;
pub use crate::start::COMMENT_PREFIX;
use crate::tracked::{Remembered, Tracked};
/// How transient answers (429, 5xx, a refused connection) are retried within one call.
pub use baton_core::wire::RetryPolicy;

/// The kind name, as in `kind = "concourse"`.
pub const KIND: &str = "concourse";

/// The `concourse` kind.
#[derive(Debug, Clone, Default)]
pub struct ConcourseKind {
    retry: RetryPolicy,
}

impl ConcourseKind {
    /// The kind, building adapters that retry transient answers as `retry` says.
    pub fn with_retry(retry: RetryPolicy) -> Self {
        Self { retry }
    }
}

impl AdapterKind for ConcourseKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn summary(&self) -> &'static str {
        "creates a build of a Concourse job and follows its event stream to its end"
    }

    fn docs(&self) -> &'static str {
        "docs/adapters/concourse.md"
    }

    fn validate_instance(&self, config: &Value) -> Vec<FieldError> {
        config::parse_instance(config).err().unwrap_or_default()
    }

    fn validate_stage(&self, with: &Value) -> Vec<FieldError> {
        config::parse_stage(with, config::Mode::Templates)
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
        let auth = match &config.credentials {
            Credentials::Password { username, password } => {
                Auth::password(username, build.secret_at("password", password)?)
            }
            Credentials::Token(token) => Auth::bearer(build.secret_at("token", token)?),
        };
        Ok(Arc::new(ConcourseAdapter::new(
            name, &config, auth, self.retry,
        )?))
    }
}

#[derive(Debug)]
struct Inner {
    client: Arc<Client>,
    events: bool,
    poll_initial: Duration,
    poll_max: Duration,
    poll_streaming: Duration,
    explain_pending_after: Duration,
    check_timeout: Duration,
    /// Attempts this process started or adopted.
    remembered: Remembered,
    /// The followed builds.
    streams: Streams,
    /// The user `token` belongs to, once asked.
    identity: tokio::sync::Mutex<Option<String>>,
    /// Whether builds can be commented (false once Concourse answered 404).
    comments: AtomicBool,
}

/// Drives the builds of one Concourse team.
#[derive(Debug, Clone)]
pub struct ConcourseAdapter {
    inner: Arc<Inner>,
}

impl ConcourseAdapter {
    fn new(
        name: &str,
        config: &InstanceConfig,
        auth: Auth,
        retry: RetryPolicy,
    ) -> Result<Self, AdapterError> {
        let client = Client::new(
            Target {
                instance: name,
                root: &config.root,
                team: &config.team,
                request_timeout: config.request_timeout,
                retry,
            },
            auth,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                client: Arc::new(client),
                events: config.events,
                poll_initial: config.poll_initial,
                poll_max: config.poll_max,
                poll_streaming: config.poll_streaming,
                explain_pending_after: config.explain_pending_after,
                check_timeout: config.check_timeout,
                remembered: Remembered::default(),
                streams: Streams::default(),
                identity: tokio::sync::Mutex::default(),
                comments: AtomicBool::new(true),
            }),
        })
    }

    /// The build's page: `<url>/teams/<team>/pipelines/<pipeline>/jobs/<job>/builds/<name>`
    /// with the instance vars as the query.
    fn build_url(&self, tracked: &Tracked) -> Url {
        let client = &self.inner.client;
        with_vars(
            client.web(&[
                "teams",
                &client.team,
                "pipelines",
                &tracked.pipeline,
                "jobs",
                &tracked.job,
                "builds",
                &tracked.name,
            ]),
            &tracked.instance_vars,
        )
    }

    /// How many builds this instance follows through their event streams now.
    pub fn following(&self) -> usize {
        self.inner.streams.following()
    }
}

#[async_trait]
impl Adapter for ConcourseAdapter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        self.create(request).await
    }

    /// Finds the build of `key`: one this process created or adopted, else among the
    /// job's 50 newest builds the one commented `baton attempt <key>`, else the newest that
    /// no attempt claims, created by baton's user, not started before the run began.
    async fn find(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        self.find_build(key, input).await
    }

    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        self.poll_build(request).await
    }

    async fn outputs(
        &self,
        _key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        self.read_outputs(external).await
    }

    async fn cancel(&self, _key: &AttemptKey, external: &ExternalRef) -> Result<(), AdapterError> {
        self.abort_build(external).await
    }

    async fn logs(&self, _key: &AttemptKey, external: &ExternalRef) -> Result<Logs, AdapterError> {
        self.read_logs(external).await
    }

    fn attach(&self, waker: Waker) {
        self.inner.streams.attach(waker);
    }
}

#[cfg(test)]
mod tests {
    use baton_core::wire::poll_hint;
    use std::time::Duration;

    /// The request budget of a 120 s build the doc promises, with the default polls.
    #[test]
    fn a_two_minute_build_costs_at_most_fifteen_requests() {
        let s = Duration::from_secs;
        // Polling only: the engine polls once right after the start, then after each
        // hint, until a poll lands past 120 s; the most polls come with every hint at its
        // shortest (×0.8).
        for (jitter, expected) in [(0.8, 9), (1.0, 8)] {
            let mut at = Duration::ZERO;
            let mut polls = 1u32;
            while at < s(120) {
                at += poll_hint(s(5), s(30), polls - 1, jitter);
                polls += 1;
            }
            assert_eq!(polls, expected, "jitter {jitter}");
            // Token, create, comment, polls, resources; a failed build's last poll also
            // reads its events once for the log's tail.
            let succeeded = 3 + polls + 1;
            let failed = succeeded + 1;
            assert!(succeeded <= 13 && failed <= 15, "{succeeded}, {failed}");
        }
        // Following the events: the stream is one request, polls come every 48 to 60 s,
        // and the status event's wake ends the wait with no request of its own.
        for jitter in [0.8, 1.0] {
            let hint = s(60).mul_f64(jitter);
            let polls = 1 + (s(120).as_secs_f64() / hint.as_secs_f64()).floor() as u32;
            let followed = 3 + 1 + polls + 1;
            assert!(followed <= 9, "{followed}");
        }
    }
}
