//! A small in-memory Jenkins controller behind wiremock, and a harness, so that each test
//! reads as a story: set up jobs, start a stage, poll it, look at what Jenkins saw.
//!
//! The controller follows the Jenkins remote API as `api-contracts.md` §1 describes it:
//! HTTP Basic with an API token (no crumb) or a password (crumb from `/crumbIssuer`, valid
//! only with its `JSESSIONID` cookie); `buildWithParameters` and `build` answering
//! `201 Created` with `Location: <root>queue/item/<N>/`; `/build` on a parameterized job
//! answering `400 Nothing is submitted`; queue items (`WaitingItem`, then `LeftItem` with
//! `executable` or `cancelled: true`), which can be forgotten (404); builds with `queueId`,
//! `building`, `result`, `artifacts` and a `ParametersAction`; `stop`, and `term`/`kill`
//! for Pipeline runs only; `progressiveText` with `X-Text-Size` / `X-More-Data`.
//!
//! Time does not pass on its own: a queue item starts after it has been read a set number
//! of times, and a build finishes after a set number of reads. Tests may also force steps.

// Each test file compiles this module on its own and uses a different part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_adapter_jenkins::{JenkinsKind, RetryPolicy};
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, PollOutcome, PollRequest, Secret,
    SecretRef, SecretResolver, StartRequest, secret::SecretError,
};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub(crate) const USER: &str = "alice";
pub(crate) const PASSWORD: &str = "correct horse";
pub(crate) const TOKEN: &str = "11aabbccddeeff";

/// How a build reacts to being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stubborn {
    /// `stop` aborts it.
    No,
    /// It ignores `stop`; `term` aborts it (a Pipeline stuck in a step).
    UntilTerm,
    /// It ignores `stop` and `term`; only `kill` aborts it.
    UntilKill,
}

