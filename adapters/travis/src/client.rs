//! HTTP to Travis CI's API v3 for one repository: the version and token headers, the slug
//! as one path segment, bounded requests and answers, retries of 429 and 5xx (honouring
//! `Retry-After`) that never repeat a create blindly, and Travis's error bodies turned into
//! errors that say what to fix.

use std::time::Duration;

use baton_core::wire::{Repeat, RetryPolicy, error_chain, excerpt, read_json};
use baton_core::{AdapterError, HumanDuration, Secret};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The largest JSON answer read.
pub(crate) const JSON_CAP: usize = 4_194_304;

/// One request: what it is for (in messages), whether it may be sent twice, and how much
/// of the answer to keep.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub(crate) what: &'a str,
    pub(crate) repeat: Repeat,
    pub(crate) cap: usize,
    /// Past `cap`, keep the end of the answer (a log's tail) rather than its start.
    pub(crate) tail: bool,
}

impl<'a> Ask<'a> {
    /// A read of a JSON answer.
    pub(crate) fn read(what: &'a str) -> Self {
        let (repeat, cap, tail) = (Repeat::Safe, JSON_CAP, false);
        Self {
            what,
            repeat,
            cap,
            tail,
        }
    }
}

/// An answer of any status, its body read up to the cap.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Vec<u8>,
    pub(crate) cut: bool,
    /// The server's clock (`Date`), to the second.
    pub(crate) date_ms: Option<u64>,
}

impl Reply {
    /// Travis's error body, when the answer is one.
    pub(crate) fn travis_error(&self) -> Option<TravisError> {
        serde_json::from_slice::<TravisError>(&self.body)
            .ok()
            .filter(|e| e.kind == "error")
    }

    fn excerpt(&self) -> String {
        excerpt(&self.body)
    }
}

/// `{"@type": "error", "error_type": …, "error_message": …}` and the fields some errors add.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TravisError {
    #[serde(rename = "@type")]
    kind: String,
    #[serde(default)]
    pub(crate) error_type: String,
    #[serde(default)]
    pub(crate) error_message: String,
    /// `request_limit_reached`: the requests the repository may create per window.
    #[serde(default)]
    pub(crate) max_requests: Option<u32>,
    /// `request_limit_reached`: the window, in seconds.
    #[serde(default)]
    pub(crate) per_seconds: Option<u64>,
    #[serde(default)]
    pub(crate) resource_type: Option<String>,
}

impl TravisError {
    pub(crate) fn said(&self) -> String {
        format!("{}: {}", self.error_type, self.error_message)
    }
}

/// The error type of a spent request limit.
pub(crate) const LIMIT_REACHED: &str = "request_limit_reached";

/// The HTTP client of one repository.
#[derive(Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    api: Url,
    instance: String,
    slug: String,
    token: Secret,
    retry: RetryPolicy,
    request_timeout: Duration,
}

