//! Dispatching a workflow and finding its run again: by the 200 answer's run id, else by
//! the attempt key in the run's `display_title` (`correlation_input`).

use std::time::Duration;

use baton_core::{AdapterError, AttemptKey, ExternalRef, StartRequest};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use baton_core::wire::encode_segment as segment;
use baton_core::wire::{iso_utc, run_created_ms};

use crate::budget::Use;
use crate::client::{Call, Repeat, now_ms, parse_json};
use crate::config::{self, Mode, StageSpec};
use crate::model::{Dispatched, Run, Runs};
use crate::tracked::Tracked;
use crate::{CLOCK_SLACK, GithubActionsAdapter, MEMORY_LIMIT, lock};

/// What to add to a workflow so that baton can find its runs, for messages.
fn setup_lines(input: &str) -> String {
    format!(
        "on:\n  workflow_dispatch:\n    inputs:\n      {input}:\n        required: false\n        default: ''\nrun-name: \"${{{{ github.workflow }}}} ${{{{ inputs.{input} }}}}\""
    )
}

/// Whether `title` holds `key` as a whole word (attempt `…/1` is not in `…/10`).
pub(crate) fn holds_key(title: &str, key: &AttemptKey) -> bool {
    let key = key.as_str();
    title.match_indices(key).any(|(at, _)| {
        let before = title[..at].chars().next_back();
        let after = title[at + key.len()..].chars().next();
        let edge = |c: Option<char>| {
            c.is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '/' | '-' | '_')))
        };
        edge(before) && edge(after)
    })
}

impl GithubActionsAdapter {
    pub(crate) async fn dispatch(
        &self,
        request: &StartRequest,
    ) -> Result<ExternalRef, AdapterError> {
        let corr = self.inner.correlation_input.as_deref();
        let spec = config::parse_stage(&request.input, Mode::Rendered, corr)
            .map_err(|errors| AdapterError::Invalid(baton_core::FieldError::join(&errors)))?;
        let key = &request.key;
        // A dispatch of this attempt whose answer was lost: look before sending another.
        let earlier = lock(&self.inner.journal).get(key).cloned();
        if let Some(earlier) = earlier {
            if let Some(found) = self.find_known(key, &earlier).await? {
                return Ok(found);
            }
            if corr.is_none() {
                return Err(AdapterError::Protocol(format!(
                    "the dispatch of `{}` for {key} may have started a run, but its answer was lost and without `correlation_input` baton cannot tell which run is this attempt's; it does not dispatch twice",
                    spec.workflow
                )));
            }
        }
        let mut inputs = spec.inputs.clone();
        if let Some(input) = corr {
            inputs.insert(input.to_owned(), Value::String(key.to_string()));
        }
        let tracked = Tracked {
            run: None,
            workflow: spec.workflow.clone(),
            git_ref: spec.git_ref.clone(),
            dispatched_ms: now_ms(),
        };
        {
            let mut journal = lock(&self.inner.journal);
            if journal.len() >= MEMORY_LIMIT {
                journal.clear();
            }
            journal.insert(key.clone(), tracked.clone());
        }
        let answer = self.post_dispatch(&spec, &inputs, true).await?;
        let answer = match answer.status {
            StatusCode::UNPROCESSABLE_ENTITY
                if answer
                    .message()
                    .is_some_and(|m| m.contains("return_run_details")) =>
            {
                // This GitHub does not know the flag and refused the whole request, so no
                // run was created: the same dispatch without it.
                self.post_dispatch(&spec, &inputs, false).await?
            }
            _ => answer,
        };
        let what = format!(
            "dispatch workflow `{}` on `{}`",
            spec.workflow, spec.git_ref
        );
        match answer.status {
            StatusCode::OK => {
                let run: Dispatched = parse_json(&answer, &what)?;
                let tracked = Tracked {
                    run: Some(run.workflow_run_id),
                    ..tracked
                };
                lock(&self.inner.journal).insert(key.clone(), tracked.clone());
                self.watch(run.workflow_run_id, key);
                Ok(tracked.to_ref(run.html_url))
            }
            StatusCode::NO_CONTENT => match corr {
                // The run is found by its title in the polls that follow.
                Some(_) => Ok(tracked.to_ref(None)),
                None => Err(AdapterError::Invalid(format!(
                    "GitHub started workflow `{}` but did not say which run (204: GitHub Enterprise Server or an older API answers so), and without `correlation_input` baton cannot find it. Set `correlation_input = \"baton_attempt\"` in [adapters.{}] and add to the workflow:\n{}",
                    spec.workflow,
                    self.inner.client.instance(),
                    setup_lines("baton_attempt")
                ))),
            },
            StatusCode::UNPROCESSABLE_ENTITY => {
                lock(&self.inner.journal).remove(key);
                let said = answer.message().unwrap_or_else(|| answer.text());
                let hint = match corr {
                    Some(input) if said.contains(input) => format!(
                        "; the workflow must declare the correlation input:\n{}",
                        setup_lines(input)
                    ),
                    _ => String::new(),
                };
                Err(AdapterError::Invalid(format!(
                    "GitHub refused to {what} (422): {said}{hint}"
                )))
            }
            _ => {
                lock(&self.inner.journal).remove(key);
                self.inner.client.check(&answer, &what)?;
                Err(AdapterError::Protocol(format!(
                    "GitHub answered {} to {what}",
                    answer.status
                )))
            }
        }
    }

