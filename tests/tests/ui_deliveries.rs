//! The web UI's deliveries and relays pages over HTTP, as a browser without JavaScript sees
//! them: signed deliveries listed newest first and paged by key, one delivery's headers
//! with every secret masked and its payload escaped, replay by an operator starting the
//! workflow again, and the refusals of a viewer, a form without its token and another site.

use std::time::Duration;

use baton_tests::receiver::{Receiver, Signing};
use baton_tests::{ALL_ROLES_GATEWAY, Sandbox, Server, eventually, sign_sha256};
use serde_json::Value;

const VIEWER: &str = "view-token-1";
const OPERATOR: &str = "oper-token-2";
const APPROVER: &str = "appr-token-3";
const GITHUB_SECRET: &str = "gh-intake-secret";

const ENV: &[(&str, &str)] = &[
    ("T_VIEWER", VIEWER),
    ("T_OPERATOR", OPERATOR),
    ("T_APPROVER", APPROVER),
    ("GH_SECRET", GITHUB_SECRET),
];

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

/// A browser without JavaScript: it keeps the session cookie and follows no redirect, so a
/// test sees each answer.
struct Browser<'a> {
    server: &'a Server,
    agent: ureq::Agent,
    cookie: String,
}

/// An answer as the browser got it.
#[derive(Debug)]
struct Page {
    status: u16,
    location: Option<String>,
    body: String,
}

