//! GitHub, through octocrab: commit statuses (`POST /repos/{owner}/{repo}/statuses/{sha}`)
//! for a token, one check run per run for a GitHub App (see [`crate::checks`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use baton_core::Secret;
use baton_store::{RunSnapshot, Store};
use octocrab::models::{AppId, InstallationId, StatusState};
use octocrab::{EncodingKey, Octocrab};

use crate::checks::{CheckRun, CheckRuns};
use crate::commit::GithubCommit;
use crate::status::{Phase, Status, status_of};
use crate::target::{Commit, Failure, Posted, Report, Target, retry_after};

/// The REST API version baton speaks.
const API_VERSION: &str = "2022-11-28";

/// How baton authenticates to GitHub.
pub(crate) enum Credentials {
    /// A bearer token.
    Token(Secret),
    /// A GitHub App: a JWT signed with `key` is traded for an installation token, which
    /// octocrab caches until shortly before it expires.
    App {
        app_id: u64,
        key: EncodingKey,
        installation_id: Option<u64>,
    },
}

/// One github source with credentials.
pub(crate) struct GithubTarget {
    name: String,
    api_url: String,
    credentials: Credentials,
    timeout: Duration,
    /// Clients by installation id (0 for a token). Built on first use, inside the runtime
    /// (octocrab spawns a task per client). Shared, never cloned: a cloned installation
    /// client would not share the cached installation token.
    clients: Mutex<HashMap<u64, Client>>,
    /// The check runs of an App's runs.
    check_runs: CheckRuns,
}

/// A client, and for an App installation the lock that lets one post at a time fetch the
/// installation token (octocrab caches it but would fetch it once per concurrent caller).
#[derive(Clone)]
struct Client {
    crab: Arc<Octocrab>,
    token_fetch: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl GithubTarget {
    pub(crate) fn new(
        name: &str,
        api_url: &str,
        credentials: Credentials,
        timeout: Duration,
    ) -> Self {
        Self {
            name: name.to_owned(),
            api_url: api_url.trim_end_matches('/').to_owned(),
            credentials,
            timeout,
            clients: Mutex::default(),
            check_runs: CheckRuns::default(),
        }
    }

    /// The client for a commit, with an App's installation token fetched when it has none
    /// with more than 30 s left (one fetch at a time: octocrab would fetch once per caller).
    async fn ready(&self, commit: &GithubCommit) -> Result<Arc<Octocrab>, Failure> {
        let client = self.client(commit)?;
        if let Some(lock) = &client.token_fetch {
            let _one_at_a_time = lock.lock().await;
            client.crab.installation_token().await.map_err(failure)?;
        }
        Ok(client.crab)
    }

    /// The client for a commit: the token's, or the App installation's (configured, else the
    /// event's).
    fn client(&self, commit: &GithubCommit) -> Result<Client, Failure> {
        let installation = match &self.credentials {
            Credentials::Token(_) => 0,
            Credentials::App {
                installation_id, ..
            } => installation_id.or(commit.installation).ok_or_else(|| {
                Failure::permanent(format!(
                    "the event names no GitHub App installation (`.installation.id`): set `installation_id` in [sources.{}]",
                    self.name
                ))
            })?,
        };
        if let Some(client) = self.clients.lock().unwrap().get(&installation) {
            return Ok(client.clone());
        }
        let built = self.build(installation).map_err(|e| {
            Failure::permanent(format!("cannot set up the GitHub client: {}", reason(&e)))
        })?;
        let app = matches!(self.credentials, Credentials::App { .. });
        let client = self
            .clients
            .lock()
            .unwrap()
            .entry(installation)
            .or_insert_with(|| Client {
                crab: Arc::new(built),
                token_fetch: app.then(Arc::default),
            })
            .clone();
        Ok(client)
    }

    fn build(&self, installation: u64) -> octocrab::Result<Octocrab> {
        let builder = Octocrab::builder()
            .base_uri(self.api_url.as_str())?
            .add_header(
                http::HeaderName::from_static("x-github-api-version"),
                API_VERSION.to_owned(),
            )
            .add_header(
                http::header::ACCEPT,
                "application/vnd.github+json".to_owned(),
            )
            .set_connect_timeout(Some(self.timeout))
            .set_read_timeout(Some(self.timeout))
            .set_write_timeout(Some(self.timeout));
        match &self.credentials {
            Credentials::Token(token) => builder.personal_token(token.expose().to_owned()).build(),
            Credentials::App { app_id, key, .. } => builder
                .app(AppId(*app_id), key.clone())
                .build()?
                .installation(InstallationId(installation)),
        }
    }
}

#[async_trait]
impl Target for GithubTarget {
    fn name(&self) -> &str {
        &self.name
    }

