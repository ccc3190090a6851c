//! Cancelling: a running build is stopped; a queued request is cancelled, and a build that
//! started meanwhile stopped. Finished work is left alone.

use std::time::{Duration, Instant};

use baton_core::{AdapterError, AttemptKey, ExternalRef};
use serde_json::json;

use crate::model::{RETRY, RefData};
use crate::{BuildbotAdapter, CANCEL_CONFIRM};

impl BuildbotAdapter {
    /// Stops the work of `key`, wherever it is.
    pub(crate) async fn cancel_work(
        &self,
        key: &AttemptKey,
        external: &ExternalRef,
    ) -> Result<(), AdapterError> {
        let data = RefData::read(&external.id, &external.data)?;
        if let Some(buildid) = data.build {
            let build = self.build(buildid).await?;
            if !build.complete {
                return self.stop(buildid, key).await;
            }
            if build.results != Some(RETRY) {
                return Ok(());
            }
        }
        let brid = data.buildrequest;
        if self.request(brid).await?.complete {
            return Ok(());
        }
        let url = self
            .client
            .api_url(&["buildrequests", &brid.to_string()], &[]);
        self.client
            .control(
                url,
                "cancel",
                json!({"reason": format!("cancelled by baton ({key})")}),
                &format!("cancel build request {brid}"),
            )
            .await?;
        // A request claimed just before the cancel still gets its build: stop it too.
        let begun = Instant::now();
        loop {
            let mut stopped = false;
            for build in self.request_builds(brid).await? {
                if !build.complete {
                    self.stop(build.buildid, key).await?;
                    stopped = true;
                }
            }
            if stopped || self.request(brid).await?.complete {
                return Ok(());
            }
            if begun.elapsed() > CANCEL_CONFIRM {
                return Err(AdapterError::Transient(format!(
                    "Buildbot has not confirmed the cancel of build request {brid} yet"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub(crate) async fn stop(&self, buildid: u64, key: &AttemptKey) -> Result<(), AdapterError> {
        let url = self.client.api_url(&["builds", &buildid.to_string()], &[]);
        self.client
            .control(
                url,
                "stop",
                json!({"reason": format!("cancelled by baton ({key})")}),
                &format!("stop build {buildid}"),
            )
            .await
            .map(drop)
    }
}
