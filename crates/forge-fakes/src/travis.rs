//! Travis CI's API v3, as `docs/adapters/travis.md` uses it: build requests that are
//! processed a moment after they are posted and then get a build (or are rejected, or never
//! get one), builds whose jobs move from `created` through `queued` and `started` to
//! `passed`, `failed` or `errored` as real time passes, a cancel that takes a moment, plain
//! text job logs, the per-repository limit on API requests, and the signed webhook
//! notification Travis posts when a build starts or ends.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use baton_forge_fakes::travis::{BuildPlan, JobPlan, Travis};
//! let travis = Travis::new();
//! travis.add_token("ci", "travis-secret");
//! travis.repo("octo/app").plan(BuildPlan::new(vec![
//!     JobPlan::passes().runs_for(Duration::from_secs(2)),
//! ]));
//! let served = travis.serve().await?;
//! # Ok(()) }
//! ```
//!
//! Facts followed (the travis-api source): paths under `/v3` or with `Travis-API-Version: 3`
//! reach v3, anything else the legacy API, which knows none of these routes (`opt_in.rb`);
//! `Authorization: token <token>`, a missing one `403 login_required`, an unknown or
//! revoked one `403 wrong_credentials` (`v3.rb`, `access_control`); errors as
//! `{"@type": "error", "error_type", "error_message", …}` (`renderer/error.rb`); the slug
//! is one path segment (`owner%2Fname`); a create answers `202` with `remaining_requests`
//! counted before the new request, and `429 request_limit_reached` with `max_requests` and
//! `per_seconds` once the repository's API requests of the last hour reach the limit (10 by
//! default, `services/requests/create.rb`, `queries/requests.rb`); a new request is
//! `pending` with no commit until it is processed (`queries/request.rb`); a cancel answers
//! `202` whatever the build's state (`services/build/cancel.rb`).
//!
//! Every request is counted in the [`Meter`] under the token's name (`anonymous` without a
//! known token).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::travis_signing::{config_document, form_body, sign};
use crate::{Meter, Served, lock, now_ms};

/// How a job ends once it has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobResult {
    /// `passed`.
    Passed,
    /// `failed`: the script failed.
    Failed,
    /// `errored`: the install or setup phase failed (Travis's infrastructure or config error).
    Errored,
}

impl JobResult {
    fn state(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Errored => "errored",
        }
    }
}

/// One job of a build plan; the jobs of a build run side by side.
#[derive(Debug, Clone)]
pub struct JobPlan {
    runs_for: Duration,
    result: JobResult,
    log: String,
}

impl JobPlan {
    fn ending(result: JobResult, tail: &str) -> Self {
        let log = format!(
            "travis_fold:start:worker_info\r\u{1b}[0K\u{1b}[33;1mWorker information\u{1b}[0m\nhostname: fake-travis\ntravis_fold:end:worker_info\r\u{1b}[0K\n$ ./ci.sh\n{tail}"
        );
        Self {
            runs_for: Duration::from_millis(500),
            result,
            log,
        }
    }

    /// A job that runs half a second and passes.
    pub fn passes() -> Self {
        Self::ending(JobResult::Passed, "ok\n\nDone. Your build exited with 0.\n")
    }

    /// A job whose script fails, its log ending in `tail`.
    pub fn fails(tail: &str) -> Self {
        Self::ending(JobResult::Failed, tail)
    }

    /// A job that errors (its install step failed), its log ending in `tail`.
    pub fn errors(tail: &str) -> Self {
        Self::ending(JobResult::Errored, tail)
    }

    /// How long it runs once started.
    pub fn runs_for(mut self, d: Duration) -> Self {
        self.runs_for = d;
        self
    }

    /// Its whole log (`log.txt`), replacing the default.
    pub fn log(mut self, text: &str) -> Self {
        self.log = text.to_owned();
        self
    }
}

/// What becomes of a request once Travis has processed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted, with a build.
    Build,
    /// `rejected`, with this message (a branch excluded, a config error).
    Rejected(String),
    /// Accepted, and no build ever appears (travis-ci/travis-api#210).
    NoBuild,
}

/// What a new request of a repository does.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    jobs: Vec<JobPlan>,
    outcome: Outcome,
    processed_after: Duration,
    build_after: Duration,
    created_for: Duration,
    received_for: Duration,
    cancel_takes: Duration,
    reports: Option<String>,
}

impl BuildPlan {
    /// A build of `jobs`: the request is processed after 100 ms and its build appears after
    /// 200 ms, `created` then `received` for 100 ms each, then `started`; a cancel takes
    /// 300 ms.
    pub fn new(jobs: Vec<JobPlan>) -> Self {
        Self {
            jobs,
            outcome: Outcome::Build,
            processed_after: Duration::from_millis(100),
            build_after: Duration::from_millis(200),
            created_for: Duration::from_millis(100),
            received_for: Duration::from_millis(100),
            cancel_takes: Duration::from_millis(300),
            reports: None,
        }
    }

    /// The request is rejected with `message` once processed.
    pub fn rejected(mut self, message: &str) -> Self {
        self.outcome = Outcome::Rejected(message.to_owned());
        self
    }

