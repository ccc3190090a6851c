//! The resources the model serves (their group, version, kind, and which have a `status`
//! subresource), and the discovery documents that describe them to clients.

use serde_json::{Value, json};

/// One served resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Resource {
    /// The plural, as in paths (`deployments`).
    pub(super) plural: &'static str,
    /// The API group (`""` for core).
    pub(super) group: &'static str,
    /// The kind (`Deployment`).
    pub(super) kind: &'static str,
    /// Whether objects live in a namespace.
    pub(super) namespaced: bool,
    /// Whether writes to the object leave `status` alone (it has a `status` subresource).
    pub(super) has_status: bool,
}

impl Resource {
    /// `apps/v1`, or `v1` for the core group.
    pub(super) fn api_version(&self) -> String {
        if self.group.is_empty() {
            "v1".to_owned()
        } else {
            format!("{}/v1", self.group)
        }
    }

    /// `deployments.apps`, or `pods` for the core group: how error messages name it.
    pub(super) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn singular(&self) -> String {
        self.kind.to_ascii_lowercase()
    }
}

const fn resource(
    plural: &'static str,
    group: &'static str,
    kind: &'static str,
    namespaced: bool,
    has_status: bool,
) -> Resource {
    Resource {
        plural,
        group,
        kind,
        namespaced,
        has_status,
    }
}

/// Every resource served, all at version `v1` of their group.
pub(super) const RESOURCES: &[Resource] = &[
    resource("namespaces", "", "Namespace", false, true),
    resource("pods", "", "Pod", true, true),
    resource("configmaps", "", "ConfigMap", true, false),
    resource("secrets", "", "Secret", true, false),
    resource("services", "", "Service", true, true),
    resource("deployments", "apps", "Deployment", true, true),
    resource("replicasets", "apps", "ReplicaSet", true, true),
    resource("statefulsets", "apps", "StatefulSet", true, true),
    resource("daemonsets", "apps", "DaemonSet", true, true),
    resource("jobs", "batch", "Job", true, true),
];

/// The subresources served, by resource.
const SUBRESOURCES: &[(&str, &str)] = &[
    ("pods", "log"),
    ("pods", "status"),
    ("services", "status"),
    ("deployments", "status"),
    ("replicasets", "status"),
    ("statefulsets", "status"),
    ("daemonsets", "status"),
    ("jobs", "status"),
    ("namespaces", "status"),
];

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The resource `plural` of `group`, if served.
pub(super) fn find(group: &str, plural: &str) -> Option<Resource> {
    RESOURCES
        .iter()
        .copied()
        .find(|r| r.group == group && r.plural == plural)
}

/// The resource named by its plural alone (plurals are unique among those served).
pub(super) fn by_plural(plural: &str) -> Option<Resource> {
    RESOURCES.iter().copied().find(|r| r.plural == plural)
}

/// Whether `sub` is a subresource of `plural`.
pub(super) fn has_subresource(plural: &str, sub: &str) -> bool {
    SUBRESOURCES.iter().any(|(r, s)| *r == plural && *s == sub)
}

/// The groups other than core, with their one version.
const GROUPS: &[&str] = &["apps", "batch"];

/// `GET /api`.
pub(super) fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    })
}

/// `GET /apis`.
pub(super) fn group_list() -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|g| {
            let version = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [version], "preferredVersion": version})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /api/v1` or `/apis/{group}/v1`: the group's resources and subresources, or `None`
/// for a group not served.
pub(super) fn resource_list(group: &str) -> Option<Value> {
    if !group.is_empty() && !GROUPS.contains(&group) {
        return None;
    }
    let mut resources = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        resources.push(json!({
            "name": r.plural, "singularName": r.singular(), "namespaced": r.namespaced,
            "kind": r.kind, "verbs": VERBS,
        }));
        for (_, sub) in SUBRESOURCES.iter().filter(|(p, _)| *p == r.plural) {
            let (kind, verbs): (&str, &[&str]) = if *sub == "log" {
                ("Pod", &["get"])
            } else {
                (r.kind, &["get", "patch", "update"])
            };
            resources.push(json!({
                "name": format!("{}/{sub}", r.plural), "singularName": "",
                "namespaced": r.namespaced, "kind": kind, "verbs": verbs,
            }));
        }
    }
    let group_version = if group.is_empty() {
        "v1".to_owned()
    } else {
        format!("{group}/v1")
    };
    Some(json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": group_version, "resources": resources,
    }))
}

/// `GET /version`.
pub(super) fn version() -> Value {
    json!({
        "major": "1", "minor": "34", "gitVersion": "v1.34.0",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-08-27T00:00:00Z", "goVersion": "go1.24.6", "compiler": "gc",
        "platform": "linux/amd64",
    })
}
