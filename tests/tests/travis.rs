//! The real `baton serve` driving Travis CI builds through the `travis` adapter, against the
//! stateful fake Travis of `crates/forge-fakes`: a request followed to its build and the
//! build's logged outputs passed downstream, and a baton killed between creating a request
//! and storing it adopts that request after a restart instead of creating a second one; a
//! `travis` source's notification of the build's end ends the stage's wait at once.

use std::time::{Duration, Instant};

use baton_tests::forges::Served;
use baton_tests::forges::travis::{BuildPlan, Fault, JobPlan, Scope, Travis};
use baton_tests::{ALL_ROLES_GATEWAY, Sandbox, Server, eventually};

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
    gateway_polling(sb, travis, "200ms", "1s")
}

/// [`gateway`] with the instance's poll settings, and a `travis` source whose key is the
/// fake Travis's.
fn gateway_polling(sb: &Sandbox, travis: &Served, initial: &str, max: &str) -> String {
    let config = format!(
        r#"{ALL_ROLES_GATEWAY}
[sources.travis]
kind = "travis"
repos = ["octo-org/app"]
api_url = "{url}"

[engine]
poll_max = "10m"

[adapters.ci]
kind = "travis"
url = "{url}"
web_url = "{url}"
repo = "octo-org/app"
token = {{ env = "TRAVIS_API_TOKEN" }}
request_timeout = "10s"
poll_initial = "{initial}"
poll_max = "{max}"
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

#[test]
fn a_travis_notification_ends_the_stage_wait_at_once() {
    let (travis, served) = travis();
    let sb = Sandbox::new();
    // Polls every ten minutes once the build exists: only the notification can end the
    // wait within the test.
    let config = gateway_polling(&sb, &served, "10m", "10m");
    let server = serve(&sb, &config);
    let run = server.start_run("ship", OPERATOR, r#"{"version": "2.3"}"#);
    eventually(
        Duration::from_secs(20),
        "the build has passed at Travis",
        || travis.builds().first().is_some_and(|b| b.state == "passed"),
    );
    let build = travis.builds()[0].id;
    std::thread::sleep(Duration::from_millis(300));
    let before = server.get(&format!("/api/v1/runs/{run}"), VIEWER).json();
    assert_eq!(before["stages"][0]["status"], "running", "{before:#}");

    let (form, signature, slug) = travis.notification(build).expect("a notification");
    let sent = Instant::now();
    let answer = server.request(
        "POST",
        "/hooks/travis",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("signature", &signature),
            ("travis-repo-slug", &slug),
        ],
        Some(form.as_bytes()),
    );
    assert_eq!(answer.status, 202, "{answer:?}");
    let ended = server.run_ended(&run, VIEWER);
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the notification did not end the wait: {waited:?}"
    );
    assert_eq!(ended["status"], "succeeded", "{ended:#}\n{}", server.log());
    assert_eq!(ended["stages"][0]["outputs"]["id"], build.to_string());
    assert_eq!(
        ended["stages"][1]["outputs"]["image"],
        "registry.example.com/app:2.1"
    );
    eprintln!(
        "notification to end of run: {waited:?}; requests to Travis: {}",
        travis.meter().total()
    );
}
