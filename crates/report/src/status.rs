//! What a run and its stages should show on the commit: one [`Status`] per context.

use baton_core::{RunStatus, StageStatus};
use baton_store::RunSnapshot;

/// The longest description GitHub accepts (characters); GitLab gets the same.
pub(crate) const MAX_DESCRIPTION: usize = 140;

/// Where a run or stage is, in the words both GitHub and GitLab can be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Phase {
    /// Not started: a queued run, a pending stage.
    Pending,
    /// Started and not finished: a running run, a running or waiting stage.
    Running,
    /// Finished well.
    Succeeded,
    /// Finished badly.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Not run (a stage whose `if` was false or whose needs did not succeed).
    Skipped,
}

impl Phase {
    /// True once nothing more will happen.
    pub(crate) fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }

    /// GitHub's commit status `state`: `pending`, `success`, `failure` or `error`.
    ///
    /// A cancelled run or stage is `error` (GitHub's word for "did not complete"), and a
    /// skipped stage is `success` with the description `skipped…`: a stage left out on
    /// purpose must not block a merge that requires the context.
    pub(crate) fn github_state(self) -> &'static str {
        match self {
            Self::Pending | Self::Running => "pending",
            Self::Succeeded | Self::Skipped => "success",
            Self::Failed => "failure",
            Self::Cancelled => "error",
        }
    }

    /// GitLab's commit status `state`: `pending`, `running`, `success`, `failed` or
    /// `canceled`.
    ///
    /// A skipped stage is `success` with the description `skipped…`, as on GitHub: GitLab
    /// accepts `skipped` only on recent versions, and `canceled` would mark the whole
    /// external pipeline cancelled.
    pub(crate) fn gitlab_state(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded | Self::Skipped => "success",
            Self::Failed => "failed",
            Self::Cancelled => "canceled",
        }
    }
}

impl From<RunStatus> for Phase {
    fn from(status: RunStatus) -> Self {
        match status {
            RunStatus::Queued => Self::Pending,
            RunStatus::Running => Self::Running,
            RunStatus::Succeeded => Self::Succeeded,
            RunStatus::Failed => Self::Failed,
            RunStatus::Cancelled => Self::Cancelled,
        }
    }
}

impl From<StageStatus> for Phase {
    fn from(status: StageStatus) -> Self {
        match status {
            StageStatus::Pending => Self::Pending,
            StageStatus::Running | StageStatus::Waiting => Self::Running,
            StageStatus::Succeeded => Self::Succeeded,
            StageStatus::Failed => Self::Failed,
            StageStatus::Cancelled => Self::Cancelled,
            StageStatus::Skipped => Self::Skipped,
        }
    }
}

/// One commit status as baton wants it to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    /// `baton/<workflow>` for the run, `baton/<workflow>/<stage>` for a stage (GitLab's
    /// `name`).
    pub context: String,
    /// Where the run or stage is.
    pub phase: Phase,
    /// A line for people, at most [`MAX_DESCRIPTION`] characters.
    pub description: String,
    /// A link to the run, when baton knows its public URL.
    pub target_url: Option<String>,
}

/// The context of a run: `baton/<workflow>`.
pub(crate) fn run_context(workflow: &str) -> String {
    format!("baton/{workflow}")
}

/// The context of a stage: `baton/<workflow>/<stage>`.
pub(crate) fn stage_context(workflow: &str, stage: &str) -> String {
    format!("baton/{workflow}/{stage}")
}

/// The link to a run: `<public_url>/api/v1/runs/<id>`.
pub(crate) fn run_url(public_url: Option<&str>, run_id: &str) -> Option<String> {
    public_url.map(|base| format!("{}/api/v1/runs/{run_id}", base.trim_end_matches('/')))
}

/// The status of one context of a stored run: the run's own when `stage_id` is empty, else
/// that stage's. `None` for a stage the run does not have.
pub(crate) fn status_of(
    run: &RunSnapshot,
    stage_id: &str,
    public_url: Option<&str>,
) -> Option<Status> {
    let workflow = &run.header.workflow;
    let (context, phase, description) = if stage_id.is_empty() {
        (
            run_context(workflow),
            run.header.status.into(),
            describe(run.header.status.as_str(), run.header.message.as_deref(), 0),
        )
    } else {
        let stage = run.stages.iter().find(|s| s.stage_id == stage_id)?;
        (
            stage_context(workflow, stage_id),
            stage.status.into(),
            describe(
                stage.status.as_str(),
                stage.message.as_deref(),
                stage.attempt,
            ),
        )
    };
    Some(Status {
        context,
        phase,
        description,
        target_url: run_url(public_url, &run.header.id),
    })
}

