//! An in-process model of the part of GitHub's REST API a GitHub App reports through: the
//! installation token exchange, check runs (create, update, list by commit) and commit
//! statuses. It keeps state: the check runs made, every state each went through, and the
//! statuses posted; and it can be told to misbehave.
//!
//! What it follows, from <https://docs.github.com/en/rest/checks/runs> and
//! <https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-an-installation-access-token-for-a-github-app>:
//!
//! - `POST /app/installations/{id}/access_tokens` takes a JWT signed with the App's key
//!   (`iss` the App id, at most 10 minutes long) and answers a token; every other call must
//!   carry a token it issued (401 "Bad credentials" otherwise).
//! - `POST /repos/{o}/{r}/check-runs` needs `name` and `head_sha`; `status` is `queued`,
//!   `in_progress` or `completed` (`waiting`, `requested` and `pending` are GitHub Actions'
//!   own, 422 otherwise); a `conclusion` (`action_required`, `cancelled`, `failure`,
//!   `neutral`, `success`, `skipped`, `timed_out`) is needed with `completed` or
//!   `completed_at`, and setting one makes the check run `completed`; `output` needs `title`
//!   and `summary`, and `summary` and `text` take at most 65535 characters (422 "Only 65535
//!   characters are allowed; N were supplied.", as seen in
//!   <https://gitlab.kitware.com/utils/rust-ghostflow/-/issues/96>).
//! - `PATCH /repos/{o}/{r}/check-runs/{id}` takes the same fields (no `head_sha`); 404 for
//!   a check run it does not have; a completed check run cannot go back to `queued` or
//!   `in_progress` (<https://github.com/Mergifyio/mergify/pull/1989>; the answer GitHub
//!   gives is not documented, the model answers 422).
//! - `GET /repos/{o}/{r}/commits/{sha}/check-runs?check_name=&filter=latest|all&per_page=&page=`
//!   answers `{total_count, check_runs}`, newest first; `filter` defaults to `latest` (the
//!   newest of each name), `per_page` to 30, at most 100.
//! - `POST /repos/{o}/{r}/statuses/{sha}` records a commit status.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The App the model knows, and the key it checks JWTs with.
pub(crate) const APP_ID: u64 = 4242;
pub(crate) const INSTALLATION: u64 = 77;
const PUBLIC_KEY: &[u8] = include_bytes!("../fixtures/github-app-test-key.pub.pem");

/// GitHub's limit on `output.summary` and `output.text`.
const MAX_OUTPUT: usize = 65535;

/// How the model loses the answer to the next create (it makes the check run all the same).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lost {
    /// It answers 502 Bad Gateway.
    BadGateway,
    /// It answers only after this long.
    Stall(Duration),
    /// It answers 201 with a body that is not JSON (a proxy's page).
    Garbage,
    /// It answers 502 without making the check run (the request died on the way).
    Unmade,
}

/// One check run as the model holds it.
#[derive(Debug, Clone)]
pub(crate) struct CheckRun {
    pub(crate) id: u64,
    pub(crate) repo: String,
    pub(crate) head_sha: String,
    /// Every field as last set.
    pub(crate) fields: Map<String, Value>,
    /// `(status, conclusion)` after the create and after each update, in order.
    pub(crate) states: Vec<(String, Option<String>)>,
}

impl CheckRun {
    pub(crate) fn get(&self, key: &str) -> &Value {
        self.fields.get(key).unwrap_or(&Value::Null)
    }
    pub(crate) fn summary(&self) -> &str {
        self.fields["output"]["summary"]
            .as_str()
            .unwrap_or_default()
    }
    pub(crate) fn title(&self) -> &str {
        self.fields["output"]["title"].as_str().unwrap_or_default()
    }
    pub(crate) fn status(&self) -> &str {
        self.get("status").as_str().unwrap_or_default()
    }
    pub(crate) fn conclusion(&self) -> Option<&str> {
        self.get("conclusion").as_str()
    }
}

#[derive(Default)]
struct State {
    next_id: u64,
    check_runs: Vec<CheckRun>,
    statuses: Vec<Value>,
    tokens: Vec<String>,
    /// `METHOD path` of every request, and when it came, in order.
    seen: Vec<(Instant, String)>,
    /// The next update is refused with 429 and `Retry-After: <this many seconds>`.
    throttle_next_update: Option<u64>,
    /// When an update was refused so.
    throttled_at: Option<Instant>,
    lose_next_create: Option<Lost>,
    /// Every check-run write is refused with this status and message.
    refuse: Option<(u16, String)>,
}

/// The model, served by a [`MockServer`].
#[derive(Clone)]
pub(crate) struct GithubChecks {
    state: Arc<Mutex<State>>,
    pub(crate) server: Arc<MockServer>,
}

