//! GitHub's REST API for Actions, as `docs/adapters/github-actions.md` uses it: workflow
//! dispatches, runs that move from queued to their end as real time passes, cancels and
//! force-cancels, jobs with logs, artifacts (a `baton-outputs` zip among them), the runs
//! list with its filters, ETags and 304s, per-credential rate limits, and GitHub App
//! installation tokens. Downloads (artifacts, job logs) answer 302 to a second listener,
//! addressed as `localhost`, which refuses and records any request that carries an
//! `Authorization` header, as a client that forwarded its token would.
//!
//! Facts followed: GitHub's REST reference for workflows, workflow runs, jobs and
//! artifacts, and "Rate limits for the REST API" (docs.github.com); the dispatch's
//! `return_run_details` from the GitHub changelog of 2026-02-19.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::{Meter, Served, lock, serve, serve_in_background};

/// The published `workflow_run` delivery (octokit/webhooks; see tests/fixtures/README.md),
/// whose shape [`Github::workflow_run_delivery`] fills in.
const WORKFLOW_RUN_FIXTURE: &str = include_str!("../../../tests/fixtures/github/workflow_run.json");

/// The test key pair's public half, for [`Github::app`].
pub const TEST_APP_PUBLIC_KEY: &str = include_str!("../fixtures/github-app-test-key.pub.pem");
/// The test key pair's private half, for the adapter's `app.key`.
pub const TEST_APP_PRIVATE_KEY: &str = include_str!("../fixtures/github-app-test-key.pem");

/// How long after a cancel a run that honours it shows `cancelled`.
const CANCEL_DELAY: Duration = Duration::from_millis(300);

/// How `POST …/dispatches` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchMode {
    /// github.com today: 200 with the run's id when `return_run_details` is true, else 204.
    Details,
    /// GHES and older API versions that ignore the flag: always 204.
    NoContent,
    /// Versions that reject the flag: 422 when it is sent, else 204.
    RejectDetails,
}

/// A misbehaviour for the next requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// 502 Bad Gateway.
    ServerError,
    /// 429 with `retry-after` (seconds).
    TooManyRequests(u64),
    /// A secondary rate limit: 403 with `retry-after` (seconds).
    SecondaryLimit(u64),
    /// 200 with a body that is not JSON.
    Garbage,
    /// The right answer, after this long (past a client's timeout).
    Delay(Duration),
}

/// One job of a workflow.
#[derive(Debug, Clone)]
struct JobDef {
    name: String,
    conclusion: Option<String>,
    log: String,
}

/// A workflow file and how its runs behave.
#[derive(Debug, Clone)]
pub struct Workflow {
    file: String,
    id: u64,
    inputs: Vec<String>,
    run_name: Option<String>,
    queued: Duration,
    waiting: Duration,
    running: Duration,
    conclusion: Option<String>,
    status_while_running: Option<String>,
    jobs: Vec<JobDef>,
    artifacts: Vec<(String, Vec<u8>)>,
    stubborn: bool,
}

impl Workflow {
    /// A workflow `.github/workflows/<file>` whose runs queue 200 ms, run 1 s and succeed,
    /// with one job `build`.
    pub fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            id: 0,
            inputs: Vec::new(),
            run_name: None,
            queued: Duration::from_millis(200),
            waiting: Duration::ZERO,
            running: Duration::from_secs(1),
            conclusion: Some("success".to_owned()),
            status_while_running: None,
            jobs: vec![JobDef {
                name: "build".into(),
                conclusion: None,
                log: "building\ndone\n".into(),
            }],
            artifacts: Vec::new(),
            stubborn: false,
        }
    }

    /// Declares `on.workflow_dispatch.inputs`; others are refused with 422.
    pub fn inputs(mut self, names: &[&str]) -> Self {
        self.inputs = names.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    /// `run-name`: `${{ inputs.<name> }}` and `${{ github.workflow }}` are filled in.
    pub fn run_name(mut self, template: &str) -> Self {
        self.run_name = Some(template.to_owned());
        self
    }

    /// How long runs stay `queued`.
    pub fn queued_for(mut self, d: Duration) -> Self {
        self.queued = d;
        self
    }

    /// How long runs stay `waiting` (an environment approval) after the queue.
    pub fn waiting_for(mut self, d: Duration) -> Self {
        self.waiting = d;
        self
    }

    /// How long runs stay `in_progress`.
    pub fn runs_for(mut self, d: Duration) -> Self {
        self.running = d;
        self
    }

    /// The conclusion runs end with (any string, `startup_failure` or one GitHub never
    /// sent included); `None` leaves `conclusion` null at `completed`.
    pub fn conclusion(mut self, c: Option<&str>) -> Self {
        self.conclusion = c.map(str::to_owned);
        self
    }

    /// The status shown instead of `in_progress` while running (an unseen value).
    pub fn status_while_running(mut self, status: &str) -> Self {
        self.status_while_running = Some(status.to_owned());
        self
    }

    /// Replaces the jobs: name, conclusion (`None`: the run's), log text.
    pub fn jobs(mut self, jobs: &[(&str, Option<&str>, &str)]) -> Self {
        self.jobs = jobs
            .iter()
            .map(|(n, c, l)| JobDef {
                name: (*n).into(),
                conclusion: c.map(str::to_owned),
                log: (*l).into(),
            })
            .collect();
        self
    }

    /// Adds an artifact with these bytes (uploaded when the run completes, unless cancelled).
    pub fn artifact(mut self, name: &str, bytes: Vec<u8>) -> Self {
        self.artifacts.push((name.to_owned(), bytes));
        self
    }

    /// Adds the `baton-outputs` artifact: a zip holding `outputs.json` with `outputs`.
    pub fn outputs(self, outputs: &Value) -> Self {
        let zip = zip_archive(&[("outputs.json", outputs.to_string().as_bytes())]);
        self.artifact("baton-outputs", zip)
    }

    /// Ignores `cancel`: runs go on until `force-cancel`.
    pub fn stubborn(mut self) -> Self {
        self.stubborn = true;
        self
    }
}

