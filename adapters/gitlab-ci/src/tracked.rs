//! What the stored reference holds, and the memory of the pipelines this process follows.
//!
//! The reference is `{id: "<pipeline id>", url: <web_url>, data: {iid, polls,
//! dotenv_artifact, status, sha}}` (the last two once the pipeline ended): every call after `start` works from it alone, so a restarted baton
//! polls, cancels and reads outputs as the one that started the pipeline would. No secret
//! is ever in it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use baton_core::{AdapterError, AttemptKey, ExternalRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::Pipeline;

/// How many pipelines the memory keeps at most; the oldest are forgotten first.
const FOLLOWED_LIMIT: usize = 20_000;

/// The data of a reference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tracked {
    /// The pipeline's number within its project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) iid: Option<u64>,
    /// Polls made so far, for the growing hint.
    #[serde(default)]
    pub(crate) polls: u32,
    /// The stage's `dotenv_artifact`, for `outputs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dotenv_artifact: Option<String>,
    /// The status the poll that saw the end read, so that `outputs` need not read it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<String>,
    /// The commit the pipeline ran for, kept with `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sha: Option<String>,
}

impl Tracked {
    /// The pipeline id and data of `external`, or an error for a reference baton did not
    /// make.
    pub(crate) fn read(external: &ExternalRef) -> Result<(u64, Self), AdapterError> {
        let id = external.id.parse::<u64>().ok().filter(|id| *id > 0);
        let data = match &external.data {
            Value::Null => Some(Self::default()),
            data => serde_json::from_value(data.clone()).ok(),
        };
        match (id, data) {
            (Some(id), Some(data)) => Ok((id, data)),
            _ => Err(AdapterError::Invalid(format!(
                "the stored reference (id `{}`) is not a GitLab pipeline reference baton made",
                external.id
            ))),
        }
    }

    /// The reference of `pipeline` with this data.
    pub(crate) fn reference(&self, pipeline: &Pipeline) -> ExternalRef {
        ExternalRef {
            id: pipeline.id.to_string(),
            url: pipeline.web_url.clone(),
            data: serde_json::to_value(self).unwrap_or(Value::Null),
        }
    }
}

/// Pipeline ids and their attempts, bounded, for Pipeline Hooks and for `find` after a
/// start whose answer arrived but was never stored.
#[derive(Debug, Default)]
pub(crate) struct Followed {
    inner: Mutex<FollowedInner>,
}

#[derive(Debug, Default)]
struct FollowedInner {
    by_pipeline: HashMap<u64, (AttemptKey, ExternalRef)>,
    order: VecDeque<u64>,
}

impl Followed {
    fn lock(&self) -> MutexGuard<'_, FollowedInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers that pipeline `id` (its reference `external`) is `key`'s.
    pub(crate) fn follow(&self, id: u64, key: &AttemptKey, external: &ExternalRef) {
        let mut inner = self.lock();
        if inner
            .by_pipeline
            .insert(id, (key.clone(), external.clone()))
            .is_none()
        {
            inner.order.push_back(id);
        }
        while inner.order.len() > FOLLOWED_LIMIT {
            if let Some(old) = inner.order.pop_front() {
                inner.by_pipeline.remove(&old);
            }
        }
    }

    /// Forgets pipeline `id` (it ended).
    pub(crate) fn forget(&self, id: u64) {
        let mut inner = self.lock();
        if inner.by_pipeline.remove(&id).is_some() {
            inner.order.retain(|p| *p != id);
        }
    }

    /// The attempt pipeline `id` belongs to, if followed.
    pub(crate) fn attempt(&self, id: u64) -> Option<AttemptKey> {
        self.lock().by_pipeline.get(&id).map(|(k, _)| k.clone())
    }

    /// The reference of `key`'s pipeline, if this process knows it.
    pub(crate) fn reference(&self, key: &AttemptKey) -> Option<ExternalRef> {
        self.lock()
            .by_pipeline
            .values()
            .find(|(k, _)| k == key)
            .map(|(_, r)| r.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_round_trip_and_garbage_is_refused() {
        let pipeline = Pipeline {
            id: 901,
            iid: Some(77),
            status: "created".into(),
            web_url: Some("https://gl/g/a/-/pipelines/901".into()),
            sha: None,
        };
        let tracked = Tracked {
            iid: Some(77),
            polls: 2,
            dotenv_artifact: Some("build.env".into()),
            status: None,
            sha: None,
        };
        let external = tracked.reference(&pipeline);
        assert_eq!(external.id, "901");
        assert_eq!(Tracked::read(&external).unwrap(), (901, tracked));
        for (id, data) in [
            ("x", json!(null)),
            ("0", json!(null)),
            ("5", json!("just a string")),
            ("5", json!({"polls": "many"})),
        ] {
            let bad = ExternalRef {
                id: id.into(),
                url: None,
                data,
            };
            assert!(
                matches!(Tracked::read(&bad), Err(AdapterError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_memory_is_bounded() {
        let followed = Followed::default();
        let key = AttemptKey::new("r", "s", 1);
        for id in 0..(FOLLOWED_LIMIT as u64 + 5) {
            followed.follow(id, &key, &ExternalRef::new(id.to_string()));
        }
        assert_eq!(followed.attempt(0), None);
        assert_eq!(followed.attempt(FOLLOWED_LIMIT as u64 + 4), Some(key));
        followed.forget(FOLLOWED_LIMIT as u64 + 4);
        assert_eq!(followed.attempt(FOLLOWED_LIMIT as u64 + 4), None);
    }
}