impl GithubChecks {
    pub(crate) async fn start() -> Self {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(State {
            next_id: 9_000_001,
            ..State::default()
        }));
        Mock::given(wiremock::matchers::any())
            .respond_with(Model(state.clone()))
            .mount(&server)
            .await;
        Self {
            state,
            server: Arc::new(server),
        }
    }

    /// The API's base URL, GitHub Enterprise Server style (`…/api/v3`).
    pub(crate) fn api_url(&self) -> String {
        format!("{}/api/v3", self.server.uri())
    }

    pub(crate) fn check_runs(&self) -> Vec<CheckRun> {
        self.state.lock().unwrap().check_runs.clone()
    }

    pub(crate) fn statuses(&self) -> Vec<Value> {
        self.state.lock().unwrap().statuses.clone()
    }

    /// How many requests were `METHOD path-prefix…` (the `/api/v3` left out).
    pub(crate) fn count(&self, method_and_path: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .seen
            .iter()
            .filter(|(_, s)| s.starts_with(method_and_path))
            .count()
    }

    pub(crate) fn seen(&self) -> Vec<String> {
        self.seen_at().into_iter().map(|(_, s)| s).collect()
    }

    /// When an update was refused with 429, if one was.
    pub(crate) fn throttled_at(&self) -> Option<Instant> {
        self.state.lock().unwrap().throttled_at
    }

    /// Every request and when it came.
    pub(crate) fn seen_at(&self) -> Vec<(Instant, String)> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Refuses the next update with 429 and `Retry-After: <seconds>`, as GitHub's secondary
    /// rate limit does.
    pub(crate) fn throttle_next_update(&self, seconds: u64) {
        self.state.lock().unwrap().throttle_next_update = Some(seconds);
    }

    /// Makes `n` completed check runs named `name` on `repo`'s commit `sha`, as other runs
    /// (or other Apps) would have, newer than every check run made so far.
    pub(crate) fn seed(&self, n: usize, repo: &str, sha: &str, name: &str) {
        let mut state = self.state.lock().unwrap();
        for i in 0..n {
            let id = state.next_id;
            state.next_id += 1;
            let mut fields = Map::new();
            fields.insert("name".into(), json!(name));
            fields.insert("external_id".into(), json!(format!("other-{i}")));
            fields.insert("status".into(), json!("completed"));
            fields.insert("conclusion".into(), json!("success"));
            state.check_runs.push(CheckRun {
                id,
                repo: repo.to_owned(),
                head_sha: sha.to_owned(),
                fields,
                states: vec![("completed".into(), Some("success".into()))],
            });
        }
    }

    /// Revokes every installation token issued so far: requests with one get 401.
    pub(crate) fn revoke_tokens(&self) {
        self.state
            .lock()
            .unwrap()
            .tokens
            .retain(|t| !t.starts_with("ghs_model"));
    }

    /// Takes `token` as a personal access token, besides the installation tokens it issues.
    pub(crate) fn accept_token(&self, token: &str) {
        self.state.lock().unwrap().tokens.push(token.to_owned());
    }

    pub(crate) fn lose_next_create(&self, how: Lost) {
        self.state.lock().unwrap().lose_next_create = Some(how);
    }

    pub(crate) fn refuse_check_runs(&self, status: u16, message: &str) {
        self.state.lock().unwrap().refuse = Some((status, message.to_owned()));
    }

    /// Waits until `done` holds for the check runs.
    pub(crate) async fn until(
        &self,
        what: &str,
        done: impl Fn(&[CheckRun]) -> bool,
    ) -> Vec<CheckRun> {
        for _ in 0..500 {
            let runs = self.check_runs();
            if done(&runs) {
                return runs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{what}: not seen in 10 s; check runs: {:#?}\nrequests: {:#?}",
            self.check_runs(),
            self.seen()
        );
    }
}

struct Model(Arc<Mutex<State>>);

impl Respond for Model {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut state = self.0.lock().unwrap();
        let path = request.url.path();
        let path = path.strip_prefix("/api/v3").unwrap_or(path).to_owned();
        state
            .seen
            .push((Instant::now(), format!("{} {path}", request.method)));
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let method = request.method.as_str();
        if let ["app", "installations", id, "access_tokens"] = parts.as_slice() {
            return if method == "POST" {
                token(&mut state, request, id)
            } else {
                not_found()
            };
        }
        let bearer = header(request, "authorization").and_then(|v| v.strip_prefix("Bearer "));
        if !bearer.is_some_and(|t| state.tokens.iter().any(|issued| issued == t)) {
            return error(401, "Bad credentials");
        }
        match (method, parts.as_slice()) {
            ("POST", ["repos", owner, repo, "check-runs"]) => {
                let repo = format!("{owner}/{repo}");
                create(&mut state, &repo, request)
            }
            ("PATCH", ["repos", owner, repo, "check-runs", id]) => {
                let repo = format!("{owner}/{repo}");
                update(&mut state, &repo, id, request)
            }
            ("GET", ["repos", owner, repo, "commits", sha, "check-runs"]) => {
                let repo = format!("{owner}/{repo}");
                list(&state, &repo, sha, request)
            }
            ("POST", ["repos", _, _, "statuses", _]) => match request.body_json::<Value>() {
                Ok(body) => {
                    state.statuses.push(body.clone());
                    ResponseTemplate::new(201).set_body_json(body)
                }
                Err(_) => error(400, "Problems parsing JSON"),
            },
            _ => not_found(),
        }
    }
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

fn error(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "message": message,
        "documentation_url": "https://docs.github.com/rest/checks/runs"
    }))
}

