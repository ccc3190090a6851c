//! Commit statuses from a real engine (SQLite store, in-process adapter) to mock GitHub and
//! GitLab APIs, checking the exact requests: URL, body and credentials. A GitHub App's
//! check runs are in `checks.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_config::GithubAuth;
use baton_core::{RunStatus, SecretRef};
use baton_report::RetryPolicy;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

#[path = "support/harness.rs"]
mod harness;

use harness::{
    GITHUB_TOKEN, GITLAB_TOKEN, Harness, PUBLIC_URL, SHA, fast_retries, github_source,
    gitlab_source,
};

/// Echoes the posted status back, as GitHub does (octocrab reads the answer as a status).
fn echo(request: &Request) -> ResponseTemplate {
    let body: Value = request.body_json().unwrap_or(Value::Null);
    ResponseTemplate::new(201).set_body_json(body)
}

/// Waits until `done` holds for the requests the server received.
async fn until(server: &MockServer, what: &str, done: impl Fn(&[Request]) -> bool) -> Vec<Request> {
    for _ in 0..500 {
        let received = server.received_requests().await.unwrap();
        if done(&received) {
            return received;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = server.received_requests().await.unwrap();
    panic!("{what}: not seen in 10 s; received:\n{}", show(&received));
}

fn show(requests: &[Request]) -> String {
    requests
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r.method,
                r.url.path(),
                String::from_utf8_lossy(&r.body)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The status requests' bodies, by context (`context` on GitHub, `name` on GitLab), in the
/// order they arrived.
fn by_context(requests: &[Request], key: &str) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in requests
        .iter()
        .filter(|r| r.url.path().contains("/statuses/"))
    {
        let body: Value = r.body_json().unwrap();
        out.entry(body[key].as_str().unwrap().to_owned())
            .or_default()
            .push(body);
    }
    out
}

/// True when every context in `want` has `state` as its latest status.
fn latest_states(requests: &[Request], key: &str, want: &[(&str, &str)]) -> bool {
    let seen = by_context(requests, key);
    want.iter().all(|(context, state)| {
        seen.get(*context)
            .and_then(|bodies| bodies.last())
            .is_some_and(|b| b["state"] == *state)
    })
}

#[tokio::test]
async fn github_token_reports_the_run_and_each_stage_to_the_pushed_commit() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/repos/octo/hello/statuses/{SHA}")))
        .respond_with(echo)
        .mount(&server)
        .await;
    let h = Harness::new(
        vec![(
            "github",
            github_source(
                server.uri(),
                GithubAuth::Token(SecretRef::Env("GITHUB_TOKEN".into())),
            ),
        )],
        fast_retries(),
    )
    .await;
    let event = json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": SHA,
        "head_commit": {"id": SHA}, "repository": {"full_name": "octo/hello"}
    });
    let id = h
        .start(
            json!({
                "build": {"uses": "script"},
                "gate": {"uses": "script", "needs": ["build"], "with": {"result": "wait"}},
                "docs": {"uses": "script", "needs": ["build"], "if": ".event.deploy == true"}
            }),
            &["github"],
            event,
            "github",
        )
        .await;

    // While the gate waits, the run and the gate show as pending on the commit.
    until(&server, "the gate waiting", |r| {
        let seen = by_context(r, "context");
        seen.get("baton/ci/gate")
            .and_then(|b| b.last())
            .is_some_and(|b| {
                b["state"] == "pending" && b["description"] == "waiting: the script said so"
            })
            && seen
                .get("baton/ci")
                .and_then(|b| b.last())
                .is_some_and(|b| b["state"] == "pending" && b["description"] == "running")
    })
    .await;
    h.engine
        .signal(&id, "gate", json!({"decision": "approved"}))
        .await
        .unwrap();
    assert_eq!(h.finish(&id).await, RunStatus::Succeeded);

    let received = until(&server, "the final statuses", |r| {
        latest_states(
            r,
            "context",
            &[
                ("baton/ci", "success"),
                ("baton/ci/build", "success"),
                ("baton/ci/gate", "success"),
                ("baton/ci/docs", "success"),
            ],
        )
    })
    .await;
    let link = format!("{PUBLIC_URL}/api/v1/runs/{id}");
    for r in &received {
        assert_eq!(r.method.as_str(), "POST");
        assert_eq!(r.url.path(), format!("/repos/octo/hello/statuses/{SHA}"));
        assert_eq!(
            header(r, "authorization"),
            Some(format!("Bearer {GITHUB_TOKEN}").as_str())
        );
        assert_eq!(header(r, "x-github-api-version"), Some("2022-11-28"));
        assert_eq!(header(r, "accept"), Some("application/vnd.github+json"));
        let body: Value = r.body_json().unwrap();
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["context", "description", "state", "target_url"],
            "{body}"
        );
        assert_eq!(body["target_url"], link.as_str());
    }
    let seen = by_context(&received, "context");
    assert_eq!(
        seen["baton/ci/build"].last().unwrap(),
        &json!({"state": "success", "context": "baton/ci/build", "description": "succeeded: the script said so", "target_url": link})
    );
    assert_eq!(
        seen["baton/ci"].last().unwrap(),
        &json!({"state": "success", "context": "baton/ci", "description": "succeeded", "target_url": link})
    );
    let docs = seen["baton/ci/docs"].last().unwrap();
    assert!(
        docs["description"].as_str().unwrap().starts_with("skipped"),
        "{docs}"
    );
    // Each context goes forward only: once final, no pending after it; and no status twice.
    for (context, bodies) in &seen {
        let finals = bodies.iter().position(|b| b["state"] != "pending");
        if let Some(i) = finals {
            assert!(
                bodies[i..].iter().all(|b| b["state"] != "pending"),
                "{context}: {bodies:?}"
            );
        }
        for pair in bodies.windows(2) {
            assert_ne!(pair[0], pair[1], "{context} posted twice");
        }
    }
    let log = h.log.text();
    assert!(
        !log.contains(GITHUB_TOKEN),
        "the token is never logged:\n{log}"
    );
}

