//! Following a run: the run read with `If-None-Match`, every status and conclusion mapped
//! (api-contracts §4.4), and hints that stretch with the credential's rate budget.

use std::time::Duration;

use baton_core::{AdapterError, AttemptKey, ExternalState, PollOutcome, PollRequest};
use reqwest::{Method, StatusCode};

use crate::budget::Gate;
use crate::budget::Use;
use crate::client::{Call, MAX_JSON_BYTES, etag, now_ms, parse_json};
use crate::model::Run;
use crate::start::SEARCH_INTERVAL;
use crate::tracked::Tracked;
use crate::{CORRELATE_WINDOW, GithubActionsAdapter, lock};

/// The canonical state of a run's `status` and `conclusion`, and a word for people.
pub(crate) fn map_state(
    status: Option<&str>,
    conclusion: Option<&str>,
) -> (ExternalState, Option<&'static str>) {
    use ExternalState as S;
    match (status.unwrap_or_default(), conclusion) {
        ("requested" | "queued", _) => (S::Queued, None),
        ("pending", _) => (
            S::Queued,
            Some("waits for another run of its concurrency group"),
        ),
        ("waiting", _) => (
            S::Blocked,
            Some(
                "waiting for an environment approval (a protection rule of one of its environments)",
            ),
        ),
        ("in_progress", _) => (S::Running, None),
        ("completed", Some("success")) => (S::Succeeded { warnings: false }, None),
        ("completed", Some("neutral")) => (S::Succeeded { warnings: false }, Some("ended neutral")),
        ("completed", Some("skipped")) => (S::Skipped, Some("GitHub skipped the run")),
        ("completed", Some("cancelled")) => (S::Cancelled, Some("the run was cancelled")),
        ("completed", Some("failure")) => (S::Failed, Some("the run failed")),
        ("completed", Some("timed_out")) => (
            S::Failed,
            Some("the run timed out (a job's timeout-minutes)"),
        ),
        ("completed", Some("startup_failure")) => (
            S::Errored,
            Some(
                "the run could not start: the workflow file is invalid (open the run on GitHub for the error)",
            ),
        ),
        // Not an end: someone can still approve the run on GitHub (a first-time
        // contributor's, a fork's), and it then runs; the stage's timeout bounds the wait.
        ("completed", Some("action_required")) => (
            S::Blocked,
            Some("GitHub waits for someone to approve this run (action_required)"),
        ),
        ("completed", Some("stale")) => (S::Failed, Some("GitHub marked the run stale")),
        (status, conclusion) => {
            let raw = match conclusion {
                Some(c) => format!("{status}/{c}"),
                None => status.to_owned(),
            };
            (
                S::Unknown(raw),
                Some("GitHub reported a state baton does not know; it keeps polling"),
            )
        }
    }
}

fn raw(run: &Run) -> String {
    match &run.conclusion {
        Some(c) => format!("{}/{c}", run.status.as_deref().unwrap_or_default()),
        None => run.status.clone().unwrap_or_default(),
    }
}

impl GithubActionsAdapter {
    pub(crate) async fn poll_run(
        &self,
        request: &PollRequest<'_>,
    ) -> Result<PollOutcome, AdapterError> {
        let key = request.key;
        let tracked = Tracked::read(request.external)?;
        let Some(run_id) = tracked.run else {
            return self.poll_search(key, &tracked).await;
        };
        self.watch(run_id, key);
        self.inner.client.budget().waiting(key);
        let (polls, cached) = {
            let mut watched = lock(&self.inner.watched);
            let watch = watched.get_mut(&run_id).filter(|w| &w.key == key);
            match watch {
                Some(w) => {
                    w.polls += 1;
                    (w.polls - 1, w.etag.clone())
                }
                None => (0, None),
            }
        };
        // The engine polls right after the start: a run dispatched moments ago is queued,
        // and reading it would spend a request to learn nothing.
        let age = Duration::from_millis(now_ms().saturating_sub(tracked.dispatched_ms));
        if polls == 0 && cached.is_none() && age < self.inner.poll_initial / 2 {
            return Ok(PollOutcome {
                state: ExternalState::Queued,
                raw: Some("dispatched".to_owned()),
                next_poll: Some(self.hint(0)),
                external: None,
                message: Some(format!("dispatched run {run_id}")),
            });
        }
        // At the reserve a poll that knows the run's last state keeps it and waits for
        // the reset instead of spending a request.
        if let (Gate::Wait(wait), Some((_, run))) =
            (self.inner.client.budget().peek(Use::Routine), &cached)
        {
            let mut outcome = self.outcome(key, run_id, run).await;
            if !outcome.state.is_terminal() {
                outcome.next_poll = Some(wait.min(Duration::from_secs(3600)));
                return Ok(outcome);
            }
        }
        let run = self.read_run(run_id, cached).await?;
        let mut outcome = self.outcome(key, run_id, &run).await;
        if outcome.state.is_terminal() {
            self.forget(run_id, key);
        } else {
            outcome.next_poll = Some(self.hint(polls));
        }
        Ok(outcome)
    }

