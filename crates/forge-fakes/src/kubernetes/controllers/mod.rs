//! The controllers that move objects as real time passes: one loop per cluster ticks
//! every few milliseconds and lets each controller take the steps that are due.

pub(super) mod deployment;
pub(super) mod gc;
pub(super) mod job;
pub(super) mod kubelet;
pub(super) mod workloads;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::time::Instant;

pub(crate) use gc::Propagation;

use super::plan::RolloutPlan;
use super::store::Key;
use super::{Cluster, Inner, State};

/// How often the controllers look for due steps.
const TICK: Duration = Duration::from_millis(5);

/// The controllers' own state.
#[derive(Default)]
pub(super) struct Controllers {
    /// Rollout plans by (namespace, workload name).
    pub(super) plans: HashMap<(String, String), RolloutPlan>,
    /// When the latest rollout of (namespace, workload name) completed.
    pub(super) completed_at: HashMap<(String, String), SystemTime>,
    runs: HashMap<Key, Run>,
    /// DaemonSets' node counts.
    nodes: HashMap<Key, i32>,
    pods: HashMap<Key, kubelet::PodRun>,
    jobs: HashMap<Key, Instant>,
    /// Something was deleted: the garbage collector has work.
    gc_due: bool,
}

/// Starts the controllers' loop on the current runtime, unless it already runs. It ends
/// when the cluster is dropped or its runtime shuts down.
pub(super) fn start(cluster: &Cluster) {
    if cluster.inner.ticking.swap(true, Ordering::SeqCst) {
        return;
    }
    let running = Running(Arc::downgrade(&cluster.inner));
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(inner) = running.0.upgrade() else {
                return;
            };
            tick(&inner.state, Instant::now());
        }
    });
}

/// Marks the loop stopped when its task ends, so serving again starts it again.
struct Running(Weak<Inner>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.ticking.store(false, Ordering::SeqCst);
        }
    }
}

/// Every step due at `now`. The lock is taken per object, so requests are served between
/// the steps of a busy tick.
pub(super) fn tick(shared: &Mutex<State>, now: Instant) {
    let keys: Vec<Key> = {
        let mut state = crate::lock(shared);
        gc::collect(&mut state);
        ["deployments", "statefulsets", "daemonsets", "jobs"]
            .iter()
            .flat_map(|kind| state.store.keys(kind))
            .collect()
    };
    for key in keys {
        let mut state = crate::lock(shared);
        match key.0.as_str() {
            "deployments" => deployment::tick(&mut state, &key, now),
            "jobs" => job::tick(&mut state, &key, now),
            _ => workloads::tick(&mut state, &key, now),
        }
    }
    let mut state = crate::lock(shared);
    kubelet::tick(&mut state, now);
    gc::collect(&mut state);
}

/// A workload's rollout of one generation, as its controller moves it.
#[derive(Debug, Clone)]
struct Run {
    generation: i64,
    noticed: Instant,
    observed: bool,
    next_step: Instant,
    /// When a replica last moved (for the progress deadline).
    last_progress: Instant,
    done: bool,
    deadline_exceeded: bool,
    /// Until when the last old pod is still terminating.
    terminating_until: Option<Instant>,
}

/// What is due for a workload now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// The controller notices the new generation.
    Observe,
    /// One replica moves.
    Step,
}

/// What is due for workload `key` at `now` under its plan, if anything: nothing while it
/// is paused or being deleted, or once the status observed its generation and the run of
/// that generation is done.
fn due(state: &mut State, key: &Key, now: Instant) -> Option<(Due, RolloutPlan)> {
    let object = state.store.get(key)?;
    if object["metadata"].get("deletionTimestamp").is_some() || object["spec"]["paused"] == true {
        return None;
    }
    let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
    let observed = object["status"]["observedGeneration"].as_i64().unwrap_or(0);
    let plan = plan(state, key);
    let controllers = &mut state.controllers;
    let run = match controllers.runs.get_mut(key) {
        Some(run) if run.generation == generation => run,
        _ if observed >= generation => return None,
        _ => controllers
            .runs
            .entry(key.clone())
            .insert_entry(Run {
                generation,
                noticed: now,
                observed: false,
                next_step: now,
                last_progress: now,
                done: false,
                deadline_exceeded: false,
                terminating_until: None,
            })
            .into_mut(),
    };
    if !run.observed {
        if now < run.noticed + plan.observed_after {
            return None;
        }
        run.observed = true;
        run.next_step = now + plan.step;
        run.last_progress = now;
        return Some((Due::Observe, plan));
    }
    if run.done || now < run.next_step {
        return None;
    }
    run.next_step = now + plan.step;
    Some((Due::Step, plan))
}

fn run_mut<'a>(state: &'a mut State, key: &Key) -> Option<&'a mut Run> {
    state.controllers.runs.get_mut(key)
}

fn plan(state: &State, key: &Key) -> RolloutPlan {
    state
        .controllers
        .plans
        .get(&(key.1.clone(), key.2.clone()))
        .cloned()
        .unwrap_or_default()
}

