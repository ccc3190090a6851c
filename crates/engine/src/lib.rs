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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::context::{StageView as ContextStage, TriggerInfo, stage_context};
use baton_core::{
    Adapter, AdapterError, AttemptKey, ExternalState, PollRequest, RunStatus, StageDefaults,
    StageStatus, StartRequest, Waker, Workflow, WorkflowSpec,
};
use baton_store::{
    AttemptRecord, Change, Millis, Phase, RunFilter, RunHeader, RunPayload, RunSnapshot,
    StageRecord, Store, StoreError, Task, TaskKind, TaskSpec, now_millis,
};
use serde_json::Value;
use tokio::sync::{Notify, OwnedMutexGuard, Semaphore, broadcast};

pub mod plan;
pub mod view;

use plan::{Decision, reason};
pub use view::RunView;

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
    /// A stored workflow could not be compiled.
    #[error("run `{run}`: its stored workflow does not compile: {message}")]
    BadWorkflow {
        /// Run id.
        run: String,
        /// The compile errors.
        message: String,
    },
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

/// Something that changed, for live progress displays.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stage changed status or message.
    Stage {
        /// Run id.
        run_id: String,
        /// Stage id.
        stage_id: String,
        /// New status.
        status: StageStatus,
        /// Attempt number.
        attempt: u32,
        /// Current message.
        message: Option<String>,
        /// The adapter instance (`uses`).
        uses: String,
    },
    /// A run changed status.
    Run {
        /// Run id.
        run_id: String,
        /// New status.
        status: RunStatus,
        /// Why.
        message: Option<String>,
    },
}

/// The in-memory copy of a run being worked on; rebuilt from the store whenever in doubt.
struct RunState {
    header: RunHeader,
    payload: RunPayload,
    workflow: Arc<Workflow>,
    stages: Vec<StageRecord>,
    attempts: Vec<Option<AttemptRecord>>,
}

type RunSlot = Arc<tokio::sync::Mutex<Option<RunState>>>;

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

