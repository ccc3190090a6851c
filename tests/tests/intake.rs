//! Webhook intake refuses what it must not store: deliveries without the id header a source
//! de-duplicates by, bodies the matcher cannot read; and its 404 names no source.

use std::time::Duration;

use baton_tests::{Sandbox, Server, eventually, sign_sha256};
use serde_json::Value;

const VIEWER: &str = "view-token-1";

fn serve(sb: &Sandbox) -> Server {
    // Triggers that read every body and never hold, so the matcher parses each delivery.
    sb.write(
        "workflows/watch.yaml",
        r#"
name: watch
on:
  - { source: github, event: push, if: '.ref == "refs/heads/never"' }
  - { source: ci, event: build, if: '.kind == "never"' }
stages:
  x: { uses: exec, with: { run: 'true' } }
"#,
    );
    sb.write(
        "baton.toml",
        r#"
workflows = ["workflows/*.yaml"]

[api]
tokens = [{ name = "vera", token = { env = "T_VIEWER" }, role = "viewer" }]

[sources.github]
kind = "github"
secret = { env = "GH_SECRET" }

[sources.ci]
kind = "generic"
hmac = { secret = { env = "CI_SECRET" }, header = "X-Signature", prefix = "sha256=" }
event = { expr = ".kind" }
delivery_id = { header = "X-Request-Id" }
"#,
    );
    sb.serve(
        "baton.toml",
        &[
            ("T_VIEWER", VIEWER),
            ("GH_SECRET", "gh-secret"),
            ("CI_SECRET", "ci-secret"),
        ],
    )
}

fn deliveries(server: &Server) -> Vec<Value> {
    server.get("/api/v1/deliveries", VIEWER).json()["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A delivery to the generic source `ci`, signed, with an optional `X-Request-Id`.
fn ci(server: &Server, body: &str, request_id: Option<&str>) -> baton_tests::Reply {
    let signature = sign_sha256("ci-secret", body.as_bytes());
    let mut headers = vec![
        ("x-signature", signature.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(id) = request_id {
        headers.push(("x-request-id", id));
    }
    server.request("POST", "/hooks/ci", &headers, Some(body.as_bytes()))
}

#[test]
fn a_missing_delivery_id_header_is_refused_even_when_it_is_x_request_id() {
    let sb = Sandbox::new();
    let server = serve(&sb);
    let body = r#"{"kind": "build", "n": 1}"#;

    // baton gives every request without an `X-Request-Id` one of its own; that id must not
    // stand in for the sender's, or every resend is a new delivery.
    for _ in 0..2 {
        let reply = ci(&server, body, None);
        assert_eq!(reply.status, 400, "{reply:?}");
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("missing delivery id header X-Request-Id"),
            "{reply:?}"
        );
        assert!(reply.header("x-request-id").is_some(), "{reply:?}");
    }
    assert_eq!(deliveries(&server), Vec::<Value>::new());

    let first = ci(&server, body, Some("ci-run-7"));
    assert_eq!(first.status, 202, "{first:?}");
    let again = ci(&server, body, Some("ci-run-7"));
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["status"], "duplicate");
    assert_eq!(again.json()["delivery"], first.json()["delivery"]);
    let stored = deliveries(&server);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["delivery_id"], "ci-run-7");
    assert_eq!(stored[0]["event"], "build");
}

/// `depth` arrays, one inside the other, around `1`.
fn nested(depth: usize) -> String {
    format!(
        r#"{{"ref": "refs/heads/main", "deep": {}1{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[test]
fn bodies_the_matcher_cannot_read_are_refused_before_the_answer() {
    let sb = Sandbox::new();
    let server = serve(&sb);
    let push = |body: &str, id: &str| server.github("github", "gh-secret", "push", id, body);

    // The object and 126 arrays are 127 levels: the deepest the parser reads.
    let deepest = push(&nested(126), "deepest");
    assert_eq!(deepest.status, 202, "{deepest:?}");

    for (id, body, reason) in [
        ("too-deep", nested(127), "recursion limit exceeded"),
        ("far-too-deep", nested(5000), "recursion limit exceeded"),
        (
            "too-big",
            r#"{"ref": "refs/heads/main", "n": 1e309}"#.to_owned(),
            "number out of range",
        ),
        (
            "too-small",
            r#"{"ref": "refs/heads/main", "n": -2e308}"#.to_owned(),
            "number out of range",
        ),
    ] {
        let reply = push(&body, id);
        assert_eq!(reply.status, 400, "{id}: {reply:?}");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(reason), "{id}: {message}");
        assert!(
            message.contains("at most 127 levels of nesting"),
            "{id}: {message}"
        );
    }

    // A source whose event type comes from a jq expression reads the same parse.
    let reply = ci(
        &server,
        &format!(r#"{{"kind": "build", "x": {}}}"#, "[".repeat(200)),
        Some("c1"),
    );
    assert_eq!(reply.status, 400, "{reply:?}");
    let reply = ci(&server, r#"{"kind": "build", "x": 1e400}"#, Some("c2"));
    assert_eq!(reply.status, 400, "{reply:?}");
    let reply = ci(&server, r#"{"kind": "build", "x": 1.5e300}"#, Some("c3"));
    assert_eq!(reply.status, 202, "{reply:?}");

    // Only the two readable bodies were stored, and the matcher read both. (An answer that
    // holds the deepest body is nested deeper than serde_json reads, so it is searched as text.)
    let stored = server.get("/api/v1/deliveries", VIEWER).body;
    assert_eq!(stored.matches(r#""delivery_id":"#).count(), 2, "{stored}");
    for id in [
        deepest.json()["delivery"].clone(),
        reply.json()["delivery"].clone(),
    ] {
        eventually(
            Duration::from_secs(30),
            "the matcher to read the body",
            || {
                let delivery = server.get(&format!("/api/v1/deliveries/{id}"), VIEWER).body;
                assert!(!delivery.contains(r#""status":"failed""#), "{delivery}");
                delivery.contains(r#""status":"processed""#)
            },
        );
    }
}

#[test]
fn an_unknown_source_is_not_told_which_sources_exist() {
    let sb = Sandbox::new();
    let server = serve(&sb);
    let reply = server.github("nope", "gh-secret", "push", "d1", "{}");
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.json()["error"]["message"], "unknown webhook source");
    assert!(!reply.body.contains("github"), "{}", reply.body);
    assert!(!reply.body.contains("ci"), "{}", reply.body);
}
