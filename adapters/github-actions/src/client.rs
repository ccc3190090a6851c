//! HTTP to GitHub's REST API: one reqwest client (rustls, no automatic redirects), the
//! headers GitHub asks for, a token or a GitHub App installation token (renewed ahead of
//! its expiry, one fetch at a time), the shared rate budget, and retries of 5xx and of
//! rate limits that say how long to wait.
//!
//! Raw requests rather than octocrab's typed API: the dispatch needs
//! `return_run_details`, which `create_workflow_dispatch` cannot send, and octocrab's run
//! model rejects conclusions such as `startup_failure` (api-contracts §4.9; compare
//! otto-de/gitactionboard#271). octocrab signs the App's JWT.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use baton_core::wire::error_chain;
use baton_core::{AdapterError, HumanDuration, Secret};
use octocrab::EncodingKey;
use octocrab::models::AppId;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, ETAG, HeaderMap, IF_NONE_MATCH, LOCATION, RETRY_AFTER,
};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::budget::{Budget, Gate, Use};

/// The REST API version baton speaks.
pub(crate) const API_VERSION: &str = "2022-11-28";

/// The largest JSON answer read.
pub(crate) const MAX_JSON_BYTES: usize = 8 * 1024 * 1024;

/// How transient answers are retried within one call.
pub use baton_core::wire::RetryPolicy;

/// The jitter of a retry's wait: half to all of it.
fn jitter() -> f64 {
    rand::random_range(0.5..=1.0)
}

/// An answer with its body read (up to a cap).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    pub(crate) truncated: bool,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// GitHub's `message`, when the body is its error JSON.
    pub(crate) fn message(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Error {
            message: String,
        }
        serde_json::from_slice::<Error>(&self.body)
            .ok()
            .map(|e| e.message)
    }
}

pub(crate) use baton_core::wire::Repeat;

/// How one request is sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    /// What baton was doing, as a verb phrase, for messages.
    pub(crate) what: &'a str,
    pub(crate) repeat: Repeat,
    pub(crate) usage: Use,
}

impl<'a> Call<'a> {
    /// A read (held back at the reserve).
    pub(crate) fn read(what: &'a str) -> Self {
        Self {
            what,
            repeat: Repeat::Safe,
            usage: Use::Routine,
        }
    }
}

/// An installation token and when to renew it.
#[derive(Debug)]
struct Installation {
    token: Secret,
    renew_at: Instant,
}

enum Auth {
    Token(Secret),
    App {
        id: u64,
        installation: u64,
        key: EncodingKey,
        /// The cached installation token; the lock makes one fetch serve every waiter.
        cached: tokio::sync::Mutex<Option<Installation>>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(…)"),
            Self::App {
                id, installation, ..
            } => write!(f, "App({id}, {installation})"),
        }
    }
}

/// One instance's client.
#[derive(Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
    instance: String,
    auth: Auth,
    budget: Arc<Budget>,
    retry: RetryPolicy,
    request_timeout: Duration,
}

/// The credentials an adapter is built with, secrets resolved.
pub(crate) enum Credential {
    Token(Secret),
    App {
        id: u64,
        installation: u64,
        key: Secret,
    },
}

