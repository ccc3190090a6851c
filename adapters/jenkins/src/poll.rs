//! Following an attempt: its queue item until it is cancelled or becomes a build, then the
//! build until it has a result, or the search for work a trigger gave no queue item for.
//! Every answer carries the refreshed reference and a hint that backs off with the polls.

use baton_core::{
    AdapterError, AttemptKey, ExternalState, HumanDuration, PollOutcome, PollRequest,
};
use reqwest::StatusCode;

use crate::client::{Call, MAX_JSON_BYTES};
use crate::model::{self, Build, QueueItem};
use crate::start::Found;
use crate::tracked::{Phase, Tracked};
use crate::{JenkinsAdapter, LOST_GRACE, now_ms};

impl JenkinsAdapter {
    /// Reads the state of the attempt in `request`.
    pub(crate) async fn poll_attempt(
        &self,
        request: &PollRequest<'_>,
    ) -> Result<PollOutcome, AdapterError> {
        let mut tracked = Tracked::read(request.external)?;
        tracked.polls = tracked.polls.saturating_add(1);
        let url = request.external.url.clone();
        match tracked.phase {
            Phase::Queued => self.poll_queued(request.key, tracked, url).await,
            Phase::Building => self.poll_build(request.key, tracked, url).await,
            Phase::Searching => self.poll_search(request.key, tracked).await,
        }
    }

    /// The outcome of a poll: the state, the refreshed reference and the next hint.
    pub(crate) fn outcome(
        &self,
        key: &AttemptKey,
        state: ExternalState,
        raw: &str,
        message: String,
        tracked: &Tracked,
        url: Option<String>,
    ) -> PollOutcome {
        let terminal = state.is_terminal();
        if terminal {
            self.forget(key);
        } else {
            self.watch(key, tracked);
        }
        PollOutcome {
            state,
            raw: Some(raw.to_owned()),
            next_poll: (!terminal).then(|| self.hint(tracked.polls.saturating_sub(1))),
            external: Some(self.reference(tracked, url)),
            message: Some(message),
        }
    }

