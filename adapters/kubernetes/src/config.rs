//! The instance block (`[adapters.<name>]`) and the stage's `with:` block, each checked in
//! one pass that reports every problem with its key path.

use std::path::PathBuf;
use std::time::Duration;

use baton_core::typed::{LONGEST_REQUEST, duration_or_default, unknown_key};
use baton_core::{FieldError, HumanDuration, read_table};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Whether template strings may stand where another type is expected.
pub use baton_core::adapter::InputMode as Mode;

/// The default `request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The default `ttl_seconds_after_finished` of a Job: an hour, long enough to look at it.
pub const DEFAULT_JOB_TTL: i32 = 3600;

/// The instance block as written in `[adapters.<name>]` with `kind = "kubernetes"`, before the
/// checks serde cannot make ([`parse_instance`] makes them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceKeys {
    /// The kubeconfig file (`~` is the home folder). Default: the first file of
    /// `KUBECONFIG`, else `~/.kube/config`.
    #[serde(default)]
    pub kubeconfig: Option<String>,
    /// The kubeconfig context to use. Default: the file's `current-context`.
    #[serde(default)]
    pub context: Option<String>,
    /// Use the pod's service account (baton runs inside the cluster) instead of a
    /// kubeconfig; excludes `kubeconfig` and `context`. Default: false.
    #[serde(default)]
    pub in_cluster: bool,
    /// The namespace of stages that name none. Default: the context's namespace, else
    /// `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The longest one request to the API server may take; over 0 s, at most 5 min.
    /// Default: `30s`.
    #[serde(default)]
    pub request_timeout: Option<HumanDuration>,
}

/// Where the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A kubeconfig file (`None`: `KUBECONFIG` or `~/.kube/config`) and context (`None`:
    /// the file's current one).
    Kubeconfig {
        /// The file, `~` already expanded.
        path: Option<PathBuf>,
        /// The context.
        context: Option<String>,
    },
    /// The pod's service account.
    InCluster,
}

/// A checked instance block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// Where the credentials come from.
    pub source: Source,
    /// The namespace of stages that name none, when the block sets one.
    pub namespace: Option<String>,
    /// The bound on one request.
    pub request_timeout: Duration,
}

/// Checks an instance block, returning the config or every problem. `home` expands `~`.
pub fn parse_instance(
    config: &Value,
    home: Option<&str>,
) -> Result<InstanceConfig, Vec<FieldError>> {
    read_table::<InstanceKeys>(config).check(config, |keys, errors| {
        if keys.in_cluster {
            for (key, given) in [
                ("kubeconfig", keys.kubeconfig.is_some()),
                ("context", keys.context.is_some()),
            ] {
                if given {
                    errors.push(FieldError::new(
                        key,
                        "not with `in_cluster = true`: the pod's service account is used instead of a kubeconfig",
                    ));
                }
            }
        }
        let path = match keys.kubeconfig.as_deref() {
            Some(text) if text.is_empty() || text.contains('\0') => {
                errors.push(FieldError::new(
                    "kubeconfig",
                    "expected the path of a kubeconfig file",
                ));
                None
            }
            Some(text) => Some(expand_home(text, home)),
            None => None,
        };
        if keys.context.as_deref() == Some("") {
            errors.push(FieldError::new("context", "expected a context's name"));
        }
        if let Some(ns) = keys.namespace.as_deref()
            && let Err(message) = check_namespace(ns)
        {
            errors.push(FieldError::new("namespace", message));
        }
        let request_timeout = duration_or_default(
            "request_timeout",
            keys.request_timeout,
            DEFAULT_REQUEST_TIMEOUT,
            LONGEST_REQUEST,
            errors,
        );
        let source = if keys.in_cluster {
            Source::InCluster
        } else {
            Source::Kubeconfig {
                path,
                context: keys.context,
            }
        };
        Some(InstanceConfig {
            source,
            namespace: keys.namespace,
            request_timeout,
        })
    })
}

fn expand_home(path: &str, home: Option<&str>) -> PathBuf {
    match (path.strip_prefix('~'), home) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            PathBuf::from(format!("{home}{rest}"))
        }
        _ => PathBuf::from(path),
    }
}

/// A namespace name: a DNS-1123 label (lowercase letters, digits and `-`, at most 63).
pub fn check_namespace(name: &str) -> Result<(), String> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a namespace name: lowercase letters, digits and `-`, starting and ending with a letter or digit, at most 63 characters"
        ))
    }
}

