//! The engine against a real SQLite store and a scriptable in-process adapter.
//!
//! Each stage's `with` tells the test adapter what to do: `{"result": "succeed" | "fail" |
//! "hang" | "blocked", "polls": N, "outputs": {...}, "fail_times": N}`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::{
    Adapter, AdapterError, AttemptKey, ExternalRef, ExternalState, Logs, PollOutcome, PollRequest,
    RunStatus, StageDefaults, StageStatus, StartRequest, Workflow, WorkflowSpec,
};
use baton_engine::{DeliveryOutcome, Engine, EngineConfig};
use baton_store::{Change, Intake, NewDelivery, RunSnapshot, SqliteStore, Store};
use serde_json::{Map, Value, json};

#[allow(dead_code)] // What only the fencing tests use of it.
mod support;
use support::{DyingStore, manual, workflow};

#[derive(Default)]
struct Script {
    starts: Mutex<HashMap<String, u32>>,
    polls: Mutex<HashMap<String, u32>>,
    cancels: Mutex<Vec<String>>,
    started: Mutex<HashMap<String, ExternalRef>>,
    inputs: Mutex<HashMap<String, Value>>,
    output_reads: Mutex<HashMap<String, u32>>,
    /// Every call of `start`, throttled or not, with when it came.
    start_calls: Mutex<Vec<(String, std::time::Instant)>>,
}

impl Script {
    fn starts_of(&self, stage: &str) -> u32 {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.split('/').nth(1) == Some(stage))
            .map(|(_, n)| n)
            .sum()
    }
    fn input_of(&self, stage: &str) -> Value {
        self.inputs
            .lock()
            .unwrap()
            .iter()
            .find(|(k, _)| k.split('/').nth(1) == Some(stage))
            .map(|(_, v)| v.clone())
            .unwrap_or(Value::Null)
    }
}

#[derive(Clone, Default)]
struct ScriptAdapter(Arc<Script>);

impl std::ops::Deref for ScriptAdapter {
    type Target = Script;
    fn deref(&self) -> &Script {
        &self.0
    }
}

#[async_trait]
impl Adapter for ScriptAdapter {
    fn kind(&self) -> &'static str {
        "script"
    }
    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        let calls = {
            let mut calls = self.0.start_calls.lock().unwrap();
            calls.push((request.key.to_string(), std::time::Instant::now()));
            calls.len() as u64
        };
        // `throttled_ms`: the first start is refused until a quota frees after that long.
        if let Some(ms) = request.input["throttled_ms"].as_u64()
            && calls == 1
        {
            return Err(AdapterError::Throttled {
                message: "all 10 requests of the hour are spent".into(),
                retry_after: Duration::from_millis(ms),
            });
        }
        if request.input["transient_once"] == json!(true) && calls == 1 {
            return Err(AdapterError::Transient("502 Bad Gateway".into()));
        }
        *self
            .0
            .starts
            .lock()
            .unwrap()
            .entry(request.key.to_string())
            .or_default() += 1;
        self.0
            .inputs
            .lock()
            .unwrap()
            .insert(request.key.to_string(), request.input.clone());
        let ext = ExternalRef {
            id: format!("ext-{}", request.key),
            url: None,
            data: request.input.clone(),
        };
        self.0
            .started
            .lock()
            .unwrap()
            .insert(request.key.to_string(), ext.clone());
        Ok(ext)
    }
    async fn find(
        &self,
        key: &AttemptKey,
        _input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        Ok(self.0.started.lock().unwrap().get(key.as_str()).cloned())
    }
    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        let n = {
            let mut polls = self.0.polls.lock().unwrap();
            let n = polls.entry(request.key.to_string()).or_default();
            *n += 1;
            *n
        };
        let with = &request.external.data;
        if self
            .0
            .cancels
            .lock()
            .unwrap()
            .contains(&request.key.to_string())
        {
            return Ok(PollOutcome::state(ExternalState::Cancelled));
        }
        if n <= with["polls"].as_u64().unwrap_or(0) as u32 {
            return Ok(
                PollOutcome::state(ExternalState::Running).next_poll(Duration::from_millis(10))
            );
        }
        let fail_times = with["fail_times"].as_u64().unwrap_or(0) as u32;
        let state = match with["result"].as_str().unwrap_or("succeed") {
            "succeed" if request.key.attempt() <= fail_times => ExternalState::Failed,
            "succeed" => ExternalState::Succeeded { warnings: false },
            "fail" => ExternalState::Failed,
            "blocked" => match request.signal.and_then(|s| s["decision"].as_str()) {
                Some("approved") => ExternalState::Succeeded { warnings: false },
                Some(_) => ExternalState::Failed,
                None => ExternalState::Blocked,
            },
            "weird" => ExternalState::Unknown("sparkling".into()),
            _ => ExternalState::Running,
        };
        Ok(PollOutcome::state(state).next_poll(Duration::from_millis(20)))
    }
    async fn outputs(
        &self,
        key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        let flaky = external.data["flaky_outputs"].as_u64().unwrap_or(0) as u32;
        let n = {
            let mut reads = self.0.output_reads.lock().unwrap();
            let n = reads.entry(key.to_string()).or_default();
            *n += 1;
            *n
        };
        if n <= flaky {
            return Err(AdapterError::Transient(
                "503 while reading the artifact".into(),
            ));
        }
        Ok(external.data["outputs"]
            .as_object()
            .cloned()
            .unwrap_or_default())
    }
    async fn cancel(&self, key: &AttemptKey, _external: &ExternalRef) -> Result<(), AdapterError> {
        self.0.cancels.lock().unwrap().push(key.to_string());
        Ok(())
    }
    async fn cancel_explained(
        &self,
        key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<Option<String>, AdapterError> {
        self.cancel(key, external).await?;
        // `cancel_note`: what stopping the work did, as an adapter that undoes it says.
        Ok(external.data["cancel_note"].as_str().map(str::to_owned))
    }
    async fn logs(&self, _key: &AttemptKey, _external: &ExternalRef) -> Result<Logs, AdapterError> {
        Ok(Logs::default())
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    script: ScriptAdapter,
    engine: Engine,
}

fn config() -> EngineConfig {
    EngineConfig {
        poll_min: Duration::from_millis(20),
        poll_max: Duration::from_millis(200),
        call_timeout: Duration::from_secs(5),
        ..EngineConfig::default()
    }
}

fn engine_over(store: Arc<dyn Store>, script: &ScriptAdapter) -> Engine {
    let mut adapters: HashMap<String, Arc<dyn Adapter>> = HashMap::new();
    adapters.insert("script".into(), Arc::new(script.clone()));
    Engine::new(store, adapters, config())
}

async fn harness() -> Harness {
    harness_with(config()).await
}

async fn harness_with(config: EngineConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&format!("sqlite://{}", dir.path().join("e.db").display()))
            .await
            .unwrap(),
    );
    let script = ScriptAdapter::default();
    let mut adapters: HashMap<String, Arc<dyn Adapter>> = HashMap::new();
    adapters.insert("script".into(), Arc::new(script.clone()));
    let engine = Engine::new(store, adapters, config);
    engine.start().await.unwrap();
    Harness {
        _dir: dir,
        script,
        engine,
    }
}

