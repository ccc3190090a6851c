//! The cached copy of a run a step works on, and how it is rebuilt from the store.

use std::sync::Arc;

use baton_core::context::{StageView as ContextStage, stage_context};
use baton_core::{StageStatus, Workflow, WorkflowSpec};
use baton_store::{AttemptRecord, RunHeader, RunPayload, RunSnapshot, StageRecord};
use serde_json::Value;
use tokio::sync::OwnedMutexGuard;

use crate::{EngineError, Inner};

/// The in-memory copy of a run being worked on; rebuilt from the store whenever in doubt.
pub(crate) struct RunState {
    pub(crate) header: RunHeader,
    pub(crate) payload: RunPayload,
    pub(crate) workflow: Arc<Workflow>,
    pub(crate) stages: Vec<StageRecord>,
    pub(crate) attempts: Vec<Option<AttemptRecord>>,
}

pub(crate) type RunSlot = Arc<tokio::sync::Mutex<Option<RunState>>>;

impl Inner {
    /// Locks a run, loading it from the store if it is not cached. `None` inside means the
    /// store has no such run.
    pub(crate) async fn lock_run(
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
