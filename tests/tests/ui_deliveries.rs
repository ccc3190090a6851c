//! The web UI's deliveries and relays pages over HTTP, as a browser without JavaScript sees
//! them: signed deliveries listed newest first and paged by key, one delivery's headers
//! with every secret masked and its payload escaped, replay by an operator starting the
//! workflow again, and the refusals of a viewer, a form without its token and another site.

use std::time::Duration;

use baton_tests::receiver::{Receiver, Signing};
use baton_tests::web::Browser;
use baton_tests::{
    ALL_ROLES_ENV, ALL_ROLES_GATEWAY, OPERATOR_TOKEN as OPERATOR, Sandbox, Server,
    VIEWER_TOKEN as VIEWER, eventually, sign_sha256,
};
use serde_json::Value;

const GITHUB_SECRET: &str = "gh-intake-secret";

/// Every role's token and the sources' secret.
fn env() -> Vec<(&'static str, &'static str)> {
    let mut env = ALL_ROLES_ENV.to_vec();
    env.push(("GH_SECRET", GITHUB_SECRET));
    env
}

/// The masked value's dots.
const MASK: &str = "••••••";

/// Writes the config: every role's token, the sources `github` and `mirror` (same secret),
/// `more` TOML, and a workflow that pushes to main start. Returns its path.
fn gateway(sb: &Sandbox, more: &str) -> String {
    sb.write(
        "baton.toml",
        &[
            ALL_ROLES_GATEWAY,
            r#"
[sources.github]
kind = "github"
secret = { env = "GH_SECRET" }

[sources.mirror]
kind = "github"
secret = { env = "GH_SECRET" }
"#,
            more,
        ]
        .concat(),
    );
    sb.write(
        "workflows/main.yaml",
        r#"
name: on-main
on:
  - source: github
    event: push
    if: '.ref == "refs/heads/main"'
stages:
  build:
    uses: exec
    with: { run: 'echo built' }
"#,
    );
    sb.path().join("baton.toml").display().to_string()
}

/// `GET path` as `browser`, which must succeed.
fn page(browser: &Browser, path: &str) -> String {
    let reply = browser.get(path);
    assert_eq!(reply.status, 200, "GET {path}: {reply:?}");
    reply.body
}

