//! Pipeline Hook deliveries of a `gitlab` source: the attempts they concern.

use baton_core::{AttemptKey, SourceDelivery};
use serde::Deserialize;

use crate::GitLabAdapter;
use crate::config::ATTEMPT_VARIABLE;

/// The event name GitLab sends in `X-Gitlab-Event` for pipelines, as the source stores it.
const PIPELINE_HOOK: &str = "Pipeline Hook";

#[derive(Debug, Deserialize)]
struct Hook {
    object_attributes: Attributes,
}

#[derive(Debug, Deserialize)]
struct Attributes {
    id: u64,
    #[serde(default)]
    variables: Vec<HookVariable>,
}

#[derive(Debug, Deserialize)]
struct HookVariable {
    key: String,
    #[serde(default)]
    value: Option<String>,
}

impl GitLabAdapter {
    /// The attempts a delivery concerns: the one following the pipeline it names, and the
    /// one its `BATON_ATTEMPT` variable names. Anything but a `gitlab` Pipeline Hook is
    /// passed over without reading its body.
    pub(crate) fn hook_attempts(&self, delivery: &SourceDelivery<'_>) -> Vec<AttemptKey> {
        if delivery.kind != "gitlab" || delivery.event != PIPELINE_HOOK {
            return Vec::new();
        }
        let Ok(hook) = serde_json::from_str::<Hook>(delivery.body) else {
            return Vec::new();
        };
        let mut keys = Vec::new();
        if let Some(key) = self.inner.followed.attempt(hook.object_attributes.id) {
            keys.push(key);
        }
        let named = hook
            .object_attributes
            .variables
            .iter()
            .filter(|v| v.key == ATTEMPT_VARIABLE)
            .filter_map(|v| v.value.as_deref().and_then(AttemptKey::parse));
        for key in named {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RetryPolicy, config};
    use baton_core::{ExternalRef, Secret};
    use serde_json::json;

    const FIXTURE: &str = include_str!("../../../tests/fixtures/gitlab/pipeline.json");

    #[test]
    fn pipeline_hooks_name_the_attempts_they_concern() {
        let config = config::parse_instance(&json!({
            "url": "http://127.0.0.1:9", "project": "g/a", "token": {"env": "T"},
        }))
        .unwrap();
        let a = GitLabAdapter::new(
            "gl",
            &config,
            Secret::new("t"),
            None,
            RetryPolicy::default(),
        )
        .unwrap();
        let key = AttemptKey::new("r1", "deploy", 1);
        let delivery = |kind: &'static str, event: &'static str, body: &'static str| {
            a.hook_attempts(&SourceDelivery {
                source: "gl",
                kind,
                event,
                body,
            })
        };
        // GitLab's own example names pipeline 31, which nobody follows yet.
        assert!(delivery("gitlab", "Pipeline Hook", FIXTURE).is_empty());
        a.inner.followed.follow(31, &key, &ExternalRef::new("31"));
        assert_eq!(
            delivery("gitlab", "Pipeline Hook", FIXTURE),
            std::slice::from_ref(&key)
        );
        assert!(delivery("gitlab", "Push Hook", FIXTURE).is_empty());
        assert!(delivery("github", "Pipeline Hook", FIXTURE).is_empty());
        assert!(delivery("gitlab", "Pipeline Hook", "not json").is_empty());
        let named = r#"{"object_attributes": {"id": 5, "variables": [{"key": "BATON_ATTEMPT", "value": "r2/x/3"}, {"key": "BATON_ATTEMPT", "value": "nonsense"}]}}"#;
        assert_eq!(
            delivery("gitlab", "Pipeline Hook", named),
            [AttemptKey::new("r2", "x", 3)]
        );
        a.inner.followed.forget(31);
        assert!(delivery("gitlab", "Pipeline Hook", FIXTURE).is_empty());
    }
}
