//! The `buildbot` adapter: force builds through a Buildbot master's REST API and follow
//! them to the end.
//!
//! ```toml
//! [adapters.bb]
//! kind = "buildbot"
//! url = "http://127.0.0.1:8010"          # Buildbot's base URL (its buildbotURL)
//! user = "baton"                         # optional: log in through /auth/login
//! password = { env = "BUILDBOT_PASSWORD" }
//! warnings = "success"                   # or "failure": how a WARNINGS build counts
//! poll_initial = "1s"                    # the first wait between polls; grows ×1.5 …
//! poll_max = "30s"                       # … up to this
//! request_timeout = "30s"                # each HTTP request
//! webhook_token = { env = "BB_HOOK" }    # optional: status pushes must carry it
//! ```
//!
//! ```yaml
//!   build:
//!     uses: bb
//!     with:
//!       builder: runtests
//!       scheduler: force                 # a ForceScheduler's name; `force` by default
//!       properties: { branch: main, greeting: '${{ .event.who }}' }
//! ```
//!
//! # The life of an attempt
//!
//! - `start` looks the builder up (`GET /builders?name=`), reads the force scheduler
//!   (`GET /forceschedulers/<name>`) and checks that it builds that builder and declares
//!   every property given (a force scheduler silently drops parameters it does not
//!   declare). It then forces one build of that one builder with the JSON-RPC `force` call.
//!   The attempt key goes into `reason` as `[baton <run>/<stage>/<attempt>]`, and into the
//!   property `baton_attempt` when the scheduler declares it. The reference's id is the
//!   build request's id; its data holds the buildset, the builder and, once one starts,
//!   the build.
//! - `find` looks for a buildset whose reason holds the key's marker
//!   (`GET /buildsets?reason__contains=`), so that work forced just before a crash is
//!   adopted, not forced again.
//! - `poll` follows the build request to its build and maps `results`: 0 SUCCESS and
//!   1 WARNINGS (`warnings = "success"`) succeed, WARNINGS with `warnings = "failure"` and
//!   2 FAILURE fail, 3 SKIPPED skips (a request merged into another: set
//!   `collapseRequests = False`), 4 EXCEPTION is errored, 5 RETRY waits for the next build
//!   of the request, 6 CANCELLED is cancelled; any other code is unknown and never
//!   terminal. Its wait hint starts at `poll_initial` and grows by half each poll up to
//!   `poll_max` (with jitter), the count kept in the reference.
//! - `cancel` stops the running build (`stop`), or cancels the queued request (`cancel`,
//!   then stops a build that started meanwhile). Finished work is left alone.
//! - `outputs`: `build_id`, `number`, `url`, `results` (SUCCESS …), `results_code`,
//!   `state_string`, `builder`, `buildrequest_id` and `properties` (every build property's
//!   value, including those the build's steps set).
//! - `logs`: links to every step log (`/api/v2/logs/<id>/raw_inline`) and to the steps'
//!   own URLs, and the tail of each stdio log as text.
//! - `completion_webhook` reads Buildbot's HTTP status push (`reporters.HttpStatusPush`,
//!   sent to `POST /hooks/adapters/<instance>` of `baton serve`) and returns the attempt of
//!   each build it names, which the engine then polls at once.
//!
//! # Modules
//!
//! The calls are split by task, each an `impl BuildbotAdapter` block that the `Adapter`
//! impl here delegates to: `start` (look up, check and force; find by reason), `poll`
//! (follow the request to its build and the build to its results; its reads serve the
//! others too), `cancel`, `outputs` (outputs and logs) and `webhook` (status pushes). The
//! stored reference's data is `model::RefData`; `client` makes the requests (login,
//! retries) and `config` checks instance and `with:` blocks.

mod cancel;
mod client;
mod config;
mod model;
mod outputs;
mod poll;
mod start;
mod webhook;

