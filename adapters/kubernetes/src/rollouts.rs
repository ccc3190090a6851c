//! `set-image` and `apply`: writing the workloads, waiting on their rollouts through the
//! shared watches, undoing them, recording a cancel on them, and reading their outputs.

use std::path::Path;
use std::sync::Arc;

use baton_core::{AdapterError, AttemptKey, ExternalState, PollOutcome};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::POLL_HINT;
use crate::cluster::{Cluster, context};
use crate::config::{Apply, SetImage, WorkloadKind};
use crate::errors::{Call, is_apply_conflict};
use crate::job::ATTEMPT_ANNOTATION;
use crate::reference::{Reference, Rollout, Target};
use crate::rollout::{self, Verdict};
use crate::undo::{self, Plan, revision_of};
use crate::watch::{Seen, Watched};

/// The annotation recording the revision a workload had before baton's write.
pub const REVISION_BEFORE_ANNOTATION: &str = "baton.dev/revision-before";
/// The annotation recording that an attempt undid the workload's rollout.
pub const UNDONE_BY_ANNOTATION: &str = "baton.dev/undone-by";
/// The annotation recording why it was undone.
pub const UNDO_REASON_ANNOTATION: &str = "baton.dev/undo-reason";
/// The annotation recording that an attempt was cancelled while the workload rolled out.
pub const CANCELLED_BY_ANNOTATION: &str = "baton.dev/cancelled-by";
/// The field manager of every write.
pub const FIELD_MANAGER: &str = "baton";

fn call<'a>(verb: &'static str, kind: WorkloadKind, namespace: &'a str, name: &'a str) -> Call<'a> {
    Call {
        verb,
        group: "apps",
        resource: kind.resource(),
        namespace,
        name: Some(name),
    }
}

fn annotation<'a>(object: &'a DynamicObject, name: &str) -> Option<&'a str> {
    object
        .metadata
        .annotations
        .as_ref()?
        .get(name)
        .map(String::as_str)
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// The revision an undo would go back to: a Deployment's revision annotation.
fn revision_now(kind: WorkloadKind, object: &DynamicObject) -> Option<String> {
    match kind {
        WorkloadKind::Deployment => revision_of(object.metadata.annotations.as_ref()),
        WorkloadKind::StatefulSet | WorkloadKind::DaemonSet => None,
    }
}

/// The reference of a workload baton wrote for `key` (found by its annotation).
fn target(kind: WorkloadKind, namespace: &str, object: &DynamicObject) -> Target {
    Target {
        kind,
        namespace: namespace.to_owned(),
        name: object.metadata.name.clone().unwrap_or_default(),
        generation: object.metadata.generation.unwrap_or_default(),
        revision_before: annotation(object, REVISION_BEFORE_ANNOTATION).map(str::to_owned),
    }
}

/// The workload `namespace/name`, `None` when there is none.
async fn get(
    cluster: &Cluster,
    key: &AttemptKey,
    kind: WorkloadKind,
    namespace: &str,
    name: &str,
) -> Result<Option<DynamicObject>, AdapterError> {
    let api = cluster.api(&Watched::Workload(kind).api_resource(), namespace);
    cluster
        .call(key, call("get", kind, namespace, name), api.get_opt(name))
        .await
}

/// `set-image`: the strategic-merge patch of one container's image (as `kubectl set
/// image`), with the attempt key and the revision before it in the same patch; a workload
/// already carrying this key is adopted, never patched twice.
pub(crate) async fn set_image(
    cluster: &Cluster,
    key: &AttemptKey,
    spec: &SetImage,
) -> Result<Reference, AdapterError> {
    let namespace = spec
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.namespace.clone());
    let kind = spec.kind;
    let Some(object) = get(cluster, key, kind, &namespace, &spec.name).await? else {
        return Err(AdapterError::NotFound(format!(
            "{}: {} {namespace}/{} not found",
            context(key),
            kind.key(),
            spec.name
        )));
    };
    let reference = |target| {
        Reference::Rollout(Rollout {
            targets: vec![target],
            undo_on_failure: spec.undo_on_failure,
            container: Some(spec.container.clone()),
        })
    };
    if annotation(&object, ATTEMPT_ANNOTATION) == Some(key.as_str()) {
        return Ok(reference(target(kind, &namespace, &object)));
    }
    let containers = containers(&object.data);
    if !containers.iter().any(|c| c == &spec.container) {
        return Err(AdapterError::Invalid(format!(
            "{}: {} {:?} has no container {:?} (it has: {})",
            context(key),
            kind.key(),
            spec.name,
            spec.container,
            containers.join(", ")
        )));
    }
    let mut annotations = Map::new();
    annotations.insert(ATTEMPT_ANNOTATION.into(), key.as_str().into());
    if let Some(revision) = revision_now(kind, &object) {
        annotations.insert(REVISION_BEFORE_ANNOTATION.into(), revision.into());
    }
    let body = json!({
        "metadata": {"annotations": annotations},
        "spec": {"template": {"spec": {"containers": [{"name": spec.container, "image": spec.image}]}}},
    });
    let api = cluster.api(&Watched::Workload(kind).api_resource(), &namespace);
    let patched = cluster
        .call(
            key,
            call("patch", kind, &namespace, &spec.name),
            api.patch(&spec.name, &patch_params(), &Patch::Strategic(body)),
        )
        .await?;
    Ok(reference(target(kind, &namespace, &patched)))
}

