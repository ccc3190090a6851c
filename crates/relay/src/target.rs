//! One relay target as the dispatcher uses it, and one try of one message to it.
//!
//! SKELETON (issue 24): the signatures the dispatcher uses; the sender work fills them in.

use std::time::Duration;

use baton_config::{RelayRate, RelayTarget};
use baton_core::SecretResolver;
use baton_core::expr_bound::Limits;
use baton_store::{DueRelay, Millis, RelayOutcome};

use crate::RelayError;

/// A target, its secrets resolved and its HTTP client built.
pub(crate) struct Target {
    /// The relay it belongs to.
    pub(crate) relay: String,
    /// Its name in the relay.
    pub(crate) name: String,
    /// The most tries in flight at once.
    pub(crate) concurrency: usize,
    /// One message at a time, in delivery order.
    pub(crate) ordered: bool,
    /// The delays between tries.
    pub(crate) schedule: Vec<Duration>,
    /// The most tries started per period.
    pub(crate) rate: Option<RelayRate>,
}

/// How one try went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sent {
    /// How it ended.
    pub(crate) outcome: RelayOutcome,
    /// The answer's status code, if one came.
    pub(crate) code: Option<u16>,
    /// The start of the answer's body, at most `ANSWER_SLICE_BYTES`, cut at a character.
    pub(crate) body: Option<String>,
    /// What went wrong, for people.
    pub(crate) error: Option<String>,
    /// When it started (wall clock).
    pub(crate) started_at: Millis,
    /// How long it took.
    pub(crate) duration: Duration,
    /// A 429's (or 503's) `Retry-After`, if it had one that could be read.
    pub(crate) retry_after: Option<Duration>,
}

impl Target {
    /// Resolves `config`'s secrets and builds its client.
    pub(crate) fn new(
        relay: &str,
        config: &RelayTarget,
        secrets: &dyn SecretResolver,
    ) -> Result<Self, RelayError> {
        let _ = secrets;
        Ok(Self {
            relay: relay.to_owned(),
            name: config.name.clone(),
            concurrency: config.concurrency,
            ordered: config.ordered,
            schedule: config.schedule.clone(),
            rate: config.rate,
        })
    }

    /// One try of `message`: its body (the `transform` run under `limits`), its headers and
    /// signature, the request, and the answer, classified.
    pub(crate) async fn send(&self, message: &DueRelay, limits: Limits) -> Sent {
        let _ = (message, limits);
        Sent {
            outcome: RelayOutcome::Refused,
            code: None,
            body: None,
            error: Some("SKELETON".into()),
            started_at: 0,
            duration: Duration::ZERO,
            retry_after: None,
        }
    }
}
