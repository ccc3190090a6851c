//! A ContainerOps component as a `batch/v1` Job: its name from the attempt key, the Job and
//! input ConfigMap it is made of, what its status means, and its outputs.
//!
//! Pure: nothing here talks to the API server.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_adapter_docker::config::Pull;
use baton_core::AttemptKey;
use baton_core::component::{self, RESERVED_ENV};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::config;

/// The label every object of an attempt carries: a hash of the key (labels cannot hold `/`).
pub const ATTEMPT_LABEL: &str = "baton.dev/attempt";
/// The annotation holding the full attempt key.
pub const ATTEMPT_ANNOTATION: &str = "baton.dev/attempt";
/// Where the component's outputs file is: the termination message, which the kubelet keeps
/// in the pod's status once the container ends, so the outputs outlive the container.
pub const OUTPUT_PATH: &str = "/dev/termination-log";
/// Where the input file is mounted.
pub const INPUT_DIR: &str = "/baton";
/// The input file's key in the ConfigMap (and its name in [`INPUT_DIR`]).
pub const INPUT_KEY: &str = "input.json";
/// The component's container.
pub const CONTAINER: &str = "component";

/// The hash of an attempt key used in names and labels: 16 hex digits of its SHA-256.
pub fn key_hash(key: &AttemptKey) -> String {
    hex::encode(&Sha256::digest(key.as_str().as_bytes())[..8])
}

/// The Job's name: `baton-`, the key's readable part and its hash, a DNS-1123 label of at
/// most 63 characters, the same for the same key, different for different keys.
pub fn job_name(key: &AttemptKey) -> String {
    let hash = key_hash(key);
    let readable: String = format!("{}-{}", key.stage_id(), key.attempt())
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    // "baton-" + readable + "-" + 16 hex ≤ 63.
    let room = 63 - "baton-".len() - 1 - hash.len();
    let readable: String = readable.chars().take(room).collect();
    let readable = readable.trim_matches('-');
    if readable.is_empty() {
        format!("baton-{hash}")
    } else {
        format!("baton-{readable}-{hash}")
    }
}

/// The ConfigMap holding the input file; created after the Job, owned by it (so it goes
/// with it), and the pod waits for it.
pub fn input_config_map(key: &AttemptKey, job: &Job, input: &Value) -> Value {
    let name = job.metadata.name.clone().unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": format!("{name}-input"),
            "labels": {ATTEMPT_LABEL: key_hash(key)},
            "annotations": {ATTEMPT_ANNOTATION: key.as_str()},
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": name,
                "uid": job.metadata.uid.clone().unwrap_or_default(),
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "data": {INPUT_KEY: input.to_string()},
    })
}

/// The Job for an attempt. `timeout` is the stage's, the default active deadline.
pub fn job_object(key: &AttemptKey, spec: &config::Job, timeout: Duration) -> Job {
    let c = &spec.component;
    let name = job_name(key);
    let mut env: Vec<Value> = vec![
        json!({"name": "CO_DATA", "value": c.input.to_string()}),
        json!({"name": RESERVED_ENV[0], "value": format!("{INPUT_DIR}/{INPUT_KEY}")}),
        json!({"name": RESERVED_ENV[1], "value": OUTPUT_PATH}),
        json!({"name": RESERVED_ENV[2], "value": key.run_id()}),
        json!({"name": RESERVED_ENV[3], "value": key.stage_id()}),
        json!({"name": RESERVED_ENV[4], "value": key.attempt().to_string()}),
    ];
    env.extend(c.env.iter().map(|(k, v)| json!({"name": k, "value": v})));
    let mut container = json!({
        "name": CONTAINER,
        "image": c.image,
        "env": env,
        "imagePullPolicy": match c.pull {
            Pull::Always => "Always",
            Pull::IfMissing => "IfNotPresent",
            Pull::Never => "Never",
        },
        "terminationMessagePath": OUTPUT_PATH,
        "terminationMessagePolicy": "File",
        "volumeMounts": [{"name": "baton-input", "mountPath": INPUT_DIR, "readOnly": true}],
    });
    let mut limits = Map::new();
    if let Some(bytes) = c.memory {
        limits.insert("memory".into(), json!(bytes.to_string()));
    }
    if let Some(nano) = c.nano_cpus {
        limits.insert(
            "cpu".into(),
            json!(format!("{}m", (nano / 1_000_000).max(1))),
        );
    }
    if !limits.is_empty() {
        container["resources"] = json!({"limits": limits});
    }
    if let Some(entrypoint) = &c.entrypoint {
        container["command"] = json!(entrypoint);
    }
    if let Some(command) = &c.command {
        container["args"] = json!(command);
    }
    if let Some(dir) = &c.workdir {
        container["workingDir"] = json!(dir);
    }
    if let Some(user) = &c.user {
        // A pod runs as numeric ids only; a name is left to the image.
        let mut ids = user.split(':').map(str::parse::<i64>);
        if let Some(Ok(uid)) = ids.next() {
            let mut context = json!({"runAsUser": uid});
            if let Some(Ok(gid)) = ids.next() {
                context["runAsGroup"] = json!(gid);
            }
            container["securityContext"] = context;
        }
    }
    let mut pod_spec = json!({
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "baton-input", "configMap": {"name": format!("{name}-input")}}],
    });
    if let Some(account) = &spec.service_account {
        pod_spec["serviceAccountName"] = json!(account);
    }
    let deadline = spec
        .active_deadline_seconds
        .unwrap_or_else(|| timeout.as_secs().max(1) as i64);
    let labels = json!({ATTEMPT_LABEL: key_hash(key)});
    let object = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels, "annotations": {ATTEMPT_ANNOTATION: key.as_str()}},
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    });
    serde_json::from_value(object).unwrap_or_default()
}

