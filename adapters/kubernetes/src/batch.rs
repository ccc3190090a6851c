//! `job`: creating the Job and its input ConfigMap (adopting them after a restart), waiting
//! on it through the shared watch of baton's Jobs, reading its pod's log and termination
//! message before answering its end, and deleting it (foreground) on cancel.

use std::time::Duration;

use baton_core::{AdapterError, AttemptKey, ExternalState, Logs, PollOutcome};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use serde_json::Value;

use crate::POLL_HINT;
use crate::cluster::{Cluster, context};
use crate::config;
use crate::errors::{Call, is_already_exists, is_not_found};
use crate::job::{self, ATTEMPT_ANNOTATION, CONTAINER, Ending};
use crate::reference::{Ended, JobRef, Reference};
use crate::watch::{Seen, Watched};

/// How many log lines a failure message and the reference keep.
const TAIL_LINES: usize = 40;
/// The most log `outputs` reads (a component's `[COUT]` lines are in it).
const LOG_BYTES: i64 = 4 * 1024 * 1024;

fn jobs_call<'a>(verb: &'static str, namespace: &'a str, name: Option<&'a str>) -> Call<'a> {
    Call {
        verb,
        group: "batch",
        resource: "jobs",
        namespace,
        name,
    }
}

fn holds_key(job: &Job, key: &AttemptKey) -> bool {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ATTEMPT_ANNOTATION))
        .is_some_and(|k| k == key.as_str())
}

/// The Job `namespace/name`, `None` when there is none.
async fn get_job(
    cluster: &Cluster,
    key: &AttemptKey,
    namespace: &str,
    name: &str,
) -> Result<Option<Job>, AdapterError> {
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), namespace);
    cluster
        .call(
            key,
            jobs_call("get", namespace, Some(name)),
            jobs.get_opt(name),
        )
        .await
}

/// Creates the attempt's Job (a 409 AlreadyExists adopts the one there, if it is this
/// attempt's) and its input ConfigMap.
pub(crate) async fn start(
    cluster: &Cluster,
    key: &AttemptKey,
    spec: &config::Job,
    timeout: Duration,
) -> Result<Reference, AdapterError> {
    let namespace = spec
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.namespace.clone());
    let wanted = job::job_object(key, spec, timeout);
    let name = wanted.metadata.name.clone().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &namespace);
    let created = match cluster
        .send(jobs.create(&PostParams::default(), &wanted))
        .await
    {
        Ok(created) => created,
        Err(e) if is_already_exists(&e) => {
            let found = get_job(cluster, key, &namespace, &name).await?;
            // Deleted between the create and the read: the next try creates it again.
            let found = found.ok_or_else(|| {
                AdapterError::Transient(format!(
                    "{}: the Job {namespace}/{name} existed, then did not",
                    context(key)
                ))
            })?;
            adoptable(key, &namespace, found)?
        }
        Err(e) => {
            return Err(crate::errors::classify(
                &context(key),
                &jobs_call("create", &namespace, None),
                e,
            ));
        }
    };
    ensure_input(cluster, key, &namespace, &created, &spec.component.input).await?;
    Ok(Reference::Job(JobRef {
        namespace,
        name,
        ended: None,
    }))
}

fn adoptable(key: &AttemptKey, namespace: &str, found: Job) -> Result<Job, AdapterError> {
    if holds_key(&found, key) {
        Ok(found)
    } else {
        Err(AdapterError::Protocol(format!(
            "{}: a Job {namespace}/{} exists without this attempt's {ATTEMPT_ANNOTATION} annotation: baton will not adopt it",
            context(key),
            found.metadata.name.unwrap_or_default()
        )))
    }
}

