//! Webhook intake: requests sent through `baton serve`'s router, with a real SQLite store.
//!
//! # Input
//!
//! One byte of flags, then headers as `Name: value` lines, an empty line and the body:
//!
//! ```text
//! a X-GitHub-Event: push
//!   X-GitHub-Delivery: 72d3162e
//!
//!   {"ref": "refs/heads/main"}
//! ```
//!
//! (without the indentation). Flag bit 0 set: the request is signed as its sender would
//! sign it (the signature or token header is set from the configured secret, over the body
//! as given), so half of the inputs get past authentication to the parser behind it. Bit 1
//! picks one of two sources or adapters where a kind has two. Lines that are not a valid
//! header are dropped, as an HTTP server would refuse them before baton sees them.
//!
//! # Checks
//!
//! - no panic, and never a 5xx: every refusal is the client's fault here;
//! - every answer is JSON (the documented `{"error": …}` envelope or a result);
//! - an unsigned request to an HMAC-signed source is never accepted;
//! - a body the intake accepted is one the matcher can read (it parses the stored body
//!   again later), and every trigger of the source can be evaluated on it.

use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, OnceLock};

use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use baton_core::expr::parse_val;
use baton_core::workflow::Trigger;
use baton_engine::{Engine, EngineConfig};
use baton_forge_fakes::travis_signing::{config_document, form_body, sign};
use baton_server::{AppState, router};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tower::ServiceExt;

use crate::{GATEWAY, Named, kinds, scratch};

/// Which intake a target drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /hooks/github`.
    Github,
    /// `POST /hooks/gitlab`.
    Gitlab,
    /// `POST /hooks/deploy` (HMAC, jq event, delivery-id header) or `/hooks/relay` (bearer
    /// token, event header, body-hash delivery id).
    Generic,
    /// `POST /hooks/adapters/jenkins` or `/hooks/adapters/buildbot` (a bearer token).
    Adapter,
    /// `POST /hooks/travis`: signed inputs are the notification's payload, posted
    /// form-encoded and signed with the test key a local `/config` serves.
    Travis,
    /// `POST /hooks/registry` (bearer token) or `/hooks/registry-basic` (Basic): a
    /// registry's envelope of events, each stored as a delivery.
    Registry,
}

/// Triggers for every source, with conditions that read the payloads' real fields.
const WORKFLOW: &str = r#"
name: intake
on:
  - source: github
    event: push
    if: '.ref == "refs/heads/main" and (.commits | length) > 0'
  - source: github
    event: pull_request
    if: '.action == "opened" or .action == "synchronize"'
  - source: gitlab
    event: Push Hook
    if: '.ref | startswith("refs/heads/")'
  - source: gitlab
    event: Merge Request Hook
    if: '.object_attributes.action == "open"'
  - source: deploy
    event: release
    if: '.tag | test("^v[0-9]")'
  - source: relay
  - source: travis
    event: passed
    if: '.branch == "master" and .type == "push"'
  - source: registry
    event: push
    if: '.target.repository == "demo/hello" and (.target.mediaType | test("manifest"))'
  - source: registry-basic
    if: '.target.tag != null'
stages:
  only:
    uses: exec
    with:
      command: ["true"]
"#;

struct Gateway {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    triggers: Vec<Trigger>,
}

