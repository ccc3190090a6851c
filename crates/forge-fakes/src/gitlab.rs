//! GitLab's REST API (`/api/v4`) for pipelines and jobs, as `docs/adapters/gitlab-ci.md`
//! describes it: projects by id and by path, pipelines that move from `created` through
//! `pending` and `running` to their end as real time passes, jobs with traces and artifacts,
//! `manual` gates that wait until played, and a cancel that always answers 200.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use baton_forge_fakes::gitlab::{GitLab, JobPlan, PipelinePlan};
//! let gitlab = GitLab::new();
//! gitlab.add_token("ci", "glpat-secret");
//! gitlab.project("group/app").id(7).plan(PipelinePlan::new(vec![
//!     JobPlan::new("build", "build").runs_for(Duration::from_secs(2)),
//! ]));
//! let served = gitlab.serve().await?;
//! # Ok(()) }
//! ```
//!
//! Requests need `PRIVATE-TOKEN` with a token added by [`GitLab::add_token`] (a 401
//! otherwise); a project's trigger token works only on the trigger endpoint and reading with
//! it gives `404 Project Not Found`, as on GitLab (python-gitlab#1021). Every request is
//! counted in the [`Meter`] under the token's name (`trigger` for the trigger endpoint).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::{Meter, Served, lock, now_ms};

/// GitLab's documented Pipeline Hook example (`tests/fixtures/gitlab/pipeline.json`), the
/// shape [`GitLab::pipeline_hook`] fills in.
const HOOK_EXAMPLE: &str = include_str!("../../../tests/fixtures/gitlab/pipeline.json");

/// How a job ends when it runs to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobResult {
    /// `success`.
    Success,
    /// `failed` (the pipeline fails and later jobs are `skipped`).
    Failed,
}

/// One job of a pipeline plan.
#[derive(Debug, Clone)]
pub struct JobPlan {
    name: String,
    stage: String,
    runs_for: Duration,
    result: JobResult,
    manual: bool,
    trace: String,
    artifacts: BTreeMap<String, Vec<u8>>,
}

impl JobPlan {
    /// A job `name` in stage `stage` that runs for a second and succeeds.
    pub fn new(name: &str, stage: &str) -> Self {
        Self {
            name: name.to_owned(),
            stage: stage.to_owned(),
            runs_for: Duration::from_secs(1),
            result: JobResult::Success,
            manual: false,
            trace: format!("Running job {name}\nJob succeeded\n"),
            artifacts: BTreeMap::new(),
        }
    }

    /// How long it runs once started.
    pub fn runs_for(mut self, d: Duration) -> Self {
        self.runs_for = d;
        self
    }

    /// It fails, its trace ending in `trace`.
    pub fn fails(mut self, trace: &str) -> Self {
        self.result = JobResult::Failed;
        self.trace = trace.to_owned();
        self
    }

    /// A `when: manual` job: the pipeline is `manual` until it is played.
    pub fn manual(mut self) -> Self {
        self.manual = true;
        self
    }

    /// Its log.
    pub fn trace(mut self, text: &str) -> Self {
        self.trace = text.to_owned();
        self
    }

    /// A file in its artifacts archive, at `path`.
    pub fn artifact(mut self, path: &str, content: &[u8]) -> Self {
        self.artifacts.insert(path.to_owned(), content.to_vec());
        self
    }
}

/// What every new pipeline of a project does.
#[derive(Debug, Clone)]
pub struct PipelinePlan {
    jobs: Vec<JobPlan>,
    created_for: Duration,
    pending_for: Duration,
    canceling_for: Duration,
    reports: Option<String>,
    ignores_cancel: bool,
}

impl PipelinePlan {
    /// Jobs run one after the other; `created` and `pending` last 200 ms each, `canceling`
    /// 500 ms.
    pub fn new(jobs: Vec<JobPlan>) -> Self {
        Self {
            jobs,
            created_for: Duration::from_millis(200),
            pending_for: Duration::from_millis(200),
            canceling_for: Duration::from_millis(500),
            reports: None,
            ignores_cancel: false,
        }
    }

    /// How long the pipeline stays `created`, then `pending`.
    pub fn queued_for(mut self, created: Duration, pending: Duration) -> Self {
        self.created_for = created;
        self.pending_for = pending;
        self
    }

    /// How long a cancelled pipeline is `canceling` before `canceled`.
    pub fn canceling_for(mut self, d: Duration) -> Self {
        self.canceling_for = d;
        self
    }

