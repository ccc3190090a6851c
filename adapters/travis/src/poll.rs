//! Following a request to its build and the build to its end, and cancelling.

use std::time::Duration;

use baton_core::{
    AdapterError, AttemptKey, ExternalRef, ExternalState, HumanDuration, PollOutcome, PollRequest,
};
use reqwest::{Method, StatusCode};

use crate::TravisAdapter;
use crate::client::Ask;
use crate::model::{self, Build, Request};
use crate::start::now_ms;
use crate::tracked::Tracked;

/// How many broken jobs' log tails a failed stage's message carries.
const BROKEN_TAILS: usize = 3;

/// The message of a build state baton does not know.
fn unknown(raw: &str) -> String {
    format!(
        "Travis reports build state `{raw}`, which baton does not know: it keeps polling until the stage's timeout"
    )
}

/// What a poll learnt.
struct Seen {
    state: ExternalState,
    raw: String,
    message: Option<String>,
}

impl TravisAdapter {
    /// Reads the request (until it has a build) or the build, and maps its state.
    pub(crate) async fn follow(
        &self,
        request: &PollRequest<'_>,
    ) -> Result<PollOutcome, AdapterError> {
        let mut tracked = Tracked::read(request.external)?;
        let seen = match (tracked.build, tracked.request) {
            (Some(build), _) => self.poll_build(build, &mut tracked).await?,
            (None, Some(id)) => self.poll_request(id, &mut tracked).await?,
            (None, None) => self.poll_lost(request.key, &mut tracked).await?,
        };
        let mut outcome = PollOutcome::state(seen.state.clone());
        outcome.raw = Some(seen.raw);
        outcome.message = seen.message;
        if seen.state.is_terminal() {
            self.inner.memory.drop_key(request.key);
        } else {
            let mut hint = self.hint(tracked.polls);
            if tracked.build.is_none() {
                // Look again when the wait for a build is over, not a long hint later.
                let left = tracked.deadline_ms().saturating_sub(now_ms()) + 50;
                hint = hint.min(Duration::from_millis(left));
            }
            outcome.next_poll = Some(hint);
            tracked.polls = tracked.polls.saturating_add(1);
        }
        let external = tracked.reference(&self.inner.pages);
        if !seen.state.is_terminal() {
            self.inner.memory.keep(request.key, &tracked, &external);
        }
        outcome.external = Some(external);
        Ok(outcome)
    }

    pub(crate) async fn request(&self, id: u64) -> Result<Request, AdapterError> {
        let client = &self.inner.client;
        client
            .get(
                client.repo_url(&["request", &id.to_string()], &[]),
                "read a build request",
            )
            .await
    }

    pub(crate) async fn build(&self, id: u64) -> Result<Build, AdapterError> {
        let client = &self.inner.client;
        client
            .get(
                client.url(&["build", &id.to_string()], &[("include", "build.jobs")]),
                "read a build",
            )
            .await
    }

