//! The JSON shape of a run, as `baton run --json` prints it and the API returns it.

use baton_core::ExternalRef;
use baton_store::{AttemptRecord, Millis, RunSnapshot};
use serde::Serialize;
use serde_json::Value;

/// A run with its stages, statuses, attempts, outputs and external references.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    /// Run id.
    pub id: String,
    /// Workflow name.
    pub workflow: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// Why it ended as it did.
    pub message: Option<String>,
    /// What started it.
    pub trigger: baton_core::context::TriggerInfo,
    /// Creation time (ms since the epoch).
    pub created_at: Millis,
    /// First stage start.
    pub started_at: Option<Millis>,
    /// End time.
    pub finished_at: Option<Millis>,
    /// Milliseconds from the first start to the end (or to now while running).
    pub duration_ms: Option<Millis>,
    /// Stages in order.
    pub stages: Vec<StageView>,
}

/// One stage of a [`RunView`].
#[derive(Debug, Clone, Serialize)]
pub struct StageView {
    /// Stage id.
    pub id: String,
    /// Status.
    pub status: String,
    /// A machine-readable why.
    pub reason: Option<String>,
    /// A sentence for people.
    pub message: Option<String>,
    /// Current attempt number.
    pub attempt: u32,
    /// Outputs once finished.
    pub outputs: Value,
    /// External reference (id and link).
    pub external: Option<ExternalRef>,
    /// Start time.
    pub started_at: Option<Millis>,
    /// End time.
    pub finished_at: Option<Millis>,
    /// Every attempt.
    pub attempts: Vec<AttemptRecord>,
}

impl RunView {
    /// Builds the view of a stored run.
    pub fn from_snapshot(snapshot: &RunSnapshot, now: Millis) -> Self {
        let h = &snapshot.header;
        let stages = snapshot
            .stages
            .iter()
            .map(|s| StageView {
                id: s.stage_id.clone(),
                status: s.status.to_string(),
                reason: s.reason.clone(),
                message: s.message.clone(),
                attempt: s.attempt,
                outputs: s
                    .outputs
                    .clone()
                    .unwrap_or_else(|| Value::Object(Default::default())),
                external: s.external.clone(),
                started_at: s.started_at,
                finished_at: s.finished_at,
                attempts: snapshot
                    .attempts
                    .iter()
                    .filter(|a| a.stage_id == s.stage_id)
                    .cloned()
                    .collect(),
            })
            .collect();
        Self {
            id: h.id.clone(),
            workflow: h.workflow.clone(),
            status: h.status.to_string(),
            message: h.message.clone(),
            trigger: snapshot.payload.trigger.clone(),
            created_at: h.created_at,
            started_at: h.started_at,
            finished_at: h.finished_at,
            duration_ms: h.started_at.map(|s| h.finished_at.unwrap_or(now) - s),
            stages,
        }
    }
}
