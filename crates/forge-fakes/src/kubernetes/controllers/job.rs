//! The Job controller (`pkg/controller/job/job_controller.go`): one pod at a time, a new
//! one per failure until `backoffLimit`, `activeDeadlineSeconds`, `suspend`, the
//! conditions written in two steps (`SuccessCriteriaMet` then `Complete`,
//! `FailureTarget` then `Failed`), and `ttlSecondsAfterFinished`.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::gc::{self, Propagation};
use super::{kubelet, owned_by, write_status};
use crate::kubernetes::State;
use crate::kubernetes::store::{Key, timestamp};

/// The step of Job `key` due at `now`, if any.
pub(super) fn tick(state: &mut State, key: &Key, now: Instant) {
    let Some(job) = state.store.get(key).cloned() else {
        return;
    };
    if job["metadata"].get("deletionTimestamp").is_none() {
        step(state, key, &job, now);
    }
}

fn has(job: &Value, kind: &str) -> Option<Value> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
        .cloned()
}

fn condition(kind: &str, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": "True", "lastProbeTime": timestamp(),
        "lastTransitionTime": timestamp(), "reason": reason, "message": message})
}

/// `job`'s conditions with `new` added.
fn with(job: &Value, new: Value) -> Value {
    let mut conditions = job["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conditions.push(new);
    Value::Array(conditions)
}

fn step(state: &mut State, key: &Key, job: &Value, now: Instant) {
    if has(job, "Complete").is_some() || has(job, "Failed").is_some() {
        expire(state, key, job, now);
        return;
    }
    if let Some(target) = has(job, "SuccessCriteriaMet") {
        let reason = target["reason"].as_str().unwrap_or("CompletionsReached");
        let conditions = with(
            job,
            condition(
                "Complete",
                reason,
                "Reached expected number of succeeded pods",
            ),
        );
        write_status(
            state,
            key,
            json!({"conditions": conditions, "completionTime": timestamp()}),
        );
        state.controllers.jobs.insert(key.clone(), now);
        return;
    }
    if let Some(target) = has(job, "FailureTarget") {
        let reason = target["reason"].as_str().unwrap_or("BackoffLimitExceeded");
        let message = target["message"].as_str().unwrap_or_default();
        let conditions = with(job, condition("Failed", reason, message));
        write_status(state, key, json!({"conditions": conditions}));
        state.controllers.jobs.insert(key.clone(), now);
        return;
    }
    let uid = job["metadata"]["uid"].as_str().unwrap_or_default();
    let pods: Vec<(Key, String)> = state
        .store
        .list("pods", Some(&key.1))
        .filter(|(_, p)| owned_by(p, uid))
        .map(|(k, p)| {
            (
                k.clone(),
                p["status"]["phase"]
                    .as_str()
                    .unwrap_or("Pending")
                    .to_owned(),
            )
        })
        .collect();
    let count = |phase: &str| pods.iter().filter(|(_, p)| p == phase).count();
    let (succeeded, failed) = (count("Succeeded"), count("Failed"));
    let active: Vec<&Key> = pods
        .iter()
        .filter(|(_, p)| p == "Pending" || p == "Running")
        .map(|(k, _)| k)
        .collect();
    let suspended = job["spec"]["suspend"] == true;
    let mut status = json!({"active": active.len(), "succeeded": succeeded, "failed": failed,
        "ready": 0, "terminating": 0});
    if !suspended && job["status"].get("startTime").is_none() {
        status["startTime"] = json!(timestamp());
        state.controllers.jobs.insert(key.clone(), now);
    }
    let started = state.controllers.jobs.get(key).copied().unwrap_or(now);
    let deadline = job["spec"]["activeDeadlineSeconds"]
        .as_u64()
        .map(Duration::from_secs);
    let backoff_limit = job["spec"]["backoffLimit"].as_u64().unwrap_or(6) as usize;
    let ending = if succeeded > 0 {
        Some(condition(
            "SuccessCriteriaMet",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        ))
    } else if failed > backoff_limit {
        Some(condition(
            "FailureTarget",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if deadline.is_some_and(|d| now >= started + d) && !suspended {
        Some(condition(
            "FailureTarget",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else {
        None
    };
    if let Some(ending) = ending {
        let active_keys: Vec<Key> = active.into_iter().cloned().collect();
        for pod in &active_keys {
            kubelet::kill(state, pod);
        }
        status["active"] = json!(0);
        status["failed"] = json!(failed + active_keys.len());
        status["conditions"] = with(job, ending);
    } else if active.is_empty() && !suspended {
        kubelet::start_job_pod(state, job);
        status["active"] = json!(1);
    }
    write_status(state, key, status);
}

/// Deletes a finished Job (and its pods) once its `ttlSecondsAfterFinished` passed.
fn expire(state: &mut State, key: &Key, job: &Value, now: Instant) {
    let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_u64() else {
        return;
    };
    let finished = *state.controllers.jobs.entry(key.clone()).or_insert(now);
    if now >= finished + Duration::from_secs(ttl) {
        gc::delete(state, key, Propagation::Background);
    }
}