    /// A cancel answers 200 and changes nothing, as GitLab's does in some states
    /// (gitlab-org/gitlab#414963).
    pub fn ignores_cancel(mut self) -> Self {
        self.ignores_cancel = true;
        self
    }

    /// The pipeline reports `status` (one baton has never seen) whatever happens.
    pub fn reports(mut self, status: &str) -> Self {
        self.reports = Some(status.to_owned());
        self
    }
}

impl Default for PipelinePlan {
    fn default() -> Self {
        Self::new(vec![JobPlan::new("build", "build")])
    }
}

/// An awkward answer and the requests it hits, switched on by [`GitLab::fault`].
pub use crate::{Fault, Scope};

#[derive(Debug)]
struct Project {
    id: u64,
    path: String,
    forbid_variables: bool,
    trigger_token: Option<String>,
    plan: PipelinePlan,
    ref_plans: BTreeMap<String, PipelinePlan>,
    refs: Option<Vec<String>>,
}

#[derive(Debug)]
struct Pipeline {
    id: u64,
    iid: u64,
    project: u64,
    git_ref: String,
    source: &'static str,
    sha: String,
    variables: Vec<(String, String)>,
    inputs: Value,
    plan: PipelinePlan,
    job_ids: Vec<u64>,
    born: Instant,
    born_ms: u64,
    played: BTreeMap<usize, Instant>,
    cancelled: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    projects: Vec<Project>,
    pipelines: BTreeMap<u64, Pipeline>,
    tokens: BTreeMap<String, String>,
    faults: VecDeque<(Scope, Fault)>,
    next_id: u64,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    meter: Meter,
    url: Mutex<String>,
}

/// The model: cheap to clone, every clone the same GitLab.
#[derive(Debug, Clone, Default)]
pub struct GitLab {
    shared: Arc<Shared>,
}

/// Sets up a project; see [`GitLab::project`].
#[derive(Debug)]
pub struct ProjectSetup {
    gitlab: GitLab,
    path: String,
}

impl ProjectSetup {
    fn edit(self, f: impl FnOnce(&mut Project)) -> Self {
        {
            let mut inner = self.gitlab.lock();
            if let Some(p) = inner.projects.iter_mut().find(|p| p.path == self.path) {
                f(p);
            }
        }
        self
    }

    /// Its numeric id.
    pub fn id(self, id: u64) -> Self {
        self.edit(|p| p.id = id)
    }

    /// Its pipeline trigger token.
    pub fn trigger_token(self, token: &str) -> Self {
        let token = token.to_owned();
        self.edit(|p| p.trigger_token = Some(token))
    }

    /// It refuses pipeline variables ("Minimum role to use pipeline variables" above the
    /// caller's role).
    pub fn forbid_variables(self) -> Self {
        self.edit(|p| p.forbid_variables = true)
    }

    /// What its new pipelines do.
    pub fn plan(self, plan: PipelinePlan) -> Self {
        self.edit(|p| p.plan = plan)
    }

    /// Its only branches and tags: a pipeline for another ref is refused with GitLab's
    /// `Reference not found` (by default every ref exists).
    pub fn refs(self, refs: &[&str]) -> Self {
        let refs = refs.iter().map(|r| (*r).to_owned()).collect();
        self.edit(|p| p.refs = Some(refs))
    }

    /// What its new pipelines for `git_ref` do (other refs follow [`ProjectSetup::plan`]).
    pub fn plan_for_ref(self, git_ref: &str, plan: PipelinePlan) -> Self {
        let git_ref = git_ref.to_owned();
        self.edit(|p| {
            p.ref_plans.insert(git_ref, plan);
        })
    }
}

/// A pipeline as the model sees it now, for test assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineView {
    /// Its id.
    pub id: u64,
    /// Its status now.
    pub status: String,
    /// Its ref.
    pub git_ref: String,
    /// `api` or `trigger`.
    pub source: String,
    /// Its variables, as set at creation.
    pub variables: Vec<(String, String)>,
    /// Its inputs as given at creation (`null` when none were).
    pub inputs: Value,
    /// Each job's name and status now.
    pub jobs: Vec<(String, String)>,
}

