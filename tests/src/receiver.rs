//! A webhook receiver on 127.0.0.1 for the relay tests: a real HTTP/1.1 server that records
//! every request it gets, answers the way the test tells it to (at any moment), and checks
//! the signature of each request with its own code, so a test can say what a relay target
//! saw without trusting baton's signing.
//!
//! ```no_run
//! use baton_tests::receiver::{Answer, Behaviour, Receiver, Signing};
//! use std::time::Duration;
//!
//! let ci = Receiver::start(Signing::Github("s3cret".into()));
//! // … point a relay target at `ci.url`, send deliveries …
//! ci.set(Behaviour::Status(Answer::status(429).header("retry-after", "1")));
//! let seen = ci.wait_for_keys(3, Duration::from_secs(10));
//! assert!(ci.requests().iter().all(|r| r.signature.is_valid()));
//! # let _ = seen;
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::Mac;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

/// HMAC-SHA256, the MAC of both signature schemes.
type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How far a Standard Webhooks `webhook-timestamp` may be from the receiver's clock, either
/// way: the specification's recommended tolerance against replayed requests.
pub const STANDARD_WEBHOOKS_TOLERANCE_SECS: i64 = 5 * 60;

/// Which signature the receiver expects on every request, with its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signing {
    /// None: requests are recorded with [`Verdict::Unchecked`].
    Nothing,
    /// GitHub's `X-Hub-Signature-256`, keyed with this secret (its UTF-8 bytes).
    Github(String),
    /// Standard Webhooks' `webhook-signature`, keyed with this `whsec_<base64>` secret.
    StandardWebhooks(String),
}

/// What the receiver made of a request's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver expects no signature.
    Unchecked,
    /// The signature is right for the body (and, for Standard Webhooks, the id and a timestamp
    /// within the tolerance).
    Valid,
    /// Missing or wrong, and why.
    Invalid(String),
}

impl Verdict {
    /// True for [`Verdict::Valid`].
    pub fn is_valid(&self) -> bool {
        matches!(self, Self::Valid)
    }
}

/// A status answer: its code, extra headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub code: u16,
    /// Headers sent with it, besides the ones HTTP needs.
    pub headers: Vec<(String, String)>,
    /// The body text.
    pub body: String,
}

impl Answer {
    /// `code` with a one-line body naming it.
    pub fn status(code: u16) -> Self {
        Self {
            code,
            headers: Vec::new(),
            body: format!("receiver answers {code}\n"),
        }
    }

    /// The same answer with the header `name: value` too.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The same answer with `body` as its body.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }
}

/// How the receiver answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 OK.
    Ok,
    /// This answer (a 429 with `Retry-After`, a 410, a 500 with a long body…).
    Status(Answer),
    /// No answer at all: the request is read and the connection kept open until the client
    /// gives up (for timeouts).
    Hang,
    /// The request is read, then the connection is closed with no answer.
    Close,
    /// 500 to the first `n` requests of each `Idempotency-Key` (counting every request of that
    /// key received so far), 200 after.
    FailThenOk(usize),
}

impl Behaviour {
    /// [`Behaviour::Status`] with a plain [`Answer::status`].
    pub fn status(code: u16) -> Self {
        Self::Status(Answer::status(code))
    }
}

/// What the receiver did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// It answered with this status code.
    Status(u16),
    /// It kept the connection open without answering.
    Hung,
    /// It closed the connection without answering.
    Closed,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// When its head arrived.
    pub at: Instant,
    /// The same instant on the wall clock, in milliseconds since the Unix epoch (to compare
    /// with the times baton's API shows).
    pub wall_ms: u64,
    /// The method.
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The headers, names in lower case, in the order they came.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The `idempotency-key` header.
    pub key: Option<String>,
    /// What the receiver made of its signature.
    pub signature: Verdict,
    /// How the receiver answered it.
    pub answered: Answered,
}

impl Received {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }

    /// True when the request carried header `name` (lower case).
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {}", self.text()))
    }
}

/// The first value of header `name` (lower case) in `headers`.
fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// What the receiver knows, shared between the test and the serving tasks.
#[derive(Debug)]
struct Log {
    signing: Signing,
    behaviour: Behaviour,
    /// Behaviours for requests carrying a header value, checked before `behaviour`.
    rules: Vec<Rule>,
    requests: Vec<Received>,
}

/// A behaviour for the requests whose header `name` is `value`.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    value: String,
    behaviour: Behaviour,
}

