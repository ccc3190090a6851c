//! Fenced commits in the engine, on a real SQLite store. Another process writing the same
//! run is played by the test writing to the store directly (a `Change::Fence` of its own,
//! or a claim of the task after its lease), since two engines cannot share one SQLite file;
//! [`DyingStore::shared`] makes the store say it is shared, so claims are renewed and losses
//! counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton_core::{
    Adapter, AdapterError, AttemptKey, ExternalRef, ExternalState, Logs, PollOutcome, PollRequest,
    RunStatus, StageStatus, StartRequest, Workflow,
};
use baton_engine::{Engine, EngineConfig};
use baton_store::{Change, SqliteStore, Store, TaskKind, TaskSpec, now_millis};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

mod support;
use support::{DyingStore, manual, workflow};

/// An adapter whose work is decided by its stage's `with`: `{"gate": true}` stays blocked
/// until a signal approves it (polled again only after an hour); `{"slow": true}` makes
/// each poll wait for a permit of `release`, then succeed.
struct Gate {
    polls: AtomicU32,
    /// Polls waiting for a permit.
    waiting: AtomicU32,
    release: Semaphore,
}

#[async_trait]
impl Adapter for Gate {
    fn kind(&self) -> &'static str {
        "gate"
    }
    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        Ok(ExternalRef {
            id: request.key.to_string(),
            url: None,
            data: request.input.clone(),
        })
    }
    async fn find(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        Ok(Some(ExternalRef {
            id: key.to_string(),
            url: None,
            data: input.clone(),
        }))
    }
    async fn poll(&self, request: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        let with = &request.external.data;
        if with["slow"] == json!(true) {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            self.release.acquire().await.unwrap().forget();
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Ok(PollOutcome::state(ExternalState::Succeeded {
                warnings: false,
            }));
        }
        let approved = request.signal.and_then(|s| s["decision"].as_str()) == Some("approved");
        Ok(if approved {
            PollOutcome::state(ExternalState::Succeeded { warnings: false })
        } else {
            PollOutcome::state(ExternalState::Blocked).next_poll(Duration::from_secs(3600))
        })
    }
    async fn outputs(
        &self,
        _: &AttemptKey,
        _: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        Ok(Map::new())
    }
    async fn cancel(&self, _: &AttemptKey, _: &ExternalRef) -> Result<(), AdapterError> {
        Ok(())
    }
    async fn logs(&self, _: &AttemptKey, _: &ExternalRef) -> Result<Logs, AdapterError> {
        Ok(Logs::default())
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            polls: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            release: Semaphore::new(0),
        }
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    /// The store as the other process sees it.
    store: Arc<SqliteStore>,
    gate: Arc<Gate>,
    engine: Engine,
}

/// An engine over a fresh store; `shared`: behind [`Shared`].
async fn setup(shared: bool, lease: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Arc::new(SqliteStore::open(&url).await.unwrap());
    let wrapped = Arc::new(if shared {
        DyingStore::shared(store.clone())
    } else {
        DyingStore::over(store.clone(), None)
    });
    let gate = Arc::new(Gate::default());
    let mut adapters: HashMap<String, Arc<dyn Adapter>> = HashMap::new();
    adapters.insert("gate".into(), gate.clone());
    let config = EngineConfig {
        poll_min: Duration::from_millis(20),
        poll_max: Duration::from_secs(3600),
        call_timeout: Duration::from_secs(30),
        lease,
        ..EngineConfig::default()
    };
    let engine = Engine::new(wrapped.clone(), adapters, config);
    engine.start().await.unwrap();
    assert_eq!(
        wrapped.releases.load(Ordering::SeqCst),
        u32::from(!shared),
        "leases are released at start only on a store this process owns"
    );
    Setup {
        _dir: dir,
        store,
        gate,
        engine,
    }
}

/// One stage on the gate, doing what `with` says.
fn gated(with: Value) -> Arc<Workflow> {
    workflow(json!({"build": {"uses": "gate", "with": with, "timeout": "1h"}}))
}

/// Waits (up to 10 s) until `done` holds.
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stage(store: &SqliteStore, run: &str) -> baton_store::StageRecord {
    let run = store.load_run(run).await.unwrap().unwrap();
    run.stages
        .into_iter()
        .find(|s| s.stage_id == "build")
        .unwrap()
}

/// The run waits on its blocked gate, polled once, with the engine's copy of it cached.
async fn blocked_run(s: &Setup) -> String {
    let id = s
        .engine
        .create_run(gated(json!({"gate": true})), json!({}), manual())
        .await
        .unwrap();
    until("the first poll", async || {
        s.gate.polls.load(Ordering::SeqCst) >= 1
            && stage(&s.store, &id).await.status == StageStatus::Waiting
    })
    .await;
    id
}

