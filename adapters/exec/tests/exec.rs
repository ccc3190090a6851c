//! The exec adapter against real processes: no mocks.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_adapter_exec::{ExecAdapter, ExecKind, InheritEnv};
use baton_adapter_kit::{Scenario, fresh_key, run_conformance};
use baton_core::{
    Adapter, AdapterError, AttemptKey, ExternalRef, ExternalState, PollOutcome, PollRequest,
    StartRequest, Waker,
};
use serde_json::{Map, Value, json};
use tokio::io::AsyncBufReadExt;

/// Every wait in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(30);

fn request(key: &AttemptKey, input: Value) -> StartRequest {
    StartRequest {
        key: key.clone(),
        workflow: "test".into(),
        input,
        timeout: BOUND,
    }
}

async fn start(adapter: &ExecAdapter, key: &AttemptKey, input: Value) -> ExternalRef {
    adapter.start(&request(key, input)).await.unwrap()
}

async fn poll(adapter: &ExecAdapter, key: &AttemptKey, external: &ExternalRef) -> PollOutcome {
    adapter
        .poll(&PollRequest {
            key,
            external,
            signal: None,
        })
        .await
        .unwrap()
}

async fn wait(adapter: &ExecAdapter, key: &AttemptKey, external: &ExternalRef) -> PollOutcome {
    let until = Instant::now() + BOUND;
    loop {
        let outcome = poll(adapter, key, external).await;
        if outcome.state.is_terminal() {
            return outcome;
        }
        assert!(Instant::now() < until, "{key} still {outcome:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `input` and waits for the end; returns the outcome and the outputs.
async fn run(adapter: &ExecAdapter, input: Value) -> (PollOutcome, Map<String, Value>) {
    let key = fresh_key("run");
    let external = start(adapter, &key, input).await;
    let outcome = wait(adapter, &key, &external).await;
    let outputs = adapter.outputs(&key, &external).await.unwrap();
    (outcome, outputs)
}

fn succeeded(outcome: &PollOutcome) {
    assert_eq!(
        outcome.state,
        ExternalState::Succeeded { warnings: false },
        "{outcome:?}"
    );
}

/// Live (not zombie) processes of group `pgid`, read from /proc independently of the crate.
fn group(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(2) == Some(&pgid.to_string().as_str()) && fields[0] != "Z" {
            members.push(pid);
        }
    }
    members
}

async fn wait_for_group(pgid: i32, at_least: usize) {
    let until = Instant::now() + BOUND;
    while group(pgid).len() < at_least {
        assert!(
            Instant::now() < until,
            "group {pgid} never grew to {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pgid(external: &ExternalRef) -> i32 {
    external.id.parse().unwrap()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn input_reaches_stdin_and_the_input_file() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let input = json!({"files": ["a.rs", "b c.rs"], "n": 2});
    let (outcome, outputs) = run(
        &adapter,
        json!({
            "run": "stdin=$(cat); printf '[COUT] stdin = %s\\n[COUT] file = %s\\n' \"$stdin\" \"$(cat \"$BATON_INPUT\")\"",
            "input": input,
        }),
    )
    .await;
    succeeded(&outcome);
    assert_eq!(outputs["stdin"], input);
    assert_eq!(outputs["file"], input);

    let (_, outputs) = run(&adapter, json!({"run": "echo \"[COUT] stdin = $(cat)\""})).await;
    assert_eq!(
        outputs["stdin"],
        Value::Null,
        "an absent input is JSON null"
    );
}

#[tokio::test]
async fn outputs_come_from_the_output_file_and_cout_lines() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let (outcome, outputs) = run(
        &adapter,
        json!({"run": r#"
echo '[COUT] n = 1'
echo '[COUT]   tag   =   v1.2  '
echo '[COUT] obj = {"a": [1]}'
echo 'plain text'
printf '{"digest": "sha256:abc", "n": 2}' > "$BATON_OUTPUT"
"#}),
    )
    .await;
    succeeded(&outcome);
    assert_eq!(
        Value::Object(outputs),
        json!({"n": 2, "tag": "v1.2", "obj": {"a": [1]}, "digest": "sha256:abc", "exit_code": 0})
    );
}

#[tokio::test]
async fn an_unreadable_output_file_fails_the_stage() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let (outcome, outputs) =
        run(&adapter, json!({"run": "echo '{nope' > \"$BATON_OUTPUT\""})).await;
    assert_eq!(outcome.state, ExternalState::Failed);
    let message = outcome.message.unwrap();
    assert!(
        message.contains("exited with code 0, but $BATON_OUTPUT does not hold valid JSON"),
        "{message}"
    );
    assert_eq!(outputs["exit_code"], 0);

    let (outcome, _) = run(
        &adapter,
        json!({"run": "echo '[1, 2]' > \"$BATON_OUTPUT\""}),
    )
    .await;
    assert!(
        outcome
            .message
            .unwrap()
            .contains("must hold a JSON object, but it holds an array")
    );
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_the_code_and_the_end_of_stderr() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let (outcome, outputs) = run(
        &adapter,
        json!({"run": "for i in $(seq 1 50); do echo \"err $i\" >&2; done; echo out; exit 3"}),
    )
    .await;
    assert_eq!(outcome.state, ExternalState::Failed);
    assert_eq!(outcome.raw.as_deref(), Some("exit 3"));
    let message = outcome.message.unwrap();
    assert!(
        message.starts_with("the command exited with code 3"),
        "{message}"
    );
    assert!(
        message.contains("err 31\n") && message.ends_with("err 50"),
        "{message}"
    );
    assert!(
        !message.contains("err 30\n"),
        "only the last 20 lines: {message}"
    );
    assert_eq!(outputs["exit_code"], 3);
}

#[tokio::test]
async fn a_command_killed_by_a_signal_names_it() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let (outcome, outputs) = run(&adapter, json!({"run": "kill -9 $$"})).await;
    assert_eq!(outcome.state, ExternalState::Failed);
    assert!(
        outcome
            .message
            .as_deref()
            .unwrap()
            .contains("killed by SIGKILL"),
        "{outcome:?}"
    );
    assert_eq!(outputs["exit_code"], 137);
}

#[tokio::test]
async fn command_runs_an_argv_without_a_shell() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let (outcome, outputs) = run(
        &adapter,
        json!({"command": ["printf", "[COUT] a = %s\\n[COUT] b = %s\\n[COUT] c = %s\\n", "hello world", "$HOME; *", 5]}),
    )
    .await;
    succeeded(&outcome);
    assert_eq!(outputs["a"], "hello world");
    assert_eq!(outputs["b"], "$HOME; *");
    assert_eq!(outputs["c"], 5);

    let (outcome, _) = run(&adapter, json!({"command": ["no-such-program-baton"]})).await;
    assert_eq!(outcome.state, ExternalState::Failed);
    assert!(outcome.message.unwrap().contains("code 127"));
}

#[tokio::test]
async fn env_and_the_attempt_variables_are_set() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let key = AttemptKey::new("run-42", "lint", 3);
    let external = start(
        &adapter,
        &key,
        json!({
            "run": r#"printf '[COUT] g = %s\n[COUT] n = %s\n[COUT] b = %s\n[COUT] id = %s\n[COUT] stage = %s\n[COUT] attempt = %s\n' "$GREETING" "$N" "$B" "$BATON_RUN_ID" "$BATON_STAGE" "$BATON_ATTEMPT""#,
            "env": {"GREETING": "hi there", "N": 3, "B": true, "PATH": "/nowhere"},
        }),
    )
    .await;
    succeeded(&wait(&adapter, &key, &external).await);
    let outputs = adapter.outputs(&key, &external).await.unwrap();
    assert_eq!(
        Value::Object(outputs),
        json!({"g": "hi there", "n": 3, "b": true, "id": "run-42", "stage": "lint", "attempt": 3, "exit_code": 0})
    );
}

#[tokio::test]
async fn workdir_is_used_and_a_missing_one_is_refused() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let (outcome, outputs) = run(
        &adapter,
        json!({"run": "echo \"[COUT] cwd = $(pwd -P)\"", "workdir": work.path()}),
    )
    .await;
    succeeded(&outcome);
    assert_eq!(
        outputs["cwd"],
        work.path()
            .canonicalize()
            .unwrap()
            .to_string_lossy()
            .as_ref()
    );

    let key = fresh_key("nowhere");
    let err = adapter
        .start(&request(
            &key,
            json!({"run": "true", "workdir": "/no/such/dir"}),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AdapterError::Invalid(ref m) if m.contains("/no/such/dir")),
        "{err:?}"
    );
    assert_eq!(adapter.find(&key, &Value::Null).await.unwrap(), None);
    assert!(
        !adapter.attempt_dir(&key).exists(),
        "a failed start leaves nothing behind"
    );
}