/// The container names of a workload's pod template.
fn containers(data: &Value) -> Vec<String> {
    data.pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

/// The documents of a manifest file.
pub(crate) fn manifest_documents(path: &Path, text: &str) -> Result<Vec<Value>, String> {
    let mut documents = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document)
            .map_err(|e| format!("{}: document {}: {e}", path.display(), i + 1))?;
        if value.is_null() {
            continue;
        }
        for field in ["apiVersion", "kind"] {
            if !value[field].is_string() {
                return Err(format!(
                    "{}: document {}: `{field}` is missing",
                    path.display(),
                    i + 1
                ));
            }
        }
        if !value
            .pointer("/metadata/name")
            .is_some_and(Value::is_string)
        {
            return Err(format!(
                "{}: document {}: `metadata.name` is missing (baton applies named objects only)",
                path.display(),
                i + 1
            ));
        }
        documents.push(value);
    }
    if documents.is_empty() {
        return Err(format!("{}: the manifest holds no object", path.display()));
    }
    Ok(documents)
}

/// One object of a manifest, placed.
struct Placed {
    document: Value,
    resource: kube::api::ApiResource,
    namespace: String,
    name: String,
    workload: Option<WorkloadKind>,
}

impl Placed {
    /// A request `verb` on this object, as RBAC sees it.
    fn call(&self, verb: &'static str) -> Call<'_> {
        Call {
            verb,
            group: &self.resource.group,
            resource: &self.resource.plural,
            namespace: &self.namespace,
            name: Some(&self.name),
        }
    }
}

async fn place(
    cluster: &Cluster,
    key: &AttemptKey,
    spec: &Apply,
) -> Result<Vec<Placed>, AdapterError> {
    let text = tokio::fs::read_to_string(&spec.manifest)
        .await
        .map_err(|e| {
            AdapterError::Invalid(format!(
                "{}: cannot read the manifest {}: {e}",
                context(key),
                spec.manifest.display()
            ))
        })?;
    let documents = manifest_documents(&spec.manifest, &text)
        .map_err(|e| AdapterError::Invalid(format!("{}: {e}", context(key))))?;
    let mut placed = Vec::new();
    for document in documents {
        let api_version = document["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let kind = document["kind"].as_str().unwrap_or_default().to_owned();
        let (resource, namespaced) = cluster.resource_of(key, &api_version, &kind).await?;
        if !namespaced {
            return Err(AdapterError::Invalid(format!(
                "{}: {kind} is not namespaced: baton applies namespaced objects only",
                context(key)
            )));
        }
        let namespace = document
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| spec.namespace.clone())
            .unwrap_or_else(|| cluster.namespace.clone());
        let workload = (resource.group == "apps")
            .then(|| WorkloadKind::from_api_kind(&kind))
            .flatten();
        if spec.undo_on_failure && workload.is_some_and(|k| k != WorkloadKind::Deployment) {
            return Err(AdapterError::Invalid(format!(
                "{}: undo_on_failure undoes Deployments only, and the manifest holds a {kind}",
                context(key)
            )));
        }
        let name = document["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        placed.push(Placed {
            document,
            resource,
            namespace,
            name,
            workload,
        });
    }
    Ok(placed)
}