/// A run as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    /// The run id.
    pub id: u64,
    /// The workflow file.
    pub workflow: String,
    /// The title (`run-name` rendered).
    pub display_title: String,
    /// `status` now.
    pub status: String,
    /// `conclusion` now.
    pub conclusion: Option<String>,
    /// The inputs it was dispatched with.
    pub inputs: Map<String, Value>,
    /// The branch it was dispatched on.
    pub branch: String,
    /// `cancel` requests received.
    pub cancels: u32,
    /// `force-cancel` requests received.
    pub force_cancels: u32,
}

#[derive(Debug, Clone)]
struct RunRec {
    id: u64,
    number: u64,
    workflow: usize,
    branch: String,
    display_title: String,
    inputs: Map<String, Value>,
    created: Instant,
    created_at: SystemTime,
    cancel_at: Option<Instant>,
    forced: bool,
    cancels: u32,
    force_cancels: u32,
}

#[derive(Debug)]
struct RateWindow {
    start: SystemTime,
    used: u64,
}

#[derive(Debug)]
struct AppConfig {
    id: u64,
    public_pem: String,
    ttl: Duration,
}

#[derive(Debug)]
struct Shared {
    repo: String,
    tokens: Mutex<HashMap<String, String>>,
    app: Mutex<Option<AppConfig>>,
    installation_tokens: Mutex<HashMap<String, (String, SystemTime)>>,
    rate: Mutex<Option<(u64, Duration)>>,
    windows: Mutex<HashMap<String, RateWindow>>,
    lowest: Mutex<HashMap<String, u64>>,
    dispatch_mode: Mutex<DispatchMode>,
    etags: AtomicBool,
    faults: Mutex<VecDeque<(Option<String>, Fault)>>,
    workflows: Mutex<Vec<Workflow>>,
    runs: Mutex<Vec<RunRec>>,
    next_id: AtomicU64,
    meter: Meter,
    downloads_url: OnceLock<String>,
    refused: Mutex<Vec<String>>,
    downloads: AtomicU64,
}

/// The fake GitHub: configure it, serve it, and look at what happened. Clones share it.
#[derive(Debug, Clone)]
pub struct Github {
    shared: Arc<Shared>,
}

/// A [`Github`] being served.
#[derive(Debug)]
pub struct Serving {
    /// The API root, for the adapter's `url` (`http://127.0.0.1:<port>`).
    pub url: String,
    /// The download host (`http://localhost:<port>`).
    pub downloads_url: String,
    _api: Served,
    _downloads: Served,
}

impl Default for Github {
    fn default() -> Self {
        Self::new("octo-org/app")
    }
}

