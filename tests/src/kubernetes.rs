//! Helpers for the tests that run `baton` against the in-process Kubernetes API server of
//! `baton_forge_fakes::kubernetes`: the RBAC a Role manifest grants, as the fake's
//! [`Rules`], so a test runs with exactly the permissions an example documents; what a
//! Deployment runs; and the settings a cluster operator would change with `kubectl`.

use std::path::Path;
use std::time::Duration;

use baton_forge_fakes::kubernetes::{Cluster, Rules};
use serde::Deserialize as _;
use serde_json::Value;

/// The rules of every `Role` in the (multi-document) YAML file `path`: each rule's verbs
/// on each of its resources in each of its API groups (`""` is the core group; a
/// subresource is written `pods/log`, as in RBAC).
pub fn role_rules(path: &Path) -> Rules {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut rules = Rules::none();
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let object = Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
        if object["kind"] != "Role" {
            continue;
        }
        for rule in object["rules"].as_array().into_iter().flatten() {
            let words = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            };
            let verbs = words("verbs");
            let verbs: Vec<&str> = verbs.iter().map(String::as_str).collect();
            for group in words("apiGroups") {
                for resource in words("resources") {
                    rules = rules.allow(&verbs, &group, &resource);
                }
            }
        }
    }
    rules
}

/// The image of the first container of a workload's pod template.
pub fn template_image(workload: &Value) -> &str {
    workload["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
}

/// Sets `spec.progressDeadlineSeconds` of Deployment `ns/name` of `cluster` through its API
/// server at `url` with `token` (a merge patch, as `kubectl patch --type merge` sends it),
/// as the Deployment's own manifest would: how long a rollout may make no progress before
/// the controller marks it failed. Returns once the controller has observed the change.
pub fn set_progress_deadline(
    cluster: &Cluster,
    url: &str,
    token: &str,
    (ns, name): (&str, &str),
    seconds: u32,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let body = format!(r#"{{"spec":{{"progressDeadlineSeconds":{seconds}}}}}"#);
    let mut answer = agent
        .patch(&format!(
            "{url}/apis/apps/v1/namespaces/{ns}/deployments/{name}"
        ))
        .header("authorization", &format!("Bearer {token}"))
        .header("content-type", "application/merge-patch+json")
        .send(body.as_bytes())
        .expect("the fake API server answers");
    let status = answer.status().as_u16();
    let text = answer.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(status, 200, "setting the progress deadline: {text}");
    crate::eventually(
        Duration::from_secs(10),
        "the controller observes the new deadline",
        || {
            cluster
                .get("deployments", ns, name)
                .is_some_and(|d| d["metadata"]["generation"] == d["status"]["observedGeneration"])
        },
    );
}
