//! Reading a pipeline's state, and cancelling it.

use baton_core::{AdapterError, ExternalRef, ExternalState, PollOutcome, PollRequest};
use reqwest::Method;

use crate::GitLabAdapter;
use crate::client::{Call, Credential};
use crate::model::{self, Job, Pipeline};
use crate::tracked::Tracked;

/// How many failed jobs' trace tails a failed stage's message carries.
const FAILED_TRACES: usize = 3;

/// The most of a cancel's answer read: only its status counts.
const CANCEL_ANSWER_BYTES: usize = 65_536;

/// Whether a pipeline read after a cancel shows that the cancel took, or that nothing is
/// left to cancel.
fn cancel_took(status: &str) -> bool {
    status == "canceling" || model::state(status).is_terminal()
}

impl GitLabAdapter {
    /// Reads the pipeline of `request` and maps its status.
    pub(crate) async fn poll_pipeline(
        &self,
        request: &PollRequest<'_>,
    ) -> Result<PollOutcome, AdapterError> {
        let (id, mut tracked) = Tracked::read(request.external)?;
        let pipeline = self.pipeline(id).await?;
        let state = model::state(&pipeline.status);
        let message = match &state {
            ExternalState::Blocked => Some(self.manual_message(id).await?),
            ExternalState::Failed => Some(self.failure_message(&pipeline).await?),
            ExternalState::Unknown(raw) => Some(format!(
                "GitLab reports status `{raw}`, which baton does not know: it keeps polling until the stage's timeout"
            )),
            _ if pipeline.status == "canceling" => {
                Some("GitLab is cancelling the pipeline".to_owned())
            }
            _ => None,
        };
        let mut outcome = PollOutcome::state(state.clone());
        outcome.raw = Some(pipeline.status.clone());
        outcome.message = message;
        if state.is_terminal() {
            self.inner.followed.forget(id);
            tracked.status = Some(pipeline.status.clone());
            tracked.sha = pipeline.sha.clone();
            outcome.external = Some(tracked.reference(&pipeline));
        } else {
            outcome.next_poll = Some(self.hint(tracked.polls));
            tracked.polls = tracked.polls.saturating_add(1);
            let external = tracked.reference(&pipeline);
            self.inner.followed.follow(id, request.key, &external);
            outcome.external = Some(external);
        }
        Ok(outcome)
    }

    pub(crate) async fn pipeline(&self, id: u64) -> Result<Pipeline, AdapterError> {
        self.inner
            .client
            .get_json(&format!("pipelines/{id}"), &[], "read a pipeline")
            .await
    }

    pub(crate) async fn jobs(&self, id: u64) -> Result<Vec<Job>, AdapterError> {
        // 100 is the most one page holds; a pipeline with more jobs shows its newest 100.
        self.inner
            .client
            .get_json(
                &format!("pipelines/{id}/jobs"),
                &[("per_page", "100")],
                "list a pipeline's jobs",
            )
            .await
    }

    async fn manual_message(&self, id: u64) -> Result<String, AdapterError> {
        let jobs = self.jobs(id).await?;
        let names: Vec<&str> = jobs
            .iter()
            .filter(|j| j.status == "manual")
            .map(|j| j.name.as_str())
            .collect();
        Ok(format!("waits for a manual job: {}", names.join(", ")))
    }

    async fn failure_message(&self, pipeline: &Pipeline) -> Result<String, AdapterError> {
        let jobs = self.jobs(pipeline.id).await?;
        let mut message = format!(
            "pipeline {} failed",
            pipeline
                .web_url
                .as_deref()
                .unwrap_or(&pipeline.id.to_string())
        );
        for job in jobs
            .iter()
            .filter(|j| j.status == "failed")
            .take(FAILED_TRACES)
        {
            message.push_str(&format!("\n\njob `{}` failed", job.name));
            if let Some(url) = &job.web_url {
                message.push_str(&format!(" ({url})"));
            }
            if let Some(tail) = self.trace_tail(job.id).await? {
                message.push_str(":\n");
                message.push_str(&tail);
            }
        }
        Ok(message)
    }

    /// Asks GitLab to cancel, then reads the status back: the cancel answers 200 whatever
    /// the state (gitlab-org/gitlab#414963), so only the status says whether it took.
    pub(crate) async fn cancel_pipeline(&self, external: &ExternalRef) -> Result<(), AdapterError> {
        let (id, _) = Tracked::read(external)?;
        let before = self.pipeline(id).await?;
        if model::state(&before.status).is_terminal() {
            return Ok(());
        }
        let client = &self.inner.client;
        let what = "cancel a pipeline";
        let answer = client
            .send(
                Method::POST,
                client.url(&format!("pipelines/{id}/cancel"), &[]),
                None,
                Call::read(what, CANCEL_ANSWER_BYTES),
            )
            .await?;
        client.check(&answer, Credential::Token, what)?;
        let after = self.pipeline(id).await?;
        if cancel_took(&after.status) {
            return Ok(());
        }
        Err(AdapterError::Transient(format!(
            "GitLab accepted the cancel of pipeline {id} but it is still `{}`; baton tries again",
            after.status
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_took_when_the_pipeline_is_canceling_or_over() {
        for done in ["canceling", "canceled", "success", "failed", "skipped"] {
            assert!(cancel_took(done), "{done}");
        }
        for going in ["running", "pending", "created", "manual", "frozen"] {
            assert!(!cancel_took(going), "{going}");
        }
    }
}
