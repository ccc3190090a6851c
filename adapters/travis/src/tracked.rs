//! What the stored reference holds, and what this process remembers of the attempts it
//! follows.
//!
//! An attempt's work is first a request (`{id: "request:<id>", url: <the repository's
//! requests page>}`), then, once Travis made its build, the build (`{id: "<build id>",
//! url: <the build's page>}`); the poll that sees the build replaces the reference. The
//! reference's `data` holds everything later calls need, so a restarted baton carries on
//! from it alone. No secret is ever in it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use baton_core::{AdapterError, AttemptKey, ExternalRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::Job;

/// How many attempts the memory keeps; the oldest are forgotten first.
const REMEMBERED: usize = 20_000;

/// The reference's `data`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tracked {
    /// The request, once known: the create's answer names it on current Travis; on older
    /// versions `find` names it later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) request: Option<u64>,
    /// The build, once Travis made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) build: Option<u64>,
    /// The build's number in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) number: Option<String>,
    /// When the request was created (ms since the epoch), for `request_timeout_build`.
    pub(crate) requested_ms: u64,
    /// How long the request may wait for its build (ms).
    pub(crate) wait_ms: u64,
    /// Polls made so far, for the growing hint.
    #[serde(default)]
    pub(crate) polls: u32,
    /// The end: the build's state once it ended (or `rejected`, or `no_build`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) end: Option<String>,
    /// The jobs as the poll that saw the end read them, so that `outputs` need not read
    /// the build again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) jobs: Vec<Job>,
}

impl Tracked {
    /// The data of `external`, or an error for a reference baton did not make.
    pub(crate) fn read(external: &ExternalRef) -> Result<Self, AdapterError> {
        serde_json::from_value::<Self>(external.data.clone())
            .ok()
            .filter(Self::complete)
            .ok_or_else(|| {
                AdapterError::Invalid(format!(
                    "the stored reference `{}` is not a Travis request or build reference baton made",
                    external.id
                ))
            })
    }

    /// A wait for a build, and something to follow: a request, a build, or a creation time
    /// to look for a request from.
    fn complete(&self) -> bool {
        let known = self.request.is_some() || self.build.is_some() || self.requested_ms > 0;
        self.wait_ms > 0 && known
    }

    /// When the request's wait for a build ends (ms since the epoch).
    pub(crate) fn deadline_ms(&self) -> u64 {
        self.requested_ms.saturating_add(self.wait_ms)
    }

    /// The reference's id: the build's, else the request's.
    pub(crate) fn id(&self) -> String {
        match (self.build, self.request) {
            (Some(build), _) => build.to_string(),
            (None, Some(request)) => format!("request:{request}"),
            (None, None) => format!("request-created-at:{}", self.requested_ms),
        }
    }

    /// The reference, with `web` the repository's pages (`<web>/<owner>/<name>`).
    pub(crate) fn reference(&self, web: &str) -> ExternalRef {
        let url = match self.build {
            Some(build) => format!("{web}/builds/{build}"),
            None => format!("{web}/requests"),
        };
        ExternalRef {
            id: self.id(),
            url: Some(url),
            data: serde_json::to_value(self).unwrap_or(Value::Null),
        }
    }
}

/// The attempts this process follows: their last reference, and which build is whose (for
/// Travis's notifications and for `find` after a create whose answer was never stored).
#[derive(Debug, Default)]
pub(crate) struct Memory {
    inner: Mutex<Remembered>,
}

#[derive(Debug, Default)]
struct Remembered {
    /// Each attempt's last reference and its build, if it has one.
    references: HashMap<AttemptKey, (ExternalRef, Option<u64>)>,
    builds: HashMap<u64, AttemptKey>,
    arrival: VecDeque<AttemptKey>,
}

impl Remembered {
    fn remove(&mut self, key: &AttemptKey) -> bool {
        let Some((_, build)) = self.references.remove(key) else {
            return false;
        };
        if let Some(build) = build {
            self.builds.remove(&build);
        }
        true
    }
}

impl Memory {
    fn lock(&self) -> MutexGuard<'_, Remembered> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers `external` (whose data is `tracked`) as `key`'s work.
    pub(crate) fn keep(&self, key: &AttemptKey, tracked: &Tracked, external: &ExternalRef) {
        let mut memory = self.lock();
        let entry = (external.clone(), tracked.build);
        if memory.references.insert(key.clone(), entry).is_none() {
            memory.arrival.push_back(key.clone());
        }
        if let Some(build) = tracked.build {
            memory.builds.insert(build, key.clone());
        }
        while memory.references.len() > REMEMBERED {
            let Some(old) = memory.arrival.pop_front() else {
                break;
            };
            memory.remove(&old);
        }
    }

