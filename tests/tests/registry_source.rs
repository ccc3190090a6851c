//! A `registry` source on the real `baton serve`: an OCI registry's notification envelopes
//! are stored one delivery per event, all or nothing, and start workflows; the end-to-end
//! test runs a real registry (Debian's `docker-registry`, distribution 2.8.2) that notifies
//! baton of a real push made with `umoci` and `skopeo`.
//!
//! Needs `docker-registry`, `skopeo` and `umoci` on PATH (`scripts/containers.sh` installs
//! them); without them the end-to-end test fails, it never skips.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::{Sandbox, Server};
use serde_json::{Value, json};

const VIEWER: &str = "viewer-token";
const TOKEN: &str = "registry-events-token";
const PASSWORD: &str = "notifier-password";
const EVENTS_V1: &str = "application/vnd.docker.distribution.events.v1+json";

/// `baton serve` with a bearer and a Basic registry source, and a workflow that echoes the
/// tag and digest of every tagged manifest pushed (pulls and blob pushes start nothing).
fn serve(sb: &Sandbox) -> Server {
    sb.write(
        "workflows/pushed.yaml",
        r#"
name: pushed
on:
  - source: registry
    event: push
    if: '(.target.mediaType | test("manifest")) and .target.tag != null'
stages:
  say:
    uses: exec
    with:
      run: 'echo "[COUT] tag = $TAG"; echo "[COUT] digest = $DIGEST"; echo "[COUT] repository = $REPOSITORY"'
      env:
        TAG: '${{ .event.target.tag }}'
        DIGEST: '${{ .event.target.digest }}'
        REPOSITORY: '${{ .event.target.repository }}'
"#,
    );
    sb.write(
        "baton.toml",
        r#"
workflows = ["workflows/*.yaml"]

[server]
max_body_bytes = 65536

[api]
tokens = [{ name = "vera", token = { env = "T_VIEWER" }, role = "viewer" }]

[sources.registry]
kind = "registry"
token = { env = "T_REGISTRY" }

[sources.basic]
kind = "registry"
username = "notifier"
password = { env = "T_PASSWORD" }
"#,
    );
    sb.serve(
        "baton.toml",
        &[
            ("T_VIEWER", VIEWER),
            ("T_REGISTRY", TOKEN),
            ("T_PASSWORD", PASSWORD),
        ],
    )
}

