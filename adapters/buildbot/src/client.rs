//! Buildbot's REST API (`/api/v2`) and its JSON-RPC control calls, with session login,
//! request timeouts and retries.
//!
//! - Every request is bounded by `request_timeout`.
//! - A `429` or a `5xx` without a JSON-RPC error, a refused connection or a timeout is tried
//!   again after a backoff with jitter (honouring `Retry-After`), a few times within a
//!   budget, then reported as [`AdapterError::Transient`] for the engine to retry later.
//!   A request that may have reached Buildbot and is not idempotent (forcing a build) is not
//!   sent again here: the caller looks for the work first ([`Failure::ambiguous`]).
//! - A JSON-RPC error (Buildbot answers HTTP 4xx/5xx with `{"error": {...}}`) is the
//!   server's final word: [`AdapterError::Invalid`] with Buildbot's message.
//! - `401`/`403` are [`AdapterError::Auth`], `404` is [`AdapterError::NotFound`], each with
//!   what to fix. With `user` and `password`, the client logs in through `/auth/login` (Basic
//!   credentials, answered with a session cookie kept in a cookie jar) before its first
//!   request, and logs in again once when Buildbot refuses the session (it expired).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_core::wire::error_chain;
use baton_core::{AdapterError, Secret};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

/// Retries after the first try, at most.
const MAX_RETRIES: u32 = 3;
/// The first backoff; each retry doubles it. Each wait is drawn between half and all of it.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// No retry starts once this long has passed since the call began, so that a call stays
/// well within the engine's bound on one adapter call.
const RETRY_BUDGET: Duration = Duration::from_secs(20);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// How much of an unreadable body an error message quotes.
const QUOTE: usize = 200;

/// Why one request failed, and whether trying again may help.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The error to report when no retry is left.
    pub error: AdapterError,
    /// Trying again may succeed.
    pub retry: bool,
    /// The request may have reached Buildbot (a timeout, a 5xx): sending a non-idempotent
    /// request again could do its work twice.
    pub ambiguous: bool,
    /// The server asked to wait this long.
    pub retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(error: AdapterError) -> Self {
        Self {
            error,
            retry: false,
            ambiguous: false,
            retry_after: None,
        }
    }

    fn transient(message: String, ambiguous: bool, retry_after: Option<Duration>) -> Self {
        Self {
            error: AdapterError::Transient(message),
            retry: true,
            ambiguous,
            retry_after,
        }
    }
}

/// The wait before retry number `retry` (0-based): exponential, with jitter, or the server's
/// `Retry-After` when it gave one.
pub(crate) fn backoff(retry: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(after) = retry_after {
        return after.min(MAX_RETRY_AFTER);
    }
    let full = BACKOFF_BASE.saturating_mul(1 << retry.min(10));
    full.mul_f64(rand::random_range(0.5..=1.0))
}

/// Whether another retry fits: `retry` retries done so far, `begun` when the call started.
pub(crate) fn may_retry(retry: u32, begun: Instant, wait: Duration) -> bool {
    retry < MAX_RETRIES && begun.elapsed() + wait < RETRY_BUDGET
}

