//! The scheduler loop: claims due tasks from the store and hands each to its step.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_store::{Task, TaskKind, now_millis};

use crate::commit::millis;
use crate::{EngineError, Inner};

/// The wait before a step that failed on the store runs again; it doubles with each failure
/// up to [`STEP_RETRY_MAX`]. A failed step's task stays leased to this process, so without
/// this it would wait for the lease to end (5 minutes by default) after the store recovered.
const STEP_RETRY_FIRST: Duration = Duration::from_millis(250);

/// The longest wait between two tries of a step that fails on the store: once the store
/// writes again (space freed on a full disk), its steps go on within this.
const STEP_RETRY_MAX: Duration = Duration::from_secs(5);

impl Inner {
    pub(crate) async fn run_loop(self: Arc<Self>) {
        const BATCH: u32 = 256;
        // Logged when claiming starts failing and when it works again, not every second.
        let mut claims = baton_core::outage::Outage::default();
        while !self.stopping.load(Ordering::SeqCst) {
            let now = now_millis();
            let claimed = match self
                .store
                .claim_due(now, BATCH, now + millis(self.config.lease))
                .await
            {
                Ok(tasks) => tasks,
                Err(e) => {
                    if claims.failed() {
                        tracing::error!(
                            error = &e as &dyn std::error::Error,
                            "claiming due work failed; retrying every second (logged again when it works)"
                        );
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Some((lasted, failures)) = claims.recovered() {
                tracing::warn!(after = ?lasted, failed_tries = failures, "claiming due work works again");
            }
            let full = claimed.len() as u32 == BATCH;
            self.dispatch_all(claimed);
            if full {
                continue;
            }
            let wait = match self.store.next_due().await {
                Ok(Some(due)) => Duration::from_millis((due - now_millis()).clamp(0, 1000) as u64),
                _ => Duration::from_secs(1),
            };
            if !wait.is_zero() {
                let _ = tokio::time::timeout(wait, self.notify.notified()).await;
            }
        }
    }

    pub(crate) fn dispatch_all(self: &Arc<Self>, tasks: Vec<Task>) {
        for task in tasks {
            // Claimed again because its lease ran out while this process retries it: the
            // claim renewed the lease, and the retry goes on.
            if self
                .retrying
                .lock()
                .unwrap()
                .contains(&(task.id, task.version))
            {
                continue;
            }
            let inner = self.clone();
            tokio::spawn(async move { inner.run_task(task).await });
        }
    }

    /// Runs a task's step; a step that failed on the store runs again after a short wait,
    /// until it succeeds or the engine stops.
    async fn run_task(self: Arc<Self>, task: Task) {
        let mut wait = STEP_RETRY_FIRST;
        let mut failures = 0u32;
        loop {
            let result = {
                let Ok(_permit) = self.permits.clone().acquire_owned().await else {
                    break;
                };
                self.handle(&task).await
            };
            let Err(e) = result else {
                if failures > 0 {
                    tracing::info!(run = %task.run_id, task = task.kind.as_str(), failures, "engine step done after the store recovered");
                }
                break;
            };
            // The retry starts from what the store really holds.
            self.runs.lock().unwrap().remove(&task.run_id);
            let retry = matches!(e, EngineError::Store(_));
            if !retry {
                // The task stays leased and is retried when the lease ends.
                tracing::error!(run = %task.run_id, task = task.kind.as_str(), error = &e as &dyn std::error::Error, "engine step failed");
                break;
            }
            if failures == 0 {
                tracing::error!(run = %task.run_id, task = task.kind.as_str(), error = &e as &dyn std::error::Error,
                    "engine step failed on the store; retrying until it works");
                self.retrying
                    .lock()
                    .unwrap()
                    .insert((task.id, task.version));
            }
            failures += 1;
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(STEP_RETRY_MAX);
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
        }
        if failures > 0 {
            self.retrying
                .lock()
                .unwrap()
                .remove(&(task.id, task.version));
        }
    }

    pub(crate) async fn handle(self: &Arc<Self>, task: &Task) -> Result<(), EngineError> {
        match task.kind {
            TaskKind::Advance => self.advance(task).await,
            TaskKind::Start => self.start_attempt(task).await,
            TaskKind::Poll => self.poll_attempt(task).await,
            TaskKind::Timeout => self.time_out(task).await,
            TaskKind::Cancel => self.cancel_attempt(task).await,
        }
    }
}