fn gateway() -> &'static Gateway {
    static GATEWAY_ONCE: OnceLock<Gateway> = OnceLock::new();
    GATEWAY_ONCE.get_or_init(|| {
        let dir = scratch("intake");
        let config = dir.join("baton.toml");
        let text = format!(
            "workflows = [\"workflow.yaml\"]\n{GATEWAY}\n[sources.travis]\nkind = \"travis\"\nrepos = [\"pingcap/tidb\"]\napi_url = \"{}\"\n\n[store]\nurl = \"sqlite://{}\"\n",
            travis_api(),
            dir.join("intake.db").display()
        );
        std::fs::write(&config, text).expect("writing the gateway config");
        std::fs::write(dir.join("workflow.yaml"), WORKFLOW).expect("writing the workflow");
        let kinds = kinds(&dir.join("exec"));
        let loaded = baton_config::load(Some(&config), &[], &kinds, [])
            .unwrap_or_else(|problems| panic!("the fuzz gateway config is wrong:\n{problems}"));
        let adapters = loaded
            .gateway
            .instances(&kinds)
            .into_iter()
            .map(|(name, instance)| {
                let kind = kinds.get(&instance.kind).expect("a known adapter kind");
                let adapter = kind
                    .build(&name, &instance.config, &Named)
                    .unwrap_or_else(|e| panic!("adapter `{name}`: {e}"));
                (name, adapter)
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let state = runtime.block_on(async {
            let store = baton_store::open(&loaded.gateway.store_url())
                .await
                .expect("opening the store");
            let engine = Engine::new(store, adapters, EngineConfig::default());
            AppState::new(&loaded, &kinds, engine, &Named, None).expect("the server state")
        });
        let triggers = loaded
            .workflows
            .iter()
            .flat_map(|w| w.workflow.triggers.iter().cloned())
            .collect();
        Gateway {
            runtime,
            app: router(Arc::new(state)),
            triggers,
        }
    })
}

/// A Travis API on a thread of its own that answers every request with `/config`'s
/// document, so a travis source can read the key the signed inputs are signed with.
fn travis_api() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a local port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    std::thread::spawn(move || {
        let body = config_document().to_string();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// A request as the input describes it.
struct Input<'a> {
    signed: bool,
    choice: bool,
    headers: HeaderMap,
    body: &'a [u8],
}

fn parse(data: &[u8]) -> Option<Input<'_>> {
    let (&flags, mut rest) = data.split_first()?;
    let mut headers = HeaderMap::new();
    let body = loop {
        let Some(end) = rest.iter().position(|b| *b == b'\n') else {
            break &[][..];
        };
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        rest = &rest[end + 1..];
        if line.is_empty() {
            break rest;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = HeaderName::from_bytes(line[..colon].trim_ascii());
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (name, value) {
            headers.append(name, value);
        }
    };
    Some(Input {
        signed: flags & 1 == 1,
        choice: flags & 2 == 2,
        headers,
        body,
    })
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    headers.insert(
        HeaderName::from_static(name),
        HeaderValue::from_str(value).expect("a valid header value"),
    );
}

/// Sends the request `data` describes to the intake of `kind` and checks the answer.
pub fn run(kind: Kind, data: &[u8]) {
    let Some(Input {
        signed,
        choice,
        mut headers,
        body,
    }) = parse(data)
    else {
        return;
    };
    // The source or adapter, and whether its check is an HMAC no input can forge.
    let (path, source, hmac_checked) = match (kind, choice) {
        (Kind::Github, _) => ("/hooks/github", Some("github"), true),
        (Kind::Gitlab, _) => ("/hooks/gitlab", Some("gitlab"), false),
        (Kind::Generic, false) => ("/hooks/deploy", Some("deploy"), true),
        (Kind::Generic, true) => ("/hooks/relay", Some("relay"), false),
        (Kind::Adapter, false) => ("/hooks/adapters/jenkins", None, false),
        (Kind::Adapter, true) => ("/hooks/adapters/buildbot", None, false),
        // An RSA signature: no input forges one.
        (Kind::Travis, _) => ("/hooks/travis", Some("travis"), true),
        (Kind::Registry, false) => ("/hooks/registry", Some("registry"), false),
        (Kind::Registry, true) => ("/hooks/registry-basic", Some("registry-basic"), false),
    };
    // A signed travis input is the payload; the request carries it form-encoded.
    let mut form = Vec::new();
    if signed {
        match path {
            "/hooks/github" => set(
                &mut headers,
                "x-hub-signature-256",
                &format!("sha256={}", hmac_hex("GITHUB_SECRET", body)),
            ),
            "/hooks/gitlab" => set(&mut headers, "x-gitlab-token", "GITLAB_TOKEN"),
            "/hooks/deploy" => set(
                &mut headers,
                "x-signature-256",
                &format!("sha256={}", hmac_hex("DEPLOY_SECRET", body)),
            ),
            "/hooks/relay" => set(&mut headers, "authorization", "Bearer RELAY_TOKEN"),
            "/hooks/adapters/buildbot" => {
                set(&mut headers, "authorization", "Bearer BUILDBOT_TOKEN");
            }
            "/hooks/registry" | "/hooks/registry-basic" => {
                let authorization = if path == "/hooks/registry" {
                    "Bearer REGISTRY_TOKEN"
                } else {
                    // base64("notifier:REGISTRY_PASSWORD")
                    "Basic bm90aWZpZXI6UkVHSVNUUllfUEFTU1dPUkQ="
                };
                set(&mut headers, "authorization", authorization);
                // Signed inputs reach the envelope's parser unless they name a type.
                if !headers.contains_key("content-type") {
                    set(&mut headers, "content-type", "application/json");
                }
            }
            "/hooks/travis" => {
                if let Ok(payload) = std::str::from_utf8(body) {
                    set(&mut headers, "signature", &sign(payload));
                    form = form_body(payload).into_bytes();
                }
            }
            _ => {}
        }
    }
    let sent = if form.is_empty() { body } else { &form };
    let mut request = Request::new(Body::from(sent.to_vec()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = path.parse().expect("a valid path");
    *request.headers_mut() = headers;

    let gateway = gateway();
    let (status, answer) = gateway.runtime.block_on(async {
        let response = gateway
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("the router never fails");
        let status = response.status();
        let answer = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("an answer body");
        (status, answer)
    });
    let shown = String::from_utf8_lossy(&answer);
    assert!(
        !status.is_server_error(),
        "{path} answered {status}: {shown}"
    );
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_else(|e| {
        panic!("{path} answered {status} with a body that is not JSON ({e}): {shown}")
    });
    if !status.is_success() {
        return;
    }
    assert!(
        signed || !hmac_checked,
        "{path} accepted an unsigned request ({status}): {shown}"
    );
    let Some(source) = source else { return };
    if answer.get("status").and_then(serde_json::Value::as_str) == Some("pong") {
        return;
    }
    // The matcher reads the stored body again; what the intake accepted, it must read. (A
    // travis source stores the payload: accepted means signed, so that is `body` too.)
    let text = std::str::from_utf8(body).expect("the intake accepted a body that is not UTF-8");
    if kind == Kind::Registry {
        check_envelope(gateway, source, text, &answer);
        return;
    }
    let payload = parse_val(text).unwrap_or_else(|e| {
        panic!("{path} accepted a body ({status}) that the matcher cannot read: {e}")
    });
    for trigger in gateway.triggers.iter().filter(|t| t.source == source) {
        let _ = trigger.holds(&payload);
    }
}

/// A registry envelope the intake accepted: every event was stored or counted as a
/// duplicate, and each event, the body stored for it, is one the matcher reads and the
/// source's triggers evaluate on.
fn check_envelope(gateway: &Gateway, source: &str, text: &str, answer: &serde_json::Value) {
    let events = baton_server::registry::split_envelope(text)
        .unwrap_or_else(|e| panic!("the intake accepted an envelope it cannot split: {e:?}"));
    let counted = answer["stored"].as_u64().unwrap_or_default()
        + answer["duplicates"].as_u64().unwrap_or_default();
    assert_eq!(
        counted,
        events.len() as u64,
        "the answer counts other events than the envelope has: {answer}"
    );
    for event in events {
        let payload = parse_val(&event.body).unwrap_or_else(|e| {
            panic!("an accepted event is one the matcher cannot read: {e}")
        });
        for trigger in gateway.triggers.iter().filter(|t| t.source == source) {
            let _ = trigger.holds(&payload);
        }
    }
}
