//! The kubelet: pods of ReplicaSets kept at the count their controller asks for, and Job
//! pods that wait for their ConfigMaps, pull their image (an unknown one never pulls),
//! run the image's program for as long as it says and end `Succeeded` or `Failed` with
//! its exit code, termination message and log.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{owned_by, owner_reference};
use crate::kubernetes::State;
use crate::kubernetes::plan::{PodInput, PodOutcome};
use crate::kubernetes::store::{Key, timestamp};

/// A Job pod the kubelet runs.
#[derive(Debug, Clone, Default)]
pub(in crate::kubernetes) struct PodRun {
    /// Since when it runs, and how it ends.
    running: Option<(Instant, PodOutcome)>,
    pull_failures: u32,
}

/// A pod's container status: ready and running, or waiting for `reason`.
fn container_status(spec: &Value, state: Value, ready: bool) -> Value {
    let container = &spec["containers"][0];
    json!([{"name": container["name"], "image": container["image"], "imageID": "",
        "ready": ready, "started": ready, "restartCount": 0, "state": state}])
}

/// A new pod of `owner` from its pod `template`, named `<owner>-<5 characters>`.
fn pod(
    state: &mut State,
    owner: &Value,
    template: &Value,
    labels: Value,
    status: Value,
) -> (Key, Value) {
    let ns = owner["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let name = format!(
        "{}-{}",
        owner["metadata"]["name"].as_str().unwrap_or_default(),
        state.store.random_suffix()
    );
    let object = json!({
        "metadata": {"name": name, "labels": labels, "ownerReferences": [owner_reference(owner)]},
        "spec": template["spec"],
        "status": status,
    });
    (("pods".to_owned(), ns, name), object)
}

/// Makes ReplicaSet `rs` have `ready` running pods and `pending` ones waiting with
/// `waiting`, creating and deleting pods as needed.
pub(super) fn keep_pods(state: &mut State, rs: &Value, ready: i32, pending: i32, waiting: &str) {
    let ns = rs["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let uid = rs["metadata"]["uid"].as_str().unwrap_or_default();
    let pods: Vec<(Key, bool)> = state
        .store
        .list("pods", Some(&ns))
        .filter(|(_, p)| owned_by(p, uid))
        .map(|(k, p)| (k.clone(), p["status"]["phase"] == "Running"))
        .collect();
    let template = &rs["spec"]["template"];
    for (want, is_ready) in [(ready, true), (pending, false)] {
        let have: Vec<&Key> = pods
            .iter()
            .filter(|(_, r)| *r == is_ready)
            .map(|(k, _)| k)
            .collect();
        for key in have.iter().skip(want.max(0) as usize) {
            state.store.remove(key);
        }
        for _ in have.len()..want.max(0) as usize {
            let status = if is_ready {
                json!({"phase": "Running", "startTime": timestamp(),
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": container_status(&template["spec"],
                        json!({"running": {"startedAt": timestamp()}}), true)})
            } else {
                json!({"phase": "Pending",
                    "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
                    "containerStatuses": container_status(&template["spec"],
                        json!({"waiting": {"reason": waiting}}), false)})
            };
            let labels = template["metadata"]["labels"].clone();
            let (key, object) = pod(state, rs, template, labels, status);
            state.store.insert(key, object);
        }
    }
}

/// Starts a pod of Job `job` that the kubelet runs.
pub(super) fn start_job_pod(state: &mut State, job: &Value) {
    let template = &job["spec"]["template"];
    let uid = &job["metadata"]["uid"];
    let job_name = &job["metadata"]["name"];
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    for (label, value) in [
        ("batch.kubernetes.io/job-name", job_name),
        ("job-name", job_name),
        ("controller-uid", uid),
        ("batch.kubernetes.io/controller-uid", uid),
    ] {
        labels[label] = value.clone();
    }
    let (key, object) = pod(state, job, template, labels, json!({"phase": "Pending"}));
    state.store.insert(key.clone(), object);
    state.controllers.pods.insert(key, PodRun::default());
}

/// What pod `key` logged, if it ran.
pub(in crate::kubernetes) fn log(state: &State, key: &Key) -> Option<String> {
    let run = state.controllers.pods.get(key)?;
    run.running.as_ref().map(|(_, outcome)| outcome.log.clone())
}

/// Moves every Job pod that is due.
pub(super) fn tick(state: &mut State, now: Instant) {
    let keys: Vec<Key> = state.controllers.pods.keys().cloned().collect();
    for key in keys {
        let Some(pod) = state.store.get(&key).cloned() else {
            state.controllers.pods.remove(&key);
            continue;
        };
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        if matches!(phase, "Succeeded" | "Failed")
            || pod["metadata"].get("deletionTimestamp").is_some()
        {
            continue;
        }
        let run = state
            .controllers
            .pods
            .get(&key)
            .cloned()
            .unwrap_or_default();
        match run.running {
            Some((since, outcome)) if now >= since + outcome.runs_for => {
                finish(state, &key, &pod, &outcome);
            }
            Some(_) => {}
            None => start(state, &key, &pod, now, run.pull_failures),
        }
    }
}

