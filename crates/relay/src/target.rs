//! One relay target as the dispatcher uses it, and one try of one message to it.

use std::error::Error as StdError;
use std::time::{Duration, Instant, SystemTime};

use baton_config::{RelayHeaderValue, RelayRate, RelayTarget};
use baton_core::expr::parse_val;
use baton_core::expr_bound::{Limits, offload};
use baton_core::{Expr, HumanDuration, SecretResolver};
use baton_store::relay::ANSWER_SLICE_BYTES;
use baton_store::{DueRelay, Millis, RelayOutcome, now_millis};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use reqwest::Url;
use reqwest::redirect::Policy;

use crate::RelayError;
use crate::headers::passed_on;
use crate::resolve::{CheckedResolver, Unreachable, literal_refusal};
use crate::schedule::parse_retry_after;
use crate::sign::{Signer, WEBHOOK_ID};

/// The most of an answer's body read: enough for a receiver's usual answer to be read to
/// its end, so its connection can carry the next try; past this the connection is dropped.
const MAX_ANSWER_READ: usize = 64 << 10;

/// `Idempotency-Key`: the message's key, the same on every try.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `X-Baton-Relay`: the relay's name.
const X_BATON_RELAY: HeaderName = HeaderName::from_static("x-baton-relay");
/// `X-Baton-Source`: the source the delivery came to.
const X_BATON_SOURCE: HeaderName = HeaderName::from_static("x-baton-source");
/// `X-Baton-Event`: the delivery's event type.
const X_BATON_EVENT: HeaderName = HeaderName::from_static("x-baton-event");
/// `X-Baton-Delivery`: the sender's id of the delivery.
const X_BATON_DELIVERY: HeaderName = HeaderName::from_static("x-baton-delivery");

/// The `User-Agent` of relayed requests.
const RELAY_USER_AGENT: &str = concat!("baton-relay/", env!("CARGO_PKG_VERSION"));

/// A target, its secrets resolved and its HTTP client built.
#[derive(Debug)]
pub(crate) struct Target {
    /// The relay it belongs to.
    pub(crate) relay: String,
    /// Its name in the relay.
    pub(crate) name: String,
    /// The most tries in flight at once.
    pub(crate) concurrency: usize,
    /// One message at a time, in delivery order.
    pub(crate) ordered: bool,
    /// The delays between tries.
    pub(crate) schedule: Vec<Duration>,
    /// The most tries started per period.
    pub(crate) rate: Option<RelayRate>,
    /// Where messages are POSTed.
    url: Url,
    /// Whether restricted addresses may be reached.
    allow_private: bool,
    /// How long one try may take.
    timeout: Duration,
    /// The jq expression that makes the body from the payload, if any.
    transform: Option<Expr>,
    /// The configured headers, secrets resolved, in the config's order.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// How requests are signed.
    signer: Signer,
    /// The target's own client: its resolver refuses what the target may not reach, it
    /// follows no redirect and uses no proxy, and its connections are kept for the next try.
    client: reqwest::Client,
}

/// How one try went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sent {
    /// How it ended.
    pub(crate) outcome: RelayOutcome,
    /// The answer's status code, if one came.
    pub(crate) code: Option<u16>,
    /// The start of the answer's body, at most `ANSWER_SLICE_BYTES`, cut at a character.
    pub(crate) body: Option<String>,
    /// What went wrong, for people.
    pub(crate) error: Option<String>,
    /// When it started (wall clock).
    pub(crate) started_at: Millis,
    /// How long it took.
    pub(crate) duration: Duration,
    /// A 429's (or 503's) `Retry-After`, if it had one that could be read.
    pub(crate) retry_after: Option<Duration>,
}

/// How a try ended, before its timing is added (see [`Sent`]'s fields).
struct Ending {
    /// How it ended.
    outcome: RelayOutcome,
    /// The answer's status code.
    code: Option<u16>,
    /// The start of the answer's body.
    body: Option<String>,
    /// What went wrong, for people.
    error: Option<String>,
    /// The answer's `Retry-After`.
    retry_after: Option<Duration>,
}

impl Ending {
    /// A try that got no answer.
    fn unanswered(outcome: RelayOutcome, error: String) -> Self {
        Self {
            outcome,
            code: None,
            body: None,
            error: Some(error),
            retry_after: None,
        }
    }
}