/// Whether the Job has ended, and how, from its conditions: only `Complete=True` and
/// `Failed=True` are terminal (`SuccessCriteriaMet` and `FailureTarget` come first and are
/// interim, KEP-3998; any other condition is not an ending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Not ended; the line says what it is doing.
    Running(String),
    /// `Complete`.
    Succeeded,
    /// `Failed`, with its reason (`DeadlineExceeded`, `BackoffLimitExceeded`, …) and
    /// message.
    Failed {
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
}

/// The ending of `job`.
pub fn ending(job: &Job) -> Ending {
    let status = job.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let holds = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    if holds("Complete").is_some() {
        return Ending::Succeeded;
    }
    if let Some(failed) = holds("Failed") {
        return Ending::Failed {
            reason: failed.reason.clone().unwrap_or_default(),
            message: failed.message.clone().unwrap_or_default(),
        };
    }
    let interim = ["SuccessCriteriaMet", "FailureTarget", "Suspended"]
        .into_iter()
        .find(|kind| holds(kind).is_some());
    let counts = format!(
        "{} active, {} succeeded, {} failed",
        status.active.unwrap_or_default(),
        status.succeeded.unwrap_or_default(),
        status.failed.unwrap_or_default()
    );
    Ending::Running(match interim {
        Some(kind) => format!("job {kind} ({counts}): waiting for its pods to end"),
        None => format!("job running: {counts}"),
    })
}

/// What the last pod of a Job says of its component's end: its exit code, the kubelet's
/// reason and the termination message (the outputs file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodEnd {
    /// The pod's name.
    pub pod: String,
    /// The container's exit code, when it ended.
    pub exit_code: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, … or a waiting reason (`ImagePullBackOff`).
    pub reason: Option<String>,
    /// The termination message.
    pub message: Option<String>,
}

/// The newest of `pods` (by creation time, then name) and how its component ended.
pub fn last_pod(pods: &[Pod]) -> Option<PodEnd> {
    let pod = pods.iter().max_by(|a, b| {
        let when = |p: &Pod| p.metadata.creation_timestamp.clone();
        when(a)
            .cmp(&when(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    })?;
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == CONTAINER).or(c.first()))
        .and_then(|c| c.state.clone())
        .unwrap_or_default();
    let mut end = PodEnd {
        pod: pod.metadata.name.clone().unwrap_or_default(),
        ..PodEnd::default()
    };
    if let Some(terminated) = status.terminated {
        end.exit_code = Some(terminated.exit_code);
        end.reason = terminated.reason;
        end.message = terminated.message;
    } else if let Some(waiting) = status.waiting {
        end.reason = waiting.reason;
    }
    Some(end)
}

/// The component's outputs: `[COUT]` lines of the log, then the termination message's JSON
/// object over them, then `exit_code`. A termination message that is not a JSON object is
/// the error.
pub fn outputs(log: &str, end: Option<&PodEnd>) -> Result<Map<String, Value>, String> {
    let cout = component::cout_outputs(log.as_bytes());
    let message = end.and_then(|e| e.message.as_deref()).unwrap_or_default();
    let file = component::output_object(message.as_bytes())?;
    let exit = end.and_then(|e| e.exit_code).map(i64::from);
    Ok(component::component_outputs(cout, file, exit))
}

