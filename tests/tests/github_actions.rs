//! The real `baton serve` driving GitHub Actions through the `github-actions` adapter,
//! against the stateful fake GitHub of `crates/forge-fakes`: a signed `workflow_run`
//! delivery ends a stage's wait at once, and a baton killed between the dispatch and
//! storing its answer finds the run after a restart instead of dispatching again.

use std::time::{Duration, Instant};

use baton_tests::forge::github::{Fault, Github, Serving, Workflow};
use baton_tests::{Sandbox, Server, eventually};
use serde_json::Value;

const VIEWER: &str = "view-token";
const OPERATOR: &str = "operate-token";
const SECRET: &str = "webhook secret";
const GH_TOKEN: &str = "ghp_e2e_token";

fn github(workflow: Workflow) -> (Github, Serving) {
    let github = Github::new("octo-org/app");
    github.token("e2e", GH_TOKEN).add_workflow(workflow);
    let serving = github.serve_in_background().expect("serve the fake GitHub");
    (github, serving)
}

fn ci() -> Workflow {
    Workflow::new("ci.yml")
        .inputs(&["sha", "baton_attempt"])
        .run_name("ci ${{ inputs.baton_attempt }}")
        .queued_for(Duration::from_millis(300))
        .runs_for(Duration::from_secs(2))
        .outputs(&serde_json::json!({"version": "4.2.0"}))
}

/// A gateway whose `gha` adapter is the fake GitHub, polling as `polls` says.
fn gateway(sb: &Sandbox, serving: &Serving, polls: &str) -> String {
    let config = format!(
        r#"workflows = ["workflows/*.yaml"]

[api]
tokens = [
  {{ name = "vera", token = {{ env = "T_VIEWER" }}, role = "viewer" }},
  {{ name = "otto", token = {{ env = "T_OPERATOR" }}, role = "operator" }},
]

[store]
url = "sqlite://baton.db"

[sources.github]
kind = "github"
secret = {{ env = "GH_SECRET" }}

[adapters.gha]
kind = "github-actions"
url = "{url}"
repo = "octo-org/app"
token = {{ env = "GH_TOKEN" }}
correlation_input = "baton_attempt"
request_timeout = "5s"
{polls}
"#,
        url = serving.url
    );
    sb.write("baton.toml", &config);
    sb.write(
        "workflows/build.yaml",
        r#"
name: build
on: [{ source: manual }]
stages:
  build:
    uses: gha
    timeout: 5m
    with:
      workflow: ci.yml
      ref: main
      inputs: { sha: '${{ .event.sha }}' }
"#,
    );
    "baton.toml".to_owned()
}

fn serve(sb: &Sandbox, config: &str) -> Server {
    sb.serve(
        config,
        &[
            ("T_VIEWER", VIEWER),
            ("T_OPERATOR", OPERATOR),
            ("GH_SECRET", SECRET),
            ("GH_TOKEN", GH_TOKEN),
        ],
    )
}

fn start_run(server: &Server) -> String {
    let started = server.post(
        "/api/v1/workflows/build/runs",
        OPERATOR,
        r#"{"sha": "abc123"}"#,
    );
    assert_eq!(started.status, 201, "{started:?}");
    started.json()["run"].as_str().unwrap().to_owned()
}

fn finished(server: &Server, run: &str) -> Value {
    server.wait_for(
        &format!("/api/v1/runs/{run}"),
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
fn a_workflow_run_delivery_ends_the_wait_at_once() {
    let (github, serving) = github(ci());
    let sb = Sandbox::new();
    // Polls ten minutes apart: only the delivery can end the stage within the test.
    let config = gateway(&sb, &serving, "poll_initial = \"10m\"\npoll_max = \"10m\"");
    let server = serve(&sb, &config);
    let run = start_run(&server);
    eventually(Duration::from_secs(20), "GitHub has the run", || {
        github.runs().len() == 1
    });
    let dispatched = github.runs().pop().unwrap();
    assert_eq!(dispatched.inputs["sha"], "abc123");
    assert!(
        dispatched
            .display_title
            .starts_with(&format!("ci {run}/build/")),
        "{dispatched:?}"
    );
    eventually(
        Duration::from_secs(20),
        "the run completes at GitHub",
        || github.runs()[0].status == "completed",
    );
    let still = server.get(&format!("/api/v1/runs/{run}"), VIEWER).json();
    assert_eq!(still["status"], "running", "{still:#}");

    let body = github.workflow_run_delivery(dispatched.id, "completed");
    let sent = Instant::now();
    let reply = server.github("github", SECRET, "workflow_run", "d-1", &body);
    assert!(matches!(reply.status, 200 | 202), "{reply:?}");
    let done = finished(&server, &run);
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let stage = &done["stages"][0];
    assert_eq!(stage["outputs"]["version"], "4.2.0", "{stage:#}");
    assert_eq!(stage["outputs"]["id"], dispatched.id.to_string());
    assert_eq!(github.runs_created("ci.yml"), 1);
    assert!(github.refused_downloads().is_empty());
}

#[test]
fn a_baton_killed_between_dispatch_and_store_finds_the_run_after_a_restart() {
    let (github, serving) = github(ci());
    // The dispatch lands at once, its answer takes 3 s: baton dies before it comes.
    github.fault_on("dispatches", 1, Fault::Delay(Duration::from_secs(3)));
    let sb = Sandbox::new();
    let config = gateway(&sb, &serving, "poll_initial = \"200ms\"\npoll_max = \"1s\"");
    let server = serve(&sb, &config);
    let run = start_run(&server);
    eventually(Duration::from_secs(20), "GitHub has the run", || {
        github.runs().len() == 1
    });
    server.kill();

    let server = serve(&sb, &config);
    let done = finished(&server, &run);
    assert_eq!(done["status"], "succeeded", "{done:#}\n{}", server.log());
    assert_eq!(
        github.runs_created("ci.yml"),
        1,
        "dispatched twice:\n{}",
        server.log()
    );
    let stage = &done["stages"][0];
    assert_eq!(stage["attempt"], 1);
    assert_eq!(stage["outputs"]["id"], github.runs()[0].id.to_string());
}
