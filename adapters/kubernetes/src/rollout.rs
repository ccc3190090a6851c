//! Whether a workload's rollout is done, decided exactly as `kubectl rollout status` decides
//! it, with kubectl's own messages (the rules of
//! `staging/src/k8s.io/kubectl/pkg/polymorphichelpers/rollout_status.go`).
//!
//! Each function reads one object as the API server returned it and gives a [`Verdict`];
//! nothing here waits or asks the server anything.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};

/// How far a rollout is, with kubectl's line for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Still rolling out.
    Waiting(String),
    /// Rolled out.
    Done(String),
    /// Will not finish (its progress deadline passed, or kubectl cannot follow it).
    Failed(String),
}

impl Verdict {
    /// The line, whatever the verdict.
    pub fn message(&self) -> &str {
        match self {
            Self::Waiting(m) | Self::Done(m) | Self::Failed(m) => m,
        }
    }
}

/// The `Progressing` condition's reason once `spec.progressDeadlineSeconds` has passed.
pub const DEADLINE_REASON: &str = "ProgressDeadlineExceeded";

/// The one strategy kubectl follows for StatefulSets and DaemonSets.
const ROLLING_UPDATE: &str = "RollingUpdate";

/// A Deployment's verdict. A paused Deployment never completes: kubectl keeps waiting, and
/// the line says why.
pub fn deployment(object: &Deployment) -> Verdict {
    let name = object.metadata.name.as_deref().unwrap_or_default();
    let generation = object.metadata.generation.unwrap_or_default();
    let status = object.status.clone().unwrap_or_default();
    let spec = &object.spec;
    if generation > status.observed_generation.unwrap_or_default() {
        return Verdict::Waiting("Waiting for deployment spec update to be observed...".into());
    }
    let deadline_passed = status.conditions.iter().flatten().any(|c| {
        c.type_.as_deref() == Some("Progressing") && c.reason.as_deref() == Some(DEADLINE_REASON)
    });
    if deadline_passed {
        return Verdict::Failed(format!(
            "deployment {name:?} exceeded its progress deadline"
        ));
    }
    let updated = status.updated_replicas.unwrap_or_default();
    let replicas = status.replicas.unwrap_or_default();
    let available = status.available_replicas.unwrap_or_default();
    let waiting = |what: String| {
        let paused = if spec.paused == Some(true) {
            " (the deployment is paused: nothing moves until it is resumed)"
        } else {
            ""
        };
        Verdict::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {what}...{paused}"
        ))
    };
    if let Some(wanted) = spec.replicas
        && updated < wanted
    {
        return waiting(format!(
            "{updated} out of {wanted} new replicas have been updated"
        ));
    }
    if replicas > updated {
        return waiting(format!(
            "{} old replicas are pending termination",
            replicas - updated
        ));
    }
    if available < updated {
        return waiting(format!(
            "{available} of {updated} updated replicas are available"
        ));
    }
    if spec.paused == Some(true) {
        // kubectl would say "successfully rolled out" of a paused Deployment whose counts
        // happen to match; a paused rollout has not been carried out, so baton waits.
        return Verdict::Waiting(format!(
            "deployment {name:?} is paused: waiting for it to be resumed"
        ));
    }
    Verdict::Done(format!("deployment {name:?} successfully rolled out"))
}

/// A StatefulSet's verdict (only the `RollingUpdate` strategy can be followed).
pub fn statefulset(object: &StatefulSet) -> Verdict {
    let generation = object.metadata.generation.unwrap_or_default();
    let status = object.status.clone().unwrap_or_default();
    let spec = &object.spec;
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or(ROLLING_UPDATE) != ROLLING_UPDATE {
        return not_rolling_update();
    }
    let observed = status.observed_generation.unwrap_or_default();
    if observed == 0 || generation > observed {
        return Verdict::Waiting("Waiting for statefulset spec update to be observed...".into());
    }
    let ready = status.ready_replicas.unwrap_or_default();
    if let Some(wanted) = spec.replicas
        && ready < wanted
    {
        return Verdict::Waiting(format!(
            "Waiting for {} pods to be ready...",
            wanted - ready
        ));
    }
    let updated = status.updated_replicas.unwrap_or_default();
    if let Some(rolling) = &strategy.rolling_update {
        if let (Some(wanted), Some(partition)) = (spec.replicas, rolling.partition)
            && updated < wanted - partition
        {
            return Verdict::Waiting(format!(
                "Waiting for partitioned roll out to finish: {updated} out of {} new pods have been updated...",
                wanted - partition
            ));
        }
        return Verdict::Done(format!(
            "partitioned roll out complete: {updated} new pods have been updated..."
        ));
    }
    let update_revision = status.update_revision.unwrap_or_default();
    let current_revision = status.current_revision.unwrap_or_default();
    if update_revision != current_revision {
        return Verdict::Waiting(format!(
            "waiting for statefulset rolling update to complete {updated} pods at revision {update_revision}..."
        ));
    }
    Verdict::Done(format!(
        "statefulset rolling update complete {} pods at revision {current_revision}...",
        status.current_replicas.unwrap_or_default()
    ))
}

