//! An attempt's reference: where its work is (a queue item, a build, or neither yet while
//! it is searched for), kept in the reference's `data` so that every call after `start`
//! works from the stored reference alone; and what this process remembers of the attempts
//! it started (for `find` after a lost answer, and for completion webhooks).

use baton_core::{AdapterError, AttemptKey, ExternalRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Unstable;
use crate::{JenkinsAdapter, MEMORY_LIMIT, lock};

/// Where an attempt is, as kept in its reference's `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// A queue item is known; no build yet.
    Queued,
    /// The build is known.
    Building,
    /// The trigger gave no queue item (an old controller's 302): search by correlation.
    Searching,
}

/// The reference's `data`: everything `poll`, `outputs`, `cancel` and `logs` need, since
/// they get no stage input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tracked {
    pub(crate) phase: Phase,
    /// The job's path below the root (`job/a/job/b/`), as Jenkins spells it.
    pub(crate) job: String,
    /// The job's name for people (`a/b`).
    pub(crate) name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) queue: Option<u64>,
    /// The build's path below the root (`job/a/job/b/14/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) build: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) number: Option<u64>,
    /// When baton sent the trigger (ms since the epoch, baton's clock).
    pub(crate) triggered_ms: u64,
    /// The job defines `BATON_ATTEMPT`, and it was sent.
    pub(crate) attempt_param: bool,
    /// The parameters sent (for the search without `BATON_ATTEMPT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) params: Vec<(String, String)>,
    pub(crate) unstable: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) properties_artifact: Option<String>,
    /// Polls in this phase, for the back-off of hints.
    #[serde(default)]
    pub(crate) polls: u32,
    /// When the queue item was first found missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) missing_since_ms: Option<u64>,
}

impl Tracked {
    pub(crate) fn read(external: &ExternalRef) -> Result<Self, AdapterError> {
        let tracked: Self = serde_json::from_value(external.data.clone()).map_err(|e| {
            AdapterError::Invalid(format!(
                "the stored reference `{}` is not one the jenkins adapter made: {e}",
                external.id
            ))
        })?;
        let complete = match tracked.phase {
            Phase::Queued => tracked.queue.is_some(),
            Phase::Building => tracked.build.is_some(),
            Phase::Searching => true,
        };
        if !complete || !tracked.job.starts_with("job/") {
            return Err(AdapterError::Invalid(format!(
                "the stored reference `{}` is incomplete for its phase",
                external.id
            )));
        }
        Ok(tracked)
    }

    pub(crate) fn unstable(&self) -> Unstable {
        Unstable::parse(&self.unstable).unwrap_or_default()
    }

    pub(crate) fn id(&self) -> String {
        match (self.phase, self.queue, self.number) {
            (Phase::Building, _, Some(n)) => format!("{}#{n}", self.name),
            (Phase::Building, _, None) => self.build.clone().unwrap_or_default(),
            (Phase::Queued, Some(q), _) => format!("queue:{q}"),
            _ => format!("searching:{}@{}", self.name, self.triggered_ms),
        }
    }

    pub(crate) fn build_label(&self) -> String {
        match self.number {
            Some(n) => format!("build #{n} of `{}`", self.name),
            None => format!("the build of `{}`", self.name),
        }
    }

    /// Moves to the build phase.
    pub(crate) fn started(&mut self, number: Option<u64>, path: String) {
        self.phase = Phase::Building;
        self.number = number;
        self.build = Some(path);
        self.polls = 0;
        self.missing_since_ms = None;
    }
}

impl JenkinsAdapter {
    pub(crate) fn reference(&self, tracked: &Tracked, url: Option<String>) -> ExternalRef {
        let url = url.or_else(|| {
            let rel = match tracked.phase {
                Phase::Building => tracked.build.clone(),
                Phase::Queued => tracked.queue.map(|q| format!("queue/item/{q}/")),
                Phase::Searching => Some(tracked.job.clone()),
            }?;
            self.inner.client.url(&rel).ok().map(|u| u.to_string())
        });
        ExternalRef {
            id: tracked.id(),
            url,
            data: serde_json::to_value(tracked).unwrap_or(Value::Null),
        }
    }

    pub(crate) fn remember(&self, key: &AttemptKey, tracked: &Tracked) {
        let mut journal = lock(&self.inner.journal);
        if journal.len() >= MEMORY_LIMIT
            && !journal.contains_key(key)
            && let Some(oldest) = journal
                .iter()
                .min_by_key(|(_, t)| t.triggered_ms)
                .map(|(k, _)| k.clone())
        {
            journal.remove(&oldest);
        }
        journal.insert(key.clone(), tracked.clone());
    }

    pub(crate) fn watch(&self, key: &AttemptKey, tracked: &Tracked) {
        let mut watched = lock(&self.inner.watched);
        if watched.len() >= MEMORY_LIMIT {
            watched.clear();
        }
        if let Some(q) = tracked.queue {
            watched.insert(format!("queue:{q}"), key.clone());
        }
        if let Some(build) = &tracked.build {
            watched.insert(watch_path(build), key.clone());
        }
    }

    pub(crate) fn forget(&self, key: &AttemptKey) {
        lock(&self.inner.journal).remove(key);
        lock(&self.inner.watched).retain(|_, k| k != key);
    }
}

pub(crate) fn watch_path(path: &str) -> String {
    String::from_utf8_lossy(&decode(path.trim_end_matches('/'))).into_owned()
}

/// Percent-decodes for comparing paths that Jenkins and baton may encode differently.
pub(crate) fn decode(path: &str) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

pub(crate) fn same_path(a: &str, b: &str) -> bool {
    decode(a.trim_end_matches('/')) == decode(b.trim_end_matches('/'))
}
