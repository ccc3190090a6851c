//! A GitHub App's check runs, from a real engine (SQLite store, in-process adapters) to a
//! model of GitHub's check-runs API that keeps state (`support/github_checks.rs`): one check
//! run per baton run, updated as the run moves, never two, whatever is lost on the way.

use std::time::Duration;

use baton_config::{GithubApp, GithubAuth};
use baton_core::{RunStatus, SecretRef};
use baton_report::RetryPolicy;
use serde_json::{Value, json};

#[path = "support/harness.rs"]
mod harness;

#[path = "support/github_checks.rs"]
mod github_checks;

use github_checks::{APP_ID, CheckRun, GithubChecks, Lost};
use harness::{GITHUB_TOKEN, Harness, PUBLIC_URL, SHA, fast_retries, github_source};

/// A push to octo/hello delivered by the App's installation.
fn push() -> Value {
    json!({
        "ref": "refs/heads/main", "after": SHA, "head_commit": {"id": SHA},
        "repository": {"full_name": "octo/hello"}, "installation": {"id": github_checks::INSTALLATION}
    })
}

/// The source `app` reporting as the model's App.
fn app_source(github: &GithubChecks) -> Vec<(&'static str, baton_config::SourceConfig)> {
    vec![(
        "app",
        github_source(
            github.api_url(),
            GithubAuth::App(GithubApp {
                app_id: APP_ID,
                private_key: SecretRef::File("app.pem".into()),
                installation_id: None,
            }),
        ),
    )]
}

/// The one check run the model holds; fails when it holds another number.
fn only(runs: &[CheckRun]) -> &CheckRun {
    assert_eq!(runs.len(), 1, "one check run for the run: {runs:#?}");
    &runs[0]
}

/// Whether the model's only check run shows `status` (and `conclusion`).
fn shows(runs: &[CheckRun], status: &str, conclusion: Option<&str>) -> bool {
    runs.first()
        .is_some_and(|r| r.status() == status && r.conclusion() == conclusion)
}

/// Waits until the model's check run is completed with `conclusion`; answers the check runs.
async fn completed(github: &GithubChecks, conclusion: &str) -> Vec<CheckRun> {
    github
        .until(&format!("the check run completed with {conclusion}"), |r| {
            shows(r, "completed", Some(conclusion))
        })
        .await
}

/// A run's one stage, which waits for a signal.
fn waits() -> Value {
    json!({"build": {"uses": "script", "with": {"result": "wait"}}})
}

/// Retries that give up on an answer after 0.7 s.
fn short_timeout() -> RetryPolicy {
    RetryPolicy {
        request_timeout: Duration::from_millis(700),
        ..fast_retries()
    }
}

/// Alice approves `stage`, and the run succeeds.
async fn approve_and_finish(h: &Harness, id: &str, stage: &str) {
    h.engine
        .signal(id, stage, json!({"decision": "approved", "by": "alice"}))
        .await
        .unwrap();
    assert_eq!(h.finish(id).await, RunStatus::Succeeded);
}

/// Three stages: a build with a link to its Jenkins build, an approval, a deploy with a link
/// to its Actions run.
fn build_approve_deploy() -> Value {
    json!({
        "build": {"uses": "script", "with": {"url": "https://jenkins.example.com/job/app/41/"}},
        "release": {"uses": "approval", "needs": ["build"],
                    "with": {"message": "Ship it?", "role": "release-managers"}},
        "deploy": {"uses": "script", "needs": ["release"],
                   "with": {"url": "https://github.com/octo/hello/actions/runs/9001"}}
    })
}