impl<'a> Browser<'a> {
    fn new(server: &'a Server) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Self {
            server,
            agent,
            cookie: String::new(),
        }
    }

    /// Signs in with an API token through the sign-in form.
    fn signed_in(server: &'a Server, token: &str) -> Self {
        let mut browser = Self::new(server);
        let body = format!("token={token}&next=%2Fdeliveries");
        let page = browser.send("POST", "/login", &[], Some(&body));
        assert_eq!(page.status, 303, "{page:?}");
        assert_eq!(page.location.as_deref(), Some("/deliveries"));
        assert!(!browser.cookie.is_empty(), "no session cookie");
        browser
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        form: Option<&str>,
    ) -> Page {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server.url));
        if !self.cookie.is_empty() {
            request = request.header("cookie", &self.cookie);
        }
        if form.is_some() {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(form.unwrap_or_default().as_bytes().to_vec())
            .expect("a request");
        let mut response = self.agent.run(request).expect("an answer");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if let Some(set) = header("set-cookie") {
            self.cookie = set.split(';').next().unwrap_or_default().to_owned();
        }
        let location = header("location");
        Page {
            status: response.status().as_u16(),
            location,
            body: response.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    fn get(&mut self, path: &str) -> Page {
        let page = self.send("GET", path, &[], None);
        assert_eq!(page.status, 200, "GET {path}: {page:?}");
        page
    }

    /// Posts a form with these fields, as a page of this site would.
    fn post(&mut self, path: &str, fields: &[(&str, &str)], headers: &[(&str, &str)]) -> Page {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send("POST", path, headers, Some(&body))
    }
}

/// The session's form token, from the page's `<meta name="baton-csrf">`.
fn csrf(page: &Page) -> String {
    let after = page
        .body
        .split(r#"<meta name="baton-csrf" content=""#)
        .nth(1)
        .unwrap_or_else(|| panic!("no form token on the page: {}", page.body));
    after.split('"').next().unwrap_or_default().to_owned()
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
    let server = sb.serve(&gateway(&sb, ""), ENV);
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

    let mut browser = Browser::signed_in(&server, VIEWER);
    let first = browser.get("/deliveries");
    assert!(first.body.contains("<h1>Deliveries</h1>"), "{}", first.body);
    let first_ids = delivery_links(&first.body);
    assert_eq!(first_ids, all[..50], "the newest 50, newest first");
    assert!(
        first
            .body
            .contains(r#"data-live-src="/deliveries?fragment=rows""#),
        "the first page follows changes"
    );
    assert!(first.body.contains("gh-52") && first.body.contains("issues"));
    assert!(
        !first.body.contains(r#"href="/relays""#),
        "no relays configured"
    );

    let next = older(&first.body).expect("an Older link");
    assert_eq!(next, format!("/deliveries?before={}", all[49]));
    let second = browser.get(&next);
    assert_eq!(
        delivery_links(&second.body),
        all[50..],
        "the rest, none twice"
    );
    assert!(older(&second.body).is_none(), "the last page");
    assert!(
        !second.body.contains("data-live-src"),
        "a later page keeps its place"
    );
    assert!(second.body.contains("← Newest"), "a way back to the newest");

    let only_mirror = browser.get("/deliveries?source=mirror");
    let mut expected = mirrored;
    expected.reverse();
    assert_eq!(delivery_links(&only_mirror.body), expected);
    assert!(
        only_mirror
            .body
            .contains(r#"data-live-src="/deliveries?source=mirror&amp;fragment=rows""#)
    );

    let rows = browser.get("/deliveries?fragment=rows");
    assert!(rows.body.starts_with("<tr>") && !rows.body.contains("<html"));
    assert_eq!(delivery_links(&rows.body), all[..50]);

    let mut stranger = Browser::new(&server);
    let refused = stranger.send("GET", "/deliveries?source=mirror", &[], None);
    assert_eq!(refused.status, 303);
    assert_eq!(
        refused.location.as_deref(),
        Some("/login?next=%2Fdeliveries%3Fsource%3Dmirror")
    );
}

#[test]
fn a_delivery_shows_its_headers_masked_its_payload_escaped_and_its_runs() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb, ""), ENV);
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

    let mut browser = Browser::signed_in(&server, VIEWER);
    let page = browser.get(&format!("/deliveries/{id}"));
    let html = &page.body;
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
    let live = browser.get(&format!("/deliveries/{id}?fragment=live"));
    assert!(!live.body.contains("<html") && live.body.contains(&run));

    let listed = browser.get("/deliveries");
    assert!(listed.body.contains(&format!(r#"href="/runs/{run}""#)));

    assert_eq!(
        browser.send("GET", "/deliveries/999999", &[], None).status,
        404
    );
    assert_eq!(
        browser.send("GET", "/deliveries/nope", &[], None).status,
        404
    );
}

#[test]
fn an_operator_replays_a_delivery_and_the_workflow_starts_again() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb, ""), ENV);
    let (id, first_run) = pushed_to_main(&server, "d-replay");

    let mut operator = Browser::signed_in(&server, OPERATOR);
    let page = operator.get(&format!("/deliveries/{id}"));
    let action = format!(r#"action="/deliveries/{id}/replay""#);
    assert!(page.body.contains(&action), "{}", page.body);
    assert!(page.body.contains("data-confirm="));
    let token = csrf(&page);
    let done = operator.post(
        &format!("/deliveries/{id}/replay"),
        &[("csrf", &token)],
        &[("sec-fetch-site", "same-origin")],
    );
    assert_eq!(done.status, 303, "{done:?}");
    assert_eq!(
        done.location.as_deref(),
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
    let after = operator.get(&format!("/deliveries/{id}?done=replayed"));
    assert!(after.body.contains("Replayed"), "{}", after.body);
    for run in &runs {
        assert!(after.body.contains(&format!(r#"href="/runs/{run}""#)));
    }
    assert!(server.log().contains("delivery replayed"));
}

#[test]
fn a_viewer_cannot_replay_and_refused_forms_change_nothing() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb, ""), ENV);
    let (id, _) = pushed_to_main(&server, "d-refuse");
    let replay = format!("/deliveries/{id}/replay");

    let mut viewer = Browser::signed_in(&server, VIEWER);
    let page = viewer.get(&format!("/deliveries/{id}"));
    assert!(!page.body.contains(&replay), "a viewer sees no Replay");
    let own = csrf(&page);
    let refused = viewer.post(&replay, &[("csrf", &own)], &[]);
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body.contains("viewer"), "{}", refused.body);

    let mut operator = Browser::signed_in(&server, OPERATOR);
    let token = csrf(&operator.get(&format!("/deliveries/{id}")));
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
                &[("origin", "https://evil.example")],
            ),
        ),
    ];
    for (why, page) in refusals {
        assert_eq!(page.status, 403, "{why}: {page:?}");
    }
    let mut stranger = Browser::new(&server);
    let anonymous = stranger.post(&replay, &[("csrf", &token)], &[]);
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
    let server = sb.serve(&gateway(&sb, &relays), ENV);
    let id = deliver(&server, "github", "issues", "d-relay", r#"{"n": 1}"#);
    processed_with(&server, id, 0);
    receiver.wait_for_requests(1, Duration::from_secs(20));
    server.wait_for(
        "/api/v1/relays/mirror-out/messages",
        VIEWER,
        "the message to be delivered",
        |m| m["messages"][0]["status"] == "delivered",
    );

    let mut viewer = Browser::signed_in(&server, VIEWER);
    let list = viewer.get("/deliveries");
    assert!(list.body.contains(r#"href="/relays""#), "a Relays link");
    let page = viewer.get("/relays");
    let page_of_viewer = viewer.get("/relays");
    for text in ["mirror-out", "ci", "healthy", "delivered", &receiver.url] {
        assert!(page.body.contains(text), "{text} missing:\n{}", page.body);
    }
    assert!(page.body.contains(&format!(r#"href="/deliveries/{id}""#)));
    assert!(!page.body.contains("/replay"), "a viewer sees no Replay");

    let mut operator = Browser::signed_in(&server, OPERATOR);
    let page = operator.get("/relays");
    let action = page
        .body
        .split(r#"action=""#)
        .map(|a| a.split('"').next().unwrap_or_default())
        .find(|a| a.starts_with("/relays/mirror-out/messages/msg_") && a.ends_with("/replay"))
        .unwrap_or_else(|| panic!("no Replay form:\n{}", page.body))
        .to_owned();
    let token = csrf(&page);
    let viewer_token = csrf(&page_of_viewer);
    let refused = viewer.post(&action, &[("csrf", &viewer_token)], &[]);
    assert_eq!(refused.status, 403);
    let done = operator.post(&action, &[("csrf", &token)], &[]);
    assert_eq!(done.status, 303, "{done:?}");
    assert_eq!(done.location.as_deref(), Some("/relays?done=replayed"));
    receiver.wait_for_requests(2, Duration::from_secs(20));
    eventually(
        Duration::from_secs(20),
        "the replay to be delivered",
        || {
            operator
                .get("/relays")
                .body
                .matches("status-delivered")
                .count()
                >= 1
                && server
                    .get("/api/v1/relays/mirror-out/messages", VIEWER)
                    .json()["messages"][0]["attempts"]
                    == 2
        },
    );
    assert_eq!(receiver.count(), 2, "the first send and the replay");
}
