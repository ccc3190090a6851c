//! The Deployment controller: a ReplicaSet per pod template (reused, with the next
//! revision, when a template comes back, as a rollback does), one replica moved per step
//! from the old ReplicaSets to the new one, and the status and conditions
//! (`pkg/controller/deployment/util/deployment_util.go`) written at each step. A rollback
//! (`kubectl rollout undo` writes an old ReplicaSet's template back into the Deployment,
//! `staging/src/k8s.io/kubectl/pkg/polymorphichelpers/rollback.go`) finds that ReplicaSet
//! by its template hash.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    Due, Workload, canonical, condition, owned_by, owner_reference, template_hash, write_status,
};
use crate::kubernetes::State;
use crate::kubernetes::plan::RolloutPlan;
use crate::kubernetes::store::{Key, metadata};

const REVISION: &str = "deployment.kubernetes.io/revision";

/// Adds a Deployment rolled out and stable at revision 1.
pub(in crate::kubernetes) fn add(state: &mut State, wanted: &Workload<'_>) {
    let key = wanted.key("deployments");
    let replicas = wanted.count;
    let object = wanted.object("deployments", json!({"replicas": replicas}));
    state.store.insert(key.clone(), object);
    let ns = &key.1;
    let new_rs = observe(state, &key);
    scale(state, ns, &new_rs, replicas, 0, false);
    let counts = Counts {
        desired: replicas,
        ready_new: replicas,
        pending_new: 0,
        old: 0,
        terminating: 0,
    };
    let generation = 1;
    write(state, &key, &counts, generation, available(&new_rs));
}

/// The step of Deployment `key` due at `now`, if any.
pub(super) fn tick(state: &mut State, key: &Key, now: Instant) {
    match super::due(state, key, now) {
        Some((Due::Observe, plan)) => {
            let rs = observe(state, key);
            let created = state
                .store
                .get(&rs_key(&key.1, &rs))
                .is_some_and(|r| r["status"].get("replicas").is_none());
            let observed = if created {
                (
                    "NewReplicaSetCreated",
                    format!("Created new replica set \"{rs}\""),
                )
            } else {
                (
                    "FoundNewReplicaSet",
                    format!("Found new replica set \"{rs}\""),
                )
            };
            step(state, key, &rs, &plan, now, Some(observed));
        }
        Some((Due::Step, plan)) => {
            if let Some(rs) = newest(state, key) {
                step(state, key, &rs, &plan, now, None);
            }
        }
        None => {}
    }
    deadline(state, key, now);
}

/// The replica counts a status is written from.
#[derive(Debug, Clone, Copy)]
struct Counts {
    desired: i32,
    ready_new: i32,
    pending_new: i32,
    old: i32,
    terminating: i32,
}

impl Counts {
    fn complete(&self) -> bool {
        self.ready_new == self.desired
            && self.pending_new == 0
            && self.old == 0
            && self.terminating == 0
    }
}

fn rs_key(ns: &str, name: &str) -> Key {
    ("replicasets".into(), ns.into(), name.into())
}

/// The ReplicaSets the Deployment `key` owns: (name, revision, replicas).
fn owned(state: &State, key: &Key) -> Vec<(String, i64, i32)> {
    let Some(uid) = state
        .store
        .get(key)
        .and_then(|d| d["metadata"]["uid"].as_str())
    else {
        return Vec::new();
    };
    state
        .store
        .list("replicasets", Some(&key.1))
        .filter(|(_, rs)| owned_by(rs, uid))
        .map(|(k, rs)| {
            let revision = rs["metadata"]["annotations"][REVISION]
                .as_str()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let replicas = rs["spec"]["replicas"].as_i64().unwrap_or(0) as i32;
            (k.2.clone(), revision, replicas)
        })
        .collect()
}

/// The ReplicaSet of the newest revision.
fn newest(state: &State, key: &Key) -> Option<String> {
    owned(state, key)
        .into_iter()
        .max_by_key(|(_, revision, _)| *revision)
        .map(|(name, ..)| name)
}

