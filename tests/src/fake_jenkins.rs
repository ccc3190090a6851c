//! A stand-in for a Jenkins controller's remote access API, on a local port, for a `baton`
//! whose `jenkins` instance has `url` pointing at it: parameterized jobs in folders whose
//! builds succeed after a set time and archive one file, reached as the `jenkins` adapter
//! reaches them (`docs/adapters/jenkins.md`, api-contracts §1): the job's parameter
//! definitions, `buildWithParameters` answering `201` with the queue item's `Location`, the
//! queue item that has left the queue for its build, the build's state, parameters and
//! artifacts, and the artifact's bytes. HTTP Basic with the API token is required.
//!
//! The adapter's own tests cover Jenkins' awkward answers; this one only lets a workflow's
//! build stage run for real in an end-to-end test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use baton_forge_fakes::Served;
use serde_json::{Value, json};

/// A job: its parameters and what each of its builds archives.
#[derive(Debug, Clone)]
struct Job {
    parameters: Vec<String>,
    artifact: (String, String),
    runs_for: Duration,
    builds: Vec<Build>,
}

/// A build, triggered with `parameters`.
#[derive(Debug, Clone)]
struct Build {
    number: u64,
    queue_id: u64,
    parameters: Vec<(String, String)>,
    started: Instant,
    timestamp_ms: u64,
}

#[derive(Debug, Default)]
struct Controller {
    root: String,
    credentials: String,
    jobs: BTreeMap<String, Job>,
    /// Queue id → (job path, build number).
    queue: BTreeMap<u64, (String, u64)>,
    next_queue_id: u64,
}

/// The fake controller; it stops serving when dropped.
pub struct FakeJenkins {
    /// `http://127.0.0.1:PORT/`, the controller's root URL, for the instance's `url`.
    pub url: String,
    state: Arc<Mutex<Controller>>,
    _served: Served,
}

impl FakeJenkins {
    /// Starts it, accepting the API token `token` of `user`.
    pub fn start(user: &str, token: &str) -> Self {
        let state = Arc::new(Mutex::new(Controller {
            credentials: base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{token}")),
            next_queue_id: 800,
            ..Controller::default()
        }));
        let shared = state.clone();
        let served = baton_forge_fakes::serve_in_background(move || {
            Router::new()
                .fallback(
                    |State(state): State<Arc<Mutex<Controller>>>,
                     method: Method,
                     uri: Uri,
                     headers: HeaderMap,
                     body: Bytes| async move {
                        answer(&state, &method, uri.path(), &headers, &body)
                    },
                )
                .with_state(shared)
        })
        .expect("serve the fake Jenkins");
        let url = format!("{}/", served.url);
        lock(&state).root.clone_from(&url);
        Self {
            url,
            state,
            _served: served,
        }
    }

    /// Adds the job `path` (folders as `a/b`) defining `parameters` (and `BATON_ATTEMPT`),
    /// whose builds run for `runs_for`, succeed and archive the file `name` holding `content`.
    pub fn add_job(
        &self,
        path: &str,
        parameters: &[&str],
        runs_for: Duration,
        name: &str,
        content: &str,
    ) {
        let mut parameters: Vec<String> = parameters.iter().map(|p| (*p).to_owned()).collect();
        parameters.push("BATON_ATTEMPT".to_owned());
        lock(&self.state).jobs.insert(
            path.to_owned(),
            Job {
                parameters,
                artifact: (name.to_owned(), content.to_owned()),
                runs_for,
                builds: Vec::new(),
            },
        );
    }

    /// The parameters of each build of job `path` so far, oldest first.
    pub fn builds(&self, path: &str) -> Vec<BTreeMap<String, String>> {
        lock(&self.state)
            .jobs
            .get(path)
            .map_or_else(Vec::new, |job| {
                job.builds
                    .iter()
                    .map(|b| b.parameters.iter().cloned().collect())
                    .collect()
            })
    }
}

fn lock(state: &Mutex<Controller>) -> std::sync::MutexGuard<'_, Controller> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `job/a/job/b/` for the job path `a/b`.
fn job_url_path(path: &str) -> String {
    path.split('/')
        .map(|segment| format!("job/{segment}/"))
        .collect()
}

/// What a request names: a job (by its path) and what below it, or the queue.
enum Target<'a> {
    /// `job/a/job/b/<rest>`.
    Job(String, Vec<&'a str>),
    /// `queue/item/<N>/api/json`.
    QueueItem(u64),
    /// `queue/api/json`.
    Queue,
}