/// `apply`: server-side apply of every object of the manifest (field manager `baton`,
/// forced only with `force`), each carrying the attempt key; then the rollout of its
/// workloads is what the stage waits on.
pub(crate) async fn apply(
    cluster: &Cluster,
    key: &AttemptKey,
    spec: &Apply,
) -> Result<Reference, AdapterError> {
    let placed = place(cluster, key, spec).await?;
    let mut targets = Vec::new();
    for mut object in placed {
        let api = cluster.api(&object.resource, &object.namespace);
        let before = match object.workload {
            Some(kind) => get(cluster, key, kind, &object.namespace, &object.name).await?,
            None => None,
        };
        let mut document = std::mem::take(&mut object.document);
        document["metadata"]["namespace"] = json!(object.namespace);
        document["metadata"]["annotations"][ATTEMPT_ANNOTATION] = json!(key.as_str());
        if let (Some(kind), Some(before)) = (object.workload, &before)
            && let Some(revision) = revision_now(kind, before)
        {
            document["metadata"]["annotations"][REVISION_BEFORE_ANNOTATION] = json!(revision);
        }
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if spec.force {
            params = params.force();
        }
        let applied = match cluster
            .send(api.patch(&object.name, &params, &Patch::Apply(&document)))
            .await
        {
            Ok(applied) => applied,
            Err(e) if is_apply_conflict(&e) => {
                let said = match &e {
                    kube::Error::Api(status) => status.message.clone(),
                    other => other.to_string(),
                };
                return Err(AdapterError::Invalid(format!(
                    "{}: apply of {} {}/{}: {said}; another field manager owns these fields: set `force: true` to take them over",
                    context(key),
                    object.resource.plural,
                    object.namespace,
                    object.name
                )));
            }
            Err(e) => {
                return Err(crate::errors::classify(
                    &context(key),
                    &object.call("patch"),
                    e,
                ));
            }
        };
        if let Some(kind) = object.workload {
            targets.push(target(kind, &object.namespace, &applied));
        }
    }
    Ok(Reference::Rollout(Rollout {
        targets,
        undo_on_failure: spec.undo_on_failure,
        container: None,
    }))
}

/// `find` for `set-image`: the workload, when it carries this attempt's key.
pub(crate) async fn find_set_image(
    cluster: &Cluster,
    key: &AttemptKey,
    spec: &SetImage,
) -> Result<Option<Reference>, AdapterError> {
    let namespace = spec
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.namespace.clone());
    let found = get(cluster, key, spec.kind, &namespace, &spec.name).await?;
    Ok(found
        .filter(|o| annotation(o, ATTEMPT_ANNOTATION) == Some(key.as_str()))
        .map(|o| {
            Reference::Rollout(Rollout {
                targets: vec![target(spec.kind, &namespace, &o)],
                undo_on_failure: spec.undo_on_failure,
                container: Some(spec.container.clone()),
            })
        }))
}

/// `find` for `apply`: the workloads, when every object of the manifest carries this
/// attempt's key (a partly applied manifest is applied again: server-side apply of the same
/// objects changes nothing twice).
pub(crate) async fn find_apply(
    cluster: &Cluster,
    key: &AttemptKey,
    spec: &Apply,
) -> Result<Option<Reference>, AdapterError> {
    let mut targets = Vec::new();
    for object in place(cluster, key, spec).await? {
        let api = cluster.api(&object.resource, &object.namespace);
        let found = cluster
            .call(key, object.call("get"), api.get_opt(&object.name))
            .await?;
        let Some(found) = found.filter(|o| annotation(o, ATTEMPT_ANNOTATION) == Some(key.as_str()))
        else {
            return Ok(None);
        };
        if let Some(kind) = object.workload {
            targets.push(target(kind, &object.namespace, &found));
        }
    }
    Ok(Some(Reference::Rollout(Rollout {
        targets,
        undo_on_failure: spec.undo_on_failure,
        container: None,
    })))
}

/// The latest object of a target: from the shared watch's store (after registering the
/// attempt as waiting on it), else one GET.
async fn latest(
    cluster: &Cluster,
    key: &AttemptKey,
    target: &Target,
) -> Result<Option<Arc<DynamicObject>>, AdapterError> {
    let seen = cluster.watches.look(
        Watched::Workload(target.kind),
        &target.namespace,
        &target.name,
        key,
    );
    match seen {
        Seen::Synced(Some(object))
            if object.metadata.generation.unwrap_or_default() >= target.generation =>
        {
            Ok(Some(object))
        }
        // Not listed yet, gone, or older than baton's own write: the store may lag the
        // write, so the server decides.
        _ => Ok(
            get(cluster, key, target.kind, &target.namespace, &target.name)
                .await?
                .map(Arc::new),
        ),
    }
}