/// Finds or makes the ReplicaSet of the Deployment's template and gives it the next
/// revision unless it already has the newest; the Deployment's revision annotation
/// follows. Returns its name.
fn observe(state: &mut State, key: &Key) -> String {
    let Some(deployment) = state.store.get(key).cloned() else {
        return String::new();
    };
    let template = &deployment["spec"]["template"];
    let hash = template_hash(template);
    let name = format!("{}-{hash}", key.2);
    let sets = owned(state, key);
    let top = sets.iter().map(|(_, r, _)| *r).max().unwrap_or(0);
    let mine = sets.iter().find(|(n, ..)| *n == name).map(|(_, r, _)| *r);
    let revision = match mine {
        Some(r) if r == top => r,
        _ => top + 1,
    };
    let rk = rs_key(&key.1, &name);
    match state.store.get(&rk).cloned() {
        Some(mut rs) if mine != Some(revision) => {
            let annotations = metadata(&mut rs)
                .entry("annotations")
                .or_insert_with(|| json!({}));
            annotations[REVISION] = json!(revision.to_string());
            state.store.replace(rk, rs);
        }
        Some(_) => {}
        None => {
            let mut labels = template["metadata"]["labels"].clone();
            labels["pod-template-hash"] = json!(hash);
            let mut pod_template = template.clone();
            pod_template["metadata"]["labels"] = labels.clone();
            let mut selector = deployment["spec"]["selector"].clone();
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let rs = json!({
                "metadata": {"name": name, "labels": labels,
                    "annotations": {REVISION: revision.to_string()},
                    "ownerReferences": [owner_reference(&deployment)]},
                "spec": {"replicas": 0, "selector": selector, "template": pod_template},
            });
            state.store.insert(rk, rs);
        }
    }
    if deployment["metadata"]["annotations"][REVISION] != json!(revision.to_string()) {
        let mut deployment = deployment;
        let annotations = metadata(&mut deployment)
            .entry("annotations")
            .or_insert_with(|| json!({}));
        annotations[REVISION] = json!(revision.to_string());
        state.store.replace(key.clone(), deployment);
    }
    name
}

/// Moves one replica towards the new ReplicaSet `new_rs` (or, when the plan stalls,
/// starts one new pod that never becomes ready), then writes the status.
fn step(
    state: &mut State,
    key: &Key,
    new_rs: &str,
    plan: &RolloutPlan,
    now: Instant,
    observed: Option<(&str, String)>,
) {
    let Some(deployment) = state.store.get(key).cloned() else {
        return;
    };
    let desired = deployment["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
    let generation = deployment["metadata"]["generation"].as_i64().unwrap_or(1);
    let rs = state
        .store
        .get(&rs_key(&key.1, new_rs))
        .cloned()
        .unwrap_or_default();
    let mut ready_new = rs["status"]["readyReplicas"].as_i64().unwrap_or(0) as i32;
    let mut pending_new = rs["spec"]["replicas"].as_i64().unwrap_or(0) as i32 - ready_new;
    let olds: Vec<(String, i32)> = owned(state, key)
        .into_iter()
        .filter(|(n, _, r)| n != new_rs && *r > 0)
        .map(|(n, _, r)| (n, r))
        .collect();
    let mut old: i32 = olds.iter().map(|(_, r)| r).sum();
    let Some(run) = super::run_mut(state, key) else {
        return;
    };
    if run.deadline_exceeded {
        return;
    }
    let terminating_ended = run.terminating_until.is_some_and(|t| now >= t);
    if terminating_ended {
        run.terminating_until = None;
    }
    let mut moved = false;
    if observed.is_none() {
        if plan.stalls {
            if pending_new == 0 && ready_new < desired {
                pending_new = 1;
                moved = true;
            }
        } else {
            if ready_new < desired {
                ready_new += 1;
                moved = true;
            }
            ready_new = ready_new.min(desired);
            if old > 0 && old + ready_new > desired {
                old -= 1;
                moved = true;
                if old == 0 && !plan.old_pods_terminate_after.is_zero() {
                    run.terminating_until = Some(now + plan.old_pods_terminate_after);
                }
            }
        }
    }
    if moved {
        run.last_progress = now;
    } else if observed.is_none() && !terminating_ended {
        return;
    }
    let terminating = i32::from(run.terminating_until.is_some_and(|t| now < t));
    let counts = Counts {
        desired,
        ready_new,
        pending_new,
        old,
        terminating,
    };
    scale(
        state,
        &key.1,
        new_rs,
        ready_new,
        pending_new,
        plan.image_pull_backoff,
    );
    let mut left = old;
    for (name, replicas) in olds {
        let keep = replicas.min(left);
        left -= keep;
        scale(state, &key.1, &name, keep, 0, false);
    }
    let progressing = match observed {
        _ if counts.complete() => available(new_rs),
        Some((reason, message)) => json!([reason, message]),
        None => json!([
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_rs}\" is progressing.")
        ]),
    };
    write(state, key, &counts, generation, progressing);
    if counts.complete() {
        super::completed(state, key);
    }
}

