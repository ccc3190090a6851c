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

#![warn(missing_docs)]

mod client;
mod config;
mod model;

pub use config::{
    DEFAULT_POLL_INITIAL, DEFAULT_POLL_MAX, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SCHEDULER,
    RESERVED_PROPERTIES, Settings, StageSpec, Warnings,
};
pub use model::{reason_marker, results_name};

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton_core::adapter::{LogLink, WebhookRequest};
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, ExternalState, FieldError, Logs,
    PollOutcome, PollRequest, Secret, SecretResolver, StartRequest,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::client::{Client, backoff, may_retry};
use crate::config::{Mode, parse_instance, parse_stage};
use crate::model::{
    Build, BuildRequest, CANCELLED, RETRY, RefData, SKIPPED, all, first, key_in_reason,
    keys_in_push, map_results, property_values,
};

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
        let settings = parse_instance(config).map_err(|errors| {
            AdapterError::Invalid(format!("adapter `{name}`: {}", FieldError::join(&errors)))
        })?;
        let resolve = |key: &str, reference| {
            secrets
                .resolve(reference)
                .map_err(|e| AdapterError::Invalid(format!("adapter `{name}`: {key}: {e}")))
        };
        let password = match &settings.login {
            Some((user, reference)) => Some((user.clone(), resolve("password", reference)?)),
            None => None,
        };
        let token = match &settings.webhook_token {
            Some(reference) => Some(resolve("webhook_token", reference)?),
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

/// A force scheduler, as `GET /forceschedulers/<name>` describes it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Scheduler {
    builder_names: Vec<String>,
    all_fields: Vec<Value>,
}

