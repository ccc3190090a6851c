//! One try against real HTTP servers on 127.0.0.1: receivers that answer as told and
//! check signatures with their own code, and raw sockets that misbehave.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use baton_config::{DEFAULT_RELAY_SCHEDULE, RelaySign};
use baton_core::secret::SecretError;
use baton_core::{Secret, SecretRef};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    /// The request's path.
    path: String,
    /// Its headers.
    headers: HeaderMap,
    /// Its body.
    body: Bytes,
}

impl Received {
    /// The one value of header `name`.
    fn header(&self, name: &str) -> &str {
        let mut values = self.headers.get_all(name).iter();
        let value = values.next().unwrap_or_else(|| panic!("no {name} header"));
        assert!(values.next().is_none(), "{name} sent twice");
        value.to_str().unwrap()
    }
}

/// What a receiver answers to every request.
#[derive(Clone)]
struct Answer {
    /// The status.
    status: StatusCode,
    /// Headers besides the body's.
    headers: Vec<(&'static str, String)>,
    /// The body.
    body: String,
    /// How long to wait before answering.
    delay: Duration,
}

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status: StatusCode::from_u16(status).unwrap(),
        headers: Vec::new(),
        body: body.to_owned(),
        delay: Duration::ZERO,
    }
}

/// A real HTTP server on 127.0.0.1 that records every request.
struct Receiver {
    /// Where it listens.
    address: SocketAddr,
    /// Every request, in arrival order.
    received: Arc<Mutex<Vec<Received>>>,
}

type ReceiverState = Arc<(Arc<Mutex<Vec<Received>>>, Answer)>;

impl Receiver {
    async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let state: ReceiverState = Arc::new((received.clone(), answer));
        let app = Router::new().fallback(record).with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { address, received }
    }

    /// Its URL with `host` as the host.
    fn url(&self, host: &str) -> String {
        format!("http://{host}:{}/hook", self.address.port())
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The one request it got.
    fn only(&self) -> Received {
        let received = self.received();
        assert_eq!(received.len(), 1, "{received:#?}");
        received.into_iter().next().unwrap()
    }
}

async fn record(
    State(state): State<ReceiverState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (received, answer) = &*state;
    received.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        headers,
        body,
    });
    tokio::time::sleep(answer.delay).await;
    let mut response = (answer.status, answer.body.clone()).into_response();
    for (name, value) in &answer.headers {
        response
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    response
}

/// Reads one HTTP/1.1 request (its head and a `Content-Length` body) from `stream`.
async fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        if n == 0 {
            return request;
        }
        request.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&request);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if request.len() >= head_end + 4 + length {
                return request;
            }
        }
    }
}

/// A server that reads each request whole and closes the connection without answering.
async fn hang_up_server() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let request = read_request(&mut stream).await;
            seen.lock().unwrap().push(request);
            stream.shutdown().await.ok();
        }
    });
    (address, requests)
}

/// Secrets by environment variable name.
struct Secrets(HashMap<&'static str, &'static str>);

impl SecretResolver for Secrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError> {
        let SecretRef::Env(name) = reference else {
            panic!("{reference:?}")
        };
        self.0
            .get(name.as_str())
            .map(|v| Secret::new(*v))
            .ok_or_else(|| SecretError::MissingEnv(name.clone()))
    }
}

fn secrets(pairs: &[(&'static str, &'static str)]) -> Secrets {
    Secrets(pairs.iter().copied().collect())
}

fn env(name: &str) -> SecretRef {
    SecretRef::Env(name.to_owned())
}

const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const KEY: &str = "msg_0190b2f4c8a07c3e9d2f41a6b5c4d3e2";
/// The delivery's body as received: its spacing must reach the receiver unchanged.
const BODY: &str =
    "{\"ref\": \"refs/heads/main\",   \"n\": 1, \"repository\": {\"full_name\": \"acme/db\"}}\n";

fn config(url: String) -> RelayTarget {
    RelayTarget {
        name: "ci".to_owned(),
        url,
        sign: RelaySign::None,
        headers: Vec::new(),
        transform: None,
        timeout: Duration::from_secs(5),
        concurrency: 8,
        rate: None,
        schedule: DEFAULT_RELAY_SCHEDULE.to_vec(),
        ordered: false,
        allow_private: true,
    }
}

fn target(config: &RelayTarget) -> Target {
    Target::new("mirror", config, &secrets(&[])).unwrap()
}