impl Github {
    /// A fake GitHub with repository `repo` (`owner/name`), no tokens, no rate limit.
    pub fn new(repo: &str) -> Self {
        Self {
            shared: Arc::new(Shared {
                repo: repo.to_owned(),
                tokens: Mutex::default(),
                app: Mutex::default(),
                installation_tokens: Mutex::default(),
                rate: Mutex::default(),
                windows: Mutex::default(),
                lowest: Mutex::default(),
                dispatch_mode: Mutex::new(DispatchMode::Details),
                etags: AtomicBool::new(true),
                faults: Mutex::default(),
                workflows: Mutex::default(),
                runs: Mutex::default(),
                next_id: AtomicU64::new(1000),
                meter: Meter::default(),
                downloads_url: OnceLock::new(),
                refused: Mutex::default(),
                downloads: AtomicU64::new(0),
            }),
        }
    }

    /// Accepts bearer token `value`, counted under `name`.
    pub fn token(&self, name: &str, value: &str) -> &Self {
        lock(&self.shared.tokens).insert(value.to_owned(), name.to_owned());
        self
    }

    /// Accepts JWTs of App `id` signed with the private half of `public_pem`; installation
    /// tokens last `ttl`.
    pub fn app(&self, id: u64, public_pem: &str, ttl: Duration) -> &Self {
        *lock(&self.shared.app) = Some(AppConfig {
            id,
            public_pem: public_pem.to_owned(),
            ttl,
        });
        self
    }

    /// Ends every installation token issued so far: later requests with them get 401.
    pub fn revoke_installation_tokens(&self) -> &Self {
        for (_, expires) in lock(&self.shared.installation_tokens).values_mut() {
            *expires = UNIX_EPOCH;
        }
        self
    }

    /// Every credential gets `limit` requests per `window` (a 304 is free).
    pub fn rate_limit(&self, limit: u64, window: Duration) -> &Self {
        *lock(&self.shared.rate) = Some((limit, window));
        self
    }

    /// Adds a workflow.
    pub fn add_workflow(&self, mut workflow: Workflow) -> &Self {
        let mut workflows = lock(&self.shared.workflows);
        workflow.id = 9000 + workflows.len() as u64;
        workflows.push(workflow);
        self
    }

    /// How dispatches answer from now on.
    pub fn dispatch_mode(&self, mode: DispatchMode) -> &Self {
        *lock(&self.shared.dispatch_mode) = mode;
        self
    }

    /// Whether run reads carry ETags (and answer 304 to a matching `If-None-Match`).
    pub fn etags(&self, on: bool) -> &Self {
        self.shared.etags.store(on, Ordering::SeqCst);
        self
    }

    /// The next `n` API requests misbehave as `fault` says.
    pub fn fault(&self, n: usize, fault: Fault) -> &Self {
        self.fault_on("", n, fault)
    }

    /// The next `n` API requests whose path contains `part` misbehave as `fault` says.
    pub fn fault_on(&self, part: &str, n: usize, fault: Fault) -> &Self {
        let mut faults = lock(&self.shared.faults);
        for _ in 0..n {
            faults.push_back((
                Some(part.to_owned()).filter(|p| !p.is_empty()),
                fault.clone(),
            ));
        }
        self
    }

    /// Every request counted, by credential name (`download` for the download host).
    pub fn meter(&self) -> &Meter {
        &self.shared.meter
    }

    /// The lowest `x-ratelimit-remaining` answered to credential `name`.
    pub fn lowest_remaining(&self, name: &str) -> Option<u64> {
        lock(&self.shared.lowest).get(name).copied()
    }

    /// Runs created of workflow `file`.
    pub fn runs_created(&self, file: &str) -> usize {
        self.runs().iter().filter(|r| r.workflow == file).count()
    }

    /// Every run, oldest first.
    pub fn runs(&self) -> Vec<RunView> {
        let workflows = lock(&self.shared.workflows).clone();
        let runs = lock(&self.shared.runs).clone();
        runs.iter()
            .map(|r| {
                let w = &workflows[r.workflow];
                let (status, conclusion) = state(r, w, Instant::now());
                RunView {
                    id: r.id,
                    workflow: w.file.clone(),
                    display_title: r.display_title.clone(),
                    status,
                    conclusion,
                    inputs: r.inputs.clone(),
                    branch: r.branch.clone(),
                    cancels: r.cancels,
                    force_cancels: r.force_cancels,
                }
            })
            .collect()
    }

    /// Requests to the download host that carried `Authorization` (refused), by path.
    pub fn refused_downloads(&self) -> Vec<String> {
        lock(&self.shared.refused).clone()
    }

    /// Downloads served (without `Authorization`).
    pub fn downloads_served(&self) -> u64 {
        self.shared.downloads.load(Ordering::SeqCst)
    }