#[tokio::test]
async fn an_app_run_gets_one_check_run_that_follows_it_from_queued_to_success() {
    let github = GithubChecks::start().await;
    let h = Harness::stopped(app_source(&github), fast_retries()).await;
    let id = h
        .queue(build_approve_deploy(), &["app"], push(), "app")
        .await;

    // Before the engine runs: the run is queued, and so is its check run.
    let runs = github
        .until("the queued check run", |r| shows(r, "queued", None))
        .await;
    let queued = only(&runs);
    assert_eq!(queued.get("name"), "baton/ci");
    assert_eq!(queued.head_sha, SHA);
    assert_eq!(queued.repo, "octo/hello");
    assert_eq!(queued.get("external_id"), id.as_str());
    let link = format!("{PUBLIC_URL}/api/v1/runs/{id}");
    assert_eq!(queued.get("details_url"), link.as_str());
    assert_eq!(queued.title(), "Queued");

    // Running, and waiting for a person: in progress, the summary says who must approve.
    h.start_engine().await;
    let runs = github
        .until("the check run waiting for the approval", |r| {
            shows(r, "in_progress", None) && r[0].title().starts_with("Waiting for approval")
        })
        .await;
    let waiting = only(&runs);
    assert_eq!(
        waiting.title(),
        "Waiting for approval of release (role release-managers)"
    );
    let summary = waiting.summary();
    assert!(
        summary.contains("| ✅ | build | succeeded | 1 | the script said so | [jenkins.example.com](<https://jenkins.example.com/job/app/41/>) |"),
        "{summary}"
    );
    assert!(
        summary.contains("| ⏸️ | release | waiting for approval (role `release-managers`) | 1 |"),
        "{summary}"
    );
    assert!(
        summary.contains("| ⚪ | deploy | pending | – |"),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("`baton runs approve {id} release`")),
        "{summary}"
    );
    assert!(
        waiting.get("started_at").is_string(),
        "{:?}",
        waiting.fields
    );

    approve_and_finish(&h, &id, "release").await;
    let runs = completed(&github, "success").await;
    let done = only(&runs);
    assert_eq!(done.title(), "Succeeded");
    let summary = done.summary();
    for row in [
        "| ✅ | build | succeeded | 1 |",
        "| ✅ | release | succeeded | 1 | approved by alice |",
        "| ✅ | deploy | succeeded | 1 | the script said so | [github.com](<https://github.com/octo/hello/actions/runs/9001>) |",
    ] {
        assert!(summary.contains(row), "{row}\n{summary}");
    }
    assert!(
        summary.contains(&format!("[baton.example.com](<{link}>)")),
        "{summary}"
    );
    let text = done.fields["output"]["text"].as_str().unwrap();
    assert!(text.contains("| deploy | 1 | ✅ succeeded |"), "{text}");
    assert!(done.get("completed_at").is_string(), "{:?}", done.fields);

    // One create, then updates only, moving forward: queued, in progress, completed.
    assert_eq!(github.count("POST /repos/octo/hello/check-runs"), 1);
    assert_eq!(github.count("GET "), 0, "no lookups: {:#?}", github.seen());
    let states: Vec<&str> = done.states.iter().map(|(s, _)| s.as_str()).collect();
    let order = |s: &str| {
        ["queued", "in_progress", "completed"]
            .iter()
            .position(|x| *x == s)
    };
    assert!(
        states.windows(2).all(|w| order(w[0]) <= order(w[1])),
        "{states:?}"
    );
    assert_eq!(states.first(), Some(&"queued"));
    assert!(states.contains(&"in_progress"), "{states:?}");
    // No commit statuses beside it, one installation token for it all.
    assert!(github.statuses().is_empty(), "{:?}", github.statuses());
    assert_eq!(github.count("POST /app/installations/77/access_tokens"), 1);
}

