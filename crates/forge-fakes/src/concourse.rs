//! Concourse's ATC API (`/api/v1`) and its token endpoints, as `docs/adapters/concourse.md`
//! uses them: teams, pipelines (pausable, instanced by instance vars given as JSON query
//! values), jobs (pausable, `disable_manual_trigger`, `max_in_flight`, inputs), job builds
//! that wait in `pending` while anything blocks them and then move through `started` to
//! `succeeded`, `failed` or `errored` as real time passes, the build's preparation, its
//! event stream (server-sent events with ids, resumable with `Last-Event-ID`, a final
//! `end`), its resources, abort, build comments, resource checks from a version, and the
//! password grant of fly's public client with tokens that expire.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use baton_forge_fakes::concourse::{BuildPlan, Concourse};
//! let ci = Concourse::new();
//! ci.add_user("baton", "s3cret", &["main"]);
//! ci.pipeline("main", "app")
//!     .resource("repo", &[serde_json::json!({"ref": "abc"})])
//!     .job("deploy", BuildPlan::new().runs_for(Duration::from_secs(2)))
//!     .job_inputs("deploy", &["repo"]);
//! let served = ci.serve().await?;
//! # Ok(()) }
//! ```
//!
//! Facts followed (concourse/concourse): `atc/routes.go` (the routes), `atc/build.go`
//! (build JSON, statuses, preparation), `atc/api/jobserver/create_build.go` (404, 409),
//! `atc/api/jobserver/list_builds.go` (newest first, `limit`),
//! `atc/api/buildserver/eventhandler.go` (SSE messages named `event` with an `id`, the
//! final `end`, `Last-Event-ID` resumes after the given id, an unreadable one is a 400),
//! `atc/event/events.go` (event types and versions), `atc/api/buildserver/abort.go` (204),
//! `atc/api/resourceserver/check.go` (a check is a build, answered 201) and
//! `fly/commands/login.go` (the password grant at `/sky/issuer/token` since 6.1, at
//! `/sky/token` before, with the client `fly:Zmx5` as HTTP Basic).
//!
//! Every request is counted in the [`Meter`]: token requests as `token`, the others under
//! the caller's user name (`anonymous` without a valid token).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::{Meter, Served};

/// fly's built-in OAuth client id.
pub const FLY_CLIENT_ID: &str = "fly";
/// fly's built-in OAuth client secret.
pub const FLY_CLIENT_SECRET: &str = "Zmx5";

/// How long issued tokens live unless [`Concourse::token_lifetime`] says otherwise: a day,
/// Concourse's default.
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(86_400);

/// How often an event stream with nothing to send looks again.
const STREAM_TICK: Duration = Duration::from_millis(20);

/// How a job build ends when it runs to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `succeeded`.
    Succeeded,
    /// `failed`: the task exits with this status.
    Failed(i64),
    /// `errored`: an `error` event with this message.
    Errored(String),
}

/// What every new build of a job does once scheduled.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    pending_for: Duration,
    runs_for: Duration,
    outcome: Outcome,
    logs: Vec<String>,
    outputs: Vec<(String, Map<String, Value>)>,
    reports: Option<String>,
}

impl Default for BuildPlan {
    fn default() -> Self {
        Self::new()
    }
}

impl BuildPlan {
    /// Waits 100 ms for a worker once scheduled, runs 500 ms, logs one line, succeeds.
    pub fn new() -> Self {
        Self {
            pending_for: Duration::from_millis(100),
            runs_for: Duration::from_millis(500),
            outcome: Outcome::Succeeded,
            logs: vec!["hello from the task\n".to_owned()],
            outputs: Vec::new(),
            reports: None,
        }
    }

    /// How long a scheduled build stays `pending` before it starts.
    pub fn pending_for(mut self, d: Duration) -> Self {
        self.pending_for = d;
        self
    }

    /// How long it runs once started.
    pub fn runs_for(mut self, d: Duration) -> Self {
        self.runs_for = d;
        self
    }

    /// Its task exits with `exit_status`: the build `failed`.
    pub fn fails(mut self, exit_status: i64) -> Self {
        self.outcome = Outcome::Failed(exit_status);
        self
    }

    /// It meets an error (`message`): the build `errored`.
    pub fn errors(mut self, message: &str) -> Self {
        self.outcome = Outcome::Errored(message.to_owned());
        self
    }

    /// Its log: one `log` event per entry, spread evenly over the run.
    pub fn logs(mut self, lines: &[&str]) -> Self {
        self.logs = lines.iter().map(|l| (*l).to_owned()).collect();
        self
    }

    /// Its log: one `log` event per entry, spread evenly over the run.
    pub fn log_lines(mut self, lines: Vec<String>) -> Self {
        self.logs = lines;
        self
    }

    /// A `put` to `resource` that makes `version` (in the build's outputs once it succeeds).
    pub fn output(mut self, resource: &str, version: Value) -> Self {
        self.outputs.push((
            resource.to_owned(),
            version.as_object().cloned().unwrap_or_default(),
        ));
        self
    }

    /// The build never ends and shows status `raw` (one baton has never seen).
    pub fn reports(mut self, raw: &str) -> Self {
        self.reports = Some(raw.to_owned());
        self
    }
}

/// An awkward answer, switched on for the next requests by [`Concourse::fault`].
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// This status (a 5xx), nothing done.
    Status(u16),
    /// 429 with `Retry-After` (seconds), nothing done.
    RateLimited(u64),
    /// 200 with a body that is not JSON, after doing the work.
    Garbage,
    /// The work is done, then the answer waits this long (past the client's timeout).
    Delay(Duration),
    /// An event stream that ends (as a cut connection) after this many events.
    CutAfter(usize),
}

/// Which requests a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Any request.
    Any,
    /// The token endpoints.
    Token,
    /// Creating a job build.
    Create,
    /// A `GET` other than an event stream.
    Read,
    /// Opening an event stream.
    Events,
    /// Starting a resource check.
    Check,
    /// Aborting a build.
    Abort,
}

#[derive(Debug)]
struct User {
    password: Option<String>,
    teams: Vec<String>,
}

#[derive(Debug)]
struct Issued {
    user: String,
    expires: Option<Instant>,
}

#[derive(Debug)]
struct Resource {
    name: String,
    versions: Vec<Map<String, Value>>,
    upstream: Vec<Map<String, Value>>,
    check_for: Duration,
    check_error: Option<String>,
}

#[derive(Debug)]
struct Job {
    name: String,
    paused: bool,
    manual_trigger_disabled: bool,
    max_in_flight: Option<usize>,
    inputs: Vec<String>,
    plan: BuildPlan,
    builds: u64,
}

#[derive(Debug)]
struct Pipeline {
    id: u64,
    team: String,
    name: String,
    vars: Map<String, Value>,
    paused: bool,
    jobs: Vec<Job>,
    resources: Vec<Resource>,
}

#[derive(Debug)]
struct Scheduled {
    at: Instant,
    inputs: Vec<(String, Map<String, Value>)>,
}

