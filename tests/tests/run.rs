//! `baton run` end to end: a real binary, real processes, a real SQLite file.

use std::time::Duration;

use baton_tests::{Sandbox, Signal, alive, eventually, send_signal, wait_with_deadline};

const PIPELINE: &str = r#"
name: pipeline
stages:
  build:
    uses: exec
    with:
      run: |
        echo "[COUT] version = 1.4.2"
        echo "[COUT] artifacts = 3"
        echo "compiling..." >&2
  test:
    needs: [build]
    uses: exec
    with:
      input: { version: '${{ .stages.build.outputs.version }}', count: '${{ .stages.build.outputs.artifacts }}' }
      run: |
        input=$(cat)
        printf '{"seen": %s, "branch": "%s"}' "$input" "$BRANCH" > "$BATON_OUTPUT"
      env: { BRANCH: '${{ .event.ref }}' }
  docs:
    needs: [build]
    if: '.event.ref == "refs/heads/docs"'
    uses: exec
    with: { run: 'echo never' }
  report:
    needs: [test, docs]
    uses: exec
    with:
      command: [sh, -c, 'echo "[COUT] summary = $1"', report, 'built ${{ .stages.build.outputs.version }} on ${{ .event.ref }}']
"#;

#[test]
fn a_workflow_runs_passes_outputs_downstream_and_skips_by_condition() {
    let sb = Sandbox::new();
    sb.write("wf.yaml", PIPELINE);
    sb.write("event.json", r#"{"ref": "refs/heads/main"}"#);
    let out = sb.run(&["run", "wf.yaml", "--event", "event.json", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let run = out.json();
    assert_eq!(run["status"], "succeeded");
    assert_eq!(out.stage("build")["outputs"]["version"], "1.4.2");
    // A whole-string template keeps the JSON type: `artifacts` arrives as the number 3.
    assert_eq!(
        out.stage("test")["outputs"]["seen"],
        serde_json::json!({"version": "1.4.2", "count": 3})
    );
    assert_eq!(out.stage("test")["outputs"]["branch"], "refs/heads/main");
    assert_eq!(out.stage("docs")["status"], "skipped");
    assert_eq!(out.stage("report")["status"], "succeeded");
    assert_eq!(
        out.stage("report")["outputs"]["summary"],
        "built 1.4.2 on refs/heads/main"
    );
    // Progress went to stderr, one plain line per change (not a terminal).
    assert!(out.stderr.contains("docs skipped"), "{}", out.stderr);
}

#[test]
fn a_failing_stage_exits_1_with_the_code_and_stderr_tail() {
    let sb = Sandbox::new();
    sb.write("wf.yaml", "name: f\nstages:\n  boom:\n    uses: exec\n    with: { run: 'echo detail-on-stderr >&2; exit 7' }\n");
    let out = sb.run(&["run", "wf.yaml"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stdout.contains("boom failed"), "{}", out.stdout);
    assert!(
        out.stdout.contains("7") && out.stdout.contains("detail-on-stderr"),
        "{}",
        out.stdout
    );
}

#[test]
fn usage_and_config_errors_exit_2() {
    let sb = Sandbox::new();
    sb.write(
        "bad.yaml",
        "name: b\nstages:\n  a:\n    uses: nowhere\n    bogus: 1\n",
    );
    let out = sb.run(&["run", "bad.yaml"]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("bad.yaml: stages.a.uses") && out.stderr.contains("stages.a.bogus"),
        "{}",
        out.stderr
    );
    assert_eq!(sb.run(&["run", "no-such-workflow"]).code, Some(2));
    assert_eq!(sb.run(&["run"]).code, Some(2));
}

#[test]
fn retries_then_succeeds_with_a_new_attempt() {
    let sb = Sandbox::new();
    sb.write(
        "wf.yaml",
        r#"
name: flaky
stages:
  flaky:
    uses: exec
    retry: { attempts: 3, backoff: 100ms }
    with:
      run: |
        n=$(cat "count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "count"
        echo "[COUT] attempt = $BATON_ATTEMPT"
        [ $n -ge 2 ]
"#,
    );
    let out = sb.run(&["run", "wf.yaml", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let stage = out.stage("flaky");
    assert_eq!(stage["attempt"], 2);
    assert_eq!(stage["outputs"]["attempt"], 2);
    assert_eq!(stage["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(sb.read("count").trim(), "2");
}

#[test]
fn a_timeout_fails_the_stage_and_kills_the_whole_process_group() {
    let sb = Sandbox::new();
    sb.write(
        "wf.yaml",
        r#"
name: slow
stages:
  slow:
    uses: exec
    timeout: 1s
    with:
      run: |
        sleep 300 &
        echo $! > "child.pid"
        sleep 300
"#,
    );
    let out = sb.run(&["run", "wf.yaml", "--json"]);
    assert_eq!(out.code, Some(1));
    let stage = out.stage("slow");
    assert_eq!(stage["status"], "failed");
    assert_eq!(stage["reason"], "timed_out");
    let child: i32 = sb
        .read("child.pid")
        .trim()
        .parse()
        .expect("the script recorded its child");
    eventually(
        Duration::from_secs(10),
        "the background child is killed",
        || !alive(child),
    );
}

#[test]
fn ctrl_c_cancels_the_run_and_kills_its_processes() {
    let sb = Sandbox::new();
    // Two branches, so that events keep the run loop busy while the signal arrives.
    sb.write(
        "wf.yaml",
        r#"
name: interrupted
stages:
  chatty:
    uses: exec
    with:
      run: |
        for i in $(seq 200); do echo "[COUT] step = $i"; sleep 0.01; done
  slow:
    uses: exec
    with:
      run: |
        echo $$ > "slow.pid"
        sleep 300
"#,
    );
    let child = sb
        .baton(&["run", "wf.yaml", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn baton");
    eventually(Duration::from_secs(30), "the slow stage starts", || {
        !sb.read("slow.pid").trim().is_empty()
    });
    let slow: i32 = sb.read("slow.pid").trim().parse().expect("a pid");
    // As Ctrl-C in its terminal would.
    assert!(send_signal(child.id(), Signal::SIGINT));
    let out = wait_with_deadline(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("cancelling run"), "{}", out.stderr);
    assert_eq!(out.json()["status"], "cancelled");
    assert_eq!(out.stage("slow")["status"], "cancelled");
    eventually(
        Duration::from_secs(10),
        "the slow stage's shell is killed",
        || !alive(slow),
    );
}

#[test]
fn an_approval_stage_passes_with_approve_and_times_out_without() {
    let sb = Sandbox::new();
    sb.write(
        "wf.yaml",
        r#"
name: gated
stages:
  build: { uses: exec, with: { run: 'echo "[COUT] tag = v9"' } }
  release:
    needs: [build]
    uses: approval
    timeout: 2s
    with: { message: 'Release ${{ .stages.build.outputs.tag }}?' }
  deploy: { needs: [release], uses: exec, with: { run: 'echo deploying' } }
"#,
    );
    let approved = sb.run(&["run", "wf.yaml", "--approve", "release", "--json"]);
    assert_eq!(approved.code, Some(0), "{}", approved.stderr);
    assert_eq!(approved.stage("release")["outputs"]["decision"], "approved");
    assert_eq!(approved.stage("deploy")["status"], "succeeded");

    let waited = sb.run(&["run", "wf.yaml", "--json"]);
    assert_eq!(waited.code, Some(1));
    assert!(
        waited.stderr.contains("--approve release"),
        "tells the user how to approve: {}",
        waited.stderr
    );
    assert_eq!(waited.stage("release")["reason"], "timed_out");
    assert_eq!(waited.stage("deploy")["status"], "cancelled");

    let wrong = sb.run(&["run", "wf.yaml", "--approve", "build"]);
    assert_eq!(wrong.code, Some(2), "only approval stages can be approved");
}

#[test]
fn a_runtime_jq_error_fails_the_stage_with_the_jq_message() {
    let sb = Sandbox::new();
    sb.write("wf.yaml", "name: j\nstages:\n  a:\n    uses: exec\n    with: { run: 'true', input: { n: '${{ .event.count + 1 }}' } }\n");
    sb.write("event.json", r#"{"count": "three"}"#);
    let out = sb.run(&["run", "wf.yaml", "--event", "event.json", "--json"]);
    assert_eq!(out.code, Some(1));
    let stage = out.stage("a");
    assert_eq!(stage["reason"], "expression");
    assert!(
        stage["message"].as_str().unwrap().contains("cannot"),
        "{stage}"
    );
}

#[test]
fn graph_prints_dot_and_svg() {
    let sb = Sandbox::new();
    sb.write("wf.yaml", PIPELINE);
    let dot = sb.run(&["graph", "wf.yaml"]);
    assert_eq!(dot.code, Some(0), "{}", dot.stderr);
    assert!(dot.stdout.starts_with("digraph"), "{}", dot.stdout);
    for id in ["build", "test", "docs", "report"] {
        assert!(dot.stdout.contains(id));
    }
    let svg = sb.run(&["graph", "wf.yaml", "--format", "svg", "-o", "g.svg"]);
    assert_eq!(svg.code, Some(0), "{}", svg.stderr);
    let text = sb.read("g.svg");
    assert!(text.contains("<svg") && text.trim_end().ends_with("</svg>"));
    assert!(text.contains(">report<"), "{text}");
}

#[test]
fn every_command_has_help() {
    let sb = Sandbox::new();
    for cmd in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["validate", "--help"],
        vec!["graph", "--help"],
        vec!["resume", "--help"],
    ] {
        let out = sb.run(&cmd);
        assert_eq!(out.code, Some(0), "{cmd:?}");
        assert!(out.stdout.contains("Usage"), "{cmd:?}: {}", out.stdout);
    }
}
