//! The notifications a `travis` source stores (Travis's webhook when a build starts or
//! ends): the attempts they concern.

use baton_core::{AttemptKey, SourceDelivery};
use serde::Deserialize;

use crate::TravisAdapter;
use crate::start::marked;

/// The source kind whose deliveries are Travis notifications.
const SOURCE_KIND: &str = "travis";

/// The events such a delivery is stored as: the payload's `state`.
const EVENTS: [&str; 5] = ["started", "passed", "failed", "errored", "canceled"];

/// The fields of a notification's payload baton reads.
#[derive(Debug, Deserialize)]
struct Notification {
    /// The build's id.
    id: u64,
    #[serde(default)]
    message: Option<String>,
    repository: Repository,
}

#[derive(Debug, Deserialize)]
struct Repository {
    name: String,
    owner_name: String,
}

impl TravisAdapter {
    /// The attempts a notification concerns: the one following its build, and the one its
    /// message's marker names, when it is about this instance's repository. Anything but a
    /// `travis` delivery of a build state is passed over without reading its body.
    pub(crate) fn notified(&self, delivery: &SourceDelivery<'_>) -> Vec<AttemptKey> {
        if delivery.kind != SOURCE_KIND || !EVENTS.contains(&delivery.event) {
            return Vec::new();
        }
        let Ok(payload) = serde_json::from_str::<Notification>(delivery.body) else {
            return Vec::new();
        };
        let slug = format!(
            "{}/{}",
            payload.repository.owner_name, payload.repository.name
        );
        if !slug.eq_ignore_ascii_case(self.inner.client.slug()) {
            return Vec::new();
        }
        let mut keys: Vec<AttemptKey> =
            self.inner.memory.owner_of(payload.id).into_iter().collect();
        if let Some(key) = payload.message.as_deref().and_then(marked)
            && !keys.contains(&key)
        {
            keys.push(key);
        }
        keys
    }
}