#[derive(Debug)]
enum Kind {
    Job {
        job: String,
        plan: BuildPlan,
        scheduled: Option<Scheduled>,
    },
    Check {
        resource: String,
        from: Option<Map<String, Value>>,
        takes: Duration,
        error: Option<String>,
        applied: bool,
    },
}

#[derive(Debug)]
struct Build {
    id: u64,
    pipeline: usize,
    name: String,
    created_by: String,
    created: Instant,
    created_ms: u64,
    comment: Option<String>,
    kind: Kind,
    aborted: Option<Instant>,
    /// Event id → the wall-clock ms it was first sent on a stream.
    sent: BTreeMap<u64, u64>,
}

/// One event of a build's stream, and when it happens.
#[derive(Debug, Clone)]
struct Event {
    at: Instant,
    kind: &'static str,
    version: &'static str,
    data: Value,
}

#[derive(Debug, Default)]
struct Inner {
    users: BTreeMap<String, User>,
    tokens: BTreeMap<String, Issued>,
    token_life: Option<Duration>,
    old_server: bool,
    teams: BTreeSet<String>,
    pipelines: Vec<Pipeline>,
    builds: BTreeMap<u64, Build>,
    faults: VecDeque<(Scope, Fault)>,
    next_id: u64,
    issued: u64,
    streams_opened: u64,
    streams_open: u64,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    meter: Meter,
}

/// The model: cheap to clone, every clone the same Concourse.
#[derive(Debug, Clone, Default)]
pub struct Concourse {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Sets up a pipeline (or one instance of an instanced pipeline); see
/// [`Concourse::pipeline`]. Every setter may be called again later, to change it.
#[derive(Debug)]
pub struct PipelineSetup {
    concourse: Concourse,
    index: usize,
}

impl PipelineSetup {
    fn edit(self, f: impl FnOnce(&mut Pipeline)) -> Self {
        f(&mut self.concourse.lock().pipelines[self.index]);
        self
    }

    fn edit_job(self, job: &str, f: impl FnOnce(&mut Job)) -> Self {
        self.edit(|p| {
            if let Some(j) = p.jobs.iter_mut().find(|j| j.name == job) {
                f(j);
            }
        })
    }

    fn edit_resource(self, resource: &str, f: impl FnOnce(&mut Resource)) -> Self {
        self.edit(|p| {
            if let Some(r) = p.resources.iter_mut().find(|r| r.name == resource) {
                f(r);
            }
        })
    }

    /// Pauses or unpauses it.
    pub fn paused(self, paused: bool) -> Self {
        self.edit(|p| p.paused = paused)
    }

    /// A job `name` (replacing one of that name) whose builds follow `plan`.
    pub fn job(self, name: &str, plan: BuildPlan) -> Self {
        let name = name.to_owned();
        self.edit(|p| {
            if let Some(j) = p.jobs.iter_mut().find(|j| j.name == name) {
                j.plan = plan;
                return;
            }
            p.jobs.push(Job {
                name,
                paused: false,
                manual_trigger_disabled: false,
                max_in_flight: None,
                inputs: Vec::new(),
                plan,
                builds: 0,
            });
        })
    }

    /// Pauses or unpauses job `job`.
    pub fn job_paused(self, job: &str, paused: bool) -> Self {
        self.edit_job(job, |j| j.paused = paused)
    }

    /// Job `job` has `disable_manual_trigger: true`.
    pub fn manual_trigger_disabled(self, job: &str) -> Self {
        self.edit_job(job, |j| j.manual_trigger_disabled = true)
    }

    /// Job `job` runs at most `n` builds at once (`max_in_flight`).
    pub fn max_in_flight(self, job: &str, n: usize) -> Self {
        self.edit_job(job, |j| j.max_in_flight = Some(n))
    }

    /// Job `job` gets the newest version of each of `resources` (inputs named as the
    /// resources).
    pub fn job_inputs(self, job: &str, resources: &[&str]) -> Self {
        let inputs = resources.iter().map(|r| (*r).to_owned()).collect();
        self.edit_job(job, |j| j.inputs = inputs)
    }

    /// A resource with these versions, oldest first (a version is a JSON object of strings).
    pub fn resource(self, name: &str, versions: &[Value]) -> Self {
        let resource = Resource {
            name: name.to_owned(),
            versions: versions
                .iter()
                .map(|v| v.as_object().cloned().unwrap_or_default())
                .collect(),
            upstream: Vec::new(),
            check_for: Duration::from_millis(100),
            check_error: None,
        };
        self.edit(|p| {
            p.resources.retain(|r| r.name != resource.name);
            p.resources.push(resource);
        })
    }

    /// A version that exists in the resource's source but that Concourse only learns by a
    /// check.
    pub fn upstream(self, resource: &str, version: Value) -> Self {
        let version = version.as_object().cloned().unwrap_or_default();
        self.edit_resource(resource, |r| r.upstream.push(version))
    }

    /// A check of `resource` takes this long.
    pub fn check_takes(self, resource: &str, d: Duration) -> Self {
        self.edit_resource(resource, |r| r.check_for = d)
    }

    /// A check of `resource` errors with `message`.
    pub fn check_errors(self, resource: &str, message: &str) -> Self {
        let message = message.to_owned();
        self.edit_resource(resource, |r| r.check_error = Some(message))
    }
}

/// A job build (or check) as the model sees it now, for test assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildView {
    /// Its global id.
    pub id: u64,
    /// Its job (or, for a check, its resource).
    pub job: String,
    /// Its pipeline.
    pub pipeline: String,
    /// Its name (the job's build number).
    pub name: String,
    /// Its status now.
    pub status: String,
    /// The user who created it.
    pub created_by: String,
    /// Its comment.
    pub comment: Option<String>,
    /// The versions it took, by input name (once scheduled).
    pub inputs: Vec<(String, Value)>,
    /// True for a resource check.
    pub check: bool,
}

