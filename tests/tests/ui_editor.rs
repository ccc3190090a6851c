//! The workflow editor and the validation API over HTTP, against `baton serve`: every
//! problem of a broken workflow at once (the same as `baton validate` finds in its file),
//! an edited file downloaded with its comments that `baton validate` accepts and `baton run`
//! runs, and saving refused to whoever may not save.

use std::collections::BTreeSet;
use std::time::Duration;

use baton_tests::{ALL_ROLES_GATEWAY, Finished, Reply, Sandbox, Server, wait_with_deadline};
use serde_json::{Value, json};

const VIEWER: &str = "view-token-1";
const OPERATOR: &str = "oper-token-2";
const APPROVER: &str = "appr-token-3";

const ENV: &[(&str, &str)] = &[
    ("T_VIEWER", VIEWER),
    ("T_OPERATOR", OPERATOR),
    ("T_APPROVER", APPROVER),
    ("DEPLOY_TOKEN", "deploy-token"),
];

/// A workflow file as people write them: comments above, beside and inside.
const SHOP: &str = "\
# The shop's release.
# Ask #platform before changing it.
name: shop   # shown in the UI

on:
  - source: manual   # by hand for now

stages:
  # Builds the thing.
  build:
    uses: exec
    with:
      # one line is enough
      run: 'echo \"[COUT] version = 1.2\"'   # the version goes on

  # Tests it.
  test:
    needs: [build]
    uses: exec
    with: { run: 'echo tested' }
# End of the shop.
";

/// The gateway: the three tokens, a generic source, a Buildbot instance (never reached:
/// only its `with` is checked), and the shop workflow; `extra` is appended to the config.
fn gateway(sb: &Sandbox, extra: &str) -> String {
    sb.write(
        "baton.toml",
        &[
            ALL_ROLES_GATEWAY,
            r#"
[sources.deploy]
kind = "generic"
bearer = { token = { env = "DEPLOY_TOKEN" } }
event = { expr = ".type" }

[adapters.bb]
kind = "buildbot"
url = "http://127.0.0.1:9"
"#,
            extra,
        ]
        .concat(),
    );
    sb.write("workflows/shop.yaml", SHOP);
    sb.path().join("baton.toml").display().to_string()
}

/// A workflow with a problem of every kind the checks know, several at once.
const BROKEN: &str = "\
name: shop
on:
  - source: deploy
    event: release
  - source: github
stages:
  compile:
    uses: bb
    with: { properties: { a: 1 } }
    timout: 5m
  unit:
    uses: exec
    needs: [compile, lint]
    with:
      run: 'echo ${{ .stages.package.outputs.x }}'
  package:
    uses: jenkins
    needs: unit
    retry: { attempts: 0 }
  loop-a: { uses: exec, needs: [loop-b], with: { run: 'true' } }
  loop-b: { uses: exec, needs: [loop-a], with: { run: 'true' } }
";

/// A browser's session: the cookie and the page's form token.
struct Browser<'a> {
    server: &'a Server,
    agent: ureq::Agent,
    cookie: String,
    csrf: String,
}

