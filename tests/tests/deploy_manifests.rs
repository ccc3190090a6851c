//! `deploy/kubernetes/`: every manifest reads as its Kubernetes type (the OpenAPI types of
//! `k8s-openapi`) with nothing left over, the kustomization lists exactly the files there, the
//! Deployment keeps the invariants docs/deploy.md promises, and the config in the ConfigMap,
//! laid out as the pod sees it, passes the real `baton validate`.
//!
//! `k8s-openapi` drops keys its types do not have, so each manifest is also written back from
//! its type and compared with what was read: a misspelt or misplaced key shows up as missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use baton_tests::{Sandbox, repo_root};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Secret, Service, Volume};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn manifests_dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

/// The documents of one YAML file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    use serde::Deserialize as _;
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
        })
        .filter(|value| !value.is_null())
        .collect()
}

/// `manifest` read as `T`; an error lists each key `T` has no place for and each value it
/// reads differently.
fn typed<T: DeserializeOwned + Serialize>(manifest: &Value) -> Result<T, String> {
    let parsed: T = serde_json::from_value(manifest.clone()).map_err(|e| e.to_string())?;
    let written = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    differences("", manifest, &written, &mut problems);
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(problems.join("\n"))
    }
}

/// Where `written` (the manifest as its type writes it back) differs from `read`.
fn differences(path: &str, read: &Value, written: &Value, problems: &mut Vec<String>) {
    match (read, written) {
        (Value::Object(read), Value::Object(written)) => {
            for (key, value) in read {
                let at = format!("{path}.{key}");
                match written.get(key) {
                    Some(again) => differences(&at, value, again, problems),
                    None => problems.push(format!("{at}: no such field here")),
                }
            }
            for key in written.keys().filter(|k| !read.contains_key(*k)) {
                problems.push(format!("{path}.{key}: added when written back"));
            }
        }
        (Value::Array(read), Value::Array(written)) if read.len() == written.len() => {
            for (i, (value, again)) in read.iter().zip(written).enumerate() {
                differences(&format!("{path}[{i}]"), value, again, problems);
            }
        }
        _ if read == written => {}
        _ => problems.push(format!("{path}: {read} reads as {written}")),
    }
}

/// Every object of `deploy/kubernetes/`, by the file it is in, read as its type.
struct Manifests {
    files: BTreeMap<String, Vec<Value>>,
    deployment: Deployment,
    service: Service,
    config_map: ConfigMap,
    secret: Secret,
    budget: PodDisruptionBudget,
}

fn only<T: Clone>(found: &[T], kind: &str) -> T {
    assert_eq!(found.len(), 1, "exactly one {kind} in deploy/kubernetes");
    found[0].clone()
}

fn manifests() -> Manifests {
    let mut files = BTreeMap::new();
    let mut problems = Vec::new();
    let mut deployments: Vec<Deployment> = Vec::new();
    let mut services: Vec<Service> = Vec::new();
    let mut config_maps: Vec<ConfigMap> = Vec::new();
    let mut secrets: Vec<Secret> = Vec::new();
    let mut budgets: Vec<PodDisruptionBudget> = Vec::new();
    for entry in std::fs::read_dir(manifests_dir()).expect("deploy/kubernetes") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".yaml"),
            "{name}: deploy/kubernetes holds YAML manifests only"
        );
        let docs = documents(&path);
        for doc in &docs {
            let mut check = |result: Result<(), String>| {
                if let Err(e) = result {
                    problems.push(format!("{name}: {e}"));
                }
            };
            match doc["kind"].as_str().unwrap_or_default() {
                "Deployment" => check(typed(doc).map(|d| deployments.push(d))),
                "Service" => check(typed(doc).map(|s| services.push(s))),
                "ConfigMap" => check(typed(doc).map(|c| config_maps.push(c))),
                "Secret" => check(typed(doc).map(|s| secrets.push(s))),
                "PodDisruptionBudget" => check(typed(doc).map(|b| budgets.push(b))),
                "Kustomization" => {}
                other => check(Err(format!("unexpected kind {other:?}"))),
            }
        }
        files.insert(name, docs);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Manifests {
        files,
        deployment: only(&deployments, "Deployment"),
        service: only(&services, "Service"),
        config_map: only(&config_maps, "ConfigMap"),
        secret: only(&secrets, "Secret"),
        budget: only(&budgets, "PodDisruptionBudget"),
    }
}