impl Harness {
    async fn run(&self, stages: Value, event: Value) -> RunSnapshot {
        let id = self
            .engine
            .create_run(workflow(stages), event, manual())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.engine.wait(&id))
            .await
            .expect("run finished in time")
            .unwrap();
        self.engine.snapshot(&id).await.unwrap()
    }
}

fn stage<'a>(run: &'a RunSnapshot, id: &str) -> &'a baton_store::StageRecord {
    run.stages.iter().find(|s| s.stage_id == id).unwrap()
}

#[tokio::test]
async fn diamond_runs_in_order_and_passes_outputs_downstream() {
    let h = harness().await;
    let run = h
        .run(
            json!({
                "build": {"uses": "script", "with": {"polls": 2, "outputs": {"number": 7, "tag": "v1"}}},
                "test-a": {"uses": "script", "needs": ["build"], "with": {"n": "${{ .stages.build.outputs.number }}"}},
                "test-b": {"uses": "script", "needs": ["build"], "with": {"label": "tag=${{ .stages.build.outputs.tag }} ref=${{ .event.ref }}"}},
                "deploy": {"uses": "script", "needs": ["test-a", "test-b"]}
            }),
            json!({"ref": "main"}),
        )
        .await;
    assert_eq!(run.header.status, RunStatus::Succeeded, "{run:#?}");
    for s in &run.stages {
        assert_eq!(s.status, StageStatus::Succeeded, "{}", s.stage_id);
        assert_eq!(
            h.script.starts_of(&s.stage_id),
            1,
            "{} started once",
            s.stage_id
        );
    }
    assert_eq!(h.script.input_of("test-a"), json!({"n": 7}));
    assert_eq!(
        h.script.input_of("test-b"),
        json!({"label": "tag=v1 ref=main"})
    );
    assert_eq!(
        stage(&run, "build").outputs,
        Some(json!({"number": 7, "tag": "v1"}))
    );
    // deploy started only after both tests finished.
    assert!(stage(&run, "deploy").started_at >= stage(&run, "test-a").finished_at);
    assert!(stage(&run, "deploy").started_at >= stage(&run, "test-b").finished_at);
}

