//! The `travis` adapter over HTTP against a fake Travis that keeps state: one story per
//! path and per awkward answer.

mod support;

use std::time::{Duration, Instant};

use baton_adapter_kit::harness::poll_at_hints;
use baton_core::{AttemptKey, ExternalState, SourceDelivery};
use baton_forge_fakes::travis::{BuildPlan, Fault, JobPlan, Scope};
use serde_json::{Value, json};
use support::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A log that prints outputs between the markers, as a `.travis.yml` script would.
fn log_with(lines: &str) -> String {
    format!(
        "travis_fold:start:install\r\u{1b}[0K$ ./install.sh\ntravis_fold:end:install\r\u{1b}[0K\n$ ./release.sh\nbuilding\n$ echo BATON-OUTPUTS-BEGIN; cat out.env; echo BATON-OUTPUTS-END\n\u{1b}[32mBATON-OUTPUTS-BEGIN\u{1b}[0m\n{lines}BATON-OUTPUTS-END\n\nDone. Your build exited with 0.\n"
    )
}

#[tokio::test]
async fn a_request_becomes_a_build_that_passes_and_its_log_gives_outputs() {
    let lab = Lab::start().await;
    lab.travis.repo(REPO).plan(
        BuildPlan::new(vec![
            JobPlan::passes().runs_for(ms(300)).log(&log_with(
                "IMAGE=registry.example.com/app:1.4\nDIGEST=sha256:ab\n",
            )),
            JobPlan::passes().runs_for(ms(200)),
        ])
        .build_after(ms(100), ms(400)),
    );
    let travis = lab.adapter(json!({}));
    let k = key("build");
    let input = json!({"branch": "release", "sha": "0123abc", "config": {"env": {"global": ["V=1.4"]}},
                       "merge_mode": "deep_merge_append", "message": "ship 1.4"});
    let mut external = start(travis.as_ref(), &k, input).await;
    // The fake keeps what it was sent: the request exists only as baton shaped it.
    let request = lab.request(0);
    assert_eq!(request.repo, REPO);
    assert_eq!(request.branch, "release");
    assert_eq!(request.sha.as_deref(), Some("0123abc"));
    assert_eq!(request.config, json!({"env": {"global": ["V=1.4"]}}));
    assert_eq!(request.merge_mode.as_deref(), Some("deep_merge_append"));
    assert_eq!(
        request.message.as_deref(),
        Some("ship 1.4 [baton-attempt run1/build/1]")
    );
    assert_eq!(external.id, format!("request:{}", request.id));
    assert!(
        external
            .url
            .as_deref()
            .unwrap()
            .ends_with("/octo-org/app/requests"),
        "{external:?}"
    );

    let seen = poll_while(travis.as_ref(), &k, &mut external, |_| false).await;
    let first = &seen[0];
    assert_eq!(first.state, ExternalState::Queued);
    assert!(
        first
            .message
            .as_deref()
            .unwrap()
            .contains("no build for request"),
        "{first:?}"
    );
    let raws: Vec<_> = seen.iter().map(|o| o.raw.clone().unwrap()).collect();
    assert!(raws.contains(&"started".to_owned()), "{raws:?}");
    let end = seen.last().unwrap();
    assert_eq!(end.state, ExternalState::Succeeded { warnings: false });
    for o in &seen[..seen.len() - 1] {
        assert!(o.next_poll.unwrap() <= ms(200), "{o:?}");
    }
    // The poll that saw the build replaced the reference with it.
    let build = lab.request(0).build.expect("the request has its build");
    assert_eq!(external.id, build.to_string());
    assert!(
        external
            .url
            .as_deref()
            .unwrap()
            .ends_with(&format!("/octo-org/app/builds/{build}"))
    );

    let outputs = travis.outputs(&k, &external).await.unwrap();
    assert_eq!(outputs["id"], json!(build.to_string()));
    assert_eq!(outputs["url"], json!(external.url));
    assert_eq!(outputs["number"], json!("1"));
    assert_eq!(outputs["state"], json!("passed"));
    assert_eq!(outputs["jobs"], json!({"1.1": "passed", "1.2": "passed"}));
    assert_eq!(outputs["IMAGE"], json!("registry.example.com/app:1.4"));
    assert_eq!(outputs["DIGEST"], json!("sha256:ab"));
    // Nothing secret is stored in the reference or the outputs.
    assert!(!serde_json::to_string(&external).unwrap().contains(TOKEN));
    assert!(!Value::Object(outputs).to_string().contains(TOKEN));

    let logs = travis.logs(&k, &external).await.unwrap();
    let names: Vec<_> = logs.links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "build",
            "job 1.1",
            "job 1.1 log.txt",
            "job 1.2",
            "job 1.2 log.txt"
        ]
    );
    assert!(logs.links[2].url.ends_with("/log.txt"), "{logs:?}");
    assert_eq!(logs.text, None);
}

#[tokio::test]
async fn without_a_message_the_workflow_names_the_request_and_the_key_is_always_in_it() {
    let lab = Lab::start().await;
    let travis = lab.adapter(json!({}));
    start(travis.as_ref(), &key("plain"), json!(null)).await;
    let request = lab.request(0);
    assert_eq!(request.branch, "main", "Travis's default branch");
    assert_eq!(
        request.message.as_deref(),
        Some("baton: wf [baton-attempt run1/plain/1]")
    );
    assert_eq!((request.sha, request.merge_mode), (None, None));
    assert_eq!(request.config, Value::Null);
}

