//! HTTP to one Concourse team: a bearer token on every call (see `auth`), bounded
//! requests, retries of 429 and 5xx with backoff and jitter (honouring `Retry-After`), a
//! refused token renewed once, and errors that say what to fix.

use std::time::Duration;

use baton_core::wire::{Repeat, RetryPolicy, error_chain};
use baton_core::{AdapterError, HumanDuration};
use reqwest::header::{ACCEPT, HeaderMap};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::auth::Auth;

/// The largest JSON answer read.
pub(crate) const MAX_JSON_BYTES: usize = 8_388_608;

/// How long an event stream may stay silent before it is opened again (a quiet task sends
/// nothing; a connection dead without a word would otherwise hang forever).
pub(crate) const STREAM_IDLE: Duration = Duration::from_secs(300);

/// How to send one request: what it is for (for messages), whether it may be repeated,
/// and how much of the answer to read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) what: &'a str,
    pub(crate) repeat: Repeat,
    pub(crate) cap: usize,
}

impl<'a> Call<'a> {
    /// A read of at most [`MAX_JSON_BYTES`].
    pub(crate) fn read(what: &'a str) -> Self {
        Self {
            what,
            repeat: Repeat::Safe,
            cap: MAX_JSON_BYTES,
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

/// One team's HTTP client.
#[derive(Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    /// For event streams: no bound on the whole answer, only on silence.
    streams: reqwest::Client,
    root: Url,
    pub(crate) team: String,
    pub(crate) instance: String,
    pub(crate) auth: Auth,
    retry: RetryPolicy,
    pub(crate) request_timeout: Duration,
}

/// Where a client points and how it behaves.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    pub(crate) instance: &'a str,
    pub(crate) root: &'a Url,
    pub(crate) team: &'a str,
    pub(crate) request_timeout: Duration,
    pub(crate) retry: RetryPolicy,
}

impl Client {
    pub(crate) fn new(target: Target<'_>, auth: Auth) -> Result<Self, AdapterError> {
        let Target {
            instance,
            root,
            team,
            request_timeout,
            retry,
        } = target;
        let build = |whole: Option<Duration>| {
            let mut builder = reqwest::Client::builder()
                // A redirect is an answer to read (a wrong URL, http instead of https),
                // never something to follow with the token attached.
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(request_timeout.min(Duration::from_secs(10)))
                .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")));
            builder = match whole {
                Some(d) => builder.timeout(d),
                None => builder.read_timeout(STREAM_IDLE),
            };
            builder.build().map_err(|e| {
                AdapterError::Invalid(format!(
                    "adapter `{instance}`: cannot build an HTTP client: {e}"
                ))
            })
        };
        Ok(Self {
            http: build(Some(request_timeout))?,
            streams: build(None)?,
            root: root.clone(),
            team: team.to_owned(),
            instance: instance.to_owned(),
            auth,
            retry,
            request_timeout,
        })
    }