#[tokio::test]
async fn outputs_that_fail_transiently_are_read_again_not_failed() {
    let h = harness().await;
    let run = h
        .run(
            json!({"a": {"uses": "script", "with": {"flaky_outputs": 2, "outputs": {"v": 1}}}}),
            json!({}),
        )
        .await;
    assert_eq!(run.header.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(stage(&run, "a").outputs, Some(json!({"v": 1})));
    assert_eq!(stage(&run, "a").attempt, 1, "no new attempt was needed");
    assert_eq!(
        *h.script
            .output_reads
            .lock()
            .unwrap()
            .values()
            .next()
            .unwrap(),
        3
    );
}

#[tokio::test]
async fn a_throttled_start_waits_as_long_as_the_adapter_says_and_no_longer() {
    for (input, at_least, at_most) in [
        // A quota that frees in 700 ms: the retry waits that long, not poll_min (20 ms).
        (json!({"throttled_ms": 700}), 700, 3_000),
        // A plain passing failure: retried after poll_min.
        (json!({"transient_once": true}), 20, 600),
        // A quota that frees sooner than poll_min: poll_min still holds.
        (json!({"throttled_ms": 1}), 20, 600),
    ] {
        let h = harness().await;
        let run = h
            .run(
                json!({"a": {"uses": "script", "with": input.clone()}}),
                json!({}),
            )
            .await;
        assert_eq!(run.header.status, RunStatus::Succeeded, "{input}: {run:#?}");
        assert_eq!(h.script.starts_of("a"), 1, "{input}");
        let calls = h.script.start_calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "{input}: {calls:?}");
        let waited = calls[1].1.duration_since(calls[0].1);
        assert!(
            waited >= Duration::from_millis(at_least) && waited < Duration::from_millis(at_most),
            "{input}: the retry came after {waited:?}"
        );
    }
}