#[tokio::test]
async fn a_badly_rendered_input_is_refused_at_start() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    for input in [
        json!({"command": "ls -l"}),
        json!({"run": "true", "env": {"BATON_OUTPUT": "/tmp/x"}}),
        json!({"run": "true", "command": ["true"]}),
    ] {
        let err = adapter
            .start(&request(&fresh_key("bad"), input.clone()))
            .await
            .unwrap_err();
        assert!(matches!(err, AdapterError::Invalid(_)), "{input}: {err:?}");
    }
}

#[tokio::test]
async fn cancel_kills_children_and_grandchildren() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let key = fresh_key("cancel");
    let external = start(
        &adapter,
        &key,
        json!({"run": "sleep 300 & sleep 300; wait"}),
    )
    .await;
    let pgid = pgid(&external);
    // wrapper sh, script sh, two sleeps
    wait_for_group(pgid, 4).await;
    assert_eq!(
        poll(&adapter, &key, &external).await.state,
        ExternalState::Running
    );

    let began = Instant::now();
    adapter.cancel(&key, &external).await.unwrap();
    assert!(began.elapsed() < Duration::from_secs(4), "SIGTERM sufficed");
    assert_eq!(
        group(pgid),
        Vec::<i32>::new(),
        "no process of the group is left"
    );
    let outcome = wait(&adapter, &key, &external).await;
    assert_eq!(outcome.state, ExternalState::Cancelled, "{outcome:?}");
    adapter.cancel(&key, &external).await.unwrap();
    assert_eq!(
        poll(&adapter, &key, &external).await.state,
        ExternalState::Cancelled
    );
}