#[tokio::test]
async fn a_failed_stage_concludes_failure_and_names_the_stage() {
    let github = GithubChecks::start().await;
    let h = Harness::new(app_source(&github), fast_retries()).await;
    let stages = json!({
        "build": {"uses": "script"},
        "test": {"uses": "script", "needs": ["build"],
                 "with": {"result": "fail", "url": "https://ci.example.com/test/7"}},
        "deploy": {"uses": "script", "needs": ["test"]}
    });
    let id = h.start(stages, &["app"], push(), "app").await;
    assert_eq!(h.finish(&id).await, RunStatus::Failed);
    let runs = completed(&github, "failure").await;
    let failed = only(&runs);
    assert!(failed.title().starts_with("Failed"), "{}", failed.title());
    let summary = failed.summary();
    assert!(
        summary.contains("| ❌ | test | failed | 1 | the script said so | [ci.example.com](<https://ci.example.com/test/7>) |"),
        "{summary}"
    );
    // The failure halts the run: the stage after it never starts.
    assert!(
        summary.contains("| 🚫 | deploy | cancelled | – | stage \\`test\\` failed |  |"),
        "{summary}"
    );
}

#[tokio::test]
async fn a_cancelled_run_concludes_cancelled() {
    let github = GithubChecks::start().await;
    let h = Harness::new(app_source(&github), fast_retries()).await;
    let stages = waits();
    let id = h.start(stages, &["app"], push(), "app").await;
    github
        .until("the running check run", |r| shows(r, "in_progress", None))
        .await;
    h.engine.cancel_run(&id).await.unwrap();
    assert_eq!(h.finish(&id).await, RunStatus::Cancelled);
    let runs = completed(&github, "cancelled").await;
    assert!(only(&runs).summary().contains("| 🚫 | build | cancelled |"));
}

#[tokio::test]
async fn a_restarted_reporter_goes_on_with_the_same_check_run() {
    let github = GithubChecks::start().await;
    let mut h = Harness::new(app_source(&github), fast_retries()).await;
    let id = h
        .start(build_approve_deploy(), &["app"], push(), "app")
        .await;
    github
        .until("the check run waiting for the approval", |r| {
            r.first().is_some_and(|r| r.title().starts_with("Waiting"))
        })
        .await;
    h.restart_reporter().await;
    approve_and_finish(&h, &id, "release").await;
    let runs = completed(&github, "success").await;
    assert!(
        only(&runs)
            .summary()
            .contains("| ✅ | deploy | succeeded |")
    );
    // The new reporter read the check run's id from the store: no lookup, no second create.
    assert_eq!(github.count("POST /repos/octo/hello/check-runs"), 1);
    assert_eq!(github.count("GET "), 0, "{:#?}", github.seen());
}

/// A failed run reopened by a stage retried by hand: GitHub keeps its check run completed,
/// so the output says the run goes on again, and the conclusion changes when it ends.
#[tokio::test]
async fn a_reopened_run_updates_its_completed_check_run_and_concludes_again() {
    let github = GithubChecks::start().await;
    let h = Harness::new(app_source(&github), fast_retries()).await;
    let stages = json!({
        "build": {"uses": "script", "with": {"result": "fail-once"}},
        "gate": {"uses": "script", "needs": ["build"], "with": {"result": "wait"}}
    });
    let id = h.start(stages, &["app"], push(), "app").await;
    assert_eq!(h.finish(&id).await, RunStatus::Failed);
    completed(&github, "failure").await;

    h.engine.retry_stage(&id, "build").await.unwrap();
    let runs = github
        .until(
            "the reopened run, its retried stage done, in the output",
            |r| {
                r.first().is_some_and(|r| {
                    r.title().starts_with("Running again: Running")
                        && r.summary().contains("| ✅ | build | succeeded | 2 |")
                })
            },
        )
        .await;
    let reopened = only(&runs);
    assert_eq!(
        (reopened.status(), reopened.conclusion()),
        ("completed", Some("failure"))
    );
    assert!(
        reopened.summary().starts_with("> A stage was retried"),
        "{}",
        reopened.summary()
    );

    approve_and_finish(&h, &id, "gate").await;
    let runs = completed(&github, "success").await;
    assert_eq!(only(&runs).title(), "Succeeded");
    assert_eq!(github.count("POST /repos/octo/hello/check-runs"), 1);
    assert!(!h.log.text().contains("giving up"), "{}", h.log.text());
}

