//! Commit statuses on GitLab: `POST {api_url}/projects/{id}/statuses/{sha}` with
//! `PRIVATE-TOKEN`.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Url;
use reqwest::header::{HeaderValue, RETRY_AFTER};
use serde_json::{Map, Value, json};

use baton_store::Store;

use crate::github::reason;
use crate::status::Phase;
use crate::target::{Commit, Failure, Posted, Report, Target, retry_after};

/// One gitlab source with an API token.
pub(crate) struct GitlabTarget {
    name: String,
    api_url: Url,
    token: HeaderValue,
    client: reqwest::Client,
}

impl GitlabTarget {
    /// Fails when `api_url` is not a base URL or the HTTP client cannot be set up.
    pub(crate) fn new(
        name: &str,
        api_url: &str,
        mut token: HeaderValue,
        timeout: Duration,
    ) -> Result<Self, String> {
        let api_url = Url::parse(api_url.trim_end_matches('/'))
            .ok()
            .filter(|u| !u.cannot_be_a_base() && matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| format!("`{api_url}` is not an http(s) URL"))?;
        token.set_sensitive(true);
        let client = reqwest::Client::builder()
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", reason(&e)))?;
        Ok(Self {
            name: name.to_owned(),
            api_url,
            token,
            client,
        })
    }

    /// `{api_url}/projects/{project}/statuses/{sha}`, the project id percent-encoded (a
    /// `group/name` path becomes `group%2Fname`).
    fn url(&self, project: &str, sha: &str) -> Url {
        let mut url = self.api_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(["projects", project, "statuses", sha]);
        }
        url
    }
}

/// How far a GitLab status has got, for states that are not final: `pending` before
/// `running`.
fn rank(phase: Phase) -> u8 {
    match phase {
        Phase::Pending => 0,
        _ => 1,
    }
}

#[async_trait]
impl Target for GitlabTarget {
    fn name(&self) -> &str {
        &self.name
    }

    async fn post(
        &self,
        commit: &Commit,
        report: &Report,
        _: &dyn Store,
    ) -> Result<Posted, Failure> {
        let (Commit::Gitlab(commit), Report::Status(status)) = (commit, report) else {
            return Err(Failure::permanent(
                "not a commit status for a GitLab commit",
            ));
        };
        let mut body = Map::new();
        body.insert("state".into(), json!(status.phase.gitlab_state()));
        body.insert("name".into(), json!(status.context));
        body.insert("description".into(), json!(status.description));
        if let Some(url) = &status.target_url {
            body.insert("target_url".into(), json!(url));
        }
        if let Some(git_ref) = &commit.git_ref {
            body.insert("ref".into(), json!(git_ref));
        }
        if let Some(pipeline) = commit.pipeline_id {
            body.insert("pipeline_id".into(), json!(pipeline));
        }
        let response = self
            .client
            .post(self.url(&commit.project, &commit.sha))
            .header("PRIVATE-TOKEN", self.token.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| Failure::transient(reason(&e)))?;
        let code = response.status();
        if code.is_success() {
            return Ok(Posted::Done);
        }
        let wait = retry_after(
            response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
        );
        let text = response.text().await.unwrap_or_default();
        // GitLab answers `{"message": "…"}`, the message sometimes an object of field errors.
        let message = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(o)) => match o.get("message").or_else(|| o.get("error")) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => text,
            },
            _ => text,
        };
        // A status already in that state, or past it, cannot be moved there: nothing to do.
        if code.as_u16() == 400 && message.contains("Cannot transition status") {
            return Ok(Posted::AlreadyThere(message));
        }
        Err(Failure::http(code.as_u16(), &message, wait))
    }

    /// GitLab refuses to move a status to the state it is in, or from `running` back to
    /// `pending` (400 "Cannot transition status"), and a second final status with the same
    /// state only adds a duplicate; so only a new state is posted, and a pending after a
    /// running (a stage waiting for its retry) is not.
    fn needs_post(&self, posted: Option<&Report>, next: &Report) -> bool {
        let (Some(Report::Status(posted)), Report::Status(next)) = (posted, next) else {
            return true;
        };
        if posted.phase.gitlab_state() == next.phase.gitlab_state() {
            return false;
        }
        posted.phase.is_terminal()
            || next.phase.is_terminal()
            || rank(next.phase) > rank(posted.phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Status;

    fn target(api: &str) -> GitlabTarget {
        GitlabTarget::new(
            "gl",
            api,
            HeaderValue::from_static("t"),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn status(phase: Phase, description: &str) -> Report {
        Report::Status(Status {
            context: "baton/w".into(),
            phase,
            description: description.into(),
            target_url: None,
        })
    }

    #[test]
    fn urls_encode_project_paths() {
        let t = target("https://gitlab.example.com/api/v4/");
        assert_eq!(
            t.url("42", "abc").as_str(),
            "https://gitlab.example.com/api/v4/projects/42/statuses/abc"
        );
        assert_eq!(
            t.url("group/sub/app", "abc").as_str(),
            "https://gitlab.example.com/api/v4/projects/group%2Fsub%2Fapp/statuses/abc"
        );
        assert!(
            GitlabTarget::new(
                "gl",
                "mailto:x",
                HeaderValue::from_static("t"),
                Duration::from_secs(1)
            )
            .is_err()
        );
    }

    #[test]
    fn only_moves_gitlab_accepts_are_posted() {
        let t = target("https://gitlab.example.com/api/v4");
        let pending = status(Phase::Pending, "pending");
        let running = status(Phase::Running, "running");
        let running2 = status(Phase::Running, "running (attempt 2)");
        let failed = status(Phase::Failed, "failed");
        let skipped = status(Phase::Skipped, "skipped");
        let succeeded = status(Phase::Succeeded, "succeeded");
        assert!(t.needs_post(None, &pending));
        assert!(t.needs_post(Some(&pending), &running));
        assert!(!t.needs_post(Some(&running), &running2));
        assert!(!t.needs_post(Some(&running), &pending));
        assert!(t.needs_post(Some(&running), &failed));
        assert!(t.needs_post(Some(&pending), &skipped));
        assert!(!t.needs_post(Some(&skipped), &succeeded));
        // A stage retried by hand after it finished starts a new status.
        assert!(t.needs_post(Some(&failed), &pending));
        assert!(t.needs_post(Some(&failed), &running));
    }
}
