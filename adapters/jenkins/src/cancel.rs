//! Cancelling: a queued item is cancelled (or, if it started meanwhile, its build
//! stopped); a running build is stopped and, in the background, escalated to `term` and
//! then `kill` after `stop_grace` each while it still runs.

use baton_core::{AdapterError, AttemptKey, ExternalRef};
use reqwest::StatusCode;

use crate::client::{Call, MAX_JSON_BYTES, Repeat};
use crate::model::{self, QueueItem};
use crate::start::Found;
use crate::tracked::{Phase, Tracked};
use crate::{JenkinsAdapter, lock};

impl JenkinsAdapter {
    /// Stops the work of `key`, wherever it is.
    pub(crate) async fn cancel_work(
        &self,
        key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<(), AdapterError> {
        let mut tracked = Tracked::read(external)?;
        match tracked.phase {
            Phase::Queued => self.cancel_queued(&tracked).await,
            Phase::Building => self.stop_build(&tracked).await,
            Phase::Searching => match self
                .search(key, &tracked, Some(tracked.triggered_ms))
                .await?
            {
                Some(found) => {
                    self.adopt(&mut tracked, found);
                    match tracked.phase {
                        Phase::Queued => self.cancel_queued(&tracked).await,
                        _ => self.stop_build(&tracked).await,
                    }
                }
                None => Ok(()),
            },
        }
    }

    pub(crate) async fn stop_build(&self, tracked: &Tracked) -> Result<(), AdapterError> {
        let build = match self.read_build(tracked, model::BUILD_STATE_TREE).await {
            Ok(build) => build,
            Err(AdapterError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if !build.running() {
            return Ok(());
        }
        let path = tracked.build.clone().unwrap_or_default();
        self.post_step(&path, "stop", &tracked.build_label())
            .await?;
        let first = lock(&self.inner.stopping).insert(path.clone());
        if first {
            let this = self.clone();
            let tracked = tracked.clone();
            tokio::spawn(async move {
                this.escalate(&tracked).await;
                lock(&this.inner.stopping).remove(&path);
            });
        }
        Ok(())
    }

    /// After `stop`, while the build still runs: `term` after `stop_grace`, then `kill`
    /// after another. Best effort, in the background, in this process only.
    pub(crate) async fn escalate(&self, tracked: &Tracked) {
        let path = tracked.build.clone().unwrap_or_default();
        let label = tracked.build_label();
        for step in ["term", "kill"] {
            tokio::time::sleep(self.inner.stop_grace).await;
            match self.read_build(tracked, model::BUILD_STATE_TREE).await {
                Ok(build) if build.running() => {}
                Ok(_) | Err(AdapterError::NotFound(_)) => return,
                Err(e) => {
                    tracing::warn!(build = %label, error = %e, "cannot tell whether a stopped Jenkins build still runs");
                    continue;
                }
            }
            tracing::info!(build = %label, step, "the Jenkins build still runs after a stop: escalating");
            if let Err(e) = self.post_step(&path, step, &label).await {
                tracing::warn!(build = %label, step, error = %e, "could not escalate the stop of a Jenkins build");
            }
        }
    }

    pub(crate) async fn post_step(
        &self,
        path: &str,
        step: &str,
        label: &str,
    ) -> Result<(), AdapterError> {
        let client = &self.inner.client;
        let what = format!("{step} {label}");
        let call = Call {
            what: &what,
            permission: "Job/Cancel",
            not_found: "",
        };
        let answer = client
            .post(
                client.url(&format!("{path}{step}"))?,
                None,
                call,
                Repeat::Safe,
            )
            .await?;
        // 2xx, or the 302 to the build page; a 404 or 405 means the build is gone or
        // has no such step (`term` and `kill` exist only for Pipeline builds).
        match answer.status {
            s if s.is_success() || s.is_redirection() => Ok(()),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Ok(()),
            _ => client.check(&answer, call),
        }
    }

    pub(crate) async fn cancel_queued(&self, tracked: &Tracked) -> Result<(), AdapterError> {
        let client = &self.inner.client;
        let q = tracked.queue.unwrap_or_default();
        let what = format!("cancel queue item {q} of `{}`", tracked.name);
        let call = Call {
            what: &what,
            permission: "Job/Cancel",
            not_found: "",
        };
        let answer = client
            .post(
                client.url(&format!("queue/cancelItem?id={q}"))?,
                None,
                call,
                Repeat::Safe,
            )
            .await?;
        // Some versions answer 404 or 302 even when the cancel worked (JENKINS-21311):
        // only refusals count here; the queue item says what really happened.
        if matches!(
            answer.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            client.check(&answer, call)?;
        }
        let read = Call {
            what: "read the cancelled queue item",
            ..call
        };
        let answer = client
            .get(
                client.url(&format!(
                    "queue/item/{q}/api/json?tree={}",
                    model::QUEUE_ITEM_TREE
                ))?,
                read,
                MAX_JSON_BYTES,
            )
            .await?;
        let mut tracked = tracked.clone();
        if answer.status == StatusCode::NOT_FOUND {
            let builds = self.recent_builds(&tracked).await?;
            return match builds.into_iter().find(|b| b.queue_id == Some(q)) {
                Some(build) => {
                    self.adopt(
                        &mut tracked,
                        Found::Build {
                            number: build.number,
                            url: build.url.unwrap_or_default(),
                        },
                    );
                    self.stop_build(&tracked).await
                }
                None => Ok(()),
            };
        }
        client.check(&answer, read)?;
        let item: QueueItem = serde_json::from_slice(&answer.body)
            .map_err(|e| AdapterError::Protocol(format!("unreadable queue item {q}: {e}")))?;
        if item.cancelled == Some(true) {
            return Ok(());
        }
        if let Some(exe) = item.executable {
            // It started between the trigger and the cancel: stop the build.
            let url = exe.url.unwrap_or_default();
            self.adopt(
                &mut tracked,
                Found::Build {
                    number: exe.number,
                    url,
                },
            );
            return self.stop_build(&tracked).await;
        }
        Err(AdapterError::Transient(format!(
            "Jenkins `{}` has not cancelled queue item {q} yet",
            client.instance()
        )))
    }
}