    /// Forgets `key` (its work ended).
    pub(crate) fn drop_key(&self, key: &AttemptKey) {
        let mut memory = self.lock();
        if memory.remove(key) {
            memory.arrival.retain(|k| k != key);
        }
    }

    /// `key`'s last reference, if this process knows it.
    pub(crate) fn reference(&self, key: &AttemptKey) -> Option<ExternalRef> {
        self.lock().references.get(key).map(|(r, _)| r.clone())
    }

    /// The attempt following build `build`.
    pub(crate) fn owner_of(&self, build: u64) -> Option<AttemptKey> {
        self.lock().builds.get(&build).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_request_becomes_a_build_and_garbage_is_refused() {
        let mut t = Tracked {
            request: Some(7),
            requested_ms: 1_000,
            wait_ms: 300_000,
            ..Tracked::default()
        };
        let web = "https://app.travis-ci.com/octo/app";
        let r = t.reference(web);
        assert_eq!(r.id, "request:7");
        assert_eq!(
            r.url.as_deref(),
            Some("https://app.travis-ci.com/octo/app/requests")
        );
        assert_eq!(Tracked::read(&r).unwrap(), t);
        assert_eq!(t.deadline_ms(), 301_000);
        t.build = Some(99);
        let r = t.reference(web);
        assert_eq!(
            (r.id.as_str(), r.url.as_deref()),
            ("99", Some("https://app.travis-ci.com/octo/app/builds/99"))
        );
        assert_eq!(Tracked::read(&r).unwrap().build, Some(99));
        let lost = Tracked { request: None, ..t };
        assert_eq!(
            Tracked {
                build: None,
                ..lost
            }
            .id(),
            "request-created-at:1000"
        );
        let read = |data| {
            Tracked::read(&ExternalRef {
                data,
                ..ExternalRef::new("1")
            })
        };
        let garbage = [
            json!(null),
            json!("x"),
            json!({"request": 1}),
            json!({"wait_ms": "long"}),
            json!({"wait_ms": 0, "request": 1, "requested_ms": 5}),
            json!({"wait_ms": 5, "requested_ms": 0}),
        ];
        for data in garbage {
            let refused = read(data.clone());
            assert!(matches!(refused, Err(AdapterError::Invalid(_))), "{data}");
        }
        for data in [
            json!({"wait_ms": 1, "requested_ms": 7}),
            json!({"wait_ms": 1, "requested_ms": 0, "build": 3}),
            json!({"wait_ms": 1, "requested_ms": 0, "request": 3}),
        ] {
            assert!(read(data.clone()).is_ok(), "{data}");
        }
    }

    #[test]
    fn the_memory_is_bounded_and_knows_whose_build_is_whose() {
        let memory = Memory::default();
        let key = |n: usize| AttemptKey::new("r", "s", n as u32);
        for n in 0..REMEMBERED + 3 {
            let t = Tracked {
                build: Some(n as u64),
                wait_ms: 1,
                ..Tracked::default()
            };
            memory.keep(&key(n), &t, &t.reference("w"));
        }
        // The newest REMEMBERED are kept: the first three are forgotten.
        assert_eq!(memory.reference(&key(2)), None);
        assert!(memory.reference(&key(3)).is_some());
        assert_eq!(memory.owner_of(2), None);
        let newest = REMEMBERED + 2;
        assert_eq!(memory.owner_of(newest as u64), Some(key(newest)));
        memory.drop_key(&key(newest));
        assert_eq!(memory.owner_of(newest as u64), None);
        assert_eq!(memory.reference(&key(newest)), None);
        // A forgotten attempt leaves room: one more fits, the next pushes out the oldest.
        for n in [newest + 1, newest + 2] {
            let t = Tracked {
                wait_ms: 1,
                ..Tracked::default()
            };
            memory.keep(&key(n), &t, &t.reference("w"));
        }
        assert_eq!(memory.reference(&key(3)), None);
        assert!(memory.reference(&key(4)).is_some());
        assert!(memory.reference(&key(newest + 1)).is_some());
    }
}
