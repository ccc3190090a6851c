//! The API's verbs on stored objects (get, list, create, update, patch, delete, a pod's
//! log), answering with the object or with a `Status` failure as the API server words it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::controllers::{self, Propagation};
use super::patch;
use super::resources::Resource;
use super::select::Selector;
use super::store::{Key, metadata};
use super::{State, Write};

/// What a request addresses: a resource type, in a namespace (`""` for cluster-scoped, or
/// every namespace for a list or watch without one), maybe one object, maybe its
/// subresource.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) resource: Resource,
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
    pub(super) subresource: Option<String>,
}

impl Target {
    fn key(&self, name: &str) -> Key {
        let ns = self.namespace.clone().unwrap_or_default();
        (self.resource.plural.to_owned(), ns, name.to_owned())
    }
}

/// A refusal, sent as a `Status` object.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) code: u16,
    pub(super) reason: &'static str,
    pub(super) message: String,
    pub(super) details: Value,
}

impl Failure {
    /// The `Status` body.
    pub(super) fn body(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}

/// A refusal about object `name` of `resource`.
pub(super) fn failure(
    code: u16,
    reason: &'static str,
    message: String,
    resource: &Resource,
    name: &str,
) -> Failure {
    Failure {
        code,
        reason,
        message,
        details: json!({"name": name, "group": resource.group, "kind": resource.plural}),
    }
}

fn not_found(resource: &Resource, name: &str) -> Failure {
    let message = format!("{} \"{name}\" not found", resource.qualified());
    failure(404, "NotFound", message, resource, name)
}

fn invalid(resource: &Resource, name: &str, why: &str) -> Failure {
    let kind = match resource.group {
        "" => resource.kind.to_owned(),
        group => format!("{}.{group}", resource.kind),
    };
    let message = format!("{kind} \"{name}\" is invalid: {why}");
    failure(422, "Invalid", message, resource, name)
}

/// An answer: the status code and body, or a refusal.
pub(super) type Answer = Result<(u16, Value), Failure>;

/// `GET` of one object (the whole of it, also for its `status` subresource).
pub(super) fn get(state: &State, target: &Target, name: &str) -> Answer {
    let object = state.store.get(&target.key(name));
    object
        .map(|o| (200, o.clone()))
        .ok_or_else(|| not_found(&target.resource, name))
}

/// `GET` of a collection: the matching objects and the list's resourceVersion. A
/// resourceVersion asked for exactly that the history no longer holds is 410.
pub(super) fn list(state: &State, target: &Target, query: &BTreeMap<String, String>) -> Answer {
    let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
    let asked = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse::<u64>().ok());
    if let Some(rv) = asked.filter(|rv| exact && *rv != 0 && *rv < state.store.floor()) {
        return Err(expired(rv, state.store.floor()));
    }
    let selector = Selector::parse(
        query.get("labelSelector").map(String::as_str),
        query.get("fieldSelector").map(String::as_str),
    );
    let items: Vec<Value> = state
        .store
        .list(target.resource.plural, target.namespace.as_deref())
        .map(|(_, o)| o)
        .filter(|o| selector.matches(o))
        .cloned()
        .collect();
    Ok((
        200,
        json!({
            "kind": format!("{}List", target.resource.kind),
            "apiVersion": target.resource.api_version(),
            "metadata": {"resourceVersion": state.store.rv().to_string()},
            "items": items,
        }),
    ))
}

/// The 410 for a resourceVersion older than the history kept.
pub(super) fn expired(rv: u64, floor: u64) -> Failure {
    Failure {
        code: 410,
        reason: "Expired",
        message: format!("too old resource version: {rv} ({floor})"),
        details: Value::Null,
    }
}

