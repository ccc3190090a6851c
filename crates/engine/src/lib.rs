//! baton's engine: drives workflow runs through adapters, with all state in the store.
//!
//! The engine owns no state that matters only in memory. Each step claims a due task from
//! the store (advance a run, start / poll / time out / cancel a stage attempt), does one
//! thing, and commits the result together with the next tasks in one transaction. Killed at
//! any instant, a new engine on the same store picks up the tasks and goes on:
//!
//! - a stage attempt is recorded as `starting` *before* its adapter's `start` is called; a
//!   restarted engine that finds an attempt in that phase asks the adapter's `find` for work
//!   already started under the attempt key before it starts anything, so work is never
//!   started twice;
//! - finished stages are never run again: their status is committed with the next step.
//!
//! Runs are processed one step at a time per run (a per-run lock), while adapter calls run
//! outside that lock so the stages of one run progress in parallel.
//!
//! # How the parts fit
//!
//! [`Engine`] (here) is the handle the gateway holds; `Inner` (here) is what every step
//! shares. The rest is one file a concern, each readable alone:
//!
//! - `run_loop`: claims due tasks and hands each to its step, bounded by a semaphore;
//! - the steps, one a [`baton_store::TaskKind`]: `advance` (the graph rules of [`plan`],
//!   which start, skip and cancel stages and end the run), `start`, `poll`, `timeout`,
//!   and `cancel` (which also holds [`Engine::cancel_run`]);
//! - `attempt`: writing ahead, finishing and retrying a stage attempt, shared by the steps;
//! - requests from outside: `create` (new runs), `deliveries` (a matching pass's runs and
//!   delivery marks in one commit, replays), `retry` (a stage retried by hand), `signal`
//!   (approval decisions and completion webhooks);
//! - plumbing: `state` (the cached copy of a run and its per-run lock), `commit` (one
//!   transaction a step, fenced with the run's version and the step's claim, then events
//!   and dispatch of what it claimed), `lease` (the claims of steps under way: renewed on a
//!   shared store, and told apart when a commit is fenced), `events` (live progress),
//!   `call` (adapter calls with a time bound and metrics).
//!
//! [`view`] turns a stored run into what the API shows.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::context::TriggerInfo;
use baton_core::expr_bound::Limits;
use baton_core::{Adapter, AttemptKey, StageDefaults, Waker, Workflow};
use baton_store::{RunFilter, RunHeader, RunListing, RunSnapshot, Store, StoreError};
use serde_json::Value;
use tokio::sync::{Notify, Semaphore, broadcast};

mod plan;
mod view;

mod advance;
mod attempt;
mod call;
mod cancel;
mod commit;
mod create;
mod deliveries;
mod events;
mod lease;
mod poll;
mod report;
mod retry;
mod run_loop;
mod signal;
mod start;
mod state;
mod timeout;

pub use deliveries::DeliveryOutcome;
pub use events::Event;
pub use view::RunView;

use state::RunSlot;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The shortest wait between polls when the adapter gives no hint.
    pub poll_min: Duration,
    /// The longest wait between polls, hint or not.
    pub poll_max: Duration,
    /// Steps running at once.
    pub max_concurrency: usize,
    /// How long a claimed task stays leased; adapter calls are bounded well below it.
    pub lease: Duration,
    /// Bound on a single adapter call (start, find, poll, outputs, cancel).
    pub call_timeout: Duration,
    /// Defaults for stages (compiling stored workflows on resume).
    pub defaults: StageDefaults,
    /// Bounds on every jq evaluation (stage `if`, `with` templates): `[expressions]`.
    pub expressions: Limits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            poll_min: Duration::from_secs(2),
            poll_max: Duration::from_secs(60),
            max_concurrency: 256,
            lease: Duration::from_secs(300),
            call_timeout: Duration::from_secs(60),
            defaults: StageDefaults::default(),
            expressions: Limits::default(),
        }
    }
}

/// An engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No run with that id.
    #[error("no run `{0}`")]
    NoSuchRun(String),
    /// No stage with that id in the run.
    #[error("run `{run}` has no stage `{stage}`")]
    NoSuchStage {
        /// Run id.
        run: String,
        /// Stage id.
        stage: String,
    },
    /// The request does not fit the current state (approving a stage that is not waiting).
    #[error("{0}")]
    Conflict(String),
    /// The thread that evaluates a run's jq expressions could not run them (it could not
    /// be started); the step is tried again.
    #[error("could not evaluate the run's expressions: {0}")]
    Evaluation(String),
    /// A stored workflow could not be compiled.
    #[error("run `{run}`: its stored workflow does not compile: {message}")]
    BadWorkflow {
        /// Run id.
        run: String,
        /// The compile errors.
        message: String,
    },
}

