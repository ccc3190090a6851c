//! A `travis` source on the real `baton serve`: Travis CI's signed notifications start
//! workflows, checked with the key a Travis API serves at `/config`; forged, foreign and
//! uncheckable ones are refused and never stored.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use baton_tests::forges::travis_signing::{config_document, form_body, sign};
use baton_tests::{Sandbox, Server};
use serde_json::Value;

const VIEWER: &str = "viewer-token";

/// A Travis API answering every request with `/config`'s document (or `status` and
/// garbage), counting the requests; on a thread of its own for the test's life.
fn travis_api(status: u16) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let reads = Arc::new(AtomicUsize::new(0));
    let counted = reads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            counted.fetch_add(1, Ordering::SeqCst);
            let body = if status == 200 {
                config_document().to_string()
            } else {
                "Service Unavailable".to_owned()
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, reads)
}

fn serve(sb: &Sandbox, api: &str) -> Server {
    sb.write(
        "workflows/deploy.yaml",
        r#"
name: deploy
on:
  - { source: travis, event: passed, if: '.branch == "master"' }
stages:
  say:
    uses: exec
    with:
      run: 'echo "[COUT] build = $BUILD"'
      env: { BUILD: '${{ .event.number }}' }
"#,
    );
    sb.write(
        "baton.toml",
        &format!(
            r#"
workflows = ["workflows/*.yaml"]

[api]
tokens = [{{ name = "vera", token = {{ env = "T_VIEWER" }}, role = "viewer" }}]

[sources.travis]
kind = "travis"
repos = ["pingcap/tidb"]
api_url = "{api}"
"#
        ),
    );
    sb.serve("baton.toml", &[("T_VIEWER", VIEWER)])
}

fn notification(repo: &str, state: &str, branch: &str, number: u32) -> String {
    let (owner, name) = repo.split_once('/').unwrap();
    serde_json::json!({
        "id": 9000 + number,
        "number": number.to_string(),
        "type": "push",
        "state": state,
        "status_message": "Passed",
        "branch": branch,
        "build_url": format!("https://app.travis-ci.com/{repo}/builds/{}", 9000 + number),
        "repository": { "id": 1, "owner_name": owner, "name": name },
    })
    .to_string()
}

/// Posts `payload` as Travis does, with `signature` (Travis's own when `None`).
fn post(server: &Server, payload: &str, signature: Option<&str>) -> baton_tests::Reply {
    let signed = sign(payload);
    let body = form_body(payload);
    server.request(
        "POST",
        "/hooks/travis",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("travis-repo-slug", "pingcap/tidb"),
            ("signature", signature.unwrap_or(&signed)),
        ],
        Some(body.as_bytes()),
    )
}

fn deliveries(server: &Server) -> Vec<Value> {
    server.get("/api/v1/deliveries", VIEWER).json()["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_signed_notification_is_stored_as_its_payload_and_starts_the_workflow() {
    let (api, reads) = travis_api(200);
    let sb = Sandbox::new();
    let server = serve(&sb, &api);
    let payload = notification("pingcap/tidb", "passed", "master", 7);

    let first = post(&server, &payload, None);
    assert_eq!(first.status, 202, "{first:?}");
    let id = first.json()["delivery"].as_i64().unwrap();
    let stored = server.wait_for(
        &format!("/api/v1/deliveries/{id}"),
        VIEWER,
        "the delivery to be processed",
        |d| d["status"] == "processed",
    );
    assert_eq!(stored["event"], "passed");
    assert_eq!(stored["body"]["number"], "7", "{stored}");
    assert!(stored["headers"].get("signature").is_none(), "{stored}");
    assert_eq!(stored["headers"]["travis-repo-slug"], "pingcap/tidb");
    let run = stored["runs"][0].as_str().expect("a run was started");
    let run = server.wait_for(
        &format!("/api/v1/runs/{run}"),
        VIEWER,
        "the run to finish",
        |r| r["status"] == "succeeded",
    );
    assert_eq!(run["stages"][0]["outputs"]["build"], 7);

    // The same notification again is a duplicate; a failed build stores but starts nothing.
    let again = post(&server, &payload, None);
    assert_eq!(
        (again.status, again.json()["status"].clone()),
        (200, "duplicate".into())
    );
    let failed = post(
        &server,
        &notification("pingcap/tidb", "failed", "master", 8),
        None,
    );
    assert_eq!(failed.status, 202, "{failed:?}");
    let id = failed.json()["delivery"].as_i64().unwrap();
    let stored = server.wait_for(
        &format!("/api/v1/deliveries/{id}"),
        VIEWER,
        "the delivery to be processed",
        |d| d["status"] == "processed",
    );
    assert_eq!(stored["runs"], serde_json::json!([]));
    // The key was read once for all three.
    assert_eq!(reads.load(Ordering::SeqCst), 1);
}

#[test]
fn forged_foreign_and_malformed_notifications_are_refused_and_not_stored() {
    let (api, _) = travis_api(200);
    let sb = Sandbox::new();
    let server = serve(&sb, &api);
    let ours = notification("pingcap/tidb", "passed", "master", 1);

    // Signed over another payload: 401.
    let forged = sign(&notification("pingcap/tidb", "passed", "master", 2));
    let reply = post(&server, &ours, Some(&forged));
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(reply.body.contains("does not verify"), "{reply:?}");
    let reply = post(&server, &ours, Some("%%%"));
    assert_eq!(reply.status, 401, "{reply:?}");

    // Genuine, but about a repository this source does not take: 403.
    let reply = post(
        &server,
        &notification("someone/else", "passed", "master", 3),
        None,
    );
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.body.contains("someone/else"), "{reply:?}");

    // JSON instead of the form: 400, saying what Travis sends.
    let reply = server.request(
        "POST",
        "/hooks/travis",
        &[
            ("content-type", "application/json"),
            ("signature", &sign(&ours)),
        ],
        Some(ours.as_bytes()),
    );
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(reply.body.contains("payload="), "{reply:?}");

    assert!(deliveries(&server).is_empty());
    assert_eq!(server.get("/healthz", VIEWER).status, 200);
}

#[test]
fn a_notification_that_cannot_be_checked_gets_503_and_is_not_stored() {
    let (api, reads) = travis_api(503);
    let sb = Sandbox::new();
    let server = serve(&sb, &api);
    let reply = post(
        &server,
        &notification("pingcap/tidb", "passed", "master", 1),
        None,
    );
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.body.contains("/config"), "{reply:?}");
    assert!(deliveries(&server).is_empty());
    assert_eq!(reads.load(Ordering::SeqCst), 1);
}
