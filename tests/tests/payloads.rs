//! The recorded webhook payloads of `tests/fixtures/` through a real `baton serve`: each is
//! verified and stored, starts exactly the workflows whose `on:` entries match its real
//! fields, hands those fields to the stages, and has its run's status reported on the commit
//! and branch the payload names (GitHub and GitLab APIs stood in for by a local recorder).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_tests::{Sandbox, Server, eventually, repo_root};
use serde_json::Value;

const VIEWER: &str = "viewer-token";
const GITHUB_SECRET: &str = "github-secret";
const GITLAB_TOKEN: &str = "gitlab-token";

/// A payload file of `tests/fixtures/`.
fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("tests/fixtures").join(name)).unwrap()
}

/// One request the recorder answered.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    body: Value,
}

/// An HTTP server on 127.0.0.1 that records every request and answers `201` with the
/// request's own JSON body (which is what both status APIs answer in substance).
struct Recorder {
    url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_owned();
                let path = parts.next().unwrap_or_default().to_owned();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let answer = if body.is_empty() {
                    b"{}".to_vec()
                } else {
                    body.clone()
                };
                log.lock().unwrap().push(Recorded {
                    method,
                    path,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                });
                let head = format!(
                    "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&answer);
            }
        });
        Self { url, requests }
    }

    /// The requests so far whose path starts with `prefix`.
    fn to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}

fn gateway(sb: &Sandbox, api: &str) -> String {
    sb.write(
        "baton.toml",
        &format!(
            r#"
workflows = ["workflows/*.yaml"]

[api]
tokens = [{{ name = "v", token = {{ env = "T_VIEWER" }}, role = "viewer" }}]

[sources.github]
kind = "github"
secret = {{ env = "GH_SECRET" }}
token = {{ env = "GH_TOKEN" }}
api_url = "{api}/github"

[sources.gitlab]
kind = "gitlab"
token = {{ env = "GL_TOKEN" }}
api_token = {{ env = "GL_API_TOKEN" }}
api_url = "{api}/gitlab/api/v4"
"#
        ),
    );
    // Each stage prints what it was handed from the payload.
    let echo = |name: &str, on: &str, template: &str, report: &str| {
        sb.write(
            &format!("workflows/{name}.yaml"),
            &format!(
                "name: {name}\non:\n{on}\nstages:\n  echo:\n    uses: exec\n    with:\n      \
                 env: {{ VALUE: '${{{{ .event{template} }}}}' }}\n      run: 'echo \"[COUT] value = $VALUE\"'\n{report}"
            ),
        );
    };
    echo(
        "gh-master",
        "  - { source: github, event: push, if: '.ref == \"refs/heads/master\" and .created' }",
        ".head_commit.message",
        "report: [github]",
    );
    echo(
        "gh-main",
        "  - { source: github, event: push, if: '.ref == \"refs/heads/main\"' }",
        ".ref",
        "",
    );
    echo(
        "gh-sync",
        "  - { source: github, event: pull_request, if: '.action == \"synchronize\"' }",
        ".pull_request.head.sha",
        "",
    );
    echo(
        "gh-opened",
        "  - { source: github, event: pull_request, if: '.action == \"opened\"' }",
        ".action",
        "",
    );
    echo(
        "gl-push",
        "  - { source: gitlab, event: Push Hook, if: '.ref == \"refs/heads/master\"' }",
        ".total_commits_count",
        "report: [gitlab]",
    );
    echo(
        "gl-open",
        "  - { source: gitlab, event: Merge Request Hook, if: '.object_attributes.action == \"open\"' }",
        ".object_attributes.source_branch",
        "report: [gitlab]",
    );
    echo(
        "gl-merged",
        "  - { source: gitlab, event: Merge Request Hook, if: '.object_attributes.action == \"merge\"' }",
        ".object_attributes.action",
        "",
    );
    sb.path().join("baton.toml").display().to_string()
}

/// A `baton serve` with the workflows of [`gateway`], reporting to a [`Recorder`].
struct Gateway {
    server: Server,
    recorder: Recorder,
    _sandbox: Sandbox,
}

impl Gateway {
    fn start() -> Self {
        let sandbox = Sandbox::new();
        let recorder = Recorder::start();
        let config = gateway(&sandbox, &recorder.url);
        let server = sandbox.serve(
            &config,
            &[
                ("T_VIEWER", VIEWER),
                ("GH_SECRET", GITHUB_SECRET),
                ("GH_TOKEN", "github-api-token"),
                ("GL_TOKEN", GITLAB_TOKEN),
                ("GL_API_TOKEN", "gitlab-api-token"),
            ],
        );
        Self {
            server,
            recorder,
            _sandbox: sandbox,
        }
    }

    /// Sends the fixture `file` as a GitHub `event` delivery signed with `secret`.
    fn github(&self, file: &str, event: &str, secret: &str) -> baton_tests::Reply {
        let id = format!("{event}-{file}");
        self.server
            .github("github", secret, event, &id, &fixture(file))
    }

    /// Sends the fixture `file` as a GitLab `event` delivery with the right token.
    fn gitlab(&self, file: &str, event: &str, uuid: &str) -> baton_tests::Reply {
        self.server.request(
            "POST",
            "/hooks/gitlab",
            &[
                ("x-gitlab-event", event),
                ("x-gitlab-event-uuid", uuid),
                ("x-gitlab-token", GITLAB_TOKEN),
                ("content-type", "application/json"),
            ],
            Some(fixture(file).as_bytes()),
        )
    }

