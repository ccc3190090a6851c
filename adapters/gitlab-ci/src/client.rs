//! HTTP to one GitLab project: `PRIVATE-TOKEN`, bounded requests, retries of 429 and 5xx
//! with backoff and jitter (honouring `Retry-After` and `RateLimit-Reset`), and errors that
//! say which token lacks what.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_core::{AdapterError, HumanDuration, Secret};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How transient answers (429, 5xx, a refused connection) are retried within one call.
pub use baton_core::wire::RetryPolicy;

/// The largest JSON answer read.
const MAX_JSON_BYTES: usize = 8_388_608;

/// Which credential a request carries, for the header and for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credential {
    /// `PRIVATE-TOKEN: <token>`.
    Token,
    /// The trigger token, in the JSON body (no header).
    Trigger,
}

pub(crate) use baton_core::wire::Repeat;

/// How to send one request: with which credential, what it is for (for messages),
/// whether it may be repeated, and how much of the answer to read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) credential: Credential,
    pub(crate) what: &'a str,
    pub(crate) repeat: Repeat,
    pub(crate) cap: usize,
    /// Past `cap`, keep the answer's last bytes (a log's tail) rather than its first.
    pub(crate) tail: bool,
}

impl<'a> Call<'a> {
    /// A read with `token`, of at most `cap` bytes.
    pub(crate) fn read(what: &'a str, cap: usize) -> Self {
        Self {
            credential: Credential::Token,
            what,
            repeat: Repeat::Safe,
            cap,
            tail: false,
        }
    }
}

/// An answer, its body read (up to a cap).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Vec<u8>,
    pub(crate) truncated: bool,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One project's HTTP client.
#[derive(Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    /// `<api>/projects/<project, encoded as one segment>`.
    project_url: Url,
    project: String,
    instance: String,
    token: Secret,
    retry: RetryPolicy,
    request_timeout: Duration,
}

impl Client {
    /// A client for `project` below the API root `api` (ending in `/`).
    pub(crate) fn new(
        instance: &str,
        api: &Url,
        project: &str,
        token: Secret,
        request_timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, AdapterError> {
        let invalid = |e: String| AdapterError::Invalid(format!("adapter `{instance}`: {e}"));
        let http = reqwest::Client::builder()
            // A redirect is an answer to read (a wrong root URL, http instead of https),
            // never something to follow with the token attached.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(request_timeout)
            .connect_timeout(request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(format!("cannot build an HTTP client: {e}")))?;
        // One path segment, so a path `group/sub/app` goes as `group%2Fsub%2Fapp`, as
        // GitLab's API wants it (the url crate encodes `/` inside a pushed segment).
        let mut project_url = api.clone();
        project_url
            .path_segments_mut()
            .map_err(|()| invalid(format!("`{api}` cannot have a path")))?
            .pop_if_empty()
            .push("projects")
            .push(project);
        Ok(Self {
            http,
            project_url,
            project: project.to_owned(),
            instance: instance.to_owned(),
            token,
            retry,
            request_timeout,
        })
    }

    /// `rel` (such as `pipelines/5/jobs`) below the project, with `query`; each of its
    /// `/`-separated parts is percent-encoded on its own.
    pub(crate) fn url(&self, rel: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.project_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(rel.split('/'));
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends a request and returns the answer of any status, after retrying what may be
    /// retried; `body` is sent as JSON.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        call: Call<'_>,
    ) -> Result<Answer, AdapterError> {
        let Call {
            credential,
            what,
            repeat,
            cap,
            tail,
        } = call;
        let mut waited = Duration::ZERO;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut builder = self.http.request(method.clone(), url.clone());
            if credential == Credential::Token {
                builder = builder.header("PRIVATE-TOKEN", self.token.expose());
            }
            if let Some(body) = body {
                builder = builder.json(body);
            }
            let outcome = match builder.send().await {
                Ok(response) => read(response, cap, tail).await,
                Err(e) => Err(e),
            };
            let (retry_after, failure) = match outcome {
                Ok((answer, headers)) => {
                    let status = answer.status;
                    let retryable = status == StatusCode::TOO_MANY_REQUESTS
                        || (status.is_server_error() && repeat == Repeat::Safe);
                    if !retryable {
                        if status.is_server_error() {
                            return Err(self.ambiguous(what, &status.to_string()));
                        }
                        return Ok(answer);
                    }
                    let failure = AdapterError::Transient(format!(
                        "GitLab `{}` answered {status} when baton tried to {what} (tried {attempt} times)",
                        self.instance
                    ));
                    (wait_asked(&headers), failure)
                }
                Err(e) if e.is_timeout() => {
                    return Err(match repeat {
                        Repeat::Once => self.ambiguous(what, "no answer in time"),
                        Repeat::Safe => AdapterError::Transient(format!(
                            "GitLab `{}` did not answer within {} (request_timeout) when baton tried to {what}",
                            self.instance,
                            HumanDuration(self.request_timeout)
                        )),
                    });
                }
                Err(e) if e.is_connect() => (
                    None,
                    AdapterError::Transient(format!(
                        "cannot reach GitLab `{}` at {} to {what}: {}",
                        self.instance,
                        self.project_url.origin().ascii_serialization(),
                        error_chain(&e)
                    )),
                ),
                Err(e) if repeat == Repeat::Safe => (
                    None,
                    AdapterError::Transient(format!(
                        "GitLab `{}`: the request to {what} failed: {}",
                        self.instance,
                        error_chain(&e)
                    )),
                ),
                Err(e) => return Err(self.ambiguous(what, &error_chain(&e))),
            };
            if attempt >= self.retry.attempts {
                return Err(failure);
            }
            let wait = self.retry.wait_within_budget(
                attempt - 1,
                rand::random_range(0.5..=1.0),
                retry_after,
                waited,
                &failure,
            )?;
            tracing::debug!(instance = %self.instance, what, attempt, ?wait, "retrying a GitLab request");
            tokio::time::sleep(wait).await;
            waited += wait;
        }
    }

