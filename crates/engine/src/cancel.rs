//! Cancelling: a run on request, and the cancel task that stops one stage attempt
//! through its adapter (also the end of a timeout, see [`crate::timeout`]).

use std::sync::Arc;
use std::time::Duration;

use baton_core::{AttemptKey, StageStatus};
use baton_store::{Change, Phase, Task, TaskKind, now_millis};
use serde_json::Value;

use crate::call::bounded;
use crate::commit::refenced;
use crate::plan::reason;
use crate::{Engine, EngineError, Inner};

impl Engine {
    /// Asks to cancel a run: pending stages are cancelled, running ones through their adapters.
    pub async fn cancel_run(&self, run_id: &str) -> Result<(), EngineError> {
        refenced(|| self.cancel_run_once(run_id)).await
    }

    async fn cancel_run_once(&self, run_id: &str) -> Result<(), EngineError> {
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
}

impl Inner {
    pub(crate) async fn cancel_attempt(self: &Arc<Self>, task: &Task) -> Result<(), EngineError> {
        let key = AttemptKey::new(&task.run_id, &task.stage_id, task.attempt);
        let mut guard = self.lock_task(task).await?;
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
        let Some((i, adapter, external, input, phase)) = target else {
            return self.finish_task(&mut guard, task).await;
        };
        drop(guard);
        let call = self.config.call_timeout;
        let mut failure = None;
        let mut explained = None;
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
                        adapter.cancel_explained(&key, &external),
                    )
                    .await
                    {
                        Ok(note) => {
                            failure = None;
                            explained = note;
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
        let mut guard = self.lock_task(task).await?;
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
        let note = match (failure, explained) {
            (Some(e), _) => format!(" (the external system did not confirm the cancel: {e})"),
            (None, Some(said)) => format!("; {said}"),
            (None, None) => String::new(),
        };
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
        self.progress_locked(&mut guard, now, &mut changes, &mut events)
            .await?;
        self.commit(&mut guard, changes, events).await
    }
}