impl GitLab {
    /// An empty GitLab: no projects, no tokens.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.shared.inner)
    }

    /// Accepts `value` as a `PRIVATE-TOKEN`, counted in the meter as `name`.
    pub fn add_token(&self, name: &str, value: &str) {
        self.lock().tokens.insert(value.to_owned(), name.to_owned());
    }

    /// The project at `path` (created with the next free id and the default plan if new).
    pub fn project(&self, path: &str) -> ProjectSetup {
        {
            let mut inner = self.lock();
            if !inner.projects.iter().any(|p| p.path == path) {
                inner.next_id += 1;
                let id = inner.next_id;
                inner.projects.push(Project {
                    id,
                    path: path.to_owned(),
                    forbid_variables: false,
                    trigger_token: None,
                    plan: PipelinePlan::default(),
                    ref_plans: BTreeMap::new(),
                    refs: None,
                });
            }
        }
        ProjectSetup {
            gitlab: self.clone(),
            path: path.to_owned(),
        }
    }

    /// The next `n` requests in `scope` meet `fault`.
    pub fn fault(&self, n: usize, scope: Scope, fault: Fault) {
        let mut inner = self.lock();
        for _ in 0..n {
            inner.faults.push_back((scope, fault.clone()));
        }
    }

    /// Plays the manual job `job` of pipeline `pipeline`; false if there is no such job.
    pub fn play(&self, pipeline: u64, job: &str) -> bool {
        let mut inner = self.lock();
        let Some(p) = inner.pipelines.get_mut(&pipeline) else {
            return false;
        };
        match p.plan.jobs.iter().position(|j| j.name == job && j.manual) {
            Some(i) => {
                p.played.entry(i).or_insert_with(Instant::now);
                true
            }
            None => false,
        }
    }

    /// How many pipelines were created, in all projects.
    pub fn pipelines_created(&self) -> usize {
        self.lock().pipelines.len()
    }

    /// Every pipeline as it is now, oldest first.
    pub fn pipelines(&self) -> Vec<PipelineView> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .pipelines
            .values()
            .map(|p| {
                let (status, jobs) = p.at(now);
                PipelineView {
                    id: p.id,
                    status,
                    git_ref: p.git_ref.clone(),
                    source: p.source.to_owned(),
                    variables: p.variables.clone(),
                    inputs: p.inputs.clone(),
                    jobs: p
                        .plan
                        .jobs
                        .iter()
                        .zip(jobs)
                        .map(|(j, s)| (j.name.clone(), s))
                        .collect(),
                }
            })
            .collect()
    }

    /// The request counts.
    pub fn meter(&self) -> &Meter {
        &self.shared.meter
    }

    /// A Pipeline Hook body for pipeline `pipeline` as it is now: GitLab's documented
    /// example with the pipeline's id, iid, ref, sha, source, status, variables, URL, project
    /// and jobs put in. `None` for an unknown pipeline.
    pub fn pipeline_hook(&self, pipeline: u64) -> Option<String> {
        let inner = self.lock();
        let p = inner.pipelines.get(&pipeline)?;
        let project = inner.projects.iter().find(|x| x.id == p.project)?;
        let base = lock(&self.shared.url).clone();
        let (status, jobs) = p.at(Instant::now());
        let mut hook: Value = serde_json::from_str(HOOK_EXAMPLE).ok()?;
        let attrs = hook.get_mut("object_attributes")?.as_object_mut()?;
        attrs.insert("id".into(), json!(p.id));
        attrs.insert("iid".into(), json!(p.iid));
        attrs.insert("ref".into(), json!(p.git_ref));
        attrs.insert("sha".into(), json!(p.sha));
        attrs.insert("source".into(), json!(p.source));
        attrs.insert("status".into(), json!(status));
        attrs.insert(
            "variables".into(),
            p.variables
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect(),
        );
        attrs.insert("url".into(), json!(p.web_url(&base, &project.path)));
        let project_json = hook.get_mut("project")?.as_object_mut()?;
        project_json.insert("id".into(), json!(project.id));
        project_json.insert("path_with_namespace".into(), json!(project.path));
        project_json.insert("web_url".into(), json!(format!("{base}/{}", project.path)));
        hook["builds"] = p
            .plan
            .jobs
            .iter()
            .zip(&p.job_ids)
            .zip(jobs)
            .map(|((j, id), s)| json!({"id": id, "stage": j.stage, "name": j.name, "status": s}))
            .collect();
        serde_json::to_string_pretty(&hook).ok()
    }

    /// The routes of `/api/v4`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/v4/projects/{id}/pipeline", post(create))
            .route("/api/v4/projects/{id}/trigger/pipeline", post(trigger))
            .route("/api/v4/projects/{id}/pipelines", get(list))
            .route("/api/v4/projects/{id}/pipelines/{pid}", get(show))
            .route(
                "/api/v4/projects/{id}/pipelines/{pid}/variables",
                get(variables),
            )
            .route("/api/v4/projects/{id}/pipelines/{pid}/jobs", get(jobs))
            .route("/api/v4/projects/{id}/pipelines/{pid}/cancel", post(cancel))
            .route("/api/v4/projects/{id}/jobs/{jid}/trace", get(trace))
            .route("/api/v4/projects/{id}/jobs/{jid}/play", post(play))
            .route(
                "/api/v4/projects/{id}/jobs/{jid}/artifacts/{*path}",
                get(artifact),
            )
            .fallback(|| async { gl_error(StatusCode::NOT_FOUND, "404 Not Found") })
            .with_state(self.clone())
    }

    /// Serves the model from the current runtime.
    pub async fn serve(&self) -> std::io::Result<Served> {
        let served = crate::serve(self.router()).await?;
        *lock(&self.shared.url) = served.url.clone();
        Ok(served)
    }

    /// Serves the model from a runtime of its own.
    pub fn serve_in_background(&self) -> std::io::Result<Served> {
        let served = crate::serve_in_background(|| self.router())?;
        *lock(&self.shared.url) = served.url.clone();
        Ok(served)
    }
}

