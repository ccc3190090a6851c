//! What kubectl does not look at but a person waiting wants to know: a Deployment's pods
//! stuck in `ImagePullBackOff`, `ErrImagePull` or `CrashLoopBackOff`. Only rollouts that
//! have waited a while are looked at, and each at most every [`EVERY`], so quick rollouts
//! cost no request. A failure here is logged, never a stage's failure.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use baton_core::AttemptKey;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, ListParams};

use crate::cluster::Cluster;

/// How long a rollout waits before its pods are looked at.
pub(crate) const AFTER: Duration = Duration::from_secs(5);
/// How often they are looked at again.
pub(crate) const EVERY: Duration = Duration::from_secs(10);
/// The waiting reasons worth saying.
const STUCK: [&str; 3] = ["ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff"];
/// How many pods a line names.
const NAMED: usize = 3;

/// When each waiting attempt was first seen waiting, last looked at, and what was found.
#[derive(Debug, Default)]
pub(crate) struct Checks(Mutex<HashMap<AttemptKey, Check>>);

#[derive(Debug, Clone)]
struct Check {
    since: Instant,
    looked: Option<Instant>,
    found: Option<String>,
}

/// The pods of `pods` stuck in a waiting reason worth saying, as one line; `None` if none.
pub(crate) fn stuck(pods: &[Pod]) -> Option<String> {
    let mut lines = Vec::new();
    for pod in pods {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        for status in statuses.into_iter().flatten() {
            let waiting = status.state.as_ref().and_then(|s| s.waiting.as_ref());
            let Some(reason) = waiting.and_then(|w| w.reason.as_deref()) else {
                continue;
            };
            if STUCK.contains(&reason) {
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                lines.push(format!("pod {name}: {reason}"));
            }
        }
    }
    if lines.is_empty() {
        return None;
    }
    let more = lines.len().saturating_sub(NAMED);
    lines.truncate(NAMED);
    if more > 0 {
        lines.push(format!("{more} more"));
    }
    Some(lines.join(", "))
}

impl Checks {
    /// Forgets `key` (its stage ended).
    pub(crate) fn forget(&self, key: &AttemptKey) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// What the pods of the waiting Deployment `object` say, looked at when it is due.
    pub(crate) async fn diagnose(
        &self,
        cluster: &Cluster,
        key: &AttemptKey,
        object: &DynamicObject,
    ) -> Option<String> {
        let now = Instant::now();
        {
            let mut checks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let check = checks.entry(key.clone()).or_insert(Check {
                since: now,
                looked: None,
                found: None,
            });
            let due = now.duration_since(check.since) >= AFTER
                && check
                    .looked
                    .is_none_or(|at| now.duration_since(at) >= EVERY);
            if !due {
                return check.found.clone();
            }
            check.looked = Some(now);
        }
        let selector = object
            .data
            .pointer("/spec/selector/matchLabels")
            .and_then(serde_json::Value::as_object)?
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(",");
        let namespace = object.metadata.namespace.as_deref().unwrap_or_default();
        let pods: kube::Api<Pod> = kube::Api::namespaced(cluster.client.clone(), namespace);
        let found = match cluster
            .send(pods.list(&ListParams::default().labels(&selector)))
            .await
        {
            Ok(list) => stuck(&list.items),
            Err(e) => {
                tracing::debug!(%key, error = %e, "cannot list the pods of a waiting rollout");
                None
            }
        };
        if let Some(check) = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(key)
        {
            check.found.clone_from(&found);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, reason: Option<&str>) -> Pod {
        let state = match reason {
            Some(reason) => json!({"waiting": {"reason": reason}}),
            None => json!({"running": {}}),
        };
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"containerStatuses": [{"name": "web", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": state}]},
        }))
        .unwrap()
    }

    #[test]
    fn only_stuck_pods_are_named_and_a_few_at_most() {
        assert_eq!(
            stuck(&[pod("a", None), pod("b", Some("ContainerCreating"))]),
            None
        );
        let pods: Vec<Pod> = (0..5)
            .map(|i| pod(&format!("web-{i}"), Some(STUCK[i % 3])))
            .collect();
        assert_eq!(
            stuck(&pods).as_deref(),
            Some(
                "pod web-0: ImagePullBackOff, pod web-1: ErrImagePull, pod web-2: CrashLoopBackOff, 2 more"
            )
        );
    }
}
