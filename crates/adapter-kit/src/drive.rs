//! The engine's part in an adapter's own tests, one step at a time: secrets from a table,
//! a start request, one poll that stores the replaced reference, polls until a condition
//! or an end, and an error of the expected kind and words.
//!
//! [`run_conformance`](crate::run_conformance) drives whole attempts; these let a test
//! tell a story (start, poll, inject a fault, poll again) against a stateful fake.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton_core::secret::SecretError;
use baton_core::{
    Adapter, AdapterError, AttemptKey, ExternalRef, FieldError, PollOutcome, PollRequest, Secret,
    SecretRef, SecretResolver, StartRequest,
};
use serde_json::Value;

/// How often [`poll_until`] polls.
pub const DRIVE_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Resolves `{ env = NAME }` from a fixed table, so tests never touch the environment;
/// `{ file }` references are never found.
#[derive(Debug, Clone, Default)]
pub struct TableSecrets(pub BTreeMap<&'static str, &'static str>);

impl TableSecrets {
    /// The table of `pairs` (variable name, value).
    pub fn of(pairs: &[(&'static str, &'static str)]) -> Self {
        Self(pairs.iter().copied().collect())
    }
}

impl SecretResolver for TableSecrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError> {
        match reference {
            SecretRef::Env(name) => self
                .0
                .get(name.as_str())
                .map(|v| Secret::new(*v))
                .ok_or_else(|| SecretError::MissingEnv(name.clone())),
            SecretRef::File(path) => Err(SecretError::MissingFile(path.clone())),
        }
    }
}

/// A start request for `key` with `input`, a minute to run.
pub fn request(key: &AttemptKey, input: Value) -> StartRequest {
    StartRequest {
        key: key.clone(),
        workflow: "wf".into(),
        input,
        timeout: Duration::from_secs(60),
    }
}

/// One poll, the reference replaced when the poll gives a new one (as the engine stores
/// it).
pub async fn poll_once(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &mut ExternalRef,
) -> Result<PollOutcome, AdapterError> {
    let outcome = adapter
        .poll(&PollRequest {
            key,
            external,
            signal: None,
        })
        .await?;
    if let Some(next) = &outcome.external {
        *external = next.clone();
    }
    Ok(outcome)
}

/// Polls every [`DRIVE_POLL_INTERVAL`] until `done` says so (or an end), for at most
/// `limit`; every outcome seen is returned, the last one last. A failed poll panics.
pub async fn poll_until(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &mut ExternalRef,
    limit: Duration,
    done: impl Fn(&PollOutcome) -> bool,
) -> Vec<PollOutcome> {
    let began = Instant::now();
    let mut seen = Vec::new();
    loop {
        let outcome = poll_once(adapter, key, external)
            .await
            .unwrap_or_else(|e| panic!("poll of {key} failed: {e:?}"));
        let stop = done(&outcome) || outcome.state.is_terminal();
        seen.push(outcome);
        if stop {
            return seen;
        }
        assert!(
            began.elapsed() < limit,
            "{key} did not get there within {limit:?}: {:?}",
            seen.last()
        );
        tokio::time::sleep(DRIVE_POLL_INTERVAL).await;
    }
}

/// Polls until an end, for at most 20 s; returns the last poll.
pub async fn poll_to_end(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &mut ExternalRef,
) -> PollOutcome {
    let mut seen = poll_until(adapter, key, external, Duration::from_secs(20), |_| false).await;
    seen.pop().expect("poll_until returns at least one poll")
}

/// Asserts that `result` is an error of `variant` (`Invalid`, `Auth`, `NotFound`,
/// `Transient` or `Protocol`) whose message holds `needle`.
pub fn expect_error<T: std::fmt::Debug>(
    result: Result<T, AdapterError>,
    variant: &str,
    needle: &str,
) {
    let err = result.expect_err("expected an error");
    let (name, message) = match &err {
        AdapterError::Invalid(m) => ("Invalid", m),
        AdapterError::Auth(m) => ("Auth", m),
        AdapterError::NotFound(m) => ("NotFound", m),
        AdapterError::Transient(m) => ("Transient", m),
        AdapterError::Protocol(m) => ("Protocol", m),
    };
    assert_eq!(name, variant, "{err:?}");
    assert!(message.contains(needle), "`{needle}` is not in: {message}");
}

/// The key paths of `errors`, in order, for comparing with what a test expects.
pub fn paths(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.path.as_str()).collect()
}
