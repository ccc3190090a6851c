//! The real `baton serve` driving Travis CI builds through the `travis` adapter, against the
//! stateful fake Travis of `crates/forge-fakes`: a request followed to its build and the
//! build's logged outputs passed downstream, and a baton killed between creating a request
//! and storing it adopts that request after a restart instead of creating a second one.

use std::time::Duration;

use baton_tests::forges::Served;
use baton_tests::forges::travis::{BuildPlan, Fault, JobPlan, Scope, Travis};
use baton_tests::{ALL_ROLES_GATEWAY, Sandbox, Server};

const VIEWER: &str = "viewer-token";
const OPERATOR: &str = "operator-token";
const TRAVIS_TOKEN: &str = "travis-e2e-token";

/// The build, then a command echoing its outputs.
const SHIP: &str = r#"
name: ship
on: [{ source: manual }]
stages:
  build:
    uses: ci
    timeout: 5m
    with:
      branch: main
      config: { env: { global: ['VERSION=${{ .event.version }}'] } }
      merge_mode: deep_merge_append
      message: 'ship ${{ .event.version }}'
  after:
    needs: [build]
    uses: exec
    with:
      run: 'echo "[COUT] image = $IMAGE"; echo "[COUT] jobs = $JOBS"'
      env:
        IMAGE: '${{ .stages.build.outputs.IMAGE }}'
        JOBS: '${{ .stages.build.outputs.jobs | length }}'
"#;

/// A fake Travis with repository `octo-org/app` whose builds print an image as outputs.
fn travis() -> (Travis, Served) {
    let travis = Travis::new();
    travis.add_token("baton", TRAVIS_TOKEN);
    let log = "$ ./release.sh\nbuilt\n$ echo BATON-OUTPUTS-BEGIN; cat out.env; echo BATON-OUTPUTS-END\nBATON-OUTPUTS-BEGIN\nIMAGE=registry.example.com/app:2.1\nBATON-OUTPUTS-END\nDone. Your build exited with 0.\n";
    travis.repo("octo-org/app").plan(
        BuildPlan::new(vec![
            JobPlan::passes()
                .runs_for(Duration::from_millis(800))
                .log(log),
            JobPlan::passes().runs_for(Duration::from_millis(400)),
        ])
        .build_after(Duration::from_millis(200), Duration::from_millis(500)),
    );
    let served = travis.serve_in_background().expect("serve the fake Travis");
    (travis, served)
}

/// A gateway with a `travis` instance and the workflow [`SHIP`].
fn gateway(sb: &Sandbox, travis: &Served) -> String {
    let config = format!(
        r#"{ALL_ROLES_GATEWAY}
[adapters.ci]
kind = "travis"
url = "{url}"
web_url = "{url}"
repo = "octo-org/app"
token = {{ env = "TRAVIS_API_TOKEN" }}
request_timeout = "10s"
poll_initial = "200ms"
poll_max = "1s"
"#,
        url = travis.url
    );
    sb.write("baton.toml", &config);
    sb.write("workflows/ship.yaml", SHIP);
    sb.path().join("baton.toml").display().to_string()
}

fn serve(sb: &Sandbox, config: &str) -> Server {
    let env = [
        ("T_VIEWER", VIEWER),
        ("T_OPERATOR", OPERATOR),
        ("T_APPROVER", "approver-token"),
        ("TRAVIS_API_TOKEN", TRAVIS_TOKEN),
    ];
    sb.serve(config, &env)
}

#[test]
fn a_run_follows_the_request_to_its_build_and_passes_its_outputs_on() {
    let (travis, served) = travis();
    let sb = Sandbox::new();
    let config = gateway(&sb, &served);
    let server = serve(&sb, &config);
    let run = server.start_run("ship", OPERATOR, r#"{"version": "2.1"}"#);
    let ended = server.run_ended(&run, VIEWER);
    assert_eq!(ended["status"], "succeeded", "{ended:#}\n{}", server.log());
    let requests = travis.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(
        request.message.as_deref(),
        Some(format!("ship 2.1 [baton-attempt {run}/build/1]").as_str())
    );
    assert_eq!(
        request.config,
        serde_json::json!({"env": {"global": ["VERSION=2.1"]}})
    );
    let build = request.build.expect("the request got its build");
    let stage = &ended["stages"][0];
    assert_eq!(stage["outputs"]["id"], build.to_string());
    assert_eq!(stage["outputs"]["state"], "passed");
    assert_eq!(stage["outputs"]["IMAGE"], "registry.example.com/app:2.1");
    assert_eq!(stage["external"]["id"], build.to_string(), "{stage:#}");
    let after = &ended["stages"][1]["outputs"];
    assert_eq!(after["image"], "registry.example.com/app:2.1");
    assert_eq!(after["jobs"], 2);
    eprintln!("requests to Travis: {}", travis.meter().total());
}

#[test]
fn a_baton_killed_after_the_create_adopts_the_request_after_a_restart() {
    let (travis, served) = travis();
    // The create lands, and its answer is held back long enough to kill baton first.
    travis.fault(1, Scope::Create, Fault::Delay(Duration::from_secs(5)));
    let sb = Sandbox::new();
    let config = gateway(&sb, &served);
    let server = serve(&sb, &config);
    let run = server.start_run("ship", OPERATOR, r#"{"version": "2.2"}"#);
    // SIGKILL between the create and storing its answer.
    server.kill_when("the request exists at Travis", || {
        travis.requests_created() == 1
    });

    let server = serve(&sb, &config);
    let ended = server.run_ended(&run, VIEWER);
    assert_eq!(ended["status"], "succeeded", "{ended:#}\n{}", server.log());
    assert_eq!(travis.requests_created(), 1, "a second request was created");
    let build = travis.requests()[0]
        .build
        .expect("the request got its build");
    let stage = &ended["stages"][0];
    assert_eq!(stage["outputs"]["id"], build.to_string());
    assert_eq!(stage["attempt"], 1);
    assert_eq!(
        ended["stages"][1]["outputs"]["image"],
        "registry.example.com/app:2.1"
    );
}