    async fn post_dispatch(
        &self,
        spec: &StageSpec,
        inputs: &Map<String, Value>,
        details: bool,
    ) -> Result<crate::client::Answer, AdapterError> {
        let client = &self.inner.client;
        let mut body = json!({"ref": spec.git_ref, "inputs": inputs});
        if details {
            body["return_run_details"] = Value::Bool(true);
        }
        let what = format!(
            "dispatch workflow `{}` on `{}`",
            spec.workflow, spec.git_ref
        );
        let url = client
            .url(&self.actions(&format!("workflows/{}/dispatches", segment(&spec.workflow))))?;
        let call = Call {
            what: &what,
            repeat: Repeat::Once,
            usage: Use::Essential,
        };
        client
            .send(Method::POST, url, Some(&body), None, call, 64 * 1024)
            .await
    }

    /// The run of a dispatch this process sent or a stored reference names: known, or
    /// found by its title. `None` when it cannot be found (yet).
    pub(crate) async fn find_known(
        &self,
        key: &AttemptKey,
        tracked: &Tracked,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        if let Some(run) = tracked.run {
            self.watch(run, key);
            return Ok(Some(tracked.to_ref(None)));
        }
        if self.inner.correlation_input.is_none() {
            return Ok(None);
        }
        let since = tracked
            .dispatched_ms
            .saturating_sub(CLOCK_SLACK.as_millis() as u64);
        Ok(self
            .search(key, &tracked.workflow, &tracked.git_ref, Some(since))
            .await?
            .map(|run| {
                let found = Tracked {
                    run: Some(run.id),
                    ..tracked.clone()
                };
                self.watch(run.id, key);
                lock(&self.inner.journal).insert(key.clone(), found.clone());
                found.to_ref(Some(run.html_url))
            }))
    }

    /// `workflow_dispatch` runs of `workflow` on `git_ref` created since `since_ms` whose
    /// `display_title` holds `key`; the earliest when several do.
    pub(crate) async fn search(
        &self,
        key: &AttemptKey,
        workflow: &str,
        git_ref: &str,
        since_ms: Option<u64>,
    ) -> Result<Option<Run>, AdapterError> {
        let mut query = format!(
            "workflows/{}/runs?event=workflow_dispatch&branch={}&per_page=100",
            segment(workflow),
            segment(git_ref)
        );
        if let Some(since) = since_ms {
            query.push_str(&format!("&created=%3E%3D{}", segment(&iso_utc(since))));
        }
        let what = format!("look for the run of {key} among the runs of `{workflow}`");
        let runs: Runs = self
            .inner
            .client
            .get_json(&self.actions(&query), Call::read(&what))
            .await?;
        Ok(runs
            .workflow_runs
            .into_iter()
            .filter(|r| holds_key(&r.display_title, key))
            .min_by_key(|r| r.id))
    }

    pub(crate) async fn find_run(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        let known = lock(&self.inner.journal).get(key).cloned();
        if let Some(tracked) = known {
            return self.find_known(key, &tracked).await;
        }
        if self.inner.correlation_input.is_none() {
            return Ok(None);
        }
        let spec = config::parse_stage(
            input,
            Mode::Rendered,
            self.inner.correlation_input.as_deref(),
        )
        .map_err(|errors| AdapterError::Invalid(baton_core::FieldError::join(&errors)))?;
        // After a restart the dispatch time is lost; the run's creation (its UUIDv7 id)
        // bounds it from below.
        let since = run_created_ms(key).map(|ms| ms.saturating_sub(CLOCK_SLACK.as_millis() as u64));
        let tracked = Tracked {
            run: None,
            workflow: spec.workflow,
            git_ref: spec.git_ref,
            dispatched_ms: since.unwrap_or_default(),
        };
        Ok(self
            .search(key, &tracked.workflow, &tracked.git_ref, since)
            .await?
            .map(|run| {
                self.watch(run.id, key);
                Tracked {
                    run: Some(run.id),
                    ..tracked
                }
                .to_ref(Some(run.html_url))
            }))
    }
}

/// How long to wait between searches for a run a 204 did not name.
pub(crate) const SEARCH_INTERVAL: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_hold_whole_keys_only() {
        let key = AttemptKey::new("r1", "build", 1);
        assert!(holds_key("deploy r1/build/1", &key));
        assert!(holds_key("[r1/build/1]", &key));
        assert!(!holds_key("deploy r1/build/10", &key));
        assert!(!holds_key("deploy xr1/build/1", &key));
        assert!(!holds_key("deploy", &key));
    }
}