impl Concourse {
    /// An empty Concourse on a server of 6.1 or later: no users, no teams.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.shared.inner)
    }

    /// A local user with `password`, member of `teams` (each created if new).
    pub fn add_user(&self, name: &str, password: &str, teams: &[&str]) {
        let mut inner = self.lock();
        for team in teams {
            inner.teams.insert((*team).to_owned());
        }
        inner.users.insert(
            name.to_owned(),
            User {
                password: Some(password.to_owned()),
                teams: teams.iter().map(|t| (*t).to_owned()).collect(),
            },
        );
    }

    /// A bearer token issued elsewhere (`fly login` through a GitHub connector) for `user`,
    /// who is a member of `teams`; it never expires until [`Concourse::expire_tokens`].
    pub fn add_bearer(&self, token: &str, user: &str, teams: &[&str]) {
        let mut inner = self.lock();
        for team in teams {
            inner.teams.insert((*team).to_owned());
        }
        inner.users.entry(user.to_owned()).or_insert(User {
            password: None,
            teams: teams.iter().map(|t| (*t).to_owned()).collect(),
        });
        inner.tokens.insert(
            token.to_owned(),
            Issued {
                user: user.to_owned(),
                expires: None,
            },
        );
    }

    /// Tokens issued from now on expire after `d` (`expires_in` says so).
    pub fn token_lifetime(&self, d: Duration) {
        self.lock().token_life = Some(d);
    }

    /// Every token issued so far expires now: the next request with one answers 401.
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for issued in self.lock().tokens.values_mut() {
            issued.expires = Some(now);
        }
    }

    /// A server older than 6.1: the password grant is at `/sky/token` (the new path is
    /// 404), builds carry no `created_by` and cannot be commented.
    pub fn old_server(&self) {
        self.lock().old_server = true;
    }

    /// The server is upgraded to 6.1 or later: the password grant moves to
    /// `/sky/issuer/token`, builds carry `created_by` and can be commented.
    pub fn upgrade(&self) {
        self.lock().old_server = false;
    }

    /// The pipeline `name` of `team` without instance vars (created, unpaused, if new).
    pub fn pipeline(&self, team: &str, name: &str) -> PipelineSetup {
        self.instance(team, name, &Value::Null)
    }

    /// The instance of pipeline `name` of `team` whose instance vars are `vars` (a JSON
    /// object; `null` for none), created unpaused if new.
    pub fn instance(&self, team: &str, name: &str, vars: &Value) -> PipelineSetup {
        let vars = vars.as_object().cloned().unwrap_or_default();
        let index = {
            let mut inner = self.lock();
            inner.teams.insert(team.to_owned());
            match inner
                .pipelines
                .iter()
                .position(|p| p.team == team && p.name == name && p.vars == vars)
            {
                Some(i) => i,
                None => {
                    inner.next_id += 1;
                    let id = inner.next_id;
                    inner.pipelines.push(Pipeline {
                        id,
                        team: team.to_owned(),
                        name: name.to_owned(),
                        vars,
                        paused: false,
                        jobs: Vec::new(),
                        resources: Vec::new(),
                    });
                    inner.pipelines.len() - 1
                }
            }
        };
        PipelineSetup {
            concourse: self.clone(),
            index,
        }
    }

    /// The next `n` requests in `scope` meet `fault`.
    pub fn fault(&self, n: usize, scope: Scope, fault: Fault) {
        let mut inner = self.lock();
        for _ in 0..n {
            inner.faults.push_back((scope, fault.clone()));
        }
    }

    /// The request counts.
    pub fn meter(&self) -> &Meter {
        &self.shared.meter
    }

    /// Every job build and check as it is now, oldest first.
    pub fn builds(&self) -> Vec<BuildView> {
        let mut inner = self.lock();
        let now = Instant::now();
        advance(&mut inner, now);
        inner
            .builds
            .values()
            .map(|b| {
                let pipeline = &inner.pipelines[b.pipeline];
                let (job, inputs, check) = match &b.kind {
                    Kind::Job { job, scheduled, .. } => (
                        job.clone(),
                        scheduled
                            .iter()
                            .flat_map(|s| &s.inputs)
                            .map(|(n, v)| (n.clone(), Value::Object(v.clone())))
                            .collect(),
                        false,
                    ),
                    Kind::Check { resource, .. } => (resource.clone(), Vec::new(), true),
                };
                BuildView {
                    id: b.id,
                    job,
                    pipeline: pipeline.name.clone(),
                    name: b.name.clone(),
                    status: b.status(now),
                    created_by: b.created_by.clone(),
                    comment: b.comment.clone(),
                    inputs,
                    check,
                }
            })
            .collect()
    }

    /// How many event streams were opened (answered 200).
    pub fn streams_opened(&self) -> u64 {
        self.lock().streams_opened
    }

    /// A person (`user`) triggers job `job` of pipeline `pipeline` of `team` (no instance
    /// vars), as `fly trigger-job` does: a build with no comment. Returns its id, or `None`
    /// for an unknown job.
    pub fn trigger(&self, team: &str, pipeline: &str, job: &str, user: &str) -> Option<u64> {
        let mut inner = self.lock();
        let i = inner
            .pipelines
            .iter()
            .position(|p| p.team == team && p.name == pipeline && p.vars.is_empty())?;
        let j = inner.pipelines[i].jobs.iter_mut().find(|j| j.name == job)?;
        j.builds += 1;
        let (number, plan) = (j.builds, j.plan.clone());
        let kind = Kind::Job {
            job: job.to_owned(),
            plan,
            scheduled: None,
        };
        Some(add_build(
            &mut inner,
            i,
            Some(number.to_string()),
            user,
            kind,
        ))
    }

    /// How many event streams are open now.
    pub fn streams_open(&self) -> u64 {
        self.lock().streams_open
    }

    /// Drops every fault not met yet.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// The job builds (not checks) as they are now, oldest first.
    pub fn job_builds(&self) -> Vec<BuildView> {
        self.builds().into_iter().filter(|b| !b.check).collect()
    }

    /// When (wall-clock ms) an event stream first sent build `build`'s `status` event
    /// saying `status`; `None` if none has.
    pub fn status_sent_ms(&self, build: u64, status: &str) -> Option<u64> {
        let inner = self.lock();
        let b = inner.builds.get(&build)?;
        let events = b.events();
        b.sent.iter().find_map(|(id, ms)| {
            let e = events.get(*id as usize)?;
            (e.kind == "status" && e.data["status"] == status).then_some(*ms)
        })
    }

    /// The routes of the ATC and its token endpoints.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/sky/issuer/token", post(token_new))
            .route("/sky/token", post(token_old))
            .route("/api/v1/user", get(user))
            .route("/api/v1/teams/{team}", get(team))
            .route("/api/v1/teams/{team}/pipelines", get(pipelines))
            .route("/api/v1/teams/{team}/pipelines/{pipeline}", get(pipeline))
            .route(
                "/api/v1/teams/{team}/pipelines/{pipeline}/jobs/{job}",
                get(job),
            )
            .route(
                "/api/v1/teams/{team}/pipelines/{pipeline}/jobs/{job}/builds",
                get(list_builds).post(create_build),
            )
            .route(
                "/api/v1/teams/{team}/pipelines/{pipeline}/resources/{resource}/check",
                post(check),
            )
            .route("/api/v1/builds/{id}", get(show_build))
            .route("/api/v1/builds/{id}/events", get(events))
            .route(
                "/api/v1/builds/{id}/{part}",
                get(build_part).put(build_action),
            )
            .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") })
            .with_state(self.clone())
    }

    /// Serves the model from the current runtime.
    pub async fn serve(&self) -> std::io::Result<Served> {
        crate::serve(self.router()).await
    }

    /// Serves the model from a runtime of its own.
    pub fn serve_in_background(&self) -> std::io::Result<Served> {
        crate::serve_in_background(|| self.router())
    }
}

/// What keeps a pending job build from being scheduled.
#[derive(Debug, Default)]
struct Blockers {
    paused_pipeline: bool,
    paused_job: bool,
    max_running: bool,
    missing: Vec<(String, String)>,
}

