//! The adapter against a real Buildbot: the one `scripts/buildbot.sh` starts from
//! `tests/buildbot/master.cfg`, named by `BATON_BUILDBOT_URL` (`scripts/test.sh` sets it).
//! Without it these tests fail: they never skip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_adapter_buildbot::{BuildbotKind, KIND};
use baton_adapter_kit::{
    Scenario, check_ref_round_trips, fresh_key, poll_until_terminal, run_conformance,
};
use baton_core::adapter::WebhookRequest;
use baton_core::secret::{SecretError, SecretResolver};
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, ExternalState, PollRequest,
    Secret, SecretRef, StartRequest,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(90);

/// The test Buildbot's URL; panics (never skips) when it is not set or not answering.
fn buildbot_url() -> String {
    let url = std::env::var("BATON_BUILDBOT_URL").unwrap_or_else(|_| {
        panic!(
            "BATON_BUILDBOT_URL is not set: these tests need the real Buildbot; run `scripts/buildbot.sh` and export BATON_BUILDBOT_URL=http://127.0.0.1:8010 (scripts/test.sh does both)"
        )
    });
    let probe = format!("{}/api/v2/builders", url.trim_end_matches('/'));
    let answer = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                // Read the whole body: Buildbot 4.3 writes API answers from a thread, and a
                // client hanging up halfway can wedge its web server.
                let response = reqwest::Client::new()
                    .get(&probe)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await?;
                let ok = response.status().is_success();
                response.bytes().await.map(|_| ok)
            })
    })
    .join()
    .unwrap();
    match answer {
        Ok(true) => url,
        other => panic!(
            "Buildbot at {url} does not answer ({other:?}): run `scripts/buildbot.sh` (BATON_BUILDBOT_URL={url})"
        ),
    }
}

/// Knows one secret: `{ env = "HOOK" }`, the token master.cfg's status push sends.
struct Secrets;

impl SecretResolver for Secrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError> {
        match reference {
            SecretRef::Env(name) if name == "HOOK" => Ok(Secret::new("baton-test-hook")),
            SecretRef::Env(name) => Err(SecretError::MissingEnv(name.clone())),
            SecretRef::File(path) => Err(SecretError::File {
                path: path.clone(),
                reason: "not in tests".into(),
            }),
        }
    }
}

fn adapter_with(extra: Value) -> Arc<dyn Adapter> {
    let mut config = json!({"url": buildbot_url(), "poll_initial": "200ms", "poll_max": "1s"});
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    BuildbotKind
        .build("bb", &config, &Secrets)
        .expect("adapter")
}

fn adapter() -> Arc<dyn Adapter> {
    adapter_with(json!({}))
}

async fn start(adapter: &dyn Adapter, key: &AttemptKey, input: Value) -> ExternalRef {
    let request = StartRequest {
        key: key.clone(),
        workflow: "real-buildbot".into(),
        input,
        timeout: DEADLINE,
    };
    let external = adapter.start(&request).await.expect("start");
    check_ref_round_trips(KIND, &external)
}

async fn run_to_end(
    adapter: &dyn Adapter,
    stage: &str,
    input: Value,
) -> (AttemptKey, ExternalRef, ExternalState, Option<String>) {
    let key = fresh_key(stage);
    let external = start(adapter, &key, input).await;
    let (external, outcome) = poll_until_terminal(adapter, &key, external, None, DEADLINE).await;
    (key, external, outcome.state, outcome.message)
}

/// GETs an API path of the test Buildbot.
async fn api(path: &str) -> Value {
    let url = format!("{}/api/v2/{path}", buildbot_url().trim_end_matches('/'));
    get_text(&url).await.parse().expect("JSON")
}

async fn get_text(url: &str) -> String {
    let response = reqwest::get(url).await.expect("GET");
    assert!(
        response.status().is_success(),
        "GET {url}: {}",
        response.status()
    );
    response.text().await.expect("body")
}

#[tokio::test]
async fn conforms() {
    run_conformance(Scenario {
        kind: Arc::new(BuildbotKind),
        adapter: adapter(),
        valid_with: json!({"builder": "succeed", "properties": {"greeting": "${{ .event.who }}", "loud": true}}),
        invalid_with: json!({"builder": "succeed", "properties": {"reason": "mine", "list": [1]}}),
        succeed: json!({"builder": "succeed", "properties": {"greeting": "kit"}}),
        fail: json!({"builder": "fail"}),
        long: json!({"builder": "sleep", "properties": {"sleep": "120"}}),
        success_signal: None,
        failure_signal: None,
        side_effect_free: false,
        replica: Some(adapter()),
        deadline: DEADLINE,
    })
    .await;
}

