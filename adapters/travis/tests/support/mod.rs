//! The harness of the adapter's tests: a fake Travis (`baton_forge_fakes::travis`, which
//! keeps state and lets real time move its requests and builds) served on loopback, and
//! adapters built through the kind as `baton serve` builds them.

// Each test file compiles this module on its own and uses a different part of it.
#![allow(dead_code, unused_imports)]

use std::sync::Arc;
use std::time::Duration;

use baton_adapter_kit::harness::{TableSecrets, fast_retry, poll_until, start_request};
use baton_adapter_travis::TravisKind;
use baton_core::{Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, PollOutcome};
use baton_forge_fakes::Served;
use baton_forge_fakes::travis::Travis;
use serde_json::{Value, json};

pub(crate) use baton_adapter_kit::harness::{expect_error, poll_once};

/// The token the fake accepts with push access, counted as `ci`.
pub(crate) const TOKEN: &str = "travis-token-for-tests";
/// A token of a user who may read but not push.
pub(crate) const READER: &str = "travis-token-read-only";
/// The repository every test uses.
pub(crate) const REPO: &str = "octo-org/app";

/// A fake Travis with the repository and the tokens, being served.
pub(crate) struct Lab {
    pub travis: Travis,
    pub served: Served,
}

impl Lab {
    pub(crate) async fn start() -> Self {
        let travis = Travis::new();
        travis.add_token("ci", TOKEN);
        travis.add_read_token("reader", READER);
        travis.repo(REPO).id(4711);
        let served = travis.serve().await.expect("serve the fake Travis");
        Self { travis, served }
    }

    /// The instance block of an adapter for the repository, polling fast; `extra` adds or
    /// replaces keys (`null` removes one).
    pub(crate) fn config(&self, extra: Value) -> Value {
        let mut config = json!({
            "url": self.served.url,
            "web_url": self.served.url,
            "repo": REPO,
            "token": {"env": "TRAVIS_TOKEN"},
            "poll_initial": "100ms",
            "poll_max": "200ms",
            "request_timeout": "2s",
        });
        let fields = config.as_object_mut().expect("an object");
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            if v.is_null() {
                fields.remove(&k);
            } else {
                fields.insert(k, v);
            }
        }
        config
    }

    /// An adapter built through the kind, as `baton serve` builds it.
    pub(crate) fn adapter(&self, extra: Value) -> Arc<dyn Adapter> {
        let secrets = TableSecrets::of(&[
            ("TRAVIS_TOKEN", TOKEN),
            ("READ_TOKEN", READER),
            ("WRONG_TOKEN", "travis-token-never-issued"),
        ]);
        TravisKind::with_retry(fast_retry())
            .build("travis", &self.config(extra), &secrets)
            .expect("build the adapter")
    }

    /// The `n`th request created (0-based), as the fake sees it.
    pub(crate) fn request(&self, n: usize) -> baton_forge_fakes::travis::RequestView {
        let all = self.travis.requests();
        all.get(n)
            .cloned()
            .unwrap_or_else(|| panic!("no request {n}: {all:?}"))
    }

    /// The build with id `id`, as the fake sees it.
    pub(crate) fn build(&self, id: &str) -> baton_forge_fakes::travis::BuildView {
        let all = self.travis.builds();
        all.iter()
            .find(|b| b.id.to_string() == id)
            .cloned()
            .unwrap_or_else(|| panic!("no build {id}: {all:?}"))
    }
}

/// A key of `stage`'s first attempt in run `run1`.
pub(crate) fn key(stage: &str) -> AttemptKey {
    AttemptKey::new("run1", stage, 1)
}

/// Starts `input` under `key`; panics if the start fails.
pub(crate) async fn start(adapter: &dyn Adapter, key: &AttemptKey, input: Value) -> ExternalRef {
    adapter
        .start(&start_request(key, input))
        .await
        .unwrap_or_else(|e| panic!("start of {key} failed: {e:?}"))
}

/// The start's result, whatever it is.
pub(crate) async fn try_start(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    input: Value,
) -> Result<ExternalRef, AdapterError> {
    adapter.start(&start_request(key, input)).await
}

/// Polls every 50 ms until `done` or the end, within 20 s.
pub(crate) async fn poll_while(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &mut ExternalRef,
    done: impl Fn(&PollOutcome) -> bool,
) -> Vec<PollOutcome> {
    let pace = (Duration::from_millis(50), Duration::from_secs(20));
    poll_until(adapter, key, external, pace, done).await
}

/// Polls until the end; the last poll.
pub(crate) async fn poll_to_end(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &mut ExternalRef,
) -> PollOutcome {
    let mut seen = poll_while(adapter, key, external, |_| false).await;
    seen.pop().expect("at least one poll")
}

/// The kind, for `validate_*`.
pub(crate) fn kind() -> TravisKind {
    TravisKind::with_retry(fast_retry())
}

/// Checks an instance block.
pub(crate) fn problems(config: &Value) -> Vec<String> {
    kind()
        .validate_instance(config)
        .iter()
        .map(|p| p.path.clone())
        .collect()
}