impl Manifests {
    fn pod_labels(&self) -> BTreeMap<String, String> {
        let template = &self.deployment.spec.template;
        template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .expect("the pod template has labels")
    }

    fn container(&self) -> Container {
        let pod = self.pod_spec();
        assert_eq!(pod.containers.len(), 1, "one container: baton");
        pod.containers[0].clone()
    }

    fn pod_spec(&self) -> k8s_openapi::api::core::v1::PodSpec {
        let spec = &self.deployment.spec;
        spec.template.spec.clone().expect("a pod spec")
    }

    fn volume(&self, name: &str) -> Volume {
        let volumes = self.pod_spec().volumes.unwrap_or_default();
        volumes
            .into_iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    /// The mount whose path holds `path`: its volume's name, its mount path, read-only.
    fn mount_of(&self, path: &Path) -> Option<(String, PathBuf, bool)> {
        let mounts = self.container().volume_mounts.unwrap_or_default();
        mounts
            .iter()
            .filter(|m| path.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
            .map(|m| {
                (
                    m.name.clone(),
                    PathBuf::from(&m.mount_path),
                    m.read_only == Some(true),
                )
            })
    }

    /// The gateway config's file path in the pod (`--config` of the container's arguments).
    fn config_path(&self) -> PathBuf {
        let args = self.container().args.unwrap_or_default();
        let at = args
            .iter()
            .position(|a| a == "--config" || a == "-c")
            .expect("the container passes --config");
        PathBuf::from(&args[at + 1])
    }

    /// The files of a ConfigMap volume as the kubelet lays them out: each item's key's text
    /// at the item's path (every key at its own name without items).
    fn config_files(&self) -> BTreeMap<String, String> {
        let (volume, mount, _) = self
            .mount_of(&self.config_path())
            .expect("the config file is on a volume");
        let source = self.volume(&volume).config_map.expect("a ConfigMap volume");
        assert_eq!(
            Some(&source.name),
            self.config_map.metadata.name.as_ref(),
            "the config volume is the ConfigMap"
        );
        let data = self.config_map.data.clone().unwrap_or_default();
        let items: Vec<(String, String)> = match source.items {
            Some(items) => items.into_iter().map(|i| (i.key, i.path)).collect(),
            None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
        };
        let mapped: BTreeSet<&String> = items.iter().map(|(key, _)| key).collect();
        let keys: BTreeSet<&String> = data.keys().collect();
        assert_eq!(
            mapped, keys,
            "every ConfigMap key is a file in the pod (a workflow added needs its item)"
        );
        let config = self.config_path();
        let relative = config.strip_prefix(&mount).unwrap().to_string_lossy();
        assert!(
            items.iter().any(|(_, path)| *path == relative),
            "the config file {relative} is one of the items"
        );
        items
            .into_iter()
            .map(|(key, path)| (path, data[&key].clone()))
            .collect()
    }

    fn gateway_config(&self) -> toml::Table {
        let config = self.config_path();
        let name = config.file_name().unwrap().to_string_lossy();
        let files = self.config_files();
        toml::from_str(&files[name.as_ref()]).expect("the config is TOML")
    }
}

#[test]
fn every_manifest_reads_as_its_kubernetes_type_with_nothing_left_over() {
    let m = manifests();
    let present: BTreeSet<String> = m
        .files
        .keys()
        .filter(|f| *f != "kustomization.yaml")
        .cloned()
        .collect();
    let kustomization = only(&m.files["kustomization.yaml"], "Kustomization");
    assert_eq!(
        kustomization["apiVersion"],
        "kustomize.config.k8s.io/v1beta1"
    );
    assert_eq!(kustomization["kind"], "Kustomization");
    let known: BTreeSet<&str> = ["apiVersion", "kind", "resources", "images"].into();
    for key in kustomization.as_object().unwrap().keys() {
        assert!(known.contains(key.as_str()), "kustomization: {key}?");
    }
    let listed: Vec<String> = serde_json::from_value(kustomization["resources"].clone()).unwrap();
    let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), listed_set.len(), "a file listed twice");
    assert_eq!(
        listed_set, present,
        "the kustomization lists exactly the files here"
    );
    let image = m.container().image.unwrap();
    let images = kustomization["images"].as_array().unwrap();
    assert!(
        images.iter().any(|i| i["name"] == image.as_str()),
        "the kustomization's images set the Deployment's image {image}"
    );
}