/// One target's state.
enum Progress {
    /// Waiting, with kubectl's line.
    Waiting(String),
    /// Rolled out.
    Done(String),
    /// Failed, and how (with `undo` when an undo may help).
    Failed { message: String, undo: bool },
    /// Undone by this attempt earlier: the message says so.
    Undone(String),
    /// Cancelled by this attempt earlier.
    Cancelled(String),
}

fn progress(key: &AttemptKey, target: &Target, object: Option<&DynamicObject>) -> Progress {
    let Some(object) = object else {
        return Progress::Failed {
            message: format!(
                "{} {}/{} was deleted",
                target.kind.key(),
                target.namespace,
                target.name
            ),
            undo: false,
        };
    };
    if annotation(object, UNDONE_BY_ANNOTATION) == Some(key.as_str()) {
        let why = annotation(object, UNDO_REASON_ANNOTATION).unwrap_or("the rollout failed");
        return Progress::Undone(format!(
            "{why}; rolled back to revision {}",
            target.revision_before.as_deref().unwrap_or("?")
        ));
    }
    if annotation(object, CANCELLED_BY_ANNOTATION) == Some(key.as_str()) {
        return Progress::Cancelled(format!(
            "cancelled; the rollout of {} {:?} goes on",
            target.kind.key(),
            target.name
        ));
    }
    let other = annotation(object, ATTEMPT_ANNOTATION).unwrap_or_default();
    if other != key.as_str() {
        return Progress::Failed {
            message: format!(
                "{} {:?} was rolled over by another writer (its {ATTEMPT_ANNOTATION} is now {other:?}) before this rollout finished",
                target.kind.key(),
                target.name
            ),
            undo: false,
        };
    }
    let (verdict, diagnostics) = verdict(target.kind, object);
    match verdict {
        Verdict::Waiting(line) if diagnostics.is_empty() => Progress::Waiting(line),
        Verdict::Waiting(line) => Progress::Waiting(format!("{line} ({})", diagnostics.join("; "))),
        Verdict::Done(line) => Progress::Done(line),
        Verdict::Failed(message) => Progress::Failed {
            message,
            undo: true,
        },
    }
}

/// The typed workload of a watched object, read from its JSON in place (every poll reads
/// one, so no copy through text or a second tree).
fn parse<K>(object: &DynamicObject) -> Option<K>
where
    K: serde::de::DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let mut typed = K::deserialize(&object.data).ok()?;
    *typed.metadata_mut() = object.metadata.clone();
    Some(typed)
}

/// kubectl's verdict on a workload, and what else is worth saying while it waits.
fn verdict(kind: WorkloadKind, object: &DynamicObject) -> (Verdict, Vec<String>) {
    let unreadable = || Verdict::Waiting(format!("the {} cannot be read yet", kind.key()));
    match kind {
        WorkloadKind::Deployment => match parse::<Deployment>(object) {
            Some(d) => (rollout::deployment(&d), rollout::deployment_diagnostics(&d)),
            None => (unreadable(), Vec::new()),
        },
        WorkloadKind::StatefulSet => (
            parse::<StatefulSet>(object).map_or_else(unreadable, |s| rollout::statefulset(&s)),
            Vec::new(),
        ),
        WorkloadKind::DaemonSet => (
            parse::<DaemonSet>(object).map_or_else(unreadable, |d| rollout::daemonset(&d)),
            Vec::new(),
        ),
    }
}