impl Client {
    /// A client for repository `slug` of the API at `api` (ending in `/`).
    pub(crate) fn new(
        instance: &str,
        api: &Url,
        slug: &str,
        token: Secret,
        request_timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, AdapterError> {
        let http = reqwest::Client::builder()
            // Never follow a redirect with the token: a wrong `url` is reported instead.
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
            api: api.clone(),
            instance: instance.to_owned(),
            slug: slug.to_owned(),
            token,
            retry,
            request_timeout,
        })
    }

    /// The instance's name, for messages.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// `owner/name`.
    pub(crate) fn slug(&self) -> &str {
        &self.slug
    }

    /// The API's root.
    pub(crate) fn api(&self) -> &Url {
        &self.api
    }

    /// The API URL of `segments` (each one path segment, percent-encoded on its own, so
    /// the slug goes as `owner%2Fname`) with `query`.
    pub(crate) fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.api.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// `/repo/<slug>/…`.
    pub(crate) fn repo_url(&self, rest: &[&str], query: &[(&str, &str)]) -> Url {
        let mut segments = vec!["repo", self.slug.as_str()];
        segments.extend_from_slice(rest);
        self.url(&segments, query)
    }

    /// Sends one request and returns its answer of any status, retrying 429 (but not a
    /// spent request limit), 5xx and failed connections as `ask.repeat` allows.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: Url,
        json: Option<&Value>,
        ask: Ask<'_>,
    ) -> Result<Reply, AdapterError> {
        let mut waited = Duration::ZERO;
        for n in 0.. {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header("Travis-API-Version", "3")
                .header("Authorization", format!("token {}", self.token.expose()));
            request = match json {
                Some(body) => request.json(body),
                None => request,
            };
            let (failure, asked) = match request.send().await {
                Ok(response) => {
                    let (reply, headers) = receive(response, ask).await.map_err(|e| {
                        self.lost(ask, &format!("the answer broke off ({})", error_chain(&e)))
                    })?;
                    let limit = reply
                        .travis_error()
                        .is_some_and(|e| e.error_type == LIMIT_REACHED);
                    let again = match reply.status {
                        StatusCode::TOO_MANY_REQUESTS => !limit,
                        s if s.is_server_error() && ask.repeat == Repeat::Once => {
                            return Err(self.lost(ask, &format!("it answered {s}")));
                        }
                        s => s.is_server_error(),
                    };
                    if !again {
                        return Ok(reply);
                    }
                    let failure = AdapterError::Transient(format!(
                        "Travis `{}` answered {} {} times when baton tried to {}",
                        self.instance,
                        reply.status,
                        n + 1,
                        ask.what
                    ));
                    (failure, retry_after(&headers))
                }
                Err(e) if e.is_connect() => {
                    let failure = AdapterError::Transient(format!(
                        "cannot reach Travis `{}` at {} to {}: {}",
                        self.instance,
                        self.api.origin().ascii_serialization(),
                        ask.what,
                        error_chain(&e)
                    ));
                    (failure, None)
                }
                Err(e) if ask.repeat == Repeat::Once => {
                    let what_happened = if e.is_timeout() {
                        format!("no answer within {}", HumanDuration(self.request_timeout))
                    } else {
                        error_chain(&e)
                    };
                    return Err(self.lost(ask, &what_happened));
                }
                Err(e) if e.is_timeout() => {
                    return Err(AdapterError::Transient(format!(
                        "Travis `{}` did not answer within {} (request_timeout) when baton tried to {}",
                        self.instance,
                        HumanDuration(self.request_timeout),
                        ask.what
                    )));
                }
                Err(e) => {
                    let failure = AdapterError::Transient(format!(
                        "Travis `{}`: the request to {} failed: {}",
                        self.instance,
                        ask.what,
                        error_chain(&e)
                    ));
                    (failure, None)
                }
            };
            if n + 1 >= self.retry.attempts {
                return Err(failure);
            }
            let wait = self.retry.wait_within_budget(
                n,
                rand::random_range(0.5..=1.0),
                asked,
                waited,
                &failure,
            )?;
            tracing::debug!(instance = %self.instance, what = ask.what, ?wait, "retrying a Travis request");
            tokio::time::sleep(wait).await;
            waited += wait;
        }
        unreachable!("the loop returns")
    }

    /// A request that may have been carried out although no answer says so.
    fn lost(&self, ask: Ask<'_>, what_happened: &str) -> AdapterError {
        match ask.repeat {
            Repeat::Once => AdapterError::Transient(format!(
                "Travis `{}`: {what_happened} when baton tried to {}; it may have been done, so baton looks for it before trying again",
                self.instance, ask.what
            )),
            Repeat::Safe => AdapterError::Transient(format!(
                "Travis `{}`: {what_happened} when baton tried to {}",
                self.instance, ask.what
            )),
        }
    }

    /// GETs JSON, every refusal explained.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        url: Url,
        what: &str,
    ) -> Result<T, AdapterError> {
        let reply = self.send(Method::GET, url, None, Ask::read(what)).await?;
        self.accept(&reply, what)?;
        self.parse(&reply, what)
    }

    /// The answer's JSON.
    pub(crate) fn parse<T: DeserializeOwned>(
        &self,
        reply: &Reply,
        what: &str,
    ) -> Result<T, AdapterError> {
        let system = format!("Travis `{}`", self.instance);
        read_json((&reply.body, reply.cut, JSON_CAP), &system, what)
    }

    /// Passes a 2xx answer; turns any other into an error that says what to fix.
    pub(crate) fn accept(&self, reply: &Reply, what: &str) -> Result<(), AdapterError> {
        let status = reply.status;
        if status.is_success() {
            return Ok(());
        }
        let (instance, slug) = (&self.instance, &self.slug);
        let said = reply.travis_error();
        let words = said
            .as_ref()
            .map(|e| format!(" {}", e.said()))
            .unwrap_or_default();
        let kind = said.as_ref().map(|e| e.error_type.as_str()).unwrap_or("");
        Err(match status {
            StatusCode::UNAUTHORIZED => self.bad_token(status, &words, what),
            StatusCode::FORBIDDEN if matches!(kind, "login_required" | "wrong_credentials") => {
                self.bad_token(status, &words, what)
            }
            StatusCode::FORBIDDEN => AdapterError::Auth(format!(
                "Travis `{instance}` does not let `token` {what} in `{slug}` ({status}{words}): the token's user needs push (write) access to the repository"
            )),
            StatusCode::NOT_FOUND if said.is_some() => {
                let resource = said
                    .as_ref()
                    .and_then(|e| e.resource_type.clone())
                    .unwrap_or_else(|| "resource".to_owned());
                AdapterError::NotFound(format!(
                    "Travis `{instance}` has no {resource} to {what} ({status}{words}): check `repo` (`{slug}`), that the repository is active on Travis, and that the token's user can see it"
                ))
            }
            StatusCode::NOT_FOUND => AdapterError::NotFound(format!(
                "Travis `{instance}` answered {status} without a Travis API v3 error when baton tried to {what}{}: check that `url` is the API's root (`https://api.travis-ci.com`, or `https://<host>/api` for Enterprise), not the web app",
                reply.excerpt()
            )),
            s if s.is_redirection() => AdapterError::Protocol(format!(
                "Travis `{instance}` redirected baton's request to {what} ({s}): check that `url` is the API's root (https rather than http, the `/api` of Enterprise)"
            )),
            StatusCode::TOO_MANY_REQUESTS => AdapterError::Transient(format!(
                "Travis `{instance}` is rate limiting (429{words}) baton's requests to {what}"
            )),
            s if s.is_server_error() => AdapterError::Transient(format!(
                "Travis `{instance}` answered {s} when baton tried to {what}"
            )),
            s if s.is_client_error() => AdapterError::Invalid(format!(
                "Travis `{instance}` refused to {what} for `{slug}` ({s}{}){}",
                words,
                if said.is_none() {
                    reply.excerpt()
                } else {
                    String::new()
                }
            )),
            s => AdapterError::Protocol(format!(
                "Travis `{instance}` answered {s} when baton tried to {what}{}",
                reply.excerpt()
            )),
        })
    }

    fn bad_token(&self, status: StatusCode, words: &str, what: &str) -> AdapterError {
        AdapterError::Auth(format!(
            "Travis `{}` refused `token` ({status}{words}) when baton tried to {what}: the token is wrong, expired or was regenerated; copy the API token from Travis (Settings > API authentication) into the secret `token` names",
            self.instance
        ))
    }
}