    /// `<root>/<segments…>`, each segment percent-encoded on its own.
    pub(crate) fn web(&self, segments: &[&str]) -> Url {
        let mut url = self.root.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `<root>/api/v1/<segments…>`.
    pub(crate) fn api(&self, segments: &[&str]) -> Url {
        let mut all = vec!["api", "v1"];
        all.extend_from_slice(segments);
        self.web(&all)
    }

    /// `<root>/api/v1/teams/<team>/pipelines/<pipeline>/<tail…>` with the instance vars
    /// as JSON query values (`vars.branch=%22main%22`), as `InstanceVarsFromQueryParams`
    /// reads them.
    pub(crate) fn pipeline_api(
        &self,
        pipeline: &str,
        vars: &Map<String, Value>,
        tail: &[&str],
    ) -> Url {
        let mut segments = vec!["teams", self.team.as_str(), "pipelines", pipeline];
        segments.extend_from_slice(tail);
        with_vars(self.api(&segments), vars)
    }

    /// The root's origin, for messages.
    pub(crate) fn origin(&self) -> String {
        self.root.origin().ascii_serialization()
    }

    /// Sends a request with the bearer token and returns the answer of any status, after
    /// retrying what may be retried and renewing a refused token once; `body` is sent as
    /// JSON.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        call: Call<'_>,
    ) -> Result<Answer, AdapterError> {
        let Call { what, repeat, cap } = call;
        let mut waited = Duration::ZERO;
        let mut renewed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let bearer = self.bearer().await?;
            let mut builder = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(bearer.token.expose());
            builder = match body {
                Some(json) => builder.json(json),
                None if method != Method::GET => {
                    builder.header(reqwest::header::CONTENT_LENGTH, "0")
                }
                None => builder,
            };
            let outcome = match builder.send().await {
                Ok(response) => read(response, cap).await,
                Err(e) => Err(e),
            };
            let (retry_after, failure) = match outcome {
                // A refused token acted on nothing: renew it once and send again.
                Ok((answer, _))
                    if answer.status == StatusCode::UNAUTHORIZED
                        && !renewed
                        && self.auth.renewable() =>
                {
                    renewed = true;
                    attempt -= 1;
                    self.renew(bearer.generation).await?;
                    continue;
                }
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
                        "Concourse `{}` answered {status} when baton tried to {what} (tried {attempt} times)",
                        self.instance
                    ));
                    (retry_after(&headers), failure)
                }
                Err(e) => (None, self.transport(what, repeat, &e)?),
            };
            tracing::debug!(instance = %self.instance, what, attempt, "retrying a Concourse request");
            self.back_off(attempt, &mut waited, retry_after, failure)
                .await?;
        }
    }

    /// Waits before retry `attempt` (1-based) of a call that has waited `waited` so far and
    /// just met `failure`, honouring the server's `asked` wait; `failure` back when the
    /// retries or the wait budget are spent.
    pub(crate) async fn back_off(
        &self,
        attempt: u32,
        waited: &mut Duration,
        asked: Option<Duration>,
        failure: AdapterError,
    ) -> Result<(), AdapterError> {
        if attempt >= self.retry.attempts {
            return Err(failure);
        }
        let wait = self.retry.wait_within_budget(
            attempt - 1,
            rand::random_range(0.5..=1.0),
            asked,
            *waited,
            &failure,
        )?;
        tokio::time::sleep(wait).await;
        *waited += wait;
        Ok(())
    }

    /// A transport failure as a retryable error, or the error to give up with: a timeout
    /// or a broken exchange of a request that may not be repeated is ambiguous.
    pub(crate) fn transport(
        &self,
        what: &str,
        repeat: Repeat,
        e: &reqwest::Error,
    ) -> Result<AdapterError, AdapterError> {
        if e.is_timeout() {
            return Err(match repeat {
                Repeat::Once => self.ambiguous(what, "no answer in time"),
                Repeat::Safe => AdapterError::Transient(format!(
                    "Concourse `{}` did not answer within {} (request_timeout) when baton tried to {what}",
                    self.instance,
                    HumanDuration(self.request_timeout)
                )),
            });
        }
        if e.is_connect() {
            return Ok(AdapterError::Transient(format!(
                "cannot reach Concourse `{}` at {} to {what}: {}",
                self.instance,
                self.origin(),
                error_chain(e)
            )));
        }
        match repeat {
            Repeat::Safe => Ok(AdapterError::Transient(format!(
                "Concourse `{}`: the request to {what} failed: {}",
                self.instance,
                error_chain(e)
            ))),
            Repeat::Once => Err(self.ambiguous(what, &error_chain(e))),
        }
    }

    fn ambiguous(&self, what: &str, what_happened: &str) -> AdapterError {
        AdapterError::Transient(format!(
            "Concourse `{}`: {what_happened} when baton tried to {what}; it may have been done, so baton looks for it before trying again",
            self.instance
        ))
    }

    /// GETs JSON, mapping every non-2xx status to an error that says what to fix and an
    /// unreadable body to a protocol error.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        url: Url,
        what: &str,
    ) -> Result<T, AdapterError> {
        let answer = self.send(Method::GET, url, None, Call::read(what)).await?;
        self.check(&answer, what)?;
        self.parse(&answer, what)
    }

    /// Reads a 2xx answer's JSON.
    pub(crate) fn parse<T: DeserializeOwned>(
        &self,
        answer: &Answer,
        what: &str,
    ) -> Result<T, AdapterError> {
        if answer.truncated {
            return Err(AdapterError::Protocol(format!(
                "Concourse `{}`'s answer to {what} is larger than {MAX_JSON_BYTES} bytes",
                self.instance
            )));
        }
        serde_json::from_slice(&answer.body).map_err(|e| {
            AdapterError::Protocol(format!(
                "Concourse `{}` answered something baton cannot read when it tried to {what} ({e}){}",
                self.instance,
                excerpt(&answer.text())
            ))
        })
    }

    /// Maps a non-2xx answer to an error that says what to fix; a 2xx passes.
    pub(crate) fn check(&self, answer: &Answer, what: &str) -> Result<(), AdapterError> {
        let status = answer.status;
        if status.is_success() {
            return Ok(());
        }
        let instance = &self.instance;
        let team = &self.team;
        Err(match status {
            StatusCode::UNAUTHORIZED => self.auth.refused(instance, what),
            StatusCode::FORBIDDEN => AdapterError::Auth(format!(
                "Concourse `{instance}` forbids {} to {what} (403 Forbidden): make the user a member of team `{team}` (`fly set-team`), with a role that may do it (`member` or `pipeline-operator` to trigger and abort builds)",
                self.auth.who()
            )),
            StatusCode::NOT_FOUND => AdapterError::NotFound(format!(
                "Concourse `{instance}` has nothing at the URL used to {what} (404): check `url` and `team` (`{team}`)"
            )),
            s if s.is_redirection() => AdapterError::Protocol(format!(
                "Concourse `{instance}` redirected baton's request to {what} ({s}): check that `url` is Concourse's web URL (https rather than http, the path prefix)"
            )),
            StatusCode::TOO_MANY_REQUESTS => AdapterError::Transient(format!(
                "Concourse `{instance}` is rate limiting (429) baton's requests to {what}"
            )),
            s if s.is_server_error() => AdapterError::Transient(format!(
                "Concourse `{instance}` answered {s} when baton tried to {what}"
            )),
            s => AdapterError::Invalid(format!(
                "Concourse `{instance}` refused to {what} ({s}){}",
                excerpt(&answer.text())
            )),
        })
    }

    /// Opens build `id`'s event stream, from after event `after` when given; a refused
    /// token is renewed once. Any answer but 200 is an error.
    pub(crate) async fn open_events(
        &self,
        id: u64,
        after: Option<u64>,
    ) -> Result<reqwest::Response, AdapterError> {
        let what = "follow a build's events";
        let url = self.api(&["builds", &id.to_string(), "events"]);
        let mut renewed = false;
        loop {
            let bearer = self.bearer().await?;
            let mut builder = self
                .streams
                .get(url.clone())
                .header(ACCEPT, "text/event-stream")
                .bearer_auth(bearer.token.expose());
            if let Some(after) = after {
                builder = builder.header("last-event-id", after.to_string());
            }
            let response = match tokio::time::timeout(self.request_timeout, builder.send()).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => return Err(self.transport(what, Repeat::Safe, &e)?),
                Err(_) => {
                    return Err(AdapterError::Transient(format!(
                        "Concourse `{}` did not answer within {} (request_timeout) when baton tried to {what}",
                        self.instance,
                        HumanDuration(self.request_timeout)
                    )));
                }
            };
            let status = response.status();
            if status == StatusCode::OK {
                return Ok(response);
            }
            if status == StatusCode::UNAUTHORIZED && !renewed && self.auth.renewable() {
                renewed = true;
                self.renew(bearer.generation).await?;
                continue;
            }
            let answer = Answer {
                status,
                body: Vec::new(),
                truncated: false,
            };
            self.check(&answer, what)?;
            return Err(AdapterError::Protocol(format!(
                "Concourse `{}` answered {status} when baton tried to {what}",
                self.instance
            )));
        }
    }

    /// The HTTP client for calls that are not an event stream (the token endpoints).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// `url` with `vars` as JSON query values.
