//! The records of a stage attempt: written ahead before a start, finished, or failed and
//! retried under the stage's retry policy. Shared by every step.

use baton_core::{AttemptKey, RunStatus, StageStatus};
use baton_store::{AttemptRecord, Change, Millis, Phase, TaskKind};
use serde_json::Value;

use crate::Inner;
use crate::commit::millis;
use crate::events::Event;
use crate::plan::reason;
use crate::state::RunState;

impl Inner {
    /// Writes ahead the current attempt of stage `i`: renders its input, records it as
    /// `starting`, schedules its timeout and (with `schedule_start`) its start. Returns false
    /// when the stage failed instead (no such adapter, a jq error in its input).
    pub(crate) fn prepare_attempt(
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
    // The step's state, the stage, what ended it and the commit it goes into: grouping them
    // in a struct would only rename the caller's locals.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish_stage(
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
    // As for `finish_stage`: each argument is one of the step's own locals.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fail_attempt(
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

    pub(crate) fn begin_attempt(
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
}