    /// The body of a `workflow_run` delivery for run `id` as it is now: the published
    /// fixture's shape with `action`, `id`, `status`, `conclusion`, `display_title`,
    /// `head_branch` and the URLs set. Sign it as the `github` source expects.
    pub fn workflow_run_delivery(&self, id: u64, action: &str) -> String {
        let mut body: Value =
            serde_json::from_str(WORKFLOW_RUN_FIXTURE).expect("the fixture is JSON");
        let view = self.runs().into_iter().find(|r| r.id == id);
        body["action"] = json!(action);
        let run = &mut body["workflow_run"];
        run["id"] = json!(id);
        if let Some(v) = view {
            run["status"] = json!(v.status);
            run["conclusion"] = json!(v.conclusion);
            run["display_title"] = json!(v.display_title);
            run["head_branch"] = json!(v.branch);
            run["event"] = json!("workflow_dispatch");
        }
        run["html_url"] = json!(format!(
            "https://github.com/{}/actions/runs/{id}",
            self.shared.repo
        ));
        run["url"] = json!(format!(
            "https://api.github.com/repos/{}/actions/runs/{id}",
            self.shared.repo
        ));
        body.to_string()
    }

    /// Serves the API and the download host from the current Tokio runtime.
    pub async fn serve(&self) -> std::io::Result<Serving> {
        let downloads = serve(self.download_router()).await?;
        let downloads_url = format!("http://localhost:{}", downloads.addr.port());
        let _ = self.shared.downloads_url.set(downloads_url.clone());
        let api = serve(self.api_router()).await?;
        Ok(Serving {
            url: api.url.clone(),
            downloads_url,
            _api: api,
            _downloads: downloads,
        })
    }

    /// Serves them from runtimes of their own, for tests that are not async.
    pub fn serve_in_background(&self) -> std::io::Result<Serving> {
        let downloads = serve_in_background(|| self.download_router())?;
        let downloads_url = format!("http://localhost:{}", downloads.addr.port());
        let _ = self.shared.downloads_url.set(downloads_url.clone());
        let api = serve_in_background(|| self.api_router())?;
        Ok(Serving {
            url: api.url.clone(),
            downloads_url,
            _api: api,
            _downloads: downloads,
        })
    }

    fn api_router(&self) -> Router {
        Router::new().fallback(api).with_state(self.shared.clone())
    }

    fn download_router(&self) -> Router {
        Router::new()
            .fallback(download)
            .with_state(self.shared.clone())
    }
}

