//! HTTP to one Jenkins controller: authentication, the crumb and its session cookie,
//! bounded requests, retries of 429 and 5xx with backoff and jitter, and errors that say
//! what to fix.

use std::time::Duration;

use baton_core::wire::error_chain;
use baton_core::{AdapterError, HumanDuration, Secret};
use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::Credentials;

/// How transient answers are retried within one call.
pub use baton_core::wire::RetryPolicy;

/// The jitter of a retry's wait: half to all of it.
fn jitter() -> f64 {
    rand::random_range(0.5..=1.0)
}

/// The largest JSON answer read.
pub(crate) const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;

/// An answer, its body read (up to a cap).
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
    /// True when the body was longer than the cap and was cut.
    pub truncated: bool,
}

impl Answer {
    /// A header's value as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text, lossily.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What a call is, for messages: `read job `team/deploy``, and what fixes a 403 or 404.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    /// What baton was doing, as a verb phrase.
    pub what: &'a str,
    /// The Jenkins permission it needs.
    pub permission: &'a str,
    /// What a 404 means and what to fix.
    pub not_found: &'a str,
}

pub(crate) use baton_core::wire::Repeat;

/// A POST's form body and crumb header.
struct PostBody<'a> {
    form: Option<&'a [(String, String)]>,
    crumb: Option<(String, String)>,
}

#[derive(Debug, Clone)]
enum CrumbState {
    Unknown,
    /// The controller has no crumb issuer (404): POST without one.
    NoIssuer,
    Issued {
        field: String,
        value: String,
    },
}

#[derive(Debug, Deserialize)]
struct CrumbAnswer {
    crumb: String,
    #[serde(rename = "crumbRequestField")]
    field: String,
}

/// One controller's HTTP client, with its own cookie jar.
#[derive(Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
    instance: String,
    credentials: Credentials<Secret>,
    crumb: tokio::sync::Mutex<CrumbState>,
    retry: RetryPolicy,
    request_timeout: Duration,
}

impl Client {
    /// A client for the controller at `base` (ending in `/`).
    pub(crate) fn new(
        instance: &str,
        base: Url,
        credentials: Credentials<Secret>,
        request_timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, AdapterError> {
        let http = reqwest::Client::builder()
            // The crumb is valid only in the session it was issued in (Jenkins 2.176.2+):
            // the jar keeps the JSESSIONID cookie for the POST that carries the crumb.
            .cookie_store(true)
            // A redirect is an answer to read (a 302 from an old trigger, a wrong root URL),
            // never something to follow with the credentials attached.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(request_timeout)
            .connect_timeout(request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                AdapterError::Invalid(format!(
                    "adapter `{instance}`: cannot build an HTTP client: {e}"
                ))
            })?;
        Ok(Self {
            http,
            base,
            instance: instance.to_owned(),
            credentials,
            crumb: tokio::sync::Mutex::new(CrumbState::Unknown),
            retry,
            request_timeout,
        })
    }

    /// The user name, for messages.
    pub(crate) fn user(&self) -> Option<&str> {
        self.credentials.user()
    }

    /// The adapter instance's name.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// `rel` (a path below the root, such as `job/a/14/`) as a URL on the configured root.
    pub(crate) fn url(&self, rel: &str) -> Result<Url, AdapterError> {
        let rel = rel.trim_start_matches('/');
        if rel.contains("://") || rel.starts_with("//") {
            return Err(AdapterError::Invalid(format!(
                "`{rel}` is not a path below the Jenkins root"
            )));
        }
        self.base
            .join(rel)
            .map_err(|e| AdapterError::Invalid(format!("`{rel}` is not a valid path: {e}")))
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.credentials {
            Credentials::Anonymous => builder,
            Credentials::Token { user, token } => builder.basic_auth(user, Some(token.expose())),
            Credentials::Password { user, password } => {
                builder.basic_auth(user, Some(password.expose()))
            }
        }
    }

    /// GETs `url`, retrying transient failures, and reads at most `cap` bytes of the body.
    /// Any status comes back; [`Client::check`] maps the errors.
    pub(crate) async fn get(
        &self,
        url: Url,
        call: Call<'_>,
        cap: usize,
    ) -> Result<Answer, AdapterError> {
        self.send(Method::GET, url, None, call, Repeat::Safe, cap)
            .await
    }