/// Polls every workload of the rollout: kubectl's lines while waiting, success once all are
/// rolled out; a failure undoes the Deployments when `undo_on_failure` says so.
pub(crate) async fn poll(
    cluster: &Cluster,
    key: &AttemptKey,
    rollout: &Rollout,
) -> Result<PollOutcome, AdapterError> {
    let mut waiting = Vec::new();
    let mut done = Vec::new();
    let mut failed = Vec::new();
    let mut cancelled = Vec::new();
    for target in &rollout.targets {
        let object = latest(cluster, key, target).await?;
        match progress(key, target, object.as_deref()) {
            Progress::Waiting(line) => match (target.kind, &object) {
                (WorkloadKind::Deployment, Some(object)) => {
                    match cluster.pod_checks.diagnose(cluster, key, object).await {
                        Some(pods) => waiting.push(format!("{line} ({pods})")),
                        None => waiting.push(line),
                    }
                }
                _ => waiting.push(line),
            },
            Progress::Done(line) => done.push(line),
            Progress::Undone(message) => failed.push(message),
            Progress::Cancelled(message) => cancelled.push(message),
            Progress::Failed { message, undo } => {
                let note = if undo && rollout.undo_on_failure {
                    undo_one(cluster, key, target, &message).await?
                } else {
                    None
                };
                let message = match note {
                    Some(note) => format!("{message}; {note}"),
                    None => message,
                };
                failed.push(message);
            }
        }
    }
    let outcome = if !failed.is_empty() {
        terminal(ExternalState::Failed, "failed", failed)
    } else if !cancelled.is_empty() {
        terminal(ExternalState::Cancelled, "cancelled", cancelled)
    } else if waiting.is_empty() {
        terminal(
            ExternalState::Succeeded { warnings: false },
            "rolled out",
            done,
        )
    } else {
        let mut outcome = PollOutcome::state(ExternalState::Running)
            .with_message(waiting.join("; "))
            .next_poll(POLL_HINT);
        outcome.raw = Some("rolling out".into());
        return Ok(outcome);
    };
    for target in &rollout.targets {
        cluster.watches.release(
            Watched::Workload(target.kind),
            &target.namespace,
            &target.name,
            key,
        );
    }
    cluster.pod_checks.forget(key);
    Ok(outcome)
}

fn terminal(state: ExternalState, raw: &str, lines: Vec<String>) -> PollOutcome {
    let mut outcome = PollOutcome::state(state).with_message(lines.join("; "));
    outcome.raw = Some(raw.to_owned());
    outcome
}

/// Undoes one Deployment's rollout for `reason` (as `kubectl rollout undo` to the revision
/// it had before baton's write), recording on it that this attempt did; the note for the
/// stage's message, `None` for a workload that cannot be undone.
async fn undo_one(
    cluster: &Cluster,
    key: &AttemptKey,
    target: &Target,
    reason: &str,
) -> Result<Option<String>, AdapterError> {
    if target.kind != WorkloadKind::Deployment {
        return Ok(None);
    }
    let Some(revision) = target.revision_before.as_deref() else {
        return Ok(Some(format!(
            "not rolled back: deployment {:?} had no revision before this rollout",
            target.name
        )));
    };
    // The object a poll decided on may be the watch's copy from before this attempt's own
    // undo (a poll that follows the undo before the watch does, or a baton resumed after
    // one): the server's copy, read under the lock, decides whether the undo is still due,
    // so it is done once.
    let _one_at_a_time = cluster.undoing.lock().await;
    let Some(fresh) = get(cluster, key, target.kind, &target.namespace, &target.name).await? else {
        return Ok(Some(format!(
            "not rolled back: deployment {:?} was deleted",
            target.name
        )));
    };
    if annotation(&fresh, UNDONE_BY_ANNOTATION) == Some(key.as_str()) {
        return Ok(Some(format!("rolled back to revision {revision}")));
    }
    let Some(deployment) = parse::<Deployment>(&fresh) else {
        return Ok(Some(format!(
            "not rolled back: deployment {:?} cannot be read",
            target.name
        )));
    };
    let selector = deployment
        .spec
        .selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let sets: kube::Api<ReplicaSet> =
        kube::Api::namespaced(cluster.client.clone(), &target.namespace);
    let rbac = Call {
        verb: "list",
        group: "apps",
        resource: "replicasets",
        namespace: &target.namespace,
        name: None,
    };
    let listed = cluster
        .call(
            key,
            rbac,
            sets.list(&ListParams::default().labels(&selector)),
        )
        .await?;
    let extra = [
        (UNDONE_BY_ANNOTATION, key.as_str()),
        (UNDO_REASON_ANNOTATION, reason),
        (ATTEMPT_ANNOTATION, key.as_str()),
    ];
    let api = cluster.api(
        &Watched::Workload(target.kind).api_resource(),
        &target.namespace,
    );
    let patch_call = call("patch", target.kind, &target.namespace, &target.name);
    match undo::plan(&deployment, &listed.items, revision, &extra) {
        Ok(Plan::Patch(patch)) => {
            let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| {
                AdapterError::Protocol(format!("{}: the undo patch: {e}", context(key)))
            })?;
            cluster
                .call(
                    key,
                    patch_call,
                    api.patch(&target.name, &patch_params(), &Patch::Json::<()>(patch)),
                )
                .await?;
            Ok(Some(format!("rolled back to revision {revision}")))
        }
        Ok(Plan::AlreadyThere) => {
            let marks: Map<String, Value> = extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect();
            let body = json!({"metadata": {"annotations": marks}});
            cluster
                .call(
                    key,
                    patch_call,
                    api.patch(&target.name, &patch_params(), &Patch::Merge(body)),
                )
                .await?;
            Ok(Some(format!(
                "not rolled back: deployment {:?} already has the template of revision {revision}",
                target.name
            )))
        }
        Err(refusal) => Ok(Some(format!("not rolled back: {refusal}"))),
    }
}

