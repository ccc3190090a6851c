//! Status back to the commit: a workflow with `report: [<source>]` shows each run on the
//! commit that started it, with a link to the run. On GitHub with a token and on GitLab that
//! is a commit status for the run (`baton/<workflow>`) and one for each stage
//! (`baton/<workflow>/<stage>`); on GitHub as a GitHub App it is one check run per run
//! (`baton/<workflow>`) whose summary lists every stage, updated as the run moves.
//!
//! The engine records each wanted report in the store's outbox, in the same commit as the
//! change it reports (only for runs whose workflow has `report:`), so reports survive a
//! restart. A [`Reporter`] claims due rows, reads the run, posts what the context (or the
//! run's check run) shows now, and removes the row, or stores when to try again (backoff,
//! `Retry-After`, give-up). A newer change of a context supersedes its waiting row, so only
//! the latest state is posted, one request at a time per context or check run.
//! Reporting never touches the run: a failure is logged (with the server's reason, never a
//! credential) and counted in `baton_reports_total{result="ok"|"retry"|"dropped"}`.
//!
//! See `docs/reporting.md` for setup and for exactly what is posted when.

mod checks;
mod commit;
mod github;
mod gitlab;
mod outbox;
mod status;
mod target;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use baton_config::{GatewayConfig, GithubAuth, SourceConfig};
use baton_core::{SecretRef, SecretResolver};
use baton_engine::Engine;
use baton_store::RunSnapshot;

use crate::outbox::Outbox;
use crate::target::{Commit, Target};

/// How failed posts are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait before the first retry; each later one waits twice as long. Default 1 s.
    pub first_retry: Duration,
    /// The longest wait between two tries (a `Retry-After` is honoured up to this).
    /// Default 5 min.
    pub max_backoff: Duration,
    /// A status not posted this long after its first try is dropped (a newer status for
    /// the same context starts afresh). Default 30 min.
    pub give_up_after: Duration,
    /// The bound on one request, connecting included. Default 30 s.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first_retry: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            give_up_after: Duration::from_secs(1800),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The reporter cannot start: a source's credentials cannot be read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[sources.{name}] {key}: {message}")]
pub struct ReportError {
    /// The source.
    pub name: String,
    /// The key whose value is at fault (`token`, `private_key`, `api_token`, `api_url`).
    pub key: &'static str,
    /// What is wrong. Never the secret.
    pub message: String,
}

/// Which payload shape a source's events have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Github,
    Gitlab,
}

/// One source baton can report to.
#[derive(Clone)]
struct Entry {
    target: Arc<dyn Target>,
    kind: Kind,
    /// A GitHub App without `installation_id`: the event must name the installation.
    needs_installation: bool,
}

/// Posts run and stage status to the commits that started runs. Build it with
/// [`Reporter::new`] and spawn [`Reporter::run`].
pub struct Reporter {
    entries: HashMap<String, Entry>,
    public_url: Option<String>,
    policy: RetryPolicy,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("sources", &self.sources())
            .field("public_url", &self.public_url)
            .field("policy", &self.policy)
            .finish()
    }
}

