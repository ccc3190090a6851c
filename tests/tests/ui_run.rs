//! One run's page in the web UI, over HTTP as a browser without JavaScript sees it: signed in
//! with a form, the page of a finished run (facts, graph, stages, outputs, logs, everything
//! from the run escaped), approving a waiting stage and watching the run go on, the live
//! fragment and event stream, and the actions each role is offered and refused.

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use baton_tests::web::Browser;
use baton_tests::{ALL_ROLES_ENV, ALL_ROLES_GATEWAY, DEPLOY_SOURCE, Sandbox, Server};
// The roles' tokens, by the names these tests use.
use baton_tests::{APPROVER_TOKEN as APPROVER, OPERATOR_TOKEN as OPERATOR, VIEWER_TOKEN as VIEWER};
use serde_json::Value;

/// Three tokens, a generic source, a workflow whose first stage prints outputs holding
/// markup and whose second fails with markup on stderr, and one that waits for an approval.
fn gateway(sb: &Sandbox) -> String {
    sb.write("baton.toml", &[ALL_ROLES_GATEWAY, DEPLOY_SOURCE].concat());
    sb.write(
        "workflows/shown.yaml",
        r#"
name: shown
on: [{ source: manual }, { source: deploy, event: ship }]
stages:
  build:
    uses: exec
    with:
      run: |
        echo '[COUT] note = <script>alert(1)</script>'
        for i in $(seq 1 250); do echo "log line $i"; done
  broken:
    needs: [build]
    uses: exec
    with: { run: "echo '<script>bad()</script>' >&2; exit 3" }
"#,
    );
    sb.write(
        "workflows/gated.yaml",
        r#"
name: gated
on: [{ source: manual }]
stages:
  ok:
    uses: approval
    timeout: 10m
    with: { message: 'ship <b>it</b>?' }
  after:
    needs: [ok]
    uses: exec
    with: { run: 'echo shipped' }
"#,
    );
    sb.path().join("baton.toml").display().to_string()
}

/// Starts `workflow` by hand through the API and waits until `settled` holds for the run.
fn start(server: &Server, workflow: &str, settled: impl Fn(&Value) -> bool) -> String {
    let run = server.start_run(workflow, OPERATOR, "{}");
    wait(server, &run, "the run to settle", settled);
    run
}

fn wait(server: &Server, run: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    server.wait_for(&format!("/api/v1/runs/{run}"), VIEWER, what, check)
}

fn stage<'v>(run: &'v Value, id: &str) -> &'v Value {
    run["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no stage {id} in {run:#}"))
}

