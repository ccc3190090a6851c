//! The REST API against its OpenAPI document (`GET /api/v1/openapi.json`): every refusal is
//! the documented JSON error with a status the document lists for the call, and Schemathesis,
//! run against the document with each role's token, finds no failure.
//!
//! The Schemathesis test needs the tool: `scripts/test.sh` installs the pinned version under
//! `.venv-schemathesis/` and names it in `BATON_SCHEMATHESIS`. Without it that test fails: it
//! never skips.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use baton_tests::{ALL_ROLES_GATEWAY, Reply, Sandbox, Server};
use serde_json::Value;

const VIEWER: &str = "view-token-1";
const OPERATOR: &str = "oper-token-2";
const APPROVER: &str = "appr-token-3";

const ENV: &[(&str, &str)] = &[
    ("T_VIEWER", VIEWER),
    ("T_OPERATOR", OPERATOR),
    ("T_APPROVER", APPROVER),
    ("DEPLOY_TOKEN", "deploy-token"),
];

/// Three tokens, a generic source, and three workflows: one that waits for an approval, one
/// whose stage fails (so it can be retried), and one that cannot be started by hand.
fn gateway(sb: &Sandbox) -> String {
    sb.write(
        "baton.toml",
        &[
            ALL_ROLES_GATEWAY,
            r#"
[sources.deploy]
kind = "generic"
bearer = { token = { env = "DEPLOY_TOKEN" } }
event = { expr = ".type" }
"#,
        ]
        .concat(),
    );
    sb.write(
        "workflows/gated.yaml",
        r#"
name: gated
on: [{ source: manual }, { source: deploy, event: release }]
stages:
  ok:
    uses: approval
    timeout: 10m
    with: { message: 'ship it?' }
  after:
    needs: [ok]
    uses: exec
    with: { run: 'echo shipped' }
"#,
    );
    sb.write(
        "workflows/broken.yaml",
        r#"
name: broken
on: [{ source: manual }]
stages:
  build:
    uses: exec
    with: { run: 'exit 3' }
"#,
    );
    sb.write(
        "workflows/hooked.yaml",
        r#"
name: hooked
on: [{ source: deploy, event: push }]
stages:
  build:
    uses: exec
    with: { run: 'true' }
"#,
    );
    sb.path().join("baton.toml").display().to_string()
}

/// Starts `workflow` by hand and waits until `settled` holds for the run.
fn start(server: &Server, workflow: &str, settled: impl Fn(&Value) -> bool) -> String {
    let reply = server.post(
        &format!("/api/v1/workflows/{workflow}/runs"),
        OPERATOR,
        "{}",
    );
    assert_eq!(reply.status, 201, "{reply:?}");
    let run = reply.json()["run"].as_str().unwrap().to_owned();
    server.wait_for(
        &format!("/api/v1/runs/{run}"),
        VIEWER,
        "the run to settle",
        settled,
    );
    run
}

/// A run of `gated` whose approval stage waits.
fn waiting_run(server: &Server) -> String {
    start(server, "gated", |r| r["stages"][0]["status"] == "waiting")
}

/// A run of `broken`, failed.
fn failed_run(server: &Server) -> String {
    start(server, "broken", |r| r["status"] == "failed")
}

/// Sends a deployment delivery; returns its id once it is processed.
fn delivery(server: &Server, body: &str) -> i64 {
    let reply = server.request(
        "POST",
        "/hooks/deploy",
        &[("authorization", "Bearer deploy-token")],
        Some(body.as_bytes()),
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    let id = reply.json()["delivery"].as_i64().unwrap();
    server.wait_for(
        &format!("/api/v1/deliveries/{id}"),
        VIEWER,
        "processing",
        |d| d["status"] == "processed",
    );
    id
}

/// The OpenAPI document the server serves.
fn openapi(server: &Server) -> Value {
    let reply = server.request("GET", "/api/v1/openapi.json", &[], None);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node["$ref"].as_str() {
        Some(pointer) => doc
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("{pointer} does not resolve")),
        None => node,
    }
}

/// Asserts that `reply` is the API's JSON error with `code`, and that the document lists its
/// status, as JSON, for `method template`; returns the error's message.
fn documented_error(
    doc: &Value,
    method: &str,
    template: &str,
    reply: &Reply,
    code: &str,
) -> String {
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{method} {template}: {reply:?}"
    );
    assert_eq!(
        reply.json()["error"]["code"],
        code,
        "{method} {template}: {reply:?}"
    );
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!message.is_empty(), "{reply:?}");
    let operation = &doc["paths"][template][method.to_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {template} is not documented"
    );
    let response = resolve(doc, &operation["responses"][reply.status.to_string()]);
    assert!(
        response["content"]["application/json"].is_object(),
        "{method} {template} does not document {} as JSON: {response}",
        reply.status
    );
    message
}

