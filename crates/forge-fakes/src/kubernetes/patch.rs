//! Patches by content type (strategic merge, JSON merge, JSON patch, server-side apply)
//! and who owns which fields (field managers), so an apply of a field another manager set
//! to something else is a conflict.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// The list fields a strategic merge patch merges element by element, and the keys that
/// identify their elements (the first one an element has), as the Kubernetes types'
/// `patchMergeKey` tags declare them.
fn merge_keys(field: &str) -> Option<&'static [&'static str]> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some(&["name"]),
        "volumeMounts" => Some(&["mountPath"]),
        "ports" => Some(&["containerPort", "port"]),
        _ => None,
    }
}

/// The key and its value identifying `item` of list `field`, if it is a merged list.
fn element_id<'a>(field: &str, item: &'a Value) -> Option<(&'static str, &'a Value)> {
    merge_keys(field)?
        .iter()
        .find_map(|k| item.get(*k).map(|v| (*k, v)))
}

/// Applies a strategic merge patch: maps merge recursively, `null` deletes, the merged
/// lists merge by their key (`$patch: delete` removes an element), other lists are
/// replaced, and the other `$` directives are ignored.
pub(super) fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => merge_map(t, p),
        (t, p) => *t = without_directives(p),
    }
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        target.clear();
    }
    for (field, value) in patch.iter().filter(|(k, _)| !k.starts_with('$')) {
        match (target.get_mut(field), value) {
            (_, Value::Null) => {
                target.remove(field);
            }
            (Some(Value::Object(t)), Value::Object(p)) => merge_map(t, p),
            (Some(Value::Array(t)), Value::Array(p)) if merge_keys(field).is_some() => {
                merge_list(field, t, p);
            }
            _ => {
                target.insert(field.clone(), without_directives(value));
            }
        }
    }
}

fn merge_list(field: &str, target: &mut Vec<Value>, patch: &[Value]) {
    for item in patch {
        let Some((_, id)) = element_id(field, item) else {
            target.push(without_directives(item));
            continue;
        };
        let found = target
            .iter()
            .position(|t| element_id(field, t).is_some_and(|(_, tid)| tid == id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (found, delete) {
            (Some(i), true) => {
                target.remove(i);
            }
            (Some(i), false) => strategic_merge(&mut target[i], item),
            (None, true) => {}
            (None, false) => target.push(without_directives(item)),
        }
    }
}

fn without_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_directives).collect()),
        other => other.clone(),
    }
}

/// Applies a JSON merge patch (RFC 7386).
pub(super) fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies a JSON patch (RFC 6902), or says why it cannot (a failed `test`, a missing
/// path).
pub(super) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    json_patch::patch(target, &ops).map_err(|e| e.to_string())
}

/// The fields no manager owns: identity and bookkeeping.
const UNOWNED: &[&str] = &[
    ".apiVersion",
    ".kind",
    ".metadata.name",
    ".metadata.namespace",
    ".metadata.uid",
    ".metadata.resourceVersion",
    ".metadata.generation",
    ".metadata.creationTimestamp",
    ".metadata.managedFields",
];

/// Every leaf field of `object` by its path as field managers name it
/// (`.spec.template.spec.containers[name="web"].image`), with its value. Lists merged by
/// key are walked element by element; other lists are leaves.
pub(super) fn leaves(object: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    walk(object, String::new(), "", &mut out);
    out.retain(|path, _| {
        !UNOWNED
            .iter()
            .any(|u| path == u || path.starts_with(&format!("{u}.")))
    });
    out
}

fn walk(value: &Value, path: String, field: &str, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                walk(v, format!("{path}.{k}"), k, out);
            }
        }
        Value::Array(items)
            if !items.is_empty() && items.iter().all(|i| element_id(field, i).is_some()) =>
        {
            for item in items {
                if let Some((key, id)) = element_id(field, item) {
                    walk(item, format!("{path}[{key}={id}]"), "", out);
                }
            }
        }
        other => {
            out.insert(path, other.clone());
        }
    }
}

/// One field manager's entry.
#[derive(Debug, Clone)]
struct Manager {
    name: String,
    /// `Apply` or `Update`.
    operation: &'static str,
    api_version: String,
    time: String,
    fields: BTreeSet<String>,
}

/// Who owns which fields of one object.
#[derive(Debug, Clone, Default)]
pub(super) struct Managers {
    entries: Vec<Manager>,
}

/// One conflict of an apply: the manager owning the field, its API version, the path.
type Conflict = (String, String, String);

