//! Committing a step: the store changes that schedule and finish tasks, and the commit that
//! stores a step's changes, publishes its events and dispatches the tasks it claimed.

use std::sync::Arc;
use std::time::Duration;

use baton_store::{Change, Millis, StageRecord, StoreError, Task, TaskKind, TaskSpec, now_millis};
use tokio::sync::OwnedMutexGuard;

use crate::events::Event;
use crate::lease::Target;
use crate::report::add_reports;
use crate::state::RunState;
use crate::{EngineError, Inner};

/// How many times a request from outside (cancel, approve, retry, a wake) is made in all
/// when its commit is fenced: each try reloads the run another process wrote meanwhile, so
/// only a run written again between every reload and commit fails it.
const FENCED_TRIES: u32 = 5;

/// Runs `request` again from a fresh copy of the run while its commit is fenced, up to
/// [`FENCED_TRIES`] times. A fenced commit dropped the cached run, so each try reloads it.
pub(crate) async fn refenced<R, Fut>(mut request: impl FnMut() -> Fut) -> Result<R, EngineError>
where
    Fut: Future<Output = Result<R, EngineError>>,
{
    let mut tries = 1;
    loop {
        match request().await {
            Err(e) if e.is_fenced() && tries < FENCED_TRIES => tries += 1,
            other => return other,
        }
    }
}

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
    /// The commit is fenced ([`Change::Fence`]) with the run's version as cached and the
    /// claim of the step's task, so a step made from a stale copy, or under a claim another
    /// process took, writes nothing. On failure the cached run is dropped, so the next step
    /// reloads what was really stored.
    pub(crate) async fn commit(
        self: &Arc<Self>,
        guard: &mut OwnedMutexGuard<Option<RunState>>,
        mut changes: Vec<Change>,
        events: Vec<Event>,
    ) -> Result<(), EngineError> {
        let fence = guard.as_ref().map(|state| {
            (
                state.header.id.clone(),
                state.lease,
                Change::Fence {
                    run_id: state.header.id.clone(),
                    version: state.version,
                    lease: state.lease,
                },
            )
        });
        if let Some((run_id, Some(lease), _)) = &fence
            && self.is_lost(run_id, *lease)
        {
            **guard = None;
            return Err(StoreError::Fenced(format!(
                "the claim on task {} of run `{run_id}` was lost",
                lease.id
            ))
            .into());
        }
        if let Some(state) = guard.as_ref() {
            add_reports(&state.workflow, &mut changes, 0);
        }
        let wakes_loop = changes
            .iter()
            .any(|c| matches!(c, Change::Schedule(t) if t.claim_until.is_none()));
        let finished = guard
            .as_ref()
            .is_some_and(|s| s.header.status.is_terminal());
        let (changes, own) = match fence {
            Some((run_id, own, fence)) => {
                let mut fenced = Vec::with_capacity(changes.len() + 1);
                fenced.push(fence);
                fenced.extend(changes);
                (fenced, Some((run_id, own)))
            }
            None => (changes, None),
        };
        // Kept to tell this process's own later steps from another process's (see `lease`).
        let supersedes = own
            .map(|(run_id, own)| (run_id, own, Target::of(&changes)))
            .filter(|(_, _, targets)| !targets.is_empty());
        match self.store.commit(changes).await {
            Ok(claimed) => {
                if let Some(state) = guard.as_mut() {
                    state.version += 1;
                }
                if let Some((run_id, own, targets)) = supersedes {
                    self.supersede(&run_id, own, &targets);
                }
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

    /// Removes a task that turned out to have nothing to do: through the locked run's fenced
    /// commit when the run exists, else alone.
    pub(crate) async fn finish_task(
        self: &Arc<Self>,
        guard: &mut OwnedMutexGuard<Option<RunState>>,
        task: &Task,
    ) -> Result<(), EngineError> {
        if guard.is_some() {
            return self.commit(guard, vec![Self::done(task)], Vec::new()).await;
        }
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