fn not_found() -> ResponseTemplate {
    error(404, "Not Found")
}

/// Trades a JWT signed with the App's key for an installation token.
fn token(state: &mut State, request: &Request, installation: &str) -> ResponseTemplate {
    if installation != INSTALLATION.to_string() {
        return not_found();
    }
    let Some(jwt) = header(request, "authorization").and_then(|v| v.strip_prefix("Bearer ")) else {
        return error(401, "A JSON web token could not be decoded");
    };
    let mut validation =
        octocrab::jsonwebtoken::Validation::new(octocrab::jsonwebtoken::Algorithm::RS256);
    // GitHub wants `iss` as the App id, a number; the library only checks a text `iss`.
    validation.set_required_spec_claims(&["exp", "iat"]);
    let key = octocrab::jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC_KEY).unwrap();
    let Ok(decoded) = octocrab::jsonwebtoken::decode::<Value>(jwt, &key, &validation) else {
        return error(401, "A JSON web token could not be decoded");
    };
    let claims = decoded.claims;
    let lifetime = claims["exp"].as_u64().unwrap_or(0) - claims["iat"].as_u64().unwrap_or(0);
    if claims["iss"] != APP_ID || lifetime > 10 * 60 + 60 {
        return error(
            401,
            "'Expiration time' claim ('exp') is too far in the future",
        );
    }
    let token = format!("ghs_model{}", state.next_id);
    state.next_id += 1;
    state.tokens.push(token.clone());
    ResponseTemplate::new(201).set_body_json(json!({
        "token": token,
        "expires_at": "2099-01-01T00:00:00Z",
        "permissions": {"checks": "write", "statuses": "write"},
        "repository_selection": "all"
    }))
}

const CONCLUSIONS: [&str; 7] = [
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "timed_out",
];