/// How the builds of a job behave.
#[derive(Debug, Clone)]
pub(crate) struct Behaviour {
    /// Reads of the queue item that still show it waiting.
    pub queued_reads: u32,
    /// Reads of the build that still show it running (`u32::MAX`: until stopped).
    pub running_reads: u32,
    /// The result once it finishes.
    pub result: Option<String>,
    /// Archived files.
    pub artifacts: Vec<(String, Vec<u8>)>,
    /// How it reacts to a stop.
    pub stubborn: Stubborn,
    /// The console log.
    pub log: String,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            queued_reads: 1,
            running_reads: 1,
            result: Some("SUCCESS".into()),
            artifacts: Vec::new(),
            stubborn: Stubborn::No,
            log: "Started by user alice\nBuilding…\nFinished\n".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct JobModel {
    pub params: Vec<String>,
    pub pipeline: bool,
    pub disabled: bool,
    pub behaviour: Behaviour,
    pub builds: Vec<BuildModel>,
    pub next_number: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ItemState {
    Waiting,
    Cancelled,
    Left(u64),
}

#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub id: u64,
    pub job: String,
    pub params: Vec<(String, String)>,
    pub reads: u32,
    pub state: ItemState,
    pub in_queue_since: u64,
    pub forgotten: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct BuildModel {
    pub number: u64,
    pub queue_id: u64,
    pub params: Vec<(String, String)>,
    pub building: bool,
    pub result: Option<String>,
    pub reads: u32,
    pub behaviour: Behaviour,
    /// `stop`, `term`, `kill` as received.
    pub steps: Vec<String>,
    pub timestamp: u64,
}

/// A request as the controller saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub method: String,
    /// Path (with the prefix) and query.
    pub path: String,
    pub crumb: Option<String>,
    pub cookie: Option<String>,
    pub auth: Option<String>,
    pub body: String,
}

/// A scripted answer for matching requests, before (or after) the controller handles them.
pub(crate) struct Fault {
    method: &'static str,
    path_contains: String,
    template: ResponseTemplate,
    times: u32,
    /// Handle the request for real, then answer with `delay` (a lost answer).
    handle_then_delay: Option<Duration>,
}

pub(crate) struct Controller {
    pub prefix: String,
    pub public_root: Option<String>,
    pub anonymous_read: bool,
    pub crumb_issuer: bool,
    pub strip_session_cookie: bool,
    pub omit_location: bool,
    pub sessions: HashMap<String, String>,
    next_session: u64,
    pub jobs: BTreeMap<String, JobModel>,
    pub queue: BTreeMap<u64, Item>,
    next_queue: u64,
    faults: VecDeque<Fault>,
    pub seen: Vec<Seen>,
    root: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Encodes a job name for a URL the way Jenkins does: the unsafe characters only.
fn jenkins_encode(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len() + 1
            && let Some(b) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else if bytes[i] == b'+' {
            out.push(b' ');
            i += 1;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn json(status: u16, body: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(body)
}

fn not_found() -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_string("<html><body>Not Found</body></html>")
}

impl Controller {
    fn new() -> Self {
        Self {
            prefix: String::new(),
            public_root: None,
            anonymous_read: false,
            crumb_issuer: true,
            strip_session_cookie: false,
            omit_location: false,
            sessions: HashMap::new(),
            next_session: 1,
            jobs: BTreeMap::new(),
            queue: BTreeMap::new(),
            next_queue: 800,
            faults: VecDeque::new(),
            seen: Vec::new(),
            root: String::new(),
        }
    }

    /// The root URL Jenkins writes into its answers.
    fn root(&self) -> String {
        self.public_root
            .clone()
            .unwrap_or_else(|| self.root.clone())
    }

    fn job_url(&self, job: &str) -> String {
        let mut url = self.root();
        for name in job.split('/') {
            url.push_str("job/");
            url.push_str(&jenkins_encode(name));
            url.push('/');
        }
        url
    }

    fn handle(&mut self, req: &Request) -> ResponseTemplate {
        let method = req.method.as_str().to_owned();
        let path = req.url.path().to_owned();
        let query = req.url.query().unwrap_or("").to_owned();
        let header = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let full = if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{query}")
        };
        self.seen.push(Seen {
            method: method.clone(),
            path: full.clone(),
            crumb: header("Jenkins-Crumb"),
            cookie: header("Cookie"),
            auth: header("Authorization"),
            body: String::from_utf8_lossy(&req.body).into_owned(),
        });

        let mut delay_after = None;
        if let Some(i) = self
            .faults
            .iter()
            .position(|f| f.method == method && full.contains(&f.path_contains) && f.times > 0)
        {
            let fault = &mut self.faults[i];
            fault.times -= 1;
            match fault.handle_then_delay {
                Some(delay) => delay_after = Some(delay),
                None => return fault.template.clone(),
            }
        }
        let answer = self.route(req, &method, &path, &query);
        match delay_after {
            Some(delay) => answer.set_delay(delay),
            None => answer,
        }
    }

    fn route(&mut self, req: &Request, method: &str, path: &str, query: &str) -> ResponseTemplate {
        let Some(rest) = path.strip_prefix(&self.prefix) else {
            return not_found();
        };
        // Authentication: Basic with the token, with the password, or anonymous.
        let auth = req
            .headers
            .get("Authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let kind = match auth.as_deref() {
            None => "anonymous",
            Some(header) => {
                let decoded = header
                    .strip_prefix("Basic ")
                    .and_then(|b| base64_decode(b.trim()))
                    .unwrap_or_default();
                match decoded.split_once(':') {
                    Some((USER, TOKEN)) => "token",
                    Some((USER, PASSWORD)) => "password",
                    _ => {
                        return ResponseTemplate::new(401)
                            .insert_header("WWW-Authenticate", "Basic realm=\"Jenkins\"")
                            .set_body_string("Invalid password/token for user");
                    }
                }
            }
        };
        if kind == "anonymous" && !self.anonymous_read {
            return ResponseTemplate::new(403).set_body_string(
                "<html><body>Authentication required: anonymous is missing the Overall/Read permission</body></html>",
            );
        }
        // Since 2.96 a POST authenticated by an API token needs no crumb; any other POST
        // needs a crumb issued in the session its cookie names (2.176.2+).
        if method == "POST" && kind != "token" {
            let session = req
                .headers
                .get("Cookie")
                .and_then(|v| v.to_str().ok())
                .and_then(|c| {
                    c.split(';')
                        .map(str::trim)
                        .find(|p| p.starts_with("JSESSIONID."))
                        .and_then(|p| p.split_once('='))
                        .map(|(_, v)| v.to_owned())
                });
            let crumb = req
                .headers
                .get("Jenkins-Crumb")
                .and_then(|v| v.to_str().ok());
            let valid = session
                .and_then(|s| self.sessions.get(&s).cloned())
                .is_some_and(|issued| Some(issued.as_str()) == crumb);
            if !valid {
                return ResponseTemplate::new(403).set_body_string(
                    "<html><head><title>Error 403 No valid crumb was included in the request</title></head><body><h2>HTTP ERROR 403 No valid crumb was included in the request</h2></body></html>",
                );
            }
        }

        let segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            ("GET", ["crumbIssuer", "api", "json"]) => {
                if !self.crumb_issuer {
                    return not_found();
                }
                let session = format!("node0s{}x", self.next_session);
                let crumb = format!("{:032x}", 0xc0ffee_u64 * self.next_session);
                self.next_session += 1;
                self.sessions.insert(session.clone(), crumb.clone());
                let mut answer = json(
                    200,
                    json!({"_class": "hudson.security.csrf.DefaultCrumbIssuer", "crumb": crumb, "crumbRequestField": "Jenkins-Crumb"}),
                );
                if !self.strip_session_cookie {
                    answer = answer.insert_header(
                        "Set-Cookie",
                        format!("JSESSIONID.7d5c1a2b={session}; Path=/; HttpOnly").as_str(),
                    );
                }
                answer
            }
            ("GET", ["queue", "api", "json"]) => {
                let items: Vec<Value> = self
                    .queue
                    .values()
                    .filter(|i| i.state == ItemState::Waiting && !i.forgotten)
                    .map(|i| self.item_json(i))
                    .collect();
                json(200, json!({"_class": "hudson.model.Queue", "items": items}))
            }
            ("GET", ["queue", "item", id, "api", "json"]) => {
                let Some(id) = id.parse::<u64>().ok() else {
                    return not_found();
                };
                match self.queue.get(&id) {
                    Some(item) if !item.forgotten => {}
                    _ => return not_found(),
                }
                self.read_item(id);
                let item = self.queue[&id].clone();
                json(200, self.item_json(&item))
            }
            ("POST", ["queue", "cancelItem"]) => {
                let id = form_pairs(query)
                    .into_iter()
                    .find(|(k, _)| k == "id")
                    .and_then(|(_, v)| v.parse::<u64>().ok());
                if let Some(item) = id.and_then(|id| self.queue.get_mut(&id))
                    && item.state == ItemState::Waiting
                {
                    item.state = ItemState::Cancelled;
                }
                // Newer versions redirect to the queue; some answer 404 even on success.
                ResponseTemplate::new(302).insert_header("Location", self.root().as_str())
            }
            (_, ["job", ..]) => self.job_route(req, method, &segments, query),
            _ => not_found(),
        }
    }