    pub(crate) async fn poll_queued(
        &self,
        key: &AttemptKey,
        mut tracked: Tracked,
        url: Option<String>,
    ) -> Result<PollOutcome, AdapterError> {
        let client = &self.inner.client;
        let q = tracked.queue.unwrap_or_default();
        let what = format!("read queue item {q} of `{}`", tracked.name);
        let call = Call {
            what: &what,
            permission: "Job/Read",
            not_found: "",
        };
        let answer = client
            .get(
                client.url(&format!(
                    "queue/item/{q}/api/json?tree={}",
                    model::QUEUE_ITEM_TREE
                ))?,
                call,
                MAX_JSON_BYTES,
            )
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return self.queue_item_gone(key, tracked).await;
        }
        client.check(&answer, call)?;
        let item: QueueItem = serde_json::from_slice(&answer.body).map_err(|e| {
            AdapterError::Protocol(format!(
                "Jenkins' answer to {what} is not the JSON baton expects: {e}"
            ))
        })?;
        tracked.missing_since_ms = None;
        if item.cancelled == Some(true) {
            return Ok(self.outcome(
                key,
                ExternalState::Cancelled,
                "cancelled",
                format!(
                    "queue item {q} of `{}` was cancelled before it started",
                    tracked.name
                ),
                &tracked,
                url,
            ));
        }
        if let Some(exe) = &item.executable {
            let build_url = exe.url.clone().unwrap_or_default();
            let path = model::below_root(&build_url)
                .unwrap_or_else(|| format!("{}{}/", tracked.job, exe.number.unwrap_or_default()));
            tracked.started(exe.number, path);
            let message = format!("{} started", tracked.build_label());
            let url = (!build_url.is_empty()).then_some(build_url);
            return Ok(self.outcome(
                key,
                ExternalState::Running,
                "started",
                message,
                &tracked,
                url,
            ));
        }
        let why = item.why.clone().unwrap_or_else(|| "waiting".to_owned());
        let message = if item.stuck == Some(true) {
            format!("queue item {q} is stuck (no executor can take it): {why}")
        } else {
            format!("queue item {q}: {why}")
        };
        Ok(self.outcome(
            key,
            ExternalState::Queued,
            item.short_class(),
            message,
            &tracked,
            url,
        ))
    }

    /// The queue item answers 404: find the build by its queue id (or `BATON_ATTEMPT`);
    /// wait a bounded time when none has appeared yet.
    pub(crate) async fn queue_item_gone(
        &self,
        key: &AttemptKey,
        mut tracked: Tracked,
    ) -> Result<PollOutcome, AdapterError> {
        let q = tracked.queue;
        let builds = self.recent_builds(&tracked).await?;
        let hit = builds.into_iter().find(|b| {
            (q.is_some() && b.queue_id == q)
                || (tracked.attempt_param
                    && model::attempt_of(&b.actions).as_deref() == Some(key.as_str()))
        });
        if let Some(build) = hit {
            let url = build.url.clone();
            self.adopt(
                &mut tracked,
                Found::Build {
                    number: build.number,
                    url: url.clone().unwrap_or_default(),
                },
            );
            let message = format!(
                "queue item {} is gone (Jenkins forgets left items after about 5 minutes); {} came from it",
                q.unwrap_or_default(),
                tracked.build_label()
            );
            return Ok(self.outcome(
                key,
                ExternalState::Running,
                "started",
                message,
                &tracked,
                url,
            ));
        }
        self.still_missing(
            key,
            tracked,
            format!(
                "queue item {} of the job is gone and none of its last {} builds came from it",
                q.unwrap_or_default(),
                model::RECENT_BUILDS
            ),
        )
    }

    pub(crate) fn still_missing(
        &self,
        key: &AttemptKey,
        mut tracked: Tracked,
        what: String,
    ) -> Result<PollOutcome, AdapterError> {
        let now = now_ms();
        let since = *tracked.missing_since_ms.get_or_insert(now);
        if now.saturating_sub(since) > LOST_GRACE.as_millis() as u64 {
            let message = format!(
                "{what} for {}: it was probably cancelled long ago (Jenkins keeps a left queue item about 5 minutes) or its build was deleted",
                HumanDuration(LOST_GRACE)
            );
            return Ok(self.outcome(
                key,
                ExternalState::Errored,
                "lost",
                format!("`{}`: {message}", tracked.name),
                &tracked,
                None,
            ));
        }
        Ok(self.outcome(
            key,
            ExternalState::Queued,
            "vanished",
            format!("`{}`: {what} yet; looking again", tracked.name),
            &tracked,
            None,
        ))
    }

    pub(crate) async fn poll_build(
        &self,
        key: &AttemptKey,
        tracked: Tracked,
        url: Option<String>,
    ) -> Result<PollOutcome, AdapterError> {
        let build = self.read_build(&tracked, model::BUILD_STATE_TREE).await?;
        let label = tracked.build_label();
        if build.running() {
            return Ok(self.outcome(
                key,
                ExternalState::Running,
                "building",
                format!("{label} is running"),
                &tracked,
                url,
            ));
        }
        let raw = build.result;
        let state = model::map_result(raw.as_deref(), tracked.unstable());
        let message = match (&state, raw.as_deref()) {
            (ExternalState::Unknown(_), None) => {
                format!("{label} has stopped but has no result yet; polling again")
            }
            (ExternalState::Unknown(_), Some(word)) => format!(
                "{label} ended with result `{word}`, which baton does not know; polling again until the stage's timeout"
            ),
            (ExternalState::Failed, Some("UNSTABLE")) => format!(
                "{label} is UNSTABLE, which fails the stage (`unstable = \"success\"` would let it pass with warnings)"
            ),
            (ExternalState::Succeeded { warnings: true }, _) => {
                format!("{label} is UNSTABLE, counted as success with warnings")
            }
            (_, Some(word)) => format!("{label}: {word}"),
            (_, None) => label,
        };
        Ok(self.outcome(
            key,
            state,
            raw.as_deref().unwrap_or("null"),
            message,
            &tracked,
            url,
        ))
    }

    pub(crate) async fn read_build(
        &self,
        tracked: &Tracked,
        tree: &str,
    ) -> Result<Build, AdapterError> {
        let client = &self.inner.client;
        let path = tracked.build.clone().unwrap_or_default();
        let label = tracked.build_label();
        let what = format!("read {label}");
        let not_found = format!(
            "{label} no longer exists in Jenkins `{}`: it was deleted (by a person or the job's build discarder) before baton read it",
            client.instance()
        );
        client
            .get_json(
                client.url(&format!("{path}api/json?tree={tree}"))?,
                Call {
                    what: &what,
                    permission: "Job/Read",
                    not_found: &not_found,
                },
            )
            .await
    }

    pub(crate) async fn poll_search(
        &self,
        key: &AttemptKey,
        mut tracked: Tracked,
    ) -> Result<PollOutcome, AdapterError> {
        match self
            .search(key, &tracked, Some(tracked.triggered_ms))
            .await?
        {
            Some(found) => {
                let url = self.adopt(&mut tracked, found);
                let (state, raw) = match tracked.phase {
                    Phase::Building => (ExternalState::Running, "started"),
                    _ => (ExternalState::Queued, "queued"),
                };
                Ok(self.outcome(
                    key,
                    state,
                    raw,
                    format!("found the work of {key} in Jenkins"),
                    &tracked,
                    url,
                ))
            }
            None => self.still_missing(
                key,
                tracked,
                "the trigger gave no queue item and no matching queue item or build has appeared"
                    .to_owned(),
            ),
        }
    }
}
