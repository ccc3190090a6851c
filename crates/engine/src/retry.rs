//! Retrying a failed or cancelled stage by hand, and resetting what lies downstream of it.

use baton_core::{RunStatus, StageStatus};
use baton_store::{Change, Phase, TaskKind, now_millis};

use crate::commit::refenced;
use crate::plan::reason;
use crate::{Engine, EngineError, Inner};

impl Engine {
    /// Runs a failed or cancelled stage again (a new attempt), and after it every stage
    /// downstream of it. A finished run is reopened.
    pub async fn retry_stage(&self, run_id: &str, stage_id: &str) -> Result<u32, EngineError> {
        refenced(|| self.retry_stage_once(run_id, stage_id)).await
    }

    async fn retry_stage_once(&self, run_id: &str, stage_id: &str) -> Result<u32, EngineError> {
        let (mut guard, i) = self.inner.lock_stage(run_id, stage_id).await?;
        let state = guard
            .as_mut()
            .ok_or_else(|| EngineError::NoSuchRun(run_id.to_owned()))?;
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
}