impl Pipeline {
    fn web_url(&self, base: &str, path: &str) -> String {
        format!("{base}/{path}/-/pipelines/{}", self.id)
    }

    /// The pipeline's status and each job's at `now`.
    fn at(&self, now: Instant) -> (String, Vec<String>) {
        let (status, jobs) = match self.cancelled {
            Some(at) => {
                let (before, mut jobs) = self.run_at(at);
                if is_end(&before) {
                    (before, jobs)
                } else {
                    let done = now >= at + self.plan.canceling_for;
                    for s in jobs.iter_mut().filter(|s| !is_end(s)) {
                        *s = if done || s != "running" {
                            "canceled"
                        } else {
                            "canceling"
                        }
                        .to_owned();
                    }
                    let status = if done { "canceled" } else { "canceling" };
                    (status.to_owned(), jobs)
                }
            }
            None => self.run_at(now),
        };
        match &self.plan.reports {
            Some(unseen) => (unseen.clone(), jobs),
            None => (status, jobs),
        }
    }

    /// The status as if never cancelled: jobs run one after another from the end of the
    /// queued time; a manual job waits until played; a failure skips the rest.
    fn run_at(&self, now: Instant) -> (String, Vec<String>) {
        let n = self.plan.jobs.len();
        let queued = self.born + self.plan.created_for;
        let mut t = queued + self.plan.pending_for;
        if now < queued {
            return ("created".into(), vec!["created".into(); n]);
        }
        if now < t {
            return ("pending".into(), vec!["pending".into(); n]);
        }
        let mut statuses = Vec::with_capacity(n);
        for (i, job) in self.plan.jobs.iter().enumerate() {
            let rest = |s: &mut Vec<String>, first: &str, later: &str| {
                s.push(first.to_owned());
                s.resize(n, later.to_owned());
            };
            if job.manual {
                match self.played.get(&i) {
                    None => {
                        rest(&mut statuses, "manual", "created");
                        return ("manual".into(), statuses);
                    }
                    Some(&played) => t = t.max(played),
                }
            }
            if now < t + job.runs_for {
                rest(&mut statuses, "running", "created");
                return ("running".into(), statuses);
            }
            t += job.runs_for;
            if job.result == JobResult::Failed {
                rest(&mut statuses, "failed", "skipped");
                return ("failed".into(), statuses);
            }
            statuses.push("success".into());
        }
        ("success".into(), statuses)
    }

    fn json(&self, base: &str, path: &str, now: Instant) -> Value {
        let (status, _) = self.at(now);
        let created = iso(self.born_ms);
        let updated = iso(self.born_ms + now.duration_since(self.born).as_millis() as u64);
        json!({
            "id": self.id,
            "iid": self.iid,
            "project_id": self.project,
            "status": status,
            "ref": self.git_ref,
            "sha": self.sha,
            "source": self.source,
            "web_url": self.web_url(base, path),
            "created_at": created,
            "updated_at": updated,
            "detailed_status": {"group": status, "text": status, "label": status},
        })
    }
}