/// The numbers of the deliveries a page links to, in order, each once.
fn delivery_links(html: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = Vec::new();
    for piece in html.split(r#"href="/deliveries/"#).skip(1) {
        let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(id) = digits.parse()
            && piece[digits.len()..].starts_with('"')
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids
}

/// The page key of the "Older" link, if there is one.
fn older(html: &str) -> Option<String> {
    let link = html.split(r#"rel="next""#).next()?;
    let href = link.rsplit("href=\"").next()?;
    let href = href.split('"').next()?.replace("&amp;", "&");
    html.contains(r#"rel="next""#).then_some(href)
}

/// Sends a signed delivery; its stored number.
fn deliver(server: &Server, source: &str, event: &str, id: &str, body: &str) -> i64 {
    let reply = server.github(source, GITHUB_SECRET, event, id, body);
    assert_eq!(reply.status, 202, "{reply:?}\n{}", server.log());
    reply.json()["delivery"]
        .as_i64()
        .expect("a delivery number")
}

/// Waits until delivery `id` is processed with `runs` runs; the delivery as the API shows it.
fn processed_with(server: &Server, id: i64, runs: usize) -> Value {
    server.wait_for(
        &format!("/api/v1/deliveries/{id}"),
        VIEWER,
        "the delivery to be processed",
        |d| d["status"] == "processed" && d["runs"].as_array().map(Vec::len) == Some(runs),
    )
}

/// Sends a push to main with the sender's id `sent_as` and waits for the run it starts:
/// the delivery's number and the run's id.
fn pushed_to_main(server: &Server, sent_as: &str) -> (i64, String) {
    let id = deliver(
        server,
        "github",
        "push",
        sent_as,
        r#"{"ref": "refs/heads/main"}"#,
    );
    let run = processed_with(server, id, 1)["runs"][0]
        .as_str()
        .expect("a run id")
        .to_owned();
    (id, run)
}

#[test]
fn deliveries_are_listed_newest_first_and_paged_by_key() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb, ""), &env());
    let mut sent = Vec::new();
    for n in 0..53 {
        let body = format!(r#"{{"action": "opened", "n": {n}}}"#);
        sent.push(deliver(
            &server,
            "github",
            "issues",
            &format!("gh-{n}"),
            &body,
        ));
    }
    let mirrored: Vec<i64> = (0..2)
        .map(|n| deliver(&server, "mirror", "issues", &format!("mi-{n}"), "{}"))
        .collect();
    let mut all: Vec<i64> = sent.iter().chain(&mirrored).copied().collect();
    all.sort_unstable_by(|a, b| b.cmp(a));

    let browser = Browser::sign_in(&server, VIEWER);
    let first = page(&browser, "/deliveries");
    assert!(first.contains("<h1>Deliveries</h1>"), "{first}");
    assert_eq!(
        delivery_links(&first),
        all[..50],
        "the newest 50, newest first"
    );
    assert!(
        first.contains(r#"data-live-src="/deliveries?fragment=rows""#),
        "the first page follows changes"
    );
    assert!(first.contains("gh-52") && first.contains("issues"));
    assert!(!first.contains(r#"href="/relays""#), "no relays configured");

    let next = older(&first).expect("an Older link");
    assert_eq!(next, format!("/deliveries?before={}", all[49]));
    let second = page(&browser, &next);
    assert_eq!(delivery_links(&second), all[50..], "the rest, none twice");
    assert!(older(&second).is_none(), "the last page");
    assert!(
        !second.contains("data-live-src"),
        "a later page keeps its place"
    );
    assert!(second.contains("← Newest"), "a way back to the newest");

    let only_mirror = page(&browser, "/deliveries?source=mirror");
    let mut expected = mirrored;
    expected.reverse();
    assert_eq!(delivery_links(&only_mirror), expected);
    assert!(only_mirror.contains(r#"data-live-src="/deliveries?source=mirror&amp;fragment=rows""#));

    let rows = page(&browser, "/deliveries?fragment=rows");
    assert!(rows.starts_with("<tr>") && !rows.contains("<html"));
    assert_eq!(delivery_links(&rows), all[..50]);

    let refused = Browser::new(&server).get("/deliveries?source=mirror");
    assert_eq!(refused.status, 303);
    assert_eq!(
        refused.header("location"),
        Some("/login?next=%2Fdeliveries%3Fsource%3Dmirror")
    );
}

#[test]
fn a_delivery_shows_its_headers_masked_its_payload_escaped_and_its_runs() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb, ""), &env());
    let body = r#"{"ref": "refs/heads/main", "x": "<script>alert(1)</script>"}"#;
    let signature = sign_sha256(GITHUB_SECRET, body.as_bytes());
    let reply = server.request(
        "POST",
        "/hooks/github",
        &[
            ("x-github-event", "push"),
            ("x-github-delivery", "d-escape"),
            ("x-hub-signature-256", &signature),
            ("x-custom-token", "tok-never-shown-77"),
            ("x-relay-signature", "sig-never-shown-88"),
            ("authorization", "Bearer bearer-never-shown-99"),
            ("x-visible", "plain <b>value</b>"),
            ("content-type", "application/json"),
        ],
        Some(body.as_bytes()),
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    let id = reply.json()["delivery"].as_i64().unwrap();
    let stored = processed_with(&server, id, 1);
    let run = stored["runs"][0].as_str().unwrap().to_owned();

    let browser = Browser::sign_in(&server, VIEWER);
    let html = page(&browser, &format!("/deliveries/{id}"));
    for secret in [
        signature.as_str(),
        "tok-never-shown-77",
        "sig-never-shown-88",
        "bearer-never-shown-99",
    ] {
        assert!(!html.contains(secret), "{secret} reached the page:\n{html}");
    }
    assert!(html.contains("x-custom-token") && html.contains("x-relay-signature"));
    assert_eq!(html.matches(MASK).count(), 2, "{html}");
    assert!(html.contains("plain &lt;b&gt;value&lt;/b&gt;"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "the payload is shown escaped:\n{html}"
    );
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(html.contains("d-escape") && html.contains("processed"));
    assert!(html.contains(&format!(r#"href="/runs/{run}""#)), "{html}");
    assert!(html.contains(&format!(
        r#"data-live-src="/deliveries/{id}?fragment=live""#
    )));
    let live = page(&browser, &format!("/deliveries/{id}?fragment=live"));
    assert!(!live.contains("<html") && live.contains(&run));

    let listed = page(&browser, "/deliveries");
    assert!(listed.contains(&format!(r#"href="/runs/{run}""#)));

    assert_eq!(browser.get("/deliveries/999999").status, 404);
    assert_eq!(browser.get("/deliveries/nope").status, 404);
}

#[test]
fn an_operator_replays_a_delivery_and_the_workflow_starts_again() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb, ""), &env());
    let (id, first_run) = pushed_to_main(&server, "d-replay");

    let operator = Browser::sign_in(&server, OPERATOR);
    let html = page(&operator, &format!("/deliveries/{id}"));
    let action = format!(r#"action="/deliveries/{id}/replay""#);
    assert!(html.contains(&action), "{html}");
    assert!(html.contains("data-confirm="));
    let done = operator.post(
        &format!("/deliveries/{id}/replay"),
        &[("csrf", &operator.csrf())],
        &[],
    );
    assert_eq!(done.status, 303, "{done:?}");
    assert_eq!(
        done.header("location"),
        Some(format!("/deliveries/{id}?done=replayed").as_str())
    );
    let replayed = processed_with(&server, id, 2);
    let runs: Vec<&str> = replayed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(runs.contains(&first_run.as_str()));
    let after = page(&operator, &format!("/deliveries/{id}?done=replayed"));
    assert!(after.contains("Replayed"), "{after}");
    for run in &runs {
        assert!(after.contains(&format!(r#"href="/runs/{run}""#)));
    }
    assert!(server.log().contains("delivery replayed"));
}

#[test]
fn a_viewer_cannot_replay_and_refused_forms_change_nothing() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb, ""), &env());
    let (id, _) = pushed_to_main(&server, "d-refuse");
    let replay = format!("/deliveries/{id}/replay");

    let viewer = Browser::sign_in(&server, VIEWER);
    let html = page(&viewer, &format!("/deliveries/{id}"));
    assert!(!html.contains(&replay), "a viewer sees no Replay");
    let own = viewer.csrf();
    let refused = viewer.post(&replay, &[("csrf", &own)], &[]);
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body.contains("viewer"), "{}", refused.body);

    let operator = Browser::sign_in(&server, OPERATOR);
    let token = operator.csrf();
    let refusals = [
        ("no form token", operator.post(&replay, &[], &[])),
        (
            "the viewer's form token",
            operator.post(&replay, &[("csrf", &own)], &[]),
        ),
        (
            "another site (Sec-Fetch-Site)",
            operator.post(
                &replay,
                &[("csrf", &token)],
                &[("sec-fetch-site", "cross-site")],
            ),
        ),
        (
            "another site (Origin)",
            operator.post(
                &replay,
                &[("csrf", &token)],
                &[("sec-fetch-site", ""), ("origin", "https://evil.example")],
            ),
        ),
    ];
    for (why, reply) in refusals {
        assert_eq!(reply.status, 403, "{why}: {reply:?}");
    }
    let anonymous = Browser::new(&server).post(&replay, &[("csrf", &token)], &[]);
    assert_eq!(anonymous.status, 303, "signed out: to the sign-in page");

    // A replay marks the delivery before it answers: had one gone through, it would show.
    let delivery = server
        .get(&format!("/api/v1/deliveries/{id}"), VIEWER)
        .json();
    assert_eq!(delivery["status"], "processed", "{delivery}");
    assert_eq!(delivery["runs"].as_array().map(Vec::len), Some(1));
    assert!(!server.log().contains("delivery replayed"));
}

#[test]
fn relays_show_targets_and_messages_and_an_operator_sends_one_again() {
    let receiver = Receiver::start(Signing::Nothing);
    let sb = Sandbox::new();
    let relays = format!(
        "\n[relays.mirror-out]\nfrom = \"github\"\n\n[[relays.mirror-out.to]]\nname = \"ci\"\nurl = \"{}\"\nsign = {{ scheme = \"none\" }}\nallow_private = true\n",
        receiver.url
    );
    let server = sb.serve(&gateway(&sb, &relays), &env());
    let id = deliver(&server, "github", "issues", "d-relay", r#"{"n": 1}"#);
    processed_with(&server, id, 0);
    receiver.wait_for_requests(1, Duration::from_secs(20));
    server.wait_for(
        "/api/v1/relays/mirror-out/messages",
        VIEWER,
        "the message to be delivered",
        |m| m["messages"][0]["status"] == "delivered",
    );

    let viewer = Browser::sign_in(&server, VIEWER);
    assert!(
        page(&viewer, "/deliveries").contains(r#"href="/relays""#),
        "a Relays link"
    );
    let seen = page(&viewer, "/relays");
    for text in ["mirror-out", "ci", "healthy", "delivered", &receiver.url] {
        assert!(seen.contains(text), "{text} missing:\n{seen}");
    }
    assert!(seen.contains(&format!(r#"href="/deliveries/{id}""#)));
    assert!(!seen.contains("/replay"), "a viewer sees no Replay");

    let operator = Browser::sign_in(&server, OPERATOR);
    let seen = page(&operator, "/relays");
    let action = seen
        .split(r#"action=""#)
        .map(|a| a.split('"').next().unwrap_or_default())
        .find(|a| a.starts_with("/relays/mirror-out/messages/msg_") && a.ends_with("/replay"))
        .unwrap_or_else(|| panic!("no Replay form:\n{seen}"))
        .to_owned();
    let refused = viewer.post(&action, &[("csrf", &viewer.csrf())], &[]);
    assert_eq!(refused.status, 403);
    let done = operator.post(&action, &[("csrf", &operator.csrf())], &[]);
    assert_eq!(done.status, 303, "{done:?}");
    assert_eq!(done.header("location"), Some("/relays?done=replayed"));
    receiver.wait_for_requests(2, Duration::from_secs(20));
    eventually(
        Duration::from_secs(20),
        "the replay to be delivered",
        || {
            server
                .get("/api/v1/relays/mirror-out/messages", VIEWER)
                .json()["messages"][0]["attempts"]
                == 2
        },
    );
    assert_eq!(receiver.count(), 2, "the first send and the replay");
}

/// A delivery that starts no run changes no run: an open deliveries page is still told.
#[test]
fn an_open_deliveries_page_hears_of_a_delivery_that_starts_nothing() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb, ""), &env());
    let viewer = Browser::sign_in(&server, VIEWER);
    let page = page(&viewer, "/deliveries");
    assert!(
        page.contains(r#"data-live-events="/ui/events?deliveries=1""#),
        "{page}"
    );
    let mut events = viewer.events("/ui/events?deliveries=1");
    let id = deliver(
        &server,
        "github",
        "push",
        "to-a-branch",
        r#"{"ref": "refs/heads/elsewhere"}"#,
    );
    assert_eq!(events.next_change(), "*");
    processed_with(&server, id, 0);
}
