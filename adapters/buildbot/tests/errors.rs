//! What a real Buildbot will not readily produce, played by a mock server: JSON-RPC errors,
//! rate limits, 5xx, garbage, refused and expired sessions, timeouts, a force whose answer
//! was lost, RETRY and merged requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_adapter_buildbot::BuildbotKind;
use baton_core::adapter::WebhookRequest;
use baton_core::secret::{SecretError, SecretResolver};
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, ExternalState, PollRequest,
    Secret, SecretRef, StartRequest,
};
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Secrets;

impl SecretResolver for Secrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError> {
        match reference {
            SecretRef::Env(name) if name == "BB_PASSWORD" => Ok(Secret::new("s3cret")),
            SecretRef::Env(name) if name == "BB_HOOK" => Ok(Secret::new("hook-token")),
            SecretRef::Env(name) => Err(SecretError::MissingEnv(name.clone())),
            SecretRef::File(path) => Err(SecretError::File {
                path: path.clone(),
                reason: "not in tests".into(),
            }),
        }
    }
}

fn adapter(server: &MockServer, extra: Value) -> Arc<dyn Adapter> {
    let mut config = json!({"url": server.uri(), "poll_initial": "100ms", "poll_max": "1s"});
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    BuildbotKind
        .build("ci", &config, &Secrets)
        .expect("adapter")
}

fn key() -> AttemptKey {
    AttemptKey::new("run1", "build", 1)
}

fn request(input: Value) -> StartRequest {
    StartRequest {
        key: key(),
        workflow: "wf".into(),
        input,
        timeout: Duration::from_secs(60),
    }
}

/// The builder `b` (id 1) and the scheduler `force` that builds it.
async fn discovery(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/api/v2/builders"))
        .and(query_param("name", "b"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"builders": [{"builderid": 1, "name": "b"}]})),
        )
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/forceschedulers/force"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"forceschedulers": [{
                "name": "force",
                "builder_names": ["b"],
                "all_fields": [{"type": "nested", "fields": [
                    {"fullName": "reason", "type": "text"},
                    {"fullName": "greeting", "type": "text"},
                    {"fullName": "baton_attempt", "type": "text"}]}]
            }]})),
        )
        .mount(server)
        .await;
}

fn forced() -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(json!({"jsonrpc": "2.0", "id": 1, "result": [5, {"1": 9}]}))
}

async fn count(server: &MockServer, verb: &str, at: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == verb && r.url.path() == at)
        .count()
}

#[tokio::test]
async fn a_json_rpc_error_is_a_clear_stage_error_and_is_not_retried() {
    let server = MockServer::start().await;
    discovery(&server).await;
    Mock::given(method("POST"))
        .and(path("/api/v2/forceschedulers/force"))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({
            "jsonrpc": "2.0", "id": 1,
            "error": {"code": -32603, "message": "KeyError('builderNames not specified or not supported')"}
        })))
        .mount(&server)
        .await;
    let a = adapter(&server, json!({}));
    let e = a
        .start(&request(json!({"builder": "b"})))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        AdapterError::Invalid(
            "Buildbot refused to force builder `b` through scheduler `force` (HTTP 500): KeyError('builderNames not specified or not supported') (JSON-RPC error -32603)".into()
        )
    );
    assert_eq!(
        count(&server, "POST", "/api/v2/forceschedulers/force").await,
        1
    );
}

#[tokio::test]
async fn the_force_carries_the_attempt_key_the_builder_and_the_properties() {
    let server = MockServer::start().await;
    discovery(&server).await;
    Mock::given(method("POST"))
        .and(path("/api/v2/forceschedulers/force"))
        .and(header("content-type", "application/json"))
        .and(body_partial_json(json!({
            "jsonrpc": "2.0",
            "method": "force",
            "params": {
                "builderNames": ["b"],
                "reason": "[baton run1/build/1] wf",
                "baton_attempt": "run1/build/1",
                "greeting": "7"
            }
        })))
        .respond_with(forced())
        .expect(1)
        .mount(&server)
        .await;
    let a = adapter(&server, json!({}));
    let external = a
        .start(&request(
            json!({"builder": "b", "properties": {"greeting": 7}}),
        ))
        .await
        .unwrap();
    assert_eq!(external.id, "9");
    assert_eq!(
        external.data,
        json!({"builder": "b", "builderid": 1, "buildset": 5, "buildrequest": 9, "polls": 0})
    );
    assert_eq!(
        external.url.as_deref(),
        Some(format!("{}/#/buildrequests/9", server.uri()).as_str())
    );
}