#[tokio::test]
async fn cancel_escalates_to_sigkill_after_the_grace() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path()).with_kill_grace(Duration::from_millis(300));
    let key = fresh_key("stubborn");
    // Ignored signals are inherited, so the sleep ignores SIGTERM too.
    let external = start(
        &adapter,
        &key,
        json!({"run": "trap '' TERM; sleep 300 & wait"}),
    )
    .await;
    let pgid = pgid(&external);
    wait_for_group(pgid, 3).await;
    adapter.cancel(&key, &external).await.unwrap();
    assert_eq!(group(pgid), Vec::<i32>::new());
    assert_eq!(
        wait(&adapter, &key, &external).await.state,
        ExternalState::Cancelled
    );
}

#[tokio::test]
async fn cancel_of_finished_or_unknown_work_is_ok_and_changes_nothing() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let key = fresh_key("done");
    let external = start(&adapter, &key, json!({"run": "exit 4"})).await;
    let outcome = wait(&adapter, &key, &external).await;
    assert_eq!(outcome.state, ExternalState::Failed);
    adapter.cancel(&key, &external).await.unwrap();
    assert_eq!(poll(&adapter, &key, &external).await, outcome);

    let never = fresh_key("never");
    adapter.cancel(&never, &external).await.unwrap();
    assert!(!adapter.attempt_dir(&never).exists());
}