    fn job_route(
        &mut self,
        req: &Request,
        method: &str,
        segments: &[&str],
        query: &str,
    ) -> ResponseTemplate {
        let mut names = Vec::new();
        let mut i = 0;
        while i + 1 < segments.len() && segments[i] == "job" {
            names.push(percent_decode(segments[i + 1]));
            i += 2;
        }
        let name = names.join("/");
        let rest = &segments[i..];
        if !self.jobs.contains_key(&name) {
            // A folder: a prefix of some job's name.
            let folder = self.jobs.keys().any(|j| j.starts_with(&format!("{name}/")));
            return match (folder, method, rest) {
                (true, "GET", ["api", "json"]) => json(
                    200,
                    json!({"_class": "com.cloudbees.hudson.plugins.folder.Folder", "url": self.job_url(&name), "jobs": []}),
                ),
                _ => not_found(),
            };
        }
        match (method, rest) {
            ("GET", ["api", "json"]) => {
                let job = &self.jobs[&name];
                let defs: Vec<Value> = job
                    .params
                    .iter()
                    .map(|p| json!({"_class": "hudson.model.StringParameterDefinition", "name": p, "type": "StringParameterDefinition"}))
                    .collect();
                let mut property = vec![json!({"_class": "jenkins.model.BuildDiscarderProperty"})];
                if !defs.is_empty() {
                    property.push(json!({"_class": "hudson.model.ParametersDefinitionProperty", "parameterDefinitions": defs}));
                }
                let mut body = json!({
                    "_class": if job.pipeline { "org.jenkinsci.plugins.workflow.job.WorkflowJob" } else { "hudson.model.FreeStyleProject" },
                    "url": self.job_url(&name),
                    "buildable": !job.disabled,
                    "property": property,
                });
                if query.contains("builds") {
                    let builds: Vec<Value> = job
                        .builds
                        .iter()
                        .rev()
                        .take(100)
                        .map(|b| self.build_json(&name, b))
                        .collect();
                    body["builds"] = Value::Array(builds);
                }
                json(200, body)
            }
            ("POST", ["build"]) => {
                if !self.jobs[&name].params.is_empty() {
                    return ResponseTemplate::new(400).set_body_string("Nothing is submitted");
                }
                self.enqueue(&name, Vec::new())
            }
            ("POST", ["buildWithParameters"]) => {
                let job = &self.jobs[&name];
                if job.params.is_empty() {
                    return ResponseTemplate::new(500)
                        .set_body_string("java.lang.IllegalStateException: not parameterized");
                }
                let mut given = form_pairs(query);
                given.extend(form_pairs(&String::from_utf8_lossy(&req.body)));
                // Jenkins keeps only the parameters the job defines.
                let params: Vec<(String, String)> = given
                    .into_iter()
                    .filter(|(k, _)| job.params.contains(k))
                    .collect();
                self.enqueue(&name, params)
            }
            ("GET", [n, "api", "json"]) => {
                let Some(b) = self.build_mut(&name, n) else {
                    return not_found();
                };
                b.reads += 1;
                if b.building && b.reads > b.behaviour.running_reads {
                    b.building = false;
                    b.result = b.behaviour.result.clone();
                }
                let b = b.clone();
                json(200, self.build_json(&name, &b))
            }
            ("POST", [n, step @ ("stop" | "term" | "kill")]) => {
                let pipeline = self.jobs[&name].pipeline;
                let Some(b) = self.build_mut(&name, n) else {
                    return not_found();
                };
                if *step != "stop" && !pipeline {
                    return not_found();
                }
                b.steps.push((*step).to_owned());
                let aborts = matches!(
                    (b.behaviour.stubborn, *step),
                    (Stubborn::No, _)
                        | (Stubborn::UntilTerm, "term" | "kill")
                        | (Stubborn::UntilKill, "kill")
                );
                if b.building && aborts {
                    b.building = false;
                    b.result = Some("ABORTED".into());
                }
                ResponseTemplate::new(302).insert_header("Location", "../")
            }
            ("GET", [n, "logText", "progressiveText"]) => {
                let Some(b) = self.build_mut(&name, n) else {
                    return not_found();
                };
                let start: usize = form_pairs(query)
                    .into_iter()
                    .find(|(k, _)| k == "start")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let log = b.behaviour.log.as_bytes();
                let from = start.min(log.len());
                let mut answer = ResponseTemplate::new(200)
                    .insert_header("Content-Type", "text/plain;charset=UTF-8")
                    .insert_header("X-Text-Size", log.len().to_string().as_str())
                    .set_body_bytes(log[from..].to_vec());
                if b.building {
                    answer = answer.insert_header("X-More-Data", "true");
                }
                answer
            }
            ("GET", [n, "consoleText"]) => match self.build_mut(&name, n) {
                Some(b) => ResponseTemplate::new(200)
                    .insert_header("Content-Type", "text/plain;charset=UTF-8")
                    .set_body_string(b.behaviour.log.clone()),
                None => not_found(),
            },
            ("GET", [n, "artifact", path @ ..]) => {
                let wanted: Vec<String> = path.iter().map(|p| percent_decode(p)).collect();
                let wanted = wanted.join("/");
                match self
                    .build_mut(&name, n)
                    .and_then(|b| b.behaviour.artifacts.iter().find(|(p, _)| *p == wanted))
                {
                    Some((_, bytes)) => ResponseTemplate::new(200).set_body_bytes(bytes.clone()),
                    None => not_found(),
                }
            }
            _ => not_found(),
        }
    }

