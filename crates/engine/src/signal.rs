//! Nudges from outside to a running attempt: a signal (an approval decision) and a wake
//! (a completion webhook, a source's delivery that names external work), each ending in a
//! poll scheduled now.

use std::sync::Arc;

use baton_core::{AttemptKey, SourceDelivery};
use baton_store::{Change, Phase, TaskKind, now_millis};
use serde_json::Value;

use crate::commit::refenced;
use crate::{Engine, EngineError, Inner};

impl Engine {
    /// Sends a signal (an approval decision) to a stage's current attempt and polls it at once.
    pub async fn signal(
        &self,
        run_id: &str,
        stage_id: &str,
        signal: Value,
    ) -> Result<(), EngineError> {
        let key = refenced(|| self.signal_once(run_id, stage_id, signal.clone())).await?;
        self.inner.wake(key).await;
        Ok(())
    }

    /// Stores `signal` on the stage's current attempt; answers the attempt.
    async fn signal_once(
        &self,
        run_id: &str,
        stage_id: &str,
        signal: Value,
    ) -> Result<AttemptKey, EngineError> {
        let (mut guard, i) = self.inner.lock_stage(run_id, stage_id).await?;
        let state = guard
            .as_mut()
            .ok_or_else(|| EngineError::NoSuchRun(run_id.to_owned()))?;
        let stage = &mut state.stages[i];
        if !stage.status.is_active() {
            return Err(EngineError::Conflict(format!(
                "stage `{stage_id}` of run `{run_id}` is {}, not waiting",
                stage.status
            )));
        }
        stage.signal = Some(signal);
        let key = AttemptKey::new(run_id, stage_id, stage.attempt);
        let change = Change::PutStage(stage.clone());
        self.inner
            .commit(&mut guard, vec![change], Vec::new())
            .await?;
        Ok(key)
    }

    /// Polls an attempt now (a completion webhook arrived for it). Unknown or finished
    /// attempts are ignored.
    pub async fn wake(&self, key: AttemptKey) {
        self.inner.wake(key).await;
    }

    /// Offers a stored delivery to every adapter instance
    /// ([`Adapter::source_delivery`](baton_core::Adapter::source_delivery)) and polls at once
    /// the attempts they name. Returns how many were named.
    pub async fn offer_delivery(&self, delivery: &SourceDelivery<'_>) -> usize {
        let mut named = 0;
        for adapter in self.inner.adapters.values() {
            for key in adapter.source_delivery(delivery) {
                named += 1;
                self.inner.wake(key).await;
            }
        }
        named
    }
}

impl Inner {
    pub(crate) async fn wake(self: &Arc<Self>, key: AttemptKey) {
        self.woken.lock().unwrap().insert(key.clone());
        if let Err(e) = refenced(|| self.wake_once(&key)).await {
            tracing::warn!(attempt = %key, error = &e as &dyn std::error::Error, "could not schedule a poll after a wake; polling goes on as planned");
        }
    }

    /// Schedules, claimed, a poll of the attempt `key` now if it is started and active.
    async fn wake_once(self: &Arc<Self>, key: &AttemptKey) -> Result<(), EngineError> {
        let Ok(mut guard) = self.lock_run(key.run_id()).await else {
            return Ok(());
        };
        let Some(state) = guard.as_mut() else {
            return Ok(());
        };
        let Some(i) = state.workflow.stage_index(key.stage_id()) else {
            return Ok(());
        };
        let stage = &state.stages[i];
        if stage.attempt != key.attempt()
            || stage.phase != Some(Phase::Started)
            || !stage.status.is_active()
        {
            return Ok(());
        }
        let change = self.task(
            key.run_id(),
            key.stage_id(),
            TaskKind::Poll,
            key.attempt(),
            now_millis(),
            true,
        );
        self.commit(&mut guard, vec![change], Vec::new()).await
    }
}