fn is_end(status: &str) -> bool {
    matches!(status, "success" | "failed" | "canceled" | "skipped")
}

/// `ms` since the epoch as GitLab writes times: `2016-08-12T15:23:28.000Z`.
fn iso(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm, public domain).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn gl_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

/// Who is calling, once the fault and the token are checked.
struct Call {
    fault: Option<Fault>,
}

impl GitLab {
    /// Counts the request, applies a pending fault in `scope` that acts before the work,
    /// and checks `PRIVATE-TOKEN` unless `trigger` (the trigger endpoint checks its body).
    fn begin(
        &self,
        headers: &HeaderMap,
        scope: Scope,
        trigger: bool,
    ) -> Result<Call, Box<Response>> {
        let token = headers
            .get("private-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let mut inner = self.lock();
        let name = if trigger {
            Some("trigger".to_owned())
        } else {
            inner.tokens.get(token).cloned()
        };
        self.shared
            .meter
            .record(name.as_deref().unwrap_or("anonymous"));
        let fault = match inner.faults.front() {
            Some((s, _)) if *s == Scope::Any || *s == scope => {
                inner.faults.pop_front().map(|(_, f)| f)
            }
            _ => None,
        };
        match fault {
            Some(Fault::Status(code)) => return Err(Box::new(crate::proxy_error(code))),
            Some(Fault::RateLimited(secs)) => {
                return Err(Box::new(crate::too_many_requests(secs, true)));
            }
            _ => {}
        }
        if !trigger && name.is_none() {
            let is_trigger_token = inner
                .projects
                .iter()
                .any(|p| p.trigger_token.as_deref() == Some(token) && !token.is_empty());
            return Err(Box::new(if is_trigger_token {
                gl_error(StatusCode::NOT_FOUND, "404 Project Not Found")
            } else {
                gl_error(StatusCode::UNAUTHORIZED, "401 Unauthorized")
            }));
        }
        Ok(Call { fault })
    }

    /// The answer, after a fault that acts after the work (garbage, a late answer).
    async fn answer(&self, call: Call, status: StatusCode, body: Value) -> Response {
        if call.fault == Some(Fault::Hangup) {
            crate::hang_up();
        }
        let garbage =
            (call.fault == Some(Fault::Garbage)).then_some("<!DOCTYPE html><p>maintenance");
        let late = match call.fault {
            Some(Fault::Delay(d)) => Some(d),
            _ => None,
        };
        crate::after_work(status, body, garbage, late).await
    }

    fn base(&self) -> String {
        lock(&self.shared.url).clone()
    }
}

fn find_project<'a>(inner: &'a Inner, id: &str) -> Option<&'a Project> {
    inner
        .projects
        .iter()
        .find(|p| p.path == id || p.id.to_string() == id)
}

/// What a create request asks for, from either endpoint.
struct Create {
    git_ref: String,
    variables: Vec<(String, String)>,
    inputs: Value,
    source: &'static str,
}

/// The `inputs` of a create body: absent (`null`) or an object; `None` for anything else.
fn inputs_of(body: &Map<String, Value>) -> Option<Value> {
    match body.get("inputs") {
        None => Some(Value::Null),
        Some(inputs @ Value::Object(_)) => Some(inputs.clone()),
        Some(_) => None,
    }
}

/// A pipeline that could not be created, as `render_validation_error!` in
/// `lib/api/ci/pipelines.rb` answers it.
fn not_created(message: &str) -> Box<Response> {
    Box::new(
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": {"base": [message]}})),
        )
            .into_response(),
    )
}

fn invalid(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": message })),
    )
        .into_response()
}