    /// A GitHub App shows the whole run in its check run, whichever context changed; a token
    /// posts the context's commit status.
    fn report(
        &self,
        run: &RunSnapshot,
        stage_id: &str,
        public_url: Option<&str>,
    ) -> Option<Report> {
        match self.credentials {
            Credentials::App { .. } => Some(Report::Check(CheckRun::of(run, public_url))),
            Credentials::Token(_) => status_of(run, stage_id, public_url).map(Report::Status),
        }
    }

    async fn post(
        &self,
        commit: &Commit,
        report: &Report,
        store: &dyn Store,
    ) -> Result<Posted, Failure> {
        let Commit::Github(commit) = commit else {
            return Err(Failure::permanent("not a GitHub commit"));
        };
        let crab = self.ready(commit).await?;
        match report {
            Report::Status(status) => post_status(&crab, commit, status).await,
            Report::Check(check) => {
                if !matches!(self.credentials, Credentials::App { .. }) {
                    return Err(Failure::permanent("only a GitHub App can write check runs"));
                }
                self.check_runs
                    .post(&crab, &self.name, commit, check, store)
                    .await
                    .map(|()| Posted::Done)
            }
        }
    }
}

/// Posts one commit status.
async fn post_status(
    crab: &Octocrab,
    commit: &GithubCommit,
    status: &Status,
) -> Result<Posted, Failure> {
    let state = match status.phase {
        Phase::Pending | Phase::Running => StatusState::Pending,
        Phase::Succeeded | Phase::Skipped => StatusState::Success,
        Phase::Failed => StatusState::Failure,
        Phase::Cancelled => StatusState::Error,
    };
    debug_assert_eq!(
        serde_json::to_value(state)
            .ok()
            .as_ref()
            .and_then(|v| v.as_str()),
        Some(status.phase.github_state())
    );
    let repos = crab.repos(&commit.owner, &commit.repo);
    let mut request = repos
        .create_status(commit.sha.clone(), state)
        .context(status.context.clone())
        .description(status.description.clone());
    if let Some(url) = &status.target_url {
        request = request.target(url.clone());
    }
    match request.send().await {
        Ok(_) => Ok(Posted::Done),
        Err(e) => Err(failure(e)),
    }
}

/// What an octocrab error means for a retry.
pub(crate) fn failure(error: octocrab::Error) -> Failure {
    match error {
        octocrab::Error::GitHub { source, .. } => {
            let headers = source.headers.as_ref();
            let header = |name: &str| {
                headers
                    .and_then(|h| h.get(name))
                    .and_then(|v| v.to_str().ok())
            };
            let mut wait = retry_after(header("retry-after"));
            if wait.is_none() && header("x-ratelimit-remaining") == Some("0") {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                wait = source
                    .rate_limit_reset
                    .map(|reset| Duration::from_secs(reset.saturating_sub(now)));
            }
            Failure::http(source.status_code.as_u16(), &source.message, wait)
        }
        octocrab::Error::JWT { source, .. } => Failure::permanent(format!(
            "cannot sign the GitHub App's token with its private key: {source}"
        )),
        other => Failure::transient(reason(&other)),
    }
}

/// An error and its causes on one line, each said once.
pub(crate) fn reason(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}