/// `Retry-After` in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("retry-after")?.to_str().ok()?;
    text.trim().parse().ok().map(Duration::from_secs)
}

/// The `Date` header (RFC 7231's IMF-fixdate, which RFC 2822 reads) in ms since the epoch.
fn server_date(headers: &HeaderMap) -> Option<u64> {
    let text = headers.get("date")?.to_str().ok()?;
    let date = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    u64::try_from(date.timestamp_millis()).ok()
}

/// Reads an answer's body, keeping at most `ask.cap` bytes: its start, or with `ask.tail`
/// its end.
async fn receive(
    mut response: reqwest::Response,
    ask: Ask<'_>,
) -> Result<(Reply, HeaderMap), reqwest::Error> {
    let status = response.status();
    let headers = response.headers().clone();
    let mut body: Vec<u8> = Vec::new();
    let mut cut = false;
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() <= ask.cap {
            continue;
        }
        cut = true;
        if ask.tail {
            let extra = body.len() - ask.cap;
            body.drain(..extra);
        } else {
            body.truncate(ask.cap);
            break;
        }
    }
    let date_ms = server_date(&headers);
    Ok((
        Reply {
            status,
            body,
            cut,
            date_ms,
        },
        headers,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(api: &str) -> Client {
        Client::new(
            "travis",
            &Url::parse(api).unwrap(),
            "octo-org/app.js",
            Secret::new("t"),
            Duration::from_secs(1),
            RetryPolicy::default(),
        )
        .unwrap()
    }

    #[test]
    fn the_slug_is_one_segment_and_enterprise_keeps_its_prefix() {
        assert_eq!(
            client("https://api.travis-ci.com/")
                .repo_url(&["requests"], &[("limit", "50")])
                .as_str(),
            "https://api.travis-ci.com/repo/octo-org%2Fapp.js/requests?limit=50"
        );
        assert_eq!(
            client("https://travis.example.com/api/")
                .url(&["job", "42", "log.txt"], &[])
                .as_str(),
            "https://travis.example.com/api/job/42/log.txt"
        );
    }

    #[test]
    fn travis_errors_are_read_and_other_bodies_are_not() {
        let reply = |body: &str| Reply {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: body.as_bytes().to_vec(),
            cut: false,
            date_ms: None,
        };
        let limit = reply(
            r#"{"@type": "error", "error_type": "request_limit_reached", "error_message": "request limit reached for resource", "max_requests": 10, "per_seconds": 3600}"#,
        )
        .travis_error()
        .unwrap();
        assert_eq!(limit.error_type, LIMIT_REACHED);
        assert_eq!(
            (limit.max_requests, limit.per_seconds),
            (Some(10), Some(3600))
        );
        assert!(
            reply(r#"{"@type": "request", "id": 1}"#)
                .travis_error()
                .is_none()
        );
        assert!(reply("Too Many Requests").travis_error().is_none());
    }

    #[test]
    fn every_refusal_says_what_to_fix() {
        let c = client("https://api.travis-ci.com/");
        let answer = |status: u16, body: &str| {
            let reply = Reply {
                status: StatusCode::from_u16(status).unwrap(),
                body: body.as_bytes().to_vec(),
                cut: false,
                date_ms: None,
            };
            let refused = c.accept(&reply, "read a build").unwrap_err();
            let (kind, text) = match &refused {
                AdapterError::Auth(m) => ("auth", m.clone()),
                AdapterError::NotFound(m) => ("not found", m.clone()),
                AdapterError::Invalid(m) => ("invalid", m.clone()),
                AdapterError::Transient(m) => ("transient", m.clone()),
                AdapterError::Protocol(m) => ("protocol", m.clone()),
                AdapterError::Throttled { message, .. } => ("throttled", message.clone()),
            };
            format!("{kind}: {text}")
        };
        let error = |kind: &str, message: &str| {
            format!(
                r#"{{"@type": "error", "error_type": "{kind}", "error_message": "{message}", "resource_type": "repository"}}"#
            )
        };
        for (status, body, needles) in [
            (
                403,
                error("wrong_credentials", "access denied"),
                &[
                    "auth: ",
                    "(403 Forbidden wrong_credentials: access denied)",
                    "regenerated",
                ][..],
            ),
            (
                403,
                error("login_required", "login required"),
                &["auth: ", "refused `token`"][..],
            ),
            (
                401,
                String::new(),
                &["auth: ", "refused `token` (401 Unauthorized)"][..],
            ),
            (
                403,
                error("push_access_required", "push access required"),
                &["auth: ", "push (write) access", "`octo-org/app.js`"][..],
            ),
            (
                404,
                error("not_found", "repository not found (or insufficient access)"),
                &[
                    "not found: ",
                    "has no repository to read a build",
                    "check `repo`",
                ][..],
            ),
            (
                404,
                "<h1>Not Found</h1>".into(),
                &[
                    "not found: ",
                    "without a Travis API v3 error",
                    "`<h1>Not Found</h1>`",
                    "not the web app",
                ][..],
            ),
            (302, String::new(), &["protocol: ", "redirected"][..]),
            (
                429,
                "slow down".into(),
                &["transient: ", "rate limiting (429)"][..],
            ),
            (
                503,
                String::new(),
                &["transient: ", "503 Service Unavailable"][..],
            ),
            (
                400,
                error("wrong_params", "missing user"),
                &["invalid: ", "(400 Bad Request wrong_params: missing user)"][..],
            ),
            (418, "teapot".into(), &["invalid: ", ": `teapot`"][..]),
            (101, String::new(), &["protocol: ", "answered 101"][..]),
        ] {
            let said = answer(status, &body);
            for needle in needles {
                assert!(
                    said.contains(needle),
                    "{status} {body}: `{needle}` is not in {said}"
                );
            }
        }
        let ok = Reply {
            status: StatusCode::ACCEPTED,
            body: Vec::new(),
            cut: false,
            date_ms: None,
        };
        assert!(c.accept(&ok, "x").is_ok());
    }

    #[test]
    fn the_server_clock_is_read_from_date() {
        let mut headers = HeaderMap::new();
        headers.insert("date", "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        assert_eq!(server_date(&headers), Some(784_111_777_000));
        headers.insert("retry-after", "120".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(120)));
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}
