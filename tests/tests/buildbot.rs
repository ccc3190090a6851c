//! The real `baton` binary driving a real Buildbot: the one `scripts/buildbot.sh` starts from
//! `tests/buildbot/master.cfg`, named by `BATON_BUILDBOT_URL` (`scripts/test.sh` sets both).
//! Without it these tests fail: they never skip.
//!
//! Each test tags its builds with a property of its own (`tag`), so that it counts only
//! its builds while other tests use the same Buildbot.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_tests::{Finished, Sandbox, Signal, eventually, send_signal, wait_with_deadline};
use serde_json::Value;

/// `host:port` of the test Buildbot; panics (never skips) when unset or not answering.
fn buildbot() -> (String, String) {
    let url = std::env::var("BATON_BUILDBOT_URL").unwrap_or_else(|_| {
        panic!(
            "BATON_BUILDBOT_URL is not set: these tests need the real Buildbot; run `scripts/buildbot.sh` and export BATON_BUILDBOT_URL=http://127.0.0.1:8010 (scripts/test.sh does both)"
        )
    });
    let url = url.trim_end_matches('/').to_owned();
    let host = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("BATON_BUILDBOT_URL={url}: expected http://host:port"))
        .to_owned();
    if let Err(e) = get(&host, "/api/v2/builders") {
        panic!(
            "Buildbot at {url} does not answer ({e}): run `scripts/buildbot.sh` (BATON_BUILDBOT_URL={url})"
        );
    }
    (url, host)
}

/// A plain HTTP/1.0 GET that reads the whole answer (Buildbot 4.3's web server can wedge
/// when a client hangs up halfway).
fn get(host: &str, path: &str) -> Result<Value, String> {
    let mut stream = TcpStream::connect(host).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not HTTP: {text}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))
}