/// True for a DNS-1123 label.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// True for a DNS-1123 subdomain (an object's name): dot-separated labels, at most 253.
fn is_object_name(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// The kinds of workload baton waits on (written as the API's kind names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
}

impl WorkloadKind {
    /// Every kind, with its `with:` key (and kubectl's word).
    pub const ALL: [(&'static str, Self); 3] = [
        ("deployment", Self::Deployment),
        ("statefulset", Self::StatefulSet),
        ("daemonset", Self::DaemonSet),
    ];

    /// The `with:` key naming a workload of this kind.
    pub fn key(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::StatefulSet => "statefulset",
            Self::DaemonSet => "daemonset",
        }
    }

    /// The API's kind name.
    pub fn api_kind(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
        }
    }

    /// The kind from the API's kind name.
    pub fn from_api_kind(kind: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .map(|(_, k)| *k)
            .find(|k| k.api_kind() == kind)
    }

    /// The resource (plural) in `apps/v1`.
    pub fn resource(self) -> &'static str {
        match self {
            Self::Deployment => "deployments",
            Self::StatefulSet => "statefulsets",
            Self::DaemonSet => "daemonsets",
        }
    }
}

/// `action: set-image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetImage {
    /// The namespace, when the stage names one.
    pub namespace: Option<String>,
    /// The workload's kind.
    pub kind: WorkloadKind,
    /// The workload's name.
    pub name: String,
    /// The container whose image changes.
    pub container: String,
    /// The new image.
    pub image: String,
    /// Whether a failed, timed-out or cancelled rollout is undone.
    pub undo_on_failure: bool,
}

/// `action: apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apply {
    /// The manifest file (relative paths resolve against baton's working folder).
    pub manifest: PathBuf,
    /// The namespace of objects that name none, when the stage names one.
    pub namespace: Option<String>,
    /// Whether fields other managers own are taken over.
    pub force: bool,
    /// Whether a failed, timed-out or cancelled rollout of its Deployments is undone.
    pub undo_on_failure: bool,
}

/// `action: job`.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The namespace, when the stage names one.
    pub namespace: Option<String>,
    /// The component: image, input, env and the rest, as the `docker` adapter reads them.
    pub component: baton_adapter_docker::StageSpec,
    /// Retries of the pod (`backoffLimit`); default 0, so a component runs once.
    pub backoff_limit: i32,
    /// `activeDeadlineSeconds`; default: the stage's timeout.
    pub active_deadline_seconds: Option<i64>,
    /// `ttlSecondsAfterFinished`.
    pub ttl_seconds_after_finished: i32,
    /// The pod's service account, when not the namespace's default.
    pub service_account: Option<String>,
}

/// A checked `with:` block.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Change one container's image and wait for the rollout.
    SetImage(SetImage),
    /// Server-side apply a manifest and wait for its workloads.
    Apply(Apply),
    /// Run a ContainerOps component as a Job.
    Job(Box<Job>),
}

const ACTIONS: &str = "set-image, apply, job";
const SET_IMAGE_KEYS: [&str; 8] = [
    "action",
    "namespace",
    "deployment",
    "statefulset",
    "daemonset",
    "container",
    "image",
    "undo_on_failure",
];
const APPLY_KEYS: [&str; 5] = [
    "action",
    "manifest",
    "namespace",
    "force",
    "undo_on_failure",
];
/// The keys of a job stage beyond the `docker` adapter's.
const JOB_KEYS: [&str; 6] = [
    "action",
    "namespace",
    "backoff_limit",
    "active_deadline_seconds",
    "ttl_seconds_after_finished",
    "service_account",
];
/// The `docker` adapter's keys that mean nothing for a pod.
const JOB_REFUSED: [(&str, &str); 2] = [
    (
        "network",
        "not for a Kubernetes job: the pod is on the cluster's network (restrict it with a NetworkPolicy)",
    ),
    (
        "mounts",
        "not for a Kubernetes job: a pod cannot mount a folder of baton's machine",
    ),
];

/// Checks a `with:` block, returning the action or every problem.
pub fn parse_stage(with: &Value, mode: Mode) -> Result<Action, Vec<FieldError>> {
    let Value::Object(map) = with else {
        return Err(vec![FieldError::new(
            "action",
            format!(
                "missing: a kubernetes stage needs a `with:` table naming its `action` ({ACTIONS})"
            ),
        )]);
    };
    match map.get("action").and_then(Value::as_str) {
        Some("set-image") => set_image(map, mode).map(Action::SetImage),
        Some("apply") => apply(map, mode).map(Action::Apply),
        Some("job") => job(map, mode).map(|j| Action::Job(Box::new(j))),
        Some(text) if mode.is_template(text) => Err(vec![FieldError::new(
            "action",
            "must be written out, not a template: it decides which keys the stage takes",
        )]),
        _ => Err(vec![FieldError::new(
            "action",
            format!("expected one of {ACTIONS}"),
        )]),
    }
}