/// A stalled rollout past its `progressDeadlineSeconds`: `Progressing` turns `False`.
fn deadline(state: &mut State, key: &Key, now: Instant) {
    let Some(deployment) = state.store.get(key) else {
        return;
    };
    let seconds = deployment["spec"]["progressDeadlineSeconds"]
        .as_u64()
        .unwrap_or(600);
    let paused = deployment["spec"]["paused"] == true;
    let Some(run) = super::run_mut(state, key) else {
        return;
    };
    if run.done
        || paused
        || run.deadline_exceeded
        || !run.observed
        || now < run.last_progress + std::time::Duration::from_secs(seconds)
    {
        return;
    }
    run.deadline_exceeded = true;
    let Some(deployment) = state.store.get(key).cloned() else {
        return;
    };
    let rs = newest(state, key).unwrap_or_default();
    let progressing = condition(
        &deployment,
        "Progressing",
        "False",
        "ProgressDeadlineExceeded",
        &format!("ReplicaSet \"{rs}\" has timed out progressing."),
    );
    let conditions = replace_condition(&deployment, progressing);
    write_status(state, key, json!({"conditions": conditions}));
}

/// The deployment's conditions with `new` in place of the one of its type.
fn replace_condition(object: &Value, new: Value) -> Value {
    let mut conditions: Vec<Value> = object["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c["type"] != new["type"]);
    conditions.push(new);
    Value::Array(conditions)
}

/// The `Progressing` reason and message of a rollout that finished with `rs` available.
fn available(rs: &str) -> Value {
    json!([
        "NewReplicaSetAvailable",
        format!("ReplicaSet \"{rs}\" has successfully progressed.")
    ])
}

/// Writes the Deployment's status from `counts`; `progressing` is [reason, message].
fn write(state: &mut State, key: &Key, counts: &Counts, generation: i64, progressing: Value) {
    let Some(deployment) = state.store.get(key).cloned() else {
        return;
    };
    let available = counts.ready_new + counts.old;
    let max_unavailable = counts.desired / 4;
    let (available_status, available_reason, available_message) =
        if available >= counts.desired - max_unavailable {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        };
    let reason = progressing[0].as_str().unwrap_or_default();
    let message = progressing[1].as_str().unwrap_or_default();
    let conditions = json!([
        condition(
            &deployment,
            "Available",
            available_status,
            available_reason,
            available_message
        ),
        condition(&deployment, "Progressing", "True", reason, message),
    ]);
    let updated = counts.ready_new + counts.pending_new;
    let mut status = json!({
        "observedGeneration": generation,
        "replicas": updated + counts.old + counts.terminating,
        "updatedReplicas": updated,
        "readyReplicas": available,
        "availableReplicas": available,
        "unavailableReplicas": (counts.desired - available).max(0),
        "conditions": conditions,
    });
    if canonical(&status["conditions"]) == canonical(&deployment["status"]["conditions"]) {
        status.as_object_mut().map(|s| s.remove("conditions"));
    }
    write_status(state, key, status);
}

/// Sets ReplicaSet `name` to `ready` ready and `pending` unready replicas, and its pods to
/// match (the unready ones waiting with `ImagePullBackOff` or `ContainerCreating`).
fn scale(state: &mut State, ns: &str, name: &str, ready: i32, pending: i32, pull_backoff: bool) {
    let rk = rs_key(ns, name);
    let Some(mut rs) = state.store.get(&rk).cloned() else {
        return;
    };
    let before = rs.clone();
    rs["spec"]["replicas"] = json!(ready + pending);
    if rs != before {
        rs = state.store.replace(rk.clone(), rs);
    }
    write_status(
        state,
        &rk,
        json!({"replicas": ready + pending, "readyReplicas": ready, "availableReplicas": ready,
            "fullyLabeledReplicas": ready + pending,
            "observedGeneration": rs["metadata"]["generation"]}),
    );
    let waiting = if pull_backoff {
        "ImagePullBackOff"
    } else {
        "ContainerCreating"
    };
    super::kubelet::keep_pods(state, &rs, ready, pending, waiting);
}