    /// GETs JSON, mapping every non-2xx status to an error that says what to fix.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        url: Url,
        call: Call<'_>,
    ) -> Result<T, AdapterError> {
        let answer = self.get(url.clone(), call, MAX_JSON_BYTES).await?;
        self.check(&answer, call)?;
        parse_json(&answer, &url, call)
    }

    /// POSTs with the crumb when one is needed, retrying as `repeat` allows.
    pub(crate) async fn post(
        &self,
        url: Url,
        form: Option<&[(String, String)]>,
        call: Call<'_>,
        repeat: Repeat,
    ) -> Result<Answer, AdapterError> {
        let mut refreshed = false;
        loop {
            let crumb = self.crumb_for_post().await?;
            let answer = self
                .send(
                    Method::POST,
                    url.clone(),
                    Some(PostBody {
                        form,
                        crumb: crumb.clone(),
                    }),
                    call,
                    repeat,
                    64 * 1024,
                )
                .await?;
            if answer.status == StatusCode::FORBIDDEN && is_crumb_refusal(&answer) {
                // The crumb expired with its session, or this "token" is really a password:
                // ask for a fresh crumb once before giving up.
                *self.crumb.lock().await = CrumbState::Unknown;
                if !refreshed {
                    refreshed = true;
                    self.fetch_crumb().await?;
                    continue;
                }
            }
            return Ok(answer);
        }
    }

    async fn crumb_for_post(&self) -> Result<Option<(String, String)>, AdapterError> {
        let state = self.crumb.lock().await.clone();
        let state = match (&self.credentials, state) {
            // An API token needs no crumb (Jenkins 2.96+), unless a refusal said otherwise.
            (Credentials::Token { .. }, CrumbState::Unknown) => return Ok(None),
            (_, CrumbState::Unknown) => self.fetch_crumb().await?,
            (_, state) => state,
        };
        Ok(match state {
            CrumbState::Issued { field, value } => Some((field, value)),
            _ => None,
        })
    }

    async fn fetch_crumb(&self) -> Result<CrumbState, AdapterError> {
        let call = Call {
            what: "get a crumb from the crumb issuer",
            permission: "Overall/Read",
            not_found: "",
        };
        let url = self.url("crumbIssuer/api/json")?;
        let answer = self.get(url.clone(), call, MAX_JSON_BYTES).await?;
        let state = if answer.status == StatusCode::NOT_FOUND {
            CrumbState::NoIssuer
        } else {
            self.check(&answer, call)?;
            let crumb: CrumbAnswer = parse_json(&answer, &url, call)?;
            CrumbState::Issued {
                field: crumb.field,
                value: crumb.crumb,
            }
        };
        *self.crumb.lock().await = state.clone();
        Ok(state)
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        post: Option<PostBody<'_>>,
        call: Call<'_>,
        repeat: Repeat,
        cap: usize,
    ) -> Result<Answer, AdapterError> {
        let mut waited = Duration::ZERO;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut builder = self.request(method.clone(), url.clone());
            if let Some(PostBody { form, crumb }) = &post {
                if let Some((field, value)) = crumb {
                    builder = builder.header(field.as_str(), value.as_str());
                }
                builder = match form {
                    Some(form) => builder
                        .header(
                            reqwest::header::CONTENT_TYPE,
                            "application/x-www-form-urlencoded",
                        )
                        .body(form_encode(form)),
                    None => builder.header(reqwest::header::CONTENT_LENGTH, "0"),
                };
            }
            let outcome = match builder.send().await {
                Ok(response) => read(response, cap).await,
                Err(e) => Err(e),
            };
            let (retry_after, failure) = match outcome {
                Ok(answer) => {
                    let status = answer.status;
                    let retryable = status == StatusCode::TOO_MANY_REQUESTS
                        || (status.is_server_error() && repeat == Repeat::Safe);
                    if !retryable {
                        return Ok(answer);
                    }
                    let failure = AdapterError::Transient(format!(
                        "Jenkins `{}` answered {status} when baton tried to {} (tried {attempt} times)",
                        self.instance, call.what
                    ));
                    if status.is_server_error() && repeat == Repeat::Once {
                        return Err(self.ambiguous(call, &status.to_string()));
                    }
                    (retry_after(&answer.headers), failure)
                }
                Err(e) if e.is_timeout() => {
                    // A request that timed out may have been acted on; reads are retried by
                    // the engine's next poll rather than here, so one call stays bounded.
                    return Err(match repeat {
                        Repeat::Once => self.ambiguous(call, "no answer in time"),
                        Repeat::Safe => AdapterError::Transient(format!(
                            "Jenkins `{}` did not answer within {} (request_timeout) when baton tried to {}",
                            self.instance,
                            HumanDuration(self.request_timeout),
                            call.what
                        )),
                    });
                }
                Err(e) if e.is_connect() => (
                    None,
                    AdapterError::Transient(format!(
                        "cannot reach Jenkins `{}` at {} to {}: {}",
                        self.instance,
                        self.base,
                        call.what,
                        error_chain(&e)
                    )),
                ),
                Err(e) if repeat == Repeat::Safe => (
                    None,
                    AdapterError::Transient(format!(
                        "Jenkins `{}`: the request to {} failed: {}",
                        self.instance,
                        call.what,
                        error_chain(&e)
                    )),
                ),
                Err(e) => return Err(self.ambiguous(call, &error_chain(&e))),
            };
            if attempt >= self.retry.attempts {
                return Err(failure);
            }
            let wait = self.retry.wait_within_budget(
                attempt - 1,
                jitter(),
                retry_after,
                waited,
                &failure,
            )?;
            tracing::debug!(instance = %self.instance, what = call.what, attempt, ?wait, "retrying a Jenkins request");
            tokio::time::sleep(wait).await;
            waited += wait;
        }
    }

    fn ambiguous(&self, call: Call<'_>, what_happened: &str) -> AdapterError {
        AdapterError::Transient(format!(
            "Jenkins `{}`: {what_happened} when baton tried to {}; it may have been done, so baton looks for it before trying again",
            self.instance, call.what
        ))
    }

    /// Maps a non-2xx answer to an error that says what to fix; a 2xx passes.
    pub(crate) fn check(&self, answer: &Answer, call: Call<'_>) -> Result<(), AdapterError> {
        let status = answer.status;
        if status.is_success() {
            return Ok(());
        }
        let instance = &self.instance;
        let what = call.what;
        Err(match status {
            StatusCode::UNAUTHORIZED => AdapterError::Auth(match &self.credentials {
                Credentials::Anonymous => format!(
                    "Jenkins `{instance}` needs credentials (401) to {what}: give the adapter `user` and `token` (an API token, made on the user's Security page in Jenkins)"
                ),
                Credentials::Token { user, .. } => format!(
                    "Jenkins `{instance}` refused the credentials of user `{user}` (401) to {what}: check `user` and `token` (an API token of that user, made on its Security page in Jenkins)"
                ),
                Credentials::Password { user, .. } => format!(
                    "Jenkins `{instance}` refused the credentials of user `{user}` (401) to {what}: check `user` and `password`, or better give an API token as `token`"
                ),
            }),
            StatusCode::FORBIDDEN if is_crumb_refusal(answer) => AdapterError::Auth(format!(
                "Jenkins `{instance}` refused to {what}: no valid crumb (403 \"No valid crumb was included in the request\"): give an API token (`token`), which needs no crumb; with a password, let the crumb issuer's JSESSIONID cookie through any proxy in front of Jenkins"
            )),
            StatusCode::FORBIDDEN => AdapterError::Auth(match self.credentials.user() {
                Some(user) => format!(
                    "Jenkins `{instance}`: user `{user}` may not {what} (403): grant it {} there, or check that the token belongs to `{user}`",
                    call.permission
                ),
                None => format!(
                    "Jenkins `{instance}`: anonymous users may not {what} (403): give the adapter `user` and `token`"
                ),
            }),
            StatusCode::NOT_FOUND => AdapterError::NotFound(if call.not_found.is_empty() {
                format!("Jenkins `{instance}` has nothing at the URL used to {what} (404)")
            } else {
                call.not_found.to_owned()
            }),
            s if s.is_redirection() => AdapterError::Protocol(format!(
                "Jenkins `{instance}` redirected baton's request to {what} ({s}) to {}: check that `url` is the controller's root URL (a missing path prefix such as /jenkins, or http instead of https)",
                answer.header(LOCATION.as_str()).unwrap_or("nowhere")
            )),
            StatusCode::TOO_MANY_REQUESTS => AdapterError::Transient(format!(
                "Jenkins `{instance}` is rate limiting (429) baton's requests to {what}"
            )),
            s if s.is_server_error() => AdapterError::Transient(format!(
                "Jenkins `{instance}` answered {s} when baton tried to {what}"
            )),
            s => AdapterError::Protocol(format!(
                "Jenkins `{instance}` answered {s} when baton tried to {what}{}",
                excerpt(&answer.text())
            )),
        })
    }
}