    fn ambiguous(&self, what: &str, what_happened: &str) -> AdapterError {
        AdapterError::Transient(format!(
            "GitLab `{}`: {what_happened} when baton tried to {what}; it may have been done, so baton looks for it before trying again",
            self.instance
        ))
    }

    /// GETs JSON with `token`, mapping every non-2xx status to an error that says what to
    /// fix and an unreadable body to a protocol error.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        rel: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<T, AdapterError> {
        let answer = self
            .send(
                Method::GET,
                self.url(rel, query),
                None,
                Call::read(what, MAX_JSON_BYTES),
            )
            .await?;
        self.check(&answer, Credential::Token, what)?;
        self.parse(&answer, what)
    }

    /// GETs a file's bytes (up to `cap`); `None` on 404.
    pub(crate) async fn get_file(
        &self,
        rel: &str,
        call: Call<'_>,
    ) -> Result<Option<Answer>, AdapterError> {
        let what = call.what;
        let answer = self
            .send(Method::GET, self.url(rel, &[]), None, call)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.check(&answer, Credential::Token, what)?;
        Ok(Some(answer))
    }

    /// Reads a 2xx answer's JSON.
    pub(crate) fn parse<T: DeserializeOwned>(
        &self,
        answer: &Answer,
        what: &str,
    ) -> Result<T, AdapterError> {
        if answer.truncated {
            return Err(AdapterError::Protocol(format!(
                "GitLab `{}`'s answer to {what} is larger than {MAX_JSON_BYTES} bytes",
                self.instance
            )));
        }
        serde_json::from_slice(&answer.body).map_err(|e| {
            AdapterError::Protocol(format!(
                "GitLab `{}` answered something baton cannot read when it tried to {what} ({e}){}",
                self.instance,
                excerpt(&answer.text())
            ))
        })
    }

    /// Maps a non-2xx answer to an error that says what to fix; a 2xx passes.
    pub(crate) fn check(
        &self,
        answer: &Answer,
        credential: Credential,
        what: &str,
    ) -> Result<(), AdapterError> {
        let status = answer.status;
        if status.is_success() {
            return Ok(());
        }
        let instance = &self.instance;
        let project = &self.project;
        let said = gitlab_message(&answer.body);
        Err(match (status, credential) {
            (StatusCode::UNAUTHORIZED, _) => AdapterError::Auth(format!(
                "GitLab `{instance}` refused `token` (401 Unauthorized) when baton tried to {what}: the token is wrong, expired or revoked; give an access token with the `api` scope"
            )),
            (StatusCode::FORBIDDEN, _) => AdapterError::Auth(format!(
                "GitLab `{instance}` forbids `token` to {what} (403 Forbidden{}): it needs the `api` scope (`read_api` only reads) and at least the Developer role in project `{project}`",
                said.as_deref()
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default()
            )),
            (StatusCode::NOT_FOUND, Credential::Trigger) => AdapterError::Auth(format!(
                "GitLab `{instance}` refused `trigger_token` for project `{project}` (404): check that it is a pipeline trigger token of that project (Settings > CI/CD > Pipeline trigger tokens)"
            )),
            (StatusCode::NOT_FOUND, Credential::Token) => AdapterError::NotFound(format!(
                "GitLab `{instance}` has nothing at the URL used to {what} (404{}): check `project` (`{project}`) and `url`, and that `token` can see the project (a trigger token cannot read)",
                said.as_deref().map(|s| format!(" {s}")).unwrap_or_default()
            )),
            (s, _) if s.is_redirection() => AdapterError::Protocol(format!(
                "GitLab `{instance}` redirected baton's request to {what} ({s}): check that `url` is GitLab's root URL (https rather than http, the path prefix)"
            )),
            (StatusCode::TOO_MANY_REQUESTS, _) => AdapterError::Transient(format!(
                "GitLab `{instance}` is rate limiting (429) baton's requests to {what}"
            )),
            (s, _) if s.is_server_error() => AdapterError::Transient(format!(
                "GitLab `{instance}` answered {s} when baton tried to {what}"
            )),
            (s, _) if s.is_client_error() => AdapterError::Invalid(format!(
                "GitLab `{instance}` refused to {what} ({s}): {}",
                said.unwrap_or_else(|| answer.text().chars().take(300).collect())
            )),
            (s, _) => AdapterError::Protocol(format!(
                "GitLab `{instance}` answered {s} when baton tried to {what}{}",
                excerpt(&answer.text())
            )),
        })
    }
}

