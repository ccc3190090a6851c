//! GitLab's answers as baton reads them, and the pipeline statuses mapped to baton's states.
//!
//! Only the fields baton uses are read; any other is ignored, and a status is kept as text
//! so that one GitLab adds later is [`ExternalState::Unknown`] rather than a parse error.

use baton_core::ExternalState;
use serde::Deserialize;

/// A pipeline (`GET /projects/:id/pipelines/:pipeline_id`, and the create answers).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Pipeline {
    pub(crate) id: u64,
    #[serde(default)]
    pub(crate) iid: Option<u64>,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) web_url: Option<String>,
    #[serde(default)]
    pub(crate) sha: Option<String>,
}

/// A job of a pipeline (`GET /projects/:id/pipelines/:pipeline_id/jobs`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) web_url: Option<String>,
    /// The artifacts archive, when the job kept one.
    #[serde(default)]
    pub(crate) artifacts_file: Option<ArtifactsFile>,
}

/// A job's artifacts archive.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ArtifactsFile {
    #[serde(default)]
    pub(crate) filename: Option<String>,
}

/// A pipeline variable (`GET /projects/:id/pipelines/:pipeline_id/variables`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Variable {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) value: Option<String>,
}

/// Maps a pipeline status as `doc/api/pipelines.md` lists them, plus `canceling` and
/// `waiting_for_callback` which newer servers send.
pub(crate) fn state(status: &str) -> ExternalState {
    match status {
        "created"
        | "waiting_for_resource"
        | "preparing"
        | "pending"
        | "scheduled"
        | "waiting_for_callback" => ExternalState::Queued,
        // A cancel in progress: jobs are still being stopped.
        "running" | "canceling" => ExternalState::Running,
        // A `when: manual` job gates the pipeline: a person plays it, it is no end.
        "manual" => ExternalState::Blocked,
        "success" => ExternalState::Succeeded { warnings: false },
        "failed" => ExternalState::Failed,
        "canceled" => ExternalState::Cancelled,
        "skipped" => ExternalState::Skipped,
        other => ExternalState::Unknown(other.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_status_maps_and_unknown_ones_never_end() {
        for queued in [
            "created",
            "waiting_for_resource",
            "preparing",
            "pending",
            "scheduled",
            "waiting_for_callback",
        ] {
            assert_eq!(state(queued), ExternalState::Queued, "{queued}");
        }
        assert_eq!(state("running"), ExternalState::Running);
        assert_eq!(state("canceling"), ExternalState::Running);
        assert_eq!(state("manual"), ExternalState::Blocked);
        assert_eq!(
            state("success"),
            ExternalState::Succeeded { warnings: false }
        );
        assert_eq!(state("failed"), ExternalState::Failed);
        assert_eq!(state("canceled"), ExternalState::Cancelled);
        assert_eq!(state("skipped"), ExternalState::Skipped);
        for odd in ["Success", "", "frozen", "cancelled"] {
            let s = state(odd);
            assert_eq!(s, ExternalState::Unknown(odd.to_owned()));
            assert!(!s.is_terminal());
        }
    }
}