/// A run whose first create is made at GitHub but whose answer is lost as `lost` says.
async fn a_lost_create(lost: Lost, policy: RetryPolicy) {
    let github = GithubChecks::start().await;
    github.lose_next_create(lost);
    let h = Harness::new(app_source(&github), policy).await;
    let stages =
        json!({"build": {"uses": "script"}, "test": {"uses": "script", "needs": ["build"]}});
    let id = h.start(stages, &["app"], push(), "app").await;
    assert_eq!(h.finish(&id).await, RunStatus::Succeeded);
    let runs = completed(&github, "success").await;
    only(&runs);
    assert_eq!(
        github.count("POST /repos/octo/hello/check-runs"),
        1,
        "{:#?}",
        github.seen()
    );
    assert!(
        github.count(&format!("GET /repos/octo/hello/commits/{SHA}/check-runs")) >= 1,
        "looked up before creating again: {:#?}",
        github.seen()
    );
    h.logged("will try again").await;
}

#[tokio::test]
async fn a_create_answered_with_a_bad_gateway_is_looked_up_not_made_again() {
    a_lost_create(Lost::BadGateway, fast_retries()).await;
}

#[tokio::test]
async fn a_create_whose_answer_comes_too_late_is_looked_up_not_made_again() {
    let policy = short_timeout();
    a_lost_create(Lost::Stall(Duration::from_secs(3)), policy).await;
}

#[tokio::test]
async fn a_create_answered_with_garbage_is_looked_up_not_made_again() {
    a_lost_create(Lost::Garbage, fast_retries()).await;
}

/// GitHub's secondary rate limit refuses an update with 429 and `Retry-After: 1`: no update
/// of that check run is sent sooner (the backoff alone would be 50 ms, and the run's other
/// changes wait too), then it lands.
#[tokio::test]
async fn a_rate_limited_update_waits_as_long_as_github_asks() {
    let github = GithubChecks::start().await;
    let policy = RetryPolicy {
        max_backoff: Duration::from_secs(5),
        ..fast_retries()
    };
    let h = Harness::new(app_source(&github), policy).await;
    let stages = waits();
    let id = h.start(stages, &["app"], push(), "app").await;
    github
        .until("the running check run", |r| shows(r, "in_progress", None))
        .await;
    github.throttle_next_update(1);
    approve_and_finish(&h, &id, "build").await;
    only(&completed(&github, "success").await);
    let log = h.logged("will try again").await;
    assert!(
        log.contains("HTTP 429: You have exceeded a secondary rate limit."),
        "{log}"
    );
    let throttled = github.throttled_at().expect("an update was refused");
    let next = github
        .seen_at()
        .into_iter()
        .find(|(at, s)| *at > throttled && s.starts_with("PATCH "))
        .map(|(at, _)| at)
        .unwrap();
    let waited = next - throttled;
    assert!(
        waited >= Duration::from_millis(950),
        "asked again after {waited:?}"
    );
}

/// A create that never reached GitHub: the lookup finds nothing (one page read) and the
/// check run is made then.
#[tokio::test]
async fn a_create_that_never_arrived_is_looked_up_once_then_made() {
    let github = GithubChecks::start().await;
    github.lose_next_create(Lost::Unmade);
    let h = Harness::new(app_source(&github), fast_retries()).await;
    let id = h
        .start(
            json!({"build": {"uses": "script"}}),
            &["app"],
            push(),
            "app",
        )
        .await;
    assert_eq!(h.finish(&id).await, RunStatus::Succeeded);
    let runs = completed(&github, "success").await;
    assert_eq!(only(&runs).get("external_id"), id.as_str());
    assert_eq!(github.count("POST /repos/octo/hello/check-runs"), 2);
    assert_eq!(github.count("GET "), 1, "{:#?}", github.seen());
}