/// `running`, `running (attempt 2)`, `failed: exit code 2`: the status word, the attempt
/// after the first, and the message with its whitespace folded, cut to [`MAX_DESCRIPTION`].
pub(crate) fn describe(status: &str, message: Option<&str>, attempt: u32) -> String {
    let mut text = status.to_owned();
    if attempt > 1 && matches!(status, "running" | "waiting" | "pending") {
        text.push_str(&format!(" (attempt {attempt})"));
    }
    if let Some(message) = message {
        let folded = message.split_whitespace().collect::<Vec<_>>().join(" ");
        if !folded.is_empty() {
            text.push_str(": ");
            text.push_str(&folded);
        }
    }
    truncate(&text, MAX_DESCRIPTION)
}

/// `text` cut to at most `max` characters, ending in `…` when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_for_both_systems() {
        let table = [
            (Phase::Pending, "pending", "pending"),
            (Phase::Running, "pending", "running"),
            (Phase::Succeeded, "success", "success"),
            (Phase::Failed, "failure", "failed"),
            (Phase::Cancelled, "error", "canceled"),
            (Phase::Skipped, "success", "success"),
        ];
        for (phase, github, gitlab) in table {
            assert_eq!(phase.github_state(), github, "{phase:?}");
            assert_eq!(phase.gitlab_state(), gitlab, "{phase:?}");
        }
        assert_eq!(Phase::from(StageStatus::Waiting), Phase::Running);
        assert_eq!(Phase::from(RunStatus::Queued), Phase::Pending);
        assert!(!Phase::Running.is_terminal() && Phase::Skipped.is_terminal());
    }

    #[test]
    fn descriptions_fold_and_fit() {
        assert_eq!(describe("succeeded", None, 1), "succeeded");
        assert_eq!(describe("running", None, 2), "running (attempt 2)");
        assert_eq!(
            describe("failed", Some("exit code 2:\n  boom\n"), 3),
            "failed: exit code 2: boom"
        );
        assert_eq!(describe("skipped", Some("  "), 0), "skipped");
        let long = describe("failed", Some(&"é".repeat(500)), 1);
        assert_eq!(long.chars().count(), MAX_DESCRIPTION);
        assert!(long.ends_with('…') && long.starts_with("failed: éé"));
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
    }

    #[test]
    fn the_status_of_the_run_or_one_stage() {
        use baton_core::context::TriggerInfo;
        use baton_store::{RunHeader, RunPayload, StageRecord};
        let mut build = StageRecord::pending("r1", "build", 0);
        build.status = StageStatus::Running;
        build.attempt = 2;
        let run = RunSnapshot {
            version: 0,
            header: RunHeader {
                id: "r1".into(),
                workflow: "ci".into(),
                status: RunStatus::Failed,
                cancel_requested: false,
                message: Some("a stage failed".into()),
                created_at: 1,
                started_at: None,
                finished_at: None,
            },
            payload: RunPayload {
                spec: serde_json::Value::Null,
                event: serde_json::Value::Null,
                trigger: TriggerInfo {
                    source: "github".into(),
                    event: "push".into(),
                    delivery_id: None,
                },
            },
            stages: vec![StageRecord::pending("r1", "lint", 1), build],
            attempts: Vec::new(),
        };
        let url = Some("https://b.example.com");
        assert_eq!(
            status_of(&run, "", url),
            Some(Status {
                context: "baton/ci".into(),
                phase: Phase::Failed,
                description: "failed: a stage failed".into(),
                target_url: Some("https://b.example.com/api/v1/runs/r1".into()),
            })
        );
        let build = status_of(&run, "build", None).unwrap();
        assert_eq!(
            (
                build.context.as_str(),
                build.phase,
                build.description.as_str()
            ),
            ("baton/ci/build", Phase::Running, "running (attempt 2)")
        );
        assert_eq!(build.target_url, None);
        assert_eq!(status_of(&run, "lint", None).unwrap().phase, Phase::Pending);
        assert_eq!(status_of(&run, "deploy", None), None);
    }

    #[test]
    fn links_and_contexts() {
        assert_eq!(run_context("ci"), "baton/ci");
        assert_eq!(stage_context("ci", "build"), "baton/ci/build");
        assert_eq!(
            run_url(Some("https://baton.example.com/"), "r1").as_deref(),
            Some("https://baton.example.com/api/v1/runs/r1")
        );
        assert_eq!(run_url(None, "r1"), None);
    }
}