/// A mock GitLab that accepts every status for project 42's commit, and a harness with the
/// source `gitlab` pointing at it.
async fn gitlab_accepting_statuses() -> (MockServer, Harness) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/api/v4/projects/42/statuses/{SHA}")))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1})))
        .mount(&server)
        .await;
    let h = Harness::new(
        vec![("gitlab", gitlab_source(format!("{}/api/v4", server.uri())))],
        fast_retries(),
    )
    .await;
    (server, h)
}

#[tokio::test]
async fn gitlab_gets_the_same_through_its_commit_status_api() {
    let (server, h) = gitlab_accepting_statuses().await;
    let event = json!({
        "object_kind": "push", "ref": "refs/heads/main", "before": "0".repeat(40), "after": SHA,
        "checkout_sha": SHA, "project_id": 42,
        "project": {"id": 42, "path_with_namespace": "group/hello"}
    });
    let id = h
        .start(
            json!({
                "build": {"uses": "script"},
                "test": {"uses": "script", "needs": ["build"], "with": {"result": "fail"}}
            }),
            &["gitlab"],
            event,
            "gitlab",
        )
        .await;
    assert_eq!(h.finish(&id).await, RunStatus::Failed);
    let received = until(&server, "the final statuses", |r| {
        latest_states(
            r,
            "name",
            &[
                ("baton/ci", "failed"),
                ("baton/ci/build", "success"),
                ("baton/ci/test", "failed"),
            ],
        )
    })
    .await;
    let link = format!("{PUBLIC_URL}/api/v1/runs/{id}");
    for r in &received {
        assert_eq!(r.method.as_str(), "POST");
        assert_eq!(r.url.path(), format!("/api/v4/projects/42/statuses/{SHA}"));
        assert_eq!(header(r, "private-token"), Some(GITLAB_TOKEN));
        assert_eq!(header(r, "authorization"), None);
        let body: Value = r.body_json().unwrap();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["description", "name", "ref", "state", "target_url"],
            "{body}"
        );
        assert_eq!(body["ref"], "main");
        assert_eq!(body["target_url"], link.as_str());
    }
    let seen = by_context(&received, "name");
    assert_eq!(
        seen["baton/ci/build"].last().unwrap(),
        &json!({"state": "success", "name": "baton/ci/build", "description": "succeeded: the script said so", "target_url": link, "ref": "main"})
    );
    let test = seen["baton/ci/test"].last().unwrap();
    assert!(
        test["description"].as_str().unwrap().starts_with("failed"),
        "{test}"
    );
    // GitLab refuses a move to the state a status is already in: never posted.
    for (context, bodies) in &seen {
        for pair in bodies.windows(2) {
            assert_ne!(pair[0]["state"], pair[1]["state"], "{context}: {bodies:?}");
        }
    }
    assert!(!h.log.text().contains(GITLAB_TOKEN));
}

#[tokio::test]
async fn a_run_started_by_a_gitlab_pipeline_reports_into_that_pipeline() {
    let (server, h) = gitlab_accepting_statuses().await;
    // A Pipeline Hook: the commit has (or may get) other pipelines, and without the id GitLab
    // would put the status on the newest of them.
    let event = json!({
        "object_kind": "pipeline",
        "object_attributes": {"id": 3071, "ref": "main", "sha": SHA, "status": "success"},
        "project": {"id": 42, "path_with_namespace": "group/hello"}
    });
    let id = h
        .start(
            json!({"deploy": {"uses": "script"}}),
            &["gitlab"],
            event,
            "gitlab",
        )
        .await;
    assert_eq!(h.finish(&id).await, RunStatus::Succeeded);
    let received = until(&server, "the final statuses", |r| {
        latest_states(
            r,
            "name",
            &[("baton/ci", "success"), ("baton/ci/deploy", "success")],
        )
    })
    .await;
    for r in &received {
        let body: Value = r.body_json().unwrap();
        assert_eq!(body["pipeline_id"], 3071, "{body}");
        assert_eq!(body["ref"], "main", "{body}");
    }
}