/// Runs of one workflow on one commit each have their check run. A's create is made and its
/// answer comes too late; meanwhile B makes its own. A's lookup sees B's first (the newest)
/// and must take its own, by `external_id`.
#[tokio::test]
async fn a_lookup_takes_the_runs_own_check_run_not_another_of_its_name() {
    let github = GithubChecks::start().await;
    github.lose_next_create(Lost::Stall(Duration::from_secs(3)));
    let policy = short_timeout();
    let h = Harness::new(app_source(&github), policy).await;
    let a = h.start(waits(), &["app"], push(), "app").await;
    github.until("A's check run, made", |r| r.len() == 1).await;
    let b = h.start(waits(), &["app"], push(), "app").await;
    let of = |runs: &[CheckRun], run: &str| -> Vec<CheckRun> {
        runs.iter()
            .filter(|r| r.get("external_id") == run)
            .cloned()
            .collect()
    };
    let runs = github
        .until("A's check run updated after the lookup", |r| {
            r.len() == 2 && of(r, &a).first().is_some_and(|c| c.states.len() >= 2)
        })
        .await;
    assert!(github.count("GET ") >= 1, "{:#?}", github.seen());
    let (mine, theirs) = (of(&runs, &a), of(&runs, &b));
    assert_eq!((mine.len(), theirs.len()), (1, 1), "{runs:#?}");
    assert!(
        mine[0].title().starts_with("Running: "),
        "{}",
        mine[0].title()
    );
    for (run, stage) in [(&a, "build"), (&b, "build")] {
        approve_and_finish(&h, run, stage).await;
    }
    let runs = github
        .until("both check runs completed", |r| {
            r.len() == 2 && r.iter().all(|c| c.conclusion() == Some("success"))
        })
        .await;
    assert_eq!((of(&runs, &a).len(), of(&runs, &b).len()), (1, 1));
    assert_eq!(github.count("POST /repos/octo/hello/check-runs"), 2);
}

/// A commit with a hundred newer check runs of the name: the lookup reads the next page.
#[tokio::test]
async fn a_lookup_reads_past_a_full_page() {
    let github = GithubChecks::start().await;
    github.lose_next_create(Lost::Stall(Duration::from_secs(3)));
    let policy = short_timeout();
    let h = Harness::new(app_source(&github), policy).await;
    let id = h.start(waits(), &["app"], push(), "app").await;
    github.until("the check run, made", |r| r.len() == 1).await;
    github.seed(100, "octo/hello", SHA, "baton/ci");
    approve_and_finish(&h, &id, "build").await;
    let runs = github
        .until("the run's check run completed", |r| {
            r.first()
                .is_some_and(|c| c.conclusion() == Some("success") && c.states.len() >= 2)
        })
        .await;
    assert_eq!(runs.len(), 101, "no second check run for the run");
    assert_eq!(runs[0].get("external_id"), id.as_str());
    assert_eq!(github.count("POST /repos/octo/hello/check-runs"), 1);
    assert_eq!(github.count("GET "), 2, "{:#?}", github.seen());
}

/// GitHub stops taking the installation token (revoked, or ended before its time): octocrab
/// drops it on the 401 and sends the request again with a new one, so the update lands.
#[tokio::test]
async fn a_revoked_installation_token_is_replaced() {
    let github = GithubChecks::start().await;
    let h = Harness::new(app_source(&github), fast_retries()).await;
    let id = h.start(waits(), &["app"], push(), "app").await;
    github
        .until("the running check run", |r| shows(r, "in_progress", None))
        .await;
    github.revoke_tokens();
    approve_and_finish(&h, &id, "build").await;
    only(&completed(&github, "success").await);
    assert_eq!(github.count("POST /app/installations/77/access_tokens"), 2);
    let seen = github.seen();
    let refused_then_sent_again = seen
        .windows(3)
        .any(|w| w[0].starts_with("PATCH ") && w[1].contains("access_tokens") && w[2] == w[0]);
    assert!(refused_then_sent_again, "{seen:#?}");
    assert!(!h.log.text().contains("ghs_model"));
}

