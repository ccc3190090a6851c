//! Following an attempt: its build request to its build (the latest, after a RETRY), and
//! the build to its results. The reads of the request and its builds serve `outputs`,
//! `cancel` and `logs` too.

use baton_core::{AdapterError, ExternalState, PollOutcome, PollRequest};

use crate::BuildbotAdapter;
use crate::model::{
    Build, BuildRequest, CANCELLED, RETRY, RefData, SKIPPED, all, first, map_results, results_name,
};

impl BuildbotAdapter {
    /// Reads the state of the attempt in `request`.
    pub(crate) async fn poll_attempt(
        &self,
        request: &PollRequest<'_>,
    ) -> Result<PollOutcome, AdapterError> {
        let mut data = RefData::read(&request.external.id, &request.external.data)?;
        let polls = data.polls;
        data.polls = polls.saturating_add(1);
        let (state, raw, message) = self.observe(&mut data).await?;
        let terminal = state.is_terminal();
        let mut outcome = PollOutcome::state(state);
        outcome.raw = Some(raw);
        outcome.message = message;
        if !terminal {
            outcome.next_poll = Some(self.poll_wait(polls));
        }
        outcome.external = Some(self.reference(&data));
        Ok(outcome)
    }

    pub(crate) async fn request(&self, brid: u64) -> Result<BuildRequest, AdapterError> {
        let url = self
            .client
            .api_url(&["buildrequests", &brid.to_string()], &[]);
        first::<BuildRequest>(
            &self
                .client
                .get(url, &format!("read build request {brid}"))
                .await?,
            "buildrequests",
        )?
        .ok_or_else(|| AdapterError::NotFound(format!("Buildbot has no build request {brid}")))
    }

    /// The builds of a request, oldest first (a RETRY makes more than one).
    pub(crate) async fn request_builds(&self, brid: u64) -> Result<Vec<Build>, AdapterError> {
        let url = self.client.api_url(
            &["builds"],
            &[
                ("buildrequestid", brid.to_string().as_str()),
                ("order", "buildid"),
            ],
        );
        all::<Build>(
            &self
                .client
                .get(url, &format!("read the builds of request {brid}"))
                .await?,
            "builds",
        )
    }

    pub(crate) async fn build(&self, buildid: u64) -> Result<Build, AdapterError> {
        let url = self.client.api_url(&["builds", &buildid.to_string()], &[]);
        first::<Build>(
            &self
                .client
                .get(url, &format!("read build {buildid}"))
                .await?,
            "builds",
        )?
        .ok_or_else(|| AdapterError::NotFound(format!("Buildbot has no build {buildid}")))
    }

    /// The request's latest build, if one started; remembered in `data`.
    pub(crate) async fn latest_build(
        &self,
        data: &mut RefData,
    ) -> Result<Option<Build>, AdapterError> {
        let latest = self.request_builds(data.buildrequest).await?.pop();
        if let Some(build) = &latest {
            data.build = Some(build.buildid);
            data.number = Some(build.number);
        }
        Ok(latest)
    }

    /// The request's build for the outputs and logs: as the last poll saw it finish, else read.
    pub(crate) async fn known_build(
        &self,
        data: &mut RefData,
    ) -> Result<Option<Build>, AdapterError> {
        match (data.finished_build(), data.build) {
            (Some(build), _) => Ok(Some(build)),
            (None, Some(id)) => Ok(Some(self.build(id).await?)),
            (None, None) => self.latest_build(data).await,
        }
    }

    /// Where the work is: the state, Buildbot's word for it, and a message.
    pub(crate) async fn observe(
        &self,
        data: &mut RefData,
    ) -> Result<(ExternalState, String, Option<String>), AdapterError> {
        if let Some(buildid) = data.build {
            let build = self.build(buildid).await?;
            if !build.complete {
                return Ok(self.running(data, &build));
            }
            if build.results != Some(RETRY) {
                return Ok(self.finished(data, &build));
            }
        }
        // The builds first: once one runs or has ended, that is the answer, in one request.
        let latest = self.latest_build(data).await?;
        match &latest {
            Some(build) if !build.complete => return Ok(self.running(data, build)),
            Some(build) if build.results != Some(RETRY) => return Ok(self.finished(data, build)),
            _ => {}
        }
        let request = self.request(data.buildrequest).await?;
        // A build may have started and ended between the two reads: a complete request's
        // builds are read again, so it is never taken for one that ended without a build.
        let latest = if request.complete {
            self.latest_build(data).await?
        } else {
            latest
        };
        match latest {
            Some(build) if !build.complete => Ok(self.running(data, &build)),
            Some(build) if build.results == Some(RETRY) && !request.complete => Ok((
                ExternalState::Queued,
                "RETRY".into(),
                Some(format!(
                    "build #{} ended RETRY; Buildbot builds the request again",
                    build.number
                )),
            )),
            Some(build) => Ok(self.finished(data, &build)),
            None if request.complete => {
                let code = request.results.unwrap_or(-1);
                let raw = results_name(code);
                let message = match code {
                    SKIPPED => format!(
                        "skipped: Buildbot merged build request {} into another, so its properties were dropped; set collapseRequests=False on builder `{}`",
                        data.buildrequest, data.builder
                    ),
                    CANCELLED => format!(
                        "build request {} was cancelled before a build started",
                        data.buildrequest
                    ),
                    _ => format!(
                        "build request {} ended {raw} without a build",
                        data.buildrequest
                    ),
                };
                Ok((
                    map_results(code, self.settings.warnings),
                    raw,
                    Some(message),
                ))
            }
            None if request.claimed => Ok((
                ExternalState::Queued,
                "claimed".into(),
                Some(format!(
                    "build request {} was claimed; its build is starting",
                    data.buildrequest
                )),
            )),
            None => Ok((
                ExternalState::Queued,
                "queued".into(),
                Some(format!(
                    "build request {} waits for a worker of builder `{}`",
                    data.buildrequest, data.builder
                )),
            )),
        }
    }

    pub(crate) fn running(
        &self,
        data: &RefData,
        build: &Build,
    ) -> (ExternalState, String, Option<String>) {
        let state = build
            .state_string
            .clone()
            .unwrap_or_else(|| "building".into());
        let message = format!(
            "build #{} of `{}`: {state} ({})",
            build.number,
            data.builder,
            self.build_url(build.builderid, build.number)
        );
        (ExternalState::Running, state, Some(message))
    }

    /// A finished build's state; remembers its results in `data` for the outputs.
    pub(crate) fn finished(
        &self,
        data: &mut RefData,
        build: &Build,
    ) -> (ExternalState, String, Option<String>) {
        data.results = build.results;
        data.state_string = build.state_string.clone();
        let code = build.results.unwrap_or(-1);
        let raw = results_name(code);
        let state = build.state_string.as_deref().unwrap_or_default();
        let message = format!(
            "build #{} of `{}` ended {raw}: {state} ({})",
            build.number,
            data.builder,
            self.build_url(build.builderid, build.number)
        );
        (
            map_results(code, self.settings.warnings),
            raw,
            Some(message),
        )
    }
}