impl GitLab {
    fn create_pipeline(
        &self,
        project_id: &str,
        ask: Create,
    ) -> Result<(Value, u64), Box<Response>> {
        let mut inner = self.lock();
        let Some(project) = find_project(&inner, project_id) else {
            return Err(Box::new(gl_error(
                StatusCode::NOT_FOUND,
                "404 Project Not Found",
            )));
        };
        if ask.git_ref.is_empty() {
            return Err(Box::new(invalid("ref is missing")));
        }
        if project
            .refs
            .as_ref()
            .is_some_and(|refs| !refs.contains(&ask.git_ref))
        {
            return Err(not_created("Reference not found"));
        }
        if project.forbid_variables && !ask.variables.is_empty() {
            return Err(not_created(
                "Insufficient permissions to set pipeline variables",
            ));
        }
        let plan = project
            .ref_plans
            .get(&ask.git_ref)
            .unwrap_or(&project.plan)
            .clone();
        let (pid, path) = (project.id, project.path.clone());
        let iid = inner
            .pipelines
            .values()
            .filter(|p| p.project == pid)
            .count() as u64
            + 1;
        inner.next_id += 1;
        let id = 1000 + inner.next_id;
        let mut job_ids = Vec::new();
        for _ in &plan.jobs {
            inner.next_id += 1;
            job_ids.push(5000 + inner.next_id);
        }
        let pipeline = Pipeline {
            id,
            iid,
            project: pid,
            git_ref: ask.git_ref,
            source: ask.source,
            sha: format!("{:040x}", id * 7919),
            variables: ask.variables,
            inputs: ask.inputs,
            plan,
            job_ids,
            born: Instant::now(),
            born_ms: now_ms(),
            played: BTreeMap::new(),
            cancelled: None,
        };
        let body = pipeline.json(&self.base(), &path, Instant::now());
        inner.pipelines.insert(id, pipeline);
        Ok((body, id))
    }
}

async fn create(
    State(gl): State<GitLab>,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match gl.begin(&headers, Scope::Create, false) {
        Ok(call) => call,
        Err(r) => return *r,
    };
    let body: Map<String, Value> = if body.is_empty() {
        Map::new()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(_) => return invalid("body is not JSON"),
        }
    };
    let Some(inputs) = inputs_of(&body) else {
        return invalid("inputs is invalid");
    };
    let git_ref = body
        .get("ref")
        .and_then(Value::as_str)
        .or(query.get("ref").map(String::as_str))
        .unwrap_or_default()
        .to_owned();
    // The pipeline API takes the array shape only.
    let variables = match body.get("variables") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                match (
                    item.get("key").and_then(Value::as_str),
                    item.get("value").and_then(Value::as_str),
                    item.get("variable_type").and_then(Value::as_str),
                ) {
                    (Some(k), Some(v), None | Some("env_var" | "file")) => {
                        out.push((k.to_owned(), v.to_owned()));
                    }
                    _ => return invalid("variables[key], variables[value] are invalid"),
                }
            }
            out
        }
        Some(_) => return invalid("variables is invalid"),
    };
    match gl.create_pipeline(
        &id,
        Create {
            git_ref,
            variables,
            inputs,
            source: "api",
        },
    ) {
        Ok((json, _)) => gl.answer(call, StatusCode::CREATED, json).await,
        Err(r) => *r,
    }
}

async fn trigger(
    State(gl): State<GitLab>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match gl.begin(&headers, Scope::Create, true) {
        Ok(call) => call,
        Err(r) => return *r,
    };
    let Ok(body) = serde_json::from_slice::<Map<String, Value>>(&body) else {
        return invalid("body is not JSON");
    };
    let token = body
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let known = {
        let inner = gl.lock();
        find_project(&inner, &id)
            .is_some_and(|p| !token.is_empty() && p.trigger_token.as_deref() == Some(token))
    };
    if !known {
        return gl_error(StatusCode::NOT_FOUND, "404 Not Found");
    }
    // The trigger API takes the hash shape only.
    let variables = match body.get("variables") {
        None => Vec::new(),
        Some(Value::Object(vars)) => {
            let mut out = Vec::new();
            for (k, v) in vars {
                match v.as_str() {
                    Some(v) => out.push((k.clone(), v.to_owned())),
                    None => return invalid("variables is invalid"),
                }
            }
            out
        }
        Some(_) => return invalid("variables is invalid"),
    };
    let Some(inputs) = inputs_of(&body) else {
        return invalid("inputs is invalid");
    };
    let git_ref = body
        .get("ref")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    match gl.create_pipeline(
        &id,
        Create {
            git_ref,
            variables,
            inputs,
            source: "trigger",
        },
    ) {
        Ok((json, _)) => gl.answer(call, StatusCode::CREATED, json).await,
        Err(r) => *r,
    }
}