    fn build_mut(&mut self, job: &str, number: &str) -> Option<&mut BuildModel> {
        let n: u64 = number.parse().ok()?;
        self.jobs
            .get_mut(job)?
            .builds
            .iter_mut()
            .find(|b| b.number == n)
    }

    fn enqueue(&mut self, job: &str, params: Vec<(String, String)>) -> ResponseTemplate {
        let id = self.next_queue;
        self.next_queue += 1;
        self.queue.insert(
            id,
            Item {
                id,
                job: job.to_owned(),
                params,
                reads: 0,
                state: ItemState::Waiting,
                in_queue_since: now_ms(),
                forgotten: false,
            },
        );
        if self.omit_location {
            // Very old controllers: a redirect to the job page (JENKINS-23235).
            return ResponseTemplate::new(302)
                .insert_header("Location", self.job_url(job).as_str());
        }
        ResponseTemplate::new(201).insert_header(
            "Location",
            format!("{}queue/item/{id}/", self.root()).as_str(),
        )
    }

    /// A read of a waiting item: after enough of them, it starts a build.
    fn read_item(&mut self, id: u64) {
        let item = self.queue.get_mut(&id).unwrap();
        item.reads += 1;
        let job = item.job.clone();
        let queued_reads = self.jobs[&job].behaviour.queued_reads;
        if item.state == ItemState::Waiting && item.reads > queued_reads {
            self.start_item(id);
        }
    }