fn auth(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn bad_limits_and_offsets_get_the_documented_json_error() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb), ENV);
    let doc = openapi(&server);
    for list in ["/api/v1/runs", "/api/v1/deliveries"] {
        for (query, names) in [
            ("limit=-1", ["limit", "1 to 1000"]),
            ("limit=0", ["limit", "1 to 1000"]),
            ("limit=1001", ["limit", "1 to 1000"]),
            ("offset=ten", ["offset", "from 0"]),
            ("limit=5&limit=6", ["limit", "duplicate"]),
        ] {
            let reply = server.get(&format!("{list}?{query}"), VIEWER);
            assert_eq!(reply.status, 400, "{list}?{query}: {reply:?}");
            let message = documented_error(&doc, "GET", list, &reply, "bad_request");
            for name in names {
                assert!(message.contains(name), "{list}?{query}: {message}");
            }
        }
        // Within the documented range all is well.
        let page = server.get(&format!("{list}?limit=1000&offset=4294967295"), VIEWER);
        assert_eq!(page.status, 200, "{page:?}");
        assert_eq!(page.json()["limit"], 1000);
    }
    // The document states the range the server holds to.
    let limit = resolve(&doc, &doc["paths"]["/api/v1/runs"]["get"]["parameters"][2]);
    assert_eq!(limit["name"], "limit");
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&Value::from(1), &Value::from(1000))
    );
}

#[test]
fn a_status_filter_takes_exactly_the_documented_statuses() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb), ENV);
    let doc = openapi(&server);
    let status = doc["paths"]["/api/v1/runs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "status")
        .expect("status is documented");
    let allowed = status["schema"]["enum"]
        .as_array()
        .expect("the document lists the statuses");
    assert_eq!(allowed.len(), 5, "{status}");
    for value in allowed {
        let reply = server.get(
            &format!("/api/v1/runs?status={}", value.as_str().unwrap()),
            VIEWER,
        );
        assert_eq!(reply.status, 200, "{value}: {reply:?}");
    }
    for value in ["", "done", "QUEUED"] {
        let reply = server.get(&format!("/api/v1/runs?status={value}"), VIEWER);
        assert_eq!(reply.status, 400, "`{value}`: {reply:?}");
        let message = documented_error(&doc, "GET", "/api/v1/runs", &reply, "bad_request");
        assert!(
            message.contains("expected queued, running, succeeded, failed or cancelled"),
            "{message}"
        );
    }
}

#[test]
fn a_delivery_id_that_is_not_a_number_gets_the_documented_json_error() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb), ENV);
    let doc = openapi(&server);
    let id = delivery(&server, r#"{"type": "release"}"#);
    for (method, template, token) in [
        ("GET", "/api/v1/deliveries/{id}", VIEWER),
        ("POST", "/api/v1/deliveries/{id}/replay", OPERATOR),
    ] {
        let id_param = resolve(
            &doc,
            &doc["paths"][template][method.to_lowercase()]["parameters"][0],
        );
        assert_eq!(id_param["schema"]["type"], "integer", "{template}");
        for bad in ["abc", "1.5", "0", "-3", "99999999999999999999", "%FF"] {
            let path = template.replace("{id}", bad);
            let reply = server.request(method, &path, &[("authorization", &auth(token))], None);
            assert_eq!(reply.status, 400, "{method} {path}: {reply:?}");
            let message = documented_error(&doc, method, template, &reply, "bad_request");
            assert!(message.contains("`id`"), "{message}");
        }
        let good = template.replace("{id}", &id.to_string());
        let reply = server.request(method, &good, &[("authorization", &auth(token))], None);
        assert!(
            reply.status == 200 || reply.status == 202,
            "{method} {good}: {reply:?}"
        );
        let missing = template.replace("{id}", "987654");
        let reply = server.request(method, &missing, &[("authorization", &auth(token))], None);
        assert_eq!(reply.status, 404, "{reply:?}");
        documented_error(&doc, method, template, &reply, "not_found");
    }
}

