//! What the stored reference holds, and the memory of the builds this process started or
//! adopted.
//!
//! The reference is `{id: "<build id>", url: <the build's page>, data: {pipeline, job,
//! instance_vars, name, polls, since_ms, status, check}}` (`status` once the build ended):
//! every call after `start` works from it alone, so a restarted baton polls, aborts and
//! reads outputs as the one that started the build would. No secret is ever in it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use baton_core::{AdapterError, AttemptKey, ExternalRef};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How many attempts the memory keeps at most; the oldest are forgotten first.
const REMEMBERED: usize = 20_000;

/// The resource check a stage asked for before its build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Checked {
    /// The resource checked.
    pub(crate) resource: String,
    /// The version it was checked from (`None`: a plain check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<Map<String, Value>>,
}

/// The data of a reference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tracked {
    pub(crate) pipeline: String,
    pub(crate) job: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub(crate) instance_vars: Map<String, Value>,
    /// The build's name: its number within the job.
    pub(crate) name: String,
    /// Polls made so far, for the growing hint.
    #[serde(default)]
    pub(crate) polls: u32,
    /// When baton created or adopted the build (Unix ms), for how long it has been pending.
    #[serde(default)]
    pub(crate) since_ms: u64,
    /// The status the poll that saw the end read, so that `outputs` need not read it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<String>,
    /// The check made before the build, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) check: Option<Checked>,
}

impl Tracked {
    /// The build id and data of `external`, or an error for a reference baton did not
    /// make.
    pub(crate) fn read(external: &ExternalRef) -> Result<(u64, Self), AdapterError> {
        let id = external.id.parse::<u64>().ok().filter(|id| *id > 0);
        let data = serde_json::from_value::<Self>(external.data.clone())
            .ok()
            .filter(|t| !t.pipeline.is_empty() && !t.job.is_empty());
        match (id, data) {
            (Some(id), Some(data)) => Ok((id, data)),
            _ => Err(AdapterError::Invalid(format!(
                "the stored reference (id `{}`) is not a Concourse build reference baton made",
                external.id
            ))),
        }
    }

    /// The reference of build `id`, whose page is `url`, with this data.
    pub(crate) fn reference(&self, id: u64, url: &str) -> ExternalRef {
        ExternalRef {
            id: id.to_string(),
            url: Some(url.to_owned()),
            data: serde_json::to_value(self).unwrap_or(Value::Null),
        }
    }
}

/// The references of attempts this process started or adopted, bounded, so that `find`
/// after a start whose answer arrived but was never stored needs no request.
#[derive(Debug, Default)]
pub(crate) struct Remembered {
    inner: Mutex<(HashMap<AttemptKey, ExternalRef>, VecDeque<AttemptKey>)>,
}

impl Remembered {
    fn lock(&self) -> MutexGuard<'_, (HashMap<AttemptKey, ExternalRef>, VecDeque<AttemptKey>)> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers that `key`'s build is `external`.
    pub(crate) fn remember(&self, key: &AttemptKey, external: &ExternalRef) {
        let mut guard = self.lock();
        let (by_key, order) = &mut *guard;
        if by_key.insert(key.clone(), external.clone()).is_none() {
            order.push_back(key.clone());
        }
        while order.len() > REMEMBERED {
            if let Some(old) = order.pop_front() {
                by_key.remove(&old);
            }
        }
    }

    /// `key`'s build, if this process knows it.
    pub(crate) fn get(&self, key: &AttemptKey) -> Option<ExternalRef> {
        self.lock().0.get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_round_trip_and_garbage_is_refused() {
        let tracked = Tracked {
            pipeline: "app".into(),
            job: "deploy".into(),
            instance_vars: json!({"branch": "main"}).as_object().cloned().unwrap(),
            name: "42".into(),
            polls: 2,
            since_ms: 1_700_000_000_000,
            status: None,
            check: Some(Checked {
                resource: "repo".into(),
                version: json!({"ref": "abc"}).as_object().cloned(),
            }),
        };
        let external = tracked.reference(
            4711,
            "https://ci/teams/main/pipelines/app/jobs/deploy/builds/42",
        );
        assert_eq!(external.id, "4711");
        assert_eq!(Tracked::read(&external).unwrap(), (4711, tracked));
        for (id, data) in [
            ("x", json!({"pipeline": "p", "job": "j", "name": "1"})),
            ("0", json!({"pipeline": "p", "job": "j", "name": "1"})),
            ("5", json!(null)),
            ("5", json!({"pipeline": "", "job": "j", "name": "1"})),
            (
                "5",
                json!({"pipeline": "p", "job": "j", "name": "1", "polls": "many"}),
            ),
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
        let remembered = Remembered::default();
        let key = |n: usize| AttemptKey::new("r", "s", n as u32 + 1);
        for n in 0..(REMEMBERED + 5) {
            remembered.remember(&key(n), &ExternalRef::new(n.to_string()));
        }
        assert_eq!(remembered.get(&key(0)), None);
        assert_eq!(
            remembered.get(&key(REMEMBERED + 4)).map(|r| r.id),
            Some((REMEMBERED + 4).to_string())
        );
    }
}