/// A zip archive holding `files`, each deflated (as `actions/upload-artifact` writes them).
pub fn zip_archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let packed = miniz_oxide::deflate::compress_to_vec(data, 6);
        let crc = crc32fast::hash(data);
        let offset = out.len() as u32;
        let fields = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed
            v.extend_from_slice(&0u16.to_le_bytes()); // flags
            v.extend_from_slice(&8u16.to_le_bytes()); // deflate
            v.extend_from_slice(&[0; 4]); // time, date
            v.extend_from_slice(&crc.to_le_bytes());
            v.extend_from_slice(&(packed.len() as u32).to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        fields(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&packed);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        fields(&mut central);
        central.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let at = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(files.len() as u16).to_le_bytes());
    out.extend_from_slice(&(files.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A run's `status` and `conclusion` at `now`.
fn state(r: &RunRec, w: &Workflow, now: Instant) -> (String, Option<String>) {
    let cancelled = || ("completed".to_owned(), Some("cancelled".to_owned()));
    if r.forced {
        return cancelled();
    }
    let elapsed = now.duration_since(r.created);
    let end = w.queued + w.waiting + w.running;
    if let Some(at) = r.cancel_at {
        if w.stubborn {
            return ("in_progress".to_owned(), None);
        }
        if now >= at + CANCEL_DELAY && r.created + end > at {
            return cancelled();
        }
    }
    if elapsed < Duration::from_millis(50).min(w.queued) {
        ("requested".to_owned(), None)
    } else if elapsed < w.queued {
        ("queued".to_owned(), None)
    } else if elapsed < w.queued + w.waiting {
        ("waiting".to_owned(), None)
    } else if elapsed < end {
        (
            w.status_while_running
                .clone()
                .unwrap_or_else(|| "in_progress".to_owned()),
            None,
        )
    } else {
        ("completed".to_owned(), w.conclusion.clone())
    }
}

fn iso(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn reply(status: StatusCode, headers: &[(&str, String)], body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(*k),
            HeaderValue::from_str(v),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn json_reply(status: StatusCode, body: &Value) -> Response {
    reply(
        status,
        &[("content-type", "application/json; charset=utf-8".into())],
        body.to_string(),
    )
}

fn message(status: StatusCode, text: &str) -> Response {
    json_reply(
        status,
        &json!({"message": text, "documentation_url": "https://docs.github.com/rest"}),
    )
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("token "))
        })
        .map(str::to_owned)
}

/// Every API request: auth, faults, the rate limit, then the route.
async fn api(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query: HashMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), decode(v)))
        .collect();
    let token = bearer(&headers);
    if let Some(rest) = path.strip_prefix("/app/installations/") {
        s.meter.record("jwt");
        return installation_token(&s, rest, token.as_deref());
    }
    let credential = match token.as_deref() {
        None => {
            s.meter.record("anonymous");
            return message(StatusCode::UNAUTHORIZED, "Requires authentication");
        }
        Some(t) => {
            let named = lock(&s.tokens).get(t).cloned();
            let installed = lock(&s.installation_tokens).get(t).cloned();
            match (named, installed) {
                (Some(name), _) => name,
                (None, Some((name, expires))) if SystemTime::now() < expires => name,
                (None, Some((name, _))) => {
                    s.meter.record(&name);
                    return message(StatusCode::UNAUTHORIZED, "Bad credentials");
                }
                (None, None) => {
                    s.meter.record("unknown");
                    return message(StatusCode::UNAUTHORIZED, "Bad credentials");
                }
            }
        }
    };
    s.meter.record(&credential);
    let fault = {
        let mut faults = lock(&s.faults);
        let at = faults
            .iter()
            .position(|(part, _)| part.as_deref().is_none_or(|p| path.contains(p)));
        at.and_then(|i| faults.remove(i)).map(|(_, f)| f)
    };
    match &fault {
        Some(Fault::ServerError) => return message(StatusCode::BAD_GATEWAY, "Server Error"),
        Some(Fault::TooManyRequests(after)) => {
            return reply(
                StatusCode::TOO_MANY_REQUESTS,
                &[("retry-after", after.to_string())],
                "{\"message\":\"Too many requests\"}",
            );
        }
        Some(Fault::SecondaryLimit(after)) => {
            return reply(
                StatusCode::FORBIDDEN,
                &[
                    ("retry-after", after.to_string()),
                    ("content-type", "application/json".into()),
                ],
                "{\"message\":\"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.\"}",
            );
        }
        _ => {}
    }
    if let Err(headers) = rate_headers(&s, &credential, false) {
        let mut refused = message(
            StatusCode::FORBIDDEN,
            &format!("API rate limit exceeded for {credential}."),
        );
        refused.headers_mut().extend(headers);
        return refused;
    }
    let (mut response, free) = route(&s, &method, &path, &query, &headers, &body);
    let (Ok(rate) | Err(rate)) = rate_headers(&s, &credential, !free);
    response.headers_mut().extend(rate);
    match fault {
        Some(Fault::Garbage) => {
            *response.body_mut() = Body::from("<html><body>unicorn</body></html>");
            *response.status_mut() = StatusCode::OK;
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    response
}

/// Counts a request against `credential`'s window when `count` says so, and gives the
/// headers; `Err` when the window is spent.
fn rate_headers(s: &Shared, credential: &str, count: bool) -> Result<HeaderMap, HeaderMap> {
    let mut headers = HeaderMap::new();
    let Some((limit, window)) = *lock(&s.rate) else {
        return Ok(headers);
    };
    let now = SystemTime::now();
    let mut windows = lock(&s.windows);
    let w = windows.entry(credential.to_owned()).or_insert(RateWindow {
        start: now,
        used: 0,
    });
    if now.duration_since(w.start).unwrap_or_default() >= window {
        *w = RateWindow {
            start: now,
            used: 0,
        };
    }
    let spent = w.used >= limit;
    if count && !spent {
        w.used += 1;
    }
    let remaining = limit - w.used.min(limit);
    let reset = epoch(w.start + window)
        + u64::from(
            (w.start + window)
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos() > 0)
                .unwrap_or(false),
        );
    let mut lowest = lock(&s.lowest);
    let low = lowest.entry(credential.to_owned()).or_insert(remaining);
    *low = (*low).min(remaining);
    for (k, v) in [
        ("x-ratelimit-limit", limit.to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
        ("x-ratelimit-used", w.used.to_string()),
        ("x-ratelimit-resource", "core".to_owned()),
    ] {
        headers.insert(k, HeaderValue::from_str(&v).expect("ascii"));
    }
    if spent { Err(headers) } else { Ok(headers) }
}

fn installation_token(s: &Shared, rest: &str, jwt: Option<&str>) -> Response {
    use octocrab::jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
    let Some(installation) = rest.strip_suffix("/access_tokens") else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    let app = lock(&s.app);
    let Some(app) = app.as_ref() else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    let Ok(key) = DecodingKey::from_rsa_pem(app.public_pem.as_bytes()) else {
        return message(StatusCode::INTERNAL_SERVER_ERROR, "bad test key");
    };
    let claims =
        jwt.and_then(|t| decode::<Value>(t, &key, &Validation::new(Algorithm::RS256)).ok());
    let iss_ok = claims.as_ref().is_some_and(|c| {
        c.claims["iss"] == json!(app.id) || c.claims["iss"] == json!(app.id.to_string())
    });
    if !iss_ok {
        return message(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded",
        );
    }
    let n = s.next_id.fetch_add(1, Ordering::SeqCst);
    let token = format!("ghs_fake{n}x{}", epoch(SystemTime::now()));
    // GitHub's expiry is whole seconds; the token lapses exactly then.
    let expires = UNIX_EPOCH + Duration::from_secs(epoch(SystemTime::now() + app.ttl));
    lock(&s.installation_tokens).insert(token.clone(), (format!("app:{installation}"), expires));
    json_reply(
        StatusCode::CREATED,
        &json!({"token": token, "expires_at": iso(expires), "permissions": {"actions": "write"}}),
    )
}

fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(&v[i + 1..i + 3], 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The route's answer, and whether it is free (a 304).
fn route(
    s: &Shared,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, bool) {
    let prefix = format!("/repos/{}/actions/", s.repo);
    let Some(rest) = path.strip_prefix(&prefix) else {
        return (message(StatusCode::NOT_FOUND, "Not Found"), false);
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let answer = match (method.as_str(), parts.as_slice()) {
        ("POST", ["workflows", wf, "dispatches"]) => dispatch(s, &decode(wf), body),
        ("GET", ["workflows", wf, "runs"]) => list_runs(s, &decode(wf), query),
        ("GET", ["runs", id]) => return read_run(s, id, headers),
        ("POST", ["runs", id, op @ ("cancel" | "force-cancel")]) => cancel(s, id, op),
        ("GET", ["runs", id, "jobs"]) => jobs(s, id),
        ("GET", ["runs", id, "artifacts"]) => artifacts(s, id),
        ("GET", ["artifacts", id, "zip"]) => redirect(s, "artifacts", id),
        ("GET", ["jobs", id, "logs"]) => redirect(s, "logs", id),
        _ => message(StatusCode::NOT_FOUND, "Not Found"),
    };
    (answer, false)
}

fn find_workflow(s: &Shared, wf: &str) -> Option<(usize, Workflow)> {
    lock(&s.workflows)
        .iter()
        .enumerate()
        .find(|(_, w)| w.file == wf || w.id.to_string() == wf)
        .map(|(i, w)| (i, w.clone()))
}

fn dispatch(s: &Shared, wf: &str, body: &[u8]) -> Response {
    let Some((index, workflow)) = find_workflow(s, wf) else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return message(StatusCode::BAD_REQUEST, "Problems parsing JSON");
    };
    let Some(git_ref) = body["ref"].as_str().filter(|r| !r.is_empty()) else {
        return message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid request.\n\n\"ref\" wasn't supplied.",
        );
    };
    let details = body["return_run_details"] == json!(true);
    let mode = *lock(&s.dispatch_mode);
    if details && mode == DispatchMode::RejectDetails {
        return message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid request.\n\n\"return_run_details\" is not a permitted key.",
        );
    }
    let inputs = body["inputs"].as_object().cloned().unwrap_or_default();
    let unexpected: Vec<&String> = inputs
        .keys()
        .filter(|k| !workflow.inputs.contains(k))
        .collect();
    if !unexpected.is_empty() {
        return message(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("Unexpected inputs provided: {unexpected:?}"),
        );
    }
    if let Some(bad) = inputs.iter().find(|(_, v)| !v.is_string()) {
        return message(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("For 'properties/{}', {} is not a string.", bad.0, bad.1),
        );
    }
    let name = workflow
        .file
        .trim_end_matches(".yml")
        .trim_end_matches(".yaml")
        .to_owned();
    let mut title = workflow.run_name.clone().unwrap_or_else(|| name.clone());
    title = title.replace("${{ github.workflow }}", &name);
    for input in &workflow.inputs {
        let value = inputs
            .get(input)
            .and_then(Value::as_str)
            .unwrap_or_default();
        title = title.replace(&format!("${{{{ inputs.{input} }}}}"), value);
    }
    let id = s.next_id.fetch_add(1, Ordering::SeqCst);
    let mut runs = lock(&s.runs);
    let number = runs.iter().filter(|r| r.workflow == index).count() as u64 + 1;
    runs.push(RunRec {
        id,
        number,
        workflow: index,
        branch: git_ref.to_owned(),
        display_title: title,
        inputs,
        created: Instant::now(),
        created_at: SystemTime::now(),
        cancel_at: None,
        forced: false,
        cancels: 0,
        force_cancels: 0,
    });
    if details && mode == DispatchMode::Details {
        json_reply(
            StatusCode::OK,
            &json!({
                "workflow_run_id": id,
                "run_url": format!("https://api.github.com/repos/{}/actions/runs/{id}", s.repo),
                "html_url": format!("https://github.com/{}/actions/runs/{id}", s.repo),
            }),
        )
    } else {
        reply(StatusCode::NO_CONTENT, &[], Body::empty())
    }
}