    /// The request is accepted and never gets a build.
    pub fn no_build(mut self) -> Self {
        self.outcome = Outcome::NoBuild;
        self
    }

    /// How long after its creation the request is processed, and its build appears.
    pub fn build_after(mut self, processed: Duration, build: Duration) -> Self {
        self.processed_after = processed;
        self.build_after = build.max(processed);
        self
    }

    /// How long the build stays `created`, then `received`, before it starts.
    pub fn queued_for(mut self, created: Duration, received: Duration) -> Self {
        self.created_for = created;
        self.received_for = received;
        self
    }

    /// How long after a cancel the build shows `canceled`.
    pub fn cancel_takes(mut self, d: Duration) -> Self {
        self.cancel_takes = d;
        self
    }

    /// The build reports `state` (one baton has never seen) whatever happens.
    pub fn reports(mut self, state: &str) -> Self {
        self.reports = Some(state.to_owned());
        self
    }
}

impl Default for BuildPlan {
    fn default() -> Self {
        Self::new(vec![JobPlan::passes()])
    }
}

/// An awkward answer and the requests it hits, switched on by [`Travis::fault`].
pub use crate::{Fault, Scope};

#[derive(Debug)]
struct Repo {
    id: u64,
    owner: String,
    name: String,
    plan: BuildPlan,
    branch_plans: BTreeMap<String, BuildPlan>,
    limit: u32,
    window: Duration,
    builds: u64,
}

impl Repo {
    fn slug(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    fn minimal(&self) -> Value {
        json!({
            "@type": "repository",
            "@href": format!("/repo/{}", self.id),
            "@representation": "minimal",
            "id": self.id,
            "name": self.name,
            "slug": self.slug(),
        })
    }
}

#[derive(Debug)]
struct TravisRequest {
    id: u64,
    repo: usize,
    branch: String,
    sha: Option<String>,
    message: Option<String>,
    config: Value,
    merge_mode: Option<String>,
    plan: BuildPlan,
    build: Option<u64>,
    born: Instant,
    born_ms: u64,
}

#[derive(Debug)]
struct Build {
    id: u64,
    number: u64,
    request: u64,
    repo: usize,
    job_ids: Vec<u64>,
    plan: BuildPlan,
    /// When the build appears (its request's birth plus `build_after`).
    born: Instant,
    born_ms: u64,
    cancelled: Option<Instant>,
}

/// A build's state and each job's at one instant, with the times Travis reports.
#[derive(Debug, Clone)]
struct Snapshot {
    state: String,
    jobs: Vec<String>,
    started: Option<Duration>,
    finished: Option<Duration>,
    job_started: Vec<Option<Duration>>,
    job_finished: Vec<Option<Duration>>,
}

#[derive(Debug)]
struct Token {
    name: String,
    push: bool,
}

#[derive(Debug, Default)]
struct Inner {
    repos: Vec<Repo>,
    requests: BTreeMap<u64, TravisRequest>,
    builds: BTreeMap<u64, Build>,
    tokens: BTreeMap<String, Token>,
    revoked: BTreeSet<String>,
    faults: VecDeque<(Scope, Fault)>,
    next_id: u64,
    /// Creates answer as older versions did, without the request's id.
    anonymous_requests: bool,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    meter: Meter,
    url: Mutex<String>,
}

/// The model: cheap to clone, every clone the same Travis.
#[derive(Debug, Clone, Default)]
pub struct Travis {
    shared: Arc<Shared>,
}

/// Sets up a repository; see [`Travis::repo`].
#[derive(Debug)]
pub struct RepoSetup {
    travis: Travis,
    slug: String,
}

impl RepoSetup {
    fn edit(self, f: impl FnOnce(&mut Repo)) -> Self {
        {
            let mut inner = self.travis.lock();
            if let Some(repo) = inner.repos.iter_mut().find(|r| r.slug() == self.slug) {
                f(repo);
            }
        }
        self
    }

    /// Its numeric id.
    pub fn id(self, id: u64) -> Self {
        self.edit(|r| r.id = id)
    }

    /// What its new requests do.
    pub fn plan(self, plan: BuildPlan) -> Self {
        self.edit(|r| r.plan = plan)
    }

    /// What its new requests for `branch` do (other branches follow [`RepoSetup::plan`]).
    pub fn plan_for_branch(self, branch: &str, plan: BuildPlan) -> Self {
        let branch = branch.to_owned();
        self.edit(|r| {
            r.branch_plans.insert(branch, plan);
        })
    }

    /// Its limit on API requests: `limit` in any `window` (Travis: 10 an hour).
    pub fn limit(self, limit: u32, window: Duration) -> Self {
        self.edit(|r| {
            r.limit = limit;
            r.window = window;
        })
    }
}

/// A request as the model sees it now, for test assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestView {
    /// Its id.
    pub id: u64,
    /// `owner/name`.
    pub repo: String,
    /// The branch asked for.
    pub branch: String,
    /// The commit asked for, if any.
    pub sha: Option<String>,
    /// The message asked for, if any.
    pub message: Option<String>,
    /// The config asked for (`null` when none).
    pub config: Value,
    /// The merge mode asked for.
    pub merge_mode: Option<String>,
    /// Its build, once it has one.
    pub build: Option<u64>,
}