    /// The deliveries stored so far.
    fn stored(&self) -> Value {
        self.server.get("/api/v1/deliveries", VIEWER).json()["deliveries"].clone()
    }
}

/// Waits until the delivery the answer names is processed; returns its stored record.
fn processed(server: &Server, answer: &baton_tests::Reply) -> Value {
    assert_eq!(answer.status, 202, "{answer:?}");
    let delivery = answer.json()["delivery"].as_i64().expect("a delivery id");
    server.wait_for(
        &format!("/api/v1/deliveries/{delivery}"),
        VIEWER,
        "the delivery to be processed",
        |d| d["status"] == "processed",
    )
}

/// The one run `delivery` started, once it finished: (workflow, the value its stage printed).
fn finished_runs(server: &Server, delivery: &Value) -> Vec<(String, Value)> {
    let mut runs: Vec<(String, Value)> = delivery["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| {
            let run = server.wait_for(
                &format!("/api/v1/runs/{}", id.as_str().unwrap()),
                VIEWER,
                "the run to finish",
                |r| r["status"] == "succeeded" || r["status"] == "failed",
            );
            assert_eq!(run["status"], "succeeded", "{run:#}");
            let value = run["stages"][0]["outputs"]["value"].clone();
            (run["workflow"].as_str().unwrap().to_owned(), value)
        })
        .collect();
    runs.sort_by(|a, b| a.0.cmp(&b.0));
    runs
}

/// Waits for the final (success) statuses of `contexts` in the repository or project of
/// `status_path` (`…/statuses/<sha>`), and checks that each went to `status_path`, for the
/// branch `git_ref` when one is given (GitLab names it; GitHub statuses have none).
fn reported(recorder: &Recorder, status_path: &str, contexts: &[&str], git_ref: Option<&str>) {
    let prefix = &status_path[..=status_path.rfind('/').unwrap()];
    let mut found = Vec::new();
    eventually(Duration::from_secs(30), "the final statuses", || {
        let posted = recorder.to(prefix);
        found = contexts
            .iter()
            .filter_map(|context| {
                posted
                    .iter()
                    .rev()
                    .find(|r| {
                        (r.body["context"] == *context || r.body["name"] == *context)
                            && r.body["state"] == "success"
                    })
                    .cloned()
            })
            .collect();
        found.len() == contexts.len()
    });
    for status in &found {
        assert_eq!(
            (status.method.as_str(), status.path.as_str()),
            ("POST", status_path),
            "{status:?}"
        );
        if let Some(git_ref) = git_ref {
            assert_eq!(status.body["ref"], git_ref, "{status:?}");
        }
    }
}

#[test]
fn a_recorded_github_push_starts_its_branch_workflow_and_is_reported_on_its_commit() {
    let gw = Gateway::start();
    let delivery = processed(
        &gw.server,
        &gw.github("github/push.json", "push", GITHUB_SECRET),
    );
    // `refs/heads/master` matches gh-master; gh-main's `.ref == "refs/heads/main"` does not.
    assert_eq!(
        finished_runs(&gw.server, &delivery),
        [("gh-master".to_owned(), Value::from("Initial commit"))]
    );
    reported(
        &gw.recorder,
        "/github/repos/Codertocat/Hello-World/statuses/6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        &["baton/gh-master", "baton/gh-master/echo"],
        None,
    );
}

#[test]
fn a_recorded_github_pull_request_hands_its_head_commit_to_the_run() {
    let gw = Gateway::start();
    let answer = gw.github("github/pull_request.json", "pull_request", GITHUB_SECRET);
    let delivery = processed(&gw.server, &answer);
    assert_eq!(
        finished_runs(&gw.server, &delivery),
        [(
            "gh-sync".to_owned(),
            Value::from("ec26c3e57ca3a959ca5aad62de7213c562f8c821")
        )],
        "a `synchronize` starts gh-sync, not gh-opened"
    );
}

#[test]
fn a_recorded_github_ping_is_answered_and_not_stored() {
    let gw = Gateway::start();
    let answer = gw.github("github/ping.json", "ping", GITHUB_SECRET);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(gw.stored(), serde_json::json!([]));
}

#[test]
fn a_github_payload_with_a_wrong_signature_starts_nothing() {
    let gw = Gateway::start();
    let answer = gw.github("github/push.json", "push", "not the secret");
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(gw.stored(), serde_json::json!([]));
}

#[test]
fn gitlab_documented_payloads_start_their_workflows_and_are_reported_on_their_commit_and_branch() {
    let gw = Gateway::start();
    let push = processed(
        &gw.server,
        &gw.gitlab("gitlab/push.json", "Push Hook", "gl-push-1"),
    );
    assert_eq!(
        finished_runs(&gw.server, &push),
        [("gl-push".to_owned(), Value::from(4))]
    );
    assert_eq!(push["delivery_id"], "gl-push-1", "{push}");
    reported(
        &gw.recorder,
        "/gitlab/api/v4/projects/15/statuses/da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        &["baton/gl-push", "baton/gl-push/echo"],
        Some("master"),
    );

    let answer = gw.gitlab("gitlab/merge_request.json", "Merge Request Hook", "gl-mr-1");
    let opened = processed(&gw.server, &answer);
    // `open` matches gl-open; gl-merged waits for `merge`.
    assert_eq!(
        finished_runs(&gw.server, &opened),
        [("gl-open".to_owned(), Value::from("ms-viewport"))]
    );
    // The status goes to the merge request's source project and branch.
    reported(
        &gw.recorder,
        "/gitlab/api/v4/projects/14/statuses/da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        &["baton/gl-open", "baton/gl-open/echo"],
        Some("ms-viewport"),
    );
}