impl EngineError {
    /// True when the store refused the commit because the run or the task moved on under
    /// it ([`StoreError::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_fenced())
    }
}

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The compiled workflow.
    pub workflow: Arc<Workflow>,
    /// The event (`.event`).
    pub event: Value,
    /// What started it.
    pub trigger: TriggerInfo,
}

struct Inner {
    store: Arc<dyn Store>,
    adapters: HashMap<String, Arc<dyn Adapter>>,
    config: EngineConfig,
    workflows: Mutex<HashMap<String, Arc<Workflow>>>,
    runs: Mutex<HashMap<String, RunSlot>>,
    starting: Mutex<HashSet<AttemptKey>>,
    /// Attempts this process wrote ahead and has not started yet (see `start_inner`).
    fresh: Mutex<HashSet<AttemptKey>>,
    woken: Mutex<HashSet<AttemptKey>>,
    /// The claimed tasks whose steps are dispatched, by run (see `lease`).
    flights: Mutex<lease::Flights>,
    notify: Notify,
    permits: Arc<Semaphore>,
    events: broadcast::Sender<Event>,
    waiters: Mutex<HashMap<String, Vec<tokio::sync::oneshot::Sender<RunHeader>>>>,
    stopping: std::sync::atomic::AtomicBool,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// An engine over `store` with adapter instances by name (`uses:`).
    pub fn new(
        store: Arc<dyn Store>,
        adapters: HashMap<String, Arc<dyn Adapter>>,
        config: EngineConfig,
    ) -> Self {
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            store,
            adapters,
            permits: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
            config,
            workflows: Mutex::default(),
            runs: Mutex::default(),
            starting: Mutex::default(),
            fresh: Mutex::default(),
            woken: Mutex::default(),
            flights: Mutex::default(),
            notify: Notify::new(),
            events,
            waiters: Mutex::default(),
            stopping: Default::default(),
        });
        let weak = Arc::downgrade(&inner);
        let waker = Waker::new(move |key| {
            if let Some(inner) = weak.upgrade() {
                let key = key.clone();
                tokio::spawn(async move { inner.wake(key).await });
            }
        });
        for adapter in inner.adapters.values() {
            adapter.attach(waker.clone());
        }
        Self { inner }
    }

    /// Starts the scheduler loop. On a store this process owns alone, clears the leases a
    /// previous process left first. On a shared store leases belong to other replicas too and
    /// end only by expiry; the claims of steps under way are renewed every third of
    /// [`EngineConfig::lease`] instead.
    pub async fn start(&self) -> Result<tokio::task::JoinHandle<()>, EngineError> {
        if self.inner.store.shared() {
            let inner = self.inner.clone();
            tokio::spawn(async move { inner.renew_loop().await });
        } else {
            self.inner.store.release_leases().await?;
        }
        let inner = self.inner.clone();
        Ok(tokio::spawn(async move { inner.run_loop().await }))
    }

    /// Stops claiming work and waits (up to `grace`) for steps under way to finish.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.notify.notify_one();
        let all = self.inner.config.max_concurrency.max(1) as u32;
        let _ = tokio::time::timeout(grace, self.inner.permits.acquire_many(all)).await;
    }

    /// Live changes. Slow receivers may miss some (`Lagged`): re-read the store then.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// The store behind the engine.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The adapter instance named `name` (for its completion webhook).
    pub fn adapter(&self, name: &str) -> Option<Arc<dyn Adapter>> {
        self.inner.adapters.get(name).cloned()
    }

    /// Everything stored about a run.
    pub async fn snapshot(&self, run_id: &str) -> Result<RunSnapshot, EngineError> {
        self.inner
            .store
            .load_run(run_id)
            .await?
            .ok_or_else(|| EngineError::NoSuchRun(run_id.to_owned()))
    }

    /// The workflow a run runs: the one stored with it, compiled (and kept, so that runs of
    /// one workflow compile it once).
    pub fn workflow_of(&self, snapshot: &RunSnapshot) -> Result<Arc<Workflow>, EngineError> {
        self.inner
            .workflow_for(&snapshot.header.id, &snapshot.payload.spec)
    }

    /// Runs, newest first, with what started them and their commit.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunListing>, EngineError> {
        Ok(self.inner.store.list_runs(filter).await?)
    }

    /// Waits until the run is finished and returns its final header.
    pub async fn wait(&self, run_id: &str) -> Result<RunHeader, EngineError> {
        loop {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.inner
                .waiters
                .lock()
                .unwrap()
                .entry(run_id.to_owned())
                .or_default()
                .push(tx);
            // Registered first, then looked: a run that finished in between is seen here.
            let header = self.snapshot(run_id).await?.header;
            if header.status.is_terminal() {
                return Ok(header);
            }
            // Another engine process (PostgreSQL replicas) may finish it: look again now and then.
            if let Ok(Ok(header)) = tokio::time::timeout(Duration::from_secs(5), rx).await {
                return Ok(header);
            }
        }
    }
}
