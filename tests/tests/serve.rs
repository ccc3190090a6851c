//! `baton serve` end to end: signed deliveries start workflows, the REST API with roles,
//! and durability of intake under SIGKILL.

use std::time::Duration;

use baton_tests::{ALL_ROLES_GATEWAY, Sandbox, Server, sign_sha256};
use serde_json::Value;

const VIEWER: &str = "view-token-1";
const OPERATOR: &str = "oper-token-2";
const APPROVER: &str = "appr-token-3";

fn gateway(sb: &Sandbox) -> String {
    sb.write(
        "baton.toml",
        &[
            ALL_ROLES_GATEWAY,
            r#"
[sources.github]
kind = "github"
secret = { env = "GH_SECRET_NEW" }
secrets = [{ env = "GH_SECRET_OLD" }]

[sources.gitlab]
kind = "gitlab"
token = { env = "GL_TOKEN" }

[sources.deploy]
kind = "generic"
bearer = { token = { env = "DEPLOY_TOKEN" } }
event = { expr = ".type" }
"#,
        ]
        .concat(),
    );
    sb.write(
        "workflows/main.yaml",
        r#"
name: on-main
on:
  - source: github
    event: push
    if: '.ref == "refs/heads/main"'
  - source: gitlab
    event: Push Hook
stages:
  build:
    uses: exec
    with:
      run: 'echo "$REF" >> "builds"; echo "[COUT] ref = $REF"'
      env: { REF: '${{ .event.ref }}' }
"#,
    );
    sb.write(
        "workflows/gated.yaml",
        r#"
name: gated
on: [{ source: manual }, { source: deploy, event: release }]
stages:
  ok:
    uses: approval
    timeout: 1m
    with: { message: 'ship ${{ .event.version }}?' }
  after:
    needs: [ok]
    uses: exec
    with: { run: 'echo shipped' }
"#,
    );
    sb.path().join("baton.toml").display().to_string()
}

const ENV: &[(&str, &str)] = &[
    ("T_VIEWER", VIEWER),
    ("T_OPERATOR", OPERATOR),
    ("T_APPROVER", APPROVER),
    ("GH_SECRET_NEW", "new-secret"),
    ("GH_SECRET_OLD", "old-secret"),
    ("GL_TOKEN", "gitlab-token"),
    ("DEPLOY_TOKEN", "deploy-token"),
];