/// The stage's message for a failed Job: the condition, the pod's exit code and reason, and
/// the log's tail.
pub fn failure(reason: &str, message: &str, end: Option<&PodEnd>, log_tail: &str) -> String {
    let mut text = match reason {
        "DeadlineExceeded" => "timed out: the job ran past its active deadline".to_owned(),
        "BackoffLimitExceeded" => {
            "the job failed: its pods failed more often than backoff_limit allows".to_owned()
        }
        "" => "the job failed".to_owned(),
        other => format!("the job failed ({other})"),
    };
    if !message.is_empty() {
        text.push_str(&format!(": {message}"));
    }
    if let Some(end) = end {
        let mut pod = format!("; pod {}", end.pod);
        if let Some(code) = end.exit_code {
            pod.push_str(&format!(" exited with {code}"));
        }
        if let Some(reason) = &end.reason {
            pod.push_str(&format!(" ({reason})"));
        }
        text.push_str(&pod);
    }
    let tail = log_tail.trim();
    if !tail.is_empty() {
        text.push_str(&format!("; log tail:\n{tail}"));
    }
    text
}

/// The labels of a Job's pods that select them (the controller's `job-name` label).
pub fn pod_selector(job_name: &str) -> String {
    format!("batch.kubernetes.io/job-name={job_name}")
}

/// The last `lines` lines of `log`.
pub fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The environment the component's container of `job` gets, by variable name.
pub fn env_of(job: &Job) -> BTreeMap<String, String> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect()
}

#[cfg(test)]
mod tests {
    use baton_adapter_docker::StageSpec;

    use super::*;

    fn spec() -> config::Job {
        config::Job {
            namespace: None,
            component: StageSpec {
                image: "lint:1".into(),
                input: json!({"files": ["a"]}),
                env: vec![("LEVEL".into(), "3".into())],
                memory: Some(64 << 20),
                nano_cpus: Some(500_000_000),
                user: Some("1000:2000".into()),
                command: Some(vec!["lint".into(), "--all".into()]),
                ..StageSpec::default()
            },
            backoff_limit: 0,
            active_deadline_seconds: None,
            ttl_seconds_after_finished: 3600,
            service_account: Some("builder".into()),
        }
    }

    #[test]
    fn names_are_stable_short_and_distinct() {
        let key = AttemptKey::new("0190aa-run", "Build_Image", 2);
        let name = job_name(&key);
        assert_eq!(name, job_name(&key));
        assert!(name.starts_with("baton-build-image-2-"), "{name}");
        assert!(config::is_dns_label(&name), "{name}");
        assert_ne!(
            name,
            job_name(&AttemptKey::new("0190aa-run", "Build_Image", 3))
        );
        // The readable part is cut, never the hash.
        let long = AttemptKey::new("r", &"s".repeat(200), 1);
        let name = job_name(&long);
        assert!(
            name.len() <= 63 && name.ends_with(&key_hash(&long)) && config::is_dns_label(&name),
            "{name}"
        );
        let odd = AttemptKey::new("r", "---", 1);
        assert!(config::is_dns_label(&job_name(&odd)), "{}", job_name(&odd));
    }