fn message() -> DueRelay {
    DueRelay {
        key: KEY.to_owned(),
        relay: "mirror".to_owned(),
        target: "ci".to_owned(),
        tries: 0,
        attempts: 0,
        due_at: 0,
        delivery: 7,
        source: "github".to_owned(),
        delivery_id: "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned(),
        event: "push".to_owned(),
        headers: json!({
            "x-github-event": "push",
            "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "x-github-hook-id": "292430182",
            "user-agent": "GitHub-Hookshot/044aadd",
            "x-hub-signature-256": "sha256=0000",
            "x-hub-signature": "sha1=0000",
            "webhook-signature": "v1,c3RhbGU=",
            "authorization": "token forge",
            "content-type": "application/x-www-form-urlencoded",
            "content-length": "81",
            "x-baton-relay": "spoofed",
            "connection": "x-hop",
            "x-hop": "1",
        })
        .to_string(),
        body: BODY.to_owned(),
    }
}

async fn send(target: &Target) -> Sent {
    target.send(&message(), Limits::default()).await
}

/// GitHub's check, as a receiver writes it.
fn github_signature_holds(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_digest) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(digest) = hex::decode(hex_digest) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&digest).is_ok()
}

/// Standard Webhooks' check, as a receiver writes it: the key from the secret, the
/// signed content `id.timestamp.body`, any `v1` signature of the list matching, and the
/// timestamp within five minutes.
fn standard_signature_holds(secret: &str, received: &Received) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let id = received.header("webhook-id");
    let timestamp = received.header("webhook-timestamp");
    let seconds: u64 = timestamp.parse().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(seconds) > 300 {
        return false;
    }
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(&received.body);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(&signed);
    let expected = mac.finalize().into_bytes();
    received
        .header("webhook-signature")
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|s| s == expected.as_slice())
}