    /// Starts the build of a waiting item now.
    pub(crate) fn start_item(&mut self, id: u64) -> u64 {
        let item = self.queue.get_mut(&id).unwrap();
        assert_eq!(item.state, ItemState::Waiting, "item {id} is not waiting");
        let job = self.jobs.get_mut(&item.job).unwrap();
        let number = job.next_number;
        job.next_number += 1;
        job.builds.push(BuildModel {
            number,
            queue_id: id,
            params: item.params.clone(),
            building: true,
            result: None,
            reads: 0,
            behaviour: job.behaviour.clone(),
            steps: Vec::new(),
            timestamp: now_ms(),
        });
        item.state = ItemState::Left(number);
        number
    }

    fn item_json(&self, item: &Item) -> Value {
        let (class, extra) = match item.state {
            ItemState::Waiting => (
                "hudson.model.Queue$WaitingItem",
                json!({"why": "In the quiet period. Expires in 4.9 sec", "blocked": false, "buildable": false, "stuck": false}),
            ),
            ItemState::Cancelled => (
                "hudson.model.Queue$LeftItem",
                json!({"cancelled": true, "executable": null}),
            ),
            ItemState::Left(n) => (
                "hudson.model.Queue$LeftItem",
                json!({"cancelled": false, "executable": {"_class": "hudson.model.FreeStyleBuild", "number": n, "url": format!("{}{n}/", self.job_url(&item.job))}}),
            ),
        };
        let params: Vec<Value> = item
            .params
            .iter()
            .map(|(k, v)| json!({"_class": "hudson.model.StringParameterValue", "name": k, "value": v}))
            .collect();
        let mut body = json!({
            "_class": class,
            "id": item.id,
            "inQueueSince": item.in_queue_since,
            "params": item.params.iter().map(|(k, v)| format!("\n{k}={v}")).collect::<String>(),
            "task": {"_class": "hudson.model.FreeStyleProject", "name": item.job.rsplit('/').next(), "url": self.job_url(&item.job)},
            "url": format!("queue/item/{}/", item.id),
            "actions": [{"_class": "hudson.model.ParametersAction", "parameters": params}, {"_class": "hudson.model.CauseAction"}],
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    }

    fn build_json(&self, job: &str, b: &BuildModel) -> Value {
        let pipeline = self.jobs[job].pipeline;
        let url = format!("{}{}/", self.job_url(job), b.number);
        let params: Vec<Value> = b
            .params
            .iter()
            .map(|(k, v)| json!({"_class": "hudson.model.StringParameterValue", "name": k, "value": v}))
            .collect();
        let artifacts: Vec<Value> = if b.building {
            Vec::new()
        } else {
            b.behaviour
                .artifacts
                .iter()
                .map(|(p, _)| json!({"displayPath": p.rsplit('/').next(), "fileName": p.rsplit('/').next(), "relativePath": p}))
                .collect()
        };
        let mut body = json!({
            "_class": if pipeline { "org.jenkinsci.plugins.workflow.job.WorkflowRun" } else { "hudson.model.FreeStyleBuild" },
            "number": b.number,
            "url": url,
            "building": b.building,
            "result": b.result,
            "duration": if b.building { 0 } else { 1234 },
            "timestamp": b.timestamp,
            "queueId": b.queue_id,
            "artifacts": artifacts,
            "actions": [{"_class": "hudson.model.CauseAction"}, {"_class": "hudson.model.ParametersAction", "parameters": params}, {}],
        });
        if pipeline {
            body["inProgress"] = json!(b.building);
        }
        body
    }
}

fn base64_decode(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        bits = (bits << 6) | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).ok()
}

struct Responder(Arc<Mutex<Controller>>);

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handle(request)
    }
}