#[test]
fn a_misspelt_or_misplaced_key_is_caught() {
    let path = manifests_dir().join("deployment.yaml");
    let deployment = only(&documents(&path), "Deployment");
    typed::<Deployment>(&deployment).expect("the real manifest reads");

    let mut misspelt = deployment.clone();
    let container = &mut misspelt["spec"]["template"]["spec"]["containers"][0];
    let probe = container.as_object_mut().unwrap().remove("readinessProbe");
    container["readinesProbe"] = probe.unwrap();
    let problems = typed::<Deployment>(&misspelt).unwrap_err();
    assert_eq!(
        problems,
        ".spec.template.spec.containers[0].readinesProbe: no such field here"
    );

    let mut misplaced = deployment.clone();
    misplaced["spec"]["template"]["spec"]["replicas"] = 3.into();
    let problems = typed::<Deployment>(&misplaced).unwrap_err();
    assert_eq!(problems, ".spec.template.spec.replicas: no such field here");

    let mut wrong_type = deployment;
    wrong_type["spec"]["replicas"] = "three".into();
    assert!(typed::<Deployment>(&wrong_type).is_err());
}

#[test]
fn three_non_root_read_only_replicas_probe_the_port_the_service_and_config_use() {
    let m = manifests();
    let spec = &m.deployment.spec;
    assert_eq!(spec.replicas, Some(3));
    let labels = m.pod_labels();
    let selects = |selector: &BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)) && !selector.is_empty()
    };
    assert!(selects(spec.selector.match_labels.as_ref().unwrap()));
    let service = m.service.spec.as_ref().unwrap();
    assert!(selects(service.selector.as_ref().unwrap()));
    let budget = m.budget.spec.as_ref().unwrap();
    assert_eq!(budget.min_available, Some(IntOrString::Int(2)));
    let budget_selector = budget.selector.as_ref().unwrap();
    assert!(selects(budget_selector.match_labels.as_ref().unwrap()));

    // One port, which the probes, the Service and the config's listen address all name.
    let container = m.container();
    let ports = container.ports.clone().unwrap();
    assert_eq!(ports.len(), 1);
    let (port_name, port) = (ports[0].name.clone().unwrap(), ports[0].container_port);
    let is_the_port = |p: &IntOrString| match p {
        IntOrString::Int(n) => *n == port,
        IntOrString::String(name) => *name == port_name,
    };
    let probe_path = |probe: Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe.and_then(|p| p.http_get).expect("an HTTP probe");
        assert!(is_the_port(&get.port), "probe port {:?}", get.port);
        get.path.unwrap()
    };
    assert_eq!(probe_path(container.readiness_probe.clone()), "/readyz");
    assert_eq!(probe_path(container.liveness_probe.clone()), "/healthz");
    assert_eq!(probe_path(container.startup_probe.clone()), "/healthz");
    let service_ports = service.ports.clone().unwrap();
    assert_eq!(service_ports.len(), 1);
    assert!(is_the_port(service_ports[0].target_port.as_ref().unwrap()));
    let config = m.gateway_config();
    let listen = config["server"]["listen"].as_str().unwrap();
    assert_eq!(
        listen,
        format!("0.0.0.0:{port}"),
        "reachable from the kubelet"
    );

    // Non-root, nothing to escalate to, a read-only root file system.
    let pod = m.pod_spec().security_context.unwrap();
    assert_eq!(pod.run_as_non_root, Some(true));
    assert!(pod.run_as_user.is_some_and(|uid| uid > 0));
    assert_eq!(pod.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let own = container.security_context.clone().unwrap();
    assert_eq!(own.read_only_root_filesystem, Some(true));
    assert_eq!(own.allow_privilege_escalation, Some(false));
    assert_eq!(own.run_as_non_root, Some(true));
    let dropped = own.capabilities.unwrap().drop.unwrap();
    assert_eq!(dropped, ["ALL"]);

    // Requests and limits for both CPU and memory.
    let resources = container.resources.unwrap();
    for set in [resources.requests.unwrap(), resources.limits.unwrap()] {
        assert!(
            set.contains_key("cpu") && set.contains_key("memory"),
            "{set:?}"
        );
    }

    // Where baton writes is a volume of the pod's own, not the read-only root.
    let exec_state = config["engine"]["exec_state_dir"].as_str().unwrap();
    for path in [exec_state, "/tmp"] {
        let (volume, _, read_only) = m.mount_of(Path::new(path)).expect("a mount");
        assert!(!read_only, "{path} is writable");
        assert!(
            m.volume(&volume).empty_dir.is_some(),
            "{path} is an emptyDir"
        );
    }
    assert!(
        m.mount_of(&m.config_path()).unwrap().2,
        "the config is mounted read-only"
    );
}