    /// Reads run `run_id`, sending the ETag of the last answer so that an unchanged run
    /// costs a free 304.
    pub(crate) async fn read_run(
        &self,
        run_id: u64,
        cached: Option<(String, Run)>,
    ) -> Result<Run, AdapterError> {
        let client = &self.inner.client;
        let what = format!("read run {run_id}");
        let url = client.url(&self.actions(&format!("runs/{run_id}")))?;
        let tag = cached.as_ref().map(|(t, _)| t.as_str());
        let answer = client
            .send(
                Method::GET,
                url,
                None,
                tag,
                Call::read(&what),
                MAX_JSON_BYTES,
            )
            .await?;
        if answer.status == StatusCode::NOT_MODIFIED
            && let Some((_, run)) = cached
        {
            return Ok(run);
        }
        client.check(&answer, &what)?;
        let run: Run = parse_json(&answer, &what)?;
        if run.id != run_id {
            return Err(AdapterError::Protocol(format!(
                "GitHub answered run {} when asked for run {run_id}",
                run.id
            )));
        }
        if let Some(tag) = etag(&answer)
            && let Some(w) = lock(&self.inner.watched).get_mut(&run_id)
        {
            w.etag = Some((tag, run.clone()));
        }
        Ok(run)
    }

    async fn outcome(&self, key: &AttemptKey, run_id: u64, run: &Run) -> PollOutcome {
        let (state, word) = map_state(run.status.as_deref(), run.conclusion.as_deref());
        let mut message = match word {
            Some(w) => format!("run #{} {w}: {}", run.run_number, run.html_url),
            None => format!("run #{}: {}", run.run_number, run.html_url),
        };
        if matches!(state, ExternalState::Failed) {
            // The failed jobs' log tails belong in the stage's error; a failure to read
            // them must not hide the failure itself.
            match self.failed_job_tails(run_id).await {
                Ok(tails) if !tails.is_empty() => {
                    message.push('\n');
                    message.push_str(&tails);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%key, error = %e, "cannot read the failed jobs' logs"),
            }
        }
        PollOutcome {
            raw: Some(raw(run)),
            state,
            next_poll: None,
            external: None,
            message: Some(message),
        }
    }

    /// A dispatch answered 204: the run is looked for by the attempt key in its title
    /// until [`CORRELATE_WINDOW`] has passed since the dispatch.
    async fn poll_search(
        &self,
        key: &AttemptKey,
        tracked: &Tracked,
    ) -> Result<PollOutcome, AdapterError> {
        if let Some(found) = self.find_known(key, tracked).await? {
            let mut outcome = PollOutcome::state(ExternalState::Queued)
                .with_message(format!(
                    "found run {} of `{}` by its title",
                    found.id, tracked.workflow
                ))
                .next_poll(self.inner.poll_initial.min(SEARCH_INTERVAL));
            outcome.raw = Some("found".to_owned());
            outcome.external = Some(found);
            return Ok(outcome);
        }
        let waited = Duration::from_millis(now_ms().saturating_sub(tracked.dispatched_ms));
        if waited > CORRELATE_WINDOW {
            let input = self
                .inner
                .correlation_input
                .as_deref()
                .unwrap_or("baton_attempt");
            return Err(AdapterError::Protocol(format!(
                "no `workflow_dispatch` run of `{}` on `{}` whose title holds {key} appeared within {} of the dispatch: the workflow must show its `{input}` input in its title (`run-name: \"… ${{{{ inputs.{input} }}}}\"`)",
                tracked.workflow,
                tracked.git_ref,
                baton_core::HumanDuration(CORRELATE_WINDOW)
            )));
        }
        Ok(PollOutcome::state(ExternalState::Queued)
            .with_message(format!(
                "dispatched `{}`; looking for its run",
                tracked.workflow
            ))
            .next_poll(SEARCH_INTERVAL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_status_and_conclusion_maps() {
        use ExternalState as S;
        let cases = [
            ("requested", None, S::Queued),
            ("queued", None, S::Queued),
            ("pending", None, S::Queued),
            ("waiting", None, S::Blocked),
            ("in_progress", None, S::Running),
            (
                "completed",
                Some("success"),
                S::Succeeded { warnings: false },
            ),
            (
                "completed",
                Some("neutral"),
                S::Succeeded { warnings: false },
            ),
            ("completed", Some("skipped"), S::Skipped),
            ("completed", Some("cancelled"), S::Cancelled),
            ("completed", Some("failure"), S::Failed),
            ("completed", Some("timed_out"), S::Failed),
            ("completed", Some("startup_failure"), S::Errored),
            ("completed", Some("action_required"), S::Blocked),
            ("completed", Some("stale"), S::Failed),
        ];
        for (status, conclusion, want) in cases {
            assert_eq!(
                map_state(Some(status), conclusion).0,
                want,
                "{status}/{conclusion:?}"
            );
        }
        assert!(
            map_state(Some("waiting"), None)
                .1
                .unwrap()
                .contains("waiting for an environment approval")
        );
        assert!(
            map_state(Some("completed"), Some("startup_failure"))
                .1
                .unwrap()
                .contains("workflow file is invalid")
        );
        for (status, conclusion) in [
            ("paused", None),
            ("completed", Some("exploded")),
            ("completed", None),
        ] {
            let (state, _) = map_state(Some(status), conclusion);
            assert!(
                matches!(state, S::Unknown(_)) && !state.is_terminal(),
                "{state:?}"
            );
        }
        assert_eq!(map_state(None, None).0, S::Unknown(String::new()));
    }
}