/// A build as the model sees it now, for test assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildView {
    /// Its id.
    pub id: u64,
    /// Its number in the repository.
    pub number: String,
    /// Its state now.
    pub state: String,
    /// Each job's number and state now.
    pub jobs: Vec<(String, String)>,
}

/// `ms` since the epoch as Travis writes times: `2018-06-25T12:58:48Z`.
fn time(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// Travis's error body, with `extra` fields.
fn error(status: StatusCode, kind: &str, message: &str, extra: Value) -> Response {
    let mut body = json!({"@type": "error", "error_type": kind, "error_message": message});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    (status, axum::Json(body)).into_response()
}

fn not_found(resource: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("{resource} not found (or insufficient access)"),
        json!({"resource_type": resource}),
    )
}

fn is_end(state: &str) -> bool {
    matches!(state, "passed" | "failed" | "errored" | "canceled")
}

/// Who is calling, as the middleware found out.
#[derive(Debug, Clone)]
struct Caller {
    push: bool,
}

impl Travis {
    /// An empty Travis: no repositories, no tokens.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.shared.inner)
    }

    /// Accepts `value` as an API token with push access to every repository, counted in the
    /// meter as `name`.
    pub fn add_token(&self, name: &str, value: &str) {
        self.lock().tokens.insert(
            value.to_owned(),
            Token {
                name: name.to_owned(),
                push: true,
            },
        );
    }

    /// Accepts `value` as the token of a user who may read but not push: creating a request
    /// or cancelling a build is refused.
    pub fn add_read_token(&self, name: &str, value: &str) {
        self.lock().tokens.insert(
            value.to_owned(),
            Token {
                name: name.to_owned(),
                push: false,
            },
        );
    }

    /// Revokes token `value` (a user who regenerated their token): it is refused from now.
    pub fn revoke(&self, value: &str) {
        self.lock().revoked.insert(value.to_owned());
    }

    /// The repository `owner/name` (created with the next free id, the default plan and a
    /// limit of 10 requests an hour if new).
    pub fn repo(&self, slug: &str) -> RepoSetup {
        {
            let mut inner = self.lock();
            if !inner.repos.iter().any(|r| r.slug() == slug) {
                inner.next_id += 1;
                let (owner, name) = slug.split_once('/').unwrap_or(("owner", slug));
                let repo = Repo {
                    id: inner.next_id,
                    owner: owner.to_owned(),
                    name: name.to_owned(),
                    plan: BuildPlan::default(),
                    branch_plans: BTreeMap::new(),
                    limit: 10,
                    window: Duration::from_secs(3600),
                    builds: 0,
                };
                inner.repos.push(repo);
            }
        }
        RepoSetup {
            travis: self.clone(),
            slug: slug.to_owned(),
        }
    }

    /// Creates answer as travis-api did before its `202` named the request
    /// (`queries/request.rb` returned the payload without an `id`).
    pub fn answer_creates_without_ids(&self) {
        self.lock().anonymous_requests = true;
    }

    /// The next `n` requests in `scope` meet `fault`.
    pub fn fault(&self, n: usize, scope: Scope, fault: Fault) {
        let mut inner = self.lock();
        inner.faults.extend(std::iter::repeat_n((scope, fault), n));
    }

    /// How many requests were created, in all repositories.
    pub fn requests_created(&self) -> usize {
        self.lock().requests.len()
    }

    /// Every request, oldest first.
    pub fn requests(&self) -> Vec<RequestView> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .requests
            .values()
            .map(|r| RequestView {
                id: r.id,
                repo: inner.repos[r.repo].slug(),
                branch: r.branch.clone(),
                sha: r.sha.clone(),
                message: r.message.clone(),
                config: r.config.clone(),
                merge_mode: r.merge_mode.clone(),
                build: r
                    .build
                    .filter(|b| inner.builds.get(b).is_some_and(|b| now >= b.born)),
            })
            .collect()
    }

    /// Every build that has appeared, oldest first.
    pub fn builds(&self) -> Vec<BuildView> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .builds
            .values()
            .filter(|b| now >= b.born)
            .map(|b| {
                let snap = b.at(now);
                BuildView {
                    id: b.id,
                    number: b.number.to_string(),
                    state: snap.state,
                    jobs: snap
                        .jobs
                        .into_iter()
                        .enumerate()
                        .map(|(i, s)| (format!("{}.{}", b.number, i + 1), s))
                        .collect(),
                }
            })
            .collect()
    }

    /// The request counts.
    pub fn meter(&self) -> &Meter {
        &self.shared.meter
    }

    fn base(&self) -> String {
        lock(&self.shared.url).clone()
    }

    /// The webhook notification Travis posts for build `build_id` as it is now: the form
    /// body (`payload=<json>`), the `Signature` header (signed with the test key the model
    /// serves at `/config`) and the `Travis-Repo-Slug` header. `None` for a build that has
    /// not started yet (Travis notifies when a build starts and when it ends).
    pub fn notification(&self, build_id: u64) -> Option<(String, String, String)> {
        let inner = self.lock();
        let build = inner.builds.get(&build_id)?;
        let now = Instant::now();
        if now < build.born {
            return None;
        }
        let request = inner.requests.get(&build.request)?;
        let repo = &inner.repos[build.repo];
        let snap = build.at(now);
        if snap.started.is_none() && snap.finished.is_none() {
            return None;
        }
        let (status, status_message) = match snap.state.as_str() {
            "passed" => (Some(0), "Passed"),
            "failed" => (Some(1), "Failed"),
            "errored" => (Some(1), "Errored"),
            "canceled" => (Some(1), "Canceled"),
            _ => (None, "Pending"),
        };
        let at =
            |offset: Option<Duration>| offset.map(|d| time(build.born_ms + d.as_millis() as u64));
        let sha = request.commit_sha();
        let message = request.commit_message();
        let matrix: Vec<Value> = build
            .job_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let state = &snap.jobs[i];
                let result = match state.as_str() {
                    "passed" => Some(0),
                    s if is_end(s) => Some(1),
                    _ => None,
                };
                json!({
                    "id": id, "repository_id": repo.id, "parent_id": build.id,
                    "number": format!("{}.{}", build.number, i + 1), "state": state,
                    "config": {}, "status": result, "result": result, "commit": sha,
                    "branch": request.branch, "message": message,
                    "started_at": at(snap.job_started[i]), "finished_at": at(snap.job_finished[i]),
                    "allow_failure": false,
                })
            })
            .collect();
        let duration = match (snap.started, snap.finished) {
            (Some(s), Some(f)) => Some(f.saturating_sub(s).as_secs()),
            _ => None,
        };
        let payload = json!({
            "id": build.id,
            "number": build.number.to_string(),
            "config": {},
            "type": "api",
            "state": snap.state,
            "status": status,
            "result": status,
            "status_message": status_message,
            "result_message": status_message,
            "started_at": at(snap.started),
            "finished_at": at(snap.finished),
            "duration": duration,
            "build_url": format!("{}/{}/builds/{}", self.base(), repo.slug(), build.id),
            "commit_id": build.request,
            "commit": sha,
            "base_commit": null,
            "head_commit": null,
            "branch": request.branch,
            "message": message,
            "compare_url": null,
            "committed_at": time(request.born_ms),
            "author_name": "baton",
            "author_email": "baton@example.invalid",
            "committer_name": "baton",
            "committer_email": "baton@example.invalid",
            "pull_request": false,
            "pull_request_number": null,
            "pull_request_title": null,
            "tag": null,
            "repository": {
                "id": repo.id, "name": repo.name, "owner_name": repo.owner, "url": null,
            },
            "matrix": matrix,
        });
        let text = payload.to_string();
        Some((form_body(&text), sign(&text), repo.slug()))
    }

    /// The routes of the API, at the root and below `/v3`.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/repo/{slug}/requests", post(create).get(list_requests))
            .route("/repo/{slug}/request/{id}", get(show_request))
            .route("/build/{id}", get(show_build))
            .route("/build/{id}/cancel", post(cancel_build))
            .route("/job/{id}", get(show_job))
            .route("/job/{id}/log.txt", get(job_log));
        Router::new()
            .route("/config", get(|| async { axum::Json(config_document()) }))
            .nest("/v3", api.clone())
            .merge(api)
            .fallback(|| async { not_found("resource") })
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                gatekeeper,
            ))
            .with_state(self.clone())
    }

    /// Serves the model from the current runtime.
    pub async fn serve(&self) -> std::io::Result<Served> {
        Ok(crate::serve(self.router())
            .await?
            .recorded(&self.shared.url))
    }

    /// Serves the model from a runtime of its own.
    pub fn serve_in_background(&self) -> std::io::Result<Served> {
        let served = crate::serve_in_background(|| self.router())?;
        Ok(served.recorded(&self.shared.url))
    }

    /// Counts the request and takes the first pending fault that applies to it.
    fn admit(&self, headers: &HeaderMap, scope: Scope) -> (Option<Token>, bool, Option<Fault>) {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("token "))
            .map(str::trim);
        let mut inner = self.lock();
        let known = token
            .filter(|t| !inner.revoked.contains(*t))
            .and_then(|t| inner.tokens.get(t))
            .map(|t| Token {
                name: t.name.clone(),
                push: t.push,
            });
        self.shared
            .meter
            .record(known.as_ref().map_or("anonymous", |t| t.name.as_str()));
        let fault = match inner.faults.front() {
            Some((s, _)) if *s == Scope::Any || *s == scope => {
                inner.faults.pop_front().map(|(_, f)| f)
            }
            _ => None,
        };
        (known, token.is_some(), fault)
    }
}