impl Client {
    pub(crate) fn new(
        instance: &str,
        base: Url,
        credential: Credential,
        request_timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, AdapterError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            "application/vnd.github+json"
                .parse()
                .expect("static header"),
        );
        headers.insert(
            "x-github-api-version",
            API_VERSION.parse().expect("static header"),
        );
        let http = reqwest::Client::builder()
            // Artifact and log downloads redirect to another host, which must never see the
            // token: redirects are followed by hand, without it.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(request_timeout)
            .connect_timeout(request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .map_err(|e| {
                AdapterError::Invalid(format!(
                    "adapter `{instance}`: cannot build an HTTP client: {e}"
                ))
            })?;
        let (auth, budget_id) = match credential {
            Credential::Token(token) => {
                let id = format!(
                    "token:{}",
                    hex::encode(&Sha256::digest(token.expose().as_bytes())[..16])
                );
                (Auth::Token(token), id)
            }
            Credential::App {
                id,
                installation,
                key,
            } => {
                let key = EncodingKey::from_rsa_pem(key.expose().as_bytes()).map_err(|e| {
                    AdapterError::Invalid(format!(
                        "adapter `{instance}`: `app.key` is not an RSA private key in PEM ({e}): give the key GitHub generated for the App"
                    ))
                })?;
                let cached = tokio::sync::Mutex::new(None);
                (
                    Auth::App {
                        id,
                        installation,
                        key,
                        cached,
                    },
                    format!("app:{id}:{installation}"),
                )
            }
        };
        Ok(Self {
            http,
            base,
            instance: instance.to_owned(),
            auth,
            budget: Budget::of(&budget_id),
            retry,
            request_timeout,
        })
    }

    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    pub(crate) fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// `rel` (below the API root, such as `repos/o/r/actions/runs/1`) as a URL.
    pub(crate) fn url(&self, rel: &str) -> Result<Url, AdapterError> {
        self.base
            .join(rel.trim_start_matches('/'))
            .map_err(|e| AdapterError::Invalid(format!("`{rel}` is not a valid path: {e}")))
    }