/// Cancel (and timeout): finished rollouts are left alone; with `undo_on_failure` each
/// Deployment still rolling out is undone; otherwise the cancel is recorded on the workload
/// (so a poll answers `Cancelled`) and the rollout goes on. The note says what was done.
pub(crate) async fn cancel(
    cluster: &Cluster,
    key: &AttemptKey,
    rollout: &Rollout,
) -> Result<Option<String>, AdapterError> {
    let mut notes = Vec::new();
    cluster.pod_checks.forget(key);
    for target in &rollout.targets {
        cluster.watches.release(
            Watched::Workload(target.kind),
            &target.namespace,
            &target.name,
            key,
        );
        let Some(object) = get(cluster, key, target.kind, &target.namespace, &target.name).await?
        else {
            continue;
        };
        let kind = target.kind.key();
        let reason = match progress(key, target, Some(&object)) {
            Progress::Waiting(_) => format!("{kind} {:?} was stopped by baton", target.name),
            // Past its deadline, but no poll has seen it yet (the stage timed out first):
            // the undo the failure calls for is still due.
            Progress::Failed {
                message,
                undo: true,
            } if rollout.undo_on_failure => message,
            // Finished one way or another: nothing to change.
            _ => continue,
        };
        if rollout.undo_on_failure && target.kind == WorkloadKind::Deployment {
            if let Some(note) = undo_one(cluster, key, target, &reason).await? {
                let note = note.replacen(
                    "rolled back to",
                    &format!("rolled back {kind} {:?} to", target.name),
                    1,
                );
                notes.push(note);
            }
            continue;
        }
        let body = json!({"metadata": {"annotations": {CANCELLED_BY_ANNOTATION: key.as_str()}}});
        let api = cluster.api(
            &Watched::Workload(target.kind).api_resource(),
            &target.namespace,
        );
        cluster
            .call(
                key,
                call("patch", target.kind, &target.namespace, &target.name),
                api.patch(&target.name, &patch_params(), &Patch::Merge(body)),
            )
            .await?;
        notes.push(format!(
            "the rollout of {kind} {:?} goes on (a cancel does not stop it)",
            target.name
        ));
    }
    Ok((!notes.is_empty()).then(|| notes.join("; ")))
}

/// The outputs of one workload: `kind`, `namespace`, `name`, `revision`, `image` (the
/// set-image container's, else the first container's), `replicas`, `ready_replicas`.
fn workload_outputs(
    target: &Target,
    object: &DynamicObject,
    container: Option<&str>,
) -> Map<String, Value> {
    let data = &object.data;
    let containers = data
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let image = containers
        .iter()
        .find(|c| container.is_none_or(|name| c["name"] == name))
        .and_then(|c| c["image"].as_str())
        .map_or(Value::Null, Value::from);
    let status = &data["status"];
    let (revision, replicas, ready) = match target.kind {
        WorkloadKind::Deployment => (
            revision_of(object.metadata.annotations.as_ref()).map_or(Value::Null, Value::from),
            data.pointer("/spec/replicas").cloned(),
            status.get("readyReplicas").cloned(),
        ),
        WorkloadKind::StatefulSet => (
            status.get("updateRevision").cloned().unwrap_or(Value::Null),
            data.pointer("/spec/replicas").cloned(),
            status.get("readyReplicas").cloned(),
        ),
        WorkloadKind::DaemonSet => (
            status
                .get("observedGeneration")
                .cloned()
                .unwrap_or(Value::Null),
            status.get("desiredNumberScheduled").cloned(),
            status.get("numberReady").cloned(),
        ),
    };
    let mut out = Map::new();
    out.insert("kind".into(), target.kind.api_kind().into());
    out.insert("namespace".into(), target.namespace.clone().into());
    out.insert("name".into(), target.name.clone().into());
    out.insert("revision".into(), revision);
    out.insert("image".into(), image);
    out.insert("replicas".into(), replicas.unwrap_or(json!(1)));
    out.insert("ready_replicas".into(), ready.unwrap_or(json!(0)));
    out
}

