//! Starting an attempt and finding it again: the job is read (its class, URL and parameter
//! definitions), then triggered; `find` looks for the attempt's work in the queue and the
//! job's recent builds, exactly through `BATON_ATTEMPT` or by parameters and time without
//! it. The search is shared with `poll` (a trigger that gave no queue item) and `cancel`.

use std::collections::HashSet;

use baton_core::{AdapterError, AttemptKey, ExternalRef, StartRequest};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use baton_core::typed::stage_with;
use baton_core::wire::run_created_ms;

use crate::client::{Call, Repeat};
use crate::config::{self, ATTEMPT_PARAMETER, Mode, StageSpec};
use crate::model::{self, Build, Job, QueueItem};
use crate::tracked::{Phase, Tracked, same_path};
use crate::{CLOCK_SLACK, JenkinsAdapter, lock, now_ms};

/// What a search for an attempt's work found.
pub(crate) enum Found {
    Queued(u64),
    Build { number: Option<u64>, url: String },
}

impl JenkinsAdapter {
    /// Triggers the job of the stage in `request` and returns the attempt's reference.
    pub(crate) async fn trigger(
        &self,
        request: &StartRequest,
    ) -> Result<ExternalRef, AdapterError> {
        let key = &request.key;
        let spec = stage_with(config::parse_stage(&request.input, Mode::Rendered))?;
        let job = self.job(&spec).await?;
        let defined = job.parameter_names();
        let undefined: Vec<&str> = spec
            .parameters
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !defined.iter().any(|d| d == n))
            .collect();
        if !undefined.is_empty() {
            let defines = defined
                .iter()
                .filter(|d| *d != ATTEMPT_PARAMETER)
                .cloned()
                .collect::<Vec<_>>();
            return Err(AdapterError::Invalid(format!(
                "job `{}` does not define the parameter(s) {} (it defines {}); Jenkins would drop them silently: fix `parameters`, or add them to the job",
                spec.job.display(),
                undefined.join(", "),
                if defines.is_empty() {
                    "none".to_owned()
                } else {
                    defines.join(", ")
                }
            )));
        }
        let mut tracked = self.tracked_for(&spec, &job, now_ms());
        let client = &self.inner.client;
        let (endpoint, form) = if defined.is_empty() {
            ("build?delay=0sec", None)
        } else {
            let mut form = spec.parameters.clone();
            if tracked.attempt_param {
                form.push((ATTEMPT_PARAMETER.to_owned(), key.to_string()));
            }
            ("buildWithParameters", Some(form))
        };
        // Written before the POST: if its answer is lost, `find` in this process still
        // knows when the trigger went out.
        self.remember(key, &tracked);
        let what = format!("trigger job `{}`", tracked.name);
        let call = Call {
            what: &what,
            permission: "Job/Build",
            not_found: "",
        };
        let answer = client
            .post(
                client.url(&format!("{}{endpoint}", tracked.job))?,
                form.as_deref(),
                call,
                Repeat::Once,
            )
            .await?;
        let status = answer.status;
        if status == StatusCode::BAD_REQUEST {
            return Err(AdapterError::Invalid(format!(
                "Jenkins refused to {what} (400{}): check that the job's parameters match `parameters`",
                answer
                    .header("X-Error")
                    .map(|e| format!(", {e}"))
                    .unwrap_or_default()
            )));
        }
        if !(status.is_success() || status.is_redirection()) {
            client.check(&answer, call)?;
        }
        match answer
            .header("Location")
            .and_then(model::queue_id_of_location)
        {
            Some(q) => {
                tracked.phase = Phase::Queued;
                tracked.queue = Some(q);
            }
            None => {
                // A controller older than the queue `Location` (JENKINS-23235): the build
                // is found by correlation instead.
                tracing::warn!(job = %tracked.name, %status, "the trigger answered without a queue item; searching for the build");
                tracked.missing_since_ms = Some(now_ms());
            }
        }
        self.remember(key, &tracked);
        self.watch(key, &tracked);
        Ok(self.reference(&tracked, None))
    }

    /// Finds the work of `key`, in the steps the adapter's `find` documents.
    pub(crate) async fn find_work(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        let remembered = lock(&self.inner.journal).get(key).cloned();
        if let Some(tracked) = &remembered
            && tracked.phase == Phase::Queued
        {
            return Ok(Some(self.reference(tracked, None)));
        }
        let spec = stage_with(config::parse_stage(input, Mode::Rendered))?;
        let job = self.job(&spec).await?;
        let since = remembered
            .as_ref()
            .map(|t| t.triggered_ms)
            .or_else(|| run_created_ms(key));
        let mut tracked = self.tracked_for(&spec, &job, since.unwrap_or_else(now_ms));
        let Some(found) = self.search(key, &tracked, since).await? else {
            return Ok(None);
        };
        let url = self.adopt(&mut tracked, found);
        self.remember(key, &tracked);
        self.watch(key, &tracked);
        Ok(Some(self.reference(&tracked, url)))
    }

    pub(crate) async fn job(&self, spec: &StageSpec) -> Result<Job, AdapterError> {
        let client = &self.inner.client;
        let name = spec.job.display();
        let path = spec.job.url_path();
        let url = client.url(&format!("{path}api/json?tree={}", model::JOB_TREE))?;
        let not_found = format!(
            "Jenkins `{}` has no job `{name}` (404 at {}): check `job` (folders are written `a/b/c`; a multibranch branch `feature/foo` is `repo/feature%2Ffoo` or the list `[repo, feature/foo]`){}",
            client.instance(),
            client.url(&path)?,
            client
                .user()
                .map(|u| format!(", and that user `{u}` may see it"))
                .unwrap_or_default()
        );
        let what = format!("read job `{name}`");
        let job: Job = client
            .get_json(
                url,
                Call {
                    what: &what,
                    permission: "Job/Read",
                    not_found: &not_found,
                },
            )
            .await?;
        if job.is_folder() {
            return Err(AdapterError::Invalid(format!(
                "`{name}` is a folder or a multibranch project, not a job: name a job inside it (`{name}/<job>`; for a branch, `{name}/<branch>`)"
            )));
        }
        if job.buildable == Some(false) {
            return Err(AdapterError::Invalid(format!(
                "job `{name}` is disabled in Jenkins: enable it there"
            )));
        }
        Ok(job)
    }

    pub(crate) fn tracked_for(&self, spec: &StageSpec, job: &Job, triggered_ms: u64) -> Tracked {
        Tracked {
            phase: Phase::Searching,
            job: job
                .url
                .as_deref()
                .and_then(model::below_root)
                .unwrap_or_else(|| spec.job.url_path()),
            name: spec.job.display(),
            queue: None,
            build: None,
            number: None,
            triggered_ms,
            attempt_param: job.parameter_names().iter().any(|n| n == ATTEMPT_PARAMETER),
            params: spec.parameters.clone(),
            unstable: spec
                .unstable
                .unwrap_or(self.inner.unstable)
                .as_str()
                .to_owned(),
            properties_artifact: spec.properties_artifact.clone(),
            polls: 0,
            missing_since_ms: None,
        }
    }

    /// Looks for the work of `key` in the queue, then in the recent builds (in that order,
    /// since an item only ever moves from the first to the second).
    ///
    /// With `BATON_ATTEMPT` the match is exact. Without it, candidates are those with the
    /// same parameters queued or started at or after `since_ms` (less [`CLOCK_SLACK`]),
    /// not claimed by another attempt of this process; one is adopted, several are an
    /// error, since picking one could adopt another run's build.
    pub(crate) async fn search(
        &self,
        key: &AttemptKey,
        tracked: &Tracked,
        since_ms: Option<u64>,
    ) -> Result<Option<Found>, AdapterError> {
        let client = &self.inner.client;
        let claimed: HashSet<u64> = lock(&self.inner.journal)
            .iter()
            .filter(|(k, _)| *k != key)
            .filter_map(|(_, t)| t.queue)
            .collect();
        let since = since_ms.map(|s| s.saturating_sub(CLOCK_SLACK.as_millis() as u64));
        if !tracked.attempt_param && since.is_none() {
            return Ok(None);
        }
        let fallback_ok = |id: Option<u64>, at: Option<u64>, actions: &[model::Action]| {
            model::has_parameters(actions, &tracked.params)
                && at.zip(since).is_some_and(|(at, since)| at >= since)
                && !id.is_some_and(|id| claimed.contains(&id))
        };
        let matches = |id: Option<u64>, at: Option<u64>, actions: &[model::Action]| {
            if tracked.attempt_param {
                model::attempt_of(actions).as_deref() == Some(key.as_str())
            } else {
                fallback_ok(id, at, actions)
            }
        };

        #[derive(Deserialize)]
        struct Queue {
            #[serde(default)]
            items: Vec<QueueItem>,
        }
        let what = format!("read the queue to find the build of {key}");
        let queue: Queue = client
            .get_json(
                client.url(&format!("queue/api/json?tree={}", model::QUEUE_TREE))?,
                Call {
                    what: &what,
                    permission: "Overall/Read",
                    not_found: "",
                },
            )
            .await?;
        let mut found: Vec<Found> = Vec::new();
        for item in &queue.items {
            let of_job = item
                .task
                .as_ref()
                .and_then(|t| t.url.as_deref())
                .and_then(model::below_root)
                .is_some_and(|p| same_path(&p, &tracked.job));
            if of_job
                && item.cancelled != Some(true)
                && let Some(id) = item.id
                && matches(Some(id), item.in_queue_since, &item.actions)
            {
                if tracked.attempt_param {
                    return Ok(Some(Found::Queued(id)));
                }
                found.push(Found::Queued(id));
            }
        }
        for build in self.recent_builds(tracked).await? {
            let (Some(url), true) = (
                build.url.clone(),
                matches(build.queue_id, build.timestamp, &build.actions),
            ) else {
                continue;
            };
            if tracked.attempt_param {
                return Ok(Some(Found::Build {
                    number: build.number,
                    url,
                }));
            }
            // The same work seen in the queue and then as a build counts once.
            found.retain(|f| !matches!(f, Found::Queued(q) if Some(*q) == build.queue_id));
            found.push(Found::Build {
                number: build.number,
                url,
            });
        }
        match found.len() {
            0 | 1 => Ok(found.pop()),
            n => Err(AdapterError::Invalid(format!(
                "{n} queue items or builds of `{}` have this stage's parameters and came after its run began, so baton cannot tell which one {key} started: add a string parameter `{ATTEMPT_PARAMETER}` to the job (baton fills it with the attempt key) so that its builds can be told apart",
                tracked.name
            ))),
        }
    }

    pub(crate) async fn recent_builds(
        &self,
        tracked: &Tracked,
    ) -> Result<Vec<Build>, AdapterError> {
        let client = &self.inner.client;
        let what = format!("list the recent builds of `{}`", tracked.name);
        let not_found = format!(
            "job `{}` no longer exists in Jenkins `{}` (404)",
            tracked.name,
            client.instance()
        );
        let job: Job = client
            .get_json(
                client.url(&format!(
                    "{}api/json?tree={}",
                    tracked.job,
                    model::builds_tree()
                ))?,
                Call {
                    what: &what,
                    permission: "Job/Read",
                    not_found: &not_found,
                },
            )
            .await?;
        Ok(job.builds)
    }

    /// Applies a search result to `tracked`; returns the Jenkins URL of a found build.
    pub(crate) fn adopt(&self, tracked: &mut Tracked, found: Found) -> Option<String> {
        match found {
            Found::Queued(q) => {
                tracked.phase = Phase::Queued;
                tracked.queue = Some(q);
                tracked.polls = 0;
                None
            }
            Found::Build { number, url } => {
                let path = model::below_root(&url)
                    .unwrap_or_else(|| format!("{}{}/", tracked.job, number.unwrap_or_default()));
                tracked.started(number, path);
                Some(url)
            }
        }
    }
}
