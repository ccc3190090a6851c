//! The `concourse` adapter over HTTP against a fake Concourse that keeps state: one story
//! per path and per awkward answer.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_adapter_concourse::{COMMENT_PREFIX, ConcourseKind};
use baton_core::{AdapterKind, AttemptKey, ExternalState, Waker};
use baton_forge_fakes::concourse::{BuildPlan, Fault, Scope};
use serde_json::{Value, json};
use support::*;

fn key(stage: &str) -> AttemptKey {
    AttemptKey::new("run1", stage, 1)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn a_build_of_a_pipeline_instance_is_created_followed_and_its_versions_read() {
    let lab = Lab::start().await;
    let vars = json!({"branch": "feature/x", "n": 2});
    lab.ci
        .instance(TEAM, "app", &vars)
        .resource("repo", &[json!({"ref": "aaa"}), json!({"ref": "bbb"})])
        .job(
            "deploy",
            quick().output("image", json!({"digest": "sha256:feed"})),
        )
        .job_inputs("deploy", &["repo"]);
    let ci = lab.adapter(json!({}));
    let k = key("deploy");
    let mut external = ci
        .start(&request(
            &k,
            json!({"pipeline": "app", "job": "deploy", "instance_vars": vars}),
        ))
        .await
        .unwrap();
    // Only the instance has the job, so the build exists only if the vars were sent.
    let build = lab.only_build();
    assert_eq!((build.pipeline.as_str(), build.name.as_str()), ("app", "1"));
    assert_eq!(build.created_by, USER);
    assert_eq!(
        build.comment,
        Some(format!("{COMMENT_PREFIX}run1/deploy/1"))
    );
    assert_eq!(external.id, build.id.to_string());
    assert_eq!(
        external.url.as_deref(),
        Some(
            format!(
                "{}/teams/main/pipelines/app/jobs/deploy/builds/1?vars.branch=%22feature%2Fx%22&vars.n=2",
                lab.served.url
            )
            .as_str()
        )
    );
    let seen = poll_until(
        ci.as_ref(),
        &k,
        &mut external,
        Duration::from_secs(10),
        |_| false,
    )
    .await;
    let raws: Vec<_> = seen.iter().map(|o| o.raw.clone().unwrap()).collect();
    assert!(raws.contains(&"started".to_owned()), "{raws:?}");
    assert_eq!(
        seen.last().unwrap().state,
        ExternalState::Succeeded { warnings: false }
    );
    let outputs = ci.outputs(&k, &external).await.unwrap();
    assert_eq!(outputs["id"], json!(build.id.to_string()));
    assert_eq!(outputs["name"], json!("1"));
    assert_eq!(outputs["status"], json!("succeeded"));
    assert_eq!(outputs["url"], json!(external.url));
    assert_eq!(
        outputs["resources"],
        json!({"inputs": {"repo": {"ref": "bbb"}}, "outputs": {"image": {"digest": "sha256:feed"}}})
    );
    assert!(outputs.get("check").is_none());
    let logs = ci.logs(&k, &external).await.unwrap();
    assert_eq!(logs.links[0].url, external.url.clone().unwrap());
    assert_eq!(logs.text.as_deref(), Some("hello from the task\n"));
    // Nothing secret is in the reference.
    let stored = serde_json::to_string(&external).unwrap();
    assert!(!stored.contains(PASSWORD) && !stored.contains("fake-access-token"));
}

#[tokio::test]
async fn the_status_event_wakes_the_engine_at_once() {
    let lab = Lab::start().await;
    lab.app()
        .job("deploy", quick().runs_for(Duration::from_millis(600)));
    // Polls every ten minutes: only the wake can end the wait within the test.
    // Polls every ten minutes while the stream is up: only the wake can end the wait
    // within the test.
    let ci = lab.adapter(json!({"poll_streaming": "10m"}));
    let woken: Arc<Mutex<Vec<(AttemptKey, u64)>>> = Arc::default();
    let record = woken.clone();
    ci.attach(Waker::new(move |key: &AttemptKey| {
        record.lock().unwrap().push((key.clone(), wall_ms()));
    }));
    let k = key("woken");
    let mut external = start_deploy(ci.as_ref(), &k).await;
    let first = poll_once(ci.as_ref(), &k, &mut external).await.unwrap();
    assert!(!first.state.is_terminal());
    assert!(
        first.next_poll.unwrap() >= Duration::from_secs(400),
        "a healthy stream slows polling down: {first:?}"
    );
    // The follower's tail serves the logs of a running build: no second stream.
    ci.logs(&k, &external).await.unwrap();
    assert_eq!(lab.ci.streams_opened(), 1);
    let began = Instant::now();
    while woken.lock().unwrap().is_empty() {
        assert!(began.elapsed() < Duration::from_secs(10), "never woken");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (who, at) = woken.lock().unwrap()[0].clone();
    assert_eq!(who, k);
    let id: u64 = external.id.parse().unwrap();
    let sent = lab
        .ci
        .status_sent_ms(id, "succeeded")
        .expect("the status was sent");
    assert!(
        at >= sent && at - sent <= 50,
        "woken {} ms after the event",
        at - sent
    );
    // The poll the wake causes takes the end from the stream: no request.
    let before = lab.ci.meter().total();
    let end = poll_once(ci.as_ref(), &k, &mut external).await.unwrap();
    assert_eq!(end.state, ExternalState::Succeeded { warnings: false });
    assert_eq!(lab.ci.meter().total(), before);
    assert_eq!(woken.lock().unwrap().len(), 1, "one wake per end");
    let logs = ci.logs(&k, &external).await.unwrap();
    assert_eq!(logs.text.as_deref(), Some("hello from the task\n"));
    assert_eq!(
        lab.ci.streams_opened(),
        1,
        "the finished follower's log is kept"
    );
}

#[tokio::test]
async fn dropping_the_adapter_stops_its_followers() {
    let lab = Lab::start().await;
    lab.app()
        .job("deploy", quick().runs_for(Duration::from_secs(600)));
    let ci = lab.adapter(json!({}));
    start_deploy(ci.as_ref(), &key("dropped")).await;
    let began = Instant::now();
    while lab.ci.streams_open() == 0 {
        assert!(began.elapsed() < Duration::from_secs(5), "never followed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(ci);
    while lab.ci.streams_open() > 0 {
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "the stream outlived the adapter"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_follower_refused_with_404_stops_at_once() {
    let lab = Lab::start().await;
    let ci = lab.adapter(json!({}));
    let k = key("ghost");
    let mut ghost = start_deploy(ci.as_ref(), &k).await;
    ghost.id = "999999".into();
    let before = lab.ci.meter().total();
    expect_error(
        poll_once(ci.as_ref(), &k, &mut ghost).await,
        "NotFound",
        "404",
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The poll and one opening of the stream: a 404 is not tried again.
    assert_eq!(lab.ci.meter().total() - before, 2);
}

#[tokio::test]
async fn a_token_that_expires_mid_build_is_renewed_and_the_build_still_followed() {
    let lab = Lab::start().await;
    lab.ci.token_lifetime(Duration::from_secs(1));
    lab.app().job(
        "deploy",
        quick()
            .runs_for(Duration::from_millis(2500))
            .logs(&["one\n", "two\n", "three\n"]),
    );
    let ci = lab.adapter(json!({}));
    let k = key("long");
    let mut external = start_deploy(ci.as_ref(), &k).await;
    let end = poll_to_end(ci.as_ref(), &k, &mut external).await;
    assert_eq!(end.state, ExternalState::Succeeded { warnings: false });
    // A token lives a second and is renewed a quarter before: at least three grants.
    let grants = lab.ci.meter().by_credential("token");
    assert!((3..=8).contains(&grants), "{grants} grants");
    assert!(
        lab.ci.meter().by_credential("anonymous") == 0,
        "no request went with an expired token"
    );
    let logs = ci.logs(&k, &external).await.unwrap();
    assert_eq!(logs.text.as_deref(), Some("one\ntwo\nthree\n"));

    // A token revoked early: the next call is refused once, renews, and goes through.
    lab.ci.token_lifetime(Duration::from_secs(3600));
    let k2 = key("revoked");
    let mut second = start_deploy(ci.as_ref(), &k2).await;
    lab.ci.expire_tokens();
    let grants = lab.ci.meter().by_credential("token");
    let o = poll_once(ci.as_ref(), &k2, &mut second).await.unwrap();
    assert!(!o.state.is_terminal() || o.state == ExternalState::Succeeded { warnings: false });
    assert_eq!(lab.ci.meter().by_credential("token"), grants + 1);
    assert_eq!(lab.ci.meter().by_credential("anonymous"), 1);
    let end = poll_to_end(ci.as_ref(), &k2, &mut second).await;
    assert_eq!(end.state, ExternalState::Succeeded { warnings: false });
}

#[tokio::test]
async fn concurrent_calls_share_one_renewal() {
    let lab = Lab::start().await;
    let ci = lab.adapter(json!({"events": false}));
    let k = key("shared");
    let external = start_deploy(ci.as_ref(), &k).await;
    lab.ci.expire_tokens();
    let grants = lab.ci.meter().by_credential("token");
    // All eight are under way before any is awaited.
    let polls: Vec<_> = (0..8)
        .map(|_| {
            let (ci, k, mut e) = (ci.clone(), k.clone(), external.clone());
            tokio::spawn(async move { poll_once(ci.as_ref(), &k, &mut e).await.unwrap() })
        })
        .collect();
    for poll in polls {
        poll.await.unwrap();
    }
    assert_eq!(lab.ci.meter().by_credential("token"), grants + 1);
}

#[tokio::test]
async fn an_old_server_is_logged_into_at_sky_token_and_the_path_is_remembered() {
    let lab = Lab::start().await;
    lab.ci.old_server();
    let ci = lab.adapter(json!({}));
    let k = key("old");
    let mut external = start_deploy(ci.as_ref(), &k).await;
    // The new path answered 404, the old one the token.
    assert_eq!(lab.ci.meter().by_credential("token"), 2);
    let build = lab.only_build();
    assert_eq!(build.comment, None, "no comments before 7.x");
    lab.ci.expire_tokens();
    let end = poll_to_end(ci.as_ref(), &k, &mut external).await;
    assert_eq!(end.state, ExternalState::Succeeded { warnings: false });
    // The renewal went straight to the old path.
    assert_eq!(lab.ci.meter().by_credential("token"), 3);
    // Upgraded, the old path is gone: the next renewal finds the new one.
    lab.ci.upgrade();
    lab.ci.expire_tokens();
    start_deploy(ci.as_ref(), &key("upgraded")).await;
    assert_eq!(lab.ci.meter().by_credential("token"), 5);
    // On a server with neither path, the error says so.
    let nowhere = lab.adapter(json!({"url": format!("{}/not-concourse", lab.served.url)}));
    expect_error(
        nowhere.start(&request(&key("x"), deploy())).await,
        "NotFound",
        "no token endpoint",
    );
}

#[tokio::test]
async fn an_old_server_is_asked_to_comment_a_build_once() {
    let lab = Lab::start().await;
    lab.ci.old_server();
    let ci = lab.adapter(json!({"events": false}));
    start_deploy(ci.as_ref(), &key("first")).await;
    // The 404 on the comment is remembered: a second start does not try again.
    let before = lab.ci.meter().total();
    start_deploy(ci.as_ref(), &key("second")).await;
    assert_eq!(lab.ci.meter().total() - before, 1, "the create alone");
}

#[tokio::test]
async fn a_job_with_manual_triggering_disabled_is_a_clear_409() {
    let lab = Lab::start().await;
    lab.app().manual_trigger_disabled("deploy");
    let ci = lab.adapter(json!({}));
    expect_error(
        ci.start(&request(&key("s"), deploy())).await,
        "Invalid",
        "`disable_manual_trigger: true`",
    );
    assert!(lab.ci.job_builds().is_empty());
}

#[tokio::test]
async fn a_404_says_which_of_team_pipeline_instance_or_job_is_missing() {
    let lab = Lab::start().await;
    lab.ci
        .instance(TEAM, "per-branch", &json!({"branch": "main"}))
        .job("test", quick());
    let ci = lab.adapter(json!({}));
    let start = |input: Value| {
        let ci = ci.clone();
        async move { ci.start(&request(&key("s"), input)).await }
    };
    expect_error(
        start(json!({"pipeline": "app", "job": "deploi"})).await,
        "NotFound",
        "pipeline `app` has no job `deploi`",
    );
    expect_error(
        start(json!({"pipeline": "ap", "job": "deploy"})).await,
        "NotFound",
        "team `main` has no pipeline `ap`",
    );
    expect_error(
        start(json!({"pipeline": "per-branch", "job": "test", "instance_vars": {"branch": "dev"}}))
            .await,
        "NotFound",
        r#"pipeline `per-branch` has no instance with the vars {"branch":"dev"}; its instances: {"branch":"main"}"#,
    );
    expect_error(
        start(json!({"pipeline": "app", "job": "deploy", "resource": "rep"})).await,
        "NotFound",
        "pipeline `app` has no resource `rep`",
    );
    let elsewhere = lab.adapter(json!({"team": "other"}));
    expect_error(
        elsewhere.start(&request(&key("s"), deploy())).await,
        "NotFound",
        "no team `other` that user `baton` can see",
    );
    assert!(lab.ci.job_builds().is_empty());
}

#[tokio::test]
async fn a_stuck_pending_build_is_explained_from_its_preparation_then_runs() {
    let lab = Lab::start().await;
    lab.app()
        .paused(true)
        .job_paused("deploy", true)
        .resource("repo", &[])
        .job_inputs("deploy", &["repo"]);
    for events in [true, false] {
        let ci = lab.adapter(json!({"explain_pending_after": "300ms", "events": events}));
        let k = AttemptKey::new("run1", "stuck", u32::from(events) + 1);
        let mut external = start_deploy(ci.as_ref(), &k).await;
        let first = poll_once(ci.as_ref(), &k, &mut external).await.unwrap();
        assert_eq!(first.state, ExternalState::Queued);
        assert_eq!(first.message, None, "not explained before the bound");
        tokio::time::sleep(Duration::from_millis(350)).await;
        let explained = poll_once(ci.as_ref(), &k, &mut external).await.unwrap();
        assert_eq!(explained.state, ExternalState::Queued);
        let message = explained.message.unwrap();
        for needle in [
            "has been pending for",
            "the pipeline `app` is paused",
            "the job `deploy` is paused",
            "input `repo` is missing: no versions available",
            "waits until the stage's timeout",
        ] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
    }
    // Unblocked, both builds run and succeed.
    lab.app()
        .paused(false)
        .job_paused("deploy", false)
        .resource("repo", &[json!({"ref": "abc"})]);
    let ci = lab.adapter(json!({}));
    for n in [1, 2] {
        let k = AttemptKey::new("run1", "stuck", n);
        let mut external = ci
            .find(&k, &deploy())
            .await
            .unwrap()
            .expect("found by its comment");
        let end = poll_to_end(ci.as_ref(), &k, &mut external).await;
        assert_eq!(end.state, ExternalState::Succeeded { warnings: false });
    }
}

#[tokio::test]
async fn a_build_held_by_max_in_flight_says_so() {
    let lab = Lab::start().await;
    lab.app()
        .job("deploy", quick().runs_for(Duration::from_secs(600)))
        .max_in_flight("deploy", 1);
    let ci = lab.adapter(json!({"explain_pending_after": "100ms", "events": false}));
    let first = start_deploy(ci.as_ref(), &key("first")).await;
    let k = key("second");
    let mut second = start_deploy(ci.as_ref(), &k).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let o = poll_once(ci.as_ref(), &k, &mut second).await.unwrap();
    assert_eq!(o.state, ExternalState::Queued);
    assert!(o.message.unwrap().contains("`max_in_flight`"));
    ci.cancel(&key("first"), &first).await.unwrap();
    let running = poll_until(ci.as_ref(), &k, &mut second, Duration::from_secs(5), |o| {
        o.state == ExternalState::Running
    })
    .await;
    assert_eq!(running.last().unwrap().state, ExternalState::Running);
}

#[tokio::test]
async fn a_cut_event_stream_is_resumed_without_losing_or_doubling_a_line() {
    let lab = Lab::start().await;
    let lines: Vec<String> = (1..=20).map(|i| format!("line {i}\n")).collect();
    lab.app().job(
        "deploy",
        quick()
            .runs_for(Duration::from_millis(1500))
            .log_lines(lines.clone()),
    );
    // The first two streams break off after four events each.
    lab.ci.fault(2, Scope::Events, Fault::CutAfter(4));
    let ci =
        lab.adapter(json!({"poll_streaming": "10m", "poll_initial": "10m", "poll_max": "10m"}));
    let woken: Arc<Mutex<u32>> = Arc::default();
    let count = woken.clone();
    ci.attach(Waker::new(move |_: &AttemptKey| {
        *count.lock().unwrap() += 1;
    }));
    let k = key("cut");
    let mut external = start_deploy(ci.as_ref(), &k).await;
    let began = Instant::now();
    while *woken.lock().unwrap() == 0 {
        assert!(began.elapsed() < Duration::from_secs(10), "never woken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        *woken.lock().unwrap(),
        1,
        "a cut that resumes at once wakes nobody"
    );
    let end = poll_once(ci.as_ref(), &k, &mut external).await.unwrap();
    assert_eq!(end.state, ExternalState::Succeeded { warnings: false });
    assert_eq!(lab.ci.streams_opened(), 3);
    let logs = ci.logs(&k, &external).await.unwrap();
    assert_eq!(logs.text.unwrap(), lines.concat());
}

#[tokio::test]
async fn a_stream_that_stays_away_wakes_the_engine_back_to_its_pace() {
    let lab = Lab::start().await;
    lab.app()
        .job("deploy", quick().runs_for(Duration::from_secs(600)));
    let ci = lab.adapter(json!({"poll_streaming": "10m"}));
    let woken: Arc<Mutex<u32>> = Arc::default();
    let count = woken.clone();
    ci.attach(Waker::new(move |_: &AttemptKey| {
        *count.lock().unwrap() += 1;
    }));
    // Every stream opening fails.
    lab.ci.fault(1000, Scope::Events, Fault::Status(502));
    let k = key("away");
    let mut external = start_deploy(ci.as_ref(), &k).await;
    let began = Instant::now();
    while *woken.lock().unwrap() == 0 {
        assert!(began.elapsed() < Duration::from_secs(10), "never woken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let o = poll_once(ci.as_ref(), &k, &mut external).await.unwrap();
    assert!(
        o.next_poll.unwrap() <= Duration::from_millis(200),
        "back to poll_max: {o:?}"
    );
    // The follower keeps trying: once Concourse serves streams again, it follows.
    lab.ci.clear_faults();
    while lab.ci.streams_opened() == 0 {
        assert!(began.elapsed() < Duration::from_secs(10), "never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let o = poll_once(ci.as_ref(), &k, &mut external).await.unwrap();
    assert!(o.next_poll.unwrap() >= Duration::from_secs(400), "{o:?}");
}

#[tokio::test]
async fn errored_and_failed_builds_say_different_things() {
    let lab = Lab::start().await;
    lab.app()
        .job(
            "unit",
            quick()
                .fails(2)
                .logs(&["running 40 tests\n", "3 tests FAILED\n"]),
        )
        .job(
            "infra",
            quick().errors("worker vanished: no space left on device"),
        );
    for events in [true, false] {
        let ci = lab.adapter(json!({"events": events}));
        let run = format!("run-{events}");
        let kf = AttemptKey::new(&run, "unit", 1);
        let mut failed = ci
            .start(&request(&kf, json!({"pipeline": "app", "job": "unit"})))
            .await
            .unwrap();
        let ke = AttemptKey::new(&run, "infra", 1);
        let mut errored = ci
            .start(&request(&ke, json!({"pipeline": "app", "job": "infra"})))
            .await
            .unwrap();
        let f = poll_to_end(ci.as_ref(), &kf, &mut failed).await;
        assert_eq!(f.state, ExternalState::Failed);
        let message = f.message.unwrap();
        assert!(
            message.contains("failed: its task exited with status 2"),
            "{message}"
        );
        assert!(message.contains("3 tests FAILED"), "{message}");
        assert!(!message.contains("errored"), "{message}");
        if events {
            assert_eq!(
                lab.ci.streams_opened(),
                2,
                "one follower per build, whose tail served the message"
            );
        }
        let e = poll_to_end(ci.as_ref(), &ke, &mut errored).await;
        assert_eq!(e.state, ExternalState::Errored);
        let message = e.message.unwrap();
        let first = message.lines().next().unwrap();
        assert!(
            first.contains("errored: Concourse could not run it")
                && first.contains("no space left on device"),
            "{message}"
        );
        assert!(message.contains("no space left on device"), "{message}");
        assert!(!message.contains("task exited"), "{message}");
    }
}

#[tokio::test]
async fn a_follower_that_gave_up_early_leaves_the_log_to_one_read() {
    let lab = Lab::start().await;
    let lines: Vec<String> = (1..=6).map(|i| format!("step {i}\n")).collect();
    lab.app().job(
        "deploy",
        quick()
            .runs_for(Duration::from_millis(600))
            .log_lines(lines.clone())
            .fails(1),
    );
    // The stream breaks off after two events, then the build's stream is refused.
    lab.ci.fault(1, Scope::Events, Fault::CutAfter(2));
    lab.ci.fault(1, Scope::Events, Fault::Status(404));
    let ci = lab.adapter(json!({}));
    let k = key("partial");
    let mut external = start_deploy(ci.as_ref(), &k).await;
    let end = poll_to_end(ci.as_ref(), &k, &mut external).await;
    assert_eq!(end.state, ExternalState::Failed);
    let message = end.message.unwrap();
    assert!(
        message.contains(&lines.concat().trim_end().to_owned()),
        "{message}"
    );
}

#[tokio::test]
async fn a_running_builds_log_read_once_takes_what_comes_within_a_quiet_second() {
    let lab = Lab::start().await;
    lab.app().job(
        "deploy",
        quick()
            .runs_for(Duration::from_millis(1500))
            .logs(&["early\n", "late\n"]),
    );
    let ci = lab.adapter(json!({"events": false}));
    let k = key("reading");
    let external = start_deploy(ci.as_ref(), &k).await;
    let logs = ci.logs(&k, &external).await.unwrap();
    assert_eq!(logs.text.as_deref(), Some("early\nlate\n"));
}

#[tokio::test]
async fn an_errored_build_whose_log_cannot_be_read_still_says_errored() {
    let lab = Lab::start().await;
    lab.app().job("deploy", quick().errors("boom"));
    let ci = lab.adapter(json!({"events": false}));
    let k = key("unreadable");
    let mut external = start_deploy(ci.as_ref(), &k).await;
    poll_until(
        ci.as_ref(),
        &k,
        &mut external,
        Duration::from_secs(5),
        |_| false,
    )
    .await;
    // A restarted baton, which kept no log, polls while the events cannot be read.
    let fresh = lab.adapter(json!({"events": false}));
    lab.ci.fault(1, Scope::Events, Fault::Status(500));
    let again = poll_once(fresh.as_ref(), &k, &mut external).await.unwrap();
    assert_eq!(again.state, ExternalState::Errored);
    let message = again.message.unwrap();
    assert!(
        message.contains("errored: Concourse could not run it"),
        "{message}"
    );
    assert!(message.contains("its log could not be read"), "{message}");
}

#[tokio::test]
async fn a_cancel_aborts_a_pending_or_running_build_and_leaves_a_finished_one() {
    let lab = Lab::start().await;
    lab.app()
        .job("deploy", quick().runs_for(Duration::from_secs(600)))
        .job("held", quick())
        .job_paused("held", true);
    let ci = lab.adapter(json!({}));
    let k = key("running");
    let mut running = start_deploy(ci.as_ref(), &k).await;
    poll_until(ci.as_ref(), &k, &mut running, Duration::from_secs(5), |o| {
        o.state == ExternalState::Running
    })
    .await;
    ci.cancel(&k, &running).await.unwrap();
    let end = poll_to_end(ci.as_ref(), &k, &mut running).await;
    assert_eq!(end.state, ExternalState::Cancelled);
    assert!(end.message.unwrap().contains("was aborted"));
    let kp = key("pending");
    let mut pending = ci
        .start(&request(&kp, json!({"pipeline": "app", "job": "held"})))
        .await
        .unwrap();
    ci.cancel(&kp, &pending).await.unwrap();
    assert_eq!(
        poll_to_end(ci.as_ref(), &kp, &mut pending).await.state,
        ExternalState::Cancelled
    );
    let statuses: Vec<_> = lab.ci.job_builds().into_iter().map(|b| b.status).collect();
    assert_eq!(statuses, ["aborted", "aborted"]);
    // A finished build is left alone, with no request.
    let before = lab.ci.meter().total();
    ci.cancel(&k, &running).await.unwrap();
    assert_eq!(lab.ci.meter().total(), before);
}

#[tokio::test]
async fn server_errors_are_retried_for_reads_and_never_blindly_for_a_create() {
    let lab = Lab::start().await;
    let ci = lab.adapter(json!({"events": false}));
    let k = key("s");
    // A 502 on the create: nothing was created, the error is transient, find finds
    // nothing and the next start creates exactly one.
    lab.ci.fault(1, Scope::Create, Fault::Status(502));
    let err = ci.start(&request(&k, deploy())).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(lab.ci.job_builds().is_empty());
    assert_eq!(ci.find(&k, &deploy()).await.unwrap(), None);
    let mut external = start_deploy(ci.as_ref(), &k).await;
    assert_eq!(lab.ci.job_builds().len(), 1);
    // Two 503s on a read: retried within the call.
    lab.ci.fault(2, Scope::Read, Fault::Status(503));
    poll_once(ci.as_ref(), &k, &mut external).await.unwrap();
    // More than the retries allow: a transient error naming the status.
    lab.ci.fault(4, Scope::Read, Fault::Status(500));
    expect_error(
        poll_once(ci.as_ref(), &k, &mut external).await,
        "Transient",
        "500",
    );
    // A 5xx on the token endpoint is retried too.
    lab.ci.expire_tokens();
    lab.ci.fault(2, Scope::Token, Fault::Status(503));
    poll_once(ci.as_ref(), &k, &mut external).await.unwrap();
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_as_retry_after_asks() {
    let lab = Lab::start().await;
    lab.app()
        .job("deploy", quick().runs_for(Duration::from_secs(600)));
    let ci = lab.adapter(json!({"events": false}));
    let k = key("s");
    let mut external = start_deploy(ci.as_ref(), &k).await;
    lab.ci.fault(1, Scope::Read, Fault::RateLimited(1));
    let before = lab.ci.meter().total();
    let began = Instant::now();
    let o = poll_once(ci.as_ref(), &k, &mut external).await.unwrap();
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "{:?}",
        began.elapsed()
    );
    assert!(!o.state.is_terminal());
    assert_eq!(lab.ci.meter().total() - before, 2);
    // A create is retried after a 429 too: Concourse did nothing.
    lab.ci.fault(1, Scope::Create, Fault::RateLimited(1));
    start_deploy(ci.as_ref(), &key("after-429")).await;
    assert_eq!(lab.ci.job_builds().len(), 2);
    // A wait longer than the call's budget is a transient error that says so.
    lab.ci.fault(1, Scope::Read, Fault::RateLimited(30));
    expect_error(
        poll_once(ci.as_ref(), &k, &mut external).await,
        "Transient",
        "Retry-After",
    );
}

#[tokio::test]
async fn garbage_instead_of_json_is_a_protocol_error() {
    let lab = Lab::start().await;
    let ci = lab.adapter(json!({"events": false}));
    let k = key("s");
    let mut external = start_deploy(ci.as_ref(), &k).await;
    lab.ci.fault(1, Scope::Read, Fault::Garbage);
    expect_error(
        poll_once(ci.as_ref(), &k, &mut external).await,
        "Protocol",
        "upgrade in progress",
    );
    poll_once(ci.as_ref(), &k, &mut external).await.unwrap();
}

#[tokio::test]
async fn a_token_endpoint_past_request_timeout_is_a_passing_problem() {
    let lab = Lab::start().await;
    let ci = lab.adapter(json!({"request_timeout": "300ms"}));
    lab.ci
        .fault(1, Scope::Token, Fault::Delay(Duration::from_secs(2)));
    expect_error(
        ci.start(&request(&key("s"), deploy())).await,
        "Transient",
        "did not answer within 300ms (request_timeout) when baton tried to log in",
    );
    assert!(lab.ci.job_builds().is_empty());
    start_deploy(ci.as_ref(), &key("s")).await;
}

#[tokio::test]
async fn an_odd_token_answer_is_quoted() {
    let lab = Lab::start().await;
    let ci = lab.adapter(json!({}));
    lab.ci.fault(1, Scope::Token, Fault::Status(418));
    expect_error(
        ci.start(&request(&key("s"), deploy())).await,
        "Protocol",
        "answered 418 I'm a teapot when baton tried to log in with the password grant: `<html><body>502",
    );
}

#[tokio::test]
async fn a_request_past_request_timeout_is_cut_short() {
    let lab = Lab::start().await;
    let ci = lab.adapter(json!({"request_timeout": "300ms", "events": false}));
    let k = key("s");
    let mut external = start_deploy(ci.as_ref(), &k).await;
    lab.ci
        .fault(1, Scope::Read, Fault::Delay(Duration::from_secs(5)));
    let began = Instant::now();
    expect_error(
        poll_once(ci.as_ref(), &k, &mut external).await,
        "Transient",
        "request_timeout",
    );
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn an_unknown_status_is_never_an_end() {
    let lab = Lab::start().await;
    lab.app().job("deploy", quick().reports("paused_by_admin"));
    for events in [true, false] {
        let ci = lab.adapter(json!({"events": events}));
        let k = AttemptKey::new("run1", "odd", u32::from(events) + 1);
        let mut external = start_deploy(ci.as_ref(), &k).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..5 {
            let o = poll_once(ci.as_ref(), &k, &mut external).await.unwrap();
            assert_eq!(o.state, ExternalState::Unknown("paused_by_admin".into()));
            assert!(o.next_poll.is_some());
            assert!(o.message.unwrap().contains("does not know"));
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_found_not_repeated() {
    let lab = Lab::start().await;
    let config = json!({"request_timeout": "400ms"});
    let ci = lab.adapter(config.clone());
    let k = key("lost");
    // The POST lands, Concourse creates the build, the answer comes too late.
    lab.ci
        .fault(1, Scope::Create, Fault::Delay(Duration::from_secs(2)));
    let err = ci.start(&request(&k, deploy())).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("looks for it"), "{err}");
    assert_eq!(lab.ci.job_builds().len(), 1);
    assert_eq!(
        lab.only_build().comment,
        None,
        "never commented: the start gave up"
    );
    // A new process (no memory of the create) asks find first, as the engine does.
    let after_restart = lab.adapter(config.clone());
    // Another attempt's key is not given the build.
    let other = AttemptKey::new("run1", "lost", 2);
    let before = lab.ci.meter().total();
    let found = after_restart
        .find(&k, &deploy())
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.id, lab.only_build().id.to_string());
    // A token, the job's builds, the build's stream, the claim: baton knows its user
    // without asking.
    assert_eq!(lab.ci.meter().total() - before, 4);
    // Adopting claims it: it now carries the attempt, and no other attempt takes it.
    assert_eq!(
        lab.only_build().comment,
        Some(format!("{COMMENT_PREFIX}{k}"))
    );
    assert_eq!(
        lab.adapter(config.clone())
            .find(&other, &deploy())
            .await
            .unwrap(),
        None
    );
    let mut external = found;
    let end = poll_to_end(after_restart.as_ref(), &k, &mut external).await;
    assert_eq!(end.state, ExternalState::Succeeded { warnings: false });
    assert_eq!(lab.ci.job_builds().len(), 1);
}

#[tokio::test]
async fn find_tells_batons_builds_from_others() {
    let lab = Lab::start().await;
    lab.ci.add_user("alice", "alice-pw", &[TEAM]);
    // Alice's build, created by hand while baton was down, is not baton's.
    let secrets = TableSecrets::of(&[("ALICE", "alice-pw")]);
    let alice = ConcourseKind::with_retry(fast_retry())
        .build(
            "ci",
            &lab.config(json!({"username": "alice", "password": {"env": "ALICE"}})),
            &secrets,
        )
        .unwrap();
    start_deploy(alice.as_ref(), &key("alices")).await;
    let ci = lab.adapter(json!({}));
    let k = key("mine");
    let mine = start_deploy(ci.as_ref(), &k).await;
    let fresh = lab.adapter(json!({}));
    // Found by its comment, though it is not the newest build.
    start_deploy(alice.as_ref(), &key("alices-second")).await;
    assert_eq!(
        fresh.find(&k, &deploy()).await.unwrap().unwrap().id,
        mine.id
    );
    // A key never started: every build is claimed or someone else's, such as one Alice
    // triggered by hand (no comment).
    lab.ci.trigger(TEAM, "app", "deploy", "alice").unwrap();
    assert_eq!(fresh.find(&key("never"), &deploy()).await.unwrap(), None);
    // A run that began after a build started does not own it.
    lab.ci
        .fault(1, Scope::Create, Fault::Delay(Duration::from_secs(2)));
    let lost = AttemptKey::new("run1", "late", 1);
    let _ = lab
        .adapter(json!({"request_timeout": "300ms"}))
        .start(&request(&lost, deploy()))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let tomorrow = (wall_ms() + 86_400_000) as u128;
    let later = AttemptKey::new(&format!("{tomorrow:012x}7abc8def0123456789ab"), "late", 1);
    assert_eq!(
        lab.adapter(json!({}))
            .find(&later, &deploy())
            .await
            .unwrap(),
        None
    );
    let today = AttemptKey::new(
        &format!("{:012x}7abc8def0123456789ab", wall_ms()),
        "late",
        1,
    );
    assert!(
        lab.adapter(json!({}))
            .find(&today, &deploy())
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_bearer_token_works_and_find_asks_whose_it_is() {
    let lab = Lab::start().await;
    let config = json!({"token": {"env": "CONCOURSE_TOKEN"}, "username": null, "password": null, "request_timeout": "300ms"});
    let ci = lab.adapter(config.clone());
    let k = key("bearer");
    lab.ci
        .fault(1, Scope::Create, Fault::Delay(Duration::from_secs(2)));
    assert!(ci.start(&request(&k, deploy())).await.is_err());
    let lost = lab.only_build();
    // A person triggers the job meanwhile: the newest build is theirs, not baton's.
    lab.ci.add_user("alice", "alice-pw", &[TEAM]);
    lab.ci.trigger(TEAM, "app", "deploy", "alice").unwrap();
    let fresh = lab.adapter(config.clone());
    let mut external = fresh.find(&k, &deploy()).await.unwrap().expect("found");
    assert_eq!(external.id, lost.id.to_string(), "the token's user made it");
    let end = poll_to_end(fresh.as_ref(), &k, &mut external).await;
    assert_eq!(end.state, ExternalState::Succeeded { warnings: false });
    assert_eq!(
        lab.ci.meter().by_credential("token"),
        0,
        "no password grant"
    );
}

#[tokio::test]
async fn a_refused_configured_token_fails_clearly() {
    let lab = Lab::start().await;
    let ci =
        lab.adapter(json!({"token": {"env": "OLD_TOKEN"}, "username": null, "password": null}));
    expect_error(
        ci.start(&request(&key("s"), deploy())).await,
        "Auth",
        "baton cannot renew a token it was given",
    );
    assert!(lab.ci.job_builds().is_empty());
    // Refused once: a configured token is not sent again.
    assert_eq!(lab.ci.meter().total(), 1);
}

#[tokio::test]
async fn a_wrong_password_is_explained() {
    let lab = Lab::start().await;
    let ci = lab.adapter(json!({"password": {"env": "WRONG_PASSWORD"}}));
    expect_error(
        ci.start(&request(&key("s"), deploy())).await,
        "Auth",
        "refused the password grant for user `baton` (401 Unauthorized, access_denied: Invalid username or password)",
    );
    // A user outside the team is told what role it lacks.
    lab.ci.add_user("outsider", "pw", &["other"]);
    let secrets = TableSecrets::of(&[("P", "pw")]);
    let outsider = ConcourseKind::with_retry(fast_retry())
        .build(
            "ci",
            &lab.config(json!({"username": "outsider", "password": {"env": "P"}})),
            &secrets,
        )
        .unwrap();
    expect_error(
        outsider.start(&request(&key("s"), deploy())).await,
        "Auth",
        "forbids user `outsider` to create a build of job `deploy` in pipeline `app` (403 Forbidden): make the user a member of team `main`",
    );
}

#[tokio::test]
async fn a_version_is_checked_into_the_resource_before_the_build_and_the_outputs_say_if_it_was_used()
 {
    let lab = Lab::start().await;
    lab.app()
        .resource("repo", &[json!({"ref": "v1"})])
        .check_takes("repo", Duration::from_millis(300))
        .job_inputs("deploy", &["repo"]);
    let ci = lab.adapter(json!({}));
    let k = key("pushed");
    let input =
        json!({"pipeline": "app", "job": "deploy", "resource": "repo", "version": {"ref": "v2"}});
    let before = lab.ci.meter().total();
    let mut external = ci.start(&request(&k, input)).await.unwrap();
    // A token, the check, a read or two of it (200 ms, then 300 ms later), the create, the
    // comment, the stream.
    let spent = lab.ci.meter().total() - before;
    assert!((6..=7).contains(&spent), "{spent} requests");
    let checks: Vec<_> = lab.ci.builds().into_iter().filter(|b| b.check).collect();
    assert_eq!(checks.len(), 1);
    assert_eq!(
        checks[0].status, "succeeded",
        "the build came after the check ended"
    );
    assert_eq!(
        lab.only_build().inputs,
        [("repo".into(), json!({"ref": "v2"}))]
    );
    poll_to_end(ci.as_ref(), &k, &mut external).await;
    let outputs = ci.outputs(&k, &external).await.unwrap();
    assert_eq!(
        outputs["check"],
        json!({"resource": "repo", "version": {"ref": "v2"}, "used": true})
    );
    assert_eq!(outputs["resources"]["inputs"]["repo"], json!({"ref": "v2"}));
    // Pushing a version Concourse has already, older than the newest: the build gets the
    // newest, and the outputs say the pushed one was not used.
    let k2 = key("old-version");
    let mut older = ci
        .start(&request(
            &k2,
            json!({"pipeline": "app", "job": "deploy", "resource": "repo", "version": {"ref": "v1"}}),
        ))
        .await
        .unwrap();
    poll_to_end(ci.as_ref(), &k2, &mut older).await;
    let outputs = ci.outputs(&k2, &older).await.unwrap();
    assert_eq!(outputs["check"]["used"], json!(false));
    assert_eq!(outputs["resources"]["inputs"]["repo"], json!({"ref": "v2"}));
    // A plain check brings in what the source has.
    lab.app().upstream("repo", json!({"ref": "v3"}));
    let k3 = key("plain");
    let mut plain = ci
        .start(&request(
            &k3,
            json!({"pipeline": "app", "job": "deploy", "resource": "repo"}),
        ))
        .await
        .unwrap();
    poll_to_end(ci.as_ref(), &k3, &mut plain).await;
    let outputs = ci.outputs(&k3, &plain).await.unwrap();
    assert_eq!(
        outputs["check"],
        json!({"resource": "repo", "version": null, "used": null})
    );
    assert_eq!(outputs["resources"]["inputs"]["repo"], json!({"ref": "v3"}));
}

#[tokio::test]
async fn a_check_that_errors_or_takes_too_long_creates_no_build() {
    let lab = Lab::start().await;
    lab.app()
        .resource("repo", &[json!({"ref": "v1"})])
        .resource("slow", &[json!({"ref": "v1"})])
        .check_errors("repo", "git: repository not found")
        .check_takes("slow", Duration::from_secs(30))
        .job_inputs("deploy", &["repo"]);
    let ci = lab.adapter(json!({"check_timeout": "500ms"}));
    let input = |resource: &str| json!({"pipeline": "app", "job": "deploy", "resource": resource, "version": {"ref": "v9"}});
    let err = ci
        .start(&request(&key("a"), input("repo")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("the check of resource `repo` (pipeline `app`) ended `errored` (")
            && err.ends_with("): git: repository not found; baton did not create the build"),
        "{err}"
    );
    let began = Instant::now();
    expect_error(
        ci.start(&request(&key("b"), input("slow"))).await,
        "Transient",
        "did not finish within 500ms (check_timeout)",
    );
    assert!(began.elapsed() < Duration::from_secs(2));
    assert!(lab.ci.job_builds().is_empty());
}

#[tokio::test]
async fn with_events_off_no_stream_is_opened() {
    let lab = Lab::start().await;
    let ci = lab.adapter(json!({"events": false}));
    let k = key("quiet");
    let mut external = start_deploy(ci.as_ref(), &k).await;
    let end = poll_to_end(ci.as_ref(), &k, &mut external).await;
    assert_eq!(end.state, ExternalState::Succeeded { warnings: false });
    assert_eq!(lab.ci.streams_opened(), 0);
    // The logs read the events once.
    let logs = ci.logs(&k, &external).await.unwrap();
    assert_eq!(logs.text.as_deref(), Some("hello from the task\n"));
    assert_eq!(lab.ci.streams_opened(), 1);
}

#[tokio::test]
async fn a_concourse_that_cannot_be_reached_is_a_passing_problem() {
    let lab = Lab::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let ci = lab.adapter(json!({"url": url}));
    expect_error(
        ci.find(&key("s"), &deploy()).await,
        "Transient",
        "cannot reach Concourse `ci`",
    );
    expect_error(
        ci.start(&request(&key("s"), deploy())).await,
        "Transient",
        "cannot reach Concourse `ci`",
    );
}

#[tokio::test]
async fn the_kind_checks_stage_inputs_at_load() {
    let kind = ConcourseKind::default();
    assert!(kind.validate_stage(&deploy()).is_empty());
    let problems = kind.validate_stage(&json!({"job": "deploy", "version": {"ref": "x"}}));
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["pipeline", "version"]);
}

/// The figure the doc's request budget promises, measured in real time (two minutes, so
/// not run by default: `cargo test -p baton-adapter-concourse -- --ignored`).
async fn two_minute_build(events: bool) -> u64 {
    let lab = Lab::start().await;
    lab.app()
        .resource("repo", &[json!({"ref": "v1"})])
        .job(
            "deploy",
            BuildPlan::new()
                .pending_for(Duration::from_secs(2))
                .runs_for(Duration::from_secs(118))
                .output("image", json!({"digest": "sha256:1"})),
        )
        .job_inputs("deploy", &["repo"]);
    let ci = lab.adapter(json!({
        "poll_initial": null, "poll_max": null, "poll_streaming": null,
        "request_timeout": null, "events": events,
    }));
    let k = key("budget");
    let woken = Arc::new(tokio::sync::Notify::new());
    let notify = woken.clone();
    ci.attach(Waker::new(move |_: &AttemptKey| notify.notify_one()));
    let mut external = start_deploy(ci.as_ref(), &k).await;
    // The engine's part: poll at once, then after each hint or at a wake.
    let end = loop {
        let o = poll_once(ci.as_ref(), &k, &mut external).await.unwrap();
        if o.state.is_terminal() {
            break o;
        }
        let _ = tokio::time::timeout(o.next_poll.unwrap(), woken.notified()).await;
    };
    assert_eq!(end.state, ExternalState::Succeeded { warnings: false });
    let outputs = ci.outputs(&k, &external).await.unwrap();
    assert_eq!(
        outputs["resources"]["outputs"]["image"],
        json!({"digest": "sha256:1"})
    );
    let requests = lab.ci.meter().total();
    eprintln!("a 120 s build with events {events} cost {requests} requests");
    requests
}

#[tokio::test]
#[ignore = "takes two minutes of real time"]
async fn a_two_minute_build_polled_with_the_defaults_costs_at_most_fifteen_requests() {
    let requests = two_minute_build(false).await;
    assert!(requests <= 15, "{requests}");
}

#[tokio::test]
#[ignore = "takes two minutes of real time"]
async fn a_two_minute_build_followed_through_its_events_costs_fewer() {
    let requests = two_minute_build(true).await;
    assert!(requests <= 9, "{requests}");
}
