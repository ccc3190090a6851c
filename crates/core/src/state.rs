//! Run, stage and external states.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created, no stage has started yet.
    Queued,
    /// At least one stage has been started and the run is not finished.
    Running,
    /// Every stage finished and none failed the run.
    Succeeded,
    /// A stage failed (with `halt` or `continue`), or the run could not go on.
    Failed,
    /// Someone cancelled the run.
    Cancelled,
}

impl RunStatus {
    /// True once the run can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The name used in files, the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses [`RunStatus::as_str`] output.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a stage is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Waiting for its needs, for its start, or for a retry's backoff.
    Pending,
    /// External work is queued or running.
    Running,
    /// Waiting on a person (an approval, or a gate in the external system).
    Waiting,
    /// Finished successfully.
    Succeeded,
    /// Finished unsuccessfully (a timeout is a failure with reason `timed_out`).
    Failed,
    /// Cancelled by a person or by a `halt` elsewhere in the run.
    Cancelled,
    /// Not run: its `if` was false, or what it needs did not succeed.
    Skipped,
}

impl StageStatus {
    /// True once the stage can no longer change (short of a manual retry).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Skipped
        )
    }

    /// True while external work may exist.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Waiting)
    }

    /// The name used in files, the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }

    /// Parses [`StageStatus::as_str`] output.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "waiting" => Self::Waiting,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "skipped" => Self::Skipped,
            _ => return None,
        })
    }
}

impl fmt::Display for StageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of external work, mapped from the system's own words by its adapter.
///
/// Adapters keep the raw status too; [`ExternalState::Unknown`] carries a value the adapter
/// has never seen. It is never terminal: the engine keeps polling until the stage's timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum ExternalState {
    /// Accepted, not yet executing.
    Queued,
    /// Executing.
    Running,
    /// Waiting on a person or a gate.
    Blocked,
    /// Finished successfully; `warnings` when the system said so (Buildbot `WARNINGS`,
    /// Jenkins `UNSTABLE` configured as success).
    Succeeded {
        /// The system reported warnings.
        warnings: bool,
    },
    /// Finished; the work itself failed (tests, a non-zero exit).
    Failed,
    /// Finished; the system or its configuration failed.
    Errored,
    /// Aborted by a person or by baton.
    Cancelled,
    /// Nothing ran.
    Skipped,
    /// A status this adapter does not know, kept verbatim.
    Unknown(String),
}

impl ExternalState {
    /// True when the external work can no longer change. `Unknown` is never terminal.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded { .. } | Self::Failed | Self::Errored | Self::Cancelled | Self::Skipped
        )
    }

    /// The stage status this external state shows as.
    pub fn stage_status(&self) -> StageStatus {
        match self {
            Self::Queued | Self::Running | Self::Unknown(_) => StageStatus::Running,
            Self::Blocked => StageStatus::Waiting,
            Self::Succeeded { .. } => StageStatus::Succeeded,
            Self::Failed | Self::Errored => StageStatus::Failed,
            Self::Cancelled => StageStatus::Cancelled,
            Self::Skipped => StageStatus::Skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_is_never_terminal() {
        let unknown = ExternalState::Unknown("waiting_for_callback".into());
        assert!(!unknown.is_terminal());
        assert_eq!(unknown.stage_status(), StageStatus::Running);
    }

    #[test]
    fn names_round_trip() {
        for s in [
            StageStatus::Pending,
            StageStatus::Running,
            StageStatus::Waiting,
            StageStatus::Succeeded,
            StageStatus::Failed,
            StageStatus::Cancelled,
            StageStatus::Skipped,
        ] {
            assert_eq!(StageStatus::parse(s.as_str()), Some(s));
        }
        for r in [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ] {
            assert_eq!(RunStatus::parse(r.as_str()), Some(r));
        }
    }
}
