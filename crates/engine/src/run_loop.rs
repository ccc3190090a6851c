//! The scheduler loop: claims due tasks from the store and hands each to its step.

use std::sync::Arc;
use std::time::Duration;

use baton_store::{Task, TaskKind, now_millis};

use crate::commit::millis;
use crate::{EngineError, Inner};

impl Inner {
    pub(crate) async fn run_loop(self: Arc<Self>) {
        const BATCH: u32 = 256;
        while !self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            let now = now_millis();
            let claimed = match self
                .store
                .claim_due(now, BATCH, now + millis(self.config.lease))
                .await
            {
                Ok(tasks) => tasks,
                Err(e) => {
                    tracing::error!(
                        error = &e as &dyn std::error::Error,
                        "claiming due work failed; retrying"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
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
            let inner = self.clone();
            tokio::spawn(async move {
                let Ok(_permit) = inner.permits.clone().acquire_owned().await else {
                    return;
                };
                let (run, kind) = (task.run_id.clone(), task.kind);
                if let Err(e) = inner.handle(task).await {
                    // The task stays leased and is retried when the lease ends; the cached
                    // copy of the run is dropped so the retry starts from the store.
                    tracing::error!(run = %run, task = kind.as_str(), error = &e as &dyn std::error::Error, "engine step failed");
                    inner.runs.lock().unwrap().remove(&run);
                }
            });
        }
    }

    pub(crate) async fn handle(self: &Arc<Self>, task: Task) -> Result<(), EngineError> {
        match task.kind {
            TaskKind::Advance => self.advance(&task).await,
            TaskKind::Start => self.start_attempt(&task).await,
            TaskKind::Poll => self.poll_attempt(&task).await,
            TaskKind::Timeout => self.time_out(&task).await,
            TaskKind::Cancel => self.cancel_attempt(&task).await,
        }
    }
}
