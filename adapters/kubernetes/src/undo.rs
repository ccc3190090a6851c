//! Undoing a Deployment's rollout as `kubectl rollout undo` does it (the rules of
//! `staging/src/k8s.io/kubectl/pkg/polymorphichelpers/rollback.go`): the ReplicaSet of the
//! revision to go back to gives its pod template back to the Deployment in one JSON patch.
//!
//! Pure: [`plan`] reads the Deployment and its ReplicaSets and says what to send.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use serde_json::{Value, json};

/// The annotation holding a Deployment's (and its ReplicaSets') revision number.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// The label the Deployment controller adds to each ReplicaSet's template.
const HASH_LABEL: &str = "pod-template-hash";

/// Annotations a rollback leaves as the Deployment has them instead of taking the
/// ReplicaSet's (kubectl's `annotationsToSkip`).
const SKIPPED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// What undoing comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Send this JSON patch (`application/json-patch+json`) to the Deployment.
    Patch(Value),
    /// The Deployment's template already is the one of that revision: nothing to send.
    AlreadyThere,
}

/// Why a Deployment cannot be undone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// kubectl refuses to roll a paused Deployment back.
    #[error(
        "deployment {0:?} is paused: it cannot be rolled back until it is resumed (kubectl rollout resume)"
    )]
    Paused(String),
    /// No ReplicaSet of the Deployment holds that revision any more (its history limit
    /// removed it).
    #[error("deployment {name:?} has no ReplicaSet at revision {revision} to roll back to")]
    NoRevision {
        /// The Deployment.
        name: String,
        /// The revision asked for.
        revision: String,
    },
}

/// The revision annotation of an object's metadata, if any.
pub fn revision_of(annotations: Option<&BTreeMap<String, String>>) -> Option<String> {
    annotations?.get(REVISION_ANNOTATION).cloned()
}

/// Plans going back to `revision`: `replica_sets` are the ReplicaSets listed by the
/// Deployment's selector (those another owner holds are ignored); `extra` annotations (baton's
/// own record of the undo) are added to the ones kubectl would write.
pub fn plan(
    deployment: &Deployment,
    replica_sets: &[ReplicaSet],
    revision: &str,
    extra: &[(&str, &str)],
) -> Result<Plan, Refusal> {
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let spec = &deployment.spec;
    if spec.paused == Some(true) {
        return Err(Refusal::Paused(name));
    }
    let uid = deployment.metadata.uid.as_deref();
    let owned = |rs: &&ReplicaSet| {
        rs.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|owner| owner.controller == Some(true) && Some(owner.uid.as_str()) == uid)
    };
    let Some(target) = replica_sets
        .iter()
        .filter(owned)
        .find(|rs| revision_of(rs.metadata.annotations.as_ref()).as_deref() == Some(revision))
    else {
        return Err(Refusal::NoRevision {
            name,
            revision: revision.to_owned(),
        });
    };
    let template = target
        .spec
        .template
        .as_ref()
        .map(|t| without_hash(serde_json::to_value(t).unwrap_or_default()))
        .unwrap_or_default();
    let current = without_hash(serde_json::to_value(&spec.template).unwrap_or_default());
    if template == current {
        return Ok(Plan::AlreadyThere);
    }
    let own = deployment.metadata.annotations.clone().unwrap_or_default();
    let mut annotations: BTreeMap<String, String> = SKIPPED
        .iter()
        .filter_map(|k| own.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    for (k, v) in target.metadata.annotations.iter().flatten() {
        if !SKIPPED.contains(&k.as_str()) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in extra {
        annotations.insert((*k).to_owned(), (*v).to_owned());
    }
    Ok(Plan::Patch(json!([
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": annotations},
    ])))
}

/// A pod template without the `pod-template-hash` label (and without a label map the
/// removal leaves empty, so that `{}` and no labels compare equal).
fn without_hash(mut template: Value) -> Value {
    if let Some(metadata) = template.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(labels) = metadata.get_mut("labels").and_then(Value::as_object_mut) {
            labels.remove(HASH_LABEL);
            if labels.is_empty() {
                metadata.remove("labels");
            }
        }
        if metadata.is_empty() {
            template.as_object_mut().map(|t| t.remove("metadata"));
        }
    }
    template
}

#[cfg(test)]
mod tests {
    //! As `staging/src/k8s.io/kubectl/pkg/polymorphichelpers/rollback.go` decides.

    use super::*;

    fn template(image: &str, hash: Option<&str>) -> Value {
        let mut labels = json!({"app": "web"});
        if let Some(hash) = hash {
            labels[HASH_LABEL] = json!(hash);
        }
        json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "web", "image": image}]}})
    }

    fn deployment(image: &str, paused: bool) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "uid": "d-1", "annotations": {
                REVISION_ANNOTATION: "2",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "team": "new",
            }},
            "spec": {"paused": paused, "selector": {"matchLabels": {"app": "web"}}, "template": template(image, None)},
        }))
        .unwrap()
    }

    fn replica_set(name: &str, revision: &str, image: &str, owner: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "annotations": {REVISION_ANNOTATION: revision, "team": "old", "deployment.kubernetes.io/desired-replicas": "3"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": owner, "controller": true}],
            },
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template(image, Some(name))},
        }))
        .unwrap()
    }

    #[test]
    fn the_remembered_revision_gives_its_template_back_without_the_hash() {
        let sets = [
            replica_set("web-a", "1", "web:1", "d-1"),
            replica_set("web-b", "2", "web:2", "d-1"),
            // Same revision, another owner: never chosen.
            replica_set("other-1", "1", "evil:1", "someone-else"),
        ];
        let plan = plan(
            &deployment("web:2", false),
            &sets,
            "1",
            &[("baton.dev/undone-by", "r/s/1")],
        )
        .unwrap();
        let Plan::Patch(patch) = plan else {
            panic!("{plan:?}")
        };
        assert_eq!(
            patch[0],
            json!({"op": "replace", "path": "/spec/template", "value": template("web:1", None)})
        );
        assert_eq!(
            patch[1],
            json!({"op": "replace", "path": "/metadata/annotations", "value": {
                // The skip list keeps the Deployment's values; the rest comes from the RS.
                "baton.dev/undone-by": "r/s/1",
                REVISION_ANNOTATION: "2",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "team": "old",
            }})
        );
    }

    #[test]
    fn the_same_template_ignoring_the_hash_needs_nothing() {
        let sets = [replica_set("web-a", "1", "web:1", "d-1")];
        assert_eq!(
            plan(&deployment("web:1", false), &sets, "1", &[]),
            Ok(Plan::AlreadyThere)
        );
    }

    #[test]
    fn paused_or_missing_revisions_are_refused() {
        let sets = [replica_set("web-a", "1", "web:1", "d-1")];
        assert_eq!(
            plan(&deployment("web:2", true), &sets, "1", &[]),
            Err(Refusal::Paused("web".into()))
        );
        let missing = plan(&deployment("web:2", false), &sets, "7", &[]).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "deployment \"web\" has no ReplicaSet at revision 7 to roll back to"
        );
    }
}