/// GitLab's own words in an error body: `{"message": "…"}`, `{"message": {"base": […]}}`
/// (a validation error) or `{"error": "…"}` (a parameter error).
pub(crate) fn gitlab_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let text = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Value::Object(fields) => Some(
                fields
                    .iter()
                    .map(|(k, v)| match v {
                        Value::Array(items) => {
                            let joined: Vec<&str> =
                                items.iter().filter_map(Value::as_str).collect();
                            if k == "base" {
                                joined.join("; ")
                            } else {
                                format!("{k} {}", joined.join("; "))
                            }
                        }
                        other => format!("{k} {other}"),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            _ => None,
        }
    };
    value
        .get("message")
        .or_else(|| value.get("error"))
        .and_then(text)
        .filter(|s| !s.is_empty())
}

/// The wait a 429 or 503 asks for: `Retry-After` in seconds, else `RateLimit-Reset` (a Unix
/// time), which GitLab sends with its rate limits
/// (https://docs.gitlab.com/administration/settings/user_and_ip_rate_limits/#response-headers).
fn wait_asked(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(secs) = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    let reset = header("ratelimit-reset").and_then(|v| v.trim().parse::<u64>().ok())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now)))
}

async fn read(
    mut response: reqwest::Response,
    cap: usize,
    tail: bool,
) -> Result<(Answer, HeaderMap), reqwest::Error> {
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > cap {
            truncated = true;
            if !tail {
                body.truncate(cap);
                break;
            }
            let excess = body.len() - cap;
            body.drain(..excess);
        }
    }
    Ok((
        Answer {
            status,
            body,
            truncated,
        },
        headers,
    ))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let cut: String = text.chars().take(200).collect();
    format!(": `{cut}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_messages_are_read_in_their_three_shapes() {
        assert_eq!(
            gitlab_message(
                br#"{"message": {"base": ["Insufficient permissions to set pipeline variables"]}}"#
            )
            .as_deref(),
            Some("Insufficient permissions to set pipeline variables")
        );
        assert_eq!(
            gitlab_message(br#"{"message": "404 Project Not Found"}"#).as_deref(),
            Some("404 Project Not Found")
        );
        assert_eq!(
            gitlab_message(br#"{"error": "variables is invalid"}"#).as_deref(),
            Some("variables is invalid")
        );
        assert_eq!(
            gitlab_message(br#"{"message": {"ref": ["is invalid"]}}"#).as_deref(),
            Some("ref is invalid")
        );
        assert_eq!(gitlab_message(b"<html>"), None);
    }

    #[test]
    fn projects_are_one_segment_and_paths_are_encoded_part_by_part() {
        let api = Url::parse("https://gl.example.com/gitlab/api/v4/").unwrap();
        let client = |project: &str| {
            Client::new(
                "gl",
                &api,
                project,
                Secret::new("t"),
                Duration::from_secs(1),
                RetryPolicy::default(),
            )
            .unwrap()
        };
        assert_eq!(
            client("group/sub/app")
                .url("pipelines/5", &[("ref", "a b&c")])
                .as_str(),
            "https://gl.example.com/gitlab/api/v4/projects/group%2Fsub%2Fapp/pipelines/5?ref=a+b%26c"
        );
        assert_eq!(
            client("42")
                .url("jobs/9/artifacts/out dir/build.env", &[])
                .as_str(),
            "https://gl.example.com/gitlab/api/v4/projects/42/jobs/9/artifacts/out%20dir/build.env"
        );
    }
}
