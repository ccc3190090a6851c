//! The docker adapter against the real Docker engine named by `BATON_DOCKER_HOST`, running
//! the static busybox image named by `BATON_BUSYBOX_IMAGE` (`scripts/containers.sh` starts
//! the one and loads the other). No mocks; every test uses its own attempt keys, so they
//! run in parallel and twice in a row.

use std::collections::HashMap;
use std::time::Duration;

use baton_adapter_docker::{ATTEMPT_LABEL, DockerAdapter, DockerKind, container_name};
use baton_adapter_kit::harness::{
    TableSecrets, expect_error, poll_to_end, poll_until, start_request,
};
use baton_adapter_kit::{Scenario, fresh_key, run_conformance};
use baton_core::{
    Adapter, AdapterKind, AttemptKey, ExternalRef, ExternalState, PollOutcome, StartRequest, Waker,
};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, StartContainerOptions,
};
use serde_json::{Map, Value, json};

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `scripts/containers.sh` (it starts a Docker engine and loads the busybox image) and export what it prints")
    })
}

fn host() -> String {
    required("BATON_DOCKER_HOST")
}

fn image() -> String {
    required("BATON_BUSYBOX_IMAGE")
}

/// An adapter on the test engine keeping its records in `state`, stopping with a 1 s grace.
fn adapter(state: &std::path::Path) -> DockerAdapter {
    let block = json!({"host": host(), "state_dir": state.to_string_lossy(), "stop_grace": "1s"});
    let kind = DockerKind::new(state);
    assert_eq!(kind.validate_instance(&block), []);
    let wrong = kind.validate_instance(&json!({"host": "docker.sock", "stop_grace": "1y"}));
    assert_eq!(
        baton_core::FieldError::paths(&wrong),
        ["host", "stop_grace"]
    );
    let built = kind
        .build("local", &block, &TableSecrets::default())
        .unwrap();
    assert_eq!(built.kind(), "docker");
    DockerAdapter::new(&baton_adapter_docker::config::parse_instance(&block, None, state).unwrap())
}

async fn engine() -> Docker {
    let path = host();
    let path = path
        .strip_prefix("unix://")
        .expect("a unix:// BATON_DOCKER_HOST");
    Docker::connect_with_unix(path, 30, bollard::API_DEFAULT_VERSION)
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
}

/// Every container (any state) carrying the attempt label of `key`.
async fn containers_of(docker: &Docker, key: &AttemptKey) -> Vec<String> {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_owned(),
            vec![format!("{ATTEMPT_LABEL}={key}")],
        )])),
        ..ListContainersOptions::default()
    };
    docker
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// A stage running `script` with busybox's `sh -c`.
fn shell(script: &str) -> Value {
    json!({"image": image(), "command": ["sh", "-c", script]})
}

fn with(mut stage: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        stage[k] = v.clone();
    }
    stage
}

/// An attempt run to its end on an adapter of its own.
struct Ran {
    adapter: DockerAdapter,
    key: AttemptKey,
    external: ExternalRef,
    end: PollOutcome,
    _state: tempfile::TempDir,
}

impl Ran {
    async fn outputs(&self) -> Map<String, Value> {
        self.adapter
            .outputs(&self.key, &self.external)
            .await
            .unwrap()
    }

    fn ended(&self, state: ExternalState) {
        assert_eq!(self.end.state, state, "{:?}", self.end);
    }

    fn message(&self) -> &str {
        self.end.message.as_deref().unwrap_or_default()
    }

    /// No container of the attempt is left on the engine.
    async fn left_nothing(&self) {
        assert_eq!(
            containers_of(&engine().await, &self.key).await,
            Vec::<String>::new()
        );
    }
}

/// Starts `stage` under a fresh key (its stage named `label`) and polls it to its end.
async fn run(label: &str, stage: Value) -> Ran {
    let state = tempfile::tempdir().unwrap();
    let adapter = adapter(state.path());
    let key = fresh_key(label);
    let mut external = adapter.start(&start_request(&key, stage)).await.unwrap();
    let end = poll_to_end(&adapter, &key, &mut external).await;
    Ran {
        adapter,
        key,
        external,
        end,
        _state: state,
    }
}

const SUCCEEDED: ExternalState = ExternalState::Succeeded { warnings: false };