fn run_json(s: &Shared, r: &RunRec, w: &Workflow) -> Value {
    let (status, conclusion) = state(r, w, Instant::now());
    let api = format!(
        "https://api.github.com/repos/{}/actions/runs/{}",
        s.repo, r.id
    );
    json!({
        "id": r.id,
        "name": w.file.trim_end_matches(".yml").trim_end_matches(".yaml"),
        "display_title": r.display_title,
        "event": "workflow_dispatch",
        "status": status,
        "conclusion": conclusion,
        "run_number": r.number,
        "run_attempt": 1,
        "workflow_id": w.id,
        "head_branch": r.branch,
        "head_sha": "3484a3fb816e0859fd6e1cea078d76385ff50625",
        "html_url": format!("https://github.com/{}/actions/runs/{}", s.repo, r.id),
        "url": api,
        "jobs_url": format!("{api}/jobs"),
        "logs_url": format!("{api}/logs"),
        "artifacts_url": format!("{api}/artifacts"),
        "cancel_url": format!("{api}/cancel"),
        "rerun_url": format!("{api}/rerun"),
        "created_at": iso(r.created_at),
        "run_started_at": iso(r.created_at),
        "updated_at": iso(SystemTime::now()),
    })
}

fn with_run<T>(s: &Shared, id: &str, f: impl FnOnce(&mut RunRec, &Workflow) -> T) -> Option<T> {
    let id: u64 = id.parse().ok()?;
    let workflows = lock(&s.workflows).clone();
    let mut runs = lock(&s.runs);
    let r = runs.iter_mut().find(|r| r.id == id)?;
    let w = workflows.get(r.workflow)?.clone();
    Some(f(r, &w))
}