/// Everything every route shares, in the order Travis's stack meets it: the meter, the
/// version (a path outside `/v3` without `Travis-API-Version: 3` reaches the legacy API,
/// which has none of these routes), a fault that acts before the work, the token, then
/// the route, then a fault that acts on the answer.
async fn gatekeeper(State(travis): State<Travis>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let scope = match *request.method() {
        Method::GET => Scope::Read,
        Method::POST if path.ends_with("/requests") => Scope::Create,
        _ => Scope::Any,
    };
    let headers = request.headers();
    let (token, sent_token, fault) = travis.admit(headers, scope);
    if path == "/config" {
        return next.run(request).await;
    }
    let v3 = path.starts_with("/v3/")
        || headers
            .get("travis-api-version")
            .is_some_and(|v| v.as_bytes() == b"3");
    if !v3 {
        // The legacy (v2) API: a page it does not have.
        return (
            StatusCode::NOT_FOUND,
            [("content-type", "text/html")],
            "<h1>Not Found</h1>",
        )
            .into_response();
    }
    match fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            return (status, "<html><body><h1>502 Bad Gateway</h1></body></html>").into_response();
        }
        Some(Fault::RateLimited(secs)) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                "Too Many Requests\n",
            )
                .into_response();
        }
        _ => {}
    }
    let Some(token) = token else {
        return if sent_token {
            error(
                StatusCode::FORBIDDEN,
                "wrong_credentials",
                "access denied",
                json!({}),
            )
        } else {
            error(
                StatusCode::FORBIDDEN,
                "login_required",
                "login required",
                json!({}),
            )
        };
    };
    request.extensions_mut().insert(Caller { push: token.push });
    let answer = next.run(request).await;
    match fault {
        Some(Fault::Garbage) => (
            StatusCode::OK,
            [("content-type", "text/html")],
            "<!DOCTYPE html><title>Travis CI is down for maintenance</title>",
        )
            .into_response(),
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            answer
        }
        Some(Fault::Hangup) => crate::hang_up(),
        _ => answer,
    }
}