    /// The bearer token: the configured one, or a cached installation token.
    async fn bearer(&self, renew: bool) -> Result<Secret, AdapterError> {
        let (id, installation, key, cached) = match &self.auth {
            Auth::Token(token) => return Ok(token.clone()),
            Auth::App {
                id,
                installation,
                key,
                cached,
            } => (id, installation, key, cached),
        };
        let mut cached = cached.lock().await;
        if let Some(c) = cached.as_ref()
            && !renew
            && Instant::now() < c.renew_at
        {
            return Ok(c.token.clone());
        }
        let fresh = self
            .fetch_installation_token(*id, *installation, key)
            .await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    async fn fetch_installation_token(
        &self,
        id: u64,
        installation: u64,
        key: &EncodingKey,
    ) -> Result<Installation, AdapterError> {
        #[derive(Deserialize)]
        struct Access {
            token: String,
            expires_at: String,
        }
        let jwt = octocrab::auth::create_jwt(AppId(id), key).map_err(|e| {
            AdapterError::Invalid(format!(
                "adapter `{}`: cannot sign the App's JWT: {e}",
                self.instance
            ))
        })?;
        let url = self.url(&format!("app/installations/{installation}/access_tokens"))?;
        let what = format!("get an installation token for App {id}, installation {installation}");
        let mut waited = Duration::ZERO;
        for attempt in 1.. {
            let sent = self
                .http
                .post(url.clone())
                .header(AUTHORIZATION, format!("Bearer {jwt}"))
                .header(reqwest::header::CONTENT_LENGTH, "0")
                .send()
                .await;
            let answer = match sent {
                Ok(r) => read(r, MAX_JSON_BYTES)
                    .await
                    .map_err(|e| self.transport(&what, &e))?,
                Err(e) => return Err(self.transport(&what, &e)),
            };
            if answer.status.is_server_error() && attempt < self.retry.attempts {
                let wait = self.retry.backoff(attempt - 1, jitter());
                if waited + wait <= self.retry.budget {
                    tokio::time::sleep(wait).await;
                    waited += wait;
                    continue;
                }
            }
            return match answer.status {
                StatusCode::CREATED | StatusCode::OK => {
                    let access: Access = parse_json(&answer, &what)?;
                    let expires = chrono::DateTime::parse_from_rfc3339(&access.expires_at).map_err(|e| {
                        AdapterError::Protocol(format!("GitHub gave an installation token with an unreadable `expires_at` ({e})"))
                    })?;
                    let left = (expires.to_utc() - chrono::Utc::now())
                        .to_std()
                        .unwrap_or_default();
                    // Renewed well before it lapses: a quarter of its life ahead, at most a minute.
                    let margin = (left / 4).min(Duration::from_secs(60));
                    Ok(Installation {
                        token: Secret::new(access.token),
                        renew_at: Instant::now() + (left - margin),
                    })
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    Err(AdapterError::Auth(format!(
                        "GitHub refused the App's JWT ({}) to {what}{}: check `app.id` and that `app.key` is that App's private key",
                        answer.status,
                        quote(answer.message())
                    )))
                }
                StatusCode::NOT_FOUND => Err(AdapterError::NotFound(format!(
                    "GitHub knows no installation {installation} of App {id} (404): check `app.installation` (the number in the installation's settings URL)"
                ))),
                s => Err(self.status_error(s, &what, &answer)),
            };
        }
        unreachable!("the loop returns")
    }

    /// Sends one request, with retries as `call` allows; any status comes back, the rate
    /// limits and 5xx already retried (or turned into transient errors).
    pub(crate) async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        etag: Option<&str>,
        call: Call<'_>,
        cap: usize,
    ) -> Result<Answer, AdapterError> {
        let mut waited = Duration::ZERO;
        let mut renewed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Gate::Wait(wait) = self.budget.gate(call.usage) {
                if waited + wait > self.retry.budget {
                    return Err(AdapterError::Transient(format!(
                        "GitHub's rate limit for the credentials of `{}` is spent or reserved for starts and cancels for another {}; baton holds back until then",
                        self.instance,
                        HumanDuration(round_up(wait))
                    )));
                }
                tokio::time::sleep(wait).await;
                waited += wait;
                continue;
            }
            let token = self.bearer(false).await?;
            let mut builder = self
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, format!("Bearer {}", token.expose()));
            if let Some(tag) = etag {
                builder = builder.header(IF_NONE_MATCH, tag);
            }
            builder = match body {
                Some(json) => builder.json(json),
                None if method == Method::POST => {
                    builder.header(reqwest::header::CONTENT_LENGTH, "0")
                }
                None => builder,
            };
            let answer = match builder.send().await {
                Ok(response) => read(response, cap).await,
                Err(e) => Err(e),
            };
            let failure = match answer {
                Ok(answer) => {
                    self.budget.observe(&answer.headers);
                    let status = answer.status;
                    if status == StatusCode::NOT_MODIFIED {
                        self.budget.refund();
                    }
                    if status == StatusCode::UNAUTHORIZED
                        && matches!(self.auth, Auth::App { .. })
                        && !renewed
                    {
                        // The installation token expired early or was revoked: one renewal.
                        renewed = true;
                        self.bearer(true).await?;
                        continue;
                    }
                    if let Some(limit) = rate_limited(&answer) {
                        let wait = match limit {
                            Limit::Secondary(after) => after,
                            Limit::Primary => self.budget.until_reset() + Duration::from_secs(1),
                        };
                        self.budget.block_for(wait);
                        let kind = match limit {
                            Limit::Secondary(_) => "secondary rate limit",
                            Limit::Primary => "rate limit",
                        };
                        let message = format!(
                            "GitHub's {kind} stopped baton's request to {} ({status}{}); baton waits {} as GitHub asks",
                            call.what,
                            quote(answer.message()),
                            HumanDuration(round_up(wait))
                        );
                        if waited + wait > self.retry.budget || attempt >= self.retry.attempts {
                            return Err(AdapterError::Transient(message));
                        }
                        tracing::info!(instance = %self.instance, "{message}");
                        continue;
                    }
                    if !status.is_server_error() {
                        return Ok(answer);
                    }
                    if call.repeat == Repeat::Once {
                        return Err(self.ambiguous(&call, &status.to_string()));
                    }
                    AdapterError::Transient(format!(
                        "GitHub answered {status} when baton tried to {} (tried {attempt} times)",
                        call.what
                    ))
                }
                Err(e) if e.is_timeout() => {
                    return Err(match call.repeat {
                        Repeat::Once => self.ambiguous(&call, "no answer in time"),
                        Repeat::Safe => self.transport(call.what, &e),
                    });
                }
                Err(e) if e.is_connect() || call.repeat == Repeat::Safe => {
                    self.transport(call.what, &e)
                }
                Err(e) => return Err(self.ambiguous(&call, &error_chain(&e))),
            };
            if attempt >= self.retry.attempts {
                return Err(failure);
            }
            let wait = self.retry.backoff(attempt - 1, jitter());
            if waited + wait > self.retry.budget {
                return Err(failure);
            }
            tokio::time::sleep(wait).await;
            waited += wait;
        }
    }

    /// GETs JSON, mapping every non-2xx status to an error.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        rel: &str,
        call: Call<'_>,
    ) -> Result<T, AdapterError> {
        let answer = self
            .send(
                Method::GET,
                self.url(rel)?,
                None,
                None,
                call,
                MAX_JSON_BYTES,
            )
            .await?;
        self.check(&answer, call.what)?;
        parse_json(&answer, call.what)
    }

    /// GETs `rel`, which answers with a redirect to a download on another host, and reads
    /// that download without the token. `keep` bounds what is kept: its first `keep`
    /// bytes (`tail = false`, an error past them) or its last (`tail = true`).
    pub(crate) async fn download(
        &self,
        rel: &str,
        what: &str,
        keep: usize,
        tail: bool,
    ) -> Result<Vec<u8>, AdapterError> {
        let answer = self
            .send(
                Method::GET,
                self.url(rel)?,
                None,
                None,
                Call::read(what),
                64 * 1024,
            )
            .await?;
        let location = match answer.status {
            s if s.is_redirection() => answer
                .header(LOCATION.as_str())
                .unwrap_or_default()
                .to_owned(),
            _ => {
                self.check(&answer, what)?;
                return Err(AdapterError::Protocol(format!(
                    "GitHub answered {} without a redirect when baton tried to {what}",
                    answer.status
                )));
            }
        };
        let target = self.url(&location).and_then(|u| {
            if matches!(u.scheme(), "http" | "https") {
                Ok(u)
            } else {
                Err(AdapterError::Protocol(format!(
                    "GitHub redirected {what} to `{location}`, which is not an http(s) URL"
                )))
            }
        })?;
        // A plain request: the redirect host gets no Authorization header.
        let response = self
            .http
            .get(target)
            .send()
            .await
            .map_err(|e| self.transport(what, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(AdapterError::Transient(format!(
                "the download to {what} answered {status} (its link lasts about a minute; baton asks for a new one next time)"
            )));
        }
        let kept = if tail { Keep::Tail } else { Keep::Head };
        let answer = read_kept(response, keep, kept)
            .await
            .map_err(|e| self.transport(what, &e))?;
        if answer.truncated && !tail {
            return Err(AdapterError::Invalid(format!(
                "the download to {what} is larger than {keep} bytes, the most baton reads"
            )));
        }
        Ok(answer.body)
    }

    /// Maps a non-2xx answer to an error that says what to fix; a 2xx passes.
    pub(crate) fn check(&self, answer: &Answer, what: &str) -> Result<(), AdapterError> {
        if answer.status.is_success() {
            return Ok(());
        }
        Err(self.status_error(answer.status, what, answer))
    }

    fn status_error(&self, status: StatusCode, what: &str, answer: &Answer) -> AdapterError {
        let instance = &self.instance;
        let said = quote(answer.message());
        match status {
            StatusCode::UNAUTHORIZED => AdapterError::Auth(format!(
                "GitHub refused the credentials of `{instance}` (401{said}) when baton tried to {what}: check `token` (or `app`)"
            )),
            StatusCode::FORBIDDEN => AdapterError::Auth(format!(
                "GitHub forbade `{instance}` to {what} (403{said}): the token needs Actions: read and write on the repository (a classic token: `repo`)"
            )),
            StatusCode::NOT_FOUND => AdapterError::NotFound(format!(
                "GitHub has nothing there (404{said}) when baton tried to {what}: check `repo`, the workflow's name, and that the token can see the repository"
            )),
            StatusCode::UNPROCESSABLE_ENTITY => {
                AdapterError::Invalid(format!("GitHub refused to {what} (422{said})"))
            }
            s if s.is_server_error() => {
                AdapterError::Transient(format!("GitHub answered {s} when baton tried to {what}"))
            }
            s => AdapterError::Protocol(format!(
                "GitHub answered {s} when baton tried to {what}{}",
                excerpt(&answer.text())
            )),
        }
    }

    fn ambiguous(&self, call: &Call<'_>, what_happened: &str) -> AdapterError {
        AdapterError::Transient(format!(
            "GitHub: {what_happened} when baton tried to {}; it may have been done, so baton looks for it before trying again",
            call.what
        ))
    }

    fn transport(&self, what: &str, e: &reqwest::Error) -> AdapterError {
        AdapterError::Transient(if e.is_timeout() {
            format!(
                "GitHub did not answer within {} (request_timeout of `{}`) when baton tried to {what}",
                HumanDuration(self.request_timeout),
                self.instance
            )
        } else {
            format!("GitHub: the request to {what} failed: {}", error_chain(e))
        })
    }
}