/// A running fake controller.
pub(crate) struct Jenkins {
    pub server: MockServer,
    state: Arc<Mutex<Controller>>,
}

impl Jenkins {
    /// A controller at the server's root.
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A controller set up by `setup` (a path prefix, another public root, …).
    pub(crate) async fn start_with(setup: impl FnOnce(&mut Controller)) -> Self {
        let server = MockServer::start().await;
        let mut controller = Controller::new();
        setup(&mut controller);
        controller.root = format!("{}{}/", server.uri(), controller.prefix);
        let state = Arc::new(Mutex::new(controller));
        Mock::given(wiremock::matchers::any())
            .respond_with(Responder(state.clone()))
            .mount(&server)
            .await;
        Self { server, state }
    }

    pub(crate) fn controller(&self) -> MutexGuard<'_, Controller> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The URL baton is configured with.
    pub(crate) fn url(&self) -> String {
        self.controller().root.clone()
    }

    /// Adds a job (folders are implied by `/` in its name).
    pub(crate) fn job(&self, name: &str) -> JobBuilder<'_> {
        JobBuilder {
            jenkins: self,
            name: name.to_owned(),
            model: JobModel {
                params: Vec::new(),
                pipeline: false,
                disabled: false,
                behaviour: Behaviour::default(),
                builds: Vec::new(),
                next_number: 1,
            },
        }
    }

    /// Answers the next `times` requests whose method is `method` and whose path and query
    /// contain `path` with `template`, without handling them.
    pub(crate) fn fault(
        &self,
        method: &'static str,
        path: &str,
        times: u32,
        template: ResponseTemplate,
    ) {
        self.controller().faults.push_back(Fault {
            method,
            path_contains: path.to_owned(),
            template,
            times,
            handle_then_delay: None,
        });
    }

    /// Handles the next matching request, but answers only after `delay` (lost answers).
    pub(crate) fn slow_answer(&self, method: &'static str, path: &str, delay: Duration) {
        self.controller().faults.push_back(Fault {
            method,
            path_contains: path.to_owned(),
            template: ResponseTemplate::new(200),
            times: 1,
            handle_then_delay: Some(delay),
        });
    }

    pub(crate) fn requests(&self) -> Vec<Seen> {
        self.controller().seen.clone()
    }

    /// How many requests had this method and a path containing `path`.
    pub(crate) fn count(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|s| s.method == method && s.path.contains(path))
            .count()
    }

    pub(crate) fn builds(&self, job: &str) -> Vec<BuildModel> {
        self.controller().jobs[job].builds.clone()
    }

    pub(crate) fn item(&self, id: u64) -> Item {
        self.controller().queue[&id].clone()
    }

    pub(crate) fn items(&self) -> Vec<Item> {
        self.controller().queue.values().cloned().collect()
    }

    /// Jenkins forgets a left queue item (after about 5 minutes in real life).
    pub(crate) fn forget_item(&self, id: u64) {
        self.controller().queue.get_mut(&id).unwrap().forgotten = true;
    }

    /// Someone cancels a waiting item in the Jenkins UI.
    pub(crate) fn cancel_item(&self, id: u64) {
        self.controller().queue.get_mut(&id).unwrap().state = ItemState::Cancelled;
    }

    pub(crate) fn start_item(&self, id: u64) -> u64 {
        self.controller().start_item(id)
    }
}

