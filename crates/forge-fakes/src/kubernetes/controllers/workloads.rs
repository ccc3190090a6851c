//! The StatefulSet and DaemonSet controllers: a rolling update moves one replica (one
//! node) per step to the new template's revision, honouring a StatefulSet's `partition`;
//! their status is what `kubectl rollout status` reads.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Due, Workload, template_hash, write_status};
use crate::kubernetes::State;
use crate::kubernetes::plan::RolloutPlan;
use crate::kubernetes::store::Key;

/// How many nodes a DaemonSet runs on unless [`add_daemonset`] said.
const DEFAULT_NODES: i32 = 3;

/// Adds a StatefulSet rolled out and stable.
pub(in crate::kubernetes) fn add_statefulset(state: &mut State, wanted: &Workload<'_>) {
    let key = wanted.key("statefulsets");
    let replicas = wanted.count;
    let extra = json!({"replicas": replicas, "serviceName": key.2});
    let object = wanted.object("statefulsets", extra);
    let revision = revision(&key.2, &object);
    state.store.insert(key.clone(), object);
    write_status(
        state,
        &key,
        json!({"observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas,
            "availableReplicas": replicas, "currentReplicas": replicas,
            "updatedReplicas": replicas, "currentRevision": revision,
            "updateRevision": revision, "collisionCount": 0}),
    );
}

/// Adds a DaemonSet on `nodes` nodes, rolled out and stable.
pub(in crate::kubernetes) fn add_daemonset(state: &mut State, wanted: &Workload<'_>) {
    let key = wanted.key("daemonsets");
    let nodes = wanted.count;
    let object = wanted.object("daemonsets", json!({}));
    state.store.insert(key.clone(), object);
    state.controllers.nodes.insert(key.clone(), nodes);
    write_status(state, &key, daemonset_status(1, nodes, nodes, 0));
}

fn revision(name: &str, object: &Value) -> String {
    format!("{name}-{}", template_hash(&object["spec"]["template"]))
}

fn daemonset_status(generation: i64, nodes: i32, updated: i32, unavailable: i32) -> Value {
    json!({"observedGeneration": generation, "desiredNumberScheduled": nodes,
        "currentNumberScheduled": nodes, "updatedNumberScheduled": updated,
        "numberAvailable": nodes - unavailable, "numberReady": nodes - unavailable,
        "numberUnavailable": unavailable, "numberMisscheduled": 0})
}

/// The step of StatefulSet or DaemonSet `key` due at `now`, if any.
pub(super) fn tick(state: &mut State, key: &Key, now: Instant) {
    let Some((due, plan)) = super::due(state, key, now) else {
        return;
    };
    let Some(object) = state.store.get(key).cloned() else {
        return;
    };
    if key.0 == "statefulsets" {
        statefulset_step(state, key, &object, due, &plan);
    } else {
        daemonset_step(state, key, &object, due, &plan);
    }
}

fn count(object: &Value, field: &str) -> i32 {
    object["status"][field].as_i64().unwrap_or(0) as i32
}

fn statefulset_step(state: &mut State, key: &Key, sts: &Value, due: Due, plan: &RolloutPlan) {
    let generation = sts["metadata"]["generation"].as_i64().unwrap_or(1);
    let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
    let partition = sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
        .as_i64()
        .unwrap_or(0) as i32;
    let target = (replicas - partition).clamp(0, replicas);
    let update_revision = revision(&key.2, sts);
    let current_revision = sts["status"]["currentRevision"]
        .as_str()
        .unwrap_or(&update_revision)
        .to_owned();
    let mut updated = if due == Due::Observe {
        if current_revision == update_revision {
            replicas
        } else {
            0
        }
    } else {
        count(sts, "updatedReplicas")
    };
    let mut ready = replicas;
    if due == Due::Step && updated < target {
        if plan.stalls {
            ready = replicas - 1;
        } else {
            updated += 1;
        }
    }
    let finished = updated >= target && !(plan.stalls && updated < replicas);
    let mut status = json!({"observedGeneration": generation, "replicas": replicas,
        "readyReplicas": ready, "availableReplicas": ready,
        "currentReplicas": replicas - updated, "updatedReplicas": updated,
        "currentRevision": current_revision, "updateRevision": update_revision});
    if finished && partition == 0 {
        status["currentRevision"] = json!(update_revision);
        status["currentReplicas"] = json!(replicas);
    }
    write_status(state, key, status);
    if finished {
        super::completed(state, key);
    }
}

fn daemonset_step(state: &mut State, key: &Key, ds: &Value, due: Due, plan: &RolloutPlan) {
    let generation = ds["metadata"]["generation"].as_i64().unwrap_or(1);
    let nodes = state
        .controllers
        .nodes
        .get(key)
        .copied()
        .unwrap_or(DEFAULT_NODES);
    let mut updated = if due == Due::Observe {
        0
    } else {
        count(ds, "updatedNumberScheduled")
    };
    let mut unavailable = 0;
    if due == Due::Step && updated < nodes {
        if plan.stalls {
            unavailable = 1;
        } else {
            updated += 1;
        }
    }
    write_status(
        state,
        key,
        daemonset_status(generation, nodes, updated, unavailable),
    );
    if updated >= nodes {
        super::completed(state, key);
    }
}