impl<'a> Browser<'a> {
    /// Signs in with `token` as a browser does: the form, then the cookie it sets.
    fn sign_in(server: &'a Server, token: &str) -> Self {
        // Redirects are looked at, not followed: the cookie comes with the redirect.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut browser = Self {
            server,
            agent,
            cookie: String::new(),
            csrf: String::new(),
        };
        let reply = browser.send(
            "POST",
            "/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            &format!("token={token}&next=%2Fworkflows%2Fnew"),
        );
        assert_eq!(reply.status, 303, "{reply:?}");
        browser.cookie = reply
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_owned();
        let page = browser.get("/workflows/new");
        assert_eq!(page.status, 200, "{page:?}");
        browser.csrf = between(&page.body, "name=\"baton-csrf\" content=\"", "\"").to_owned();
        browser
    }

    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server.url));
        if !self.cookie.is_empty() {
            request = request.header("cookie", &self.cookie);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let mut response = self
            .agent
            .run(request.body(body.as_bytes().to_vec()).unwrap())
            .expect("an answer");
        Reply {
            status: response.status().as_u16(),
            headers: response
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                .collect(),
            body: response.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], "")
    }

    /// Posts a form with this session's form token (unless `fields` gives `csrf`).
    fn form(&self, path: &str, fields: &[(&str, &str)], headers: &[(&str, &str)]) -> Reply {
        let mut encoded = form_urlencoded::Serializer::new(String::new());
        if !fields.iter().any(|(k, _)| *k == "csrf") {
            encoded.append_pair("csrf", &self.csrf);
        }
        for (k, v) in fields {
            encoded.append_pair(k, v);
        }
        let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        self.send("POST", path, &all, &encoded.finish())
    }

    /// Posts to one of the editor's script routes, with the form token in its header.
    fn script(&self, path: &str, content_type: &str, body: &str) -> Reply {
        self.send(
            "POST",
            path,
            &[("content-type", content_type), ("x-csrf-token", &self.csrf)],
            body,
        )
    }
}

/// The text of `haystack` between `start` and the next `end`.
fn between<'h>(haystack: &'h str, start: &str, end: &str) -> &'h str {
    let from = haystack
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in {haystack}"))
        + start.len();
    let len = haystack[from..].find(end).expect("the end");
    &haystack[from..from + len]
}

/// An attribute value as maud escapes it, read back.
fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The editor's draft a page carries for its script.
fn draft_of_page(page: &str) -> Value {
    serde_json::from_str(&unescape(between(page, "data-draft=\"", "\""))).unwrap()
}

/// `baton ARGS` with the gateway's secrets set, as `baton serve` has them.
fn baton_with_secrets(sb: &Sandbox, args: &[&str]) -> Finished {
    let mut command = sb.baton(args);
    for (k, v) in ENV {
        command.env(k, v);
    }
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_with_deadline(child, Duration::from_secs(60))
}

/// `(path, message)` of each problem `baton validate` prints for `file`.
fn validate_cli(sb: &Sandbox, config: &str, file: &str) -> BTreeSet<(String, String)> {
    let out = baton_with_secrets(sb, &["validate", "-c", config, file]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let prefix = format!("{file}: ");
    out.stdout
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| {
            let (path, message) = rest.split_once(": ").unwrap();
            (path.to_owned(), message.to_owned())
        })
        .collect()
}

fn validate_api(server: &Server, token: &str, yaml: &str, editing: Option<&str>) -> Value {
    let path = match editing {
        Some(name) => format!("/api/v1/workflows/validate?editing={name}"),
        None => "/api/v1/workflows/validate".to_owned(),
    };
    let reply = server.request(
        "POST",
        &path,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/yaml"),
        ],
        Some(yaml.as_bytes()),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

#[test]
fn the_validation_api_finds_every_problem_at_once_as_baton_validate_does() {
    let sb = Sandbox::new();
    let config = gateway(&sb, "");
    let server = sb.serve(&config, ENV);
    let answer = validate_api(&server, VIEWER, BROKEN, None);
    assert_eq!(answer["valid"], false);
    let problems = answer["problems"].as_array().unwrap();
    let found: BTreeSet<(String, String)> = problems
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_owned(),
                p["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // The CLI, given the same text as a file, finds exactly these.
    sb.write("elsewhere/broken.yaml", BROKEN);
    let file = sb.path().join("elsewhere/broken.yaml");
    assert_eq!(found, validate_cli(&sb, &config, file.to_str().unwrap()));
    let paths: BTreeSet<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
    for path in [
        "name",
        "on[1].source",
        "stages.compile.timout",
        "stages.compile.with.builder",
        "stages.unit.needs[1]",
        "stages.package.uses",
        "stages.package.retry.attempts",
    ] {
        assert!(paths.contains(path), "{path} in {paths:#?}");
    }
    assert!(
        paths.iter().any(|p| p.starts_with("stages.loop-")),
        "a cycle: {paths:#?}"
    );
    let line = |path: &str| {
        problems
            .iter()
            .find(|p| p["path"] == path)
            .map(|p| p["line"].clone())
            .unwrap()
    };
    assert_eq!(line("name"), 1);
    assert_eq!(line("on[1].source"), 5);
    assert_eq!(line("stages.compile.timout"), 10);
    assert_eq!(line("stages.package.uses"), 17);
}

#[test]
fn a_valid_three_stage_workflow_validates() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb, ""), ENV);
    let three = "\
name: three
on: [{ source: deploy, event: release }, { source: manual }]
stages:
  build: { uses: exec, with: { run: 'echo \"[COUT] v = 1\"' } }
  check:
    needs: [build]
    uses: bb
    with: { builder: unit, properties: { v: '${{ .stages.build.outputs.v }}' } }
  ship:
    needs: [build, check]
    uses: approval
    with: { message: 'Ship ${{ .stages.build.outputs.v }}?' }
