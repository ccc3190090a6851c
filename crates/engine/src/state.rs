//! The cached copy of a run a step works on, and how it is rebuilt from the store.

use std::sync::Arc;

use baton_core::context::{StageView as ContextStage, stage_context};
use baton_core::{StageStatus, TemplatedValue, Workflow, WorkflowSpec, expr_bound};
use baton_store::{
    AttemptRecord, Change, Millis, RunHeader, RunPayload, RunSnapshot, StageRecord, Task, TaskLease,
};
use serde_json::Value;
use tokio::sync::OwnedMutexGuard;

use crate::events::Event;
use crate::{EngineError, Inner};

/// The in-memory copy of a run being worked on; rebuilt from the store whenever in doubt.
pub(crate) struct RunState {
    /// The run's version in the store when this copy was loaded or last committed: every
    /// commit is fenced with it ([`Change::Fence`]).
    pub(crate) version: i64,
    /// The claim of the task whose step holds the run's lock now; `None` for a request from
    /// outside (cancel, approve, retry). Set by each lock.
    pub(crate) lease: Option<TaskLease>,
    pub(crate) header: RunHeader,
    pub(crate) payload: RunPayload,
    pub(crate) workflow: Arc<Workflow>,
    pub(crate) stages: Vec<StageRecord>,
    pub(crate) attempts: Vec<Option<AttemptRecord>>,
}

pub(crate) type RunSlot = Arc<tokio::sync::Mutex<Option<RunState>>>;

/// A locked run, as [`Inner::lock_run`] gives it.
pub(crate) type RunGuard = OwnedMutexGuard<Option<RunState>>;

/// True when deciding about `workflow`'s stages evaluates jq (a stage `if`, a template in
/// `with`): that work runs on an evaluation thread, bounded (see [`Inner::on_state`]).
fn evaluates(workflow: &Workflow) -> bool {
    workflow
        .stages
        .iter()
        .any(|s| s.condition.is_some() || !matches!(s.with, TemplatedValue::Literal(_)))
}

impl Inner {
    /// Locks a run for a request from outside (no task claim), loading it from the store if
    /// it is not cached. `None` inside means the store has no such run.
    pub(crate) async fn lock_run(&self, run_id: &str) -> Result<RunGuard, EngineError> {
        self.lock(run_id, None).await
    }

    /// Locks a run for a request about its stage `stage_id`; answers the stage's index.
    pub(crate) async fn lock_stage(
        &self,
        run_id: &str,
        stage_id: &str,
    ) -> Result<(RunGuard, usize), EngineError> {
        let guard = self.lock_run(run_id).await?;
        let state = guard
            .as_ref()
            .ok_or_else(|| EngineError::NoSuchRun(run_id.to_owned()))?;
        let i = state
            .workflow
            .stage_index(stage_id)
            .ok_or_else(|| EngineError::NoSuchStage {
                run: run_id.into(),
                stage: stage_id.into(),
            })?;
        Ok((guard, i))
    }

    /// Locks a run for the step of `task`: its commits are fenced with the task's claim.
    pub(crate) async fn lock_task(&self, task: &Task) -> Result<RunGuard, EngineError> {
        let lease = TaskLease {
            id: task.id,
            token: task.lease,
        };
        self.lock(&task.run_id, Some(lease)).await
    }

    async fn lock(&self, run_id: &str, lease: Option<TaskLease>) -> Result<RunGuard, EngineError> {
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
        if let Some(state) = guard.as_mut() {
            state.lease = lease;
        }
        Ok(guard)
    }

    /// Runs `f` on the locked run `run_id`. When its workflow evaluates jq, the run is
    /// moved to an evaluation thread for it, every evaluation bounded by
    /// `[expressions]`, so an expression never holds an async worker and ends within its
    /// bounds; the lock stays held meanwhile. Workflows without expressions (most) are
    /// worked on in place.
    ///
    /// If the evaluation thread fails (it could not be started), the cached run is
    /// dropped: the next step reloads it from the store.
    pub(crate) async fn on_state<R: Send + 'static>(
        self: &Arc<Self>,
        guard: &mut RunGuard,
        run_id: &str,
        f: impl FnOnce(&Inner, &mut RunState) -> R + Send + 'static,
    ) -> Result<R, EngineError> {
        let state = guard
            .as_mut()
            .ok_or_else(|| EngineError::NoSuchRun(run_id.to_owned()))?;
        if !evaluates(&state.workflow) {
            return Ok(f(self, state));
        }
        let Some(mut state) = guard.take() else {
            return Err(EngineError::NoSuchRun(run_id.to_owned()));
        };
        let inner = self.clone();
        let (state, r) = expr_bound::offload(self.config.expressions, move |_| {
            let r = f(&inner, &mut state);
            (state, r)
        })
        .await
        .map_err(|e| EngineError::Evaluation(e.to_string()))?;
        **guard = Some(state);
        Ok(r)
    }

    /// [`Inner::progress`] on the locked run (see [`Inner::on_state`]); nothing when the
    /// store has no such run.
    pub(crate) async fn progress_locked(
        self: &Arc<Self>,
        guard: &mut RunGuard,
        now: Millis,
        changes: &mut Vec<Change>,
        events: &mut Vec<Event>,
    ) -> Result<(), EngineError> {
        let Some(state) = guard.as_mut() else {
            return Ok(());
        };
        if !evaluates(&state.workflow) {
            self.progress(state, now, changes, events);
            return Ok(());
        }
        let run_id = state.header.id.clone();
        let mut batch = (std::mem::take(changes), std::mem::take(events));
        batch = self
            .on_state(guard, &run_id, move |inner, state| {
                let (mut changes, mut events) = batch;
                inner.progress(state, now, &mut changes, &mut events);
                (changes, events)
            })
            .await?;
        (*changes, *events) = batch;
        Ok(())
    }

    pub(crate) fn state_from(&self, snapshot: RunSnapshot) -> Result<RunState, EngineError> {
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
            version: snapshot.version,
            lease: None,
            header: snapshot.header,
            payload: snapshot.payload,
            workflow,
            stages,
            attempts,
        })
    }

    pub(crate) fn workflow_for(
        &self,
        run_id: &str,
        spec: &Value,
    ) -> Result<Arc<Workflow>, EngineError> {
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
        let compiled = Workflow::compile(parsed, self.config.defaults.clone()).map_err(|errs| {
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

    pub(crate) fn context(state: &RunState) -> Value {
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
}
