//! Durable reporting: commit statuses waiting for a retry when `baton serve` is killed are
//! posted after it restarts, and none is posted twice once it landed.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_tests::{FakeGithub, Sandbox, StatusPost, eventually};
use serde_json::json;

const VIEWER: &str = "view-token-1";
const SECRET: &str = "webhook-secret";
const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";
const CONTEXTS: [&str; 3] = ["baton/ci", "baton/ci/build", "baton/ci/test"];

fn config(sb: &Sandbox, api_url: &str) -> String {
    sb.write(
        "baton.toml",
        &format!(
            r#"
workflows = ["workflows/*.yaml"]

[api]
tokens = [{{ name = "vera", token = {{ env = "T_VIEWER" }}, role = "viewer" }}]

[sources.github]
kind = "github"
secret = {{ env = "GH_SECRET" }}
token = {{ env = "GH_TOKEN" }}
api_url = "{api_url}"
"#
        ),
    );
    sb.write(
        "workflows/ci.yaml",
        r#"
name: ci
on: [{ source: github, event: push }]
stages:
  build: { uses: exec, with: { run: 'true' } }
  test: { uses: exec, needs: [build], with: { run: 'true' } }
report: [github]
"#,
    );
    sb.path().join("baton.toml").display().to_string()
}

const ENV: &[(&str, &str)] = &[
    ("T_VIEWER", VIEWER),
    ("GH_SECRET", SECRET),
    ("GH_TOKEN", "ghp_test"),
];

/// The posts of each context, in the order they came.
fn by_context(posts: &[StatusPost]) -> BTreeMap<String, Vec<StatusPost>> {
    let mut out: BTreeMap<String, Vec<StatusPost>> = BTreeMap::new();
    for post in posts {
        out.entry(post.context().to_owned())
            .or_default()
            .push(post.clone());
    }
    out
}

#[test]
fn statuses_waiting_for_a_retry_are_posted_after_a_sigkill_and_restart() {
    let github = FakeGithub::start(502);
    let sb = Sandbox::new();
    let config = config(&sb, &github.url);
    let server = sb.serve(&config, ENV);
    let push = json!({
        "ref": "refs/heads/main", "after": SHA, "head_commit": {"id": SHA},
        "repository": {"full_name": "octo/hello"}
    })
    .to_string();
    let accepted = server.github("github", SECRET, "push", "d-1", &push);
    assert_eq!(accepted.status, 202, "{accepted:?}");
    server.wait_for("/api/v1/runs", VIEWER, "the run to finish", |r| {
        r["runs"]
            .as_array()
            .is_some_and(|runs| runs.len() == 1 && runs[0]["status"] == "succeeded")
    });
    eventually(Duration::from_secs(30), "a 502 for every context", || {
        by_context(&github.posts()).len() == CONTEXTS.len()
    });
    server.kill();
    let before = github.posts();
    assert!(
        before.iter().all(|p| p.answered == 502),
        "GitHub took nothing before the kill: {before:#?}"
    );

    github.answer(201);
    let server = sb.serve(&config, ENV);
    eventually(
        Duration::from_secs(60),
        "every context's final status taken after the restart",
        || {
            let taken = by_context(&github.posts());
            CONTEXTS.iter().all(|context| {
                taken.get(*context).is_some_and(|posts| {
                    posts
                        .iter()
                        .any(|p| p.answered == 201 && p.state() == "success")
                })
            })
        },
    );
    // Give a duplicate the time to show: the first retry is due a second after a failure.
    std::thread::sleep(Duration::from_secs(3));
    let all = github.posts();
    for (context, posts) in by_context(&all) {
        let taken: Vec<&StatusPost> = posts.iter().filter(|p| p.answered == 201).collect();
        // The run had finished before the kill: its waiting statuses were superseded by
        // the final ones, which alone are posted, each once.
        assert_eq!(
            taken.iter().map(|p| p.state()).collect::<Vec<_>>(),
            ["success"],
            "{context}: {all:#?}"
        );
        for post in &posts {
            assert_eq!(post.path, format!("/repos/octo/hello/statuses/{SHA}"));
        }
    }
    let log = server.log();
    assert!(!log.contains("giving up"), "nothing was dropped:\n{log}");
}