/// Reads the keys of one action, each problem at its path.
struct Reader<'a> {
    map: &'a Map<String, Value>,
    mode: Mode,
    errors: Vec<FieldError>,
}

impl<'a> Reader<'a> {
    fn new(map: &'a Map<String, Value>, mode: Mode, keys: &[&str]) -> Self {
        let mut errors = Vec::new();
        for key in map.keys() {
            if !keys.contains(&key.as_str()) {
                errors.push(FieldError::new(key, unknown_key(key, keys)));
            }
        }
        Self { map, mode, errors }
    }

    /// A string at `key` that `valid` accepts (a template stands for one); `None` when
    /// absent or wrong (the latter reported with `expected`).
    fn text(&mut self, key: &str, valid: impl Fn(&str) -> bool, expected: &str) -> Option<String> {
        match self.map.get(key)? {
            Value::String(text) if self.mode.is_template(text) || valid(text) => Some(text.clone()),
            _ => {
                self.errors.push(FieldError::new(key, expected));
                None
            }
        }
    }

    fn required(&mut self, key: &str, valid: impl Fn(&str) -> bool, expected: &str) -> String {
        if !self.map.contains_key(key) {
            self.errors
                .push(FieldError::new(key, format!("missing: {expected}")));
        }
        self.text(key, valid, &format!("expected {expected}"))
            .unwrap_or_default()
    }

    fn namespace(&mut self) -> Option<String> {
        let value = self.map.get("namespace")?.as_str().unwrap_or_default();
        if !self.mode.is_template(value)
            && let Err(message) = check_namespace(value)
        {
            self.errors.push(FieldError::new("namespace", message));
            return None;
        }
        Some(value.to_owned())
    }

    fn flag(&mut self, key: &str) -> bool {
        match self.map.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(text)) if self.mode.is_template(text) => false,
            Some(_) => {
                self.errors
                    .push(FieldError::new(key, "expected true or false"));
                false
            }
        }
    }

    /// A whole number at `key` from `min` to `max`.
    fn number(&mut self, key: &str, min: i64, max: i64) -> Option<i64> {
        match self.map.get(key)? {
            Value::Number(n) if n.as_i64().is_some_and(|n| (min..=max).contains(&n)) => n.as_i64(),
            Value::String(text) if self.mode.is_template(text) => None,
            _ => {
                self.errors.push(FieldError::new(
                    key,
                    format!("expected a whole number from {min} to {max}"),
                ));
                None
            }
        }
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        let Self {
            map, mut errors, ..
        } = self;
        let position = |e: &FieldError| {
            let key = e.path.split(['.', '[']).next().unwrap_or_default();
            map.keys().position(|k| k == key).unwrap_or(map.len())
        };
        errors.sort_by_key(position);
        if errors.is_empty() {
            Ok(value)
        } else {
            Err(errors)
        }
    }
}

fn not_blank(text: &str) -> bool {
    !text.is_empty() && !text.contains(char::is_whitespace)
}

fn set_image(map: &Map<String, Value>, mode: Mode) -> Result<SetImage, Vec<FieldError>> {
    let mut r = Reader::new(map, mode, &SET_IMAGE_KEYS);
    let namespace = r.namespace();
    let named: Vec<_> = WorkloadKind::ALL
        .iter()
        .filter(|(key, _)| map.contains_key(*key))
        .collect();
    let expected_name = "the workload's name (lowercase letters, digits, `-` and `.`)";
    let (kind, name) = match named.as_slice() {
        [(key, kind)] => (*kind, r.required(key, is_object_name, expected_name)),
        [] => {
            r.errors.push(FieldError::new(
                "deployment",
                "missing: exactly one of `deployment`, `statefulset` or `daemonset` names the workload",
            ));
            (WorkloadKind::Deployment, String::new())
        }
        [_, (second, _), ..] => {
            r.errors.push(FieldError::new(
                *second,
                "only one of `deployment`, `statefulset` or `daemonset` may name the workload",
            ));
            (WorkloadKind::Deployment, String::new())
        }
    };
    let container = r.required(
        "container",
        is_dns_label,
        "the container's name in the pod template",
    );
    let image = r.required(
        "image",
        not_blank,
        "the new image, such as `reg/app@sha256:…`",
    );
    let undo_on_failure = r.flag("undo_on_failure");
    if undo_on_failure && kind != WorkloadKind::Deployment {
        r.errors.push(FieldError::new(
            "undo_on_failure",
            format!(
                "only for a deployment: baton rolls back through a Deployment's ReplicaSets, and a {} has none",
                kind.api_kind()
            ),
        ));
    }
    r.finish(SetImage {
        namespace,
        kind,
        name,
        container,
        image,
        undo_on_failure,
    })
}