";
    for token in [VIEWER, OPERATOR, APPROVER] {
        let answer = validate_api(&server, token, three, None);
        assert_eq!(answer, json!({"valid": true, "problems": []}), "{token}");
    }
    // The web twin, with a session and its form token, answers the same.
    let browser = Browser::sign_in(&server, VIEWER);
    let reply = browser.script("/ui/editor/validate", "application/yaml", three);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), json!({"valid": true, "problems": []}));
}

#[test]
fn an_edited_file_downloads_with_its_comments_validates_and_runs() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb, ""), ENV);
    let browser = Browser::sign_in(&server, VIEWER);
    let page = browser.get("/workflows/shop/edit");
    assert_eq!(page.status, 200, "{page:?}");
    // Without the script, the page is the file in a form, escaped.
    assert!(page.body.contains("# Ask #platform before changing it."));
    assert!(
        page.body.contains("echo &quot;[COUT] version = 1.2&quot;"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("id=\"workflow-yaml\" name=\"yaml\""),
        "{}",
        page.body
    );
    assert!(page.body.contains("id=\"download-button\""));
    assert!(!page.body.contains("id=\"save-button\""), "saving is off");

    // The script's state: the draft, edited as a person would.
    let mut draft = draft_of_page(&page.body);
    assert_eq!(draft["name"], "shop");
    assert_eq!(
        draft["stages"][0]["with"],
        "# one line is enough\nrun: 'echo \"[COUT] version = 1.2\"'   # the version goes on\n"
    );
    draft["stages"][1]["with"] =
        json!("run: 'echo \"[COUT] tested = ${{ .stages.build.outputs.version }}\"'\n");
    draft["stages"].as_array_mut().unwrap().push(json!({
        "id": "report",
        "uses": "exec",
        "with": "run: 'echo \"[COUT] done = yes\"'",
        "needs": ["test"],
    }));
    let draft = draft.to_string();

    // What the script shows as the person types.
    let composed = browser.script(
        "/ui/editor/compose",
        "application/json",
        &json!({"draft": serde_json::from_str::<Value>(&draft).unwrap(), "base": "shop"})
            .to_string(),
    );
    assert_eq!(composed.status, 200, "{composed:?}");
    assert_eq!(composed.json()["comments_kept"], true);

    let download = browser.form(
        "/ui/editor/download",
        &[("draft", &draft), ("base", "shop"), ("yaml", "ignored")],
        &[],
    );
    assert_eq!(download.status, 200, "{download:?}");
    assert_eq!(
        download.header("content-disposition"),
        Some("attachment; filename=\"shop.yaml\"")
    );
    assert!(
        download
            .header("content-type")
            .unwrap()
            .starts_with("application/yaml")
    );
    let text = &download.body;
    assert_eq!(text, composed.json()["yaml"].as_str().unwrap());
    for kept in [
        "# The shop's release.\n# Ask #platform before changing it.\nname: shop   # shown in the UI\n",
        "  - source: manual   # by hand for now\n",
        "  # Builds the thing.\n  build:\n    uses: exec\n    with:\n      # one line is enough\n",
        "  # Tests it.\n  test:\n",
        "# End of the shop.\n",
    ] {
        assert!(text.contains(kept), "{kept:?} kept in:\n{text}");
    }
    assert!(
        text.find("  report:").unwrap() > text.find("  test:").unwrap(),
        "{text}"
    );

    // The file passes `baton validate` and runs, on its own (a folder without the config,
    // whose `shop` it would clash with).
    let lone = Sandbox::new();
    let file = lone.write("shop.yaml", text);
    let file = file.to_str().unwrap();
    let out = lone.run(&["validate", file]);
    assert_eq!(out.code, Some(0), "{}{}\n{text}", out.stdout, out.stderr);
    let run = lone.run(&["run", file, "--json"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.json()["status"], "succeeded");
    assert_eq!(run.stage("test")["outputs"]["tested"], json!(1.2));
    assert_eq!(run.stage("report")["outputs"]["done"], "yes");

    // Without the script: the text as typed, downloaded as is.
    let typed = "name: typed\nstages:\n  a: { uses: exec, with: { run: 'true' } }\n";
    let plain = browser.form("/ui/editor/download", &[("yaml", typed)], &[]);
    assert_eq!(plain.status, 200);
    assert_eq!(plain.body, typed);
    assert_eq!(
        plain.header("content-disposition"),
        Some("attachment; filename=\"typed.yaml\"")
    );
    // A download needs the form token too.
    let forged = browser.form(
        "/ui/editor/download",
        &[("csrf", "forged"), ("yaml", typed)],
        &[],
    );
    assert_eq!(forged.status, 403);
}

#[test]
fn the_page_validates_without_the_script() {
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb, ""), ENV);
    let browser = Browser::sign_in(&server, VIEWER);
    let page = browser.get("/workflows/new");
    assert!(
        page.body.contains("action=\"/workflows/new\""),
        "{}",
        page.body
    );
    assert!(page.body.contains("id=\"validate-button\""));
    assert!(page.body.contains("/ui/assets/editor.js?v="));
    let checked = browser.form(
        "/workflows/new",
        &[(
            "yaml",
            "name: x\nstages:\n  a: { uses: nope<b>, with: {} }\n",
        )],
        &[],
    );
    assert_eq!(checked.status, 200, "{checked:?}");
    assert!(
        checked.body.contains("<code>stages.a.uses</code>"),
        "{}",
        checked.body
    );
    assert!(
        checked.body.contains("unknown adapter `nope&lt;b&gt;`"),
        "{}",
        checked.body
    );
    assert!(!checked.body.contains("nope<b>"), "escaped");
    assert!(checked.body.contains("(line 3)"), "{}", checked.body);
    let fine = browser.form("/workflows/shop/edit", &[("yaml", SHOP)], &[]);
    assert!(fine.body.contains("No problems"), "{}", fine.body);
    // An unknown workflow has no editor.
    assert_eq!(browser.get("/workflows/nothing/edit").status, 404);
}