/// Starts pod `key` once its ConfigMaps exist and its image pulls.
fn start(state: &mut State, key: &Key, pod: &Value, now: Instant, pull_failures: u32) {
    let spec = &pod["spec"];
    let missing = spec["volumes"].as_array().into_iter().flatten().any(|v| {
        v["configMap"]["name"].as_str().is_some_and(|cm| {
            let optional = v["configMap"]["optional"] == true;
            !optional
                && state
                    .store
                    .get(&("configmaps".into(), key.1.clone(), cm.into()))
                    .is_none()
        })
    });
    let waiting = |reason: &str| {
        json!({"phase": "Pending", "containerStatuses": container_status(spec,
            json!({"waiting": {"reason": reason}}), false)})
    };
    if missing {
        super::write_status(state, key, waiting("ContainerCreating"));
        return;
    }
    let image = spec["containers"][0]["image"].as_str().unwrap_or_default();
    let Some(program) = state.images.get(image).cloned() else {
        let reason = if pull_failures == 0 {
            "ErrImagePull"
        } else {
            "ImagePullBackOff"
        };
        if let Some(run) = state.controllers.pods.get_mut(key) {
            run.pull_failures += 1;
        }
        super::write_status(state, key, waiting(reason));
        return;
    };
    let input = input(state, &key.1, spec);
    let outcome = program(&input);
    if let Some(run) = state.controllers.pods.get_mut(key) {
        run.running = Some((now, outcome));
    }
    let status = json!({"phase": "Running", "startTime": timestamp(),
        "containerStatuses": container_status(spec, json!({"running": {"startedAt": timestamp()}}), true)});
    super::write_status(state, key, status);
}

/// Ends pod `key` as `outcome` says.
fn finish(state: &mut State, key: &Key, pod: &Value, outcome: &PodOutcome) {
    let (phase, reason) = if outcome.exit_code == 0 {
        ("Succeeded", "Completed")
    } else {
        ("Failed", "Error")
    };
    let mut terminated = json!({"exitCode": outcome.exit_code, "reason": reason,
        "startedAt": pod["status"]["startTime"], "finishedAt": timestamp()});
    if let Some(message) = &outcome.termination_message {
        terminated["message"] = json!(message);
    }
    let mut statuses = container_status(&pod["spec"], json!({"terminated": terminated}), false);
    statuses[0]["started"] = json!(false);
    super::write_status(
        state,
        key,
        json!({"phase": phase, "containerStatuses": statuses}),
    );
}

/// What the pod's first container starts with: env (ConfigMap keys resolved) and the
/// files of the ConfigMap volumes it mounts.
fn input(state: &State, ns: &str, spec: &Value) -> PodInput {
    let container = &spec["containers"][0];
    let configmap = |name: &str| {
        state
            .store
            .get(&("configmaps".into(), ns.into(), name.into()))
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap_or_default().to_owned();
        let from = &var["valueFrom"]["configMapKeyRef"];
        let value = match var["value"].as_str() {
            Some(v) => Some(v.to_owned()),
            None => from["name"]
                .as_str()
                .and_then(configmap)
                .and_then(|cm| cm["data"][from["key"].as_str().unwrap_or_default()].as_str())
                .map(str::to_owned),
        };
        env.insert(name, value.unwrap_or_default());
    }
    let mut files = BTreeMap::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"]);
        let Some(cm) = volume
            .and_then(|v| v["configMap"]["name"].as_str())
            .and_then(configmap)
        else {
            continue;
        };
        let dir = mount["mountPath"]
            .as_str()
            .unwrap_or_default()
            .trim_end_matches('/');
        let items = volume
            .map(|v| &v["configMap"]["items"])
            .and_then(Value::as_array);
        for (key, content) in cm["data"].as_object().into_iter().flatten() {
            let path = match items {
                Some(items) => match items.iter().find(|i| i["key"] == key.as_str()) {
                    Some(item) => item["path"].as_str().unwrap_or(key).to_owned(),
                    None => continue,
                },
                None => key.clone(),
            };
            files.insert(
                format!("{dir}/{path}"),
                content.as_str().unwrap_or_default().to_owned(),
            );
        }
    }
    PodInput {
        image: container["image"].as_str().unwrap_or_default().to_owned(),
        env,
        files,
        command: strings(&container["command"]),
        args: strings(&container["args"]),
    }
}

/// Kills pod `key` (an active deadline passed): it ends `Failed`.
pub(super) fn kill(state: &mut State, key: &Key) {
    state.controllers.pods.remove(key);
    let killed = PodOutcome {
        log: String::new(),
        exit_code: 137,
        termination_message: None,
        runs_for: Duration::ZERO,
    };
    if let Some(pod) = state.store.get(key).cloned() {
        finish(state, key, &pod, &killed);
    }
}