    #[test]
    fn the_job_carries_input_outputs_and_limits() {
        let key = AttemptKey::new("r1", "lint", 1);
        let job = job_object(&key, &spec(), Duration::from_secs(600));
        let value = serde_json::to_value(&job).unwrap();
        let s = &value["spec"];
        assert_eq!(s["backoffLimit"], 0);
        assert_eq!(s["activeDeadlineSeconds"], 600);
        assert_eq!(s["ttlSecondsAfterFinished"], 3600);
        assert_eq!(value["metadata"]["labels"][ATTEMPT_LABEL], key_hash(&key));
        assert_eq!(
            value["metadata"]["annotations"][ATTEMPT_ANNOTATION],
            "r1/lint/1"
        );
        let pod = &s["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["serviceAccountName"], "builder");
        let c = &pod["containers"][0];
        assert_eq!(c["terminationMessagePath"], OUTPUT_PATH);
        assert_eq!(
            c["resources"]["limits"],
            json!({"memory": "67108864", "cpu": "500m"})
        );
        assert_eq!(c["args"], json!(["lint", "--all"]));
        assert_eq!(
            c["securityContext"],
            json!({"runAsUser": 1000, "runAsGroup": 2000})
        );
        assert_eq!(c["volumeMounts"][0]["readOnly"], true);
        let env = env_of(&job);
        assert_eq!(env["CO_DATA"], r#"{"files":["a"]}"#);
        assert_eq!(env["BATON_INPUT"], "/baton/input.json");
        assert_eq!(env["BATON_OUTPUT"], OUTPUT_PATH);
        assert_eq!(env["LEVEL"], "3");
        let mut with_deadline = spec();
        with_deadline.active_deadline_seconds = Some(30);
        let v = serde_json::to_value(job_object(&key, &with_deadline, Duration::from_secs(600)))
            .unwrap();
        assert_eq!(v["spec"]["activeDeadlineSeconds"], 30);
    }

    #[test]
    fn the_input_config_map_goes_with_its_job() {
        let key = AttemptKey::new("r1", "lint", 1);
        let mut job = job_object(&key, &spec(), Duration::from_secs(60));
        job.metadata.uid = Some("u-1".into());
        let map = input_config_map(&key, &job, &json!({"a": 1}));
        assert_eq!(map["metadata"]["name"], format!("{}-input", job_name(&key)));
        assert_eq!(map["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(map["data"][INPUT_KEY], r#"{"a":1}"#);
        let volume =
            serde_json::to_value(&job).unwrap()["spec"]["template"]["spec"]["volumes"][0].clone();
        assert_eq!(volume["configMap"]["name"], map["metadata"]["name"]);
    }

    fn with_conditions(conditions: Value) -> Job {
        serde_json::from_value(json!({"status": {"active": 1, "conditions": conditions}})).unwrap()
    }

    #[test]
    fn only_complete_and_failed_end_a_job() {
        let c = |kind: &str, status: &str, reason: &str| json!({"type": kind, "status": status, "reason": reason, "message": "m"});
        assert_eq!(
            ending(&with_conditions(json!([c("Complete", "True", "")]))),
            Ending::Succeeded
        );
        assert_eq!(
            ending(&with_conditions(json!([
                c("FailureTarget", "True", "DeadlineExceeded"),
                c("Failed", "True", "DeadlineExceeded")
            ]))),
            Ending::Failed {
                reason: "DeadlineExceeded".into(),
                message: "m".into()
            }
        );
        for interim in ["SuccessCriteriaMet", "FailureTarget", "SomethingNew"] {
            assert!(
                matches!(
                    ending(&with_conditions(json!([c(interim, "True", "")]))),
                    Ending::Running(_)
                ),
                "{interim}"
            );
        }
        assert!(matches!(
            ending(&with_conditions(json!([c("Complete", "False", "")]))),
            Ending::Running(_)
        ));
        assert!(matches!(ending(&Job::default()), Ending::Running(_)));
    }

    #[test]
    fn outputs_merge_cout_then_the_termination_message_then_the_exit_code() {
        let end = PodEnd {
            pod: "p".into(),
            exit_code: Some(0),
            reason: Some("Completed".into()),
            message: Some(r#"{"version": "2", "b": true}"#.into()),
        };
        let out = outputs("noise\n[COUT] version = 1\n[COUT] a = x\n", Some(&end)).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"version": "2", "a": "x", "b": true, "exit_code": 0})
        );
        let bad = PodEnd {
            message: Some("not json".into()),
            ..end
        };
        assert!(outputs("", Some(&bad)).unwrap_err().contains("valid JSON"));
        assert_eq!(
            Value::Object(outputs("", None).unwrap()),
            json!({"exit_code": null})
        );
    }

    #[test]
    fn the_last_pod_tells_how_the_component_ended() {
        let pod = |name: &str, at: &str, state: Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name, "creationTimestamp": at},
                "status": {"containerStatuses": [{"name": CONTAINER, "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": state}]}})).unwrap()
        };
        let pods = [
            pod(
                "j-a",
                "2026-01-01T00:00:00Z",
                json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
            ),
            pod(
                "j-b",
                "2026-01-01T00:01:00Z",
                json!({"terminated": {"exitCode": 3, "reason": "Error", "message": "{}"}}),
            ),
        ];
        let end = last_pod(&pods).unwrap();
        assert_eq!(
            (end.pod.as_str(), end.exit_code, end.message.as_deref()),
            ("j-b", Some(3), Some("{}"))
        );
        let text = failure(
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
            Some(&end),
            "a\nboom\n",
        );
        assert_eq!(
            text,
            "the job failed: its pods failed more often than backoff_limit allows: Job has reached the specified backoff limit; pod j-b exited with 3 (Error); log tail:\na\nboom"
        );
        assert!(failure("DeadlineExceeded", "", None, "").starts_with("timed out"));
        assert_eq!(tail("1\n2\n3\n", 2), "2\n3");
    }
}