fn millis(d: Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
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

    /// Starts the scheduler loop. Clears leases left by a previous process first: the
    /// store is owned by this process alone.
    pub async fn start(&self) -> Result<tokio::task::JoinHandle<()>, EngineError> {
        self.inner.store.release_leases().await?;
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

    /// Creates a run of `workflow` and schedules its first step.
    pub async fn create_run(
        &self,
        workflow: Arc<Workflow>,
        event: Value,
        trigger: TriggerInfo,
    ) -> Result<String, EngineError> {
        let mut ids = self
            .create_runs(
                vec![NewRun {
                    workflow,
                    event,
                    trigger,
                }],
                |_| Vec::new(),
            )
            .await?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// Creates several runs and applies the changes `extra` makes from their ids in the same
    /// commit (a delivery marked processed together with the runs it started, so a crash
    /// cannot start them twice).
    pub async fn create_runs(
        &self,
        runs: Vec<NewRun>,
        extra: impl FnOnce(&[String]) -> Vec<Change>,
    ) -> Result<Vec<String>, EngineError> {
        let now = now_millis();
        let mut ids = Vec::with_capacity(runs.len());
        let mut changes = Vec::new();
        for NewRun {
            workflow,
            event,
            trigger,
        } in runs
        {
            let id = uuid::Uuid::now_v7().simple().to_string();
            let spec = serde_json::to_value(&workflow.spec).unwrap_or(Value::Null);
            self.inner
                .workflows
                .lock()
                .unwrap()
                .insert(spec.to_string(), workflow.clone());
            let header = RunHeader {
                id: id.clone(),
                workflow: workflow.name().to_owned(),
                status: RunStatus::Queued,
                cancel_requested: false,
                message: None,
                created_at: now,
                started_at: None,
                finished_at: None,
            };
            changes.push(Change::InsertRun(
                header,
                RunPayload {
                    spec,
                    event,
                    trigger,
                },
            ));
            changes.extend(
                workflow
                    .stages
                    .iter()
                    .enumerate()
                    .map(|(i, s)| Change::PutStage(StageRecord::pending(&id, &s.id, i as u32))),
            );
            changes.push(self.inner.task(&id, "", TaskKind::Advance, 0, now, true));
            ids.push(id);
        }
        changes.extend(extra(&ids));
        let claimed = self.inner.store.commit(changes).await?;
        self.inner.dispatch_all(claimed);
        Ok(ids)
    }

    /// Runs a failed or cancelled stage again (a new attempt), and after it every stage
    /// downstream of it. A finished run is reopened.
    pub async fn retry_stage(&self, run_id: &str, stage_id: &str) -> Result<u32, EngineError> {
        let mut guard = self.inner.lock_run(run_id).await?;
        let state = guard
            .as_mut()
            .ok_or_else(|| EngineError::NoSuchRun(run_id.to_owned()))?;
        let i = state
            .workflow
            .stage_index(stage_id)
            .ok_or_else(|| EngineError::NoSuchStage {
                run: run_id.into(),
                stage: stage_id.into(),
            })?;
        let status = state.stages[i].status;
        if !matches!(status, StageStatus::Failed | StageStatus::Cancelled) {
            return Err(EngineError::Conflict(format!(
                "stage `{stage_id}` is {status}: only a failed or cancelled stage can be retried"
            )));
        }
        if state.header.cancel_requested && !state.header.status.is_terminal() {
            return Err(EngineError::Conflict(format!(
                "run `{run_id}` is being cancelled"
            )));
        }
        let mut downstream = Vec::new();
        let mut queue = state.workflow.stages[i].dependents.clone();
        while let Some(d) = queue.pop() {
            if !downstream.contains(&d) {
                downstream.push(d);
                queue.extend(state.workflow.stages[d].dependents.iter().copied());
            }
        }
        if let Some(&busy) = downstream
            .iter()
            .find(|&&d| state.stages[d].status.is_active())
        {
            return Err(EngineError::Conflict(format!(
                "stage `{}`, downstream of `{stage_id}`, is still {}; wait for it or cancel the run",
                state.workflow.stages[busy].id, state.stages[busy].status
            )));
        }
        let now = now_millis();
        let mut changes = Vec::new();
        let mut events = Vec::new();
        for &d in &downstream {
            if state.stages[d].status == StageStatus::Pending {
                continue;
            }
            let record = &mut state.stages[d];
            record.status = StageStatus::Pending;
            record.phase = None;
            record.reason = None;
            record.message = Some(format!("will run again after `{stage_id}`"));
            record.external = None;
            record.outputs = None;
            record.signal = None;
            record.finished_at = None;
            state.attempts[d] = None;
            changes.push(Change::PutStage(record.clone()));
            events.push(Inner::stage_event(state, d));
        }
        let record = &mut state.stages[i];
        let next = record.attempt + 1;
        record.status = StageStatus::Pending;
        record.attempt = next;
        record.phase = Some(Phase::Scheduled);
        record.reason = Some(reason::RETRYING.into());
        record.message = Some(format!("retried by hand (attempt {next})"));
        record.external = None;
        record.outputs = None;
        record.signal = None;
        record.finished_at = None;
        state.attempts[i] = None;
        changes.push(Change::PutStage(record.clone()));
        changes.push(
            self.inner
                .task(run_id, stage_id, TaskKind::Start, next, now, true),
        );
        events.push(Inner::stage_event(state, i));
        if state.header.status.is_terminal() {
            state.header.status = RunStatus::Running;
            state.header.cancel_requested = false;
            state.header.message = None;
            state.header.finished_at = None;
            changes.push(Change::PutRun(state.header.clone()));
            events.push(Inner::run_event(state));
        }
        self.inner.commit(&mut guard, changes, events).await?;
        Ok(next)
    }

    /// Asks to cancel a run: pending stages are cancelled, running ones through their adapters.
    pub async fn cancel_run(&self, run_id: &str) -> Result<(), EngineError> {
        let mut guard = self.inner.lock_run(run_id).await?;
        let state = guard
            .as_mut()
            .ok_or_else(|| EngineError::NoSuchRun(run_id.to_owned()))?;
        if state.header.status.is_terminal() {
            return Err(EngineError::Conflict(format!(
                "run `{run_id}` already {}",
                state.header.status
            )));
        }
        if state.header.cancel_requested {
            return Ok(());
        }
        state.header.cancel_requested = true;
        let now = now_millis();
        let changes = vec![
            Change::PutRun(state.header.clone()),
            self.inner.task(run_id, "", TaskKind::Advance, 0, now, true),
        ];
        self.inner.commit(&mut guard, changes, Vec::new()).await
    }

    /// Sends a signal (an approval decision) to a stage's current attempt and polls it at once.
    pub async fn signal(
        &self,
        run_id: &str,
        stage_id: &str,
        signal: Value,
    ) -> Result<(), EngineError> {
        let key =
            {
                let mut guard = self.inner.lock_run(run_id).await?;
                let state = guard
                    .as_mut()
                    .ok_or_else(|| EngineError::NoSuchRun(run_id.to_owned()))?;
                let i = state.workflow.stage_index(stage_id).ok_or_else(|| {
                    EngineError::NoSuchStage {
                        run: run_id.into(),
                        stage: stage_id.into(),
                    }
                })?;
                let stage = &mut state.stages[i];
                if !stage.status.is_active() {
                    return Err(EngineError::Conflict(format!(
                        "stage `{stage_id}` of run `{run_id}` is {}, not waiting",
                        stage.status
                    )));
                }
                stage.signal = Some(signal);
                let key = AttemptKey::new(run_id, stage_id, stage.attempt);
                let change = Change::PutStage(stage.clone());
                self.inner
                    .commit(&mut guard, vec![change], Vec::new())
                    .await?;
                key
            };
        self.inner.wake(key).await;
        Ok(())
    }

    /// Polls an attempt now (a completion webhook arrived for it). Unknown or finished
    /// attempts are ignored.
    pub async fn wake(&self, key: AttemptKey) {
        self.inner.wake(key).await;
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

    /// Runs, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunHeader>, EngineError> {
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

impl Inner {
    fn task(
        &self,
        run_id: &str,
        stage_id: &str,
        kind: TaskKind,
        attempt: u32,
        due_at: Millis,
        claim: bool,
    ) -> Change {
        Change::Schedule(TaskSpec {
            run_id: run_id.to_owned(),
            stage_id: stage_id.to_owned(),
            kind,
            attempt,
            due_at,
            claim_until: claim.then(|| due_at.max(now_millis()) + millis(self.config.lease)),
        })
    }

    async fn run_loop(self: Arc<Self>) {
        const BATCH: u32 = 256;
        while !self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            let now = now_millis();
            let claimed = match self
                .store
                .claim_due(now, BATCH, now + millis(self.config.lease))
                .await
            {
                Ok(tasks) => tasks,
                Err(e) => {
                    tracing::error!(error = %e, "claiming due work failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let full = claimed.len() as u32 == BATCH;
            self.dispatch_all(claimed);
            if full {
                continue;
            }
            let wait = match self.store.next_due().await {
                Ok(Some(due)) => Duration::from_millis((due - now_millis()).clamp(0, 1000) as u64),
                _ => Duration::from_secs(1),
            };
            if !wait.is_zero() {
                let _ = tokio::time::timeout(wait, self.notify.notified()).await;
            }
        }
    }

    fn dispatch_all(self: &Arc<Self>, tasks: Vec<Task>) {
        for task in tasks {
            let inner = self.clone();
            tokio::spawn(async move {
                let Ok(_permit) = inner.permits.clone().acquire_owned().await else {
                    return;
                };
                let (run, kind) = (task.run_id.clone(), task.kind);
                if let Err(e) = inner.handle(task).await {
                    // The task stays leased and is retried when the lease ends; the cached
                    // copy of the run is dropped so the retry starts from the store.
                    tracing::error!(run = %run, task = kind.as_str(), error = %e, "engine step failed");
                    inner.runs.lock().unwrap().remove(&run);
                }
            });
        }
    }

    async fn handle(self: &Arc<Self>, task: Task) -> Result<(), EngineError> {
        match task.kind {
            TaskKind::Advance => self.advance(&task).await,
            TaskKind::Start => self.start_attempt(&task).await,
            TaskKind::Poll => self.poll_attempt(&task).await,
            TaskKind::Timeout => self.time_out(&task).await,
            TaskKind::Cancel => self.cancel_attempt(&task).await,
        }
    }

    /// Locks a run, loading it from the store if it is not cached. `None` inside means the
    /// store has no such run.
    async fn lock_run(
        &self,
        run_id: &str,
    ) -> Result<OwnedMutexGuard<Option<RunState>>, EngineError> {
        let slot = self
            .runs
            .lock()
            .unwrap()
            .entry(run_id.to_owned())
            .or_default()
            .clone();
        let mut guard = slot.lock_owned().await;
        if guard.is_none()
            && let Some(snapshot) = self.store.load_run(run_id).await?
        {
            *guard = Some(self.state_from(snapshot)?);
        }
        Ok(guard)
    }

    fn state_from(&self, snapshot: RunSnapshot) -> Result<RunState, EngineError> {
        let workflow = self.workflow_for(&snapshot.header.id, &snapshot.payload.spec)?;
        let mut stages: Vec<StageRecord> = workflow
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| StageRecord::pending(&snapshot.header.id, &s.id, i as u32))
            .collect();
        for stored in snapshot.stages {
            if let Some(i) = workflow.stage_index(&stored.stage_id) {
                stages[i] = stored;
            }
        }
        let mut attempts = vec![None; stages.len()];
        for a in snapshot.attempts {
            if let Some(i) = workflow.stage_index(&a.stage_id)
                && a.attempt == stages[i].attempt
            {
                attempts[i] = Some(a);
            }
        }
        Ok(RunState {
            header: snapshot.header,
            payload: snapshot.payload,
            workflow,
            stages,
            attempts,
        })
    }

    fn workflow_for(&self, run_id: &str, spec: &Value) -> Result<Arc<Workflow>, EngineError> {
        let key = spec.to_string();
        if let Some(wf) = self.workflows.lock().unwrap().get(&key) {
            return Ok(wf.clone());
        }
        let bad = |message: String| EngineError::BadWorkflow {
            run: run_id.to_owned(),
            message,
        };
        let parsed: WorkflowSpec =
            serde_json::from_value(spec.clone()).map_err(|e| bad(e.to_string()))?;
        let compiled = Workflow::compile(parsed, self.config.defaults).map_err(|errs| {
            bad(errs
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect::<Vec<_>>()
                .join("; "))
        })?;
        let compiled = Arc::new(compiled);
        self.workflows.lock().unwrap().insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Commits `changes`, publishes `events`, and dispatches the tasks claimed on the way.
    /// On failure the cached run is dropped, so the next step reloads what was really stored.
    async fn commit(
        self: &Arc<Self>,
        guard: &mut OwnedMutexGuard<Option<RunState>>,
        changes: Vec<Change>,
        events: Vec<Event>,
    ) -> Result<(), EngineError> {
        let wakes_loop = changes
            .iter()
            .any(|c| matches!(c, Change::Schedule(t) if t.claim_until.is_none()));
        let finished = guard
            .as_ref()
            .is_some_and(|s| s.header.status.is_terminal());
        match self.store.commit(changes).await {
            Ok(claimed) => {
                for event in events {
                    let _ = self.events.send(event);
                }
                if finished && let Some(state) = guard.as_ref() {
                    self.runs.lock().unwrap().remove(&state.header.id);
                    let waiters = self.waiters.lock().unwrap().remove(&state.header.id);
                    for waiter in waiters.into_iter().flatten() {
                        let _ = waiter.send(state.header.clone());
                    }
                }
                if wakes_loop {
                    self.notify.notify_one();
                }
                self.dispatch_all(claimed);
                Ok(())
            }
            Err(e) => {
                **guard = None;
                Err(e.into())
            }
        }
    }

    async fn wake(self: &Arc<Self>, key: AttemptKey) {
        self.woken.lock().unwrap().insert(key.clone());
        let Ok(mut guard) = self.lock_run(key.run_id()).await else {
            return;
        };
        let Some(state) = guard.as_mut() else { return };
        let Some(i) = state.workflow.stage_index(key.stage_id()) else {
            return;
        };
        let stage = &state.stages[i];
        if stage.attempt != key.attempt()
            || stage.phase != Some(Phase::Started)
            || !stage.status.is_active()
        {
            return;
        }
        let change = self.task(
            key.run_id(),
            key.stage_id(),
            TaskKind::Poll,
            key.attempt(),
            now_millis(),
            true,
        );
        if let Err(e) = self.commit(&mut guard, vec![change], Vec::new()).await {
            tracing::warn!(attempt = %key, error = %e, "could not schedule a poll after a wake; polling goes on as planned");
        }
    }

    fn stage_event(state: &RunState, i: usize) -> Event {
        let s = &state.stages[i];
        Event::Stage {
            run_id: s.run_id.clone(),
            stage_id: s.stage_id.clone(),
            status: s.status,
            attempt: s.attempt,
            message: s.message.clone(),
            uses: state.workflow.stages[i].uses.clone(),
        }
    }

    fn run_event(state: &RunState) -> Event {
        Event::Run {
            run_id: state.header.id.clone(),
            status: state.header.status,
            message: state.header.message.clone(),
        }
    }

    fn context(state: &RunState) -> Value {
        let stages = state
            .workflow
            .stages
            .iter()
            .zip(&state.stages)
            .filter(|(_, r)| r.status != StageStatus::Pending)
            .map(|(s, r)| {
                (
                    s.id.as_str(),
                    ContextStage {
                        status: r.status,
                        outputs: r.outputs.as_ref().unwrap_or(&Value::Null),
                        external: r.external.as_ref(),
                    },
                )
            });
        stage_context(
            &state.payload.event,
            &state.payload.trigger,
            &state.header.id,
            &state.header.workflow,
            1,
            stages,
        )
    }

    /// Removes a task that turned out to have nothing to do.
    async fn finish_task(&self, task: &Task) -> Result<(), EngineError> {
        self.store.commit(vec![Self::done(task)]).await?;
        Ok(())
    }

    fn done(task: &Task) -> Change {
        Change::Done {
            id: task.id,
            version: task.version,
        }
    }

    fn unschedule(stage: &StageRecord, kind: TaskKind) -> Change {
        Change::Unschedule {
            run_id: stage.run_id.clone(),
            stage_id: stage.stage_id.clone(),
            kind,
        }
    }

    // ---- advance -----------------------------------------------------------------------

    async fn advance(self: &Arc<Self>, task: &Task) -> Result<(), EngineError> {
        let mut guard = self.lock_run(&task.run_id).await?;
        let Some(state) = guard.as_mut() else {
            return self.finish_task(task).await;
        };
        let mut changes = vec![Self::done(task)];
        let mut events = Vec::new();
        if state.header.status.is_terminal() {
            return self.commit(&mut guard, changes, events).await;
        }
        self.progress(state, now_millis(), &mut changes, &mut events);
        self.commit(&mut guard, changes, events).await
    }

    /// Applies the graph rules (see [`plan`]) until nothing more happens: skips, cancels,
    /// writes ahead the attempts of stages that are ready (their start tasks are claimed by
    /// this engine and run right after the commit), and ends the run when all is done.
    fn progress(
        &self,
        state: &mut RunState,
        now: Millis,
        changes: &mut Vec<Change>,
        events: &mut Vec<Event>,
    ) {
        if state.header.status.is_terminal() {
            return;
        }
        let before = (state.header.status, state.header.message.clone());
        loop {
            let mut views: Vec<plan::StageView> = state
                .stages
                .iter()
                .map(|s| plan::StageView {
                    status: s.status,
                    reason: s.reason.clone(),
                    scheduled: s.status == StageStatus::Pending
                        && s.phase == Some(Phase::Scheduled),
                })
                .collect();
            let workflow = state.workflow.clone();
            let mut context = None;
            let decisions = plan::plan(
                &workflow,
                &mut views,
                state.header.cancel_requested,
                |i, _| match &workflow.stages[i].condition {
                    None => Ok(true),
                    Some(expr) => {
                        let context = context.get_or_insert_with(|| Self::context(state));
                        expr.is_true(context).map_err(|e| e.to_string())
                    }
                },
            );
            let mut again = false;
            for decision in decisions {
                match decision {
                    Decision::Skip {
                        stage,
                        reason,
                        message,
                    } => {
                        self.finish_stage(
                            state,
                            stage,
                            StageStatus::Skipped,
                            reason,
                            message,
                            now,
                            changes,
                        );
                        events.push(Self::stage_event(state, stage));
                    }
                    Decision::Fail { stage, message } => {
                        self.finish_stage(
                            state,
                            stage,
                            StageStatus::Failed,
                            reason::EXPRESSION,
                            message,
                            now,
                            changes,
                        );
                        events.push(Self::stage_event(state, stage));
                    }
                    Decision::CancelPending { stage, message } => {
                        changes.push(Self::unschedule(&state.stages[stage], TaskKind::Start));
                        self.finish_stage(
                            state,
                            stage,
                            StageStatus::Cancelled,
                            reason::CANCELLED,
                            message,
                            now,
                            changes,
                        );
                        events.push(Self::stage_event(state, stage));
                    }
                    Decision::CancelActive(stage) => {
                        let record = &mut state.stages[stage];
                        record.reason = Some(reason::CANCELLING.into());
                        record.message = Some("cancelling".into());
                        changes.push(Change::PutStage(record.clone()));
                        changes.push(self.task(
                            &record.run_id,
                            &record.stage_id,
                            TaskKind::Cancel,
                            record.attempt,
                            now,
                            true,
                        ));
                        events.push(Self::stage_event(state, stage));
                    }
                    Decision::Start(stage) => {
                        state.stages[stage].attempt += 1;
                        // A stage that fails before it starts may decide others: plan again.
                        again |= !self.prepare_attempt(state, stage, now, true, changes, events);
                    }
                    Decision::Finish { status, message } => {
                        metrics::counter!("baton_runs_total", "workflow" => state.header.workflow.clone(), "status" => status.as_str())
                            .increment(1);
                        state.header.status = status;
                        state.header.message = message;
                        state.header.finished_at = Some(now);
                    }
                }
            }
            if !again {
                break;
            }
        }
        if state.header.status == RunStatus::Queued && state.stages.iter().any(|s| s.attempt > 0) {
            state.header.status = RunStatus::Running;
            state.header.started_at = Some(now);
        }
        if (state.header.status, &state.header.message) != (before.0, &before.1) {
            changes.push(Change::PutRun(state.header.clone()));
            events.push(Self::run_event(state));
        }
    }

    /// Writes ahead the current attempt of stage `i`: renders its input, records it as
    /// `starting`, schedules its timeout and (with `schedule_start`) its start. Returns false
    /// when the stage failed instead (no such adapter, a jq error in its input).
    fn prepare_attempt(
        &self,
        state: &mut RunState,
        i: usize,
        now: Millis,
        schedule_start: bool,
        changes: &mut Vec<Change>,
        events: &mut Vec<Event>,
    ) -> bool {
        let stage = &state.workflow.stages[i];
        let failure = if !self.adapters.contains_key(&stage.uses) {
            Some((
                reason::FAILED,
                format!("adapter `{}` is not configured in this gateway", stage.uses),
            ))
        } else {
            match stage
                .with
                .render(&baton_core::expr::to_val(&Self::context(state)))
            {
                Ok(input) => {
                    let (timeout, attempt) = (stage.timeout, state.stages[i].attempt);
                    self.begin_attempt(state, i, input, now, changes);
                    let record = &state.stages[i];
                    changes.push(self.task(
                        &record.run_id,
                        &record.stage_id,
                        TaskKind::Timeout,
                        attempt,
                        now + millis(timeout),
                        false,
                    ));
                    if schedule_start {
                        changes.push(self.task(
                            &record.run_id,
                            &record.stage_id,
                            TaskKind::Start,
                            attempt,
                            now,
                            true,
                        ));
                        self.fresh.lock().unwrap().insert(AttemptKey::new(
                            &record.run_id,
                            &record.stage_id,
                            attempt,
                        ));
                    }
                    None
                }
                Err(e) => Some((reason::EXPRESSION, e.to_string())),
            }
        };
        if let Some((why, message)) = failure {
            self.begin_attempt(state, i, Value::Null, now, changes);
            self.fail_attempt(state, i, why, message, false, now, changes);
        }
        if state.header.status == RunStatus::Queued {
            state.header.status = RunStatus::Running;
            state.header.started_at = Some(now);
            changes.push(Change::PutRun(state.header.clone()));
            events.push(Self::run_event(state));
        }
        events.push(Self::stage_event(state, i));
        state.stages[i].status != StageStatus::Failed
    }

    /// Marks a stage (and its current attempt, if any) finished.
    #[allow(clippy::too_many_arguments)]
    fn finish_stage(
        &self,
        state: &mut RunState,
        i: usize,
        status: StageStatus,
        why: &str,
        message: String,
        now: Millis,
        changes: &mut Vec<Change>,
    ) {
        let record = &mut state.stages[i];
        record.status = status;
        record.reason = Some(why.to_owned());
        record.message = Some(message);
        record.finished_at = Some(now);
        // Counted when decided; a failed commit is retried from the store, which may count twice.
        metrics::counter!("baton_stages_total", "status" => status.as_str()).increment(1);
        if let Some(started) = record.started_at {
            metrics::histogram!("baton_stage_duration_seconds", "status" => status.as_str())
                .record((now - started).max(0) as f64 / 1000.0);
        }
        record.phase = record.phase.filter(|_| status.is_active());
        changes.push(Change::PutStage(record.clone()));
        changes.push(Self::unschedule(record, TaskKind::Poll));
        changes.push(Self::unschedule(record, TaskKind::Timeout));
        if let Some(attempt) = state.attempts[i]
            .as_mut()
            .filter(|a| !a.status.is_terminal())
        {
            attempt.status = status;
            attempt.reason = record.reason.clone();
            attempt.message = record.message.clone();
            attempt.finished_at = Some(now);
            changes.push(Change::PutAttempt(attempt.clone()));
        }
    }

    /// Ends a failed attempt: retries when the policy allows, else fails the stage (the
    /// caller then calls [`Inner::progress`]).
    #[allow(clippy::too_many_arguments)]
    fn fail_attempt(
        &self,
        state: &mut RunState,
        i: usize,
        why: &str,
        message: String,
        retryable: bool,
        now: Millis,
        changes: &mut Vec<Change>,
    ) {
        let retry = state.workflow.stages[i].retry;
        let attempt = state.stages[i].attempt;
        let halting = state.header.cancel_requested;
        if retryable && attempt < retry.attempts && !halting {
            if let Some(a) = state.attempts[i].as_mut() {
                a.status = StageStatus::Failed;
                a.reason = Some(why.to_owned());
                a.message = Some(message.clone());
                a.finished_at = Some(now);
                changes.push(Change::PutAttempt(a.clone()));
            }
            let next = attempt + 1;
            let delay = retry.delay_before(next);
            let record = &mut state.stages[i];
            record.status = StageStatus::Pending;
            record.attempt = next;
            record.phase = Some(Phase::Scheduled);
            record.external = None;
            record.signal = None;
            record.reason = Some(reason::RETRYING.into());
            record.message = Some(format!(
                "attempt {attempt} failed: {message}; retrying in {} (attempt {next} of {})",
                baton_core::HumanDuration(delay),
                retry.attempts
            ));
            changes.push(Change::PutStage(record.clone()));
            changes.push(Self::unschedule(record, TaskKind::Poll));
            changes.push(Self::unschedule(record, TaskKind::Timeout));
            changes.push(self.task(
                &record.run_id,
                &record.stage_id,
                TaskKind::Start,
                next,
                now + millis(delay),
                delay.is_zero(),
            ));
            state.attempts[i] = None;
        } else {
            self.finish_stage(state, i, StageStatus::Failed, why, message, now, changes);
        }
    }

    // ---- start -------------------------------------------------------------------------

    async fn start_attempt(self: &Arc<Self>, task: &Task) -> Result<(), EngineError> {
        let key = AttemptKey::new(&task.run_id, &task.stage_id, task.attempt);
        if !self.starting.lock().unwrap().insert(key.clone()) {
            return Ok(()); // this process is already starting it; that step completes the task
        }
        let result = self.start_inner(task, &key).await;
        self.starting.lock().unwrap().remove(&key);
        result
    }

    async fn start_inner(
        self: &Arc<Self>,
        task: &Task,
        key: &AttemptKey,
    ) -> Result<(), EngineError> {
        let mut guard = self.lock_run(&task.run_id).await?;
        let Some(state) = guard.as_mut() else {
            return self.finish_task(task).await;
        };
        let Some(i) = state.workflow.stage_index(&task.stage_id) else {
            return self
                .commit(&mut guard, vec![Self::done(task)], Vec::new())
                .await;
        };
        let record = &state.stages[i];
        let pending = record.status == StageStatus::Pending
            && matches!(record.phase, None | Some(Phase::Scheduled));
        let written_ahead = record.status == StageStatus::Running
            && record.phase == Some(Phase::Starting)
            && record.reason.is_none();
        if record.attempt != task.attempt
            || state.header.status.is_terminal()
            || !(pending || written_ahead)
        {
            return self
                .commit(&mut guard, vec![Self::done(task)], Vec::new())
                .await;
        }
        // Written ahead by this process, which has not called `start` since: no need to ask
        // `find`. Written ahead by a process that died: the start may have happened.
        let recovering = written_ahead && !self.fresh.lock().unwrap().remove(key);
        let stage = state.workflow.stages[i].clone();
        if pending {
            // A retry whose backoff is over: write its attempt ahead now.
            let now = now_millis();
            let mut changes = Vec::new();
            let mut events = Vec::new();
            if !self.prepare_attempt(state, i, now, false, &mut changes, &mut events) {
                changes.push(Self::done(task));
                self.progress(state, now, &mut changes, &mut events);
                return self.commit(&mut guard, changes, events).await;
            }
            // The write-ahead record: from here on a restart asks `find` before starting.
            self.commit(&mut guard, changes, events).await?;
        }
        let Some(adapter) = self.adapters.get(&stage.uses).cloned() else {
            return self.finish_task(task).await;
        };
        let state = guard
            .as_ref()
            .ok_or_else(|| EngineError::NoSuchRun(task.run_id.clone()))?;
        let request = StartRequest {
            key: key.clone(),
            workflow: state.header.workflow.clone(),
            input: state.stages[i].input.clone().unwrap_or(Value::Null),
            timeout: stage.timeout,
        };
        drop(guard);

        let call = self.config.call_timeout;
        let outcome = bounded(call, adapter.kind(), "start", async {
            if recovering {
                match adapter.find(key, &request.input).await? {
                    Some(found) => {
                        tracing::info!(attempt = %key, external = %found.id, "adopted work started before a restart");
                        return Ok(found);
                    }
                    None => tracing::info!(attempt = %key, "no work found for an interrupted start; starting it"),
                }
            }
            adapter.start(&request).await
        })
        .await;

        let mut guard = self.lock_run(&task.run_id).await?;
        let Some(state) = guard.as_mut() else {
            return Ok(());
        };
        let record = &state.stages[i];
        let still_ours = record.attempt == task.attempt
            && record.phase == Some(Phase::Starting)
            && record.status == StageStatus::Running
            && record.reason.is_none();
        let now = now_millis();
        if !still_ours {
            // Cancelled or timed out while the start was in flight: stop what was started.
            if let Ok(external) = outcome {
                let adapter = adapter.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    if let Err(e) = bounded(
                        call,
                        adapter.kind(),
                        "cancel",
                        adapter.cancel(&key, &external),
                    )
                    .await
                    {
                        tracing::warn!(attempt = %key, error = %e, "could not cancel work started after its stage ended");
                    }
                });
            }
            return self
                .commit(&mut guard, vec![Self::done(task)], Vec::new())
                .await;
        }
        let mut changes = Vec::new();
        match outcome {
            Ok(external) => {
                let record = &mut state.stages[i];
                record.phase = Some(Phase::Started);
                record.external = Some(external.clone());
                changes.push(Change::PutStage(record.clone()));
                if let Some(a) = state.attempts[i].as_mut() {
                    a.external = Some(external);
                    changes.push(Change::PutAttempt(a.clone()));
                }
                changes.push(Self::done(task));
                changes.push(self.task(
                    &task.run_id,
                    &task.stage_id,
                    TaskKind::Poll,
                    task.attempt,
                    now,
                    true,
                ));
            }
            Err(e) if e.is_transient() => {
                let record = &mut state.stages[i];
                record.message = Some(format!("start failed, retrying: {e}"));
                changes.push(Change::PutStage(record.clone()));
                // Phase stays `starting`: the retry asks `find` first, since the failed call
                // may have reached the system.
                changes.push(self.task(
                    &task.run_id,
                    &task.stage_id,
                    TaskKind::Start,
                    task.attempt,
                    now + millis(self.config.poll_min),
                    false,
                ));
            }
            Err(e) => {
                changes.push(Self::done(task));
                self.fail_attempt(
                    state,
                    i,
                    reason::FAILED,
                    format!("could not start: {e}"),
                    true,
                    now,
                    &mut changes,
                );
            }
        }
        let mut events = vec![Self::stage_event(state, i)];
        self.progress(state, now, &mut changes, &mut events);
        self.commit(&mut guard, changes, events).await
    }

    fn begin_attempt(
        &self,
        state: &mut RunState,
        i: usize,
        input: Value,
        now: Millis,
        changes: &mut Vec<Change>,
    ) {
        let record = &mut state.stages[i];
        record.status = StageStatus::Running;
        record.phase = Some(Phase::Starting);
        record.input = Some(input);
        record.external = None;
        record.outputs = None;
        record.signal = None;
        record.reason = None;
        record.message = None;
        record.started_at.get_or_insert(now);
        let attempt = AttemptRecord {
            run_id: record.run_id.clone(),
            stage_id: record.stage_id.clone(),
            attempt: record.attempt,
            status: StageStatus::Running,
            reason: None,
            message: None,
            external: None,
            started_at: Some(now),
            finished_at: None,
        };
        changes.push(Change::PutStage(record.clone()));
        changes.push(Change::PutAttempt(attempt.clone()));
        state.attempts[i] = Some(attempt);
    }

    // ---- poll --------------------------------------------------------------------------

    async fn poll_attempt(self: &Arc<Self>, task: &Task) -> Result<(), EngineError> {
        let key = AttemptKey::new(&task.run_id, &task.stage_id, task.attempt);
        let guard = self.lock_run(&task.run_id).await?;
        let valid = |state: &RunState, i: usize| {
            let r = &state.stages[i];
            r.attempt == task.attempt
                && r.phase == Some(Phase::Started)
                && r.status.is_active()
                && r.reason.is_none()
        };
        let Some((i, adapter, external, signal, started)) = guard.as_ref().and_then(|state| {
            let i = state.workflow.stage_index(&task.stage_id)?;
            let adapter = self.adapters.get(&state.workflow.stages[i].uses)?.clone();
            let r = &state.stages[i];
            let external = r.external.clone()?;
            valid(state, i).then(|| {
                (
                    i,
                    adapter,
                    external,
                    r.signal.clone(),
                    state.attempts[i].as_ref().and_then(|a| a.started_at),
                )
            })
        }) else {
            drop(guard);
            return self.finish_task(task).await;
        };
        drop(guard);
        self.woken.lock().unwrap().remove(&key);

        let call = self.config.call_timeout;
        let request = PollRequest {
            key: &key,
            external: &external,
            signal: signal.as_ref(),
        };
        let polled = bounded(call, adapter.kind(), "poll", adapter.poll(&request)).await;
        let outputs = match &polled {
            Ok(outcome) if outcome.state.is_terminal() => {
                let latest = outcome.external.as_ref().unwrap_or(&external);
                Some(
                    bounded(
                        call,
                        adapter.kind(),
                        "outputs",
                        adapter.outputs(&key, latest),
                    )
                    .await,
                )
            }
            _ => None,
        };

        let mut guard = self.lock_run(&task.run_id).await?;
        let Some(state) = guard.as_mut() else {
            return Ok(());
        };
        if !valid(state, i) {
            return self
                .commit(&mut guard, vec![Self::done(task)], Vec::new())
                .await;
        }
        let now = now_millis();
        let mut changes = Vec::new();
        // Finished work whose outputs could not be read for a passing reason is polled again
        // (outputs included) rather than failed.
        let polled = match (polled, &outputs) {
            (Ok(o), Some(Err(e))) if o.state.is_terminal() && e.is_transient() => Err(e.clone()),
            (polled, _) => polled,
        };
        let outcome = match polled {
            Ok(outcome) => outcome,
            Err(e) if e.is_transient() => {
                let record = &mut state.stages[i];
                record.message = Some(format!("poll failed, retrying: {e}"));
                changes.push(Change::PutStage(record.clone()));
                let next = self.poll_delay(None, started, now);
                changes.push(self.task(
                    &task.run_id,
                    &task.stage_id,
                    TaskKind::Poll,
                    task.attempt,
                    now + millis(next),
                    false,
                ));
                let event = Self::stage_event(state, i);
                return self.commit(&mut guard, changes, vec![event]).await;
            }
            Err(e) => {
                changes.push(Self::done(task));
                self.fail_attempt(
                    state,
                    i,
                    reason::FAILED,
                    e.to_string(),
                    true,
                    now,
                    &mut changes,
                );
                let mut events = vec![Self::stage_event(state, i)];
                self.progress(state, now, &mut changes, &mut events);
                return self.commit(&mut guard, changes, events).await;
            }
        };
        if let Some(external) = outcome.external.clone() {
            state.stages[i].external = Some(external.clone());
            if let Some(a) = state.attempts[i].as_mut() {
                a.external = Some(external);
                changes.push(Change::PutAttempt(a.clone()));
            }
        }
        let describe = || outcome.message.clone().or_else(|| outcome.raw.clone());
        match &outcome.state {
            ExternalState::Succeeded { .. } => {
                match outputs.unwrap_or_else(|| Ok(Default::default())) {
                    Ok(map) => {
                        state.stages[i].outputs = Some(Value::Object(map));
                        let message = describe().unwrap_or_else(|| "succeeded".into());
                        self.finish_stage(
                            state,
                            i,
                            StageStatus::Succeeded,
                            "succeeded",
                            message,
                            now,
                            &mut changes,
                        );
                    }
                    Err(e) => self.fail_attempt(
                        state,
                        i,
                        reason::FAILED,
                        format!("succeeded, but its outputs could not be read: {e}"),
                        true,
                        now,
                        &mut changes,
                    ),
                }
            }
            ExternalState::Failed | ExternalState::Errored => {
                if let Some(Ok(map)) = outputs {
                    state.stages[i].outputs = Some(Value::Object(map));
                }
                let word = if outcome.state == ExternalState::Errored {
                    "errored"
                } else {
                    "failed"
                };
                let message = describe().unwrap_or_else(|| word.to_owned());
                self.fail_attempt(state, i, reason::FAILED, message, true, now, &mut changes);
            }
            ExternalState::Cancelled | ExternalState::Skipped => {
                let status = if outcome.state == ExternalState::Cancelled {
                    StageStatus::Cancelled
                } else {
                    StageStatus::Skipped
                };
                let message =
                    describe().unwrap_or_else(|| format!("{status} in the external system"));
                self.finish_stage(
                    state,
                    i,
                    status,
                    reason::EXTERNAL,
                    message,
                    now,
                    &mut changes,
                );
            }
            other => {
                let record = &mut state.stages[i];
                record.status = other.stage_status();
                record.message = match other {
                    ExternalState::Unknown(raw) => Some(format!(
                        "unrecognised external status `{raw}`; still polling"
                    )),
                    _ => describe(),
                };
                changes.push(Change::PutStage(record.clone()));
                let woken = self.woken.lock().unwrap().remove(&key);
                let next = if woken {
                    Duration::ZERO
                } else {
                    self.poll_delay(outcome.next_poll, started, now)
                };
                changes.push(self.task(
                    &task.run_id,
                    &task.stage_id,
                    TaskKind::Poll,
                    task.attempt,
                    now + millis(next),
                    next.is_zero(),
                ));
            }
        }
        let mut events = vec![Self::stage_event(state, i)];
        self.progress(state, now, &mut changes, &mut events);
        self.commit(&mut guard, changes, events).await
    }

    /// The wait before the next poll: the adapter's hint if it gave one (at least 50 ms),
    /// else a tenth of the time the attempt has run, within [poll_min, poll_max].
    fn poll_delay(&self, hint: Option<Duration>, started: Option<Millis>, now: Millis) -> Duration {
        match hint {
            Some(hint) => hint.clamp(Duration::from_millis(50), self.config.poll_max),
            None => {
                let elapsed = Duration::from_millis(started.map_or(0, |s| (now - s).max(0)) as u64);
                (elapsed / 10).clamp(
                    self.config.poll_min,
                    self.config.poll_max.max(self.config.poll_min),
                )
            }
        }
    }

    // ---- timeout and cancel ----------------------------------------------------------------

    async fn time_out(self: &Arc<Self>, task: &Task) -> Result<(), EngineError> {
        let mut guard = self.lock_run(&task.run_id).await?;
        let Some(state) = guard.as_mut() else {
            return self.finish_task(task).await;
        };
        let mut changes = vec![Self::done(task)];
        let Some(i) = state.workflow.stage_index(&task.stage_id) else {
            return self.commit(&mut guard, changes, Vec::new()).await;
        };
        let record = &mut state.stages[i];
        if record.attempt == task.attempt
            && record.status.is_active()
            && record.reason.as_deref() != Some(reason::TIMING_OUT)
        {
            record.reason = Some(reason::TIMING_OUT.into());
            record.message = Some(format!(
                "timed out after {}; stopping the work",
                baton_core::HumanDuration(state.workflow.stages[i].timeout)
            ));
            changes.push(Change::PutStage(record.clone()));
            changes.push(self.task(
                &task.run_id,
                &task.stage_id,
                TaskKind::Cancel,
                task.attempt,
                now_millis(),
                true,
            ));
            let event = Self::stage_event(state, i);
            return self.commit(&mut guard, changes, vec![event]).await;
        }
        self.commit(&mut guard, changes, Vec::new()).await
    }

    async fn cancel_attempt(self: &Arc<Self>, task: &Task) -> Result<(), EngineError> {
        let key = AttemptKey::new(&task.run_id, &task.stage_id, task.attempt);
        let guard = self.lock_run(&task.run_id).await?;
        let target = guard.as_ref().and_then(|state| {
            let i = state.workflow.stage_index(&task.stage_id)?;
            let r = &state.stages[i];
            (r.attempt == task.attempt && r.status.is_active()).then(|| {
                (
                    i,
                    self.adapters.get(&state.workflow.stages[i].uses).cloned(),
                    r.external.clone(),
                    r.input.clone(),
                    r.phase,
                )
            })
        });
        drop(guard);
        let Some((i, adapter, external, input, phase)) = target else {
            return self.finish_task(task).await;
        };
        let call = self.config.call_timeout;
        let mut failure = None;
        if let Some(adapter) = adapter {
            let external = match (external, phase) {
                (Some(ext), _) => Some(ext),
                // The start may have reached the system before the stage was stopped.
                (None, Some(Phase::Starting)) => bounded(
                    call,
                    adapter.kind(),
                    "find",
                    adapter.find(&key, input.as_ref().unwrap_or(&Value::Null)),
                )
                .await
                .ok()
                .flatten(),
                _ => None,
            };
            if let Some(external) = external {
                // Transient failures are retried a few times here, then given up on (and
                // said in the stage's message) so that a run always ends.
                for pause in [1, 2, 4, 0] {
                    match bounded(
                        call,
                        adapter.kind(),
                        "cancel",
                        adapter.cancel(&key, &external),
                    )
                    .await
                    {
                        Ok(()) => {
                            failure = None;
                            break;
                        }
                        Err(e) => {
                            let retry = e.is_transient() && pause > 0;
                            failure = Some(e);
                            if !retry {
                                break;
                            }
                            tokio::time::sleep(Duration::from_secs(pause)).await;
                        }
                    }
                }
            }
        }
        let mut guard = self.lock_run(&task.run_id).await?;
        let Some(state) = guard.as_mut() else {
            return Ok(());
        };
        let record = &state.stages[i];
        let now = now_millis();
        let mut changes = Vec::new();
        if record.attempt != task.attempt || !record.status.is_active() {
            return self
                .commit(&mut guard, vec![Self::done(task)], Vec::new())
                .await;
        }
        let note = failure
            .map(|e| format!(" (the external system did not confirm the cancel: {e})"))
            .unwrap_or_default();
        changes.push(Self::done(task));
        if record.reason.as_deref() == Some(reason::TIMING_OUT) {
            let message = format!(
                "timed out after {}{note}",
                baton_core::HumanDuration(state.workflow.stages[i].timeout)
            );
            self.fail_attempt(
                state,
                i,
                reason::TIMED_OUT,
                message,
                true,
                now,
                &mut changes,
            );
        } else {
            self.finish_stage(
                state,
                i,
                StageStatus::Cancelled,
                reason::CANCELLED,
                format!("cancelled{note}"),
                now,
                &mut changes,
            );
        }
        let mut events = vec![Self::stage_event(state, i)];
        self.progress(state, now, &mut changes, &mut events);
        self.commit(&mut guard, changes, events).await
    }
}

/// Bounds an adapter call; a call that overruns is a transient error.
/// Also records `baton_adapter_call_seconds{adapter, call}` and, on failure,
/// `baton_adapter_errors_total{adapter, call}`.
async fn bounded<T>(
    limit: Duration,
    adapter: &'static str,
    name: &'static str,
    call: impl std::future::Future<Output = Result<T, AdapterError>>,
) -> Result<T, AdapterError> {
    let begun = std::time::Instant::now();
    let result = match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(AdapterError::Transient(format!(
            "the adapter call took longer than {}",
            baton_core::HumanDuration(limit)
        ))),
    };
    metrics::histogram!("baton_adapter_call_seconds", "adapter" => adapter, "call" => name)
        .record(begun.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!("baton_adapter_errors_total", "adapter" => adapter, "call" => name)
            .increment(1);
    }
    result
}