/// The outputs: one workload's (`set-image`), or `workloads`, one entry each (`apply`).
pub(crate) async fn outputs(
    cluster: &Cluster,
    key: &AttemptKey,
    rollout: &Rollout,
) -> Result<Map<String, Value>, AdapterError> {
    let mut each = Vec::new();
    for target in &rollout.targets {
        let object = latest(cluster, key, target).await?.ok_or_else(|| {
            AdapterError::NotFound(format!(
                "{}: {} {}/{} is gone",
                context(key),
                target.kind.key(),
                target.namespace,
                target.name
            ))
        })?;
        each.push(workload_outputs(
            target,
            &object,
            rollout.container.as_deref(),
        ));
    }
    if rollout.container.is_some() && each.len() == 1 {
        return Ok(each.remove(0));
    }
    let mut out = Map::new();
    out.insert(
        "workloads".into(),
        Value::Array(each.into_iter().map(Value::Object).collect()),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn manifests_are_read_document_by_document() {
        let path = Path::new("app.yaml");
        let docs = manifest_documents(path, "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["kind"], "Deployment");
        assert!(
            manifest_documents(path, "kind: X\nmetadata: {name: a}\n")
                .unwrap_err()
                .contains("document 1: `apiVersion` is missing")
        );
        assert!(
            manifest_documents(path, "apiVersion: v1\nkind: X\n")
                .unwrap_err()
                .contains("metadata.name")
        );
        assert!(
            manifest_documents(path, "---\n")
                .unwrap_err()
                .contains("no object")
        );
    }

    #[test]
    fn a_poll_reads_baton_s_own_marks_first() {
        let key = AttemptKey::new("r", "deploy", 1);
        let target = Target {
            kind: WorkloadKind::Deployment,
            namespace: "app".into(),
            name: "web".into(),
            generation: 2,
            revision_before: Some("3".into()),
        };
        let with = |annotations: Value| {
            object(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "generation": 2, "annotations": annotations},
                "spec": {"replicas": 1, "selector": {}, "template": {"spec": {"containers": [{"name": "web", "image": "web:2"}]}}},
                "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1, "readyReplicas": 1},
            }))
        };
        let undone = with(
            json!({ATTEMPT_ANNOTATION: "r/deploy/1", UNDONE_BY_ANNOTATION: "r/deploy/1", UNDO_REASON_ANNOTATION: "deployment \"web\" exceeded its progress deadline"}),
        );
        assert!(
            matches!(progress(&key, &target, Some(&undone)), Progress::Undone(m) if m == "deployment \"web\" exceeded its progress deadline; rolled back to revision 3")
        );
        let cancelled =
            with(json!({ATTEMPT_ANNOTATION: "r/deploy/1", CANCELLED_BY_ANNOTATION: "r/deploy/1"}));
        assert!(matches!(
            progress(&key, &target, Some(&cancelled)),
            Progress::Cancelled(_)
        ));
        let other = with(json!({ATTEMPT_ANNOTATION: "r2/deploy/1"}));
        assert!(matches!(
            progress(&key, &target, Some(&other)),
            Progress::Failed { undo: false, .. }
        ));
        let ours = with(json!({ATTEMPT_ANNOTATION: "r/deploy/1", undo::REVISION_ANNOTATION: "4"}));
        assert!(
            matches!(progress(&key, &target, Some(&ours)), Progress::Done(m) if m == "deployment \"web\" successfully rolled out")
        );
        assert!(matches!(
            progress(&key, &target, None),
            Progress::Failed { undo: false, .. }
        ));
        let out = workload_outputs(&target, &ours, Some("web"));
        assert_eq!(
            Value::Object(out),
            json!({"kind": "Deployment", "namespace": "app", "name": "web", "revision": "4", "image": "web:2", "replicas": 1, "ready_replicas": 1})
        );
    }
}