/// The secret references of a config: each `{ env = "…" }` and `{ file = "…" }` table.
fn references(value: &toml::Value, found: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(table) => {
            if table.len() == 1
                && let Some((kind @ ("env" | "file"), toml::Value::String(target))) =
                    table.iter().next().map(|(k, v)| (k.as_str(), v))
            {
                found.push((kind.to_owned(), target.clone()));
                return;
            }
            for v in table.values() {
                references(v, found);
            }
        }
        toml::Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

#[test]
fn every_secret_the_config_names_comes_from_the_secret_which_holds_placeholders_only() {
    let m = manifests();
    let secret_name = m.secret.metadata.name.clone().unwrap();
    let secret_keys: BTreeSet<String> = m
        .secret
        .string_data
        .clone()
        .unwrap_or_default()
        .into_keys()
        .collect();
    for (key, value) in m.secret.string_data.clone().unwrap_or_default() {
        assert_eq!(
            value, "REPLACE-ME",
            "{key}: the example holds placeholders only"
        );
    }
    assert!(
        m.secret.data.is_none(),
        "placeholders are readable stringData"
    );

    let container = m.container();
    let env: BTreeMap<String, (String, String)> = container
        .env
        .unwrap_or_default()
        .into_iter()
        .filter_map(|var| {
            let from = var.value_from?.secret_key_ref?;
            Some((var.name, (from.name, from.key)))
        })
        .collect();
    for (name, key) in env.values() {
        assert_eq!(*name, secret_name);
        assert!(secret_keys.contains(key), "no key {key} in the Secret");
    }

    let mut found = Vec::new();
    references(&toml::Value::Table(m.gateway_config()), &mut found);
    assert!(found.len() >= 3, "{found:?}");
    for (kind, target) in found {
        if kind == "env" {
            assert!(
                env.contains_key(&target),
                "${target} is set from the Secret"
            );
            continue;
        }
        let (volume, mount, read_only) = m
            .mount_of(Path::new(&target))
            .unwrap_or_else(|| panic!("{target} is on no volume"));
        assert!(read_only);
        let source = m.volume(&volume).secret.expect("a Secret volume");
        assert_eq!(source.secret_name.as_deref(), Some(secret_name.as_str()));
        let mode = source.default_mode.unwrap();
        assert_eq!(mode & 0o007, 0, "not readable by others");
        let relative = Path::new(&target).strip_prefix(&mount).unwrap();
        let relative = relative.to_string_lossy();
        let key = match &source.items {
            Some(items) => items
                .iter()
                .find(|i| i.path == relative)
                .map(|i| i.key.clone())
                .unwrap_or_else(|| panic!("{target}: no item of the Secret volume")),
            None => relative.into_owned(),
        };
        assert!(secret_keys.contains(&key), "no key {key} in the Secret");
    }
}

#[test]
fn the_config_map_as_the_pod_sees_it_passes_baton_validate() {
    let m = manifests();
    let sb = Sandbox::new();
    for (path, text) in m.config_files() {
        sb.write(&format!("etc/{path}"), &text);
    }
    let config = m.config_path();
    let name = config.file_name().unwrap().to_string_lossy();
    let config = sb.path().join("etc").join(name.as_ref());
    let out = sb.run(&[
        "validate",
        "-c",
        config.to_str().unwrap(),
        "--secrets-elsewhere",
    ]);
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("release"), "{}", out.stdout);
}