/// Posts `body` to `/hooks/<source>` with `authorization` and the registry's content type.
fn post(server: &Server, source: &str, authorization: &str, body: &str) -> baton_tests::Reply {
    server.request(
        "POST",
        &format!("/hooks/{source}"),
        &[
            ("authorization", authorization),
            ("content-type", EVENTS_V1),
        ],
        Some(body.as_bytes()),
    )
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn deliveries(server: &Server) -> Vec<Value> {
    server.get("/api/v1/deliveries?limit=100", VIEWER).json()["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// An event as distribution 2.8 writes it, for `repository:tag` (no tag when empty).
fn event(id: Option<&str>, action: &str, repository: &str, tag: &str) -> Value {
    let digest = format!("sha256:{:0>64}", tag.len() + repository.len());
    let mut target = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "size": 345,
        "digest": digest,
        "length": 345,
        "repository": repository,
        "url": format!("http://127.0.0.1:5000/v2/{repository}/manifests/{digest}"),
    });
    if !tag.is_empty() {
        target["tag"] = json!(tag);
    }
    let mut event = json!({
        "timestamp": "2026-12-05T19:13:42.422640812Z",
        "action": action,
        "target": target,
        "request": {"id": "r", "addr": "127.0.0.1:1", "host": "127.0.0.1:5000", "method": "PUT", "useragent": "skopeo/1.9.3"},
        "actor": {},
        "source": {"addr": "vm:5000", "instanceID": "i"},
    });
    if let Some(id) = id {
        event["id"] = json!(id);
    }
    event
}

fn envelope(events: &[&Value]) -> String {
    json!({ "events": events }).to_string()
}

/// The value of one `/metrics` series, 0 when absent.
fn metric(server: &Server, series: &str) -> f64 {
    let page = server.request("GET", "/metrics", &[], None).body;
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until every stored delivery has been matched, and returns them.
fn processed(server: &Server, count: usize) -> Vec<Value> {
    let begun = Instant::now();
    loop {
        let all = deliveries(server);
        if all.len() == count && all.iter().all(|d| d["status"] == "processed") {
            return all;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "{count} processed deliveries expected, have {all:#?}\nlog:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_envelope_is_stored_event_by_event_and_a_retry_is_duplicates() {
    let sb = Sandbox::new();
    let server = serve(&sb);
    let pushed = event(Some("e-push-1"), "push", "team/app", "v1");
    let pulled = event(Some("e-pull-1"), "pull", "team/app", "v1");

    let first = post(
        &server,
        "registry",
        &bearer(),
        &envelope(&[&pushed, &pulled]),
    );
    assert_eq!(first.status, 202, "{first:?}");
    let answer = first.json();
    assert_eq!(answer["status"], "accepted");
    assert_eq!(
        (answer["stored"].as_u64(), answer["duplicates"].as_u64()),
        (Some(2), Some(0))
    );
    let ids = answer["deliveries"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 2);

    // The registry retries a whole envelope: every event is a duplicate, under its id.
    let again = post(
        &server,
        "registry",
        &bearer(),
        &envelope(&[&pushed, &pulled]),
    );
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(
        again.json(),
        json!({"status": "duplicate", "stored": 0, "duplicates": 2, "deliveries": ids})
    );

    // New events beside seen ones are stored; a repeat inside the envelope counts once.
    let second = event(Some("e-push-2"), "push", "team/app", "v2");
    let mixed = post(
        &server,
        "registry",
        &bearer(),
        &envelope(&[&pushed, &second, &second]),
    );
    assert_eq!(mixed.status, 202, "{mixed:?}");
    let mixed = mixed.json();
    assert_eq!(
        (mixed["stored"].as_u64(), mixed["duplicates"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(mixed["deliveries"][0], ids[0]);
    assert_eq!(mixed["deliveries"][1], mixed["deliveries"][2]);

    // An event without an id is known by its bytes.
    let untagged = event(None, "push", "team/app", "");
    let no_id = post(
        &server,
        "basic",
        &basic("notifier", PASSWORD),
        &envelope(&[&untagged]),
    );
    assert_eq!(no_id.status, 202, "{no_id:?}");
    let no_id_again = post(
        &server,
        "basic",
        &basic("notifier", PASSWORD),
        &envelope(&[&untagged]),
    );
    assert_eq!(no_id_again.json()["status"], "duplicate");

    // An envelope without events is answered and stores nothing.
    let empty = post(&server, "registry", &bearer(), r#"{"events": []}"#);
    assert_eq!(empty.status, 200, "{empty:?}");
    assert_eq!(
        empty.json(),
        json!({"status": "empty", "stored": 0, "duplicates": 0, "deliveries": []})
    );

    let all = processed(&server, 4);
    let by_id = |id: &str| {
        all.iter()
            .find(|d| d["delivery_id"] == id)
            .unwrap_or_else(|| panic!("no delivery {id} in {all:#?}"))
    };
    let push = by_id("e-push-1");
    assert_eq!(push["event"], "push");
    assert_eq!(push["body"], pushed, "the event object itself is the body");
    assert!(push["headers"].get("authorization").is_none(), "{push}");
    assert_eq!(push["headers"]["content-type"], EVENTS_V1);
    assert_eq!(push["runs"].as_array().unwrap().len(), 1, "{push}");
    assert_eq!(by_id("e-push-2")["runs"].as_array().unwrap().len(), 1);
    let pull = by_id("e-pull-1");
    assert_eq!(pull["event"], "pull");
    assert_eq!(pull["runs"], json!([]), "a pull starts nothing: {pull}");
    let hashed = all.iter().find(|d| d["source"] == "basic").unwrap();
    assert_eq!(
        hashed["delivery_id"].as_str().unwrap().len(),
        64,
        "{hashed}"
    );
    assert_eq!(
        hashed["runs"],
        json!([]),
        "an untagged manifest starts nothing"
    );

    let run = push["runs"][0].as_str().unwrap();
    let run = server.run_ended(run, VIEWER);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stages"][0]["outputs"]["tag"], "v1");
    assert_eq!(
        run["stages"][0]["outputs"]["digest"],
        pushed["target"]["digest"]
    );

    let series = |source: &str, result: &str| {
        metric(
            &server,
            &format!(r#"baton_deliveries_total{{source="{source}",result="{result}"}}"#),
        )
    };
    assert_eq!(series("registry", "accepted"), 3.0);
    assert_eq!(series("registry", "duplicate"), 4.0);
    assert_eq!(series("basic", "accepted"), 1.0);
    assert_eq!(series("basic", "duplicate"), 1.0);
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

#[test]
fn refused_envelopes_are_answered_in_words_and_store_nothing() {
    let sb = Sandbox::new();
    let server = serve(&sb);
    let good = envelope(&[&event(Some("e-1"), "push", "team/app", "v1")]);
    let refused = |source: &str, headers: &[(&str, &str)], body: &str, status: u16| {
        let reply = server.request(
            "POST",
            &format!("/hooks/{source}"),
            headers,
            Some(body.as_bytes()),
        );
        assert_eq!(reply.status, status, "{headers:?} {body}: {reply:?}");
        reply.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    fn with(auth: &str) -> [(&str, &str); 2] {
        [("authorization", auth), ("content-type", EVENTS_V1)]
    }
    let token = bearer();

    let message = refused("registry", &[("content-type", EVENTS_V1)], &good, 401);
    assert!(
        message.contains("missing `Authorization: Bearer <token>`"),
        "{message}"
    );
    refused("registry", &with("Bearer not-the-token"), &good, 401);
    refused("registry", &with(&basic("notifier", TOKEN)), &good, 401);
    let message = refused("basic", &with(&basic("notifier", "wrong")), &good, 401);
    assert!(message.contains("does not match"), "{message}");
    refused("basic", &with(&token), &good, 401);

    let message = refused(
        "registry",
        &[("authorization", &token), ("content-type", "text/plain")],
        &good,
        415,
    );
    assert!(message.contains("events.v1+json"), "{message}");

    let message = refused("registry", &with(&token), "{\"events\": [", 400);
    assert!(message.contains("not JSON"), "{message}");
    let message = refused("registry", &with(&token), r#"{"event": []}"#, 400);
    assert!(message.contains(r#"{"events": [...]}"#), "{message}");
    // One bad event refuses the envelope: its good events are not stored either.
    let mixed = envelope(&[
        &event(Some("e-2"), "push", "team/app", "v2"),
        &json!({"id": "e-3"}),
    ]);
    let message = refused("registry", &with(&token), &mixed, 400);
    assert!(message.starts_with("events[1].action:"), "{message}");

    let large = envelope(&[&json!({"id": "big", "action": "push", "pad": "x".repeat(70_000)})]);
    refused("registry", &with(&token), &large, 413);

    assert_eq!(deliveries(&server), Vec::<Value>::new());
    // Refused: not counted as accepted, counted by why.
    let accepted = r#"baton_deliveries_total{source="registry",result="accepted"}"#;
    assert_eq!(metric(&server, accepted), 0.0);
    let unauthenticated = r#"baton_deliveries_total{source="registry",result="unauthenticated"}"#;
    assert_eq!(metric(&server, unauthenticated), 3.0);
    // The good envelope is taken once the header is right.
    assert_eq!(post(&server, "registry", &token, &good).status, 202);
}

/// A program the end-to-end test needs; panics (never skips) when it is not installed.
fn command(program: &str) -> Command {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()));
    assert!(
        found,
        "`{program}` is not on PATH: the registry source's end-to-end test needs Debian's docker-registry, skopeo and umoci; run `scripts/containers.sh` (it installs them)"
    );
    Command::new(program)
}

/// Runs `program args`, bounded, and returns its standard output; panics with its
/// standard error when it fails.
fn run(program: &str, args: &[&str], dir: &Path) -> String {
    let child = command(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let finished = baton_tests::wait_with_deadline(child, Duration::from_secs(60));
    assert_eq!(
        finished.code,
        Some(0),
        "{program} {args:?} failed: {}",
        finished.stderr
    );
    finished.stdout
}

/// A registry process, killed and reaped when dropped (the test's failure included).
struct Registry {
    child: Child,
    url: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1 (the registry is told its address in its config).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Starts `docker-registry serve` in `dir`, notifying `hook` with the bearer token, and
/// waits (bounded) until it answers.
fn start_registry(dir: &Path, hook: &str) -> Registry {
    let port = free_port();
    let config = format!(
        "version: 0.1
log: {{level: info}}
storage:
  filesystem: {{rootdirectory: {data}}}
  delete: {{enabled: true}}
http: {{addr: 127.0.0.1:{port}, secret: registry-source-test}}
notifications:
  endpoints:
    - name: baton
      url: {hook}
      headers: {{Authorization: [Bearer {TOKEN}]}}
      timeout: 2s
      threshold: 5
      backoff: 1s
      ignoredmediatypes: [application/octet-stream]
",
        data = dir.join("data").display()
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    let child = command("docker-registry")
        .args(["serve", "config.yml"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting docker-registry");
    let registry = Registry {
        child,
        url: format!("127.0.0.1:{port}"),
    };
    let begun = Instant::now();
    while std::net::TcpStream::connect(&registry.url).is_err() {
        assert!(
            begun.elapsed() < Duration::from_secs(15),
            "docker-registry did not listen on {} within 15 s:\n{}",
            registry.url,
            std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    registry
}

#[test]
fn a_real_registry_push_starts_one_run_per_tag_and_its_pulls_start_nothing() {
    let sb = Sandbox::new();
    let server = serve(&sb);
    let dir = sb.path().join("registry");
    std::fs::create_dir_all(&dir).unwrap();
    let registry = start_registry(&dir, &format!("{}/hooks/registry", server.url));
    let repository = format!("e2e/app-{}", std::process::id());

    // A one-file OCI image, built without any engine, content unique to this test.
    run("umoci", &["init", "--layout", "oci"], &dir);
    run("umoci", &["new", "--image", "oci:v1"], &dir);
    std::fs::write(dir.join("hello.txt"), format!("hello from {repository}\n")).unwrap();
    run(
        "umoci",
        &["insert", "--image", "oci:v1", "hello.txt", "/hello.txt"],
        &dir,
    );
    run("umoci", &["gc", "--layout", "oci"], &dir);
    let image = |tag: &str| format!("docker://{}/{repository}:{tag}", registry.url);
    for tag in ["v1", "v2"] {
        run(
            "skopeo",
            &[
                "copy",
                "-q",
                "--dest-tls-verify=false",
                "oci:oci:v1",
                &image(tag),
            ],
            &dir,
        );
    }
    // A read of the manifest: the registry reports it as a pull.
    let inspected: Value = serde_json::from_str(&run(
        "skopeo",
        &["inspect", "--tls-verify=false", &image("v1")],
        &dir,
    ))
    .unwrap();
    let digest = inspected["Digest"].as_str().expect("a digest").to_owned();

    // The registry notifies on its own schedule: wait for both tags' pushes and the pull.
    let begun = Instant::now();
    let stored = loop {
        let all = deliveries(&server);
        let manifests = |action: &str| {
            all.iter()
                .filter(|d| {
                    d["event"] == action
                        && d["body"]["target"]["repository"] == repository.as_str()
                        && d["body"]["target"]["mediaType"]
                            .as_str()
                            .is_some_and(|t| t.contains("manifest"))
                })
                .count()
        };
        if manifests("push") >= 2
            && manifests("pull") >= 1
            && all.iter().all(|d| d["status"] == "processed")
        {
            break all;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "the registry's push and pull events did not all arrive: {all:#?}\nregistry log:\n{}\nbaton log:\n{}",
            std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(registry);

    let mut tags = Vec::new();
    for delivery in &stored {
        let runs = delivery["runs"].as_array().unwrap();
        let target = &delivery["body"]["target"];
        match delivery["event"].as_str() {
            Some("push") if target["tag"].is_string() => {
                assert_eq!(runs.len(), 1, "one run per pushed tag: {delivery:#}");
                let run = server.run_ended(runs[0].as_str().unwrap(), VIEWER);
                assert_eq!(run["status"], "succeeded", "{run:#}");
                let outputs = &run["stages"][0]["outputs"];
                assert_eq!(outputs["tag"], target["tag"], "{run:#}");
                assert_eq!(outputs["digest"], digest.as_str(), "{run:#}");
                assert_eq!(outputs["repository"], repository.as_str(), "{run:#}");
                tags.push(target["tag"].as_str().unwrap().to_owned());
            }
            Some("pull") => assert_eq!(runs.len(), 0, "a pull starts nothing: {delivery:#}"),
            _ => assert_eq!(runs.len(), 0, "{delivery:#}"),
        }
    }
    tags.sort();
    assert_eq!(tags, ["v1", "v2"], "{stored:#?}");
    let runs = server.get("/api/v1/runs?workflow=pushed", VIEWER).json();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2, "{runs:#}");
}