impl Reporter {
    /// A reporter for every source of `gateway` with API credentials, which it reads now
    /// through `secrets`. `public_url` (usually `server.public_url`) makes each status link
    /// to `<public_url>/api/v1/runs/<id>`; without it statuses carry no link.
    ///
    /// `None` when no source has reporting credentials. An error when one has credentials
    /// that cannot be read (a missing variable or file) or used (a token that cannot go in
    /// an HTTP header, a private key that is not an RSA key in PEM form).
    pub fn new(
        gateway: &GatewayConfig,
        secrets: &dyn SecretResolver,
        public_url: Option<String>,
    ) -> Result<Option<Self>, ReportError> {
        let policy = RetryPolicy::default();
        let mut entries = HashMap::new();
        for (name, source) in &gateway.sources {
            let fail = |key: &'static str, message: String| ReportError {
                name: name.clone(),
                key,
                message,
            };
            let resolve = |key: &'static str, reference: &SecretRef| {
                secrets
                    .resolve(reference)
                    .map_err(|e| fail(key, e.to_string()))
            };
            let entry = match source {
                SourceConfig::Github(github) => {
                    let (credentials, needs_installation) = match &github.api_auth {
                        None => continue,
                        Some(GithubAuth::Token(reference)) => {
                            let token = resolve("token", reference)?;
                            header_value(&format!("Bearer {}", token.expose()))
                                .map_err(|m| fail("token", m))?;
                            (github::Credentials::Token(token), false)
                        }
                        Some(GithubAuth::App(app)) => {
                            let pem = resolve("private_key", &app.private_key)?;
                            let key = octocrab::EncodingKey::from_rsa_pem(pem.expose().as_bytes())
                                .map_err(|e| {
                                    fail(
                                        "private_key",
                                        format!("not an RSA private key in PEM form (the .pem file GitHub gives for the App): {e}"),
                                    )
                                })?;
                            (
                                github::Credentials::App {
                                    app_id: app.app_id,
                                    key,
                                    installation_id: app.installation_id,
                                },
                                app.installation_id.is_none(),
                            )
                        }
                    };
                    Entry {
                        target: Arc::new(github::GithubTarget::new(
                            name,
                            &github.api_url,
                            credentials,
                            policy.request_timeout,
                        )),
                        kind: Kind::Github,
                        needs_installation,
                    }
                }
                SourceConfig::Gitlab(gitlab) => {
                    let Some(reference) = &gitlab.api_token else {
                        continue;
                    };
                    let token = resolve("api_token", reference)?;
                    let token = header_value(token.expose()).map_err(|m| fail("api_token", m))?;
                    let target = gitlab::GitlabTarget::new(
                        name,
                        &gitlab.api_url,
                        token,
                        policy.request_timeout,
                    )
                    .map_err(|m| fail("api_url", m))?;
                    Entry {
                        target: Arc::new(target),
                        kind: Kind::Gitlab,
                        needs_installation: false,
                    }
                }
                SourceConfig::Generic(_) | SourceConfig::Travis(_) | SourceConfig::Registry(_) => {
                    continue;
                }
            };
            entries.insert(name.clone(), entry);
        }
        if entries.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            entries,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
            policy,
        }))
    }

    /// Replaces the retry policy (tests use short waits).
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The sources this reporter can post to, sorted.
    pub fn sources(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Posts the statuses waiting in the store's report outbox (those left by an earlier
    /// process first), until the engine is gone (every clone dropped); then gives requests
    /// under way a moment to finish. What is still waiting stays in the store.
    ///
    /// The engine's events only wake it early: it subscribes when called, so call it before
    /// [`Engine::start`] (then `tokio::spawn` the future). It holds the engine's store, not
    /// the engine.
    pub fn run(self, engine: Engine) -> impl Future<Output = ()> + Send + 'static {
        let events = engine.subscribe();
        let store = engine.store().clone();
        drop(engine);
        Outbox::new(self, store).follow(events)
    }
}

/// `text` as an HTTP header value, or why it cannot be one.
fn header_value(text: &str) -> Result<reqwest::header::HeaderValue, String> {
    reqwest::header::HeaderValue::from_str(text)
        .ok()
        .filter(|_| !text.trim().is_empty())
        .ok_or_else(|| {
            "the value is empty or has characters an HTTP header cannot carry (a line break?)"
                .to_owned()
        })
}

impl Reporter {
    /// Where `run` reports to `source`: the source's target and the commit the run's event
    /// names there. `None` (and a log line saying why) when the source has no credentials
    /// here, the event names no commit, or a GitHub App has no installation to act as.
    fn destination(&self, run: &RunSnapshot, source: &str) -> Option<(Arc<dyn Target>, Commit)> {
        let run_id = run.header.id.as_str();
        let Some(entry) = self.entries.get(source) else {
            tracing::warn!(run = run_id, workflow = %run.header.workflow, source,
                "the workflow reports to a source that has no API credentials in this config; not reported there");
            return None;
        };
        let event = &run.payload.event;
        let commit = match entry.kind {
            Kind::Github => commit::github_commit(event).map(Commit::Github),
            Kind::Gitlab => commit::gitlab_commit(event).map(Commit::Gitlab),
        };
        let Some(commit) = commit else {
            tracing::debug!(run = run_id, workflow = %run.header.workflow, source,
                trigger = %run.payload.trigger.source,
                "the run's event names no commit; its status is not reported");
            return None;
        };
        if entry.needs_installation
            && matches!(&commit, Commit::Github(c) if c.installation.is_none())
        {
            tracing::warn!(run = run_id, workflow = %run.header.workflow, source,
                "the event names no GitHub App installation (`.installation.id`); set `installation_id` on the source to report this run");
            return None;
        }
        tracing::debug!(run = run_id, workflow = %run.header.workflow, source, %commit,
            "reporting the run's status");
        Some((entry.target.clone(), commit))
    }
}

