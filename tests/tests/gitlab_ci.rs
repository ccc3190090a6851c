//! The real `baton serve` driving GitLab pipelines through the `gitlab-ci` adapter, against
//! the stateful fake GitLab of `crates/forge-fakes`: a Pipeline Hook ends a stage's wait at
//! once, and a baton killed between creating a pipeline and storing it adopts that
//! pipeline after a restart instead of creating a second one.

use std::time::{Duration, Instant};

use baton_tests::forges::Served;
use baton_tests::forges::gitlab::{Fault, GitLab, JobPlan, PipelinePlan, Scope};
use baton_tests::{ALL_ROLES_GATEWAY, Sandbox, Server, eventually};
use serde_json::Value;

const VIEWER: &str = "viewer-token";
const OPERATOR: &str = "operator-token";
const API_TOKEN: &str = "glpat-e2e";
const HOOK_TOKEN: &str = "gitlab-hook-secret";

/// A fake GitLab with project `group/app` whose pipelines run `plan`.
fn gitlab(plan: PipelinePlan) -> (GitLab, Served) {
    let gitlab = GitLab::new();
    gitlab.add_token("baton", API_TOKEN);
    gitlab.project("group/app").id(7).plan(plan);
    let served = gitlab.serve_in_background().expect("serve the fake GitLab");
    (gitlab, served)
}

/// A gateway with a `gitlab` source and a `gitlab-ci` instance polling as `polls` says,
/// and a manual workflow: the pipeline, then a command echoing its outputs.
fn gateway(sb: &Sandbox, gitlab: &Served, polls: &str) -> String {
    sb.write(
        "baton.toml",
        &format!(
            r#"{ALL_ROLES_GATEWAY}
[sources.gitlab]
kind = "gitlab"
token = {{ env = "GL_HOOK_TOKEN" }}

[adapters.gl]
kind = "gitlab-ci"
url = "{url}"
project = "group/app"
token = {{ env = "GL_API_TOKEN" }}
request_timeout = "10s"
{polls}

[engine]
poll_max = "10m"
"#,
            url = gitlab.url
        ),
    );
    sb.write(
        "workflows/ship.yaml",
        r#"
name: ship
on: [{ source: manual }]
stages:
  pipeline:
    uses: gl
    timeout: 15m
    with:
      ref: main
      variables: { VERSION: '${{ .event.version }}' }
      dotenv_artifact: build.env
  after:
    needs: [pipeline]
    uses: exec
    with:
      run: 'echo "[COUT] image = $IMAGE"'
      env: { IMAGE: '${{ .stages.pipeline.outputs.IMAGE }}' }
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
            ("GL_HOOK_TOKEN", HOOK_TOKEN),
            ("GL_API_TOKEN", API_TOKEN),
        ],
    )
}

fn start_run(server: &Server) -> String {
    let started = server.post(
        "/api/v1/workflows/ship/runs",
        OPERATOR,
        r#"{"version": "1.4"}"#,
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

fn plan() -> PipelinePlan {
    PipelinePlan::new(vec![
        JobPlan::new("build", "build")
            .runs_for(Duration::from_millis(800))
            .artifact("build.env", b"IMAGE=registry.example.com/app:1.4\n"),
    ])
}

#[test]
fn a_pipeline_hook_ends_the_stage_wait_at_once() {
    let (gl, served) = gitlab(plan());
    let sb = Sandbox::new();
    // Polls every ten minutes: only the hook can end the wait within the test.
    let config = gateway(&sb, &served, "poll_initial = \"10m\"\npoll_max = \"10m\"");
    let server = serve(&sb, &config);
    let run = start_run(&server);
    eventually(
        Duration::from_secs(20),
        "the pipeline has ended at GitLab",
        || {
            gl.pipelines()
                .first()
                .is_some_and(|p| p.status == "success")
        },
    );
    let pipeline = gl.pipelines()[0].clone();
    assert_eq!(
        pipeline.variables[0],
        ("VERSION".to_owned(), "1.4".to_owned())
    );
    // The engine polled once right after the create and now waits ten minutes.
    std::thread::sleep(Duration::from_millis(500));
    let stage = &server.get(&format!("/api/v1/runs/{run}"), VIEWER).json()["stages"][0];
    assert_eq!(stage["status"], "running", "{stage:#}");

    let hook = gl.pipeline_hook(pipeline.id).unwrap();
    let sent = Instant::now();
    let answer = server.gitlab("gitlab", HOOK_TOKEN, "Pipeline Hook", "e2e-hook-1", &hook);
    assert_eq!(answer.status, 202, "{answer:?}");
    let run = finished(&server, &run);
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the hook did not end the wait: {waited:?}"
    );
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let outputs = &run["stages"][0]["outputs"];
    assert_eq!(outputs["id"], pipeline.id.to_string());
    assert_eq!(outputs["jobs"]["build"], "success");
    assert_eq!(
        run["stages"][1]["outputs"]["image"],
        "registry.example.com/app:1.4"
    );
    // Create, one poll, the poll the hook caused, the jobs and the dotenv file.
    let requests = gl.meter().total();
    assert!(requests <= 6, "{requests} requests");
    eprintln!("hook to end of run: {waited:?}; requests to GitLab: {requests}");
}

#[test]
fn a_baton_killed_after_the_create_adopts_the_pipeline_after_a_restart() {
    let (gl, served) = gitlab(plan());
    // The create lands, and its answer is held back long enough to kill baton first.
    gl.fault(1, Scope::Create, Fault::Delay(Duration::from_secs(5)));
    let sb = Sandbox::new();
    let config = gateway(&sb, &served, "poll_initial = \"200ms\"\npoll_max = \"1s\"");
    let server = serve(&sb, &config);
    let run = start_run(&server);
    eventually(
        Duration::from_secs(20),
        "the pipeline exists at GitLab",
        || gl.pipelines_created() == 1,
    );
    server.kill(); // SIGKILL between the create and storing its answer

    let server = serve(&sb, &config);
    let run = finished(&server, &run);
    assert_eq!(run["status"], "succeeded", "{run:#}\n{}", server.log());
    assert_eq!(gl.pipelines_created(), 1, "a second pipeline was created");
    let only = &gl.pipelines()[0];
    assert_eq!(run["stages"][0]["outputs"]["id"], only.id.to_string());
    assert_eq!(run["stages"][0]["attempt"], 1);
    assert_eq!(
        run["stages"][1]["outputs"]["image"],
        "registry.example.com/app:1.4"
    );
}