fn runs_of(server: &Server, workflow: &str) -> Vec<Value> {
    server
        .get(&format!("/api/v1/runs?workflow={workflow}"), VIEWER)
        .json()["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn wait_run_finished(server: &Server, id: &str) -> Value {
    server.wait_for(
        &format!("/api/v1/runs/{id}"),
        VIEWER,
        "the run to finish",
        |r| {
            matches!(
                r["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        },
    )
}

#[test]
fn signed_deliveries_start_matching_workflows_once() {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let server = sb.serve(&config, ENV);
    let push = r#"{"ref": "refs/heads/main", "after": "abc"}"#;

    let first = server.github("github", "new-secret", "push", "d-1", push);
    assert_eq!(first.status, 202, "{first:?}");
    let delivery = first.json()["delivery"].as_i64().unwrap();
    let stored = server.wait_for(
        &format!("/api/v1/deliveries/{delivery}"),
        VIEWER,
        "processing",
        |d| d["status"] == "processed",
    );
    let run_id = stored["runs"][0]
        .as_str()
        .expect("a run was started")
        .to_owned();
    let run = wait_run_finished(&server, &run_id);
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["trigger"]["delivery_id"], "d-1");
    assert_eq!(run["stages"][0]["outputs"]["ref"], "refs/heads/main");
    assert!(
        stored["headers"].get("x-hub-signature-256").is_none(),
        "signatures are not stored"
    );
    // The request id the answer carried is kept with the delivery, to find its log lines.
    let request_id = first
        .header("x-request-id")
        .expect("the answer carries its id");
    assert_eq!(
        stored["headers"]["x-request-id"].as_str(),
        Some(request_id),
        "{stored}"
    );

    // The same delivery again: 200, not processed again.
    let again = server.github("github", "new-secret", "push", "d-1", push);
    assert_eq!(
        (again.status, again.json()["status"].as_str()),
        (200, Some("duplicate"))
    );
    // The old secret still works while it is being rotated out.
    assert_eq!(
        server
            .github("github", "old-secret", "push", "d-2", push)
            .status,
        202
    );
    // The `if` filters: a push to another branch is stored but starts nothing.
    let dev = server.github(
        "github",
        "new-secret",
        "push",
        "d-3",
        r#"{"ref": "refs/heads/dev"}"#,
    );
    let dev_id = dev.json()["delivery"].as_i64().unwrap();
    let dev = server.wait_for(
        &format!("/api/v1/deliveries/{dev_id}"),
        VIEWER,
        "processing",
        |d| d["status"] == "processed",
    );
    assert_eq!(dev["runs"], serde_json::json!([]));
    // GitLab, with its token.
    let gl = server.request(
        "POST",
        "/hooks/gitlab",
        &[
            ("x-gitlab-token", "gitlab-token"),
            ("x-gitlab-event", "Push Hook"),
            ("x-gitlab-event-uuid", "g-1"),
        ],
        Some(br#"{"ref": "refs/heads/gl"}"#),
    );
    assert_eq!(gl.status, 202, "{gl:?}");

    server.wait_for(
        "/api/v1/runs?workflow=on-main&status=succeeded",
        VIEWER,
        "three runs",
        |r| r["runs"].as_array().unwrap().len() == 3,
    );
    let builds = sb.read("builds");
    assert_eq!(
        builds.lines().filter(|l| *l == "refs/heads/main").count(),
        2,
        "d-1 and d-2, once each:\n{builds}"
    );
    assert_eq!(builds.lines().filter(|l| *l == "refs/heads/gl").count(), 1);
    assert_eq!(
        server.terminate(),
        Some(0),
        "SIGTERM stops the server cleanly"
    );
}

#[test]
fn bad_requests_are_refused_and_nothing_is_stored() {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let server = sb.serve(&config, ENV);
    let body = r#"{"ref": "refs/heads/main"}"#;
    let wrong = server.github("github", "not-the-secret", "push", "x-1", body);
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert!(
        wrong.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signature")
    );
    let unsigned = server.request(
        "POST",
        "/hooks/github",
        &[("x-github-event", "push")],
        Some(body.as_bytes()),
    );
    assert_eq!(unsigned.status, 401);
    let bad_token = server.request(
        "POST",
        "/hooks/gitlab",
        &[("x-gitlab-token", "nope"), ("x-gitlab-event", "Push Hook")],
        Some(b"{}"),
    );
    assert_eq!(bad_token.status, 401);
    // Refusals that leave the body unread say the connection closes, so that a client that
    // pools connections does not send its next request on one being closed.
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(5000));
    let too_large = server.github("github", "new-secret", "push", "x-2", &big);
    assert_eq!(too_large.status, 413, "{too_large:?}");
    assert_eq!(too_large.header("connection"), Some("close"));
    let garbage = server.github("github", "new-secret", "push", "x-3", "{not json");
    assert_eq!(garbage.status, 400);
    assert!(
        garbage.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not JSON"),
        "{garbage:?}"
    );
    let unknown = server.github("nowhere", "new-secret", "push", "x-4", body);
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(unknown.header("connection"), Some("close"));
    let no_route = server.request("POST", "/nowhere", &[], Some(body.as_bytes()));
    assert_eq!(no_route.status, 404, "{no_route:?}");
    assert_eq!(no_route.header("connection"), Some("close"));
    let ping = server.github(
        "github",
        "new-secret",
        "ping",
        "x-5",
        r#"{"zen": "Keep it logically awesome."}"#,
    );
    assert_eq!(ping.status, 200, "{ping:?}");
    let deliveries = server.get("/api/v1/deliveries", VIEWER).json();
    assert_eq!(
        deliveries["deliveries"],
        serde_json::json!([]),
        "nothing refused was stored"
    );
    let metrics = server.request("GET", "/metrics", &[], None).body;
    assert!(
        metrics.contains("baton_deliveries_total") && metrics.contains("unauthenticated"),
        "{metrics}"
    );
    // The server is still fine.
    assert_eq!(server.request("GET", "/healthz", &[], None).status, 200);
    assert_eq!(server.request("GET", "/readyz", &[], None).status, 200);
}

#[test]
fn json_logs_carry_each_request_id_and_answers_return_it() {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let env = [ENV, &[("BATON_LOG", "info")]].concat();
    let server = sb.serve_with(
        &[
            "-c",
            &config,
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        &env,
    );
    // A refused delivery is logged inside its request's span; its id is made up here.
    let refused = server.github("github", "not-the-secret", "push", "j-1", "{}");
    assert_eq!(refused.status, 401, "{refused:?}");
    let made_up = refused.header("x-request-id").expect("an id").to_owned();
    // A caller's own id is kept and returned.
    let mine = server.request(
        "POST",
        "/hooks/github",
        &[("x-github-event", "push"), ("x-request-id", "caller-42")],
        Some(b"{}"),
    );
    assert_eq!(mine.status, 401);
    assert_eq!(mine.header("x-request-id"), Some("caller-42"));
    let second = server.request("GET", "/healthz", &[], None);
    let next = second.header("x-request-id").expect("an id");
    assert_ne!(next, made_up, "each request gets its own id");

    let mut refusals = Vec::new();
    baton_tests::eventually(Duration::from_secs(10), "two refusals logged", || {
        refusals = server
            .log()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .filter(|v| v["fields"]["message"] == "webhook refused")
            .collect();
        refusals.len() == 2
    });
    for (line, id) in refusals.iter().zip([made_up.as_str(), "caller-42"]) {
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["span"]["name"], "request", "{line}");
        assert_eq!(line["span"]["request_id"], id, "{line}");
        assert_eq!(line["span"]["path"], "/hooks/github", "{line}");
    }
    // Text lines are only the start-up line scripts read for the port.
    let log = server.log();
    let text: Vec<&str> = log.lines().filter(|l| !l.starts_with('{')).collect();
    assert!(
        text.iter()
            .all(|l| l.starts_with("baton serve: listening on")),
        "{text:?}"
    );
}

#[test]
fn text_logs_to_a_pipe_are_plain_text() {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    // An empty NO_COLOR asks for nothing: only the pipe should turn the colours off.
    let env = [ENV, &[("NO_COLOR", "")]].concat();
    let server = sb.serve(&config, &env);
    let refused = server.github("github", "not-the-secret", "push", "p-1", "{}");
    assert_eq!(refused.status, 401, "{refused:?}");
    let id = refused.header("x-request-id").expect("an id").to_owned();
    let mut line = String::new();
    baton_tests::eventually(Duration::from_secs(10), "the refusal logged", || {
        line = server
            .log()
            .lines()
            .find(|l| l.contains("webhook refused"))
            .unwrap_or_default()
            .to_owned();
        !line.is_empty()
    });
    assert!(!line.contains('\u{1b}'), "escape codes in {line:?}");
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains(&format!("request_id={id}")), "{line}");
}

#[test]
fn every_api_call_checks_the_token_and_its_role() {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let server = sb.serve(&config, ENV);
    let delivery = server
        .github(
            "github",
            "new-secret",
            "push",
            "a-1",
            r#"{"ref": "refs/heads/main"}"#,
        )
        .json()["delivery"]
        .as_i64()
        .unwrap();
    let processed = server.wait_for(
        &format!("/api/v1/deliveries/{delivery}"),
        VIEWER,
        "processing",
        |d| d["status"] == "processed",
    );
    let run = processed["runs"][0].as_str().unwrap().to_owned();
    wait_run_finished(&server, &run);

    // (method, path, lowest role that may call it)
    let calls: Vec<(&str, String, &str)> = vec![
        ("GET", "/api/v1/runs".into(), "viewer"),
        ("GET", format!("/api/v1/runs/{run}"), "viewer"),
        ("GET", "/api/v1/deliveries".into(), "viewer"),
        ("GET", format!("/api/v1/deliveries/{delivery}"), "viewer"),
        ("POST", "/api/v1/workflows/gated/runs".into(), "operator"),
        ("POST", format!("/api/v1/runs/{run}/cancel"), "operator"),
        (
            "POST",
            format!("/api/v1/runs/{run}/stages/build/retry"),
            "operator",
        ),
        (
            "POST",
            format!("/api/v1/deliveries/{delivery}/replay"),
            "operator",
        ),
        (
            "POST",
            format!("/api/v1/runs/{run}/stages/build/approve"),
            "approver",
        ),
        (
            "POST",
            format!("/api/v1/runs/{run}/stages/build/reject"),
            "approver",
        ),
    ];
    let rank = |r: &str| {
        ["viewer", "operator", "approver"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    for (method, path, needed) in &calls {
        let none = server.request(method, path, &[], None);
        assert_eq!(none.status, 401, "{method} {path} without a token");
        let unknown = server.request(
            method,
            path,
            &[("authorization", "Bearer not-a-token")],
            None,
        );
        assert_eq!(unknown.status, 401, "{method} {path} with an unknown token");
        for (role, token) in [
            ("viewer", VIEWER),
            ("operator", OPERATOR),
            ("approver", APPROVER),
        ] {
            let auth = format!("Bearer {token}");
            let reply = server.request(method, path, &[("authorization", &auth)], None);
            if rank(role) < rank(needed) {
                assert_eq!(reply.status, 403, "{method} {path} as {role}: {reply:?}");
                assert!(
                    reply.json()["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains(needed)
                );
            } else {
                // Allowed: whatever the answer, it is not an auth refusal (a finished run
                // cannot be cancelled: 409; a succeeded stage cannot be retried: 409).
                assert!(
                    ![401, 403].contains(&reply.status),
                    "{method} {path} as {role}: {reply:?}"
                );
            }
        }
    }
    let openapi = server
        .request("GET", "/api/v1/openapi.json", &[], None)
        .json();
    for (_, path, _) in &calls {
        let template = path
            .replace(&run, "{id}")
            .replace(&format!("/{delivery}"), "/{id}")
            .replace("/build/", "/{stage}/")
            .replace("/gated/", "/{name}/");
        assert!(
            openapi["paths"].get(&template).is_some(),
            "{template} is documented"
        );
    }
}

#[test]
fn replay_and_approvals_through_the_api() {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let server = sb.serve(&config, ENV);
    // A generic delivery with a bearer token starts the gated workflow.
    let reply = server.request(
        "POST",
        "/hooks/deploy",
        &[("authorization", "Bearer deploy-token")],
        Some(br#"{"type": "release", "version": "1.2"}"#),
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    let delivery = reply.json()["delivery"].as_i64().unwrap();
    let processed = server.wait_for(
        &format!("/api/v1/deliveries/{delivery}"),
        VIEWER,
        "processing",
        |d| d["status"] == "processed",
    );
    let run = processed["runs"][0].as_str().unwrap().to_owned();
    server.wait_for(
        &format!("/api/v1/runs/{run}"),
        VIEWER,
        "the approval to wait",
        |r| r["stages"][0]["status"] == "waiting",
    );
    assert_eq!(
        server
            .post(
                &format!("/api/v1/runs/{run}/stages/ok/approve"),
                OPERATOR,
                ""
            )
            .status,
        403
    );
    assert_eq!(
        server
            .post(
                &format!("/api/v1/runs/{run}/stages/after/approve"),
                APPROVER,
                ""
            )
            .status,
        409,
        "not an approval stage"
    );
    let approved = server.post(
        &format!("/api/v1/runs/{run}/stages/ok/approve"),
        APPROVER,
        r#"{"comment": "go"}"#,
    );
    assert_eq!(approved.status, 202, "{approved:?}");
    let done = wait_run_finished(&server, &run);
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["stages"][0]["outputs"]["by"], "anna");
    assert_eq!(done["stages"][0]["outputs"]["comment"], "go");

    // Replay: the same delivery starts the workflow again.
    assert_eq!(
        server
            .post(
                &format!("/api/v1/deliveries/{delivery}/replay"),
                OPERATOR,
                ""
            )
            .status,
        202
    );
    let replayed = server.wait_for(
        &format!("/api/v1/deliveries/{delivery}"),
        VIEWER,
        "the replay",
        |d| d["runs"].as_array().unwrap().len() == 2,
    );
    let second = replayed["runs"][1].as_str().unwrap().to_owned();
    assert_ne!(second, run);
    // Reject it this time: the stage fails, the run fails.
    server.wait_for(&format!("/api/v1/runs/{second}"), VIEWER, "waiting", |r| {
        r["stages"][0]["status"] == "waiting"
    });
    assert_eq!(
        server
            .post(
                &format!("/api/v1/runs/{second}/stages/ok/reject"),
                APPROVER,
                ""
            )
            .status,
        202
    );
    assert_eq!(wait_run_finished(&server, &second)["status"], "failed");

    // By hand, and cancelled.
    let started = server.post(
        "/api/v1/workflows/gated/runs",
        OPERATOR,
        r#"{"version": "2.0"}"#,
    );
    assert_eq!(started.status, 201, "{started:?}");
    let third = started.json()["run"].as_str().unwrap().to_owned();
    server.wait_for(&format!("/api/v1/runs/{third}"), VIEWER, "waiting", |r| {
        r["stages"][0]["status"] == "waiting"
    });
    assert_eq!(
        server
            .post(&format!("/api/v1/runs/{third}/cancel"), OPERATOR, "")
            .status,
        202
    );
    assert_eq!(wait_run_finished(&server, &third)["status"], "cancelled");
    assert_eq!(
        server
            .post("/api/v1/workflows/on-main/runs", OPERATOR, "{}")
            .status,
        409,
        "no manual trigger"
    );
    assert_eq!(
        server
            .post("/api/v1/workflows/nope/runs", OPERATOR, "{}")
            .status,
        404
    );
    assert_eq!(runs_of(&server, "gated").len(), 3);
}

/// SIGKILL the server while deliveries arrive; after a restart every delivery that got a
/// 2xx is stored exactly once and was processed.
#[test]
fn deliveries_acknowledged_before_a_sigkill_survive_it() {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let server = sb.serve(&config, ENV);
    let url = server.url.clone();
    let sender = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut acknowledged = Vec::new();
        for i in 0..5000 {
            let body = format!(r#"{{"ref": "refs/heads/dev", "n": {i}}}"#);
            let signature = sign_sha256("new-secret", body.as_bytes());
            let reply = agent
                .post(&format!("{url}/hooks/github"))
                .header("x-github-event", "push")
                .header("x-github-delivery", &format!("k-{i}"))
                .header("x-hub-signature-256", &signature)
                .send(body.as_bytes());
            match reply {
                Ok(r) if r.status().is_success() => acknowledged.push(format!("k-{i}")),
                _ => break, // the server is gone
            }
        }
        acknowledged
    });
    std::thread::sleep(Duration::from_millis(700));
    server.kill();
    let acknowledged = sender.join().unwrap();
    assert!(
        acknowledged.len() > 20,
        "only {} deliveries went through before the kill",
        acknowledged.len()
    );
    eprintln!(
        "{} deliveries acknowledged before the SIGKILL",
        acknowledged.len()
    );

    let server = sb.serve(&config, ENV);
    let mut seen = std::collections::HashMap::new();
    let mut offset = 0;
    loop {
        let page = server
            .get(
                &format!("/api/v1/deliveries?limit=1000&offset={offset}"),
                VIEWER,
            )
            .json();
        let items = page["deliveries"].as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        for d in &items {
            *seen
                .entry(d["delivery_id"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        offset += items.len();
    }
    for id in &acknowledged {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "delivery {id} got a 2xx and must be stored exactly once"
        );
    }
    server.wait_for(
        "/api/v1/deliveries?limit=1000",
        VIEWER,
        "every delivery processed",
        |d| {
            d["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["status"] == "processed")
        },
    );
}

#[test]
fn the_cli_talks_to_a_running_server() {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let server = sb.serve(&config, ENV);
    let url = server.url.clone();
    let started = server
        .post(
            "/api/v1/workflows/gated/runs",
            OPERATOR,
            r#"{"version": "3"}"#,
        )
        .json();
    let run = started["run"].as_str().unwrap().to_owned();
    server.wait_for(&format!("/api/v1/runs/{run}"), VIEWER, "waiting", |r| {
        r["stages"][0]["status"] == "waiting"
    });

    let list = sb.run(&["runs", "list", "--url", &url, "--token", VIEWER]);
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    assert!(
        list.stdout.contains(&run) && list.stdout.contains("gated"),
        "{}",
        list.stdout
    );

    let denied = sb.run(&[
        "runs", "approve", &run, "ok", "--url", &url, "--token", OPERATOR,
    ]);
    assert_eq!(denied.code, Some(1));
    assert!(
        denied.stderr.contains("403") && denied.stderr.contains("approver"),
        "{}",
        denied.stderr
    );
    let no_token = sb.run(&["runs", "list", "--url", &url]);
    assert_eq!(no_token.code, Some(1));
    assert!(
        no_token.stderr.contains("BATON_TOKEN"),
        "{}",
        no_token.stderr
    );

    let approved = sb.run(&[
        "runs",
        "approve",
        &run,
        "ok",
        "--comment",
        "lgtm",
        "--url",
        &url,
        "--token",
        APPROVER,
    ]);
    assert_eq!(approved.code, Some(0), "{}", approved.stderr);
    wait_run_finished(&server, &run);
    let show = sb.run(&[
        "runs", "show", &run, "--json", "--url", &url, "--token", VIEWER,
    ]);
    assert_eq!(show.code, Some(0));
    assert_eq!(show.json()["stages"][0]["outputs"]["comment"], "lgtm");

    let delivery = server
        .github(
            "github",
            "new-secret",
            "push",
            "c-1",
            r#"{"ref": "refs/heads/main"}"#,
        )
        .json()["delivery"]
        .as_i64()
        .unwrap();
    let id = delivery.to_string();
    let deliveries = sb.run(&["deliveries", "list", "--url", &url, "--token", VIEWER]);
    assert!(
        deliveries.stdout.contains("github") && deliveries.stdout.contains("push"),
        "{}",
        deliveries.stdout
    );
    let replay = sb.run(&[
        "deliveries",
        "replay",
        &id,
        "--url",
        &url,
        "--token",
        OPERATOR,
    ]);
    assert_eq!(replay.code, Some(0), "{}", replay.stderr);
    server.wait_for(
        &format!("/api/v1/deliveries/{id}"),
        VIEWER,
        "the replay",
        |d| d["runs"].as_array().is_some_and(|r| r.len() == 2),
    );
    let shown = sb.run(&["deliveries", "show", &id, "--url", &url, "--token", VIEWER]);
    assert!(
        shown.stdout.contains("refs/heads/main") && !shown.stdout.contains("x-hub-signature"),
        "{}",
        shown.stdout
    );
    let unreachable = sb.run(&[
        "runs",
        "list",
        "--url",
        "http://127.0.0.1:9",
        "--token",
        VIEWER,
    ]);
    assert_eq!(
        unreachable.code,
        Some(2),
        "cannot reach: {}",
        unreachable.stderr
    );
}

/// A browser tab left open on a live page holds a server-sent event stream that never ends by
/// itself; stopping the server ends it instead of waiting on it.
#[test]
fn an_open_event_stream_does_not_hold_up_shutdown() {
    use std::io::{BufRead, BufReader, Write};
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let server = sb.serve(&config, ENV);
    let signed_in = server.request(
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(format!("token={VIEWER}&next=%2Fruns").as_bytes()),
    );
    let cookie = signed_in
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie: {signed_in:?}"))
        .to_owned();
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /ui/events HTTP/1.1\r\nHost: {address}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let begun = std::time::Instant::now();
    let (code, log) = server.terminate_with_log();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "shutdown took {:?} with a stream open",
        begun.elapsed()
    );
    // The stream ended with the server.
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
}
