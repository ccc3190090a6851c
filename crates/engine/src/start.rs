//! The start step: starts a written-ahead attempt through its adapter, asking the adapter's
//! `find` first when a previous process may already have started it.

use std::sync::Arc;

use baton_core::{AttemptKey, HumanDuration, StageStatus, StartRequest};
use baton_store::{Change, Phase, Task, TaskKind, now_millis};
use serde_json::Value;

use crate::call::bounded;
use crate::commit::millis;
use crate::plan::reason;
use crate::{EngineError, Inner};

impl Inner {
    pub(crate) async fn start_attempt(self: &Arc<Self>, task: &Task) -> Result<(), EngineError> {
        let key = AttemptKey::new(&task.run_id, &task.stage_id, task.attempt);
        if !self.starting.lock().unwrap().insert(key.clone()) {
            return Ok(()); // this process is already starting it; that step completes the task
        }
        let result = self.start_inner(task, &key).await;
        self.starting.lock().unwrap().remove(&key);
        result
    }

    pub(crate) async fn start_inner(
        self: &Arc<Self>,
        task: &Task,
        key: &AttemptKey,
    ) -> Result<(), EngineError> {
        let mut guard = self.lock_task(task).await?;
        let Some(state) = guard.as_mut() else {
            return self.finish_task(&mut guard, task).await;
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
            let done = Self::done(task);
            let (prepared, changes, events) = self
                .on_state(&mut guard, &task.run_id, move |inner, state| {
                    let mut changes = Vec::new();
                    let mut events = Vec::new();
                    let prepared =
                        inner.prepare_attempt(state, i, now, false, &mut changes, &mut events);
                    if !prepared {
                        changes.push(done);
                        inner.progress(state, now, &mut changes, &mut events);
                    }
                    (prepared, changes, events)
                })
                .await?;
            if !prepared {
                return self.commit(&mut guard, changes, events).await;
            }
            // The write-ahead record: from here on a restart asks `find` before starting.
            self.commit(&mut guard, changes, events).await?;
        }
        let Some(adapter) = self.adapters.get(&stage.uses).cloned() else {
            return self.finish_task(&mut guard, task).await;
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

        // On a shared store, a claim lost while this process was paused (another replica took
        // the stage over, and starts or finds its work) must not start anything: asked right
        // before the call, and the call is dropped if the renewal finds the claim lost while
        // it is still preparing its request.
        let abort = if self.store.shared() {
            if !self.store.holds(task).await? {
                self.gone(task);
                return Ok(());
            }
            self.with_flight(task, |f| f.abort.clone())
        } else {
            None
        };
        let call = self.config.call_timeout;
        let starting = bounded(call, adapter.kind(), "start", async {
            if recovering {
                match adapter.find(key, &request.input).await? {
                    Some(found) => {
                        tracing::info!(attempt = %key, external = %found.id, "adopted work started before a restart");
                        return Ok(found);
                    }
                    None => {
                        tracing::info!(attempt = %key, "no work found for an interrupted start; starting it");
                    }
                }
            }
            adapter.start(&request).await
        });
        let outcome = match abort {
            Some(abort) => tokio::select! {
                outcome = starting => outcome,
                () = abort.notified() => return Ok(()),
            },
            None => starting.await,
        };

        let mut guard = self.lock_task(task).await?;
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
                // A spent quota says when it frees: trying before then would only be
                // refused again (and, for some systems, count against the quota).
                let wait = match e.retry_after() {
                    Some(after) => self.config.poll_min.max(after),
                    None => self.config.poll_min,
                };
                let record = &mut state.stages[i];
                record.message = Some(match e.retry_after() {
                    Some(_) => format!("start deferred for {}: {e}", HumanDuration(wait)),
                    None => format!("start failed, retrying: {e}"),
                });
                changes.push(Change::PutStage(record.clone()));
                // Phase stays `starting`: the retry asks `find` first, since the failed call
                // may have reached the system.
                changes.push(self.task(
                    &task.run_id,
                    &task.stage_id,
                    TaskKind::Start,
                    task.attempt,
                    now + millis(wait),
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
        self.progress_locked(&mut guard, now, &mut changes, &mut events)
            .await?;
        self.commit(&mut guard, changes, events).await
    }
}
