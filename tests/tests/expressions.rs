//! `baton serve` with jq expressions that never end or ask for all memory: each fails only
//! its own stage (or its own trigger's match), quickly; health checks and webhooks keep
//! answering meanwhile; and a SIGKILL in the middle of one, then a restart, leaves a server
//! that answers and a run whose stage failed, not a wedge.

use std::time::{Duration, Instant};

use baton_tests::{Sandbox, Server};
use serde_json::Value;

const OPERATOR: &str = "oper-token";
const SECRET: &str = "gh-secret";

fn gateway(sb: &Sandbox, expressions: &str) -> String {
    sb.write(
        "baton.toml",
        &format!(
            r#"
workflows = ["workflows/*.yaml"]

[api]
tokens = [{{ name = "otto", token = {{ env = "T_OPERATOR" }}, role = "operator" }}]

[sources.github]
kind = "github"
secret = {{ env = "GH_SECRET" }}

[expressions]
{expressions}
"#
        ),
    );
    sb.write(
        "workflows/wedge.yaml",
        r#"
name: wedge
on: [{ source: manual }]
stages:
  loops:
    uses: exec
    if: 'def f: f; f'
    timeout: 30s
    on_failure: continue
    with: { run: 'echo never' }
  grows:
    uses: exec
    if: '[range(1e9)] | length > 0'
    timeout: 30s
    on_failure: continue
    with: { run: 'echo never' }
  recurses:
    uses: exec
    timeout: 30s
    on_failure: continue
    with: { run: 'echo never', env: { X: '${{ def f: [f]; f }}' } }
  fine:
    uses: exec
    with: { run: 'echo "[COUT] done = yes"' }
"#,
    );
    sb.write(
        "workflows/looping-trigger.yaml",
        r#"
name: looping-trigger
on: [{ source: github, event: push, if: 'def f: f; f' }]
stages:
  never: { uses: exec, with: { run: 'echo never' } }
"#,
    );
    sb.write(
        "workflows/on-main.yaml",
        r#"
name: on-main
on: [{ source: github, event: push, if: '.ref == "refs/heads/main"' }]
stages:
  build: { uses: exec, with: { run: 'echo "[COUT] built = yes"' } }
"#,
    );
    sb.path().join("baton.toml").display().to_string()
}

const ENV: &[(&str, &str)] = &[("T_OPERATOR", OPERATOR), ("GH_SECRET", SECRET)];

fn start_run(server: &Server) -> String {
    let started = server.post("/api/v1/workflows/wedge/runs", OPERATOR, "{}");
    assert_eq!(started.status, 201, "{started:?}");
    started.json()["run"].as_str().unwrap().to_owned()
}

fn finished(run: &Value) -> bool {
    matches!(
        run["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

fn stage<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no stage {id}: {run:#}"))
}

/// `GET /healthz` answers, and fast.
fn assert_healthy(server: &Server) {
    let asked = Instant::now();
    let reply = server.request("GET", "/healthz", &[], None);
    assert_eq!(reply.status, 200, "{reply:?}\n{}", server.log());
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
}

/// Polls the run, checking health on every round, until it finished.
fn wait_finished_healthy(server: &Server, id: &str, within: Duration) -> Value {
    let begun = Instant::now();
    loop {
        assert_healthy(server);
        let run = server.get(&format!("/api/v1/runs/{id}"), OPERATOR).json();
        if finished(&run) {
            return run;
        }
        assert!(
            begun.elapsed() < within,
            "run {id} not finished after {within:?}: {run:#}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_expression_failures(run: &Value) {
    for (id, why) in [
        ("loops", "(expressions.max_"),
        ("grows", "(expressions.max_"),
        ("recurses", "stopped"),
    ] {
        let s = stage(run, id);
        assert_eq!(s["status"], "failed", "{id}: {s:#}");
        assert_eq!(s["reason"], "expression", "{id}: {s:#}");
        let message = s["message"].as_str().unwrap();
        assert!(message.contains(why), "{id}: {message}");
    }
    assert_eq!(stage(run, "fine")["status"], "succeeded", "{run:#}");
}

#[test]
fn runaway_expressions_fail_their_stage_and_the_server_keeps_answering() {
    let sb = Sandbox::new();
    let config = gateway(&sb, "");
    let server = sb.serve(&config, ENV);
    let began = Instant::now();
    let first = start_run(&server);
    let second = start_run(&server);
    for id in [&first, &second] {
        // Well under the stages' 30 s timeout.
        let run = wait_finished_healthy(&server, id, Duration::from_secs(20));
        assert_expression_failures(&run);
    }
    assert!(began.elapsed() < Duration::from_secs(20));

    // A trigger whose `if` never ends skips only its own match, with the problem recorded;
    // the other workflow on the same delivery starts.
    let body = r#"{"ref": "refs/heads/main"}"#;
    let reply = server.github("github", SECRET, "push", "d-1", body);
    assert_eq!(reply.status, 202, "{reply:?}");
    let delivery = server.wait_for(
        "/api/v1/deliveries?limit=10",
        OPERATOR,
        "the delivery matched",
        |d| d["deliveries"][0]["status"] != "received",
    );
    let delivery = &delivery["deliveries"][0];
    let message = delivery["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("looping-trigger") && message.contains("(expressions.max_steps)"),
        "{delivery:#}"
    );
    assert_eq!(
        delivery["runs"].as_array().unwrap().len(),
        1,
        "{delivery:#}"
    );
    let run = delivery["runs"][0].as_str().unwrap();
    let run = wait_finished_healthy(&server, run, Duration::from_secs(20));
    assert_eq!(run["workflow"], "on-main");
    assert_eq!(run["status"], "succeeded");
}

#[test]
fn a_kill_during_an_evaluation_and_a_restart_replay_no_wedge() {
    let sb = Sandbox::new();
    // Slow enough to be killed in the middle: the conditions take seconds to reach ten
    // million steps, and the run has nothing else to do meanwhile.
    let config = gateway(&sb, "max_steps = 10000000\nmax_time = \"4s\"");
    let server = sb.serve(&config, ENV);
    let id = start_run(&server);
    std::thread::sleep(Duration::from_millis(500));
    assert_healthy(&server);
    let running = server.get(&format!("/api/v1/runs/{id}"), OPERATOR).json();
    assert!(!finished(&running), "{running:#}");
    server.kill();

    let server = sb.serve(&config, ENV);
    assert_healthy(&server);
    let run = wait_finished_healthy(&server, &id, Duration::from_secs(40));
    assert_expression_failures(&run);

    // Once more: the failed stages are in the store, and a restart leaves them so.
    server.kill();
    let server = sb.serve(&config, ENV);
    assert_healthy(&server);
    let again = server.get(&format!("/api/v1/runs/{id}"), OPERATOR).json();
    assert_eq!(again["status"], run["status"]);
    assert_expression_failures(&again);
}