#[cfg(test)]
mod tests {
    use baton_config::{GithubApp, GithubSource, GitlabSource};
    use baton_core::Secret;

    use super::*;

    /// Secrets from a map.
    struct Fixed(HashMap<String, String>);

    impl SecretResolver for Fixed {
        fn resolve(
            &self,
            reference: &SecretRef,
        ) -> Result<Secret, baton_core::secret::SecretError> {
            let key = match reference {
                SecretRef::Env(name) | SecretRef::File(name) => name,
            };
            self.0
                .get(key)
                .map(|v| Secret::new(v.clone()))
                .ok_or_else(|| baton_core::secret::SecretError::MissingEnv(key.clone()))
        }
    }

    fn gateway(sources: Vec<(&str, SourceConfig)>) -> GatewayConfig {
        GatewayConfig {
            sources: sources
                .into_iter()
                .map(|(n, s)| (n.to_owned(), s))
                .collect(),
            ..GatewayConfig::default()
        }
    }

    fn secrets(pairs: &[(&str, &str)]) -> Fixed {
        Fixed(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn github(auth: Option<GithubAuth>) -> SourceConfig {
        SourceConfig::Github(GithubSource {
            secrets: vec![SecretRef::Env("S".into())],
            api_auth: auth,
            ..GithubSource::default()
        })
    }

    fn gitlab(token: Option<&str>) -> SourceConfig {
        SourceConfig::Gitlab(GitlabSource {
            tokens: vec![SecretRef::Env("T".into())],
            api_token: token.map(|t| SecretRef::Env(t.into())),
            ..GitlabSource::default()
        })
    }

    #[test]
    fn none_without_credentials() {
        let g = gateway(vec![("gh", github(None)), ("gl", gitlab(None))]);
        assert!(Reporter::new(&g, &secrets(&[]), None).unwrap().is_none());
    }

    #[test]
    fn sources_with_credentials_are_read_at_once() {
        let g = gateway(vec![
            (
                "gh",
                github(Some(GithubAuth::Token(SecretRef::Env("GH".into())))),
            ),
            ("gl", gitlab(Some("GL"))),
            ("hooks-only", github(None)),
        ]);
        let reporter = Reporter::new(
            &g,
            &secrets(&[("GH", "ghp_x"), ("GL", "glpat-x")]),
            Some("https://baton.example.com/".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(reporter.sources(), ["gh", "gl"]);
        assert_eq!(
            reporter.public_url.as_deref(),
            Some("https://baton.example.com")
        );
        let shown = format!("{reporter:?}");
        assert!(
            !shown.contains("ghp_x") && !shown.contains("glpat-x"),
            "{shown}"
        );
    }

    #[test]
    fn unusable_credentials_are_errors_that_never_show_the_secret() {
        let token = |name: &str| github(Some(GithubAuth::Token(SecretRef::Env(name.into()))));
        let app = SourceConfig::Github(GithubSource {
            api_auth: Some(GithubAuth::App(GithubApp {
                app_id: 1,
                private_key: SecretRef::File("KEY".into()),
                installation_id: None,
            })),
            ..GithubSource::default()
        });
        let cases = [
            (token("MISSING"), "token", "MISSING"),
            (token("NEWLINE"), "token", "line break"),
            (gitlab(Some("NEWLINE")), "api_token", "line break"),
            (app, "private_key", "not an RSA private key"),
        ];
        let s = secrets(&[
            ("NEWLINE", "abc\ndef-secret"),
            (
                "KEY",
                "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0\n-----END RSA PRIVATE KEY-----",
            ),
        ]);
        for (source, key, says) in cases {
            let err = Reporter::new(&gateway(vec![("src", source)]), &s, None).unwrap_err();
            assert_eq!(err.key, key);
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("[sources.src] {key}: ")),
                "{text}"
            );
            assert!(text.contains(says), "{text}");
            assert!(
                !text.contains("def-secret") && !text.contains("c2Vj"),
                "{text}"
            );
        }
    }
}