pub(crate) struct JobBuilder<'a> {
    jenkins: &'a Jenkins,
    name: String,
    model: JobModel,
}

impl JobBuilder<'_> {
    pub(crate) fn params(mut self, names: &[&str]) -> Self {
        self.model.params = names.iter().map(|s| (*s).to_owned()).collect();
        self
    }
    pub(crate) fn pipeline(mut self) -> Self {
        self.model.pipeline = true;
        self
    }
    pub(crate) fn disabled(mut self) -> Self {
        self.model.disabled = true;
        self
    }
    pub(crate) fn queued_for(mut self, reads: u32) -> Self {
        self.model.behaviour.queued_reads = reads;
        self
    }
    pub(crate) fn runs_for(mut self, reads: u32) -> Self {
        self.model.behaviour.running_reads = reads;
        self
    }
    pub(crate) fn forever(self) -> Self {
        self.runs_for(u32::MAX)
    }
    pub(crate) fn result(mut self, result: &str) -> Self {
        self.model.behaviour.result = Some(result.to_owned());
        self
    }
    pub(crate) fn no_result(mut self) -> Self {
        self.model.behaviour.result = None;
        self
    }
    pub(crate) fn artifact(mut self, path: &str, content: &str) -> Self {
        self.model
            .behaviour
            .artifacts
            .push((path.to_owned(), content.as_bytes().to_vec()));
        self
    }
    pub(crate) fn stubborn(mut self, stubborn: Stubborn) -> Self {
        self.model.behaviour.stubborn = stubborn;
        self
    }
    pub(crate) fn log(mut self, log: &str) -> Self {
        self.model.behaviour.log = log.to_owned();
        self
    }
    pub(crate) fn create(self) {
        self.jenkins.controller().jobs.insert(self.name, self.model);
    }
}

// ---- baton's side ------------------------------------------------------------------------

/// Resolves `{ env = "NAME" }` from a fixed map, so tests need no real environment.
pub(crate) struct Secrets(pub HashMap<String, String>);

impl SecretResolver for Secrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError> {
        match reference {
            SecretRef::Env(name) => self
                .0
                .get(name)
                .map(|v| Secret::new(v.clone()))
                .ok_or_else(|| SecretError::MissingEnv(name.clone())),
            SecretRef::File(path) => Err(SecretError::File {
                path: path.clone(),
                reason: "no files in tests".into(),
            }),
        }
    }
}

/// Retries that do not slow tests down.
pub(crate) fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(40),
        budget: Duration::from_secs(3),
    }
}

/// An adapter instance for `jenkins`, authenticated with the API token; `extra` adds or
/// replaces instance keys (`null` removes one).
pub(crate) fn adapter(jenkins: &Jenkins, extra: Value) -> Arc<dyn Adapter> {
    try_adapter(jenkins, extra).expect("the adapter builds")
}