#[tokio::test]
async fn a_throttled_start_says_how_long_it_waits() {
    let h = harness().await;
    let id = h
        .engine
        .create_run(
            workflow(json!({"a": {"uses": "script", "with": {"throttled_ms": 60_000}}})),
            json!({}),
            manual(),
        )
        .await
        .unwrap();
    let mut message = None;
    for _ in 0..100 {
        let run = h.engine.snapshot(&id).await.unwrap();
        message = stage(&run, "a").message.clone();
        if message.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        message.as_deref(),
        Some("start deferred for 1m: all 10 requests of the hour are spent")
    );
    assert_eq!(h.script.start_calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn if_false_skips_and_skips_propagate() {
    let h = harness().await;
    let run = h
        .run(
            json!({
                "a": {"uses": "script"},
                "b": {"uses": "script", "needs": ["a"], "if": ".event.deploy == true"},
                "c": {"uses": "script", "needs": ["b"]},
                "d": {"uses": "script", "needs": ["a"], "if": ".stages.a.status == \"succeeded\""}
            }),
            json!({"deploy": false}),
        )
        .await;
    assert_eq!(run.header.status, RunStatus::Succeeded);
    assert_eq!(stage(&run, "b").status, StageStatus::Skipped);
    assert_eq!(stage(&run, "b").reason.as_deref(), Some("condition"));
    assert_eq!(stage(&run, "c").status, StageStatus::Skipped);
    assert_eq!(stage(&run, "c").reason.as_deref(), Some("needs_skipped"));
    assert_eq!(stage(&run, "d").status, StageStatus::Succeeded);
    assert_eq!(h.script.starts_of("b") + h.script.starts_of("c"), 0);
}

#[tokio::test]
async fn retries_make_new_attempts_until_one_succeeds() {
    let h = harness().await;
    let run = h.run(json!({"flaky": {"uses": "script", "with": {"fail_times": 2}, "retry": {"attempts": 3, "backoff": "10ms"}}}), json!({})).await;
    assert_eq!(run.header.status, RunStatus::Succeeded);
    let s = stage(&run, "flaky");
    assert_eq!(s.attempt, 3);
    let statuses: Vec<_> = run.attempts.iter().map(|a| (a.attempt, a.status)).collect();
    assert_eq!(
        statuses,
        [
            (1, StageStatus::Failed),
            (2, StageStatus::Failed),
            (3, StageStatus::Succeeded)
        ]
    );
    // Each attempt had its own key.
    assert_eq!(h.script.starts.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn retries_run_out_and_halt_cancels_the_other_branch() {
    let h = harness().await;
    let run = h
        .run(
            json!({
                "broken": {"uses": "script", "with": {"result": "fail"}, "retry": {"attempts": 2, "backoff": "10ms"}},
                "slow": {"uses": "script", "with": {"result": "hang"}},
                "after": {"uses": "script", "needs": ["broken"]}
            }),
            json!({}),
        )
        .await;
    assert_eq!(run.header.status, RunStatus::Failed);
    assert_eq!(run.header.message.as_deref(), Some("stage `broken` failed"));
    assert_eq!(stage(&run, "broken").attempt, 2);
    assert_eq!(stage(&run, "slow").status, StageStatus::Cancelled);
    assert_eq!(stage(&run, "after").status, StageStatus::Cancelled);
    assert!(
        h.script
            .cancels
            .lock()
            .unwrap()
            .iter()
            .any(|k| k.contains("/slow/")),
        "the running stage was cancelled through its adapter"
    );
}

#[tokio::test]
async fn continue_and_ignore_policies() {
    let h = harness().await;
    let run = h
        .run(
            json!({
                "lint": {"uses": "script", "with": {"result": "fail"}, "on_failure": "ignore"},
                "unit": {"uses": "script", "with": {"result": "fail"}, "on_failure": "continue"},
                "docs": {"uses": "script", "with": {"polls": 3}},
                "package": {"uses": "script", "needs": ["lint"]},
                "publish": {"uses": "script", "needs": ["unit"]}
            }),
            json!({}),
        )
        .await;
    assert_eq!(run.header.status, RunStatus::Failed);
    assert_eq!(stage(&run, "lint").status, StageStatus::Failed);
    assert_eq!(
        stage(&run, "package").status,
        StageStatus::Succeeded,
        "ignore counts as success for needs"
    );
    assert_eq!(
        stage(&run, "docs").status,
        StageStatus::Succeeded,
        "continue lets other branches finish"
    );
    assert_eq!(stage(&run, "publish").status, StageStatus::Skipped);
    assert_eq!(
        stage(&run, "publish").reason.as_deref(),
        Some("upstream_failed")
    );
}

#[tokio::test]
async fn timeout_fails_the_stage_and_cancels_the_work() {
    let h = harness().await;
    let run = h
        .run(
            json!({"stuck": {"uses": "script", "with": {"result": "weird"}, "timeout": "300ms"}}),
            json!({}),
        )
        .await;
    let s = stage(&run, "stuck");
    assert_eq!(s.status, StageStatus::Failed);
    assert_eq!(s.reason.as_deref(), Some("timed_out"));
    assert!(
        s.message
            .as_deref()
            .unwrap()
            .contains("timed out after 300ms")
    );
    assert_eq!(h.script.cancels.lock().unwrap().len(), 1);
    assert!(
        *h.script.polls.lock().unwrap().values().next().unwrap() > 1,
        "an unknown state is not terminal: polling went on"
    );
}

#[tokio::test]
async fn what_a_cancel_undid_is_said_after_the_timeout_and_the_cancel() {
    let h = harness().await;
    let note = "rolled back deployment \"web\" to revision 3";
    let run = h
        .run(
            json!({"deploy": {"uses": "script", "with": {"result": "hang", "cancel_note": note}, "timeout": "300ms"}}),
            json!({}),
        )
        .await;
    let s = stage(&run, "deploy");
    assert_eq!(s.reason.as_deref(), Some("timed_out"));
    assert_eq!(
        s.message.as_deref(),
        Some(format!("timed out after 300ms; {note}").as_str())
    );
    let id = h.engine.create_run(workflow(json!({"deploy": {"uses": "script", "with": {"result": "hang", "cancel_note": note}}})), json!({}), manual()).await.unwrap();
    wait_for(|| h.script.starts_of("deploy") == 2).await;
    h.engine.cancel_run(&id).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), h.engine.wait(&id))
        .await
        .unwrap()
        .unwrap();
    let run = h.engine.snapshot(&id).await.unwrap();
    assert_eq!(
        stage(&run, "deploy").message.as_deref(),
        Some(format!("cancelled; {note}").as_str())
    );
}

#[tokio::test]
async fn runtime_jq_error_fails_the_stage_with_the_jq_message() {
    let h = harness().await;
    let run = h
        .run(
            json!({"a": {"uses": "script", "with": {"x": "${{ .event.n + 1 }}"}}}),
            json!({"n": "text"}),
        )
        .await;
    let s = stage(&run, "a");
    assert_eq!(s.status, StageStatus::Failed);
    assert_eq!(s.reason.as_deref(), Some("expression"));
    assert!(
        s.message.as_deref().unwrap().contains("cannot"),
        "{:?}",
        s.message
    );
    assert_eq!(h.script.starts_of("a"), 0);
}

#[tokio::test]
async fn cancelling_a_run_cancels_running_stages_through_the_adapter() {
    let h = harness().await;
    let id = h.engine.create_run(workflow(json!({"a": {"uses": "script", "with": {"result": "hang"}}, "b": {"uses": "script", "needs": ["a"]}})), json!({}), manual()).await.unwrap();
    wait_for(|| h.script.starts_of("a") == 1).await;
    h.engine.cancel_run(&id).await.unwrap();
    let header = tokio::time::timeout(Duration::from_secs(10), h.engine.wait(&id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header.status, RunStatus::Cancelled);
    let run = h.engine.snapshot(&id).await.unwrap();
    assert_eq!(stage(&run, "a").status, StageStatus::Cancelled);
    assert_eq!(stage(&run, "b").status, StageStatus::Cancelled);
    assert_eq!(
        h.script.cancels.lock().unwrap().as_slice(),
        [format!("{id}/a/1")]
    );
}

#[tokio::test]
async fn approvals_wait_for_a_signal() {
    let h = harness().await;
    let id = h
        .engine
        .create_run(
            workflow(json!({"gate": {"uses": "script", "with": {"result": "blocked"}}})),
            json!({}),
            manual(),
        )
        .await
        .unwrap();
    wait_for_async(|| async {
        h.engine.snapshot(&id).await.unwrap().stages[0].status == StageStatus::Waiting
    })
    .await;
    h.engine
        .signal(&id, "gate", json!({"decision": "approved", "by": "ana"}))
        .await
        .unwrap();
    let header = tokio::time::timeout(Duration::from_secs(10), h.engine.wait(&id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header.status, RunStatus::Succeeded);
    assert!(
        h.engine.signal(&id, "gate", json!({})).await.is_err(),
        "a finished stage takes no signal"
    );
}

#[tokio::test]
async fn a_failed_stage_retried_by_hand_runs_again_with_everything_downstream() {
    let h = harness().await;
    // b's first attempt fails; a later attempt succeeds.
    let wf = workflow(json!({
        "a": {"uses": "script"},
        "b": {"uses": "script", "needs": ["a"], "with": {"fail_times": 1}, "on_failure": "continue"},
        "c": {"uses": "script", "needs": ["b"]}
    }));
    let id = h.engine.create_run(wf, json!({}), manual()).await.unwrap();
    assert_eq!(h.engine.wait(&id).await.unwrap().status, RunStatus::Failed);
    assert_eq!(
        stage(&h.engine.snapshot(&id).await.unwrap(), "c").status,
        StageStatus::Skipped
    );

    assert!(
        h.engine.retry_stage(&id, "a").await.is_err(),
        "a succeeded: nothing to retry"
    );
    assert_eq!(h.engine.retry_stage(&id, "b").await.unwrap(), 2);
    let header = tokio::time::timeout(Duration::from_secs(10), h.engine.wait(&id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        header.status,
        RunStatus::Succeeded,
        "the run was reopened and finished"
    );
    let run = h.engine.snapshot(&id).await.unwrap();
    assert_eq!(stage(&run, "b").attempt, 2);
    assert_eq!(
        stage(&run, "c").status,
        StageStatus::Succeeded,
        "downstream ran again"
    );
    assert_eq!(
        h.script.starts_of("a"),
        1,
        "upstream stages do not run again"
    );
    assert_eq!(h.script.starts_of("b"), 2);
}

/// Kill the engine (every commit fails from a chosen instant on) at each point of a run,
/// then start a fresh engine on the same database: the run finishes and no attempt starts
/// twice.
#[tokio::test]
async fn a_new_engine_finishes_a_run_interrupted_at_any_commit() {
    let mut interrupted = 0;
    for deaths_after in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Arc::new(
            SqliteStore::open(&format!("sqlite://{}", dir.path().join("e.db").display()))
                .await
                .unwrap(),
        );
        let dying = Arc::new(DyingStore::over(sqlite.clone(), Some(deaths_after)));
        let script = ScriptAdapter::default();
        let first = engine_over(dying.clone(), &script);
        first.start().await.unwrap();
        let wf = workflow(json!({
            "a": {"uses": "script", "with": {"polls": 1, "outputs": {"v": 1}}},
            "b": {"uses": "script", "needs": ["a"], "with": {"v": "${{ .stages.a.outputs.v }}"}}
        }));
        let Ok(id) = first.create_run(wf, json!({}), manual()).await else {
            interrupted += 1;
            continue;
        };
        let finished = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(10), first.wait(&id)) => r.is_ok_and(|r| r.is_ok()),
            () = async { while !dying.dead.load(Ordering::SeqCst) { tokio::time::sleep(Duration::from_millis(5)).await } } => false,
        };
        if !dying.dead.load(Ordering::SeqCst) {
            assert!(finished, "the first engine neither died nor finished");
            // Every commit of a whole run has now been a point of death.
            assert!(interrupted >= 5, "only {interrupted} interruption points");
            return;
        }
        interrupted += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.shutdown(Duration::from_secs(1)).await;

        let second = engine_over(sqlite.clone(), &script);
        second.start().await.unwrap();
        let header = tokio::time::timeout(Duration::from_secs(20), second.wait(&id))
            .await
            .expect("resumed run finished")
            .unwrap();
        assert_eq!(
            header.status,
            RunStatus::Succeeded,
            "died after {deaths_after} commits"
        );
        for (key, n) in script.starts.lock().unwrap().iter() {
            assert_eq!(
                *n, 1,
                "{key} was started {n} times (died after {deaths_after} commits)"
            );
        }
        assert_eq!(script.starts_of("b"), 1);
        assert_eq!(script.input_of("b"), json!({"v": 1}));
        second.shutdown(Duration::from_secs(1)).await;
    }
    panic!("a run took more than 40 commits");
}

fn delivery(id: &str) -> NewDelivery {
    NewDelivery {
        source: "gh".into(),
        delivery_id: id.into(),
        event: "push".into(),
        headers: "{}".into(),
        body: "{}".into(),
        received_at: 1,
    }
}

/// A matching pass is one commit: the runs, each delivery's outcome and the matched-through
/// mark together, so a crash cannot keep the runs and lose the marks (or the reverse).
#[tokio::test]
async fn a_matching_pass_commits_its_runs_and_delivery_marks_together() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        SqliteStore::open(&format!("sqlite://{}", dir.path().join("e.db").display()))
            .await
            .unwrap(),
    );
    let mut seqs = Vec::new();
    for id in ["d1", "d2", "d3"] {
        let Intake::Stored(seq) = sqlite.insert_delivery(delivery(id)).await.unwrap() else {
            panic!("delivery {id} was not stored");
        };
        seqs.push(seq);
    }
    let store = Arc::new(DyingStore::over(sqlite.clone(), None));
    let engine = engine_over(store.clone(), &ScriptAdapter::default());
    let wf = workflow(json!({"a": {"uses": "script"}}));
    let new_run = || baton_engine::NewRun {
        workflow: wf.clone(),
        event: json!({}),
        trigger: manual(),
    };
    let ids = engine
        .match_deliveries(
            vec![new_run(), new_run()],
            vec![
                DeliveryOutcome {
                    delivery: seqs[0],
                    runs: 0..2,
                    problem: None,
                },
                DeliveryOutcome {
                    delivery: seqs[1],
                    runs: 2..2,
                    problem: Some("workflow `t` on[0].if: boom".into()),
                },
            ],
            Some(seqs[2]),
            Vec::new(),
        )
        .await
        .unwrap();
    // Read before anything else runs: the steps the commit claimed are only spawned.
    let commits = store.committed.lock().unwrap().clone();
    assert_eq!(commits.len(), 1, "one commit for the pass: {commits:?}");
    let kinds = |wanted: fn(&Change) -> bool| commits[0].iter().filter(|c| wanted(c)).count();
    assert_eq!(kinds(|c| matches!(c, Change::InsertRun(..))), 2);
    assert_eq!(kinds(|c| matches!(c, Change::DeliveryProcessed { .. })), 2);
    assert_eq!(
        commits[0].last(),
        Some(&Change::DeliveriesMatched {
            through: seqs[2],
            now: match &commits[0][commits[0].len() - 2] {
                Change::DeliveryProcessed { now, .. } => *now,
                other => panic!("expected the second delivery's mark, got {other:?}"),
            },
        })
    );

    assert_eq!(ids.len(), 2);
    let started = sqlite.load_delivery(seqs[0]).await.unwrap().unwrap();
    assert_eq!(
        (started.status.as_str(), started.runs),
        ("processed", ids.clone())
    );
    let failed = sqlite.load_delivery(seqs[1]).await.unwrap().unwrap();
    assert_eq!(failed.status, "failed");
    assert_eq!(
        failed.message.as_deref(),
        Some("workflow `t` on[0].if: boom")
    );
    assert!(failed.runs.is_empty());
    assert!(sqlite.pending_deliveries(10).await.unwrap().is_empty());
    for id in &ids {
        assert_eq!(engine.snapshot(id).await.unwrap().header.workflow, "t");
    }

    engine.replay_delivery(seqs[1]).await.unwrap();
    let pending = sqlite.pending_deliveries(10).await.unwrap();
    assert_eq!(
        pending.iter().map(|d| (d.id, d.replay)).collect::<Vec<_>>(),
        [(seqs[1], true)]
    );
}

