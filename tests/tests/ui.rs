//! The web UI in a real browser: headless Chromium, driven through chromedriver, signs in,
//! reads pages, clicks buttons and answers dialogs the way a person would, with baton's own
//! script and Content-Security-Policy in force. Each test is one person's story.
//!
//! `BATON_UI_SCREENSHOTS=1 cargo test -p baton-cli --test ui` also writes the pictures of
//! docs/ui.md into docs/ui/.

use std::time::Duration;

use baton_tests::browser::{Chromium, Key, OtherSite};
use baton_tests::{
    ALL_ROLES_ENV, ALL_ROLES_GATEWAY, APPROVER_TOKEN as APPROVER, OPERATOR_TOKEN as OPERATOR,
    Sandbox, Server, VIEWER_TOKEN as VIEWER,
};
use serde_json::{Value, json};

/// Starts `baton serve` on [`gateway`], with the roles' tokens and the GitHub source's secret.
fn serve(sb: &Sandbox) -> Server {
    let env = [ALL_ROLES_ENV, &[("GH_SECRET", "hook-secret")]].concat();
    sb.serve(&gateway(sb), &env)
}

/// A gateway with a GitHub source and four workflows: `deliver` (three stages; its first
/// waits for the file the event's `gate` names, so a test decides when it ends), `release`
/// (waits for a person's approval), `nightly` (fails) and `on-push` (started by GitHub's
/// pushes; its output is the pushed ref).
fn gateway(sb: &Sandbox) -> String {
    sb.write(
        "baton.toml",
        &[
            ALL_ROLES_GATEWAY,
            r#"
[sources.github]
kind = "github"
secret = { env = "GH_SECRET" }
"#,
        ]
        .concat(),
    );
    sb.write(
        "workflows/deliver.yaml",
        r#"
name: deliver
on: [{ source: manual }]
stages:
  build:
    uses: exec
    timeout: 1m
    with:
      # Waits (30 s at most) for the gate file, so the run is caught mid-way.
      run: 'for i in $(seq 1 600); do [ -e "$GATE" ] && exit 0; sleep 0.05; done; exit 1'
      env: { GATE: '${{ .event.gate }}' }
  test:
    needs: [build]
    uses: exec
    with: { run: 'echo tested' }
  package:
    needs: [test]
    uses: exec
    with: { run: 'echo packaged' }
"#,
    );
    sb.write(
        "workflows/release.yaml",
        r#"
name: release
on: [{ source: manual }, { source: github, event: push }]
stages:
  build:
    uses: exec
    with: { run: 'echo built' }
  approve:
    needs: [build]
    uses: approval
    timeout: 10m
    with: { message: 'ship ${{ .event.version }}?' }
  deploy:
    needs: [approve]
    uses: exec
    with: { run: 'echo deployed' }
"#,
    );
    sb.write(
        "workflows/nightly.yaml",
        r#"
name: nightly
on: [{ source: manual }]
stages:
  check:
    uses: exec
    with: { run: 'echo "disk almost full" >&2; exit 3' }
"#,
    );
    sb.write(
        "workflows/on-push.yaml",
        r#"
name: on-push
on: [{ source: github, event: push }]
stages:
  note:
    uses: exec
    with:
      run: 'echo "[COUT] ref = $REF"'
      env: { REF: '${{ .event.ref }}' }
"#,
    );
    sb.path().join("baton.toml").display().to_string()
}