/// The markup of stage `id`'s details: up to the next stage's.
fn details<'b>(page: &'b str, id: &str) -> &'b str {
    let start = page
        .find(&format!(r#"id="stage-{id}""#))
        .unwrap_or_else(|| panic!("no details for {id}:\n{page}"));
    let rest = &page[start..];
    let end = rest
        .find(r#"<details class="stage-detail""#)
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn a_finished_run_shows_its_facts_graph_stages_and_logs_escaped() {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let server = sb.serve(&config, ALL_ROLES_ENV);
    let sent = server.request(
        "POST",
        "/hooks/deploy",
        &[("authorization", "Bearer deploy-token")],
        Some(br#"{"type": "ship", "title": "<script>alert(3)</script>"}"#),
    );
    assert_eq!(sent.status, 202, "{sent:?}");
    let delivery = sent.json()["delivery"].as_i64().unwrap();
    let listed = server.wait_for(
        &format!("/api/v1/deliveries/{delivery}"),
        VIEWER,
        "the delivery to start a run",
        |d| d["runs"].as_array().is_some_and(|r| !r.is_empty()),
    );
    let run = listed["runs"][0].as_str().unwrap().to_owned();
    let ended = server.run_ended(&run, VIEWER);
    assert_eq!(ended["status"], "failed", "{ended:#}");

    let vera = Browser::sign_in(&server, VIEWER);
    let page = vera.get(&format!("/runs/{run}"));
    assert_eq!(page.status, 200, "{page:?}");
    let html = &page.body;
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(
        page.header("content-security-policy")
            .is_some_and(|c| c.contains("style-src 'self'"))
    );
    // Facts: the workflow, the status in words, what started it.
    assert!(
        html.contains(r#"<a href="/workflows/shown">shown</a>"#),
        "{html}"
    );
    assert!(html.contains(r#"<span class="badge status-failed">"#));
    assert!(html.contains("deploy / ship"), "{html}");
    assert!(html.contains(r#"href="/deliveries?source=deploy""#));
    // The graph: each stage marked with its status and linked to its details.
    assert!(
        html.contains(r##"<a href="#stage-build"><title>build: succeeded"##),
        "{html}"
    );
    assert!(html.contains(r#"data-stage="broken" data-status="failed""#));
    assert!(
        !html.contains("<style"),
        "the page's CSP forbids inline styles"
    );
    // Every value from the run is escaped: outputs, stderr in the failure.
    assert!(!html.contains("<script>"), "{html}");
    let build = details(html, "build");
    assert!(
        build.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{build}"
    );
    assert!(
        build.contains("&quot;exit_code&quot;: 0"),
        "outputs as JSON: {build}"
    );
    let broken = details(html, "broken");
    assert!(
        broken.contains(r#"id="stage-broken" open"#),
        "a failure starts open"
    );
    assert!(broken.contains("<strong>Failed</strong>"), "{broken}");
    assert!(
        broken.contains("&lt;script&gt;bad()&lt;/script&gt;"),
        "{broken}"
    );
    // A viewer is offered nothing to do.
    assert!(!html.contains(r#"action="/runs/"#), "{html}");

    // The log: a link that works without the script, and the fragment the script loads.
    let link = format!("/runs/{run}/stages/build/log?attempt=1");
    assert!(build.contains(&format!(r#"href="{link}""#)), "{build}");
    let log = vera.get(&link);
    assert_eq!(log.status, 200, "{log:?}");
    assert!(log.body.starts_with("<!DOCTYPE html>"));
    assert!(log.body.contains("log line 250"), "{}", log.body);
    assert!(!log.body.contains("log line 49\n"), "only the tail");
    assert!(log.body.contains("not shown"), "says it is cut");
    let fragment = vera.get(&format!("{link}&fragment=log"));
    assert_eq!(fragment.status, 200);
    assert!(!fragment.body.contains("<html"), "{}", fragment.body);
    assert!(fragment.body.contains("log line 250"));
    let stderr = vera.get(&format!(
        "/runs/{run}/stages/broken/log?attempt=1&fragment=log"
    ));
    assert!(
        stderr.body.contains("&lt;script&gt;bad()&lt;/script&gt;"),
        "{}",
        stderr.body
    );
    // No log of a stage or an attempt the run does not have.
    let unknown = vera.get(&format!("/runs/{run}/stages/nope/log"));
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let later = vera.get(&format!("/runs/{run}/stages/build/log?attempt=2"));
    assert_eq!(later.status, 404, "{later:?}");
    assert!(later.body.contains("has no attempt 2"), "{}", later.body);

    // The live part alone: what changes, without the page around it.
    let live = vera.get(&format!("/runs/{run}?fragment=live"));
    assert_eq!(live.status, 200);
    assert!(!live.body.contains("<html") && !live.body.contains("<h1"));
    assert!(!live.body.contains("data-live-events"), "{}", live.body);
    assert!(
        live.body.starts_with(r#"<dl class="facts">"#),
        "{}",
        live.body
    );
    assert!(
        live.body
            .contains(r#"data-stage="broken" data-status="failed""#)
    );
    assert!(live.body.contains(r#"id="stage-build""#));
    assert!(html.contains(&format!(
        r#"data-live-events="/ui/events?run={run}" data-live-src="/runs/{run}?fragment=live""#
    )));

    let missing = vera.get("/runs/no-such-run");
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(missing.body.contains("no run `no-such-run`"));
}

#[test]
fn an_approver_approves_and_the_page_follows_the_run() {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let server = sb.serve(&config, ALL_ROLES_ENV);
    let run = start(&server, "gated", |r| r["stages"][0]["status"] == "waiting");
    let anna = Browser::sign_in(&server, APPROVER);
    let page = anna.get(&format!("/runs/{run}"));
    assert_eq!(page.status, 200, "{page:?}");
    let ok = details(&page.body, "ok");
    assert!(
        ok.contains(&format!(r#"action="/runs/{run}/stages/ok/approve""#)),
        "{ok}"
    );
    assert!(ok.contains(&format!(r#"action="/runs/{run}/stages/ok/reject""#)));
    assert!(ok.contains("data-confirm="), "asks first");
    assert!(ok.contains("ship &lt;b&gt;it&lt;/b&gt;?"), "{ok}");
    assert!(!details(&page.body, "after").contains("<form"));

    // An event stream for this run, open before anything moves.
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "GET /ui/events?run={run} HTTP/1.1\r\nHost: {address}\r\nCookie: {}\r\nAccept: text/event-stream\r\n\r\n",
        anna.cookie
    )
    .unwrap();
    let mut events = BufReader::new(stream);
    let mut status = String::new();
    events.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // The headers end before any event is sent.
    loop {
        let mut line = String::new();
        events.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }

    let csrf = anna.csrf();
    let approved = anna.post(
        &format!("/runs/{run}/stages/ok/approve"),
        &[("csrf", &csrf), ("comment", "looks <good>")],
        &[],
    );
    assert_eq!(approved.status, 303, "{approved:?}");
    assert_eq!(
        approved.header("location"),
        Some(format!("/runs/{run}?done=approved&stage=ok").as_str())
    );

    // The stream says the run changed.
    let begun = Instant::now();
    let mut said = Vec::new();
    while !said
        .windows(2)
        .any(|w: &[String]| w[0] == "event: change" && w[1] == format!("data: {run}"))
    {
        assert!(begun.elapsed() < Duration::from_secs(15), "{said:?}");
        let mut line = String::new();
        events.read_line(&mut line).expect("an event within 15 s");
        let line = line.trim_end().to_owned();
        // Chunked encoding: keep only the event's own lines.
        if line.starts_with("event:") || line.starts_with("data:") {
            said.push(line);
        }
    }

    let ended = server.run_ended(&run, VIEWER);
    assert_eq!(ended["status"], "succeeded", "{ended:#}");
    assert_eq!(stage(&ended, "after")["status"], "succeeded");
    assert!(
        stage(&ended, "ok")["outputs"]["comment"]
            .as_str()
            .is_some_and(|c| c == "looks <good>"),
        "{ended:#}"
    );

    let after = anna.get(&format!("/runs/{run}?done=approved&stage=ok"));
    assert!(after.body.contains("Approved stage ok."), "{}", after.body);
    assert!(
        after
            .body
            .contains(r#"data-stage="after" data-status="succeeded""#)
    );
    assert!(!after.body.contains("/approve\""), "nothing waits any more");

    // Approving again is a conflict, shown as such.
    let again = anna.post(
        &format!("/runs/{run}/stages/ok/approve"),
        &[("csrf", &csrf)],
        &[],
    );
    assert_eq!(again.status, 409, "{again:?}");
    assert!(again.body.contains("not waiting"), "{}", again.body);
}

#[test]
fn actions_are_refused_without_the_role_the_form_token_or_this_site() {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let server = sb.serve(&config, ALL_ROLES_ENV);
    let run = start(&server, "gated", |r| r["stages"][0]["status"] == "waiting");
    let approve = format!("/runs/{run}/stages/ok/approve");

    // A viewer sees no action, and a forged one with the viewer's own form token is refused.
    let vera = Browser::sign_in(&server, VIEWER);
    let page = vera.get(&format!("/runs/{run}"));
    assert!(!page.body.contains(r#"action="/runs/"#), "{}", page.body);
    let own = vera.csrf();
    let forged = vera.post(&approve, &[("csrf", &own)], &[]);
    assert_eq!(forged.status, 403, "{forged:?}");
    assert!(forged.body.contains("viewer"), "{}", forged.body);
    let cancel = vera.post(&format!("/runs/{run}/cancel"), &[("csrf", &own)], &[]);
    assert_eq!(cancel.status, 403, "{cancel:?}");

    // An approver without the form token, with another session's, or from another site.
    let anna = Browser::sign_in(&server, APPROVER);
    let missing = anna.post(&approve, &[("comment", "x")], &[]);
    assert_eq!(missing.status, 403, "{missing:?}");
    let foreign = anna.post(&approve, &[("csrf", &own)], &[]);
    assert_eq!(foreign.status, 403, "{foreign:?}");
    let csrf = anna.csrf();
    let cross = anna.post(
        &approve,
        &[("csrf", &csrf)],
        &[("sec-fetch-site", "cross-site")],
    );
    assert_eq!(cross.status, 403, "{cross:?}");
    let other_origin = anna.post(
        &approve,
        &[("csrf", &csrf)],
        &[("sec-fetch-site", ""), ("origin", "https://evil.example")],
    );
    assert_eq!(other_origin.status, 403, "{other_origin:?}");
    // Only approve and reject are decisions.
    let odd = anna.post(
        &format!("/runs/{run}/stages/ok/explode"),
        &[("csrf", &csrf)],
        &[],
    );
    assert_eq!(odd.status, 400, "{odd:?}");
    // Nor without a session at all: sent to sign in.
    let anonymous = Browser::new(&server).post(&approve, &[("csrf", &csrf)], &[]);
    assert_eq!(anonymous.status, 303, "{anonymous:?}");
    assert!(
        anonymous
            .header("location")
            .is_some_and(|l| l.starts_with("/login"))
    );

    // Nothing was decided: the stage still waits.
    std::thread::sleep(Duration::from_millis(300));
    let still = server.get(&format!("/api/v1/runs/{run}"), VIEWER).json();
    assert_eq!(stage(&still, "ok")["status"], "waiting", "{still:#}");
    assert_eq!(still["status"], "running");
}

#[test]
fn an_operator_cancels_a_run_and_retries_a_stage() {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let server = sb.serve(&config, ALL_ROLES_ENV);
    let otto = Browser::sign_in(&server, OPERATOR);
    let csrf = otto.csrf();

    let waiting = start(&server, "gated", |r| r["stages"][0]["status"] == "waiting");
    let page = otto.get(&format!("/runs/{waiting}"));
    assert!(
        page.body
            .contains(&format!(r#"action="/runs/{waiting}/cancel""#))
    );
    assert!(
        !page.body.contains("/approve\""),
        "an operator does not decide"
    );
    let cancelled = otto.post(&format!("/runs/{waiting}/cancel"), &[("csrf", &csrf)], &[]);
    assert_eq!(cancelled.status, 303, "{cancelled:?}");
    let ended = server.run_ended(&waiting, VIEWER);
    assert_eq!(ended["status"], "cancelled", "{ended:#}");
    let page = otto.get(&format!("/runs/{waiting}?done=cancelled"));
    assert!(
        page.body.contains("Cancellation requested"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("/cancel\""), "over: nothing to cancel");
    let late = otto.post(&format!("/runs/{waiting}/cancel"), &[("csrf", &csrf)], &[]);
    assert_eq!(late.status, 409, "{late:?}");

    let failed = start(&server, "shown", |r| r["status"] == "failed");
    let page = otto.get(&format!("/runs/{failed}"));
    let retry = format!("/runs/{failed}/stages/broken/retry");
    assert!(details(&page.body, "broken").contains(&format!(r#"action="{retry}""#)));
    assert!(
        !details(&page.body, "build").contains("/retry"),
        "it succeeded"
    );
    let retried = otto.post(&retry, &[("csrf", &csrf)], &[]);
    assert_eq!(retried.status, 303, "{retried:?}");
    let again = wait(&server, &failed, "the second attempt to fail", |r| {
        r["status"] == "failed" && stage(r, "broken")["attempt"] == 2
    });
    assert_eq!(
        stage(&again, "broken")["attempts"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let page = otto.get(&format!("/runs/{failed}"));
    let broken = details(&page.body, "broken");
    for attempt in [1, 2] {
        assert!(
            broken.contains(&format!("/stages/broken/log?attempt={attempt}\"")),
            "{broken}"
        );
    }
    // A stage that succeeded cannot be retried: a conflict, shown as such.
    let conflict = otto.post(
        &format!("/runs/{failed}/stages/build/retry"),
        &[("csrf", &csrf)],
        &[],
    );
    assert_eq!(conflict.status, 409, "{conflict:?}");
    assert!(conflict.body.contains("only a failed or cancelled stage"));
}