impl TravisRequest {
    fn processed(&self, now: Instant) -> bool {
        now >= self.born + self.plan.processed_after
    }

    fn commit_sha(&self) -> String {
        self.sha
            .clone()
            .unwrap_or_else(|| format!("{:040x}", self.id.wrapping_mul(0x9e37_79b9)))
    }

    /// The commit message of its build: the request's `message` when one was given.
    fn commit_message(&self) -> String {
        self.message
            .clone()
            .unwrap_or_else(|| "Merge the latest changes".to_owned())
    }

    /// The standard representation at `now`.
    fn json(&self, inner: &Inner, now: Instant) -> Value {
        let repo = &inner.repos[self.repo];
        let processed = self.processed(now);
        let (state, result, message) = match (&self.plan.outcome, processed) {
            (_, false) => ("pending", Value::Null, Value::Null),
            (Outcome::Rejected(why), true) => ("finished", json!("rejected"), json!(why)),
            (_, true) => ("finished", json!("accepted"), Value::Null),
        };
        let builds: Vec<Value> = self
            .build
            .and_then(|id| inner.builds.get(&id))
            .filter(|b| now >= b.born)
            .map(|b| b.minimal(now))
            .into_iter()
            .collect();
        let commit = processed.then(|| {
            json!({
                "@type": "commit", "@representation": "minimal", "id": self.id,
                "sha": self.commit_sha(), "ref": null, "message": self.commit_message(),
                "compare_url": null, "committed_at": time(self.born_ms),
            })
        });
        json!({
            "@type": "request",
            "@href": format!("/repo/{}/request/{}", repo.id, self.id),
            "@representation": "standard",
            "id": self.id,
            "state": state,
            "result": result,
            "message": message,
            "repository": repo.minimal(),
            "branch_name": self.branch,
            "commit": commit,
            "builds": builds,
            "owner": {"@type": "user", "@representation": "minimal", "id": 1, "login": repo.owner},
            "created_at": time(self.born_ms),
            "event_type": "api",
            "base_commit": null,
            "head_commit": null,
        })
    }
}

impl Build {
    /// The build and its jobs at `now`: `created`, `received` (jobs `queued`), then the jobs
    /// run side by side; the build ends `errored` if a job errored, else `failed` if one
    /// failed, else `passed`. A cancel takes effect `cancel_takes` after it was asked for,
    /// on a build that had not ended by then.
    fn at(&self, now: Instant) -> Snapshot {
        let n = self.plan.jobs.len();
        let received = self.born + self.plan.created_for;
        let started = received + self.plan.received_for;
        let offset = |t: Instant| t.saturating_duration_since(self.born);
        let mut snap = Snapshot {
            state: "created".into(),
            jobs: vec!["created".into(); n],
            started: None,
            finished: None,
            job_started: vec![None; n],
            job_finished: vec![None; n],
        };
        let cancel_at = self.cancelled.map(|c| c + self.plan.cancel_takes);
        let ends: Vec<Instant> = self
            .plan
            .jobs
            .iter()
            .map(|j| started + j.runs_for)
            .collect();
        let last_end = ends.iter().copied().max().unwrap_or(started);
        let cancelled = cancel_at.filter(|c| *c <= now && *c < last_end);
        if let Some(c) = cancelled.filter(|c| *c < started) {
            snap.state = "canceled".into();
            snap.jobs = vec!["canceled".into(); n];
            snap.finished = Some(offset(c));
            snap.job_finished = vec![Some(offset(c)); n];
        } else if now < received {
        } else if now < started {
            snap.state = "received".into();
            snap.jobs = vec!["queued".into(); n];
        } else {
            snap.started = Some(offset(started));
            for (i, job) in self.plan.jobs.iter().enumerate() {
                snap.job_started[i] = Some(offset(started));
                if now >= ends[i] && cancelled.is_none_or(|c| ends[i] <= c) {
                    snap.jobs[i] = job.result.state().into();
                    snap.job_finished[i] = Some(offset(ends[i]));
                } else if let Some(c) = cancelled {
                    snap.jobs[i] = "canceled".into();
                    snap.job_finished[i] = Some(offset(c));
                } else {
                    snap.jobs[i] = "started".into();
                }
            }
            if let Some(c) = cancelled {
                snap.state = "canceled".into();
                snap.finished = Some(offset(c));
            } else if now >= last_end {
                let any = |s: &str| snap.jobs.iter().any(|j| j == s);
                snap.state = if any("errored") {
                    "errored"
                } else if any("failed") {
                    "failed"
                } else {
                    "passed"
                }
                .into();
                snap.finished = Some(offset(last_end));
            } else {
                snap.state = "started".into();
            }
        }
        if let Some(unseen) = &self.plan.reports {
            snap.state = unseen.clone();
        }
        snap
    }