pub(crate) fn with_vars(mut url: Url, vars: &Map<String, Value>) -> Url {
    if !vars.is_empty() {
        let mut query = url.query_pairs_mut();
        for (key, value) in vars {
            query.append_pair(&format!("vars.{key}"), &value.to_string());
        }
    }
    url
}

/// The wait a 429 or 503 asks for: `Retry-After` in seconds.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Reads an answer's body, keeping at most `cap` bytes.
pub(crate) async fn read(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<(Answer, HeaderMap), reqwest::Error> {
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > cap {
            body.truncate(cap);
            truncated = true;
            break;
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

/// The start of an answer's text, for a message.
pub(crate) fn excerpt(text: &str) -> String {
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
    use crate::auth::Auth;
    use baton_core::Secret;
    use serde_json::json;

    #[test]
    fn names_are_one_segment_each_and_instance_vars_are_json() {
        let root = Url::parse("https://ci.example.com/concourse/").unwrap();
        let client = Client::new(
            Target {
                instance: "ci",
                root: &root,
                team: "main team",
                request_timeout: Duration::from_secs(1),
                retry: RetryPolicy::default(),
            },
            Auth::bearer(Secret::new("t")),
        )
        .unwrap();
        let vars = json!({"branch": "feature/x", "n": 2});
        assert_eq!(
            client
                .pipeline_api(
                    "my app",
                    vars.as_object().unwrap(),
                    &["jobs", "a/b", "builds"]
                )
                .as_str(),
            "https://ci.example.com/concourse/api/v1/teams/main%20team/pipelines/my%20app/jobs/a%2Fb/builds?vars.branch=%22feature%2Fx%22&vars.n=2"
        );
        assert_eq!(
            client.api(&["builds", "7"]).as_str(),
            "https://ci.example.com/concourse/api/v1/builds/7"
        );
        assert_eq!(client.origin(), "https://ci.example.com");
    }
}