async fn wait_for(mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}

async fn wait_for_async<F: Future<Output = bool>>(mut check: impl FnMut() -> F) {
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}

/// The store's outbox rows, as (source, stage) with "" for the run, sorted.
async fn report_rows(store: &Arc<dyn Store>) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = store
        .claim_reports(i64::MAX, 1000, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.key.source, r.key.stage_id))
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn only_runs_of_workflows_with_report_write_to_the_outbox() {
    let h = harness().await;
    let store = h.engine.store().clone();
    h.run(json!({"a": {"uses": "script"}}), json!({})).await;
    assert_eq!(report_rows(&store).await, []);
    let spec: WorkflowSpec = serde_json::from_value(json!({
        "name": "reported",
        "stages": {"a": {"uses": "script"}, "b": {"uses": "script", "needs": ["a"]}},
        "report": ["github", "gitlab"],
    }))
    .unwrap();
    let reported = Arc::new(Workflow::compile(spec, StageDefaults::default()).unwrap());
    let id = h
        .engine
        .create_run(reported, json!({}), manual())
        .await
        .unwrap();
    h.engine.wait(&id).await.unwrap();
    // One row per source and context, however often each changed (nothing posts them here).
    let contexts = ["", "a", "b"];
    let want: Vec<(String, String)> = ["github", "gitlab"]
        .iter()
        .flat_map(|s| contexts.iter().map(|c| (s.to_string(), c.to_string())))
        .collect();
    assert_eq!(report_rows(&store).await, want);
}