    fn times(&self, snap: &Snapshot) -> (Value, Value, Value) {
        let at = |d: Option<Duration>| match d {
            Some(d) => json!(time(self.born_ms + d.as_millis() as u64)),
            None => Value::Null,
        };
        let duration = match (snap.started, snap.finished) {
            (Some(s), Some(f)) => json!(f.saturating_sub(s).as_secs()),
            _ => Value::Null,
        };
        (at(snap.started), at(snap.finished), duration)
    }

    fn minimal(&self, now: Instant) -> Value {
        let snap = self.at(now);
        let (started_at, finished_at, duration) = self.times(&snap);
        json!({
            "@type": "build",
            "@href": format!("/build/{}", self.id),
            "@representation": "minimal",
            "id": self.id,
            "number": self.number.to_string(),
            "state": snap.state,
            "duration": duration,
            "event_type": "api",
            "previous_state": null,
            "pull_request_title": null,
            "pull_request_number": null,
            "started_at": started_at,
            "finished_at": finished_at,
        })
    }

    fn job_json(&self, i: usize, snap: &Snapshot, repo: &Repo, full: bool) -> Value {
        let id = self.job_ids[i];
        let mut job = json!({
            "@type": "job", "@href": format!("/job/{id}"), "id": id,
            "@representation": if full { "standard" } else { "minimal" },
        });
        if full {
            let at = |d: Option<Duration>| d.map(|d| time(self.born_ms + d.as_millis() as u64));
            let more = json!({
                "allow_failure": false,
                "number": format!("{}.{}", self.number, i + 1),
                "state": snap.jobs[i],
                "started_at": at(snap.job_started[i]),
                "finished_at": at(snap.job_finished[i]),
                "build": {"@type": "build", "@href": format!("/build/{}", self.id), "@representation": "minimal", "id": self.id, "number": self.number.to_string()},
                "queue": "builds.gce",
                "repository": repo.minimal(),
                "owner": {"@type": "user", "@representation": "minimal", "id": 1, "login": repo.owner},
                "stage": null,
                "created_at": time(self.born_ms),
                "updated_at": time(self.born_ms),
            });
            if let (Some(job), Value::Object(more)) = (job.as_object_mut(), more) {
                job.extend(more);
            }
        }
        job
    }

    fn json(&self, inner: &Inner, now: Instant, full_jobs: bool) -> Value {
        let repo = &inner.repos[self.repo];
        let snap = self.at(now);
        let mut build = self.minimal(now);
        let request = inner.requests.get(&self.request);
        let jobs: Vec<Value> = (0..self.job_ids.len())
            .map(|i| self.job_json(i, &snap, repo, full_jobs))
            .collect();
        let more = json!({
            "@representation": "standard",
            "private": false,
            "repository": repo.minimal(),
            "branch": {"@type": "branch", "@representation": "minimal", "name": request.map(|r| r.branch.clone())},
            "tag": null,
            "commit": {"@type": "commit", "@representation": "minimal",
                       "sha": request.map(TravisRequest::commit_sha),
                       "message": request.map(TravisRequest::commit_message)},
            "jobs": jobs,
            "stages": [],
            "created_by": {"@type": "user", "@representation": "minimal", "id": 1, "login": repo.owner},
            "updated_at": time(now_ms()),
        });
        if let (Some(build), Value::Object(more)) = (build.as_object_mut(), more) {
            build.extend(more);
        }
        build
    }

    /// Job `i`'s log at `now`: nothing before it starts, its first half while it runs,
    /// all of it once it ended (its first half when it was cancelled).
    fn log(&self, i: usize, now: Instant) -> String {
        let snap = self.at(now);
        let log = &self.plan.jobs[i].log;
        let half = || {
            let lines: Vec<&str> = log.lines().collect();
            let mut text = lines[..lines.len() / 2].join("\n");
            text.push('\n');
            text
        };
        match snap.jobs[i].as_str() {
            "created" | "queued" | "received" => String::new(),
            "started" => half(),
            "canceled" => half(),
            _ => log.clone(),
        }
    }
}

fn find_repo(inner: &Inner, slug: &str) -> Option<usize> {
    inner
        .repos
        .iter()
        .position(|r| r.slug() == slug || r.id.to_string() == slug)
}