fn target(path: &str) -> Option<Target<'_>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["queue", "item", id, "api", "json"] => id.parse().ok().map(Target::QueueItem),
        ["queue", "api", "json"] => Some(Target::Queue),
        ["job", ..] => {
            let mut names = Vec::new();
            let mut rest = segments.as_slice();
            while let ["job", name, tail @ ..] = rest {
                names.push(*name);
                rest = tail;
            }
            Some(Target::Job(names.join("/"), rest.to_vec()))
        }
        _ => None,
    }
}

/// Answers one request, as the controller stands now.
fn answer(
    state: &Mutex<Controller>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let mut controller = lock(state);
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .is_some_and(|given| given == controller.credentials);
    if !authorized {
        return (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
    }
    let not_found = (StatusCode::NOT_FOUND, "Not Found\n").into_response();
    let Some(target) = target(path) else {
        return not_found;
    };
    let root = controller.root.clone();
    match (method.clone(), target) {
        (Method::GET, Target::Queue) => axum::Json(json!({"items": []})).into_response(),
        (Method::GET, Target::QueueItem(id)) => {
            let Some((path, number)) = controller.queue.get(&id).cloned() else {
                return not_found;
            };
            axum::Json(json!({
                "_class": "hudson.model.Queue$LeftItem",
                "id": id,
                "cancelled": false,
                "executable": {"number": number, "url": format!("{root}{}{number}/", job_url_path(&path))},
                "task": {"url": format!("{root}{}", job_url_path(&path))},
            }))
            .into_response()
        }
        (method, Target::Job(path, rest)) => {
            let next_queue_id = controller.next_queue_id;
            let Some(job) = controller.jobs.get_mut(&path) else {
                return not_found;
            };
            let job_url = format!("{root}{}", job_url_path(&path));
            match (method, rest.as_slice()) {
                (Method::GET, ["api", "json"]) => axum::Json(json!({
                    "_class": "hudson.model.FreeStyleProject",
                    "url": job_url,
                    "buildable": true,
                    "property": [{"parameterDefinitions": job.parameters.iter()
                        .map(|name| json!({"name": name, "type": "StringParameterDefinition"}))
                        .collect::<Vec<_>>()}],
                    "builds": job.builds.iter().rev().map(|b| build_json(job, b, &job_url)).collect::<Vec<_>>(),
                }))
                .into_response(),
                (Method::POST, ["buildWithParameters"]) => {
                    let number = job.builds.len() as u64 + 1;
                    job.builds.push(Build {
                        number,
                        queue_id: next_queue_id,
                        parameters: form_urlencoded::parse(body).into_owned().collect(),
                        started: Instant::now(),
                        timestamp_ms: now_ms(),
                    });
                    controller.queue.insert(next_queue_id, (path, number));
                    controller.next_queue_id += 1;
                    (
                        StatusCode::CREATED,
                        [("location", format!("{root}queue/item/{next_queue_id}/"))],
                    )
                        .into_response()
                }
                (Method::GET, [number, tail @ ..]) => {
                    let Some(build) = number
                        .parse::<u64>()
                        .ok()
                        .and_then(|n| job.builds.iter().find(|b| b.number == n))
                    else {
                        return not_found;
                    };
                    match tail {
                        ["api", "json"] => axum::Json(build_json(job, build, &job_url)).into_response(),
                        ["artifact", file @ ..] if file.join("/") == job.artifact.0 => {
                            job.artifact.1.clone().into_response()
                        }
                        ["consoleText"] | ["logText", "progressiveText"] => {
                            format!("Started by user baton\nbuilt {}\nFinished: SUCCESS\n", job.artifact.1)
                                .into_response()
                        }
                        _ => not_found,
                    }
                }
                _ => not_found,
            }
        }
        _ => not_found,
    }
}

/// A build as `api/json` shows it: running until its time has passed, then `SUCCESS`.
fn build_json(job: &Job, build: &Build, job_url: &str) -> Value {
    let done = build.started.elapsed() >= job.runs_for;
    json!({
        "_class": "hudson.model.FreeStyleBuild",
        "number": build.number,
        "url": format!("{job_url}{}/", build.number),
        "building": !done,
        "result": if done { json!("SUCCESS") } else { Value::Null },
        "duration": if done { u64::try_from(job.runs_for.as_millis()).unwrap_or(0) } else { 0 },
        "timestamp": build.timestamp_ms,
        "queueId": build.queue_id,
        "artifacts": if done {
            json!([{"fileName": job.artifact.0.rsplit('/').next(), "relativePath": job.artifact.0, "displayPath": job.artifact.0}])
        } else {
            json!([])
        },
        "actions": [{
            "_class": "hudson.model.ParametersAction",
            "parameters": build.parameters.iter().map(|(name, value)| json!({"name": name, "value": value})).collect::<Vec<_>>(),
        }],
    })
}
