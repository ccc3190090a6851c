//! Creating a job build (after a check of the stage's `resource`, when it names one), and
//! finding the build an attempt already created.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_core::typed::stage_with;
use baton_core::wire::{Repeat, run_created_ms};
use baton_core::{AdapterError, AttemptKey, ExternalRef, HumanDuration, StartRequest};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::ConcourseAdapter;
use crate::client::{Answer, Call};
use crate::config::{self, Mode, StageSpec};
use crate::events;
use crate::model::{Build, PipelineRef, User, state};
use crate::tracked::{Checked, Tracked};

/// How many of the job's newest builds `find` looks through.
const FIND_CANDIDATES: usize = 50;

/// How far before a run's creation `find` looks, for clocks that disagree a little.
const CLOCK_SLACK: Duration = Duration::from_secs(60);

/// The largest create answer read.
const CREATE_ANSWER_BYTES: usize = 1_048_576;

/// What a build's comment starts with when baton created it for an attempt.
pub const COMMENT_PREFIX: &str = "baton attempt ";

/// The first and the longest wait between two reads of a running check.
const CHECK_POLL_FIRST: Duration = Duration::from_millis(200);
const CHECK_POLL_MAX: Duration = Duration::from_secs(2);

pub(crate) fn stage_spec(input: &Value) -> Result<StageSpec, AdapterError> {
    stage_with(config::parse_stage(input, Mode::Rendered))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// What a `404` on a pipeline's route was about.
enum Missing<'a> {
    Job,
    Resource(&'a str),
}

impl ConcourseAdapter {
    /// Checks the stage's resource (when it names one), then creates the job's build and
    /// returns the attempt's reference.
    pub(crate) async fn create(&self, request: &StartRequest) -> Result<ExternalRef, AdapterError> {
        let spec = stage_spec(&request.input)?;
        let check = match &spec.resource {
            Some(resource) => Some(self.check_resource(&spec, resource).await?),
            None => None,
        };
        let client = &self.inner.client;
        let what = format!(
            "create a build of job `{}` in pipeline `{}`",
            spec.job, spec.pipeline
        );
        let route = ["jobs", spec.job.as_str(), "builds"];
        let answer = self.post(&spec, &route, None, &what, Repeat::Once).await?;
        match answer.status {
            StatusCode::CONFLICT => {
                return Err(AdapterError::Invalid(format!(
                    "Concourse refused to start job `{}` of pipeline `{}` (409 Conflict): the job has `disable_manual_trigger: true`, so no build of it can be started by hand or through the API; remove that setting from the job, or let baton push a version into one of its trigger resources instead (`resource` in the stage)",
                    spec.job, spec.pipeline
                )));
            }
            StatusCode::NOT_FOUND => return Err(self.explain_missing(&spec, Missing::Job).await),
            _ => client.check(&answer, &what)?,
        }
        let build: Build = client.parse(&answer, &what)?;
        let tracked = Tracked {
            pipeline: spec.pipeline.clone(),
            job: spec.job.clone(),
            instance_vars: spec.instance_vars.clone(),
            name: build.name.clone(),
            since_ms: now_ms(),
            check,
            ..Tracked::default()
        };
        let external = tracked.reference(build.id, self.build_url(&tracked).as_str());
        tracing::info!(attempt = %request.key, build = build.id, name = %build.name, "created a Concourse build");
        self.adopt(&request.key, build.id, &external).await;
        Ok(external)
    }

    /// POSTs to `route` below the stage's pipeline (its instance vars in the query).
    async fn post(
        &self,
        spec: &StageSpec,
        route: &[&str],
        body: Option<&Value>,
        what: &str,
        repeat: Repeat,
    ) -> Result<Answer, AdapterError> {
        let client = &self.inner.client;
        let url = client.pipeline_api(&spec.pipeline, &spec.instance_vars, route);
        let call = Call {
            what,
            repeat,
            cap: CREATE_ANSWER_BYTES,
        };
        client.send(Method::POST, url, body, call).await
    }

    /// Remembers `key`'s build, marks it with the attempt (a build comment, so that `find`
    /// tells it from every other) and starts following its events.
    async fn adopt(&self, key: &AttemptKey, id: u64, external: &ExternalRef) {
        let inner = &self.inner;
        inner.remembered.remember(key, external);
        if inner.events {
            inner.streams.ensure(&inner.client, id, key);
        }
        self.comment(id, key).await;
    }

    /// Sets build `id`'s comment to `baton attempt <key>`. Concourse before 7.x has no
    /// build comments: then, and on any failure, the build is left as it is.
    async fn comment(&self, id: u64, key: &AttemptKey) {
        let inner = &self.inner;
        if !inner.comments.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let client = &inner.client;
        let what = "comment a build with its attempt";
        let body = json!({"comment": format!("{COMMENT_PREFIX}{key}")});
        let sent = client
            .send(
                Method::PUT,
                client.api(&["builds", &id.to_string(), "comment"]),
                Some(&body),
                Call::read(what),
            )
            .await;
        match sent {
            Ok(answer) if answer.status.is_success() => {}
            Ok(answer) if answer.status == StatusCode::NOT_FOUND => {
                tracing::info!(instance = %client.instance, "this Concourse has no build comments; `find` tells baton's builds apart by creator and time only");
                inner
                    .comments
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(answer) => {
                tracing::warn!(build = id, status = %answer.status, "could not comment a Concourse build with its attempt");
            }
            Err(e) => {
                tracing::warn!(build = id, error = %e, "could not comment a Concourse build with its attempt");
            }
        }
    }

    /// Pushes the stage's version into `resource` (a check from it, or a plain check), and
    /// waits within `check_timeout` for the check to succeed, so that the build created
    /// next sees what it found.
    async fn check_resource(
        &self,
        spec: &StageSpec,
        resource: &str,
    ) -> Result<Checked, AdapterError> {
        let inner = &self.inner;
        let client = &inner.client;
        let what = format!(
            "check resource `{resource}` of pipeline `{}`",
            spec.pipeline
        );
        let from = spec.version.clone().map_or(Value::Null, Value::Object);
        // A second check does no harm.
        let route = ["resources", resource, "check"];
        let body = json!({ "from": from });
        let answer = self
            .post(spec, &route, Some(&body), &what, Repeat::Safe)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Err(self
                .explain_missing(spec, Missing::Resource(resource))
                .await);
        }
        client.check(&answer, &what)?;
        let check: Build = client.parse(&answer, &what)?;
        let page = client.web(&["builds", &check.id.to_string()]);
        let began = Instant::now();
        let mut wait = CHECK_POLL_FIRST;
        let mut status = check.status;
        loop {
            match state(&status) {
                s if s.is_terminal() && status == "succeeded" => break,
                s if s.is_terminal() => {
                    let said = match events::read_once(client, check.id).await {
                        Ok(log) if !log.errors.is_empty() => format!(": {}", log.errors.join("; ")),
                        Ok(log) if !log.tail.text().trim().is_empty() => {
                            format!(":\n{}", log.tail.last_lines(10))
                        }
                        _ => String::new(),
                    };
                    return Err(AdapterError::Invalid(format!(
                        "the check of resource `{resource}` (pipeline `{}`) ended `{status}` ({page}){said}; baton did not create the build",
                        spec.pipeline
                    )));
                }
                _ => {}
            }
            if began.elapsed() + wait > inner.check_timeout {
                return Err(AdapterError::Transient(format!(
                    "the check of resource `{resource}` (pipeline `{}`, {page}) did not finish within {} (check_timeout); baton creates no build before it has",
                    spec.pipeline,
                    HumanDuration(inner.check_timeout)
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 3 / 2).min(CHECK_POLL_MAX);
            status = self.build(check.id).await?.status;
        }
        tracing::info!(
            resource,
            check = check.id,
            "checked a Concourse resource before the build"
        );
        Ok(Checked {
            resource: resource.to_owned(),
            version: spec.version.clone(),
        })
    }

    /// Says which of team, pipeline (or its instance), job or resource does not exist,
    /// asking Concourse: the pipeline, then the team's pipelines.
    async fn explain_missing(&self, spec: &StageSpec, missing: Missing<'_>) -> AdapterError {
        let client = &self.inner.client;
        let team = &client.team;
        let pipeline = &spec.pipeline;
        let thing = match missing {
            Missing::Job => format!("job `{}`", spec.job),
            Missing::Resource(r) => format!("resource `{r}`"),
        };
        let probe = "look for what a 404 is about";
        let found = client
            .send(
                Method::GET,
                client.pipeline_api(pipeline, &spec.instance_vars, &[]),
                None,
                Call::read(probe),
            )
            .await
            .is_ok_and(|a| a.status.is_success());
        let message = if found {
            format!(
                "pipeline `{pipeline}` has no {thing}: check the stage's `with` against the pipeline's config"
            )
        } else {
            match client
                .get_json::<Vec<PipelineRef>>(client.api(&["teams", team, "pipelines"]), probe)
                .await
            {
                Err(AdapterError::NotFound(_)) => format!(
                    "Concourse has no team `{team}` that {} can see: check `team` in the adapter's config",
                    client.auth.who()
                ),
                Ok(pipelines) => {
                    let instances: Vec<String> = pipelines
                        .iter()
                        .filter(|p| &p.name == pipeline)
                        .take(5)
                        .map(|p| Value::Object(p.instance_vars.clone()).to_string())
                        .collect();
                    if instances.is_empty() {
                        format!("team `{team}` has no pipeline `{pipeline}`: check `with.pipeline`")
                    } else {
                        format!(
                            "pipeline `{pipeline}` has no instance with the vars {}; its instances: {}",
                            Value::Object(spec.instance_vars.clone()),
                            instances.join(", ")
                        )
                    }
                }
                Err(_) => format!(
                    "check team `{team}`, pipeline `{pipeline}` (and its instance vars) and the stage's `with`"
                ),
            }
        };
        AdapterError::NotFound(format!(
            "Concourse `{}` answered 404 for {thing}: {message}",
            client.instance
        ))
    }

    /// Who created baton's builds: the configured user, else the token's (asked once).
    async fn identity(&self) -> Result<Option<String>, AdapterError> {
        let inner = &self.inner;
        if let Some(user) = inner.client.auth.username() {
            return Ok(Some(user.to_owned()));
        }
        if let Some(user) = inner.identity.lock().await.clone() {
            return Ok(Some(user));
        }
        let user: User = inner
            .client
            .get_json(inner.client.api(&["user"]), "read who `token` belongs to")
            .await?;
        let name = (!user.user_name.is_empty()).then_some(user.user_name);
        *inner.identity.lock().await = name.clone();
        Ok(name)
    }

    /// See [`ConcourseAdapter::find`](crate::ConcourseAdapter).
    pub(crate) async fn find_build(
        &self,
        key: &AttemptKey,
        input: &Value,
    ) -> Result<Option<ExternalRef>, AdapterError> {
        if let Some(known) = self.inner.remembered.get(key) {
            return Ok(Some(known));
        }
        let spec = stage_spec(input)?;
        let client = &self.inner.client;
        let what = format!("list the builds of job `{}`", spec.job);
        let mut url = client.pipeline_api(
            &spec.pipeline,
            &spec.instance_vars,
            &["jobs", &spec.job, "builds"],
        );
        url.query_pairs_mut()
            .append_pair("limit", &FIND_CANDIDATES.to_string());
        let answer = client
            .send(Method::GET, url, None, Call::read(&what))
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            // No such job has no build; the start that follows says what is missing.
            return Ok(None);
        }
        client.check(&answer, &what)?;
        let builds: Vec<Build> = client.parse(&answer, &what)?;
        let Some(build) = self.pick(key, &builds).await? else {
            return Ok(None);
        };
        // The attempt's start creates its build only after the check of its resource
        // succeeded: the check was made.
        let check = spec.resource.map(|resource| Checked {
            resource,
            version: spec.version,
        });
        let tracked = Tracked {
            pipeline: spec.pipeline,
            job: spec.job,
            instance_vars: spec.instance_vars,
            name: build.name.clone(),
            since_ms: now_ms(),
            check,
            ..Tracked::default()
        };
        let external = tracked.reference(build.id, self.build_url(&tracked).as_str());
        tracing::info!(attempt = %key, build = build.id, "found the attempt's Concourse build");
        self.adopt(key, build.id, &external).await;
        Ok(Some(external))
    }

    /// The attempt's build among `builds` (newest first): the one whose comment names
    /// `key`; else the newest that no attempt's comment claims, created by baton's user
    /// (when Concourse says who created it) and not started before the run began.
    async fn pick<'b>(
        &self,
        key: &AttemptKey,
        builds: &'b [Build],
    ) -> Result<Option<&'b Build>, AdapterError> {
        let mark = format!("{COMMENT_PREFIX}{key}");
        if let Some(marked) = builds.iter().find(|b| b.comment.as_deref() == Some(&mark)) {
            return Ok(Some(marked));
        }
        let me = self.identity().await?;
        let since_s =
            run_created_ms(key).map(|ms| ms.saturating_sub(CLOCK_SLACK.as_millis() as u64) / 1000);
        Ok(builds.iter().find(|b| {
            let unclaimed = !b
                .comment
                .as_deref()
                .is_some_and(|c| c.starts_with(COMMENT_PREFIX));
            let ours = match (&me, &b.created_by) {
                (Some(me), Some(by)) => me == by,
                _ => true,
            };
            let recent =
                since_s.is_none_or(|since| b.start_time.is_none_or(|started| started >= since));
            unclaimed && ours && recent
        }))
    }
}