    /// A request: its build once Travis made one, else rejected, else still waiting (for
    /// at most its `request_timeout_build`).
    async fn poll_request(&self, id: u64, tracked: &mut Tracked) -> Result<Seen, AdapterError> {
        let request = self.request(id).await?;
        if let Some(build) = request.builds.first() {
            tracked.build = Some(build.id);
            tracked.number.clone_from(&build.number);
            if model::state(&build.state).is_terminal() {
                // It ended before baton saw it start: read it whole.
                return self.poll_build(build.id, tracked).await;
            }
            let number = build.number.as_deref().unwrap_or("?");
            return Ok(Seen {
                state: model::state(&build.state),
                raw: build.state.clone(),
                message: Some(match model::state(&build.state) {
                    ExternalState::Unknown(raw) => unknown(&raw),
                    _ => format!("Travis made build #{number} for request {id}"),
                }),
            });
        }
        let client = &self.inner.client;
        if request.rejected() {
            tracked.end = Some("rejected".into());
            return Ok(Seen {
                state: ExternalState::Errored,
                raw: "rejected".into(),
                message: Some(format!(
                    "Travis rejected build request {id} for `{}`: {} (check the branch, the `config` given and `.travis.yml`; the repository's Requests page on Travis shows the same)",
                    client.slug(),
                    request
                        .message
                        .as_deref()
                        .filter(|m| !m.trim().is_empty())
                        .unwrap_or("Travis gave no reason")
                )),
            });
        }
        let state = request.state.clone().unwrap_or_else(|| "pending".into());
        if now_ms() >= tracked.deadline_ms() {
            tracked.end = Some("no_build".into());
            return Ok(Seen {
                state: ExternalState::Errored,
                raw: state.clone(),
                message: Some(format!(
                    "Travis accepted build request {id} for `{}` but made no build within {} (request_timeout_build; the request is `{state}`{}): Travis sometimes drops requests (travis-ci/travis-api#210); check that the repository is active and builds pushes, then retry the stage",
                    client.slug(),
                    HumanDuration(Duration::from_millis(tracked.wait_ms)),
                    request
                        .result
                        .as_deref()
                        .map(|r| format!(", `{r}`"))
                        .unwrap_or_default()
                )),
            });
        }
        Ok(Seen {
            state: ExternalState::Queued,
            raw: state.clone(),
            message: Some(format!(
                "Travis has made no build for request {id} yet (request `{state}`)"
            )),
        })
    }

    /// A create whose answer named no request (older Travis): look for it by its marker.
    async fn poll_lost(
        &self,
        key: &AttemptKey,
        tracked: &mut Tracked,
    ) -> Result<Seen, AdapterError> {
        let wait = Duration::from_millis(tracked.wait_ms);
        let found = match self.search(key, wait).await {
            Ok(found) => found,
            Err(e) if e.is_transient() => None,
            Err(e) => return Err(e),
        };
        if let Some(request) = found {
            tracked.request = Some(request.id);
            return self.poll_request(request.id, tracked).await;
        }
        if now_ms() >= tracked.deadline_ms() {
            tracked.end = Some("no_build".into());
            return Ok(Seen {
                state: ExternalState::Errored,
                raw: "unknown".into(),
                message: Some(format!(
                    "Travis accepted the build request but its answer named no request, and none with this attempt's message appeared within {} (request_timeout_build)",
                    HumanDuration(wait)
                )),
            });
        }
        Ok(Seen {
            state: ExternalState::Queued,
            raw: "pending".into(),
            message: Some(
                "Travis accepted the build request; baton looks for it by its message".into(),
            ),
        })
    }

    /// A build and its jobs.
    async fn poll_build(&self, id: u64, tracked: &mut Tracked) -> Result<Seen, AdapterError> {
        let build = self.build(id).await?;
        tracked.number.clone_from(&build.number);
        let state = model::state(&build.state);
        let number = build.number.as_deref().unwrap_or("?");
        let message = match &state {
            ExternalState::Failed | ExternalState::Errored => {
                Some(self.broken_message(&build).await?)
            }
            ExternalState::Unknown(raw) => Some(unknown(raw)),
            ExternalState::Cancelled => Some(format!("build #{number} was cancelled")),
            _ => None,
        };
        if state.is_terminal() {
            tracked.end = Some(build.state.clone());
            tracked.jobs.clone_from(&build.jobs);
        }
        Ok(Seen {
            state,
            raw: build.state,
            message,
        })
    }

