//! The scheduler loop: claims due tasks from the store and hands each to its step.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_store::{Task, TaskKind, Work, now_millis};

use crate::commit::millis;
use crate::{EngineError, Inner};

/// The wait before a step that failed on the store runs again; it doubles with each failure
/// up to [`STEP_RETRY_MAX`]. A failed step's task stays leased to this process, so without
/// this it would wait for the lease to end (5 minutes by default) after the store recovered.
const STEP_RETRY_FIRST: Duration = Duration::from_millis(250);

/// The longest wait between two tries of a step that fails on the store: once the store
/// writes again (space freed on a full disk), its steps go on within this.
const STEP_RETRY_MAX: Duration = Duration::from_secs(5);

/// How many times in a row a step whose commit was fenced while its claim was still held
/// runs again at once; past that it waits like a step that failed on the store. Each rerun
/// follows a write by another process to the same run, so a few cover any real contention.
const STALE_RERUNS: u32 = 5;

impl Inner {
    pub(crate) async fn run_loop(self: Arc<Self>) {
        const BATCH: u32 = 256;
        // Logged when claiming starts failing and when it works again, not every second.
        let mut claims = baton_core::outage::Outage::default();
        // Another process's hand-over (a released claim, an API action's task) on a shared
        // store wakes the loop at once instead of at its next look.
        let mut handed = self.store.wakes(Work::Tasks);
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
                let woken = async {
                    match handed.as_mut() {
                        Some(rx) => {
                            if rx.changed().await.is_err() {
                                // The store stopped listening: polling alone from here.
                                handed = None;
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                let _ = tokio::time::timeout(wait, async {
                    tokio::select! {
                        () = self.notify.notified() => {}
                        () = woken => {}
                    }
                })
                .await;
            }
        }
    }

    pub(crate) fn dispatch_all(self: &Arc<Self>, tasks: Vec<Task>) {
        for task in tasks {
            // Claimed again because its lease ran out while this process retries it: the
            // retry takes the new claim over and goes on.
            if !self.take_off(&task) {
                continue;
            }
            let inner = self.clone();
            tokio::spawn(async move { inner.run_task(task).await });
        }
    }

    /// Runs a task's step; a step that failed on the store runs again after a short wait,
    /// until it succeeds or the engine stops. A step whose commit was fenced runs again at
    /// once from the store while its claim is still held (its cached run was stale), and is
    /// dropped when it is not (see `lease`).
    async fn run_task(self: Arc<Self>, task: Task) {
        let mut task = task;
        let mut wait = STEP_RETRY_FIRST;
        let mut failures = 0u32;
        let mut stale = 0u32;
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
            // The retry starts from what the store really holds. The cached copy is cleared
            // under the run's lock rather than its slot forgotten: a step of the run under way
            // keeps the slot, and a new one beside it would let two steps of one run run at once.
            let slot = self.runs.lock().unwrap().get(&task.run_id).cloned();
            if let Some(slot) = slot {
                *slot.lock().await = None;
            }
            if e.is_fenced() {
                match self.store.holds(&task).await {
                    Ok(true) if stale < STALE_RERUNS => {
                        stale += 1;
                        tracing::debug!(run = %task.run_id, task = task.kind.as_str(),
                            "the cached run was stale; running the step again from the store");
                        continue;
                    }
                    Ok(true) => {}
                    Ok(false) => {
                        self.gone(&task);
                        break;
                    }
                    // Asked again after the wait below.
                    Err(_) => {}
                }
            }
            let retry = matches!(e, EngineError::Store(_));
            if !retry {
                // The task stays leased and is retried when the lease ends.
                tracing::error!(run = %task.run_id, task = task.kind.as_str(), error = &e as &dyn std::error::Error, "engine step failed");
                break;
            }
            if failures == 0 {
                tracing::error!(run = %task.run_id, task = task.kind.as_str(), error = &e as &dyn std::error::Error,
                    "engine step failed on the store; retrying until it works");
                self.with_flight(&task, |f| f.retrying = true);
            }
            failures += 1;
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(STEP_RETRY_MAX);
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            // A claim made meanwhile (the lease ran out) was handed to this retry.
            let current = {
                let flights = self.flights.lock().unwrap();
                flights.get(&task.run_id).and_then(|run| {
                    run.iter()
                        .find(|f| f.retrying && (f.id, f.version) == (task.id, task.version))
                        .map(|f| f.token)
                })
            };
            if let Some(token) = current {
                task.lease = token;
            }
        }
        self.land(&task);
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