/// The reporter dies while its create waits for an answer: the next one finds the mark the
/// first left in the store, and looks before it creates.
#[tokio::test]
async fn a_reporter_killed_during_a_create_is_followed_by_a_lookup_not_a_second_create() {
    let github = GithubChecks::start().await;
    github.lose_next_create(Lost::Stall(Duration::from_secs(30)));
    let mut h = Harness::new(app_source(&github), fast_retries()).await;
    let stages = waits();
    let id = h.start(stages, &["app"], push(), "app").await;
    github
        .until("the create, made and not answered", |r| r.len() == 1)
        .await;
    h.restart_reporter().await;
    approve_and_finish(&h, &id, "build").await;
    let runs = completed(&github, "success").await;
    only(&runs);
    assert_eq!(github.count("POST /repos/octo/hello/check-runs"), 1);
    assert!(github.count("GET ") >= 1, "{:#?}", github.seen());
}

#[tokio::test]
async fn a_token_source_keeps_commit_statuses_and_gets_no_check_run() {
    let github = GithubChecks::start().await;
    github.accept_token(GITHUB_TOKEN);
    let h = Harness::new(
        vec![(
            "github",
            github_source(
                github.api_url(),
                GithubAuth::Token(SecretRef::Env("GITHUB_TOKEN".into())),
            ),
        )],
        fast_retries(),
    )
    .await;
    let stages = json!({"build": {"uses": "script"}});
    let id = h.start(stages, &["github"], push(), "github").await;
    assert_eq!(h.finish(&id).await, RunStatus::Succeeded);
    let final_status = |context: &str| {
        github
            .statuses()
            .iter()
            .rev()
            .find(|s| s["context"] == context)
            .map(|s| s["state"].clone())
    };
    for _ in 0..500 {
        if final_status("baton/ci") == Some(json!("success"))
            && final_status("baton/ci/build") == Some(json!("success"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(final_status("baton/ci"), Some(json!("success")));
    assert_eq!(final_status("baton/ci/build"), Some(json!("success")));
    let seen = github.seen();
    assert!(
        seen.iter()
            .all(|s| s == &format!("POST /repos/octo/hello/statuses/{SHA}")),
        "only statuses: {seen:#?}"
    );
    assert!(github.check_runs().is_empty());
}

/// The checks API refuses every write with `status`: logged with its reason and dropped;
/// the run is not affected.
async fn refused(status: u16, message: &str, policy: RetryPolicy) -> (GithubChecks, String) {
    let github = GithubChecks::start().await;
    github.refuse_check_runs(status, message);
    let h = Harness::new(app_source(&github), policy).await;
    let stages = json!({"build": {"uses": "script"}});
    let id = h.start(stages, &["app"], push(), "app").await;
    assert_eq!(h.finish(&id).await, RunStatus::Succeeded);
    let log = h.logged("giving up").await;
    assert!(log.contains(&format!("HTTP {status}: {message}")), "{log}");
    assert!(log.contains("what=\"check run\""), "{log}");
    assert!(!log.contains("ghs_model"), "no token in the log:\n{log}");
    assert!(github.check_runs().is_empty());
    (github, log)
}

#[tokio::test]
async fn a_forbidden_checks_api_is_retried_then_dropped() {
    let policy = RetryPolicy {
        first_retry: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        give_up_after: Duration::from_millis(400),
        request_timeout: Duration::from_secs(5),
    };
    let (github, log) = refused(403, "Resource not accessible by integration", policy).await;
    assert!(log.contains("will try again"), "{log}");
    assert!(github.count("POST /repos/octo/hello/check-runs") >= 2);
}

#[tokio::test]
async fn an_unprocessable_check_run_is_dropped_at_once() {
    let (_github, log) = refused(422, "No commit found for SHA", fast_retries()).await;
    assert!(!log.contains("will try again"), "{log}");
}