impl Blockers {
    fn any(&self) -> bool {
        self.paused_pipeline || self.paused_job || self.max_running || !self.missing.is_empty()
    }
}

fn blockers(inner: &Inner, build: &Build, job: &str, now: Instant) -> Blockers {
    let pipeline = &inner.pipelines[build.pipeline];
    let Some(j) = pipeline.jobs.iter().find(|j| j.name == job) else {
        return Blockers::default();
    };
    let running = inner
        .builds
        .values()
        .filter(|b| b.pipeline == build.pipeline && b.id != build.id)
        .filter(
            |b| matches!(&b.kind, Kind::Job { job: other, scheduled: Some(_), .. } if other == job),
        )
        .filter(|b| matches!(b.status(now).as_str(), "pending" | "started"))
        .count();
    Blockers {
        paused_pipeline: pipeline.paused,
        paused_job: j.paused,
        max_running: j.max_in_flight.is_some_and(|n| running >= n),
        missing: j
            .inputs
            .iter()
            .filter(|input| {
                pipeline
                    .resources
                    .iter()
                    .find(|r| &&r.name == input)
                    .is_none_or(|r| r.versions.is_empty())
            })
            .map(|input| (input.clone(), "no versions available".to_owned()))
            .collect(),
    }
}

/// Moves time-driven state on: finished checks bring their versions in, then pending job
/// builds nothing blocks are scheduled with the newest version of each input.
fn advance(inner: &mut Inner, now: Instant) {
    let ids: Vec<u64> = inner.builds.keys().copied().collect();
    for id in &ids {
        let build = &inner.builds[id];
        let pipeline = build.pipeline;
        if let Kind::Check {
            resource,
            from,
            takes,
            error: None,
            applied: false,
        } = &build.kind
            && build.aborted.is_none()
            && now >= build.created + *takes
        {
            let (resource, from) = (resource.clone(), from.clone());
            if let Some(r) = inner.pipelines[pipeline]
                .resources
                .iter_mut()
                .find(|r| r.name == resource)
            {
                for version in from.into_iter().chain(std::mem::take(&mut r.upstream)) {
                    if !r.versions.contains(&version) {
                        r.versions.push(version);
                    }
                }
            }
            if let Some(Build {
                kind: Kind::Check { applied, .. },
                ..
            }) = inner.builds.get_mut(id)
            {
                *applied = true;
            }
        }
    }
    for id in &ids {
        let build = &inner.builds[id];
        let Kind::Job {
            job,
            scheduled: None,
            ..
        } = &build.kind
        else {
            continue;
        };
        if build.aborted.is_some() || blockers(inner, build, job, now).any() {
            continue;
        }
        let pipeline = &inner.pipelines[build.pipeline];
        let inputs = pipeline
            .jobs
            .iter()
            .find(|j| &j.name == job)
            .map(|j| {
                j.inputs
                    .iter()
                    .filter_map(|input| {
                        let r = pipeline.resources.iter().find(|r| &r.name == input)?;
                        Some((input.clone(), r.versions.last()?.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(Build {
            kind: Kind::Job { scheduled, .. },
            ..
        }) = inner.builds.get_mut(id)
        {
            *scheduled = Some(Scheduled { at: now, inputs });
        }
    }
}

fn is_end(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "errored" | "aborted")
}

impl Build {
    fn wall(&self, at: Instant) -> u64 {
        self.created_ms + at.saturating_duration_since(self.created).as_millis() as u64
    }

    /// Its events, every one that has happened or will happen as things stand.
    fn events(&self) -> Vec<Event> {
        let status = |at: Instant, status: &str| Event {
            at,
            kind: "status",
            version: "1.0",
            data: json!({"status": status, "time": self.wall(at) / 1000}),
        };
        let (plan, scheduled) = match &self.kind {
            Kind::Job {
                plan, scheduled, ..
            } => (plan, scheduled),
            Kind::Check { takes, error, .. } => {
                // A check's stream: started, then its error (if any) and its end.
                let end = self.created + *takes;
                let mut events = vec![status(self.created, "started")];
                if let Some(message) = error {
                    events.push(Event {
                        at: end,
                        kind: "error",
                        version: "4.1",
                        data: json!({"message": message, "origin": {"id": "check"}, "time": self.wall(end) / 1000}),
                    });
                }
                let last = if error.is_some() {
                    "errored"
                } else {
                    "succeeded"
                };
                events.push(status(end, last));
                return events;
            }
        };
        let Some(scheduled) = scheduled else {
            return self
                .aborted
                .map(|a| status(a, "aborted"))
                .into_iter()
                .collect();
        };
        let start = scheduled.at + plan.pending_for;
        if self.aborted.is_some_and(|a| a <= start) {
            return vec![status(self.aborted.unwrap_or(start), "aborted")];
        }
        let origin = json!({"id": "task-1", "source": "stdout"});
        let mut events = vec![
            status(start, plan.reports.as_deref().unwrap_or("started")),
            Event {
                at: start,
                kind: "initialize-task",
                version: "4.0",
                data: json!({"time": self.wall(start) / 1000, "origin": {"id": "task-1"}, "config": {"platform": "linux", "image": "", "run": {"path": "sh", "args": [], "dir": ""}, "inputs": []}}),
            },
            Event {
                at: start,
                kind: "start-task",
                version: "5.0",
                data: json!({"time": self.wall(start) / 1000, "origin": {"id": "task-1"}, "config": {"platform": "linux", "image": "", "run": {"path": "sh", "args": [], "dir": ""}, "inputs": []}}),
            },
        ];
        if plan.reports.is_some() {
            return events;
        }
        let n = plan.logs.len() as u32;
        for (i, line) in plan.logs.iter().enumerate() {
            let at = start + plan.runs_for * (i as u32 + 1) / (n + 1);
            events.push(Event {
                at,
                kind: "log",
                version: "5.1",
                data: json!({"time": self.wall(at) / 1000, "origin": origin, "payload": line}),
            });
        }
        let end = start + plan.runs_for;
        match &plan.outcome {
            Outcome::Errored(message) => events.push(Event {
                at: end,
                kind: "error",
                version: "4.1",
                data: json!({"message": message, "origin": {"id": "task-1"}, "time": self.wall(end) / 1000}),
            }),
            outcome => events.push(Event {
                at: end,
                kind: "finish-task",
                version: "4.0",
                data: json!({"time": self.wall(end) / 1000, "exit_status": if let Outcome::Failed(code) = outcome { *code } else { 0 }, "origin": {"id": "task-1"}}),
            }),
        }
        let final_status = match &plan.outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed(_) => "failed",
            Outcome::Errored(_) => "errored",
        };
        events.push(status(end, final_status));
        if let Some(aborted) = self.aborted
            && aborted < end
        {
            events.retain(|e| e.at <= aborted);
            events.push(status(aborted, "aborted"));
        }
        events
    }

    /// Its status at `now`.
    fn status(&self, now: Instant) -> String {
        match &self.kind {
            Kind::Check { takes, error, .. } => {
                if self.aborted.is_some() {
                    "aborted".into()
                } else if now < self.created + *takes {
                    "started".into()
                } else if error.is_some() {
                    "errored".into()
                } else {
                    "succeeded".into()
                }
            }
            Kind::Job {
                plan, scheduled, ..
            } => {
                if let Some(a) = self.aborted
                    && a <= now
                {
                    return "aborted".into();
                }
                let Some(s) = scheduled else {
                    return "pending".into();
                };
                let start = s.at + plan.pending_for;
                if now < start {
                    return "pending".into();
                }
                if let Some(raw) = &plan.reports {
                    return raw.clone();
                }
                if now < start + plan.runs_for {
                    return "started".into();
                }
                match plan.outcome {
                    Outcome::Succeeded => "succeeded",
                    Outcome::Failed(_) => "failed",
                    Outcome::Errored(_) => "errored",
                }
                .into()
            }
        }
    }

    fn json(&self, inner: &Inner, now: Instant) -> Value {
        let pipeline = &inner.pipelines[self.pipeline];
        let status = self.status(now);
        let mut build = json!({
            "id": self.id,
            "team_name": pipeline.team,
            "name": self.name,
            "status": status,
            "api_url": format!("/api/v1/builds/{}", self.id),
            "pipeline_id": pipeline.id,
            "pipeline_name": pipeline.name,
        });
        if !pipeline.vars.is_empty() {
            build["pipeline_instance_vars"] = Value::Object(pipeline.vars.clone());
        }
        match &self.kind {
            Kind::Job {
                job,
                plan,
                scheduled,
            } => {
                build["job_name"] = json!(job);
                if let Some(s) = scheduled {
                    let start = s.at + plan.pending_for;
                    if now >= start && self.aborted.is_none_or(|a| a > start) {
                        build["start_time"] = json!(self.wall(start) / 1000);
                    }
                    if is_end(&status) {
                        let end = self
                            .aborted
                            .map_or(start + plan.runs_for, |a| a.min(start + plan.runs_for));
                        build["end_time"] = json!(self.wall(end) / 1000);
                    }
                }
            }
            Kind::Check { resource, .. } => {
                build["resource_name"] = json!(resource);
                build["start_time"] = json!(self.created_ms / 1000);
            }
        }
        if !inner.old_server {
            build["created_by"] = json!(self.created_by);
        }
        if let Some(comment) = &self.comment {
            build["comment"] = json!(comment);
        }
        build
    }
}

/// The instance vars of a request: `vars.<path>=<json>` pairs (dotted paths nest) or
/// `vars=<json object>`; an empty map for none. An unreadable value is an error text.
fn instance_vars(query: Option<&str>) -> Result<Map<String, Value>, String> {
    let mut vars = Map::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let parsed = || {
            serde_json::from_str::<Value>(&value)
                .map_err(|e| format!("invalid instance vars `{key}={value}`: {e}"))
        };
        if key == "vars" {
            match parsed()? {
                Value::Object(map) => vars.extend(map),
                _ => return Err("`vars` must be a JSON object".into()),
            }
        } else if let Some(path) = key.strip_prefix("vars.") {
            let value = parsed()?;
            let mut parts: Vec<&str> = path.split('.').collect();
            let last = parts.pop().unwrap_or_default();
            let mut at = &mut vars;
            for part in parts {
                let entry = at
                    .entry(part.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                at = entry.as_object_mut().expect("made an object above");
            }
            at.insert(last.to_owned(), value);
        }
    }
    Ok(vars)
}

fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn status_only(status: StatusCode) -> Response {
    status.into_response()
}

fn not_authorized() -> Response {
    (StatusCode::UNAUTHORIZED, "not authorized").into_response()
}

/// A request let in: the user it is from and a fault that acts after the work.
struct Call {
    user: String,
    after: Option<Fault>,
}

impl Concourse {
    /// Counts the request, applies a pending fault in `scope` that acts before the work,
    /// and checks the bearer token (unless `token`, the token endpoints).
    fn begin(&self, headers: &HeaderMap, scope: Scope) -> Result<Call, Box<Response>> {
        let mut inner = self.lock();
        let now = Instant::now();
        let user = if scope == Scope::Token {
            Some("token".to_owned())
        } else {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .and_then(|t| inner.tokens.get(t))
                .filter(|i| i.expires.is_none_or(|e| now < e))
                .map(|i| i.user.clone())
        };
        self.shared
            .meter
            .record(user.as_deref().unwrap_or("anonymous"));
        let fault = match inner.faults.front() {
            Some((s, _)) if *s == Scope::Any || *s == scope => {
                inner.faults.pop_front().map(|(_, f)| f)
            }
            _ => None,
        };
        match fault {
            Some(Fault::Status(code)) => return Err(Box::new(crate::proxy_error(code))),
            Some(Fault::RateLimited(secs)) => {
                return Err(Box::new(crate::too_many_requests(secs, false)));
            }
            _ => {}
        }
        let Some(user) = user else {
            return Err(Box::new(not_authorized()));
        };
        advance(&mut inner, now);
        Ok(Call { user, after: fault })
    }

    /// The answer, after a fault that acts after the work (garbage, a late answer).
    async fn answer(&self, call: Call, status: StatusCode, body: Value) -> Response {
        let garbage =
            (call.after == Some(Fault::Garbage)).then_some("<!DOCTYPE html><p>upgrade in progress");
        let late = match call.after {
            Some(Fault::Delay(d)) => Some(d),
            _ => None,
        };
        crate::after_work(status, body, garbage, late).await
    }
}

/// May `user` act in `team`? 404 for an unknown team, 403 for one they are not in.
fn team_access(inner: &Inner, user: &str, team: &str) -> Result<(), Box<Response>> {
    if !inner.teams.contains(team) {
        return Err(not_found());
    }
    if inner
        .users
        .get(user)
        .is_some_and(|u| u.teams.iter().any(|t| t == team))
    {
        Ok(())
    } else {
        Err(Box::new(status_only(StatusCode::FORBIDDEN)))
    }
}

/// The pipeline a request names: its team checked, its instance vars read from the query.
fn find_pipeline(
    inner: &Inner,
    user: &str,
    team: &str,
    name: &str,
    query: Option<&str>,
) -> Result<usize, Box<Response>> {
    team_access(inner, user, team)?;
    let vars =
        instance_vars(query).map_err(|e| Box::new((StatusCode::BAD_REQUEST, e).into_response()))?;
    inner
        .pipelines
        .iter()
        .position(|p| p.team == team && p.name == name && p.vars == vars)
        .ok_or_else(not_found)
}

/// The build `id`, its team checked.
fn find_build(inner: &Inner, user: &str, id: &str) -> Result<u64, Box<Response>> {
    let build = id
        .parse::<u64>()
        .ok()
        .and_then(|id| inner.builds.get(&id))
        .ok_or_else(not_found)?;
    team_access(inner, user, &inner.pipelines[build.pipeline].team)?;
    Ok(build.id)
}

async fn token_new(State(c): State<Concourse>, headers: HeaderMap, body: Bytes) -> Response {
    let old = c.lock().old_server;
    token(&c, &headers, &body, !old).await
}

async fn token_old(State(c): State<Concourse>, headers: HeaderMap, body: Bytes) -> Response {
    let old = c.lock().old_server;
    token(&c, &headers, &body, old).await
}

/// The password grant (RFC 6749 §4.3) with fly's client as HTTP Basic, as Dex answers it.
async fn token(c: &Concourse, headers: &HeaderMap, body: &[u8], exists: bool) -> Response {
    let call = match c.begin(headers, Scope::Token) {
        Ok(call) => call,
        Err(r) => return *r,
    };
    if !exists {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    }
    let oauth_error = |status: StatusCode, error: &str, description: &str| {
        (
            status,
            axum::Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{FLY_CLIENT_ID}:{FLY_CLIENT_SECRET}"))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client credentials.",
        );
    }
    let form: BTreeMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    if form.get("grant_type").map(String::as_str) != Some("password") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Unsupported grant type.",
        );
    }
    if !form
        .get("scope")
        .is_some_and(|s| s.split(' ').any(|s| s == "openid"))
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "Missing required scope(s) [\"openid\"].",
        );
    }
    let (username, password) = (
        form.get("username").cloned().unwrap_or_default(),
        form.get("password").cloned().unwrap_or_default(),
    );
    let issued = {
        let mut inner = c.lock();
        let known = inner
            .users
            .get(&username)
            .is_some_and(|u| u.password.as_deref() == Some(password.as_str()));
        known.then(|| {
            inner.issued += 1;
            let life = inner.token_life.unwrap_or(DEFAULT_TOKEN_LIFE);
            let value = format!("fake-access-token-{}", inner.issued);
            inner.tokens.insert(
                value.clone(),
                Issued {
                    user: username,
                    expires: Some(Instant::now() + life),
                },
            );
            (value, life)
        })
    };
    let Some((value, life)) = issued else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "access_denied",
            "Invalid username or password",
        );
    };
    let body = json!({
        "access_token": value,
        "token_type": "bearer",
        "expires_in": life.as_secs(),
        "id_token": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
    });
    c.answer(call, StatusCode::OK, body).await
}