#[tokio::test]
async fn a_delivered_try_is_signed_over_the_body_as_received_with_the_headers_receivers_need() {
    let receiver = Receiver::start(answer(200, "thanks")).await;
    let mut config = config(receiver.url("127.0.0.1"));
    config.sign = RelaySign::Github(env("GITHUB_SECRET"));
    config.headers = vec![
        (
            "X-Team".to_owned(),
            RelayHeaderValue::Plain("db".to_owned()),
        ),
        (
            "Authorization".to_owned(),
            RelayHeaderValue::Secret(env("TARGET_TOKEN")),
        ),
        (
            "X-GitHub-Hook-Id".to_owned(),
            RelayHeaderValue::Plain("relayed".to_owned()),
        ),
    ];
    let target = Target::new(
        "mirror",
        &config,
        &secrets(&[
            ("GITHUB_SECRET", GITHUB_SECRET),
            ("TARGET_TOKEN", "Bearer t0k3n"),
        ]),
    )
    .unwrap();
    let before = now_millis();
    let sent = send(&target).await;
    assert_eq!(sent.outcome, RelayOutcome::Delivered, "{sent:?}");
    assert_eq!(sent.code, Some(200));
    assert_eq!(sent.body.as_deref(), Some("thanks"));
    assert_eq!(sent.error, None);
    assert_eq!(sent.retry_after, None);
    assert!(sent.started_at >= before && sent.started_at <= now_millis());
    assert!(sent.duration > Duration::ZERO);

    let got = receiver.only();
    assert_eq!(got.path, "/hook");
    assert_eq!(got.body, BODY.as_bytes(), "the body is sent byte for byte");
    assert!(github_signature_holds(
        GITHUB_SECRET,
        &got.body,
        got.header("x-hub-signature-256")
    ));
    for (name, value) in [
        ("x-github-event", "push"),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("content-type", "application/json"),
        ("idempotency-key", KEY),
        ("webhook-id", KEY),
        ("x-baton-relay", "mirror"),
        ("x-baton-source", "github"),
        ("x-baton-event", "push"),
        ("x-baton-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("x-team", "db"),
        ("authorization", "Bearer t0k3n"),
        ("x-github-hook-id", "relayed"),
        ("content-length", &BODY.len().to_string()),
    ] {
        assert_eq!(got.header(name), value, "{name}");
    }
    assert_eq!(
        got.header("user-agent"),
        concat!("baton-relay/", env!("CARGO_PKG_VERSION"))
    );
    for absent in [
        "x-hub-signature",
        "webhook-signature",
        "webhook-timestamp",
        "x-hop",
    ] {
        assert!(!got.headers.contains_key(absent), "{absent} was passed on");
    }
}

#[tokio::test]
async fn standard_webhooks_signatures_verify_and_the_ids_stay_across_tries() {
    let receiver = Receiver::start(answer(204, "")).await;
    let mut config = config(receiver.url("127.0.0.1"));
    config.sign = RelaySign::StandardWebhooks(env("SW_SECRET"));
    let target = Target::new(
        "mirror",
        &config,
        &secrets(&[("SW_SECRET", STANDARD_SECRET)]),
    )
    .unwrap();
    let first = send(&target).await;
    let second = send(&target).await;
    assert_eq!(first.outcome, RelayOutcome::Delivered, "{first:?}");
    assert_eq!(second.outcome, RelayOutcome::Delivered, "{second:?}");
    assert_eq!(first.body, None, "an empty answer keeps no body");
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    for got in &received {
        assert!(standard_signature_holds(STANDARD_SECRET, got), "{got:#?}");
        assert_eq!(got.header("webhook-id"), KEY);
        assert_eq!(got.header("idempotency-key"), KEY);
        assert!(!got.headers.contains_key("x-hub-signature-256"));
    }
    let mut tampered = received[0].clone();
    tampered.body = Bytes::from(BODY.replace("main", "mane"));
    assert!(!standard_signature_holds(STANDARD_SECRET, &tampered));
}

#[tokio::test]
async fn answers_are_classified_by_status_with_retry_after_where_it_counts() {
    let s = Duration::from_secs;
    for (status, headers, outcome, error, retry_after) in [
        (201, vec![], RelayOutcome::Delivered, None, None),
        (500, vec![], RelayOutcome::Failed, Some("HTTP 500"), None),
        (404, vec![], RelayOutcome::Failed, Some("HTTP 404"), None),
        (
            410,
            vec![],
            RelayOutcome::Gone,
            Some("HTTP 410 (gone)"),
            None,
        ),
        (
            429,
            vec![("retry-after", "30")],
            RelayOutcome::RateLimited,
            Some("HTTP 429"),
            Some(s(30)),
        ),
        (
            429,
            vec![],
            RelayOutcome::RateLimited,
            Some("HTTP 429"),
            None,
        ),
        (
            429,
            vec![("retry-after", "whenever")],
            RelayOutcome::RateLimited,
            Some("HTTP 429"),
            None,
        ),
        (
            503,
            vec![("retry-after", "7")],
            RelayOutcome::Failed,
            Some("HTTP 503"),
            Some(s(7)),
        ),
        // Only a 429's or a 503's Retry-After is a request to wait.
        (
            500,
            vec![("retry-after", "7")],
            RelayOutcome::Failed,
            Some("HTTP 500"),
            None,
        ),
    ] {
        let mut told = answer(status, "a note from the receiver");
        told.headers = headers.iter().map(|&(n, v)| (n, v.to_owned())).collect();
        let receiver = Receiver::start(told).await;
        let sent = send(&target(&config(receiver.url("127.0.0.1")))).await;
        assert_eq!(sent.outcome, outcome, "{status}");
        assert_eq!(sent.code, Some(status));
        assert_eq!(sent.error.as_deref(), error, "{status}");
        assert_eq!(sent.retry_after, retry_after, "{status}");
        assert_eq!(sent.body.as_deref(), Some("a note from the receiver"));
        assert_eq!(receiver.received().len(), 1);
    }
}

#[tokio::test]
async fn a_retry_after_date_is_read_from_now() {
    let mut told = answer(429, "");
    let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
    told.headers = vec![("retry-after", in_a_minute)];
    let receiver = Receiver::start(told).await;
    let sent = send(&target(&config(receiver.url("127.0.0.1")))).await;
    let wait = sent.retry_after.expect("a date is read");
    assert!(
        wait > Duration::from_secs(55) && wait <= Duration::from_secs(61),
        "{wait:?}"
    );
}

#[tokio::test]
async fn a_redirect_is_a_failed_try_and_is_not_followed() {
    let mut told = answer(302, "");
    told.headers = vec![("location", "/elsewhere".to_owned())];
    let receiver = Receiver::start(told).await;
    let sent = send(&target(&config(receiver.url("127.0.0.1")))).await;
    assert_eq!(sent.outcome, RelayOutcome::Failed);
    assert_eq!(sent.code, Some(302));
    let error = sent.error.unwrap();
    assert!(
        error.starts_with("HTTP 302, a redirect to `/elsewhere`"),
        "{error}"
    );
    assert!(error.contains("not followed"), "{error}");
    assert_eq!(receiver.only().path, "/hook");
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_a_timeout() {
    let mut told = answer(200, "late");
    told.delay = Duration::from_secs(3);
    let receiver = Receiver::start(told).await;
    let mut config = config(receiver.url("127.0.0.1"));
    config.timeout = Duration::from_millis(300);
    let sent = send(&target(&config)).await;
    assert_eq!(sent.outcome, RelayOutcome::Timeout, "{sent:?}");
    assert_eq!(sent.error.as_deref(), Some("timed out after 300ms"));
    assert_eq!(sent.code, None);
    assert!(
        sent.duration >= Duration::from_millis(300) && sent.duration < Duration::from_secs(3),
        "{:?}",
        sent.duration
    );
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn a_connection_closed_before_an_answer_is_a_connection_failure() {
    let (address, requests) = hang_up_server().await;
    let sent = send(&target(&config(format!("http://{address}/hook")))).await;
    assert_eq!(sent.outcome, RelayOutcome::Connection, "{sent:?}");
    assert_eq!(
        sent.error.as_deref(),
        Some("connection closed before an answer")
    );
    assert_eq!(sent.code, None);
    let requests = requests.lock().unwrap();
    assert_eq!(requests.len(), 1, "one try is one request");
    assert!(requests[0].ends_with(BODY.as_bytes()));
}

#[tokio::test]
async fn a_port_nobody_listens_on_is_a_connection_failure() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let sent = send(&target(&config(format!("http://{closed}/hook")))).await;
    assert_eq!(sent.outcome, RelayOutcome::Connection, "{sent:?}");
    let error = sent.error.unwrap();
    assert!(
        error.starts_with("cannot connect to 127.0.0.1: "),
        "{error}"
    );
}

#[tokio::test]
async fn an_address_host_in_a_private_range_is_refused_without_allow_private() {
    let receiver = Receiver::start(answer(200, "")).await;
    let mut config = config(receiver.url("127.0.0.1"));
    config.allow_private = false;
    let sent = send(&target(&config)).await;
    assert_eq!(sent.outcome, RelayOutcome::Refused, "{sent:?}");
    assert_eq!(
        sent.error.as_deref(),
        Some("`127.0.0.1` is a loopback address, refused without `allow_private = true`")
    );
    assert_eq!(sent.code, None);
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );

    config.url = "http://[::1]:9/hook".to_owned();
    let sent = send(&target(&config)).await;
    assert_eq!(sent.outcome, RelayOutcome::Refused);
    assert!(
        sent.error
            .unwrap()
            .starts_with("`[::1]` is a loopback address")
    );

    config.url = receiver.url("127.0.0.1");
    config.allow_private = true;
    let sent = send(&target(&config)).await;
    assert_eq!(sent.outcome, RelayOutcome::Delivered, "{sent:?}");
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_by_the_resolver_without_allow_private() {
    let receiver = Receiver::start(answer(200, "")).await;
    let mut config = config(receiver.url("localhost"));
    config.allow_private = false;
    let sent = send(&target(&config)).await;
    assert_eq!(sent.outcome, RelayOutcome::Refused, "{sent:?}");
    let error = sent.error.unwrap();
    assert!(
        error.starts_with(
            "`localhost` resolves only to addresses refused without `allow_private = true`: "
        ),
        "{error}"
    );
    assert!(error.contains("127.0.0.1 (loopback)"), "{error}");
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );

    config.allow_private = true;
    let sent = send(&target(&config)).await;
    assert_eq!(sent.outcome, RelayOutcome::Delivered, "{sent:?}");
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn a_transform_makes_the_body_and_the_signature_covers_it() {
    let receiver = Receiver::start(answer(200, "")).await;
    let mut config = config(receiver.url("127.0.0.1"));
    config.sign = RelaySign::Github(env("GITHUB_SECRET"));
    config.transform =
        Some(Expr::compile("{ref, repository: .repository.full_name}, {second: true}").unwrap());
    let target = Target::new(
        "mirror",
        &config,
        &secrets(&[("GITHUB_SECRET", GITHUB_SECRET)]),
    )
    .unwrap();
    let sent = send(&target).await;
    assert_eq!(sent.outcome, RelayOutcome::Delivered, "{sent:?}");
    let got = receiver.only();
    assert_eq!(
        got.body,
        br#"{"ref":"refs/heads/main","repository":"acme/db"}"#.as_slice()
    );
    assert_eq!(got.header("content-length"), got.body.len().to_string());
    assert!(github_signature_holds(
        GITHUB_SECRET,
        &got.body,
        got.header("x-hub-signature-256")
    ));
    assert!(!github_signature_holds(
        GITHUB_SECRET,
        BODY.as_bytes(),
        got.header("x-hub-signature-256")
    ));
}

#[tokio::test]
async fn a_transform_that_fails_or_gives_nothing_sends_nothing() {
    let receiver = Receiver::start(answer(200, "")).await;
    for (code, expected) in [
        ("error(\"no relay for you\")", "no relay for you"),
        ("empty", "gave no output, so there is no body to send"),
        ("def f: f; f", "jq expression `def f: f; f` failed"),
    ] {
        let mut config = config(receiver.url("127.0.0.1"));
        config.transform = Some(Expr::compile(code).unwrap());
        let limits = Limits {
            max_steps: 10_000,
            ..Limits::default()
        };
        let sent = target(&config).send(&message(), limits).await;
        assert_eq!(sent.outcome, RelayOutcome::Refused, "{code}: {sent:?}");
        let error = sent.error.unwrap();
        assert!(error.contains(expected), "{code}: {error}");
        assert_eq!(sent.code, None);
    }
    let mut config = config(receiver.url("127.0.0.1"));
    config.transform = Some(Expr::compile(".ref").unwrap());
    let mut not_json = message();
    not_json.body = "payload=%7B%7D".to_owned();
    let sent = target(&config).send(&not_json, Limits::default()).await;
    assert_eq!(sent.outcome, RelayOutcome::Refused);
    assert!(
        sent.error.unwrap().contains("needs a JSON body"),
        "the body's form is named"
    );
    assert!(receiver.received().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn a_long_answer_keeps_its_first_kilobyte_cut_at_a_character() {
    let long = format!("x{}", "é".repeat(40_000));
    let receiver = Receiver::start(answer(500, &long)).await;
    let sent = send(&target(&config(receiver.url("127.0.0.1")))).await;
    let body = sent.body.unwrap();
    assert_eq!(body.len(), ANSWER_SLICE_BYTES - 1);
    assert_eq!(body, format!("x{}", "é".repeat(511)));
    assert_eq!(sent.outcome, RelayOutcome::Failed);
}

#[test]
fn answer_slices_hold_no_more_than_the_limit_and_show_bad_bytes() {
    let limit = ANSWER_SLICE_BYTES;
    assert_eq!(answer_slice(b"short"), "short");
    assert_eq!(answer_slice(&vec![b'a'; limit + 50]), "a".repeat(limit));
    // A four-byte character straddling the limit is left out whole.
    let mut straddling = vec![b'a'; limit - 2];
    straddling.extend_from_slice("😀tail".as_bytes());
    assert_eq!(answer_slice(&straddling), "a".repeat(limit - 2));
    // Bytes that are not UTF-8 become replacement characters, still within the limit.
    let invalid = vec![0xffu8; limit + 1];
    let text = answer_slice(&invalid);
    assert!(text.len() <= limit && text.chars().all(|c| c == '\u{fffd}'));
    assert_eq!(text.chars().count(), limit / 3);
}

#[test]
fn bad_targets_are_refused_when_built_naming_the_key() {
    let build = |config: &RelayTarget| {
        Target::new(
            "mirror",
            config,
            &secrets(&[("BROKEN", "Bearer a\nX-Injected: yes")]),
        )
        .unwrap_err()
        .to_string()
    };
    let mut ftp = config("ftp://hooks.example.net/ci".to_owned());
    assert_eq!(
        build(&ftp),
        "relays.mirror.to `ci`: url cannot be used: `ftp` is not http or https"
    );
    ftp.url = "not a url".to_owned();
    assert!(build(&ftp).starts_with("relays.mirror.to `ci`: url cannot be used: "));

    let mut bad_name = config("https://hooks.example.net/ci".to_owned());
    bad_name.headers = vec![(
        "X Team".to_owned(),
        RelayHeaderValue::Plain("db".to_owned()),
    )];
    assert_eq!(
        build(&bad_name),
        "relays.mirror.to `ci`: headers.X Team cannot be sent: it is not a header name (letters, digits and `-`)"
    );

    let mut broken_secret = config("https://hooks.example.net/ci".to_owned());
    broken_secret.headers = vec![(
        "Authorization".to_owned(),
        RelayHeaderValue::Secret(env("BROKEN")),
    )];
    let text = build(&broken_secret);
    assert_eq!(
        text,
        "relays.mirror.to `ci`: headers.Authorization cannot be sent: the secret holds a line break or another control character"
    );

    let mut missing = config("https://hooks.example.net/ci".to_owned());
    missing.headers = vec![(
        "Authorization".to_owned(),
        RelayHeaderValue::Secret(env("UNSET")),
    )];
    assert_eq!(
        build(&missing),
        "relays.mirror.to `ci`: headers.Authorization cannot be read"
    );
}