#[tokio::test]
async fn polls_that_change_nothing_write_no_stage() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        SqliteStore::open(&format!("sqlite://{}", dir.path().join("e.db").display()))
            .await
            .unwrap(),
    );
    let recording = Arc::new(DyingStore::over(sqlite, None));
    let script = ScriptAdapter::default();
    let engine = engine_over(recording.clone(), &script);
    engine.start().await.unwrap();
    let id = engine
        .create_run(
            workflow(json!({"a": {"uses": "script", "with": {"polls": 8}}})),
            json!({}),
            manual(),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), engine.wait(&id))
        .await
        .expect("run finished in time")
        .unwrap();
    let polls = script.polls.lock().unwrap().values().sum::<u32>();
    let writes = recording
        .committed
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .filter(|c| matches!(c, Change::PutStage(s) if s.stage_id == "a"))
        .count();
    assert!(polls >= 9, "{polls} polls");
    // Created, starting, running (the first poll), succeeded: not one write per poll.
    assert!(writes <= 5, "{writes} stage writes for {polls} polls");
}

/// A full disk fails every commit for a while, then space returns. The step whose commit
/// failed keeps its task's lease (5 minutes by default), so it must be tried again in this
/// process within seconds, not when the lease ends. The store fails from each of the run's
/// first commits after the one that creates it, so each kind of step is the one that fails.
#[tokio::test]
async fn a_step_that_failed_on_the_store_runs_again_within_seconds_once_it_writes() {
    for fail_after in 1..6 {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Arc::new(
            SqliteStore::open(&format!("sqlite://{}", dir.path().join("e.db").display()))
                .await
                .unwrap(),
        );
        let store = Arc::new(DyingStore::over(sqlite, Some(fail_after)));
        let script = ScriptAdapter::default();
        let engine = engine_over(store.clone(), &script);
        assert_eq!(config().lease, Duration::from_secs(300), "the lease outrun");
        engine.start().await.unwrap();
        let id = engine
            .create_run(
                workflow(json!({
                    "a": {"uses": "script", "with": {"polls": 1}},
                    "b": {"uses": "script", "needs": ["a"]}
                })),
                json!({}),
                manual(),
            )
            .await
            .unwrap();
        wait_for(|| store.dead.load(Ordering::SeqCst)).await;
        // Failed tries while the disk is full.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            !engine
                .snapshot(&id)
                .await
                .unwrap()
                .header
                .status
                .is_terminal(),
            "the run finished although commit {fail_after} failed"
        );
        *store.commits_left.lock().unwrap() = None;
        store.dead.store(false, Ordering::SeqCst);
        let header = tokio::time::timeout(Duration::from_secs(10), engine.wait(&id))
            .await
            .unwrap_or_else(|_| {
                panic!("the run was not done 10 s after the store wrote again (failed at commit {fail_after})")
            })
            .unwrap();
        assert_eq!(header.status, RunStatus::Succeeded);
        assert_eq!(script.starts_of("a"), 1, "stage a started once");
        assert_eq!(script.starts_of("b"), 1, "stage b started once");
        engine.shutdown(Duration::from_secs(1)).await;
    }
}