#[test]
fn saving_is_refused_unless_the_config_allows_it_and_the_caller_may() {
    // Off by default: even an operator with a good form is refused.
    let sb = Sandbox::new();
    let server = sb.serve(&gateway(&sb, ""), ENV);
    let operator = Browser::sign_in(&server, OPERATOR);
    let page = operator.get("/workflows/shop/edit");
    assert!(page.body.contains("id=\"save-off\""), "{}", page.body);
    let digest = unescape(between(&page.body, "name=\"base_digest\" value=\"", "\""));
    let edited = SHOP.replace("echo tested", "echo tested twice");
    let refused = operator.form(
        "/ui/editor/save",
        &[
            ("yaml", &edited),
            ("base", "shop"),
            ("base_digest", &digest),
        ],
        &[],
    );
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body.contains("save_workflows"), "{}", refused.body);
    assert_eq!(sb.read("workflows/shop.yaml"), SHOP);
    drop(server);

    let sb = Sandbox::new();
    let config = gateway(&sb, "\n[ui]\nsave_workflows = true\n");
    let server = sb.serve(&config, ENV);
    let viewer = Browser::sign_in(&server, VIEWER);
    let operator = Browser::sign_in(&server, OPERATOR);
    let page = operator.get("/workflows/shop/edit");
    assert!(page.body.contains("id=\"save-button\""), "{}", page.body);
    assert!(
        !viewer
            .get("/workflows/shop/edit")
            .body
            .contains("id=\"save-button\"")
    );
    let digest = unescape(between(&page.body, "name=\"base_digest\" value=\"", "\""));
    let fields = [
        ("yaml", edited.as_str()),
        ("base", "shop"),
        ("base_digest", &digest),
    ];

    // A viewer, a missing or foreign form token, another site: refused, file untouched.
    let refusals = [
        viewer.form("/ui/editor/save", &fields, &[]),
        operator.form(
            "/ui/editor/save",
            &[&fields[..], &[("csrf", "")]].concat(),
            &[],
        ),
        operator.form(
            "/ui/editor/save",
            &[&fields[..], &[("csrf", &viewer.csrf)]].concat(),
            &[],
        ),
        operator.form(
            "/ui/editor/save",
            &fields,
            &[("sec-fetch-site", "cross-site")],
        ),
        operator.form(
            "/ui/editor/save",
            &fields,
            &[("origin", "https://evil.example")],
        ),
    ];
    for (i, reply) in refusals.iter().enumerate() {
        assert_eq!(reply.status, 403, "refusal {i}: {reply:?}");
    }
    assert!(
        refusals[0].body.contains("needs operator"),
        "{}",
        refusals[0].body
    );
    assert_eq!(sb.read("workflows/shop.yaml"), SHOP);
    // A workflow with problems is not saved.
    let broken = operator.form(
        "/ui/editor/save",
        &[("yaml", BROKEN), ("base", "shop"), ("base_digest", &digest)],
        &[],
    );
    assert_eq!(broken.status, 422, "{broken:?}");
    assert!(broken.body.contains("Not saved"));
    assert_eq!(sb.read("workflows/shop.yaml"), SHOP);

    // The operator saves; the file keeps its comments, and the next start loads it.
    let saved = operator.form("/ui/editor/save", &fields, &[]);
    assert_eq!(saved.status, 200, "{saved:?}");
    assert!(
        saved.body.contains("takes effect when the server restarts"),
        "{}",
        saved.body
    );
    assert_eq!(sb.read("workflows/shop.yaml"), edited);
    // A second save from the page opened before: the file changed since.
    let stale = operator.form("/ui/editor/save", &fields, &[]);
    assert_eq!(stale.status, 409, "{stale:?}");

    // A new workflow goes beside the others, and never over a file already there.
    let fresh = "name: fresh\non: [{ source: manual }]\nstages:\n  a: { uses: exec, with: { run: 'echo fresh' } }\n";
    let created = operator.form("/ui/editor/save", &[("yaml", fresh)], &[]);
    assert_eq!(created.status, 200, "{created:?}");
    assert_eq!(sb.read("workflows/fresh.yaml"), fresh);
    let again = operator.form(
        "/ui/editor/save",
        &[("yaml", &fresh.replace("echo fresh", "echo other"))],
        &[],
    );
    assert_eq!(again.status, 409, "{again:?}");
    assert_eq!(sb.read("workflows/fresh.yaml"), fresh);
    let out = baton_with_secrets(&sb, &["validate", "-c", &config]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("ok: 2 workflows"), "{}", out.stdout);
}
