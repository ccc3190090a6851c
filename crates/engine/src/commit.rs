//! Committing a step: the store changes that schedule and finish tasks, and the commit that
//! stores a step's changes, publishes its events and dispatches the tasks it claimed.

use std::sync::Arc;
use std::time::Duration;

use baton_store::{Change, Millis, StageRecord, Task, TaskKind, TaskSpec, now_millis};
use tokio::sync::OwnedMutexGuard;

use crate::events::Event;
use crate::report::add_reports;
use crate::state::RunState;
use crate::{EngineError, Inner};

/// A duration as store milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
}

impl Inner {
    pub(crate) fn task(
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

    /// Commits `changes`, publishes `events`, and dispatches the tasks claimed on the way.
    /// On failure the cached run is dropped, so the next step reloads what was really stored.
    pub(crate) async fn commit(
        self: &Arc<Self>,
        guard: &mut OwnedMutexGuard<Option<RunState>>,
        mut changes: Vec<Change>,
        events: Vec<Event>,
    ) -> Result<(), EngineError> {
        if let Some(state) = guard.as_ref() {
            add_reports(&state.workflow, &mut changes, 0);
        }
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

    /// Removes a task that turned out to have nothing to do.
    pub(crate) async fn finish_task(&self, task: &Task) -> Result<(), EngineError> {
        self.store.commit(vec![Self::done(task)]).await?;
        Ok(())
    }

    pub(crate) fn done(task: &Task) -> Change {
        Change::Done {
            id: task.id,
            version: task.version,
        }
    }

    pub(crate) fn unschedule(stage: &StageRecord, kind: TaskKind) -> Change {
        Change::Unschedule {
            run_id: stage.run_id.clone(),
            stage_id: stage.stage_id.clone(),
            kind,
        }
    }
}
