//! The real `baton serve` driving Concourse builds through the `concourse` adapter, against
//! the stateful fake Concourse of `crates/forge-fakes`: a run follows a build (pushed a
//! version first) to its end, the build's final `status` event ends the stage at once, its
//! outputs go to the next stage, and a baton killed between creating a build and storing it
//! adopts that build after a restart instead of creating a second one.

use std::time::Duration;

use baton_tests::forges::Served;
use baton_tests::forges::concourse::{BuildPlan, Concourse, Fault, Scope};
use baton_tests::{ALL_ROLES_GATEWAY, Sandbox, Server, eventually};
use serde_json::{Value, json};

const VIEWER: &str = "viewer-token";
const OPERATOR: &str = "operator-token";
const PASSWORD: &str = "concourse-e2e-pw";

/// A fake Concourse with user `baton` in team `main`, pipeline `app` whose job `ship`
/// takes resource `repo` and follows `plan`.
fn concourse(plan: BuildPlan) -> (Concourse, Served) {
    let ci = Concourse::new();
    ci.add_user("baton", PASSWORD, &["main"]);
    ci.pipeline("main", "app")
        .resource("repo", &[json!({"ref": "v1"})])
        .job("ship", plan)
        .job_inputs("ship", &["repo"]);
    let served = ci.serve_in_background().expect("serve the fake Concourse");
    (ci, served)
}

/// A gateway with a `concourse` instance polling as `polls` says, and a manual workflow:
/// the build (after checking in the event's version), then a command echoing its outputs.
fn gateway(sb: &Sandbox, ci: &Served, polls: &str) -> String {
    sb.write(
        "baton.toml",
        &format!(
            r#"{ALL_ROLES_GATEWAY}
[adapters.ci]
kind = "concourse"
url = "{url}"
team = "main"
username = "baton"
password = {{ env = "CONCOURSE_PASSWORD" }}
request_timeout = "10s"
{polls}

[engine]
poll_max = "10m"
"#,
            url = ci.url
        ),
    );
    sb.write(
        "workflows/ship.yaml",
        r#"
name: ship
on: [{ source: manual }]
stages:
  build:
    uses: ci
    timeout: 15m
    with:
      pipeline: app
      job: ship
      resource: repo
      version: { ref: '${{ .event.ref }}' }
  after:
    needs: [build]
    uses: exec
    with:
      run: 'echo "[COUT] digest = $DIGEST"; echo "[COUT] used = $USED"'
      env:
        DIGEST: '${{ .stages.build.outputs.resources.outputs.image.digest }}'
        USED: '${{ .stages.build.outputs.check.used }}'
"#,
    );
    sb.path().join("baton.toml").display().to_string()
}

fn serve(sb: &Sandbox, config: &str) -> Server {
    sb.serve(
        config,
        &[
            ("T_VIEWER", VIEWER),
            ("T_OPERATOR", OPERATOR),
            ("T_APPROVER", "approver-token"),
            ("CONCOURSE_PASSWORD", PASSWORD),
        ],
    )
}

fn start_run(server: &Server, git_ref: &str) -> String {
    let started = server.post(
        "/api/v1/workflows/ship/runs",
        OPERATOR,
        &json!({ "ref": git_ref }).to_string(),
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

/// How many runs the latency is measured over.
const RUNS: usize = 20;

fn plan() -> BuildPlan {
    BuildPlan::new()
        .pending_for(Duration::from_millis(100))
        .runs_for(Duration::from_millis(400))
        .output("image", json!({"digest": "sha256:c0ffee"}))
}

#[test]
fn the_final_status_event_ends_the_stage_at_once_and_outputs_flow_on() {
    let (ci, served) = concourse(plan());
    let sb = Sandbox::new();
    // Polls every ten minutes: only the event stream can end the waits within the test.
    let config = gateway(
        &sb,
        &served,
        "poll_initial = \"10m\"\npoll_max = \"10m\"\npoll_streaming = \"10m\"",
    );
    let server = serve(&sb, &config);
    let mut latencies = Vec::new();
    for n in 0..RUNS {
        let version = format!("v{}", n + 2);
        let run = finished(&server, &start_run(&server, &version));
        assert_eq!(run["status"], "succeeded", "{run:#}\n{}", server.log());
        let stage = &run["stages"][0];
        let outputs = &stage["outputs"];
        let build = ci
            .job_builds()
            .into_iter()
            .find(|b| outputs["id"].as_str() == Some(b.id.to_string().as_str()))
            .expect("the build of the outputs");
        assert_eq!(build.inputs, [("repo".into(), json!({"ref": version}))]);
        assert_eq!(outputs["check"]["used"], true);
        assert_eq!(outputs["name"], build.name);
        assert!(
            outputs["url"].as_str().unwrap().ends_with(&format!(
                "/teams/main/pipelines/app/jobs/ship/builds/{}",
                build.name
            )),
            "{outputs}"
        );
        assert_eq!(run["stages"][1]["outputs"]["digest"], "sha256:c0ffee");
        assert_eq!(run["stages"][1]["outputs"]["used"], true);
        let sent = ci
            .status_sent_ms(build.id, "succeeded")
            .expect("the status event was sent");
        let ended = stage["finished_at"]
            .as_u64()
            .unwrap_or_else(|| panic!("no finished_at in {stage:#}"));
        latencies.push(ended.saturating_sub(sent));
    }
    eprintln!("status event to stage end (ms), run by run: {latencies:?}");
    latencies.sort_unstable();
    let worst = *latencies.last().unwrap();
    assert!(
        worst < 1000,
        "the event did not end the stage at once: {latencies:?}"
    );
    // Each run: a check and its read, the create, the comment, one stream, the first poll,
    // the resources; the poll the event caused needed no request. Plus the first token.
    let requests = ci.meter().total();
    eprintln!("requests to Concourse for {RUNS} runs: {requests}");
    assert!(requests <= 1 + RUNS as u64 * 8, "{requests} requests");
}

#[test]
fn a_baton_killed_after_the_create_adopts_the_build_after_a_restart() {
    let (ci, served) = concourse(plan());
    // The create lands, and its answer is held back long enough to kill baton first.
    ci.fault(1, Scope::Create, Fault::Delay(Duration::from_secs(5)));
    let sb = Sandbox::new();
    let config = gateway(&sb, &served, "poll_initial = \"200ms\"\npoll_max = \"1s\"");
    let server = serve(&sb, &config);
    let run = start_run(&server, "v7");
    eventually(
        Duration::from_secs(20),
        "the build exists at Concourse",
        || ci.job_builds().len() == 1,
    );
    server.kill(); // SIGKILL between the create and storing its answer

    let server = serve(&sb, &config);
    let run = finished(&server, &run);
    assert_eq!(run["status"], "succeeded", "{run:#}\n{}", server.log());
    let builds = ci.job_builds();
    assert_eq!(builds.len(), 1, "a second build was created: {builds:?}");
    let only = &builds[0];
    assert_eq!(run["stages"][0]["outputs"]["id"], only.id.to_string());
    assert_eq!(run["stages"][0]["attempt"], 1);
    assert_eq!(
        only.comment.as_deref(),
        Some(
            format!(
                "baton attempt {run_id}/build/1",
                run_id = run["id"].as_str().unwrap()
            )
            .as_str()
        ),
        "adopting claimed it"
    );
    assert_eq!(run["stages"][1]["outputs"]["digest"], "sha256:c0ffee");
}