/// A client for one Buildbot master.
pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
    api: Url,
    instance: String,
    login: Option<(String, Secret)>,
    /// Bumped by each successful login; 0 before the first.
    session: AtomicU64,
    login_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("user", &self.login.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl Client {
    /// A client for the master at `base` (ending in `/`); `instance` names the adapter
    /// instance in messages.
    pub(crate) fn new(
        base: Url,
        instance: &str,
        login: Option<(String, Secret)>,
        request_timeout: Duration,
    ) -> Result<Self, AdapterError> {
        let api = base
            .join("api/v2/")
            .map_err(|e| AdapterError::Invalid(format!("url `{base}`: {e}")))?;
        let http = reqwest::Client::builder()
            .cookie_provider(Arc::new(reqwest::cookie::Jar::default()))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(request_timeout)
            .connect_timeout(request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("baton-buildbot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AdapterError::Invalid(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            api,
            instance: instance.to_owned(),
            login,
            session: AtomicU64::new(0),
            login_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The master's base URL.
    pub(crate) fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of the API path made of `segments` (each escaped) with query pairs.
    pub(crate) fn api_url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.api.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// `GET` an API path, retried as described in the module docs.
    pub(crate) async fn get(&self, url: Url, what: &str) -> Result<Value, AdapterError> {
        self.retrying(|| self.once(Method::GET, url.clone(), None, what))
            .await
    }

    /// A JSON-RPC control call that is safe to repeat (`stop`, `cancel`); returns `result`.
    pub(crate) async fn control(
        &self,
        url: Url,
        method: &str,
        params: Value,
        what: &str,
    ) -> Result<Value, AdapterError> {
        let body = rpc_body(method, params);
        self.retrying(|| self.once(Method::POST, url.clone(), Some(&body), what))
            .await
    }

    /// One try of a JSON-RPC call that must not be repeated blindly (`force`); the caller
    /// decides about retries from the [`Failure`].
    pub(crate) async fn control_once(
        &self,
        url: Url,
        method: &str,
        params: Value,
        what: &str,
    ) -> Result<Value, Failure> {
        let body = rpc_body(method, params);
        self.once(Method::POST, url, Some(&body), what).await
    }

    async fn retrying<F, Fut>(&self, call: F) -> Result<Value, AdapterError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Value, Failure>>,
    {
        let begun = Instant::now();
        let mut retry = 0;
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(f) => {
                    let wait = backoff(retry, f.retry_after);
                    if !f.retry || !may_retry(retry, begun, wait) {
                        return Err(f.error);
                    }
                    tracing::debug!(error = %f.error, ?wait, "buildbot request failed; retrying");
                    tokio::time::sleep(wait).await;
                    retry += 1;
                }
            }
        }
    }

    /// One request, with a login first when needed and once more when the session is refused.
    async fn once(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, Failure> {
        let mut session = self.ensure_login().await?;
        let mut relogged = false;
        loop {
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .map_err(|e| self.send_failure(e, what))?;
            let status = response.status();
            let headers = response.headers().clone();
            let text = match response.text().await {
                Ok(text) => text,
                Err(e) => return Err(self.send_failure(e, what)),
            };
            if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                && self.login.is_some()
                && !relogged
            {
                // The session may have expired: log in again (once) and repeat.
                session = self.relogin(session).await?;
                relogged = true;
                continue;
            }
            return self.read(status, &headers, &text, &url, what);
        }
    }

    fn send_failure(&self, e: reqwest::Error, what: &str) -> Failure {
        let cause = error_chain(&e);
        if e.is_timeout() {
            Failure::transient(
                format!(
                    "Buildbot at {} did not answer in time to {what} ({cause}); raise `request_timeout` if it is only slow",
                    self.base
                ),
                true,
                None,
            )
        } else if e.is_connect() {
            Failure::transient(
                format!(
                    "cannot reach Buildbot at {} to {what} ({cause}): is it running, and is `url` right?",
                    self.base
                ),
                false,
                None,
            )
        } else {
            Failure::transient(
                format!("the request to {what} at {} failed ({cause})", self.base),
                true,
                None,
            )
        }
    }

    fn read(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        text: &str,
        url: &Url,
        what: &str,
    ) -> Result<Value, Failure> {
        let json: Option<Value> = serde_json::from_str(text).ok();
        let rpc_error = json.as_ref().and_then(rpc_error_message);
        if status.is_success() {
            let Some(json) = json else {
                return Err(Failure::fatal(AdapterError::Protocol(format!(
                    "Buildbot answered {what} with something that is not JSON ({}): {}",
                    url,
                    quote(text)
                ))));
            };
            if let Some(message) = rpc_error {
                return Err(Failure::fatal(AdapterError::Invalid(format!(
                    "Buildbot refused to {what}: {message}"
                ))));
            }
            return Ok(json);
        }
        let detail = rpc_error
            .clone()
            .or_else(|| {
                json.as_ref()
                    .and_then(|j| j.get("error"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| quote(text));
        let code = status.as_u16();
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Failure::fatal(AdapterError::Auth(match &self.login {
                    None => format!(
                        "Buildbot refused to {what} (HTTP {code}: {detail}): log in: set `user` and `password` in [adapters.{}]",
                        self.instance
                    ),
                    Some((user, _)) => format!(
                        "Buildbot refused to {what} for user `{user}` (HTTP {code}: {detail}): give that user the role the master's `authz` rules ask for, or use another `user`"
                    ),
                }))
            }
            StatusCode::NOT_FOUND => Failure::fatal(AdapterError::NotFound(format!(
                "Buildbot has nothing at {url} (HTTP 404) to {what}: check `url` in [adapters.{}] (Buildbot's base URL, such as http://127.0.0.1:8010) and the names in the stage's `with`",
                self.instance
            ))),
            StatusCode::TOO_MANY_REQUESTS => Failure::transient(
                format!("Buildbot is rate-limiting requests (HTTP 429) to {what}"),
                false,
                retry_after(headers),
            ),
            s if s.is_server_error() && rpc_error.is_none() => Failure::transient(
                format!("Buildbot failed to {what} (HTTP {code}): {detail}"),
                true,
                retry_after(headers),
            ),
            _ => Failure::fatal(AdapterError::Invalid(format!(
                "Buildbot refused to {what} (HTTP {code}): {detail}"
            ))),
        })
    }

    /// Logs in before the first request when a user is configured; returns the session.
    async fn ensure_login(&self) -> Result<u64, Failure> {
        let session = self.session.load(Ordering::Acquire);
        if self.login.is_none() || session > 0 {
            return Ok(session);
        }
        self.relogin(0).await
    }

    /// Logs in unless another task already replaced session `stale`.
    async fn relogin(&self, stale: u64) -> Result<u64, Failure> {
        let _guard = self.login_lock.lock().await;
        let current = self.session.load(Ordering::Acquire);
        if current != stale {
            return Ok(current);
        }
        let Some((user, password)) = &self.login else {
            return Ok(current);
        };
        let url = self
            .base
            .join("auth/login")
            .map_err(|e| Failure::fatal(AdapterError::Invalid(e.to_string())))?;
        let response = self
            .http
            .get(url.clone())
            .basic_auth(user, Some(password.expose()))
            .send()
            .await
            .map_err(|e| self.send_failure(e, "log in"))?;
        let status = response.status();
        let headers = response.headers().clone();
        if status.is_success() || status.is_redirection() {
            let next = current + 1;
            self.session.store(next, Ordering::Release);
            tracing::debug!(user, "logged in to Buildbot");
            return Ok(next);
        }
        let code = status.as_u16();
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Failure::fatal(AdapterError::Auth(format!(
                    "Buildbot rejected the login of user `{user}` at {url} (HTTP {code}): check `user` and `password` in [adapters.{}]",
                    self.instance
                )))
            }
            StatusCode::NOT_FOUND => Failure::fatal(AdapterError::NotFound(format!(
                "Buildbot has no login page at {url} (HTTP 404): check `url`, and that the master's `www` has `auth` configured (or drop `user` and `password`)"
            ))),
            StatusCode::TOO_MANY_REQUESTS => Failure::transient(
                format!("Buildbot is rate-limiting logins (HTTP 429) at {url}"),
                false,
                retry_after(&headers),
            ),
            s if s.is_server_error() => Failure::transient(
                format!("Buildbot failed the login at {url} (HTTP {code})"),
                false,
                retry_after(&headers),
            ),
            _ => Failure::fatal(AdapterError::Auth(format!(
                "Buildbot answered the login of `{user}` at {url} with HTTP {code}: check `user` and `password`"
            ))),
        })
    }
}

