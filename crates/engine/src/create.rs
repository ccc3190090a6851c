//! Creating runs: each with its stages pending and its first advance claimed.

use std::sync::Arc;

use baton_core::context::TriggerInfo;
use baton_core::{RunStatus, Workflow};
use baton_store::{Change, RunHeader, RunPayload, StageRecord, TaskKind, now_millis};
use serde_json::Value;

use crate::report::add_reports;
use crate::{Engine, EngineError, NewRun};

impl Engine {
    /// Creates a run of `workflow` and schedules its first step.
    pub async fn create_run(
        &self,
        workflow: Arc<Workflow>,
        event: Value,
        trigger: TriggerInfo,
    ) -> Result<String, EngineError> {
        let mut ids = self
            .create_runs(
                vec![NewRun {
                    workflow,
                    event,
                    trigger,
                }],
                |_| Vec::new(),
            )
            .await?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// Creates several runs and applies the changes `extra` makes from their ids in the same
    /// commit (a delivery marked processed together with the runs it started, so a crash
    /// cannot start them twice).
    pub(crate) async fn create_runs(
        &self,
        runs: Vec<NewRun>,
        extra: impl FnOnce(&[String]) -> Vec<Change>,
    ) -> Result<Vec<String>, EngineError> {
        let now = now_millis();
        let mut ids = Vec::with_capacity(runs.len());
        let mut changes = Vec::new();
        for NewRun {
            workflow,
            event,
            trigger,
        } in runs
        {
            let id = uuid::Uuid::now_v7().simple().to_string();
            let from = changes.len();
            let spec = serde_json::to_value(&workflow.spec).unwrap_or(Value::Null);
            self.inner
                .workflows
                .lock()
                .unwrap()
                .insert(spec.to_string(), workflow.clone());
            let header = RunHeader {
                id: id.clone(),
                workflow: workflow.name().to_owned(),
                status: RunStatus::Queued,
                cancel_requested: false,
                message: None,
                created_at: now,
                started_at: None,
                finished_at: None,
            };
            changes.push(Change::InsertRun(
                header,
                RunPayload {
                    spec,
                    event,
                    trigger,
                },
            ));
            changes.extend(
                workflow
                    .stages
                    .iter()
                    .enumerate()
                    .map(|(i, s)| Change::PutStage(StageRecord::pending(&id, &s.id, i as u32))),
            );
            add_reports(&workflow, &mut changes, from);
            changes.push(self.inner.task(&id, "", TaskKind::Advance, 0, now, true));
            ids.push(id);
        }
        changes.extend(extra(&ids));
        let claimed = self.inner.store.commit(changes).await?;
        self.inner.dispatch_all(claimed);
        Ok(ids)
    }
}