#[tokio::test]
async fn the_api_wants_its_version_header_and_the_slug_as_one_segment() {
    let lab = Lab::start().await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, version: bool| {
        let mut call = http
            .request(method, format!("{}{path}", lab.served.url))
            .header("Authorization", format!("token {TOKEN}"));
        if version {
            call = call.header("Travis-API-Version", "3");
        }
        call.send()
    };
    let get = reqwest::Method::GET;
    // Without the header the legacy API answers, and it has no such route.
    let legacy = call(get.clone(), "/repo/octo-org%2Fapp/requests", false)
        .await
        .unwrap();
    assert_eq!(legacy.status(), 404);
    assert!(legacy.json::<Value>().await.is_err(), "not a v3 answer");
    let v3 = call(get.clone(), "/repo/octo-org%2Fapp/requests", true)
        .await
        .unwrap();
    assert_eq!(v3.status(), 200);
    assert_eq!(v3.json::<Value>().await.unwrap()["@type"], "requests");
    // Below /v3 the header is not needed.
    let prefixed = call(get.clone(), "/v3/repo/octo-org%2Fapp/requests", false)
        .await
        .unwrap();
    assert_eq!(prefixed.status(), 200);
    // An unencoded slug is two segments, which no route has.
    for method in [get, reqwest::Method::POST] {
        let unencoded = call(method, "/repo/octo-org/app/requests", true)
            .await
            .unwrap();
        assert_eq!(unencoded.status(), 404);
        assert_eq!(
            unencoded.json::<Value>().await.unwrap()["error_type"],
            "not_found"
        );
    }
    assert_eq!(lab.travis.requests_created(), 0);
    // The adapter sends the header and encodes the slug, so it creates the request.
    let travis = lab.adapter(json!({}));
    start(travis.as_ref(), &key("s"), json!({})).await;
    assert_eq!(lab.travis.requests_created(), 1);
    // A repository Travis does not have is explained.
    let elsewhere = lab.adapter(json!({"repo": "octo-org/nothing"}));
    expect_error(
        try_start(elsewhere.as_ref(), &key("t"), json!({})).await,
        "NotFound",
        "check `repo` (`octo-org/nothing`)",
    );
}

#[tokio::test]
async fn a_rejected_request_fails_the_stage_with_travis_reason() {
    let lab = Lab::start().await;
    let reason = "Branch \"gh-pages\" not included per configuration.";
    lab.travis
        .repo(REPO)
        .plan_for_branch("gh-pages", BuildPlan::default().rejected(reason));
    let travis = lab.adapter(json!({}));
    let k = key("pages");
    let mut external = start(travis.as_ref(), &k, json!({"branch": "gh-pages"})).await;
    let end = poll_to_end(travis.as_ref(), &k, &mut external).await;
    assert_eq!(end.state, ExternalState::Errored);
    assert_eq!(end.raw.as_deref(), Some("rejected"));
    let message = end.message.unwrap();
    assert!(
        message.contains("Travis rejected build request"),
        "{message}"
    );
    assert!(message.contains(reason), "{message}");
    assert!(lab.travis.builds().is_empty());
    expect_error(
        travis.outputs(&k, &external).await,
        "NotFound",
        "made no build",
    );
    // Nothing ran, so nothing is left to cancel.
    let before = lab.travis.meter().total();
    travis.cancel(&k, &external).await.unwrap();
    assert_eq!(lab.travis.meter().total(), before);
    let logs = travis.logs(&k, &external).await.unwrap();
    assert_eq!(logs.links[0].name, "requests");
}

#[tokio::test]
async fn a_request_that_never_gets_a_build_fails_after_request_timeout_build() {
    let lab = Lab::start().await;
    lab.travis
        .repo(REPO)
        .plan_for_branch("stuck", BuildPlan::default().no_build());
    let travis = lab.adapter(json!({"poll_max": "5s", "poll_initial": "5s"}));
    let k = key("stuck");
    let began = Instant::now();
    let mut external = start(
        travis.as_ref(),
        &k,
        json!({"branch": "stuck", "request_timeout_build": "700ms"}),
    )
    .await;
    let first = poll_once(travis.as_ref(), &k, &mut external).await.unwrap();
    assert_eq!(first.state, ExternalState::Queued);
    // The hint is cut to the end of the wait for a build, not the 5 s poll_initial.
    assert!(first.next_poll.unwrap() <= ms(800), "{first:?}");
    tokio::time::sleep(first.next_poll.unwrap()).await;
    let end = poll_to_end(travis.as_ref(), &k, &mut external).await;
    let waited = began.elapsed();
    assert_eq!(end.state, ExternalState::Errored);
    let message = end.message.unwrap();
    assert!(
        message.contains("made no build within 700ms (request_timeout_build"),
        "{message}"
    );
    assert!(message.contains("travis-ci/travis-api#210"), "{message}");
    assert!(
        waited >= ms(700) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // The instance's own default applies where the stage sets none.
    let k2 = key("stuck-default");
    let quick = lab.adapter(json!({"request_timeout_build": "300ms"}));
    let mut external = start(quick.as_ref(), &k2, json!({"branch": "stuck"})).await;
    let end = poll_to_end(quick.as_ref(), &k2, &mut external).await;
    assert!(end.message.unwrap().contains("within 300ms"));
}

#[tokio::test]
async fn a_spent_request_limit_sends_nothing_and_says_until_when() {
    let lab = Lab::start().await;
    lab.travis.repo(REPO).limit(2, Duration::from_secs(3600));
    let travis = lab.adapter(json!({}));
    start(travis.as_ref(), &key("one"), json!({})).await;
    start(travis.as_ref(), &key("two"), json!({})).await;
    // Travis answered `remaining_requests: 1` (counted before the second): none are left.
    let before = lab.travis.meter().total();
    let refused = expect_error(
        try_start(travis.as_ref(), &key("three"), json!({})).await,
        "Throttled",
        "all are spent",
    );
    let message = refused.to_string();
    for needle in [
        "repository `octo-org/app` on Travis `travis`",
        "`remaining_requests` counts before the new request",
        ". The oldest of the 2 Travis lists in the window",
        "in 1h",
        "sends nothing before",
    ] {
        assert!(message.contains(needle), "`{needle}` is not in: {message}");
    }
    let wait = refused.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3602),
        "{wait:?}"
    );
    // It listed the recent requests (one read) and created nothing.
    assert_eq!(lab.travis.meter().total() - before, 1);
    assert_eq!(lab.travis.requests_created(), 2);
    // Asked again, by this instance or another for the same repository, it sends nothing.
    let other = lab.adapter(json!({}));
    for adapter in [&travis, &other] {
        let before = lab.travis.meter().total();
        let again = expect_error(
            try_start(adapter.as_ref(), &key("three"), json!({})).await,
            "Throttled",
            "all are spent",
        );
        assert!(again.retry_after().unwrap() <= wait);
        assert_eq!(lab.travis.meter().total(), before);
    }
    assert_eq!(lab.travis.requests_created(), 2);
}