/// Runs `f` on the pipeline `pid` of project `id`, or answers 404 as GitLab does.
fn with_pipeline<T>(
    gl: &GitLab,
    id: &str,
    pid: &str,
    f: impl FnOnce(&mut Pipeline, &str) -> T,
) -> Result<T, Box<Response>> {
    let mut inner = gl.lock();
    let Some(project) = find_project(&inner, id) else {
        return Err(Box::new(gl_error(
            StatusCode::NOT_FOUND,
            "404 Project Not Found",
        )));
    };
    let (project_id, path) = (project.id, project.path.clone());
    match pid
        .parse::<u64>()
        .ok()
        .and_then(|n| inner.pipelines.get_mut(&n))
    {
        Some(p) if p.project == project_id => Ok(f(p, &path)),
        _ => Err(Box::new(gl_error(StatusCode::NOT_FOUND, "404 Not found"))),
    }
}

async fn list(
    State(gl): State<GitLab>,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let call = match gl.begin(&headers, Scope::Read, false) {
        Ok(call) => call,
        Err(r) => return *r,
    };
    let base = gl.base();
    let now = Instant::now();
    let list: Vec<Value> = {
        let inner = gl.lock();
        let Some(project) = find_project(&inner, &id) else {
            return gl_error(StatusCode::NOT_FOUND, "404 Project Not Found");
        };
        let per_page = query
            .get("per_page")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(20)
            .min(100);
        let mut found: Vec<&Pipeline> = inner
            .pipelines
            .values()
            .filter(|p| p.project == project.id)
            .filter(|p| query.get("ref").is_none_or(|r| *r == p.git_ref))
            .filter(|p| query.get("source").is_none_or(|s| s == p.source))
            .filter(|p| {
                // Times in UTC, `YYYY-MM-DDTHH:MM:SS` first, compare as text to the second.
                let updated = iso(p.born_ms + now.duration_since(p.born).as_millis() as u64);
                query.get("updated_after").is_none_or(|after| {
                    let second = |t: &str| t.get(..19).unwrap_or(t).to_owned();
                    second(&updated) >= second(after)
                })
            })
            .collect();
        if query.get("sort").is_none_or(|s| s == "desc") {
            found.reverse();
        }
        found
            .into_iter()
            .take(per_page)
            .map(|p| p.json(&base, &project.path, now))
            .collect()
    };
    gl.answer(call, StatusCode::OK, Value::Array(list)).await
}

/// A pipeline endpoint: the request counted, faults and token checked, `f` run on the
/// pipeline (404 when the project has none such), its JSON answered with 200.
async fn on_pipeline(
    gl: &GitLab,
    headers: &HeaderMap,
    scope: Scope,
    (id, pid): (String, String),
    f: impl FnOnce(&mut Pipeline, &str, &str) -> Value,
) -> Response {
    let call = match gl.begin(headers, scope, false) {
        Ok(call) => call,
        Err(r) => return *r,
    };
    let base = gl.base();
    match with_pipeline(gl, &id, &pid, |p, path| f(p, path, &base)) {
        Ok(json) => gl.answer(call, StatusCode::OK, json).await,
        Err(r) => *r,
    }
}

async fn show(
    State(gl): State<GitLab>,
    Path(ids): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    on_pipeline(&gl, &headers, Scope::Read, ids, |p, path, base| {
        p.json(base, path, Instant::now())
    })
    .await
}

async fn variables(
    State(gl): State<GitLab>,
    Path(ids): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    on_pipeline(&gl, &headers, Scope::Read, ids, |p, _, _| {
        p.variables
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v, "variable_type": "env_var"}))
            .collect()
    })
    .await
}

async fn jobs(
    State(gl): State<GitLab>,
    Path(ids): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    on_pipeline(&gl, &headers, Scope::Read, ids, |p, path, base| {
        let (_, statuses) = p.at(Instant::now());
        let mut jobs: Vec<Value> = p
            .plan
            .jobs
            .iter()
            .zip(&p.job_ids)
            .zip(statuses)
            .map(|((j, jid), status)| {
                let archive = (!j.artifacts.is_empty())
                    .then(|| json!({"filename": "artifacts.zip", "size": 1024}));
                json!({
                    "id": jid,
                    "name": j.name,
                    "stage": j.stage,
                    "status": status,
                    "allow_failure": false,
                    "web_url": format!("{base}/{path}/-/jobs/{jid}"),
                    "artifacts_file": archive,
                    "pipeline": {"id": p.id},
                })
            })
            .collect();
        // GitLab lists a pipeline's jobs newest first.
        jobs.reverse();
        Value::Array(jobs)
    })
    .await
}

