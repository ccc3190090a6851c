//! The poll step: asks the adapter how an attempt's work is doing, reads its outputs when it
//! is finished, and schedules the next poll otherwise.

use std::sync::Arc;
use std::time::Duration;

use baton_core::{AttemptKey, ExternalState, PollRequest, StageStatus};
use baton_store::{Change, Millis, Phase, Task, TaskKind, now_millis};
use serde_json::Value;

use crate::call::bounded;
use crate::commit::millis;
use crate::plan::reason;
use crate::state::RunState;
use crate::{EngineError, Inner};

impl Inner {
    pub(crate) async fn poll_attempt(self: &Arc<Self>, task: &Task) -> Result<(), EngineError> {
        let key = AttemptKey::new(&task.run_id, &task.stage_id, task.attempt);
        let mut guard = self.lock_task(task).await?;
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
            return self.finish_task(&mut guard, task).await;
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

        let mut guard = self.lock_task(task).await?;
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
                self.progress_locked(&mut guard, now, &mut changes, &mut events)
                    .await?;
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
                let status = other.stage_status();
                let message = match other {
                    ExternalState::Unknown(raw) => Some(format!(
                        "unrecognised external status `{raw}`; still polling"
                    )),
                    _ => describe(),
                };
                // Most polls of running work change nothing: writing the same stage again
                // would cost a row (and, for a workflow with `report:`, an outbox row) each.
                if status != record.status
                    || message != record.message
                    || outcome.external.is_some()
                {
                    record.status = status;
                    record.message = message;
                    changes.push(Change::PutStage(record.clone()));
                }
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
        self.progress_locked(&mut guard, now, &mut changes, &mut events)
            .await?;
        self.commit(&mut guard, changes, events).await
    }

    /// The wait before the next poll: the adapter's hint if it gave one (at least 50 ms),
    /// else a tenth of the time the attempt has run, within [poll_min, poll_max].
    pub(crate) fn poll_delay(
        &self,
        hint: Option<Duration>,
        started: Option<Millis>,
        now: Millis,
    ) -> Duration {
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
}
