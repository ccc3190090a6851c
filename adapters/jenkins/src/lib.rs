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

#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod model;
pub mod properties;
pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use baton_core::adapter::LogLink;
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, ExternalState, FieldError,
    HumanDuration, Logs, PollOutcome, PollRequest, Secret, SecretResolver, StartRequest,
    WebhookRequest,
};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use crate::client::RetryPolicy;
use crate::client::{Call, Client, MAX_JSON_BYTES, Repeat};
pub use crate::config::{ATTEMPT_PARAMETER, Credentials, InstanceConfig, StageSpec, Unstable};
use crate::config::{Mode, encode_segment};
use crate::model::{Build, Job, QueueItem};

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
        let config = config::parse_instance(config).map_err(|errors| {
            AdapterError::Invalid(format!("adapter `{name}`: {}", FieldError::join(&errors)))
        })?;
        let credentials = config.credentials.clone().map(|reference| {
            secrets
                .resolve(&reference)
                .map_err(|e| AdapterError::Invalid(format!("adapter `{name}`: {e}")))
        })?;
        Ok(Arc::new(JenkinsAdapter::new(
            name,
            &config,
            credentials,
            self.retry,
        )?))
    }
}

/// Where an attempt is, as kept in its reference's `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    /// A queue item is known; no build yet.
    Queued,
    /// The build is known.
    Building,
    /// The trigger gave no queue item (an old controller's 302): search by correlation.
    Searching,
}

/// The reference's `data`: everything `poll`, `outputs`, `cancel` and `logs` need, since
/// they get no stage input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tracked {
    phase: Phase,
    /// The job's path below the root (`job/a/job/b/`), as Jenkins spells it.
    job: String,
    /// The job's name for people (`a/b`).
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queue: Option<u64>,
    /// The build's path below the root (`job/a/job/b/14/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    build: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    number: Option<u64>,
    /// When baton sent the trigger (ms since the epoch, baton's clock).
    triggered_ms: u64,
    /// The job defines `BATON_ATTEMPT`, and it was sent.
    attempt_param: bool,
    /// The parameters sent (for the search without `BATON_ATTEMPT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    params: Vec<(String, String)>,
    unstable: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    properties_artifact: Option<String>,
    /// Polls in this phase, for the back-off of hints.
    #[serde(default)]
    polls: u32,
    /// When the queue item was first found missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    missing_since_ms: Option<u64>,
}

impl Tracked {
    fn read(external: &ExternalRef) -> Result<Self, AdapterError> {
        let tracked: Self = serde_json::from_value(external.data.clone()).map_err(|e| {
            AdapterError::Invalid(format!(
                "the stored reference `{}` is not one the jenkins adapter made: {e}",
                external.id
            ))
        })?;
        let complete = match tracked.phase {
            Phase::Queued => tracked.queue.is_some(),
            Phase::Building => tracked.build.is_some(),
            Phase::Searching => true,
        };
        if !complete || !tracked.job.starts_with("job/") {
            return Err(AdapterError::Invalid(format!(
                "the stored reference `{}` is incomplete for its phase",
                external.id
            )));
        }
        Ok(tracked)
    }

    fn unstable(&self) -> Unstable {
        Unstable::parse(&self.unstable).unwrap_or_default()
    }

    fn id(&self) -> String {
        match (self.phase, self.queue, self.number) {
            (Phase::Building, _, Some(n)) => format!("{}#{n}", self.name),
            (Phase::Building, _, None) => self.build.clone().unwrap_or_default(),
            (Phase::Queued, Some(q), _) => format!("queue:{q}"),
            _ => format!("searching:{}@{}", self.name, self.triggered_ms),
        }
    }

    fn build_label(&self) -> String {
        match self.number {
            Some(n) => format!("build #{n} of `{}`", self.name),
            None => format!("the build of `{}`", self.name),
        }
    }

    /// Moves to the build phase.
    fn started(&mut self, number: Option<u64>, path: String) {
        self.phase = Phase::Building;
        self.number = number;
        self.build = Some(path);
        self.polls = 0;
        self.missing_since_ms = None;
    }
}

/// A piece of a build's log, from [`JenkinsAdapter::read_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The text from the offset asked for.
    pub text: String,
    /// The offset to ask for next.
    pub next: u64,
    /// True while the log may still grow.
    pub more: bool,
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

/// The time in a UUIDv7 run id (as the engine makes them): when the run was created.
fn run_created_ms(key: &AttemptKey) -> Option<u64> {
    let hex: String = key.run_id().chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) || &hex[12..13] != "7" {
        return None;
    }
    u64::from_str_radix(&hex[..12], 16).ok()
}

/// Percent-decodes for comparing paths that Jenkins and baton may encode differently.
fn decode(path: &str) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn same_path(a: &str, b: &str) -> bool {
    decode(a.trim_end_matches('/')) == decode(b.trim_end_matches('/'))
}