fn read_run(s: &Shared, id: &str, headers: &HeaderMap) -> (Response, bool) {
    let Some(mut run) = with_run(s, id, |r, w| run_json(s, r, w)) else {
        return (message(StatusCode::NOT_FOUND, "Not Found"), false);
    };
    if !s.etags.load(Ordering::SeqCst) {
        return (json_reply(StatusCode::OK, &run), false);
    }
    // The ETag covers what changes with the run's state, not the clock in `updated_at`.
    let updated = run["updated_at"].take();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    run.to_string().hash(&mut hasher);
    let tag = format!("W/\"{:016x}\"", hasher.finish());
    run["updated_at"] = updated;
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(tag.as_str()) {
        return (
            reply(StatusCode::NOT_MODIFIED, &[("etag", tag)], Body::empty()),
            true,
        );
    }
    let mut response = json_reply(StatusCode::OK, &run);
    response
        .headers_mut()
        .insert("etag", HeaderValue::from_str(&tag).expect("ascii"));
    (response, false)
}

fn list_runs(s: &Shared, wf: &str, query: &HashMap<String, String>) -> Response {
    let Some((index, workflow)) = find_workflow(s, wf) else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    let since = query
        .get("created")
        .and_then(|c| c.strip_prefix(">="))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| SystemTime::from(t.to_utc()));
    let per_page: usize = query
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(30)
        .min(100);
    let runs = lock(&s.runs).clone();
    let matching: Vec<Value> = runs
        .iter()
        .rev()
        .filter(|r| r.workflow == index)
        .filter(|_| query.get("event").is_none_or(|e| e == "workflow_dispatch"))
        .filter(|r| query.get("branch").is_none_or(|b| *b == r.branch))
        // GitHub compares whole seconds.
        .filter(|r| since.is_none_or(|t| epoch(r.created_at) >= epoch(t)))
        .map(|r| run_json(s, r, &workflow))
        .collect();
    let total = matching.len();
    json_reply(
        StatusCode::OK,
        &json!({"total_count": total, "workflow_runs": matching.into_iter().take(per_page).collect::<Vec<_>>()}),
    )
}