/// Follows `next` from `list` (a query string without `before`) until it is null; answers
/// every page.
fn follow_pages(server: &Server, list: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut address = list.to_owned();
    loop {
        let reply = server.get(&address, VIEWER);
        assert_eq!(reply.status, 200, "{address}: {reply:?}");
        let page = reply.json();
        let next = page["next"].clone();
        pages.push(page);
        match next {
            Value::Null => return pages,
            Value::String(cursor) => address = format!("{list}&before={cursor}"),
            Value::Number(id) => address = format!("{list}&before={id}"),
            other => panic!("next is {other}"),
        }
        assert!(pages.len() < 20, "{address} never ends");
    }
}

#[test]
fn runs_and_deliveries_page_by_key_with_next() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb), ENV);
    let doc = openapi(&server);
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let deliveries: Vec<i64> = (0..3)
        .map(|n| {
            delivery(
                &server,
                &format!(r#"{{"type": "push", "n": {n}, "sha": "{sha}"}}"#),
            )
        })
        .collect();
    let manual = failed_run(&server);

    // Runs: pages of two, each page's `next` the cursor of its last run; no run twice.
    let pages = follow_pages(&server, "/api/v1/runs?limit=2");
    let runs: Vec<&Value> = pages
        .iter()
        .flat_map(|p| p["runs"].as_array().unwrap())
        .collect();
    assert_eq!(pages.len(), 3, "two full pages and an empty one: {pages:?}");
    assert_eq!(pages[2]["runs"], Value::Array(Vec::new()));
    let ids: Vec<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!((ids.len(), unique.len()), (4, 4), "{ids:?}");
    let last = &pages[0]["runs"][1];
    assert_eq!(
        pages[0]["next"],
        format!("{}.{}", last["created_at"], last["id"].as_str().unwrap())
    );
    // The newest run is the one started by hand: no delivery, no commit.
    assert_eq!(ids[0], manual);
    assert_eq!(
        (
            &runs[0]["trigger"]["source"],
            &runs[0]["delivery"],
            &runs[0]["commit"]
        ),
        (&Value::from("manual"), &Value::Null, &Value::Null)
    );
    // The others came from the deliveries, newest first, each linked to its own.
    for (run, delivery) in runs[1..].iter().zip(deliveries.iter().rev()) {
        assert_eq!(run["workflow"], "hooked", "{run}");
        assert_eq!(
            (&run["trigger"]["source"], &run["trigger"]["event"]),
            (&Value::from("deploy"), &Value::from("push"))
        );
        assert_eq!(run["delivery"], *delivery, "{run}");
        assert_eq!(run["commit"], sha, "{run}");
    }
    // An offset counts from the cursor; a filter keeps to its runs.
    let cursor = pages[0]["next"].as_str().unwrap();
    let skipped = server.get(&format!("/api/v1/runs?before={cursor}&offset=1"), VIEWER);
    assert_eq!(skipped.json()["runs"][0]["id"], ids[3], "{skipped:?}");
    let hooked = server.get(
        &format!("/api/v1/runs?workflow=hooked&limit=5&before={cursor}"),
        VIEWER,
    );
    assert_eq!(hooked.json()["runs"].as_array().unwrap().len(), 2);
    assert_eq!(hooked.json()["next"], Value::Null, "a page not full ends");

    // Deliveries page the same way by their ids.
    let pages = follow_pages(&server, "/api/v1/deliveries?limit=2");
    let listed: Vec<i64> = pages
        .iter()
        .flat_map(|p| p["deliveries"].as_array().unwrap())
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, deliveries.iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(pages[0]["next"], deliveries[1]);
    let offset = server.get("/api/v1/deliveries?offset=1&limit=1", VIEWER);
    assert_eq!(offset.json()["deliveries"][0]["id"], deliveries[1]);

    // A cursor that is not one is refused as documented, naming the parameter.
    for (list, bad) in [
        ("/api/v1/runs", "abc"),
        ("/api/v1/runs", "12"),
        ("/api/v1/runs", "x.run"),
        ("/api/v1/deliveries", "abc"),
        ("/api/v1/deliveries", "0"),
    ] {
        let reply = server.get(&format!("{list}?before={bad}"), VIEWER);
        assert_eq!(reply.status, 400, "{list}?before={bad}: {reply:?}");
        let message = documented_error(&doc, "GET", list, &reply, "bad_request");
        assert!(message.contains("before"), "{message}");
    }
}

