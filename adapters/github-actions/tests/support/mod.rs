//! A harness over the fake GitHub of `baton-forge-fakes`, so that each test reads as a
//! story: add workflows, start a stage, poll it as the engine would, look at what GitHub saw.

// Each test file compiles this module on its own and uses a different part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_adapter_github_actions::{GithubActionsKind, RetryPolicy};
use baton_core::secret::SecretError;
use baton_core::{
    Adapter, AdapterError, AdapterKind, AttemptKey, ExternalRef, PollOutcome, PollRequest, Secret,
    SecretRef, SecretResolver, StartRequest,
};
#[allow(unused_imports)]
pub(crate) use baton_forge_fakes::github::{
    DispatchMode, Fault, Github, Serving, TEST_APP_PRIVATE_KEY, TEST_APP_PUBLIC_KEY, Workflow,
};
use serde_json::{Value, json};

/// The token tests give the adapter, and the name the fake counts it under.
pub(crate) const TOKEN: &str = "ghp_test_token_0123456789";
pub(crate) const TOKEN_NAME: &str = "ci";

/// Retries that keep tests fast but still retry.
pub(crate) fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        base: Duration::from_millis(20),
        cap: Duration::from_millis(100),
        budget: Duration::from_secs(5),
    }
}

/// Resolves `{ env = "NAME" }` from a fixed map, so tests need no real environment.
pub(crate) struct Secrets(pub HashMap<String, String>);

impl SecretResolver for Secrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError> {
        match reference {
            SecretRef::Env(name) | SecretRef::File(name) => self
                .0
                .get(name)
                .map(|v| Secret::new(v.clone()))
                .ok_or_else(|| SecretError::MissingEnv(name.clone())),
        }
    }
}

/// A fake GitHub being served, with a token it accepts.
pub(crate) struct Gh {
    pub github: Github,
    pub serving: Serving,
}

impl Gh {
    pub(crate) async fn start() -> Self {
        let github = Github::new("octo-org/app");
        github.token(TOKEN_NAME, TOKEN);
        let serving = github.serve().await.expect("serve the fake GitHub");
        Self { github, serving }
    }

    pub(crate) fn add(&self, workflow: Workflow) -> &Self {
        self.github.add_workflow(workflow);
        self
    }

    /// An adapter on this GitHub with `extra` instance keys, authenticated with `token`.
    pub(crate) fn adapter_with_token(&self, token: &str, extra: Value) -> Arc<dyn Adapter> {
        let mut config = json!({
            "url": self.serving.url,
            "repo": "octo-org/app",
            "token": {"env": "GH_TOKEN"},
            "poll_initial": "100ms",
            "poll_max": "500ms",
            "request_timeout": "2s",
        });
        merge(&mut config, extra);
        let secrets = Secrets(HashMap::from([
            ("GH_TOKEN".to_owned(), token.to_owned()),
            ("app.pem".to_owned(), TEST_APP_PRIVATE_KEY.to_owned()),
        ]));
        GithubActionsKind::with_retry(fast_retry())
            .build("gha", &config, &secrets)
            .expect("build the adapter")
    }

    pub(crate) fn adapter(&self, extra: Value) -> Arc<dyn Adapter> {
        // Each test's token is its own, so the process-wide rate budgets never mix.
        let token = format!("{TOKEN}-{}", self.serving.url);
        self.github.token(TOKEN_NAME, &token);
        self.adapter_with_token(&token, extra)
    }
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        for (k, v) in extra {
            if v.is_null() {
                into.remove(&k);
            } else {
                into.insert(k, v);
            }
        }
    }
}

/// A key of its own for each stage of each test.
pub(crate) fn key(stage: &str) -> AttemptKey {
    baton_adapter_kit::fresh_key(stage)
}

pub(crate) async fn start(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    input: Value,
) -> Result<ExternalRef, AdapterError> {
    adapter
        .start(&StartRequest {
            key: key.clone(),
            workflow: "wf".into(),
            input,
            timeout: Duration::from_secs(60),
        })
        .await
}

pub(crate) async fn poll(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    external: &ExternalRef,
) -> Result<PollOutcome, AdapterError> {
    adapter
        .poll(&PollRequest {
            key,
            external,
            signal: None,
        })
        .await
}

/// Polls as the engine does (hints capped at `cap`, transient errors retried) until a
/// terminal state or `limit`; returns every outcome and the last reference.
pub(crate) async fn poll_to_end(
    adapter: &dyn Adapter,
    key: &AttemptKey,
    mut external: ExternalRef,
    cap: Duration,
    limit: Duration,
) -> (Vec<PollOutcome>, ExternalRef) {
    let until = Instant::now() + limit;
    let mut seen = Vec::new();
    while Instant::now() < until {
        match poll(adapter, key, &external).await {
            Ok(outcome) => {
                if let Some(replaced) = &outcome.external {
                    external = replaced.clone();
                }
                let hint = outcome.next_poll.unwrap_or(cap).min(cap);
                let end = outcome.state.is_terminal();
                seen.push(outcome);
                if end {
                    return (seen, external);
                }
                tokio::time::sleep(hint).await;
            }
            Err(e) if e.is_transient() => {
                tokio::time::sleep(cap.min(Duration::from_millis(500))).await;
            }
            Err(e) => panic!("poll of {key} failed: {e:?}"),
        }
    }
    panic!("{key} did not end within {limit:?}: {seen:#?}");
}