#[tokio::test]
async fn a_server_error_is_retried_until_the_status_lands() {
    let server = MockServer::start().await;
    // The first two posts meet a GitHub outage.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({"message": "Server Error"})))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/repos/octo/hello/statuses/{SHA}")))
        .respond_with(echo)
        .mount(&server)
        .await;
    let h = Harness::new(
        vec![(
            "github",
            github_source(
                server.uri(),
                GithubAuth::Token(SecretRef::Env("GITHUB_TOKEN".into())),
            ),
        )],
        fast_retries(),
    )
    .await;
    let id = h
        .start(
            json!({"build": {"uses": "script"}}),
            &["github"],
            json!({"after": SHA, "repository": {"full_name": "octo/hello"}}),
            "github",
        )
        .await;
    assert_eq!(h.finish(&id).await, RunStatus::Succeeded);
    // The two failed posts, then each context's status once more (a run this short may
    // have only its final statuses posted, failed ones included).
    until(&server, "the final statuses after the failures", |r| {
        r.len() >= 4
            && latest_states(
                r,
                "context",
                &[("baton/ci", "success"), ("baton/ci/build", "success")],
            )
    })
    .await;
    let log = h.log.text();
    assert!(
        log.contains("will try again") && log.contains("HTTP 500: Server Error"),
        "{log}"
    );
    assert!(!log.contains("giving up"), "{log}");
}

#[tokio::test]
async fn a_forbidden_answer_is_logged_with_its_reason_and_never_fails_the_run() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(403).set_body_json(
                json!({"message": "Resource not accessible by personal access token"}),
            ),
        )
        .mount(&server)
        .await;
    let h = Harness::new(
        vec![(
            "github",
            github_source(
                server.uri(),
                GithubAuth::Token(SecretRef::Env("GITHUB_TOKEN".into())),
            ),
        )],
        RetryPolicy {
            first_retry: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
            give_up_after: Duration::from_millis(300),
            request_timeout: Duration::from_secs(5),
        },
    )
    .await;
    let id = h
        .start(
            json!({"build": {"uses": "script"}}),
            &["github"],
            json!({"after": SHA, "repository": {"full_name": "octo/hello"}}),
            "github",
        )
        .await;
    assert_eq!(h.finish(&id).await, RunStatus::Succeeded);
    assert_eq!(
        h.engine.snapshot(&id).await.unwrap().stages[0].status,
        baton_core::StageStatus::Succeeded
    );
    // Retried for a while (a 403 can be a rate limit), then dropped with the reason.
    for _ in 0..250 {
        if h.log.text().contains("giving up") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = h.log.text();
    assert!(log.contains("giving up"), "{log}");
    assert!(
        log.contains("HTTP 403: Resource not accessible by personal access token"),
        "{log}"
    );
    assert!(
        log.contains("context=baton/ci/build") || log.contains("context=baton/ci"),
        "{log}"
    );
    assert!(!log.contains(GITHUB_TOKEN), "{log}");
    let received = server.received_requests().await.unwrap();
    assert!(received.len() >= 2, "retried: {}", show(&received));
}

#[tokio::test]
async fn a_run_without_a_commit_is_not_reported() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(echo)
        .mount(&server)
        .await;
    let h = Harness::new(
        vec![
            (
                "github",
                github_source(
                    server.uri(),
                    GithubAuth::Token(SecretRef::Env("GITHUB_TOKEN".into())),
                ),
            ),
            ("gitlab", gitlab_source(format!("{}/api/v4", server.uri()))),
        ],
        fast_retries(),
    )
    .await;
    // A manual run: no commit in its event.
    let manual = h
        .start(
            json!({"build": {"uses": "script"}}),
            &["github", "gitlab"],
            json!({"note": "by hand"}),
            "manual",
        )
        .await;
    // A workflow without `report:` is never reported, whatever its event.
    let unreported = h
        .start(
            json!({"build": {"uses": "script"}}),
            &[],
            json!({"after": SHA, "repository": {"full_name": "octo/hello"}}),
            "github",
        )
        .await;
    assert_eq!(h.finish(&manual).await, RunStatus::Succeeded);
    assert_eq!(h.finish(&unreported).await, RunStatus::Succeeded);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = server.received_requests().await.unwrap();
    assert!(received.is_empty(), "{}", show(&received));
    assert!(h.log.text().contains("names no commit"), "{}", h.log.text());
    let _ = &h.dir;
}