/// The rollout of `key` completed now.
fn completed(state: &mut State, key: &Key) {
    if let Some(run) = run_mut(state, key) {
        run.done = true;
    }
    state
        .controllers
        .completed_at
        .insert((key.1.clone(), key.2.clone()), SystemTime::now());
}

/// Fills what the API server defaults on create, and clears a controller-owned status.
pub(super) fn defaults(resource: &str, object: &mut Value) {
    let fill: &[(&[&str], Value)] = match resource {
        "deployments" => &[
            (&["spec", "replicas"], json!(1)),
            (&["spec", "progressDeadlineSeconds"], json!(600)),
            (&["spec", "revisionHistoryLimit"], json!(10)),
            (
                &["spec", "strategy"],
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            ),
        ],
        "statefulsets" => &[
            (&["spec", "replicas"], json!(1)),
            (&["spec", "podManagementPolicy"], json!("OrderedReady")),
            (
                &["spec", "updateStrategy"],
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            ),
        ],
        "daemonsets" => &[(
            &["spec", "updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}),
        )],
        "jobs" => &[
            (&["spec", "backoffLimit"], json!(6)),
            (&["spec", "completions"], json!(1)),
            (&["spec", "parallelism"], json!(1)),
            (&["spec", "suspend"], json!(false)),
        ],
        "pods" => &[(&["status", "phase"], json!("Pending"))],
        "namespaces" => &[(&["status", "phase"], json!("Active"))],
        _ => &[],
    };
    if matches!(
        resource,
        "deployments" | "statefulsets" | "daemonsets" | "jobs" | "replicasets"
    ) && let Value::Object(map) = object
    {
        map.remove("status");
    }
    for (path, value) in fill {
        let (last, parents) = path.split_last().expect("paths are not empty");
        let mut at = &mut *object;
        for p in parents {
            if !at[*p].is_object() {
                at[*p] = json!({});
            }
            at = &mut at[*p];
        }
        if at.get(*last).is_none_or(Value::is_null) {
            at[*last] = value.clone();
        }
    }
}

/// A workload a test helper adds, rolled out and stable: where it lives, its one
/// container, and its replica (or node) count.
pub(in crate::kubernetes) struct Workload<'a> {
    ns: &'a str,
    name: &'a str,
    container: &'a str,
    image: &'a str,
    count: i32,
}

impl<'a> Workload<'a> {
    pub(in crate::kubernetes) fn new(
        ns: &'a str,
        name: &'a str,
        container: &'a str,
        image: &'a str,
        count: i32,
    ) -> Self {
        Self {
            ns,
            name,
            container,
            image,
            count,
        }
    }

    /// Where an object of `resource` with this name is stored.
    fn key(&self, resource: &str) -> Key {
        (
            resource.to_owned(),
            self.ns.to_owned(),
            self.name.to_owned(),
        )
    }

    /// The object: `metadata`, a `spec` with one container and its selector, the given
    /// extra spec fields, and what the API server defaults for `resource`.
    fn object(&self, resource: &str, extra: Value) -> Value {
        let (name, container, image) = (self.name, self.container, self.image);
        let mut object = json!({
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": container, "image": image}]},
                },
            },
        });
        if let Value::Object(fields) = extra {
            for (k, v) in fields {
                object["spec"][k] = v;
            }
        }
        defaults(resource, &mut object);
        object
    }
}

/// The canonical text of `value` (keys sorted), so equal objects hash equal whatever
/// order patches left their keys in.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// The hash of a pod template (without its `pod-template-hash` label), as ReplicaSet
/// names and controller revisions carry it.
fn template_hash(template: &Value) -> String {
    let mut template = template.clone();
    if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
        labels.remove("pod-template-hash");
    }
    let crc = crc32fast::hash(canonical(&template).as_bytes());
    super::store::suffix(u64::from(crc), 10)
}

/// An owner reference to `owner` as its controller.
fn owner_reference(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"], "kind": owner["kind"],
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    })
}

/// Whether `object` names `uid` among its owners.
fn owned_by(object: &Value, uid: &str) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
}

/// Writes `status` fields of `key` (merged into the status), unless nothing changes.
fn write_status(state: &mut State, key: &Key, fields: Value) {
    let Some(mut object) = state.store.get(key).cloned() else {
        return;
    };
    if !object["status"].is_object() {
        object["status"] = json!({});
    }
    super::patch::merge(&mut object["status"], &fields);
    if Some(&object) != state.store.get(key) {
        state.store.replace(key.clone(), object);
    }
}

/// A condition as controllers write them, keeping its transition time when its status
/// stays the same.
fn condition(old: &Value, kind: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = super::store::timestamp();
    let previous = old["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind));
    let transition = match previous {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    json!({"type": kind, "status": status, "lastUpdateTime": now,
        "lastTransitionTime": transition, "reason": reason, "message": message})
}