/// Creates the input ConfigMap owned by `job` (already there: fine).
async fn ensure_input(
    cluster: &Cluster,
    key: &AttemptKey,
    namespace: &str,
    job: &Job,
    input: &Value,
) -> Result<(), AdapterError> {
    let map: ConfigMap =
        serde_json::from_value(job::input_config_map(key, job, input)).map_err(|e| {
            AdapterError::Protocol(format!("{}: the input ConfigMap: {e}", context(key)))
        })?;
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), namespace);
    match cluster
        .send(maps.create(&PostParams::default(), &map))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_already_exists(&e) => Ok(()),
        Err(e) => Err(crate::errors::classify(
            &context(key),
            &Call {
                verb: "create",
                group: "",
                resource: "configmaps",
                namespace,
                name: None,
            },
            e,
        )),
    }
}

/// `find`: the Job of the deterministic name, when it is this attempt's (its input
/// ConfigMap made if a crash came between the two creates).
pub(crate) async fn find(
    cluster: &Cluster,
    key: &AttemptKey,
    spec: &config::Job,
) -> Result<Option<Reference>, AdapterError> {
    let namespace = spec
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.namespace.clone());
    let name = job::job_name(key);
    let Some(found) = get_job(cluster, key, &namespace, &name).await? else {
        return Ok(None);
    };
    let found = adoptable(key, &namespace, found)?;
    ensure_input(cluster, key, &namespace, &found, &spec.component.input).await?;
    Ok(Some(Reference::Job(JobRef {
        namespace,
        name,
        ended: None,
    })))
}

/// The Job as the shared watch last saw it, else as the server has it.
async fn latest(
    cluster: &Cluster,
    key: &AttemptKey,
    job: &JobRef,
) -> Result<Option<Job>, AdapterError> {
    let seen = cluster
        .watches
        .look(Watched::Jobs, &job.namespace, &job.name, key);
    if let Seen::Synced(Some(object)) = seen
        && let Ok(parsed) = (*object).clone().try_parse::<Job>()
    {
        return Ok(Some(parsed));
    }
    // Not listed yet, or not in the store yet (just created): the server decides.
    get_job(cluster, key, &job.namespace, &job.name).await
}

/// Polls the Job. On its end the pod's log and termination message are read first, and the
/// outcome carries them in a replacement reference, so that nothing later depends on a Job
/// its TTL may delete.
pub(crate) async fn poll(
    cluster: &Cluster,
    key: &AttemptKey,
    job: &JobRef,
) -> Result<PollOutcome, AdapterError> {
    if let Some(ended) = &job.ended {
        return Ok(ended_outcome(ended, None));
    }
    let Some(found) = latest(cluster, key, job).await? else {
        cluster
            .watches
            .release(Watched::Jobs, &job.namespace, &job.name, key);
        return Ok(outcome(
            ExternalState::Failed,
            "gone",
            "the Job was deleted before baton saw it end (deleted outside baton?)".into(),
        ));
    };
    if found.metadata.deletion_timestamp.is_some() {
        return Ok(outcome(
            ExternalState::Cancelled,
            "deleting",
            "the Job is being deleted".into(),
        ));
    }
    let (succeeded, reason, message) = match job::ending(&found) {
        Ending::Running(line) => {
            return Ok(outcome(ExternalState::Running, "running", line).next_poll(POLL_HINT));
        }
        Ending::Succeeded => (true, String::new(), String::new()),
        Ending::Failed { reason, message } => (false, reason, message),
    };
    let (end, log) = last_pod_and_log(cluster, key, job).await?;
    let log_tail = job::tail(&log, TAIL_LINES);
    let (succeeded, message, outputs) = match job::outputs(&log, end.as_ref()) {
        Ok(outputs) if succeeded => (true, "the job completed".to_owned(), outputs),
        Ok(outputs) => (
            false,
            job::failure(&reason, &message, end.as_ref(), &log_tail),
            outputs,
        ),
        Err(why) => (
            false,
            format!("the job's outputs cannot be read: {why}"),
            serde_json::Map::new(),
        ),
    };
    let ended = Ended {
        succeeded,
        message,
        outputs,
        log_tail,
    };
    let replaced = Reference::Job(JobRef {
        ended: Some(ended.clone()),
        ..job.clone()
    });
    cluster
        .watches
        .release(Watched::Jobs, &job.namespace, &job.name, key);
    Ok(ended_outcome(&ended, Some(replaced)))
}