/// What a handler answers: a status and a JSON body (`null`: no body), or a response as
/// it is (an error).
type Reply = Result<(StatusCode, Value), Box<Response>>;

fn ok(body: Value) -> Reply {
    Ok((StatusCode::OK, body))
}

fn not_found() -> Box<Response> {
    Box::new(status_only(StatusCode::NOT_FOUND))
}

impl Concourse {
    /// One API request: counted, its faults and token checked, then `f` run on the model
    /// (time moved on) with the caller's user name, and its reply sent after any fault
    /// that acts after the work.
    async fn handle(
        &self,
        headers: &HeaderMap,
        scope: Scope,
        f: impl FnOnce(&mut Inner, &str) -> Reply,
    ) -> Response {
        let call = match self.begin(headers, scope) {
            Ok(call) => call,
            Err(r) => return *r,
        };
        let reply = f(&mut self.lock(), &call.user);
        match reply {
            Ok((status, Value::Null)) => status.into_response(),
            Ok((status, body)) => self.answer(call, status, body).await,
            Err(r) => *r,
        }
    }
}

/// Adds a build of `kind` to pipeline `pipeline`, created by `user` now, named `name` (its
/// id when `None`); returns its id.
fn add_build(
    inner: &mut Inner,
    pipeline: usize,
    name: Option<String>,
    user: &str,
    kind: Kind,
) -> u64 {
    inner.next_id += 1;
    let id = inner.next_id;
    inner.builds.insert(
        id,
        Build {
            id,
            pipeline,
            name: name.unwrap_or_else(|| id.to_string()),
            created_by: user.to_owned(),
            created: Instant::now(),
            created_ms: now_ms(),
            comment: None,
            kind,
            aborted: None,
            sent: BTreeMap::new(),
        },
    );
    id
}