impl Target {
    /// Resolves `config`'s secrets and builds its client.
    pub(crate) fn new(
        relay: &str,
        config: &RelayTarget,
        secrets: &dyn SecretResolver,
    ) -> Result<Self, RelayError> {
        let target = config.name.as_str();
        let url = Url::parse(&config.url)
            .map_err(|e| e.to_string())
            .and_then(|url| match url.scheme() {
                "http" | "https" if url.host_str().is_some() => Ok(url),
                "http" | "https" => Err("it has no host".to_owned()),
                other => Err(format!("`{other}` is not http or https")),
            })
            .map_err(|reason| RelayError::Url {
                relay: relay.to_owned(),
                target: target.to_owned(),
                reason,
            })?;
        let headers = config
            .headers
            .iter()
            .map(|(name, value)| configured_header(relay, target, name, value, secrets))
            .collect::<Result<_, _>>()?;
        let signer = Signer::new(relay, target, &config.sign, secrets)?;
        let client = reqwest::Client::builder()
            .dns_resolver(CheckedResolver {
                allow_private: config.allow_private,
            })
            .redirect(Policy::none())
            .no_proxy()
            .timeout(config.timeout)
            .tls_backend_rustls()
            .build()
            .map_err(|source| RelayError::Client {
                relay: relay.to_owned(),
                target: target.to_owned(),
                source,
            })?;
        Ok(Self {
            relay: relay.to_owned(),
            name: config.name.clone(),
            concurrency: config.concurrency,
            ordered: config.ordered,
            schedule: config.schedule.clone(),
            rate: config.rate,
            url,
            allow_private: config.allow_private,
            timeout: config.timeout,
            transform: config.transform.clone(),
            headers,
            signer,
            client,
        })
    }

    /// One try of `message`: its body (the `transform` run under `limits`), its headers and
    /// signature, the request, and the answer, classified.
    pub(crate) async fn send(&self, message: &DueRelay, limits: Limits) -> Sent {
        let started_at = now_millis();
        let clock = Instant::now();
        let ending = self.attempt(message, limits).await;
        Sent {
            outcome: ending.outcome,
            code: ending.code,
            body: ending.body,
            error: ending.error,
            started_at,
            duration: clock.elapsed(),
            retry_after: ending.retry_after,
        }
    }

    /// [`Target::send`] without the timing.
    async fn attempt(&self, message: &DueRelay, limits: Limits) -> Ending {
        // The client does not resolve a host written as an address, so its resolver
        // cannot refuse it: the check is here, on every try.
        if !self.allow_private
            && let Some(refusal) = self.url.host_str().and_then(literal_refusal)
        {
            return Ending::unanswered(RelayOutcome::Refused, refusal);
        }
        let body = match self.body(message, limits).await {
            Ok(body) => body,
            Err(error) => return Ending::unanswered(RelayOutcome::Refused, error),
        };
        let headers = self.request_headers(message, &body, SystemTime::now());
        let request = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body);
        match request.send().await {
            Ok(response) => answered(response).await,
            Err(error) => self.unanswered(&error),
        }
    }

    /// The body sent: the delivery's body byte for byte, or the transform's first output.
    async fn body(&self, message: &DueRelay, limits: Limits) -> Result<Bytes, String> {
        let Some(transform) = &self.transform else {
            return Ok(Bytes::from(message.body.clone()));
        };
        let expr = transform.clone();
        let payload = message.body.clone();
        let outputs = offload(limits, move |_| {
            let input = parse_val(&payload).map_err(|e| {
                format!(
                    "transform `{}` needs a JSON body, and the delivery's is not: {e}",
                    expr.source()
                )
            })?;
            expr.eval_val(input).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        let first = outputs.into_iter().next().ok_or_else(|| {
            format!(
                "transform `{}` gave no output, so there is no body to send",
                transform.source()
            )
        })?;
        serde_json::to_vec(&first)
            .map(Bytes::from)
            .map_err(|e| format!("transform `{}`: {e}", transform.source()))
    }

    /// The request's headers, later ones replacing earlier ones of the same name: the
    /// delivery's passed-on headers, the relay's own, the target's configured ones, and
    /// the signature over `body` at `now`.
    fn request_headers(&self, message: &DueRelay, body: &[u8], now: SystemTime) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in passed_on(&message.headers) {
            headers.insert(name, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(RELAY_USER_AGENT));
        for (name, text) in [
            (IDEMPOTENCY_KEY, &message.key),
            (WEBHOOK_ID, &message.key),
            (X_BATON_RELAY, &self.relay),
            (X_BATON_SOURCE, &message.source),
            (X_BATON_EVENT, &message.event),
            (X_BATON_DELIVERY, &message.delivery_id),
        ] {
            // A sender's id or event that cannot be a header value is left out, not
            // sent broken.
            if let Ok(value) = HeaderValue::from_str(text)
                && !text.is_empty()
            {
                headers.insert(name, value);
            }
        }
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        let timestamp = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (name, value) in self.signer.headers(&message.key, timestamp, body) {
            headers.insert(name, value);
        }
        headers
    }

    /// The ending of a try that got no answer, in words.
    fn unanswered(&self, error: &reqwest::Error) -> Ending {
        if let Some(unreachable) = in_chain::<Unreachable>(error) {
            return Ending::unanswered(RelayOutcome::Refused, unreachable.to_string());
        }
        if error.is_timeout() {
            return Ending::unanswered(
                RelayOutcome::Timeout,
                format!("timed out after {}", HumanDuration(self.timeout)),
            );
        }
        let text = if error.is_connect() {
            format!(
                "cannot connect to {}: {}",
                self.url.host_str().unwrap_or_default(),
                innermost(error)
            )
        } else if in_chain::<hyper::Error>(error).is_some_and(hyper::Error::is_incomplete_message) {
            "connection closed before an answer".to_owned()
        } else {
            format!("the request failed: {}", innermost(error))
        };
        Ending::unanswered(RelayOutcome::Connection, text)
    }
}

/// A configured header, its value read if it is a secret.
fn configured_header(
    relay: &str,
    target: &str,
    name: &str,
    value: &RelayHeaderValue,
    secrets: &dyn SecretResolver,
) -> Result<(HeaderName, HeaderValue), RelayError> {
    let refused = |reason: &str| RelayError::Header {
        relay: relay.to_owned(),
        target: target.to_owned(),
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| refused("it is not a header name (letters, digits and `-`)"))?;
    let value = match value {
        RelayHeaderValue::Plain(text) => HeaderValue::from_str(text)
            .map_err(|_| refused("the value holds a line break or another control character"))?,
        RelayHeaderValue::Secret(reference) => {
            let secret = secrets
                .resolve(reference)
                .map_err(|source| RelayError::Secret {
                    relay: relay.to_owned(),
                    target: target.to_owned(),
                    what: format!("headers.{name}"),
                    source,
                })?;
            let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| {
                refused("the secret holds a line break or another control character")
            })?;
            value.set_sensitive(true);
            value
        }
    };
    Ok((header, value))
}