fn ended_outcome(ended: &Ended, replaced: Option<Reference>) -> PollOutcome {
    let state = if ended.succeeded {
        ExternalState::Succeeded { warnings: false }
    } else {
        ExternalState::Failed
    };
    let raw = if ended.succeeded {
        "Complete"
    } else {
        "Failed"
    };
    let mut outcome = outcome(state, raw, ended.message.clone());
    outcome.external = replaced.map(|r| r.external());
    outcome
}

fn outcome(state: ExternalState, raw: &str, message: String) -> PollOutcome {
    let mut outcome = PollOutcome::state(state).with_message(message);
    outcome.raw = Some(raw.to_owned());
    outcome
}

/// The Job's newest pod, how it ended, and its log (empty when there is no pod).
async fn last_pod_and_log(
    cluster: &Cluster,
    key: &AttemptKey,
    job: &JobRef,
) -> Result<(Option<job::PodEnd>, String), AdapterError> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &job.namespace);
    let listed = cluster
        .call(
            key,
            Call {
                verb: "list",
                group: "",
                resource: "pods",
                namespace: &job.namespace,
                name: None,
            },
            pods.list(&ListParams::default().labels(&job::pod_selector(&job.name))),
        )
        .await?;
    let Some(end) = job::last_pod(&listed.items) else {
        return Ok((None, String::new()));
    };
    let params = LogParams {
        container: Some(CONTAINER.to_owned()),
        limit_bytes: Some(LOG_BYTES),
        ..LogParams::default()
    };
    let log = match cluster.send(pods.logs(&end.pod, &params)).await {
        Ok(log) => log,
        // A pod that never started has no log.
        Err(e) if is_not_found(&e) => String::new(),
        Err(kube::Error::Api(status)) if status.code == 400 => String::new(),
        Err(e) => {
            return Err(crate::errors::classify(
                &context(key),
                &Call {
                    verb: "get",
                    group: "",
                    resource: "pods/log",
                    namespace: &job.namespace,
                    name: Some(&end.pod),
                },
                e,
            ));
        }
    };
    Ok((Some(end), log))
}

/// The outputs recorded when the Job ended.
pub(crate) fn outputs(
    key: &AttemptKey,
    job: &JobRef,
) -> Result<serde_json::Map<String, Value>, AdapterError> {
    job.ended
        .as_ref()
        .map(|e| e.outputs.clone())
        .ok_or_else(|| {
            AdapterError::NotFound(format!("{}: the Job has not ended yet", context(key)))
        })
}

/// Cancel and timeout: a Job still running is deleted with `propagationPolicy=Foreground`,
/// so its pods and input ConfigMap go before it; an ended or missing one is left alone.
pub(crate) async fn cancel(
    cluster: &Cluster,
    key: &AttemptKey,
    job: &JobRef,
) -> Result<(), AdapterError> {
    cluster
        .watches
        .release(Watched::Jobs, &job.namespace, &job.name, key);
    if job.ended.is_some() {
        return Ok(());
    }
    let Some(found) = get_job(cluster, key, &job.namespace, &job.name).await? else {
        return Ok(());
    };
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &job.namespace);
    if !holds_key(&found, key) || !matches!(job::ending(&found), Ending::Running(_)) {
        return Ok(());
    }
    match cluster
        .send(jobs.delete(&job.name, &DeleteParams::foreground()))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(crate::errors::classify(
            &context(key),
            &jobs_call("delete", &job.namespace, Some(&job.name)),
            e,
        )),
    }
}

/// The log: the tail recorded at the end, else the newest pod's log now.
pub(crate) async fn logs(
    cluster: &Cluster,
    key: &AttemptKey,
    job: &JobRef,
) -> Result<Logs, AdapterError> {
    let text = match &job.ended {
        Some(ended) => ended.log_tail.clone(),
        None => last_pod_and_log(cluster, key, job).await?.1,
    };
    Ok(Logs {
        links: Vec::new(),
        text: Some(text),
    })
}