pub(crate) fn try_adapter(
    jenkins: &Jenkins,
    extra: Value,
) -> Result<Arc<dyn Adapter>, AdapterError> {
    let mut config = json!({
        "url": jenkins.url(),
        "user": USER,
        "token": {"env": "JENKINS_TOKEN"},
        "request_timeout": "2s",
        "stop_grace": "200ms",
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        if v.is_null() {
            config.as_object_mut().unwrap().remove(&k);
        } else {
            config[k] = v;
        }
    }
    let secrets = Secrets(HashMap::from([
        ("JENKINS_TOKEN".to_owned(), TOKEN.to_owned()),
        ("JENKINS_PASSWORD".to_owned(), PASSWORD.to_owned()),
        ("WRONG".to_owned(), "nope".to_owned()),
    ]));
    let kind = JenkinsKind::with_retry(fast_retry());
    let errors = kind.validate_instance(&config);
    assert!(errors.is_empty(), "{errors:?}");
    kind.build("ci", &config, &secrets)
}

/// One attempt of a stage, as the engine drives it.
pub(crate) struct Stage {
    pub adapter: Arc<dyn Adapter>,
    pub key: AttemptKey,
    pub input: Value,
    pub external: ExternalRef,
    pub polls: Vec<PollOutcome>,
}

impl Stage {
    pub(crate) async fn start(
        adapter: &Arc<dyn Adapter>,
        key: AttemptKey,
        input: Value,
    ) -> Result<Self, AdapterError> {
        let external = adapter
            .start(&StartRequest {
                key: key.clone(),
                workflow: "wf".into(),
                input: input.clone(),
                timeout: Duration::from_secs(600),
            })
            .await?;
        Ok(Self::adopt(adapter, key, input, external))
    }

    pub(crate) fn adopt(
        adapter: &Arc<dyn Adapter>,
        key: AttemptKey,
        input: Value,
        external: ExternalRef,
    ) -> Self {
        // The store keeps references as JSON.
        let external = serde_json::from_str(&serde_json::to_string(&external).unwrap()).unwrap();
        Self {
            adapter: adapter.clone(),
            key,
            input,
            external,
            polls: Vec::new(),
        }
    }

    /// One poll; a replaced reference is kept, as the engine stores it.
    pub(crate) async fn poll(&mut self) -> Result<PollOutcome, AdapterError> {
        let outcome = self
            .adapter
            .poll(&PollRequest {
                key: &self.key,
                external: &self.external,
                signal: None,
            })
            .await?;
        if let Some(ext) = &outcome.external {
            self.external = serde_json::from_str(&serde_json::to_string(ext).unwrap()).unwrap();
        }
        self.polls.push(outcome.clone());
        Ok(outcome)
    }

    /// Polls until a terminal state (at most 50 polls, without waiting for hints).
    pub(crate) async fn run_to_end(&mut self) -> PollOutcome {
        for _ in 0..50 {
            let outcome = self.poll().await.expect("poll");
            if outcome.state.is_terminal() {
                return outcome;
            }
        }
        panic!("no terminal state after 50 polls: {:?}", self.polls.last());
    }

    pub(crate) async fn outputs(&self) -> Result<serde_json::Map<String, Value>, AdapterError> {
        self.adapter.outputs(&self.key, &self.external).await
    }

    pub(crate) async fn cancel(&self) -> Result<(), AdapterError> {
        self.adapter.cancel(&self.key, &self.external).await
    }

    /// The raw words of the polls so far.
    pub(crate) fn raws(&self) -> Vec<String> {
        self.polls
            .iter()
            .map(|p| p.raw.clone().unwrap_or_default())
            .collect()
    }
}

/// A key whose run id is a UUIDv7 made now, as the engine makes them.
pub(crate) fn key_now(stage: &str, attempt: u32) -> AttemptKey {
    let ms = now_ms();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let run = format!(
        "{ms:012x}7{:03x}8{:015x}",
        nanos & 0xfff,
        nanos as u64 * 7919
    );
    AttemptKey::new(&run, stage, attempt)
}