/// The ending of a try that got an answer: its status classified, a `Retry-After` read,
/// the start of its body kept.
async fn answered(mut response: reqwest::Response) -> Ending {
    let status = response.status();
    let retry_after = match status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| parse_retry_after(value, SystemTime::now())),
        _ => None,
    };
    let (outcome, error) = match status.as_u16() {
        200..=299 => (RelayOutcome::Delivered, None),
        410 => (RelayOutcome::Gone, Some("HTTP 410 (gone)".to_owned())),
        429 => (RelayOutcome::RateLimited, Some("HTTP 429".to_owned())),
        300..=399 => {
            let to = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(|l| format!(" to `{}`", cut(l, 200)))
                .unwrap_or_default();
            let code = status.as_u16();
            (
                RelayOutcome::Failed,
                Some(format!(
                    "HTTP {code}, a redirect{to}: redirects are not followed, so point the target's url where it leads"
                )),
            )
        }
        code => (RelayOutcome::Failed, Some(format!("HTTP {code}"))),
    };
    // The status is the answer; a body cut short (the timeout, a broken connection) only
    // shortens what is kept of it.
    let mut kept = Vec::new();
    let mut read = 0;
    while read < MAX_ANSWER_READ {
        let Ok(Some(chunk)) = response.chunk().await else {
            break;
        };
        read += chunk.len();
        // One byte past the slice shows whether the cut splits a character.
        let room = (ANSWER_SLICE_BYTES + 1).saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ending {
        outcome,
        code: Some(status.as_u16()),
        body: (!kept.is_empty()).then(|| answer_slice(&kept)),
        error,
        retry_after,
    }
}

/// The start of an answer's body as text: at most [`ANSWER_SLICE_BYTES`] bytes, cut before
/// a character the limit would split, bytes that are not UTF-8 shown as `�`.
fn answer_slice(bytes: &[u8]) -> String {
    let mut end = bytes.len().min(ANSWER_SLICE_BYTES);
    if end < bytes.len() {
        // UTF-8 continuation bytes are 0b10xxxxxx; a character has at most three.
        let floor = end.saturating_sub(3);
        while end > floor && bytes[end] & 0xc0 == 0x80 {
            end -= 1;
        }
    }
    let text = String::from_utf8_lossy(&bytes[..end]);
    // A replacement character is longer than the byte it replaces.
    cut(&text, ANSWER_SLICE_BYTES).to_owned()
}

/// `text`'s first `max` bytes at most, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The first error of type `E` in `error`'s chain of sources, itself included.
fn in_chain<'a, E: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    std::iter::successors(Some(error), |&e| e.source()).find_map(|e| e.downcast_ref::<E>())
}

/// The last of `error`'s sources: the cause, without the layers' "error sending request".
fn innermost(error: &(dyn StdError + 'static)) -> String {
    std::iter::successors(Some(error), |&e| e.source())
        .last()
        .map(ToString::to_string)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