/// What a baton killed between the create and the start of `key`'s container leaves: a
/// container of its name and label (unless `body` has labels), made by hand from `body`;
/// its id.
async fn create_by_hand(
    docker: &Docker,
    key: &AttemptKey,
    mut body: ContainerCreateBody,
) -> String {
    body.image = Some(image());
    body.labels.get_or_insert_with(|| {
        HashMap::from([(ATTEMPT_LABEL.to_owned(), key.as_str().to_owned())])
    });
    body.host_config = Some(HostConfig {
        network_mode: Some("none".into()),
        ..HostConfig::default()
    });
    let options = CreateContainerOptions {
        name: Some(container_name(key)),
        ..CreateContainerOptions::default()
    };
    docker
        .create_container(Some(options), body)
        .await
        .unwrap()
        .id
}

#[tokio::test]
async fn input_reaches_the_component_three_ways_and_its_file_is_read_only() {
    let script = r#"
        echo "[COUT] env = $CO_DATA"
        echo "[COUT] stdin = $(cat)"
        echo "[COUT] file = $(cat "$BATON_INPUT")"
        if echo overwritten > "$BATON_INPUT" 2>/dev/null; then echo "[COUT] read_only = false"; else echo "[COUT] read_only = true"; fi
        echo "[COUT] names = $BATON_RUN_ID/$BATON_STAGE/$BATON_ATTEMPT"
    "#;
    let input = json!({"commit": "abc123", "files": ["a.rs", "b rs"], "n": 3});
    let ran = run("input", with(shell(script), json!({"input": input}))).await;
    ran.ended(SUCCEEDED);
    let outputs = ran.outputs().await;
    assert_eq!(outputs["env"], input);
    assert_eq!(outputs["stdin"], input);
    assert_eq!(outputs["file"], input);
    assert_eq!(outputs["read_only"], json!(true));
    assert_eq!(outputs["names"], json!(ran.key.as_str()));
    assert_eq!(outputs["exit_code"], json!(0));
    ran.left_nothing().await;
}

