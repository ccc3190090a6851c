//! GitHub's answers, read leniently: every status and conclusion is a string (GitHub adds
//! values over time, `startup_failure` and `stale` among them), every field baton does not
//! need is ignored, and a missing field has a default.

use serde::Deserialize;

/// A workflow run (`GET /repos/{o}/{r}/actions/runs/{id}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Run {
    pub(crate) id: u64,
    pub(crate) display_title: String,
    pub(crate) event: String,
    pub(crate) status: Option<String>,
    pub(crate) conclusion: Option<String>,
    pub(crate) run_number: u64,
    pub(crate) run_attempt: u64,
    pub(crate) html_url: String,
    pub(crate) head_branch: Option<String>,
    pub(crate) created_at: String,
}

/// `GET …/workflows/{wf}/runs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Runs {
    pub(crate) workflow_runs: Vec<Run>,
}

/// The 200 answer to a dispatch with `return_run_details`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Dispatched {
    pub(crate) workflow_run_id: u64,
    #[serde(default)]
    pub(crate) html_url: Option<String>,
}

/// One job of a run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) status: Option<String>,
    pub(crate) conclusion: Option<String>,
    pub(crate) html_url: Option<String>,
}

/// `GET …/runs/{id}/jobs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Jobs {
    pub(crate) jobs: Vec<Job>,
}

/// One artifact of a run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Artifact {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) size_in_bytes: u64,
    pub(crate) expired: bool,
}

/// `GET …/runs/{id}/artifacts`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Artifacts {
    pub(crate) artifacts: Vec<Artifact>,
}
