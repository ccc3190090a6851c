//! The web UI's workflow pages over HTTP, as a browser without JavaScript uses them: the list,
//! one workflow's graph, triggers, stages and recent runs, starting a run by hand from the
//! form, and downloading the workflow's file.

use baton_tests::web::{Browser, between};
use baton_tests::{ALL_ROLES_ENV, ALL_ROLES_GATEWAY, DEPLOY_SOURCE, Sandbox, Server};
// The roles' tokens, by the names these tests use.
use baton_tests::{OPERATOR_TOKEN as OPERATOR, VIEWER_TOKEN as VIEWER};
use serde_json::Value;

/// `ship`'s file, comments and all: the download must return it unchanged.
const SHIP: &str = r#"# Ships a build. Comments stay in the download.
name: ship
on:
  - source: manual
  - source: deploy
    event: release
    if: '.channel == "<stable>"'   # a condition with markup in it
stages:
  build:
    uses: exec
    timeout: 5m
    with:
      run: 'echo "[COUT] ref = $REF"'
      env: { REF: '${{ .event.ref }}' }
  check:
    needs: [build]
    uses: exec
    retry: { attempts: 3, backoff: 2s }
    with: { run: 'true' }
  approve:
    needs: [check]
    uses: approval
    if: '.event.gate == true'
    with: { message: 'ship it?' }
"#;