/// A DaemonSet's verdict (only the `RollingUpdate` strategy can be followed).
pub fn daemonset(object: &DaemonSet) -> Verdict {
    let name = object.metadata.name.as_deref().unwrap_or_default();
    let generation = object.metadata.generation.unwrap_or_default();
    let status = object.status.clone().unwrap_or_default();
    let strategy = object
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref());
    if strategy.unwrap_or(ROLLING_UPDATE) != ROLLING_UPDATE {
        return not_rolling_update();
    }
    if generation > status.observed_generation.unwrap_or_default() {
        return Verdict::Waiting("Waiting for daemon set spec update to be observed...".into());
    }
    let desired = status.desired_number_scheduled;
    let updated = status.updated_number_scheduled.unwrap_or_default();
    let available = status.number_available.unwrap_or_default();
    if updated < desired {
        return Verdict::Waiting(format!(
            "Waiting for daemon set {name:?} rollout to finish: {updated} out of {desired} new pods have been updated..."
        ));
    }
    if available < desired {
        return Verdict::Waiting(format!(
            "Waiting for daemon set {name:?} rollout to finish: {available} of {desired} updated pods are available..."
        ));
    }
    Verdict::Done(format!("daemon set {name:?} successfully rolled out"))
}

fn not_rolling_update() -> Verdict {
    Verdict::Failed(format!(
        "rollout status is only available for {ROLLING_UPDATE} strategy type"
    ))
}