async fn user(State(c): State<Concourse>, headers: HeaderMap) -> Response {
    c.handle(&headers, Scope::Read, |inner, user| {
        let teams: Map<String, Value> = inner
            .users
            .get(user)
            .map(|u| {
                u.teams
                    .iter()
                    .map(|t| (t.clone(), json!(["member"])))
                    .collect()
            })
            .unwrap_or_default();
        ok(json!({
            "sub": format!("local:{user}"), "name": user, "user_id": user, "user_name": user,
            "email": "", "is_admin": false, "is_system": false, "teams": teams,
            "display_user_id": user,
        }))
    })
    .await
}

async fn team(
    State(c): State<Concourse>,
    Path(team): Path<String>,
    headers: HeaderMap,
) -> Response {
    c.handle(&headers, Scope::Read, |inner, user| {
        team_access(inner, user, &team)?;
        ok(json!({"id": 1, "name": team}))
    })
    .await
}

impl Pipeline {
    fn json(&self) -> Value {
        let mut p = json!({"id": self.id, "name": self.name, "paused": self.paused, "team_name": self.team});
        if !self.vars.is_empty() {
            p["instance_vars"] = Value::Object(self.vars.clone());
        }
        p
    }
}

async fn pipelines(
    State(c): State<Concourse>,
    Path(team): Path<String>,
    headers: HeaderMap,
) -> Response {
    c.handle(&headers, Scope::Read, |inner, user| {
        team_access(inner, user, &team)?;
        ok(inner
            .pipelines
            .iter()
            .filter(|p| p.team == team)
            .map(Pipeline::json)
            .collect())
    })
    .await
}

async fn pipeline(
    State(c): State<Concourse>,
    Path((team, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    c.handle(&headers, Scope::Read, |inner, user| {
        let i = find_pipeline(inner, user, &team, &name, query.as_deref())?;
        ok(inner.pipelines[i].json())
    })
    .await
}

/// The job `job` of pipeline `i`, or a 404.
fn find_job<'a>(inner: &'a mut Inner, i: usize, job: &str) -> Result<&'a mut Job, Box<Response>> {
    inner.pipelines[i]
        .jobs
        .iter_mut()
        .find(|j| j.name == job)
        .ok_or_else(not_found)
}