/// A generic source and two workflows: `ship` (by hand, or on a release) and `hooked` (only
/// on a push, never by hand).
fn gateway(sb: &Sandbox) -> String {
    sb.write("baton.toml", &[ALL_ROLES_GATEWAY, DEPLOY_SOURCE].concat());
    sb.write("workflows/ship.yaml", SHIP);
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

/// `baton serve` on [`gateway`], and the folder it runs in.
fn serve() -> (Sandbox, Server) {
    let sb = Sandbox::new();
    let config = gateway(&sb);
    let server = sb.serve(&config, ALL_ROLES_ENV);
    (sb, server)
}

/// The runs of `workflow`, through the REST API.
fn runs_of(server: &Server, workflow: &str) -> Vec<Value> {
    let list = server.get(&format!("/api/v1/runs?workflow={workflow}"), VIEWER);
    assert_eq!(list.status, 200, "{list:?}");
    list.json()["runs"].as_array().cloned().unwrap_or_default()
}

#[test]
fn the_list_shows_every_workflow_with_its_triggers_and_last_run() {
    // The folder lives as long as the server that runs in it.
    let (_folder, server) = serve();
    let vera = Browser::sign_in(&server, VIEWER);

    let list = vera.get("/workflows");
    assert_eq!(list.status, 200, "{list:?}");
    let csp = list.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("style-src 'self'"), "{csp}");
    for shown in [
        r#"<a href="/workflows/ship">ship</a>"#,
        r#"<a href="/workflows/hooked">hooked</a>"#,
        "<strong>manual</strong>",
        "<strong>deploy</strong> · <code>release</code> · if <code>.channel == &quot;&lt;stable&gt;&quot;</code>",
        "<strong>deploy</strong> · <code>push</code>",
        "never run",
    ] {
        assert!(
            list.body.contains(shown),
            "{shown} missing from {}",
            list.body
        );
    }
    assert!(!list.body.contains("<stable>"), "unescaped condition");
    // ship can be started by hand, hooked cannot: as a word, not only a colour.
    let ship_row = between(&list.body, "/workflows/ship\"", "</tr>").unwrap();
    let hooked_row = between(&list.body, "/workflows/hooked\"", "</tr>").unwrap();
    assert!(
        ship_row.contains(" yes") && !ship_row.contains(" no<"),
        "{ship_row}"
    );
    assert!(hooked_row.contains(" no<"), "{hooked_row}");

    let run = server.start_run("ship", OPERATOR, r#"{"ref": "main"}"#);
    assert_eq!(server.run_ended(&run, VIEWER)["status"], "succeeded");
    let rows = vera.get("/workflows?fragment=rows");
    assert_eq!(rows.status, 200);
    assert!(!rows.body.contains("<html"), "a fragment, not a page");
    let ship_row = between(&rows.body, "/workflows/ship\"", "</tr>").unwrap();
    assert!(
        ship_row.contains(&format!("/runs/{run}")) && ship_row.contains("status-succeeded"),
        "{ship_row}"
    );
    assert!(
        between(&rows.body, "/workflows/hooked\"", "</tr>")
            .unwrap()
            .contains("never run")
    );
}

#[test]
fn a_workflow_page_draws_its_graph_and_lists_its_recent_runs() {
    // The folder lives as long as the server that runs in it.
    let (_folder, server) = serve();
    let mut runs = Vec::new();
    for event in [r#"{"ref": "one"}"#, r#"{"ref": "two"}"#] {
        let run = server.start_run("ship", OPERATOR, event);
        assert_eq!(server.run_ended(&run, VIEWER)["status"], "succeeded");
        runs.push(run);
    }
    let (first, second) = (&runs[0], &runs[1]);
    let vera = Browser::sign_in(&server, VIEWER);

    let page = vera.get("/workflows/ship");
    assert_eq!(page.status, 200, "{page:?}");
    let body = &page.body;
    // The graph, inline, with nothing the page's CSP would refuse.
    let figure = between(
        body,
        r#"<figure class="graph workflow-graph">"#,
        "</figure>",
    )
    .expect("the graph's figure");
    let svg = between(figure, "<svg ", "</svg>").expect("an inline SVG graph");
    for stage in [">build<", ">check<", ">approve<"] {
        assert!(svg.contains(stage), "{stage} missing from the graph");
    }
    assert!(
        svg.contains(r#"class="stage approval conditional""#),
        "{svg}"
    );
    assert!(
        !body.contains("<style") && !body.contains("style="),
        "inline styles"
    );
    assert!(!body.contains("<?xml"));
    // Triggers and stages as tables.
    assert!(body.contains("<code>.channel == &quot;&lt;stable&gt;&quot;</code>"));
    assert!(body.contains(">5m</td>"), "build's own timeout");
    assert!(
        body.contains("(default)"),
        "check's timeout is the config's"
    );
    assert!(body.contains("3 attempts, first wait 2s"), "check's retry");
    assert!(
        body.contains("<code>.event.gate == true</code>"),
        "approve's condition"
    );
    assert!(body.contains("ship.yaml") && body.contains(r#"href="/workflows/ship.yaml""#));
    // Recent runs, newest first, linked, with a status in words.
    let runs = between(
        body,
        "data-live-src=\"/workflows/ship?fragment=runs\"",
        "</tbody>",
    )
    .expect("live recent runs");
    let (at_first, at_second) = (
        runs.find(&format!("/runs/{first}")).expect("first run"),
        runs.find(&format!("/runs/{second}")).expect("second run"),
    );
    assert!(at_second < at_first, "newest first");
    assert_eq!(runs.matches("✓</span> succeeded").count(), 2, "{runs}");
    // The same rows alone, for a live refresh.
    let fragment = vera.get("/workflows/ship?fragment=runs");
    assert_eq!(fragment.status, 200);
    assert!(!fragment.body.contains("<html") && fragment.body.contains(&format!("/runs/{second}")));

    let unknown = vera.get("/workflows/nope");
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("hooked, ship"), "{}", unknown.body);
}

#[test]
fn an_operator_starts_a_run_from_the_form_and_lands_on_it() {
    // The folder lives as long as the server that runs in it.
    let (_folder, server) = serve();
    let otto = Browser::sign_in(&server, OPERATOR);

    let page = otto.get("/workflows/ship");
    let form = between(
        &page.body,
        r#"<form method="post" action="/workflows/ship/runs""#,
        "</form>",
    )
    .unwrap_or_else(|| panic!("no start form in {}", page.body));
    assert!(form.contains("data-confirm="), "{form}");
    assert!(
        form.contains(r#"<textarea class="event" name="event""#) && form.contains(">{}</textarea>")
    );
    let csrf = otto.csrf();
    assert!(
        form.contains(&format!(r#"name="csrf" value="{csrf}""#)),
        "{form}"
    );

    let started = otto.post(
        "/workflows/ship/runs",
        &[("csrf", &csrf), ("event", r#"{"ref": "from-the-form"}"#)],
        &[],
    );
    assert_eq!(started.status, 303, "{started:?}");
    let location = started.header("location").expect("where the run is");
    let run = location.strip_prefix("/runs/").expect("a run page");
    let done = server.run_ended(run, VIEWER);
    assert_eq!(done["workflow"], "ship");
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["trigger"]["source"], "manual");
    assert_eq!(
        done["stages"][0]["outputs"]["ref"], "from-the-form",
        "the typed event reached the run"
    );
    assert!(server.log().contains("run started by hand") && server.log().contains("by=otto"));

    // A workflow without a manual trigger has no form, and the server refuses one anyway.
    let hooked = otto.get("/workflows/hooked");
    assert!(!hooked.body.contains("<textarea"));
    assert!(
        hooked.body.contains("{ source: manual }"),
        "says how to allow it"
    );
    let refused = otto.post(
        "/workflows/hooked/runs",
        &[("csrf", &csrf), ("event", "{}")],
        &[],
    );
    assert_eq!(refused.status, 409, "{refused:?}");
    assert!(runs_of(&server, "hooked").is_empty());
}

#[test]
fn a_viewer_sees_no_form_and_forged_starts_are_refused() {
    // The folder lives as long as the server that runs in it.
    let (_folder, server) = serve();
    let vera = Browser::sign_in(&server, VIEWER);
    let otto = Browser::sign_in(&server, OPERATOR);

    let page = vera.get("/workflows/ship");
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("/workflows/ship/runs") && !page.body.contains("<textarea"));
    assert!(page.body.contains("needs the operator role"));

    let vera_csrf = vera.csrf();
    let forged = vera.post(
        "/workflows/ship/runs",
        &[("csrf", &vera_csrf), ("event", "{}")],
        &[],
    );
    assert_eq!(forged.status, 403, "{forged:?}");
    assert!(forged.body.contains("viewer"), "{}", forged.body);

    let otto_csrf = otto.csrf();
    let no_token = otto.post("/workflows/ship/runs", &[("event", "{}")], &[]);
    assert_eq!(no_token.status, 403, "{no_token:?}");
    let foreign_token = otto.post(
        "/workflows/ship/runs",
        &[("csrf", &vera_csrf), ("event", "{}")],
        &[],
    );
    assert_eq!(foreign_token.status, 403, "{foreign_token:?}");
    let cross_site = otto.post(
        "/workflows/ship/runs",
        &[("csrf", &otto_csrf), ("event", "{}")],
        &[("sec-fetch-site", "cross-site")],
    );
    assert_eq!(cross_site.status, 403, "{cross_site:?}");
    let other_origin = otto.post(
        "/workflows/ship/runs",
        &[("csrf", &otto_csrf), ("event", "{}")],
        &[("sec-fetch-site", ""), ("origin", "https://evil.example")],
    );
    assert_eq!(other_origin.status, 403, "{other_origin:?}");

    // Without a session, the browser is sent to sign in.
    let anonymous = Browser::new(&server);
    let signed_out = anonymous.post(
        "/workflows/ship/runs",
        &[("csrf", &otto_csrf), ("event", "{}")],
        &[],
    );
    assert_eq!(signed_out.status, 303);
    assert!(signed_out.header("location").unwrap().starts_with("/login"));

    assert!(runs_of(&server, "ship").is_empty(), "nothing was started");
}

#[test]
fn a_bad_event_is_refused_with_what_was_typed_kept() {
    // The folder lives as long as the server that runs in it.
    let (_folder, server) = serve();
    let otto = Browser::sign_in(&server, OPERATOR);
    let csrf = otto.csrf();

    let typed = r#"{"ref": <script>oops</script>"#;
    let refused = otto.post(
        "/workflows/ship/runs",
        &[("csrf", &csrf), ("event", typed)],
        &[],
    );
    assert_eq!(refused.status, 400, "{refused:?}");
    let form = between(&refused.body, r#"action="/workflows/ship/runs""#, "</form>")
        .expect("the form again");
    assert!(form.contains("not valid JSON"), "{form}");
    assert!(form.contains(r#"role="alert""#) && form.contains(r#"aria-invalid="true""#));
    assert!(
        form.contains(">{&quot;ref&quot;: &lt;script&gt;oops&lt;/script&gt;</textarea>"),
        "the typed text, escaped: {form}"
    );
    assert!(!refused.body.contains("<script>oops"));

    let not_an_object = otto.post(
        "/workflows/ship/runs",
        &[("csrf", &csrf), ("event", "[1, 2]")],
        &[],
    );
    assert_eq!(not_an_object.status, 400);
    assert!(
        not_an_object.body.contains("must be a JSON object")
            && not_an_object.body.contains(">[1, 2]</textarea>")
    );

    // Larger than the API takes (`max_body_bytes = 4096`).
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(5000));
    let too_big = otto.post(
        "/workflows/ship/runs",
        &[("csrf", &csrf), ("event", &big)],
        &[],
    );
    assert_eq!(too_big.status, 413, "{}", too_big.body);
    assert!(too_big.body.contains("at most 4096"));

    assert!(runs_of(&server, "ship").is_empty(), "nothing was started");
}

#[test]
fn the_download_is_the_file_byte_for_byte() {
    let (sb, server) = serve();
    let vera = Browser::sign_in(&server, VIEWER);

    let file = vera.get("/workflows/ship.yaml");
    assert_eq!(file.status, 200, "{file:?}");
    assert_eq!(file.body, SHIP, "comments, order and spacing kept");
    assert_eq!(
        file.header("content-disposition"),
        Some(r#"attachment; filename="ship.yaml""#)
    );
    assert!(
        file.header("content-type")
            .unwrap()
            .starts_with("application/yaml")
    );

    // Edited on disk after baton loaded it: the download is the file as it is now.
    let edited = SHIP.replace("# Ships a build.", "# Ships a build, edited.");
    sb.write("workflows/ship.yaml", &edited);
    assert_eq!(vera.get("/workflows/ship.yaml").body, edited);

    // Removed: the workflow as baton loaded it, written as YAML, saying why.
    std::fs::remove_file(sb.path().join("workflows/hooked.yaml")).unwrap();
    let loaded = vera.get("/workflows/hooked.yaml");
    assert_eq!(loaded.status, 200, "{loaded:?}");
    assert!(
        loaded.body.starts_with("# ") && loaded.body.contains("cannot be read now"),
        "{}",
        loaded.body
    );
    let spec: Value = serde_yaml_ng::from_str(&loaded.body).expect("YAML");
    assert_eq!(spec["name"], "hooked");
    assert_eq!(spec["on"][0]["event"], "push");
    assert_eq!(spec["stages"]["build"]["with"]["run"], "true");

    assert_eq!(vera.get("/workflows/nope.yaml").status, 404);
}