    /// What went wrong: `errored` is Travis's word for a build that broke before or
    /// outside its tests (install, setup, config), `failed` for a script that failed; each
    /// broken job (up to 3) with its page and the end of its log.
    async fn broken_message(&self, build: &Build) -> Result<String, AdapterError> {
        let pages = &self.inner.pages;
        let number = build.number.as_deref().unwrap_or("?");
        let mut message = if build.state == "errored" {
            format!(
                "build #{number} errored ({pages}/builds/{}): Travis could not run it to the end (an install or setup step, or the build config, failed), so this is not a test failure",
                build.id
            )
        } else {
            format!("build #{number} failed ({pages}/builds/{})", build.id)
        };
        for job in build.jobs.iter().filter(|j| j.broken()).take(BROKEN_TAILS) {
            message.push_str(&format!(
                "\n\njob {} {} ({pages}/jobs/{})",
                job.label(),
                job.state.as_deref().unwrap_or("failed"),
                job.id
            ));
            if let Some(tail) = self.log_tail(job.id).await? {
                message.push_str(":\n");
                message.push_str(&tail);
            }
        }
        Ok(message)
    }

    /// Cancels the build. A request with no build yet cannot be cancelled on Travis: baton
    /// then watches it and cancels its build once one appears, and says so.
    pub(crate) async fn stop(
        &self,
        key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<(), AdapterError> {
        let tracked = Tracked::read(external)?;
        if tracked.end.is_some() {
            return Ok(());
        }
        if let Some(build) = tracked.build {
            return self.cancel_build(build).await;
        }
        let request = match tracked.request {
            Some(id) => Some(self.request(id).await?),
            None => {
                self.search(key, Duration::from_millis(tracked.wait_ms))
                    .await?
            }
        };
        let Some(request) = request else {
            return Err(AdapterError::NotFound(format!(
                "Travis `{}` lists no request for {key} yet: there is nothing to cancel (a request that appears later gets its build as usual)",
                self.inner.client.instance()
            )));
        };
        if request.rejected() {
            return Ok(());
        }
        if !request.builds.is_empty() {
            for build in &request.builds {
                self.cancel_build(build.id).await?;
            }
            return Ok(());
        }
        let until = tracked.deadline_ms();
        self.watch(request.id, until);
        Err(AdapterError::Transient(format!(
            "Travis has made no build for request {} yet, and a request cannot be cancelled: this baton process watches it until its request_timeout_build ends (in {}) and cancels its build as soon as one appears",
            request.id,
            HumanDuration(Duration::from_secs(
                until.saturating_sub(now_ms()).div_ceil(1000)
            ))
        )))
    }

    /// `POST /build/{id}/cancel`: `202`, and Travis cancels the build and its unfinished jobs
    /// a moment later (a build that ended stays as it ended).
    pub(crate) async fn cancel_build(&self, id: u64) -> Result<(), AdapterError> {
        let client = &self.inner.client;
        let what = "cancel a build";
        let reply = client
            .send(
                Method::POST,
                client.url(&["build", &id.to_string(), "cancel"], &[]),
                None,
                Ask::read(what),
            )
            .await?;
        // 409: nothing left to cancel.
        if reply.status == StatusCode::CONFLICT {
            return Ok(());
        }
        client.accept(&reply, what)?;
        tracing::info!(build = id, "asked Travis to cancel a build");
        Ok(())
    }

    /// Watches request `id` in the background until `until_ms`, and cancels its build as
    /// soon as one appears.
    fn watch(&self, id: u64, until_ms: u64) {
        let inner = &self.inner;
        let fresh = inner
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
        if !fresh {
            return;
        }
        let adapter = self.clone();
        let every = inner.poll_initial;
        tokio::spawn(async move {
            while now_ms() < until_ms {
                tokio::time::sleep(every).await;
                let Ok(request) = adapter.request(id).await else {
                    continue;
                };
                if request.rejected() {
                    break;
                }
                if let Some(build) = request.builds.first() {
                    if let Err(e) = adapter.cancel_build(build.id).await {
                        tracing::warn!(request = id, build = build.id, error = %e, "could not cancel the build of a cancelled request");
                    } else {
                        tracing::info!(
                            request = id,
                            build = build.id,
                            "cancelled the build of a request cancelled before it had one"
                        );
                    }
                    break;
                }
            }
            adapter
                .inner
                .watched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
        });
    }
}