fn cancel(s: &Shared, id: &str, op: &str) -> Response {
    let now = Instant::now();
    let answer = with_run(s, id, |r, w| {
        let (status, _) = state(r, w, now);
        if op == "cancel" {
            r.cancels += 1;
        } else {
            r.force_cancels += 1;
        }
        if status == "completed" {
            return message(
                StatusCode::CONFLICT,
                "Cannot cancel a workflow run that is completed.",
            );
        }
        if op == "cancel" {
            r.cancel_at.get_or_insert(now);
        } else {
            r.forced = true;
        }
        json_reply(StatusCode::ACCEPTED, &json!({}))
    });
    answer.unwrap_or_else(|| message(StatusCode::NOT_FOUND, "Not Found"))
}

fn jobs(s: &Shared, id: &str) -> Response {
    let answer = with_run(s, id, |r, w| {
        let (status, conclusion) = state(r, w, Instant::now());
        let jobs: Vec<Value> = w
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let job_id = r.id * 100 + i as u64 + 1;
                let done = status == "completed";
                let own = match conclusion.as_deref() {
                    Some("cancelled") => Some("cancelled".to_owned()),
                    c => j.conclusion.clone().or(c.map(str::to_owned)),
                };
                json!({
                    "id": job_id,
                    "run_id": r.id,
                    "name": j.name,
                    "status": if done { "completed" } else if status == "in_progress" { "in_progress" } else { "queued" },
                    "conclusion": if done { own } else { None },
                    "html_url": format!("https://github.com/{}/actions/runs/{}/job/{job_id}", s.repo, r.id),
                    "steps": [],
                })
            })
            .collect();
        json_reply(
            StatusCode::OK,
            &json!({"total_count": jobs.len(), "jobs": jobs}),
        )
    });
    answer.unwrap_or_else(|| message(StatusCode::NOT_FOUND, "Not Found"))
}

fn artifacts(s: &Shared, id: &str) -> Response {
    let answer = with_run(s, id, |r, w| {
        let (status, conclusion) = state(r, w, Instant::now());
        let uploaded = status == "completed" && conclusion.as_deref() != Some("cancelled");
        let list: Vec<Value> = w
            .artifacts
            .iter()
            .enumerate()
            .filter(|_| uploaded)
            .map(|(i, (name, bytes))| {
                let aid = r.id * 100 + 50 + i as u64;
                json!({
                    "id": aid,
                    "name": name,
                    "size_in_bytes": bytes.len(),
                    "expired": false,
                    "archive_download_url": format!("https://api.github.com/repos/{}/actions/artifacts/{aid}/zip", s.repo),
                })
            })
            .collect();
        json_reply(
            StatusCode::OK,
            &json!({"total_count": list.len(), "artifacts": list}),
        )
    });
    answer.unwrap_or_else(|| message(StatusCode::NOT_FOUND, "Not Found"))
}

fn redirect(s: &Shared, what: &str, id: &str) -> Response {
    let base = s.downloads_url.get().cloned().unwrap_or_default();
    reply(
        StatusCode::FOUND,
        &[("location", format!("{base}/{what}/{id}"))],
        Body::empty(),
    )
}

/// The download host: refuses and records any request with `Authorization`.
async fn download(State(s): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    s.meter.record("download");
    let path = uri.path().to_owned();
    if headers.contains_key("authorization") {
        lock(&s.refused).push(path);
        return reply(
            StatusCode::UNAUTHORIZED,
            &[],
            "<Error><Code>AuthenticationFailed</Code></Error>",
        );
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let Some(id) = parts.get(1).and_then(|i| i.parse::<u64>().ok()) else {
        return reply(StatusCode::NOT_FOUND, &[], "");
    };
    let (run, index) = (id / 100, (id % 100) as usize);
    let found = with_run(s.as_ref(), &run.to_string(), |_, w| match parts[0] {
        "artifacts" => w
            .artifacts
            .get(index.wrapping_sub(50))
            .map(|(_, b)| b.clone()),
        "logs" => w
            .jobs
            .get(index.wrapping_sub(1))
            .map(|j| j.log.clone().into_bytes()),
        _ => None,
    })
    .flatten();
    match found {
        Some(bytes) => {
            s.downloads.fetch_add(1, Ordering::SeqCst);
            reply(
                StatusCode::OK,
                &[("content-type", "application/octet-stream".into())],
                bytes,
            )
        }
        None => reply(StatusCode::NOT_FOUND, &[], ""),
    }
}