fn api(path: &str) -> Value {
    let (_, host) = buildbot();
    get(&host, &format!("/api/v2/{path}")).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The builds of `builder` whose `tag` property is `tag`, newest first.
fn tagged_builds(builder: &str, tag: &str) -> Vec<Value> {
    let id = api(&format!("builders?name={builder}"))["builders"][0]["builderid"].clone();
    let builds = api(&format!(
        "builds?builderid={id}&property=tag&property=baton_attempt&order=-buildid&limit=200"
    ));
    builds["builds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["properties"]["tag"][0] == tag)
        .cloned()
        .collect()
}

/// A tag no other test or run uses.
fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// A sandbox with a gateway config whose `bb` adapter is the test Buildbot, and `workflow`.
fn sandbox(workflow: &str) -> Sandbox {
    let (url, _) = buildbot();
    let sb = Sandbox::new();
    sb.write(
        "baton.toml",
        &format!(
            r#"workflows = ["wf.yaml"]

[store]
url = "sqlite://baton.db"

[adapters.bb]
kind = "buildbot"
url = "{url}"
poll_initial = "200ms"
poll_max = "1s"
"#
        ),
    );
    sb.write("wf.yaml", workflow);
    sb
}

fn spawn(sb: &Sandbox, args: &[&str]) -> Child {
    sb.baton(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn baton")
}

fn stage(run: &Value, id: &str) -> Value {
    run["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("no stage {id} in {run:#}"))
}

/// Waits until Buildbot runs a build tagged `tag` of `builder`; returns it.
fn running_build(builder: &str, tag: &str) -> Value {
    let mut found = None;
    eventually(
        Duration::from_secs(60),
        &format!("a running `{builder}` build tagged {tag}"),
        || {
            found = tagged_builds(builder, tag)
                .into_iter()
                .find(|b| b["complete"] == false);
            if found.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            found.is_some()
        },
    );
    found.unwrap()
}

/// Waits until build `id` is complete; returns it.
fn completed_build(id: &Value) -> Value {
    let mut build = Value::Null;
    eventually(
        Duration::from_secs(30),
        &format!("build {id} to complete"),
        || {
            build = api(&format!("builds/{id}"))["builds"][0].clone();
            build["complete"] == true
        },
    );
    build
}

fn explain(run: &Finished) -> String {
    format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr)
}

#[test]
fn a_build_succeeds_with_parameters_passed_through_and_read_downstream() {
    let tag = unique("ok");
    let sb = sandbox(&format!(
        r#"
name: bb-success
stages:
  build:
    uses: bb
    with:
      builder: props
      properties:
        greeting: 'hello ${{{{ .event.who }}}}'
        tag: {tag}
  after:
    needs: [build]
    uses: exec
    with:
      run: 'echo "[COUT] shout = $SHOUT"; echo "[COUT] version = $VERSION"'
      env:
        SHOUT: '${{{{ .stages.build.outputs.properties.shout }}}}'
        VERSION: '${{{{ .stages.build.outputs.properties.version }}}}'
"#
    ));
    sb.write("event.json", r#"{"who": "e2e"}"#);
    let begun = Instant::now();
    let run = sb.run(&[
        "run",
        "-c",
        "baton.toml",
        "bb-success",
        "--event",
        "event.json",
        "--json",
    ]);
    eprintln!("a props build through baton run: {:?}", begun.elapsed());
    assert_eq!(run.code, Some(0), "{}", explain(&run));
    let run = run.json();
    let build = stage(&run, "build");
    let out = &build["outputs"];
    assert_eq!(build["status"], "succeeded", "{build:#}");
    assert_eq!(out["results"], "SUCCESS");
    assert_eq!(out["properties"]["greeting"], "hello e2e");
    assert_eq!(out["properties"]["tag"], tag.as_str());
    assert_eq!(out["properties"]["shout"], "HELLO E2E");
    let after = stage(&run, "after");
    assert_eq!(after["outputs"]["shout"], "HELLO E2E", "{after:#}");
    assert_eq!(after["outputs"]["version"], out["properties"]["version"]);

    let builds = tagged_builds("props", &tag);
    assert_eq!(builds.len(), 1, "one build: {builds:#?}");
    assert_eq!(builds[0]["buildid"], out["build_id"]);
    assert_eq!(builds[0]["results"], 0);
}

#[test]
fn a_failing_step_fails_the_stage() {
    let tag = unique("fail");
    let sb = sandbox(&format!(
        r#"
name: bb-fail
stages:
  build:
    uses: bb
    with: {{ builder: fail, properties: {{ tag: {tag} }} }}
  after:
    needs: [build]
    uses: exec
    with: {{ run: 'echo never' }}
"#
    ));
    let run = sb.run(&["run", "-c", "baton.toml", "bb-fail", "--json"]);
    assert_eq!(run.code, Some(1), "{}", explain(&run));
    let run = run.json();
    assert_eq!(run["status"], "failed");
    let build = stage(&run, "build");
    assert_eq!(build["status"], "failed", "{build:#}");
    let message = build["message"].as_str().unwrap_or_default();
    assert!(message.contains("FAILURE"), "{build:#}");
    let after = stage(&run, "after");
    assert!(
        after["status"] == "cancelled" || after["status"] == "skipped",
        "the stage after never ran: {after:#}"
    );
    assert_eq!(build["outputs"]["results"], "FAILURE");
    assert_eq!(tagged_builds("fail", &tag).len(), 1);
}

#[test]
fn cancelling_the_run_stops_the_build() {
    let tag = unique("cancel");
    let sb = sandbox(&format!(
        r#"
name: bb-cancel
stages:
  build:
    uses: bb
    with: {{ builder: sleep, properties: {{ sleep: "300", tag: {tag} }} }}
"#
    ));
    let child = spawn(&sb, &["run", "-c", "baton.toml", "bb-cancel", "--json"]);
    let pid = child.id();
    let build = running_build("sleep", &tag);
    let sent = Instant::now();
    // What Ctrl-C sends: baton run cancels the run.
    assert!(send_signal(pid, Signal::SIGINT));
    let run = wait_with_deadline(child, Duration::from_secs(60));
    eprintln!("SIGINT → baton run ended in {:?}", sent.elapsed());
    assert_eq!(run.code, Some(1), "{}", explain(&run));
    let run = run.json();
    assert_eq!(run["status"], "cancelled", "{run:#}");
    assert_eq!(stage(&run, "build")["status"], "cancelled");
    let done = completed_build(&build["buildid"]);
    eprintln!("SIGINT → Buildbot build complete in {:?}", sent.elapsed());
    assert_eq!(done["results"], 6, "Buildbot says CANCELLED: {done:#}");
    assert!(
        done["state_string"]
            .as_str()
            .unwrap_or_default()
            .contains("cancelled by baton"),
        "{done:#}"
    );
    assert_eq!(tagged_builds("sleep", &tag).len(), 1);
}

#[test]
fn a_stage_timeout_stops_the_build() {
    let tag = unique("timeout");
    let sb = sandbox(&format!(
        r#"
name: bb-timeout
stages:
  build:
    uses: bb
    timeout: 5s
    with: {{ builder: sleep, properties: {{ sleep: "300", tag: {tag} }} }}
"#
    ));
    let begun = Instant::now();
    let run = sb.run(&["run", "-c", "baton.toml", "bb-timeout", "--json"]);
    assert_eq!(run.code, Some(1), "{}", explain(&run));
    let run = run.json();
    let build = stage(&run, "build");
    assert_eq!(build["status"], "failed", "{build:#}");
    assert!(
        build["message"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out after 5s"),
        "{build:#}"
    );
    let builds = tagged_builds("sleep", &tag);
    assert_eq!(builds.len(), 1, "{builds:#?}");
    let done = completed_build(&builds[0]["buildid"]);
    eprintln!(
        "5 s stage timeout → Buildbot build complete after {:?}",
        begun.elapsed()
    );
    assert_eq!(done["results"], 6, "Buildbot says CANCELLED: {done:#}");
}

const CRASHY: &str = r#"
name: bb-crash
stages:
  long:
    uses: bb
    with: { builder: sleep, properties: { sleep: "SLEEP", tag: TAG } }
  after:
    needs: [long]
    uses: exec
    with:
      run: 'echo "[COUT] build = $BUILD"'
      env: { BUILD: '${{ .stages.long.outputs.build_id | tostring }}' }
"#;

fn resume(sb: &Sandbox) -> Finished {
    wait_with_deadline(
        spawn(
            sb,
            &[
                "resume",
                "-c",
                "baton.toml",
                "--store",
                "sqlite://baton.db",
                "--json",
            ],
        ),
        Duration::from_secs(120),
    )
}

#[test]
fn a_killed_baton_follows_the_same_build_after_resume() {
    let tag = unique("crash");
    let sb = sandbox(&CRASHY.replace("SLEEP", "6").replace("TAG", &tag));
    let mut child = spawn(
        &sb,
        &[
            "run",
            "-c",
            "baton.toml",
            "bb-crash",
            "--store",
            "sqlite://baton.db",
        ],
    );
    let build = running_build("sleep", &tag);
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();

    let begun = Instant::now();
    let resumed = resume(&sb);
    eprintln!("resume after SIGKILL: {:?}", begun.elapsed());
    assert_eq!(resumed.code, Some(0), "{}", explain(&resumed));
    let runs = resumed.json();
    let run = &runs[0];
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let long = stage(run, "long");
    assert_eq!(long["attempt"], 1);
    assert_eq!(long["outputs"]["build_id"], build["buildid"], "{long:#}");
    assert_eq!(
        stage(run, "after")["outputs"]["build"],
        build["buildid"],
        "the adopted build's outputs went downstream"
    );
    // Nothing was forced twice: one build only, and no request left to start another.
    std::thread::sleep(Duration::from_secs(1));
    let builds = tagged_builds("sleep", &tag);
    assert_eq!(builds.len(), 1, "one build: {builds:#?}");
}

/// Killed at several instants around the force (before it, between the force and the
/// stored reference, while the build runs): resume never forces a second build.
#[test]
fn kills_around_the_force_never_start_a_second_build() {
    for delay_ms in [100u64, 300, 600, 1000] {
        let tag = unique(&format!("kill{delay_ms}"));
        let sb = sandbox(&CRASHY.replace("SLEEP", "1").replace("TAG", &tag));
        let mut child = spawn(
            &sb,
            &[
                "run",
                "-c",
                "baton.toml",
                "bb-crash",
                "--store",
                "sqlite://baton.db",
            ],
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let resumed = resume(&sb);
        assert_eq!(
            resumed.code,
            Some(0),
            "killed after {delay_ms} ms: {}",
            explain(&resumed)
        );
        std::thread::sleep(Duration::from_secs(1));
        let builds = tagged_builds("sleep", &tag);
        let runs = resumed.json();
        if runs.as_array().is_some_and(Vec::is_empty) {
            // Killed before the run was created: nothing to resume, nothing forced.
            assert!(builds.len() <= 1, "killed after {delay_ms} ms: {builds:#?}");
        } else {
            assert_eq!(
                builds.len(),
                1,
                "killed after {delay_ms} ms: {builds:#?}\n{}",
                explain(&resumed)
            );
            let run = &runs[0];
            assert_eq!(run["status"], "succeeded", "killed after {delay_ms} ms");
            assert_eq!(
                stage(run, "long")["outputs"]["build_id"],
                builds[0]["buildid"]
            );
        }
    }
}

/// The example a newcomer runs after `scripts/buildbot.sh` validates and succeeds as is
/// (copied into a sandbox, its store with it, and pointed at the test Buildbot).
#[test]
fn the_buildbot_example_validates_and_runs() {
    let (url, _) = buildbot();
    let example = baton_tests::repo_root().join("examples/buildbot");
    let sb = Sandbox::new();
    for file in ["baton.toml", "workflow.yaml"] {
        let text = std::fs::read_to_string(example.join(file)).unwrap();
        sb.write(file, &text.replace("http://127.0.0.1:8010", &url));
    }
    let valid = sb.run(&["validate", "-c", "baton.toml"]);
    assert_eq!(valid.code, Some(0), "{}", explain(&valid));
    let run = sb.run(&["run", "-c", "baton.toml", "buildbot-hello", "--json"]);
    assert_eq!(run.code, Some(0), "{}", explain(&run));
    let report = stage(&run.json(), "report");
    let summary = report["outputs"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.starts_with("HELLO FROM BATON, version 1.0."),
        "{report:#}"
    );
}

// ---- `baton serve`: a webhook starts the build -----------------------------------------------

const SECRET: &str = "bb-serve-secret";
const VIEWER: &str = "bb-serve-viewer";
/// The token master.cfg's status push sends (`Authorization: Bearer baton-test-hook`).
const HOOK_TOKEN: &str = "baton-test-hook";
const SERVE_ENV: &[(&str, &str)] = &[
    ("GH_SECRET", SECRET),
    ("T_VIEWER", VIEWER),
    ("HOOK", HOOK_TOKEN),
];

/// A sandbox for `baton serve`: a github source, a viewer token, and a Buildbot adapter
/// instance named `instance` polling at `poll` (`poll_initial`, `poll_max`); a push to
/// `main` runs a `sleep` build of `seconds` tagged `tag`. Returns it and its config's path.
fn served(instance: &str, poll: (&str, &str), seconds: u32, tag: &str) -> (Sandbox, String) {
    let (url, _) = buildbot();
    let sb = Sandbox::new();
    sb.write(
        "baton.toml",
        &format!(
            r#"workflows = ["wf.yaml"]

[store]
url = "sqlite://baton.db"

[api]
tokens = [{{ name = "vera", token = {{ env = "T_VIEWER" }}, role = "viewer" }}]

[sources.github]
kind = "github"
secret = {{ env = "GH_SECRET" }}

[adapters.{instance}]
kind = "buildbot"
url = "{url}"
poll_initial = "{initial}"
poll_max = "{max}"
webhook_token = {{ env = "HOOK" }}
"#,
            initial = poll.0,
            max = poll.1,
        ),
    );
    sb.write(
        "wf.yaml",
        &format!(
            r#"
name: bb-served
on: [{{ source: github, event: push, if: '.ref == "refs/heads/main"' }}]
stages:
  long:
    uses: {instance}
    with: {{ builder: sleep, properties: {{ sleep: "{seconds}", tag: {tag} }} }}
"#
        ),
    );
    let config = sb.path().join("baton.toml").display().to_string();
    (sb, config)
}

/// Sends a signed push to `main` (delivery id `delivery`); returns the stored delivery's id.
fn push(server: &baton_tests::Server, delivery: &str) -> i64 {
    let reply = server.github(
        "github",
        SECRET,
        "push",
        delivery,
        r#"{"ref": "refs/heads/main", "after": "0123abc"}"#,
    );
    assert_eq!(reply.status, 202, "{reply:?}\n{}", server.log());
    reply.json()["delivery"].as_i64().expect("a delivery id")
}

/// The id of the one run delivery `id` started.
fn run_of(server: &baton_tests::Server, delivery: i64) -> String {
    let stored = server.wait_for(
        &format!("/api/v1/deliveries/{delivery}"),
        VIEWER,
        "the delivery to start its run",
        |d| d["status"] == "processed",
    );
    let runs = stored["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 1, "one run: {stored:#}");
    runs[0].as_str().expect("a run id").to_owned()
}

fn finished(server: &baton_tests::Server, run: &str) -> Value {
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

/// The buildsets baton forced for `run` (their reason holds `[baton <run>/…]`).
fn buildsets_of(run: &str) -> Vec<Value> {
    api(&format!("buildsets?reason__contains=[baton%20{run}/"))["buildsets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A `baton serve` SIGKILLed while its build runs, then started again on the same config and
/// store, follows that build to its end: Buildbot's builds (this test's, by its tag) grew by
/// exactly one and no second build was requested.
#[test]
fn a_killed_baton_serve_follows_the_same_build_after_a_restart() {
    let tag = unique("serve-crash");
    let (sb, config) = served("bb", ("200ms", "1s"), 6, &tag);
    assert_eq!(tagged_builds("sleep", &tag).len(), 0);
    let server = sb.serve(&config, SERVE_ENV);
    let delivery = push(&server, &tag);
    let build = running_build("sleep", &tag);
    let pid = server.pid() as i32;
    server.kill(); // SIGKILL, mid-build
    assert!(!baton_tests::alive(pid));
    assert!(
        !completed_build_now(&build["buildid"]),
        "the build still runs after the kill, so the new server has to follow it"
    );

    let begun = Instant::now();
    let server = sb.serve(&config, SERVE_ENV);
    let run_id = run_of(&server, delivery);
    let run = finished(&server, &run_id);
    eprintln!(
        "restarted baton serve → run finished in {:?}",
        begun.elapsed()
    );
    assert_eq!(run["status"], "succeeded", "{run:#}\n{}", server.log());
    let long = stage(&run, "long");
    assert_eq!(long["attempt"], 1, "{long:#}");
    assert_eq!(
        long["attempts"].as_array().map(Vec::len),
        Some(1),
        "{long:#}"
    );
    // The stage's external reference is that build's request, and the build is recorded in it.
    let external = &long["external"];
    assert_eq!(
        external["id"],
        build["buildrequestid"].to_string(),
        "{long:#}"
    );
    assert_eq!(external["data"]["build"], build["buildid"], "{long:#}");
    assert_eq!(long["outputs"]["build_id"], build["buildid"], "{long:#}");
    assert_eq!(long["outputs"]["results"], "SUCCESS", "{long:#}");

    // Nothing was forced twice: one build, one buildset, and nothing left to start another.
    std::thread::sleep(Duration::from_secs(1));
    let builds = tagged_builds("sleep", &tag);
    assert_eq!(builds.len(), 1, "exactly one more build: {builds:#?}");
    assert_eq!(builds[0]["buildid"], build["buildid"]);
    let buildsets = buildsets_of(&run_id);
    assert_eq!(buildsets.len(), 1, "one force: {buildsets:#?}");
}

/// Whether build `id` is complete, as Buildbot says now.
fn completed_build_now(id: &Value) -> bool {
    api(&format!("builds/{id}"))["builds"][0]["complete"] == true
}

/// Buildbot's HTTP status push (master.cfg: to the web port + 9, path
/// `/hooks/adapters/buildbot`) reaching `baton serve` ends the wait: with polls a minute
/// apart, the stage still finishes within seconds of the build.
#[test]
fn buildbots_status_push_to_baton_serve_ends_the_wait_early() {
    let (url, _) = buildbot();
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("BATON_BUILDBOT_URL has a port");
    let listen = format!("127.0.0.1:{}", port + 9);
    let tag = unique("serve-push");
    // The instance is named `buildbot`: master.cfg pushes to /hooks/adapters/buildbot.
    let (sb, config) = served("buildbot", ("60s", "60s"), 3, &tag);
    let server = sb.serve_at(&config, &listen, SERVE_ENV);
    let sent = Instant::now();
    let delivery = push(&server, &tag);
    let run_id = run_of(&server, delivery);
    let build = running_build("sleep", &tag);
    let mut done = Value::Null;
    eventually(Duration::from_secs(30), "the build to complete", || {
        done = api(&format!("builds/{}", build["buildid"]))["builds"][0].clone();
        done["complete"] == true
    });
    let ended = Instant::now();
    let run = finished(&server, &run_id);
    let lag = ended.elapsed();
    eprintln!(
        "status push: build complete → run finished seen {lag:?} later; delivery → run finished {:?}",
        sent.elapsed()
    );
    assert_eq!(run["status"], "succeeded", "{run:#}\n{}", server.log());
    let long = stage(&run, "long");
    assert_eq!(long["outputs"]["build_id"], build["buildid"], "{long:#}");
    // Without the push the first poll would come 48 to 60 s after the start.
    assert!(
        lag < Duration::from_secs(3),
        "the run finished {lag:?} after the build: the status push did not end the wait\n{}",
        server.log()
    );
    // Baton's own clock agrees with Buildbot's (whole seconds) on the same point.
    let finished_at = long["finished_at"].as_i64().expect("finished_at") as f64 / 1000.0;
    let complete_at = done["complete_at"].as_f64().expect("complete_at");
    assert!(
        finished_at - complete_at < 3.0,
        "stage finished at {finished_at}, build complete at {complete_at}"
    );
    assert_eq!(tagged_builds("sleep", &tag).len(), 1);
}
