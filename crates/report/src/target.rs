//! Where statuses go: one [`Target`] per source with API credentials.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use baton_store::{RunSnapshot, Store};

use crate::checks::CheckRun;
use crate::commit::{GithubCommit, GitlabCommit};
use crate::status::{Status, status_of};

/// A commit of either system.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Commit {
    /// A GitHub commit.
    Github(GithubCommit),
    /// A GitLab commit.
    Gitlab(GitlabCommit),
}

impl fmt::Display for Commit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Github(c) => write!(f, "{}/{}@{}", c.owner, c.repo, c.sha),
            Self::Gitlab(c) => write!(f, "project {}@{}", c.project, c.sha),
        }
    }
}

/// What a post that did not land says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// Why, for the log: an HTTP status and the server's message, or the network error.
    /// Never a credential.
    pub reason: String,
    /// False when sending the same request again cannot help (400, 404, 410, 422, a key
    /// that cannot sign).
    pub retry: bool,
    /// How long the server asked to wait (`Retry-After`, or a rate limit's reset).
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure worth another try.
    pub(crate) fn transient(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retry: true,
            retry_after: None,
        }
    }

    /// A failure that will not change by trying again.
    pub(crate) fn permanent(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retry: false,
            retry_after: None,
        }
    }

    /// A failure for an HTTP error answer: retried unless the request itself is wrong.
    pub(crate) fn http(status: u16, message: &str, retry_after: Option<Duration>) -> Self {
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        let message = crate::status::truncate(&message, 300);
        Self {
            reason: if message.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {message}")
            },
            retry: !matches!(status, 400 | 404 | 410 | 422),
            retry_after,
        }
    }
}

/// What a post did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Posted {
    /// The server took the status.
    Done,
    /// The server already shows this status or a later one (GitLab refuses a transition
    /// that goes nowhere or back): nothing to do.
    AlreadyThere(String),
}

/// What one outbox row asks a target to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// One commit status: the run's or one stage's.
    Status(Status),
    /// The run's check run, with every stage in it.
    Check(CheckRun),
}

impl Report {
    /// What the report is posted under on its commit: one commit status context, or one
    /// run's check run. Posts under one name go one at a time, in order.
    pub(crate) fn context(&self) -> String {
        match self {
            Self::Status(status) => status.context.clone(),
            Self::Check(check) => format!("{} (check run of run {})", check.name, check.run_id),
        }
    }

    /// True once nothing more will change it.
    pub(crate) fn is_terminal(&self) -> bool {
        match self {
            Self::Status(status) => status.phase.is_terminal(),
            Self::Check(check) => check.is_completed(),
        }
    }

    /// What it is, for logs: `commit status` or `check run`.
    pub(crate) fn noun(&self) -> &'static str {
        match self {
            Self::Status(_) => "commit status",
            Self::Check(_) => "check run",
        }
    }
}

/// Something that posts a run's progress to commits: GitHub, GitLab, or a test double.
#[async_trait]
pub(crate) trait Target: Send + Sync {
    /// The source name, for logs.
    fn name(&self) -> &str;

    /// What the outbox row of `stage_id` (empty for the run) asks this target to show of
    /// `run`: by default the context's commit status. `None` when there is nothing to show
    /// (a stage the run does not have).
    fn report(
        &self,
        run: &RunSnapshot,
        stage_id: &str,
        public_url: Option<&str>,
    ) -> Option<Report> {
        status_of(run, stage_id, public_url).map(Report::Status)
    }

    /// Posts one report to one commit. `store` keeps what the target made at the far end
    /// (see [`baton_store::Store::report_ref`]).
    async fn post(
        &self,
        commit: &Commit,
        report: &Report,
        store: &dyn Store,
    ) -> Result<Posted, Failure>;

    /// Whether `next` needs a post after `posted` (the last report this target took for the
    /// same context): false when nothing visible would change.
    fn needs_post(&self, posted: Option<&Report>, next: &Report) -> bool {
        posted != Some(next)
    }
}

/// How long a `Retry-After` header asks to wait. GitHub and GitLab send seconds; the HTTP
/// date form is not read (the backoff applies then).
pub(crate) fn retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_failures_retry_unless_the_request_is_wrong() {
        for status in [401, 403, 408, 429, 500, 502, 503] {
            assert!(Failure::http(status, "x", None).retry, "{status}");
        }
        for status in [400, 404, 410, 422] {
            assert!(!Failure::http(status, "x", None).retry, "{status}");
        }
        assert_eq!(
            Failure::http(403, "Resource not\naccessible", None).reason,
            "HTTP 403: Resource not accessible"
        );
        assert_eq!(Failure::http(502, "", None).reason, "HTTP 502");
    }

    #[test]
    fn retry_after_reads_seconds() {
        assert_eq!(retry_after(Some(" 7")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(None), None);
        assert_eq!(retry_after(Some("Sun, 06 Nov 1994 08:49:37 GMT")), None);
    }
}