async fn job(
    State(c): State<Concourse>,
    Path((team, name, job)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    c.handle(&headers, Scope::Read, |inner, user| {
        let i = find_pipeline(inner, user, &team, &name, query.as_deref())?;
        let j = find_job(inner, i, &job)?;
        let inputs: Vec<Value> = j
            .inputs
            .iter()
            .map(|r| json!({"name": r, "resource": r, "trigger": false}))
            .collect();
        let mut body = json!({
            "name": j.name, "paused": j.paused,
            "disable_manual_trigger": j.manual_trigger_disabled, "inputs": inputs,
        });
        body["pipeline_name"] = json!(name);
        body["team_name"] = json!(team);
        ok(body)
    })
    .await
}

async fn list_builds(
    State(c): State<Concourse>,
    Path((team, name, job)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    c.handle(&headers, Scope::Read, |inner, user| {
        let i = find_pipeline(inner, user, &team, &name, query.as_deref())?;
        find_job(inner, i, &job)?;
        // `atc.PaginationAPIDefaultLimit`.
        let limit = query_value(query.as_deref(), "limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0)
            .unwrap_or(100);
        let now = Instant::now();
        ok(inner
            .builds
            .values()
            .rev()
            .filter(|b| b.pipeline == i)
            .filter(|b| matches!(&b.kind, Kind::Job { job: j, .. } if *j == job))
            .take(limit)
            .map(|b| b.json(inner, now))
            .collect())
    })
    .await
}

async fn create_build(
    State(c): State<Concourse>,
    Path((team, name, job)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    c.handle(&headers, Scope::Create, |inner, user| {
        let i = find_pipeline(inner, user, &team, &name, query.as_deref())?;
        let j = find_job(inner, i, &job)?;
        if j.manual_trigger_disabled {
            return Err(Box::new(status_only(StatusCode::CONFLICT)));
        }
        j.builds += 1;
        let (number, plan) = (j.builds, j.plan.clone());
        let kind = Kind::Job {
            job,
            plan,
            scheduled: None,
        };
        let id = add_build(inner, i, Some(number.to_string()), user, kind);
        let now = Instant::now();
        advance(inner, now);
        ok(inner.builds[&id].json(inner, now))
    })
    .await
}

async fn check(
    State(c): State<Concourse>,
    Path((team, name, resource)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    c.handle(&headers, Scope::Check, |inner, user| {
        // `atc.CheckRequestBody`: `{"from": <version or null>}`.
        let bad = || Box::new(status_only(StatusCode::BAD_REQUEST));
        let from = match serde_json::from_slice::<Value>(&body)
            .map_err(|_| bad())?
            .get("from")
        {
            None | Some(Value::Null) => None,
            Some(Value::Object(version)) => Some(version.clone()),
            Some(_) => return Err(bad()),
        };
        let i = find_pipeline(inner, user, &team, &name, query.as_deref())?;
        let r = inner.pipelines[i]
            .resources
            .iter()
            .find(|r| r.name == resource)
            .ok_or_else(not_found)?;
        let kind = Kind::Check {
            takes: r.check_for,
            error: r.check_error.clone(),
            resource,
            from,
            applied: false,
        };
        let id = add_build(inner, i, None, user, kind);
        Ok((
            StatusCode::CREATED,
            inner.builds[&id].json(inner, Instant::now()),
        ))
    })
    .await
}

/// A route on build `id`: its team checked, `f` run on it.
async fn on_build(
    c: &Concourse,
    headers: &HeaderMap,
    scope: Scope,
    id: &str,
    f: impl FnOnce(&mut Inner, u64, Instant) -> Reply,
) -> Response {
    c.handle(headers, scope, |inner, user| {
        let id = find_build(inner, user, id)?;
        f(inner, id, Instant::now())
    })
    .await
}

async fn show_build(
    State(c): State<Concourse>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    on_build(&c, &headers, Scope::Read, &id, |inner, id, now| {
        ok(inner.builds[&id].json(inner, now))
    })
    .await
}

/// `GET /api/v1/builds/{id}/preparation` and `…/resources`.
async fn build_part(
    State(c): State<Concourse>,
    Path((id, part)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let read: fn(&Inner, u64, Instant) -> Value = match part.as_str() {
        "preparation" => preparation,
        "resources" => build_resources,
        _ => return status_only(StatusCode::NOT_FOUND),
    };
    on_build(&c, &headers, Scope::Read, &id, |inner, id, now| {
        ok(read(inner, id, now))
    })
    .await
}

/// Why build `id` waits, as `atc.BuildPreparation`.
fn preparation(inner: &Inner, id: u64, now: Instant) -> Value {
    let build = &inner.builds[&id];
    let word = |blocking: bool| if blocking { "blocking" } else { "not_blocking" };
    let (b, inputs) = match &build.kind {
        Kind::Job {
            job,
            scheduled: None,
            ..
        } if build.aborted.is_none() => {
            let inputs: Vec<String> = inner.pipelines[build.pipeline]
                .jobs
                .iter()
                .find(|j| &j.name == job)
                .map(|j| j.inputs.clone())
                .unwrap_or_default();
            (blockers(inner, build, job, now), inputs)
        }
        Kind::Job {
            scheduled: Some(s), ..
        } => (
            Blockers::default(),
            s.inputs.iter().map(|(n, _)| n.clone()).collect(),
        ),
        _ => (Blockers::default(), Vec::new()),
    };
    let missing: Map<String, Value> = b
        .missing
        .iter()
        .map(|(n, r)| (n.clone(), json!(r)))
        .collect();
    let inputs: Map<String, Value> = inputs
        .iter()
        .map(|n| (n.clone(), json!(word(missing.contains_key(n)))))
        .collect();
    json!({
        "build_id": id,
        "paused_pipeline": word(b.paused_pipeline),
        "paused_job": word(b.paused_job),
        "max_running_builds": word(b.max_running),
        "inputs": inputs,
        "inputs_satisfied": word(!missing.is_empty()),
        "missing_input_reasons": missing,
    })
}

/// Build `id`'s inputs and outputs, as `atc.BuildInputsOutputs`.
fn build_resources(inner: &Inner, id: u64, now: Instant) -> Value {
    let build = &inner.builds[&id];
    let pipeline_id = inner.pipelines[build.pipeline].id;
    let (inputs, outputs) = match &build.kind {
        Kind::Job {
            plan, scheduled, ..
        } => {
            let inputs: Vec<Value> = scheduled
                .iter()
                .flat_map(|s| &s.inputs)
                .map(|(name, version)| {
                    json!({"name": name, "version": version, "pipeline_id": pipeline_id, "first_occurrence": true})
                })
                .collect();
            let outputs: Vec<Value> = if build.status(now) == "succeeded" {
                plan.outputs
                    .iter()
                    .map(|(name, version)| json!({"name": name, "version": version}))
                    .collect()
            } else {
                Vec::new()
            };
            (inputs, outputs)
        }
        Kind::Check { .. } => (Vec::new(), Vec::new()),
    };
    json!({"inputs": inputs, "outputs": outputs})
}

/// `PUT /api/v1/builds/{id}/abort` and `…/comment`.
async fn build_action(
    State(c): State<Concourse>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match action.as_str() {
        "abort" => abort(&c, &headers, &id).await,
        "comment" => comment(&c, &headers, &id, &body).await,
        _ => status_only(StatusCode::NOT_FOUND),
    }
}

async fn abort(c: &Concourse, headers: &HeaderMap, id: &str) -> Response {
    on_build(c, headers, Scope::Abort, id, |inner, id, now| {
        // Only a running build (`pending` or `started`) is aborted; any other stays as it is.
        if let Some(build) = inner.builds.get_mut(&id)
            && build.aborted.is_none()
            && matches!(build.status(now).as_str(), "pending" | "started")
        {
            build.aborted = Some(now);
        }
        Ok((StatusCode::NO_CONTENT, Value::Null))
    })
    .await
}

async fn comment(c: &Concourse, headers: &HeaderMap, id: &str, body: &[u8]) -> Response {
    c.handle(headers, Scope::Any, |inner, user| {
        if inner.old_server {
            return Err(Box::new(
                (StatusCode::NOT_FOUND, "404 page not found\n").into_response(),
            ));
        }
        let id = find_build(inner, user, id)?;
        let text = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("comment").and_then(Value::as_str).map(str::to_owned))
            .ok_or_else(|| Box::new(status_only(StatusCode::BAD_REQUEST)))?;
        if let Some(build) = inner.builds.get_mut(&id) {
            build.comment = Some(text);
        }
        Ok((StatusCode::OK, Value::Null))
    })
    .await
}

/// Where an event stream is.
struct Stream {
    concourse: Concourse,
    id: u64,
    next: u64,
    sent: usize,
    cut_after: Option<usize>,
    ended: bool,
}

/// One SSE message as `go-sse` writes it: `id`, `event`, then `data`, then a blank line.
fn sse(id: u64, name: &str, data: Option<&str>) -> Bytes {
    let mut text = format!("id: {id}\nevent: {name}\n");
    if let Some(data) = data {
        text.push_str(&format!("data: {data}\n"));
    }
    text.push('\n');
    Bytes::from(text)
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut inner = self.concourse.lock();
        inner.streams_open = inner.streams_open.saturating_sub(1);
    }
}

impl Stream {
    /// The next chunk to send: an event, the `end`, or nothing yet (and how long to wait).
    fn next_chunk(&mut self) -> Result<Option<Bytes>, Duration> {
        let mut inner = self.concourse.lock();
        let now = Instant::now();
        advance(&mut inner, now);
        let Some(build) = inner.builds.get(&self.id) else {
            return Ok(None);
        };
        let events = build.events();
        let over = is_end(&build.status(now)) && events.iter().all(|e| e.at <= now);
        match events.get(self.next as usize) {
            Some(e) if e.at <= now => {
                let envelope =
                    json!({"event": e.kind, "version": e.version, "data": e.data}).to_string();
                let chunk = sse(self.next, "event", Some(&envelope));
                let wall = now_ms();
                if let Some(build) = inner.builds.get_mut(&self.id) {
                    build.sent.entry(self.next).or_insert(wall);
                }
                self.next += 1;
                self.sent += 1;
                Ok(Some(chunk))
            }
            Some(e) => Err(e.at.saturating_duration_since(now).min(STREAM_TICK)),
            None if over => {
                self.ended = true;
                Ok(Some(sse(self.next, "end", None)))
            }
            None => Err(STREAM_TICK),
        }
    }
}

async fn events(
    State(c): State<Concourse>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let call = match c.begin(&headers, Scope::Events) {
        Ok(call) => call,
        Err(r) => return *r,
    };
    let id = match find_build(&c.lock(), &call.user, &id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    // `Last-Event-ID: n` resumes with event n + 1; an unreadable one is a 400.
    let next = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => 0,
        Some(Ok(text)) => match text.trim().parse::<u64>() {
            Ok(n) => n + 1,
            Err(_) => return status_only(StatusCode::BAD_REQUEST),
        },
        Some(Err(_)) => return status_only(StatusCode::BAD_REQUEST),
    };
    {
        let mut inner = c.lock();
        inner.streams_opened += 1;
        inner.streams_open += 1;
    }
    let cut_after = match call.after {
        Some(Fault::CutAfter(n)) => Some(n),
        _ => None,
    };
    let stream = Stream {
        concourse: c,
        id,
        next,
        sent: 0,
        cut_after,
        ended: false,
    };
    let body = futures::stream::unfold(stream, |mut s| async move {
        loop {
            if s.ended {
                // The server holds the connection open after `end` until the client goes.
                futures::future::pending::<()>().await;
            }
            if s.cut_after == Some(s.sent) {
                return None;
            }
            match s.next_chunk() {
                Ok(Some(chunk)) => return Some((Ok::<_, Infallible>(chunk), s)),
                Ok(None) => return None,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("cache-control", "no-cache, no-store, must-revalidate")
        .header("x-accel-buffering", "no")
        .header("x-atc-stream-version", "2.0")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| status_only(StatusCode::INTERNAL_SERVER_ERROR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_vars_are_json_values_in_either_form() {
        let vars = instance_vars(Some("vars.branch=%22main%22&vars.n=3&limit=5")).unwrap();
        assert_eq!(Value::Object(vars), json!({"branch": "main", "n": 3}));
        let vars = instance_vars(Some("vars=%7B%22branch%22%3A%22main%22%7D")).unwrap();
        assert_eq!(Value::Object(vars), json!({"branch": "main"}));
        let nested = instance_vars(Some("vars.a.b=%22x%22")).unwrap();
        assert_eq!(Value::Object(nested), json!({"a": {"b": "x"}}));
        assert!(
            instance_vars(Some("vars.branch=main")).is_err(),
            "strings are quoted JSON"
        );
        assert!(instance_vars(None).unwrap().is_empty());
    }

    #[test]
    fn a_build_waits_for_its_blockers_then_runs_through_its_events() {
        let ci = Concourse::new();
        ci.add_user("u", "p", &["main"]);
        let setup = ci
            .pipeline("main", "app")
            .paused(true)
            .resource("repo", &[])
            .job(
                "j",
                BuildPlan::new()
                    .pending_for(Duration::ZERO)
                    .runs_for(Duration::from_millis(100))
                    .logs(&["a\n", "b\n"]),
            )
            .job_inputs("j", &["repo"]);
        let id = {
            let mut inner = ci.lock();
            let plan = inner.pipelines[0].jobs[0].plan.clone();
            let kind = Kind::Job {
                job: "j".into(),
                plan,
                scheduled: None,
            };
            add_build(&mut inner, 0, Some("1".into()), "u", kind)
        };
        assert_eq!(ci.job_builds()[0].status, "pending");
        let setup = setup.paused(false);
        assert_eq!(
            ci.job_builds()[0].status,
            "pending",
            "no version of repo yet"
        );
        setup.upstream("repo", json!({"ref": "abc"}));
        assert_eq!(ci.job_builds()[0].status, "pending", "not checked yet");
        ci.pipeline("main", "app")
            .resource("repo", &[json!({"ref": "abc"})]);
        assert_eq!(ci.job_builds()[0].status, "started");
        assert_eq!(
            ci.job_builds()[0].inputs,
            [("repo".into(), json!({"ref": "abc"}))]
        );
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(ci.job_builds()[0].status, "succeeded");
        let inner = ci.lock();
        let kinds: Vec<&str> = inner.builds[&id].events().iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                "status",
                "initialize-task",
                "start-task",
                "log",
                "log",
                "finish-task",
                "status"
            ]
        );
    }
}