#[tokio::test]
async fn a_new_adapter_adopts_a_running_command() {
    let state = tempfile::tempdir().unwrap();
    let key = fresh_key("adopt");
    let external = {
        let first = ExecAdapter::new(state.path());
        start(
            &first,
            &key,
            json!({"run": "sleep 2; echo '[COUT] done = true'"}),
        )
        .await
    };
    let second = ExecAdapter::new(state.path());
    let found = second.find(&key, &Value::Null).await.unwrap().unwrap();
    assert_eq!(found, external);
    assert_eq!(
        poll(&second, &key, &found).await.state,
        ExternalState::Running
    );
    succeeded(&wait(&second, &key, &found).await);
    assert_eq!(second.outputs(&key, &found).await.unwrap()["done"], true);
}

#[tokio::test]
async fn an_adopted_command_can_be_cancelled() {
    let state = tempfile::tempdir().unwrap();
    let key = fresh_key("adopt-cancel");
    let external = {
        let first = ExecAdapter::new(state.path());
        start(&first, &key, json!({"run": "sleep 300 & wait"})).await
    };
    let pgid = pgid(&external);
    wait_for_group(pgid, 3).await;
    let second = ExecAdapter::new(state.path());
    let found = second.find(&key, &Value::Null).await.unwrap().unwrap();
    second.cancel(&key, &found).await.unwrap();
    assert_eq!(group(pgid), Vec::<i32>::new());
    assert_eq!(
        wait(&second, &key, &found).await.state,
        ExternalState::Cancelled
    );
}

#[tokio::test]
async fn a_second_start_adopts_instead_of_running_twice() {
    let state = tempfile::tempdir().unwrap();
    let runs = state.path().join("runs");
    let adapter = ExecAdapter::new(state.path().join("exec"));
    let key = fresh_key("once");
    let input = json!({"run": "echo ran >> \"$RUNS\"; sleep 1", "env": {"RUNS": runs}});

    // Concurrent starts: one launches; the other adopts it or is told to come back later.
    let (ra, rb) = (request(&key, input.clone()), request(&key, input.clone()));
    let (a, b) = tokio::join!(adapter.start(&ra), adapter.start(&rb));
    let external = match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            a
        }
        (Ok(a), Err(e)) | (Err(e), Ok(a)) => {
            assert!(e.is_transient(), "{e:?}");
            a
        }
        (Err(a), Err(b)) => panic!("both starts failed: {a:?} {b:?}"),
    };
    assert_eq!(start(&adapter, &key, input.clone()).await, external);
    succeeded(&wait(&adapter, &key, &external).await);
    // Even after the end, and from another adapter, a start adopts the finished command.
    let other = ExecAdapter::new(state.path().join("exec"));
    assert_eq!(start(&other, &key, input).await, external);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count_lines(&runs), 1);
}

#[tokio::test]
async fn a_vanished_process_is_a_failure() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let key = fresh_key("vanish");
    let external = start(&adapter, &key, json!({"command": ["sleep", "300"]})).await;
    let pgid = pgid(&external);
    wait_for_group(pgid, 2).await;
    // Killed from outside, wrapper included: nothing records an exit code.
    let status = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(status.success());
    let outcome = wait(&adapter, &key, &external).await;
    assert_eq!(outcome.state, ExternalState::Failed);
    assert!(
        outcome
            .message
            .unwrap()
            .contains("the process disappeared without recording an exit code")
    );
    assert_eq!(
        adapter.outputs(&key, &external).await.unwrap()["exit_code"],
        Value::Null
    );
}