/// Checks the writable fields of a create or update; `Err` is the 422's message.
fn validate(body: &Map<String, Value>, create: bool) -> Result<(), String> {
    let invalid = |what: String| Err(format!("Invalid request.\n\n{what}"));
    if create {
        for key in ["name", "head_sha"] {
            if !body.get(key).is_some_and(Value::is_string) {
                return invalid(format!("\"{key}\" wasn't supplied."));
            }
        }
    }
    if let Some(status) = body.get("status")
        && !matches!(
            status.as_str(),
            Some("queued" | "in_progress" | "completed")
        )
    {
        return invalid(format!(
            "{status} is not a member of [queued, in_progress, completed]."
        ));
    }
    if let Some(conclusion) = body.get("conclusion")
        && !conclusion
            .as_str()
            .is_some_and(|c| CONCLUSIONS.contains(&c))
    {
        return invalid(format!("{conclusion} is not a valid conclusion."));
    }
    let completing = body.get("status").and_then(Value::as_str) == Some("completed")
        || body.contains_key("completed_at");
    if completing && !body.contains_key("conclusion") {
        return invalid("\"conclusion\" wasn't supplied.".to_owned());
    }
    for key in ["started_at", "completed_at"] {
        if let Some(at) = body.get(key) {
            let ok = at
                .as_str()
                .is_some_and(|t| t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T');
            if !ok {
                return invalid(format!("{at} is not a valid ISO 8601 timestamp for {key}."));
            }
        }
    }
    if let Some(output) = body.get("output") {
        for key in ["title", "summary"] {
            if !output.get(key).is_some_and(Value::is_string) {
                return invalid(format!("\"{key}\" wasn't supplied."));
            }
        }
        for key in ["summary", "text"] {
            let n = output
                .get(key)
                .and_then(Value::as_str)
                .map_or(0, |t| t.chars().count());
            if n > MAX_OUTPUT {
                return invalid(format!(
                    "Only {MAX_OUTPUT} characters are allowed; {n} were supplied."
                ));
            }
        }
    }
    Ok(())
}

/// A write's body, checked: the object, or the answer to give.
fn checked(request: &Request, create: bool) -> Result<Map<String, Value>, Box<ResponseTemplate>> {
    let Ok(Value::Object(body)) = request.body_json::<Value>() else {
        return Err(Box::new(error(400, "Problems parsing JSON")));
    };
    validate(&body, create).map_err(|message| Box::new(error(422, &message)))?;
    Ok(body)
}

/// Applies `body` to a check run: a conclusion makes it completed.
fn apply(run: &mut CheckRun, body: Map<String, Value>) {
    for (key, value) in body {
        if key != "head_sha" {
            run.fields.insert(key, value);
        }
    }
    if run.fields.contains_key("conclusion") && run.fields.get("conclusion") != Some(&Value::Null) {
        run.fields.insert("status".into(), json!("completed"));
    }
    let status = run.status().to_owned();
    let conclusion = run.conclusion().map(str::to_owned);
    run.states.push((status, conclusion));
}

fn shown(run: &CheckRun) -> Value {
    let mut out = run.fields.clone();
    out.insert("id".into(), json!(run.id));
    out.insert("head_sha".into(), json!(run.head_sha));
    out.entry("status").or_insert(json!("queued"));
    out.entry("conclusion").or_insert(Value::Null);
    Value::Object(out)
}

fn create(state: &mut State, repo: &str, request: &Request) -> ResponseTemplate {
    if let Some((status, message)) = &state.refuse {
        return error(*status, message);
    }
    let body = match checked(request, true) {
        Ok(body) => body,
        Err(answer) => return *answer,
    };
    if matches!(state.lose_next_create, Some(Lost::Unmade)) {
        state.lose_next_create = None;
        return error(502, "Server Error");
    }
    let id = state.next_id;
    state.next_id += 1;
    let mut run = CheckRun {
        id,
        repo: repo.to_owned(),
        head_sha: body["head_sha"].as_str().unwrap_or_default().to_owned(),
        fields: Map::new(),
        states: Vec::new(),
    };
    run.fields.insert("status".into(), json!("queued"));
    apply(&mut run, body);
    let answer = shown(&run);
    state.check_runs.push(run);
    match state.lose_next_create.take() {
        None => ResponseTemplate::new(201).set_body_json(answer),
        Some(Lost::BadGateway) => error(502, "Server Error"),
        Some(Lost::Stall(delay)) => ResponseTemplate::new(201)
            .set_body_json(answer)
            .set_delay(delay),
        Some(Lost::Garbage) => ResponseTemplate::new(201)
            .set_body_raw("<html><body>upstream hiccup</body></html>", "text/html"),
        Some(Lost::Unmade) => unreachable!("answered above"),
    }
}

fn update(state: &mut State, repo: &str, id: &str, request: &Request) -> ResponseTemplate {
    if let Some((status, message)) = &state.refuse {
        return error(*status, message);
    }
    if let Some(seconds) = state.throttle_next_update.take() {
        state.throttled_at = Some(Instant::now());
        return error(429, "You have exceeded a secondary rate limit.")
            .insert_header("retry-after", seconds.to_string().as_str());
    }
    let body = match checked(request, false) {
        Ok(body) => body,
        Err(answer) => return *answer,
    };
    let Some(run) = state
        .check_runs
        .iter_mut()
        .find(|r| r.id.to_string() == id && r.repo == repo)
    else {
        return not_found();
    };
    // GitHub keeps a completed check run completed (its answer to a try is not documented;
    // a 422 is what this model gives).
    let reopens = body
        .get("status")
        .is_some_and(|status| status != "completed");
    if run.status() == "completed" && reopens {
        return error(
            422,
            "Invalid request.\n\nA completed check run cannot go back to queued or in_progress.",
        );
    }
    apply(run, body);
    ResponseTemplate::new(200).set_body_json(shown(run))
}

fn list(state: &State, repo: &str, sha: &str, request: &Request) -> ResponseTemplate {
    let query: HashMap<String, String> = request.url.query_pairs().into_owned().collect();
    let per_page = query
        .get("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page = query
        .get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let mut runs: Vec<&CheckRun> = state
        .check_runs
        .iter()
        .rev()
        .filter(|r| r.repo == repo && r.head_sha == sha)
        .filter(|r| {
            query
                .get("check_name")
                .is_none_or(|n| r.get("name") == n.as_str())
        })
        .collect();
    if query.get("filter").map_or("latest", String::as_str) == "latest" {
        let mut newest: BTreeMap<String, u64> = BTreeMap::new();
        for run in &runs {
            let name = run.get("name").as_str().unwrap_or_default().to_owned();
            newest.entry(name).or_insert(run.id);
        }
        runs.retain(|r| newest.values().any(|id| *id == r.id));
    }
    let total = runs.len();
    let page: Vec<Value> = runs
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(shown)
        .collect();
    ResponseTemplate::new(200).set_body_json(json!({"total_count": total, "check_runs": page}))
}