#[tokio::test]
async fn outputs_carry_properties_given_and_computed_by_the_build() {
    let a = adapter();
    let (key, external, state, _) = run_to_end(
        a.as_ref(),
        "props",
        json!({"builder": "props", "properties": {"greeting": "hello baton", "tag": 42, "loud": true}}),
    )
    .await;
    assert_eq!(state, ExternalState::Succeeded { warnings: false });
    let out = a.outputs(&key, &external).await.unwrap();
    let props = &out["properties"];
    assert_eq!(props["greeting"], "hello baton");
    assert_eq!(props["tag"], "42", "numbers are sent as text");
    assert_eq!(props["loud"], true, "booleans stay booleans");
    assert_eq!(props["baton_attempt"], key.as_str());
    assert_eq!(
        props["shout"], "HELLO BATON",
        "set by SetPropertyFromCommand"
    );
    assert_eq!(props["length"], "11");
    let number = out["number"].as_u64().unwrap();
    assert_eq!(props["version"], format!("1.0.{number}"));
    assert_eq!(out["results"], "SUCCESS");
    assert_eq!(out["results_code"], 0);
    assert_eq!(out["builder"], "props");
    assert_eq!(out["buildrequest_id"].to_string(), external.id);
    let build_id = out["build_id"].as_u64().unwrap();
    assert!(
        out["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/builds/{number}")),
        "{out:?}"
    );
    assert_eq!(external.url.as_deref(), out["url"].as_str());
    // The reference knows the build, as Buildbot does.
    let build = api(&format!("builds/{build_id}")).await;
    assert_eq!(build["builds"][0]["number"].as_u64(), Some(number));
}

#[tokio::test]
async fn warnings_count_as_configured() {
    let (_, _, state, message) =
        run_to_end(adapter().as_ref(), "warn", json!({"builder": "warn"})).await;
    assert_eq!(state, ExternalState::Succeeded { warnings: true });
    assert!(message.unwrap().contains("WARNINGS"));
    let strict = adapter_with(json!({"warnings": "failure"}));
    let (_, _, state, _) = run_to_end(strict.as_ref(), "warn", json!({"builder": "warn"})).await;
    assert_eq!(state, ExternalState::Failed);
}

#[tokio::test]
async fn a_failing_step_fails_with_buildbots_words() {
    let a = adapter();
    let (key, external, state, message) =
        run_to_end(a.as_ref(), "fail", json!({"builder": "fail"})).await;
    assert_eq!(state, ExternalState::Failed);
    let message = message.unwrap();
    assert!(
        message.contains("FAILURE") && message.contains("failed"),
        "{message}"
    );
    let out = a.outputs(&key, &external).await.unwrap();
    assert_eq!(out["results"], "FAILURE");
    let logs = a.logs(&key, &external).await.unwrap();
    let text = logs.text.unwrap();
    assert!(text.contains("about to fail"), "{text}");
    assert!(text.contains("--- break / stdio ---"), "{text}");
    let raw = logs
        .links
        .iter()
        .find(|l| l.name == "break/stdio")
        .expect("a link to the failing step's log");
    assert!(get_text(&raw.url).await.contains("about to fail"));
}

#[tokio::test]
async fn a_queued_request_is_cancelled_and_reads_cancelled() {
    let a = adapter();
    let key = fresh_key("queued");
    let external = start(a.as_ref(), &key, json!({"builder": "queued"})).await;
    let first = a
        .poll(&PollRequest {
            key: &key,
            external: &external,
            signal: None,
        })
        .await
        .unwrap();
    assert_eq!(first.state, ExternalState::Queued, "{first:?}");
    assert!(first.message.unwrap().contains("waits for a worker"));
    a.cancel(&key, &external).await.unwrap();
    let (external, outcome) = poll_until_terminal(a.as_ref(), &key, external, None, DEADLINE).await;
    assert_eq!(outcome.state, ExternalState::Cancelled);
    let request = api(&format!("buildrequests/{}", external.id)).await;
    assert_eq!(request["buildrequests"][0]["results"], 6);
    let out = a.outputs(&key, &external).await.unwrap();
    assert_eq!(out["results"], "CANCELLED");
    assert_eq!(out["build_id"], Value::Null);
    a.cancel(&key, &external).await.unwrap();
}