/// Counts ticks of a task on the test's runtime (one thread): it stalls while anything
/// blocks that thread.
fn ticker() -> Arc<std::sync::atomic::AtomicU64> {
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = ticks.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    ticks
}

#[tokio::test]
async fn expressions_that_never_end_fail_only_their_own_stage() {
    let h = harness().await;
    let ticks = ticker();
    let started = std::time::Instant::now();
    let run = h
        .run(
            json!({
                "looping": {"uses": "script", "if": "def f: f; f", "on_failure": "continue"},
                "template": {"uses": "script", "with": {"x": "${{ def f: [f]; f }}"}, "on_failure": "continue"},
                "memory": {"uses": "script", "with": {"x": "${{ \"x\" * 10000000000 }}"}, "on_failure": "continue"},
                "halting": {"uses": "script", "if": "halt", "on_failure": "continue"},
                "fine": {"uses": "script", "if": "true"}
            }),
            json!({}),
        )
        .await;
    let took = started.elapsed();
    for (id, why) in [
        (
            "looping",
            "stopped after 1000000 steps (expressions.max_steps)",
        ),
        ("template", "stopped"),
        ("memory", "(expressions.max_memory)"),
        ("halting", "called `halt`"),
    ] {
        let s = stage(&run, id);
        assert_eq!(s.status, StageStatus::Failed, "{id}");
        assert_eq!(s.reason.as_deref(), Some("expression"), "{id}");
        let message = s.message.as_deref().unwrap();
        assert!(message.contains(why), "{id}: {message}");
        assert_eq!(h.script.starts_of(id), 0, "{id}");
    }
    assert_eq!(stage(&run, "fine").status, StageStatus::Succeeded);
    // Each evaluation ran on an evaluation thread: the runtime's only thread went on.
    let ticked = ticks.load(Ordering::Relaxed);
    assert!(
        ticked as f64 >= took.as_millis() as f64 / 10.0 * 0.3,
        "{ticked} ticks in {took:?}"
    );
}

