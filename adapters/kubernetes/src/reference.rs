//! What a stage's [`ExternalRef`] carries: enough to poll, cancel and read outputs after a
//! restart. A reference that cannot be read is an error, never a panic.

use baton_core::{AdapterError, AttemptKey, ExternalRef};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::WorkloadKind;

/// The reference's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum Reference {
    /// `set-image` or `apply`: workloads rolling out.
    Rollout(Rollout),
    /// `job`: one Job.
    Job(JobRef),
}

/// The workloads a `set-image` or `apply` stage waits on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rollout {
    /// Their namespace (an `apply` may touch several: each target has its own).
    pub(crate) targets: Vec<Target>,
    /// Whether a failure, timeout or cancel undoes the Deployments' rollouts.
    pub(crate) undo_on_failure: bool,
    /// The container whose image `set-image` changed; `None` for `apply`.
    #[serde(default)]
    pub(crate) container: Option<String>,
}

/// One workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Target {
    /// Its kind.
    pub(crate) kind: WorkloadKind,
    /// Its namespace.
    pub(crate) namespace: String,
    /// Its name.
    pub(crate) name: String,
    /// `metadata.generation` after baton's write: an older object seen later is stale.
    pub(crate) generation: i64,
    /// The Deployment's revision before baton's write (what an undo goes back to).
    #[serde(default)]
    pub(crate) revision_before: Option<String>,
}

/// A Job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobRef {
    /// Its namespace.
    pub(crate) namespace: String,
    /// Its name.
    pub(crate) name: String,
    /// How it ended, read before its TTL can delete it.
    #[serde(default)]
    pub(crate) ended: Option<Ended>,
}

/// A Job's end, as read when its terminal condition was seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ended {
    /// `Complete` (else `Failed`).
    pub(crate) succeeded: bool,
    /// The stage's message.
    pub(crate) message: String,
    /// The component's outputs.
    pub(crate) outputs: Map<String, Value>,
    /// The log's tail.
    pub(crate) log_tail: String,
}

impl Reference {
    /// The reference to store; `id` names the first object.
    pub(crate) fn external(&self) -> ExternalRef {
        let id = match self {
            Self::Rollout(r) => r
                .targets
                .first()
                .map(|t| format!("{}/{}/{}", t.kind.key(), t.namespace, t.name))
                .unwrap_or_else(|| "apply".to_owned()),
            Self::Job(j) => format!("job/{}/{}", j.namespace, j.name),
        };
        ExternalRef {
            id,
            url: None,
            data: serde_json::to_value(self).unwrap_or_default(),
        }
    }

    /// Reads a stored reference.
    pub(crate) fn read(key: &AttemptKey, external: &ExternalRef) -> Result<Self, AdapterError> {
        serde_json::from_value(external.data.clone()).map_err(|e| {
            AdapterError::Protocol(format!(
                "kubernetes {key}: the stored reference `{}` cannot be read: {e}",
                external.id
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn references_round_trip_and_garbage_is_an_error() {
        let key = AttemptKey::new("r", "s", 1);
        let rollout = Reference::Rollout(Rollout {
            targets: vec![Target {
                kind: WorkloadKind::Deployment,
                namespace: "app".into(),
                name: "web".into(),
                generation: 4,
                revision_before: Some("3".into()),
            }],
            undo_on_failure: true,
            container: Some("web".into()),
        });
        let external = rollout.external();
        assert_eq!(external.id, "deployment/app/web");
        assert_eq!(Reference::read(&key, &external).unwrap(), rollout);
        for garbage in [
            json!(null),
            json!(7),
            json!({"action": "rm -rf"}),
            json!({"action": "job", "name": 3}),
        ] {
            let bad = ExternalRef {
                data: garbage.clone(),
                ..external.clone()
            };
            assert!(
                matches!(Reference::read(&key, &bad), Err(AdapterError::Protocol(_))),
                "{garbage}"
            );
        }
    }
}