#[tokio::test]
async fn an_interrupted_start_is_started_afresh_at_once_and_runs_once() {
    let state = tempfile::tempdir().unwrap();
    let runs = state.path().join("runs");
    let adapter = ExecAdapter::new(state.path().join("exec"));
    let key = fresh_key("interrupted");
    let input = json!({"run": "echo ran >> \"$RUNS\"", "env": {"RUNS": runs}});
    let dir = adapter.attempt_dir(&key);
    // What a baton killed between mkdir and the pid file leaves behind: nothing ran, and the
    // wrapper (if launched) gave up when its starter died.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("input.json"), "null").unwrap();
    assert_eq!(adapter.find(&key, &input).await.unwrap(), None);
    let placeholder = ExternalRef::new("0");
    assert_eq!(
        poll(&adapter, &key, &placeholder).await.state,
        ExternalState::Queued
    );

    // A new baton owns the state directory alone: it starts the attempt at once.
    let external = start(&adapter, &key, input.clone()).await;
    succeeded(&wait(&adapter, &key, &external).await);
    assert_eq!(count_lines(&runs), 1);
    assert!(
        adapter.state_dir().join(".aborted").is_dir(),
        "the interrupted directory is kept for inspection"
    );
    // Starting it again adopts the finished command; it does not run twice.
    let again = start(&adapter, &key, input).await;
    assert_eq!(again.id, external.id);
    assert_eq!(count_lines(&runs), 1);
}

#[tokio::test]
async fn the_waker_fires_when_the_command_ends() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    adapter.attach(Waker::new(move |key: &AttemptKey| {
        let _ = tx.send(key.clone());
    }));
    let key = fresh_key("wake");
    let external = start(&adapter, &key, json!({"run": "sleep 0.3"})).await;
    let woken = tokio::time::timeout(BOUND, rx.recv()).await.unwrap();
    assert_eq!(woken, Some(key.clone()));
    // Woken only after the exit is recorded: the very next poll sees the end.
    succeeded(&poll(&adapter, &key, &external).await);
}

#[tokio::test]
async fn logs_hold_the_text_and_links_to_the_files() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let key = fresh_key("logs");
    let external = start(
        &adapter,
        &key,
        json!({"run": "echo to-out; echo to-err >&2"}),
    )
    .await;
    wait(&adapter, &key, &external).await;
    let logs = adapter.logs(&key, &external).await.unwrap();
    let text = logs.text.unwrap();
    assert!(text.contains("to-out") && text.contains("to-err"), "{text}");
    let names: Vec<_> = logs.links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["stdout", "stderr"]);
    for link in &logs.links {
        let path = percent_decode(link.url.strip_prefix("file://").unwrap());
        assert!(Path::new(&path).is_file(), "{}", link.url);
    }
}

#[tokio::test]
async fn unknown_attempts_are_not_found() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    let key = fresh_key("unknown");
    let external = ExternalRef::new("1");
    assert_eq!(adapter.find(&key, &Value::Null).await.unwrap(), None);
    let err = adapter
        .poll(&PollRequest {
            key: &key,
            external: &external,
            signal: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::NotFound(_)), "{err:?}");
    assert!(matches!(
        adapter.outputs(&key, &external).await,
        Err(AdapterError::NotFound(_))
    ));
    assert!(matches!(
        adapter.logs(&key, &external).await,
        Err(AdapterError::NotFound(_))
    ));
}

#[tokio::test]
async fn exec_conforms() {
    let state = tempfile::tempdir().unwrap();
    run_conformance(Scenario {
        kind: Arc::new(ExecKind::default()),
        adapter: Arc::new(ExecAdapter::new(state.path())),
        valid_with: json!({
            "command": "${{ .stages.plan.outputs.argv }}",
            "env": {"SHA": "${{ .event.after }}", "N": 1},
            "input": {"files": "${{ .event.commits }}"},
        }),
        invalid_with: json!({"run": "make", "env": {"X": [1]}}),
        succeed: json!({"run": "echo '[COUT] ok = true'", "input": {"a": 1}}),
        fail: json!({"run": "echo boom >&2; exit 1"}),
        long: json!({"command": ["sleep", "60"]}),
        success_signal: None,
        failure_signal: None,
        side_effect_free: false,
        // Another process on this machine, with the same state folder.
        replica: Some(Arc::new(ExecAdapter::new(state.path()))),
        deadline: BOUND,
    })
    .await;
}

