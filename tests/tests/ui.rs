//! The web UI in a real browser: headless Chromium, driven through chromedriver, signs in,
//! reads pages, clicks buttons and answers dialogs the way a person would, with baton's own
//! script and Content-Security-Policy in force. Each test is one person's story.
//!
//! `BATON_UI_SCREENSHOTS=1 cargo test -p baton-cli --test ui` also writes the pictures of
//! docs/ui.md into docs/ui/.

use std::time::Duration;

use baton_tests::browser::{Browser, Key, OtherSite};
use baton_tests::{ALL_ROLES_GATEWAY, Sandbox, Server};
use serde_json::{Value, json};

const VIEWER: &str = "view-token-1";
const OPERATOR: &str = "oper-token-2";
const APPROVER: &str = "appr-token-3";

const ENV: &[(&str, &str)] = &[
    ("T_VIEWER", VIEWER),
    ("T_OPERATOR", OPERATOR),
    ("T_APPROVER", APPROVER),
    ("GH_SECRET", "hook-secret"),
];

/// A gateway with a GitHub source and three workflows: `deliver` (three stages; its first
/// waits for the file the event's `gate` names, so a test decides when it ends), `release`
/// (waits for a person's approval) and `nightly` (fails).
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

/// Sets a mark on the page's `window`: it survives live updates and is gone after any
/// navigation or reload.
fn mark_page(browser: &Browser) {
    browser.script("window.batonStoryMark = 'still here';", vec![]);
}

fn page_was_not_reloaded(browser: &Browser) -> bool {
    browser.script("return window.batonStoryMark === 'still here';", vec![]) == json!(true)
}

/// The HTTP status the browser got for the page it shows (Navigation Timing).
fn page_status(browser: &Browser) -> u64 {
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

fn background(browser: &Browser) -> [u32; 3] {
    rgb(&browser.script(
        "return getComputedStyle(document.body).backgroundColor;",
        vec![],
    ))
}

#[test]
fn an_operator_signs_in_and_watches_the_runs_list_follow_the_runs() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb), ENV);
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
    let browser = Browser::open(&server.url);

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
    let server = sb.serve(&gateway(&sb), ENV);
    let browser = Browser::open(&server.url);
    browser.sign_in(OPERATOR);
    browser.goto("/runs");
    // The worst case: the other site even knows this session's form token.
    let csrf = browser
        .attr("meta[name=baton-csrf]", "content")
        .expect("the page carries its form token");
    let runs_before = runs_of(&server, "deliver");

    let other = OtherSite::serve(&format!(
        r#"<!doctype html><title>Win a prize</title>
<form method="post" action="{baton}/logout"><input type="hidden" name="csrf" value="{csrf}"><button id="sign-out">Claim</button></form>
<form method="post" action="{baton}/login"><input type="hidden" name="token" value="{VIEWER}"><button id="sign-in">Claim more</button></form>"#,
        baton = server.url
    ));
    assert_ne!(other.url, format!("{}/", server.url));

    for button in ["#sign-out", "#sign-in"] {
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