fn apply(map: &Map<String, Value>, mode: Mode) -> Result<Apply, Vec<FieldError>> {
    let mut r = Reader::new(map, mode, &APPLY_KEYS);
    let manifest = r.required(
        "manifest",
        |p| !p.is_empty() && !p.contains('\0'),
        "the path of a YAML manifest (one or more documents)",
    );
    let namespace = r.namespace();
    let force = r.flag("force");
    let undo_on_failure = r.flag("undo_on_failure");
    r.finish(Apply {
        manifest: PathBuf::from(manifest),
        namespace,
        force,
        undo_on_failure,
    })
}

fn job(map: &Map<String, Value>, mode: Mode) -> Result<Job, Vec<FieldError>> {
    // The component's own keys are the docker adapter's, read by its parser; the rest are
    // the Job's.
    let docker_keys = baton_adapter_docker::config::STAGE_KEYS;
    let mut component_map = Map::new();
    let mut own = Map::new();
    for (key, value) in map {
        if docker_keys.contains(&key.as_str()) {
            component_map.insert(key.clone(), value.clone());
        } else {
            own.insert(key.clone(), value.clone());
        }
    }
    let all_keys: Vec<&str> = JOB_KEYS
        .iter()
        .chain(
            docker_keys
                .iter()
                .filter(|k| !JOB_REFUSED.iter().any(|(r, _)| r == *k)),
        )
        .copied()
        .collect();
    let mut r = Reader::new(&own, mode, &all_keys);
    for (key, why) in JOB_REFUSED {
        if map.contains_key(key) {
            r.errors.push(FieldError::new(key, why));
            component_map.remove(key);
        }
    }
    let namespace = r.namespace();
    let backoff_limit = r.number("backoff_limit", 0, 100).unwrap_or(0) as i32;
    let active_deadline_seconds = r.number("active_deadline_seconds", 1, i64::from(i32::MAX));
    let ttl_seconds_after_finished = r
        .number("ttl_seconds_after_finished", 0, i64::from(i32::MAX))
        .map_or(DEFAULT_JOB_TTL, |n| n as i32);
    let service_account = r.text(
        "service_account",
        is_object_name,
        "expected a service account's name",
    );
    let component =
        match baton_adapter_docker::config::parse_stage(&Value::Object(component_map), mode) {
            Ok(spec) => spec,
            Err(errors) => {
                r.errors.extend(errors);
                baton_adapter_docker::StageSpec::default()
            }
        };
    let Reader { mut errors, .. } = r;
    let position = |e: &FieldError| {
        let key = e.path.split(['.', '[']).next().unwrap_or_default();
        map.keys().position(|k| k == key).unwrap_or(map.len())
    };
    errors.sort_by_key(position);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Job {
        namespace,
        component,
        backoff_limit,
        active_deadline_seconds,
        ttl_seconds_after_finished,
        service_account,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems(result: Result<impl std::fmt::Debug, Vec<FieldError>>) -> Vec<String> {
        result
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn an_instance_defaults_and_expands_home() {
        let config = parse_instance(
            &json!({"kubeconfig": "~/k/config", "context": "prod"}),
            Some("/home/ci"),
        )
        .unwrap();
        assert_eq!(
            config.source,
            Source::Kubeconfig {
                path: Some("/home/ci/k/config".into()),
                context: Some("prod".into())
            }
        );
        assert_eq!(config.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        let empty = parse_instance(&Value::Null, None).unwrap();
        assert_eq!(
            empty.source,
            Source::Kubeconfig {
                path: None,
                context: None
            }
        );
        assert_eq!(
            parse_instance(&json!({"in_cluster": true}), None)
                .unwrap()
                .source,
            Source::InCluster
        );
    }

    #[test]
    fn every_instance_problem_at_once() {
        let found = problems(parse_instance(
            &json!({"in_cluster": true, "kubeconfig": "/k", "context": "x", "namespace": "Bad_NS", "request_timeout": "0s", "cluster": 1}),
            None,
        ));
        let paths: Vec<_> = found
            .iter()
            .map(|p| p.split(':').next().unwrap().to_owned())
            .collect();
        assert_eq!(
            paths,
            [
                "kubeconfig",
                "context",
                "namespace",
                "request_timeout",
                "cluster"
            ],
            "{found:?}"
        );
        assert!(found[0].contains("in_cluster"), "{found:?}");
    }

    #[test]
    fn set_image_reads_and_checks() {
        let with = json!({"action": "set-image", "namespace": "app", "deployment": "web", "container": "web", "image": "reg/web@sha256:ab", "undo_on_failure": true});
        let Action::SetImage(spec) = parse_stage(&with, Mode::Rendered).unwrap() else {
            panic!()
        };
        assert_eq!(
            (spec.kind, spec.name.as_str(), spec.undo_on_failure),
            (WorkloadKind::Deployment, "web", true)
        );
        let found = problems(parse_stage(
            &json!({"action": "set-image", "statefulset": "db", "daemonset": "d", "image": "", "undo_on_failure": "yes", "replicas": 3}),
            Mode::Rendered,
        ));
        assert_eq!(
            found,
            [
                "daemonset: only one of `deployment`, `statefulset` or `daemonset` may name the workload",
                "image: expected the new image, such as `reg/app@sha256:…`",
                "undo_on_failure: expected true or false",
                "replicas: unknown key `replicas`; expected one of: action, namespace, deployment, statefulset, daemonset, container, image, undo_on_failure",
                "container: missing: the container's name in the pod template",
            ]
        );
        let sts = problems(parse_stage(
            &json!({"action": "set-image", "statefulset": "db", "container": "db", "image": "db:2", "undo_on_failure": true}),
            Mode::Rendered,
        ));
        assert!(
            sts[0].starts_with("undo_on_failure: only for a deployment"),
            "{sts:?}"
        );
    }

    #[test]
    fn templates_stand_for_values_until_rendered() {
        let with = json!({"action": "set-image", "namespace": "${{ .event.ns }}", "deployment": "web", "container": "web", "image": "${{ .stages.b.outputs.image }}"});
        assert!(parse_stage(&with, Mode::Templates).is_ok());
        assert!(parse_stage(&with, Mode::Rendered).is_err());
        let action = json!({"action": "${{ .event.action }}"});
        assert!(problems(parse_stage(&action, Mode::Templates))[0].contains("must be written out"));
    }

    #[test]
    fn a_job_takes_the_docker_keys_and_refuses_the_machines() {
        let with = json!({"action": "job", "namespace": "ci", "image": "lint:1", "input": {"a": 1}, "memory": "64m", "backoff_limit": 2});
        let Action::Job(job) = parse_stage(&with, Mode::Rendered).unwrap() else {
            panic!()
        };
        assert_eq!(job.component.image, "lint:1");
        assert_eq!(job.component.input, json!({"a": 1}));
        assert_eq!(job.component.memory, Some(64 << 20));
        assert_eq!(
            (
                job.backoff_limit,
                job.ttl_seconds_after_finished,
                job.active_deadline_seconds
            ),
            (2, DEFAULT_JOB_TTL, None)
        );
        let found = problems(parse_stage(
            &json!({"action": "job", "image": "x:1", "network": "host", "mounts": [], "backoff_limit": -1, "cpus": 0}),
            Mode::Rendered,
        ));
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(
            found[0].starts_with("network: not for a Kubernetes job"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("mounts: not for a Kubernetes job"),
            "{found:?}"
        );
        assert!(
            found[2].starts_with("backoff_limit: expected a whole number"),
            "{found:?}"
        );
        assert!(found[3].starts_with("cpus:"), "{found:?}");
        assert_eq!(
            problems(parse_stage(&json!({"action": "job"}), Mode::Rendered))[0]
                .split(':')
                .next(),
            Some("image")
        );
    }

    #[test]
    fn apply_and_unknown_actions() {
        let Action::Apply(apply) = parse_stage(
            &json!({"action": "apply", "manifest": "deploy/app.yaml", "force": true}),
            Mode::Rendered,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (apply.manifest, apply.force),
            (PathBuf::from("deploy/app.yaml"), true)
        );
        assert_eq!(
            problems(parse_stage(&json!({"action": "deploy"}), Mode::Rendered)),
            ["action: expected one of set-image, apply, job"]
        );
        assert_eq!(problems(parse_stage(&json!([]), Mode::Rendered)).len(), 1);
    }
}