pub use config::{
    DEFAULT_POLL_INITIAL, DEFAULT_POLL_MAX, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SCHEDULER,
    InstanceKeys, RESERVED_PROPERTIES, Settings, StageSpec, Warnings,
};
pub use model::{reason_marker, results_name};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_core::adapter::WebhookRequest;
use baton_core::typed::InstanceBuild;
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, FieldError, Logs, PollOutcome,
    PollRequest, Secret, SecretResolver, StartRequest,
};
use serde_json::{Map, Value};

use crate::client::Client;
use crate::config::{Mode, parse_instance, parse_stage};
use crate::model::RefData;

/// The kind name, as in `kind = "buildbot"`.
pub const KIND: &str = "buildbot";

/// The force scheduler parameter baton fills with the attempt key, when declared.
pub const ATTEMPT_PROPERTY: &str = "baton_attempt";

/// How long `cancel` waits for a cancelled request's build to show up (to stop it) or for
/// Buildbot to confirm the cancel.
const CANCEL_CONFIRM: Duration = Duration::from_secs(10);

/// How many step logs `logs` lists, and how many lines of each stdio log it reads.
const MAX_LOGS: usize = 50;
const TAIL_LINES: u64 = 200;
const MAX_LOG_TEXT: usize = 64 * 1024;

/// The `buildbot` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildbotKind;

impl AdapterKind for BuildbotKind {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn summary(&self) -> &'static str {
        "forces a build through a Buildbot master's REST API and follows it to the end"
    }

    fn docs(&self) -> &'static str {
        "docs/adapters/buildbot.md"
    }

    fn validate_instance(&self, config: &Value) -> Vec<FieldError> {
        parse_instance(config).err().unwrap_or_default()
    }

    fn validate_stage(&self, with: &Value) -> Vec<FieldError> {
        parse_stage(with, Mode::Templates).err().unwrap_or_default()
    }

    fn build(
        &self,
        name: &str,
        config: &Value,
        secrets: &dyn SecretResolver,
    ) -> Result<Arc<dyn Adapter>, AdapterError> {
        let build = InstanceBuild::new(name, secrets);
        let settings = build.config(parse_instance(config))?;
        let password = match &settings.login {
            Some((user, reference)) => {
                Some((user.clone(), build.secret_at("password", reference)?))
            }
            None => None,
        };
        let token = match &settings.webhook_token {
            Some(reference) => Some(build.secret_at("webhook_token", reference)?),
            None => None,
        };
        Ok(Arc::new(BuildbotAdapter::new(
            name, settings, password, token,
        )?))
    }
}

/// Drives builds on one Buildbot master.
#[derive(Debug)]
pub struct BuildbotAdapter {
    client: Client,
    settings: Settings,
    webhook_token: Option<Secret>,
}

impl BuildbotAdapter {
    /// An adapter for the master in `settings`; `login` is the user and its resolved
    /// password, `webhook_token` the resolved token status pushes must carry.
    pub fn new(
        instance: &str,
        settings: Settings,
        login: Option<(String, Secret)>,
        webhook_token: Option<Secret>,
    ) -> Result<Self, AdapterError> {
        let client = Client::new(
            settings.url.clone(),
            instance,
            login,
            settings.request_timeout,
        )?;
        Ok(Self {
            client,
            settings,
            webhook_token,
        })
    }

    /// The wait before the next poll after `polls` polls: `poll_initial` growing by half
    /// each poll, capped at `poll_max`, less up to a fifth at random so that stages started
    /// together do not poll together.
    pub fn poll_wait(&self, polls: u32) -> Duration {
        let grown = self
            .settings
            .poll_initial
            .mul_f64(1.5f64.powi(polls.min(64) as i32));
        grown
            .min(self.settings.poll_max)
            .mul_f64(rand::random_range(0.8..=1.0))
            .max(Duration::from_millis(1))
    }

    fn build_url(&self, builderid: u64, number: u64) -> String {
        format!(
            "{}#/builders/{builderid}/builds/{number}",
            self.client.base()
        )
    }