fn parse_json<T: DeserializeOwned>(
    answer: &Answer,
    url: &Url,
    call: Call<'_>,
) -> Result<T, AdapterError> {
    if answer.truncated {
        return Err(AdapterError::Protocol(format!(
            "Jenkins' answer to {} ({url}) is larger than {MAX_JSON_BYTES} bytes",
            call.what
        )));
    }
    serde_json::from_slice(&answer.body).map_err(|e| {
        AdapterError::Protocol(format!(
            "Jenkins' answer to {} ({url}) is not the JSON baton expects ({e}){}",
            call.what,
            excerpt(&answer.text())
        ))
    })
}

/// Reads a response's body up to `cap` bytes.
async fn read(mut response: reqwest::Response, cap: usize) -> Result<Answer, reqwest::Error> {
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await? {
        let room = cap.saturating_sub(body.len());
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        headers,
        body,
        truncated,
    })
}

/// Reads a body chunk by chunk, keeping only its last `keep` bytes. Returns the tail and the
/// total length read.
pub(crate) async fn read_tail(
    mut response: reqwest::Response,
    keep: usize,
) -> Result<(Vec<u8>, u64), reqwest::Error> {
    let mut tail: Vec<u8> = Vec::new();
    let mut total = 0u64;
    while let Some(chunk) = response.chunk().await? {
        total += chunk.len() as u64;
        tail.extend_from_slice(&chunk);
        if tail.len() > 2 * keep {
            tail.drain(..tail.len() - keep);
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    Ok((tail, total))
}

impl Client {
    /// GETs `url` as a stream whose tail is kept (for logs), with the usual error mapping.
    pub(crate) async fn get_tail(
        &self,
        url: Url,
        call: Call<'_>,
        keep: usize,
    ) -> Result<(HeaderMap, Vec<u8>, u64), AdapterError> {
        let response = self
            .request(Method::GET, url)
            .send()
            .await
            .map_err(|e| self.transport(call, &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        if !status.is_success() {
            let answer = read(response, 64 * 1024)
                .await
                .map_err(|e| self.transport(call, &e))?;
            self.check(&answer, call)?;
            return Err(AdapterError::Protocol(format!(
                "Jenkins `{}` answered {status} when baton tried to {}",
                self.instance, call.what
            )));
        }
        let (tail, total) = read_tail(response, keep)
            .await
            .map_err(|e| self.transport(call, &e))?;
        Ok((headers, tail, total))
    }

    fn transport(&self, call: Call<'_>, e: &reqwest::Error) -> AdapterError {
        AdapterError::Transient(if e.is_timeout() {
            format!(
                "Jenkins `{}` did not answer within {} (request_timeout) when baton tried to {}",
                self.instance,
                HumanDuration(self.request_timeout),
                call.what
            )
        } else {
            format!(
                "Jenkins `{}`: the request to {} failed: {}",
                self.instance,
                call.what,
                error_chain(e)
            )
        })
    }
}

fn is_crumb_refusal(answer: &Answer) -> bool {
    answer.text().to_ascii_lowercase().contains("crumb")
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub(crate) fn form_encode(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&form_component(k));
        out.push('=');
        out.push_str(&form_component(v));
    }
    out
}

fn form_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b' ' => out.push('+'),
            b if b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_') => {
                out.push(b as char);
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A short quote of an error body, for messages: HTML tags dropped, whitespace squeezed.
fn excerpt(body: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let squeezed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if squeezed.is_empty() {
        return String::new();
    }
    let cut: String = squeezed.chars().take(200).collect();
    let ellipsis = if cut.len() < squeezed.len() {
        "…"
    } else {
        ""
    };
    format!(": {cut}{ellipsis}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_encode_like_html_forms() {
        let pairs = [
            ("IMAGE".to_owned(), "reg/app@sha256:ab12".to_owned()),
            ("MSG".to_owned(), "a b&c=d ü".to_owned()),
        ];
        assert_eq!(
            form_encode(&pairs),
            "IMAGE=reg%2Fapp%40sha256%3Aab12&MSG=a+b%26c%3Dd+%C3%BC"
        );
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let p = RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(350),
            budget: Duration::from_secs(5),
        };
        for _ in 0..50 {
            let first = p.backoff(0, jitter());
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let late = p.backoff(10, jitter());
            assert!(late >= Duration::from_millis(175) && late <= Duration::from_millis(350));
        }
    }

    #[test]
    fn excerpts_drop_html() {
        assert_eq!(
            excerpt("<html><body><h1>Error</h1>\n<p>No valid crumb</p></body></html>"),
            ": Error No valid crumb"
        );
        assert_eq!(excerpt(""), "");
        assert!(excerpt(&"x".repeat(500)).ends_with('…'));
    }
}
