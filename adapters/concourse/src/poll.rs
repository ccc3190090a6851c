//! Reading a build's state (from its event stream's last status, else from the API), the
//! messages that say why it waits or how it ended, and aborting it.

use std::time::Duration;

use baton_core::wire::{Repeat, poll_hint};
use baton_core::{
    AdapterError, ExternalRef, ExternalState, HumanDuration, PollOutcome, PollRequest,
};
use reqwest::Method;

use crate::ConcourseAdapter;
use crate::client::Call;
use crate::events::{self, EventLog};
use crate::model::{self, Build, Preparation};
use crate::start::now_ms;
use crate::tracked::Tracked;

/// How many lines of a failed build's log its stage's message carries.
pub(crate) const MESSAGE_LINES: usize = 30;

impl ConcourseAdapter {
    /// Reads the build of `request` and maps its status.
    pub(crate) async fn poll_build(
        &self,
        request: &PollRequest<'_>,
    ) -> Result<PollOutcome, AdapterError> {
        let inner = &self.inner;
        let (id, mut tracked) = Tracked::read(request.external)?;
        let url = request.external.url.clone().unwrap_or_default();
        let follow = match (inner.events, &tracked.status) {
            (true, None) => inner.streams.ensure(&inner.client, id, request.key),
            _ => None,
        };
        // A status event that ended the build is Concourse's own record of it: the poll
        // it woke needs no request.
        let status = match follow.as_ref().and_then(|f| f.final_status()) {
            Some(status) => status,
            None => match &tracked.status {
                Some(status) => status.clone(),
                None => self.build(id).await?.status,
            },
        };
        let state = model::state(&status);
        let message = match &state {
            ExternalState::Queued => self.pending_message(id, &tracked).await?,
            ExternalState::Failed | ExternalState::Errored => {
                Some(self.end_message(id, &tracked, &state, &url).await)
            }
            ExternalState::Cancelled => Some(format!("build #{} was aborted: {url}", tracked.name)),
            ExternalState::Unknown(raw) => Some(format!(
                "Concourse reports status `{raw}`, which baton does not know: it keeps polling until the stage's timeout"
            )),
            _ => None,
        };
        let mut outcome = PollOutcome::state(state.clone());
        outcome.raw = Some(status.clone());
        outcome.message = message;
        if state.is_terminal() {
            inner.streams.finish(id);
            tracked.status = Some(status);
        } else {
            let jitter = rand::random_range(0.8..=1.0);
            outcome.next_poll = Some(match follow {
                Some(f) if f.healthy() => inner.poll_streaming.mul_f64(jitter),
                _ => poll_hint(inner.poll_initial, inner.poll_max, tracked.polls, jitter),
            });
            tracked.polls = tracked.polls.saturating_add(1);
        }
        outcome.external = Some(tracked.reference(id, &url));
        Ok(outcome)
    }

    pub(crate) async fn build(&self, id: u64) -> Result<Build, AdapterError> {
        let client = &self.inner.client;
        client
            .get_json(client.api(&["builds", &id.to_string()]), "read a build")
            .await
    }

    /// Why a build that has been pending for `explain_pending_after` or longer still is,
    /// from its preparation; `None` before then.
    async fn pending_message(
        &self,
        id: u64,
        tracked: &Tracked,
    ) -> Result<Option<String>, AdapterError> {
        let inner = &self.inner;
        let pending = Duration::from_millis(now_ms().saturating_sub(tracked.since_ms));
        if pending < inner.explain_pending_after {
            return Ok(None);
        }
        let client = &inner.client;
        let preparation: Preparation = client
            .get_json(
                client.api(&["builds", &id.to_string(), "preparation"]),
                "read why a build is pending",
            )
            .await?;
        let waited = HumanDuration(Duration::from_secs(pending.as_secs()));
        let why = preparation
            .reasons(&tracked.pipeline, &tracked.job)
            .unwrap_or_else(|| {
                "Concourse reports nothing blocking it (it waits for the scheduler or a worker)"
                    .to_owned()
            });
        Ok(Some(format!(
            "build #{} has been pending for {waited}: {why}; baton waits until the stage's timeout",
            tracked.name
        )))
    }

    /// A failed or errored build's message: which, its page, and the log's last lines
    /// (from its follower, else read from its events once).
    async fn end_message(
        &self,
        id: u64,
        tracked: &Tracked,
        state: &ExternalState,
        url: &str,
    ) -> String {
        let log = self.event_log(id).await;
        let what = format!(
            "build #{} of {}/{}",
            tracked.name, tracked.pipeline, tracked.job
        );
        let mut message = match (state, &log) {
            (ExternalState::Errored, Ok(log)) if !log.errors.is_empty() => format!(
                "{what} errored: Concourse could not run it (an error in a resource, a worker or the pipeline, not a failing task): {} ({url})",
                log.errors.join("; ")
            ),
            (ExternalState::Errored, _) => format!(
                "{what} errored: Concourse could not run it (an error in a resource, a worker or the pipeline, not a failing task) ({url})"
            ),
            (
                _,
                Ok(EventLog {
                    exit_status: Some(code),
                    ..
                }),
            ) => format!("{what} failed: its task exited with status {code} ({url})"),
            _ => format!("{what} failed ({url})"),
        };
        match log {
            Ok(log) => {
                let tail = log.tail.last_lines(MESSAGE_LINES);
                if !tail.trim().is_empty() {
                    message.push_str(":\n");
                    message.push_str(&tail);
                }
            }
            Err(e) => message.push_str(&format!(" (its log could not be read: {e})")),
        }
        message
    }

    /// What build `id`'s events gave: kept by its follower while it streams or once it
    /// saw the end, else read once.
    pub(crate) async fn event_log(&self, id: u64) -> Result<EventLog, AdapterError> {
        let inner = &self.inner;
        if let Some(follow) = inner.streams.get(id)
            && follow.healthy()
        {
            return Ok(follow.log());
        }
        match inner.streams.log(id) {
            Some(log) if log.ended || log.final_status().is_some() => Ok(log),
            _ => {
                let log = events::read_once(&inner.client, id).await?;
                if log.ended {
                    inner.streams.keep(id, log.clone());
                }
                Ok(log)
            }
        }
    }

    /// Aborts the build: `PUT /api/v1/builds/{id}/abort` answers 204, and acts only on a
    /// build that is `pending` or `started`; any other is left as it is.
    pub(crate) async fn abort_build(&self, external: &ExternalRef) -> Result<(), AdapterError> {
        let (id, tracked) = Tracked::read(external)?;
        if tracked
            .status
            .as_deref()
            .is_some_and(|s| model::state(s).is_terminal())
        {
            return Ok(());
        }
        let client = &self.inner.client;
        let what = format!(
            "abort build #{} of {}/{}",
            tracked.name, tracked.pipeline, tracked.job
        );
        let answer = client
            .send(
                Method::PUT,
                client.api(&["builds", &id.to_string(), "abort"]),
                None,
                Call {
                    what: &what,
                    repeat: Repeat::Safe,
                    cap: 65_536,
                },
            )
            .await?;
        client.check(&answer, &what)?;
        tracing::info!(build = id, "aborted a Concourse build");
        Ok(())
    }
}