#[tokio::test]
async fn a_running_build_is_stopped_and_buildbot_says_cancelled() {
    let a = adapter();
    let key = fresh_key("stop");
    let external = start(
        a.as_ref(),
        &key,
        json!({"builder": "sleep", "properties": {"sleep": "120"}}),
    )
    .await;
    // Wait until the build runs.
    let begun = Instant::now();
    let mut external = external;
    loop {
        let outcome = a
            .poll(&PollRequest {
                key: &key,
                external: &external,
                signal: None,
            })
            .await
            .unwrap();
        external = outcome.external.clone().unwrap();
        if outcome.state == ExternalState::Running {
            break;
        }
        assert!(begun.elapsed() < DEADLINE, "never ran: {outcome:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop_at = Instant::now();
    a.cancel(&key, &external).await.unwrap();
    let (external, outcome) = poll_until_terminal(a.as_ref(), &key, external, None, DEADLINE).await;
    eprintln!("stop → CANCELLED seen in {:?}", stop_at.elapsed());
    assert_eq!(outcome.state, ExternalState::Cancelled);
    let build = external.data["build"].as_u64().unwrap();
    let build = api(&format!("builds/{build}")).await;
    assert_eq!(build["builds"][0]["results"], 6, "{build}");
    assert!(
        build["builds"][0]["state_string"]
            .as_str()
            .unwrap()
            .contains("cancelled by baton"),
        "{build}"
    );
}

#[tokio::test]
async fn find_adopts_by_the_reason_when_the_scheduler_has_no_attempt_parameter() {
    let a = adapter();
    let key = fresh_key("bare");
    let input =
        json!({"builder": "succeed", "scheduler": "bare", "properties": {"greeting": "bare"}});
    let external = start(a.as_ref(), &key, input.clone()).await;
    let found = a
        .find(&key, &input)
        .await
        .unwrap()
        .expect("found by reason");
    assert_eq!(found.id, external.id);
    assert_eq!(found.data["builder"], "succeed");
    // Without the input (a cancel after a crash has none), the builder comes from Buildbot.
    let found = a.find(&key, &Value::Null).await.unwrap().unwrap();
    assert_eq!(
        (found.id.as_str(), found.data["builder"].as_str()),
        (external.id.as_str(), Some("succeed"))
    );
    // A longer key sharing the prefix is another attempt.
    let longer = AttemptKey::new(key.run_id(), key.stage_id(), key.attempt() * 10);
    assert_eq!(a.find(&longer, &input).await.unwrap(), None);
    let (_, outcome) = poll_until_terminal(a.as_ref(), &key, found, None, DEADLINE).await;
    assert_eq!(outcome.state, ExternalState::Succeeded { warnings: false });
}

#[tokio::test]
async fn mistakes_in_with_are_explained_before_anything_is_forced() {
    let a = adapter();
    let key = fresh_key("mistakes");
    let try_start = |input: Value| {
        let a = a.clone();
        let key = key.clone();
        async move {
            a.start(&StartRequest {
                key,
                workflow: "w".into(),
                input,
                timeout: DEADLINE,
            })
            .await
            .unwrap_err()
        }
    };
    let e = try_start(json!({"builder": "nope"})).await;
    assert!(
        matches!(&e, AdapterError::NotFound(m) if m.contains("no builder `nope`") && m.contains("succeed")),
        "{e:?}"
    );
    let e = try_start(json!({"builder": "succeed", "scheduler": "nope"})).await;
    assert!(
        matches!(&e, AdapterError::NotFound(m) if m.contains("no force scheduler `nope`")),
        "{e:?}"
    );
    let e = try_start(json!({"builder": "fail", "scheduler": "bare"})).await;
    assert!(
        matches!(&e, AdapterError::Invalid(m) if m.contains("cannot build `fail`")),
        "{e:?}"
    );
    let e = try_start(json!({"builder": "succeed", "properties": {"colour": "red"}})).await;
    assert!(
        matches!(&e, AdapterError::Invalid(m) if m.contains("`colour` is not one of its parameters") && m.contains("greeting")),
        "{e:?}"
    );
    assert_eq!(
        a.find(&key, &json!({"builder": "succeed"})).await.unwrap(),
        None
    );
}

/// Buildbot's own HTTP status push (master.cfg sends it to the web port + 9): the bodies it
/// really sends name the attempt, so a webhook ends the wait early.
#[tokio::test]
async fn buildbots_status_push_names_the_attempt() {
    let url = buildbot_url();
    let port: u16 = reqwest_port(&url) + 9;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{port} for status pushes: {e}"));
    let a = adapter_with(json!({"webhook_token": {"env": "HOOK"}}));
    let key = fresh_key("push");
    let started = Instant::now();
    start(
        a.as_ref(),
        &key,
        json!({"builder": "succeed", "properties": {"greeting": "push"}}),
    )
    .await;
    let mut saw_start = false;
    loop {
        assert!(
            started.elapsed() < DEADLINE,
            "no finished-build push for {key}"
        );
        let (headers, body) = tokio::time::timeout(DEADLINE, accept_post(&listener))
            .await
            .expect("a status push");
        let request = WebhookRequest {
            headers: &headers,
            body: &body,
        };
        let keys = a.completion_webhook(&request).expect("a valid push");
        if !keys.contains(&key) {
            continue;
        }
        let build: Value = serde_json::from_slice(&body).unwrap();
        if build["complete"] != true {
            saw_start = true;
            continue;
        }
        eprintln!("start → finished-build push in {:?}", started.elapsed());
        assert!(saw_start, "the build's start is pushed too");
        assert_eq!(build["results"], 0);
        // The same body with a wrong token is refused; garbage never panics.
        let wrong = vec![("authorization".to_owned(), "Bearer nope".to_owned())];
        let e = a
            .completion_webhook(&WebhookRequest {
                headers: &wrong,
                body: &body,
            })
            .unwrap_err();
        assert!(matches!(e, AdapterError::Auth(_)), "{e:?}");
        let e = a
            .completion_webhook(&WebhookRequest {
                headers: &headers,
                body: b"{not json",
            })
            .unwrap_err();
        assert!(matches!(e, AdapterError::Invalid(_)), "{e:?}");
        break;
    }
}

fn reqwest_port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or(8010)
}

/// Accepts one HTTP POST and answers 200; returns its lowercase headers and its body.
async fn accept_post(listener: &tokio::net::TcpListener) -> (Vec<(String, String)>, Vec<u8>) {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the push closed early");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    socket
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    (headers, buf[head_end..].to_vec())
}

/// The second master `scripts/buildbot.sh` starts: the same builders behind a login
/// (`BATON_BUILDBOT_AUTH_URL`, or the main URL's port + 1).
fn auth_url() -> String {
    std::env::var("BATON_BUILDBOT_AUTH_URL").unwrap_or_else(|_| {
        let url = buildbot_url();
        let port = reqwest_port(&url);
        format!("http://127.0.0.1:{}", port + 1)
    })
}

fn auth_adapter(user: Option<(&str, &str)>) -> Arc<dyn Adapter> {
    struct Password(String);
    impl SecretResolver for Password {
        fn resolve(&self, _: &SecretRef) -> Result<Secret, SecretError> {
            Ok(Secret::new(self.0.clone()))
        }
    }
    let mut config = json!({"url": auth_url(), "poll_initial": "200ms", "poll_max": "1s"});
    let mut password = String::new();
    if let Some((name, secret)) = user {
        config["user"] = json!(name);
        config["password"] = json!({"env": "PASSWORD"});
        password = secret.to_owned();
    }
    BuildbotKind
        .build("secure", &config, &Password(password))
        .expect("adapter")
}

/// A master with `www.auth` and `authz`: anonymous control calls are refused with what to
/// do, the right user logs in through /auth/login and its session cookie carries the
/// force and the cancel, a wrong password and a user without the role are named.
#[tokio::test]
async fn a_master_behind_a_login() {
    let input = json!({"builder": "queued", "properties": {"greeting": "secure"}});
    let url = auth_url();
    let e = auth_adapter(None)
        .start(&StartRequest {
            key: fresh_key("anon"),
            workflow: "w".into(),
            input: input.clone(),
            timeout: DEADLINE,
        })
        .await
        .expect_err(&format!(
            "the master at {url} (BATON_BUILDBOT_AUTH_URL) must refuse anonymous forces: run `scripts/buildbot.sh`"
        ));
    assert!(
        matches!(&e, AdapterError::Auth(m) if m.contains("log in: set `user` and `password` in [adapters.secure]") && m.contains("role 'admins'")),
        "{e:?}"
    );

    let a = auth_adapter(Some(("baton", "baton-secret")));
    let key = fresh_key("login");
    let external = start(a.as_ref(), &key, input.clone()).await;
    let first = a
        .poll(&PollRequest {
            key: &key,
            external: &external,
            signal: None,
        })
        .await
        .unwrap();
    assert_eq!(first.state, ExternalState::Queued);
    a.cancel(&key, &external).await.unwrap();
    let (_, outcome) = poll_until_terminal(a.as_ref(), &key, external, None, DEADLINE).await;
    assert_eq!(outcome.state, ExternalState::Cancelled);

    let e = auth_adapter(Some(("baton", "wrong")))
        .start(&StartRequest {
            key: fresh_key("wrong"),
            workflow: "w".into(),
            input: input.clone(),
            timeout: DEADLINE,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AdapterError::Auth(m) if m.contains("rejected the login of user `baton`")),
        "{e:?}"
    );
    let e = auth_adapter(Some(("viewer", "viewer-secret")))
        .start(&StartRequest {
            key: fresh_key("viewer"),
            workflow: "w".into(),
            input,
            timeout: DEADLINE,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AdapterError::Auth(m) if m.contains("for user `viewer`") && m.contains("authz")),
        "{e:?}"
    );
}