async fn cancel(
    State(gl): State<GitLab>,
    Path(ids): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    // 200 whatever the state (gitlab-org/gitlab#414963); a finished pipeline stays as it is.
    on_pipeline(&gl, &headers, Scope::Any, ids, |p, path, base| {
        let now = Instant::now();
        if p.cancelled.is_none() && !p.plan.ignores_cancel && !is_end(&p.run_at(now).0) {
            p.cancelled = Some(now);
        }
        p.json(base, path, now)
    })
    .await
}

/// Runs `f` on the job `jid` of project `id` (its plan and its status now).
fn with_job<T>(
    gl: &GitLab,
    id: &str,
    jid: &str,
    f: impl FnOnce(&mut Pipeline, usize, &str) -> T,
) -> Result<T, Box<Response>> {
    let mut inner = gl.lock();
    let Some(project) = find_project(&inner, id) else {
        return Err(Box::new(gl_error(
            StatusCode::NOT_FOUND,
            "404 Project Not Found",
        )));
    };
    let project_id = project.id;
    let jid: u64 = jid.parse().unwrap_or_default();
    for p in inner.pipelines.values_mut() {
        if p.project != project_id {
            continue;
        }
        if let Some(i) = p.job_ids.iter().position(|j| *j == jid) {
            let (_, statuses) = p.at(Instant::now());
            let status = statuses[i].clone();
            return Ok(f(p, i, &status));
        }
    }
    Err(Box::new(gl_error(
        StatusCode::NOT_FOUND,
        "404 Job Not Found",
    )))
}

async fn trace(
    State(gl): State<GitLab>,
    Path((id, jid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gl.begin(&headers, Scope::Read, false) {
        return *r;
    }
    match with_job(&gl, &id, &jid, |p, i, status| match status {
        "created" | "pending" | "manual" => String::new(),
        _ => p.plan.jobs[i].trace.clone(),
    }) {
        Ok(text) => (StatusCode::OK, [("content-type", "text/plain")], text).into_response(),
        Err(r) => *r,
    }
}

async fn play(
    State(gl): State<GitLab>,
    Path((id, jid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gl.begin(&headers, Scope::Any, false) {
        return *r;
    }
    let played = with_job(&gl, &id, &jid, |p, i, status| {
        if status == "manual" {
            p.played.entry(i).or_insert_with(Instant::now);
            true
        } else {
            false
        }
    });
    match played {
        Ok(true) => (StatusCode::OK, axum::Json(json!({"id": jid}))).into_response(),
        Ok(false) => gl_error(StatusCode::BAD_REQUEST, "400 Unplayable Job"),
        Err(r) => *r,
    }
}

async fn artifact(
    State(gl): State<GitLab>,
    Path((id, jid, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gl.begin(&headers, Scope::Read, false) {
        return *r;
    }
    let file = with_job(&gl, &id, &jid, |p, i, status| {
        is_end(status)
            .then(|| p.plan.jobs[i].artifacts.get(&path).cloned())
            .flatten()
    });
    match file {
        Ok(Some(bytes)) => (StatusCode::OK, bytes).into_response(),
        Ok(None) => gl_error(StatusCode::NOT_FOUND, "404 Not Found"),
        Err(r) => *r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_gitlab_writes_them() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_471_015_408_123), "2016-08-12T15:23:28.123Z");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_pipeline_moves_through_its_jobs_and_waits_for_a_manual_one() {
        let gl = GitLab::new();
        gl.project("g/app").plan(
            PipelinePlan::new(vec![
                JobPlan::new("build", "build").runs_for(Duration::from_millis(100)),
                JobPlan::new("deploy", "deploy")
                    .manual()
                    .runs_for(Duration::from_millis(100)),
            ])
            .queued_for(Duration::ZERO, Duration::ZERO),
        );
        let (_, pid) = gl
            .create_pipeline(
                "g/app",
                Create {
                    git_ref: "main".into(),
                    variables: vec![],
                    inputs: Value::Null,
                    source: "api",
                },
            )
            .unwrap();
        assert_eq!(gl.pipelines()[0].status, "running");
        std::thread::sleep(Duration::from_millis(150));
        let view = &gl.pipelines()[0];
        assert_eq!(view.status, "manual");
        assert_eq!(view.jobs[1], ("deploy".into(), "manual".into()));
        assert!(gl.play(pid, "deploy"));
        assert_eq!(gl.pipelines()[0].status, "running");
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(gl.pipelines()[0].status, "success");
        assert!(
            gl.pipeline_hook(pid)
                .unwrap()
                .contains("\"Pipeline for branch: master\"")
        );
    }
}