/// The request's parameters, given at the top level or under `request`.
fn param<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get("request")
        .and_then(|r| r.get(name))
        .or_else(|| body.get(name))
        .filter(|v| !v.is_null())
}

async fn create(
    State(travis): State<Travis>,
    Path(slug): Path<String>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    let body: Map<String, Value> = if body.is_empty() {
        Map::new()
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "wrong_params",
                    "request body is not JSON",
                    json!({}),
                );
            }
        }
    };
    let text = |name: &str| {
        param(&body, name)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let mut inner = travis.lock();
    let Some(index) = find_repo(&inner, &slug) else {
        return not_found("repository");
    };
    if !caller.push {
        return error(
            StatusCode::FORBIDDEN,
            "push_access_required",
            "push access required",
            json!({"repository": inner.repos[index].minimal()}),
        );
    }
    let now = Instant::now();
    let repo = &inner.repos[index];
    let counted = inner
        .requests
        .values()
        .filter(|r| r.repo == index && now.duration_since(r.born) < repo.window)
        .count() as u32;
    let remaining = repo.limit.saturating_sub(counted);
    if remaining == 0 {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "request_limit_reached",
            "request limit reached for resource",
            json!({"repository": repo.minimal(), "max_requests": repo.limit, "per_seconds": repo.window.as_secs()}),
        );
    }
    let branch = text("branch").unwrap_or_else(|| "main".to_owned());
    let plan = repo.branch_plans.get(&branch).unwrap_or(&repo.plan).clone();
    let (repo_id, owner, name) = (repo.id, repo.owner.clone(), repo.name.clone());
    inner.next_id += 1;
    let id = 200_000 + inner.next_id;
    let request = TravisRequest {
        id,
        repo: index,
        branch: branch.clone(),
        sha: text("sha"),
        message: text("message"),
        config: param(&body, "config").cloned().unwrap_or(Value::Null),
        merge_mode: text("merge_mode"),
        plan: plan.clone(),
        build: None,
        born: now,
        born_ms: now_ms(),
    };
    let mut answer = json!({
        "repository": {"id": repo_id, "owner_name": owner, "name": name},
        "user": {"id": 1},
        "id": id,
        "message": request.message,
        "branch": branch,
        "sha": request.sha,
        "merge_mode": request.merge_mode,
        "config": request.config.to_string(),
    });
    if let Some(fields) = answer.as_object_mut() {
        fields.retain(|k, v| !(v.is_null() || k == "id" && inner.anonymous_requests));
    }
    let mut request = request;
    if plan.outcome == Outcome::Build {
        inner.next_id += 1;
        let build_id = 700_000 + inner.next_id;
        let mut job_ids = Vec::new();
        for _ in &plan.jobs {
            inner.next_id += 1;
            job_ids.push(900_000 + inner.next_id);
        }
        let repo = &mut inner.repos[index];
        repo.builds += 1;
        let number = repo.builds;
        let delay = plan.build_after;
        inner.builds.insert(
            build_id,
            Build {
                id: build_id,
                number,
                request: id,
                repo: index,
                job_ids,
                plan,
                born: now + delay,
                born_ms: request.born_ms + delay.as_millis() as u64,
                cancelled: None,
            },
        );
        request.build = Some(build_id);
    }
    let repo_json = inner.repos[index].minimal();
    inner.requests.insert(id, request);
    drop(inner);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "@type": "pending",
            "remaining_requests": remaining,
            "repository": repo_json,
            "request": answer,
            "resource_type": "request",
        })),
    )
        .into_response()
}

async fn list_requests(
    State(travis): State<Travis>,
    Path(slug): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let inner = travis.lock();
    let Some(index) = find_repo(&inner, &slug) else {
        return not_found("repository");
    };
    let number = |key: &str, default: usize| {
        query
            .get(key)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(default)
    };
    let (limit, offset) = (number("limit", 25).clamp(1, 100), number("offset", 0));
    let now = Instant::now();
    let mine: Vec<&TravisRequest> = inner
        .requests
        .values()
        .rev()
        .filter(|r| r.repo == index)
        .collect();
    let count = mine.len();
    let page: Vec<Value> = mine
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|r| r.json(&inner, now))
        .collect();
    let repo = &inner.repos[index];
    axum::Json(json!({
        "@type": "requests",
        "@href": format!("/repo/{}/requests", repo.id),
        "@representation": "standard",
        "@pagination": {
            "limit": limit, "offset": offset, "count": count,
            "is_first": offset == 0, "is_last": offset + limit >= count,
        },
        "requests": page,
    }))
    .into_response()
}

async fn show_request(
    State(travis): State<Travis>,
    Path((slug, id)): Path<(String, String)>,
) -> Response {
    let inner = travis.lock();
    let Some(index) = find_repo(&inner, &slug) else {
        return not_found("repository");
    };
    match id
        .parse::<u64>()
        .ok()
        .and_then(|id| inner.requests.get(&id))
        .filter(|r| r.repo == index)
    {
        Some(r) => axum::Json(r.json(&inner, Instant::now())).into_response(),
        None => not_found("request"),
    }
}