/// Reads a JSON body, or says what was wrong with it.
pub(crate) fn parse_json<T: DeserializeOwned>(
    answer: &Answer,
    what: &str,
) -> Result<T, AdapterError> {
    if answer.truncated {
        return Err(AdapterError::Protocol(format!(
            "GitHub's answer to {what} is larger than {MAX_JSON_BYTES} bytes"
        )));
    }
    serde_json::from_slice(&answer.body).map_err(|e| {
        AdapterError::Protocol(format!(
            "GitHub's answer to {what} is not the JSON baton expects ({e}){}",
            excerpt(&answer.text())
        ))
    })
}

/// The ETag of an answer, for the next `If-None-Match`.
pub(crate) fn etag(answer: &Answer) -> Option<String> {
    answer.header(ETAG.as_str()).map(str::to_owned)
}

enum Limit {
    /// A secondary limit: wait as `retry-after` says.
    Secondary(Duration),
    /// The window is spent: wait for its reset.
    Primary,
}

/// Whether a 403 or 429 is a rate limit, and which. GitHub's documented rules
/// (docs.github.com, "Rate limits for the REST API", "Exceeding the rate limit"): a
/// `retry-after` header means wait that long; `x-ratelimit-remaining: 0` means wait for
/// `x-ratelimit-reset`.
fn rate_limited(answer: &Answer) -> Option<Limit> {
    if !matches!(
        answer.status,
        StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    ) {
        return None;
    }
    if let Some(after) = answer
        .headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(Limit::Secondary(Duration::from_secs(after)));
    }
    if answer.header("x-ratelimit-remaining") == Some("0") {
        return Some(Limit::Primary);
    }
    // A 429 without either: a minute, as GitHub's docs advise for secondary limits.
    (answer.status == StatusCode::TOO_MANY_REQUESTS)
        .then_some(Limit::Secondary(Duration::from_secs(60)))
}