impl Scheduler {
    /// Every parameter's `fullName` (the key the force call takes) and `type`.
    fn parameters(&self) -> Vec<(String, String)> {
        fn walk(fields: &[Value], out: &mut Vec<(String, String)>) {
            for field in fields {
                if let Some(children) = field.get("fields").and_then(Value::as_array) {
                    walk(children, out);
                } else if let Some(name) = field.get("fullName").and_then(Value::as_str)
                    && !name.is_empty()
                {
                    let kind = field.get("type").and_then(Value::as_str).unwrap_or("text");
                    out.push((name.to_owned(), kind.to_owned()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.all_fields, &mut out);
        out
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Buildset {
    bsid: u64,
    reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Builder {
    builderid: u64,
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Step {
    stepid: u64,
    name: String,
    urls: Vec<StepUrl>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StepUrl {
    name: String,
    url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LogInfo {
    logid: u64,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    num_lines: u64,
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

    async fn builder_id(&self, name: &str) -> Result<u64, AdapterError> {
        let url = self.client.api_url(&["builders"], &[("name", name)]);
        let answer = self
            .client
            .get(url, &format!("look up builder `{name}`"))
            .await?;
        if let Some(builder) = first::<Builder>(&answer, "builders")? {
            return Ok(builder.builderid);
        }
        let url = self.client.api_url(&["builders"], &[]);
        let names = all::<Builder>(&self.client.get(url, "list builders").await?, "builders")
            .map(|list| {
                list.into_iter()
                    .map(|b| b.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        Err(AdapterError::NotFound(format!(
            "Buildbot at {} has no builder `{name}` (it has: {names}): check `builder` in the stage's `with`",
            self.client.base()
        )))
    }

    async fn builder_name(&self, builderid: u64) -> Result<String, AdapterError> {
        let url = self
            .client
            .api_url(&["builders", &builderid.to_string()], &[]);
        let answer = self
            .client
            .get(url, &format!("read builder {builderid}"))
            .await?;
        Ok(first::<Builder>(&answer, "builders")?
            .map(|b| b.name)
            .unwrap_or_default())
    }

    async fn scheduler(&self, name: &str) -> Result<Scheduler, AdapterError> {
        let url = self.client.api_url(&["forceschedulers", name], &[]);
        let what = format!("read force scheduler `{name}`");
        match self.client.get(url, &what).await {
            Ok(answer) => first::<Scheduler>(&answer, "forceschedulers")?
                .ok_or_else(|| self.no_scheduler(name)),
            Err(AdapterError::NotFound(_)) => Err(self.no_scheduler(name)),
            Err(e) => Err(e),
        }
    }

    fn no_scheduler(&self, name: &str) -> AdapterError {
        AdapterError::NotFound(format!(
            "Buildbot at {} has no force scheduler `{name}`: set `scheduler` in the stage's `with` to the name of a ForceScheduler in master.cfg (the default is `force`)",
            self.client.base()
        ))
    }

    /// The force call's parameters, or why the stage cannot be forced as written.
    fn force_params(
        &self,
        spec: &StageSpec,
        scheduler: &Scheduler,
        key: &AttemptKey,
        workflow: &str,
    ) -> Result<Value, AdapterError> {
        if !scheduler.builder_names.iter().any(|b| b == &spec.builder) {
            return Err(AdapterError::Invalid(format!(
                "force scheduler `{}` cannot build `{}` (it builds: {}): add the builder to its builderNames, or set `scheduler`",
                spec.scheduler,
                spec.builder,
                scheduler.builder_names.join(", ")
            )));
        }
        let parameters = scheduler.parameters();
        let kind_of = |name: &str| {
            parameters
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, k)| k.as_str())
        };
        let mut params = Map::new();
        let mut problems = Vec::new();
        for (name, value) in &spec.properties {
            let Some(kind) = kind_of(name) else {
                problems.push(format!("`{name}` is not one of its parameters"));
                continue;
            };
            let converted = match (kind, value) {
                ("bool", Value::Bool(b)) => Value::Bool(*b),
                ("bool", Value::String(s)) if s == "true" || s == "false" => {
                    Value::Bool(s == "true")
                }
                ("bool", other) => {
                    problems.push(format!("`{name}` is a boolean parameter, not {other}"));
                    continue;
                }
                (_, Value::String(s)) => Value::String(s.clone()),
                (_, other) => Value::String(other.to_string()),
            };
            params.insert(name.clone(), converted);
        }
        if !problems.is_empty() {
            let names: Vec<&str> = parameters
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| !RESERVED_PROPERTIES.contains(n))
                .collect();
            return Err(AdapterError::Invalid(format!(
                "force scheduler `{}` would drop or refuse properties: {}; it takes: {} (declare more in its `properties` in master.cfg)",
                spec.scheduler,
                problems.join("; "),
                names.join(", ")
            )));
        }
        params.insert(
            "reason".into(),
            Value::String(format!("{} {workflow}", model::reason_marker(key))),
        );
        if kind_of(ATTEMPT_PROPERTY).is_some() {
            params.insert(ATTEMPT_PROPERTY.into(), Value::String(key.to_string()));
        }
        params.insert("builderNames".into(), json!([spec.builder]));
        Ok(Value::Object(params))
    }

    /// Reads `[buildsetid, {"<builderid>": buildrequestid}]`.
    fn forced(
        &self,
        result: &Value,
        builder: &str,
        builderid: u64,
    ) -> Result<RefData, AdapterError> {
        let bad = || {
            AdapterError::Protocol(format!(
                "Buildbot's answer to the force call is not [buildsetid, {{builderid: buildrequestid}}]: {result}"
            ))
        };
        let result = result.get("result").ok_or_else(bad)?;
        let buildset = result.get(0).and_then(Value::as_u64).ok_or_else(bad)?;
        let requests = result.get(1).and_then(Value::as_object).ok_or_else(bad)?;
        let buildrequest = requests
            .get(&builderid.to_string())
            .or_else(|| requests.values().next())
            .and_then(Value::as_u64)
            .ok_or_else(bad)?;
        Ok(RefData::forced(
            builder.to_owned(),
            builderid,
            buildset,
            buildrequest,
        ))
    }

    /// The build request forced for `key`, if any: the newest buildset whose reason holds
    /// the key's marker, and its request for `builder` (or its only one).
    async fn find_forced(
        &self,
        key: &AttemptKey,
        builder: Option<&str>,
    ) -> Result<Option<RefData>, AdapterError> {
        let marker = model::reason_marker(key);
        let url = self.client.api_url(
            &["buildsets"],
            &[
                ("reason__contains", marker.as_str()),
                ("order", "-bsid"),
                ("limit", "10"),
            ],
        );
        let answer = self
            .client
            .get(url, &format!("look for the build of {key}"))
            .await?;
        let Some(set) = all::<Buildset>(&answer, "buildsets")?
            .into_iter()
            .find(|s| s.reason.as_deref().and_then(key_in_reason).as_ref() == Some(key))
        else {
            return Ok(None);
        };
        let url = self.client.api_url(
            &["buildrequests"],
            &[("buildsetid", set.bsid.to_string().as_str())],
        );
        let requests = all::<BuildRequest>(
            &self
                .client
                .get(url, &format!("read the requests of buildset {}", set.bsid))
                .await?,
            "buildrequests",
        )?;
        let builderid = match builder {
            Some(name) => Some(self.builder_id(name).await?),
            None => None,
        };
        let Some(request) = requests
            .iter()
            .find(|r| Some(r.builderid) == builderid)
            .or_else(|| requests.first())
        else {
            return Ok(None);
        };
        let name = match builder {
            Some(name) if Some(request.builderid) == builderid => name.to_owned(),
            _ => self.builder_name(request.builderid).await?,
        };
        Ok(Some(RefData::forced(
            name,
            request.builderid,
            set.bsid,
            request.buildrequestid,
        )))
    }

    async fn request(&self, brid: u64) -> Result<BuildRequest, AdapterError> {
        let url = self
            .client
            .api_url(&["buildrequests", &brid.to_string()], &[]);
        first::<BuildRequest>(
            &self
                .client
                .get(url, &format!("read build request {brid}"))
                .await?,
            "buildrequests",
        )?
        .ok_or_else(|| AdapterError::NotFound(format!("Buildbot has no build request {brid}")))
    }

    /// The builds of a request, oldest first (a RETRY makes more than one).
    async fn request_builds(&self, brid: u64) -> Result<Vec<Build>, AdapterError> {
        let url = self.client.api_url(
            &["builds"],
            &[
                ("buildrequestid", brid.to_string().as_str()),
                ("order", "buildid"),
            ],
        );
        all::<Build>(
            &self
                .client
                .get(url, &format!("read the builds of request {brid}"))
                .await?,
            "builds",
        )
    }

    async fn build(&self, buildid: u64) -> Result<Build, AdapterError> {
        let url = self.client.api_url(&["builds", &buildid.to_string()], &[]);
        first::<Build>(
            &self
                .client
                .get(url, &format!("read build {buildid}"))
                .await?,
            "builds",
        )?
        .ok_or_else(|| AdapterError::NotFound(format!("Buildbot has no build {buildid}")))
    }

    /// The request's latest build, if one started; remembered in `data`.
    async fn latest_build(&self, data: &mut RefData) -> Result<Option<Build>, AdapterError> {
        let latest = self.request_builds(data.buildrequest).await?.pop();
        if let Some(build) = &latest {
            data.build = Some(build.buildid);
            data.number = Some(build.number);
        }
        Ok(latest)
    }

    /// The request's build for the outputs and logs: as the last poll saw it finish, else read.
    async fn known_build(&self, data: &mut RefData) -> Result<Option<Build>, AdapterError> {
        match (data.finished_build(), data.build) {
            (Some(build), _) => Ok(Some(build)),
            (None, Some(id)) => Ok(Some(self.build(id).await?)),
            (None, None) => self.latest_build(data).await,
        }
    }

    /// Where the work is: the state, Buildbot's word for it, and a message.
    async fn observe(
        &self,
        data: &mut RefData,
    ) -> Result<(ExternalState, String, Option<String>), AdapterError> {
        if let Some(buildid) = data.build {
            let build = self.build(buildid).await?;
            if !build.complete {
                return Ok(self.running(data, &build));
            }
            if build.results != Some(RETRY) {
                return Ok(self.finished(data, &build));
            }
        }
        // The builds first: once one runs or has ended, that is the answer, in one request.
        let latest = self.latest_build(data).await?;
        match &latest {
            Some(build) if !build.complete => return Ok(self.running(data, build)),
            Some(build) if build.results != Some(RETRY) => return Ok(self.finished(data, build)),
            _ => {}
        }
        let request = self.request(data.buildrequest).await?;
        // A build may have started and ended between the two reads: a complete request's
        // builds are read again, so it is never taken for one that ended without a build.
        let latest = if request.complete {
            self.latest_build(data).await?
        } else {
            latest
        };
        match latest {
            Some(build) if !build.complete => Ok(self.running(data, &build)),
            Some(build) if build.results == Some(RETRY) && !request.complete => Ok((
                ExternalState::Queued,
                "RETRY".into(),
                Some(format!(
                    "build #{} ended RETRY; Buildbot builds the request again",
                    build.number
                )),
            )),
            Some(build) => Ok(self.finished(data, &build)),
            None if request.complete => {
                let code = request.results.unwrap_or(-1);
                let raw = results_name(code);
                let message = match code {
                    SKIPPED => format!(
                        "skipped: Buildbot merged build request {} into another, so its properties were dropped; set collapseRequests=False on builder `{}`",
                        data.buildrequest, data.builder
                    ),
                    CANCELLED => format!(
                        "build request {} was cancelled before a build started",
                        data.buildrequest
                    ),
                    _ => format!(
                        "build request {} ended {raw} without a build",
                        data.buildrequest
                    ),
                };
                Ok((
                    map_results(code, self.settings.warnings),
                    raw,
                    Some(message),
                ))
            }
            None if request.claimed => Ok((
                ExternalState::Queued,
                "claimed".into(),
                Some(format!(
                    "build request {} was claimed; its build is starting",
                    data.buildrequest
                )),
            )),
            None => Ok((
                ExternalState::Queued,
                "queued".into(),
                Some(format!(
                    "build request {} waits for a worker of builder `{}`",
                    data.buildrequest, data.builder
                )),
            )),
        }
    }

    fn running(&self, data: &RefData, build: &Build) -> (ExternalState, String, Option<String>) {
        let state = build
            .state_string
            .clone()
            .unwrap_or_else(|| "building".into());
        let message = format!(
            "build #{} of `{}`: {state} ({})",
            build.number,
            data.builder,
            self.build_url(build.builderid, build.number)
        );
        (ExternalState::Running, state, Some(message))
    }

    /// A finished build's state; remembers its results in `data` for the outputs.
    fn finished(
        &self,
        data: &mut RefData,
        build: &Build,
    ) -> (ExternalState, String, Option<String>) {
        data.results = build.results;
        data.state_string = build.state_string.clone();
        let code = build.results.unwrap_or(-1);
        let raw = results_name(code);
        let state = build.state_string.as_deref().unwrap_or_default();
        let message = format!(
            "build #{} of `{}` ended {raw}: {state} ({})",
            build.number,
            data.builder,
            self.build_url(build.builderid, build.number)
        );
        (
            map_results(code, self.settings.warnings),
            raw,
            Some(message),
        )
    }

    async fn stop(&self, buildid: u64, key: &AttemptKey) -> Result<(), AdapterError> {
        let url = self.client.api_url(&["builds", &buildid.to_string()], &[]);
        self.client
            .control(
                url,
                "stop",
                json!({"reason": format!("cancelled by baton ({key})")}),
                &format!("stop build {buildid}"),
            )
            .await
            .map(drop)
    }

    async fn log_tail(&self, log: &LogInfo) -> Result<String, AdapterError> {
        let offset = log.num_lines.saturating_sub(TAIL_LINES).to_string();
        let limit = TAIL_LINES.to_string();
        let url = self.client.api_url(
            &["logs", &log.logid.to_string(), "contents"],
            &[("offset", offset.as_str()), ("limit", limit.as_str())],
        );
        let answer = self
            .client
            .get(url, &format!("read log {}", log.logid))
            .await?;
        let mut text = String::new();
        for chunk in answer
            .get("logchunks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let content = chunk.get("content").and_then(Value::as_str).unwrap_or("");
            for line in content.lines() {
                // Stream logs start each line with `h` (header), `o` or `e` (stdout, stderr).
                let line = if log.kind == "s" {
                    line.get(1..).unwrap_or("")
                } else {
                    line
                };
                text.push_str(line);
                text.push('\n');
            }
        }
        Ok(text)
    }
}

#[async_trait]
impl Adapter for BuildbotAdapter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        let spec = parse_stage(&request.input, Mode::Rendered)
            .map_err(|errors| AdapterError::Invalid(FieldError::join(&errors)))?;
        let builderid = self.builder_id(&spec.builder).await?;
        let scheduler = self.scheduler(&spec.scheduler).await?;
        let params = self.force_params(&spec, &scheduler, &request.key, &request.workflow)?;
        let url = self
            .client
            .api_url(&["forceschedulers", &spec.scheduler], &[]);
        let what = format!(
            "force builder `{}` through scheduler `{}`",
            spec.builder, spec.scheduler
        );
        let begun = Instant::now();
        let mut retry = 0;
        loop {
            let failure = match self
                .client
                .control_once(url.clone(), "force", params.clone(), &what)
                .await
            {
                Ok(result) => {
                    let data = self.forced(&result, &spec.builder, builderid)?;
                    tracing::info!(attempt = %request.key, buildrequest = data.buildrequest, builder = %spec.builder, "forced a Buildbot build");
                    return Ok(self.reference(&data));
                }
                Err(failure) => failure,
            };
            let wait = backoff(retry, failure.retry_after);
            if !failure.retry || !may_retry(retry, begun, wait) {
                // After an ambiguous failure the engine asks `find` before starting again.
                return Err(failure.error);
            }
            tracing::debug!(attempt = %request.key, error = %failure.error, ?wait, "force failed; retrying");
            tokio::time::sleep(wait).await;
            if failure.ambiguous
                && let Some(data) = self.find_forced(&request.key, Some(&spec.builder)).await?
            {
                return Ok(self.reference(&data));
            }
            retry += 1;
        }
    }

    async fn find(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        let builder = input.get("builder").and_then(Value::as_str);
        Ok(self
            .find_forced(key, builder)
            .await?
            .map(|data| self.reference(&data)))
    }

    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        let mut data = RefData::read(&request.external.id, &request.external.data)?;
        let polls = data.polls;
        data.polls = polls.saturating_add(1);
        let (state, raw, message) = self.observe(&mut data).await?;
        let terminal = state.is_terminal();
        let mut outcome = PollOutcome::state(state);
        outcome.raw = Some(raw);
        outcome.message = message;
        if !terminal {
            outcome.next_poll = Some(self.poll_wait(polls));
        }
        outcome.external = Some(self.reference(&data));
        Ok(outcome)
    }

    async fn outputs(
        &self,
        _key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        let mut data = RefData::read(&external.id, &external.data)?;
        let build = self.known_build(&mut data).await?;
        let mut out = Map::new();
        match build {
            Some(build) => {
                let url = self
                    .client
                    .api_url(&["builds", &build.buildid.to_string(), "properties"], &[]);
                let properties = property_values(
                    &self
                        .client
                        .get(
                            url,
                            &format!("read the properties of build {}", build.buildid),
                        )
                        .await?,
                );
                let code = build.results.unwrap_or(-1);
                out.insert("build_id".into(), json!(build.buildid));
                out.insert("number".into(), json!(build.number));
                out.insert(
                    "url".into(),
                    json!(self.build_url(build.builderid, build.number)),
                );
                out.insert("results".into(), json!(results_name(code)));
                out.insert("results_code".into(), json!(code));
                out.insert("state_string".into(), json!(build.state_string));
                out.insert("properties".into(), Value::Object(properties));
            }
            None => {
                let request = self.request(data.buildrequest).await?;
                let code = request.results.unwrap_or(-1);
                out.insert("build_id".into(), Value::Null);
                out.insert("number".into(), Value::Null);
                out.insert("url".into(), json!(self.request_url(data.buildrequest)));
                out.insert("results".into(), json!(results_name(code)));
                out.insert("results_code".into(), json!(code));
                out.insert("state_string".into(), Value::Null);
                out.insert("properties".into(), json!({}));
            }
        }
        out.insert("builder".into(), json!(data.builder));
        out.insert("buildrequest_id".into(), json!(data.buildrequest));
        Ok(out)
    }

    async fn cancel(&self, key: &AttemptKey, external: &ExternalRef) -> Result<(), AdapterError> {
        let data = RefData::read(&external.id, &external.data)?;
        if let Some(buildid) = data.build {
            let build = self.build(buildid).await?;
            if !build.complete {
                return self.stop(buildid, key).await;
            }
            if build.results != Some(RETRY) {
                return Ok(());
            }
        }
        let brid = data.buildrequest;
        if self.request(brid).await?.complete {
            return Ok(());
        }
        let url = self
            .client
            .api_url(&["buildrequests", &brid.to_string()], &[]);
        self.client
            .control(
                url,
                "cancel",
                json!({"reason": format!("cancelled by baton ({key})")}),
                &format!("cancel build request {brid}"),
            )
            .await?;
        // A request claimed just before the cancel still gets its build: stop it too.
        let begun = Instant::now();
        loop {
            let mut stopped = false;
            for build in self.request_builds(brid).await? {
                if !build.complete {
                    self.stop(build.buildid, key).await?;
                    stopped = true;
                }
            }
            if stopped || self.request(brid).await?.complete {
                return Ok(());
            }
            if begun.elapsed() > CANCEL_CONFIRM {
                return Err(AdapterError::Transient(format!(
                    "Buildbot has not confirmed the cancel of build request {brid} yet"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn logs(&self, _key: &AttemptKey, external: &ExternalRef) -> Result<Logs, AdapterError> {
        let mut data = RefData::read(&external.id, &external.data)?;
        let build = self.known_build(&mut data).await?;
        let Some(build) = build else {
            return Ok(Logs {
                links: vec![LogLink {
                    name: "build request".into(),
                    url: self.request_url(data.buildrequest),
                }],
                text: None,
            });
        };
        let mut logs = Logs {
            links: vec![LogLink {
                name: "build".into(),
                url: self.build_url(build.builderid, build.number),
            }],
            text: None,
        };
        let url = self
            .client
            .api_url(&["builds", &build.buildid.to_string(), "steps"], &[]);
        let steps = all::<Step>(
            &self
                .client
                .get(url, &format!("read the steps of build {}", build.buildid))
                .await?,
            "steps",
        )?;
        let mut text = String::new();
        let mut listed = 0;
        for step in steps {
            for link in &step.urls {
                logs.links.push(LogLink {
                    name: format!("{}: {}", step.name, link.name),
                    url: link.url.clone(),
                });
            }
            if listed >= MAX_LOGS {
                continue;
            }
            let url = self
                .client
                .api_url(&["steps", &step.stepid.to_string(), "logs"], &[]);
            let step_logs = all::<LogInfo>(
                &self
                    .client
                    .get(url, &format!("read the logs of step `{}`", step.name))
                    .await?,
                "logs",
            )?;
            for log in step_logs {
                if listed >= MAX_LOGS {
                    break;
                }
                listed += 1;
                let raw = self
                    .client
                    .api_url(&["logs", &log.logid.to_string(), "raw_inline"], &[]);
                logs.links.push(LogLink {
                    name: format!("{}/{}", step.name, log.name),
                    url: raw.to_string(),
                });
                if log.kind == "s" && text.len() < MAX_LOG_TEXT {
                    let tail = self.log_tail(&log).await?;
                    text.push_str(&format!("--- {} / {} ---\n", step.name, log.name));
                    text.push_str(&tail);
                }
            }
        }
        if text.len() > MAX_LOG_TEXT {
            let mut cut = text.len() - MAX_LOG_TEXT;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text = text.split_off(cut);
        }
        logs.text = (!text.is_empty()).then_some(text);
        Ok(logs)
    }

    fn completion_webhook(
        &self,
        request: &WebhookRequest<'_>,
    ) -> Result<Vec<AttemptKey>, AdapterError> {
        if let Some(token) = &self.webhook_token {
            let expected = format!("Bearer {}", token.expose());
            let given = request.header("authorization").unwrap_or("");
            if !same(given.as_bytes(), expected.as_bytes()) {
                return Err(AdapterError::Auth(
                    "the status push lacks the right `Authorization: Bearer <webhook_token>` header: set headers={\"Authorization\": \"Bearer …\"} on reporters.HttpStatusPush".into(),
                ));
            }
        }
        let body: Value = serde_json::from_slice(request.body).map_err(|e| {
            AdapterError::Invalid(format!(
                "a Buildbot status push must be the JSON of a build ({e})"
            ))
        })?;
        Ok(keys_in_push(&body))
    }
}

/// Compares in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

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