/// The status of run `id` through the REST API.
fn run_status(server: &Server, id: &str) -> String {
    server.get(&format!("/api/v1/runs/{id}"), VIEWER).json()["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The number of runs of `workflow` through the REST API.
fn runs_of(server: &Server, workflow: &str) -> usize {
    server
        .get(&format!("/api/v1/runs?workflow={workflow}"), VIEWER)
        .json()["runs"]
        .as_array()
        .map_or(0, Vec::len)
}

/// Sends a signed GitHub push with extra headers, waits until baton has processed it, and
/// returns its id and what the REST API says of it.
fn push(server: &Server, id: &str, body: &str, extra: &[(&str, &str)]) -> (i64, Value) {
    let signature = baton_tests::sign_sha256("hook-secret", body.as_bytes());
    let mut headers = vec![
        ("x-github-event", "push"),
        ("x-github-delivery", id),
        ("x-hub-signature-256", signature.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    let sent = server.request("POST", "/hooks/github", &headers, Some(body.as_bytes()));
    assert_eq!(sent.status, 202, "{sent:?}");
    let delivery = sent.json()["delivery"].as_i64().expect("a delivery id");
    let stored = server.wait_for(
        &format!("/api/v1/deliveries/{delivery}"),
        VIEWER,
        "the delivery to be processed",
        |d| d["status"] == "processed",
    );
    (delivery, stored)
}

/// Sets a mark on the page's `window`: it survives live updates and is gone after any
/// navigation or reload.
fn mark_page(browser: &Chromium) {
    browser.script("window.batonStoryMark = 'still here';", vec![]);
}

fn page_was_not_reloaded(browser: &Chromium) -> bool {
    browser.script("return window.batonStoryMark === 'still here';", vec![]) == json!(true)
}

/// The HTTP status the browser got for the page it shows (Navigation Timing).
fn page_status(browser: &Chromium) -> u64 {
    browser
        .script(
            "return performance.getEntriesByType('navigation')[0].responseStatus;",
            vec![],
        )
        .as_u64()
        .expect("a navigation entry with a status")
}

/// `text` with each run of white space made one space: a badge's icon and word are flex
/// items, which WebDriver's text puts on lines of their own.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `rgb(r, g, b)` a computed colour names, as numbers.
fn rgb(colour: &Value) -> [u32; 3] {
    let text = colour.as_str().unwrap_or_default();
    let numbers: Vec<u32> = text
        .trim_start_matches("rgba(")
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    assert!(numbers.len() >= 3, "not a colour: {colour}");
    [numbers[0], numbers[1], numbers[2]]
}

fn background(browser: &Chromium) -> [u32; 3] {
    rgb(&browser.script(
        "return getComputedStyle(document.body).backgroundColor;",
        vec![],
    ))
}

#[test]
fn an_operator_signs_in_and_watches_the_runs_list_follow_the_runs() {
    let sb = Sandbox::new();
    let server = serve(&sb);
    let failed = server.start_run("nightly", OPERATOR, "{}");
    let done = server.start_run("deliver", OPERATOR, r#"{"gate": "baton.toml"}"#);
    let waiting = server.start_run("release", OPERATOR, r#"{"version": "1.4.2"}"#);
    server.run_ended(&failed, VIEWER);
    server.run_ended(&done, VIEWER);
    server.wait_for(
        &format!("/api/v1/runs/{waiting}"),
        VIEWER,
        "the release to wait for its approval",
        |r| r["status"] == "running",
    );
    let browser = Chromium::open(&server.url);

    // Any page sends a stranger to the sign-in page, and back after it.
    browser.goto("/runs?status=failed");
    assert_eq!(browser.path(), "/login?next=%2Fruns%3Fstatus%3Dfailed");
    browser.screenshot("login");
    browser.fill("input[name=token]", "not-a-token");
    browser.click("form[action='/login'] button[type=submit]");
    browser.wait_for("[role=alert]");
    assert_eq!(browser.text("[role=alert]"), "Unknown token.");
    assert_eq!(page_status(&browser), 401);
    browser.fill("input[name=token]", OPERATOR);
    browser.click("form[action='/login'] button[type=submit]");
    browser.wait_until("the filtered runs list", |b| {
        b.path() == "/runs?status=failed"
    });
    assert!(browser.text("form.who").contains("otto · operator"));
    assert_eq!(browser.count("tbody tr"), 1, "only the failed run");
    assert!(browser.exists(&format!("a[href='/runs/{failed}']")));

    // Every run, each status an icon and a word.
    browser.goto("/runs");
    for id in [&failed, &done, &waiting] {
        assert!(browser.exists(&format!("a[href='/runs/{id}']")), "{id}");
    }
    let statuses: Vec<String> = (1..=3)
        .map(|row| words(&browser.text(&format!("tbody tr:nth-child({row}) .badge"))))
        .collect();
    assert_eq!(statuses, ["▶ running", "✓ succeeded", "✗ failed"]);

    // A run started elsewhere shows up without a reload, and its row follows it to the end.
    browser.wait_until("the list to go live", |b| b.text(".live-state") == "Live");
    mark_page(&browser);
    let gate = sb.path().join("gate-live");
    let started = server.start_run(
        "deliver",
        OPERATOR,
        &json!({ "gate": gate.display().to_string() }).to_string(),
    );
    let row = format!("tbody tr:has(a[href='/runs/{started}'])");
    browser.wait_for(&row);
    assert!(browser.text(&row).contains("running"));
    browser.screenshot("runs");
    std::fs::write(&gate, "").unwrap();
    browser.wait_until("the new run's row to say it succeeded", |b| {
        b.text(&format!("{row} .badge")).contains("succeeded")
    });
    assert_eq!(run_status(&server, &started), "succeeded");
    assert!(
        page_was_not_reloaded(&browser),
        "the list was updated in place"
    );

    // To a run and back: the list, as it was left, follows runs again.
    browser.click(&format!("{row} a[href='/runs/{started}']"));
    browser.wait_until("the run's page", |b| b.path() == format!("/runs/{started}"));
    browser.back();
    browser.wait_until("the list again", |b| b.path() == "/runs");
    let again = server.start_run("nightly", OPERATOR, "{}");
    browser.wait_for(&format!("tbody tr:has(a[href='/runs/{again}'])"));

    // Dark mode follows the system's setting.
    let light = background(&browser);
    browser.dark_mode(true);
    let dark = background(&browser);
    assert!(
        dark.iter().sum::<u32>() < 150 && light.iter().sum::<u32>() > 600,
        "light {light:?}, dark {dark:?}"
    );
    browser.screenshot("runs-dark");
    browser.dark_mode(false);

    // On a phone the page fits the screen's width; the table scrolls inside itself.
    browser.phone();
    browser.goto("/runs");
    let fits = browser.script(
        "return document.documentElement.scrollWidth <= window.innerWidth;",
        vec![],
    );
    assert_eq!(fits, json!(true), "no sideways scrolling at 375 px");
    assert_eq!(
        browser.script("return window.innerWidth;", vec![]),
        json!(375)
    );
    browser.screenshot("runs-phone");
    browser.laptop();

    // Keyboard: the first Tab reaches the skip link, and Enter on it moves on to the content.
    browser.goto("/runs");
    browser.press(Key::Tab);
    let focused = "return document.activeElement.textContent.trim();";
    assert_eq!(browser.script(focused, vec![]), json!("Skip to content"));
    browser.press(Key::Enter);
    browser.wait_until("the focus to reach the content", |b| {
        b.script("return document.activeElement.id;", vec![]) == json!("main")
    });
}

#[test]
fn a_form_on_another_site_cannot_act_for_a_signed_in_person() {
    let sb = Sandbox::new();
    let server = serve(&sb);
    let browser = Chromium::open(&server.url);
    browser.sign_in(OPERATOR);
    browser.goto("/runs");
    // The worst case: the other site even knows this session's form token.
    let csrf = browser.form_token();
    let runs_before = runs_of(&server, "deliver");

    let other = OtherSite::serve(&format!(
        r#"<!doctype html><title>Win a prize</title>
<form method="post" action="{baton}/logout"><input type="hidden" name="csrf" value="{csrf}"><button id="sign-out">Claim</button></form>
<form method="post" action="{baton}/login"><input type="hidden" name="token" value="{VIEWER}"><button id="sign-in">Claim more</button></form>
<form method="post" action="{baton}/workflows/deliver/runs"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="event" value="{{}}"><button id="start">Claim all</button></form>"#,
        baton = server.url
    ));
    assert_ne!(other.url, format!("{}/", server.url));

    for button in ["#sign-out", "#sign-in", "#start"] {
        browser.goto(&other.url);
        browser.click(button);
        browser.wait_until("baton's answer", |b| b.path() != "/");
        assert_eq!(page_status(&browser), 403, "{button}");
        assert!(
            browser
                .text("[role=alert]")
                .contains("came from another site"),
            "{button}"
        );
    }

    // Nothing changed: still signed in as the operator, and no run was started.
    browser.goto("/runs");
    assert!(browser.text("form.who").contains("otto · operator"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(runs_of(&server, "deliver"), runs_before);
}

/// The box of stage `stage` in the run graph, when it shows `status`.
fn stage_box(stage: &str, status: &str) -> String {
    format!(".graph g.stage[data-stage='{stage}'][data-status='{status}']")
}

/// Waits through the REST API until stage `stage` of run `run` is `status`.
fn wait_stage(server: &Server, run: &str, stage: &str, status: &str) {
    server.wait_for(
        &format!("/api/v1/runs/{run}"),
        VIEWER,
        &format!("stage {stage} to be {status}"),
        |r| {
            r["stages"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["id"] == stage && s["status"] == status))
        },
    );
}

#[test]
fn an_operator_starts_a_run_and_watches_its_graph_turn_green() {
    let sb = Sandbox::new();
    let server = serve(&sb);
    server.start_run("nightly", OPERATOR, "{}");
    let browser = Chromium::open(&server.url);
    browser.sign_in(OPERATOR);

    // From the navigation to the workflow, as a person finds it.
    browser.click("header nav a[href='/workflows']");
    browser.wait_until("the workflows", |b| b.path() == "/workflows");
    for name in ["deliver", "release", "nightly", "on-push"] {
        assert!(
            browser.exists(&format!("main a[href='/workflows/{name}']")),
            "{name}"
        );
    }
    browser.screenshot("workflows");
    browser.click("main a[href='/workflows/deliver']");
    browser.wait_until("the workflow's page", |b| b.path() == "/workflows/deliver");
    assert!(browser.exists("main svg"), "the workflow's graph");
    let gate = sb.path().join("gate-story");
    browser.fill(
        "textarea[name=event]",
        &json!({ "gate": gate.display().to_string() }).to_string(),
    );
    browser.screenshot("workflow");

    // Starting asks first, then shows the new run.
    browser.click("form[action='/workflows/deliver/runs'] button[type=submit]");
    assert_eq!(browser.accept_confirm(), "Start a run of deliver?");
    browser.wait_until("the new run's page", |b| b.path().starts_with("/runs/"));
    let run = browser.path().trim_start_matches("/runs/").to_owned();
    assert_eq!(runs_of(&server, "deliver"), 1);
    browser.wait_for(&stage_box("build", "running"));
    assert!(browser.exists(&stage_box("test", "pending")));
    assert!(browser.exists(&stage_box("package", "pending")));
    browser.wait_until("the page to go live", |b| b.text(".live-state") == "Live");

    // The build ends: every box turns green in place, without a reload.
    mark_page(&browser);
    std::fs::write(&gate, "").unwrap();
    for stage in ["build", "test", "package"] {
        browser.wait_for(&stage_box(stage, "succeeded"));
    }
    browser.wait_until("the run's status to say it succeeded", |b| {
        words(&b.text("dl.facts .badge")) == "✓ succeeded"
    });
    assert!(
        page_was_not_reloaded(&browser),
        "the page was updated in place"
    );
    assert_eq!(browser.path(), format!("/runs/{run}"));
    assert_eq!(run_status(&server, &run), "succeeded");
}

#[test]
fn an_approver_answers_a_waiting_stage_and_the_run_goes_on() {
    let sb = Sandbox::new();
    let server = serve(&sb);
    let run = server.start_run("release", OPERATOR, r#"{"version": "1.4.2"}"#);
    wait_stage(&server, &run, "approve", "waiting");
    let browser = Chromium::open(&server.url);
    browser.sign_in(APPROVER);
    browser.goto(&format!("/runs/{run}"));

    // The graph says where the run stands in words and glyphs, not colour alone.
    browser.wait_for(&stage_box("approve", "waiting"));
    assert!(browser.exists(&stage_box("build", "succeeded")));
    assert!(browser.exists(&stage_box("deploy", "pending")));
    assert!(
        words(&browser.text(&stage_box("approve", "waiting"))).contains("waiting"),
        "the status is written in the box"
    );
    browser.wait_until("the page to go live", |b| b.text(".live-state") == "Live");
    browser.screenshot("run");
    mark_page(&browser);

    // Cancel in the dialog sends nothing.
    let approve = "form.decision[action$='/stages/approve/approve']";
    browser.fill(&format!("{approve} input[name=comment]"), "ship it");
    browser.click(&format!("{approve} button[type=submit]"));
    let question = browser.dismiss_confirm();
    assert_eq!(question, format!("Approve stage approve of run {run}?"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(page_was_not_reloaded(&browser), "nothing was sent");
    wait_stage(&server, &run, "approve", "waiting");

    // OK sends the approval, and the page follows the run to its end.
    browser.click(&format!("{approve} button[type=submit]"));
    browser.accept_confirm();
    browser.wait_until("the approval to be sent", |b| {
        b.path().contains("done=approved")
    });
    assert_eq!(page_status(&browser), 200);
    browser.wait_for(&stage_box("deploy", "succeeded"));
    assert!(browser.exists(&stage_box("approve", "succeeded")));
    assert_eq!(run_status(&server, &run), "succeeded");
    let answered = server.get(&format!("/api/v1/runs/{run}"), VIEWER).json();
    let approval = answered["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == "approve"))
        .cloned()
        .expect("the approval stage");
    assert_eq!(approval["outputs"]["by"], "anna");
    assert_eq!(approval["outputs"]["comment"], "ship it");
}

/// `fetch` of a POST from the page itself, with a form body; answers `[status, text]`.
const FETCH_POST: &str = "const done = arguments[arguments.length - 1];
fetch(arguments[0], { method: 'POST', credentials: 'same-origin',
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams(arguments[1]) })
  .then(async (r) => done([r.status, await r.text(), r.url]))
  .catch((e) => done([0, String(e), '']));";

#[test]
fn a_viewer_sees_no_actions_and_a_forged_one_is_refused() {
    let sb = Sandbox::new();
    let server = serve(&sb);
    let waiting = server.start_run("release", OPERATOR, r#"{"version": "2.0"}"#);
    let failed = server.start_run("nightly", OPERATOR, "{}");
    let (delivery, _) = push(&server, "d-viewer", r#"{"ref": "refs/heads/main"}"#, &[]);
    wait_stage(&server, &waiting, "approve", "waiting");
    server.run_ended(&failed, VIEWER);
    let browser = Chromium::open(&server.url);
    browser.sign_in(VIEWER);

    // The pages show the state, and nothing a viewer may not do.
    browser.goto(&format!("/runs/{waiting}"));
    browser.wait_for(&stage_box("approve", "waiting"));
    assert_eq!(browser.count("main form[method=post]"), 0, "no actions");
    browser.goto(&format!("/runs/{failed}"));
    browser.wait_for(&stage_box("check", "failed"));
    assert_eq!(browser.count("main form[method=post]"), 0, "no retry");
    browser.goto("/runs");
    assert_eq!(browser.count("main form[method=post]"), 0);
    browser.goto("/workflows/release");
    assert!(browser.text("main").contains("needs the operator role"));
    assert_eq!(browser.count("main form[method=post]"), 0, "no start form");
    browser.goto(&format!("/deliveries/{delivery}"));
    assert!(browser.text("main").contains("needs the operator role"));
    assert_eq!(browser.count("main form[method=post]"), 0, "no replay");

    // Posting from the page anyway, with the viewer's own form token: refused by role.
    let csrf = browser.form_token();
    let before = (runs_of(&server, "release"), runs_of(&server, "on-push"));
    for action in [
        format!("/runs/{waiting}/stages/approve/approve"),
        format!("/runs/{waiting}/cancel"),
        format!("/runs/{failed}/stages/check/retry"),
        "/workflows/release/runs".to_owned(),
        format!("/deliveries/{delivery}/replay"),
    ] {
        let form = json!({ "csrf": csrf, "event": "{}" });
        let answer = browser.script_async(FETCH_POST, vec![json!(action), form]);
        assert_eq!(answer[0], 403, "{action}: {answer}");
        assert!(
            answer[1]
                .as_str()
                .is_some_and(|t| t.contains("Your role is viewer")),
            "{action}: {answer}"
        );
    }
    wait_stage(&server, &waiting, "approve", "waiting");
    assert_eq!(run_status(&server, &waiting), "running", "not cancelled");
    assert_eq!(run_status(&server, &failed), "failed", "not retried");
    let after = (runs_of(&server, "release"), runs_of(&server, "on-push"));
    assert_eq!(after, before, "none started, none replayed");

    // The same request from an operator's page does what it says: the refusal was the role's.
    browser.sign_in(OPERATOR);
    browser.goto(&format!("/runs/{waiting}"));
    assert!(browser.exists(&format!("form[action='/runs/{waiting}/cancel']")));
    let csrf = browser.form_token();
    let action = format!("/runs/{waiting}/cancel");
    let answer = browser.script_async(FETCH_POST, vec![json!(action), json!({ "csrf": csrf })]);
    assert_eq!(answer[0], 200, "{answer}");
    assert_eq!(server.run_ended(&waiting, VIEWER)["status"], "cancelled");
}

#[test]
fn a_delivery_carrying_markup_shows_it_as_text_and_runs_none_of_it() {
    let sb = Sandbox::new();
    let server = serve(&sb);
    let script = "<script>window.pwned=1</script>";
    let image = "<img src=x onerror=\"window.pwned=2\">";
    let body = json!({
        "ref": script,
        "head_commit": { "message": image, "author": { "name": "Mallory" } },
        "repository": { "full_name": "team/app" },
    })
    .to_string();
    let extra = [("x-comment", image), ("x-api-token", "hunter2-secret")];
    let (delivery, stored) = push(&server, "d-markup", &body, &extra);
    let signature = baton_tests::sign_sha256("hook-secret", body.as_bytes());
    let run = stored["runs"][0].as_str().expect("a run").to_owned();
    server.run_ended(&run, VIEWER);
    let browser = Chromium::open(&server.url);
    browser.sign_in(VIEWER);

    let nothing_ran = "return typeof window.pwned === 'undefined' \
        && document.querySelectorAll('main script, main img').length === 0;";
    browser.goto(&format!("/deliveries/{delivery}"));
    let payload = browser.text("main pre");
    assert!(payload.contains(script), "{payload}");
    assert!(payload.contains("window.pwned=2"), "{payload}");
    assert!(browser.text("main table").contains("x-comment"));
    assert_eq!(browser.script(nothing_ran, vec![]), json!(true));
    // The signature was never stored; a header named like a secret is masked.
    let html = browser.html();
    assert!(!html.contains(&signature) && !html.contains("hunter2-secret"));
    assert!(
        words(&browser.text("main table")).contains("x-api-token •••••• (masked)"),
        "the masked header"
    );
    // The picture shows the headers and the payload, as text.
    browser.script(
        "[...document.querySelectorAll('main h2')].find((h) => h.textContent === 'Headers')\
         .scrollIntoView();",
        vec![],
    );
    browser.screenshot("delivery");

    // The list of deliveries, and the run the push started, whose output is the ref.
    browser.goto("/deliveries");
    assert!(browser.exists(&format!("a[href='/deliveries/{delivery}']")));
    assert_eq!(browser.script(nothing_ran, vec![]), json!(true));
    browser.screenshot("deliveries");
    browser.goto(&format!("/runs/{run}"));
    browser.wait_for(&stage_box("note", "succeeded"));
    // The stage's details are closed (it succeeded): their text is there, only not shown.
    let shown = "return document.querySelector('main').textContent.includes(arguments[0]);";
    assert_eq!(browser.script(shown, vec![json!(script)]), json!(true));
    assert_eq!(browser.script(nothing_ran, vec![]), json!(true));
}

#[test]
fn a_workflow_drawn_in_the_editor_downloads_validates_and_runs() {
    let sb = Sandbox::new();
    let server = serve(&sb);
    let browser = Chromium::open(&server.url);
    browser.sign_in(OPERATOR);
    browser.goto("/workflows");
    browser.click("main a[href='/workflows/new']");
    browser.wait_for("#workflow-name");
    browser.fill("#workflow-name", "drawn");

    // Three stages, each adding its name to a file, so the order they ran in shows.
    for stage in ["fetch", "build", "ship"] {
        browser.fill("#new-stage-id", stage);
        browser.click("#add-stage");
        let with = format!("#stage-{stage}-with");
        browser.wait_for(&with);
        assert_eq!(browser.value(&format!("#stage-{stage}-uses")), "exec");
        browser.fill(&with, &format!("run: echo {stage} >> order"));
    }
    // fetch → build drawn with the mouse, build → ship with the keyboard.
    browser.click("#handle-fetch");
    browser.click("#node-build");
    browser.wait_for("#edge-fetch-build");
    browser.focus("#handle-build");
    browser.press(Key::Enter);
    browser.focus("#node-ship");
    browser.press(Key::Enter);
    browser.wait_for("#edge-build-ship");
    assert_eq!(browser.text("#canvas-hint"), "ship now needs build.");

    // The server writes the YAML and checks it as it is drawn.
    browser.wait_until("the server to find the workflow valid", |b| {
        b.text("#editor-status") == "✓ Valid"
    });
    let yaml = browser.script(
        "return document.getElementById('workflow-yaml').value;",
        vec![],
    );
    let yaml = yaml.as_str().expect("the YAML").to_owned();
    let parsed: Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
    assert_eq!(parsed["name"], "drawn");
    assert_eq!(parsed["stages"]["build"]["needs"], json!(["fetch"]));
    assert_eq!(parsed["stages"]["ship"]["needs"], json!(["build"]));
    browser.screenshot("editor");

    // A mistyped `with` is named next to its stage, then mended.
    browser.fill("#stage-ship-with", "runn: echo ship");
    browser.wait_until("the problem to show with its stage", |b| {
        b.exists("#stage-ship.has-problems") && b.count("#stage-ship-problems li") > 0
    });
    assert!(browser.text("#stage-ship-problems").contains("runn"));
    assert_eq!(browser.count("#stage-build-problems li"), 0);
    browser.fill("#stage-ship-with", "run: echo ship >> order");
    browser.wait_until("the workflow to be valid again", |b| {
        b.text("#editor-status") == "✓ Valid"
    });

    // Download it, and baton takes the file as it is.
    let downloads = sb.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    browser.download_into(&downloads);
    browser.click("#download-button");
    let file = downloads.join("drawn.yaml");
    baton_tests::eventually(baton_tests::browser::WAIT, "the download", || {
        std::fs::read_to_string(&file).is_ok_and(|text| text.contains("ship"))
    });
    let downloaded = std::fs::read_to_string(&file).unwrap();
    let parsed_download: Value = serde_yaml_ng::from_str(&downloaded).expect("YAML");
    assert_eq!(parsed_download, parsed, "the file is the workflow shown");

    let mut validate = sb.baton(&["validate", "-c", "baton.toml", &file.display().to_string()]);
    validate
        .envs(ALL_ROLES_ENV.iter().copied())
        .env("GH_SECRET", "hook-secret");
    let checked = baton_tests::wait_with_deadline(
        validate
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("baton validate"),
        Duration::from_secs(60),
    );
    assert_eq!(checked.code, Some(0), "{checked:?}");

    // On its own, in a folder of its own: a lone file of exec stages needs no config.
    let elsewhere = sb.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let ran = baton_tests::wait_with_deadline(
        sb.baton(&["run", &file.display().to_string(), "--json"])
            .current_dir(&elsewhere)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("baton run"),
        Duration::from_secs(120),
    );
    assert_eq!(ran.code, Some(0), "{ran:?}");
    assert_eq!(ran.json()["status"], "succeeded");
    assert_eq!(
        std::fs::read_to_string(elsewhere.join("order")).unwrap(),
        "fetch\nbuild\nship\n"
    );
}
