//! Webhook relays end to end: `baton serve` forwards signed GitHub deliveries to real
//! receivers on 127.0.0.1, which check the signatures with their own code and succeed, fail,
//! hang, close the connection, ask to wait, go away for good and recover; the API and the
//! CLI show the messages and replay them; and a SIGKILL in the middle of 2,000 deliveries
//! loses none that was acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_tests::receiver::{Answer, Answered, Behaviour, Received, Receiver, Signing, Verdict};
use baton_tests::{Finished, Sandbox, Server, sign_sha256, wait_with_deadline};
use serde_json::{Value, json};

const VIEWER: &str = "view-token-1";
const OPERATOR: &str = "oper-token-2";
/// What GitHub signs its deliveries to baton with.
const GITHUB_SECRET: &str = "gh-intake-secret";
/// What baton signs the `github` scheme targets' messages with.
const CI_SECRET: &str = "ci-relay-secret";
/// What baton signs the `standard-webhooks` targets' messages with.
const CHAT_SECRET: &str = "whsec_cmVsYXktdGVzdHMtY2hhdC1rZXktMjRi";

const ENV: &[(&str, &str)] = &[
    ("T_VIEWER", VIEWER),
    ("T_OPERATOR", OPERATOR),
    ("GH_SECRET", GITHUB_SECRET),
    ("CI_SECRET", CI_SECRET),
    ("CHAT_SECRET", CHAT_SECRET),
];

const SIGN_CI: &str = r#"{ scheme = "github", secret = { env = "CI_SECRET" } }"#;
const SIGN_CHAT: &str = r#"{ scheme = "standard-webhooks", secret = { env = "CHAT_SECRET" } }"#;
const UNSIGNED: &str = r#"{ scheme = "none" }"#;

/// How long a receiver is given for what should take a second or two.
const SOON: Duration = Duration::from_secs(20);

/// Writes `baton.toml`: API tokens, the `github` source, and `relays` (TOML); returns its name.
fn gateway(sb: &Sandbox, relays: &str) -> &'static str {
    sb.write(
        "baton.toml",
        &format!(
            r#"
[api]
tokens = [
  {{ name = "vera", token = {{ env = "T_VIEWER" }}, role = "viewer" }},
  {{ name = "otto", token = {{ env = "T_OPERATOR" }}, role = "operator" }},
]

[sources.github]
kind = "github"
secret = {{ env = "GH_SECRET" }}
{relays}"#
        ),
    );
    "baton.toml"
}

/// A `[relays.<relay>]` head forwarding the `github` source, with more `settings` lines.
fn relay(relay: &str, settings: &str) -> String {
    format!("\n[relays.{relay}]\nfrom = \"github\"\n{settings}\n")
}

/// A `[[relays.<relay>.to]]` target named `name` pointing at `receiver` (loopback, so with
/// `allow_private`), signed with `sign` (a TOML value), with more `settings` lines.
fn target(relay: &str, name: &str, receiver: &Receiver, sign: &str, settings: &str) -> String {
    format!(
        "\n[[relays.{relay}.to]]\nname = \"{name}\"\nurl = \"{}\"\nsign = {sign}\nallow_private = true\n{settings}\n",
        receiver.url
    )
}

/// A push to `branch`, told apart by the delivery id `id` it carries.
fn push_body(id: &str, branch: &str) -> String {
    format!(
        r#"{{"ref": "refs/heads/{branch}", "after": "{id}", "repository": {{"full_name": "octo/app", "private": true}}, "pusher": {{"name": "mona"}}}}"#
    )
}

/// Sends a signed push to `branch` with the delivery id `id`; returns the stored delivery's
/// number.
fn push(server: &Server, id: &str, branch: &str) -> i64 {
    let reply = server.github("github", GITHUB_SECRET, "push", id, &push_body(id, branch));
    assert_eq!(reply.status, 202, "{reply:?}\n{}", server.log());
    reply.json()["delivery"]
        .as_i64()
        .unwrap_or_else(|| panic!("no delivery number in {reply:?}"))
}

/// Waits until the delivery numbered `delivery` is processed (its relay messages, if any,
/// are written with that mark).
fn wait_processed(server: &Server, delivery: i64) {
    server.wait_for(
        &format!("/api/v1/deliveries/{delivery}"),
        VIEWER,
        "the delivery to be processed",
        |d| d["status"] == "processed",
    );
}