#[tokio::test]
async fn the_whole_with_block_is_the_input_when_none_is_given() {
    let stage = with(
        shell(r#"echo "[COUT] got = $CO_DATA""#),
        json!({"env": {"MODE": "x"}}),
    );
    let ran = run("default-input", stage.clone()).await;
    ran.ended(SUCCEEDED);
    assert_eq!(ran.outputs().await["got"], stage);
}

#[tokio::test]
async fn outputs_come_from_cout_lines_and_the_output_file_which_wins() {
    // Not root: the output file is written by any user and read through the engine.
    let script = r#"
        echo "[COUT] a = 1"
        echo "[COUT] b = from-cout"
        echo '{"b": "from-file", "c": [4, 5]}' > "$BATON_OUTPUT"
        echo "[COUT] who = $(id -u):$(id -g) in $(pwd)"
    "#;
    // The image's own entrypoint and command are replaced, and it is already there.
    let stage = json!({"image": image(), "entrypoint": ["sh", "-c"], "command": [script],
        "user": "1000:1000", "workdir": "/work", "pull": "never"});
    let ran = run("outputs", stage).await;
    ran.ended(SUCCEEDED);
    assert_eq!(
        Value::Object(ran.outputs().await),
        json!({"a": 1, "b": "from-file", "c": [4, 5], "who": "1000:1000 in /work", "exit_code": 0})
    );
}

#[tokio::test]
async fn an_output_file_that_is_not_an_object_fails_a_clean_exit() {
    let ran = run("bad-output", shell(r#"echo '[1, 2]' > "$BATON_OUTPUT""#)).await;
    ran.ended(ExternalState::Failed);
    assert!(
        ran.message()
            .contains("must hold a JSON object, but it holds an array"),
        "{}",
        ran.message()
    );
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_the_log_tail() {
    // The engine orders its log by arrival, and stdout and stderr are two pipes: the pause
    // puts the stderr line last.
    let script = "for i in $(seq 1 30); do echo line $i; done; sleep 1; echo oops >&2; exit 3";
    let ran = run("fails", shell(script)).await;
    ran.ended(ExternalState::Failed);
    assert_eq!(ran.end.raw.as_deref(), Some("exit 3"));
    let message = ran.message();
    assert!(
        message.starts_with("the container exited with code 3; the end of its log:\n"),
        "{message}"
    );
    assert!(message.contains("line 30\noops"), "{message}");
    // Twenty lines: the twenty-first from the end is not there.
    assert!(
        message.contains("line 12\n") && !message.contains("line 11\n"),
        "{message}"
    );
    assert_eq!(ran.outputs().await["exit_code"], json!(3));
    let logs = ran.adapter.logs(&ran.key, &ran.external).await.unwrap();
    assert!(logs.text.unwrap().ends_with("oops"));
    ran.left_nothing().await;
}

#[tokio::test]
async fn a_missing_entrypoint_fails_the_stage_and_leaves_nothing() {
    let ran = run(
        "no-entrypoint",
        json!({"image": image(), "command": ["/no/such/program"]}),
    )
    .await;
    ran.ended(ExternalState::Failed);
    assert!(
        ran.message().contains("/no/such/program"),
        "{}",
        ran.message()
    );
    ran.left_nothing().await;
}

#[tokio::test]
async fn a_timeout_stops_and_removes_the_container() {
    let state = tempfile::tempdir().unwrap();
    let adapter = adapter(state.path());
    let docker = engine().await;
    let key = fresh_key("timeout");
    let request = StartRequest {
        timeout: Duration::from_secs(2),
        ..start_request(&key, shell("echo started; sleep 60"))
    };
    let mut external = adapter.start(&request).await.unwrap();
    assert_eq!(containers_of(&docker, &key).await.len(), 1);
    let seen = poll_until(
        &adapter,
        &key,
        &mut external,
        (Duration::from_millis(200), Duration::from_secs(20)),
        |_| false,
    )
    .await;
    assert!(
        seen.iter()
            .any(|o| o.message.as_deref() == Some("running: started")),
        "the last log line is the progress: {seen:?}"
    );
    let end = seen.last().unwrap();
    assert_eq!(end.state, ExternalState::Failed, "{end:?}");
    assert_eq!(end.raw.as_deref(), Some("exit 137"), "{end:?}");
    assert!(
        end.message.as_deref().unwrap().starts_with("timed out"),
        "{end:?}"
    );
    assert_eq!(containers_of(&docker, &key).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_cancel_stops_and_removes_the_container() {
    let state = tempfile::tempdir().unwrap();
    let adapter = adapter(state.path());
    let docker = engine().await;
    let key = fresh_key("cancel");
    let mut external = adapter
        .start(&start_request(&key, shell("sleep 60")))
        .await
        .unwrap();
    let seen = poll_until(
        &adapter,
        &key,
        &mut external,
        (Duration::from_millis(100), Duration::from_secs(10)),
        |o| o.state == ExternalState::Running,
    )
    .await;
    assert_eq!(seen.last().unwrap().state, ExternalState::Running);
    let started = std::time::Instant::now();
    adapter.cancel(&key, &external).await.unwrap();
    // busybox's sh as process 1 ignores SIGTERM: only the kill after the 1 s grace (not
    // the engine's default 10 s) ends it.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert_eq!(containers_of(&docker, &key).await, Vec::<String>::new());
    let end = poll_to_end(&adapter, &key, &mut external).await;
    assert_eq!(end.state, ExternalState::Cancelled, "{end:?}");
    assert_eq!(end.raw.as_deref(), Some("exit 137"), "{end:?}");
    adapter.cancel(&key, &external).await.unwrap();
    assert_eq!(
        poll_to_end(&adapter, &key, &mut external).await.state,
        ExternalState::Cancelled
    );
}

#[tokio::test]
async fn a_cancel_sends_the_stop_signal_first() {
    let state = tempfile::tempdir().unwrap();
    let adapter = adapter(state.path());
    let key = fresh_key("graceful");
    let script = "trap 'echo stopping; exit 5' TERM; echo ready; sleep 60 & wait";
    let mut external = adapter
        .start(&start_request(&key, shell(script)))
        .await
        .unwrap();
    poll_until(
        &adapter,
        &key,
        &mut external,
        (Duration::from_millis(100), Duration::from_secs(10)),
        |o| o.message.as_deref() == Some("running: ready"),
    )
    .await;
    adapter.cancel(&key, &external).await.unwrap();
    let end = poll_to_end(&adapter, &key, &mut external).await;
    assert_eq!(end.state, ExternalState::Cancelled, "{end:?}");
    assert_eq!(end.raw.as_deref(), Some("exit 5"), "{end:?}");
    assert!(
        end.message.as_deref().unwrap().ends_with("ready\nstopping"),
        "{end:?}"
    );
}

#[tokio::test]
async fn the_engine_is_woken_when_the_container_stops() {
    let state = tempfile::tempdir().unwrap();
    let adapter = adapter(state.path());
    let (woken, mut wakes) = tokio::sync::mpsc::unbounded_channel();
    adapter.attach(Waker::new(move |key: &AttemptKey| {
        let _ = woken.send(key.clone());
    }));
    let key = fresh_key("wake");
    let mut external = adapter
        .start(&start_request(&key, shell("sleep 1")))
        .await
        .unwrap();
    // No poll at all: only the wait on the engine can send this.
    let wake = tokio::time::timeout(Duration::from_secs(20), wakes.recv()).await;
    assert_eq!(wake.expect("woken within 20 s"), Some(key.clone()));
    // The poll the wake asks for records the container and removes it.
    let end = poll_to_end(&adapter, &key, &mut external).await;
    assert_eq!(end.state, SUCCEEDED, "{end:?}");
    assert_eq!(
        containers_of(&engine().await, &key).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn limits_labels_and_network_reach_the_engine() {
    let state = tempfile::tempdir().unwrap();
    let adapter = adapter(state.path());
    let docker = engine().await;
    let key = fresh_key("limits");
    let stage = with(shell("sleep 60"), json!({"memory": "64m", "cpus": 0.5}));
    let external = adapter.start(&start_request(&key, stage)).await.unwrap();
    let inspected = docker.inspect_container(&external.id, None).await.unwrap();
    assert_eq!(
        inspected.name.as_deref(),
        Some(format!("/{}", container_name(&key)).as_str())
    );
    let host_config = inspected.host_config.unwrap();
    assert_eq!(host_config.memory, Some(64 * 1024 * 1024));
    assert_eq!(host_config.nano_cpus, Some(500_000_000));
    assert_eq!(host_config.network_mode.as_deref(), Some("none"));
    let labels = inspected.config.unwrap().labels.unwrap();
    assert_eq!(labels["baton.attempt"], key.as_str());
    assert_eq!(labels["baton.run"], key.run_id());
    assert_eq!(labels["baton.stage"], key.stage_id());
    adapter.cancel(&key, &external).await.unwrap();
    assert_eq!(containers_of(&docker, &key).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_second_start_and_a_fresh_adapters_find_adopt_the_same_container() {
    let state = tempfile::tempdir().unwrap();
    let first = adapter(state.path());
    let docker = engine().await;
    let key = fresh_key("adopt");
    let stage = shell("sleep 2; echo '[COUT] done = yes'");
    let mut external = first
        .start(&start_request(&key, stage.clone()))
        .await
        .unwrap();
    let again = first
        .start(&start_request(&key, stage.clone()))
        .await
        .unwrap();
    assert_eq!(again.id, external.id);
    // A new process: a new adapter on the same state folder.
    let second = adapter(state.path());
    let found = second.find(&key, &stage).await.unwrap().unwrap();
    assert_eq!(found.id, external.id);
    assert_eq!(containers_of(&docker, &key).await, [external.id.clone()]);
    let end = poll_to_end(&second, &key, &mut external).await;
    assert_eq!(
        end.state,
        ExternalState::Succeeded { warnings: false },
        "{end:?}"
    );
    assert_eq!(
        second.outputs(&key, &external).await.unwrap()["done"],
        json!("yes")
    );
    // Recorded and removed: find still answers, from the record, and start starts nothing.
    assert_eq!(
        second.find(&key, &stage).await.unwrap().unwrap().id,
        external.id
    );
    assert_eq!(
        first.start(&start_request(&key, stage)).await.unwrap().id,
        external.id
    );
    assert_eq!(containers_of(&docker, &key).await, Vec::<String>::new());
}

#[tokio::test]
async fn find_starts_a_container_that_was_created_but_never_started() {
    let state = tempfile::tempdir().unwrap();
    let docker = engine().await;
    let key = fresh_key("created");
    let body = ContainerCreateBody {
        cmd: Some(vec![
            "sh".into(),
            "-c".into(),
            "echo \"[COUT] stdin = $(cat)\"".into(),
        ]),
        open_stdin: Some(true),
        stdin_once: Some(true),
        attach_stdin: Some(true),
        ..ContainerCreateBody::default()
    };
    let created = create_by_hand(&docker, &key, body).await;
    let adapter = adapter(state.path());
    let stage = json!({"image": image(), "input": {"x": 1}});
    let mut found = adapter.find(&key, &stage).await.unwrap().unwrap();
    assert_eq!(found.id, created);
    let end = poll_to_end(&adapter, &key, &mut found).await;
    assert_eq!(end.state, SUCCEEDED, "{end:?}");
    assert_eq!(
        adapter.outputs(&key, &found).await.unwrap()["stdin"],
        json!({"x": 1})
    );
    assert_eq!(containers_of(&docker, &key).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_container_of_the_name_without_the_attempts_label_is_never_adopted() {
    let state = tempfile::tempdir().unwrap();
    let docker = engine().await;
    let key = fresh_key("stranger");
    let body = ContainerCreateBody {
        cmd: Some(vec!["true".into()]),
        labels: Some(HashMap::from([(
            ATTEMPT_LABEL.to_owned(),
            "other/run/1".to_owned(),
        )])),
        ..ContainerCreateBody::default()
    };
    let stranger = create_by_hand(&docker, &key, body).await;
    let adapter = adapter(state.path());
    let stage = shell("true");
    expect_error(
        adapter.find(&key, &stage).await,
        "Protocol",
        "will not adopt it",
    );
    expect_error(
        adapter.start(&start_request(&key, stage)).await,
        "Protocol",
        "will not adopt it",
    );
    docker
        .remove_container(
            &stranger,
            None::<bollard::query_parameters::RemoveContainerOptions>,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_container_left_after_its_record_is_swept_at_first_use() {
    let docker = engine().await;
    let ran = run("sweep", shell("echo hi")).await;
    ran.ended(SUCCEEDED);
    // A baton that died after the record and before the removal leaves an ended container.
    let body = ContainerCreateBody {
        cmd: Some(vec!["true".into()]),
        ..ContainerCreateBody::default()
    };
    let left = create_by_hand(&docker, &ran.key, body).await;
    docker
        .start_container(&left, None::<StartContainerOptions>)
        .await
        .unwrap();
    let _ = futures::StreamExt::next(&mut docker.wait_container(&left, None)).await;
    assert_eq!(containers_of(&docker, &ran.key).await, [left]);
    // The next baton's adapter sweeps it at its first call, whatever the call is about.
    let next = adapter(ran._state.path());
    assert_eq!(
        next.find(&fresh_key("other"), &Value::Null).await.unwrap(),
        None
    );
    ran.left_nothing().await;
}

#[tokio::test]
async fn images_that_cannot_be_had_fail_in_words() {
    let state = tempfile::tempdir().unwrap();
    let adapter = adapter(state.path());
    let never = json!({"image": "baton-test/absent:1", "pull": "never"});
    expect_error(
        adapter
            .start(&start_request(&fresh_key("never"), never))
            .await,
        "NotFound",
        "image `baton-test/absent:1` is not on the engine, and `pull` is `never`",
    );
    // A registry on a closed loopback port: the pull fails at once, not at the timeout.
    let absent = json!({"image": "127.0.0.1:9/absent:1"});
    expect_error(
        adapter
            .start(&start_request(&fresh_key("pull"), absent))
            .await,
        "NotFound",
        "cannot pull image `127.0.0.1:9/absent:1`",
    );
    // The engine checks a network when it starts the container: the stage fails then.
    let wrong = json!({"image": image(), "network": "no-such-network"});
    let key = fresh_key("network");
    let mut external = adapter.start(&start_request(&key, wrong)).await.unwrap();
    let end = poll_to_end(&adapter, &key, &mut external).await;
    assert_eq!(end.state, ExternalState::Failed, "{end:?}");
    let message = end.message.unwrap();
    assert!(
        message.starts_with("the engine could not start the container: "),
        "{message}"
    );
    assert!(message.contains("no-such-network"), "{message}");
    assert_eq!(
        containers_of(&engine().await, &key).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn the_adapter_passes_the_conformance_kit() {
    let state = tempfile::tempdir().unwrap();
    run_conformance(Scenario {
        kind: std::sync::Arc::new(DockerKind::new(state.path())),
        adapter: std::sync::Arc::new(adapter(state.path())),
        valid_with: json!({"image": "${{ .event.image }}", "memory": "64m", "command": ["sh", "-c", "true"]}),
        invalid_with: json!({"image": "bb:1", "memory": "lots"}),
        succeed: shell("echo '[COUT] ok = 1'"),
        fail: shell("echo nope >&2; exit 1"),
        long: shell("sleep 60"),
        success_signal: None,
        failure_signal: None,
        side_effect_free: false,
        // Another process on this machine: the same engine and the same state folder.
        replica: Some(std::sync::Arc::new(adapter(state.path()))),
        deadline: Duration::from_secs(30),
    })
    .await;
}