/// `POST`: stores a new object (named by `metadata.name`, or `generateName` and five
/// characters), 409 when the name is taken. `manager`, if any, owns every field it set,
/// by `operation` (`Update`, or `Apply` for an apply that creates).
pub(super) fn create(
    state: &mut State,
    target: &Target,
    mut body: Value,
    manager: Option<&str>,
    operation: &'static str,
) -> Answer {
    let resource = target.resource;
    let meta = metadata(&mut body);
    let name = match (meta.get("name"), meta.get("generateName")) {
        (Some(Value::String(n)), _) if !n.is_empty() => n.clone(),
        (_, Some(Value::String(prefix))) => {
            let prefix = prefix.clone();
            format!("{prefix}{}", state.store.random_suffix())
        }
        _ => {
            return Err(invalid(
                &resource,
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
    };
    let key = target.key(&name);
    if state.store.get(&key).is_some() {
        let message = format!("{} \"{name}\" already exists", resource.qualified());
        return Err(failure(409, "AlreadyExists", message, &resource, &name));
    }
    for field in [
        "resourceVersion",
        "uid",
        "deletionTimestamp",
        "managedFields",
    ] {
        metadata(&mut body).remove(field);
    }
    controllers::defaults(resource.plural, &mut body);
    if let Some(manager) = manager {
        let mut managers = patch::Managers::default();
        managers.take(
            manager,
            operation,
            &resource.api_version(),
            patch::leaves(&body).into_keys(),
        );
        metadata(&mut body).insert("managedFields".into(), managers.to_json());
        state.managers.insert(key.clone(), managers);
    }
    Ok((201, state.store.insert(key, body)))
}

/// `PUT`: replaces the object; a stale `metadata.resourceVersion` is a 409 Conflict.
pub(super) fn update(
    state: &mut State,
    target: &Target,
    name: &str,
    body: Value,
    manager: Option<&str>,
) -> Answer {
    let key = target.key(name);
    let current = state
        .store
        .get(&key)
        .cloned()
        .ok_or_else(|| not_found(&target.resource, name))?;
    let given = body["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !given.is_empty() && Some(given) != current["metadata"]["resourceVersion"].as_str() {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            target.resource.qualified()
        );
        return Err(failure(409, "Conflict", message, &target.resource, name));
    }
    Ok((
        200,
        store_change(state, target, &key, &current, body, manager, "Update"),
    ))
}

/// `PATCH` by content type. An apply creates the object when missing, and is a 409 when
/// it sets a field another manager owns to another value (unless `force`).
pub(super) fn patch(
    state: &mut State,
    target: &Target,
    name: &str,
    content_type: &str,
    body: Value,
    manager: Option<&str>,
    force: bool,
) -> Answer {
    let resource = target.resource;
    let key = target.key(name);
    let apply = content_type == "application/apply-patch+yaml";
    if !apply {
        return plain_patch(state, target, &key, content_type, &body, manager);
    }
    let Some(manager) = manager else {
        return Err(Failure {
            code: 422,
            reason: "Invalid",
            message: "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: \
                      is required for apply patch"
                .to_owned(),
            details: json!({"group": "meta.k8s.io", "kind": "PatchOptions"}),
        });
    };
    let Some(current) = state.store.get(&key).cloned() else {
        let mut body = body;
        metadata(&mut body).insert("name".into(), json!(name));
        return create(state, target, body, Some(manager), "Apply");
    };
    let applied = patch::leaves(&body);
    let managers = state.managers.entry(key.clone()).or_default();
    let conflicts = managers.conflicts(manager, &applied, &patch::leaves(&current));
    if !conflicts.is_empty() && !force {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, v, p)| {
                json!({"reason": "FieldManagerConflict",
                    "message": format!("conflict with \"{m}\" using {v}"), "field": p})
            })
            .collect();
        let mut refusal = failure(
            409,
            "Conflict",
            patch::conflict_message(&conflicts),
            &resource,
            name,
        );
        refusal.details["causes"] = Value::Array(causes);
        return Err(refusal);
    }
    managers.take(
        manager,
        "Apply",
        &resource.api_version(),
        applied.into_keys(),
    );
    let mut next = current.clone();
    patch::strategic_merge(&mut next, &body);
    Ok((
        200,
        store_change(state, target, &key, &current, next, None, "Apply"),
    ))
}

fn plain_patch(
    state: &mut State,
    target: &Target,
    key: &Key,
    content_type: &str,
    body: &Value,
    manager: Option<&str>,
) -> Answer {
    let resource = target.resource;
    let current = state
        .store
        .get(key)
        .cloned()
        .ok_or_else(|| not_found(&resource, &key.2))?;
    let mut next = current.clone();
    match content_type {
        "application/strategic-merge-patch+json" => patch::strategic_merge(&mut next, body),
        "application/merge-patch+json" => patch::merge(&mut next, body),
        "application/json-patch+json" => {
            patch::json_patch(&mut next, body).map_err(|why| invalid(&resource, &key.2, &why))?;
        }
        _ => {
            return Err(Failure {
                code: 415,
                reason: "UnsupportedMediaType",
                message: "the body of the request was in an unknown format - accepted media \
                          types include: application/json-patch+json, \
                          application/merge-patch+json, application/apply-patch+yaml, \
                          application/strategic-merge-patch+json"
                    .to_owned(),
                details: Value::Null,
            });
        }
    }
    Ok((
        200,
        store_change(state, target, key, &current, next, manager, "Update"),
    ))
}