/// True for a message key: `msg_` and 32 hex digits.
fn is_message_key(key: &str) -> bool {
    key.strip_prefix("msg_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The target `name` of relay `relay` as `GET /api/v1/relays` shows it.
fn target_state(server: &Server, relay: &str, name: &str) -> Value {
    find_target(&server.get("/api/v1/relays", VIEWER).json(), relay, name)
        .unwrap_or_else(|| panic!("no target {relay}/{name} in /api/v1/relays"))
}

/// The target `name` of relay `relay` in an answer of `GET /api/v1/relays`.
fn find_target(relays: &Value, relay: &str, name: &str) -> Option<Value> {
    relays["relays"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == relay)?["targets"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)
        .cloned()
}

/// Waits until the target `name` of `relay` satisfies `check`, and returns it.
fn wait_target(
    server: &Server,
    relay: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let answer = server.wait_for("/api/v1/relays", VIEWER, what, |relays| {
        find_target(relays, relay, name).is_some_and(|t| check(&t))
    });
    find_target(&answer, relay, name).expect("the target just seen")
}

/// Every message of `relay` matching `query` (`target=…&status=…`), newest first, across
/// pages.
fn messages(server: &Server, relay: &str, query: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before = String::new();
    loop {
        let page = server.get(
            &format!("/api/v1/relays/{relay}/messages?{query}&limit=500{before}"),
            VIEWER,
        );
        assert_eq!(page.status, 200, "{page:?}");
        let page = page.json();
        all.extend(page["messages"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(next) => before = format!("&before={next}"),
            None => return all,
        }
    }
}

/// One message of `relay` with its attempts: `{"message": …, "attempts": […]}`.
fn message(server: &Server, relay: &str, key: &str) -> Value {
    let reply = server.get(&format!("/api/v1/relays/{relay}/messages/{key}"), VIEWER);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

/// Waits until message `key` of `relay` has `status`, and returns it with its attempts.
fn wait_message(server: &Server, relay: &str, key: &str, status: &str) -> Value {
    server.wait_for(
        &format!("/api/v1/relays/{relay}/messages/{key}"),
        VIEWER,
        &format!("message {key} to be {status}"),
        |m| m["message"]["status"] == status,
    )
}

/// One field of every attempt of a message (as `message` returns it).
fn attempts(message: &Value, field: &str) -> Vec<Value> {
    message["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempts in {message:#}"))
        .iter()
        .map(|a| a[field].clone())
        .collect()
}

/// The `idempotency-key` of a request, checked to be a message key and the `webhook-id` too.
fn key_of(request: &Received) -> String {
    let key = request
        .key
        .clone()
        .unwrap_or_else(|| panic!("no idempotency-key in {:?}", request.headers));
    assert!(is_message_key(&key), "{key} is not msg_ and 32 hex digits");
    assert_eq!(
        request.header("webhook-id"),
        Some(key.as_str()),
        "webhook-id is the idempotency key"
    );
    key
}

/// The milliseconds between two requests' arrivals.
fn gap_ms(earlier: &Received, later: &Received) -> u128 {
    later.at.duration_since(earlier.at).as_millis()
}

/// `baton_relay_attempts_total` of `relay`'s `target` with `outcome` on `/metrics`, 0 when
/// absent.
fn attempts_counted(server: &Server, relay: &str, target: &str, outcome: &str) -> f64 {
    let labels = [
        format!("relay=\"{relay}\""),
        format!("target=\"{target}\""),
        format!("outcome=\"{outcome}\""),
    ];
    let page = server.request("GET", "/metrics", &[], None).body;
    page.lines()
        .filter(|l| l.starts_with("baton_relay_attempts_total{"))
        .filter(|l| labels.iter().all(|label| l.contains(label.as_str())))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// `baton ARGS` with the test's environment (the config's secrets), to its end.
fn baton(sb: &Sandbox, args: &[&str]) -> Finished {
    let child = sb
        .baton(args)
        .envs(ENV.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn baton");
    wait_with_deadline(child, Duration::from_secs(60))
}

/// `baton relays ARGS` against `server` as `token`, which must succeed.
fn relays_cli(sb: &Sandbox, server: &Server, token: &str, args: &[&str]) -> String {
    let out = baton(
        sb,
        &[&["relays"], args, &["--url", &server.url, "--token", token]].concat(),
    );
    assert_eq!(
        out.code,
        Some(0),
        "baton relays {args:?}:\n{}{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

#[test]
fn a_push_reaches_each_target_signed_its_own_way() {
    let sb = Sandbox::new();
    let ci = Receiver::start(Signing::Github(CI_SECRET.into()));
    let chat = Receiver::start(Signing::StandardWebhooks(CHAT_SECRET.into()));
    let config = [
        relay("mirror", r#"if = '.ref == "refs/heads/main"'"#),
        target(
            "mirror",
            "ci",
            &ci,
            SIGN_CI,
            r#"headers = { "X-Team" = "db" }"#,
        ),
        target(
            "mirror",
            "chat",
            &chat,
            SIGN_CHAT,
            "transform = '{ref, after, repository: .repository.full_name}'",
        ),
    ]
    .concat();
    let server = sb.serve(gateway(&sb, &config), ENV);

    // A push to another branch is stored and processed, but passes no relay's `if`.
    let dev = push(&server, "d-dev", "dev");
    wait_processed(&server, dev);
    let body = push_body("d-main", "main");
    let reply = server.github("github", GITHUB_SECRET, "push", "d-main", &body);
    assert_eq!(reply.status, 202, "{reply:?}");

    let at_ci = ci.wait_for_requests(1, SOON).remove(0);
    let at_chat = chat.wait_for_requests(1, SOON).remove(0);

    // The CI gets the delivery's body byte for byte, signed by baton with the CI's secret
    // (which its own check proves), never with GitHub's signature to baton.
    assert_eq!(at_ci.method, "POST");
    assert_eq!(at_ci.text(), body);
    assert_eq!(at_ci.signature, Verdict::Valid, "{:?}", at_ci.headers);
    assert_ne!(
        at_ci.header("x-hub-signature-256"),
        Some(sign_sha256(GITHUB_SECRET, body.as_bytes()).as_str()),
        "GitHub's own signature is not passed on"
    );
    assert_eq!(at_ci.header("x-team"), Some("db"));
    assert_eq!(at_ci.header("content-type"), Some("application/json"));

    // The chat bot gets the transform's output, signed the Standard Webhooks way over it.
    assert_eq!(at_chat.signature, Verdict::Valid, "{:?}", at_chat.headers);
    assert_eq!(
        at_chat.json(),
        json!({"ref": "refs/heads/main", "after": "d-main", "repository": "octo/app"})
    );
    assert_eq!(at_chat.header("x-hub-signature-256"), None);
    assert_eq!(at_chat.header("x-team"), None, "headers are per target");

    // Both learn what the delivery was and where it came from.
    for request in [&at_ci, &at_chat] {
        assert_eq!(request.header("x-github-event"), Some("push"));
        assert_eq!(request.header("x-github-delivery"), Some("d-main"));
        assert_eq!(request.header("x-baton-relay"), Some("mirror"));
        assert_eq!(request.header("x-baton-source"), Some("github"));
        assert_eq!(request.header("x-baton-event"), Some("push"));
        assert_eq!(request.header("x-baton-delivery"), Some("d-main"));
    }
    // Each target's message has its own key, the same in `Idempotency-Key` and `webhook-id`.
    let (ci_key, chat_key) = (key_of(&at_ci), key_of(&at_chat));
    assert_ne!(ci_key, chat_key, "one message per delivery and target");

    for (name, key) in [("ci", &ci_key), ("chat", &chat_key)] {
        let shown = wait_message(&server, "mirror", key, "delivered");
        assert_eq!(shown["message"]["target"], name);
        assert_eq!(shown["message"]["attempts"], 1);
        assert_eq!(attempts(&shown, "outcome"), [json!("delivered")]);
        assert_eq!(attempts(&shown, "code"), [json!(200)]);
        let listed = messages(&server, "mirror", &format!("target={name}"));
        let keys: Vec<&Value> = listed.iter().map(|m| &m["key"]).collect();
        assert_eq!(keys, [&json!(key)], "only the push to main is relayed");
        let state = wait_target(&server, "mirror", name, "the delivered count", |t| {
            t["delivered"] == 1
        });
        assert_eq!(state["state"], "healthy");
        assert_eq!(state["pending"], 0);
        assert_eq!(state["dead"], 0);
    }
    assert_eq!((ci.count(), chat.count()), (1, 1));

    let listed = relays_cli(&sb, &server, VIEWER, &["list"]);
    for word in ["mirror", "ci", "chat", "healthy"] {
        assert!(listed.contains(word), "{word} in:\n{listed}");
    }
}

#[test]
fn failed_tries_follow_the_schedule_and_a_dead_message_is_replayed() {
    let sb = Sandbox::new();
    let flaky = Receiver::start(Signing::Nothing);
    flaky.set(Behaviour::FailThenOk(2));
    let down = Receiver::start(Signing::Nothing);
    let long_error = "the database is on fire; ".repeat(400);
    down.set(Behaviour::Status(
        Answer::status(500).body(long_error.clone()),
    ));
    let config = [
        relay("mirror", r#"schedule = ["200ms", "400ms", "800ms"]"#),
        target("mirror", "flaky", &flaky, UNSIGNED, ""),
        target("mirror", "down", &down, UNSIGNED, ""),
    ]
    .concat();
    let server = sb.serve(gateway(&sb, &config), ENV);
    push(&server, "d-1", "main");

    // Two failures, then the third try gets through, each after its delay (±10% jitter).
    let tries = flaky.wait_for_requests(3, SOON);
    let key = key_of(&tries[0]);
    assert!(tries.iter().all(|t| t.key.as_deref() == Some(key.as_str())));
    assert!(
        gap_ms(&tries[0], &tries[1]) >= 180,
        "{}",
        gap_ms(&tries[0], &tries[1])
    );
    assert!(
        gap_ms(&tries[1], &tries[2]) >= 360,
        "{}",
        gap_ms(&tries[1], &tries[2])
    );
    let shown = wait_message(&server, "mirror", &key, "delivered");
    assert_eq!(attempts(&shown, "attempt"), [json!(1), json!(2), json!(3)]);
    assert_eq!(
        attempts(&shown, "code"),
        [json!(500), json!(500), json!(200)]
    );
    assert_eq!(
        attempts(&shown, "outcome"),
        [json!("failed"), json!("failed"), json!("delivered")]
    );
    assert_eq!(
        attempts(&shown, "body")[..2],
        [json!("failure 1 of 2\n"), json!("failure 2 of 2\n")]
    );

    // A target that always fails: the first try and three retries, then the message is dead,
    // each answer kept only in part.
    let tries = down.wait_for_requests(4, SOON);
    let dead_key = key_of(&tries[0]);
    let shown = wait_message(&server, "mirror", &dead_key, "dead");
    assert_eq!(attempts(&shown, "code"), vec![json!(500); 4]);
    for body in attempts(&shown, "body") {
        let body = body.as_str().expect("the answer's start is kept");
        assert!(
            !body.is_empty() && body.len() <= 1024,
            "{} bytes kept",
            body.len()
        );
        assert!(long_error.starts_with(body));
    }
    assert_eq!(shown["message"]["tries"], 4);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(down.count(), 4, "a dead message is not tried again");
    assert_eq!(attempts_counted(&server, "mirror", "down", "failed"), 4.0);
    assert_eq!(attempts_counted(&server, "mirror", "flaky", "failed"), 2.0);
    assert_eq!(
        attempts_counted(&server, "mirror", "flaky", "delivered"),
        1.0
    );
    let state = target_state(&server, "mirror", "down");
    assert_eq!(
        (state["dead"].clone(), state["pending"].clone()),
        (json!(1), json!(0))
    );

    let dead = relays_cli(
        &sb,
        &server,
        VIEWER,
        &["show", "mirror", "--target", "down", "--status", "dead"],
    );
    assert!(dead.contains(&dead_key), "{dead}");
    let one = relays_cli(&sb, &server, VIEWER, &["show", "mirror", &dead_key]);
    assert!(one.contains("500"), "{one}");

    // Viewers read; replaying is for operators.
    let refused = server.post(
        "/api/v1/relays/mirror/replay",
        VIEWER,
        r#"{"target": "down"}"#,
    );
    assert_eq!(refused.status, 403, "{refused:?}");

    down.set(Behaviour::Ok);
    let replayed = relays_cli(
        &sb,
        &server,
        OPERATOR,
        &["replay", "mirror", "--target", "down", "--dead"],
    );
    assert!(replayed.contains('1'), "{replayed}");
    let tries = down.wait_for_requests(5, SOON);
    assert_eq!(key_of(&tries[4]), dead_key, "a replay keeps the key");
    let shown = wait_message(&server, "mirror", &dead_key, "delivered");
    assert_eq!(shown["message"]["attempts"], 5);
    assert_eq!(attempts(&shown, "attempt")[4], 5, "numbering goes on");
    assert_eq!(attempts(&shown, "code")[4], 200);
    assert_eq!(
        flaky.count(),
        3,
        "the replay was of the dead target's messages only"
    );
}

#[test]
fn a_429_is_tried_again_no_sooner_than_its_retry_after() {
    let sb = Sandbox::new();
    let busy = Receiver::start(Signing::Nothing);
    busy.set(Behaviour::Status(
        Answer::status(429).header("Retry-After", "1"),
    ));
    let config = [
        relay("mirror", r#"schedule = ["200ms", "200ms", "200ms"]"#),
        target("mirror", "busy", &busy, UNSIGNED, ""),
    ]
    .concat();
    let server = sb.serve(gateway(&sb, &config), ENV);
    push(&server, "d-1", "main");

    busy.wait_for_requests(1, SOON);
    busy.set(Behaviour::Ok);
    let tries = busy.wait_for_requests(2, SOON);
    // The schedule says 200 ms; the receiver asked for a second, and baton waited for it.
    assert!(
        gap_ms(&tries[0], &tries[1]) >= 990,
        "{}",
        gap_ms(&tries[0], &tries[1])
    );
    let shown = wait_message(&server, "mirror", &key_of(&tries[0]), "delivered");
    assert_eq!(
        attempts(&shown, "outcome"),
        [json!("rate_limited"), json!("delivered")]
    );
    assert_eq!(attempts(&shown, "code"), [json!(429), json!(200)]);
}

#[test]
fn a_410_disables_its_target_until_a_replay() {
    let sb = Sandbox::new();
    let gone = Receiver::start(Signing::Nothing);
    gone.set(Behaviour::status(410));
    let fine = Receiver::start(Signing::Nothing);
    let config = [
        relay("mirror", r#"schedule = ["200ms", "200ms"]"#),
        target("mirror", "gone", &gone, UNSIGNED, ""),
        target("mirror", "fine", &fine, UNSIGNED, ""),
    ]
    .concat();
    let server = sb.serve(gateway(&sb, &config), ENV);
    push(&server, "d-1", "main");

    let first = key_of(&gone.wait_for_requests(1, SOON)[0]);
    let shown = wait_message(&server, "mirror", &first, "dead");
    assert_eq!(attempts(&shown, "outcome"), [json!("gone")]);
    let state = wait_target(&server, "mirror", "gone", "the target disabled", |t| {
        t["state"] == "disabled"
    });
    assert!(
        state["disabled_at"].is_number() || state["disabled_at"].is_string(),
        "{state}"
    );
    assert!(
        state["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("410")),
        "{state}"
    );
    assert_eq!(target_state(&server, "mirror", "fine")["state"], "healthy");

    // A later delivery's message for the disabled target is dead as it comes, never sent;
    // the other target takes it as usual.
    push(&server, "d-2", "main");
    fine.wait_for_keys(2, SOON);
    let listed = server.wait_for(
        "/api/v1/relays/mirror/messages?target=gone&status=dead",
        VIEWER,
        "the second message for the disabled target to be dead",
        |page| page["messages"].as_array().is_some_and(|m| m.len() == 2),
    );
    let later = listed["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["key"] != json!(first)))
        .expect("the second message");
    assert_eq!(later["attempts"], 0, "{later}");
    assert!(
        later["message"].as_str().is_some_and(|m| m.contains("410")),
        "{later}"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        gone.count(),
        1,
        "nothing more was sent to a disabled target"
    );

    // It came back: replaying its dead messages enables it again.
    gone.set(Behaviour::Ok);
    let replayed = server.post(
        "/api/v1/relays/mirror/replay",
        OPERATOR,
        r#"{"target": "gone"}"#,
    );
    assert_eq!(replayed.status, 200, "{replayed:?}");
    assert_eq!(replayed.json()["replayed"], 2);
    let keys = gone.wait_for_keys(2, SOON);
    assert!(keys.contains(&first));
    assert!(keys.contains(later["key"].as_str().unwrap()));
    let state = wait_target(&server, "mirror", "gone", "both delivered", |t| {
        t["delivered"] == 2
    });
    assert_eq!(state["state"], "healthy", "{state}");
    assert!(state["disabled_at"].is_null(), "{state}");
    assert_eq!(fine.count(), 2, "the other target was not replayed");
}

#[test]
fn timeouts_and_closed_connections_are_tried_again_and_named() {
    let sb = Sandbox::new();
    let slow = Receiver::start(Signing::Nothing);
    slow.set(Behaviour::Hang);
    let cut = Receiver::start(Signing::Nothing);
    cut.set(Behaviour::Close);
    let config = [
        relay("mirror", r#"schedule = ["200ms", "200ms"]"#),
        target("mirror", "slow", &slow, UNSIGNED, r#"timeout = "300ms""#),
        target("mirror", "cut", &cut, UNSIGNED, ""),
    ]
    .concat();
    let server = sb.serve(gateway(&sb, &config), ENV);
    push(&server, "d-1", "main");

    slow.wait_for_requests(1, SOON);
    slow.set(Behaviour::Ok);
    cut.wait_for_requests(1, SOON);
    cut.set(Behaviour::Ok);

    for (receiver, outcome) in [(&slow, "timeout"), (&cut, "connection")] {
        let tries = receiver.wait_for_requests(2, SOON);
        let key = key_of(&tries[0]);
        assert_eq!(tries[1].key.as_deref(), Some(key.as_str()));
        assert_ne!(tries[0].answered, Answered::Status(200));
        let shown = wait_message(&server, "mirror", &key, "delivered");
        assert_eq!(
            attempts(&shown, "outcome"),
            [json!(outcome), json!("delivered")],
            "{shown:#}"
        );
        assert_eq!(attempts(&shown, "code"), [Value::Null, json!(200)]);
        assert!(attempts(&shown, "error")[0].is_string(), "{shown:#}");
    }
    let timed_out = &message(&server, "mirror", &key_of(&slow.requests()[0]))["attempts"][0];
    assert!(
        timed_out["duration_ms"]
            .as_u64()
            .is_some_and(|ms| ms >= 290),
        "the try lasted the timeout: {timed_out}"
    );
}

#[test]
fn a_loopback_target_needs_allow_private() {
    let sb = Sandbox::new();
    let receiver = Receiver::start(Signing::Nothing);
    let url = format!("http://127.0.0.1:{}/", receiver.port());
    let unguarded = format!(
        "{}\n[[relays.mirror.to]]\nurl = \"{url}\"\nsign = {UNSIGNED}\n",
        relay("mirror", "")
    );
    let config = gateway(&sb, &unguarded);
    let says_why = |text: &str| {
        text.lines().any(|l| {
            l.contains("relays.mirror.to[0].url")
                && l.contains("loopback")
                && l.contains("allow_private = true")
        })
    };

    let validated = baton(&sb, &["validate", "-c", config]);
    assert_eq!(validated.code, Some(1), "{validated:?}");
    assert!(says_why(&validated.stdout), "{}", validated.stdout);

    let served = baton(&sb, &["serve", "-c", config, "--listen", "127.0.0.1:0"]);
    assert_ne!(served.code, Some(0), "{served:?}");
    assert!(says_why(&served.stderr), "{}", served.stderr);

    // A name for the loopback is refused as well.
    let named = unguarded.replace("127.0.0.1", "localhost");
    gateway(&sb, &named);
    let validated = baton(&sb, &["validate", "-c", config]);
    assert_eq!(validated.code, Some(1), "{validated:?}");
    assert!(says_why(&validated.stdout), "{}", validated.stdout);

    // Allowed on purpose, it is fine.
    gateway(&sb, &format!("{unguarded}allow_private = true\n"));
    let validated = baton(&sb, &["validate", "-c", config]);
    assert_eq!(validated.code, Some(0), "{validated:?}");
    assert_eq!(receiver.count(), 0);
}

#[test]
fn a_target_failing_everything_has_its_circuit_opened_and_closed() {
    const MESSAGES: usize = 10;
    let sb = Sandbox::new();
    let down = Receiver::start(Signing::Nothing);
    down.set(Behaviour::status(500));
    // Without a breaker, each message would come back every second.
    let config = [
        relay(
            "mirror",
            &format!("schedule = [{}]", ["\"1s\""; 12].join(", ")),
        ),
        target("mirror", "down", &down, UNSIGNED, ""),
    ]
    .concat();
    let server = sb.serve(gateway(&sb, &config), ENV);
    for n in 0..MESSAGES {
        push(&server, &format!("c-{n}"), "main");
    }

    let open = wait_target(&server, "mirror", "down", "the circuit to open", |t| {
        t["state"] == "open"
    });
    assert!(down.count() >= 5, "opened after {} tries", down.count());
    assert!(
        open["circuit"]["failures"].as_u64().is_some_and(|f| f >= 5),
        "{open}"
    );
    assert!(!open["circuit"]["probe_at"].is_null(), "{open}");

    // While open, only the probes (one a second here) reach the target.
    std::thread::sleep(Duration::from_millis(300));
    let before = down.count();
    std::thread::sleep(Duration::from_secs(3));
    let during = down.count() - before;
    eprintln!("{before} tries before the circuit settled open, {during} in the next 3 s");
    assert!(during <= 4, "{during} tries in 3 s with an open circuit");
    assert_eq!(target_state(&server, "mirror", "down")["state"], "open");

    down.set(Behaviour::Ok);
    let state = wait_target(&server, "mirror", "down", "every message delivered", |t| {
        t["delivered"] == MESSAGES
    });
    assert_eq!(state["state"], "healthy", "{state}");
    assert!(state["circuit"].is_null(), "{state}");
    assert_eq!(down.keys().len(), MESSAGES);
}

#[test]
fn an_ordered_target_gets_its_messages_in_delivery_order() {
    let sb = Sandbox::new();
    let ledger = Receiver::start(Signing::Github(CI_SECRET.into()));
    ledger.set_for("x-github-delivery", "o-1", Behaviour::FailThenOk(2));
    let config = [
        relay("mirror", r#"schedule = ["200ms", "200ms", "200ms"]"#),
        target("mirror", "ledger", &ledger, SIGN_CI, "ordered = true"),
    ]
    .concat();
    let server = sb.serve(gateway(&sb, &config), ENV);
    for n in 1..=5 {
        push(&server, &format!("o-{n}"), "main");
    }

    let requests = ledger.wait_for_requests(7, SOON);
    let order: Vec<&str> = requests
        .iter()
        .map(|r| r.header("x-github-delivery").unwrap_or_default())
        .collect();
    assert_eq!(order, ["o-1", "o-1", "o-1", "o-2", "o-3", "o-4", "o-5"]);
    let answers: Vec<Answered> = requests.iter().map(|r| r.answered).collect();
    assert_eq!(
        answers[..3],
        [
            Answered::Status(500),
            Answered::Status(500),
            Answered::Status(200)
        ]
    );
    assert!(requests.iter().all(|r| r.signature.is_valid()));
    wait_target(&server, "mirror", "ledger", "all five delivered", |t| {
        t["delivered"] == 5
    });
    assert_eq!(ledger.count(), 7);
}

/// How many signed deliveries the kill story sends.
const DELIVERIES: usize = 2000;
/// How many threads send them.
const SENDERS: usize = 4;

/// What one sender thread got done: the deliveries (by number) that were acknowledged with a
/// 2xx, and those sent or left unsent without one.
#[derive(Debug, Default)]
struct Sent {
    acknowledged: Vec<usize>,
    unacknowledged: Vec<usize>,
}

/// The delivery id of delivery `n`.
fn delivery_id(n: usize) -> String {
    format!("k-{n}")
}

/// Sends the deliveries `numbers` to `url` in order, counting acknowledgements in `acked`;
/// the first failure (the server is gone) leaves that one and the rest unacknowledged.
fn send_all(url: &str, numbers: Vec<usize>, acked: &AtomicUsize) -> Sent {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut sent = Sent::default();
    let mut numbers = numbers.into_iter();
    for n in numbers.by_ref() {
        let id = delivery_id(n);
        let body = push_body(&id, "main");
        let reply = agent
            .post(&format!("{url}/hooks/github"))
            .header("x-github-event", "push")
            .header("x-github-delivery", &id)
            .header(
                "x-hub-signature-256",
                &sign_sha256(GITHUB_SECRET, body.as_bytes()),
            )
            .header("content-type", "application/json")
            .send(body.as_bytes());
        if reply.is_ok_and(|r| r.status().is_success()) {
            sent.acknowledged.push(n);
            acked.fetch_add(1, Ordering::Relaxed);
        } else {
            sent.unacknowledged.push(n);
            break;
        }
    }
    sent.unacknowledged.extend(numbers);
    sent
}

/// Sends the deliveries `numbers` to `url` from [`SENDERS`] threads.
fn send_from_threads(
    url: &str,
    numbers: &[usize],
    acked: &Arc<AtomicUsize>,
) -> Vec<std::thread::JoinHandle<Sent>> {
    (0..SENDERS)
        .map(|s| {
            let share: Vec<usize> = numbers.iter().copied().skip(s).step_by(SENDERS).collect();
            let (url, acked) = (url.to_owned(), acked.clone());
            std::thread::spawn(move || send_all(&url, share, &acked))
        })
        .collect()
}

/// What the sender threads got done, together.
fn joined(threads: Vec<std::thread::JoinHandle<Sent>>) -> Sent {
    let mut all = Sent::default();
    for thread in threads {
        let sent = thread.join().expect("a sender thread");
        all.acknowledged.extend(sent.acknowledged);
        all.unacknowledged.extend(sent.unacknowledged);
    }
    all
}

#[test]
fn a_sigkill_loses_no_acknowledged_delivery_and_duplicates_only_unrecorded_tries() {
    let begun = Instant::now();
    let sb = Sandbox::new();
    let receivers = [
        (
            "ci",
            Receiver::start(Signing::Github(CI_SECRET.into())),
            SIGN_CI,
        ),
        (
            "chat",
            Receiver::start(Signing::StandardWebhooks(CHAT_SECRET.into())),
            SIGN_CHAT,
        ),
        (
            "audit",
            Receiver::start(Signing::Github(CI_SECRET.into())),
            SIGN_CI,
        ),
    ];
    let mut config = relay(
        "fanout",
        r#"schedule = ["200ms", "400ms", "800ms", "1s", "2s"]"#,
    );
    for (name, receiver, sign) in &receivers {
        config.push_str(&target("fanout", name, receiver, sign, ""));
    }
    let config = gateway(&sb, &config);

    let server = sb.serve(config, ENV);
    let acked = Arc::new(AtomicUsize::new(0));
    let all: Vec<usize> = (0..DELIVERIES).collect();
    let senders = send_from_threads(&server.url, &all, &acked);
    server.kill_when("a third of the deliveries acknowledged", || {
        acked.load(Ordering::Relaxed) >= DELIVERIES / 3
    });
    let killed_at = Instant::now();
    let before = joined(senders);
    let relayed_before: Vec<usize> = receivers.iter().map(|(_, r, _)| r.count()).collect();
    eprintln!(
        "SIGKILL after {} acknowledged deliveries; the receivers had {relayed_before:?} requests",
        before.acknowledged.len()
    );
    assert!(before.acknowledged.len() >= DELIVERIES / 3);
    assert!(
        !before.unacknowledged.is_empty(),
        "the kill came before the last delivery"
    );

    // The same store: the rest, and again those whose answer never came (stored or not).
    let server = sb.serve(config, ENV);
    let after = joined(send_from_threads(
        &server.url,
        &before.unacknowledged,
        &acked,
    ));
    assert!(
        after.unacknowledged.is_empty(),
        "{:?} refused after the restart",
        after.unacknowledged
    );
    let acknowledged: BTreeSet<String> = before
        .acknowledged
        .iter()
        .chain(&after.acknowledged)
        .map(|&n| delivery_id(n))
        .collect();
    assert_eq!(acknowledged.len(), DELIVERIES);

    for (name, receiver, _) in &receivers {
        let keys = receiver.wait_for_keys(DELIVERIES, Duration::from_secs(60));
        let requests = receiver.requests();
        let reached: BTreeSet<String> = requests
            .iter()
            .filter_map(|r| r.header("x-github-delivery").map(str::to_owned))
            .collect();
        let missing: Vec<&String> = acknowledged.difference(&reached).collect();
        assert!(
            missing.is_empty(),
            "{name} never got {} deliveries: {missing:?}",
            missing.len()
        );
        let unsigned = requests.iter().filter(|r| !r.signature.is_valid()).count();
        assert_eq!(unsigned, 0, "{name}: requests without a valid signature");

        wait_target(&server, "fanout", name, "every message delivered", |t| {
            t["delivered"] == DELIVERIES && t["pending"] == 0
        });
        let listed: BTreeSet<String> = messages(&server, "fanout", &format!("target={name}"))
            .iter()
            .map(|m| m["key"].as_str().expect("a key").to_owned())
            .collect();
        assert_eq!(listed, keys, "{name} saw every message key, and only those");

        // A key that came twice is a try baton made but never recorded an answer of: the
        // kill came between the receiver's answer and its record.
        let duplicated: BTreeMap<String, usize> = receiver
            .counts_by_key()
            .into_iter()
            .filter(|&(_, n)| n > 1)
            .collect();
        eprintln!("{name}: {} keys received more than once", duplicated.len());
        for (key, received) in &duplicated {
            assert!(
                receiver.requests_for(key)[0].at < killed_at,
                "{name}: {key} was first sent after the kill"
            );
            let shown = message(&server, "fanout", key);
            let recorded = attempts(&shown, "code")
                .iter()
                .filter(|c| !c.is_null())
                .count();
            assert_eq!(
                received.checked_sub(recorded),
                Some(1),
                "{name}: {key} arrived {received} times; {recorded} answers recorded: {shown:#}"
            );
        }
    }
    eprintln!("the kill story took {:?}", begun.elapsed());
}
