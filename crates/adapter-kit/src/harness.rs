//! What an adapter's own scenario tests share, besides the rules: secrets from a fixed
//! table, start requests, the engine's part of polling (the reference replaced when a poll
//! gives a new one), and assertions on the kind and words of an error.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton_core::secret::SecretError;
use baton_core::wire::RetryPolicy;
use baton_core::{
    Adapter, AdapterError, AttemptKey, ExternalRef, PollOutcome, PollRequest, Secret, SecretRef,
    SecretResolver, StartRequest,
};
use serde_json::Value;

/// Resolves `{ env = NAME }` from a fixed table, so tests never touch the environment;
/// `{ file }` references are never found.
#[derive(Debug, Clone, Default)]
pub struct TableSecrets(pub BTreeMap<String, String>);

impl TableSecrets {
    /// A table of `(name, value)` pairs.
    pub fn of(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }
}

impl SecretResolver for TableSecrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError> {
        match reference {
            SecretRef::Env(name) => self
                .0
                .get(name)
                .map(Secret::new)
                .ok_or_else(|| SecretError::MissingEnv(name.clone())),
            SecretRef::File(path) => Err(SecretError::MissingFile(path.clone())),
        }
    }
}

/// A retry policy for tests: 4 tries, waits from 10 ms to 40 ms, at most 3 s in all, so
/// that stories of 429s and 5xx take milliseconds.
pub fn fast_retry() -> RetryPolicy {
    let ms = Duration::from_millis;
    RetryPolicy {
        attempts: 4,
        base: ms(10),
        cap: ms(40),
        budget: ms(3_000),
    }
}

/// A start request for `key` with the rendered `input`, in workflow `wf`, with a minute's
/// timeout.
pub fn start_request(key: &AttemptKey, input: Value) -> StartRequest {
    StartRequest {
        key: key.clone(),
        workflow: "wf".into(),
        input,
        timeout: Duration::from_secs(60),
    }
}

/// One poll, as the engine makes it: `external` is replaced when the poll gives a new
/// reference.
pub async fn poll_once(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &mut ExternalRef,
) -> Result<PollOutcome, AdapterError> {
    let request = PollRequest {
        key,
        external,
        signal: None,
    };
    let outcome = adapter.poll(&request).await?;
    if let Some(replaced) = &outcome.external {
        external.clone_from(replaced);
    }
    Ok(outcome)
}

/// Polls as the engine does, once at once and then after each hint, until the work ends;
/// the last poll. For measuring what a run costs with an adapter's real hints.
pub async fn poll_at_hints(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &mut ExternalRef,
) -> Result<PollOutcome, AdapterError> {
    loop {
        let outcome = poll_once(adapter, key, external).await?;
        match outcome.next_poll {
            Some(hint) if !outcome.state.is_terminal() => tokio::time::sleep(hint).await,
            _ => return Ok(outcome),
        }
    }
}

/// Polls every `every` until `done` says so or the work ends, for at most `limit`
/// (panicking past it, or on an error); every outcome seen is returned, the last one last.
pub async fn poll_until(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &mut ExternalRef,
    (every, limit): (Duration, Duration),
    done: impl Fn(&PollOutcome) -> bool,
) -> Vec<PollOutcome> {
    let until = Instant::now() + limit;
    let mut seen: Vec<PollOutcome> = Vec::new();
    loop {
        let outcome = match poll_once(adapter, key, external).await {
            Ok(outcome) => outcome,
            Err(e) => panic!("poll of {key} failed: {e:?}"),
        };
        let last = done(&outcome) || outcome.state.is_terminal();
        seen.push(outcome);
        if last {
            return seen;
        }
        if Instant::now() >= until {
            panic!(
                "{key} did not get there within {limit:?}; last: {:?}",
                seen.last()
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls every 50 ms until the work ends, for at most 20 s; the last poll.
pub async fn poll_to_end(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &mut ExternalRef,
) -> PollOutcome {
    let every_and_limit = (Duration::from_millis(50), Duration::from_secs(20));
    let mut seen = poll_until(adapter, key, external, every_and_limit, |_| false).await;
    seen.pop().expect("poll_until returns at least one poll")
}

/// The name of `error`'s variant (`Transient`, `Throttled`, …) and its message.
pub fn error_parts(error: &AdapterError) -> (&'static str, String) {
    let name = match error {
        AdapterError::Invalid(_) => "Invalid",
        AdapterError::Auth(_) => "Auth",
        AdapterError::NotFound(_) => "NotFound",
        AdapterError::Transient(_) => "Transient",
        AdapterError::Throttled { .. } => "Throttled",
        AdapterError::Protocol(_) => "Protocol",
    };
    (name, error.to_string())
}

/// Asserts that `result` is an error of `variant` whose message holds `needle`, and
/// returns the error.
pub fn expect_error<T: std::fmt::Debug>(
    result: Result<T, AdapterError>,
    variant: &str,
    needle: &str,
) -> AdapterError {
    let error = result.expect_err("expected an error");
    let (name, message) = error_parts(&error);
    assert_eq!(name, variant, "{error:?}");
    assert!(message.contains(needle), "`{needle}` is not in: {message}");
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_the_table_only() {
        let secrets = TableSecrets::of(&[("TOKEN", "s3cret")]);
        let found = secrets.resolve(&SecretRef::Env("TOKEN".into())).unwrap();
        assert_eq!(found.expose(), "s3cret");
        assert!(secrets.resolve(&SecretRef::Env("OTHER".into())).is_err());
        assert!(
            secrets
                .resolve(&SecretRef::File("/etc/token".into()))
                .is_err()
        );
    }

    #[test]
    fn errors_are_told_by_kind_and_words() {
        let throttled = AdapterError::Throttled {
            message: "all 10 spent".into(),
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(
            error_parts(&throttled),
            ("Throttled", "all 10 spent".to_owned())
        );
        let back = expect_error::<()>(Err(throttled.clone()), "Throttled", "10 spent");
        assert_eq!(back, throttled);
        assert_eq!(error_parts(&AdapterError::Auth("no".into())).0, "Auth");
    }
}