/// The state and the signal the test waits on.
#[derive(Debug)]
struct Shared {
    log: Mutex<Log>,
    arrived: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Log> {
        // A test thread that panicked while reading leaves the log whole.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running receiver; it stops serving (and drops every open connection) when dropped.
pub struct Receiver {
    /// `http://127.0.0.1:PORT/`, for a target's `url`.
    pub url: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("url", &self.url).finish()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Receiver {
    /// Starts a receiver on a free port of 127.0.0.1 that answers 200 and checks `signing`.
    pub fn start(signing: Signing) -> Self {
        let shared = Arc::new(Shared {
            log: Mutex::new(Log {
                signing,
                behaviour: Behaviour::Ok,
                rules: Vec::new(),
                requests: Vec::new(),
            }),
            arrived: Condvar::new(),
        });
        // One worker: a test runs a few receivers next to `baton serve` on a small machine.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("receiver")
            .enable_all()
            .build()
            .expect("a runtime for the receiver");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the receiver to 127.0.0.1");
        let addr = listener.local_addr().expect("the receiver's address");
        runtime.spawn(accept(listener, shared.clone()));
        Self {
            url: format!("http://{addr}/"),
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Answers every later request this way (unless a rule of [`Receiver::set_for`] matches).
    pub fn set(&self, behaviour: Behaviour) {
        self.shared.lock().behaviour = behaviour;
    }

    /// Answers the later requests whose header `name` (lower case) is `value` this way,
    /// whatever [`Receiver::set`] says; a later rule for the same header and value replaces it.
    pub fn set_for(&self, name: &str, value: &str, behaviour: Behaviour) {
        let mut log = self.shared.lock();
        log.rules.retain(|r| !(r.name == name && r.value == value));
        log.rules.push(Rule {
            name: name.to_owned(),
            value: value.to_owned(),
            behaviour,
        });
    }

    /// Every request so far, in the order they arrived.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.lock().requests.clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// How many requests carried `Idempotency-Key: key`.
    pub fn count_for(&self, key: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.key.as_deref() == Some(key))
            .count()
    }

    /// Each `Idempotency-Key` seen, with how many requests carried it.
    pub fn counts_by_key(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for key in self
            .shared
            .lock()
            .requests
            .iter()
            .filter_map(|r| r.key.clone())
        {
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }

    /// The distinct `Idempotency-Key`s seen.
    pub fn keys(&self) -> BTreeSet<String> {
        self.counts_by_key().into_keys().collect()
    }

    /// The requests that carried `Idempotency-Key: key`, in the order they arrived.
    pub fn requests_for(&self, key: &str) -> Vec<Received> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.key.as_deref() == Some(key))
            .cloned()
            .collect()
    }

    /// Waits until `n` distinct `Idempotency-Key`s have arrived, and returns them; fails the
    /// test after `limit`, saying how many came.
    pub fn wait_for_keys(&self, n: usize, limit: Duration) -> BTreeSet<String> {
        self.wait_until(limit, &format!("{n} distinct idempotency keys"), |log| {
            let keys: BTreeSet<String> =
                log.requests.iter().filter_map(|r| r.key.clone()).collect();
            (keys.len() >= n).then_some(keys)
        })
    }

    /// Waits until `n` requests have arrived, and returns them all; fails the test after
    /// `limit`, saying how many came.
    pub fn wait_for_requests(&self, n: usize, limit: Duration) -> Vec<Received> {
        self.wait_until(limit, &format!("{n} requests"), |log| {
            (log.requests.len() >= n).then(|| log.requests.clone())
        })
    }

    /// Waits until `ready` gives an answer from the log; fails the test after `limit`.
    fn wait_until<T>(
        &self,
        limit: Duration,
        what: &str,
        mut ready: impl FnMut(&Log) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        let mut log = self.shared.lock();
        loop {
            if let Some(found) = ready(&log) {
                return found;
            }
            let now = Instant::now();
            if now >= deadline {
                let keys: BTreeSet<&str> = log
                    .requests
                    .iter()
                    .filter_map(|r| r.key.as_deref())
                    .collect();
                panic!(
                    "{}: timed out after {limit:?} waiting for {what}; {} requests with {} distinct keys arrived",
                    self.url,
                    log.requests.len(),
                    keys.len()
                );
            }
            log = self
                .shared
                .arrived
                .wait_timeout(log, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Serves each connection that comes, on a task of its own.
async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, or a connection reset before it was taken: the next
            // one may work.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { answer(&shared, request).await }
            });
            // A connection ends with an error when the receiver closes it on purpose
            // (`Behaviour::Close`) or the client goes away; neither concerns the test.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The error that makes hyper close a connection without answering.
#[derive(Debug)]
struct CloseWithoutAnswer;

impl std::fmt::Display for CloseWithoutAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the receiver closes the connection without an answer")
    }
}

impl std::error::Error for CloseWithoutAnswer {}

/// Records `request` and answers it as the receiver's behaviour says.
async fn answer(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, CloseWithoutAnswer> {
    let at = Instant::now();
    let wall_ms = unix_ms(SystemTime::now());
    let (head, body) = request.into_parts();
    let Ok(body) = body.collect().await else {
        // The client went away in the middle of the body: nothing to record or answer.
        return Err(CloseWithoutAnswer);
    };
    let body = body.to_bytes().to_vec();
    let headers: Vec<(String, String)> = head
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let key = header_in(&headers, "idempotency-key").map(str::to_owned);
    let behaviour = {
        let mut log = shared.lock();
        let behaviour = chosen(&log, &headers, key.as_deref());
        let signature = verify(&log.signing, &headers, &body, unix_secs(SystemTime::now()));
        log.requests.push(Received {
            at,
            wall_ms,
            method: head.method.to_string(),
            path: head
                .uri
                .path_and_query()
                .map_or_else(|| head.uri.path().to_owned(), |p| p.as_str().to_owned()),
            headers,
            body,
            key,
            signature,
            answered: match &behaviour {
                Behaviour::Hang => Answered::Hung,
                Behaviour::Close => Answered::Closed,
                Behaviour::Ok | Behaviour::FailThenOk(_) => Answered::Status(200),
                Behaviour::Status(answer) => Answered::Status(answer.code),
            },
        });
        shared.arrived.notify_all();
        behaviour
    };
    match behaviour {
        Behaviour::Ok | Behaviour::FailThenOk(_) => Ok(respond(&Answer::status(200).body("ok\n"))),
        Behaviour::Status(answer) => Ok(respond(&answer)),
        // Until the client gives up and hyper drops this task, or the receiver is dropped.
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Close => Err(CloseWithoutAnswer),
    }
}

/// The behaviour for a request with these headers: the rule that matches it, else the
/// receiver's; a [`Behaviour::FailThenOk`] resolved to the answer this request gets.
fn chosen(log: &Log, headers: &[(String, String)], key: Option<&str>) -> Behaviour {
    let behaviour = log
        .rules
        .iter()
        .find(|rule| header_in(headers, &rule.name) == Some(rule.value.as_str()))
        .map_or(&log.behaviour, |rule| &rule.behaviour);
    match behaviour {
        Behaviour::FailThenOk(failures) => {
            let earlier = log
                .requests
                .iter()
                .filter(|r| r.key.as_deref() == key)
                .count();
            if earlier < *failures {
                Behaviour::Status(
                    Answer::status(500).body(format!("failure {} of {failures}\n", earlier + 1)),
                )
            } else {
                Behaviour::Ok
            }
        }
        other => other.clone(),
    }
}

/// The HTTP response for `answer`.
fn respond(answer: &Answer) -> Response<Full<Bytes>> {
    let mut response = Response::builder().status(answer.code);
    for (name, value) in &answer.headers {
        response = response.header(name.as_str(), value.as_str());
    }
    response
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(answer.body.clone())))
        .unwrap_or_else(|e| panic!("a test asked for an answer HTTP cannot send ({e}): {answer:?}"))
}

/// Milliseconds since the Unix epoch.
fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
fn unix_secs(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Checks a request's signature as `signing` expects it, at `now` (Unix seconds).
pub fn verify(signing: &Signing, headers: &[(String, String)], body: &[u8], now: i64) -> Verdict {
    let checked = match signing {
        Signing::Nothing => return Verdict::Unchecked,
        Signing::Github(secret) => verify_github(secret, headers, body),
        Signing::StandardWebhooks(secret) => verify_standard_webhooks(secret, headers, body, now),
    };
    match checked {
        Ok(()) => Verdict::Valid,
        Err(reason) => Verdict::Invalid(reason),
    }
}

/// GitHub's scheme: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn verify_github(
    secret: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(), String> {
    let header =
        header_in(headers, "x-hub-signature-256").ok_or("no x-hub-signature-256 header")?;
    let hex_digest = header
        .strip_prefix("sha256=")
        .ok_or_else(|| format!("x-hub-signature-256 does not start with sha256=: {header}"))?;
    let digest =
        hex::decode(hex_digest).map_err(|e| format!("x-hub-signature-256 is not hex: {e}"))?;
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&digest)
        .map_err(|_| "x-hub-signature-256 does not match the body".to_owned())
}

/// Standard Webhooks: `webhook-signature` holds space-separated `v1,<base64>` entries, one of
/// which must be the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` keyed
/// with the base64-decoded part of the secret after `whsec_`; the timestamp must be within
/// [`STANDARD_WEBHOOKS_TOLERANCE_SECS`] of `now` (Unix seconds).
pub fn verify_standard_webhooks(
    secret: &str,
    headers: &[(String, String)],
    body: &[u8],
    now: i64,
) -> Result<(), String> {
    let base64 = base64::engine::general_purpose::STANDARD;
    let key = secret
        .strip_prefix("whsec_")
        .ok_or("the receiver's secret does not start with whsec_")?;
    let key = base64
        .decode(key)
        .map_err(|e| format!("the receiver's secret is not base64 after whsec_: {e}"))?;
    let id = header_in(headers, "webhook-id").ok_or("no webhook-id header")?;
    let timestamp = header_in(headers, "webhook-timestamp").ok_or("no webhook-timestamp header")?;
    let signatures =
        header_in(headers, "webhook-signature").ok_or("no webhook-signature header")?;
    let seconds: i64 = timestamp
        .parse()
        .map_err(|_| format!("webhook-timestamp is not whole seconds: {timestamp}"))?;
    if (now - seconds).abs() > STANDARD_WEBHOOKS_TOLERANCE_SECS {
        return Err(format!(
            "webhook-timestamp {seconds} is more than {STANDARD_WEBHOOKS_TOLERANCE_SECS} s from now ({now})"
        ));
    }
    let mut mac = HmacSha256::new_from_slice(&key).expect("any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let matches = signatures
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| base64.decode(encoded).ok())
        // `verify_slice` compares in constant time.
        .any(|digest| mac.clone().verify_slice(&digest).is_ok());
    if matches {
        Ok(())
    } else {
        Err(format!(
            "no v1 entry of webhook-signature matches: {signatures}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks test vector, from the reference libraries' tests
    /// (standard-webhooks/standard-webhooks, libraries/javascript/src/webhook.test.ts,
    /// "sign function works").
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn vector_headers(signature: &str) -> Vec<(String, String)> {
        vec![
            ("webhook-id".to_owned(), VECTOR_ID.to_owned()),
            ("webhook-timestamp".to_owned(), VECTOR_TIMESTAMP.to_string()),
            ("webhook-signature".to_owned(), signature.to_owned()),
        ]
    }

    #[test]
    fn the_standard_webhooks_test_vector_verifies() {
        let headers = vector_headers(VECTOR_SIGNATURE);
        assert_eq!(
            verify_standard_webhooks(VECTOR_SECRET, &headers, VECTOR_BODY, VECTOR_TIMESTAMP),
            Ok(())
        );
        // One right entry among others is enough, as the specification allows several keys.
        let several = format!("v1,bm90IHRoaXM= v2,abc {VECTOR_SIGNATURE}");
        assert_eq!(
            verify_standard_webhooks(
                VECTOR_SECRET,
                &vector_headers(&several),
                VECTOR_BODY,
                VECTOR_TIMESTAMP + 60
            ),
            Ok(())
        );
    }

    #[test]
    fn a_tampered_standard_webhooks_request_fails() {
        let headers = vector_headers(VECTOR_SIGNATURE);
        let tampered = br#"{"test": 2432232315}"#;
        let refused = verify_standard_webhooks(VECTOR_SECRET, &headers, tampered, VECTOR_TIMESTAMP);
        assert!(refused.unwrap_err().contains("no v1 entry"));

        let other_id: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| {
                let v = if k == "webhook-id" { "msg_other" } else { v };
                (k.clone(), v.to_owned())
            })
            .collect();
        assert!(
            verify_standard_webhooks(VECTOR_SECRET, &other_id, VECTOR_BODY, VECTOR_TIMESTAMP)
                .is_err()
        );

        let stale = VECTOR_TIMESTAMP + STANDARD_WEBHOOKS_TOLERANCE_SECS + 1;
        let refused = verify_standard_webhooks(VECTOR_SECRET, &headers, VECTOR_BODY, stale);
        assert!(refused.unwrap_err().contains("webhook-timestamp"));

        let unsigned = &headers[..2];
        assert_eq!(
            verify_standard_webhooks(VECTOR_SECRET, unsigned, VECTOR_BODY, VECTOR_TIMESTAMP),
            Err("no webhook-signature header".to_owned())
        );
    }

    #[test]
    fn github_signatures_are_checked_against_the_body() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let signed = vec![(
            "x-hub-signature-256".to_owned(),
            crate::sign_sha256("s3cret", body),
        )];
        assert_eq!(verify_github("s3cret", &signed, body), Ok(()));
        assert!(verify_github("other", &signed, body).is_err());
        assert!(verify_github("s3cret", &signed, br#"{"ref":"refs/heads/evil"}"#).is_err());
        assert!(verify_github("s3cret", &[], body).is_err());
    }

    /// A client that never waits long and reports answers of any status.
    fn client(timeout: Duration) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into()
    }

    fn post(agent: &ureq::Agent, url: &str, key: &str, body: &str) -> Result<u16, ureq::Error> {
        agent
            .post(url)
            .header("idempotency-key", key)
            .header("X-Mixed-Case", "kept")
            .send(body)
            .map(|r| r.status().as_u16())
    }

    #[test]
    fn it_records_requests_and_answers_as_told() {
        let receiver = Receiver::start(Signing::Github("s3cret".into()));
        let agent = client(Duration::from_secs(10));
        let body = r#"{"n":1}"#;
        let signature = crate::sign_sha256("s3cret", body.as_bytes());
        let answer = agent
            .post(&format!("{}hook?x=1", receiver.url))
            .header("idempotency-key", "msg_1")
            .header("x-hub-signature-256", &signature)
            .send(body)
            .unwrap();
        assert_eq!(answer.status(), 200);

        receiver.set(Behaviour::FailThenOk(2));
        let codes: Vec<u16> = (0..3)
            .map(|_| post(&agent, &receiver.url, "msg_2", "{}").unwrap())
            .collect();
        assert_eq!(codes, [500, 500, 200]);

        receiver.set(Behaviour::Status(
            Answer::status(429).header("Retry-After", "1"),
        ));
        let limited = agent
            .post(&receiver.url)
            .header("idempotency-key", "msg_3")
            .send("{}")
            .unwrap();
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()["retry-after"], "1");

        receiver.set_for("idempotency-key", "msg_4", Behaviour::status(410));
        assert_eq!(post(&agent, &receiver.url, "msg_4", "{}").unwrap(), 410);
        assert_eq!(post(&agent, &receiver.url, "msg_5", "{}").unwrap(), 429);

        let requests = receiver.wait_for_requests(7, Duration::from_secs(5));
        let first = &requests[0];
        assert_eq!(first.method, "POST");
        assert_eq!(first.path, "/hook?x=1");
        assert_eq!(first.text(), body);
        assert_eq!(first.signature, Verdict::Valid);
        assert_eq!(first.answered, Answered::Status(200));
        assert!(first.wall_ms > 1_600_000_000_000);
        assert!(matches!(requests[1].signature, Verdict::Invalid(_)));
        assert_eq!(requests[1].header("x-mixed-case"), Some("kept"));
        assert!(requests.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(receiver.count_for("msg_2"), 3);
        assert_eq!(receiver.keys().len(), 5);
        assert_eq!(receiver.wait_for_keys(5, Duration::from_secs(1)).len(), 5);
        assert_eq!(receiver.counts_by_key()["msg_2"], 3);
    }

    #[test]
    fn it_hangs_and_closes_without_answering() {
        let receiver = Receiver::start(Signing::Nothing);
        receiver.set(Behaviour::Hang);
        let begun = Instant::now();
        let hung = post(
            &client(Duration::from_millis(300)),
            &receiver.url,
            "msg_h",
            "{}",
        );
        assert!(hung.is_err(), "{hung:?}");
        assert!(begun.elapsed() >= Duration::from_millis(300));

        receiver.set(Behaviour::Close);
        let closed = post(
            &client(Duration::from_secs(10)),
            &receiver.url,
            "msg_c",
            "{}",
        );
        assert!(closed.is_err(), "{closed:?}");
        assert!(begun.elapsed() < Duration::from_secs(5), "closed at once");

        let answered: Vec<Answered> = receiver.requests().iter().map(|r| r.answered).collect();
        assert_eq!(answered, [Answered::Hung, Answered::Closed]);
        assert_eq!(receiver.requests()[0].signature, Verdict::Unchecked);
    }

    #[test]
    #[should_panic(expected = "waiting for 2 distinct idempotency keys; 0 requests")]
    fn waiting_for_keys_that_never_come_fails_the_test() {
        let receiver = Receiver::start(Signing::Nothing);
        receiver.wait_for_keys(2, Duration::from_millis(100));
    }
}