/// The environment variable that turns [`starter_process`] into a real starter.
const STARTER: &str = "BATON_EXEC_TEST_STARTER";

/// Plays a baton process that starts a command and is then SIGKILLed by
/// [`a_command_survives_the_death_of_the_process_that_started_it`]. Does nothing otherwise.
#[tokio::test]
#[ignore = "run only as a child of another test"]
async fn starter_process() {
    let Ok(spec) = std::env::var(STARTER) else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).unwrap();
    let adapter = ExecAdapter::new(spec["state"].as_str().unwrap());
    let key = AttemptKey::parse(spec["key"].as_str().unwrap()).unwrap();
    let external = start(&adapter, &key, spec["input"].clone()).await;
    println!("STARTED {}", external.id);
    tokio::time::sleep(BOUND).await;
}

#[tokio::test]
async fn a_command_survives_the_death_of_the_process_that_started_it() {
    let state = tempfile::tempdir().unwrap();
    let runs = state.path().join("runs");
    let exec_dir = state.path().join("exec");
    let key = fresh_key("survive");
    let input = json!({
        "run": "echo ran >> \"$RUNS\"; sleep 2; echo '[COUT] survived = true'",
        "env": {"RUNS": runs},
    });
    let mut starter = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["starter_process", "--exact", "--ignored", "--nocapture"])
        .env(
            STARTER,
            json!({"state": exec_dir, "key": key, "input": input}).to_string(),
        )
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(starter.stdout.take().unwrap()).lines();
    let id = tokio::time::timeout(BOUND, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(id) = line.strip_prefix("STARTED ") {
                return id.to_owned();
            }
        }
        panic!("the starter ended without starting");
    })
    .await
    .unwrap();
    starter.kill().await.unwrap(); // SIGKILL, as a crash would

    let adapter = ExecAdapter::new(&exec_dir);
    let found = adapter.find(&key, &input).await.unwrap().unwrap();
    assert_eq!(found.id, id);
    assert_eq!(
        poll(&adapter, &key, &found).await.state,
        ExternalState::Running
    );
    // Recovery after a crash calls start again: it must adopt, not run a second time.
    assert_eq!(start(&adapter, &key, input).await, found);
    succeeded(&wait(&adapter, &key, &found).await);
    assert_eq!(
        adapter.outputs(&key, &found).await.unwrap()["survived"],
        true
    );
    assert_eq!(count_lines(&runs), 1);
}

/// Renders a stage's `with:` as the engine does: compiled with the kind's script keys when
/// the workflow loads, rendered against a context holding `event`.
fn render_with(with: &Value, event: &Value) -> Value {
    use baton_core::AdapterKind;
    let keys = ExecKind::default().script_keys();
    baton_core::TemplatedValue::compile_with_scripts(with, keys)
        .unwrap()
        .render(&baton_core::expr::to_val(&json!({ "event": event })))
        .unwrap()
}