/// The build `id` that has appeared, through `f`; 404 otherwise.
fn on_build(travis: &Travis, id: &str, f: impl FnOnce(&mut Build, &Inner) -> Value) -> Response {
    let mut inner = travis.lock();
    let now = Instant::now();
    let Some(mut build) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| inner.builds.remove(&id))
    else {
        return not_found("build");
    };
    let answer = (now >= build.born).then(|| f(&mut build, &inner));
    inner.builds.insert(build.id, build);
    match answer {
        Some(body) => axum::Json(body).into_response(),
        None => not_found("build"),
    }
}

async fn show_build(
    State(travis): State<Travis>,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let full = query
        .get("include")
        .is_some_and(|i| i.split(',').any(|part| part == "build.jobs"));
    on_build(&travis, &id, |build, inner| {
        build.json(inner, Instant::now(), full)
    })
}

async fn cancel_build(
    State(travis): State<Travis>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Response {
    if !caller.push {
        return error(
            StatusCode::FORBIDDEN,
            "insufficient_access",
            "operation requires cancel access to build",
            json!({"permission": "cancel", "resource_type": "build"}),
        );
    }
    let answer = on_build(&travis, &id, |build, _| {
        let now = Instant::now();
        // 202 whatever the state; a build that has ended stays as it ended.
        if build.cancelled.is_none() && !is_end(&build.at(now).state) {
            build.cancelled = Some(now);
        }
        json!({
            "@type": "pending",
            "build": build.minimal(now),
            "state_change": "cancel",
            "resource_type": "build",
        })
    });
    if answer.status() == StatusCode::OK {
        let (mut parts, body) = answer.into_parts();
        parts.status = StatusCode::ACCEPTED;
        return Response::from_parts(parts, body);
    }
    answer
}

/// The build holding job `id` and the job's index in it, if it has appeared.
fn find_job(inner: &Inner, id: &str, now: Instant) -> Option<(u64, usize)> {
    let id: u64 = id.parse().ok()?;
    inner
        .builds
        .values()
        .filter(|b| now >= b.born)
        .find_map(|b| b.job_ids.iter().position(|j| *j == id).map(|i| (b.id, i)))
}

async fn show_job(State(travis): State<Travis>, Path(id): Path<String>) -> Response {
    let inner = travis.lock();
    let now = Instant::now();
    match find_job(&inner, &id, now).and_then(|(b, i)| inner.builds.get(&b).map(|b| (b, i))) {
        Some((build, i)) => {
            let snap = build.at(now);
            axum::Json(build.job_json(i, &snap, &inner.repos[build.repo], true)).into_response()
        }
        None => not_found("job"),
    }
}

async fn job_log(State(travis): State<Travis>, Path(id): Path<String>) -> Response {
    let inner = travis.lock();
    let now = Instant::now();
    match find_job(&inner, &id, now).and_then(|(b, i)| inner.builds.get(&b).map(|b| (b, i))) {
        Some((build, i)) => (
            StatusCode::OK,
            [("content-type", "text/plain")],
            build.log(i, now),
        )
            .into_response(),
        None => not_found("log"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(plan: BuildPlan) -> Build {
        Build {
            id: 1,
            number: 3,
            request: 2,
            repo: 0,
            job_ids: (0..plan.jobs.len() as u64).map(|i| 10 + i).collect(),
            plan,
            born: Instant::now(),
            born_ms: 0,
            cancelled: None,
        }
    }

    #[test]
    fn a_build_is_created_received_started_and_ends_by_its_worst_job() {
        let ms = Duration::from_millis;
        let b = build(
            BuildPlan::new(vec![
                JobPlan::passes().runs_for(ms(100)),
                JobPlan::fails("x").runs_for(ms(300)),
                JobPlan::errors("y").runs_for(ms(200)),
            ])
            .queued_for(ms(100), ms(100)),
        );
        let at = |d: u64| b.at(b.born + ms(d));
        assert_eq!(
            (at(50).state.as_str(), at(50).jobs[0].as_str()),
            ("created", "created")
        );
        assert_eq!(
            (at(150).state.as_str(), at(150).jobs[0].as_str()),
            ("received", "queued")
        );
        let running = at(350);
        assert_eq!(running.state, "started");
        assert_eq!(running.jobs, ["passed", "started", "started"]);
        let end = at(600);
        assert_eq!(end.state, "errored");
        assert_eq!(end.jobs, ["passed", "failed", "errored"]);
        assert_eq!(end.finished, Some(ms(500)));
    }

    #[test]
    fn a_cancel_takes_a_moment_and_leaves_finished_jobs_alone() {
        let ms = Duration::from_millis;
        let mut b = build(
            BuildPlan::new(vec![
                JobPlan::passes().runs_for(ms(50)),
                JobPlan::passes().runs_for(ms(10_000)),
            ])
            .queued_for(ms(0), ms(0))
            .cancel_takes(ms(100)),
        );
        b.cancelled = Some(b.born + ms(200));
        assert_eq!(b.at(b.born + ms(250)).state, "started");
        let after = b.at(b.born + ms(400));
        assert_eq!(after.state, "canceled");
        assert_eq!(after.jobs, ["passed", "canceled"]);
        assert_eq!(b.log(1, b.born + ms(400)).lines().count(), 3);
    }
}