    fn request_url(&self, brid: u64) -> String {
        format!("{}#/buildrequests/{brid}", self.client.base())
    }

    fn reference(&self, data: &RefData) -> ExternalRef {
        let url = match data.number {
            Some(number) => self.build_url(data.builderid, number),
            None => self.request_url(data.buildrequest),
        };
        ExternalRef {
            id: data.buildrequest.to_string(),
            url: Some(url),
            data: data.to_value(),
        }
    }
}

#[async_trait]
impl Adapter for BuildbotAdapter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        self.force(request).await
    }

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
    use crate::start::Scheduler;
    use crate::webhook::same;
    use serde_json::json;

    fn adapter(initial: &str, max: &str) -> BuildbotAdapter {
        let settings = parse_instance(
            &json!({"url": "http://127.0.0.1:1", "poll_initial": initial, "poll_max": max}),
        )
        .unwrap();
        BuildbotAdapter::new("bb", settings, None, None).unwrap()
    }

    #[test]
    fn polling_starts_fast_and_backs_off_to_the_cap() {
        let a = adapter("1s", "30s");
        let first = a.poll_wait(0);
        assert!(first <= Duration::from_secs(1) && first >= Duration::from_millis(800));
        let waits: Vec<Duration> = (0..20).map(|n| a.poll_wait(n)).collect();
        assert!(waits[5] > waits[0] * 4, "{waits:?}");
        for w in &waits[12..] {
            assert!(
                *w <= Duration::from_secs(30) && *w >= Duration::from_secs(24),
                "{w:?}"
            );
        }
        assert!(a.poll_wait(u32::MAX) <= Duration::from_secs(30));
    }

    #[test]
    fn scheduler_parameters_are_the_leaves() {
        let s: Scheduler = serde_json::from_value(json!({
            "builder_names": ["a"],
            "all_fields": [
                {"type": "nested", "fullName": null, "fields": [
                    {"type": "username", "fullName": "username"},
                    {"type": "text", "fullName": "reason"}]},
                {"type": "nested", "fullName": "cb", "fields": [{"type": "text", "fullName": "cb_branch"}]},
                {"type": "bool", "fullName": "loud"},
                {"type": "text"}
            ]
        }))
        .unwrap();
        let names: Vec<String> = s.parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["username", "reason", "cb_branch", "loud"]);
    }

    #[test]
    fn force_params_check_the_scheduler() {
        let a = adapter("1s", "30s");
        let s: Scheduler = serde_json::from_value(json!({
            "builder_names": ["b"],
            "all_fields": [
                {"type": "text", "fullName": "reason"},
                {"type": "text", "fullName": "greeting"},
                {"type": "bool", "fullName": "loud"},
                {"type": "text", "fullName": "baton_attempt"}
            ]
        }))
        .unwrap();
        let key = AttemptKey::new("r", "s", 2);
        let spec = |props: Value| {
            parse_stage(
                &json!({"builder": "b", "properties": props}),
                Mode::Rendered,
            )
            .unwrap()
        };
        let params = a
            .force_params(
                &spec(json!({"greeting": 5, "loud": "true"})),
                &s,
                &key,
                "wf",
            )
            .unwrap();
        assert_eq!(
            params,
            json!({"greeting": "5", "loud": true, "reason": "[baton r/s/2] wf",
                   "baton_attempt": "r/s/2", "builderNames": ["b"]})
        );
        let e = a
            .force_params(&spec(json!({"colour": "red", "loud": 3})), &s, &key, "wf")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`colour` is not one of its parameters")
                && e.contains("`loud` is a boolean"),
            "{e}"
        );
        assert!(
            e.contains("greeting, loud") && !e.contains("baton_attempt"),
            "{e}"
        );
        let other = parse_stage(&json!({"builder": "c"}), Mode::Rendered).unwrap();
        let e = a
            .force_params(&other, &s, &key, "wf")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot build `c`"), "{e}");
    }

    #[test]
    fn constant_time_compare() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