fn rpc_body(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
}

/// The message of a JSON-RPC error body, `{"error": {"code": .., "message": ..}}`.
fn rpc_error_message(json: &Value) -> Option<String> {
    let error = json.get("error")?.as_object()?;
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no message");
    Some(match error.get("code").and_then(Value::as_i64) {
        Some(code) => format!("{message} (JSON-RPC error {code})"),
        None => message.to_owned(),
    })
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

fn quote(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut end = text.len().min(QUOTE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}…", &text[..end])
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_honours_retry_after() {
        for retry in 0..4 {
            let full = BACKOFF_BASE * (1 << retry);
            for _ in 0..20 {
                let w = backoff(retry, None);
                assert!(w >= full / 2 && w <= full, "{retry}: {w:?}");
            }
        }
        assert_eq!(
            backoff(0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(backoff(0, Some(Duration::from_secs(3600))), MAX_RETRY_AFTER);
        assert!(may_retry(0, Instant::now(), Duration::from_secs(1)));
        assert!(!may_retry(MAX_RETRIES, Instant::now(), Duration::ZERO));
        assert!(!may_retry(0, Instant::now(), RETRY_BUDGET));
    }

    #[test]
    fn rpc_errors_and_quotes() {
        let e = json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "boom"}});
        assert_eq!(
            rpc_error_message(&e).as_deref(),
            Some("boom (JSON-RPC error -32603)")
        );
        assert_eq!(rpc_error_message(&json!({"error": "not found"})), None);
        assert_eq!(quote(""), "(empty body)");
        assert!(quote(&"é".repeat(300)).ends_with('…'));
    }

    #[test]
    fn api_urls_escape_their_parts() {
        let c = Client::new(
            Url::parse("http://h:8010/bb/").unwrap(),
            "ci",
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            c.api_url(&["builders"], &[("name", "a b&c")]).as_str(),
            "http://h:8010/bb/api/v2/builders?name=a+b%26c"
        );
        assert_eq!(
            c.api_url(&["forceschedulers", "x/y z"], &[]).as_str(),
            "http://h:8010/bb/api/v2/forceschedulers/x%2Fy%20z"
        );
    }
}