#[tokio::test]
async fn rate_limits_are_waited_out() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v2/builders"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    discovery(&server).await;
    Mock::given(method("POST"))
        .and(path("/api/v2/forceschedulers/force"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "0"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v2/forceschedulers/force"))
        .respond_with(forced())
        .mount(&server)
        .await;
    let a = adapter(&server, json!({}));
    let begun = Instant::now();
    let external = a.start(&request(json!({"builder": "b"}))).await.unwrap();
    assert_eq!(external.id, "9");
    assert!(
        begun.elapsed() >= Duration::from_secs(2),
        "Retry-After was honoured"
    );
    assert_eq!(count(&server, "GET", "/api/v2/builders").await, 3);
    // A 429 means the force was not done: sent again without looking for it.
    assert_eq!(
        count(&server, "POST", "/api/v2/forceschedulers/force").await,
        2
    );
    assert_eq!(count(&server, "GET", "/api/v2/buildsets").await, 0);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_transient() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream down"))
        .mount(&server)
        .await;
    let a = adapter(&server, json!({}));
    let begun = Instant::now();
    let e = a
        .start(&request(json!({"builder": "b"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AdapterError::Transient(m) if m.contains("HTTP 503") && m.contains("upstream down")),
        "{e:?}"
    );
    assert_eq!(
        count(&server, "GET", "/api/v2/builders").await,
        4,
        "one try and three retries"
    );
    // Backoff 250 ms, 500 ms, 1 s, each less up to half by jitter.
    let took = begun.elapsed();
    assert!(
        took >= Duration::from_millis(875) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_force_whose_answer_was_lost_is_looked_for_before_it_is_sent_again() {
    let server = MockServer::start().await;
    discovery(&server).await;
    Mock::given(method("POST"))
        .and(path("/api/v2/forceschedulers/force"))
        .respond_with(ResponseTemplate::new(502).set_body_string("bad gateway"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/buildsets"))
        .and(query_param("reason__contains", "[baton run1/build/1]"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"buildsets": [
                {"bsid": 5, "reason": "A build was forced by '': [baton run1/build/1] wf"}
            ]})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/buildrequests"))
        .and(query_param("buildsetid", "5"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"buildrequests": [
            {"buildrequestid": 9, "buildsetid": 5, "builderid": 1, "claimed": false, "complete": false, "results": -1}
        ]})))
        .mount(&server)
        .await;
    let a = adapter(&server, json!({}));
    let external = a.start(&request(json!({"builder": "b"}))).await.unwrap();
    assert_eq!(external.id, "9", "the request the lost answer named");
    assert_eq!(
        count(&server, "POST", "/api/v2/forceschedulers/force").await,
        1,
        "never forced twice"
    );
}

#[tokio::test]
async fn garbage_answers_are_protocol_errors() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v2/builders"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>proxy login</html>"))
        .mount(&server)
        .await;
    // No build yet, so the poll goes on to the request, whose answer is garbage.
    Mock::given(method("GET"))
        .and(path("/api/v2/builds"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"builds": []})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/buildrequests/9"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"weird": true})))
        .mount(&server)
        .await;
    let a = adapter(&server, json!({}));
    let e = a
        .start(&request(json!({"builder": "b"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AdapterError::Protocol(m) if m.contains("not JSON") && m.contains("proxy login")),
        "{e:?}"
    );
    let external = ExternalRef {
        id: "9".into(),
        url: None,
        data: json!({"builder": "b", "builderid": 1, "buildset": 5, "buildrequest": 9}),
    };
    let e = a
        .poll(&PollRequest {
            key: &key(),
            external: &external,
            signal: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AdapterError::Protocol(m) if m.contains("buildrequests")),
        "{e:?}"
    );
}

#[tokio::test]
async fn forbidden_without_a_login_says_to_log_in() {
    let server = MockServer::start().await;
    discovery(&server).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(403).set_body_json(
            json!({"error": {"code": -32600, "message": "you need to have role 'admins'"}}),
        ))
        .mount(&server)
        .await;
    let e = adapter(&server, json!({}))
        .start(&request(json!({"builder": "b"})))
        .await
        .unwrap_err();
    let AdapterError::Auth(message) = &e else {
        panic!("{e:?}")
    };
    assert!(
        message.contains("log in: set `user` and `password` in [adapters.ci]")
            && message.contains("role 'admins'"),
        "{message}"
    );
}

/// A master whose login sets the cookie `TWISTED_SESSION=<cookie>` and that refuses control
/// calls without it (as `authz` rules do).
async fn session(server: &MockServer, cookie: &str) {
    server.reset().await;
    discovery(server).await;
    Mock::given(method("GET"))
        .and(path("/auth/login"))
        .and(header("authorization", "Basic Z3c6czNjcmV0"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", "/")
                .insert_header("set-cookie", format!("TWISTED_SESSION={cookie}; Path=/")),
        )
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v2/forceschedulers/force"))
        .and(header(
            "cookie",
            format!("TWISTED_SESSION={cookie}").as_str(),
        ))
        .respond_with(forced())
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(403).set_body_json(
            json!({"error": {"code": -32600, "message": "you need to have role 'admins'"}}),
        ))
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_session_is_opened_reused_and_renewed() {
    let server = MockServer::start().await;
    discovery(&server).await;
    session(&server, "first").await;
    let a = adapter(
        &server,
        json!({"user": "gw", "password": {"env": "BB_PASSWORD"}}),
    );
    for _ in 0..2 {
        a.start(&request(json!({"builder": "b"}))).await.unwrap();
    }
    assert_eq!(
        count(&server, "GET", "/auth/login").await,
        1,
        "logged in once, the cookie reused"
    );
    // The master forgot the session (it expired, or the master restarted).
    session(&server, "second").await;
    a.start(&request(json!({"builder": "b"}))).await.unwrap();
    assert_eq!(
        count(&server, "GET", "/auth/login").await,
        1,
        "renewed once"
    );
    assert_eq!(
        count(&server, "POST", "/api/v2/forceschedulers/force").await,
        2,
        "refused with the old cookie, then forced with the new one"
    );
}

#[tokio::test]
async fn a_wrong_password_says_so_and_a_user_without_the_role_is_named() {
    let server = MockServer::start().await;
    discovery(&server).await;
    Mock::given(method("GET"))
        .and(path("/auth/login"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    let a = adapter(
        &server,
        json!({"user": "gw", "password": {"env": "BB_PASSWORD"}}),
    );
    let e = a
        .start(&request(json!({"builder": "b"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AdapterError::Auth(m) if m.contains("rejected the login of user `gw`") && m.contains("check `user` and `password`")),
        "{e:?}"
    );

    server.reset().await;
    discovery(&server).await;
    Mock::given(method("GET"))
        .and(path("/auth/login"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(403).set_body_json(
            json!({"error": {"code": -32600, "message": "you need to have role 'admins'"}}),
        ))
        .mount(&server)
        .await;
    let e = a
        .start(&request(json!({"builder": "b"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AdapterError::Auth(m) if m.contains("for user `gw`") && m.contains("authz")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_wrong_url_is_not_found_and_says_what_to_check() {
    let server = MockServer::start().await;
    let e = adapter(&server, json!({}))
        .start(&request(json!({"builder": "b"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AdapterError::NotFound(m) if m.contains("HTTP 404") && m.contains("check `url` in [adapters.ci]")),
        "{e:?}"
    );
    // Nothing listening at all: transient, and the message asks whether it runs.
    let dead = BuildbotKind
        .build(
            "ci",
            &json!({"url": "http://127.0.0.1:9", "request_timeout": "1s"}),
            &Secrets,
        )
        .unwrap();
    let e = dead
        .start(&request(json!({"builder": "b"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AdapterError::Transient(m) if m.contains("is it running")),
        "{e:?}"
    );
}

#[tokio::test]
async fn requests_time_out() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"builders": []}))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&server)
        .await;
    let a = adapter(&server, json!({"request_timeout": "200ms"}));
    let begun = Instant::now();
    let e = a
        .start(&request(json!({"builder": "b"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AdapterError::Transient(m) if m.contains("did not answer in time") && m.contains("request_timeout")),
        "{e:?}"
    );
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "{:?}",
        begun.elapsed()
    );
}

fn reference(brid: u64, build: Option<u64>) -> ExternalRef {
    let mut data = json!({"builder": "b", "builderid": 1, "buildset": 5, "buildrequest": brid});
    if let Some(b) = build {
        data["build"] = json!(b);
        data["number"] = json!(1);
    }
    ExternalRef {
        id: brid.to_string(),
        url: None,
        data,
    }
}

/// Answers `GET /api/v2/buildrequests/<brid>` with a request of builder 1 in the given state.
async fn build_request(
    server: &MockServer,
    brid: u64,
    claimed: bool,
    complete: bool,
    results: i64,
) {
    Mock::given(method("GET"))
        .and(path(format!("/api/v2/buildrequests/{brid}")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"buildrequests": [{
                "buildrequestid": brid, "buildsetid": 5, "builderid": 1,
                "claimed": claimed, "complete": complete, "results": results
            }]})),
        )
        .mount(server)
        .await;
}

async fn poll(a: &dyn Adapter, external: &ExternalRef) -> baton_core::PollOutcome {
    a.poll(&PollRequest {
        key: &key(),
        external,
        signal: None,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn retry_waits_for_the_next_build_and_unknown_codes_are_not_terminal() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v2/builds/1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"builds": [
            {"buildid": 1, "number": 1, "builderid": 1, "complete": true, "results": 5, "state_string": "retry"}
        ]})))
        .mount(&server)
        .await;
    build_request(&server, 9, false, false, -1).await;
    Mock::given(method("GET"))
        .and(path("/api/v2/builds"))
        .and(query_param("buildrequestid", "9"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"builds": [
            {"buildid": 1, "number": 1, "builderid": 1, "complete": true, "results": 5}
        ]})))
        .mount(&server)
        .await;
    let a = adapter(&server, json!({}));
    let outcome = poll(a.as_ref(), &reference(9, Some(1))).await;
    assert_eq!(outcome.state, ExternalState::Queued);
    assert_eq!(outcome.raw.as_deref(), Some("RETRY"));
    assert!(outcome.next_poll.is_some());

    // The retried build then runs, and ends with a code this adapter does not know.
    server.reset().await;
    Mock::given(method("GET"))
        .and(path("/api/v2/builds/2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"builds": [
            {"buildid": 2, "number": 2, "builderid": 1, "complete": true, "results": 11}
        ]})))
        .mount(&server)
        .await;
    let mut later = reference(9, Some(2));
    later.data["number"] = json!(2);
    let outcome = poll(a.as_ref(), &later).await;
    assert_eq!(outcome.state, ExternalState::Unknown("results 11".into()));
    assert!(!outcome.state.is_terminal());
    assert!(outcome.next_poll.is_some());
}

#[tokio::test]
async fn a_merged_request_is_skipped_with_the_fix_named() {
    let server = MockServer::start().await;
    build_request(&server, 9, true, true, 3).await;
    Mock::given(method("GET"))
        .and(path("/api/v2/builds"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"builds": []})))
        .mount(&server)
        .await;
    let a = adapter(&server, json!({}));
    let outcome = poll(a.as_ref(), &reference(9, None)).await;
    assert_eq!(outcome.state, ExternalState::Skipped);
    assert!(
        outcome
            .message
            .unwrap()
            .contains("set collapseRequests=False on builder `b`")
    );
    let out = a.outputs(&key(), &reference(9, None)).await.unwrap();
    assert_eq!(out["results"], "SKIPPED");
    assert_eq!(out["build_id"], Value::Null);
}

#[tokio::test]
async fn polls_back_off_to_the_cap_through_the_stored_count() {
    let server = MockServer::start().await;
    build_request(&server, 9, false, false, -1).await;
    Mock::given(method("GET"))
        .and(path("/api/v2/builds"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"builds": []})))
        .mount(&server)
        .await;
    let a = adapter(&server, json!({"poll_initial": "1s", "poll_max": "10s"}));
    let mut external = reference(9, None);
    let mut hints = Vec::new();
    for _ in 0..10 {
        let outcome = poll(a.as_ref(), &external).await;
        assert_eq!(outcome.state, ExternalState::Queued);
        hints.push(outcome.next_poll.unwrap());
        external = outcome.external.unwrap();
    }
    assert_eq!(external.data["polls"], 10);
    assert!(hints[0] <= Duration::from_secs(1), "{hints:?}");
    assert!(hints[3] > Duration::from_secs(2), "{hints:?}");
    assert!(
        hints[9] <= Duration::from_secs(10) && hints[9] >= Duration::from_secs(8),
        "{hints:?}"
    );
}

#[tokio::test]
async fn status_push_bodies_never_panic_and_the_token_is_checked() {
    let server = MockServer::start().await;
    let a = adapter(&server, json!({"webhook_token": {"env": "BB_HOOK"}}));
    let good = vec![("authorization".to_owned(), "Bearer hook-token".to_owned())];
    let body = json!({"buildid": 3, "complete": true,
        "properties": {"baton_attempt": ["r/s/1", "Force Build Form"]}})
    .to_string();
    let keys = a
        .completion_webhook(&WebhookRequest {
            headers: &good,
            body: body.as_bytes(),
        })
        .unwrap();
    assert_eq!(keys, vec![AttemptKey::new("r", "s", 1)]);
    for headers in [
        vec![],
        vec![("authorization".to_owned(), "Bearer no".to_owned())],
    ] {
        let e = a
            .completion_webhook(&WebhookRequest {
                headers: &headers,
                body: body.as_bytes(),
            })
            .unwrap_err();
        assert!(matches!(e, AdapterError::Auth(_)), "{e:?}");
    }
    let mut seed = 7u64;
    for n in 0..300 {
        let len = n % 64;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                (seed >> 56) as u8
            })
            .collect();
        let _ = a.completion_webhook(&WebhookRequest {
            headers: &good,
            body: &bytes,
        });
    }
    for body in [
        "null",
        "[]",
        "[1,2]",
        "{\"properties\": null}",
        "{\"properties\": {\"baton_attempt\": [7]}}",
        "{\"buildset\": {\"reason\": \"[baton \"}}",
    ] {
        assert_eq!(
            a.completion_webhook(&WebhookRequest {
                headers: &good,
                body: body.as_bytes(),
            })
            .unwrap(),
            vec![],
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_build_that_ends_between_two_reads_is_still_found_and_outputs_reuse_the_last_poll() {
    let server = MockServer::start().await;
    // First read of the request's builds: none yet. By the time the request is read it is
    // complete, because its build started and ended in between; the second read finds it.
    Mock::given(method("GET"))
        .and(path("/api/v2/builds"))
        .and(query_param("buildrequestid", "9"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"builds": []})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/builds"))
        .and(query_param("buildrequestid", "9"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"builds": [
            {"buildid": 4, "number": 2, "builderid": 1, "complete": true, "results": 0, "state_string": "build successful"}
        ]})))
        .mount(&server)
        .await;
    build_request(&server, 9, true, true, 0).await;
    Mock::given(method("GET"))
        .and(path("/api/v2/builds/4/properties"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"properties": [
                {"version": ["1.2.3", "SetProperty"]}
            ]})),
        )
        .mount(&server)
        .await;
    let a = adapter(&server, json!({}));
    let outcome = poll(a.as_ref(), &reference(9, None)).await;
    assert_eq!(
        outcome.state,
        ExternalState::Succeeded { warnings: false },
        "{outcome:?}"
    );
    assert_eq!(outcome.raw.as_deref(), Some("SUCCESS"));
    let message = outcome.message.unwrap();
    assert!(
        message.starts_with("build #2 of `b` ended SUCCESS"),
        "{message}"
    );

    // The outputs come from what that poll saw, and the properties: no build is read again.
    let latest = outcome.external.expect("the reference with the build");
    let out = a.outputs(&key(), &latest).await.unwrap();
    assert_eq!(out["build_id"], 4);
    assert_eq!(out["number"], 2);
    assert_eq!(out["results"], "SUCCESS");
    assert_eq!(out["state_string"], "build successful");
    assert_eq!(out["properties"]["version"], "1.2.3");
    assert_eq!(count(&server, "GET", "/api/v2/builds/4").await, 0);
    assert_eq!(count(&server, "GET", "/api/v2/builds").await, 2);
    assert_eq!(count(&server, "GET", "/api/v2/buildrequests/9").await, 1);
}

#[tokio::test]
async fn a_running_build_is_found_with_one_request() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v2/builds"))
        .and(query_param("buildrequestid", "9"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"builds": [
            {"buildid": 4, "number": 2, "builderid": 1, "complete": false, "state_string": "building"}
        ]})))
        .mount(&server)
        .await;
    let a = adapter(&server, json!({}));
    let outcome = poll(a.as_ref(), &reference(9, None)).await;
    assert_eq!(outcome.state, ExternalState::Running);
    assert_eq!(outcome.external.unwrap().data["build"], 4);
    let received = server.received_requests().await.unwrap_or_default();
    assert_eq!(received.len(), 1, "{received:?}");
}