/// Another process approves the stage, bumping the run's version as its fenced commit does,
/// and (with `poll_now`) schedules a poll due now.
async fn approve_elsewhere(store: &SqliteStore, run: &str, poll_now: bool) {
    let snapshot = store.load_run(run).await.unwrap().unwrap();
    let mut build = snapshot.stages[0].clone();
    build.signal = Some(json!({"decision": "approved"}));
    let mut changes = vec![
        Change::Fence {
            run_id: run.into(),
            version: snapshot.version,
            lease: None,
        },
        Change::PutStage(build.clone()),
    ];
    if poll_now {
        changes.push(Change::Schedule(TaskSpec {
            run_id: run.into(),
            stage_id: "build".into(),
            kind: TaskKind::Poll,
            attempt: build.attempt,
            due_at: now_millis(),
            claim_until: None,
        }));
    }
    store.commit(changes).await.unwrap();
}

/// A run whose poll is under way, waiting for the gate's `release`.
async fn slow_run(s: &Setup) -> String {
    let id = s
        .engine
        .create_run(gated(json!({"slow": true})), json!({}), manual())
        .await
        .unwrap();
    until("the poll under way", async || {
        s.gate.waiting.load(Ordering::SeqCst) == 1
    })
    .await;
    id
}

async fn finished(s: &Setup, run: &str) -> RunStatus {
    tokio::time::timeout(Duration::from_secs(10), s.engine.wait(run))
        .await
        .expect("the run ends")
        .unwrap()
        .status
}

/// The lost-lease counter, from a recorder this test binary installs once.
fn lost_leases() -> u64 {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap()
    });
    handle
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("baton_engine_lost_leases_total "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn a_step_made_from_a_stale_copy_runs_again_from_the_store() {
    let s = setup(false, Duration::from_secs(300)).await;
    let id = blocked_run(&s).await;
    // The engine's cached copy has neither the approval nor the new version: its poll
    // would see the gate blocked and wait an hour, unless its fenced commit makes it
    // look again at what the store holds.
    approve_elsewhere(&s.store, &id, true).await;
    let started = Instant::now();
    assert_eq!(finished(&s, &id).await, RunStatus::Succeeded);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        s.gate.polls.load(Ordering::SeqCst) >= 3,
        "the stale poll, then the one from the store"
    );
}

#[tokio::test]
async fn requests_from_outside_work_after_another_process_wrote_the_run() {
    let s = setup(false, Duration::from_secs(300)).await;
    let id = blocked_run(&s).await;
    // Another process writes the run (no poll due); the approval here is made from a
    // stale copy, reloads and goes through.
    approve_elsewhere(&s.store, &id, false).await;
    s.engine
        .signal(&id, "build", json!({"decision": "approved"}))
        .await
        .unwrap();
    assert_eq!(finished(&s, &id).await, RunStatus::Succeeded);

    let other = blocked_run(&s).await;
    let snapshot = s.store.load_run(&other).await.unwrap().unwrap();
    s.store
        .commit(vec![Change::Fence {
            run_id: other.clone(),
            version: snapshot.version,
            lease: None,
        }])
        .await
        .unwrap();
    s.engine.cancel_run(&other).await.unwrap();
    assert_eq!(finished(&s, &other).await, RunStatus::Cancelled);
}

#[tokio::test]
async fn a_step_whose_claim_another_process_took_is_dropped_and_counted() {
    let lease = Duration::from_secs(2);
    let s = setup(true, lease).await;
    let before = lost_leases();
    let id = slow_run(&s).await;
    // Another process takes the poll over once the claim looks expired to it.
    let taken = s
        .store
        .claim_due(now_millis() + 10_000, 10, now_millis() + 3_600_000)
        .await
        .unwrap();
    assert_eq!(
        taken.iter().map(|t| t.kind).collect::<Vec<_>>(),
        [TaskKind::Poll]
    );
    s.gate.release.add_permits(1);
    until("the lost lease to be counted", async || {
        lost_leases() == before + 1
    })
    .await;
    // The dropped step wrote nothing: the stage still runs, the other process's claim stands.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let build = stage(&s.store, &id).await;
    assert_eq!(build.status, StageStatus::Running, "{build:?}");
    assert!(s.store.holds(&taken[0]).await.unwrap());
    assert_eq!(lost_leases(), before + 1, "counted once");
}

#[tokio::test]
async fn a_renewed_claim_outlives_its_first_length() {
    let lease = Duration::from_millis(300);
    let s = setup(true, lease).await;
    let id = slow_run(&s).await;
    // Four lease lengths: without renewal another process could claim the poll after one.
    let deadline = Instant::now() + lease * 4;
    while Instant::now() < deadline {
        let taken = s
            .store
            .claim_due(now_millis(), 10, now_millis() + 60_000)
            .await
            .unwrap();
        assert!(taken.is_empty(), "claimed under a renewed lease: {taken:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.gate.release.add_permits(1);
    assert_eq!(finished(&s, &id).await, RunStatus::Succeeded);
}