#[tokio::test]
async fn templates_in_run_reach_the_shell_as_literal_text() {
    let state = tempfile::tempdir().unwrap();
    let adapter = ExecAdapter::new(state.path());
    // Each line puts the value somewhere else in the script and writes what the shell saw.
    let script = r#"printf %s ${{ .event.v }} > bare
printf %s "${{ .event.v }}" > double
printf %s "<${{ .event.v }}>" > double-text
printf %s '<${{ .event.v }}>' > single
x="$(printf %s. ${{ .event.v }})"; printf %s "$x" > command
y=${{ .event.v }}; printf %s "$y" > assigned
# a comment holding ${{ .event.v }}
echo done > comment
"#;
    let values = [
        "refs/heads/$(echo${IFS}x:$GH_SECRET:$OPS_TOKEN)",
        "'; touch pwned; '",
        "\"; touch pwned; \"",
        "`touch pwned`",
        "a\nb; touch pwned\n",
        "",
        "\\'\"$HOME*?[a]~{x,y} ${x:-y}",
        "#not a comment",
        "é ✓ '\"'",
    ];
    for value in values {
        let work = tempfile::tempdir().unwrap();
        let with = json!({"run": script, "workdir": work.path()});
        let input = render_with(&with, &json!({ "v": value }));
        let (outcome, _) = run(&adapter, input).await;
        succeeded(&outcome);
        let read = |name: &str| std::fs::read_to_string(work.path().join(name)).unwrap();
        for name in ["bare", "double", "assigned"] {
            assert_eq!(read(name), value, "{name} of {value:?}");
        }
        assert_eq!(read("double-text"), format!("<{value}>"), "{value:?}");
        assert_eq!(read("single"), format!("<{value}>"), "{value:?}");
        assert_eq!(read("command"), format!("{value}."), "{value:?}");
        assert_eq!(read("comment"), "done\n", "{value:?}");
        assert!(
            !work.path().join("pwned").exists(),
            "{value:?} ran a command"
        );
    }

    // A NUL cannot be in a script: the start is refused, nothing runs.
    let input = render_with(
        &json!({"run": "echo ${{ .event.v }}"}),
        &json!({"v": "a\u{0}b"}),
    );
    let refused = adapter
        .start(&request(&fresh_key("nul"), input))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("NUL"), "{refused}");
}

#[tokio::test]
async fn commands_get_a_small_environment_that_never_holds_hidden_variables() {
    // Cargo sets these for the test process, so they stand for any variable of baton's.
    let (extra, secret) = ("CARGO_PKG_NAME", "CARGO_MANIFEST_DIR");
    assert!(std::env::var_os(extra).is_some() && std::env::var_os(secret).is_some());
    let state = tempfile::tempdir().unwrap();
    let names = |adapter: ExecAdapter| async move {
        let (outcome, _) = run(
            &adapter,
            json!({"run": "env > \"$OUT\"", "env": {"OUT": state_file(&adapter)}}),
        )
        .await;
        succeeded(&outcome);
        let text = std::fs::read_to_string(state_file(&adapter)).unwrap();
        text.lines()
            .filter_map(|l| l.split_once('=').map(|(n, _)| n.to_owned()))
            .collect::<Vec<String>>()
    };
    fn state_file(adapter: &ExecAdapter) -> String {
        adapter.state_dir().join("env.txt").display().to_string()
    }
    let hidden = || [secret.to_owned()];

    let basic = names(ExecAdapter::new(state.path()).hiding_env(hidden())).await;
    assert!(basic.iter().any(|n| n == "PATH"), "{basic:?}");
    assert!(basic.iter().any(|n| n == "BATON_RUN_ID"), "{basic:?}");
    assert!(
        !basic.iter().any(|n| n == extra || n == secret),
        "{basic:?}"
    );
    assert!(
        basic.iter().all(|n| n.starts_with("BATON_")
            || n.starts_with("LC_")
            || n == "OUT"
            || n == "PWD"
            || n == "SHLVL"
            || n == "_"
            || baton_adapter_exec::BASIC_ENV.contains(&n.as_str())),
        "{basic:?}"
    );

    let listed = names(
        ExecAdapter::new(state.path())
            .inheriting_env(InheritEnv::Names(vec![extra.into(), secret.into()]))
            .hiding_env(hidden()),
    )
    .await;
    assert!(listed.iter().any(|n| n == extra), "{listed:?}");
    assert!(!listed.iter().any(|n| n == secret), "{listed:?}");

    let all = names(
        ExecAdapter::new(state.path())
            .inheriting_env(InheritEnv::All)
            .hiding_env(hidden()),
    )
    .await;
    assert!(all.iter().any(|n| n == extra), "{all:?}");
    assert!(!all.iter().any(|n| n == secret), "{all:?}");
}