impl Managers {
    /// The fields in `applied` that another manager than `applier` owns and whose value
    /// in `current` differs.
    pub(super) fn conflicts(
        &self,
        applier: &str,
        applied: &BTreeMap<String, Value>,
        current: &BTreeMap<String, Value>,
    ) -> Vec<Conflict> {
        let mut found = Vec::new();
        for m in self.entries.iter().filter(|m| m.name != applier) {
            for (path, value) in applied {
                if m.fields.contains(path) && current.get(path) != Some(value) {
                    found.push((m.name.clone(), m.api_version.clone(), path.clone()));
                }
            }
        }
        found
    }

    /// `manager` (by `operation`) now owns `paths`: no other manager does.
    pub(super) fn take(
        &mut self,
        manager: &str,
        operation: &'static str,
        api_version: &str,
        paths: impl IntoIterator<Item = String>,
    ) {
        let paths: BTreeSet<String> = paths.into_iter().collect();
        for m in &mut self.entries {
            if m.name != manager || m.operation != operation {
                m.fields.retain(|f| !paths.contains(f));
            }
        }
        self.entries
            .retain(|m| !m.fields.is_empty() || m.name == manager);
        let time = super::store::timestamp();
        match self
            .entries
            .iter_mut()
            .find(|m| m.name == manager && m.operation == operation)
        {
            Some(m) => {
                m.fields.extend(paths);
                m.time = time;
            }
            None => self.entries.push(Manager {
                name: manager.to_owned(),
                operation,
                api_version: api_version.to_owned(),
                time,
                fields: paths,
            }),
        }
    }

    /// `metadata.managedFields` (manager, operation, apiVersion, time; `fieldsV1` empty).
    pub(super) fn to_json(&self) -> Value {
        Value::Array(
            self.entries
                .iter()
                .map(|m| {
                    json!({"manager": m.name, "operation": m.operation, "apiVersion": m.api_version,
                        "time": m.time, "fieldsType": "FieldsV1", "fieldsV1": {}})
                })
                .collect(),
        )
    }
}

/// The message of a 409 for an apply's conflicts, as the API server words it.
pub(super) fn conflict_message(conflicts: &[Conflict]) -> String {
    let n = conflicts.len();
    if let [(manager, version, path)] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with \"{manager}\" using {version}: {path}"
        );
    }
    let mut by_manager: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (m, v, p) in conflicts {
        by_manager.entry((m, v)).or_default().push(p);
    }
    let parts: Vec<String> = by_manager
        .iter()
        .map(|((m, v), paths)| {
            let list: Vec<String> = paths.iter().map(|p| format!("- {p}")).collect();
            format!("conflicts with \"{m}\" using {v}:\n{}", list.join("\n"))
        })
        .collect();
    format!("Apply failed with {n} conflicts: {}", parts.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_merges_containers_and_env_by_name_and_null_deletes() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}], "nodeName": "n"}});
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}],
            "containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
                           {"name": "b", "$patch": "delete"}], "nodeName": null}});
        strategic_merge(&mut pod, &patch);
        assert_eq!(
            pod,
            json!({"spec": {"containers": [{"name": "a", "image": "a:2",
                "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}]}})
        );
    }

    #[test]
    fn leaves_name_list_elements_by_their_key() {
        let d = json!({"apiVersion": "apps/v1", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "w:1"}]}}}});
        let paths: Vec<String> = leaves(&d).into_keys().collect();
        assert_eq!(
            paths,
            [
                ".spec.template.spec.containers[name=\"web\"].image",
                ".spec.template.spec.containers[name=\"web\"].name"
            ]
        );
    }

    #[test]
    fn an_update_takes_fields_from_others_and_an_apply_of_them_conflicts() {
        let mut managers = Managers::default();
        let image = ".spec.image".to_owned();
        managers.take("baton", "Apply", "apps/v1", [image.clone()]);
        managers.take("kubectl-set", "Update", "apps/v1", [image.clone()]);
        let applied = BTreeMap::from([(image.clone(), json!("w:2"))]);
        let current = BTreeMap::from([(image, json!("w:3"))]);
        let conflicts = managers.conflicts("baton", &applied, &current);
        assert_eq!(
            conflict_message(&conflicts),
            "Apply failed with 1 conflict: conflict with \"kubectl-set\" using apps/v1: .spec.image"
        );
        assert!(managers.conflicts("baton", &current, &current).is_empty());
    }
}