/// What a search for an attempt's work found.
enum Found {
    Queued(u64),
    Build { number: Option<u64>, url: String },
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
        let initial = self.inner.poll_initial.as_secs_f64();
        let max = self.inner.poll_max.as_secs_f64();
        let grown = (initial * 1.5f64.powi(polls.min(64) as i32)).min(max);
        let jittered = grown * rand::random_range(0.8..=1.2);
        Duration::from_secs_f64(jittered.clamp(0.001, max))
    }

    fn reference(&self, tracked: &Tracked, url: Option<String>) -> ExternalRef {
        let url = url.or_else(|| {
            let rel = match tracked.phase {
                Phase::Building => tracked.build.clone(),
                Phase::Queued => tracked.queue.map(|q| format!("queue/item/{q}/")),
                Phase::Searching => Some(tracked.job.clone()),
            }?;
            self.inner.client.url(&rel).ok().map(|u| u.to_string())
        });
        ExternalRef {
            id: tracked.id(),
            url,
            data: serde_json::to_value(tracked).unwrap_or(Value::Null),
        }
    }

    fn remember(&self, key: &AttemptKey, tracked: &Tracked) {
        let mut journal = lock(&self.inner.journal);
        if journal.len() >= MEMORY_LIMIT
            && !journal.contains_key(key)
            && let Some(oldest) = journal
                .iter()
                .min_by_key(|(_, t)| t.triggered_ms)
                .map(|(k, _)| k.clone())
        {
            journal.remove(&oldest);
        }
        journal.insert(key.clone(), tracked.clone());
    }

    fn watch(&self, key: &AttemptKey, tracked: &Tracked) {
        let mut watched = lock(&self.inner.watched);
        if watched.len() >= MEMORY_LIMIT {
            watched.clear();
        }
        if let Some(q) = tracked.queue {
            watched.insert(format!("queue:{q}"), key.clone());
        }
        if let Some(build) = &tracked.build {
            watched.insert(watch_path(build), key.clone());
        }
    }

    fn forget(&self, key: &AttemptKey) {
        lock(&self.inner.journal).remove(key);
        lock(&self.inner.watched).retain(|_, k| k != key);
    }

    async fn job(&self, spec: &StageSpec) -> Result<Job, AdapterError> {
        let client = &self.inner.client;
        let name = spec.job.display();
        let path = spec.job.url_path();
        let url = client.url(&format!("{path}api/json?tree={}", model::JOB_TREE))?;
        let not_found = format!(
            "Jenkins `{}` has no job `{name}` (404 at {}): check `job` (folders are written `a/b/c`; a multibranch branch `feature/foo` is `repo/feature%2Ffoo` or the list `[repo, feature/foo]`){}",
            client.instance(),
            client.url(&path)?,
            client
                .user()
                .map(|u| format!(", and that user `{u}` may see it"))
                .unwrap_or_default()
        );
        let what = format!("read job `{name}`");
        let job: Job = client
            .get_json(
                url,
                Call {
                    what: &what,
                    permission: "Job/Read",
                    not_found: &not_found,
                },
            )
            .await?;
        if job.is_folder() {
            return Err(AdapterError::Invalid(format!(
                "`{name}` is a folder or a multibranch project, not a job: name a job inside it (`{name}/<job>`; for a branch, `{name}/<branch>`)"
            )));
        }
        if job.buildable == Some(false) {
            return Err(AdapterError::Invalid(format!(
                "job `{name}` is disabled in Jenkins: enable it there"
            )));
        }
        Ok(job)
    }

    fn tracked_for(&self, spec: &StageSpec, job: &Job, triggered_ms: u64) -> Tracked {
        Tracked {
            phase: Phase::Searching,
            job: job
                .url
                .as_deref()
                .and_then(model::below_root)
                .unwrap_or_else(|| spec.job.url_path()),
            name: spec.job.display(),
            queue: None,
            build: None,
            number: None,
            triggered_ms,
            attempt_param: job.parameter_names().iter().any(|n| n == ATTEMPT_PARAMETER),
            params: spec.parameters.clone(),
            unstable: spec
                .unstable
                .unwrap_or(self.inner.unstable)
                .as_str()
                .to_owned(),
            properties_artifact: spec.properties_artifact.clone(),
            polls: 0,
            missing_since_ms: None,
        }
    }

    /// Looks for the work of `key` in the queue, then in the recent builds (in that order,
    /// since an item only ever moves from the first to the second).
    ///
    /// With `BATON_ATTEMPT` the match is exact. Without it, candidates are those with the
    /// same parameters queued or started at or after `since_ms` (less [`CLOCK_SLACK`]),
    /// not claimed by another attempt of this process; one is adopted, several are an
    /// error, since picking one could adopt another run's build.
    async fn search(
        &self,
        key: &AttemptKey,
        tracked: &Tracked,
        since_ms: Option<u64>,
    ) -> Result<Option<Found>, AdapterError> {
        let client = &self.inner.client;
        let claimed: HashSet<u64> = lock(&self.inner.journal)
            .iter()
            .filter(|(k, _)| *k != key)
            .filter_map(|(_, t)| t.queue)
            .collect();
        let since = since_ms.map(|s| s.saturating_sub(CLOCK_SLACK.as_millis() as u64));
        if !tracked.attempt_param && since.is_none() {
            return Ok(None);
        }
        let fallback_ok = |id: Option<u64>, at: Option<u64>, actions: &[model::Action]| {
            model::has_parameters(actions, &tracked.params)
                && at.zip(since).is_some_and(|(at, since)| at >= since)
                && !id.is_some_and(|id| claimed.contains(&id))
        };
        let matches = |id: Option<u64>, at: Option<u64>, actions: &[model::Action]| {
            if tracked.attempt_param {
                model::attempt_of(actions).as_deref() == Some(key.as_str())
            } else {
                fallback_ok(id, at, actions)
            }
        };

        #[derive(Deserialize)]
        struct Queue {
            #[serde(default)]
            items: Vec<QueueItem>,
        }
        let what = format!("read the queue to find the build of {key}");
        let queue: Queue = client
            .get_json(
                client.url(&format!("queue/api/json?tree={}", model::QUEUE_TREE))?,
                Call {
                    what: &what,
                    permission: "Overall/Read",
                    not_found: "",
                },
            )
            .await?;
        let mut found: Vec<Found> = Vec::new();
        for item in &queue.items {
            let of_job = item
                .task
                .as_ref()
                .and_then(|t| t.url.as_deref())
                .and_then(model::below_root)
                .is_some_and(|p| same_path(&p, &tracked.job));
            if of_job
                && item.cancelled != Some(true)
                && let Some(id) = item.id
                && matches(Some(id), item.in_queue_since, &item.actions)
            {
                if tracked.attempt_param {
                    return Ok(Some(Found::Queued(id)));
                }
                found.push(Found::Queued(id));
            }
        }
        for build in self.recent_builds(tracked).await? {
            let (Some(url), true) = (
                build.url.clone(),
                matches(build.queue_id, build.timestamp, &build.actions),
            ) else {
                continue;
            };
            if tracked.attempt_param {
                return Ok(Some(Found::Build {
                    number: build.number,
                    url,
                }));
            }
            // The same work seen in the queue and then as a build counts once.
            found.retain(|f| !matches!(f, Found::Queued(q) if Some(*q) == build.queue_id));
            found.push(Found::Build {
                number: build.number,
                url,
            });
        }
        match found.len() {
            0 | 1 => Ok(found.pop()),
            n => Err(AdapterError::Invalid(format!(
                "{n} queue items or builds of `{}` have this stage's parameters and came after its run began, so baton cannot tell which one {key} started: add a string parameter `{ATTEMPT_PARAMETER}` to the job (baton fills it with the attempt key) so that its builds can be told apart",
                tracked.name
            ))),
        }
    }

    async fn recent_builds(&self, tracked: &Tracked) -> Result<Vec<Build>, AdapterError> {
        let client = &self.inner.client;
        let what = format!("list the recent builds of `{}`", tracked.name);
        let not_found = format!(
            "job `{}` no longer exists in Jenkins `{}` (404)",
            tracked.name,
            client.instance()
        );
        let job: Job = client
            .get_json(
                client.url(&format!(
                    "{}api/json?tree={}",
                    tracked.job,
                    model::builds_tree()
                ))?,
                Call {
                    what: &what,
                    permission: "Job/Read",
                    not_found: &not_found,
                },
            )
            .await?;
        Ok(job.builds)
    }

    /// Applies a search result to `tracked`; returns the Jenkins URL of a found build.
    fn adopt(&self, tracked: &mut Tracked, found: Found) -> Option<String> {
        match found {
            Found::Queued(q) => {
                tracked.phase = Phase::Queued;
                tracked.queue = Some(q);
                tracked.polls = 0;
                None
            }
            Found::Build { number, url } => {
                let path = model::below_root(&url)
                    .unwrap_or_else(|| format!("{}{}/", tracked.job, number.unwrap_or_default()));
                tracked.started(number, path);
                Some(url)
            }
        }
    }

    /// The outcome of a poll: the state, the refreshed reference and the next hint.
    fn outcome(
        &self,
        key: &AttemptKey,
        state: ExternalState,
        raw: &str,
        message: String,
        tracked: &Tracked,
        url: Option<String>,
    ) -> PollOutcome {
        let terminal = state.is_terminal();
        if terminal {
            self.forget(key);
        } else {
            self.watch(key, tracked);
        }
        PollOutcome {
            state,
            raw: Some(raw.to_owned()),
            next_poll: (!terminal).then(|| self.hint(tracked.polls.saturating_sub(1))),
            external: Some(self.reference(tracked, url)),
            message: Some(message),
        }
    }

    async fn poll_queued(
        &self,
        key: &AttemptKey,
        mut tracked: Tracked,
        url: Option<String>,
    ) -> Result<PollOutcome, AdapterError> {
        let client = &self.inner.client;
        let q = tracked.queue.unwrap_or_default();
        let what = format!("read queue item {q} of `{}`", tracked.name);
        let call = Call {
            what: &what,
            permission: "Job/Read",
            not_found: "",
        };
        let answer = client
            .get(
                client.url(&format!(
                    "queue/item/{q}/api/json?tree={}",
                    model::QUEUE_ITEM_TREE
                ))?,
                call,
                MAX_JSON_BYTES,
            )
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return self.queue_item_gone(key, tracked).await;
        }
        client.check(&answer, call)?;
        let item: QueueItem = serde_json::from_slice(&answer.body).map_err(|e| {
            AdapterError::Protocol(format!(
                "Jenkins' answer to {what} is not the JSON baton expects: {e}"
            ))
        })?;
        tracked.missing_since_ms = None;
        if item.cancelled == Some(true) {
            return Ok(self.outcome(
                key,
                ExternalState::Cancelled,
                "cancelled",
                format!(
                    "queue item {q} of `{}` was cancelled before it started",
                    tracked.name
                ),
                &tracked,
                url,
            ));
        }
        if let Some(exe) = &item.executable {
            let build_url = exe.url.clone().unwrap_or_default();
            let path = model::below_root(&build_url)
                .unwrap_or_else(|| format!("{}{}/", tracked.job, exe.number.unwrap_or_default()));
            tracked.started(exe.number, path);
            let message = format!("{} started", tracked.build_label());
            let url = (!build_url.is_empty()).then_some(build_url);
            return Ok(self.outcome(
                key,
                ExternalState::Running,
                "started",
                message,
                &tracked,
                url,
            ));
        }
        let why = item.why.clone().unwrap_or_else(|| "waiting".to_owned());
        let message = if item.stuck == Some(true) {
            format!("queue item {q} is stuck (no executor can take it): {why}")
        } else {
            format!("queue item {q}: {why}")
        };
        Ok(self.outcome(
            key,
            ExternalState::Queued,
            item.short_class(),
            message,
            &tracked,
            url,
        ))
    }

    /// The queue item answers 404: find the build by its queue id (or `BATON_ATTEMPT`);
    /// wait a bounded time when none has appeared yet.
    async fn queue_item_gone(
        &self,
        key: &AttemptKey,
        mut tracked: Tracked,
    ) -> Result<PollOutcome, AdapterError> {
        let q = tracked.queue;
        let builds = self.recent_builds(&tracked).await?;
        let hit = builds.into_iter().find(|b| {
            (q.is_some() && b.queue_id == q)
                || (tracked.attempt_param
                    && model::attempt_of(&b.actions).as_deref() == Some(key.as_str()))
        });
        if let Some(build) = hit {
            let url = build.url.clone();
            self.adopt(
                &mut tracked,
                Found::Build {
                    number: build.number,
                    url: url.clone().unwrap_or_default(),
                },
            );
            let message = format!(
                "queue item {} is gone (Jenkins forgets left items after about 5 minutes); {} came from it",
                q.unwrap_or_default(),
                tracked.build_label()
            );
            return Ok(self.outcome(
                key,
                ExternalState::Running,
                "started",
                message,
                &tracked,
                url,
            ));
        }
        self.still_missing(
            key,
            tracked,
            format!(
                "queue item {} of the job is gone and none of its last {} builds came from it",
                q.unwrap_or_default(),
                model::RECENT_BUILDS
            ),
        )
    }

    fn still_missing(
        &self,
        key: &AttemptKey,
        mut tracked: Tracked,
        what: String,
    ) -> Result<PollOutcome, AdapterError> {
        let now = now_ms();
        let since = *tracked.missing_since_ms.get_or_insert(now);
        if now.saturating_sub(since) > LOST_GRACE.as_millis() as u64 {
            let message = format!(
                "{what} for {}: it was probably cancelled long ago (Jenkins keeps a left queue item about 5 minutes) or its build was deleted",
                HumanDuration(LOST_GRACE)
            );
            return Ok(self.outcome(
                key,
                ExternalState::Errored,
                "lost",
                format!("`{}`: {message}", tracked.name),
                &tracked,
                None,
            ));
        }
        Ok(self.outcome(
            key,
            ExternalState::Queued,
            "vanished",
            format!("`{}`: {what} yet; looking again", tracked.name),
            &tracked,
            None,
        ))
    }

    async fn poll_build(
        &self,
        key: &AttemptKey,
        tracked: Tracked,
        url: Option<String>,
    ) -> Result<PollOutcome, AdapterError> {
        let build = self.read_build(&tracked, model::BUILD_STATE_TREE).await?;
        let label = tracked.build_label();
        if build.running() {
            return Ok(self.outcome(
                key,
                ExternalState::Running,
                "building",
                format!("{label} is running"),
                &tracked,
                url,
            ));
        }
        let raw = build.result.clone();
        let state = model::map_result(raw.as_deref(), tracked.unstable());
        let message = match (&state, raw.as_deref()) {
            (ExternalState::Unknown(_), None) => {
                format!("{label} has stopped but has no result yet; polling again")
            }
            (ExternalState::Unknown(_), Some(word)) => format!(
                "{label} ended with result `{word}`, which baton does not know; polling again until the stage's timeout"
            ),
            (ExternalState::Failed, Some("UNSTABLE")) => format!(
                "{label} is UNSTABLE, which fails the stage (`unstable = \"success\"` would let it pass with warnings)"
            ),
            (ExternalState::Succeeded { warnings: true }, _) => {
                format!("{label} is UNSTABLE, counted as success with warnings")
            }
            (_, Some(word)) => format!("{label}: {word}"),
            (_, None) => label.clone(),
        };
        Ok(self.outcome(
            key,
            state,
            raw.as_deref().unwrap_or("null"),
            message,
            &tracked,
            url,
        ))
    }

    async fn read_build(&self, tracked: &Tracked, tree: &str) -> Result<Build, AdapterError> {
        let client = &self.inner.client;
        let path = tracked.build.clone().unwrap_or_default();
        let label = tracked.build_label();
        let what = format!("read {label}");
        let not_found = format!(
            "{label} no longer exists in Jenkins `{}`: it was deleted (by a person or the job's build discarder) before baton read it",
            client.instance()
        );
        client
            .get_json(
                client.url(&format!("{path}api/json?tree={tree}"))?,
                Call {
                    what: &what,
                    permission: "Job/Read",
                    not_found: &not_found,
                },
            )
            .await
    }

    async fn poll_search(
        &self,
        key: &AttemptKey,
        mut tracked: Tracked,
    ) -> Result<PollOutcome, AdapterError> {
        match self
            .search(key, &tracked, Some(tracked.triggered_ms))
            .await?
        {
            Some(found) => {
                let url = self.adopt(&mut tracked, found);
                let (state, raw) = match tracked.phase {
                    Phase::Building => (ExternalState::Running, "started"),
                    _ => (ExternalState::Queued, "queued"),
                };
                Ok(self.outcome(
                    key,
                    state,
                    raw,
                    format!("found the work of {key} in Jenkins"),
                    &tracked,
                    url,
                ))
            }
            None => self.still_missing(
                key,
                tracked,
                "the trigger gave no queue item and no matching queue item or build has appeared"
                    .to_owned(),
            ),
        }
    }

    /// Reads a build's log from byte `start` through `progressiveText` (GET, as a POST
    /// would need a crumb): the text, the next offset (`X-Text-Size`) and whether more may
    /// come (`X-More-Data`). At most [`LOG_CHUNK_BYTES`] per call.
    pub async fn read_log(
        &self,
        external: &ExternalRef,
        start: u64,
    ) -> Result<LogChunk, AdapterError> {
        let tracked = Tracked::read(external)?;
        let Some(path) = tracked.build.clone() else {
            return Ok(LogChunk {
                text: String::new(),
                next: 0,
                more: true,
            });
        };
        let client = &self.inner.client;
        let what = format!("read the log of {}", tracked.build_label());
        let call = Call {
            what: &what,
            permission: "Job/Read",
            not_found: "",
        };
        let answer = client
            .get(
                client.url(&format!("{path}logText/progressiveText?start={start}"))?,
                call,
                LOG_CHUNK_BYTES,
            )
            .await?;
        client.check(&answer, call)?;
        let size = answer
            .header("X-Text-Size")
            .and_then(|s| s.trim().parse::<u64>().ok());
        let more = answer
            .header("X-More-Data")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let read = start + answer.body.len() as u64;
        let (next, more) = if answer.truncated {
            (read, true)
        } else {
            (size.unwrap_or(read), more)
        };
        Ok(LogChunk {
            text: answer.text(),
            next,
            more,
        })
    }

    async fn stop_build(&self, tracked: &Tracked) -> Result<(), AdapterError> {
        let build = match self.read_build(tracked, model::BUILD_STATE_TREE).await {
            Ok(build) => build,
            Err(AdapterError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if !build.running() {
            return Ok(());
        }
        let path = tracked.build.clone().unwrap_or_default();
        self.post_step(&path, "stop", &tracked.build_label())
            .await?;
        let first = lock(&self.inner.stopping).insert(path.clone());
        if first {
            let this = self.clone();
            let tracked = tracked.clone();
            tokio::spawn(async move {
                this.escalate(&tracked).await;
                lock(&this.inner.stopping).remove(&path);
            });
        }
        Ok(())
    }

    /// After `stop`, while the build still runs: `term` after `stop_grace`, then `kill`
    /// after another. Best effort, in the background, in this process only.
    async fn escalate(&self, tracked: &Tracked) {
        let path = tracked.build.clone().unwrap_or_default();
        let label = tracked.build_label();
        for step in ["term", "kill"] {
            tokio::time::sleep(self.inner.stop_grace).await;
            match self.read_build(tracked, model::BUILD_STATE_TREE).await {
                Ok(build) if build.running() => {}
                Ok(_) | Err(AdapterError::NotFound(_)) => return,
                Err(e) => {
                    tracing::warn!(build = %label, error = %e, "cannot tell whether a stopped Jenkins build still runs");
                    continue;
                }
            }
            tracing::info!(build = %label, step, "the Jenkins build still runs after a stop: escalating");
            if let Err(e) = self.post_step(&path, step, &label).await {
                tracing::warn!(build = %label, step, error = %e, "could not escalate the stop of a Jenkins build");
            }
        }
    }

    async fn post_step(&self, path: &str, step: &str, label: &str) -> Result<(), AdapterError> {
        let client = &self.inner.client;
        let what = format!("{step} {label}");
        let call = Call {
            what: &what,
            permission: "Job/Cancel",
            not_found: "",
        };
        let answer = client
            .post(
                client.url(&format!("{path}{step}"))?,
                None,
                call,
                Repeat::Safe,
            )
            .await?;
        // 2xx, or the 302 to the build page; a 404 or 405 means the build is gone or
        // has no such step (`term` and `kill` exist only for Pipeline builds).
        match answer.status {
            s if s.is_success() || s.is_redirection() => Ok(()),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Ok(()),
            _ => client.check(&answer, call),
        }
    }

    async fn cancel_queued(&self, tracked: &Tracked) -> Result<(), AdapterError> {
        let client = &self.inner.client;
        let q = tracked.queue.unwrap_or_default();
        let what = format!("cancel queue item {q} of `{}`", tracked.name);
        let call = Call {
            what: &what,
            permission: "Job/Cancel",
            not_found: "",
        };
        let answer = client
            .post(
                client.url(&format!("queue/cancelItem?id={q}"))?,
                None,
                call,
                Repeat::Safe,
            )
            .await?;
        // Some versions answer 404 or 302 even when the cancel worked (JENKINS-21311):
        // only refusals count here; the queue item says what really happened.
        if matches!(
            answer.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            client.check(&answer, call)?;
        }
        let read = Call {
            what: "read the cancelled queue item",
            ..call
        };
        let answer = client
            .get(
                client.url(&format!(
                    "queue/item/{q}/api/json?tree={}",
                    model::QUEUE_ITEM_TREE
                ))?,
                read,
                MAX_JSON_BYTES,
            )
            .await?;
        let mut tracked = tracked.clone();
        if answer.status == StatusCode::NOT_FOUND {
            let builds = self.recent_builds(&tracked).await?;
            return match builds.into_iter().find(|b| b.queue_id == Some(q)) {
                Some(build) => {
                    self.adopt(
                        &mut tracked,
                        Found::Build {
                            number: build.number,
                            url: build.url.unwrap_or_default(),
                        },
                    );
                    self.stop_build(&tracked).await
                }
                None => Ok(()),
            };
        }
        client.check(&answer, read)?;
        let item: QueueItem = serde_json::from_slice(&answer.body)
            .map_err(|e| AdapterError::Protocol(format!("unreadable queue item {q}: {e}")))?;
        if item.cancelled == Some(true) {
            return Ok(());
        }
        if let Some(exe) = item.executable {
            // It started between the trigger and the cancel: stop the build.
            let url = exe.url.unwrap_or_default();
            self.adopt(
                &mut tracked,
                Found::Build {
                    number: exe.number,
                    url,
                },
            );
            return self.stop_build(&tracked).await;
        }
        Err(AdapterError::Transient(format!(
            "Jenkins `{}` has not cancelled queue item {q} yet",
            client.instance()
        )))
    }

    async fn fetch_properties(
        &self,
        tracked: &Tracked,
        build: &Build,
        wanted: &str,
    ) -> Result<Option<Map<String, Value>>, AdapterError> {
        let label = tracked.build_label();
        let artifact = build
            .artifacts
            .iter()
            .find(|a| a.relative_path == wanted)
            .or_else(|| {
                let mut by_name = build.artifacts.iter().filter(|a| a.file_name == wanted);
                match (by_name.next(), by_name.next()) {
                    (Some(one), None) => Some(one),
                    _ => None,
                }
            });
        let Some(artifact) = artifact else {
            let passed = matches!(build.result.as_deref(), Some("SUCCESS" | "UNSTABLE"));
            if !passed {
                return Ok(None);
            }
            let names: Vec<&str> = build
                .artifacts
                .iter()
                .map(|a| a.relative_path.as_str())
                .collect();
            return Err(AdapterError::Invalid(format!(
                "{label} archived no `{wanted}` (properties_artifact); its artifacts are: {}. Archive it in the job (archiveArtifacts) or fix `properties_artifact`",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )));
        };
        let client = &self.inner.client;
        let encoded: Vec<String> = artifact
            .relative_path
            .split('/')
            .map(encode_segment)
            .collect();
        let path = tracked.build.clone().unwrap_or_default();
        let what = format!("download `{}` of {label}", artifact.relative_path);
        let call = Call {
            what: &what,
            permission: "Job/Read (and Run/Artifacts)",
            not_found: "",
        };
        let answer = client
            .get(
                client.url(&format!("{path}artifact/{}", encoded.join("/")))?,
                call,
                properties::MAX_PROPERTIES_BYTES + 1,
            )
            .await?;
        client.check(&answer, call)?;
        if answer.truncated || answer.body.len() > properties::MAX_PROPERTIES_BYTES {
            return Err(AdapterError::Invalid(format!(
                "`{}` of {label} is larger than {} bytes: keep the property file to the values the next stages need",
                artifact.relative_path,
                properties::MAX_PROPERTIES_BYTES
            )));
        }
        properties::parse_artifact(&artifact.relative_path, &answer.body)
            .map(Some)
            .map_err(|e| AdapterError::Invalid(format!("{label}: {e}")))
    }
}

fn watch_path(path: &str) -> String {
    String::from_utf8_lossy(&decode(path.trim_end_matches('/'))).into_owned()
}

#[async_trait]
impl Adapter for JenkinsAdapter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        let key = &request.key;
        let spec = config::parse_stage(&request.input, Mode::Rendered).map_err(|errors| {
            AdapterError::Invalid(format!("the stage's `with`: {}", FieldError::join(&errors)))
        })?;
        let job = self.job(&spec).await?;
        let defined = job.parameter_names();
        let undefined: Vec<&str> = spec
            .parameters
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !defined.iter().any(|d| d == n))
            .collect();
        if !undefined.is_empty() {
            let defines = defined
                .iter()
                .filter(|d| *d != ATTEMPT_PARAMETER)
                .cloned()
                .collect::<Vec<_>>();
            return Err(AdapterError::Invalid(format!(
                "job `{}` does not define the parameter(s) {} (it defines {}); Jenkins would drop them silently: fix `parameters`, or add them to the job",
                spec.job.display(),
                undefined.join(", "),
                if defines.is_empty() {
                    "none".to_owned()
                } else {
                    defines.join(", ")
                }
            )));
        }
        let mut tracked = self.tracked_for(&spec, &job, now_ms());
        let client = &self.inner.client;
        let (endpoint, form) = if defined.is_empty() {
            ("build?delay=0sec", None)
        } else {
            let mut form = spec.parameters.clone();
            if tracked.attempt_param {
                form.push((ATTEMPT_PARAMETER.to_owned(), key.to_string()));
            }
            ("buildWithParameters", Some(form))
        };
        // Written before the POST: if its answer is lost, `find` in this process still
        // knows when the trigger went out.
        self.remember(key, &tracked);
        let what = format!("trigger job `{}`", tracked.name);
        let call = Call {
            what: &what,
            permission: "Job/Build",
            not_found: "",
        };
        let answer = client
            .post(
                client.url(&format!("{}{endpoint}", tracked.job))?,
                form.as_deref(),
                call,
                Repeat::Once,
            )
            .await?;
        let status = answer.status;
        if status == StatusCode::BAD_REQUEST {
            return Err(AdapterError::Invalid(format!(
                "Jenkins refused to {what} (400{}): check that the job's parameters match `parameters`",
                answer
                    .header("X-Error")
                    .map(|e| format!(", {e}"))
                    .unwrap_or_default()
            )));
        }
        if !(status.is_success() || status.is_redirection()) {
            client.check(&answer, call)?;
        }
        match answer
            .header("Location")
            .and_then(model::queue_id_of_location)
        {
            Some(q) => {
                tracked.phase = Phase::Queued;
                tracked.queue = Some(q);
            }
            None => {
                // A controller older than the queue `Location` (JENKINS-23235): the build
                // is found by correlation instead.
                tracing::warn!(job = %tracked.name, %status, "the trigger answered without a queue item; searching for the build");
                tracked.missing_since_ms = Some(now_ms());
            }
        }
        self.remember(key, &tracked);
        self.watch(key, &tracked);
        Ok(self.reference(&tracked, None))
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
        let remembered = lock(&self.inner.journal).get(key).cloned();
        if let Some(tracked) = &remembered
            && tracked.phase == Phase::Queued
        {
            return Ok(Some(self.reference(tracked, None)));
        }
        let spec = config::parse_stage(input, Mode::Rendered).map_err(|errors| {
            AdapterError::Invalid(format!("the stage's `with`: {}", FieldError::join(&errors)))
        })?;
        let job = self.job(&spec).await?;
        let since = remembered
            .as_ref()
            .map(|t| t.triggered_ms)
            .or_else(|| run_created_ms(key));
        let mut tracked = self.tracked_for(&spec, &job, since.unwrap_or_else(now_ms));
        let Some(found) = self.search(key, &tracked, since).await? else {
            return Ok(None);
        };
        let url = self.adopt(&mut tracked, found);
        self.remember(key, &tracked);
        self.watch(key, &tracked);
        Ok(Some(self.reference(&tracked, url)))
    }

    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        let mut tracked = Tracked::read(request.external)?;
        tracked.polls = tracked.polls.saturating_add(1);
        let url = request.external.url.clone();
        match tracked.phase {
            Phase::Queued => self.poll_queued(request.key, tracked, url).await,
            Phase::Building => self.poll_build(request.key, tracked, url).await,
            Phase::Searching => self.poll_search(request.key, tracked).await,
        }
    }

    async fn outputs(
        &self,
        _key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        let tracked = Tracked::read(external)?;
        let mut out = Map::new();
        out.insert("job".into(), json!(tracked.name));
        out.insert("queue_id".into(), json!(tracked.queue));
        if tracked.phase != Phase::Building {
            // Cancelled or lost before a build existed.
            return Ok(out);
        }
        let build = self.read_build(&tracked, model::BUILD_OUTPUT_TREE).await?;
        let base = external.url.clone().or_else(|| build.url.clone());
        out.insert("number".into(), json!(build.number.or(tracked.number)));
        out.insert("url".into(), json!(build.url.clone().or(base.clone())));
        out.insert("result".into(), json!(build.result));
        if build.queue_id.is_some() {
            out.insert("queue_id".into(), json!(build.queue_id));
        }
        out.insert("duration_ms".into(), json!(build.duration));
        out.insert(
            "parameters".into(),
            Value::Object(model::parameters(&build.actions)),
        );
        let link = build.url.clone().or(base).unwrap_or_default();
        let artifacts: Vec<Value> = build
            .artifacts
            .iter()
            .map(|a| {
                json!({
                    "name": a.file_name,
                    "path": a.relative_path,
                    "url": format!("{link}artifact/{}", a.relative_path.split('/').map(encode_segment).collect::<Vec<_>>().join("/")),
                })
            })
            .collect();
        out.insert("artifacts".into(), Value::Array(artifacts));
        if let Some(wanted) = &tracked.properties_artifact
            && let Some(props) = self.fetch_properties(&tracked, &build, wanted).await?
        {
            out.insert("properties".into(), Value::Object(props));
        }
        Ok(out)
    }

    async fn cancel(&self, key: &AttemptKey, external: &ExternalRef) -> Result<(), AdapterError> {
        let mut tracked = Tracked::read(external)?;
        match tracked.phase {
            Phase::Queued => self.cancel_queued(&tracked).await,
            Phase::Building => self.stop_build(&tracked).await,
            Phase::Searching => match self
                .search(key, &tracked, Some(tracked.triggered_ms))
                .await?
            {
                Some(found) => {
                    self.adopt(&mut tracked, found);
                    match tracked.phase {
                        Phase::Queued => self.cancel_queued(&tracked).await,
                        _ => self.stop_build(&tracked).await,
                    }
                }
                None => Ok(()),
            },
        }
    }

    async fn logs(&self, _key: &AttemptKey, external: &ExternalRef) -> Result<Logs, AdapterError> {
        let tracked = Tracked::read(external)?;
        let client = &self.inner.client;
        if tracked.phase != Phase::Building {
            return Ok(Logs {
                links: external
                    .url
                    .iter()
                    .map(|u| LogLink {
                        name: "queue item".into(),
                        url: u.clone(),
                    })
                    .collect(),
                text: Some(format!("`{}` has not started a build", tracked.name)),
            });
        }
        let build = self.read_build(&tracked, model::BUILD_STATE_TREE).await?;
        let human = build
            .url
            .clone()
            .or_else(|| external.url.clone())
            .unwrap_or_default();
        let path = tracked.build.clone().unwrap_or_default();
        // A finished build's log streams as plain text; progressiveText on a large finished
        // log can exhaust the controller's heap (JENKINS-75081).
        let endpoint = if build.running() {
            "logText/progressiveText?start=0"
        } else {
            "consoleText"
        };
        let what = format!("read the log of {}", tracked.build_label());
        let (_, tail, total) = client
            .get_tail(
                client.url(&format!("{path}{endpoint}"))?,
                Call {
                    what: &what,
                    permission: "Job/Read",
                    not_found: "",
                },
                LOG_TAIL_BYTES,
            )
            .await?;
        let mut text = String::from_utf8_lossy(&tail).into_owned();
        if total > tail.len() as u64 {
            text = format!(
                "[the first {} bytes are not shown; the whole log is at {human}consoleText]\n{text}",
                total - tail.len() as u64
            );
        }
        Ok(Logs {
            links: vec![LogLink {
                name: "console".into(),
                url: format!("{human}console"),
            }],
            text: Some(text),
        })
    }

    fn completion_webhook(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<AttemptKey>, AdapterError> {
        let notice = webhook::parse(request.body).map_err(|e| {
            AdapterError::Invalid(format!("adapter `{}`: {e}", self.inner.client.instance()))
        })?;
        let mut keys = Vec::new();
        if let Some(key) = notice.attempt.as_deref().and_then(AttemptKey::parse) {
            keys.push(key);
        }
        let watched = lock(&self.inner.watched);
        let mut extra = Vec::new();
        if let Some(q) = notice.queue_id {
            extra.extend(watched.get(&format!("queue:{q}")).cloned());
        }
        if let Some(path) = &notice.build_path {
            extra.extend(watched.get(&watch_path(path)).cloned());
        }
        drop(watched);
        for key in extra {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn run_ids_give_their_creation_time() {
        let key = AttemptKey::new("019a8f3c2b1e7c3d8e4f5a6b7c8d9e0f", "s", 1);
        assert_eq!(run_created_ms(&key), Some(0x019a8f3c2b1e));
        assert_eq!(run_created_ms(&AttemptKey::new("r1", "s", 1)), None);
        assert_eq!(
            run_created_ms(&AttemptKey::new("019a8f3c2b1e4c3d8e4f5a6b7c8d9e0f", "s", 1)),
            None
        );
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