/// Stores `next` in place of `current`: only `status` changes through the `status`
/// subresource, and never through the object itself for kinds that have one. `manager`
/// takes the fields the change set. A change that changes nothing writes nothing.
fn store_change(
    state: &mut State,
    target: &Target,
    key: &Key,
    current: &Value,
    mut next: Value,
    manager: Option<&str>,
    operation: &'static str,
) -> Value {
    if target.subresource.as_deref() == Some("status") {
        let status = next["status"].take();
        next = current.clone();
        next["status"] = status;
    } else if target.resource.has_status {
        match current.get("status") {
            Some(status) => next["status"] = status.clone(),
            None => {
                if let Value::Object(map) = &mut next {
                    map.remove("status");
                }
            }
        }
    }
    for field in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
    ] {
        match current["metadata"].get(field) {
            Some(v) => metadata(&mut next).insert(field.into(), v.clone()),
            None => metadata(&mut next).remove(field),
        };
    }
    if let Some(manager) = manager {
        let before = patch::leaves(current);
        let changed: Vec<String> = patch::leaves(&next)
            .into_iter()
            .filter(|(path, v)| before.get(path) != Some(v))
            .map(|(path, _)| path)
            .collect();
        let managers = state.managers.entry(key.clone()).or_default();
        managers.take(manager, operation, &target.resource.api_version(), changed);
    }
    if let Some(managers) = state.managers.get(key) {
        metadata(&mut next).insert("managedFields".into(), managers.to_json());
    }
    if next == *current {
        return next;
    }
    state.store.replace(key.clone(), next)
}

/// `DELETE`: by `propagation` (a Job's pods are orphaned by default, with the warning the
/// API server sends). Answers the object (marked for deletion, when its dependents go
/// first) or a `Success` status, and the warning, if any.
pub(super) fn delete(
    state: &mut State,
    target: &Target,
    name: &str,
    propagation: Option<Propagation>,
) -> (Answer, Option<&'static str>) {
    let key = target.key(name);
    if state.store.get(&key).is_none() {
        return (Err(not_found(&target.resource, name)), None);
    }
    let (policy, warning) = match (propagation, target.resource.plural) {
        (Some(p), _) => (p, None),
        (None, "jobs") => (Propagation::Orphan, Some(JOB_ORPHAN_WARNING)),
        (None, _) => (Propagation::Background, None),
    };
    let answer = match controllers::gc::delete(state, &key, policy) {
        Some(marked) => (200, marked),
        None => {
            state.managers.remove(&key);
            (
                200,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": target.resource.group, "kind": target.resource.plural}}),
            )
        }
    };
    (Ok(answer), warning)
}

/// The `Warning` header of a Job deleted without a propagation policy.
const JOB_ORPHAN_WARNING: &str = "299 - \"child pods are preserved by default when jobs are \
    deleted; set propagationPolicy=Background to remove them or set propagationPolicy=Orphan \
    to suppress this warning\"";

/// `GET pods/{name}/log`: what the pod's container wrote so far (`tailLines`,
/// `limitBytes` and `timestamps` honoured).
pub(super) fn log(
    state: &State,
    target: &Target,
    name: &str,
    query: &BTreeMap<String, String>,
) -> Result<String, Failure> {
    let key = target.key(name);
    if state.store.get(&key).is_none() {
        return Err(not_found(&target.resource, name));
    }
    let text = controllers::kubelet::log(state, &key).unwrap_or_default();
    let mut lines: Vec<&str> = text.lines().collect();
    if let Some(n) = query.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        lines = lines.split_off(lines.len().saturating_sub(n));
    }
    let stamp = query.get("timestamps").is_some_and(|t| t == "true");
    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string();
    let mut out: String = lines
        .iter()
        .map(|l| {
            if stamp {
                format!("{now} {l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    if let Some(limit) = query
        .get("limitBytes")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let mut cut = limit.min(out.len());
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    Ok(out)
}

/// Records a write request to `key`.
pub(super) fn record(state: &mut State, key: Key, write: Write) {
    state.writes.entry(key).or_default().push(write);
}
