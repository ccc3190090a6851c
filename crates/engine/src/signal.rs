//! Nudges from outside to a running attempt: a signal (an approval decision) and a wake
//! (a completion webhook, a source's delivery that names external work), each ending in a
//! poll scheduled now.

use std::sync::Arc;

use baton_core::{AttemptKey, SourceDelivery};
use baton_store::{Change, Phase, TaskKind, now_millis};
use serde_json::Value;

use crate::{Engine, EngineError, Inner};

impl Engine {
    /// Sends a signal (an approval decision) to a stage's current attempt and polls it at once.
    pub async fn signal(
        &self,
        run_id: &str,
        stage_id: &str,
        signal: Value,
    ) -> Result<(), EngineError> {
        let key =
            {
                let mut guard = self.inner.lock_run(run_id).await?;
                let state = guard
                    .as_mut()
                    .ok_or_else(|| EngineError::NoSuchRun(run_id.to_owned()))?;
                let i = state.workflow.stage_index(stage_id).ok_or_else(|| {
                    EngineError::NoSuchStage {
                        run: run_id.into(),
                        stage: stage_id.into(),
                    }
                })?;
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
                key
            };
        self.inner.wake(key).await;
        Ok(())
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
        let Ok(mut guard) = self.lock_run(key.run_id()).await else {
            return;
        };
        let Some(state) = guard.as_mut() else { return };
        let Some(i) = state.workflow.stage_index(key.stage_id()) else {
            return;
        };
        let stage = &state.stages[i];
        if stage.attempt != key.attempt()
            || stage.phase != Some(Phase::Started)
            || !stage.status.is_active()
        {
            return;
        }
        let change = self.task(
            key.run_id(),
            key.stage_id(),
            TaskKind::Poll,
            key.attempt(),
            now_millis(),
            true,
        );
        if let Err(e) = self.commit(&mut guard, vec![change], Vec::new()).await {
            tracing::warn!(attempt = %key, error = &e as &dyn std::error::Error, "could not schedule a poll after a wake; polling goes on as planned");
        }
    }
}