#[tokio::test]
async fn a_429_from_the_limit_is_explained_and_the_window_is_waited_out() {
    let lab = Lab::start().await;
    lab.travis.repo(REPO).limit(1, Duration::from_secs(2));
    // Another tool spends the window; baton does not know.
    let spent = reqwest::Client::new()
        .post(format!("{}/repo/octo-org%2Fapp/requests", lab.served.url))
        .header("Travis-API-Version", "3")
        .header("Authorization", format!("token {TOKEN}"))
        .json(&json!({"request": {"branch": "main"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(spent.status(), 202);
    let travis = lab.adapter(json!({}));
    let k = key("late");
    let refused = expect_error(
        try_start(travis.as_ref(), &k, json!({})).await,
        "Throttled",
        "429 request_limit_reached: request limit reached for resource",
    );
    assert!(
        refused
            .to_string()
            .contains("may create 1 API requests per 2s"),
        "{refused}"
    );
    let wait = refused.retry_after().unwrap();
    assert!(
        wait >= ms(900) && wait <= Duration::from_secs(4),
        "{wait:?}"
    );
    assert_eq!(lab.travis.requests_created(), 1);
    // Known spent until then: asking again sends nothing.
    let before = lab.travis.meter().total();
    expect_error(
        try_start(travis.as_ref(), &k, json!({})).await,
        "Throttled",
        "429",
    );
    assert_eq!(lab.travis.meter().total(), before);
    // Once the window frees, the request goes out.
    tokio::time::sleep(wait).await;
    start(travis.as_ref(), &k, json!({})).await;
    assert_eq!(lab.travis.requests_created(), 2);
    // That one answered `remaining_requests: 1`, so none are left by baton's count; once
    // the recent requests show the window (2 s, as the 429 said) empty, the next goes out.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    start(travis.as_ref(), &key("later"), json!({})).await;
    assert_eq!(lab.travis.requests_created(), 3);
}

#[tokio::test]
async fn errored_and_failed_are_told_apart_with_the_broken_jobs_log_tails() {
    let lab = Lab::start().await;
    let mut long = String::new();
    // Over 2 MB: only the end of the log is read, and its last lines shown.
    for i in 0..200_000 {
        long.push_str(&format!("test {i} ok\n"));
    }
    long.push_str("FAILED: 3 tests failed\n");
    lab.travis
        .repo(REPO)
        .plan_for_branch(
            "tests-fail",
            BuildPlan::new(vec![JobPlan::passes(), JobPlan::fails(&long)]).build_after(ms(0), ms(0)),
        )
        .plan_for_branch(
            "install-breaks",
            BuildPlan::new(vec![JobPlan::errors(
                "$ bundle install\nCould not reach rubygems.org\nThe command \"bundle install\" failed 3 times.\n",
            )])
            .build_after(ms(0), ms(0)),
        );
    let travis = lab.adapter(json!({}));
    let (kf, ke) = (key("failing"), key("erroring"));
    let mut failing = start(travis.as_ref(), &kf, json!({"branch": "tests-fail"})).await;
    let mut erroring = start(travis.as_ref(), &ke, json!({"branch": "install-breaks"})).await;
    let failed = poll_to_end(travis.as_ref(), &kf, &mut failing).await;
    let errored = poll_to_end(travis.as_ref(), &ke, &mut erroring).await;
    assert_eq!(failed.state, ExternalState::Failed);
    assert_eq!(errored.state, ExternalState::Errored);
    let failed_message = failed.message.unwrap();
    assert!(failed_message.starts_with("build #"), "{failed_message}");
    assert!(failed_message.contains(" failed ("), "{failed_message}");
    assert!(failed_message.contains(".2 failed ("), "{failed_message}");
    assert!(
        failed_message.contains("FAILED: 3 tests failed"),
        "{failed_message}"
    );
    assert!(
        failed_message.contains("test 199999 ok") && !failed_message.contains("test 5 ok\n"),
        "{failed_message}"
    );
    assert!(!failed_message.contains("not a test failure"));
    let errored_message = errored.message.unwrap();
    assert!(errored_message.contains("errored"), "{errored_message}");
    assert!(
        errored_message.contains("not a test failure"),
        "{errored_message}"
    );
    assert!(
        errored_message.contains("The command \"bundle install\" failed 3 times."),
        "{errored_message}"
    );
    let outputs = travis.outputs(&kf, &failing).await.unwrap();
    let jobs = outputs["jobs"].as_object().unwrap();
    let states: Vec<_> = jobs.values().cloned().collect();
    assert_eq!(states, [json!("passed"), json!("failed")]);
    assert_eq!(outputs["state"], json!("failed"));
    let logs = travis.logs(&kf, &failing).await.unwrap();
    let text = logs.text.unwrap();
    assert!(
        text.contains("(failed) <==") && text.contains("FAILED: 3 tests failed"),
        "{text}"
    );
}

#[tokio::test]
async fn a_cancelled_build_ends_canceled_and_a_finished_one_stays_as_it_ended() {
    let lab = Lab::start().await;
    lab.travis.repo(REPO).plan_for_branch(
        "soak",
        BuildPlan::new(vec![
            JobPlan::passes().runs_for(ms(100)),
            JobPlan::passes().runs_for(Duration::from_secs(600)),
        ])
        .build_after(ms(0), ms(0))
        .cancel_takes(ms(300)),
    );
    let travis = lab.adapter(json!({}));
    let k = key("soak");
    let mut external = start(travis.as_ref(), &k, json!({"branch": "soak"})).await;
    poll_while(travis.as_ref(), &k, &mut external, |o| {
        o.raw.as_deref() == Some("started")
    })
    .await;
    tokio::time::sleep(ms(200)).await;
    travis.cancel(&k, &external).await.unwrap();
    let end = poll_to_end(travis.as_ref(), &k, &mut external).await;
    assert_eq!(end.state, ExternalState::Cancelled);
    assert!(end.message.unwrap().contains("was cancelled"));
    let build = lab.build(&external.id);
    assert_eq!(build.state, "canceled");
    let states: Vec<_> = build.jobs.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        states,
        ["passed", "canceled"],
        "the finished job stays passed"
    );
    // Cancelling what ended sends nothing and changes nothing.
    let before = lab.travis.meter().total();
    travis.cancel(&k, &external).await.unwrap();
    assert_eq!(lab.travis.meter().total(), before);

    // A build that passed, cancelled late through a reference stored before its end.
    let k2 = key("done");
    let mut done = start(travis.as_ref(), &k2, json!({})).await;
    let end = poll_to_end(travis.as_ref(), &k2, &mut done).await;
    assert_eq!(end.state, ExternalState::Succeeded { warnings: false });
    let built = done.id.clone();
    let mut stale = done.clone();
    stale.data["end"] = Value::Null;
    let unended = stale.clone();
    travis.cancel(&k2, &stale).await.unwrap();
    assert_eq!(lab.build(&built).state, "passed");
    let again = poll_once(travis.as_ref(), &k2, &mut stale).await.unwrap();
    assert_eq!(again.state, ExternalState::Succeeded { warnings: false });
    // A Travis that answers 409 (nothing left to cancel) is taken at its word.
    lab.travis.fault(1, Scope::Any, Fault::Status(409));
    let before = lab.travis.meter().total();
    travis.cancel(&k2, &unended).await.unwrap();
    assert_eq!(lab.travis.meter().total() - before, 1);
}

#[tokio::test]
async fn a_cancel_before_the_build_exists_cancels_it_once_it_appears() {
    let lab = Lab::start().await;
    lab.travis.repo(REPO).plan(
        BuildPlan::new(vec![JobPlan::passes().runs_for(Duration::from_secs(600))])
            .build_after(ms(100), ms(1200))
            .cancel_takes(ms(100)),
    );
    let travis = lab.adapter(json!({}));
    let k = key("early");
    let external = start(travis.as_ref(), &k, json!({})).await;
    let said = expect_error(
        travis.cancel(&k, &external).await,
        "Transient",
        "has made no build for request",
    );
    assert!(
        said.to_string()
            .contains("cancels its build as soon as one appears"),
        "{said}"
    );
    let began = Instant::now();
    loop {
        let builds = lab.travis.builds();
        if builds.first().is_some_and(|b| b.state == "canceled") {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "the build was not cancelled: {builds:?}"
        );
        tokio::time::sleep(ms(50)).await;
    }
}

#[tokio::test]
async fn outputs_printed_by_two_jobs_must_agree_and_bad_lines_are_named() {
    let lab = Lab::start().await;
    let job = |lines: &str| JobPlan::passes().runs_for(ms(50)).log(&log_with(lines));
    let plan = |jobs| BuildPlan::new(jobs).build_after(ms(0), ms(0));
    lab.travis
        .repo(REPO)
        .plan_for_branch("disagree", plan(vec![job("IMAGE=a\n"), job("IMAGE=b\n")]))
        .plan_for_branch(
            "agree",
            plan(vec![job("IMAGE=a\n"), job("IMAGE=a\nTAG=7\n")]),
        )
        .plan_for_branch(
            "garbled",
            plan(vec![job("IMAGE=a\nwarning: disk almost full\n")]),
        );
    let travis = lab.adapter(json!({}));
    let mut ended = Vec::new();
    for branch in ["disagree", "agree", "garbled"] {
        let k = key(branch);
        let mut external = start(travis.as_ref(), &k, json!({"branch": branch})).await;
        let end = poll_to_end(travis.as_ref(), &k, &mut external).await;
        assert_eq!(end.state, ExternalState::Succeeded { warnings: false });
        ended.push((k, external));
    }
    let conflict = expect_error(
        travis.outputs(&ended[0].0, &ended[0].1).await,
        "Invalid",
        "both print output `IMAGE`, with different values (`a` and `b`)",
    );
    assert!(conflict.to_string().contains(".1 and "), "{conflict}");
    let agreed = travis.outputs(&ended[1].0, &ended[1].1).await.unwrap();
    assert_eq!(
        (agreed["IMAGE"].clone(), agreed["TAG"].clone()),
        (json!("a"), json!("7"))
    );
    expect_error(
        travis.outputs(&ended[2].0, &ended[2].1).await,
        "Invalid",
        "line 8: expected `KEY=value`",
    );
}

#[tokio::test]
async fn only_the_last_mib_of_a_log_is_searched_for_outputs() {
    let lab = Lab::start().await;
    let mut log = String::new();
    for i in 0..5_000 {
        log.push_str(&format!("$ ./prepare.sh {i:08}\n"));
    }
    log.push_str("BATON-OUTPUTS-BEGIN\nEARLY=1\n");
    // 1.26 MB of the shell's echo, which a block may hold, then the block's end.
    for i in 0..60_000 {
        log.push_str(&format!("$ echo step {i:08}\n"));
    }
    log.push_str("BATON-OUTPUTS-END\nBATON-OUTPUTS-BEGIN\nLATE=2\nBATON-OUTPUTS-END\n");
    assert!(log.len() > 1_300_000);
    lab.travis.repo(REPO).plan(
        BuildPlan::new(vec![JobPlan::passes().runs_for(ms(50)).log(&log)])
            .build_after(ms(0), ms(0)),
    );
    let travis = lab.adapter(json!({}));
    let k = key("long-log");
    let mut external = start(travis.as_ref(), &k, json!({})).await;
    poll_to_end(travis.as_ref(), &k, &mut external).await;
    let outputs = travis.outputs(&k, &external).await.unwrap();
    assert_eq!(outputs["LATE"], json!("2"));
    // The first block's start is past the last 1 MiB: its end is passed over.
    assert!(outputs.get("EARLY").is_none(), "{outputs:?}");
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_found_not_repeated() {
    let lab = Lab::start().await;
    let config = json!({"request_timeout": "400ms"});
    let k = key("lost");
    let input = json!({"branch": "main", "request_timeout_build": "10m"});
    // The POST lands, Travis creates the request, the answer comes too late.
    lab.travis
        .fault(1, Scope::Create, Fault::Delay(Duration::from_secs(2)));
    let travis = lab.adapter(config.clone());
    let lost = expect_error(
        try_start(travis.as_ref(), &k, input.clone()).await,
        "Transient",
        "looks for it",
    );
    assert!(
        lost.to_string().contains("no answer within 400ms"),
        "{lost}"
    );
    assert_eq!(lab.travis.requests_created(), 1);
    // A new process (no memory of the create) asks find first, as the engine does.
    let after_restart = lab.adapter(config.clone());
    let found = after_restart
        .find(&k, &input)
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.id, format!("request:{}", lab.request(0).id));
    assert_eq!(found.data["wait_ms"], json!(600_000));
    // Another attempt's key is not fooled by it.
    let other = AttemptKey::new("run1", "lost", 2);
    assert_eq!(after_restart.find(&other, &input).await.unwrap(), None);
    assert_eq!(lab.travis.requests_created(), 1);
    let mut external = found;
    let end = poll_to_end(after_restart.as_ref(), &k, &mut external).await;
    assert_eq!(end.state, ExternalState::Succeeded { warnings: false });

    // A request Travis has not processed yet shows no message: find does not answer
    // "none" while it may be the attempt's, so no second request is made.
    lab.travis
        .repo(REPO)
        .plan_for_branch("busy", BuildPlan::default().build_after(ms(1500), ms(1600)));
    let k2 = key("busy");
    let busy = json!({"branch": "busy"});
    lab.travis
        .fault(1, Scope::Create, Fault::Delay(Duration::from_secs(2)));
    expect_error(
        try_start(travis.as_ref(), &k2, busy.clone()).await,
        "Transient",
        "looks for it",
    );
    let fresh = lab.adapter(config.clone());
    expect_error(
        fresh.find(&k2, &busy).await,
        "Transient",
        "has not processed request",
    );
    tokio::time::sleep(ms(1300)).await;
    let found = fresh
        .find(&k2, &busy)
        .await
        .unwrap()
        .expect("found once processed");
    assert_eq!(found.id, format!("request:{}", lab.request(1).id));
    assert_eq!(lab.travis.requests_created(), 2);

    // The start future dropped after the POST went out (a crash): the same.
    let k3 = key("dropped");
    lab.travis
        .fault(1, Scope::Create, Fault::Delay(Duration::from_secs(2)));
    let dropped =
        tokio::time::timeout(ms(300), try_start(travis.as_ref(), &k3, input.clone())).await;
    assert!(dropped.is_err(), "the start should still be waiting");
    tokio::time::sleep(ms(200)).await;
    let found = lab
        .adapter(json!({}))
        .find(&k3, &input)
        .await
        .unwrap()
        .expect("found after the drop");
    assert_eq!(found.id, format!("request:{}", lab.request(2).id));
    assert_eq!(lab.travis.requests_created(), 3);
}

#[tokio::test]
async fn a_create_answer_without_the_request_id_is_followed_by_its_message() {
    let lab = Lab::start().await;
    lab.travis.answer_creates_without_ids();
    lab.travis
        .repo(REPO)
        .plan_for_branch("stuck", BuildPlan::default().no_build());
    let travis = lab.adapter(json!({}));
    let k = key("older");
    let mut external = start(travis.as_ref(), &k, json!({})).await;
    assert!(
        external.id.starts_with("request-created-at:"),
        "{external:?}"
    );
    let seen = poll_while(travis.as_ref(), &k, &mut external, |_| false).await;
    assert!(
        seen[0]
            .message
            .as_deref()
            .unwrap()
            .contains("looks for it by its message"),
        "{:?}",
        seen[0]
    );
    assert_eq!(
        seen.last().unwrap().state,
        ExternalState::Succeeded { warnings: false }
    );
    assert_eq!(external.id, lab.request(0).build.unwrap().to_string());
    // One that never appears fails when the wait for a build ends.
    let k2 = key("never");
    let mut lost = start(
        travis.as_ref(),
        &k2,
        json!({"branch": "stuck", "request_timeout_build": "600ms"}),
    )
    .await;
    let id = lab.request(1).id;
    let mut unfound = lost.clone();
    let end = poll_to_end(travis.as_ref(), &k2, &mut lost).await;
    assert_eq!(end.state, ExternalState::Errored);
    assert_eq!(
        lost.id,
        format!("request:{id}"),
        "found, then waited for its build"
    );
    assert!(end.message.unwrap().contains("made no build within 600ms"));
    // Looking for it with a token Travis refuses is an error, not "not yet".
    lab.travis.revoke(TOKEN);
    expect_error(
        poll_once(travis.as_ref(), &k2, &mut unfound).await,
        "Auth",
        "refused `token`",
    );
}

#[tokio::test]
async fn a_found_request_waits_for_its_build_from_when_it_was_created() {
    let lab = Lab::start().await;
    lab.travis
        .repo(REPO)
        .plan(BuildPlan::default().build_after(ms(0), ms(60_000)));
    let travis = lab.adapter(json!({"request_timeout": "300ms"}));
    let k = key("slow");
    lab.travis
        .fault(1, Scope::Create, Fault::Delay(Duration::from_secs(1)));
    expect_error(
        try_start(travis.as_ref(), &k, json!({})).await,
        "Transient",
        "looks for it",
    );
    let mut found = lab
        .adapter(json!({}))
        .find(&k, &json!({"request_timeout_build": "2m"}))
        .await
        .unwrap()
        .expect("found");
    let created = found.data["requested_ms"].as_u64().unwrap();
    let now = baton_core::wire::now_ms();
    assert!(created <= now && now - created < 5_000, "{created} {now}");
    assert_eq!(found.data["wait_ms"], json!(120_000));
    let waiting = poll_once(travis.as_ref(), &k, &mut found).await.unwrap();
    assert_eq!(waiting.state, ExternalState::Queued, "{waiting:?}");
}

#[tokio::test]
async fn find_looks_only_at_requests_created_since_the_run_began() {
    let lab = Lab::start().await;
    let travis = lab.adapter(json!({}));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // A UUIDv7 run id carries the time its run began.
    let run_began = |ms: u64| AttemptKey::new(&format!("{ms:012x}7abc8def0123456789ab"), "s", 1);
    let today = run_began(now_ms);
    let tomorrow = run_began(now_ms + 86_400_000);
    start(travis.as_ref(), &today, json!({})).await;
    start(travis.as_ref(), &tomorrow, json!({})).await;
    tokio::time::sleep(ms(300)).await;
    let fresh = lab.adapter(json!({}));
    assert!(fresh.find(&today, &json!({})).await.unwrap().is_some());
    // A run that began after every request was created owns none of them.
    assert_eq!(fresh.find(&tomorrow, &json!({})).await.unwrap(), None);
}

#[tokio::test]
async fn server_errors_are_retried_for_reads_and_never_blindly_for_a_create() {
    let lab = Lab::start().await;
    let travis = lab.adapter(json!({}));
    let k = key("s");
    // A 502 on the create: nothing was created, the error is transient and says baton looks
    // first; find finds nothing and the next start creates exactly one.
    lab.travis.fault(1, Scope::Create, Fault::Status(502));
    expect_error(
        try_start(travis.as_ref(), &k, json!({})).await,
        "Transient",
        "it answered 502 Bad Gateway",
    );
    assert_eq!(lab.travis.requests_created(), 0);
    assert_eq!(travis.find(&k, &json!({})).await.unwrap(), None);
    let mut external = start(travis.as_ref(), &k, json!({})).await;
    assert_eq!(lab.travis.requests_created(), 1);
    // A proxy's 429 on the create did nothing: it is retried within the call.
    lab.travis.fault(1, Scope::Create, Fault::RateLimited(0));
    start(travis.as_ref(), &key("t"), json!({})).await;
    assert_eq!(lab.travis.requests_created(), 2);
    // 5xx on reads: retried within the call, as many times as the policy allows (4 tries),
    // and counted; past that a transient error naming the status.
    for (faults, fails) in [(2, false), (3, false), (4, true)] {
        lab.travis.fault(faults, Scope::Read, Fault::Status(503));
        let before = lab.travis.meter().total();
        let polled = poll_once(travis.as_ref(), &k, &mut external).await;
        assert_eq!(polled.is_err(), fails, "{faults} faults: {polled:?}");
        let tries = lab.travis.meter().total() - before;
        assert_eq!(
            tries,
            if fails { 4 } else { faults as u64 + 1 },
            "{faults} faults"
        );
        if fails {
            expect_error(polled, "Transient", "503 Service Unavailable 4 times");
        }
    }
}

#[tokio::test]
async fn a_dropped_connection_is_retried_for_a_read_and_looked_into_for_a_create() {
    let lab = Lab::start().await;
    let travis = lab.adapter(json!({}));
    let k = key("s");
    lab.travis.fault(1, Scope::Create, Fault::Hangup);
    let lost = expect_error(
        try_start(travis.as_ref(), &k, json!({})).await,
        "Transient",
        "looks for it",
    );
    assert_eq!(lab.travis.requests_created(), 1, "{lost}");
    tokio::time::sleep(ms(200)).await;
    let mut external = travis.find(&k, &json!({})).await.unwrap().expect("found");
    lab.travis.fault(1, Scope::Read, Fault::Hangup);
    let before = lab.travis.meter().total();
    poll_once(travis.as_ref(), &k, &mut external).await.unwrap();
    assert_eq!(lab.travis.meter().total() - before, 2);
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_as_retry_after_asks() {
    let lab = Lab::start().await;
    lab.travis.repo(REPO).plan(BuildPlan::new(vec![
        JobPlan::passes().runs_for(Duration::from_secs(600)),
    ]));
    let travis = lab.adapter(json!({}));
    let k = key("s");
    let mut external = start(travis.as_ref(), &k, json!({})).await;
    lab.travis.fault(1, Scope::Read, Fault::RateLimited(1));
    let before = lab.travis.meter().total();
    let began = Instant::now();
    let o = poll_once(travis.as_ref(), &k, &mut external).await.unwrap();
    assert!(began.elapsed() >= ms(900), "{:?}", began.elapsed());
    assert!(!o.state.is_terminal());
    assert_eq!(lab.travis.meter().total() - before, 2);
    // A wait longer than the call's budget is a transient error that says so.
    lab.travis.fault(1, Scope::Read, Fault::RateLimited(30));
    expect_error(
        poll_once(travis.as_ref(), &k, &mut external).await,
        "Transient",
        "Retry-After",
    );
}

#[tokio::test]
async fn garbage_a_late_answer_and_an_unknown_state_are_each_handled() {
    let lab = Lab::start().await;
    lab.travis.repo(REPO).plan_for_branch(
        "odd",
        BuildPlan::default()
            .build_after(ms(0), ms(0))
            .reports("booting"),
    );
    let travis = lab.adapter(json!({"request_timeout": "300ms"}));
    let k = key("s");
    let mut external = start(travis.as_ref(), &k, json!({})).await;
    lab.travis.fault(1, Scope::Read, Fault::Garbage);
    expect_error(
        poll_once(travis.as_ref(), &k, &mut external).await,
        "Protocol",
        "down for maintenance",
    );
    poll_once(travis.as_ref(), &k, &mut external).await.unwrap();
    lab.travis
        .fault(1, Scope::Read, Fault::Delay(Duration::from_secs(5)));
    let began = Instant::now();
    expect_error(
        poll_once(travis.as_ref(), &k, &mut external).await,
        "Transient",
        "did not answer within 300ms (request_timeout)",
    );
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );

    let k2 = key("odd");
    let mut odd = start(travis.as_ref(), &k2, json!({"branch": "odd"})).await;
    let mut unknown = 0;
    for _ in 0..8 {
        let o = poll_once(travis.as_ref(), &k2, &mut odd).await.unwrap();
        assert!(!o.state.is_terminal(), "{o:?}");
        assert!(o.next_poll.is_some());
        if o.state == ExternalState::Unknown("booting".into()) {
            assert!(o.message.unwrap().contains("does not know"));
            unknown += 1;
        }
        tokio::time::sleep(ms(100)).await;
    }
    assert!(unknown >= 5, "{unknown}");
}

#[tokio::test]
async fn a_travis_that_cannot_be_reached_is_a_passing_problem() {
    let lab = Lab::start().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let travis = lab.adapter(json!({"url": url, "web_url": url}));
    let k = key("s");
    expect_error(
        travis.find(&k, &json!({})).await,
        "Transient",
        "cannot reach Travis `travis`",
    );
    // A create that never reached Travis is retried within the call, then reported the
    // same: it cannot have been done, so there is nothing to look for.
    let refused = expect_error(
        try_start(travis.as_ref(), &k, json!({})).await,
        "Transient",
        "cannot reach Travis `travis`",
    );
    assert!(!refused.to_string().contains("looks for it"), "{refused}");
}

#[tokio::test]
async fn a_large_answer_is_read_and_one_past_4_mib_refused() {
    let lab = Lab::start().await;
    let jobs = |n| BuildPlan::new(vec![JobPlan::passes(); n]).build_after(ms(0), ms(0));
    lab.travis
        .repo(REPO)
        .plan_for_branch("wide", jobs(3_000))
        .plan_for_branch("huge", jobs(7_000));
    let travis = lab.adapter(json!({"request_timeout": "20s"}));
    let (kw, kh) = (key("wide"), key("huge"));
    let mut wide = start(travis.as_ref(), &kw, json!({"branch": "wide"})).await;
    let mut huge = start(travis.as_ref(), &kh, json!({"branch": "huge"})).await;
    poll_once(travis.as_ref(), &kw, &mut wide).await.unwrap();
    poll_once(travis.as_ref(), &kh, &mut huge).await.unwrap();
    // Both are builds now; a build's answer lists its jobs.
    let read = poll_once(travis.as_ref(), &kw, &mut wide).await.unwrap();
    assert!(!read.state.is_terminal(), "{read:?}");
    expect_error(
        poll_once(travis.as_ref(), &kh, &mut huge).await,
        "Protocol",
        "larger than 4194304 bytes",
    );
}

#[tokio::test]
async fn a_wrong_or_revoked_token_and_one_without_push_access_are_explained() {
    let lab = Lab::start().await;
    let wrong = lab.adapter(json!({"token": {"env": "WRONG_TOKEN"}}));
    expect_error(
        try_start(wrong.as_ref(), &key("s"), json!({})).await,
        "Auth",
        "refused `token` (403 Forbidden wrong_credentials: access denied)",
    );
    let reader = lab.adapter(json!({"token": {"env": "READ_TOKEN"}}));
    expect_error(
        try_start(reader.as_ref(), &key("s"), json!({})).await,
        "Auth",
        "push (write) access",
    );
    assert_eq!(lab.travis.requests_created(), 0);
    // A token regenerated while a build runs: the next poll says so.
    let travis = lab.adapter(json!({}));
    let k = key("s");
    let mut external = start(travis.as_ref(), &k, json!({})).await;
    lab.travis.revoke(TOKEN);
    let revoked = expect_error(
        poll_once(travis.as_ref(), &k, &mut external).await,
        "Auth",
        "expired or was regenerated",
    );
    assert!(!revoked.to_string().contains(TOKEN));
}

#[tokio::test]
async fn a_notification_names_the_attempt_following_that_build() {
    let lab = Lab::start().await;
    lab.travis.repo(REPO).plan(
        BuildPlan::default()
            .build_after(ms(0), ms(0))
            .queued_for(ms(600), ms(0)),
    );
    let travis = lab.adapter(json!({}));
    let k = key("notified");
    let mut external = start(travis.as_ref(), &k, json!({})).await;
    // Travis notifies when a build starts and when it ends, not while it is queued.
    let queued = lab.travis.builds()[0].id;
    assert_eq!(lab.travis.notification(queued), None);
    poll_while(travis.as_ref(), &k, &mut external, |o| {
        o.raw.as_deref() == Some("started")
    })
    .await;
    let build: u64 = external.id.parse().expect("the reference is the build now");
    let (form, signature, slug) = lab.travis.notification(build).unwrap();
    assert_eq!(slug, REPO);
    assert!(!signature.is_empty());
    // The source stores the `payload` field, decoded, and its `state` as the event.
    let payload: String = form_urlencoded::parse(form.as_bytes())
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let state = serde_json::from_str::<Value>(&payload).unwrap()["state"]
        .as_str()
        .unwrap()
        .to_owned();
    let delivery = |kind: &str, event: &str, body: &str| -> Vec<AttemptKey> {
        travis.source_delivery(&SourceDelivery {
            source: "travis",
            kind,
            event,
            body,
        })
    };
    assert_eq!(
        delivery("travis", &state, &payload),
        std::slice::from_ref(&k)
    );
    assert!(delivery("github", &state, &payload).is_empty());
    assert!(delivery("travis", "push", &payload).is_empty());
    assert!(delivery("travis", &state, "not json").is_empty());
    let mut elsewhere: Value = serde_json::from_str(&payload).unwrap();
    elsewhere["repository"]["name"] = json!("other-app");
    assert!(delivery("travis", &state, &elsewhere.to_string()).is_empty());
    // Without the marker (a message Travis cut short), only the process that follows the
    // build knows whose it is.
    let mut unmarked: Value = serde_json::from_str(&payload).unwrap();
    unmarked["message"] = json!("ship it");
    let unmarked = unmarked.to_string();
    assert_eq!(
        delivery("travis", &state, &unmarked),
        std::slice::from_ref(&k)
    );
    assert!(
        lab.adapter(json!({}))
            .source_delivery(&SourceDelivery {
                source: "travis",
                kind: "travis",
                event: &state,
                body: &unmarked,
            })
            .is_empty()
    );
    // find answers from memory with the latest reference: the build's.
    assert_eq!(
        travis.find(&k, &json!({})).await.unwrap().unwrap().id,
        external.id
    );
    // Another process, which never followed it, learns the attempt from the message.
    let other = lab.adapter(json!({}));
    assert_eq!(
        other.source_delivery(&SourceDelivery {
            source: "travis",
            kind: "travis",
            event: "passed",
            body: &payload,
        }),
        [k]
    );
}

#[tokio::test]
async fn every_key_is_checked_at_load_and_every_problem_named() {
    let lab = Lab::start().await;
    assert!(problems(&lab.config(json!({}))).is_empty());
    assert_eq!(
        problems(&lab.config(json!({"web_url": null}))),
        ["web_url"],
        "a fake on loopback is neither the hosted API nor an Enterprise /api"
    );
    assert_eq!(
        problems(&json!({"repo": "a", "token": "plain", "poll_initial": "0s", "extra": 1})),
        ["repo", "token", "poll_initial", "extra"]
    );
}

/// The figure the doc's request budget promises, measured in real time (two minutes, so
/// not run by default: `cargo test -p baton-adapter-travis -- --ignored`).
#[tokio::test]
#[ignore = "takes two minutes of real time"]
async fn a_two_minute_build_with_the_default_polls_costs_at_most_fifteen_requests() {
    let lab = Lab::start().await;
    lab.travis.repo(REPO).plan(
        BuildPlan::new(vec![
            JobPlan::passes()
                .runs_for(Duration::from_secs(116))
                .log(&log_with("IMAGE=app:1\n")),
        ])
        .build_after(Duration::from_secs(1), Duration::from_secs(2))
        .queued_for(Duration::from_secs(1), Duration::from_secs(1)),
    );
    let travis = lab.adapter(json!({"poll_initial": null, "poll_max": null}));
    let k = key("budget");
    let mut external = start(travis.as_ref(), &k, json!({"branch": "main"})).await;
    let end = poll_at_hints(travis.as_ref(), &k, &mut external).await;
    assert_eq!(
        end.unwrap().state,
        ExternalState::Succeeded { warnings: false }
    );
    let outputs = travis.outputs(&k, &external).await.unwrap();
    assert_eq!(outputs["IMAGE"], json!("app:1"));
    let requests = lab.travis.meter().total();
    eprintln!("a 120 s build cost {requests} requests");
    assert!(requests <= 15, "{requests}");
}