/// What kubectl does not look at but a person wants to see while waiting: a Deployment's
/// `ReplicaFailure=True` condition (a quota refusing pods). Empty when there is none.
pub fn deployment_diagnostics(object: &Deployment) -> Vec<String> {
    let conditions = object.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .filter(|c| {
            c.type_.as_deref() == Some("ReplicaFailure") && c.status.as_deref() == Some("True")
        })
        .map(|c| {
            let reason = c.reason.as_deref().unwrap_or("ReplicaFailure");
            match c.message.as_deref() {
                Some(message) if !message.is_empty() => format!("{reason}: {message}"),
                _ => reason.to_owned(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! Case by case, the branches of kubectl's
    //! `staging/src/k8s.io/kubectl/pkg/polymorphichelpers/rollout_status.go`.

    use serde_json::{Value, json};

    use super::*;

    fn parsed<T: serde::de::DeserializeOwned>(value: Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    fn deploy(generation: i64, spec: Value, status: Value) -> Deployment {
        parsed(json!({
            "metadata": {"name": "web", "generation": generation},
            "spec": spec, "status": status,
        }))
    }

    #[test]
    fn deployment_table() {
        let selector = json!({"matchLabels": {"app": "web"}});
        let spec =
            |replicas: i32| json!({"replicas": replicas, "selector": selector, "template": {}});
        let deadline = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]);
        let cases = [
            (
                deploy(2, spec(3), json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3})),
                Verdict::Waiting("Waiting for deployment spec update to be observed...".into()),
            ),
            (
                deploy(2, spec(3), json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1, "availableReplicas": 3})),
                Verdict::Waiting("Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated...".into()),
            ),
            (
                deploy(2, spec(3), json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3})),
                Verdict::Waiting("Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...".into()),
            ),
            (
                deploy(2, spec(3), json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2})),
                Verdict::Waiting("Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available...".into()),
            ),
            (
                deploy(2, spec(3), json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3})),
                Verdict::Done("deployment \"web\" successfully rolled out".into()),
            ),
            (
                // The deadline wins over the counts, but only once the generation is observed.
                deploy(2, spec(3), json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3, "conditions": deadline})),
                Verdict::Failed("deployment \"web\" exceeded its progress deadline".into()),
            ),
            (
                deploy(3, spec(3), json!({"observedGeneration": 2, "conditions": deadline})),
                Verdict::Waiting("Waiting for deployment spec update to be observed...".into()),
            ),
            (
                // Without spec.replicas the first check is skipped.
                deploy(1, json!({"selector": selector, "template": {}}), json!({"observedGeneration": 1, "replicas": 0, "updatedReplicas": 0})),
                Verdict::Done("deployment \"web\" successfully rolled out".into()),
            ),
        ];
        for (i, (object, expected)) in cases.iter().enumerate() {
            assert_eq!(&deployment(object), expected, "case {i}");
        }
    }

    #[test]
    fn a_paused_deployment_says_so_and_never_completes() {
        let base = json!({"replicas": 2, "paused": true, "selector": {}, "template": {}});
        let moving = deploy(
            2,
            base.clone(),
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 2}),
        );
        let Verdict::Waiting(line) = deployment(&moving) else {
            panic!()
        };
        assert!(
            line.starts_with("Waiting for deployment \"web\" rollout to finish: 1 out of 2"),
            "{line}"
        );
        assert!(line.contains("paused"), "{line}");
        let still = deploy(
            2,
            base,
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        assert!(matches!(deployment(&still), Verdict::Waiting(line) if line.contains("paused")));
    }

    #[test]
    fn replica_failure_is_a_diagnostic() {
        let object = deploy(
            1,
            json!({"selector": {}, "template": {}}),
            json!({"conditions": [
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "exceeded quota"},
                {"type": "ReplicaFailure", "status": "False", "reason": "Cleared"},
            ]}),
        );
        assert_eq!(
            deployment_diagnostics(&object),
            ["FailedCreate: exceeded quota"]
        );
    }

    fn sts(generation: i64, spec: Value, status: Value) -> StatefulSet {
        let mut spec = spec;
        spec["selector"] = json!({});
        spec["template"] = json!({});
        spec["serviceName"] = json!("db");
        parsed(
            json!({"metadata": {"name": "db", "generation": generation}, "spec": spec, "status": status}),
        )
    }

    #[test]
    fn statefulset_table() {
        let plain = json!({"replicas": 3, "updateStrategy": {"type": "RollingUpdate"}});
        let partitioned = json!({"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}});
        let cases = [
            (sts(1, plain.clone(), json!({"replicas": 3})), Verdict::Waiting("Waiting for statefulset spec update to be observed...".into())),
            (sts(3, plain.clone(), json!({"replicas": 3, "observedGeneration": 2})), Verdict::Waiting("Waiting for statefulset spec update to be observed...".into())),
            (sts(2, plain.clone(), json!({"replicas": 3, "observedGeneration": 2, "readyReplicas": 1})), Verdict::Waiting("Waiting for 2 pods to be ready...".into())),
            (
                sts(2, partitioned.clone(), json!({"replicas": 3, "observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 1})),
                Verdict::Waiting("Waiting for partitioned roll out to finish: 1 out of 2 new pods have been updated...".into()),
            ),
            (
                sts(2, partitioned, json!({"replicas": 3, "observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 2})),
                Verdict::Done("partitioned roll out complete: 2 new pods have been updated...".into()),
            ),
            (
                sts(2, plain.clone(), json!({"replicas": 3, "observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 2, "currentReplicas": 1, "currentRevision": "db-1", "updateRevision": "db-2"})),
                Verdict::Waiting("waiting for statefulset rolling update to complete 2 pods at revision db-2...".into()),
            ),
            (
                sts(2, plain, json!({"replicas": 3, "observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3, "currentReplicas": 3, "currentRevision": "db-2", "updateRevision": "db-2"})),
                Verdict::Done("statefulset rolling update complete 3 pods at revision db-2...".into()),
            ),
            (
                sts(1, json!({"replicas": 3, "updateStrategy": {"type": "OnDelete"}}), json!({"replicas": 3, "observedGeneration": 1})),
                Verdict::Failed("rollout status is only available for RollingUpdate strategy type".into()),
            ),
        ];
        for (i, (object, expected)) in cases.iter().enumerate() {
            assert_eq!(&statefulset(object), expected, "case {i}");
        }
    }

    fn ds(generation: i64, strategy: &str, status: Value) -> DaemonSet {
        parsed(json!({
            "metadata": {"name": "d", "generation": generation},
            "spec": {"selector": {}, "template": {}, "updateStrategy": {"type": strategy}},
            "status": status,
        }))
    }

    #[test]
    fn daemonset_table() {
        let counts = |updated: i32, available: i32| {
            json!({
                "observedGeneration": 2, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
                "numberMisscheduled": 0, "numberReady": available,
                "updatedNumberScheduled": updated, "numberAvailable": available,
            })
        };
        let mut behind = counts(3, 3);
        behind["observedGeneration"] = json!(1);
        let cases = [
            (ds(2, "RollingUpdate", behind), Verdict::Waiting("Waiting for daemon set spec update to be observed...".into())),
            (ds(2, "RollingUpdate", counts(1, 3)), Verdict::Waiting("Waiting for daemon set \"d\" rollout to finish: 1 out of 3 new pods have been updated...".into())),
            (ds(2, "RollingUpdate", counts(3, 2)), Verdict::Waiting("Waiting for daemon set \"d\" rollout to finish: 2 of 3 updated pods are available...".into())),
            (ds(2, "RollingUpdate", counts(3, 3)), Verdict::Done("daemon set \"d\" successfully rolled out".into())),
            (ds(2, "OnDelete", counts(3, 3)), Verdict::Failed("rollout status is only available for RollingUpdate strategy type".into())),
        ];
        for (i, (object, expected)) in cases.iter().enumerate() {
            assert_eq!(&daemonset(object), expected, "case {i}");
        }
    }
}