#[tokio::test]
async fn a_run_is_cancelled_while_its_expression_runs() {
    let bound = Duration::from_secs(3);
    let h = harness_with(EngineConfig {
        // Stopped by time alone: it runs for the whole bound.
        expressions: baton_core::expr_bound::Limits {
            max_steps: u64::MAX,
            max_time: bound,
            ..Default::default()
        },
        ..config()
    })
    .await;
    let (engine, script) = (&h.engine, &h.script);
    let ticks = ticker();
    let id = engine
        .create_run(
            workflow(json!({
                "other": {"uses": "script", "with": {"result": "hang"}},
                "quick": {"uses": "script"},
                "next": {"uses": "script", "needs": ["quick"], "if": "def f: f; f"},
                "last": {"uses": "script", "needs": ["other"]}
            })),
            json!({}),
            manual(),
        )
        .await
        .unwrap();
    // Once `quick` is polled done, that step evaluates `next`'s condition.
    wait_for(|| {
        script
            .polls
            .lock()
            .unwrap()
            .keys()
            .any(|k| k.contains("/quick/"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ticks.load(Ordering::Relaxed);
    let asked = std::time::Instant::now();
    tokio::time::timeout(bound + Duration::from_secs(5), engine.cancel_run(&id))
        .await
        .expect("the cancel waited no longer than the expression's bound")
        .unwrap_or_else(|e| panic!("{e}"));
    let waited = asked.elapsed();
    let header = tokio::time::timeout(Duration::from_secs(10), engine.wait(&id))
        .await
        .expect("the run ended")
        .unwrap();
    assert_eq!(header.status, RunStatus::Cancelled);
    // It waited for the expression, which ends within its bound.
    assert!(waited > Duration::from_millis(500), "{waited:?}");
    assert!(waited < bound + Duration::from_secs(2), "{waited:?}");
    let run = engine.snapshot(&id).await.unwrap();
    assert_eq!(stage(&run, "next").status, StageStatus::Failed);
    assert!(
        stage(&run, "next")
            .message
            .as_deref()
            .unwrap()
            .contains("stopped after 3s (expressions.max_time)")
    );
    assert_eq!(stage(&run, "quick").status, StageStatus::Succeeded);
    assert_eq!(stage(&run, "other").status, StageStatus::Cancelled);
    assert_eq!(stage(&run, "last").status, StageStatus::Cancelled);
    assert_eq!(script.starts_of("next") + script.starts_of("last"), 0);
    let ticked = ticks.load(Ordering::Relaxed) - before;
    assert!(
        ticked as f64 >= waited.as_millis() as f64 / 10.0 * 0.3,
        "{ticked} ticks while the cancel waited {waited:?}"
    );
}
