//! Kill a real `baton run` with SIGKILL in the middle of a long stage, then resume on the
//! same database: the run finishes, the long stage's process is adopted (not started again),
//! and no finished stage runs again.

use std::process::Stdio;
use std::time::Duration;

use baton_tests::{Sandbox, eventually, wait_with_deadline};

#[test]
fn a_killed_run_resumes_without_running_anything_twice() {
    let sb = Sandbox::new();
    sb.write(
        "wf.yaml",
        r#"
name: crashy
stages:
  first:
    uses: exec
    with: { run: 'echo ran >> "first.count"; echo "[COUT] token = t-42"' }
  long:
    needs: [first]
    uses: exec
    with:
      run: |
        echo started >> "long.count"
        sleep 3
        echo "[COUT] got = $TOKEN"
      env: { TOKEN: '${{ .stages.first.outputs.token }}' }
  last:
    needs: [long]
    uses: exec
    with: { run: 'echo ran >> "last.count"' }
"#,
    );
    let store = format!("sqlite://{}/state/baton.db", sb.path().display());
    let mut child = sb
        .baton(&["run", "wf.yaml", "--store", &store])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "the long stage has started",
        || sb.read("long.count").contains("started"),
    );
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();

    let resumed = wait_with_deadline(
        sb.baton(&["resume", "--store", &store, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(
        resumed.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        resumed.stdout,
        resumed.stderr
    );
    let runs = resumed.json();
    let run = &runs[0];
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let long = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "long")
        .unwrap();
    assert_eq!(
        long["outputs"]["got"], "t-42",
        "the adopted process finished and its outputs were read"
    );
    assert_eq!(long["attempt"], 1);
    assert_eq!(sb.read("first.count").lines().count(), 1, "first ran once");
    assert_eq!(
        sb.read("long.count").lines().count(),
        1,
        "long was started once"
    );
    assert_eq!(sb.read("last.count").lines().count(), 1, "last ran once");

    let again = sb.run(&["resume", "--store", &store]);
    assert_eq!(again.code, Some(0));
    assert!(
        again.stdout.contains("nothing to resume"),
        "{}",
        again.stdout
    );
}

/// Killing at many instants: each time, resume finishes the run and nothing runs twice.
#[test]
fn kills_at_several_instants_never_run_a_stage_twice() {
    for delay_ms in [30u64, 120, 250, 400, 700] {
        let sb = Sandbox::new();
        sb.write(
            "wf.yaml",
            r#"
name: chain
stages:
  a: { uses: exec, with: { run: 'echo x >> "a"; sleep 0.1' } }
  b: { needs: [a], uses: exec, with: { run: 'echo x >> "b"; sleep 0.1' } }
  c: { needs: [a], uses: exec, with: { run: 'echo x >> "c"; sleep 0.1' } }
  d: { needs: [b, c], uses: exec, with: { run: 'echo x >> "d"' } }
"#,
        );
        let store = format!("sqlite://{}/baton.db", sb.path().display());
        let mut child = sb
            .baton(&["run", "wf.yaml", "--store", &store])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let resumed = sb.run(&["resume", "--store", &store]);
        assert_eq!(
            resumed.code,
            Some(0),
            "killed after {delay_ms} ms: {}\n{}",
            resumed.stdout,
            resumed.stderr
        );
        for stage in ["a", "b", "c", "d"] {
            let runs = sb.read(stage).lines().count();
            // A run killed before it was created has nothing to resume.
            assert!(
                runs <= 1,
                "killed after {delay_ms} ms: {stage} ran {runs} times"
            );
            if !resumed.stdout.contains("nothing to resume") {
                assert_eq!(
                    runs, 1,
                    "killed after {delay_ms} ms: {stage} ran {runs} times"
                );
            }
        }
    }
}