fn round_up(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

fn quote(message: Option<String>) -> String {
    message
        .map(|m| format!(": {}", m.chars().take(300).collect::<String>()))
        .unwrap_or_default()
}

/// Which bytes of a long body are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// The first ones; the answer says when more were cut.
    Head,
    /// The last ones, the rest dropped while streaming.
    Tail,
}

/// Reads a body chunk by chunk, keeping at most `cap` bytes of it.
async fn read_kept(
    mut response: reqwest::Response,
    cap: usize,
    keep: Keep,
) -> Result<Answer, reqwest::Error> {
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > cap {
            truncated = true;
            match keep {
                Keep::Head => {
                    body.truncate(cap);
                    break;
                }
                // Drained in halves, so that a long log costs no quadratic copying.
                Keep::Tail if body.len() > 2 * cap => {
                    body.drain(..body.len() - cap);
                }
                Keep::Tail => {}
            }
        }
    }
    if body.len() > cap {
        body.drain(..body.len() - cap);
    }
    Ok(Answer {
        status,
        headers,
        body,
        truncated,
    })
}

async fn read(response: reqwest::Response, cap: usize) -> Result<Answer, reqwest::Error> {
    read_kept(response, cap, Keep::Head).await
}

/// A short quote of a body, for messages.
fn excerpt(body: &str) -> String {
    let squeezed = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if squeezed.is_empty() {
        return String::new();
    }
    let cut: String = squeezed.chars().take(200).collect();
    let more = if cut.len() < squeezed.len() {
        "…"
    } else {
        ""
    };
    format!(": {cut}{more}")
}

/// Seconds since the epoch now, for stored times.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
