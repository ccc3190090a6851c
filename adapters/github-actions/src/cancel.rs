//! Cancelling: `POST …/runs/{id}/cancel` (a 409 means the run already ended), and in the
//! background, after `stop_grace`, `force-cancel` while the run still runs (its
//! `always()` steps can keep a cancelled run going indefinitely).

use baton_core::{AdapterError, AttemptKey, ExternalRef};
use reqwest::{Method, StatusCode};

use crate::budget::Use;
use crate::client::{Call, Repeat};
use crate::tracked::Tracked;
use crate::{GithubActionsAdapter, lock};

impl GithubActionsAdapter {
    pub(crate) async fn cancel_run(
        &self,
        key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<(), AdapterError> {
        let tracked = Tracked::read(external)?;
        let run = match tracked.run {
            Some(run) => run,
            // The run of a 204 dispatch may exist unnamed: find it to stop it.
            None => match self.find_known(key, &tracked).await? {
                Some(found) => Tracked::read(&found)?.run.unwrap_or_default(),
                None => return Ok(()),
            },
        };
        let ended = !self.post_cancel(run, "cancel").await?;
        self.forget(run, key);
        if ended {
            return Ok(());
        }
        let first = lock(&self.inner.stopping).insert(run);
        if first {
            let this = self.clone();
            tokio::spawn(async move {
                this.escalate(run).await;
                lock(&this.inner.stopping).remove(&run);
            });
        }
        Ok(())
    }

    /// POSTs `cancel` or `force-cancel`; false when GitHub says the run already ended.
    async fn post_cancel(&self, run: u64, step: &str) -> Result<bool, AdapterError> {
        let client = &self.inner.client;
        let what = format!("{step} run {run}");
        let url = client.url(&self.actions(&format!("runs/{run}/{step}")))?;
        let call = Call {
            what: &what,
            repeat: Repeat::Safe,
            usage: Use::Essential,
        };
        let answer = client
            .send(Method::POST, url, None, None, call, 64 * 1024)
            .await?;
        match answer.status {
            StatusCode::CONFLICT => Ok(false),
            _ => client.check(&answer, &what).map(|()| true),
        }
    }

    /// After `stop_grace`, one look: a run not yet completed is force-cancelled. Best
    /// effort, in this process only, bounded by the one wait and two requests.
    async fn escalate(&self, run: u64) {
        tokio::time::sleep(self.inner.stop_grace).await;
        match self.read_run(run, None).await {
            Ok(r) if r.status.as_deref() == Some("completed") => {}
            Ok(_) => {
                tracing::info!(
                    run,
                    "the GitHub run still runs after a cancel: force-cancelling"
                );
                if let Err(e) = self.post_cancel(run, "force-cancel").await {
                    tracing::warn!(run, error = %e, "could not force-cancel a GitHub run");
                }
            }
            Err(e) => {
                tracing::warn!(run, error = %e, "cannot tell whether a cancelled GitHub run still runs");
            }
        }
    }
}