#[test]
fn an_approval_body_that_is_not_an_object_is_refused_as_documented() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb), ENV);
    let doc = openapi(&server);
    let run = waiting_run(&server);
    for verb in ["approve", "reject"] {
        let template = format!("/api/v1/runs/{{id}}/stages/{{stage}}/{verb}");
        let path = format!("/api/v1/runs/{run}/stages/ok/{verb}");
        // `["looks like a comment"]` once passed as `{"comment": …}`, field by field.
        for body in [
            "[1]",
            r#"["looks like a comment"]"#,
            "\"go\"",
            "null",
            r#"{"comment": 5}"#,
            r#"{"coment": "typo"}"#,
            "{",
        ] {
            let reply = server.post(&path, APPROVER, body);
            assert_eq!(reply.status, 400, "{verb} {body}: {reply:?}");
            let message = documented_error(&doc, "POST", &template, &reply, "bad_request");
            assert!(message.contains(r#"expected {"comment": "#), "{message}");
        }
        // The role is checked before the body is read; the server then closes the
        // connection, and says so, so that a client does not reuse it.
        let refused = server.post(&path, VIEWER, "[1]");
        assert_eq!(refused.status, 403, "{refused:?}");
        assert_eq!(refused.header("connection"), Some("close"), "{refused:?}");
    }
    let stage = server.get(&format!("/api/v1/runs/{run}"), VIEWER).json()["stages"][0].clone();
    assert_eq!(stage["status"], "waiting", "no refusal decided: {stage}");
    let approved = server.post(
        &format!("/api/v1/runs/{run}/stages/ok/approve"),
        APPROVER,
        r#"{"comment": "go"}"#,
    );
    assert_eq!(approved.status, 202, "{approved:?}");
}

#[test]
fn method_media_type_size_and_route_refusals_are_json_and_documented() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb), ENV);
    let doc = openapi(&server);

    // 405, with the methods the path takes.
    let reply = server.request(
        "PUT",
        "/api/v1/runs",
        &[("authorization", &auth(VIEWER))],
        None,
    );
    assert_eq!(reply.status, 405, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json()["error"]["code"], "method_not_allowed");
    assert_eq!(reply.header("allow"), Some("GET,HEAD"));

    // 404 for a path the API does not have.
    let reply = server.get("/api/v1/nothing-here", VIEWER);
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.json()["error"]["code"], "not_found");

    let start = "/api/v1/workflows/{name}/runs";
    let path = "/api/v1/workflows/gated/runs";
    // 415: a body that is not declared as JSON.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let token = auth(OPERATOR);
        let mut headers = vec![("authorization", token.as_str())];
        headers.extend(content_type.map(|c| ("content-type", c)));
        let reply = server.request("POST", path, &headers, Some(br#"{"version": "1"}"#));
        assert_eq!(reply.status, 415, "{content_type:?}: {reply:?}");
        documented_error(&doc, "POST", start, &reply, "unsupported_media_type");
    }
    // 400: the event must be an object.
    let reply = server.post(path, OPERATOR, "[1]");
    assert_eq!(reply.status, 400, "{reply:?}");
    documented_error(&doc, "POST", start, &reply, "bad_request");

    // 413: the API holds to server.max_body_bytes (4096 here), with or without a length.
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(5000));
    let reply = server.post(path, OPERATOR, &big);
    assert_eq!(reply.status, 413, "{reply:?}");
    documented_error(&doc, "POST", start, &reply, "too_large");
    // The body is left unread, so the connection closes after the answer, which says so.
    assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
    let chunked = post_chunked(&server, path, OPERATOR, big.as_bytes());
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    assert!(chunked.contains(r#""code":"too_large""#), "{chunked}");
    let reply = server.post(
        "/api/v1/runs/x/stages/ok/approve",
        APPROVER,
        &format!(r#"{{"comment": "{}"}}"#, "x".repeat(5000)),
    );
    assert_eq!(reply.status, 413, "{reply:?}");
    documented_error(
        &doc,
        "POST",
        "/api/v1/runs/{id}/stages/{stage}/approve",
        &reply,
        "too_large",
    );

    // No body, or JSON with a charset, is fine.
    for (body, content_type) in [
        ("", "text/plain"),
        ("{}", "application/json; charset=utf-8"),
    ] {
        let token = auth(OPERATOR);
        let reply = server.request(
            "POST",
            path,
            &[("authorization", &token), ("content-type", content_type)],
            Some(body.as_bytes()),
        );
        assert_eq!(reply.status, 201, "{body:?} as {content_type}: {reply:?}");
    }
}

/// `POST path` with a chunked body (no `Content-Length`), over a plain socket; the raw answer.
fn post_chunked(server: &Server, path: &str, token: &str, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let host = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(1000) {
        request.extend(format!("{:x}\r\n", chunk.len()).bytes());
        request.extend(chunk);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(&request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The Schemathesis executable `scripts/test.sh` installs; panics (never skips) without it.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("BATON_SCHEMATHESIS").unwrap_or_else(|| {
        panic!(
            "BATON_SCHEMATHESIS is not set: this test runs Schemathesis against `baton serve`; run scripts/test.sh, which installs it under .venv-schemathesis/ and exports BATON_SCHEMATHESIS=$PWD/.venv-schemathesis/bin/schemathesis"
        )
    });
    let path = PathBuf::from(path);
    let version = std::process::Command::new(&path).arg("--version").output();
    match version {
        Ok(out) if out.status.success() => path,
        other => panic!(
            "BATON_SCHEMATHESIS={} does not run ({other:?}): run scripts/test.sh to install it",
            path.display()
        ),
    }
}

/// The checks: all of Schemathesis' but `object_level_authorization`, which fails when one
/// token reads what another created; every baton token sees every run and delivery by design
/// (roles limit what a token may do, not what it may see). No response-time limit is set: on
/// a shared CI machine it would measure the machine.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
positive_data_acceptance,missing_required_header,unsupported_method,allow_header_conformance,\
use_after_free,ensure_resource_availability,ignored_auth";

/// Test cases per operation and phase, and the seed: the same cases on every run.
const MAX_EXAMPLES: &str = "25";
const SEED: &str = "20190";
/// A pass takes about 10 s; one still going after this has hung.
const PASS_LIMIT: Duration = Duration::from_secs(150);

/// Schemathesis' configuration: ids that exist, for it to use in path parameters some of the
/// time (and its own values the rest), so that calls reach past "no such run".
fn schemathesis_config(runs: &[String], deliveries: &[i64]) -> String {
    let quoted: Vec<String> = runs.iter().map(|r| format!("\"{r}\"")).collect();
    let numbers: Vec<String> = deliveries.iter().map(ToString::to_string).collect();
    format!(
        r#"
[dictionaries.runs]
values = [{runs}]
[dictionaries.stages]
values = ["ok", "after", "build"]
[dictionaries.workflows]
values = ["gated", "broken", "hooked"]
[dictionaries.deliveries]
values = [{deliveries}]

[[operations]]
include-path-regex = '^/api/v1/runs/\{{id\}}'
parameters = {{ "path.id" = {{ dictionary = "runs", probability = 0.7 }}, "path.stage" = {{ dictionary = "stages", probability = 0.7 }} }}

# A run started by hand has `delivery: null`. The stateful phase infers a link from a run to
# its delivery and then sends the text `None` as the id, which is no delivery id: the API's
# documented 400 (a_delivery_id_that_is_not_a_number_gets_the_documented_json_error).
[[operations]]
include-path-regex = '^/api/v1/deliveries/'
parameters = {{ "path.id" = {{ dictionary = "deliveries", probability = 0.7 }} }}
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]

[[operations]]
include-path = "/api/v1/workflows/{{name}}/runs"
parameters = {{ "path.name" = {{ dictionary = "workflows", probability = 0.7 }} }}
"#,
        runs = quoted.join(", "),
        deliveries = numbers.join(", "),
    )
}

/// Runs one bounded Schemathesis pass as `token`; returns its report and whether it passed.
fn schemathesis_pass(
    tool: &PathBuf,
    sb: &Sandbox,
    server: &Server,
    role: &str,
    token: &str,
) -> (bool, String) {
    let report = sb.path().join(format!("schemathesis-{role}.txt"));
    let out = std::fs::File::create(&report).unwrap();
    let mut child = std::process::Command::new(tool)
        .args(["--config-file", "schemathesis.toml", "run"])
        .arg(format!("{}/api/v1/openapi.json", server.url))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        // One worker: the cases run in the same order every time.
        .args(["--workers", "1", "--request-timeout", "10"])
        .args(["--generation-database", "none", "--no-color"])
        .current_dir(sb.path())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn schemathesis");
    let begun = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if begun.elapsed() > PASS_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "Schemathesis as {role} did not finish within {PASS_LIMIT:?}:\n{}",
                std::fs::read_to_string(&report).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        status.success(),
        std::fs::read_to_string(&report).unwrap_or_default(),
    )
}

#[test]
fn schemathesis_finds_no_failure_with_any_role() {
    let tool = schemathesis();
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb), ENV);
    let deliveries = vec![
        delivery(&server, r#"{"type": "release", "version": "1"}"#),
        delivery(&server, r#"{"type": "push"}"#),
    ];
    let mut runs = Vec::new();
    for (role, token) in [
        ("viewer", VIEWER),
        ("operator", OPERATOR),
        ("approver", APPROVER),
    ] {
        // Fresh runs for each pass: the operator's pass cancels runs, the approver's decides.
        runs.extend([
            waiting_run(&server),
            waiting_run(&server),
            failed_run(&server),
        ]);
        sb.write(
            "schemathesis.toml",
            &schemathesis_config(&runs, &deliveries),
        );
        let (passed, report) = schemathesis_pass(&tool, &sb, &server, role, token);
        assert!(
            passed,
            "Schemathesis found failures as {role}:\n{report}\nserver log:\n{}",
            server.log()
        );
        // A pass that tested nothing would pass too.
        let generated = report
            .lines()
            .find_map(|l| l.trim().split_once(" generated, "))
            .and_then(|(n, _)| n.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no test case count in the report:\n{report}"));
        assert!(
            generated >= 300,
            "only {generated} cases as {role}:\n{report}"
        );
        let selected = report
            .lines()
            .find_map(|l| l.trim().strip_prefix("Selected: "))
            .and_then(|n| n.split_once('/'))
            .map(|(n, _)| n.to_owned())
            .unwrap_or_else(|| panic!("no count of selected operations in the report:\n{report}"));
        assert!(
            report.contains(&format!("Tested: {selected}\n")),
            "not every operation was tested as {role}:\n{report}"
        );
    }
}

#[test]
fn validating_a_workflow_needs_any_token_and_answers_as_documented() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb), ENV);
    let doc = openapi(&server);
    let path = "/api/v1/workflows/validate";
    let yaml = "name: gated\nstages:\n  a: { uses: exec, with: { run: 'true' } }\n";
    let send = |headers: &[(&str, &str)], body: &str| {
        server.request("POST", path, headers, Some(body.as_bytes()))
    };
    let none = send(&[("content-type", "application/yaml")], yaml);
    assert_eq!(none.status, 401, "{none:?}");
    documented_error(&doc, "POST", path, &none, "unauthorized");
    let unknown = send(
        &[
            ("authorization", "Bearer not-a-token"),
            ("content-type", "application/yaml"),
        ],
        yaml,
    );
    assert_eq!(unknown.status, 401, "{unknown:?}");
    // Every role may check: it changes nothing.
    for token in [VIEWER, OPERATOR, APPROVER] {
        let bearer = auth(token);
        let reply = send(
            &[
                ("authorization", &bearer),
                ("content-type", "application/yaml"),
            ],
            yaml,
        );
        assert_eq!(reply.status, 200, "{reply:?}");
        // `gated` is loaded: a new workflow may not take its name, an edit of it may.
        assert_eq!(reply.json()["valid"], false, "{reply:?}");
        assert_eq!(reply.json()["problems"][0]["path"], "name");
        let edit = server.request(
            "POST",
            &format!("{path}?editing=gated"),
            &[
                ("authorization", &bearer),
                ("content-type", "application/yaml"),
            ],
            Some(yaml.as_bytes()),
        );
        assert_eq!(
            edit.json(),
            serde_json::json!({"valid": true, "problems": []})
        );
    }
    let bearer = auth(VIEWER);
    for (content_type, body, status, code) in [
        ("text/plain", yaml, 415, "unsupported_media_type"),
        ("application/json", "[1]", 400, "bad_request"),
        ("application/json", "{", 400, "bad_request"),
    ] {
        let reply = send(
            &[("authorization", &bearer), ("content-type", content_type)],
            body,
        );
        assert_eq!(reply.status, status, "{content_type} {body}: {reply:?}");
        documented_error(&doc, "POST", path, &reply, code);
    }
    let big = format!("name: {}\n", "x".repeat(5000));
    let reply = send(
        &[
            ("authorization", &bearer),
            ("content-type", "application/yaml"),
        ],
        &big,
    );
    assert_eq!(reply.status, 413, "{reply:?}");
    documented_error(&doc, "POST", path, &reply, "too_large");
    let reply = server.request("GET", path, &[("authorization", &bearer)], None);
    assert_eq!(reply.status, 405, "{reply:?}");
    assert_eq!(reply.header("allow"), Some("POST"));
}
