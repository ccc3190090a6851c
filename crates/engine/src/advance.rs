//! The advance step: applies the graph rules of [`crate::plan`] to a run and writes down
//! what they decide.

use std::sync::Arc;

use baton_core::{RunStatus, StageStatus};
use baton_store::{Change, Millis, Phase, Task, TaskKind, now_millis};

use crate::events::Event;
use crate::plan::{self, Decision, reason};
use crate::state::RunState;
use crate::{EngineError, Inner};

impl Inner {
    pub(crate) async fn advance(self: &Arc<Self>, task: &Task) -> Result<(), EngineError> {
        let mut guard = self.lock_task(task).await?;
        let Some(state) = guard.as_mut() else {
            return self.finish_task(&mut guard, task).await;
        };
        let mut changes = vec![Self::done(task)];
        let mut events = Vec::new();
        if state.header.status.is_terminal() {
            return self.commit(&mut guard, changes, events).await;
        }
        self.progress_locked(&mut guard, now_millis(), &mut changes, &mut events)
            .await?;
        self.commit(&mut guard, changes, events).await
    }

    /// Applies the graph rules (see [`plan`]) until nothing more happens: skips, cancels,
    /// writes ahead the attempts of stages that are ready (their start tasks are claimed by
    /// this engine and run right after the commit), and ends the run when all is done.
    pub(crate) fn progress(
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
}
