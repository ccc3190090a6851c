//! Engine throughput and start latency on SQLite, every state change committed durably
//! (WAL, `synchronous=FULL`).
//!
//! `cargo run --release -p baton-bench --bin engine -- [CONCURRENT_RUNS] [TOTAL_RUNS]`
//!
//! Each run is a five-stage fan-out / fan-in (`a → b, c, d → e`) of a no-op in-process adapter
//! whose work succeeds at the first poll. It prints:
//! - stage transitions per second (each stage goes pending → running → succeeded);
//! - the latency from "a stage's needs are satisfied" (the engine has read the last needed
//!   stage's outputs, just before committing its success) to "its adapter's start is called";
//! - beside them, the durable commit rate of the same disk (one row per fsync, no engine),
//!   measured in the same run, and the targets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton_core::context::TriggerInfo;
use baton_core::{
    Adapter, AdapterError, AttemptKey, ExternalRef, ExternalState, Logs, PollOutcome, PollRequest,
    StageDefaults, StartRequest, Workflow, WorkflowSpec,
};
use baton_engine::{Engine, EngineConfig, Event};
use baton_store::SqliteStore;
use serde_json::{Map, Value, json};

/// When each stage's work finished (outputs read) and when each stage's start was called.
#[derive(Default)]
struct Clock {
    finished: Mutex<HashMap<(String, String), Instant>>,
    started: Mutex<Vec<(String, String, Instant)>>,
}

struct Noop(Arc<Clock>);

fn run_and_stage(key: &AttemptKey) -> (String, String) {
    (key.run_id().to_owned(), key.stage_id().to_owned())
}

#[async_trait]
impl Adapter for Noop {
    fn kind(&self) -> &'static str {
        "noop"
    }
    async fn start(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        let (run, stage) = run_and_stage(&request.key);
        self.0
            .started
            .lock()
            .unwrap()
            .push((run, stage, Instant::now()));
        Ok(ExternalRef::new(request.key.as_str()))
    }
    async fn find(&self, _: &AttemptKey, _: &Value) -> Result<Option<ExternalRef>, AdapterError> {
        Ok(None)
    }
    async fn poll(&self, _: &PollRequest<'_>) -> Result<PollOutcome, AdapterError> {
        Ok(PollOutcome::state(ExternalState::Succeeded {
            warnings: false,
        }))
    }
    async fn outputs(
        &self,
        key: &AttemptKey,
        _: &ExternalRef,
    ) -> Result<Map<String, Value>, AdapterError> {
        self.0
            .finished
            .lock()
            .unwrap()
            .insert(run_and_stage(key), Instant::now());
        Ok(Map::new())
    }
    async fn cancel(&self, _: &AttemptKey, _: &ExternalRef) -> Result<(), AdapterError> {
        Ok(())
    }
    async fn logs(&self, _: &AttemptKey, _: &ExternalRef) -> Result<Logs, AdapterError> {
        Ok(Logs::default())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The same disk's durable commit rate: one single-row transaction per fsync, as fast as it goes.
fn raw_commit_rate(dir: &std::path::Path) -> f64 {
    let conn = rusqlite::Connection::open(dir.join("raw.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", [])
        .unwrap();
    let n = 2000;
    let begin = Instant::now();
    for i in 0..n {
        conn.execute("INSERT INTO t (id, v) VALUES (?1, 'x')", [i])
            .unwrap();
    }
    n as f64 / begin.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let concurrent: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let total: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);

    let dir = tempfile::tempdir().unwrap();
    let raw = raw_commit_rate(dir.path());

    let store = Arc::new(
        SqliteStore::open(&format!(
            "sqlite://{}",
            dir.path().join("bench.db").display()
        ))
        .await
        .unwrap(),
    );
    let clock = Arc::new(Clock::default());
    let mut adapters: HashMap<String, Arc<dyn Adapter>> = HashMap::new();
    adapters.insert("noop".into(), Arc::new(Noop(clock.clone())));
    let engine = Engine::new(store, adapters, EngineConfig::default());
    engine.start().await.unwrap();

    let spec: WorkflowSpec = serde_json::from_value(json!({"name": "bench", "stages": {
        "a": {"uses": "noop"},
        "b": {"uses": "noop", "needs": ["a"]},
        "c": {"uses": "noop", "needs": ["a"]},
        "d": {"uses": "noop", "needs": ["a"]},
        "e": {"uses": "noop", "needs": ["b", "c", "d"]}
    }}))
    .unwrap();
    let workflow = Arc::new(Workflow::compile(spec, StageDefaults::default()).unwrap());
    let needs: HashMap<String, Vec<String>> = workflow
        .stages
        .iter()
        .map(|s| {
            (
                s.id.clone(),
                s.needs
                    .iter()
                    .map(|&n| workflow.stages[n].id.clone())
                    .collect(),
            )
        })
        .collect();

    let transitions = Arc::new(AtomicU64::new(0));
    let mut events = engine.subscribe();
    let counter = transitions.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if matches!(event, Event::Stage { .. }) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let trigger = TriggerInfo {
        source: "bench".into(),
        event: "bench".into(),
        delivery_id: None,
    };
    let begin = Instant::now();
    let launched = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrent {
        let (engine, workflow, trigger, launched) = (
            engine.clone(),
            workflow.clone(),
            trigger.clone(),
            launched.clone(),
        );
        workers.push(tokio::spawn(async move {
            while (launched.fetch_add(1, Ordering::Relaxed) as usize) < total {
                let id = engine
                    .create_run(workflow.clone(), json!({}), trigger.clone())
                    .await
                    .unwrap();
                let header = engine.wait(&id).await.unwrap();
                assert_eq!(header.status, baton_core::RunStatus::Succeeded);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = begin.elapsed();
    // Each stage passes pending → running → succeeded: two stage transitions, whether or not
    // an event was published for each step.
    let stage_transitions = (total * workflow.stages.len() * 2) as f64;
    let published = transitions.load(Ordering::Relaxed);

    let finished = clock.finished.lock().unwrap();
    let mut latencies: Vec<Duration> = clock
        .started
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(run, stage, started)| {
            let satisfied = needs[stage]
                .iter()
                .filter_map(|n| finished.get(&(run.clone(), n.clone())))
                .max()?;
            Some(started.saturating_duration_since(*satisfied))
        })
        .collect();
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
    );
    let rate = stage_transitions / elapsed.as_secs_f64();

    println!(
        "baton engine benchmark: {total} runs of 5 stages, {concurrent} at once, SQLite WAL synchronous=FULL"
    );
    println!(
        "  wall time                       {:>10.2} s",
        elapsed.as_secs_f64()
    );
    println!(
        "  runs per second                 {:>10.0}",
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  stage transitions per second    {:>10.0}   (target >= 2000: {:.1}x)",
        rate,
        rate / 2000.0
    );
    println!(
        "  needs satisfied -> start, p50   {:>10.2} ms",
        p50.as_secs_f64() * 1e3
    );
    println!(
        "  needs satisfied -> start, p99   {:>10.2} ms   (target < 10 ms)",
        p99.as_secs_f64() * 1e3
    );
    println!(
        "  needs satisfied -> start, max   {:>10.2} ms   ({} samples)",
        max.as_secs_f64() * 1e3,
        latencies.len()
    );
    println!("  stage events published          {published:>10}");
    println!("peer: the same disk's durable commit rate, one row per fsync, no engine");
    println!(
        "  commits per second              {:>10.0}   (baton transitions / raw commits = {:.2})",
        raw,
        rate / raw
    );
}
